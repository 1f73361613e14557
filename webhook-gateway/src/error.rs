//! Everything a route can answer besides success, and the one place each
//! becomes an HTTP status and JSON body. Internal detail stays in the logs.

use hyper::StatusCode;
use hyper::header::{ALLOW, CONNECTION, HeaderValue, RETRY_AFTER};
use payments_proto::stripe::ParseError;

use crate::http::{BodyError, HttpResponse, json};
use crate::signature::SignatureError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Signature(#[from] SignatureError),
    #[error("the request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the request body could not be read")]
    BodyUnreadable,
    #[error(transparent)]
    NotAnEvent(#[from] ParseError),
    #[error("{0}")]
    InvalidRequest(&'static str),
    #[error("payments-svc refused the request: {0}")]
    Rejected(String),
    #[error("the payments service is unavailable; retry later")]
    Unavailable,
    #[error("the gateway is at capacity; retry later")]
    Overloaded,
    #[error("too many requests from this client; retry in {retry_after_secs} s")]
    TooManyRequests { retry_after_secs: u64 },
    #[error("the request took too long")]
    RequestTimeout,
    #[error("the request body stopped arriving")]
    BodyStalled,
    #[error("no such route")]
    NotFound,
    #[error("method not allowed; use {allow}")]
    MethodNotAllowed { allow: &'static str },
}

impl From<BodyError> for ApiError {
    fn from(error: BodyError) -> Self {
        match error {
            BodyError::TooLarge { limit } => Self::BodyTooLarge { limit },
            BodyError::OverBudget => Self::Overloaded,
            BodyError::Unreadable => Self::BodyUnreadable,
            BodyError::Stalled => Self::BodyStalled,
        }
    }
}

impl ApiError {
    /// Stable code for the response body, logs and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            Self::Signature(error) => error.code(),
            Self::BodyTooLarge { .. } => "body_too_large",
            Self::BodyUnreadable => "body_unreadable",
            Self::NotAnEvent(_) => "not_a_stripe_event",
            Self::InvalidRequest(_) => "invalid_request",
            Self::Rejected(_) => "rejected",
            Self::Unavailable => "unavailable",
            Self::Overloaded => "overloaded",
            Self::TooManyRequests { .. } => "too_many_requests",
            Self::RequestTimeout => "request_timeout",
            Self::BodyStalled => "body_stalled",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed { .. } => "method_not_allowed",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::Signature(_)
            | Self::BodyUnreadable
            | Self::NotAnEvent(_)
            | Self::InvalidRequest(_)
            | Self::Rejected(_) => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable | Self::Overloaded => StatusCode::SERVICE_UNAVAILABLE,
            Self::TooManyRequests { .. } => StatusCode::TOO_MANY_REQUESTS,
            Self::RequestTimeout | Self::BodyStalled => StatusCode::REQUEST_TIMEOUT,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    pub fn into_response(self) -> HttpResponse {
        let mut response =
            json(self.status(), &serde_json::json!({ "error": self.code(), "message": self.to_string() }));
        match self {
            Self::MethodNotAllowed { allow } => {
                response.headers_mut().insert(ALLOW, HeaderValue::from_static(allow));
            }
            Self::Unavailable | Self::Overloaded => {
                response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("5"));
            }
            Self::TooManyRequests { retry_after_secs } => {
                response.headers_mut().insert(RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            Self::RequestTimeout | Self::BodyStalled => {
                response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}
