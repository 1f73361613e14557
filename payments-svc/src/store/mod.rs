//! The database: connecting, migrating, and the queries that fulfilment
//! composes inside its transactions.

pub mod checkpoints;
pub mod entities;
pub mod events;
pub mod feed;
pub mod health;
pub mod lease;
pub mod purchases;
pub mod refund_requests;
pub mod reversals;
pub mod signals;
pub mod write;
pub mod write_pg;

use std::time::{Duration, Instant};

use migration::{Migrator, MigratorTrait};
use sea_orm::sqlx::error::DatabaseError;
use sea_orm::sqlx::sqlite::{SqliteError, SqliteJournalMode, SqliteSynchronous};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, DbErr, RuntimeErr,
    TransactionTrait,
};

use self::health::DatabaseHealth;

/// How long a SQLite writer waits for the file lock before giving up. The
/// embedded database has one writer at a time; this is how long a burst of
/// concurrent webhooks may queue behind each other.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// Opens the pool. SQLite files are created if missing and run in WAL mode
/// with `synchronous=FULL`, so an acknowledged event survives a power cut.
///
/// A new SQLite file set up by several replicas at once can answer
/// "database is locked" to a first connection without waiting on the busy
/// timeout (switching the file to WAL needs it to itself), so connecting is
/// retried on that error for as long as the busy timeout.
pub async fn connect(url: &str) -> Result<DatabaseConnection, DbErr> {
    connect_with(options(url, true)).await
}

/// [`connect`] for the service: on PostgreSQL its pool follows `health`
/// ([`health::guard`]).
pub async fn connect_guarded(url: &str, health: &DatabaseHealth) -> Result<DatabaseConnection, DbErr> {
    let mut options = options(url, true);
    health::guard(&mut options, health);
    connect_with(options).await
}

async fn connect_with(options: ConnectOptions) -> Result<DatabaseConnection, DbErr> {
    let deadline = Instant::now() + SQLITE_BUSY_TIMEOUT;
    loop {
        match Database::connect(options.clone()).await {
            Err(error) if is_sqlite_busy(&error) && Instant::now() < deadline => {
                tracing::info!(%error, "database file busy while connecting; retrying");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            result => return result,
        }
    }
}

/// Why an operator command cannot work on a database.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("cannot open the database at {url}: {source}. Set DATABASE_URL to the service's database")]
    Missing { url: String, source: DbErr },
    #[error(
        "the database at {url} is not set up for payments-svc ({pending} of {total} migrations not applied). Start payments-svc on it once (it migrates when it starts), or run the migration step, then try again"
    )]
    NotMigrated { url: String, pending: usize, total: usize },
    #[error(transparent)]
    Db(#[from] DbErr),
}

/// Connects to a database that must exist already: never creates a SQLite
/// file. A failure names the URL without its password.
pub async fn open(url: &str) -> Result<DatabaseConnection, OpenError> {
    Database::connect(options(url, false))
        .await
        .map_err(|source| OpenError::Missing { url: redacted(url), source })
}

/// Opens the service's existing database for an operator command: unlike
/// [`connect`] it never creates a SQLite file (run from the wrong folder,
/// a command would otherwise make an empty one and fail on a missing
/// table), and it refuses a database the migrations have not reached,
/// naming the URL (without its password) and what to do.
pub async fn open_existing(url: &str) -> Result<DatabaseConnection, OpenError> {
    let db = open(url).await?;
    let shown = redacted(url);
    let total = Migrator::migrations().len();
    let pending = pending_migrations(&db).await?.len();
    if pending > 0 {
        return Err(OpenError::NotMigrated { url: shown, pending, total });
    }
    Ok(db)
}

/// The migrations this binary knows that the database has not applied, in
/// order. A database without the migrations' table has applied none; one
/// that has applied migrations this binary does not know (a newer version's,
/// during a rollback) is not behind.
pub async fn pending_migrations(db: &DatabaseConnection) -> Result<Vec<String>, DbErr> {
    let applied: Vec<String> = match db
        .query_all_raw(sea_orm::Statement::from_string(
            db.get_database_backend(),
            "SELECT version FROM seaql_migrations",
        ))
        .await
    {
        Ok(rows) => rows.iter().filter_map(|row| row.try_get::<String>("", "version").ok()).collect(),
        Err(_) if !migrations_table_exists(db).await? => Vec::new(),
        Err(error) => return Err(error),
    };
    Ok(Migrator::migrations()
        .iter()
        .map(|migration| migration.name().to_owned())
        .filter(|name| !applied.contains(name))
        .collect())
}

/// Whether the migrations' bookkeeping table exists: a query on it that
/// fails for another reason (a lost connection) must not read as "nothing
/// applied".
async fn migrations_table_exists(db: &DatabaseConnection) -> Result<bool, DbErr> {
    let sql = match db.get_database_backend() {
        DbBackend::Postgres => {
            "SELECT 1 AS found FROM pg_tables WHERE tablename = 'seaql_migrations' AND schemaname = ANY (current_schemas(false))"
        }
        _ => "SELECT 1 AS found FROM sqlite_master WHERE type = 'table' AND name = 'seaql_migrations'",
    };
    let row = db.query_one_raw(sea_orm::Statement::from_string(db.get_database_backend(), sql)).await?;
    Ok(row.is_some())
}

/// `url` without the password it may carry.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    match authority.rsplit_once('@') {
        Some((user_info, host)) => {
            let user = user_info.split_once(':').map_or(user_info, |(user, _)| user);
            let hidden = if user_info.contains(':') { ":***" } else { "" };
            format!("{scheme}://{user}{hidden}@{host}{path}")
        }
        None => url.to_owned(),
    }
}

/// The pool's options; a missing SQLite file is created only if `create`.
fn options(url: &str, create: bool) -> ConnectOptions {
    let mut options = ConnectOptions::new(url);
    options
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(5))
        .sqlx_logging(false)
        .map_sqlx_sqlite_opts(move |opts| {
            opts.create_if_missing(create)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(SQLITE_BUSY_TIMEOUT)
                .foreign_keys(true)
        });
    options
}

/// Whether `error` says the connection or the server failed, rather than
/// the statement: retrying the statement elsewhere on the same server (one
/// event at a time, say) cannot help until the database is back.
pub fn is_connection_lost(error: &DbErr) -> bool {
    use sea_orm::sqlx::Error as Sqlx;
    match error {
        DbErr::Conn(_) | DbErr::ConnectionAcquire(_) => true,
        DbErr::Query(RuntimeErr::SqlxError(error)) | DbErr::Exec(RuntimeErr::SqlxError(error)) => {
            match error.as_ref() {
                Sqlx::Io(_) | Sqlx::Tls(_) | Sqlx::Protocol(_) | Sqlx::Configuration(_) => true,
                Sqlx::PoolTimedOut | Sqlx::PoolClosed => true,
                Sqlx::WorkerCrashed => true,
                Sqlx::Database(error) => error.code().is_some_and(|code| is_server_state(&code)),
                _ => false,
            }
        }
        _ => false,
    }
}

/// SQLSTATEs of a server that cannot take the statement, whatever it is:
/// connection exceptions (08), a read-only server (25006), one shutting
/// down or starting (57P01–57P03).
fn is_server_state(code: &str) -> bool {
    code.starts_with("08") || code == "25006" || matches!(code, "57P01" | "57P02" | "57P03")
}

/// Whether `error` is SQLite's `SQLITE_BUSY` (primary result code 5; sqlx
/// reports the extended code).
fn is_sqlite_busy(error: &DbErr) -> bool {
    const SQLITE_BUSY: i32 = 5;
    let (DbErr::Conn(RuntimeErr::SqlxError(error)) | DbErr::Query(RuntimeErr::SqlxError(error))) = error
    else {
        return false;
    };
    error
        .as_database_error()
        .and_then(|error| error.try_downcast_ref::<SqliteError>())
        .and_then(|error| error.code()?.parse::<i32>().ok())
        .is_some_and(|code| code & 0xff == SQLITE_BUSY)
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

#[cfg(test)]
mod tests {
    use super::*;
    use sea_orm::Statement;

    fn sqlite_pool(path: &std::path::Path, busy_timeout: Duration) -> ConnectOptions {
        let mut options = ConnectOptions::new(format!("sqlite://{}?mode=rwc", path.display()));
        options
            .max_connections(1)
            .sqlx_logging(false)
            .map_sqlx_sqlite_opts(move |opts| opts.create_if_missing(true).busy_timeout(busy_timeout));
        options
    }

    #[test]
    fn a_shown_url_never_carries_its_password() {
        assert_eq!(redacted("postgres://app:s3cret@db:5432/payments"), "postgres://app:***@db:5432/payments");
        assert_eq!(redacted("postgres://app@db/payments"), "postgres://app@db/payments");
        assert_eq!(redacted("sqlite://payments.db?mode=rwc"), "sqlite://payments.db?mode=rwc");
    }

    #[tokio::test]
    async fn a_locked_sqlite_file_is_told_apart_from_other_errors() {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("busy.db");
        let holder = Database::connect(sqlite_pool(&path, SQLITE_BUSY_TIMEOUT)).await.expect("connects");
        holder.execute_unprepared("CREATE TABLE t (x INTEGER); BEGIN EXCLUSIVE").await.expect("locks");

        let locked = Database::connect(sqlite_pool(&path, Duration::ZERO)).await.expect_err("file is locked");
        let invalid = holder
            .query_one_raw(Statement::from_string(DbBackend::Sqlite, "SELECT FROM"))
            .await
            .expect_err("not SQL");

        assert!(is_sqlite_busy(&locked), "{locked}");
        assert!(!is_sqlite_busy(&invalid), "{invalid}");
    }
}
