//! Purchases as the rules see them: where a checkout stands, where the
//! purchase came from, and a purchase to record.

use crate::names::named;

/// Where a purchase's checkout stands. It only ever moves up in
/// [`PurchaseStatus::rank`]: a late or replayed event never takes access
/// away or revives a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PurchaseStatus {
    /// Checkout completed with a delayed payment method (bank debit) that
    /// has not cleared yet: no access.
    Pending,
    /// The delayed payment failed: no access.
    Failed,
    /// Paid, or free with a 100% discount.
    Paid,
}

named!(PurchaseStatus, "purchase status" { Pending => "pending", Failed => "failed", Paid => "paid" });

impl PurchaseStatus {
    /// The order statuses may move in. Failed outranks pending (the debit
    /// was tried and bounced); paid outranks both, since money received is
    /// never ignored.
    pub fn rank(self) -> i32 {
        match self {
            Self::Pending => 1,
            Self::Failed => 2,
            Self::Paid => 3,
        }
    }

    /// The status a purchase at `self` ends at when `other` is also
    /// reported: the higher of the two.
    pub fn merge(self, other: Self) -> Self {
        if other.rank() > self.rank() { other } else { self }
    }
}

/// Which path first recorded the purchase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PurchaseSource {
    /// A Stripe event delivered to the webhook (or found by the sweep).
    Webhook,
    /// The success page's verify call, from the session as Stripe's API
    /// reported it.
    Verify,
    /// `payments-svc sync`, from Stripe's list of Checkout Sessions.
    Sync,
}

named!(PurchaseSource, "purchase source" { Webhook => "webhook", Verify => "verify", Sync => "sync" });

/// A purchase to record, decided from a verified event or a session
/// fetched from Stripe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPurchase {
    /// Which path records it, if it is the first.
    pub source: PurchaseSource,
    pub user_id: String,
    pub course_id: String,
    pub checkout_session_id: String,
    pub payment_intent_id: Option<String>,
    /// In the currency's smallest unit.
    pub amount_total: Option<i64>,
    pub currency: Option<String>,
    /// When Stripe created the Checkout Session (Unix seconds), when
    /// known: of two payments for one course, the earlier keeps it.
    pub checkout_created: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_only_move_up() {
        assert!(PurchaseStatus::Pending.rank() < PurchaseStatus::Failed.rank());
        assert!(PurchaseStatus::Failed.rank() < PurchaseStatus::Paid.rank());
        for a in PurchaseStatus::ALL {
            for b in PurchaseStatus::ALL {
                assert_eq!(a.merge(*b), b.merge(*a), "{a} and {b} merge to one status in either order");
            }
        }
        assert_eq!(PurchaseStatus::Paid.merge(PurchaseStatus::Pending), PurchaseStatus::Paid);
    }
}
