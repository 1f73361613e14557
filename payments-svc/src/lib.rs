//! payments-svc: owns the purchases database and applies verified Stripe
//! events to it idempotently, behind the `payments.v1.Payments` gRPC service.
//!
//! The flow of one event: [`grpc`] validates the request, [`webhook`] records
//! the delivery and runs [`fulfilment`] in one transaction, [`db`] holds the
//! queries. [`startup::Application`] is what `main` and the tests run.

pub mod admin;
pub mod auth;
pub mod batch;
pub mod config;
pub mod db;
pub mod error;
pub mod fulfilment;
pub mod grpc;
pub mod metrics;
pub mod operator;
pub mod reconcile;
pub mod startup;
pub mod stripe_api;
pub mod verify;
pub mod webhook;
