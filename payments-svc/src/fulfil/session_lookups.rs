//! Asking Stripe about a checkout session on verify's behalf, at most once
//! per session per [`FRESH_FOR`].
//!
//! Verify is public: anyone can ask about any `cs_…` id, as often as they
//! like, and a success page polls. Without this, each ask would be a
//! request to Stripe, and a stranger could spend the account's rate limit,
//! which the rest of the company shares. So concurrent asks for one session
//! share one request, and its answer (found or not found) is reused for a
//! short while; what gets past this still takes a turn within
//! STRIPE_API_MAX_RPS ([`crate::stripe`]).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use payments_proto::v1::CheckoutSession;
use tokio::sync::OnceCell;

use crate::stripe::{StripeApi, StripeError};

/// How long an answer is reused: short enough that a buyer who just paid
/// sees it on the success page's next poll or the one after.
pub const FRESH_FOR: Duration = Duration::from_secs(2);
/// Most sessions remembered at once. Beyond it (a stranger asking about
/// many made-up ids), stale answers are forgotten; if every one is still
/// fresh, the ask is made without being remembered, and the rate limit
/// bounds what it costs.
const MAX_REMEMBERED: usize = 10_000;

/// What Stripe said about a session, as verify needs it.
#[derive(Debug, Clone)]
pub enum Answer {
    Found(CheckoutSession),
    NotFound,
    /// Stripe was not asked (the rate is spent) or did not answer usefully.
    Unanswered(String),
}

impl From<Result<CheckoutSession, StripeError>> for Answer {
    fn from(result: Result<CheckoutSession, StripeError>) -> Self {
        match result {
            Ok(session) => Self::Found(session),
            Err(StripeError::NotFound) => Self::NotFound,
            Err(error) => Self::Unanswered(error.to_string()),
        }
    }
}

/// One ask: in flight until its answer is set, then reused until stale.
#[derive(Debug, Default)]
struct Ask {
    answer: OnceCell<(Answer, Instant)>,
}

impl Ask {
    /// In flight, or answered by Stripe within [`FRESH_FOR`]. An unanswered
    /// ask is not reused once done: the next ask tries again (within the
    /// rate limit), so verify confirms as soon as Stripe is back.
    fn is_fresh(&self, now: Instant) -> bool {
        match self.answer.get() {
            None => true,
            Some((Answer::Unanswered(_), _)) => false,
            Some((_, at)) => now.saturating_duration_since(*at) < FRESH_FOR,
        }
    }
}

/// Stripe's API, asked about sessions through one shared, short memory.
#[derive(Debug)]
pub struct SessionLookups {
    stripe: StripeApi,
    asks: Mutex<HashMap<String, Arc<Ask>>>,
}

impl SessionLookups {
    pub fn new(stripe: StripeApi) -> Self {
        Self { stripe, asks: Mutex::default() }
    }

    /// What Stripe says about session `id`: a fresh answer if one is
    /// remembered, the answer of an ask already in flight, or a new ask.
    pub async fn checkout_session(&self, id: &str) -> Answer {
        let ask = self.ask_for(id, Instant::now());
        let (answer, _) = ask
            .answer
            .get_or_init(|| async { (Answer::from(self.stripe.checkout_session(id).await), Instant::now()) })
            .await;
        answer.clone()
    }

    fn ask_for(&self, id: &str, now: Instant) -> Arc<Ask> {
        let mut asks = self.lock();
        if let Some(ask) = asks.get(id).filter(|ask| ask.is_fresh(now)) {
            return Arc::clone(ask);
        }
        if asks.len() >= MAX_REMEMBERED {
            asks.retain(|_, ask| ask.is_fresh(now));
        }
        let ask = Arc::new(Ask::default());
        if asks.len() < MAX_REMEMBERED {
            asks.insert(id.to_owned(), Arc::clone(&ask));
        }
        ask
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Arc<Ask>>> {
        // Plain bookkeeping that no panic leaves half done.
        self.asks.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_is_fresh_while_in_flight_and_for_a_while_after() {
        let ask = Ask::default();
        let now = Instant::now();
        assert!(ask.is_fresh(now), "in flight");

        ask.answer.set((Answer::NotFound, now)).expect("set once");

        assert!(ask.is_fresh(now + FRESH_FOR / 2));
        assert!(!ask.is_fresh(now + FRESH_FOR));
    }

    #[test]
    fn an_unanswered_ask_is_not_reused() {
        let ask = Ask::default();
        let now = Instant::now();
        ask.answer.set((Answer::Unanswered("down".into()), now)).expect("set once");

        assert!(!ask.is_fresh(now));
    }

    #[test]
    fn stripe_errors_become_not_found_or_unanswered() {
        assert!(matches!(Answer::from(Err(StripeError::NotFound)), Answer::NotFound));
        assert!(matches!(Answer::from(Err(StripeError::OverBudget)), Answer::Unanswered(_)));
        assert!(matches!(Answer::from(Err(StripeError::Unavailable("down".into()))), Answer::Unanswered(_)));
    }
}
