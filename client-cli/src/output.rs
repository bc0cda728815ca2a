//! What the query commands print: the lines of human output made from the JSON answers of the
//! server (WebSocket replies and admin API answers), and printing them. Pure but for
//! [`print_lines`].
//!
//! Lists of names (groups, client ids) get one line per item, so that names with spaces stay
//! readable; a missing uid is written `-`.

use std::io::Write as _;

use anyhow::{Context as _, Result};
use client_cli::frames::abbreviate;
use serde_json::Value;

/// Prints `lines` on stdout, each followed by a newline, then flushes.
pub fn print_lines<I, S>(lines: I) -> Result<()>
where
    I: IntoIterator<Item = S>,
    S: AsRef<str>,
{
    let mut out = std::io::stdout().lock();
    let write = || -> std::io::Result<()> {
        for line in lines {
            writeln!(out, "{}", line.as_ref())?;
        }
        out.flush()
    };
    write().context("cannot write to stdout")
}

/// A JSON object answered by the server (a WebSocket reply's text).
pub fn parse_answer(text: &str) -> Result<Value> {
    serde_json::from_str::<Value>(text)
        .ok()
        .filter(Value::is_object)
        .with_context(|| unexpected(text))
}

fn unexpected(text: &str) -> String {
    format!("unexpected answer from the gateway: {}", abbreviate(text))
}

/// The answer's `key`, or an error quoting the answer.
fn field<'a>(answer: &'a Value, key: &str) -> Result<&'a Value> {
    answer
        .get(key)
        .with_context(|| format!("{} (no {key:?})", unexpected(&answer.to_string())))
}

fn u64_field(answer: &Value, key: &str) -> Result<u64> {
    field(answer, key)?.as_u64().with_context(|| {
        format!(
            "{} ({key:?} is not a count)",
            unexpected(&answer.to_string())
        )
    })
}

fn bool_field(answer: &Value, key: &str) -> Result<bool> {
    field(answer, key)?.as_bool().with_context(|| {
        format!(
            "{} ({key:?} is not a boolean)",
            unexpected(&answer.to_string())
        )
    })
}

fn array_field<'a>(answer: &'a Value, key: &str) -> Result<&'a Vec<Value>> {
    field(answer, key)?.as_array().with_context(|| {
        format!(
            "{} ({key:?} is not an array)",
            unexpected(&answer.to_string())
        )
    })
}

/// A name (string or number) as text; `-` for null or absent.
fn name(value: Option<&Value>) -> String {
    match value {
        None | Some(Value::Null) => "-".to_owned(),
        Some(Value::String(text)) => text.clone(),
        Some(other) => other.to_string(),
    }
}

/// The gateways that did not answer in time (`"nodes":{"missing":[...]}`), if any.
pub fn missing_nodes(answer: &Value) -> Vec<String> {
    answer
        .pointer("/nodes/missing")
        .and_then(Value::as_array)
        .map(|nodes| nodes.iter().map(|n| name(Some(n))).collect())
        .unwrap_or_default()
}

/// `partial answer: no answer from NODE, ...`, for stderr, when some gateways did not answer.
pub fn partial_answer(missing: &[String]) -> Option<String> {
    (!missing.is_empty()).then(|| format!("partial answer: no answer from {}", missing.join(", ")))
}

/// Adds the nodes of `more` not already in `missing` (answers of several pages).
pub fn add_missing(missing: &mut Vec<String>, more: Vec<String>) {
    for node in more {
        if !missing.contains(&node) {
            missing.push(node);
        }
    }
}

/// `whoami`: `client_id C`, `uid U|-`, then `group G` per group.
pub fn whoami_lines(answer: &Value) -> Result<Vec<String>> {
    let client_id = whoami_client_id(answer)?;
    let mut lines = vec![
        format!("client_id {client_id}"),
        format!("uid {}", name(answer.get("uid"))),
    ];
    for group in array_field(answer, "groups")? {
        lines.push(format!("group {}", name(Some(group))));
    }
    Ok(lines)
}

/// The `client_id` of a `whoami` answer.
pub fn whoami_client_id(answer: &Value) -> Result<&str> {
    field(answer, "client_id")?
        .as_str()
        .with_context(|| unexpected(&answer.to_string()))
}

/// `count`: `G: N connections, M uids` (`M uids at most` when the gateways could not tell the
/// same uid on two of them apart).
pub fn count_line(answer: &Value) -> Result<String> {
    let group = name(Some(field(answer, "group_id")?));
    let connections = u64_field(answer, "connections")?;
    let uids = u64_field(answer, "uids")?;
    let exact = answer
        .get("uids_exact")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let bound = if exact { "" } else { " at most" };
    Ok(format!(
        "{group}: {connections} connections, {uids} uids{bound}"
    ))
}

/// One page of a listing: its lines, and the cursor of the next page (none on the last).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub lines: Vec<String>,
    pub cursor: Option<String>,
}

fn cursor(answer: &Value) -> Result<Option<String>> {
    match answer.get("cursor") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(cursor)) => Ok(Some(cursor.clone())),
        Some(_) => Err(anyhow::anyhow!(
            "{} (\"cursor\" is not a string)",
            unexpected(&answer.to_string())
        )),
    }
}

/// `members`: `CLIENT_ID UID|-` per member.
pub fn members_page(answer: &Value) -> Result<Page> {
    let lines = array_field(answer, "members")?
        .iter()
        .map(|member| {
            let client_id = member.get("client_id").and_then(Value::as_str);
            let client_id = client_id.with_context(|| unexpected(&member.to_string()))?;
            Ok(format!("{client_id} {}", name(member.get("uid"))))
        })
        .collect::<Result<Vec<String>>>()?;
    Ok(Page {
        lines,
        cursor: cursor(answer)?,
    })
}

/// `groups`: `GROUP CONNECTIONS` per group.
pub fn groups_page(answer: &Value) -> Result<Page> {
    let lines = array_field(answer, "groups")?
        .iter()
        .map(|group| {
            let group_id = name(Some(field(group, "group_id")?));
            Ok(format!("{group_id} {}", u64_field(group, "connections")?))
        })
        .collect::<Result<Vec<String>>>()?;
    Ok(Page {
        lines,
        cursor: cursor(answer)?,
    })
}

/// An order's answer (`bind`, `unbind`): `affected N`, then `failed F` when some refused it and
/// `error E` when the gateways said why.
pub fn applied_lines(answer: &Value) -> Result<Vec<String>> {
    let mut lines = vec![format!("affected {}", u64_field(answer, "affected")?)];
    let failed = answer.get("failed").and_then(Value::as_u64).unwrap_or(0);
    if failed > 0 {
        lines.push(format!("failed {failed}"));
    }
    if let Some(error) = answer.get("error").filter(|e| !e.is_null()) {
        lines.push(format!("error {}", name(Some(error))));
    }
    Ok(lines)
}

/// `clients CLIENT_ID`: `client_id C`, `online B`, `node N`, `uid U|-`, then `group G` per group.
pub fn client_lines(answer: &Value) -> Result<Vec<String>> {
    let mut lines = vec![
        format!("client_id {}", name(Some(field(answer, "client_id")?))),
        format!("online {}", bool_field(answer, "online")?),
        format!("node {}", name(answer.get("node"))),
        format!("uid {}", name(answer.get("uid"))),
    ];
    if let Some(groups) = answer.get("groups").and_then(Value::as_array) {
        lines.extend(groups.iter().map(|g| format!("group {}", name(Some(g)))));
    }
    Ok(lines)
}

/// `clients --uid UID`: `uid U`, `online B`, then `client_id C` per connection.
pub fn uid_lines(answer: &Value) -> Result<Vec<String>> {
    let mut lines = vec![
        format!("uid {}", name(Some(field(answer, "uid")?))),
        format!("online {}", bool_field(answer, "online")?),
    ];
    for client_id in array_field(answer, "client_ids")? {
        lines.push(format!("client_id {}", name(Some(client_id))));
    }
    Ok(lines)
}

/// `nodes`: `NODE NAME CONNECTIONS conns` per gateway, ` (self)` after the one answering.
pub fn nodes_lines(answer: &Value) -> Result<Vec<String>> {
    array_field(answer, "nodes")?
        .iter()
        .map(|node| {
            let id = name(Some(field(node, "node")?));
            let label = match node.get("name").and_then(Value::as_str) {
                Some(label) if !label.is_empty() => label.to_owned(),
                _ => "-".to_owned(),
            };
            let connections = u64_field(node, "connections")?;
            let this = node.get("self").and_then(Value::as_bool).unwrap_or(false);
            let marker = if this { " (self)" } else { "" };
            Ok(format!("{id} {label} {connections} conns{marker}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(text: &str) -> Value {
        parse_answer(text).unwrap()
    }

    #[test]
    fn answers_must_be_objects() {
        assert!(parse_answer(r#"{"cmd":"count"}"#).is_ok());
        for bad in ["", "[1]", "null", "not json", "\"x\""] {
            let err = parse_answer(bad).unwrap_err().to_string();
            assert!(
                err.starts_with("unexpected answer from the gateway"),
                "{err}"
            );
        }
    }

    #[test]
    fn whoami() {
        let answer = json(
            r#"{"cmd":"whoami","client_id":"5f0c1d2e3a4b6c7d-1-42","uid":"alice","groups":["a","b c"],"req_id":1}"#,
        );
        assert_eq!(
            whoami_lines(&answer).unwrap(),
            [
                "client_id 5f0c1d2e3a4b6c7d-1-42",
                "uid alice",
                "group a",
                "group b c"
            ]
        );
        assert_eq!(whoami_client_id(&answer).unwrap(), "5f0c1d2e3a4b6c7d-1-42");
        let unbound = json(r#"{"cmd":"whoami","client_id":"c-0-1","uid":null,"groups":[]}"#);
        assert_eq!(
            whoami_lines(&unbound).unwrap(),
            ["client_id c-0-1", "uid -"]
        );
        assert!(whoami_lines(&json(r#"{"cmd":"whoami"}"#)).is_err());
    }

    #[test]
    fn counts_and_partial_answers() {
        let answer = json(
            r#"{"cmd":"count","group_id":"g1","connections":5,"uids":3,"uids_exact":true,"nodes":{"answered":["a"],"missing":[]}}"#,
        );
        assert_eq!(count_line(&answer).unwrap(), "g1: 5 connections, 3 uids");
        assert_eq!(missing_nodes(&answer), Vec::<String>::new());
        assert_eq!(partial_answer(&missing_nodes(&answer)), None);

        let answer = json(
            r#"{"cmd":"count","group_id":"g1","connections":5,"uids":4,"uids_exact":false,"nodes":{"answered":["a"],"missing":["b","c"]}}"#,
        );
        assert_eq!(
            count_line(&answer).unwrap(),
            "g1: 5 connections, 4 uids at most"
        );
        assert_eq!(
            partial_answer(&missing_nodes(&answer)).as_deref(),
            Some("partial answer: no answer from b, c")
        );
        let err = count_line(&json(r#"{"cmd":"count","group_id":"g"}"#)).unwrap_err();
        assert!(err.to_string().contains("\"connections\""), "{err}");

        let mut missing = vec!["b".to_owned()];
        add_missing(&mut missing, vec!["c".to_owned(), "b".to_owned()]);
        assert_eq!(missing, ["b", "c"]);
    }

    #[test]
    fn member_pages() {
        let answer = json(
            r#"{"cmd":"members","group_id":"g","members":[{"client_id":"n-1-2","uid":"u"},{"client_id":"n-1-3","uid":null}],"cursor":"n-1-3","nodes":{"answered":[],"missing":[]}}"#,
        );
        assert_eq!(
            members_page(&answer).unwrap(),
            Page {
                lines: vec!["n-1-2 u".to_owned(), "n-1-3 -".to_owned()],
                cursor: Some("n-1-3".to_owned()),
            }
        );
        let last = json(r#"{"cmd":"members","group_id":"g","members":[],"cursor":null}"#);
        assert_eq!(members_page(&last).unwrap().cursor, None);
        assert!(members_page(&json(r#"{"members":[{"uid":"u"}]}"#)).is_err());
        assert!(members_page(&json(r#"{"members":[],"cursor":5}"#)).is_err());
    }

    #[test]
    fn group_pages() {
        let answer = json(
            r#"{"groups":[{"group_id":"a b","connections":2},{"group_id":"7","connections":1}],"cursor":null,"nodes":{"answered":["n"],"missing":[]}}"#,
        );
        assert_eq!(
            groups_page(&answer).unwrap(),
            Page {
                lines: vec!["a b 2".to_owned(), "7 1".to_owned()],
                cursor: None,
            }
        );
        assert!(groups_page(&json(r#"{"groups":[{"group_id":"a"}]}"#)).is_err());
    }

    #[test]
    fn orders() {
        let answer = json(r#"{"affected":1,"failed":0,"nodes":{"answered":["n"],"missing":[]}}"#);
        assert_eq!(applied_lines(&answer).unwrap(), ["affected 1"]);
        let answer = json(r#"{"affected":0,"failed":2,"error":"too many groups","nodes":{}}"#);
        assert_eq!(
            applied_lines(&answer).unwrap(),
            ["affected 0", "failed 2", "error too many groups"]
        );
        assert!(applied_lines(&json(r#"{"published":1}"#)).is_err());
    }

    #[test]
    fn lookups() {
        let answer = json(
            r#"{"client_id":"n-1-2","online":true,"node":"n","uid":"u","groups":["a","b"],"nodes":{"answered":["n"],"missing":[]}}"#,
        );
        assert_eq!(
            client_lines(&answer).unwrap(),
            [
                "client_id n-1-2",
                "online true",
                "node n",
                "uid u",
                "group a",
                "group b"
            ]
        );
        let offline =
            json(r#"{"client_id":"n-1-2","online":false,"node":"n","uid":null,"groups":[]}"#);
        assert_eq!(
            client_lines(&offline).unwrap(),
            ["client_id n-1-2", "online false", "node n", "uid -"]
        );

        let answer =
            json(r#"{"uid":"42","online":true,"client_ids":["n-1-2","m-0-7"],"nodes":{}}"#);
        assert_eq!(
            uid_lines(&answer).unwrap(),
            [
                "uid 42",
                "online true",
                "client_id n-1-2",
                "client_id m-0-7"
            ]
        );
        assert!(uid_lines(&json(r#"{"uid":"42","online":true}"#)).is_err());
    }

    #[test]
    fn node_lines() {
        let answer = json(
            r#"{"nodes":[{"node":"aa","name":"gw-1","ws":"ws://h:1","connections":12,"started_ms":1,"last_seen_ms":0,"self":true},{"node":"bb","name":"","connections":0,"started_ms":1,"last_seen_ms":900,"self":false}]}"#,
        );
        assert_eq!(
            nodes_lines(&answer).unwrap(),
            ["aa gw-1 12 conns (self)", "bb - 0 conns"]
        );
        assert!(nodes_lines(&json(r#"{"nodes":[{"node":"aa"}]}"#)).is_err());
    }
}
