//! payments-svc settings: command-line flags with environment fallbacks.

use std::fmt;
use std::net::SocketAddr;

use clap::{Parser, ValueEnum};

/// The gRPC service that owns purchases and applies Stripe events.
#[derive(Clone, Parser)]
#[command(name = "payments-svc", version, about)]
pub struct Settings {
    /// Database to use: a SQLite URL such as `sqlite://payments.db?mode=rwc`
    /// (the default, a file in the working directory, created if missing) or
    /// a PostgreSQL URL such as `postgres://user:password@host/db`.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://payments.db?mode=rwc",
        hide_env_values = true
    )]
    pub database_url: String,

    /// Address the gRPC server listens on.
    #[arg(long, env = "PAYMENTS_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,

    /// Do not apply pending migrations at start-up (for deployments that run
    /// `migration up` as a separate step). By default they are applied.
    #[arg(long, env = "PAYMENTS_SKIP_MIGRATIONS")]
    pub skip_migrations: bool,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

/// How log lines are written to stdout.
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
            .field("log_format", &self.log_format)
            .finish()
    }
}
