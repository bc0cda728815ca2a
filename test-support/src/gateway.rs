//! A gateway library instance serving on port 0 in the test's process; stopped on drop.
//!
//! Its workers run on threads of their own (each with its own runtime); its bus, and the
//! embedded broker when there is one, run in the test's runtime.

use std::net::SocketAddr;

use anyhow::{Context, Result};
use gateway::stats::GatewaySnapshot;
use gateway::{Gateway, GatewayBuilder, GatewayConfig, GatewayError};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::ws::{Client, Connect};
use crate::{net, wait, RECV_TIMEOUT, STATS_TIMEOUT};

/// Serves `gateway`'s admin HTTP API on `127.0.0.1:0` until `shutdown`; its client.
pub async fn serve_admin(
    gateway: &Gateway,
    admin: gateway::admin::AdminConfig,
    shutdown: &CancellationToken,
) -> Result<crate::Admin> {
    let listener = net::listener().await?;
    let addr = listener.local_addr()?;
    tokio::spawn(gateway::admin::serve(
        gateway.clone(),
        admin,
        listener,
        shutdown.clone(),
    ));
    crate::Admin::new("gateway", addr)
}

/// The default configuration with `workers` workers (one makes every client share a worker;
/// several spread them, the first connection going to worker 0).
pub fn workers(workers: usize) -> GatewayConfig {
    GatewayConfig {
        workers: Some(workers),
        ..GatewayConfig::default()
    }
}

/// A gateway serving clients on `127.0.0.1:0`; cancelled on drop.
#[derive(Debug)]
pub struct TestGateway {
    pub gateway: Gateway,
    /// Where clients connect.
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    served: JoinHandle<Result<(), GatewayError>>,
}

impl TestGateway {
    /// A gateway with its own embedded broker (on port 0 too), once its link to it is up.
    pub async fn embedded(config: GatewayConfig) -> Result<TestGateway> {
        let broker = net::listener().await?;
        let gateway = TestGateway::start(Gateway::builder(config).embedded_broker(broker)).await?;
        gateway.wait_ready().await?;
        Ok(gateway)
    }

    /// Starts `builder` (its bus and security chosen by the caller) and serves it; returns once
    /// it serves, without waiting for the bus.
    pub async fn start(builder: GatewayBuilder) -> Result<TestGateway> {
        let shutdown = CancellationToken::new();
        let listener = net::listener().await?;
        let addr = listener.local_addr()?;
        let gateway = builder.start(shutdown.clone())?;
        let served = tokio::spawn({
            let gateway = gateway.clone();
            async move { gateway.serve(listener).await }
        });
        wait::wait_for_state(
            "the gateway serves",
            STATS_TIMEOUT,
            || gateway.ws_addr(),
            Option::is_some,
        )
        .await?;
        Ok(TestGateway {
            gateway,
            addr,
            shutdown,
            served,
        })
    }

    /// `ws://ADDR`.
    pub fn url(&self) -> String {
        format!("ws://{}", self.addr)
    }

    pub fn stats(&self) -> GatewaySnapshot {
        self.gateway.stats()
    }

    /// Polls the stats until `done` holds; returns them.
    pub async fn wait_stats(
        &self,
        what: &str,
        done: impl Fn(&GatewaySnapshot) -> bool,
    ) -> Result<GatewaySnapshot> {
        wait::wait_for_state(what, STATS_TIMEOUT, || self.gateway.stats(), done).await
    }

    /// Waits until messages flow to and from other gateways (the bus is up).
    pub async fn wait_ready(&self) -> Result<()> {
        self.wait_stats("the bus is up", |s| s.bus.up)
            .await
            .map(drop)
    }

    /// A client connection named `name`, to be set up ([`Connect`]).
    pub fn client(&self, name: impl Into<String>) -> Connect {
        Client::to(name, self.addr)
    }

    /// Connects a client named `name`.
    pub async fn connect(&self, name: impl Into<String>) -> Result<Client> {
        self.client(name).connect().await
    }

    /// Waits until `serve` returned (the shutdown was cancelled and the workers stopped).
    pub async fn stopped(&mut self) -> Result<()> {
        tokio::time::timeout(RECV_TIMEOUT, &mut self.served)
            .await
            .context("serve did not return in time")?
            .context("serve panicked")?
            .context("serve failed")
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
