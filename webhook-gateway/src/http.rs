//! Small HTTP helpers shared by the routes.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderMap, HeaderValue};
use hyper::{Response, StatusCode};
use serde::Serialize;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Every response the gateway sends is small and fully buffered.
pub type HttpResponse = Response<Full<Bytes>>;

/// A JSON response.
pub fn json(status: StatusCode, body: &impl Serialize) -> HttpResponse {
    // Serialising our own plain structs and `json!` values cannot fail.
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(Full::new(Bytes::from(bytes)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Why a body could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    /// More than `limit` bytes were declared or sent.
    TooLarge { limit: usize },
    /// The bodies being read already hold the whole [`BodyBudget`].
    OverBudget,
    /// The client broke off or sent something that is not a body.
    Unreadable,
    /// The client sent nothing for [`BODY_STALL`] before the body ended.
    Stalled,
}

/// Longest a body may go without a byte before it is given up (408). Stripe
/// sends a body at once; a client that declares a body and then sends
/// nothing, or a trickle, is holding a connection and a place in flight, so
/// it loses them quickly instead of at the request deadline.
pub const BODY_STALL: std::time::Duration = std::time::Duration::from_secs(2);

/// Bytes of request bodies held at once across all requests. A count of
/// requests alone does not bound memory: 512 requests of 1 MiB each are half
/// a gigabyte. Each body's bytes are taken from the budget as they arrive,
/// never on the strength of a declared `Content-Length` (which costs a
/// stranger nothing to send), and given back when the request is answered;
/// a request that finds the budget spent is refused with 503 and
/// redelivered later, instead of the gateway growing without bound. A body
/// that stops arriving for [`BODY_STALL`] gives its bytes back.
#[derive(Debug, Clone)]
pub struct BodyBudget(Arc<Semaphore>);

impl BodyBudget {
    pub fn new(bytes: usize) -> Self {
        Self(Arc::new(Semaphore::new(bytes.min(Semaphore::MAX_PERMITS))))
    }

    /// Bytes not held by any body now.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }

    /// Takes `bytes` more for `held`, or refuses without waiting.
    fn take(&self, held: &mut Option<OwnedSemaphorePermit>, bytes: usize) -> Result<(), BodyError> {
        let bytes = u32::try_from(bytes).map_err(|_| BodyError::OverBudget)?;
        let taken = Arc::clone(&self.0).try_acquire_many_owned(bytes).map_err(|_| BodyError::OverBudget)?;
        match held {
            Some(held) => held.merge(taken),
            None => *held = Some(taken),
        }
        Ok(())
    }
}

/// A body read within a [`BodyBudget`]: its bytes count against the budget
/// until this is dropped.
#[derive(Debug)]
pub struct HeldBody {
    pub bytes: Bytes,
    _held: Option<OwnedSemaphorePermit>,
}

/// The body length the request declares (`Content-Length`), if it does.
pub fn declared_length(headers: &HeaderMap) -> Option<u64> {
    headers.get(CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse().ok())
}

/// Reads the whole body, refusing more than `limit` bytes. A declared
/// `Content-Length` over the limit is refused before anything is read; a
/// body that stalls for [`BODY_STALL`] is given up.
pub async fn read_body(headers: &HeaderMap, body: Incoming, limit: usize) -> Result<Bytes, BodyError> {
    Ok(read(headers, body, limit, None).await?.bytes)
}

/// [`read_body`], holding the body's bytes in `budget`.
pub async fn read_body_within(
    headers: &HeaderMap,
    body: Incoming,
    limit: usize,
    budget: &BodyBudget,
) -> Result<HeldBody, BodyError> {
    read(headers, body, limit, Some(budget)).await
}

async fn read(
    headers: &HeaderMap,
    mut body: Incoming,
    limit: usize,
    budget: Option<&BodyBudget>,
) -> Result<HeldBody, BodyError> {
    let declared = declared_length(headers);
    if declared.is_some_and(|len| len > limit as u64) {
        return Err(BodyError::TooLarge { limit });
    }
    let mut held = None;
    let (mut chunks, mut total) = (Vec::new(), 0);
    loop {
        let frame = tokio::time::timeout(BODY_STALL, body.frame()).await.map_err(|_| BodyError::Stalled)?;
        let Some(frame) = frame else { break };
        let Ok(data) = frame.map_err(|_| BodyError::Unreadable)?.into_data() else { continue };
        total += data.len();
        if total > limit {
            return Err(BodyError::TooLarge { limit });
        }
        if let Some(budget) = budget {
            budget.take(&mut held, data.len())?;
        }
        chunks.push(data);
    }
    Ok(HeldBody { bytes: joined(chunks, total), _held: held })
}

/// One chunk as it is (the usual case: no copy), several copied into one.
fn joined(chunks: Vec<Bytes>, total: usize) -> Bytes {
    if let [only] = chunks.as_slice() {
        return only.clone();
    }
    let mut joined = BytesMut::with_capacity(total);
    chunks.iter().for_each(|chunk| joined.extend_from_slice(chunk));
    joined.freeze()
}
