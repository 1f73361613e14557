//! One reader of the feed's newest changes per replica, shared by every
//! watcher that has caught up: each commit costs this replica one read of
//! the database however many consumers follow, and an idle replica one look
//! a second, where each watcher used to query on its own.
//!
//! A watcher subscribes *before* it reads its last page from the database,
//! and the tail's position at that moment is a change that page already
//! holds (the tail only ever reads what has committed), so every change
//! after the watcher's page arrives through the subscription: nothing is
//! skipped. A watcher that falls more than [`CAPACITY`] changes behind is
//! told so and catches up from the database again.
//!
//! The tail runs while anyone subscribes and stops when the last one has
//! gone; starting again, it begins at the newest change, before the first
//! subscriber can read its page.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use sea_orm::{DatabaseConnection, DbErr};
use tokio::sync::{Mutex, broadcast};
use tokio_util::sync::CancellationToken;

use crate::store::feed::{self, Change};
use crate::store::health::DatabaseHealth;
use crate::store::signals::FeedSignals;

/// Changes kept for subscribers that have not taken them yet.
pub const CAPACITY: usize = 1024;
/// Changes read per query.
const PAGE: u64 = 256;
/// How often the tail looks even without a wake-up.
const SAFETY_POLL: Duration = Duration::from_secs(1);

/// The shared reader: a broadcast of each new change, in cursor order.
#[derive(Debug)]
pub struct Tail {
    sender: broadcast::Sender<Arc<Change>>,
    /// Whether the reading task runs; taken to start or stop it, so that a
    /// subscriber never meets a task that is about to stop.
    running: Mutex<bool>,
    signals: FeedSignals,
    /// Bounds the reads.
    health: DatabaseHealth,
    shutdown: CancellationToken,
    /// Reads of the feed made for watchers, this one's and catch-ups'.
    reads: AtomicU64,
    /// The newest cursor read, while running: the lag metric's reference,
    /// so that sampling it costs no query.
    head: AtomicI64,
}

impl Tail {
    pub fn new(signals: FeedSignals, health: DatabaseHealth, shutdown: CancellationToken) -> Arc<Self> {
        let (sender, _) = broadcast::channel(CAPACITY);
        let (reads, head) = (AtomicU64::new(0), AtomicI64::new(0));
        Arc::new(Self { sender, running: Mutex::new(false), signals, health, shutdown, reads, head })
    }

    /// A receiver of every change committed after the newest one the
    /// database holds now (and perhaps a few before it, which the watcher
    /// skips). Starts the reading task if it is not running.
    pub async fn subscribe(
        self: &Arc<Self>,
        db: &DatabaseConnection,
    ) -> Result<broadcast::Receiver<Arc<Change>>, DbErr> {
        let mut running = self.running.lock().await;
        let receiver = self.sender.subscribe();
        if !*running {
            let head = feed::head(db).await?;
            self.head.store(head, Ordering::Relaxed);
            *running = true;
            tokio::spawn(Arc::clone(self).read(db.clone(), head));
        }
        Ok(receiver)
    }

    /// Reads each commit's changes after `head` and sends them on, until
    /// nobody subscribes or shutdown.
    async fn read(self: Arc<Self>, db: DatabaseConnection, mut head: i64) {
        let mut announcements = self.signals.announcements();
        loop {
            announcements.borrow_and_update();
            match self.health.bounded(self.read_page(&db, head, PAGE)).await {
                Ok(page) => {
                    let full = page.len() as u64 == PAGE;
                    for change in page {
                        head = change.change.cursor;
                        self.head.store(head, Ordering::Relaxed);
                        // No receiver left: checked below, under the lock.
                        let _ = self.sender.send(Arc::new(change));
                    }
                    if full {
                        continue;
                    }
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read new changes; watchers wait and are served once it can")
                }
            }
            if self.stop_if_unwatched().await {
                return;
            }
            tokio::select! {
                _ = announcements.changed() => {}
                () = tokio::time::sleep(SAFETY_POLL) => {}
                () = self.shutdown.cancelled() => return,
            }
        }
    }

    /// Reads a page of the feed, counted in [`Self::reads`].
    pub async fn read_page(
        &self,
        db: &DatabaseConnection,
        after: i64,
        limit: u64,
    ) -> Result<Vec<Change>, DbErr> {
        self.reads.fetch_add(1, Ordering::Relaxed);
        feed::read(db, after, limit).await
    }

    /// The newest cursor the shared reader has read (while it runs).
    pub fn head(&self) -> i64 {
        self.head.load(Ordering::Relaxed)
    }

    /// How many reads of the feed watchers have cost so far.
    pub fn reads(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
    }

    /// Stops the task when nobody subscribes; the next subscriber starts it.
    async fn stop_if_unwatched(&self) -> bool {
        let mut running = self.running.lock().await;
        if self.sender.receiver_count() == 0 {
            *running = false;
            return true;
        }
        false
    }
}
