//! The few calls payments-svc makes to Stripe's API: retrieving a Checkout
//! Session (for the verify path), listing recent events (for the
//! missed-webhook sweep), listing sessions, refunds and disputes (for
//! `sync`) and refunding a duplicate payment.
//!
//! Every call has a total time budget. Within it, connection failures,
//! timeouts, 429, 409 and 5xx are retried with exponential backoff and
//! jitter, as Stripe's own libraries do; `Stripe-Should-Retry` overrides that
//! judgement either way, and a short `Retry-After` is honoured. Every
//! request, retries included, also takes a turn within STRIPE_API_MAX_RPS.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use payments_proto::stripe::{self, ListPage, ParseError};
use payments_proto::v1::{CheckoutSession, Refund, StripeEvent};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Client, StatusCode, Url};
use serde::Deserialize;
use service_kit::rate::TokenBucket;
use service_kit::traces;
use tracing::Instrument as _;
use tracing::field::Empty;

/// At most this many attempts per call, budget permitting.
const MAX_ATTEMPTS: u32 = 3;
/// First backoff; doubled per retry.
const INITIAL_BACKOFF: Duration = Duration::from_millis(200);
/// A `Retry-After` longer than this is not waited for within one call.
const MAX_RETRY_AFTER: Duration = Duration::from_secs(2);

/// A Stripe secret (`sk_...`) or restricted (`rk_...`) API key. Never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// Accepts only values shaped like a Stripe API key, so a publishable
    /// key or a webhook secret set by mistake stops start-up.
    pub fn new(value: impl Into<String>) -> Result<Self, &'static str> {
        let value = value.into();
        let shaped = ["sk_test_", "sk_live_", "rk_test_", "rk_live_"]
            .iter()
            .any(|prefix| value.len() > prefix.len() && value.starts_with(prefix));
        if shaped {
            Ok(Self(value))
        } else {
            Err("a Stripe secret key starts with sk_ or rk_, then live_ or test_")
        }
    }

    /// Whether the key belongs to live mode.
    pub fn is_live(&self) -> bool {
        self.0.starts_with("sk_live_") || self.0.starts_with("rk_live_")
    }
}

impl fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretKey([redacted])")
    }
}

/// Why a call to Stripe did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum StripeError {
    /// Stripe says the object does not exist (404 `resource_missing`).
    #[error("not found on Stripe")]
    NotFound,
    /// Stripe refused the request; retrying will not help.
    #[error("Stripe answered {status}: {kind} {code}: {message}")]
    Api { status: u16, kind: String, code: String, message: String },
    /// No answer within the budget: network down, timeouts, 429 or 5xx.
    #[error("Stripe unavailable: {0}")]
    Unavailable(String),
    /// Stripe answered something this client cannot read.
    #[error("unreadable answer from Stripe: {0}")]
    Malformed(#[from] ParseError),
    /// Not asked: this process's STRIPE_API_MAX_RPS is spent for now.
    #[error("not asked: STRIPE_API_MAX_RPS is spent")]
    OverBudget,
}

/// One page of `GET /v1/events`, newest first.
#[derive(Debug)]
pub struct EventsPage {
    pub events: Vec<StripeEvent>,
    pub has_more: bool,
}

/// The lists `payments-svc sync` reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StripeList {
    CheckoutSessions,
    Refunds,
    Disputes,
}

impl StripeList {
    /// In the order a sync reads them: refunds and disputes are facts that
    /// wait for their purchase, so any order ends alike.
    pub const ALL: [Self; 3] = [Self::CheckoutSessions, Self::Refunds, Self::Disputes];

    pub fn path(self) -> &'static str {
        match self {
            Self::CheckoutSessions => "/v1/checkout/sessions",
            Self::Refunds => "/v1/refunds",
            Self::Disputes => "/v1/disputes",
        }
    }

    /// The name in checkpoints, progress and summaries.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CheckoutSessions => "checkout_sessions",
            Self::Refunds => "refunds",
            Self::Disputes => "disputes",
        }
    }
}

/// Objects created within these Unix seconds, both ends included
/// (`created[gte]`, `created[lte]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub created_gte: i64,
    pub created_lte: i64,
}

/// How to reach Stripe's API, validated from the configuration.
#[derive(Debug, Clone)]
pub struct StripeSettings {
    pub key: SecretKey,
    /// `https://api.stripe.com` in production; tests point it at a local
    /// server.
    pub api_base: String,
    /// Bounds each call, retries included.
    pub budget: Duration,
    /// Requests a second, retries included (STRIPE_API_MAX_RPS).
    pub max_rps: u32,
}

/// A client for Stripe's API.
#[derive(Debug, Clone)]
pub struct StripeApi {
    http: Client,
    base: String,
    auth: HeaderValue,
    budget: Duration,
    /// Every request, retries included, takes a token; shared by clones.
    rate: Arc<TokenBucket>,
}

/// Whether a call that finds the rate spent waits for its turn or gives up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Turn {
    /// Verify: a stranger may be behind it; the database answers instead.
    GiveUp,
    /// Refunds and reconcile: our own work, which must get done.
    Wait,
}

impl StripeApi {
    /// A client with its own connection pool.
    pub fn new(settings: &StripeSettings) -> anyhow::Result<Self> {
        let StripeSettings { key, api_base: base, budget, max_rps } = settings;
        let budget = *budget;
        let rate = Arc::new(TokenBucket::new(f64::from(*max_rps), f64::from(*max_rps)));
        // reqwest is built without a bundled crypto provider; use ring's.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", key.0))?;
        auth.set_sensitive(true);
        let http =
            Client::builder().connect_timeout(budget).pool_idle_timeout(Duration::from_secs(60)).build()?;
        Ok(Self { http, base: base.trim_end_matches('/').to_owned(), auth, budget, rate })
    }

    /// The time one call may take, retries included.
    pub fn budget(&self) -> Duration {
        self.budget
    }

    /// `GET /v1/checkout/sessions/{id}`; [`StripeError::OverBudget`] at
    /// once when STRIPE_API_MAX_RPS is spent.
    pub async fn checkout_session(&self, id: &str) -> Result<CheckoutSession, StripeError> {
        let body = self.get(&format!("/v1/checkout/sessions/{id}"), &[], Turn::GiveUp).await?;
        Ok(stripe::parse_checkout_session(&body)?)
    }

    /// `GET /v1/events` for `checkout.session.*` events created at or after
    /// `created_gte` (Unix seconds), older than `starting_after` when given.
    pub async fn checkout_events(
        &self,
        created_gte: i64,
        starting_after: Option<&str>,
        limit: u8,
    ) -> Result<EventsPage, StripeError> {
        let mut query = vec![
            ("type", "checkout.session.*".to_owned()),
            ("created[gte]", created_gte.to_string()),
            ("limit", limit.to_string()),
        ];
        if let Some(after) = starting_after {
            query.push(("starting_after", after.to_owned()));
        }
        let body = self.get("/v1/events", &query, Turn::Wait).await?;
        let list = stripe::parse_list(&body)?;
        let events = list.data.into_iter().map(stripe::parse_event).collect::<Result<_, _>>()?;
        Ok(EventsPage { events, has_more: list.has_more })
    }

    /// One page of `list` (newest first) within `window`, after
    /// `starting_after` when given, `limit` objects at most; each listed
    /// object's JSON as sent. Waits for its turns within STRIPE_API_MAX_RPS.
    pub async fn list_page(
        &self,
        list: StripeList,
        window: Window,
        starting_after: Option<&str>,
        limit: u8,
    ) -> Result<ListPage, StripeError> {
        let mut query = vec![
            ("created[gte]", window.created_gte.to_string()),
            ("created[lte]", window.created_lte.to_string()),
            ("limit", limit.to_string()),
        ];
        if list == StripeList::CheckoutSessions {
            // The intent's status tells a delayed payment still clearing
            // from one that failed; one request instead of one per session.
            query.push(("expand[]", "data.payment_intent".to_owned()));
        }
        if let Some(after) = starting_after {
            query.push(("starting_after", after.to_owned()));
        }
        let body = self.get(list.path(), &query, Turn::Wait).await?;
        Ok(stripe::parse_list(&body)?)
    }

    /// `POST /v1/refunds`: refunds `payment_intent_id` in full. Every
    /// attempt, retries included, carries `idempotency_key`, so Stripe makes
    /// one refund however often it is asked (within its 24 hours of keys).
    pub async fn refund_payment(
        &self,
        payment_intent_id: &str,
        idempotency_key: &str,
        checkout_session_id: &str,
    ) -> Result<Refund, StripeError> {
        let form = [
            ("payment_intent", payment_intent_id),
            ("reason", "duplicate"),
            ("metadata[checkout_session_id]", checkout_session_id),
            ("metadata[cause]", "course_already_owned"),
        ];
        let body = form_urlencoded::Serializer::new(String::new()).extend_pairs(form).finish();
        let key = HeaderValue::from_str(idempotency_key)
            .map_err(|_| StripeError::Unavailable("idempotency key is not a header value".into()))?;
        let url = self.url("/v1/refunds", &[])?;
        let answer = self
            .send("/v1/refunds", Turn::Wait, |remaining| {
                self.http
                    .post(url.clone())
                    .header(AUTHORIZATION, self.auth.clone())
                    .header("idempotency-key", key.clone())
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(body.clone())
                    .timeout(remaining)
            })
            .await?;
        Ok(stripe::parse_refund(&answer)?)
    }

    fn url(&self, path: &str, query: &[(&str, String)]) -> Result<Url, StripeError> {
        Url::parse_with_params(&format!("{}{path}", self.base), query)
            .map_err(|e| StripeError::Unavailable(format!("bad STRIPE_API_BASE: {e}")))
    }

    async fn get(&self, path: &str, query: &[(&str, String)], turn: Turn) -> Result<Bytes, StripeError> {
        let url = self.url(path, query)?;
        self.send(path, turn, |remaining| {
            self.http.get(url.clone()).header(AUTHORIZATION, self.auth.clone()).timeout(remaining)
        })
        .await
    }

    /// Sends the request `build` makes (given the time left) until it
    /// answers, retrying what Stripe says may be retried, within the budget.
    /// Each attempt takes its turn within STRIPE_API_MAX_RPS. Traced as a
    /// client span of whatever asked (verify, reconcile, a refund).
    async fn send(
        &self,
        path: &str,
        turn: Turn,
        build: impl Fn(Duration) -> reqwest::RequestBuilder,
    ) -> Result<Bytes, StripeError> {
        let span = tracing::info_span!(
            "Stripe API",
            otel.kind = "client",
            stripe.api_base = self.base.as_str(),
            url.path = path,
            http.response.status_code = Empty,
            otel.status_code = Empty,
            error = Empty,
        );
        let answer = self.attempts(path, turn, build).instrument(span.clone()).await;
        if let Err(error) = &answer {
            traces::record_error(&span, error);
        }
        answer
    }

    async fn attempts(
        &self,
        path: &str,
        turn: Turn,
        build: impl Fn(Duration) -> reqwest::RequestBuilder,
    ) -> Result<Bytes, StripeError> {
        let deadline = Instant::now() + self.budget;
        let mut attempt = 0;
        loop {
            attempt += 1;
            match turn {
                Turn::GiveUp if !self.rate.try_take() => return Err(StripeError::OverBudget),
                Turn::GiveUp => {}
                Turn::Wait => self.rate.take().await,
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            let request = build(remaining);
            let failure = match request.send().await {
                Ok(response) => {
                    let status = response.status();
                    tracing::Span::current().record("http.response.status_code", status.as_u16());
                    let headers = response.headers().clone();
                    let body = response.bytes().await;
                    match (status, body) {
                        (status, Ok(body)) if status.is_success() => return Ok(body),
                        (status, Ok(body)) if !should_retry(status, &headers) => {
                            return Err(api_error(status, &body));
                        }
                        (status, Ok(_)) => {
                            Retry { reason: format!("HTTP {status}"), after: retry_after(&headers) }
                        }
                        (_, Err(error)) => Retry { reason: error.to_string(), after: None },
                    }
                }
                Err(error) => Retry { reason: error.to_string(), after: None },
            };
            let wait = failure.after.unwrap_or_else(|| backoff(attempt));
            if attempt >= MAX_ATTEMPTS || Instant::now() + wait >= deadline {
                return Err(StripeError::Unavailable(format!("{} after {attempt} attempts", failure.reason)));
            }
            tracing::info!(path, attempt, reason = %failure.reason, wait_ms = wait.as_millis() as u64, "retrying Stripe");
            tokio::time::sleep(wait).await;
        }
    }
}

struct Retry {
    reason: String,
    after: Option<Duration>,
}

/// Stripe's rule: its `Stripe-Should-Retry` header when present, otherwise
/// 409 (lock contention), 429 and 5xx.
fn should_retry(status: StatusCode, headers: &HeaderMap) -> bool {
    match headers.get("stripe-should-retry").and_then(|v| v.to_str().ok()) {
        Some("true") => true,
        Some("false") => false,
        _ => {
            status == StatusCode::CONFLICT
                || status == StatusCode::TOO_MANY_REQUESTS
                || status.is_server_error()
        }
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let seconds: u64 = headers.get(RETRY_AFTER)?.to_str().ok()?.trim().parse().ok()?;
    Some(Duration::from_secs(seconds)).filter(|after| *after <= MAX_RETRY_AFTER)
}

/// 200 ms, 400 ms, ... with up to 25 % jitter so that many callers do not
/// retry in step.
fn backoff(attempt: u32) -> Duration {
    let base = INITIAL_BACKOFF.saturating_mul(1 << attempt.saturating_sub(1).min(8));
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
}

fn api_error(status: StatusCode, body: &[u8]) -> StripeError {
    #[derive(Deserialize, Default)]
    struct Envelope {
        #[serde(default)]
        error: Body,
    }
    #[derive(Deserialize, Default)]
    struct Body {
        #[serde(rename = "type", default)]
        kind: String,
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    let error = serde_json::from_slice::<Envelope>(body).unwrap_or_default().error;
    if status == StatusCode::NOT_FOUND {
        return StripeError::NotFound;
    }
    StripeError::Api { status: status.as_u16(), kind: error.kind, code: error.code, message: error.message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_must_look_like_secret_keys_and_never_print() {
        assert!(SecretKey::new("pk_live_123").is_err());
        assert!(SecretKey::new("whsec_123").is_err());
        assert!(SecretKey::new("sk_test_").is_err());
        let key = SecretKey::new("sk_live_do_not_print").expect("valid");
        assert!(key.is_live());
        assert!(!format!("{key:?}").contains("do_not_print"));
        assert!(!SecretKey::new("rk_test_1").expect("valid").is_live());
    }

    #[test]
    fn retry_follows_stripe_conventions() {
        let none = HeaderMap::new();
        for status in [409, 429, 500, 502, 503] {
            assert!(should_retry(StatusCode::from_u16(status).expect("status"), &none), "{status}");
        }
        for status in [400, 401, 402, 403, 404] {
            assert!(!should_retry(StatusCode::from_u16(status).expect("status"), &none), "{status}");
        }
        let mut never = HeaderMap::new();
        never.insert("stripe-should-retry", HeaderValue::from_static("false"));
        assert!(!should_retry(StatusCode::SERVICE_UNAVAILABLE, &never));
        let mut always = HeaderMap::new();
        always.insert("stripe-should-retry", HeaderValue::from_static("true"));
        assert!(should_retry(StatusCode::BAD_REQUEST, &always));
    }

    #[test]
    fn backoff_doubles_with_bounded_jitter() {
        for attempt in 1..=3 {
            let base = INITIAL_BACKOFF * (1 << (attempt - 1));
            let wait = backoff(attempt);
            assert!(wait >= base && wait <= base + base / 4, "attempt {attempt}: {wait:?}");
        }
    }

    #[test]
    fn stripe_error_json_becomes_a_typed_error() {
        let body =
            br#"{"error":{"type":"invalid_request_error","code":"parameter_invalid","message":"bad"}}"#;
        match api_error(StatusCode::BAD_REQUEST, body) {
            StripeError::Api { status, kind, code, message } => {
                assert_eq!(
                    (status, kind.as_str(), code.as_str(), message.as_str()),
                    (400, "invalid_request_error", "parameter_invalid", "bad")
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(api_error(StatusCode::NOT_FOUND, b"{}"), StripeError::NotFound));
        assert!(matches!(
            api_error(StatusCode::UNAUTHORIZED, b"not json"),
            StripeError::Api { status: 401, .. }
        ));
    }
}
