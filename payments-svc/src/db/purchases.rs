//! Queries on `course_purchases`.

use sea_orm::{ColumnTrait, ConnectionTrait, DbErr, EntityTrait, QueryFilter, QueryOrder, TryInsertResult};

use super::entities::course_purchase::{ActiveModel, Column, Entity, Model};

/// Inserts the purchase unless its checkout session already has one.
/// Returns whether a row was written. Never reads first: the UNIQUE
/// constraint on the session id decides, so concurrent callers are safe.
pub async fn insert_if_absent(db: &impl ConnectionTrait, purchase: ActiveModel) -> Result<bool, DbErr> {
    let result = Entity::insert(purchase)
        .on_conflict_do_nothing_on([Column::StripeCheckoutSessionId])
        .exec_without_returning(db)
        .await?;
    Ok(matches!(result, TryInsertResult::Inserted(rows) if rows > 0))
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
