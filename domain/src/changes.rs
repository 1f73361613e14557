//! What counts as a change of a purchase, for the change feed: decided
//! without I/O.
//!
//! The feed publishes a purchase's [`Access`] (status, access, refunded
//! amount) each time it differs from what the feed last published of it.
//! [`kind`] names the difference for consumers; the [`Access`] itself is what
//! they act on, so a consumer that keeps the last change of each purchase
//! holds exactly the purchases' current state.

use crate::names::named;
use crate::reversals::{Access, AccessStatus};

/// What a change did to a purchase's access, for consumers of the feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ChangeKind {
    /// The buyer may take the course (paid, or a delayed payment cleared).
    Granted,
    /// Checkout completed; the delayed payment has not cleared.
    Pending,
    /// The delayed payment failed.
    Failed,
    /// A second payment for a course the buyer owns: no access, refund owed.
    NeedsRefund,
    /// Part of the payment was refunded; access stays.
    PartiallyRefunded,
    /// Refunded in full: access taken back.
    Refunded,
    /// A chargeback was opened: access suspended until it is won.
    Suspended,
    /// A chargeback was opened under `DISPUTE_ACCESS=keep`: access kept.
    Disputed,
    /// Access back after a won dispute or a refund that failed.
    Restored,
    /// A dispute was lost: access taken back for good.
    Revoked,
}

named!(ChangeKind, "change kind" {
    Granted => "granted",
    Pending => "pending",
    Failed => "failed",
    NeedsRefund => "needs_refund",
    PartiallyRefunded => "partially_refunded",
    Refunded => "refunded",
    Suspended => "suspended",
    Disputed => "disputed",
    Restored => "restored",
    Revoked => "revoked",
});

/// What happened, going from `before` (what the feed last published, `None`
/// if nothing yet) to `after`; `None` when nothing did.
pub fn kind(before: Option<Access>, after: Access) -> Option<ChangeKind> {
    if before == Some(after) {
        return None;
    }
    let kind = match after.status {
        AccessStatus::Pending => ChangeKind::Pending,
        AccessStatus::Failed => ChangeKind::Failed,
        AccessStatus::Refunded => ChangeKind::Refunded,
        AccessStatus::Revoked => ChangeKind::Revoked,
        AccessStatus::Disputed if after.has_access => ChangeKind::Disputed,
        AccessStatus::Disputed => ChangeKind::Suspended,
        AccessStatus::Paid if !after.has_access => ChangeKind::NeedsRefund,
        AccessStatus::Paid => match before {
            Some(before) if before.status == AccessStatus::Paid && before.has_access => {
                ChangeKind::PartiallyRefunded
            }
            Some(before) if matches!(before.status, AccessStatus::Disputed | AccessStatus::Refunded) => {
                ChangeKind::Restored
            }
            _ => ChangeKind::Granted,
        },
    };
    Some(kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(status: AccessStatus, has_access: bool, amount_refunded: i64) -> Access {
        Access { status, has_access, amount_refunded }
    }

    #[test]
    fn nothing_changed_is_no_change() {
        let paid = at(AccessStatus::Paid, true, 0);
        assert_eq!(kind(Some(paid), paid), None);
    }

    #[test]
    fn each_transition_is_named_for_what_happened_to_access() {
        use AccessStatus::*;
        let cases = [
            (None, at(Pending, false, 0), ChangeKind::Pending),
            (Some(at(Pending, false, 0)), at(Paid, true, 0), ChangeKind::Granted),
            (Some(at(Pending, false, 0)), at(Failed, false, 0), ChangeKind::Failed),
            (None, at(Paid, false, 0), ChangeKind::NeedsRefund),
            (Some(at(Paid, false, 0)), at(Paid, true, 0), ChangeKind::Granted),
            (Some(at(Paid, true, 0)), at(Paid, false, 0), ChangeKind::NeedsRefund),
            (Some(at(Paid, true, 0)), at(Paid, true, 1000), ChangeKind::PartiallyRefunded),
            (Some(at(Paid, true, 1000)), at(Refunded, false, 4900), ChangeKind::Refunded),
            (Some(at(Refunded, false, 4900)), at(Paid, true, 0), ChangeKind::Restored),
            (Some(at(Paid, true, 0)), at(Disputed, false, 0), ChangeKind::Suspended),
            (Some(at(Paid, true, 0)), at(Disputed, true, 0), ChangeKind::Disputed),
            (Some(at(Disputed, false, 0)), at(Paid, true, 0), ChangeKind::Restored),
            (Some(at(Disputed, false, 0)), at(Revoked, false, 0), ChangeKind::Revoked),
        ];
        for (before, after, expected) in cases {
            assert_eq!(kind(before, after), Some(expected), "{before:?} -> {after:?}");
        }
    }

    #[test]
    fn a_checkout_alone_grants_only_when_paid() {
        let first = |status| kind(None, at(status, status == AccessStatus::Paid, 0));
        assert_eq!(first(AccessStatus::Paid), Some(ChangeKind::Granted));
        assert_eq!(first(AccessStatus::Pending), Some(ChangeKind::Pending));
        assert_eq!(first(AccessStatus::Failed), Some(ChangeKind::Failed));
    }
}
