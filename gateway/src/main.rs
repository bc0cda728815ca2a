//! `gateway`: the WebSocket server. `gateway` alone is a whole system: the broker runs embedded
//! and listens on `--broker-listen` (127.0.0.1:2206) so other gateways can join it. With
//! `--broker HOST:PORT` it uses a standalone broker instead. `gateway --help` lists every setting;
//! each also reads an environment variable, `GATEWAY_` and the flag's name. Security (link
//! secret, TLS, join tokens) is off by default, as in the original; docs/security.md says how
//! to deploy safely. [`ALIASES`] are the names of the previous release.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use broker::config::PhpListen;
use clap::Parser;
use gateway::bus::nats::NatsCarrier;
use gateway::bus::redis::RedisCarrier;
use gateway::bus::BusAddress;
use gateway::credentials::SecurityArgs;
use gateway::{Gateway, GatewayConfig};
use server_kit::admin_http::AdminAddr;
use server_kit::logging::LogFormat;
use server_kit::settings::{Aliases, Renamed};
use server_kit::shutdown::cancel_on_signals;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(name = "gateway", version, about = "Group push WebSocket server")]
struct Cli {
    /// TOML file of settings keyed by long flag name (docs/configuration.md); flags and
    /// environment variables override it.
    #[arg(
        long = "config",
        env = "GATEWAY_CONFIG",
        value_name = "FILE",
        help_heading = "Addresses and process"
    )]
    config_file: Option<PathBuf>,

    /// Address clients connect to (WebSocket).
    #[arg(
        long,
        env = "GATEWAY_LISTEN",
        default_value = "0.0.0.0:1234",
        help_heading = "Addresses and process"
    )]
    listen: SocketAddr,

    /// Share `--listen` with other gateway processes that also set it (`SO_REUSEPORT`): the
    /// kernel spreads new connections over them. They must be on one bus, so that each delivers
    /// what the others receive. Without it, a port another process holds stops startup.
    #[arg(
        long,
        env = "GATEWAY_REUSE_PORT",
        help_heading = "Addresses and process"
    )]
    reuse_port: bool,

    /// Admin HTTP address (`/healthz`, `/readyz`, `/metrics`, `/api/stats`, `/api/publish`), or
    /// `off`.
    #[arg(
        long,
        env = "GATEWAY_ADMIN",
        default_value = "127.0.0.1:9090",
        help_heading = "Admin API"
    )]
    admin: AdminAddr,

    #[command(flatten, next_help_heading = "Admin API")]
    admin_api: gateway::admin::AdminConfig,

    #[command(flatten)]
    config: GatewayConfig,

    /// What carries messages between gateways: `broker://HOST:PORT` (the built-in broker),
    /// `redis://HOST:PORT` (several comma-separated: shards), `redis+cluster://HOST:PORT,...`
    /// (Redis Cluster, sharded pub/sub), `nats://HOST:PORT,...`; `rediss://` and `tls://` for
    /// TLS. Unset: the broker runs embedded in this process (docs/deploy.md compares them).
    #[arg(
        long,
        env = "GATEWAY_BUS",
        help_heading = "Bus (between gateways)",
        conflicts_with = "broker"
    )]
    bus: Option<BusAddress>,

    /// The built-in broker at `HOST:PORT`: short for `--bus broker://HOST:PORT`.
    #[arg(long, env = "GATEWAY_BROKER", help_heading = "Bus (between gateways)")]
    broker: Option<String>,

    /// Where the embedded broker listens for other gateways. Ignored with `--broker` or `--bus`.
    #[arg(
        long,
        env = "GATEWAY_BROKER_LISTEN",
        default_value = "127.0.0.1:2206",
        help_heading = "Embedded broker"
    )]
    broker_listen: SocketAddr,

    #[command(flatten, next_help_heading = "Security")]
    security: SecurityArgs,

    /// Log format on stderr: `text`, human-readable lines (coloured only when stderr is a
    /// terminal), or `json`, one JSON object per line. `RUST_LOG` sets the level (default
    /// `info`).
    #[arg(
        long,
        env = "GATEWAY_LOG_FORMAT",
        value_enum,
        default_value_t,
        help_heading = "Logs"
    )]
    log_format: LogFormat,
}

/// The names of the previous release, accepted and logged as deprecated.
const ALIASES: Aliases = Aliases {
    env_prefix: "GATEWAY",
    flags: &[
        Renamed {
            old: "link-queue",
            new: "link-queue-frames",
        },
        Renamed {
            old: "link-timeout",
            new: "link-idle-timeout",
        },
    ],
    env_vars: &[Renamed {
        old: "LOG_FORMAT",
        new: "GATEWAY_LOG_FORMAT",
    }],
};

fn main() -> ExitCode {
    server_kit::exit::report(run())
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn run() -> anyhow::Result<()> {
    let cli: Cli = server_kit::start(
        &ALIASES,
        |c: &Cli| c.log_format,
        |c: &Cli| c.config_file.as_deref(),
    )?;
    cli.config.validate().context("invalid configuration")?;
    if let Some(addr) = cli.admin.0 {
        cli.admin_api
            .validate(addr)
            .context("invalid admin configuration")?;
    }
    let bus = match (cli.bus, cli.broker) {
        (Some(bus), _) => bus,
        (None, Some(addr)) => format!("broker://{addr}").parse()?,
        (None, None) => BusAddress::Embedded,
    };
    let security = cli
        .security
        .load(&bus, cli.broker_listen)
        .context("invalid security configuration")?;
    tracing::info!(
        link_secret = security.link.secret.is_some(),
        broker_tls = security.link.tls.is_some(),
        client_tls = security.clients.tls.is_some(),
        join_tokens = security.clients.join_tokens.is_some(),
        "security"
    );
    // PHP Channel clients of the embedded broker on a port of their own follow its link
    // listener's rule (as the `broker` binary's `--php-channel ADDR`).
    let php_listen = match (&bus, cli.config.embedded_broker.broker_php_channel) {
        (BusAddress::Embedded, PhpListen::Addr(addr)) => {
            server_kit::secret::check_exposure(
                addr,
                security.link.secret.is_some(),
                cli.security.insecure,
                "--broker-php-channel",
                "GATEWAY",
            )
            .context("invalid PHP Channel configuration")?;
            Some(addr)
        }
        (BusAddress::Embedded, PhpListen::Shared) if security.embedded_broker_tls.is_some() => {
            tracing::warn!("PHP Channel clients are not served: the embedded broker's listener speaks TLS (give them their own port with --broker-php-channel ADDR)");
            None
        }
        _ => None,
    };

    // Every address is bound before anything is announced or started: a taken port stops the
    // gateway before it says it listens anywhere.
    let broker_listener = match bus {
        BusAddress::Embedded => Some(TcpListener::bind(cli.broker_listen).await.with_context(
            || {
                format!(
                    "cannot listen on {} (--broker-listen, the embedded broker)",
                    cli.broker_listen
                )
            },
        )?),
        _ => None,
    };
    let php_listener = match php_listen {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (--broker-php-channel, the embedded broker)")
        })?),
        None => None,
    };
    let listener = gateway::bind_client_listener(cli.listen, cli.reuse_port)
        .with_context(|| format!("cannot listen on {} (--listen)", cli.listen))?;
    let admin_listener = match cli.admin.0 {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (--admin; `--admin off` turns it off)")
        })?),
        None => None,
    };

    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    let builder = Gateway::builder(cli.config).security(security);
    tracing::info!(bus = %bus, carrier = bus.carrier(), "bus");
    let builder = match bus {
        BusAddress::Broker(addr) => builder.broker(addr),
        BusAddress::Nats(servers) => {
            let carrier = NatsCarrier::new(&servers, builder.config())?;
            builder.bus(carrier)
        }
        BusAddress::Redis(_) | BusAddress::RedisCluster(_) => {
            let carrier = RedisCarrier::new(&bus, builder.config())?;
            builder.bus(carrier)
        }
        BusAddress::Embedded => {
            let listener = broker_listener.context("the embedded broker's listener")?;
            tracing::info!(addr = %listener.local_addr()?, "embedded broker listening");
            let builder = builder.embedded_broker(listener);
            match php_listener {
                Some(php_listener) => {
                    tracing::info!(addr = %php_listener.local_addr()?, "PHP Channel listening");
                    builder.embedded_broker_php(php_listener)
                }
                None => builder,
            }
        }
    };
    let gateway = builder.start(shutdown.clone())?;
    tracing::info!(addr = %listener.local_addr()?, reuse_port = cli.reuse_port, "gateway listening");

    let admin = match admin_listener {
        Some(admin_listener) => {
            let addr = admin_listener.local_addr()?;
            tracing::info!(%addr, "admin listening");
            tracing::info!(url = %format!("http://{addr}/"), "demo page");
            Some(tokio::spawn(gateway::admin::serve(
                gateway.clone(),
                cli.admin_api,
                admin_listener,
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
        server_kit::docs_check::assert_documented("gateway", "Gateway", |cli: Cli| Cli {
            config_file: None,
            ..cli
        });
    }

    fn parse(args: &[&str], env: &[(&str, &str)]) -> server_kit::settings::Parsed<Cli> {
        server_kit::docs_check::parse_with_env("gateway", args, env, &ALIASES)
    }

    /// Each old name (flag and environment variable) sets its new setting, and is reported.
    #[test]
    fn each_old_name_sets_its_new_setting() {
        for (args, env) in [
            (&["--link-queue", "77"][..], &[][..]),
            (&["--link-queue=77"], &[]),
            (&[], &[("GATEWAY_LINK_QUEUE", "77")]),
        ] {
            let parsed = parse(args, env);
            assert_eq!(parsed.cli.config.link_queue, 77, "{args:?} {env:?}");
            assert_eq!(parsed.deprecated.len(), 1);
        }
        for (args, env) in [
            (&["--link-timeout", "7s"][..], &[][..]),
            (&[], &[("GATEWAY_LINK_TIMEOUT", "7s")]),
        ] {
            let parsed = parse(args, env);
            assert_eq!(
                parsed.cli.config.link_timeout,
                std::time::Duration::from_secs(7)
            );
            assert_eq!(parsed.deprecated.len(), 1);
        }
        let parsed = parse(&[], &[("LOG_FORMAT", "json")]);
        assert_eq!(parsed.cli.log_format, LogFormat::Json);
        assert_eq!(parsed.deprecated[0].new, "GATEWAY_LOG_FORMAT");
        let parsed = parse(&["--log-format", "text"], &[("LOG_FORMAT", "json")]);
        assert_eq!(
            parsed.cli.log_format,
            LogFormat::Text,
            "a flag beats an old variable"
        );
    }

    #[test]
    fn every_embedded_broker_setting_reaches_the_broker() {
        let cli = parse(
            &[
                "--broker-handshake-timeout=1s",
                "--broker-link-queue-frames=2",
                "--broker-link-queue-bytes=3",
                "--broker-link-idle-timeout=4s",
                "--broker-max-channels-per-link=5",
                "--broker-max-channel-len=6",
                "--link-max-frame-size=7777",
                "--shutdown-timeout=8s",
                "--broker-php-channel=127.0.0.1:2207",
                "--broker-php-allow=10.0.0.5,10.0.0.6",
                "--broker-php-idle-timeout=9s",
                "--broker-php-queue-max-items=10",
                "--broker-php-max-depth=11",
                "--broker-php-max-elements=12",
            ],
            &[],
        )
        .cli;
        let broker = cli.config.embedded_broker_config();
        let s = std::time::Duration::from_secs;
        assert_eq!(broker.handshake_timeout, s(1));
        assert_eq!(broker.link_queue_frames, 2);
        assert_eq!(broker.link_queue_bytes, 3);
        assert_eq!(broker.link_idle_timeout, s(4));
        assert_eq!(broker.max_channels_per_link, 5);
        assert_eq!(broker.max_channel_len, 6);
        assert_eq!(broker.max_frame_size, 7777);
        assert_eq!(broker.shutdown_timeout, s(8));
        assert_eq!(
            broker.php.channel,
            PhpListen::Addr("127.0.0.1:2207".parse().expect("addr"))
        );
        assert_eq!(
            broker.php.allow,
            ["10.0.0.5", "10.0.0.6"].map(|ip| ip.parse::<std::net::IpAddr>().expect("ip"))
        );
        assert_eq!(broker.php.idle_timeout, s(9));
        assert_eq!(broker.php.queue_max_items, 10);
        assert_eq!(broker.php.max_depth, 11);
        assert_eq!(broker.php.max_elements, 12);
        for (setting, channel) in [("shared", PhpListen::Shared), ("off", PhpListen::Off)] {
            let cli = parse(&["--broker-php-channel", setting], &[]).cli;
            assert_eq!(cli.config.embedded_broker_config().php.channel, channel);
        }

        // Unset, they are the broker's defaults, but for a channel name as long as a group id's
        // cluster topic (its presence topic: 3 bytes more).
        let cli = parse(&["--max-group-id-len=2000"], &[]).cli;
        let broker = cli.config.embedded_broker_config();
        let defaults = broker::BrokerConfig::default();
        assert_eq!(broker.max_channel_len, 2003);
        assert_eq!(
            format!(
                "{:?}",
                broker::BrokerConfig {
                    max_channel_len: 1024,
                    ..broker
                }
            ),
            format!("{defaults:?}")
        );
    }
}
