//! `broker`: the standalone channel server.
//!
//! `broker --broker-listen 127.0.0.1:2206` (the default). Listening where other hosts can reach
//! it needs a link secret: `broker --broker-listen 0.0.0.0:2206 --link-secret-file
//! /etc/push/link.secret` (add `--broker-tls-cert`/`--broker-tls-key` for TLS), or `--insecure`
//! on a trusted network. `broker --help` lists every setting; each also reads an environment
//! variable, `BROKER_` and the flag's name. [`ALIASES`] are the names of the previous release.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use broker::auth::SecurityArgs;
use broker::config::PhpListen;
use broker::{Broker, BrokerConfig};
use clap::Parser;
use server_kit::admin_http::{self, AdminAddr};
use server_kit::logging::LogFormat;
use server_kit::settings::{Aliases, Renamed};
use server_kit::shutdown::cancel_on_signals;
use tokio::net::TcpListener;
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

    /// Address gateways connect to (the broker link). Loopback by default; any other address
    /// needs a link secret (or `--insecure`), since without one anyone who reaches the port can
    /// publish to any group.
    #[arg(
        long = "broker-listen",
        value_name = "BROKER_LISTEN",
        env = "BROKER_LISTEN",
        default_value = "127.0.0.1:2206"
    )]
    listen: SocketAddr,

    /// Admin HTTP address (`/healthz`, `/readyz`, `/metrics`, `/api/stats`), or `off`.
    #[arg(long, env = "BROKER_ADMIN", default_value = "off")]
    admin: AdminAddr,

    /// Most admin HTTP connections open at once (before any authentication); more are closed at
    /// once.
    #[arg(long, env = "BROKER_ADMIN_MAX_CONNECTIONS", default_value_t = admin_http::DEFAULT_ADMIN_MAX_CONNECTIONS)]
    admin_max_connections: usize,

    /// Time for an admin request's header to arrive; it also runs between the requests of a
    /// kept-alive connection, so it is the admin idle timeout too.
    #[arg(long, env = "BROKER_ADMIN_HEADER_TIMEOUT", default_value = "5s", value_parser = parse_admin_timeout)]
    admin_header_timeout: Duration,

    /// Time for a whole admin request: its body read and its answer.
    #[arg(long, env = "BROKER_ADMIN_REQUEST_TIMEOUT", default_value = "10s", value_parser = parse_admin_timeout)]
    admin_request_timeout: Duration,

    /// Log format on stderr: `text`, human-readable lines (coloured only when stderr is a
    /// terminal), or `json`, one JSON object per line. `RUST_LOG` sets the level (default
    /// `info`).
    #[arg(long, env = "BROKER_LOG_FORMAT", value_enum, default_value_t)]
    log_format: LogFormat,

    #[command(flatten)]
    security: SecurityArgs,

    #[command(flatten)]
    config: BrokerConfig,
}

/// The names of the previous release, accepted and logged as deprecated.
const ALIASES: Aliases = Aliases {
    env_prefix: "BROKER",
    flags: &[
        Renamed {
            old: "listen",
            new: "broker-listen",
        },
        Renamed {
            old: "handshake-timeout",
            new: "broker-handshake-timeout",
        },
        Renamed {
            old: "tls-cert",
            new: "broker-tls-cert",
        },
        Renamed {
            old: "tls-key",
            new: "broker-tls-key",
        },
        Renamed {
            old: "max-frame-size",
            new: "link-max-frame-size",
        },
        Renamed {
            old: "max-channels-per-link",
            new: "broker-max-channels-per-link",
        },
        Renamed {
            old: "max-channel-len",
            new: "broker-max-channel-len",
        },
    ],
    env_vars: &[Renamed {
        old: "LOG_FORMAT",
        new: "BROKER_LOG_FORMAT",
    }],
};

fn main() -> ExitCode {
    server_kit::exit::report(run())
}

#[tokio::main]
async fn run() -> anyhow::Result<()> {
    let cli: Cli = server_kit::start(
        &ALIASES,
        |c: &Cli| c.log_format,
        |c: &Cli| c.config_file.as_deref(),
    )?;
    let security = cli
        .security
        .load(cli.listen)
        .context("invalid link security configuration")?;
    tracing::info!(
        link_secret = security.link_secret.is_some(),
        tls = security.tls.is_some(),
        "link security"
    );
    anyhow::ensure!(
        cli.admin_max_connections > 0,
        "invalid configuration: admin-max-connections must be at least 1"
    );
    let php_listen = match cli.config.php.channel {
        PhpListen::Addr(addr) => {
            server_kit::secret::check_exposure(
                addr,
                security.link_secret.is_some(),
                cli.security.insecure,
                "--php-channel",
                "BROKER",
            )
            .context("invalid PHP Channel configuration")?;
            Some(addr)
        }
        PhpListen::Shared if security.tls.is_some() => {
            tracing::warn!("PHP Channel clients are not served: the link listener speaks TLS (give them their own port with --php-channel ADDR)");
            None
        }
        PhpListen::Shared | PhpListen::Off => None,
    };
    let broker = Broker::with_security(cli.config, security)?;

    // Both addresses are bound before either is announced.
    let listener = TcpListener::bind(cli.listen)
        .await
        .with_context(|| format!("cannot listen on {} (--broker-listen)", cli.listen))?;
    let admin_listener = match cli.admin.0 {
        Some(addr) => Some(TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen on {addr} (--admin; `--admin off` turns it off)")
        })?),
        None => None,
    };
    let php_listener = match php_listen {
        Some(addr) => Some(
            TcpListener::bind(addr)
                .await
                .with_context(|| format!("cannot listen on {addr} (--php-channel)"))?,
        ),
        None => None,
    };
    let shutdown = CancellationToken::new();
    cancel_on_signals(shutdown.clone());
    tracing::info!(addr = %listener.local_addr()?, "broker listening");
    let php = match php_listener {
        Some(php_listener) => {
            tracing::info!(addr = %php_listener.local_addr()?, "PHP Channel listening");
            let broker = broker.clone();
            let shutdown = shutdown.clone();
            Some(tokio::spawn(async move {
                broker.serve_php(php_listener, shutdown).await
            }))
        }
        None => None,
    };
    let admin = match admin_listener {
        Some(admin_listener) => {
            tracing::info!(addr = %admin_listener.local_addr()?, "admin listening");
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
    if let Some(php) = php {
        php.await.context("PHP Channel server panicked")??;
    }
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
        server_kit::docs_check::assert_documented("broker", "Broker", |cli: Cli| Cli {
            config_file: None,
            ..cli
        });
    }

    fn as_strs(args: &[String]) -> Vec<&str> {
        args.iter().map(String::as_str).collect()
    }

    fn parse(args: &[&str], env: &[(&str, &str)]) -> server_kit::settings::Parsed<Cli> {
        server_kit::docs_check::parse_with_env("broker", args, env, &ALIASES)
    }

    /// Each old name (flag, config-file key and environment variable) sets its new setting,
    /// and is reported once.
    #[test]
    fn each_old_name_sets_its_new_setting() {
        type Read = fn(&Cli) -> String;
        let cases: [(&str, &str, Read); 7] = [
            ("listen", "127.0.0.1:7", |c| c.listen.to_string()),
            ("handshake-timeout", "7s", |c| {
                format!("{:?}", c.config.handshake_timeout)
            }),
            ("tls-cert", "/c.pem", |c| {
                format!("{:?}", c.security.tls_cert)
            }),
            ("tls-key", "/k.pem", |c| format!("{:?}", c.security.tls_key)),
            ("max-frame-size", "7777", |c| {
                c.config.max_frame_size.to_string()
            }),
            ("max-channels-per-link", "77", |c| {
                c.config.max_channels_per_link.to_string()
            }),
            ("max-channel-len", "7", |c| {
                c.config.max_channel_len.to_string()
            }),
        ];
        for (old, value, read) in cases {
            let new = ALIASES
                .flags
                .iter()
                .find(|r| r.old == old)
                .expect("listed")
                .new;
            // tls-cert and tls-key need each other.
            let pair: &[&str] = match old {
                "tls-cert" => &["--broker-tls-key=/k.pem"],
                "tls-key" => &["--broker-tls-cert=/c.pem"],
                _ => &[],
            };
            let with = |flag: String| {
                let mut args = vec![flag];
                args.extend(pair.iter().map(|a| (*a).to_owned()));
                args
            };
            let new_args = with(format!("--{new}={value}"));
            let old_args = with(format!("--{old}={value}"));
            let expected = read(&parse(&as_strs(&new_args), &[]).cli);
            let by_flag = parse(&as_strs(&old_args), &[]);
            assert_eq!(read(&by_flag.cli), expected, "--{old}");
            assert_eq!(by_flag.deprecated.len(), 1, "--{old}");
            let old_env = format!("BROKER_{}", server_kit::settings::env_case(old));
            // Where only the flag gained the `broker-` prefix the variable kept its name: it is
            // the new flag's own (the docs test checks that each flag reads its variable).
            if server_kit::settings::env_var("BROKER", new) == old_env {
                continue;
            }
            let by_env = parse(pair, &[(&old_env, value)]);
            assert_eq!(read(&by_env.cli), expected, "{old_env}");
            assert_eq!(by_env.deprecated[0].old, old_env);
        }
        let by_env = parse(&[], &[("LOG_FORMAT", "json")]);
        assert_eq!(by_env.cli.log_format, LogFormat::Json);
        assert_eq!(by_env.deprecated[0].new, "BROKER_LOG_FORMAT");
    }

    #[test]
    fn admin_is_off_by_default_and_may_be_set_off() {
        assert_eq!(parse(&[], &[]).cli.admin.0, None);
        assert_eq!(parse(&["--admin", "off"], &[]).cli.admin.0, None);
        assert!(parse(&["--admin", "127.0.0.1:9091"], &[])
            .cli
            .admin
            .0
            .is_some());
    }
}
