//! RESP2, the part a pub/sub client reads: a pure decoder over bytes that tells "need more" from
//! "malformed", with limits, so that a server (or anything that answers on its port) cannot make
//! the gateway allocate more than one reply's budget ([`RespLimits::max_reply`]). Each byte is
//! looked at a bounded number of times however the reply arrives: the decoder scans what came,
//! remembering where it stopped, and only when the reply is whole builds it, from zero-copy
//! slices of the buffer. Commands are encoded with the `redis` crate's [`redis::Cmd`], except
//! [`PublishCommand`], written in place (every message takes that path).

use bytes::{BufMut, Bytes, BytesMut};
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
    #[error("reply of at least {0} bytes is over the budget of {1}")]
    ReplyTooLarge(u64, usize),
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
pub const MAX_LINE: usize = 64 * 1024;

/// What one reply may be: its largest bulk string (a message, or `CLIENT LIST`'s line), the
/// most elements in one array, and the most bytes in all (the buffer holds no more than this
/// while a reply is incomplete; past it the reply is an error and the connection is dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RespLimits {
    pub max_bulk: usize,
    pub max_elements: usize,
    pub max_reply: usize,
}

/// The decoder: its limits and how far it has scanned the reply being received.
#[derive(Debug)]
pub struct RespCodec {
    limits: RespLimits,
    scan: Scan,
}

/// Where the scan of an incomplete reply stopped, so that the next bytes resume it.
#[derive(Debug, Default)]
struct Scan {
    /// Bytes at the front of the buffer that are whole elements (or array headers) of the reply.
    pos: usize,
    /// Elements still to come in each array open at `pos`, outermost first.
    open: Vec<u64>,
    /// No line end starts before this (a line at `pos` was looked for up to here).
    searched: usize,
    /// A bulk string whose header was read ends here (its CRLF included).
    bulk_end: Option<usize>,
    /// Bytes looked at, for the tests' bound on the work.
    #[cfg(test)]
    examined: usize,
}

impl RespCodec {
    pub fn new(limits: RespLimits) -> RespCodec {
        RespCodec {
            limits,
            scan: Scan::default(),
        }
    }

    /// Scans from where the last call stopped: `Some(end)` once a whole reply is in
    /// `src[..end]`.
    fn scan(&mut self, src: &[u8]) -> Result<Option<usize>, RespError> {
        let limits = self.limits;
        let s = &mut self.scan;
        loop {
            let done_at = if let Some(end) = s.bulk_end {
                if src.len() < end {
                    return need_more(src, &limits);
                }
                if &src[end - 2..end] != b"\r\n" {
                    return Err(RespError::Malformed("bulk string without its CRLF"));
                }
                s.bulk_end = None;
                end
            } else {
                if s.open.len() > MAX_DEPTH {
                    return Err(RespError::TooDeep(MAX_DEPTH));
                }
                let Some(&kind) = src.get(s.pos) else {
                    return need_more(src, &limits);
                };
                let from = s.searched.max(s.pos + 1);
                let rest = &src[from..];
                #[cfg(test)]
                {
                    s.examined += rest.len();
                }
                let Some(at) = rest.windows(2).position(|w| w == b"\r\n") else {
                    s.searched = src.len().saturating_sub(1).max(from);
                    let len = src.len() - (s.pos + 1);
                    if len > MAX_LINE {
                        return Err(RespError::TooLarge(len as u64, MAX_LINE));
                    }
                    return need_more(src, &limits);
                };
                let text = &src[s.pos + 1..from + at];
                let next = from + at + 2;
                s.searched = 0;
                match kind {
                    b'+' | b'-' => next,
                    b':' => {
                        number(text)?;
                        next
                    }
                    b'$' => {
                        let len = number(text)?;
                        if len < 0 {
                            next
                        } else {
                            let len = len as u64;
                            if len > limits.max_bulk as u64 {
                                return Err(RespError::TooLarge(len, limits.max_bulk));
                            }
                            let end = next as u64 + len + 2;
                            if end > limits.max_reply as u64 {
                                return Err(RespError::ReplyTooLarge(end, limits.max_reply));
                            }
                            s.pos = next;
                            s.bulk_end = Some(end as usize);
                            continue;
                        }
                    }
                    b'*' => {
                        let count = number(text)?;
                        if count <= 0 {
                            next
                        } else {
                            if count as u64 > limits.max_elements as u64 {
                                return Err(RespError::TooManyElements(
                                    count as u64,
                                    limits.max_elements,
                                ));
                            }
                            s.pos = next;
                            s.open.push(count as u64);
                            continue;
                        }
                    }
                    _ => return Err(RespError::Malformed("unknown reply type")),
                }
            };
            s.pos = done_at;
            // One element done: it closes the arrays it was the last element of.
            loop {
                match s.open.last_mut() {
                    None => return Ok(Some(done_at)),
                    Some(left) => {
                        *left -= 1;
                        if *left > 0 {
                            break;
                        }
                        s.open.pop();
                    }
                }
            }
        }
    }
}

/// "Need more", unless the reply already holds more than its budget.
fn need_more(src: &[u8], limits: &RespLimits) -> Result<Option<usize>, RespError> {
    if src.len() > limits.max_reply {
        return Err(RespError::ReplyTooLarge(src.len() as u64, limits.max_reply));
    }
    Ok(None)
}

impl Decoder for RespCodec {
    type Item = Reply;
    type Error = RespError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Reply>, RespError> {
        match self.scan(src) {
            Ok(None) => Ok(None),
            Ok(Some(end)) => {
                self.scan_reset();
                let frame = src.split_to(end).freeze();
                let mut pos = 0;
                let reply = build(&frame, &mut pos)?;
                debug_assert_eq!(pos, end);
                Ok(Some(reply))
            }
            Err(e) => {
                self.scan_reset();
                Err(e)
            }
        }
    }
}

impl RespCodec {
    /// Starts the next reply's scan over (the count of bytes examined is kept).
    fn scan_reset(&mut self) {
        #[cfg(test)]
        let examined = self.scan.examined;
        self.scan = Scan::default();
        #[cfg(test)]
        {
            self.scan.examined = examined;
        }
    }
}

fn number(text: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(text)
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or(RespError::Malformed("not a number"))
}

/// The line at `pos` (after its type byte) in a frame the scan found whole.
fn line(frame: &[u8], pos: &mut usize) -> Result<(usize, usize), RespError> {
    let start = *pos;
    let at = frame[start..]
        .windows(2)
        .position(|w| w == b"\r\n")
        .ok_or(RespError::Malformed("a line without its end"))?;
    *pos = start + at + 2;
    Ok((start, start + at))
}

/// Builds the reply at `pos` of a frame the scan found whole and well-formed, sharing its
/// bytes.
fn build(frame: &Bytes, pos: &mut usize) -> Result<Reply, RespError> {
    let kind = frame[*pos];
    *pos += 1;
    let (start, end) = line(frame, pos)?;
    Ok(match kind {
        b'+' => Reply::Simple(frame.slice(start..end)),
        b'-' => Reply::Error(frame.slice(start..end)),
        b':' => Reply::Int(number(&frame[start..end])?),
        b'$' => match usize::try_from(number(&frame[start..end])?) {
            Err(_) => Reply::Bulk(None),
            Ok(len) => {
                let bulk = frame.slice(*pos..*pos + len);
                *pos += len + 2;
                Reply::Bulk(Some(bulk))
            }
        },
        b'*' => match usize::try_from(number(&frame[start..end])?) {
            Err(_) => Reply::Array(None),
            Ok(count) => {
                let mut items = Vec::with_capacity(count);
                for _ in 0..count {
                    items.push(build(frame, pos)?);
                }
                Reply::Array(Some(items))
            }
        },
        _ => return Err(RespError::Malformed("unknown reply type")),
    })
}

/// `cmd` encoded for the wire.
pub fn encode(args: &[&[u8]]) -> Vec<u8> {
    let mut cmd = redis::Cmd::new();
    for arg in args {
        cmd.arg(*arg);
    }
    cmd.get_packed_command()
}

/// A `PUBLISH` (or `SPUBLISH`) ready for the wire, and where its channel lies in it.
#[derive(Debug)]
pub struct PublishCommand {
    pub bytes: Bytes,
    channel: std::ops::Range<usize>,
}

impl PublishCommand {
    /// `VERB PREFIX:GROUP HEADER+PAYLOAD`, in one buffer: the channel and the enveloped payload
    /// are written in place instead of being built first and copied (every publish takes this
    /// path).
    pub fn new(verb: &[u8], prefix: &str, group: &str, header: &[u8], payload: &[u8]) -> Self {
        let channel_len = prefix.len() + 1 + group.len();
        let message_len = header.len() + payload.len();
        // Three bulk headers of at most 1 + 20 digits + CRLF each, and the array's.
        let mut buf =
            BytesMut::with_capacity(4 + 3 * 23 + verb.len() + channel_len + message_len + 3 * 2);
        buf.put_slice(b"*3\r\n");
        put_bulk_header(&mut buf, verb.len());
        buf.put_slice(verb);
        buf.put_slice(b"\r\n");
        put_bulk_header(&mut buf, channel_len);
        let start = buf.len();
        buf.put_slice(prefix.as_bytes());
        buf.put_u8(b':');
        buf.put_slice(group.as_bytes());
        let channel = start..buf.len();
        buf.put_slice(b"\r\n");
        put_bulk_header(&mut buf, message_len);
        buf.put_slice(header);
        buf.put_slice(payload);
        buf.put_slice(b"\r\n");
        PublishCommand {
            bytes: buf.freeze(),
            channel,
        }
    }

    /// The channel it publishes to.
    pub fn channel(&self) -> &[u8] {
        &self.bytes[self.channel.clone()]
    }
}

/// `$LEN\r\n`.
pub(super) fn put_bulk_header(buf: &mut BytesMut, len: usize) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = len;
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    buf.put_u8(b'$');
    buf.put_slice(&digits[at..]);
    buf.put_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: RespLimits = RespLimits {
        max_bulk: 16,
        max_elements: 4,
        max_reply: 128 * 1024,
    };

    fn decode_all(bytes: &[u8]) -> Result<Vec<Reply>, RespError> {
        let mut codec = RespCodec::new(LIMITS);
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
            b"+OK\r\n-MOVED 1 h:2\r\n:42\r\n$-1\r\n*-1\r\n*0\r\n*3\r\n$7\r\nmessage\r\n$4\r\ngp:a\r\n$0\r\n\r\n",
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
                Reply::Array(Some(vec![])),
                Reply::Array(Some(vec![bulk(b"message"), bulk(b"gp:a"), bulk(b"")])),
            ]
        );
    }

    #[test]
    fn a_reply_cut_anywhere_needs_more_and_then_decodes() {
        let whole: &[u8] = b"*2\r\n$7\r\nmessage\r\n*1\r\n:7\r\n";
        let expected = Reply::Array(Some(vec![
            bulk(b"message"),
            Reply::Array(Some(vec![Reply::Int(7)])),
        ]));
        for cut in 0..whole.len() {
            let mut codec = RespCodec::new(LIMITS);
            let mut buf = BytesMut::from(&b"+first\r\n"[..]);
            buf.extend_from_slice(&whole[..cut]);
            assert_eq!(
                codec.decode(&mut buf),
                Ok(Some(Reply::Simple(Bytes::from_static(b"first"))))
            );
            assert_eq!(codec.decode(&mut buf), Ok(None), "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed at {cut}");
            buf.extend_from_slice(&whole[cut..]);
            assert_eq!(codec.decode(&mut buf), Ok(Some(expected.clone())));
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
        assert!(matches!(
            decode_all(b"*1\r\n:x\r\n"),
            Err(RespError::Malformed(_))
        ));
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2);
        assert_eq!(
            decode_all(deep.as_bytes()),
            Err(RespError::TooDeep(MAX_DEPTH))
        );
        let deepest = format!("{}:1\r\n", "*1\r\n".repeat(MAX_DEPTH));
        assert!(decode_all(deepest.as_bytes()).is_ok(), "{MAX_DEPTH} levels");
        let long_line = vec![b'+'; MAX_LINE + 2];
        assert!(matches!(
            decode_all(&long_line),
            Err(RespError::TooLarge(..))
        ));
    }

    /// Feeds `bytes` in pieces of `step`: the replies, or the error and how many bytes were
    /// buffered when it came.
    fn feed(
        codec: &mut RespCodec,
        bytes: &[u8],
        step: usize,
    ) -> Result<Vec<Reply>, (RespError, usize)> {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(step) {
            buf.extend_from_slice(piece);
            loop {
                match codec.decode(&mut buf) {
                    Ok(Some(reply)) => out.push(reply),
                    Ok(None) => {
                        assert!(
                            buf.len() <= codec.limits.max_reply,
                            "buffered past the budget"
                        );
                        break;
                    }
                    Err(e) => return Err((e, buf.len())),
                }
            }
        }
        Ok(out)
    }

    #[test]
    fn a_reply_over_its_budget_is_an_error_as_it_arrives() {
        let limits = RespLimits {
            max_bulk: 16,
            max_elements: 4,
            max_reply: 64,
        };
        // Every bulk and array within its own limit, the whole over the budget.
        let bulks = format!("*4\r\n{}", "$16\r\n0123456789abcdef\r\n".repeat(4));
        let (error, buffered) =
            feed(&mut RespCodec::new(limits), bulks.as_bytes(), 7).expect_err("over budget");
        assert!(matches!(error, RespError::ReplyTooLarge(_, 64)), "{error}");
        assert!(buffered < bulks.len(), "refused before it all came");
        let nested = format!(
            "*4\r\n{}",
            format!("*4\r\n{}", ":1234567\r\n".repeat(4)).repeat(4)
        );
        let (error, buffered) =
            feed(&mut RespCodec::new(limits), nested.as_bytes(), 5).expect_err("over budget");
        assert!(matches!(error, RespError::ReplyTooLarge(_, 64)), "{error}");
        assert!(
            buffered <= 64 + 5,
            "refused once over the budget: {buffered}"
        );
        // The same within it decodes.
        let within = format!("*2\r\n{}", "$16\r\n0123456789abcdef\r\n".repeat(2));
        assert_eq!(
            feed(&mut RespCodec::new(limits), within.as_bytes(), 3).map(|r| r.len()),
            Ok(1)
        );
    }

    #[test]
    fn a_large_reply_fed_byte_by_byte_is_scanned_once() {
        let limits = RespLimits {
            max_bulk: 1 << 20,
            max_elements: 64,
            max_reply: 2 << 20,
        };
        let payload = vec![b'x'; 100_000];
        let mut whole = b"*3\r\n$8\r\nsmessage\r\n$4\r\ngp:a\r\n$100000\r\n".to_vec();
        whole.extend_from_slice(&payload);
        whole.extend_from_slice(b"\r\n");
        let mut lines = b"*40\r\n".to_vec();
        for _ in 0..40 {
            lines.extend_from_slice(format!("+{}\r\n", "y".repeat(1000)).as_bytes());
        }
        for bytes in [whole, lines] {
            let mut codec = RespCodec::new(limits);
            let replies = feed(&mut codec, &bytes, 1).expect("valid");
            assert_eq!(replies.len(), 1);
            assert!(
                codec.scan.examined <= 3 * bytes.len(),
                "{} bytes examined for a reply of {}",
                codec.scan.examined,
                bytes.len()
            );
        }
    }

    #[test]
    fn a_publish_written_in_place_is_the_command_encode_writes() {
        for (group, payload) in [
            ("a b", &b"x\r\n"[..]),
            ("", &b""[..]),
            ("g", &[b'p'; 1234][..]),
        ] {
            let command = PublishCommand::new(b"SPUBLISH", "gp", group, b"HDR", payload);
            let channel = format!("gp:{group}");
            let mut message = b"HDR".to_vec();
            message.extend_from_slice(payload);
            assert_eq!(
                &command.bytes[..],
                &encode(&[b"SPUBLISH", channel.as_bytes(), &message])[..]
            );
            assert_eq!(command.channel(), channel.as_bytes());
        }
    }

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            encode(&[b"PUBLISH", b"gp:a b", b"x\r\n"]),
            b"*3\r\n$7\r\nPUBLISH\r\n$6\r\ngp:a b\r\n$3\r\nx\r\n\r\n".to_vec()
        );
    }
}
