//! Messages of the broker link (gateway <-> broker), as prost types.
//!
//! The schema is written with prost's derive macros rather than generated from a `.proto` file, so
//! building needs no `protoc`; `docs/protocol.md` gives the equivalent `.proto` text. Field tags
//! are the wire contract: never reuse or renumber one.
//!
//! Channel names and payloads are `bytes` on the wire so that decoding a frame from a
//! [`bytes::Bytes`] buffer slices it instead of copying; receivers validate UTF-8 at the edge.

use bytes::Bytes;

use crate::link_fault::LinkFault;

/// Version spoken by this build. A peer announcing another version is refused.
pub const PROTOCOL_VERSION: u32 = 1;

/// One frame on the link. Exactly one body must be set.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    #[prost(oneof = "Body", tags = "1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13")]
    pub body: Option<Body>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Body {
    /// First frame each side sends.
    #[prost(message, tag = "1")]
    Hello(Hello),
    #[prost(message, tag = "2")]
    Subscribe(Subscribe),
    #[prost(message, tag = "3")]
    Unsubscribe(Unsubscribe),
    /// Gateway -> broker: fan this payload out to the channel's subscribers.
    #[prost(message, tag = "4")]
    Publish(Publish),
    /// Broker -> gateway: a payload published on a channel this link subscribed to.
    #[prost(message, tag = "5")]
    Message(Message),
    #[prost(message, tag = "6")]
    Ping(Ping),
    #[prost(message, tag = "7")]
    Pong(Pong),
    /// Sent just before a peer closes the link because of the other side's fault.
    #[prost(message, tag = "8")]
    Error(LinkError),
    /// Gateway -> broker, right after its hello when the broker's hello carried a challenge:
    /// proves that the gateway knows the link secret ([`crate::link_auth`]).
    #[prost(message, tag = "9")]
    Auth(Auth),
    /// Broker -> gateway: channels of a `Subscribe` that the broker did not take; it took the
    /// others, and the link stays up.
    #[prost(message, tag = "10")]
    SubscribeRefused(SubscribeRefused),
    /// Gateway -> broker: read (or remove) a channel's history; answered by a `HistoryReply`
    /// with the same id.
    #[prost(message, tag = "11")]
    HistoryRequest(HistoryRequest),
    /// Broker -> gateway: the answer to a `HistoryRequest`.
    #[prost(message, tag = "12")]
    HistoryReply(HistoryReply),
    /// Broker -> gateway: the history publish with this id is stored (or was already).
    #[prost(message, tag = "13")]
    Stored(Stored),
}

/// The acknowledgement of a history publish (`Publish.id`): until it comes, the gateway keeps
/// the publish and sends it again on its next link; the broker stores a publish it already
/// stored (same `origin` and `id`) only once.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct Stored {
    #[prost(uint64, tag = "1")]
    pub id: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    #[prost(uint32, tag = "1")]
    pub version: u32,
    /// Free-form name of the sending node, for logs.
    #[prost(string, tag = "2")]
    pub node: String,
    /// Broker -> gateway only: random bytes the gateway must answer with an [`Auth`] frame.
    /// Empty (absent on the wire) when the broker does not require authentication.
    #[prost(bytes = "bytes", tag = "3")]
    pub challenge: Bytes,
}

/// The answer to a hello's challenge: `HMAC-SHA256(secret, challenge || node)`, where `node`
/// is the gateway's own hello's node name (see [`crate::link_auth`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Auth {
    #[prost(bytes = "bytes", tag = "1")]
    pub mac: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Subscribe {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub channels: Vec<Bytes>,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Unsubscribe {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub channels: Vec<Bytes>,
}

/// The channels of one `Subscribe` frame that the broker refused, each named once. A refusal too
/// large for one frame is split across several ([`crate::codec::subscribe_refused_frames`]).
#[derive(Clone, PartialEq, prost::Message)]
pub struct SubscribeRefused {
    #[prost(bytes = "bytes", repeated, tag = "1")]
    pub channels: Vec<Bytes>,
    /// Why, as a [`LinkFault`] code: `too_many_channels`.
    #[prost(string, tag = "2")]
    pub code: String,
    #[prost(string, tag = "3")]
    pub reason: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Publish {
    #[prost(bytes = "bytes", tag = "1")]
    pub channel: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub payload: Bytes,
    /// When set, the broker does not send the message back to the publishing link even if it is
    /// subscribed: the gateway has already delivered it to its own members.
    #[prost(bool, tag = "3")]
    pub no_echo: bool,
    /// When set, the channel keeps a history: the broker gives the message the channel's next
    /// offset, stores it, and sends every subscriber (the publishing link too, whatever
    /// `no_echo` says) a `Message` whose payload is the positioned frame
    /// ([`crate::history::Positioned`]).
    #[prost(message, optional, tag = "4")]
    pub history: Option<HistoryOptions>,
    /// A history publish's number at its gateway, consecutive from 1 (0: not acknowledged). The
    /// broker answers it with `Stored`.
    #[prost(uint64, tag = "5")]
    pub id: u64,
    /// The publishing gateway process (random per start), with `id` the publish's identity.
    #[prost(uint64, tag = "6")]
    pub origin: u64,
}

/// How much history a channel keeps: its last `size` messages, each for at most `ttl_ms`.
#[derive(Clone, Copy, PartialEq, prost::Message)]
pub struct HistoryOptions {
    #[prost(uint32, tag = "1")]
    pub size: u32,
    #[prost(uint64, tag = "2")]
    pub ttl_ms: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HistoryRequest {
    /// Chosen by the gateway, echoed in the reply.
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(bytes = "bytes", tag = "2")]
    pub channel: Bytes,
    /// The channel's history settings, for a channel that has none yet: reading it starts its
    /// epoch, so that a positioned join and the publishes after it agree.
    #[prost(message, optional, tag = "3")]
    pub options: Option<HistoryOptions>,
    /// Only messages after this offset (absent: from the oldest kept, or the newest with
    /// `reverse`).
    #[prost(uint64, optional, tag = "4")]
    pub since: Option<u64>,
    /// At most this many messages (0: none, only the epoch and the last offset).
    #[prost(uint32, tag = "5")]
    pub limit: u32,
    /// Newest first.
    #[prost(bool, tag = "6")]
    pub reverse: bool,
    /// Remove the channel's history instead (its next message starts a new epoch).
    #[prost(bool, tag = "7")]
    pub remove: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct HistoryReply {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(string, tag = "2")]
    pub epoch: String,
    /// The channel's last offset (0: none yet).
    #[prost(uint64, tag = "3")]
    pub top: u64,
    /// The messages' offsets, in the order asked, each with the payload at the same index.
    #[prost(uint64, repeated, tag = "4")]
    pub offsets: Vec<u64>,
    #[prost(bytes = "bytes", repeated, tag = "5")]
    pub payloads: Vec<Bytes>,
    /// Set when the request could not be served; the other fields are then empty.
    #[prost(string, tag = "6")]
    pub error: String,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    #[prost(bytes = "bytes", tag = "1")]
    pub channel: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub payload: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Ping {
    #[prost(uint64, tag = "1")]
    pub nonce: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Pong {
    #[prost(uint64, tag = "1")]
    pub nonce: u64,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct LinkError {
    /// Stable machine-readable code, e.g. `incompatible_version`: a [`LinkFault`] as a string.
    #[prost(string, tag = "1")]
    pub code: String,
    #[prost(string, tag = "2")]
    pub reason: String,
}

impl Frame {
    pub fn new(body: Body) -> Self {
        Frame { body: Some(body) }
    }

    pub fn hello(node: impl Into<String>) -> Self {
        Frame::hello_with_challenge(node, Bytes::new())
    }

    /// A broker's hello that asks the gateway to authenticate (see [`crate::link_auth`]).
    pub fn hello_with_challenge(node: impl Into<String>, challenge: Bytes) -> Self {
        Frame::new(Body::Hello(Hello {
            version: PROTOCOL_VERSION,
            node: node.into(),
            challenge,
        }))
    }

    pub fn error(code: impl Into<String>, reason: impl Into<String>) -> Self {
        Frame::new(Body::Error(LinkError {
            code: code.into(),
            reason: reason.into(),
        }))
    }

    /// The `Error` frame a peer sends before it closes the link because of `fault`.
    pub fn fault(fault: LinkFault, reason: impl Into<String>) -> Self {
        Frame::error(fault.as_str(), reason)
    }

    /// Short name of the body, for logs and errors.
    pub fn kind(&self) -> &'static str {
        match &self.body {
            None => "empty",
            Some(Body::Hello(_)) => "hello",
            Some(Body::Subscribe(_)) => "subscribe",
            Some(Body::Unsubscribe(_)) => "unsubscribe",
            Some(Body::Publish(_)) => "publish",
            Some(Body::Message(_)) => "message",
            Some(Body::Ping(_)) => "ping",
            Some(Body::Pong(_)) => "pong",
            Some(Body::Error(_)) => "error",
            Some(Body::Auth(_)) => "auth",
            Some(Body::SubscribeRefused(_)) => "subscribe_refused",
            Some(Body::HistoryRequest(_)) => "history_request",
            Some(Body::HistoryReply(_)) => "history_reply",
            Some(Body::Stored(_)) => "stored",
        }
    }
}
