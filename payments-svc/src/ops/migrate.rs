//! `payments-svc migrate`: the schema as a step of its own, for deployments
//! that run migrations before a new version starts (a Kubernetes Job, a
//! compose service) and start the service with `PAYMENTS_SKIP_MIGRATIONS`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;

use crate::config::{DatabaseArgs, parse_interval};
use crate::store;

/// How often `--wait` asks the database again.
const WAIT_POLL: Duration = Duration::from_secs(2);

#[derive(Debug, Args)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub database: DatabaseArgs,
    /// Apply nothing: list the migrations not applied yet and exit 1 when
    /// there are any, 0 when the database is current.
    #[arg(long, conflicts_with = "wait")]
    check: bool,
    /// Apply nothing: wait until every migration this binary knows has been
    /// applied (by the migration step), then exit 0; exit 1 when this long
    /// (`30s`, `10m`) has passed. Keeps a new version from starting on an
    /// old schema, as an init container. An unreachable database is waited
    /// for too.
    #[arg(long, value_parser = parse_interval)]
    wait: Option<Duration>,
}

/// Applies, checks or waits for the migrations; prints what it found.
pub async fn run(args: MigrateArgs) -> anyhow::Result<()> {
    let url = &args.database.database_url;
    if let Some(limit) = args.wait {
        return wait(url, limit).await;
    }
    if args.check {
        let db = store::open(url).await?;
        let pending = store::pending_migrations(&db).await?;
        db.close().await?;
        return current_or_list(&pending);
    }
    let db = store::connect(url).await.context("connecting to DATABASE_URL")?;
    let pending = store::pending_migrations(&db).await?;
    store::migrate(&db).await.context("applying migrations")?;
    let left = store::pending_migrations(&db).await?;
    db.close().await?;
    if !left.is_empty() {
        bail!("migrations still pending after applying them: {}", left.join(", "));
    }
    if pending.is_empty() {
        println!("nothing to apply: the database is current");
    } else {
        println!("applied {} migration(s): {}", pending.len(), pending.join(", "));
    }
    Ok(())
}

/// Polls until nothing is pending, or fails naming what still is.
async fn wait(url: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match pending(url).await {
            Ok(pending) if pending.is_empty() => return current_or_list(&pending),
            Ok(pending) => format!("{} migration(s) not applied yet: {}", pending.len(), pending.join(", ")),
            Err(error) => format!("{error:#}"),
        };
        if Instant::now() + WAIT_POLL > deadline {
            bail!("gave up waiting for the migrations after {limit:?}: {last}");
        }
        tracing::info!(reason = %last, "waiting for the migration step");
        tokio::time::sleep(WAIT_POLL).await;
    }
}

async fn pending(url: &str) -> anyhow::Result<Vec<String>> {
    let db = store::open(url).await?;
    let pending = store::pending_migrations(&db).await;
    db.close().await?;
    Ok(pending?)
}

fn current_or_list(pending: &[String]) -> anyhow::Result<()> {
    if pending.is_empty() {
        println!("the database is current");
        Ok(())
    } else {
        bail!("{} migration(s) not applied: {}", pending.len(), pending.join(", "))
    }
}
