//! Keeping stored data to its retention, by itself, a small chunk per
//! statement so that writers never wait long, once at start-up and then
//! every hour: changes older than `PURCHASE_CHANGES_RETENTION_DAYS` are
//! removed, and the payloads of settled events older than
//! `WEBHOOK_EVENTS_RETENTION_DAYS` dropped (their rows stay, so a late
//! redelivery is still a duplicate; failed events stay whole until
//! resolved). Also publishes, once, purchases recorded before the feed
//! existed.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sea_orm::{DatabaseConnection, DbErr};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::store::health::DatabaseHealth;
use crate::store::signals::FeedSignals;
use crate::store::{events, feed, lease};
use payments_domain::rules::Policy;

/// Changes removed per transaction.
const CHUNK: u64 = 1000;
/// How often the feed is pruned.
const EVERY: Duration = Duration::from_secs(3600);

/// Removes every change older than `retention` now; returns how many.
pub async fn prune(db: &DatabaseConnection, retention: Duration) -> Result<u64, DbErr> {
    let cutoff = cutoff(retention);
    in_chunks(|| feed::prune(db, cutoff, CHUNK)).await
}

/// Runs `chunk` until it handles fewer than [`CHUNK`] rows; the total.
async fn in_chunks<F>(mut chunk: impl FnMut() -> F) -> Result<u64, DbErr>
where
    F: Future<Output = Result<u64, DbErr>>,
{
    let mut total = 0;
    loop {
        let handled = chunk().await?;
        total += handled;
        if handled < CHUNK {
            return Ok(total);
        }
    }
}

/// The time `retention` before now.
fn cutoff(retention: Duration) -> chrono::DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(retention).unwrap_or(chrono::Duration::MAX)
}

/// How many stored events' payloads [`prune_events`] would drop now.
pub async fn prunable_events(db: &DatabaseConnection, retention: Duration) -> Result<u64, DbErr> {
    events::count_prunable(db, cutoff(retention), events::next_pass_from(db).await?).await
}

/// Drops the payloads of every settled event older than `retention` now, one
/// replica at a time; returns how many (0 when another replica is at it).
///
/// A pass starts where the last one left off (the retention mark) and
/// walks forward in arrival order, so its cost is what arrived since, not
/// every payload ever dropped. It then moves the mark to its cutoff, or to
/// the oldest failed event if that is older: a failed event keeps its
/// payload until it is resolved, and the next pass must reach it then.
pub async fn prune_events(
    db: &DatabaseConnection,
    health: &DatabaseHealth,
    retention: Duration,
) -> Result<u64, DbErr> {
    let pruned = lease::under(db, health, lease::EVENTS_PRUNE, prune_events_leased(db, retention)).await?;
    Ok(pruned.unwrap_or(0))
}

/// [`prune_events`] once the lease is held.
async fn prune_events_leased(db: &DatabaseConnection, retention: Duration) -> Result<u64, DbErr> {
    let cutoff = cutoff(retention);
    let mut from = events::next_pass_from(db).await?;
    let mut pruned = 0;
    loop {
        let chunk = events::prune_payloads(db, cutoff, from, CHUNK).await?;
        pruned += chunk.dropped;
        from = chunk.last.or(from);
        if chunk.looked_at < CHUNK {
            break;
        }
    }
    let oldest_failed = events::oldest_failed(db).await?;
    events::set_payloads_pruned_before(db, oldest_failed.map_or(cutoff, |failed| failed.min(cutoff))).await?;
    Ok(pruned)
}

/// Publishes every purchase the feed has not published yet.
pub async fn backfill(db: &DatabaseConnection, signals: &FeedSignals, policy: Policy) -> Result<(), DbErr> {
    while feed::backfill(db, signals, policy, CHUNK).await? as u64 == CHUNK {}
    Ok(())
}

/// How long each kind of stored data is kept.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Changes of the purchase change feed.
    pub changes: Duration,
    /// Payloads of settled webhook events.
    pub events: Duration,
}

/// Backfills, then prunes now and every hour, until `shutdown`.
pub async fn run(
    db: DatabaseConnection,
    signals: FeedSignals,
    retention: Retention,
    policy: Policy,
    health: DatabaseHealth,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    if let Err(error) = health.bounded(backfill(&db, &signals, policy)).await {
        tracing::warn!(%error, "publishing purchases recorded before the change feed failed; retrying at the next start");
    }
    loop {
        match prune_events(&db, &health, retention.events).await {
            Ok(0) => {}
            Ok(pruned) => {
                metrics.events_pruned.inc_by(pruned);
                tracing::info!(
                    pruned,
                    "dropped the payloads of events older than WEBHOOK_EVENTS_RETENTION_DAYS"
                );
            }
            Err(error) => tracing::warn!(%error, "pruning stored events failed; retrying in an hour"),
        }
        match health.bounded(prune(&db, retention.changes)).await {
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
