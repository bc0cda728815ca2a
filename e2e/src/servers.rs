//! Starting the servers under test and reading their admin API.
//!
//! Every server listens on port 0; the bound addresses come from its readiness log events.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use serde_json::{Map, Value};
use test_support::{Client, Process, STARTUP_TIMEOUT};

// Defined here before they moved to test-support: these paths still work.
pub use test_support::{stat, Admin};

/// Reads the socket address in field `field` of a log event.
fn field_addr(fields: &Map<String, Value>, field: &str) -> Result<SocketAddr> {
    let text = fields
        .get(field)
        .and_then(Value::as_str)
        .with_context(|| format!("log event has no string field {field:?}: {fields:?}"))?;
    text.parse()
        .with_context(|| format!("field {field:?} is not a socket address: {text:?}"))
}

async fn logged_addr(process: &Process, message: &str) -> Result<SocketAddr> {
    let fields = process.wait_for_log(message, STARTUP_TIMEOUT).await?;
    field_addr(&fields, "addr").with_context(|| format!("{}: {message:?}", process.name()))
}

/// A standalone `broker` process.
#[derive(Debug)]
pub struct Broker {
    pub process: Process,
    /// Where gateways connect.
    pub addr: SocketAddr,
    pub admin: Admin,
}

impl Broker {
    /// Starts a broker on a free port and waits until it listens.
    pub async fn start(name: &str) -> Result<Broker> {
        Broker::start_on(name, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// Starts a broker listening on `listen` (to restart one on the port it had).
    pub async fn start_on(name: &str, listen: SocketAddr) -> Result<Broker> {
        Broker::start_with(name, listen, &[]).await
    }

    /// Starts a broker listening on `listen` with more flags (`--link-secret-file`, ...).
    pub async fn start_with(name: &str, listen: SocketAddr, extra: &[String]) -> Result<Broker> {
        let mut args: Vec<String> = [
            "--broker-listen",
            &listen.to_string(),
            "--admin",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ]
        .map(String::from)
        .into();
        args.extend_from_slice(extra);
        let process = Process::spawn(name, "broker", &args)?;
        let addr = logged_addr(&process, "broker listening").await?;
        let admin = Admin::new(name, logged_addr(&process, "admin listening").await?)?;
        Ok(Broker {
            process,
            addr,
            admin,
        })
    }
}

/// Which broker a gateway uses.
#[derive(Debug, Clone)]
pub enum BrokerMode {
    /// Its own, in-process broker (`--broker-listen 127.0.0.1:0`).
    Embedded,
    /// A standalone broker (`--broker ADDR`).
    Standalone(SocketAddr),
    /// Any carrier by URL (`--bus URL`): Redis, NATS, ...
    Bus(String),
}

/// How to start a gateway.
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub name: String,
    pub workers: usize,
    pub broker: BrokerMode,
    pub extra_args: Vec<String>,
    /// Whether [`Gateway::start`] waits for the broker link to come up (it does by default).
    pub wait_for_link: bool,
    /// The gateway's `RUST_LOG`, when not the tests' default.
    pub log_filter: Option<String>,
}

impl GatewayConfig {
    /// Four workers and an embedded broker.
    pub fn embedded(name: &str) -> GatewayConfig {
        GatewayConfig {
            name: name.to_owned(),
            workers: 4,
            broker: BrokerMode::Embedded,
            extra_args: Vec::new(),
            wait_for_link: true,
            log_filter: None,
        }
    }

    /// Four workers linked to the standalone broker at `broker`.
    pub fn with_broker(name: &str, broker: SocketAddr) -> GatewayConfig {
        GatewayConfig {
            broker: BrokerMode::Standalone(broker),
            ..GatewayConfig::embedded(name)
        }
    }

    /// Four workers on the carrier at `url` (`--bus URL`).
    pub fn with_bus(name: &str, url: impl Into<String>) -> GatewayConfig {
        GatewayConfig {
            broker: BrokerMode::Bus(url.into()),
            ..GatewayConfig::embedded(name)
        }
    }

    pub fn workers(mut self, workers: usize) -> GatewayConfig {
        self.workers = workers;
        self
    }

    pub fn arg(mut self, arg: impl Into<String>) -> GatewayConfig {
        self.extra_args.push(arg.into());
        self
    }

    /// Runs the gateway with `RUST_LOG=filter` (e.g. to see `debug` lines of one module).
    pub fn log_filter(mut self, filter: &str) -> GatewayConfig {
        self.log_filter = Some(filter.to_owned());
        self
    }

    /// Starts without waiting for the broker link, for a gateway whose link must not come up.
    pub fn without_waiting_for_the_link(mut self) -> GatewayConfig {
        self.wait_for_link = false;
        self
    }
}

/// A gateway log filter that shows each failed attempt to reach the broker (`debug`: only the
/// first, then one per 30 s, are warnings).
pub const LINK_DEBUG: &str = "info,gateway::bus::broker_link=debug";

/// A `gateway` process.
#[derive(Debug)]
pub struct Gateway {
    pub process: Process,
    /// The WebSocket listener.
    pub addr: SocketAddr,
    pub admin: Admin,
    /// The embedded broker's listener, in [`BrokerMode::Embedded`].
    pub embedded_broker: Option<SocketAddr>,
}

impl Gateway {
    /// Starts a gateway and waits until it is ready: listening, admin listening, bus up.
    pub async fn start(config: GatewayConfig) -> Result<Gateway> {
        let mut args: Vec<String> = [
            "--listen",
            "127.0.0.1:0",
            "--workers",
            &config.workers.to_string(),
            "--admin",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ]
        .map(String::from)
        .into();
        match &config.broker {
            BrokerMode::Embedded => args.extend(["--broker-listen".into(), "127.0.0.1:0".into()]),
            BrokerMode::Standalone(addr) => args.extend(["--broker".into(), addr.to_string()]),
            BrokerMode::Bus(url) => args.extend(["--bus".into(), url.clone()]),
        }
        args.extend(config.extra_args);
        let mut command = test_support::process::command(test_support::process::binary("gateway")?);
        command.args(&args);
        if let Some(filter) = &config.log_filter {
            command.env("RUST_LOG", filter);
        }
        let process = Process::spawn_command(&config.name, command)?;
        let addr = logged_addr(&process, "gateway listening").await?;
        let admin = Admin::new(
            &config.name,
            logged_addr(&process, "admin listening").await?,
        )?;
        let embedded_broker = match config.broker {
            BrokerMode::Embedded => Some(logged_addr(&process, "embedded broker listening").await?),
            BrokerMode::Standalone(_) | BrokerMode::Bus(_) => None,
        };
        if config.wait_for_link {
            process.wait_for_log("bus up", STARTUP_TIMEOUT).await?;
        }
        Ok(Gateway {
            process,
            addr,
            admin,
            embedded_broker,
        })
    }

    /// The embedded broker's PHP Channel listener (`--broker-php-channel ADDR`), as logged.
    pub async fn php_channel_addr(&self) -> Result<SocketAddr> {
        logged_addr(&self.process, "PHP Channel listening").await
    }

    /// The WebSocket URL, as client-cli takes it.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    /// Opens a WebSocket connection named `name` (for messages).
    pub async fn connect(&self, name: impl Into<String>) -> Result<Client> {
        Client::connect(name, self.addr).await
    }

    /// Polls until the gateway is subscribed to `n` groups on its broker.
    pub async fn wait_for_subscriptions(&self, n: u64) -> Result<Value> {
        self.admin
            .wait_for_stats(&format!("bus.subscriptions == {n}"), |s| {
                stat(s, "/bus/subscriptions") == Some(n)
            })
            .await
    }
}
