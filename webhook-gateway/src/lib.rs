//! webhook-gateway: the public HTTP edge of payments.
//!
//! A webhook is read with a size bound, its `Stripe-Signature` checked over
//! the exact bytes ([`signature`]) before anything is parsed, then parsed
//! leniently into the typed `StripeEvent` and handed to payments-svc over
//! gRPC ([`payments`]), many events to a call under load ([`forwarder`]).
//! [`routes`] holds the HTTP routes over the shared [`state::AppState`];
//! [`startup::Application`] is what `main` and the tests run.

pub mod config;
pub mod connections;
pub mod error;
pub mod forwarder;
pub mod healthcheck;
pub mod http;
pub mod log_throttle;
pub mod metrics;
pub mod paths;
pub mod payments;
pub mod routes;
pub mod signature;
pub mod startup;
pub mod state;
