//! What webhook-gateway and payments-svc share as processes: how they log
//! and trace, when they start draining, how they serve their metrics, how
//! they gather queued work into batches, how they ration what strangers
//! could exhaust, and how they read the token between them.

pub mod addr;
pub mod admin;
pub mod gather;
pub mod logs;
pub mod metrics;
pub mod rate;
pub mod shutdown;
pub mod token;
pub mod traces;
