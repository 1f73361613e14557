//! Applying events: the per-event path that records a delivery and carries
//! out its [`Plan`] in one transaction, exactly once, and replays of stored
//! events. The group-commit paths in [`crate::fulfil::batch`] must decide exactly as
//! [`handle_event`] does; it stays the reference.

use chrono::{DateTime, Utc};
use sea_orm::{DatabaseConnection, DatabaseTransaction, DbErr, SqlErr, TransactionTrait};

use payments_domain::event::IncomingEvent;
use payments_domain::purchase::{NewPurchase, PurchaseStatus};
use payments_domain::reversals::DisputeAccess;
use payments_domain::rules::{self, FailureCode, Outcome, Plan, Policy};

use crate::error::Error;
use crate::store::entities::stripe_webhook_event::{self, EventStatus};
use crate::store::feed::{self, Touch, Touched};
use crate::store::reversals::{self, Fact};
use crate::store::signals::FeedSignals;
use crate::store::{events, purchases, refund_requests};

/// Records the delivery and applies the event, all in one transaction.
///
/// The first statement inserts (or, for a redelivery, updates) the event's
/// row, which takes the row lock on PostgreSQL and the write lock on SQLite
/// before anything is read. Concurrent deliveries of one event therefore run
/// one after the other: the first applies it, the rest find it settled and
/// answer [`Outcome::Duplicate`]. A redelivery of a failed event is applied
/// again. Any database error rolls the whole transaction back, so nothing is
/// left marked processed without its effects.
pub async fn handle_event(
    db: &DatabaseConnection,
    signals: &FeedSignals,
    event: &IncomingEvent,
    policy: Policy,
) -> Result<Outcome, DbErr> {
    let now = Utc::now();
    let plan = rules::plan(event, policy);

    let txn = db.begin().await?;
    if plan.records_facts() {
        feed::lock_for_facts(&txn).await?;
    }
    let row = events::record_delivery(&txn, event, now).await?;
    if row.status.is_settled() {
        txn.commit().await?;
        return Ok(Outcome::Duplicate);
    }
    let applied = apply(&txn, plan, &event.id, policy.dispute_access, now).await?;
    let (status, error) = applied.outcome.settled_as();
    events::settle(&txn, row.id, status, error, now).await?;
    applied.commit(txn, signals).await?;
    log_outcome(event, &applied.outcome);
    Ok(applied.outcome)
}

/// One line per event, and a distinct warning for each reason an event is
/// not applied, so each can be grepped and alerted on.
pub(crate) fn log_outcome(event: &IncomingEvent, outcome: &Outcome) {
    let (event_id, event_type, session_id) = (&event.id, &event.event_type, event.session_id());
    match outcome {
        Outcome::Ignored { reason } if reason.code == FailureCode::UnhandledEventType => {
            tracing::warn!(event_id, event_type, "unhandled event type; recorded as ignored")
        }
        Outcome::Failed { error } if error.code == FailureCode::InvalidMetadata => tracing::warn!(
            event_id,
            event_type,
            session_id,
            problem = %error.message,
            "checkout session metadata invalid; recorded as failed"
        ),
        Outcome::Failed { error } if error.code == FailureCode::LivemodeMismatch => tracing::warn!(
            event_id,
            event_type,
            livemode = event.livemode,
            problem = %error.message,
            "livemode mismatch; event refused and recorded as failed"
        ),
        Outcome::Failed { error } => {
            tracing::warn!(event_id, event_type, session_id, code = %error.code, problem = %error.message, "event failed")
        }
        _ => {}
    }
    tracing::debug!(event_id, event_type, session_id, outcome = outcome.as_str(), "stripe event handled");
}

/// What a replay did to one stored event.
#[derive(Debug, Clone)]
pub struct Replay {
    pub event_id: String,
    pub before: EventStatus,
    pub after: EventStatus,
    pub outcome: Outcome,
}

/// Applies a stored event again through the same fulfilment as a delivery.
/// Its payload was verified when it was received. Only a failed event is
/// applied again: a processed or ignored one is settled, and replaying it
/// changes nothing, whatever the policy is now (as a redelivery would not).
pub async fn replay(
    db: &DatabaseConnection,
    signals: &FeedSignals,
    stored: &stripe_webhook_event::Model,
    policy: Policy,
) -> Result<Replay, Error> {
    if matches!(stored.status, EventStatus::Processed | EventStatus::Ignored) {
        let (event_id, status) = (stored.event_id.clone(), stored.status);
        return Ok(Replay { event_id, before: status, after: status, outcome: Outcome::Duplicate });
    }
    let parsed = payments_proto::stripe::parse_event(stored.payload.clone().into())
        .map_err(|_| Error::invalid("payload", "no longer parses as a Stripe event"))?;
    let event = payments_proto::domain::incoming(parsed)?;
    let now = Utc::now();
    let plan = rules::plan(&event, policy);
    let txn = db.begin().await?;
    if plan.records_facts() {
        feed::lock_for_facts(&txn).await?;
    }
    let applied = apply(&txn, plan, &event.id, policy.dispute_access, now).await?;
    let (status, error) = applied.outcome.settled_as();
    events::settle(&txn, stored.id, status, error, now).await?;
    applied.commit(txn, signals).await?;
    log_outcome(&event, &applied.outcome);
    Ok(Replay { event_id: event.id, before: stored.status, after: status.into(), outcome: applied.outcome })
}

/// What [`apply`] did: the outcome, and how many changes it published.
#[derive(Debug)]
pub struct Applied {
    pub outcome: Outcome,
    pub published: usize,
}

impl Applied {
    /// Commits `txn` and, if it published changes, wakes the application's
    /// watchers.
    pub async fn commit(&self, txn: DatabaseTransaction, signals: &FeedSignals) -> Result<(), DbErr> {
        txn.commit().await?;
        if self.published > 0 {
            signals.announce();
        }
        Ok(())
    }
}

/// Carries out `plan` inside the caller's transaction, and publishes the
/// changes of access it makes, caused by `cause` (an event id, `verify`).
/// The webhook path, the verify path and replays all write purchases
/// through here. A plan that records facts needs [`feed::lock_for_facts`]
/// taken first.
pub async fn apply(
    db: &DatabaseTransaction,
    plan: Plan,
    cause: &str,
    dispute_access: DisputeAccess,
    now: DateTime<Utc>,
) -> Result<Applied, DbErr> {
    let (outcome, published) = match plan {
        Plan::Record(purchase, status) => {
            record(db, &purchase, status, now).await?;
            let touched = Touched { touch: Touch::Session(&purchase.checkout_session_id), cause };
            (Outcome::Processed, feed::publish(db, &[touched], dispute_access, now).await?)
        }
        Plan::Reverse { reversal, event_id, created } => {
            reversals::record(db, &[Fact { reversal: &reversal, event_id: &event_id, created }], now).await?;
            let touch = Touch::Payment {
                payment_intent_id: reversal.payment_intent_id.as_deref(),
                charge_id: reversal.charge_id.as_deref(),
            };
            (Outcome::Processed, feed::publish(db, &[Touched { touch, cause }], dispute_access, now).await?)
        }
        Plan::Acknowledge => (Outcome::Processed, 0),
        Plan::Ignore(reason) => (Outcome::Ignored { reason }, 0),
        Plan::Fail(error) => (Outcome::Failed { error }, 0),
    };
    Ok(Applied { outcome, published })
}

/// Writes the purchase. When it is a second paid purchase of a course the
/// user already owns, the database refuses it (a partial unique index allows
/// one paid, unflagged purchase per user and course); it is then recorded
/// with `needs_refund`, inside a savepoint so the transaction stays usable,
/// and the refund it is owed is recorded in the same transaction (see
/// [`crate::fulfil::refunds`]).
async fn record(
    db: &DatabaseTransaction,
    purchase: &NewPurchase,
    status: PurchaseStatus,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let savepoint = db.begin().await?;
    match purchases::advance(&savepoint, purchase, status, false, now).await {
        Ok(_) => savepoint.commit().await,
        Err(error) if matches!(error.sql_err(), Some(SqlErr::UniqueConstraintViolation(_))) => {
            savepoint.rollback().await?;
            tracing::warn!(
                user_id = %purchase.user_id,
                course_id = %purchase.course_id,
                session_id = %purchase.checkout_session_id,
                "course paid twice; second payment recorded with needs_refund"
            );
            purchases::advance(db, purchase, status, true, now).await?;
            match &purchase.payment_intent_id {
                Some(payment_intent_id) => {
                    refund_requests::owe(db, &purchase.checkout_session_id, payment_intent_id, now).await
                }
                None => Ok(()),
            }
        }
        Err(error) => Err(error),
    }
}
