//! Carrying out what the domain decides: every path that writes purchases,
//! reversal facts or refunds owed.
//!
//! [`batch`] gathers incoming events into one transaction (group commit),
//! with [`apply`] as the per-event path it falls back to; [`verify`] and
//! [`reconcile`] fulfil from sessions fetched from Stripe
//! ([`session_lookups`] shares verify's asks); [`refunds`] refunds duplicate
//! payments; [`retention`] prunes what is kept for a limited time;
//! [`sync`] imports (and checks) history from Stripe's lists.

pub mod apply;
pub mod batch;
pub mod reconcile;
pub mod refunds;
pub mod retention;
pub mod session_lookups;
pub mod sync;
pub mod verify;
