//! RESP2, the part a pub/sub client reads: a pure decoder over bytes that tells "need more" from
//! "malformed", with limits, so that a server (or anything that answers on its port) cannot make
//! the gateway allocate more than one message's worth. Commands are encoded with the `redis`
//! crate's [`redis::Cmd`].

use bytes::{Buf, Bytes, BytesMut};
use tokio_util::codec::Decoder;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Simple(Bytes),
    /// `-ERR ...`, `-MOVED 3999 127.0.0.1:6381`
    Error(Bytes),
    /// `:3`
    Int(i64),
    /// `$n` bulk string; `$-1` is `None`.
    Bulk(Option<Bytes>),
    /// `*n` array; `*-1` is `None`.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The bytes of a simple or bulk string.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match self {
            Reply::Simple(b) | Reply::Bulk(Some(b)) => Some(b),
            _ => None,
        }
    }

    pub fn as_int(&self) -> Option<i64> {
        match self {
            Reply::Int(n) => Some(*n),
            _ => None,
        }
    }
}

/// Why bytes from the server are not RESP2 within the limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("malformed reply: {0}")]
    Malformed(&'static str),
    #[error("reply element of {0} bytes is over the limit of {1}")]
    TooLarge(u64, usize),
    #[error("reply array of {0} elements is over the limit of {1}")]
    TooManyElements(u64, usize),
    #[error("replies nested deeper than {0}")]
    TooDeep(usize),
    #[error("i/o: {0}")]
    Io(String),
}

impl From<std::io::Error> for RespError {
    fn from(e: std::io::Error) -> Self {
        RespError::Io(e.to_string())
    }
}

/// Arrays nest this deep at most (`CLUSTER SLOTS` needs 3).
const MAX_DEPTH: usize = 8;
/// A line (`+`, `-`, `:`, and headers) is this long at most.
const MAX_LINE: usize = 64 * 1024;

/// The decoder, with its limits: the largest bulk string (a message, or `CLIENT LIST`'s line)
/// and the most elements in one array.
#[derive(Debug, Clone, Copy)]
pub struct RespCodec {
    pub max_bulk: usize,
    pub max_elements: usize,
}

impl Decoder for RespCodec {
    type Item = Reply;
    type Error = RespError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, RespError> {
        let mut pos = 0;
        match parse(self, src, &mut pos, 0)? {
            None => Ok(None),
            Some(reply) => {
                src.advance(pos);
                Ok(Some(reply))
            }
        }
    }
}

/// The line from `pos` up to `\r\n`, or `None` when it has not all arrived.
fn line<'a>(src: &'a [u8], pos: &mut usize) -> Result<Option<&'a [u8]>, RespError> {
    let rest = &src[*pos..];
    match rest.windows(2).position(|w| w == b"\r\n") {
        Some(end) => {
            *pos += end + 2;
            Ok(Some(&rest[..end]))
        }
        None if rest.len() > MAX_LINE => Err(RespError::TooLarge(rest.len() as u64, MAX_LINE)),
        None => Ok(None),
    }
}

fn number(text: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(RespError::Malformed("not a number"))
}

/// Parses one reply starting at `pos` without consuming `src`; `pos` ends after it.
fn parse(
    codec: &RespCodec,
    src: &BytesMut,
    pos: &mut usize,
    depth: usize,
) -> Result<Option<Reply>, RespError> {
    if depth > MAX_DEPTH {
        return Err(RespError::TooDeep(MAX_DEPTH));
    }
    let Some(&kind) = src.get(*pos) else {
        return Ok(None);
    };
    let start = *pos;
    *pos += 1;
    let Some(text) = line(src, pos)? else {
        return Ok(None);
    };
    let text_at = start + 1;
    let text_len = text.len();
    Ok(Some(match kind {
        b'+' => Reply::Simple(Bytes::copy_from_slice(&src[text_at..text_at + text_len])),
        b'-' => Reply::Error(Bytes::copy_from_slice(&src[text_at..text_at + text_len])),
        b':' => Reply::Int(number(text)?),
        b'$' => {
            let len = number(text)?;
            if len < 0 {
                return Ok(Some(Reply::Bulk(None)));
            }
            let len = len as u64;
            if len > codec.max_bulk as u64 {
                return Err(RespError::TooLarge(len, codec.max_bulk));
            }
            let len = len as usize;
            if src.len() < *pos + len + 2 {
                return Ok(None);
            }
            if &src[*pos + len..*pos + len + 2] != b"\r\n" {
                return Err(RespError::Malformed("bulk string without its CRLF"));
            }
            let bulk = Bytes::copy_from_slice(&src[*pos..*pos + len]);
            *pos += len + 2;
            Reply::Bulk(Some(bulk))
        }
        b'*' => {
            let count = number(text)?;
            if count < 0 {
                return Ok(Some(Reply::Array(None)));
            }
            if count as u64 > codec.max_elements as u64 {
                return Err(RespError::TooManyElements(count as u64, codec.max_elements));
            }
            let mut items = Vec::with_capacity((count as usize).min(64));
            for _ in 0..count {
                match parse(codec, src, pos, depth + 1)? {
                    Some(item) => items.push(item),
                    None => return Ok(None),
                }
            }
            Reply::Array(Some(items))
        }
        _ => return Err(RespError::Malformed("unknown reply type")),
    }))
}

/// `cmd` encoded for the wire.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut cmd = redis::Cmd::new();
    for arg in args {
        cmd.arg(*arg);
    }
    cmd.get_packed_command()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CODEC: RespCodec = RespCodec {
        max_bulk: 16,
        max_elements: 4,
    };

    fn decode_all(bytes: &[u8]) -> Result<Vec<Reply>, RespError> {
        let mut codec = CODEC;
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(reply) = codec.decode(&mut buf)? {
            out.push(reply);
        }
        assert!(buf.is_empty(), "left over: {buf:?}");
        Ok(out)
    }

    fn bulk(b: &'static [u8]) -> Reply {
        Reply::Bulk(Some(Bytes::from_static(b)))
    }

    #[test]
    fn every_kind_decodes() {
        let replies = decode_all(
            b"+OK\r\n-MOVED 1 h:2\r\n:42\r\n$-1\r\n*-1\r\n*3\r\n$7\r\nmessage\r\n$4\r\ngp:a\r\n$0\r\n\r\n",
        )
        .expect("valid");
        assert_eq!(
            replies,
            vec![
                Reply::Simple(Bytes::from_static(b"OK")),
                Reply::Error(Bytes::from_static(b"MOVED 1 h:2")),
                Reply::Int(42),
                Reply::Bulk(None),
                Reply::Array(None),
                Reply::Array(Some(vec![bulk(b"message"), bulk(b"gp:a"), bulk(b"")])),
            ]
        );
    }

    #[test]
    fn a_reply_cut_anywhere_needs_more_and_then_decodes() {
        let whole: &[u8] = b"*2\r\n$7\r\nmessage\r\n*1\r\n:7\r\n";
        for cut in 0..whole.len() {
            let mut codec = CODEC;
            let mut buf = BytesMut::from(&whole[..cut]);
            assert_eq!(codec.decode(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed at {cut}");
            buf.extend_from_slice(&whole[cut..]);
            assert!(codec.decode(&mut buf).expect("valid").is_some());
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn limits_and_garbage_are_errors_not_allocations() {
        assert_eq!(
            decode_all(b"$17\r\n"),
            Err(RespError::TooLarge(17, 16)),
            "refused from the header, before the bytes arrive"
        );
        assert_eq!(decode_all(b"*5\r\n"), Err(RespError::TooManyElements(5, 4)));
        assert!(matches!(
            decode_all(b"$2\r\nabcd\r\n"),
            Err(RespError::Malformed(_))
        ));
        assert!(matches!(
            decode_all(b"?x\r\n"),
            Err(RespError::Malformed(_))
        ));
        assert!(matches!(
            decode_all(b":x\r\n"),
            Err(RespError::Malformed(_))
        ));
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2);
        assert_eq!(
            decode_all(deep.as_bytes()),
            Err(RespError::TooDeep(MAX_DEPTH))
        );
        let long_line = vec![b'+'; MAX_LINE + 2];
        assert!(matches!(
            decode_all(&long_line),
            Err(RespError::TooLarge(..))
        ));
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            encode(&[b"PUBLISH", b"gp:a b", b"x\r\n"]),
            b"*3\r\n$7\r\nPUBLISH\r\n$6\r\ngp:a b\r\n$3\r\nx\r\n\r\n".to_vec()
        );
    }
}
