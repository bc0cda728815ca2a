//! The PHP Channel protocol (Workerman's Channel 1.x server on its `Frame` protocol), so PHP
//! processes can use the broker in place of `Channel\Server`.
//!
//! - Framing: a 4-byte big-endian *total* length (the header included), then the body. A
//!   4-byte frame (empty body) is a ping. [`decode_php_frame`] is the pure decoder;
//!   [`PhpFrameCodec`] adapts it to tokio-util with the frame limit.
//! - Bodies: PHP `serialize()` text of an array. [`unserialize`] reads the values PHP apps send
//!   (null, bool, int, float, string, arrays with int and string keys) within [`PhpLimits`];
//!   objects, enums and references are refused. [`serialize`] writes them back.
//! - Commands: [`PhpCommand`], what a client asks (`subscribe`, `publish`, `publishLoop`, the
//!   queue commands), and [`server_message`], what the server sends (`event`, `queue`).
//! - [`to_json`]: a value as JSON text, as PHP's `json_encode` writes it, for the
//!   `send_to_group` bridge to the client protocol's rules.
//!
//! No crate was used for the format: those on crates.io (`serde_php`, `php_serde`) map it onto
//! serde types, which loses arrays mixing int and string keys, and bound neither depth nor
//! element count.

use std::fmt::Write as _;

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Bytes of the length header; a frame of exactly this many bytes is a ping.
pub const PHP_HEADER_LEN: usize = 4;
/// Default deepest nesting of arrays in one value.
pub const DEFAULT_PHP_MAX_DEPTH: usize = 32;
/// Default most values (array elements, counted at every level) in one frame.
pub const DEFAULT_PHP_MAX_ELEMENTS: usize = 100_000;

/// What one frame from a PHP client may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PhpLimits {
    /// Largest frame, header included.
    pub max_frame_size: usize,
    /// Deepest nesting of arrays (a top-level array is depth 1).
    pub max_depth: usize,
    /// Most array elements in the whole value, counted at every level.
    pub max_elements: usize,
}

/// A PHP value, as `serialize()` writes it.
#[derive(Debug, Clone, PartialEq)]
pub enum PhpValue {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// PHP strings are bytes, not necessarily UTF-8.
    Str(Bytes),
    /// An ordered array: its keys in order, as PHP keeps them.
    Array(Vec<(PhpKey, PhpValue)>),
}

/// A PHP array key.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PhpKey {
    Int(i64),
    Str(Bytes),
}

impl PhpValue {
    pub fn str(s: impl AsRef<[u8]>) -> PhpValue {
        PhpValue::Str(Bytes::copy_from_slice(s.as_ref()))
    }

    /// The value under string key `key` of an array.
    pub fn get(&self, key: &str) -> Option<&PhpValue> {
        let PhpValue::Array(entries) = self else {
            return None;
        };
        entries
            .iter()
            .rev() // as in PHP, a later duplicate key wins
            .find(|(k, _)| matches!(k, PhpKey::Str(s) if s.as_ref() == key.as_bytes()))
            .map(|(_, v)| v)
    }

    /// PHP's name of the value's type, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            PhpValue::Null => "null",
            PhpValue::Bool(_) => "bool",
            PhpValue::Int(_) => "int",
            PhpValue::Float(_) => "float",
            PhpValue::Str(_) => "string",
            PhpValue::Array(_) => "array",
        }
    }
}

/// Why a body is not a value this server takes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhpError {
    #[error("serialized value ends early (at byte {at})")]
    Truncated { at: usize },
    #[error("malformed serialized value at byte {at}: expected {expected}")]
    Syntax { at: usize, expected: &'static str },
    #[error(
        "{kind} at byte {at} refused: only null, bool, int, float, string and array are accepted"
    )]
    Unsupported { kind: &'static str, at: usize },
    #[error("arrays nested deeper than {max}")]
    TooDeep { max: usize },
    #[error("more than {max} array elements")]
    TooManyElements { max: usize },
    #[error("string of {len} bytes declared at byte {at}, longer than the {remaining} bytes left")]
    StringTooLong {
        len: usize,
        remaining: usize,
        at: usize,
    },
    #[error("bytes left after the value, at byte {at}")]
    Trailing { at: usize },
}

/// Reads one serialized value that must fill `input` (one trailing newline is allowed, as the
/// original server wrote one after each of its own).
pub fn unserialize(input: &Bytes, limits: &PhpLimits) -> Result<PhpValue, PhpError> {
    let mut reader = Reader {
        input,
        pos: 0,
        elements: 0,
        limits,
    };
    let value = reader.value(0)?;
    let rest = &input[reader.pos..];
    if !(rest.is_empty() || rest == b"\n") {
        return Err(PhpError::Trailing { at: reader.pos });
    }
    Ok(value)
}

struct Reader<'a> {
    input: &'a Bytes,
    pos: usize,
    elements: usize,
    limits: &'a PhpLimits,
}

impl Reader<'_> {
    fn peek(&self) -> Result<u8, PhpError> {
        self.input
            .get(self.pos)
            .copied()
            .ok_or(PhpError::Truncated { at: self.pos })
    }

    fn expect(&mut self, byte: u8, expected: &'static str) -> Result<(), PhpError> {
        if self.peek()? != byte {
            return Err(PhpError::Syntax {
                at: self.pos,
                expected,
            });
        }
        self.pos += 1;
        Ok(())
    }

    /// The text up to (not including) `end`, which is consumed.
    fn until(&mut self, end: u8, expected: &'static str) -> Result<&[u8], PhpError> {
        let start = self.pos;
        // Numbers are short: a long run without the terminator is malformed, not "need more".
        let window = &self.input[start..self.input.len().min(start + 64)];
        match window.iter().position(|&b| b == end) {
            Some(n) => {
                self.pos = start + n + 1;
                Ok(&self.input[start..start + n])
            }
            None if self.input.len() <= start + 64 => Err(PhpError::Truncated {
                at: self.input.len(),
            }),
            None => Err(PhpError::Syntax {
                at: start,
                expected,
            }),
        }
    }

    fn int(&mut self, end: u8) -> Result<i64, PhpError> {
        let at = self.pos;
        let text = self.until(end, "an integer")?;
        let digits = text.strip_prefix(b"+").unwrap_or(text);
        let ok = !digits.is_empty()
            && digits
                .iter()
                .enumerate()
                .all(|(i, b)| b.is_ascii_digit() || (i == 0 && *b == b'-' && digits.len() > 1));
        std::str::from_utf8(digits)
            .ok()
            .filter(|_| ok)
            .and_then(|s| s.parse().ok())
            .ok_or(PhpError::Syntax {
                at,
                expected: "an integer",
            })
    }

    fn length(&mut self) -> Result<usize, PhpError> {
        let at = self.pos;
        let n = self.int(b':')?;
        usize::try_from(n).map_err(|_| PhpError::Syntax {
            at,
            expected: "a length",
        })
    }

    fn string(&mut self) -> Result<Bytes, PhpError> {
        let at = self.pos;
        let len = self.length()?;
        self.expect(b'"', "'\"'")?;
        let remaining = self.input.len() - self.pos;
        if len > remaining {
            return Err(PhpError::StringTooLong { len, remaining, at });
        }
        let s = self.input.slice(self.pos..self.pos + len);
        self.pos += len;
        self.expect(b'"', "'\"' after the string")?;
        self.expect(b';', "';'")?;
        Ok(s)
    }

    fn value(&mut self, depth: usize) -> Result<PhpValue, PhpError> {
        let at = self.pos;
        let tag = self.peek()?;
        if tag == b'N' {
            self.pos += 1;
            self.expect(b';', "';' after N")?;
            return Ok(PhpValue::Null);
        }
        let unsupported = |kind| Err(PhpError::Unsupported { kind, at });
        match tag {
            b'b' | b'i' | b'd' | b's' | b'a' => {}
            b'O' | b'o' | b'C' => return unsupported("an object"),
            b'E' => return unsupported("an enum"),
            b'r' | b'R' => return unsupported("a reference"),
            b'S' => return unsupported("an escaped string (S:)"),
            _ => {
                return Err(PhpError::Syntax {
                    at,
                    expected: "a type tag (N, b, i, d, s, a)",
                })
            }
        }
        self.pos += 1;
        self.expect(b':', "':' after the type tag")?;
        match tag {
            b'b' => match self.until(b';', "0 or 1")? {
                b"0" => Ok(PhpValue::Bool(false)),
                b"1" => Ok(PhpValue::Bool(true)),
                _ => Err(PhpError::Syntax {
                    at,
                    expected: "b:0; or b:1;",
                }),
            },
            b'i' => self.int(b';').map(PhpValue::Int),
            b'd' => {
                let text = self.until(b';', "a float")?;
                parse_float(text)
                    .map(PhpValue::Float)
                    .ok_or(PhpError::Syntax {
                        at,
                        expected: "a float",
                    })
            }
            b's' => self.string().map(PhpValue::Str),
            _ => self.array(depth + 1),
        }
    }

    fn array(&mut self, depth: usize) -> Result<PhpValue, PhpError> {
        if depth > self.limits.max_depth {
            return Err(PhpError::TooDeep {
                max: self.limits.max_depth,
            });
        }
        let count = self.length()?;
        self.expect(b'{', "'{'")?;
        // Each element takes at least 6 bytes (`i:0;N;`): a count the input cannot hold is
        // malformed before anything is reserved for it.
        if count > self.limits.max_elements.saturating_sub(self.elements) {
            return Err(PhpError::TooManyElements {
                max: self.limits.max_elements,
            });
        }
        if count.saturating_mul(6) > self.input.len() - self.pos {
            return Err(PhpError::Truncated {
                at: self.input.len(),
            });
        }
        self.elements += count;
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            let at = self.pos;
            let key = match self.peek()? {
                b'i' => {
                    self.pos += 1;
                    self.expect(b':', "':'")?;
                    PhpKey::Int(self.int(b';')?)
                }
                b's' => {
                    self.pos += 1;
                    self.expect(b':', "':'")?;
                    PhpKey::Str(self.string()?)
                }
                _ => {
                    return Err(PhpError::Syntax {
                        at,
                        expected: "an int or string array key",
                    })
                }
            };
            let value = self.value(depth)?;
            entries.push((key, value));
        }
        self.expect(b'}', "'}' closing the array")?;
        Ok(PhpValue::Array(entries))
    }
}

fn parse_float(text: &[u8]) -> Option<f64> {
    match text {
        b"INF" => return Some(f64::INFINITY),
        b"-INF" => return Some(f64::NEG_INFINITY),
        b"NAN" => return Some(f64::NAN),
        _ => {}
    }
    // Only PHP's own number syntax: Rust's parser would also take "inf" or "infinity".
    if text.is_empty()
        || !text
            .iter()
            .all(|b| b.is_ascii_digit() || matches!(b, b'+' | b'-' | b'.' | b'e' | b'E'))
    {
        return None;
    }
    std::str::from_utf8(text).ok()?.parse().ok()
}

/// Appends `value` as PHP's `serialize()` writes it.
pub fn serialize(value: &PhpValue, out: &mut Vec<u8>) {
    match value {
        PhpValue::Null => out.extend_from_slice(b"N;"),
        PhpValue::Bool(b) => out.extend_from_slice(if *b { b"b:1;" } else { b"b:0;" }),
        PhpValue::Int(i) => out.extend_from_slice(format!("i:{i};").as_bytes()),
        PhpValue::Float(f) => {
            let text = if f.is_nan() {
                "NAN".to_owned()
            } else if f.is_infinite() {
                if *f > 0.0 { "INF" } else { "-INF" }.to_owned()
            } else {
                // The shortest text that reads back as the same float, as PHP >= 7.1 writes.
                format!("{f:?}")
            };
            out.extend_from_slice(format!("d:{text};").as_bytes());
        }
        PhpValue::Str(s) => serialize_str(s, out),
        PhpValue::Array(entries) => {
            out.extend_from_slice(format!("a:{}:{{", entries.len()).as_bytes());
            for (key, value) in entries {
                match key {
                    PhpKey::Int(i) => out.extend_from_slice(format!("i:{i};").as_bytes()),
                    PhpKey::Str(s) => serialize_str(s, out),
                }
                serialize(value, out);
            }
            out.push(b'}');
        }
    }
}

fn serialize_str(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(format!("s:{}:\"", s.len()).as_bytes());
    out.extend_from_slice(s);
    out.extend_from_slice(b"\";");
}

/// Why a frame cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum PhpFrameError {
    #[error("frame declares {len} bytes, less than its own 4-byte header")]
    TooShort { len: usize },
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// One frame from a PHP client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PhpFrame {
    /// An empty body: the client's keep-alive. The original server does not answer it.
    Ping,
    Body(Bytes),
}

/// Decodes one frame from the front of `src`, consuming it; `Ok(None)` when more bytes are
/// needed (nothing is consumed then). The length is checked before any buffer is reserved.
pub fn decode_php_frame(
    src: &mut BytesMut,
    max_frame_size: usize,
) -> Result<Option<PhpFrame>, PhpFrameError> {
    if src.len() < PHP_HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
    if len < PHP_HEADER_LEN {
        return Err(PhpFrameError::TooShort { len });
    }
    if len > max_frame_size {
        return Err(PhpFrameError::TooLarge {
            len,
            max: max_frame_size,
        });
    }
    if src.len() < len {
        src.reserve(len - src.len());
        return Ok(None);
    }
    src.advance(PHP_HEADER_LEN);
    let body = src.split_to(len - PHP_HEADER_LEN).freeze();
    Ok(Some(if body.is_empty() {
        PhpFrame::Ping
    } else {
        PhpFrame::Body(body)
    }))
}

/// `body` framed: its total length, then the body.
pub fn encode_php_frame(body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(PHP_HEADER_LEN + body.len());
    out.put_u32((PHP_HEADER_LEN + body.len()) as u32);
    out.put_slice(body);
    out.freeze()
}

/// [`decode_php_frame`] for tokio-util, with the frame limit.
#[derive(Debug, Clone)]
pub struct PhpFrameCodec {
    max_frame_size: usize,
}

impl PhpFrameCodec {
    pub fn new(max_frame_size: usize) -> Self {
        PhpFrameCodec { max_frame_size }
    }
}

impl tokio_util::codec::Decoder for PhpFrameCodec {
    type Item = PhpFrame;
    type Error = PhpFrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<PhpFrame>, PhpFrameError> {
        decode_php_frame(src, self.max_frame_size)
    }
}

/// A command from a PHP client.
#[derive(Debug, Clone, PartialEq)]
pub enum PhpCommand {
    Subscribe(Vec<Bytes>),
    Unsubscribe(Vec<Bytes>),
    /// To every subscriber of each channel.
    Publish {
        channels: Vec<Bytes>,
        data: PhpValue,
    },
    /// To one subscriber of each channel, in turn.
    PublishLoop {
        channels: Vec<Bytes>,
        data: PhpValue,
    },
    Watch(Vec<Bytes>),
    Unwatch(Vec<Bytes>),
    Enqueue {
        channels: Vec<Bytes>,
        data: PhpValue,
    },
    /// The next item of each watched queue, once.
    Reserve,
}

/// Why a value is not a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhpCommandError {
    #[error("a command must be an array, got {0}")]
    NotAnArray(&'static str),
    #[error("the command has no string 'type'")]
    NoType,
    #[error("unknown command type {0:?}")]
    UnknownType(String),
    #[error("'channels' must be an array of strings or ints")]
    BadChannels,
    #[error("a channel name must be 1 to {max} bytes")]
    BadChannelName { max: usize },
}

impl PhpCommand {
    /// The command `value` holds. Channel names are strings, or ints read as their decimal
    /// text, of 1 to `max_channel_len` bytes.
    pub fn parse(value: PhpValue, max_channel_len: usize) -> Result<PhpCommand, PhpCommandError> {
        if !matches!(value, PhpValue::Array(_)) {
            return Err(PhpCommandError::NotAnArray(value.type_name()));
        }
        let Some(PhpValue::Str(kind)) = value.get("type") else {
            return Err(PhpCommandError::NoType);
        };
        let channels = || channels(value.get("channels"), max_channel_len);
        // A missing 'data' is null, as PHP reads it.
        let data = || value.get("data").cloned().unwrap_or(PhpValue::Null);
        Ok(match kind.as_ref() {
            b"subscribe" => PhpCommand::Subscribe(channels()?),
            b"unsubscribe" => PhpCommand::Unsubscribe(channels()?),
            b"publish" => PhpCommand::Publish {
                channels: channels()?,
                data: data(),
            },
            b"publishLoop" => PhpCommand::PublishLoop {
                channels: channels()?,
                data: data(),
            },
            b"watch" => PhpCommand::Watch(channels()?),
            b"unwatch" => PhpCommand::Unwatch(channels()?),
            b"enqueue" => PhpCommand::Enqueue {
                channels: channels()?,
                data: data(),
            },
            b"reserve" => PhpCommand::Reserve,
            other => {
                return Err(PhpCommandError::UnknownType(
                    String::from_utf8_lossy(other).into_owned(),
                ))
            }
        })
    }
}

fn channels(value: Option<&PhpValue>, max_len: usize) -> Result<Vec<Bytes>, PhpCommandError> {
    let Some(PhpValue::Array(entries)) = value else {
        return Err(PhpCommandError::BadChannels);
    };
    entries
        .iter()
        .map(|(_, v)| {
            let name = match v {
                PhpValue::Str(s) => s.clone(),
                PhpValue::Int(i) => Bytes::from(i.to_string()),
                _ => return Err(PhpCommandError::BadChannels),
            };
            if name.is_empty() || name.len() > max_len {
                return Err(PhpCommandError::BadChannelName { max: max_len });
            }
            Ok(name)
        })
        .collect()
}

/// What the server sends: `event` for a publish, `queue` for a reserved queue item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerMessage {
    Event,
    Queue,
}

/// The framed body of `['type'=>kind,'channel'=>channel,'data'=>data]`.
pub fn server_message(kind: ServerMessage, channel: &[u8], data: &PhpValue) -> Bytes {
    let kind: &[u8] = match kind {
        ServerMessage::Event => b"event",
        ServerMessage::Queue => b"queue",
    };
    let mut body = Vec::with_capacity(64);
    body.extend_from_slice(b"a:3:{");
    serialize_str(b"type", &mut body);
    serialize_str(kind, &mut body);
    serialize_str(b"channel", &mut body);
    serialize_str(channel, &mut body);
    serialize_str(b"data", &mut body);
    serialize(data, &mut body);
    body.push(b'}');
    encode_php_frame(&body)
}

/// Why a value has no JSON form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PhpJsonError {
    #[error("a string that is not UTF-8")]
    NotUtf8,
    #[error("INF or NAN")]
    NotFinite,
}

/// `value` as JSON text, as PHP's `json_encode` writes it: an array whose keys are 0, 1, ... in
/// order is a JSON array, any other an object (keys in order, ints as their text).
pub fn to_json(value: &PhpValue) -> Result<String, PhpJsonError> {
    let mut out = String::new();
    write_json(value, &mut out)?;
    Ok(out)
}

fn write_json(value: &PhpValue, out: &mut String) -> Result<(), PhpJsonError> {
    match value {
        PhpValue::Null => out.push_str("null"),
        PhpValue::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        PhpValue::Int(i) => {
            let _ = write!(out, "{i}");
        }
        PhpValue::Float(f) if !f.is_finite() => return Err(PhpJsonError::NotFinite),
        PhpValue::Float(f) => {
            let _ = write!(out, "{f:?}");
        }
        PhpValue::Str(s) => write_json_str(s, out)?,
        PhpValue::Array(entries) => {
            let is_list = entries
                .iter()
                .enumerate()
                .all(|(i, (k, _))| *k == PhpKey::Int(i as i64));
            out.push(if is_list { '[' } else { '{' });
            for (n, (key, value)) in entries.iter().enumerate() {
                if n > 0 {
                    out.push(',');
                }
                if !is_list {
                    match key {
                        PhpKey::Int(i) => {
                            let _ = write!(out, "\"{i}\"");
                        }
                        PhpKey::Str(s) => write_json_str(s, out)?,
                    }
                    out.push(':');
                }
                write_json(value, out)?;
            }
            out.push(if is_list { ']' } else { '}' });
        }
    }
    Ok(())
}

fn write_json_str(s: &[u8], out: &mut String) -> Result<(), PhpJsonError> {
    let s = std::str::from_utf8(s).map_err(|_| PhpJsonError::NotUtf8)?;
    // Serializing a str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: PhpLimits = PhpLimits {
        max_frame_size: 1 << 20,
        max_depth: 8,
        max_elements: 1000,
    };

    fn read(text: &str) -> Result<PhpValue, PhpError> {
        unserialize(&Bytes::copy_from_slice(text.as_bytes()), &LIMITS)
    }

    fn write(value: &PhpValue) -> Vec<u8> {
        let mut out = Vec::new();
        serialize(value, &mut out);
        out
    }

    #[test]
    fn reads_what_php_serialize_writes() {
        // serialize(['type'=>'publish','channels'=>['send_to_group'],'data'=>['group_id'=>123,'message'=>'hé']])
        let text = "a:3:{s:4:\"type\";s:7:\"publish\";s:8:\"channels\";a:1:{i:0;s:13:\"send_to_group\";}s:4:\"data\";a:2:{s:8:\"group_id\";i:123;s:7:\"message\";s:3:\"h\u{e9}\";}}";
        let value = read(text).unwrap();
        assert_eq!(write(&value), text.as_bytes());
        let command = PhpCommand::parse(value, 64).unwrap();
        let PhpCommand::Publish { channels, data } = command else {
            panic!("{command:?}")
        };
        assert_eq!(channels, vec![Bytes::from_static(b"send_to_group")]);
        assert_eq!(data.get("group_id"), Some(&PhpValue::Int(123)));
        assert_eq!(data.get("message"), Some(&PhpValue::str("hé")));
        for (text, value) in [
            ("N;", PhpValue::Null),
            ("b:1;", PhpValue::Bool(true)),
            ("i:-9223372036854775808;", PhpValue::Int(i64::MIN)),
            ("d:0.1;", PhpValue::Float(0.1)),
            ("d:1.0E+25;", PhpValue::Float(1e25)),
            ("d:-INF;", PhpValue::Float(f64::NEG_INFINITY)),
            ("s:0:\"\";", PhpValue::str("")),
            (
                "a:2:{i:5;N;s:1:\"k\";a:0:{}}",
                PhpValue::Array(vec![
                    (PhpKey::Int(5), PhpValue::Null),
                    (PhpKey::Str("k".into()), PhpValue::Array(vec![])),
                ]),
            ),
        ] {
            assert_eq!(read(text), Ok(value), "{text}");
        }
        assert!(matches!(read("d:NAN;"), Ok(PhpValue::Float(f)) if f.is_nan()));
        assert_eq!(read("a:0:{}\n"), Ok(PhpValue::Array(vec![])));
    }

    #[test]
    fn refuses_what_it_does_not_take() {
        let cases: [(&str, PhpError); 10] = [
            (
                "O:8:\"stdClass\":0:{}",
                PhpError::Unsupported {
                    kind: "an object",
                    at: 0,
                },
            ),
            (
                "a:1:{i:0;r:1;}",
                PhpError::Unsupported {
                    kind: "a reference",
                    at: 9,
                },
            ),
            (
                "E:7:\"Foo:Bar\";",
                PhpError::Unsupported {
                    kind: "an enum",
                    at: 0,
                },
            ),
            (
                "s:5:\"ab",
                PhpError::StringTooLong {
                    len: 5,
                    remaining: 2,
                    at: 2,
                },
            ),
            (
                "s:99999999999:\"ab\";",
                PhpError::StringTooLong {
                    len: 99999999999,
                    remaining: 4,
                    at: 2,
                },
            ),
            ("a:2:{i:0;N;", PhpError::Truncated { at: 11 }),
            ("a:1000000:{}", PhpError::TooManyElements { max: 1000 }),
            ("i:1;x", PhpError::Trailing { at: 4 }),
            (
                "d:inf;",
                PhpError::Syntax {
                    at: 0,
                    expected: "a float",
                },
            ),
            (
                "s:-1:\"\";",
                PhpError::Syntax {
                    at: 2,
                    expected: "a length",
                },
            ),
        ];
        for (text, err) in cases {
            assert_eq!(read(text), Err(err), "{text}");
        }
        let deep = "a:1:{i:0;".repeat(9) + "N;" + &"}".repeat(9);
        assert_eq!(read(&deep), Err(PhpError::TooDeep { max: 8 }));
        let ok = "a:1:{i:0;".repeat(8) + "N;" + &"}".repeat(8);
        assert!(read(&ok).is_ok());
        assert!(matches!(
            read("a:1:{d:1.5;N;}"),
            Err(PhpError::Syntax { .. })
        ));
        assert!(matches!(
            read("i:99999999999999999999;"),
            Err(PhpError::Syntax { .. })
        ));
    }

    #[test]
    fn frames_count_their_header_and_empty_ones_are_pings() {
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&encode_php_frame(b""));
        buf.extend_from_slice(&encode_php_frame(b"N;"));
        buf.extend_from_slice(&[0, 0, 0, 9, b'x']);
        assert_eq!(&buf[..4], &[0, 0, 0, 4]);
        assert_eq!(
            decode_php_frame(&mut buf, 64).unwrap(),
            Some(PhpFrame::Ping)
        );
        assert_eq!(
            decode_php_frame(&mut buf, 64).unwrap(),
            Some(PhpFrame::Body(Bytes::from_static(b"N;")))
        );
        assert_eq!(decode_php_frame(&mut buf, 64).unwrap(), None);
        assert_eq!(buf.len(), 5, "nothing consumed while incomplete");
        let mut short = BytesMut::from(&[0u8, 0, 0, 3][..]);
        assert!(matches!(
            decode_php_frame(&mut short, 64),
            Err(PhpFrameError::TooShort { len: 3 })
        ));
        let mut huge = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decode_php_frame(&mut huge, 64),
            Err(PhpFrameError::TooLarge { .. })
        ));
        assert!(
            huge.capacity() < 1024,
            "nothing reserved for a refused length"
        );
    }

    #[test]
    fn commands_and_server_messages() {
        let value = read(
            "a:2:{s:4:\"type\";s:9:\"subscribe\";s:8:\"channels\";a:2:{i:0;s:1:\"a\";i:1;i:7;}}",
        )
        .unwrap();
        assert_eq!(
            PhpCommand::parse(value, 8),
            Ok(PhpCommand::Subscribe(vec!["a".into(), "7".into()]))
        );
        let reserve = read("a:1:{s:4:\"type\";s:7:\"reserve\";}").unwrap();
        assert_eq!(PhpCommand::parse(reserve, 8), Ok(PhpCommand::Reserve));
        let bad = read("a:2:{s:4:\"type\";s:5:\"watch\";s:8:\"channels\";s:1:\"a\";}").unwrap();
        assert_eq!(PhpCommand::parse(bad, 8), Err(PhpCommandError::BadChannels));
        assert_eq!(
            PhpCommand::parse(PhpValue::Int(1), 8),
            Err(PhpCommandError::NotAnArray("int"))
        );
        let frame = server_message(ServerMessage::Queue, b"q", &PhpValue::Int(1));
        assert_eq!(
            &frame[4..],
            b"a:3:{s:4:\"type\";s:5:\"queue\";s:7:\"channel\";s:1:\"q\";s:4:\"data\";i:1;}"
        );
    }

    #[test]
    fn json_as_php_json_encode_writes_it() {
        let list = read("a:3:{i:0;i:1;i:1;d:1.5;i:2;s:2:\"x\"\";}").unwrap();
        assert_eq!(to_json(&list).unwrap(), r#"[1,1.5,"x\""]"#);
        let map = read("a:2:{s:1:\"b\";b:1;i:3;N;}").unwrap();
        assert_eq!(to_json(&map).unwrap(), r#"{"b":true,"3":null}"#);
        assert_eq!(
            to_json(&PhpValue::Float(f64::INFINITY)),
            Err(PhpJsonError::NotFinite)
        );
        assert_eq!(
            to_json(&PhpValue::Str(Bytes::from_static(b"\xff"))),
            Err(PhpJsonError::NotUtf8)
        );
    }

    fn value() -> impl Strategy<Value = PhpValue> {
        let leaf = prop_oneof![
            Just(PhpValue::Null),
            any::<bool>().prop_map(PhpValue::Bool),
            any::<i64>().prop_map(PhpValue::Int),
            any::<f64>()
                .prop_filter("NaN is not equal to itself", |f| !f.is_nan())
                .prop_map(PhpValue::Float),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(|s| PhpValue::Str(s.into())),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            let key = prop_oneof![
                any::<i64>().prop_map(PhpKey::Int),
                proptest::collection::vec(any::<u8>(), 0..6).prop_map(|s| PhpKey::Str(s.into())),
            ];
            proptest::collection::vec((key, inner), 0..6).prop_map(PhpValue::Array)
        })
    }

    proptest! {
        #[test]
        fn every_value_round_trips(value in value()) {
            let text = Bytes::from(write(&value));
            prop_assert_eq!(unserialize(&text, &LIMITS), Ok(value));
        }

        #[test]
        fn every_truncation_is_an_error(value in value(), cut in any::<prop::sample::Index>()) {
            let text = write(&value);
            let cut = cut.index(text.len());
            let short = Bytes::copy_from_slice(&text[..cut]);
            prop_assert!(unserialize(&short, &LIMITS).is_err());
        }

        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = unserialize(&Bytes::from(bytes.clone()), &LIMITS);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = decode_php_frame(&mut buf, 32) {}
        }
    }
}
