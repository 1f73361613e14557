//! `POST /api/payments/webhook`: Stripe's events, verified then forwarded.

use std::net::IpAddr;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use payments_proto::stripe::{self, EventSummary};
use payments_proto::v1::{Outcome, StripeEvent};
use serde::Serialize;
use service_kit::traces;
use tracing::field::Empty;
use tracing::{Instrument as _, Span};

use crate::error::ApiError;
use crate::http::{HttpResponse, declared_length, json, read_body_within};
use crate::metrics::WebhookLabels;
use crate::payments;
use crate::state::AppState;

const SIGNATURE_HEADER: &str = "stripe-signature";

/// The 200 body: tells Stripe's dashboard (and whoever reads it) what
/// became of the event.
#[derive(Debug, Serialize)]
struct Acknowledgement<'a> {
    received: bool,
    outcome: &'static str,
    #[serde(skip_serializing_if = "str::is_empty")]
    detail: &'a str,
}

/// Handles one delivery and logs one line about it, whatever the result;
/// traced (when [`traces::start_trace`] picks it) as the delivery's server
/// span, which the rest of its trace (the gRPC call, payments-svc's
/// handling) descends from.
pub async fn receive(
    state: &AppState,
    peer: IpAddr,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    if !traces::start_trace() {
        return receive_traced(state, peer, request).await;
    }
    let span = tracing::info_span!(
        "POST /api/payments/webhook",
        otel.kind = "server",
        http.request.method = "POST",
        http.route = "/api/payments/webhook",
        client.address = %peer,
        stripe.event.id = Empty,
        stripe.event.type = Empty,
        stripe.checkout_session.id = Empty,
        outcome = Empty,
        http.response.status_code = Empty,
        otel.status_code = Empty,
    );
    receive_traced(state, peer, request).instrument(span).await
}

async fn receive_traced(
    state: &AppState,
    peer: IpAddr,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let started = Instant::now();
    let mut seen = Seen::of_request(&request);
    let result = verify_and_forward(state, request, started, &mut seen).await;
    let elapsed = started.elapsed().as_secs_f64();
    // Whole microseconds: more digits are noise, and a float's full
    // expansion (5.5037009999999995) is unreadable in a log line.
    let latency_ms = (elapsed * 1_000_000.0).round() / 1000.0;
    state.metrics.webhook_seconds.observe(elapsed);
    let labels = match &result {
        Ok((outcome, _)) => WebhookLabels { outcome, reason: "" },
        Err(error) => WebhookLabels { outcome: "rejected", reason: error.code() },
    };
    state.metrics.webhooks.get_or_create(&labels).inc();
    record_answer(&result);
    let (event_id, event_type, session_id) =
        (seen.event_id.as_deref(), seen.event_type.as_deref(), seen.session_id.as_deref());
    match &result {
        Ok((outcome, _)) => {
            tracing::info!(event_id, event_type, session_id, outcome, latency_ms, "webhook handled")
        }
        // From a stranger as far as anyone knows: who and how much, never
        // the secret or the signature itself. A burst of these is a wrong
        // secret, someone probing, or someone holding connections open: the
        // metric counts each, the log keeps a few a second.
        Err(error @ (ApiError::Signature(_) | ApiError::BodyStalled)) => {
            let message = match error {
                ApiError::BodyStalled => {
                    "webhook body stopped arriving; rejected before its signature could be checked"
                }
                _ => "webhook signature rejected",
            };
            if let Some(suppressed) = state.stranger_warnings.admit() {
                tracing::warn!(
                    outcome = "rejected",
                    reason = error.code(),
                    %peer,
                    body_bytes = seen.declared_bytes,
                    signature_header_bytes = seen.signature_header_bytes,
                    latency_ms,
                    suppressed,
                    "{message}"
                )
            }
        }
        Err(error) => tracing::warn!(
            event_id,
            event_type,
            session_id,
            outcome = "rejected",
            reason = error.code(),
            error = %error,
            latency_ms,
            "webhook not accepted"
        ),
    }
    result.map(|(_, response)| response)
}

/// The delivery's answer, on its span: an answer other than 200 is an
/// error in the trace.
fn record_answer(result: &Result<(&'static str, HttpResponse), ApiError>) {
    let span = Span::current();
    match result {
        Ok((outcome, response)) => {
            span.record("outcome", *outcome);
            span.record("http.response.status_code", response.status().as_u16());
        }
        Err(error) => {
            span.record("outcome", "rejected");
            span.record("http.response.status_code", error.status().as_u16());
            span.record("otel.status_code", "ERROR");
        }
    }
}

/// What is known about a delivery so far, for its log line.
#[derive(Debug, Default)]
struct Seen {
    /// The declared `Content-Length`, if any.
    declared_bytes: Option<u64>,
    /// The length of the `Stripe-Signature` header, if any.
    signature_header_bytes: Option<usize>,
    event_id: Option<String>,
    event_type: Option<String>,
    session_id: Option<String>,
}

impl Seen {
    fn of_request(request: &Request<Incoming>) -> Self {
        let headers = request.headers();
        let declared_bytes = declared_length(headers);
        let signature_header_bytes = headers.get(SIGNATURE_HEADER).map(|v| v.len());
        Self { declared_bytes, signature_header_bytes, ..Self::default() }
    }

    /// Also on the delivery's span.
    fn saw(&mut self, event: &EventSummary) {
        self.session_id = event.session_id().map(str::to_owned);
        self.event_id = Some(event.id.clone());
        self.event_type = Some(event.event_type.clone());
        let span = Span::current();
        if !span.is_disabled() {
            span.record("stripe.event.id", &event.id);
            span.record("stripe.event.type", &event.event_type);
            span.record("stripe.checkout_session.id", self.session_id.as_deref());
        }
    }
}

async fn verify_and_forward(
    state: &AppState,
    request: Request<Incoming>,
    arrived: Instant,
    seen: &mut Seen,
) -> Result<(&'static str, HttpResponse), ApiError> {
    let (parts, body) = request.into_parts();
    let header = parts.headers.get(SIGNATURE_HEADER).map(|v| v.as_bytes());
    let signed = state.verifier.check_header(header, unix_now())?;
    let body = read_body_within(&parts.headers, body, state.max_body_bytes, &state.body_budget).await?;
    signed.check_body(&state.verifier, &body.bytes)?;

    // Only the envelope here: payments-svc reads the event from the same
    // bytes, once, and applies what they say.
    let summary = stripe::read_summary(&body.bytes)?;
    seen.saw(&summary);
    let event = StripeEvent {
        id: summary.id,
        r#type: summary.event_type,
        raw_payload: body.bytes.clone(),
        ..StripeEvent::default()
    };

    let answer = state.forwarder.forward(event, arrived).await.map_err(payments::api_error)?;
    if answer.outcome() == Outcome::Unspecified {
        tracing::error!("payments-svc answered without an outcome");
        return Err(ApiError::Unavailable);
    }
    let outcome = answer.outcome().as_str();
    let body = Acknowledgement { received: true, outcome, detail: &answer.detail };
    Ok((outcome, json(StatusCode::OK, &body)))
}

fn unix_now() -> i64 {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since_epoch.as_secs()).unwrap_or(i64::MAX)
}
