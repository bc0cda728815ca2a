//! Positions of a history group's messages, and how they travel.
//!
//! A group with history (the gateway's `--history`) gives each message an **offset**,
//! consecutive per group from 1, and the group an **epoch**: a short token that changes
//! whenever the group's history was lost (the store restarted empty, the history expired or
//! was removed), so that an offset is only meaningful with its epoch. Both are assigned where
//! the history lives (the broker, Redis, NATS JetStream), atomically with storing the message.
//!
//! On a carrier, a positioned message is a [`Positioned`] frame:
//!
//! ```text
//! byte 0     0xFE (no UTF-8 text, nor a control frame, starts with it)
//! offset     decimal ASCII digits
//! ' '
//! epoch      1 to 32 of [A-Za-z0-9_-]
//! ' '
//! payload    the message text, untouched
//! ```
//!
//! Text, so that a Redis Lua script builds it with a concatenation. A positioned member of the
//! group receives it as [`positioned_message`]: `{"cmd":"message","group_id":G,"offset":17,
//! "epoch":"...","message":"..."}`; every other member receives the payload alone, as the seed.

use std::fmt;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::client::push_json_str;

/// First byte of a [`Positioned`] frame.
pub const POSITIONED_TAG: u8 = 0xFE;
/// Longest epoch, in bytes.
pub const MAX_EPOCH_LEN: usize = 32;
/// Most messages one group's history may keep, whatever a gateway or a broker is told.
pub const MAX_HISTORY_SIZE: u32 = 1_000_000;

/// A group's history epoch: 1 to [`MAX_EPOCH_LEN`] ASCII letters, digits, `_` or `-`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Epoch(Arc<str>);

/// Why a text is not an epoch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an epoch is 1 to {MAX_EPOCH_LEN} ASCII letters, digits, '_' or '-'")]
pub struct InvalidEpoch;

impl Epoch {
    pub fn new(text: &str) -> Result<Epoch, InvalidEpoch> {
        if !is_epoch(text.as_bytes()) {
            return Err(InvalidEpoch);
        }
        Ok(Epoch(Arc::from(text)))
    }

    /// An epoch made of 64 random bits (given), as 16 hex digits.
    pub fn from_random(bits: u64) -> Epoch {
        Epoch(Arc::from(format!("{bits:016x}")))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

fn is_epoch(bytes: &[u8]) -> bool {
    !bytes.is_empty()
        && bytes.len() <= MAX_EPOCH_LEN
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'_' || *b == b'-')
}

/// A message's place in its group's history.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Position {
    pub offset: u64,
    pub epoch: Epoch,
}

/// A positioned message as it travels on a carrier.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Positioned {
    pub position: Position,
    pub payload: Bytes,
}

/// Why bytes are not a [`Positioned`] frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PositionedError {
    #[error("not a positioned frame (first byte is not 0xFE)")]
    NotPositioned,
    #[error("positioned frame with a malformed offset or epoch")]
    Malformed,
}

impl Positioned {
    /// Whether `bytes` is (or claims to be) a positioned frame.
    pub fn is_positioned(bytes: &[u8]) -> bool {
        bytes.first() == Some(&POSITIONED_TAG)
    }

    /// The frame of `payload` at `position`.
    pub fn encode(position: &Position, payload: &[u8]) -> Bytes {
        let mut digits = [0u8; 20];
        let offset = decimal(position.offset, &mut digits);
        let epoch = position.epoch.as_str().as_bytes();
        let mut out = BytesMut::with_capacity(3 + offset.len() + epoch.len() + payload.len());
        out.put_u8(POSITIONED_TAG);
        out.put_slice(offset);
        out.put_u8(b' ');
        out.put_slice(epoch);
        out.put_u8(b' ');
        out.put_slice(payload);
        out.freeze()
    }

    /// Reads a frame; the payload shares `bytes`' buffer.
    pub fn decode(bytes: Bytes) -> Result<Positioned, PositionedError> {
        if !Positioned::is_positioned(&bytes) {
            return Err(PositionedError::NotPositioned);
        }
        let rest = &bytes[1..];
        let space = rest
            .iter()
            .position(|b| *b == b' ')
            .ok_or(PositionedError::Malformed)?;
        let offset = parse_offset(&rest[..space]).ok_or(PositionedError::Malformed)?;
        let after = &rest[space + 1..];
        let epoch_len = after
            .iter()
            .take(MAX_EPOCH_LEN + 1)
            .position(|b| *b == b' ')
            .ok_or(PositionedError::Malformed)?;
        let epoch = &after[..epoch_len];
        if !is_epoch(epoch) {
            return Err(PositionedError::Malformed);
        }
        let epoch = Epoch::new(std::str::from_utf8(epoch).map_err(|_| PositionedError::Malformed)?)
            .map_err(|_| PositionedError::Malformed)?;
        let start = 1 + space + 1 + epoch_len + 1;
        Ok(Positioned {
            position: Position { offset, epoch },
            payload: bytes.slice(start..),
        })
    }
}

/// An offset's decimal digits, without leading zeros (at least 1).
fn parse_offset(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() || digits.len() > 20 || (digits[0] == b'0') {
        return None;
    }
    let mut value: u64 = 0;
    for d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        value = value.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
    }
    Some(value)
}

fn decimal(mut value: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut at = buf.len();
    loop {
        at -= 1;
        buf[at] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            break;
        }
    }
    &buf[at..]
}

/// What a positioned member receives for a message of `group`:
/// `{"cmd":"message","group_id":G,"offset":O,"epoch":E,"message":M}`, M the message text as a
/// JSON string.
pub fn positioned_message(group: &str, position: &Position, text: &str) -> String {
    let mut out = String::with_capacity(64 + group.len() + text.len() + text.len() / 8);
    out.push_str(r#"{"cmd":"message","group_id":"#);
    push_json_str(&mut out, group);
    out.push_str(r#","offset":"#);
    out.push_str(&position.offset.to_string());
    out.push_str(r#","epoch":""#);
    out.push_str(position.epoch.as_str());
    out.push_str(r#"","message":"#);
    push_json_str(&mut out, text);
    out.push('}');
    out
}

/// Where a recovering member starts from (`add_group`'s `recover`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recover {
    /// The last offset the client has; it receives every message after it.
    pub offset: u64,
    pub epoch: Epoch,
}

/// The answer to a positioned `add_group`: the group's current position (its last offset, 0
/// when it has none yet) and epoch, and with `recover`, whether every message after the given
/// position was delivered before this reply (`recovered`). `error` says why the history could
/// not be read (the member is joined and receives live messages all the same).
/// `{"cmd":"joined","group_id":G,"offset":T,"epoch":E,"recovered":B,"error":"...","req_id":R}`.
pub fn joined_reply(
    group: &str,
    position: Option<&Position>,
    recovered: Option<bool>,
    error: Option<&str>,
    req_id: Option<&str>,
) -> String {
    let mut out = String::with_capacity(96 + group.len());
    out.push_str(r#"{"cmd":"joined","group_id":"#);
    push_json_str(&mut out, group);
    if let Some(position) = position {
        out.push_str(r#","offset":"#);
        out.push_str(&position.offset.to_string());
        out.push_str(r#","epoch":""#);
        out.push_str(position.epoch.as_str());
        out.push('"');
    }
    if let Some(recovered) = recovered {
        out.push_str(r#","recovered":"#);
        out.push_str(if recovered { "true" } else { "false" });
    }
    if let Some(error) = error {
        out.push_str(r#","error":"#);
        push_json_str(&mut out, error);
    }
    if let Some(req_id) = req_id {
        out.push_str(r#","req_id":"#);
        out.push_str(req_id);
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn epoch(text: &str) -> Epoch {
        Epoch::new(text).expect("valid epoch")
    }

    #[test]
    fn layout_is_text() {
        let position = Position {
            offset: 17,
            epoch: epoch("ab-1"),
        };
        let frame = Positioned::encode(&position, b"hi there");
        assert_eq!(&frame[..], b"\xfe17 ab-1 hi there");
        let decoded = Positioned::decode(frame).expect("decodes");
        assert_eq!(decoded.position, position);
        assert_eq!(&decoded.payload[..], b"hi there");
    }

    #[test]
    fn malformed_frames_are_refused() {
        for bad in [
            &b"\xfe ab x"[..],
            b"\xfe017 ab x",
            b"\xfe1x ab x",
            b"\xfe1 a.b x",
            b"\xfe1  x",
            b"\xfe1 ab",
            b"\xfe99999999999999999999999 ab x",
            b"\xfe1 0123456789012345678901234567890123 x",
        ] {
            assert_eq!(
                Positioned::decode(Bytes::copy_from_slice(bad)),
                Err(PositionedError::Malformed),
                "{bad:?}"
            );
        }
        assert_eq!(
            Positioned::decode(Bytes::from_static(b"plain")),
            Err(PositionedError::NotPositioned)
        );
    }

    #[test]
    fn epochs_are_checked() {
        assert!(Epoch::new("").is_err());
        assert!(Epoch::new("a b").is_err());
        assert!(Epoch::new(&"x".repeat(33)).is_err());
        assert_eq!(Epoch::from_random(0xab).as_str(), "00000000000000ab");
    }

    #[test]
    fn a_positioned_member_gets_an_object_with_the_text_as_a_string() {
        let position = Position {
            offset: 3,
            epoch: epoch("e1"),
        };
        let text = positioned_message("chat:1", &position, r#"say "hi""#);
        let value: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        assert_eq!(
            value,
            serde_json::json!({"cmd":"message","group_id":"chat:1","offset":3,"epoch":"e1","message":"say \"hi\""})
        );
        let reply = joined_reply("g", Some(&position), Some(false), None, Some("7"));
        let value: serde_json::Value = serde_json::from_str(&reply).expect("JSON");
        assert_eq!(
            value,
            serde_json::json!({"cmd":"joined","group_id":"g","offset":3,"epoch":"e1","recovered":false,"req_id":7})
        );
    }

    proptest! {
        #[test]
        fn round_trips(offset in 1u64.., payload in proptest::collection::vec(any::<u8>(), 0..200)) {
            let position = Position { offset, epoch: epoch("0123abcd") };
            let decoded = Positioned::decode(Positioned::encode(&position, &payload)).expect("decodes");
            prop_assert_eq!(decoded, Positioned { position, payload: Bytes::from(payload) });
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..60)) {
            let mut bytes = bytes;
            bytes.insert(0, POSITIONED_TAG);
            let _ = Positioned::decode(Bytes::from(bytes));
        }
    }
}
