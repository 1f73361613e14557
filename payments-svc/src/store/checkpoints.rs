//! The sync's checkpoints: one row per Stripe list, written after each page
//! is applied, so that a sync stopped anywhere and run again with the same
//! arguments continues after the last page it applied. A page applied again
//! after a stop between its write and its checkpoint changes nothing: the
//! write path is idempotent.

use chrono::Utc;
use sea_orm::sea_query::OnConflict;
use sea_orm::{ConnectionTrait, DbErr, EntityTrait, Set};

use super::entities::sync_checkpoint::{ActiveModel, Column, Entity, Model};

/// Every list's checkpoint.
pub async fn all(db: &impl ConnectionTrait) -> Result<Vec<Model>, DbErr> {
    Entity::find().all(db).await
}

/// Writes `checkpoint` as it is, over any earlier one of its list.
pub async fn save(db: &impl ConnectionTrait, checkpoint: &Model) -> Result<(), DbErr> {
    let row = ActiveModel {
        list: Set(checkpoint.list.clone()),
        arguments: Set(checkpoint.arguments.clone()),
        created_gte: Set(checkpoint.created_gte),
        created_lte: Set(checkpoint.created_lte),
        starting_after: Set(checkpoint.starting_after.clone()),
        pages: Set(checkpoint.pages),
        objects: Set(checkpoint.objects),
        finished: Set(checkpoint.finished),
        updated_at: Set(Utc::now()),
    };
    let replace = OnConflict::column(Column::List)
        .update_columns([
            Column::Arguments,
            Column::CreatedGte,
            Column::CreatedLte,
            Column::StartingAfter,
            Column::Pages,
            Column::Objects,
            Column::Finished,
            Column::UpdatedAt,
        ])
        .to_owned();
    Entity::insert(row).on_conflict(replace).exec_without_returning(db).await.map(drop)
}
