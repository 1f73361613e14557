//! A verified Stripe event as payments-svc works with it: checked at the
//! gRPC boundary, so everything below sees only valid events, and only
//! values the database can hold.
//!
//! A signed event whose fields the schema cannot hold (an id of kilobytes,
//! a NUL character, a currency that is not three letters) can never be
//! stored as sent; refusing it would have Stripe redeliver it for days, and
//! letting it reach the database would fail the batch it shares. So it is
//! made storable here: it keeps no object, its id and type are cut to what
//! fits (marked by a `…` and a digest of the original, so a redelivery is
//! still recognised), and [`crate::rules`] records it as failed, naming the
//! fields.

use payments_proto::stripe::{ReversalObject, is_checkout_session_event, reversal_object};
use payments_proto::v1::{CheckoutSession, StripeEvent, stripe_event};
use sha2::{Digest, Sha256};

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
    /// Fields the database cannot hold as sent, described; when not empty
    /// the event carries no object and is recorded as failed.
    pub unstorable: Vec<String>,
}

/// Most bytes of an id-like value kept in an indexed column. Stripe's ids
/// are a few dozen characters.
pub const MAX_ID_BYTES: usize = 255;
/// Most bytes of a metadata value we store (Stripe allows 500 characters).
const MAX_METADATA_BYTES: usize = 2_000;
/// Bytes of a cut value kept before its `…` and digest.
const CUT_PREFIX_BYTES: usize = 200;

impl TryFrom<StripeEvent> for IncomingEvent {
    type Error = Error;

    /// Checks what the contract requires, naming the first field that
    /// breaks it.
    fn try_from(mut event: StripeEvent) -> Result<Self, Error> {
        let unstorable = make_storable(&mut event);
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
        if !unstorable.is_empty() {
            return Ok(Self::without_object(event, payload, unstorable));
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
            unstorable,
        })
    }
}

impl IncomingEvent {
    pub fn session_id(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.id.as_str())
    }

    /// An event kept only as a record: what it carried cannot be applied.
    fn without_object(event: StripeEvent, payload: String, unstorable: Vec<String>) -> Self {
        Self {
            id: event.id,
            event_type: event.r#type,
            created: event.created,
            livemode: event.livemode,
            api_version: event.api_version,
            session: None,
            reversal: None,
            payload,
            unstorable,
        }
    }
}

/// Cuts the event's own ids to what the database holds and checks what its
/// object would store; describes every field that did not fit.
fn make_storable(event: &mut StripeEvent) -> Vec<String> {
    let mut problems = Vec::new();
    cut_to_fit(&mut event.id, "id", &mut problems);
    cut_to_fit(&mut event.r#type, "type", &mut problems);
    if let Some(version) = event.api_version.as_mut() {
        cut_to_fit(version, "api_version", &mut problems);
    }
    // Each object's stored fields; a field's name is only spelled out for
    // the rare event that breaks it.
    let (object, id, charge, payment_intent, currency) = match &event.object {
        Some(stripe_event::Object::CheckoutSession(session)) => {
            for (key, value) in &session.metadata {
                if let Some(problem) = unfit(value, MAX_METADATA_BYTES) {
                    problems.push(format!("checkout_session.metadata.{key} {problem}"));
                }
            }
            ("checkout_session", &session.id, None, &session.payment_intent, &session.currency)
        }
        Some(stripe_event::Object::Charge(charge)) => {
            ("charge", &charge.id, None, &charge.payment_intent, &charge.currency)
        }
        Some(stripe_event::Object::Refund(refund)) => {
            ("refund", &refund.id, refund.charge.as_ref(), &refund.payment_intent, &refund.currency)
        }
        Some(stripe_event::Object::Dispute(dispute)) => {
            ("dispute", &dispute.id, dispute.charge.as_ref(), &dispute.payment_intent, &dispute.currency)
        }
        None => return problems,
    };
    for (field, value) in [("id", Some(id)), ("charge", charge), ("payment_intent", payment_intent.as_ref())]
    {
        if let Some(problem) = value.and_then(|value| unfit(value, MAX_ID_BYTES)) {
            problems.push(format!("{object}.{field} {problem}"));
        }
    }
    if currency.as_deref().is_some_and(|c| c.len() != 3 || !c.bytes().all(|b| b.is_ascii_alphabetic())) {
        problems.push(format!("{object}.currency is not a three-letter currency code"));
    }
    problems
}

/// What keeps `value` out of a column of `max` bytes, if anything.
fn unfit(value: &str, max: usize) -> Option<String> {
    if value.contains('\0') {
        Some("contains a NUL character".to_owned())
    } else if value.len() > max {
        Some(format!("is {} bytes, over {max}", value.len()))
    } else {
        None
    }
}

/// Replaces an unfit `value` with its storable form, noting the problem.
fn cut_to_fit(value: &mut String, field: &str, problems: &mut Vec<String>) {
    if let Some(problem) = unfit(value, MAX_ID_BYTES) {
        problems.push(format!("{field} {problem}; stored cut"));
        *value = cut(value);
    }
}

/// The first [`CUT_PREFIX_BYTES`] of `value` without NULs, then `…` and the
/// start of the SHA-256 of the whole: short, marked as cut, and the same for
/// every delivery of the same value.
pub fn cut(value: &str) -> String {
    let mut end = CUT_PREFIX_BYTES.min(value.len());
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    let prefix: String = value[..end].chars().filter(|c| *c != '\0').collect();
    let digest = hex::encode(&Sha256::digest(value.as_bytes())[..8]);
    format!("{prefix}…{digest}")
}

#[cfg(test)]
mod tests {
    use payments_proto::v1::Charge;

    use super::*;

    fn event(id: &str) -> StripeEvent {
        StripeEvent {
            id: id.to_owned(),
            r#type: "charge.refunded".into(),
            raw_payload: "{}".into(),
            object: Some(stripe_event::Object::Charge(Charge {
                id: "ch_1".into(),
                currency: Some("usd".into()),
                ..Default::default()
            })),
            ..Default::default()
        }
    }

    #[test]
    fn an_event_that_fits_is_left_as_it_is() {
        let incoming = IncomingEvent::try_from(event("evt_1")).expect("valid");
        assert!(incoming.unstorable.is_empty());
        assert!(incoming.reversal.is_some());
        assert_eq!(incoming.id, "evt_1");
    }

    #[test]
    fn an_id_too_long_is_cut_the_same_way_every_time_and_the_object_dropped() {
        let long = format!("evt_{}", "x".repeat(3_000));
        let first = IncomingEvent::try_from(event(&long)).expect("kept as a record");
        let again = IncomingEvent::try_from(event(&long)).expect("kept as a record");

        assert_eq!(first.id, again.id, "a redelivery is recognised");
        assert!(first.id.len() <= MAX_ID_BYTES && first.id.contains('…'), "{}", first.id);
        assert!(first.reversal.is_none() && first.session.is_none());
        assert_eq!(first.unstorable, ["id is 3004 bytes, over 255; stored cut"]);
    }

    #[test]
    fn nul_characters_and_bad_currencies_are_named() {
        let mut nul = event("evt_\0nul");
        let Some(stripe_event::Object::Charge(charge)) = nul.object.as_mut() else { unreachable!() };
        charge.currency = Some("usdollars".into());

        let incoming = IncomingEvent::try_from(nul).expect("kept as a record");

        assert!(!incoming.id.contains('\0'));
        assert_eq!(incoming.unstorable.len(), 2, "{:?}", incoming.unstorable);
        assert!(incoming.unstorable[1].contains("charge.currency"), "{:?}", incoming.unstorable);
    }

    #[test]
    fn ids_differing_only_after_the_cut_stay_apart() {
        let (a, b) = (format!("{}a", "x".repeat(300)), format!("{}b", "x".repeat(300)));
        assert_ne!(cut(&a), cut(&b));
    }
}
