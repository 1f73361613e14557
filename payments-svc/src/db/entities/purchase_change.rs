//! One row per change of a purchase's status or access: the change feed's
//! outbox, ordered by `cursor` (see [`crate::db::feed`]).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "purchase_changes")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub cursor: i64,
    pub purchase_id: i64,
    /// A `payments.v1.ChangeKind` name: `granted`, `refunded`, ...
    pub kind: String,
    /// The purchase's status after the change (an `AccessStatus` name).
    pub status: String,
    pub has_access: bool,
    pub amount_refunded: i64,
    /// The Stripe event behind the change, or `verify`, `backfill`.
    pub cause_event_id: String,
    pub at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
