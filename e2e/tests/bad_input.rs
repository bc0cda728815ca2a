//! Bad input: every error reply a client can trigger, and the WebSocket violations that close
//! the offending connection. In every case other clients keep receiving everything.

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use e2e::{expect_quiet, Client, Gateway, GatewayConfig, RECV_TIMEOUT};
use protocol::ErrorCode;
use serde_json::{json, Value};

/// The default limit on a message, in bytes.
const MAX_MESSAGE_SIZE: usize = 64 * 1024;
/// The default limit on a group id, in bytes.
const MAX_GROUP_ID_LEN: usize = 256;

/// What the offending client sends.
#[derive(Debug)]
enum Frame {
    Text(String),
    Binary(Vec<u8>),
}

/// One bad request and the error reply it must get.
#[derive(Debug)]
struct Case {
    frame: Frame,
    code: &'static str,
    /// The `req_id` the reply must echo; `None`: the reply must have no `req_id`.
    req_id: Option<Value>,
}

fn text(frame: impl Into<String>, code: &'static str, req_id: Option<Value>) -> Case {
    Case {
        frame: Frame::Text(frame.into()),
        code,
        req_id,
    }
}

/// A command object with `group_id` set to the JSON text `group_id`.
fn with_group_id(cmd: &str, group_id: &str, req_id: Option<&Value>) -> String {
    let message = if cmd == "send_to_group" {
        r#","message":"must not be delivered""#
    } else {
        ""
    };
    let req_id = req_id.map_or_else(String::new, |r| format!(r#","req_id":{r}"#));
    format!(r#"{{"cmd":"{cmd}","group_id":{group_id}{message}{req_id}}}"#)
}

fn cases() -> Vec<Case> {
    let mut cases = vec![
        text(r#"{"cmd":"add_group","group_id":"#, "invalid_json", None),
        text("not json", "invalid_json", None),
        text("", "invalid_json", None),
        text(
            r#"{"cmd":"send_to_group","group_id":"room","message":"x"} trailing"#,
            "invalid_json",
            None,
        ),
        text("[1,2,3]", "not_an_object", None),
        text(r#""add_group""#, "not_an_object", None),
        text("42", "not_an_object", None),
        text("null", "not_an_object", None),
        text(
            r#"{"cmd":"add_group","group_id":"a","group_id":"b"}"#,
            "duplicate_field",
            None,
        ),
        text(
            r#"{"cmd":"send_to_group","cmd":"send_to_group","group_id":"room","message":"must not be delivered","req_id":11}"#,
            "duplicate_field",
            Some(json!(11)),
        ),
        text(r#"{"group_id":"room"}"#, "missing_field", None),
        text(
            r#"{"group_id":"room","req_id":"no-cmd"}"#,
            "missing_field",
            Some(json!("no-cmd")),
        ),
        text(r#"{"cmd":"add_group"}"#, "missing_field", None),
        text(
            r#"{"cmd":"leave_group","req_id":9}"#,
            "missing_field",
            Some(json!(9)),
        ),
        text(
            r#"{"cmd":"send_to_group","message":"must not be delivered","req_id":10}"#,
            "missing_field",
            Some(json!(10)),
        ),
        text(
            r#"{"cmd":"send_to_group","group_id":"room"}"#,
            "missing_field",
            None,
        ),
        text(
            r#"{"cmd":"send_to_group","group_id":"room","req_id":"no-message"}"#,
            "missing_field",
            Some(json!("no-message")),
        ),
        text(r#"{"cmd":42,"group_id":"room"}"#, "invalid_field", None),
        text(
            r#"{"cmd":["add_group"],"group_id":"room","req_id":12}"#,
            "invalid_field",
            Some(json!(12)),
        ),
        // An invalid req_id cannot be echoed.
        text(
            r#"{"cmd":"add_group","group_id":"room","req_id":-1}"#,
            "invalid_field",
            None,
        ),
        text(
            r#"{"cmd":"add_group","group_id":"room","req_id":1.5}"#,
            "invalid_field",
            None,
        ),
        text(
            r#"{"cmd":"add_group","group_id":"room","req_id":true}"#,
            "invalid_field",
            None,
        ),
        text(
            r#"{"cmd":"add_group","group_id":"room","req_id":{}}"#,
            "invalid_field",
            None,
        ),
        text(
            r#"{"cmd":"add_group","group_id":"room","req_id":null}"#,
            "invalid_field",
            None,
        ),
        text(r#"{"cmd":"join","group_id":"room"}"#, "unknown_cmd", None),
        text(
            r#"{"cmd":"","group_id":"room","req_id":"u"}"#,
            "unknown_cmd",
            Some(json!("u")),
        ),
        text(
            r#"{"cmd":"ADD_GROUP","group_id":"room","req_id":13}"#,
            "unknown_cmd",
            Some(json!(13)),
        ),
        Case {
            frame: Frame::Binary(vec![0, 1, 2, 255]),
            code: "binary_not_supported",
            req_id: None,
        },
    ];
    let too_long = format!("\"{}\"", "x".repeat(MAX_GROUP_ID_LEN + 1));
    let bad_group_ids = [
        "\"\"",
        "[]",
        "[\"room\"]",
        "{}",
        "true",
        "null",
        "1.5",
        &too_long,
    ];
    let req_id = json!("bad-group");
    for cmd in ["add_group", "leave_group", "send_to_group"] {
        for group_id in bad_group_ids {
            cases.push(text(
                with_group_id(cmd, group_id, None),
                "invalid_group_id",
                None,
            ));
            cases.push(text(
                with_group_id(cmd, group_id, Some(&req_id)),
                "invalid_group_id",
                Some(req_id.clone()),
            ));
        }
    }
    cases
}

/// Checks that `reply` is the error reply `case` must get.
fn check_reply(case: &Case, reply: &Value) -> Result<()> {
    ensure!(reply["cmd"] == "error", "not an error reply: {reply}");
    ensure!(
        reply["code"] == case.code,
        "expected code {:?}, got {reply}",
        case.code
    );
    ensure!(
        reply["reason"].as_str().is_some_and(|r| !r.is_empty()),
        "the reply has no reason: {reply}"
    );
    match &case.req_id {
        Some(req_id) => ensure!(
            reply.get("req_id") == Some(req_id),
            "req_id {req_id} not echoed: {reply}"
        ),
        None => ensure!(reply.get("req_id").is_none(), "unexpected req_id: {reply}"),
    }
    Ok(())
}

/// Bystanders: clients in "room" that must see every tick and nothing else.
struct Room {
    ticker: Client,
    members: Vec<Client>,
    ticks: usize,
}

impl Room {
    async fn new(gateway: &Gateway) -> Result<Room> {
        let mut members = Vec::new();
        for i in 0..3 {
            let mut member = gateway.connect(format!("bystander{i}")).await?;
            member.join("room").await?;
            members.push(member);
        }
        Ok(Room {
            ticker: gateway.connect("ticker").await?,
            members,
            ticks: 0,
        })
    }

    /// Sends a tick to the room; every bystander and each of `also` (members too) must get it
    /// as their next frame.
    async fn tick(&mut self, also: &mut [&mut Client]) -> Result<()> {
        let tick = format!("tick {}", self.ticks);
        self.ticks += 1;
        self.ticker.send_to_group("room", &tick).await?;
        for member in self
            .members
            .iter_mut()
            .chain(also.iter_mut().map(|c| &mut **c))
        {
            member.expect_text(&tick).await?;
        }
        Ok(())
    }

    /// Nothing more arrives at the bystanders nor at any of `also`.
    async fn expect_quiet(&mut self, also: &mut [&mut Client]) -> Result<()> {
        expect_quiet(
            self.members
                .iter_mut()
                .chain([&mut self.ticker])
                .chain(also.iter_mut().map(|c| &mut **c)),
        )
        .await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_replies_keep_the_connection_open() -> Result<()> {
    let gateway = Gateway::start(GatewayConfig::embedded("gateway")).await?;
    let mut room = Room::new(&gateway).await?;
    let mut offender = gateway.connect("offender").await?;
    offender.join("room").await?;

    let cases = cases();
    let covered: BTreeSet<&str> = cases.iter().map(|c| c.code).collect();
    let triggerable: BTreeSet<&str> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .filter(|&c| c != "too_many_groups")
        .collect();
    ensure!(
        covered == triggerable,
        "cases cover {covered:?}, not {triggerable:?}"
    );

    for case in &cases {
        match &case.frame {
            Frame::Text(frame) => offender.send_text(frame.clone()).await?,
            Frame::Binary(bytes) => offender.send_binary(bytes.clone()).await?,
        }
        let reply = offender
            .recv_json(RECV_TIMEOUT)
            .await
            .with_context(|| format!("case {case:?}"))?;
        check_reply(case, &reply).with_context(|| format!("case {case:?}"))?;
        // Still open, nothing else came (no delivery of a rejected send), bystanders fine.
        room.tick(&mut [&mut offender])
            .await
            .with_context(|| format!("after case {case:?}"))?;
    }

    // Still a full member: its requests work, with the longest group id allowed too.
    let longest = "y".repeat(MAX_GROUP_ID_LEN);
    offender.join(&longest).await?;
    offender.send_to_group(&longest, "still here").await?;
    offender.expect_text("still here").await?;
    offender.send_to_group("room", "from the offender").await?;
    offender.expect_text("from the offender").await?;
    for member in &mut room.members {
        member.expect_text("from the offender").await?;
    }
    room.tick(&mut [&mut offender]).await?;
    room.expect_quiet(&mut [&mut offender]).await?;
    gateway.process.assert_no_panics()
}

/// A request of exactly `size` bytes sending a padded message to `group`.
fn send_of_size(group: &str, size: usize) -> String {
    let empty = format!(r#"{{"cmd":"send_to_group","group_id":"{group}","message":""}}"#);
    let padding = "p".repeat(size - empty.len());
    format!(r#"{{"cmd":"send_to_group","group_id":"{group}","message":"{padding}"}}"#)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_message_closes_with_1009() -> Result<()> {
    let gateway = Gateway::start(GatewayConfig::embedded("gateway")).await?;
    let mut room = Room::new(&gateway).await?;
    let mut big = gateway.connect("big").await?;
    big.join("room").await?;

    // At the limit: accepted and delivered.
    let at_limit = send_of_size("room", MAX_MESSAGE_SIZE);
    assert_eq!(at_limit.len(), MAX_MESSAGE_SIZE);
    big.send_text(at_limit.clone()).await?;
    let delivered: Value = serde_json::from_str(&at_limit)?;
    let message = delivered["message"].as_str().context("no message")?;
    big.expect_text(message).await?;
    for member in &mut room.members {
        member.expect_text(message).await?;
    }

    // One byte over: the connection is closed with 1009.
    big.send_text(send_of_size("room", MAX_MESSAGE_SIZE + 1))
        .await?;
    let code = big.expect_close(RECV_TIMEOUT).await?;
    ensure!(code == 1009, "expected close code 1009, got {code}");
    room.tick(&mut []).await?;
    room.expect_quiet(&mut []).await?;
    gateway.process.assert_no_panics()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_utf8_closes_with_1007() -> Result<()> {
    let gateway = Gateway::start(GatewayConfig::embedded("gateway")).await?;
    let mut room = Room::new(&gateway).await?;
    let mut offender = gateway.connect("offender").await?;
    offender.join("room").await?;

    let mut payload = br#"{"cmd":"send_to_group","group_id":"room","message":""#.to_vec();
    payload.extend_from_slice(b"\xff\xfe invalid");
    payload.extend_from_slice(br#""}"#);
    offender.send_raw_text_frame(payload).await?;
    let code = offender.expect_close(RECV_TIMEOUT).await?;
    ensure!(code == 1007, "expected close code 1007, got {code}");
    room.tick(&mut []).await?;
    room.expect_quiet(&mut []).await?;
    gateway.process.assert_no_panics()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_groups_is_refused() -> Result<()> {
    let gateway = Gateway::start(
        GatewayConfig::embedded("gateway")
            .arg("--max-groups-per-connection")
            .arg("2"),
    )
    .await?;
    let mut room = Room::new(&gateway).await?;
    let mut joiner = gateway.connect("joiner").await?;
    joiner.join("room").await?;
    joiner.join("second").await?;
    // Joining a group it is already in adds no group.
    joiner.join("room").await?;

    let over_limit = [
        (
            json!({"cmd": "add_group", "group_id": "third", "req_id": "t"}),
            Some(json!("t")),
        ),
        (json!({"cmd": "add_group", "group_id": "third"}), None),
    ];
    for (request, req_id) in over_limit {
        joiner.send_json(&request).await?;
        let reply = joiner.recv_json(RECV_TIMEOUT).await?;
        let case = Case {
            frame: Frame::Text(request.to_string()),
            code: "too_many_groups",
            req_id,
        };
        check_reply(&case, &reply).with_context(|| format!("case {case:?}"))?;
        room.tick(&mut [&mut joiner]).await?;
    }
    // Not a member of "third": a message to it must not reach the joiner.
    room.ticker
        .send_to_group("third", "not for the joiner")
        .await?;
    room.tick(&mut [&mut joiner]).await?;

    // Room for one more group after leaving one.
    joiner.leave("second").await?;
    joiner.join("third").await?;
    room.ticker
        .send_to_group("third", "now for the joiner")
        .await?;
    joiner.expect_text("now for the joiner").await?;
    room.tick(&mut [&mut joiner]).await?;
    room.expect_quiet(&mut [&mut joiner]).await?;
    gateway.process.assert_no_panics()
}
