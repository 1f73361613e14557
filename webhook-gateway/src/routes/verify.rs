//! `GET /api/payments/verify?session_id=cs_...` and
//! `POST /api/payments/verify` with `{"sessionId": "cs_..."}`: whether a
//! checkout session became a purchase. The answer reveals only the status,
//! the course and when it was bought; nothing about the buyer.

use chrono::{DateTime, SecondsFormat};
use hyper::body::Incoming;
use hyper::{Request, StatusCode};
use payments_proto::stripe::is_checkout_session_id;
use payments_proto::v1::{PurchaseStatus, VerifyPurchaseRequest, verify_purchase_request::Lookup};
use serde::{Deserialize, Serialize};
use service_kit::traces;
use tracing::Instrument as _;
use tracing::field::Empty;

use crate::error::ApiError;
use crate::http::{HttpResponse, json, read_body};
use crate::metrics::VerifyLabels;
use crate::payments;
use crate::state::AppState;

/// A verify request body is one short id.
const MAX_VERIFY_BODY_BYTES: usize = 4 * 1024;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct VerifyBody {
    session_id: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Verification {
    status: &'static str,
    course_id: Option<String>,
    /// RFC 3339, when the purchase was recorded.
    purchased_at: Option<String>,
    /// Whether the purchase grants the course now (paid, not refunded,
    /// not revoked, and not disputed unless access is kept during disputes).
    has_access: bool,
    /// Refunded so far, in the currency's smallest unit; absent without a
    /// purchase.
    amount_refunded: Option<i64>,
    /// Present (true) when Stripe could not be asked: the answer is what was
    /// recorded so far and may change, so ask again shortly.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    unconfirmed: bool,
}

pub async fn by_query(state: &AppState, request: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let query = request.uri().query().unwrap_or_default();
    let session_id = form_urlencoded::parse(query.as_bytes())
        .find(|(key, _)| key == "session_id")
        .map(|(_, value)| value.into_owned())
        .ok_or(ApiError::InvalidRequest("the session_id query parameter is required"))?;
    verify(state, session_id).await
}

pub async fn by_json(state: &AppState, request: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let (parts, body) = request.into_parts();
    let body = read_body(&parts.headers, body, MAX_VERIFY_BODY_BYTES).await?;
    let body: VerifyBody = serde_json::from_slice(&body)
        .map_err(|_| ApiError::InvalidRequest("the body must be JSON like {\"sessionId\": \"cs_...\"}"))?;
    verify(state, body.session_id).await
}

async fn verify(state: &AppState, session_id: String) -> Result<HttpResponse, ApiError> {
    if !is_checkout_session_id(&session_id) {
        // Answered exactly like an unknown session, and at once: a malformed
        // id tells a prober nothing an unknown one would not.
        state.metrics.verifications.get_or_create(&VerifyLabels { status: "not_found" }).inc();
        let unknown = Verification {
            status: "not_found",
            course_id: None,
            purchased_at: None,
            has_access: false,
            amount_refunded: None,
            unconfirmed: false,
        };
        return Ok(json(StatusCode::NOT_FOUND, &unknown));
    }
    let span = if traces::start_trace() {
        tracing::info_span!(
            "verify",
            otel.kind = "server",
            http.route = "/api/payments/verify",
            stripe.checkout_session.id = session_id.as_str(),
            status = Empty,
        )
    } else {
        tracing::Span::none()
    };
    let request = VerifyPurchaseRequest { lookup: Some(Lookup::CheckoutSessionId(session_id)) };
    let mut client = state.payments.client.clone();
    let call = state.metrics.time_call("VerifyPurchase", client.verify_purchase(request));
    let answer = call.instrument(span.clone()).await;
    let answer = answer.map_err(payments::api_error)?.into_inner();

    let status = answer.status();
    if status == PurchaseStatus::Unspecified {
        tracing::error!("payments-svc answered without a purchase status");
        return Err(ApiError::Unavailable);
    }
    let name = status.as_str();
    span.record("status", name);
    let purchase = answer.purchase;
    let verification = Verification {
        status: name,
        course_id: purchase.as_ref().map(|p| p.course_id.clone()),
        has_access: purchase.as_ref().is_some_and(|p| p.has_access),
        amount_refunded: purchase.as_ref().map(|p| p.amount_refunded),
        purchased_at: purchase.and_then(|p| p.created_at).and_then(|at| rfc3339(at.seconds, at.nanos)),
        unconfirmed: answer.unconfirmed,
    };
    state.metrics.verifications.get_or_create(&VerifyLabels { status: name }).inc();
    let code = match status {
        PurchaseStatus::NotFound => StatusCode::NOT_FOUND,
        _ => StatusCode::OK,
    };
    Ok(json(code, &verification))
}

fn rfc3339(seconds: i64, nanos: i32) -> Option<String> {
    let at = DateTime::from_timestamp(seconds, u32::try_from(nanos).ok()?)?;
    Some(at.to_rfc3339_opts(SecondsFormat::Millis, true))
}
