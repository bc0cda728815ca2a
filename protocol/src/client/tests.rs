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
            group_id: GroupName(Cow::Borrowed("123"))
        }
    );
    assert_eq!(r.req_id, None);
    let r = parse(r#"{"cmd":"send_to_group", "group_id":"123", "message":"C'est le message"}"#)
        .unwrap();
    match r.command {
        ClientCommand::SendToGroup { group_id, message } => {
            assert_eq!(group_id.as_str(), "123");
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
            ClientCommand::AddGroup { group_id } => assert_eq!(group_id.as_str(), "123", "{text}"),
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
    };
    assert!(parse_command(r#"{"cmd":"add_group","group_id":"1234"}"#, &limits).is_err());
}

#[test]
fn escaped_group_id_is_unescaped() {
    match parse(r#"{"cmd":"add_group","group_id":"a\u0062c"}"#)
        .unwrap()
        .command
    {
        ClientCommand::AddGroup { group_id } => assert_eq!(group_id.as_str(), "abc"),
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
        ClientCommand::AddGroup { group_id } => assert_eq!(group_id.as_str(), "1"),
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
        r#"{"cmd":"error","code":"unknown_cmd","reason":"unknown cmd \"nope\"; expected add_group, leave_group, send_to_group or auth","req_id":"a"}"#
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
            command: ClientCommand::AddGroup { group_id },
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
        ClientCommand::AddGroup { group_id } => {
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
