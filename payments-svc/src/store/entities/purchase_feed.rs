//! The change feed's one row of bookkeeping.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "purchase_feed")]
pub struct Model {
    #[sea_orm(primary_key, auto_increment = false)]
    pub id: i32,
    /// The newest cursor retention has removed; 0 while none was.
    pub pruned_through: i64,
    /// How many transactions of the write path have committed; see
    /// [`crate::store::write`].
    pub writes: i64,
    /// Where this history of the feed starts: its first cursor is above it,
    /// and a cursor below it is from another history (a rebuilt database).
    pub origin: i64,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
