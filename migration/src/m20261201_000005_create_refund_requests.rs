//! `refund_requests`: refunds payments-svc owes and asks Stripe for, one per
//! purchase at most (a second payment for a course the buyer already owned).
//! The row is the durable work: it survives restarts, is claimed with a
//! lease so that one replica at a time works on it, and keeps the
//! idempotency key every attempt sends, so Stripe makes one refund however
//! often the request is retried.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(RefundRequests::Table)
                    .col(big_pk_auto(RefundRequests::Id))
                    .col(string_uniq(RefundRequests::CheckoutSessionId))
                    .col(string(RefundRequests::PaymentIntentId))
                    .col(string(RefundRequests::IdempotencyKey))
                    .col(string_len(RefundRequests::Status, 16))
                    .col(string_null(RefundRequests::StripeRefundId))
                    .col(integer(RefundRequests::Attempts).default(0))
                    .col(timestamp_with_time_zone(RefundRequests::NextAttemptAt))
                    .col(timestamp_with_time_zone_null(RefundRequests::ClaimedUntil))
                    .col(text_null(RefundRequests::LastError))
                    .col(timestamp_with_time_zone(RefundRequests::CreatedAt))
                    .col(timestamp_with_time_zone(RefundRequests::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_refund_requests_status_next_attempt_at")
                    .table(RefundRequests::Table)
                    .col(RefundRequests::Status)
                    .col(RefundRequests::NextAttemptAt)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(RefundRequests::Table).to_owned()).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

#[derive(DeriveIden)]
enum RefundRequests {
    Table,
    Id,
    /// The purchase owed the refund.
    CheckoutSessionId,
    PaymentIntentId,
    /// Sent as `Idempotency-Key` on every attempt.
    IdempotencyKey,
    /// `pending` (to ask Stripe), `requested` (Stripe made the refund), or
    /// `failed` (Stripe refused; an operator decides).
    Status,
    StripeRefundId,
    Attempts,
    NextAttemptAt,
    /// A replica working on the request holds it until then.
    ClaimedUntil,
    LastError,
    CreatedAt,
    UpdatedAt,
}
