//! Verify as a second fulfilment path: sessions fetched from Stripe's API
//! (a local stand-in), races with the webhook, Stripe failing, and the
//! missed-webhook sweep.

use std::time::Duration;

use bytes::Bytes;
use e2e::{fixture, replace_once, unix_now, with_created, with_fresh_ids};
use hyper::StatusCode;
use payments_svc::store::entities::course_purchase::{PurchaseSource, PurchaseStatus};
use payments_svc::store::entities::stripe_webhook_event::EventStatus;
use sea_orm::{Database, EntityTrait};

use crate::fake_stripe::{FAKE_STRIPE_KEY, FakeStripe, Fault};
use crate::helpers::{Stack, StackOptions, TestDb, eventually, metric, on_both_databases};
use crate::processes::{ProcessStack, payments_cli};

/// A paid `checkout.session.completed` and the same session as Stripe's API
/// returns it, both with ids made unique by `suffix`.
fn paid_checkout(suffix: &str) -> (Bytes, Bytes) {
    let event = with_fresh_ids(&fixture("checkout_session_completed_paid.json").expect("fixture"), suffix);
    let session = with_fresh_ids(&fixture("checkout_session.object.json").expect("fixture"), suffix);
    (event.expect("event"), session.expect("session"))
}

fn session_id_of(session: &[u8]) -> String {
    let parsed: serde_json::Value = serde_json::from_slice(session).expect("JSON");
    parsed["id"].as_str().expect("id").to_owned()
}

/// The session object in another state: e.g. `("paid", "unpaid")` on
/// `payment_status`, or `("complete", "expired")` on `status`.
fn session_variant(session: &[u8], field: &str, from: &str, to: &str) -> Bytes {
    replace_once(session, &format!(r#""{field}": "{from}""#), &format!(r#""{field}": "{to}""#))
        .expect("variant")
}

async fn stack_with_stripe(db: TestDb, stripe: &FakeStripe) -> Stack {
    let options = StackOptions { stripe_api_base: Some(stripe.base_url()), ..Default::default() };
    Stack::start_with(db, options).await
}

async fn verify(stack: &Stack, session_id: &str) -> e2e::HttpAnswer {
    stack.get(&format!("/api/payments/verify?session_id={session_id}")).await
}

on_both_databases!(verify_fulfils_a_paid_session_whose_webhook_has_not_arrived);
async fn verify_fulfils_a_paid_session_whose_webhook_has_not_arrived(db: TestDb) {
    let stripe = FakeStripe::start().await;
    let stack = stack_with_stripe(db, &stripe).await;
    let (event, session) = paid_checkout("_late_webhook");
    stripe.add_session(session.clone());
    let session_id = session_id_of(&session);

    let answer = verify(&stack, &session_id).await;

    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    assert_eq!(answer.json()["status"], "paid");
    let purchases = stack.purchases().await;
    assert_eq!(purchases.len(), 1);
    assert_eq!(purchases[0].source, PurchaseSource::Verify);
    assert_eq!(purchases[0].amount_total, Some(4900));
    assert_eq!(stack.event_count().await, 0);

    let late_webhook = stack.deliver(&event).await;
    assert_eq!(late_webhook.json()["outcome"], "processed");
    let purchases = stack.purchases().await;
    assert_eq!(purchases.len(), 1, "the webhook found the purchase already there");
    assert_eq!(purchases[0].source, PurchaseSource::Verify);
    let again = verify(&stack, &session_id).await;
    assert_eq!(again.json(), answer.json(), "the same answer whichever path recorded it");
    stack.shutdown().await;
}

on_both_databases!(verify_of_a_recorded_paid_purchase_does_not_call_stripe);
async fn verify_of_a_recorded_paid_purchase_does_not_call_stripe(db: TestDb) {
    let stripe = FakeStripe::start().await;
    let stack = stack_with_stripe(db, &stripe).await;
    let (event, session) = paid_checkout("_recorded");
    stack.deliver(&event).await;

    let answer = verify(&stack, &session_id_of(&session)).await;

    assert_eq!(answer.json()["status"], "paid");
    assert_eq!(stripe.request_count(), 0);
    stack.shutdown().await;
}

on_both_databases!(verify_reports_what_stripe_says_of_unpaid_open_expired_and_unknown_sessions);
async fn verify_reports_what_stripe_says_of_unpaid_open_expired_and_unknown_sessions(db: TestDb) {
    let stripe = FakeStripe::start().await;
    let stack = stack_with_stripe(db, &stripe).await;
    let (_, unpaid) = paid_checkout("_unpaid");
    let unpaid = session_variant(&unpaid, "payment_status", "paid", "unpaid");
    let (_, open) = paid_checkout("_open");
    let open = session_variant(
        &session_variant(&open, "payment_status", "paid", "unpaid"),
        "status",
        "complete",
        "open",
    );
    let (_, expired) = paid_checkout("_expired");
    let expired = session_variant(
        &session_variant(&expired, "payment_status", "paid", "unpaid"),
        "status",
        "complete",
        "expired",
    );
    for session in [&unpaid, &open, &expired] {
        stripe.add_session(session.clone());
    }

    let answers = [
        verify(&stack, &session_id_of(&unpaid)).await,
        verify(&stack, &session_id_of(&open)).await,
        verify(&stack, &session_id_of(&expired)).await,
        verify(&stack, "cs_test_unknown_to_stripe").await,
    ];

    let statuses: Vec<_> = answers.iter().map(|a| (a.status, a.json()["status"].clone())).collect();
    assert_eq!(
        statuses,
        [
            (StatusCode::OK, "pending".into()),
            (StatusCode::OK, "pending".into()),
            (StatusCode::OK, "expired".into()),
            (StatusCode::NOT_FOUND, "not_found".into()),
        ]
    );
    let purchases = stack.purchases().await;
    assert_eq!(purchases.len(), 1, "only the completed, unpaid session is recorded: pending, no access");
    assert_eq!(purchases[0].status, PurchaseStatus::Pending);
    assert!(answers.iter().all(|a| a.json().get("unconfirmed").is_none()));
    stack.shutdown().await;
}

on_both_databases!(verify_answers_from_the_database_when_stripe_fails_or_times_out);
async fn verify_answers_from_the_database_when_stripe_fails_or_times_out(db: TestDb) {
    let stripe = FakeStripe::start().await;
    let options = StackOptions {
        stripe_api_base: Some(stripe.base_url()),
        stripe_timeout_ms: Some(500),
        ..Default::default()
    };
    let stack = Stack::start_with(db, options).await;
    let (_, paid) = paid_checkout("_outage");
    stripe.add_session(paid.clone());
    let pending_event = fixture("checkout_session_completed_unpaid_async.json").expect("fixture");
    stack.deliver(&pending_event).await;
    let pending_session = stack.purchases().await[0].stripe_checkout_session_id.clone();

    stripe.fail_every_request(Some(Fault::Status(500)));
    let unknown_during_500s = verify(&stack, &session_id_of(&paid)).await;
    let pending_during_500s = verify(&stack, &pending_session).await;
    stripe.fail_every_request(Some(Fault::Delay(Duration::from_secs(2))));
    let unknown_during_timeouts = verify(&stack, &session_id_of(&paid)).await;

    assert_eq!(unknown_during_500s.status, StatusCode::NOT_FOUND);
    assert_eq!(unknown_during_500s.json()["status"], "not_found");
    assert_eq!(unknown_during_500s.json()["unconfirmed"], true);
    assert_eq!(pending_during_500s.status, StatusCode::OK);
    assert_eq!(pending_during_500s.json()["status"], "pending");
    assert_eq!(pending_during_500s.json()["unconfirmed"], true);
    assert_eq!(unknown_during_timeouts.status, StatusCode::NOT_FOUND, "never a 5xx for a Stripe outage");
    assert_eq!(unknown_during_timeouts.json()["unconfirmed"], true);

    stripe.fail_every_request(None);
    let recovered = verify(&stack, &session_id_of(&paid)).await;
    assert_eq!(recovered.json()["status"], "paid");
    assert!(recovered.json().get("unconfirmed").is_none());
    stack.shutdown().await;
}

on_both_databases!(verify_retries_after_a_429_and_then_fulfils);
async fn verify_retries_after_a_429_and_then_fulfils(db: TestDb) {
    let stripe = FakeStripe::start().await;
    let stack = stack_with_stripe(db, &stripe).await;
    let (_, session) = paid_checkout("_rate_limited");
    stripe.add_session(session.clone());
    stripe.fail_next([Fault::RateLimited { retry_after_secs: 1 }]);

    let answer = verify(&stack, &session_id_of(&session)).await;

    assert_eq!(answer.json()["status"], "paid");
    assert_eq!(stripe.request_count(), 2, "one 429, then the retry");
    assert_eq!(stack.purchases().await.len(), 1);
    stack.shutdown().await;
}

on_both_databases!(webhook_and_verify_racing_fifty_times_make_one_purchase_each_time);
async fn webhook_and_verify_racing_fifty_times_make_one_purchase_each_time(db: TestDb) {
    let stripe = FakeStripe::start().await;
    let options = StackOptions {
        stripe_api_base: Some(stripe.base_url()),
        // Fifty rounds in a second or two: above STRIPE_API_MAX_RPS's default,
        // under which verify would answer unconfirmed rather than race.
        payments: Some(|settings| settings.stripe.as_mut().expect("Stripe configured").max_rps = 1_000),
        ..Default::default()
    };
    let stack = Stack::start_with(db, options).await;

    for round in 0..50 {
        let (event, session) = paid_checkout(&format!("_race{round}"));
        stripe.add_session(session.clone());
        let session_id = session_id_of(&session);

        let (webhook, verified) = tokio::join!(stack.deliver(&event), verify(&stack, &session_id));

        assert_eq!(webhook.status, StatusCode::OK, "round {round}: {:?}", webhook.body);
        assert_eq!(webhook.json()["outcome"], "processed", "round {round}");
        assert_eq!(verified.json()["status"], "paid", "round {round}");
    }

    let purchases = stack.purchases().await;
    assert_eq!(purchases.len(), 50, "exactly one purchase per session");
    let mut sessions: Vec<_> = purchases.iter().map(|p| p.stripe_checkout_session_id.clone()).collect();
    sessions.dedup();
    assert_eq!(sessions.len(), 50);
    assert_eq!(stack.event_count().await, 50, "one event row per webhook");
    stack.shutdown().await;
}

on_both_databases!(two_payments_services_sharing_a_database_record_each_session_once);
async fn two_payments_services_sharing_a_database_record_each_session_once(db: TestDb) {
    let first = ProcessStack::start(&db.url, false);
    let second = ProcessStack::start(&db.url, false);
    let events: Vec<Bytes> = (0..20).map(|i| paid_checkout(&format!("_shared{i}")).0).collect();

    for event in &events {
        let (a, b) = tokio::join!(first.deliver(event), second.deliver(event));
        assert_eq!((a.status, b.status), (StatusCode::OK, StatusCode::OK));
        let mut outcomes = [a.json()["outcome"].clone(), b.json()["outcome"].clone()];
        outcomes.sort_by_key(|o| o.to_string());
        assert_eq!(outcomes, ["duplicate", "processed"]);
    }

    let db = Database::connect(&db.url).await.expect("connect");
    let purchases =
        payments_svc::store::entities::course_purchase::Entity::find().all(&db).await.expect("query");
    assert_eq!(purchases.len(), 20);
    assert_eq!(
        purchases.iter().filter(|p| !p.needs_refund).count(),
        1,
        "one course, paid 20 times, grants access once"
    );
    let events =
        payments_svc::store::entities::stripe_webhook_event::Entity::find().all(&db).await.expect("query");
    assert_eq!(events.len(), 20);
    assert!(events.iter().all(|e| e.delivery_count == 2 && e.status == EventStatus::Processed));
}

on_both_databases!(reconcile_applies_missed_events_across_pages_once);
async fn reconcile_applies_missed_events_across_pages_once(db: TestDb) {
    let stripe = FakeStripe::start().await;
    let stack = ProcessStack::start(&db.url, false);
    let now = unix_now();
    let delivered = with_created(&paid_checkout("_delivered").0, now - 60).expect("event");
    let missed: Vec<Bytes> = (0..3)
        .map(|i| with_created(&paid_checkout(&format!("_missed{i}")).0, now - 50 + i).expect("event"))
        .collect();
    let broken =
        with_created(&fixture("checkout_session_completed_no_metadata.json").expect("fixture"), now - 40);
    let too_old = with_created(&paid_checkout("_too_old").0, now - 7200).expect("event");
    assert_eq!(stack.deliver(&delivered).await.json()["outcome"], "processed");
    for event in [&delivered, &too_old, &broken.expect("event")].into_iter().chain(&missed) {
        stripe.add_event(event.clone());
    }
    let env = [("STRIPE_SECRET_KEY", FAKE_STRIPE_KEY), ("STRIPE_API_BASE", &stripe.base_url())];
    let reconcile =
        || payments_cli(&stack.database_url, &env, &["reconcile", "--since", "1h", "--page-size", "2"]);

    let first = reconcile();
    let second = reconcile();

    for output in [&first, &second] {
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    }
    assert_eq!(
        String::from_utf8_lossy(&first.stdout).trim(),
        "seen 5, already processed 1, newly applied 3, failed 1"
    );
    assert_eq!(
        String::from_utf8_lossy(&second.stdout).trim(),
        "seen 5, already processed 4, newly applied 0, failed 1"
    );
    assert_eq!(stripe.request_count(), 6, "three pages of two, twice");
    let db = Database::connect(&db.url).await.expect("connect");
    let purchases =
        payments_svc::store::entities::course_purchase::Entity::find().all(&db).await.expect("query");
    assert_eq!(purchases.len(), 4, "the delivered one and the three missed; not the one before the window");
}

on_both_databases!(the_scheduled_sweep_applies_missed_webhooks_once_and_counts_the_drift);
async fn the_scheduled_sweep_applies_missed_webhooks_once_and_counts_the_drift(db: TestDb) {
    let stripe = FakeStripe::start().await;
    let options = StackOptions {
        stripe_api_base: Some(stripe.base_url()),
        payments: Some(|settings| settings.reconcile_interval = Some(Duration::from_millis(300))),
        ..Default::default()
    };
    let stack = Stack::start_with(db, options).await;
    let now = unix_now();
    let delivered = with_created(&paid_checkout("_sched_delivered").0, now - 60).expect("event");
    assert_eq!(stack.deliver(&delivered).await.json()["outcome"], "processed");
    stripe.add_event(delivered);
    for i in 0..2 {
        stripe.add_event(
            with_created(&paid_checkout(&format!("_sched_missed{i}")).0, now - 30).expect("event"),
        );
    }

    eventually(Duration::from_secs(20), "the sweep applies the missed events", || async {
        stack.purchases().await.len() == 3
    })
    .await;
    let after_first = stripe.request_count();
    eventually(Duration::from_secs(20), "another sweep runs", || async {
        stripe.request_count() > after_first + 1
    })
    .await;

    assert_eq!(stack.purchases().await.len(), 3, "nothing applied twice");
    assert_eq!(stack.event_count().await, 3);
    assert_eq!(metric(&stack.payments_metrics().await, "payments_reconcile_drift_total"), 2.0);
    stack.shutdown().await;
}
