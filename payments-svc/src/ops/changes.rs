//! `payments-svc changes`: follow and prune the purchase change feed.

use std::sync::Arc;

use anyhow::Context;
use chrono::SecondsFormat;
use clap::Subcommand;
use sea_orm::{ActiveEnum, DatabaseConnection};
use tokio_util::sync::CancellationToken;

use super::format::time;
use crate::api::watch::{self, Watchers};
use crate::config::{DatabaseArgs, RetentionArgs};
use crate::fulfil::retention;
use crate::store::feed::Change;
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
