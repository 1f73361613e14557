//! The write path on PostgreSQL in two statements: one loads what a batch
//! touches, the other writes what the domain decided.
//!
//! A transaction around load, decision and write would hold the write lock
//! across four round trips (begin, load, write, commit) for every batch,
//! and round trips, not rows, are most of a batch's time under load. So
//! the two statements run on their own, and the write is optimistic: the
//! load also reads `purchase_feed.writes`, and the write statement first
//! raises it from exactly that value. When another writer committed in
//! between, the raise matches no row, every insert of the statement (each
//! joined to the raise) writes nothing, and the batch is loaded and decided
//! again. Raising the counter takes its row's lock until the statement
//! commits, so writers still commit one at a time, and the change rows
//! take their cursors under that lock, in commit order.
//!
//! Every array is bound whole and expanded with `unnest`, so the texts
//! never change with the batch's size: each is prepared once per
//! connection. Nothing here decides: the statements carry the domain's
//! [`Decision`] into rows.

mod load;
mod save;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use payments_domain::rules::Policy;
use payments_domain::write::{self, Decision, Input};
use sea_orm::sqlx::{self, ConnectOptions, Connection, PgConnection, PgPool};

/// Attempts before a batch gives up on finding the state unchanged; each
/// one loses only to a batch that committed meanwhile.
const ATTEMPTS: usize = 20;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    /// A stored value the domain does not know: a newer version's, or a
    /// damaged row.
    #[error("stored value: {0}")]
    Stored(String),
    #[error("other writers committed before this batch {ATTEMPTS} times in a row")]
    Contended,
}

/// Loads, decides and writes `inputs`, again while another writer
/// committed in between; the decision written.
pub async fn apply<'a>(
    connection: &mut PgConnection,
    inputs: &[Input<'a>],
    policy: Policy,
    now: DateTime<Utc>,
) -> Result<Decision<'a>, WriteError> {
    let keys = write::keys(inputs, policy);
    for _ in 0..ATTEMPTS {
        let (writes, stored) = load::load(connection, &keys).await?;
        let decision = write::decide(inputs, &stored, policy);
        if save::save(connection, &decision, writes, now).await? {
            return Ok(decision);
        }
    }
    Err(WriteError::Contended)
}

/// A connection left unused this long is pinged before its next batch, so
/// that one dropped while traffic was quiet (a database restart, an idle
/// timeout on the way) is replaced instead of failing that batch.
pub const IDLE_CHECK: Duration = Duration::from_secs(1);

/// A group-commit worker's own connection, opened with the pool's options
/// but outside it: sqlx checks a pooled connection with a round trip when it
/// is taken, which would add a third to a batch's two, and workers then
/// never compete with verify for pooled connections (a deployment needs one
/// connection per worker on top of the pool).
///
/// Opened on the first batch; after a failed statement it is closed, since
/// the connection itself may be what failed, and the next batch opens a new
/// one.
#[derive(Debug)]
pub struct Writer {
    pool: PgPool,
    connection: Option<PgConnection>,
    last_used: Instant,
}

impl Writer {
    /// A writer connecting as `pool` does.
    pub fn new(pool: PgPool) -> Self {
        Self { pool, connection: None, last_used: Instant::now() }
    }

    /// [`apply`] over the writer's connection.
    pub async fn apply<'a>(
        &mut self,
        inputs: &[Input<'a>],
        policy: Policy,
        now: DateTime<Utc>,
    ) -> Result<Decision<'a>, WriteError> {
        let connection = self.connection().await?;
        let result = apply(connection, inputs, policy, now).await;
        match &result {
            Ok(_) => self.last_used = Instant::now(),
            Err(_) => self.connection = None,
        }
        result
    }

    /// The open connection, pinged first if it has been idle; else a new one.
    async fn connection(&mut self) -> Result<&mut PgConnection, sqlx::Error> {
        let idle = self.last_used.elapsed() > IDLE_CHECK;
        let open = match self.connection.take() {
            Some(mut connection) if idle => connection.ping().await.ok().map(|()| connection),
            open => open,
        };
        let connection = match open {
            Some(connection) => connection,
            None => {
                let mut connection = self.pool.connect_options().connect().await?;
                // The statements' plans do not depend on their arrays'
                // contents: plan them once, not on every batch.
                sqlx::raw_sql("SET plan_cache_mode = force_generic_plan").execute(&mut connection).await?;
                connection
            }
        };
        Ok(self.connection.insert(connection))
    }
}

/// A sqlx error as sea-orm reports it, for callers that speak [`sea_orm::DbErr`].
pub fn db_error(error: WriteError) -> sea_orm::DbErr {
    match error {
        WriteError::Database(error) => {
            sea_orm::DbErr::Query(sea_orm::RuntimeErr::SqlxError(std::sync::Arc::new(error)))
        }
        WriteError::Stored(message) => sea_orm::DbErr::Type(message),
        WriteError::Contended => sea_orm::DbErr::Custom(WriteError::Contended.to_string()),
    }
}
