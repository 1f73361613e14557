//! The gRPC client for payments-svc, and how its failures reach HTTP.

use std::time::Duration;

use payments_proto::v1::payments_client;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::error::ApiError;

pub type PaymentsClient = payments_client::PaymentsClient<Channel>;

/// How long to wait for a TCP connection to payments-svc; when it is down the
/// gateway should say 503 quickly rather than hold Stripe's request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// A client that connects on first use and reconnects by itself, so the
/// gateway starts (and answers 503) while payments-svc is still down.
pub fn connect_lazy(url: &str, call_timeout: Duration) -> Result<PaymentsClient, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(url.to_owned())?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(call_timeout)
        .tcp_nodelay(true);
    Ok(PaymentsClient::new(endpoint.connect_lazy()))
}

/// An `invalid_argument` means this request can never succeed; anything else
/// (unreachable, deadline exceeded, database down) is worth a retry.
pub fn api_error(status: Status) -> ApiError {
    if status.code() == Code::InvalidArgument {
        tracing::warn!(code = ?status.code(), message = status.message(), "payments-svc refused the request");
        ApiError::Rejected(status.message().to_owned())
    } else {
        tracing::warn!(code = ?status.code(), message = status.message(), "payments-svc call failed");
        ApiError::Unavailable
    }
}
