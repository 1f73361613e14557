//! The real `webhook-gateway` binary: it refuses to run without a signing
//! secret, and drains and exits cleanly on SIGTERM.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[test]
fn refuses_to_start_without_a_webhook_secret_naming_the_variable() {
    let output = Command::new(env!("CARGO_BIN_EXE_webhook-gateway"))
        .env_remove("STRIPE_WEBHOOK_SECRET")
        .env("GATEWAY_ADDR", "127.0.0.1:0")
        .output()
        .expect("runs");

    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("STRIPE_WEBHOOK_SECRET is not set"), "{stderr}");
}

#[test]
fn never_prints_the_secret_it_refuses() {
    let output = Command::new(env!("CARGO_BIN_EXE_webhook-gateway"))
        .env("STRIPE_WEBHOOK_SECRET", "sk_live_must_not_be_printed")
        .env("GATEWAY_ADDR", "127.0.0.1:0")
        .output()
        .expect("runs");

    assert!(!output.status.success());
    let all =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(all.contains("STRIPE_WEBHOOK_SECRET"), "{all}");
    assert!(!all.contains("must_not_be_printed"), "{all}");
}

#[test]
fn serves_until_sigterm_then_exits_cleanly() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_webhook-gateway"))
        .env("STRIPE_WEBHOOK_SECRET", "whsec_binary_test")
        .env("GATEWAY_ADDR", "127.0.0.1:0")
        .env("LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .spawn()
        .expect("gateway starts");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();

    let listening = lines
        .by_ref()
        .map(|line| {
            serde_json::from_str::<serde_json::Value>(&line.expect("log line")).expect("JSON log line")
        })
        .find(|line| line["message"] == "webhook-gateway listening")
        .expect("a listening line");
    assert!(listening["addr"].as_str().is_some_and(|addr| !addr.ends_with(":0")), "{listening}");

    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill runs");
    assert!(killed.success());
    let status = child.wait().expect("exits");
    let rest: Vec<String> = lines.map_while(Result::ok).collect();

    assert!(status.success(), "exit status {status}");
    assert!(rest.iter().any(|line| line.contains("webhook-gateway stopped")), "{rest:?}");
}
