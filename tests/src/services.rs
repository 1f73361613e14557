//! payments-svc and webhook-gateway as processes, for the measuring tools:
//! started from a directory of binaries on ephemeral ports, read from
//! `/proc` while they run, stopped on drop.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, bail};
use sea_orm::{ConnectionTrait, Database};

/// The two services, started from `bin_dir`, stopped on drop.
#[derive(Debug)]
pub struct Services {
    pub payments: Child,
    pub gateway: Child,
    pub gateway_addr: String,
    pub payments_grpc: String,
    pub payments_admin: String,
}

impl Services {
    /// Starts both on `database_url`, the gateway verifying with `secret`
    /// and with `gateway_env` on top of its defaults, and both with
    /// `common_env` (tracing, say).
    pub fn start(
        bin_dir: &Path,
        database_url: &str,
        secret: &str,
        gateway_env: &[(&str, &str)],
        common_env: &[(String, String)],
    ) -> anyhow::Result<Self> {
        let mut payments = Command::new(bin_dir.join("payments-svc"))
            .envs(common_env.iter().map(|(name, value)| (name, value)))
            .env("DATABASE_URL", database_url)
            .env("PAYMENTS_GRPC_ADDR", "127.0.0.1:0")
            .env("PAYMENTS_ADMIN_ADDR", "127.0.0.1:0")
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", log_filter())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting payments-svc (build it first)")?;
        let (grpc, payments_admin) = listening_addrs(&mut payments)?;
        let mut gateway = Command::new(bin_dir.join("webhook-gateway"))
            .envs(common_env.iter().map(|(name, value)| (name, value)))
            .env("STRIPE_WEBHOOK_SECRET", secret)
            .env("GATEWAY_ADDR", "127.0.0.1:0")
            .env("GATEWAY_ADMIN_ADDR", "127.0.0.1:0")
            .env("PAYMENTS_SVC_URL", format!("http://{grpc}"))
            .envs(gateway_env.iter().copied())
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", log_filter())
            .stdout(Stdio::piped())
            .spawn()
            .context("starting webhook-gateway (build it first)")?;
        let (gateway_addr, _) = listening_addrs(&mut gateway)?;
        Ok(Self {
            payments,
            gateway,
            gateway_addr,
            payments_grpc: format!("http://{grpc}"),
            payments_admin: payments_admin.unwrap_or_default(),
        })
    }
}

impl Drop for Services {
    fn drop(&mut self) {
        for child in [&mut self.gateway, &mut self.payments] {
            let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
            let _ = child.wait();
        }
    }
}

/// Where the service binaries are: `given`, or the directory of the running
/// tool, next to which cargo builds them.
pub fn bin_dir(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    match given {
        Some(dir) => Ok(dir.to_path_buf()),
        None => Ok(std::env::current_exe()?.parent().context("binary directory")?.to_path_buf()),
    }
}

/// The services log as deployed (`info`, or the caller's RUST_LOG), always
/// including the start-up line that says where they listen.
fn log_filter() -> String {
    let base = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into());
    format!("{base},payments_svc::startup=info,webhook_gateway::startup=info")
}

/// Reads the child's JSON log lines until it says where it listens (and
/// where its admin port is, if it has one); the rest of its output is
/// discarded by a thread, so it never blocks.
fn listening_addrs(child: &mut Child) -> anyhow::Result<(String, Option<String>)> {
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    for line in lines.by_ref() {
        let line: serde_json::Value = serde_json::from_str(&line?).unwrap_or_default();
        if line["message"].as_str().is_some_and(|m| m.ends_with(" listening")) {
            let addr = line["addr"].as_str().context("addr field")?.to_owned();
            let admin = line["admin_addr"].as_str().map(str::to_owned);
            std::thread::spawn(move || lines.for_each(drop));
            return Ok((addr, admin));
        }
    }
    bail!("the service exited before listening")
}

/// CPU seconds (user + system) the process has used, from /proc.
pub fn cpu_seconds(pid: u32) -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let fields: Vec<&str> = stat.rsplit_once(')').context("stat format")?.1.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>()? + fields[12].parse::<f64>()?;
    Ok(ticks / 100.0)
}

/// The process's peak resident memory (VmHWM), in KiB.
pub fn peak_rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmHWM:")
}

/// The process's resident memory now (VmRSS), in KiB.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_kib(pid, "VmRSS:")
}

fn status_kib(pid: u32, field: &str) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status.lines().find(|l| l.starts_with(field)).with_context(|| format!("no {field}"))?;
    Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
}

/// CPU of every process on this machine named `postgres` (0 when the server
/// runs elsewhere).
pub fn postgres_cpu_seconds() -> anyhow::Result<f64> {
    Ok(postgres_cpu_by_pid()?.values().sum())
}

/// CPU of each process on this machine named `postgres`, by pid. A backend
/// ends with its client's connection, taking its CPU out of /proc: a tool
/// whose client exits samples this while it runs ([`PostgresCpu`]).
pub fn postgres_cpu_by_pid() -> anyhow::Result<HashMap<u32, f64>> {
    let mut cpu = HashMap::new();
    for entry in std::fs::read_dir("/proc")? {
        let Ok(pid) = entry?.file_name().to_string_lossy().parse::<u32>() else { continue };
        let is_postgres = std::fs::read_to_string(format!("/proc/{pid}/comm"))
            .is_ok_and(|comm| comm.trim_end() == "postgres");
        // A process that ended in between counts as nothing.
        if let (true, Ok(seconds)) = (is_postgres, cpu_seconds(pid)) {
            cpu.insert(pid, seconds);
        }
    }
    Ok(cpu)
}

/// PostgreSQL's CPU since it was created, sampled: each process's last
/// sample counts, so a backend that ended between samples loses only what
/// it spent after its last one.
#[derive(Debug)]
pub struct PostgresCpu {
    start: HashMap<u32, f64>,
    last: HashMap<u32, f64>,
}

impl PostgresCpu {
    pub fn start() -> anyhow::Result<Self> {
        let start = postgres_cpu_by_pid()?;
        Ok(Self { last: start.clone(), start })
    }

    pub fn sample(&mut self) -> anyhow::Result<()> {
        self.last.extend(postgres_cpu_by_pid()?);
        Ok(())
    }

    /// CPU seconds spent since [`Self::start`], as sampled.
    pub fn spent(&self) -> f64 {
        self.last.iter().map(|(pid, seconds)| seconds - self.start.get(pid).copied().unwrap_or(0.0)).sum()
    }
}

/// Empties the database (drops and recreates it on PostgreSQL, deletes the
/// file on SQLite) so the check afterwards counts this run only.
pub async fn reset_database(url: &str) -> anyhow::Result<()> {
    if let Some(rest) = url.strip_prefix("sqlite://") {
        let path = rest.split('?').next().unwrap_or(rest);
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{path}{suffix}"));
        }
        return Ok(());
    }
    let mut admin = url::Url::parse(url)?;
    let name = admin.path().trim_start_matches('/').to_owned();
    anyhow::ensure!(name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "database name {name:?}");
    admin.set_path("postgres");
    let admin = Database::connect(admin.as_str()).await?;
    admin.execute_unprepared(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)")).await?;
    admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await?;
    Ok(())
}
