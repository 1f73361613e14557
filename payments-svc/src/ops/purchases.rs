//! `payments-svc purchases`: show, list and refund purchases.

use std::fmt::Write as _;

use anyhow::{Context, bail};
use chrono::Utc;
use clap::Subcommand;
use payments_domain::reversals::DisputeAccess;
use payments_domain::rules::{self, Plan, Policy};
use sea_orm::{ActiveEnum, DatabaseConnection};

use super::format::{event_row, table, time};
use crate::config::{DatabaseArgs, PolicyArgs, StripeArgs};
use crate::fulfil::refunds;
use crate::store::entities::course_purchase;
use crate::store::entities::refund_request::RefundRequestStatus;
use crate::store::entities::stripe_webhook_event::Model as Event;
use crate::store::{events, purchases, refund_requests, reversals};
use crate::stripe::StripeApi;

#[derive(Debug, Subcommand)]
pub enum PurchasesCommand {
    /// One purchase and its timeline: every event that touched it, in the
    /// order they arrived, with what each did.
    Show {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        policy: PolicyArgs,
        /// The Checkout Session id (`cs_...`) or payment intent id (`pi_...`).
        id: String,
    },
    /// Refund a second payment for a course the buyer already owned
    /// through Stripe's Refunds API; repeating it never refunds twice.
    /// Needs STRIPE_SECRET_KEY.
    Refund {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        stripe: StripeArgs,
        /// The duplicate purchase's Checkout Session id (`cs_...`).
        checkout_session_id: String,
    },
    /// Purchases, newest first.
    List {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        policy: PolicyArgs,
        /// Only second payments for a course the buyer already owned, which
        /// are owed a refund.
        #[arg(long)]
        needs_refund: bool,
        /// At most this many rows.
        #[arg(long, default_value_t = 100)]
        limit: u64,
    },
}

impl PurchasesCommand {
    pub(super) fn database(&self) -> &DatabaseArgs {
        match self {
            Self::Show { database, .. } | Self::Refund { database, .. } | Self::List { database, .. } => {
                database
            }
        }
    }
}

/// Runs `command`; what to print.
pub(super) async fn run(db: &DatabaseConnection, command: PurchasesCommand) -> anyhow::Result<String> {
    match command {
        PurchasesCommand::Show { policy, id, .. } => purchase_timeline(db, &id, policy.policy()).await,
        PurchasesCommand::Refund { policy, stripe, checkout_session_id, .. } => {
            let stripe = stripe
                .settings(policy.stripe_livemode)?
                .context("purchases refund needs STRIPE_SECRET_KEY")?;
            refund_duplicate(db, &StripeApi::new(&stripe)?, policy.dispute_access, &checkout_session_id).await
        }
        PurchasesCommand::List { policy, needs_refund, limit, .. } => {
            purchases_table(db, &purchases::list(db, needs_refund, limit).await?, policy.policy()).await
        }
    }
}

/// One purchase, its access now, and every event that touched it in the
/// order they arrived, with what each did: what support needs to answer
/// "why has this user no access?".
async fn purchase_timeline(db: &DatabaseConnection, id: &str, policy: Policy) -> anyhow::Result<String> {
    let found = if id.starts_with("pi_") {
        purchases::find_by_payment_intent(db, id).await?
    } else {
        purchases::find_by_session(db, id).await?
    };
    let purchase = found.with_context(|| format!("no purchase for {id}"))?;
    let access = reversals::access_of(db, &purchase, policy.dispute_access).await?;
    let facts = match &purchase.stripe_payment_intent_id {
        Some(pi) => reversals::for_payment(db, pi).await?,
        None => Vec::new(),
    };
    let event_ids: Vec<String> = facts.iter().map(|fact| fact.event_id.clone()).collect();
    let mut mentions: Vec<String> = purchase.stripe_payment_intent_id.iter().cloned().collect();
    mentions.extend(facts.iter().filter_map(|fact| fact.charge_id.clone()));
    mentions.sort();
    mentions.dedup();
    let touching = events::touching(db, &purchase.stripe_checkout_session_id, &event_ids, &mentions).await?;

    let yes_no = |flag: bool| if flag { "yes" } else { "no" };
    let currency = purchase.currency.as_deref().unwrap_or_default();
    let paid = purchase.amount_total.map_or_else(|| "-".to_owned(), |amount| format!("{amount} {currency}"));
    let mut out = String::new();
    let _ = writeln!(out, "session:      {}", purchase.stripe_checkout_session_id);
    let _ = writeln!(out, "payment:      {}", purchase.stripe_payment_intent_id.as_deref().unwrap_or("-"));
    let _ = writeln!(out, "user:         {}", purchase.user_id);
    let _ = writeln!(out, "course:       {}", purchase.course_id);
    let _ = writeln!(out, "status:       {} (access: {})", access.status.as_str(), yes_no(access.has_access));
    let _ = writeln!(out, "paid:         {paid}, refunded {}", access.amount_refunded);
    let _ = writeln!(
        out,
        "checkout:     {}{}, first recorded by {} at {}",
        purchase.status.to_value(),
        if purchase.needs_refund { " (a second payment for an owned course: needs refund)" } else { "" },
        purchase.source.to_value(),
        time(purchase.created_at)
    );
    let rows: Vec<Vec<String>> = touching.iter().map(|e| event_row(e, what_it_did(e, policy))).collect();
    let _ = writeln!(out, "\nevents, in the order they arrived:");
    out.push_str(&table(
        &["RECEIVED", "EVENT", "TYPE", "STATUS", "DELIVERIES", "WHAT IT DID"],
        &rows,
        "events",
    ));
    Ok(out)
}

/// Asks Stripe now for the refund a duplicate purchase is owed, once: a
/// refund already made is reported, not made again.
async fn refund_duplicate(
    db: &DatabaseConnection,
    stripe: &StripeApi,
    policy: DisputeAccess,
    session_id: &str,
) -> anyhow::Result<String> {
    let purchase = purchases::find_by_session(db, session_id)
        .await?
        .with_context(|| format!("no purchase {session_id}"))?;
    if !purchase.needs_refund {
        bail!(
            "{session_id} is the purchase that grants the course, not a second payment; refund it in Stripe's dashboard if you mean to"
        );
    }
    let payment_intent_id = purchase
        .stripe_payment_intent_id
        .as_deref()
        .with_context(|| format!("{session_id} has no payment intent to refund"))?;
    refund_requests::owe(db, session_id, payment_intent_id, Utc::now()).await?;
    let request = refund_requests::find_by_session(db, session_id).await?.context("the refund request")?;
    let result = match request.status {
        RefundRequestStatus::Pending => match refunds::attempt(db, stripe, policy, &request).await? {
            refunds::Attempt::Refunded { refund_id } => format!("refunded: {refund_id}"),
            refunds::Attempt::RetryLater { error } => {
                bail!("Stripe could not be reached ({error}); run it again")
            }
            refunds::Attempt::Refused { error } => bail!("Stripe refused the refund: {error}"),
            refunds::Attempt::NotClaimed => {
                bail!("a running payments-svc is refunding it now; look again shortly")
            }
        },
        _ => format!("already {}", refunds::describe(&request, Utc::now())),
    };
    Ok(format!("{session_id}: {result}\n"))
}

/// What a stored event meant, decided again from its payload by the rules.
fn what_it_did(stored: &Event, policy: Policy) -> String {
    let parsed = payments_proto::stripe::parse_event(stored.payload.clone().into())
        .ok()
        .and_then(|event| payments_proto::domain::incoming(event).ok());
    let Some(event) = parsed else { return "payload no longer parses".into() };
    match rules::plan(&event, policy) {
        Plan::Record(_, status) => format!("checkout: {status}"),
        Plan::Reverse { reversal, .. } => {
            let currency = reversal.currency.as_deref().unwrap_or_default();
            let amount = format!("{} {currency}", reversal.amount);
            format!(
                "{} {} {} {}",
                reversal.kind(),
                reversal.object_id,
                reversal.status.as_str(),
                amount.trim_end()
            )
        }
        Plan::Acknowledge => "checkout expired; nothing granted".into(),
        Plan::Ignore(reason) => reason.message,
        Plan::Fail(error) => error.message,
    }
}

async fn purchases_table(
    db: &DatabaseConnection,
    purchases: &[course_purchase::Model],
    policy: Policy,
) -> anyhow::Result<String> {
    let mut rows = Vec::with_capacity(purchases.len());
    for p in purchases {
        let access = reversals::access_of(db, p, policy.dispute_access).await?;
        let amount = p
            .amount_total
            .map_or_else(|| "-".to_owned(), |a| format!("{a} {}", p.currency.as_deref().unwrap_or_default()));
        rows.push(vec![
            time(p.created_at),
            p.stripe_checkout_session_id.clone(),
            p.user_id.clone(),
            p.course_id.clone(),
            access.status.as_str().to_owned(),
            if access.has_access { "yes" } else { "no" }.to_owned(),
            if p.needs_refund { "yes" } else { "no" }.to_owned(),
            amount.trim_end().to_owned(),
        ]);
    }
    let header = ["CREATED", "SESSION", "USER", "COURSE", "STATUS", "ACCESS", "NEEDS REFUND", "AMOUNT"];
    Ok(table(&header, &rows, "purchases"))
}
