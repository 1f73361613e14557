//! Whether the database answers, known within a second of it failing and
//! of it coming back, for the gRPC health service (and through it the
//! gateway's readiness).
//!
//! A probe on a timer alone would lag by its period, and a shorter period
//! costs the database queries when nothing is wrong. So the paths that
//! meet a database error tell [`DatabaseHealth`] (nothing is added to the
//! path when the database answers), and the watcher probes at once. The
//! probe has its own connection on PostgreSQL: a pool busy with writes
//! would make a ping wait for a connection and look like an outage.

use std::sync::Arc;
use std::time::Duration;

use sea_orm::sqlx::{ConnectOptions as _, Connection as _, PgConnection};
use sea_orm::{DatabaseConnection, DbBackend};
use tokio::sync::Notify;

/// Longest a probe may take before the database counts as not answering.
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(500);

/// Failed database operations, reported as they happen; clones share them.
#[derive(Debug, Clone, Default)]
pub struct DatabaseHealth(Arc<Notify>);

impl DatabaseHealth {
    /// A database operation failed: probe now.
    pub fn failed(&self) {
        self.0.notify_one();
    }

    /// Completes at the next reported failure (or at once for one reported
    /// since the last wait).
    pub async fn next_failure(&self) {
        self.0.notified().await;
    }
}

/// Asks the database whether it answers.
#[derive(Debug)]
pub struct Probe {
    db: DatabaseConnection,
    /// PostgreSQL: the probe's own connection, while it works.
    connection: Option<PgConnection>,
}

impl Probe {
    pub fn new(db: DatabaseConnection) -> Self {
        Self { db, connection: None }
    }

    /// Whether the database answered within [`PROBE_TIMEOUT`].
    pub async fn answers(&mut self) -> bool {
        let answered = tokio::time::timeout(PROBE_TIMEOUT, self.ping()).await.is_ok_and(|ping| ping);
        if !answered {
            self.connection = None;
        }
        answered
    }

    async fn ping(&mut self) -> bool {
        if self.db.get_database_backend() != DbBackend::Postgres {
            return self.db.ping().await.is_ok();
        }
        if self.connection.is_none() {
            let options = self.db.get_postgres_connection_pool().connect_options();
            self.connection = options.connect().await.ok();
        }
        match &mut self.connection {
            Some(connection) => connection.ping().await.is_ok(),
            None => false,
        }
    }
}
