//! The groups of flags the service and the operator commands share: each
//! command takes only the groups it needs.

use std::fmt;
use std::time::Duration;

use clap::ArgAction;
use clap::builder::{PossibleValuesParser, TypedValueParser};
use payments_domain::reversals::DisputeAccess;
use payments_domain::rules::Policy;

use super::ConfigError;
use crate::stripe::{SecretKey, StripeSettings};

/// Where the data is: the one flag every operator command shares with the
/// service.
#[derive(Clone, clap::Args)]
pub struct DatabaseArgs {
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
}

/// How events are decided: shared by the service and the commands that
/// apply events (replay, reconcile) or show what they mean.
#[derive(Debug, Clone, clap::Args)]
pub struct PolicyArgs {
    /// Which Stripe mode's events to fulfil: `true` for live mode
    /// (production), `false` for test mode. Events of the other mode are
    /// refused and stored as failed, so a test payment can never grant a
    /// course in production.
    #[arg(long, env = "STRIPE_LIVEMODE", default_value_t = false, action = ArgAction::Set)]
    pub stripe_livemode: bool,

    /// Whether a buyer keeps the course while a chargeback is open:
    /// `suspend` (the default) takes access away until the dispute is won,
    /// `keep` leaves it. A lost dispute revokes access either way.
    #[arg(long, env = "DISPUTE_ACCESS", value_parser = dispute_access(), default_value = "suspend")]
    pub dispute_access: DisputeAccess,
}

impl PolicyArgs {
    pub fn policy(&self) -> Policy {
        Policy { livemode: self.stripe_livemode, dispute_access: self.dispute_access }
    }
}

/// Stripe's API: shared by the service and the commands that call it.
#[derive(Clone, clap::Args)]
pub struct StripeArgs {
    /// Stripe secret API key (`sk_...`, or a restricted `rk_...` key that can
    /// read Checkout Sessions and events). Optional: with it, verify asks
    /// Stripe about sessions not yet recorded as paid and fulfils them, and
    /// `reconcile` works; without it, verify answers from the database only.
    /// Its mode must match STRIPE_LIVEMODE.
    #[arg(long, env = "STRIPE_SECRET_KEY", hide_env_values = true)]
    pub stripe_secret_key: Option<String>,

    /// Stripe's API base URL; tests point it at a local server.
    #[arg(long, env = "STRIPE_API_BASE", default_value = "https://api.stripe.com")]
    pub stripe_api_base: String,

    /// Time budget of one Stripe call, retries included, in milliseconds.
    /// Keep it below the gateway's PAYMENTS_SVC_TIMEOUT_MS, so that a slow
    /// Stripe gives the buyer an unconfirmed answer rather than an error.
    #[arg(long, env = "STRIPE_API_TIMEOUT_MS", default_value_t = 3_000)]
    pub stripe_api_timeout_ms: u64,

    /// Most requests a second this process sends to Stripe's API, retries
    /// included: a small share of the account's own limit, which the rest of
    /// the company shares, so that strangers asking verify about sessions can
    /// never spend it. Verify beyond it answers from the database, marked
    /// unconfirmed; refunds and reconcile wait their turn.
    #[arg(long, env = "STRIPE_API_MAX_RPS", default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    pub stripe_api_max_rps: u32,
}

/// How long stored data is kept: shared by the service and the prunes.
#[derive(Debug, Clone, clap::Args)]
pub struct RetentionArgs {
    /// Days the purchase change feed keeps each change. A consumer asking for
    /// changes after an older cursor is told to resync from ListPurchases.
    #[arg(long, env = "PURCHASE_CHANGES_RETENTION_DAYS", default_value_t = 30, value_parser = clap::value_parser!(u16).range(1..))]
    pub changes_retention_days: u16,

    /// Days the payload of a processed or ignored webhook event is kept; then
    /// it is dropped and the row (id, outcome) stays, so a late redelivery
    /// is still a duplicate. Failed events are kept whole until resolved. At
    /// least 30: Stripe lets an account resend events up to 30 days old.
    #[arg(long, env = "WEBHOOK_EVENTS_RETENTION_DAYS", default_value_t = 90, value_parser = clap::value_parser!(u16).range(30..))]
    pub events_retention_days: u16,
}

impl RetentionArgs {
    /// How long the change feed keeps each change.
    pub fn changes(&self) -> Duration {
        days(self.changes_retention_days)
    }

    /// How long settled events keep their payloads.
    pub fn events(&self) -> Duration {
        days(self.events_retention_days)
    }
}

fn days(days: u16) -> Duration {
    Duration::from_secs(u64::from(days) * 86_400)
}

impl fmt::Debug for DatabaseArgs {
    /// The URL may carry a password, so it is never printed.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DatabaseArgs").field("database_url", &"[redacted]").finish()
    }
}

impl fmt::Debug for StripeArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StripeArgs")
            .field("stripe_secret_key", &self.stripe_secret_key.as_ref().map(|_| "[redacted]"))
            .field("stripe_api_base", &self.stripe_api_base)
            .finish_non_exhaustive()
    }
}

impl StripeArgs {
    /// Stripe's API settings, when a key is configured. Refuses a key that
    /// is not shaped like one, or whose mode contradicts `livemode`
    /// (STRIPE_LIVEMODE).
    pub fn settings(&self, livemode: bool) -> Result<Option<StripeSettings>, ConfigError> {
        let Some(key) = self.stripe_secret_key.as_deref().map(str::trim).filter(|k| !k.is_empty()) else {
            return Ok(None);
        };
        let key = SecretKey::new(key).map_err(ConfigError::InvalidStripeKey)?;
        if key.is_live() != livemode {
            let key_mode = if key.is_live() { "live-mode" } else { "test-mode" };
            return Err(ConfigError::StripeModeMismatch { key_mode, livemode });
        }
        if self.stripe_api_timeout_ms == 0 {
            return Err(ConfigError::ZeroStripeTimeout);
        }
        Ok(Some(StripeSettings {
            key,
            api_base: self.stripe_api_base.clone(),
            budget: Duration::from_millis(self.stripe_api_timeout_ms),
            max_rps: self.stripe_api_max_rps,
        }))
    }
}

/// DISPUTE_ACCESS's values: the domain's names for [`DisputeAccess`].
fn dispute_access() -> impl TypedValueParser<Value = DisputeAccess> {
    PossibleValuesParser::new(DisputeAccess::ALL.iter().map(|access| access.as_str()))
        .try_map(|name| name.parse::<DisputeAccess>())
}
