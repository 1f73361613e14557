//! Drops the partial unique index that allowed one paid, unflagged purchase
//! per user and course.
//!
//! A second payment for a course used to be found by that index refusing
//! the row. It is now a decision of the rules, made with the whole family in
//! view: a payment is flagged only while another purchase of the course
//! grants it, so a buyer who pays again after a full refund or a lost
//! dispute is recorded unflagged beside the first paid row, which the index
//! would refuse. Writers commit one at a time under the write path's lock,
//! so no two can decide on the same family at once.

use sea_orm_migration::prelude::*;

#[derive(DeriveMigrationName)]
pub struct Migration;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared("DROP INDEX IF EXISTS ux_course_purchases_one_paid_per_user_course")
            .await
            .map(drop)
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
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

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}
