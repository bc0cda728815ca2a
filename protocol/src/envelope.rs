//! The envelope every message carries on an external bus (Redis, NATS): who published it and
//! its place in that publisher's stream, then the payload, untouched.
//!
//! ```text
//! byte 0      version (1)
//! bytes 1..9  origin: the publishing gateway's node id, u64 big-endian
//! bytes 9..17 sequence: that node's publish counter, u64 big-endian (starts at 1)
//! bytes 17..  payload: the message text as the client sent it
//! ```
//!
//! The origin lets a gateway drop its own publishes where the engine echoes them (Redis
//! delivers a publish to every subscriber, the publisher's own connection included); the
//! sequence lets a receiver see a hole in one origin's stream. Fixed-size fields: encoding is
//! one allocation of `17 + payload` bytes, decoding a slice of the received buffer.

use bytes::{BufMut, Bytes, BytesMut};

/// The only version this build writes and reads.
pub const ENVELOPE_VERSION: u8 = 1;
/// Bytes in front of the payload.
pub const ENVELOPE_HEADER_LEN: usize = 17;

/// A message as it travels on an external bus.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The publishing gateway's node id (random per process start).
    pub origin: u64,
    /// The origin's publish counter: consecutive per origin, from 1.
    pub seq: u64,
    pub payload: Bytes,
}

/// Why bytes from the bus are not an envelope.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error(
        "bus message of {0} bytes is shorter than the {ENVELOPE_HEADER_LEN}-byte envelope header"
    )]
    Short(usize),
    #[error("bus message envelope version {0}, this build reads {ENVELOPE_VERSION}")]
    Version(u8),
}

impl Envelope {
    /// The header alone, for a writer that puts the payload after it in its own buffer.
    pub fn header(origin: u64, seq: u64) -> [u8; ENVELOPE_HEADER_LEN] {
        let mut header = [0u8; ENVELOPE_HEADER_LEN];
        header[0] = ENVELOPE_VERSION;
        header[1..9].copy_from_slice(&origin.to_be_bytes());
        header[9..].copy_from_slice(&seq.to_be_bytes());
        header
    }

    /// The bytes to publish: header, then `payload`.
    pub fn encode(origin: u64, seq: u64, payload: &[u8]) -> Bytes {
        let mut buf = BytesMut::with_capacity(ENVELOPE_HEADER_LEN + payload.len());
        buf.put_slice(&Envelope::header(origin, seq));
        buf.put_slice(payload);
        buf.freeze()
    }

    /// Reads an envelope; the payload shares `bytes`' buffer.
    pub fn decode(bytes: Bytes) -> Result<Envelope, EnvelopeError> {
        if bytes.len() < ENVELOPE_HEADER_LEN {
            return Err(EnvelopeError::Short(bytes.len()));
        }
        if bytes[0] != ENVELOPE_VERSION {
            return Err(EnvelopeError::Version(bytes[0]));
        }
        let field = |at: usize| {
            let mut word = [0u8; 8];
            word.copy_from_slice(&bytes[at..at + 8]);
            u64::from_be_bytes(word)
        };
        Ok(Envelope {
            origin: field(1),
            seq: field(9),
            payload: bytes.slice(ENVELOPE_HEADER_LEN..),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_fixed() {
        let bytes = Envelope::encode(0x0102, 7, b"hi");
        assert_eq!(
            &bytes[..],
            &[1, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 0, 0, 0, 0, 7, b'h', b'i'][..]
        );
    }

    #[test]
    fn short_or_foreign_bytes_are_refused() {
        assert_eq!(
            Envelope::decode(Bytes::from_static(b"hello")),
            Err(EnvelopeError::Short(5))
        );
        let mut foreign = Envelope::encode(1, 1, b"x").to_vec();
        foreign[0] = 2;
        assert_eq!(
            Envelope::decode(Bytes::from(foreign)),
            Err(EnvelopeError::Version(2))
        );
    }

    proptest! {
        #[test]
        fn round_trips(origin: u64, seq: u64, payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let decoded = Envelope::decode(Envelope::encode(origin, seq, &payload)).expect("decodes");
            prop_assert_eq!(decoded, Envelope { origin, seq, payload: Bytes::from(payload) });
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            let _ = Envelope::decode(Bytes::from(bytes));
        }
    }
}
