//! Group commit: concurrent `HandleStripeEvent` calls are gathered into one
//! database transaction, written with multi-row statements, and each caller
//! gets its own outcome once that transaction has committed.
//!
//! One transaction per event cannot go faster than the database can commit;
//! a batch pays for one commit (one fsync) for all of its events. A batch is
//! whatever calls are waiting when a worker is free, up to
//! `PAYMENTS_BATCH_MAX`, optionally waiting `PAYMENTS_BATCH_WAIT_US` for more.
//!
//! The guarantees are those of [`apply::handle_event`], which stays the
//! reference: the same rows, the same outcomes. Within a batch an event
//! delivered several times is applied once (the later copies answer
//! duplicate), and the events and sessions are written in sorted order so
//! that concurrent batches take their row locks in the same order. If any
//! statement of a batch fails (a second paid purchase of one course, which
//! needs the flagged path; a lost connection) the whole transaction rolls
//! back and its events are applied one by one through `handle_event`: one
//! bad event never fails its batch-mates, and a database outage fails only
//! the calls it touches, which Stripe retries.

use std::collections::hash_map::RandomState;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::{BuildHasher, Hasher};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use sea_orm::{DatabaseConnection, DbBackend, DbErr, TransactionTrait};
use service_kit::{gather, traces};
use tokio::sync::{Mutex, mpsc, oneshot};
use tracing::field::Empty;
use tracing::{Instrument as _, Span};

use payments_domain::event::{EventStatus, IncomingEvent};
use payments_domain::purchase::{NewPurchase, PurchaseStatus};
use payments_domain::reversals::Reversal;
use payments_domain::rules::{self, Outcome, Plan, Policy};

use crate::error::Error;
use crate::fulfil::apply;
use crate::metrics::Metrics;
use crate::store::batch_pg::{self, Candidate};
use crate::store::events::{Settled, SettledRow};
use crate::store::feed::{self, Touch, Touched};
use crate::store::purchases::PurchaseWrite;
use crate::store::reversals::{self, Fact};
use crate::store::signals::FeedSignals;
use crate::store::{events, purchases};

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
        policy: Policy,
        settings: BatchSettings,
        metrics: Arc<Metrics>,
    ) -> Self {
        let (jobs, queue) = mpsc::channel(settings.max_size.max(1) * settings.workers.max(1) * 4);
        let queue = Arc::new(Mutex::new(queue));
        for _ in 0..settings.workers.max(1) {
            let worker =
                Worker { db: db.clone(), signals: signals.clone(), policy, metrics: Arc::clone(&metrics) };
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
    policy: Policy,
    metrics: Arc<Metrics>,
}

impl Worker {
    async fn work(self, settings: BatchSettings, queue: Arc<Mutex<mpsc::Receiver<Job>>>) {
        let mut writer = match self.db.get_database_backend() {
            DbBackend::Postgres => {
                Some(batch_pg::Writer::new(self.db.get_postgres_connection_pool().clone()))
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
            self.run(writer.as_mut(), jobs).instrument(span).await;
        }
    }

    /// Applies `jobs` as one batch, through `writer` on PostgreSQL, and
    /// answers each of them.
    async fn run(&self, writer: Option<&mut batch_pg::Writer>, jobs: Vec<Job>) {
        let events: Vec<&IncomingEvent> = jobs.iter().map(|job| &job.event).collect();
        match apply_batch(&self.db, writer, self.policy, &events).await {
            Ok((outcomes, published)) => {
                if published > 0 {
                    self.signals.announce();
                }
                Span::current().record("outcome", "committed");
                for (job, outcome) in jobs.into_iter().zip(outcomes) {
                    let _ = job.reply.send(Ok(outcome));
                }
            }
            Err(error) => {
                self.metrics.batch_fallbacks.inc();
                Span::current().record("outcome", "rolled back; applied one by one");
                tracing::info!(size = jobs.len(), %error, "batch rolled back; applying its events one by one");
                for job in jobs {
                    let result = apply::handle_event(&self.db, &self.signals, &job.event, self.policy).await;
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

/// One transaction for every event; the outcome of each, in order, and how
/// many changes it published.
///
/// It records and settles every event (see [`events::record_settled`]),
/// learning which this batch applied and which were settled before, and
/// writes the purchases and reversal facts of the applied ones, and
/// publishes the changes they make to the feed. A batch of checkouts on
/// PostgreSQL is one statement through the worker's `writer`
/// ([`batch_pg`]); anything else is statements in a transaction.
async fn apply_batch(
    db: &DatabaseConnection,
    writer: Option<&mut batch_pg::Writer>,
    policy: Policy,
    events: &[&IncomingEvent],
) -> Result<(Vec<Outcome>, u64), DbErr> {
    let (token, now) = (batch_token(), Utc::now());
    let mut deliveries: BTreeMap<&str, (&IncomingEvent, i32)> = BTreeMap::new();
    for event in events {
        deliveries.entry(event.id.as_str()).or_insert((event, 0)).1 += 1;
    }
    let planned: Vec<(&IncomingEvent, i32, Planned)> = deliveries
        .values()
        .map(|(event, count)| (*event, *count, Planned::from(rules::plan(event, policy))))
        .collect();
    let settled: Vec<Settled<'_>> = planned
        .iter()
        .map(|(event, deliveries, plan)| Settled {
            event,
            deliveries: *deliveries,
            status: plan.status,
            error: plan.error.as_ref(),
        })
        .collect();
    let candidates: Vec<Candidate<'_>> = planned
        .iter()
        .filter_map(|(event, _, plan)| {
            let (purchase, status) = plan.purchase.as_ref()?;
            Some(Candidate { event_id: &event.id, purchase, status: *status })
        })
        .collect();
    let facts: Vec<Fact<'_>> = planned
        .iter()
        .filter_map(|(event, _, plan)| {
            Some(Fact { event_id: &event.id, reversal: plan.reversal.as_ref()?, created: event.created })
        })
        .collect();

    let (rows, published) = match writer {
        Some(writer) if facts.is_empty() => {
            writer.settle_and_fulfil(&settled, &candidates, token, now).await?
        }
        _ => settle_and_fulfil(db, &settled, &candidates, &facts, policy, token, now).await?,
    };
    let applied_now = applied_by(&rows, token);
    let mut outcomes = HashMap::new();
    for (event, _, plan) in &planned {
        let applied = applied_now.contains(event.id.as_str());
        let outcome = if applied { plan.outcome.clone() } else { Outcome::Duplicate };
        if applied {
            apply::log_outcome(event, &outcome);
        }
        outcomes.insert(event.id.as_str(), outcome);
    }
    Ok((answers(events, &outcomes), published))
}

/// [`batch_pg::Writer::settle_and_fulfil`] as statements in one
/// transaction, that also records reversal facts: for SQLite, and for
/// PostgreSQL batches with refunds or disputes.
async fn settle_and_fulfil(
    db: &DatabaseConnection,
    settled: &[Settled<'_>],
    candidates: &[Candidate<'_>],
    facts: &[Fact<'_>],
    policy: Policy,
    token: i64,
    now: DateTime<Utc>,
) -> Result<(Vec<SettledRow>, u64), DbErr> {
    let txn = db.begin().await?;
    if !facts.is_empty() {
        feed::lock_for_facts(&txn).await?;
    }
    let rows = events::record_settled(&txn, settled, token, now).await?;
    let applied_now = applied_by(&rows, token);
    let mut purchases: BTreeMap<&str, (&NewPurchase, PurchaseStatus)> = BTreeMap::new();
    for candidate in candidates.iter().filter(|candidate| applied_now.contains(candidate.event_id)) {
        merge(&mut purchases, candidate.purchase, candidate.status);
    }
    let writes: Vec<PurchaseWrite<'_>> = purchases
        .values()
        .map(|(purchase, status)| PurchaseWrite { purchase, status: *status, needs_refund: false })
        .collect();
    purchases::advance_all(&txn, &writes, now).await?;
    let facts: Vec<Fact<'_>> =
        facts.iter().filter(|fact| applied_now.contains(fact.event_id)).copied().collect();
    reversals::record(&txn, &facts, now).await?;
    let published =
        feed::publish(&txn, &touches(candidates, &facts, &applied_now), policy.dispute_access, now).await?;
    txn.commit().await?;
    Ok((rows, published as u64))
}

/// What the applied candidates and facts touched, each with its event as
/// the cause; for a session, the event whose status was written comes first.
fn touches<'a>(
    candidates: &[Candidate<'a>],
    facts: &[Fact<'a>],
    applied_now: &HashSet<&str>,
) -> Vec<Touched<'a>> {
    let mut applied: Vec<&Candidate<'a>> =
        candidates.iter().filter(|candidate| applied_now.contains(candidate.event_id)).collect();
    applied.sort_by_key(|candidate| std::cmp::Reverse(candidate.status.rank()));
    let sessions = applied.into_iter().map(|candidate| Touched {
        touch: Touch::Session(&candidate.purchase.checkout_session_id),
        cause: candidate.event_id,
    });
    let payments = facts.iter().map(|fact| Touched {
        touch: Touch::Payment {
            payment_intent_id: fact.reversal.payment_intent_id.as_deref(),
            charge_id: fact.reversal.charge_id.as_deref(),
        },
        cause: fact.event_id,
    });
    sessions.chain(payments).collect()
}

/// The events of `rows` that the batch holding `token` applied; the others
/// were settled before it.
fn applied_by(rows: &[SettledRow], token: i64) -> HashSet<&str> {
    rows.iter().filter(|row| row.settled_by == Some(token)).map(|row| row.event_id.as_str()).collect()
}

/// A random token per batch, marking the rows it settles. Random rather
/// than a clock, so that batches of different replicas never share one.
fn batch_token() -> i64 {
    static COUNTER: AtomicI64 = AtomicI64::new(0);
    // RandomState is seeded from the operating system once per process.
    let mut hasher = RandomState::new().build_hasher();
    hasher.write_i64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.write_u32(std::process::id());
    hasher.finish() as i64
}

/// What a plan means for a batch: the event's status and reason, its
/// outcome if applied, and the purchase or reversal fact it writes.
struct Planned {
    status: EventStatus,
    error: Option<serde_json::Value>,
    outcome: Outcome,
    purchase: Option<(NewPurchase, PurchaseStatus)>,
    reversal: Option<Reversal>,
}

impl From<Plan> for Planned {
    fn from(plan: Plan) -> Self {
        let (outcome, purchase, reversal) = match plan {
            Plan::Record(purchase, status) => (Outcome::Processed, Some((purchase, status)), None),
            Plan::Reverse { reversal, .. } => (Outcome::Processed, None, Some(reversal)),
            Plan::Acknowledge => (Outcome::Processed, None, None),
            Plan::Ignore(reason) => (Outcome::Ignored { reason }, None, None),
            Plan::Fail(error) => (Outcome::Failed { error }, None, None),
        };
        let (status, error) = outcome.settled_as();
        Self { status, error, outcome, purchase, reversal }
    }
}

/// Two events of one session in a batch become one write at the higher
/// status: what applying both, in either order, would leave.
fn merge<'a>(
    purchases: &mut BTreeMap<&'a str, (&'a NewPurchase, PurchaseStatus)>,
    purchase: &'a NewPurchase,
    status: PurchaseStatus,
) {
    let entry = purchases.entry(purchase.checkout_session_id.as_str()).or_insert((purchase, status));
    if entry.1.merge(status) != entry.1 {
        *entry = (purchase, status);
    }
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
    use payments_domain::purchase::PurchaseSource;
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

    #[test]
    fn two_events_of_one_session_write_the_more_advanced_status() {
        let purchase = |hint: &str| NewPurchase {
            source: PurchaseSource::Webhook,
            user_id: "u".into(),
            course_id: "c".into(),
            checkout_session_id: "cs_1".into(),
            payment_intent_id: Some(hint.into()),
            amount_total: None,
            currency: None,
        };
        let (paid, pending) = (purchase("Paid"), purchase("Pending"));
        for order in [
            [(&paid, PurchaseStatus::Paid), (&pending, PurchaseStatus::Pending)],
            [(&pending, PurchaseStatus::Pending), (&paid, PurchaseStatus::Paid)],
        ] {
            let mut purchases = BTreeMap::new();
            for (purchase, status) in order {
                merge(&mut purchases, purchase, status);
            }
            let (written, status) = purchases["cs_1"];
            assert_eq!(status, PurchaseStatus::Paid);
            assert_eq!(written.payment_intent_id.as_deref(), Some("Paid"));
        }
    }

    #[test]
    fn batch_tokens_do_not_repeat() {
        let tokens: HashSet<i64> = (0..10_000).map(|_| batch_token()).collect();
        assert_eq!(tokens.len(), 10_000);
    }
}
