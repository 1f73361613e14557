//! Signs a Stripe event file with the gateway's secret and posts it, the way
//! Stripe would. For trying the stack by hand:
//!
//! ```text
//! cargo run -p e2e --bin send-webhook -- tests/fixtures/stripe/checkout_session_completed_paid.json
//! ```

use std::path::PathBuf;

use anyhow::Context;
use bytes::Bytes;
use clap::Parser;
use e2e::{HttpClient, signature_now, unix_now, with_fresh_ids};
use webhook_gateway::signature::WebhookSecret;

/// Sign a Stripe event file and post it to the gateway.
#[derive(Parser)]
#[command(name = "send-webhook")]
struct Args {
    /// The event file (its bytes are sent exactly as they are).
    file: PathBuf,
    /// Signing secret; the first one is used when several are listed.
    /// Defaults to the development secret `scripts/run-local` starts with.
    #[arg(
        long,
        env = "STRIPE_WEBHOOK_SECRET",
        hide_env_values = true,
        value_delimiter = ',',
        default_value = "whsec_local_development_only"
    )]
    secret: Vec<String>,
    /// Webhook URL.
    #[arg(long, default_value = "http://127.0.0.1:3000/api/payments/webhook")]
    url: String,
    /// Give the event, session and payment intent fresh ids, so that the
    /// same file can be sent again as a new purchase.
    #[arg(long)]
    fresh_ids: bool,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let first = args.secret.first().map(|s| s.trim()).unwrap_or_default();
    let secret = WebhookSecret::new(first).map_err(anyhow::Error::msg).context("STRIPE_WEBHOOK_SECRET")?;
    let mut body =
        Bytes::from(std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?);
    if args.fresh_ids {
        body = with_fresh_ids(&body, &format!("_{}", unix_now()))?;
    }
    let answer = HttpClient::default()
        .post_webhook(&args.url, body.clone(), Some(&signature_now(&secret, &body)))
        .await?;
    println!("{} {}", answer.status, String::from_utf8_lossy(&answer.body));
    anyhow::ensure!(answer.status.is_success(), "the gateway did not accept the event");
    Ok(())
}
