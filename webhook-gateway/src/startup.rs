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
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use service_kit::admin;
use service_kit::rate::KeyedBuckets;

use crate::config::Settings;
use crate::connections::{Admitted, Connections};
use crate::forwarder::Forwarder;
use crate::http::BodyBudget;
use crate::log_throttle::LogThrottle;
use crate::metrics::Metrics;
use crate::payments;
use crate::routes;
use crate::signature::Verifier;
use crate::state::AppState;

/// A client that has not sent its request headers by then is cut off, so
/// idle or slow-loris connections cannot pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Most bytes hyper buffers per connection, and so the largest request head:
/// Stripe's are about a kilobyte. hyper's default (about 400 KB) let a
/// stranger's thousand connections, each sending a head that never ends,
/// hold 400 MB; a larger head is answered 431.
const MAX_BUF_BYTES: usize = 16 * 1024;
/// Connections the kernel may queue before the gateway accepts them.
const LISTEN_BACKLOG: u32 = 4096;
/// A client may save up this many seconds' worth of verify requests (a
/// success page opened in a few tabs).
const VERIFY_BURST_SECS: f64 = 4.0;
/// Warnings about unauthenticated deliveries (bad signatures, stalled
/// bodies) written a second, at most.
const STRANGER_WARNINGS_PER_SEC: u32 = 10;

/// Client addresses whose verify budget is tracked at once; see
/// [`KeyedBuckets`].
const MAX_VERIFY_CLIENTS: usize = 100_000;
/// How long in-flight requests may take to finish after a shutdown signal.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// A gateway with its port bound, ready to serve.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    /// Serves `/metrics` to the scraper only (GATEWAY_ADMIN_ADDR).
    admin_listener: TcpListener,
    state: Arc<AppState>,
    /// Open connections, within GATEWAY_MAX_CONNECTIONS.
    connections: Arc<Connections>,
}

impl Application {
    /// Binds the address (port 0 binds an ephemeral port; see
    /// [`Application::local_addr`]) and prepares the payments-svc client,
    /// which connects on first use.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let metrics = Arc::new(Metrics::default());
        let payments = payments::connect_lazy(settings)?;
        let forwarder = Forwarder::start(
            payments.client.clone(),
            settings.forwarding,
            settings.payments_svc_timeout,
            Arc::clone(&metrics),
        );
        let state = AppState {
            verifier: Verifier::new(&settings.webhook_secrets, settings.tolerance_secs),
            payments,
            forwarder,
            max_body_bytes: settings.max_body_bytes,
            body_budget: BodyBudget::new(settings.body_budget_bytes),
            success_page: settings.success_page,
            webhooks_in_flight: Arc::new(Semaphore::new(settings.max_in_flight)),
            verifies_in_flight: Arc::new(Semaphore::new(settings.max_verify_in_flight)),
            verify_clients: settings.verify_per_client_rps.map(|rps| {
                let rps = f64::from(rps);
                KeyedBuckets::new(rps, rps * VERIFY_BURST_SECS, MAX_VERIFY_CLIENTS)
            }),
            stranger_warnings: LogThrottle::new(STRANGER_WARNINGS_PER_SEC),
            request_timeout: settings.request_timeout,
            metrics,
        };
        let listener =
            listen(settings.addr).with_context(|| format!("binding GATEWAY_ADDR {}", settings.addr))?;
        let admin_listener = TcpListener::bind(settings.admin_addr)
            .await
            .with_context(|| format!("binding GATEWAY_ADMIN_ADDR {}", settings.admin_addr))?;
        let connections = Connections::new(settings.max_connections);
        Ok(Self { listener, admin_listener, state: Arc::new(state), connections })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into())
    }

    /// The admin address actually bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into())
    }

    /// Accepts connections until `shutdown` completes, then stops accepting,
    /// closes idle connections and gives in-flight requests
    /// [`DRAIN_TIMEOUT`] to finish.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        tracing::info!(addr = %self.local_addr(), admin_addr = %self.admin_addr(), "webhook-gateway listening");
        let admin_stop = CancellationToken::new();
        let metrics = Arc::clone(&self.state.metrics);
        let admin = tokio::spawn(admin::serve(
            self.admin_listener,
            Arc::new(move || metrics.render()),
            admin_stop.clone(),
        ));
        let mut builder = http1::Builder::new();
        builder.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT).max_buf_size(MAX_BUF_BYTES);
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
            let io = TokioIo::new(stream);
            match self.connections.admit() {
                Some(admitted) => {
                    if admitted.made_room {
                        self.state.metrics.idle_connections_closed.inc();
                    }
                    tokio::spawn(serve(builder.clone(), io, peer, Arc::clone(&self.state), admitted));
                }
                None => {
                    tokio::spawn(refuse(builder.clone(), io, Arc::clone(&self.state)));
                }
            }
        }

        drop(self.listener);
        self.connections.drain();
        tokio::select! {
            () = self.connections.all_closed() => tracing::info!("webhook-gateway stopped"),
            () = tokio::time::sleep(DRAIN_TIMEOUT) => tracing::warn!("drain timed out; closing remaining connections"),
        }
        admin_stop.cancel();
        let _ = admin.await;
        Ok(())
    }
}

/// Binds `addr` with a listen queue of [`LISTEN_BACKLOG`] (the kernel caps
/// it at `net.core.somaxconn`): when hundreds of deliveries connect at once,
/// a short queue drops their SYNs and each waits a second for its retry.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() { TcpSocket::new_v4()? } else { TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// Serves an admitted connection until it closes, or until it is asked to
/// (to make room, or to drain): then it finishes the request in progress,
/// if any, and closes.
async fn serve(
    builder: http1::Builder,
    io: TokioIo<TcpStream>,
    peer: SocketAddr,
    state: Arc<AppState>,
    admitted: Admitted,
) {
    let asked_to_close = admitted.asked_to_close();
    let admitted = Arc::new(admitted);
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let (state, admitted) = (Arc::clone(&state), Arc::clone(&admitted));
        async move {
            let _working = admitted.working();
            routes::route(state, peer.ip(), request).await
        }
    });
    let connection = builder.serve_connection(io, service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = asked_to_close => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        tracing::debug!(%peer, %error, "connection closed with an error");
    }
}

/// Answers a connection there is no room for with 503 and closes it.
async fn refuse(builder: http1::Builder, io: TokioIo<TcpStream>, state: Arc<AppState>) {
    let service = service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
        let state = Arc::clone(&state);
        async move {
            let mut refused = routes::overloaded(&state, request.uri().path()).into_response();
            refused.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            Ok::<_, std::convert::Infallible>(refused)
        }
    });
    let _ = builder.serve_connection(io, service).await;
}
