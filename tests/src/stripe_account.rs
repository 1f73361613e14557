//! A Stripe account a test makes up: Checkout Sessions in every state a
//! course purchase can reach, with their payment intents, refunds and
//! disputes, as Stripe's own objects (the repository's fixtures with their
//! ids, times, statuses and amounts set), and the webhook events Stripe
//! sends for them. The same account is delivered as webhooks, listed by the
//! fake Stripe, or both, so a database built one way can be compared with
//! one built the other.

use bytes::Bytes;
use serde_json::{Value, json};

use crate::fake_stripe::FakeStripe;
use crate::fixture;

/// What happened to one purchase, at Stripe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Paid,
    /// A bank debit still clearing.
    Clearing,
    /// A bank debit that failed.
    Failed,
    /// A bank debit that cleared later.
    Cleared,
    Expired,
    /// The buyer never finished.
    Open,
    /// 100 % discount: no payment.
    Free,
    WithoutMetadata,
    RefundedInFull,
    RefundedInPart,
    /// A refund that failed: the money stayed with the merchant.
    RefundFailed,
    DisputeOpen,
    DisputeWon,
    DisputeLost,
    /// Paid twice for one course: a second session a minute later.
    PaidTwice,
}

impl Kind {
    pub const ALL: [Self; 15] = [
        Self::Paid,
        Self::Clearing,
        Self::Failed,
        Self::Cleared,
        Self::Expired,
        Self::Open,
        Self::Free,
        Self::WithoutMetadata,
        Self::RefundedInFull,
        Self::RefundedInPart,
        Self::RefundFailed,
        Self::DisputeOpen,
        Self::DisputeWon,
        Self::DisputeLost,
        Self::PaidTwice,
    ];

    /// `(status, has_access, amount_refunded)` of the purchase (the first
    /// session's, for `PaidTwice`), or `None` when there is none.
    pub fn expected(self) -> Option<(&'static str, bool, i64)> {
        match self {
            Self::Paid
            | Self::Cleared
            | Self::Free
            | Self::RefundFailed
            | Self::DisputeWon
            | Self::PaidTwice => Some(("paid", true, 0)),
            Self::Clearing => Some(("pending", false, 0)),
            Self::Failed => Some(("failed", false, 0)),
            Self::Expired | Self::Open | Self::WithoutMetadata => None,
            Self::RefundedInFull => Some(("refunded", false, AMOUNT)),
            Self::RefundedInPart => Some(("paid", true, PART)),
            Self::DisputeOpen => Some(("disputed", false, 0)),
            Self::DisputeLost => Some(("revoked", false, 0)),
        }
    }
}

pub const AMOUNT: i64 = 4900;
pub const PART: i64 = 1000;

/// One purchase's objects and events.
#[derive(Debug, Clone)]
pub struct Purchase {
    pub kind: Kind,
    /// The session that keeps the course; for `PaidTwice`, then the second.
    pub sessions: Vec<String>,
}

/// Everything the account holds, in the order Stripe made it.
#[derive(Debug, Default)]
pub struct Account {
    pub purchases: Vec<Purchase>,
    sessions: Vec<Value>,
    intents: Vec<(String, &'static str)>,
    refunds: Vec<Value>,
    disputes: Vec<Value>,
    /// The webhook events, in the order Stripe sent them.
    pub events: Vec<Bytes>,
}

impl Account {
    /// `count` purchases cycling through every kind, the `n`th made at
    /// `start + 60 n` seconds, ids tagged with `tag`.
    pub fn with(count: usize, start: i64, tag: &str) -> Self {
        let mut account = Self::default();
        for n in 0..count {
            account.add(Kind::ALL[n % Kind::ALL.len()], n, start + 60 * n as i64, tag);
        }
        account
    }

    /// Lists every object in `stripe`.
    pub fn list_in(&self, stripe: &FakeStripe) {
        for session in &self.sessions {
            stripe.list_session(Bytes::from(session.to_string()));
        }
        for (id, status) in &self.intents {
            stripe.set_intent(id, status);
        }
        for refund in &self.refunds {
            stripe.list_refund(Bytes::from(refund.to_string()));
        }
        for dispute in &self.disputes {
            stripe.list_dispute(Bytes::from(dispute.to_string()));
        }
    }

    pub fn sessions(&self) -> usize {
        self.sessions.len()
    }

    pub fn refunds(&self) -> usize {
        self.refunds.len()
    }

    pub fn disputes(&self) -> usize {
        self.disputes.len()
    }

    /// The earliest `created` of anything in the account.
    pub fn first_created(&self) -> i64 {
        self.sessions.iter().map(|s| s["created"].as_i64().expect("created")).min().unwrap_or(0)
    }

    fn add(&mut self, kind: Kind, n: usize, at: i64, tag: &str) {
        let (user_id, course_id) = (format!("user-{tag}-{n}"), format!("course-{n}"));
        let session_id = format!("cs_test_{tag}_{n}");
        let pi = format!("pi_{tag}_{n}");
        let charge = format!("ch_{tag}_{n}");
        let metadata = json!({ "courseId": course_id, "userId": user_id });
        let mut sessions = vec![session_id.clone()];
        let paid = |id: &str, at: i64| session(id, at, "complete", "paid", Some(&pi), AMOUNT, &metadata);
        match kind {
            Kind::Paid
            | Kind::RefundedInFull
            | Kind::RefundedInPart
            | Kind::RefundFailed
            | Kind::DisputeOpen
            | Kind::DisputeWon
            | Kind::DisputeLost => {
                let object = paid(&session_id, at);
                self.intents.push((pi.clone(), "succeeded"));
                self.event("checkout.session.completed", at + 5, &object);
                self.sessions.push(object);
                self.reversal(kind, n, at, tag, &pi, &charge);
            }
            Kind::Clearing | Kind::Failed | Kind::Cleared => {
                let unpaid = session(&session_id, at, "complete", "unpaid", Some(&pi), AMOUNT, &metadata);
                self.event("checkout.session.completed", at + 5, &unpaid);
                let (intent, listed) = match kind {
                    Kind::Clearing => ("processing", unpaid),
                    Kind::Failed => {
                        self.event("checkout.session.async_payment_failed", at + 30, &unpaid);
                        ("requires_payment_method", unpaid)
                    }
                    _ => {
                        let cleared =
                            session(&session_id, at, "complete", "paid", Some(&pi), AMOUNT, &metadata);
                        self.event("checkout.session.async_payment_succeeded", at + 30, &cleared);
                        ("succeeded", cleared)
                    }
                };
                self.intents.push((pi.clone(), intent));
                self.sessions.push(listed);
            }
            Kind::Expired => {
                let object = session(&session_id, at, "expired", "unpaid", None, AMOUNT, &metadata);
                self.event("checkout.session.expired", at + 50, &object);
                self.sessions.push(object);
            }
            Kind::Open => {
                self.sessions.push(session(&session_id, at, "open", "unpaid", None, AMOUNT, &metadata))
            }
            Kind::Free => {
                let object = session(&session_id, at, "complete", "no_payment_required", None, 0, &metadata);
                self.event("checkout.session.completed", at + 5, &object);
                self.sessions.push(object);
            }
            Kind::WithoutMetadata => {
                let object = session(&session_id, at, "complete", "paid", Some(&pi), AMOUNT, &json!({}));
                self.intents.push((pi.clone(), "succeeded"));
                self.event("checkout.session.completed", at + 5, &object);
                self.sessions.push(object);
            }
            Kind::PaidTwice => {
                let second_id = format!("cs_test_{tag}_{n}_again");
                let second_pi = format!("{pi}_again");
                let first = paid(&session_id, at);
                let second =
                    session(&second_id, at + 20, "complete", "paid", Some(&second_pi), AMOUNT, &metadata);
                self.intents.push((pi.clone(), "succeeded"));
                self.intents.push((second_pi, "succeeded"));
                self.event("checkout.session.completed", at + 25, &first);
                self.event("checkout.session.completed", at + 25, &second);
                self.sessions.extend([first, second]);
                sessions.push(second_id);
            }
        }
        self.purchases.push(Purchase { kind, sessions });
    }

    /// The refund or dispute of `kind`, if it has one: the object as Stripe
    /// lists it now, and each event that reported it.
    fn reversal(&mut self, kind: Kind, n: usize, at: i64, tag: &str, pi: &str, charge: &str) {
        let (refund_id, dispute_id) = (format!("re_{tag}_{n}"), format!("dp_{tag}_{n}"));
        let later = at + 600;
        match kind {
            Kind::RefundedInFull | Kind::RefundedInPart => {
                let amount = if kind == Kind::RefundedInFull { AMOUNT } else { PART };
                let object = refund(&refund_id, later, "succeeded", amount, pi, charge);
                self.event("refund.created", later, &object);
                self.refunds.push(object);
            }
            Kind::RefundFailed => {
                self.event(
                    "refund.created",
                    later,
                    &refund(&refund_id, later, "succeeded", AMOUNT, pi, charge),
                );
                let failed = refund(&refund_id, later, "failed", AMOUNT, pi, charge);
                self.event("refund.failed", later + 60, &failed);
                self.refunds.push(failed);
            }
            Kind::DisputeOpen | Kind::DisputeWon | Kind::DisputeLost => {
                let open = dispute(&dispute_id, later, "needs_response", pi, charge);
                self.event("charge.dispute.created", later, &open);
                let listed = match kind {
                    Kind::DisputeOpen => open,
                    _ => {
                        let status = if kind == Kind::DisputeWon { "won" } else { "lost" };
                        let closed = dispute(&dispute_id, later, status, pi, charge);
                        self.event("charge.dispute.closed", later + 86_400, &closed);
                        closed
                    }
                };
                self.disputes.push(listed);
            }
            _ => {}
        }
    }

    /// An event of `event_type` about `object`, shaped like the paid
    /// checkout fixture's envelope.
    fn event(&mut self, event_type: &str, created: i64, object: &Value) {
        let mut event: Value =
            serde_json::from_slice(&fixture("checkout_session_completed_paid.json").expect("fixture"))
                .expect("JSON");
        event["id"] = format!("evt_{}_{}", self.events.len(), object["id"].as_str().expect("id")).into();
        event["type"] = event_type.into();
        event["created"] = created.into();
        event["data"]["object"] = object.clone();
        self.events.push(Bytes::from(event.to_string()));
    }
}

/// A Checkout Session object: the fixture's, with these fields.
fn session(
    id: &str,
    created: i64,
    status: &str,
    payment_status: &str,
    pi: Option<&str>,
    amount: i64,
    metadata: &Value,
) -> Value {
    let mut object: Value =
        serde_json::from_slice(&fixture("checkout_session.object.json").expect("fixture")).expect("JSON");
    object["id"] = id.into();
    object["created"] = created.into();
    object["expires_at"] = (created + 86_400).into();
    object["status"] = status.into();
    object["payment_status"] = payment_status.into();
    object["payment_intent"] = pi.map_or(Value::Null, Into::into);
    object["amount_total"] = amount.into();
    object["amount_subtotal"] = amount.into();
    object["metadata"] = metadata.clone();
    object
}

/// A Refund object: the refund fixture's, with these fields.
fn refund(id: &str, created: i64, status: &str, amount: i64, pi: &str, charge: &str) -> Value {
    let mut object = fixture_object("refund_created_full.json");
    object["id"] = id.into();
    object["created"] = created.into();
    object["status"] = status.into();
    object["amount"] = amount.into();
    object["payment_intent"] = pi.into();
    object["charge"] = charge.into();
    object
}

/// A Dispute object: the dispute fixture's, with these fields.
fn dispute(id: &str, created: i64, status: &str, pi: &str, charge: &str) -> Value {
    let mut object = fixture_object("charge_dispute_created.json");
    object["id"] = id.into();
    object["created"] = created.into();
    object["status"] = status.into();
    object["amount"] = AMOUNT.into();
    object["payment_intent"] = pi.into();
    object["charge"] = charge.into();
    object
}

fn fixture_object(name: &str) -> Value {
    let event: Value = serde_json::from_slice(&fixture(name).expect("fixture")).expect("JSON");
    event["data"]["object"].clone()
}
