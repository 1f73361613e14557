//! Money that goes back takes access back: refunds, failed refunds and
//! disputes, each scenario delivered in every ordering of its events
//! (the checkout included, so reversals also arrive before their purchase),
//! every event twice (once more, concurrently, through group commit), and a
//! second Event object for one change.

use bytes::Bytes;
use e2e::fixture;
use hyper::StatusCode;
use payments_domain::reversals::DisputeAccess;
use payments_proto::v1::{
    PurchaseStatus, UserCourse, VerifyPurchaseRequest, verify_purchase_request::Lookup,
};
use sea_orm::ConnectionTrait;

use crate::feed;
use crate::helpers::{Stack, StackOptions, TestDb, on_both_databases};
use crate::processes::payments_cli;

const CHECKOUT: &str = "checkout_session_completed_paid.json";
const REFUND_CREATED: &str = "refund_created_full.json";
const REFUND_FAILED: &str = "refund_failed.json";
const CHARGE_REFUNDED: &str = "charge_refunded_full.json";
const CHARGE_PARTIAL: &str = "charge_refunded_partial.json";
const DISPUTE_CREATED: &str = "charge_dispute_created.json";
const DISPUTE_WITHDRAWN: &str = "charge_dispute_funds_withdrawn.json";
const DISPUTE_WON: &str = "charge_dispute_closed_won.json";
const DISPUTE_LOST: &str = "charge_dispute_closed_lost.json";

/// The ids the fixtures share: the paid session, its payment and charge,
/// the refund and the dispute of it, and the buyer.
const SHARED_IDS: &[&str] = &[
    "pi_3chHPNw84sPSl7cwMX3oOFxK",
    "ch_3mTPAJRlM3fKnuH7GJoyVXb3",
    "re_3RfD8kLq2VxN0pAa1s0Fe7Gh",
    "dp_3RfD8kLq2VxN0pAa1dP0aB1",
    "76579e2b-1d72-48ed-99f9-d14b4496249a",
];

fn json_of(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body).expect("fixture is JSON")
}

/// Fixture `name` for a payment of its own: every shared id, the event id
/// and the session id get `suffix`, so scenarios can share one database.
pub(crate) fn variant(name: &str, suffix: &str) -> Bytes {
    let body = fixture(name).expect("fixture");
    let parsed = json_of(&body);
    let mut ids: Vec<String> = SHARED_IDS.iter().map(|id| (*id).to_owned()).collect();
    ids.push(parsed["id"].as_str().expect("event id").to_owned());
    if let Some(session) = parsed["data"]["object"]["id"].as_str().filter(|id| id.starts_with("cs_")) {
        ids.push(session.to_owned());
    }
    let mut text = String::from_utf8(body.to_vec()).expect("UTF-8");
    for id in ids {
        text = text.replace(&format!("\"{id}\""), &format!("\"{id}{suffix}\""));
    }
    Bytes::from(text)
}

/// The same change reported by a second Event object: only the event id
/// differs.
fn second_event_object(body: &Bytes) -> Bytes {
    let id = json_of(body)["id"].as_str().expect("event id").to_owned();
    let text = String::from_utf8(body.to_vec()).expect("UTF-8");
    Bytes::from(text.replacen(&format!("\"{id}\""), &format!("\"{id}_again\""), 1))
}

fn orderings(items: &[&'static str]) -> Vec<Vec<&'static str>> {
    if items.len() <= 1 {
        return vec![items.to_vec()];
    }
    let mut all = Vec::new();
    for (at, first) in items.iter().enumerate() {
        let rest: Vec<&'static str> =
            items.iter().enumerate().filter(|(i, _)| *i != at).map(|(_, n)| *n).collect();
        for mut tail in orderings(&rest) {
            tail.insert(0, first);
            all.push(tail);
        }
    }
    all
}

/// What the verify route and `VerifyPurchase` should say once a scenario's
/// events are all in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Expected {
    status: &'static str,
    has_access: bool,
    amount_refunded: i64,
}

/// Delivers `events` (with the paid checkout) in every ordering, each
/// ordering on a payment of its own: one by one, then all again at once,
/// plus a second Event object for the first reversal. Each ends as
/// `expected`.
async fn every_ordering_ends_as(stack: &Stack, scenario: &str, events: &[&'static str], expected: Expected) {
    let all: Vec<&'static str> = std::iter::once(CHECKOUT).chain(events.iter().copied()).collect();
    for (n, order) in orderings(&all).into_iter().enumerate() {
        let suffix = format!("_{scenario}{n}");
        let bodies: Vec<Bytes> = order.iter().map(|name| variant(name, &suffix)).collect();
        for body in &bodies {
            let answer = stack.deliver(body).await;
            assert_eq!(answer.status, StatusCode::OK, "{scenario} {order:?}: {:?}", answer.body);
            assert_eq!(answer.json()["outcome"], "processed", "{scenario} {order:?}: {:?}", answer.body);
        }
        let published = stack.changes().await.len();
        let mut again = bodies.clone();
        again.push(second_event_object(&variant(events[0], &suffix)));
        for answer in stack.deliver_concurrently(&again).await {
            assert_eq!(answer.status, StatusCode::OK, "{scenario} {order:?}: {:?}", answer.body);
        }
        let context = format!("{scenario} {order:?}");
        assert_eq!(stack.changes().await.len(), published, "{context}: redeliveries published changes");
        assert_answers(stack, &suffix, expected, &context).await;
        let session = session_of(&suffix);
        let last = feed::assert_each_change_is_a_change(stack, &session, &context).await;
        let published = (last.status.as_str(), last.has_access, last.amount_refunded);
        let expected = (expected.status, expected.has_access, expected.amount_refunded);
        assert_eq!(published, expected, "{context}: the feed's last word");
    }
}

fn session_of(suffix: &str) -> String {
    json_of(&variant(CHECKOUT, suffix))["data"]["object"]["id"].as_str().expect("session").to_owned()
}

async fn assert_answers(stack: &Stack, suffix: &str, expected: Expected, context: &str) {
    let session =
        json_of(&variant(CHECKOUT, suffix))["data"]["object"]["id"].as_str().expect("session").to_owned();
    let verified = stack.get(&format!("/api/payments/verify?session_id={session}")).await.json();
    let seen = Expected {
        status: match verified["status"].as_str() {
            Some(status) => PurchaseStatus::from_name(status).as_str(),
            None => "missing",
        },
        has_access: verified["hasAccess"] == true,
        amount_refunded: verified["amountRefunded"].as_i64().unwrap_or(-1),
    };
    assert_eq!(seen, expected, "{context}: {verified}");

    let course = json_of(&variant(CHECKOUT, suffix))["data"]["object"]["metadata"]["courseId"]
        .as_str()
        .expect("course")
        .to_owned();
    let user_course =
        UserCourse { user_id: format!("76579e2b-1d72-48ed-99f9-d14b4496249a{suffix}"), course_id: course };
    let request = VerifyPurchaseRequest { lookup: Some(Lookup::UserCourse(user_course)) };
    let answer = stack.grpc().await.verify_purchase(request).await.expect("VerifyPurchase").into_inner();
    let purchase = answer.purchase.clone().expect("a purchase");
    assert_eq!(answer.status().as_str(), expected.status, "{context}: {answer:?}");
    assert_eq!(
        (purchase.has_access, purchase.amount_refunded),
        (expected.has_access, expected.amount_refunded)
    );
}

const PAID: Expected = Expected { status: "paid", has_access: true, amount_refunded: 0 };

on_both_databases!(refunds_in_any_order_take_access_back_and_a_failed_refund_gives_it_back);
async fn refunds_in_any_order_take_access_back_and_a_failed_refund_gives_it_back(db: TestDb) {
    let stack = Stack::start(db).await;

    let refunded = Expected { status: "refunded", has_access: false, amount_refunded: 4900 };
    every_ordering_ends_as(&stack, "full", &[REFUND_CREATED, CHARGE_REFUNDED], refunded).await;
    every_ordering_ends_as(&stack, "failed", &[REFUND_CREATED, REFUND_FAILED, CHARGE_REFUNDED], PAID).await;
    let partial = Expected { amount_refunded: 1000, ..PAID };
    every_ordering_ends_as(&stack, "partial", &[CHARGE_PARTIAL], partial).await;
    stack.shutdown().await;
}

on_both_databases!(disputes_in_any_order_suspend_access_restore_it_when_won_and_revoke_it_when_lost);
async fn disputes_in_any_order_suspend_access_restore_it_when_won_and_revoke_it_when_lost(db: TestDb) {
    let stack = Stack::start(db).await;

    let disputed = Expected { status: "disputed", has_access: false, amount_refunded: 0 };
    every_ordering_ends_as(&stack, "open", &[DISPUTE_CREATED, DISPUTE_WITHDRAWN], disputed).await;
    every_ordering_ends_as(&stack, "won", &[DISPUTE_CREATED, DISPUTE_WITHDRAWN, DISPUTE_WON], PAID).await;
    let revoked = Expected { status: "revoked", has_access: false, amount_refunded: 0 };
    every_ordering_ends_as(&stack, "lost", &[DISPUTE_CREATED, DISPUTE_LOST, DISPUTE_WON], revoked).await;
    stack.shutdown().await;
}

on_both_databases!(with_dispute_access_kept_an_open_dispute_leaves_the_course);
async fn with_dispute_access_kept_an_open_dispute_leaves_the_course(db: TestDb) {
    let options = StackOptions {
        payments: Some(|settings| settings.policy.dispute_access = DisputeAccess::Keep),
        ..Default::default()
    };
    let stack = Stack::start_with(db, options).await;

    let disputed_kept = Expected { status: "disputed", has_access: true, amount_refunded: 0 };
    every_ordering_ends_as(&stack, "kept", &[DISPUTE_CREATED], disputed_kept).await;
    let revoked = Expected { status: "revoked", has_access: false, amount_refunded: 0 };
    every_ordering_ends_as(&stack, "keptlost", &[DISPUTE_LOST], revoked).await;
    stack.shutdown().await;
}

on_both_databases!(a_reversal_of_no_known_purchase_is_kept_listed_and_counted_once_the_purchase_appears);
async fn a_reversal_of_no_known_purchase_is_kept_listed_and_counted_once_the_purchase_appears(db: TestDb) {
    let url = db.url.clone();
    let stack = Stack::start(db).await;
    let refund = variant(REFUND_CREATED, "_early");

    let answer = stack.deliver(&refund).await;
    let listed = payments_cli(&url, &[], &["reversals", "unmatched"]);
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    stack.deliver(&variant(CHECKOUT, "_early")).await;
    let after = payments_cli(&url, &[], &["reversals", "unmatched"]);
    let after = String::from_utf8_lossy(&after.stdout).into_owned();

    assert_eq!((answer.status, answer.json()["outcome"].clone()), (StatusCode::OK, "processed".into()));
    assert!(
        listed.contains("re_3RfD8kLq2VxN0pAa1s0Fe7Gh_early") && listed.contains("(1 unmatched reversals)"),
        "{listed}"
    );
    assert!(after.contains("(0 unmatched reversals)"), "{after}");
    let refunded = Expected { status: "refunded", has_access: false, amount_refunded: 4900 };
    assert_answers(&stack, "_early", refunded, "refund before its checkout").await;
    stack.shutdown().await;
}

on_both_databases!(a_purchase_timeline_shows_every_event_that_touched_it_in_arrival_order);
async fn a_purchase_timeline_shows_every_event_that_touched_it_in_arrival_order(db: TestDb) {
    let url = db.url.clone();
    let stack = Stack::start(db).await;
    let suffix = "_timeline";
    let refund = variant(REFUND_CREATED, suffix);
    let order = [
        refund.clone(),
        variant(CHECKOUT, suffix),
        second_event_object(&refund),
        variant(REFUND_FAILED, suffix),
    ];
    for body in &order {
        assert_eq!(stack.deliver(body).await.status, StatusCode::OK);
    }
    let unrelated = variant(CHECKOUT, "_other");
    stack.deliver(&unrelated).await;
    let session = json_of(&order[1])["data"]["object"]["id"].as_str().expect("session").to_owned();

    let by_session = payments_cli(&url, &[], &["purchases", "show", &session]);
    let by_payment =
        payments_cli(&url, &[], &["purchases", "show", &format!("pi_3chHPNw84sPSl7cwMX3oOFxK{suffix}")]);
    let shown = String::from_utf8_lossy(&by_session.stdout).into_owned();

    assert!(by_session.status.success(), "{}", String::from_utf8_lossy(&by_session.stderr));
    assert_eq!(shown, String::from_utf8_lossy(&by_payment.stdout), "the same purchase by either id");
    assert!(shown.contains("status:       paid (access: yes)"), "{shown}");
    let positions: Vec<usize> = order
        .iter()
        .map(|body| {
            let id = json_of(body)["id"].as_str().expect("id").to_owned();
            shown.find(&format!("{id} ")).unwrap_or_else(|| panic!("{id} missing from\n{shown}"))
        })
        .collect();
    assert!(positions.windows(2).all(|pair| pair[0] < pair[1]), "not in arrival order:\n{shown}");
    assert!(shown.contains("refund re_3RfD8kLq2VxN0pAa1s0Fe7Gh_timeline succeeded 4900 usd"), "{shown}");
    assert!(shown.contains("refund re_3RfD8kLq2VxN0pAa1s0Fe7Gh_timeline failed 4900 usd"), "{shown}");
    assert!(shown.contains("checkout: paid"), "{shown}");
    assert!(shown.contains("(4 events)"), "the other purchase's event is not listed:\n{shown}");
    stack.shutdown().await;
}

on_both_databases!(refund_events_stored_before_they_named_their_payment_are_found_after_the_migration);
async fn refund_events_stored_before_they_named_their_payment_are_found_after_the_migration(db: TestDb) {
    use migration::MigratorTrait;
    let url = db.url.clone();
    let stack = Stack::start(db).await;
    let suffix = "_legacy";
    let refund = variant(REFUND_CREATED, suffix);
    let charge = variant(CHARGE_REFUNDED, suffix);
    for body in [variant(CHECKOUT, suffix), refund.clone(), second_event_object(&refund), charge.clone()] {
        assert_eq!(stack.deliver(&body).await.status, StatusCode::OK);
    }
    let named =
        "SELECT COUNT(*) AS n FROM stripe_webhook_events WHERE reversed_payment_intent_id IS NOT NULL";
    let count = |sql: String| {
        let db = stack.db.clone();
        async move {
            let row = db
                .query_one_raw(sea_orm::Statement::from_string(db.get_database_backend(), sql))
                .await
                .expect("counts")
                .expect("a row");
            row.try_get::<i64>("", "n").expect("n")
        }
    };
    let written = count(named.to_owned()).await;
    // Back to the schema before the columns, and forward again: the
    // migration fills them in from the stored payloads.
    migration::Migrator::down(&stack.db, Some(1)).await.expect("down");
    migration::Migrator::up(&stack.db, None).await.expect("up");
    let filled = count(named.to_owned()).await;
    let session =
        json_of(&variant(CHECKOUT, suffix))["data"]["object"]["id"].as_str().expect("id").to_owned();
    let shown = payments_cli(&url, &[], &["purchases", "show", &session]);
    let shown = String::from_utf8_lossy(&shown.stdout).into_owned();

    assert_eq!(written, 3, "each refund event names its payment as it is written");
    assert_eq!(filled, 3, "and the migration names it from the payload");
    let charge_id = json_of(&charge)["data"]["object"]["id"].as_str().expect("charge").to_owned();
    let by_charge =
        format!("SELECT COUNT(*) AS n FROM stripe_webhook_events WHERE reversed_charge_id = '{charge_id}'");
    assert_eq!(count(by_charge).await, 3, "a charge names itself, a refund its charge");
    for body in [&refund, &second_event_object(&refund), &charge] {
        let id = json_of(body)["id"].as_str().expect("id").to_owned();
        assert!(shown.contains(&format!("{id} ")), "{id} missing from\n{shown}");
    }
    stack.shutdown().await;
}

on_both_databases!(a_session_stripe_still_reports_paid_stays_refunded_when_verify_records_it);
async fn a_session_stripe_still_reports_paid_stays_refunded_when_verify_records_it(db: TestDb) {
    let stripe = crate::fake_stripe::FakeStripe::start().await;
    stripe.add_session(fixture("checkout_session.object.json").expect("fixture"));
    let options = StackOptions { stripe_api_base: Some(stripe.base_url()), ..Default::default() };
    let stack = Stack::start_with(db, options).await;
    for name in [REFUND_CREATED, CHARGE_REFUNDED] {
        assert_eq!(stack.deliver(&fixture(name).expect("fixture")).await.status, StatusCode::OK);
    }
    let session = json_of(&fixture(CHECKOUT).expect("fixture"))["data"]["object"]["id"]
        .as_str()
        .expect("id")
        .to_owned();

    let first = stack.get(&format!("/api/payments/verify?session_id={session}")).await.json();
    let again = stack.get(&format!("/api/payments/verify?session_id={session}")).await.json();

    let purchases = stack.purchases().await;
    assert_eq!(purchases.len(), 1, "verify recorded the purchase from Stripe");
    assert_eq!(purchases[0].source, payments_svc::store::entities::course_purchase::PurchaseSource::Verify);
    for answer in [first, again] {
        assert_eq!(
            (answer["status"].as_str(), answer["hasAccess"].as_bool()),
            (Some("refunded"), Some(false)),
            "{answer}"
        );
    }
    stack.shutdown().await;
}
