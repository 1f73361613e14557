//! webhook-gateway settings: command-line flags with environment fallbacks.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use service_kit::logs::LogFormat;
use service_kit::token::{self, TokenError};

use crate::healthcheck::HealthcheckArgs;
use crate::signature::WebhookSecret;

/// What the binary does besides serving.
#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Exit 0 when the gateway serving on GATEWAY_ADDR answers 200 on
    /// `/readyz`, 1 otherwise: a container health check.
    Healthcheck(HealthcheckArgs),
}

/// Receives Stripe webhooks, verifies their signatures and forwards them to
/// payments-svc; also answers the frontend's purchase verification.
#[derive(Clone, Parser)]
#[command(
    name = "webhook-gateway",
    version,
    about,
    after_help = service_kit::traces::ENVIRONMENT_HELP,
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    /// Without a subcommand the gateway serves.
    #[command(subcommand)]
    pub command: Option<Command>,

    /// Webhook signing secret(s) from the Stripe dashboard or `stripe listen`
    /// (`whsec_...`). Required. Several, comma-separated, while a secret is
    /// being rolled: a signature from any of them is accepted.
    #[arg(long, env = "STRIPE_WEBHOOK_SECRET", hide_env_values = true, value_delimiter = ',')]
    pub stripe_webhook_secret: Vec<String>,

    /// Address the HTTP server listens on.
    #[arg(long, env = "GATEWAY_ADDR", default_value = "127.0.0.1:3000")]
    pub gateway_addr: SocketAddr,

    /// Address of the admin HTTP server (Prometheus `/metrics`), apart from
    /// the public listener so that only the scraper can reach it.
    #[arg(long, env = "GATEWAY_ADMIN_ADDR", default_value = "127.0.0.1:9465")]
    pub admin_addr: SocketAddr,

    /// Where payments-svc's gRPC server is; `https://` for TLS.
    #[arg(long, env = "PAYMENTS_SVC_URL", default_value = "http://127.0.0.1:50051")]
    pub payments_svc_url: String,

    /// The bearer token payments-svc requires (its PAYMENTS_GRPC_TOKEN).
    #[arg(long, env = "PAYMENTS_GRPC_TOKEN", hide_env_values = true)]
    pub payments_grpc_token: Option<String>,

    /// PEM CA certificate to trust for an `https://` PAYMENTS_SVC_URL (an
    /// internal CA); without it the public web roots are used.
    #[arg(long, env = "PAYMENTS_SVC_CA_CERT")]
    pub payments_svc_ca_cert: Option<PathBuf>,

    /// How far, in seconds, a signature's timestamp may be from now, either
    /// way, before the webhook is refused as a replay. Must be above 0.
    #[arg(long, env = "STRIPE_WEBHOOK_TOLERANCE_SECS", default_value_t = 300)]
    pub stripe_webhook_tolerance_secs: u64,

    /// Largest request body accepted, in bytes; larger ones get 413.
    /// Stripe's events are a few KiB.
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Deadline for each call to payments-svc, in milliseconds, and for each
    /// webhook's forwarding as a whole (waiting for a call slot included).
    /// Well under the time Stripe waits for an answer, so that a slow
    /// database turns into a 503 (and a redelivery) rather than a Stripe-side
    /// timeout.
    #[arg(long, env = "PAYMENTS_SVC_TIMEOUT_MS", default_value_t = 5_000)]
    pub payments_svc_timeout_ms: u64,

    /// Most webhook events forwarded to payments-svc in one call; 1 sends
    /// each event on its own call.
    #[arg(long, env = "PAYMENTS_SVC_BATCH_MAX", default_value_t = 64)]
    pub payments_svc_batch_max: usize,

    /// Calls forwarding events to payments-svc in flight at once. Events
    /// that arrive while every call is busy travel together in the next one.
    /// Two is the default: while payments-svc applies one call, the next is
    /// already on its way; more calls only split the waiting events into
    /// smaller batches.
    #[arg(long, env = "PAYMENTS_SVC_MAX_CALLS", default_value_t = 2)]
    pub payments_svc_max_calls: usize,

    /// Most connections held open at once. Beyond it, requests on new
    /// connections get 503 with Retry-After and the connection is closed.
    #[arg(long, env = "GATEWAY_MAX_CONNECTIONS", default_value_t = 1024)]
    pub max_connections: usize,

    /// Most webhooks handled at once; beyond it, 503 with Retry-After.
    #[arg(long, env = "GATEWAY_MAX_IN_FLIGHT", default_value_t = 512)]
    pub max_in_flight: usize,

    /// Most verify requests handled at once, apart from the webhooks' limit
    /// so that a flood of them cannot delay Stripe's deliveries; beyond it,
    /// 503 with Retry-After.
    #[arg(long, env = "GATEWAY_MAX_VERIFY_IN_FLIGHT", default_value_t = 64)]
    pub max_verify_in_flight: usize,

    /// Verify requests a second from one client address (a burst of four
    /// seconds' worth is allowed); beyond it, 429 with Retry-After. 0 turns
    /// it off: do that, or raise it, when the gateway sees every client
    /// through one proxy address.
    #[arg(long, env = "GATEWAY_VERIFY_PER_CLIENT_RPS", default_value_t = 5)]
    pub verify_per_client_rps: u32,

    /// Most bytes of webhook bodies held at once, across all requests; a
    /// webhook that finds them spent gets 503 with Retry-After. Bounds the
    /// gateway's memory whatever the bodies' sizes and count. At least
    /// GATEWAY_MAX_BODY_BYTES.
    #[arg(long, env = "GATEWAY_BODY_BUDGET_BYTES", default_value_t = 16 * 1024 * 1024)]
    pub body_budget_bytes: usize,

    /// Longest a request may take, body upload included, in milliseconds;
    /// slower clients get 408 and are disconnected.
    #[arg(long, env = "GATEWAY_REQUEST_TIMEOUT_MS", default_value_t = 15_000)]
    pub request_timeout_ms: u64,

    /// Serve the checkout success page at `/checkout/success` (Stripe
    /// Checkout's `success_url`). Turn off when the frontend has its own.
    #[arg(long, env = "GATEWAY_SUCCESS_PAGE", default_value_t = true, action = clap::ArgAction::Set)]
    pub success_page: bool,

    /// Log line format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

impl fmt::Debug for Cli {
    /// Secrets are never printed, not even by accident in a `{:?}`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cli")
            .field("stripe_webhook_secret", &format_args!("[{} redacted]", self.stripe_webhook_secret.len()))
            .field("gateway_addr", &self.gateway_addr)
            .field("admin_addr", &self.admin_addr)
            .field("payments_svc_url", &self.payments_svc_url)
            .field("payments_grpc_token", &self.payments_grpc_token.as_ref().map(|_| "[redacted]"))
            .field("payments_svc_ca_cert", &self.payments_svc_ca_cert)
            .field("max_connections", &self.max_connections)
            .field("max_in_flight", &self.max_in_flight)
            .field("max_verify_in_flight", &self.max_verify_in_flight)
            .field("body_budget_bytes", &self.body_budget_bytes)
            .field("verify_per_client_rps", &self.verify_per_client_rps)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("stripe_webhook_tolerance_secs", &self.stripe_webhook_tolerance_secs)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("payments_svc_timeout_ms", &self.payments_svc_timeout_ms)
            .field("payments_svc_batch_max", &self.payments_svc_batch_max)
            .field("payments_svc_max_calls", &self.payments_svc_max_calls)
            .field("success_page", &self.success_page)
            .field("log_format", &self.log_format)
            .finish()
    }
}

/// How [`crate::forwarder`] gathers events into calls to payments-svc.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwardSettings {
    /// Most events in one call.
    pub max_events: usize,
    /// Calls in flight at once.
    pub max_calls: usize,
}

/// Validated settings the gateway runs with.
#[derive(Clone)]
pub struct Settings {
    pub webhook_secrets: Vec<WebhookSecret>,
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub payments_svc_url: String,
    pub tolerance_secs: u64,
    pub max_body_bytes: usize,
    pub payments_svc_timeout: Duration,
    pub forwarding: ForwardSettings,
    pub payments_grpc_token: Option<String>,
    pub payments_svc_ca_cert: Option<PathBuf>,
    pub max_connections: usize,
    pub max_in_flight: usize,
    pub max_verify_in_flight: usize,
    pub body_budget_bytes: usize,
    /// `None`: no per-client limit on verify.
    pub verify_per_client_rps: Option<u32>,
    pub request_timeout: Duration,
    pub success_page: bool,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("webhook_secrets", &self.webhook_secrets)
            .field("addr", &self.addr)
            .field("admin_addr", &self.admin_addr)
            .field("payments_svc_url", &self.payments_svc_url)
            .field("payments_grpc_token", &self.payments_grpc_token.as_ref().map(|_| "[redacted]"))
            .field("max_connections", &self.max_connections)
            .field("max_in_flight", &self.max_in_flight)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// The defaults with `secret`, on an ephemeral loopback port, in front of
    /// the payments-svc at `payments_svc_url`: for tests and tools. The
    /// defaults are clap's own, so they are written once, on [`Cli`].
    ///
    /// Panics when a `GATEWAY_*` or `PAYMENTS_SVC_*` variable in the
    /// environment does not parse, as the binary would refuse to start.
    pub fn local(secret: WebhookSecret, payments_svc_url: impl Into<String>) -> Self {
        let url = payments_svc_url.into();
        let loopback = "127.0.0.1:0";
        let flags = [
            "webhook-gateway",
            "--gateway-addr",
            loopback,
            "--admin-addr",
            loopback,
            "--payments-svc-url",
            &url,
        ];
        let cli = Cli::try_parse_from(flags)
            .unwrap_or_else(|error| panic!("the local flags do not parse: {error}"));
        Self::validated(cli, vec![secret])
            .unwrap_or_else(|error| panic!("the local settings are invalid: {error}"))
    }
}

/// A setting the gateway refuses to start with, naming its variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("STRIPE_WEBHOOK_SECRET is not set: the gateway cannot verify webhooks without it (see --help)")]
    MissingSecret,
    #[error("STRIPE_WEBHOOK_SECRET: entry {position} is invalid: {reason}")]
    InvalidSecret { position: usize, reason: &'static str },
    #[error("STRIPE_WEBHOOK_TOLERANCE_SECS must be above 0: 0 would refuse every webhook")]
    ZeroTolerance,
    #[error("GATEWAY_MAX_BODY_BYTES must be above 0")]
    ZeroBodyLimit,
    #[error("GATEWAY_BODY_BUDGET_BYTES must be at least GATEWAY_MAX_BODY_BYTES, which must be under 4 GiB")]
    BodyBudget,
    #[error("PAYMENTS_SVC_TIMEOUT_MS must be above 0")]
    ZeroTimeout,
    #[error(
        "GATEWAY_MAX_CONNECTIONS, GATEWAY_MAX_IN_FLIGHT, GATEWAY_MAX_VERIFY_IN_FLIGHT and GATEWAY_REQUEST_TIMEOUT_MS must be above 0"
    )]
    ZeroLimit,
    #[error("PAYMENTS_SVC_BATCH_MAX and PAYMENTS_SVC_MAX_CALLS must be above 0")]
    ZeroForwarding,
    #[error(transparent)]
    Token(#[from] TokenError),
}

impl TryFrom<Cli> for Settings {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, ConfigError> {
        let webhook_secrets = webhook_secrets(&cli.stripe_webhook_secret)?;
        Self::validated(cli, webhook_secrets)
    }
}

/// The signing secrets, each checked, naming the position of a bad one.
fn webhook_secrets(given: &[String]) -> Result<Vec<WebhookSecret>, ConfigError> {
    let secrets: Vec<_> = given.iter().filter(|s| !s.trim().is_empty()).collect();
    if secrets.is_empty() {
        return Err(ConfigError::MissingSecret);
    }
    secrets
        .into_iter()
        .enumerate()
        .map(|(i, s)| {
            WebhookSecret::new(s.trim())
                .map_err(|reason| ConfigError::InvalidSecret { position: i + 1, reason })
        })
        .collect()
}

impl Settings {
    /// Checks every other setting of `cli`, running with `webhook_secrets`.
    fn validated(cli: Cli, webhook_secrets: Vec<WebhookSecret>) -> Result<Self, ConfigError> {
        if cli.stripe_webhook_tolerance_secs == 0 {
            return Err(ConfigError::ZeroTolerance);
        }
        if cli.max_body_bytes == 0 {
            return Err(ConfigError::ZeroBodyLimit);
        }
        if cli.body_budget_bytes < cli.max_body_bytes || u32::try_from(cli.max_body_bytes).is_err() {
            return Err(ConfigError::BodyBudget);
        }
        if cli.payments_svc_timeout_ms == 0 {
            return Err(ConfigError::ZeroTimeout);
        }
        if [cli.max_connections, cli.max_in_flight, cli.max_verify_in_flight].contains(&0)
            || cli.request_timeout_ms == 0
        {
            return Err(ConfigError::ZeroLimit);
        }
        if cli.payments_svc_batch_max == 0 || cli.payments_svc_max_calls == 0 {
            return Err(ConfigError::ZeroForwarding);
        }
        Ok(Self {
            webhook_secrets,
            addr: cli.gateway_addr,
            admin_addr: cli.admin_addr,
            payments_svc_url: cli.payments_svc_url,
            tolerance_secs: cli.stripe_webhook_tolerance_secs,
            max_body_bytes: cli.max_body_bytes,
            payments_svc_timeout: Duration::from_millis(cli.payments_svc_timeout_ms),
            forwarding: ForwardSettings {
                max_events: cli.payments_svc_batch_max,
                max_calls: cli.payments_svc_max_calls,
            },
            payments_grpc_token: token::parse(cli.payments_grpc_token.as_deref())?,
            payments_svc_ca_cert: cli.payments_svc_ca_cert,
            max_connections: cli.max_connections,
            max_in_flight: cli.max_in_flight,
            max_verify_in_flight: cli.max_verify_in_flight,
            body_budget_bytes: cli.body_budget_bytes,
            verify_per_client_rps: Some(cli.verify_per_client_rps).filter(|rps| *rps > 0),
            request_timeout: Duration::from_millis(cli.request_timeout_ms),
            success_page: cli.success_page,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cli(args: &[&str]) -> Cli {
        Cli::try_parse_from(std::iter::once("webhook-gateway").chain(args.iter().copied())).expect("parses")
    }

    #[test]
    fn the_local_settings_are_the_flag_defaults_on_an_ephemeral_loopback_port() {
        let secret = WebhookSecret::new("whsec_local").expect("valid");
        let settings = Settings::local(secret, "http://127.0.0.1:1");
        assert_eq!(settings.addr, ([127, 0, 0, 1], 0).into());
        assert_eq!(settings.admin_addr, ([127, 0, 0, 1], 0).into());
        assert_eq!(settings.forwarding, ForwardSettings { max_events: 64, max_calls: 2 });
        assert_eq!((settings.max_connections, settings.max_in_flight), (1024, 512));
        assert_eq!(settings.payments_svc_timeout, Duration::from_secs(5));
        assert_eq!(settings.webhook_secrets.len(), 1);
    }

    #[test]
    fn several_comma_separated_secrets_are_all_kept() {
        let settings =
            Settings::try_from(cli(&["--stripe-webhook-secret", "whsec_a, whsec_b"])).expect("valid");
        assert_eq!(settings.webhook_secrets.len(), 2);
    }

    #[test]
    fn missing_secret_is_refused_naming_the_variable() {
        let error = Settings::try_from(cli(&[])).expect_err("refused");
        assert!(error.to_string().contains("STRIPE_WEBHOOK_SECRET"), "{error}");
    }

    #[test]
    fn something_that_is_not_a_signing_secret_is_refused() {
        let error =
            Settings::try_from(cli(&["--stripe-webhook-secret", "whsec_a,sk_live_x"])).expect_err("refused");
        assert!(error.to_string().contains("entry 2"), "{error}");
        assert!(!error.to_string().contains("sk_live_x"), "{error}");
    }

    #[test]
    fn a_token_with_white_space_around_it_is_refused_as_payments_svc_refuses_it() {
        let token = format!("{} ", "t".repeat(token::MIN_TOKEN_LEN));
        let args = ["--stripe-webhook-secret", "whsec_a", "--payments-grpc-token", &token];
        let error = Settings::try_from(cli(&args)).expect_err("refused");
        assert!(matches!(error, ConfigError::Token(TokenError::SurroundingWhitespace)), "{error}");
        assert!(!error.to_string().contains("tttt"), "{error}");
    }

    #[test]
    fn zero_tolerance_is_refused() {
        let args = ["--stripe-webhook-secret", "whsec_a", "--stripe-webhook-tolerance-secs", "0"];
        let error = Settings::try_from(cli(&args)).expect_err("refused");
        assert!(error.to_string().contains("STRIPE_WEBHOOK_TOLERANCE_SECS"), "{error}");
    }
}
