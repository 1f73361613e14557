//! Reading Stripe's lists for the sync and the check: one page at a time,
//! retried with patience when Stripe is unavailable or rate-limits, and
//! each listed object planned by the domain ([`payments_domain::sync`]).

use std::time::Duration;

use bytes::Bytes;
use payments_domain::rules::Policy;
use payments_domain::sync::{self, Listed, SessionState, SkipReason};
use payments_domain::write::SYNC;
use payments_proto::stripe::{self as parse, ListPage};
use serde::Deserialize;

use crate::stripe::{StripeApi, StripeError, StripeList, Window};

/// Attempts of one page before the sync stops (its checkpoint kept): each
/// attempt is itself a call with Stripe's retries within its budget.
const PAGE_ATTEMPTS: u32 = 8;
/// First wait between attempts of a page; doubled up to [`MAX_PAGE_WAIT`].
const FIRST_PAGE_WAIT: Duration = Duration::from_secs(1);
const MAX_PAGE_WAIT: Duration = Duration::from_secs(30);

/// One listed object, planned.
#[derive(Debug, Clone)]
pub struct Planned {
    /// `cs_…`, `re_…` or `dp_…`.
    pub id: String,
    /// Stripe's `created` (Unix seconds), when readable.
    pub created: Option<i64>,
    pub listed: Listed,
}

/// One page of `list`, asked again while Stripe is unavailable (network,
/// 5xx, 429 beyond what one call waits for), with growing waits.
pub async fn read_page(
    stripe: &StripeApi,
    list: StripeList,
    window: Window,
    starting_after: Option<&str>,
    limit: u8,
) -> Result<ListPage, StripeError> {
    let mut wait = FIRST_PAGE_WAIT;
    let mut attempt = 1;
    loop {
        match stripe.list_page(list, window, starting_after, limit).await {
            Err(StripeError::Unavailable(reason)) if attempt < PAGE_ATTEMPTS => {
                tracing::warn!(
                    list = list.as_str(),
                    attempt,
                    %reason,
                    wait_ms = wait.as_millis() as u64,
                    "Stripe unavailable for a list page; asking again"
                );
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(MAX_PAGE_WAIT);
                attempt += 1;
            }
            answer => return answer,
        }
    }
}

/// What one object of `list` means under `policy`.
pub fn plan(list: StripeList, json: &Bytes, policy: Policy) -> Planned {
    let planned = match list {
        StripeList::CheckoutSessions => parse::parse_listed_session(json).map(|listed| {
            let state = SessionState::from(listed.session.status());
            let session = listed.session.into();
            let planned = sync::plan_session(&session, state, listed.intent_status.as_deref(), policy);
            (session.id, session.created, planned)
        }),
        StripeList::Refunds => parse::parse_listed_refund(json).map(|(refund, created)| {
            let id = refund.id.clone();
            (id, Some(created), sync::plan_reversal(refund.into(), created, SYNC))
        }),
        StripeList::Disputes => parse::parse_listed_dispute(json).map(|(dispute, created)| {
            let id = dispute.id.clone();
            (id, Some(created), sync::plan_reversal(dispute.into(), created, SYNC))
        }),
    };
    match planned {
        Ok((id, created, listed)) => Planned { id, created, listed },
        Err(error) => {
            let Identified { id, created } = serde_json::from_slice(json).unwrap_or_default();
            tracing::warn!(list = list.as_str(), id, %error, "a listed object cannot be read; skipped");
            Planned { id, created, listed: Listed::Skip(SkipReason::Unreadable) }
        }
    }
}

/// What any listed object has, to page past one that cannot be read.
#[derive(Debug, Default, Deserialize)]
struct Identified {
    #[serde(default)]
    id: String,
    created: Option<i64>,
}
