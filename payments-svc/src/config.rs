//! payments-svc's command line: settings (flags with environment fallbacks)
//! and the operator subcommands.

use std::fmt;
use std::net::SocketAddr;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

use crate::fulfilment::Policy;

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

    /// Address the gRPC server listens on.
    #[arg(long, env = "PAYMENTS_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

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

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text, global = true)]
    pub log_format: LogFormat,
}

impl Settings {
    pub fn policy(&self) -> Policy {
        Policy { livemode: self.stripe_livemode }
    }
}

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl fmt::Debug for Settings {
    /// The database URL may carry a password, so it is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &"[redacted]")
            .field("grpc_addr", &self.grpc_addr)
            .field("skip_migrations", &self.skip_migrations)
            .field("stripe_livemode", &self.stripe_livemode)
            .field("log_format", &self.log_format)
            .finish()
    }
}
