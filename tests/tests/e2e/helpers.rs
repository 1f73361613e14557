//! Starting the real services for a test: each test gets its own database (a
//! fresh SQLite file or a uniquely named PostgreSQL database), its own
//! ephemeral ports, and a running payments-svc and webhook-gateway.

use std::net::SocketAddr;
use std::sync::Once;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::{HttpAnswer, HttpClient, metric_value, signature_now};
use hyper::{Method, StatusCode};
use payments_proto::v1::payments_client::PaymentsClient;
use payments_svc::store::entities::{course_purchase, purchase_change, stripe_webhook_event};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, EntityTrait, PaginatorTrait, QueryOrder};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use webhook_gateway::signature::WebhookSecret;

use crate::fake_stripe::FAKE_STRIPE_KEY;

/// Where PostgreSQL tests create their databases. CI sets it; locally the
/// default matches a stock PostgreSQL with trust auth.
const DEFAULT_TEST_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/test";
pub const TEST_SECRET: &str = "whsec_e2e_test_secret_0123456789";

/// Declares a scenario that runs once on SQLite and once on PostgreSQL:
/// `on_both_databases!(name);` next to `async fn name(db: TestDb)`.
macro_rules! on_both_databases {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name(crate::helpers::TestDb::sqlite().await).await
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name(crate::helpers::TestDb::postgres().await).await
            }
        }
    };
}
pub(crate) use on_both_databases;

/// Logs from the services are shown only when `TEST_LOG` is set.
fn init_test_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt().with_env_filter("info").with_test_writer().init();
        }
    });
}

/// A database of a test's own, removed when the test ends.
#[derive(Debug)]
pub struct TestDb {
    pub url: String,
    /// Keeps the SQLite file's directory alive.
    _dir: Option<tempfile::TempDir>,
    /// `(admin url, name)` of a PostgreSQL database to drop afterwards.
    postgres: Option<(String, String)>,
}

impl TestDb {
    pub async fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let url = format!("sqlite://{}?mode=rwc", dir.path().join("payments.db").display());
        Self { url, _dir: Some(dir), postgres: None }
    }

    /// A PostgreSQL database the test made itself and drops with its server.
    pub fn external(url: String) -> Self {
        Self { url, _dir: None, postgres: None }
    }

    /// A new database on the server at `TEST_DATABASE_URL`. Fails the test,
    /// never skips it, when PostgreSQL cannot be reached.
    pub async fn postgres() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let admin_url =
            std::env::var("TEST_DATABASE_URL").unwrap_or_else(|_| DEFAULT_TEST_DATABASE_URL.to_owned());
        let name = format!("e2e_{}_{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed));
        let admin = Database::connect(&admin_url).await.unwrap_or_else(|e| {
            panic!(
                "PostgreSQL is required for this test; cannot connect to TEST_DATABASE_URL={admin_url}: {e}"
            )
        });
        admin
            .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .await
            .expect("drop");
        admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await.expect("create database");
        admin.close().await.expect("close admin connection");
        let mut url = url::Url::parse(&admin_url).expect("TEST_DATABASE_URL is a URL");
        url.set_path(&name);
        Self { url: url.to_string(), _dir: None, postgres: Some((admin_url, name)) }
    }
}

impl TestDb {
    /// Loses everything: the database is dropped and created again empty
    /// (the SQLite file and its journal removed). Nothing may be connected.
    pub async fn recreate(&self) {
        match &self.postgres {
            Some((admin_url, name)) => {
                let admin = Database::connect(admin_url).await.expect("admin connection");
                for statement in [
                    format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"),
                    format!("CREATE DATABASE \"{name}\""),
                ] {
                    admin.execute_unprepared(&statement).await.expect("recreate database");
                }
                admin.close().await.expect("close admin connection");
            }
            None => {
                let path =
                    self.url.trim_start_matches("sqlite://").split('?').next().expect("path").to_owned();
                for suffix in ["", "-wal", "-shm"] {
                    let _ = std::fs::remove_file(format!("{path}{suffix}"));
                }
            }
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.postgres.take() else { return };
        // Drop runs inside the test's runtime, which cannot block on async
        // work; a thread with its own small runtime can.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
            runtime.block_on(async {
                let admin = Database::connect(&admin_url).await.ok()?;
                admin
                    .execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                    .await
                    .ok()?;
                admin.close().await.ok()
            })
        });
        let _ = dropped.join();
    }
}

/// A running server and the means to stop it.
#[derive(Debug)]
struct Running {
    addr: SocketAddr,
    /// payments-svc's admin (metrics) address.
    admin: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.await.expect("server task").expect("server stopped cleanly");
    }
}

fn shutdown_channel() -> (oneshot::Sender<()>, impl Future<Output = ()> + Send + 'static) {
    let (tx, rx) = oneshot::channel::<()>();
    (tx, async move { drop(rx.await) })
}

/// How a test's payments-svc is configured.
#[derive(Debug, Clone, Default)]
pub struct StackOptions {
    /// `STRIPE_LIVEMODE`: the fixtures are test-mode events.
    pub livemode: bool,
    /// `STRIPE_API_BASE` of a [`crate::fake_stripe::FakeStripe`]; `None`
    /// runs without a Stripe key, verify answering from the database only.
    pub stripe_api_base: Option<String>,
    /// `STRIPE_API_TIMEOUT_MS`; 3 s when `None`.
    pub stripe_timeout_ms: Option<u64>,
    /// `PAYMENTS_GRPC_TOKEN`, given to both services.
    pub grpc_token: Option<String>,
    /// Serve gRPC over TLS with this certificate, trusted by the gateway.
    pub tls: Option<TestCertificate>,
    /// Tweaks to the gateway's settings (limits, timeouts).
    pub gateway: Option<fn(&mut webhook_gateway::config::Settings)>,
    /// Tweaks to payments-svc's settings (group commit), applied last.
    pub payments: Option<fn(&mut payments_svc::config::Settings)>,
}

/// A self-signed certificate for 127.0.0.1, written to files.
#[derive(Debug, Clone)]
pub struct TestCertificate {
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
    _dir: std::sync::Arc<tempfile::TempDir>,
}

impl TestCertificate {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let generated =
            rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()]).expect("certificate");
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        std::fs::write(&cert, generated.cert.pem()).expect("write certificate");
        std::fs::write(&key, generated.signing_key.serialize_pem()).expect("write key");
        Self { cert, key, _dir: std::sync::Arc::new(dir) }
    }
}

async fn start_payments_svc(database_url: &str, addr: SocketAddr, options: &StackOptions) -> Running {
    let mut args = payments_svc::config::Args::local(database_url);
    args.grpc_addr = addr;
    args.policy.stripe_livemode = options.livemode;
    args.stripe.stripe_secret_key = options.stripe_api_base.as_ref().map(|_| FAKE_STRIPE_KEY.to_owned());
    args.stripe.stripe_api_base = options.stripe_api_base.clone().unwrap_or_default();
    args.stripe.stripe_api_timeout_ms = options.stripe_timeout_ms.unwrap_or(3_000);
    args.grpc_token = options.grpc_token.clone();
    args.tls_cert = options.tls.as_ref().map(|tls| tls.cert.clone());
    args.tls_key = options.tls.as_ref().map(|tls| tls.key.clone());
    let mut settings = payments_svc::config::Settings::try_from(args).expect("valid payments-svc settings");
    if let Some(tweak) = options.payments {
        tweak(&mut settings);
    }
    let app = payments_svc::startup::Application::build(&settings).await.expect("payments-svc starts");
    let (addr, admin) = (app.local_addr(), Some(app.admin_addr()));
    let (stop, shutdown) = shutdown_channel();
    let task = tokio::spawn(app.run_until_stopped(shutdown));
    Running { addr, admin, stop: Some(stop), task }
}

async fn start_gateway(payments_svc_url: String, options: &StackOptions) -> Running {
    let mut settings = webhook_gateway::config::Settings::local(secret(), payments_svc_url);
    settings.payments_grpc_token = options.grpc_token.clone();
    settings.payments_svc_ca_cert = options.tls.as_ref().map(|tls| tls.cert.clone());
    // Tests ask verify far more often than one buyer would; the tests of the
    // per-client limit turn it back on.
    settings.verify_per_client_rps = None;
    if let Some(tweak) = options.gateway {
        tweak(&mut settings);
    }
    let app = webhook_gateway::startup::Application::build(&settings).await.expect("gateway starts");
    let (addr, admin) = (app.local_addr(), Some(app.admin_addr()));
    let (stop, shutdown) = shutdown_channel();
    let task = tokio::spawn(app.run_until_stopped(shutdown));
    Running { addr, admin, stop: Some(stop), task }
}

pub fn secret() -> WebhookSecret {
    WebhookSecret::new(TEST_SECRET).expect("valid test secret")
}

/// payments-svc and the gateway in front of it, on one test database.
#[derive(Debug)]
pub struct Stack {
    gateway: Running,
    payments: Option<Running>,
    /// payments-svc's address, kept across restarts so the gateway finds it.
    payments_addr: SocketAddr,
    /// The test's own connection, for arranging and asserting.
    pub db: DatabaseConnection,
    pub http: HttpClient,
    _test_db: TestDb,
}

impl Stack {
    pub async fn start(test_db: TestDb) -> Self {
        Self::start_with(test_db, StackOptions::default()).await
    }

    pub async fn start_with(test_db: TestDb, options: StackOptions) -> Self {
        init_test_logging();
        let ephemeral = "127.0.0.1:0".parse().expect("address");
        let payments = start_payments_svc(&test_db.url, ephemeral, &options).await;
        let payments_addr = payments.addr;
        let scheme = if options.tls.is_some() { "https" } else { "http" };
        let gateway = start_gateway(format!("{scheme}://{payments_addr}"), &options).await;
        let db = Database::connect(&test_db.url).await.expect("test connection");
        Self {
            gateway,
            payments: Some(payments),
            payments_addr,
            db,
            http: HttpClient::default(),
            _test_db: test_db,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr)
    }

    /// Terminates every PostgreSQL connection to the test's database but
    /// the asking one, as a database restart or a network cut would.
    pub async fn cut_database_connections(&self) {
        let cut = "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                   WHERE datname = current_database() AND pid <> pg_backend_pid()";
        self.db.execute_unprepared(cut).await.expect("terminate connections");
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.payments_addr)
    }

    pub fn database_url(&self) -> &str {
        &self._test_db.url
    }

    /// payments-svc's Prometheus metrics, as text.
    pub async fn payments_metrics(&self) -> String {
        let admin = self.payments.as_ref().and_then(|p| p.admin).expect("payments-svc running");
        let answer = self.http.send(Method::GET, &format!("http://{admin}/metrics"), &[], Bytes::new()).await;
        String::from_utf8_lossy(&answer.expect("metrics").body).into_owned()
    }

    /// The gateway's Prometheus metrics, from its admin listener, as text.
    pub async fn gateway_metrics(&self) -> String {
        let admin = self.gateway.admin.expect("the gateway's admin listener");
        let answer = self.http.send(Method::GET, &format!("http://{admin}/metrics"), &[], Bytes::new()).await;
        String::from_utf8_lossy(&answer.expect("metrics").body).into_owned()
    }

    pub fn gateway_addr(&self) -> SocketAddr {
        self.gateway.addr
    }

    pub async fn grpc(&self) -> PaymentsClient<tonic::transport::Channel> {
        PaymentsClient::connect(self.grpc_url()).await.expect("gRPC connection")
    }

    /// Loses the database: dropped and created again empty, the test's own
    /// connection opened on the new one. payments-svc must be stopped.
    pub async fn recreate_database(&mut self) {
        self.db.clone().close().await.expect("close the test's connection");
        self._test_db.recreate().await;
        self.db = Database::connect(&self._test_db.url).await.expect("test connection");
    }

    /// Stops payments-svc gracefully, leaving the gateway up.
    pub async fn stop_payments_svc(&mut self) {
        if let Some(payments) = self.payments.take() {
            payments.stop().await;
        }
    }

    /// Stops payments-svc and starts it again, on the same address and
    /// database, with `options`.
    pub async fn restart_payments_svc(&mut self, options: StackOptions) {
        self.stop_payments_svc().await;
        self.payments = Some(start_payments_svc(&self._test_db.url, self.payments_addr, &options).await);
    }

    /// Posts every body at once, each on its own connection and task, and
    /// returns the answers in order.
    pub async fn deliver_concurrently(&self, bodies: &[Bytes]) -> Vec<HttpAnswer> {
        let mut deliveries = tokio::task::JoinSet::new();
        for (index, body) in bodies.iter().enumerate() {
            let (http, url, body) = (self.http.clone(), self.url("/api/payments/webhook"), body.clone());
            let signature = signature_now(&secret(), &body);
            deliveries.spawn(async move {
                (index, http.post_webhook(&url, body, Some(&signature)).await.expect("HTTP round trip"))
            });
        }
        let mut answers = deliveries.join_all().await;
        answers.sort_by_key(|(index, _)| *index);
        answers.into_iter().map(|(_, answer)| answer).collect()
    }

    /// Posts `body` signed now with the test secret.
    pub async fn deliver(&self, body: &Bytes) -> HttpAnswer {
        let signature = signature_now(&secret(), body);
        self.deliver_with(body.clone(), Some(&signature)).await
    }

    /// Posts `body` with exactly this `Stripe-Signature` (or none).
    pub async fn deliver_with(&self, body: Bytes, signature: Option<&str>) -> HttpAnswer {
        self.http
            .post_webhook(&self.url("/api/payments/webhook"), body, signature)
            .await
            .expect("HTTP round trip")
    }

    pub async fn get(&self, path: &str) -> HttpAnswer {
        self.http.send(Method::GET, &self.url(path), &[], Bytes::new()).await.expect("HTTP round trip")
    }

    pub async fn purchases(&self) -> Vec<course_purchase::Model> {
        course_purchase::Entity::find().all(&self.db).await.expect("query purchases")
    }

    pub async fn events(&self) -> Vec<stripe_webhook_event::Model> {
        stripe_webhook_event::Entity::find().all(&self.db).await.expect("query events")
    }

    /// Every change row of the feed, in cursor order.
    pub async fn changes(&self) -> Vec<purchase_change::Model> {
        purchase_change::Entity::find()
            .order_by_asc(purchase_change::Column::Cursor)
            .all(&self.db)
            .await
            .expect("query changes")
    }

    pub async fn event_count(&self) -> u64 {
        stripe_webhook_event::Entity::find().count(&self.db).await.expect("count events")
    }

    /// Stops both services, as a test's last step, checking they drain cleanly.
    pub async fn shutdown(mut self) {
        self.stop_payments_svc().await;
        self.gateway.stop().await;
    }
}

/// A gateway whose payments-svc address has nothing listening on it.
pub async fn gateway_without_payments_svc() -> (String, impl Future<Output = ()>) {
    init_test_logging();
    let vacant = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let vacant_addr = vacant.local_addr().expect("address");
    drop(vacant);
    let gateway = start_gateway(format!("http://{vacant_addr}"), &StackOptions::default()).await;
    let url = format!("http://{}", gateway.addr);
    (url, gateway.stop())
}

/// The `outcome` of a webhook's 200 answer.
pub fn outcome(answer: &HttpAnswer) -> String {
    assert_eq!(answer.status, StatusCode::OK, "{:?}", answer.body);
    answer.json()["outcome"].as_str().expect("outcome").to_owned()
}

/// The value of `series` in a Prometheus text exposition; fails the test
/// when it is missing.
pub fn metric(metrics: &str, series: &str) -> f64 {
    metric_value(metrics, series).unwrap_or_else(|| panic!("no {series} in\n{metrics}"))
}

/// The outcomes of a burst whose first and last bodies are one event:
/// asserts that one copy was processed and the other answered duplicate,
/// in whichever order they were applied, and returns the others' outcomes.
pub fn outcomes_around_one_event_sent_twice(answers: &[HttpAnswer]) -> Vec<String> {
    let mut outcomes: Vec<String> = answers.iter().map(outcome).collect();
    let twice = [outcomes.remove(0), outcomes.pop().expect("last")];
    let mut sorted = twice.clone();
    sorted.sort();
    assert_eq!(sorted, ["duplicate", "processed"], "{twice:?}");
    outcomes
}

/// Polls `condition` every 50 ms until it holds, failing after `limit`.
pub async fn eventually<F: Future<Output = bool>>(
    limit: Duration,
    what: &str,
    mut condition: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !condition().await {
        assert!(Instant::now() < deadline, "{what} did not happen within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A second payments-svc on a stack's database, as a second replica.
#[derive(Debug)]
pub struct Replica(Running);

impl Replica {
    pub async fn start(database_url: &str) -> Self {
        let ephemeral = "127.0.0.1:0".parse().expect("address");
        Self(start_payments_svc(database_url, ephemeral, &StackOptions::default()).await)
    }

    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.0.addr)
    }

    pub async fn stop(self) {
        self.0.stop().await;
    }
}
