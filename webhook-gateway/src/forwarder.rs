//! Forwarding verified events to payments-svc, many to a call under load.
//!
//! Each webhook request queues its event and waits for its own answer. A
//! dispatcher sends whatever is queued as one `HandleStripeEvents` call
//! whenever one of its call slots (`PAYMENTS_SVC_MAX_CALLS`) is free. With
//! little traffic a call carries one event and nothing waits; under load the
//! events that arrive while calls are in flight travel together. Per call,
//! gRPC costs both sides far more than an event's own work (HTTP/2 frames,
//! headers, a stream, a task, wake-ups), so this is most of what lets the
//! gateway and payments-svc keep up with a flood of webhooks.
//!
//! Every event still gets its own answer, as `HandleStripeEvent` would give
//! it; a failed call fails only the events it carried, which then answer 503
//! and are redelivered by Stripe.

use std::sync::Arc;
use std::time::{Duration, Instant};

use payments_proto::v1::{
    HandleStripeEventResponse, HandleStripeEventsRequest, StripeEvent, StripeEventResult, stripe_event_result,
};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tonic::{Code, Status};
use tracing::{Instrument as _, Span};

use service_kit::{gather, traces};

use crate::config::ForwardSettings;
use crate::metrics::Metrics;
use crate::payments::PaymentsClient;

/// Most payload bytes in one call (one larger event still goes alone), well
/// under the 4 MiB that payments-svc accepts in a message.
const MAX_CALL_BYTES: usize = 2 * 1024 * 1024;

type Answer = Result<HandleStripeEventResponse, Status>;

struct Job {
    event: StripeEvent,
    /// The delivery's span, for the trace of the call that carries it.
    span: Span,
    reply: oneshot::Sender<Answer>,
}

impl Job {
    /// Its request has already been answered (the deadline passed while it
    /// queued): sending it would only load payments-svc for nobody.
    fn abandoned(&self) -> bool {
        self.reply.is_closed()
    }
}

/// The handle requests forward through; cheap to clone.
#[derive(Clone)]
pub struct Forwarder {
    jobs: mpsc::Sender<Job>,
    /// How long an event may take, queue wait included (PAYMENTS_SVC_TIMEOUT_MS).
    deadline: Duration,
}

impl std::fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Forwarder")
            .field("queued", &(self.jobs.max_capacity() - self.jobs.capacity()))
            .finish()
    }
}

impl Forwarder {
    /// Starts the dispatcher; it stops once every handle is dropped.
    /// Each event is answered within `deadline` of its request's arrival.
    pub fn start(
        client: PaymentsClient,
        settings: ForwardSettings,
        deadline: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (jobs, queue) = mpsc::channel(settings.max_events.max(1) * settings.max_calls.max(1) * 4);
        tokio::spawn(dispatch(client, queue, settings, metrics));
        Self { jobs, deadline }
    }

    /// Applies `event` through payments-svc: its answer, or the error that
    /// `HandleStripeEvent` would have returned. Answers by the deadline, set
    /// from when the request arrived, wherever the time goes (reading and
    /// checking the request, a full queue, every call slot busy, a slow
    /// call): past it, `deadline_exceeded`, and the event is not sent if it
    /// has not left yet. Stripe redelivers it; applying is idempotent.
    ///
    /// The span current when this is called is the delivery's: the call
    /// that carries the event continues its trace.
    pub async fn forward(&self, event: StripeEvent, arrived: Instant) -> Answer {
        let deadline = tokio::time::Instant::from_std(arrived + self.deadline);
        tokio::time::timeout_at(deadline, self.queue_and_wait(event)).await.unwrap_or_else(|_| {
            Err(Status::deadline_exceeded("payments-svc did not answer within PAYMENTS_SVC_TIMEOUT_MS"))
        })
    }

    async fn queue_and_wait(&self, event: StripeEvent) -> Answer {
        let (reply, answer) = oneshot::channel();
        self.jobs
            .send(Job { event, span: Span::current(), reply })
            .await
            .map_err(|_| Status::unavailable("the gateway is shutting down"))?;
        answer.await.unwrap_or_else(|_| Err(Status::internal("the forwarding call was dropped")))
    }
}

async fn dispatch(
    client: PaymentsClient,
    mut queue: mpsc::Receiver<Job>,
    settings: ForwardSettings,
    metrics: Arc<Metrics>,
) {
    let slots = Arc::new(Semaphore::new(settings.max_calls.max(1)));
    let mut left_over = None;
    loop {
        // Waiting for a slot first is what gathers: meanwhile events queue up.
        let Ok(slot) = Arc::clone(&slots).acquire_owned().await else { return };
        let first = match left_over.take() {
            Some(job) => job,
            None => match queue.recv().await {
                Some(job) => job,
                None => return,
            },
        };
        let (jobs, next) = gather(&mut queue, first, settings.max_events);
        left_over = next;
        if jobs.is_empty() {
            continue;
        }
        let (client, metrics) = (client.clone(), Arc::clone(&metrics));
        tokio::spawn(async move {
            call(client, jobs, &metrics).await;
            drop(slot);
        });
    }
}

/// `first` and whatever else is queued, within `max_events` and
/// [`MAX_CALL_BYTES`], less those already abandoned; also the job that did
/// not fit, if one was taken.
fn gather(queue: &mut mpsc::Receiver<Job>, first: Job, max_events: usize) -> (Vec<Job>, Option<Job>) {
    let mut bytes = first.event.raw_payload.len();
    let (mut jobs, left_over) = gather::ready(queue, first, max_events, |job| {
        bytes += job.event.raw_payload.len();
        bytes <= MAX_CALL_BYTES
    });
    jobs.retain(|job| !job.abandoned());
    (jobs, left_over)
}

/// One call for `jobs`; each gets its own answer.
async fn call(client: PaymentsClient, jobs: Vec<Job>, metrics: &Metrics) {
    let span = call_span(&jobs);
    send(client, jobs, metrics).instrument(span).await;
}

/// The span of a call: in the trace of its first traced delivery, linked
/// to the other traced ones it carries.
fn call_span(jobs: &[Job]) -> Span {
    traces::serving(jobs.iter().map(|job| &job.span), |first| {
        tracing::info_span!(
            parent: first,
            "payments.v1.Payments/HandleStripeEvents",
            otel.kind = "client",
            rpc.system = "grpc",
            rpc.service = "payments.v1.Payments",
            rpc.method = "HandleStripeEvents",
            batch.size = jobs.len(),
        )
    })
}

/// Each delivery's trace context, for payments-svc to continue; none at
/// all when no delivery is traced.
fn traceparents(jobs: &[Job]) -> Vec<String> {
    if jobs.iter().all(|job| job.span.is_disabled()) {
        return Vec::new();
    }
    jobs.iter().map(|job| traces::traceparent(&job.span).unwrap_or_default()).collect()
}

async fn send(mut client: PaymentsClient, jobs: Vec<Job>, metrics: &Metrics) {
    let traceparents = traceparents(&jobs);
    let (events, replies): (Vec<StripeEvent>, Vec<_>) = jobs.into_iter().map(|j| (j.event, j.reply)).unzip();
    let count = events.len();
    metrics.forwarded_per_call.observe(count as f64);
    let request = HandleStripeEventsRequest { events, traceparents };
    let answer = metrics.time_call("HandleStripeEvents", client.handle_stripe_events(request)).await;
    let results = match answer {
        Ok(response) => response.into_inner().results,
        Err(status) => return fail_all(replies, call_failure(status)),
    };
    if results.len() != count {
        let message = format!("payments-svc answered {} results for {count} events", results.len());
        return fail_all(replies, Status::internal(message));
    }
    for (reply, result) in replies.into_iter().zip(results) {
        let _ = reply.send(event_answer(result));
    }
}

fn fail_all(replies: Vec<oneshot::Sender<Answer>>, status: Status) {
    for reply in replies {
        let _ = reply.send(Err(status.clone()));
    }
}

/// A failed call says nothing about its events themselves: even an
/// `invalid_argument` for the call as a whole must not tell Stripe that an
/// event can never succeed, so it becomes a transient error.
fn call_failure(status: Status) -> Status {
    match status.code() {
        Code::InvalidArgument => {
            Status::internal(format!("payments-svc refused the call: {}", status.message()))
        }
        _ => status,
    }
}

/// One event's answer, from its result in the call.
fn event_answer(result: StripeEventResult) -> Answer {
    match result.result {
        Some(stripe_event_result::Result::Handled(handled)) => Ok(handled),
        Some(stripe_event_result::Result::Error(error)) => {
            Err(Status::new(Code::from(error.code), error.message))
        }
        None => Err(Status::internal("payments-svc answered without a result for an event")),
    }
}

#[cfg(test)]
mod tests {
    use payments_proto::v1::{EventError, Outcome};

    use super::*;

    fn job(payload_bytes: usize) -> (Job, oneshot::Receiver<Answer>) {
        let (reply, answer) = oneshot::channel();
        let event = StripeEvent { raw_payload: vec![b'x'; payload_bytes].into(), ..Default::default() };
        (Job { event, span: Span::none(), reply }, answer)
    }

    #[test]
    fn gathering_stops_at_the_event_limit() {
        let (sender, mut queue) = mpsc::channel(16);
        let mut answers = Vec::new();
        for _ in 0..5 {
            let (job, answer) = job(10);
            answers.push(answer);
            assert!(sender.try_send(job).is_ok());
        }
        let first = queue.try_recv().expect("queued");

        let (jobs, left_over) = gather(&mut queue, first, 3);

        assert_eq!(jobs.len(), 3);
        assert!(left_over.is_none());
        assert_eq!(queue.len(), 2, "the rest waits for the next call");
    }

    #[test]
    fn gathering_stops_before_the_byte_limit_and_keeps_the_event_that_did_not_fit() {
        let (sender, mut queue) = mpsc::channel(16);
        let mut answers = Vec::new();
        for size in [MAX_CALL_BYTES / 2, MAX_CALL_BYTES / 2, 1, 1] {
            let (job, answer) = job(size);
            answers.push(answer);
            assert!(sender.try_send(job).is_ok());
        }
        let first = queue.try_recv().expect("queued");

        let (jobs, left_over) = gather(&mut queue, first, 64);

        assert_eq!(jobs.len(), 2);
        assert_eq!(left_over.expect("kept").event.raw_payload.len(), 1);
        assert_eq!(queue.len(), 1);
    }

    #[test]
    fn each_result_becomes_the_answer_handle_stripe_event_would_give() {
        let handled = HandleStripeEventResponse { outcome: Outcome::Processed.into(), detail: String::new() };
        let ok = StripeEventResult { result: Some(stripe_event_result::Result::Handled(handled.clone())) };
        let refused = StripeEventResult {
            result: Some(stripe_event_result::Result::Error(EventError {
                code: Code::InvalidArgument as i32,
                message: "invalid argument: id is empty".into(),
            })),
        };

        assert_eq!(event_answer(ok).expect("handled"), handled);
        let error = event_answer(refused).expect_err("refused");
        assert_eq!((error.code(), error.message()), (Code::InvalidArgument, "invalid argument: id is empty"));
        assert_eq!(
            event_answer(StripeEventResult { result: None }).expect_err("no result").code(),
            Code::Internal
        );
    }

    #[test]
    fn a_refused_call_is_transient_for_its_events() {
        assert_eq!(call_failure(Status::invalid_argument("too many")).code(), Code::Internal);
        assert_eq!(call_failure(Status::unavailable("down")).code(), Code::Unavailable);
    }
}
