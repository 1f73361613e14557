//! Faults survived with nothing lost: streams of events from a Stripe-like
//! sender (it redelivers whatever did not get a 2xx) while payments-svc is
//! stopped, killed, or cut off from its database, while the gateway is
//! terminated, and under load. Each test fails if a purchase is lost or
//! doubled.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::sender::{Delivery, RetryPolicy, deliver_all};
use e2e::{metric_value, unique_paid_event};
use hyper::StatusCode;
use payments_svc::store::entities::stripe_webhook_event::EventStatus;
use payments_svc::store::entities::{course_purchase, stripe_webhook_event};
use sea_orm::{Database, DatabaseConnection, EntityTrait, PaginatorTrait};

use crate::helpers::{Stack, StackOptions, TestDb, on_both_databases, secret};
use crate::processes::ProcessStack;

/// How long a test waits for a stream to reach the point where it strikes.
const STRIKE_DEADLINE: Duration = Duration::from_secs(60);

/// `count` distinct paid checkouts, then the first `duplicates` of them again.
fn stream(count: usize, duplicates: usize) -> Vec<Bytes> {
    let events: Vec<Bytes> = (0..count).map(|n| unique_paid_event(n).expect("event")).collect();
    events.iter().cloned().chain(events.iter().take(duplicates).cloned()).collect()
}

async fn purchase_count(db: &DatabaseConnection) -> u64 {
    course_purchase::Entity::find().count(db).await.unwrap_or(0)
}

/// Waits until `db` holds at least `count` purchases.
pub(crate) async fn wait_for_purchases(db: &DatabaseConnection, count: u64) {
    let deadline = Instant::now() + STRIKE_DEADLINE;
    while purchase_count(db).await < count {
        assert!(Instant::now() < deadline, "the stream never reached {count} purchases");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Nothing lost, nothing doubled: one processed event row per distinct
/// event, one purchase per distinct session, and every processed event's
/// purchase present.
pub(crate) async fn assert_exactly_once(db: &DatabaseConnection, distinct: usize) {
    let purchases = course_purchase::Entity::find().all(db).await.expect("purchases");
    let sessions: HashSet<_> = purchases.iter().map(|p| p.stripe_checkout_session_id.clone()).collect();
    assert_eq!(purchases.len(), distinct, "one purchase per paid session");
    assert_eq!(sessions.len(), distinct);
    let events = stripe_webhook_event::Entity::find().all(db).await.expect("events");
    assert_eq!(events.len(), distinct, "one event row per distinct event");
    for event in &events {
        assert_eq!(event.status, EventStatus::Processed, "{}", event.event_id);
        let session = event.checkout_session_id.as_ref().expect("session id");
        assert!(sessions.contains(session), "{} processed without its purchase", event.event_id);
    }
}

pub(crate) fn all_delivered(deliveries: &[Delivery]) {
    let undelivered: Vec<_> = deliveries.iter().filter(|d| !d.delivered()).collect();
    assert!(
        undelivered.is_empty(),
        "{} events never got a 2xx: {:?}",
        undelivered.len(),
        undelivered.first()
    );
}

on_both_databases!(payments_svc_stopped_then_restarted_loses_nothing);
async fn payments_svc_stopped_then_restarted_loses_nothing(db: TestDb) {
    let mut stack = Stack::start(db).await;
    stack.stop_payments_svc().await;
    let started = Instant::now();
    let first = stack.deliver(&unique_paid_event(999).expect("event")).await;
    assert_eq!(first.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(started.elapsed() < Duration::from_secs(3), "503 comes quickly: {:?}", started.elapsed());

    let url = stack.url("/api/payments/webhook");
    let sender =
        tokio::spawn(
            async move { deliver_all(&url, &secret(), stream(40, 10), 8, RetryPolicy::default()).await },
        );
    let deadline = Instant::now() + STRIKE_DEADLINE;
    while !stack_metric_at_least(
        &stack,
        r#"gateway_webhooks_total{outcome="rejected",reason="unavailable"}"#,
        20,
    )
    .await
    {
        assert!(Instant::now() < deadline, "the sender never met the outage");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stack.restart_payments_svc(StackOptions::default()).await;
    let deliveries = sender.await.expect("sender");

    all_delivered(&deliveries);
    assert!(deliveries.iter().any(|d| d.answers.contains(&Some(StatusCode::SERVICE_UNAVAILABLE))));
    stack.deliver(&unique_paid_event(999).expect("event")).await;
    assert_exactly_once(&stack.db, 41).await;
    stack.shutdown().await;
}

async fn stack_metric_at_least(stack: &Stack, series: &str, at_least: u64) -> bool {
    let metrics = stack.gateway_metrics().await;
    metric_value(&metrics, series).is_some_and(|value| value >= at_least as f64)
}

on_both_databases!(payments_svc_killed_mid_stream_loses_and_doubles_nothing);
async fn payments_svc_killed_mid_stream_loses_and_doubles_nothing(db: TestDb) {
    let mut stack = ProcessStack::start(&db.url, false);
    let observer = Database::connect(&db.url).await.expect("connect");
    let url = stack.webhook_url();
    let sender = tokio::spawn(async move {
        deliver_all(&url, &secret(), stream(300, 60), 16, RetryPolicy::default()).await
    });

    wait_for_purchases(&observer, 60).await;
    stack.payments.signal("KILL");
    stack.restart_payments_svc();
    let deliveries = sender.await.expect("sender");

    all_delivered(&deliveries);
    assert_exactly_once(&observer, 300).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn database_connections_cut_mid_stream_recover_without_a_restart() {
    let stack = Stack::start(TestDb::postgres().await).await;
    let url = stack.url("/api/payments/webhook");
    let sender = tokio::spawn(async move {
        deliver_all(&url, &secret(), stream(300, 30), 16, RetryPolicy::default()).await
    });

    for cut_at in [60, 120, 180] {
        wait_for_purchases(&stack.db, cut_at).await;
        stack.cut_database_connections().await;
    }
    let deliveries = sender.await.expect("sender");

    all_delivered(&deliveries);
    assert_exactly_once(&stack.db, 300).await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_gateway_finishes_in_flight_requests_and_exits_cleanly() {
    let db = TestDb::sqlite().await;
    let mut stack = ProcessStack::start(&db.url, false);
    let observer = Database::connect(&db.url).await.expect("connect");
    let url = stack.webhook_url();
    let once = RetryPolicy { max_attempts: 1, ..RetryPolicy::default() };
    let sender = tokio::spawn(async move { deliver_all(&url, &secret(), stream(400, 0), 16, once).await });

    wait_for_purchases(&observer, 50).await;
    stack.gateway.signal("TERM");
    let gateway_exit = stack.gateway.wait();
    let deliveries = sender.await.expect("sender");
    stack.payments.signal("TERM");
    let payments_exit = stack.payments.wait();

    assert!(gateway_exit.success(), "gateway exit: {gateway_exit}");
    assert!(payments_exit.success(), "payments-svc exit: {payments_exit}");
    let answers: Vec<_> = deliveries.iter().map(|d| d.answers[0]).collect();
    assert!(
        answers.iter().all(|a| matches!(a, Some(StatusCode::OK) | None)),
        "only 200s, then refusals: {answers:?}"
    );
    let acknowledged = answers.iter().filter(|a| a.is_some()).count() as u64;
    assert!(acknowledged < 400, "the stream was still running at the signal");
    assert_eq!(
        purchase_count(&observer).await,
        acknowledged,
        "every accepted request was finished and answered"
    );
    let handled =
        stack.gateway.logs_after_exit().iter().filter(|l| l["message"] == "webhook handled").count();
    assert_eq!(handled as u64, acknowledged, "a graceful stop writes out every waiting log line");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_events_on_64_connections_get_only_200_or_503_and_land_once() {
    let stack = Stack::start(TestDb::postgres().await).await;
    let events = stream(2_000, 200);

    let deliveries =
        deliver_all(&stack.url("/api/payments/webhook"), &secret(), events, 64, RetryPolicy::default()).await;

    let answers: Vec<_> = deliveries.iter().flat_map(|d| d.answers.iter().copied()).collect();
    let unexpected: Vec<_> = answers
        .iter()
        .filter(|a| !matches!(a, Some(StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE)))
        .collect();
    assert!(unexpected.is_empty(), "never a reset or a 500: {unexpected:?}");
    all_delivered(&deliveries);
    assert_exactly_once(&stack.db, 2_000).await;
    stack.shutdown().await;
}

/// Polls the gateway's `/readyz` until it answers `status`; when it did.
async fn readiness_turns(gateway: &str, status: StatusCode) -> Instant {
    let http = e2e::HttpClient::default();
    let url = format!("http://{gateway}/readyz");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let answer = http.send(hyper::Method::GET, &url, &[], Bytes::new()).await.expect("readyz answers");
        if answer.status == status {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "/readyz never answered {status}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_turns_within_a_second_of_the_database_failing_and_of_it_coming_back() {
    let db = TestDb::postgres().await;
    let proxy = crate::db_proxy::DbProxy::start(&db.url).await;
    let mut stack = ProcessStack::start(&proxy.url(&db.url), false);
    let gateway = stack.gateway.addr.clone();
    readiness_turns(&gateway, StatusCode::OK).await;
    assert_eq!(stack.deliver(&unique_paid_event(1).expect("event")).await.status, StatusCode::OK);

    proxy.down();
    let refused = stack.deliver(&unique_paid_event(2).expect("event")).await;
    let failed = Instant::now();
    let not_ready = readiness_turns(&gateway, StatusCode::SERVICE_UNAVAILABLE).await;
    proxy.up().await;
    let back = Instant::now();
    let ready = readiness_turns(&gateway, StatusCode::OK).await;
    let after = stack.deliver(&unique_paid_event(3).expect("event")).await;

    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "the database is down");
    let turned = not_ready.saturating_duration_since(failed);
    assert!(turned <= Duration::from_secs(1), "not ready {turned:?} after the first failed write");
    let recovered = ready.duration_since(back);
    assert!(recovered <= Duration::from_secs(1), "ready again {recovered:?} after the database came back");
    assert_eq!(after.status, StatusCode::OK, "serving again without a restart");
    stack.payments.wait_for_log("database unreachable; health set to not serving", |_| true);
    stack.payments.wait_for_log("database answers again; health set to serving", |_| true);
}
