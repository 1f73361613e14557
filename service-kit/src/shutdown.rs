//! The signal that starts a graceful drain.

use std::future::Future;

use tokio::signal::unix::{SignalKind, signal as unix_signal};

/// A future that completes on SIGINT (Ctrl-C) or SIGTERM, whichever comes
/// first. The handlers are installed when this is called, not when the future
/// is first polled, so a signal that arrives during start-up still drains.
pub fn signal() -> impl Future<Output = ()> {
    let interrupt = unix_signal(SignalKind::interrupt());
    let terminate = unix_signal(SignalKind::terminate());
    async move {
        match (interrupt, terminate) {
            (Ok(mut interrupt), Ok(mut terminate)) => {
                tokio::select! {
                    _ = interrupt.recv() => {}
                    _ = terminate.recv() => {}
                }
                tracing::info!("shutdown signal received; draining");
            }
            (Err(error), _) | (_, Err(error)) => {
                tracing::error!(%error, "cannot listen for shutdown signals; stop with SIGKILL");
                std::future::pending::<()>().await;
            }
        }
    }
}
