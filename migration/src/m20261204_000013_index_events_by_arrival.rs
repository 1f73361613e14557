//! An index on `stripe_webhook_events (received_at, id)`.
//!
//! `payments-svc events list` shows the newest events first. Without the
//! index it reads and sorts every stored event (tens of millions with 90
//! days of retention) to find the newest fifty; with it, it walks them
//! newest first and stops at the limit. On a large live table, build it
//! beforehand without blocking writes (see docs/operating.md); this
//! migration then finds it.

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
                    .name("idx_stripe_webhook_events_received_at")
                    .table(StripeWebhookEvents::Table)
                    .col(StripeWebhookEvents::ReceivedAt)
                    .col(StripeWebhookEvents::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_stripe_webhook_events_received_at")
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
    ReceivedAt,
}
