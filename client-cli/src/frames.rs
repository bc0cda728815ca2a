//! The JSON frames a client sends, and how it reads the server's replies. Pure: no I/O.

use std::borrow::Cow;

use anyhow::{bail, Context as _, Result};
use protocol::client::{request_json, ClientCommand, GroupName, Reply, DEFAULT_MAX_GROUP_ID_LEN};
use protocol::cluster::{ClientId, Uid};
use protocol::history::{Epoch, Position, Recover};
use serde_json::value::RawValue;
use serde_json::Value;

fn group_name(group: &str) -> Result<GroupName<'_>> {
    GroupName::parse_client(group, DEFAULT_MAX_GROUP_ID_LEN)
        .with_context(|| format!("invalid group id {group:?}"))
}

/// The JSON text a message is sent as: a JSON string, or with `json` the JSON value `message`
/// spells, its text kept as it is (key order, number spelling; surrounding whitespace dropped).
pub fn message_json(message: &str, json: bool) -> Result<String> {
    if !json {
        return Ok(Value::from(message).to_string());
    }
    let value = RawValue::from_string(message.to_owned())
        .context("--json: the message is not valid JSON")?;
    Ok(value.get().to_owned())
}

/// The frame of a command carrying a message, built by `command`: the message as a JSON string,
/// or with `json` as the JSON value it spells ([`message_json`]).
fn request_with_message<'m>(
    message: &'m str,
    json: bool,
    req_id: u64,
    command: impl FnOnce(Cow<'m, str>) -> ClientCommand<'m>,
) -> Result<String> {
    if !json {
        return Ok(request_json(&command(Cow::Borrowed(message)), Some(req_id)));
    }
    let value = message_json(message, true)?;
    // `request_json` only knows string messages: build the frame with an empty one, then write
    // its fields again (strings and integers: their text does not change) with the value's own
    // text as the message.
    let frame = request_json(&command(Cow::Borrowed("")), Some(req_id));
    let fields: serde_json::Map<String, Value> =
        serde_json::from_str(&frame).context("cannot build the request")?;
    let mut out = String::with_capacity(frame.len() + value.len());
    out.push('{');
    for (i, (key, field)) in fields.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str(&Value::from(key.as_str()).to_string());
        out.push(':');
        if key == "message" {
            out.push_str(&value);
        } else {
            out.push_str(&field.to_string());
        }
    }
    out.push('}');
    Ok(out)
}

/// `{"cmd":"add_group","group_id":G,"req_id":K}`.
pub fn join_request(group: &str, req_id: u64) -> Result<String> {
    add_group_request(group, false, req_id)
}

/// `{"cmd":"add_group","group_id":G,"presence":true,"req_id":K}` (`presence` only when true):
/// with `presence`, the connection also receives the group's join and leave events.
pub fn add_group_request(group: &str, presence: bool, req_id: u64) -> Result<String> {
    let command = ClientCommand::AddGroup {
        group_id: group_name(group)?,
        presence,
        positioned: false,
        recover: None,
    };
    Ok(request_json(&command, Some(req_id)))
}

/// `{"cmd":"add_group","group_id":G,"positioned":true,"recover":{"offset":O,"epoch":E},
/// "req_id":K}` (`recover` when given, `"presence":true` with `presence`): a join of a group
/// with history, answered by a `joined` reply ([`joined_answer`]); its messages arrive as
/// [`PositionedMessage`]s. With `recover`, the messages after that position still in history
/// arrive first.
pub fn positioned_join_request(
    group: &str,
    presence: bool,
    recover: Option<Recover>,
    req_id: u64,
) -> Result<String> {
    let command = ClientCommand::AddGroup {
        group_id: group_name(group)?,
        presence,
        positioned: true,
        recover,
    };
    Ok(request_json(&command, Some(req_id)))
}

/// `{"cmd":"send_to_group","group_id":G,"message":M,"req_id":K}`. With `json`, `message` must be
/// JSON text and is sent as that value, its key order and number spelling untouched; otherwise it
/// is sent as a JSON string.
pub fn send_request(group: &str, message: &str, json: bool, req_id: u64) -> Result<String> {
    send_group_request(group, message, json, &[], req_id)
}

/// [`send_request`] with `"exclude":[C...]` (when not empty): connections that do not receive it.
pub fn send_group_request(
    group: &str,
    message: &str,
    json: bool,
    exclude: &[ClientId],
    req_id: u64,
) -> Result<String> {
    let group_id = group_name(group)?;
    request_with_message(message, json, req_id, |message| {
        ClientCommand::SendToGroup {
            group_id,
            message,
            exclude: exclude.to_vec(),
        }
    })
}

/// `{"cmd":"send_to_all","message":M,"exclude":[C...],"req_id":K}` (`exclude` when not empty).
pub fn send_all_request(
    message: &str,
    json: bool,
    exclude: &[ClientId],
    req_id: u64,
) -> Result<String> {
    request_with_message(message, json, req_id, |message| ClientCommand::SendToAll {
        message,
        exclude: exclude.to_vec(),
    })
}

/// `{"cmd":"send_to_uid","uid":U,"message":M,"req_id":K}`, `uid` an array when there are several.
pub fn send_uid_request(uids: &[Uid], message: &str, json: bool, req_id: u64) -> Result<String> {
    if uids.is_empty() {
        bail!("give at least one uid");
    }
    request_with_message(message, json, req_id, |message| ClientCommand::SendToUid {
        uids: uids.to_vec(),
        message,
    })
}

/// `{"cmd":"send_to_client","client_id":C,"message":M,"req_id":K}`.
pub fn send_client_request(
    client_id: ClientId,
    message: &str,
    json: bool,
    req_id: u64,
) -> Result<String> {
    request_with_message(message, json, req_id, |message| {
        ClientCommand::SendToClient { client_id, message }
    })
}

/// `{"cmd":"bind_uid","uid":U,"req_id":K}`.
pub fn bind_uid_request(uid: &Uid, req_id: u64) -> String {
    request_json(&ClientCommand::BindUid { uid: uid.clone() }, Some(req_id))
}

/// `{"cmd":"auth","token":T,"req_id":K}`: presents a join token.
pub fn auth_request(token: &str, req_id: u64) -> String {
    let command = ClientCommand::Auth {
        token: Cow::Borrowed(token),
    };
    request_json(&command, Some(req_id))
}

/// `{"cmd":"whoami","req_id":K}`.
pub fn whoami_request(req_id: u64) -> String {
    request_json(&ClientCommand::Whoami, Some(req_id))
}

/// `{"cmd":"count","group_id":G,"req_id":K}`.
pub fn count_request(group: &str, req_id: u64) -> Result<String> {
    let command = ClientCommand::Count {
        group_id: group_name(group)?,
    };
    Ok(request_json(&command, Some(req_id)))
}

/// `{"cmd":"members","group_id":G,"limit":N,"cursor":C,"req_id":K}` (`cursor` when given: the
/// page after it).
pub fn members_request(
    group: &str,
    limit: u32,
    cursor: Option<ClientId>,
    req_id: u64,
) -> Result<String> {
    let command = ClientCommand::Members {
        group_id: group_name(group)?,
        limit,
        cursor,
    };
    Ok(request_json(&command, Some(req_id)))
}

/// Replies that carry data, as opposed to a bare `ack` (`joined` answers a positioned join).
pub const ANSWER_CMDS: [&str; 4] = ["whoami", "count", "members", "joined"];

/// What a text frame from the server means to a client that sent requests with integer ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    Ack {
        req_id: u64,
    },
    Error {
        req_id: u64,
        code: String,
        reason: String,
    },
    /// A reply carrying data ([`ANSWER_CMDS`]: `whoami`, `count`, `members`, `joined`); its
    /// text is the answer.
    Answer {
        req_id: u64,
        cmd: String,
    },
    /// Anything else: a group message (or a reply to a request that was not ours).
    Other,
}

pub fn classify(text: &str) -> Incoming {
    let Ok(reply) = serde_json::from_str::<Reply>(text) else {
        return Incoming::Other;
    };
    let Some(req_id) = reply.req_id.as_ref().and_then(serde_json::Value::as_u64) else {
        return Incoming::Other;
    };
    match reply.cmd.as_str() {
        "ack" => Incoming::Ack { req_id },
        "error" => Incoming::Error {
            req_id,
            code: reply.code.unwrap_or_else(|| "unknown".to_owned()),
            reason: reply.reason.unwrap_or_default(),
        },
        cmd if ANSWER_CMDS.contains(&cmd) => Incoming::Answer {
            req_id,
            cmd: reply.cmd,
        },
        _ => Incoming::Other,
    }
}

/// What a positioned member receives for each message of a group with history:
/// `{"cmd":"message","group_id":G,"offset":O,"epoch":E,"message":M}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PositionedMessage {
    pub group_id: String,
    pub position: Position,
    /// The message's text (M, a JSON string).
    pub message: String,
}

/// The positioned message `text` is, or `None` for any other text (a group message of a join
/// without positions, a presence event, a reply). Strict: every field must be there, of its
/// type, and there must be no `req_id`.
pub fn positioned_message(text: &str) -> Option<PositionedMessage> {
    // Cheap checks first: most messages are not JSON objects of a "message" command.
    if !text.starts_with('{') || !text.contains(r#""message""#) {
        return None;
    }
    let value: Value = serde_json::from_str(text).ok()?;
    let object = value.as_object()?;
    if object.get("cmd")?.as_str()? != "message" || object.contains_key("req_id") {
        return None;
    }
    Some(PositionedMessage {
        group_id: object.get("group_id")?.as_str()?.to_owned(),
        position: position(object.get("offset")?, object.get("epoch")?)?,
        message: object.get("message")?.as_str()?.to_owned(),
    })
}

fn position(offset: &Value, epoch: &Value) -> Option<Position> {
    Some(Position {
        offset: offset.as_u64()?,
        epoch: Epoch::new(epoch.as_str()?).ok()?,
    })
}

/// The answer to a positioned join:
/// `{"cmd":"joined","group_id":G,"offset":T,"epoch":E,"recovered":B,"error":"...","req_id":R}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Joined {
    pub group_id: String,
    /// The group's current (last) position: offset 0 when it has no message yet. `None` when
    /// the gateway could not tell (with `error`).
    pub position: Option<Position>,
    /// With `recover`: whether every message after the given position was delivered before
    /// this reply.
    pub recovered: Option<bool>,
    /// Why the history could not be read (the member is joined all the same, live only).
    pub error: Option<String>,
}

/// Reads a `joined` answer (the text [`classify`] found to be `Incoming::Answer` with `cmd`
/// `"joined"`).
pub fn joined_answer(text: &str) -> Result<Joined> {
    let unexpected = || format!("unexpected answer from the gateway: {}", abbreviate(text));
    let value: Value = serde_json::from_str(text).with_context(unexpected)?;
    let object = value.as_object().with_context(unexpected)?;
    if object.get("cmd").and_then(Value::as_str) != Some("joined") {
        bail!("{} (not a \"joined\" answer)", unexpected());
    }
    let group_id = match object.get("group_id") {
        Some(Value::String(group)) => group.clone(),
        _ => bail!("{} (no \"group_id\")", unexpected()),
    };
    let position = match (object.get("offset"), object.get("epoch")) {
        (None | Some(Value::Null), None | Some(Value::Null)) => None,
        (Some(offset), Some(epoch)) => Some(
            position(offset, epoch)
                .with_context(|| format!("{} (bad \"offset\" or \"epoch\")", unexpected()))?,
        ),
        _ => bail!(
            "{} (\"offset\" without \"epoch\", or the reverse)",
            unexpected()
        ),
    };
    let recovered = match object.get("recovered") {
        None | Some(Value::Null) => None,
        Some(Value::Bool(recovered)) => Some(*recovered),
        Some(_) => bail!("{} (\"recovered\" is not a boolean)", unexpected()),
    };
    let error = match object.get("error") {
        None | Some(Value::Null) => None,
        Some(Value::String(error)) => Some(error.clone()),
        Some(other) => Some(other.to_string()),
    };
    Ok(Joined {
        group_id,
        position,
        recovered,
        error,
    })
}

/// The body of `POST /api/publish` for one message: `{"group_id":G,"message":M}`, with `message`
/// a JSON string, or with `json` the JSON value `message` spells (its text kept as it is).
pub fn publish_body(group: &str, message: &str, json: bool) -> Result<String> {
    publish_body_excluding(group, message, json, &[])
}

/// [`publish_body`] with `"exclude":[C...]` when `exclude` is not empty.
pub fn publish_body_excluding(
    group: &str,
    message: &str,
    json: bool,
    exclude: &[ClientId],
) -> Result<String> {
    let group_json = Value::from(group_name(group)?.as_str()).to_string();
    let message_json = message_json(message, json)?;
    let mut body = format!(r#"{{"group_id":{group_json},"message":{message_json}"#);
    if !exclude.is_empty() {
        body.push_str(r#","exclude":"#);
        body.push_str(&client_ids_json(exclude));
    }
    body.push('}');
    Ok(body)
}

fn client_ids_json(ids: &[ClientId]) -> String {
    Value::Array(ids.iter().map(|id| id.to_string().into()).collect()).to_string()
}

/// The body of `POST /api/bind_uid`: `{"client_id":C,"uid":U}`.
pub fn bind_body(client_id: ClientId, uid: &Uid) -> String {
    serde_json::json!({"client_id": client_id.to_string(), "uid": uid.as_str()}).to_string()
}

/// The body of `POST /api/unbind_uid` for one connection: `{"client_id":C}`.
pub fn unbind_client_body(client_id: ClientId) -> String {
    serde_json::json!({"client_id": client_id.to_string()}).to_string()
}

/// The body of `POST /api/unbind_uid` for every connection of a uid: `{"uid":U}`.
pub fn unbind_uid_body(uid: &Uid) -> String {
    serde_json::json!({"uid": uid.as_str()}).to_string()
}

/// Checks that a `--batch` body is a JSON array (the gateway checks its items); returns how many
/// items it holds.
pub fn check_batch(body: &str) -> Result<usize> {
    let items: Vec<&RawValue> = serde_json::from_str(body)
        .context(r#"--batch: expected a JSON array of {"group_id":G,"message":M} objects"#)?;
    Ok(items.len())
}

/// What the admin API answered to a publish: the number of messages published, or the error it
/// reported (`{"error":{"code":C,"reason":R,"index":I}}`).
pub fn publish_outcome(status: u16, body: &str) -> Result<u64> {
    api_answer(status, body)?
        .get("published")
        .and_then(Value::as_u64)
        .with_context(|| format!("unexpected answer from the gateway: {}", abbreviate(body)))
}

/// What the admin API answered: a JSON object on success (HTTP 2xx), or the error it reported
/// (`{"error":{"code":C,"reason":R}}`, with `index` for a batch item) as `CODE: REASON`.
pub fn api_answer(status: u16, body: &str) -> Result<Value> {
    let answer: Option<Value> = serde_json::from_str(body).ok();
    if (200..300).contains(&status) {
        return answer
            .filter(Value::is_object)
            .with_context(|| format!("unexpected answer from the gateway: {}", abbreviate(body)));
    }
    let field = |pointer: &str| answer.as_ref().and_then(|a| a.pointer(pointer));
    let code = field("/error/code").and_then(Value::as_str);
    let reason = field("/error/reason").and_then(Value::as_str);
    let index = field("/error/index").and_then(Value::as_u64);
    match (code, reason, index) {
        (Some(code), Some(reason), Some(index)) => {
            bail!("{code}: {reason} (batch item {index})")
        }
        (Some(code), Some(reason), None) => bail!("{code}: {reason}"),
        _ => bail!("HTTP {status}: {}", abbreviate(body)),
    }
}

/// At most 200 bytes of `text`, for error messages.
pub fn abbreviate(text: &str) -> &str {
    let mut end = text.len().min(200);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::client::{parse_command, ParseLimits};

    /// What the server's parser makes of a frame: (command, message, req_id).
    fn server_view(frame: &str) -> (String, Option<String>, Option<String>) {
        let request = parse_command(frame, &ParseLimits::default()).unwrap();
        let req_id = request.req_id.map(|r| r.as_json().to_owned());
        let ids = |ids: &[ClientId]| {
            ids.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        match request.command {
            ClientCommand::AddGroup {
                group_id,
                presence,
                positioned,
                recover,
            } => {
                let presence = if presence { " presence" } else { "" };
                let positioned = if positioned { " positioned" } else { "" };
                let recover = recover
                    .map(|r| format!(" recover {} {}", r.offset, r.epoch))
                    .unwrap_or_default();
                (
                    format!("add {group_id:?}{presence}{positioned}{recover}"),
                    None,
                    req_id,
                )
            }
            ClientCommand::SendToGroup {
                group_id,
                message,
                exclude,
            } if exclude.is_empty() => (
                format!("send {group_id:?}"),
                Some(message.into_owned()),
                req_id,
            ),
            ClientCommand::SendToGroup {
                group_id,
                message,
                exclude,
            } => (
                format!("send {group_id:?} exclude {}", ids(&exclude)),
                Some(message.into_owned()),
                req_id,
            ),
            ClientCommand::SendToAll { message, exclude } => (
                format!("all exclude [{}]", ids(&exclude)),
                Some(message.into_owned()),
                req_id,
            ),
            ClientCommand::SendToUid { uids, message } => {
                let uids: Vec<&str> = uids.iter().map(Uid::as_str).collect();
                (
                    format!("uid {}", uids.join(",")),
                    Some(message.into_owned()),
                    req_id,
                )
            }
            ClientCommand::SendToClient { client_id, message } => (
                format!("client {client_id}"),
                Some(message.into_owned()),
                req_id,
            ),
            ClientCommand::BindUid { uid } => (format!("bind {uid:?}"), None, req_id),
            ClientCommand::Whoami => ("whoami".to_owned(), None, req_id),
            ClientCommand::Count { group_id } => (format!("count {group_id:?}"), None, req_id),
            ClientCommand::Members {
                group_id,
                limit,
                cursor,
            } => (
                format!("members {group_id:?} {limit} {cursor:?}"),
                None,
                req_id,
            ),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn client_id(text: &str) -> ClientId {
        text.parse().unwrap()
    }

    fn uid(text: &str) -> Uid {
        Uid::new(text, 128).unwrap()
    }

    /// The same JSON value, whatever the order of the keys (`request_json` writes them in the
    /// order of serde_json's maps).
    fn assert_same_json(frame: &str, expected: &str) {
        let frame: Value = serde_json::from_str(frame).unwrap();
        let expected: Value = serde_json::from_str(expected).unwrap();
        assert_eq!(frame, expected);
    }

    #[test]
    fn join_frames() {
        let frame = join_request("123", 4).unwrap();
        assert_eq!(frame, r#"{"cmd":"add_group","group_id":"123","req_id":4}"#);
        assert_eq!(
            server_view(&frame),
            ("add \"123\"".to_owned(), None, Some("4".to_owned()))
        );
        assert!(join_request("", 1).is_err());
    }

    #[test]
    fn send_frames() {
        let frame = send_request("123", "msg", false, 1).unwrap();
        assert_eq!(
            frame,
            r#"{"cmd":"send_to_group","group_id":"123","message":"msg","req_id":1}"#
        );
        let tricky = "a \"quoted\"\nline\\ é";
        let (_, message, _) = server_view(&send_request("g", tricky, false, 1).unwrap());
        assert_eq!(message.as_deref(), Some(tricky));
        // Text that looks like JSON is still a string without --json.
        let (_, message, _) = server_view(&send_request("g", r#"{"a":1}"#, false, 1).unwrap());
        assert_eq!(message.as_deref(), Some(r#"{"a":1}"#));
    }

    #[test]
    fn json_messages_keep_their_text() {
        let frame = send_request("g \"1\"", r#" {"b":1.50,"a":[1, 2]} "#, true, 9).unwrap();
        assert_eq!(
            frame,
            r#"{"cmd":"send_to_group","group_id":"g \"1\"","message":{"b":1.50,"a":[1, 2]},"req_id":9}"#
        );
        let (cmd, message, req_id) = server_view(&frame);
        assert_eq!(cmd, r#"send "g \"1\"""#);
        assert_eq!(message.as_deref(), Some(r#"{"b":1.50,"a":[1,2]}"#));
        assert_eq!(req_id.as_deref(), Some("9"));

        let (_, message, _) = server_view(&send_request("g", r#""hi""#, true, 1).unwrap());
        assert_eq!(message.as_deref(), Some("hi"));
        for bad in ["", "{", "not json", "1 2", r#"{"a":1}x"#] {
            assert!(send_request("g", bad, true, 1).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn publish_bodies_parse_as_the_gateway_does() {
        use protocol::client::parse_publish;
        let limits = ParseLimits::default();
        let body = publish_body("123", "a \"b\"", false).unwrap();
        assert_eq!(body, r#"{"group_id":"123","message":"a \"b\""}"#);
        let parsed = parse_publish(&body, &limits).unwrap();
        assert_eq!(
            (parsed.group_id.as_str(), parsed.message.as_ref()),
            ("123", "a \"b\"")
        );
        let body = publish_body("g", r#" {"b":1.50, "a":[1]} "#, true).unwrap();
        let parsed = parse_publish(&body, &limits).unwrap();
        assert_eq!(parsed.message, r#"{"b":1.50,"a":[1]}"#);
        assert!(publish_body("g", "{", true).is_err());
        assert!(publish_body("", "m", false).is_err());
    }

    #[test]
    fn batches() {
        assert_eq!(
            check_batch(r#"[{"group_id":1,"message":"m"}, {}]"#).unwrap(),
            2
        );
        assert_eq!(check_batch(" [] ").unwrap(), 0);
        for bad in ["", "{}", r#"{"group_id":1,"message":"m"}"#, "[1", "[] x"] {
            assert!(check_batch(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn publish_outcomes() {
        assert_eq!(publish_outcome(200, r#"{"published":3}"#).unwrap(), 3);
        assert!(publish_outcome(200, "ok").is_err());
        let err = publish_outcome(
            401,
            r#"{"error":{"code":"unauthorized","reason":"wrong token"}}"#,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "unauthorized: wrong token");
        let err = publish_outcome(
            400,
            r#"{"error":{"code":"invalid_group_id","reason":"empty","index":2}}"#,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "invalid_group_id: empty (batch item 2)");
        let err = publish_outcome(502, "Bad Gateway").unwrap_err();
        assert_eq!(err.to_string(), "HTTP 502: Bad Gateway");
        let long = "é".repeat(300);
        assert!(publish_outcome(500, &long).unwrap_err().to_string().len() < 220);
    }

    #[test]
    fn replies() {
        assert_eq!(
            classify(r#"{"cmd":"ack","req_id":3}"#),
            Incoming::Ack { req_id: 3 }
        );
        assert_eq!(
            classify(r#"{"cmd":"error","code":"too_many_groups","reason":"limit","req_id":2}"#),
            Incoming::Error {
                req_id: 2,
                code: "too_many_groups".to_owned(),
                reason: "limit".to_owned()
            }
        );
        for other in [
            "hello",
            r#"{"a":1}"#,
            r#"{"cmd":"ack"}"#,
            r#"{"cmd":"ack","req_id":"3"}"#,
            r#"{"cmd":"error","code":"invalid_json","reason":"x"}"#,
            r#"{"cmd":"send_to_group","req_id":1}"#,
            "[1]",
        ] {
            assert_eq!(classify(other), Incoming::Other, "{other}");
        }
    }

    const C1: &str = "5f0c1d2e3a4b6c7d-1-42";
    const C2: &str = "00000000000000ff-0-7";

    #[test]
    fn presence_joins() {
        let frame = add_group_request("g", true, 2).unwrap();
        assert_eq!(
            frame,
            r#"{"cmd":"add_group","group_id":"g","presence":true,"req_id":2}"#
        );
        assert_eq!(server_view(&frame).0, "add \"g\" presence");
        assert_eq!(
            add_group_request("g", false, 2).unwrap(),
            join_request("g", 2).unwrap()
        );
        assert!(
            add_group_request("\u{1f}ctl", false, 1).is_err(),
            "reserved"
        );
    }

    #[test]
    fn sends_with_exclusions() {
        let exclude = [client_id(C1), client_id(C2)];
        let frame = send_group_request("g", "m", false, &exclude, 3).unwrap();
        assert_eq!(
            server_view(&frame),
            (
                format!("send \"g\" exclude {C1},{C2}"),
                Some("m".to_owned()),
                Some("3".to_owned())
            )
        );
        assert!(
            frame.contains(&format!(r#""exclude":["{C1}","{C2}"]"#)),
            "{frame}"
        );
        // With --json, the value's text is kept and the other fields are still there.
        let frame = send_group_request("g", r#"{"b": 1.50}"#, true, &exclude[..1], 4).unwrap();
        assert!(frame.contains(r#""message":{"b": 1.50}"#), "{frame}");
        let (cmd, message, req_id) = server_view(&frame);
        assert_eq!(cmd, format!("send \"g\" exclude {C1}"));
        assert_eq!(message.as_deref(), Some(r#"{"b":1.50}"#));
        assert_eq!(req_id.as_deref(), Some("4"));
        // Without exclusions, the frame is the one `send` always sent.
        assert_eq!(
            send_group_request("123", "msg", false, &[], 1).unwrap(),
            send_request("123", "msg", false, 1).unwrap()
        );
    }

    #[test]
    fn sends_to_all() {
        let frame = send_all_request("hi", false, &[], 1).unwrap();
        assert_eq!(frame, r#"{"cmd":"send_to_all","message":"hi","req_id":1}"#);
        let frame = send_all_request("[1, 2]", true, &[client_id(C1)], 2).unwrap();
        assert!(frame.contains(r#""message":[1, 2]"#), "{frame}");
        assert_eq!(
            server_view(&frame),
            (
                format!("all exclude [{C1}]"),
                Some("[1,2]".to_owned()),
                Some("2".to_owned())
            )
        );
        assert!(send_all_request("{", true, &[], 1).is_err());
    }

    #[test]
    fn sends_to_uids() {
        let frame = send_uid_request(&[uid("alice")], "hi", false, 1).unwrap();
        assert!(
            frame.contains(r#""uid":"alice""#),
            "one uid is a string: {frame}"
        );
        assert_eq!(
            server_view(&frame),
            (
                "uid alice".to_owned(),
                Some("hi".to_owned()),
                Some("1".to_owned())
            )
        );
        let frame = send_uid_request(&[uid("alice"), uid("42")], "{}", true, 5).unwrap();
        assert!(frame.contains(r#""uid":["alice","42"]"#), "{frame}");
        assert_eq!(
            server_view(&frame),
            (
                "uid alice,42".to_owned(),
                Some("{}".to_owned()),
                Some("5".to_owned())
            )
        );
        assert!(send_uid_request(&[], "hi", false, 1).is_err());
    }

    #[test]
    fn sends_to_a_client() {
        let frame = send_client_request(client_id(C1), "a \"b\"", false, 1).unwrap();
        assert_same_json(
            &frame,
            &format!(
                r#"{{"cmd":"send_to_client","client_id":"{C1}","message":"a \"b\"","req_id":1}}"#
            ),
        );
        assert_eq!(
            server_view(&frame),
            (
                format!("client {C1}"),
                Some("a \"b\"".to_owned()),
                Some("1".to_owned())
            )
        );
    }

    #[test]
    fn identity_and_query_frames() {
        let frame = bind_uid_request(&uid("u 1"), 1);
        assert_same_json(&frame, r#"{"cmd":"bind_uid","uid":"u 1","req_id":1}"#);
        assert_eq!(server_view(&frame).0, r#"bind "u 1""#);
        assert_eq!(whoami_request(2), r#"{"cmd":"whoami","req_id":2}"#);
        let frame = auth_request("a.b\"c", 0);
        assert_same_json(&frame, r#"{"cmd":"auth","token":"a.b\"c","req_id":0}"#);
        assert_eq!(server_view(&whoami_request(2)).0, "whoami");
        let frame = count_request("g", 3).unwrap();
        assert_eq!(frame, r#"{"cmd":"count","group_id":"g","req_id":3}"#);
        assert_eq!(server_view(&frame).0, r#"count "g""#);
        let frame = members_request("g", 10, None, 4).unwrap();
        assert_eq!(
            frame,
            r#"{"cmd":"members","group_id":"g","limit":10,"req_id":4}"#
        );
        let frame = members_request("g", 10, Some(client_id(C1)), 5).unwrap();
        assert!(frame.contains(&format!(r#""cursor":"{C1}""#)), "{frame}");
        let request = parse_command(&frame, &ParseLimits::default()).unwrap();
        match request.command {
            ClientCommand::Members { cursor, limit, .. } => {
                assert_eq!((cursor, limit), (Some(client_id(C1)), 10));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(count_request("", 1).is_err());
        assert!(members_request("", 1, None, 1).is_err());
    }

    #[test]
    fn admin_bodies() {
        use protocol::client::parse_publish;
        let body = publish_body_excluding("g", "m", false, &[client_id(C1)]).unwrap();
        assert_eq!(
            body,
            format!(r#"{{"group_id":"g","message":"m","exclude":["{C1}"]}}"#)
        );
        let parsed = parse_publish(&body, &ParseLimits::default()).unwrap();
        assert_eq!(parsed.message, "m");
        assert_eq!(
            publish_body_excluding("g", "m", false, &[]).unwrap(),
            publish_body("g", "m", false).unwrap()
        );
        assert_eq!(
            bind_body(client_id(C1), &uid("al\"ice")),
            format!(r#"{{"client_id":"{C1}","uid":"al\"ice"}}"#)
        );
        assert_eq!(
            unbind_client_body(client_id(C1)),
            format!(r#"{{"client_id":"{C1}"}}"#)
        );
        assert_eq!(unbind_uid_body(&uid("7")), r#"{"uid":"7"}"#);
    }

    #[test]
    fn admin_answers() {
        let answer = api_answer(200, r#"{"affected":1}"#).unwrap();
        assert_eq!(answer["affected"], 1);
        for bad in ["ok", "[1]", ""] {
            let err = api_answer(200, bad).unwrap_err().to_string();
            assert!(
                err.starts_with("unexpected answer from the gateway"),
                "{err}"
            );
        }
        let err = api_answer(
            404,
            r#"{"error":{"code":"not_found","reason":"no such client"}}"#,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "not_found: no such client");
        let err = api_answer(503, "busy").unwrap_err();
        assert_eq!(err.to_string(), "HTTP 503: busy");
    }

    #[test]
    fn answers_are_told_from_acks() {
        for cmd in ANSWER_CMDS {
            let text = format!(r#"{{"cmd":"{cmd}","req_id":7,"x":1}}"#);
            assert_eq!(
                classify(&text),
                Incoming::Answer {
                    req_id: 7,
                    cmd: cmd.to_owned()
                }
            );
        }
        // Presence events carry no req_id: they are messages.
        assert_eq!(
            classify(&format!(
                r#"{{"cmd":"join","group_id":"g","client_id":"{C1}","uid":null}}"#
            )),
            Incoming::Other
        );
        assert_eq!(
            classify(r#"{"cmd":"whoami","client_id":"x"}"#),
            Incoming::Other
        );
    }

    fn at(offset: u64, epoch: &str) -> Position {
        Position {
            offset,
            epoch: Epoch::new(epoch).unwrap(),
        }
    }

    #[test]
    fn positioned_join_frames() {
        let frame = positioned_join_request("g", false, None, 2).unwrap();
        assert_same_json(
            &frame,
            r#"{"cmd":"add_group","group_id":"g","positioned":true,"req_id":2}"#,
        );
        assert_eq!(server_view(&frame).0, "add \"g\" positioned");
        let recover = Recover {
            offset: 17,
            epoch: Epoch::new("e-1").unwrap(),
        };
        let frame = positioned_join_request("g 1", true, Some(recover), 3).unwrap();
        assert_same_json(
            &frame,
            r#"{"cmd":"add_group","group_id":"g 1","presence":true,"positioned":true,"recover":{"offset":17,"epoch":"e-1"},"req_id":3}"#,
        );
        assert_eq!(
            server_view(&frame),
            (
                "add \"g 1\" presence positioned recover 17 e-1".to_owned(),
                None,
                Some("3".to_owned())
            )
        );
        assert!(positioned_join_request("", false, None, 1).is_err());
    }

    #[test]
    fn positioned_messages_are_read_strictly() {
        // As the gateway writes them.
        let text = protocol::history::positioned_message("chat:1", &at(17, "e1"), "say \"hi\"\n");
        assert_eq!(
            positioned_message(&text),
            Some(PositionedMessage {
                group_id: "chat:1".to_owned(),
                position: at(17, "e1"),
                message: "say \"hi\"\n".to_owned(),
            })
        );
        // A message sent as a JSON value arrives as its text.
        let text =
            r#"{"cmd":"message","group_id":"g","offset":1,"epoch":"e","message":"{\"a\":1}"}"#;
        assert_eq!(positioned_message(text).unwrap().message, r#"{"a":1}"#);
        // Whatever the order of the keys.
        let text = r#"{"message":"m","epoch":"e","offset":2,"group_id":"g","cmd":"message"}"#;
        assert_eq!(positioned_message(text).unwrap().position, at(2, "e"));
        for other in [
            "hello",
            r#"{"a":1}"#,
            r#"{"cmd":"messages","group_id":"g","offset":1,"epoch":"e","message":"m"}"#,
            r#" {"cmd":"message","group_id":"g","offset":1,"epoch":"e","message":"m"}"#,
            r#"{"cmd":"message","group_id":"g","offset":1,"epoch":"e"}"#,
            r#"{"cmd":"message","group_id":"g","offset":-1,"epoch":"e","message":"m"}"#,
            r#"{"cmd":"message","group_id":"g","offset":1,"epoch":"a b","message":"m"}"#,
            r#"{"cmd":"message","group_id":"g","offset":"1","epoch":"e","message":"m"}"#,
            r#"{"cmd":"message","group_id":"g","offset":1,"epoch":"e","message":{"a":1}}"#,
            r#"{"cmd":"message","group_id":"g","offset":1,"epoch":"e","message":"m","req_id":1}"#,
            r#"{"cmd":"message","group_id":7,"offset":1,"epoch":"e","message":"m"}"#,
            r#"{"cmd":"message","group_id":"g","offset":1,"epoch":"e","message":"m"} x"#,
        ] {
            assert_eq!(positioned_message(other), None, "{other}");
        }
    }

    #[test]
    fn joined_answers() {
        let reply =
            protocol::history::joined_reply("g", Some(&at(40, "e2")), Some(false), None, Some("7"));
        assert_eq!(
            classify(&reply),
            Incoming::Answer {
                req_id: 7,
                cmd: "joined".to_owned()
            }
        );
        assert_eq!(
            joined_answer(&reply).unwrap(),
            Joined {
                group_id: "g".to_owned(),
                position: Some(at(40, "e2")),
                recovered: Some(false),
                error: None,
            }
        );
        // A group without messages yet is at offset 0.
        let reply = r#"{"cmd":"joined","group_id":"g","offset":0,"epoch":"e","req_id":1}"#;
        let joined = joined_answer(reply).unwrap();
        assert_eq!(
            (joined.position, joined.recovered),
            (Some(at(0, "e")), None)
        );
        let reply = protocol::history::joined_reply("g", None, None, Some("store down"), Some("2"));
        assert_eq!(
            joined_answer(&reply).unwrap(),
            Joined {
                group_id: "g".to_owned(),
                position: None,
                recovered: None,
                error: Some("store down".to_owned()),
            }
        );
        for bad in [
            "",
            "[1]",
            r#"{"cmd":"ack","group_id":"g","req_id":1}"#,
            r#"{"cmd":"joined","req_id":1}"#,
            r#"{"cmd":"joined","group_id":"g","offset":3,"req_id":1}"#,
            r#"{"cmd":"joined","group_id":"g","offset":3,"epoch":"a b","req_id":1}"#,
            r#"{"cmd":"joined","group_id":"g","offset":-3,"epoch":"e","req_id":1}"#,
            r#"{"cmd":"joined","group_id":"g","recovered":"yes","req_id":1}"#,
        ] {
            let err = joined_answer(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("unexpected answer from the gateway"),
                "{bad}: {err}"
            );
        }
    }
}
