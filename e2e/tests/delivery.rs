//! Delivery on one gateway: the seed's scenario, fan-out across workers, group id spellings,
//! message values and leaving a group.

use anyhow::{ensure, Result};
use e2e::{expect_quiet, publish_tagged, stat, tagged_streams, Client, Gateway, GatewayConfig};
use futures_util::future::try_join_all;
use serde_json::json;

/// The seed's browser snippet, verbatim: join 123 and send "hello" to it, without `req_id`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario() -> Result<()> {
    let gateway = Gateway::start(GatewayConfig::embedded("gateway")).await?;
    let mut other = gateway.connect("other").await?;
    other.join("123").await?;

    let mut seed = gateway.connect("seed").await?;
    seed.send_text(r#"{"cmd":"add_group", "group_id":"123"}"#)
        .await?;
    seed.send_text(r#"{"cmd":"send_to_group", "group_id":"123", "message":"hello"}"#)
        .await?;
    // Nothing but the message: no ack (no req_id), no error.
    seed.expect_text("hello").await?;
    other.expect_text("hello").await?;

    // Barrier from the same sender: a duplicate of "hello" would come before it.
    seed.send_text(r#"{"cmd":"send_to_group", "group_id":"123", "message":"barrier"}"#)
        .await?;
    seed.expect_text("barrier").await?;
    other.expect_text("barrier").await?;
    // And one from the other member, acknowledged.
    other.send_to_group("123", "barrier 2").await?;
    other.expect_text("barrier 2").await?;
    seed.expect_text("barrier 2").await?;

    expect_quiet([&mut seed, &mut other]).await?;
    gateway.process.assert_no_panics()
}

/// Which of the groups client `i` joins: one, two, or none.
fn groups_of(i: usize) -> &'static [&'static str] {
    match i % 8 {
        0 | 1 => &["alpha"],
        2 => &["beta"],
        3 => &["gamma"],
        4 => &["alpha", "beta"],
        5 => &["gamma", "delta"],
        6 => &["delta"],
        _ => &[],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fan_out_across_workers() -> Result<()> {
    const CLIENTS: usize = 48;
    const COUNT: usize = 5;
    const GROUPS: [&str; 4] = ["alpha", "beta", "gamma", "delta"];
    // Members of one group, of two, and of none.
    const SENDERS: [usize; 4] = [0, 4, 7, 13];

    let gateway = Gateway::start(GatewayConfig::embedded("gateway").workers(4)).await?;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let mut client = gateway.connect(format!("c{i}")).await?;
        for group in groups_of(i) {
            client.join(group).await?;
        }
        clients.push(client);
    }

    let memberships: usize = (0..CLIENTS).map(|i| groups_of(i).len()).sum();
    let stats = gateway
        .admin
        .wait_for_counters(
            "every connection and membership counted",
            &[
                ("/connections", CLIENTS as u64),
                ("/memberships", memberships as u64),
                ("/groups", GROUPS.len() as u64),
            ],
        )
        .await?;
    let workers = stats["workers"].as_array().cloned().unwrap_or_default();
    ensure!(workers.len() == 4, "expected 4 workers in stats: {stats}");
    ensure!(
        workers
            .iter()
            .all(|w| stat(w, "/connections").is_some_and(|n| n > 0)),
        "connections are not spread over all workers: {stats}"
    );
    let per_worker: u64 = workers.iter().filter_map(|w| stat(w, "/connections")).sum();
    ensure!(
        per_worker == CLIENTS as u64,
        "per-worker connections do not add up: {stats}"
    );

    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (i, client) in clients.into_iter().enumerate() {
        if SENDERS.contains(&i) {
            senders.push(client);
        } else {
            receivers.push((i, client));
        }
    }
    try_join_all(
        senders
            .iter_mut()
            .map(|sender| publish_tagged(sender, &GROUPS, COUNT)),
    )
    .await?;

    let sender_names: Vec<String> = SENDERS.iter().map(|i| format!("c{i}")).collect();
    let sender_names: Vec<&str> = sender_names.iter().map(String::as_str).collect();
    let mut everyone: Vec<(usize, Client)> = SENDERS.iter().copied().zip(senders).collect();
    everyone.append(&mut receivers);
    try_join_all(everyone.iter_mut().map(|(i, client)| {
        client.expect_streams(tagged_streams(groups_of(*i), &sender_names, &GROUPS, COUNT))
    }))
    .await?;
    expect_quiet(everyone.iter_mut().map(|(_, client)| client)).await?;
    gateway.process.assert_no_panics()
}

/// `123`, `"123"` and `123.0` name the same group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_id_spellings_name_one_group() -> Result<()> {
    let gateway = Gateway::start(GatewayConfig::embedded("gateway")).await?;
    let spellings = [json!(123), json!("123"), json!(123.0)];
    let mut members = Vec::new();
    for (i, group_id) in spellings.iter().enumerate() {
        let mut member = gateway.connect(format!("member{i}")).await?;
        member
            .request(json!({"cmd": "add_group", "group_id": group_id}))
            .await?;
        members.push(member);
    }
    let mut sender = gateway.connect("sender").await?;
    for (i, group_id) in spellings.iter().enumerate() {
        sender
            .request(
                json!({"cmd": "send_to_group", "group_id": group_id, "message": i.to_string()}),
            )
            .await?;
    }
    for member in &mut members {
        for i in 0..spellings.len() {
            member.expect_text(&i.to_string()).await?;
        }
    }
    gateway
        .admin
        .wait_for_counters(
            "one group with three members",
            &[("/groups", 1), ("/memberships", 3)],
        )
        .await?;
    expect_quiet(members.iter_mut().chain([&mut sender])).await
}

/// A string message arrives as its content; any other JSON value as its compact JSON text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_values_arrive_as_text() -> Result<()> {
    let gateway = Gateway::start(GatewayConfig::embedded("gateway")).await?;
    let mut member = gateway.connect("member").await?;
    member.join("g").await?;
    let mut sender = gateway.connect("sender").await?;
    let cases = [
        (r#""plain""#, "plain"),
        (
            r#""quote \" backslash \\ newline \n é \u00e9 😀""#,
            "quote \" backslash \\ newline \n é é 😀",
        ),
        (
            r#"{ "a" : 1 , "b" : [ 1 , 2.5 , "x y" ] }"#,
            r#"{"a":1,"b":[1,2.5,"x y"]}"#,
        ),
        ("42", "42"),
        ("true", "true"),
        ("null", "null"),
        (r#""""#, ""),
    ];
    for (i, (value, _)) in cases.iter().enumerate() {
        sender
            .send_text(format!(
                r#"{{"cmd":"send_to_group","group_id":"g","message":{value},"req_id":{i}}}"#
            ))
            .await?;
        let ack = sender.recv_json(e2e::RECV_TIMEOUT).await?;
        ensure!(
            ack == json!({"cmd": "ack", "req_id": i}),
            "expected an ack, got {ack}"
        );
    }
    for (value, expected) in cases {
        let got = member.recv_text(e2e::RECV_TIMEOUT).await?;
        ensure!(
            got == expected,
            "message {value} arrived as {got:?}, expected {expected:?}"
        );
    }
    expect_quiet([&mut member, &mut sender]).await
}

/// After leave_group a client receives nothing more from the group; its other groups still work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leave_group_stops_delivery() -> Result<()> {
    let gateway = Gateway::start(GatewayConfig::embedded("gateway")).await?;
    let mut leaver = gateway.connect("leaver").await?;
    let mut stayer = gateway.connect("stayer").await?;
    for client in [&mut leaver, &mut stayer] {
        client.join("left").await?;
        client.join("kept").await?;
    }
    stayer.send_to_group("left", "before").await?;
    stayer.expect_text("before").await?;
    leaver.expect_text("before").await?;

    leaver.leave("left").await?;
    stayer.send_to_group("left", "after").await?;
    stayer.send_to_group("kept", "barrier").await?;
    stayer.expect_text("after").await?;
    stayer.expect_text("barrier").await?;
    leaver.expect_text("barrier").await?;
    expect_quiet([&mut leaver, &mut stayer]).await?;
    gateway
        .admin
        .wait_for_counters("the leaver's membership gone", &[("/memberships", 3)])
        .await?;
    Ok(())
}
