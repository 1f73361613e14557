//! A verified Stripe event as the rules work with it: checked once, so
//! everything after sees only valid events, and only values the database
//! can hold.
//!
//! A signed event whose fields the schema cannot hold (an id of kilobytes,
//! a NUL character, a currency that is not three letters) can never be
//! stored as sent; refusing it would have Stripe redeliver it for days, and
//! letting it reach the database would fail the batch it shares. So it is
//! made storable here: it keeps no object, its id and type are cut to what
//! fits (marked by a `…` and a digest of the original, so a redelivery is
//! still recognised), and [`crate::rules`] records it as failed, naming the
//! fields.

use std::collections::HashMap;

use sha2::{Digest, Sha256};

use crate::names::named;
use crate::reversals::{Reversal, ReversalKind};

/// Where a stored event stands. Only `Processed` and `Ignored` are settled
/// for good: a redelivery of a `Failed` event is applied again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EventStatus {
    /// Being applied by the transaction that inserted it; never committed as such.
    Received,
    Processed,
    Ignored,
    Failed,
}

named!(EventStatus, "event status" {
    Received => "received",
    Processed => "processed",
    Ignored => "ignored",
    Failed => "failed",
});

impl EventStatus {
    /// Whether a redelivery of the event is a duplicate with nothing to do.
    pub fn is_settled(self) -> bool {
        matches!(self, Self::Processed | Self::Ignored)
    }
}

/// A Checkout Session's `payment_status`; `Unspecified` when it is missing
/// or one Stripe added after this was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum PaymentStatus {
    #[default]
    Unspecified,
    Paid,
    Unpaid,
    NoPaymentRequired,
}

/// The prefix of every event type whose object is a Checkout Session.
const CHECKOUT_SESSION_EVENT_PREFIX: &str = "checkout.session.";

/// Whether events of type `event_type` carry a Checkout Session.
pub fn is_checkout_session_event(event_type: &str) -> bool {
    event_type.starts_with(CHECKOUT_SESSION_EVENT_PREFIX)
}

/// What object the event types that reverse money carry: refunds
/// (`charge.refunded`, `refund.*`, and `charge.refund.updated` of older API
/// versions) and disputes (`charge.dispute.*`). `None` for every other type.
pub fn reversal_kind_of(event_type: &str) -> Option<ReversalKind> {
    match event_type {
        "charge.refunded" => Some(ReversalKind::Charge),
        "refund.created" | "refund.updated" | "refund.failed" | "charge.refund.updated" => {
            Some(ReversalKind::Refund)
        }
        _ if event_type.starts_with("charge.dispute.") => Some(ReversalKind::Dispute),
        _ => None,
    }
}

/// A Checkout Session, as much of it as the rules read.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Session {
    /// `cs_...`.
    pub id: String,
    pub payment_status: PaymentStatus,
    pub livemode: bool,
    pub payment_intent: Option<String>,
    /// In the currency's smallest unit.
    pub amount_total: Option<i64>,
    pub currency: Option<String>,
    /// Set by our checkout code: `courseId` and `userId`.
    pub metadata: HashMap<String, String>,
    /// When Stripe created the session (Unix seconds), when known.
    pub created: Option<i64>,
}

/// What an event carries that the rules act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Object {
    Session(Session),
    Reversal(Reversal),
}

/// An event as it arrived, signature verified, before it is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivered {
    pub id: String,
    pub event_type: String,
    /// Stripe's `created`, in Unix seconds.
    pub created: i64,
    pub livemode: bool,
    pub api_version: Option<String>,
    pub object: Option<Object>,
    /// The exact body Stripe signed.
    pub payload: Vec<u8>,
}

/// Why a delivered event breaks the contract; retrying it cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} {problem}")]
pub struct Invalid {
    /// The field, as the contract names it.
    pub field: &'static str,
    pub problem: &'static str,
}

/// A verified Stripe event, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IncomingEvent {
    /// `evt_...`: the idempotency key.
    pub id: String,
    pub event_type: String,
    /// Stripe's `created`, in Unix seconds.
    pub created: i64,
    pub livemode: bool,
    pub api_version: Option<String>,
    /// Present for every `checkout.session.*` event.
    pub session: Option<Session>,
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

impl TryFrom<Delivered> for IncomingEvent {
    type Error = Invalid;

    /// Checks what the contract requires, naming the first field that
    /// breaks it.
    fn try_from(mut event: Delivered) -> Result<Self, Invalid> {
        let unstorable = make_storable(&mut event);
        if event.id.is_empty() {
            return Err(Invalid { field: "id", problem: "is empty" });
        }
        if event.event_type.is_empty() {
            return Err(Invalid { field: "type", problem: "is empty" });
        }
        let payload = String::from_utf8(std::mem::take(&mut event.payload))
            .map_err(|_| Invalid { field: "raw_payload", problem: "is not UTF-8" })?;
        if payload.is_empty() {
            return Err(Invalid { field: "raw_payload", problem: "is empty" });
        }
        if !unstorable.is_empty() {
            event.object = None;
            return Ok(Self::from_parts(event, None, None, payload, unstorable));
        }
        let (session, reversal) = match event.object.take() {
            Some(Object::Session(session)) => (Some(session), None),
            Some(Object::Reversal(reversal)) => (None, Some(reversal)),
            None => (None, None),
        };
        if is_checkout_session_event(&event.event_type) {
            match &session {
                None => {
                    return Err(Invalid {
                        field: "checkout_session",
                        problem: "is required for checkout.session.* events",
                    });
                }
                Some(s) if s.id.is_empty() => {
                    return Err(Invalid { field: "checkout_session.id", problem: "is empty" });
                }
                Some(_) => {}
            }
        }
        let reversal = match (reversal_kind_of(&event.event_type), reversal) {
            (None, _) => None,
            (Some(expected), Some(reversal)) if expected == reversal.kind() => Some(reversal),
            (Some(_), _) => {
                return Err(Invalid {
                    field: "object",
                    problem: "must be the charge, refund or dispute the event type names",
                });
            }
        };
        if reversal.as_ref().is_some_and(|r| r.object_id.is_empty()) {
            return Err(Invalid { field: "object.id", problem: "is empty" });
        }
        Ok(Self::from_parts(event, session, reversal, payload, unstorable))
    }
}

impl IncomingEvent {
    pub fn session_id(&self) -> Option<&str> {
        self.session.as_ref().map(|s| s.id.as_str())
    }

    /// The payment intent a refund or dispute event names.
    pub fn reversed_payment_intent_id(&self) -> Option<&str> {
        self.reversal.as_ref().and_then(|r| r.payment_intent_id.as_deref())
    }

    /// The charge a refund or dispute event names.
    pub fn reversed_charge_id(&self) -> Option<&str> {
        self.reversal.as_ref().and_then(|r| r.charge_id.as_deref())
    }

    fn from_parts(
        event: Delivered,
        session: Option<Session>,
        reversal: Option<Reversal>,
        payload: String,
        unstorable: Vec<String>,
    ) -> Self {
        Self {
            id: event.id,
            event_type: event.event_type,
            created: event.created,
            livemode: event.livemode,
            api_version: event.api_version,
            session,
            reversal,
            payload,
            unstorable,
        }
    }
}

/// Cuts the event's own ids to what the database holds and checks what its
/// object would store; describes every field that did not fit.
fn make_storable(event: &mut Delivered) -> Vec<String> {
    let mut problems = Vec::new();
    cut_to_fit(&mut event.id, "id", &mut problems);
    cut_to_fit(&mut event.event_type, "type", &mut problems);
    if let Some(version) = event.api_version.as_mut() {
        cut_to_fit(version, "api_version", &mut problems);
    }
    // Each object's stored fields; a field's name is only spelled out for
    // the rare event that breaks it.
    let (object, id, charge, payment_intent, currency) = match &event.object {
        Some(Object::Session(session)) => {
            for (key, value) in &session.metadata {
                if let Some(problem) = unfit(value, MAX_METADATA_BYTES) {
                    problems.push(format!("checkout_session.metadata.{key} {problem}"));
                }
            }
            ("checkout_session", &session.id, None, &session.payment_intent, &session.currency)
        }
        Some(Object::Reversal(reversal)) => {
            // A charge's own id is its `charge`: named once, as its id.
            let charge = match reversal.kind() {
                ReversalKind::Charge => None,
                _ => reversal.charge_id.as_ref(),
            };
            let object = reversal.kind().as_str();
            (object, &reversal.object_id, charge, &reversal.payment_intent_id, &reversal.currency)
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
    use super::*;
    use crate::reversals::ReversalStatus;

    fn event(id: &str) -> Delivered {
        Delivered {
            id: id.to_owned(),
            event_type: "charge.refunded".into(),
            created: 1,
            livemode: false,
            api_version: None,
            payload: b"{}".to_vec(),
            object: Some(Object::Reversal(Reversal {
                object_id: "ch_1".into(),
                status: ReversalStatus::Charge { refunded: false },
                amount: 0,
                currency: Some("usd".into()),
                payment_intent_id: None,
                charge_id: Some("ch_1".into()),
            })),
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
        let Some(Object::Reversal(charge)) = nul.object.as_mut() else { unreachable!() };
        charge.currency = Some("usdollars".into());

        let incoming = IncomingEvent::try_from(nul).expect("kept as a record");

        assert!(!incoming.id.contains('\0'));
        assert_eq!(incoming.unstorable.len(), 2, "{:?}", incoming.unstorable);
        assert!(incoming.unstorable[1].contains("charge.currency"), "{:?}", incoming.unstorable);
    }

    #[test]
    fn an_object_of_another_kind_than_the_type_names_is_refused() {
        let mut refund_typed = event("evt_1");
        refund_typed.event_type = "refund.created".into();
        let error = IncomingEvent::try_from(refund_typed).expect_err("a charge is no refund");
        assert_eq!(error.field, "object");
    }

    #[test]
    fn ids_differing_only_after_the_cut_stay_apart() {
        let (a, b) = (format!("{}a", "x".repeat(300)), format!("{}b", "x".repeat(300)));
        assert_ne!(cut(&a), cut(&b));
    }
}
