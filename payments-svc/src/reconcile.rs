//! The missed-webhook sweep: pages through Stripe's recent
//! `checkout.session.*` events and applies each one not processed here yet,
//! through the same path as a webhook delivery. Events from Stripe's API come
//! over TLS with the secret key, so no webhook signature is involved.

use chrono::{DateTime, Utc};
use sea_orm::DatabaseConnection;

use crate::apply;
use crate::db::events;
use crate::error::Error;
use crate::event::IncomingEvent;
use crate::rules::{Outcome, Policy};
use crate::stripe_api::{StripeApi, StripeError};

/// What a sweep found and did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Summary {
    /// Events Stripe listed in the window.
    pub seen: u64,
    /// Already processed or ignored here; left alone.
    pub already_processed: u64,
    /// Applied now (processed or ignored).
    pub newly_applied: u64,
    /// Could not be applied; stored as failed for `events replay`.
    pub failed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Stripe(#[from] StripeError),
    #[error(transparent)]
    Service(#[from] Error),
}

/// Sweeps events created at or after `since`, newest first, `page_size` per
/// page. Idempotent: a second sweep finds everything already processed.
pub async fn sweep(
    db: &DatabaseConnection,
    stripe: &StripeApi,
    policy: Policy,
    since: DateTime<Utc>,
    page_size: u8,
) -> Result<Summary, ReconcileError> {
    let mut summary = Summary::default();
    let mut starting_after: Option<String> = None;
    loop {
        let page = stripe.checkout_events(since.timestamp(), starting_after.as_deref(), page_size).await?;
        starting_after = page.events.last().map(|event| event.id.clone());
        for event in page.events {
            summary.seen += 1;
            let event = IncomingEvent::try_from(event)?;
            let settled = events::find(db, &event.id)
                .await
                .map_err(Error::from)?
                .is_some_and(|row| row.status.is_settled());
            if settled {
                summary.already_processed += 1;
                continue;
            }
            match apply::handle_event(db, &event, policy).await.map_err(Error::from)? {
                Outcome::Processed | Outcome::Ignored { .. } => summary.newly_applied += 1,
                Outcome::Duplicate => summary.already_processed += 1,
                Outcome::Failed { .. } => summary.failed += 1,
            }
        }
        if !page.has_more || starting_after.is_none() {
            return Ok(summary);
        }
    }
}
