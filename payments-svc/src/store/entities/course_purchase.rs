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
    /// A second payment for a course the user already owned through another
    /// session: recorded so the money is accounted for, flagged for refund,
    /// and granting nothing more.
    pub needs_refund: bool,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
    /// What the change feed last published of this purchase: its status with
    /// refunds and disputes counted (an `AccessStatus` name), null before
    /// the first change.
    pub access_status: Option<AccessStatus>,
    /// ... whether it granted the course ...
    pub has_access: bool,
    /// ... the amount refunded ...
    pub amount_refunded: i64,
    /// ... and what caused that change, its `cause_event_id` (null for
    /// purchases last published before this column existed).
    pub access_cause: Option<String>,
    /// When Stripe created the Checkout Session (Unix seconds); null for
    /// purchases recorded before it was kept. Of two payments for one
    /// course, the earlier keeps it.
    pub checkout_created: Option<i64>,
}

/// Where a purchase's checkout stands; see
/// [`payments_domain::purchase::PurchaseStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum PurchaseStatus {
    /// Checkout completed with a delayed payment method (bank debit) that
    /// has not cleared yet: no access.
    #[sea_orm(string_value = "pending")]
    Pending,
    /// The delayed payment failed: no access.
    #[sea_orm(string_value = "failed")]
    Failed,
    /// Paid, or free with a 100% discount: the user has access.
    #[sea_orm(string_value = "paid")]
    Paid,
}

super::mapped!(PurchaseStatus <=> payments_domain::purchase::PurchaseStatus { Pending, Failed, Paid });

/// Which path first recorded the purchase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum PurchaseSource {
    /// A Stripe event delivered to the webhook (or found by the sweep).
    #[sea_orm(string_value = "webhook")]
    Webhook,
    /// The success page's verify call, from the session as Stripe's API
    /// reported it.
    #[sea_orm(string_value = "verify")]
    Verify,
    /// `payments-svc sync`, from Stripe's list of Checkout Sessions.
    #[sea_orm(string_value = "sync")]
    Sync,
}

super::mapped!(PurchaseSource <=> payments_domain::purchase::PurchaseSource { Webhook, Verify, Sync });

/// A purchase's status with refunds and disputes counted, as the change
/// feed published it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum AccessStatus {
    #[sea_orm(string_value = "pending")]
    Pending,
    #[sea_orm(string_value = "failed")]
    Failed,
    #[sea_orm(string_value = "paid")]
    Paid,
    #[sea_orm(string_value = "refunded")]
    Refunded,
    #[sea_orm(string_value = "disputed")]
    Disputed,
    #[sea_orm(string_value = "revoked")]
    Revoked,
}

super::mapped!(AccessStatus <=> payments_domain::reversals::AccessStatus {
    Pending, Failed, Paid, Refunded, Disputed, Revoked,
});

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
