//! What the end-to-end tests and the hand tools in this crate share: the
//! repository's Stripe fixtures, fresh ids for them, Stripe-style signing, a
//! small HTTP client, the services as processes for the measuring tools,
//! and a stand-in for Stripe's API with an account to serve.

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Method, Request, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use webhook_gateway::signature::{WebhookSecret, sign};

pub mod collector;
pub mod fake_stripe;
pub mod sender;
pub mod services;
pub mod stripe_account;

/// Where the copies of the shared Stripe fixtures live.
pub fn fixtures_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("fixtures/stripe")
}

/// The exact bytes of a fixture file.
pub fn fixture(name: &str) -> anyhow::Result<Bytes> {
    let path = fixtures_dir().join(name);
    let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    Ok(Bytes::from(bytes))
}

/// The same event (or Checkout Session object) with its ids made unique by
/// `suffix`: the event id, and the checkout session's and payment intent's.
/// Only those id strings change; every other byte stays as Stripe sent it.
/// An event and its session object given the same suffix still agree.
pub fn with_fresh_ids(body: &[u8], suffix: &str) -> anyhow::Result<Bytes> {
    let parsed: serde_json::Value = serde_json::from_slice(body).context("fixture is not JSON")?;
    let is_event = parsed["object"] == "event";
    let object = if is_event { &parsed["data"]["object"] } else { &parsed };
    let ids = [
        parsed["id"].as_str().filter(|_| is_event),
        object["id"].as_str().filter(|id| id.starts_with("cs_")),
        object["payment_intent"].as_str(),
    ];
    let mut text = String::from_utf8(body.to_vec()).context("fixture is not UTF-8")?;
    for id in ids.into_iter().flatten() {
        text = text.replace(&format!("\"{id}\""), &format!("\"{id}{suffix}\""));
    }
    Ok(Bytes::from(text))
}

/// The paid `checkout.session.completed` fixture as the `n`th of a stream of
/// distinct purchases: fresh event, session and payment intent ids, and a
/// buyer of its own.
pub fn unique_paid_event(n: usize) -> anyhow::Result<Bytes> {
    const FIXTURE_USER: &str = "76579e2b-1d72-48ed-99f9-d14b4496249a";
    let paid = fixture("checkout_session_completed_paid.json")?;
    let fresh = with_fresh_ids(&paid, &format!("_n{n}"))?;
    replace_once(&fresh, &format!("\"userId\": \"{FIXTURE_USER}\""), &format!("\"userId\": \"user-{n}\""))
}

/// A variant of a fixture with one piece of text changed, for events the
/// fixture set does not have (the same session's payment failing, say).
/// Fails unless `from` occurs exactly once, so a fixture change cannot make
/// the variant silently wrong.
pub fn replace_once(body: &[u8], from: &str, to: &str) -> anyhow::Result<Bytes> {
    let text = std::str::from_utf8(body).context("fixture is not UTF-8")?;
    anyhow::ensure!(text.matches(from).count() == 1, "{from:?} does not occur exactly once");
    Ok(Bytes::from(text.replacen(from, to, 1)))
}

/// The same event created at `created` (Unix seconds) instead.
pub fn with_created(body: &[u8], created: i64) -> anyhow::Result<Bytes> {
    let parsed: serde_json::Value = serde_json::from_slice(body).context("fixture is not JSON")?;
    let old = parsed["created"].as_i64().context("no created")?;
    replace_once(body, &format!("\"created\": {old}"), &format!("\"created\": {created}"))
}

/// The value of `series` (a metric name with its labels, as printed) in
/// Prometheus text, if present.
pub fn metric_value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
}

/// Seconds since the Unix epoch, as Stripe puts in `t=`.
pub fn unix_now() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX)
}

/// The `Stripe-Signature` header Stripe would send for `body` right now.
pub fn signature_now(secret: &WebhookSecret, body: &[u8]) -> String {
    sign(secret, unix_now(), body)
}

/// A plain HTTP/1.1 client with keep-alive.
#[derive(Debug, Clone)]
pub struct HttpClient {
    inner: Client<HttpConnector, Full<Bytes>>,
}

/// A response, fully read.
#[derive(Debug, Clone)]
pub struct HttpAnswer {
    pub status: StatusCode,
    pub headers: hyper::HeaderMap,
    pub body: Bytes,
}

impl HttpAnswer {
    /// The body as JSON (`Null` when it is not JSON).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

impl Default for HttpClient {
    fn default() -> Self {
        Self { inner: Client::builder(TokioExecutor::new()).build_http() }
    }
}

impl HttpClient {
    /// Sends one request; `headers` are `(name, value)` pairs.
    pub async fn send(
        &self,
        method: Method,
        url: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> anyhow::Result<HttpAnswer> {
        let mut request = Request::builder().method(method).uri(url);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self.inner.request(request.body(Full::new(body))?).await?;
        let (parts, body) = response.into_parts();
        Ok(HttpAnswer {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await?.to_bytes(),
        })
    }

    /// Posts a webhook the way Stripe does, with `signature` as the
    /// `Stripe-Signature` header when given.
    pub async fn post_webhook(
        &self,
        url: &str,
        body: Bytes,
        signature: Option<&str>,
    ) -> anyhow::Result<HttpAnswer> {
        let mut headers = vec![
            ("content-type", "application/json; charset=utf-8"),
            ("user-agent", "Stripe/1.0 (+https://stripe.com/docs/webhooks)"),
        ];
        if let Some(signature) = signature {
            headers.push(("stripe-signature", signature));
        }
        self.send(Method::POST, url, &headers, body).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_and_its_session_object_get_the_same_fresh_ids() -> anyhow::Result<()> {
        let event = with_fresh_ids(&fixture("checkout_session_completed_paid.json")?, "_s")?;
        let session = with_fresh_ids(&fixture("checkout_session.object.json")?, "_s")?;
        let event: serde_json::Value = serde_json::from_slice(&event)?;
        let session: serde_json::Value = serde_json::from_slice(&session)?;
        assert_eq!(event["data"]["object"]["id"], session["id"]);
        assert_eq!(event["data"]["object"]["payment_intent"], session["payment_intent"]);
        Ok(())
    }

    #[test]
    fn fresh_ids_change_only_the_ids() -> anyhow::Result<()> {
        let original = fixture("checkout_session_completed_paid.json")?;
        let fresh = with_fresh_ids(&original, "_x1")?;
        let before: serde_json::Value = serde_json::from_slice(&original)?;
        let after: serde_json::Value = serde_json::from_slice(&fresh)?;
        assert_eq!(after["id"], format!("{}_x1", before["id"].as_str().unwrap_or_default()));
        let session = &after["data"]["object"];
        assert!(session["id"].as_str().unwrap_or_default().ends_with("_x1"));
        assert!(session["payment_intent"].as_str().unwrap_or_default().ends_with("_x1"));
        assert_eq!(session["metadata"], before["data"]["object"]["metadata"]);
        assert_eq!(fresh.len(), original.len() + 3 * "_x1".len());
        Ok(())
    }
}
