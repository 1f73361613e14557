//! How PostgreSQL plans the statements on the hot paths once the tables are
//! large: each is EXPLAINed, as the service runs it (prepared, with a
//! generic plan), against tables of tens of thousands of analyzed rows, and
//! must reach them by index. A sequential scan of a large table or a
//! `NOT IN (subquery)` that is not hashed is a cost that grows with the
//! table, which no benchmark on empty tables shows.

use payments_svc::store::entities::stripe_webhook_event::EventStatus;
use payments_svc::store::events::ListFilter;
use payments_svc::store::{self, events, feed, purchases, reversals, write_pg};
use sea_orm::{ConnectionTrait, DatabaseBackend, QueryTrait, Statement, TransactionTrait};
use serde_json::Value;

use crate::helpers::TestDb;

/// Rows in each large table.
const ROWS: u32 = 50_000;

/// The tables that grow with the business; a small one may be scanned.
const LARGE: [&str; 4] =
    ["course_purchases", "stripe_webhook_events", "payment_reversals", "purchase_changes"];

/// Fills every large table with `ROWS` rows that look like the service's,
/// then analyzes them if `analyze`.
async fn fill(db: &impl ConnectionTrait, analyze: bool) {
    let statements = [
        format!(
            "INSERT INTO course_purchases (user_id, course_id, stripe_checkout_session_id,
                stripe_payment_intent_id, amount_total, currency, status, source, created_at, updated_at,
                access_status, has_access, access_cause)
             SELECT 'u_' || g, 'c_' || (g % 50), 'cs_test_' || g, 'pi_' || g, 4900, 'usd', 'paid',
                'webhook', now(), now(), 'granted', true, 'evt_' || g
             FROM generate_series(1, {ROWS}) g"
        ),
        format!(
            "INSERT INTO stripe_webhook_events (event_id, event_type, livemode, status, payload,
                stripe_created_at, received_at, last_received_at, checkout_session_id)
             SELECT 'evt_' || g, 'checkout.session.completed', false, 'processed', '{{}}', 1764000000,
                now(), now(), 'cs_test_' || g
             FROM generate_series(1, {ROWS}) g"
        ),
        format!(
            "INSERT INTO payment_reversals (kind, object_id, status, amount, complete, currency,
                payment_intent_id, charge_id, event_id, stripe_created_at, recorded_at)
             SELECT 'refund', 're_' || g, 'succeeded', 4900, true, 'usd',
                CASE WHEN g % 10 = 0 THEN NULL ELSE 'pi_' || (g * 7) END, 'ch_' || g, 'evt_r' || g,
                1764000000, now()
             FROM generate_series(1, {ROWS}) g"
        ),
        "INSERT INTO purchase_changes (purchase_id, kind, status, has_access, amount_refunded,
            cause_event_id, at)
         SELECT id, 'granted', 'granted', true, 0, 'evt_' || id, now() FROM course_purchases"
            .to_owned(),
    ];
    let analyzed = analyze.then(|| "ANALYZE".to_owned());
    for statement in statements.into_iter().chain(analyzed) {
        db.execute_unprepared(&statement).await.unwrap_or_else(|e| panic!("{statement}: {e}"));
    }
}

/// What is wrong with `plan` (EXPLAIN's JSON), if anything: a sequential
/// scan of a large table, or a subquery run for each row that reads a large
/// table without a key (an un-hashed `NOT IN`).
fn problems(plan: &Value, in_subplan: bool, found: &mut Vec<String>) {
    let mut in_subplan = in_subplan;
    if let Some(node) = plan.as_object() {
        let relation = node.get("Relation Name").and_then(Value::as_str).unwrap_or_default();
        let kind = node.get("Node Type").and_then(Value::as_str).unwrap_or_default();
        in_subplan |= node.get("Parent Relationship").and_then(Value::as_str) == Some("SubPlan");
        let keyed = node.contains_key("Index Cond") || node.contains_key("Recheck Cond");
        if LARGE.contains(&relation) {
            if kind == "Seq Scan" {
                found.push(format!("sequential scan of {relation}"));
            } else if in_subplan && !keyed {
                found.push(format!("{kind} of all of {relation} for each row (an un-hashed NOT IN?)"));
            }
        }
    }
    match plan {
        Value::Object(map) => map.values().for_each(|value| problems(value, in_subplan, found)),
        Value::Array(items) => items.iter().for_each(|value| problems(value, in_subplan, found)),
        _ => {}
    }
}

/// The statements built by sea-orm on the verify, feed and operator paths,
/// with example values inlined (their plans hold for any such values).
fn built_statements() -> Vec<(String, String)> {
    let sql = |query: &dyn QueryTrait<QueryStatement = sea_orm::sea_query::SelectStatement>| {
        query.build(DatabaseBackend::Postgres).to_string()
    };
    let failed = ListFilter { status: Some(EventStatus::Failed), limit: Some(50), ..ListFilter::default() };
    let recent = ListFilter { limit: Some(50), ..ListFilter::default() };
    // The last pass left off a day ago; retention keeps 90 days.
    let cutoff = chrono::Utc::now() - chrono::Duration::days(90);
    let mark = Some((cutoff - chrono::Duration::days(1), 0));
    vec![
        ("verify by session".to_owned(), sql(&purchases::by_session_query("cs_test_42"))),
        ("verify by user and course".to_owned(), sql(&purchases::by_user_course_query("u_42", "c_7"))),
        ("reversal's purchase".to_owned(), sql(&purchases::by_payment_intent_query("pi_42"))),
        ("ListPurchases page".to_owned(), sql(&purchases::page_query(None, 25_000, 100))),
        ("ListPurchases page of a buyer".to_owned(), sql(&purchases::page_query(Some("u_42"), 0, 100))),
        ("purchases list".to_owned(), sql(&purchases::list_query(false, 50))),
        ("watch: changes after a cursor".to_owned(), sql(&feed::changes_query(25_000, 256))),
        ("watch: their purchases".to_owned(), sql(&feed::purchases_query([1, 2, 3]))),
        (
            "purchases show: the events about a payment".to_owned(),
            sql(&events::touching_query(
                "cs_test_42",
                &["evt_r42".to_owned()],
                &["pi_42".to_owned(), "ch_42".to_owned()],
            )),
        ),
        ("events show, and reconcile's check of each event".to_owned(), sql(&events::find_query("evt_42"))),
        ("events list".to_owned(), sql(&events::list_query(&recent))),
        ("events list --status failed".to_owned(), sql(&events::list_query(&failed))),
        ("events replay --failed (a page)".to_owned(), sql(&events::page_query(&failed, 0))),
        ("events prune: the next chunk".to_owned(), sql(&events::prunable_query(cutoff, mark, 1000))),
        ("events prune --dry-run".to_owned(), sql(&events::count_prunable_query(cutoff, mark))),
        ("events prune: the oldest failure".to_owned(), sql(&events::oldest_failed_query())),
        ("start-up: purchases the feed has not published".to_owned(), sql(&feed::unpublished_query(1000))),
        (
            "reversals unmatched".to_owned(),
            reversals::unmatched_query(DatabaseBackend::Postgres, 10)
                .build(DatabaseBackend::Postgres)
                .to_string(),
        ),
    ]
}

/// The highest `$n` in `sql`: how many parameters it takes.
fn parameters(sql: &str) -> usize {
    let mut highest = 0;
    for (at, _) in sql.match_indices('$') {
        let digits: String = sql[at + 1..].chars().take_while(char::is_ascii_digit).collect();
        highest = highest.max(digits.parse().unwrap_or(0));
    }
    highest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_on_the_hot_paths_reach_large_tables_by_index() {
    let test_db = TestDb::postgres().await;
    let db = store::connect(&test_db.url).await.expect("connects");
    store::migrate(&db).await.expect("migrates");
    fill(&db, true).await;

    let mut statements: Vec<(String, String)> =
        write_pg::statements().iter().map(|(name, sql)| ((*name).to_owned(), (*sql).to_owned())).collect();
    statements.extend(built_statements());

    let mut found = Vec::new();
    for (name, sql) in &statements {
        // As the service runs it: prepared, with a plan that holds for any
        // arguments.
        let txn = db.begin().await.expect("begins");
        txn.execute_unprepared("SET LOCAL plan_cache_mode = force_generic_plan").await.expect("set");
        txn.execute_unprepared(&format!("PREPARE probe AS {sql}"))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let plan = explain(&txn, name, "probe", sql).await;
        // Prepared statements outlive transactions; sqlx's own stay.
        txn.execute_unprepared("DEALLOCATE probe").await.expect("deallocates");
        txn.rollback().await.expect("rolls back");
        let mut problems_of = Vec::new();
        problems(&plan, false, &mut problems_of);
        found.extend(problems_of.into_iter().map(|problem| format!("{name}: {problem}\n{plan:#}")));
    }
    assert!(found.is_empty(), "{}", found.join("\n\n"));
    assert_eq!(statements.len(), write_pg::statements().len() + built_statements().len());
}

/// The plan `EXECUTE prepared` runs now, with every argument NULL.
async fn explain(txn: &impl ConnectionTrait, name: &str, prepared: &str, sql: &str) -> Value {
    let arguments = vec!["NULL"; parameters(sql)].join(", ");
    let execute = if arguments.is_empty() {
        format!("EXECUTE {prepared}")
    } else {
        format!("EXECUTE {prepared}({arguments})")
    };
    let explained = txn
        .query_one_raw(Statement::from_string(
            DatabaseBackend::Postgres,
            format!("EXPLAIN (FORMAT JSON) {execute}"),
        ))
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"))
        .expect("a plan");
    explained.try_get("", "QUERY PLAN").expect("JSON plan")
}

/// A writer's connection keeps one plan per statement for its lifetime. A
/// plan made while the tables were empty (a new database that was vacuumed,
/// so its statistics say zero rows) must still reach them by index once
/// they are large: each statement is planned on such tables as a writer
/// plans it, the tables are filled without a new ANALYZE, and the plan the
/// connection holds is checked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_write_path_keeps_index_lookups_planned_on_empty_tables() {
    let test_db = TestDb::postgres().await;
    let db = store::connect(&test_db.url).await.expect("connects");
    store::migrate(&db).await.expect("migrates");
    db.execute_unprepared("VACUUM ANALYZE").await.expect("vacuums the empty tables");

    let txn = db.begin().await.expect("begins");
    txn.execute_unprepared(write_pg::SESSION).await.expect("a writer's settings");
    for (n, (name, sql)) in write_pg::statements().iter().enumerate() {
        txn.execute_unprepared(&format!("PREPARE cold_{n} AS {sql}"))
            .await
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        explain(&txn, name, &format!("cold_{n}"), sql).await;
    }
    fill(&txn, false).await;
    let mut found = Vec::new();
    for (n, (name, sql)) in write_pg::statements().iter().enumerate() {
        let plan = explain(&txn, name, &format!("cold_{n}"), sql).await;
        let mut problems_of = Vec::new();
        problems(&plan, false, &mut problems_of);
        found.extend(problems_of.into_iter().map(|problem| format!("{name}: {problem}\n{plan:#}")));
    }
    for n in 0..write_pg::statements().len() {
        txn.execute_unprepared(&format!("DEALLOCATE cold_{n}")).await.expect("deallocates");
    }
    txn.rollback().await.expect("rolls back");
    assert!(found.is_empty(), "{}", found.join("\n\n"));
}
