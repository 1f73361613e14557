//! Every ordering of a pool of events, one batch against batches of one,
//! through an in-memory store that writes decisions as storage does.

use std::collections::HashMap;

use super::*;
use crate::event::{PaymentStatus, Session};
use crate::purchase::PurchaseSource;
use crate::reversals::DisputeAccess;
use crate::reversals::{AccessStatus, RefundStatus, ReversalStatus};

const POLICY: Policy = Policy { livemode: false, dispute_access: DisputeAccess::Suspend };

/// An in-memory store that writes decisions as storage does, so a
/// sequence can be applied as one batch or as batches of one.
#[derive(Debug, Default)]
struct Memory {
    events: HashMap<String, EventStatus>,
    purchases: Vec<StoredPurchase>,
    facts: Vec<Reversal>,
    refunds_owed: Vec<RefundOwed>,
    changes: Vec<ChangeWrite>,
}

impl Memory {
    fn apply(&mut self, inputs: &[Input<'_>]) -> HashMap<String, Outcome> {
        let stored = Stored {
            events: self.events.clone(),
            purchases: self.purchases.clone(),
            facts: self.facts.clone(),
        };
        let decision = decide(inputs, &stored, POLICY);
        for write in &decision.events {
            if let Some((status, _)) = &write.settle {
                self.events.insert(write.event.id.clone(), *status);
            }
        }
        for write in decision.purchases {
            let row = StoredPurchase {
                id: write.id.unwrap_or(self.purchases.len() as i64 + 1),
                purchase: write.purchase,
                status: write.status,
                needs_refund: write.needs_refund,
                published: write.published,
                cause: write.cause,
            };
            match self.purchases.iter_mut().find(|p| p.id == row.id) {
                Some(stored) => *stored = row,
                None => self.purchases.push(row),
            }
        }
        self.facts.extend(decision.facts.into_iter().map(|fact| fact.reversal));
        self.refunds_owed.extend(decision.refunds_owed);
        self.changes.extend(decision.changes);
        decision.outcomes.into_iter().map(|(id, outcome)| (id.to_owned(), outcome)).collect()
    }

    /// Everything but row ids, comparable between runs.
    fn state(&self) -> (Vec<String>, Vec<ChangeWrite>, usize) {
        let mut rows: Vec<String> = self
            .purchases
            .iter()
            .map(|p| format!("{:?} {:?} {} {:?}", p.purchase, p.status, p.needs_refund, p.published))
            .collect();
        rows.sort();
        (rows, self.changes.clone(), self.refunds_owed.len())
    }
}

fn session_event(id: &str, session: &str, event_type: &str, paid: bool, user: &str) -> IncomingEvent {
    let metadata = [("courseId", "42"), ("userId", user)].map(|(k, v)| (k.to_owned(), v.to_owned()));
    IncomingEvent {
        id: id.into(),
        event_type: event_type.into(),
        created: 1,
        livemode: false,
        api_version: None,
        session: Some(Session {
            id: session.into(),
            payment_status: if paid { PaymentStatus::Paid } else { PaymentStatus::Unpaid },
            livemode: false,
            payment_intent: Some(format!("pi_{session}")),
            amount_total: Some(4900),
            currency: Some("usd".into()),
            metadata: metadata.into_iter().collect(),
            created: None,
        }),
        reversal: None,
        payload: "{}".into(),
        unstorable: Vec::new(),
    }
}

fn refund_event(id: &str, session: &str, status: RefundStatus) -> IncomingEvent {
    IncomingEvent {
        id: id.into(),
        event_type: "refund.updated".into(),
        created: 1,
        livemode: false,
        api_version: None,
        session: None,
        reversal: Some(Reversal {
            object_id: format!("re_{session}"),
            status: ReversalStatus::Refund(status),
            amount: 4900,
            currency: Some("usd".into()),
            payment_intent_id: Some(format!("pi_{session}")),
            charge_id: None,
        }),
        payload: "{}".into(),
        unstorable: Vec::new(),
    }
}

fn pool() -> Vec<IncomingEvent> {
    vec![
        session_event("evt_a_pending", "cs_a", "checkout.session.completed", false, "u1"),
        session_event("evt_a_paid", "cs_a", "checkout.session.async_payment_succeeded", true, "u1"),
        session_event("evt_b_paid", "cs_b", "checkout.session.completed", true, "u2"),
        refund_event("evt_b_refund", "cs_b", RefundStatus::Succeeded),
        refund_event("evt_b_refund_failed", "cs_b", RefundStatus::Failed),
    ]
}

fn as_inputs<'a>(events: &[&'a IncomingEvent]) -> Vec<Input<'a>> {
    events.iter().map(|event| Input::Event { event, deliveries: 1 }).collect()
}

#[test]
fn one_batch_and_batches_of_one_end_alike_with_the_same_feed_in_every_order() {
    let pool = pool();
    let mut orders: Vec<Vec<usize>> = vec![Vec::new()];
    for n in 0..pool.len() {
        orders = orders
            .into_iter()
            .flat_map(|order| {
                (0..=order.len()).map(move |at| {
                    let mut next = order.clone();
                    next.insert(at, n);
                    next
                })
            })
            .collect();
    }
    for order in orders {
        let events: Vec<&IncomingEvent> =
            order.iter().chain(order.iter().take(2)).map(|n| &pool[*n]).collect();
        let (mut batch, mut single) = (Memory::default(), Memory::default());
        batch.apply(&as_inputs(&events));
        for event in &events {
            single.apply(&as_inputs(&[event]));
        }
        assert_eq!(batch.state(), single.state(), "{order:?}");
    }
}

#[test]
fn a_pending_then_paid_session_publishes_each_step_named_by_its_event() {
    let pool = pool();
    let mut memory = Memory::default();
    memory.apply(&as_inputs(&[&pool[0], &pool[1]]));
    let feed: Vec<(ChangeKind, &str)> =
        memory.changes.iter().map(|change| (change.kind, change.cause.as_str())).collect();
    assert_eq!(feed, [(ChangeKind::Pending, "evt_a_pending"), (ChangeKind::Granted, "evt_a_paid")]);
}

#[test]
fn a_settled_event_delivered_again_writes_nothing_but_its_delivery() {
    let pool = pool();
    let mut memory = Memory::default();
    memory.apply(&as_inputs(&[&pool[2]]));
    let stored = Stored {
        events: memory.events.clone(),
        purchases: memory.purchases.clone(),
        facts: memory.facts.clone(),
    };
    let again = as_inputs(&[&pool[2], &pool[2]]);
    let decision = decide(&again, &stored, POLICY);
    assert_eq!(decision.outcomes["evt_b_paid"], Outcome::Duplicate);
    assert_eq!(decision.events.len(), 1);
    assert_eq!((decision.events[0].deliveries, decision.events[0].settle.clone()), (2, None));
    assert!(decision.purchases.is_empty() && decision.changes.is_empty() && decision.facts.is_empty());
}

#[test]
fn a_second_payment_for_an_owned_course_is_owed_a_refund_but_a_repurchase_after_a_refund_is_not() {
    let first = session_event("evt_1", "cs_1", "checkout.session.completed", true, "u1");
    let second = session_event("evt_2", "cs_2", "checkout.session.completed", true, "u1");
    let mut memory = Memory::default();
    memory.apply(&as_inputs(&[&first, &second]));
    let flagged: Vec<(&str, bool)> =
        memory.purchases.iter().map(|p| (p.purchase.checkout_session_id.as_str(), p.needs_refund)).collect();
    assert_eq!(flagged, [("cs_1", false), ("cs_2", true)]);
    assert_eq!(memory.refunds_owed.len(), 1);
    assert_eq!(memory.changes.last().map(|c| c.kind), Some(ChangeKind::NeedsRefund));

    let refunded = refund_event("evt_refund", "cs_a", RefundStatus::Succeeded);
    let paid = session_event("evt_a", "cs_a", "checkout.session.completed", true, "u9");
    let again = session_event("evt_again", "cs_again", "checkout.session.completed", true, "u9");
    let mut memory = Memory::default();
    memory.apply(&as_inputs(&[&paid, &refunded, &again]));
    let again =
        memory.purchases.iter().find(|p| p.purchase.checkout_session_id == "cs_again").expect("recorded");
    assert!(!again.needs_refund, "a buyer again, not a duplicate");
    assert_eq!(again.published.map(|a| (a.status, a.has_access)), Some((AccessStatus::Paid, true)));
    assert!(memory.refunds_owed.is_empty());
}

/// A paid session of `user` for course 42 that Stripe created at `created`.
fn paid_at(session: &str, user: &str, created: i64) -> IncomingEvent {
    let mut event =
        session_event(&format!("evt_{session}"), session, "checkout.session.completed", true, user);
    if let Some(session) = event.session.as_mut() {
        session.created = Some(created);
    }
    event
}

#[test]
fn of_two_payments_for_one_course_the_session_created_first_keeps_it_in_every_order() {
    let (first, second, third) =
        (paid_at("cs_1", "u1", 100), paid_at("cs_2", "u1", 200), paid_at("cs_3", "u1", 300));
    let orders = [
        [&first, &second, &third],
        [&first, &third, &second],
        [&second, &first, &third],
        [&second, &third, &first],
        [&third, &first, &second],
        [&third, &second, &first],
    ];
    for order in orders {
        let mut memory = Memory::default();
        for event in order {
            memory.apply(&as_inputs(&[event]));
        }
        let mut flagged: Vec<(&str, bool, Option<bool>)> = memory
            .purchases
            .iter()
            .map(|p| {
                (p.purchase.checkout_session_id.as_str(), p.needs_refund, p.published.map(|a| a.has_access))
            })
            .collect();
        flagged.sort();
        assert_eq!(
            flagged,
            [("cs_1", false, Some(true)), ("cs_2", true, Some(false)), ("cs_3", true, Some(false))],
            "{:?}",
            order.map(|e| e.id.as_str())
        );
        let mut owed: Vec<&str> =
            memory.refunds_owed.iter().map(|o| o.checkout_session_id.as_str()).collect();
        owed.sort();
        assert_eq!(owed, ["cs_2", "cs_3"], "one refund for each later payment");
    }
}

#[test]
fn a_refund_before_its_checkout_waits_and_counts_when_the_purchase_arrives() {
    let pool = pool();
    let mut memory = Memory::default();
    memory.apply(&as_inputs(&[&pool[3]]));
    assert!(memory.changes.is_empty(), "no purchase yet");
    memory.apply(&as_inputs(&[&pool[2]]));
    let kinds: Vec<ChangeKind> = memory.changes.iter().map(|change| change.kind).collect();
    assert_eq!(kinds, [ChangeKind::Refunded]);
}

#[test]
fn keys_name_what_a_batch_can_touch() {
    let pool = pool();
    let plan = Plan::Record(
        NewPurchase {
            source: PurchaseSource::Verify,
            user_id: "u7".into(),
            course_id: "c7".into(),
            checkout_session_id: "cs_v".into(),
            payment_intent_id: None,
            amount_total: None,
            currency: None,
            checkout_created: None,
        },
        PurchaseStatus::Paid,
    );
    let inputs = vec![
        Input::Event { event: &pool[1], deliveries: 1 },
        Input::Event { event: &pool[3], deliveries: 1 },
        Input::Plan { plan, cause: VERIFY },
    ];
    let keys = keys(&inputs, POLICY);
    assert_eq!(keys.event_ids.len(), 2);
    assert!(keys.sessions.contains("cs_a") && keys.sessions.contains("cs_v"));
    assert!(keys.checkout_payments.contains("pi_cs_a") && keys.payment_intents.contains("pi_cs_b"));
    assert!(keys.families.contains(&("u1".to_owned(), "42".to_owned())));
    assert!(keys.families.contains(&("u7".to_owned(), "c7".to_owned())));
}
