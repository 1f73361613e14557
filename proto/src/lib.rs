//! The `payments.v1` contract shared by webhook-gateway and payments-svc,
//! [`stripe`], the one place Stripe's JSON is turned into it, [`names`],
//! the one string form of each of its enums, and [`domain`], the one mapping
//! between its messages and the domain's types; [`agreement`] checks that
//! an event's typed fields are what its raw payload says.

pub mod agreement;
pub mod domain;
pub mod names;
pub mod stripe;

/// Generated messages, client and server for `payments.v1`.
#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("payments.v1");

    /// The encoded descriptors of `payments.v1`, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("payments_descriptor");
}

impl v1::StripeEvent {
    /// The typed Checkout Session, for `checkout.session.*` events.
    pub fn checkout_session(&self) -> Option<&v1::CheckoutSession> {
        match &self.object {
            Some(v1::stripe_event::Object::CheckoutSession(session)) => Some(session),
            _ => None,
        }
    }
}
