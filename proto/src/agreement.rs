//! The event a `HandleStripeEvent` call carries is the one its
//! `raw_payload` says.
//!
//! payments-svc stores the raw bytes, which are what an operator reads and
//! what a replay applies; if it applied typed fields sent beside them, the
//! event applied and the event kept could differ (one user's course
//! granted on another's receipt). So it reads the event from the raw
//! payload, once, with the parser the gateway would use, and applies that.
//! Typed fields a caller sends as well must say the same: a call where one
//! differs is refused, naming it, rather than silently overruled.

use crate::stripe::{ParseError, parse_event};
use crate::v1::stripe_event::Object;
use crate::v1::{CheckoutSession, StripeEvent};

/// Why a call's event cannot be applied.
#[derive(Debug, thiserror::Error)]
pub enum Disagreement {
    /// The payload is no event this service reads.
    #[error("raw_payload: {0}")]
    Unreadable(#[from] ParseError),
    /// This typed field (as the contract names it) was sent, and is not
    /// what the payload says.
    #[error("{0} is not what raw_payload says")]
    Field(&'static str),
}

/// The event `sent`'s raw payload says, provided every typed field `sent`
/// carries (an empty or zero field is one not sent) says the same.
pub fn read(sent: StripeEvent) -> Result<StripeEvent, Disagreement> {
    let read = parse_event(sent.raw_payload.clone())?;
    match differing_field(&sent, &read) {
        Some(field) => Err(Disagreement::Field(field)),
        None => Ok(read),
    }
}

/// Names the first of `fields` that `sent` carries and that differs in
/// `read`.
macro_rules! first_difference {
    ($sent:expr, $read:expr, $prefix:literal: $($field:ident),+ $(,)?) => {
        $(if sent_and_differs(&$sent.$field, &$read.$field) {
            return Some(concat!($prefix, stringify!($field)));
        })+
    };
}

/// Whether `sent` is set (not its type's default, which a caller that
/// sends only the payload leaves) and differs from `read`.
fn sent_and_differs<T: Default + PartialEq>(sent: &T, read: &T) -> bool {
    *sent != T::default() && sent != read
}

fn differing_field(sent: &StripeEvent, read: &StripeEvent) -> Option<&'static str> {
    first_difference!(sent, read, "": id, r#type, created, livemode, api_version);
    match (&sent.object, &read.object) {
        (None, _) => None,
        (Some(Object::CheckoutSession(sent)), Some(Object::CheckoutSession(read))) => session(sent, read),
        (sent, read) if sent == read => None,
        (Some(Object::Charge(_)), _) => Some("charge"),
        (Some(Object::Refund(_)), _) => Some("refund"),
        (Some(Object::Dispute(_)), _) => Some("dispute"),
        (Some(Object::CheckoutSession(_)), _) => Some("checkout_session"),
    }
}

fn session(sent: &CheckoutSession, read: &CheckoutSession) -> Option<&'static str> {
    first_difference!(sent, read, "checkout_session.":
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

    fn field(result: Result<StripeEvent, Disagreement>) -> Option<&'static str> {
        match result {
            Err(Disagreement::Field(field)) => Some(field),
            _ => None,
        }
    }

    #[test]
    fn the_payload_alone_or_with_the_same_typed_fields_reads_as_one_event() {
        let only_the_payload = StripeEvent { raw_payload: paid().raw_payload, ..Default::default() };
        assert_eq!(read(only_the_payload).expect("reads"), paid());
        assert_eq!(read(paid()).expect("reads"), paid());
    }

    #[test]
    fn each_typed_field_that_differs_is_named() {
        let mut event = paid();
        event.id = "evt_other".into();
        assert_eq!(field(read(event)), Some("id"));

        let mut event = paid();
        event.created += 1;
        assert_eq!(field(read(event)), Some("created"));

        let mut event = paid();
        if let Some(Object::CheckoutSession(session)) = &mut event.object {
            session.metadata.insert("userId".into(), "someone_else".into());
        }
        assert_eq!(field(read(event)), Some("checkout_session.metadata"));

        let event = StripeEvent { raw_payload: Bytes::from_static(b"{}"), ..paid() };
        assert!(matches!(read(event), Err(Disagreement::Unreadable(_))));
    }
}
