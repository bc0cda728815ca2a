//! The cluster-wide API across three gateways in this process, linked through the embedded
//! broker of the first: client ids and uids, sends to a uid, a client and everyone, `exclude`,
//! counts and member lists, presence events. (e2e/tests/cluster_api.rs runs the same API over
//! the real binaries on every carrier.)

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use gateway::{Gateway, GatewayConfig};
use serde_json::{json, Value};
use test_support::gateway::TestGateway;
use test_support::ws::{expect_quiet, Client};
use test_support::RECV_TIMEOUT;

/// Three gateways: the first runs the broker, the others link to it; each knows the others.
async fn three() -> Result<Vec<TestGateway>> {
    let config = || GatewayConfig {
        workers: Some(2),
        node_heartbeat: Duration::from_millis(200),
        node_timeout: Duration::from_secs(2),
        ..GatewayConfig::default()
    };
    let listener = test_support::net::listener().await?;
    let broker = listener.local_addr()?;
    let a = TestGateway::start(Gateway::builder(config()).embedded_broker(listener)).await?;
    a.wait_ready().await?;
    let mut gateways = vec![a];
    for _ in 0..2 {
        let g = TestGateway::start(Gateway::builder(config()).broker(broker.to_string())).await?;
        g.wait_ready().await?;
        gateways.push(g);
    }
    for g in &gateways {
        g.wait_stats("every gateway knows the two others", |s| {
            s.cluster.other_nodes == 2
        })
        .await?;
    }
    Ok(gateways)
}

async fn whoami(client: &mut Client) -> Result<Value> {
    client.reply_to(json!({"cmd": "whoami"})).await
}

async fn client_id(client: &mut Client) -> Result<String> {
    let reply = whoami(client).await?;
    reply["client_id"]
        .as_str()
        .map(str::to_owned)
        .context("whoami has a client_id")
}

#[tokio::test]
async fn sends_reach_exactly_who_they_name_on_every_gateway() -> Result<()> {
    let gateways = three().await?;
    let mut on_a = gateways[0].connect("u1-on-a").await?;
    let mut on_b = gateways[1].connect("u1-on-b").await?;
    let mut other_b = gateways[1].connect("other-on-b").await?;
    let mut on_c = gateways[2].connect("sender-on-c").await?;
    for c in [&mut on_a, &mut on_b] {
        c.ack(json!({"cmd": "bind_uid", "uid": "u1"})).await?;
    }
    let me = whoami(&mut on_a).await?;
    assert_eq!(me["uid"], "u1");
    assert_eq!(me["groups"], json!([]));
    let id_b = client_id(&mut on_b).await?;
    let id_other = client_id(&mut other_b).await?;
    assert_ne!(
        id_b[..16],
        client_id(&mut on_a).await?[..16],
        "different nodes"
    );

    // Each gateway holds the control topic and its own; A and B each hold u1's topic too.
    gateways[0]
        .wait_stats("the broker holds both gateways' subscriptions to u1", |s| {
            s.embedded_broker
                .is_some_and(|b| b.cluster_subscriptions == 3 * 2 + 2)
        })
        .await?;

    on_c.ack(json!({"cmd": "send_to_uid", "uid": "u1", "message": "to u1"}))
        .await?;
    on_a.expect_text("to u1").await?;
    on_b.expect_text("to u1").await?;

    on_c.ack(json!({"cmd": "send_to_client", "client_id": id_other, "message": "just you"}))
        .await?;
    other_b.expect_text("just you").await?;

    on_c.ack(json!({"cmd": "send_to_all", "message": "everyone", "exclude": [id_b]}))
        .await?;
    on_a.expect_text("everyone").await?;
    other_b.expect_text("everyone").await?;
    on_c.expect_text("everyone").await?;
    expect_quiet([&mut on_a, &mut on_b, &mut other_b, &mut on_c]).await?;

    for c in [&mut on_a, &mut on_b, &mut other_b] {
        c.join("room").await?;
    }
    gateways[0]
        .wait_stats("A and B subscribed to room", |s| {
            s.embedded_broker.is_some_and(|b| b.subscriptions == 2)
        })
        .await?;
    on_a.ack(json!({"cmd": "send_to_group", "group_id": "room", "message": "not to b", "exclude": [id_b]}))
        .await?;
    on_a.expect_text("not to b").await?;
    other_b.expect_text("not to b").await?;
    expect_quiet([&mut on_a, &mut on_b, &mut other_b, &mut on_c]).await?;
    Ok(())
}

#[tokio::test]
async fn counts_members_and_presence_span_the_cluster() -> Result<()> {
    let gateways = three().await?;
    let mut watcher = gateways[0].connect("watcher").await?;
    watcher
        .ack(json!({"cmd": "add_group", "group_id": "room", "presence": true}))
        .await?;
    let mut plain = gateways[0].connect("plain").await?;
    let plain_id = client_id(&mut plain).await?;
    plain.join("room").await?;
    // A member that did not ask for presence is still announced to those who did.
    let event: Value = serde_json::from_str(&watcher.recv_text(RECV_TIMEOUT).await?)?;
    assert_eq!(
        event,
        json!({"cmd": "join", "group_id": "room", "client_id": plain_id, "uid": null})
    );
    let mut joiner = gateways[2].connect("joiner").await?;
    joiner.ack(json!({"cmd": "bind_uid", "uid": "42"})).await?;
    let joiner_id = client_id(&mut joiner).await?;
    // Each gateway's two permanent topics, A's presence topic of room, C's topic of uid 42.
    gateways[0]
        .wait_stats("the broker holds room's presence topic", |s| {
            s.embedded_broker
                .is_some_and(|b| b.cluster_subscriptions == 3 * 2 + 2)
        })
        .await?;
    joiner.join("room").await?;
    // The watcher's gateway holds room's presence topic: the event crosses the bus.
    let event: Value = serde_json::from_str(&watcher.recv_text(RECV_TIMEOUT).await?)?;
    assert_eq!(
        event,
        json!({"cmd": "join", "group_id": "room", "client_id": joiner_id, "uid": "42"})
    );

    let count = plain
        .reply_to(json!({"cmd": "count", "group_id": "room"}))
        .await?;
    assert_eq!(count["connections"], 3, "{count}");
    assert_eq!(count["uids"], 1, "{count}");
    assert_eq!(count["nodes"]["missing"], json!([]), "{count}");
    assert_eq!(
        count["nodes"]["answered"].as_array().map(Vec::len),
        Some(3),
        "{count}"
    );

    let page = plain
        .reply_to(json!({"cmd": "members", "group_id": "room", "limit": 2}))
        .await?;
    let first: Vec<Value> = page["members"].as_array().cloned().unwrap_or_default();
    ensure!(first.len() == 2 && !page["cursor"].is_null(), "{page}");
    let rest = plain
        .reply_to(
            json!({"cmd": "members", "group_id": "room", "limit": 2, "cursor": page["cursor"]}),
        )
        .await?;
    let second: Vec<Value> = rest["members"].as_array().cloned().unwrap_or_default();
    ensure!(second.len() == 1 && rest["cursor"].is_null(), "{rest}");
    let ids: Vec<&str> = first
        .iter()
        .chain(&second)
        .filter_map(|m| m["client_id"].as_str())
        .collect();
    assert!(ids.contains(&joiner_id.as_str()), "{ids:?}");

    joiner.leave("room").await?;
    let event: Value = serde_json::from_str(&watcher.recv_text(RECV_TIMEOUT).await?)?;
    assert_eq!(event["cmd"], "leave");
    assert_eq!(event["client_id"], joiner_id.as_str());
    expect_quiet([&mut watcher, &mut plain, &mut joiner]).await?;
    Ok(())
}

/// A gateway that stops says bye: the others forget it at once, not after `--node-timeout`.
#[tokio::test]
async fn a_stopping_gateway_leaves_the_others_at_once() -> Result<()> {
    let mut gateways = three().await?;
    let mut leaving = gateways.pop().context("three gateways")?;
    let timeout = leaving.gateway.config().node_timeout;
    let stopped = std::time::Instant::now();
    leaving.shutdown.cancel();
    leaving.stopped().await?;
    for g in &gateways {
        g.wait_stats("the stopped gateway forgotten", |s| {
            s.cluster.other_nodes == 1
        })
        .await?;
    }
    let took = stopped.elapsed();
    ensure!(
        took < timeout / 2,
        "forgotten after {took:?}: by its bye, not by the node timeout ({timeout:?})"
    );
    Ok(())
}
