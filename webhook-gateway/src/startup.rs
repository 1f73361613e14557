//! Building the gateway and serving HTTP/1.1 until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;

use crate::config::Settings;
use crate::payments::{self, PaymentsClient};
use crate::routes;
use crate::signature::Verifier;

/// A client that has not sent its request headers by then is cut off, so
/// idle or slow-loris connections cannot pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may take to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What every request handler needs, shared by all connections.
#[derive(Debug)]
pub struct AppState {
    pub verifier: Verifier,
    pub payments: PaymentsClient,
    pub max_body_bytes: usize,
    /// Whether `/checkout/success` is served.
    pub success_page: bool,
}

/// A gateway with its port bound, ready to serve.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
}

impl Application {
    /// Binds the address (port 0 binds an ephemeral port; see
    /// [`Application::local_addr`]) and prepares the payments-svc client,
    /// which connects on first use.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let payments = payments::connect_lazy(&settings.payments_svc_url, settings.payments_svc_timeout)
            .with_context(|| {
                format!("PAYMENTS_SVC_URL {:?} is not a valid URL", settings.payments_svc_url)
            })?;
        let state = AppState {
            verifier: Verifier::new(&settings.webhook_secrets, settings.tolerance_secs),
            payments,
            max_body_bytes: settings.max_body_bytes,
            success_page: settings.success_page,
        };
        let listener = TcpListener::bind(settings.addr)
            .await
            .with_context(|| format!("binding GATEWAY_ADDR {}", settings.addr))?;
        Ok(Self { listener, state: Arc::new(state) })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into())
    }

    /// Accepts connections until `shutdown` completes, then stops accepting
    /// and gives in-flight requests [`DRAIN_TIMEOUT`] to finish.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), "webhook-gateway listening");
        let graceful = GracefulShutdown::new();
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
        tokio::pin!(shutdown);

        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(connection) => connection,
                    Err(error) => {
                        // Typically out of file descriptors: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let state = Arc::clone(&self.state);
            let service = service_fn(move |request| routes::route(Arc::clone(&state), request));
            let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%peer, %error, "connection closed with an error");
                }
            });
        }

        drop(self.listener);
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("webhook-gateway stopped"),
            () = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("drain timed out; closing remaining connections"),
        }
        Ok(())
    }
}
