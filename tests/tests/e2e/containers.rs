//! The images (built by `scripts/image`) run the way Kubernetes would run
//! them, with exactly the environment, arguments, probes and security
//! context of the rendered staging overlay: the migration Job as its own
//! container against PostgreSQL, payments-svc with migrations off behind
//! its wait-for-migrations init container, then the gateway; a signed
//! webhook through the gateway container, verify, and SIGTERM draining both.

use std::collections::BTreeSet;
use std::time::Duration;

use bytes::Bytes;
use e2e::{HttpClient, fixture, signature_now, with_fresh_ids};
use sea_orm::{ConnectionTrait, Database, DbBackend, Statement};
use tonic::transport::Endpoint;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::helpers::{TEST_SECRET, TestDb, eventually, secret};
use crate::manifests::{Compose, Probe, Rendered, Secrets};
use crate::podman::{Podman, RunSpec};

/// How long a container gets to start answering its probes.
const START_LIMIT: Duration = Duration::from_secs(30);
/// Every container of the manifests: `(kind, owner, name)`.
const CONTAINERS: [(&str, &str, &str); 4] = [
    ("Job", "payments-svc-migrate", "migrate"),
    ("Deployment", "payments-svc", "wait-for-migrations"),
    ("Deployment", "payments-svc", "payments-svc"),
    ("Deployment", "webhook-gateway", "webhook-gateway"),
];
/// The Deployments' `terminationGracePeriodSeconds` is checked to be this.
const GRACE_SECONDS: u32 = 30;

#[tokio::test]
async fn the_images_run_as_the_manifests_say_and_serve_a_webhook() {
    let rendered = Rendered::overlay("staging").await;
    let podman = Podman::new();
    let db = TestDb::postgres().await;
    // The database host by name, as in a cluster: resolved by the image's
    // own name service configuration.
    let database_url = db.url.replace("127.0.0.1", "localhost");
    let token = format!("container-test-token-{:016x}", std::process::id());
    let secrets: Secrets = [
        (("payments-database", "url"), database_url.clone()),
        (("payments-grpc", "token"), token),
        (("stripe-webhook", "signing-secrets"), TEST_SECRET.to_owned()),
    ]
    .into_iter()
    .collect();
    let tag = format!("e2e-{}", std::process::id());

    let mut listed: Vec<_> = rendered.containers();
    let mut tested: Vec<_> = CONTAINERS.map(|(k, o, n)| (k.to_owned(), o.to_owned(), n.to_owned())).to_vec();
    listed.sort();
    tested.sort();
    assert_eq!(listed, tested, "every container of the manifests is run here");
    let [migrate, wait_for, service, gateway] =
        CONTAINERS.map(|(kind, owner, name)| rendered.container(kind, owner, name));
    for deployment in ["payments-svc", "webhook-gateway"] {
        let pod = &rendered.object("Deployment", deployment)["spec"]["template"]["spec"];
        assert_eq!(pod["terminationGracePeriodSeconds"], GRACE_SECONDS);
        assert_eq!(pod["automountServiceAccountToken"], false);
    }
    for container in [&migrate, &wait_for, &service, &gateway] {
        check_image(&podman, container.image(), &container.user()).await;
        check_environment(&podman, container.image(), &container.environment(&secrets), &container.args())
            .await;
    }
    // Production's environment differs (live mode, the sweep): every
    // variable it sets is read too.
    let production = Rendered::overlay("production").await;
    let mut live_secrets = secrets.clone();
    live_secrets.insert(("payments-stripe", "secret-key"), "sk_live_placeholder".to_owned());
    for (kind, owner, name) in CONTAINERS {
        let container = production.container(kind, owner, name);
        let env = container.environment(&live_secrets);
        // The images built here stand in for the registry's.
        let image = rendered.container(kind, owner, name).image().to_owned();
        check_environment(&podman, &image, &env, &container.args()).await;
    }
    let run = |container: &crate::manifests::Container<'_>| {
        let (read_only, cap_drop) = container.hardening();
        assert!(read_only && cap_drop == ["ALL"], "read-only root, all capabilities dropped");
        RunSpec {
            image: container.image().to_owned(),
            env: container.environment(&secrets),
            args: container.args(),
            hosts: Vec::new(),
            read_only,
            cap_drop,
        }
    };

    // Before the migration step: the init container waits, and payments-svc
    // itself refuses to serve on the empty schema.
    let waiting = podman.start(&format!("{tag}-wait"), &run(&wait_for)).await;
    let refused = podman.start(&format!("{tag}-early"), &run(&service)).await;
    assert_ne!(refused.exit_code().await, 0, "payments-svc started before its migrations");
    assert!(refused.logs().await.contains("migration(s) are not applied"), "{}", refused.logs().await);
    assert!(waiting.running().await, "the init container gave up: {}", waiting.logs().await);

    let job = podman.start(&format!("{tag}-migrate"), &run(&migrate)).await;
    assert_eq!(job.exit_code().await, 0, "migration step: {}", job.logs().await);
    assert!(job.logs().await.contains("applied "), "{}", job.logs().await);
    assert_eq!(waiting.exit_code().await, 0, "init container: {}", waiting.logs().await);

    let payments = podman.start(&format!("{tag}-payments-svc"), &run(&service)).await;
    for (which, probe) in service.probes() {
        passes(&probe, which).await;
    }

    // The gateway finds payments-svc through its Service's name and port.
    let mut gateway_run = run(&gateway);
    let url = env_value(&gateway_run.env, "PAYMENTS_SVC_URL");
    let (host, port) = url.trim_start_matches("http://").split_once(':').expect("host:port");
    let target = rendered.service_target(host, port.parse().expect("port"));
    assert_eq!(service.port(target), port.parse::<u16>().expect("port"), "Service port → container port");
    gateway_run.hosts.push((host.to_owned(), "127.0.0.1".to_owned()));
    let edge = podman.start(&format!("{tag}-gateway"), &gateway_run).await;
    for (which, probe) in gateway.probes() {
        passes(&probe, which).await;
    }

    // The compose file sets only variables the images read, and its health
    // checks work in them.
    let compose = Compose::read();
    for service in compose.services.values().filter(|service| service.image.starts_with("localhost/")) {
        let env: Vec<(String, String)> =
            service.environment.keys().map(|name| (name.clone(), String::new())).collect();
        check_environment(&podman, &service.image, &env, &service.command).await;
    }
    for (container, name) in [(&payments, "payments-svc"), (&edge, "webhook-gateway")] {
        let test = &compose.services[name].healthcheck.as_ref().expect("a health check").test;
        assert_eq!(test[0], "CMD");
        let args: Vec<&str> = test[1..].iter().map(String::as_str).collect();
        let output = container.exec(&args).await;
        assert!(output.status.success(), "{name} health check: {}", String::from_utf8_lossy(&output.stderr));
    }

    // A signed webhook through the gateway container, recorded; verify says paid.
    let http_port = gateway.port(&"http".into());
    let body = with_fresh_ids(
        &fixture("checkout_session_completed_paid.json").expect("fixture"),
        &format!("_c{}", std::process::id()),
    )
    .expect("fresh ids");
    let event: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
    let client = HttpClient::default();
    let answer = client
        .post_webhook(
            &format!("http://127.0.0.1:{http_port}/api/payments/webhook"),
            Bytes::clone(&body),
            Some(&signature_now(&secret(), &body)),
        )
        .await
        .expect("webhook answered");
    assert_eq!(answer.status, 200, "{:?}", answer.body);
    assert_eq!(answer.json()["outcome"], "processed");
    let session = event["data"]["object"]["id"].as_str().expect("session id");
    assert_eq!(recorded(&db.url, event["id"].as_str().expect("event id"), session).await, (1, 1));
    let verify = format!("http://127.0.0.1:{http_port}/api/payments/verify?session_id={session}");
    let answer = client.send(hyper::Method::GET, &verify, &[], Bytes::new()).await.expect("verify");
    assert_eq!(answer.json()["status"], "paid", "{:?}", answer.body);

    // SIGTERM drains both, well within the grace period.
    assert_eq!(edge.stop(GRACE_SECONDS).await, 0, "gateway: {}", edge.logs().await);
    assert_eq!(payments.stop(GRACE_SECONDS).await, 0, "payments-svc: {}", payments.logs().await);
}

/// The image exists, runs as the pod's numeric user, carries CA roots, and
/// its size is reported.
async fn check_image(podman: &Podman, image: &str, pod_user: &str) {
    let found = podman.output(&["image", "exists", image]).await;
    assert!(found.status.success(), "image {image} is missing: build it with scripts/image");
    let user = podman.ok(&["image", "inspect", "--format", "{{.Config.User}}", image]).await;
    assert_eq!(user, pod_user, "{image}: the image's user is the one the pod runs as");
    let size: u64 =
        podman.ok(&["image", "inspect", "--format", "{{.Size}}", image]).await.parse().expect("size");
    println!("image {image}: {:.1} MB", size as f64 / 1e6);
    let probe = format!("roots-{}", std::process::id());
    podman.ok(&["create", "--name", &probe, image]).await;
    let dir = tempfile::tempdir().expect("temporary directory");
    let bundle = dir.path().join("roots.crt");
    let copied = podman
        .output(&["cp", &format!("{probe}:/etc/ssl/certs/ca-certificates.crt"), &bundle.to_string_lossy()])
        .await;
    podman.ok(&["rm", &probe]).await;
    assert!(copied.status.success(), "{image} has no CA bundle");
    let roots = std::fs::read_to_string(&bundle).expect("bundle").matches("BEGIN CERTIFICATE").count();
    assert!(roots > 50, "{image}: only {roots} CA roots");
}

/// Every variable set for the container is one its binary reads: named in
/// its `--help` (and its subcommand's, for `args`).
async fn check_environment(podman: &Podman, image: &str, env: &[(String, String)], args: &[String]) {
    let mut accepted = accepted_variables(podman, image, &[]).await;
    if let Some(subcommand) = args.first() {
        accepted.extend(accepted_variables(podman, image, &[subcommand.as_str()]).await);
    }
    for (name, _) in env {
        assert!(accepted.contains(name), "{image} {args:?} does not read {name}; it reads {accepted:?}");
    }
}

async fn accepted_variables(podman: &Podman, image: &str, subcommand: &[&str]) -> BTreeSet<String> {
    let mut args = vec!["run", "--rm", image];
    args.extend(subcommand);
    args.push("--help");
    let help = podman.ok(&args).await;
    let from_flags = help.split("[env: ").skip(1).filter_map(|rest| rest.split(['=', ']']).next());
    let from_list = help
        .split("Also read from the environment:")
        .nth(1)
        .into_iter()
        .flat_map(|list| list.lines().filter_map(|line| line.split_whitespace().next()));
    from_flags.chain(from_list).map(str::to_owned).collect()
}

/// Makes `probe` as the kubelet would, until it passes.
async fn passes(probe: &Probe, which: &str) {
    let what = format!("{which} {probe:?}");
    eventually(START_LIMIT, &what, || async {
        match probe {
            Probe::Http { path, port } => {
                let url = format!("http://127.0.0.1:{port}{path}");
                let answer = HttpClient::default().send(hyper::Method::GET, &url, &[], Bytes::new()).await;
                answer.is_ok_and(|answer| answer.status == 200)
            }
            Probe::Grpc { port, service } => {
                let Ok(endpoint) = Endpoint::from_shared(format!("http://127.0.0.1:{port}")) else {
                    return false;
                };
                let Ok(channel) = endpoint.connect().await else { return false };
                let request = HealthCheckRequest { service: service.clone() };
                let answer = HealthClient::new(channel).check(request).await;
                answer.is_ok_and(|answer| answer.into_inner().status() == ServingStatus::Serving)
            }
        }
    })
    .await;
}

/// How many rows the event and the session have in the database.
async fn recorded(url: &str, event: &str, session: &str) -> (i64, i64) {
    let db = Database::connect(url).await.expect("database");
    let events = count(
        &db,
        "SELECT count(*) AS n FROM stripe_webhook_events WHERE event_id = $1 AND status = 'processed'",
        event,
    )
    .await;
    let purchases = count(
        &db,
        "SELECT count(*) AS n FROM course_purchases WHERE stripe_checkout_session_id = $1",
        session,
    )
    .await;
    db.close().await.expect("close");
    (events, purchases)
}

/// The `n` that `sql` counts for `id`.
async fn count(db: &sea_orm::DatabaseConnection, sql: &str, id: &str) -> i64 {
    let statement = Statement::from_sql_and_values(DbBackend::Postgres, sql, [id.into()]);
    let row = db.query_one_raw(statement).await.expect("query").expect("row");
    row.try_get::<i64>("", "n").expect("count")
}

fn env_value<'a>(env: &'a [(String, String)], name: &str) -> &'a str {
    env.iter()
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.as_str())
        .unwrap_or_else(|| panic!("{name} is not set"))
}
