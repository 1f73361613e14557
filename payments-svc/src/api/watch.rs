//! Serving the change feed to watchers: each watcher is one task that reads
//! the feed in cursor order ([`crate::store::feed`]) until it has caught
//! up, then takes each new change from the replica's shared reader
//! ([`super::tail`]), and sends through a small bounded channel to its gRPC
//! stream.
//!
//! The channel is the back-pressure: a consumer that reads slowly or not at
//! all fills its HTTP/2 window, then the channel, and then its task waits,
//! holding one page of changes and no database connection; one that falls
//! behind the shared reader catches up from the database again. Event
//! handling never waits for a watcher.
//!
//! The shared reader reads after each commit that published changes, as
//! announced by this process after its commit, or, on PostgreSQL, by a
//! `NOTIFY` from another replica ([`listen`]), which each replica sends after
//! its commits while some replica listens ([`tell_listeners`]). It also
//! looks once a second in case a wake-up was lost (a dropped `LISTEN`
//! connection, another process on the same SQLite file).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sea_orm::{DatabaseConnection, DbBackend, DbErr};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::tail::Tail;
use crate::metrics::{ConnectionLabels, Metrics};
use crate::store::feed::{self, Change};
use crate::store::health::{Abandoned, DatabaseHealth};
use crate::store::signals::{self, FeedSignals};

/// Changes read per query.
const PAGE: u64 = 256;
/// Changes a watcher holds ready beyond what its stream has taken.
const BUFFERED: usize = 32;
/// How often notifications are asked about again after a failure.
const SAFETY_POLL: Duration = Duration::from_secs(1);

/// Why a watch ended without the consumer hanging up.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// Changes after the cursor were removed by retention.
    #[error(
        "changes after cursor {after} are no longer kept; the oldest kept is {oldest}: read the current state with ListPurchases, then watch from {}",
        oldest - 1
    )]
    TooOld { after: i64, oldest: i64 },
    /// The cursor is beyond every change this feed has published: it was
    /// saved from another database, or from this one before a restore. No
    /// change after it will ever come, so the consumer must resync.
    #[error(
        "cursor {after} is beyond the newest change, {newest}: this feed was restored or rebuilt; read the current state with ListPurchases, then watch from {newest}"
    )]
    Ahead { after: i64, newest: i64 },
    /// The cursor lies outside this feed's history: it was handed out by
    /// another history, of a database since rebuilt (from Stripe, by
    /// `payments-svc sync`) or replaced. Resuming it here would skip or
    /// repeat changes at random, so the consumer must resync.
    #[error(
        "cursor {after} is from another history of this feed, which starts after {origin}: the database was rebuilt or replaced; read the current state with ListPurchases, then watch from {}",
        oldest - 1
    )]
    OtherHistory { after: i64, origin: i64, oldest: i64 },
    /// This replica already serves as many watches as it may.
    #[error(
        "this replica serves its limit of {limit} change-feed watches (PAYMENTS_MAX_WATCHERS): retry later, or on another replica"
    )]
    TooMany { limit: usize },
    /// payments-svc is stopping; the consumer reconnects (to another
    /// replica) with its last cursor.
    #[error("payments-svc is shutting down; reconnect with the cursor of the last change handled")]
    ShuttingDown,
    /// The database stopped answering or failed over; the consumer
    /// reconnects with its last cursor, checked against the database as it
    /// is now.
    #[error(
        "the database stopped answering or failed over; reconnect with the cursor of the last change handled"
    )]
    Abandoned,
    #[error(transparent)]
    Db(#[from] DbErr),
}

impl From<Abandoned> for WatchError {
    fn from(_: Abandoned) -> Self {
        Self::Abandoned
    }
}

/// Every open watch: where each stands, for the lag metric, and the signal
/// that ends them all at shutdown (a server drains its calls before it
/// stops, and a watch would never finish by itself).
#[derive(Debug)]
pub struct Watchers {
    next_id: AtomicU64,
    positions: Mutex<BTreeMap<u64, i64>>,
    /// How many watches are open, for [`listen`] to wait on.
    open: tokio::sync::watch::Sender<usize>,
    shutdown: CancellationToken,
    /// The application's wake-ups, which the shared reader waits for.
    signals: FeedSignals,
    /// The one reader of new changes that caught-up watchers share.
    tail: Arc<Tail>,
    /// Most watches open at once.
    limit: usize,
}

impl Watchers {
    /// At most `limit` watches, woken by `signals`, that end when
    /// `shutdown` is cancelled.
    pub fn new(
        signals: FeedSignals,
        health: DatabaseHealth,
        shutdown: CancellationToken,
        limit: usize,
    ) -> Self {
        Self {
            next_id: AtomicU64::new(0),
            positions: Mutex::default(),
            open: tokio::sync::watch::Sender::default(),
            tail: Tail::new(signals.clone(), health, shutdown.clone()),
            shutdown,
            signals,
            limit,
        }
    }

    /// How many watches are open, and the cursor of the one furthest behind.
    pub fn slowest(&self) -> (usize, Option<i64>) {
        let positions = self.positions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        (positions.len(), positions.values().min().copied())
    }

    fn register(self: &Arc<Self>, position: i64) -> Result<Registration, WatchError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut positions = self.positions.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if positions.len() >= self.limit {
                return Err(WatchError::TooMany { limit: self.limit });
            }
            positions.insert(id, position);
        }
        self.open.send_modify(|open| *open += 1);
        Ok(Registration { watchers: Arc::clone(self), id })
    }

    fn set(&self, id: u64, position: i64) {
        self.positions.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).insert(id, position);
    }
}

/// An open watch's entry in [`Watchers`], removed when the watch ends.
struct Registration {
    watchers: Arc<Watchers>,
    id: u64,
}

impl Registration {
    fn advance(&self, position: i64) {
        self.watchers.set(self.id, position);
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.watchers.positions.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).remove(&self.id);
        self.watchers.open.send_modify(|open| *open = open.saturating_sub(1));
    }
}

/// Starts a watch of the changes after `after` (0: from the oldest kept).
/// The receiver yields them in cursor order, then each new one as it
/// commits; it ends with the error that stopped the watch, if any. The task
/// stops when the receiver is dropped. Refused when the replica serves its
/// limit of watches.
///
/// A watch ends when `health` distrusts the database's connections (it
/// stopped answering, or failed over): its consumer reconnects with the
/// cursor of the last change it handled, which is then checked against the
/// database as it is now.
pub fn start(
    db: DatabaseConnection,
    health: DatabaseHealth,
    after: i64,
    watchers: &Arc<Watchers>,
) -> Result<mpsc::Receiver<Result<Change, WatchError>>, WatchError> {
    let registration = watchers.register(after)?;
    let (sender, receiver) = mpsc::channel(BUFFERED);
    let shutdown = watchers.shutdown.clone();
    let tail = Arc::clone(&watchers.tail);
    tokio::spawn(async move {
        let result = tokio::select! {
            result = health.bounded(follow(&db, after, &tail, &sender, &registration)) => result,
            () = shutdown.cancelled() => Err(WatchError::ShuttingDown),
        };
        if let Err(error) = result {
            // Best effort: a consumer that stopped reading gets no last word.
            let _ = sender.try_send(Err(error));
        }
    });
    Ok(receiver)
}

async fn follow(
    db: &DatabaseConnection,
    after: i64,
    tail: &Arc<Tail>,
    sender: &mpsc::Sender<Result<Change, WatchError>>,
    registration: &Registration,
) -> Result<(), WatchError> {
    check_this_history(db, after).await?;
    let mut position = after;
    loop {
        // Subscribed before the last page is read: see `tail`.
        let mut live = tail.subscribe(db).await?;
        loop {
            let page = tail.read_page(db, position, PAGE).await?;
            check_kept(db, after, position).await?;
            let full = page.len() as u64 == PAGE;
            for change in page {
                if !send(sender, change, &mut position, registration).await {
                    return Ok(());
                }
            }
            if !full {
                break;
            }
        }
        // Caught up: from the shared reader, until this one falls behind it.
        loop {
            let received = tokio::select! {
                received = live.recv() => received,
                () = sender.closed() => return Ok(()),
            };
            match received {
                Ok(change) if change.change.cursor <= position => {}
                Ok(change) => {
                    if !send(sender, Change::clone(&change), &mut position, registration).await {
                        return Ok(());
                    }
                }
                Err(_lagged_or_closed) => break,
            }
        }
    }
}

/// Sends one change to the consumer; false once it has hung up.
async fn send(
    sender: &mpsc::Sender<Result<Change, WatchError>>,
    change: Change,
    position: &mut i64,
    registration: &Registration,
) -> bool {
    let cursor = change.change.cursor;
    if sender.send(Ok(change)).await.is_err() {
        return false;
    }
    *position = cursor;
    registration.advance(cursor);
    true
}

/// Fails when changes right after `position` may have been pruned. Called
/// after reading the page that follows `position`: pruning removes rows and
/// moves the horizon in one transaction, so a horizon still at or before
/// `position` now means the page was read whole. A watch from 0 starts at
/// the oldest change kept, whatever was pruned.
async fn check_kept(db: &DatabaseConnection, after: i64, position: i64) -> Result<(), WatchError> {
    if after == 0 && position == 0 {
        return Ok(());
    }
    let feed::Horizon { pruned_through, oldest, .. } = feed::horizon(db).await?;
    if position < pruned_through {
        let oldest = oldest.unwrap_or(pruned_through + 1);
        return Err(WatchError::TooOld { after: position, oldest });
    }
    Ok(())
}

/// Fails when `after` is not a cursor this history of the feed gave out:
/// outside its range (another history's), or beyond the newest cursor ever
/// published (kept or pruned). Checked once, at the start: a cursor the
/// consumer received from this feed is never ahead of it.
async fn check_this_history(db: &DatabaseConnection, after: i64) -> Result<(), WatchError> {
    if after == 0 {
        return Ok(());
    }
    let feed::Horizon { pruned_through, oldest, origin } = feed::horizon(db).await?;
    if feed::from_another_history(after, origin) {
        let oldest = oldest.unwrap_or(pruned_through + 1);
        return Err(WatchError::OtherHistory { after, origin, oldest });
    }
    let newest = feed::head(db).await?.max(pruned_through);
    if after > newest {
        return Err(WatchError::Ahead { after, newest });
    }
    Ok(())
}

/// On PostgreSQL, relays `NOTIFY` on [`signals::CHANNEL`] from every replica to
/// this process's watchers, while it has any, until `shutdown`.
///
/// The `LISTEN` connection is open only while a watch is: every commit that
/// publishes notifies, and a listening connection costs the database a
/// wake-up per notification, which a replica without watchers has no use
/// for. sqlx's listener reconnects by itself; a notification lost meanwhile
/// is covered by the watchers' safety poll, and each reconnect wakes them.
/// When `health` distrusts the database's connections, the listening one
/// is dropped and another opened: a `LISTEN` on a half-open connection, or
/// on a server that has since been replaced, would never hear again.
pub async fn listen(
    db: DatabaseConnection,
    watchers: Arc<Watchers>,
    health: DatabaseHealth,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    if db.get_database_backend() != DbBackend::Postgres {
        return;
    }
    let mut open = watchers.open.subscribe();
    let mut listened = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            watched = async { open.wait_for(|open| *open > 0).await.is_ok() } => if !watched { return },
        }
        if std::mem::replace(&mut listened, true) {
            metrics.reconnects.get_or_create(&LISTENER).inc();
        }
        let relayed = health.bounded(relay(&db, &watchers.signals, &mut open, &shutdown)).await;
        if let Err(abandoned) = relayed {
            tracing::info!(%abandoned, "listening for change notifications again");
            watchers.signals.wake_readers();
        }
    }
}

/// The label of the listening connection's reconnects.
const LISTENER: ConnectionLabels = ConnectionLabels { connection: "listener" };

/// Relays notifications until no watch is open or `shutdown`.
async fn relay(
    db: &DatabaseConnection,
    readers: &FeedSignals,
    open: &mut tokio::sync::watch::Receiver<usize>,
    shutdown: &CancellationToken,
) -> Result<(), Abandoned> {
    let pool = db.get_postgres_connection_pool().clone();
    let mut listener = match sea_orm::sqlx::postgres::PgListener::connect_with(&pool).await {
        Ok(listener) => listener,
        Err(error) => {
            tracing::warn!(%error, "cannot LISTEN for change notifications; watchers poll once a second");
            shutdown_or_idle(open, shutdown).await;
            return Ok(());
        }
    };
    // The shared lock first, so that other replicas notify from now on;
    // then LISTEN; then a read, which sees whatever committed before.
    let listening = sea_orm::sqlx::query("SELECT pg_advisory_lock_shared($1)").bind(signals::LISTENING_LOCK);
    let listened = match listening.execute(&mut listener).await {
        Ok(_) => listener.listen(signals::CHANNEL).await,
        Err(error) => Err(error),
    };
    if let Err(error) = listened {
        tracing::warn!(%error, "cannot LISTEN for change notifications; watchers poll once a second");
        shutdown_or_idle(open, shutdown).await;
        return Ok(());
    }
    readers.wake_readers();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return Ok(()),
            () = async { let _ = open.wait_for(|open| *open == 0).await; } => return Ok(()),
            received = listener.try_recv() => match received {
                Ok(_) => readers.wake_readers(),
                Err(error) => {
                    // A new connection needs the lock again: start over.
                    tracing::warn!(%error, "change notifications interrupted; reconnecting");
                    tokio::time::sleep(SAFETY_POLL).await;
                    readers.wake_readers();
                    return Ok(());
                }
            },
        }
    }
}

/// Wakes the watchers of other replicas after this one commits changes
/// ([`signals::notify_listeners`]) until `shutdown`. Commits announced while a
/// notification is being sent are told by the next one, so there is at
/// most one in flight and one due.
///
/// Whether any replica listens at all is asked once a [`SAFETY_POLL`], and
/// only if this replica committed since: while none listens, a commit wakes
/// no task and costs no round trip. A replica that starts listening
/// meanwhile is told within that interval, which its watchers' own look
/// covers.
pub async fn tell_listeners(
    db: DatabaseConnection,
    signals: FeedSignals,
    health: DatabaseHealth,
    shutdown: CancellationToken,
) {
    if db.get_database_backend() != DbBackend::Postgres {
        return;
    }
    let mut asked = tokio::time::interval(SAFETY_POLL);
    asked.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut commits_when_asked = 0;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = asked.tick() => {
                let commits = signals.commits_so_far();
                if commits != commits_when_asked {
                    commits_when_asked = commits;
                    // Unknown counts as listening: a notification too many is harmless.
                    let listening = health.bounded(signals::anyone_listening(&db)).await;
                    signals.set_listened(listening.unwrap_or(true));
                }
            }
            () = signals.notification_due() => {
                if let Err(error) = health.bounded(signals::notify_listeners(&db)).await {
                    tracing::warn!(%error, "cannot notify other replicas of changes; their watchers look within a second");
                }
            }
        }
    }
}

/// After a failed `LISTEN`, waits until the watches close (the next one
/// tries again) or shutdown.
async fn shutdown_or_idle(open: &mut tokio::sync::watch::Receiver<usize>, shutdown: &CancellationToken) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = async { let _ = open.wait_for(|open| *open == 0).await; } => {}
    }
}

/// Keeps the watcher metrics current (once a second) until `shutdown`: how
/// many watches are open, and how many cursors the slowest is behind the
/// newest change.
pub async fn sample(watchers: Arc<Watchers>, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let mut reads_counted = 0;
    loop {
        let (open, slowest) = watchers.slowest();
        metrics.feed_watchers.set(open as i64);
        let reads = watchers.tail.reads();
        metrics.feed_reads.inc_by(reads - reads_counted);
        reads_counted = reads;
        // Measured against what the shared reader has read: no query.
        let lag = slowest.map_or(0, |position| (watchers.tail.head() - position).max(0));
        metrics.feed_lag.set(lag);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
