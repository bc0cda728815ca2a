//! Starting the servers under test and reading their admin API.
//!
//! Every server listens on port 0; the bound addresses come from its readiness log events.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};

use crate::process::Process;
use crate::ws::Client;
use crate::{POLL_INTERVAL, STARTUP_TIMEOUT, STATS_TIMEOUT};

/// The time one admin HTTP request may take.
const HTTP_TIMEOUT: Duration = Duration::from_secs(5);

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

/// A number in a stats document, by JSON pointer (e.g. `/broker_link/subscriptions`).
pub fn stat(stats: &Value, pointer: &str) -> Option<u64> {
    stats.pointer(pointer)?.as_u64()
}

/// A server's admin HTTP endpoint.
#[derive(Debug, Clone)]
pub struct Admin {
    name: String,
    addr: SocketAddr,
    http: reqwest::Client,
}

impl Admin {
    fn new(name: &str, addr: SocketAddr) -> Result<Admin> {
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .no_proxy()
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Admin {
            name: name.to_owned(),
            addr,
            http,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET path`: the status code and the body.
    pub async fn get(&self, path: &str) -> Result<(u16, String)> {
        let url = format!("http://{}{path}", self.addr);
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .with_context(|| format!("{}: GET {url}", self.name))?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .with_context(|| format!("{}: reading the body of GET {url}", self.name))?;
        Ok((status, body))
    }

    /// `GET /api/stats`, which must answer 200 with a JSON object.
    pub async fn stats(&self) -> Result<Value> {
        let (status, body) = self.get("/api/stats").await?;
        if status != 200 {
            bail!("{}: GET /api/stats answered {status}: {body}", self.name);
        }
        let stats: Value = serde_json::from_str(&body)
            .with_context(|| format!("{}: /api/stats is not JSON: {body}", self.name))?;
        if !stats.is_object() {
            bail!("{}: /api/stats is not a JSON object: {body}", self.name);
        }
        Ok(stats)
    }

    /// Polls `/api/stats` until `pred` holds; returns the matching stats.
    pub async fn wait_for_stats(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = tokio::time::Instant::now() + STATS_TIMEOUT;
        loop {
            let last = match self.stats().await {
                Ok(stats) if pred(&stats) => return Ok(stats),
                Ok(stats) => stats.to_string(),
                Err(e) => format!("{e:#}"),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{}: timed out after {STATS_TIMEOUT:?} waiting for {what}; last stats: {last}",
                    self.name
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Polls `GET path` until it answers `status`.
    pub async fn wait_for_status(&self, path: &str, status: u16) -> Result<()> {
        let deadline = tokio::time::Instant::now() + STATS_TIMEOUT;
        loop {
            let last = match self.get(path).await {
                Ok((got, _)) if got == status => return Ok(()),
                Ok((got, body)) => format!("{got} {body}"),
                Err(e) => format!("{e:#}"),
            };
            if tokio::time::Instant::now() >= deadline {
                bail!(
                    "{}: timed out after {STATS_TIMEOUT:?} waiting for GET {path} to answer \
                     {status}; last answer: {last}",
                    self.name
                );
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
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
            "--listen",
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
#[derive(Debug, Clone, Copy)]
pub enum BrokerMode {
    /// Its own, in-process broker (`--broker-listen 127.0.0.1:0`).
    Embedded,
    /// A standalone broker (`--broker ADDR`).
    Standalone(SocketAddr),
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
        }
    }

    /// Four workers linked to the standalone broker at `broker`.
    pub fn with_broker(name: &str, broker: SocketAddr) -> GatewayConfig {
        GatewayConfig {
            broker: BrokerMode::Standalone(broker),
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

    /// Starts without waiting for the broker link, for a gateway whose link must not come up.
    pub fn without_waiting_for_the_link(mut self) -> GatewayConfig {
        self.wait_for_link = false;
        self
    }
}

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
    /// Starts a gateway and waits until it is ready: listening, admin listening, broker link up.
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
        match config.broker {
            BrokerMode::Embedded => args.extend(["--broker-listen".into(), "127.0.0.1:0".into()]),
            BrokerMode::Standalone(addr) => args.extend(["--broker".into(), addr.to_string()]),
        }
        args.extend(config.extra_args);
        let process = Process::spawn(&config.name, "gateway", &args)?;
        let addr = logged_addr(&process, "gateway listening").await?;
        let admin = Admin::new(
            &config.name,
            logged_addr(&process, "admin listening").await?,
        )?;
        let embedded_broker = match config.broker {
            BrokerMode::Embedded => Some(logged_addr(&process, "embedded broker listening").await?),
            BrokerMode::Standalone(_) => None,
        };
        if config.wait_for_link {
            process
                .wait_for_log("broker link up", STARTUP_TIMEOUT)
                .await?;
        }
        Ok(Gateway {
            process,
            addr,
            admin,
            embedded_broker,
        })
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
            .wait_for_stats(&format!("broker_link.subscriptions == {n}"), |s| {
                stat(s, "/broker_link/subscriptions") == Some(n)
            })
            .await
    }
}
