//! Two payments-svc replicas on one database, hammered with the same
//! events at once: each event is applied exactly once, whichever replica
//! gets it first, and second payments are decided once per family. The
//! write path's lock is what makes that hold; without it both replicas
//! would read the same state, both apply, and both publish.

use std::collections::HashMap;

use bytes::Bytes;
use e2e::{unique_paid_event, with_fresh_ids};
use payments_proto::v1::Outcome;
use payments_proto::v1::payments_client::PaymentsClient;
use payments_svc::store::entities::course_purchase::AccessStatus;

use crate::helpers::{Stack, TestDb, on_both_databases};

/// Buyers, each paying twice for one course.
const FAMILIES: usize = 6;

/// Both payments of buyer `n`: the same course and buyer, their own
/// sessions, payment intents and event ids.
fn two_payments_of(n: usize) -> [Bytes; 2] {
    let base = unique_paid_event(n).expect("event");
    let first = with_fresh_ids(&base, "_first").expect("variant");
    let second = with_fresh_ids(&base, "_second").expect("variant");
    [first, second]
}

/// A replica running beside the stack's payments-svc, on the same database.
async fn second_replica(
    url: &str,
) -> (String, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let settings =
        payments_svc::config::Settings::try_from(payments_svc::config::Args::local(url)).expect("settings");
    let app = payments_svc::startup::Application::build(&settings).await.expect("a second replica");
    let address = format!("http://{}", app.local_addr());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(async move {
        let _ = app
            .run_until_stopped(async move {
                let _ = stopped.await;
            })
            .await;
    });
    (address, stop, running)
}

on_both_databases!(two_replicas_given_the_same_events_at_once_apply_each_once_and_flag_each_second_payment);
async fn two_replicas_given_the_same_events_at_once_apply_each_once_and_flag_each_second_payment(db: TestDb) {
    let url = db.url.clone();
    let stack = Stack::start(db).await;
    let (replica_url, stop, replica) = second_replica(&url).await;
    let replicas = [stack.grpc_url(), replica_url];
    let bodies: Vec<Bytes> = (0..FAMILIES).flat_map(two_payments_of).collect();

    // Every event to both replicas at once, each replica getting them in
    // another order.
    let mut calls = Vec::new();
    for (r, replica) in replicas.iter().enumerate() {
        let order: Vec<Bytes> = if r == 0 { bodies.clone() } else { bodies.iter().rev().cloned().collect() };
        for body in order {
            let replica = replica.clone();
            calls.push(tokio::spawn(async move {
                let mut client = PaymentsClient::connect(replica).await.expect("connects");
                let event = payments_proto::stripe::parse_event(body).expect("parses");
                let id = event.id.clone();
                let answer = client.handle_stripe_event(event).await.expect("answered").into_inner();
                (id, answer.outcome())
            }));
        }
    }
    let mut outcomes: HashMap<String, Vec<Outcome>> = HashMap::new();
    for call in calls {
        let (id, outcome) = call.await.expect("call");
        outcomes.entry(id).or_default().push(outcome);
    }
    let _ = stop.send(());
    let _ = replica.await;

    assert_eq!(outcomes.len(), 2 * FAMILIES);
    for (id, mut answers) in outcomes {
        answers.sort_by_key(|outcome| *outcome as i32);
        assert_eq!(answers, [Outcome::Processed, Outcome::Duplicate], "{id}: applied by one replica only");
    }
    let purchases = stack.purchases().await;
    assert_eq!(purchases.len(), 2 * FAMILIES, "one purchase per session");
    let mut families: HashMap<&str, Vec<_>> = HashMap::new();
    for purchase in &purchases {
        families.entry(purchase.user_id.as_str()).or_default().push(purchase);
    }
    for (user, family) in &families {
        let flagged = family.iter().filter(|p| p.needs_refund).count();
        let granting = family.iter().filter(|p| p.has_access).count();
        assert_eq!((flagged, granting), (1, 1), "{user}: one keeps the course, one is owed a refund");
    }
    let changes = stack.changes().await;
    assert_eq!(changes.len(), 2 * FAMILIES, "one change per purchase, none published twice: {changes:#?}");
    for purchase in &purchases {
        let last = changes.iter().rfind(|c| c.purchase_id == purchase.id).expect("published");
        assert_eq!((last.status, last.has_access), (AccessStatus::Paid, purchase.has_access), "{purchase:?}");
    }
    let events = stack.events().await;
    assert!(events.iter().all(|e| e.delivery_count == 2), "both deliveries counted once each: {events:?}");
    stack.shutdown().await;
}
