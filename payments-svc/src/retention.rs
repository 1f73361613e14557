//! Keeping the change feed to its retention: payments-svc removes changes
//! older than `PURCHASE_CHANGES_RETENTION_DAYS` by itself, a small chunk per
//! transaction so that writers never wait long, once at start-up and then
//! every hour; and publishes, once, purchases recorded before the feed
//! existed.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sea_orm::{DatabaseConnection, DbErr};
use tokio_util::sync::CancellationToken;

use crate::db::feed;
use crate::metrics::Metrics;
use crate::reversals::DisputeAccess;

/// Changes removed per transaction.
const CHUNK: u64 = 1000;
/// How often the feed is pruned.
const EVERY: Duration = Duration::from_secs(3600);

/// Removes every change older than `retention` now; returns how many.
pub async fn prune(db: &DatabaseConnection, retention: Duration) -> Result<u64, DbErr> {
    let cutoff = Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX);
    let mut removed = 0;
    loop {
        let chunk = feed::prune(db, cutoff, CHUNK).await?;
        removed += chunk;
        if chunk < CHUNK {
            return Ok(removed);
        }
    }
}

/// Publishes every purchase the feed has not published yet.
pub async fn backfill(db: &DatabaseConnection, dispute_access: DisputeAccess) -> Result<(), DbErr> {
    while feed::backfill(db, dispute_access, CHUNK).await? as u64 == CHUNK {}
    Ok(())
}

/// Backfills, then prunes now and every hour, until `shutdown`.
pub async fn run(
    db: DatabaseConnection,
    retention: Duration,
    dispute_access: DisputeAccess,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    if let Err(error) = backfill(&db, dispute_access).await {
        tracing::warn!(%error, "publishing purchases recorded before the change feed failed; retrying at the next start");
    }
    loop {
        match prune(&db, retention).await {
            Ok(0) => {}
            Ok(removed) => {
                metrics.feed_pruned.inc_by(removed);
                tracing::info!(removed, "pruned changes older than PURCHASE_CHANGES_RETENTION_DAYS");
            }
            Err(error) => tracing::warn!(%error, "pruning the change feed failed; retrying in an hour"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(EVERY) => {}
        }
    }
}
