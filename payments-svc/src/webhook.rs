//! Applying verified Stripe events exactly once, and replaying stored ones.

use chrono::Utc;
use payments_proto::stripe::is_checkout_session_event;
use payments_proto::v1::{CheckoutSession, StripeEvent, stripe_event};
use sea_orm::{DatabaseConnection, DbErr, TransactionTrait};

use crate::db::entities::stripe_webhook_event::{self, EventStatus};
use crate::db::events;
use crate::error::Error;
use crate::fulfilment::{self, Failure, Policy};

/// A verified Stripe event, validated.
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

impl TryFrom<StripeEvent> for IncomingEvent {
    type Error = Error;

    /// Checks what the contract requires, naming the first field that
    /// breaks it.
    fn try_from(event: StripeEvent) -> Result<Self, Error> {
        if event.id.is_empty() {
            return Err(Error::invalid("id", "is empty"));
        }
        if event.r#type.is_empty() {
            return Err(Error::invalid("type", "is empty"));
        }
        let payload = String::from_utf8(event.raw_payload.to_vec())
            .map_err(|_| Error::invalid("raw_payload", "is not UTF-8"))?;
        if payload.is_empty() {
            return Err(Error::invalid("raw_payload", "is empty"));
        }
        let session = event.object.map(|stripe_event::Object::CheckoutSession(session)| session);
        if is_checkout_session_event(&event.r#type) {
            match &session {
                None => {
                    return Err(Error::invalid(
                        "checkout_session",
                        "is required for checkout.session.* events",
                    ));
                }
                Some(s) if s.id.is_empty() => return Err(Error::invalid("checkout_session.id", "is empty")),
                Some(_) => {}
            }
        }
        Ok(Self {
            id: event.id,
            event_type: event.r#type,
            created: event.created,
            livemode: event.livemode,
            api_version: event.api_version,
            session,
            payload,
        })
    }
}

impl IncomingEvent {
    fn session_id(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.id.as_str())
    }
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

    /// The status (and reason) an event is stored with after this outcome.
    pub(crate) fn settled_as(&self) -> (EventStatus, Option<serde_json::Value>) {
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
/// answer [`Outcome::Duplicate`]. A redelivery of a failed event is applied
/// again. Any database error rolls the whole transaction back, so nothing is
/// left marked processed without its effects.
pub async fn handle_event(
    db: &DatabaseConnection,
    event: &IncomingEvent,
    policy: Policy,
) -> Result<Outcome, DbErr> {
    let now = Utc::now();
    let plan = fulfilment::plan(event, policy);

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
    log_outcome(event, &outcome);
    Ok(outcome)
}

/// One line per event, and a distinct warning for each reason an event is
/// not applied, so each can be grepped and alerted on.
pub(crate) fn log_outcome(event: &IncomingEvent, outcome: &Outcome) {
    let (event_id, event_type, session_id) = (&event.id, &event.event_type, event.session_id());
    match outcome {
        Outcome::Ignored { reason } if reason.code == "unhandled_event_type" => {
            tracing::warn!(event_id, event_type, "unhandled event type; recorded as ignored")
        }
        Outcome::Failed { error } if error.code == "invalid_metadata" => tracing::warn!(
            event_id,
            event_type,
            session_id,
            problem = %error.message,
            "checkout session metadata invalid; recorded as failed"
        ),
        Outcome::Failed { error } if error.code == "livemode_mismatch" => tracing::warn!(
            event_id,
            event_type,
            livemode = event.livemode,
            problem = %error.message,
            "livemode mismatch; event refused and recorded as failed"
        ),
        Outcome::Failed { error } => {
            tracing::warn!(event_id, event_type, session_id, code = error.code, problem = %error.message, "event failed")
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
/// Its payload was verified when it was received. Idempotent: replaying a
/// processed event changes nothing, since purchases only move forward.
pub async fn replay(
    db: &DatabaseConnection,
    stored: &stripe_webhook_event::Model,
    policy: Policy,
) -> Result<Replay, Error> {
    let parsed = payments_proto::stripe::parse_event(stored.payload.clone().into())
        .map_err(|_| Error::invalid("payload", "no longer parses as a Stripe event"))?;
    let event = IncomingEvent::try_from(parsed)?;
    let now = Utc::now();
    let txn = db.begin().await?;
    let outcome = fulfilment::apply(&txn, fulfilment::plan(&event, policy), now).await?;
    let (status, error) = outcome.settled_as();
    events::settle(&txn, stored.id, status, error, now).await?;
    txn.commit().await?;
    log_outcome(&event, &outcome);
    Ok(Replay { event_id: event.id, before: stored.status, after: status, outcome })
}
