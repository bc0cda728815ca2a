//! What gateways say to each other about the cluster, besides group messages: who they are
//! (node ids, heartbeats), who their clients are ([`ClientId`], [`Uid`]), and the questions and
//! orders of the cluster-wide API, with their answers.
//!
//! **Topics.** These travel on the same carriers as groups, on topics whose names start with
//! [`RESERVED_PREFIX`], a character client group ids may not start with:
//! - [`topic::CONTROL`]: every gateway subscribes; heartbeats, `send_to_all`, cluster queries;
//! - [`topic::node`]: one gateway's own topic: answers to its queries, `send_to_client`, orders
//!   for one of its clients;
//! - [`topic::uid`]: subscribed by the gateways holding a connection of that uid:
//!   `send_to_uid` (raw text, like a group);
//! - [`topic::presence`]: subscribed by the gateways holding a member of the group that asked
//!   for presence: join and leave events.
//!
//! **Control frames.** A payload whose first byte is [`CONTROL_MARK`] (never the first byte of
//! UTF-8 text, so never a group message) is a [`ControlFrame`]: a JSON [`Control`] header and
//! a body, the message text when there is one, untouched:
//!
//! ```text
//! byte 0      0xFF
//! bytes 1..5  header length, u32 big-endian
//! header      JSON: a `Control`
//! body        the rest: a message's text, or nothing
//! ```

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

/// Group ids starting with this character (U+001F, "unit separator") are the gateways' own
/// topics; a client's group id may not start with it.
pub const RESERVED_PREFIX: char = '\u{1f}';
/// First byte of a [`ControlFrame`].
pub const CONTROL_MARK: u8 = 0xFF;
/// Longest uid a gateway accepts by default (`--max-uid-len`), in bytes.
pub const DEFAULT_MAX_UID_LEN: usize = 128;

/// The cluster's own topics. See the module documentation.
pub mod topic {
    use super::{NodeId, RESERVED_PREFIX};

    /// Every gateway's topic.
    pub const CONTROL: &str = "\u{1f}ctl";
    /// Longest prefix a topic adds to the group id or uid it is made from.
    pub const MAX_PREFIX_LEN: usize = 3;
    /// Longest topic name that is not made from a group id or a uid (a node's).
    pub const MAX_FIXED_LEN: usize = 3 + 16;

    const NODE: &str = "\u{1f}n:";
    const UID: &str = "\u{1f}u:";
    const PRESENCE: &str = "\u{1f}p:";

    /// The topic of one gateway.
    pub fn node(node: NodeId) -> String {
        format!("{NODE}{node}")
    }

    /// The topic of a uid's connections.
    pub fn uid(uid: &str) -> String {
        let mut topic = String::with_capacity(UID.len() + uid.len());
        topic.push_str(UID);
        topic.push_str(uid);
        topic
    }

    /// The topic of a group's presence events.
    pub fn presence(group: &str) -> String {
        let mut topic = String::with_capacity(PRESENCE.len() + group.len());
        topic.push_str(PRESENCE);
        topic.push_str(group);
        topic
    }

    /// Whether a channel (or topic) name is one of the gateways' own rather than a client
    /// group's: it starts with [`RESERVED_PREFIX`].
    pub fn is_cluster_topic(name: &[u8]) -> bool {
        name.first() == Some(&(RESERVED_PREFIX as u8))
    }

    /// What kind of topic `name` is.
    pub fn kind(name: &str) -> Kind<'_> {
        if !name.starts_with(RESERVED_PREFIX) {
            return Kind::Group(name);
        }
        if name == CONTROL {
            return Kind::Control;
        }
        if let Some(node) = name.strip_prefix(NODE) {
            return match node.parse() {
                Ok(node) => Kind::Node(node),
                Err(_) => Kind::Unknown,
            };
        }
        if let Some(uid) = name.strip_prefix(UID) {
            return Kind::Uid(uid);
        }
        if let Some(group) = name.strip_prefix(PRESENCE) {
            return Kind::Presence(group);
        }
        Kind::Unknown
    }

    /// What a topic is for.
    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    pub enum Kind<'a> {
        /// A client group.
        Group(&'a str),
        Control,
        Node(NodeId),
        Uid(&'a str),
        Presence(&'a str),
        /// Reserved, but no topic this build knows.
        Unknown,
    }
}

/// A gateway process's id: random at each start. Written as 16 lower-case hex digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Why a text is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadId(&'static str);

impl FromStr for NodeId {
    type Err = BadId;

    fn from_str(text: &str) -> Result<NodeId, BadId> {
        if text.len() != 16 || !text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(BadId("a node id is 16 lower-case hex digits"));
        }
        u64::from_str_radix(text, 16)
            .map(NodeId)
            .map_err(|_| BadId("a node id is 16 lower-case hex digits"))
    }
}

impl Serialize for NodeId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<NodeId, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A connection's cluster-wide id: the gateway that holds it, the worker, and the connection's
/// number there. Written `NODE-WORKER-CONN` (hex node id, decimal numbers), e.g.
/// `5f0c1d2e3a4b6c7d-1-42`: whoever has it can tell which gateway to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClientId {
    pub node: NodeId,
    pub worker: u16,
    pub conn: u64,
}

/// Longest text of a [`ClientId`].
pub const MAX_CLIENT_ID_LEN: usize = 16 + 1 + 5 + 1 + 20;

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}-{}", self.node, self.worker, self.conn)
    }
}

impl FromStr for ClientId {
    type Err = BadId;

    fn from_str(text: &str) -> Result<ClientId, BadId> {
        const WHAT: &str = "a client id is NODE-WORKER-CONN, as whoami or presence gave it";
        let mut parts = text.splitn(3, '-');
        let (Some(node), Some(worker), Some(conn)) = (parts.next(), parts.next(), parts.next())
        else {
            return Err(BadId(WHAT));
        };
        let decimal = |s: &str| {
            !s.is_empty()
                && s.bytes().all(|b| b.is_ascii_digit())
                && (s == "0" || !s.starts_with('0'))
        };
        if !decimal(worker) || !decimal(conn) {
            return Err(BadId(WHAT));
        }
        Ok(ClientId {
            node: node.parse().map_err(|_| BadId(WHAT))?,
            worker: worker.parse().map_err(|_| BadId(WHAT))?,
            conn: conn.parse().map_err(|_| BadId(WHAT))?,
        })
    }
}

impl Serialize for ClientId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ClientId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ClientId, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The application's user id of a connection: non-empty UTF-8 of at most the configured
/// length (`--max-uid-len`). Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Uid(Arc<str>);

/// Why a text is not a uid.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UidError {
    #[error("uid must not be empty")]
    Empty,
    #[error("uid is {len} bytes, longer than the limit of {max}")]
    TooLong { len: usize, max: usize },
}

impl Uid {
    pub fn new(text: &str, max_len: usize) -> Result<Uid, UidError> {
        if text.is_empty() {
            return Err(UidError::Empty);
        }
        if text.len() > max_len {
            return Err(UidError::TooLong {
                len: text.len(),
                max: max_len,
            });
        }
        Ok(Uid(Arc::from(text)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The 64-bit hash gateways exchange to count distinct uids without listing them
    /// (FNV-1a: the same on every gateway and every build).
    pub fn hash64(&self) -> u64 {
        fnv1a64(self.0.as_bytes())
    }
}

impl Serialize for Uid {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Uid {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Uid, D::Error> {
        let text = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Uid::new(&text, usize::MAX).map_err(serde::de::Error::custom)
    }
}

impl fmt::Display for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Uid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

/// FNV-1a, 64 bits.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &byte in bytes {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// A control frame's header: what it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Control {
    /// "I am alive" (on [`topic::CONTROL`], every `--node-heartbeat`). With `hello`, a node
    /// that just started or reconnected asks the others to announce themselves at once.
    Heartbeat {
        node: NodeId,
        info: NodeInfo,
        #[serde(default)]
        hello: bool,
    },
    /// A gateway is stopping: forget it now rather than after `--node-timeout`.
    Bye {
        node: NodeId,
    },
    /// The body is a message for the topic's connections (the members of a group or presence
    /// topic, a uid's connections; on [`topic::CONTROL`] every connection), except these.
    Deliver {
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        exclude: Vec<ClientId>,
    },
    /// The body is a message for one client, on its gateway's topic.
    ToClient {
        client: ClientId,
    },
    /// A question or an order, answered with [`Control::Answer`] on the asker's topic.
    Ask {
        id: u64,
        from: NodeId,
        request: Request,
    },
    Answer {
        id: u64,
        node: NodeId,
        reply: Reply,
    },
}

/// What a node announces about itself in its heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// Its `--node-name`.
    #[serde(default)]
    pub name: String,
    /// Where its clients connect, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws: Option<String>,
    /// Open client connections.
    pub connections: u64,
    /// Milliseconds since the Unix epoch at which it started.
    pub started_ms: u64,
    /// Its heartbeat interval, so that others can judge its silence.
    pub heartbeat_ms: u64,
}

/// Which connections an order is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Target {
    Client(ClientId),
    Uid(Uid),
}

/// What an order does to each of its target's connections.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    BindUid {
        uid: Uid,
    },
    UnbindUid,
    JoinGroup {
        group: String,
        #[serde(default)]
        presence: bool,
    },
    LeaveGroup {
        group: String,
    },
    Close {
        code: u16,
        reason: String,
    },
}

/// A question or an order for every gateway (or, for one client, its gateway).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "q", rename_all = "snake_case")]
pub enum Request {
    /// Connections in a group, and the hashes of its distinct uids (up to a bound).
    Count { group: String },
    /// The members of a group with a client id after `after`, in client id order, at most
    /// `limit`.
    Members {
        group: String,
        #[serde(default)]
        after: Option<ClientId>,
        limit: u32,
    },
    /// Groups with an id after `after`, in order, at most `limit`, with their connections.
    Groups {
        #[serde(default)]
        after: Option<String>,
        limit: u32,
    },
    /// One client's uid and groups.
    Client { client: ClientId },
    /// A uid's connections.
    Uid { uid: Uid },
    /// The node's totals.
    Stats,
    /// Apply `op` to `target`'s connections.
    Apply { target: Target, op: Op },
    /// Every member leaves the group.
    Ungroup { group: String },
}

/// A member of a group, as listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub client_id: ClientId,
    pub uid: Option<Uid>,
}

/// One client, as its gateway describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClientInfo {
    pub uid: Option<Uid>,
    pub groups: Vec<String>,
}

/// A node's answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "r", rename_all = "snake_case")]
pub enum Reply {
    Count {
        connections: u64,
        /// Distinct uids among them on this node.
        uids: u64,
        /// Their hashes ([`Uid::hash64`]), unless there were too many to send.
        #[serde(default)]
        uid_hashes: Option<Vec<u64>>,
    },
    Members {
        members: Vec<Member>,
    },
    Groups {
        groups: Vec<(String, u64)>,
    },
    Client {
        client: Option<ClientInfo>,
    },
    Uid {
        clients: Vec<ClientId>,
    },
    Stats {
        connections: u64,
        memberships: u64,
        groups: u64,
    },
    /// An order was applied to `affected` connections; `failed` refused it (with the first
    /// reason).
    Applied {
        affected: u64,
        failed: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    /// The node could not answer (too busy, or a request this build does not know).
    Refused {
        reason: String,
    },
}

/// A decoded control frame: its header and its body (a slice of the received bytes).
#[derive(Debug, Clone, PartialEq)]
pub struct ControlFrame {
    pub control: Control,
    pub body: Bytes,
}

/// Why a control frame cannot be read.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control frame of {0} bytes is too short")]
    Short(usize),
    #[error("not a control frame")]
    NotControl,
    #[error("control frame header length {0} exceeds the frame")]
    Length(usize),
    #[error("control frame header: {0}")]
    Header(#[from] serde_json::Error),
}

impl ControlFrame {
    /// Encodes `control` and `body` (the header's JSON cannot fail to serialize: plain data).
    pub fn encode(control: &Control, body: &[u8]) -> Bytes {
        let header = serde_json::to_vec(control).unwrap_or_default();
        let mut buf = BytesMut::with_capacity(5 + header.len() + body.len());
        buf.put_u8(CONTROL_MARK);
        buf.put_u32(header.len() as u32);
        buf.put_slice(&header);
        buf.put_slice(body);
        buf.freeze()
    }

    /// True when `payload` is a control frame rather than a message's text.
    pub fn is_control(payload: &[u8]) -> bool {
        payload.first() == Some(&CONTROL_MARK)
    }

    pub fn decode(bytes: Bytes) -> Result<ControlFrame, ControlError> {
        if bytes.len() < 5 {
            return Err(ControlError::Short(bytes.len()));
        }
        if bytes[0] != CONTROL_MARK {
            return Err(ControlError::NotControl);
        }
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        if len > bytes.len() - 5 {
            return Err(ControlError::Length(len));
        }
        let control = serde_json::from_slice(&bytes[5..5 + len])?;
        Ok(ControlFrame {
            control,
            body: bytes.slice(5 + len..),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_round_trip_and_refuse_variants() {
        let id = ClientId {
            node: NodeId(0x5f0c_1d2e_3a4b_6c7d),
            worker: 1,
            conn: 42,
        };
        assert_eq!(id.to_string(), "5f0c1d2e3a4b6c7d-1-42");
        assert_eq!("5f0c1d2e3a4b6c7d-1-42".parse::<ClientId>(), Ok(id));
        for bad in [
            "",
            "5f0c1d2e3a4b6c7d-1",
            "5f0c1d2e3a4b6c7d-01-42",
            "5f0c1d2e3a4b6c7d-1-+42",
            "5F0C1D2E3A4B6C7D-1-42",
            "5f0c1d2e3a4b6c7-1-42",
            "5f0c1d2e3a4b6c7d-1-42-3",
            "5f0c1d2e3a4b6c7d-70000-1",
        ] {
            assert!(bad.parse::<ClientId>().is_err(), "{bad:?}");
        }
        assert!(id.to_string().len() <= MAX_CLIENT_ID_LEN);
    }

    #[test]
    fn topics_are_told_apart() {
        use topic::Kind;
        assert_eq!(topic::kind("room"), Kind::Group("room"));
        assert_eq!(topic::kind(topic::CONTROL), Kind::Control);
        assert_eq!(topic::kind(&topic::node(NodeId(7))), Kind::Node(NodeId(7)));
        assert_eq!(topic::kind(&topic::uid("42")), Kind::Uid("42"));
        assert_eq!(
            topic::kind(&topic::presence("room")),
            Kind::Presence("room")
        );
        assert_eq!(topic::kind("\u{1f}zz"), Kind::Unknown);
        assert_eq!(topic::kind("\u{1f}n:nothex"), Kind::Unknown);
        assert!(topic::node(NodeId(u64::MAX)).len() <= topic::MAX_FIXED_LEN);
    }

    #[test]
    fn control_frames_round_trip() {
        let control = Control::Deliver {
            exclude: vec!["0000000000000001-0-5".parse().expect("id")],
        };
        let bytes = ControlFrame::encode(&control, "héllo".as_bytes());
        assert!(ControlFrame::is_control(&bytes));
        let frame = ControlFrame::decode(bytes).expect("decodes");
        assert_eq!(frame.control, control);
        assert_eq!(&frame.body[..], "héllo".as_bytes());
        assert!(!ControlFrame::is_control(b"plain text"));
        let ask = Control::Ask {
            id: 9,
            from: NodeId(1),
            request: Request::Apply {
                target: Target::Uid(Uid::new("u", 8).expect("uid")),
                op: Op::Close {
                    code: 4000,
                    reason: "bye".into(),
                },
            },
        };
        let frame = ControlFrame::decode(ControlFrame::encode(&ask, b"")).expect("decodes");
        assert_eq!(frame.control, ask);
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut bytes = bytes;
            if let Some(first) = bytes.first_mut() {
                *first = CONTROL_MARK;
            }
            let _ = ControlFrame::decode(Bytes::from(bytes));
        }
    }
}
