//! Building the service and running it until a shutdown signal.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use payments_proto::v1::payments_server::PaymentsServer;
use sea_orm::DatabaseConnection;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;

use crate::config::Settings;
use crate::db;
use crate::fulfilment::Policy;
use crate::grpc::PaymentsService;
use crate::stripe_api::StripeApi;

/// A payments-svc with its database open and its port bound, ready to serve.
#[derive(Debug)]
pub struct Application {
    listener: TcpListener,
    db: DatabaseConnection,
    policy: Policy,
    stripe: Option<StripeApi>,
}

impl Application {
    /// Connects to the database, applies pending migrations (unless told not
    /// to) and binds the gRPC address. Port 0 binds an ephemeral port; see
    /// [`Application::local_addr`].
    pub async fn build(settings: &Settings) -> anyhow::Result<Self> {
        let stripe = settings.stripe_api()?;
        if stripe.is_none() {
            tracing::info!("STRIPE_SECRET_KEY is not set: verify answers from the database only");
        }
        let db = db::connect(&settings.database_url).await.context("connecting to DATABASE_URL")?;
        if settings.skip_migrations {
            tracing::info!("skipping migrations, as configured");
        } else {
            db::migrate(&db).await.context("applying migrations")?;
        }
        let listener = TcpListener::bind(settings.grpc_addr)
            .await
            .with_context(|| format!("binding PAYMENTS_GRPC_ADDR {}", settings.grpc_addr))?;
        tracing::info!(
            livemode = settings.stripe_livemode,
            "fulfilling {} events only",
            if settings.stripe_livemode { "live-mode" } else { "test-mode" }
        );
        Ok(Self { listener, db, policy: settings.policy(), stripe })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or_else(|_| ([0, 0, 0, 0], 0).into())
    }

    /// Serves `payments.v1.Payments` and the standard gRPC health service
    /// until `shutdown` completes, then lets in-flight calls finish.
    pub async fn run_until_stopped(self, shutdown: impl Future<Output = ()> + Send) -> anyhow::Result<()> {
        let (health, health_service) = tonic_health::server::health_reporter();
        health.set_serving::<PaymentsServer<PaymentsService>>().await;
        tracing::info!(addr = %self.local_addr(), "payments-svc listening");

        let incoming = TcpIncoming::from(self.listener).with_nodelay(Some(true));
        Server::builder()
            .add_service(health_service)
            .add_service(PaymentsServer::new(PaymentsService::new(self.db.clone(), self.policy, self.stripe)))
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
            .context("serving gRPC")?;
        self.db.close().await.context("closing the database pool")?;
        tracing::info!("payments-svc stopped");
        Ok(())
    }
}
