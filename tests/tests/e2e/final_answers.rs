//! Every signed event gets a final answer: one the database cannot hold as
//! sent is recorded as failed (its ids cut to fit) and answered 200, without
//! failing the events delivered alongside it; a session of the other mode
//! is refused even inside an event of the right one; and a settled event's
//! row stays as it was applied, whatever is replayed.

use bytes::Bytes;
use e2e::{fixture, replace_once, unique_paid_event};
use hyper::StatusCode;
use payments_svc::store::entities::course_purchase::PurchaseStatus;
use payments_svc::store::entities::stripe_webhook_event::EventStatus;

use crate::helpers::{Stack, TestDb, on_both_databases, outcome};
use crate::processes::payments_cli;

/// The `n`th unique paid event with `from` replaced by `to` (`{n}` in
/// either standing for `n`).
fn variant(n: usize, from: &str, to: &str) -> Bytes {
    let (from, to) = (from.replace("{n}", &n.to_string()), to.replace("{n}", &n.to_string()));
    replace_once(&unique_paid_event(n).expect("event"), &from, &to).expect("variant")
}

/// Signed events that no database could store as sent, each with a way it
/// breaks the schema.
fn unstorable(first: usize) -> Vec<(Bytes, &'static str)> {
    const EVENT_ID: &str = r#""id": "evt_18X4SVyF5WUVAoCOMU35o1Gb_n{n}""#;
    const SESSION_ID: &str =
        r#""id": "cs_test_a1iolLS3ITgWKPeHk8FcCmpFOlMp4DuFLZFxmEhdm55FlhTr8srB0dB3N3_n{n}""#;
    let long = "x".repeat(3_000);
    vec![
        (variant(first, EVENT_ID, &format!(r#""id": "evt_{long}""#)), "id is 3004 bytes"),
        (variant(first + 1, EVENT_ID, r#""id": "evt_nul\u0000_{n}""#), "id contains a NUL"),
        (variant(first + 2, SESSION_ID, &format!(r#""id": "cs_test_{long}""#)), "checkout_session.id is"),
        (
            variant(first + 3, r#""currency": "usd""#, r#""currency": "usdollars""#),
            "checkout_session.currency",
        ),
    ]
}

async fn events_no_database_can_hold_are_recorded_failed_and_spoil_no_batch(db: TestDb) {
    let stack = Stack::start(db).await;
    let poison = unstorable(100);
    let good: Vec<Bytes> = (0..poison.len()).map(|n| unique_paid_event(n).expect("event")).collect();
    // Interleaved, all at once: under load they share batches.
    let mixed: Vec<Bytes> =
        good.iter().zip(&poison).flat_map(|(good, (bad, _))| [good.clone(), bad.clone()]).collect();

    let answers = stack.deliver_concurrently(&mixed).await;
    let again = stack.deliver_concurrently(&mixed).await;

    for (pair, (_, problem)) in answers.chunks(2).zip(&poison) {
        assert_eq!(outcome(&pair[0]), "processed", "the event alongside is applied");
        assert_eq!(outcome(&pair[1]), "failed", "{problem}: a final answer, not a retry");
        let detail = pair[1].json()["detail"].as_str().unwrap_or_default().to_owned();
        assert!(detail.contains(problem), "{problem}: {detail}");
    }
    assert!(again.iter().all(|a| a.status == StatusCode::OK), "a redelivery is answered the same way");
    let events = stack.events().await;
    assert_eq!(events.len(), mixed.len(), "one row per event, redeliveries recognised");
    let failed: Vec<_> = events.iter().filter(|e| e.status == EventStatus::Failed).collect();
    assert_eq!(failed.len(), poison.len());
    assert!(failed.iter().all(|e| e.event_id.len() <= 255 && !e.event_id.contains('\0')));
    assert!(failed.iter().any(|e| e.event_id.contains('…')), "cut ids are marked");
    assert_eq!(stack.purchases().await.len(), good.len(), "nothing of the failed ones applied");
    stack.shutdown().await;
}

on_both_databases!(events_no_database_can_hold_are_recorded_failed_and_spoil_no_batch);

async fn a_live_session_inside_a_test_mode_event_is_refused(db: TestDb) {
    let stack = Stack::start(db).await;
    let mut event: serde_json::Value =
        serde_json::from_slice(&unique_paid_event(1).expect("event")).expect("JSON");
    event["data"]["object"]["livemode"] = serde_json::Value::Bool(true);
    let body = Bytes::from(serde_json::to_vec(&event).expect("JSON"));

    let answer = stack.deliver(&body).await;

    assert_eq!(outcome(&answer), "failed");
    assert!(answer.json()["detail"].as_str().is_some_and(|d| d.contains("live")), "{:?}", answer.json());
    assert!(stack.purchases().await.is_empty());
    stack.shutdown().await;
}

on_both_databases!(a_live_session_inside_a_test_mode_event_is_refused);

async fn replaying_a_processed_event_under_another_policy_changes_nothing(db: TestDb) {
    let stack = Stack::start(db).await;
    let paid = unique_paid_event(1).expect("event");
    assert_eq!(outcome(&stack.deliver(&paid).await), "processed");
    let event_id = stack.events().await[0].event_id.clone();

    let output =
        payments_cli(stack.database_url(), &[("STRIPE_LIVEMODE", "true")], &["events", "replay", &event_id]);

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(&format!("{event_id}: processed -> processed")), "{stdout}");
    assert_eq!(stack.events().await[0].status, EventStatus::Processed);
    assert_eq!(stack.purchases().await[0].status, PurchaseStatus::Paid);
    stack.shutdown().await;
}

on_both_databases!(replaying_a_processed_event_under_another_policy_changes_nothing);

async fn a_conflicting_redelivery_is_recorded_and_the_row_describes_the_applied_body(db: TestDb) {
    let stack = Stack::start(db).await;
    let broken = fixture("checkout_session_completed_no_metadata.json").expect("fixture");
    let id = serde_json::from_slice::<serde_json::Value>(&broken).expect("JSON")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    let paid = fixture("checkout_session_completed_paid.json").expect("fixture");
    let paid_id = serde_json::from_slice::<serde_json::Value>(&paid).expect("JSON")["id"]
        .as_str()
        .expect("id")
        .to_owned();
    // The same event id, now with a body that can be applied, then a third.
    let fixed =
        replace_once(&paid, &format!(r#""id": "{paid_id}""#), &format!(r#""id": "{id}""#)).expect("variant");
    let third = replace_once(&fixed, r#""amount_total": 4900"#, r#""amount_total": 1"#).expect("variant");

    assert_eq!(outcome(&stack.deliver(&broken).await), "failed");
    assert_eq!(outcome(&stack.deliver(&fixed).await), "processed", "a failed event is applied again");
    let after_fix = stack.events().await;
    assert_eq!(outcome(&stack.deliver(&third).await), "duplicate");
    let after_third = stack.events().await;

    assert_eq!(after_fix.len(), 1);
    let row = &after_fix[0];
    assert_eq!(row.payload.as_bytes(), &fixed[..], "the row holds the body that was applied");
    assert_eq!(row.checkout_session_id, Some(stack.purchases().await[0].stripe_checkout_session_id.clone()));
    assert_eq!(
        row.conflicting_payload.as_deref().map(str::as_bytes),
        Some(&broken[..]),
        "the replaced body is kept"
    );
    let row = &after_third[0];
    assert_eq!(row.payload.as_bytes(), &fixed[..], "a settled event keeps its body");
    assert_eq!(
        row.conflicting_payload.as_deref().map(str::as_bytes),
        Some(&third[..]),
        "the one not applied is kept"
    );
    assert_eq!(stack.purchases().await[0].amount_total, Some(4900));
    let shown = payments_cli(stack.database_url(), &[], &["events", "show", &id]);
    assert!(String::from_utf8_lossy(&shown.stdout).contains("conflicting payload"), "the operator sees both");
    stack.shutdown().await;
}

on_both_databases!(a_conflicting_redelivery_is_recorded_and_the_row_describes_the_applied_body);
