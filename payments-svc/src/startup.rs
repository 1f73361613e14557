//! Building the service and running it until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use payments_proto::v1::FILE_DESCRIPTOR_SET;
use payments_proto::v1::payments_server::PaymentsServer;
use sea_orm::{DatabaseConnection, DbBackend};
use service_kit::logs::{self, Output};
use service_kit::traces::Traces;
use service_kit::{admin, shutdown};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity, Server, ServerTlsConfig};
use tonic_health::server::HealthReporter;

use payments_domain::rules::Policy;

use crate::api::auth::RequireToken;
use crate::api::grpc::PaymentsService;
use crate::api::watch::{self, Watchers};
use crate::config::{Args, Settings, SyncCheckSchedule, TlsFiles};
use crate::fulfil::batch::{BatchSettings, EventBatcher};
use crate::fulfil::retention::{self, Retention};
use crate::fulfil::sync::check;
use crate::fulfil::{reconcile, refunds};
use crate::metrics::Metrics;
use crate::store::health::{Answer, DatabaseHealth, Probe, Verdicts};
use crate::store::{self, signals::FeedSignals};
use crate::stripe::StripeApi;

/// HTTP/2 flow-control windows for callers, in bytes.
const HTTP2_CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
const HTTP2_STREAM_WINDOW: u32 = 1024 * 1024;
/// Largest HTTP/2 frame callers may send, in bytes. A gateway call carries
/// one or more ~5 KB events; in HTTP/2's default 16 KiB frames it crosses
/// the loopback in several writes, each waking this side to read it.
const HTTP2_MAX_FRAME_SIZE: u32 = 1024 * 1024;

/// How long a stopping payments-svc waits for open calls to finish. A watch
/// ends at once on shutdown, but a consumer that stopped reading never takes
/// its stream's last frames, and would hold the server open for ever.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// The health service's name that answers SERVING for as long as the
/// process answers at all, whatever the database: a liveness probe on it
/// restarts a stuck process, never one waiting out a database outage (the
/// readiness probe asks "", which follows the database).
pub const LIVENESS_SERVICE: &str = "liveness";

/// How often the health service re-checks the database while it answers
/// (failures reported by the paths that meet them are checked at once),
/// and while it does not, to turn back soon after it recovers.
const HEALTH_CHECK_INTERVAL: Duration = Duration::from_millis(500);
const HEALTH_RECHECK_INTERVAL: Duration = Duration::from_millis(200);

/// Serves with `args` until SIGTERM or Ctrl-C: logs and traces set up, the
/// settings validated, the application built and run, traces flushed.
pub async fn serve(args: Args) -> anyhow::Result<()> {
    let traces = Traces::from_env("payments-svc")?;
    let logs = logs::init(args.log_format, Output::Stdout, traces.as_ref());
    let settings = Settings::try_from(args)?;
    let app = Application::build(&settings).await?;
    let stopped = app.run_until_stopped(shutdown::signal()).await;
    if let Some(traces) = traces {
        traces.shutdown().await;
    }
    drop(logs);
    stopped
}

/// A payments-svc with its database open and its ports bound, ready to serve.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    admin_listener: TcpListener,
    db: DatabaseConnection,
    /// Whether the database answers, and which of its connections to trust.
    health: DatabaseHealth,
    policy: Policy,
    batching: BatchSettings,
    stripe: Option<StripeApi>,
    /// Refunds duplicate payments by itself.
    auto_refund_duplicates: bool,
    /// How long the change feed and stored events are kept.
    retention: Retention,
    /// Sweeps for missed webhooks this often, when set.
    reconcile_interval: Option<Duration>,
    /// Compares with Stripe so, when set.
    sync_check: Option<SyncCheckSchedule>,
    /// Most change-feed watches served at once.
    max_watchers: usize,
    auth: RequireToken,
    tls: Option<ServerTlsConfig>,
}

impl Application {
    /// Checks the configuration, connects to the database, applies pending
    /// migrations (unless told not to) and binds the gRPC and admin
    /// addresses. Port 0 binds an ephemeral port; see the `*_addr` methods.
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let token = settings.grpc_token.as_deref();
        if token.is_none() {
            tracing::warn!(
                "PAYMENTS_GRPC_TOKEN is not set: accepting unauthenticated calls, on loopback only"
            );
        }
        let tls = server_tls(settings)?;
        let stripe = settings.stripe.as_ref().map(StripeApi::new).transpose()?;
        if stripe.is_none() {
            tracing::info!("STRIPE_SECRET_KEY is not set: verify answers from the database only");
        }
        let health = DatabaseHealth::default();
        let db = store::connect_guarded(&settings.database_url, &health)
            .await
            .context("connecting to DATABASE_URL")?;
        if settings.skip_migrations {
            refuse_an_old_schema(&db).await?;
        } else {
            store::migrate(&db).await.context("applying migrations")?;
        }
        let listener = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("binding PAYMENTS_GRPC_ADDR {}", settings.grpc_addr))?;
        let admin_listener = TcpListener::bind(settings.admin_addr)
            .await
            .with_context(|| format!("binding PAYMENTS_ADMIN_ADDR {}", settings.admin_addr))?;
        tracing::info!(
            livemode = settings.policy.livemode,
            "fulfilling {} events only",
            if settings.policy.livemode { "live-mode" } else { "test-mode" }
        );
        Ok(Self {
            listener,
            admin_listener,
            db,
            health,
            policy: settings.policy,
            batching: settings.batching,
            stripe,
            auto_refund_duplicates: settings.auto_refund_duplicates,
            reconcile_interval: settings.reconcile_interval,
            sync_check: settings.sync_check,
            max_watchers: settings.max_watchers,
            retention: Retention { changes: settings.changes_retention, events: settings.events_retention },
            auth: RequireToken::new(token),
            tls,
        })
    }

    /// The gRPC address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into())
    }

    /// The admin (metrics) address actually bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_listener.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into())
    }

    /// Serves `payments.v1.Payments`, the standard gRPC health service,
    /// server reflection and the admin port until `shutdown` completes, then
    /// reports not serving, stops accepting and lets in-flight calls finish.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let addr = self.local_addr();
        let admin_addr = self.admin_addr();
        let stop = CancellationToken::new();
        tokio::spawn({
            let stop = stop.clone();
            async move {
                shutdown.await;
                stop.cancel();
            }
        });
        let metrics = Arc::new(Metrics::default());
        let signals = FeedSignals::default();
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<PaymentsServer<PaymentsService>>().await;
        health.set_service_status(LIVENESS_SERVICE, tonic_health::ServingStatus::Serving).await;
        tokio::spawn(watch_database(
            self.db.clone(),
            self.health.clone(),
            health.clone(),
            Arc::clone(&metrics),
            stop.clone(),
        ));
        let render = {
            let metrics = Arc::clone(&metrics);
            Arc::new(move || metrics.render())
        };
        if let (true, Some(stripe)) = (self.auto_refund_duplicates, &self.stripe) {
            tokio::spawn(refunds::run(
                self.db.clone(),
                stripe.clone(),
                self.policy.dispute_access,
                self.health.clone(),
                stop.clone(),
            ));
        }
        if let (Some(interval), Some(stripe)) = (self.reconcile_interval, &self.stripe) {
            tokio::spawn(reconcile::run(
                self.db.clone(),
                signals.clone(),
                stripe.clone(),
                self.policy,
                interval,
                self.health.clone(),
                Arc::clone(&metrics),
                stop.clone(),
            ));
        }
        if let (Some(schedule), Some(stripe)) = (self.sync_check, &self.stripe) {
            tokio::spawn(check::run_scheduled(
                check::Scheduled {
                    db: self.db.clone(),
                    stripe: stripe.clone(),
                    policy: self.policy,
                    interval: schedule.interval,
                    window: schedule.window,
                    health: self.health.clone(),
                    metrics: Arc::clone(&metrics),
                },
                stop.clone(),
            ));
        }
        let admin = tokio::spawn(admin::serve(self.admin_listener, render, stop.clone()));
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building gRPC reflection")?;
        let watchers =
            Arc::new(Watchers::new(signals.clone(), self.health.clone(), stop.clone(), self.max_watchers));
        tokio::spawn(watch::listen(
            self.db.clone(),
            Arc::clone(&watchers),
            self.health.clone(),
            Arc::clone(&metrics),
            stop.clone(),
        ));
        tokio::spawn(watch::tell_listeners(
            self.db.clone(),
            signals.clone(),
            self.health.clone(),
            stop.clone(),
        ));
        tokio::spawn(watch::sample(Arc::clone(&watchers), Arc::clone(&metrics), stop.clone()));
        tokio::spawn(retention::run(
            self.db.clone(),
            signals.clone(),
            self.retention,
            self.policy,
            self.health.clone(),
            Arc::clone(&metrics),
            stop.clone(),
        ));
        let batcher = EventBatcher::start(
            self.db.clone(),
            signals.clone(),
            self.health.clone(),
            self.policy,
            self.batching,
            Arc::clone(&metrics),
        );
        let payments = PaymentsService::new(
            self.db.clone(),
            signals,
            self.policy,
            batcher,
            self.stripe,
            metrics,
            watchers,
            self.health.clone(),
        );

        // Each call carries a ~5 KB payload; HTTP/2's default 64 KiB windows
        // would stall the gateway's concurrent calls on its one connection.
        let mut server = Server::builder()
            .initial_connection_window_size(HTTP2_CONNECTION_WINDOW)
            .initial_stream_window_size(HTTP2_STREAM_WINDOW)
            .max_frame_size(HTTP2_MAX_FRAME_SIZE);
        if let Some(tls) = self.tls {
            server = server.tls_config(tls).context("configuring TLS")?;
        }
        let router = server
            .add_service(health_service)
            .add_service(tonic::service::interceptor::InterceptedService::new(reflection, self.auth.clone()))
            .add_service(PaymentsServer::with_interceptor(payments, self.auth));
        tracing::info!(addr = %addr, admin_addr = %admin_addr, "payments-svc listening");

        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        let drained = {
            let stop = stop.clone();
            async move {
                stop.cancelled().await;
                health.set_not_serving::<PaymentsServer<PaymentsService>>().await;
                health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            }
        };
        let serving = router.serve_with_incoming_shutdown(incoming, drained);
        tokio::select! {
            served = serving => served.context("serving gRPC")?,
            () = drain_limit(&stop) => tracing::warn!(
                limit = ?DRAIN_LIMIT,
                "calls still open after draining (a change-feed consumer that stopped reading?); closing them"
            ),
        }
        stop.cancel();
        let _ = admin.await;
        // Closing waits for every connection to be given back, and one
        // stuck on a server that stopped answering never would.
        match tokio::time::timeout(DRAIN_LIMIT, self.db.close()).await {
            Ok(closed) => closed.context("closing the database pool")?,
            Err(_) => tracing::warn!(
                limit = ?DRAIN_LIMIT,
                "database connections still in use after draining (a server that stopped answering?); leaving them"
            ),
        }
        tracing::info!("payments-svc stopped");
        Ok(())
    }
}

/// Completes [`DRAIN_LIMIT`] after `stop` is cancelled.
async fn drain_limit(stop: &CancellationToken) {
    stop.cancelled().await;
    tokio::time::sleep(DRAIN_LIMIT).await;
}

fn server_tls(settings: &Settings) -> anyhow::Result<Option<ServerTlsConfig>> {
    let Some(TlsFiles { cert, key }) = &settings.tls else {
        return Ok(None);
    };
    let cert =
        std::fs::read(cert).with_context(|| format!("reading PAYMENTS_TLS_CERT {}", cert.display()))?;
    let key = std::fs::read(key).with_context(|| format!("reading PAYMENTS_TLS_KEY {}", key.display()))?;
    Ok(Some(ServerTlsConfig::new().identity(Identity::from_pem(cert, key))))
}

/// With migrations left to a step of their own, a version must not serve on
/// a schema that step has not brought up to it: it stops, naming what is
/// missing, and the orchestrator starts it again later.
async fn refuse_an_old_schema(db: &DatabaseConnection) -> anyhow::Result<()> {
    let pending = store::pending_migrations(db).await.context("reading the applied migrations")?;
    if !pending.is_empty() {
        anyhow::bail!(
            "PAYMENTS_SKIP_MIGRATIONS is set but {} migration(s) are not applied ({}): run `payments-svc migrate` first",
            pending.len(),
            pending.join(", ")
        );
    }
    tracing::info!("migrations left to the migration step; the schema is current");
    Ok(())
}

/// Keeps the health service's answer in step with the database: serving
/// while it answers a probe and takes writes, not serving otherwise. Probes
/// at once when a path reports a failed operation, so the answer turns
/// within a probe's timeout of the first failure.
///
/// Connections are distrusted ([`DatabaseHealth::distrust`]) as
/// [`Verdicts`] says: when probes find no writable server, and once more
/// when one answers again.
async fn watch_database(
    db: DatabaseConnection,
    connections: DatabaseHealth,
    health: HealthReporter,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    // A SQLite file has no connection to go half-open or server to fail
    // over, and a probe that waits behind a long write is no reason to
    // abandon it.
    let distrusts = db.get_database_backend() == DbBackend::Postgres;
    let mut probe = Probe::new(db);
    let mut verdicts = Verdicts::default();
    let mut serving = true;
    loop {
        let answer = probe.ask().await;
        let answers = answer.is_writable();
        if verdicts.distrust_after(answer) && distrusts {
            connections.distrust();
            metrics.connections_distrusted.inc();
        }
        if serving != answers {
            if answers {
                tracing::info!("database answers again; health set to serving");
                health.set_serving::<PaymentsServer<PaymentsService>>().await;
                health.set_service_status("", tonic_health::ServingStatus::Serving).await;
            } else {
                match answer {
                    Answer::ReadOnly => tracing::warn!(
                        "database read-only (in recovery: not the primary); health set to not serving"
                    ),
                    _ => tracing::warn!("database unreachable; health set to not serving"),
                }
                health.set_not_serving::<PaymentsServer<PaymentsService>>().await;
                health.set_service_status("", tonic_health::ServingStatus::NotServing).await;
            }
            serving = answers;
        }
        let wait = if serving { HEALTH_CHECK_INTERVAL } else { HEALTH_RECHECK_INTERVAL };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = connections.next_failure(), if serving => {}
            () = stop.cancelled() => return,
        }
    }
}
