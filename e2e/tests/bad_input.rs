//! Bad input: every error reply a client can trigger, the WebSocket violations that close the
//! offending connection, and a corpus of hostile frames and payloads (docs/protocol.md, "Hostile
//! input and the answer it gets"). In every case the other clients on the same worker keep
//! their connections and receive everything.

use std::collections::BTreeSet;

use anyhow::{ensure, Context, Result};
use e2e::{expect_quiet, stat, Client, Event, Gateway, GatewayConfig, RawFrame, RECV_TIMEOUT};
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
        // Text that only starts like an array or a number is not JSON either.
        text("[", "invalid_json", None),
        text("[1,", "invalid_json", None),
        text("12x", "invalid_json", None),
        text("[] garbage", "invalid_json", None),
        text("[1,2,3]", "not_an_object", None),
        text("1e400", "not_an_object", None),
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
        // Not JSON as RFC 8259 has it: a byte order mark, NaN, comments.
        text(
            "\u{feff}{\"cmd\":\"add_group\",\"group_id\":\"room\"}",
            "invalid_json",
            None,
        ),
        text(
            r#"{"cmd":"add_group","group_id":NaN}"#,
            "invalid_json",
            None,
        ),
        text(
            r#"{"cmd":"add_group",/* hi */"group_id":"room"}"#,
            "invalid_json",
            None,
        ),
        // A key that does not decode: a lone surrogate.
        text(
            r#"{"\ud800":1,"cmd":"add_group","group_id":"room"}"#,
            "invalid_json",
            None,
        ),
        // Deep nesting costs no stack: unbalanced is invalid JSON, balanced is not an object.
        text(
            format!(
                r#"{{"cmd":"send_to_group","group_id":"room","message":{}"#,
                "[".repeat(60_000)
            ),
            "invalid_json",
            None,
        ),
        text("[".repeat(60_000), "invalid_json", None),
        text(
            format!("{}{}", "[".repeat(30_000), "]".repeat(30_000)),
            "not_an_object",
            None,
        ),
        // Numbers too large to name a group exactly.
        text(
            r#"{"cmd":"add_group","group_id":1e400}"#,
            "invalid_group_id",
            None,
        ),
        text(
            r#"{"cmd":"add_group","group_id":99999999999999999999}"#,
            "invalid_group_id",
            None,
        ),
        text(
            r#"{"cmd":"add_group","group_id":{"a":{"b":[1]}}}"#,
            "invalid_group_id",
            None,
        ),
        // Escapes that decode to no text: a lone surrogate.
        text(
            r#"{"cmd":"add_group","group_id":"\ud800"}"#,
            "invalid_group_id",
            None,
        ),
        text(
            r#"{"cmd":"send_to_group","group_id":"room","message":"\ud800x"}"#,
            "invalid_field",
            None,
        ),
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
        // Numbers a float would round to another group's id: 2^53 and 0.
        "9007199254740993.0",
        "9007199254740992.5",
        "1e-400",
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
    // One worker: the offender and the bystanders share it.
    let gateway = Gateway::start(GatewayConfig::embedded("gateway").workers(1)).await?;
    let mut room = Room::new(&gateway).await?;
    let mut offender = gateway.connect("offender").await?;
    offender.join("room").await?;

    let cases = cases();
    let covered: BTreeSet<&str> = cases.iter().map(|c| c.code).collect();
    // Codes that need a setting or a volume of their own have their own tests.
    let elsewhere = [
        "too_many_groups",
        "rate_limited",
        "unauthorized",
        "forbidden",
    ];
    let triggerable: BTreeSet<&str> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str())
        .filter(|c| !elsewhere.contains(c))
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

/// A numeric group id names the exact integer it writes: numbers that a float would round to
/// 2^53 or to 0 are refused, and reach neither group's members; exact spellings reach them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numeric_group_ids_name_one_group_exactly() -> Result<()> {
    let gateway = Gateway::start(GatewayConfig::embedded("gateway").workers(1)).await?;
    let mut room = Room::new(&gateway).await?;
    let mut at_2_53 = gateway.connect("member of 2^53").await?;
    at_2_53.join("9007199254740992").await?;
    let mut at_0 = gateway.connect("member of 0").await?;
    at_0.join("0").await?;
    let mut sender = gateway.connect("sender").await?;

    let req_id = json!("near");
    for group_id in ["9007199254740993.0", "9007199254740992.5", "1e-400"] {
        for cmd in ["add_group", "send_to_group"] {
            let frame = with_group_id(cmd, group_id, Some(&req_id));
            sender.send_text(frame.clone()).await?;
            let reply = sender.recv_json(RECV_TIMEOUT).await?;
            let case = text(frame, "invalid_group_id", Some(req_id.clone()));
            check_reply(&case, &reply).with_context(|| format!("case {case:?}"))?;
            room.tick(&mut [])
                .await
                .with_context(|| format!("after {case:?}"))?;
        }
    }
    // Nothing reached the groups; a refused add_group joined nothing.
    room.expect_quiet(&mut [&mut at_2_53, &mut at_0, &mut sender])
        .await?;

    // Exact spellings of the same integers reach their groups.
    for (group_id, to_2_53) in [
        ("9007199254740992.0", true),
        ("9.007199254740992e15", true),
        ("0e-400", false),
        ("-0.0", false),
    ] {
        let member = if to_2_53 { &mut at_2_53 } else { &mut at_0 };
        let message = format!("to {group_id}");
        let frame = format!(
            r#"{{"cmd":"send_to_group","group_id":{group_id},"message":"{message}","req_id":1}}"#
        );
        sender.send_text(frame).await?;
        let reply = sender.recv_json(RECV_TIMEOUT).await?;
        ensure!(
            reply == json!({"cmd": "ack", "req_id": 1}),
            "{group_id}: {reply}"
        );
        member.expect_text(&message).await?;
    }
    room.tick(&mut []).await?;
    room.expect_quiet(&mut [&mut at_2_53, &mut at_0, &mut sender])
        .await?;
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

/// The largest message the hostile-input gateway accepts: room for the deep and the long
/// payloads of the corpus.
const CORPUS_MAX_MESSAGE_SIZE: usize = 2 * 1024 * 1024;

/// What a hostile input must get.
#[derive(Debug)]
enum Answer {
    /// The connection is closed with this code.
    Close(u16),
    /// The input works: its message reaches the offender, a member of "sink", as this text
    /// (and the connection still serves requests).
    Delivered(String),
    /// `rate_limited` error replies and deliveries of "f", then a close with 1008.
    RateLimitedThenClosed,
}

/// One abusive input, sent by a fresh offender that has joined "sink".
#[derive(Debug)]
struct Hostile {
    name: &'static str,
    frames: Vec<RawFrame>,
    answer: Answer,
}

fn hostile(name: &'static str, frames: Vec<RawFrame>, answer: Answer) -> Hostile {
    Hostile {
        name,
        frames,
        answer,
    }
}

/// A `send_to_group` to "sink" with `message` as its raw JSON value.
fn to_sink(message: &str) -> String {
    format!(r#"{{"cmd":"send_to_group","group_id":"sink","message":{message}}}"#)
}

fn hostile_inputs() -> Vec<Hostile> {
    use e2e::frame::fragments;
    use Answer::{Close, Delivered};

    let fragmented = to_sink(r#""in a thousand pieces""#);
    let mut with_ping = fragments(to_sink(r#""ping inside""#).as_bytes(), 8);
    with_ping.insert(2, RawFrame::ping("between fragments"));
    let over_limit_in_pieces = fragments(
        to_sink(&format!("\"{}\"", "o".repeat(CORPUS_MAX_MESSAGE_SIZE))).as_bytes(),
        1024 * 1024,
    );
    let mut bad_utf8_fragment = fragments(to_sink(r#""fine so far""#).as_bytes(), 16);
    bad_utf8_fragment.insert(1, RawFrame::continuation(b"\xc3\x28".to_vec()).fin(false));
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let deep_ignored = format!(
        r#"{{"cmd":"send_to_group","group_id":"sink","extra":{}0{},"message":"deep extra ignored"}}"#,
        "{\"a\":".repeat(100_000),
        "}".repeat(100_000)
    );
    let long = "l".repeat(1_000_000);
    let control_group = r#""nul\u0000bell\u0007\nline""#;
    let mut flips = String::new();
    for _ in 0..50 {
        flips.push_str(r#"{"cmd":"add_group","group_id":"flip"}"#);
        flips.push('\n');
        flips.push_str(r#"{"cmd":"leave_group","group_id":"flip"}"#);
        flips.push('\n');
    }
    let mut flip_frames: Vec<RawFrame> = flips.lines().map(RawFrame::text).collect();
    flip_frames.push(RawFrame::text(r#"{"cmd":"add_group","group_id":"flip"}"#));
    flip_frames.push(RawFrame::text(
        r#"{"cmd":"send_to_group","group_id":"flip","message":"after 50 flips"}"#,
    ));
    let flood = r#"{"cmd":"send_to_group","group_id":"sink","message":"f"}"#;

    vec![
        hostile(
            "a text message in a thousand continuation frames",
            fragments(fragmented.as_bytes(), (fragmented.len() / 1000).max(1)),
            Delivered("in a thousand pieces".into()),
        ),
        hostile(
            "a ping between the fragments of a message",
            with_ping,
            Delivered("ping inside".into()),
        ),
        hostile(
            "a fragment boundary inside a UTF-8 character",
            fragments(to_sink("\"d\u{e9}j\u{e0} vu \u{1f600}\"").as_bytes(), 1),
            Delivered("d\u{e9}j\u{e0} vu \u{1f600}".into()),
        ),
        hostile(
            "invalid UTF-8 in a continuation frame",
            bad_utf8_fragment,
            Close(1007),
        ),
        hostile(
            "one frame longer than the limit (its header alone)",
            vec![RawFrame::text("").claim_len(CORPUS_MAX_MESSAGE_SIZE as u64 + 1)],
            Close(1009),
        ),
        hostile(
            "a frame header claiming 2^63 bytes",
            vec![RawFrame::binary("").claim_len(1 << 63)],
            Close(1009),
        ),
        hostile(
            "fragments each under the limit, together over it",
            over_limit_in_pieces,
            Close(1009),
        ),
        hostile(
            "a ping with a 126-byte payload",
            vec![RawFrame::ping(vec![b'p'; 126])],
            Close(1002),
        ),
        hostile(
            "a fragmented ping",
            vec![RawFrame::ping("part").fin(false)],
            Close(1002),
        ),
        hostile(
            "a close frame with code 1005, which must never be sent",
            vec![RawFrame::close(1005, b"")],
            Close(1002),
        ),
        hostile(
            "a close frame with code 999",
            vec![RawFrame::close(999, b"")],
            Close(1002),
        ),
        hostile(
            "a close frame with a one-byte payload",
            vec![RawFrame::new(e2e::frame::opcode::CLOSE, vec![3])],
            Close(1002),
        ),
        hostile(
            "a close frame whose reason is not UTF-8",
            vec![RawFrame::close(1000, b"\xff\xfe")],
            Close(1007),
        ),
        hostile(
            "an unmasked text frame",
            vec![RawFrame::text(to_sink(r#""unmasked""#)).unmasked()],
            Close(1002),
        ),
        hostile(
            "a reserved data opcode (0x3)",
            vec![RawFrame::new(0x3, "reserved")],
            Close(1002),
        ),
        hostile(
            "a reserved control opcode (0xB)",
            vec![RawFrame::new(0xB, "reserved")],
            Close(1002),
        ),
        hostile(
            "RSV1 set with no extension negotiated",
            vec![RawFrame::text(to_sink(r#""compressed?""#)).rsv(0b100)],
            Close(1002),
        ),
        hostile(
            "a continuation frame with no message started",
            vec![RawFrame::continuation(to_sink(r#""orphan""#))],
            Close(1002),
        ),
        hostile(
            "a new text frame while a fragmented message is open",
            vec![
                RawFrame::text(r#"{"cmd":"#).fin(false),
                RawFrame::text(to_sink(r#""interleaved""#)),
            ],
            Close(1002),
        ),
        hostile(
            "an object as message",
            vec![RawFrame::text(to_sink(
                r#"{ "price" : 12.50, "tags" : [ "a" ] }"#,
            ))],
            Delivered(r#"{"price":12.50,"tags":["a"]}"#.into()),
        ),
        hostile(
            "1e400 as message",
            vec![RawFrame::text(to_sink("1e400"))],
            Delivered("1e400".into()),
        ),
        hostile(
            "a message nested 100,000 levels deep",
            vec![RawFrame::text(to_sink(&deep))],
            Delivered(deep.clone()),
        ),
        hostile(
            "an unknown field nested 100,000 levels deep",
            vec![RawFrame::text(deep_ignored)],
            Delivered("deep extra ignored".into()),
        ),
        hostile(
            "a 1 MB string message",
            vec![RawFrame::text(to_sink(&format!("\"{long}\"")))],
            Delivered(long.clone()),
        ),
        hostile(
            "NUL, BEL and a newline in a group id",
            vec![
                RawFrame::text(format!(
                    r#"{{"cmd":"add_group","group_id":{control_group}}}"#
                )),
                RawFrame::text(format!(
                    r#"{{"cmd":"send_to_group","group_id":{control_group},"message":"control"}}"#
                )),
            ],
            Delivered("control".into()),
        ),
        hostile(
            "50 joins and leaves of one group in a row, then a join",
            flip_frames,
            Delivered("after 50 flips".into()),
        ),
        hostile(
            "10,000 messages in one burst",
            vec![RawFrame::text(flood); 10_000],
            Answer::RateLimitedThenClosed,
        ),
    ]
}

/// Reads what `offender` gets for `answer`.
async fn check_answer(offender: &mut Client, answer: &Answer) -> Result<()> {
    match answer {
        Answer::Close(expected) => {
            let code = offender.expect_close(RECV_TIMEOUT).await?;
            ensure!(
                code == *expected,
                "expected close code {expected}, got {code}"
            );
        }
        Answer::Delivered(text) => {
            offender.expect_text(text).await?;
            // Nothing else came, and the connection still serves requests.
            offender.send_to_group("sink", "still served").await?;
            offender.expect_text("still served").await?;
        }
        Answer::RateLimitedThenClosed => {
            let mut rate_limited = 0;
            loop {
                match offender.recv(RECV_TIMEOUT).await? {
                    Event::Text(text) if text == "f" => {}
                    Event::Text(text) => {
                        let reply: Value = serde_json::from_str(&text)?;
                        ensure!(
                            reply["code"] == "rate_limited" && reply.get("req_id").is_none(),
                            "unexpected reply {reply}"
                        );
                        rate_limited += 1;
                    }
                    Event::Close(Some((code, _))) => {
                        ensure!(code == 1008, "expected close code 1008, got {code}");
                        break;
                    }
                    other => anyhow::bail!("expected replies, then close 1008; got {other}"),
                }
            }
            // Replies still queued when the connection is closed are not written.
            ensure!(rate_limited <= 100, "{rate_limited} rate_limited replies");
        }
    }
    Ok(())
}

/// Malformed and abusive frames and payloads, each from a fresh connection: each gets its
/// documented answer (docs/protocol.md, "Hostile input"), and the bystanders on the same worker
/// keep their connections and receive every message, with nothing else in between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_frames_and_payloads_get_their_documented_answer() -> Result<()> {
    let gateway = Gateway::start(
        GatewayConfig::embedded("gateway")
            .workers(1)
            .arg("--max-message-size")
            .arg(CORPUS_MAX_MESSAGE_SIZE.to_string()),
    )
    .await?;
    let mut room = Room::new(&gateway).await?;
    let inputs = hostile_inputs();
    for (i, input) in inputs.iter().enumerate() {
        let context = || format!("hostile input {i}: {}", input.name);
        let mut offender = gateway.connect(format!("offender{i}")).await?;
        offender.join("sink").await.with_context(context)?;
        offender
            .send_frames(&input.frames)
            .await
            .with_context(context)?;
        check_answer(&mut offender, &input.answer)
            .await
            .with_context(context)?;
        room.tick(&mut []).await.with_context(context)?;
    }

    // Not even HTTP: the socket is closed without an answer, and nothing else is affected.
    for (name, request) in [
        ("garbage", &b"\x16\x03\x01\x02\x00garbage\r\n\r\n"[..]),
        (
            "HTTP without an upgrade",
            b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        ),
    ] {
        let answer = raw_exchange(gateway.addr, request)
            .await
            .with_context(|| name.to_owned())?;
        ensure!(
            !answer.starts_with(b"HTTP/1.1 101"),
            "{name}: upgraded: {:?}",
            String::from_utf8_lossy(&answer)
        );
        room.tick(&mut []).await.with_context(|| name.to_owned())?;
    }
    room.expect_quiet(&mut []).await?;

    let stats = gateway
        .admin
        .wait_for_stats("every offender gone", |s| {
            stat(s, "/workers/0/connections") == Some(4)
        })
        .await?;
    ensure!(
        stat(&stats, "/workers/0/rate_limit_closes") == Some(1),
        "one connection closed for flooding: {stats}"
    );
    ensure!(
        stat(&stats, "/workers/0/errors/rate_limited") == Some(100),
        "100 frames rejected before the flood was closed: {stats}"
    );
    ensure!(
        stat(&stats, "/workers/0/handshake_failures") == Some(2),
        "the two non-WebSocket requests: {stats}"
    );
    ensure!(
        stat(&stats, "/workers/0/connections_total") == Some(4 + inputs.len() as u64),
        "{stats}"
    );
    gateway.process.assert_no_panics()
}

/// Writes `request` on a plain TCP connection and reads until the gateway closes it.
async fn raw_exchange(addr: std::net::SocketAddr, request: &[u8]) -> Result<Vec<u8>> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream.write_all(request).await?;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(RECV_TIMEOUT, stream.read_to_end(&mut answer))
        .await
        .context("the gateway kept the connection open")?;
    // A reset is a close too.
    if let Err(e) = read {
        ensure!(
            e.kind() == std::io::ErrorKind::ConnectionReset,
            "reading: {e}"
        );
    }
    Ok(answer)
}
