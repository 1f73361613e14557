//! What Stripe's lists say, as the rules see it: `payments-svc sync` reads
//! Checkout Sessions, refunds and disputes from Stripe's API rather than
//! events, and decides here what each means. A listed session is a snapshot
//! of where it stands now, so it is planned at the status that snapshot
//! implies; the write path then merges it as it merges events (statuses
//! only move up, facts are a set), and the end state is the one the
//! webhooks would have produced.
//!
//! | session `status` | `payment_status`             | payment intent `status`              | purchase becomes |
//! |------------------|------------------------------|--------------------------------------|------------------|
//! | `complete`       | `paid`, `no_payment_required`| any                                  | paid             |
//! | `complete`       | `unpaid`                     | `succeeded`                          | paid             |
//! | `complete`       | `unpaid`                     | `requires_payment_method`, `canceled`| failed           |
//! | `complete`       | `unpaid`                     | `processing`, other, not expanded    | pending          |
//! | `open`, `expired`| any                          | any                                  | skipped          |
//!
//! A session without `courseId`/`userId` metadata is never guessed at: it
//! is reported for an operator, as is anything skipped, with its reason.

use crate::event::{PaymentStatus, Session};
use crate::names::named;
use crate::purchase::{PurchaseSource, PurchaseStatus};
use crate::reversals::Reversal;
use crate::rules::{self, Failure, FailureCode, Plan, Policy};

/// Where a listed Checkout Session stands (its `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionState {
    Open,
    Complete,
    Expired,
    /// Missing, or one Stripe added after this was written.
    Unknown,
}

/// Why a listed object is not applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SkipReason {
    /// The buyer has not finished checking out.
    Open,
    /// The session expired unpaid: nothing to grant.
    Expired,
    /// A session status this service does not know.
    UnknownState,
    /// A complete session whose `payment_status` is missing or unknown.
    UnknownPaymentStatus,
    /// An object of the other Stripe mode than the deployment's.
    Livemode,
    /// A refund or dispute that names neither a payment intent nor a charge.
    Unlinkable,
    /// Stripe listed it, but this client cannot read it.
    Unreadable,
}

named!(SkipReason, "skip reason" {
    Open => "open",
    Expired => "expired",
    UnknownState => "unknown_state",
    UnknownPaymentStatus => "unknown_payment_status",
    Livemode => "livemode",
    Unlinkable => "unlinkable",
    Unreadable => "unreadable",
});

/// What to do with one listed object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Listed {
    /// Apply through the write path.
    Apply(Plan),
    /// A session without the metadata that says who bought what.
    WithoutMetadata(Failure),
    Skip(SkipReason),
}

/// What a listed session means, given its payment intent's `status` when
/// the list expanded it.
pub fn plan_session(
    session: &Session,
    state: SessionState,
    intent_status: Option<&str>,
    policy: Policy,
) -> Listed {
    if rules::check_livemode(session.livemode, policy).is_err() {
        return Listed::Skip(SkipReason::Livemode);
    }
    match state {
        SessionState::Complete => {}
        SessionState::Open => return Listed::Skip(SkipReason::Open),
        SessionState::Expired => return Listed::Skip(SkipReason::Expired),
        SessionState::Unknown => return Listed::Skip(SkipReason::UnknownState),
    }
    let target = match intent_status {
        Some("succeeded") => Some(PurchaseStatus::Paid),
        Some("requires_payment_method" | "canceled") => Some(PurchaseStatus::Failed),
        _ => None,
    };
    // A paid session is paid whatever its intent says since (a refund is
    // a fact of its own); only an unpaid one needs the intent.
    let target = match session.payment_status {
        PaymentStatus::Unpaid => target,
        _ => None,
    };
    match rules::plan_session(session, target, PurchaseSource::Sync) {
        Plan::Fail(failure) if failure.code == FailureCode::InvalidMetadata => {
            Listed::WithoutMetadata(failure)
        }
        Plan::Fail(failure) if failure.code == FailureCode::UnknownPaymentStatus => {
            Listed::Skip(SkipReason::UnknownPaymentStatus)
        }
        Plan::Fail(_) => Listed::Skip(SkipReason::Unreadable),
        plan => Listed::Apply(plan),
    }
}

/// What a listed refund or dispute means: a fact, reported by `reporter`
/// (the sync's cause) at Stripe's `created`.
pub fn plan_reversal(reversal: Reversal, created: i64, reporter: &str) -> Listed {
    if !reversal.is_linkable() {
        return Listed::Skip(SkipReason::Unlinkable);
    }
    Listed::Apply(Plan::Reverse { reversal, event_id: reporter.to_owned(), created })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reversals::DisputeAccess;

    const TEST_MODE: Policy = Policy { livemode: false, dispute_access: DisputeAccess::Suspend };

    fn session(payment_status: PaymentStatus, metadata: bool) -> Session {
        let metadata = if metadata { vec![("courseId", "42"), ("userId", "u1")] } else { Vec::new() };
        Session {
            id: "cs_1".into(),
            payment_status,
            livemode: false,
            payment_intent: Some("pi_1".into()),
            amount_total: Some(4900),
            currency: Some("usd".into()),
            metadata: metadata.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect(),
            created: Some(1_700_000_000),
        }
    }

    /// The status a listed session is recorded at; `None` when skipped.
    fn status_of(listed: Listed) -> Option<PurchaseStatus> {
        match listed {
            Listed::Apply(Plan::Record(purchase, status)) => {
                assert_eq!(purchase.source, PurchaseSource::Sync);
                assert_eq!(purchase.checkout_created, Some(1_700_000_000));
                Some(status)
            }
            Listed::Skip(_) => None,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_table_holds() {
        use PaymentStatus::*;
        use SessionState::*;
        let cases = [
            (Complete, Paid, Some("succeeded"), Some(PurchaseStatus::Paid)),
            (Complete, Paid, Some("canceled"), Some(PurchaseStatus::Paid)),
            (Complete, NoPaymentRequired, None, Some(PurchaseStatus::Paid)),
            (Complete, Unpaid, Some("succeeded"), Some(PurchaseStatus::Paid)),
            (Complete, Unpaid, Some("requires_payment_method"), Some(PurchaseStatus::Failed)),
            (Complete, Unpaid, Some("canceled"), Some(PurchaseStatus::Failed)),
            (Complete, Unpaid, Some("processing"), Some(PurchaseStatus::Pending)),
            (Complete, Unpaid, None, Some(PurchaseStatus::Pending)),
            (Open, Unpaid, None, None),
            (Expired, Unpaid, Some("canceled"), None),
        ];
        for (state, payment_status, intent, expected) in cases {
            let listed = plan_session(&session(payment_status, true), state, intent, TEST_MODE);
            assert_eq!(status_of(listed), expected, "{state:?} {payment_status:?} {intent:?}");
        }
        let open = plan_session(&session(Unpaid, true), Open, None, TEST_MODE);
        assert_eq!(open, Listed::Skip(SkipReason::Open));
        let expired = plan_session(&session(Unpaid, true), Expired, None, TEST_MODE);
        assert_eq!(expired, Listed::Skip(SkipReason::Expired));
    }

    #[test]
    fn sessions_without_metadata_are_reported_never_guessed() {
        let listed =
            plan_session(&session(PaymentStatus::Paid, false), SessionState::Complete, None, TEST_MODE);
        let Listed::WithoutMetadata(failure) = listed else { panic!("{listed:?}") };
        assert_eq!(failure.message, "metadata.courseId is missing; metadata.userId is missing");
    }

    #[test]
    fn the_other_mode_and_unknown_statuses_are_skipped() {
        let live = Policy { livemode: true, ..TEST_MODE };
        let paid = session(PaymentStatus::Paid, true);
        assert_eq!(
            plan_session(&paid, SessionState::Complete, None, live),
            Listed::Skip(SkipReason::Livemode)
        );
        let unknown = session(PaymentStatus::Unspecified, true);
        assert_eq!(
            plan_session(&unknown, SessionState::Complete, None, TEST_MODE),
            Listed::Skip(SkipReason::UnknownPaymentStatus)
        );
    }
}
