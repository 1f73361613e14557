//! `payments-svc events ...`: what an operator needs to see and repair
//! events that were not applied. Works on SQLite and PostgreSQL alike.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;

use anyhow::{Context, bail};
use chrono::{DateTime, Duration, SecondsFormat, Utc};
use sea_orm::{ActiveEnum, DatabaseConnection};
use tokio_util::sync::CancellationToken;

use crate::api::watch::{self, Watchers};
use crate::config::{
    ChangesCommand, Command, EventsCommand, PurchasesCommand, ReversalsCommand, Settings, StatusFilter,
};
use crate::fulfil::refunds;
use crate::fulfil::{apply, reconcile, retention};
use crate::store::entities::course_purchase;
use crate::store::entities::payment_reversal::Model as ReversalRow;
use crate::store::entities::refund_request::RefundRequestStatus;
use crate::store::entities::stripe_webhook_event::{EventStatus, Model as Event};
use crate::store::events::{self, ListFilter};
use crate::store::feed::Change;
use crate::store::signals::FeedSignals;
use crate::store::{self, purchases, refund_requests, reversals};
use crate::stripe::StripeApi;
use payments_domain::reversals::DisputeAccess;
use payments_domain::rules::{self, Outcome, Plan, Policy};

/// Runs one operator command and prints its result to stdout.
pub async fn run(command: Command, settings: &Settings) -> anyhow::Result<()> {
    let db = store::connect(&settings.database_url).await.context("connecting to DATABASE_URL")?;
    let signals = FeedSignals::default();
    let output = match command {
        Command::Serve => bail!("serve is not an operator command"),
        Command::Changes(ChangesCommand::Tail { after, json }) => {
            tail(&db, &signals, after, json).await?;
            String::new()
        }
        Command::Changes(ChangesCommand::Prune) => {
            let removed = retention::prune(&db, settings.changes_retention).await?;
            format!(
                "removed {removed} changes older than {} days\n",
                settings.changes_retention.as_secs() / 86_400
            )
        }
        Command::Events(command) => events_command(&db, &signals, command, settings).await?,
        Command::Purchases(PurchasesCommand::Show { id }) => {
            purchase_timeline(&db, &id, settings.policy).await?
        }
        Command::Purchases(PurchasesCommand::Refund { checkout_session_id }) => {
            let stripe = settings.stripe.as_ref().context("purchases refund needs STRIPE_SECRET_KEY")?;
            refund_duplicate(
                &db,
                &StripeApi::new(stripe)?,
                settings.policy.dispute_access,
                &checkout_session_id,
            )
            .await?
        }
        Command::Purchases(PurchasesCommand::List { needs_refund, limit }) => {
            purchases_table(&db, &purchases::list(&db, needs_refund, limit).await?, settings.policy).await?
        }
        Command::Reversals(ReversalsCommand::Unmatched { limit }) => {
            unmatched_table(&reversals::unmatched(&db, limit).await?)
        }
        Command::Reconcile { since, page_size } => {
            let stripe = settings.stripe.as_ref().context("reconcile needs STRIPE_SECRET_KEY")?;
            let stripe = StripeApi::new(stripe)?;
            let since = parse_since(&since)?;
            let summary = reconcile::sweep(&db, &signals, &stripe, settings.policy, since, page_size).await?;
            format!(
                "seen {}, already processed {}, newly applied {}, failed {}\n",
                summary.seen, summary.already_processed, summary.newly_applied, summary.failed
            )
        }
    };
    print!("{output}");
    if signals.commits_so_far() > 0 {
        // No task forwards this process's commits (it is about to exit):
        // wake the running replicas' watchers once, for all of them.
        store::signals::notify_listeners(&db).await?;
    }
    db.close().await?;
    Ok(())
}

async fn events_command(
    db: &DatabaseConnection,
    signals: &FeedSignals,
    command: EventsCommand,
    settings: &Settings,
) -> anyhow::Result<String> {
    Ok(match command {
        EventsCommand::List { status, event_type, since, limit } => {
            let filter = ListFilter {
                status: status.map(event_status),
                event_type,
                received_since: since.as_deref().map(parse_since).transpose()?,
                limit: Some(limit),
                ..Default::default()
            };
            list_table(&events::list(db, &filter).await?)
        }
        EventsCommand::Show { event_id } => {
            let event = events::find(db, &event_id).await?.with_context(|| format!("no event {event_id}"))?;
            show(&event)
        }
        EventsCommand::Prune { dry_run } => {
            let days = settings.events_retention.as_secs() / 86_400;
            if dry_run {
                let count = retention::prunable_events(db, settings.events_retention).await?;
                format!(
                    "would drop the payloads of {count} processed or ignored events older than {days} days (--dry-run)\n"
                )
            } else {
                let count = retention::prune_events(db, settings.events_retention).await?;
                format!(
                    "dropped the payloads of {count} processed or ignored events older than {days} days\n"
                )
            }
        }
        EventsCommand::Replay { event_id: Some(event_id), dry_run, .. } => {
            let event = events::find(db, &event_id).await?.with_context(|| format!("no event {event_id}"))?;
            let mut report = ReplayReport::new(dry_run, signals.clone());
            report.add(db, settings.policy, &event).await?;
            report.finish()
        }
        EventsCommand::Replay { event_id: None, event_type, since, until, dry_run, .. } => {
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
                    report.add(db, settings.policy, event).await?;
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

/// The `code` of a stored or new failure reason.
fn error_code_of(error: Option<&serde_json::Value>) -> String {
    error.and_then(|e| e["code"].as_str()).unwrap_or("unknown").to_owned()
}

/// Prints every change after `after`, then each new one, until Ctrl-C or
/// SIGTERM: the feed as a consumer of WatchPurchaseChanges gets it.
async fn tail(db: &DatabaseConnection, signals: &FeedSignals, after: u64, json: bool) -> anyhow::Result<()> {
    use std::io::Write as _;
    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            service_kit::shutdown::signal().await;
            stop.cancel();
        }
    });
    let watchers = Arc::new(Watchers::new(signals.clone(), stop.clone()));
    tokio::spawn(watch::listen(db.clone(), Arc::clone(&watchers), stop.clone()));
    let after = i64::try_from(after).context("--after is beyond any cursor")?;
    let mut changes = watch::start(db.clone(), after, &watchers);
    let mut stdout = std::io::stdout().lock();
    if !json {
        writeln!(stdout, "CURSOR  AT  KIND  SESSION  USER  COURSE  STATUS  ACCESS  REFUNDED  CAUSE")?;
    }
    while let Some(change) = changes.recv().await {
        match change {
            Ok(change) => {
                let line = if json { change_json(&change) } else { change_line(&change) };
                writeln!(stdout, "{line}")?;
                stdout.flush()?;
            }
            Err(watch::WatchError::ShuttingDown) => break,
            Err(error) => return Err(error.into()),
        }
    }
    Ok(())
}

fn change_line(Change { change, purchase }: &Change) -> String {
    [
        change.cursor.to_string(),
        time(change.at),
        change.kind.to_value(),
        purchase.stripe_checkout_session_id.clone(),
        purchase.user_id.clone(),
        purchase.course_id.clone(),
        change.status.to_value(),
        if change.has_access { "yes" } else { "no" }.to_owned(),
        change.amount_refunded.to_string(),
        change.cause_event_id.clone(),
    ]
    .join("  ")
}

fn change_json(Change { change, purchase }: &Change) -> String {
    serde_json::json!({
        "cursor": change.cursor,
        "at": change.at.to_rfc3339_opts(SecondsFormat::Millis, true),
        "kind": change.kind.to_value(),
        "checkoutSessionId": purchase.stripe_checkout_session_id,
        "paymentIntentId": purchase.stripe_payment_intent_id,
        "userId": purchase.user_id,
        "courseId": purchase.course_id,
        "status": change.status.to_value(),
        "hasAccess": change.has_access,
        "amountRefunded": change.amount_refunded,
        "causeEventId": change.cause_event_id,
    })
    .to_string()
}

fn event_status(filter: StatusFilter) -> EventStatus {
    match filter {
        StatusFilter::Processed => EventStatus::Processed,
        StatusFilter::Ignored => EventStatus::Ignored,
        StatusFilter::Failed => EventStatus::Failed,
    }
}

/// `30m`, `24h`, `7d`, `2w` back from now, or an RFC 3339 time.
fn parse_since(value: &str) -> anyhow::Result<DateTime<Utc>> {
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

fn time(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The `message` of an event's stored error, if any.
fn error_message(event: &Event) -> String {
    event.error.as_ref().and_then(|e| e["message"].as_str()).unwrap_or_default().to_owned()
}

fn list_table(events: &[Event]) -> String {
    let rows: Vec<Vec<String>> = events.iter().map(|e| event_row(e, error_message(e))).collect();
    table(&["RECEIVED", "EVENT", "TYPE", "STATUS", "DELIVERIES", "ERROR"], &rows, "events")
}

/// An event's row in a table, `last` in its last column.
fn event_row(event: &Event, last: String) -> Vec<String> {
    vec![
        time(event.received_at),
        event.event_id.clone(),
        event.event_type.clone(),
        event.status.to_value(),
        event.delivery_count.to_string(),
        last,
    ]
}

fn unmatched_table(facts: &[ReversalRow]) -> String {
    let optional = |value: &Option<String>| value.clone().unwrap_or_else(|| "-".into());
    let rows: Vec<Vec<String>> = facts
        .iter()
        .map(|f| {
            vec![
                time(f.recorded_at),
                f.kind.to_value(),
                f.object_id.clone(),
                f.status.clone(),
                format!("{} {}", f.amount, f.currency.as_deref().unwrap_or_default()).trim_end().to_owned(),
                optional(&f.payment_intent_id),
                optional(&f.charge_id),
                f.event_id.clone(),
            ]
        })
        .collect();
    let header = ["RECORDED", "KIND", "OBJECT", "STATUS", "AMOUNT", "PAYMENT INTENT", "CHARGE", "EVENT"];
    table(&header, &rows, "unmatched reversals")
}

/// One purchase, its access now, and every event that touched it in the
/// order they arrived, with what each did: what support needs to answer
/// "why has this user no access?".
async fn purchase_timeline(db: &DatabaseConnection, id: &str, policy: Policy) -> anyhow::Result<String> {
    let found = if id.starts_with("pi_") {
        purchases::find_by_payment_intent(db, id).await?
    } else {
        purchases::find_by_session(db, id).await?
    };
    let purchase = found.with_context(|| format!("no purchase for {id}"))?;
    let access = reversals::access_of(db, &purchase, policy.dispute_access).await?;
    let facts = match &purchase.stripe_payment_intent_id {
        Some(pi) => reversals::for_payment(db, pi).await?,
        None => Vec::new(),
    };
    let event_ids: Vec<String> = facts.iter().map(|fact| fact.event_id.clone()).collect();
    let mut mentions: Vec<String> = purchase.stripe_payment_intent_id.iter().cloned().collect();
    mentions.extend(facts.iter().filter_map(|fact| fact.charge_id.clone()));
    mentions.sort();
    mentions.dedup();
    let touching = events::touching(db, &purchase.stripe_checkout_session_id, &event_ids, &mentions).await?;

    let yes_no = |flag: bool| if flag { "yes" } else { "no" };
    let currency = purchase.currency.as_deref().unwrap_or_default();
    let paid = purchase.amount_total.map_or_else(|| "-".to_owned(), |amount| format!("{amount} {currency}"));
    let mut out = String::new();
    let _ = writeln!(out, "session:      {}", purchase.stripe_checkout_session_id);
    let _ = writeln!(out, "payment:      {}", purchase.stripe_payment_intent_id.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "user:         {}", purchase.user_id);
    let _ = writeln!(out, "course:       {}", purchase.course_id);
    let _ = writeln!(out, "status:       {} (access: {})", access.status.as_str(), yes_no(access.has_access));
    let _ = writeln!(out, "paid:         {paid}, refunded {}", access.amount_refunded);
    let _ = writeln!(
        out,
        "checkout:     {}{}, first recorded by {} at {}",
        purchase.status.to_value(),
        if purchase.needs_refund { " (a second payment for an owned course: needs refund)" } else { "" },
        purchase.source.to_value(),
        time(purchase.created_at)
    );
    let rows: Vec<Vec<String>> = touching.iter().map(|e| event_row(e, what_it_did(e, policy))).collect();
    let _ = writeln!(out, "\nevents, in the order they arrived:");
    out.push_str(&table(
        &["RECEIVED", "EVENT", "TYPE", "STATUS", "DELIVERIES", "WHAT IT DID"],
        &rows,
        "events",
    ));
    Ok(out)
}

/// Asks Stripe now for the refund a duplicate purchase is owed, once: a
/// refund already made is reported, not made again.
async fn refund_duplicate(
    db: &DatabaseConnection,
    stripe: &StripeApi,
    policy: DisputeAccess,
    session_id: &str,
) -> anyhow::Result<String> {
    let purchase = purchases::find_by_session(db, session_id)
        .await?
        .with_context(|| format!("no purchase {session_id}"))?;
    if !purchase.needs_refund {
        bail!(
            "{session_id} is the purchase that grants the course, not a second payment; refund it in Stripe's dashboard if you mean to"
        );
    }
    let payment_intent_id = purchase
        .stripe_payment_intent_id
        .as_deref()
        .with_context(|| format!("{session_id} has no payment intent to refund"))?;
    refund_requests::owe(db, session_id, payment_intent_id, Utc::now()).await?;
    let request = refund_requests::find_by_session(db, session_id).await?.context("the refund request")?;
    let result = match request.status {
        RefundRequestStatus::Pending => match refunds::attempt(db, stripe, policy, &request).await? {
            refunds::Attempt::Refunded { refund_id } => format!("refunded: {refund_id}"),
            refunds::Attempt::RetryLater { error } => {
                bail!("Stripe could not be reached ({error}); run it again")
            }
            refunds::Attempt::Refused { error } => bail!("Stripe refused the refund: {error}"),
            refunds::Attempt::NotClaimed => {
                bail!("a running payments-svc is refunding it now; look again shortly")
            }
        },
        _ => format!("already {}", refunds::describe(&request, Utc::now())),
    };
    Ok(format!("{session_id}: {result}\n"))
}

/// What a stored event meant, decided again from its payload by the rules.
fn what_it_did(stored: &Event, policy: Policy) -> String {
    let parsed = payments_proto::stripe::parse_event(stored.payload.clone().into())
        .ok()
        .and_then(|event| payments_proto::domain::incoming(event).ok());
    let Some(event) = parsed else { return "payload no longer parses".into() };
    match rules::plan(&event, policy) {
        Plan::Record(_, status) => format!("checkout: {status}"),
        Plan::Reverse { reversal, .. } => {
            let currency = reversal.currency.as_deref().unwrap_or_default();
            let amount = format!("{} {currency}", reversal.amount);
            format!(
                "{} {} {} {}",
                reversal.kind(),
                reversal.object_id,
                reversal.status.as_str(),
                amount.trim_end()
            )
        }
        Plan::Acknowledge => "checkout expired; nothing granted".into(),
        Plan::Ignore(reason) => reason.message,
        Plan::Fail(error) => error.message,
    }
}

async fn purchases_table(
    db: &DatabaseConnection,
    purchases: &[course_purchase::Model],
    policy: Policy,
) -> anyhow::Result<String> {
    let mut rows = Vec::with_capacity(purchases.len());
    for p in purchases {
        let access = reversals::access_of(db, p, policy.dispute_access).await?;
        let amount = p
            .amount_total
            .map_or_else(|| "-".to_owned(), |a| format!("{a} {}", p.currency.as_deref().unwrap_or_default()));
        rows.push(vec![
            time(p.created_at),
            p.stripe_checkout_session_id.clone(),
            p.user_id.clone(),
            p.course_id.clone(),
            access.status.as_str().to_owned(),
            if access.has_access { "yes" } else { "no" }.to_owned(),
            if p.needs_refund { "yes" } else { "no" }.to_owned(),
            amount.trim_end().to_owned(),
        ]);
    }
    let header = ["CREATED", "SESSION", "USER", "COURSE", "STATUS", "ACCESS", "NEEDS REFUND", "AMOUNT"];
    Ok(table(&header, &rows, "purchases"))
}

/// Left-aligned columns as wide as their widest cell, then a count line.
fn table(header: &[&str], rows: &[Vec<String>], what: &str) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.len());
        }
    }
    let header: Vec<String> = header.iter().map(|h| (*h).to_owned()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let cells: Vec<String> =
            row.iter().zip(&widths).map(|(cell, width)| format!("{cell:<width$}")).collect();
        let _ = writeln!(out, "{}", cells.join("  ").trim_end());
    }
    let _ = writeln!(out, "({} {what})", rows.len());
    out
}

fn show(event: &Event) -> String {
    let optional_time = |at: Option<DateTime<Utc>>| at.map(time).unwrap_or_else(|| "-".into());
    let created = DateTime::from_timestamp(event.stripe_created_at, 0).map(time).unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

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
