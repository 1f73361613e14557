//! Who may talk to payments-svc, the gateway's bounds, health and metrics.

use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::fixture;
use hyper::StatusCode;
use payments_proto::v1::payments_client::PaymentsClient;
use payments_proto::v1::{VerifyPurchaseRequest, verify_purchase_request::Lookup};
use sea_orm::ConnectionTrait;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tonic::transport::Endpoint;
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{Stack, StackOptions, TestCertificate, TestDb, on_both_databases};

const TOKEN: &str = "a-test-token-that-is-long-enough-0123456789";

fn paid() -> Bytes {
    fixture("checkout_session_completed_paid.json").expect("fixture")
}

fn verify_request() -> VerifyPurchaseRequest {
    VerifyPurchaseRequest { lookup: Some(Lookup::CheckoutSessionId("cs_test_anything".into())) }
}

/// Writes raw bytes to the gateway and reads whatever it answers until it
/// closes the connection.
async fn raw_exchange(stack: &Stack, request: &[u8]) -> String {
    let mut stream = TcpStream::connect(stack.gateway_addr()).await.expect("connect");
    stream.write_all(request).await.expect("write");
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_svc_refuses_callers_without_the_token_except_for_health_checks() {
    let options = StackOptions { grpc_token: Some(TOKEN.into()), ..Default::default() };
    let stack = Stack::start_with(TestDb::sqlite().await, options).await;
    let channel = Endpoint::from_shared(stack.grpc_url()).expect("URL").connect().await.expect("connect");

    let anonymous = PaymentsClient::new(channel.clone()).verify_purchase(verify_request()).await;
    let wrong = PaymentsClient::with_interceptor(channel.clone(), |mut request: tonic::Request<()>| {
        request.metadata_mut().insert("authorization", "Bearer not-the-token".parse().expect("ASCII"));
        Ok(request)
    })
    .verify_purchase(verify_request())
    .await;
    let right = PaymentsClient::with_interceptor(channel.clone(), |mut request: tonic::Request<()>| {
        request.metadata_mut().insert("authorization", format!("Bearer {TOKEN}").parse().expect("ASCII"));
        Ok(request)
    })
    .verify_purchase(verify_request())
    .await;
    let health = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await;
    let through_gateway = stack.deliver(&paid()).await;

    assert_eq!(anonymous.expect_err("refused").code(), tonic::Code::Unauthenticated);
    assert_eq!(wrong.expect_err("refused").code(), tonic::Code::Unauthenticated);
    assert!(right.is_ok(), "{right:?}");
    assert_eq!(health.expect("health needs no token").into_inner().status(), ServingStatus::Serving);
    assert_eq!(through_gateway.json()["outcome"], "processed", "the gateway sends the token");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_reaches_payments_svc_over_tls() {
    let options = StackOptions {
        grpc_token: Some(TOKEN.into()),
        tls: Some(TestCertificate::new()),
        ..Default::default()
    };
    let stack = Stack::start_with(TestDb::sqlite().await, options).await;

    let answer = stack.deliver(&paid()).await;
    let plaintext = Endpoint::from_shared(stack.grpc_url()).expect("URL").connect().await;
    let plaintext_call = match plaintext {
        Ok(channel) => PaymentsClient::new(channel).verify_purchase(verify_request()).await.is_ok(),
        Err(_) => false,
    };

    assert_eq!(answer.json()["outcome"], "processed");
    assert!(!plaintext_call, "plaintext gRPC is not served when TLS is configured");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_trickling_in_is_cut_off_with_408() {
    let options = StackOptions {
        gateway: Some(|settings| settings.request_timeout = Duration::from_millis(300)),
        ..Default::default()
    };
    let stack = Stack::start_with(TestDb::sqlite().await, options).await;
    let started = Instant::now();

    // A signature header that passes the checks made before the body.
    let request = format!(
        "POST /api/payments/webhook HTTP/1.1\r\nhost: x\r\nstripe-signature: t={},v1={}\r\n\
         content-length: 4663\r\n\r\n{{\"id\": \"evt_",
        e2e::unix_now(),
        "0".repeat(64)
    );
    let answer = raw_exchange(&stack, request.as_bytes()).await;

    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(started.elapsed() < Duration::from_secs(10), "cut long before the client's own patience");
    assert_eq!(stack.event_count().await, 0);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_services_expose_prometheus_metrics_on_their_admin_listeners_only() {
    let stack = Stack::start(TestDb::sqlite().await).await;
    stack.deliver(&paid()).await;
    stack.deliver(&paid()).await;
    stack.deliver_with(paid(), Some("t=1,v1=00")).await;
    stack.get("/api/payments/verify?session_id=cs_test_nobody").await;

    let gateway = stack.gateway_metrics().await;
    let public = stack.get("/metrics").await;
    let payments = stack.payments_metrics().await;

    for line in [
        r#"gateway_webhooks_total{outcome="processed",reason=""} 1"#,
        r#"gateway_webhooks_total{outcome="duplicate",reason=""} 1"#,
        r#"gateway_webhooks_total{outcome="rejected",reason="stale_timestamp"} 1"#,
        r#"gateway_verifications_total{status="not_found"} 1"#,
        r#"gateway_payments_call_duration_seconds_count{method="HandleStripeEvents"} 2"#,
        "gateway_forwarded_events_per_call_sum 2",
        "gateway_webhook_duration_seconds_count 3",
        "gateway_in_flight_requests 0",
    ] {
        assert!(gateway.contains(line), "gateway metrics lack {line}:\n{gateway}");
    }
    for line in [
        r#"payments_events_total{outcome="processed"} 1"#,
        r#"payments_events_total{outcome="duplicate"} 1"#,
        "payments_event_handle_seconds_count 2",
        r#"payments_verifications_total{status="not_found",unconfirmed="false"} 1"#,
    ] {
        assert!(payments.contains(line), "payments-svc metrics lack {line}:\n{payments}");
    }
    assert_eq!(public.status, StatusCode::NOT_FOUND, "the public listener serves no metrics");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_payments_svc() {
    let mut stack = Stack::start(TestDb::sqlite().await).await;

    let ready = stack.get("/readyz").await;
    stack.stop_payments_svc().await;
    let not_ready = stack.get("/readyz").await;
    let alive = stack.get("/healthz").await;

    assert_eq!(ready.status, StatusCode::OK);
    assert_eq!(not_ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(alive.status, StatusCode::OK, "the gateway itself is alive");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_reports_not_serving_when_the_database_is_gone() {
    let db = TestDb::postgres().await;
    let admin_url = std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".to_owned());
    let name = url::Url::parse(&db.url).expect("URL").path().trim_start_matches('/').to_owned();
    let stack = Stack::start(db).await;
    let mut health = HealthClient::new(Endpoint::from_shared(stack.grpc_url()).expect("URL").connect_lazy());
    let status = |answer: Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status>| {
        answer.map(|a| a.into_inner().status()).unwrap_or(ServingStatus::Unknown)
    };
    let request = || HealthCheckRequest { service: "payments.v1.Payments".into() };
    assert_eq!(status(health.check(request()).await), ServingStatus::Serving);

    let admin = sea_orm::Database::connect(&admin_url).await.expect("admin connection");
    admin.execute_unprepared(&format!("DROP DATABASE \"{name}\" WITH (FORCE)")).await.expect("drop");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = ServingStatus::Serving;
    while last == ServingStatus::Serving && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
        last = status(health.check(request()).await);
    }

    assert_eq!(last, ServingStatus::NotServing);
    assert_eq!(stack.get("/readyz").await.status, StatusCode::SERVICE_UNAVAILABLE);
}

on_both_databases!(grpc_reflection_lists_the_payments_service);
async fn grpc_reflection_lists_the_payments_service(db: TestDb) {
    use tonic_reflection::pb::v1::ServerReflectionRequest;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

    let stack = Stack::start(db).await;
    let channel = Endpoint::from_shared(stack.grpc_url()).expect("URL").connect().await.expect("connect");
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };

    let mut answers =
        reflection.server_reflection_info(tokio_stream_once(request)).await.expect("stream").into_inner();
    let answer = answers.message().await.expect("message").expect("an answer");

    let Some(MessageResponse::ListServicesResponse(list)) = answer.message_response else {
        panic!("{answer:?}")
    };
    let names: Vec<_> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.contains(&"payments.v1.Payments".to_owned()), "{names:?}");
    assert!(names.contains(&"grpc.health.v1.Health".to_owned()), "{names:?}");
    stack.shutdown().await;
}

/// A request stream of one message.
fn tokio_stream_once<T: Send + 'static>(item: T) -> impl tonic::IntoStreamingRequest<Message = T> {
    tokio_stream::once(item)
}
