//! Keeps each event's compressed payload in its row (PostgreSQL only).
//!
//! PostgreSQL starts squeezing a row once it passes about 2 KB, and with the
//! default target it keeps going until the row is under 2 KB again: a
//! ~4.7 KB payload compresses to about 2.3 KB, still over, so it and even
//! the short id columns were moved out of line, costing several inserts
//! into the TOAST table (and its index) for every event. A 4 KB target
//! stops after compressing the payload, which then stays in its row;
//! payloads that are still larger than that after compression move out of
//! line as before. It applies to rows written from now on. SQLite has no
//! such setting: its rows hold their values already.

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::DatabaseBackend;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(manager, "ALTER TABLE stripe_webhook_events SET (toast_tuple_target = 4080)").await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        on_postgres(manager, "ALTER TABLE stripe_webhook_events RESET (toast_tuple_target)").await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

async fn on_postgres(manager: &SchemaManager<'_>, sql: &str) -> Result<(), DbErr> {
    if manager.get_database_backend() != DatabaseBackend::Postgres {
        return Ok(());
    }
    manager.get_connection().execute_unprepared(sql).await.map(drop)
}
