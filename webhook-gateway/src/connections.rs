//! The connection cap, and which connection makes room when it is reached.
//!
//! A cap on open connections is needed (descriptors, buffers), but a plain
//! cap lets anyone who opens enough silent sockets lock Stripe out until
//! they time out. So at the cap the oldest connection with no request in
//! progress is asked to close, and the new connection takes its place:
//! hyper closes an idle HTTP/1 connection at once and lets a request in
//! progress finish first. Only when every connection is working is a new
//! one refused.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// Every open connection, in the order they were accepted.
#[derive(Debug)]
pub struct Connections {
    limit: usize,
    open: Mutex<Open>,
    /// Wakes [`Connections::all_closed`] when the last one closes.
    emptied: Notify,
    /// Cancelled when the gateway drains: every connection is asked to close.
    draining: CancellationToken,
}

#[derive(Debug, Default)]
struct Open {
    /// By accept order; `true` once asked to make room (no longer counted).
    entries: BTreeMap<u64, (Arc<Tracked>, bool)>,
    /// Entries not asked to make room: what the cap counts.
    counted: usize,
    next_id: u64,
}

/// What the accept loop and a connection's requests share about it.
#[derive(Debug)]
struct Tracked {
    /// Requests being handled on it now.
    working: AtomicUsize,
    /// Cancelled to ask it to close (to make room, or to drain).
    close: CancellationToken,
}

impl Connections {
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self {
            limit,
            open: Mutex::default(),
            emptied: Notify::new(),
            draining: CancellationToken::new(),
        })
    }

    /// A place for a new connection: a free one, or one made by asking the
    /// oldest idle connection to close. `None` when every one is working.
    pub fn admit(self: &Arc<Self>) -> Option<Admitted> {
        let mut open = self.lock();
        let made_room = open.counted >= self.limit;
        if made_room {
            let (_, (idle, asked)) = open
                .entries
                .iter_mut()
                .find(|(_, (tracked, asked))| !*asked && tracked.working.load(Ordering::Acquire) == 0)?;
            *asked = true;
            idle.close.cancel();
            open.counted -= 1;
        }
        let tracked = Arc::new(Tracked { working: AtomicUsize::new(0), close: self.draining.child_token() });
        let id = open.next_id;
        open.next_id += 1;
        open.entries.insert(id, (Arc::clone(&tracked), false));
        open.counted += 1;
        Some(Admitted { id, tracked, connections: Arc::clone(self), made_room })
    }

    /// Asks every connection to close once its request in progress is done.
    pub fn drain(&self) {
        self.draining.cancel();
    }

    /// Resolves when no connection is open.
    pub async fn all_closed(&self) {
        loop {
            let emptied = self.emptied.notified();
            if self.lock().entries.is_empty() {
                return;
            }
            emptied.await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, Open> {
        // The lock guards plain bookkeeping that no panic leaves half done.
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// An admitted connection's place; dropping it gives the place back.
#[derive(Debug)]
pub struct Admitted {
    id: u64,
    tracked: Arc<Tracked>,
    connections: Arc<Connections>,
    /// An idle connection was asked to close to make room for this one.
    pub made_room: bool,
}

impl Admitted {
    /// Marks a request in progress until the returned guard is dropped: a
    /// working connection is never chosen to make room.
    pub fn working(&self) -> Working {
        self.tracked.working.fetch_add(1, Ordering::AcqRel);
        Working(Arc::clone(&self.tracked))
    }

    /// Resolves when this connection is asked to close.
    pub fn asked_to_close(&self) -> WaitForCancellationFutureOwned {
        self.tracked.close.clone().cancelled_owned()
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.connections.lock();
        if let Some((_, asked)) = open.entries.remove(&self.id)
            && !asked
        {
            open.counted -= 1;
        }
        if open.entries.is_empty() {
            self.connections.emptied.notify_waiters();
        }
    }
}

/// A request in progress on a connection.
#[derive(Debug)]
pub struct Working(Arc<Tracked>);

impl Drop for Working {
    fn drop(&mut self) {
        self.0.working.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_the_cap_the_oldest_idle_connection_makes_room() {
        let connections = Connections::new(2);
        let oldest = connections.admit().expect("room");
        let working = connections.admit().expect("room");
        let _request = working.working();

        let third = connections.admit().expect("the idle one makes room");

        assert!(third.made_room);
        assert!(oldest.tracked.close.is_cancelled(), "the idle one is asked to close");
        assert!(!working.tracked.close.is_cancelled(), "the working one is left alone");
    }

    #[test]
    fn when_every_connection_is_working_a_new_one_is_refused_until_one_is_done() {
        let connections = Connections::new(1);
        let only = connections.admit().expect("room");
        let request = only.working();

        assert!(connections.admit().is_none());
        drop(request);
        let next = connections.admit().expect("idle again: makes room");
        assert!(next.made_room);
    }

    #[test]
    fn a_closed_connection_gives_its_place_back() {
        let connections = Connections::new(1);
        let first = connections.admit().expect("room");
        drop(first);

        let second = connections.admit().expect("room");

        assert!(!second.made_room);
    }

    #[tokio::test]
    async fn draining_asks_every_connection_to_close_and_waits_for_them() {
        let connections = Connections::new(4);
        let (a, b) = (connections.admit().expect("room"), connections.admit().expect("room"));

        connections.drain();
        a.asked_to_close().await;
        b.asked_to_close().await;
        let waiting = tokio::spawn({
            let connections = Arc::clone(&connections);
            async move { connections.all_closed().await }
        });
        drop((a, b));

        tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
            .await
            .expect("all closed")
            .expect("task");
    }
}
