//! The state a batch builds as it applies its inputs one after the other:
//! the purchases and facts so far, and what it has decided to write.

use std::collections::{HashMap, HashSet};

use super::{
    ChangeWrite, Decision, EventWrite, FactWrite, PurchaseWrite, RefundOwed, Stored, StoredPurchase,
    fact_key, settled_as,
};
use crate::changes;
use crate::event::IncomingEvent;
use crate::purchase::{NewPurchase, PurchaseStatus};
use crate::reversals::{self, Access, Checkout, DisputeAccess, Reversal};
use crate::rules::{self, Outcome, Plan, Policy};

/// The purchases and facts as the batch leaves them so far.
pub(super) struct Model {
    purchases: Vec<Row>,
    pub(super) by_session: HashMap<String, usize>,
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
    pub(super) fn new(stored: &Stored, dispute_access: DisputeAccess) -> Self {
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

    pub(super) fn apply_event<'a>(
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
    pub(super) fn apply_plan(&mut self, plan: Plan, cause: &str) -> Outcome {
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
                known.checkout_created = purchase.checkout_created.or(known.checkout_created);
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
        if !was_paid && row.status == PurchaseStatus::Paid && !row.needs_refund {
            self.decide_second_payment(at);
        }
        at
    }

    /// `at` has just become paid: if another purchase of its family grants
    /// the course, one of them is a second payment. The one whose Checkout
    /// Session Stripe created first keeps the course, so the answer does
    /// not depend on the order payments are reported in (a late webhook,
    /// a sync that pages newest first); when the times are equal (Stripe
    /// counts seconds) or either is unknown, the purchase that already
    /// grants keeps it rather than hand the course over.
    fn decide_second_payment(&mut self, at: usize) {
        let granting = self.others_granting(at);
        if granting.is_empty() {
            return;
        }
        if granting.iter().all(|other| self.came_first(at, *other)) {
            for other in granting {
                self.flag_second_payment(other);
            }
        } else {
            self.flag_second_payment(at);
        }
    }

    /// The purchases of `at`'s family other than `at` that grant the
    /// course, counted as if `at` did not exist.
    fn others_granting(&self, at: usize) -> Vec<usize> {
        let others: Vec<usize> = self.family_of(at).into_iter().filter(|member| *member != at).collect();
        let accesses = self.accesses(&others);
        others
            .into_iter()
            .zip(accesses)
            .filter(|(_, access)| access.has_access)
            .map(|(other, _)| other)
            .collect()
    }

    /// Whether Stripe created `a`'s Checkout Session before `b`'s; `false`
    /// when either time is unknown.
    fn came_first(&self, a: usize, b: usize) -> bool {
        let (a, b) = (&self.purchases[a].write.purchase, &self.purchases[b].write.purchase);
        matches!((a.checkout_created, b.checkout_created), (Some(first), Some(second)) if first < second)
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
    pub(super) fn publish(&mut self, touched: &[usize], cause: &str) {
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

    pub(super) fn finish(self, mut decision: Decision<'_>) -> Decision<'_> {
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
