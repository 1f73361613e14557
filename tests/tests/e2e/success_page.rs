//! The checkout success page, in a real headless Chromium driven through
//! chromedriver (Debian's `chromium` and `chromium-driver`).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::fixture;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

use crate::fake_stripe::FakeStripe;
use crate::helpers::{Stack, StackOptions, TestDb};

/// How long the page may take to reach a state; it polls with growing pauses.
const PAGE_DEADLINE: Duration = Duration::from_secs(30);

/// A chromedriver process and one headless Chromium session through it.
struct Browser {
    client: Client,
    driver: Child,
    _profile: tempfile::TempDir,
}

impl Browser {
    async fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let mut driver =
            Command::new("chromedriver").arg(format!("--port={port}")).stdout(Stdio::piped()).spawn().expect(
                "chromedriver is installed (apt-get install chromium chromium-driver; scripts/test does it)",
            );
        let ready = BufReader::new(driver.stdout.take().expect("stdout"))
            .lines()
            .map_while(Result::ok)
            .any(|line| line.contains("started successfully"));
        assert!(ready, "chromedriver did not start");

        let profile = tempfile::tempdir().expect("profile directory");
        let options = serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": [
                "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                format!("--user-data-dir={}", profile.path().display()),
            ],
        });
        let mut capabilities = serde_json::Map::new();
        capabilities.insert("goog:chromeOptions".into(), options);
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{port}"))
            .await
            .expect("a Chromium session");
        Self { client, driver, _profile: profile }
    }

    /// Opens the success page for `session_id` and waits until it shows
    /// `state`; returns the text it shows then.
    async fn open(&self, stack: &Stack, session_id: &str) {
        let url = stack.url(&format!("/checkout/success?session_id={session_id}"));
        self.client.goto(&url).await.expect("page loads");
    }

    async fn wait_for_state(&self, state: &str) -> String {
        let selector = format!(r#"#status[data-state="{state}"]"#);
        let element = self
            .client
            .wait()
            .at_most(PAGE_DEADLINE)
            .for_element(Locator::Css(&selector))
            .await
            .unwrap_or_else(|e| panic!("the page never showed {state}: {e}"));
        element.text().await.expect("text")
    }

    async fn close(mut self) {
        let _ = self.client.clone().close().await;
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

fn session_id_in(event: &[u8]) -> String {
    let parsed: serde_json::Value = serde_json::from_slice(event).expect("JSON");
    parsed["data"]["object"]["id"].as_str().expect("session id").to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_page_confirms_identically_whichever_path_recorded_the_purchase() {
    let stripe = FakeStripe::start().await;
    let options = StackOptions { stripe_api_base: Some(stripe.base_url()), ..Default::default() };
    let stack = Stack::start_with(TestDb::sqlite().await, options).await;
    let by_webhook = fixture("checkout_session_completed_paid.json").expect("fixture");
    stack.deliver(&by_webhook).await;
    let by_verify = e2e::with_fresh_ids(&fixture("checkout_session.object.json").expect("fixture"), "_page")
        .expect("session");
    stripe.add_session(by_verify.clone());
    let verify_session: serde_json::Value = serde_json::from_slice(&by_verify).expect("JSON");
    let browser = Browser::start().await;

    browser.open(&stack, &session_id_in(&by_webhook)).await;
    let after_webhook = browser.wait_for_state("confirmed").await;
    browser.open(&stack, verify_session["id"].as_str().expect("id")).await;
    let after_verify = browser.wait_for_state("confirmed").await;

    assert!(after_webhook.contains("Purchase confirmed"), "{after_webhook}");
    assert!(
        after_webhook.contains("1c84b1e7-2a6d-4639-9cac-0dc8488f9f9b"),
        "shows the course: {after_webhook}"
    );
    assert_eq!(after_verify, after_webhook);
    assert_eq!(stack.purchases().await.len(), 2);
    browser.close().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_page_shows_processing_until_the_delayed_payment_clears() {
    let stack = Stack::start(TestDb::sqlite().await).await;
    let completed_unpaid = fixture("checkout_session_completed_unpaid_async.json").expect("fixture");
    stack.deliver(&completed_unpaid).await;
    let browser = Browser::start().await;

    browser.open(&stack, &session_id_in(&completed_unpaid)).await;
    let processing = browser.wait_for_state("pending").await;
    stack.deliver(&fixture("checkout_session_async_payment_succeeded.json").expect("fixture")).await;
    let confirmed = browser.wait_for_state("confirmed").await;

    assert!(processing.contains("Payment processing"), "{processing}");
    assert!(confirmed.contains("Purchase confirmed"), "{confirmed}");
    assert!(confirmed.contains("Course 42"), "{confirmed}");
    browser.close().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_page_says_clearly_when_the_checkout_is_unknown() {
    let stack = Stack::start(TestDb::sqlite().await).await;
    let browser = Browser::start().await;

    browser.open(&stack, "cs_test_nobody_ever_paid_this").await;
    let unknown = browser.wait_for_state("not_found").await;
    browser.open(&stack, "not-a-session-id").await;
    let malformed = browser.wait_for_state("not_found").await;

    assert!(unknown.contains("We cannot find this checkout"), "{unknown}");
    assert!(malformed.contains("We cannot find this checkout"), "{malformed}");
    browser.close().await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn success_page_says_clearly_when_money_went_back() {
    let stack = Stack::start(TestDb::sqlite().await).await;
    let paid = fixture("checkout_session_completed_paid.json").expect("fixture");
    let disputed = e2e::with_fresh_ids(&paid, "_disputed").expect("variant");
    let lost = e2e::with_fresh_ids(&paid, "_lost").expect("variant");
    for (body, reversal, suffix) in [
        (&paid, "refund_created_full.json", ""),
        (&disputed, "charge_dispute_created.json", "_disputed"),
        (&lost, "charge_dispute_closed_lost.json", "_lost"),
    ] {
        stack.deliver(body).await;
        let reversal = String::from_utf8(fixture(reversal).expect("fixture").to_vec()).expect("UTF-8");
        let event_id = serde_json::from_str::<serde_json::Value>(&reversal).expect("JSON")["id"]
            .as_str()
            .expect("id")
            .to_owned();
        let reversal = reversal
            .replace("pi_3chHPNw84sPSl7cwMX3oOFxK\"", &format!("pi_3chHPNw84sPSl7cwMX3oOFxK{suffix}\""))
            .replace(&format!("{event_id}\""), &format!("{event_id}{suffix}\""));
        stack.deliver(&bytes::Bytes::from(reversal)).await;
    }
    let browser = Browser::start().await;

    browser.open(&stack, &session_id_in(&paid)).await;
    let refunded = browser.wait_for_state("refunded").await;
    browser.open(&stack, &session_id_in(&disputed)).await;
    let on_hold = browser.wait_for_state("disputed").await;
    browser.open(&stack, &session_id_in(&lost)).await;
    let withdrawn = browser.wait_for_state("revoked").await;

    assert!(refunded.contains("Payment refunded"), "{refunded}");
    assert!(on_hold.contains("on hold until the dispute is settled"), "{on_hold}");
    assert!(withdrawn.contains("Access withdrawn"), "{withdrawn}");
    browser.close().await;
    stack.shutdown().await;
}
