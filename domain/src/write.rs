//! The one write path: everything a batch of inputs must write, decided
//! from the inputs and the stored state they touch.
//!
//! Every path that changes access hands its inputs here: webhook batches, a
//! single event (a batch of one), a replay, verify's session from Stripe,
//! reconcile's events, the start-up backfill. Storage loads what [`keys`]
//! names, under a lock that keeps other writers out until it commits, calls
//! [`decide`], and writes the [`Decision`] as it is: event rows and their
//! outcomes, purchases, reversal facts, refunds owed and change rows. It
//! keeps no rule of its own, so a rule changed here changes every path.
//!
//! The inputs are applied one after the other, in the order they came, and
//! the changes each one makes are published after it: a batch ends in the
//! same rows and the same change feed as the same inputs applied as batches
//! of one. Within a batch an event that arrives twice is applied once, at
//! its first arrival.
//!
//! A purchase is a second payment for a course (`needs_refund`, with a
//! refund owed) when it becomes paid while another purchase of the same
//! buyer and course grants the course. A buyer who pays again after a full
//! refund or a lost dispute is a buyer again, not a duplicate.

use std::collections::{BTreeSet, HashMap, HashSet};

use crate::changes::{self, ChangeKind};
use crate::event::{EventStatus, IncomingEvent};
use crate::purchase::{NewPurchase, PurchaseStatus};
use crate::reversals::{self, Access, Checkout, DisputeAccess, Reversal};
use crate::rules::{self, Failure, Outcome, Plan, Policy};

/// `cause_event_id` of the changes a verify call publishes.
pub const VERIFY: &str = "verify";
/// `cause_event_id` of the change that first publishes a purchase recorded
/// before the change feed existed.
pub const BACKFILL: &str = "backfill";

/// One thing to apply.
#[derive(Debug, Clone)]
pub enum Input<'a> {
    /// An event: delivered `deliveries` times in this batch, or replayed
    /// from its stored row (0).
    Event { event: &'a IncomingEvent, deliveries: i32 },
    /// A decision made outside an event (verify's session from Stripe),
    /// with the cause its changes name.
    Plan { plan: Plan, cause: &'a str },
    /// Publishes the purchase of this session if the feed has not (the
    /// start-up backfill), naming `cause`.
    Touch { session_id: &'a str, cause: &'a str },
}

/// What storage must load for a batch: the rows of these keys, and the
/// purchases of these buyers' courses (each purchase's family), and the
/// facts that reach all of their payments.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Keys {
    pub event_ids: BTreeSet<String>,
    pub sessions: BTreeSet<String>,
    /// Payments named by facts: their purchases, and their facts.
    pub payment_intents: BTreeSet<String>,
    /// Payments of purchases the batch may create: their facts only (a
    /// refund or dispute may have arrived first).
    pub checkout_payments: BTreeSet<String>,
    /// Charges named without a payment intent: storage resolves each to
    /// its payment through the facts that tie them.
    pub charges: BTreeSet<String>,
    /// `(user_id, course_id)` of purchases the batch may create.
    pub families: BTreeSet<(String, String)>,
}

/// A purchase as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPurchase {
    pub id: i64,
    pub purchase: NewPurchase,
    pub status: PurchaseStatus,
    pub needs_refund: bool,
    /// What the change feed last published of it.
    pub published: Option<Access>,
    /// The cause of that change.
    pub cause: Option<String>,
}

/// The stored state a batch touches, as loaded for [`Keys`].
#[derive(Debug, Clone, Default)]
pub struct Stored {
    /// The status of each event of the batch already stored.
    pub events: HashMap<String, EventStatus>,
    /// Every purchase of every family the keys reach, oldest first.
    pub purchases: Vec<StoredPurchase>,
    /// Every fact recorded for those purchases' payments and the keys'
    /// payment intents and charges, ties included.
    pub facts: Vec<Reversal>,
}

/// How an event row is written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventWrite<'a> {
    pub event: &'a IncomingEvent,
    /// Added to its delivery count.
    pub deliveries: i32,
    /// Settled now as this (its body is the one applied); `None` when it
    /// was settled for good before: only its deliveries are added.
    pub settle: Option<(EventStatus, Option<Failure>)>,
}

/// A purchase row as it is after the batch, to insert or update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PurchaseWrite {
    /// `None` for a purchase this batch creates.
    pub id: Option<i64>,
    pub purchase: NewPurchase,
    pub status: PurchaseStatus,
    pub needs_refund: bool,
    pub published: Option<Access>,
    pub cause: Option<String>,
}

/// A fact to record, and the event that reported it first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactWrite {
    pub reversal: Reversal,
    pub event_id: String,
    /// Stripe's `created` of that event.
    pub created: i64,
}

/// A refund owed for a second payment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefundOwed {
    pub checkout_session_id: String,
    pub payment_intent_id: String,
}

/// One change of a purchase's access, for the feed, in publishing order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChangeWrite {
    pub checkout_session_id: String,
    pub kind: ChangeKind,
    pub access: Access,
    pub cause: String,
}

/// Everything a batch writes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision<'a> {
    /// One per distinct event, in the order they first arrived.
    pub events: Vec<EventWrite<'a>>,
    /// What became of each distinct event, by id.
    pub outcomes: HashMap<&'a str, Outcome>,
    /// Purchases changed in any way, sorted by session.
    pub purchases: Vec<PurchaseWrite>,
    pub facts: Vec<FactWrite>,
    pub refunds_owed: Vec<RefundOwed>,
    pub changes: Vec<ChangeWrite>,
}

/// What storage must load for `inputs` under `policy`.
pub fn keys(inputs: &[Input<'_>], policy: Policy) -> Keys {
    let mut keys = Keys::default();
    for input in inputs {
        let plan = match input {
            Input::Event { event, .. } => {
                keys.event_ids.insert(event.id.clone());
                rules::plan(event, policy)
            }
            Input::Plan { plan, .. } => plan.clone(),
            Input::Touch { session_id, .. } => {
                keys.sessions.insert((*session_id).to_owned());
                continue;
            }
        };
        match plan {
            Plan::Record(purchase, _) => add_purchase(&mut keys, &purchase),
            Plan::Reverse { reversal, .. } => add_payment(&mut keys, &reversal),
            Plan::Acknowledge | Plan::Ignore(_) | Plan::Fail(_) => {}
        }
    }
    keys
}

fn add_purchase(keys: &mut Keys, purchase: &NewPurchase) {
    keys.sessions.insert(purchase.checkout_session_id.clone());
    keys.families.insert((purchase.user_id.clone(), purchase.course_id.clone()));
    keys.checkout_payments.extend(purchase.payment_intent_id.clone());
}

fn add_payment(keys: &mut Keys, reversal: &Reversal) {
    match (&reversal.payment_intent_id, &reversal.charge_id) {
        (Some(payment), _) => {
            keys.payment_intents.insert(payment.clone());
        }
        (None, Some(charge)) => {
            keys.charges.insert(charge.clone());
        }
        (None, None) => {}
    }
}

/// Everything `inputs` write, given what is `stored` of what they touch.
pub fn decide<'a>(inputs: &[Input<'a>], stored: &Stored, policy: Policy) -> Decision<'a> {
    let mut model = Model::new(stored, policy.dispute_access);
    let mut decision = Decision::default();
    let mut position: HashMap<&str, usize> = HashMap::new();
    for input in inputs {
        match input {
            Input::Event { event, deliveries } => {
                if let Some(at) = position.get(event.id.as_str()) {
                    decision.events[*at].deliveries += deliveries;
                    continue;
                }
                position.insert(&event.id, decision.events.len());
                let (write, outcome) = model.apply_event(event, *deliveries, stored, policy);
                decision.events.push(write);
                decision.outcomes.insert(&event.id, outcome);
            }
            Input::Plan { plan, cause } => {
                model.apply_plan(plan.clone(), cause);
            }
            Input::Touch { session_id, cause } => {
                if let Some(at) = model.by_session.get(*session_id).copied() {
                    model.publish(&[at], cause);
                }
            }
        }
    }
    model.finish(decision)
}

/// The purchases and facts as the batch leaves them so far.
struct Model {
    purchases: Vec<Row>,
    by_session: HashMap<String, usize>,
    facts: Vec<Reversal>,
    recorded: HashSet<(String, &'static str, i64)>,
    new_facts: Vec<FactWrite>,
    refunds_owed: Vec<RefundOwed>,
    changes: Vec<ChangeWrite>,
    dispute_access: DisputeAccess,
}

/// A purchase in the model, and whether the batch changed it.
struct Row {
    write: PurchaseWrite,
    dirty: bool,
}

impl Model {
    fn new(stored: &Stored, dispute_access: DisputeAccess) -> Self {
        let mut model = Self {
            purchases: Vec::new(),
            by_session: HashMap::new(),
            facts: Vec::new(),
            recorded: HashSet::new(),
            new_facts: Vec::new(),
            refunds_owed: Vec::new(),
            changes: Vec::new(),
            dispute_access,
        };
        let mut purchases: Vec<&StoredPurchase> = stored.purchases.iter().collect();
        purchases.sort_by_key(|p| p.id);
        for p in purchases {
            let write = PurchaseWrite {
                id: Some(p.id),
                purchase: p.purchase.clone(),
                status: p.status,
                needs_refund: p.needs_refund,
                published: p.published,
                cause: p.cause.clone(),
            };
            model.by_session.insert(p.purchase.checkout_session_id.clone(), model.purchases.len());
            model.purchases.push(Row { write, dirty: false });
        }
        for fact in &stored.facts {
            if model.recorded.insert(fact_key(fact)) {
                model.facts.push(fact.clone());
            }
        }
        model
    }

    fn apply_event<'a>(
        &mut self,
        event: &'a IncomingEvent,
        deliveries: i32,
        stored: &Stored,
        policy: Policy,
    ) -> (EventWrite<'a>, Outcome) {
        if stored.events.get(&event.id).is_some_and(|status| status.is_settled()) {
            return (EventWrite { event, deliveries, settle: None }, Outcome::Duplicate);
        }
        let outcome = self.apply_plan(rules::plan(event, policy), &event.id);
        let (status, error) = settled_as(&outcome);
        (EventWrite { event, deliveries, settle: Some((status, error)) }, outcome)
    }

    /// Carries `plan` out on the model and publishes what it changes.
    fn apply_plan(&mut self, plan: Plan, cause: &str) -> Outcome {
        match plan {
            Plan::Record(purchase, status) => {
                let at = self.record(purchase, status);
                self.publish(&[at], cause);
                Outcome::Processed
            }
            Plan::Reverse { reversal, event_id, created } => {
                let reached = self.reached_by(&reversal);
                if self.recorded.insert(fact_key(&reversal)) {
                    self.facts.push(reversal.clone());
                    self.new_facts.push(FactWrite { reversal, event_id, created });
                }
                self.publish(&reached, cause);
                Outcome::Processed
            }
            Plan::Acknowledge => Outcome::Processed,
            Plan::Ignore(reason) => Outcome::Ignored { reason },
            Plan::Fail(error) => Outcome::Failed { error },
        }
    }

    /// Records `purchase` at `status`, or moves its session's purchase up
    /// to it; returns where it is. A purchase that becomes paid while
    /// another of its family grants the course is a second payment.
    fn record(&mut self, purchase: NewPurchase, status: PurchaseStatus) -> usize {
        let (at, was_paid) = match self.by_session.get(&purchase.checkout_session_id) {
            Some(at) => {
                let row = &mut self.purchases[*at];
                let (before, was_paid) = (row.write.clone(), row.write.status == PurchaseStatus::Paid);
                row.write.status = row.write.status.merge(status);
                let known = &mut row.write.purchase;
                known.payment_intent_id = purchase.payment_intent_id.or(known.payment_intent_id.take());
                known.amount_total = purchase.amount_total.or(known.amount_total);
                known.currency = purchase.currency.or(known.currency.take());
                row.dirty |= row.write != before;
                (*at, was_paid)
            }
            None => {
                let at = self.purchases.len();
                self.by_session.insert(purchase.checkout_session_id.clone(), at);
                let write = PurchaseWrite {
                    id: None,
                    purchase,
                    status,
                    needs_refund: false,
                    published: None,
                    cause: None,
                };
                self.purchases.push(Row { write, dirty: true });
                (at, false)
            }
        };
        let row = &self.purchases[at].write;
        if !was_paid && row.status == PurchaseStatus::Paid && !row.needs_refund && self.another_grants(at) {
            self.flag_second_payment(at);
        }
        at
    }

    /// Whether a purchase of `at`'s family other than `at` grants the
    /// course, counted as if `at` did not exist.
    fn another_grants(&self, at: usize) -> bool {
        let others: Vec<usize> = self.family_of(at).into_iter().filter(|member| *member != at).collect();
        self.accesses(&others).iter().any(|access| access.has_access)
    }

    fn flag_second_payment(&mut self, at: usize) {
        let row = &mut self.purchases[at];
        row.write.needs_refund = true;
        row.dirty = true;
        if let Some(payment) = &row.write.purchase.payment_intent_id {
            self.refunds_owed.push(RefundOwed {
                checkout_session_id: row.write.purchase.checkout_session_id.clone(),
                payment_intent_id: payment.clone(),
            });
        }
    }

    /// The purchases a fact reaches: those of its payment intent, or of
    /// the payment another fact ties its charge to.
    fn reached_by(&self, reversal: &Reversal) -> Vec<usize> {
        let payment = reversal.payment_intent_id.clone().or_else(|| {
            let charge = reversal.charge_id.as_ref()?;
            self.facts
                .iter()
                .find(|fact| fact.charge_id.as_ref() == Some(charge) && fact.payment_intent_id.is_some())
                .and_then(|fact| fact.payment_intent_id.clone())
        });
        let Some(payment) = payment else { return Vec::new() };
        (0..self.purchases.len())
            .filter(|at| {
                self.purchases[*at].write.purchase.payment_intent_id.as_deref() == Some(payment.as_str())
            })
            .collect()
    }

    /// Every purchase of the same buyer and course as `at`, oldest first.
    fn family_of(&self, at: usize) -> Vec<usize> {
        let key = &self.purchases[at].write.purchase;
        (0..self.purchases.len())
            .filter(|each| {
                let other = &self.purchases[*each].write.purchase;
                other.user_id == key.user_id && other.course_id == key.course_id
            })
            .collect()
    }

    /// The facts that reach `payment`: those naming it, and those naming
    /// only a charge another fact ties to it.
    fn facts_of(&self, payment: Option<&str>) -> Vec<Reversal> {
        let Some(payment) = payment else { return Vec::new() };
        let named: Vec<&Reversal> =
            self.facts.iter().filter(|fact| fact.payment_intent_id.as_deref() == Some(payment)).collect();
        let charges: HashSet<&str> = named.iter().filter_map(|fact| fact.charge_id.as_deref()).collect();
        let tied = self.facts.iter().filter(|fact| {
            fact.payment_intent_id.is_none() && fact.charge_id.as_deref().is_some_and(|c| charges.contains(c))
        });
        named.into_iter().chain(tied).cloned().collect()
    }

    /// The access of each of `family`, in the same order.
    fn accesses(&self, family: &[usize]) -> Vec<Access> {
        let counted: Vec<(Checkout, Vec<Reversal>)> = family
            .iter()
            .map(|at| {
                let write = &self.purchases[*at].write;
                let checkout = Checkout {
                    status: write.status,
                    amount_total: write.purchase.amount_total,
                    needs_refund: write.needs_refund,
                };
                (checkout, self.facts_of(write.purchase.payment_intent_id.as_deref()))
            })
            .collect();
        let inputs: Vec<(Checkout, &[Reversal])> =
            counted.iter().map(|(checkout, facts)| (*checkout, facts.as_slice())).collect();
        reversals::family(&inputs, self.dispute_access)
    }

    /// Publishes every change of access among the families of `touched`,
    /// caused by `cause`.
    fn publish(&mut self, touched: &[usize], cause: &str) {
        let mut families: Vec<Vec<usize>> = Vec::new();
        for at in touched {
            let family = self.family_of(*at);
            if !families.contains(&family) {
                families.push(family);
            }
        }
        for family in families {
            for (at, access) in family.iter().zip(self.accesses(&family)) {
                let row = &mut self.purchases[*at];
                let Some(kind) = changes::kind(row.write.published, access) else { continue };
                row.write.published = Some(access);
                row.write.cause = Some(cause.to_owned());
                row.dirty = true;
                self.changes.push(ChangeWrite {
                    checkout_session_id: row.write.purchase.checkout_session_id.clone(),
                    kind,
                    access,
                    cause: cause.to_owned(),
                });
            }
        }
    }

    fn finish(self, mut decision: Decision<'_>) -> Decision<'_> {
        let mut purchases: Vec<PurchaseWrite> =
            self.purchases.into_iter().filter(|row| row.dirty).map(|row| row.write).collect();
        purchases.sort_by(|a, b| a.purchase.checkout_session_id.cmp(&b.purchase.checkout_session_id));
        decision.purchases = purchases;
        decision.facts = self.new_facts;
        decision.refunds_owed = self.refunds_owed;
        decision.changes = self.changes;
        decision
    }
}

/// What makes two reports of money going back the same fact: the object,
/// its status and its amount.
fn fact_key(fact: &Reversal) -> (String, &'static str, i64) {
    (fact.object_id.clone(), fact.status.as_str(), fact.amount)
}

/// The status (and reason) an event is stored with after `outcome`.
fn settled_as(outcome: &Outcome) -> (EventStatus, Option<Failure>) {
    match outcome {
        Outcome::Processed | Outcome::Duplicate => (EventStatus::Processed, None),
        Outcome::Ignored { reason } => (EventStatus::Ignored, Some(reason.clone())),
        Outcome::Failed { error } => (EventStatus::Failed, Some(error.clone())),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::event::{PaymentStatus, Session};
    use crate::purchase::PurchaseSource;
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

    fn as_inputs(events: &[&IncomingEvent]) -> Vec<Input<'static>> {
        events
            .iter()
            .map(|event| Input::Event { event: Box::leak(Box::new((*event).clone())), deliveries: 1 })
            .collect()
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
        let flagged: Vec<(&str, bool)> = memory
            .purchases
            .iter()
            .map(|p| (p.purchase.checkout_session_id.as_str(), p.needs_refund))
            .collect();
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
}
