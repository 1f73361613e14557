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
//! When a purchase becomes paid while another purchase of the same buyer
//! and course grants the course, one of the two is a second payment
//! (`needs_refund`, with a refund owed): the one whose Checkout Session
//! Stripe created later, whichever was reported first (the later arrival
//! when the times are equal or one is unknown). A buyer who pays again after a full refund or a
//! lost dispute is a buyer again, not a duplicate.
//!
//! Cause names beside event ids: [`VERIFY`], [`SYNC`], [`BACKFILL`].

mod model;

use std::collections::{BTreeSet, HashMap};

use model::Model;

use crate::changes::ChangeKind;
use crate::event::{EventStatus, IncomingEvent};
use crate::purchase::{NewPurchase, PurchaseStatus};
use crate::reversals::{Access, Reversal};
use crate::rules::{self, Failure, Outcome, Plan, Policy};

/// `cause_event_id` of the changes a verify call publishes.
pub const VERIFY: &str = "verify";
/// `cause_event_id` of the changes `payments-svc sync` publishes, and the
/// reporting event of the facts it records.
pub const SYNC: &str = "sync";
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

/// What makes two reports of money going back the same fact: the object,
/// its status and its amount.
pub fn fact_key(fact: &Reversal) -> (String, &'static str, i64) {
    (fact.object_id.clone(), fact.status.as_str(), fact.amount)
}

/// The status (and reason) an event is stored with after `outcome`.
pub(crate) fn settled_as(outcome: &Outcome) -> (EventStatus, Option<Failure>) {
    match outcome {
        Outcome::Processed | Outcome::Duplicate => (EventStatus::Processed, None),
        Outcome::Ignored { reason } => (EventStatus::Ignored, Some(reason.clone())),
        Outcome::Failed { error } => (EventStatus::Failed, Some(error.clone())),
    }
}

#[cfg(test)]
mod tests;
