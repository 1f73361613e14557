//! Queries on `course_purchases`.

use chrono::{DateTime, Utc};
use sea_orm::sea_query::{Alias, CaseStatement, Expr, ExprTrait, Func, OnConflict, SimpleExpr};
use sea_orm::{
    ActiveValue::NotSet, ColumnTrait, ConnectionTrait, DbErr, EntityTrait, Iterable, QueryFilter, QueryOrder,
    QuerySelect, Set,
};

use payments_domain::purchase::{NewPurchase, PurchaseStatus};

use super::entities::course_purchase::{self, ActiveModel, Column, Entity, Model};

/// One purchase to write: at `status`, flagged `needs_refund` or not.
#[derive(Debug, Clone, Copy)]
pub struct PurchaseWrite<'a> {
    pub purchase: &'a NewPurchase,
    pub status: PurchaseStatus,
    pub needs_refund: bool,
}

/// Records `purchase` at `status`, or moves the session's existing purchase
/// up to `status`; never down (see [`PurchaseStatus::rank`]). Returns
/// whether the row was written. See [`advance_all`].
pub async fn advance(
    db: &impl ConnectionTrait,
    purchase: &NewPurchase,
    status: PurchaseStatus,
    needs_refund: bool,
    now: DateTime<Utc>,
) -> Result<bool, DbErr> {
    advance_all(db, &[PurchaseWrite { purchase, status, needs_refund }], now).await.map(|written| written > 0)
}

/// Writes every purchase in one statement, `INSERT ... ON CONFLICT
/// (stripe_checkout_session_id) DO UPDATE ... WHERE rank(current) <
/// rank(new)`, so concurrent callers and any order of events end in the same
/// rows. `writes` must name each session at most once. Returns how many rows
/// were written.
///
/// Fails with a unique violation when this would make a second paid,
/// unflagged purchase of the same course by the same user; the caller then
/// records it with `needs_refund`.
pub async fn advance_all(
    db: &impl ConnectionTrait,
    writes: &[PurchaseWrite<'_>],
    now: DateTime<Utc>,
) -> Result<u64, DbErr> {
    if writes.is_empty() {
        return Ok(0);
    }
    let rows = writes.iter().map(|write| ActiveModel {
        id: NotSet,
        user_id: Set(write.purchase.user_id.clone()),
        course_id: Set(write.purchase.course_id.clone()),
        stripe_checkout_session_id: Set(write.purchase.checkout_session_id.clone()),
        stripe_payment_intent_id: Set(write.purchase.payment_intent_id.clone()),
        amount_total: Set(write.purchase.amount_total),
        currency: Set(write.purchase.currency.clone()),
        status: Set(write.status.into()),
        source: Set(write.purchase.source.into()),
        needs_refund: Set(write.needs_refund),
        created_at: Set(now),
        updated_at: Set(now),
        // Set by the feed when it publishes the purchase.
        access_status: NotSet,
        has_access: NotSet,
        amount_refunded: NotSet,
        access_cause: NotSet,
    });
    let forward_only = OnConflict::column(Column::StripeCheckoutSessionId)
        .update_columns([Column::Status, Column::NeedsRefund, Column::UpdatedAt])
        .values([
            (Column::StripePaymentIntentId, keep_known(Column::StripePaymentIntentId)),
            (Column::AmountTotal, keep_known(Column::AmountTotal)),
            (Column::Currency, keep_known(Column::Currency)),
        ])
        .action_and_where(rank_of(Expr::col((Entity, Column::Status))).lt(rank_of(excluded(Column::Status))))
        .to_owned();
    Entity::insert_many(rows).on_conflict(forward_only).exec_without_returning(db).await
}

/// The value the insert proposed for `column` (`excluded.column`).
fn excluded(column: Column) -> Expr {
    Expr::col((Alias::new("excluded"), column))
}

/// The new value when the event carries one, else the value already stored.
fn keep_known(column: Column) -> SimpleExpr {
    Func::coalesce([excluded(column), Expr::col((Entity, column))]).into()
}

/// `CASE <status> WHEN 'pending' THEN 1 ... END`, generated from
/// [`PurchaseStatus::rank`] so Rust and SQL cannot disagree.
fn rank_of(status: Expr) -> SimpleExpr {
    course_purchase::PurchaseStatus::iter()
        .fold(CaseStatement::new(), |case, each| case.case(status.clone().eq(each), each.rank()))
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

pub async fn find_by_payment_intent(
    db: &impl ConnectionTrait,
    payment_intent_id: &str,
) -> Result<Option<Model>, DbErr> {
    Entity::find().filter(Column::StripePaymentIntentId.eq(payment_intent_id)).one(db).await
}

/// Purchases, newest first; only those owed a refund when `needs_refund`.
pub async fn list(db: &impl ConnectionTrait, needs_refund: bool, limit: u64) -> Result<Vec<Model>, DbErr> {
    let mut query = Entity::find().order_by_desc(Column::Id);
    if needs_refund {
        query = query.filter(Column::NeedsRefund.eq(true));
    }
    query.limit(limit).all(db).await
}

/// Purchases with an id above `after_id`, oldest first, at most `limit`;
/// only `user_id`'s when given.
pub async fn page(
    db: &impl ConnectionTrait,
    user_id: Option<&str>,
    after_id: i64,
    limit: u64,
) -> Result<Vec<Model>, DbErr> {
    let mut query = Entity::find().filter(Column::Id.gt(after_id)).order_by_asc(Column::Id);
    if let Some(user_id) = user_id {
        query = query.filter(Column::UserId.eq(user_id));
    }
    query.limit(limit).all(db).await
}
