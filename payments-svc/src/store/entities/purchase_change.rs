//! One row per change of a purchase's status or access: the change feed's
//! outbox, ordered by `cursor` (see [`crate::store::feed`]).

use sea_orm::entity::prelude::*;

pub use super::course_purchase::AccessStatus;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "purchase_changes")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub cursor: i64,
    pub purchase_id: i64,
    pub kind: ChangeKind,
    /// The purchase's status after the change.
    pub status: AccessStatus,
    pub has_access: bool,
    pub amount_refunded: i64,
    /// The Stripe event behind the change, or `verify`, `backfill`.
    pub cause_event_id: String,
    pub at: DateTimeUtc,
}

/// What the change did to access; see [`payments_domain::changes::ChangeKind`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(32))")]
pub enum ChangeKind {
    #[sea_orm(string_value = "granted")]
    Granted,
    #[sea_orm(string_value = "pending")]
    Pending,
    #[sea_orm(string_value = "failed")]
    Failed,
    #[sea_orm(string_value = "needs_refund")]
    NeedsRefund,
    #[sea_orm(string_value = "partially_refunded")]
    PartiallyRefunded,
    #[sea_orm(string_value = "refunded")]
    Refunded,
    #[sea_orm(string_value = "suspended")]
    Suspended,
    #[sea_orm(string_value = "disputed")]
    Disputed,
    #[sea_orm(string_value = "restored")]
    Restored,
    #[sea_orm(string_value = "revoked")]
    Revoked,
}

super::mapped!(ChangeKind <=> payments_domain::changes::ChangeKind {
    Granted, Pending, Failed, NeedsRefund, PartiallyRefunded, Refunded, Suspended, Disputed, Restored, Revoked,
});

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
