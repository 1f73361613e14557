//! `purchase_feed.origin`: where this database's change feed starts.
//!
//! A consumer keeps the cursor of the last change it handled. A database
//! rebuilt from Stripe (`payments-svc sync` on an empty database) or created
//! anew has a feed of its own history, and an old cursor must never be
//! resumed in it as if nothing had happened. So a feed that has published
//! nothing yet starts its cursors after a random origin, a multiple of 2^32
//! below 2^52 (exact in a JavaScript number): the cursors of two histories
//! fall in different ranges, and a cursor outside this feed's range is
//! refused as one from another history (`FAILED_PRECONDITION`, resync).
//! A feed that has already published keeps origin 0 and its cursors.

use std::hash::{BuildHasher, RandomState};
use std::time::SystemTime;

use sea_orm_migration::prelude::*;
use sea_orm_migration::sea_orm::{ConnectionTrait, DbBackend, Statement};

#[derive(DeriveMigrationName)]
pub struct Migration;

/// Each history's cursors start at one of this many origins.
const ORIGINS: u64 = 1 << 20;

#[async_trait::async_trait]
impl MigrationTrait for Migration {
    async fn up(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter()
                    .table(PurchaseFeed::Table)
                    .add_column(ColumnDef::new(PurchaseFeed::Origin).big_integer().not_null().default(0))
                    .to_owned(),
            )
            .await?;
        let db = manager.get_connection();
        let backend = manager.get_database_backend();
        let published = db
            .query_one_raw(Statement::from_string(
                backend,
                "SELECT (SELECT COUNT(*) FROM purchase_changes) + (SELECT MAX(pruned_through) FROM purchase_feed) AS n",
            ))
            .await?
            .map(|row| row.try_get::<i64>("", "n"))
            .transpose()?
            .unwrap_or(0);
        if published > 0 {
            return Ok(());
        }
        let origin = <i64 as TryFrom<u64>>::try_from((random() % ORIGINS + 1) << 32).unwrap_or(1 << 32);
        db.execute_unprepared(&format!(
            "UPDATE purchase_feed SET origin = {origin}, pruned_through = {origin}"
        ))
        .await?;
        let sequence = match backend {
            DbBackend::Postgres => {
                format!("SELECT setval(pg_get_serial_sequence('purchase_changes', 'cursor'), {origin})")
            }
            _ => format!(
                "DELETE FROM sqlite_sequence WHERE name = 'purchase_changes';
                 INSERT INTO sqlite_sequence (name, seq) VALUES ('purchase_changes', {origin})"
            ),
        };
        db.execute_unprepared(&sequence).await.map(drop)
    }

    async fn down(&self, manager: &SchemaManager) -> Result<(), DbErr> {
        manager
            .alter_table(
                Table::alter().table(PurchaseFeed::Table).drop_column(PurchaseFeed::Origin).to_owned(),
            )
            .await
    }

    fn use_transaction(&self) -> Option<bool> {
        Some(true)
    }
}

/// A number no other database is likely to have drawn: the standard
/// library's randomly keyed hasher over the time.
fn random() -> u64 {
    RandomState::new().hash_one(SystemTime::now())
}

#[derive(DeriveIden)]
enum PurchaseFeed {
    Table,
    Origin,
}
