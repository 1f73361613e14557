//! How far `payments-svc sync` has come through one of Stripe's lists.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "sync_checkpoints")]
pub struct Model {
    /// `checkout_sessions`, `refunds` or `disputes`.
    #[sea_orm(primary_key, auto_increment = false)]
    pub list: String,
    /// The sync's arguments as given: a run with others starts afresh.
    pub arguments: String,
    /// The window they resolved to when the run started (Unix seconds).
    pub created_gte: i64,
    pub created_lte: i64,
    /// The last object applied: `starting_after` of the next page.
    pub starting_after: Option<String>,
    pub pages: i64,
    pub objects: i64,
    pub finished: bool,
    pub updated_at: DateTimeUtc,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
