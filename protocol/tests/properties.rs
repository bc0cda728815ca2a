//! Property tests: arbitrary bytes and strings never panic the decoders, never make them reserve
//! beyond the frame limit, and valid input always round-trips.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use protocol::client::{parse_command, request_json, ClientCommand, GroupName, ParseLimits};
use protocol::codec::{decode_frame, encode_frame, encode_message, encode_publish};
use protocol::link::{Body, Message, Ping, Publish, Subscribe};
use protocol::{Frame, FrameError};

const MAX: usize = 4096;

fn arb_frame() -> impl Strategy<Value = Frame> {
    let bytes = || proptest::collection::vec(any::<u8>(), 0..200).prop_map(Bytes::from);
    prop_oneof![
        (bytes(), bytes(), any::<bool>()).prop_map(|(channel, payload, no_echo)| Frame::new(
            Body::Publish(Publish {
                channel,
                payload,
                no_echo
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
        let expected = Frame::new(Body::Publish(Publish { channel: Bytes::from(channel.clone()), payload: Bytes::from(payload.clone()), no_echo }));
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
    fn valid_commands_round_trip(group in "[^\u{0}]{1,64}", message in ".{0,200}", kind in 0..3u8, req_id in proptest::option::of(any::<u64>())) {
        let group_id = GroupName::parse(&group, 256).unwrap();
        let command = match kind {
            0 => ClientCommand::AddGroup { group_id },
            1 => ClientCommand::LeaveGroup { group_id },
            _ => ClientCommand::SendToGroup { group_id, message: message.as_str().into() },
        };
        let text = request_json(&command, req_id);
        let parsed = parse_command(&text, &ParseLimits::default()).unwrap();
        prop_assert_eq!(parsed.command, command);
        prop_assert_eq!(parsed.req_id.map(|r| r.as_json().to_owned()), req_id.map(|r| r.to_string()));
    }
}
