//! The Redis carrier alone against a real `redis-server`, with a stand-in for the gateway's
//! router ([`FakeNode`]). `e2e/tests/bus_redis.rs` runs whole gateways.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Result};
use gateway::bus::redis::RedisCarrier;
use gateway::bus::{BusAddress, Carrier, RunningBus};
use gateway::GatewayConfig;
use test_support::fake_node::{publish, wait_for_status, FakeNode};
use test_support::redis::RedisServer;
use test_support::{wait_until, STATS_TIMEOUT};
use tokio_util::sync::CancellationToken;

/// Short heartbeats, so that a stalled connection task would be found silent within the test.
fn config(name: &str) -> GatewayConfig {
    GatewayConfig {
        node_name: Some(name.to_owned()),
        link_ping_interval: Duration::from_millis(100),
        link_timeout: Duration::from_millis(500),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(500),
        ..GatewayConfig::default()
    }
}

fn start(url: &str, name: &str, node: Arc<FakeNode>) -> Result<RunningBus> {
    let address: BusAddress = url.parse()?;
    Ok(RedisCarrier::new(&address, &config(name))?.start(node, CancellationToken::new()))
}

async fn wait_for_subscribers(server: &RedisServer, group: &str, n: i64) -> Result<()> {
    let channel = format!("gp:{group}");
    wait_until(
        &format!("{n} subscribers of {channel}"),
        STATS_TIMEOUT,
        || async {
            let found = server.numsub(&[channel.as_bytes()]).await?;
            ensure!(found == [n], "{found:?}");
            Ok(())
        },
    )
    .await
}

/// While this gateway's workers take nothing, its publishes, subscription changes and
/// heartbeats still go: delivery waits in its own task, and the connection task goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_worker_blocks_neither_publishes_nor_heartbeats() -> Result<()> {
    let server = RedisServer::start("redis").await?;
    let url = server.url();
    let (slow, other) = (Arc::new(FakeNode::default()), Arc::new(FakeNode::default()));
    slow.want("a", true);
    other.want("b", true);
    slow.stall(true);
    let slow_bus = start(&url, "slow", slow.clone())?.bus;
    let other_bus = start(&url, "other", other.clone())?.bus;
    wait_for_subscribers(&server, "a", 1).await?;
    wait_for_subscribers(&server, "b", 1).await?;
    wait_for_status(&other_bus, "the other bus up", |s| s.up).await?;

    for i in 0..5 {
        publish(&other_bus, "a", &format!("to a {i}"));
    }
    wait_for_status(&slow_bus, "all five read while none is delivered", |s| {
        s.messages_in == 5
    })
    .await?;
    publish(&slow_bus, "b", "from the slow one");
    wait_until(
        "the slow gateway's publish delivered",
        STATS_TIMEOUT,
        || async {
            ensure!(other.delivered() == [("b".into(), "from the slow one".into())]);
            Ok(())
        },
    )
    .await?;
    slow.want("c", true);
    wait_for_subscribers(&server, "c", 1).await?;
    // Several idle timeouts: the heartbeats are answered, nothing is lost.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = slow_bus.status();
    ensure!(
        status.up && status.reconnects == 0 && status.shards[0].backlog_bytes.is_some(),
        "{status:?}"
    );
    ensure!(slow.delivered().is_empty());

    slow.stall(false);
    let expected: Vec<(String, String)> =
        (0..5).map(|i| ("a".into(), format!("to a {i}"))).collect();
    wait_until("the five delivered in order", STATS_TIMEOUT, || async {
        ensure!(slow.delivered() == expected, "{:?}", slow.delivered());
        Ok(())
    })
    .await
}
