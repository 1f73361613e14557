//! payments-svc: owns the purchases database and applies verified Stripe
//! events to it idempotently, behind the `payments.v1.Payments` gRPC service.
//!
//! What an event means is decided in the `payments-domain` crate, without
//! I/O. Here, from the bottom up:
//! - [`error`], [`metrics`], [`stripe`]: the service's errors, its metrics,
//!   and Stripe's API within a rate and time budget.
//! - [`store`]: the database: entities, the queries fulfilment composes in
//!   its transactions, the change feed's outbox and its wake-ups.
//! - [`fulfil`]: carrying decisions out: group commit ([`fulfil::batch`])
//!   with [`fulfil::apply`] as the per-event path, verify, reconcile,
//!   refunds owed, retention.
//! - [`api`]: the gRPC service, its auth, and serving the change feed.
//! - [`config`], [`ops`] (the operator commands), [`startup`] (what `main`
//!   and the tests run).

pub mod api;
pub mod cli;
pub mod config;
pub mod error;
pub mod fulfil;
pub mod metrics;
pub mod ops;
pub mod startup;
pub mod store;
pub mod stripe;
