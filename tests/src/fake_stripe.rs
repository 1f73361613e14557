//! A stand-in for Stripe's API (which no machine here can reach): a real
//! HTTP server on an ephemeral port that serves Checkout Sessions and the
//! events list from the repository's fixtures, lists sessions, refunds and
//! disputes as Stripe's list endpoints do (newest first, `limit` up to 100,
//! `starting_after`, `has_more`, `created[...]` filters, `expand[]` of a
//! session's payment intent), makes refunds (honouring `Idempotency-Key`
//! as Stripe does), checks the bearer key, and can be told to fail or
//! stall.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::ops::Bound;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// The key payments-svc must present.
pub const FAKE_STRIPE_KEY: &str = "sk_test_fake_stripe_key_for_e2e";

/// One misbehaviour, applied to one request.
#[derive(Debug, Clone, Copy)]
pub enum Fault {
    /// Answer with this status and a Stripe error body.
    Status(u16),
    /// Answer 429 with `Retry-After` in seconds.
    RateLimited { retry_after_secs: u64 },
    /// Wait this long before answering normally.
    Delay(Duration),
    /// Do what was asked, then wait this long before answering: a caller
    /// that gives up meanwhile does not know it happened.
    DelayAfterDoing(Duration),
    /// Answer with this status and `Stripe-Should-Retry: false`: Stripe
    /// knows a retry would fail the same way.
    NotToBeRetried(u16),
    /// Answer normally (to let requests through before a fault).
    Pass,
}

/// A refund the fake made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MadeRefund {
    pub id: String,
    pub payment_intent: String,
    pub idempotency_key: Option<String>,
}

#[derive(Debug, Default)]
struct State {
    sessions: HashMap<String, Bytes>,
    /// Every listed session, refund and dispute.
    listed_sessions: Listed,
    listed_refunds: Listed,
    listed_disputes: Listed,
    /// Payment intents by id, for `expand[]=data.payment_intent`.
    intents: HashMap<String, serde_json::Value>,
    /// When, and `path?query`, of every GET, in order.
    gets: Vec<(std::time::Instant, String)>,
    /// `(created, id, body)` of every event, in the order added.
    events: Listed,
    refunds: Vec<MadeRefund>,
    /// Answers already given, by `Idempotency-Key`.
    idempotent: HashMap<String, Bytes>,
    next_faults: VecDeque<Fault>,
    every_request: Option<Fault>,
    requests: usize,
}

/// The objects of one list, in Stripe's order: newest first, then by id
/// (descending), each once in its latest version.
#[derive(Debug, Default)]
struct Listed {
    ordered: BTreeMap<(Reverse<i64>, Reverse<String>), Bytes>,
    created_of: HashMap<String, i64>,
}

impl Listed {
    /// Lists `object`, replacing an earlier version of it.
    fn put(&mut self, object: Bytes) {
        let (created, id) = (json_created(&object), json_field(&object, "id"));
        if let Some(before) = self.created_of.insert(id.clone(), created) {
            self.ordered.remove(&(Reverse(before), Reverse(id.clone())));
        }
        self.ordered.insert((Reverse(created), Reverse(id)), object);
    }

    /// The objects after `starting_after` (all when `None`), in order;
    /// `None` when that object is not listed.
    fn after(&self, starting_after: Option<&str>) -> Option<impl Iterator<Item = (i64, &Bytes)>> {
        let from = match starting_after {
            Some(id) => {
                let created = *self.created_of.get(id)?;
                Bound::Excluded((Reverse(created), Reverse(id.to_owned())))
            }
            None => Bound::Unbounded,
        };
        Some(
            self.ordered
                .range((from, Bound::Unbounded))
                .map(|((Reverse(created), _), body)| (*created, body)),
        )
    }
}

#[derive(Debug)]
pub struct FakeStripe {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
    task: JoinHandle<()>,
}

impl FakeStripe {
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let state = Arc::new(Mutex::new(State::default()));
        let shared = Arc::clone(&state);
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let state = Arc::clone(&shared);
                let service = service_fn(move |request| answer(Arc::clone(&state), request));
                tokio::spawn(http1::Builder::new().serve_connection(TokioIo::new(stream), service));
            }
        });
        Self { addr, state, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().expect("fake Stripe state")
    }

    /// Serves this Checkout Session object at `/v1/checkout/sessions/{id}`.
    pub fn add_session(&self, session: Bytes) {
        let id = json_field(&session, "id");
        self.state().sessions.insert(id, session);
    }

    /// Serves this Checkout Session, and lists it in `/v1/checkout/sessions`
    /// (replacing an earlier version of it).
    pub fn list_session(&self, session: Bytes) {
        let id = json_field(&session, "id");
        let mut state = self.state();
        state.listed_sessions.put(session.clone());
        state.sessions.insert(id, session);
    }

    /// The payment intent `expand[]=data.payment_intent` puts in its
    /// sessions: `{"id", "object", "status"}`.
    pub fn set_intent(&self, id: &str, status: &str) {
        let intent = serde_json::json!({ "id": id, "object": "payment_intent", "status": status });
        self.state().intents.insert(id.to_owned(), intent);
    }

    /// Lists this Refund object in `GET /v1/refunds` (replacing an earlier
    /// version of it).
    pub fn list_refund(&self, refund: Bytes) {
        self.state().listed_refunds.put(refund);
    }

    /// Lists this Dispute object in `GET /v1/disputes` (replacing an
    /// earlier version of it).
    pub fn list_dispute(&self, dispute: Bytes) {
        self.state().listed_disputes.put(dispute);
    }

    /// When, and `path?query`, of every GET so far, in order.
    pub fn gets(&self) -> Vec<(std::time::Instant, String)> {
        self.state().gets.clone()
    }

    /// Lists this event in `/v1/events`.
    pub fn add_event(&self, event: Bytes) {
        self.state().events.put(event);
    }

    /// The next requests misbehave, one fault each, in order.
    pub fn fail_next(&self, faults: impl IntoIterator<Item = Fault>) {
        self.state().next_faults.extend(faults);
    }

    /// Every request misbehaves so (after any `fail_next`), until cleared.
    pub fn fail_every_request(&self, fault: Option<Fault>) {
        self.state().every_request = fault;
    }

    pub fn request_count(&self) -> usize {
        self.state().requests
    }

    /// Every refund made, in order (a retried request with the same
    /// `Idempotency-Key` makes none).
    pub fn refunds(&self) -> Vec<MadeRefund> {
        self.state().refunds.clone()
    }
}

impl Drop for FakeStripe {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn json_created(body: &[u8]) -> i64 {
    let parsed: serde_json::Value = serde_json::from_slice(body).expect("JSON");
    parsed["created"].as_i64().expect("created")
}

fn json_field(body: &[u8], field: &str) -> String {
    let parsed: serde_json::Value = serde_json::from_slice(body).expect("JSON");
    parsed[field].as_str().expect("string field").to_owned()
}

type Answer = Response<Full<Bytes>>;

async fn answer(state: Arc<Mutex<State>>, request: Request<Incoming>) -> Result<Answer, Infallible> {
    let fault = {
        let mut state = state.lock().expect("fake Stripe state");
        state.requests += 1;
        state.next_faults.pop_front().or(state.every_request)
    };
    match fault {
        Some(Fault::Status(status)) => return Ok(error(status, "api_error", "", "injected failure")),
        Some(Fault::RateLimited { retry_after_secs }) => {
            let mut response = error(429, "rate_limit_error", "rate_limit", "Too many requests");
            response.headers_mut().insert("retry-after", retry_after_secs.into());
            return Ok(response);
        }
        Some(Fault::NotToBeRetried(status)) => {
            let mut response = error(status, "api_error", "", "injected failure, not to be retried");
            response.headers_mut().insert("stripe-should-retry", "false".parse().expect("header"));
            return Ok(response);
        }
        Some(Fault::Delay(delay)) => tokio::time::sleep(delay).await,
        Some(Fault::DelayAfterDoing(_) | Fault::Pass) | None => {}
    }
    let authorized = request
        .headers()
        .get("authorization")
        .is_some_and(|value| value.as_bytes() == format!("Bearer {FAKE_STRIPE_KEY}").as_bytes());
    if !authorized {
        return Ok(error(401, "invalid_request_error", "", "Invalid API Key provided"));
    }
    let path = request.uri().path().to_owned();
    let query = request.uri().query().unwrap_or_default().to_owned();
    if path == "/v1/refunds" && request.method() == hyper::Method::POST {
        let answer = create_refund(&state, request).await;
        if let Some(Fault::DelayAfterDoing(delay)) = fault {
            tokio::time::sleep(delay).await;
        }
        return Ok(answer);
    }
    let mut state = state.lock().expect("fake Stripe state");
    state.gets.push((std::time::Instant::now(), format!("{path}?{query}")));
    let listed = match path.as_str() {
        "/v1/checkout/sessions" => Some(&state.listed_sessions),
        "/v1/refunds" => Some(&state.listed_refunds),
        "/v1/disputes" => Some(&state.listed_disputes),
        _ => None,
    };
    if let Some(objects) = listed {
        return Ok(list_page(objects, &|_| true, &state.intents, &path, &query));
    }
    if let Some(id) = path.strip_prefix("/v1/checkout/sessions/") {
        return Ok(match state.sessions.get(id) {
            Some(session) => json(StatusCode::OK, session.clone()),
            None => error(
                404,
                "invalid_request_error",
                "resource_missing",
                &format!("No such checkout.session: '{id}'"),
            ),
        });
    }
    if path == "/v1/events" {
        return Ok(events_page(&state, &query));
    }
    Ok(error(404, "invalid_request_error", "", "Unrecognized request URL"))
}

/// `POST /v1/refunds` for a `payment_intent`: a Refund object, built from
/// the refund fixture. A repeated `Idempotency-Key` gets the first answer
/// back and makes no refund.
async fn create_refund(state: &Mutex<State>, request: Request<Incoming>) -> Answer {
    use http_body_util::BodyExt;
    let key = request.headers().get("idempotency-key").and_then(|v| v.to_str().ok()).map(str::to_owned);
    let form = request.into_body().collect().await.map(|body| body.to_bytes()).unwrap_or_default();
    let params: HashMap<String, String> = url::form_urlencoded::parse(&form).into_owned().collect();
    let Some(payment_intent) = params.get("payment_intent").cloned() else {
        return error(400, "invalid_request_error", "parameter_missing", "payment_intent is required");
    };
    let mut state = state.lock().expect("fake Stripe state");
    if let Some(answer) = key.as_ref().and_then(|key| state.idempotent.get(key)) {
        return json(StatusCode::OK, answer.clone());
    }
    let id = format!("re_fake_{}", state.refunds.len() + 1);
    let event = crate::fixture("refund_created_full.json").expect("fixture");
    let event: serde_json::Value = serde_json::from_slice(&event).expect("JSON");
    let mut refund = event["data"]["object"].clone();
    refund["id"] = id.clone().into();
    refund["payment_intent"] = payment_intent.clone().into();
    refund["created"] = crate::unix_now().into();
    let body = Bytes::from(refund.to_string());
    state.listed_refunds.put(body.clone());
    state.refunds.push(MadeRefund { id, payment_intent, idempotency_key: key.clone() });
    if let Some(key) = key {
        state.idempotent.insert(key, body.clone());
    }
    json(StatusCode::OK, body)
}

/// `GET /v1/events`, as the other lists, filtered by `type` (only the
/// `checkout.session.*` wildcard is supported).
fn events_page(state: &State, query: &str) -> Answer {
    let wildcard =
        url::form_urlencoded::parse(query.as_bytes()).any(|(k, v)| k == "type" && v == "checkout.session.*");
    if !wildcard {
        return error(
            400,
            "invalid_request_error",
            "parameter_invalid",
            "this fake only lists checkout.session.*",
        );
    }
    let checkout = |event: &Bytes| json_field(event, "type").starts_with("checkout.session.");
    list_page(&state.events, &checkout, &state.intents, "/v1/events", query)
}

/// A list endpoint, as Stripe's behave: newest first (by `created`, then
/// id), `created[gte|gt|lte|lt]` filters, `limit` 1 to 100 (default 10),
/// `starting_after` an object of the filtered list, `has_more`, and
/// `expand[]=data.payment_intent` for sessions.
fn list_page(
    objects: &Listed,
    keep: &dyn Fn(&Bytes) -> bool,
    intents: &HashMap<String, serde_json::Value>,
    path: &str,
    query: &str,
) -> Answer {
    let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    let param = |name: &str| params.iter().find(|(key, _)| key == name).map(|(_, value)| value.as_str());
    let bound = |name: &str| param(name).and_then(|v| v.parse::<i64>().ok());
    let limit: usize = param("limit").and_then(|v| v.parse().ok()).unwrap_or(10);
    if !(1..=100).contains(&limit) {
        return error(
            400,
            "invalid_request_error",
            "parameter_invalid_integer",
            "limit must be between 1 and 100",
        );
    }
    let expand = params.iter().any(|(key, value)| key == "expand[]" && value == "data.payment_intent");
    let within = |created: &i64| {
        bound("created[gte]").is_none_or(|b| *created >= b)
            && bound("created[gt]").is_none_or(|b| *created > b)
            && bound("created[lte]").is_none_or(|b| *created <= b)
            && bound("created[lt]").is_none_or(|b| *created < b)
    };
    let Some(after) = objects.after(param("starting_after")) else {
        let missing = param("starting_after").unwrap_or_default();
        return error(
            400,
            "invalid_request_error",
            "resource_missing",
            &format!("No such object: '{missing}'"),
        );
    };
    let mut matching = after.filter(|(created, body)| within(created) && keep(body)).map(|(_, body)| body);
    let page: Vec<String> = matching
        .by_ref()
        .take(limit)
        .map(|body| {
            let mut object: serde_json::Value = serde_json::from_slice(body).expect("JSON");
            let intent = object.get("payment_intent").and_then(|v| v.as_str()).and_then(|id| intents.get(id));
            if let (true, Some(intent)) = (expand, intent) {
                object["payment_intent"] = intent.clone();
            }
            object.to_string()
        })
        .collect();
    let has_more = matching.next().is_some();
    let body =
        format!(r#"{{"object":"list","url":"{path}","has_more":{has_more},"data":[{}]}}"#, page.join(","));
    json(StatusCode::OK, Bytes::from(body))
}

fn json(status: StatusCode, body: Bytes) -> Answer {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert("content-type", "application/json".parse().expect("header"));
    response
}

fn error(status: u16, kind: &str, code: &str, message: &str) -> Answer {
    let body = serde_json::json!({ "error": { "type": kind, "code": code, "message": message } });
    json(StatusCode::from_u16(status).expect("status"), Bytes::from(body.to_string()))
}
