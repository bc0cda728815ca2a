//! Graceful shutdown on SIGTERM.

use anyhow::{ensure, Result};
use e2e::{Broker, Gateway, GatewayConfig, EXIT_TIMEOUT, RECV_TIMEOUT, STARTUP_TIMEOUT};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_sigterm_closes_clients_with_1001() -> Result<()> {
    let mut gateway = Gateway::start(GatewayConfig::embedded("gateway")).await?;
    let mut member = gateway.connect("member").await?;
    member.join("room").await?;
    let mut idle = gateway.connect("idle").await?;

    gateway.process.terminate().await?;
    for client in [&mut member, &mut idle] {
        let code = client.expect_close(RECV_TIMEOUT).await?;
        ensure!(
            code == 1001,
            "{}: expected close code 1001, got {code}",
            client.name()
        );
    }
    let status = gateway.process.wait(EXIT_TIMEOUT).await?;
    ensure!(status.code() == Some(0), "the gateway exited with {status}");
    gateway.process.assert_no_panics()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_sigterm_exits_cleanly() -> Result<()> {
    let mut broker = Broker::start("broker").await?;
    let gateway = Gateway::start(GatewayConfig::with_broker("gateway", broker.addr)).await?;
    gateway.admin.wait_for_status("/readyz", 200).await?;

    broker.process.terminate().await?;
    let status = broker.process.wait(EXIT_TIMEOUT).await?;
    ensure!(status.code() == Some(0), "the broker exited with {status}");
    gateway
        .process
        .wait_for_log("broker link down", STARTUP_TIMEOUT)
        .await?;
    gateway.admin.wait_for_status("/readyz", 503).await?;
    broker.process.assert_no_panics()
}
