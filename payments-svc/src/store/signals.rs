//! Wake-ups of the change feed's readers: this process's own commits, and
//! other replicas' by PostgreSQL `NOTIFY`.
//!
//! The state is owned by one application ([`FeedSignals`], a cheap handle
//! to it, as mini-redis shares its `Db`), not by the process: two
//! applications in one process (every in-process test) wake only their
//! own readers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use sea_orm::{ConnectionTrait, DbBackend, DbErr};
use tokio::sync::{Notify, watch};

use super::lease;

/// The PostgreSQL channel notified when changes commit.
pub const CHANNEL: &str = "purchase_changes";

/// One application's wake-ups; clones share them.
#[derive(Debug, Clone, Default)]
pub struct FeedSignals {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Commits that published changes since the application started.
    committed: AtomicU64,
    /// Whether some replica listened when last asked; only then does a
    /// commit wake the task that notifies them
    /// ([`crate::api::watch::tell_listeners`]), so that without listeners a
    /// commit costs no wake-up of another task.
    listened: AtomicBool,
    /// Set by a commit while some replica listens; taken by the notifying task.
    notification_due: Notify,
    /// Counts wake-ups for this application's readers: its own commits and
    /// other replicas' notifications.
    woken: watch::Sender<u64>,
}

impl Default for Shared {
    fn default() -> Self {
        Self {
            committed: AtomicU64::new(0),
            listened: AtomicBool::new(false),
            notification_due: Notify::new(),
            woken: watch::Sender::new(0),
        }
    }
}

impl FeedSignals {
    /// Tells this application's readers, and (while some listen) the other
    /// replicas', that a transaction that published changes has committed.
    /// Called after commit, never before: a reader woken earlier would find
    /// nothing and sleep past the change.
    pub fn announce(&self) {
        self.shared.committed.fetch_add(1, Ordering::Relaxed);
        if self.shared.listened.load(Ordering::Relaxed) {
            self.shared.notification_due.notify_one();
        }
        self.wake_readers();
    }

    /// Wakes this application's readers only: another replica committed
    /// changes.
    pub fn wake_readers(&self) {
        self.shared.woken.send_modify(|count| *count = count.wrapping_add(1));
    }

    /// A receiver that sees every later wake-up of readers.
    pub fn announcements(&self) -> watch::Receiver<u64> {
        self.shared.woken.subscribe()
    }

    /// How many commits this application has announced.
    pub fn commits_so_far(&self) -> u64 {
        self.shared.committed.load(Ordering::Relaxed)
    }

    /// Records whether some replica listens (as [`anyone_listening`] said).
    pub fn set_listened(&self, listened: bool) {
        self.shared.listened.store(listened, Ordering::Relaxed);
    }

    /// Waits until a commit made while some replica listens is due to be told.
    pub async fn notification_due(&self) {
        self.shared.notification_due.notified().await;
    }
}

/// Wakes the readers of the replicas that listen: a PostgreSQL `NOTIFY`,
/// sent only while some replica holds [`LISTENING_LOCK`], in a transaction
/// of its own that does not wait for its commit to reach the disk (a
/// notification is a wake-up, not data). Sent after the changes committed,
/// by one task per replica ([`crate::api::watch::tell_listeners`]), never inside
/// the batch: a `NOTIFY` in every batch's transaction cost PostgreSQL about
/// 8 % more CPU per event under load, listener or not.
///
/// A replica takes the lock before it starts listening and reads the feed
/// after, so a commit whose notification was skipped because nobody
/// listened yet is one that replica's first read sees.
pub async fn notify_listeners(db: &impl ConnectionTrait) -> Result<(), DbErr> {
    if db.get_database_backend() != DbBackend::Postgres {
        return Ok(());
    }
    db.execute_unprepared(&format!(
        "BEGIN; SET LOCAL synchronous_commit TO OFF; \
         SELECT pg_notify('{CHANNEL}', '') WHERE NOT pg_try_advisory_xact_lock({LISTENING_LOCK}); COMMIT"
    ))
    .await
    .map(drop)
}

/// Whether some replica listens for change notifications now (holds
/// [`LISTENING_LOCK`]).
pub async fn anyone_listening(db: &impl ConnectionTrait) -> Result<bool, DbErr> {
    Ok(!lease::try_lock(db, LISTENING_LOCK).await?)
}

/// The PostgreSQL advisory lock that every replica listening for change
/// notifications holds, shared, on its listening connection; see
/// [`notify_listeners`].
pub const LISTENING_LOCK: i64 = 0x6665_6564_6c69_7374; // "feedlist"

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn two_applications_wake_only_their_own_readers() {
        let (one, other) = (FeedSignals::default(), FeedSignals::default());
        let (mut mine, theirs) = (one.announcements(), other.announcements());

        one.announce();

        assert!(mine.has_changed().expect("open"));
        mine.mark_unchanged();
        assert!(!theirs.has_changed().expect("open"));
        assert_eq!((one.commits_so_far(), other.commits_so_far()), (1, 0));
    }
}
