//! What webhook-gateway and payments-svc share as processes: how they log
//! and when they start draining.

pub mod logs;
pub mod shutdown;
