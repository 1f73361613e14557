//! Whether the database answers, known within a second of it failing and
//! of it coming back, for the gRPC health service (and through it the
//! gateway's readiness); and which connections are still trusted.
//!
//! A probe on a timer alone would lag by its period, and a shorter period
//! costs the database queries when nothing is wrong. So the paths that
//! meet a database error tell [`DatabaseHealth`] (nothing is added to the
//! path when the database answers), and the watcher probes at once. The
//! probe has its own connection on PostgreSQL: a pool busy with writes
//! would make a ping wait for a connection and look like an outage.
//!
//! A server that vanishes without a reset (its host gone, a network
//! partition, a failover that moves an address) leaves every open
//! connection half-open: a statement sent on one waits for an answer that
//! never comes, for as long as the kernel's TCP settings allow, which by
//! default is many minutes. The probe notices such a server within about
//! a second ([`Verdicts`]), and [`DatabaseHealth::distrust`] then ends every operation
//! started through [`DatabaseHealth::bounded`] before that moment and
//! retires every connection opened before it, so the next operation takes
//! a new connection to wherever the database's address leads now. A
//! healthy server that is merely slow is never cut off: the probe answers.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sea_orm::sqlx::{ConnectOptions as _, Connection as _, PgConnection};
use sea_orm::{ConnectOptions, DatabaseConnection, DbBackend, DbErr, RuntimeErr};
use tokio::sync::{Notify, watch};

/// Longest a probe may take before the database counts as not answering.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Failed database operations, reported as they happen, and the moment
/// connections were last distrusted; clones share them.
#[derive(Debug, Clone)]
pub struct DatabaseHealth(Arc<Shared>);

#[derive(Debug)]
struct Shared {
    failed: Notify,
    /// When connections were last distrusted (the start, until then).
    distrusted: watch::Sender<Instant>,
}

impl Default for DatabaseHealth {
    fn default() -> Self {
        Self(Arc::new(Shared { failed: Notify::new(), distrusted: watch::Sender::new(Instant::now()) }))
    }
}

/// An operation ended because the server stopped answering (or changed)
/// while it waited.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the database stopped answering; the operation was abandoned")]
pub struct Abandoned;

impl From<Abandoned> for DbErr {
    fn from(abandoned: Abandoned) -> Self {
        DbErr::Conn(RuntimeErr::Internal(abandoned.to_string()))
    }
}

impl From<Abandoned> for sea_orm::sqlx::Error {
    fn from(abandoned: Abandoned) -> Self {
        Self::Io(std::io::Error::new(std::io::ErrorKind::TimedOut, abandoned))
    }
}

impl DatabaseHealth {
    /// A database operation failed: probe now.
    pub fn failed(&self) {
        self.0.failed.notify_one();
    }

    /// Completes at the next reported failure (or at once for one reported
    /// since the last wait).
    pub async fn next_failure(&self) {
        self.0.failed.notified().await;
    }

    /// The server stopped answering, answered again after not answering,
    /// or turned read-only: operations waiting on it are abandoned, and no
    /// connection opened until now is used again.
    pub fn distrust(&self) {
        self.0.distrusted.send_replace(Instant::now());
    }

    /// Whether a connection opened at `opened` may still be used.
    pub fn trusts_opened_at(&self, opened: Instant) -> bool {
        opened > *self.0.distrusted.borrow()
    }

    /// Whether a connection opened `age` ago may still be used.
    pub fn trusts_aged(&self, age: Duration) -> bool {
        self.0.distrusted.borrow().elapsed() > age
    }

    /// `operation`, unless connections are distrusted before it completes:
    /// then it is dropped (its connection is retired, never reused) and
    /// fails with [`Abandoned`]. This is the bound on every statement: it
    /// holds whatever the kernel's TCP settings, and it never cuts off a
    /// server that is slow but answers.
    pub async fn bounded<T, E: From<Abandoned>>(
        &self,
        operation: impl Future<Output = Result<T, E>>,
    ) -> Result<T, E> {
        let mut distrusted = self.0.distrusted.subscribe();
        tokio::select! {
            result = operation => result,
            _ = distrusted.changed() => Err(Abandoned.into()),
        }
    }
}

/// What a probe found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// The server that took writes before takes writes.
    Writable,
    /// A server that takes writes, but not the one that answered before:
    /// it restarted, or a standby was promoted and the address moved to it.
    NewServer,
    /// A server in recovery (a standby, or an old primary that came back
    /// as one): nothing can be written through it.
    ReadOnly,
    /// No answer within [`PROBE_TIMEOUT`]: a server that is down without
    /// saying so, or one too busy to answer in time.
    Silent,
    /// The connection failed or was refused: the server, or the way to
    /// it, went away or restarted, and every connection to it with it.
    Unreachable,
}

/// Probes in a row that must go unanswered before connections are
/// distrusted: one slow answer from a busy server (a checkpoint, a stalled
/// host) is no reason to abandon what waits on it, and a second probe comes
/// at most 0.7 s later.
pub const SILENT_PROBES: u32 = 2;

/// When the probes' answers call for distrusting the connections: at once
/// when the probe's connection failed, the server is read-only or is
/// another than before; after [`SILENT_PROBES`] unanswered in a row and at
/// each such answer after that; and once more when the server answers
/// again after a distrust (whatever was opened meanwhile may be stuck on
/// the way to the old server, and a lease taken before may have gone with
/// it). A single slow answer from the same server distrusts nothing.
#[derive(Debug, Default)]
pub struct Verdicts {
    silent_in_a_row: u32,
    distrusted: bool,
}

impl Verdicts {
    /// Whether the connections are to be distrusted now, given `answer`.
    pub fn distrust_after(&mut self, answer: Answer) -> bool {
        self.silent_in_a_row = if answer == Answer::Silent { self.silent_in_a_row + 1 } else { 0 };
        let distrust = match answer {
            Answer::Writable => std::mem::take(&mut self.distrusted),
            Answer::NewServer => {
                self.distrusted = false;
                true
            }
            Answer::ReadOnly | Answer::Unreachable => true,
            Answer::Silent => self.silent_in_a_row >= SILENT_PROBES,
        };
        if !answer.is_writable() {
            self.distrusted |= distrust;
        }
        distrust
    }
}

impl Answer {
    /// Whether the server takes writes.
    pub fn is_writable(self) -> bool {
        matches!(self, Self::Writable | Self::NewServer)
    }
}

/// Asks the database whether it answers.
#[derive(Debug)]
pub struct Probe {
    db: DatabaseConnection,
    /// PostgreSQL: the probe's own connection, while it works.
    connection: Option<PgConnection>,
    /// PostgreSQL: when the writable server that answered last started,
    /// which tells it from a restarted or promoted one.
    server_started: Option<String>,
}

impl Probe {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, connection: None, server_started: None }
    }

    /// What the database answered within [`PROBE_TIMEOUT`].
    pub async fn ask(&mut self) -> Answer {
        let answer = tokio::time::timeout(PROBE_TIMEOUT, self.ping()).await.unwrap_or(Answer::Silent);
        if !answer.is_writable() {
            self.connection = None;
        }
        answer
    }

    async fn ping(&mut self) -> Answer {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return if self.db.ping().await.is_ok() { Answer::Writable } else { Answer::Unreachable };
        }
        if self.connection.is_none() {
            let options = self.db.get_postgres_connection_pool().connect_options();
            self.connection = options.connect().await.ok();
        }
        let Some(connection) = &mut self.connection else { return Answer::Unreachable };
        let identity = sea_orm::sqlx::query_as::<_, (bool, String)>(
            "SELECT pg_is_in_recovery(), pg_postmaster_start_time()::text",
        );
        match identity.fetch_one(connection).await {
            Ok((true, _)) => Answer::ReadOnly,
            Ok((false, started)) => match self.server_started.replace(started.clone()) {
                Some(before) if before != started => Answer::NewServer,
                _ => Answer::Writable,
            },
            Err(_) => Answer::Unreachable,
        }
    }
}

/// Makes a PostgreSQL pool follow `health`:
/// - a new connection is refused when the server is in recovery (a standby,
///   or an old primary back as one): nothing could be written through it;
/// - a connection opened before `health` last distrusted connections is
///   closed instead of being handed out or taken back;
/// - the round trip that checks a connection taken back is bounded by
///   `health`. sqlx makes one of its own that nothing bounds: on a
///   half-open connection it would never return, and the connection's
///   place in the pool would be lost for good. Ours comes first, so sqlx's
///   meets a server that has just answered;
/// - a connection is checked before it is handed out only when it has
///   been idle for [`IDLE_CHECK`] (as the writers' own connections are):
///   anything that breaks every connection at once breaks the probe's too,
///   and is handled by [`DatabaseHealth::distrust`].
pub fn guard(options: &mut ConnectOptions, health: &DatabaseHealth) {
    let health = health.clone();
    options.test_before_acquire(false).map_sqlx_postgres_pool_opts(move |pool| {
        let (acquiring, releasing) = (health.clone(), health.clone());
        pool.test_before_acquire(false)
            .after_connect(|connection, _| Box::pin(refuse_read_only(connection)))
            .before_acquire(move |connection, meta| {
                let health = acquiring.clone();
                Box::pin(async move {
                    if !health.trusts_aged(meta.age) {
                        return Ok(false);
                    }
                    if meta.idle_for > IDLE_CHECK {
                        health.bounded(connection.ping()).await?;
                    }
                    Ok(true)
                })
            })
            .after_release(move |connection, meta| {
                let health = releasing.clone();
                Box::pin(async move {
                    if !health.trusts_aged(meta.age) {
                        return Err(sea_orm::sqlx::Error::Protocol(DISTRUSTED.into()));
                    }
                    health.bounded(connection.ping()).await?;
                    Ok(true)
                })
            })
    });
}

/// How long a connection may sit unused before it is checked with a round
/// trip when it is next used, so that one dropped while traffic was quiet
/// (an idle timeout on the way, a server ending one session) is replaced
/// instead of failing what it was taken for.
pub const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Why a connection opened before the server stopped answering is dropped.
const DISTRUSTED: &str = "opened before the database server stopped answering";

/// Fails when the server behind a new `connection` is read-only: writes
/// through it would all fail.
pub async fn refuse_read_only(connection: &mut PgConnection) -> Result<(), sea_orm::sqlx::Error> {
    if in_recovery(connection).await? {
        return Err(sea_orm::sqlx::Error::Configuration(READ_ONLY.into()));
    }
    Ok(())
}

/// Why a new connection is refused.
const READ_ONLY: &str = "the database server is read-only (in recovery): not the primary";

/// Whether the server behind `connection` is in recovery: a standby, which
/// refuses writes.
pub async fn in_recovery(connection: &mut PgConnection) -> Result<bool, sea_orm::sqlx::Error> {
    sea_orm::sqlx::query_scalar("SELECT pg_is_in_recovery()").fetch_one(connection).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn distrust_abandons_what_waits_and_retires_older_connections() {
        let health = DatabaseHealth::default();
        let opened = Instant::now();
        assert!(health.trusts_opened_at(opened));

        let waiting = health.bounded(std::future::pending::<Result<(), DbErr>>());
        let distrusting = async {
            tokio::task::yield_now().await;
            health.distrust();
        };
        let (abandoned, ()) = tokio::join!(waiting, distrusting);

        assert!(matches!(abandoned, Err(DbErr::Conn(_))), "{abandoned:?}");
        assert!(!health.trusts_opened_at(opened));
        assert!(!health.trusts_aged(Duration::from_secs(1)));
        assert!(health.trusts_opened_at(Instant::now()));
    }

    #[test]
    fn connections_are_distrusted_when_the_server_changed_or_stayed_silent_and_once_more_when_it_answers() {
        use Answer::{NewServer, ReadOnly, Silent, Unreachable, Writable};
        let mut verdicts = Verdicts::default();
        let answers = [
            Writable,
            Silent,
            Writable,
            Silent,
            Silent,
            Silent,
            Writable,
            Writable,
            ReadOnly,
            Writable,
            Unreachable,
            Writable,
            Silent,
            NewServer,
            Writable,
        ];

        let distrusted: Vec<bool> =
            answers.into_iter().map(|answer| verdicts.distrust_after(answer)).collect();

        let expected =
            [false, false, false, false, true, true, true, false, true, true, true, true, false, true, false];
        assert_eq!(distrusted, expected);
    }

    #[tokio::test]
    async fn what_completes_is_never_abandoned_by_a_later_distrust() {
        let health = DatabaseHealth::default();
        health.distrust();

        let done = health.bounded(async { Ok::<_, DbErr>(7) }).await;

        assert_eq!(done.ok(), Some(7));
    }
}
