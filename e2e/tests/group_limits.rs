//! No client can cut a gateway off the cluster by joining many groups (issue: "unauthenticated
//! clients can cut a whole gateway off the cluster"): the gateway caps its distinct groups
//! (`--max-groups`) and answers the join past it; a broker over its `--max-channels-per-link`
//! refuses the extra subscriptions and keeps the link, which the gateway shows in its stats and
//! metrics, while every other group keeps flowing between gateways.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e::{expect_quiet, stat, Broker, Gateway, GatewayConfig, RECV_TIMEOUT};
use serde_json::{json, Value};

/// A join's error reply: its code and reason.
async fn join_refused(client: &mut e2e::Client, group: &str) -> Result<(String, String)> {
    client
        .send_json(&json!({"cmd": "add_group", "group_id": group, "req_id": 1}))
        .await?;
    let reply: Value = client.recv_json(RECV_TIMEOUT).await?;
    ensure!(
        reply["cmd"] == "error",
        "expected an error reply, got {reply}"
    );
    Ok((
        reply["code"].as_str().unwrap_or_default().to_owned(),
        reply["reason"].as_str().unwrap_or_default().to_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_caps_its_groups_and_answers_the_join_past_the_cap() -> Result<()> {
    let gateway = Gateway::start(
        GatewayConfig::embedded("gateway")
            .workers(2)
            .arg("--max-groups")
            .arg("5"),
    )
    .await?;
    let mut greedy = gateway.connect("greedy").await?;
    for i in 0..5 {
        greedy.join(&format!("g{i}")).await?;
    }
    let (code, reason) = join_refused(&mut greedy, "g5").await?;
    ensure!(code == "too_many_groups", "code {code}: {reason}");
    ensure!(
        reason.contains("--max-groups"),
        "reason names the setting: {reason}"
    );

    // Others may still join the groups that exist, on either worker, and get their messages.
    let mut other = gateway.connect("other").await?;
    other.join("g0").await?;
    let (code, _) = join_refused(&mut other, "g6").await?;
    ensure!(code == "too_many_groups");
    greedy.send_to_group("g0", "still flowing").await?;
    other.expect_text("still flowing").await?;
    greedy.expect_text("still flowing").await?;

    // A group left by all frees its place.
    greedy.leave("g4").await?;
    other.join("g6").await?;
    let stats = gateway.admin.stats().await?;
    ensure!(stat(&stats, "/groups_refused") == Some(2), "{stats:#}");
    ensure!(stat(&stats, "/groups") == Some(5), "{stats:#}");
    let (_, metrics) = gateway.admin.get("/metrics").await?;
    ensure!(
        metrics
            .lines()
            .any(|l| l == "gateway_groups_refused_total 2"),
        "{metrics}"
    );
    expect_quiet([&mut greedy, &mut other]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_over_its_channel_limit_refuses_subscriptions_and_keeps_the_link() -> Result<()> {
    let broker = Broker::start_with(
        "broker",
        std::net::SocketAddr::from(([127, 0, 0, 1], 0)),
        // Three groups, and the two cluster topics every gateway holds (the control topic and
        // its own), which it subscribes first.
        &["--broker-max-channels-per-link".into(), "5".into()],
    )
    .await?;
    let a = Gateway::start(GatewayConfig::with_broker("gateway-a", broker.addr).workers(1)).await?;
    let b = Gateway::start(GatewayConfig::with_broker("gateway-b", broker.addr).workers(1)).await?;

    // On A, one client joins more groups than the broker takes from one link: first three,
    // which fill A's link (with its two cluster topics), then three more, which are refused.
    // In two steps, so that which ones are refused does not depend on how the gateway batches
    // its subscriptions.
    let mut greedy = a.connect("greedy").await?;
    for i in 0..3 {
        greedy.join(&format!("g{i}")).await?;
    }
    broker
        .admin
        .wait_for_counters(
            "A's three groups subscribed (beside each gateway's two cluster topics)",
            &[("/subscriptions", 3), ("/cluster_subscriptions", 4)],
        )
        .await?;
    for i in 3..6 {
        greedy.join(&format!("g{i}")).await?;
    }
    let stats = a
        .admin
        .wait_for_stats("3 subscriptions refused", |s| {
            stat(s, "/bus/subscriptions_refused") == Some(3)
        })
        .await?;
    ensure!(stats["bus"]["up"] == true, "{stats:#}");

    // The link stays up: a member on A of an accepted group gets what B sends, and the
    // refusal costs no reconnect.
    let mut member = a.connect("member").await?;
    member.join("g0").await?;
    let mut sender = b.connect("sender").await?;
    let broker_stats = broker.admin.stats().await?;
    ensure!(
        stat(&broker_stats, "/subscriptions_refused") == Some(3),
        "the broker counts its refusals: {broker_stats:#}"
    );
    sender.send_to_group("g0", "across").await?;
    member.expect_text("across").await?;
    greedy.expect_text("across").await?;
    // An observation window: before the fix the link was dropped at once and reconnected
    // within the backoff (100 ms to 1 s).
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let stats = a.admin.stats().await?;
    ensure!(
        stat(&stats, "/bus/reconnects") == Some(0) && stats["bus"]["up"] == true,
        "the link did not flap: {stats:#}"
    );
    let (_, metrics) = a.admin.get("/metrics").await?;
    ensure!(
        metrics
            .lines()
            .any(|l| l == "gateway_bus_subscriptions_refused_total 3"),
        "{metrics}"
    );
    expect_quiet([&mut member, &mut greedy, &mut sender])
        .await
        .context("nothing else arrives")
}
