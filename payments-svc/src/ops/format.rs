//! What the operator commands share: tables, times, and `--since`.

use std::fmt::Write as _;

use anyhow::{Context, bail};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use sea_orm::ActiveEnum;

use crate::store::entities::stripe_webhook_event::Model as Event;

/// `30m`, `24h`, `7d`, `2w` back from now, or an RFC 3339 time.
pub(super) fn parse_since(value: &str) -> anyhow::Result<DateTime<Utc>> {
    if let Ok(at) = DateTime::parse_from_rfc3339(value) {
        return Ok(at.with_timezone(&Utc));
    }
    let (number, unit) = value.split_at(value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len()));
    let amount: i64 = number
        .parse()
        .with_context(|| format!("--since {value:?}: expected e.g. 24h or an RFC 3339 time"))?;
    let back = match unit {
        "s" => Duration::try_seconds(amount),
        "m" => Duration::try_minutes(amount),
        "h" => Duration::try_hours(amount),
        "d" => Duration::try_days(amount),
        "w" => Duration::try_weeks(amount),
        _ => bail!("--since {value:?}: the unit must be s, m, h, d or w"),
    };
    back.and_then(|back| Utc::now().checked_sub_signed(back))
        .with_context(|| format!("--since {value:?} is too far back"))
}

pub(super) fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Left-aligned columns as wide as their widest cell, then a count line.
pub(super) fn table(header: &[&str], rows: &[Vec<String>], what: &str) -> String {
    let widths = widths(header, rows);
    let mut out = String::new();
    let _ = writeln!(out, "{}", fixed_row(header, &widths));
    for row in rows {
        let _ = writeln!(out, "{}", fixed_row(row, &widths));
    }
    let _ = writeln!(out, "({} {what})", rows.len());
    out
}

/// Each column's width: its widest cell, heading included.
pub(super) fn widths<R: AsRef<[S]>, S: AsRef<str>>(header: &[&str], rows: &[R]) -> Vec<usize> {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row.as_ref()) {
            *width = (*width).max(cell.as_ref().len());
        }
    }
    widths
}

/// One line of left-aligned cells at `widths`; a cell wider than its
/// column pushes the rest of its line (a table that streams learns its
/// widths from its first rows).
pub(super) fn fixed_row<S: AsRef<str>>(cells: &[S], widths: &[usize]) -> String {
    let cells: Vec<String> =
        cells.iter().zip(widths).map(|(cell, width)| format!("{:<width$}", cell.as_ref())).collect();
    cells.join("  ").trim_end().to_owned()
}

/// The `message` of an event's stored error, if any.
pub(super) fn error_message(event: &Event) -> String {
    event.error.as_ref().and_then(|e| e["message"].as_str()).unwrap_or_default().to_owned()
}

/// An event's row in a table, `last` in its last column.
pub(super) fn event_row(event: &Event, last: String) -> Vec<String> {
    vec![
        time(event.received_at),
        event.event_id.clone(),
        event.event_type.clone(),
        event.status.to_value(),
        event.delivery_count.to_string(),
        last,
    ]
}

/// The `code` of a stored or new failure reason.
pub(super) fn error_code_of(error: Option<&serde_json::Value>) -> String {
    error.and_then(|e| e["code"].as_str()).unwrap_or("unknown").to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Duration;

    #[test]
    fn since_accepts_durations_and_rfc3339() {
        let hour_ago = parse_since("1h").expect("duration");
        assert!((Utc::now() - hour_ago - Duration::hours(1)).num_seconds().abs() < 5);
        let fixed = parse_since("2026-01-02T03:04:05Z").expect("time");
        assert_eq!(time(fixed), "2026-01-02T03:04:05Z");
        for bad in ["", "h", "5y", "yesterday", "99999999999999d"] {
            assert!(parse_since(bad).is_err(), "{bad}");
        }
    }
}
