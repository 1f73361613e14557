//! `webhook-gateway healthcheck`: asks a running gateway's `/readyz` (or
//! another of its paths) over HTTP and exits 0 on a 200, 1 otherwise. For
//! container health checks (compose) in an image without a shell or curl.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use http_body_util::Empty;
use hyper::Request;
use hyper::header::HOST;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::paths::READY_PATH;

#[derive(Debug, Clone, clap::Args)]
pub struct HealthcheckArgs {
    /// The gateway's address (its own GATEWAY_ADDR); an unspecified address
    /// such as `0.0.0.0:8080` is asked on loopback.
    #[arg(long, env = "GATEWAY_ADDR", default_value = "127.0.0.1:3000")]
    addr: SocketAddr,
    /// The path asked: `/readyz` (payments-svc reachable too) or `/healthz`
    /// (the gateway alone).
    #[arg(long, default_value = READY_PATH)]
    path: String,
    /// How long the whole check may take, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    timeout_ms: u64,
}

/// Succeeds when the path answers 200.
pub async fn run(args: HealthcheckArgs) -> anyhow::Result<()> {
    let addr = service_kit::addr::reachable(args.addr);
    let timeout = Duration::from_millis(args.timeout_ms);
    let status = tokio::time::timeout(timeout, get(addr, &args.path))
        .await
        .with_context(|| format!("no answer from {addr} within {timeout:?}"))??;
    if status != hyper::StatusCode::OK {
        bail!("GET {} on {addr} answered {status}", args.path);
    }
    println!("{} ok", args.path);
    Ok(())
}

async fn get(addr: SocketAddr, path: &str) -> anyhow::Result<hyper::StatusCode> {
    let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = Request::get(path).header(HOST, addr.to_string()).body(Empty::<Bytes>::new())?;
    Ok(sender.send_request(request).await?.status())
}
