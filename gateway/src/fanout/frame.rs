//! What an outbox holds: a WebSocket text frame, header and payload, encoded once per message
//! and worker. Frames from a server are not masked, so the same bytes go to every member: the
//! connection writes them as they are, without the WebSocket library encoding and copying the
//! message once per member.
//!
//! [`Frames`]: such frames waiting to be written, the first one possibly in part, as the
//! outbox queues them and as the connection's task holds what it took from there.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// FIN set, opcode 1 (text).
const FIN_TEXT: u8 = 0x81;

/// The unmasked text frame of `payload` (RFC 6455 section 5.2).
pub(crate) fn text(payload: &str) -> Bytes {
    let len = payload.len();
    let mut frame = BytesMut::with_capacity(header_len(len) + len);
    frame.put_u8(FIN_TEXT);
    match len {
        0..=125 => frame.put_u8(len as u8),
        126..=0xFFFF => {
            frame.put_u8(126);
            frame.put_u16(len as u16);
        }
        _ => {
            frame.put_u8(127);
            frame.put_u64(len as u64);
        }
    }
    frame.put_slice(payload.as_bytes());
    frame.freeze()
}

/// Frames handed to a socket in one (vectored) write at most.
pub const FRAMES_PER_WRITE: usize = 64;

/// Encoded frames waiting to be written, in order. The first may be written in part already:
/// it is then what is left of it, and nothing else may go to the socket before it.
#[derive(Debug, Default)]
pub struct Frames {
    queue: VecDeque<Bytes>,
    /// The first frame is the rest of one written in part.
    begun: bool,
}

impl Frames {
    pub fn push(&mut self, frame: Bytes) {
        self.queue.push_back(frame);
    }

    pub fn len(&self) -> usize {
        self.queue.len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// The first frames, at most [`FRAMES_PER_WRITE`], as the slices of one vectored write.
    pub fn slices<'a>(
        &'a self,
        slices: &'a mut [IoSlice<'a>; FRAMES_PER_WRITE],
    ) -> &'a [IoSlice<'a>] {
        let n = self.queue.len().min(FRAMES_PER_WRITE);
        for (slice, frame) in slices.iter_mut().zip(&self.queue) {
            *slice = IoSlice::new(frame);
        }
        &slices[..n]
    }

    /// The first frame (or what is left of it).
    pub fn front(&self) -> Option<&Bytes> {
        self.queue.front()
    }

    /// `n` more bytes were written: the frames they complete go, and the one they end in (if
    /// any) is left begun.
    pub fn consume(&mut self, mut n: usize) {
        while let Some(front) = self.queue.front_mut() {
            if n < front.len() {
                front.advance(n);
                self.begun |= n > 0;
                return;
            }
            n -= front.len();
            self.queue.pop_front();
            self.begun = false;
        }
    }

    /// The frames, for tests.
    #[cfg(test)]
    pub(crate) fn to_vec(&self) -> Vec<Bytes> {
        self.queue.iter().cloned().collect()
    }

    /// The rest of a frame written in part, if one is.
    pub fn begun(&self) -> Option<&Bytes> {
        self.queue.front().filter(|_| self.begun)
    }

    /// Drops every frame but the rest of one written in part (a slow consumer's queue: the
    /// close frame that follows must not cut into that one); returns how many were dropped.
    pub fn clear_all_but_begun(&mut self) -> usize {
        let keep = usize::from(self.begun && !self.queue.is_empty());
        let dropped = self.queue.len() - keep;
        self.queue.truncate(keep);
        if keep == 0 {
            self.queue = VecDeque::new(); // gives the allocation back
        }
        dropped
    }
}

/// The header's length for a payload of `len` bytes.
fn header_len(len: usize) -> usize {
    match len {
        0..=125 => 2,
        126..=0xFFFF => 4,
        _ => 10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;

    /// The same bytes as the WebSocket library's own encoding, at every length boundary.
    #[test]
    fn matches_the_libraries_encoding() {
        for len in [0, 1, 125, 126, 127, 0xFFFF, 0x1_0000, 0x1_0001] {
            let payload: String = "é".repeat(len / 2) + &"x".repeat(len % 2);
            assert_eq!(payload.len(), len);
            let ours = text(&payload);
            let frame = Frame::message(payload.clone(), OpCode::Data(Data::Text), true);
            let mut theirs = Vec::new();
            frame.format(&mut theirs).expect("format");
            assert_eq!(ours.len(), header_len(len) + len, "length {len}");
            assert!(ours[..] == theirs[..], "length {len}: encodings differ");
        }
    }

    /// A client reads them back: two frames written one after the other, then nothing.
    #[test]
    fn a_client_reads_them() {
        use std::io::Cursor;
        use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket};
        use tokio_tungstenite::tungstenite::Message;

        let long = "y".repeat(70_000);
        let mut bytes = text("hello").to_vec();
        bytes.extend_from_slice(&text(&long));
        let mut client = WebSocket::from_raw_socket(Cursor::new(bytes), Role::Client, None);
        assert_eq!(client.read().expect("first"), Message::text("hello"));
        assert_eq!(client.read().expect("second"), Message::text(long));
        assert!(client.read().is_err(), "nothing after the two frames");
    }

    #[test]
    fn frames_are_consumed_across_frames_and_within_one() {
        let mut frames = Frames::default();
        for frame in ["abc", "defg", "h"] {
            frames.push(Bytes::from(frame));
        }
        frames.consume(0);
        assert_eq!(frames.begun(), None);
        frames.consume(2);
        assert_eq!(frames.begun().map(|b| &b[..]), Some(&b"c"[..]));
        // The rest of the first, and part of the second.
        frames.consume(3);
        assert_eq!(frames.begun().map(|b| &b[..]), Some(&b"fg"[..]));
        // Exactly to the end of a frame: the next one is not begun.
        frames.consume(2);
        assert_eq!(frames.begun(), None);
        assert_eq!(frames.len(), 1);
        frames.consume(1);
        assert!(frames.is_empty());
        assert_eq!(frames.begun(), None);
    }

    #[test]
    fn slices_cover_the_first_frames_and_clearing_keeps_a_begun_one() {
        let mut frames = Frames::default();
        for i in 0..FRAMES_PER_WRITE + 3 {
            frames.push(Bytes::from(i.to_string()));
        }
        let mut buf = [IoSlice::new(&[]); FRAMES_PER_WRITE];
        let slices = frames.slices(&mut buf);
        assert_eq!(slices.len(), FRAMES_PER_WRITE);
        assert_eq!(&*slices[10], b"10");

        assert_eq!(frames.clear_all_but_begun(), FRAMES_PER_WRITE + 3);
        assert!(frames.is_empty());
        frames.push(Bytes::from("abcd"));
        frames.push(Bytes::from("ef"));
        frames.consume(1);
        assert_eq!(frames.clear_all_but_begun(), 1);
        assert_eq!(frames.begun().map(|b| &b[..]), Some(&b"bcd"[..]));
    }
}
