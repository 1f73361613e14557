//! A sender that behaves like Stripe's webhook delivery: every event is
//! posted, signed at the moment of each attempt, until it gets a 2xx; other
//! answers and connection failures are retried with exponential backoff.
//! Bounded in attempts, so a test or benchmark always ends.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hyper::StatusCode;
use tokio::sync::Semaphore;
use webhook_gateway::signature::WebhookSecret;

use crate::{HttpClient, signature_now};

/// How [`deliver_all`] retries.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub first_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    /// Stripe's schedule compressed into seconds, for tests.
    fn default() -> Self {
        Self {
            max_attempts: 60,
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_millis(500),
        }
    }
}

/// What happened to one event.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Every answer, in order: an HTTP status, or `None` for a connection
    /// failure (reset, refused).
    pub answers: Vec<Option<StatusCode>>,
}

impl Delivery {
    pub fn delivered(&self) -> bool {
        self.answers.last().copied().flatten().is_some_and(|status| status.is_success())
    }
}

/// Delivers every event with at most `concurrency` in flight, each retried
/// per `policy`. Answers come back in the events' order.
pub async fn deliver_all(
    url: &str,
    secret: &WebhookSecret,
    events: Vec<Bytes>,
    concurrency: usize,
    policy: RetryPolicy,
) -> Vec<Delivery> {
    let http = HttpClient::default();
    let slots = Arc::new(Semaphore::new(concurrency));
    let mut tasks = tokio::task::JoinSet::new();
    for (index, event) in events.into_iter().enumerate() {
        let (http, url, secret, policy, slots) =
            (http.clone(), url.to_owned(), secret.clone(), policy.clone(), Arc::clone(&slots));
        tasks.spawn(async move {
            let _slot = slots.acquire_owned().await.expect("semaphore open");
            (index, deliver_one(&http, &url, &secret, event, &policy).await)
        });
    }
    let mut deliveries = tasks.join_all().await;
    deliveries.sort_by_key(|(index, _)| *index);
    deliveries.into_iter().map(|(_, delivery)| delivery).collect()
}

async fn deliver_one(
    http: &HttpClient,
    url: &str,
    secret: &WebhookSecret,
    event: Bytes,
    policy: &RetryPolicy,
) -> Delivery {
    let mut answers = Vec::new();
    let mut backoff = policy.first_backoff;
    for _ in 0..policy.max_attempts {
        let signature = signature_now(secret, &event);
        let status =
            http.post_webhook(url, event.clone(), Some(&signature)).await.ok().map(|answer| answer.status);
        answers.push(status);
        if status.is_some_and(|s| s.is_success()) {
            break;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(policy.max_backoff);
    }
    Delivery { answers }
}
