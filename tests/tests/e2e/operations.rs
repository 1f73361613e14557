//! What operators rely on, through the real binaries: one structured log
//! line per webhook, a distinct warning per reason an event is not applied,
//! the `payments-svc events` commands to see and replay failures, and the
//! retention of stored payloads.

use std::time::Duration;

use e2e::{fixture, unix_now};
use hyper::StatusCode;
use payments_svc::store::entities::stripe_webhook_event::{self, EventStatus};
use sea_orm::sea_query::Expr;
use sea_orm::{ColumnTrait, ConnectionTrait, EntityTrait, QueryFilter};
use webhook_gateway::signature::{WebhookSecret, sign};

use crate::helpers::{Stack, StackOptions, TEST_SECRET, TestDb, eventually, metric, on_both_databases};
use crate::processes::{ProcessStack, payments_cli};

const PAID: &str = "checkout_session_completed_paid.json";
const NO_METADATA: &str = "checkout_session_completed_no_metadata.json";

fn event_id_of(body: &[u8]) -> String {
    let event: serde_json::Value = serde_json::from_slice(body).expect("JSON");
    event["id"].as_str().expect("id").to_owned()
}

on_both_databases!(each_webhook_logs_one_structured_line_and_each_refusal_a_distinct_warning);
async fn each_webhook_logs_one_structured_line_and_each_refusal_a_distinct_warning(db: TestDb) {
    let mut stack = ProcessStack::start(&db.url, false);
    let paid = fixture(PAID).expect("fixture");
    let other_secret = WebhookSecret::new("whsec_not_ours").expect("secret");

    stack.deliver(&paid).await;
    let mismatched = sign(&other_secret, unix_now(), &paid);
    stack.deliver_with(paid.clone(), Some(&mismatched)).await;
    stack.deliver_with(paid.clone(), Some(&sign(&other_secret, unix_now() - 3600, &paid))).await;
    stack.deliver_with(paid.clone(), None).await;
    let charge = fixture("charge_succeeded.json").expect("fixture");
    stack.deliver(&charge).await;
    let no_metadata = fixture(NO_METADATA).expect("fixture");
    stack.deliver(&no_metadata).await;

    let paid_id = event_id_of(&paid);
    let handled = stack.gateway.wait_for_log("webhook handled", |l| l["event_id"] == paid_id.as_str());
    assert_eq!(handled["event_type"], "checkout.session.completed");
    assert!(handled["session_id"].as_str().is_some_and(|s| s.starts_with("cs_test_")), "{handled}");
    assert_eq!(handled["outcome"], "processed");
    assert!(handled["latency_ms"].as_f64().is_some(), "{handled}");
    let latency = handled["latency_ms"].to_string();
    let decimals = latency.split_once('.').map_or(0, |(_, fraction)| fraction.len());
    assert!(decimals <= 3, "latency logged to the microsecond at most: {latency}");

    let v1 = mismatched.split_once("v1=").map(|(_, v1)| &v1[..16]).expect("v1");
    for reason in ["signature_mismatch", "stale_timestamp", "missing_signature"] {
        let warning = stack.gateway.wait_for_log("webhook signature rejected", |l| l["reason"] == reason);
        assert!(!warning.to_string().contains(v1), "no signature in the log: {warning}");
        assert_eq!(warning["level"], "WARN", "{warning}");
        assert_eq!(warning["peer"], "127.0.0.1", "who sent it: {warning}");
        assert_eq!(warning["body_bytes"].as_u64(), Some(paid.len() as u64), "{warning}");
        if reason == "signature_mismatch" {
            let header_bytes = Some(mismatched.len() as u64);
            assert_eq!(warning["signature_header_bytes"].as_u64(), header_bytes, "{warning}");
        }
    }
    assert!(!stack.gateway.all_logs().contains(v1), "nor in any other line");

    let charge_id = event_id_of(&charge);
    let unhandled = stack
        .payments
        .wait_for_log("unhandled event type; recorded as ignored", |l| l["event_id"] == charge_id.as_str());
    assert_eq!(unhandled["level"], "WARN");
    assert_eq!(unhandled["event_type"], "charge.succeeded");

    let no_metadata_id = event_id_of(&no_metadata);
    let invalid = stack.payments.wait_for_log("checkout session metadata invalid; recorded as failed", |l| {
        l["event_id"] == no_metadata_id.as_str()
    });
    assert_eq!(invalid["level"], "WARN");
    assert_eq!(invalid["problem"], "metadata.courseId is missing; metadata.userId is missing");
    assert!(invalid["session_id"].as_str().is_some_and(|s| s.starts_with("cs_")), "{invalid}");

    let everything = format!("{}\n{}", stack.gateway.all_logs(), stack.payments.all_logs());
    assert!(!everything.contains(TEST_SECRET), "the signing secret never appears in logs");
    assert!(!everything.contains("whsec_not_ours"));
}

on_both_databases!(operators_list_show_and_replay_failed_events);
async fn operators_list_show_and_replay_failed_events(db: TestDb) {
    let stack = ProcessStack::start(&db.url, false);
    let paid = fixture(PAID).expect("fixture");
    let no_metadata = fixture(NO_METADATA).expect("fixture");
    assert_eq!(stack.deliver(&paid).await.status, StatusCode::OK);
    assert_eq!(stack.deliver(&no_metadata).await.json()["outcome"], "failed");
    let (paid_id, failed_id) = (event_id_of(&paid), event_id_of(&no_metadata));
    let cli = |args: &[&str]| {
        let output = payments_cli(&stack.database_url, &[], args);
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("UTF-8")
    };

    let failed_list = cli(&["events", "list", "--status", "failed"]);
    assert!(failed_list.contains(&failed_id) && !failed_list.contains(&paid_id), "{failed_list}");
    assert!(failed_list.contains("metadata.courseId is missing"), "{failed_list}");
    assert!(failed_list.contains("(1 events)"), "{failed_list}");
    let all = cli(&["events", "list", "--type", "checkout.session.completed", "--since", "1h"]);
    assert!(all.contains(&failed_id) && all.contains(&paid_id), "{all}");

    let shown = cli(&["events", "show", &failed_id]);
    assert!(shown.contains("status:         failed"), "{shown}");
    assert!(shown.contains(r#""code":"invalid_metadata""#), "{shown}");
    assert!(shown.contains("deliveries:     1"), "{shown}");
    assert!(
        shown.contains(std::str::from_utf8(&no_metadata).expect("UTF-8")),
        "the stored payload, byte for byte"
    );

    let replayed_failure = cli(&["events", "replay", &failed_id]);
    assert!(replayed_failure.contains(&format!("{failed_id}: failed -> failed")), "{replayed_failure}");
    assert!(replayed_failure.contains("purchase cs_test_"), "{replayed_failure}");
    assert!(replayed_failure.contains("unchanged, none"), "{replayed_failure}");
    assert!(
        replayed_failure.contains("metadata.courseId is missing; metadata.userId is missing"),
        "{replayed_failure}"
    );

    let replayed_processed = cli(&["events", "replay", &paid_id]);
    assert!(
        replayed_processed.contains(&format!("{paid_id}: processed -> processed")),
        "{replayed_processed}"
    );
    assert!(replayed_processed.contains("unchanged, paid"), "{replayed_processed}");

    let missing = payments_cli(&stack.database_url, &[], &["events", "show", "evt_does_not_exist"]);
    assert!(!missing.status.success());
    assert!(String::from_utf8_lossy(&missing.stderr).contains("no event evt_does_not_exist"));
}

on_both_databases!(events_show_prints_when_every_event_was_created_even_beyond_the_calendar);
async fn events_show_prints_when_every_event_was_created_even_beyond_the_calendar(db: TestDb) {
    let stack = Stack::start(db).await;
    let paid = fixture(PAID).expect("fixture");
    for (n, created) in [(0, i64::MAX), (1, i64::MIN), (2, 1_764_000_000)] {
        let body = e2e::with_fresh_ids(&paid, &format!("_created{n}")).expect("fresh ids");
        let body = e2e::with_created(&body, created).expect("created");
        assert_eq!(stack.deliver(&body).await.status, StatusCode::OK);
        let shown = payments_cli(stack.database_url(), &[], &["events", "show", &event_id_of(&body)]);
        let printed = String::from_utf8_lossy(&shown.stdout);
        let line = printed.lines().find(|line| line.starts_with("created:")).expect("a created line");
        assert!(line.contains(&created.to_string()), "{created}: {line}");
        if created == 1_764_000_000 {
            assert!(line.contains("2025-11-24T16:00:00Z"), "{line}");
        }
    }
    stack.shutdown().await;
}

on_both_databases!(operator_commands_never_create_a_database_and_say_what_to_do_when_it_is_not_there);
async fn operator_commands_never_create_a_database_and_say_what_to_do_when_it_is_not_there(db: TestDb) {
    // The database of `db` exists (PostgreSQL) or not (SQLite), but no
    // migration has run on it.
    let not_migrated = payments_cli(&db.url, &[], &["events", "list"]);
    // No DATABASE_URL, from a folder without the service's database.
    let folder = tempfile::tempdir().expect("temporary directory");
    let nowhere = std::process::Command::new(crate::processes::binary("payments-svc"))
        .args(["purchases", "list"])
        .env_remove("DATABASE_URL")
        .current_dir(folder.path())
        .output()
        .expect("payments-svc runs");

    let said = String::from_utf8_lossy(&not_migrated.stderr);
    assert!(!not_migrated.status.success(), "{said}");
    let shown_url = db.url.split_once('?').map_or(db.url.as_str(), |(url, _)| url);
    assert!(said.contains(shown_url), "names the database: {said}");
    assert!(
        said.contains("Set DATABASE_URL") || said.contains("Start payments-svc on it once"),
        "says what to do: {said}"
    );
    assert!(!said.contains("no such table"), "{said}");
    let said = String::from_utf8_lossy(&nowhere.stderr);
    assert!(!nowhere.status.success(), "{said}");
    assert!(said.contains("sqlite://payments.db") && said.contains("Set DATABASE_URL"), "{said}");
    let left: Vec<_> = std::fs::read_dir(folder.path()).expect("folder").collect();
    assert!(left.is_empty(), "nothing created: {left:?}");
    if db.url.starts_with("sqlite:") {
        let path = db.url.trim_start_matches("sqlite://").split('?').next().expect("path").to_owned();
        assert!(!std::path::Path::new(&path).exists(), "no file created at {path}");
    }

    // The service itself still creates (and migrates) the embedded file,
    // after which the same command works.
    let stack = Stack::start(db).await;
    let listed = payments_cli(stack.database_url(), &[], &["events", "list"]);
    assert!(listed.status.success(), "{}", String::from_utf8_lossy(&listed.stderr));
    stack.shutdown().await;
}

on_both_databases!(replaying_failed_events_after_fixing_the_setting_records_the_purchases);
async fn replaying_failed_events_after_fixing_the_setting_records_the_purchases(db: TestDb) {
    let live_stack = ProcessStack::start(&db.url, true);
    let paid = fixture(PAID).expect("fixture");
    assert_eq!(live_stack.deliver(&paid).await.json()["outcome"], "failed");
    drop(live_stack);

    let output = payments_cli(&db.url, &[("STRIPE_LIVEMODE", "false")], &["events", "replay", "--failed"]);

    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(&format!("{}: failed -> processed", event_id_of(&paid))), "{stdout}");
    assert!(stdout.contains("none -> paid"), "{stdout}");
    assert!(stdout.contains("replayed 1 events; 0 still failed"), "{stdout}");

    let again = payments_cli(&db.url, &[("STRIPE_LIVEMODE", "false")], &["events", "replay", "--failed"]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("replayed 0 events"), "idempotent");
}

on_both_databases!(bulk_replay_takes_filters_says_what_it_would_do_and_sums_up_by_reason);
async fn bulk_replay_takes_filters_says_what_it_would_do_and_sums_up_by_reason(db: TestDb) {
    let before_any = chrono::Utc::now().to_rfc3339();
    let live_stack = ProcessStack::start(&db.url, true);
    let bodies = [PAID, NO_METADATA, "checkout_session_async_payment_succeeded.json"]
        .map(|name| fixture(name).expect("fixture"));
    for body in &bodies {
        assert_eq!(
            live_stack.deliver(body).await.json()["outcome"],
            "failed",
            "test-mode events, live service"
        );
    }
    drop(live_stack);
    let cli = |args: &[&str]| {
        let output = payments_cli(&db.url, &[("STRIPE_LIVEMODE", "false")], args);
        assert!(output.status.success(), "{args:?}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).expect("UTF-8")
    };

    let dry = cli(&["events", "replay", "--failed", "--dry-run"]);
    let listed_again = cli(&["events", "list", "--status", "failed"]);
    let by_type =
        cli(&["events", "replay", "--failed", "--type", "checkout.session.async_payment_succeeded"]);
    let too_early = cli(&["events", "replay", "--failed", "--until", &before_any]);
    let rest = cli(&["events", "replay", "--failed", "--since", "1h"]);

    assert!(dry.contains("would replay 3 events; nothing changed"), "{dry}");
    assert!(dry.contains("failing by reason: livemode_mismatch 3"), "{dry}");
    assert!(listed_again.contains("(3 events)"), "the dry run changed nothing: {listed_again}");
    assert!(by_type.contains("replayed 1 events; 0 still failed; 1 applied"), "{by_type}");
    assert!(by_type.contains(&event_id_of(&bodies[2])), "{by_type}");
    assert!(too_early.contains("replayed 0 events"), "{too_early}");
    assert!(rest.contains("replayed 2 events; 1 still failed; 1 applied"), "{rest}");
    assert!(rest.contains("failing by reason: invalid_metadata 1"), "{rest}");
}

on_both_databases!(settled_events_lose_their_payloads_after_retention_and_stay_duplicates);
async fn settled_events_lose_their_payloads_after_retention_and_stay_duplicates(db: TestDb) {
    let mut stack = Stack::start(db).await;
    let [paid, broken, other] =
        [PAID, NO_METADATA, "charge_succeeded.json"].map(|name| fixture(name).expect("fixture"));
    for (body, outcome) in [(&paid, "processed"), (&broken, "failed"), (&other, "ignored")] {
        assert_eq!(stack.deliver(body).await.json()["outcome"], outcome);
    }
    let long_ago = chrono::Utc::now() - chrono::Duration::days(100);
    stripe_webhook_event::Entity::update_many()
        .col_expr(stripe_webhook_event::Column::ReceivedAt, Expr::value(long_ago))
        .exec(&stack.db)
        .await
        .expect("aged");
    // Received long ago means before any retention pass, too.
    stack.db.execute_unprepared("DELETE FROM retention_marks").await.expect("marks forgotten");
    let database_url = stack.database_url().to_owned();
    let cli = |args: &[&str]| payments_cli(&database_url, &[], args);

    let dry = cli(&["events", "prune", "--dry-run"]);
    let untouched = stack.events().await.iter().all(|e| !e.payload.is_empty());
    stack.restart_payments_svc(StackOptions::default()).await;
    eventually(Duration::from_secs(10), "payments-svc prunes at start-up by itself", || async {
        metric(&stack.payments_metrics().await, "payments_events_pruned_total") == 2.0
    })
    .await;
    let again = cli(&["events", "prune"]);
    let redelivered = stack.deliver(&paid).await;
    let shown = cli(&["events", "show", &event_id_of(&paid)]);
    let too_short =
        payments_cli(stack.database_url(), &[("WEBHOOK_EVENTS_RETENTION_DAYS", "7")], &["events", "prune"]);

    assert!(String::from_utf8_lossy(&dry.stdout).contains("would drop the payloads of 2 "), "{dry:?}");
    assert!(untouched, "a dry run changes nothing");
    assert!(String::from_utf8_lossy(&again.stdout).contains("dropped the payloads of 0 "), "{again:?}");
    let events = stack.events().await;
    assert_eq!(events.len(), 3, "the rows stay");
    for event in &events {
        let kept = event.status == EventStatus::Failed;
        assert_eq!(
            !event.payload.is_empty(),
            kept,
            "{}: only the unresolved failure keeps its payload",
            event.event_id
        );
        assert!(event.conflicting_payload.is_none());
    }
    assert_eq!(redelivered.json()["outcome"], "duplicate", "a late redelivery is still recognised");
    assert!(String::from_utf8_lossy(&shown.stdout).contains("dropped after WEBHOOK_EVENTS_RETENTION_DAYS"));
    assert!(!too_short.status.success());
    assert!(String::from_utf8_lossy(&too_short.stderr).contains("not in 30.."), "{too_short:?}");

    // Passes start where the last one left off, but never past a failure
    // still waiting: resolved later (as a replay under a fixed rule would),
    // the next pass reaches it; so does an event settled since.
    stripe_webhook_event::Entity::update_many()
        .col_expr(stripe_webhook_event::Column::Status, Expr::value(EventStatus::Processed.as_str()))
        .filter(stripe_webhook_event::Column::Status.eq(EventStatus::Failed))
        .exec(&stack.db)
        .await
        .expect("resolved");
    let late = fixture("checkout_session_completed_unpaid_async.json").expect("fixture");
    assert_eq!(stack.deliver(&late).await.json()["outcome"], "processed");
    stripe_webhook_event::Entity::update_many()
        .col_expr(stripe_webhook_event::Column::ReceivedAt, Expr::value(long_ago + chrono::Duration::days(5)))
        .filter(stripe_webhook_event::Column::EventId.eq(event_id_of(&late)))
        .exec(&stack.db)
        .await
        .expect("aged");
    let resolved = cli(&["events", "prune"]);
    assert!(String::from_utf8_lossy(&resolved.stdout).contains("dropped the payloads of 2 "), "{resolved:?}");
    assert!(
        stack.events().await.iter().all(|e| e.payload.is_empty()),
        "every payload past retention dropped"
    );
    stack.shutdown().await;
}
