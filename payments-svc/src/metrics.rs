//! Prometheus metrics of payments-svc, served on the admin port.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// processed, duplicate, ignored, failed, error (database).
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerifyLabels {
    /// paid, pending, failed, expired, not_found, error.
    pub status: &'static str,
    /// "true" when Stripe could not be asked.
    pub unconfirmed: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// writer (a group-commit worker's), listener (change notifications).
    pub connection: &'static str,
}

/// Every metric, registered once at start-up and shared.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub events: Family<OutcomeLabels, Counter>,
    pub event_seconds: Histogram,
    pub verifications: Family<VerifyLabels, Counter>,
    pub batch_size: Histogram,
    pub batch_fallbacks: Counter,
    pub feed_watchers: Gauge,
    pub feed_lag: Gauge,
    pub feed_pruned: Counter,
    /// Reads of the feed made to serve watchers: the shared reader's, and
    /// those of watchers catching up.
    pub feed_reads: Counter,
    /// Purchases the scheduled sweep found at Stripe and not here.
    pub reconcile_drift: Counter,
    /// Purchases whose access here differed from Stripe's at this replica's
    /// last scheduled check (0 when another replica ran it).
    pub sync_check_differences: Gauge,
    /// Stored events whose payloads retention dropped.
    pub events_pruned: Counter,
    /// Times the database's connections were distrusted: it stopped
    /// answering, came back, or turned read-only.
    pub connections_distrusted: Counter,
    /// Connections of its own a task opened again after losing one.
    pub reconnects: Family<ConnectionLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("payments");
        let events = Family::<OutcomeLabels, Counter>::default();
        registry.register("events", "Stripe events handled, by outcome", events.clone());
        let event_seconds = Histogram::new(exponential_buckets(0.000_25, 2.0, 16));
        registry.register(
            "event_handle_seconds",
            "Time to apply one event, transaction included",
            event_seconds.clone(),
        );
        let verifications = Family::<VerifyLabels, Counter>::default();
        registry.register("verifications", "VerifyPurchase answers, by status", verifications.clone());
        let batch_size = Histogram::new(exponential_buckets(1.0, 2.0, 9));
        registry.register("batch_size", "Events per group-commit transaction", batch_size.clone());
        let batch_fallbacks = Counter::default();
        registry.register(
            "batch_fallbacks",
            "Batches rolled back and applied event by event (a duplicate payment, a database error)",
            batch_fallbacks.clone(),
        );
        let feed_watchers = Gauge::default();
        registry.register("change_feed_watchers", "Open WatchPurchaseChanges streams", feed_watchers.clone());
        let feed_lag = Gauge::default();
        registry.register(
            "change_feed_lag_cursors",
            "How far the slowest open watch is behind the newest change, in cursors",
            feed_lag.clone(),
        );
        let reconcile_drift = Counter::default();
        registry.register(
            "reconcile_drift",
            "Purchases the scheduled missed-webhook sweep found at Stripe and not here, and applied",
            reconcile_drift.clone(),
        );
        let sync_check_differences = Gauge::default();
        registry.register(
            "sync_check_differences",
            "Purchases whose access here differed from Stripe's at the last scheduled check (SYNC_CHECK_INTERVAL)",
            sync_check_differences.clone(),
        );
        let events_pruned = Counter::default();
        registry.register(
            "events_pruned",
            "Stored webhook events whose payloads were dropped after WEBHOOK_EVENTS_RETENTION_DAYS",
            events_pruned.clone(),
        );
        let feed_reads = Counter::default();
        registry.register(
            "change_feed_reads",
            "Reads of the change feed made to serve watchers (the shared reader's and catch-ups)",
            feed_reads.clone(),
        );
        let feed_pruned = Counter::default();
        registry.register(
            "change_feed_pruned",
            "Changes removed after PURCHASE_CHANGES_RETENTION_DAYS",
            feed_pruned.clone(),
        );
        let connections_distrusted = Counter::default();
        registry.register(
            "db_connections_distrusted",
            "Times every database connection was retired: the server stopped answering, came back, or was read-only",
            connections_distrusted.clone(),
        );
        let reconnects = Family::<ConnectionLabels, Counter>::default();
        registry.register(
            "db_reconnects",
            "Own database connections opened again after one was lost, by connection",
            reconnects.clone(),
        );
        Self {
            registry,
            events,
            event_seconds,
            verifications,
            batch_size,
            batch_fallbacks,
            feed_watchers,
            feed_lag,
            feed_pruned,
            feed_reads,
            reconcile_drift,
            sync_check_differences,
            events_pruned,
            connections_distrusted,
            reconnects,
        }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        service_kit::metrics::render(&self.registry)
    }
}
