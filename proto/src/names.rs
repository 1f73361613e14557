//! The one string form of each `payments.v1` enum: the lowercase names
//! Stripe's JSON uses (`PaymentStatus`, `SessionStatus`), and the names the
//! gateway's JSON, the logs and the metrics labels use (`PurchaseStatus`,
//! `Outcome`); `RefundStatus`, `DisputeStatus`, `PurchaseSource` and `ChangeKind` take their
//! names from the domain's enums (Stripe's names for the first two), which are also what
//! payments-svc stores. Prost's own `as_str_name` gives the
//! protobuf names (`PURCHASE_STATUS_PAID`), which no person or client reads.

use crate::v1::{
    ChangeKind, DisputeStatus, Outcome, PaymentStatus, PurchaseSource, PurchaseStatus, RefundStatus,
    SessionStatus,
};

/// `as_str` and `from_name` for an enum whose zero value is `Unspecified`,
/// from one table, so the two directions cannot disagree.
macro_rules! string_forms {
    ($enum:ident { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $enum {
            /// The string form; `"unspecified"` for the zero value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                    Self::Unspecified => "unspecified",
                }
            }

            /// The value whose string form is `name`; `Unspecified` for any
            /// other string, since Stripe may add values.
            pub fn from_name(name: &str) -> Self {
                match name {
                    $($name => Self::$variant,)+
                    _ => Self::Unspecified,
                }
            }
        }
    };
}

/// `as_str` and `from_name` for a contract enum whose values other than
/// `Unspecified` are the domain's: its names are the domain's, written once
/// there.
macro_rules! domain_forms {
    ($enum:ident, $domain:ty) => {
        impl $enum {
            /// The domain's name for the value; `"unspecified"` for the zero value.
            pub fn as_str(self) -> &'static str {
                <$domain>::ALL
                    .iter()
                    .find(|value| $enum::from(**value) == self)
                    .map_or("unspecified", |value| value.as_str())
            }

            /// The value the domain names `name`; `Unspecified` for any other
            /// string, since Stripe may add values.
            pub fn from_name(name: &str) -> Self {
                name.parse::<$domain>().map_or(Self::Unspecified, Self::from)
            }
        }
    };
}

domain_forms!(RefundStatus, payments_domain::reversals::RefundStatus);
domain_forms!(DisputeStatus, payments_domain::reversals::DisputeStatus);
domain_forms!(PurchaseSource, payments_domain::purchase::PurchaseSource);
domain_forms!(ChangeKind, payments_domain::changes::ChangeKind);

string_forms!(PaymentStatus { Paid => "paid", Unpaid => "unpaid", NoPaymentRequired => "no_payment_required" });
string_forms!(SessionStatus { Open => "open", Complete => "complete", Expired => "expired" });
string_forms!(PurchaseStatus {
    Paid => "paid",
    Pending => "pending",
    Failed => "failed",
    Expired => "expired",
    NotFound => "not_found",
    Refunded => "refunded",
    Disputed => "disputed",
    Revoked => "revoked",
});
string_forms!(Outcome { Processed => "processed", Duplicate => "duplicate", Ignored => "ignored", Failed => "failed" });

#[cfg(test)]
mod tests {
    use super::*;

    /// Every value of a prost enum, by trying the numbers it could have.
    fn every<T: TryFrom<i32>>() -> Vec<T> {
        (0..64).filter_map(|n| T::try_from(n).ok()).collect()
    }

    macro_rules! round_trips {
        ($enum:ident) => {{
            let values = every::<$enum>();
            assert!(values.len() > 1, "{} has values", stringify!($enum));
            for value in values {
                assert_eq!($enum::from_name(value.as_str()), value, "{value:?}");
                assert!(value.as_str().bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{value:?}");
            }
        }};
    }

    #[test]
    fn every_value_has_a_lowercase_name_that_reads_back_as_itself() {
        round_trips!(PaymentStatus);
        round_trips!(SessionStatus);
        round_trips!(PurchaseStatus);
        round_trips!(Outcome);
        round_trips!(PurchaseSource);
        round_trips!(RefundStatus);
        round_trips!(DisputeStatus);
        round_trips!(ChangeKind);
    }

    #[test]
    fn an_unknown_name_is_unspecified() {
        assert_eq!(PaymentStatus::from_name("requires_capture"), PaymentStatus::Unspecified);
        assert_eq!(PurchaseStatus::from_name("PAID"), PurchaseStatus::Unspecified);
    }
}
