//! Prometheus metrics of the gateway, served at `/metrics` on its admin
//! listener (`GATEWAY_ADMIN_ADDR`).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// processed, duplicate, ignored, failed, or rejected.
    pub outcome: &'static str,
    /// Why it was rejected (a response error code); empty otherwise.
    pub reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerifyLabels {
    /// The answer's status, or the error code.
    pub status: &'static str,
}

/// Every metric, registered once at start-up and shared.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub webhooks: Family<WebhookLabels, Counter>,
    pub webhook_seconds: Histogram,
    pub payments_call_seconds: Family<MethodLabels, Histogram>,
    pub in_flight: Gauge,
    /// Events per `HandleStripeEvents` call.
    pub forwarded_per_call: Histogram,
    pub verifications: Family<VerifyLabels, Counter>,
    /// Idle connections closed to make room for a new one at the cap.
    pub idle_connections_closed: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("gateway");
        let webhooks = Family::<WebhookLabels, Counter>::default();
        registry.register(
            "webhooks",
            "Webhook deliveries, by outcome and rejection reason",
            webhooks.clone(),
        );
        let webhook_seconds = latency_histogram();
        registry.register(
            "webhook_duration_seconds",
            "Webhook latency, first byte read to response, forwarded or not",
            webhook_seconds.clone(),
        );
        let payments_call_seconds =
            Family::<MethodLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> Histogram);
        registry.register(
            "payments_call_duration_seconds",
            "gRPC calls to payments-svc",
            payments_call_seconds.clone(),
        );
        let in_flight = Gauge::default();
        registry.register("in_flight_requests", "Requests being handled now", in_flight.clone());
        let forwarded_per_call = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register(
            "forwarded_events_per_call",
            "Webhook events carried by each HandleStripeEvents call to payments-svc",
            forwarded_per_call.clone(),
        );
        let verifications = Family::<VerifyLabels, Counter>::default();
        registry.register("verifications", "Verify route answers, by status", verifications.clone());
        let idle_connections_closed = Counter::default();
        registry.register(
            "idle_connections_closed",
            "Idle connections closed to make room at GATEWAY_MAX_CONNECTIONS",
            idle_connections_closed.clone(),
        );
        Self {
            registry,
            webhooks,
            webhook_seconds,
            payments_call_seconds,
            in_flight,
            forwarded_per_call,
            verifications,
            idle_connections_closed,
        }
    }
}

impl Metrics {
    /// Runs a call to payments-svc, timing it as `method`.
    pub async fn time_call<T>(&self, method: &'static str, call: impl Future<Output = T>) -> T {
        let started = std::time::Instant::now();
        let result = call.await;
        self.payments_call_seconds
            .get_or_create(&MethodLabels { method })
            .observe(started.elapsed().as_secs_f64());
        result
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        service_kit::metrics::render(&self.registry)
    }
}
