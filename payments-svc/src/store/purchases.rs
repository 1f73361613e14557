//! Queries on `course_purchases`.

use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect};

use super::entities::course_purchase::{Column, Entity, Model};

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
