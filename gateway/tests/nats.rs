//! The NATS carrier alone against a real `nats-server`, with a stand-in for the gateway's
//! router ([`FakeNode`]): subscriptions follow the wanted groups through a server restart, and
//! what arrives is checked and counted. `e2e/tests/bus_nats.rs` runs whole gateways.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use bytes::Bytes;
use gateway::bus::inbound::INBOX_MESSAGES;
use gateway::bus::nats::subject::group_subject;
use gateway::bus::nats::NatsCarrier;
use gateway::bus::{BusAddress, Carrier, RunningBus};
use gateway::GatewayConfig;
use protocol::GroupName;
use test_support::fake_node::{wait_for_status, FakeNode};
use test_support::nats::NatsServer;
use test_support::{wait_for_state, wait_until, TempFile, STATS_TIMEOUT};
use tokio_util::sync::CancellationToken;

fn config(name: &str) -> GatewayConfig {
    GatewayConfig {
        node_name: Some(name.to_owned()),
        ..GatewayConfig::default()
    }
}

fn start(url: &str, config: &GatewayConfig, node: Arc<FakeNode>) -> Result<RunningBus> {
    let BusAddress::Nats(servers) = url.parse()? else {
        anyhow::bail!("{url} is not a NATS address")
    };
    Ok(NatsCarrier::new(&servers, config)?.start(node, CancellationToken::new()))
}

/// Waits until the server holds exactly `groups` for the client `name`.
async fn wait_for_engine(server: &NatsServer, name: &str, groups: &[&str]) -> Result<()> {
    let expected: BTreeSet<String> = groups.iter().map(|g| group_subject("gp", g)).collect();
    wait_until(
        &format!("the server holds {groups:?} for {name}"),
        STATS_TIMEOUT,
        || async {
            let subjects = server
                .subscriptions()
                .await?
                .remove(name)
                .unwrap_or_default();
            ensure!(subjects == expected, "{subjects:?}");
            Ok(())
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_follow_the_node_through_a_server_restart() -> Result<()> {
    let mut server = NatsServer::start("nats").await?;
    let port = server.port;
    let node = Arc::new(FakeNode::default());
    node.want("before-start", true);
    let running = start(&server.url(), &config("carrier"), node.clone())?;
    let bus = running.bus;
    wait_for_status(&bus, "up", |s| s.up && s.subscriptions == 1).await?;
    wait_for_engine(&server, "carrier", &["before-start"]).await?;

    for group in ["a", "a.b", "*"] {
        node.want(group, true);
    }
    node.want("before-start", false);
    wait_for_engine(&server, "carrier", &["a", "a.b", "*"]).await?;

    // While the server is away: one group left, one joined, one joined and left.
    server.kill().await?;
    wait_for_status(&bus, "down", |s| !s.up).await?;
    node.want("a", false);
    node.want("new", true);
    node.want("gone", true);
    node.want("gone", false);
    let server = NatsServer::start_on("nats (restarted)", port).await?;
    let status = wait_for_status(&bus, "up again", |s| s.up && s.reconnects == 1).await?;
    wait_for_engine(&server, "carrier", &["a.b", "*", "new"]).await?;
    ensure!(status.subscriptions == 3, "{status:?}");
    ensure!(
        status.carrier == "nats" && status.shards.len() == 1,
        "{status:?}"
    );
    ensure!(
        status.shards[0].address == server.url(),
        "{:?}",
        status.shards
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_arrives_is_checked_and_counted() -> Result<()> {
    let server = NatsServer::start("nats").await?;
    let (a, b) = (Arc::new(FakeNode::default()), Arc::new(FakeNode::default()));
    a.want("room", true);
    b.want("room", true);
    let small = GatewayConfig {
        max_message_size: 8,
        ..config("b")
    };
    let bus_a = start(&server.url(), &config("a"), a.clone())?.bus;
    let bus_b = start(&server.url(), &small, b.clone())?.bus;
    for bus in [&bus_a, &bus_b] {
        wait_for_status(bus, "up", |s| s.up && s.subscriptions == 1).await?;
    }
    wait_for_engine(&server, "a", &["room"]).await?;
    wait_for_engine(&server, "b", &["room"]).await?;

    let room = GroupName::parse("room", 64)?;
    for text in ["hello", "far too long for b"] {
        bus_a.publish(&room, &Bytes::from(text));
    }
    // Not an envelope: from some other program on the same server.
    let raw = async_nats::connect(server.url()).await?;
    raw.publish(group_subject("gp", "room"), Bytes::from_static(b"raw"))
        .await?;
    raw.flush().await?;

    let status = wait_for_status(&bus_b, "three messages in", |s| s.messages_in == 3).await?;
    ensure!(
        status.messages_too_large == 1 && status.messages_invalid == 1,
        "{status:?}"
    );
    wait_for_state(
        "b delivered hello",
        STATS_TIMEOUT,
        || b.delivered(),
        |d| !d.is_empty(),
    )
    .await?;
    ensure!(
        b.delivered() == [("room".to_owned(), "hello".to_owned())],
        "{:?}",
        b.delivered()
    );
    // a got neither its own publishes (no echo) nor anything it could use but the raw one.
    let status_a = wait_for_status(&bus_a, "a saw the raw message", |s| s.messages_in == 1).await?;
    ensure!(
        status_a.messages_invalid == 1 && status_a.echoes_dropped == 0 && status_a.publishes == 2,
        "{status_a:?}"
    );
    ensure!(a.delivered().is_empty(), "{:?}", a.delivered());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_starts_without_its_server_and_connects_once_there() -> Result<()> {
    let port = test_support::net::refused_addr().await?.port();
    let node = Arc::new(FakeNode::default());
    node.want("g", true);
    let bus = start(&format!("nats://127.0.0.1:{port}"), &config("late"), node)?.bus;
    let status = wait_for_status(&bus, "an error reported", |s| s.last_error.is_some()).await?;
    ensure!(!status.up, "{status:?}");
    // Down: a publish is counted and dropped, not queued.
    bus.publish(&GroupName::parse("g", 64)?, &Bytes::from("lost"));
    let status = bus.status();
    ensure!(
        status.publishes == 1 && status.publishes_dropped == 1,
        "{status:?}"
    );
    let server = NatsServer::start_on("nats (late)", port).await?;
    wait_for_status(&bus, "up", |s| s.up && s.subscriptions == 1).await?;
    wait_for_engine(&server, "late", &["g"]).await?;
    Ok(())
}

/// A server that stops answering (SIGSTOP: the connection is given up after unanswered
/// pings) and is then killed, while groups come and go and publishes keep coming. The
/// client's command channel fills while the server is stalled and is not drained while the
/// client reconnects; yet the carrier reports the bus down within a bounded time, drops and
/// counts what is published meanwhile (none of it reaches the other gateway after the
/// restart), and once the server is back holds every wanted group exactly once and delivers
/// again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_under_load_is_reported_at_once_and_recovered() -> Result<()> {
    const CHURN: usize = 300;
    let mut server = NatsServer::start("nats").await?;
    let port = server.port;
    let (a, b) = (Arc::new(FakeNode::default()), Arc::new(FakeNode::default()));
    a.want("room", true);
    b.want("room", true);
    let fast_pings = GatewayConfig {
        link_ping_interval: Duration::from_millis(250),
        link_connect_timeout: Duration::from_millis(500),
        ..config("a")
    };
    let bus_a = start(&server.url(), &fast_pings, a.clone())?.bus;
    let bus_b = start(&server.url(), &config("b"), b.clone())?.bus;
    wait_for_status(&bus_a, "a up", |s| s.up && s.subscriptions == 1).await?;
    wait_for_status(&bus_b, "b up", |s| s.up && s.subscriptions == 1).await?;
    wait_for_engine(&server, "b", &["room"]).await?;

    // The load: members joining and leaving groups of a, and a publishing (to a group no one
    // has members of, so that b does not keep it all).
    let stop = Arc::new(AtomicBool::new(false));
    let churn = tokio::spawn({
        let (a, stop) = (a.clone(), stop.clone());
        async move {
            let mut i = 0usize;
            while !stop.load(Relaxed) {
                a.want(&format!("c{}", i % CHURN), (i / CHURN) % 2 == 0);
                i += 1;
                if i % 20 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    });
    let publisher = tokio::spawn({
        let (bus_a, stop) = (bus_a.clone(), stop.clone());
        async move {
            let load = GroupName::parse("load", 64).expect("group");
            let text = Bytes::from(vec![b'x'; 1024]);
            let mut i = 0usize;
            while !stop.load(Relaxed) {
                bus_a.publish(&load, &text);
                i += 1;
                if i % 50 == 0 {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;

    server.process.signal("STOP").await?;
    let stalled = Instant::now();
    // Given up after two unanswered pings (about 0.75 s), reported down soon after.
    wait_for_state(
        "a down",
        Duration::from_secs(3),
        || bus_a.status(),
        |s| !s.up,
    )
    .await?;
    eprintln!("a down {:?} after the server stalled", stalled.elapsed());
    server.kill().await?;

    // Published while down: dropped and counted at once.
    let room = GroupName::parse("room", 64)?;
    let before = bus_a.status().publishes_dropped;
    for _ in 0..1000 {
        bus_a.publish(&room, &Bytes::from("during"));
    }
    let status = bus_a.status();
    ensure!(
        !status.up && status.publishes_dropped >= before + 1000,
        "{status:?}"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
    ensure!(!bus_a.status().up, "up again: {:?}", bus_a.status());

    let server = NatsServer::start_on("nats (restarted)", port).await?;
    wait_for_status(&bus_a, "a up again", |s| s.up).await?;
    wait_for_status(&bus_b, "b up again", |s| s.up && s.reconnects == 1).await?;
    // The load goes on a while against the new server, then stops.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop.store(true, Relaxed);
    churn.await?;
    publisher.await?;

    let mut wanted: Vec<String> = a
        .wanted_groups()
        .iter()
        .map(|g| group_subject("gp", g))
        .collect();
    wanted.sort();
    wait_until("a holds each wanted group once", STATS_TIMEOUT, || async {
        let held = server
            .subscription_lists()
            .await?
            .remove("a")
            .unwrap_or_default();
        ensure!(
            held == wanted,
            "{} held, {} wanted; {} held twice, {} not wanted",
            held.len(),
            wanted.len(),
            held.windows(2).filter(|w| w[0] == w[1]).count(),
            held.iter().filter(|s| !wanted.contains(s)).count(),
        );
        Ok(())
    })
    .await?;
    wait_for_engine(&server, "b", &["room"]).await?;
    ensure!(
        bus_a.status().subscriptions == wanted.len() as u64,
        "{:?}",
        bus_a.status()
    );

    // Delivery resumes, and nothing published during the outage came through.
    bus_a.publish(&room, &Bytes::from("after"));
    wait_for_state(
        "b delivered the message published after the restart",
        STATS_TIMEOUT,
        || b.delivered(),
        |d| d.iter().any(|(_, text)| text == "after"),
    )
    .await?;
    let late = b.delivered().iter().filter(|(_, t)| t == "during").count();
    ensure!(
        late == 0,
        "{late} messages published during the outage delivered"
    );
    Ok(())
}

/// A server with users: the carrier authenticates with the user and password of its URL, and
/// a subscription the user is not allowed is counted as refused while the others work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_the_user_may_not_make_is_counted_as_refused() -> Result<()> {
    let conf = TempFile::new(
        "nats.conf",
        r#"authorization {
  users = [
    { user: gw, password: "s3cr3t", permissions: { subscribe: { deny: ["gp.g.secret"] } } }
  ]
}
"#,
    )?;
    let server =
        NatsServer::start_with("nats (users)", None, &["-c".into(), conf.arg()?.into()]).await?;
    let node = Arc::new(FakeNode::default());
    node.want("open", true);
    let url = format!("nats://gw:s3cr3t@127.0.0.1:{}", server.port);
    let bus = start(&url, &config("gw"), node.clone())?.bus;
    wait_for_status(&bus, "up", |s| s.up && s.subscriptions == 1).await?;
    wait_for_engine(&server, "gw", &["open"]).await?;
    node.want("secret", true);
    let status = wait_for_status(&bus, "the refusal counted", |s| {
        s.subscriptions_refused == 1
    })
    .await?;
    ensure!(status.up, "{status:?}");
    wait_for_engine(&server, "gw", &["open"]).await?;
    Ok(())
}

/// The resident memory of this process, in bytes (Linux).
fn resident_bytes() -> Result<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm")?;
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("unexpected /proc/self/statm: {statm:?}"))?;
    Ok(pages * 4096)
}

/// What a subscription costs this process (the figure in the carrier's documentation), and
/// that tens of thousands come and go: all on the server, then none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_subscriptions_come_and_go() -> Result<()> {
    const GROUPS: usize = 20_000;
    let server = NatsServer::start("nats").await?;
    let node = Arc::new(FakeNode::default());
    let groups: Vec<String> = (0..GROUPS).map(|i| format!("group-{i}")).collect();
    let before = resident_bytes()?;
    for group in &groups {
        node.want(group, true);
    }
    let bus = start(&server.url(), &config("many"), node.clone())?.bus;
    wait_for_status(&bus, "every group subscribed", |s| {
        s.up && s.subscriptions == GROUPS as u64
    })
    .await?;
    wait_until("the server holds every group", STATS_TIMEOUT, || async {
        let held = server
            .subscriptions()
            .await?
            .remove("many")
            .unwrap_or_default();
        ensure!(held.len() == GROUPS, "{} held", held.len());
        Ok(())
    })
    .await?;
    let per_subscription = resident_bytes()?.saturating_sub(before) / GROUPS as u64;
    eprintln!("NATS carrier: about {per_subscription} bytes of this process per subscription");
    ensure!(
        per_subscription < 32 * 1024,
        "{per_subscription} bytes per subscription"
    );

    for group in &groups {
        node.want(group, false);
    }
    wait_for_status(&bus, "no group subscribed", |s| s.subscriptions == 0).await?;
    wait_for_engine(&server, "many", &[]).await?;
    Ok(())
}

/// A gateway whose workers do not take what arrives: the carrier keeps `INBOX_MESSAGES` for
/// them, drops the rest and counts each; the connection stays, and what was kept is delivered,
/// in order, once the workers take it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_gateway_counts_what_it_drops() -> Result<()> {
    const SENT: u64 = 6000;
    const BURST: u64 = 500;
    let server = NatsServer::start("nats").await?;
    let (a, b) = (Arc::new(FakeNode::default()), Arc::new(FakeNode::default()));
    b.want("room", true);
    b.stall(true);
    let bus_a = start(&server.url(), &config("a"), a)?.bus;
    let bus_b = start(&server.url(), &config("b"), b.clone())?.bus;
    wait_for_status(&bus_a, "a up", |s| s.up).await?;
    wait_for_status(&bus_b, "b up", |s| s.up && s.subscriptions == 1).await?;
    wait_for_engine(&server, "b", &["room"]).await?;

    // In bursts smaller than a subscription's queue in the client, so that only the carrier's
    // inbox overflows (a single burst of thousands can overflow the client's first, whose
    // slow-consumer events are counted too, but not always all of them).
    let room = GroupName::parse("room", 64)?;
    for burst in 0..SENT / BURST {
        for n in burst * BURST..(burst + 1) * BURST {
            bus_a.publish(&room, &Bytes::from(n.to_string()));
        }
        let read = (burst + 1) * BURST;
        wait_for_status(&bus_b, "the burst read", |s| s.messages_in == read).await?;
    }
    let status = bus_b.status();
    let kept = INBOX_MESSAGES as u64 + 1; // the inbox, and the one the workers hold
    ensure!(
        status.up && status.slow_consumer == SENT - kept && status.publishes_dropped == 0,
        "{status:?}"
    );

    b.stall(false);
    wait_for_state(
        "the kept messages delivered",
        STATS_TIMEOUT,
        || b.delivered().len() as u64,
        |&n| n == kept,
    )
    .await?;
    let delivered: Vec<u64> = b
        .delivered()
        .iter()
        .map(|(_, text)| text.parse().unwrap_or(u64::MAX))
        .collect();
    ensure!(
        delivered.windows(2).all(|w| w[0] < w[1]) && delivered[0] == 0,
        "in order, the first first, no duplicate"
    );
    Ok(())
}
