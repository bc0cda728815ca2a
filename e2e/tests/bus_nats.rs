//! Gateways carried by NATS (`--bus nats://...`), against real `nats-server` processes: one
//! server, or a three-node cluster with the gateways on different nodes.
//!
//! What the engine itself holds is read from its monitoring endpoint: each gateway's
//! subscriptions by connection name (`/connz?subs=1`; the gateways name their connection after
//! `--node-name`) and, in a cluster, the interest each node forwards to the others
//! (`/routez?subs=1`).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use e2e::numbered::{Receiver, Sender};
use e2e::seed;
use e2e::{
    expect_quiet, publish_tagged, stat, tagged, tagged_streams, Gateway, GatewayConfig,
    STARTUP_TIMEOUT, STATS_TIMEOUT,
};
use futures_util::future::try_join_all;
use test_support::nats::{NatsCluster, NatsServer};
use test_support::wait_until;
use tokio::time::Instant;

/// How soon delivery between gateways must resume once the engine is back (or, in a cluster,
/// once a node is gone).
const RESUME_WITHIN: Duration = Duration::from_secs(2);

/// The subject of `group` under `prefix`, as the NATS carrier's documentation specifies it:
/// `{prefix}.g.{token}`, the token keeping `A-Z a-z 0-9 _ -` and writing every other byte of
/// the group id as `~HH`. Written out here so that the test pins the format.
fn subject(prefix: &str, group: &str) -> String {
    let mut token = String::new();
    for byte in group.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            token.push(char::from(byte));
        } else {
            token.push_str(&format!("~{byte:02X}"));
        }
    }
    format!("{prefix}.g.{token}")
}

/// One NATS server or the nodes of a cluster of three.
struct Engine {
    nodes: Vec<NatsServer>,
}

impl Engine {
    async fn one() -> Result<Engine> {
        Ok(Engine {
            nodes: vec![NatsServer::start("nats").await?],
        })
    }

    async fn cluster() -> Result<Engine> {
        Ok(Engine {
            nodes: NatsCluster::start("nats").await?.nodes,
        })
    }

    fn nodes(&self) -> &[NatsServer] {
        &self.nodes
    }

    /// The URL gateway `i` is given: in a cluster, gateways go to different nodes (each learns
    /// the others from its node).
    fn url_for(&self, i: usize) -> String {
        let nodes = self.nodes();
        nodes[i % nodes.len()].url()
    }
}

/// Waits until the live `nodes` hold exactly `expected` (gateway name -> subjects) and, in a
/// cluster, every live node forwards exactly the subjects of the gateways on the others.
async fn wait_for_interest(
    nodes: &[NatsServer],
    expected: &BTreeMap<String, BTreeSet<String>>,
) -> Result<()> {
    wait_until(
        "the engine holds what the gateways want",
        STATS_TIMEOUT,
        || async {
            let mut held: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
            // For each live node: the subjects of its gateways, and what it forwards.
            let mut live: Vec<(BTreeSet<String>, BTreeSet<String>)> = Vec::new();
            for node in nodes {
                if node.monitor.get_json("/varz").await.is_err() {
                    continue; // killed
                }
                let mut local = BTreeSet::new();
                for (client, subjects) in node.subscriptions().await? {
                    if expected.contains_key(&client) {
                        local.extend(subjects.iter().cloned());
                        held.entry(client).or_default().extend(subjects);
                    }
                }
                let forwarded = node
                    .route_subjects()
                    .await?
                    .into_iter()
                    .filter(|s| s.contains(".g."))
                    .collect();
                live.push((local, forwarded));
            }
            for (gateway, subjects) in expected {
                let got = held.get(gateway).cloned().unwrap_or_default();
                ensure!(
                    &got == subjects,
                    "{gateway} holds {got:?}, not {subjects:?}"
                );
            }
            if live.len() > 1 {
                for (i, (_, forwarded)) in live.iter().enumerate() {
                    let others: BTreeSet<String> = live
                        .iter()
                        .enumerate()
                        .filter(|(j, _)| *j != i)
                        .flat_map(|(_, (local, _))| local.iter().cloned())
                        .collect();
                    ensure!(
                        forwarded == &others,
                        "live node {i} forwards {forwarded:?}, not {others:?}"
                    );
                }
            }
            Ok(())
        },
    )
    .await
}

/// A gateway named `name` on `url`: its NATS connection is named after it too. No rate limit,
/// so that tests may send quickly.
async fn gateway(name: &str, url: String, extra: &[&str]) -> Result<Gateway> {
    let mut config = GatewayConfig::with_bus(name, url)
        .workers(2)
        .arg(format!("--node-name={name}"))
        .arg("--max-messages-per-second=0");
    for arg in extra {
        config = config.arg(*arg);
    }
    Gateway::start(config).await
}

/// `gateway -> subjects of groups` under the default prefix.
fn interest(wanted: &[(&Gateway, &[&str])]) -> BTreeMap<String, BTreeSet<String>> {
    wanted
        .iter()
        .map(|(gateway, groups)| {
            (
                gateway.process.name().to_owned(),
                groups.iter().map(|g| subject("gp", g)).collect(),
            )
        })
        .collect()
}

fn assert_no_panics(gateways: &[&Gateway]) -> Result<()> {
    for gateway in gateways {
        gateway.process.assert_no_panics()?;
    }
    Ok(())
}

// ---- the seed scenario ----------------------------------------------------------------------

/// Three gateways, five clients on each in red, blue, both or neither; a member of one group,
/// of two and of none sends on each gateway. Every member receives each sender's stream for its
/// groups exactly once and in order, and nothing else.
async fn seed_scenario(engine: Engine) -> Result<()> {
    const COUNT: usize = 20;
    let names = ["gw-a", "gw-b", "gw-c"];
    let gateways = try_join_all(
        names
            .iter()
            .enumerate()
            .map(|(i, name)| gateway(name, engine.url_for(i), &[])),
    )
    .await?;
    let mut members = seed::join_members(&gateways.iter().collect::<Vec<_>>(), 5).await?;
    let wanted: Vec<(&Gateway, &[&str])> =
        gateways.iter().map(|g| (g, &seed::GROUPS[..])).collect();
    wait_for_interest(engine.nodes(), &interest(&wanted)).await?;

    let senders = ["a0", "a3", "a4", "b1", "b3", "b4", "c0", "c3", "c4"];
    seed::exchange(&mut members, &senders, COUNT).await?;

    for gateway in &gateways {
        let stats = gateway.admin.stats().await?;
        ensure!(
            stat(&stats, "/bus/publishes_dropped") == Some(0)
                && stat(&stats, "/bus/echoes_dropped") == Some(0)
                && stats.pointer("/bus/carrier") == Some(&"nats".into()),
            "{}: {stats}",
            gateway.process.name()
        );
    }
    assert_no_panics(&gateways.iter().collect::<Vec<_>>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_on_one_server() -> Result<()> {
    seed_scenario(Engine::one().await?).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_on_a_cluster() -> Result<()> {
    seed_scenario(Engine::cluster().await?).await
}

// ---- interest routing -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_groups_with_members_are_subscribed() -> Result<()> {
    let engine = Engine::one().await?;
    let a = gateway("gw-a", engine.url_for(0), &[]).await?;
    let b = gateway("gw-b", engine.url_for(1), &[]).await?;
    wait_for_interest(engine.nodes(), &interest(&[(&a, &[]), (&b, &[])])).await?;

    let mut a1 = a.connect("a1").await?;
    let mut b1 = b.connect("b1").await?;
    a1.join("only-a").await?;
    a1.join("shared").await?;
    b1.join("shared").await?;
    wait_for_interest(
        engine.nodes(),
        &interest(&[(&a, &["only-a", "shared"]), (&b, &["shared"])]),
    )
    .await?;
    a.wait_for_subscriptions(2).await?;
    b.wait_for_subscriptions(1).await?;

    // b has no subscription for only-a, yet its members can send there.
    b1.publish("only-a", "from b").await?;
    a1.expect_text("from b").await?;

    a1.leave("only-a").await?;
    wait_for_interest(
        engine.nodes(),
        &interest(&[(&a, &["shared"]), (&b, &["shared"])]),
    )
    .await?;
    a1.leave("shared").await?;
    b1.close().await?;
    wait_for_interest(engine.nodes(), &interest(&[(&a, &[]), (&b, &[])])).await?;
    a.wait_for_subscriptions(0).await?;
    b.wait_for_subscriptions(0).await?;
    expect_quiet([&mut a1]).await?;
    assert_no_panics(&[&a, &b])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_ids_special_to_nats_do_not_cross_talk() -> Result<()> {
    let long = "é".repeat(128); // 256 bytes, every one escaped
    let groups: Vec<&str> = vec![
        "a.b", "a", "b", "a~2Eb", "*", ">", "a.*", "a.>", "a b", "{x}", " ", "群组", "~", &long,
    ];
    let engine = Engine::one().await?;
    let a = gateway("gw-a", engine.url_for(0), &[]).await?;
    let b = gateway("gw-b", engine.url_for(0), &[]).await?;
    let mut members = Vec::new();
    for (gateway, side) in [(&a, "a"), (&b, "b")] {
        for (i, group) in groups.iter().enumerate() {
            let mut member = gateway.connect(format!("{side}-member{i}")).await?;
            member.join(group).await?;
            members.push((*group, member));
        }
    }
    wait_for_interest(engine.nodes(), &interest(&[(&a, &groups), (&b, &groups)])).await?;
    let mut sa = a.connect("sa").await?;
    let mut sb = b.connect("sb").await?;
    publish_tagged(&mut sa, &groups, 2).await?;
    publish_tagged(&mut sb, &groups, 2).await?;
    try_join_all(members.iter_mut().map(|(group, member)| {
        member.expect_streams(tagged_streams(&[group], &["sa", "sb"], &groups, 2))
    }))
    .await?;
    expect_quiet(members.iter_mut().map(|(_, m)| m).chain([&mut sa, &mut sb])).await?;
    assert_no_panics(&[&a, &b])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployments_with_different_prefixes_share_a_server_unseen() -> Result<()> {
    let engine = Engine::one().await?;
    let url = engine.url_for(0);
    let one_a = gateway("one-a", url.clone(), &["--bus-prefix=one"]).await?;
    let one_b = gateway("one-b", url.clone(), &["--bus-prefix=one"]).await?;
    let two = gateway("two", url, &["--bus-prefix=two"]).await?;
    let mut m1a = one_a.connect("m1a").await?;
    let mut m1b = one_b.connect("m1b").await?;
    let mut m2 = two.connect("m2").await?;
    for member in [&mut m1a, &mut m1b, &mut m2] {
        member.join("room").await?;
    }
    let expected: BTreeMap<String, BTreeSet<String>> =
        [("one-a", "one"), ("one-b", "one"), ("two", "two")]
            .into_iter()
            .map(|(gateway, prefix)| {
                (
                    gateway.to_owned(),
                    BTreeSet::from([subject(prefix, "room")]),
                )
            })
            .collect();
    wait_for_interest(engine.nodes(), &expected).await?;

    let mut s1 = one_b.connect("s1").await?;
    let mut s2 = two.connect("s2").await?;
    publish_tagged(&mut s1, &["room"], 5).await?;
    publish_tagged(&mut s2, &["room"], 5).await?;
    let from = |sender| {
        vec![(0..5)
            .map(|n| tagged(sender, "room", n))
            .collect::<Vec<_>>()]
    };
    m1a.expect_streams(from("s1")).await?;
    m1b.expect_streams(from("s1")).await?;
    m2.expect_streams(from("s2")).await?;
    expect_quiet([&mut m1a, &mut m1b, &mut m2, &mut s1, &mut s2]).await?;
    assert_no_panics(&[&one_a, &one_b, &two])
}

// ---- outages --------------------------------------------------------------------------------

/// On each gateway a member and a sender of "room", and the engine's view that routes "room"
/// to every one of them (for [`wait_for_interest`]).
async fn room_on(
    gateways: &[Gateway],
) -> Result<(
    Vec<(usize, Receiver)>,
    Vec<(usize, Sender)>,
    BTreeMap<String, BTreeSet<String>>,
)> {
    let mut members = Vec::new();
    let mut senders = Vec::new();
    for (i, gateway) in gateways.iter().enumerate() {
        members.push((i, member(gateway, &format!("m{i}")).await?));
        senders.push((i, sender(gateway, &format!("s{i}")).await?));
    }
    let expected = gateways
        .iter()
        .map(|g| {
            (
                g.process.name().to_owned(),
                BTreeSet::from([subject("gp", "room")]),
            )
        })
        .collect();
    Ok((members, senders, expected))
}

/// A member of "room" on `gateway`, checking what it receives.
async fn member(gateway: &Gateway, name: &str) -> Result<Receiver> {
    let mut client = gateway.connect(name).await?;
    client.join("room").await?;
    Ok(Receiver::new(client))
}

/// A client on `gateway` sending numbered messages to "room".
async fn sender(gateway: &Gateway, name: &str) -> Result<Sender> {
    Ok(Sender::new(gateway.connect(name).await?, "room"))
}

/// Sends from every sender every few milliseconds until each member has received, from every
/// sender on another gateway, a message sent after `since` began; fails after `within`.
/// Returns how long it took from `since`.
async fn probe_until_crossed(
    senders: &mut [(usize, Sender)],
    members: &mut [(usize, Receiver)],
    sent: &mut BTreeMap<String, u64>,
    since: Instant,
    within: Duration,
) -> Result<Duration> {
    let first: Vec<u64> = senders.iter().map(|(_, s)| s.next()).collect();
    loop {
        for (_, sender) in senders.iter_mut() {
            sender.send(sent).await?;
        }
        for (_, member) in members.iter_mut() {
            member.drain(Duration::from_millis(5), sent).await?;
        }
        let crossed = members.iter().all(|(gm, member)| {
            senders
                .iter()
                .zip(&first)
                .filter(|((gs, _), _)| gs != gm)
                .all(|((_, s), &n)| member.got_from(s.client.name(), n))
        });
        if crossed {
            return Ok(since.elapsed());
        }
        if since.elapsed() > within {
            bail!("delivery between gateways did not resume within {within:?}");
        }
    }
}

/// Every member receives one message from every sender (local and remote).
async fn all_cross(
    senders: &mut [(usize, Sender)],
    members: &mut [(usize, Receiver)],
    sent: &mut BTreeMap<String, u64>,
) -> Result<()> {
    let mut probes = Vec::new();
    for (_, sender) in senders.iter_mut() {
        probes.push(sender.send(sent).await?);
    }
    for (_, member) in members.iter_mut() {
        member.require(&probes, sent).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_killed_and_restarted_on_its_port() -> Result<()> {
    let mut server = NatsServer::start("nats").await?;
    let port = server.port;
    let gateways = [
        gateway("gw-a", server.url(), &[]).await?,
        gateway("gw-b", server.url(), &[]).await?,
    ];
    let (mut members, mut senders, expected) = room_on(&gateways).await?;
    wait_for_interest(std::slice::from_ref(&server), &expected).await?;
    let mut sent = BTreeMap::new();
    all_cross(&mut senders, &mut members, &mut sent).await?;

    server.kill().await?;
    for gateway in &gateways {
        gateway
            .process
            .wait_for_log("bus down", STARTUP_TIMEOUT)
            .await?;
        gateway.admin.wait_for_status("/readyz", 503).await?;
    }
    // Local delivery goes on.
    for ((_, sender), (_, member)) in senders.iter_mut().zip(members.iter_mut()) {
        let probe = sender.send(&mut sent).await?;
        member.require(&[probe], &sent).await?;
    }

    let restarted = Instant::now();
    let server = NatsServer::start_on("nats (restarted)", port).await?;
    let listening = restarted.elapsed();
    let resumed = probe_until_crossed(
        &mut senders,
        &mut members,
        &mut sent,
        restarted,
        RESUME_WITHIN,
    )
    .await?;
    eprintln!("NATS restart: listening after {listening:?}, delivery resumed after {resumed:?}");
    wait_for_interest(std::slice::from_ref(&server), &expected).await?;
    for gateway in &gateways {
        gateway
            .process
            .wait_for_nth_log("bus up", 2, STARTUP_TIMEOUT)
            .await?;
        gateway.admin.wait_for_status("/readyz", 200).await?;
        gateway
            .admin
            .wait_for_stats("both clients connected, reconnected once", |s| {
                stat(s, "/connections") == Some(2)
                    && stat(s, "/bus/reconnects") == Some(1)
                    && stat(s, "/bus/subscriptions") == Some(1)
            })
            .await?;
    }
    all_cross(&mut senders, &mut members, &mut sent).await?;
    for (_, member) in &mut members {
        member.drain(e2e::QUIET_PERIOD, &sent).await?;
    }
    assert_no_panics(&gateways.iter().collect::<Vec<_>>())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_node_killed_gateways_move_to_another() -> Result<()> {
    let mut cluster = NatsCluster::start("nats").await?;
    let urls: Vec<String> = cluster.nodes.iter().map(NatsServer::url).collect();
    let gateways = try_join_all(
        ["gw-a", "gw-b", "gw-c"]
            .iter()
            .zip(&urls)
            .map(|(name, url)| gateway(name, url.clone(), &[])),
    )
    .await?;
    let (mut members, mut senders, expected) = room_on(&gateways).await?;
    let mut sent = BTreeMap::new();
    wait_for_interest(&cluster.nodes, &expected).await?;
    all_cross(&mut senders, &mut members, &mut sent).await?;

    // gw-a's node goes; gw-a finds another from what its node told it of the cluster.
    let killed = Instant::now();
    cluster.nodes[0].kill().await?;
    let resumed =
        probe_until_crossed(&mut senders, &mut members, &mut sent, killed, RESUME_WITHIN).await?;
    eprintln!("NATS node killed: delivery resumed after {resumed:?}");
    gateways[0]
        .process
        .wait_for_nth_log("bus up", 2, STARTUP_TIMEOUT)
        .await?;
    wait_for_interest(&cluster.nodes, &expected).await?;
    for gateway in &gateways {
        gateway
            .admin
            .wait_for_stats("both clients connected and the bus up", |s| {
                stat(s, "/connections") == Some(2) && s.pointer("/bus/up") == Some(&true.into())
            })
            .await?;
    }
    for gateway in &gateways[1..] {
        ensure!(
            gateway.process.log_count("bus down") == 0,
            "{} lost its bus although its node stayed",
            gateway.process.name()
        );
    }
    all_cross(&mut senders, &mut members, &mut sent).await?;
    assert_no_panics(&gateways.iter().collect::<Vec<_>>())
}

/// A node that stops answering without closing anything (SIGSTOP: a hung host, or a failover
/// that left the gateway on a node which no longer carries its traffic) is found dead by the
/// client's pings, two unanswered at `--link-ping-interval`, and left for another node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_cluster_node_is_found_by_pings_and_left() -> Result<()> {
    const PING: Duration = Duration::from_millis(200);
    /// A reconnect attempt to the stopped node hangs until the connect timeout (its kernel
    /// still accepts the TCP connection); the client may pick it again before another.
    const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);
    /// Two unanswered pings, a third interval to notice, a few reconnect attempts that may hit
    /// the stopped node, then the probes.
    const FOUND_WITHIN: Duration = Duration::from_secs(6);
    let cluster = NatsCluster::start("nats").await?;
    let urls: Vec<String> = cluster.nodes.iter().map(NatsServer::url).collect();
    let ping = format!("--link-ping-interval={}ms", PING.as_millis());
    let connect = format!("--link-connect-timeout={}ms", CONNECT_TIMEOUT.as_millis());
    let extra = [ping.as_str(), connect.as_str()];
    let gateways = try_join_all(
        ["gw-a", "gw-b"]
            .iter()
            .zip(&urls)
            .map(|(name, url)| gateway(name, url.clone(), &extra)),
    )
    .await?;
    let (mut members, mut senders, expected) = room_on(&gateways).await?;
    let mut sent = BTreeMap::new();
    wait_for_interest(&cluster.nodes, &expected).await?;
    all_cross(&mut senders, &mut members, &mut sent).await?;

    let stopped = Instant::now();
    cluster.nodes[0].process.signal("STOP").await?;
    let resumed =
        probe_until_crossed(&mut senders, &mut members, &mut sent, stopped, FOUND_WITHIN).await?;
    eprintln!("NATS node stopped: delivery resumed after {resumed:?} (ping interval {PING:?})");
    gateways[0]
        .process
        .wait_for_log("bus down", STARTUP_TIMEOUT)
        .await?;
    gateways[0]
        .process
        .wait_for_nth_log("bus up", 2, STARTUP_TIMEOUT)
        .await?;
    all_cross(&mut senders, &mut members, &mut sent).await?;
    for (_, member) in &mut members {
        member.drain(e2e::QUIET_PERIOD, &sent).await?;
    }
    assert_no_panics(&gateways.iter().collect::<Vec<_>>())
}

// ---- churn ----------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_leave_churn_leaves_no_subscription_behind() -> Result<()> {
    const CLIENTS: usize = 10;
    const CYCLES_EACH: usize = 500;
    /// Groups shared by the clients, so first joins and last leaves race.
    const SHARED: usize = 13;
    const LIMIT: Duration = Duration::from_secs(30);
    let engine = Engine::one().await?;
    let a = gateway("gw-a", engine.url_for(0), &[]).await?;
    let b = gateway("gw-b", engine.url_for(0), &[]).await?;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        clients.push(a.connect(format!("churn{i}")).await?);
    }
    let started = Instant::now();
    let churn = try_join_all(
        clients
            .iter_mut()
            .enumerate()
            .map(|(c, client)| async move {
                for i in 0..CYCLES_EACH {
                    let group = format!("churn-{}", (c * 7 + i) % SHARED);
                    client.join(&group).await?;
                    client.leave(&group).await?;
                }
                anyhow::Ok(())
            }),
    );
    tokio::time::timeout(LIMIT, churn)
        .await
        .with_context(|| format!("{} cycles took over {LIMIT:?}", CLIENTS * CYCLES_EACH))??;
    let churned = started.elapsed();
    wait_for_interest(engine.nodes(), &interest(&[(&a, &[]), (&b, &[])])).await?;
    a.wait_for_subscriptions(0).await?;
    eprintln!(
        "{} join/leave cycles on NATS in {churned:?}; nothing left subscribed",
        CLIENTS * CYCLES_EACH
    );

    // Still working: a group joined after the churn gets what the other gateway sends.
    clients[0].join("churn-1").await?;
    wait_for_interest(engine.nodes(), &interest(&[(&a, &["churn-1"]), (&b, &[])])).await?;
    let mut sender = b.connect("sender").await?;
    sender.publish("churn-1", "after the churn").await?;
    clients[0].expect_text("after the churn").await?;
    expect_quiet(clients.iter_mut()).await?;
    assert_no_panics(&[&a, &b])
}
