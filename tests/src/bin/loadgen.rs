//! Load generator: starts payments-svc and webhook-gateway (the binaries next
//! to this one), floods the gateway with pre-signed unique events over C
//! keep-alive connections for a while, reports throughput, latency
//! percentiles, the services' CPU and memory and the database's CPU and WAL
//! per event, then checks the database holds exactly one event row per
//! distinct event, one purchase per distinct checkout and one fact per
//! distinct refund or dispute (`--reversals` mixes those in).
//!
//! ```text
//! cargo build --release -p payments-svc -p webhook-gateway -p e2e
//! target/release/loadgen --database-url postgres://postgres@127.0.0.1:5432/loadgen --connections 64 --duration 25
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use bytes::Bytes;
use clap::Parser;
use e2e::collector::{Collector, SpanCount};
use e2e::services::{self, Services, cpu_seconds, peak_rss_kib, postgres_cpu_seconds, reset_database};
use e2e::{fixture, metric_value, replace_once, unix_now, with_fresh_ids};
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use sea_orm::{ConnectionTrait, Database, Statement};
use tokio::net::TcpStream;
use webhook_gateway::signature::{WebhookSecret, sign};

const SECRET: &str = "whsec_loadgen_secret_0123456789";
/// The userId in the paid fixture, replaced so every purchase has its buyer.
const FIXTURE_USER: &str = "76579e2b-1d72-48ed-99f9-d14b4496249a";
/// Stands for the event number in the body template.
const MARK: &str = "\u{a7}";

/// Flood the stack with signed Stripe events and measure it.
#[derive(Parser)]
#[command(name = "loadgen")]
struct Args {
    /// Database for payments-svc; created (PostgreSQL) or emptied first.
    #[arg(long, default_value = "sqlite://loadgen.db?mode=rwc")]
    database_url: String,
    /// Concurrent keep-alive connections.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Seconds to send for.
    #[arg(long, default_value_t = 25)]
    duration: u64,
    /// Unique events to pre-sign; sending stops early when they run out.
    #[arg(long, default_value_t = 300_000)]
    events: usize,
    /// Share of sends that re-send an earlier event (0.0 to 1.0).
    #[arg(long, default_value_t = 0.0)]
    duplicates: f64,
    /// Share of unique events that are refunds and disputes (0.0 to 0.5):
    /// each reverses the checkout issued just before it, in turn a full
    /// refund, a dispute opened, a partial refund (`charge.refunded`) and a
    /// dispute won.
    #[arg(long, default_value_t = 0.0)]
    reversals: f64,
    /// Consumers of the purchase change feed attached while sending: each
    /// reads every change, and the report gives how long after its commit
    /// a change reached them.
    #[arg(long, default_value_t = 0)]
    watchers: usize,
    /// Consumers attached that never read (a 1 KiB HTTP/2 window each), to
    /// show they cost neither throughput nor memory.
    #[arg(long, default_value_t = 0)]
    stuck_watchers: usize,
    /// Export traces from both services to a collector started here (OTLP
    /// over gRPC, counting what arrives), sampling this share of webhooks
    /// (1.0 all, 0.01 one in a hundred); without it, tracing is off.
    #[arg(long)]
    trace_ratio: Option<f64>,
    /// Directory of the payments-svc and webhook-gateway binaries; default:
    /// the one this binary is in.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Send to the database as it is (one filled by `bench/size`, say)
    /// instead of emptying it; the check then counts what this run added.
    #[arg(long)]
    keep_database: bool,
    /// What the timed events are: `checkouts` (with `--reversals` mixed
    /// in); `reversals`, each of a checkout delivered untimed before the
    /// timed part starts; `unmatched`, refunds and disputes of payments
    /// nobody stored.
    #[arg(long, value_enum, default_value_t = Timed::Checkouts)]
    timed: Timed,
}

/// What the timed part of a run sends.
#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Timed {
    Checkouts,
    Reversals,
    Unmatched,
}

/// One thread: a load generator should spend its CPU on requests, not on
/// a work-stealing scheduler competing with the services for two cores.
#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    ensure!((0.0..=1.0).contains(&args.duplicates), "--duplicates is a share from 0.0 to 1.0");
    ensure!((0.0..=0.5).contains(&args.reversals), "--reversals is a share from 0.0 to 0.5");
    ensure!(
        args.timed == Timed::Checkouts || args.reversals == 0.0,
        "--reversals mixes reversals into checkouts; with --timed {} every event is one",
        if args.timed == Timed::Reversals { "reversals" } else { "unmatched" }
    );
    let bin_dir = services::bin_dir(args.bin_dir.as_deref())?;
    if !args.keep_database {
        reset_database(&args.database_url).await?;
    }

    let started = Instant::now();
    let signer = Signer::new()?;
    let (setup, events) = presign(&signer, args.events, args.reversals, args.timed);
    let events = Arc::new(events);
    eprintln!("pre-signed {} events in {:.1} s", setup.len() + events.len(), started.elapsed().as_secs_f64());

    // Limits well above the load, so that what is measured is throughput.
    let limits = [("GATEWAY_MAX_CONNECTIONS", "4096"), ("GATEWAY_MAX_IN_FLIGHT", "4096")];
    let collector = args.trace_ratio.map(traced).transpose()?;
    let tracing_env = collector.as_ref().map(|(env, _)| env.clone()).unwrap_or_default();
    let stack = Services::start(&bin_dir, &args.database_url, SECRET, &limits, &tracing_env)?;
    let stored = Stored::count(&args.database_url).await?;
    let setup = deliver_untimed(&stack.gateway_addr, setup, args.connections).await?;
    let feed = watch::attach(&stack.payments_grpc, args.watchers, args.stuck_watchers).await?;
    let database_before = DatabaseCost::read(&args.database_url).await?;
    let before = [cpu_seconds(stack.payments.id())?, cpu_seconds(stack.gateway.id())?];
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let report =
        drive(&stack.gateway_addr, Arc::clone(&events), args.connections, deadline, args.duplicates).await;
    let after = [cpu_seconds(stack.payments.id())?, cpu_seconds(stack.gateway.id())?];
    let database_after = DatabaseCost::read(&args.database_url).await?;
    let peak_rss = [peak_rss_kib(stack.payments.id())?, peak_rss_kib(stack.gateway.id())?];
    let batches = batch_sizes(&stack.payments_admin).await.unwrap_or_default();
    let feed = match feed {
        Some(feed) => Some(feed.catch_up(&args.database_url).await?),
        None => None,
    };
    drop(stack);

    let accepted = report.statuses.get(&200).copied().unwrap_or(0);
    let elapsed = report.elapsed.as_secs_f64();
    let cpu = [after[0] - before[0], after[1] - before[1]];
    println!("connections       {}", args.connections);
    println!("sent              {} in {elapsed:.1} s ({} distinct)", report.sent, report.totals.distinct);
    println!("events/s (2xx)    {:.0}", accepted as f64 / elapsed);
    println!(
        "latency           p50 {:.2} ms  p99 {:.2} ms  p99.9 {:.2} ms  max {:.2} ms",
        ms(report.latency.value_at_quantile(0.50)),
        ms(report.latency.value_at_quantile(0.99)),
        ms(report.latency.value_at_quantile(0.999)),
        ms(report.latency.max())
    );
    println!("statuses          {:?} (connection errors: {})", report.statuses, report.connection_errors);
    println!("group commit      {batches}");
    println!(
        "cpu               payments-svc {:.2} s, gateway {:.2} s: {:.1} µs per event",
        cpu[0],
        cpu[1],
        (cpu[0] + cpu[1]) * 1e6 / accepted.max(1) as f64
    );
    println!(
        "peak rss          payments-svc {:.1} MB, gateway {:.1} MB, together {:.1} MB",
        peak_rss[0] as f64 / 1024.0,
        peak_rss[1] as f64 / 1024.0,
        (peak_rss[0] + peak_rss[1]) as f64 / 1024.0
    );
    if let (Some((_, spans)), Some(ratio)) = (&collector, args.trace_ratio) {
        println!("traces            sampling {ratio}: {} spans exported", spans.get());
    }
    if let (Some(before), Some(after)) = (database_before, database_after) {
        println!("{}", DatabaseCost::line(&before, &after, accepted));
    }
    if let Some(feed) = feed {
        println!("{feed}");
    }
    let run = setup.totals.plus(report.totals);
    check_database(&args.database_url, &stored, &run, &signer.run).await
}

/// Delivers `events` as fast as the connections go, before the timed part
/// (the checkouts that `--timed reversals` reverses); every one must be
/// accepted.
async fn deliver_untimed(addr: &str, events: Vec<Signed>, connections: usize) -> anyhow::Result<Report> {
    if events.is_empty() {
        return Ok(Report::empty());
    }
    let started = Instant::now();
    let total = events.len();
    let far = Instant::now() + Duration::from_secs(3600);
    let report = drive(addr, Arc::new(events), connections, far, 0.0).await;
    ensure!(
        report.totals.delivered == total,
        "only {} of the {total} untimed checkouts were accepted",
        report.totals.delivered
    );
    eprintln!("delivered {total} untimed checkouts in {:.1} s", started.elapsed().as_secs_f64());
    Ok(report)
}

/// A collector for the services' traces, and the variables that make them
/// export to it, sampling `ratio` of the webhooks (payments-svc follows the
/// gateway's decision, carried in the trace context).
fn traced(ratio: f64) -> anyhow::Result<(Vec<(String, String)>, SpanCount)> {
    ensure!((0.0..=1.0).contains(&ratio), "--trace-ratio is a share from 0.0 to 1.0");
    let (endpoint, spans) = Collector::counting_on_own_thread()?;
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".to_owned()),
        ("OTEL_TRACES_SAMPLER_ARG", ratio.to_string()),
    ];
    Ok((env.map(|(name, value)| (name.to_owned(), value)).to_vec(), spans))
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// A pre-signed delivery: the body, its signature header, and whether it is
/// a refund or dispute rather than a checkout.
type Signed = (Bytes, String, bool);

/// The reversal fixtures `--reversals` cycles through, and the ids in each
/// that are made unique per checkout.
const REVERSALS: &[&str] = &[
    "refund_created_full.json",
    "charge_dispute_created.json",
    "charge_refunded_partial.json",
    "charge_dispute_closed_won.json",
];

/// Bodies of `count` distinct events with their signature headers, signed
/// now (the run must finish within the gateway's 300 s tolerance), with
/// ids of this run's own (so that runs on a kept database never meet):
/// what to deliver untimed first, and what to time. For `--timed
/// checkouts`: paid checkouts (fresh event, session and payment intent
/// ids, a buyer each), with `reversals` above 0 every so often a refund or
/// dispute of the checkout just before it. For `reversals`: `count`
/// checkouts untimed, then a refund or dispute of each. For `unmatched`:
/// refunds and disputes of payments nobody stored.
fn presign(signer: &Signer, count: usize, reversals: f64, timed: Timed) -> (Vec<Signed>, Vec<Signed>) {
    match timed {
        Timed::Checkouts => {
            let period = if reversals > 0.0 { (1.0 / reversals).round() as usize } else { usize::MAX };
            let events = (0..count)
                .map(|n| {
                    if n % period == period - 1 {
                        signer.reversal(n / period, &(n - 1).to_string())
                    } else {
                        signer.checkout(&n.to_string())
                    }
                })
                .collect();
            (Vec::new(), events)
        }
        Timed::Reversals => (
            (0..count).map(|n| signer.checkout(&n.to_string())).collect(),
            (0..count).map(|n| signer.reversal(n, &n.to_string())).collect(),
        ),
        Timed::Unmatched => (Vec::new(), (0..count).map(|n| signer.reversal(n, &format!("u{n}"))).collect()),
    }
}

/// Signs deliveries made from the fixtures' templates.
struct Signer {
    checkout: Vec<String>,
    /// The reversal fixtures in [`REVERSALS`]' order.
    reversals: Vec<Vec<String>>,
    secret: WebhookSecret,
    now: i64,
    /// Begins every number that makes an id unique.
    run: String,
}

impl Signer {
    fn new() -> anyhow::Result<Self> {
        let paid = fixture("checkout_session_completed_paid.json")?;
        let marked = with_fresh_ids(&paid, MARK)?;
        let marked = replace_once(
            &marked,
            &format!("\"userId\": \"{FIXTURE_USER}\""),
            &format!("\"userId\": \"u{MARK}\""),
        )?;
        let reversals = REVERSALS
            .iter()
            .map(|name| template(&reversal_marked(&fixture(name)?)?))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let now = unix_now();
        Ok(Self {
            checkout: template(&marked)?,
            reversals,
            secret: WebhookSecret::new(SECRET).map_err(anyhow::Error::msg)?,
            now,
            run: format!("r{}_", now % 100_000_000),
        })
    }

    /// A paid checkout with ids ending in `number`.
    fn checkout(&self, number: &str) -> Signed {
        self.signed(self.checkout.join(&format!("{}{number}", self.run)), false)
    }

    /// The `nth` refund or dispute (the fixtures in turn) of the payment of
    /// the checkout whose ids end in `number`.
    fn reversal(&self, nth: usize, number: &str) -> Signed {
        let template = &self.reversals[nth % self.reversals.len()];
        self.signed(template.join(&format!("{}{number}", self.run)), true)
    }

    fn signed(&self, body: String, is_reversal: bool) -> Signed {
        let body = Bytes::from(body);
        let header = sign(&self.secret, self.now, &body);
        (body, header, is_reversal)
    }
}

/// A body split at every [`MARK`].
fn template(marked: &[u8]) -> anyhow::Result<Vec<String>> {
    Ok(std::str::from_utf8(marked)?.split(MARK).map(str::to_owned).collect())
}

/// A reversal fixture with its event id and the ids of its object, payment
/// intent and charge marked, so that it reverses the checkout whose number
/// replaces the mark.
fn reversal_marked(body: &[u8]) -> anyhow::Result<Bytes> {
    let parsed: serde_json::Value = serde_json::from_slice(body).context("fixture is not JSON")?;
    let object = &parsed["data"]["object"];
    let ids = [
        parsed["id"].as_str(),
        object["id"].as_str(),
        object["payment_intent"].as_str(),
        object["charge"].as_str(),
    ];
    let mut text = String::from_utf8(body.to_vec()).context("fixture is not UTF-8")?;
    for id in ids.into_iter().flatten() {
        text = text.replace(&format!("\"{id}\""), &format!("\"{id}{MARK}\""));
    }
    Ok(Bytes::from(text))
}

#[derive(Debug)]
struct Report {
    sent: usize,
    /// What was handed out and accepted, for the check.
    totals: Totals,
    elapsed: Duration,
    latency: Histogram<u64>,
    statuses: BTreeMap<u16, usize>,
    connection_errors: usize,
}

/// How many distinct events a run handed out and how many were accepted,
/// and of those the refunds and disputes: what the check expects stored.
#[derive(Debug, Clone, Copy, Default)]
struct Totals {
    /// Distinct events handed out to connections.
    distinct: usize,
    /// Distinct events that got a 2xx.
    delivered: usize,
    /// Of `distinct` and `delivered`, the refunds and disputes.
    distinct_reversals: usize,
    delivered_reversals: usize,
}

impl Totals {
    fn plus(self, other: Self) -> Self {
        Self {
            distinct: self.distinct + other.distinct,
            delivered: self.delivered + other.delivered,
            distinct_reversals: self.distinct_reversals + other.distinct_reversals,
            delivered_reversals: self.delivered_reversals + other.delivered_reversals,
        }
    }
}

impl Report {
    fn empty() -> Self {
        Self {
            sent: 0,
            totals: Totals::default(),
            elapsed: Duration::ZERO,
            // Microseconds, from 1 µs to a minute, three significant digits.
            latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds"),
            statuses: BTreeMap::new(),
            connection_errors: 0,
        }
    }
}

/// Sends from `connections` tasks until `deadline` or the events run out,
/// re-sending a share `duplicates` of earlier ones.
async fn drive(
    addr: &str,
    events: Arc<Vec<Signed>>,
    connections: usize,
    deadline: Instant,
    duplicates: f64,
) -> Report {
    let next = Arc::new(AtomicUsize::new(0));
    let delivered: Arc<Vec<AtomicBool>> =
        Arc::new((0..events.len()).map(|_| AtomicBool::new(false)).collect());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for connection in 0..connections {
        let (addr, events, next, delivered) =
            (addr.to_owned(), Arc::clone(&events), Arc::clone(&next), Arc::clone(&delivered));
        tasks.spawn(async move {
            let shared = Shared { events: &events, next: &next, delivered: &delivered };
            connection_loop(&addr, shared, deadline, duplicates, connection).await
        });
    }
    let mut report = Report::empty();
    for part in tasks.join_all().await {
        report.sent += part.sent;
        report.connection_errors += part.connection_errors;
        let _ = report.latency.add(&part.latency);
        for (status, count) in part.statuses {
            *report.statuses.entry(status).or_default() += count;
        }
    }
    report.elapsed = started.elapsed();
    let distinct = next.load(Ordering::Relaxed).min(events.len());
    report.totals = Totals {
        distinct,
        delivered: delivered.iter().filter(|d| d.load(Ordering::Relaxed)).count(),
        distinct_reversals: events[..distinct].iter().filter(|(_, _, reversal)| *reversal).count(),
        delivered_reversals: delivered
            .iter()
            .zip(events.iter())
            .filter(|(d, e)| e.2 && d.load(Ordering::Relaxed))
            .count(),
    };
    report
}

/// What every connection task shares.
#[derive(Clone, Copy)]
struct Shared<'a> {
    events: &'a [Signed],
    next: &'a AtomicUsize,
    delivered: &'a [AtomicBool],
}

async fn connection_loop(
    addr: &str,
    shared: Shared<'_>,
    deadline: Instant,
    duplicates: f64,
    seed: usize,
) -> Report {
    let Shared { events, next, delivered } = shared;
    let mut part = Report::empty();
    let mut sender = None;
    let mut rng = seed as u64 * 2_654_435_761 + 1;
    while Instant::now() < deadline {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let resend = (rng % 10_000) as f64 / 10_000.0 < duplicates;
        let issued = next.load(Ordering::Relaxed);
        let index = if resend && issued > 0 {
            (rng as usize) % issued.min(events.len())
        } else {
            let index = next.fetch_add(1, Ordering::Relaxed);
            if index >= events.len() {
                break;
            }
            index
        };
        if sender.is_none() {
            sender = connect(addr).await.ok();
        }
        let Some(connection) = sender.as_mut() else {
            part.connection_errors += 1;
            continue;
        };
        let (body, header, _) = &events[index];
        let request = Request::post(format!("http://{addr}/api/payments/webhook"))
            .header("content-type", "application/json; charset=utf-8")
            .header("stripe-signature", header.as_str())
            .body(Full::new(body.clone()))
            .expect("request");
        let sent_at = Instant::now();
        match send(connection, request).await {
            Ok(status) => {
                let _ = part.latency.record(sent_at.elapsed().as_micros() as u64);
                *part.statuses.entry(status).or_default() += 1;
                part.sent += 1;
                if (200..300).contains(&status) {
                    delivered[index].store(true, Ordering::Relaxed);
                }
            }
            Err(_) => {
                part.connection_errors += 1;
                sender = None;
            }
        }
    }
    part
}

type Connection = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn connect(addr: &str) -> anyhow::Result<Connection> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn send(connection: &mut Connection, request: Request<Full<Bytes>>) -> anyhow::Result<u16> {
    connection.ready().await?;
    let response = connection.send_request(request).await?;
    let status = response.status().as_u16();
    response.into_body().collect().await?;
    Ok(status)
}

/// payments-svc's group-commit figures, from its metrics.
async fn batch_sizes(admin: &str) -> anyhow::Result<String> {
    let answer = e2e::HttpClient::default()
        .send(hyper::Method::GET, &format!("http://{admin}/metrics"), &[], Bytes::new())
        .await?;
    let text = String::from_utf8_lossy(&answer.body).into_owned();
    let value = |series: &str| metric_value(&text, series).unwrap_or(0.0);
    let (count, sum) = (value("payments_batch_size_count "), value("payments_batch_size_sum "));
    Ok(format!(
        "{count:.0} batches, {:.1} events per batch on average, {:.0} fallbacks",
        sum / count.max(1.0),
        value("payments_batch_fallbacks_total ")
    ))
}

/// What the database server spent: its processes' CPU (when it runs on
/// this machine) and the WAL it wrote. PostgreSQL shares the cores with the
/// services, so its cost per event is part of theirs; and unlike events/s
/// it barely moves with the machine's mood, so it shows small changes.
struct DatabaseCost {
    cpu_seconds: f64,
    wal_lsn: i64,
}

impl DatabaseCost {
    /// `None` on SQLite, which runs inside payments-svc.
    async fn read(url: &str) -> anyhow::Result<Option<Self>> {
        if !url.starts_with("postgres") {
            return Ok(None);
        }
        let db = Database::connect(url).await?;
        let statement = Statement::from_string(
            db.get_database_backend(),
            "SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::int8",
        );
        let row = db.query_one_raw(statement).await?.context("the WAL position")?;
        let wal_lsn = row.try_get_by_index::<i64>(0)?;
        db.close().await?;
        Ok(Some(Self { cpu_seconds: postgres_cpu_seconds()?, wal_lsn }))
    }

    fn line(before: &Self, after: &Self, events: usize) -> String {
        let events = events.max(1) as f64;
        format!(
            "database          {:.2} s CPU ({:.1} µs per event), {:.0} bytes of WAL per event",
            after.cpu_seconds - before.cpu_seconds,
            (after.cpu_seconds - before.cpu_seconds) * 1e6 / events,
            (after.wal_lsn - before.wal_lsn) as f64 / events
        )
    }
}

/// What the database held before the run, so that the check counts only
/// what the run added (a kept database holds millions of rows already).
struct Stored {
    events: i64,
    purchases: i64,
    reversals: i64,
    changes: i64,
}

impl Stored {
    async fn count(url: &str) -> anyhow::Result<Self> {
        let db = Database::connect(url).await?;
        let [events, purchases, reversals, changes] = counts(
            &db,
            [
                "SELECT COUNT(*) FROM stripe_webhook_events",
                "SELECT COUNT(*) FROM course_purchases",
                "SELECT COUNT(*) FROM payment_reversals",
                "SELECT COUNT(*) FROM purchase_changes",
            ],
        )
        .await?;
        db.close().await?;
        Ok(Self { events, purchases, reversals, changes })
    }
}

/// Each query's single count.
async fn counts<const N: usize>(
    db: &sea_orm::DatabaseConnection,
    queries: [&str; N],
) -> anyhow::Result<[i64; N]> {
    let mut values = [0; N];
    for (value, sql) in values.iter_mut().zip(queries) {
        let statement = Statement::from_string(db.get_database_backend(), sql.to_owned());
        let row = db.query_one_raw(statement).await?.context("a count")?;
        *value = row.try_get_by_index::<i64>(0)?;
    }
    Ok(values)
}

/// Since `stored`: one event row per distinct event, one purchase per
/// distinct checkout and one reversal fact per distinct refund or dispute,
/// nothing else; and every event processed, every purchase published.
/// Every event that got a 2xx is there; one whose answer was lost may be
/// too, so with failures each count lies between the delivered and the
/// issued.
async fn check_database(url: &str, stored: &Stored, run: &Totals, tag: &str) -> anyhow::Result<()> {
    let db = Database::connect(url).await?;
    let unprocessed = format!(
        "SELECT COUNT(*) FROM stripe_webhook_events WHERE status <> 'processed' AND event_id LIKE '%{tag}%'"
    );
    let [events, unprocessed, purchases, sessions, reversals, changes, unpublished] = counts(
        &db,
        [
            "SELECT COUNT(*) FROM stripe_webhook_events",
            &unprocessed,
            "SELECT COUNT(*) FROM course_purchases",
            "SELECT COUNT(DISTINCT stripe_checkout_session_id) FROM course_purchases",
            "SELECT COUNT(*) FROM payment_reversals",
            "SELECT COUNT(*) FROM purchase_changes",
            "SELECT COUNT(*) FROM course_purchases WHERE access_status IS NULL",
        ],
    )
    .await?;
    let added = (
        events - stored.events,
        purchases - stored.purchases,
        reversals - stored.reversals,
        changes - stored.changes,
    );
    let (events, purchases, reversals, changes) = added;
    println!(
        "database          +{events} events ({unprocessed} of this run's not processed), +{purchases} purchases, +{reversals} reversals, +{changes} changes"
    );
    ensure!(unpublished == 0 && changes >= purchases, "expected every purchase published to the change feed");
    let within = |value: i64, low: usize, high: usize| (low as i64..=high as i64).contains(&value);
    let checkouts = (run.delivered - run.delivered_reversals, run.distinct - run.distinct_reversals);
    ensure!(
        within(events, run.delivered, run.distinct) && unprocessed == 0,
        "expected one processed event row per delivered event ({} to {})",
        run.delivered,
        run.distinct
    );
    ensure!(
        within(purchases, checkouts.0, checkouts.1) && sessions == stored.purchases + purchases,
        "expected one purchase per delivered checkout ({} to {})",
        checkouts.0,
        checkouts.1
    );
    ensure!(
        within(reversals, run.delivered_reversals, run.distinct_reversals),
        "expected one reversal fact per delivered refund or dispute ({} to {})",
        run.delivered_reversals,
        run.distinct_reversals
    );
    println!(
        "check             ok: one event row per distinct event, one purchase per checkout, one fact per reversal, every purchase in the feed"
    );
    Ok(())
}

/// Change-feed consumers attached to payments-svc during a run.
mod watch {
    use std::fmt;
    use std::time::{Duration, SystemTime};

    use anyhow::{Context, ensure};
    use hdrhistogram::Histogram;
    use payments_proto::v1::WatchPurchaseChangesRequest;
    use payments_proto::v1::payments_client::PaymentsClient;
    use sea_orm::{ConnectionTrait, Database, Statement};
    use tokio::task::JoinHandle;
    use tonic::transport::Endpoint;

    /// What one reading consumer saw: the cursors in order, and how long
    /// after its `at` each change arrived, in microseconds.
    struct Seen {
        cursors: Vec<u64>,
        delay: Histogram<u64>,
    }

    pub struct Attached {
        readers: Vec<(JoinHandle<anyhow::Result<Seen>>, tokio::sync::watch::Sender<u64>)>,
        /// Held open, never read.
        _stuck: Vec<tonic::Streaming<payments_proto::v1::PurchaseChange>>,
    }

    pub struct Summary {
        watchers: usize,
        stuck: usize,
        changes: usize,
        delay: Histogram<u64>,
    }

    /// Opens `watchers` reading consumers and `stuck` ones; `None` if none.
    pub async fn attach(url: &str, watchers: usize, stuck: usize) -> anyhow::Result<Option<Attached>> {
        if watchers + stuck == 0 {
            return Ok(None);
        }
        let mut readers = Vec::new();
        for _ in 0..watchers {
            let mut client = PaymentsClient::connect(url.to_owned()).await?;
            let stream = client.watch_purchase_changes(WatchPurchaseChangesRequest { after: 0 }).await?;
            let (until, stop_at) = tokio::sync::watch::channel(u64::MAX);
            readers.push((tokio::spawn(read(stream.into_inner(), stop_at)), until));
        }
        let mut stuck_streams = Vec::new();
        for _ in 0..stuck {
            let channel = Endpoint::from_shared(url.to_owned())?.initial_stream_window_size(Some(1024));
            let mut client = PaymentsClient::new(channel.connect().await?);
            let stream = client.watch_purchase_changes(WatchPurchaseChangesRequest { after: 0 }).await?;
            stuck_streams.push(stream.into_inner());
        }
        Ok(Some(Attached { readers, _stuck: stuck_streams }))
    }

    /// Reads until the cursor `until` holds has been received.
    async fn read(
        mut stream: tonic::Streaming<payments_proto::v1::PurchaseChange>,
        mut until: tokio::sync::watch::Receiver<u64>,
    ) -> anyhow::Result<Seen> {
        let mut seen = Seen {
            cursors: Vec::new(),
            delay: Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds"),
        };
        loop {
            if seen.cursors.last().is_some_and(|last| *last >= *until.borrow()) {
                return Ok(seen);
            }
            tokio::select! {
                message = stream.message() => {
                    let change = message?.context("the watch ended")?;
                    let at = change.at.context("at")?;
                    let at = SystemTime::UNIX_EPOCH + Duration::new(at.seconds as u64, at.nanos as u32);
                    let delay = SystemTime::now().duration_since(at).unwrap_or_default();
                    let _ = seen.delay.record(delay.as_micros().max(1) as u64);
                    seen.cursors.push(change.cursor);
                }
                _ = until.changed() => {}
            }
        }
    }

    impl Attached {
        /// Waits for every reading consumer to reach the newest change in
        /// the database, and checks each received the whole feed once, in
        /// order; `None` when no consumer was attached.
        pub async fn catch_up(self, database_url: &str) -> anyhow::Result<Summary> {
            let db = Database::connect(database_url).await?;
            let all = "SELECT cursor FROM purchase_changes ORDER BY cursor";
            let rows = db.query_all_raw(Statement::from_string(db.get_database_backend(), all)).await?;
            let stored: Vec<u64> = rows
                .iter()
                .map(|row| row.try_get_by_index::<i64>(0).map(|c| c as u64))
                .collect::<Result<_, _>>()?;
            let head = stored.last().copied().unwrap_or(0);
            let mut delay = Histogram::new_with_bounds(1, 600_000_000, 3).expect("bounds");
            let watchers = self.readers.len();
            for (reader, until) in self.readers {
                until.send_replace(head);
                let seen = tokio::time::timeout(Duration::from_secs(60), reader)
                    .await
                    .context("catching up")???;
                ensure!(seen.cursors == stored, "a consumer did not receive exactly the feed, in order");
                delay.add(&seen.delay)?;
            }
            Ok(Summary { watchers, stuck: self._stuck.len(), changes: stored.len(), delay })
        }
    }

    impl fmt::Display for Summary {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            let ms = |q: f64| self.delay.value_at_quantile(q) as f64 / 1000.0;
            write!(
                f,
                "change feed       {} watchers ({} stuck): each got all {} changes in order; after commit p50 {:.1} ms  p99 {:.1} ms  max {:.1} ms",
                self.watchers,
                self.stuck,
                self.changes,
                ms(0.5),
                ms(0.99),
                self.delay.max() as f64 / 1000.0
            )
        }
    }
}
