//! PostgreSQL failing over under the services: a primary and a synchronous
//! streaming standby that the test makes on ports of its own, behind a TCP
//! proxy that the services use as their database address. The primary is
//! killed under a stream of webhooks, the standby promoted and the proxy
//! switched to it, the way a managed database's failover moves its name;
//! or it is stopped cleanly, as in a planned switchover.
//! Every webhook answered 200 must be on the new primary exactly once, and
//! every other one is redelivered until it is.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use e2e::sender::{RetryPolicy, deliver_all};
use e2e::unique_paid_event;
use sea_orm::{ConnectionTrait, Database};

use crate::db_proxy::DbProxy;
use crate::faults::{all_delivered, assert_exactly_once, stream, wait_for_purchases};
use crate::helpers::{Stack, TestDb, secret};

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
    /// SIGKILL, as when its host dies.
    Killed,
    /// A clean shutdown, as in a planned switchover: it waits for its
    /// standby to receive everything it committed.
    Stopped,
}

/// Streams webhooks at the stack through the proxy, takes the primary away
/// midway, promotes the standby and switches the proxy to it; then every
/// event must be on the new primary exactly once. Prints how soon after
/// the switch a webhook got a 200.
async fn fail_over(loss: Loss) {
    const EVENTS: usize = 600;
    let cluster = Cluster::start().await;
    let proxy = DbProxy::start(&cluster.primary.url()).await;
    let stack = Stack::start(TestDb::external(proxy.url(&cluster.primary.url()))).await;
    let url = stack.url("/api/payments/webhook");
    let sender = {
        let url = url.clone();
        tokio::spawn(async move {
            deliver_all(&url, &secret(), stream(EVENTS, 60), 8, RetryPolicy::default()).await
        })
    };

    wait_for_purchases(&stack.db, 150).await;
    match loss {
        Loss::Killed => cluster.kill_primary(),
        Loss::Stopped => cluster.stop_primary(),
    }
    cluster.promote_standby();
    proxy.switch_to(cluster.standby.addr()).await;
    let switched = Instant::now();
    let probe = [unique_paid_event(EVENTS).expect("event")];
    let probe = deliver_all(&url, &secret(), probe.to_vec(), 1, RetryPolicy::default()).await;
    let first_200 = switched.elapsed();
    let deliveries = sender.await.expect("sender");

    all_delivered(&deliveries);
    all_delivered(&probe);
    let refused: usize = deliveries
        .iter()
        .map(|d| d.answers.iter().filter(|a| !a.is_some_and(|s| s.is_success())).count())
        .sum();
    eprintln!(
        "failover, primary {loss:?}: first 200 {first_200:?} after the switch; {refused} answers not 2xx"
    );
    let new_primary = Database::connect(cluster.standby.url()).await.expect("connects to the new primary");
    assert_exactly_once(&new_primary, EVENTS + 1).await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_primary_replaced_by_its_synchronous_standby_loses_nothing_acknowledged() {
    fail_over(Loss::Killed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_switchover_to_the_standby_loses_nothing_acknowledged() {
    fail_over(Loss::Stopped).await;
}
