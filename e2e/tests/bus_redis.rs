//! Gateways on Redis (`--bus redis://...` and `redis+cluster://...`) against real
//! `redis-server` processes: delivery across gateways exactly once and in order, interest
//! routing as the engine itself reports it (`PUBSUB NUMSUB`, `PUBSUB SHARDNUMSUB`), group ids
//! that mean something to Redis, prefixes, echoes, a killed and restarted server, one shard
//! down, a cluster failover, and churn.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use e2e::numbered::Receiver;
use e2e::seed;
use e2e::{
    expect_quiet, numbered, publish_tagged, stat, tagged, tagged_streams, Client, Gateway,
    GatewayConfig, RECV_TIMEOUT, STATS_TIMEOUT,
};
use futures_util::future::try_join_all;
use test_support::redis::{RedisCluster, RedisServer};
use test_support::wait_until;
use tokio::time::Instant;

/// How long a cluster may take to promote a replica and the gateways to follow it.
const FAILOVER_TIMEOUT: Duration = Duration::from_secs(30);
/// Delivery between gateways must resume this soon after Redis is back.
const RESUME_WITHIN: Duration = Duration::from_secs(2);
/// Interval of the probe messages while waiting for delivery to resume.
const PROBE_INTERVAL: Duration = Duration::from_millis(50);
/// `PUBSUB CHANNELS` pattern of the group channels of prefix `gp`: the gateways' cluster topics
/// (`gp:` then U+001F: heartbeats, node, uid and presence topics) are left out.
const GROUP_CHANNELS: &str = "gp:[^\x1f]*";

/// What the gateways use: independent servers (one, or several shards), or a cluster.
enum Engine {
    Servers(Vec<RedisServer>),
    Cluster(RedisCluster),
}

impl Engine {
    async fn single() -> Result<Engine> {
        Ok(Engine::Servers(vec![RedisServer::start("redis").await?]))
    }

    async fn shards(n: usize) -> Result<Engine> {
        let mut servers = Vec::new();
        for i in 0..n {
            servers.push(RedisServer::start(&format!("redis-shard-{i}")).await?);
        }
        Ok(Engine::Servers(servers))
    }

    async fn cluster(replicas: usize) -> Result<Engine> {
        Ok(Engine::Cluster(RedisCluster::start(3, replicas).await?))
    }

    fn url(&self) -> String {
        match self {
            Engine::Servers(servers) => servers
                .iter()
                .map(RedisServer::url)
                .collect::<Vec<_>>()
                .join(","),
            Engine::Cluster(cluster) => cluster.url(),
        }
    }

    /// The engine's count of subscribers of `group`'s channel (prefix `gp`), over every
    /// server.
    async fn subscribers(&self, group: &str) -> Result<i64> {
        let channel = format!("gp:{group}");
        match self {
            Engine::Servers(servers) => {
                let mut total = 0;
                for server in servers {
                    total += server.numsub(&[channel.as_bytes()]).await?[0];
                }
                Ok(total)
            }
            Engine::Cluster(cluster) => cluster.shard_numsub(channel.as_bytes()).await,
        }
    }

    async fn wait_for_subscribers(&self, group: &str, n: i64) -> Result<()> {
        wait_until(
            &format!("redis has {n} subscribers of {group:?}"),
            STATS_TIMEOUT,
            || async {
                let count = self.subscribers(group).await?;
                ensure!(count == n, "{count} subscribers");
                Ok(())
            },
        )
        .await
    }

    /// Every group channel of prefix `gp` with a subscriber (not the gateways' cluster topics,
    /// `gp:` then U+001F).
    async fn channels(&self) -> Result<Vec<Vec<u8>>> {
        match self {
            Engine::Servers(servers) => {
                let mut all = Vec::new();
                for server in servers {
                    all.append(&mut server.channels(GROUP_CHANNELS).await?);
                }
                Ok(all)
            }
            Engine::Cluster(cluster) => cluster.shard_channels(GROUP_CHANNELS).await,
        }
    }
}

async fn gateways(engine: &Engine, names: &[&str]) -> Result<Vec<Gateway>> {
    gateways_with(engine, names, &[]).await
}

async fn gateways_with(engine: &Engine, names: &[&str], args: &[&str]) -> Result<Vec<Gateway>> {
    try_join_all(names.iter().map(|name| {
        let config = args.iter().fold(
            GatewayConfig::with_bus(name, engine.url()).workers(2),
            |config, arg| config.arg(*arg),
        );
        Gateway::start(config)
    }))
    .await
}

fn no_panics(gateways: &[Gateway]) -> Result<()> {
    for gateway in gateways {
        gateway.process.assert_no_panics()?;
    }
    Ok(())
}

/// Members of one group, of two and of none on three gateways; senders among each kind on
/// every gateway: every member receives every stream once, in order, and nothing else.
async fn fan_out_across_three_gateways(engine: Engine) -> Result<()> {
    const COUNT: usize = 5;
    let gateways = gateways(&engine, &["gateway-a", "gateway-b", "gateway-c"]).await?;
    let mut members = seed::join_members(&gateways.iter().collect::<Vec<_>>(), 5).await?;
    for group in seed::GROUPS {
        engine.wait_for_subscribers(group, 3).await?;
    }
    let senders = ["a0", "a3", "a4", "b1", "b3", "c2", "c4"];
    seed::exchange(&mut members, &senders, COUNT).await?;
    no_panics(&gateways)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_across_three_gateways_on_redis() -> Result<()> {
    fan_out_across_three_gateways(Engine::single().await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_across_three_gateways_on_two_shards() -> Result<()> {
    fan_out_across_three_gateways(Engine::shards(2).await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_across_three_gateways_on_a_cluster() -> Result<()> {
    fan_out_across_three_gateways(Engine::cluster(0).await?).await
}

/// A gateway subscribes a group's channel only while it has members, as Redis sees it; a
/// gateway without members receives nothing for it.
async fn interest_follows_members(engine: Engine) -> Result<()> {
    let gateways = gateways(&engine, &["gateway-a", "gateway-b"]).await?;
    let (a, b) = (&gateways[0], &gateways[1]);
    let mut x = a.connect("x").await?;
    let mut y = b.connect("y").await?;
    let mut sender = b.connect("sender").await?;
    x.join("solo").await?;
    engine.wait_for_subscribers("solo", 1).await?;
    b.wait_for_subscriptions(0).await?;
    sender.publish("solo", "from-b").await?;
    x.expect_text("from-b").await?;
    // b published but never subscribed: nothing came back to it.
    ensure!(
        stat(&b.admin.stats().await?, "/bus/messages_in") == Some(0),
        "b received a message of a group it has no member of"
    );
    y.join("solo").await?;
    engine.wait_for_subscribers("solo", 2).await?;
    x.leave("solo").await?;
    engine.wait_for_subscribers("solo", 1).await?;
    y.leave("solo").await?;
    engine.wait_for_subscribers("solo", 0).await?;
    let left = engine.channels().await?;
    ensure!(left.is_empty(), "channels left: {left:?}");
    expect_quiet([&mut x, &mut y, &mut sender]).await?;
    no_panics(&gateways)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interest_follows_members_on_redis() -> Result<()> {
    interest_follows_members(Engine::single().await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interest_follows_members_on_a_cluster() -> Result<()> {
    interest_follows_members(Engine::cluster(0).await?).await
}

/// Group ids that are patterns, separators, hash tags or long to Redis stay apart.
async fn special_group_ids_stay_apart(engine: Engine) -> Result<()> {
    let long = "x".repeat(256);
    let groups = [
        "a.b",
        "a",
        "*",
        ">",
        "a b",
        "{x}",
        "x",
        "a*",
        "é 🎉 ü",
        long.as_str(),
    ];
    let gateways = gateways(&engine, &["gateway-a", "gateway-b"]).await?;
    let mut members = Vec::new();
    for (i, group) in groups.iter().enumerate() {
        let mut member = gateways[1].connect(format!("m{i}")).await?;
        member.join(group).await?;
        members.push(member);
    }
    for group in groups {
        engine.wait_for_subscribers(group, 1).await?;
    }
    let mut sender = gateways[0].connect("s").await?;
    for group in groups {
        sender.publish(group, &tagged("s", group, 0)).await?;
    }
    for (member, group) in members.iter_mut().zip(groups) {
        member.expect_text(&tagged("s", group, 0)).await?;
    }
    expect_quiet(members.iter_mut().chain([&mut sender])).await?;
    no_panics(&gateways)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_group_ids_stay_apart_on_redis() -> Result<()> {
    special_group_ids_stay_apart(Engine::single().await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn special_group_ids_stay_apart_on_a_cluster() -> Result<()> {
    special_group_ids_stay_apart(Engine::cluster(0).await?).await
}

/// Two deployments with different `--bus-prefix` on one Redis do not see each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefixes_keep_deployments_apart() -> Result<()> {
    let redis = RedisServer::start("redis").await?;
    let start = |name: &'static str, prefix: &'static str| {
        Gateway::start(
            GatewayConfig::with_bus(name, redis.url())
                .workers(1)
                .arg("--bus-prefix")
                .arg(prefix),
        )
    };
    let (one_a, one_b, two) = tokio::try_join!(
        start("one-a", "one"),
        start("one-b", "one"),
        start("two", "two")
    )?;
    let mut same = one_b.connect("same").await?;
    let mut other = two.connect("other").await?;
    same.join("room").await?;
    other.join("room").await?;
    wait_until("both prefixes subscribed", STATS_TIMEOUT, || async {
        let counts = redis.numsub(&[b"one:room", b"two:room"]).await?;
        ensure!(counts == [1, 1], "{counts:?}");
        Ok(())
    })
    .await?;
    let mut sender = one_a.connect("sender").await?;
    sender.publish("room", "for-one").await?;
    same.expect_text("for-one").await?;
    expect_quiet([&mut same, &mut other, &mut sender]).await?;
    ensure!(
        stat(&two.admin.stats().await?, "/bus/messages_in") == Some(0),
        "the other deployment received a message"
    );
    no_panics(&[one_a, one_b, two])
}

/// Redis sends a gateway's publish back to its own subscriber connection: its members get it
/// once (locally), and the echo is counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn own_publishes_are_delivered_once() -> Result<()> {
    const COUNT: usize = 5;
    let engine = Engine::single().await?;
    let gateways = gateways(&engine, &["gateway"]).await?;
    let gateway = &gateways[0];
    let mut member = gateway.connect("member").await?;
    let mut sender = gateway.connect("sender").await?;
    member.join("room").await?;
    engine.wait_for_subscribers("room", 1).await?;
    publish_tagged(&mut sender, &["room"], COUNT).await?;
    member
        .expect_streams(tagged_streams(&["room"], &["sender"], &["room"], COUNT))
        .await?;
    gateway
        .admin
        .wait_for_counters(
            "every echo dropped",
            &[
                ("/bus/echoes_dropped", COUNT as u64),
                ("/bus/messages_in", COUNT as u64),
            ],
        )
        .await?;
    expect_quiet([&mut member, &mut sender]).await?;
    no_panics(&gateways)
}

/// Numbered messages from `sender` to `group`, one every [`PROBE_INTERVAL`], until `member`
/// receives one sent from now on; returns how long that took.
async fn probe_until_delivered(
    sender: &mut Client,
    group: &str,
    member: &mut Receiver,
    sent: &mut BTreeMap<String, u64>,
    timeout: Duration,
) -> Result<Duration> {
    let started = Instant::now();
    let name = sender.name().to_owned();
    let first = sent.get(&name).copied().unwrap_or(0);
    let deadline = started + timeout;
    loop {
        let n = sent.get(&name).copied().unwrap_or(0);
        sender.publish(group, &numbered(&name, n)).await?;
        sent.insert(name.clone(), n + 1);
        let until = (Instant::now() + PROBE_INTERVAL).min(deadline);
        if member.until(until, sent, &name, first).await? {
            return Ok(started.elapsed());
        }
        if Instant::now() >= deadline {
            bail!(
                "{}: nothing from {name} to {group} within {timeout:?}",
                member.client.name()
            );
        }
    }
}

/// Redis SIGKILLed and restarted on its port: local delivery never stops, no client is
/// disconnected, and delivery between gateways resumes within two seconds of the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restart() -> Result<()> {
    let mut engine = Engine::single().await?;
    let gateways = gateways(&engine, &["gateway-a", "gateway-b"]).await?;
    let (a, b) = (&gateways[0], &gateways[1]);
    let mut local = Receiver::new(a.connect("local").await?);
    let mut remote = Receiver::new(b.connect("remote").await?);
    let mut back = Receiver::new(a.connect("back").await?);
    for member in [&mut local, &mut remote, &mut back] {
        member.client.join("room").await?;
    }
    let mut sa = a.connect("sa").await?;
    let mut sb = b.connect("sb").await?;
    engine.wait_for_subscribers("room", 2).await?;
    let mut sent = BTreeMap::new();
    probe_until_delivered(&mut sa, "room", &mut remote, &mut sent, RECV_TIMEOUT).await?;

    let Engine::Servers(servers) = &mut engine else {
        bail!("one server")
    };
    servers[0].kill().await?;
    // Local delivery goes on while Redis is gone.
    for _ in 0..3 {
        probe_until_delivered(&mut sa, "room", &mut local, &mut sent, RECV_TIMEOUT).await?;
    }
    servers[0].restart().await?;
    let took =
        probe_until_delivered(&mut sa, "room", &mut remote, &mut sent, RESUME_WITHIN * 2).await?;
    eprintln!("Redis restart: delivery resumed {took:?} after the restart");
    ensure!(
        took <= RESUME_WITHIN,
        "a -> b resumed {took:?} after the restart"
    );
    probe_until_delivered(&mut sb, "room", &mut back, &mut sent, RESUME_WITHIN).await?;

    // Everyone is still connected: a request each is answered.
    for client in [
        &mut local.client,
        &mut remote.client,
        &mut back.client,
        &mut sa,
        &mut sb,
    ] {
        client.join("after").await?;
    }
    for (gateway, connections) in [(a, 3), (b, 2)] {
        let stats = gateway.admin.stats().await?;
        ensure!(
            stat(&stats, "/bus/reconnects") >= Some(1) && stats["bus"]["up"] == true,
            "{stats}"
        );
        ensure!(stat(&stats, "/connections") == Some(connections), "{stats}");
    }
    no_panics(&gateways)
}

/// With two shards, one down stops only its own groups between gateways; they resume when it
/// returns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_shard_down() -> Result<()> {
    let mut engine = Engine::shards(2).await?;
    let gateways = gateways(&engine, &["gateway-a", "gateway-b"]).await?;
    let (a, b) = (&gateways[0], &gateways[1]);
    let candidates: Vec<String> = (0..16).map(|i| format!("k{i}")).collect();
    let mut here = Receiver::new(a.connect("here").await?);
    let mut there = Receiver::new(b.connect("there").await?);
    for group in &candidates {
        here.client.join(group).await?;
        there.client.join(group).await?;
    }
    for group in &candidates {
        engine.wait_for_subscribers(group, 2).await?;
    }
    // Which shard holds which group, as the servers say.
    let Engine::Servers(servers) = &mut engine else {
        bail!("shards")
    };
    let mut on = [None, None];
    for group in &candidates {
        let channel = format!("gp:{group}");
        let shard = usize::from(servers[0].numsub(&[channel.as_bytes()]).await?[0] == 0);
        on[shard].get_or_insert(group.clone());
    }
    let (Some(down_group), Some(up_group)) = (on[0].clone(), on[1].clone()) else {
        bail!("all 16 groups on one shard: {on:?}");
    };
    let mut sender = a.connect("sender").await?;
    let mut sent = BTreeMap::new();
    probe_until_delivered(
        &mut sender,
        &down_group,
        &mut there,
        &mut sent,
        RECV_TIMEOUT,
    )
    .await?;

    servers[0].kill().await?;
    for gateway in [a, b] {
        gateway
            .admin
            .wait_for_stats("shard 0 down, shard 1 up", |s| {
                s["bus"]["shards"][0]["up"] == false && s["bus"]["shards"][1]["up"] == true
            })
            .await?;
    }
    // The other shard's groups are unaffected, and local delivery goes on for all.
    probe_until_delivered(&mut sender, &up_group, &mut there, &mut sent, RECV_TIMEOUT).await?;
    probe_until_delivered(&mut sender, &down_group, &mut here, &mut sent, RECV_TIMEOUT).await?;
    servers[0].restart().await?;
    probe_until_delivered(
        &mut sender,
        &down_group,
        &mut there,
        &mut sent,
        RESUME_WITHIN * 2,
    )
    .await?;
    engine.wait_for_subscribers(&down_group, 2).await?;
    no_panics(&gateways)
}

/// The master serving a group's slot is killed and its replica takes over: delivery resumes
/// through the new master. (The takeover is asked for, not waited for: a replica's own
/// election after a SIGKILL took from seconds to never on this machine's loaded test runs.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_failover() -> Result<()> {
    let mut engine = Engine::cluster(1).await?;
    let gateways = gateways(&engine, &["gateway-a", "gateway-b"]).await?;
    let (a, b) = (&gateways[0], &gateways[1]);
    let mut remote = Receiver::new(b.connect("remote").await?);
    let mut back = Receiver::new(a.connect("back").await?);
    remote.client.join("room").await?;
    back.client.join("room").await?;
    engine.wait_for_subscribers("room", 2).await?;
    let mut sa = a.connect("sa").await?;
    let mut sb = b.connect("sb").await?;
    let mut sent = BTreeMap::new();
    probe_until_delivered(&mut sa, "room", &mut remote, &mut sent, RECV_TIMEOUT).await?;

    let Engine::Cluster(cluster) = &mut engine else {
        bail!("a cluster")
    };
    let master = cluster.master_of(0, b"gp:room").await?;
    let replica = cluster.replica_of(master).await?;
    cluster.nodes[master].kill().await?;
    let killed = Instant::now();
    cluster.take_over(replica, 3).await?;
    eprintln!("replica promoted {:?} after the kill", killed.elapsed());
    let asked = replica;
    let took =
        probe_until_delivered(&mut sa, "room", &mut remote, &mut sent, FAILOVER_TIMEOUT).await?;
    probe_until_delivered(&mut sb, "room", &mut back, &mut sent, FAILOVER_TIMEOUT).await?;
    let new_master = cluster.master_of(asked, b"gp:room").await?;
    ensure!(
        new_master != master,
        "the slot stayed with the killed master"
    );
    let subscribers = cluster.nodes[new_master]
        .shard_numsub(&[b"gp:room"])
        .await?;
    ensure!(subscribers == [2], "{subscribers:?} on the new master");
    eprintln!("delivery resumed {took:?} after the master was killed");
    no_panics(&gateways)
}

/// 5,000 join/leave cycles from 20 clients on two gateways leave no channel behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_no_subscription_behind() -> Result<()> {
    const CLIENTS: usize = 20;
    const CYCLES_EACH: usize = 250;
    const GROUPS: usize = 97;
    let engine = Engine::single().await?;
    // Each client sends 500 requests in a row: no rate limit.
    let gateways = gateways_with(
        &engine,
        &["gateway-a", "gateway-b"],
        &["--max-messages-per-second", "0"],
    )
    .await?;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(gateways[i % 2].connect(format!("c{i}")).await?);
    }
    let started = Instant::now();
    try_join_all(
        clients
            .iter_mut()
            .enumerate()
            .map(|(i, client)| async move {
                for cycle in 0..CYCLES_EACH {
                    let group = format!("churn-{}", (i * 7 + cycle) % GROUPS);
                    client.join(&group).await?;
                    client.leave(&group).await?;
                }
                Ok::<_, anyhow::Error>(())
            }),
    )
    .await?;
    eprintln!(
        "{} join/leave cycles in {:?}",
        CLIENTS * CYCLES_EACH,
        started.elapsed()
    );
    for gateway in &gateways {
        gateway.wait_for_subscriptions(0).await?;
    }
    let Engine::Servers(servers) = &engine else {
        bail!("one server")
    };
    wait_until("no channel left on redis", STATS_TIMEOUT, || async {
        let left = servers[0].channels(GROUP_CHANNELS).await?;
        ensure!(left.is_empty(), "{} channels left", left.len());
        Ok(())
    })
    .await?;
    let channels: Vec<String> = (0..GROUPS).map(|g| format!("gp:churn-{g}")).collect();
    let names: Vec<&[u8]> = channels.iter().map(|c| c.as_bytes()).collect();
    let counts = servers[0].numsub(&names).await?;
    ensure!(counts.iter().all(|&n| n == 0), "{counts:?}");
    for gateway in &gateways {
        let stats = gateway.admin.stats().await?;
        ensure!(
            stat(&stats, "/bus/subscriptions_refused") == Some(0),
            "{stats}"
        );
    }
    no_panics(&gateways).context("after churn")
}

/// A server that stops answering (SIGSTOP: the TCP connections stay open) is found dead by the
/// heartbeat within `--link-idle-timeout` plus `--link-ping-interval`, and the gateway is back
/// once the server answers again (SIGCONT).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_redis_is_found_dead() -> Result<()> {
    let engine = Engine::single().await?;
    let gateways = gateways_with(
        &engine,
        &["gateway"],
        &["--link-ping-interval", "200ms", "--link-idle-timeout", "1s"],
    )
    .await?;
    let gateway = &gateways[0];
    let Engine::Servers(servers) = &engine else {
        bail!("one server")
    };
    servers[0].process.signal("STOP").await?;
    let stopped = Instant::now();
    let down = gateway.process.wait_for_log("bus down", RECV_TIMEOUT).await;
    servers[0].process.signal("CONT").await?;
    let down = down?;
    let took = stopped.elapsed();
    eprintln!("Redis stopped: found dead after {took:?}");
    ensure!(
        took < Duration::from_millis(1200 + 500),
        "found dead after {took:?}: {down:?}"
    );
    gateway
        .process
        .wait_for_nth_log("bus up", 2, STATS_TIMEOUT)
        .await?;
    no_panics(&gateways)
}
