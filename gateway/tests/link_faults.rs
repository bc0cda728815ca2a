//! The broker link under network faults. A TCP proxy that the test controls sits between one
//! gateway and a real broker; "freezing" it stops every byte in both directions without closing
//! either socket: a half-open link, as when a host or a middlebox vanishes without a FIN. Both
//! ends must notice by heartbeats alone (the gateway within `link_timeout` plus one
//! `link_ping_interval`, the broker within `link_idle_timeout`), and the gateway must reconnect
//! and resubscribe once the network heals, without disconnecting any client.
//!
//! A second gateway, linked to the broker directly, sends and receives across.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{ensure, Result};
use broker::{BrokerConfig, StatsSnapshot};
use gateway::stats::GatewaySnapshot;
use gateway::{Gateway, GatewayConfig};
use test_support::broker::TestBroker;
use test_support::gateway::TestGateway;
use test_support::ws::{add_group, Client};
use test_support::{expect_quiet, net, wait_for_state, STATS_TIMEOUT};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

const LINK_PING_INTERVAL: Duration = Duration::from_millis(100);
const LINK_TIMEOUT: Duration = Duration::from_millis(500);
const BROKER_IDLE_TIMEOUT: Duration = Duration::from_millis(800);
/// Slack for timers and polling on a loaded machine.
const MARGIN: Duration = Duration::from_millis(400);

/// A TCP proxy to `upstream` that can be frozen: while frozen, nothing is read or written on
/// any connection (bytes already read are held until the thaw), and new connections are
/// accepted but not connected upstream. Nothing is ever closed by a freeze. Stops on drop.
struct Proxy {
    addr: SocketAddr,
    frozen: watch::Sender<bool>,
    accepted: Arc<AtomicU64>,
    task: JoinHandle<()>,
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Result<Proxy> {
        let listener = net::listener().await?;
        let addr = listener.local_addr()?;
        let (frozen, _) = watch::channel(false);
        let accepted = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let frozen = frozen.clone();
            let accepted = accepted.clone();
            async move {
                // Dropped (aborting every connection) when the proxy's task is aborted.
                let mut connections = JoinSet::new();
                while let Ok((downstream, _)) = listener.accept().await {
                    accepted.fetch_add(1, Relaxed);
                    connections.spawn(relay(downstream, upstream, frozen.subscribe()));
                    while connections.try_join_next().is_some() {}
                }
            }
        });
        Ok(Proxy {
            addr,
            frozen,
            accepted,
            task,
        })
    }

    fn freeze(&self) {
        self.frozen.send_replace(true);
    }

    fn thaw(&self) {
        self.frozen.send_replace(false);
    }

    /// Connections accepted so far.
    fn accepted(&self) -> u64 {
        self.accepted.load(Relaxed)
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn relay(downstream: TcpStream, upstream: SocketAddr, mut frozen: watch::Receiver<bool>) {
    if frozen.wait_for(|f| !*f).await.is_err() {
        return;
    }
    let Ok(upstream) = TcpStream::connect(upstream).await else {
        return;
    };
    let _ = upstream.set_nodelay(true);
    let _ = downstream.set_nodelay(true);
    let (down_read, down_write) = downstream.into_split();
    let (up_read, up_write) = upstream.into_split();
    tokio::join!(
        pump(down_read, up_write, frozen.clone()),
        pump(up_read, down_write, frozen),
    );
}

/// Copies `from` to `to` while not frozen; passes end of file on as a half close.
async fn pump(mut from: OwnedReadHalf, mut to: OwnedWriteHalf, mut frozen: watch::Receiver<bool>) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => match read {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            },
            _ = frozen.wait_for(|f| *f) => continue,
        };
        // Frozen between the read and the write: hold the bytes.
        if frozen.wait_for(|f| !*f).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// A broker, gateway `x` linked to it through a [`Proxy`], and gateway `y` linked directly.
struct Fixture {
    broker: TestBroker,
    proxy: Proxy,
    x: TestGateway,
    y: TestGateway,
}

fn link_config(workers: usize) -> GatewayConfig {
    GatewayConfig {
        workers: Some(workers),
        link_ping_interval: LINK_PING_INTERVAL,
        link_timeout: LINK_TIMEOUT,
        link_connect_timeout: Duration::from_millis(300),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        // The half-open test publishes 320 messages as fast as it can.
        max_messages_per_second: 0,
        ..GatewayConfig::default()
    }
}

/// A gateway linked to the broker at `broker`, once its link is up.
async fn serve_gateway(config: GatewayConfig, broker: SocketAddr) -> Result<TestGateway> {
    let gateway = TestGateway::start(Gateway::builder(config).broker(broker.to_string())).await?;
    gateway.wait_ready().await?;
    Ok(gateway)
}

impl Fixture {
    async fn start() -> Result<Fixture> {
        let broker = TestBroker::start(BrokerConfig {
            link_idle_timeout: BROKER_IDLE_TIMEOUT,
            ..BrokerConfig::default()
        })
        .await;
        let proxy = Proxy::start(broker.addr).await?;
        let x = serve_gateway(link_config(2), proxy.addr).await?;
        // y pings as often as x: the broker's short idle timeout applies to it too.
        let y = serve_gateway(link_config(1), broker.addr).await?;
        Ok(Fixture {
            broker,
            proxy,
            x,
            y,
        })
    }

    async fn wait_x(&self, what: &str, cond: impl Fn(&GatewaySnapshot) -> bool) -> Result<()> {
        self.x.wait_stats(what, cond).await.map(drop)
    }

    async fn wait_broker(&self, what: &str, cond: impl Fn(&StatsSnapshot) -> bool) -> Result<()> {
        wait_for_state(what, STATS_TIMEOUT, || self.broker.stats(), cond)
            .await
            .map(drop)
    }
}

async fn join(ws: &mut Client, group: &str) -> Result<()> {
    ws.ack(add_group(group)).await
}

/// Polls until `cond` holds and returns how long it took from `since`.
async fn time_until<T: std::fmt::Debug>(
    what: &str,
    since: Instant,
    read: impl Fn() -> T,
    cond: impl Fn(&T) -> bool,
) -> Result<Duration> {
    wait_for_state(what, STATS_TIMEOUT, read, cond).await?;
    Ok(since.elapsed())
}

/// The half-open scenario. With `traffic_during_freeze`, x also publishes about 20 MB while the
/// link is frozen, so that its writes to the broker block: silence must still be noticed.
async fn half_open_link_is_detected_and_healed(traffic_during_freeze: bool) -> Result<()> {
    let fx = Fixture::start().await?;
    // x1, x2 behind the proxy, y1 on the direct gateway; all in "room".
    let mut x1 = fx.x.connect("x1").await?;
    let mut x2 = fx.x.connect("x2").await?;
    let mut y1 = fx.y.connect("y1").await?;
    for ws in [&mut x1, &mut x2, &mut y1] {
        join(ws, "room").await?;
    }
    fx.wait_broker("2 links with 1 subscription each", |s| {
        s.links == 2 && s.subscriptions == 2
    })
    .await?;
    y1.publish("room", "before").await?;
    for ws in [&mut x1, &mut x2, &mut y1] {
        ws.expect_text("before").await?;
    }
    let accepted_before = fx.proxy.accepted();

    fx.proxy.freeze();
    let frozen_at = Instant::now();
    let gateway_detects = time_until(
        "gateway x to see its link down",
        frozen_at,
        || fx.x.stats(),
        |s| !s.bus.up,
    );
    let broker_detects = time_until(
        "the broker to drop x's link and subscription",
        frozen_at,
        || fx.broker.stats(),
        |s| s.links == 1 && s.subscriptions == 1 && s.channels == 1,
    );
    let meanwhile = async {
        // Local delivery on x goes on; y's message cannot cross and is lost for x (not
        // replayed later); x2 joins a group while the link is down.
        x1.publish("room", "local on x").await?;
        x1.expect_text("local on x").await?;
        x2.expect_text("local on x").await?;
        y1.publish("room", "lost for x").await?;
        y1.expect_text("lost for x").await?;
        join(&mut x2, "late").await?;
        if traffic_during_freeze {
            // Publishes to a group nobody is in: they only fill the link's socket buffers
            // (about 20 MB, more than loopback buffers hold), so the link's writes block.
            let chunk = "z".repeat(60 * 1024);
            for _ in 0..320 {
                x1.publish("nobody", &chunk).await?;
                // The client's writes complete at once while the gateway reads; without a
                // yield this loop (framing and masking 60 KiB each time) would keep the two
                // detection timers above, polled by this same task, from running for a second.
                tokio::task::yield_now().await;
            }
        }
        Ok::<_, anyhow::Error>(())
    };
    let (gateway_detection, broker_detection, ()) =
        tokio::try_join!(gateway_detects, broker_detects, meanwhile)?;
    eprintln!(
        "half-open link (traffic during freeze: {traffic_during_freeze}): gateway saw it down \
         after {gateway_detection:?} (link-timeout {LINK_TIMEOUT:?}, ping interval \
         {LINK_PING_INTERVAL:?}); broker dropped it after {broker_detection:?} (idle timeout \
         {BROKER_IDLE_TIMEOUT:?})"
    );
    // The last frame heard came at most one ping interval (plus a round trip) before the
    // freeze, and silence is checked at each ping.
    let earliest = LINK_TIMEOUT - LINK_PING_INTERVAL - Duration::from_millis(50);
    let latest = LINK_TIMEOUT + LINK_PING_INTERVAL + MARGIN;
    ensure!(
        (earliest..=latest).contains(&gateway_detection),
        "gateway detection after {gateway_detection:?}, expected within {earliest:?}..={latest:?}"
    );
    let earliest = BROKER_IDLE_TIMEOUT - LINK_PING_INTERVAL - Duration::from_millis(50);
    let latest = BROKER_IDLE_TIMEOUT + MARGIN;
    ensure!(
        (earliest..=latest).contains(&broker_detection),
        "broker detection after {broker_detection:?}, expected within {earliest:?}..={latest:?}"
    );
    let stats = fx.broker.stats();
    ensure!(
        stats.bad_frames == 0,
        "an idle link is not a protocol fault: {stats:?}"
    );

    // Heal: the gateway reconnects through the proxy and subscribes both of its groups again.
    fx.proxy.thaw();
    let thawed_at = Instant::now();
    fx.wait_x("x's link up again, resubscribed", |s| {
        s.bus.up && s.bus.reconnects >= 1 && s.bus.subscriptions == 2
    })
    .await?;
    fx.wait_broker("x's two subscriptions back", |s| {
        s.links == 2 && s.channels == 2 && s.subscriptions == 3
    })
    .await?;
    eprintln!(
        "half-open link: resubscribed {:?} after the thaw",
        thawed_at.elapsed()
    );
    ensure!(fx.proxy.accepted() > accepted_before, "no new link");

    y1.publish("room", "after").await?;
    for ws in [&mut x1, &mut x2, &mut y1] {
        ws.expect_text("after").await?;
    }
    y1.publish("late", "joined while down").await?;
    x2.expect_text("joined while down").await?;
    // Nothing else: not y's message from the outage, not the echo of anything.
    expect_quiet([&mut x1, &mut x2, &mut y1]).await?;
    // Every client stayed connected throughout.
    let stats = fx.x.stats();
    ensure!(stats.connections == 2, "{stats:#?}");
    ensure!(
        stats.workers.iter().all(|w| w.slow_consumer_closes == 0),
        "{stats:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_link_without_traffic() -> Result<()> {
    half_open_link_is_detected_and_healed(false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_open_link_with_publishes_pending() -> Result<()> {
    half_open_link_is_detected_and_healed(true).await
}
