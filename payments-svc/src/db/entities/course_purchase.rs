//! At most one row per Stripe Checkout Session
//! (`stripe_checkout_session_id` is UNIQUE).

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "course_purchases")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    pub user_id: String,
    pub course_id: String,
    #[sea_orm(unique)]
    pub stripe_checkout_session_id: String,
    pub stripe_payment_intent_id: Option<String>,
    /// In the currency's smallest unit.
    pub amount_total: Option<i64>,
    pub currency: Option<String>,
    pub status: PurchaseStatus,
    pub source: PurchaseSource,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum PurchaseStatus {
    /// Paid (or free): the user has access.
    #[sea_orm(string_value = "paid")]
    Paid,
}

/// Which path first recorded the purchase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum PurchaseSource {
    #[sea_orm(string_value = "webhook")]
    Webhook,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
