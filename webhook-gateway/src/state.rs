//! What every request handler shares: built once by [`crate::startup`],
//! read by [`crate::routes`].

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use service_kit::rate::KeyedBuckets;
use tokio::sync::Semaphore;

use crate::forwarder::Forwarder;
use crate::http::BodyBudget;
use crate::log_throttle::LogThrottle;
use crate::metrics::Metrics;
use crate::payments::Payments;
use crate::signature::Verifier;

/// What every request handler needs, shared by all connections.
#[derive(Debug)]
pub struct AppState {
    pub verifier: Verifier,
    pub payments: Payments,
    /// Forwards webhook events to payments-svc.
    pub forwarder: Forwarder,
    pub max_body_bytes: usize,
    /// Bytes of webhook bodies held at once (GATEWAY_BODY_BUDGET_BYTES).
    pub body_budget: BodyBudget,
    /// Whether `/checkout/success` is served.
    pub success_page: bool,
    /// One permit per webhook being handled (GATEWAY_MAX_IN_FLIGHT): Stripe's
    /// deliveries have capacity of their own that verify calls cannot take.
    pub webhooks_in_flight: Arc<Semaphore>,
    /// One permit per verify request being handled (GATEWAY_MAX_VERIFY_IN_FLIGHT).
    pub verifies_in_flight: Arc<Semaphore>,
    /// Each client address's share of the verify route
    /// (GATEWAY_VERIFY_PER_CLIENT_RPS); `None` when off.
    pub verify_clients: Option<KeyedBuckets<IpAddr>>,
    /// Warnings about unauthenticated deliveries, a few a second.
    pub stranger_warnings: LogThrottle,
    pub request_timeout: Duration,
    pub metrics: Arc<Metrics>,
}
