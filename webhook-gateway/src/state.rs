//! What every request handler shares: built once by [`crate::startup`],
//! read by [`crate::routes`].

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::forwarder::Forwarder;
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
    /// Whether `/checkout/success` is served.
    pub success_page: bool,
    /// One permit per request being handled (GATEWAY_MAX_IN_FLIGHT).
    pub in_flight: Arc<Semaphore>,
    pub request_timeout: Duration,
    pub metrics: Arc<Metrics>,
}
