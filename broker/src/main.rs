//! `broker`: the standalone channel server.
//!
//! `broker --listen 127.0.0.1:2206` (the default). Listening where other hosts can reach it
//! needs a link secret: `broker --listen 0.0.0.0:2206 --link-secret-file /etc/push/link.secret`
//! (add `--tls-cert`/`--tls-key` for TLS), or `--insecure` on a trusted network.
//! `broker --help` lists every setting; each also reads an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use broker::auth::SecurityArgs;
use broker::{Broker, BrokerConfig};
use clap::Parser;
use server_kit::admin_http;
use server_kit::listen::bind_logged;
use server_kit::logging::{init_tracing, LogFormat};
use server_kit::settings::{parse_cli, Aliases, Parsed};
use server_kit::shutdown::cancel_on_signals;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "broker",
    version,
    about = "Channel server: relays group messages between gateways"
)]
struct Cli {
    /// TOML file of settings keyed by long flag name (docs/configuration.md); flags and
    /// environment variables override it.
    #[arg(long = "config", env = "BROKER_CONFIG", value_name = "FILE")]
    config_file: Option<PathBuf>,

    /// Address the broker link listens on. Loopback by default; any other address needs a link
    /// secret (or --insecure), since without one anyone who reaches the port can publish.
    #[arg(long, env = "BROKER_LISTEN", default_value = "127.0.0.1:2206")]
    listen: SocketAddr,

    /// Address of the admin HTTP server (/healthz, /readyz, /metrics, /api/stats). Off unless
    /// given.
    #[arg(long, env = "BROKER_ADMIN")]
    admin: Option<SocketAddr>,

    /// Most admin HTTP connections open at once; more are closed at once.
    #[arg(long, env = "BROKER_ADMIN_MAX_CONNECTIONS", default_value_t = admin_http::DEFAULT_ADMIN_MAX_CONNECTIONS)]
    admin_max_connections: usize,

    /// Time for an admin request's header to arrive, and the longest a kept-alive admin
    /// connection may stay idle; the connection is closed past it.
    #[arg(long, env = "BROKER_ADMIN_HEADER_TIMEOUT", default_value = "5s", value_parser = parse_admin_timeout)]
    admin_header_timeout: Duration,

    /// Time for a whole admin request; past it the answer is 408.
    #[arg(long, env = "BROKER_ADMIN_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_admin_timeout)]
    admin_request_timeout: Duration,

    /// Log format on stderr. RUST_LOG sets the level (default info).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,

    #[command(flatten)]
    security: SecurityArgs,

    #[command(flatten)]
    config: BrokerConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let Parsed { cli, deprecated } = parse_cli::<Cli>(&Aliases::NONE)?;
    init_tracing(cli.log_format);
    for used in &deprecated {
        used.warn();
    }
    if let Some(path) = &cli.config_file {
        tracing::info!(path = %path.display(), "settings read from config file");
    }
    let security = cli
        .security
        .load(cli.listen)
        .context("invalid link security configuration")?;
    tracing::info!(
        link_secret = security.link_secret.is_some(),
        tls = security.tls.is_some(),
        "link security"
    );
    let broker = Broker::with_security(cli.config, security)?;
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());

    let listener = bind_logged(cli.listen, "broker listening")
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let admin = match cli.admin {
        Some(addr) => {
            let admin_listener = bind_logged(addr, "admin listening")
                .await
                .with_context(|| format!("cannot listen on {addr} (admin)"))?;
            anyhow::ensure!(
                cli.admin_max_connections > 0,
                "invalid configuration: admin-max-connections must be at least 1"
            );
            let stats = Arc::new(admin_http::AdminHttpStats::default());
            let router = broker::admin::router(broker.clone(), stats.clone());
            let limits = admin_http::AdminHttpLimits {
                max_connections: cli.admin_max_connections,
                header_timeout: cli.admin_header_timeout,
                request_timeout: cli.admin_request_timeout,
            };
            Some(tokio::spawn(admin_http::serve_admin(
                admin_listener,
                router,
                limits,
                stats,
                shutdown.clone(),
            )))
        }
        None => None,
    };
    broker.serve(listener, shutdown).await?;
    if let Some(admin) = admin {
        admin.await.context("admin server panicked")??;
    }
    Ok(())
}

/// A duration between 1 ms and 24 h.
fn parse_admin_timeout(value: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value).map_err(|e| e.to_string())?;
    if duration.is_zero() || duration > server_kit::settings::MAX_DURATION {
        return Err("must be between 1ms and 24h".into());
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/broker.example.toml parses, holds exactly the defaults and lists every setting, and
    /// docs/configuration.md has a row for every flag with its environment variable and default.
    #[test]
    fn example_config_and_reference_cover_every_setting() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        let result =
            server_kit::docs_check::check_docs("broker", "Broker", &docs, |cli: Cli| Cli {
                config_file: None,
                ..cli
            });
        if let Err(problem) = result {
            panic!("{problem}");
        }
    }
}
