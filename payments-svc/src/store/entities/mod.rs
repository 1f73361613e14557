//! sea-orm entities, kept as plain as generated code. Each closed set a
//! table stores is an `ActiveEnum` of its own here, mapped to the domain's
//! enum by one table of variant pairs ([`mapped!`]); an unknown stored value
//! is an error that names it, never a default.

pub mod course_purchase;
pub mod payment_reversal;
pub mod purchase_change;
pub mod purchase_feed;
pub mod refund_request;
pub mod stripe_webhook_event;
pub mod sync_checkpoint;

/// `From` both ways between a stored enum and the domain's, from one table
/// of variant pairs, so the two cannot drift apart.
macro_rules! mapped {
    ($stored:ident <=> $domain:path { $($variant:ident),+ $(,)? }) => {
        impl From<$domain> for $stored {
            fn from(value: $domain) -> Self {
                type Domain = $domain;
                match value {
                    $(Domain::$variant => Self::$variant,)+
                }
            }
        }

        impl From<$stored> for $domain {
            fn from(value: $stored) -> Self {
                match value {
                    $($stored::$variant => Self::$variant,)+
                }
            }
        }

        impl $stored {
            /// The stored name, the domain's name for the value.
            pub fn as_str(self) -> &'static str {
                <$domain>::from(self).as_str()
            }
        }
    };
}
pub(crate) use mapped;

#[cfg(test)]
mod tests {
    use sea_orm::{ActiveEnum, Iterable};

    /// Every stored value maps to the domain value of the same name and
    /// back: the database and the logs say the same thing.
    fn same_names<S, D>()
    where
        S: ActiveEnum<Value = String> + Iterable + Copy + PartialEq + std::fmt::Debug + From<D>,
        D: From<S> + Copy + std::fmt::Display,
    {
        for stored in S::iter() {
            let domain = D::from(stored);
            assert_eq!(stored.to_value(), domain.to_string(), "{stored:?}");
            assert_eq!(S::from(domain), stored);
        }
    }

    #[test]
    fn stored_enums_map_to_the_domain_by_name() {
        use payments_domain as d;
        same_names::<super::course_purchase::PurchaseStatus, d::purchase::PurchaseStatus>();
        same_names::<super::course_purchase::PurchaseSource, d::purchase::PurchaseSource>();
        same_names::<super::course_purchase::AccessStatus, d::reversals::AccessStatus>();
        same_names::<super::purchase_change::ChangeKind, d::changes::ChangeKind>();
        same_names::<super::stripe_webhook_event::EventStatus, d::event::EventStatus>();
        same_names::<super::payment_reversal::ReversalKind, d::reversals::ReversalKind>();
    }
}
