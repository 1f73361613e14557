//! `course_purchases`: at most one row per Stripe Checkout Session, which is
//! what makes fulfilment idempotent across webhooks and verify calls, and at
//! most one paid purchase granting access per user and course. A second
//! payment for a course the user already owns is still recorded (money is
//! never dropped), with `needs_refund` set, outside that partial index.

use sea_orm_migration::{prelude::*, schema::*};

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .create_table(
                Table::create()
                    .table(CoursePurchases::Table)
                    .col(big_pk_auto(CoursePurchases::Id))
                    .col(string(CoursePurchases::UserId))
                    .col(string(CoursePurchases::CourseId))
                    .col(string_uniq(CoursePurchases::StripeCheckoutSessionId))
                    .col(string_null(CoursePurchases::StripePaymentIntentId))
                    .col(big_integer_null(CoursePurchases::AmountTotal))
                    .col(string_len_null(CoursePurchases::Currency, 3))
                    .col(string_len(CoursePurchases::Status, 16))
                    .col(string_len(CoursePurchases::Source, 16))
                    .col(boolean(CoursePurchases::NeedsRefund).default(false))
                    .col(timestamp_with_time_zone(CoursePurchases::CreatedAt))
                    .col(timestamp_with_time_zone(CoursePurchases::UpdatedAt))
                    .to_owned(),
            )
            .await?;
        manager
            .create_index(
                Index::create()
                    .name("idx_course_purchases_user_id_course_id")
                    .table(CoursePurchases::Table)
                    .col(CoursePurchases::UserId)
                    .col(CoursePurchases::CourseId)
                    .to_owned(),
            )
            .await?;
        // Partial unique index: same SQL on SQLite and PostgreSQL.
        manager
            .get_connection()
            .execute_unprepared(
                "CREATE UNIQUE INDEX ux_course_purchases_one_paid_per_user_course \
                 ON course_purchases (user_id, course_id) \
                 WHERE status = 'paid' AND needs_refund = false",
            )
            .await
            .map(drop)
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager.drop_table(Table::drop().table(CoursePurchases::Table).to_owned()).await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

#[derive(DeriveIden)]
enum CoursePurchases {
    Table,
    Id,
    UserId,
    CourseId,
    StripeCheckoutSessionId,
    StripePaymentIntentId,
    AmountTotal,
    Currency,
    Status,
    Source,
    NeedsRefund,
    CreatedAt,
    UpdatedAt,
}
