//! Answering "did this checkout become a purchase?" and "does this user own
//! this course?".
//!
//! By session, verify is a second fulfilment path, as Stripe recommends: a
//! buyer whose webhook is late or lost still gets the course from the
//! success page. A purchase already recorded as paid is answered at once.
//! Otherwise, when an API key is configured, the session is fetched from
//! Stripe (never trusting the caller) and fulfilled through the same
//! function the webhook uses, so the two paths cannot double-fulfil: both
//! end in the one row keyed by the session id. If Stripe cannot be reached
//! the answer is what the database knows, marked unconfirmed; a Stripe outage
//! is never an error for the buyer. Stripe is asked through
//! [`SessionLookups`], at most once per session per short interval and within
//! STRIPE_API_MAX_RPS; beyond that the answer is the database's, unconfirmed.

use std::collections::HashMap;

use payments_domain::purchase::{PurchaseSource, PurchaseStatus as CheckoutStatus};
use payments_domain::reversals::Access;
use payments_domain::rules::{self, Plan, Policy};
use payments_domain::write::{Input, VERIFY};
use payments_proto::v1::{CheckoutSession, SessionStatus};
use sea_orm::{DatabaseConnection, DbErr};

use crate::fulfil::apply;
use crate::fulfil::session_lookups::{Answer, SessionLookups};
use crate::store::entities::course_purchase::{Model as Purchase, PurchaseStatus};
use crate::store::signals::FeedSignals;
use crate::store::{purchases, reversals, write};

/// What a caller asks about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    CheckoutSession(String),
    UserCourse { user_id: String, course_id: String },
}

/// The answer, whichever path produced it. The paths below find a
/// [`Purchase`]; [`verify`] answers with it [`Recorded`], its access counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict<R = Recorded> {
    /// A purchase is recorded; its status is the answer.
    Recorded(R),
    /// Stripe knows the session but it is not complete yet.
    Pending,
    /// Stripe says the session expired unpaid.
    Expired,
    NotFound,
}

/// A recorded purchase and its access, refunds and disputes counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recorded {
    pub purchase: Purchase,
    pub access: Access,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verification<R = Recorded> {
    pub verdict: Verdict<R>,
    /// Stripe could not be asked: the verdict is the database's and may change.
    pub unconfirmed: bool,
}

impl<R> Verification<R> {
    fn from_db(recorded: Option<R>, unconfirmed: bool) -> Self {
        let verdict = recorded.map_or(Verdict::NotFound, Verdict::Recorded);
        Self { verdict, unconfirmed }
    }

    fn confirmed(verdict: Verdict<R>) -> Self {
        Self { verdict, unconfirmed: false }
    }
}

/// Answers `lookup`, with the access of the purchase it finds: refunds and
/// disputes count whichever path recorded the purchase, and a session that
/// Stripe still reports as paid never gives back what they took. By user
/// and course, from the database only: several purchases resolve to the one
/// granting access, then the most advanced, then the latest.
pub async fn verify(
    db: &DatabaseConnection,
    signals: &FeedSignals,
    stripe: Option<&SessionLookups>,
    policy: Policy,
    lookup: &Lookup,
) -> Result<Verification, DbErr> {
    match lookup {
        Lookup::CheckoutSession(session_id) => {
            let found = verify_session(db, signals, stripe, policy, session_id).await?;
            let verdict = match found.verdict {
                Verdict::Recorded(purchase) => Verdict::Recorded(counted(db, purchase, policy).await?),
                Verdict::Pending => Verdict::Pending,
                Verdict::Expired => Verdict::Expired,
                Verdict::NotFound => Verdict::NotFound,
            };
            Ok(Verification { verdict, unconfirmed: found.unconfirmed })
        }
        Lookup::UserCourse { user_id, course_id } => {
            let mut all = Vec::new();
            for purchase in purchases::find_by_user_course(db, user_id, course_id).await? {
                all.push(counted(db, purchase, policy).await?);
            }
            let best = all.into_iter().max_by_key(|r| {
                (r.access.has_access, CheckoutStatus::from(r.purchase.status).rank(), r.purchase.id)
            });
            Ok(Verification::from_db(best, false))
        }
    }
}

/// One page of purchases, oldest first: those with an id above `after_id`,
/// at most `limit`, only `user_id`'s when given, each with its access; and
/// whether more follow.
pub async fn list(
    db: &DatabaseConnection,
    policy: Policy,
    user_id: Option<&str>,
    after_id: i64,
    limit: u64,
) -> Result<(Vec<Recorded>, bool), DbErr> {
    let mut page = purchases::page(db, user_id, after_id, limit + 1).await?;
    let more = page.len() as u64 > limit;
    page.truncate(limit as usize);
    let mut accesses: HashMap<i64, Access> = reversals::with_families(db, &page, policy.dispute_access)
        .await?
        .into_iter()
        .map(|(purchase, access)| (purchase.id, access))
        .collect();
    let recorded = page
        .into_iter()
        .filter_map(|purchase| Some(Recorded { access: accesses.remove(&purchase.id)?, purchase }))
        .collect();
    Ok((recorded, more))
}

async fn counted(db: &DatabaseConnection, purchase: Purchase, policy: Policy) -> Result<Recorded, DbErr> {
    let access = reversals::access_of(db, &purchase, policy.dispute_access).await?;
    Ok(Recorded { purchase, access })
}

async fn verify_session(
    db: &DatabaseConnection,
    signals: &FeedSignals,
    stripe: Option<&SessionLookups>,
    policy: Policy,
    session_id: &str,
) -> Result<Verification<Purchase>, DbErr> {
    let recorded = purchases::find_by_session(db, session_id).await?;
    let Some(stripe) =
        stripe.filter(|_| !recorded.as_ref().is_some_and(|p| p.status == PurchaseStatus::Paid))
    else {
        return Ok(Verification::from_db(recorded, false));
    };
    match stripe.checkout_session(session_id).await {
        Answer::Found(session) => fulfil_from_stripe(db, signals, &session, policy, recorded).await,
        Answer::NotFound => Ok(Verification::from_db(recorded, false)),
        Answer::Unanswered(reason) => {
            tracing::warn!(
                session_id,
                reason,
                "Stripe not asked or unavailable for verify; answering from the database"
            );
            Ok(Verification::from_db(recorded, true))
        }
    }
}

/// Applies what Stripe says about `session` through the same fulfilment as
/// the webhook, then answers from the row that results.
async fn fulfil_from_stripe(
    db: &DatabaseConnection,
    signals: &FeedSignals,
    session: &CheckoutSession,
    policy: Policy,
    recorded: Option<Purchase>,
) -> Result<Verification<Purchase>, DbErr> {
    if let Err(failure) = rules::check_livemode(session.livemode, policy) {
        tracing::warn!(session_id = %session.id, problem = %failure.message, "verify refused a session of the other livemode");
        return Ok(Verification::from_db(recorded, false));
    }
    match session.status() {
        SessionStatus::Complete => {}
        SessionStatus::Expired => {
            return Ok(Verification::confirmed(recorded.map_or(Verdict::Expired, Verdict::Recorded)));
        }
        SessionStatus::Open | SessionStatus::Unspecified => {
            return Ok(Verification::confirmed(recorded.map_or(Verdict::Pending, Verdict::Recorded)));
        }
    }
    match rules::plan_session(&session.clone().into(), None, PurchaseSource::Verify) {
        plan @ Plan::Record(..) => {
            let decision = write::apply(db, signals, &[Input::Plan { plan, cause: VERIFY }], policy).await?;
            apply::log_decision(&decision);
            let purchase = purchases::find_by_session(db, &session.id).await?;
            Ok(Verification::from_db(purchase, false))
        }
        Plan::Fail(failure) => {
            tracing::warn!(session_id = %session.id, code = %failure.code, problem = %failure.message, "verify cannot fulfil this session");
            Ok(Verification::from_db(recorded, false))
        }
        Plan::Acknowledge | Plan::Ignore(_) | Plan::Reverse { .. } => {
            Ok(Verification::from_db(recorded, false))
        }
    }
}
