//! webhook-gateway settings: command-line flags with environment fallbacks.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};

use crate::signature::WebhookSecret;

/// Receives Stripe webhooks, verifies their signatures and forwards them to
/// payments-svc; also answers the frontend's purchase verification.
#[derive(Clone, Parser)]
#[command(name = "webhook-gateway", version, about)]
pub struct Cli {
    /// Webhook signing secret(s) from the Stripe dashboard or `stripe listen`
    /// (`whsec_...`). Required. Several, comma-separated, while a secret is
    /// being rolled: a signature from any of them is accepted.
    #[arg(long, env = "STRIPE_WEBHOOK_SECRET", hide_env_values = true, value_delimiter = ',')]
    pub stripe_webhook_secret: Vec<String>,

    /// Address the HTTP server listens on.
    #[arg(long, env = "GATEWAY_ADDR", default_value = "127.0.0.1:3000")]
    pub gateway_addr: SocketAddr,

    /// Where payments-svc's gRPC server is.
    #[arg(long, env = "PAYMENTS_SVC_URL", default_value = "http://127.0.0.1:50051")]
    pub payments_svc_url: String,

    /// How far, in seconds, a signature's timestamp may be from now, either
    /// way, before the webhook is refused as a replay. Must be above 0.
    #[arg(long, env = "STRIPE_WEBHOOK_TOLERANCE_SECS", default_value_t = 300)]
    pub stripe_webhook_tolerance_secs: u64,

    /// Largest request body accepted, in bytes; larger ones get 413.
    /// Stripe's events are a few KiB.
    #[arg(long, env = "GATEWAY_MAX_BODY_BYTES", default_value_t = 1024 * 1024)]
    pub max_body_bytes: usize,

    /// Deadline for each call to payments-svc, in milliseconds. Well under
    /// the time Stripe waits for an answer, so that a slow database turns
    /// into a 503 (and a redelivery) rather than a Stripe-side timeout.
    #[arg(long, env = "PAYMENTS_SVC_TIMEOUT_MS", default_value_t = 5_000)]
    pub payments_svc_timeout_ms: u64,

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
            .field("payments_svc_url", &self.payments_svc_url)
            .field("stripe_webhook_tolerance_secs", &self.stripe_webhook_tolerance_secs)
            .field("max_body_bytes", &self.max_body_bytes)
            .field("payments_svc_timeout_ms", &self.payments_svc_timeout_ms)
            .field("success_page", &self.success_page)
            .field("log_format", &self.log_format)
            .finish()
    }
}

/// How log lines are written to stdout.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Validated settings the gateway runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub webhook_secrets: Vec<WebhookSecret>,
    pub addr: SocketAddr,
    pub payments_svc_url: String,
    pub tolerance_secs: u64,
    pub max_body_bytes: usize,
    pub payments_svc_timeout: Duration,
    pub success_page: bool,
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
    #[error("PAYMENTS_SVC_TIMEOUT_MS must be above 0")]
    ZeroTimeout,
}

impl TryFrom<Cli> for Settings {
    type Error = ConfigError;

    fn try_from(cli: Cli) -> Result<Self, ConfigError> {
        let secrets: Vec<_> = cli.stripe_webhook_secret.iter().filter(|s| !s.trim().is_empty()).collect();
        if secrets.is_empty() {
            return Err(ConfigError::MissingSecret);
        }
        let webhook_secrets = secrets
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                WebhookSecret::new(s.trim())
                    .map_err(|reason| ConfigError::InvalidSecret { position: i + 1, reason })
            })
            .collect::<Result<_, _>>()?;
        if cli.stripe_webhook_tolerance_secs == 0 {
            return Err(ConfigError::ZeroTolerance);
        }
        if cli.max_body_bytes == 0 {
            return Err(ConfigError::ZeroBodyLimit);
        }
        if cli.payments_svc_timeout_ms == 0 {
            return Err(ConfigError::ZeroTimeout);
        }
        Ok(Self {
            webhook_secrets,
            addr: cli.gateway_addr,
            payments_svc_url: cli.payments_svc_url,
            tolerance_secs: cli.stripe_webhook_tolerance_secs,
            max_body_bytes: cli.max_body_bytes,
            payments_svc_timeout: Duration::from_millis(cli.payments_svc_timeout_ms),
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
    fn zero_tolerance_is_refused() {
        let args = ["--stripe-webhook-secret", "whsec_a", "--stripe-webhook-tolerance-secs", "0"];
        let error = Settings::try_from(cli(&args)).expect_err("refused");
        assert!(error.to_string().contains("STRIPE_WEBHOOK_TOLERANCE_SECS"), "{error}");
    }
}
