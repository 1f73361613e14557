//! The missed-webhook sweep: pages through Stripe's recent
//! `checkout.session.*` events and applies each one not processed here yet,
//! through the same path as a webhook delivery. Events from Stripe's API come
//! over TLS with the secret key, so no webhook signature is involved.
//!
//! The `reconcile` command runs one sweep; with `RECONCILE_INTERVAL` set,
//! payments-svc also runs one every interval by itself, one replica at a
//! time, and counts the drift it finds: purchases that Stripe knew of and
//! this database did not, each one a webhook that never arrived.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{DatabaseConnection, DbErr};
use tokio_util::sync::CancellationToken;

use crate::error::Error;
use crate::fulfil::apply;
use crate::metrics::Metrics;
use crate::store::health::DatabaseHealth;
use crate::store::signals::FeedSignals;
use crate::store::{events, lease};
use crate::stripe::{StripeApi, StripeError};
use payments_domain::rules::{Outcome, Policy};

/// What a sweep found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events Stripe listed in the window.
    pub seen: u64,
    /// Already processed or ignored here; left alone.
    pub already_processed: u64,
    /// Applied now (processed or ignored).
    pub newly_applied: u64,
    /// Of those, the ones that changed a purchase: the drift between Stripe
    /// and this database.
    pub drift: u64,
    /// Could not be applied; stored as failed for `events replay`.
    pub failed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Stripe(#[from] StripeError),
    #[error(transparent)]
    Service(#[from] Error),
}

impl From<DbErr> for ReconcileError {
    fn from(error: DbErr) -> Self {
        Self::Service(error.into())
    }
}

/// Sweeps events created at or after `since`, newest first, `page_size` per
/// page. Idempotent: a second sweep finds everything already processed.
#[tracing::instrument(name = "reconcile sweep", skip_all, fields(since = %since))]
pub async fn sweep(
    db: &DatabaseConnection,
    signals: &FeedSignals,
    stripe: &StripeApi,
    policy: Policy,
    since: DateTime<Utc>,
    page_size: u8,
) -> Result<Summary, ReconcileError> {
    let mut summary = Summary::default();
    let mut starting_after: Option<String> = None;
    loop {
        let page = stripe.checkout_events(since.timestamp(), starting_after.as_deref(), page_size).await?;
        starting_after = page.events.last().map(|event| event.id.clone());
        for event in page.events {
            summary.seen += 1;
            let event = payments_proto::domain::incoming(event).map_err(Error::from)?;
            let settled = events::find(db, &event.id)
                .await
                .map_err(Error::from)?
                .is_some_and(|row| row.status.is_settled());
            if settled {
                summary.already_processed += 1;
                continue;
            }
            match apply::handle_event(db, signals, &event, policy).await.map_err(Error::from)? {
                Outcome::Processed => {
                    summary.newly_applied += 1;
                    summary.drift += 1;
                }
                Outcome::Ignored { .. } => summary.newly_applied += 1,
                Outcome::Duplicate => summary.already_processed += 1,
                Outcome::Failed { .. } => summary.failed += 1,
            }
        }
        if !page.has_more || starting_after.is_none() {
            return Ok(summary);
        }
    }
}

/// How far back a scheduled sweep looks: two intervals, and at least an
/// hour, so that a sweep that failed or was skipped is covered by the next.
pub fn window(interval: Duration) -> Duration {
    (interval * 2).max(Duration::from_secs(3600))
}

/// Sweeps every `interval` until `shutdown`, one replica at a time, counting
/// the drift found in `payments_reconcile_drift_total`.
#[expect(clippy::too_many_arguments, reason = "the task's collaborators, wired once at start-up")]
pub async fn run(
    db: DatabaseConnection,
    signals: FeedSignals,
    stripe: StripeApi,
    policy: Policy,
    interval: Duration,
    health: DatabaseHealth,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let since =
            Utc::now() - chrono::Duration::from_std(window(interval)).unwrap_or(chrono::Duration::MAX);
        match sweep_alone(&db, &health, &signals, &stripe, policy, since).await {
            Ok(Some(summary)) => {
                metrics.reconcile_drift.inc_by(summary.drift);
                if summary.drift > 0 || summary.failed > 0 {
                    tracing::warn!(
                        seen = summary.seen,
                        drift = summary.drift,
                        failed = summary.failed,
                        "scheduled reconcile applied events whose webhooks never arrived"
                    );
                } else {
                    tracing::info!(seen = summary.seen, "scheduled reconcile found no drift");
                }
            }
            Ok(None) => tracing::debug!("another replica is sweeping; skipped"),
            Err(error) => tracing::warn!(%error, "scheduled reconcile failed; retrying at the next interval"),
        }
    }
}

/// One sweep, unless another replica holds the lease.
async fn sweep_alone(
    db: &DatabaseConnection,
    health: &DatabaseHealth,
    signals: &FeedSignals,
    stripe: &StripeApi,
    policy: Policy,
    since: DateTime<Utc>,
) -> Result<Option<Summary>, ReconcileError> {
    let swept = sweep(db, signals, stripe, policy, since, PAGE_SIZE);
    lease::under(db, health, lease::RECONCILE, swept).await
}

/// Events per page a scheduled sweep asks for: Stripe's largest.
const PAGE_SIZE: u8 = 100;
