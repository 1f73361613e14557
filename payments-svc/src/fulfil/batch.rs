//! Group commit: concurrent `HandleStripeEvent` calls are gathered into one
//! database transaction, written with multi-row statements, and each caller
//! gets its own outcome once that transaction has committed.
//!
//! One transaction per event cannot go faster than the database can commit;
//! a batch pays for one commit (one fsync) for all of its events. A batch is
//! whatever calls are waiting when a worker is free, up to
//! `PAYMENTS_BATCH_MAX`, optionally waiting `PAYMENTS_BATCH_WAIT_US` for more.
//!
//! A batch goes through the one write path ([`crate::store::write`]) like
//! every other: its events are applied in the order they arrived, exactly
//! as batches of one would be, so it ends in the same rows and the same
//! change feed. Within a batch an event delivered several times is applied
//! once (the later copies answer duplicate). If the transaction fails (a
//! lost connection, say), its events are applied one by one through
//! [`apply::handle_event`]: one bad event never fails its batch-mates. When
//! the connection or the server failed instead (it stopped answering, went
//! away, or turned read-only), one at a time would fail the same way, so
//! every call of the batch is answered unavailable at once, and Stripe
//! retries them.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use payments_domain::event::IncomingEvent;
use payments_domain::rules::{Outcome, Policy};
use payments_domain::write::Input;
use sea_orm::{DatabaseConnection, DbBackend};
use service_kit::{gather, traces};
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::field::Empty;
use tracing::{Instrument as _, Span};

use crate::error::Error;
use crate::fulfil::apply;
use crate::metrics::{ConnectionLabels, Metrics};
use crate::store::health::DatabaseHealth;
use crate::store::signals::FeedSignals;
use crate::store::write_pg::{self, Writer};
use crate::store::{self, write};

/// The label of writers' reconnects.
const WRITER: ConnectionLabels = ConnectionLabels { connection: "writer" };

/// How calls are gathered into transactions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchSettings {
    /// Most events in one transaction (1 turns group commit off).
    pub max_size: usize,
    /// How long a worker waits for more events once it has one; zero takes
    /// only what is already waiting (calls queue up while a batch commits).
    pub max_wait: Duration,
    /// Transactions in progress at once.
    pub workers: usize,
}

struct Job {
    event: IncomingEvent,
    /// The event's span, which the batch's span links to.
    span: Span,
    reply: oneshot::Sender<Result<Outcome, Error>>,
}

/// The handle calls go through; cheap to clone.
#[derive(Clone)]
pub struct EventBatcher {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for EventBatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventBatcher")
            .field("queued", &(self.jobs.max_capacity() - self.jobs.capacity()))
            .finish()
    }
}

impl EventBatcher {
    /// Starts the workers. They stop once every handle is dropped and the
    /// queue is empty.
    pub fn start(
        db: DatabaseConnection,
        signals: FeedSignals,
        health: DatabaseHealth,
        policy: Policy,
        settings: BatchSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (jobs, queue) = mpsc::channel(settings.max_size.max(1) * settings.workers.max(1) * 4);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..settings.workers.max(1) {
            let worker = Worker {
                db: db.clone(),
                signals: signals.clone(),
                health: health.clone(),
                policy,
                metrics: Arc::clone(&metrics),
            };
            tokio::spawn(worker.work(settings, Arc::clone(&queue)));
        }
        Self { jobs }
    }

    /// Queues `event` for the next batch; the returned future answers once
    /// it is committed. Submitting several events before awaiting any lets
    /// them share a batch.
    pub async fn submit(
        &self,
        event: IncomingEvent,
        span: Span,
    ) -> impl Future<Output = Result<Outcome, Error>> + use<> {
        let (reply, answer) = oneshot::channel();
        let queued = self.jobs.send(Job { event, span, reply }).await;
        async move {
            queued.map_err(|_| Error::Stopping)?;
            answer.await.map_err(|_| Error::Stopping)?
        }
    }
}

/// What one group-commit worker works with.
struct Worker {
    db: DatabaseConnection,
    /// Told after each commit that published changes.
    signals: FeedSignals,
    /// Told when a batch fails, so that health probes the database now;
    /// bounds every write.
    health: DatabaseHealth,
    policy: Policy,
    metrics: Arc<Metrics>,
}

impl Worker {
    async fn work(self, settings: BatchSettings, queue: Arc<Mutex<mpsc::Receiver<Job>>>) {
        let mut writer = match self.db.get_database_backend() {
            DbBackend::Postgres => {
                Some(Writer::new(self.db.get_postgres_connection_pool().clone(), self.health.clone()))
            }
            _ => None,
        };
        loop {
            let jobs = {
                let mut queue = queue.lock().await;
                let Some(first) = queue.recv().await else { return };
                gather(&mut queue, first, settings).await
            };
            self.metrics.batch_size.observe(jobs.len() as f64);
            let span = batch_span(&jobs, self.db.get_database_backend());
            let opened = writer.as_ref().map_or(0, Writer::connections_opened);
            self.run(writer.as_mut(), jobs).instrument(span).await;
            let reopened = writer.as_ref().map_or(0, Writer::connections_opened) - opened;
            if reopened > 0 && opened > 0 {
                self.metrics.reconnects.get_or_create(&WRITER).inc_by(reopened);
            }
        }
    }

    /// Applies `jobs` as one batch, through `writer` on PostgreSQL, and
    /// answers each of them.
    async fn run(&self, writer: Option<&mut Writer>, jobs: Vec<Job>) {
        let inputs: Vec<Input<'_>> =
            jobs.iter().map(|job| Input::Event { event: &job.event, deliveries: 1 }).collect();
        let applied = match writer {
            Some(writer) => writer.apply(&inputs, self.policy, Utc::now()).await.map_err(write_pg::db_error),
            None => self.health.bounded(write::apply(&self.db, &self.signals, &inputs, self.policy)).await,
        };
        match applied {
            Ok(decision) => {
                if !decision.changes.is_empty() {
                    self.signals.announce();
                }
                apply::log_decision(&decision);
                Span::current().record("outcome", "committed");
                let events: Vec<&IncomingEvent> = jobs.iter().map(|job| &job.event).collect();
                let outcomes = answers(&events, &decision.outcomes);
                drop(decision);
                drop(inputs);
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(error) if store::is_connection_lost(&error) => {
                drop(inputs);
                self.health.failed();
                Span::current().record("outcome", "connection lost; rolled back");
                tracing::warn!(size = jobs.len(), %error, "database connection lost; batch rolled back, its calls answered unavailable");
                for job in jobs {
                    let _ = job.reply.send(Err(Error::Unavailable));
                }
            }
            Err(error) => {
                drop(inputs);
                self.health.failed();
                self.metrics.batch_fallbacks.inc();
                Span::current().record("outcome", "rolled back; applied one by one");
                tracing::info!(size = jobs.len(), %error, "batch rolled back; applying its events one by one");
                for job in jobs {
                    let applied = apply::handle_event(&self.db, &self.signals, &job.event, self.policy);
                    let result = self.health.bounded(applied).await;
                    let _ = job.reply.send(result.map_err(Error::from));
                }
            }
        }
    }
}

/// The span of one transaction: in the trace of its first traced event,
/// linked to every other traced event it applies.
fn batch_span(jobs: &[Job], backend: DbBackend) -> Span {
    let system = if backend == DbBackend::Postgres { "postgresql" } else { "sqlite" };
    traces::serving(jobs.iter().map(|job| &job.span), |first| {
        tracing::info_span!(
            parent: first,
            "group commit",
            db.system = system,
            batch.size = jobs.len(),
            outcome = Empty,
        )
    })
}

/// `first` and whatever else is waiting, within the settings' bounds.
async fn gather(queue: &mut mpsc::Receiver<Job>, first: Job, settings: BatchSettings) -> Vec<Job> {
    let (mut jobs, _) = gather::ready(queue, first, settings.max_size, |_| true);
    if settings.max_wait.is_zero() {
        return jobs;
    }
    let deadline = tokio::time::Instant::now() + settings.max_wait;
    while jobs.len() < settings.max_size {
        match tokio::time::timeout_at(deadline, queue.recv()).await {
            Ok(Some(job)) => jobs.push(job),
            Ok(None) | Err(_) => break,
        }
    }
    jobs
}

/// Each call's answer: the first copy of an event gets its outcome, later
/// copies in the same batch are duplicates of it (or the same failure).
fn answers(events: &[&IncomingEvent], outcomes: &HashMap<&str, Outcome>) -> Vec<Outcome> {
    let mut answered: HashSet<&str> = HashSet::new();
    events
        .iter()
        .map(|event| {
            let outcome = outcomes.get(event.id.as_str()).cloned().unwrap_or(Outcome::Duplicate);
            if answered.insert(event.id.as_str()) {
                return outcome;
            }
            match outcome {
                Outcome::Failed { .. } => outcome,
                _ => Outcome::Duplicate,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use payments_domain::rules::{Failure, FailureCode};

    fn event(id: &str) -> IncomingEvent {
        IncomingEvent {
            id: id.into(),
            event_type: "checkout.session.completed".into(),
            created: 1,
            livemode: false,
            api_version: None,
            session: None,
            reversal: None,
            payload: "{}".into(),
            unstorable: Vec::new(),
        }
    }

    #[test]
    fn later_copies_of_an_event_in_a_batch_are_duplicates_of_the_first() {
        let (a, b) = (event("evt_a"), event("evt_b"));
        let failure = Failure::new(FailureCode::InvalidMetadata, "m");
        let outcomes = HashMap::from([
            ("evt_a", Outcome::Processed),
            ("evt_b", Outcome::Failed { error: failure.clone() }),
        ]);

        let answered = answers(&[&a, &b, &a, &b], &outcomes);

        assert_eq!(
            answered,
            [
                Outcome::Processed,
                Outcome::Failed { error: failure.clone() },
                Outcome::Duplicate,
                Outcome::Failed { error: failure }
            ]
        );
    }
}
