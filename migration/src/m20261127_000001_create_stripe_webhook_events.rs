//! `stripe_webhook_events`: one row per distinct Stripe event id, whatever
//! became of it, with the verified payload kept for audit and replay.

use sea_orm_migration::sea_orm::DatabaseBackend;
use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(StripeWebhookEvents::Table)
                    .col(big_pk_auto(StripeWebhookEvents::Id))
                    .col(string_uniq(StripeWebhookEvents::EventId))
                    .col(string(StripeWebhookEvents::EventType))
                    .col(boolean(StripeWebhookEvents::Livemode))
                    .col(string_null(StripeWebhookEvents::ApiVersion))
                    .col(string_null(StripeWebhookEvents::CheckoutSessionId))
                    .col(string_len(StripeWebhookEvents::Status, 16))
                    .col(json_null(StripeWebhookEvents::Error))
                    .col(text(StripeWebhookEvents::Payload))
                    .col(integer(StripeWebhookEvents::DeliveryCount).default(1))
                    .col(big_integer(StripeWebhookEvents::StripeCreatedAt))
                    .col(timestamp_with_time_zone(StripeWebhookEvents::ReceivedAt))
                    .col(timestamp_with_time_zone(StripeWebhookEvents::LastReceivedAt))
                    .col(timestamp_with_time_zone_null(StripeWebhookEvents::ProcessedAt))
                    .col(big_integer_null(StripeWebhookEvents::SettledBy))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_stripe_webhook_events_status_received_at")
                    .table(StripeWebhookEvents::Table)
                    .col(StripeWebhookEvents::Status)
                    .col(StripeWebhookEvents::ReceivedAt)
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_stripe_webhook_events_checkout_session_id")
                    .table(StripeWebhookEvents::Table)
                    .col(StripeWebhookEvents::CheckoutSessionId)
                    .to_owned(),
            )
            .await?;
        if manager.get_database_backend() == DatabaseBackend::Postgres {
            // Payloads are ~5 KB of JSON, so PostgreSQL compresses each one
            // as it stores it; its default pglz was the largest single cost
            // of a webhook under load. lz4 is several times cheaper.
            manager
                .get_connection()
                .execute_unprepared(
                    "DO $$ BEGIN \
                       IF EXISTS (SELECT 1 FROM pg_settings WHERE name = 'default_toast_compression' \
                                  AND 'lz4' = ANY(enumvals)) THEN \
                         ALTER TABLE stripe_webhook_events ALTER COLUMN payload SET COMPRESSION lz4; \
                       END IF; \
                     END $$",
                )
                .await?;
        }
        Ok(())
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(StripeWebhookEvents::Table).to_owned()).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

#[derive(DeriveIden)]
enum StripeWebhookEvents {
    Table,
    Id,
    EventId,
    EventType,
    Livemode,
    ApiVersion,
    CheckoutSessionId,
    Status,
    Error,
    Payload,
    DeliveryCount,
    StripeCreatedAt,
    ReceivedAt,
    LastReceivedAt,
    ProcessedAt,
    SettledBy,
}
