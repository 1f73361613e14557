//! Group commit, observed: one transaction for a burst of events, each
//! caller with its own outcome, a batch that cannot be written whole
//! falling back without failing the others, several batches in progress
//! at once sharing events between them, and a worker's own connection
//! replaced when it died while idle.

use std::time::Duration;

use bytes::Bytes;
use e2e::{fixture, unique_paid_event, with_fresh_ids};
use payments_svc::store::entities::course_purchase::PurchaseStatus;

use crate::helpers::{
    Stack, StackOptions, TestDb, metric, on_both_databases, outcome, outcomes_around_one_event_sent_twice,
};

/// Long enough that a burst of concurrent calls lands in one batch.
const GATHER_US: u64 = 1_000_000;

/// Group commit as payments-svc sees it: the gateway forwards every event
/// on a call of its own, so that only payments-svc gathers them.
fn gathered_by_payments_svc() -> StackOptions {
    StackOptions {
        payments: Some(|settings| settings.batching.max_wait = Duration::from_micros(GATHER_US)),
        gateway: Some(|settings| {
            settings.forwarding.max_events = 1;
            settings.forwarding.max_calls = 64
        }),
        ..Default::default()
    }
}

on_both_databases!(a_burst_of_mixed_events_commits_as_one_batch_with_each_callers_outcome);
async fn a_burst_of_mixed_events_commits_as_one_batch_with_each_callers_outcome(db: TestDb) {
    let stack = Stack::start_with(db, gathered_by_payments_svc()).await;
    let paid = fixture("checkout_session_completed_paid.json").expect("fixture");
    let burst: Vec<Bytes> = [
        "checkout_session_completed_paid.json",
        "checkout_session_completed_no_metadata.json",
        "charge_succeeded.json",
        "checkout_session_completed_unpaid_async.json",
        "checkout_session_async_payment_succeeded.json",
    ]
    .iter()
    .map(|name| fixture(name).expect("fixture"))
    .chain([paid])
    .collect();

    let answers = stack.deliver_concurrently(&burst).await;

    let outcomes = outcomes_around_one_event_sent_twice(&answers);
    assert_eq!(outcomes, ["failed", "ignored", "processed", "processed"]);
    let metrics = stack.payments_metrics().await;
    assert_eq!(metric(&metrics, "payments_batch_size_count"), 1.0, "one transaction");
    assert_eq!(metric(&metrics, "payments_batch_size_sum"), 6.0);
    assert_eq!(metric(&metrics, "payments_batch_fallbacks_total"), 0.0);
    let purchases = stack.purchases().await;
    assert_eq!(purchases.len(), 2);
    assert!(purchases.iter().all(|p| p.status == PurchaseStatus::Paid), "{purchases:?}");
    let events = stack.events().await;
    assert_eq!(events.len(), 5);
    assert_eq!(events.iter().map(|e| e.delivery_count).sum::<i32>(), 6);
    stack.shutdown().await;
}

on_both_databases!(a_second_payment_in_a_batch_is_flagged_without_failing_the_others);
/// A second payment for a course is a decision of the rules, not a write
/// the database refuses: the batch commits whole, the second payment
/// flagged, and nothing falls back.
async fn a_second_payment_in_a_batch_is_flagged_without_failing_the_others(db: TestDb) {
    let stack = Stack::start_with(db, gathered_by_payments_svc()).await;
    let paid = fixture("checkout_session_completed_paid.json").expect("fixture");
    let paid_again_for_the_same_course = with_fresh_ids(&paid, "_again").expect("variant");
    let burst = [paid, paid_again_for_the_same_course, fixture("charge_succeeded.json").expect("fixture")];

    let answers = stack.deliver_concurrently(&burst).await;

    let outcomes: Vec<String> = answers.iter().map(outcome).collect();
    assert_eq!(outcomes, ["processed", "processed", "ignored"]);
    let metrics = stack.payments_metrics().await;
    assert_eq!(metric(&metrics, "payments_batch_fallbacks_total"), 0.0);
    let purchases = stack.purchases().await;
    assert_eq!(purchases.len(), 2);
    assert_eq!(purchases.iter().filter(|p| p.needs_refund).count(), 1, "the second payment is flagged");
    stack.shutdown().await;
}

on_both_databases!(concurrent_batches_apply_each_event_once_whichever_batch_holds_its_copies);
/// With several workers (PostgreSQL; SQLite always has one), the two copies
/// of each event can land in different batches committing at the same time:
/// one copy is applied, the other answers duplicate, and nothing is written
/// twice.
async fn concurrent_batches_apply_each_event_once_whichever_batch_holds_its_copies(db: TestDb) {
    const EVENTS: usize = 24;
    let options = StackOptions {
        gateway: Some(|settings| {
            settings.forwarding.max_events = 1;
            settings.forwarding.max_calls = 64
        }),
        payments: Some(|settings| {
            settings.batching.workers = 4;
            settings.batching.max_size = 3;
        }),
        ..Default::default()
    };
    let stack = Stack::start_with(db, options).await;
    let events: Vec<Bytes> = (0..EVENTS).map(|n| unique_paid_event(n).expect("event")).collect();
    let burst: Vec<Bytes> = events.iter().chain(events.iter().rev()).cloned().collect();

    let answers = stack.deliver_concurrently(&burst).await;

    for n in 0..EVENTS {
        let mut pair = [outcome(&answers[n]), outcome(&answers[burst.len() - 1 - n])];
        pair.sort();
        assert_eq!(pair, ["duplicate", "processed"], "event {n}");
    }
    let metrics = stack.payments_metrics().await;
    assert!(metric(&metrics, "payments_batch_size_count") >= (2 * EVENTS / 3) as f64, "batches of at most 3");
    assert_eq!(metric(&metrics, "payments_batch_fallbacks_total"), 0.0);
    let purchases = stack.purchases().await;
    assert_eq!(purchases.len(), EVENTS);
    assert!(purchases.iter().all(|p| p.status == PurchaseStatus::Paid && !p.needs_refund), "{purchases:?}");
    let events = stack.events().await;
    assert_eq!(events.len(), EVENTS);
    assert!(events.iter().all(|e| e.delivery_count == 2), "{events:?}");
    stack.shutdown().await;
}

on_both_databases!(events_and_sessions_stored_before_are_met_again_without_a_fallback);
/// A batch of checkouts that is written without first reading what is
/// stored (PostgreSQL, once its worker has written) still meets what is:
/// a redelivered event and a later event of a stored session make its
/// write fail on their unique indexes, and the batch is read and written
/// again with every caller's outcome, not applied one by one.
async fn events_and_sessions_stored_before_are_met_again_without_a_fallback(db: TestDb) {
    let stack = Stack::start_with(db, gathered_by_payments_svc()).await;
    let clearing = fixture("checkout_session_completed_unpaid_async.json").expect("fixture");
    let cleared = fixture("checkout_session_async_payment_succeeded.json").expect("fixture");
    assert_eq!(outcome(&stack.deliver(&clearing).await), "processed");
    assert_eq!(outcome(&stack.deliver(&unique_paid_event(1).expect("event")).await), "processed");

    let burst = [cleared, clearing, unique_paid_event(2).expect("event")];
    let answers = stack.deliver_concurrently(&burst).await;

    let outcomes: Vec<String> = answers.iter().map(outcome).collect();
    assert_eq!(outcomes, ["processed", "duplicate", "processed"]);
    let metrics = stack.payments_metrics().await;
    assert_eq!(metric(&metrics, "payments_batch_size_count"), 3.0, "the burst in one batch");
    assert_eq!(metric(&metrics, "payments_batch_fallbacks_total"), 0.0);
    let purchases = stack.purchases().await;
    assert_eq!(purchases.len(), 3);
    assert!(purchases.iter().all(|p| p.status == PurchaseStatus::Paid && !p.needs_refund), "{purchases:?}");
    let events = stack.events().await;
    assert_eq!(events.len(), 4);
    assert_eq!(events.iter().map(|e| e.delivery_count).sum::<i32>(), 5, "the redelivery counted");
    stack.shutdown().await;
}

/// A connection that died while idle is noticed (pinged when taken from the
/// pool) and replaced before the next batch is sent, so that batch is not
/// lost to a fallback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_lost_while_idle_is_replaced_before_the_next_batch() {
    let stack = Stack::start(TestDb::postgres().await).await;
    let first = stack.deliver(&unique_paid_event(1).expect("event")).await;
    assert_eq!(outcome(&first), "processed");

    stack.cut_database_connections().await;
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let second = stack.deliver(&unique_paid_event(2).expect("event")).await;

    assert_eq!(outcome(&second), "processed");
    let metrics = stack.payments_metrics().await;
    assert_eq!(metric(&metrics, "payments_batch_size_count"), 2.0);
    assert_eq!(metric(&metrics, "payments_batch_fallbacks_total"), 0.0, "the dead connection was not used");
    assert_eq!(stack.purchases().await.len(), 2);
    stack.shutdown().await;
}
