//! `purchase_feed.writes`: how many transactions of the write path have
//! committed.
//!
//! Every writing transaction raises it by one, and on PostgreSQL a batch
//! writes only if it is still the value its load read (the whole batch in
//! two statements, without holding a lock between them): a batch that finds
//! it moved decided from stale state, writes nothing and is decided again.
//! Raising it also takes the row's lock, which is what commits writers one
//! at a time and keeps the change feed's cursors in commit order.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(PurchaseFeed::Table)
                    .add_column(big_integer(PurchaseFeed::Writes).default(0))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter().table(PurchaseFeed::Table).drop_column(PurchaseFeed::Writes).to_owned(),
            )
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

#[derive(DeriveIden)]
enum PurchaseFeed {
    Table,
    Writes,
}
