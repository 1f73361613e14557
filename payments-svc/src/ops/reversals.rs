//! `payments-svc reversals`: refunds and disputes that reach no purchase.

use clap::Subcommand;
use sea_orm::{ActiveEnum, DatabaseConnection};

use super::format::{table, time};
use crate::config::DatabaseArgs;
use crate::store::entities::payment_reversal::Model as ReversalRow;
use crate::store::reversals;

#[derive(Debug, Subcommand)]
pub enum ReversalsCommand {
    /// Refunds and disputes that reach no course purchase: payments made
    /// outside course checkout, or purchases not recorded here (yet).
    Unmatched {
        #[command(flatten)]
        database: DatabaseArgs,
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
}

impl ReversalsCommand {
    pub(super) fn database(&self) -> &DatabaseArgs {
        match self {
            Self::Unmatched { database, .. } => database,
        }
    }
}

/// Runs `command`; what to print.
pub(super) async fn run(db: &DatabaseConnection, command: ReversalsCommand) -> anyhow::Result<String> {
    match command {
        ReversalsCommand::Unmatched { limit, .. } => {
            Ok(unmatched_table(&reversals::unmatched(db, limit).await?))
        }
    }
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
