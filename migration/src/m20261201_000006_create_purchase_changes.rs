//! `purchase_changes`: the change feed's outbox. Every change of a
//! purchase's status or access is one row, written in the transaction that
//! makes the change; `cursor` orders the feed.
//!
//! `course_purchases` gains what the feed last said of each purchase
//! (`access_status`, `has_access`, `amount_refunded`): a new change is one
//! that differs from it. It is empty (`access_status` null) for purchases
//! recorded before the feed existed, which payments-svc then publishes once.
//!
//! Rows are only ever appended and read or pruned by `cursor`, so the
//! primary key is their one index, and `purchase_id` has no foreign key:
//! each index or check is paid for on the group-commit path by every
//! purchase written (purchases are never deleted).
//!
//! `purchase_feed` is one row: the newest cursor that retention has
//! removed, so that a consumer asking for changes after an older cursor
//! learns that some are gone instead of silently missing them.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        for column in [
            string_len_null(CoursePurchases::AccessStatus, 16),
            boolean(CoursePurchases::HasAccess).default(false).take(),
            big_integer(CoursePurchases::AmountRefunded).default(0).take(),
        ] {
            manager
                .alter_table(Table::alter().table(CoursePurchases::Table).add_column(column).to_owned())
                .await?;
        }
        manager
            .create_table(
                Table::create()
                    .table(PurchaseChanges::Table)
                    // AUTOINCREMENT on SQLite: a cursor is never handed out twice,
                    // even after the newest rows are deleted.
                    .col(big_pk_auto(PurchaseChanges::Cursor))
                    .col(big_integer(PurchaseChanges::PurchaseId))
                    .col(string_len(PurchaseChanges::Kind, 24))
                    .col(string_len(PurchaseChanges::Status, 16))
                    .col(boolean(PurchaseChanges::HasAccess))
                    .col(big_integer(PurchaseChanges::AmountRefunded))
                    .col(string(PurchaseChanges::CauseEventId))
                    .col(timestamp_with_time_zone(PurchaseChanges::At))
                    .to_owned(),
            )
            .await?;
        manager
            .create_table(
                Table::create()
                    .table(PurchaseFeed::Table)
                    .col(integer(PurchaseFeed::Id).primary_key())
                    .col(big_integer(PurchaseFeed::PrunedThrough).default(0))
                    .to_owned(),
            )
            .await?;
        manager
            .exec_stmt(
                Query::insert()
                    .into_table(PurchaseFeed::Table)
                    .columns([PurchaseFeed::Id, PurchaseFeed::PrunedThrough])
                    .values_panic([1.into(), 0.into()])
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(PurchaseFeed::Table).to_owned()).await?;
        manager.drop_table(Table::drop().table(PurchaseChanges::Table).to_owned()).await?;
        for column in
            [CoursePurchases::AccessStatus, CoursePurchases::HasAccess, CoursePurchases::AmountRefunded]
        {
            manager
                .alter_table(Table::alter().table(CoursePurchases::Table).drop_column(column).to_owned())
                .await?;
        }
        Ok(())
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

#[derive(DeriveIden)]
enum CoursePurchases {
    Table,
    /// The status the feed last published; null before the first change.
    AccessStatus,
    /// Whether the feed last said the purchase grants the course.
    HasAccess,
    /// The refunded amount the feed last published.
    AmountRefunded,
}

#[derive(DeriveIden)]
enum PurchaseChanges {
    Table,
    /// Strictly increasing in commit order (see payments-svc's feed module).
    Cursor,
    PurchaseId,
    /// What happened to access: `granted`, `refunded`, `suspended`, ...
    Kind,
    /// The purchase's status after the change, refunds and disputes counted.
    Status,
    HasAccess,
    AmountRefunded,
    /// The Stripe event, or `verify`, `reconcile`, ..., behind the change.
    CauseEventId,
    At,
}

#[derive(DeriveIden)]
enum PurchaseFeed {
    Table,
    Id,
    /// The newest cursor removed by retention; 0 while none was.
    PrunedThrough,
}
