//! Queries on `course_purchases`. Each is also a public `*_query` builder,
//! so that the plan test EXPLAINs exactly what runs.

use sea_orm::{
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, QuerySelect, Select,
};

use super::entities::course_purchase::{Column, Entity, Model};

pub async fn find_by_session(db: &impl ConnectionTrait, session_id: &str) -> Result<Option<Model>, DbErr> {
    by_session_query(session_id).one(db).await
}

pub fn by_session_query(session_id: &str) -> Select<Entity> {
    Entity::find().filter(Column::StripeCheckoutSessionId.eq(session_id))
}

/// Every purchase of `course_id` by `user_id`, oldest first.
pub async fn find_by_user_course(
    db: &impl ConnectionTrait,
    user_id: &str,
    course_id: &str,
) -> Result<Vec<Model>, DbErr> {
    by_user_course_query(user_id, course_id).all(db).await
}

pub fn by_user_course_query(user_id: &str, course_id: &str) -> Select<Entity> {
    Entity::find()
        .filter(Column::UserId.eq(user_id))
        .filter(Column::CourseId.eq(course_id))
        .order_by_asc(Column::Id)
}

pub async fn find_by_payment_intent(
    db: &impl ConnectionTrait,
    payment_intent_id: &str,
) -> Result<Option<Model>, DbErr> {
    by_payment_intent_query(payment_intent_id).one(db).await
}

pub fn by_payment_intent_query(payment_intent_id: &str) -> Select<Entity> {
    Entity::find().filter(Column::StripePaymentIntentId.eq(payment_intent_id))
}

/// Purchases, newest first; only those owed a refund when `needs_refund`.
pub async fn list(db: &impl ConnectionTrait, needs_refund: bool, limit: u64) -> Result<Vec<Model>, DbErr> {
    list_query(needs_refund, limit).all(db).await
}

pub fn list_query(needs_refund: bool, limit: u64) -> Select<Entity> {
    let mut query = Entity::find().order_by_desc(Column::Id);
    if needs_refund {
        query = query.filter(Column::NeedsRefund.eq(true));
    }
    query.limit(limit)
}

/// Purchases with an id above `after_id`, oldest first, at most `limit`;
/// only `user_id`'s when given.
pub async fn page(
    db: &impl ConnectionTrait,
    user_id: Option<&str>,
    after_id: i64,
    limit: u64,
) -> Result<Vec<Model>, DbErr> {
    page_query(user_id, after_id, limit).all(db).await
}

pub fn page_query(user_id: Option<&str>, after_id: i64, limit: u64) -> Select<Entity> {
    let mut query = Entity::find().filter(Column::Id.gt(after_id)).order_by_asc(Column::Id);
    if let Some(user_id) = user_id {
        query = query.filter(Column::UserId.eq(user_id));
    }
    query.limit(limit)
}
