//! Duplicate payments get their money back: a second payment for a course
//! the buyer owns is refunded through Stripe's Refunds API (the test double)
//! exactly once, whether payments-svc does it by itself or an operator runs
//! the command, through a 500, a timeout after Stripe did refund, a restart
//! and a second replica; the refund's own webhook then marks it refunded.

use std::time::Duration;

use bytes::Bytes;
use e2e::{fixture, replace_once, with_fresh_ids};
use hyper::StatusCode;
use payments_svc::store::entities::refund_request::{self, RefundRequestStatus};
use sea_orm::EntityTrait;

use crate::fake_stripe::{FAKE_STRIPE_KEY, FakeStripe, Fault};
use crate::helpers::{Stack, StackOptions, TestDb, eventually, on_both_databases};
use crate::processes::payments_cli;

const PAID: &str = "checkout_session_completed_paid.json";

/// The paid checkout, and a second payment of the same course by the same
/// buyer: its session and payment intent.
fn two_payments() -> (Bytes, Bytes, String, String) {
    let first = fixture(PAID).expect("fixture");
    let second = with_fresh_ids(&first, "_second").expect("variant");
    let parsed: serde_json::Value = serde_json::from_slice(&second).expect("JSON");
    let session = parsed["data"]["object"]["id"].as_str().expect("session").to_owned();
    let payment = parsed["data"]["object"]["payment_intent"].as_str().expect("payment intent").to_owned();
    (first, second, session, payment)
}

fn auto_refunding(stripe: &FakeStripe, timeout_ms: u64) -> StackOptions {
    StackOptions {
        stripe_api_base: Some(stripe.base_url()),
        stripe_timeout_ms: Some(timeout_ms),
        payments: Some(|settings| settings.auto_refund_duplicates = true),
        ..Default::default()
    }
}

async fn request_of(stack: &Stack) -> Option<refund_request::Model> {
    refund_request::Entity::find().all(&stack.db).await.expect("refund requests").pop()
}

/// Stripe's `refund.created` for the refund the fake made.
fn refund_webhook(refund_id: &str, payment_intent: &str) -> Bytes {
    let text =
        String::from_utf8(fixture("refund_created_full.json").expect("fixture").to_vec()).expect("UTF-8");
    let text = text
        .replace("\"re_3RfD8kLq2VxN0pAa1s0Fe7Gh\"", &format!("\"{refund_id}\""))
        .replace("\"pi_3chHPNw84sPSl7cwMX3oOFxK\"", &format!("\"{payment_intent}\""))
        .replace("\"ch_3mTPAJRlM3fKnuH7GJoyVXb3\"", "\"ch_second_payment\"")
        .replace("\"evt_3RfD8kLq2VxN0pAa1cRf03Ef\"", "\"evt_refund_of_second_payment\"");
    Bytes::from(text)
}

on_both_databases!(a_second_payment_is_refunded_once_through_a_500_and_its_webhook_closes_the_loop);
async fn a_second_payment_is_refunded_once_through_a_500_and_its_webhook_closes_the_loop(db: TestDb) {
    let stripe = FakeStripe::start().await;
    let stack = Stack::start_with(db, auto_refunding(&stripe, 3_000)).await;
    let (first, second, session, payment) = two_payments();
    stripe.fail_next([Fault::Status(500)]);

    stack.deliver(&first).await;
    stack.deliver(&second).await;
    eventually(Duration::from_secs(15), "the refund", || async {
        request_of(&stack).await.is_some_and(|r| r.status == RefundRequestStatus::Requested)
    })
    .await;
    let refunds = stripe.refunds();
    let answer = stack.deliver(&refund_webhook(&refunds[0].id, &payment)).await;

    assert_eq!(refunds.len(), 1, "{refunds:?}");
    assert_eq!(refunds[0].payment_intent, payment);
    assert_eq!(
        refunds[0].idempotency_key.as_deref(),
        Some(format!("duplicate-purchase-refund-{session}").as_str())
    );
    assert_eq!(answer.status, StatusCode::OK);
    let duplicate = stack.get(&format!("/api/payments/verify?session_id={session}")).await.json();
    assert_eq!(
        (duplicate["status"].as_str(), duplicate["hasAccess"].as_bool()),
        (Some("refunded"), Some(false))
    );
    let first_session = "cs_test_a1iolLS3ITgWKPeHk8FcCmpFOlMp4DuFLZFxmEhdm55FlhTr8srB0dB3N3";
    let owned = stack.get(&format!("/api/payments/verify?session_id={first_session}")).await.json();
    assert_eq!((owned["status"].as_str(), owned["hasAccess"].as_bool()), (Some("paid"), Some(true)));
    stack.shutdown().await;
}

on_both_databases!(a_timeout_after_stripe_refunded_is_retried_into_the_same_refund);
async fn a_timeout_after_stripe_refunded_is_retried_into_the_same_refund(db: TestDb) {
    let stripe = FakeStripe::start().await;
    let stack = Stack::start_with(db, auto_refunding(&stripe, 500)).await;
    let (first, second, _, _) = two_payments();
    stripe.fail_next([Fault::DelayAfterDoing(Duration::from_secs(2))]);

    stack.deliver(&first).await;
    stack.deliver(&second).await;
    eventually(Duration::from_secs(20), "the retried refund", || async {
        request_of(&stack).await.is_some_and(|r| r.status == RefundRequestStatus::Requested)
    })
    .await;

    let request = request_of(&stack).await.expect("request");
    assert_eq!(stripe.refunds().len(), 1, "the retry made no second refund: {:?}", stripe.refunds());
    assert!(request.attempts >= 2, "the first attempt timed out: {request:?}");
    assert_eq!(request.stripe_refund_id.as_deref(), Some(stripe.refunds()[0].id.as_str()));
    stack.shutdown().await;
}

on_both_databases!(refunds_owed_survive_a_restart_and_a_second_replica_makes_no_second_refund);
async fn refunds_owed_survive_a_restart_and_a_second_replica_makes_no_second_refund(db: TestDb) {
    let url = db.url.clone();
    let stripe = FakeStripe::start().await;
    let options = auto_refunding(&stripe, 500);
    let mut stack = Stack::start_with(db, options.clone()).await;
    let (first, second, _, _) = two_payments();
    stripe.fail_every_request(Some(Fault::Status(503)));

    stack.deliver(&first).await;
    stack.deliver(&second).await;
    eventually(Duration::from_secs(15), "a failed attempt", || async {
        request_of(&stack).await.is_some_and(|r| r.attempts >= 1)
    })
    .await;
    stack.stop_payments_svc().await;
    stripe.fail_every_request(None);
    stack.restart_payments_svc(options.clone()).await;
    let mut replica = payments_svc::config::Args::local(&url);
    replica.stripe.stripe_api_base = stripe.base_url();
    replica.stripe.stripe_secret_key = Some(FAKE_STRIPE_KEY.to_owned());
    replica.stripe_auto_refund_duplicates = true;
    let replica = payments_svc::config::Settings::try_from(replica).expect("settings");
    let replica = payments_svc::startup::Application::build(&replica).await.expect("a second replica");
    let (stop_replica, stopped) = tokio::sync::oneshot::channel::<()>();
    let replica = tokio::spawn(replica.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    eventually(Duration::from_secs(20), "the refund after the restart", || async {
        request_of(&stack).await.is_some_and(|r| r.status == RefundRequestStatus::Requested)
    })
    .await;
    let _ = stop_replica.send(());
    let _ = replica.await;

    assert_eq!(stripe.refunds().len(), 1, "{:?}", stripe.refunds());
    stack.shutdown().await;
}

on_both_databases!(the_refund_command_refunds_a_duplicate_once_and_refuses_the_purchase_that_grants_access);
async fn the_refund_command_refunds_a_duplicate_once_and_refuses_the_purchase_that_grants_access(db: TestDb) {
    let url = db.url.clone();
    let stripe = FakeStripe::start().await;
    let stack = Stack::start(db).await;
    let (first, second, session, _) = two_payments();
    stack.deliver(&first).await;
    stack.deliver(&second).await;
    let env = [("STRIPE_SECRET_KEY", FAKE_STRIPE_KEY), ("STRIPE_API_BASE", &stripe.base_url())];

    let once = payments_cli(&url, &env, &["purchases", "refund", &session]);
    let again = payments_cli(&url, &env, &["purchases", "refund", &session]);
    let owner = "cs_test_a1iolLS3ITgWKPeHk8FcCmpFOlMp4DuFLZFxmEhdm55FlhTr8srB0dB3N3";
    let refused = payments_cli(&url, &env, &["purchases", "refund", owner]);

    let (once, again) = (String::from_utf8_lossy(&once.stdout), String::from_utf8_lossy(&again.stdout));
    assert_eq!(once.trim(), format!("{session}: refunded: re_fake_1"));
    assert_eq!(again.trim(), format!("{session}: already refunded: re_fake_1"));
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("not a second payment"), "{refused:?}");
    assert_eq!(stripe.refunds().len(), 1);
    stack.shutdown().await;
}

on_both_databases!(buying_again_after_a_full_refund_grants_the_course_and_is_not_refunded);
async fn buying_again_after_a_full_refund_grants_the_course_and_is_not_refunded(db: TestDb) {
    let stripe = FakeStripe::start().await;
    let stack = Stack::start_with(db, auto_refunding(&stripe, 3_000)).await;
    let (first, second, session, _) = two_payments();

    stack.deliver(&first).await;
    stack.deliver(&fixture("refund_created_full.json").expect("fixture")).await;
    stack.deliver(&second).await;

    assert!(request_of(&stack).await.is_none(), "no refund is owed for buying again");
    let purchases = stack.purchases().await;
    let again = purchases.iter().find(|p| p.stripe_checkout_session_id == session).expect("recorded");
    assert!(!again.needs_refund, "a buyer again is no duplicate: {again:?}");
    assert!(stripe.refunds().is_empty(), "{:?}", stripe.refunds());
    let bought_again = stack.get(&format!("/api/payments/verify?session_id={session}")).await.json();
    assert_eq!(
        (bought_again["status"].as_str(), bought_again["hasAccess"].as_bool()),
        (Some("paid"), Some(true))
    );
    stack.shutdown().await;
}

on_both_databases!(of_two_payments_the_session_stripe_created_first_keeps_the_course_in_any_order);
async fn of_two_payments_the_session_stripe_created_first_keeps_the_course_in_any_order(db: TestDb) {
    let stack = Stack::start(db).await;
    // Each buyer's second session was created a minute after the first;
    // the webhooks come in every order, each twice, concurrently.
    let orders: [&[usize]; 4] = [&[0, 1, 0, 1], &[1, 0, 1, 0], &[1, 1, 0, 0], &[0, 0, 1, 1]];
    let mut sessions = Vec::new();
    for (buyer, order) in orders.iter().enumerate() {
        let (first, second, _, _) = two_payments();
        let [first, second] = [first, second].map(|body| {
            let body = with_fresh_ids(&body, &format!("_buyer{buyer}")).expect("variant");
            replace_once(&body, "76579e2b-1d72-48ed-99f9-d14b4496249a", &format!("buyer-{buyer}"))
                .expect("buyer")
        });
        let second = session_created_later(&second, 60);
        let pair = [first, second];
        sessions.push(pair.clone().map(|body| session_id(&body)));
        let bodies: Vec<Bytes> = order.iter().map(|at| pair[*at].clone()).collect();
        for answer in stack.deliver_concurrently(&bodies).await {
            assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
        }
    }

    let purchases = stack.purchases().await;
    for [first, second] in &sessions {
        let row = |id: &str| purchases.iter().find(|p| p.stripe_checkout_session_id == id).expect("recorded");
        assert!(
            row(first).has_access && !row(first).needs_refund,
            "the earlier session keeps it: {:?}",
            row(first)
        );
        assert!(
            !row(second).has_access && row(second).needs_refund,
            "the later one is owed: {:?}",
            row(second)
        );
    }
    let owed: Vec<String> = refund_request::Entity::find()
        .all(&stack.db)
        .await
        .expect("refunds owed")
        .into_iter()
        .map(|r| r.checkout_session_id)
        .collect();
    assert_eq!(owed.len(), orders.len(), "one refund owed per buyer: {owed:?}");
    assert!(sessions.iter().all(|[_, second]| owed.contains(second)), "{owed:?}");
    stack.shutdown().await;
}

/// `body` with its session created `seconds` after the fixture's.
fn session_created_later(body: &Bytes, seconds: i64) -> Bytes {
    let mut event: serde_json::Value = serde_json::from_slice(body).expect("JSON");
    let created = event["data"]["object"]["created"].as_i64().expect("created");
    event["data"]["object"]["created"] = (created + seconds).into();
    Bytes::from(event.to_string())
}

fn session_id(body: &Bytes) -> String {
    let event: serde_json::Value = serde_json::from_slice(body).expect("JSON");
    event["data"]["object"]["id"].as_str().expect("session").to_owned()
}
