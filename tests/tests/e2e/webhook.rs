//! Stripe webhook deliveries through the gateway into the database.

use bytes::Bytes;
use e2e::{fixture, signature_now, unix_now};
use hyper::StatusCode;
use payments_svc::store::entities::course_purchase::{PurchaseSource, PurchaseStatus};
use payments_svc::store::entities::stripe_webhook_event::EventStatus;
use sea_orm::{ConnectionTrait, DatabaseBackend, Statement};
use webhook_gateway::signature::{WebhookSecret, sign};

use crate::helpers::{Stack, TestDb, gateway_without_payments_svc, on_both_databases, secret};

const PAID: &str = "checkout_session_completed_paid.json";

fn paid_event() -> Bytes {
    fixture(PAID).expect("fixture")
}

on_both_databases!(paid_checkout_session_becomes_one_purchase_that_verify_reports_paid);
async fn paid_checkout_session_becomes_one_purchase_that_verify_reports_paid(db: TestDb) {
    let stack = Stack::start(db).await;

    let answer = stack.deliver(&paid_event()).await;

    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.json()["outcome"], "processed");
    let purchases = stack.purchases().await;
    assert_eq!(purchases.len(), 1);
    let purchase = &purchases[0];
    let payload: serde_json::Value = serde_json::from_slice(&paid_event()).expect("JSON");
    let session = &payload["data"]["object"];
    assert_eq!(purchase.stripe_checkout_session_id, session["id"].as_str().expect("id"));
    assert_eq!(purchase.user_id, session["metadata"]["userId"].as_str().expect("userId"));
    assert_eq!(purchase.course_id, session["metadata"]["courseId"].as_str().expect("courseId"));
    assert_eq!(purchase.stripe_payment_intent_id.as_deref(), session["payment_intent"].as_str());
    assert_eq!(purchase.amount_total, Some(4900));
    assert_eq!(purchase.currency.as_deref(), Some("usd"));
    assert_eq!(purchase.status, PurchaseStatus::Paid);
    assert_eq!(purchase.source, PurchaseSource::Webhook);

    let events = stack.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_id, payload["id"].as_str().expect("id"));
    assert_eq!(events[0].status, EventStatus::Processed);
    assert_eq!(events[0].payload.as_bytes(), &paid_event()[..], "the exact signed bytes are stored");
    assert!(events[0].processed_at.is_some());

    let verify =
        stack.get(&format!("/api/payments/verify?session_id={}", purchase.stripe_checkout_session_id)).await;
    assert_eq!(verify.status, StatusCode::OK);
    assert_eq!(verify.json()["status"], "paid");
    assert_eq!(verify.json()["courseId"], purchase.course_id.as_str());
    assert!(verify.json()["purchasedAt"].is_string(), "{}", verify.json());
    stack.shutdown().await;
}

/// On PostgreSQL a payload is compressed and kept in its row: a ~2.3 KB
/// compressed value would otherwise cost a second insert into the TOAST
/// table for every event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_keeps_each_payload_compressed_in_its_row() {
    let stack = Stack::start(TestDb::postgres().await).await;

    assert_eq!(stack.deliver(&paid_event()).await.json()["outcome"], "processed");

    let storage = stack
        .db
        .query_one_raw(Statement::from_string(
            DatabaseBackend::Postgres,
            "SELECT pg_column_compression(payload) IS NOT NULL AS compressed, \
                    pg_relation_size(c.reltoastrelid) AS toast_bytes \
             FROM stripe_webhook_events, pg_class c WHERE c.relname = 'stripe_webhook_events'",
        ))
        .await
        .expect("query")
        .expect("one event");
    assert!(storage.try_get::<bool>("", "compressed").expect("compressed"), "the payload is compressed");
    assert_eq!(storage.try_get::<i64>("", "toast_bytes").expect("toast_bytes"), 0, "nothing out of line");
    assert_eq!(stack.events().await[0].payload.as_bytes(), &paid_event()[..]);
    stack.shutdown().await;
}

on_both_databases!(redelivered_event_is_a_duplicate_and_counts_the_delivery);
async fn redelivered_event_is_a_duplicate_and_counts_the_delivery(db: TestDb) {
    let stack = Stack::start(db).await;
    assert_eq!(stack.deliver(&paid_event()).await.json()["outcome"], "processed");

    let again = stack.deliver(&paid_event()).await;

    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["outcome"], "duplicate");
    assert_eq!(stack.purchases().await.len(), 1);
    let events = stack.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].delivery_count, 2);
    assert_eq!(events[0].status, EventStatus::Processed);
    stack.shutdown().await;
}

on_both_databases!(twenty_concurrent_deliveries_of_one_event_record_one_purchase);
async fn twenty_concurrent_deliveries_of_one_event_record_one_purchase(db: TestDb) {
    let stack = Stack::start(db).await;
    let answers = stack.deliver_concurrently(&vec![paid_event(); 20]).await;

    for answer in &answers {
        assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    }
    let processed = answers.iter().filter(|a| a.json()["outcome"] == "processed").count();
    let duplicates = answers.iter().filter(|a| a.json()["outcome"] == "duplicate").count();
    assert_eq!((processed, duplicates), (1, 19));
    assert_eq!(stack.purchases().await.len(), 1);
    let events = stack.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].delivery_count, 20);
    stack.shutdown().await;
}

on_both_databases!(bad_signatures_are_refused_with_400_and_nothing_is_written);
async fn bad_signatures_are_refused_with_400_and_nothing_is_written(db: TestDb) {
    let stack = Stack::start(db).await;
    let body = paid_event();
    let other_secret = WebhookSecret::new("whsec_someone_else").expect("secret");
    let now = unix_now();
    let mut tampered = body.to_vec();
    let position = tampered.iter().position(|b| *b == b'4').expect("a digit to change");
    tampered[position] = b'5';

    let cases: Vec<(Bytes, Option<String>, &str)> = vec![
        (body.clone(), None, "missing_signature"),
        (body.clone(), Some(sign(&other_secret, now, &body)), "signature_mismatch"),
        (Bytes::from(tampered), Some(sign(&secret(), now, &body)), "signature_mismatch"),
        (body.clone(), Some(sign(&secret(), now - 301, &body)), "stale_timestamp"),
        (body.clone(), Some(sign(&secret(), now + 301, &body)), "stale_timestamp"),
        (body.clone(), Some("v1=abc".to_owned()), "malformed_signature"),
        (body.clone(), Some(format!("t={now},v0=00")), "no_v1_signature"),
    ];
    for (body, signature, code) in cases {
        let answer = stack.deliver_with(body, signature.as_deref()).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST, "{code}");
        assert_eq!(answer.json()["error"], code, "{}", answer.json());
    }

    assert_eq!(stack.event_count().await, 0);
    assert!(stack.purchases().await.is_empty());
    stack.shutdown().await;
}

on_both_databases!(payment_intent_event_with_course_metadata_is_ignored_without_a_purchase);
async fn payment_intent_event_with_course_metadata_is_ignored_without_a_purchase(db: TestDb) {
    let stack = Stack::start(db).await;

    let answer = stack.deliver(&fixture("payment_intent_succeeded.json").expect("fixture")).await;

    assert_eq!(answer.status, StatusCode::OK);
    assert_eq!(answer.json()["outcome"], "ignored");
    assert!(stack.purchases().await.is_empty());
    let events = stack.events().await;
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].event_type, "payment_intent.succeeded");
    assert_eq!(events[0].status, EventStatus::Ignored);
    stack.shutdown().await;
}

on_both_databases!(paid_session_without_metadata_is_acknowledged_and_stored_as_failed);
async fn paid_session_without_metadata_is_acknowledged_and_stored_as_failed(db: TestDb) {
    let stack = Stack::start(db).await;

    let answer =
        stack.deliver(&fixture("checkout_session_completed_no_metadata.json").expect("fixture")).await;

    assert_eq!(answer.status, StatusCode::OK, "Stripe must not retry what can never succeed");
    assert_eq!(answer.json()["outcome"], "failed");
    assert!(stack.purchases().await.is_empty());
    let events = stack.events().await;
    assert_eq!(events[0].status, EventStatus::Failed);
    let error = events[0].error.as_ref().expect("error payload");
    assert_eq!(error["code"], "invalid_metadata");
    assert_eq!(error["message"], "metadata.courseId is missing; metadata.userId is missing");
    stack.shutdown().await;
}

on_both_databases!(signed_json_that_is_not_a_stripe_event_is_400);
async fn signed_json_that_is_not_a_stripe_event_is_400(db: TestDb) {
    let stack = Stack::start(db).await;

    for body in [&br#"{"hello":"world"}"#[..], b"[1,2,3]", b"not json at all"] {
        let answer = stack.deliver(&Bytes::from_static(body)).await;
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
        assert_eq!(answer.json()["error"], "not_a_stripe_event");
    }
    assert_eq!(stack.event_count().await, 0);
    stack.shutdown().await;
}

on_both_databases!(database_failure_answers_503_leaves_nothing_processed_and_the_retry_succeeds);
async fn database_failure_answers_503_leaves_nothing_processed_and_the_retry_succeeds(db: TestDb) {
    let stack = Stack::start(db).await;
    stack
        .db
        .execute_unprepared("ALTER TABLE course_purchases RENAME TO course_purchases_away")
        .await
        .expect("rename");

    let answer = stack.deliver(&paid_event()).await;

    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{:?}", answer.body);
    assert_eq!(stack.event_count().await, 0, "the event row was rolled back with the failed purchase");

    stack
        .db
        .execute_unprepared("ALTER TABLE course_purchases_away RENAME TO course_purchases")
        .await
        .expect("rename");
    let retry = stack.deliver(&paid_event()).await;
    assert_eq!(retry.status, StatusCode::OK);
    assert_eq!(retry.json()["outcome"], "processed");
    assert_eq!(stack.purchases().await.len(), 1);
    stack.shutdown().await;
}

on_both_databases!(stopped_payments_svc_makes_the_gateway_answer_503);
async fn stopped_payments_svc_makes_the_gateway_answer_503(db: TestDb) {
    let mut stack = Stack::start(db).await;
    stack.stop_payments_svc().await;

    let answer = stack.deliver(&paid_event()).await;

    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(answer.json()["error"], "unavailable");
    assert!(answer.headers.contains_key("retry-after"));
    assert_eq!(stack.event_count().await, 0);
    stack.shutdown().await;
}

#[tokio::test]
async fn gateway_whose_payments_svc_never_started_answers_503() {
    let (url, stop) = gateway_without_payments_svc().await;
    let body = paid_event();
    let header = signature_now(&secret(), &body);

    let answer = e2e::HttpClient::default()
        .post_webhook(&format!("{url}/api/payments/webhook"), body, Some(&header))
        .await
        .expect("HTTP round trip");

    assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
    stop.await;
}

#[tokio::test]
async fn body_over_the_limit_is_413_and_unknown_routes_and_methods_are_404_and_405() {
    let stack = Stack::start(TestDb::sqlite().await).await;
    let huge = Bytes::from(vec![b' '; 1024 * 1024 + 1]);

    let too_large = stack.deliver(&huge).await;
    let wrong_method = stack.get("/api/payments/webhook").await;
    let unknown = stack.get("/api/payments/nothing").await;
    let health = stack.get("/healthz").await;

    assert_eq!(too_large.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(wrong_method.headers["allow"], "POST");
    assert_eq!(unknown.status, StatusCode::NOT_FOUND);
    assert_eq!(health.status, StatusCode::OK);
    stack.shutdown().await;
}
