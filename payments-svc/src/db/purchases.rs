//! Queries on `course_purchases`.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, CaseStatement, Expr, ExprTrait, Func, OnConflict, SimpleExpr};
use sea_orm::{
    ActiveValue::NotSet, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, Iterable, QueryFilter, QueryOrder,
    Set,
};

use super::entities::course_purchase::{ActiveModel, Column, Entity, Model, PurchaseStatus};
use crate::fulfilment::NewPurchase;

/// Records `purchase` at `status`, or moves the session's existing purchase
/// up to `status`; never down (see [`PurchaseStatus::rank`]). One statement,
/// `INSERT ... ON CONFLICT (stripe_checkout_session_id) DO UPDATE ... WHERE
/// rank(current) < rank(new)`, so concurrent callers and any order of events
/// end in the same row. Returns whether the row was written.
///
/// Fails with a unique violation when this would make a second paid,
/// unflagged purchase of the same course by the same user; the caller then
/// records it with `needs_refund`.
pub async fn advance(
    db: &impl ConnectionTrait,
    purchase: &NewPurchase,
    status: PurchaseStatus,
    needs_refund: bool,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    let row = ActiveModel {
        id: NotSet,
        user_id: Set(purchase.user_id.clone()),
        course_id: Set(purchase.course_id.clone()),
        stripe_checkout_session_id: Set(purchase.checkout_session_id.clone()),
        stripe_payment_intent_id: Set(purchase.payment_intent_id.clone()),
        amount_total: Set(purchase.amount_total),
        currency: Set(purchase.currency.clone()),
        status: Set(status),
        source: Set(purchase.source),
        needs_refund: Set(needs_refund),
        created_at: Set(now),
        updated_at: Set(now),
    };
    let forward_only = OnConflict::column(Column::StripeCheckoutSessionId)
        .update_columns([Column::Status, Column::NeedsRefund, Column::UpdatedAt])
        .values([
            (Column::StripePaymentIntentId, keep_known(Column::StripePaymentIntentId)),
            (Column::AmountTotal, keep_known(Column::AmountTotal)),
            (Column::Currency, keep_known(Column::Currency)),
        ])
        .action_and_where(current_rank().lt(status.rank()))
        .to_owned();
    let written = Entity::insert(row).on_conflict(forward_only).exec_without_returning(db).await?;
    Ok(written > 0)
}

/// The new value when the event carries one, else the value already stored.
fn keep_known(column: Column) -> SimpleExpr {
    Func::coalesce([Expr::col((Alias::new("excluded"), column)), Expr::col((Entity, column))]).into()
}

/// `CASE course_purchases.status WHEN 'pending' THEN 1 ... END`, generated
/// from [`PurchaseStatus::rank`] so Rust and SQL cannot disagree.
fn current_rank() -> SimpleExpr {
    PurchaseStatus::iter()
        .fold(CaseStatement::new(), |case, status| {
            case.case(Expr::col((Entity, Column::Status)).eq(status), status.rank())
        })
        .finally(0)
        .into()
}

pub async fn find_by_session(db: &impl ConnectionTrait, session_id: &str) -> Result<Option<Model>, DbErr> {
    Entity::find().filter(Column::StripeCheckoutSessionId.eq(session_id)).one(db).await
}

/// Every purchase of `course_id` by `user_id`, oldest first.
pub async fn find_by_user_course(
    db: &impl ConnectionTrait,
    user_id: &str,
    course_id: &str,
) -> Result<Vec<Model>, DbErr> {
    Entity::find()
        .filter(Column::UserId.eq(user_id))
        .filter(Column::CourseId.eq(course_id))
        .order_by_asc(Column::Id)
        .all(db)
        .await
}
