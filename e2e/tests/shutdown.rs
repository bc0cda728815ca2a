//! Graceful shutdown on SIGTERM: clients get what was queued for them, then close code 1001.

use anyhow::{ensure, Result};
use e2e::{Broker, Gateway, GatewayConfig, EXIT_TIMEOUT, RECV_TIMEOUT, STARTUP_TIMEOUT};
use serde_json::{json, Value};

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

/// Messages queued for a client when SIGTERM arrives are written before its 1001: 1,000
/// messages (4 MB) published through the admin API to a member that has not read yet.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_sigterm_flushes_queued_messages_first() -> Result<()> {
    const N: usize = 1000;
    let mut gateway = Gateway::start(
        GatewayConfig::embedded("gateway")
            .arg("--outbound-queue-bytes")
            .arg((16 * 1024 * 1024).to_string())
            .arg("--api-max-body-size")
            .arg((16 * 1024 * 1024).to_string()),
    )
    .await?;
    let mut member = gateway.connect("member").await?;
    member.join("room").await?;

    let filler = "x".repeat(4000);
    let messages: Vec<String> = (0..N).map(|i| format!("{i:04}{filler}")).collect();
    let batch: Vec<Value> = messages
        .iter()
        .map(|m| json!({"group_id": "room", "message": m}))
        .collect();
    let response = reqwest::Client::builder()
        .no_proxy()
        .timeout(RECV_TIMEOUT)
        .build()?
        .post(format!("http://{}/api/publish", gateway.admin.addr()))
        .json(&batch)
        .send()
        .await?;
    ensure!(
        response.status() == 200,
        "publish answered {}",
        response.status()
    );

    gateway.process.terminate().await?;
    member.expect_streams(vec![messages]).await?;
    let code = member.expect_close(RECV_TIMEOUT).await?;
    ensure!(code == 1001, "expected close code 1001, got {code}");
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
        .wait_for_log("bus down", STARTUP_TIMEOUT)
        .await?;
    gateway.admin.wait_for_status("/readyz", 503).await?;
    broker.process.assert_no_panics()
}
