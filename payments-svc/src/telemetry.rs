//! Structured logs through `tracing`, filtered by `RUST_LOG` (default `info`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Where log lines go: stdout for the service, stderr for operator commands
/// whose stdout is their result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    Stdout,
    Stderr,
}

/// Installs the global subscriber. Call once, from `main`.
pub fn init(format: LogFormat, output: Output) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match (format, output) {
        (LogFormat::Text, Output::Stdout) => builder.init(),
        (LogFormat::Text, Output::Stderr) => builder.with_writer(std::io::stderr).init(),
        (LogFormat::Json, Output::Stdout) => builder.json().flatten_event(true).init(),
        (LogFormat::Json, Output::Stderr) => {
            builder.json().flatten_event(true).with_writer(std::io::stderr).init()
        }
    }
}
