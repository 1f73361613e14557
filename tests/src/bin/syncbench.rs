//! Times `payments-svc sync` of many Checkout Sessions (with their refunds
//! and disputes, in every state) against the fake Stripe, served from this
//! process, and reports objects a second, how far the run is from the
//! floor STRIPE_API_MAX_RPS sets (its pages divided by the rate), and the
//! CPU payments-svc and the database spent per object.
//!
//! ```sh
//! cargo build --release --bin payments-svc --bin syncbench
//! target/release/syncbench --database-url postgres://postgres@127.0.0.1:5432/syncbench --sessions 100000
//! ```
//!
//! The database is emptied first (dropped and created on PostgreSQL, the
//! file deleted on SQLite) and migrated; the sync then runs on it as an
//! operator would run it, at the default rate unless `--rps` says.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use clap::Parser;
use e2e::fake_stripe::{FAKE_STRIPE_KEY, FakeStripe};
use e2e::services::{self, PostgresCpu, cpu_seconds, reset_database};
use e2e::stripe_account::{Account, Kind};

#[derive(Debug, Parser)]
struct Args {
    /// Where payments-svc is; next to this tool when absent.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The database to empty and sync into.
    #[arg(long)]
    database_url: String,
    /// Checkout Sessions at Stripe (about one in fifteen purchases is paid
    /// twice, one in five has a refund or a dispute).
    #[arg(long, default_value_t = 100_000)]
    sessions: usize,
    /// STRIPE_API_MAX_RPS of the sync.
    #[arg(long, default_value_t = 10)]
    rps: u32,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = services::bin_dir(args.bin_dir.as_deref())?;
    let purchases = args.sessions * Kind::ALL.len() / (Kind::ALL.len() + 1);
    let started = Instant::now();
    let account = Account::with(purchases, e2e::unix_now() - 400 * 86_400, "bench");
    let stripe = FakeStripe::start().await;
    account.list_in(&stripe);
    let objects = account.sessions() + account.refunds() + account.disputes();
    let pages = [account.sessions(), account.refunds(), account.disputes()]
        .iter()
        .map(|n| n.div_ceil(100))
        .sum::<usize>();
    println!(
        "stripe            {} sessions, {} refunds, {} disputes: {pages} pages (made in {:.1} s)",
        account.sessions(),
        account.refunds(),
        account.disputes(),
        started.elapsed().as_secs_f64()
    );
    reset_database(&args.database_url).await?;
    let migrated = Command::new(bin_dir.join("payments-svc"))
        .arg("migrate")
        .env("DATABASE_URL", &args.database_url)
        .output()
        .context("payments-svc migrate")?;
    ensure!(migrated.status.success(), "migrate: {}", String::from_utf8_lossy(&migrated.stderr));

    // The account's first session is 400 days old.
    let since = "401d";
    let mut database = PostgresCpu::start()?;
    let started = Instant::now();
    let mut child = Command::new(bin_dir.join("payments-svc"))
        .args(["sync", "--since", since, "--json"])
        .env("DATABASE_URL", &args.database_url)
        .env("STRIPE_SECRET_KEY", FAKE_STRIPE_KEY)
        .env("STRIPE_API_BASE", stripe.base_url())
        .env("STRIPE_API_MAX_RPS", args.rps.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .context("payments-svc sync")?;
    // The summary names every session without metadata: more than a pipe
    // holds, so it is read while the sync runs.
    let mut stdout = child.stdout.take().context("stdout")?;
    let printed = std::thread::spawn(move || {
        let mut text = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut text).map(|_| text)
    });
    let (cpu, database) = tokio::task::spawn_blocking({
        let pid = child.id();
        move || cpu_when_done(pid, &mut database).map(|cpu| (cpu, database.spent()))
    })
    .await??;
    let status = tokio::task::spawn_blocking(move || child.wait()).await??;
    let wall = started.elapsed();
    let printed = printed.join().map_err(|_| anyhow::anyhow!("reading the summary"))??;
    ensure!(status.success(), "sync failed");
    let summary: serde_json::Value = serde_json::from_slice(&printed)?;
    ensure!(
        summary["total"]["seen"] == objects as u64,
        "sync saw {} of {objects} objects",
        summary["total"]["seen"]
    );
    ensure!(
        summary["total"]["pages"] == pages as u64,
        "sync read {} of {pages} pages",
        summary["total"]["pages"]
    );

    let floor = Duration::from_secs_f64(pages as f64 / f64::from(args.rps));
    let per_object = |seconds: f64| seconds * 1e6 / objects as f64;
    println!(
        "sync              {:.1} s for {objects} objects: {:.0} objects/s; floor {:.1} s ({pages} pages at {}/s): {:+.1} %",
        wall.as_secs_f64(),
        objects as f64 / wall.as_secs_f64(),
        floor.as_secs_f64(),
        args.rps,
        (wall.as_secs_f64() / floor.as_secs_f64() - 1.0) * 100.0
    );
    println!("cpu               payments-svc {cpu:.2} s: {:.1} µs per object", per_object(cpu));
    if args.database_url.starts_with("postgres") {
        println!("database          {database:.2} s CPU: {:.1} µs per object", per_object(database));
    }
    println!(
        "recorded          {} new, {} without metadata, {} skipped, {} changes published",
        summary["total"]["new"],
        summary["total"]["without_metadata"],
        summary["total"]["skipped"],
        summary["changes_published"]
    );
    Ok(())
}

/// The CPU the process `pid` used in all, read once it has exited (a zombie
/// until it is waited for, its times still in /proc), sampling
/// PostgreSQL's meanwhile.
fn cpu_when_done(pid: u32, database: &mut PostgresCpu) -> anyhow::Result<f64> {
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
        let state = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next());
        if state == Some("Z") {
            return cpu_seconds(pid);
        }
        database.sample()?;
        std::thread::sleep(Duration::from_millis(50));
    }
}
