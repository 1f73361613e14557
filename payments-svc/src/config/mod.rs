//! payments-svc's settings: flags with environment fallbacks ([`Args`]),
//! validated once into the [`Settings`] the service runs with.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Parser};
use service_kit::logs::LogFormat;
use service_kit::token::{self, TokenError};

use crate::fulfil::batch::BatchSettings;
use crate::stripe::StripeSettings;
use payments_domain::rules::Policy;

mod groups;

pub use groups::{DatabaseArgs, PolicyArgs, RetentionArgs, StripeArgs};

/// The service's flags, as given; see [`Settings`] for what they become.
#[derive(Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub database: DatabaseArgs,

    #[command(flatten)]
    pub policy: PolicyArgs,

    #[command(flatten)]
    pub stripe: StripeArgs,

    #[command(flatten)]
    pub retention: RetentionArgs,

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

    /// Group commit: batches in progress at once (SQLite always uses 1: it
    /// has one writer). Writing transactions commit one at a time whatever
    /// it is; a second worker gathers the next batch while one commits.
    #[arg(long, env = "PAYMENTS_BATCH_WORKERS", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub batch_workers: u16,

    /// Address of the admin HTTP server (Prometheus `/metrics`).
    #[arg(long, env = "PAYMENTS_ADMIN_ADDR", default_value = "127.0.0.1:9464")]
    pub admin_addr: SocketAddr,

    /// Do not apply pending migrations at start-up, for deployments that run
    /// `payments-svc migrate` as a step of their own: the service then
    /// refuses to start on a schema that step has not brought up to date.
    /// By default they are applied.
    #[arg(long, env = "PAYMENTS_SKIP_MIGRATIONS")]
    pub skip_migrations: bool,

    /// Refund duplicate payments (a second payment for a course the buyer
    /// already owns) through Stripe's Refunds API by itself, from durable
    /// work that survives restarts, one refund per duplicate even with
    /// several replicas. Needs STRIPE_SECRET_KEY with write access to
    /// refunds. Off: `payments-svc purchases refund` does it on demand.
    #[arg(long, env = "STRIPE_AUTO_REFUND_DUPLICATES", default_value_t = false, action = ArgAction::Set)]
    pub stripe_auto_refund_duplicates: bool,

    /// Run the missed-webhook sweep inside the service this often (`15m`,
    /// `1h`, `1d`), one replica at a time, over the last two intervals (at
    /// least an hour); off when unset. Needs STRIPE_SECRET_KEY.
    #[arg(long, env = "RECONCILE_INTERVAL", value_parser = parse_interval)]
    pub reconcile_interval: Option<Duration>,

    /// Compare access here with Stripe's this often (`1h`, `1d`), as
    /// `payments-svc sync --check` does, one replica at a time, and export
    /// how many purchases differ (`payments_sync_check_differences`); off
    /// when unset. Needs STRIPE_SECRET_KEY; its pages share
    /// STRIPE_API_MAX_RPS with verify.
    #[arg(long, env = "SYNC_CHECK_INTERVAL", value_parser = parse_interval)]
    pub sync_check_interval: Option<Duration>,

    /// How far back the scheduled check looks: sessions created in this
    /// window, up to an hour ago (newer ones may still have their webhooks
    /// on the way), with their refunds and disputes until now.
    #[arg(long, env = "SYNC_CHECK_WINDOW", value_parser = parse_interval, default_value = "30d")]
    pub sync_check_window: Duration,

    /// Most change-feed watches (WatchPurchaseChanges streams) this replica
    /// serves at once; beyond it a new one is refused with
    /// RESOURCE_EXHAUSTED, to retry later or on another replica. An open
    /// watch costs memory, not queries.
    #[arg(long, env = "PAYMENTS_MAX_WATCHERS", default_value_t = 2_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_watchers: u32,

    /// Log line format (the operator commands read LOG_FORMAT too).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl Args {
    /// The defaults, on `database_url`, with every port ephemeral: a
    /// loopback-only service for tests and tools. The defaults are clap's
    /// own, so they are written once, on the flags above.
    ///
    /// Panics when a `PAYMENTS_*` or `STRIPE_*` variable in the environment
    /// does not parse, as the binary would refuse to start.
    pub fn local(database_url: &str) -> Self {
        let loopback = "127.0.0.1:0";
        let flags = ["--database-url", database_url, "--grpc-addr", loopback, "--admin-addr", loopback];
        let cli = ArgsOnly::try_parse_from(std::iter::once("payments-svc").chain(flags));
        cli.unwrap_or_else(|error| panic!("the local flags do not parse: {error}")).args
    }
}

/// The flags alone, without the operator commands, for [`Args::local`].
#[derive(Parser)]
struct ArgsOnly {
    #[command(flatten)]
    args: Args,
}

impl fmt::Debug for Args {
    /// The database URL may carry a password, so it is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Args")
            .field("database_url", &"[redacted]")
            .field("grpc_addr", &self.grpc_addr)
            .field("grpc_token", &self.grpc_token.as_ref().map(|_| "[redacted]"))
            .field("stripe_secret_key", &self.stripe.stripe_secret_key.as_ref().map(|_| "[redacted]"))
            .field("stripe_livemode", &self.policy.stripe_livemode)
            .finish_non_exhaustive()
    }
}

/// PEM files for serving gRPC over TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Validated settings payments-svc runs with, serving or as an operator
/// command. Built once from [`Args`]; nothing downstream re-checks them.
#[derive(Clone)]
pub struct Settings {
    /// SQLite or PostgreSQL URL (may carry a password: never printed).
    pub database_url: String,
    pub grpc_addr: SocketAddr,
    /// The bearer token callers must present; `None` only on loopback.
    pub grpc_token: Option<String>,
    pub tls: Option<TlsFiles>,
    pub admin_addr: SocketAddr,
    pub batching: BatchSettings,
    pub skip_migrations: bool,
    pub policy: Policy,
    /// Stripe's API, when a key is configured.
    pub stripe: Option<StripeSettings>,
    /// Refund duplicate payments by itself (needs `stripe`).
    pub auto_refund_duplicates: bool,
    /// How long the change feed keeps each change.
    pub changes_retention: Duration,
    /// How long settled events keep their payloads.
    pub events_retention: Duration,
    /// How often payments-svc sweeps for missed webhooks itself (needs
    /// `stripe`); `None`: never.
    pub reconcile_interval: Option<Duration>,
    /// The scheduled comparison with Stripe (needs `stripe`); `None`: never.
    pub sync_check: Option<SyncCheckSchedule>,
    /// Most change-feed watches served at once.
    pub max_watchers: usize,
    pub log_format: LogFormat,
}

impl Settings {
    /// [`Args::local`], validated.
    pub fn local(database_url: &str) -> Self {
        Self::try_from(Args::local(database_url))
            .unwrap_or_else(|error| panic!("the local settings are invalid: {error}"))
    }
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("database_url", &"[redacted]")
            .field("grpc_addr", &self.grpc_addr)
            .field("grpc_token", &self.grpc_token.as_ref().map(|_| "[redacted]"))
            .field("tls", &self.tls)
            .field("admin_addr", &self.admin_addr)
            .field("batching", &self.batching)
            .field("skip_migrations", &self.skip_migrations)
            .field("policy", &self.policy)
            .field("stripe", &self.stripe)
            .field("auto_refund_duplicates", &self.auto_refund_duplicates)
            .field("changes_retention", &self.changes_retention)
            .field("events_retention", &self.events_retention)
            .field("max_watchers", &self.max_watchers)
            .field("log_format", &self.log_format)
            .finish()
    }
}

/// A setting payments-svc refuses to start with, naming its variable and
/// never its value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error(transparent)]
    Token(#[from] TokenError),
    #[error("PAYMENTS_GRPC_TOKEN is required when PAYMENTS_GRPC_ADDR ({addr}) is not a loopback address")]
    TokenRequired { addr: SocketAddr },
    #[error("STRIPE_SECRET_KEY: {0}")]
    InvalidStripeKey(&'static str),
    #[error("STRIPE_SECRET_KEY is a {key_mode} key but STRIPE_LIVEMODE is {livemode}")]
    StripeModeMismatch { key_mode: &'static str, livemode: bool },
    #[error("STRIPE_API_TIMEOUT_MS must be above 0")]
    ZeroStripeTimeout,
    #[error("STRIPE_AUTO_REFUND_DUPLICATES needs STRIPE_SECRET_KEY")]
    AutoRefundWithoutKey,
    #[error("RECONCILE_INTERVAL needs STRIPE_SECRET_KEY")]
    ReconcileWithoutKey,
    #[error("SYNC_CHECK_INTERVAL needs STRIPE_SECRET_KEY")]
    SyncCheckWithoutKey,
}

/// When and how far back the scheduled check compares with Stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyncCheckSchedule {
    pub interval: Duration,
    pub window: Duration,
}

impl TryFrom<Args> for Settings {
    type Error = ConfigError;

    fn try_from(args: Args) -> Result<Self, ConfigError> {
        let grpc_token = grpc_token(&args)?;
        let stripe = args.stripe.settings(args.policy.stripe_livemode)?;
        if args.stripe_auto_refund_duplicates && stripe.is_none() {
            return Err(ConfigError::AutoRefundWithoutKey);
        }
        if args.reconcile_interval.is_some() && stripe.is_none() {
            return Err(ConfigError::ReconcileWithoutKey);
        }
        if args.sync_check_interval.is_some() && stripe.is_none() {
            return Err(ConfigError::SyncCheckWithoutKey);
        }
        let single_writer = args.database.database_url.starts_with("sqlite:");
        let batching = BatchSettings {
            max_size: usize::from(args.batch_max),
            max_wait: Duration::from_micros(args.batch_wait_us),
            workers: if single_writer { 1 } else { usize::from(args.batch_workers) },
        };
        let tls = match (args.tls_cert, args.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            _ => None,
        };
        Ok(Self {
            database_url: args.database.database_url,
            grpc_addr: args.grpc_addr,
            grpc_token,
            tls,
            admin_addr: args.admin_addr,
            batching,
            skip_migrations: args.skip_migrations,
            policy: args.policy.policy(),
            stripe,
            auto_refund_duplicates: args.stripe_auto_refund_duplicates,
            changes_retention: args.retention.changes(),
            events_retention: args.retention.events(),
            reconcile_interval: args.reconcile_interval,
            sync_check: args
                .sync_check_interval
                .map(|interval| SyncCheckSchedule { interval, window: args.sync_check_window }),
            max_watchers: usize::try_from(args.max_watchers).unwrap_or(usize::MAX),
            log_format: args.log_format,
        })
    }
}

/// A positive interval: a number and a unit, `s`, `m`, `h` or `d`.
pub(crate) fn parse_interval(value: &str) -> Result<Duration, String> {
    let (number, unit) = value.split_at(value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len()));
    let amount: u64 = number.parse().map_err(|_| format!("{value:?}: expected e.g. 15m or 1h"))?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3_600,
        "d" => 86_400,
        _ => return Err(format!("{value:?}: the unit must be s, m, h or d")),
    };
    match amount.checked_mul(unit_secs) {
        Some(secs) if secs > 0 => Ok(Duration::from_secs(secs)),
        _ => Err(format!("{value:?}: must be above 0 and not absurdly long")),
    }
}

/// The token callers must present, refusing to run open anywhere but on
/// loopback.
fn grpc_token(args: &Args) -> Result<Option<String>, ConfigError> {
    match token::parse(args.grpc_token.as_deref())? {
        Some(token) => Ok(Some(token)),
        None if args.grpc_addr.ip().is_loopback() => Ok(None),
        None => Err(ConfigError::TokenRequired { addr: args.grpc_addr }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use payments_domain::reversals::DisputeAccess;

    #[test]
    fn intervals_take_a_number_and_a_unit() {
        assert_eq!(parse_interval("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_interval("1d"), Ok(Duration::from_secs(86_400)));
        for bad in ["", "15", "0m", "m", "1w", "-1h"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    fn args(flags: &[&str]) -> Args {
        let all =
            ["payments-svc", "--database-url", "sqlite::memory:"].into_iter().chain(flags.iter().copied());
        ArgsOnly::try_parse_from(all).expect("parses").args
    }

    #[test]
    fn the_local_settings_are_the_flag_defaults_on_ephemeral_loopback_ports() {
        let settings = Settings::local("sqlite://x.db?mode=rwc");
        assert_eq!(settings.batching.max_size, 128);
        assert_eq!(settings.batching.workers, 1);
        assert!(settings.grpc_addr.ip().is_loopback() && settings.grpc_addr.port() == 0);
        assert_eq!(settings.admin_addr.port(), 0);
        assert_eq!(settings.policy, Policy { livemode: false, dispute_access: DisputeAccess::Suspend });
        assert!(settings.stripe.is_none() && settings.grpc_token.is_none());
    }

    #[test]
    fn a_public_address_needs_a_token_of_32_characters_without_white_space_around_it() {
        let open = Settings::try_from(args(&["--grpc-addr", "0.0.0.0:50051"])).expect_err("refused");
        assert!(open.to_string().contains("PAYMENTS_GRPC_TOKEN is required"), "{open}");
        let short = args(&["--grpc-addr", "0.0.0.0:50051", "--grpc-token", "short"]);
        assert_eq!(Settings::try_from(short).expect_err("refused"), ConfigError::Token(TokenError::TooShort));
        let token = "t".repeat(token::MIN_TOKEN_LEN);
        let spaced = args(&["--grpc-addr", "0.0.0.0:50051", "--grpc-token", &format!("{token} ")]);
        let refused = Settings::try_from(spaced).expect_err("refused");
        assert_eq!(refused, ConfigError::Token(TokenError::SurroundingWhitespace));
        let fine = Settings::try_from(args(&["--grpc-addr", "0.0.0.0:50051", "--grpc-token", &token]));
        assert_eq!(fine.expect("accepted").grpc_token, Some(token));
    }

    #[test]
    fn a_stripe_key_of_the_other_mode_is_refused_without_printing_it() {
        let error =
            Settings::try_from(args(&["--stripe-secret-key", "sk_live_secret_value"])).expect_err("refused");
        assert_eq!(error.to_string(), "STRIPE_SECRET_KEY is a live-mode key but STRIPE_LIVEMODE is false");
        let publishable =
            Settings::try_from(args(&["--stripe-secret-key", "pk_test_x"])).expect_err("refused");
        assert!(matches!(publishable, ConfigError::InvalidStripeKey(_)), "{publishable}");
        let zero = args(&["--stripe-secret-key", "sk_test_x", "--stripe-api-timeout-ms", "0"]);
        assert_eq!(Settings::try_from(zero).expect_err("refused"), ConfigError::ZeroStripeTimeout);
    }
}
