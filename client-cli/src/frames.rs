//! The JSON frames a client sends, and how it reads the server's replies. Pure: no I/O.

use std::borrow::Cow;

use anyhow::{bail, Context as _, Result};
use protocol::client::{request_json, ClientCommand, GroupName, Reply, DEFAULT_MAX_GROUP_ID_LEN};
use serde_json::value::RawValue;

fn group_name(group: &str) -> Result<GroupName<'_>> {
    GroupName::parse(group, DEFAULT_MAX_GROUP_ID_LEN)
        .with_context(|| format!("invalid group id {group:?}"))
}

/// `{"cmd":"add_group","group_id":G,"req_id":K}`.
pub fn join_request(group: &str, req_id: u64) -> Result<String> {
    let command = ClientCommand::AddGroup {
        group_id: group_name(group)?,
    };
    Ok(request_json(&command, Some(req_id)))
}

/// `{"cmd":"send_to_group","group_id":G,"message":M,"req_id":K}`. With `json`, `message` must be
/// JSON text and is sent as that value, its key order and number spelling untouched; otherwise it
/// is sent as a JSON string.
pub fn send_request(group: &str, message: &str, json: bool, req_id: u64) -> Result<String> {
    let group_id = group_name(group)?;
    if !json {
        let command = ClientCommand::SendToGroup {
            group_id,
            message: Cow::Borrowed(message),
        };
        return Ok(request_json(&command, Some(req_id)));
    }
    // `request_json` only knows string messages; a `RawValue` keeps the value's exact text.
    let value = RawValue::from_string(message.to_owned())
        .context("--json: the message is not valid JSON")?;
    let group_json = serde_json::Value::from(group_id.as_str()).to_string();
    Ok(format!(
        r#"{{"cmd":"send_to_group","group_id":{group_json},"message":{},"req_id":{req_id}}}"#,
        value.get()
    ))
}

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
        _ => Incoming::Other,
    }
}

/// The body of `POST /api/publish` for one message: `{"group_id":G,"message":M}`, with `message`
/// a JSON string, or with `json` the JSON value `message` spells (its text kept as it is).
pub fn publish_body(group: &str, message: &str, json: bool) -> Result<String> {
    let group_json = serde_json::Value::from(group_name(group)?.as_str()).to_string();
    let message_json = if json {
        RawValue::from_string(message.to_owned())
            .context("--json: the message is not valid JSON")?
            .get()
            .to_owned()
    } else {
        serde_json::Value::from(message).to_string()
    };
    Ok(format!(
        r#"{{"group_id":{group_json},"message":{message_json}}}"#
    ))
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
    let answer: Option<serde_json::Value> = serde_json::from_str(body).ok();
    let field = |pointer: &str| answer.as_ref().and_then(|a| a.pointer(pointer));
    if status == 200 {
        return field("/published")
            .and_then(serde_json::Value::as_u64)
            .with_context(|| format!("unexpected answer from the gateway: {}", abbreviate(body)));
    }
    let code = field("/error/code").and_then(serde_json::Value::as_str);
    let reason = field("/error/reason").and_then(serde_json::Value::as_str);
    let index = field("/error/index").and_then(serde_json::Value::as_u64);
    match (code, reason, index) {
        (Some(code), Some(reason), Some(index)) => {
            bail!("{code}: {reason} (batch item {index})")
        }
        (Some(code), Some(reason), None) => bail!("{code}: {reason}"),
        _ => bail!("HTTP {status}: {}", abbreviate(body)),
    }
}

/// At most 200 bytes of `text`, for error messages.
fn abbreviate(text: &str) -> &str {
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
        match request.command {
            ClientCommand::AddGroup { group_id } => (format!("add {group_id:?}"), None, req_id),
            ClientCommand::SendToGroup { group_id, message } => (
                format!("send {group_id:?}"),
                Some(message.into_owned()),
                req_id,
            ),
            other => panic!("unexpected {other:?}"),
        }
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
}
