use super::*;

fn parse(text: &str) -> Result<Request<'_>, CommandError<'_>> {
    parse_command(text, &ParseLimits::default())
}

fn code(text: &str) -> ErrorCode {
    parse(text).expect_err(text).code
}

#[test]
fn seed_commands() {
    let r = parse(r#"{"cmd":"add_group", "group_id":"123"}"#).unwrap();
    assert_eq!(
        r.command,
        ClientCommand::AddGroup {
            group_id: GroupName(Cow::Borrowed("123")),
            presence: false,
            positioned: false,
            recover: None,
        }
    );
    assert_eq!(r.req_id, None);
    let r = parse(r#"{"cmd":"send_to_group", "group_id":"123", "message":"C'est le message"}"#)
        .unwrap();
    match r.command {
        ClientCommand::SendToGroup {
            group_id,
            message,
            exclude,
        } => {
            assert_eq!(group_id.as_str(), "123");
            assert!(exclude.is_empty());
            assert_eq!(exclude.capacity(), 0, "no allocation without exclude");
            assert_eq!(message, "C'est le message");
            assert!(
                matches!(message, Cow::Borrowed(_)),
                "no copy without escapes"
            );
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn group_id_forms_are_one_group() {
    for text in [
        r#"{"cmd":"add_group","group_id":"123"}"#,
        r#"{"cmd":"add_group","group_id":123}"#,
        r#"{"cmd":"add_group","group_id":123.0}"#,
        r#"{"cmd":"add_group","group_id":1.23e2}"#,
    ] {
        match parse(text).unwrap().command {
            ClientCommand::AddGroup { group_id, .. } => {
                assert_eq!(group_id.as_str(), "123", "{text}")
            }
            other => panic!("{other:?}"),
        }
    }
    match parse(r#"{"cmd":"leave_group","group_id":-0}"#)
        .unwrap()
        .command
    {
        ClientCommand::LeaveGroup { group_id } => assert_eq!(group_id.as_str(), "0"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn bad_group_ids() {
    for text in [
        r#"{"cmd":"add_group","group_id":""}"#,
        r#"{"cmd":"add_group","group_id":[1]}"#,
        r#"{"cmd":"add_group","group_id":{"a":1}}"#,
        r#"{"cmd":"add_group","group_id":true}"#,
        r#"{"cmd":"add_group","group_id":null}"#,
        r#"{"cmd":"add_group","group_id":1.5}"#,
        r#"{"cmd":"add_group","group_id":1e400}"#,
        r#"{"cmd":"add_group","group_id":99999999999999999999}"#,
    ] {
        assert_eq!(code(text), ErrorCode::InvalidGroupId, "{text}");
    }
    let long = format!(r#"{{"cmd":"add_group","group_id":"{}"}}"#, "x".repeat(257));
    assert_eq!(code(&long), ErrorCode::InvalidGroupId);
    let ok = format!(r#"{{"cmd":"add_group","group_id":"{}"}}"#, "x".repeat(256));
    assert!(parse(&ok).is_ok());
    let limits = ParseLimits {
        max_group_id_len: 3,
        ..ParseLimits::default()
    };
    assert!(parse_command(r#"{"cmd":"add_group","group_id":"1234"}"#, &limits).is_err());
}

#[test]
fn escaped_group_id_is_unescaped() {
    match parse(r#"{"cmd":"add_group","group_id":"a\u0062c"}"#)
        .unwrap()
        .command
    {
        ClientCommand::AddGroup { group_id, .. } => assert_eq!(group_id.as_str(), "abc"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn message_values() {
    let msg = |text: &str| match parse(text).unwrap().command {
        ClientCommand::SendToGroup { message, .. } => message.into_owned(),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        msg(r#"{"cmd":"send_to_group","group_id":1,"message":"a\"b\nc"}"#),
        "a\"b\nc"
    );
    assert_eq!(
        msg(r#"{"cmd":"send_to_group","group_id":1,"message":{ "b" : [1, 2 ,"x y"], "a":null }}"#),
        r#"{"b":[1,2,"x y"],"a":null}"#
    );
    assert_eq!(
        msg(r#"{"cmd":"send_to_group","group_id":1,"message":12.50}"#),
        "12.50"
    );
    assert_eq!(
        msg(r#"{"cmd":"send_to_group","group_id":1,"message":null}"#),
        "null"
    );
    assert_eq!(
        msg(r#"{"cmd":"send_to_group","group_id":1,"message":"é \" \\ ü"}"#),
        "é \" \\ ü"
    );
}

#[test]
fn error_codes() {
    assert_eq!(code("not json"), ErrorCode::InvalidJson);
    assert_eq!(code(r#"{"cmd":"add_group""#), ErrorCode::InvalidJson);
    assert_eq!(code(""), ErrorCode::InvalidJson);
    assert_eq!(code(r#""add_group""#), ErrorCode::NotAnObject);
    assert_eq!(code("[1,2]"), ErrorCode::NotAnObject);
    assert_eq!(code("42"), ErrorCode::NotAnObject);
    assert_eq!(code("null"), ErrorCode::NotAnObject);
    assert_eq!(code(r#"{"group_id":"1"}"#), ErrorCode::MissingField);
    assert_eq!(code(r#"{"cmd":"add_group"}"#), ErrorCode::MissingField);
    assert_eq!(
        code(r#"{"cmd":"send_to_group","group_id":"1"}"#),
        ErrorCode::MissingField
    );
    assert_eq!(code(r#"{"cmd":1,"group_id":"1"}"#), ErrorCode::InvalidField);
    assert_eq!(code(r#"{"cmd":["add_group"]}"#), ErrorCode::InvalidField);
    assert_eq!(
        code(r#"{"cmd":"join","group_id":"1"}"#),
        ErrorCode::UnknownCmd
    );
    assert_eq!(
        code(r#"{"cmd":"add_group","cmd":"add_group","group_id":"1"}"#),
        ErrorCode::DuplicateField
    );
    assert_eq!(
        code(r#"{"cmd":"add_group","group_id":"1","req_id":{"x":1}}"#),
        ErrorCode::InvalidField
    );
    assert_eq!(
        code(r#"{"cmd":"add_group","group_id":"1","req_id":-1}"#),
        ErrorCode::InvalidField
    );
}

#[test]
fn escaped_keys_are_decoded() {
    match parse(r#"{"c\u006dd":"add_group","group\u005fid":"1"}"#)
        .unwrap()
        .command
    {
        ClientCommand::AddGroup { group_id, .. } => assert_eq!(group_id.as_str(), "1"),
        other => panic!("{other:?}"),
    }
    assert_eq!(
        code(r#"{"cmd":"add_group","\u0063md":"add_group","group_id":"1"}"#),
        ErrorCode::DuplicateField
    );
    assert!(parse(r#"{"cmd":"add_group","group_id":"1","\"cmd\"":1,"cm\u0064x":2}"#).is_ok());
}

#[test]
fn unknown_fields_are_ignored() {
    assert!(parse(r#"{"cmd":"add_group","group_id":"1","extra":{"deep":[1,2]}}"#).is_ok());
}

#[test]
fn req_id_is_echoed() {
    let r = parse(r#"{"cmd":"add_group","group_id":"1","req_id":7}"#).unwrap();
    assert_eq!(ack_reply(r.req_id.unwrap()), r#"{"cmd":"ack","req_id":7}"#);
    let e = parse(r#"{"cmd":"nope","req_id":"a"}"#).unwrap_err();
    assert_eq!(
        e.to_reply(),
        r#"{"cmd":"error","code":"unknown_cmd","reason":"unknown cmd \"nope\"; expected add_group, leave_group, send_to_group, send_to_all, send_to_uid, send_to_client, bind_uid, unbind_uid, whoami, count, members or auth","req_id":"a"}"#
    );
    let reply: Reply = serde_json::from_str(&e.to_reply()).unwrap();
    assert_eq!(reply.code.as_deref(), Some("unknown_cmd"));
    assert_eq!(reply.req_id, Some(serde_json::json!("a")));
}

#[test]
fn error_reply_escapes_reason() {
    let text = error_reply(ErrorCode::InvalidJson, "bad \"quote\"\n", None);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["reason"], "bad \"quote\"\n");
    assert_eq!(v["code"], "invalid_json");
}

#[test]
fn request_json_round_trips() {
    let cmd = ClientCommand::SendToGroup {
        group_id: GroupName::parse("g 1", 256).unwrap(),
        message: Cow::Borrowed("hi \"there\""),
        exclude: vec![],
    };
    let text = request_json(&cmd, Some(3));
    let parsed = parse(&text).unwrap();
    assert_eq!(parsed.command, cmd);
    assert_eq!(parsed.req_id.map(|r| r.as_json()), Some("3"));
}

#[test]
fn auth_command() {
    let r = parse(r#"{"cmd":"auth","token":"a.b.c","req_id":1}"#).unwrap();
    assert_eq!(
        r.command,
        ClientCommand::Auth {
            token: Cow::Borrowed("a.b.c")
        }
    );
    assert_eq!(
        parse(&request_json(&r.command, None)).unwrap().command,
        r.command
    );
    assert_eq!(code(r#"{"cmd":"auth"}"#), ErrorCode::MissingField);
    assert_eq!(
        code(r#"{"cmd":"auth","token":42}"#),
        ErrorCode::InvalidField
    );
    assert_eq!(
        code(r#"{"cmd":"auth","token":null}"#),
        ErrorCode::InvalidField
    );
    assert_eq!(
        code(r#"{"cmd":"auth","token":"a","token":"b"}"#),
        ErrorCode::DuplicateField
    );
    // Other commands ignore a token.
    assert!(parse(r#"{"cmd":"add_group","group_id":"1","token":7}"#).is_ok());
}

#[test]
fn error_code_names_are_unique() {
    let names: std::collections::HashSet<_> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
    assert_eq!(names.len(), ErrorCode::ALL.len());
}

#[test]
fn deep_nesting_is_skipped_without_recursion() {
    // serde_json skips raw values iteratively: a 100,000-deep `message` is forwarded verbatim and
    // an unknown field that deep is ignored, without exhausting the stack.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let text = format!(r#"{{"cmd":"send_to_group","group_id":1,"message":{deep}}}"#);
    match parse(&text).unwrap().command {
        ClientCommand::SendToGroup { message, .. } => assert_eq!(message, deep),
        other => panic!("{other:?}"),
    }
    let text = format!(r#"{{"cmd":"add_group","group_id":1,"x":{deep}}}"#);
    assert!(parse(&text).is_ok());
    let unbalanced = format!(
        r#"{{"cmd":"add_group","group_id":1,"x":{}}}"#,
        "[".repeat(100_000)
    );
    assert_eq!(code(&unbalanced), ErrorCode::InvalidJson);
}

#[test]
fn publish_reads_like_send_to_group() {
    let limits = ParseLimits::default();
    let p = parse_publish(r#"{"group_id":123.0,"message":{ "a" : [1, 2] }}"#, &limits).unwrap();
    assert_eq!(p.group_id.as_str(), "123");
    assert_eq!(p.message, r#"{"a":[1,2]}"#);
    let p = parse_publish(
        r#"{"message":"a\"b","group_id":"g","cmd":"x","y":1}"#,
        &limits,
    )
    .unwrap();
    assert_eq!((p.group_id.as_str(), p.message.as_ref()), ("g", "a\"b"));

    let code = |text: &str| parse_publish(text, &limits).unwrap_err().code;
    assert_eq!(code(r#"{"group_id":"g""#), ErrorCode::InvalidJson);
    assert_eq!(code(r#"["g","m"]"#), ErrorCode::NotAnObject);
    assert_eq!(code(r#""g""#), ErrorCode::NotAnObject);
    assert_eq!(
        code(r#"{"group_id":"g","group_id":"h","message":1}"#),
        ErrorCode::DuplicateField
    );
    assert_eq!(code(r#"{"message":"m"}"#), ErrorCode::MissingField);
    assert_eq!(code(r#"{"group_id":"g"}"#), ErrorCode::MissingField);
    assert_eq!(
        code(r#"{"group_id":"","message":"m"}"#),
        ErrorCode::InvalidGroupId
    );
    assert_eq!(
        code(r#"{"group_id":[1],"message":"m"}"#),
        ErrorCode::InvalidGroupId
    );
    assert_eq!(
        code(r#"{"group_id":1.5,"message":"m"}"#),
        ErrorCode::InvalidGroupId
    );
    assert_eq!(
        code(r#"{"group_id":"g","message":"\ud800"}"#),
        ErrorCode::InvalidField
    );
    let long = format!(r#"{{"group_id":"{}","message":"m"}}"#, "x".repeat(257));
    assert_eq!(code(&long), ErrorCode::InvalidGroupId);
}

fn group_of(group_id: &str) -> Result<String, ErrorCode> {
    let text = format!(r#"{{"cmd":"add_group","group_id":{group_id}}}"#);
    match parse(&text) {
        Ok(Request {
            command: ClientCommand::AddGroup { group_id, .. },
            ..
        }) => Ok(group_id.as_str().to_owned()),
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(e.code),
    }
}

#[test]
fn numeric_group_ids_are_read_exactly() {
    // Each spelling names the exact integer it writes, or is refused: none is rounded to
    // another group.
    for (number, group) in [
        ("9007199254740992", "9007199254740992"),
        ("9007199254740992.0", "9007199254740992"),
        ("9.007199254740992e15", "9007199254740992"),
        ("-9007199254740992.000", "-9007199254740992"),
        ("-9007199254740992E+0", "-9007199254740992"),
        ("12300e-2", "123"),
        ("0.123e3", "123"),
        ("1.230E2", "123"),
        ("1e15", "1000000000000000"),
        ("-5", "-5"),
        ("-5.0", "-5"),
        ("0", "0"),
        ("-0", "0"),
        ("-0.0", "0"),
        ("0e-400", "0"),
        ("0.000e99999999999999999999", "0"),
        // Written without fraction or exponent: any 64-bit integer, as written.
        ("9007199254740993", "9007199254740993"),
        ("18446744073709551615", "18446744073709551615"),
        ("-9223372036854775808", "-9223372036854775808"),
    ] {
        assert_eq!(group_of(number), Ok(group.to_owned()), "{number}");
    }
    for number in [
        // Beyond 2^53 with a fraction or an exponent: f64 would make it 2^53.
        "9007199254740993.0",
        "9007199254740993e0",
        "-9007199254740993.0",
        "9.007199254740993e15",
        "1e16",
        "1e99999999999999999999",
        // A fraction, however small: f64 would drop it.
        "9007199254740992.5",
        "100000.00000000000000001",
        "1.00000000000000000001e5",
        "1e-400",
        "-1e-400",
        "15e-1",
        "0.5",
        // Too large for 64 bits.
        "18446744073709551616",
        "-9223372036854775809",
    ] {
        assert_eq!(group_of(number), Err(ErrorCode::InvalidGroupId), "{number}");
    }
    // A plain integer is its own canonical text: no copy.
    match parse(r#"{"cmd":"add_group","group_id":-42}"#)
        .unwrap()
        .command
    {
        ClientCommand::AddGroup { group_id, .. } => {
            assert!(matches!(group_id.0, Cow::Borrowed("-42")), "{group_id:?}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn text_that_only_starts_like_json_is_invalid_json() {
    // The object parse stops at the first value that is not an object: what follows must be
    // checked before the frame is called valid JSON.
    for text in [
        "[",
        "[1,",
        "[1,2",
        "[}",
        "12x",
        "1 2",
        "-",
        "[] garbage",
        r#""a" "b""#,
        "null,",
        " \n\t",
        // serde_json cannot decode this key, though JSON's grammar allows the escape.
        r#"{"\ud800":1,"cmd":"add_group","group_id":"1"}"#,
    ] {
        assert_eq!(code(text), ErrorCode::InvalidJson, "{text:?}");
    }
    let unclosed = "[".repeat(60_000);
    assert_eq!(code(&unclosed), ErrorCode::InvalidJson);
    let unclosed = format!("{}{}", "[".repeat(60_000), "]".repeat(59_999));
    assert_eq!(code(&unclosed), ErrorCode::InvalidJson);
    let trailing = format!("{}{}x", "[".repeat(30_000), "]".repeat(30_000));
    assert_eq!(code(&trailing), ErrorCode::InvalidJson);

    // Valid JSON that is not an object, at any depth and with any number.
    for text in [
        " [ ] ",
        "\n42\n",
        "-0.5",
        "1e400",
        "true",
        r#""\ud800""#,
        r#"[{"cmd":"add_group","group_id":"1"}]"#,
    ] {
        assert_eq!(code(text), ErrorCode::NotAnObject, "{text:?}");
    }
    let balanced = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert_eq!(code(&balanced), ErrorCode::NotAnObject);

    let limits = ParseLimits::default();
    let publish_code = |text: &str| parse_publish(text, &limits).unwrap_err().code;
    assert_eq!(publish_code("12x"), ErrorCode::InvalidJson);
    assert_eq!(publish_code("[{}"), ErrorCode::InvalidJson);
    assert_eq!(publish_code("12"), ErrorCode::NotAnObject);
}

// ---- The cluster-wide API. ----

const C1: &str = "5f0c1d2e3a4b6c7d-1-42";
const C2: &str = "00000000000000ff-0-0";

fn cid(text: &str) -> ClientId {
    text.parse().unwrap()
}

fn uid(text: &str) -> Uid {
    Uid::new(text, usize::MAX).unwrap()
}

fn reason(text: &str) -> String {
    parse(text).expect_err(text).reason
}

/// The code and reason of an error, owned.
fn error_with(text: &str, limits: &ParseLimits) -> (ErrorCode, String) {
    let e = parse_command(text, limits).expect_err(text);
    (e.code, e.reason)
}

#[test]
fn parse_limits_defaults() {
    let limits = ParseLimits::default();
    assert_eq!(limits.max_group_id_len, DEFAULT_MAX_GROUP_ID_LEN);
    assert_eq!(limits.max_uid_len, crate::cluster::DEFAULT_MAX_UID_LEN);
    assert_eq!(limits.max_targets, 100);
    assert_eq!(limits.max_page_size, 1000);
}

#[test]
fn reserved_prefix_is_refused_for_clients() {
    for text in [
        r#"{"cmd":"add_group","group_id":"\u001fctl"}"#,
        r#"{"cmd":"leave_group","group_id":"\u001f"}"#,
        r#"{"cmd":"send_to_group","group_id":"\u001fctl","message":"m"}"#,
        r#"{"cmd":"count","group_id":"\u001fp:g"}"#,
        r#"{"cmd":"members","group_id":"\u001fp:g"}"#,
    ] {
        let e = parse(text).expect_err(text);
        assert_eq!(e.code, ErrorCode::InvalidGroupId, "{text}");
        assert_eq!(e.reason, GroupIdError::Reserved.to_string());
    }
    assert_eq!(
        GroupIdError::Reserved.to_string(),
        "group ids starting with U+001F are reserved for the gateways' own topics"
    );
    // Unescaped, the control character is not valid JSON in the first place.
    assert_eq!(
        code("{\"cmd\":\"add_group\",\"group_id\":\"\u{1f}n:x\"}"),
        ErrorCode::InvalidJson
    );
    // Not at the start: an ordinary group.
    assert!(parse(r#"{"cmd":"add_group","group_id":"a\u001f"}"#).is_ok());

    let limits = ParseLimits::default();
    let e = parse_publish(r#"{"group_id":"\u001fctl","message":"m"}"#, &limits).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidGroupId);

    // The gateway's own names stay valid through the permissive constructors.
    assert!(GroupName::parse("\u{1f}ctl", 256).is_ok());
    assert!(GroupId::new("\u{1f}ctl", 256).is_ok());
    assert_eq!(
        GroupName::parse_client("\u{1f}ctl", 256),
        Err(GroupIdError::Reserved)
    );
    assert_eq!(GroupName::parse_client("", 256), Err(GroupIdError::Empty));
    assert!(matches!(
        GroupName::parse_client("abcd", 3),
        Err(GroupIdError::TooLong { len: 4, max: 3 })
    ));
    assert_eq!(GroupName::parse_client("g", 256).unwrap().as_str(), "g");
}

#[test]
fn add_group_presence() {
    let presence = |text: &str| match parse(text).unwrap().command {
        ClientCommand::AddGroup { presence, .. } => presence,
        other => panic!("{other:?}"),
    };
    assert!(!presence(r#"{"cmd":"add_group","group_id":"g"}"#));
    assert!(!presence(
        r#"{"cmd":"add_group","group_id":"g","presence":false}"#
    ));
    assert!(presence(
        r#"{"cmd":"add_group","group_id":"g","presence":true}"#
    ));
    for value in ["1", "0", r#""true""#, "null", "[]", "{}"] {
        let text = format!(r#"{{"cmd":"add_group","group_id":"g","presence":{value}}}"#);
        assert_eq!(code(&text), ErrorCode::InvalidField, "{text}");
    }
    assert_eq!(
        code(r#"{"cmd":"add_group","group_id":"g","presence":true,"presence":true}"#),
        ErrorCode::DuplicateField
    );
    // Other commands ignore it.
    assert!(parse(r#"{"cmd":"leave_group","group_id":"g","presence":7}"#).is_ok());
}

#[test]
fn send_to_group_exclude() {
    let text = format!(
        r#"{{"cmd":"send_to_group","group_id":"g","message":"m","exclude":["{C1}", "{C2}"]}}"#
    );
    match parse(&text).unwrap().command {
        ClientCommand::SendToGroup {
            group_id,
            message,
            exclude,
        } => {
            assert_eq!(group_id.as_str(), "g");
            assert_eq!(message, "m");
            assert_eq!(exclude, vec![cid(C1), cid(C2)]);
        }
        other => panic!("{other:?}"),
    }
    match parse(r#"{"cmd":"send_to_group","group_id":"g","message":"m","exclude":[]}"#)
        .unwrap()
        .command
    {
        ClientCommand::SendToGroup { exclude, .. } => assert!(exclude.is_empty()),
        other => panic!("{other:?}"),
    }
    // An escaped client id is decoded.
    let escaped = format!(
        r#"{{"cmd":"send_to_group","group_id":"g","message":"m","exclude":["{}\u002d1-42"]}}"#,
        &C1[..16]
    );
    match parse(&escaped).unwrap().command {
        ClientCommand::SendToGroup { exclude, .. } => assert_eq!(exclude, vec![cid(C1)]),
        other => panic!("{other:?}"),
    }
    for value in [
        r#""5f0c1d2e3a4b6c7d-1-42""#,
        "null",
        "{}",
        "1",
        "[1]",
        "[null]",
        r#"[["5f0c1d2e3a4b6c7d-1-42"]]"#,
        r#"["nope"]"#,
        r#"["5f0c1d2e3a4b6c7d-1-042"]"#,
        r#"["5F0C1D2E3A4B6C7D-1-42"]"#,
        r#"["5f0c1d2e3a4b6c7d-70000-1"]"#,
        r#"["5f0c1d2e3a4b6c7d-1-42", "x"]"#,
    ] {
        let text =
            format!(r#"{{"cmd":"send_to_group","group_id":"g","message":"m","exclude":{value}}}"#);
        assert_eq!(code(&text), ErrorCode::InvalidField, "{text}");
        assert!(reason(&text).contains("`exclude`"), "{text}");
    }
    // A bad client id says why.
    let text = r#"{"cmd":"send_to_group","group_id":"g","message":"m","exclude":["nope"]}"#;
    assert!(
        reason(text).contains("NODE-WORKER-CONN"),
        "{}",
        reason(text)
    );
}

fn exclude_list(n: usize) -> String {
    let ids: Vec<String> = (0..n)
        .map(|i| {
            format!(
                r#""{}""#,
                ClientId {
                    node: crate::cluster::NodeId(1),
                    worker: 0,
                    conn: i as u64
                }
            )
        })
        .collect();
    format!("[{}]", ids.join(","))
}

#[test]
fn exclude_is_bounded() {
    let text = |n| {
        format!(
            r#"{{"cmd":"send_to_all","message":"m","exclude":{}}}"#,
            exclude_list(n)
        )
    };
    match parse(&text(100)).unwrap().command {
        ClientCommand::SendToAll { exclude, .. } => assert_eq!(exclude.len(), 100),
        other => panic!("{other:?}"),
    }
    let (code, reason) = error_with(&text(101), &ParseLimits::default());
    assert_eq!(code, ErrorCode::InvalidField);
    assert!(reason.contains("at most 100"), "{reason}");
    // Far too many: refused without reading them all.
    assert_eq!(
        error_with(&text(10_000), &ParseLimits::default()).0,
        ErrorCode::InvalidField
    );

    let limits = ParseLimits {
        max_targets: 2,
        ..ParseLimits::default()
    };
    let send = |n| {
        format!(
            r#"{{"cmd":"send_to_group","group_id":"g","message":"m","exclude":{}}}"#,
            exclude_list(n)
        )
    };
    assert!(parse_command(&send(2), &limits).is_ok());
    let (code, reason) = error_with(&send(3), &limits);
    assert_eq!(code, ErrorCode::InvalidField);
    assert!(reason.contains("at most 2"), "{reason}");
    let limits = ParseLimits {
        max_targets: 0,
        ..ParseLimits::default()
    };
    assert!(parse_command(&send(0), &limits).is_ok());
    assert!(parse_command(&send(1), &limits).is_err());
}

#[test]
fn send_to_all() {
    let r = parse(r#"{"cmd":"send_to_all","message":"hi","req_id":2}"#).unwrap();
    assert_eq!(
        r.command,
        ClientCommand::SendToAll {
            message: Cow::Borrowed("hi"),
            exclude: vec![]
        }
    );
    let text = format!(r#"{{"cmd":"send_to_all","message":{{"a": 1}},"exclude":["{C2}"]}}"#);
    assert_eq!(
        parse(&text).unwrap().command,
        ClientCommand::SendToAll {
            message: Cow::Borrowed(r#"{"a":1}"#),
            exclude: vec![cid(C2)]
        }
    );
    assert_eq!(code(r#"{"cmd":"send_to_all"}"#), ErrorCode::MissingField);
    assert_eq!(
        code(r#"{"cmd":"send_to_all","message":"m","exclude":"x"}"#),
        ErrorCode::InvalidField
    );
    assert_eq!(
        code(r#"{"cmd":"send_to_all","message":"\ud800"}"#),
        ErrorCode::InvalidField
    );
    // No group id needed, and one given is ignored (not validated).
    assert!(parse(r#"{"cmd":"send_to_all","message":"m","group_id":""}"#).is_ok());
}

fn uids_of(value: &str) -> Result<Vec<String>, CommandError<'static>> {
    let text = format!(r#"{{"cmd":"send_to_uid","uid":{value},"message":"m"}}"#);
    match parse(&text) {
        Ok(Request {
            command: ClientCommand::SendToUid { uids, message },
            ..
        }) => {
            assert_eq!(message, "m");
            Ok(uids.iter().map(|u| u.as_str().to_owned()).collect())
        }
        Ok(other) => panic!("{other:?}"),
        Err(e) => Err(CommandError::new(e.code, e.reason)),
    }
}

#[test]
fn send_to_uid_forms() {
    let ok = |value: &str| uids_of(value).unwrap_or_else(|e| panic!("{value}: {e}"));
    assert_eq!(ok(r#""alice""#), ["alice"]);
    assert_eq!(ok(r#""a\u0062c""#), ["abc"]);
    assert_eq!(ok("42"), ["42"]);
    assert_eq!(ok("-7"), ["-7"]);
    assert_eq!(ok("0"), ["0"]);
    assert_eq!(ok("-0"), ["0"]);
    assert_eq!(ok("18446744073709551615"), ["18446744073709551615"]);
    assert_eq!(ok("-9223372036854775808"), ["-9223372036854775808"]);
    // The integer and its decimal text are one uid.
    assert_eq!(
        ok(r#"[42, "42", "b", 7, "b", -0, 0]"#),
        ["42", "b", "7", "0"]
    );
    assert_eq!(ok(r#"["x"]"#), ["x"]);
}

#[test]
fn send_to_uid_errors() {
    let err = |value: &str| uids_of(value).expect_err(value);
    for value in [
        "42.0",
        "4.2e1",
        "1e3",
        "-1.5",
        "18446744073709551616",
        "-9223372036854775809",
        "true",
        "null",
        "{}",
        r#""""#,
        "[]",
        "[[1]]",
        "[null]",
        r#"["a", 1.5]"#,
        r#"["a", ""]"#,
        r#"["a", {}]"#,
        r#""\ud800""#,
    ] {
        let e = err(value);
        assert_eq!(e.code, ErrorCode::InvalidField, "{value}: {e}");
        assert!(e.reason.contains("uid"), "{value}: {e}");
    }
    // Too long.
    let long = format!(r#""{}""#, "u".repeat(129));
    assert_eq!(err(&long).code, ErrorCode::InvalidField);
    assert!(uids_of(&format!(r#""{}""#, "u".repeat(128))).is_ok());
    let limits = ParseLimits {
        max_uid_len: 2,
        ..ParseLimits::default()
    };
    assert!(parse_command(r#"{"cmd":"send_to_uid","uid":99,"message":"m"}"#, &limits).is_ok());
    let e = parse_command(r#"{"cmd":"send_to_uid","uid":100,"message":"m"}"#, &limits).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidField);
    assert!(e.reason.contains("uid"), "{}", e.reason);

    // Missing fields.
    assert_eq!(
        code(r#"{"cmd":"send_to_uid","message":"m"}"#),
        ErrorCode::MissingField
    );
    assert_eq!(
        code(r#"{"cmd":"send_to_uid","uid":1}"#),
        ErrorCode::MissingField
    );
    assert_eq!(
        code(r#"{"cmd":"send_to_uid","uid":1,"uid":2,"message":"m"}"#),
        ErrorCode::DuplicateField
    );
}

#[test]
fn send_to_uid_targets_are_bounded() {
    let list = |n: usize| {
        let items: Vec<String> = (0..n).map(|i| i.to_string()).collect();
        format!("[{}]", items.join(","))
    };
    assert_eq!(uids_of(&list(100)).unwrap().len(), 100);
    let e = uids_of(&list(101)).unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidField);
    assert!(e.reason.contains("1 to 100"), "{}", e.reason);
    // Duplicates count against the bound: it limits the request, not the result.
    let dups = format!("[{}]", vec!["1"; 101].join(","));
    assert_eq!(uids_of(&dups).unwrap_err().code, ErrorCode::InvalidField);
    assert_eq!(
        uids_of(&format!("[{}]", vec!["1"; 100].join(","))).unwrap(),
        ["1"]
    );

    let limits = ParseLimits {
        max_targets: 2,
        ..ParseLimits::default()
    };
    let text = |v: &str| format!(r#"{{"cmd":"send_to_uid","uid":{v},"message":"m"}}"#);
    assert!(parse_command(&text("[1,2]"), &limits).is_ok());
    assert!(parse_command(&text("[1,2,3]"), &limits).is_err());
}

#[test]
fn send_to_client() {
    let text = format!(r#"{{"cmd":"send_to_client","client_id":"{C1}","message":"hi"}}"#);
    assert_eq!(
        parse(&text).unwrap().command,
        ClientCommand::SendToClient {
            client_id: cid(C1),
            message: Cow::Borrowed("hi")
        }
    );
    assert_eq!(
        code(r#"{"cmd":"send_to_client","message":"hi"}"#),
        ErrorCode::MissingField
    );
    let text = format!(r#"{{"cmd":"send_to_client","client_id":"{C1}"}}"#);
    assert_eq!(code(&text), ErrorCode::MissingField);
    for value in [
        "42",
        "null",
        r#"["5f0c1d2e3a4b6c7d-1-42"]"#,
        r#""""#,
        r#""5f0c1d2e3a4b6c7d-1""#,
        r#""5f0c1d2e3a4b6c7d-1-42-1""#,
        r#""5f0c1d2e3a4b6c7-1-42""#,
        r#""5f0c1d2e3a4b6c7d-+1-42""#,
    ] {
        let text = format!(r#"{{"cmd":"send_to_client","client_id":{value},"message":"m"}}"#);
        let e = parse(&text).expect_err(&text);
        assert_eq!(e.code, ErrorCode::InvalidField, "{text}");
        assert!(e.reason.contains("`client_id`"), "{text}: {}", e.reason);
    }
}

#[test]
fn bind_unbind_whoami() {
    assert_eq!(
        parse(r#"{"cmd":"bind_uid","uid":"alice"}"#)
            .unwrap()
            .command,
        ClientCommand::BindUid { uid: uid("alice") }
    );
    assert_eq!(
        parse(r#"{"cmd":"bind_uid","uid":-0}"#).unwrap().command,
        ClientCommand::BindUid { uid: uid("0") }
    );
    assert_eq!(
        parse(r#"{"cmd":"bind_uid","uid":1234}"#).unwrap().command,
        ClientCommand::BindUid { uid: uid("1234") }
    );
    assert_eq!(code(r#"{"cmd":"bind_uid"}"#), ErrorCode::MissingField);
    for value in [r#"["a"]"#, "[1]", "1.0", r#""""#, "null", "false"] {
        let text = format!(r#"{{"cmd":"bind_uid","uid":{value}}}"#);
        let e = parse(&text).expect_err(&text);
        assert_eq!(e.code, ErrorCode::InvalidField, "{text}");
        assert!(e.reason.contains("uid"), "{text}");
    }
    let long = format!(r#"{{"cmd":"bind_uid","uid":"{}"}}"#, "u".repeat(129));
    assert_eq!(code(&long), ErrorCode::InvalidField);

    let r = parse(r#"{"cmd":"unbind_uid","req_id":"x"}"#).unwrap();
    assert_eq!(r.command, ClientCommand::UnbindUid);
    assert_eq!(r.req_id.map(|r| r.as_json()), Some(r#""x""#));
    assert_eq!(
        parse(r#"{"cmd":"whoami","uid":[]}"#).unwrap().command,
        ClientCommand::Whoami
    );
}

#[test]
fn count_and_members() {
    assert_eq!(
        parse(r#"{"cmd":"count","group_id":12}"#).unwrap().command,
        ClientCommand::Count {
            group_id: GroupName::parse("12", 256).unwrap()
        }
    );
    assert_eq!(code(r#"{"cmd":"count"}"#), ErrorCode::MissingField);
    assert_eq!(
        code(r#"{"cmd":"count","group_id":""}"#),
        ErrorCode::InvalidGroupId
    );

    let members = |text: &str| match parse(text).unwrap().command {
        ClientCommand::Members {
            group_id,
            limit,
            cursor,
        } => (group_id.as_str().to_owned(), limit, cursor),
        other => panic!("{other:?}"),
    };
    assert_eq!(
        members(r#"{"cmd":"members","group_id":"g"}"#),
        ("g".to_owned(), 100, None)
    );
    assert_eq!(
        members(r#"{"cmd":"members","group_id":"g","limit":1,"cursor":null}"#),
        ("g".to_owned(), 1, None)
    );
    assert_eq!(
        members(&format!(
            r#"{{"cmd":"members","group_id":"g","limit":1000,"cursor":"{C1}"}}"#
        )),
        ("g".to_owned(), 1000, Some(cid(C1)))
    );
    assert_eq!(code(r#"{"cmd":"members"}"#), ErrorCode::MissingField);
    for value in [
        "0",
        "1001",
        "-1",
        "1.0",
        "1e2",
        "99999999999999999999",
        r#""10""#,
        "null",
        "true",
        "[]",
    ] {
        let text = format!(r#"{{"cmd":"members","group_id":"g","limit":{value}}}"#);
        let e = parse(&text).expect_err(&text);
        assert_eq!(e.code, ErrorCode::InvalidField, "{text}");
        assert!(e.reason.contains("`limit`"), "{text}");
        assert!(e.reason.contains("1 to 1000"), "{text}");
    }
    for value in ["1", r#""nope""#, "[]", "{}", "false"] {
        let text = format!(r#"{{"cmd":"members","group_id":"g","cursor":{value}}}"#);
        let e = parse(&text).expect_err(&text);
        assert_eq!(e.code, ErrorCode::InvalidField, "{text}");
        assert!(e.reason.contains("`cursor`"), "{text}");
    }
    let limits = ParseLimits {
        max_page_size: 10,
        ..ParseLimits::default()
    };
    for text in [
        r#"{"cmd":"members","group_id":"g"}"#,
        r#"{"cmd":"members","group_id":"g","limit":10}"#,
    ] {
        assert!(matches!(
            parse_command(text, &limits).map(|r| r.command),
            Ok(ClientCommand::Members { limit: 10, .. })
        ));
    }
    assert_eq!(
        error_with(r#"{"cmd":"members","group_id":"g","limit":11}"#, &limits).0,
        ErrorCode::InvalidField
    );
}

#[test]
fn whoami_reply_json() {
    let c = cid(C1);
    assert_eq!(
        whoami_reply(&c, None, &[], None),
        format!(r#"{{"cmd":"whoami","client_id":"{C1}","uid":null,"groups":[]}}"#)
    );
    let r = parse(r#"{"cmd":"whoami","req_id":9}"#).unwrap();
    let u = uid("42");
    assert_eq!(
        whoami_reply(&c, Some(&u), &["a", "b\"c"], r.req_id),
        format!(
            r#"{{"cmd":"whoami","client_id":"{C1}","uid":"42","groups":["a","b\"c"],"req_id":9}}"#
        )
    );
    let tricky = uid("q\"\\\n\u{1}é");
    let text = whoami_reply(&c, Some(&tricky), &["\n", "ü"], None);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["uid"], tricky.as_str());
    assert_eq!(v["groups"], serde_json::json!(["\n", "ü"]));
    assert_eq!(v["client_id"].as_str().unwrap().parse::<ClientId>(), Ok(c));
    let reply: Reply = serde_json::from_str(&text).unwrap();
    assert_eq!(reply.cmd, "whoami");
}

#[test]
fn presence_event_json() {
    let c = cid(C2);
    assert_eq!(
        presence_event(PresenceKind::Join, "g", &c, Some(&uid("7"))),
        format!(r#"{{"cmd":"join","group_id":"g","client_id":"{C2}","uid":"7"}}"#)
    );
    assert_eq!(
        presence_event(PresenceKind::Leave, "a\"b", &c, None),
        format!(r#"{{"cmd":"leave","group_id":"a\"b","client_id":"{C2}","uid":null}}"#)
    );
    let v: serde_json::Value =
        serde_json::from_str(&presence_event(PresenceKind::Join, "\u{0}\t", &c, None)).unwrap();
    assert_eq!(v["group_id"], "\u{0}\t");
    assert_eq!(PresenceKind::Join.as_str(), "join");
    assert_eq!(PresenceKind::Leave.as_str(), "leave");
}

#[test]
fn request_json_round_trips_every_command() {
    let g = |name| GroupName::parse(name, 256).unwrap();
    let commands = [
        ClientCommand::AddGroup {
            group_id: g("g"),
            presence: false,
            positioned: false,
            recover: None,
        },
        ClientCommand::AddGroup {
            group_id: g("g"),
            presence: true,
            positioned: false,
            recover: None,
        },
        ClientCommand::AddGroup {
            group_id: g("g"),
            presence: false,
            positioned: true,
            recover: Some(crate::history::Recover {
                offset: 17,
                epoch: crate::history::Epoch::new("e-1").unwrap(),
            }),
        },
        ClientCommand::LeaveGroup { group_id: g("g") },
        ClientCommand::SendToGroup {
            group_id: g("g"),
            message: Cow::Borrowed("m \"q\""),
            exclude: vec![],
        },
        ClientCommand::SendToGroup {
            group_id: g("g"),
            message: Cow::Borrowed("m"),
            exclude: vec![cid(C1), cid(C2)],
        },
        ClientCommand::SendToAll {
            message: Cow::Borrowed("m"),
            exclude: vec![],
        },
        ClientCommand::SendToAll {
            message: Cow::Borrowed("m"),
            exclude: vec![cid(C2)],
        },
        ClientCommand::SendToUid {
            uids: vec![uid("alice")],
            message: Cow::Borrowed("m"),
        },
        ClientCommand::SendToUid {
            uids: vec![uid("alice"), uid("42"), uid("a\"b")],
            message: Cow::Borrowed("m"),
        },
        ClientCommand::SendToClient {
            client_id: cid(C1),
            message: Cow::Borrowed("m"),
        },
        ClientCommand::BindUid { uid: uid("u 1") },
        ClientCommand::UnbindUid,
        ClientCommand::Whoami,
        ClientCommand::Count { group_id: g("g") },
        ClientCommand::Members {
            group_id: g("g"),
            limit: 100,
            cursor: None,
        },
        ClientCommand::Members {
            group_id: g("g"),
            limit: 7,
            cursor: Some(cid(C2)),
        },
        ClientCommand::Auth {
            token: Cow::Borrowed("a.b.c"),
        },
    ];
    for command in &commands {
        for req_id in [None, Some(5)] {
            let text = request_json(command, req_id);
            let parsed = parse(&text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(&parsed.command, command, "{text}");
            assert_eq!(
                parsed.req_id.map(|r| r.as_json().to_owned()),
                req_id.map(|r| r.to_string())
            );
        }
    }
    // The shapes of optional fields.
    let json = |command: &ClientCommand<'_>| -> serde_json::Value {
        serde_json::from_str(&request_json(command, None)).unwrap()
    };
    let v = json(&commands[0]);
    assert!(v.get("presence").is_none());
    assert_eq!(json(&commands[1])["presence"], true);
    assert!(json(&commands[4]).get("exclude").is_none());
    assert_eq!(json(&commands[5])["exclude"], serde_json::json!([C1, C2]));
    assert!(json(&commands[6]).get("exclude").is_none());
    assert_eq!(json(&commands[8])["uid"], "alice");
    assert_eq!(
        json(&commands[9])["uid"],
        serde_json::json!(["alice", "42", "a\"b"])
    );
    assert_eq!(json(&commands[15])["limit"], 100);
    assert!(json(&commands[15]).get("cursor").is_none());
    assert_eq!(json(&commands[16])["cursor"], C2);
    assert_eq!(
        request_json(&ClientCommand::Whoami, Some(1)),
        r#"{"cmd":"whoami","req_id":1}"#
    );
    assert_eq!(
        json(&commands[2])["recover"],
        serde_json::json!({"offset":17,"epoch":"e-1"})
    );
}

#[test]
fn new_fields_are_not_duplicated() {
    for text in [
        r#"{"cmd":"send_to_all","message":"m","exclude":[],"exclude":[]}"#,
        r#"{"cmd":"members","group_id":"g","limit":1,"limit":1}"#,
        r#"{"cmd":"members","group_id":"g","cursor":null,"cursor":null}"#,
        r#"{"cmd":"send_to_client","client_id":"x","client_id":"y","message":"m"}"#,
    ] {
        assert_eq!(code(text), ErrorCode::DuplicateField, "{text}");
    }
}

#[test]
fn positioned_joins_and_recovery() {
    let r = parse(r#"{"cmd":"add_group","group_id":"g","positioned":true,"recover":{"offset":17,"epoch":"ab"}}"#).unwrap();
    match r.command {
        ClientCommand::AddGroup {
            positioned,
            recover,
            ..
        } => {
            assert!(positioned);
            let recover = recover.expect("recover");
            assert_eq!(recover.offset, 17);
            assert_eq!(recover.epoch.as_str(), "ab");
        }
        other => panic!("{other:?}"),
    }
    for (bad, why) in [
        (
            r#"{"cmd":"add_group","group_id":"g","recover":{"offset":1,"epoch":"ab"}}"#,
            "positioned",
        ),
        (
            r#"{"cmd":"add_group","group_id":"g","positioned":1}"#,
            "positioned",
        ),
        (
            r#"{"cmd":"add_group","group_id":"g","positioned":true,"recover":{"offset":-1,"epoch":"ab"}}"#,
            "recover",
        ),
        (
            r#"{"cmd":"add_group","group_id":"g","positioned":true,"recover":{"offset":1,"epoch":"a b"}}"#,
            "recover",
        ),
        (
            r#"{"cmd":"add_group","group_id":"g","positioned":true,"recover":{"offset":1}}"#,
            "recover",
        ),
        (
            r#"{"cmd":"add_group","group_id":"g","positioned":true,"recover":"x"}"#,
            "recover",
        ),
    ] {
        let e = parse(bad).expect_err(bad);
        assert_eq!(e.code, ErrorCode::InvalidField, "{bad}");
        assert!(e.reason.contains(why), "{bad}: {}", e.reason);
    }
}
