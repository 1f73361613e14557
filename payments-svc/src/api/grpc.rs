//! The `payments.v1.Payments` service: validates requests at the boundary,
//! calls the domain, converts back. No business logic lives here.

use payments_proto::agreement::{self, Disagreement};
use payments_proto::stripe::is_checkout_session_id;
use payments_proto::v1::payments_server::Payments;
use payments_proto::v1::{
    self as pb, EventError, HandleStripeEventResponse, HandleStripeEventsRequest, HandleStripeEventsResponse,
    ListPurchasesRequest, ListPurchasesResponse, StripeEvent, StripeEventResult, VerifyPurchaseRequest,
    VerifyPurchaseResponse, WatchPurchaseChangesRequest, stripe_event_result, verify_purchase_request,
};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Instant;

use sea_orm::DatabaseConnection;
use service_kit::traces;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Request, Response, Status};
use tracing::field::Empty;
use tracing::{Instrument as _, Span};

use payments_domain::purchase::PurchaseSource;
use payments_domain::reversals::Access;
use payments_domain::rules::Policy;
use payments_proto::domain::{incoming, outcome_message};

use crate::api::page_token;
use crate::api::watch::{self, WatchError, Watchers};
use crate::error::Error;
use crate::fulfil::batch::EventBatcher;
use crate::fulfil::session_lookups::SessionLookups;
use crate::fulfil::verify::{self, Lookup, Recorded, Verdict, Verification};
use crate::metrics::{Metrics, OutcomeLabels, VerifyLabels};
use crate::store::entities::course_purchase;
use crate::store::feed::Change;
use crate::store::health::DatabaseHealth;
use crate::store::signals::FeedSignals;
use crate::stripe::StripeApi;

/// Most events one `HandleStripeEvents` call may carry.
pub const MAX_EVENTS_PER_CALL: usize = 1000;

/// `ListPurchases` pages: the size when none is asked for, and the largest.
pub const DEFAULT_PAGE_SIZE: u32 = 100;
pub const MAX_PAGE_SIZE: u32 = 1000;

/// The trailer that carries the oldest cursor kept when a watch is refused
/// for asking after an older one.
pub const OLDEST_CURSOR_TRAILER: &str = "oldest-cursor";
/// The trailer that carries the newest cursor when a watch is refused for
/// asking after one this feed never gave out.
pub const NEWEST_CURSOR_TRAILER: &str = "newest-cursor";

type ChangeStream = Pin<Box<dyn Stream<Item = Result<pb::PurchaseChange, Status>> + Send>>;

#[derive(Debug, Clone)]
pub struct PaymentsService {
    db: DatabaseConnection,
    /// The change feed's wake-ups, told by verify's commits.
    signals: FeedSignals,
    policy: Policy,
    /// Group commit for incoming events.
    batcher: EventBatcher,
    /// Stripe's API, for verify; `None` answers from the database only.
    stripe: Option<Arc<SessionLookups>>,
    metrics: Arc<Metrics>,
    /// Open change-feed watches.
    watchers: Arc<Watchers>,
    /// Bounds every call's statements.
    health: DatabaseHealth,
}

impl PaymentsService {
    /// The service, sending events to `batcher`'s group-commit workers.
    #[expect(clippy::too_many_arguments, reason = "the service's collaborators, wired once at start-up")]
    pub fn new(
        db: DatabaseConnection,
        signals: FeedSignals,
        policy: Policy,
        batcher: EventBatcher,
        stripe: Option<StripeApi>,
        metrics: Arc<Metrics>,
        watchers: Arc<Watchers>,
        health: DatabaseHealth,
    ) -> Self {
        let stripe = stripe.map(|stripe| Arc::new(SessionLookups::new(stripe)));
        Self { db, signals, policy, batcher, stripe, metrics, watchers, health }
    }

    /// Validates `event` and queues it for group commit; the returned
    /// future answers once its batch has committed, and counts it. Traced
    /// in the trace of its delivery (`traceparent`), when it has one.
    async fn submit(
        &self,
        event: StripeEvent,
        traceparent: Option<&str>,
    ) -> Result<impl Future<Output = Result<HandleStripeEventResponse, Status>> + use<>, Status> {
        let span = event_span(&event, traceparent);
        // The event applied is the one the payload says (the payload is
        // what is stored and replayed), and must be valid.
        let read = agreement::read(event).map_err(|disagreement| match disagreement {
            Disagreement::Unreadable(error) => {
                tracing::warn!(%error, "raw_payload is not a Stripe event; refused");
                Error::invalid("raw_payload", "is not a Stripe event this service reads")
            }
            Disagreement::Field(field) => Error::invalid(field, "is not what raw_payload says"),
        });
        if let Ok(Some(session)) = read.as_ref().map(StripeEvent::checkout_session)
            && !span.is_disabled()
        {
            span.record("stripe.checkout_session.id", session.id.as_str());
        }
        let event = read.and_then(|event| incoming(event).map_err(Error::from)).inspect_err(|error| {
            span.record("outcome", "invalid");
            traces::record_error(&span, error);
        })?;
        let started = Instant::now();
        let answer = self.batcher.submit(event, span.clone()).await;
        let metrics = Arc::clone(&self.metrics);
        Ok(async move {
            let result = answer.await;
            metrics.event_seconds.observe(started.elapsed().as_secs_f64());
            let outcome = result.as_ref().map_or("error", |outcome| outcome.as_str());
            metrics.events.get_or_create(&OutcomeLabels { outcome }).inc();
            span.record("outcome", outcome);
            if let Err(error) = &result {
                traces::record_error(&span, error);
            }
            Ok(outcome_message(result?))
        })
    }

    async fn verify_traced(
        &self,
        request: VerifyPurchaseRequest,
    ) -> Result<Response<VerifyPurchaseResponse>, Status> {
        let lookup = lookup(request)?;
        let verified = verify::verify(&self.db, &self.signals, self.stripe.as_deref(), self.policy, &lookup);
        let result = self.health.bounded(verified).await;
        let response = result.map(verify_response);
        let labels = match &response {
            Ok(answer) => VerifyLabels {
                status: answer.status().as_str(),
                unconfirmed: if answer.unconfirmed { "true" } else { "false" },
            },
            Err(_) => VerifyLabels { status: "error", unconfirmed: "false" },
        };
        self.metrics.verifications.get_or_create(&labels).inc();
        Ok(Response::new(response.map_err(Error::from)?))
    }

    async fn handle_all(
        &self,
        events: Vec<StripeEvent>,
        traceparents: Vec<String>,
    ) -> Result<Response<HandleStripeEventsResponse>, Status> {
        if events.len() > MAX_EVENTS_PER_CALL {
            return Err(Status::invalid_argument(format!(
                "at most {MAX_EVENTS_PER_CALL} events per call, got {}",
                events.len()
            )));
        }
        // Everything is queued before anything is awaited, so the events
        // share batches.
        let mut answers = Vec::with_capacity(events.len());
        for (n, event) in events.into_iter().enumerate() {
            answers.push(self.submit(event, traceparents.get(n).map(String::as_str)).await);
        }
        let mut results = Vec::with_capacity(answers.len());
        for answer in answers {
            let result = match answer {
                Ok(answer) => answer.await,
                Err(status) => Err(status),
            };
            results.push(event_result(result));
        }
        Ok(Response::new(HandleStripeEventsResponse { results }))
    }
}

/// The server span of a call to `method`, continuing the caller's trace
/// (`traceparent` in the metadata). payments-svc starts no traces of its
/// own for calls: one that carries no trace context is not traced.
fn server_span(method: &'static str, metadata: &MetadataMap) -> Span {
    let Some(parent) = traces::metadata_traceparent(metadata) else { return Span::none() };
    let span = tracing::info_span!(
        "gRPC call",
        otel.name = method,
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.method = method,
    );
    if !span.is_disabled() {
        traces::continue_from(&span, parent);
    }
    span
}

/// The span of one event's handling, from its arrival to its answer (the
/// wait for a batch included): under the call's span when the call is its
/// delivery's, else in its own delivery's trace, linked to the call; none
/// when its delivery is not traced.
fn event_span(event: &StripeEvent, traceparent: Option<&str>) -> Span {
    let delivery = traceparent.filter(|traceparent| !traceparent.is_empty());
    if delivery.is_none() && Span::current().is_disabled() {
        return Span::none();
    }
    let span = tracing::info_span!(
        "handle event",
        stripe.event.id = event.id.as_str(),
        stripe.event.type = event.r#type.as_str(),
        stripe.checkout_session.id = Empty,
        outcome = Empty,
        otel.status_code = Empty,
        error = Empty,
    );
    if span.is_disabled() {
        return span;
    }
    if let Some(traceparent) = delivery {
        traces::join_delivery(&span, traceparent);
    }
    span
}

#[tonic::async_trait]
impl Payments for PaymentsService {
    async fn handle_stripe_event(
        &self,
        request: Request<StripeEvent>,
    ) -> Result<Response<HandleStripeEventResponse>, Status> {
        let span = server_span("payments.v1.Payments/HandleStripeEvent", request.metadata());
        async {
            let answer = self.submit(request.into_inner(), None).await?;
            Ok(Response::new(answer.await?))
        }
        .instrument(span)
        .await
    }

    async fn handle_stripe_events(
        &self,
        request: Request<HandleStripeEventsRequest>,
    ) -> Result<Response<HandleStripeEventsResponse>, Status> {
        let span = server_span("payments.v1.Payments/HandleStripeEvents", request.metadata());
        let HandleStripeEventsRequest { events, traceparents } = request.into_inner();
        self.handle_all(events, traceparents).instrument(span).await
    }

    async fn verify_purchase(
        &self,
        request: Request<VerifyPurchaseRequest>,
    ) -> Result<Response<VerifyPurchaseResponse>, Status> {
        let span = server_span("payments.v1.Payments/VerifyPurchase", request.metadata());
        self.verify_traced(request.into_inner()).instrument(span).await
    }

    type WatchPurchaseChangesStream = ChangeStream;

    async fn watch_purchase_changes(
        &self,
        request: Request<WatchPurchaseChangesRequest>,
    ) -> Result<Response<ChangeStream>, Status> {
        // Beyond i64 is beyond every cursor: refused as ahead of the feed.
        let after = i64::try_from(request.into_inner().after).unwrap_or(i64::MAX);
        let changes =
            watch::start(self.db.clone(), self.health.clone(), after, &self.watchers).map_err(|error| {
                tracing::warn!(%error, "change-feed watch refused");
                watch_status(error)
            })?;
        let stream =
            ReceiverStream::new(changes).map(|change| change.map(change_message).map_err(watch_status));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn list_purchases(
        &self,
        request: Request<ListPurchasesRequest>,
    ) -> Result<Response<ListPurchasesResponse>, Status> {
        let request = request.into_inner();
        let page_size = match request.page_size {
            0 => DEFAULT_PAGE_SIZE,
            size if size <= MAX_PAGE_SIZE => size,
            _ => return Err(Error::invalid("page_size", "is above 1000").into()),
        };
        let user_id = Some(request.user_id.as_str()).filter(|user| !user.is_empty());
        let after_id = match request.page_token.as_str() {
            "" => 0,
            token => page_token::decode(token, user_id)
                .ok_or(Error::invalid("page_token", "is not a token this service gave for this listing"))?,
        };
        let listed = verify::list(&self.db, self.policy, user_id, after_id, u64::from(page_size));
        let (page, more) = self.health.bounded(listed).await.map_err(Error::from)?;
        let next_page_token = match page.last() {
            Some(last) if more => page_token::encode(last.purchase.id, user_id),
            _ => String::new(),
        };
        let purchases = page.into_iter().map(|r| purchase_message(r.purchase, r.access)).collect();
        Ok(Response::new(ListPurchasesResponse { purchases, next_page_token }))
    }
}

fn change_message(Change { change, purchase }: Change) -> pb::PurchaseChange {
    let access = Access {
        status: change.status.into(),
        has_access: change.has_access,
        amount_refunded: change.amount_refunded,
    };
    let kind: payments_domain::changes::ChangeKind = change.kind.into();
    pb::PurchaseChange {
        cursor: u64::try_from(change.cursor).unwrap_or_default(),
        kind: pb::ChangeKind::from(kind).into(),
        purchase: Some(purchase_message(purchase, access)),
        cause_event_id: change.cause_event_id,
        at: Some(timestamp(change.at)),
    }
}

fn watch_status(error: WatchError) -> Status {
    match error {
        WatchError::TooOld { oldest, .. } | WatchError::OtherHistory { oldest, .. } => {
            let mut status = Status::failed_precondition(error.to_string());
            if let Ok(value) = MetadataValue::try_from(oldest.to_string()) {
                status.metadata_mut().insert(OLDEST_CURSOR_TRAILER, value);
            }
            status
        }
        WatchError::Ahead { newest, .. } => {
            let mut status = Status::failed_precondition(error.to_string());
            if let Ok(value) = MetadataValue::try_from(newest.to_string()) {
                status.metadata_mut().insert(NEWEST_CURSOR_TRAILER, value);
            }
            status
        }
        WatchError::ShuttingDown | WatchError::Abandoned => Status::unavailable(error.to_string()),
        WatchError::TooMany { .. } => Status::resource_exhausted(error.to_string()),
        WatchError::Db(source) => Error::Database(source).into(),
    }
}

/// One event's answer within `HandleStripeEvents`: what
/// `HandleStripeEvent` would have answered, success or error.
fn event_result(result: Result<HandleStripeEventResponse, Status>) -> StripeEventResult {
    let result = match result {
        Ok(handled) => stripe_event_result::Result::Handled(handled),
        Err(status) => stripe_event_result::Result::Error(EventError {
            code: status.code() as i32,
            message: status.message().to_owned(),
        }),
    };
    StripeEventResult { result: Some(result) }
}

fn lookup(request: VerifyPurchaseRequest) -> Result<Lookup, Error> {
    match request.lookup {
        Some(verify_purchase_request::Lookup::CheckoutSessionId(id)) if is_checkout_session_id(&id) => {
            Ok(Lookup::CheckoutSession(id))
        }
        Some(verify_purchase_request::Lookup::CheckoutSessionId(_)) => Err(Error::invalid(
            "checkout_session_id",
            "is not a Checkout Session id (cs_ and letters, digits, _)",
        )),
        Some(verify_purchase_request::Lookup::UserCourse(uc)) if uc.user_id.is_empty() => {
            Err(Error::invalid("user_course.user_id", "is empty"))
        }
        Some(verify_purchase_request::Lookup::UserCourse(uc)) if uc.course_id.is_empty() => {
            Err(Error::invalid("user_course.course_id", "is empty"))
        }
        Some(verify_purchase_request::Lookup::UserCourse(uc)) => {
            Ok(Lookup::UserCourse { user_id: uc.user_id, course_id: uc.course_id })
        }
        None => Err(Error::invalid("lookup", "is required")),
    }
}

fn verify_response(verification: Verification) -> VerifyPurchaseResponse {
    let (status, purchase) = match verification.verdict {
        Verdict::Recorded(Recorded { purchase, access }) => {
            let purchase = purchase_message(purchase, access);
            (purchase.status(), Some(purchase))
        }
        Verdict::Pending => (pb::PurchaseStatus::Pending, None),
        Verdict::Expired => (pb::PurchaseStatus::Expired, None),
        Verdict::NotFound => (pb::PurchaseStatus::NotFound, None),
    };
    VerifyPurchaseResponse { status: status.into(), purchase, unconfirmed: verification.unconfirmed }
}

fn purchase_message(purchase: course_purchase::Model, access: Access) -> pb::Purchase {
    let status = pb::PurchaseStatus::from(access.status);
    let source = pb::PurchaseSource::from(PurchaseSource::from(purchase.source));
    pb::Purchase {
        user_id: purchase.user_id,
        course_id: purchase.course_id,
        checkout_session_id: purchase.stripe_checkout_session_id,
        payment_intent_id: purchase.stripe_payment_intent_id,
        amount_total: purchase.amount_total,
        currency: purchase.currency,
        status: status.into(),
        source: source.into(),
        created_at: Some(timestamp(purchase.created_at)),
        updated_at: Some(timestamp(purchase.updated_at)),
        has_access: access.has_access,
        amount_refunded: access.amount_refunded,
        checkout_created_at: purchase
            .checkout_created
            .map(|seconds| prost_types::Timestamp { seconds, nanos: 0 }),
    }
}

fn timestamp(at: chrono::DateTime<chrono::Utc>) -> prost_types::Timestamp {
    prost_types::Timestamp {
        seconds: at.timestamp(),
        nanos: i32::try_from(at.timestamp_subsec_nanos()).unwrap_or(0),
    }
}
