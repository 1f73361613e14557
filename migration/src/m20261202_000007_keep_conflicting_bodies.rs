//! `stripe_webhook_events.conflicting_payload`: a body received under an
//! event id that differs from the one stored (Stripe never does this; a
//! replayed or forged-and-signed delivery could). The row's own columns
//! always describe the body that was applied; the other is kept here for the
//! operator: the newer body when the event was already settled, or the
//! older one when a failed event was applied again from a new body.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(StripeWebhookEvents::Table)
                    .add_column(text_null(StripeWebhookEvents::ConflictingPayload))
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(StripeWebhookEvents::Table)
                    .drop_column(StripeWebhookEvents::ConflictingPayload)
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
    ConflictingPayload,
}
