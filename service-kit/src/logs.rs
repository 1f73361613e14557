//! Structured logs through `tracing`, filtered by `RUST_LOG` (default
//! `info`), as text or as one JSON object per line.
//!
//! The services write their lines through [`BufferedLines`]. Writing each
//! line on its own costs a system call and, when stdout is a pipe (a
//! container runtime, systemd, a log shipper), a wake-up of the process
//! reading it: under a flood of webhooks, one `info` line per event was
//! about a tenth of the gateway's CPU. `tracing-appender`'s non-blocking
//! writer does not help here: it wakes its writer thread for each line.

use std::fmt;
use std::io::{self, IsTerminal, Write};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::filter::{FilterExt as _, LevelFilter, filter_fn};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer as _};

use crate::traces::{self, Traces};

/// How long an `info` line may wait for others to be written with.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(20);

/// How many bytes of lines may wait before they are written at once.
pub const FLUSH_BYTES: usize = 64 * 1024;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Stdout, through [`BufferedLines`]: for the services.
    Stdout,
    /// Stderr, a line at a time: for operator commands, whose stdout is
    /// their result.
    Stderr,
}

/// Installs the global subscriber. Call once, from `main`, and keep the
/// guard until `main` returns: dropping it writes out the waiting lines.
/// With `traces`, spans are exported and JSON lines carry the `trace_id`
/// and `span_id` of the span they were written in.
pub fn init(format: LogFormat, output: Output, traces: Option<&Traces>) -> FlushOnDrop {
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|value| !value.is_empty());
    match output {
        Output::Stdout => {
            let colour = wants_colour(io::stdout().is_terminal(), no_color);
            let lines = BufferedLines::start(io::stdout(), FLUSH_INTERVAL);
            flush_on_panic(lines.clone());
            install(format, colour, lines.clone(), traces);
            FlushOnDrop(Some(lines))
        }
        Output::Stderr => {
            install(format, wants_colour(io::stderr().is_terminal(), no_color), io::stderr, traces);
            FlushOnDrop(None)
        }
    }
}

/// Text lines are coloured only for a person at a terminal: a file, a pipe
/// or a log collector would store the escape codes as text. `NO_COLOR`
/// (any non-empty value, see no-color.org) turns colour off everywhere.
fn wants_colour(is_terminal: bool, no_color: bool) -> bool {
    is_terminal && !no_color
}

/// Installs the global subscriber, writing `format` lines to `writer`.
///
/// Log lines are events only: spans exist for traces, and only the traces
/// layer takes them, so without it every span is disabled where it is
/// created.
fn install<W>(format: LogFormat, colour: bool, writer: W, traces: Option<&Traces>)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // The hint keeps the filter's level (not "anything may be on"), so
    // that disabled `debug!`/`trace!` call sites stay a single comparison.
    let events =
        filter.and(filter_fn(|metadata| metadata.is_event()).with_max_level_hint(LevelFilter::TRACE));
    let lines = tracing_subscriber::fmt::layer().with_writer(writer);
    let lines = match format {
        LogFormat::Text => lines.with_ansi(colour).with_filter(events).boxed(),
        LogFormat::Json => {
            let json = lines.json().flatten_event(true).with_current_span(false).with_span_list(false);
            json.map_event_format(WithTraceIds).with_filter(events).boxed()
        }
    };
    // Two arms rather than an `Option` layer: `None` as a layer declares an
    // interest in every call site, which made each disabled `trace!` of
    // hyper, h2 and tonic go through the whole dispatch.
    let subscriber = tracing_subscriber::registry().with(lines);
    match traces {
        Some(traces) => subscriber.with(traces.layer()).init(),
        None => subscriber.init(),
    }
}

/// A JSON line with the ids of the trace and span it was written in first,
/// so that a log collector can join it to the trace.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = traces::current_ids() else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(fields) => {
                write!(writer, "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{fields}")
            }
            None => writer.write_str(&line),
        }
    }
}

/// Writes out the waiting lines when dropped, at the end of `main`.
#[derive(Debug)]
#[must_use = "the waiting lines are written out when this is dropped"]
pub struct FlushOnDrop(Option<BufferedLines>);

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        if let Some(lines) = &self.0 {
            lines.flush();
        }
    }
}

/// A panic's own message goes to stderr; the lines before it, which say
/// what led there, must not stay in the buffer.
fn flush_on_panic(lines: BufferedLines) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        // `try_lock`: the panic may have happened while writing lines.
        let shared = &lines.shared;
        if let (Ok(mut pending), Ok(mut sink)) = (shared.pending.try_lock(), shared.sink.try_lock()) {
            let _ = sink.write_all(&pending).and_then(|()| sink.flush());
            pending.clear();
        }
        previous(info);
    }));
}

/// Log output that writes lines in groups.
///
/// Lines at `info` and below wait, and are written together at the latest
/// one interval after the first of them, or as soon as [`FLUSH_BYTES`] are
/// waiting, as nginx's buffered access log does. A `warn` or `error` line
/// writes out what is waiting, then itself, at once: what needs attention
/// is never late, and lines stay in order. A process killed outright
/// (SIGKILL, abort) loses what was waiting, at most one interval of `info`
/// lines; a graceful stop writes everything out ([`FlushOnDrop`]).
#[derive(Debug, Clone)]
pub struct BufferedLines {
    shared: Arc<Shared>,
}

/// Two locks, so that lines can be added while earlier ones are being
/// written out (the sink may be a pipe that is full for a while): a writer
/// takes the buffer's contents and locks the sink before it lets go of the
/// buffer, so lines reach the sink in order.
struct Shared {
    pending: Mutex<Vec<u8>>,
    sink: Mutex<Box<dyn Write + Send>>,
    /// Signalled when a line arrives to an empty buffer.
    arrived: Condvar,
}

impl BufferedLines {
    /// Lines for `sink`, with a thread that writes out waiting lines
    /// `interval` after the first of them. The thread sleeps while nothing
    /// waits, so an idle process is not woken.
    pub fn start(sink: impl Write + Send + 'static, interval: Duration) -> Self {
        let shared = Arc::new(Shared {
            pending: Mutex::new(Vec::new()),
            sink: Mutex::new(Box::new(sink)),
            arrived: Condvar::new(),
        });
        let flusher = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || flusher.write_out_every(interval))
            .expect("a thread for writing log lines");
        Self { shared }
    }

    /// Writes out whatever is waiting.
    pub fn flush(&self) {
        self.shared.write_out(self.shared.lock());
    }

    fn writer(&self, urgent: bool) -> LineWriter<'_> {
        LineWriter { shared: &self.shared, urgent }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Writes out what `pending` (the locked buffer) holds.
    fn write_out(&self, mut pending: MutexGuard<'_, Vec<u8>>) {
        if pending.is_empty() {
            return;
        }
        let bytes = std::mem::take(&mut *pending);
        let mut sink = self.sink.lock().unwrap_or_else(PoisonError::into_inner);
        drop(pending);
        // A log line that cannot be written has nowhere to be reported.
        let _ = sink.write_all(&bytes).and_then(|()| sink.flush());
    }

    fn write_out_every(&self, interval: Duration) {
        loop {
            let mut pending = self.lock();
            while pending.is_empty() {
                pending = self.arrived.wait(pending).unwrap_or_else(PoisonError::into_inner);
            }
            drop(pending);
            std::thread::sleep(interval);
            self.write_out(self.lock());
        }
    }
}

impl<'a> MakeWriter<'a> for BufferedLines {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        self.writer(true)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Self::Writer {
        self.writer(*meta.level() <= Level::WARN)
    }
}

/// Takes one formatted line (`tracing-subscriber` writes each line whole).
#[derive(Debug)]
pub struct LineWriter<'a> {
    shared: &'a Shared,
    urgent: bool,
}

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut pending = self.shared.lock();
        let was_empty = pending.is_empty();
        pending.extend_from_slice(line);
        if self.urgent || pending.len() >= FLUSH_BYTES {
            self.shared.write_out(pending);
        } else if was_empty {
            self.shared.arrived.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Instant;

    use super::*;

    /// A sink whose contents the test can read.
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);

    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().expect("sink").extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Sink {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().expect("sink").clone()).expect("UTF-8")
        }
    }

    const NEVER: Duration = Duration::from_secs(3600);

    fn write(lines: &BufferedLines, urgent: bool, line: &str) {
        lines.writer(urgent).write_all(line.as_bytes()).expect("written");
    }

    #[test]
    fn colour_only_at_a_terminal_and_never_with_no_color() {
        assert!(wants_colour(true, false));
        assert!(!wants_colour(false, false), "a file or pipe gets no escape codes");
        assert!(!wants_colour(true, true), "NO_COLOR wins over a terminal");
    }

    #[test]
    fn quiet_lines_wait_and_an_urgent_line_writes_them_out_first() {
        let sink = Sink::default();
        let lines = BufferedLines::start(sink.clone(), NEVER);

        write(&lines, false, "one\n");
        write(&lines, false, "two\n");
        assert_eq!(sink.text(), "");
        write(&lines, true, "three\n");

        assert_eq!(sink.text(), "one\ntwo\nthree\n");
    }

    /// A sink that tells when a write starts and finishes it only when let.
    struct Stuck {
        inner: Sink,
        started: Mutex<mpsc::Sender<()>>,
        go_on: Mutex<mpsc::Receiver<()>>,
    }

    impl Write for Stuck {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            let _ = self.started.lock().expect("started").send(());
            let _ = self.go_on.lock().expect("go_on").recv();
            self.inner.write(bytes)
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn lines_are_taken_while_a_write_is_stuck_and_reach_the_sink_in_order() {
        let sink = Sink::default();
        let ((started, write_started), (let_go, go_on)) = (mpsc::channel(), mpsc::channel());
        let stuck = Stuck { inner: sink.clone(), started: Mutex::new(started), go_on: Mutex::new(go_on) };
        let lines = BufferedLines::start(stuck, NEVER);
        let urgent = std::thread::spawn({
            let lines = lines.clone();
            move || write(&lines, true, "first\n")
        });
        write_started.recv().expect("the first write started");

        let (added, was_added) = mpsc::channel();
        std::thread::spawn({
            let lines = lines.clone();
            move || {
                write(&lines, false, "second\n");
                let _ = added.send(());
            }
        });
        assert!(was_added.recv_timeout(Duration::from_secs(10)).is_ok(), "adding a line waited for the sink");
        assert_eq!(sink.text(), "");

        let_go.send(()).expect("let go");
        urgent.join().expect("first written");
        assert_eq!(sink.text(), "first\n");
        let_go.send(()).expect("let go");
        lines.flush();
        assert_eq!(sink.text(), "first\nsecond\n");
    }

    #[test]
    fn waiting_lines_are_written_out_after_the_interval_without_another_line() {
        let sink = Sink::default();
        let lines = BufferedLines::start(sink.clone(), Duration::from_millis(10));

        write(&lines, false, "one\n");

        let deadline = Instant::now() + Duration::from_secs(10);
        while sink.text().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(sink.text(), "one\n");
    }

    #[test]
    fn a_full_buffer_is_written_out_at_once() {
        let sink = Sink::default();
        let lines = BufferedLines::start(sink.clone(), NEVER);
        let line = format!("{}\n", "x".repeat(1023));

        for _ in 0..FLUSH_BYTES / line.len() - 1 {
            write(&lines, false, &line);
        }
        assert_eq!(sink.text(), "");
        write(&lines, false, &line);

        assert_eq!(sink.text().len(), FLUSH_BYTES);
    }

    #[test]
    fn the_guard_writes_out_what_waits() {
        let sink = Sink::default();
        let lines = BufferedLines::start(sink.clone(), NEVER);
        write(&lines, false, "last words\n");

        drop(FlushOnDrop(Some(lines)));

        assert_eq!(sink.text(), "last words\n");
    }

    #[test]
    fn warnings_and_errors_are_urgent_info_and_below_wait() {
        let sink = Sink::default();
        let lines = BufferedLines::start(sink.clone(), NEVER);
        let subscriber = tracing_subscriber::fmt().with_writer(lines).with_max_level(Level::TRACE).finish();

        tracing::subscriber::with_default(subscriber, || {
            tracing::info!("started");
            tracing::debug!("detail");
            assert_eq!(sink.text(), "");
            tracing::warn!("refused");
            let written = sink.text();
            assert!(written.contains("started") && written.contains("detail"), "{written}");
            assert!(written.trim_end().ends_with("refused"), "{written}");
            tracing::error!("failed");
            assert!(sink.text().trim_end().ends_with("failed"));
        });
    }
}
