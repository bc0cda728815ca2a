//! PHP Channel clients (e2e/php/channel_client.php, run by `php`) on the broker's link port:
//! the Channel server's commands among PHP clients, and the `send_to_group` bridge both ways
//! with WebSocket members on two gateways; and on a gateway's embedded broker
//! (`--broker-php-channel`): on a port of its own, or refused.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e::{Broker, Gateway, GatewayConfig};
use serde_json::json;
use test_support::Client;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/php/channel_client.php");
const PHP_TIMEOUT: Duration = Duration::from_secs(60);

fn php(args: &[String]) -> Command {
    let mut command = Command::new("php");
    command.arg(SCRIPT).args(args).kill_on_drop(true);
    command
}

async fn run_php(args: &[String]) -> Result<String> {
    let output = tokio::time::timeout(PHP_TIMEOUT, php(args).output())
        .await
        .context("php timed out")?
        .context("cannot run php (install php-cli)")?;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    ensure!(
        output.status.success(),
        "php {args:?} failed: {}\n{stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

async fn cluster() -> Result<(Broker, Gateway, Gateway)> {
    let broker = Broker::start("broker").await?;
    let a = Gateway::start(GatewayConfig::with_broker("gateway-a", broker.addr).workers(2));
    let b = Gateway::start(GatewayConfig::with_broker("gateway-b", broker.addr).workers(2));
    let (a, b) = tokio::try_join!(a, b)?;
    Ok((broker, a, b))
}

async fn member(gateway: &Gateway, name: &str, group: &str) -> Result<Client> {
    let mut client = gateway.connect(name).await?;
    client
        .send_json(&json!({"cmd": "add_group", "group_id": group}))
        .await?;
    gateway.wait_for_subscriptions(1).await?;
    Ok(client)
}

fn args(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_publisher_reaches_members_on_two_gateways() -> Result<()> {
    let (broker, a, b) = cluster().await?;
    let mut on_a = member(&a, "a", "123").await?;
    let mut on_b = member(&b, "b", "123").await?;
    let addr = broker.addr.to_string();
    let data = json!({"group_id": 123, "message": "C'est le message"}).to_string();
    run_php(&args(&["publish", &addr, "send_to_group", &data])).await?;
    on_a.expect_text("C'est le message").await?;
    on_b.expect_text("C'est le message").await?;
    // Any other message value as its JSON, a string group id as the same group.
    let data = json!({"group_id": "123", "message": {"x": [1, true]}}).to_string();
    run_php(&args(&["publish", &addr, "send_to_group", &data])).await?;
    on_a.expect_text(r#"{"x":[1,true]}"#).await?;
    on_b.expect_text(r#"{"x":[1,true]}"#).await?;
    // Other events stay among PHP clients.
    let data = json!({"group_id": 123, "message": "no"}).to_string();
    run_php(&args(&["publish", &addr, "other_event", &data])).await?;
    on_a.expect_silence(Duration::from_millis(300)).await?;
    on_b.expect_silence(Duration::from_millis(300)).await?;
    for process in [&broker.process, &a.process, &b.process] {
        process.assert_no_panics()?;
    }
    Ok(())
}

async fn php_listener(
    addr: SocketAddr,
    count: usize,
) -> Result<(
    Child,
    tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
)> {
    let mut child = php(&args(&[
        "listen",
        &addr.to_string(),
        "send_to_group",
        &count.to_string(),
    ]))
    .stdout(Stdio::piped())
    .spawn()
    .context("cannot run php (install php-cli)")?;
    let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
    let ready = tokio::time::timeout(PHP_TIMEOUT, lines.next_line()).await??;
    ensure!(ready.as_deref() == Some("ready"), "php listener: {ready:?}");
    Ok((child, lines))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_send_reaches_php_subscriber_as_the_seeds_array() -> Result<()> {
    let (broker, a, b) = cluster().await?;
    let (mut child, mut lines) = php_listener(broker.addr, 2).await?;
    let mut on_b = member(&b, "b", "42").await?;
    let mut sender = a.connect("sender").await?;
    sender
        .send_json(&json!({"cmd": "send_to_group", "group_id": 42, "message": "hello"}))
        .await?;
    on_b.expect_text("hello").await?;
    let line = tokio::time::timeout(PHP_TIMEOUT, lines.next_line()).await??;
    let event: serde_json::Value = serde_json::from_str(line.as_deref().unwrap_or(""))?;
    ensure!(
        event
            == json!({"type": "event", "channel": "send_to_group", "data": {"group_id": "42", "message": "hello"}}),
        "{event}"
    );
    // A PHP publish on send_to_group reaches PHP subscribers once, and the members.
    let data = json!({"group_id": 42, "message": "from php"}).to_string();
    run_php(&args(&[
        "publish",
        &broker.addr.to_string(),
        "send_to_group",
        &data,
    ]))
    .await?;
    on_b.expect_text("from php").await?;
    let line = tokio::time::timeout(PHP_TIMEOUT, lines.next_line()).await??;
    let event: serde_json::Value = serde_json::from_str(line.as_deref().unwrap_or(""))?;
    ensure!(
        event["data"] == json!({"group_id": 42, "message": "from php"}),
        "{event}"
    );
    let status = tokio::time::timeout(PHP_TIMEOUT, child.wait()).await??;
    ensure!(status.success(), "php listener: {status}");
    for process in [&broker.process, &a.process, &b.process] {
        process.assert_no_panics()?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_commands_among_php_clients_and_malformed_frames() -> Result<()> {
    let (broker, a, b) = cluster().await?;
    let mut on_b = member(&b, "b", "g").await?;
    let out = run_php(&args(&["semantics", &broker.addr.to_string()])).await?;
    ensure!(out.trim_end().ends_with("ok"), "{out}");
    let stats = broker.admin.stats().await?;
    ensure!(e2e::stat(&stats, "/php_bad_frames") == Some(7), "{stats}");
    // Gateways were not harmed either.
    let mut sender = a.connect("sender").await?;
    sender
        .send_json(&json!({"cmd": "send_to_group", "group_id": "g", "message": "m"}))
        .await?;
    on_b.expect_text("m").await?;
    for process in [&broker.process, &a.process, &b.process] {
        process.assert_no_panics()?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_client_on_the_embedded_brokers_own_port_reaches_its_members() -> Result<()> {
    let gateway = Gateway::start(
        GatewayConfig::embedded("gateway")
            .workers(2)
            .arg("--broker-php-channel=127.0.0.1:0"),
    )
    .await?;
    let php_addr = gateway.php_channel_addr().await?;
    ensure!(
        Some(php_addr) != gateway.embedded_broker,
        "a port of its own"
    );
    let mut on_it = member(&gateway, "m", "123").await?;
    let data = json!({"group_id": 123, "message": "from php"}).to_string();
    run_php(&args(&[
        "publish",
        &php_addr.to_string(),
        "send_to_group",
        &data,
    ]))
    .await?;
    on_it.expect_text("from php").await?;
    let stats = gateway.admin.stats().await?;
    ensure!(
        e2e::stat(&stats, "/embedded_broker/php_bridged") == Some(1),
        "{stats}"
    );
    gateway.process.assert_no_panics()?;
    Ok(())
}

/// `serialize(['type' => 'publish', 'channels' => ['send_to_group'], 'data' => [...]])`, framed
/// as `Channel\Client` frames it (a 4-byte big-endian length that counts itself).
fn php_publish_frame(group: &str, message: &str) -> Vec<u8> {
    let body = format!(
        r#"a:3:{{s:4:"type";s:7:"publish";s:8:"channels";a:1:{{i:0;s:13:"send_to_group";}}s:4:"data";a:2:{{s:8:"group_id";s:{}:"{group}";s:7:"message";s:{}:"{message}";}}}}"#,
        group.len(),
        message.len()
    );
    let mut frame = u32::try_from(body.len() + 4)
        .expect("short frame")
        .to_be_bytes()
        .to_vec();
    frame.extend_from_slice(body.as_bytes());
    frame
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn php_channel_off_refuses_php_clients_on_the_embedded_brokers_port() -> Result<()> {
    let gateway = Gateway::start(
        GatewayConfig::embedded("gateway")
            .workers(2)
            .arg("--broker-php-channel=off")
            .arg("--broker-handshake-timeout=1s"),
    )
    .await?;
    let broker_addr = gateway.embedded_broker.context("embedded broker")?;
    let mut on_it = member(&gateway, "m", "123").await?;
    let mut php = tokio::net::TcpStream::connect(broker_addr).await?;
    php.write_all(&php_publish_frame("123", "from php")).await?;
    // Served as a gateway link that did not say hello: closed, and nothing is published.
    let mut received = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), php.read_to_end(&mut received))
        .await
        .context("the broker kept the PHP client")?
        .ok();
    ensure!(
        !String::from_utf8_lossy(&received).contains("\"event\""),
        "{received:?}"
    );
    on_it.expect_silence(Duration::from_millis(300)).await?;
    let stats = gateway.admin.stats().await?;
    ensure!(
        e2e::stat(&stats, "/embedded_broker/bad_frames") >= Some(1)
            && e2e::stat(&stats, "/embedded_broker/php_bridged") == Some(0),
        "{stats}"
    );
    gateway.process.assert_no_panics()?;
    Ok(())
}
