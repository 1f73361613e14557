//! Distributed traces through the real binaries, exported to a real OTLP
//! gRPC collector started by the test: one webhook is one trace across both
//! services, a batch links to every delivery it serves, verify's Stripe call
//! is in the caller's trace, log lines carry the ids, and a collector that
//! is down or never answers costs the webhooks nothing.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::collector::{self, Collector, ReceivedSpan, Unresponsive};
use e2e::sender::{RetryPolicy, deliver_all};
use e2e::{HttpClient, fixture, unique_paid_event, with_fresh_ids};
use hyper::{Method, StatusCode};

use crate::fake_stripe::{FAKE_STRIPE_KEY, FakeStripe};
use crate::helpers::{TestDb, on_both_databases, secret};
use crate::processes::ProcessStack;

/// How long the spans of a request may take to reach the collector: the
/// exporters send every 50 ms here, so this is only a ceiling.
const ARRIVAL: Duration = Duration::from_secs(20);

/// OTLP's span kinds.
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

/// Traced services exporting to `endpoint`, sending every 50 ms.
fn traced(database_url: &str, endpoint: &str, more: &[(&str, &str)]) -> ProcessStack {
    let mut env = vec![("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint), ("OTEL_BSP_SCHEDULE_DELAY", "50")];
    env.extend_from_slice(more);
    ProcessStack::start_with(database_url, false, &env)
}

fn event_id_of(body: &[u8]) -> String {
    let event: serde_json::Value = serde_json::from_slice(body).expect("JSON");
    event["id"].as_str().expect("id").to_owned()
}

fn find<'a>(
    spans: &'a [ReceivedSpan],
    service: &str,
    name: &str,
    event_id: &str,
) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|span| {
        span.service == service
            && span.name == name
            && (event_id.is_empty() || span.attribute("stripe.event.id") == Some(event_id))
    })
}

/// Whether every `(service, name)` has arrived. Spans are exported when
/// they end, a parent after its children and sometimes in a later export, so
/// a test waits for each span it inspects, not only for the last one it
/// expects to end.
fn arrived(spans: &[ReceivedSpan], expected: &[(&str, &str)]) -> bool {
    expected.iter().all(|(service, name)| find(spans, service, name, "").is_some())
}

fn child_of<'a>(spans: &'a [ReceivedSpan], parent: &ReceivedSpan, name: &str) -> Option<&'a ReceivedSpan> {
    spans.iter().find(|span| span.name == name && span.parent_span_id == parent.span_id)
}

on_both_databases!(one_webhook_is_one_trace_across_both_services);
async fn one_webhook_is_one_trace_across_both_services(db: TestDb) {
    let collector = Collector::start().await.expect("collector");
    let mut stack = traced(&db.url, &collector.endpoint(), &[]);
    let paid = fixture("checkout_session_completed_paid.json").expect("fixture");
    let event_id = event_id_of(&paid);

    let answer = stack.deliver(&paid).await;

    assert_eq!(answer.status, StatusCode::OK);
    let spans = collector
        .wait_for(ARRIVAL, |spans| {
            arrived(
                spans,
                &[
                    ("webhook-gateway", "POST /api/payments/webhook"),
                    ("webhook-gateway", "payments.v1.Payments/HandleStripeEvents"),
                    ("payments-svc", "payments.v1.Payments/HandleStripeEvents"),
                    ("payments-svc", "handle event"),
                    ("payments-svc", "group commit"),
                ],
            )
        })
        .await
        .expect("the webhook's spans");
    let request = find(&spans, "webhook-gateway", "POST /api/payments/webhook", &event_id).expect("request");
    assert_eq!((request.kind, request.parent_span_id.as_str()), (SERVER, ""), "the delivery is the root");
    assert_eq!(request.attribute("stripe.event.type"), Some("checkout.session.completed"));
    assert!(request.attribute("stripe.checkout_session.id").is_some_and(|s| s.starts_with("cs_test_")));
    assert_eq!(request.attribute("outcome"), Some("processed"));
    assert_eq!(request.attribute("http.response.status_code"), Some("200"));

    let call = child_of(&spans, request, "payments.v1.Payments/HandleStripeEvents").expect("the gRPC call");
    assert_eq!((call.service.as_str(), call.kind), ("webhook-gateway", CLIENT));
    let served = spans
        .iter()
        .find(|span| span.service == "payments-svc" && span.parent_span_id == call.span_id)
        .expect("payments-svc's side of the call, a child of the gateway's");
    assert_eq!((served.name.as_str(), served.kind), ("payments.v1.Payments/HandleStripeEvents", SERVER));
    let handled = child_of(&spans, served, "handle event").expect("the event's handling, under the call");
    assert_eq!(handled.attribute("stripe.event.id"), Some(event_id.as_str()));
    assert_eq!(handled.attribute("outcome"), Some("processed"));
    let batch = child_of(&spans, handled, "group commit").expect("the database batch");
    assert_eq!(batch.attribute("batch.size"), Some("1"));
    assert_eq!(batch.attribute("outcome"), Some("committed"));
    for span in [call, served, handled, batch] {
        assert_eq!(span.trace_id, request.trace_id, "one trace: {span:?}");
    }

    let line = stack.gateway.wait_for_log("webhook handled", |l| l["event_id"] == event_id.as_str());
    assert_eq!(line["trace_id"], request.trace_id.as_str(), "{line}");
    assert_eq!(line["span_id"], request.span_id.as_str(), "{line}");
}

on_both_databases!(a_batch_links_to_every_delivery_it_serves);
async fn a_batch_links_to_every_delivery_it_serves(db: TestDb) {
    let collector = Collector::start().await.expect("collector");
    // One call at a time from the gateway, and payments-svc waiting for
    // more: deliveries that arrive together share calls and batches.
    let slow_batches = [("PAYMENTS_SVC_MAX_CALLS", "1"), ("PAYMENTS_BATCH_WAIT_US", "100000")];
    let stack = traced(&db.url, &collector.endpoint(), &slow_batches);
    let events: Vec<Bytes> = (0..12).map(|n| unique_paid_event(n).expect("event")).collect();
    let ids: Vec<String> = events.iter().map(|event| event_id_of(event)).collect();

    let answers = deliver_at_once(&stack, &events).await;

    assert!(answers.iter().all(|status| *status == StatusCode::OK), "{answers:?}");
    let spans = collector
        .wait_for(ARRIVAL, |spans| {
            let handled = spans.iter().filter(|s| s.name == "handle event").count();
            let requests = spans.iter().filter(|s| s.name == "POST /api/payments/webhook").count();
            handled == ids.len() && requests == ids.len()
        })
        .await
        .expect("every delivery's spans");
    for id in &ids {
        let request = find(&spans, "webhook-gateway", "POST /api/payments/webhook", id).expect("request");
        let handled = find(&spans, "payments-svc", "handle event", id).expect("handled");
        assert_eq!(
            handled.trace_id, request.trace_id,
            "each event's handling is in its own delivery's trace"
        );
    }
    let batches: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name == "group commit").collect();
    assert!(batches.iter().any(|batch| batch.links.len() >= 2), "some batch served several: {batches:#?}");
    let handled: BTreeSet<&str> =
        spans.iter().filter(|s| s.name == "handle event").map(|s| s.span_id.as_str()).collect();
    let mut served = BTreeSet::new();
    for batch in &batches {
        let size: usize = batch.attribute("batch.size").and_then(|n| n.parse().ok()).expect("size");
        assert_eq!(batch.links.len() + 1, size, "its parent and a link per other event: {batch:?}");
        served.insert(batch.parent_span_id.as_str());
        served.extend(batch.links.iter().map(|(_, span)| span.as_str()));
    }
    assert_eq!(served, handled, "every event's handling is reached from the batch that applied it");
    let calls: Vec<&ReceivedSpan> = spans
        .iter()
        .filter(|s| s.name == "payments.v1.Payments/HandleStripeEvents" && s.kind == CLIENT)
        .collect();
    let carried: usize = calls.iter().map(|call| call.links.len() + 1).sum();
    assert_eq!(carried, ids.len(), "each gateway call is in one delivery's trace and links to the rest");
}

/// Delivers every event at once, each once; the statuses.
async fn deliver_at_once(stack: &ProcessStack, events: &[Bytes]) -> Vec<StatusCode> {
    let once = RetryPolicy { max_attempts: 1, ..RetryPolicy::default() };
    let url = stack.gateway_url("/api/payments/webhook");
    let deliveries = deliver_all(&url, &secret(), events.to_vec(), events.len(), once).await;
    deliveries.iter().map(|delivery| delivery.answers[0].expect("HTTP round trip")).collect()
}

on_both_databases!(verify_asks_stripe_within_the_callers_trace);
async fn verify_asks_stripe_within_the_callers_trace(db: TestDb) {
    let collector = Collector::start().await.expect("collector");
    let stripe = FakeStripe::start().await;
    let session = with_fresh_ids(&fixture("checkout_session.object.json").expect("fixture"), "_traced")
        .expect("session");
    let session_id = serde_json::from_slice::<serde_json::Value>(&session).expect("JSON")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    stripe.add_session(session);
    let base = stripe.base_url();
    let stripe_env = [("STRIPE_SECRET_KEY", FAKE_STRIPE_KEY), ("STRIPE_API_BASE", base.as_str())];
    let stack = traced(&db.url, &collector.endpoint(), &stripe_env);

    let url = stack.gateway_url(&format!("/api/payments/verify?session_id={session_id}"));
    let answer = HttpClient::default().send(Method::GET, &url, &[], Bytes::new()).await.expect("verify");

    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    let spans = collector
        .wait_for(ARRIVAL, |spans| {
            arrived(
                spans,
                &[
                    ("webhook-gateway", "verify"),
                    ("payments-svc", "payments.v1.Payments/VerifyPurchase"),
                    ("payments-svc", "Stripe API"),
                ],
            )
        })
        .await
        .expect("the verify's spans");
    let verify = find(&spans, "webhook-gateway", "verify", "").expect("the gateway's verify span");
    assert_eq!(verify.attribute("stripe.checkout_session.id"), Some(session_id.as_str()));
    let served =
        child_of(&spans, verify, "payments.v1.Payments/VerifyPurchase").expect("payments-svc's side");
    let asked = child_of(&spans, served, "Stripe API").expect("the Stripe call, under the verify");
    assert_eq!(asked.kind, CLIENT);
    assert_eq!(asked.attribute("url.path"), Some(format!("/v1/checkout/sessions/{session_id}").as_str()));
    assert_eq!(asked.attribute("http.response.status_code"), Some("200"));
    assert_eq!(asked.trace_id, verify.trace_id);
}

on_both_databases!(a_collector_that_is_down_or_never_answers_costs_the_webhooks_nothing);
async fn a_collector_that_is_down_or_never_answers_costs_the_webhooks_nothing(db: TestDb) {
    let unresponsive = Unresponsive::start().await.expect("a collector that never answers");
    for (round, endpoint) in
        [collector::down().expect("a closed port"), unresponsive.endpoint()].into_iter().enumerate()
    {
        // A long export timeout and a small queue: an export that held up
        // webhooks would hold them for half a minute, and the queue is full
        // after a few deliveries.
        let env = [("OTEL_EXPORTER_OTLP_TIMEOUT", "30000"), ("OTEL_BSP_MAX_QUEUE_SIZE", "16")];
        let mut stack = traced(&db.url, &endpoint, &env);
        let events: Vec<Bytes> =
            (0..60).map(|n| unique_paid_event(round * 100 + n).expect("event")).collect();

        let started = Instant::now();
        for chunk in events.chunks(20) {
            let statuses = deliver_at_once(&stack, chunk).await;
            assert!(statuses.iter().all(|s| *s == StatusCode::OK), "{endpoint}: {statuses:?}");
        }
        let took = started.elapsed();

        assert!(took < Duration::from_secs(20), "{endpoint}: 60 webhooks took {took:?}");
        let last = event_id_of(events.last().expect("events"));
        stack.gateway.wait_for_log("webhook handled", |l| l["event_id"] == last.as_str());
        for process in [&mut stack.gateway, &mut stack.payments] {
            process.signal("TERM");
            let stopped = process.wait_within(Duration::from_secs(15));
            assert!(stopped.is_some_and(|status| status.success()), "{endpoint}: stops on time and cleanly");
        }
    }
}
