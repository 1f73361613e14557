//! An index on `course_purchases.stripe_payment_intent_id`.
//!
//! Refunds and disputes name a payment intent, and the write path finds the
//! purchases they reach by it; without the index every such lookup reads
//! the whole table, and a batch that holds one costs more the more
//! purchases there are. On a large live table, build it beforehand without
//! blocking writes (see docs/operating.md); this migration then finds it.

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
                    .name("idx_course_purchases_payment_intent_id")
                    .table(CoursePurchases::Table)
                    .col(CoursePurchases::StripePaymentIntentId)
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .drop_index(
                Index::drop()
                    .name("idx_course_purchases_payment_intent_id")
                    .table(CoursePurchases::Table)
                    .to_owned(),
            )
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

#[derive(DeriveIden)]
enum CoursePurchases {
    Table,
    StripePaymentIntentId,
}
