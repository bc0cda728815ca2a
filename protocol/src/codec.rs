//! Framing of the broker link: a 4-byte big-endian body length, then a prost-encoded [`Frame`].
//!
//! [`decode_frame`] is the pure decoder: it tells "need more bytes" (`Ok(None)`) from a malformed
//! stream (`Err`); [`LinkCodec`] adapts it to tokio-util and carries the frame limit. A length
//! prefix is checked against the limit before any buffer is reserved for it.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message as _;

use crate::link::{Body, Frame, Subscribe, SubscribeRefused, Unsubscribe};
use crate::link_fault::LinkFault;

/// Default hard limit on a frame body, as in the original Channel server.
pub const DEFAULT_MAX_FRAME_SIZE: usize = 10 * 1024 * 1024;

const HEADER_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("zero-length frame")]
    ZeroLength,
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("frame body does not decode: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("frame has no body (unknown or missing message type)")]
    EmptyBody,
    #[error("i/o error on the link: {0}")]
    Io(#[from] std::io::Error),
}

/// Decodes one frame from the front of `src`, consuming it. `Ok(None)` means more bytes are
/// needed; nothing is consumed then.
pub fn decode_frame(
    src: &mut BytesMut,
    max_frame_size: usize,
) -> Result<Option<Frame>, FrameError> {
    if src.len() < HEADER_LEN {
        return Ok(None);
    }
    let len = u32::from_be_bytes([src[0], src[1], src[2], src[3]]) as usize;
    if len == 0 {
        return Err(FrameError::ZeroLength);
    }
    if len > max_frame_size {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_size,
        });
    }
    if src.len() < HEADER_LEN + len {
        src.reserve(HEADER_LEN + len - src.len());
        return Ok(None);
    }
    src.advance(HEADER_LEN);
    // Decoding from `Bytes` lets prost slice `bytes` fields instead of copying them.
    let body = src.split_to(len).freeze();
    let frame = Frame::decode(body)?;
    if frame.body.is_none() {
        return Err(FrameError::EmptyBody);
    }
    Ok(Some(frame))
}

/// Appends `frame`, length-prefixed, to `dst`.
pub fn encode_frame_into(
    frame: &Frame,
    dst: &mut BytesMut,
    max_frame_size: usize,
) -> Result<(), FrameError> {
    let len = frame.encoded_len();
    if len > max_frame_size {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_size,
        });
    }
    if len == 0 {
        return Err(FrameError::EmptyBody);
    }
    dst.reserve(HEADER_LEN + len);
    dst.put_u32(len as u32);
    frame
        .encode(dst)
        .map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok(())
}

/// Encodes `frame` into its own buffer, ready to be shared by several writers.
pub fn encode_frame(frame: &Frame, max_frame_size: usize) -> Result<Bytes, FrameError> {
    let mut dst = BytesMut::new();
    encode_frame_into(frame, &mut dst, max_frame_size)?;
    Ok(dst.freeze())
}

/// Encodes a broker -> gateway `Message` frame straight from slices (one allocation, no
/// intermediate structs). The result is cloned, by reference count, to every subscriber.
pub fn encode_message(
    channel: &[u8],
    payload: &[u8],
    max_frame_size: usize,
) -> Result<Bytes, FrameError> {
    encode_channel_payload(MESSAGE_TAG, channel, payload, false, max_frame_size)
}

/// Encodes a gateway -> broker `Publish` frame straight from slices.
pub fn encode_publish(
    channel: &[u8],
    payload: &[u8],
    no_echo: bool,
    max_frame_size: usize,
) -> Result<Bytes, FrameError> {
    encode_channel_payload(PUBLISH_TAG, channel, payload, no_echo, max_frame_size)
}

/// Tags of the `Frame.body` oneof used by the hand-written encoders (see `link.rs`).
const PUBLISH_TAG: u32 = 4;
const MESSAGE_TAG: u32 = 5;

fn encode_channel_payload(
    body_tag: u32,
    channel: &[u8],
    payload: &[u8],
    no_echo: bool,
    max_frame_size: usize,
) -> Result<Bytes, FrameError> {
    use prost::encoding::{encode_key, encode_varint, encoded_len_varint, key_len, WireType};
    // Proto3 omits fields holding their default value; so do we, to match prost byte for byte.
    let field = |tag: u32, value: &[u8]| {
        if value.is_empty() {
            0
        } else {
            key_len(tag) + encoded_len_varint(value.len() as u64) + value.len()
        }
    };
    let inner = field(1, channel) + field(2, payload) + if no_echo { key_len(3) + 1 } else { 0 };
    let len = key_len(body_tag) + encoded_len_varint(inner as u64) + inner;
    if len > max_frame_size {
        return Err(FrameError::TooLarge {
            len,
            max: max_frame_size,
        });
    }
    let mut dst = BytesMut::with_capacity(HEADER_LEN + len);
    dst.put_u32(len as u32);
    encode_key(body_tag, WireType::LengthDelimited, &mut dst);
    encode_varint(inner as u64, &mut dst);
    for (tag, value) in [(1, channel), (2, payload)] {
        if !value.is_empty() {
            encode_key(tag, WireType::LengthDelimited, &mut dst);
            encode_varint(value.len() as u64, &mut dst);
            dst.put_slice(value);
        }
    }
    if no_echo {
        encode_key(3, WireType::Varint, &mut dst);
        encode_varint(1, &mut dst);
    }
    debug_assert_eq!(dst.len(), HEADER_LEN + len);
    Ok(dst.freeze())
}

/// Splits a (re)subscription of many channels into `Subscribe` frames that each stay within the
/// frame limit. A channel that alone would not fit is returned in `Err`.
pub fn subscribe_frames<I>(channels: I, max_frame_size: usize) -> Result<Vec<Frame>, FrameError>
where
    I: IntoIterator<Item = Bytes>,
{
    chunk_channels(channels, max_frame_size).map(|chunks| {
        chunks
            .into_iter()
            .map(|channels| Frame::new(Body::Subscribe(Subscribe { channels })))
            .collect()
    })
}

/// Like [`subscribe_frames`], for `Unsubscribe`.
pub fn unsubscribe_frames<I>(channels: I, max_frame_size: usize) -> Result<Vec<Frame>, FrameError>
where
    I: IntoIterator<Item = Bytes>,
{
    chunk_channels(channels, max_frame_size).map(|chunks| {
        chunks
            .into_iter()
            .map(|channels| Frame::new(Body::Unsubscribe(Unsubscribe { channels })))
            .collect()
    })
}

/// Splits a broker's refusal of `channels` into `SubscribeRefused` frames that each stay within
/// the frame limit and each carry `fault` and `reason`. A channel that does not fit in a frame
/// with them is returned in `Err`.
pub fn subscribe_refused_frames<I>(
    channels: I,
    fault: LinkFault,
    reason: &str,
    max_frame_size: usize,
) -> Result<Vec<Frame>, FrameError>
where
    I: IntoIterator<Item = Bytes>,
{
    let string_field = |s: &str| {
        if s.is_empty() {
            0
        } else {
            1 + prost::encoding::encoded_len_varint(s.len() as u64) + s.len()
        }
    };
    let fixed = string_field(fault.as_str()) + string_field(reason);
    chunk_channels_with(channels, max_frame_size, fixed).map(|chunks| {
        chunks
            .into_iter()
            .map(|channels| {
                Frame::new(Body::SubscribeRefused(SubscribeRefused {
                    channels,
                    code: fault.as_str().into(),
                    reason: reason.into(),
                }))
            })
            .collect()
    })
}

fn chunk_channels<I>(channels: I, max_frame_size: usize) -> Result<Vec<Vec<Bytes>>, FrameError>
where
    I: IntoIterator<Item = Bytes>,
{
    chunk_channels_with(channels, max_frame_size, 0)
}

/// Groups `channels` so that each group, as the repeated field 1 of a message that also holds
/// `fixed` bytes of other fields, fits in a frame.
fn chunk_channels_with<I>(
    channels: I,
    max_frame_size: usize,
    fixed: usize,
) -> Result<Vec<Vec<Bytes>>, FrameError>
where
    I: IntoIterator<Item = Bytes>,
{
    // Outer overhead: the oneof field's tag and length varint (at most 1 + 5 bytes).
    let outer = 6 + fixed;
    let mut chunks = Vec::new();
    let mut current: Vec<Bytes> = Vec::new();
    let mut size = outer;
    for channel in channels {
        let entry = 1 + prost::encoding::encoded_len_varint(channel.len() as u64) + channel.len();
        if outer + entry > max_frame_size {
            return Err(FrameError::TooLarge {
                len: outer + entry,
                max: max_frame_size,
            });
        }
        if size + entry > max_frame_size {
            chunks.push(std::mem::take(&mut current));
            size = outer;
        }
        size += entry;
        current.push(channel);
    }
    if !current.is_empty() {
        chunks.push(current);
    }
    Ok(chunks)
}

/// tokio-util adapter around [`decode_frame`] / [`encode_frame_into`] with the frame limit.
#[derive(Debug, Clone, Copy)]
pub struct LinkCodec {
    max_frame_size: usize,
}

impl LinkCodec {
    pub fn new(max_frame_size: usize) -> Self {
        LinkCodec { max_frame_size }
    }

    pub fn max_frame_size(&self) -> usize {
        self.max_frame_size
    }

    /// Changes the limit, e.g. raising it once a peer has authenticated.
    pub fn set_max_frame_size(&mut self, max_frame_size: usize) {
        self.max_frame_size = max_frame_size;
    }
}

impl Default for LinkCodec {
    fn default() -> Self {
        LinkCodec::new(DEFAULT_MAX_FRAME_SIZE)
    }
}

impl tokio_util::codec::Decoder for LinkCodec {
    type Item = Frame;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        decode_frame(src, self.max_frame_size)
    }
}

impl tokio_util::codec::Encoder<&Frame> for LinkCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: &Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame_into(frame, dst, self.max_frame_size)
    }
}

impl tokio_util::codec::Encoder<Frame> for LinkCodec {
    type Error = FrameError;

    fn encode(&mut self, frame: Frame, dst: &mut BytesMut) -> Result<(), FrameError> {
        encode_frame_into(&frame, dst, self.max_frame_size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::link::{Ping, Publish};

    fn publish(channel: &str, payload: &str) -> Frame {
        Frame::new(Body::Publish(Publish {
            channel: Bytes::copy_from_slice(channel.as_bytes()),
            payload: Bytes::copy_from_slice(payload.as_bytes()),
            no_echo: true,
            history: None,
            id: 0,
            origin: 0,
        }))
    }

    #[test]
    fn round_trip() {
        let frame = publish("123", "hello");
        let mut buf = BytesMut::new();
        encode_frame_into(&frame, &mut buf, 1024).unwrap();
        assert_eq!(decode_frame(&mut buf, 1024).unwrap(), Some(frame));
        assert!(buf.is_empty());
    }

    #[test]
    fn split_frame_needs_more_bytes_at_every_cut() {
        let frame = publish("group", "a payload of some length");
        let encoded = encode_frame(&frame, 1024).unwrap();
        for cut in 0..encoded.len() {
            let mut buf = BytesMut::from(&encoded[..cut]);
            assert_eq!(decode_frame(&mut buf, 1024).unwrap(), None, "cut at {cut}");
            assert_eq!(buf.len(), cut, "nothing consumed at cut {cut}");
            buf.extend_from_slice(&encoded[cut..]);
            assert_eq!(decode_frame(&mut buf, 1024).unwrap(), Some(frame.clone()));
        }
    }

    #[test]
    fn many_frames_in_one_buffer() {
        let mut buf = BytesMut::new();
        let frames: Vec<Frame> = (0..100)
            .map(|i| {
                if i % 2 == 0 {
                    publish(&format!("g{i}"), &"x".repeat(i))
                } else {
                    Frame::new(Body::Ping(Ping { nonce: i as u64 }))
                }
            })
            .collect();
        for f in &frames {
            encode_frame_into(f, &mut buf, 1024).unwrap();
        }
        let mut decoded = Vec::new();
        while let Some(f) = decode_frame(&mut buf, 1024).unwrap() {
            decoded.push(f);
        }
        assert_eq!(decoded, frames);
        assert!(buf.is_empty());
    }

    #[test]
    fn zero_length_is_an_error() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 0, 1, 2][..]);
        assert!(matches!(
            decode_frame(&mut buf, 1024),
            Err(FrameError::ZeroLength)
        ));
    }

    #[test]
    fn oversize_length_is_refused_before_buffering() {
        let mut buf = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decode_frame(&mut buf, 1024),
            Err(FrameError::TooLarge {
                len: 0xffff_ffff,
                max: 1024
            })
        ));
        assert!(
            buf.capacity() < 1024,
            "no reservation for an oversize frame"
        );
        let big = publish("g", &"x".repeat(2000));
        assert!(matches!(
            encode_frame(&big, 1024),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_body_is_an_error() {
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decode_frame(&mut buf, 1024),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn frame_without_body_is_an_error() {
        // Field 15 (unknown to us), varint 1: decodes to a Frame with no body.
        let mut buf = BytesMut::from(&[0u8, 0, 0, 2, 0x78, 0x01][..]);
        assert!(matches!(
            decode_frame(&mut buf, 1024),
            Err(FrameError::EmptyBody)
        ));
    }

    #[test]
    fn payload_is_sliced_not_copied() {
        let frame = publish("g", &"p".repeat(100));
        let mut buf = BytesMut::new();
        encode_frame_into(&frame, &mut buf, 1024).unwrap();
        let start = buf.as_ptr() as usize;
        let end = start + buf.len();
        let Some(Frame {
            body: Some(Body::Publish(p)),
        }) = decode_frame(&mut buf, 1024).unwrap()
        else {
            panic!("not a publish");
        };
        let ptr = p.payload.as_ptr() as usize;
        assert!(
            ptr >= start && ptr < end,
            "payload points into the read buffer"
        );
    }

    #[test]
    fn hand_encoders_match_prost() {
        use crate::link::Message;
        for (channel, payload) in [("g", "hello"), ("123", ""), ("x", &*"y".repeat(300))] {
            for no_echo in [false, true] {
                let by_prost = encode_frame(
                    &Frame::new(Body::Publish(Publish {
                        channel: Bytes::copy_from_slice(channel.as_bytes()),
                        payload: Bytes::copy_from_slice(payload.as_bytes()),
                        no_echo,
                        history: None,
                        id: 0,
                        origin: 0,
                    })),
                    1024,
                )
                .unwrap();
                let by_hand =
                    encode_publish(channel.as_bytes(), payload.as_bytes(), no_echo, 1024).unwrap();
                assert_eq!(by_hand, by_prost);
            }
            let by_prost = encode_frame(
                &Frame::new(Body::Message(Message {
                    channel: Bytes::copy_from_slice(channel.as_bytes()),
                    payload: Bytes::copy_from_slice(payload.as_bytes()),
                })),
                1024,
            )
            .unwrap();
            assert_eq!(
                encode_message(channel.as_bytes(), payload.as_bytes(), 1024).unwrap(),
                by_prost
            );
        }
        assert!(matches!(
            encode_message(b"g", &[b'x'; 2000], 1024),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn subscriptions_split_within_limit() {
        let channels: Vec<Bytes> = (0..1000)
            .map(|i| Bytes::from(format!("channel-{i:05}")))
            .collect();
        let max = 200;
        let frames = subscribe_frames(channels.clone(), max).unwrap();
        assert!(frames.len() > 1);
        let mut seen = Vec::new();
        for f in &frames {
            let encoded = encode_frame(f, max).unwrap();
            assert!(encoded.len() - 4 <= max);
            match &f.body {
                Some(Body::Subscribe(s)) => seen.extend(s.channels.iter().cloned()),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, channels);
        assert!(subscribe_frames(vec![Bytes::from(vec![b'x'; 300])], max).is_err());
        assert!(subscribe_frames(Vec::new(), max).unwrap().is_empty());
    }

    #[test]
    fn refusals_split_within_limit_and_each_says_why() {
        let channels: Vec<Bytes> = (0..500)
            .map(|i| Bytes::from(format!("channel-{i:05}")))
            .collect();
        let max = 200;
        let reason = "a link may subscribe to at most 3 channels";
        let frames =
            subscribe_refused_frames(channels.clone(), LinkFault::TooManyChannels, reason, max)
                .unwrap();
        assert!(frames.len() > 1);
        let mut seen = Vec::new();
        for f in &frames {
            let encoded = encode_frame(f, max).unwrap();
            assert!(encoded.len() - 4 <= max);
            match &f.body {
                Some(Body::SubscribeRefused(r)) => {
                    assert_eq!(
                        (r.code.as_str(), r.reason.as_str()),
                        ("too_many_channels", reason)
                    );
                    seen.extend(r.channels.iter().cloned());
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, channels);
        // A channel that fits in a Subscribe frame but not with the code and reason beside it.
        let long = Bytes::from(vec![b'x'; 180]);
        assert!(subscribe_frames(vec![long.clone()], max).is_ok());
        assert!(
            subscribe_refused_frames(vec![long], LinkFault::TooManyChannels, reason, max).is_err()
        );
    }
}
