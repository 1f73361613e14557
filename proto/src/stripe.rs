//! Lenient parsing of Stripe's JSON into the typed `payments.v1` messages.
//!
//! Stripe adds fields and event types all the time, so everything not needed
//! here is ignored, and only what the event envelope's schema requires is
//! required. This is the one place Stripe's JSON is read: the gateway uses it
//! for webhooks, and anything that fetches sessions from Stripe's API uses
//! [`parse_checkout_session`].

use std::borrow::Cow;
use std::collections::HashMap;

use bytes::Bytes;
use payments_domain::event::{is_checkout_session_event, reversal_kind_of};
use payments_domain::reversals::ReversalKind;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::v1::{
    Charge, CheckoutSession, Dispute, DisputeStatus, PaymentStatus, Refund, RefundStatus, SessionStatus,
    StripeEvent, stripe_event,
};

/// Why a body is not a Stripe event this service can read.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error("body is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("not a Stripe event: {0}")]
    NotAnEvent(&'static str),
    #[error("data.object is not a checkout session: {0}")]
    NotACheckoutSession(&'static str),
    #[error("data.object is not the {expected} the event type says: {problem}")]
    NotTheObject { expected: &'static str, problem: &'static str },
}

/// An event as Stripe sends it, with `data.object` read as `O`: a raw
/// value, or straight away as a Checkout Session (see [`parse_event`]).
#[derive(Deserialize)]
struct Envelope<'a, O> {
    id: Option<String>,
    object: Option<&'a str>,
    #[serde(rename = "type")]
    kind: Option<String>,
    created: Option<i64>,
    livemode: Option<bool>,
    api_version: Option<String>,
    data: Option<EventData<O>>,
}

#[derive(Deserialize)]
struct EventData<O> {
    object: Option<O>,
}

impl<O> Envelope<'_, O> {
    /// Checks what every event needs: the event (without its typed object
    /// and payload) and its `data.object`.
    fn into_parts(self) -> Result<(StripeEvent, O), ParseError> {
        if self.object != Some("event") {
            return Err(ParseError::NotAnEvent("`object` is not \"event\""));
        }
        let id = non_empty(self.id).ok_or(ParseError::NotAnEvent("`id` is missing"))?;
        let kind = non_empty(self.kind).ok_or(ParseError::NotAnEvent("`type` is missing"))?;
        let created = self.created.ok_or(ParseError::NotAnEvent("`created` is missing"))?;
        let livemode = self.livemode.ok_or(ParseError::NotAnEvent("`livemode` is missing"))?;
        let data_object = self
            .data
            .and_then(|data| data.object)
            .ok_or(ParseError::NotAnEvent("`data.object` is missing"))?;
        let event = StripeEvent {
            id,
            r#type: kind,
            created,
            livemode,
            api_version: self.api_version,
            object: None,
            raw_payload: Bytes::new(),
        };
        Ok((event, data_object))
    }
}

#[derive(Deserialize)]
struct SessionJson {
    id: Option<String>,
    object: Option<String>,
    payment_status: Option<String>,
    status: Option<String>,
    metadata: Option<HashMap<String, String>>,
    client_reference_id: Option<String>,
    payment_intent: Option<IdOrObject>,
    amount_total: Option<i64>,
    currency: Option<String>,
    customer_email: Option<String>,
    customer_details: Option<CustomerDetails>,
    livemode: Option<bool>,
    created: Option<i64>,
}

/// An expandable field: Stripe sends the id, or the whole object when the
/// request asked for it to be expanded.
#[derive(Deserialize)]
#[serde(untagged)]
enum IdOrObject {
    Id(String),
    Object { id: String },
}

impl IdOrObject {
    fn into_id(self) -> String {
        match self {
            Self::Id(id) | Self::Object { id } => id,
        }
    }
}

#[derive(Deserialize)]
struct CustomerDetails {
    email: Option<String>,
}

/// What the gateway needs of a webhook body before forwarding it: that it
/// is an event, and its ids for the log line. payments-svc reads the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventSummary {
    pub id: String,
    pub event_type: String,
    /// `data.object.id`: the Checkout Session of `checkout.session.*`
    /// events.
    pub object_id: Option<String>,
}

impl EventSummary {
    /// The Checkout Session the event is about, for `checkout.session.*`.
    pub fn session_id(&self) -> Option<&str> {
        self.object_id.as_deref().filter(|_| is_checkout_session_event(&self.event_type))
    }
}

#[derive(Deserialize)]
struct SummaryJson<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    object: Option<Cow<'a, str>>,
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    data: Option<SummaryData<'a>>,
}

#[derive(Deserialize)]
struct SummaryData<'a> {
    #[serde(borrow)]
    object: Option<SummaryObject<'a>>,
}

#[derive(Deserialize)]
struct SummaryObject<'a> {
    #[serde(borrow)]
    id: Option<Cow<'a, str>>,
}

/// Reads only an event's envelope: `object` must be `event`, with an `id`,
/// a `type` and a `data.object`; the rest is skipped, not built. A body
/// this accepts may still fail [`parse_event`] (payments-svc answers that).
pub fn read_summary(payload: &[u8]) -> Result<EventSummary, ParseError> {
    let json: SummaryJson<'_> = serde_json::from_slice(payload)?;
    if json.object.as_deref() != Some("event") {
        return Err(ParseError::NotAnEvent("`object` is not \"event\""));
    }
    let id = json.id.filter(|id| !id.is_empty()).ok_or(ParseError::NotAnEvent("`id` is missing"))?;
    let kind =
        json.kind.filter(|kind| !kind.is_empty()).ok_or(ParseError::NotAnEvent("`type` is missing"))?;
    let object =
        json.data.and_then(|data| data.object).ok_or(ParseError::NotAnEvent("`data.object` is missing"))?;
    Ok(EventSummary {
        id: id.into_owned(),
        event_type: kind.into_owned(),
        object_id: object.id.map(Cow::into_owned),
    })
}

/// Longest Stripe id accepted (Stripe's ids are at most 255 characters).
pub const MAX_ID_LEN: usize = 255;

/// Whether `id` looks like a Checkout Session id Stripe issues: `cs_` then
/// letters, digits and `_`. Safe to put in a Stripe API path.
pub fn is_checkout_session_id(id: &str) -> bool {
    id.len() > "cs_".len()
        && id.len() <= MAX_ID_LEN
        && id.starts_with("cs_")
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Parses a webhook body. `payload` is kept, untouched, in
/// [`StripeEvent::raw_payload`].
///
/// An event's `type` may come after its `data` (it does in Stripe's own
/// payloads), so whether `data.object` is a Checkout Session is known only
/// at the end. The reference reading ([`parse_in_two_passes`]) keeps
/// `data.object` as raw JSON, then reads it again as a session when the
/// type says so: the session, most of the payload, is scanned twice. The
/// body is therefore first read in one pass that takes any `data.object`
/// for a session; that answers for every event whose object reads as one
/// (all checkout events, and most others), and only when it cannot answer
/// exactly as the reference would does the reference reading run. The two
/// are checked to agree by a property test.
pub fn parse_event(payload: Bytes) -> Result<StripeEvent, ParseError> {
    let event = match parse_in_one_pass(&payload) {
        Some(event) => event,
        None => parse_in_two_passes(&payload)?,
    };
    Ok(StripeEvent { raw_payload: payload, ..event })
}

/// The event (without its payload), if reading `data.object` as a session
/// gives exactly what [`parse_in_two_passes`] would; `None` otherwise (any
/// error included, so that errors always come from the reference reading).
fn parse_in_one_pass(payload: &[u8]) -> Option<StripeEvent> {
    let envelope: Envelope<'_, SessionJson> = serde_json::from_slice(payload).ok()?;
    let (mut event, session) = envelope.into_parts().ok()?;
    if reversal_kind_of(&event.r#type).is_some() {
        // Rare, and their object is no session: read them the reference way.
        return None;
    }
    if is_checkout_session_event(&event.r#type) {
        let session = checkout_session(session).ok()?;
        event.object = Some(stripe_event::Object::CheckoutSession(session));
    }
    Some(event)
}

/// The reference reading (the event without its payload): the envelope
/// with `data.object` as raw JSON, then the object as the kind the type
/// says it is, when it is one payments-svc acts on.
fn parse_in_two_passes(payload: &[u8]) -> Result<StripeEvent, ParseError> {
    let envelope: Envelope<'_, &RawValue> = serde_json::from_slice(payload)?;
    let (mut event, data_object) = envelope.into_parts()?;
    let json = data_object.get().as_bytes();
    event.object = match reversal_kind_of(&event.r#type) {
        Some(ReversalKind::Charge) => {
            Some(stripe_event::Object::Charge(charge(serde_json::from_slice(json)?)?))
        }
        Some(ReversalKind::Refund) => {
            Some(stripe_event::Object::Refund(refund(serde_json::from_slice(json)?)?))
        }
        Some(ReversalKind::Dispute) => {
            Some(stripe_event::Object::Dispute(dispute(serde_json::from_slice(json)?)?))
        }
        None if is_checkout_session_event(&event.r#type) => {
            Some(stripe_event::Object::CheckoutSession(parse_checkout_session(json)?))
        }
        None => None,
    };
    Ok(event)
}

/// Parses a Refund object, as `POST /v1/refunds` returns it.
pub fn parse_refund(json: &[u8]) -> Result<Refund, ParseError> {
    refund(serde_json::from_slice(json)?)
}

#[derive(Deserialize)]
struct ChargeJson {
    id: Option<String>,
    object: Option<String>,
    payment_intent: Option<IdOrObject>,
    amount: Option<i64>,
    amount_refunded: Option<i64>,
    refunded: Option<bool>,
    currency: Option<String>,
    livemode: Option<bool>,
}

#[derive(Deserialize)]
struct RefundJson {
    id: Option<String>,
    object: Option<String>,
    charge: Option<IdOrObject>,
    payment_intent: Option<IdOrObject>,
    amount: Option<i64>,
    currency: Option<String>,
    status: Option<String>,
}

#[derive(Deserialize)]
struct DisputeJson {
    id: Option<String>,
    object: Option<String>,
    charge: Option<IdOrObject>,
    payment_intent: Option<IdOrObject>,
    amount: Option<i64>,
    currency: Option<String>,
    status: Option<String>,
    livemode: Option<bool>,
}

/// The object's id, checking its `object` field when it has one.
fn object_id(id: Option<String>, object: Option<&str>, expected: &'static str) -> Result<String, ParseError> {
    if object.is_some_and(|o| o != expected) {
        return Err(ParseError::NotTheObject { expected, problem: "its `object` names another kind" });
    }
    non_empty(id).ok_or(ParseError::NotTheObject { expected, problem: "`id` is missing" })
}

fn charge(json: ChargeJson) -> Result<Charge, ParseError> {
    Ok(Charge {
        id: object_id(json.id, json.object.as_deref(), "charge")?,
        payment_intent: json.payment_intent.map(IdOrObject::into_id),
        amount: json.amount.unwrap_or_default(),
        amount_refunded: json.amount_refunded.unwrap_or_default(),
        refunded: json.refunded.unwrap_or_default(),
        currency: non_empty(json.currency),
        livemode: json.livemode.unwrap_or_default(),
    })
}

fn refund(json: RefundJson) -> Result<Refund, ParseError> {
    let status = json.status.as_deref().map_or(RefundStatus::Unspecified, RefundStatus::from_name);
    Ok(Refund {
        id: object_id(json.id, json.object.as_deref(), "refund")?,
        charge: json.charge.map(IdOrObject::into_id),
        payment_intent: json.payment_intent.map(IdOrObject::into_id),
        amount: json.amount.unwrap_or_default(),
        currency: non_empty(json.currency),
        status: status.into(),
    })
}

fn dispute(json: DisputeJson) -> Result<Dispute, ParseError> {
    let status = json.status.as_deref().map_or(DisputeStatus::Unspecified, DisputeStatus::from_name);
    Ok(Dispute {
        id: object_id(json.id, json.object.as_deref(), "dispute")?,
        charge: json.charge.map(IdOrObject::into_id),
        payment_intent: json.payment_intent.map(IdOrObject::into_id),
        amount: json.amount.unwrap_or_default(),
        currency: non_empty(json.currency),
        status: status.into(),
        livemode: json.livemode.unwrap_or_default(),
    })
}

/// One page of one of Stripe's lists (`{"object": "list", "data": [...],
/// "has_more": ...}`), newest first: each object's JSON as sent.
#[derive(Debug)]
pub struct ListPage {
    pub data: Vec<Bytes>,
    pub has_more: bool,
}

/// Parses a list page, keeping each object's JSON for its own parser.
pub fn parse_list(json: &[u8]) -> Result<ListPage, ParseError> {
    #[derive(Deserialize)]
    struct List<'a> {
        #[serde(borrow)]
        data: Vec<&'a RawValue>,
        has_more: bool,
    }
    let list: List<'_> = serde_json::from_slice(json)?;
    let data = list.data.into_iter().map(|raw| Bytes::copy_from_slice(raw.get().as_bytes())).collect();
    Ok(ListPage { data, has_more: list.has_more })
}

/// A Checkout Session as `GET /v1/checkout/sessions` lists it with
/// `expand[]=data.payment_intent`: the session, and the status of its
/// payment intent, which tells a delayed payment still clearing
/// (`processing`) from one that failed (`requires_payment_method`,
/// `canceled`) or cleared (`succeeded`). Absent when the session needed no
/// payment, or when the intent was not expanded.
#[derive(Debug, Clone)]
pub struct ListedSession {
    pub session: CheckoutSession,
    pub intent_status: Option<String>,
}

/// Parses one session of `GET /v1/checkout/sessions`.
pub fn parse_listed_session(json: &[u8]) -> Result<ListedSession, ParseError> {
    #[derive(Deserialize)]
    struct Intent {
        status: Option<String>,
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Expanded {
        Object(Intent),
        /// The intent's id: not expanded.
        Id(serde::de::IgnoredAny),
    }
    #[derive(Deserialize)]
    struct WithIntent {
        payment_intent: Option<Expanded>,
    }
    let session = parse_checkout_session(json)?;
    let intent: WithIntent = serde_json::from_slice(json)?;
    let intent_status = match intent.payment_intent {
        Some(Expanded::Object(intent)) => non_empty(intent.status),
        Some(Expanded::Id(_)) | None => None,
    };
    Ok(ListedSession { session, intent_status })
}

/// `created` (Unix seconds) of a listed refund or dispute.
fn created_of(json: &[u8], expected: &'static str) -> Result<i64, ParseError> {
    #[derive(Deserialize)]
    struct Created {
        created: Option<i64>,
    }
    let created: Created = serde_json::from_slice(json)?;
    created.created.ok_or(ParseError::NotTheObject { expected, problem: "`created` is missing" })
}

/// Parses one refund of `GET /v1/refunds`, with its `created`.
pub fn parse_listed_refund(json: &[u8]) -> Result<(Refund, i64), ParseError> {
    Ok((parse_refund(json)?, created_of(json, "refund")?))
}

/// Parses one dispute of `GET /v1/disputes`, with its `created`.
pub fn parse_listed_dispute(json: &[u8]) -> Result<(Dispute, i64), ParseError> {
    Ok((dispute(serde_json::from_slice(json)?)?, created_of(json, "dispute")?))
}

/// Parses a Checkout Session object, as found in an event's `data.object` or
/// returned by `GET /v1/checkout/sessions/{id}`.
pub fn parse_checkout_session(json: &[u8]) -> Result<CheckoutSession, ParseError> {
    checkout_session(serde_json::from_slice(json)?)
}

fn checkout_session(session: SessionJson) -> Result<CheckoutSession, ParseError> {
    if session.object.as_deref().is_some_and(|o| o != "checkout.session") {
        return Err(ParseError::NotACheckoutSession("`object` is not \"checkout.session\""));
    }
    let id = non_empty(session.id).ok_or(ParseError::NotACheckoutSession("`id` is missing"))?;
    let customer_email = non_empty(session.customer_details.and_then(|details| details.email))
        .or(non_empty(session.customer_email));

    Ok(CheckoutSession {
        id,
        payment_status: payment_status(session.payment_status.as_deref()).into(),
        status: session_status(session.status.as_deref()).into(),
        metadata: session.metadata.unwrap_or_default(),
        client_reference_id: non_empty(session.client_reference_id),
        payment_intent: session.payment_intent.map(IdOrObject::into_id),
        amount_total: session.amount_total,
        currency: non_empty(session.currency),
        customer_email,
        livemode: session.livemode.unwrap_or_default(),
        created: session.created,
    })
}

fn payment_status(value: Option<&str>) -> PaymentStatus {
    value.map_or(PaymentStatus::Unspecified, PaymentStatus::from_name)
}

fn session_status(value: Option<&str>) -> SessionStatus {
    value.map_or(SessionStatus::Unspecified, SessionStatus::from_name)
}

fn non_empty(value: Option<String>) -> Option<String> {
    value.filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use proptest::prelude::{Just, Strategy, any, prop_oneof};

    use super::*;

    fn fixture(name: &str) -> Bytes {
        let path = format!("{}/../tests/fixtures/stripe/{name}", env!("CARGO_MANIFEST_DIR"));
        Bytes::from(std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")))
    }

    fn session_of(event: &StripeEvent) -> &CheckoutSession {
        match &event.object {
            Some(stripe_event::Object::CheckoutSession(session)) => session,
            _ => panic!("{} carries no checkout session", event.id),
        }
    }

    #[test]
    fn refund_events_carry_their_refund_or_charge() {
        let refunded = parse_event(fixture("charge_refunded_full.json")).expect("parses");
        let Some(stripe_event::Object::Charge(charge)) = &refunded.object else { panic!("{refunded:?}") };
        assert_eq!(charge.id, "ch_3mTPAJRlM3fKnuH7GJoyVXb3");
        assert_eq!(charge.payment_intent.as_deref(), Some("pi_3chHPNw84sPSl7cwMX3oOFxK"));
        assert_eq!((charge.amount, charge.amount_refunded, charge.refunded), (4900, 4900, true));
        let partial = parse_event(fixture("charge_refunded_partial.json")).expect("parses");
        let Some(stripe_event::Object::Charge(charge)) = &partial.object else { panic!("{partial:?}") };
        assert_eq!((charge.amount_refunded, charge.refunded), (1000, false));

        for (name, status) in [
            ("refund_created_full.json", RefundStatus::Succeeded),
            ("refund_failed.json", RefundStatus::Failed),
        ] {
            let event = parse_event(fixture(name)).expect("parses");
            let Some(stripe_event::Object::Refund(refund)) = &event.object else { panic!("{event:?}") };
            assert_eq!(refund.id, "re_3RfD8kLq2VxN0pAa1s0Fe7Gh", "{name}");
            assert_eq!(refund.charge.as_deref(), Some("ch_3mTPAJRlM3fKnuH7GJoyVXb3"), "{name}");
            assert_eq!(refund.payment_intent.as_deref(), Some("pi_3chHPNw84sPSl7cwMX3oOFxK"), "{name}");
            assert_eq!((refund.amount, refund.status()), (4900, status), "{name}");
        }
    }

    #[test]
    fn dispute_events_carry_their_dispute_with_its_status() {
        for (name, status) in [
            ("charge_dispute_created.json", DisputeStatus::NeedsResponse),
            ("charge_dispute_funds_withdrawn.json", DisputeStatus::NeedsResponse),
            ("charge_dispute_closed_won.json", DisputeStatus::Won),
            ("charge_dispute_closed_lost.json", DisputeStatus::Lost),
        ] {
            let event = parse_event(fixture(name)).expect("parses");
            let Some(stripe_event::Object::Dispute(dispute)) = &event.object else { panic!("{event:?}") };
            assert_eq!(dispute.id, "dp_3RfD8kLq2VxN0pAa1dP0aB1", "{name}");
            assert_eq!(dispute.payment_intent.as_deref(), Some("pi_3chHPNw84sPSl7cwMX3oOFxK"), "{name}");
            assert_eq!((dispute.amount, dispute.status()), (4900, status), "{name}");
        }
    }

    #[test]
    fn a_reversal_event_whose_object_is_another_kind_is_refused() {
        let body = fixture("checkout_session_completed_paid.json");
        let text = String::from_utf8(body.to_vec()).expect("UTF-8");
        let retyped =
            text.replace("\"type\": \"checkout.session.completed\"", "\"type\": \"charge.dispute.created\"");
        assert_ne!(retyped, text, "the fixture names its type");
        let error = parse_event(Bytes::from(retyped)).expect_err("refused");
        assert!(matches!(error, ParseError::NotTheObject { expected: "dispute", .. }), "{error}");
    }

    #[test]
    fn checkout_session_ids_are_recognised() {
        assert!(is_checkout_session_id("cs_test_a1iolLS3ITgWKPeHk8FcCmpFOlMp4DuFLZFxmEhdm55FlhTr8srB0dB3N3"));
        assert!(is_checkout_session_id("cs_live_1"));
        for bad in ["", "cs_", "pi_123", "cs_1 2", "cs_1/../x", "cs_é", &format!("cs_{}", "a".repeat(253))] {
            assert!(!is_checkout_session_id(bad), "{bad}");
        }
    }

    #[test]
    fn paid_checkout_session_completed_is_parsed_with_every_field_fulfilment_needs() {
        let body = fixture("checkout_session_completed_paid.json");
        let event = parse_event(body.clone()).expect("parses");

        assert_eq!(event.id, "evt_18X4SVyF5WUVAoCOMU35o1Gb");
        assert_eq!(event.r#type, "checkout.session.completed");
        assert_eq!(event.created, 1_785_766_187);
        assert!(!event.livemode);
        assert_eq!(event.api_version.as_deref(), Some("2026-07-29.dahlia"));
        assert_eq!(event.raw_payload, body);

        let session = session_of(&event);
        assert!(session.id.starts_with("cs_test_"));
        assert_eq!(session.payment_status(), PaymentStatus::Paid);
        assert_eq!(session.status(), SessionStatus::Complete);
        assert_eq!(session.payment_intent.as_deref(), Some("pi_3chHPNw84sPSl7cwMX3oOFxK"));
        assert_eq!(session.amount_total, Some(4900));
        assert_eq!(session.currency.as_deref(), Some("usd"));
        assert_eq!(session.customer_email.as_deref(), Some("jenny.rosen@example.com"));
        assert!(session.metadata.contains_key("courseId"));
        assert!(session.metadata.contains_key("userId"));
    }

    #[test]
    fn every_checkout_fixture_parses_with_its_payment_status() {
        let cases = [
            ("checkout_session_completed_unpaid_async.json", PaymentStatus::Unpaid),
            ("checkout_session_async_payment_succeeded.json", PaymentStatus::Paid),
            ("checkout_session_async_payment_failed.json", PaymentStatus::Unpaid),
            ("checkout_session_expired.json", PaymentStatus::Unpaid),
            ("checkout_session_completed_no_metadata.json", PaymentStatus::Paid),
        ];
        for (file, expected) in cases {
            let event = parse_event(fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(session_of(&event).payment_status(), expected, "{file}");
        }
    }

    #[test]
    fn expired_session_with_null_payment_intent_and_customer_details_parses() {
        let event = parse_event(fixture("checkout_session_expired.json")).expect("parses");
        let session = session_of(&event);
        assert_eq!(session.status(), SessionStatus::Expired);
        assert_eq!(session.payment_intent, None);
    }

    #[test]
    fn non_checkout_events_carry_no_typed_object() {
        for file in ["payment_intent_succeeded.json", "charge_succeeded.json"] {
            let event = parse_event(fixture(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
            assert!(event.object.is_none(), "{file}");
        }
    }

    #[test]
    fn standalone_session_object_parses_like_the_one_inside_the_event() {
        let from_event = parse_event(fixture("checkout_session_completed_paid.json")).expect("parses");
        let standalone = parse_checkout_session(&fixture("checkout_session.object.json")).expect("parses");
        assert_eq!(&standalone, session_of(&from_event));
    }

    #[test]
    fn null_metadata_and_expanded_payment_intent_are_accepted() {
        let json = br#"{"id":"cs_1","object":"checkout.session","metadata":null,
            "payment_intent":{"id":"pi_1","object":"payment_intent"},"payment_status":"surprise"}"#;
        let session = parse_checkout_session(json).expect("parses");
        assert!(session.metadata.is_empty());
        assert_eq!(session.payment_intent.as_deref(), Some("pi_1"));
        assert_eq!(session.payment_status(), PaymentStatus::Unspecified);
    }

    #[test]
    fn json_that_is_not_an_event_is_rejected_with_the_reason() {
        let cases: [(&[u8], &str); 5] = [
            (b"not json", "not valid JSON"),
            (b"[]", "not valid JSON"),
            (br#"{"object":"charge","id":"ch_1"}"#, "`object`"),
            (br#"{"object":"event","type":"x","created":1,"livemode":false,"data":{"object":{}}}"#, "`id`"),
            (br#"{"object":"event","id":"evt_1","type":"x","created":1,"livemode":false}"#, "`data.object`"),
        ];
        for (body, reason) in cases {
            let err = parse_event(Bytes::from_static(body)).expect_err("rejected");
            assert!(err.to_string().contains(reason), "{err} should mention {reason}");
        }
    }

    #[test]
    fn every_fixture_event_is_read_in_one_pass_exactly_as_in_two() {
        let events = [
            "checkout_session_completed_paid.json",
            "checkout_session_completed_unpaid_async.json",
            "checkout_session_async_payment_succeeded.json",
            "checkout_session_async_payment_failed.json",
            "checkout_session_expired.json",
            "checkout_session_completed_no_metadata.json",
            "payment_intent_succeeded.json",
            "charge_succeeded.json",
        ];
        for name in events {
            let body = fixture(name);
            let one_pass = parse_in_one_pass(&body).unwrap_or_else(|| panic!("{name}: not read in one pass"));
            let reference = parse_in_two_passes(&body).expect("parses");
            assert_eq!(one_pass, reference, "{name}");
        }
    }

    /// JSON values shaped like what a `data.object` may hold: right and
    /// wrong types for the session's fields, nulls, nesting.
    fn object_like() -> impl Strategy<Value = serde_json::Value> {
        use serde_json::{Value, json};
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            Just(json!(1.5)),
            "(cs_|pi_|)[a-z0-9_]{0,6}|checkout\\.session|paid|unpaid|open|complete|expired|"
                .prop_map(Value::String),
        ];
        let key = "id|object|payment_status|status|metadata|client_reference_id|payment_intent|amount_total|currency|customer_email|customer_details|email|livemode|other";
        leaf.prop_recursive(3, 24, 6, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(key, inner, 0..8)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(3_000))]

        #[test]
        fn reading_in_one_pass_answers_as_the_reference_reading(
            kind in "checkout\\.session\\.completed|checkout\\.session\\.[a-z_]{0,8}|charge\\.succeeded|[a-z.]{0,12}",
            object in object_like(),
            type_last in any::<bool>(),
            drop_field in proptest::option::of("id|object|created|livemode|data"),
        ) {
            // Written field by field: a `serde_json` map would sort the keys
            // and always put `type` last.
            let kind = format!(r#""type":{}"#, serde_json::Value::String(kind));
            let data = format!(r#""data":{{"object":{object}}}"#);
            let (before, after) = if type_last { (data, kind) } else { (kind, data) };
            let fields: Vec<String> = [r#""id":"evt_1""#, r#""object":"event""#, r#""created":1"#, r#""livemode":false"#]
                .map(str::to_owned)
                .into_iter()
                .chain([before, after])
                .filter(|field| drop_field.as_ref().is_none_or(|dropped| !field.starts_with(&format!("\"{dropped}\""))))
                .collect();
            let body = Bytes::from(format!("{{{}}}", fields.join(",")));

            let answer = parse_event(body.clone()).map_err(|e| e.to_string());
            let reference = parse_in_two_passes(&body)
                .map(|event| StripeEvent { raw_payload: body.clone(), ..event })
                .map_err(|e| e.to_string());
            proptest::prop_assert_eq!(answer, reference);
        }
    }

    #[test]
    fn checkout_event_whose_object_is_not_a_session_is_rejected() {
        let body = br#"{"object":"event","id":"evt_1","type":"checkout.session.completed",
            "created":1,"livemode":false,"data":{"object":{"object":"charge","id":"ch_1"}}}"#;
        let err = parse_event(Bytes::from_static(body)).expect_err("rejected");
        assert!(matches!(err, ParseError::NotACheckoutSession(_)), "{err}");
    }
}
