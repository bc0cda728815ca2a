//! Several gateways on one standalone broker: delivery across servers, cleanup of every
//! counter once clients leave, and a broker restart.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, ensure, Result};
use e2e::numbered::{Receiver, Sender};
use e2e::seed;
use e2e::{expect_quiet, stat, Broker, Gateway, GatewayConfig, EXIT_TIMEOUT, STARTUP_TIMEOUT};
use tokio::time::Instant;

/// A broker and two gateways linked to it.
async fn cluster(workers: usize) -> Result<(Broker, Gateway, Gateway)> {
    let broker = Broker::start("broker").await?;
    let a = Gateway::start(GatewayConfig::with_broker("gateway-a", broker.addr).workers(workers));
    let b = Gateway::start(GatewayConfig::with_broker("gateway-b", broker.addr).workers(workers));
    let (a, b) = tokio::try_join!(a, b)?;
    Ok((broker, a, b))
}

/// Waits until the broker holds `subscriptions` (link, group) pairs.
async fn wait_for_broker_subscriptions(broker: &Broker, subscriptions: u64) -> Result<()> {
    broker
        .admin
        .wait_for_counters(
            &format!("subscriptions == {subscriptions}"),
            &[("/subscriptions", subscriptions)],
        )
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_across_servers() -> Result<()> {
    const COUNT: usize = 5;
    let (broker, gateway_a, gateway_b) = cluster(2).await?;

    // a0..a9 and b0..b9.
    let mut members = seed::join_members(&[&gateway_a, &gateway_b], 10).await?;
    // Both gateways have members of both groups.
    gateway_a.wait_for_subscriptions(2).await?;
    gateway_b.wait_for_subscriptions(2).await?;
    wait_for_broker_subscriptions(&broker, 4).await?;

    // A member of one group, of two, and of none on each side.
    let senders = ["a0", "a3", "a4", "b1", "b3", "b4"];
    seed::exchange(&mut members, &senders, COUNT).await?;

    let stats = broker.admin.stats().await?;
    let publishes = (senders.len() * seed::GROUPS.len() * COUNT) as u64;
    ensure!(
        stat(&stats, "/publishes") == Some(publishes),
        "the broker should count {publishes} publishes: {stats}"
    );
    for process in [&broker.process, &gateway_a.process, &gateway_b.process] {
        process.assert_no_panics()?;
    }
    Ok(())
}

/// Every counter that describes clients, memberships and subscriptions.
const CLIENT_COUNTERS: [&str; 4] = [
    "/connections",
    "/groups",
    "/memberships",
    "/bus/subscriptions",
];

fn all_zero(stats: &serde_json::Value) -> bool {
    let workers_zero = stats["workers"].as_array().is_some_and(|workers| {
        workers.iter().all(|w| {
            ["/connections", "/groups", "/memberships"]
                .iter()
                .all(|p| stat(w, p) == Some(0))
        })
    });
    workers_zero && CLIENT_COUNTERS.iter().all(|p| stat(stats, p) == Some(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_return_to_zero_when_clients_leave() -> Result<()> {
    let (broker, gateway_a, gateway_b) = cluster(2).await?;
    // a: x, x+y, z, x, x+y, z; b: x only.
    let mut a_clients = Vec::new();
    for i in 0..6 {
        let mut client = gateway_a.connect(format!("a{i}")).await?;
        let groups: &[&str] = match i % 3 {
            0 => &["x"],
            1 => &["x", "y"],
            _ => &["z"],
        };
        for group in groups {
            client.join(group).await?;
        }
        a_clients.push(client);
    }
    let mut b_clients = Vec::new();
    for i in 0..4 {
        let mut client = gateway_b.connect(format!("b{i}")).await?;
        client.join("x").await?;
        b_clients.push(client);
    }
    gateway_a
        .admin
        .wait_for_counters(
            "6 connections, 3 groups, 8 memberships",
            &[("/connections", 6), ("/groups", 3), ("/memberships", 8)],
        )
        .await?;
    gateway_a.wait_for_subscriptions(3).await?;
    gateway_b
        .admin
        .wait_for_counters(
            "4 connections, 1 group, 4 memberships",
            &[("/connections", 4), ("/groups", 1), ("/memberships", 4)],
        )
        .await?;
    gateway_b.wait_for_subscriptions(1).await?;
    broker
        .admin
        .wait_for_counters(
            "2 links, 3 channels, 4 subscriptions",
            &[("/links", 2), ("/channels", 3), ("/subscriptions", 4)],
        )
        .await?;

    // Leaving: "y" loses both members (a1, a4), so gateway a unsubscribes from it.
    for i in [1, 4] {
        a_clients[i].leave("y").await?;
    }
    gateway_a
        .admin
        .wait_for_counters(
            "2 groups, 6 memberships after leaving y",
            &[("/groups", 2), ("/memberships", 6)],
        )
        .await?;
    gateway_a.wait_for_subscriptions(2).await?;
    broker
        .admin
        .wait_for_counters("channel y gone", &[("/channels", 2), ("/subscriptions", 3)])
        .await?;

    // Gone three ways: leave every group then close, close cleanly, or just drop the TCP
    // connection.
    let mut all = a_clients;
    all.append(&mut b_clients);
    for (i, mut client) in all.into_iter().enumerate() {
        match i % 3 {
            0 => {
                for group in ["x", "z"] {
                    // Leaving a group one is not in is acked too (no-op).
                    client.leave(group).await?;
                }
                client.close().await?;
            }
            1 => client.close().await?,
            _ => drop(client),
        }
    }
    for gateway in [&gateway_a, &gateway_b] {
        gateway
            .admin
            .wait_for_stats("every client counter back to 0", all_zero)
            .await?;
    }
    broker
        .admin
        .wait_for_counters(
            "no channels and no subscriptions",
            &[("/channels", 0), ("/subscriptions", 0), ("/links", 2)],
        )
        .await?;
    for process in [&broker.process, &gateway_a.process, &gateway_b.process] {
        process.assert_no_panics()?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart() -> Result<()> {
    let (mut broker, gateway_a, gateway_b) = cluster(2).await?;
    let broker_addr = broker.addr;

    // Members a1, a2 on gateway a and b1, b2 on gateway b; senders sa, sb in no group.
    let mut members = Vec::new();
    for (name, gateway) in [
        ("a1", &gateway_a),
        ("a2", &gateway_a),
        ("b1", &gateway_b),
        ("b2", &gateway_b),
    ] {
        let mut client = gateway.connect(name).await?;
        client.join("room").await?;
        members.push(Receiver::new(client));
    }
    let mut sa = Sender::new(gateway_a.connect("sa").await?, "room");
    let mut sb = Sender::new(gateway_b.connect("sb").await?, "room");
    wait_for_broker_subscriptions(&broker, 2).await?;
    let mut sent = BTreeMap::new();

    // Before: both directions work.
    let before = [sa.send(&mut sent).await?, sb.send(&mut sent).await?];
    for member in &mut members {
        member.require(&before, &sent).await?;
    }

    // Outage.
    broker.process.kill(EXIT_TIMEOUT).await?;
    for gateway in [&gateway_a, &gateway_b] {
        gateway
            .process
            .wait_for_log("bus down", STARTUP_TIMEOUT)
            .await?;
        gateway.admin.wait_for_status("/readyz", 503).await?;
        gateway.admin.wait_for_status("/healthz", 200).await?;
    }
    // Local delivery does not depend on the broker.
    let outage_a = [sa.send(&mut sent).await?];
    let outage_b = [sb.send(&mut sent).await?];
    for (i, member) in members.iter_mut().enumerate() {
        let local = if i < 2 { &outage_a } else { &outage_b };
        member.require(local, &sent).await?;
    }

    // Restart on the same port, then probe both directions until messages cross again.
    let restarted = Instant::now();
    let broker = Broker::start_on("broker (restarted)", broker_addr).await?;
    let listening_after = restarted.elapsed();
    let resume_deadline = restarted + Duration::from_secs(5);
    let (first_a, first_b) = (sa.next(), sb.next());
    let mut probes = Vec::new();
    let mut resumed_a_to_b = None;
    let mut resumed_b_to_a = None;
    while resumed_a_to_b.is_none() || resumed_b_to_a.is_none() {
        if Instant::now() >= resume_deadline {
            let stats = broker.admin.stats().await;
            bail!(
                "cross-gateway delivery did not resume within 5 s of the broker restart \
                 (a->b after {resumed_a_to_b:?}, b->a after {resumed_b_to_a:?}); broker stats: \
                 {stats:?}"
            );
        }
        probes.push(sa.send(&mut sent).await?);
        probes.push(sb.send(&mut sent).await?);
        // About 20 ms per round: the waits for messages pace the probes.
        for member in &mut members {
            member.drain(Duration::from_millis(5), &sent).await?;
        }
        if resumed_a_to_b.is_none() && members[2..].iter().all(|m| m.got_from("sa", first_a)) {
            resumed_a_to_b = Some(restarted.elapsed());
        }
        if resumed_b_to_a.is_none() && members[..2].iter().all(|m| m.got_from("sb", first_b)) {
            resumed_b_to_a = Some(restarted.elapsed());
        }
    }
    eprintln!(
        "broker restart: new broker listening after {listening_after:?}; cross-gateway delivery \
         resumed a->b after {resumed_a_to_b:?}, b->a after {resumed_b_to_a:?} ({} probes)",
        probes.len()
    );
    for gateway in [&gateway_a, &gateway_b] {
        gateway
            .process
            .wait_for_nth_log("bus up", 2, STARTUP_TIMEOUT)
            .await?;
        gateway.admin.wait_for_status("/readyz", 200).await?;
        // Its three clients are all still connected, and the link counted its reconnection.
        gateway
            .admin
            .wait_for_stats("3 connections and a reconnected, resubscribed link", |s| {
                stat(s, "/connections") == Some(3)
                    && s.pointer("/bus/up") == Some(&true.into())
                    && stat(s, "/bus/reconnects").is_some_and(|n| n >= 1)
                    && stat(s, "/bus/subscriptions") == Some(1)
            })
            .await?;
    }

    // After: every member gets all local probes and the final message of both senders; a
    // cross-gateway probe may have been lost while the link was down, never duplicated.
    let after = [sa.send(&mut sent).await?, sb.send(&mut sent).await?];
    for (i, member) in members.iter_mut().enumerate() {
        let local = if i < 2 { "sa" } else { "sb" };
        let mut required: Vec<(String, u64)> = probes
            .iter()
            .filter(|(sender, _)| sender == local)
            .cloned()
            .collect();
        required.extend(after.iter().cloned());
        member.require(&required, &sent).await?;
    }
    // Nobody was disconnected (a close frame would have failed a check above) or got extras.
    expect_quiet(
        members
            .iter_mut()
            .map(|m| &mut m.client)
            .chain([&mut sa.client, &mut sb.client]),
    )
    .await?;
    for process in [&broker.process, &gateway_a.process, &gateway_b.process] {
        process.assert_no_panics()?;
    }
    Ok(())
}

/// Interest routing: a gateway with no member of a group receives nothing for it on its broker
/// link, not even when one of its own clients sends to that group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_without_members_receives_nothing_for_the_group() -> Result<()> {
    const COUNT: usize = 100;
    let (broker, gateway_a, gateway_b) = cluster(2).await?;
    let mut member = gateway_a.connect("member-a").await?;
    member.join("only-on-a").await?;
    let mut other = gateway_b.connect("member-b").await?;
    other.join("only-on-b").await?;
    gateway_a.wait_for_subscriptions(1).await?;
    gateway_b.wait_for_subscriptions(1).await?;
    wait_for_broker_subscriptions(&broker, 2).await?;

    // A client of gateway b, not a member, sends to a's group.
    let mut sender = gateway_b.connect("sender-b").await?;
    for i in 0..COUNT {
        sender.send_to_group("only-on-a", &format!("m{i}")).await?;
    }
    for i in 0..COUNT {
        member.expect_text(&format!("m{i}")).await?;
    }
    let a = gateway_a.admin.stats().await?;
    let b = gateway_b.admin.stats().await?;
    ensure!(
        stat(&a, "/bus/messages_in") == Some(COUNT as u64),
        "gateway a received {:?} link messages, expected {COUNT}",
        stat(&a, "/bus/messages_in")
    );
    ensure!(
        stat(&b, "/bus/messages_in") == Some(0),
        "gateway b has no member of the group but received {:?} link messages",
        stat(&b, "/bus/messages_in")
    );
    let relayed = stat(&broker.admin.stats().await?, "/deliveries");
    ensure!(
        relayed == Some(COUNT as u64),
        "the broker relayed {relayed:?} messages, expected {COUNT} (one per publish, to a only)"
    );
    expect_quiet([&mut member, &mut other, &mut sender]).await?;
    Ok(())
}
