//! payments-svc's command line: settings (flags with environment fallbacks)
//! and the operator subcommands.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};
use service_kit::logs::LogFormat;

use crate::auth::MIN_TOKEN_LEN;
use crate::batch::BatchSettings;
use crate::rules::Policy;
use crate::stripe_api::{SecretKey, StripeApi};

/// The gRPC service that owns purchases and applies Stripe events. Without a
/// subcommand it serves; `events` inspects and replays stored events.
#[derive(Debug, Parser)]
#[command(name = "payments-svc", version, about)]
pub struct Cli {
    #[command(flatten)]
    pub settings: Settings,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Inspect and replay stored Stripe events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Apply every checkout.session.* event Stripe sent in a recent window
    /// that is not processed here yet: recovers webhooks lost in an outage.
    /// Needs STRIPE_SECRET_KEY.
    Reconcile {
        /// How far back: `30m`, `24h`, `7d` (Stripe keeps events for 30
        /// days), or an RFC 3339 time.
        #[arg(long)]
        since: String,
        /// Events per page requested from Stripe (1 to 100).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(1..=100))]
        page_size: u8,
    },
}

#[derive(Debug, Subcommand)]
pub enum EventsCommand {
    /// List stored events, newest first.
    List {
        /// Only events with this status.
        #[arg(long, value_enum)]
        status: Option<StatusFilter>,
        /// Only events of this type, e.g. checkout.session.completed.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// Only events received since then: a duration back from now
        /// (`30m`, `24h`, `7d`) or an RFC 3339 time.
        #[arg(long)]
        since: Option<String>,
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
    /// Show one event: status, error, deliveries, timestamps and payload.
    Show {
        /// The Stripe event id (`evt_...`).
        event_id: String,
    },
    /// Apply stored events again through the same fulfilment as a delivery.
    Replay {
        /// The Stripe event id (`evt_...`) to replay.
        #[arg(required_unless_present = "failed", conflicts_with = "failed")]
        event_id: Option<String>,
        /// Replay every event whose status is failed.
        #[arg(long)]
        failed: bool,
    },
}

/// The statuses an operator can filter on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StatusFilter {
    Processed,
    Ignored,
    Failed,
}

/// Settings shared by serving and the operator commands.
#[derive(Clone, Args)]
pub struct Settings {
    /// Database to use: a SQLite URL such as `sqlite://payments.db?mode=rwc`
    /// (the default, a file in the working directory, created if missing) or
    /// a PostgreSQL URL such as `postgres://user:password@host/db`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://payments.db?mode=rwc",
        hide_env_values = true,
        global = true
    )]
    pub database_url: String,

    /// Address the gRPC server listens on. Without PAYMENTS_GRPC_TOKEN only
    /// a loopback address is accepted.
    #[arg(long, env = "PAYMENTS_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Shared bearer token every gRPC caller must present (health checks
    /// excepted); at least 32 characters. Required unless listening on
    /// loopback only.
    #[arg(long, env = "PAYMENTS_GRPC_TOKEN", hide_env_values = true)]
    pub grpc_token: Option<String>,

    /// PEM certificate chain for serving gRPC over TLS (with
    /// PAYMENTS_TLS_KEY), for deployments across hosts.
    #[arg(long, env = "PAYMENTS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key matching PAYMENTS_TLS_CERT.
    #[arg(long, env = "PAYMENTS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// Group commit: most events applied in one transaction. 1 applies each
    /// event in its own transaction.
    #[arg(long, env = "PAYMENTS_BATCH_MAX", default_value_t = 128, value_parser = clap::value_parser!(u16).range(1..))]
    pub batch_max: u16,

    /// Group commit: microseconds a worker waits for more events once it has
    /// one. 0 (the default) takes what is waiting: under load, calls queue up
    /// while the previous batch commits, so batches form by themselves
    /// without adding latency when idle.
    #[arg(long, env = "PAYMENTS_BATCH_WAIT_US", default_value_t = 0)]
    pub batch_wait_us: u64,

    /// Group commit: transactions in progress at once (SQLite always uses 1:
    /// it has one writer). One is the default: the next batch gathers while
    /// the current one commits, and a second transaction only splits the
    /// waiting events into smaller batches, each paying for its own commit.
    /// More help only when the database has cores to spare for them.
    #[arg(long, env = "PAYMENTS_BATCH_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub batch_workers: u16,

    /// Address of the admin HTTP server (Prometheus `/metrics`).
    #[arg(long, env = "PAYMENTS_ADMIN_ADDR", default_value = "127.0.0.1:9464")]
    pub admin_addr: SocketAddr,

    /// Do not apply pending migrations at start-up (for deployments that run
    /// `migration up` as a separate step). By default they are applied.
    #[arg(long, env = "PAYMENTS_SKIP_MIGRATIONS")]
    pub skip_migrations: bool,

    /// Which Stripe mode's events to fulfil: `true` for live mode
    /// (production), `false` for test mode. Events of the other mode are
    /// refused and stored as failed, so a test payment can never grant a
    /// course in production.
    #[arg(long, env = "STRIPE_LIVEMODE", default_value_t = false, action = ArgAction::Set, global = true)]
    pub stripe_livemode: bool,

    /// Stripe secret API key (`sk_...`, or a restricted `rk_...` key that can
    /// read Checkout Sessions and events). Optional: with it, verify asks
    /// Stripe about sessions not yet recorded as paid and fulfils them, and
    /// `reconcile` works; without it, verify answers from the database only.
    /// Its mode must match STRIPE_LIVEMODE.
    #[arg(long, env = "STRIPE_SECRET_KEY", hide_env_values = true, global = true)]
    pub stripe_secret_key: Option<String>,

    /// Stripe's API base URL; tests point it at a local server.
    #[arg(long, env = "STRIPE_API_BASE", default_value = "https://api.stripe.com", global = true)]
    pub stripe_api_base: String,

    /// Time budget of one Stripe call, retries included, in milliseconds.
    /// Keep it below the gateway's PAYMENTS_SVC_TIMEOUT_MS, so that a slow
    /// Stripe gives the buyer an unconfirmed answer rather than an error.
    #[arg(long, env = "STRIPE_API_TIMEOUT_MS", default_value_t = 3_000, global = true)]
    pub stripe_api_timeout_ms: u64,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

impl Settings {
    /// The defaults, on `database_url`, with every port ephemeral: a
    /// loopback-only service for tests and tools.
    pub fn local(database_url: impl Into<String>) -> Self {
        let loopback_ephemeral: SocketAddr = ([127, 0, 0, 1], 0).into();
        Self {
            database_url: database_url.into(),
            grpc_addr: loopback_ephemeral,
            grpc_token: None,
            tls_cert: None,
            tls_key: None,
            admin_addr: loopback_ephemeral,
            batch_max: 128,
            batch_wait_us: 0,
            batch_workers: 1,
            skip_migrations: false,
            stripe_livemode: false,
            stripe_secret_key: None,
            stripe_api_base: "https://api.stripe.com".into(),
            stripe_api_timeout_ms: 3_000,
            log_format: LogFormat::Text,
        }
    }

    /// The token callers must present, refusing to run open anywhere but on
    /// loopback.
    pub fn grpc_token(&self) -> anyhow::Result<Option<&str>> {
        match self.grpc_token.as_deref().map(str::trim).filter(|t| !t.is_empty()) {
            Some(token) if token.len() < MIN_TOKEN_LEN => {
                anyhow::bail!("PAYMENTS_GRPC_TOKEN must be at least {MIN_TOKEN_LEN} characters")
            }
            Some(token) => Ok(Some(token)),
            None if self.grpc_addr.ip().is_loopback() => Ok(None),
            None => anyhow::bail!(
                "PAYMENTS_GRPC_TOKEN is required when PAYMENTS_GRPC_ADDR ({}) is not a loopback address",
                self.grpc_addr
            ),
        }
    }

    /// Group-commit settings for a database at `DATABASE_URL`.
    pub fn batching(&self) -> BatchSettings {
        let single_writer = self.database_url.starts_with("sqlite:");
        BatchSettings {
            max_size: usize::from(self.batch_max),
            max_wait: Duration::from_micros(self.batch_wait_us),
            workers: if single_writer { 1 } else { usize::from(self.batch_workers) },
        }
    }

    pub fn policy(&self) -> Policy {
        Policy { livemode: self.stripe_livemode }
    }

    /// The Stripe client, when a key is configured. Refuses a key that is
    /// not shaped like one, or whose mode contradicts STRIPE_LIVEMODE.
    pub fn stripe_api(&self) -> anyhow::Result<Option<StripeApi>> {
        let Some(key) = self.stripe_secret_key.as_deref().filter(|k| !k.trim().is_empty()) else {
            return Ok(None);
        };
        let key =
            SecretKey::new(key.trim()).map_err(|reason| anyhow::anyhow!("STRIPE_SECRET_KEY: {reason}"))?;
        if key.is_live() != self.stripe_livemode {
            anyhow::bail!(
                "STRIPE_SECRET_KEY is a {} key but STRIPE_LIVEMODE is {}",
                if key.is_live() { "live-mode" } else { "test-mode" },
                self.stripe_livemode
            );
        }
        anyhow::ensure!(self.stripe_api_timeout_ms > 0, "STRIPE_API_TIMEOUT_MS must be above 0");
        let budget = Duration::from_millis(self.stripe_api_timeout_ms);
        StripeApi::new(&self.stripe_api_base, &key, budget).map(Some)
    }
}

impl fmt::Debug for Settings {
    /// The database URL may carry a password, so it is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &"[redacted]")
            .field("grpc_addr", &self.grpc_addr)
            .field("grpc_token", &self.grpc_token.as_ref().map(|_| "[redacted]"))
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .field("admin_addr", &self.admin_addr)
            .field("batch_max", &self.batch_max)
            .field("batch_wait_us", &self.batch_wait_us)
            .field("batch_workers", &self.batch_workers)
            .field("skip_migrations", &self.skip_migrations)
            .field("stripe_livemode", &self.stripe_livemode)
            .field("stripe_secret_key", &self.stripe_secret_key.as_ref().map(|_| "[redacted]"))
            .field("stripe_api_base", &self.stripe_api_base)
            .field("stripe_api_timeout_ms", &self.stripe_api_timeout_ms)
            .field("log_format", &self.log_format)
            .finish()
    }
}
