//! payments-svc: owns the purchases database and applies verified Stripe
//! events to it idempotently, behind the `payments.v1.Payments` gRPC service.
//!
//! The flow of one event: [`grpc`] validates the request into an
//! [`event::IncomingEvent`], [`rules`] decides what it means (pure, no I/O),
//! [`batch`] applies it with others in one transaction (group commit), with
//! [`apply`] as the per-event reference path; [`db`] holds the queries.
//! Every change of access that makes is published to the change feed in the
//! same transaction ([`db::feed`]) and served to watchers by [`watch`].
//! [`startup::Application`] is what `main` and the tests run.

pub mod apply;
pub mod auth;
pub mod batch;
pub mod changes;
pub mod config;
pub mod db;
pub mod error;
pub mod event;
pub mod grpc;
pub mod metrics;
pub mod operator;
pub mod reconcile;
pub mod refunds;
pub mod retention;
pub mod reversals;
pub mod rules;
pub mod session_lookups;
pub mod startup;
pub mod stripe_api;
pub mod verify;
pub mod watch;
