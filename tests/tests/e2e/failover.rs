//! PostgreSQL failing over under the services: a primary and a synchronous
//! streaming standby that the test makes on ports of its own, behind a TCP
//! proxy that the services use as their database address. The primary is
//! killed under a stream of webhooks, the standby promoted and the proxy
//! switched to it, the way a managed database's failover moves its name;
//! or it goes silent without a reset (the half-open case), or it is stopped
//! cleanly, as in a planned switchover. Every webhook answered 200 must be
//! on the new primary exactly once, every other one is redelivered until
//! it is, and the same two replicas serve on without a restart.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::sender::{Delivery, RetryPolicy, deliver_all};
use e2e::unique_paid_event;
use hyper::StatusCode;
use payments_proto::v1::payments_client::PaymentsClient;
use payments_proto::v1::verify_purchase_request::Lookup;
use payments_proto::v1::{PurchaseStatus, VerifyPurchaseRequest, WatchPurchaseChangesRequest};
use payments_svc::store::entities::{course_purchase, purchase_change};
use payments_svc::store::health::DatabaseHealth;
use payments_svc::store::{self, lease};
use sea_orm::{ConnectionTrait, Database, DatabaseConnection, DbErr, EntityTrait, QueryOrder};
use tokio::task::JoinHandle;

use crate::db_proxy::DbProxy;
use crate::faults::{all_delivered, assert_exactly_once, wait_for_purchases};
use crate::helpers::{Stack, TestDb, eventually, metric, secret};

/// How long a server gets to start, or a standby to catch up.
const SERVER_DEADLINE: Duration = Duration::from_secs(30);

/// One PostgreSQL server of the cluster.
struct Server {
    data: PathBuf,
    port: u16,
}

impl Server {
    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@{}/postgres", self.addr())
    }
}

/// A primary and a synchronous streaming standby, stopped when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    primary: Server,
    standby: Server,
}

impl Cluster {
    /// Creates the primary, copies it to the standby, starts both, and waits
    /// until the primary's commits wait for the standby.
    async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        if running_as_root() {
            // PostgreSQL refuses to run as root; its own user owns the data.
            run(Command::new("chown").arg("-R").arg("postgres").arg(dir.path()));
        }
        let primary = Server { data: dir.path().join("primary"), port: free_port() };
        let standby = Server { data: dir.path().join("standby"), port: free_port() };
        let cluster = Self { dir, primary, standby };
        cluster.create_primary();
        cluster.start_server(&cluster.primary);
        cluster.copy_to_standby();
        cluster.start_server(&cluster.standby);
        cluster.wait_for_synchronous_standby().await;
        cluster
    }

    fn create_primary(&self) {
        let data = &self.primary.data;
        run(postgres_command("initdb").arg("-D").arg(data).args([
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
        ]));
        append(
            &data.join("postgresql.conf"),
            &format!(
                "port = {}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{}'\n\
                 shared_buffers = 32MB\nmax_wal_senders = 4\nsynchronous_commit = on\n\
                 synchronous_standby_names = 'standby'\n",
                self.primary.port,
                self.dir.path().display()
            ),
        );
    }

    /// The standby: a base backup of the primary that streams from it as
    /// `standby`, itself with no synchronous standby to wait for once
    /// promoted.
    fn copy_to_standby(&self) {
        let data = &self.standby.data;
        run(postgres_command("pg_basebackup")
            .args(["-h", "127.0.0.1", "-p", &self.primary.port.to_string(), "-U", "postgres", "-D"])
            .arg(data)
            .args(["-X", "stream", "--no-sync"]));
        append(
            &data.join("postgresql.conf"),
            &format!(
                "port = {}\nsynchronous_standby_names = ''\n\
                 primary_conninfo = 'host=127.0.0.1 port={} user=postgres application_name=standby'\n",
                self.standby.port, self.primary.port
            ),
        );
        run(Command::new("touch").arg(data.join("standby.signal")));
        if running_as_root() {
            run(Command::new("chown").arg("-R").arg("postgres").arg(data));
        }
    }

    fn start_server(&self, server: &Server) {
        let log = self.dir.path().join(format!("{}.log", server.port));
        run(postgres_command("pg_ctl").arg("-D").arg(&server.data).arg("-l").arg(log).args(["-w", "start"]));
    }

    async fn wait_for_synchronous_standby(&self) {
        let primary = Database::connect(self.primary.url()).await.expect("connects to the primary");
        let started = Instant::now();
        loop {
            let row = primary
                .query_one_raw(sea_orm::Statement::from_string(
                    sea_orm::DbBackend::Postgres,
                    "SELECT count(*) AS n FROM pg_stat_replication WHERE sync_state = 'sync'",
                ))
                .await
                .expect("replication state");
            if row.and_then(|row| row.try_get::<i64>("", "n").ok()) == Some(1) {
                return;
            }
            assert!(started.elapsed() < SERVER_DEADLINE, "the standby never became synchronous");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILL to the primary's postmaster and every process it started, as
    /// when its host dies: nothing is flushed or said goodbye to.
    fn kill_primary(&self) {
        let pid = std::fs::read_to_string(self.primary.data.join("postmaster.pid")).expect("postmaster.pid");
        let pid = pid.lines().next().expect("a pid").trim().to_owned();
        let _ = Command::new("pkill").args(["-KILL", "-P", &pid]).status();
        run(Command::new("kill").args(["-KILL", &pid]));
    }

    /// A clean shutdown of the primary (`pg_ctl stop -m fast`).
    fn stop_primary(&self) {
        run(postgres_command("pg_ctl").arg("-D").arg(&self.primary.data).args(["-m", "fast", "-w", "stop"]));
    }

    fn promote_standby(&self) {
        run(postgres_command("pg_ctl").arg("-D").arg(&self.standby.data).args(["-w", "promote"]));
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for server in [&self.primary, &self.standby] {
            let _ = postgres_command("pg_ctl")
                .arg("-D")
                .arg(&server.data)
                .args(["-m", "immediate", "stop"])
                .output();
        }
    }
}

/// Where the PostgreSQL server's programs are: `pg_config` says, or else
/// the newest of Debian's `/usr/lib/postgresql/<version>/bin`.
static BINDIR: LazyLock<PathBuf> = LazyLock::new(|| {
    let said = Command::new("pg_config").arg("--bindir").output().ok().filter(|out| out.status.success());
    if let Some(out) = said {
        return PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    }
    let versions = std::fs::read_dir("/usr/lib/postgresql").expect("PostgreSQL's server is installed");
    let newest = versions
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .max()
        .expect("a PostgreSQL version");
    PathBuf::from(format!("/usr/lib/postgresql/{newest}/bin"))
});

/// A PostgreSQL program, run as its own user when the test runs as root.
fn postgres_command(program: &str) -> Command {
    let path = BINDIR.join(program);
    if running_as_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(path);
        command
    } else {
        Command::new(path)
    }
}

fn running_as_root() -> bool {
    static ROOT: LazyLock<bool> = LazyLock::new(|| {
        Command::new("id").arg("-u").output().is_ok_and(|out| out.stdout.trim_ascii() == b"0")
    });
    *ROOT
}

fn run(command: &mut Command) {
    let output = command.output().unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

fn append(path: &Path, text: &str) {
    use std::io::Write as _;
    let mut file = std::fs::OpenOptions::new().append(true).open(path).expect("opens the configuration");
    file.write_all(text.as_bytes()).expect("writes the configuration");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port()
}

/// How the primary goes away.
#[derive(Debug, Clone, Copy)]
enum Loss {
    /// SIGKILL, as when its host dies: its connections are reset.
    Killed,
    /// Black-holed: its connections go silent without a reset, as when its
    /// host vanishes from the network. It is never stopped: a zombie primary
    /// that can no longer commit, since its synchronous standby left it.
    BlackHoled,
    /// A clean shutdown, as in a planned switchover: it waits for its
    /// standby to receive everything it committed. The address moves to
    /// the standby before the standby is promoted.
    Stopped,
}

/// Events streamed in each scenario, split between the two gateways with
/// an overlap that both deliver.
const EVENTS: usize = 600;

/// Two stacks (gateway and payments-svc replica each) on one database
/// behind the proxy, under webhooks to both, a change-feed watcher on one
/// and verify calls to both. Midway the primary is taken away; once both
/// replicas report themselves not ready, the standby is promoted and the
/// proxy switched to it. Then every event must be on the new primary
/// exactly once, the watcher must have had every change once, in order,
/// and verify must never have called a stored purchase missing. Prints how
/// soon after the switch a webhook got a 200.
async fn fail_over(loss: Loss) {
    let cluster = Cluster::start().await;
    let proxy = DbProxy::start(&cluster.primary.url()).await;
    let through_proxy = format!("{}?{SERVER_KEEPALIVES}", proxy.url(&cluster.primary.url()));
    let stacks = [
        Stack::start(TestDb::external(through_proxy.clone())).await,
        Stack::start(TestDb::external(through_proxy)).await,
    ];
    let primary = Database::connect(cluster.primary.url()).await.expect("connects to the primary");
    assert_eq!(setting(&stacks[0].db, "tcp_user_timeout").await, "10000", "the documented options apply");
    let senders = send_to_both(&stacks);
    let watcher = Watcher::start(stacks[1].grpc_url());

    wait_for_purchases(&primary, 150).await;
    let stored = sessions(&primary).await;
    let verifier = Verifier::start(stacks.iter().map(Stack::grpc_url).collect(), stored);
    match loss {
        Loss::Killed => cluster.kill_primary(),
        Loss::BlackHoled => proxy.black_hole(),
        Loss::Stopped => cluster.stop_primary(),
    }
    for stack in &stacks {
        wait_for_readiness(stack, StatusCode::SERVICE_UNAVAILABLE).await;
    }
    let (first_200, probe) = switch_and_probe(loss, &cluster, &proxy, &stacks).await;
    for stack in &stacks {
        wait_for_readiness(stack, StatusCode::OK).await;
    }
    let mut deliveries = Vec::new();
    for sender in senders {
        deliveries.extend(sender.await.expect("sender"));
    }

    all_delivered(&deliveries);
    all_delivered(&probe);
    let refused: usize = deliveries
        .iter()
        .map(|d| d.answers.iter().filter(|a| !a.is_some_and(|s| s.is_success())).count())
        .sum();
    let new_primary = Database::connect(cluster.standby.url()).await.expect("connects to the new primary");
    assert_exactly_once(&new_primary, EVENTS + 1).await;
    let watched = watcher.stop_once_it_has(&new_primary).await;
    let verified = verifier.stop().await;
    assert_connections_renewed(&stacks).await;
    eprintln!(
        "failover, primary {loss:?}: first 200 {first_200:?} after the switch; {refused} answers not 2xx; \
         watcher reconnected {} times; verify: {} answers, {} unavailable",
        watched.reconnects, verified.answers, verified.unavailable
    );
    for stack in stacks {
        stack.shutdown().await;
    }
}

/// Delivers the events to the two gateways, two thirds each (the middle
/// third to both), with Stripe-style redeliveries; each sender answers
/// with its deliveries once every event got a 2xx or gave up.
fn send_to_both(stacks: &[Stack; 2]) -> Vec<JoinHandle<Vec<Delivery>>> {
    let events: Vec<Bytes> = (0..EVENTS).map(|n| unique_paid_event(n).expect("event")).collect();
    let parts = [&events[..EVENTS * 2 / 3], &events[EVENTS / 3..]];
    stacks
        .iter()
        .zip(parts)
        .map(|(stack, part)| {
            let (url, part) = (stack.url("/api/payments/webhook"), with_redeliveries(part));
            tokio::spawn(async move { deliver_all(&url, &secret(), part, 4, RetryPolicy::default()).await })
        })
        .collect()
}

/// Promotes the standby and moves the proxy to it, then delivers one more
/// event: how long after the switch it got its 200, and its delivery. In
/// a planned switchover the address moves first, and a standby not yet
/// promoted must take no write.
async fn switch_and_probe(
    loss: Loss,
    cluster: &Cluster,
    proxy: &DbProxy,
    stacks: &[Stack; 2],
) -> (Duration, Vec<Delivery>) {
    let probe = vec![unique_paid_event(EVENTS).expect("event")];
    let webhooks = stacks[0].url("/api/payments/webhook");
    if let Loss::Stopped = loss {
        proxy.switch_to(cluster.standby.addr()).await;
        let once = RetryPolicy { max_attempts: 1, ..RetryPolicy::default() };
        let refused = deliver_all(&webhooks, &secret(), probe.clone(), 1, once).await;
        assert_eq!(refused[0].answers, [Some(StatusCode::SERVICE_UNAVAILABLE)], "a standby takes no write");
        for stack in stacks {
            wait_for_readiness(stack, StatusCode::SERVICE_UNAVAILABLE).await;
        }
        cluster.promote_standby();
    } else {
        cluster.promote_standby();
        proxy.switch_to(cluster.standby.addr()).await;
    }
    let switched = Instant::now();
    let delivered = deliver_all(&webhooks, &secret(), probe, 1, RetryPolicy::default()).await;
    (switched.elapsed(), delivered)
}

/// Each replica retired its connections and its writer connected again;
/// the watched one listens again.
async fn assert_connections_renewed(stacks: &[Stack; 2]) {
    for stack in stacks {
        let metrics = stack.payments_metrics().await;
        assert!(metric(&metrics, "payments_db_connections_distrusted_total") >= 1.0, "{metrics}");
        assert!(metric(&metrics, r#"payments_db_reconnects_total{connection="writer"}"#) >= 1.0, "{metrics}");
    }
    let watched_replica = stacks[1].payments_metrics().await;
    let listener = r#"payments_db_reconnects_total{connection="listener"}"#;
    assert!(metric(&watched_replica, listener) >= 1.0, "listening again: {watched_replica}");
}

/// The server-side keepalive settings operating.md recommends in
/// `DATABASE_URL`.
const SERVER_KEEPALIVES: &str = "options=-c%20tcp_keepalives_idle%3D10%20-c%20tcp_keepalives_interval%3D5%20-c%20tcp_keepalives_count%3D3%20-c%20tcp_user_timeout%3D10000";

/// A setting of the session of `db`, as `SHOW` prints it.
async fn setting(db: &DatabaseConnection, name: &str) -> String {
    let shown = db
        .query_one_raw(sea_orm::Statement::from_string(sea_orm::DbBackend::Postgres, format!("SHOW {name}")))
        .await
        .expect("SHOW")
        .expect("a row");
    shown.try_get::<String>("", name).expect("the setting")
}

/// `events` followed by a redelivery of every tenth, as Stripe sends some
/// events twice.
fn with_redeliveries(events: &[Bytes]) -> Vec<Bytes> {
    events.iter().chain(events.iter().step_by(10)).cloned().collect()
}

/// The session of every purchase `db` holds.
async fn sessions(db: &DatabaseConnection) -> Vec<String> {
    let purchases = course_purchase::Entity::find().all(db).await.expect("purchases");
    purchases.into_iter().map(|purchase| purchase.stripe_checkout_session_id).collect()
}

/// Waits until the gateway of `stack` answers `/readyz` with `status`.
async fn wait_for_readiness(stack: &Stack, status: StatusCode) {
    let deadline = Instant::now() + SERVER_DEADLINE;
    while stack.get("/readyz").await.status != status {
        assert!(Instant::now() < deadline, "/readyz never answered {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A consumer of the change feed that reconnects, with the cursor of the
/// last change it took, whenever its watch ends.
struct Watcher {
    cursors: Arc<Mutex<Vec<u64>>>,
    reconnects: Arc<AtomicUsize>,
    task: JoinHandle<()>,
}

/// What a watcher saw.
struct Watched {
    reconnects: usize,
}

impl Watcher {
    fn start(grpc_url: String) -> Self {
        let (cursors, reconnects) = (Arc::<Mutex<Vec<u64>>>::default(), Arc::new(AtomicUsize::new(0)));
        let task = tokio::spawn({
            let (cursors, reconnects) = (Arc::clone(&cursors), Arc::clone(&reconnects));
            async move {
                loop {
                    let after = cursors.lock().expect("cursors").last().copied().unwrap_or(0);
                    if let Ok(mut client) = PaymentsClient::connect(grpc_url.clone()).await
                        && let Ok(watch) =
                            client.watch_purchase_changes(WatchPurchaseChangesRequest { after }).await
                    {
                        let mut stream = watch.into_inner();
                        while let Ok(Some(change)) = stream.message().await {
                            cursors.lock().expect("cursors").push(change.cursor);
                        }
                    }
                    reconnects.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        });
        Self { cursors, reconnects, task }
    }

    /// Waits until the watcher has had as many changes as `db`'s feed
    /// holds, then checks it had exactly those, in order, once each.
    async fn stop_once_it_has(self, db: &DatabaseConnection) -> Watched {
        let stored: Vec<u64> = purchase_change::Entity::find()
            .order_by_asc(purchase_change::Column::Cursor)
            .all(db)
            .await
            .expect("changes")
            .iter()
            .map(|change| change.cursor as u64)
            .collect();
        let deadline = Instant::now() + SERVER_DEADLINE;
        while self.cursors.lock().expect("cursors").len() < stored.len() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.task.abort();
        let received = self.cursors.lock().expect("cursors").clone();
        assert_eq!(received, stored, "the watcher had every change once, in order");
        Watched { reconnects: self.reconnects.load(Ordering::Relaxed) }
    }
}

/// Verify calls, to each replica in turn, for purchases stored before the
/// primary was lost.
struct Verifier {
    stop: Arc<AtomicBool>,
    task: JoinHandle<Verified>,
}

/// What the verify calls were answered.
struct Verified {
    answers: usize,
    unavailable: usize,
}

impl Verifier {
    fn start(grpc_urls: Vec<String>, sessions: Vec<String>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let stop = Arc::clone(&stop);
            async move {
                let mut clients = Vec::new();
                for url in grpc_urls {
                    clients.push(PaymentsClient::connect(url).await.expect("gRPC connection"));
                }
                let mut verified = Verified { answers: 0, unavailable: 0 };
                let mut last_answered_ok = vec![false; clients.len()];
                for (n, session) in sessions.iter().cycle().enumerate() {
                    if stop.load(Ordering::Relaxed) && last_answered_ok.iter().all(|ok| *ok) {
                        break;
                    }
                    let replica = n % clients.len();
                    let lookup = Some(Lookup::CheckoutSessionId(session.clone()));
                    let answer = clients[replica].verify_purchase(VerifyPurchaseRequest { lookup }).await;
                    verified.answers += 1;
                    let answer_was_ok = answer.is_ok();
                    match answer {
                        Ok(answer) => {
                            let status = answer.into_inner().status();
                            assert_eq!(
                                status,
                                PurchaseStatus::Paid,
                                "{session}, stored, was called {status:?}"
                            );
                        }
                        Err(status) => {
                            assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                            verified.unavailable += 1;
                        }
                    }
                    last_answered_ok[replica] = answer_was_ok;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                verified
            }
        });
        Self { stop, task }
    }

    /// Stops once each replica has answered a call again; what they said.
    async fn stop(self) -> Verified {
        self.stop.store(true, Ordering::Relaxed);
        tokio::time::timeout(SERVER_DEADLINE, self.task)
            .await
            .expect("every replica verifies again")
            .expect("verify calls")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_replaced_by_its_synchronous_standby_loses_nothing_acknowledged() {
    fail_over(Loss::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_gone_silent_without_a_reset_is_left_behind_within_seconds_of_the_switch() {
    fail_over(Loss::BlackHoled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_switchover_to_the_standby_loses_nothing_acknowledged() {
    fail_over(Loss::Stopped).await;
}

/// A lease is an advisory lock, which lives and dies with its connection
/// to one server. Work under it stops the moment the database's
/// connections are distrusted (as the health probe does when the server
/// stops answering, fails over or turns read-only: see the metrics checked
/// above), and the lock is let go, so that whichever replica takes it next,
/// on whichever server, holds it alone.
#[tokio::test]
async fn work_under_a_lease_stops_when_the_database_is_distrusted() {
    const KEY: i64 = 0x7465_7374_6c65_6173; // "testleas"
    let test_db = TestDb::postgres().await;
    let health = DatabaseHealth::default();
    let db = store::connect_guarded(&test_db.url, &health).await.expect("connects");
    let other = Database::connect(&test_db.url).await.expect("a second connection");
    let (started, working) = tokio::sync::oneshot::channel();
    let work = async {
        let _ = started.send(());
        std::future::pending::<Result<(), DbErr>>().await
    };

    let leased = tokio::time::timeout(SERVER_DEADLINE, lease::under(&db, &health, KEY, work));
    let (held, ()) = tokio::join!(leased, async {
        working.await.expect("the work started");
        assert!(!lease::try_lock(&other, KEY).await.expect("asks"), "the lease is held while working");
        health.distrust();
    });
    let held = held.expect("the work stops when the connections are distrusted");

    assert!(matches!(held, Err(DbErr::Conn(_))), "the work was abandoned: {held:?}");
    eventually(Duration::from_secs(5), "the lock is let go", || async {
        lease::try_lock(&other, KEY).await.expect("asks")
    })
    .await;
}
