//! Refunding duplicate payments: a buyer who paid twice for a course they
//! own gets the second payment back.
//!
//! Recording such a purchase records the refund it is owed in the same
//! transaction ([`crate::store::refund_requests::owe`]). The refund is then
//! asked of Stripe either by an operator (`payments-svc purchases refund`)
//! or, with `STRIPE_AUTO_REFUND_DUPLICATES=true`, by [`run`] inside
//! payments-svc. A request is claimed with a lease (one replica at a time),
//! transient failures are retried with backoff, and every attempt sends the
//! same `Idempotency-Key`, derived from the purchase, so a retry after a
//! timeout in which Stripe did refund gets that same refund back: one
//! refund per duplicate, whatever fails. The refund's own webhooks then
//! mark the duplicate refunded; the first purchase keeps its access.

use chrono::{DateTime, Duration as Span, Utc};
use sea_orm::{DatabaseConnection, DbErr};
use tokio_util::sync::CancellationToken;

use crate::store::entities::refund_request::{Model as Request, RefundRequestStatus};
use crate::store::health::DatabaseHealth;
use crate::store::{purchases, refund_requests, reversals};
use crate::stripe::{StripeApi, StripeError};
use payments_domain::reversals::DisputeAccess;

/// How often the worker looks for refunds due.
pub const POLL_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);
/// First pause after a transient failure; doubled per attempt, up to
/// [`MAX_BACKOFF_SECS`].
const FIRST_BACKOFF_SECS: i64 = 2;
const MAX_BACKOFF_SECS: i64 = 3600;

/// What one attempt did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// Stripe made (or had made) the refund.
    Refunded { refund_id: String },
    /// Transient failure; tried again later.
    RetryLater { error: String },
    /// Stripe refused it; an operator decides.
    Refused { error: String },
    /// Another replica holds the request, or it is no longer pending.
    NotClaimed,
}

/// Asks Stripe for the refunds due, until `stop`.
///
/// A pass abandoned when `health` distrusts the database's connections is
/// taken up again by the next: each refund's idempotency key makes the
/// retry of a refund Stripe already made return that refund.
pub async fn run(
    db: DatabaseConnection,
    stripe: StripeApi,
    policy: DisputeAccess,
    health: DatabaseHealth,
    stop: CancellationToken,
) {
    loop {
        if let Err(error) = health.bounded(refund_due(&db, &stripe, policy)).await {
            tracing::warn!(%error, "refunding duplicate payments failed; trying again");
        }
        tokio::select! {
            () = tokio::time::sleep(POLL_INTERVAL) => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn refund_due(db: &DatabaseConnection, stripe: &StripeApi, policy: DisputeAccess) -> Result<(), DbErr> {
    for request in refund_requests::due(db, Utc::now(), 16).await? {
        attempt(db, stripe, policy, &request).await?;
    }
    Ok(())
}

/// One attempt at `request`, if this process can claim it. A purchase that
/// grants the course by now (its first purchase was refunded or lost a
/// dispute since) is no duplicate any more and is not refunded.
#[tracing::instrument(
    name = "refund duplicate",
    skip_all,
    fields(stripe.checkout_session.id = %request.checkout_session_id),
)]
pub async fn attempt(
    db: &DatabaseConnection,
    stripe: &StripeApi,
    policy: DisputeAccess,
    request: &Request,
) -> Result<Attempt, DbErr> {
    let now = Utc::now();
    if !refund_requests::claim(db, request.id, now, lease(stripe)).await? {
        return Ok(Attempt::NotClaimed);
    }
    let session = &request.checkout_session_id;
    let purchase = purchases::find_by_session(db, session).await?;
    let grants_now = match &purchase {
        Some(purchase) => reversals::access_of(db, purchase, policy).await?.has_access,
        None => false,
    };
    if grants_now {
        let error = "no longer a duplicate: the buyer's first purchase of the course was taken back";
        refund_requests::failed(db, request.id, error, now).await?;
        tracing::warn!(session_id = %session, "refund not made: {error}");
        return Ok(Attempt::Refused { error: error.into() });
    }
    let answer = stripe.refund_payment(&request.payment_intent_id, &request.idempotency_key, session).await;
    let now = Utc::now();
    Ok(match answer {
        Ok(refund) => {
            refund_requests::requested(db, request.id, &refund.id, now).await?;
            tracing::info!(session_id = %session, refund_id = %refund.id, "duplicate payment refunded");
            Attempt::Refunded { refund_id: refund.id }
        }
        Err(error @ (StripeError::Unavailable(_) | StripeError::Malformed(_) | StripeError::OverBudget)) => {
            let error = error.to_string();
            let next = now + backoff(request.attempts);
            refund_requests::retry_later(db, request.id, &error, next, now).await?;
            tracing::warn!(session_id = %session, %error, "refund of a duplicate payment will be retried");
            Attempt::RetryLater { error }
        }
        Err(error) => {
            let error = error.to_string();
            refund_requests::failed(db, request.id, &error, now).await?;
            tracing::error!(session_id = %session, %error, "Stripe refused to refund a duplicate payment");
            Attempt::Refused { error }
        }
    })
}

/// Long enough for one Stripe call with its retries, so a lease never
/// lapses while its holder still waits on Stripe.
fn lease(stripe: &StripeApi) -> Span {
    Span::from_std(stripe.budget() * 2).unwrap_or(Span::seconds(60)) + Span::seconds(1)
}

fn backoff(attempts_before: i32) -> Span {
    let doubled = FIRST_BACKOFF_SECS.saturating_mul(1 << attempts_before.clamp(0, 20));
    Span::seconds(doubled.min(MAX_BACKOFF_SECS))
}

/// Whether a request has been carried out, for the operator.
pub fn describe(request: &Request, at: DateTime<Utc>) -> String {
    match request.status {
        RefundRequestStatus::Requested => {
            format!("refunded: {}", request.stripe_refund_id.as_deref().unwrap_or("-"))
        }
        RefundRequestStatus::Failed => {
            format!("refused by Stripe: {}", request.last_error.as_deref().unwrap_or("-"))
        }
        RefundRequestStatus::Pending if request.next_attempt_at > at => format!(
            "pending, next attempt at {} after: {}",
            request.next_attempt_at.to_rfc3339(),
            request.last_error.as_deref().unwrap_or("-")
        ),
        RefundRequestStatus::Pending => "pending".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        assert_eq!(backoff(0), Span::seconds(2));
        assert_eq!(backoff(3), Span::seconds(16));
        assert_eq!(backoff(40), Span::seconds(3600));
    }
}
