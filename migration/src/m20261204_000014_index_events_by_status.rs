//! An index on `stripe_webhook_events (status, id)`.
//!
//! `payments-svc events replay --failed` walks the failed events a page at
//! a time in row order. Without the index it walks every event by its id
//! and skips all but the failed few (4.3 s at ten million events for ten
//! thousand failed ones); with it, it reads the failed ones alone. On a
//! large live table, build it beforehand without blocking writes (see
//! docs/operating.md); this migration then finds it.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_index(
                Index::create()
                    .if_not_exists()
                    .name("idx_stripe_webhook_events_status_id")
                    .table(StripeWebhookEvents::Table)
                    .col(StripeWebhookEvents::Status)
                    .col(StripeWebhookEvents::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_stripe_webhook_events_status_id")
                    .table(StripeWebhookEvents::Table)
                    .to_owned(),
            )
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

#[derive(DeriveIden)]
enum StripeWebhookEvents {
    Table,
    Id,
    Status,
}
