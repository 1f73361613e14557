//! `payments-svc changes`: follow and prune the purchase change feed.

use std::sync::Arc;

use chrono::SecondsFormat;
use clap::Subcommand;
use sea_orm::{ActiveEnum, DatabaseConnection};
use tokio_util::sync::CancellationToken;

use super::format::{fixed_row, time, widths};
use crate::api::watch::{self, Watchers};
use crate::config::{DatabaseArgs, RetentionArgs};
use crate::fulfil::retention;
use crate::metrics::Metrics;
use crate::store::feed::{self, Change};
use crate::store::health::DatabaseHealth;
use crate::store::signals::FeedSignals;

#[derive(Debug, Subcommand)]
pub enum ChangesCommand {
    /// Print every change after a cursor, then each new one as it commits,
    /// until interrupted: what a consumer of WatchPurchaseChanges receives.
    Tail {
        #[command(flatten)]
        database: DatabaseArgs,
        /// The cursor of the last change already seen; 0 starts from the
        /// oldest change kept.
        #[arg(long, default_value_t = 0)]
        after: u64,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Remove the changes older than PURCHASE_CHANGES_RETENTION_DAYS now
    /// (payments-svc also does it by itself every hour).
    Prune {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        retention: RetentionArgs,
    },
}

impl ChangesCommand {
    pub(super) fn database(&self) -> &DatabaseArgs {
        match self {
            Self::Tail { database, .. } | Self::Prune { database, .. } => database,
        }
    }
}

/// Runs `command`; what to print when it is done.
pub(super) async fn run(
    db: &DatabaseConnection,
    signals: &FeedSignals,
    command: ChangesCommand,
) -> anyhow::Result<String> {
    match command {
        ChangesCommand::Tail { after, json, .. } => {
            tail(db, signals, after, json).await?;
            Ok(String::new())
        }
        ChangesCommand::Prune { retention, .. } => {
            let removed = retention::prune(db, retention.changes()).await?;
            Ok(format!("removed {removed} changes older than {} days\n", retention.changes_retention_days))
        }
    }
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
    // A command's connections are its own to lose: nothing probes them.
    let health = DatabaseHealth::default();
    let watchers = Arc::new(Watchers::new(signals.clone(), health.clone(), stop.clone(), 1));
    let metrics = Arc::new(Metrics::default());
    tokio::spawn(watch::listen(db.clone(), Arc::clone(&watchers), health.clone(), metrics, stop.clone()));
    let after = i64::try_from(after).unwrap_or(i64::MAX);
    let backlog_end = feed::head(db).await?;
    let mut changes = watch::start(db.clone(), health, after, &watchers)?;
    let mut stdout = std::io::stdout().lock();
    let mut table = (!json).then(|| Table::new(backlog_end));
    if let Some(table) = table.as_mut().filter(|_| backlog_end <= after) {
        // Nothing stored to measure: the header now, at its own widths.
        table.print_held(&mut stdout)?;
    }
    let ended = loop {
        let Some(change) = changes.recv().await else { break Ok(()) };
        match change {
            Ok(change) => {
                match &mut table {
                    Some(table) => table.push(&mut stdout, &change)?,
                    None => writeln!(stdout, "{}", change_json(&change))?,
                }
                stdout.flush()?;
            }
            Err(watch::WatchError::ShuttingDown) => break Ok(()),
            Err(error) => break Err(error),
        }
    };
    if let Some(table) = table.as_mut().filter(|table| table.widths.is_none()) {
        table.print_held(&mut stdout)?;
    }
    Ok(ended?)
}

/// `changes tail`'s table. It streams, so it takes its columns' widths
/// from the changes already stored when it starts (up to
/// [`Table::SAMPLE`] of them), printed at once; later cells wider than
/// their column push the rest of their line.
struct Table {
    /// The newest cursor stored at the start: the widths are known once it
    /// has been read.
    backlog_end: i64,
    /// Rows held until the widths are known.
    held: Vec<[String; 10]>,
    widths: Option<Vec<usize>>,
}

impl Table {
    const HEADER: [&str; 10] =
        ["CURSOR", "AT", "KIND", "SESSION", "USER", "COURSE", "STATUS", "ACCESS", "REFUNDED", "CAUSE"];
    /// Most rows held back to measure the columns.
    const SAMPLE: usize = 500;

    fn new(backlog_end: i64) -> Self {
        Self { backlog_end, held: Vec::new(), widths: None }
    }

    /// Prints `change` (with the header and the rows held, once the widths
    /// are known).
    fn push(&mut self, out: &mut impl std::io::Write, change: &Change) -> std::io::Result<()> {
        let cells = change_cells(change);
        if let Some(widths) = &self.widths {
            return writeln!(out, "{}", fixed_row(&cells, widths));
        }
        self.held.push(cells);
        if change.change.cursor >= self.backlog_end || self.held.len() >= Self::SAMPLE {
            self.print_held(out)?;
        }
        Ok(())
    }

    /// The header and the rows held, at widths that fit them all.
    fn print_held(&mut self, out: &mut impl std::io::Write) -> std::io::Result<()> {
        let widths = widths(&Self::HEADER, &self.held);
        writeln!(out, "{}", fixed_row(&Self::HEADER, &widths))?;
        for row in self.held.drain(..) {
            writeln!(out, "{}", fixed_row(&row, &widths))?;
        }
        self.widths = Some(widths);
        Ok(())
    }
}

fn change_cells(Change { change, purchase }: &Change) -> [String; 10] {
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
