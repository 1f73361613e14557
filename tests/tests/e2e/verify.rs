//! The frontend's verify route and the internal `VerifyPurchase` call.

use bytes::Bytes;
use e2e::fixture;
use hyper::{Method, StatusCode};
use payments_proto::v1::{
    PurchaseStatus, UserCourse, VerifyPurchaseRequest, verify_purchase_request::Lookup,
};
use tonic_health::pb::{
    HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient,
};

use crate::helpers::{Stack, TestDb, on_both_databases};

on_both_databases!(unknown_session_is_404_not_found_not_an_error);
async fn unknown_session_is_404_not_found_not_an_error(db: TestDb) {
    let stack = Stack::start(db).await;

    let answer = stack.get("/api/payments/verify?session_id=cs_test_never_seen").await;

    assert_eq!(answer.status, StatusCode::NOT_FOUND);
    assert_eq!(answer.json()["status"], "not_found");
    assert!(answer.json()["courseId"].is_null());
    stack.shutdown().await;
}

on_both_databases!(post_with_json_body_answers_like_get);
async fn post_with_json_body_answers_like_get(db: TestDb) {
    let stack = Stack::start(db).await;
    stack.deliver(&fixture("checkout_session_completed_paid.json").expect("fixture")).await;
    let session_id = stack.purchases().await[0].stripe_checkout_session_id.clone();

    let by_get = stack.get(&format!("/api/payments/verify?session_id={session_id}")).await;
    let body = Bytes::from(serde_json::json!({ "sessionId": session_id }).to_string());
    let by_post = stack
        .http
        .send(Method::POST, &stack.url("/api/payments/verify"), &[("content-type", "application/json")], body)
        .await
        .expect("HTTP round trip");

    assert_eq!(by_post.status, StatusCode::OK);
    assert_eq!(by_post.json(), by_get.json());
    assert_eq!(by_post.json()["status"], "paid");
    let keys: Vec<_> = by_post.json().as_object().expect("object").keys().cloned().collect();
    assert_eq!(
        keys,
        ["amountRefunded", "courseId", "hasAccess", "purchasedAt", "status"],
        "nothing about the buyer is revealed"
    );
    assert_eq!(
        (by_post.json()["hasAccess"].as_bool(), by_post.json()["amountRefunded"].as_i64()),
        (Some(true), Some(0))
    );
    stack.shutdown().await;
}

#[tokio::test]
async fn malformed_verify_requests_are_400_and_malformed_ids_look_unknown() {
    let stack = Stack::start(TestDb::sqlite().await).await;
    let unknown = stack.get("/api/payments/verify?session_id=cs_test_unknown").await;

    let missing = stack.get("/api/payments/verify").await;
    assert_eq!(missing.status, StatusCode::BAD_REQUEST);
    assert_eq!(missing.json()["error"], "invalid_request");
    for path in [
        "/api/payments/verify?session_id=",
        "/api/payments/verify?session_id=pi_123",
        "/api/payments/verify?session_id=cs_x%27%20or%201%3D1",
    ] {
        let answer = stack.get(path).await;
        assert_eq!((answer.status, answer.json()), (unknown.status, unknown.json()), "{path}");
    }
    for body in [&b"{}"[..], b"not json", br#"{"sessionId": 42}"#] {
        let answer = stack
            .http
            .send(Method::POST, &stack.url("/api/payments/verify"), &[], Bytes::from_static(body))
            .await
            .expect("HTTP round trip");
        assert_eq!(answer.status, StatusCode::BAD_REQUEST);
    }
    let wrong_method = stack
        .http
        .send(Method::DELETE, &stack.url("/api/payments/verify"), &[], Bytes::new())
        .await
        .expect("HTTP");
    assert_eq!(wrong_method.status, StatusCode::METHOD_NOT_ALLOWED);
    stack.shutdown().await;
}

on_both_databases!(internal_callers_can_ask_whether_a_user_owns_a_course);
async fn internal_callers_can_ask_whether_a_user_owns_a_course(db: TestDb) {
    let stack = Stack::start(db).await;
    stack.deliver(&fixture("checkout_session_completed_paid.json").expect("fixture")).await;
    let purchase = stack.purchases().await.remove(0);
    let mut grpc = stack.grpc().await;
    let ask = |user_id: &str, course_id: &str| VerifyPurchaseRequest {
        lookup: Some(Lookup::UserCourse(UserCourse { user_id: user_id.into(), course_id: course_id.into() })),
    };

    let owner =
        grpc.verify_purchase(ask(&purchase.user_id, &purchase.course_id)).await.expect("answer").into_inner();
    let stranger =
        grpc.verify_purchase(ask("someone-else", &purchase.course_id)).await.expect("answer").into_inner();
    let empty = grpc.verify_purchase(ask("", &purchase.course_id)).await.expect_err("refused");

    assert_eq!(owner.status(), PurchaseStatus::Paid);
    let owned = owner.purchase.expect("the purchase");
    assert_eq!(owned.checkout_session_id, purchase.stripe_checkout_session_id);
    assert_eq!(owned.amount_total, Some(4900));
    assert_eq!(stranger.status(), PurchaseStatus::NotFound);
    assert!(stranger.purchase.is_none());
    assert_eq!(empty.code(), tonic::Code::InvalidArgument);
    assert!(empty.message().contains("user_id"), "{}", empty.message());
    stack.shutdown().await;
}

#[tokio::test]
async fn payments_svc_serves_the_standard_grpc_health_check() {
    let stack = Stack::start(TestDb::sqlite().await).await;
    let channel = tonic::transport::Endpoint::from_shared(stack.grpc_url())
        .expect("URL")
        .connect()
        .await
        .expect("connect");
    let mut health = HealthClient::new(channel);

    let overall =
        health.check(HealthCheckRequest { service: String::new() }).await.expect("check").into_inner();
    let payments = health
        .check(HealthCheckRequest { service: "payments.v1.Payments".into() })
        .await
        .expect("check")
        .into_inner();

    assert_eq!(overall.status(), ServingStatus::Serving);
    assert_eq!(payments.status(), ServingStatus::Serving);
    stack.shutdown().await;
}
