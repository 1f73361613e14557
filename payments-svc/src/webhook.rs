//! Applying one verified Stripe event exactly once.

use chrono::Utc;
use payments_proto::v1::CheckoutSession;
use sea_orm::{DatabaseConnection, DbErr, TransactionTrait};

use crate::db::entities::stripe_webhook_event::EventStatus;
use crate::db::events;
use crate::fulfilment::{self, Failure};

/// A verified Stripe event, validated at the gRPC boundary.
#[derive(Debug, Clone)]
pub struct IncomingEvent {
    /// `evt_...`: the idempotency key.
    pub id: String,
    pub event_type: String,
    /// Stripe's `created`, in Unix seconds.
    pub created: i64,
    pub livemode: bool,
    pub api_version: Option<String>,
    /// Present for every `checkout.session.*` event.
    pub session: Option<CheckoutSession>,
    /// The exact JSON body Stripe signed.
    pub payload: String,
}

/// What became of an event. Every variant is final for Stripe (a 2xx);
/// transient failures are errors instead, so that Stripe redelivers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Applied now.
    Processed,
    /// Already processed or ignored by an earlier delivery; nothing changed.
    Duplicate,
    /// Recorded, but not something this service acts on.
    Ignored { reason: Failure },
    /// Recorded as failed: it can never be applied as it is.
    Failed { error: Failure },
}

impl Outcome {
    /// The stable, lowercase name used in logs and responses.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Processed => "processed",
            Self::Duplicate => "duplicate",
            Self::Ignored { .. } => "ignored",
            Self::Failed { .. } => "failed",
        }
    }

    fn settled_as(&self) -> (EventStatus, Option<serde_json::Value>) {
        match self {
            Self::Processed | Self::Duplicate => (EventStatus::Processed, None),
            Self::Ignored { reason } => (EventStatus::Ignored, Some(reason.to_json())),
            Self::Failed { error } => (EventStatus::Failed, Some(error.to_json())),
        }
    }
}

/// Records the delivery and applies the event, all in one transaction.
///
/// The first statement inserts (or, for a redelivery, updates) the event's
/// row, which takes the row lock on PostgreSQL and the write lock on SQLite
/// before anything is read. Concurrent deliveries of one event therefore run
/// one after the other: the first applies it, the rest find it settled and
/// answer [`Outcome::Duplicate`]. Any database error rolls the whole
/// transaction back, so nothing is left marked processed without its effects.
pub async fn handle_event(db: &DatabaseConnection, event: &IncomingEvent) -> Result<Outcome, DbErr> {
    let now = Utc::now();
    let plan = fulfilment::plan(event);

    let txn = db.begin().await?;
    let row = events::record_delivery(&txn, event, now).await?;
    if row.status.is_settled() {
        txn.commit().await?;
        return Ok(Outcome::Duplicate);
    }
    let outcome = fulfilment::apply(&txn, plan, now).await?;
    let (status, error) = outcome.settled_as();
    events::settle(&txn, row.id, status, error, now).await?;
    txn.commit().await?;
    Ok(outcome)
}
