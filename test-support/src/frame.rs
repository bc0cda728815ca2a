//! WebSocket frames built by hand (RFC 6455 section 5.2), for sending what a well-behaved client
//! library refuses to: unmasked frames, reserved opcodes and bits, oversized control frames,
//! stray continuations, lengths that lie. [`Client::send_frames`](crate::Client::send_frames)
//! writes them on an open connection.

/// Opcodes.
pub mod opcode {
    pub const CONTINUATION: u8 = 0x0;
    pub const TEXT: u8 = 0x1;
    pub const BINARY: u8 = 0x2;
    pub const CLOSE: u8 = 0x8;
    pub const PING: u8 = 0x9;
    pub const PONG: u8 = 0xA;
}

/// The mask every hand-built frame uses unless [`RawFrame::unmasked`] is called.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// One frame: header fields and payload, encoded as they are, valid or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawFrame {
    fin: bool,
    /// RSV1..RSV3 as the three bits under FIN (0..=7).
    rsv: u8,
    opcode: u8,
    masked: bool,
    payload: Vec<u8>,
    /// A payload length to write in the header instead of the payload's own.
    claimed_len: Option<u64>,
}

impl RawFrame {
    /// A final, masked frame with this opcode (any 4-bit value) and payload.
    pub fn new(opcode: u8, payload: impl Into<Vec<u8>>) -> RawFrame {
        RawFrame {
            fin: true,
            rsv: 0,
            opcode: opcode & 0x0f,
            masked: true,
            payload: payload.into(),
            claimed_len: None,
        }
    }

    pub fn text(payload: impl Into<Vec<u8>>) -> RawFrame {
        RawFrame::new(opcode::TEXT, payload)
    }

    pub fn binary(payload: impl Into<Vec<u8>>) -> RawFrame {
        RawFrame::new(opcode::BINARY, payload)
    }

    pub fn continuation(payload: impl Into<Vec<u8>>) -> RawFrame {
        RawFrame::new(opcode::CONTINUATION, payload)
    }

    pub fn ping(payload: impl Into<Vec<u8>>) -> RawFrame {
        RawFrame::new(opcode::PING, payload)
    }

    /// A close frame with `code` and `reason` as its payload.
    pub fn close(code: u16, reason: &[u8]) -> RawFrame {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(reason);
        RawFrame::new(opcode::CLOSE, payload)
    }

    /// Sets FIN (`false`: more fragments follow).
    pub fn fin(mut self, fin: bool) -> RawFrame {
        self.fin = fin;
        self
    }

    /// Sets the reserved bits (RSV1 = 4, RSV2 = 2, RSV3 = 1).
    pub fn rsv(mut self, bits: u8) -> RawFrame {
        self.rsv = bits & 0b111;
        self
    }

    /// Sends the payload unmasked, as only servers may.
    pub fn unmasked(mut self) -> RawFrame {
        self.masked = false;
        self
    }

    /// Writes `len` as the payload length in the header, whatever the payload holds.
    pub fn claim_len(mut self, len: u64) -> RawFrame {
        self.claimed_len = Some(len);
        self
    }

    /// The frame's bytes on the wire.
    pub fn encode(&self) -> Vec<u8> {
        let len = self.claimed_len.unwrap_or(self.payload.len() as u64);
        let mut out = Vec::with_capacity(self.payload.len() + 14);
        out.push(u8::from(self.fin) << 7 | self.rsv << 4 | self.opcode);
        let mask_bit = u8::from(self.masked) << 7;
        match len {
            0..=125 => out.push(mask_bit | len as u8),
            126..=0xffff => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&len.to_be_bytes());
            }
        }
        if self.masked {
            out.extend_from_slice(&MASK);
            out.extend(
                self.payload
                    .iter()
                    .zip(MASK.iter().cycle())
                    .map(|(b, m)| b ^ m),
            );
        } else {
            out.extend_from_slice(&self.payload);
        }
        out
    }
}

/// `text` as a text message in fragments of at most `size` bytes (a text frame, then
/// continuations, the last one final). Fragments may split UTF-8 sequences, as RFC 6455 allows.
pub fn fragments(text: &[u8], size: usize) -> Vec<RawFrame> {
    let chunks: Vec<&[u8]> = text.chunks(size.max(1)).collect();
    let last = chunks.len().saturating_sub(1);
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let frame = if i == 0 {
                RawFrame::text(*chunk)
            } else {
                RawFrame::continuation(*chunk)
            };
            frame.fin(i == last)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_headers_and_masks() {
        // RFC 6455 5.7: a masked "Hello".
        let frame = RawFrame::text("Hello");
        let bytes = frame.encode();
        assert_eq!(&bytes[..2], &[0x81, 0x85]);
        assert_eq!(&bytes[2..6], &MASK);
        let unmasked: Vec<u8> = bytes[6..]
            .iter()
            .zip(MASK.iter().cycle())
            .map(|(b, m)| b ^ m)
            .collect();
        assert_eq!(unmasked, b"Hello");
        assert_eq!(
            RawFrame::text("Hello").unmasked().encode(),
            b"\x81\x05Hello"
        );
        assert_eq!(
            &RawFrame::ping(vec![0; 126]).encode()[..4],
            &[0x89, 0xfe, 0x00, 0x7e]
        );
        assert_eq!(
            &RawFrame::binary(vec![]).claim_len(1 << 63).encode()[..10],
            &[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(RawFrame::text("").rsv(4).fin(false).encode()[0], 0x41);
    }

    #[test]
    fn fragments_cover_the_text() {
        let frames = fragments(b"abcdefg", 3);
        assert_eq!(frames.len(), 3);
        assert_eq!(frames[0], RawFrame::text("abc").fin(false));
        assert_eq!(frames[1], RawFrame::continuation("def").fin(false));
        assert_eq!(frames[2], RawFrame::continuation("g"));
    }
}
