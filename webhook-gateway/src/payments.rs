//! The gRPC client for payments-svc, and how its failures reach HTTP.

use std::time::Duration;

use anyhow::Context;
use payments_proto::v1::payments_client;
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};
use tonic::{Code, Request, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use service_kit::traces;

use crate::config::Settings;
use crate::error::ApiError;

pub type PaymentsClient = payments_client::PaymentsClient<InterceptedService<Channel, CallMetadata>>;

/// The payments-svc connection: its API, and its standard health service
/// (which needs no token) for readiness.
#[derive(Debug, Clone)]
pub struct Payments {
    pub client: PaymentsClient,
    pub health: HealthClient<Channel>,
}

/// The service whose health `/readyz` asks about.
const PAYMENTS_SERVICE: &str = "payments.v1.Payments";

impl Payments {
    /// Whether payments-svc answers and reports itself serving (it checks
    /// its database).
    pub async fn ready(&self) -> bool {
        let request = HealthCheckRequest { service: PAYMENTS_SERVICE.to_owned() };
        match self.health.clone().check(request).await {
            Ok(answer) => answer.into_inner().status() == ServingStatus::Serving,
            Err(_) => false,
        }
    }
}

/// How long to wait for a TCP connection to payments-svc; when it is down the
/// gateway should say 503 quickly rather than hold Stripe's request.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);

/// HTTP/2 flow-control windows towards payments-svc, in bytes.
pub const HTTP2_CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
pub const HTTP2_STREAM_WINDOW: u32 = 1024 * 1024;

/// Adds `authorization: Bearer <PAYMENTS_GRPC_TOKEN>` to every call, and
/// the trace context (`traceparent`) of the span the call is made in.
#[derive(Clone)]
pub struct CallMetadata {
    token: Option<AsciiMetadataValue>,
}

impl std::fmt::Debug for CallMetadata {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallMetadata { token: [redacted] }")
    }
}

impl Interceptor for CallMetadata {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.token {
            request.metadata_mut().insert("authorization", value.clone());
        }
        traces::inject_metadata(&tracing::Span::current(), request.metadata_mut());
        Ok(request)
    }
}

/// A client that connects on first use and reconnects by itself, so the
/// gateway starts (and answers 503) while payments-svc is still down. TLS
/// when the URL is `https://`.
pub fn connect_lazy(settings: &Settings) -> anyhow::Result<Payments> {
    let url = &settings.payments_svc_url;
    let mut endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("PAYMENTS_SVC_URL {url:?} is not a valid URL"))?
        .connect_timeout(CONNECT_TIMEOUT)
        .timeout(settings.payments_svc_timeout)
        .tcp_nodelay(true)
        // Every webhook carries its ~5 KB payload on one HTTP/2 connection:
        // HTTP/2's default 64 KiB windows would stall a burst of them.
        .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
        .initial_stream_window_size(HTTP2_STREAM_WINDOW);
    if url.starts_with("https://") {
        let mut tls = ClientTlsConfig::new().with_webpki_roots();
        if let Some(path) = &settings.payments_svc_ca_cert {
            let pem = std::fs::read(path)
                .with_context(|| format!("reading PAYMENTS_SVC_CA_CERT {}", path.display()))?;
            tls = tls.ca_certificate(Certificate::from_pem(pem));
        }
        endpoint = endpoint.tls_config(tls).context("configuring TLS to payments-svc")?;
    }
    let token = match &settings.payments_grpc_token {
        Some(token) => {
            let mut value: AsciiMetadataValue =
                format!("Bearer {token}").parse().context("PAYMENTS_GRPC_TOKEN must be printable ASCII")?;
            value.set_sensitive(true);
            Some(value)
        }
        None => None,
    };
    let channel = endpoint.connect_lazy();
    Ok(Payments {
        client: payments_client::PaymentsClient::with_interceptor(channel.clone(), CallMetadata { token }),
        health: HealthClient::new(channel),
    })
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
