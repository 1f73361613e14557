//! Whether a `StripeEvent`'s typed fields are what its `raw_payload` says.
//!
//! payments-svc applies the typed fields and stores the raw bytes, which
//! are what an operator reads and what a replay applies. If the two could
//! differ, the event applied would not be the event kept: a caller could
//! grant one user's course with another's receipt. The gateway always
//! sends the two as one parse of the signed body; any other caller must do
//! the same, and a call where they differ is refused, naming the field.

use crate::stripe::parse_event;
use crate::v1::stripe_event::Object;
use crate::v1::{CheckoutSession, StripeEvent};

/// Compares field by field, naming the first that differs.
macro_rules! first_difference {
    ($typed:expr, $raw:expr, $prefix:literal: $($field:ident),+ $(,)?) => {
        $(if $typed.$field != $raw.$field {
            return Some(concat!($prefix, stringify!($field)));
        })+
    };
}

/// Where `event` and its `raw_payload` part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disagreement {
    /// The payload is no event the gateway would forward.
    Unreadable,
    /// This typed field (as the contract names it) is not what the
    /// payload, read the way the gateway reads it, says.
    Field(&'static str),
}

/// Where `event`'s typed fields and its `raw_payload` part, if they do.
pub fn disagreement(event: &StripeEvent) -> Option<Disagreement> {
    let Ok(raw) = parse_event(event.raw_payload.clone()) else { return Some(Disagreement::Unreadable) };
    differing_field(event, &raw).map(Disagreement::Field)
}

fn differing_field(event: &StripeEvent, raw: &StripeEvent) -> Option<&'static str> {
    first_difference!(event, raw, "": id, r#type, created, livemode, api_version);
    match (&event.object, &raw.object) {
        (Some(Object::CheckoutSession(typed)), Some(Object::CheckoutSession(raw))) => session(typed, raw),
        (typed, raw) if typed == raw => None,
        (Some(Object::Charge(_)), _) => Some("charge"),
        (Some(Object::Refund(_)), _) => Some("refund"),
        (Some(Object::Dispute(_)), _) => Some("dispute"),
        _ => Some("object"),
    }
}

fn session(typed: &CheckoutSession, raw: &CheckoutSession) -> Option<&'static str> {
    first_difference!(typed, raw, "checkout_session.":
        id, payment_status, status, metadata, client_reference_id, payment_intent,
        amount_total, currency, customer_email, livemode,
    );
    None
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    const PAID: &str = include_str!("../../tests/fixtures/stripe/checkout_session_completed_paid.json");

    fn paid() -> StripeEvent {
        parse_event(Bytes::from_static(PAID.as_bytes())).expect("parses")
    }

    #[test]
    fn one_parse_agrees_with_itself() {
        assert_eq!(disagreement(&paid()), None);
    }

    #[test]
    fn each_typed_field_changed_is_named() {
        let mut event = paid();
        event.id = "evt_other".into();
        assert_eq!(disagreement(&event), Some(Disagreement::Field("id")));

        let mut event = paid();
        event.created += 1;
        assert_eq!(disagreement(&event), Some(Disagreement::Field("created")));

        let mut event = paid();
        if let Some(Object::CheckoutSession(session)) = &mut event.object {
            session.metadata.insert("userId".into(), "someone_else".into());
        }
        assert_eq!(disagreement(&event), Some(Disagreement::Field("checkout_session.metadata")));

        let mut event = paid();
        event.object = None;
        assert_eq!(disagreement(&event), Some(Disagreement::Field("object")));

        let mut event = paid();
        event.raw_payload = Bytes::from_static(b"{}");
        assert_eq!(disagreement(&event), Some(Disagreement::Unreadable));
    }
}
