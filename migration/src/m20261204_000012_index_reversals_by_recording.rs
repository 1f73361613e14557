//! An index on `payment_reversals (recorded_at, id)`.
//!
//! `payments-svc reversals unmatched` lists the newest facts that reach no
//! purchase. Without the index it reads and sorts every fact to find the
//! newest few; with it, it walks the facts newest first and stops at the
//! limit, checking each by index. On a large live table, build it
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
                    .name("idx_payment_reversals_recorded_at")
                    .table(PaymentReversals::Table)
                    .col(PaymentReversals::RecordedAt)
                    .col(PaymentReversals::Id)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_payment_reversals_recorded_at")
                    .table(PaymentReversals::Table)
                    .to_owned(),
            )
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

#[derive(DeriveIden)]
enum PaymentReversals {
    Table,
    Id,
    RecordedAt,
}
