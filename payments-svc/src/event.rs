//! A verified Stripe event as payments-svc works with it: checked at the
//! gRPC boundary, so everything below sees only valid events.

use payments_proto::stripe::{ReversalObject, is_checkout_session_event, reversal_object};
use payments_proto::v1::{CheckoutSession, StripeEvent, stripe_event};

use crate::error::Error;
use crate::reversals::Reversal;

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
    /// Present for every refund and dispute event: the change it reports.
    pub reversal: Option<Reversal>,
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
        let (session, reversal) = match event.object {
            Some(stripe_event::Object::CheckoutSession(session)) => (Some(session), None),
            Some(stripe_event::Object::Charge(charge)) => {
                (None, Some((ReversalObject::Charge, Reversal::from(&charge))))
            }
            Some(stripe_event::Object::Refund(refund)) => {
                (None, Some((ReversalObject::Refund, Reversal::from(&refund))))
            }
            Some(stripe_event::Object::Dispute(dispute)) => {
                (None, Some((ReversalObject::Dispute, Reversal::from(&dispute))))
            }
            None => (None, None),
        };
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
        let reversal = match (reversal_object(&event.r#type), reversal) {
            (None, _) => None,
            (Some(expected), Some((carried, reversal))) if expected == carried => Some(reversal),
            (Some(_), _) => {
                return Err(Error::invalid(
                    "object",
                    "must be the charge, refund or dispute the event type names",
                ));
            }
        };
        if reversal.as_ref().is_some_and(|r| r.object_id.is_empty()) {
            return Err(Error::invalid("object.id", "is empty"));
        }
        Ok(Self {
            id: event.id,
            event_type: event.r#type,
            created: event.created,
            livemode: event.livemode,
            api_version: event.api_version,
            session,
            reversal,
            payload,
        })
    }
}

impl IncomingEvent {
    pub fn session_id(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.id.as_str())
    }
}
