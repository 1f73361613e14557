//! The real `payments-svc` binary: configuration from the environment,
//! migrations at start-up, and a clean exit on SIGTERM.

use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

/// The service on a SQLite file at `db_file`, on ephemeral ports, logging
/// `info` lines in `log_format` to a pipe; with the lines it writes.
fn serve(db_file: &Path, log_format: &str) -> (Child, Lines<BufReader<ChildStdout>>) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_payments-svc"))
        .env("DATABASE_URL", format!("sqlite://{}?mode=rwc", db_file.display()))
        .env("PAYMENTS_GRPC_ADDR", "127.0.0.1:0")
        .env("PAYMENTS_ADMIN_ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", log_format)
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdout(Stdio::piped())
        .spawn()
        .expect("payments-svc starts");
    let lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
    (child, lines)
}

#[test]
fn starts_on_a_new_sqlite_file_and_exits_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let db_file = dir.path().join("payments.db");
    let (mut child, mut lines) = serve(&db_file, "json");

    let listening = lines
        .by_ref()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(&line.expect("log line")).expect("JSON log line")
        })
        .find(|line| line["message"] == "payments-svc listening")
        .expect("a listening line");
    let addr = listening["addr"].as_str().expect("addr field");
    assert!(addr.starts_with("127.0.0.1:") && !addr.ends_with(":0"), "{addr}");
    assert!(db_file.exists(), "the SQLite file is created");

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    assert!(killed.success());
    let status = child.wait().expect("exits");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();

    assert!(status.success(), "exit status {status}");
    assert!(rest.iter().any(|line| line.contains("payments-svc stopped")), "{rest:?}");
}

#[test]
fn help_documents_every_setting_with_its_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_payments-svc")).arg("--help").output().expect("runs");
    let help = String::from_utf8_lossy(&output.stdout);
    for variable in [
        "DATABASE_URL",
        "PAYMENTS_GRPC_ADDR",
        "PAYMENTS_SKIP_MIGRATIONS",
        "LOG_FORMAT",
        "RUST_LOG",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_TRACES_SAMPLER",
    ] {
        assert!(help.contains(variable), "--help should mention {variable}:\n{help}");
    }
}

#[test]
fn refuses_a_stripe_key_of_the_other_mode_without_printing_it() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = Command::new(env!("CARGO_BIN_EXE_payments-svc"))
        .env("DATABASE_URL", format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display()))
        .env("PAYMENTS_GRPC_ADDR", "127.0.0.1:0")
        .env("PAYMENTS_ADMIN_ADDR", "127.0.0.1:0")
        .env("STRIPE_SECRET_KEY", "sk_live_must_not_be_printed")
        .env("STRIPE_LIVEMODE", "false")
        .output()
        .expect("runs");

    assert!(!output.status.success());
    let all =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(all.contains("STRIPE_SECRET_KEY is a live-mode key but STRIPE_LIVEMODE is false"), "{all}");
    assert!(!all.contains("must_not_be_printed"), "{all}");
}

#[test]
fn refuses_to_listen_beyond_loopback_without_a_token() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let output = Command::new(env!("CARGO_BIN_EXE_payments-svc"))
        .env("DATABASE_URL", format!("sqlite://{}?mode=rwc", dir.path().join("p.db").display()))
        .env("PAYMENTS_GRPC_ADDR", "0.0.0.0:0")
        .env("PAYMENTS_ADMIN_ADDR", "127.0.0.1:0")
        .env_remove("PAYMENTS_GRPC_TOKEN")
        .output()
        .expect("runs");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("PAYMENTS_GRPC_TOKEN is required when PAYMENTS_GRPC_ADDR (0.0.0.0:0)"),
        "{stderr}"
    );
}

#[test]
fn text_logs_written_to_a_pipe_carry_no_colour_codes() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let (mut child, mut lines) = serve(&dir.path().join("p.db"), "text");

    let listening = lines
        .by_ref()
        .map(|line| line.expect("log line"))
        .find(|line| line.contains("payments-svc listening"))
        .expect("a listening line");
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let _ = child.wait();

    assert!(!listening.contains('\u{1b}'), "escape codes in a piped log line: {listening:?}");
    assert!(listening.contains(" INFO "), "still a text line with its level: {listening:?}");
}

#[test]
fn each_operator_command_takes_only_its_own_flags() {
    let help = |args: &[&str]| {
        let output = Command::new(env!("CARGO_BIN_EXE_payments-svc")).args(args).output().expect("runs");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let tail = help(&["changes", "tail", "--help"]);
    assert!(tail.contains("--database-url") && tail.contains("--after"), "{tail}");
    for service_flag in ["--dispute-access", "--grpc-addr", "--stripe-secret-key", "--batch-max"] {
        assert!(!tail.contains(service_flag), "changes tail --help lists {service_flag}:\n{tail}");
    }
    let replay = help(&["events", "replay", "--help"]);
    assert!(replay.contains("--stripe-livemode") && !replay.contains("--grpc-addr"), "{replay}");

    let misplaced = Command::new(env!("CARGO_BIN_EXE_payments-svc"))
        .args(["--database-url", "sqlite::memory:", "events", "list"])
        .output()
        .expect("runs");
    assert_eq!(misplaced.status.code(), Some(2), "a service flag beside a command is refused, not ignored");
}
