//! The gateway's HTTP routes.

mod success_page;
mod verify;
mod webhook;

use std::convert::Infallible;
use std::net::IpAddr;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use crate::error::ApiError;
use crate::http::{HttpResponse, json};
use crate::metrics::WebhookLabels;
pub use crate::paths::{HEALTH_PATH, READY_PATH, SUCCESS_PAGE_PATH, VERIFY_PATH, WEBHOOK_PATH};
use crate::state::AppState;

/// Dispatches one request. Never fails: every error becomes its response.
/// The webhook and verify routes each count against an in-flight limit of
/// their own and the request timeout; health and the page are cheap and
/// always served. Metrics are on the admin listener, not here.
pub async fn route(
    state: Arc<AppState>,
    client: IpAddr,
    request: Request<Incoming>,
) -> Result<HttpResponse, Infallible> {
    let path = request.uri().path();
    let result = match (path, request.method()) {
        (WEBHOOK_PATH | VERIFY_PATH, _) => bounded(&state, client, request).await,
        (HEALTH_PATH, &Method::GET) => Ok(json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))),
        (READY_PATH, &Method::GET) => Ok(readiness(&state).await),
        (SUCCESS_PAGE_PATH, &Method::GET) if state.success_page => Ok(success_page::page()),
        (HEALTH_PATH | READY_PATH, _) => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        (SUCCESS_PAGE_PATH, _) if state.success_page => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        _ => Err(ApiError::NotFound),
    };
    Ok(result.unwrap_or_else(ApiError::into_response))
}

/// The API routes, within their own in-flight limit and the request timeout.
/// Verify also within its client's share.
async fn bounded(
    state: &Arc<AppState>,
    client: IpAddr,
    request: Request<Incoming>,
) -> Result<HttpResponse, ApiError> {
    let path = request.uri().path();
    if path == VERIFY_PATH
        && let Some(Err(wait)) = state.verify_clients.as_ref().map(|clients| clients.try_take(client))
    {
        tracing::info!(%client, "verify requests beyond the client's share; refused with 429");
        return Err(ApiError::TooManyRequests { retry_after_secs: wait.as_secs().max(1) });
    }
    let limit = if path == WEBHOOK_PATH { &state.webhooks_in_flight } else { &state.verifies_in_flight };
    let Ok(_permit) = Arc::clone(limit).try_acquire_owned() else {
        return Err(overloaded(state, path));
    };
    state.metrics.in_flight.inc();
    let answer = tokio::time::timeout(state.request_timeout, api(state, client, request)).await;
    state.metrics.in_flight.dec();
    answer.unwrap_or(Err(ApiError::RequestTimeout))
}

async fn api(state: &AppState, client: IpAddr, request: Request<Incoming>) -> Result<HttpResponse, ApiError> {
    match (request.uri().path(), request.method()) {
        (WEBHOOK_PATH, &Method::POST) => webhook::receive(state, client, request).await,
        (WEBHOOK_PATH, _) => Err(ApiError::MethodNotAllowed { allow: "POST" }),
        (_, &Method::GET) => verify::by_query(state, request).await,
        (_, &Method::POST) => verify::by_json(state, request).await,
        _ => Err(ApiError::MethodNotAllowed { allow: "GET, POST" }),
    }
}

/// Refuses a request the gateway has no room for, counting it.
pub fn overloaded(state: &AppState, path: &str) -> ApiError {
    if path == WEBHOOK_PATH {
        state
            .metrics
            .webhooks
            .get_or_create(&WebhookLabels { outcome: "rejected", reason: "overloaded" })
            .inc();
    }
    tracing::warn!(path, "at capacity; request refused with 503");
    ApiError::Overloaded
}

async fn readiness(state: &AppState) -> HttpResponse {
    if state.payments.ready().await {
        json(StatusCode::OK, &serde_json::json!({ "status": "ready" }))
    } else {
        json(StatusCode::SERVICE_UNAVAILABLE, &serde_json::json!({ "status": "payments-svc not serving" }))
    }
}
