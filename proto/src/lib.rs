//! The `payments.v1` contract shared by webhook-gateway and payments-svc,
//! and [`stripe`], the one place Stripe's JSON is turned into it.

pub mod stripe;

/// Generated messages, client and server for `payments.v1`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("payments.v1");
}

impl v1::StripeEvent {
    /// The typed Checkout Session, for `checkout.session.*` events.
    pub fn checkout_session(&self) -> Option<&v1::CheckoutSession> {
        match &self.object {
            Some(v1::stripe_event::Object::CheckoutSession(session)) => Some(session),
            None => None,
        }
    }
}
