//! The Redis carrier alone against a real `redis-server`, with a stand-in for the gateway's
//! router ([`FakeNode`]). `e2e/tests/bus_redis.rs` runs whole gateways.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Result};
use bytes::Bytes;
use gateway::bus::interest::Subscriptions;
use gateway::bus::redis::RedisCarrier;
use gateway::bus::{Bus, BusAddress, BusStatus, Carrier, Node, RunningBus, SubscriptionChanges};
use gateway::GatewayConfig;
use parking_lot::Mutex;
use protocol::{GroupId, GroupName, Text};
use test_support::redis::RedisServer;
use test_support::{wait_for_state, wait_until, STATS_TIMEOUT};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// What the gateway's router does for a carrier, reduced to a set of wanted groups and a list
/// of what was delivered.
#[derive(Debug, Default)]
struct FakeNode {
    state: Mutex<(HashSet<GroupId>, Subscriptions)>,
    changed: Notify,
    delivered: Mutex<Vec<(String, String)>>,
    /// While set, deliveries wait (the gateway's workers full).
    stalled: AtomicBool,
    unstalled: Notify,
}

impl FakeNode {
    fn want(&self, group: &str, wanted: bool) {
        let group = GroupId::new(group, 1024).expect("group id");
        let mut state = self.state.lock();
        let changed = if wanted {
            state.0.insert(group.clone())
        } else {
            state.0.remove(&group)
        };
        if changed {
            state.1.record(&group, wanted);
            self.changed.notify_one();
        }
    }

    fn delivered(&self) -> Vec<(String, String)> {
        self.delivered.lock().clone()
    }

    fn stall(&self, stalled: bool) {
        self.stalled.store(stalled, Relaxed);
        self.unstalled.notify_waiters();
    }
}

impl Node for FakeNode {
    async fn deliver(&self, group: GroupName<'_>, payload: Text) {
        while self.stalled.load(Relaxed) {
            let unstalled = self.unstalled.notified();
            if !self.stalled.load(Relaxed) {
                break;
            }
            unstalled.await;
        }
        self.delivered
            .lock()
            .push((group.as_str().to_owned(), payload.as_str().to_owned()));
    }

    fn subscriptions(&self, full: bool) -> SubscriptionChanges {
        let mut state = self.state.lock();
        if !full {
            return state.1.take_changes();
        }
        state.1.start_full_sync();
        SubscriptionChanges {
            subscribe: state.0.iter().cloned().collect(),
            unsubscribe: Vec::new(),
        }
    }

    fn subscriptions_lost(&self) {
        self.state.lock().1.lost();
    }

    fn wanted(&self) -> usize {
        self.state.lock().0.len()
    }

    async fn subscriptions_changed(&self) {
        self.changed.notified().await;
    }
}

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

async fn wait_for_status(
    bus: &Arc<dyn Bus>,
    what: &str,
    done: impl Fn(&BusStatus) -> bool,
) -> Result<BusStatus> {
    wait_for_state(what, STATS_TIMEOUT, || bus.status(), done).await
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

fn publish(bus: &Arc<dyn Bus>, group: &str, text: &str) {
    let group = GroupName::parse(group, 1024).expect("group");
    let text = Text::new(Bytes::copy_from_slice(text.as_bytes())).expect("text");
    bus.publish(&group, &text);
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
