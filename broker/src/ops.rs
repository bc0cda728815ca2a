//! Process plumbing shared by the `broker` and `gateway` binaries.

use std::io::IsTerminal;
use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

pub use crate::cli_config::parse_cli;

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global tracing subscriber, writing to stderr. `RUST_LOG` overrides the default
/// `info` level.
///
/// A failed write to stderr (a log pipe whose reader died) loses that line and nothing else:
/// tracing-subscriber would otherwise report it with `eprint!`, which panics on the same broken
/// stderr and, in the signal task, would leave SIGTERM unanswered.
pub fn init_tracing(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}

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

/// Serves an admin router on `listener` until `shutdown`.
pub async fn serve_admin(
    listener: TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Binds a TCP listener and logs `message` with the bound address (the readiness signal tests
/// and scripts wait for).
pub async fn bind_logged(addr: SocketAddr, message: &'static str) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "{message}");
    Ok(listener)
}
