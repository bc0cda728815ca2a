//! Property tests: arbitrary bytes and strings never panic the decoders, never make them reserve
//! beyond the frame limit, and valid input always round-trips.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use protocol::client::{parse_command, request_json, ClientCommand, GroupName, ParseLimits};
use protocol::codec::{decode_frame, encode_frame, encode_message, encode_publish};
use protocol::link::{Body, Message, Ping, Publish, Subscribe};
use protocol::ErrorCode;
use protocol::{Frame, FrameError};

const MAX: usize = 4096;
/// Largest magnitude of a numeric group id written with a fraction or an exponent.
const MAX_EXACT_INT: u64 = 1 << 53;

/// The group `{"cmd":"add_group","group_id":NUMBER}` joins; `None` when it is refused (always
/// with `invalid_group_id`).
fn numeric_group(number: &str) -> Result<Option<String>, TestCaseError> {
    let text = format!(r#"{{"cmd":"add_group","group_id":{number}}}"#);
    match parse_command(&text, &ParseLimits::default()) {
        Ok(request) => match request.command {
            ClientCommand::AddGroup { group_id, .. } => Ok(Some(group_id.as_str().to_owned())),
            other => Err(TestCaseError::fail(format!("{number}: {other:?}"))),
        },
        Err(e) => {
            prop_assert_eq!(e.code, ErrorCode::InvalidGroupId, "{}: {}", number, e);
            Ok(None)
        }
    }
}

/// Spellings of the integer `n` as a JSON number, all of the same value; `split` picks where a
/// decimal point goes in one of them.
fn spellings(n: i64, split: prop::sample::Index) -> Vec<String> {
    let sign = if n < 0 { "-" } else { "" };
    let digits = n.unsigned_abs().to_string();
    let len = digits.len();
    let (first, rest) = digits.split_at(1);
    let at = 1 + split.index(len);
    let (int, frac) = digits.split_at(at);
    let mut forms = vec![
        format!("{sign}{digits}"),
        format!("{sign}{digits}.0"),
        format!("{sign}{digits}.000"),
        format!("{sign}{digits}e0"),
        format!("{sign}{digits}E+0"),
        format!("{sign}{digits}e-0"),
        format!("{sign}{digits}.00E00"),
        format!("{sign}{first}.{rest}0e{}", len - 1),
        format!("{sign}{first}.{rest}0E+{}", len - 1),
        format!("{sign}{int}.{frac}0e{}", len - at),
        format!("{sign}0.{digits}e{len}"),
        format!("{sign}0.000{digits}000e{}", len + 3),
    ];
    let stripped = digits.trim_end_matches('0');
    if !stripped.is_empty() {
        forms.push(format!("{sign}{stripped}e{}", len - stripped.len()));
        forms.push(format!("{sign}{digits}00e-2"));
    }
    forms
}

/// The group a JSON number names, computed with 128-bit integers (the number has at most 31
/// digits and an exponent within ±40).
fn reference_group(
    negative: bool,
    int: &str,
    frac: Option<&str>,
    exp: Option<i32>,
) -> Option<String> {
    let sign = if negative { "-" } else { "" };
    if frac.is_none() && exp.is_none() {
        let text = format!("{sign}{int}");
        if text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok() {
            return Some(text.parse::<i128>().ok()?.to_string());
        }
        return None;
    }
    let frac = frac.unwrap_or("");
    let mut mantissa: u128 = format!("{int}{frac}").parse().ok()?;
    let mut scale = i64::from(exp.unwrap_or(0)) - frac.len() as i64;
    if mantissa == 0 {
        return Some("0".into());
    }
    while scale < 0 && mantissa % 10 == 0 {
        mantissa /= 10;
        scale += 1;
    }
    if scale < 0 {
        return None;
    }
    let value = mantissa.checked_mul(10u128.checked_pow(u32::try_from(scale).ok()?)?)?;
    (value <= u128::from(MAX_EXACT_INT)).then(|| format!("{sign}{value}"))
}

fn arb_frame() -> impl Strategy<Value = Frame> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..200).prop_map(Bytes::from);
    prop_oneof![
        (bytes(), bytes(), any::<bool>()).prop_map(|(channel, payload, no_echo)| Frame::new(
            Body::Publish(Publish {
                channel,
                payload,
                no_echo,
                history: None,
                id: 0,
                origin: 0,
            })
        )),
        (bytes(), bytes())
            .prop_map(|(channel, payload)| Frame::new(Body::Message(Message { channel, payload }))),
        proptest::collection::vec(bytes(), 0..10)
            .prop_map(|channels| Frame::new(Body::Subscribe(Subscribe { channels }))),
        any::<u64>().prop_map(|nonce| Frame::new(Body::Ping(Ping { nonce }))),
        ".{0,40}".prop_map(Frame::hello),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn arbitrary_bytes_never_panic_nor_overallocate(input in proptest::collection::vec(any::<u8>(), 0..600)) {
        let mut buf = BytesMut::from(&input[..]);
        let start_capacity = buf.capacity();
        loop {
            let before = buf.len();
            match decode_frame(&mut buf, MAX) {
                Ok(Some(_)) => prop_assert!(buf.len() < before, "a decoded frame consumes bytes"),
                Ok(None) => break,
                Err(FrameError::TooLarge { len, max }) => {
                    prop_assert!(len > max);
                    break;
                }
                Err(_) => break,
            }
        }
        prop_assert!(
            buf.capacity() <= start_capacity.max(MAX + 4),
            "reserved {} bytes, limit {}", buf.capacity(), MAX + 4
        );
    }

    #[test]
    fn length_prefix_beyond_limit_reserves_nothing(len in (MAX as u32 + 1).., tail in proptest::collection::vec(any::<u8>(), 0..64)) {
        let mut input = len.to_be_bytes().to_vec();
        input.extend_from_slice(&tail);
        let mut buf = BytesMut::from(&input[..]);
        let capacity = buf.capacity();
        let is_too_large = matches!(decode_frame(&mut buf, MAX), Err(FrameError::TooLarge { .. }));
        prop_assert!(is_too_large);
        prop_assert_eq!(buf.capacity(), capacity);
    }

    #[test]
    fn frames_round_trip_through_any_split(frames in proptest::collection::vec(arb_frame(), 1..8), cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6)) {
        let mut wire = Vec::new();
        for frame in &frames {
            wire.extend_from_slice(&encode_frame(frame, MAX).unwrap());
        }
        let mut points: Vec<usize> = cuts.iter().map(|i| i.index(wire.len() + 1)).collect();
        points.push(wire.len());
        points.sort_unstable();
        let mut buf = BytesMut::new();
        let mut decoded = Vec::new();
        let mut fed = 0;
        for point in points {
            buf.extend_from_slice(&wire[fed..point]);
            fed = point;
            while let Some(frame) = decode_frame(&mut buf, MAX).unwrap() {
                decoded.push(frame);
            }
        }
        prop_assert_eq!(decoded, frames);
        prop_assert!(buf.is_empty());
    }

    #[test]
    fn hand_encoders_decode_back(channel in proptest::collection::vec(any::<u8>(), 0..100), payload in proptest::collection::vec(any::<u8>(), 0..300), no_echo in any::<bool>()) {
        let mut buf = BytesMut::from(&encode_publish(&channel, &payload, no_echo, MAX).unwrap()[..]);
        let expected = Frame::new(Body::Publish(Publish { channel: Bytes::from(channel.clone()), payload: Bytes::from(payload.clone()), no_echo, history: None, id: 0, origin: 0 }));
        prop_assert_eq!(decode_frame(&mut buf, MAX).unwrap(), Some(expected));
        let mut buf = BytesMut::from(&encode_message(&channel, &payload, MAX).unwrap()[..]);
        let expected = Frame::new(Body::Message(Message { channel: Bytes::from(channel), payload: Bytes::from(payload) }));
        prop_assert_eq!(decode_frame(&mut buf, MAX).unwrap(), Some(expected));
    }

    #[test]
    fn arbitrary_text_never_panics_the_command_parser(text in ".{0,300}") {
        let _ = parse_command(&text, &ParseLimits::default());
    }

    #[test]
    fn json_shaped_text_never_panics_the_command_parser(
        parts in proptest::collection::vec(prop_oneof![
            Just("{"), Just("}"), Just("["), Just("]"), Just(","), Just(":"), Just("\"cmd\""),
            Just("\"group_id\""), Just("\"message\""), Just("\"req_id\""), Just("\"add_group\""),
            Just("\"send_to_group\""), Just("\"leave_group\""), Just("1"), Just("-0"), Just("1e999"),
            Just("123.0"), Just("null"), Just("true"), Just("\"\\u0000\""), Just("\"\\ud800\""), Just("\"x\""),
        ], 0..40)
    ) {
        let text: String = parts.concat();
        let _ = parse_command(&text, &ParseLimits::default());
    }

    #[test]
    fn json_shaped_text_gets_the_error_code_of_its_syntax(
        parts in proptest::collection::vec(prop_oneof![
            Just("{"), Just("}"), Just("["), Just("]"), Just(","), Just(":"), Just(" "),
            Just("\"cmd\""), Just("\"group_id\""), Just("\"add_group\""), Just("1"), Just("-0"),
            Just("12.5e3"), Just("x"), Just("null"), Just("true"), Just("\"x\""),
        ], 0..40)
    ) {
        // At most 40 levels deep and no lone surrogates: serde_json reads the valid JSON of these
        // as a Value, except numbers beyond f64 (`12.5e311`, made by joining parts), which are
        // valid JSON that a Value cannot hold: for those, only the syntax is checked.
        let text: String = parts.concat();
        let value = serde_json::from_str::<serde_json::Value>(&text);
        let syntax_ok = serde_json::from_str::<serde::de::IgnoredAny>(&text).is_ok();
        let code = parse_command(&text, &ParseLimits::default()).err().map(|e| e.code);
        let object = text.trim_start().starts_with('{');
        match value {
            Err(_) if !syntax_ok => prop_assert_eq!(code, Some(ErrorCode::InvalidJson), "{}", text),
            Ok(serde_json::Value::Object(_)) => prop_assert!(
                !matches!(code, Some(ErrorCode::InvalidJson | ErrorCode::NotAnObject)),
                "{}: {:?}", text, code
            ),
            Err(_) if object => prop_assert!(
                !matches!(code, Some(ErrorCode::InvalidJson | ErrorCode::NotAnObject)),
                "{}: {:?}", text, code
            ),
            _ => prop_assert_eq!(code, Some(ErrorCode::NotAnObject), "{}", text),
        }
    }

    #[test]
    fn valid_commands_round_trip(group in "[^\u{0}\u{1f}][^\u{0}]{0,63}", message in ".{0,200}", kind in 0..3u8, req_id in proptest::option::of(any::<u64>())) {
        let group_id = GroupName::parse(&group, 256).unwrap();
        let command = match kind {
            0 => ClientCommand::AddGroup { group_id, presence: false, positioned: false, recover: None },
            1 => ClientCommand::LeaveGroup { group_id },
            _ => ClientCommand::SendToGroup { group_id, message: message.as_str().into(), exclude: vec![] },
        };
        let text = request_json(&command, req_id);
        let parsed = parse_command(&text, &ParseLimits::default()).unwrap();
        prop_assert_eq!(parsed.command, command);
        prop_assert_eq!(parsed.req_id.map(|r| r.as_json().to_owned()), req_id.map(|r| r.to_string()));
    }

    #[test]
    fn integers_spelled_any_way_name_one_group(n in -(MAX_EXACT_INT as i64)..=(MAX_EXACT_INT as i64), split in any::<prop::sample::Index>()) {
        for form in spellings(n, split) {
            prop_assert_eq!(numeric_group(&form)?, Some(n.to_string()), "{}", form);
        }
    }

    #[test]
    fn fractions_are_never_accepted(n in prop_oneof![
        any::<i64>(),
        -(MAX_EXACT_INT as i64)..=(MAX_EXACT_INT as i64),
        // Where a float has no bits left for a fraction.
        (MAX_EXACT_INT as i64 - 4096)..=(MAX_EXACT_INT as i64),
    ], frac in "[0-9]{0,8}[1-9]", zeros in 0..4usize) {
        let sign = if n < 0 { "-" } else { "" };
        let digits = n.unsigned_abs().to_string();
        let zeros = "0".repeat(zeros);
        let mut forms = vec![
            format!("{sign}{digits}.{frac}"),
            format!("{sign}{digits}.{frac}{zeros}"),
            format!("{sign}{digits}.{frac}e0"),
            format!("{sign}{digits}.{frac}{zeros}E-0"),
            format!("{sign}0.{digits}{frac}e{}", digits.len()),
            format!("{sign}{digits}.{zeros}{frac}"),
        ];
        if n != 0 {
            forms.push(format!("{sign}{digits}{frac}e-{}", frac.len()));
            forms.push(format!("{sign}{digits}{zeros}{frac}e-{}", zeros.len() + frac.len()));
        }
        for form in forms {
            prop_assert_eq!(numeric_group(&form)?, None, "{}", form);
        }
    }

    #[test]
    fn beyond_2_53_only_plain_integers_are_accepted(n in prop_oneof![
        // 2^53 + 1 is the first integer a float rounds (to 2^53).
        (MAX_EXACT_INT as i64 + 1)..=(MAX_EXACT_INT as i64 + 8),
        (MAX_EXACT_INT as i64 + 1)..=i64::MAX,
    ], negative in any::<bool>()) {
        let n = if negative { -n } else { n };
        prop_assert_eq!(numeric_group(&n.to_string())?, Some(n.to_string()));
        for form in [format!("{n}.0"), format!("{n}e0"), format!("{n}0e-1"), format!("{n}.000E+0")] {
            prop_assert_eq!(numeric_group(&form)?, None, "{}", form);
        }
    }

    #[test]
    fn numbers_name_their_exact_value(
        negative in any::<bool>(),
        int in "0|[1-9][0-9]{0,20}",
        frac in proptest::option::of("[0-9]{1,10}"),
        exp in proptest::option::of((-40..=40i32, prop_oneof![Just("e"), Just("E"), Just("e+"), Just("E+")])),
    ) {
        let mut number = format!("{}{int}", if negative { "-" } else { "" });
        if let Some(frac) = &frac {
            number.push('.');
            number.push_str(frac);
        }
        if let Some((exp, marker)) = exp {
            if exp < 0 {
                number.push_str(&format!("e{exp}"));
            } else {
                number.push_str(&format!("{marker}{exp}"));
            }
        }
        let expected = reference_group(negative, &int, frac.as_deref(), exp.map(|(e, _)| e));
        prop_assert_eq!(numeric_group(&number)?, expected, "{}", number);
    }
}
