//! Building the gateway and serving HTTP/1.1 until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hyper::header::{CONNECTION, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

use crate::config::Settings;
use crate::forwarder::Forwarder;
use crate::metrics::Metrics;
use crate::payments;
use crate::routes;
use crate::signature::Verifier;
use crate::state::AppState;

/// A client that has not sent its request headers by then is cut off, so
/// idle or slow-loris connections cannot pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long in-flight requests may take to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway with its port bound, ready to serve.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    state: Arc<AppState>,
    /// One permit per open connection (GATEWAY_MAX_CONNECTIONS).
    connections: Arc<Semaphore>,
}

impl Application {
    /// Binds the address (port 0 binds an ephemeral port; see
    /// [`Application::local_addr`]) and prepares the payments-svc client,
    /// which connects on first use.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let payments = payments::connect_lazy(settings)?;
        let forwarder = Forwarder::start(payments.client.clone(), settings.forwarding, Arc::clone(&metrics));
        let state = AppState {
            verifier: Verifier::new(&settings.webhook_secrets, settings.tolerance_secs),
            payments,
            forwarder,
            max_body_bytes: settings.max_body_bytes,
            success_page: settings.success_page,
            in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
            request_timeout: settings.request_timeout,
            metrics,
        };
        let listener = TcpListener::bind(settings.addr)
            .await
            .with_context(|| format!("binding GATEWAY_ADDR {}", settings.addr))?;
        let connections = Arc::new(Semaphore::new(settings.max_connections));
        Ok(Self { listener, state: Arc::new(state), connections })
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
            let permit = Arc::clone(&self.connections).try_acquire_owned().ok();
            let admitted = permit.is_some();
            let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                let state = Arc::clone(&state);
                async move {
                    if admitted {
                        routes::route(state, request).await
                    } else {
                        let mut refused = routes::overloaded(&state, request.uri().path()).into_response();
                        refused.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
                        Ok::<_, std::convert::Infallible>(refused)
                    }
                }
            });
            let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
            tokio::spawn(async move {
                if let Err(error) = connection.await {
                    tracing::debug!(%peer, %error, "connection closed with an error");
                }
                drop(permit);
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
