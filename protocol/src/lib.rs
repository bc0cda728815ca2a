//! Wire formats of the group push system. Pure data and codecs: no sockets, no tasks.
//!
//! - [`link`]: the messages gateways and the broker exchange (prost), and [`codec`]: how they are
//!   framed on the TCP link (4-byte big-endian length + protobuf body), with a hard frame limit.
//! - [`link_fault`]: [`LinkFault`], the typed codes of the link's `Error` frames, with the exact
//!   strings on the wire.
//! - [`link_auth`]: the broker link's challenge-response authentication (HMAC-SHA256 over a
//!   shared secret).
//! - [`client`]: the JSON commands WebSocket clients send (groups, sends to a group, to all, to
//!   uids or to one client, uid binding, `whoami`, `count`, `members`, `auth`), the validated
//!   [`GroupId`], and the JSON replies and events (`ack`, `error`, `whoami`, `join`/`leave`).
//! - [`cluster`]: what gateways tell each other about the cluster: node and client ids, uids,
//!   heartbeats, the cluster API's questions and answers ([`cluster::ControlFrame`]), and the
//!   reserved topics they travel on.
//! - [`php`]: the PHP Channel protocol (Workerman's `Channel\Server`): its frames, PHP
//!   `serialize()` values within limits, its commands, and their JSON form for the bridge.
//! - [`text`]: [`Text`], a message's text as shared bytes, checked to be UTF-8 once.
//! - [`envelope`]: [`Envelope`], what a message carries on an external bus (Redis, NATS): its
//!   origin node and sequence number, then the payload.
//!
//! Data flow: a client's text frame is parsed by [`client::parse_command`] in the gateway; a send
//! becomes a [`link::Publish`] encoded by [`codec`]; the broker answers subscribers with
//! [`link::Message`] frames encoded once and shared by every subscriber.

pub mod client;
pub mod cluster;
pub mod codec;
pub mod envelope;
pub mod history;
pub mod link;
pub mod link_auth;
pub mod link_fault;
pub mod php;
pub mod text;

pub use client::{
    parse_command, parse_publish, ClientCommand, CommandError, ErrorCode, GroupId, GroupIdError,
    GroupName, ParseLimits, PresenceKind, Publish, ReqId, Request,
};
pub use codec::{FrameError, LinkCodec, DEFAULT_MAX_FRAME_SIZE};
pub use envelope::{Envelope, EnvelopeError};
pub use link::{Frame, PROTOCOL_VERSION};
pub use link_fault::{LinkFault, UnknownLinkFault};
pub use text::{NotUtf8, Text};
