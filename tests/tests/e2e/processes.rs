//! The real binaries as child processes, for what only a process shows: its
//! log lines, its command line, its exit.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::time::{Duration, Instant};

use bytes::Bytes;
use e2e::{HttpAnswer, HttpClient, signature_now};
use serde_json::Value;

use crate::helpers::{TEST_SECRET, secret};

/// How long a process may take to log what a test waits for. Generous: the
/// wait ends as soon as the line arrives.
const LOG_DEADLINE: Duration = Duration::from_secs(20);

/// Paths of the freshly built `payments-svc` and `webhook-gateway`.
/// Building them here (a no-op when `cargo test --workspace` already did)
/// keeps `cargo test -p e2e` from running stale binaries.
pub fn binary(name: &str) -> PathBuf {
    static BINARIES: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    let binaries = BINARIES.get_or_init(|| {
        let output = Command::new(env!("CARGO"))
            .args(["build", "--bins", "-p", "payments-svc", "-p", "webhook-gateway", "--message-format=json"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .stderr(Stdio::inherit())
            .output()
            .expect("cargo runs");
        assert!(output.status.success(), "building the binaries failed");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| serde_json::from_str::<Value>(line).ok())
            .filter_map(|message| {
                let executable = message["executable"].as_str()?;
                Some((message["target"]["name"].as_str()?.to_owned(), PathBuf::from(executable)))
            })
            .collect()
    });
    binaries.get(name).unwrap_or_else(|| panic!("cargo built no {name}")).clone()
}

/// A running binary whose JSON log lines the test can wait for.
#[derive(Debug)]
pub struct Process {
    child: Child,
    logs: Receiver<Value>,
    seen: Vec<Value>,
    /// The address it logged as listening on.
    pub addr: String,
    /// The admin (metrics) address, when it logged one.
    pub admin_addr: Option<String>,
}

impl Process {
    /// Starts `name` with `env` (plus JSON logs) and waits for its
    /// "listening" line.
    fn start(name: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(binary(name))
            .envs(env.iter().copied())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{name} starts: {e}"));
        let stdout = child.stdout.take().expect("stdout");
        let (sender, logs) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let parsed =
                    serde_json::from_str(&line).unwrap_or_else(|_| panic!("not a JSON log line: {line}"));
                if sender.send(parsed).is_err() {
                    break;
                }
            }
        });
        let mut process = Self { child, logs, seen: Vec::new(), addr: String::new(), admin_addr: None };
        let listening = process.wait_for_log(&format!("{name} listening"), |_| true);
        process.addr = listening["addr"].as_str().expect("addr field").to_owned();
        process.admin_addr = listening["admin_addr"].as_str().map(str::to_owned);
        process
    }

    /// The first log line, seen before or arriving later, with this message
    /// and matching `fields`. Fails the test when none arrives in time.
    pub fn wait_for_log(&mut self, message: &str, fields: impl Fn(&Value) -> bool) -> Value {
        let matches = |line: &Value| line["message"] == message && fields(line);
        if let Some(line) = self.seen.iter().find(|line| matches(line)) {
            return line.clone();
        }
        let deadline = Instant::now() + LOG_DEADLINE;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.logs.recv_timeout(left) {
                Ok(line) if matches(&line) => return line,
                Ok(line) => self.seen.push(line),
                Err(RecvTimeoutError::Timeout | RecvTimeoutError::Disconnected) => {
                    panic!("no log line {message:?} with the expected fields; saw {:#?}", self.seen)
                }
            }
        }
    }

    /// Every line the process logged, once it has exited: its output is
    /// read to the end.
    pub fn logs_after_exit(&mut self) -> Vec<Value> {
        self.seen.extend(self.logs.iter());
        self.seen.clone()
    }

    /// Every line logged so far, as text: for checking what never appears.
    pub fn all_logs(&mut self) -> String {
        self.seen.extend(self.logs.try_iter());
        self.seen.iter().map(Value::to_string).collect::<Vec<_>>().join("\n")
    }
}

impl Process {
    /// Sends `signal` (`KILL`, `TERM`, ...) to the process.
    pub fn signal(&self, signal: &str) {
        let sent = Command::new("kill").arg(format!("-{signal}")).arg(self.child.id().to_string()).status();
        assert!(sent.is_ok_and(|status| status.success()), "kill -{signal}");
    }

    /// Waits for the process to exit.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        self.child.wait().expect("the process exits")
    }

    /// Waits at most `limit` for the process to exit; `None` if it is
    /// still running then.
    pub fn wait_within(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("the process can be waited for") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// payments-svc and the gateway as real processes on one database.
#[derive(Debug)]
pub struct ProcessStack {
    pub payments: Process,
    pub gateway: Process,
    pub database_url: String,
    http: HttpClient,
}

fn start_payments_svc(database_url: &str, grpc_addr: &str, livemode: bool, env: &[(&str, &str)]) -> Process {
    let mut all = vec![
        ("DATABASE_URL", database_url),
        ("PAYMENTS_GRPC_ADDR", grpc_addr),
        ("PAYMENTS_ADMIN_ADDR", "127.0.0.1:0"),
        ("STRIPE_LIVEMODE", if livemode { "true" } else { "false" }),
    ];
    all.extend_from_slice(env);
    Process::start("payments-svc", &all)
}

impl ProcessStack {
    pub fn start(database_url: &str, livemode: bool) -> Self {
        Self::start_with(database_url, livemode, &[])
    }

    /// Both services with `env` on top of their defaults.
    pub fn start_with(database_url: &str, livemode: bool, env: &[(&str, &str)]) -> Self {
        let payments = start_payments_svc(database_url, "127.0.0.1:0", livemode, env);
        let payments_url = format!("http://{}", payments.addr);
        let mut gateway_env = vec![
            ("STRIPE_WEBHOOK_SECRET", TEST_SECRET),
            ("GATEWAY_ADDR", "127.0.0.1:0"),
            ("GATEWAY_ADMIN_ADDR", "127.0.0.1:0"),
            ("PAYMENTS_SVC_URL", &payments_url),
        ];
        gateway_env.extend_from_slice(env);
        let gateway = Process::start("webhook-gateway", &gateway_env);
        Self { payments, gateway, database_url: database_url.to_owned(), http: HttpClient::default() }
    }

    /// Starts payments-svc again on the address it had, after it died.
    pub fn restart_payments_svc(&mut self) {
        let addr = self.payments.addr.clone();
        let _ = self.payments.child.wait();
        self.payments = start_payments_svc(&self.database_url, &addr, false, &[]);
    }

    pub fn gateway_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.gateway.addr)
    }

    pub fn webhook_url(&self) -> String {
        format!("http://{}/api/payments/webhook", self.gateway.addr)
    }

    pub async fn deliver(&self, body: &Bytes) -> HttpAnswer {
        let signature = signature_now(&secret(), body);
        self.deliver_with(body.clone(), Some(&signature)).await
    }

    pub async fn deliver_with(&self, body: Bytes, signature: Option<&str>) -> HttpAnswer {
        let url = format!("http://{}/api/payments/webhook", self.gateway.addr);
        self.http.post_webhook(&url, body, signature).await.expect("HTTP round trip")
    }
}

/// Runs `payments-svc` with `args` (an operator command) on `database_url`.
pub fn payments_cli(database_url: &str, env: &[(&str, &str)], args: &[&str]) -> Output {
    Command::new(binary("payments-svc"))
        .args(args)
        .env("DATABASE_URL", database_url)
        .envs(env.iter().copied())
        .output()
        .expect("payments-svc runs")
}

/// `payments-svc changes tail` as a consumer: its lines, as printed.
#[derive(Debug)]
pub struct Tail {
    child: Child,
    lines: Receiver<String>,
}

impl Tail {
    /// Follows the feed of `database_url` from just after `after`, one
    /// JSON object a line.
    pub fn start(database_url: &str, after: u64) -> Self {
        Self::spawn(database_url, &["--json", "--after", &after.to_string()])
    }

    /// Follows the whole feed of `database_url` as the operator's table.
    pub fn table(database_url: &str) -> Self {
        Self::spawn(database_url, &[])
    }

    fn spawn(database_url: &str, args: &[&str]) -> Self {
        let mut child = Command::new(binary("payments-svc"))
            .args(["changes", "tail"])
            .args(args)
            .env("DATABASE_URL", database_url)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("payments-svc changes tail starts");
        let stdout = child.stdout.take().expect("stdout");
        let (sender, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if sender.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// The next `n` lines, parsed; fails the test if they do not come.
    pub fn lines(&mut self, n: usize) -> Vec<Value> {
        self.text(n)
            .iter()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
            .collect()
    }

    /// The next `n` lines as printed; fails the test if they do not come.
    pub fn text(&mut self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + LOG_DEADLINE;
        (0..n)
            .map(|read| {
                let left = deadline.saturating_duration_since(Instant::now());
                self.lines.recv_timeout(left).unwrap_or_else(|_| panic!("only {read} of {n} lines printed"))
            })
            .collect()
    }

    /// SIGKILL: no chance to finish anything.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
