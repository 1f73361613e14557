//! The operator commands: each in its own module with its clap types
//! beside it, sharing only [`format`].

mod changes;
mod events;
mod format;
mod purchases;
mod reversals;

use anyhow::{Context, bail};
use clap::Subcommand;

pub use changes::ChangesCommand;
pub use events::{EventsCommand, StatusFilter};
pub use purchases::PurchasesCommand;
pub use reversals::ReversalsCommand;

use crate::config::Settings;
use crate::fulfil::{reconcile, retention};
use crate::store::signals::FeedSignals;
use crate::store::{self, purchases as purchase_rows, reversals as reversal_rows};
use crate::stripe::StripeApi;
use format::parse_since;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC (the default).
    Serve,
    /// Inspect and replay stored Stripe events.
    #[command(subcommand)]
    Events(EventsCommand),
    /// Inspect refunds and disputes.
    #[command(subcommand)]
    Reversals(ReversalsCommand),
    /// Inspect purchases: why has this user access, or none?
    #[command(subcommand)]
    Purchases(PurchasesCommand),
    /// Follow and maintain the purchase change feed.
    #[command(subcommand)]
    Changes(ChangesCommand),
    /// Apply every checkout.session.* event Stripe sent in a recent window
    /// that is not processed here yet: recovers webhooks lost in an outage.
    /// Needs STRIPE_SECRET_KEY.
    Reconcile {
        /// How far back: `30m`, `24h`, `7d` (Stripe keeps events for 30
        /// days), or an RFC 3339 time.
        #[arg(long)]
        since: String,
        /// Events per page requested from Stripe (1 to 100).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(1..=100))]
        page_size: u8,
    },
}

/// Runs one operator command and prints its result to stdout.
pub async fn run(command: Command, settings: &Settings) -> anyhow::Result<()> {
    let db = store::connect(&settings.database_url).await.context("connecting to DATABASE_URL")?;
    let signals = FeedSignals::default();
    let output = match command {
        Command::Serve => bail!("serve is not an operator command"),
        Command::Changes(ChangesCommand::Tail { after, json }) => {
            changes::tail(&db, &signals, after, json).await?;
            String::new()
        }
        Command::Changes(ChangesCommand::Prune) => {
            let removed = retention::prune(&db, settings.changes_retention).await?;
            format!(
                "removed {removed} changes older than {} days\n",
                settings.changes_retention.as_secs() / 86_400
            )
        }
        Command::Events(command) => events::run(&db, &signals, command, settings).await?,
        Command::Purchases(PurchasesCommand::Show { id }) => {
            purchases::purchase_timeline(&db, &id, settings.policy).await?
        }
        Command::Purchases(PurchasesCommand::Refund { checkout_session_id }) => {
            let stripe = settings.stripe.as_ref().context("purchases refund needs STRIPE_SECRET_KEY")?;
            purchases::refund_duplicate(
                &db,
                &StripeApi::new(stripe)?,
                settings.policy.dispute_access,
                &checkout_session_id,
            )
            .await?
        }
        Command::Purchases(PurchasesCommand::List { needs_refund, limit }) => {
            purchases::purchases_table(
                &db,
                &purchase_rows::list(&db, needs_refund, limit).await?,
                settings.policy,
            )
            .await?
        }
        Command::Reversals(ReversalsCommand::Unmatched { limit }) => {
            reversals::unmatched_table(&reversal_rows::unmatched(&db, limit).await?)
        }
        Command::Reconcile { since, page_size } => {
            let stripe = settings.stripe.as_ref().context("reconcile needs STRIPE_SECRET_KEY")?;
            let stripe = StripeApi::new(stripe)?;
            let since = parse_since(&since)?;
            let summary = reconcile::sweep(&db, &signals, &stripe, settings.policy, since, page_size).await?;
            format!(
                "seen {}, already processed {}, newly applied {}, failed {}\n",
                summary.seen, summary.already_processed, summary.newly_applied, summary.failed
            )
        }
    };
    print!("{output}");
    if signals.commits_so_far() > 0 {
        // No task forwards this process's commits (it is about to exit):
        // wake the running replicas' watchers once, for all of them.
        store::signals::notify_listeners(&db).await?;
    }
    db.close().await?;
    Ok(())
}
