//! What an outbox holds: a WebSocket text frame, header and payload, encoded once per message
//! and worker. Frames from a server are not masked, so the same bytes go to every member: the
//! connection writes them as they are, without the WebSocket library encoding and copying the
//! message once per member.

use bytes::{BufMut, Bytes, BytesMut};

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
}
