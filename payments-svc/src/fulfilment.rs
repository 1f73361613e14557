//! What an event means for purchases: a pure [`plan`], then [`apply`] inside
//! the caller's transaction. Every path that grants a course goes through here.
//!
//! | event type                   | `payment_status` | metadata        | result                 |
//! |------------------------------|------------------|-----------------|------------------------|
//! | `checkout.session.completed` | `paid`           | valid ids       | purchase paid          |
//! | `checkout.session.completed` | `paid`           | missing/invalid | failed, no purchase    |
//! | `checkout.session.completed` | anything else    | any             | ignored                |
//! | any other type               | any              | any             | ignored                |

use chrono::{DateTime, Utc};
use payments_proto::v1::{CheckoutSession, PaymentStatus};
use sea_orm::{ActiveValue::NotSet, ConnectionTrait, DbErr, Set};
use serde::Serialize;

use crate::db::entities::course_purchase::{self, PurchaseSource, PurchaseStatus};
use crate::db::purchases;
use crate::webhook::{IncomingEvent, Outcome};

/// The metadata keys our checkout code sets on every Checkout Session.
const COURSE_ID_KEY: &str = "courseId";
const USER_ID_KEY: &str = "userId";
/// Longest id accepted from metadata; UUIDs and numeric ids fit easily.
const MAX_ID_LEN: usize = 64;

/// Why an event was not applied: stored as the event's `error` JSON and
/// returned to the gateway.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Failure {
    /// Stable machine-readable code, e.g. `invalid_metadata`.
    pub code: &'static str,
    /// What exactly is wrong, for the operator.
    pub message: String,
}

impl Failure {
    fn new(code: &'static str, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({ "code": self.code, "message": self.message })
    }
}

/// A purchase to record, decided from a verified event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPurchase {
    pub user_id: String,
    pub course_id: String,
    pub checkout_session_id: String,
    pub payment_intent_id: Option<String>,
    pub amount_total: Option<i64>,
    pub currency: Option<String>,
}

/// What to do with an event, decided without touching the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    RecordPurchase(NewPurchase),
    Ignore(Failure),
    Fail(Failure),
}

/// Decides what `event` means. Pure, so the table above is unit-tested.
pub fn plan(event: &IncomingEvent) -> Plan {
    if event.event_type != "checkout.session.completed" {
        return Plan::Ignore(Failure::new(
            "unhandled_event_type",
            format!("event type {} is not acted on", event.event_type),
        ));
    }
    let Some(session) = &event.session else {
        return Plan::Fail(Failure::new("missing_session", "the event carries no checkout session"));
    };
    if session.payment_status() != PaymentStatus::Paid {
        return Plan::Ignore(Failure::new(
            "not_paid",
            format!("payment_status is {}", session.payment_status().as_str_name()),
        ));
    }
    match purchase_of(session) {
        Ok(purchase) => Plan::RecordPurchase(purchase),
        Err(failure) => Plan::Fail(failure),
    }
}

/// Carries out `plan` on `db`, normally a transaction.
pub async fn apply(db: &impl ConnectionTrait, plan: Plan, now: DateTime<Utc>) -> Result<Outcome, DbErr> {
    match plan {
        Plan::RecordPurchase(purchase) => {
            purchases::insert_if_absent(db, paid_purchase(purchase, now)).await?;
            Ok(Outcome::Processed)
        }
        Plan::Ignore(reason) => Ok(Outcome::Ignored { reason }),
        Plan::Fail(error) => Ok(Outcome::Failed { error }),
    }
}

fn paid_purchase(purchase: NewPurchase, now: DateTime<Utc>) -> course_purchase::ActiveModel {
    course_purchase::ActiveModel {
        id: NotSet,
        user_id: Set(purchase.user_id),
        course_id: Set(purchase.course_id),
        stripe_checkout_session_id: Set(purchase.checkout_session_id),
        stripe_payment_intent_id: Set(purchase.payment_intent_id),
        amount_total: Set(purchase.amount_total),
        currency: Set(purchase.currency),
        status: Set(PurchaseStatus::Paid),
        source: Set(PurchaseSource::Webhook),
        created_at: Set(now),
        updated_at: Set(now),
    }
}

/// Reads who bought what from the session's metadata, naming every missing
/// or invalid key at once.
fn purchase_of(session: &CheckoutSession) -> Result<NewPurchase, Failure> {
    let course_id = metadata_id(session, COURSE_ID_KEY);
    let user_id = metadata_id(session, USER_ID_KEY);
    match (course_id, user_id) {
        (Ok(course_id), Ok(user_id)) => Ok(NewPurchase {
            user_id,
            course_id,
            checkout_session_id: session.id.clone(),
            payment_intent_id: session.payment_intent.clone(),
            amount_total: session.amount_total,
            currency: session.currency.clone(),
        }),
        (course, user) => {
            let problems: Vec<String> = [course.err(), user.err()].into_iter().flatten().collect();
            Err(Failure::new("invalid_metadata", problems.join("; ")))
        }
    }
}

fn metadata_id(session: &CheckoutSession, key: &str) -> Result<String, String> {
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

    fn event(event_type: &str, payment_status: PaymentStatus, metadata: &[(&str, &str)]) -> IncomingEvent {
        let mut session = CheckoutSession {
            id: "cs_test_1".into(),
            payment_intent: Some("pi_1".into()),
            amount_total: Some(4900),
            currency: Some("usd".into()),
            metadata: metadata.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        session.set_payment_status(payment_status);
        IncomingEvent {
            id: "evt_1".into(),
            event_type: event_type.into(),
            created: 1,
            livemode: false,
            api_version: None,
            session: Some(session),
            payload: "{}".into(),
        }
    }

    #[test]
    fn paid_completed_session_with_ids_records_a_purchase() {
        let plan = plan(&event(
            "checkout.session.completed",
            PaymentStatus::Paid,
            &[("courseId", "42"), ("userId", "6f1c2a9e-1b7d-4c55-9d0e-3a2b1c4d5e6f")],
        ));
        let Plan::RecordPurchase(purchase) = plan else { panic!("{plan:?}") };
        assert_eq!(purchase.course_id, "42");
        assert_eq!(purchase.user_id, "6f1c2a9e-1b7d-4c55-9d0e-3a2b1c4d5e6f");
        assert_eq!(purchase.checkout_session_id, "cs_test_1");
        assert_eq!(purchase.amount_total, Some(4900));
    }

    #[test]
    fn missing_metadata_fails_naming_both_keys() {
        let plan = plan(&event("checkout.session.completed", PaymentStatus::Paid, &[]));
        let Plan::Fail(failure) = plan else { panic!("{plan:?}") };
        assert_eq!(failure.code, "invalid_metadata");
        assert_eq!(failure.message, "metadata.courseId is missing; metadata.userId is missing");
    }

    #[test]
    fn empty_or_malformed_ids_fail_naming_the_key() {
        let plan = plan(&event(
            "checkout.session.completed",
            PaymentStatus::Paid,
            &[("courseId", "  "), ("userId", "1; drop table")],
        ));
        let Plan::Fail(failure) = plan else { panic!("{plan:?}") };
        assert_eq!(failure.message, "metadata.courseId is missing; metadata.userId is not a valid id");
    }

    #[test]
    fn unpaid_completed_session_is_ignored() {
        let plan = plan(&event(
            "checkout.session.completed",
            PaymentStatus::Unpaid,
            &[("courseId", "1"), ("userId", "2")],
        ));
        assert!(matches!(plan, Plan::Ignore(Failure { code: "not_paid", .. })), "{plan:?}");
    }

    #[test]
    fn other_event_types_are_ignored_even_with_course_metadata() {
        let plan = plan(&event(
            "payment_intent.succeeded",
            PaymentStatus::Paid,
            &[("courseId", "1"), ("userId", "2")],
        ));
        assert!(matches!(plan, Plan::Ignore(Failure { code: "unhandled_event_type", .. })), "{plan:?}");
    }
}
