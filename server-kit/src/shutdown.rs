//! One shutdown signal: SIGINT and SIGTERM both cancel the same token.

use tokio_util::sync::CancellationToken;

/// Cancels `token` on SIGINT (Ctrl-C) or SIGTERM.
///
/// The handlers are installed before this returns, not in the spawned task: a signal sent right
/// after the readiness line would otherwise find none and kill the process without draining.
pub fn cancel_on_signals(token: CancellationToken) {
    use tokio::signal::unix::{signal, Signal, SignalKind};

    async fn received(signal: std::io::Result<Signal>, name: &'static str) {
        match signal {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(e) => {
                tracing::error!(cause = %e, signal = name, "cannot listen for signal");
                std::future::pending::<()>().await;
            }
        }
    }

    let interrupt = received(signal(SignalKind::interrupt()), "SIGINT");
    let terminate = received(signal(SignalKind::terminate()), "SIGTERM");
    tokio::spawn(async move {
        tokio::select! {
            _ = interrupt => tracing::info!(signal = "SIGINT", "shutting down"),
            _ = terminate => tracing::info!(signal = "SIGTERM", "shutting down"),
        }
        token.cancel();
    });
}
