//! `payments-svc sync`: import (or check) purchases, refunds and disputes
//! from Stripe's API; see [`crate::fulfil::sync`].

use std::fmt::Write as _;
use std::io::{IsTerminal, Write as _};
use std::time::Duration;

use anyhow::{Context, bail};
use chrono::Utc;
use clap::Args;
use sea_orm::DatabaseConnection;

use super::format::{parse_since, table, time};
use crate::config::{DatabaseArgs, PolicyArgs, StripeArgs};
use crate::fulfil::sync::check::{self, Report, Side};
use crate::fulfil::sync::{self, PAGE_SIZE, Progress, Reading, Summary, SyncOptions};
use crate::store::health::DatabaseHealth;
use crate::store::lease;
use crate::store::signals::FeedSignals;
use crate::stripe::{StripeApi, Window};

/// A sync's calls are not waited on by anyone: each may take this long,
/// retries included, whatever STRIPE_API_TIMEOUT_MS says (a page of 100
/// sessions with their payment intents can take Stripe seconds).
const SYNC_CALL_BUDGET: Duration = Duration::from_secs(20);
/// Sessions without metadata named in the table; `--json` names all.
const NAMED: usize = 20;

#[derive(Debug, Args)]
pub struct SyncArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    #[command(flatten)]
    policy: PolicyArgs,
    #[command(flatten)]
    stripe: StripeArgs,
    /// Sessions created at or after: `30d`, `52w` back from now, or an RFC
    /// 3339 time (Stripe keeps objects for good: any date works).
    #[arg(long)]
    since: String,
    /// Sessions created at or before: a duration back or an RFC 3339 time;
    /// now when absent. Refunds and disputes are read until now either way.
    #[arg(long)]
    until: Option<String>,
    /// Decide and count, write nothing.
    #[arg(long, conflicts_with = "check")]
    dry_run: bool,
    /// Change nothing: list every purchase whose access here differs from
    /// Stripe's; exit 1 when any does.
    #[arg(long)]
    check: bool,
    /// Print the summary (or the check's report) as JSON.
    #[arg(long)]
    json: bool,
    /// Objects per page asked of Stripe (1 to 100).
    #[arg(long, default_value_t = PAGE_SIZE, value_parser = clap::value_parser!(u8).range(1..=100))]
    page_size: u8,
}

/// Runs the sync or the check; its output, and how many purchases differ
/// from Stripe (a check's exit status).
pub async fn run(
    db: &DatabaseConnection,
    signals: &FeedSignals,
    args: SyncArgs,
) -> anyhow::Result<(String, usize)> {
    let settings = args
        .stripe
        .settings(args.policy.stripe_livemode)?
        .context("sync needs STRIPE_SECRET_KEY (a key that can read sessions, refunds and disputes)")?;
    let settings =
        crate::stripe::StripeSettings { budget: settings.budget.max(SYNC_CALL_BUDGET), ..settings };
    let stripe = StripeApi::new(&settings)?;
    let options = options(&args)?;
    let policy = args.policy.policy();
    if args.check {
        let report = check::run(db, &stripe, policy, &options.reading).await?;
        let text = if args.json { json(&report)? } else { report_table(&report) };
        return Ok((text, report.differences.len()));
    }
    let mut progress = progress_printer();
    let work = sync::run(db, signals, &stripe, policy, &options, &mut progress);
    let summary = if args.dry_run {
        work.await?
    } else {
        lease::under(db, &DatabaseHealth::default(), lease::SYNC, work)
            .await?
            .context("another payments-svc sync is running on this database (it holds the sync lease)")?
    };
    let text = if args.json { json(&summary)? } else { summary_table(&summary) };
    Ok((text, 0))
}

/// The window and the arguments that identify this sync for resuming.
fn options(args: &SyncArgs) -> anyhow::Result<SyncOptions> {
    let now = Utc::now();
    let since = parse_since(&args.since)?;
    let until = args.until.as_deref().map(parse_since).transpose()?.unwrap_or(now);
    if since > until {
        bail!("--since {} is after --until {}", time(since), time(until));
    }
    let arguments = format!(
        "since={} until={} livemode={}",
        args.since,
        args.until.as_deref().unwrap_or("now"),
        args.policy.stripe_livemode
    );
    let reading = Reading {
        window: Window { created_gte: since.timestamp(), created_lte: until.timestamp() },
        now: now.timestamp(),
        page_size: args.page_size,
    };
    Ok(SyncOptions { reading, arguments, dry_run: args.dry_run })
}

fn json(value: &impl serde::Serialize) -> anyhow::Result<String> {
    Ok(format!("{}\n", serde_json::to_string_pretty(value)?))
}

/// On a terminal, one line per list rewritten after each page: pages,
/// objects, rate and time left. Elsewhere, nothing.
fn progress_printer() -> impl FnMut(&Progress) + Send {
    let terminal = std::io::stderr().is_terminal();
    move |progress: &Progress| {
        if !terminal {
            return;
        }
        let seconds = progress.elapsed.as_secs_f64().max(0.001);
        let rate = progress.objects as f64 / seconds;
        let left = match progress.done {
            Some(done) if done > 0.0 => format!(", about {:.0} s left", seconds / done * (1.0 - done)),
            _ => String::new(),
        };
        let _ = write!(
            std::io::stderr(),
            "\r{}: page {}, {} objects, {:.0}/s, {:.0} s{left}\x1b[K",
            progress.list.as_str(),
            progress.pages,
            progress.objects,
            rate,
            seconds
        );
        if progress.finished {
            let _ = writeln!(std::io::stderr());
        }
    }
}

fn summary_table(summary: &Summary) -> String {
    let header = ["LIST", "PAGES", "SEEN", "NEW", "CHANGED", "UNCHANGED", "NO METADATA", "SKIPPED"];
    let rows: Vec<Vec<String>> = summary
        .lists
        .iter()
        .map(|(list, counts)| (*list, counts))
        .chain([("total", &summary.total)])
        .map(|(list, c)| {
            let counts = [c.pages, c.seen, c.new, c.changed, c.unchanged, c.without_metadata, c.skipped];
            std::iter::once(list.to_owned()).chain(counts.map(|n| n.to_string())).collect()
        })
        .collect();
    let mut out = table(&header, &rows, "lists");
    let skipped: Vec<String> = summary.skipped.iter().map(|(reason, n)| format!("{reason} {n}")).collect();
    if !skipped.is_empty() {
        let _ = writeln!(out, "skipped: {}", skipped.join(", "));
    }
    if !summary.without_metadata.is_empty() {
        let named: Vec<&str> = summary.without_metadata.iter().take(NAMED).map(String::as_str).collect();
        let more = summary.without_metadata.len().saturating_sub(NAMED);
        let more = if more > 0 { format!(" and {more} more (--json lists all)") } else { String::new() };
        let _ = writeln!(out, "without courseId/userId metadata: {}{more}", named.join(", "));
    }
    let _ = writeln!(
        out,
        "{}sessions created {} to {}; {} changes published; {:.1} s{}",
        if summary.dry_run { "dry run, nothing written: " } else { "" },
        unix_time(summary.created_gte),
        unix_time(summary.created_lte),
        summary.changes_published,
        summary.seconds,
        if summary.resumed { "; resumed from its checkpoints" } else { "" }
    );
    out
}

fn report_table(report: &Report) -> String {
    let header = ["SESSION", "USER", "COURSE", "DIFFERENCE", "HERE", "AT STRIPE"];
    let rows: Vec<Vec<String>> = report
        .differences
        .iter()
        .map(|mismatch| {
            vec![
                mismatch.checkout_session_id.clone(),
                mismatch.user_id.clone(),
                mismatch.course_id.clone(),
                mismatch.difference.as_str().to_owned(),
                mismatch.here.as_ref().map_or_else(|| "-".to_owned(), side),
                side(&mismatch.stripe),
            ]
        })
        .collect();
    let mut out = table(&header, &rows, "differences");
    let _ = writeln!(
        out,
        "compared {} purchases of sessions created {} to {} ({} without metadata); {:.1} s",
        report.compared,
        unix_time(report.created_gte),
        unix_time(report.created_lte),
        report.without_metadata,
        report.seconds
    );
    out
}

fn side(side: &Side) -> String {
    let access = if side.has_access { "access" } else { "no access" };
    format!("{} ({access}, refunded {})", side.status, side.amount_refunded)
}

fn unix_time(seconds: i64) -> String {
    chrono::DateTime::from_timestamp(seconds, 0).map_or_else(|| seconds.to_string(), time)
}
