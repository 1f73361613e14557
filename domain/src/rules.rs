//! The rules: what an event means for purchases, decided without I/O (facts
//! in, decisions out). [`plan`] turns an event into a [`Plan`];
//! [`crate::apply`] carries plans out inside transactions. Every path that
//! grants a course (webhook, group commit, verify, reconcile, replay) decides
//! here.
//!
//! | event type                                  | `payment_status`             | purchase becomes    |
//! |---------------------------------------------|------------------------------|---------------------|
//! | `checkout.session.completed`                | `paid`, `no_payment_required`| paid                |
//! | `checkout.session.completed`                | `unpaid` (bank debit)        | pending (no access) |
//! | `checkout.session.async_payment_succeeded`  | any                          | paid                |
//! | `checkout.session.async_payment_failed`     | any                          | failed              |
//! | `checkout.session.expired`                  | any                          | nothing granted     |
//! | `charge.refunded`, `refund.*`, `charge.dispute.*` |                        | a fact recorded: see [`crate::reversals`] |
//! | any other type                              |                              | event ignored       |
//!
//! A purchase only moves up, pending → failed → paid: whatever order the
//! events arrive in, and however often, the end state is the same. So
//! `async_payment_succeeded` before `completed` ends paid, and a late
//! `completed` (unpaid) never takes access back.
//!
//! An event that can never be applied as it is (metadata missing or not
//! ids, the wrong livemode) is stored as failed with the reason, for an
//! operator to inspect and replay.

use crate::event::{EventStatus, IncomingEvent, PaymentStatus, Session};
use crate::names::named;
use crate::purchase::{NewPurchase, PurchaseSource, PurchaseStatus};
use crate::reversals::{DisputeAccess, Reversal};

/// The metadata keys our checkout code sets on every Checkout Session.
const COURSE_ID_KEY: &str = "courseId";
const USER_ID_KEY: &str = "userId";
/// Longest id accepted from metadata; UUIDs and numeric ids fit easily.
const MAX_ID_LEN: usize = 64;

/// What this deployment accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Stripe's `livemode` of the events to fulfil: `true` in production,
    /// `false` for test mode. Events of the other mode are refused.
    pub livemode: bool,
    /// Whether access stays while a chargeback is open.
    pub dispute_access: DisputeAccess,
}

/// Why an event is not applied, as a stable machine-readable code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FailureCode {
    /// A field the database cannot hold as sent (see [`crate::event`]).
    UnstorableFields,
    /// A live-mode event reached a test-mode deployment, or the reverse.
    LivemodeMismatch,
    /// A type this service does not act on (ignored, not failed).
    UnhandledEventType,
    /// A checkout event without its session.
    MissingSession,
    /// A session whose `payment_status` is missing or unknown.
    UnknownPaymentStatus,
    /// `courseId` or `userId` missing from the session's metadata, or not an id.
    InvalidMetadata,
    /// A refund or dispute that names neither a payment intent nor a charge.
    UnlinkableReversal,
}

named!(FailureCode, "failure code" {
    UnstorableFields => "unstorable_fields",
    LivemodeMismatch => "livemode_mismatch",
    UnhandledEventType => "unhandled_event_type",
    MissingSession => "missing_session",
    UnknownPaymentStatus => "unknown_payment_status",
    InvalidMetadata => "invalid_metadata",
    UnlinkableReversal => "unlinkable_reversal",
});

/// Why an event was not applied: stored as the event's `error` JSON and
/// returned to the gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub code: FailureCode,
    /// What exactly is wrong, for the operator.
    pub message: String,
}

impl Failure {
    pub fn new(code: FailureCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// The stored form: `{"code", "message"}`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code.as_str(), "message": self.message })
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
    pub fn settled_as(&self) -> (EventStatus, Option<serde_json::Value>) {
        match self {
            Self::Processed | Self::Duplicate => (EventStatus::Processed, None),
            Self::Ignored { reason } => (EventStatus::Ignored, Some(reason.to_json())),
            Self::Failed { error } => (EventStatus::Failed, Some(error.to_json())),
        }
    }
}

/// What to do with an event, decided without touching the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Record the purchase at this status, or move it up to it.
    Record(NewPurchase, PurchaseStatus),
    /// Record this fact of money going back, reported by `event_id`; it
    /// counts for its purchase whenever that exists (see
    /// [`crate::reversals`]).
    Reverse {
        reversal: Reversal,
        event_id: String,
        created: i64,
    },
    /// Applied, with nothing to write (an expired session).
    Acknowledge,
    Ignore(Failure),
    Fail(Failure),
}

impl Plan {
    /// Whether carrying the plan out records a reversal fact.
    pub fn records_facts(&self) -> bool {
        matches!(self, Self::Reverse { .. })
    }
}

/// Decides what `event` means under `policy`. Pure, so the table above is
/// unit-tested.
pub fn plan(event: &IncomingEvent, policy: Policy) -> Plan {
    if !event.unstorable.is_empty() {
        return Plan::Fail(Failure::new(FailureCode::UnstorableFields, event.unstorable.join("; ")));
    }
    if let Err(failure) = check_livemode(event.livemode, policy) {
        return Plan::Fail(failure);
    }
    if let Some(Err(failure)) = event.session.as_ref().map(|s| check_livemode(s.livemode, policy)) {
        return Plan::Fail(failure);
    }
    if let Some(reversal) = &event.reversal {
        return plan_reversal(reversal, event);
    }
    let target = match event.event_type.as_str() {
        "checkout.session.completed" => None,
        "checkout.session.async_payment_succeeded" => Some(PurchaseStatus::Paid),
        "checkout.session.async_payment_failed" => Some(PurchaseStatus::Failed),
        "checkout.session.expired" => return Plan::Acknowledge,
        other => {
            return Plan::Ignore(Failure::new(
                FailureCode::UnhandledEventType,
                format!("event type {other} is not acted on"),
            ));
        }
    };
    match &event.session {
        Some(session) => plan_session(session, target, PurchaseSource::Webhook),
        None => {
            Plan::Fail(Failure::new(FailureCode::MissingSession, "the event carries no checkout session"))
        }
    }
}

/// What a completed session means: recorded at `target`, or, when `None`,
/// at the status its `payment_status` implies (as for
/// `checkout.session.completed`).
pub fn plan_session(session: &Session, target: Option<PurchaseStatus>, source: PurchaseSource) -> Plan {
    let status = match target.map_or_else(|| completed_status(session), Ok) {
        Ok(status) => status,
        Err(failure) => return Plan::Fail(failure),
    };
    match purchase_of(session, source) {
        Ok(purchase) => Plan::Record(purchase, status),
        Err(failure) => Plan::Fail(failure),
    }
}

/// A reversal is recorded whether or not its purchase is known yet; one
/// that names no payment at all can never count, so it fails.
fn plan_reversal(reversal: &Reversal, event: &IncomingEvent) -> Plan {
    if !reversal.is_linkable() {
        let message =
            format!("{} {} names neither a payment intent nor a charge", reversal.kind(), reversal.object_id);
        return Plan::Fail(Failure::new(FailureCode::UnlinkableReversal, message));
    }
    Plan::Reverse { reversal: reversal.clone(), event_id: event.id.clone(), created: event.created }
}

/// Refuses objects of the other Stripe mode than the deployment's.
pub fn check_livemode(livemode: bool, policy: Policy) -> Result<(), Failure> {
    if livemode == policy.livemode {
        return Ok(());
    }
    Err(Failure::new(
        FailureCode::LivemodeMismatch,
        format!(
            "a {} event reached a deployment that accepts {} events",
            mode_name(livemode),
            mode_name(policy.livemode)
        ),
    ))
}

fn completed_status(session: &Session) -> Result<PurchaseStatus, Failure> {
    match session.payment_status {
        PaymentStatus::Paid | PaymentStatus::NoPaymentRequired => Ok(PurchaseStatus::Paid),
        PaymentStatus::Unpaid => Ok(PurchaseStatus::Pending),
        PaymentStatus::Unspecified => Err(Failure::new(
            FailureCode::UnknownPaymentStatus,
            "payment_status is missing or not one we know",
        )),
    }
}

fn mode_name(livemode: bool) -> &'static str {
    if livemode { "live-mode" } else { "test-mode" }
}

/// Reads who bought what from the session's metadata, naming every missing
/// or invalid key at once.
fn purchase_of(session: &Session, source: PurchaseSource) -> Result<NewPurchase, Failure> {
    let course_id = metadata_id(session, COURSE_ID_KEY);
    let user_id = metadata_id(session, USER_ID_KEY);
    match (course_id, user_id) {
        (Ok(course_id), Ok(user_id)) => Ok(NewPurchase {
            source,
            user_id,
            course_id,
            checkout_session_id: session.id.clone(),
            payment_intent_id: session.payment_intent.clone(),
            amount_total: session.amount_total,
            currency: session.currency.clone(),
            checkout_created: session.created,
        }),
        (course, user) => {
            let problems: Vec<String> = [course.err(), user.err()].into_iter().flatten().collect();
            Err(Failure::new(FailureCode::InvalidMetadata, problems.join("; ")))
        }
    }
}

fn metadata_id(session: &Session, key: &str) -> Result<String, String> {
    let value = session.metadata.get(key).map(|v| v.trim()).unwrap_or_default();
    if value.is_empty() {
        return Err(format!("metadata.{key} is missing"));
    }
    let well_formed = value.len() <= MAX_ID_LEN
        && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !well_formed {
        return Err(format!("metadata.{key} is not a valid id"));
    }
    Ok(value.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST_MODE: Policy = Policy { livemode: false, dispute_access: DisputeAccess::Suspend };
    const IDS: &[(&str, &str)] = &[("courseId", "42"), ("userId", "6f1c2a9e-1b7d-4c55-9d0e-3a2b1c4d5e6f")];

    fn event(event_type: &str, payment_status: PaymentStatus, metadata: &[(&str, &str)]) -> IncomingEvent {
        let session = Session {
            id: "cs_test_1".into(),
            payment_status,
            payment_intent: Some("pi_1".into()),
            amount_total: Some(4900),
            currency: Some("usd".into()),
            metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        IncomingEvent {
            id: "evt_1".into(),
            event_type: event_type.into(),
            created: 1,
            livemode: false,
            api_version: None,
            session: Some(session),
            reversal: None,
            payload: "{}".into(),
            unstorable: Vec::new(),
        }
    }

    fn status_of(plan: Plan) -> PurchaseStatus {
        match plan {
            Plan::Record(_, status) => status,
            other => panic!("expected a purchase, got {other:?}"),
        }
    }

    #[test]
    fn the_transition_table_holds() {
        use PaymentStatus::*;
        let cases = [
            ("checkout.session.completed", Paid, PurchaseStatus::Paid),
            ("checkout.session.completed", NoPaymentRequired, PurchaseStatus::Paid),
            ("checkout.session.completed", Unpaid, PurchaseStatus::Pending),
            ("checkout.session.async_payment_succeeded", Paid, PurchaseStatus::Paid),
            ("checkout.session.async_payment_failed", Unpaid, PurchaseStatus::Failed),
        ];
        for (event_type, payment_status, expected) in cases {
            let plan = plan(&event(event_type, payment_status, IDS), TEST_MODE);
            assert_eq!(status_of(plan), expected, "{event_type} / {payment_status:?}");
        }
    }

    #[test]
    fn paid_completed_session_records_who_bought_what() {
        let plan = plan(&event("checkout.session.completed", PaymentStatus::Paid, IDS), TEST_MODE);
        let Plan::Record(purchase, _) = plan else { panic!("{plan:?}") };
        assert_eq!(purchase.course_id, "42");
        assert_eq!(purchase.user_id, "6f1c2a9e-1b7d-4c55-9d0e-3a2b1c4d5e6f");
        assert_eq!(purchase.checkout_session_id, "cs_test_1");
        assert_eq!(purchase.amount_total, Some(4900));
    }

    #[test]
    fn expired_session_is_acknowledged_without_a_purchase() {
        let plan = plan(&event("checkout.session.expired", PaymentStatus::Unpaid, IDS), TEST_MODE);
        assert_eq!(plan, Plan::Acknowledge);
    }

    #[test]
    fn missing_metadata_fails_naming_both_keys() {
        let plan = plan(&event("checkout.session.completed", PaymentStatus::Paid, &[]), TEST_MODE);
        let Plan::Fail(failure) = plan else { panic!("{plan:?}") };
        assert_eq!(failure.code, FailureCode::InvalidMetadata);
        assert_eq!(failure.message, "metadata.courseId is missing; metadata.userId is missing");
    }

    #[test]
    fn partial_empty_or_malformed_ids_fail_naming_the_key() {
        let metadata = [("courseId", "  "), ("userId", "1; drop table")];
        let plan = plan(
            &event("checkout.session.async_payment_failed", PaymentStatus::Unpaid, &metadata),
            TEST_MODE,
        );
        let Plan::Fail(failure) = plan else { panic!("{plan:?}") };
        assert_eq!(failure.message, "metadata.courseId is missing; metadata.userId is not a valid id");

        let only_course = plan_of(&[("courseId", "42")]);
        assert_eq!(
            only_course,
            Plan::Fail(Failure::new(FailureCode::InvalidMetadata, "metadata.userId is missing"))
        );
    }

    fn plan_of(metadata: &[(&str, &str)]) -> Plan {
        plan(&event("checkout.session.completed", PaymentStatus::Paid, metadata), TEST_MODE)
    }

    #[test]
    fn unknown_payment_status_fails_rather_than_guessing() {
        let plan = plan(&event("checkout.session.completed", PaymentStatus::Unspecified, IDS), TEST_MODE);
        assert!(
            matches!(plan, Plan::Fail(Failure { code: FailureCode::UnknownPaymentStatus, .. })),
            "{plan:?}"
        );
    }

    #[test]
    fn other_event_types_are_ignored_even_with_course_metadata() {
        let plan = plan(&event("payment_intent.succeeded", PaymentStatus::Paid, IDS), TEST_MODE);
        assert!(
            matches!(plan, Plan::Ignore(Failure { code: FailureCode::UnhandledEventType, .. })),
            "{plan:?}"
        );
    }

    #[test]
    fn events_of_the_other_mode_are_refused() {
        let live = Policy { livemode: true, ..TEST_MODE };
        let plan = plan(&event("checkout.session.completed", PaymentStatus::Paid, IDS), live);
        let Plan::Fail(failure) = plan else { panic!("{plan:?}") };
        assert_eq!(failure.code, FailureCode::LivemodeMismatch);
        assert_eq!(failure.message, "a test-mode event reached a deployment that accepts live-mode events");
    }
}
