//! The gateway's HTTP routes.

mod success_page;
mod verify;
mod webhook;

use std::convert::Infallible;
use std::sync::Arc;

use hyper::body::Incoming;
use hyper::{Method, Request, StatusCode};

use crate::error::ApiError;
use crate::http::{HttpResponse, json};
use crate::startup::AppState;

/// Where Stripe posts events.
pub const WEBHOOK_PATH: &str = "/api/payments/webhook";
/// Where the frontend asks whether a checkout became a purchase.
pub const VERIFY_PATH: &str = "/api/payments/verify";
/// Liveness: the process is up and serving HTTP.
pub const HEALTH_PATH: &str = "/healthz";
/// Where Stripe Checkout sends the buyer back (`success_url`).
pub const SUCCESS_PAGE_PATH: &str = "/checkout/success";

/// Dispatches one request. Never fails: every error becomes its response.
pub async fn route(state: Arc<AppState>, request: Request<Incoming>) -> Result<HttpResponse, Infallible> {
    let result = match (request.uri().path(), request.method()) {
        (WEBHOOK_PATH, &Method::POST) => webhook::receive(&state, request).await,
        (WEBHOOK_PATH, _) => Err(ApiError::MethodNotAllowed { allow: "POST" }),
        (VERIFY_PATH, &Method::GET) => verify::by_query(&state, request).await,
        (VERIFY_PATH, &Method::POST) => verify::by_json(&state, request).await,
        (VERIFY_PATH, _) => Err(ApiError::MethodNotAllowed { allow: "GET, POST" }),
        (HEALTH_PATH, &Method::GET) => Ok(json(StatusCode::OK, &serde_json::json!({ "status": "ok" }))),
        (HEALTH_PATH, _) => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        (SUCCESS_PAGE_PATH, &Method::GET) if state.success_page => Ok(success_page::page()),
        (SUCCESS_PAGE_PATH, _) if state.success_page => Err(ApiError::MethodNotAllowed { allow: "GET" }),
        _ => Err(ApiError::NotFound),
    };
    Ok(result.unwrap_or_else(ApiError::into_response))
}
