//! Micro-benchmarks of the per-webhook CPU work in the gateway: checking the
//! signature over the 4.7 KB paid `checkout.session.completed` fixture, and
//! parsing it into the typed event.
//!
//! `cargo bench -p webhook-gateway`

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use payments_proto::stripe::parse_event;
use webhook_gateway::signature::{Verifier, WebhookSecret, sign};

const NOW: i64 = 1_800_000_000;

fn fixture() -> Bytes {
    let path =
        concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/stripe/checkout_session_completed_paid.json");
    Bytes::from(std::fs::read(path).expect("fixture"))
}

fn signature_verification(c: &mut Criterion) {
    let body = fixture();
    let secret = WebhookSecret::new("whsec_benchmark_secret_0123456789").expect("secret");
    let header = sign(&secret, NOW, &body);
    let one_secret = Verifier::new(std::slice::from_ref(&secret), 300);
    let rotating = Verifier::new(&[WebhookSecret::new("whsec_old_secret").expect("secret"), secret], 300);

    let mut group = c.benchmark_group("verify_signature");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("one_secret", |b| {
        b.iter(|| {
            one_secret.verify(Some(black_box(header.as_bytes())), black_box(&body), NOW).expect("valid")
        })
    });
    group.bench_function("two_secrets_rotating", |b| {
        b.iter(|| rotating.verify(Some(black_box(header.as_bytes())), black_box(&body), NOW).expect("valid"))
    });
    group.finish();
}

fn event_parsing(c: &mut Criterion) {
    let body = fixture();
    let mut group = c.benchmark_group("parse_event");
    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("checkout_session_completed", |b| {
        b.iter(|| parse_event(black_box(body.clone())).expect("parses"))
    });
    group.finish();
}

criterion_group!(benches, signature_verification, event_parsing);
criterion_main!(benches);
