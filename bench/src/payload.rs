//! The benchmark message: fixed-width text that receivers read without a JSON parser. Pure.
//!
//! ```text
//! B 00002a 0000000007 17f3c6b2a1d4e5f6 ..........
//! | sender seq        send time (ns)   padding up to the payload size
//! ```
//!
//! (Without the spaces.) All fields are lower-case hex, so the text needs no JSON escaping and the
//! server delivers it byte for byte. A frame that starts with anything but `B` (an ack, an error
//! reply) is not a benchmark message.

use std::fmt::Write as _;

/// First byte of every benchmark message.
const MARK: u8 = b'B';
const SENDER_DIGITS: usize = 6;
const SEQ_DIGITS: usize = 10;
const TIME_DIGITS: usize = 16;
const PAD: char = '.';

/// The smallest payload that holds the header: `--payload` must be at least this.
pub const MIN_PAYLOAD: usize = 1 + SENDER_DIGITS + SEQ_DIGITS + TIME_DIGITS;
/// Senders are numbered below this (6 hex digits).
pub const MAX_SENDERS: u64 = 1 << (4 * SENDER_DIGITS);

/// What a receiver reads from a benchmark message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    pub sender: u32,
    pub seq: u64,
    /// Send time, nanoseconds since the Unix epoch (CLOCK_REALTIME, shared by all processes).
    pub sent_ns: u64,
}

/// Appends the payload of `stamp`, exactly `size` bytes long (`size >= MIN_PAYLOAD`).
/// Sequence numbers wrap at 16^10 (about 10^12), far beyond any run.
pub fn encode(out: &mut String, stamp: Stamp, size: usize) {
    let start = out.len();
    out.push(char::from(MARK));
    let seq = stamp.seq & ((1 << (4 * SEQ_DIGITS)) - 1);
    // Writing to a String cannot fail.
    let _ = write!(
        out,
        "{:0sw$x}{seq:0qw$x}{:0tw$x}",
        stamp.sender,
        stamp.sent_ns,
        sw = SENDER_DIGITS,
        qw = SEQ_DIGITS,
        tw = TIME_DIGITS,
    );
    let written = out.len() - start;
    out.extend(std::iter::repeat_n(PAD, size.saturating_sub(written)));
}

/// Reads the header of a received frame; `None` when it is not a benchmark message.
pub fn parse(bytes: &[u8]) -> Option<Stamp> {
    if bytes.len() < MIN_PAYLOAD || bytes[0] != MARK {
        return None;
    }
    let sender_end = 1 + SENDER_DIGITS;
    let seq_end = sender_end + SEQ_DIGITS;
    let sender = hex(&bytes[1..sender_end])?;
    Some(Stamp {
        sender: u32::try_from(sender).ok()?,
        seq: hex(&bytes[sender_end..seq_end])?,
        sent_ns: hex(&bytes[seq_end..MIN_PAYLOAD])?,
    })
}

/// The message text of a positioned message (`{"cmd":"message",...,"message":"M"}`, M last and
/// written without escapes, as the payloads here are), without parsing the JSON.
pub fn positioned_text(bytes: &[u8]) -> Option<&[u8]> {
    const KEY: &[u8] = br#""message":""#;
    let rest = bytes.strip_prefix(br#"{"cmd":"message","#)?;
    let at = rest.windows(KEY.len()).rposition(|w| w == KEY)?;
    rest[at + KEY.len()..].strip_suffix(br#""}"#)
}

fn hex(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |acc, &d| {
        let value = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some((acc << 4) | u64::from(value))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_text_of_a_positioned_message() {
        let text =
            br#"{"cmd":"message","group_id":"bench-1-0","offset":7,"epoch":"e","message":"~abc"}"#;
        assert_eq!(positioned_text(text), Some(&b"~abc"[..]));
        assert_eq!(positioned_text(b"~abc"), None);
    }

    fn encoded(stamp: Stamp, size: usize) -> String {
        let mut out = String::new();
        encode(&mut out, stamp, size);
        out
    }

    #[test]
    fn round_trip_at_exact_size() {
        let stamp = Stamp {
            sender: 42,
            seq: 7,
            sent_ns: 1_700_000_000_123_456_789,
        };
        let text = encoded(stamp, 64);
        assert_eq!(text.len(), 64);
        assert_eq!(&text[..MIN_PAYLOAD], "B00002a000000000717979cfe3d85cd15");
        assert!(text[MIN_PAYLOAD..].bytes().all(|b| b == b'.'));
        assert_eq!(parse(text.as_bytes()), Some(stamp));

        let min = encoded(stamp, MIN_PAYLOAD);
        assert_eq!(min.len(), MIN_PAYLOAD);
        assert_eq!(parse(min.as_bytes()), Some(stamp));
    }

    #[test]
    fn extremes() {
        let stamp = Stamp {
            sender: (MAX_SENDERS - 1) as u32,
            seq: (1 << 40) - 1,
            sent_ns: u64::MAX,
        };
        assert_eq!(parse(encoded(stamp, 40).as_bytes()), Some(stamp));
        // Sequence numbers wrap instead of widening the field.
        let wrapped = Stamp {
            seq: 1 << 40,
            ..stamp
        };
        assert_eq!(
            parse(encoded(wrapped, 40).as_bytes()).map(|s| s.seq),
            Some(0)
        );
    }

    #[test]
    fn needs_no_json_escaping() {
        let text = encoded(
            Stamp {
                sender: 1,
                seq: 2,
                sent_ns: 3,
            },
            100,
        );
        assert_eq!(serde_json::to_string(&text).unwrap(), format!("\"{text}\""));
    }

    #[test]
    fn other_frames_are_not_stamps() {
        for frame in [
            &br#"{"cmd":"ack","req_id":1}"#[..],
            b"",
            b"B00002a",
            b"B00002a000000000717979cfe3d85cd1",
            b"B00002A000000000717979cfe3d85cd15",
            b"X00002a000000000717979cfe3d85cd15",
            b"B00002a00000000071797 cfe3d85cd15",
        ] {
            assert_eq!(parse(frame), None, "{}", String::from_utf8_lossy(frame));
        }
    }
}
