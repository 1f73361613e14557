//! One refund payments-svc owes: at most one per purchase.

use sea_orm::entity::prelude::*;

#[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
#[sea_orm(table_name = "refund_requests")]
pub struct Model {
    #[sea_orm(primary_key)]
    pub id: i64,
    #[sea_orm(unique)]
    pub checkout_session_id: String,
    pub payment_intent_id: String,
    /// Sent as `Idempotency-Key` on every attempt.
    pub idempotency_key: String,
    pub status: RefundRequestStatus,
    pub stripe_refund_id: Option<String>,
    pub attempts: i32,
    pub next_attempt_at: DateTimeUtc,
    /// A replica working on the request holds it until then.
    pub claimed_until: Option<DateTimeUtc>,
    #[sea_orm(column_type = "Text", nullable)]
    pub last_error: Option<String>,
    pub created_at: DateTimeUtc,
    pub updated_at: DateTimeUtc,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, EnumIter, DeriveActiveEnum)]
#[sea_orm(rs_type = "String", db_type = "String(StringLen::N(16))")]
pub enum RefundRequestStatus {
    /// To be asked of Stripe (again, after a transient failure).
    #[sea_orm(string_value = "pending")]
    Pending,
    /// Stripe made the refund; its webhooks close the loop.
    #[sea_orm(string_value = "requested")]
    Requested,
    /// Stripe refused it; an operator decides.
    #[sea_orm(string_value = "failed")]
    Failed,
}

#[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
pub enum Relation {}

impl ActiveModelBehavior for ActiveModel {}
