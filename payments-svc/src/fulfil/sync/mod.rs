//! `payments-svc sync`: imports every Checkout Session, refund and dispute
//! Stripe created within a window, through the one write path (cause
//! `sync`), so that the end state is the one the webhooks would have
//! produced: for adopting the service on an account with history, and for
//! rebuilding a lost database from Stripe.
//!
//! Each list is read newest first, a page at a time, within
//! STRIPE_API_MAX_RPS ([`lists`]); each page is applied in one batch and
//! then checkpointed ([`crate::store::checkpoints`]), so a sync stopped
//! anywhere and run again with the same arguments continues after the last
//! page it applied, and a finished one run again starts afresh. The order
//! does not matter: statuses only move up, refunds and disputes are facts
//! that wait for their purchase, and of two payments for one course the
//! session Stripe created first keeps it. So a second run changes nothing.
//!
//! [`check`] compares instead of writing.

pub mod check;
pub mod lists;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::Utc;
use payments_domain::rules::{Plan, Policy};
use payments_domain::sync::Listed;
use payments_domain::write::{Decision, Input, SYNC, fact_key};
use sea_orm::{DatabaseConnection, DbErr, TransactionTrait};
use serde::Serialize;

use crate::store::entities::sync_checkpoint;
use crate::store::signals::FeedSignals;
use crate::store::{checkpoints, write};
use crate::stripe::{StripeApi, StripeError, StripeList, Window};
use lists::Planned;

/// Objects per page: Stripe's largest.
pub const PAGE_SIZE: u8 = 100;

/// What to read of Stripe's lists: the sync's and the check's.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    /// The sessions' window. Refunds and disputes are read from its start
    /// until `now`: what happened to those purchases since counts too.
    pub window: Window,
    /// When the run started (Unix seconds).
    pub now: i64,
    pub page_size: u8,
}

/// What to sync.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Resolved from the arguments when a run starts afresh; a resumed run
    /// reads the windows its checkpoints kept.
    pub reading: Reading,
    /// The arguments as given: a run with the same ones resumes.
    pub arguments: String,
    /// Decide and count, write nothing (no checkpoint either).
    pub dry_run: bool,
}

impl Reading {
    /// The window `list` is read in.
    pub fn window_of(&self, list: StripeList) -> Window {
        match list {
            StripeList::CheckoutSessions => self.window,
            StripeList::Refunds | StripeList::Disputes => Window {
                created_gte: self.window.created_gte,
                created_lte: self.now.max(self.window.created_lte),
            },
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Stripe(#[from] StripeError),
    #[error(transparent)]
    Database(#[from] DbErr),
}

/// What one list's objects came to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Counts {
    pub pages: u64,
    pub seen: u64,
    /// A purchase, refund or dispute (in a state) recorded for the first time.
    pub new: u64,
    /// A purchase already recorded that this sync changed.
    pub changed: u64,
    pub unchanged: u64,
    /// Sessions without `courseId`/`userId` metadata: listed, never guessed.
    pub without_metadata: u64,
    /// Not applied, for the reasons in [`Summary::skipped`].
    pub skipped: u64,
}

impl Counts {
    fn add(&mut self, other: &Self) {
        self.pages += other.pages;
        self.seen += other.seen;
        self.new += other.new;
        self.changed += other.changed;
        self.unchanged += other.unchanged;
        self.without_metadata += other.without_metadata;
        self.skipped += other.skipped;
    }
}

/// What a sync found and did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub dry_run: bool,
    /// Whether it continued a sync stopped before.
    pub resumed: bool,
    pub created_gte: i64,
    pub created_lte: i64,
    /// By list.
    pub lists: BTreeMap<&'static str, Counts>,
    pub total: Counts,
    /// Objects not applied, by reason.
    pub skipped: BTreeMap<&'static str, u64>,
    /// The sessions without metadata, by id.
    pub without_metadata: Vec<String>,
    /// Changes of access published on the change feed.
    pub changes_published: u64,
    pub seconds: f64,
}

/// Where a list stands after a page, for a progress display.
#[derive(Debug, Clone)]
pub struct Progress {
    pub list: StripeList,
    pub pages: u64,
    pub objects: u64,
    /// How much of the window the list has covered, by the `created` of
    /// the last object read (lists come newest first), when known.
    pub done: Option<f64>,
    /// Since this run started on the list.
    pub elapsed: Duration,
    /// Whether that was the list's last page.
    pub finished: bool,
}

/// Syncs the window of `options`, reporting each page to `progress`.
pub async fn run(
    db: &DatabaseConnection,
    signals: &FeedSignals,
    stripe: &StripeApi,
    policy: Policy,
    options: &SyncOptions,
    progress: &mut (dyn FnMut(&Progress) + Send),
) -> Result<Summary, SyncError> {
    let started = Instant::now();
    let (resumed, checkpoints) = starting_points(db, options).await?;
    let first = &checkpoints[0];
    let mut summary = Summary {
        dry_run: options.dry_run,
        resumed,
        created_gte: first.created_gte,
        created_lte: first.created_lte,
        ..Summary::default()
    };
    for (list, checkpoint) in StripeList::ALL.into_iter().zip(checkpoints) {
        let counts = if checkpoint.finished {
            Counts::default()
        } else {
            let mut reader = ListSync { db, signals, stripe, policy, options, list, checkpoint };
            reader.run(&mut summary, progress).await?
        };
        summary.total.add(&counts);
        summary.lists.insert(list.as_str(), counts);
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// Each list's checkpoint to start from, and whether that resumes a sync
/// stopped before: one with the same arguments not finished on every list.
/// Otherwise every list starts afresh (a dry run writes no checkpoint).
async fn starting_points(
    db: &DatabaseConnection,
    options: &SyncOptions,
) -> Result<(bool, Vec<sync_checkpoint::Model>), DbErr> {
    let stored: HashMap<String, sync_checkpoint::Model> =
        checkpoints::all(db).await?.into_iter().map(|row| (row.list.clone(), row)).collect();
    let same: Vec<Option<&sync_checkpoint::Model>> = StripeList::ALL
        .iter()
        .map(|list| stored.get(list.as_str()).filter(|row| row.arguments == options.arguments))
        .collect();
    let unfinished = same.iter().all(Option::is_some) && same.iter().flatten().any(|row| !row.finished);
    if unfinished && !options.dry_run {
        return Ok((true, same.into_iter().flatten().cloned().collect()));
    }
    let fresh: Vec<sync_checkpoint::Model> = StripeList::ALL
        .iter()
        .map(|list| sync_checkpoint::Model {
            list: list.as_str().to_owned(),
            arguments: options.arguments.clone(),
            created_gte: options.reading.window_of(*list).created_gte,
            created_lte: options.reading.window_of(*list).created_lte,
            starting_after: None,
            pages: 0,
            objects: 0,
            finished: false,
            updated_at: Utc::now(),
        })
        .collect();
    if !options.dry_run {
        for checkpoint in &fresh {
            checkpoints::save(db, checkpoint).await?;
        }
    }
    Ok((false, fresh))
}

/// One list, from its checkpoint to its end.
struct ListSync<'a> {
    db: &'a DatabaseConnection,
    signals: &'a FeedSignals,
    stripe: &'a StripeApi,
    policy: Policy,
    options: &'a SyncOptions,
    list: StripeList,
    checkpoint: sync_checkpoint::Model,
}

impl ListSync<'_> {
    async fn run(
        &mut self,
        summary: &mut Summary,
        progress: &mut (dyn FnMut(&Progress) + Send),
    ) -> Result<Counts, SyncError> {
        let started = Instant::now();
        let window =
            Window { created_gte: self.checkpoint.created_gte, created_lte: self.checkpoint.created_lte };
        let mut counts = Counts::default();
        loop {
            let after = self.checkpoint.starting_after.clone();
            let page = lists::read_page(
                self.stripe,
                self.list,
                window,
                after.as_deref(),
                self.options.reading.page_size,
            )
            .await?;
            let planned: Vec<Planned> =
                page.data.iter().map(|json| lists::plan(self.list, json, self.policy)).collect();
            self.apply(&planned, &mut counts, summary).await?;
            counts.pages += 1;
            let last = planned.last();
            self.checkpoint.pages += 1;
            self.checkpoint.objects += planned.len() as i64;
            if let Some(last) = last {
                self.checkpoint.starting_after = Some(last.id.clone());
            }
            self.checkpoint.finished = !page.has_more || last.is_none();
            if !self.options.dry_run {
                checkpoints::save(self.db, &self.checkpoint).await?;
            }
            progress(&Progress {
                list: self.list,
                pages: self.checkpoint.pages as u64,
                objects: self.checkpoint.objects as u64,
                done: last.and_then(|last| last.created).map(|created| covered(window, created)),
                elapsed: started.elapsed(),
                finished: self.checkpoint.finished,
            });
            if self.checkpoint.finished {
                return Ok(counts);
            }
        }
    }

    /// Applies a page's objects in one batch (or, in a dry run, decides
    /// them in a transaction rolled back) and counts what became of each.
    async fn apply(
        &self,
        planned: &[Planned],
        counts: &mut Counts,
        summary: &mut Summary,
    ) -> Result<(), DbErr> {
        let mut inputs = Vec::new();
        for object in planned {
            counts.seen += 1;
            match &object.listed {
                Listed::Apply(plan) => inputs.push(Input::Plan { plan: plan.clone(), cause: SYNC }),
                Listed::WithoutMetadata(_) => {
                    counts.without_metadata += 1;
                    summary.without_metadata.push(object.id.clone());
                }
                Listed::Skip(reason) => {
                    counts.skipped += 1;
                    *summary.skipped.entry(reason.as_str()).or_default() += 1;
                }
            }
        }
        if inputs.is_empty() {
            return Ok(());
        }
        let decision = if self.options.dry_run {
            let txn = self.db.begin().await?;
            let decision = write::apply_in(&txn, &inputs, self.policy, Utc::now()).await?;
            txn.rollback().await?;
            decision
        } else {
            write::apply(self.db, self.signals, &inputs, self.policy).await?
        };
        summary.changes_published += decision.changes.len() as u64;
        count_outcomes(&inputs, &decision, counts);
        Ok(())
    }
}

/// New, changed or unchanged, for each input: a purchase inserted or
/// updated, a fact recorded, or nothing written for it.
fn count_outcomes(inputs: &[Input<'_>], decision: &Decision<'_>, counts: &mut Counts) {
    let purchases: HashMap<&str, bool> = decision
        .purchases
        .iter()
        .map(|write| (write.purchase.checkout_session_id.as_str(), write.id.is_none()))
        .collect();
    let facts: HashSet<_> = decision.facts.iter().map(|fact| fact_key(&fact.reversal)).collect();
    for input in inputs {
        let written = match input {
            Input::Plan { plan: Plan::Record(purchase, _), .. } => {
                purchases.get(purchase.checkout_session_id.as_str()).copied()
            }
            Input::Plan { plan: Plan::Reverse { reversal, .. }, .. } => {
                facts.contains(&fact_key(reversal)).then_some(true)
            }
            _ => None,
        };
        match written {
            Some(true) => counts.new += 1,
            Some(false) => counts.changed += 1,
            None => counts.unchanged += 1,
        }
    }
}

/// The share of `window` a newest-first list has covered once it has read
/// an object created at `created`.
fn covered(window: Window, created: i64) -> f64 {
    let span = (window.created_lte - window.created_gte).max(1) as f64;
    ((window.created_lte - created) as f64 / span).clamp(0.0, 1.0)
}
