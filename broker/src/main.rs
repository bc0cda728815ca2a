//! `broker`: the standalone channel server.
//!
//! `broker --listen 127.0.0.1:2206` (the default). Listening where other hosts can reach it
//! needs a link secret: `broker --listen 0.0.0.0:2206 --link-secret-file /etc/push/link.secret`
//! (add `--tls-cert`/`--tls-key` for TLS), or `--insecure` on a trusted network.
//! `broker --help` lists every setting; each also reads an environment variable.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use broker::auth::SecurityArgs;
use broker::{Broker, BrokerConfig};
use clap::Parser;
use server_kit::listen::{bind_logged, serve_admin};
use server_kit::logging::{init_tracing, LogFormat};
use server_kit::settings::parse_cli;
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
    let cli: Cli = parse_cli()?;
    init_tracing(cli.log_format);
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
            let router = broker::admin::router(broker.clone());
            Some(tokio::spawn(serve_admin(
                admin_listener,
                router,
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
