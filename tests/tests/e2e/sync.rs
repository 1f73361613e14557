//! `payments-svc sync` through the real binary against the fake Stripe's
//! list endpoints: every state a purchase can reach over many pages, within
//! the rate limit and through 429s; idempotent; resumed after a kill;
//! `--check` before and after Stripe gains a refund the database has not
//! seen; and a database lost and rebuilt from Stripe that agrees with the
//! one the webhooks built.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use payments_proto::v1::{ListPurchasesRequest, Purchase};
use payments_svc::config::SyncCheckSchedule;
use payments_svc::store::entities::sync_checkpoint;
use sea_orm::EntityTrait;
use serde_json::Value;

use crate::fake_stripe::{FAKE_STRIPE_KEY, FakeStripe, Fault};
use crate::feed::watch;
use crate::helpers::{Stack, StackOptions, TestDb, eventually, metric, on_both_databases};
use crate::processes::{binary, payments_cli};
use crate::stripe_account::{Account, Kind};

/// Requests a second the syncs here may make (STRIPE_API_MAX_RPS).
const RPS: u32 = 10;

fn env(stripe: &FakeStripe, rps: u32) -> Vec<(&'static str, String)> {
    vec![
        ("STRIPE_SECRET_KEY", FAKE_STRIPE_KEY.to_owned()),
        ("STRIPE_API_BASE", stripe.base_url()),
        ("STRIPE_API_MAX_RPS", rps.to_string()),
    ]
}

/// `payments-svc sync <args>` on `database_url`, to its end.
async fn sync(database_url: &str, stripe: &FakeStripe, args: &[&str]) -> Output {
    let (url, env, args) =
        (database_url.to_owned(), env(stripe, RPS), args.iter().map(|a| a.to_string()).collect::<Vec<_>>());
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        let mut all = vec!["sync"];
        all.extend(args.iter().map(String::as_str));
        payments_cli(&url, &env, &all)
    })
    .await
    .expect("sync ran")
}

/// The JSON a successful `sync --json` printed.
fn summary(output: &Output) -> Value {
    assert!(output.status.success(), "sync failed: {}", String::from_utf8_lossy(&output.stderr));
    serde_json::from_slice(&output.stdout).expect("JSON summary")
}

fn since(account: &Account) -> String {
    chrono::DateTime::from_timestamp(account.first_created() - 1, 0).expect("time").to_rfc3339()
}

/// `(status, has_access, amount_refunded)` of every purchase, by session,
/// as the database's rows say.
async fn accesses(stack: &Stack) -> BTreeMap<String, (String, bool, i64, bool)> {
    stack
        .purchases()
        .await
        .into_iter()
        .map(|p| {
            let status = p.access_status.map(|s| format!("{s:?}").to_lowercase()).unwrap_or_default();
            (p.stripe_checkout_session_id, (status, p.has_access, p.amount_refunded, p.needs_refund))
        })
        .collect()
}

/// Every purchase holds what its kind says; the second payment of a
/// course grants nothing and is owed a refund.
fn assert_every_state(account: &Account, found: &BTreeMap<String, (String, bool, i64, bool)>) {
    let mut expected_rows = 0;
    for purchase in &account.purchases {
        let first = &purchase.sessions[0];
        match purchase.kind.expected() {
            None => assert!(!found.contains_key(first), "{:?} {first} recorded", purchase.kind),
            Some((status, access, refunded)) => {
                expected_rows += 1;
                let row = found.get(first).unwrap_or_else(|| panic!("{:?} {first} missing", purchase.kind));
                assert_eq!(
                    (row.0.as_str(), row.1, row.2, row.3),
                    (status, access, refunded, false),
                    "{:?} {first}",
                    purchase.kind
                );
            }
        }
        if let Some(second) = purchase.sessions.get(1) {
            expected_rows += 1;
            let row = found.get(second).unwrap_or_else(|| panic!("{second} missing"));
            assert!(!row.1 && row.3, "the later payment is the second one: {second} {row:?}");
        }
    }
    assert_eq!(found.len(), expected_rows, "no purchase beyond the account's");
}

on_both_databases!(sync_imports_every_state_over_many_pages_within_the_rate_limit_and_again_changes_nothing);
async fn sync_imports_every_state_over_many_pages_within_the_rate_limit_and_again_changes_nothing(
    db: TestDb,
) {
    let stripe = FakeStripe::start().await;
    let account = Account::with(1_500, e2e::unix_now() - 40 * 86_400, "many");
    account.list_in(&stripe);
    let stack = Stack::start(db).await;
    stripe.fail_next([
        Fault::RateLimited { retry_after_secs: 1 },
        Fault::Status(503),
        Fault::RateLimited { retry_after_secs: 0 },
        Fault::Status(500),
    ]);

    let first = summary(&sync(stack.database_url(), &stripe, &["--since", &since(&account), "--json"]).await);

    assert_every_state(&account, &accesses(&stack).await);
    let sessions = &first["lists"]["checkout_sessions"];
    assert_eq!(sessions["seen"], account.sessions() as u64);
    assert_eq!(sessions["pages"], account.sessions().div_ceil(100) as u64);
    let per_kind = (1_500 / Kind::ALL.len()) as u64;
    assert_eq!(sessions["without_metadata"], per_kind);
    assert_eq!(first["skipped"]["expired"], per_kind);
    assert_eq!(first["skipped"]["open"], per_kind);
    assert_eq!(first["without_metadata"].as_array().expect("ids").len() as u64, per_kind);
    let recorded = stack.purchases().await.len() as u64;
    assert_eq!(sessions["new"], recorded);
    assert_eq!(first["lists"]["refunds"]["new"], account.refunds() as u64);
    assert_eq!(first["lists"]["disputes"]["new"], account.disputes() as u64);
    assert_eq!(first["changes_published"], stack.changes().await.len() as u64);
    assert!(stack.changes().await.iter().all(|change| change.cause_event_id == "sync"));

    // Every request, retries included, took its turn within the rate.
    let gets = stripe.gets();
    let span = gets.last().expect("gets").0 - gets[0].0;
    let floor = Duration::from_secs_f64((gets.len() as f64 - f64::from(RPS) - 1.0) / f64::from(RPS));
    assert!(span >= floor, "{} requests in {span:?}: faster than {RPS}/s", gets.len());

    let changes_before = stack.changes().await.len();
    let second =
        summary(&sync(stack.database_url(), &stripe, &["--since", &since(&account), "--json"]).await);
    assert_eq!((second["total"]["new"].as_u64(), second["total"]["changed"].as_u64()), (Some(0), Some(0)));
    assert_eq!(second["changes_published"], 0);
    assert_eq!(second["resumed"], false, "a finished sync starts afresh");
    assert_eq!(stack.changes().await.len(), changes_before, "a second run publishes nothing");
    stack.shutdown().await;
}

on_both_databases!(a_sync_killed_midway_continues_after_its_last_page_and_then_starts_afresh);
async fn a_sync_killed_midway_continues_after_its_last_page_and_then_starts_afresh(db: TestDb) {
    let stripe = FakeStripe::start().await;
    let account = Account::with(2_800, e2e::unix_now() - 40 * 86_400, "killed");
    account.list_in(&stripe);
    let stack = Stack::start(db).await;
    let pages = account.sessions().div_ceil(100);
    let since = since(&account);

    let mut child = Command::new(binary("payments-svc"))
        .args(["sync", "--since", &since, "--json"])
        .env("DATABASE_URL", stack.database_url())
        .envs(env(&stripe, 4).iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sync starts");
    let checkpoint = || async {
        sync_checkpoint::Entity::find_by_id("checkout_sessions".to_owned())
            .one(&stack.db)
            .await
            .ok()
            .flatten()
    };
    eventually(Duration::from_secs(30), "the sync checkpointing its pages", || async {
        checkpoint().await.is_some_and(|c| c.pages >= 2)
    })
    .await;
    if stack.database_url().starts_with("postgres") {
        // One sync at a time per database: a second one is refused.
        let second = sync(stack.database_url(), &stripe, &["--since", &since, "--json"]).await;
        assert!(!second.status.success(), "a second sync ran beside the first");
        let error = String::from_utf8_lossy(&second.stderr);
        assert!(error.contains("another payments-svc sync is running"), "{error}");
    }
    eventually(Duration::from_secs(30), "the sync checkpointing its pages", || async {
        checkpoint().await.is_some_and(|c| c.pages >= 8)
    })
    .await;
    child.kill().expect("kill");
    child.wait().expect("reaped");
    let stopped = checkpoint().await.expect("checkpoint");
    assert!(!stopped.finished && (stopped.pages as usize) < pages, "killed midway: {stopped:?}");
    let before = stripe.gets().len();

    let resumed = summary(&sync(stack.database_url(), &stripe, &["--since", &since, "--json"]).await);

    assert_eq!(resumed["resumed"], true);
    let session_gets: Vec<String> = stripe.gets()[before..]
        .iter()
        .map(|(_, get)| get.clone())
        .filter(|get| get.starts_with("/v1/checkout/sessions?"))
        .collect();
    let after = stopped.starting_after.expect("a last object");
    assert!(session_gets[0].contains(&format!("starting_after={after}")), "{}", session_gets[0]);
    assert_eq!(session_gets.len(), pages - stopped.pages as usize, "only the pages not applied yet");
    assert_every_state(&account, &accesses(&stack).await);

    let gets_before_third = stripe.gets().len();
    let third = summary(&sync(stack.database_url(), &stripe, &["--since", &since, "--json"]).await);
    assert_eq!(third["resumed"], false, "a finished sync starts afresh");
    assert!(!stripe.gets()[gets_before_third].1.contains("starting_after"));
    assert_eq!(third["total"]["new"], 0);
    stack.shutdown().await;
}

on_both_databases!(a_page_stripe_says_not_to_retry_stops_the_sync_and_a_rerun_continues_there);
async fn a_page_stripe_says_not_to_retry_stops_the_sync_and_a_rerun_continues_there(db: TestDb) {
    let stripe = FakeStripe::start().await;
    let account = Account::with(450, e2e::unix_now() - 5 * 86_400, "refused");
    account.list_in(&stripe);
    let stack = Stack::start(db).await;
    let since = since(&account);
    stripe.fail_next([Fault::Pass, Fault::Pass, Fault::NotToBeRetried(500)]);

    let stopped = sync(stack.database_url(), &stripe, &["--since", &since, "--json"]).await;

    assert!(!stopped.status.success(), "the sync stops");
    let error = String::from_utf8_lossy(&stopped.stderr);
    assert!(error.contains("Stripe answered 500"), "{error}");
    assert_eq!(stripe.request_count(), 3, "two pages, then the refused one, not asked again");
    let checkpoint = sync_checkpoint::Entity::find_by_id("checkout_sessions".to_owned())
        .one(&stack.db)
        .await
        .expect("query")
        .expect("checkpoint");
    assert_eq!((checkpoint.pages, checkpoint.finished), (2, false));

    let resumed = summary(&sync(stack.database_url(), &stripe, &["--since", &since, "--json"]).await);
    assert_eq!(resumed["resumed"], true);
    // The refused request was answered before the fake logs a GET.
    assert!(
        stripe.gets()[2].1.contains(&format!("starting_after={}", checkpoint.starting_after.expect("id")))
    );
    assert_every_state(&account, &accesses(&stack).await);
    stack.shutdown().await;
}

on_both_databases!(check_lists_what_differs_from_stripe_and_exits_1_until_a_sync_catches_up);
async fn check_lists_what_differs_from_stripe_and_exits_1_until_a_sync_catches_up(db: TestDb) {
    let stripe = FakeStripe::start().await;
    let account = Account::with(45, e2e::unix_now() - 3 * 86_400, "check");
    account.list_in(&stripe);
    let stack = Stack::start(db).await;
    let since = since(&account);
    let check = |json: bool| check(&stack, &stripe, &since, json);

    let empty = check(true).await;
    assert_eq!(empty.status.code(), Some(1), "an empty database differs");
    let report: Value = serde_json::from_slice(&empty.stdout).expect("JSON report");
    let missing = report["differences"].as_array().expect("differences");
    assert!(!missing.is_empty() && missing.iter().all(|d| d["difference"] == "missing_here"), "{report}");
    assert!(stack.purchases().await.is_empty(), "a check writes nothing");

    let dry =
        summary(&sync(stack.database_url(), &stripe, &["--since", &since, "--dry-run", "--json"]).await);
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["lists"]["checkout_sessions"]["new"], missing.len() as u64, "what a sync would record");
    assert!(
        stack.purchases().await.is_empty() && stack.changes().await.is_empty(),
        "a dry run writes nothing"
    );
    let checkpoints = sync_checkpoint::Entity::find().all(&stack.db).await.expect("checkpoints");
    assert!(checkpoints.is_empty(), "nor a checkpoint: {checkpoints:?}");

    summary(&sync(stack.database_url(), &stripe, &["--since", &since, "--json"]).await);
    let agreed = check(true).await;
    assert_eq!(agreed.status.code(), Some(0), "{}", String::from_utf8_lossy(&agreed.stdout));
    assert_eq!(
        serde_json::from_slice::<Value>(&agreed.stdout).expect("JSON")["differences"],
        Value::Array(Vec::new())
    );

    // Stripe gains a refund the database has not seen (its webhook lost).
    let paid = account.purchases.iter().find(|p| p.kind == Kind::Paid).expect("a paid purchase");
    let refund = serde_json::json!({
        "id": "re_unseen", "object": "refund", "amount": crate::stripe_account::AMOUNT, "currency": "usd",
        "created": e2e::unix_now(), "status": "succeeded", "charge": "ch_unseen",
        "payment_intent": format!("pi_check_{}", paid.sessions[0].rsplit('_').next().expect("n")),
    });
    stripe.list_refund(bytes::Bytes::from(refund.to_string()));

    let differs = check(false).await;
    assert_eq!(differs.status.code(), Some(1));
    let table = String::from_utf8_lossy(&differs.stdout);
    let line =
        table.lines().find(|line| line.contains(&paid.sessions[0])).unwrap_or_else(|| panic!("{table}"));
    assert!(
        line.contains("granted_here_only") && line.contains("refunded (no access, refunded 4900)"),
        "{line}"
    );
    assert!(table.contains("(1 differences)"), "{table}");

    let shown = on_a_terminal(stack.database_url(), &stripe, &format!("sync --since {since}")).await;
    for list in ["checkout_sessions", "refunds", "disputes"] {
        assert!(shown.contains(&format!("\r{list}: page 1, ")), "progress of {list} on a terminal: {shown}");
    }
    assert!(
        shown.contains(" objects, ") && shown.contains("/s, ") && shown.contains(" s left"),
        "pages, objects, rate, time left: {shown}"
    );
    assert!(shown.contains("LIST") && shown.contains("NO METADATA"), "the summary table: {shown}");
    assert_eq!(check(true).await.status.code(), Some(0), "the sync applied the refund");
    stack.shutdown().await;
}

on_both_databases!(a_database_rebuilt_from_stripe_agrees_with_the_one_webhooks_built_and_refuses_old_cursors);
async fn a_database_rebuilt_from_stripe_agrees_with_the_one_webhooks_built_and_refuses_old_cursors(
    db: TestDb,
) {
    let stripe = FakeStripe::start().await;
    let account = Account::with(60, e2e::unix_now() - 10 * 86_400, "dr");
    account.list_in(&stripe);
    let mut stack = Stack::start(db).await;
    // Every event twice, the second round in reverse order.
    let deliveries: Vec<_> = account.events.iter().chain(account.events.iter().rev()).cloned().collect();
    for body in &deliveries {
        let answer = stack.deliver(body).await;
        assert!(answer.status.is_success(), "{:?}", answer.body);
    }
    let built = list_purchases(&stack).await;
    assert_eq!(built.len(), account.purchases.iter().filter(|p| p.kind.expected().is_some()).count() + 4);
    let old_cursor = stack.changes().await.last().expect("changes").cursor as u64;

    stack.stop_payments_svc().await;
    stack.recreate_database().await;
    let migrated = payments_cli(stack.database_url(), &[], &["migrate"]);
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let rebuilt =
        summary(&sync(stack.database_url(), &stripe, &["--since", &since(&account), "--json"]).await);
    assert_eq!(rebuilt["total"]["changed"], 0, "an empty database: everything new");
    stack.restart_payments_svc(StackOptions::default()).await;

    let after = list_purchases(&stack).await;
    assert_eq!(after.len(), built.len());
    for (webhooks, sync) in built.iter().zip(&after) {
        assert_eq!(stripe_fields(sync), stripe_fields(webhooks), "{}", webhooks.checkout_session_id);
    }

    let mut client = stack.grpc().await;
    let refused = watch(&mut client, old_cursor).await.message().await.expect_err("an old cursor is refused");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains("another history"), "{}", refused.message());
    let oldest: u64 = refused
        .metadata()
        .get("oldest-cursor")
        .expect("trailer")
        .to_str()
        .expect("text")
        .parse()
        .expect("cursor");
    let first = watch(&mut client, oldest - 1).await.message().await.expect("stream").expect("a change");
    assert_eq!(
        first.cursor as i64,
        stack.changes().await[0].cursor,
        "a resync starts at the new history's first change"
    );
    stack.shutdown().await;
}

on_both_databases!(the_scheduled_check_exports_how_many_purchases_differ_from_stripe);
async fn the_scheduled_check_exports_how_many_purchases_differ_from_stripe(db: TestDb) {
    let stripe = FakeStripe::start().await;
    let account = Account::with(30, e2e::unix_now() - 3 * 86_400, "scheduled");
    account.list_in(&stripe);
    let options = StackOptions {
        stripe_api_base: Some(stripe.base_url()),
        payments: Some(|settings| {
            settings.sync_check = Some(SyncCheckSchedule {
                interval: Duration::from_millis(300),
                window: Duration::from_secs(30 * 86_400),
            });
        }),
        ..StackOptions::default()
    };
    let stack = Stack::start_with(db, options).await;
    let expected = account.purchases.iter().filter(|p| p.kind.expected().is_some()).count() + 2;
    let differences = || async { metric(&stack.payments_metrics().await, "payments_sync_check_differences") };

    eventually(Duration::from_secs(20), "every purchase found missing", || async {
        differences().await == expected as f64
    })
    .await;
    summary(&sync(stack.database_url(), &stripe, &["--since", &since(&account), "--json"]).await);
    eventually(Duration::from_secs(20), "agreement after the sync", || async { differences().await == 0.0 })
        .await;
    stack.shutdown().await;
}

/// What `payments-svc <command>` shows on a terminal (a pseudo-terminal
/// that `script` gives it), both streams.
async fn on_a_terminal(database_url: &str, stripe: &FakeStripe, command: &str) -> String {
    let command = format!("{} {command}", binary("payments-svc").display());
    let (url, env) = (database_url.to_owned(), env(stripe, RPS));
    let output = tokio::task::spawn_blocking(move || {
        Command::new("script")
            .args(["-qec", &command, "/dev/null"])
            .env("DATABASE_URL", url)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .output()
            .expect("script runs (util-linux)")
    })
    .await
    .expect("ran");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `sync --check` of the window from `since`, as a table or JSON.
async fn check(stack: &Stack, stripe: &FakeStripe, since: &str, json: bool) -> Output {
    let mut args = vec!["--since", since, "--check"];
    args.extend(json.then_some("--json"));
    sync(stack.database_url(), stripe, &args).await
}

/// Every purchase, by session, through ListPurchases.
async fn list_purchases(stack: &Stack) -> Vec<Purchase> {
    let mut client = stack.grpc().await;
    let (mut all, mut page_token) = (Vec::new(), String::new());
    loop {
        let request = ListPurchasesRequest { user_id: String::new(), page_size: 1000, page_token };
        let page = client.list_purchases(request).await.expect("ListPurchases").into_inner();
        all.extend(page.purchases);
        if page.next_page_token.is_empty() {
            break;
        }
        page_token = page.next_page_token;
    }
    all.sort_by(|a, b| a.checkout_session_id.cmp(&b.checkout_session_id));
    all
}

/// What Stripe knows of a purchase: all but how and when it was recorded.
fn stripe_fields(purchase: &Purchase) -> Purchase {
    Purchase { source: 0, created_at: None, updated_at: None, ..purchase.clone() }
}
