//! The domain of payments-svc: what a verified Stripe event means for who
//! may take which course, decided without I/O.
//!
//! Nothing here talks to a database, the network or a clock, and nothing
//! depends on an ORM, gRPC or a CLI library, so the rules can be read, tested
//! and changed on their own. The service maps its rows and messages to these
//! types at its edges, once for each type.
//!
//! From the bottom up:
//! - [`names`]: the one string form of each closed set, and the error for a
//!   name that is not one of them.
//! - [`purchase`]: purchase statuses, where a purchase came from, and a
//!   purchase to record.
//! - [`reversals`]: refund, dispute and refunded-charge facts, and the fold
//!   from a checkout and its facts to access.
//! - [`changes`]: what counts as a change of access, and its kind.
//! - [`event`]: an event as delivered, checked into an [`event::IncomingEvent`].
//! - [`rules`]: what an event means ([`rules::plan`]) and what became of it.
//! - [`sync`]: what Stripe's lists of sessions, refunds and disputes mean.
//! - [`write`]: the one write path: everything a batch writes, decided from
//!   the inputs and the stored state they touch.

pub mod changes;
pub mod event;
pub mod names;
pub mod purchase;
pub mod reversals;
pub mod rules;
pub mod sync;
pub mod write;
