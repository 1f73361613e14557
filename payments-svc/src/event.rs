//! A verified Stripe event as payments-svc works with it: checked at the
//! gRPC boundary, so everything below sees only valid events.

use payments_proto::stripe::is_checkout_session_event;
use payments_proto::v1::{CheckoutSession, StripeEvent, stripe_event};

use crate::error::Error;

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
    pub fn session_id(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.id.as_str())
    }
}
