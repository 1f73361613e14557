//! Applying one event, or a stored one again, as a batch of one through
//! the one write path ([`crate::store::write`]), and what every path logs of
//! the decisions it made.

use payments_domain::event::IncomingEvent;
use payments_domain::rules::{FailureCode, Outcome, Policy};
use payments_domain::write::{Decision, Input};
use sea_orm::{DatabaseConnection, DbErr};

use crate::error::Error;
use crate::store::entities::stripe_webhook_event::{self, EventStatus};
use crate::store::signals::FeedSignals;
use crate::store::write;

/// Records the delivery and applies the event, all in one transaction.
/// A redelivery of an event already processed or ignored answers
/// [`Outcome::Duplicate`]; a failed one is applied again. Any database
/// error rolls the whole transaction back, so nothing is left marked
/// processed without its effects.
pub async fn handle_event(
    db: &DatabaseConnection,
    signals: &FeedSignals,
    event: &IncomingEvent,
    policy: Policy,
) -> Result<Outcome, DbErr> {
    let decision = write::apply(db, signals, &[Input::Event { event, deliveries: 1 }], policy).await?;
    log_decision(&decision);
    Ok(outcome_of(&decision, &event.id))
}

/// What became of `event_id` in `decision`.
pub fn outcome_of(decision: &Decision<'_>, event_id: &str) -> Outcome {
    decision.outcomes.get(event_id).cloned().unwrap_or(Outcome::Duplicate)
}

/// Logs each event applied now and each second payment found.
pub fn log_decision(decision: &Decision<'_>) {
    for write in decision.events.iter().filter(|write| write.settle.is_some()) {
        log_outcome(write.event, &outcome_of(decision, &write.event.id));
    }
    for owed in &decision.refunds_owed {
        tracing::warn!(
            session_id = %owed.checkout_session_id,
            payment_intent_id = %owed.payment_intent_id,
            "course paid again while another purchase grants it; recorded with needs_refund, refund owed"
        );
    }
}

/// One line per event, and a distinct warning for each reason an event is
/// not applied, so each can be grepped and alerted on.
fn log_outcome(event: &IncomingEvent, outcome: &Outcome) {
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
    let decision =
        write::apply(db, signals, &[Input::Event { event: &event, deliveries: 0 }], policy).await?;
    log_decision(&decision);
    let after =
        decision.events.first().and_then(|write| write.settle.as_ref()).map_or(stored.status, |s| s.0.into());
    let outcome = outcome_of(&decision, &event.id);
    Ok(Replay { event_id: event.id, before: stored.status, after, outcome })
}
