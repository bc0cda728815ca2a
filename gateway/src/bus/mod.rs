//! The seam between a gateway and whatever carries group messages between gateways.
//!
//! A carrier ([`Carrier`]) is started with the gateway's [`Node`]: where messages from other
//! gateways go, and which groups this gateway wants (the [`interest`] bookkeeping, kept once
//! here for every carrier: first local member subscribes, last one leaving unsubscribes, and
//! after a reconnect everything wanted is subscribed again). Started, it is a [`Bus`]: publish
//! and report. [`broker_link`] is the carrier over TCP to the built-in broker, [`redis`] the one
//! over Redis pub/sub (shards or a cluster), [`nats`] the one over NATS core pub/sub.
//!
//! Nothing here knows the WebSocket library or the gateway's routing types: messages are
//! [`Text`], groups [`GroupName`]s, and what arrives is held to the gateway's own limits
//! ([`inbound`]).

pub mod address;
pub mod broker_link;
pub mod embedded;
pub mod history;
pub mod inbound;
pub mod interest;
pub mod nats;
pub mod origin;
pub mod publish_queue;
pub mod redis;
pub mod warnings;

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use protocol::cluster::ControlFrame;
use protocol::{GroupName, Text};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use address::BusAddress;
pub use history::{HistoryError, HistoryFuture, HistoryPage, HistoryPolicy, HistoryQuery};
pub use interest::SubscriptionChanges;
use protocol::history::Position;

/// What a bus reports about itself, for `/readyz` and `/api/stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct BusStatus {
    /// Which carrier: `embedded`, `broker`, `redis`, `redis-cluster` or `nats`.
    pub carrier: &'static str,
    /// Connected and subscribed: messages flow between gateways (with shards: on every one).
    pub up: bool,
    /// Each connection of the carrier (a Redis shard or cluster master, the NATS server in use,
    /// the broker), whether it is up, and why it last failed. Empty for the embedded broker.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub shards: Vec<ShardStatus>,
    /// Groups this gateway is subscribed to (has local members of).
    pub subscriptions: u64,
    /// Times the connection was re-established after a loss.
    pub reconnects: u64,
    /// Subscriptions the engine refused (over its limit): members of those groups here miss
    /// what other gateways send them until the next full resubscription.
    pub subscriptions_refused: u64,
    /// Group messages published (cluster control frames are `control_publishes`).
    pub publishes: u64,
    /// Publishes not sent to other gateways (link down or its queue full). Local members still
    /// received them.
    pub publishes_dropped: u64,
    /// Group messages received (cluster control frames are `control_in`).
    pub messages_in: u64,
    /// Incoming messages discarded as invalid (not UTF-8, or a group id this gateway refuses).
    pub messages_invalid: u64,
    /// Incoming messages discarded as larger than this gateway's `--max-message-size`.
    pub messages_too_large: u64,
    /// This gateway's own publishes that the engine echoed back, dropped by origin (Redis).
    pub echoes_dropped: u64,
    /// Messages the engine dropped because this gateway did not read them fast enough: NATS
    /// slow-consumer events, Redis subscriber connections closed for their output buffer.
    pub slow_consumer: u64,
    /// Cluster control frames published: heartbeats, queries and answers, sends to a client or
    /// to everyone, presence events.
    pub control_publishes: u64,
    /// Cluster control frames received (on Redis, this gateway's own echoed back included).
    pub control_in: u64,
    /// Messages of groups with history sent to the store.
    pub history_publishes: u64,
    /// Messages of groups with history not stored (the store could not be reached, or refused
    /// them): no gateway delivered them.
    pub history_publishes_dropped: u64,
    /// Positioned messages received (this gateway's own included).
    pub positioned_in: u64,
    /// Why the connection was last lost or refused; `None` while it has never failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The counters every carrier keeps, each the [`BusStatus`] field of the same name (a carrier
/// leaves at 0 what cannot happen to it).
#[derive(Debug, Default)]
pub struct BusCounters {
    pub reconnects: AtomicU64,
    pub subscriptions_refused: AtomicU64,
    pub publishes: AtomicU64,
    pub publishes_dropped: AtomicU64,
    pub messages_in: AtomicU64,
    pub messages_invalid: AtomicU64,
    pub messages_too_large: AtomicU64,
    pub echoes_dropped: AtomicU64,
    pub slow_consumer: AtomicU64,
    pub control_publishes: AtomicU64,
    pub control_in: AtomicU64,
    pub history_publishes: AtomicU64,
    pub history_publishes_dropped: AtomicU64,
    pub positioned_in: AtomicU64,
}

impl BusCounters {
    /// Counts a publish: a group message's, or a control frame's.
    pub fn count_publish(&self, payload: &[u8]) {
        let counter = if ControlFrame::is_control(payload) {
            &self.control_publishes
        } else {
            &self.publishes
        };
        counter.fetch_add(1, Relaxed);
    }

    /// Counts a message received from the bus (opened, where the carrier has an envelope).
    pub fn count_received(&self, payload: &[u8]) {
        let counter = if ControlFrame::is_control(payload) {
            &self.control_in
        } else if protocol::history::Positioned::is_positioned(payload) {
            &self.positioned_in
        } else {
            &self.messages_in
        };
        counter.fetch_add(1, Relaxed);
    }
}

impl BusStatus {
    /// This status with the counters read from `counters`.
    pub fn with_counters(self, counters: &BusCounters) -> BusStatus {
        let c = counters;
        BusStatus {
            reconnects: c.reconnects.load(Relaxed),
            subscriptions_refused: c.subscriptions_refused.load(Relaxed),
            publishes: c.publishes.load(Relaxed),
            publishes_dropped: c.publishes_dropped.load(Relaxed),
            messages_in: c.messages_in.load(Relaxed),
            messages_invalid: c.messages_invalid.load(Relaxed),
            messages_too_large: c.messages_too_large.load(Relaxed),
            echoes_dropped: c.echoes_dropped.load(Relaxed),
            slow_consumer: c.slow_consumer.load(Relaxed),
            control_publishes: c.control_publishes.load(Relaxed),
            control_in: c.control_in.load(Relaxed),
            history_publishes: c.history_publishes.load(Relaxed),
            history_publishes_dropped: c.history_publishes_dropped.load(Relaxed),
            positioned_in: c.positioned_in.load(Relaxed),
            ..self
        }
    }
}

/// One connection of a carrier, as [`BusStatus::shards`] reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ShardStatus {
    /// Where it connects, without credentials.
    pub address: String,
    pub up: bool,
    /// Groups subscribed on it (with shards: the groups that hash to it).
    pub subscriptions: u64,
    /// Bytes the engine holds for this gateway's subscriber connection, not yet read (Redis
    /// `CLIENT LIST` `omem`, sampled at each heartbeat); `None` where the carrier cannot tell.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backlog_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// How long a carrier waits before reconnecting after `backoff`: half of it, plus a random part
/// of the other half ("equal jitter"), so that gateways that lost the same engine do not all
/// come back in step.
pub fn jittered(backoff: Duration) -> Duration {
    equal_jitter(backoff, fastrand::f64())
}

/// [`jittered`] with the random part given (`random` in `[0, 1)`).
pub fn equal_jitter(backoff: Duration, random: f64) -> Duration {
    backoff / 2 + backoff.mul_f64(random.clamp(0.0, 1.0) / 2.0)
}

/// What travels on a group's (or a cluster topic's) channel: a message's text for the members,
/// or a cluster control frame (`protocol::cluster::ControlFrame`, whose first byte no UTF-8 text
/// starts with).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    Text(Text),
    Control(Bytes),
    /// A message of a group with history, with the position its store gave it.
    Positioned(Position, Text),
}

impl Payload {
    pub fn as_bytes(&self) -> &Bytes {
        match self {
            Payload::Text(text) | Payload::Positioned(_, text) => text.as_bytes(),
            Payload::Control(bytes) => bytes,
        }
    }

    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    pub fn is_empty(&self) -> bool {
        self.as_bytes().is_empty()
    }
}

/// A started carrier: sends this gateway's publishes to the others. Every method returns at
/// once: the bus queues and counts; it never blocks a worker.
pub trait Bus: Send + Sync + 'static {
    /// Sends `payload` (a message's text or a control frame: the carrier does not look) to the
    /// other gateways subscribed to `group`.
    fn publish(&self, group: &GroupName<'_>, payload: &Bytes);
    /// Stores `payload` in `group`'s history (keeping what `policy` says) and brings it, with
    /// its position, to every gateway subscribed to `group`, this one included
    /// ([`Payload::Positioned`]). While the store cannot be reached the message is dropped and
    /// counted in `history_publishes_dropped`.
    ///
    /// The store delivers the message to the gateways subscribed when it stores it, and this
    /// gateway's members get it only that way: the subscriptions the [`Node`] recorded before
    /// this call must take effect at the store before the message does (a client that joins
    /// and sends at once gets its message). Each carrier keeps that order its own way.
    fn publish_history(&self, group: &GroupName<'_>, payload: &Bytes, policy: HistoryPolicy);
    /// Reads `group`'s history; a group that has none yet gets its epoch (kept per `policy`).
    fn history(
        &self,
        group: &GroupName<'_>,
        policy: HistoryPolicy,
        query: HistoryQuery,
    ) -> HistoryFuture<HistoryPage>;
    /// Removes `group`'s history: its next message starts a new epoch.
    fn remove_history(&self, group: &GroupName<'_>) -> HistoryFuture<()>;
    fn status(&self) -> BusStatus;
}

/// What a carrier needs from the gateway it serves.
pub trait Node: Send + Sync + 'static {
    /// Hands a message from another gateway to this gateway's members of `group` (or a control
    /// frame to the gateway); waits while they cannot take more (backpressure on the carrier's
    /// connection).
    fn deliver(&self, group: GroupName<'_>, payload: Payload) -> impl Future<Output = ()> + Send;
    /// The subscription changes to make: after `full`, every wanted group (a fresh connection);
    /// otherwise what changed since the last call.
    fn subscriptions(&self, full: bool) -> SubscriptionChanges;
    /// The connection was lost: changes need not be kept until the next full sync.
    fn subscriptions_lost(&self);
    /// How many groups this gateway wants (has local members of).
    fn wanted(&self) -> usize;
    /// Resolves when subscriptions changed since the last [`Node::subscriptions`].
    fn subscriptions_changed(&self) -> impl Future<Output = ()> + Send;
    /// The carrier is up again after a loss (not called for its first connection): what was
    /// published meanwhile to groups with history can be asked of the store.
    fn reconnected(&self) {}
}

/// A carrier not started yet: its address and settings.
pub trait Carrier: Send + 'static {
    /// Starts the carrier's task on the current runtime; it runs until `shutdown`.
    fn start<N: Node>(self, node: Arc<N>, shutdown: CancellationToken) -> RunningBus;
}

/// A started carrier and the task that runs it.
#[derive(Debug)]
pub struct RunningBus {
    pub bus: Arc<dyn Bus>,
    pub task: JoinHandle<()>,
}

/// Why a carrier cannot start. Once started, a carrier's connection errors are its own
/// ([`broker_link::LinkError`]): logged, retried, and kept as [`BusStatus::last_error`].
#[derive(Debug, thiserror::Error)]
pub enum BusError {
    /// The carrier's address cannot be used (no port, say): caught at start, not retried.
    #[error("bus address {address:?}: {reason}")]
    InvalidAddress { address: String, reason: String },
}

impl std::fmt::Debug for dyn Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bus")
            .field("status", &self.status())
            .finish()
    }
}
