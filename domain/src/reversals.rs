//! Money that goes back takes access back: the access rules for refunds
//! and disputes, decided without I/O.
//!
//! Every refund, dispute or refunded-charge event is stored as a
//! [`Reversal`], a fact about one change (the object, its status, its
//! amount). A purchase's access is then a fold, [`access`], over its
//! checkout outcome and every fact that reaches its payment: a set, so the
//! answer depends only on which events arrived, never on their order, timing
//! or repetition. A reversal that arrives before its checkout waits among the
//! facts and counts as soon as the purchase exists.
//!
//! | what happened | status | access |
//! |---|---|---|
//! | refunds that succeeded add up to the amount paid (or `charge.refunded` with `refunded: true`) | `refunded` | no |
//! | a partial refund | stays `paid`, refunded amount recorded | yes |
//! | a refund that had succeeded fails or is canceled: the money is back with the merchant | as without that refund | as that status |
//! | a dispute is opened (`needs_response`, `under_review`) | `disputed` | no, unless `DISPUTE_ACCESS=keep` |
//! | an inquiry (`warning_needs_response`, `warning_under_review`, `warning_closed`) | unchanged | unchanged |
//! | the dispute is won (`won`, `prevented`) | back to `paid` | yes |
//! | the dispute is lost (`lost`) | `revoked`, final: no later event grants it again | no |
//!
//! A refund seen as `failed` or `canceled` counts as not refunded whatever
//! else was seen of it, since a refund never succeeds after failing. A
//! charge's `amount_refunded` is a snapshot that may include refunds that
//! failed later; those refunds' amounts are taken off it. A dispute seen
//! `lost` is lost for good, one seen `won` or `prevented` is closed for the
//! merchant, and one seen only open is open.

use std::collections::BTreeMap;

use crate::names::{UnknownName, named};
use crate::purchase::PurchaseStatus;

/// What kind of Stripe object reported money going back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ReversalKind {
    /// A refund or partial refund, as `charge.refunded` reports it.
    Charge,
    Refund,
    Dispute,
}

named!(ReversalKind, "reversal kind" { Charge => "charge", Refund => "refund", Dispute => "dispute" });

/// A refund's status, in Stripe's names; `Unspecified` for one Stripe added
/// after this was written, which counts for nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefundStatus {
    Unspecified,
    Pending,
    RequiresAction,
    Succeeded,
    Failed,
    Canceled,
}

named!(RefundStatus, "refund status" {
    Unspecified => "unspecified",
    Pending => "pending",
    RequiresAction => "requires_action",
    Succeeded => "succeeded",
    Failed => "failed",
    Canceled => "canceled",
});

/// A dispute's status, in Stripe's names; `Unspecified` for one Stripe added
/// after this was written, which counts for nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DisputeStatus {
    Unspecified,
    WarningNeedsResponse,
    WarningUnderReview,
    WarningClosed,
    NeedsResponse,
    UnderReview,
    Won,
    Prevented,
    Lost,
}

named!(DisputeStatus, "dispute status" {
    Unspecified => "unspecified",
    WarningNeedsResponse => "warning_needs_response",
    WarningUnderReview => "warning_under_review",
    WarningClosed => "warning_closed",
    NeedsResponse => "needs_response",
    UnderReview => "under_review",
    Won => "won",
    Prevented => "prevented",
    Lost => "lost",
});

/// The status of a charge snapshot that says it is refunded in full.
pub const CHARGE_REFUNDED: &str = "refunded";
/// The status of a charge snapshot with part of it refunded.
pub const CHARGE_PARTIALLY_REFUNDED: &str = "partially_refunded";

/// What one report of money going back said, by the kind of object that
/// reported it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ReversalStatus {
    /// A charge snapshot: `true` when Stripe says it is refunded in full
    /// (its `refunded`).
    Charge {
        refunded: bool,
    },
    Refund(RefundStatus),
    Dispute(DisputeStatus),
}

impl ReversalStatus {
    pub fn kind(self) -> ReversalKind {
        match self {
            Self::Charge { .. } => ReversalKind::Charge,
            Self::Refund(_) => ReversalKind::Refund,
            Self::Dispute(_) => ReversalKind::Dispute,
        }
    }

    /// The stored name: Stripe's status for refunds and disputes,
    /// [`CHARGE_REFUNDED`] or [`CHARGE_PARTIALLY_REFUNDED`] for charges.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Charge { refunded: true } => CHARGE_REFUNDED,
            Self::Charge { refunded: false } => CHARGE_PARTIALLY_REFUNDED,
            Self::Refund(status) => status.as_str(),
            Self::Dispute(status) => status.as_str(),
        }
    }

    /// The status of a `kind` whose stored name is `name`.
    pub fn parse(kind: ReversalKind, name: &str) -> Result<Self, UnknownName> {
        match kind {
            ReversalKind::Charge => match name {
                CHARGE_REFUNDED => Ok(Self::Charge { refunded: true }),
                CHARGE_PARTIALLY_REFUNDED => Ok(Self::Charge { refunded: false }),
                _ => Err(UnknownName { set: "charge refund status", name: name.to_owned() }),
            },
            ReversalKind::Refund => name.parse().map(Self::Refund),
            ReversalKind::Dispute => name.parse().map(Self::Dispute),
        }
    }
}

/// One change of money going back, as one event reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reversal {
    /// `re_...`, `dp_...` or `ch_...`.
    pub object_id: String,
    pub status: ReversalStatus,
    /// The refund's or dispute's amount; a charge's `amount_refunded`.
    pub amount: i64,
    pub currency: Option<String>,
    pub payment_intent_id: Option<String>,
    pub charge_id: Option<String>,
}

impl Reversal {
    pub fn kind(&self) -> ReversalKind {
        self.status.kind()
    }

    /// For a charge: refunded in full (Stripe's `refunded`).
    pub fn complete(&self) -> bool {
        self.status == ReversalStatus::Charge { refunded: true }
    }

    /// Whether this fact can ever reach a purchase.
    pub fn is_linkable(&self) -> bool {
        self.payment_intent_id.is_some() || self.charge_id.is_some()
    }
}

/// Whether a buyer keeps the course while a chargeback is open
/// (`DISPUTE_ACCESS`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum DisputeAccess {
    /// No access until the dispute is won (the default).
    #[default]
    Suspend,
    /// Access stays while the dispute is open; a lost one still revokes.
    Keep,
}

named!(DisputeAccess, "dispute access" { Suspend => "suspend", Keep => "keep" });

/// Where a purchase stands once its reversals are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AccessStatus {
    Pending,
    Failed,
    Paid,
    Refunded,
    Disputed,
    Revoked,
}

named!(AccessStatus, "access status" {
    Pending => "pending",
    Failed => "failed",
    Paid => "paid",
    Refunded => "refunded",
    Disputed => "disputed",
    Revoked => "revoked",
});

/// A purchase's access, all facts counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    pub status: AccessStatus,
    /// Whether the purchase grants the course now.
    pub has_access: bool,
    /// Refunded so far, in the currency's smallest unit.
    pub amount_refunded: i64,
}

/// What the checkout recorded for a purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checkout {
    pub status: PurchaseStatus,
    /// What was paid, when known.
    pub amount_total: Option<i64>,
    /// A second payment for a course already owned: never grants access.
    pub needs_refund: bool,
}

/// What one refund was seen as.
#[derive(Debug, Default)]
struct RefundSeen {
    amount: i64,
    succeeded: bool,
    /// Failed or canceled: the money is with the merchant.
    undone: bool,
}

/// What one dispute was seen as.
#[derive(Debug, Default)]
struct DisputeSeen {
    open: bool,
    won: bool,
    lost: bool,
}

/// The fold: `checkout` with every fact in `facts` counted, in any order.
pub fn access(checkout: Checkout, facts: &[Reversal], policy: DisputeAccess) -> Access {
    let mut refunds: BTreeMap<&str, RefundSeen> = BTreeMap::new();
    let mut disputes: BTreeMap<&str, DisputeSeen> = BTreeMap::new();
    let (mut charge_refunded, mut charge_complete) = (0_i64, false);
    for fact in facts {
        match fact.status {
            ReversalStatus::Refund(status) => {
                let seen = refunds.entry(&fact.object_id).or_default();
                seen.amount = seen.amount.max(fact.amount);
                match status {
                    RefundStatus::Succeeded => seen.succeeded = true,
                    RefundStatus::Failed | RefundStatus::Canceled => seen.undone = true,
                    _ => {}
                }
            }
            ReversalStatus::Dispute(status) => {
                let seen = disputes.entry(&fact.object_id).or_default();
                match status {
                    DisputeStatus::NeedsResponse | DisputeStatus::UnderReview => seen.open = true,
                    DisputeStatus::Won | DisputeStatus::Prevented => seen.won = true,
                    DisputeStatus::Lost => seen.lost = true,
                    _ => {}
                }
            }
            ReversalStatus::Charge { refunded } => {
                charge_refunded = charge_refunded.max(fact.amount);
                charge_complete |= refunded;
            }
        }
    }
    let succeeded: i64 = refunds.values().filter(|r| r.succeeded && !r.undone).map(|r| r.amount).sum();
    let undone: i64 = refunds.values().filter(|r| r.undone).map(|r| r.amount).sum();
    let amount_refunded = succeeded.max(charge_refunded - undone).max(0);
    let refunded_in_full = checkout.amount_total.is_some_and(|paid| paid > 0 && amount_refunded >= paid)
        || (charge_complete && undone == 0);
    let lost = disputes.values().any(|d| d.lost);
    let open = disputes.values().any(|d| d.open && !d.won && !d.lost);

    let status = match checkout.status {
        _ if lost => AccessStatus::Revoked,
        PurchaseStatus::Pending => AccessStatus::Pending,
        PurchaseStatus::Failed => AccessStatus::Failed,
        PurchaseStatus::Paid if refunded_in_full => AccessStatus::Refunded,
        PurchaseStatus::Paid if open => AccessStatus::Disputed,
        PurchaseStatus::Paid => AccessStatus::Paid,
    };
    let grants = match status {
        AccessStatus::Paid => true,
        AccessStatus::Disputed => policy == DisputeAccess::Keep,
        _ => false,
    };
    Access { status, has_access: grants && !checkout.needs_refund, amount_refunded }
}

/// The access of each purchase of one course by one buyer, given each
/// one's checkout and the facts that reach its payment (in the same order).
/// A second payment for a course (`needs_refund`) grants it once no first
/// purchase does any more (the first was refunded or lost a dispute): a
/// buyer who pays again after that is a buyer again, not a duplicate.
pub fn family(purchases: &[(Checkout, &[Reversal])], policy: DisputeAccess) -> Vec<Access> {
    let mut accesses: Vec<Access> =
        purchases.iter().map(|(checkout, facts)| access(*checkout, facts, policy)).collect();
    let first_grants =
        purchases.iter().zip(&accesses).any(|((checkout, _), a)| !checkout.needs_refund && a.has_access);
    for ((checkout, _), access) in purchases.iter().zip(accesses.iter_mut()) {
        if checkout.needs_refund && access.status == AccessStatus::Paid {
            access.has_access = !first_grants;
        }
    }
    accesses
}

#[cfg(test)]
mod tests {
    use super::*;

    const PAID: Checkout =
        Checkout { status: PurchaseStatus::Paid, amount_total: Some(4900), needs_refund: false };

    fn fact(kind: ReversalKind, id: &str, status: &str, amount: i64) -> Reversal {
        Reversal {
            object_id: id.into(),
            status: ReversalStatus::parse(kind, status).expect("a known status"),
            amount,
            currency: Some("usd".into()),
            payment_intent_id: Some("pi_1".into()),
            charge_id: Some("ch_1".into()),
        }
    }

    fn refund(id: &str, status: &str, amount: i64) -> Reversal {
        fact(ReversalKind::Refund, id, status, amount)
    }

    fn dispute(status: &str) -> Reversal {
        fact(ReversalKind::Dispute, "dp_1", status, 4900)
    }

    fn charge(status: &str, amount_refunded: i64) -> Reversal {
        fact(ReversalKind::Charge, "ch_1", status, amount_refunded)
    }

    /// Every ordering of `facts` (with each fact also repeated) folds to
    /// `expected`.
    fn folds_to(facts: &[Reversal], policy: DisputeAccess, expected: (AccessStatus, bool, i64)) {
        let mut orderings = vec![Vec::new()];
        for fact in facts {
            orderings = orderings
                .into_iter()
                .flat_map(|order: Vec<Reversal>| {
                    (0..=order.len()).map(move |at| {
                        let mut next = order.clone();
                        next.insert(at, fact.clone());
                        next
                    })
                })
                .collect();
        }
        for order in orderings {
            let doubled: Vec<Reversal> = order.iter().chain(order.iter().rev()).cloned().collect();
            for facts in [&order, &doubled] {
                let access = access(PAID, facts, policy);
                assert_eq!((access.status, access.has_access, access.amount_refunded), expected, "{facts:?}");
            }
        }
    }

    #[test]
    fn a_full_refund_takes_access_by_refund_or_by_charge() {
        folds_to(
            &[refund("re_1", "succeeded", 4900)],
            DisputeAccess::Suspend,
            (AccessStatus::Refunded, false, 4900),
        );
        folds_to(
            &[charge(CHARGE_REFUNDED, 4900)],
            DisputeAccess::Suspend,
            (AccessStatus::Refunded, false, 4900),
        );
        let both = [
            refund("re_1", "pending", 4900),
            refund("re_1", "succeeded", 4900),
            charge(CHARGE_REFUNDED, 4900),
        ];
        folds_to(&both, DisputeAccess::Suspend, (AccessStatus::Refunded, false, 4900));
    }

    #[test]
    fn partial_refunds_keep_access_and_add_up() {
        folds_to(
            &[charge(CHARGE_PARTIALLY_REFUNDED, 1000)],
            DisputeAccess::Suspend,
            (AccessStatus::Paid, true, 1000),
        );
        let two = [refund("re_1", "succeeded", 1000), refund("re_2", "succeeded", 3900)];
        folds_to(&two, DisputeAccess::Suspend, (AccessStatus::Refunded, false, 4900));
    }

    #[test]
    fn a_refund_that_failed_after_succeeding_gives_access_back() {
        let facts = [
            refund("re_1", "succeeded", 4900),
            refund("re_1", "failed", 4900),
            charge(CHARGE_REFUNDED, 4900),
        ];
        folds_to(&facts, DisputeAccess::Suspend, (AccessStatus::Paid, true, 0));
        let canceled = [refund("re_1", "pending", 4900), refund("re_1", "canceled", 4900)];
        folds_to(&canceled, DisputeAccess::Suspend, (AccessStatus::Paid, true, 0));
    }

    #[test]
    fn an_open_dispute_suspends_unless_kept_and_winning_restores() {
        folds_to(&[dispute("needs_response")], DisputeAccess::Suspend, (AccessStatus::Disputed, false, 0));
        folds_to(&[dispute("under_review")], DisputeAccess::Keep, (AccessStatus::Disputed, true, 0));
        let won = [dispute("needs_response"), dispute("under_review"), dispute("won")];
        folds_to(&won, DisputeAccess::Suspend, (AccessStatus::Paid, true, 0));
        folds_to(
            &[dispute("needs_response"), dispute("prevented")],
            DisputeAccess::Suspend,
            (AccessStatus::Paid, true, 0),
        );
    }

    #[test]
    fn a_lost_dispute_revokes_for_good() {
        let lost =
            [dispute("needs_response"), dispute("lost"), dispute("won"), refund("re_1", "failed", 4900)];
        folds_to(&lost, DisputeAccess::Keep, (AccessStatus::Revoked, false, 0));
    }

    #[test]
    fn inquiries_change_nothing() {
        let inquiry =
            [dispute("warning_needs_response"), dispute("warning_under_review"), dispute("warning_closed")];
        folds_to(&inquiry, DisputeAccess::Suspend, (AccessStatus::Paid, true, 0));
    }

    #[test]
    fn reversals_do_not_make_an_unpaid_checkout_paid_nor_grant_a_duplicate_payment() {
        let pending = Checkout { status: PurchaseStatus::Pending, ..PAID };
        let answer = access(pending, &[dispute("won")], DisputeAccess::Suspend);
        assert_eq!((answer.status, answer.has_access), (AccessStatus::Pending, false));
        let duplicate = Checkout { needs_refund: true, ..PAID };
        assert!(!access(duplicate, &[], DisputeAccess::Suspend).has_access);
    }
}
