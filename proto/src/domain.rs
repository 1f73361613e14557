//! The one mapping between `payments.v1` messages and the domain's types
//! (`payments-domain`), in both directions. payments-svc converts here and
//! nowhere else.

use payments_domain::changes::ChangeKind;
use payments_domain::event::{Delivered, IncomingEvent, Invalid, Object, PaymentStatus, Session};
use payments_domain::purchase::PurchaseSource;
use payments_domain::reversals::{AccessStatus, DisputeStatus, RefundStatus, Reversal, ReversalStatus};
use payments_domain::rules::Outcome;
use payments_domain::sync::SessionState;

use crate::v1 as pb;

/// The event as the domain works with it, checked; the first field that
/// breaks the contract otherwise.
pub fn incoming(event: pb::StripeEvent) -> Result<IncomingEvent, Invalid> {
    IncomingEvent::try_from(Delivered::from(event))
}

impl From<pb::StripeEvent> for Delivered {
    fn from(event: pb::StripeEvent) -> Self {
        let object = event.object.map(|object| match object {
            pb::stripe_event::Object::CheckoutSession(session) => Object::Session(session.into()),
            pb::stripe_event::Object::Charge(charge) => Object::Reversal(charge.into()),
            pb::stripe_event::Object::Refund(refund) => Object::Reversal(refund.into()),
            pb::stripe_event::Object::Dispute(dispute) => Object::Reversal(dispute.into()),
        });
        Self {
            id: event.id,
            event_type: event.r#type,
            created: event.created,
            livemode: event.livemode,
            api_version: event.api_version,
            object,
            payload: event.raw_payload.into(),
        }
    }
}

impl From<pb::CheckoutSession> for Session {
    fn from(session: pb::CheckoutSession) -> Self {
        Self {
            payment_status: session.payment_status().into(),
            id: session.id,
            livemode: session.livemode,
            payment_intent: session.payment_intent,
            amount_total: session.amount_total,
            currency: session.currency,
            metadata: session.metadata,
            created: session.created,
        }
    }
}

impl From<pb::Charge> for Reversal {
    fn from(charge: pb::Charge) -> Self {
        Self {
            status: ReversalStatus::Charge { refunded: charge.refunded },
            amount: charge.amount_refunded,
            currency: charge.currency,
            payment_intent_id: charge.payment_intent,
            charge_id: Some(charge.id.clone()),
            object_id: charge.id,
        }
    }
}

impl From<pb::Refund> for Reversal {
    fn from(refund: pb::Refund) -> Self {
        Self {
            status: ReversalStatus::Refund(refund.status().into()),
            object_id: refund.id,
            amount: refund.amount,
            currency: refund.currency,
            payment_intent_id: refund.payment_intent,
            charge_id: refund.charge,
        }
    }
}

impl From<pb::Dispute> for Reversal {
    fn from(dispute: pb::Dispute) -> Self {
        Self {
            status: ReversalStatus::Dispute(dispute.status().into()),
            object_id: dispute.id,
            amount: dispute.amount,
            currency: dispute.currency,
            payment_intent_id: dispute.payment_intent,
            charge_id: dispute.charge,
        }
    }
}

/// `From` between a `payments.v1` enum and the domain's, from one table of
/// variant pairs; `both` each way, for enums whose variants are the same.
macro_rules! same_values {
    (both $pb:ty, $domain:ty { $($name:ident),+ $(,)? }) => {
        same_values!($pb => $domain { $($name => $name),+ });
        same_values!($domain => $pb { $($name => $name),+ });
    };
    ($pb:ty => $domain:ty { $($from:ident => $to:ident),+ $(,)? }) => {
        impl From<$pb> for $domain {
            fn from(value: $pb) -> Self {
                type From = $pb;
                type To = $domain;
                match value {
                    $(From::$from => To::$to,)+
                }
            }
        }
    };
}

same_values!(pb::SessionStatus => SessionState {
    Unspecified => Unknown,
    Open => Open,
    Complete => Complete,
    Expired => Expired,
});
same_values!(pb::PaymentStatus => PaymentStatus {
    Unspecified => Unspecified,
    Paid => Paid,
    Unpaid => Unpaid,
    NoPaymentRequired => NoPaymentRequired,
});
same_values!(both pb::RefundStatus, RefundStatus {
    Unspecified, Pending, RequiresAction, Succeeded, Failed, Canceled,
});
same_values!(both pb::DisputeStatus, DisputeStatus {
    Unspecified, WarningNeedsResponse, WarningUnderReview, WarningClosed, NeedsResponse, UnderReview,
    Won, Prevented, Lost,
});
same_values!(AccessStatus => pb::PurchaseStatus {
    Pending => Pending,
    Failed => Failed,
    Paid => Paid,
    Refunded => Refunded,
    Disputed => Disputed,
    Revoked => Revoked,
});
same_values!(PurchaseSource => pb::PurchaseSource { Webhook => Webhook, Verify => Verify, Sync => Sync });
same_values!(ChangeKind => pb::ChangeKind {
    Granted => Granted,
    Pending => Pending,
    Failed => Failed,
    NeedsRefund => NeedsRefund,
    PartiallyRefunded => PartiallyRefunded,
    Refunded => Refunded,
    Suspended => Suspended,
    Disputed => Disputed,
    Restored => Restored,
    Revoked => Revoked,
});

/// The outcome's code and, for one not applied, why.
pub fn outcome_message(outcome: Outcome) -> pb::HandleStripeEventResponse {
    let (outcome, detail) = match outcome {
        Outcome::Processed => (pb::Outcome::Processed, String::new()),
        Outcome::Duplicate => (pb::Outcome::Duplicate, String::new()),
        Outcome::Ignored { reason } => (pb::Outcome::Ignored, reason.message),
        Outcome::Failed { error } => (pb::Outcome::Failed, error.message),
    };
    pb::HandleStripeEventResponse { outcome: outcome.into(), detail }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The domain's names and the contract's agree for every value both
    /// have, so logs, the database and clients say the same thing.
    #[test]
    fn the_domain_and_the_contract_name_each_value_alike() {
        for status in RefundStatus::ALL {
            let pb = pb::RefundStatus::from_name(status.as_str());
            assert_eq!(RefundStatus::from(pb), *status);
        }
        for status in DisputeStatus::ALL {
            let pb = pb::DisputeStatus::from_name(status.as_str());
            assert_eq!(DisputeStatus::from(pb), *status);
        }
        for status in AccessStatus::ALL {
            assert_eq!(pb::PurchaseStatus::from(*status).as_str(), status.as_str());
        }
        for kind in ChangeKind::ALL {
            assert_eq!(pb::ChangeKind::from(*kind).as_str(), kind.as_str());
        }
        for source in PurchaseSource::ALL {
            assert_eq!(pb::PurchaseSource::from(*source).as_str(), source.as_str());
        }
    }
}
