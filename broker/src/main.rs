//! `broker`: the standalone channel server.
//!
//! `broker --listen 127.0.0.1:2206` (the default; `--listen 0.0.0.0:2206` opens it to other hosts).
//! `broker --help` lists every setting; each also reads an environment variable.

use std::net::SocketAddr;

use anyhow::Context;
use broker::ops::{self, LogFormat};
use broker::{Broker, BrokerConfig};
use clap::Parser;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "broker",
    version,
    about = "Channel server: relays group messages between gateways"
)]
struct Cli {
    /// Address the broker link listens on. Loopback by default: anyone who reaches this port can
    /// publish to any group.
    #[arg(long, env = "BROKER_LISTEN", default_value = "127.0.0.1:2206")]
    listen: SocketAddr,

    /// Address of the admin HTTP server (/healthz, /readyz, /api/stats). Off unless given.
    #[arg(long, env = "BROKER_ADMIN")]
    admin: Option<SocketAddr>,

    /// Log format on stderr. RUST_LOG sets the level (default info).
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,

    #[command(flatten)]
    config: BrokerConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    ops::init_tracing(cli.log_format);
    let broker = Broker::new(cli.config)?;
    let shutdown = CancellationToken::new();
    ops::cancel_on_signals(shutdown.clone());

    let listener = ops::bind_logged(cli.listen, "broker listening")
        .await
        .with_context(|| format!("cannot listen on {}", cli.listen))?;
    let admin = match cli.admin {
        Some(addr) => {
            let admin_listener = ops::bind_logged(addr, "admin listening")
                .await
                .with_context(|| format!("cannot listen on {addr} (admin)"))?;
            let router = broker::admin::router(broker.clone());
            Some(tokio::spawn(ops::serve_admin(
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
