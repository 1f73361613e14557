//! Distributed traces: the services' `tracing` spans become OpenTelemetry
//! spans, exported over OTLP/gRPC, and the W3C trace context travels with
//! each webhook from the gateway to payments-svc.
//!
//! Exporting is off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set; it then follows the
//! standard `OTEL_*` variables (`OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER`,
//! `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*`, `OTEL_EXPORTER_OTLP_TIMEOUT`,
//! `OTEL_EXPORTER_OTLP_HEADERS`). Off, no layer is interested in spans, so
//! every span the services create is disabled at its call site and costs
//! next to nothing.
//!
//! Export never holds up a request: a finished span goes into the batch
//! processor's bounded queue without waiting, and a thread of the SDK sends
//! full batches. A collector that is down or slow fills that queue, and
//! what does not fit is dropped.

/// The variables both services read outside their own flags, for their
/// `--help`: the log filter and the OpenTelemetry settings this module
/// honours.
pub const ENVIRONMENT_HELP: &str = "\
Also read from the environment:
  RUST_LOG                            log filter, e.g. info or payments_svc=debug (default: info)
  NO_COLOR                            no colour in text logs, even on a terminal
  OTEL_EXPORTER_OTLP_ENDPOINT         export traces over OTLP to this collector (off when unset)
  OTEL_EXPORTER_OTLP_TRACES_ENDPOINT  the same, for traces only
  OTEL_EXPORTER_OTLP_PROTOCOL         grpc (the only one supported)
  OTEL_SERVICE_NAME                   the service name on exported spans
  OTEL_TRACES_SAMPLER                 always_on, always_off, traceidratio, parentbased_* (default: parentbased_always_on)
  OTEL_TRACES_SAMPLER_ARG             the ratio for traceidratio samplers, e.g. 0.01
  OTEL_TRACES_EXPORTER                none turns export off
  OTEL_SDK_DISABLED                   true turns export off";

use std::cell::Cell;
use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher as _, Hasher as _};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing::{Level, Subscriber};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{LevelFilter, filter_fn};
use tracing_subscriber::registry::LookupSpan;

/// How long a stopping service waits for its last spans to be sent.
const FLUSH_AT_EXIT: Duration = Duration::from_secs(2);

/// The share of new traces to start, as `f64` bits; 0 while tracing is off
/// (see [`start_trace`]).
static NEW_TRACES: AtomicU64 = AtomicU64::new(0);

/// Why tracing could not be set up as the `OTEL_*` variables ask.
#[derive(Debug, thiserror::Error)]
pub enum TracesError {
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL={0}: only grpc is supported (OTLP over gRPC, usually port 4317)")]
    Protocol(String),
    #[error("cannot export traces to the OTLP endpoint: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
}

/// The exporting tracer provider; keep it until the service has stopped,
/// then [`shutdown`](Self::shutdown) it to send the last spans.
#[derive(Debug)]
pub struct Traces {
    provider: SdkTracerProvider,
}

impl Traces {
    /// Exporting as the `OTEL_*` variables say, or `None` when no OTLP
    /// endpoint is set (or `OTEL_SDK_DISABLED=true`, or
    /// `OTEL_TRACES_EXPORTER=none`). `service_name` is used unless
    /// `OTEL_SERVICE_NAME` names the service otherwise. Call from within
    /// the Tokio runtime: the gRPC channel lives on it.
    pub fn from_env(service_name: &'static str) -> Result<Option<Self>, TracesError> {
        if !exporting(|name| std::env::var(name).ok()) {
            return Ok(None);
        }
        if let Ok(protocol) = std::env::var("OTEL_EXPORTER_OTLP_PROTOCOL")
            && protocol != "grpc"
        {
            return Err(TracesError::Protocol(protocol));
        }
        let exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic().build()?;
        let mut resource = Resource::builder();
        if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
            resource = resource.with_service_name(service_name);
        }
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource.build())
            .build();
        let share = new_trace_share(|name| std::env::var(name).ok());
        NEW_TRACES.store(share.to_bits(), Ordering::Relaxed);
        Ok(Some(Self { provider }))
    }

    /// The layer that turns spans (not log events: those stay log lines)
    /// into OpenTelemetry spans for this provider: the services' own, at
    /// `info`; the libraries' `debug` and `trace` spans (h2, hyper) stay off.
    pub fn layer<S>(&self) -> impl Layer<S> + use<S>
    where
        S: Subscriber + for<'span> LookupSpan<'span>,
    {
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("payments"))
            .with_tracked_inactivity(false)
            .with_threads(false)
            .with_location(false)
            .with_filter(
                filter_fn(|metadata| metadata.is_span() && *metadata.level() <= Level::INFO)
                    .with_max_level_hint(LevelFilter::INFO),
            )
    }

    /// Sends what is left, waiting at most a couple of seconds: a collector
    /// that is away must not hold up a stop.
    pub async fn shutdown(self) {
        let provider = self.provider;
        let flushed =
            tokio::task::spawn_blocking(move || provider.shutdown_with_timeout(FLUSH_AT_EXIT)).await;
        if let Ok(Err(error)) = flushed {
            tracing::warn!(%error, "the last spans may not have been exported");
        }
    }
}

/// Whether a request that arrives without a trace context (a webhook from
/// Stripe, a verify call from a browser) starts a trace: always, never, or
/// for the share the sampler variables give.
///
/// The decision is taken here, before any span exists, rather than only by
/// the SDK's sampler when the span starts: a span the sampler drops has
/// still cost its creation, its ids and its context at every hop, which
/// with one webhook in a hundred sampled was most of what tracing cost.
/// Requests that are not traced get disabled spans, and so do the calls
/// and batches that carry only them.
pub fn start_trace() -> bool {
    let share = f64::from_bits(NEW_TRACES.load(Ordering::Relaxed));
    share >= 1.0 || (share > 0.0 && random_unit() < share)
}

/// The share of new traces the sampler variables ask for: `always_on` and
/// the default 1, `always_off` 0, the ratio samplers their argument.
fn new_trace_share(var: impl Fn(&str) -> Option<String>) -> f64 {
    let ratio = || var("OTEL_TRACES_SAMPLER_ARG").and_then(|arg| arg.trim().parse::<f64>().ok());
    match var("OTEL_TRACES_SAMPLER").as_deref().map(str::trim) {
        Some("always_off" | "parentbased_always_off") => 0.0,
        Some("traceidratio" | "parentbased_traceidratio") => ratio().unwrap_or(1.0).clamp(0.0, 1.0),
        _ => 1.0,
    }
}

/// A number in [0, 1) from a per-thread xorshift generator seeded by the
/// operating system: cheap, and good enough to pick a share of requests.
fn random_unit() -> f64 {
    thread_local! {
        static STATE: Cell<u64> = Cell::new(RandomState::new().build_hasher().finish() | 1);
    }
    STATE.with(|state| {
        let mut x = state.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        state.set(x);
        (x >> 11) as f64 / (1u64 << 53) as f64
    })
}

/// Whether the variables (read through `var`) ask for traces to be
/// exported.
fn exporting(var: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| var(name).is_some_and(|value| !value.trim().is_empty());
    let disabled = var("OTEL_SDK_DISABLED").is_some_and(|value| value.trim().eq_ignore_ascii_case("true"));
    let no_exporter = var("OTEL_TRACES_EXPORTER").is_some_and(|value| value.trim() == "none");
    (set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
        && !disabled
        && !no_exporter
}

/// The W3C `traceparent` of `span`, or `None` when it is not traced
/// (tracing off, or a disabled span).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut carrier = Traceparent(None);
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    carrier.0
}

/// The span context a `traceparent` names, if it is a valid one.
pub fn span_context(traceparent: &str) -> Option<SpanContext> {
    let context = TraceContextPropagator::new().extract(&Traceparent(Some(traceparent.to_owned())));
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// Makes `span` a child of the remote span `traceparent` names; a missing
/// or malformed one leaves `span` where it is.
pub fn continue_from(span: &tracing::Span, traceparent: &str) {
    if let Some(parent) = span_context(traceparent) {
        set_remote_parent(span, parent);
    }
}

fn set_remote_parent(span: &tracing::Span, parent: SpanContext) {
    // Fails only for a span already started or disabled: left as it is.
    let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(parent));
}

/// Marks `span` as failed, with `error` as its reason (the span declares
/// `otel.status_code` and `error` fields).
pub fn record_error(span: &tracing::Span, error: impl std::fmt::Display) {
    span.record("otel.status_code", "ERROR");
    span.record("error", tracing::field::display(error));
}

/// Puts `span`, created in a call that serves many deliveries, into the
/// trace of the delivery `traceparent` names: unless it is already in that
/// trace, it becomes a child of the delivery's span and links to the call.
pub fn join_delivery(span: &tracing::Span, traceparent: &str) {
    let Some(delivery) = span_context(traceparent) else { return };
    let call = tracing::Span::current().context().span().span_context().clone();
    if call.trace_id() == delivery.trace_id() {
        return;
    }
    set_remote_parent(span, delivery);
    span.add_link(call);
}

/// Puts the trace context of `span` into gRPC request metadata.
pub fn inject_metadata(span: &tracing::Span, metadata: &mut MetadataMap) {
    let context = span.context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut Metadata(metadata));
    }
}

/// The `traceparent` a gRPC request carries, if any.
pub fn metadata_traceparent(metadata: &MetadataMap) -> Option<&str> {
    metadata.get("traceparent").and_then(|value| value.to_str().ok())
}

/// The span of work that serves many requests at once (a call, a batch):
/// `make(parent)` in the trace of the first traced one, linked to every
/// other traced one (at most the SDK's 128 links); disabled when none is
/// traced.
pub fn serving<'a>(
    served: impl IntoIterator<Item = &'a tracing::Span>,
    make: impl FnOnce(&tracing::Span) -> tracing::Span,
) -> tracing::Span {
    let mut traced = served.into_iter().filter(|span| !span.is_disabled());
    let Some(first) = traced.next() else { return tracing::Span::none() };
    let span = make(first);
    for each in traced.take(127) {
        span.add_link(each.context().span().span_context().clone());
    }
    span
}

/// The trace and span ids of the span that is current on this thread, as
/// hex, for log lines; `None` outside traced spans.
pub fn current_ids() -> Option<(String, String)> {
    opentelemetry::Context::map_current(|context| {
        let span = context.span();
        let span_context = span.span_context();
        span_context
            .is_valid()
            .then(|| (span_context.trace_id().to_string(), span_context.span_id().to_string()))
    })
}

/// A carrier of just `traceparent` (the propagator also reads `tracestate`,
/// which the services neither set nor need).
struct Traceparent(Option<String>);

impl Injector for Traceparent {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

impl Extractor for Traceparent {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0.as_deref()).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

/// gRPC metadata as a carrier.
struct Metadata<'a>(&'a mut MetadataMap);

impl Injector for Metadata<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) =
            (MetadataKey::from_bytes(key.as_bytes()), MetadataValue::try_from(value))
        {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| pairs.iter().find(|(key, _)| *key == name).map(|(_, value)| (*value).to_owned())
    }

    #[test]
    fn exporting_needs_an_endpoint_and_can_be_turned_off() {
        assert!(!exporting(vars(&[])));
        assert!(!exporting(vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])));
        assert!(exporting(vars(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317")])));
        assert!(exporting(vars(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://collector:4317")])));
        assert!(!exporting(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ])));
        assert!(!exporting(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])));
    }

    #[test]
    fn the_share_of_new_traces_follows_the_sampler_variables() {
        assert_eq!(new_trace_share(vars(&[])), 1.0);
        assert_eq!(new_trace_share(vars(&[("OTEL_TRACES_SAMPLER", "always_off")])), 0.0);
        assert_eq!(new_trace_share(vars(&[("OTEL_TRACES_SAMPLER", "parentbased_always_on")])), 1.0);
        let ratio =
            [("OTEL_TRACES_SAMPLER", "parentbased_traceidratio"), ("OTEL_TRACES_SAMPLER_ARG", "0.01")];
        assert_eq!(new_trace_share(vars(&ratio)), 0.01);
        assert_eq!(new_trace_share(vars(&[("OTEL_TRACES_SAMPLER", "traceidratio")])), 1.0, "no argument");
    }

    #[test]
    fn random_units_are_spread_over_zero_to_one() {
        let draws: Vec<f64> = (0..10_000).map(|_| random_unit()).collect();
        assert!(draws.iter().all(|x| (0.0..1.0).contains(x)));
        let below_a_tenth = draws.iter().filter(|x| **x < 0.1).count();
        assert!((700..1300).contains(&below_a_tenth), "{below_a_tenth} of 10,000 below 0.1");
    }

    #[test]
    fn a_traceparent_is_read_back_as_the_span_context_it_names() {
        let traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

        let context = span_context(traceparent).expect("valid");

        assert_eq!(context.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id().to_string(), "00f067aa0ba902b7");
        assert!(context.is_sampled() && context.is_remote());
        assert!(span_context("00-00000000000000000000000000000000-00f067aa0ba902b7-01").is_none());
        assert!(span_context("not a traceparent").is_none());
        assert!(span_context("").is_none());
    }

    #[test]
    fn untraced_spans_carry_no_context() {
        let span = tracing::info_span!("not traced: no subscriber here");

        assert_eq!(traceparent(&span), None);
        let mut metadata = MetadataMap::new();
        inject_metadata(&span, &mut metadata);
        assert!(metadata.is_empty());
        assert_eq!(current_ids(), None);
    }
}
