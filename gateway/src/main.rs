//! `gateway`: the WebSocket server. `gateway` alone is a whole system: the broker runs embedded
//! and listens on `--broker-listen` (127.0.0.1:2206) so other gateways can join it. With
//! `--broker HOST:PORT` it uses a standalone broker instead. `gateway --help` lists every setting;
//! each also reads an environment variable. Security (link secret, TLS, join tokens) is off by
//! default, as in the original; README's "Security" section says how to deploy safely.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use anyhow::Context;
use clap::Parser;
use gateway::credentials::SecurityArgs;
use gateway::{Gateway, GatewayConfig};
use server_kit::admin_http::serve_admin;
use server_kit::listen::bind_logged;
use server_kit::logging::{init_tracing, LogFormat};
use server_kit::settings::{parse_cli, Aliases, Parsed};
use server_kit::shutdown::cancel_on_signals;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "gateway", version, about = "Group push WebSocket server")]
struct Cli {
    /// TOML file of settings keyed by long flag name (docs/configuration.md); flags and
    /// environment variables override it.
    #[arg(long = "config", env = "GATEWAY_CONFIG", value_name = "FILE")]
    config_file: Option<PathBuf>,

    /// Address clients connect to (WebSocket). Bound with SO_REUSEPORT: several gateway processes
    /// may share it.
    #[arg(long, env = "GATEWAY_LISTEN", default_value = "0.0.0.0:1234")]
    listen: SocketAddr,

    /// A standalone broker to use ("host:port"). Without it the broker runs in this process.
    #[arg(long, env = "GATEWAY_BROKER")]
    broker: Option<String>,

    /// Where the embedded broker listens for other gateways (ignored with --broker).
    #[arg(long, env = "GATEWAY_BROKER_LISTEN", default_value = "127.0.0.1:2206")]
    broker_listen: SocketAddr,

    /// Admin HTTP address (/healthz, /readyz, /metrics, /api/stats, /api/publish), or "off".
    /// A non-loopback address requires --api-token.
    #[arg(long, env = "GATEWAY_ADMIN", default_value = "127.0.0.1:9090")]
    admin: AdminAddr,

    #[command(flatten)]
    admin_api: gateway::admin::AdminConfig,

    /// Log format on stderr. RUST_LOG sets the level (default info).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,

    #[command(flatten)]
    security: SecurityArgs,

    #[command(flatten)]
    config: GatewayConfig,
}

#[derive(Debug, Clone, Copy)]
struct AdminAddr(Option<SocketAddr>);

impl FromStr for AdminAddr {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(AdminAddr(None));
        }
        s.parse().map(|addr| AdminAddr(Some(addr)))
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let Parsed { cli, deprecated } = parse_cli::<Cli>(&Aliases::NONE)?;
    init_tracing(cli.log_format);
    for used in &deprecated {
        used.warn();
    }
    if let Some(path) = &cli.config_file {
        tracing::info!(path = %path.display(), "settings read from config file");
    }
    cli.config
        .validate()
        .map_err(anyhow::Error::msg)
        .context("invalid configuration")?;
    if let Some(addr) = cli.admin.0 {
        cli.admin_api
            .validate(addr)
            .map_err(anyhow::Error::msg)
            .context("invalid admin configuration")?;
    }
    let security = cli
        .security
        .load(cli.broker.as_deref(), cli.broker_listen)
        .context("invalid security configuration")?;
    tracing::info!(
        link_secret = security.link.secret.is_some(),
        broker_tls = security.link.tls.is_some(),
        client_tls = security.clients.tls.is_some(),
        join_tokens = security.clients.join_tokens.is_some(),
        "security"
    );
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());

    let builder = Gateway::builder(cli.config).security(security);
    let builder = match cli.broker {
        Some(addr) => builder.broker(addr),
        None => {
            let listener = bind_logged(cli.broker_listen, "embedded broker listening")
                .await
                .with_context(|| {
                    format!("cannot listen on {} (embedded broker)", cli.broker_listen)
                })?;
            builder.embedded_broker(listener)
        }
    };
    let listener = gateway::bind_reuseport(cli.listen)
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    tracing::info!(addr = %listener.local_addr()?, "gateway listening");
    let gateway = builder.start(shutdown.clone())?;

    let admin = match cli.admin.0 {
        Some(addr) => {
            let admin_listener = bind_logged(addr, "admin listening")
                .await
                .with_context(|| format!("cannot listen on {addr} (admin)"))?;
            let limits = cli.admin_api.http_limits();
            let router = gateway::admin::router(gateway.clone(), cli.admin_api);
            Some(tokio::spawn(serve_admin(
                admin_listener,
                router,
                limits,
                gateway.admin_http_stats(),
                shutdown.clone(),
            )))
        }
        None => None,
    };

    gateway.serve(listener).await?;
    if let Some(admin) = admin {
        admin.await.context("admin server panicked")??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// docs/gateway.example.toml parses, holds exactly the defaults and lists every setting, and
    /// docs/configuration.md has a row for every flag with its environment variable and default.
    #[test]
    fn example_config_and_reference_cover_every_setting() {
        let docs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
        let result =
            server_kit::docs_check::check_docs("gateway", "Gateway", &docs, |cli: Cli| Cli {
                config_file: None,
                ..cli
            });
        if let Err(problem) = result {
            panic!("{problem}");
        }
    }
}
