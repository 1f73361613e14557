//! What a deployment runs besides the services, through the real binaries:
//! the migration step (`payments-svc migrate`, `--check`, `--wait`), the
//! refusal to serve on a schema that step has not brought up, and the
//! `healthcheck` commands that container health checks call.

use std::process::{Command, Output, Stdio};

use crate::helpers::{Stack, TestDb, on_both_databases};
use crate::processes::{binary, payments_cli};

fn said(output: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr))
}

on_both_databases!(migrations_run_as_a_step_of_their_own_before_the_service_serves);
async fn migrations_run_as_a_step_of_their_own_before_the_service_serves(db: TestDb) {
    let check = payments_cli(&db.url, &[], &["migrate", "--check"]);
    assert!(!check.status.success(), "{}", said(&check));
    assert!(
        said(&check).contains("not applied: m20261127_000001") || said(&check).contains("cannot open"),
        "{}",
        said(&check)
    );
    let refused = payments_cli(
        &db.url,
        &[
            ("PAYMENTS_SKIP_MIGRATIONS", "true"),
            ("PAYMENTS_GRPC_ADDR", "127.0.0.1:0"),
            ("PAYMENTS_ADMIN_ADDR", "127.0.0.1:0"),
        ],
        &[],
    );
    assert!(!refused.status.success(), "served on an empty schema: {}", said(&refused));
    assert!(said(&refused).contains("are not applied") && said(&refused).contains("payments-svc migrate"));

    // An init container waiting for the step finishes once it has run.
    let waiter = Command::new(binary("payments-svc"))
        .args(["migrate", "--wait", "60s"])
        .env("DATABASE_URL", &db.url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("payments-svc runs");
    let applied = payments_cli(&db.url, &[], &["migrate"]);
    assert!(applied.status.success(), "{}", said(&applied));
    assert!(said(&applied).starts_with("applied "), "{}", said(&applied));
    let waited = waiter.wait_with_output().expect("waiter");
    assert!(waited.status.success(), "{}", said(&waited));
    assert!(said(&waited).contains("the database is current"), "{}", said(&waited));

    let again = payments_cli(&db.url, &[], &["migrate"]);
    assert!(said(&again).starts_with("nothing to apply"), "{}", said(&again));
    let check = payments_cli(&db.url, &[], &["migrate", "--check"]);
    assert!(check.status.success(), "{}", said(&check));
}

on_both_databases!(health_checks_answer_for_both_services_and_fail_when_they_cannot_serve);
async fn health_checks_answer_for_both_services_and_fail_when_they_cannot_serve(db: TestDb) {
    let mut stack = Stack::start(db).await;
    let grpc = stack.grpc_url().trim_start_matches("http://").to_owned();
    let gateway = stack.gateway_addr().to_string();
    let check = |binary_name: &str, addr: &str| {
        Command::new(binary(binary_name)).args(["healthcheck", "--addr", addr]).output().expect("runs")
    };

    let payments = check("payments-svc", &grpc);
    assert!(payments.status.success(), "{}", said(&payments));
    assert_eq!(String::from_utf8_lossy(&payments.stdout).trim(), "serving");
    let edge = check("webhook-gateway", &gateway);
    assert!(edge.status.success(), "{}", said(&edge));

    stack.stop_payments_svc().await;
    let payments = check("payments-svc", &grpc);
    assert!(!payments.status.success(), "{}", said(&payments));
    // The gateway is up but not ready without payments-svc.
    let edge = check("webhook-gateway", &gateway);
    assert!(!edge.status.success(), "{}", said(&edge));
    assert!(said(&edge).contains("503"), "{}", said(&edge));
    let alive = Command::new(binary("webhook-gateway"))
        .args(["healthcheck", "--addr", &gateway, "--path", "/healthz"])
        .output()
        .expect("runs");
    assert!(alive.status.success(), "{}", said(&alive));
    stack.shutdown().await;
}
