//! The Checkout Session lifecycle: delayed payments, every ordering of the
//! two-event sequences, duplicates, free and expired sessions, and paying
//! twice for one course.

use bytes::Bytes;
use e2e::{fixture, replace_once, with_fresh_ids};
use hyper::StatusCode;
use payments_proto::v1::{
    PurchaseStatus as Answer, UserCourse, VerifyPurchaseRequest, verify_purchase_request::Lookup,
};
use payments_svc::store::entities::course_purchase::PurchaseStatus;
use payments_svc::store::entities::stripe_webhook_event::EventStatus;

use crate::helpers::{Stack, StackOptions, TestDb, on_both_databases};

/// `checkout.session.completed`, ACH debit not yet cleared.
fn completed_unpaid() -> Bytes {
    fixture("checkout_session_completed_unpaid_async.json").expect("fixture")
}

/// The same session's debit clearing.
fn succeeded() -> Bytes {
    fixture("checkout_session_async_payment_succeeded.json").expect("fixture")
}

/// The same session's debit bouncing: the succeeded event with its type,
/// payment status and event id changed.
fn failed() -> Bytes {
    let body = succeeded();
    let body = replace_once(
        &body,
        "checkout.session.async_payment_succeeded",
        "checkout.session.async_payment_failed",
    );
    let body =
        replace_once(&body.expect("type"), r#""payment_status": "paid""#, r#""payment_status": "unpaid""#);
    replace_once(&body.expect("status"), "evt_1paIrzHPCeORItBudC9Ol0G1", "evt_1paIrzHPCeORItBudFAILED0")
        .expect("event id")
}

/// Delivers `events` in order, each expected to be acknowledged, and
/// returns the one purchase they made.
async fn deliver_all(
    stack: &Stack,
    events: &[Bytes],
) -> payments_svc::store::entities::course_purchase::Model {
    for event in events {
        let answer = stack.deliver(event).await;
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }
    let mut purchases = stack.purchases().await;
    assert_eq!(purchases.len(), 1, "{purchases:?}");
    purchases.remove(0)
}

async fn verify_status(stack: &Stack, session_id: &str) -> serde_json::Value {
    stack.get(&format!("/api/payments/verify?session_id={session_id}")).await.json()["status"].clone()
}

on_both_databases!(delayed_payment_is_pending_without_access_until_it_succeeds);
async fn delayed_payment_is_pending_without_access_until_it_succeeds(db: TestDb) {
    let stack = Stack::start(db).await;

    let pending = deliver_all(&stack, &[completed_unpaid()]).await;
    assert_eq!(pending.status, PurchaseStatus::Pending);
    assert_eq!(verify_status(&stack, &pending.stripe_checkout_session_id).await, "pending");

    let paid = deliver_all(&stack, &[succeeded()]).await;
    assert_eq!(paid.status, PurchaseStatus::Paid);
    assert_eq!(paid.id, pending.id, "the same purchase moved forward");
    assert_eq!(paid.amount_total, Some(12900));
    assert_eq!(verify_status(&stack, &paid.stripe_checkout_session_id).await, "paid");
    stack.shutdown().await;
}

/// Each ordering of the two-event sequences, alone and with every event
/// delivered twice, ends in one purchase in the right state.
async fn ordering_ends_in(db: TestDb, order: [fn() -> Bytes; 2], expected: PurchaseStatus) {
    let stack = Stack::start(db).await;
    let [first, second] = order.map(|event| event());

    let purchase = deliver_all(&stack, &[first.clone(), second.clone(), first, second]).await;

    assert_eq!(purchase.status, expected);
    let events = stack.events().await;
    assert_eq!(events.len(), 2);
    assert!(events.iter().all(|e| e.status == EventStatus::Processed && e.delivery_count == 2), "{events:?}");
    stack.shutdown().await;
}

on_both_databases!(completed_unpaid_then_succeeded_is_paid);
async fn completed_unpaid_then_succeeded_is_paid(db: TestDb) {
    ordering_ends_in(db, [completed_unpaid, succeeded], PurchaseStatus::Paid).await;
}

on_both_databases!(succeeded_then_completed_unpaid_stays_paid);
async fn succeeded_then_completed_unpaid_stays_paid(db: TestDb) {
    ordering_ends_in(db, [succeeded, completed_unpaid], PurchaseStatus::Paid).await;
}

on_both_databases!(completed_unpaid_then_failed_is_failed);
async fn completed_unpaid_then_failed_is_failed(db: TestDb) {
    ordering_ends_in(db, [completed_unpaid, failed], PurchaseStatus::Failed).await;
}

on_both_databases!(failed_then_completed_unpaid_stays_failed);
async fn failed_then_completed_unpaid_stays_failed(db: TestDb) {
    ordering_ends_in(db, [failed, completed_unpaid], PurchaseStatus::Failed).await;
}

on_both_databases!(session_needing_no_payment_grants_the_course);
async fn session_needing_no_payment_grants_the_course(db: TestDb) {
    let stack = Stack::start(db).await;
    let paid = fixture("checkout_session_completed_paid.json").expect("fixture");
    let free =
        replace_once(&paid, r#""payment_status": "paid""#, r#""payment_status": "no_payment_required""#)
            .expect("variant");

    let purchase = deliver_all(&stack, &[free]).await;

    assert_eq!(purchase.status, PurchaseStatus::Paid);
    stack.shutdown().await;
}

on_both_databases!(expired_session_grants_nothing_and_is_processed);
async fn expired_session_grants_nothing_and_is_processed(db: TestDb) {
    let stack = Stack::start(db).await;

    let answer = stack.deliver(&fixture("checkout_session_expired.json").expect("fixture")).await;

    assert_eq!(answer.json()["outcome"], "processed");
    assert!(stack.purchases().await.is_empty());
    assert_eq!(stack.events().await[0].status, EventStatus::Processed);
    stack.shutdown().await;
}

on_both_databases!(paying_twice_for_one_course_records_both_and_flags_the_second);
async fn paying_twice_for_one_course_records_both_and_flags_the_second(db: TestDb) {
    let url = db.url.clone();
    let stack = Stack::start(db).await;
    let first = fixture("checkout_session_completed_paid.json").expect("fixture");
    let second = with_fresh_ids(&first, "_second").expect("variant");

    stack.deliver(&first).await;
    stack.deliver(&second).await;

    let purchases = stack.purchases().await;
    assert_eq!(purchases.len(), 2, "money is never dropped");
    let flagged: Vec<_> = purchases
        .iter()
        .map(|p| (p.stripe_checkout_session_id.ends_with("_second"), p.needs_refund))
        .collect();
    assert_eq!(flagged, [(false, false), (true, true)]);
    assert!(purchases.iter().all(|p| p.status == PurchaseStatus::Paid));
    let owed = crate::processes::payments_cli(&url, &[], &["purchases", "list", "--needs-refund"]);
    let owed = String::from_utf8_lossy(&owed.stdout);
    assert!(owed.contains(&format!("{}  ", purchases[1].stripe_checkout_session_id)), "{owed}");
    assert!(owed.contains("(1 purchases)"), "only the second payment is owed a refund:\n{owed}");

    let mut grpc = stack.grpc().await;
    let owner = VerifyPurchaseRequest {
        lookup: Some(Lookup::UserCourse(UserCourse {
            user_id: purchases[0].user_id.clone(),
            course_id: purchases[0].course_id.clone(),
        })),
    };
    let answer = grpc.verify_purchase(owner).await.expect("answer").into_inner();
    assert_eq!(answer.status(), Answer::Paid);
    let holder = answer.purchase.expect("purchase");
    assert_eq!(holder.checkout_session_id, purchases[0].stripe_checkout_session_id, "access is one course");
    stack.shutdown().await;
}

on_both_databases!(two_payments_for_one_course_at_once_grant_access_once);
async fn two_payments_for_one_course_at_once_grant_access_once(db: TestDb) {
    let stack = Stack::start(db).await;
    let paid = fixture("checkout_session_completed_paid.json").expect("fixture");
    let sessions = ["_a", "_b", "_c", "_d"].map(|suffix| with_fresh_ids(&paid, suffix).expect("variant"));

    let answers = stack.deliver_concurrently(&sessions).await;

    assert!(answers.iter().all(|a| a.status == StatusCode::OK), "{answers:?}");
    let purchases = stack.purchases().await;
    assert_eq!(purchases.len(), 4);
    assert_eq!(purchases.iter().filter(|p| !p.needs_refund).count(), 1, "{purchases:?}");
    stack.shutdown().await;
}

on_both_databases!(event_of_the_other_livemode_is_refused_and_applied_once_the_setting_is_fixed);
async fn event_of_the_other_livemode_is_refused_and_applied_once_the_setting_is_fixed(db: TestDb) {
    let mut stack = Stack::start_with(db, StackOptions { livemode: true, ..Default::default() }).await;
    let test_mode_event = fixture("checkout_session_completed_paid.json").expect("fixture");

    let refused = stack.deliver(&test_mode_event).await;

    assert_eq!(refused.status, StatusCode::OK, "acknowledged: Stripe retrying cannot help");
    assert_eq!(refused.json()["outcome"], "failed");
    assert!(stack.purchases().await.is_empty());
    let stored = stack.events().await.remove(0);
    assert_eq!(stored.status, EventStatus::Failed);
    assert_eq!(stored.error.as_ref().expect("error")["code"], "livemode_mismatch");

    stack.restart_payments_svc(StackOptions::default()).await;
    let redelivered = stack.deliver(&test_mode_event).await;

    assert_eq!(
        redelivered.json()["outcome"],
        "processed",
        "a failed event is applied again when redelivered"
    );
    assert_eq!(stack.purchases().await.len(), 1);
    stack.shutdown().await;
}
