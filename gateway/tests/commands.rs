//! Each client command through a real gateway (its broker embedded), as a client sees it: the
//! ack or the error reply, and what the command did to deliveries, memberships and the bus's
//! subscriptions.
//!
//! "Nothing else arrived" is proven with a marker: one sender's messages reach a member in the
//! order they were sent, so a member whose next message is the sender's marker received nothing
//! the sender sent before it.

use std::time::Duration;

use anyhow::Result;
use gateway::GatewayConfig;
use test_support::gateway::{workers, TestGateway};
use test_support::ws::{add_group, leave_group, send_to_group};
use test_support::{expect_quiet, RECV_TIMEOUT};

const WAIT: Duration = RECV_TIMEOUT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_group_echoes_the_req_id_and_joining_twice_is_one_membership() -> Result<()> {
    let fx = TestGateway::embedded(workers(1)).await?;
    let mut ws = fx.connect("member").await?;
    ws.send_text(r#"{"cmd":"add_group","group_id":"g","req_id":"a string"}"#)
        .await?;
    ws.expect_text(r#"{"cmd":"ack","req_id":"a string"}"#)
        .await?;
    ws.send_text(r#"{"cmd":"add_group","group_id":"g","req_id":7}"#)
        .await?;
    ws.expect_text(r#"{"cmd":"ack","req_id":7}"#).await?;
    // Without a req_id, success is silent: the next frame is the next request's ack.
    ws.send_text(r#"{"cmd":"add_group","group_id":"h"}"#)
        .await?;
    ws.ack(add_group("i")).await?;

    let stats = fx
        .wait_stats("three memberships", |s| s.memberships == 3)
        .await?;
    assert_eq!(stats.groups, 3, "{stats:#?}");
    // g, h and i are wanted from the bus once each.
    fx.wait_stats("three subscriptions", |s| s.bus.subscriptions == 3)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_over_max_groups_is_refused_and_the_connection_keeps_its_groups() -> Result<()> {
    let fx = TestGateway::embedded(GatewayConfig {
        max_groups_per_connection: 2,
        ..workers(1)
    })
    .await?;
    let mut member = fx.connect("member").await?;
    member.ack(add_group("a")).await?;
    member.ack(add_group("b")).await?;
    let refused = member.reply_to(add_group("c")).await?;
    assert_eq!(refused["cmd"], "error", "{refused}");
    assert_eq!(refused["code"], "too_many_groups", "{refused}");
    assert!(
        refused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("at most 2 groups")),
        "{refused}"
    );
    // A group the connection is in already is not a new one.
    member.ack(add_group("a")).await?;

    // Still in a and b, not in c.
    let mut sender = fx.connect("sender").await?;
    for group in ["c", "a", "b"] {
        sender
            .ack(send_to_group(group, format!("to {group}")))
            .await?;
    }
    member.expect_text("to a").await?;
    member.expect_text("to b").await?;
    // Leaving makes room.
    member.ack(leave_group("b")).await?;
    member.ack(add_group("c")).await?;
    sender.ack(send_to_group("c", "to c")).await?;
    member.expect_text("to c").await?;
    expect_quiet([&mut member, &mut sender]).await?;

    let stats = fx.stats();
    assert_eq!(stats.workers[0].errors["too_many_groups"], 1);
    assert_eq!(stats.memberships, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_group_stops_delivery_and_leaving_a_group_not_joined_is_acked() -> Result<()> {
    let fx = TestGateway::embedded(workers(2)).await?;
    let mut member = fx.connect("member").await?;
    member.ack(add_group("g")).await?;
    member.ack(add_group("marker")).await?;
    let mut sender = fx.connect("sender").await?;
    sender.publish("g", "before").await?;
    member.expect_text("before").await?;

    member.ack(leave_group("g")).await?;
    // Leaving again, or a group never joined, changes nothing and is acked all the same.
    member.ack(leave_group("g")).await?;
    member.ack(leave_group("never-joined")).await?;
    fx.wait_stats("one membership", |s| s.memberships == 1)
        .await?;

    sender.publish("g", "after").await?;
    sender.publish("marker", "end").await?;
    // The marker comes next: "after" was not delivered.
    member.expect_text("end").await?;
    expect_quiet([&mut member, &mut sender]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_to_group_is_acked_with_a_req_id_and_silent_without() -> Result<()> {
    let fx = TestGateway::embedded(workers(2)).await?;
    let mut member = fx.connect("member").await?;
    member.ack(add_group("g")).await?;
    let mut outsider = fx.connect("outsider").await?;

    // A sender that is not a member gets the ack and nothing else.
    outsider.ack(send_to_group("g", "acked")).await?;
    member.expect_text("acked").await?;
    outsider.publish("g", "silent").await?;
    member.expect_text("silent").await?;
    // The outsider's next frame is the ack of its next request: nothing came before it.
    outsider.ack(add_group("elsewhere")).await?;

    // A member that sends receives its own message too.
    member.publish("g", "echo").await?;
    member.expect_text("echo").await?;
    expect_quiet([&mut member, &mut outsider]).await?;

    let sends: u64 = fx.stats().workers.iter().map(|w| w.sends).sum();
    assert_eq!(sends, 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_reply_carries_the_req_id_when_it_could_be_read() -> Result<()> {
    let fx = TestGateway::embedded(workers(1)).await?;
    let mut ws = fx.connect("client").await?;
    for (input, code, req_id) in [
        (
            r#"{"cmd":"add_group","group_id":"","req_id":5}"#,
            "invalid_group_id",
            serde_json::json!(5),
        ),
        (
            r#"{"cmd":"jump","req_id":"x"}"#,
            "unknown_cmd",
            serde_json::json!("x"),
        ),
    ] {
        ws.send_text(input).await?;
        let reply = ws.recv_json(WAIT).await?;
        assert_eq!(reply["cmd"], "error", "{input}: {reply}");
        assert_eq!(reply["code"], code, "{input}: {reply}");
        assert_eq!(reply["req_id"], req_id, "{input}: {reply}");
    }
    // The connection is still served.
    ws.ack(add_group("g")).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_member_receives_the_messages_of_its_own_groups_once() -> Result<()> {
    let fx = TestGateway::embedded(workers(2)).await?;
    let mut ab = fx.connect("ab").await?;
    let mut bc = fx.connect("bc").await?;
    for group in ["a", "b"] {
        ab.ack(add_group(group)).await?;
    }
    for group in ["b", "c"] {
        bc.ack(add_group(group)).await?;
    }
    let mut sender = fx.connect("sender").await?;
    for group in ["a", "b", "c", "nobody"] {
        sender.publish(group, &format!("to {group}")).await?;
    }
    ab.expect_text("to a").await?;
    ab.expect_text("to b").await?;
    bc.expect_text("to b").await?;
    bc.expect_text("to c").await?;
    expect_quiet([&mut ab, &mut bc, &mut sender]).await?;
    Ok(())
}

/// The bus is asked for a group when its first member joins on any worker, and told to forget
/// it when its last member leaves: members on other workers do not change that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bus_wants_a_group_from_its_first_member_to_its_last_across_workers() -> Result<()> {
    let fx = TestGateway::embedded(workers(2)).await?;
    let mut first = fx.connect("first").await?;
    let mut second = fx.connect("second").await?;
    fx.wait_stats("one connection on each worker", |s| {
        s.workers.iter().all(|w| w.connections == 1)
    })
    .await?;
    let subscribed = |gateway: u64, broker: u64| {
        move |s: &gateway::stats::GatewaySnapshot| {
            s.bus.subscriptions == gateway
                && s.embedded_broker
                    .as_ref()
                    .is_some_and(|b| b.subscriptions == broker)
        }
    };

    first.ack(add_group("g")).await?;
    fx.wait_stats("g subscribed", subscribed(1, 1)).await?;
    second.ack(add_group("g")).await?;
    fx.wait_stats("two members of g", |s| s.memberships == 2)
        .await?;
    first.ack(leave_group("g")).await?;
    fx.wait_stats("one member of g", |s| s.memberships == 1)
        .await?;
    // A barrier for the bus: its changes are made in order, so once h is subscribed, an
    // unsubscription of g would have been made too. There was none.
    second.ack(add_group("h")).await?;
    fx.wait_stats("g and h subscribed", subscribed(2, 2))
        .await?;

    second.ack(leave_group("g")).await?;
    fx.wait_stats("only h subscribed", subscribed(1, 1)).await?;
    second.close().await?;
    let stats = fx
        .wait_stats("nothing subscribed", subscribed(0, 0))
        .await?;
    assert_eq!((stats.groups, stats.memberships), (0, 0));
    Ok(())
}
