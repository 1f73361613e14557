//! Flood: how much memory a stranger without the signing secret can make the
//! gateway hold, and whether it gives it back. Starts the services (the
//! binaries next to this one) with the gateway's default limits, then, in
//! waves, opens many connections that each post most of a large webhook body,
//! alternately with no signature and with one shaped right that matches
//! nothing, while real signed webhooks keep arriving. Reports the gateway's
//! resident memory before, at the peak, and some time after the flood, and
//! what the real webhooks were answered.
//!
//! ```text
//! cargo build --release -p payments-svc -p webhook-gateway -p e2e
//! target/release/flood --waves 14
//! ```

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::Parser;
use e2e::services::{self, Services, rss_kib};
use e2e::{HttpClient, unique_paid_event, unix_now};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use webhook_gateway::signature::{WebhookSecret, sign};

const SECRET: &str = "whsec_flood_secret_0123456789";

/// Flood the gateway with unauthenticated bodies and measure its memory.
#[derive(Parser)]
#[command(name = "flood")]
struct Args {
    /// Connections opened at once in each wave.
    #[arg(long, default_value_t = 512)]
    connections: usize,
    /// Declared body size of each attacking request; all but its last byte
    /// is sent.
    #[arg(long, default_value_t = 1_000_000)]
    body_bytes: usize,
    /// Waves of connections, one after another.
    #[arg(long, default_value_t = 14)]
    waves: usize,
    /// How long each attacking connection waits for an answer before it
    /// closes, in milliseconds.
    #[arg(long, default_value_t = 2_000)]
    hold_ms: u64,
    /// Seconds to watch the memory after the flood.
    #[arg(long, default_value_t = 30)]
    settle_secs: u64,
    /// Directory of the payments-svc and webhook-gateway binaries; default:
    /// the one this binary is in.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let bin_dir = services::bin_dir(args.bin_dir.as_deref())?;
    let work = std::env::temp_dir().join(format!("flood-{}", std::process::id()));
    std::fs::create_dir_all(&work)?;
    let database_url = format!("sqlite://{}/flood.db?mode=rwc", work.display());
    let services = Services::start(&bin_dir, &database_url, SECRET, &[], &[])?;
    let pid = services.gateway.id();
    let baseline = rss_kib(pid)?;

    let peak = Arc::new(AtomicU64::new(baseline));
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample_peak(pid, Arc::clone(&peak), Arc::clone(&stop)));
    let real = tokio::spawn(real_webhooks(services.gateway_addr.clone(), Arc::clone(&stop)));
    let started = Instant::now();
    for wave in 0..args.waves {
        let signed = wave % 2 == 1;
        wave_of_strangers(&services.gateway_addr, &args, signed).await;
    }
    let flood_secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let answers = real.await?;
    sampler.await?;
    let at_peak = peak.load(Ordering::Relaxed);
    let mut settled = Vec::new();
    for _ in 0..args.settle_secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        settled.push(rss_kib(pid)?);
    }
    drop(services);
    let _ = std::fs::remove_dir_all(&work);

    let mb = |kib: u64| kib as f64 / 1024.0;
    println!(
        "flood             {} waves of {} connections, {} bytes declared each, {flood_secs:.1} s",
        args.waves, args.connections, args.body_bytes
    );
    println!("gateway rss       before {:.1} MB, peak {:.1} MB", mb(baseline), mb(at_peak));
    println!(
        "after the flood   {:.1} MB after 1 s, {:.1} MB after {} s",
        mb(settled.first().copied().unwrap_or(0)),
        mb(settled.last().copied().unwrap_or(0)),
        args.settle_secs
    );
    println!("real webhooks     {answers:?} (status: count)");
    Ok(())
}

/// Keeps the highest resident memory seen, every 20 ms, until `stop`.
async fn sample_peak(pid: u32, peak: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        if let Ok(rss) = rss_kib(pid) {
            peak.fetch_max(rss, Ordering::Relaxed);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A real signed webhook every 50 ms until `stop`; the answers by status
/// (0: no answer at all).
async fn real_webhooks(addr: String, stop: Arc<AtomicBool>) -> BTreeMap<u16, usize> {
    let secret = WebhookSecret::new(SECRET).expect("a valid secret");
    let (http, url) = (HttpClient::default(), format!("http://{addr}/api/payments/webhook"));
    let mut answers = BTreeMap::new();
    let mut n = 0;
    while !stop.load(Ordering::Relaxed) {
        let body = unique_paid_event(n).expect("fixture");
        let signature = sign(&secret, unix_now(), &body);
        let status = match http.post_webhook(&url, body, Some(&signature)).await {
            Ok(answer) => answer.status.as_u16(),
            Err(_) => 0,
        };
        *answers.entry(status).or_default() += 1;
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    answers
}

/// `connections` strangers at once, each posting most of a large body.
async fn wave_of_strangers(addr: &str, args: &Args, signed: bool) {
    let mut strangers = tokio::task::JoinSet::new();
    for _ in 0..args.connections {
        let (addr, body_bytes, hold) =
            (addr.to_owned(), args.body_bytes, Duration::from_millis(args.hold_ms));
        strangers.spawn(async move { stranger(&addr, body_bytes, signed, hold).await });
    }
    strangers.join_all().await;
}

/// Posts all but the last byte of a `body_bytes` body, with no signature or
/// with a fresh one that matches nothing, then waits up to `hold` for an
/// answer and closes. Errors (the gateway closing first) are what a refusal
/// looks like from here.
async fn stranger(addr: &str, body_bytes: usize, signed: bool, hold: Duration) {
    let Ok(mut stream) = TcpStream::connect(addr).await else { return };
    let signature = if signed {
        format!("stripe-signature: t={},v1={}\r\n", unix_now(), "0".repeat(64))
    } else {
        String::new()
    };
    let head = format!(
        "POST /api/payments/webhook HTTP/1.1\r\nhost: gateway\r\ncontent-type: application/json\r\n\
         {signature}content-length: {body_bytes}\r\n\r\n"
    );
    if stream.write_all(head.as_bytes()).await.is_err() {
        return;
    }
    let chunk = Bytes::from(vec![b' '; 64 * 1024]);
    let mut left = body_bytes.saturating_sub(1);
    while left > 0 {
        let part = &chunk[..left.min(chunk.len())];
        if stream.write_all(part).await.is_err() {
            return;
        }
        left -= part.len();
    }
    let mut answer = [0u8; 512];
    let _ = tokio::time::timeout(hold, stream.read(&mut answer)).await;
}
