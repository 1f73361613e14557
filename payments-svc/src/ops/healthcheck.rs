//! `payments-svc healthcheck`: asks a running payments-svc whether it
//! serves, through the standard gRPC health service, and exits 0 or 1. For
//! container health checks (compose) in an image without a shell or
//! `grpc_health_probe`; Kubernetes asks the same service natively.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

#[derive(Debug, Args)]
pub struct HealthcheckArgs {
    /// The service's gRPC address (its own PAYMENTS_GRPC_ADDR); an
    /// unspecified address such as `0.0.0.0:50051` is asked on loopback.
    /// Plain gRPC only: with PAYMENTS_TLS_CERT set, probe from outside.
    #[arg(long, env = "PAYMENTS_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    addr: SocketAddr,
    /// How long the whole check may take, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    timeout_ms: u64,
}

/// Succeeds when the service answers SERVING (it checks its database).
pub async fn run(args: HealthcheckArgs) -> anyhow::Result<()> {
    let addr = service_kit::addr::reachable(args.addr);
    let timeout = Duration::from_millis(args.timeout_ms);
    let endpoint = Endpoint::from_shared(format!("http://{addr}"))?.connect_timeout(timeout).timeout(timeout);
    let status = tokio::time::timeout(timeout, async {
        let channel = endpoint.connect().await.with_context(|| format!("connecting to {addr}"))?;
        let answer = HealthClient::new(channel).check(HealthCheckRequest { service: String::new() }).await?;
        anyhow::Ok(answer.into_inner().status())
    })
    .await
    .with_context(|| format!("no answer from {addr} within {timeout:?}"))??;
    if status != ServingStatus::Serving {
        bail!("payments-svc at {addr} is {}", status.as_str_name());
    }
    println!("serving");
    Ok(())
}
