//! `course_purchases.access_cause`: the cause (`cause_event_id`) of the
//! change the feed last published of the purchase, beside the status,
//! access and refunded amount that change published.
//!
//! With it on the row, the group-commit statement on PostgreSQL gets each
//! change's cause back from the purchase upsert's `RETURNING` instead of
//! joining the upserted rows to the batch's candidates again: that join was
//! most of what the change rows cost a batch. Null for purchases whose last
//! change was published before this column existed.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(CoursePurchases::Table)
                    .add_column(string_null(CoursePurchases::AccessCause))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(CoursePurchases::Table)
                    .drop_column(CoursePurchases::AccessCause)
                    .to_owned(),
            )
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

#[derive(DeriveIden)]
enum CoursePurchases {
    Table,
    AccessCause,
}
