//! `payments-svc events`: list, show, replay and prune stored events.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use anyhow::Context;
use chrono::{DateTime, Utc};
use clap::{Subcommand, ValueEnum};
use payments_domain::rules::{Outcome, Policy};
use sea_orm::{ActiveEnum, DatabaseConnection};

use super::format::{error_code_of, error_message, event_row, parse_since, table, time};
use crate::config::{DatabaseArgs, PolicyArgs, RetentionArgs};
use crate::fulfil::{apply, retention};
use crate::store::entities::course_purchase;
use crate::store::entities::stripe_webhook_event::{EventStatus, Model as Event};
use crate::store::events::{self, ListFilter};
use crate::store::health::DatabaseHealth;
use crate::store::purchases;
use crate::store::signals::FeedSignals;

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List stored events, newest first.
    List {
        #[command(flatten)]
        database: DatabaseArgs,
        /// Only events with this status.
        #[arg(long, value_enum)]
        status: Option<StatusFilter>,
        /// Only events of this type, e.g. checkout.session.completed.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only events received since then: a duration back from now
        /// (`30m`, `24h`, `7d`) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Show one event: status, error, deliveries, timestamps and payload.
    Show {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The Stripe event id (`evt_...`).
        event_id: String,
    },
    /// Apply stored events again through the same fulfilment as a delivery:
    /// one, or every failed one (oldest first, optionally only some), with a
    /// summary of what became of them.
    Replay {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        policy: PolicyArgs,
        /// The Stripe event id (`evt_...`) to replay.
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        event_id: Option<String>,
        /// Replay every event whose status is failed.
        #[arg(long)]
        failed: bool,
        /// With --failed: only events of this type.
        #[arg(long = "type", requires = "failed")]
        event_type: Option<String>,
        /// With --failed: only events received since then (`24h`, `7d`, or
        /// an RFC 3339 time).
        #[arg(long, requires = "failed")]
        since: Option<String>,
        /// With --failed: only events received before then (same forms).
        #[arg(long, requires = "failed")]
        until: Option<String>,
        /// Say what would be replayed, by reason, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Drop the payloads of processed and ignored events older than
    /// WEBHOOK_EVENTS_RETENTION_DAYS now (payments-svc also does it by
    /// itself every hour); their rows stay.
    Prune {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        retention: RetentionArgs,
        /// Say how many would go, and change nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

/// The statuses an operator can filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFilter {
    Processed,
    Ignored,
    Failed,
}

impl EventsCommand {
    pub(super) fn database(&self) -> &DatabaseArgs {
        match self {
            Self::List { database, .. }
            | Self::Show { database, .. }
            | Self::Replay { database, .. }
            | Self::Prune { database, .. } => database,
        }
    }
}

pub(super) async fn run(
    db: &DatabaseConnection,
    signals: &FeedSignals,
    command: EventsCommand,
) -> anyhow::Result<String> {
    Ok(match command {
        EventsCommand::List { status, event_type, since, limit, .. } => {
            let filter = ListFilter {
                status: status.map(event_status),
                event_type,
                received_since: since.as_deref().map(parse_since).transpose()?,
                limit: Some(limit),
                ..Default::default()
            };
            list_table(&events::list(db, &filter).await?)
        }
        EventsCommand::Show { event_id, .. } => {
            let event = events::find(db, &event_id).await?.with_context(|| format!("no event {event_id}"))?;
            show(&event)
        }
        EventsCommand::Prune { retention: kept, dry_run, .. } => {
            let days = kept.events_retention_days;
            if dry_run {
                let count = retention::prunable_events(db, kept.events()).await?;
                format!(
                    "would drop the payloads of {count} processed or ignored events older than {days} days (--dry-run)\n"
                )
            } else {
                // Nothing probes a command's connections: it waits as long as they do.
                let count = retention::prune_events(db, &DatabaseHealth::default(), kept.events()).await?;
                format!(
                    "dropped the payloads of {count} processed or ignored events older than {days} days\n"
                )
            }
        }
        EventsCommand::Replay { policy, event_id: Some(event_id), dry_run, .. } => {
            let event = events::find(db, &event_id).await?.with_context(|| format!("no event {event_id}"))?;
            let mut report = ReplayReport::new(dry_run, signals.clone());
            report.add(db, policy.policy(), &event).await?;
            report.finish()
        }
        EventsCommand::Replay { policy, event_id: None, event_type, since, until, dry_run, .. } => {
            let filter = ListFilter {
                status: Some(EventStatus::Failed),
                event_type,
                received_since: since.as_deref().map(parse_since).transpose()?,
                received_before: until.as_deref().map(parse_since).transpose()?,
                limit: Some(REPLAY_PAGE),
            };
            let mut report = ReplayReport::new(dry_run, signals.clone());
            let mut after_id = 0;
            loop {
                let page = events::page(db, &filter, after_id).await?;
                let Some(last) = page.last() else { break };
                after_id = last.id;
                for event in &page {
                    report.add(db, policy.policy(), event).await?;
                }
            }
            report.finish()
        }
    })
}

/// Failed events replayed per query: a bulk replay walks them oldest first
/// a page at a time, never holding them all.
const REPLAY_PAGE: u64 = 200;

/// What a replay did (or, dry, would do), event by event, then in sum.
#[derive(Debug, Default)]
struct ReplayReport {
    dry_run: bool,
    /// Told of the changes replays publish.
    signals: FeedSignals,
    out: String,
    replayed: usize,
    /// Failed before, processed or ignored now.
    applied: usize,
    /// Already processed or ignored: a replay leaves them as they are.
    unchanged: usize,
    /// Events failed after the replay (or, dry, now), by the reason's code.
    failing: BTreeMap<String, usize>,
}

impl ReplayReport {
    fn new(dry_run: bool, signals: FeedSignals) -> Self {
        Self { dry_run, signals, ..Self::default() }
    }

    async fn add(&mut self, db: &DatabaseConnection, policy: Policy, event: &Event) -> anyhow::Result<()> {
        self.replayed += 1;
        if self.dry_run {
            let code = error_code_of(event.error.as_ref());
            let _ = writeln!(self.out, "{}: {} ({code})", event.event_id, event.status.to_value());
            if event.status == EventStatus::Failed {
                *self.failing.entry(code).or_default() += 1;
            }
            return Ok(());
        }
        let line = replay_one(db, &self.signals, policy, event).await?;
        self.out.push_str(&line.text);
        match line.failed_code {
            Some(code) => *self.failing.entry(code).or_default() += 1,
            None if event.status == EventStatus::Failed => self.applied += 1,
            None => self.unchanged += 1,
        }
        Ok(())
    }

    fn finish(mut self) -> String {
        let failing: usize = self.failing.values().sum();
        if self.dry_run {
            let _ = writeln!(self.out, "would replay {} events; nothing changed (--dry-run)", self.replayed);
        } else {
            let _ = write!(
                self.out,
                "replayed {} events; {failing} still failed; {} applied",
                self.replayed, self.applied
            );
            if self.unchanged > 0 {
                let _ = write!(self.out, "; {} already settled, unchanged", self.unchanged);
            }
            self.out.push('\n');
        }
        if !self.failing.is_empty() {
            let reasons: Vec<String> = self.failing.iter().map(|(code, n)| format!("{code} {n}")).collect();
            let _ = writeln!(self.out, "failing by reason: {}", reasons.join(", "));
        }
        self.out
    }
}

fn event_status(filter: StatusFilter) -> EventStatus {
    match filter {
        StatusFilter::Processed => EventStatus::Processed,
        StatusFilter::Ignored => EventStatus::Ignored,
        StatusFilter::Failed => EventStatus::Failed,
    }
}

fn list_table(events: &[Event]) -> String {
    let rows: Vec<Vec<String>> = events.iter().map(|e| event_row(e, error_message(e))).collect();
    table(&["RECEIVED", "EVENT", "TYPE", "STATUS", "DELIVERIES", "ERROR"], &rows, "events")
}

/// Stripe's `created` as a time, or as the number it was when no calendar
/// holds it (an event can claim any i64): never blank.
fn created(unix_seconds: i64) -> String {
    match DateTime::from_timestamp(unix_seconds, 0) {
        Some(at) => format!("{} ({unix_seconds})", time(at)),
        None => format!("{unix_seconds} (Unix seconds, beyond any calendar date)"),
    }
}

fn show(event: &Event) -> String {
    let optional_time = |at: Option<DateTime<Utc>>| at.map(time).unwrap_or_else(|| "-".into());
    let created = created(event.stripe_created_at);
    let error = event.error.as_ref().map(|e| e.to_string()).unwrap_or_else(|| "-".into());
    let mut out = String::new();
    let _ = writeln!(out, "event:          {}", event.event_id);
    let _ = writeln!(out, "type:           {}", event.event_type);
    let _ = writeln!(out, "status:         {}", event.status.to_value());
    let _ = writeln!(out, "error:          {error}");
    let _ = writeln!(out, "session:        {}", event.checkout_session_id.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "livemode:       {}", event.livemode);
    let _ = writeln!(out, "api version:    {}", event.api_version.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "deliveries:     {}", event.delivery_count);
    let _ = writeln!(out, "created:        {created}");
    let _ = writeln!(out, "first received: {}", time(event.received_at));
    let _ = writeln!(out, "last received:  {}", time(event.last_received_at));
    let _ = writeln!(out, "settled:        {}", optional_time(event.processed_at));
    if event.payload.is_empty() {
        let _ = writeln!(out, "payload:        dropped after WEBHOOK_EVENTS_RETENTION_DAYS");
    } else {
        let _ = writeln!(out, "payload:\n{}", event.payload);
    }
    if let Some(other) = &event.conflicting_payload {
        let _ =
            writeln!(out, "conflicting payload (received under the same id, not the one applied):\n{other}");
    }
    out
}

/// One replayed event's line, and its failure's code if it is still failed.
struct ReplayLine {
    text: String,
    failed_code: Option<String>,
}

async fn replay_one(
    db: &DatabaseConnection,
    signals: &FeedSignals,
    policy: Policy,
    event: &Event,
) -> anyhow::Result<ReplayLine> {
    let purchase_before = purchase_of(db, event).await?;
    let replay = apply::replay(db, signals, event, policy)
        .await
        .with_context(|| format!("replaying {}", event.event_id))?;
    let purchase_after = purchase_of(db, event).await?;
    let mut text =
        format!("{}: {} -> {}", replay.event_id, replay.before.to_value(), replay.after.to_value());
    if let Some(session) = &event.checkout_session_id {
        let (before, after) = (purchase_state(&purchase_before), purchase_state(&purchase_after));
        let change =
            if before == after { format!("unchanged, {after}") } else { format!("{before} -> {after}") };
        let _ = write!(text, "; purchase {session}: {change}");
    }
    let failed_code = match &replay.outcome {
        Outcome::Failed { error } => {
            let _ = write!(text, "; {}", error.message);
            Some(error.code.to_string())
        }
        _ => None,
    };
    text.push('\n');
    Ok(ReplayLine { text, failed_code })
}

async fn purchase_of(
    db: &DatabaseConnection,
    event: &Event,
) -> anyhow::Result<Option<course_purchase::Model>> {
    match &event.checkout_session_id {
        Some(session) => Ok(purchases::find_by_session(db, session).await?),
        None => Ok(None),
    }
}

fn purchase_state(purchase: &Option<course_purchase::Model>) -> String {
    match purchase {
        None => "none".into(),
        Some(p) => {
            let status = p.status.to_value();
            if p.needs_refund { format!("{status} (needs refund)") } else { status.to_owned() }
        }
    }
}
