//! What the `broker` and `gateway` binaries share, so that neither is the other's utility crate.
//!
//! - [`settings`]: `--config FILE` beneath flags and environment variables, for any clap command,
//!   and [`settings::ConfigError`], a setting whose value cannot work;
//!   `docs_check` (feature `docs-check`, for tests) keeps docs/configuration.md and the example
//!   files in step with the flags.
//! - [`logging`]: `tracing` to stderr, text or JSON. [`shutdown`]: SIGINT and SIGTERM cancel one
//!   token. [`admin_http`]: serving an admin router within connection, header,
//!   request and idle limits.
//! - [`tls`]: rustls configurations from PEM files. [`secret`]: secrets from flags or files, and
//!   the refusal to expose an unauthenticated listener.
//! - [`exit`]: how a binary ends on an error: one log line, causes said once, a hint, no
//!   backtrace.
//! - [`metrics`]: OpenMetrics families read at scrape time, and the scrape response.
//! - [`memory`]: maps that give their table back after a burst of groups is gone.

pub mod admin_http;
#[cfg(feature = "docs-check")]
pub mod docs_check;
pub mod exit;
pub mod logging;
pub mod memory;
pub mod metrics;
pub mod secret;
pub mod settings;
pub mod shutdown;
pub mod tls;

use std::path::Path;

/// The start of each server binary's `main`: its settings parsed (flags, environment, config
/// file, old names), logs set up in the format they ask for, then the old names used and the
/// config file read are logged.
pub fn start<C: clap::Parser>(
    aliases: &settings::Aliases,
    log_format: impl Fn(&C) -> logging::LogFormat,
    config_file: impl Fn(&C) -> Option<&Path>,
) -> Result<C, settings::ConfigFileError> {
    let settings::Parsed { cli, deprecated } = settings::parse_cli::<C>(aliases)?;
    logging::init_tracing(log_format(&cli));
    for used in &deprecated {
        used.warn();
    }
    if let Some(path) = config_file(&cli) {
        tracing::info!(path = %path.display(), "settings read from config file");
    }
    Ok(cli)
}
