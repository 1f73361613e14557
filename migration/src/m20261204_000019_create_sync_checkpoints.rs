//! `sync_checkpoints`: how far `payments-svc sync` has come through each of
//! Stripe's lists, so that a sync stopped at page 700 and run again with
//! the same arguments continues there rather than from the first page.
//!
//! One row per list (`checkout_sessions`, `refunds`, `disputes`): the
//! arguments the sync was started with, the window they resolved to, the
//! last object applied (Stripe's `starting_after` for the next page), and
//! whether the list was finished. A finished list, or other arguments,
//! start afresh.

use sea_orm_migration::prelude::*;
use sea_orm_migration::schema::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(SyncCheckpoints::Table)
                    .col(string_len(SyncCheckpoints::List, 32).primary_key())
                    .col(string(SyncCheckpoints::Arguments))
                    .col(big_integer(SyncCheckpoints::CreatedGte))
                    .col(big_integer(SyncCheckpoints::CreatedLte))
                    .col(string_null(SyncCheckpoints::StartingAfter))
                    .col(big_integer(SyncCheckpoints::Pages).default(0))
                    .col(big_integer(SyncCheckpoints::Objects).default(0))
                    .col(boolean(SyncCheckpoints::Finished).default(false))
                    .col(timestamp_with_time_zone(SyncCheckpoints::UpdatedAt))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(SyncCheckpoints::Table).to_owned()).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

#[derive(DeriveIden)]
enum SyncCheckpoints {
    Table,
    List,
    Arguments,
    CreatedGte,
    CreatedLte,
    StartingAfter,
    Pages,
    Objects,
    Finished,
    UpdatedAt,
}
