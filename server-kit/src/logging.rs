//! Log setup shared by the binaries: `tracing` to stderr, text or JSON, `RUST_LOG` for levels.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

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

/// Without `RUST_LOG`: `info`, except the NATS client's own reconnect attempts (one `info` line
/// each, while the gateway already logs the outage once).
pub const DEFAULT_FILTER: &str = "info,async_nats=warn";

/// Installs the global tracing subscriber, writing to stderr. `RUST_LOG` overrides
/// [`DEFAULT_FILTER`].
///
/// A failed write to stderr (a log pipe whose reader died) loses that line and nothing else:
/// tracing-subscriber would otherwise report it with `eprint!`, which panics on the same broken
/// stderr and, in the signal task, would leave SIGTERM unanswered.
pub fn init_tracing(format: LogFormat) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .log_internal_errors(false);
    match format {
        LogFormat::Text => builder.with_ansi(std::io::stderr().is_terminal()).init(),
        LogFormat::Json => builder.json().init(),
    }
}
