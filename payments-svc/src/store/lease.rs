//! One replica at a time: work that every replica schedules but only one
//! should do at once (the missed-webhook sweep, pruning stored payloads)
//! takes a lease first.
//!
//! A lease is an advisory lock held by a transaction, so it lives exactly
//! as long as that transaction's connection to that server: a server that
//! stopped answering, or that a promoted standby replaced, took the lock
//! with it, and another replica may already hold it anew. Work under a
//! lease ([`under`]) therefore runs only while the connections are trusted.

use std::future::Future;

use sea_orm::{
    ConnectionTrait, DatabaseConnection, DatabaseTransaction, DbBackend, DbErr, Statement, TransactionTrait,
};

use super::health::DatabaseHealth;

/// The advisory lock of the scheduled missed-webhook sweep.
pub const RECONCILE: i64 = 0x7265_636f_6e63_696c; // "reconcil"
/// The advisory lock of pruning stored events' payloads.
pub const EVENTS_PRUNE: i64 = 0x6576_7473_7072_756e; // "evtsprun"
/// `payments-svc sync`: one import from Stripe at a time.
pub const SYNC: i64 = 0x7379_6e63_7374_7270; // "syncstrp"
/// The scheduled `sync --check`.
pub const SYNC_CHECK: i64 = 0x7379_6e63_6368_6563; // "syncchec"

/// A lease held until dropped or released.
#[derive(Debug)]
pub enum Lease {
    /// PostgreSQL: an advisory lock, held by a transaction of its own.
    Postgres(DatabaseTransaction),
    /// SQLite serves one host; the process's own schedule is the lease.
    Alone,
}

impl Lease {
    pub async fn release(self) -> Result<(), DbErr> {
        match self {
            Self::Postgres(txn) => txn.commit().await,
            Self::Alone => Ok(()),
        }
    }
}

/// `work` under lease `key`, unless another replica holds it (then `None`).
/// When `health` distrusts the database's connections before `work` is
/// done, `work` is abandoned rather than finished under a lock that may no
/// longer be held.
pub async fn under<T, E: From<DbErr>>(
    db: &DatabaseConnection,
    health: &DatabaseHealth,
    key: i64,
    work: impl Future<Output = Result<T, E>>,
) -> Result<Option<T>, E> {
    let leased = async {
        let Some(held) = try_take(db, key).await? else { return Ok(None) };
        let done = work.await?;
        held.release().await?;
        Ok(Some(done))
    };
    match health.bounded(async { Ok::<_, DbErr>(leased.await) }).await {
        Ok(result) => result,
        Err(abandoned) => Err(abandoned.into()),
    }
}

/// Takes lease `key` if no other replica holds it; `None` if one does.
pub async fn try_take(db: &DatabaseConnection, key: i64) -> Result<Option<Lease>, DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(Some(Lease::Alone));
    }
    let txn = db.begin().await?;
    Ok(try_lock(&txn, key).await?.then_some(Lease::Postgres(txn)))
}

/// Takes PostgreSQL advisory lock `key` for the rest of `db`'s transaction,
/// if no other transaction holds it: whether it did. Outside a transaction
/// the lock ends with the statement, which makes the call a probe: whether
/// anyone else holds `key` now.
pub async fn try_lock(db: &impl ConnectionTrait, key: i64) -> Result<bool, DbErr> {
    let locked = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_try_advisory_xact_lock($1) AS locked",
            [key.into()],
        ))
        .await?
        .map(|row| row.try_get::<bool>("", "locked"))
        .transpose()?;
    Ok(locked == Some(true))
}
