//! The operator commands: each in its own module with its clap types
//! beside it, sharing only [`format`].

mod changes;
mod events;
mod format;
mod healthcheck;
mod migrate;
mod purchases;
mod reversals;
mod sync;

use anyhow::{Context, bail};
use clap::Subcommand;

pub use changes::ChangesCommand;
pub use events::{EventsCommand, StatusFilter};
pub use healthcheck::HealthcheckArgs;
pub use migrate::MigrateArgs;
pub use purchases::PurchasesCommand;
pub use reversals::ReversalsCommand;
pub use sync::SyncArgs;

use crate::config::{Args, DatabaseArgs, PolicyArgs, StripeArgs};
use crate::fulfil::reconcile;
use crate::store;
use crate::store::signals::FeedSignals;
use crate::stripe::StripeApi;
use format::parse_since;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve gRPC (the default), with the service's flags.
    Serve(Box<Args>),
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
    /// Apply the database migrations, or check or wait for them: for
    /// deployments that migrate as a step of their own.
    Migrate(MigrateArgs),
    /// Exit 0 when the payments-svc serving on PAYMENTS_GRPC_ADDR answers
    /// that it serves, 1 otherwise: a container health check.
    Healthcheck(HealthcheckArgs),
    /// Import every Checkout Session, refund and dispute Stripe created in
    /// a window through the same rules as webhooks (resumable, idempotent),
    /// or with --check compare without changing anything. Needs
    /// STRIPE_SECRET_KEY.
    Sync(Box<SyncArgs>),
    /// Apply every checkout.session.* event Stripe sent in a recent window
    /// that is not processed here yet: recovers webhooks lost in an outage.
    /// Needs STRIPE_SECRET_KEY.
    Reconcile {
        #[command(flatten)]
        database: DatabaseArgs,
        #[command(flatten)]
        policy: PolicyArgs,
        #[command(flatten)]
        stripe: StripeArgs,
        /// How far back: `30m`, `24h`, `7d` (Stripe keeps events for 30
        /// days), or an RFC 3339 time.
        #[arg(long)]
        since: String,
        /// Events per page requested from Stripe (1 to 100).
        #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u8).range(1..=100))]
        page_size: u8,
    },
}

impl Command {
    /// The database the command works on.
    fn database(&self) -> Option<&DatabaseArgs> {
        match self {
            Self::Serve(_) | Self::Migrate(_) | Self::Healthcheck(_) => None,
            Self::Events(command) => Some(command.database()),
            Self::Reversals(command) => Some(command.database()),
            Self::Purchases(command) => Some(command.database()),
            Self::Changes(command) => Some(command.database()),
            Self::Reconcile { database, .. } => Some(database),
            Self::Sync(args) => Some(&args.database),
        }
    }
}

/// Runs one operator command and prints its result to stdout.
pub async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Migrate(args) => migrate::run(args).await,
        Command::Healthcheck(args) => healthcheck::run(args).await,
        command => on_database(command).await,
    }
}

/// Runs a command that works on the service's migrated database.
async fn on_database(command: Command) -> anyhow::Result<()> {
    let Some(database) = command.database() else { bail!("not a command on the database") };
    let db = store::open_existing(&database.database_url).await?;
    let signals = FeedSignals::default();
    let output = match command {
        Command::Serve(_) | Command::Migrate(_) | Command::Healthcheck(_) => {
            bail!("not a command on the database")
        }
        Command::Changes(command) => changes::run(&db, &signals, command).await?,
        Command::Events(command) => events::run(&db, &signals, command).await?,
        Command::Purchases(command) => purchases::run(&db, command).await?,
        Command::Reversals(command) => reversals::run(&db, command).await?,
        Command::Sync(args) => {
            let (output, differing) = sync::run(&db, &signals, *args).await?;
            if differing > 0 {
                print!("{output}");
                bail!("{differing} purchase(s) differ from Stripe");
            }
            output
        }
        Command::Reconcile { policy, stripe, since, page_size, .. } => {
            let stripe =
                stripe.settings(policy.stripe_livemode)?.context("reconcile needs STRIPE_SECRET_KEY")?;
            let stripe = StripeApi::new(&stripe)?;
            let since = parse_since(&since)?;
            let summary = reconcile::sweep(&db, &signals, &stripe, policy.policy(), since, page_size).await?;
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
