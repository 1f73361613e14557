//! The paths the gateway serves: below the routes that answer them, so that
//! the `healthcheck` command can ask them without depending on the routes.

/// Where Stripe posts events.
pub const WEBHOOK_PATH: &str = "/api/payments/webhook";
/// Where the frontend asks whether a checkout became a purchase.
pub const VERIFY_PATH: &str = "/api/payments/verify";
/// Liveness: the process is up and serving HTTP.
pub const HEALTH_PATH: &str = "/healthz";
/// Readiness: payments-svc is reachable and serving.
pub const READY_PATH: &str = "/readyz";
/// Where Stripe Checkout sends the buyer back (`success_url`).
pub const SUCCESS_PAGE_PATH: &str = "/checkout/success";
