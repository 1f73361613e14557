//! `payments-svc sync --check`: what Stripe says against what is granted
//! here, changing nothing. Stripe's sessions, refunds and disputes in the
//! window are decided by the domain from nothing, as a rebuild would record
//! them, and each resulting purchase is compared with the one stored here:
//! missing here, granted here but refunded or disputed at Stripe, or the
//! reverse, or another status or refunded amount.
//!
//! Purchases are compared by their session in the window; refunds and
//! disputes count from the window's start until now. A purchase recorded
//! here that Stripe does not list is not looked for.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use payments_domain::reversals::{Access, AccessStatus};
use payments_domain::rules::{Plan, Policy};
use payments_domain::sync::Listed;
use payments_domain::write::{self, Input, PurchaseWrite, SYNC, Stored};
use sea_orm::{ColumnTrait, DatabaseConnection, DbErr, EntityTrait, QueryFilter};
use serde::Serialize;

use super::{PAGE_SIZE, Reading, SyncError, lists};
use crate::metrics::Metrics;
use crate::store::entities::course_purchase;
use crate::store::health::DatabaseHealth;
use crate::store::lease;
use crate::stripe::{StripeApi, StripeList, Window};

/// Sessions looked up here per query.
const LOOKUP_CHUNK: usize = 500;
/// The scheduled check leaves out sessions this recent: their webhooks
/// may still be on the way.
const SETTLING: Duration = Duration::from_secs(3600);

/// How a purchase here differs from what Stripe says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Difference {
    /// Stripe has the purchase; this database does not.
    MissingHere,
    /// Granted here, but refunded, disputed or unpaid at Stripe.
    GrantedHereOnly,
    /// Granted at Stripe, but not here.
    GrantedAtStripeOnly,
    /// Both agree on access, not on the status.
    OtherStatus,
    /// Both agree on access and status, not on the amount refunded.
    OtherAmountRefunded,
}

impl Difference {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingHere => "missing_here",
            Self::GrantedHereOnly => "granted_here_only",
            Self::GrantedAtStripeOnly => "granted_at_stripe_only",
            Self::OtherStatus => "other_status",
            Self::OtherAmountRefunded => "other_amount_refunded",
        }
    }
}

/// A purchase's access, as one side says it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Side {
    pub status: String,
    pub has_access: bool,
    pub amount_refunded: i64,
}

/// One purchase on which the two sides differ.
#[derive(Debug, Clone, Serialize)]
pub struct Mismatch {
    pub checkout_session_id: String,
    pub user_id: String,
    pub course_id: String,
    pub difference: Difference,
    /// Absent when missing here.
    pub here: Option<Side>,
    pub stripe: Side,
}

/// What a check compared and found.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Report {
    pub created_gte: i64,
    pub created_lte: i64,
    /// Purchases Stripe's objects make, each compared.
    pub compared: u64,
    /// Sessions without metadata: no purchase to compare.
    pub without_metadata: u64,
    pub differences: Vec<Mismatch>,
    pub seconds: f64,
}

/// Compares what `reading` reads of Stripe's lists with this database.
pub async fn run(
    db: &DatabaseConnection,
    stripe: &StripeApi,
    policy: Policy,
    reading: &Reading,
) -> Result<Report, SyncError> {
    let started = Instant::now();
    let mut report = Report {
        created_gte: reading.window.created_gte,
        created_lte: reading.window.created_lte,
        ..Report::default()
    };
    let mut plans = Vec::new();
    for list in StripeList::ALL {
        let mut after: Option<String> = None;
        loop {
            let window = reading.window_of(list);
            let page = lists::read_page(stripe, list, window, after.as_deref(), reading.page_size).await?;
            for json in &page.data {
                let planned = lists::plan(list, json, policy);
                match planned.listed {
                    Listed::Apply(plan) => plans.push(plan),
                    Listed::WithoutMetadata(_) => report.without_metadata += 1,
                    Listed::Skip(_) => {}
                }
                after = Some(planned.id);
            }
            if !page.has_more || page.data.is_empty() {
                break;
            }
        }
    }
    let expected = decide_by_family(plans, policy);
    report.compared = expected.len() as u64;
    let here = stored(db, &expected).await?;
    report.differences =
        expected.iter().filter_map(|purchase| compare(purchase, here.get(session(purchase)))).collect();
    report
        .differences
        .sort_by(|a, b| (a.difference, &a.checkout_session_id).cmp(&(b.difference, &b.checkout_session_id)));
    report.seconds = started.elapsed().as_secs_f64();
    Ok(report)
}

/// What `plans` record, decided from nothing: each family (a buyer's
/// purchases of one course, and the facts of their payments) on its own, as
/// the write path would load it. One decision over everything would weigh
/// every purchase against every other. Facts of payments no listed session
/// made reach nothing here, and are left out.
fn decide_by_family(plans: Vec<Plan>, policy: Policy) -> Vec<PurchaseWrite> {
    let mut families: HashMap<(String, String), Vec<Plan>> = HashMap::new();
    let mut family_of_payment: HashMap<String, (String, String)> = HashMap::new();
    let mut facts = Vec::new();
    for plan in plans {
        match &plan {
            Plan::Record(purchase, _) => {
                let family = (purchase.user_id.clone(), purchase.course_id.clone());
                if let Some(payment) = &purchase.payment_intent_id {
                    family_of_payment.insert(payment.clone(), family.clone());
                }
                families.entry(family).or_default().push(plan);
            }
            Plan::Reverse { .. } => facts.push(plan),
            Plan::Acknowledge | Plan::Ignore(_) | Plan::Fail(_) => {}
        }
    }
    for fact in facts {
        let Plan::Reverse { reversal, .. } = &fact else { continue };
        let family = reversal.payment_intent_id.as_ref().and_then(|payment| family_of_payment.get(payment));
        if let Some(family) = family {
            families.entry(family.clone()).or_default().push(fact);
        }
    }
    families
        .into_values()
        .flat_map(|plans| {
            let inputs: Vec<Input<'_>> =
                plans.into_iter().map(|plan| Input::Plan { plan, cause: SYNC }).collect();
            write::decide(&inputs, &Stored::default(), policy).purchases
        })
        .collect()
}

fn session(purchase: &PurchaseWrite) -> &str {
    &purchase.purchase.checkout_session_id
}

/// The purchases stored here for `expected`'s sessions, by session.
async fn stored(
    db: &DatabaseConnection,
    expected: &[PurchaseWrite],
) -> Result<HashMap<String, course_purchase::Model>, DbErr> {
    use course_purchase::{Column, Entity};
    let mut found = HashMap::new();
    for chunk in expected.chunks(LOOKUP_CHUNK) {
        let rows = Entity::find()
            .filter(Column::StripeCheckoutSessionId.is_in(chunk.iter().map(session)))
            .all(db)
            .await?;
        found.extend(rows.into_iter().map(|row| (row.stripe_checkout_session_id.clone(), row)));
    }
    Ok(found)
}

/// How `here` differs from `expected`, if it does.
fn compare(expected: &PurchaseWrite, here: Option<&course_purchase::Model>) -> Option<Mismatch> {
    let stripe = side_of(expected.published?);
    let here = here.map(|row| Side {
        status: row
            .access_status
            .map_or("unpublished", |status| AccessStatus::from(status).as_str())
            .to_owned(),
        has_access: row.has_access,
        amount_refunded: row.amount_refunded,
    });
    let difference = match &here {
        None => Difference::MissingHere,
        Some(here) if here.has_access && !stripe.has_access => Difference::GrantedHereOnly,
        Some(here) if !here.has_access && stripe.has_access => Difference::GrantedAtStripeOnly,
        Some(here) if here.status != stripe.status => Difference::OtherStatus,
        Some(here) if here.amount_refunded != stripe.amount_refunded => Difference::OtherAmountRefunded,
        Some(_) => return None,
    };
    Some(Mismatch {
        checkout_session_id: expected.purchase.checkout_session_id.clone(),
        user_id: expected.purchase.user_id.clone(),
        course_id: expected.purchase.course_id.clone(),
        difference,
        here,
        stripe,
    })
}

fn side_of(access: Access) -> Side {
    Side {
        status: access.status.as_str().to_owned(),
        has_access: access.has_access,
        amount_refunded: access.amount_refunded,
    }
}

/// What the scheduled check works with.
#[derive(Debug, Clone)]
pub struct Scheduled {
    pub db: DatabaseConnection,
    pub stripe: StripeApi,
    pub policy: Policy,
    /// How often.
    pub interval: Duration,
    /// How far back.
    pub window: Duration,
    pub health: DatabaseHealth,
    pub metrics: Arc<Metrics>,
}

/// Checks every `interval` until `shutdown`, one replica at a time, and
/// sets `payments_sync_check_differences`. A replica that finds another
/// holding the lease sets it to 0, so the largest value across replicas is
/// the last check's.
pub async fn run_scheduled(scheduled: Scheduled, shutdown: tokio_util::sync::CancellationToken) {
    let Scheduled { db, stripe, policy, interval, window, health, metrics } = scheduled;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
        let now = chrono::Utc::now().timestamp();
        let span = |duration: Duration| i64::try_from(duration.as_secs()).unwrap_or(i64::MAX);
        let reading = Reading {
            window: Window {
                created_gte: now.saturating_sub(span(window)),
                created_lte: now - span(SETTLING),
            },
            now,
            page_size: PAGE_SIZE,
        };
        match lease::under(&db, &health, lease::SYNC_CHECK, run(&db, &stripe, policy, &reading)).await {
            Ok(Some(report)) => {
                let differing = report.differences.len();
                metrics.sync_check_differences.set(i64::try_from(differing).unwrap_or(i64::MAX));
                if differing > 0 {
                    let first = &report.differences[0];
                    tracing::warn!(
                        differing,
                        compared = report.compared,
                        first_session = %first.checkout_session_id,
                        first_difference = first.difference.as_str(),
                        "access here differs from Stripe's; `payments-svc sync --check` lists them, `sync` repairs"
                    );
                } else {
                    tracing::info!(compared = report.compared, "access here agrees with Stripe's");
                }
            }
            Ok(None) => {
                metrics.sync_check_differences.set(0);
                tracing::debug!("another replica is checking; skipped");
            }
            Err(error) => {
                tracing::warn!(%error, "scheduled check with Stripe failed; retrying at the next interval")
            }
        }
    }
}
