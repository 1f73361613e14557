//! A real OTLP/gRPC trace collector, in process: the endpoint the tests and
//! loadgen point the services' `OTEL_EXPORTER_OTLP_ENDPOINT` at. It answers
//! `opentelemetry.proto.collector.trace.v1.TraceService/Export` as any
//! collector does, and keeps (or only counts) the spans it is sent.
//!
//! Also the two collectors that misbehave: one that is down (a port nobody
//! listens on) and one that accepts connections and never answers.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::bail;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

/// One span as the collector received it, ids in hex.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of the process that sent it.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// OTLP's `SpanKind`: 2 server, 3 client.
    pub kind: i32,
    /// Attributes as strings.
    pub attributes: BTreeMap<String, String>,
    /// The spans it links to, as (trace id, span id).
    pub links: Vec<(String, String)>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Debug, Default)]
struct Received {
    /// Every span, unless only counting.
    spans: Mutex<Vec<ReceivedSpan>>,
    count: AtomicUsize,
    keep: bool,
}

/// A running collector; it stops when dropped.
#[derive(Debug)]
pub struct Collector {
    addr: SocketAddr,
    received: Arc<Received>,
    _stop: oneshot::Sender<()>,
}

impl Collector {
    /// A collector on an ephemeral port that keeps every span.
    pub async fn start() -> anyhow::Result<Self> {
        Self::serve(true).await
    }

    /// A collector that only counts spans: for long runs under load.
    pub async fn counting() -> anyhow::Result<Self> {
        Self::serve(false).await
    }

    async fn serve(keep: bool) -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let received = Arc::new(Received { keep, ..Received::default() });
        let (stop, stopped) = oneshot::channel::<()>();
        let service = TraceServiceServer::new(Service(Arc::clone(&received)));
        tokio::spawn(async move {
            let serving = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(TcpIncoming::from(listener), async {
                    let _ = stopped.await;
                });
            if let Err(error) = serving.await {
                eprintln!("test collector stopped: {error}");
            }
        });
        Ok(Self { addr, received, _stop: stop })
    }

    /// A collector that only counts, on a thread and runtime of its own
    /// (so that decoding spans does not slow whoever started it); it runs
    /// until the process ends. Its endpoint and its count.
    pub fn counting_on_own_thread() -> anyhow::Result<(String, SpanCount)> {
        let (sender, started) = std::sync::mpsc::channel();
        std::thread::Builder::new().name("collector".into()).spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(runtime) => runtime,
                Err(error) => return drop(sender.send(Err(anyhow::Error::from(error)))),
            };
            runtime.block_on(async {
                match Self::counting().await {
                    Ok(collector) => {
                        let _ = sender
                            .send(Ok((collector.endpoint(), SpanCount(Arc::clone(&collector.received)))));
                        std::future::pending::<()>().await;
                    }
                    Err(error) => drop(sender.send(Err(error))),
                }
            });
        })?;
        started.recv()?
    }

    /// For `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// How many spans arrived so far.
    pub fn count(&self) -> usize {
        self.received.count.load(Ordering::Relaxed)
    }

    /// The spans kept so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.spans.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Waits until the spans received satisfy `done` (exporters send in
    /// batches, at their own pace), and returns them; an error with what
    /// did arrive if they do not within `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> anyhow::Result<Vec<ReceivedSpan>> {
        let deadline = Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return Ok(spans);
            }
            if Instant::now() >= deadline {
                let names: Vec<String> = spans.iter().map(|s| format!("{}: {}", s.service, s.name)).collect();
                bail!("the spans expected did not arrive within {timeout:?}; received: {names:#?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// How many spans a collector has received.
#[derive(Debug, Clone)]
pub struct SpanCount(Arc<Received>);

impl SpanCount {
    pub fn get(&self) -> usize {
        self.0.count.load(Ordering::Relaxed)
    }
}

struct Service(Arc<Received>);

#[tonic::async_trait]
impl TraceService for Service {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let spans = received_spans(request.into_inner());
        self.0.count.fetch_add(spans.len(), Ordering::Relaxed);
        if self.0.keep {
            self.0.spans.lock().unwrap_or_else(PoisonError::into_inner).extend(spans);
        }
        Ok(Response::new(ExportTraceServiceResponse { partial_success: None }))
    }
}

fn received_spans(request: ExportTraceServiceRequest) -> Vec<ReceivedSpan> {
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let resource = resource_spans.resource.map(|r| attributes(r.attributes)).unwrap_or_default();
        let service = resource.get("service.name").cloned().unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|scope| scope.spans) {
            received.push(ReceivedSpan {
                service: service.clone(),
                name: span.name,
                trace_id: hex::encode(&span.trace_id),
                span_id: hex::encode(&span.span_id),
                parent_span_id: hex::encode(&span.parent_span_id),
                kind: span.kind,
                attributes: attributes(span.attributes),
                links: span
                    .links
                    .into_iter()
                    .map(|link| (hex::encode(link.trace_id), hex::encode(link.span_id)))
                    .collect(),
            });
        }
    }
    received
}

fn attributes(pairs: Vec<KeyValue>) -> BTreeMap<String, String> {
    pairs.into_iter().map(|pair| (pair.key, pair.value.map(text).unwrap_or_default())).collect()
}

fn text(value: AnyValue) -> String {
    match value.value {
        Some(any_value::Value::StringValue(text)) => text,
        Some(any_value::Value::IntValue(number)) => number.to_string(),
        Some(any_value::Value::BoolValue(flag)) => flag.to_string(),
        Some(any_value::Value::DoubleValue(number)) => number.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// An endpoint where no collector runs: connections are refused.
pub fn down() -> anyhow::Result<String> {
    // Bound, then closed: a port nothing listens on.
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    drop(listener);
    Ok(format!("http://{addr}"))
}

/// A collector that accepts connections and never answers a byte: the
/// exporter's calls hang until their own timeout. Stops when dropped.
#[derive(Debug)]
pub struct Unresponsive {
    addr: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl Unresponsive {
    pub async fn start() -> anyhow::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let accepting = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((connection, _)) = listener.accept().await {
                held.push(connection);
            }
        });
        Ok(Self { addr, accepting })
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Unresponsive {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}
