//! sea-orm entities, kept as plain as generated code.

pub mod course_purchase;
pub mod payment_reversal;
pub mod purchase_change;
pub mod purchase_feed;
pub mod refund_request;
pub mod stripe_webhook_event;
