//! Watchers that have caught up share the replica's one reader of new
//! changes: their number does not multiply the reads of the database, and
//! each still gets every change once, in order. A replica serves at most
//! `PAYMENTS_MAX_WATCHERS` watches.

use std::time::Duration;

use e2e::unique_paid_event;

use crate::feed::{next_changes, watch};
use tonic::Code;

use crate::helpers::{Stack, StackOptions, TestDb, eventually, metric, on_both_databases};

/// Watchers opened at once.
const WATCHERS: usize = 40;

async fn feed_reads(stack: &Stack) -> f64 {
    metric(&stack.payments_metrics().await, "payments_change_feed_reads_total")
}

on_both_databases!(caught_up_watchers_share_one_reader_of_new_changes);
async fn caught_up_watchers_share_one_reader_of_new_changes(db: TestDb) {
    let stack = Stack::start(db).await;
    for n in 0..3 {
        assert_eq!(stack.deliver(&unique_paid_event(n).expect("event")).await.status, 200);
    }
    let mut client = stack.grpc().await;
    let mut streams = Vec::new();
    for _ in 0..WATCHERS {
        let mut stream = watch(&mut client, 0).await;
        assert_eq!(next_changes(&mut stream, 3).await.len(), 3);
        streams.push(stream);
    }
    eventually(Duration::from_secs(5), "the watchers counted", || async {
        metric(&stack.payments_metrics().await, "payments_change_feed_watchers") == WATCHERS as f64
    })
    .await;

    // Idle: each watcher used to look once a second on its own.
    let idle_from = feed_reads(&stack).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = feed_reads(&stack).await - idle_from;
    assert!(idle <= 8.0, "{idle} reads in 3 s with {WATCHERS} idle watchers");

    // Commits: each watcher gets each change, for about one read a commit.
    let busy_from = feed_reads(&stack).await;
    for n in 3..13 {
        assert_eq!(stack.deliver(&unique_paid_event(n).expect("event")).await.status, 200);
    }
    for stream in &mut streams {
        let changes = next_changes(stream, 10).await;
        let cursors: Vec<u64> = changes.iter().map(|change| change.cursor).collect();
        assert!(cursors.windows(2).all(|pair| pair[0] < pair[1]), "in order, once: {cursors:?}");
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await; // the metric is sampled once a second
    let busy = feed_reads(&stack).await - busy_from;
    assert!(busy <= 40.0, "{busy} reads for 10 commits with {WATCHERS} watchers");
    stack.shutdown().await;
}

on_both_databases!(a_replica_serving_its_limit_of_watches_refuses_one_more_until_one_ends);
async fn a_replica_serving_its_limit_of_watches_refuses_one_more_until_one_ends(db: TestDb) {
    let options =
        StackOptions { payments: Some(|settings| settings.max_watchers = 2), ..StackOptions::default() };
    let stack = Stack::start_with(db, options).await;
    assert_eq!(stack.deliver(&unique_paid_event(0).expect("event")).await.status, 200);
    let mut client = stack.grpc().await;
    let mut first = watch(&mut client, 0).await;
    let mut second = watch(&mut client, 0).await;
    assert_eq!(next_changes(&mut first, 1).await.len(), 1);
    assert_eq!(next_changes(&mut second, 1).await.len(), 1);

    let refused = client
        .watch_purchase_changes(payments_proto::v1::WatchPurchaseChangesRequest { after: 0 })
        .await
        .expect_err("a third watch");
    assert_eq!(refused.code(), Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains("PAYMENTS_MAX_WATCHERS"), "{}", refused.message());

    drop(first);
    eventually(Duration::from_secs(5), "a watch accepted once one ended", || {
        let mut client = client.clone();
        async move {
            client
                .watch_purchase_changes(payments_proto::v1::WatchPurchaseChangesRequest { after: 0 })
                .await
                .is_ok()
        }
    })
    .await;
    stack.shutdown().await;
}
