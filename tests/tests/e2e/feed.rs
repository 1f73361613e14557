//! The purchase change feed: every change of access is one change, in the
//! transaction that makes it, served by `WatchPurchaseChanges` in cursor
//! order to consumers that resume without gap or repeat; `ListPurchases`
//! holds the state the feed folds to; retention prunes old changes and
//! refuses cursors before them.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use e2e::{fixture, with_fresh_ids};
use hyper::StatusCode;
use payments_domain::purchase::{NewPurchase, PurchaseSource, PurchaseStatus as CheckoutStatus};
use payments_domain::reversals::DisputeAccess;
use payments_domain::rules::{Plan, Policy};
use payments_domain::write::Input;
use payments_proto::v1::payments_client::PaymentsClient;
use payments_proto::v1::{
    ChangeKind, HandleStripeEventsRequest, ListPurchasesRequest, Outcome, PurchaseChange, PurchaseStatus,
    WatchPurchaseChangesRequest,
};
use payments_svc::store::entities::{course_purchase, purchase_change};
use payments_svc::store::{signals, write};
use sea_orm::{
    ColumnTrait, ConnectionTrait, Database, DbBackend, EntityTrait, QueryFilter, TransactionTrait,
};
use tonic::Streaming;
use tonic::transport::Channel;

use crate::helpers::{Stack, StackOptions, TestDb, eventually, metric, on_both_databases};
use crate::processes::payments_cli;
use crate::reversals::variant;

const PAID: &str = "checkout_session_completed_paid.json";
const UNPAID: &str = "checkout_session_completed_unpaid_async.json";
const SUCCEEDED: &str = "checkout_session_async_payment_succeeded.json";
const FAILED: &str = "checkout_session_async_payment_failed.json";
const REFUND: &str = "refund_created_full.json";
const PARTIAL: &str = "charge_refunded_partial.json";
const DISPUTE: &str = "charge_dispute_created.json";
const DISPUTE_WON: &str = "charge_dispute_closed_won.json";
const DISPUTE_LOST: &str = "charge_dispute_closed_lost.json";

/// How long a test waits for changes it knows are committed.
const DEADLINE: Duration = Duration::from_secs(20);

/// A purchase's state as the feed or `ListPurchases` tells it.
type State = (String, bool, i64);

fn state_of_change(change: &PurchaseChange) -> (String, State) {
    let purchase = change.purchase.as_ref().expect("a change carries its purchase");
    (
        purchase.checkout_session_id.clone(),
        (purchase.status().as_str().to_owned(), purchase.has_access, purchase.amount_refunded),
    )
}

/// Checks that the stored changes of `session`'s purchase each differ from
/// the one before (no row without a change) and returns the last.
pub(crate) async fn assert_each_change_is_a_change(
    stack: &Stack,
    session: &str,
    context: &str,
) -> purchase_change::Model {
    let purchase = course_purchase::Entity::find()
        .filter(course_purchase::Column::StripeCheckoutSessionId.eq(session))
        .one(&stack.db)
        .await
        .expect("query purchase")
        .unwrap_or_else(|| panic!("{context}: no purchase {session}"));
    let changes: Vec<purchase_change::Model> =
        stack.changes().await.into_iter().filter(|change| change.purchase_id == purchase.id).collect();
    assert!(!changes.is_empty(), "{context}: {session} was never published");
    for pair in changes.windows(2) {
        let state = |c: &purchase_change::Model| (c.status, c.has_access, c.amount_refunded);
        assert_ne!(state(&pair[0]), state(&pair[1]), "{context}: a change that changed nothing");
    }
    changes.last().cloned().expect("non-empty")
}

pub(crate) async fn watch(client: &mut PaymentsClient<Channel>, after: u64) -> Streaming<PurchaseChange> {
    client
        .watch_purchase_changes(WatchPurchaseChangesRequest { after })
        .await
        .expect("WatchPurchaseChanges")
        .into_inner()
}

/// The next `n` changes of `stream`; fails the test if they do not arrive.
pub(crate) async fn next_changes(stream: &mut Streaming<PurchaseChange>, n: usize) -> Vec<PurchaseChange> {
    let mut changes = Vec::with_capacity(n);
    let deadline = Instant::now() + DEADLINE;
    while changes.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.message()).await {
            Ok(Ok(Some(change))) => changes.push(change),
            Ok(other) => panic!("the watch ended after {} of {n} changes: {other:?}", changes.len()),
            Err(_) => panic!("only {} of {n} changes arrived within {DEADLINE:?}", changes.len()),
        }
    }
    changes
}

/// Asserts that `received` is exactly the stored feed after `after`: every
/// cursor once, in order.
async fn assert_is_the_feed(stack: &Stack, after: i64, received: &[PurchaseChange]) {
    let stored: Vec<u64> =
        stack.changes().await.iter().filter(|c| c.cursor > after).map(|c| c.cursor as u64).collect();
    let got: Vec<u64> = received.iter().map(|change| change.cursor).collect();
    assert_eq!(got, stored, "the stream is the stored feed, in order, once each");
}

/// Every purchase through `ListPurchases`, a page of 3 at a time.
async fn list_all(client: &mut PaymentsClient<Channel>, user_id: &str) -> BTreeMap<String, State> {
    let mut all = BTreeMap::new();
    let mut page_token = String::new();
    loop {
        let request = ListPurchasesRequest { user_id: user_id.to_owned(), page_size: 3, page_token };
        let page = client.list_purchases(request).await.expect("ListPurchases").into_inner();
        assert!(page.purchases.len() <= 3);
        for purchase in page.purchases {
            let state =
                (purchase.status().as_str().to_owned(), purchase.has_access, purchase.amount_refunded);
            assert!(all.insert(purchase.checkout_session_id, state).is_none(), "a purchase listed twice");
        }
        if page.next_page_token.is_empty() {
            return all;
        }
        page_token = page.next_page_token;
    }
}

/// The last state of each purchase along `changes`.
fn fold(changes: &[PurchaseChange]) -> BTreeMap<String, State> {
    changes.iter().map(state_of_change).collect()
}

/// A mixed run: paid checkouts, a delayed payment that clears and one that
/// fails, a second payment for an owned course, a partial and a full refund,
/// disputes won and lost, every event delivered twice, the second time all
/// at once; and a purchase recorded by the success page's verify.
fn mixed_run() -> Vec<Bytes> {
    let mut bodies = Vec::new();
    for n in 0..4 {
        bodies.push(variant(PAID, &format!("_paid{n}")));
    }
    for (suffix, second) in [("_cleared", SUCCEEDED), ("_bounced", FAILED)] {
        let unpaid = with_fresh_ids(&fixture(UNPAID).expect("fixture"), suffix).expect("variant");
        let settled = with_fresh_ids(&fixture(second).expect("fixture"), suffix).expect("variant");
        bodies.extend([unpaid, settled]);
    }
    bodies.push(with_fresh_ids(&variant(PAID, "_paid0"), "_twice").expect("a second payment"));
    bodies.push(variant(PARTIAL, "_paid1"));
    bodies.push(variant(REFUND, "_paid2"));
    bodies.extend([variant(DISPUTE, "_paid3"), variant(DISPUTE_WON, "_paid3")]);
    bodies.extend([variant(PAID, "_lost"), variant(DISPUTE, "_lost"), variant(DISPUTE_LOST, "_lost")]);
    bodies
}

on_both_databases!(after_a_mixed_run_the_feed_folds_to_every_purchases_current_state);
async fn after_a_mixed_run_the_feed_folds_to_every_purchases_current_state(db: TestDb) {
    let stripe = crate::fake_stripe::FakeStripe::start().await;
    stripe.add_session(fixture("checkout_session.object.json").expect("fixture"));
    let options = StackOptions { stripe_api_base: Some(stripe.base_url()), ..Default::default() };
    let stack = Stack::start_with(db, options).await;
    let mut client = stack.grpc().await;
    let mut live = watch(&mut client, 0).await;
    let bodies = mixed_run();

    for body in &bodies {
        assert_eq!(stack.deliver(body).await.status, StatusCode::OK);
    }
    let published = stack.changes().await.len();
    for answer in stack.deliver_concurrently(&bodies).await {
        assert_eq!(answer.status, StatusCode::OK);
    }
    let session = event_id_of_object(&fixture("checkout_session.object.json").expect("fixture"));
    let verified = stack.get(&format!("/api/payments/verify?session_id={session}")).await.json();
    let replayed = payments_cli(stack.database_url(), &[], &["events", "replay", &event_id(&bodies[0])]);

    assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stderr));
    assert_eq!(verified["hasAccess"], true, "{verified}");
    let stored = stack.changes().await;
    assert_eq!(stored.len(), published + 1, "redeliveries and the replay published nothing; verify one");
    let received = next_changes(&mut live, stored.len()).await;
    assert_is_the_feed(&stack, 0, &received).await;
    let listed = list_all(&mut client, "").await;
    assert_eq!(fold(&received), listed, "folding the feed gives every purchase as it is now");
    let kinds: Vec<ChangeKind> = received.iter().map(|change| change.kind()).collect();
    for kind in [
        ChangeKind::Granted,
        ChangeKind::Pending,
        ChangeKind::Failed,
        ChangeKind::NeedsRefund,
        ChangeKind::PartiallyRefunded,
        ChangeKind::Refunded,
        ChangeKind::Suspended,
        ChangeKind::Restored,
        ChangeKind::Revoked,
    ] {
        assert!(kinds.contains(&kind), "no {kind:?} in {kinds:?}");
    }
    let by_verify = received.iter().find(|c| state_of_change(c).0 == session).expect("verify's change");
    assert_eq!((by_verify.kind(), by_verify.cause_event_id.as_str()), (ChangeKind::Granted, "verify"));
    let first = &received[0];
    assert_eq!(first.cause_event_id, event_id(&bodies[0]), "a change names the event behind it");
    stack.shutdown().await;
}

fn event_id(body: &Bytes) -> String {
    let parsed: serde_json::Value = serde_json::from_slice(body).expect("JSON");
    parsed["id"].as_str().expect("event id").to_owned()
}

fn event_id_of_object(body: &Bytes) -> String {
    let parsed: serde_json::Value = serde_json::from_slice(body).expect("JSON");
    parsed["id"].as_str().expect("id").to_owned()
}

on_both_databases!(list_purchases_pages_through_every_purchase_or_one_buyers_and_refuses_bad_pages);
async fn list_purchases_pages_through_every_purchase_or_one_buyers_and_refuses_bad_pages(db: TestDb) {
    let stack = Stack::start(db).await;
    let mut client = stack.grpc().await;
    for n in 0..7 {
        assert_eq!(stack.deliver(&variant(PAID, &format!("_list{n}"))).await.status, StatusCode::OK);
    }

    let everyone = list_all(&mut client, "").await;
    let one_buyer = list_all(&mut client, "76579e2b-1d72-48ed-99f9-d14b4496249a_list3").await;
    let too_big = ListPurchasesRequest { page_size: 1001, ..Default::default() };
    let bad_token = ListPurchasesRequest { page_token: "not-a-token".into(), ..Default::default() };
    let first_page = ListPurchasesRequest { page_size: 1, ..Default::default() };
    let token = client.list_purchases(first_page).await.expect("listed").into_inner().next_page_token;
    let raw_ids =
        ["1", "+5", "05"].map(|raw| ListPurchasesRequest { page_token: raw.into(), ..Default::default() });
    let other_listing =
        ListPurchasesRequest { user_id: "u_other".into(), page_token: token.clone(), ..Default::default() };
    let altered = ListPurchasesRequest { page_token: token.to_uppercase(), ..Default::default() };
    let same_listing = ListPurchasesRequest { page_token: token, ..Default::default() };
    assert!(
        !client.list_purchases(same_listing).await.expect("its own token").into_inner().purchases.is_empty()
    );

    assert_eq!(everyone.len(), 7);
    assert!(everyone.values().all(|state| state == &("paid".to_owned(), true, 0)), "{everyone:?}");
    assert_eq!(one_buyer.len(), 1, "{one_buyer:?}");
    assert!(one_buyer.keys().all(|session| session.ends_with("_list3")), "{one_buyer:?}");
    for request in [too_big, bad_token, other_listing, altered].into_iter().chain(raw_ids) {
        let refused = client.list_purchases(request).await.expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused:?}");
    }
    stack.shutdown().await;
}

on_both_databases!(a_consumer_killed_mid_stream_resumes_from_its_last_cursor_without_gap_or_repeat);
async fn a_consumer_killed_mid_stream_resumes_from_its_last_cursor_without_gap_or_repeat(db: TestDb) {
    let url = db.url.clone();
    let stack = Stack::start(db).await;
    for n in 0..6 {
        stack.deliver(&variant(PAID, &format!("_before{n}"))).await;
    }

    let mut tail = crate::processes::Tail::start(&url, 0);
    let first = tail.lines(3);
    tail.kill();
    for n in 0..6 {
        stack.deliver(&variant(PAID, &format!("_while{n}"))).await;
    }
    let last_handled = first.last().expect("lines")["cursor"].as_u64().expect("cursor");
    let mut resumed = crate::processes::Tail::start(&url, last_handled);
    let total = stack.changes().await.len();
    let rest = resumed.lines(total - first.len());
    resumed.kill();

    let cursors: Vec<u64> =
        first.iter().chain(&rest).map(|line| line["cursor"].as_u64().expect("cursor")).collect();
    let stored: Vec<u64> = stack.changes().await.iter().map(|c| c.cursor as u64).collect();
    assert_eq!(cursors, stored, "every change once, in order, across the kill");
    assert_eq!(rest[0]["kind"], "granted");
    assert!(rest.iter().all(|line| line["hasAccess"] == true && line["causeEventId"].as_str().is_some()));
    stack.shutdown().await;
}

on_both_databases!(changes_tail_prints_its_columns_aligned_under_their_headings);
async fn changes_tail_prints_its_columns_aligned_under_their_headings(db: TestDb) {
    let url = db.url.clone();
    let stack = Stack::start(db).await;
    for n in 0..3 {
        stack.deliver(&variant(PAID, &format!("_table{n}"))).await;
    }
    let mut tail = crate::processes::Tail::table(&url);
    let lines = tail.text(4);
    tail.kill();

    /// Where each whitespace-separated cell of `line` starts.
    fn starts(line: &str) -> Vec<usize> {
        let mut starts = Vec::new();
        let mut previous = ' ';
        for (at, c) in line.char_indices() {
            if c != ' ' && previous == ' ' {
                starts.push(at);
            }
            previous = c;
        }
        starts
    }
    let header = starts(&lines[0]);
    assert_eq!(header.len(), 10, "{}", lines[0]);
    for line in &lines[1..] {
        assert_eq!(starts(line), header, "aligned under\n{}\n{line}", lines[0]);
    }
    stack.shutdown().await;
}

/// `n` checkout events for `HandleStripeEvents`, ids made unique by `tag`.
fn checkouts(tag: &str, n: usize) -> Vec<payments_proto::v1::StripeEvent> {
    (0..n)
        .map(|i| {
            let body = variant(PAID, &format!("_{tag}{i}"));
            payments_proto::stripe::parse_event(body).expect("a Stripe event")
        })
        .collect()
}

async fn handle_all(client: &mut PaymentsClient<Channel>, events: Vec<payments_proto::v1::StripeEvent>) {
    let answer = client
        .handle_stripe_events(HandleStripeEventsRequest { events, traceparents: Vec::new() })
        .await
        .expect("handled");
    for result in answer.into_inner().results {
        match result.result {
            Some(payments_proto::v1::stripe_event_result::Result::Handled(handled)) => {
                assert_eq!(handled.outcome(), Outcome::Processed)
            }
            other => panic!("not processed: {other:?}"),
        }
    }
}

on_both_databases!(two_replicas_writing_while_a_consumer_reads_give_it_every_change_once_in_order);
async fn two_replicas_writing_while_a_consumer_reads_give_it_every_change_once_in_order(db: TestDb) {
    let url = db.url.clone();
    let stack = Stack::start(db).await;
    let replica = crate::helpers::Replica::start(&url).await;
    let mut watching = stack.grpc().await;
    let mut live = watch(&mut watching, 0).await;

    let mut writers = tokio::task::JoinSet::new();
    for (n, target) in (0..8).map(|n| (n, if n % 2 == 0 { stack.grpc_url() } else { replica.grpc_url() })) {
        writers.spawn(async move {
            let mut client = PaymentsClient::connect(target).await.expect("connects");
            for round in 0..5 {
                handle_all(&mut client, checkouts(&format!("w{n}r{round}x"), 10)).await;
            }
        });
    }
    writers.join_all().await;
    let received = next_changes(&mut live, 400).await;

    assert_is_the_feed(&stack, 0, &received).await;
    assert_eq!(stack.purchases().await.len(), 400);
    replica.stop().await;
    stack.shutdown().await;
}

on_both_databases!(each_change_of_a_batch_names_the_event_that_made_it);
async fn each_change_of_a_batch_names_the_event_that_made_it(db: TestDb) {
    let stack = Stack::start(db).await;
    let settled = variant(PAID, "_settled");
    stack.deliver(&settled).await;
    stack.deliver(&own_buyer(UNPAID, "_pair_late")).await;
    let before = stack.changes().await.len();
    // One call, so one batch where the database allows: sessions that each
    // get a pending and a paid event (in both orders), a pending purchase
    // that is paid now, sessions paid at once, and a redelivery of the
    // event already applied.
    let mut bodies = Vec::new();
    for n in 0..4 {
        let pair = [own_buyer(UNPAID, &format!("_pair{n}")), own_buyer(SUCCEEDED, &format!("_pair{n}"))];
        bodies.extend(if n % 2 == 0 { pair.to_vec() } else { pair.into_iter().rev().collect() });
    }
    bodies.push(own_buyer(SUCCEEDED, "_pair_late"));
    bodies.extend((0..4).map(|n| variant(PAID, &format!("_single{n}"))));
    bodies.push(settled);
    let events = bodies.iter().map(|body| payments_proto::stripe::parse_event(body.clone()).expect("event"));
    let request = HandleStripeEventsRequest { events: events.collect(), traceparents: Vec::new() };

    let answer = stack.grpc().await.handle_stripe_events(request).await.expect("handled").into_inner();

    assert_eq!(answer.results.len(), bodies.len());
    // What each event would make of its session's purchase on its own.
    let made: BTreeMap<String, (String, &str)> = bodies
        .iter()
        .map(|body| {
            let event: serde_json::Value = serde_json::from_slice(body).expect("JSON");
            let paid = event["data"]["object"]["payment_status"] == "paid";
            let session = event["data"]["object"]["id"].as_str().expect("session").to_owned();
            (event["id"].as_str().expect("id").to_owned(), (session, if paid { "paid" } else { "pending" }))
        })
        .collect();
    let sessions: BTreeMap<i64, course_purchase::Model> =
        stack.purchases().await.into_iter().map(|purchase| (purchase.id, purchase)).collect();
    let changes = stack.changes().await.split_off(before);
    assert!(changes.len() >= 9, "at least one change per session written: {changes:#?}");
    for change in &changes {
        let purchase = &sessions[&change.purchase_id];
        let (session, status) = made.get(&change.cause_event_id).expect("the cause is one of the events");
        assert_eq!(
            (session.as_str(), *status),
            (purchase.stripe_checkout_session_id.as_str(), change.status.as_str()),
            "a change names the event that made it: {change:?}"
        );
    }
    for purchase in sessions.values() {
        let last =
            assert_each_change_is_a_change(&stack, &purchase.stripe_checkout_session_id, "batch").await;
        assert_eq!(purchase.access_cause.as_deref(), Some(last.cause_event_id.as_str()), "{purchase:?}");
        assert_eq!(purchase.access_status, Some(last.status), "{purchase:?}");
    }
    let pairs: Vec<&course_purchase::Model> =
        sessions.values().filter(|p| p.stripe_checkout_session_id.contains("_pair")).collect();
    assert_eq!(pairs.len(), 5);
    assert!(pairs.iter().all(|p| p.has_access), "the paid event wins each pair: {pairs:#?}");
    stack.shutdown().await;
}

/// `variant` of an asynchronous payment's event, bought by a buyer of its
/// own: the fixtures of one asynchronous payment share the buyer and payment.
fn own_buyer(name: &str, suffix: &str) -> Bytes {
    const BUYER: &str = "\"1007\"";
    const PAYMENT: &str = "\"pi_3W0MvBrbFhT8YL4s8sweQJO3\"";
    let text = String::from_utf8(variant(name, suffix).to_vec()).expect("UTF-8");
    let own = |id: &str| format!("{}{suffix}\"", id.trim_end_matches('"'));
    Bytes::from(text.replace(BUYER, &own(BUYER)).replace(PAYMENT, &own(PAYMENT)))
}

on_both_databases!(a_writer_that_took_a_cursor_first_but_commits_last_is_not_skipped);
async fn a_writer_that_took_a_cursor_first_but_commits_last_is_not_skipped(db: TestDb) {
    let url = db.url.clone();
    let stack = Stack::start(db).await;
    stack.deliver(&variant(PAID, "_settled")).await;
    let before = stack.changes().await.last().expect("a change").cursor;
    let mut client = stack.grpc().await;
    let mut live = watch(&mut client, before as u64).await;

    // A writer that takes its cursor now and commits only at the end.
    let held = Database::connect(&url).await.expect("connects");
    let txn = held.begin().await.expect("begins");
    let purchase = NewPurchase {
        source: PurchaseSource::Webhook,
        user_id: "held-user".into(),
        course_id: "held-course".into(),
        checkout_session_id: "cs_held".into(),
        payment_intent_id: None,
        amount_total: Some(100),
        currency: Some("usd".into()),
        checkout_created: None,
    };
    let policy = Policy { livemode: false, dispute_access: DisputeAccess::Suspend };
    let held_write = [Input::Plan { plan: Plan::Record(purchase, CheckoutStatus::Paid), cause: "evt_held" }];
    let decision = write::apply_in(&txn, &held_write, policy, Utc::now()).await.expect("writes");
    assert_eq!(decision.changes.len(), 1, "one change published");

    // Others write meanwhile; whatever they commit, the consumer reads.
    let bodies: Vec<Bytes> = (0..5).map(|n| variant(PAID, &format!("_later{n}"))).collect();
    let deliveries = {
        let (http, url) = (stack.http.clone(), stack.url("/api/payments/webhook"));
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for body in bodies {
                let signature = e2e::signature_now(&crate::helpers::secret(), &body);
                answers.push(http.post_webhook(&url, body, Some(&signature)).await.expect("HTTP").status);
            }
            answers
        })
    };
    eventually(DEADLINE, "the other writers committed or waited", || async {
        deliveries.is_finished() || others_wait(&stack).await
    })
    .await;
    let committed = stack.changes().await.iter().filter(|c| c.cursor > before).count();
    let read_before = next_changes(&mut live, committed).await;
    txn.commit().await.expect("commits");
    let answers = deliveries.await.expect("deliveries");
    let total = stack.changes().await.iter().filter(|c| c.cursor > before).count();
    let read_after = next_changes(&mut live, total - committed).await;

    assert!(answers.iter().all(|status| *status == StatusCode::OK), "{answers:?}");
    let received: Vec<PurchaseChange> = read_before.into_iter().chain(read_after).collect();
    assert_is_the_feed(&stack, before, &received).await;
    assert!(received.iter().any(|c| c.cause_event_id == "evt_held"), "the late writer's change arrived");
    stack.shutdown().await;
}

/// Whether payments-svc's writers are waiting behind the held transaction:
/// on PostgreSQL, a transaction waits for the feed's lock; on SQLite, whose
/// one writer is the held transaction, a batch has been taken up.
async fn others_wait(stack: &Stack) -> bool {
    if stack.db.get_database_backend() == DbBackend::Postgres {
        // Writers wait for the held one on the write counter's row lock.
        let waiting = "SELECT count(*) AS n FROM pg_locks WHERE NOT granted";
        let row = stack.db.query_one_raw(sea_orm::Statement::from_string(DbBackend::Postgres, waiting));
        let row = row.await.expect("pg_locks").expect("a row");
        return row.try_get::<i64>("", "n").expect("count") > 0;
    }
    metric(&stack.payments_metrics().await, "payments_batch_size_count") >= 1.0
}

on_both_databases!(stuck_consumers_hold_back_neither_events_nor_other_consumers_and_miss_nothing);
async fn stuck_consumers_hold_back_neither_events_nor_other_consumers_and_miss_nothing(db: TestDb) {
    let stack = Stack::start(db).await;
    let mut client = stack.grpc().await;
    let mut stuck = Vec::new();
    for _ in 0..20 {
        // Each on a connection of its own, as separate consumers are, that
        // takes in a few changes at most while nobody reads them: so
        // back-pressure, not the client's buffers, holds back the rest.
        let endpoint = tonic::transport::Endpoint::from_shared(stack.grpc_url()).expect("URL");
        let channel = endpoint.initial_stream_window_size(Some(1024)).connect().await.expect("connects");
        stuck.push(watch(&mut PaymentsClient::new(channel), 0).await);
    }
    let mut live = watch(&mut client, 0).await;

    for round in 0..4 {
        handle_all(&mut client, checkouts(&format!("stuck{round}x"), 50)).await;
    }
    let received = next_changes(&mut live, 200).await;
    eventually(DEADLINE, "the metrics to count 21 watchers, the stuck ones behind", || async {
        let metrics = stack.payments_metrics().await;
        metric(&metrics, "payments_change_feed_watchers") == 21.0
            && metric(&metrics, "payments_change_feed_lag_cursors") > 0.0
    })
    .await;
    let late = next_changes(&mut stuck[0], 200).await;

    assert_is_the_feed(&stack, 0, &received).await;
    assert_is_the_feed(&stack, 0, &late).await;
    stack.shutdown().await;
}

on_both_databases!(changes_past_their_retention_are_pruned_and_a_cursor_before_them_is_refused);
async fn changes_past_their_retention_are_pruned_and_a_cursor_before_them_is_refused(db: TestDb) {
    let url = db.url.clone();
    let stack = Stack::start(db).await;
    for n in 0..5 {
        stack.deliver(&variant(PAID, &format!("_kept{n}"))).await;
    }
    let cursors: Vec<i64> = stack.changes().await.iter().map(|c| c.cursor).collect();
    let backdated = Utc::now() - chrono::Duration::days(31);
    purchase_change::Entity::update_many()
        .col_expr(purchase_change::Column::At, sea_orm::sea_query::Expr::value(backdated))
        .filter(purchase_change::Column::Cursor.lte(cursors[2]))
        .exec(&stack.db)
        .await
        .expect("backdates");

    let pruned = payments_cli(&url, &[], &["changes", "prune"]);
    let mut client = stack.grpc().await;
    let refused = watch(&mut client, cursors[0] as u64).await.message().await.expect_err("refused");
    let from_oldest = next_changes(&mut watch(&mut client, 0).await, 2).await;
    let from_horizon = next_changes(&mut watch(&mut client, cursors[2] as u64).await, 2).await;

    let printed = String::from_utf8_lossy(&pruned.stdout);
    assert!(printed.contains("removed 3 changes older than 30 days"), "{printed}");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{refused:?}");
    assert!(refused.message().contains(&format!("the oldest kept is {}", cursors[3])), "{refused:?}");
    let trailer = refused.metadata().get("oldest-cursor").and_then(|v| v.to_str().ok());
    assert_eq!(trailer, Some(cursors[3].to_string().as_str()));
    for received in [from_oldest, from_horizon] {
        assert_eq!(received.iter().map(|c| c.cursor as i64).collect::<Vec<_>>(), cursors[3..]);
    }
    stack.shutdown().await;
}

on_both_databases!(a_cursor_beyond_the_newest_change_is_refused_naming_the_newest);
async fn a_cursor_beyond_the_newest_change_is_refused_naming_the_newest(db: TestDb) {
    let stack = Stack::start(db).await;
    for n in 0..3 {
        stack.deliver(&variant(PAID, &format!("_ahead{n}"))).await;
    }
    let newest = stack.changes().await.last().expect("changes").cursor;
    let mut client = stack.grpc().await;
    let mut at_newest = watch(&mut client, newest as u64).await;
    for after in [newest as u64 + 1, newest as u64 + 1_000_000, i64::MAX as u64, u64::MAX] {
        let refused = watch(&mut client, after).await.message().await.expect_err("refused");
        assert_eq!(refused.code(), tonic::Code::FailedPrecondition, "{after}: {refused:?}");
        assert!(refused.message().contains(&format!("beyond the newest change, {newest}")), "{refused:?}");
        let trailer = refused.metadata().get("newest-cursor").and_then(|v| v.to_str().ok());
        assert_eq!(trailer, Some(newest.to_string().as_str()), "{after}");
    }
    stack.deliver(&variant(PAID, "_ahead_next")).await;
    let next = next_changes(&mut at_newest, 1).await;
    assert_eq!(next[0].cursor as i64, stack.changes().await.last().expect("changes").cursor);

    let printed = crate::processes::payments_cli(
        stack.database_url(),
        &[],
        &["changes", "tail", "--after", &(newest as u64 + 1_000_000).to_string()],
    );
    let stderr = String::from_utf8_lossy(&printed.stderr);
    assert!(!printed.status.success() && stderr.contains("beyond the newest change"), "{stderr}");
    stack.shutdown().await;
}

on_both_databases!(purchases_recorded_before_the_feed_are_published_once_at_start_up);
async fn purchases_recorded_before_the_feed_are_published_once_at_start_up(db: TestDb) {
    let mut stack = Stack::start(db).await;
    stack.deliver(&variant(PAID, "_old")).await;
    let forget = "UPDATE course_purchases SET access_status = NULL, has_access = false";
    stack.db.execute_unprepared(forget).await.expect("forgets");
    stack.db.execute_unprepared("DELETE FROM purchase_changes").await.expect("empties the feed");

    stack.restart_payments_svc(StackOptions::default()).await;
    let mut client = stack.grpc().await;
    let published = next_changes(&mut watch(&mut client, 0).await, 1).await;
    stack.restart_payments_svc(StackOptions::default()).await;

    assert_eq!(
        (published[0].kind(), published[0].cause_event_id.as_str()),
        (ChangeKind::Granted, "backfill")
    );
    assert_eq!(published[0].purchase.as_ref().map(|p| p.status()), Some(PurchaseStatus::Paid));
    assert_eq!(stack.changes().await.len(), 1, "published once, not at every start");
    stack.shutdown().await;
}

/// Other replicas are woken by a `NOTIFY` that a replica sends after its
/// commits, and only while some replica listens (holds the listening lock):
/// with nobody listening the notification is skipped, so writers pay
/// nothing for it. Notifications arrive in commit order, so a marker sent
/// after a skipped one shows that nothing came before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_replicas_are_notified_only_while_one_listens() {
    use sea_orm::sqlx::postgres::PgListener;
    let test_db = TestDb::postgres().await;
    let db = Database::connect(&test_db.url).await.expect("connect");
    let mut listener = PgListener::connect(&test_db.url).await.expect("a listening connection");
    listener.listen(signals::CHANNEL).await.expect("LISTEN");

    signals::notify_listeners(&db).await.expect("no replica listens: skipped");
    db.execute_unprepared(&format!("NOTIFY {}, 'marker'", signals::CHANNEL)).await.expect("marker");
    let first = tokio::time::timeout(DEADLINE, listener.recv()).await.expect("in time").expect("received");
    assert_eq!(first.payload(), "marker", "nothing was sent while nobody held the listening lock");

    let holder = db.begin().await.expect("a connection holding the lock, as a listening replica does");
    let statement = format!("SELECT pg_advisory_xact_lock_shared({})", signals::LISTENING_LOCK);
    holder.execute_unprepared(&statement).await.expect("shared lock");
    signals::notify_listeners(&db).await.expect("notified");
    let woken = tokio::time::timeout(DEADLINE, listener.recv()).await.expect("in time").expect("received");
    assert_eq!(woken.payload(), "", "a replica listens: its watchers are woken");
    holder.rollback().await.expect("released");
}
