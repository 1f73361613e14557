//! The one string form of each closed set of values: what the database
//! stores, the logs print and the operator commands show. Each enum's names
//! come from one table ([`named!`]), so the two directions cannot disagree,
//! and a name that is not in the table is an error that says which, never a
//! silent default.

/// A string that names no value of a closed set: a stored value written by
/// a newer version, or a corrupted row.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{name:?} is not a known {set}")]
pub struct UnknownName {
    /// What the value should have been, e.g. `purchase status`.
    pub set: &'static str,
    /// The string found.
    pub name: String,
}

/// `as_str`, `FromStr`, `Display` and `ALL` for an enum, from one table.
macro_rules! named {
    ($enum:ident, $set:literal { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $enum {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The value's string form.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $name,)+
                }
            }
        }

        impl std::str::FromStr for $enum {
            type Err = $crate::names::UnknownName;

            fn from_str(name: &str) -> Result<Self, Self::Err> {
                match name {
                    $($name => Ok(Self::$variant),)+
                    _ => Err($crate::names::UnknownName { set: $set, name: name.to_owned() }),
                }
            }
        }

        impl std::fmt::Display for $enum {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use named;

#[cfg(test)]
mod tests {
    use crate::changes::ChangeKind;
    use crate::event::EventStatus;
    use crate::purchase::{PurchaseSource, PurchaseStatus};
    use crate::reversals::{AccessStatus, DisputeAccess, DisputeStatus, RefundStatus, ReversalKind};
    use crate::rules::FailureCode;

    /// Every value's name parses back to it, and no two share a name.
    fn round_trips<T>(all: &[T])
    where
        T: Copy + PartialEq + std::fmt::Debug + std::fmt::Display + std::str::FromStr,
        T::Err: std::fmt::Debug,
    {
        let mut names = std::collections::HashSet::new();
        for value in all {
            let name = value.to_string();
            assert_eq!(name.parse::<T>().expect("parses"), *value);
            assert!(names.insert(name), "{value:?} shares its name");
        }
    }

    #[test]
    fn every_name_round_trips() {
        round_trips(PurchaseStatus::ALL);
        round_trips(PurchaseSource::ALL);
        round_trips(EventStatus::ALL);
        round_trips(ReversalKind::ALL);
        round_trips(RefundStatus::ALL);
        round_trips(DisputeStatus::ALL);
        round_trips(AccessStatus::ALL);
        round_trips(DisputeAccess::ALL);
        round_trips(ChangeKind::ALL);
        round_trips(FailureCode::ALL);
    }

    #[test]
    fn an_unknown_name_is_an_error_that_names_it() {
        let error = "bogus".parse::<PurchaseStatus>().expect_err("not a status");
        assert_eq!(error.to_string(), "\"bogus\" is not a known purchase status");
    }
}
