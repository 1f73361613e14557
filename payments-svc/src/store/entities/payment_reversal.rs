//! One row per distinct change of money going back: a refund or dispute in
//! one of its statuses, or a refunded charge at one amount. See
//! [`payments_domain::reversals`] for how they decide access.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "payment_reversals")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub kind: ReversalKind,
    /// `re_...`, `dp_...` or `ch_...`.
    pub object_id: String,
    /// The refund's or dispute's status as Stripe named it; for a charge,
    /// `refunded` or `partially_refunded`.
    pub status: String,
    /// The refund's or dispute's amount; for a charge, `amount_refunded`.
    pub amount: i64,
    /// For a charge: refunded in full, as Stripe said.
    pub complete: bool,
    pub currency: Option<String>,
    pub payment_intent_id: Option<String>,
    pub charge_id: Option<String>,
    /// The first event that reported this change.
    pub event_id: String,
    /// Stripe's `created` of that event, in Unix seconds.
    pub stripe_created_at: i64,
    pub recorded_at: DateTimeUtc,
}

/// What kind of Stripe object reported the change.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum ReversalKind {
    #[sea_orm(string_value = "refund")]
    Refund,
    #[sea_orm(string_value = "dispute")]
    Dispute,
    /// A `charge.refunded` snapshot of how much was refunded.
    #[sea_orm(string_value = "charge")]
    Charge,
}

super::mapped!(ReversalKind <=> payments_domain::reversals::ReversalKind { Refund, Dispute, Charge });

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
