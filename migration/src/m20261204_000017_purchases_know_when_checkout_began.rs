//! `course_purchases.checkout_created`: when Stripe created the purchase's
//! Checkout Session (Unix seconds).
//!
//! Of two paid purchases of one course by one buyer, the one whose session
//! came first keeps the course and the other is the second payment. That
//! makes the answer the same whatever order Stripe reports the payments in,
//! and lets `payments-svc sync` rebuild the same purchases from Stripe's
//! lists, which come newest first. Purchases stored before keep NULL: they
//! keep the course by arrival, as they did.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(CoursePurchases::Table)
                    .add_column(ColumnDef::new(CoursePurchases::CheckoutCreated).big_integer().null())
                    .to_owned(),
            )
            .await
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(CoursePurchases::Table)
                    .drop_column(CoursePurchases::CheckoutCreated)
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
    CheckoutCreated,
}
