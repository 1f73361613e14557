//! Queries on `refund_requests`: the refunds owed, as durable work.

use chrono::{DateTime, Duration, Utc};
use sea_orm::sea_query::{Expr, ExprTrait, OnConflict};
use sea_orm::{
    ActiveValue::NotSet, ColumnTrait, Condition, ConnectionTrait, DbErr, EntityTrait, QueryFilter,
    QueryOrder, QuerySelect, Set,
};

use super::entities::refund_request::{ActiveModel, Column, Entity, Model, RefundRequestStatus};

/// The `Idempotency-Key` of the refund owed for `checkout_session_id`:
/// derived from the purchase, so every attempt, from any replica or
/// command, asks Stripe for the same refund.
pub fn idempotency_key(checkout_session_id: &str) -> String {
    format!("duplicate-purchase-refund-{checkout_session_id}")
}

/// Records that the purchase of `checkout_session_id` is owed a refund of
/// its payment; nothing when it is recorded already.
pub async fn owe(
    db: &impl ConnectionTrait,
    checkout_session_id: &str,
    payment_intent_id: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    let row = ActiveModel {
        id: NotSet,
        checkout_session_id: Set(checkout_session_id.to_owned()),
        payment_intent_id: Set(payment_intent_id.to_owned()),
        idempotency_key: Set(idempotency_key(checkout_session_id)),
        status: Set(RefundRequestStatus::Pending),
        stripe_refund_id: Set(None),
        attempts: Set(0),
        next_attempt_at: Set(now),
        claimed_until: Set(None),
        last_error: Set(None),
        created_at: Set(now),
        updated_at: Set(now),
    };
    let once = OnConflict::column(Column::CheckoutSessionId).do_nothing().to_owned();
    Entity::insert(row).on_conflict(once).try_insert().exec_without_returning(db).await.map(drop)
}

pub async fn find_by_session(
    db: &impl ConnectionTrait,
    checkout_session_id: &str,
) -> Result<Option<Model>, DbErr> {
    Entity::find().filter(Column::CheckoutSessionId.eq(checkout_session_id)).one(db).await
}

/// Pending requests due by `now` and held by nobody, oldest first.
pub async fn due(db: &impl ConnectionTrait, now: DateTime<Utc>, limit: u64) -> Result<Vec<Model>, DbErr> {
    Entity::find()
        .filter(Column::Status.eq(RefundRequestStatus::Pending))
        .filter(Column::NextAttemptAt.lte(now))
        .filter(unclaimed(now))
        .order_by_asc(Column::Id)
        .limit(limit)
        .all(db)
        .await
}

fn unclaimed(now: DateTime<Utc>) -> Condition {
    Condition::any().add(Column::ClaimedUntil.is_null()).add(Column::ClaimedUntil.lt(now))
}

/// Takes request `id` for `lease`, if it is still pending and nobody holds
/// it: one conditional UPDATE, so of two replicas trying at once exactly
/// one succeeds (PostgreSQL re-checks the condition after the row lock).
pub async fn claim(
    db: &impl ConnectionTrait,
    id: i64,
    now: DateTime<Utc>,
    lease: Duration,
) -> Result<bool, DbErr> {
    let updated = Entity::update_many()
        .col_expr(Column::ClaimedUntil, Expr::value(now + lease))
        .col_expr(Column::UpdatedAt, Expr::value(now))
        .filter(Column::Id.eq(id))
        .filter(Column::Status.eq(RefundRequestStatus::Pending))
        .filter(unclaimed(now))
        .exec(db)
        .await?;
    Ok(updated.rows_affected == 1)
}

/// Stripe made refund `refund_id`.
pub async fn requested(
    db: &impl ConnectionTrait,
    id: i64,
    refund_id: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    settle(db, id, RefundRequestStatus::Requested, Some(refund_id), None, now).await
}

/// Stripe refused; an operator decides.
pub async fn failed(
    db: &impl ConnectionTrait,
    id: i64,
    error: &str,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    settle(db, id, RefundRequestStatus::Failed, None, Some(error), now).await
}

async fn settle(
    db: &impl ConnectionTrait,
    id: i64,
    status: RefundRequestStatus,
    refund_id: Option<&str>,
    error: Option<&str>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    Entity::update_many()
        .col_expr(Column::Status, Expr::value(status))
        .col_expr(Column::StripeRefundId, Expr::value(refund_id.map(str::to_owned)))
        .col_expr(Column::LastError, Expr::value(error.map(str::to_owned)))
        .col_expr(Column::Attempts, Expr::col(Column::Attempts).add(1))
        .col_expr(Column::ClaimedUntil, Expr::value(Option::<DateTime<Utc>>::None))
        .col_expr(Column::UpdatedAt, Expr::value(now))
        .filter(Column::Id.eq(id))
        .exec(db)
        .await
        .map(drop)
}

/// A transient failure: try again at `next_attempt_at`.
pub async fn retry_later(
    db: &impl ConnectionTrait,
    id: i64,
    error: &str,
    next_attempt_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<(), DbErr> {
    Entity::update_many()
        .col_expr(Column::LastError, Expr::value(error.to_owned()))
        .col_expr(Column::Attempts, Expr::col(Column::Attempts).add(1))
        .col_expr(Column::NextAttemptAt, Expr::value(next_attempt_at))
        .col_expr(Column::ClaimedUntil, Expr::value(Option::<DateTime<Utc>>::None))
        .col_expr(Column::UpdatedAt, Expr::value(now))
        .filter(Column::Id.eq(id))
        .exec(db)
        .await
        .map(drop)
}
