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

/// A history publish waits for the subscriptions sent before it to be answered, but not past
/// `--history-timeout`: here the subscriber connection is not read (this gateway's workers take
/// nothing and its inbox is full), so the answer to a new subscription never comes; the
/// message is stored once the timeout has passed, not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_publish_waits_for_subscriptions_at_most_the_history_timeout() -> Result<()> {
    use gateway::bus::inbound::INBOX_MESSAGES;
    use gateway::bus::redis::history::HistoryKeys;
    use gateway::bus::HistoryPolicy;
    use protocol::GroupName;

    const HOLD: Duration = Duration::from_secs(1);
    let server = RedisServer::start("redis").await?;
    let url = server.url();
    let (slow, other) = (Arc::new(FakeNode::default()), Arc::new(FakeNode::default()));
    slow.want("a", true);
    slow.stall(true);
    let address: BusAddress = url.parse()?;
    let slow_config = GatewayConfig {
        history: vec!["h:=100,1m".parse().map_err(anyhow::Error::msg)?],
        history_timeout: HOLD,
        ..config("slow")
    };
    let slow_bus = RedisCarrier::new(&address, &slow_config)?
        .start(slow.clone(), CancellationToken::new())
        .bus;
    let other_bus = start(&url, "other", other.clone())?.bus;
    wait_for_subscribers(&server, "a", 1).await?;
    wait_for_status(&other_bus, "the other bus up", |s| s.up).await?;
    // More than the inbox holds: the slow gateway stops reading its subscriber connection.
    for i in 0..INBOX_MESSAGES + 100 {
        publish(&other_bus, "a", &format!("to a {i}"));
    }
    wait_for_status(&slow_bus, "the inbox full", |s| {
        s.messages_in >= INBOX_MESSAGES as u64
    })
    .await?;

    slow.want("h:1", true);
    wait_for_subscribers(&server, "h:1", 1).await?;
    let group = GroupName::parse("h:1", 64).expect("group");
    let policy = HistoryPolicy {
        size: 100,
        ttl: Duration::from_secs(60),
    };
    let sent = std::time::Instant::now();
    slow_bus.publish_history(&group, &bytes::Bytes::from_static(b"held"), policy);
    let keys = HistoryKeys::new("gp", "h:1");
    let stored = || async {
        let len: i64 = server
            .query(redis::cmd("XLEN").arg(keys.stream.as_slice()))
            .await?;
        anyhow::Ok(len)
    };
    tokio::time::sleep(HOLD / 3).await;
    ensure!(
        stored().await? == 0,
        "stored before the subscription was answered"
    );
    wait_until("the held message stored", STATS_TIMEOUT, || async {
        ensure!(stored().await? == 1);
        Ok(())
    })
    .await?;
    ensure!(sent.elapsed() >= HOLD, "stored after {:?}", sent.elapsed());
    // Sent by the deadline, not by a new connection; and the subscription's answer is still
    // unread (Redis counted only "a" for this connection).
    let status = slow_bus.status();
    ensure!(
        status.history_publishes == 1
            && status.history_publishes_dropped == 0
            && status.up
            && status.reconnects == 0
            && status.shards[0].subscriptions == 1,
        "{status:?}"
    );
    Ok(())
}

/// The history publish script stores a call sent again (after a lost connection) once: the
/// numbers a gateway gives its calls tell the server which it already stored, per gateway, and
/// a group's meta hash keeps at most `PUBLISHER_FIELDS` gateways' numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_publish_sent_again_is_stored_once() -> Result<()> {
    use bytes::BytesMut;
    use gateway::bus::redis::history::{
        new_epoch, publish_call, publisher_field, put_publish_id, HistoryKeys, PUBLISHER_FIELDS,
        PUBLISH_ID_ARGS, PUBLISH_SCRIPT,
    };
    use gateway::bus::HistoryPolicy;

    let server = RedisServer::start("redis").await?;
    let mut conn = server.connection().await?;
    let sha: String = redis::cmd("SCRIPT")
        .arg("LOAD")
        .arg(PUBLISH_SCRIPT)
        .query_async(&mut conn)
        .await?;
    let keys = HistoryKeys::new("gp", "h:1");
    let policy = HistoryPolicy {
        size: 100,
        ttl: Duration::from_secs(60),
    };
    // The bytes the carrier writes: head, tail, then the gateway's field and the call's number.
    let call = |gateway: u64, id: u64, text: &str| {
        let call = publish_call(
            &keys,
            b"H",
            text.as_bytes(),
            policy,
            &new_epoch(),
            b"PUBLISH",
        );
        let mut bytes = BytesMut::new();
        call.put_head(sha.as_bytes(), PUBLISH_ID_ARGS, &mut bytes);
        bytes.extend_from_slice(&call.tail);
        put_publish_id(&publisher_field(gateway), id, &mut bytes);
        bytes.freeze()
    };
    let mut raw = tokio::net::TcpStream::connect(("127.0.0.1", server.port)).await?;
    let mut replies = Vec::new();
    for (gateway, id, text) in [
        (1, 1, "a"),
        (1, 2, "b"),
        (1, 2, "b"), // sent again: stored already
        (2, 1, "c"), // another gateway's first
        (1, 1, "a"), // an older one again
        (1, 3, "d"),
    ] {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        raw.write_all(&call(gateway, id, text)).await?;
        let mut reply = [0u8; 64];
        let n = tokio::time::timeout(STATS_TIMEOUT, raw.read(&mut reply)).await??;
        replies.push(String::from_utf8_lossy(&reply[..n]).trim_end().to_owned());
    }
    ensure!(
        replies == [":1", ":2", ":0", ":3", ":0", ":4"],
        "offsets (0: stored already): {replies:?}"
    );
    /// An `XRANGE` entry: its id and its fields.
    type Entry = (String, Vec<(String, Vec<u8>)>);
    let stored: Vec<Entry> = redis::cmd("XRANGE")
        .arg(&keys.stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await?;
    let payloads: Vec<Vec<u8>> = stored
        .into_iter()
        .map(|(_, fields)| {
            fields
                .into_iter()
                .find(|(name, _)| name == "p")
                .map(|(_, p)| p)
                .unwrap_or_default()
        })
        .collect();
    ensure!(
        payloads == [b"a".to_vec(), b"b".to_vec(), b"c".to_vec(), b"d".to_vec()],
        "{payloads:?}"
    );
    // Many gateways: the meta hash keeps the epoch, the offset, and a bounded number of fields.
    for gateway in 10..10 + 2 * PUBLISHER_FIELDS as u64 {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        raw.write_all(&call(gateway, 1, "x")).await?;
        let mut reply = [0u8; 64];
        tokio::time::timeout(STATS_TIMEOUT, raw.read(&mut reply)).await??;
    }
    let fields: usize = redis::cmd("HLEN")
        .arg(&keys.meta)
        .query_async(&mut conn)
        .await?;
    ensure!(
        fields <= 2 + PUBLISHER_FIELDS + 1,
        "{fields} fields in the meta hash"
    );
    Ok(())
}
