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
//! A group-commit worker skips the load when it can: it knows the counter
//! its own last write left, and a batch that names no payment or charge
//! (new checkouts, most of the traffic) is decided as if nothing were
//! stored for its keys. The write then also checks, in the same statement,
//! that nothing is stored for any of them, which is exactly what a load
//! would have found (its events and sessions by inserting them with no
//! conflict clause: one already stored fails the statement); if something
//! is, or another writer committed since, it writes nothing, and the batch
//! is loaded and decided as above.
//!
//! Every array is bound whole and expanded with `unnest`, so the texts
//! never change with the batch's size: each is prepared once per
//! connection. Nothing here decides: the statements carry the domain's
//! [`Decision`] into rows.

mod load;
mod save;

use std::time::Instant;

use chrono::{DateTime, Utc};
use payments_domain::rules::Policy;
use payments_domain::write::{self, Decision, Input, Keys, Stored};
use sea_orm::sqlx::{self, ConnectOptions, Connection, PgConnection, PgPool};

use super::health::{self, Abandoned, DatabaseHealth, IDLE_CHECK};

/// The write path's statements by name, for the plan test (which checks on
/// large analyzed tables that each is planned with index lookups).
pub fn statements() -> [(&'static str, &'static str); 3] {
    [("load", load::LOAD), ("save", save::SAVE.as_str()), ("save without a load", save::SAVE_FRESH.as_str())]
}

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

impl From<Abandoned> for WriteError {
    fn from(abandoned: Abandoned) -> Self {
        Self::Database(abandoned.into())
    }
}

/// Loads, decides and writes `inputs`, again while another writer
/// committed in between; the decision written.
pub async fn apply<'a>(
    connection: &mut PgConnection,
    inputs: &[Input<'a>],
    policy: Policy,
    now: DateTime<Utc>,
) -> Result<Decision<'a>, WriteError> {
    Ok(apply_knowing(connection, inputs, policy, now, None).await?.0)
}

/// [`apply`], first without a load when the write counter is `known` (it
/// was this connection's own last write) and the batch names no payment
/// or charge: decided as if nothing were stored for its keys, and written
/// only if the counter is unchanged and that is so, which is what a load
/// would have found. New checkouts, most of a batch's events under load,
/// then take one statement instead of two; anything else costs one
/// statement that writes nothing, then the load. Also returns the counter
/// after the write.
async fn apply_knowing<'a>(
    connection: &mut PgConnection,
    inputs: &[Input<'a>],
    policy: Policy,
    now: DateTime<Utc>,
    known: Option<i64>,
) -> Result<(Decision<'a>, i64), WriteError> {
    let keys = write::keys(inputs, policy);
    let unloaded = keys.payment_intents.is_empty() && keys.charges.is_empty();
    if let Some(writes) = known.filter(|_| unloaded) {
        let decision = write::decide(inputs, &Stored::default(), policy);
        // Only refunds and disputes make facts, and each names a payment or
        // a charge; the statement without a load writes none.
        if decision.facts.is_empty() {
            match save::save(connection, &decision, writes, Some(&keys), now).await {
                Ok(Some(raised)) => return Ok((decision, raised)),
                Ok(None) => {}
                Err(error) if save::is_stored_key(&error) => {}
                Err(error) => return Err(error),
            }
        }
    }
    for _ in 0..ATTEMPTS {
        let (writes, stored) = load::load(connection, &keys).await?;
        let decision = write::decide(inputs, &stored, policy);
        if let Some(raised) = save::save(connection, &decision, writes, None, now).await? {
            return Ok((decision, raised));
        }
    }
    Err(WriteError::Contended)
}

/// [`Keys`] as the statements bind them: one text array each, the
/// families as two arrays of the same length.
struct KeyArrays<'k> {
    event_ids: Vec<&'k str>,
    sessions: Vec<&'k str>,
    payment_intents: Vec<&'k str>,
    checkout_payments: Vec<&'k str>,
    charges: Vec<&'k str>,
    users: Vec<&'k str>,
    courses: Vec<&'k str>,
}

impl<'k> KeyArrays<'k> {
    fn of(keys: &'k Keys) -> Self {
        fn strings(set: &std::collections::BTreeSet<String>) -> Vec<&str> {
            set.iter().map(String::as_str).collect()
        }
        let (users, courses) =
            keys.families.iter().map(|(user, course)| (user.as_str(), course.as_str())).unzip();
        Self {
            event_ids: strings(&keys.event_ids),
            sessions: strings(&keys.sessions),
            payment_intents: strings(&keys.payment_intents),
            checkout_payments: strings(&keys.checkout_payments),
            charges: strings(&keys.charges),
            users,
            courses,
        }
    }
}

/// How a writer's connection plans. The statements' plans do not depend on
/// their arrays' contents, so each is planned once, not on every batch. And
/// every table they read they read by key: a plan made while the tables
/// were empty (a new database that was vacuumed, whose statistics say zero
/// rows) would otherwise scan them whole for the life of the connection,
/// however large they grow (850 events/s instead of 4,000 at 16
/// connections, one sequential scan per event). Sequential scans are
/// priced out instead, which puts a plan's cost far above the JIT's
/// threshold (the counter's one-row table has no index), so JIT is off:
/// compiling the write cost half a second a batch, and saves nothing on
/// statements this short.
pub const SESSION: &str = "SET plan_cache_mode = force_generic_plan; SET enable_seqscan = off; SET jit = off";

/// A group-commit worker's own connection, opened with the pool's options
/// but outside it: sqlx checks a pooled connection with a round trip when it
/// is taken, which would add a third to a batch's two, and workers then
/// never compete with verify for pooled connections (a deployment needs one
/// connection per worker on top of the pool).
///
/// Opened on the first batch; after a failed statement it is closed, since
/// the connection itself may be what failed, and the next batch opens a new
/// one. Like the pool's ([`crate::store::connect_guarded`]), it is never
/// opened to a read-only server, and is retired when `health` distrusts
/// connections, which also abandons a batch waiting on it.
#[derive(Debug)]
pub struct Writer {
    pool: PgPool,
    health: DatabaseHealth,
    /// The connection and when it was opened.
    connection: Option<(PgConnection, Instant)>,
    last_used: Instant,
    /// The write counter after this writer's last write.
    writes: Option<i64>,
    /// Connections opened so far.
    opened: u64,
}

impl Writer {
    /// A writer connecting as `pool` does, following `health`.
    pub fn new(pool: PgPool, health: DatabaseHealth) -> Self {
        Self { pool, health, connection: None, last_used: Instant::now(), writes: None, opened: 0 }
    }

    /// How many connections this writer has opened.
    pub fn connections_opened(&self) -> u64 {
        self.opened
    }

    /// [`apply`] over the writer's connection, without a load when it can.
    pub async fn apply<'a>(
        &mut self,
        inputs: &[Input<'a>],
        policy: Policy,
        now: DateTime<Utc>,
    ) -> Result<Decision<'a>, WriteError> {
        let known = self.writes;
        let health = self.health.clone();
        let result = health
            .bounded(async {
                let connection = self.connection().await?;
                apply_knowing(connection, inputs, policy, now, known).await
            })
            .await;
        match &result {
            Ok((_, writes)) => (self.last_used, self.writes) = (Instant::now(), Some(*writes)),
            Err(_) => (self.connection, self.writes) = (None, None),
        }
        result.map(|(decision, _)| decision)
    }

    /// The open connection, pinged first if it has been idle; else a new
    /// one, refused if the server is read-only.
    async fn connection(&mut self) -> Result<&mut PgConnection, WriteError> {
        let idle = self.last_used.elapsed() > IDLE_CHECK;
        let open = match self.connection.take() {
            Some((_, opened)) if !self.health.trusts_opened_at(opened) => None,
            Some((mut connection, opened)) if idle => {
                connection.ping().await.ok().map(|()| (connection, opened))
            }
            open => open,
        };
        let (connection, _) = match open {
            Some(open) => self.connection.insert(open),
            None => {
                let opened = Instant::now();
                let mut connection = self.pool.connect_options().connect().await?;
                self.opened += 1;
                health::refuse_read_only(&mut connection).await?;
                sqlx::raw_sql(SESSION).execute(&mut connection).await?;
                self.connection.insert((connection, opened))
            }
        };
        Ok(connection)
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
