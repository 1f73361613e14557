//! The database: connecting, migrating, and the queries that fulfilment
//! composes inside its transactions.

pub mod batch_pg;
pub mod entities;
pub mod events;
pub mod purchases;

use std::time::Duration;

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, TransactionTrait,
};

/// How long a SQLite writer waits for the file lock before giving up. The
/// embedded database has one writer at a time; this is how long a burst of
/// concurrent webhooks may queue behind each other.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the pool. SQLite files are created if missing and run in WAL mode
/// with `synchronous=FULL`, so an acknowledged event survives a power cut.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    let mut options = ConnectOptions::new(url);
    options
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(|opts| {
            opts.create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true)
        });
    Database::connect(options).await
}

/// Key of the PostgreSQL advisory lock held while migrating.
const MIGRATION_LOCK_KEY: i64 = 0x7061_796d_656e_7473; // "payments"

/// Applies every pending migration, in one transaction that first takes an
/// exclusive lock, so that several replicas starting at once migrate one
/// after the other instead of racing: an advisory lock on PostgreSQL, the
/// database's write lock (taken by a write that changes nothing) on SQLite.
pub async fn migrate(db: &DatabaseConnection) -> Result<(), DbErr> {
    let lock = match db.get_database_backend() {
        DbBackend::Postgres => format!("SELECT pg_advisory_xact_lock({MIGRATION_LOCK_KEY})"),
        _ => {
            Migrator::install(db).await?;
            "DELETE FROM seaql_migrations WHERE 0 = 1".to_owned()
        }
    };
    let txn = db.begin().await?;
    txn.execute_unprepared(&lock).await?;
    Migrator::up(&txn, None).await?;
    txn.commit().await
}
