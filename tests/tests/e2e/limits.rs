//! What strangers cannot take: bodies are not buffered before the signature
//! header is checked, and are held within a byte budget; webhooks have
//! in-flight capacity that verify calls cannot take; silent connections make
//! room at the connection cap; a webhook is answered within the forwarding
//! deadline whatever the concurrency; and verify spends Stripe's API quota
//! once per session per short while, within a rate, and one client's share.

use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::{HttpAnswer, fixture, signature_now, unique_paid_event, unix_now};
use hyper::{Method, StatusCode};
use payments_proto::v1::verify_purchase_request::Lookup;
use payments_proto::v1::{PurchaseStatus, VerifyPurchaseRequest, VerifyPurchaseResponse};
use sea_orm::{ConnectionTrait, DatabaseBackend, TransactionTrait};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::fake_stripe::{FakeStripe, Fault};
use crate::helpers::{Stack, StackOptions, TestDb, eventually, metric, on_both_databases, outcome, secret};

fn paid() -> Bytes {
    fixture("checkout_session_completed_paid.json").expect("fixture")
}

/// A header that passes every check that can be made without the body (a
/// fresh timestamp, one well-formed `v1`) and matches no body.
fn plausible_signature() -> String {
    format!("t={},v1={}", unix_now(), "0".repeat(64))
}

/// Opens a connection and sends a webhook's headers, declaring
/// `content_length` bytes, and `sent` bytes of the body.
async fn start_upload(
    stack: &Stack,
    signature: Option<&str>,
    content_length: usize,
    sent: usize,
) -> TcpStream {
    let mut stream = TcpStream::connect(stack.gateway_addr()).await.expect("connect");
    let signature = signature.map(|s| format!("stripe-signature: {s}\r\n")).unwrap_or_default();
    let head = format!(
        "POST /api/payments/webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         {signature}content-length: {content_length}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.expect("headers sent");
    stream.write_all(&vec![b' '; sent]).await.expect("body sent");
    stream
}

/// Whether the gateway closes `stream` within `patience`.
async fn closed_within(stream: &mut TcpStream, patience: Duration) -> bool {
    let mut rest = Vec::new();
    matches!(tokio::time::timeout(patience, stream.read_to_end(&mut rest)).await, Ok(Ok(_)))
}

/// What the gateway answered on `stream`, read until it closes the
/// connection; empty when it answered nothing within `patience`.
async fn answer_within(stream: &mut TcpStream, patience: Duration) -> String {
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(patience, stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_without_a_valid_signature_header_is_refused_before_its_body_is_read() {
    let stack = Stack::start(TestDb::sqlite().await).await;
    let stale = format!("t={},v1={}", unix_now() - 3_600, "0".repeat(64));
    let cases = [
        (None, "missing_signature"),
        (Some("v1=abc"), "malformed_signature"),
        (Some(stale.as_str()), "stale_timestamp"),
        (Some("t=1,v0=abc"), "no_v1_signature"),
    ];

    for (signature, code) in cases {
        // Most of a megabyte declared, none of it sent: only a gateway that
        // waits for the body would not answer.
        let mut upload = start_upload(&stack, signature, 900_000, 0).await;
        let answer = answer_within(&mut upload, Duration::from_secs(5)).await;

        assert!(answer.starts_with("HTTP/1.1 400"), "{signature:?}: {answer:?}");
        assert!(answer.contains(code), "{signature:?}: {answer}");
    }
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_beyond_the_byte_budget_get_503_while_webhooks_within_it_are_answered() {
    let options = StackOptions {
        gateway: Some(|settings| {
            settings.max_body_bytes = 48 * 1024;
            settings.body_budget_bytes = 64 * 1024;
        }),
        ..Default::default()
    };
    let stack = Stack::start_with(TestDb::sqlite().await, options).await;
    let signature = plausible_signature();

    // Bytes count when they arrive: the first sends most of its body.
    let mut holding = start_upload(&stack, Some(&signature), 40_000, 39_000).await;
    // The first holds its bytes before the second arrives: the two
    // connections could otherwise be taken up in either order.
    eventually(Duration::from_secs(5), "the first upload holds its bytes", || async {
        metric(&stack.gateway_metrics().await, "gateway_in_flight_requests") == 1.0
    })
    .await;
    let mut refused = start_upload(&stack, Some(&signature), 40_000, 30_000).await;
    let refused = answer_within(&mut refused, Duration::from_secs(5)).await;
    let within = stack.deliver(&paid()).await;
    holding.write_all(&vec![b' '; 1_000]).await.expect("rest of the body");
    let held = answer_within(&mut holding, Duration::from_secs(5)).await;
    let after = stack.deliver(&unique_paid_event(1).expect("event")).await;

    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");
    assert!(
        refused.contains("overloaded") && refused.to_ascii_lowercase().contains("retry-after"),
        "{refused}"
    );
    assert_eq!(outcome(&within), "processed", "a real webhook fits in what is left");
    assert!(held.starts_with("HTTP/1.1 400") && held.contains("signature_mismatch"), "{held}");
    assert_eq!(outcome(&after), "processed", "the held bytes were given back");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_beyond_their_in_flight_limit_get_503_with_retry_after() {
    let options = StackOptions { gateway: Some(|settings| settings.max_in_flight = 1), ..Default::default() };
    let stack = Stack::start_with(TestDb::sqlite().await, options).await;
    let _in_flight = start_upload(&stack, Some(&plausible_signature()), 10_000, 100).await;
    // The held upload counts once the gateway has read its head: only then
    // is the next webhook beyond the limit.
    eventually(Duration::from_secs(5), "the held upload in flight", || async {
        metric(&stack.gateway_metrics().await, "gateway_in_flight_requests") >= 1.0
    })
    .await;

    let refused = stack.deliver(&paid()).await;
    let verify = stack.get("/api/payments/verify?session_id=cs_test_nobody").await;

    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.json()["error"], "overloaded");
    assert_eq!(refused.headers["retry-after"], "5");
    assert_eq!(verify.status, StatusCode::NOT_FOUND, "verify has a limit of its own");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_verify_requests_leaves_webhooks_their_own_capacity() {
    let stripe = FakeStripe::start().await;
    stripe.fail_every_request(Some(Fault::Delay(Duration::from_millis(1_500))));
    let options = StackOptions {
        stripe_api_base: Some(stripe.base_url()),
        gateway: Some(|settings| settings.max_verify_in_flight = 4),
        ..Default::default()
    };
    let stack = Stack::start_with(TestDb::sqlite().await, options).await;

    let mut flood = tokio::task::JoinSet::new();
    for n in 0..12 {
        let (http, url) =
            (stack.http.clone(), stack.url(&format!("/api/payments/verify?session_id=cs_test_flood_{n}")));
        flood.spawn(async move {
            http.send(Method::GET, &url, &[], Bytes::new()).await.expect("HTTP round trip")
        });
    }
    let webhook = async {
        while stripe.request_count() < 4 {
            tokio::task::yield_now().await;
        }
        stack.deliver(&paid()).await
    };
    let (verifies, webhook) = tokio::join!(flood.join_all(), webhook);

    let refused = verifies.iter().filter(|answer| answer.status == StatusCode::SERVICE_UNAVAILABLE).count();
    assert_eq!(refused, 8, "beyond the verify limit: 503");
    assert!(
        verifies
            .iter()
            .all(|a| a.status != StatusCode::SERVICE_UNAVAILABLE || a.json()["error"] == "overloaded")
    );
    assert_eq!(outcome(&webhook), "processed", "the webhook did not wait for verify capacity");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_at_the_cap_make_room_for_a_real_webhook() {
    let options =
        StackOptions { gateway: Some(|settings| settings.max_connections = 16), ..Default::default() };
    let stack = Stack::start_with(TestDb::sqlite().await, options).await;
    let mut silent = Vec::new();
    for _ in 0..16 {
        silent.push(TcpStream::connect(stack.gateway_addr()).await.expect("connect"));
    }

    let answer = stack.deliver(&paid()).await;
    let oldest_closed = closed_within(&mut silent[0], Duration::from_secs(5)).await;
    let metrics = stack.gateway_metrics().await;

    assert_eq!(outcome(&answer), "processed");
    assert!(oldest_closed, "the oldest silent connection was closed to make room");
    assert_eq!(metric(&metrics, "gateway_idle_connections_closed_total"), 1.0);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn working_connections_are_not_closed_to_make_room_the_newcomer_gets_503() {
    let options =
        StackOptions { gateway: Some(|settings| settings.max_connections = 1), ..Default::default() };
    let stack = Stack::start_with(TestDb::sqlite().await, options).await;
    let _working = start_upload(&stack, Some(&plausible_signature()), 10_000, 100).await;
    eventually(Duration::from_secs(5), "the upload is in progress", || async {
        metric(&stack.gateway_metrics().await, "gateway_in_flight_requests") == 1.0
    })
    .await;

    let mut newcomer = TcpStream::connect(stack.gateway_addr()).await.expect("connect");
    newcomer
        .write_all(b"GET /api/payments/verify?session_id=cs_x HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .expect("sent");
    let answer = answer_within(&mut newcomer, Duration::from_secs(10)).await;

    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.to_ascii_lowercase().contains("connection: close"), "{answer}");
    stack.shutdown().await;
}

/// Posts every body at once, each on its own connection, signed now;
/// each answer with how long it took from its own sending.
async fn deliver_timed(stack: &Stack, bodies: &[Bytes]) -> Vec<(HttpAnswer, Duration)> {
    let mut deliveries = tokio::task::JoinSet::new();
    for body in bodies {
        let (http, url, body) = (stack.http.clone(), stack.url("/api/payments/webhook"), body.clone());
        let signature = signature_now(&secret(), &body);
        deliveries.spawn(async move {
            let sent = Instant::now();
            let answer = http.post_webhook(&url, body, Some(&signature)).await.expect("HTTP round trip");
            (answer, sent.elapsed())
        });
    }
    deliveries.join_all().await
}

/// Holds the database so that no event can be stored: PostgreSQL's events
/// table locked, SQLite's write lock taken.
async fn stall(stack: &Stack) -> sea_orm::DatabaseTransaction {
    let stall = stack.db.begin().await.expect("transaction");
    let statement = match stack.db.get_database_backend() {
        DatabaseBackend::Postgres => "LOCK TABLE stripe_webhook_events IN ACCESS EXCLUSIVE MODE",
        _ => "CREATE TABLE stall_writers (x INTEGER)",
    };
    stall.execute_unprepared(statement).await.expect("stalled");
    stall
}

async fn stalled_database_answers_every_webhook_503_within_the_deadline(db: TestDb) {
    const DEADLINE: Duration = Duration::from_secs(2);
    // Room for a loaded 2-core machine; the code before took twice the deadline
    // at 64 deliveries and 15 s (a 408) at 500.
    const MARGIN: Duration = Duration::from_millis(1_500);
    let options = StackOptions {
        gateway: Some(|settings| settings.payments_svc_timeout = DEADLINE),
        ..Default::default()
    };
    let stack = Stack::start_with(db, options).await;
    let mut sent = Vec::new();

    let stalled = stall(&stack).await;
    for concurrency in [1, 64, 500] {
        let bodies: Vec<Bytes> =
            (0..concurrency).map(|n| unique_paid_event(sent.len() + n).expect("event")).collect();
        let answers = deliver_timed(&stack, &bodies).await;
        sent.extend(bodies);

        for (answer, _) in &answers {
            assert_eq!(
                answer.status,
                StatusCode::SERVICE_UNAVAILABLE,
                "at {concurrency}: {:?}",
                answer.json()
            );
            assert!(answer.headers.contains_key("retry-after"), "at {concurrency}");
        }
        let slowest = answers.iter().map(|(_, took)| *took).max().unwrap_or_default();
        assert!(slowest <= DEADLINE + MARGIN, "at {concurrency}, an answer took {slowest:?}");
    }
    stalled.rollback().await.expect("released");

    for redelivery in sent.chunks(100) {
        let answers = stack.deliver_concurrently(redelivery).await;
        assert!(answers.iter().all(|a| a.status == StatusCode::OK), "Stripe's redelivery lands");
    }
    assert_eq!(stack.event_count().await, sent.len() as u64, "each event stored once");
    assert_eq!(stack.purchases().await.len(), sent.len());
    stack.shutdown().await;
}

on_both_databases!(stalled_database_answers_every_webhook_503_within_the_deadline);

/// `count` VerifyPurchase calls for the sessions `id(n)` names, all at once
/// on one gRPC channel; their answers.
async fn verify_all_at_once(
    stack: &Stack,
    count: usize,
    id: impl Fn(usize) -> String,
) -> Vec<VerifyPurchaseResponse> {
    let client = stack.grpc().await;
    let mut calls = tokio::task::JoinSet::new();
    for n in 0..count {
        let (mut client, session) = (client.clone(), id(n));
        calls.spawn(async move {
            let request = VerifyPurchaseRequest { lookup: Some(Lookup::CheckoutSessionId(session)) };
            client.verify_purchase(request).await.expect("verify answers, never an error").into_inner()
        });
    }
    calls.join_all().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_verifies_of_one_session_make_a_handful_of_stripe_calls() {
    let stripe = FakeStripe::start().await;
    let options = StackOptions { stripe_api_base: Some(stripe.base_url()), ..Default::default() };
    let stack = Stack::start_with(TestDb::sqlite().await, options).await;

    let answers = verify_all_at_once(&stack, 1_000, |_| "cs_test_polled_by_everyone".to_owned()).await;

    assert!(answers.iter().all(|a| a.status() == PurchaseStatus::NotFound && !a.unconfirmed));
    let calls = stripe.request_count();
    assert!((1..=5).contains(&calls), "{calls} Stripe calls for one session");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_verifies_of_made_up_ids_stay_within_the_stripe_rate() {
    let stripe = FakeStripe::start().await;
    let options = StackOptions {
        stripe_api_base: Some(stripe.base_url()),
        payments: Some(|settings| settings.stripe.as_mut().expect("Stripe configured").max_rps = 10),
        ..Default::default()
    };
    let stack = Stack::start_with(TestDb::sqlite().await, options).await;
    let started = Instant::now();

    let answers = verify_all_at_once(&stack, 1_000, |n| format!("cs_test_made_up_{n}")).await;

    let (calls, elapsed) = (stripe.request_count(), started.elapsed().as_secs_f64());
    // The burst (one second's worth) plus the rate for the time it took.
    let allowed = 10 + (elapsed * 10.0).ceil() as usize;
    assert!(calls <= allowed, "{calls} Stripe calls in {elapsed:.1} s; at most {allowed} allowed");
    let unconfirmed = answers.iter().filter(|a| a.unconfirmed).count();
    assert_eq!(unconfirmed, 1_000 - calls, "the ones not asked are answered from the database, unconfirmed");
    assert!(answers.iter().all(|a| a.status() == PurchaseStatus::NotFound));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_client_asking_verify_too_often_gets_429_and_webhooks_are_not_affected() {
    let options = StackOptions {
        gateway: Some(|settings| settings.verify_per_client_rps = Some(5)),
        ..Default::default()
    };
    let stack = Stack::start_with(TestDb::sqlite().await, options).await;
    let started = Instant::now();

    let mut answers = Vec::new();
    for _ in 0..60 {
        answers.push(stack.get("/api/payments/verify?session_id=cs_test_impatient").await);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let webhook = stack.deliver(&paid()).await;

    let served = answers.iter().filter(|a| a.status == StatusCode::NOT_FOUND).count();
    let limited: Vec<_> = answers.iter().filter(|a| a.status == StatusCode::TOO_MANY_REQUESTS).collect();
    // A burst of four seconds' worth, then five a second.
    let allowed = 20 + (elapsed * 5.0).ceil() as usize;
    assert!((20..=allowed).contains(&served), "{served} served in {elapsed:.1} s; at most {allowed}");
    assert_eq!(served + limited.len(), answers.len());
    assert!(
        limited
            .iter()
            .all(|a| a.json()["error"] == "too_many_requests" && a.headers.contains_key("retry-after"))
    );
    assert_eq!(outcome(&webhook), "processed");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_head_that_never_ends_is_cut_off_at_sixteen_kilobytes() {
    let stack = Stack::start(TestDb::sqlite().await).await;
    let mut stream = TcpStream::connect(stack.gateway_addr()).await.expect("connect");
    stream.write_all(b"POST /api/payments/webhook HTTP/1.1\r\nhost: x\r\nx-padding: ").await.expect("sent");
    // More than the gateway buffers, never finished: a gateway that kept
    // reading would hold it all and answer nothing.
    let _ = stream.write_all(&vec![b'a'; 64 * 1024]).await;

    let answer = answer_within(&mut stream, Duration::from_secs(5)).await;

    assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    let after = stack.deliver(&paid()).await;
    assert_eq!(outcome(&after), "processed");
    stack.shutdown().await;
}

/// Headers that declare a 1 MiB body with a plausible signature, and then
/// nothing: what a stranger sends to hold the gateway's byte budget.
async fn declare_and_stall(gateway: &str) -> TcpStream {
    let mut stream = TcpStream::connect(gateway).await.expect("connect");
    let head = format!(
        "POST /api/payments/webhook HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n\
         stripe-signature: {}\r\ncontent-length: 1048576\r\n\r\n",
        plausible_signature()
    );
    stream.write_all(head.as_bytes()).await.expect("headers sent");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_declared_and_never_sent_hold_no_budget_and_are_cut_off_counted_and_logged() {
    let db = TestDb::sqlite().await;
    let mut stack = crate::processes::ProcessStack::start(&db.url, false);
    let gateway = stack.gateway.addr.clone();
    let mut attackers = Vec::new();
    for _ in 0..16 {
        attackers.push(declare_and_stall(&gateway).await);
    }

    let mut answers = Vec::new();
    for n in 0..10 {
        answers.push(stack.deliver(&unique_paid_event(100 + n).expect("event")).await.status);
    }
    let mut cut_off = Vec::new();
    for attacker in &mut attackers {
        cut_off.push(answer_within(attacker, Duration::from_secs(10)).await);
    }
    let warning = stack.gateway.wait_for_log(
        "webhook body stopped arriving; rejected before its signature could be checked",
        |_| true,
    );
    let admin = stack.gateway.admin_addr.clone().expect("admin address");
    let metrics = e2e::HttpClient::default()
        .send(Method::GET, &format!("http://{admin}/metrics"), &[], Bytes::new())
        .await
        .expect("metrics");
    let metrics = String::from_utf8_lossy(&metrics.body).into_owned();

    assert!(
        answers.iter().all(|status| *status == StatusCode::OK),
        "real webhooks answered throughout: {answers:?}"
    );
    for answer in &cut_off {
        assert!(answer.starts_with("HTTP/1.1 408") && answer.contains("body_stalled"), "{answer}");
    }
    assert_eq!(warning["peer"], "127.0.0.1", "{warning}");
    assert_eq!(warning["level"], "WARN", "{warning}");
    let counted = metric(&metrics, r#"gateway_webhooks_total{outcome="rejected",reason="body_stalled"}"#);
    assert_eq!(counted, 16.0, "{metrics}");
}
