//! [`RedisCarrier`]: the bus over Redis pub/sub, on independent shards (`redis://a,redis://b`)
//! or on a Redis Cluster with sharded pub/sub (`redis+cluster://seed,...`, Redis 7).
//!
//! **Channels.** A group is the channel `{prefix}:{group}` ([`routing::channel`]), subscribed
//! with `SUBSCRIBE`/`SSUBSCRIBE` (never a pattern), only while this gateway has members of it.
//! Every publish is an [`Envelope`](protocol::envelope::Envelope) stamped by [`Origin`]; Redis
//! sends a publish back to the publisher's own subscriber connection, and those echoes are
//! dropped here and counted (`echoes_dropped`).
//!
//! **Shards and masters.** Each group lives on one connection target: with shards, the jump
//! consistent hash of the FNV-1a hash of its id ([`routing::shard_of`]: adding a shard moves a
//! 1/n share of the groups); on a cluster, the master serving the channel's hash slot, learned
//! with `CLUSTER SLOTS`. Each target ([`Shard`]) has its own task with a subscriber connection
//! and a publisher connection, reconnects on its own with backoff and jitter, and resubscribes
//! all of its groups after every connect: while one is down only its groups miss messages
//! from other gateways, and its publishes are dropped and counted.
//!
//! **Interest.** One task, the dispatcher ([`supervise`]), is the only reader of the
//! [`Node`]'s changes: it takes the full set once and every change after, and records each in
//! the [`ShardInterest`] of the group's target. Each target's task resynchronizes from its own
//! interest after a reconnect, so several connections coming and going need nothing more of
//! the Node than the broker link does. On a cluster the dispatcher also refreshes the
//! topology (on `MOVED`, on a `sunsubscribe` the server sends when a slot leaves a node, when a
//! master cannot be reached) and moves groups whose slot changed owner.
//!
//! **Liveness.** Every `--link-ping-interval`, `PING` on the subscriber connection and
//! `CLIENT LIST ID` (the subscriber's) on the publisher connection; a connection with no reply
//! for `--link-idle-timeout` is dead and replaced (a SIGSTOPped server, a half-open TCP
//! connection). `CLIENT LIST` also gives the subscriber's output buffer on the server (`omem`),
//! reported as [`ShardStatus::backlog_bytes`].
//!
//! **Why the `redis` crate only encodes commands.** Its pub/sub connections (`aio::PubSub`)
//! hand messages over an unbounded channel (a slow gateway would grow without bound instead of
//! pushing back on Redis); its multiplexed connection takes a server-initiated `sunsubscribe`
//! push (a slot that moved) for the reply to the next request in flight; its cluster client
//! resubscribes through its own routing, with no bound or report we could use; and it computes
//! a key's slot without exposing the number. What is written here instead is small: a RESP2
//! reply decoder with limits ([`resp`]), a connection with TLS and `AUTH` ([`conn`]), the
//! slot hash over the `crc16` crate ([`routing::slot_of`]), and the loops below. The crate
//! encodes the commands ([`resp::encode`]).
//!
//! **Delivery.** Each target's messages, once checked, wait in a bounded inbox
//! ([`INBOX_MESSAGES`], [`INBOX_BYTES`]) for a task of their own that hands them to the
//! [`Node`] and waits while its workers are full; the target's connection task never waits
//! on them, so its publishes, subscription changes and heartbeats go on. While the inbox is
//! full the subscriber connection is not read: nothing is dropped here, the backlog waits in
//! Redis's output buffer (bounded by its `client-output-buffer-limit pubsub`) and shows in
//! `backlog_bytes`.
//!
//! **Slow consumers.** When Redis closes a subscriber connection for its output buffer, the
//! gateway only sees the connection close, as for any other reason. It is counted in
//! `slow_consumer` when the last `omem` sampled before the close was at least
//! [`SLOW_CONSUMER_BACKLOG`]: a sign, not a proof, since the sample is up to a ping interval
//! old.
//!
//! **History.** A group with history (`--history`) keeps it in two keys of the shard (or the
//! master) of its channel, in the channel's hash slot ([`history`]). Its messages are not
//! `PUBLISH`ed: an `EVALSHA` of [`history::PUBLISH_SCRIPT`] takes the group's next offset,
//! stores the message and publishes it, envelope and position around it, in one step. It goes
//! through the shard's publish queue and publisher connection like any publish (pipelined, in
//! order with them); the script is loaded (`SCRIPT LOAD`) on each new publisher connection, and
//! again after a `NOSCRIPT` (the publishes it answered are lost and counted). Its envelope has
//! this gateway's origin and sequence number 0, outside the sequence of its other publishes: the
//! echo of a positioned message is not dropped (this gateway delivers its own history messages
//! only as they come back with their position), and it takes no number from the sequence. While
//! a shard is down, history publishes are kept for its next connection, within the queue's
//! bounds (the store is the only way such a message reaches anyone, this gateway's members
//! included); plain publishes are dropped. A batch with a history publish waits until Redis has
//! answered the subscriptions sent before it (a join just before the send), at most
//! `--history-timeout` (see [`session`]). Reads and removals use a connection of their own per
//! shard ([`history::Requests`]), never the publisher's or the subscriber's.
//!
//! TLS (`rediss://`) trusts the system's roots (`SSL_CERT_FILE` may name others); the database
//! number of a URL is ignored, pub/sub channels being global to a server.

pub mod conn;
pub mod history;
pub mod resp;
pub mod routing;

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use parking_lot::{Mutex, RwLock};
use protocol::envelope::{Envelope, ENVELOPE_HEADER_LEN};
use protocol::{GroupId, GroupName};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinSet;
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use url::Url;

use self::conn::{connect, Conn, RedisError};
use self::history::{
    is_noscript, new_epoch, publish_call, request_limits, HistoryKeys, RequestSettings, Requests,
    ScriptCall, PUBLISH_SCRIPT,
};
use self::resp::{encode, PublishCommand, Reply, RespLimits};
use self::routing::{channel, group_of, shard_of, slot_of, ShardInterest, SLOTS};
use super::address::redacted;
use super::inbound::{InboundLimits, Rejected, INBOX_BYTES, INBOX_MESSAGES};
use super::origin::{Origin, Received};
use super::publish_queue::PublishQueue;
use super::warnings::Throttle;
use super::{
    jittered, Bus, BusAddress, BusCounters, BusError, BusStatus, Carrier, HistoryError,
    HistoryFuture, HistoryPage, HistoryPolicy, HistoryQuery, Node, Payload, RunningBus,
    ShardStatus,
};
use crate::config::GatewayConfig;

/// Channels per `SUBSCRIBE` / `UNSUBSCRIBE` command (a cluster's `SSUBSCRIBE` takes one
/// channel per command, since its channels must share a slot).
pub const SUBSCRIBE_BATCH: usize = 1000;
/// Most publishes taken from a shard's queue for one pipelined write.
pub const WRITE_BATCH: usize = 256;
/// Elements of one reply array at most (`CLUSTER SLOTS` of a fragmented cluster is the
/// largest).
pub const MAX_REPLY_ELEMENTS: usize = 65_536;
/// Bytes of one reply on a subscriber or publisher connection beyond its largest bulk string
/// (a message's `smessage` and channel, a `CLIENT LIST` line's array): a reply larger than
/// `max_bulk` plus this is an error, and the connection is dropped and made again.
pub const REPLY_SLACK: usize = 64 * 1024;
/// Bytes of one `CLUSTER SLOTS` reply at most, on the connection that asks it (every slot its
/// own range, each with a master and a few replicas, is about 10 MiB).
pub const CLUSTER_SLOTS_REPLY_BYTES: usize = 32 * 1024 * 1024;
/// The topology of a cluster is queried at most this often.
pub const REFRESH_MIN: Duration = Duration::from_millis(200);
/// A subscriber connection closed while its sampled output buffer held at least this much is
/// counted as a slow consumer.
pub const SLOW_CONSUMER_BACKLOG: u64 = 1024 * 1024;

/// Redis, not started yet: its targets and the gateway's bus settings.
#[derive(Debug, Clone)]
pub struct RedisCarrier {
    targets: Targets,
    settings: Settings,
}

/// Its `Debug` shows addresses without passwords.
#[derive(Clone)]
enum Targets {
    Shards(Vec<Url>),
    Cluster(Vec<Url>),
}

#[derive(Debug, Clone)]
struct Settings {
    prefix: String,
    /// The `CLIENT SETNAME` of this gateway's connections (plus `-sub` or `-pub`).
    client_name: String,
    inbound: InboundLimits,
    /// The replies of the subscriber and publisher connections.
    resp: RespLimits,
    ping_interval: Duration,
    timeout: Duration,
    connect_timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    queue: usize,
    queue_bytes: usize,
    /// Whether this gateway has groups with history: the publish script is loaded only then.
    history: bool,
    /// The history request connections'.
    requests: RequestSettings,
}

impl Settings {
    /// A target at `url` with this carrier's queue bounds.
    fn shard(&self, url: Url, stop: CancellationToken) -> Arc<Shard> {
        Shard::new(url, self.queue, self.queue_bytes, stop)
    }
}

impl RedisCarrier {
    /// The carrier for a `redis://` or `redis+cluster://` address, with the bus settings of
    /// `config`.
    pub fn new(address: &BusAddress, config: &GatewayConfig) -> Result<RedisCarrier, BusError> {
        let targets = match address {
            BusAddress::Redis(urls) if !urls.is_empty() => Targets::Shards(urls.clone()),
            BusAddress::RedisCluster(urls) if !urls.is_empty() => Targets::Cluster(urls.clone()),
            other => {
                return Err(BusError::InvalidAddress {
                    address: other.to_string(),
                    reason: "not a Redis address".into(),
                })
            }
        };
        let name: String = config
            .node_name()
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        let largest = config.max_message_size + ENVELOPE_HEADER_LEN;
        // Messages larger than this gateway's limit are read and dropped (counted); only those
        // beyond four times it (or a broken server) cost the connection.
        let max_bulk = largest.saturating_mul(4).max(1024 * 1024);
        let client_name = format!("{}-{name}", config.bus_prefix);
        Ok(RedisCarrier {
            targets,
            settings: Settings {
                prefix: config.bus_prefix.clone(),
                requests: RequestSettings {
                    client_name: format!("{client_name}-req"),
                    limits: request_limits(max_bulk, REPLY_SLACK),
                    connect_timeout: config.link_connect_timeout,
                    timeout: config.history_timeout,
                },
                client_name,
                inbound: InboundLimits::from_config(config),
                resp: RespLimits {
                    max_bulk,
                    max_elements: MAX_REPLY_ELEMENTS,
                    max_reply: max_bulk.saturating_add(REPLY_SLACK),
                },
                ping_interval: config.link_ping_interval,
                timeout: config.link_timeout,
                connect_timeout: config.link_connect_timeout,
                reconnect_min: config.reconnect_min,
                reconnect_max: config.reconnect_max,
                queue: config.link_queue,
                queue_bytes: config.link_queue_bytes,
                history: !config.history.is_empty(),
            },
        })
    }
}

impl RedisCarrier {
    /// The carrier's state, before any connection.
    fn into_bus<N: Node>(self, node: Arc<N>) -> RedisBus<N> {
        let (cluster, seeds) = match self.targets {
            Targets::Shards(urls) => (false, urls),
            Targets::Cluster(urls) => (true, urls),
        };
        let origin = Origin::new();
        RedisBus {
            carrier: if cluster { "redis-cluster" } else { "redis" },
            cluster,
            seeds,
            settings: self.settings,
            topology: RwLock::new(Arc::new(Topology::default())),
            history_field: history::publisher_field(origin.node_id()),
            history_ids: AtomicU64::new(1),
            origin,
            counters: BusCounters::default(),
            up_logged: AtomicBool::new(false),
            refresh: Notify::new(),
            unrouted: Mutex::new(HashSet::new()),
            last_error: Mutex::new(None),
            history_warnings: Mutex::new(Throttle::default()),
            routing: Mutex::new(()),
            node,
        }
    }
}

impl Carrier for RedisCarrier {
    fn start<N: Node>(self, node: Arc<N>, shutdown: CancellationToken) -> RunningBus {
        let bus = Arc::new(self.into_bus(node));
        let task = tokio::spawn(supervise(bus.clone(), shutdown));
        RunningBus { bus, task }
    }
}

/// Where groups live now: the targets, and for a cluster which one serves each slot.
#[derive(Debug, Default)]
struct Topology {
    shards: Vec<Arc<Shard>>,
    /// Slot -> index in `shards` (`u16::MAX`: no master serves it). `None`: jump hash.
    slots: Option<Box<[u16]>>,
}

impl Topology {
    fn index_of(&self, group: &str, channel: &[u8]) -> Option<usize> {
        match &self.slots {
            None if self.shards.is_empty() => None,
            None => Some(shard_of(group, self.shards.len())),
            Some(slots) => {
                let index = slots[usize::from(slot_of(channel))];
                (usize::from(index) < self.shards.len()).then_some(usize::from(index))
            }
        }
    }
}

/// One connection target: a shard, or a cluster master.
/// Its `Debug` shows `address`, never `url` (which may hold a password).
struct Shard {
    url: Url,
    /// `url` without its password, for logs and the status.
    address: String,
    /// Publishes waiting for the publisher connection.
    queue: PublishQueue<Outgoing>,
    publish_rx: Mutex<Option<mpsc::Receiver<Outgoing>>>,
    /// History reads and removals.
    requests: Requests,
    up: AtomicBool,
    /// Channels the server says the subscriber connection has.
    subscribed: AtomicU64,
    /// The subscriber connection's output buffer on the server at the last sample.
    backlog: Mutex<Option<u64>>,
    last_error: Mutex<Option<String>>,
    interest: Mutex<ShardInterest>,
    changed: Notify,
    /// Stops this target's task (a cluster master gone from the topology), or everything.
    stop: CancellationToken,
    /// Its repeated warnings (one throttle for all kinds: they come from the same outage).
    warnings: Mutex<Throttle>,
}

impl Shard {
    fn new(url: Url, queue: usize, queue_bytes: usize, stop: CancellationToken) -> Arc<Shard> {
        let (queue, publish_rx) = PublishQueue::new(queue, queue_bytes);
        Arc::new(Shard {
            address: redacted(&url),
            url,
            queue,
            publish_rx: Mutex::new(Some(publish_rx)),
            requests: Requests::default(),
            up: AtomicBool::new(false),
            subscribed: AtomicU64::new(0),
            backlog: Mutex::new(None),
            last_error: Mutex::new(None),
            interest: Mutex::new(ShardInterest::default()),
            changed: Notify::new(),
            stop,
            warnings: Mutex::new(Throttle::default()),
        })
    }

    /// Whether a repeated warning may be logged now, and how many were held back before it.
    fn may_warn(&self) -> Option<u64> {
        self.warnings.lock().allow()
    }
}

/// The started carrier.
/// Its `Debug` shows the seeds without passwords.
struct RedisBus<N> {
    carrier: &'static str,
    cluster: bool,
    seeds: Vec<Url>,
    settings: Settings,
    topology: RwLock<Arc<Topology>>,
    origin: Origin,
    counters: BusCounters,
    /// Whether `bus up` was logged last (rather than `bus down`).
    up_logged: AtomicBool,
    /// Asks the dispatcher to query the cluster's topology.
    refresh: Notify,
    /// Wanted groups whose slot no master serves (a cluster that is not whole).
    unrouted: Mutex<HashSet<GroupId>>,
    last_error: Mutex<Option<String>>,
    /// History publishes that could not be queued, warned about.
    history_warnings: Mutex<Throttle>,
    /// This gateway's field in the meta hash of each group it publishes to, and the number of
    /// its next history publish ([`history::put_publish_id`]): a publish sent again after a
    /// lost connection is stored once.
    history_field: Vec<u8>,
    history_ids: AtomicU64,
    /// Held while the Node's subscription changes are taken and recorded with their targets
    /// (by the dispatcher, and by a history publish: [`RedisBus::route_pending`]), and while
    /// the topology moves groups: changes are recorded in the order they were taken.
    routing: Mutex<()>,
    node: Arc<N>,
}

impl<N: Node> Bus for RedisBus<N> {
    fn publish(&self, group: &GroupName<'_>, payload: &Bytes) {
        self.counters.count_publish(payload);
        let command = PublishCommand::new(
            self.publish_verb(),
            &self.settings.prefix,
            group.as_str(),
            &self.origin.header(),
            payload,
        );
        let shard = self.shard_for(group.as_str(), command.channel());
        let len = command.bytes.len();
        let queued = shard
            .filter(|s| s.up.load(Relaxed))
            .is_some_and(|s| s.queue.push(Outgoing::Publish(command.bytes), len));
        if !queued {
            self.counters.publishes_dropped.fetch_add(1, Relaxed);
        }
    }

    fn publish_history(&self, group: &GroupName<'_>, payload: &Bytes, policy: HistoryPolicy) {
        self.counters.history_publishes.fetch_add(1, Relaxed);
        // A history message reaches this gateway's members only as Redis publishes it back:
        // the subscriptions of the joins made before it (the sender's own, say) are recorded
        // with their targets now, so that the target's connection subscribes them, and waits
        // for Redis to confirm, before it sends this message (see `session`).
        self.route_pending();
        let keys = HistoryKeys::new(&self.settings.prefix, group.as_str());
        // Sequence number 0: outside this gateway's sequence of plain publishes (from 1), so
        // that a history publish the store refuses leaves no hole in it, and so that
        // `on_message` can tell the echo it must not drop.
        let header = Envelope::header(self.origin.node_id(), 0);
        let call = publish_call(
            &keys,
            &header,
            payload,
            policy,
            &new_epoch(),
            self.publish_verb(),
        );
        let len = call.len();
        // Queued while the shard is down too: `drain` keeps it for the next connection.
        let queued = self
            .shard_for(group.as_str(), &keys.channel)
            .is_some_and(|s| s.queue.push(Outgoing::History(call, None), len));
        if !queued {
            self.counters
                .history_publishes_dropped
                .fetch_add(1, Relaxed);
            if let Some(suppressed) = self.history_warnings.lock().allow() {
                tracing::warn!(carrier = self.carrier, group = group.as_str(), suppressed, "a history message cannot be queued for redis (its queue is full, or no master serves its slot): dropped");
            }
        }
    }

    fn history(
        &self,
        group: &GroupName<'_>,
        policy: HistoryPolicy,
        query: HistoryQuery,
    ) -> HistoryFuture<HistoryPage> {
        let keys = HistoryKeys::new(&self.settings.prefix, group.as_str());
        let Some(shard) = self.shard_for(group.as_str(), &keys.channel) else {
            return super::history::failed(HistoryError::Unavailable(NO_TARGET.into()));
        };
        let settings = self.settings.requests.clone();
        Box::pin(async move {
            shard
                .requests
                .read(&shard.url, &settings, &keys, policy, query)
                .await
        })
    }

    fn remove_history(&self, group: &GroupName<'_>) -> HistoryFuture<()> {
        let keys = HistoryKeys::new(&self.settings.prefix, group.as_str());
        let Some(shard) = self.shard_for(group.as_str(), &keys.channel) else {
            return super::history::failed(HistoryError::Unavailable(NO_TARGET.into()));
        };
        let settings = self.settings.requests.clone();
        Box::pin(async move { shard.requests.remove(&shard.url, &settings, &keys).await })
    }

    fn status(&self) -> BusStatus {
        let topology = self.topology.read().clone();
        let shards: Vec<ShardStatus> = topology
            .shards
            .iter()
            .map(|s| ShardStatus {
                address: s.address.clone(),
                up: s.up.load(Relaxed),
                subscriptions: s.subscribed.load(Relaxed),
                backlog_bytes: *s.backlog.lock(),
                last_error: s.last_error.lock().clone(),
            })
            .collect();
        // Groups wanted here whose slot no master serves miss every message: not up.
        let unrouted = self.unrouted.lock().len();
        let last_error = if unrouted > 0 {
            let unserved = topology
                .slots
                .as_ref()
                .map_or(0, |slots| slots.iter().filter(|&&i| i == u16::MAX).count());
            Some(format!(
                "{unrouted} wanted groups are on slots no master serves ({unserved} of {SLOTS} \
                 slots unserved)"
            ))
        } else {
            self.last_error.lock().clone()
        };
        BusStatus {
            carrier: self.carrier,
            up: !shards.is_empty() && shards.iter().all(|s| s.up) && unrouted == 0,
            shards,
            subscriptions: self.node.wanted() as u64,
            last_error,
            ..BusStatus::default()
        }
        .with_counters(&self.counters)
    }
}

/// Why a history request has nowhere to go.
const NO_TARGET: &str =
    "no redis server serves the group now (the cluster's topology is not known, or \
                         no master serves its slot)";

impl<N: Node> RedisBus<N> {
    /// `PUBLISH`, or a cluster's sharded `SPUBLISH`.
    fn publish_verb(&self) -> &'static [u8] {
        if self.cluster {
            b"SPUBLISH"
        } else {
            b"PUBLISH"
        }
    }

    /// The target of `group`, whose channel is `channel`.
    fn shard_for(&self, group: &str, channel: &[u8]) -> Option<Arc<Shard>> {
        let topology = self.topology.read();
        topology
            .index_of(group, channel)
            .map(|i| topology.shards[i].clone())
    }

    /// Logs `bus up` once every target is up, `bus down` when one of them goes down.
    fn shard_changed(&self, shard: &Shard, cause: Option<&RedisError>) {
        let topology = self.topology.read().clone();
        let all_up =
            !topology.shards.is_empty() && topology.shards.iter().all(|s| s.up.load(Relaxed));
        if all_up && !self.up_logged.swap(true, Relaxed) {
            tracing::info!(
                carrier = self.carrier,
                shards = topology.shards.len(),
                "bus up"
            );
        } else if !all_up && self.up_logged.swap(false, Relaxed) {
            let cause = cause.map(ToString::to_string).unwrap_or_default();
            tracing::warn!(carrier = self.carrier, shard = %shard.address, cause, "bus down");
        }
    }

    fn failed(&self, shard: &Shard, error: &RedisError) {
        let text = error.to_string();
        *shard.last_error.lock() = Some(text.clone());
        *self.last_error.lock() = Some(format!("{}: {text}", shard.address));
    }
}

/// The dispatcher: learns the topology (a cluster's), starts a task per target, and routes the
/// Node's subscription changes to the targets until `shutdown`.
async fn supervise<N: Node>(bus: Arc<RedisBus<N>>, shutdown: CancellationToken) {
    let mut tasks = JoinSet::new();
    if bus.cluster {
        let mut backoff = bus.settings.reconnect_min;
        loop {
            let discovered = tokio::select! {
                d = discover(&bus) => d,
                _ = shutdown.cancelled() => return,
            };
            match discovered {
                Ok(d) => {
                    apply_topology(&bus, d, &shutdown, &mut tasks);
                    break;
                }
                Err(e) => {
                    tracing::warn!(carrier = bus.carrier, cause = %e, retry_in = ?backoff, "cannot learn the cluster's topology");
                    *bus.last_error.lock() = Some(e.to_string());
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(jittered(backoff)) => {}
                _ = shutdown.cancelled() => return,
            }
            backoff = (backoff * 2).min(bus.settings.reconnect_max);
        }
    } else {
        let shards = bus
            .seeds
            .iter()
            .map(|url| bus.settings.shard(url.clone(), shutdown.child_token()))
            .collect();
        *bus.topology.write() = Arc::new(Topology {
            shards,
            slots: None,
        });
    }
    // Everything wanted now, then every change: the Node stays in sync with this task for
    // good, whatever the connections do (each target resynchronizes from its own interest).
    {
        let _routing = bus.routing.lock();
        route_changes(&bus, bus.node.subscriptions(true));
    }
    let shards = bus.topology.read().shards.clone();
    for shard in shards {
        spawn_shard(&bus, shard, &mut tasks);
    }
    let mut last_refresh: Option<Instant> = None;
    let mut check = tokio::time::interval(bus.settings.reconnect_max.max(REFRESH_MIN));
    check.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = bus.node.subscriptions_changed() => bus.route_pending(),
            _ = bus.refresh.notified(), if bus.cluster => {
                if let Some(at) = last_refresh {
                    let wait = REFRESH_MIN.saturating_sub(at.elapsed());
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
                last_refresh = Some(Instant::now());
                refresh(&bus, &shutdown, &mut tasks).await;
            }
            _ = check.tick(), if bus.cluster => {
                // A master that stays unreachable may have been replaced by a failover; slots
                // that no master serves may have found one.
                let incomplete = {
                    let topology = bus.topology.read();
                    topology.shards.iter().any(|s| !s.up.load(Relaxed))
                        || topology
                            .slots
                            .as_ref()
                            .is_some_and(|slots| slots.contains(&u16::MAX))
                } || !bus.unrouted.lock().is_empty();
                if incomplete {
                    last_refresh = Some(Instant::now());
                    refresh(&bus, &shutdown, &mut tasks).await;
                }
            }
            Some(_) = tasks.join_next() => {}
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Records each change with the target of its group.
fn route_changes<N: Node>(bus: &RedisBus<N>, changes: super::SubscriptionChanges) {
    if changes.is_empty() {
        return;
    }
    let topology = bus.topology.read().clone();
    let mut touched = vec![false; topology.shards.len()];
    let changes = changes
        .subscribe
        .into_iter()
        .map(|g| (g, true))
        .chain(changes.unsubscribe.into_iter().map(|g| (g, false)));
    for (group, wanted) in changes {
        let channel = channel(&bus.settings.prefix, group.as_str());
        if let Some(i) = topology.index_of(group.as_str(), &channel) {
            topology.shards[i].interest.lock().record(group, wanted);
            touched[i] = true;
        } else if bus.cluster {
            // No master serves the slot now; kept for when one does (see `apply_topology`).
            bus.unrouted(group, wanted);
        }
    }
    for (i, touched) in touched.into_iter().enumerate() {
        if touched {
            topology.shards[i].changed.notify_one();
        }
    }
}

impl<N: Node> RedisBus<N> {
    /// Takes the Node's subscription changes and records each with its target.
    fn route_pending(&self) {
        let _routing = self.routing.lock();
        route_changes(self, self.node.subscriptions(false));
    }

    fn unrouted(&self, group: GroupId, wanted: bool) {
        let mut unrouted = self.unrouted.lock();
        if wanted {
            unrouted.insert(group);
        } else {
            unrouted.remove(&group);
        }
    }
}

fn spawn_shard<N: Node>(bus: &Arc<RedisBus<N>>, shard: Arc<Shard>, tasks: &mut JoinSet<()>) {
    let Some(rx) = shard.publish_rx.lock().take() else {
        return;
    };
    tasks.spawn(run_shard(bus.clone(), shard, rx));
}

/// What waits in a target's publish queue.
#[derive(Debug)]
enum Outgoing {
    /// An encoded `PUBLISH` (or `SPUBLISH`).
    Publish(Bytes),
    /// A history publish: the publish script's call, sent with the SHA its connection loaded,
    /// and its number ([`history::put_publish_id`]), given when it is first written and kept
    /// should it be sent again.
    History(ScriptCall, Option<u64>),
}

impl Outgoing {
    /// Its bytes, as the queue's bound counts them.
    fn len(&self) -> usize {
        match self {
            Outgoing::Publish(command) => command.len(),
            Outgoing::History(call, _) => call.len(),
        }
    }

    /// Releases its bytes from `shard`'s queue, and counts it dropped.
    fn discard<N: Node>(&self, bus: &RedisBus<N>, shard: &Shard) {
        shard.queue.release(self.len());
        let counter = match self {
            Outgoing::Publish(_) => &bus.counters.publishes_dropped,
            Outgoing::History(..) => &bus.counters.history_publishes_dropped,
        };
        counter.fetch_add(1, Relaxed);
    }
}

/// Empties a target's queue (its connection is gone): publishes are dropped and counted;
/// history publishes are kept in `held` for the next connection, at most `--link-queue-frames`
/// of them (their bytes stay in the queue's bytes bound until they are written), and past that
/// dropped and counted.
fn drain<N: Node>(
    bus: &RedisBus<N>,
    shard: &Shard,
    rx: &mut mpsc::Receiver<Outgoing>,
    held: &mut VecDeque<Outgoing>,
) {
    while let Ok(out) = rx.try_recv() {
        match out {
            Outgoing::History(..) if held.len() < bus.settings.queue => held.push_back(out),
            out => out.discard(bus, shard),
        }
    }
}

/// Puts the history publishes written on a lost connection but not answered (`in_flight`)
/// back in `held`, ahead of what it holds, to be sent again on the next connection: the
/// publish script skips any the server stored already ([`history::PUBLISH_SCRIPT`]). Their bytes
/// count against the queue's bound again; at most `--link-queue-frames` are held, those past
/// it dropped and counted.
fn requeue<N: Node>(
    bus: &RedisBus<N>,
    shard: &Shard,
    in_flight: &mut VecDeque<Outgoing>,
    held: &mut VecDeque<Outgoing>,
) {
    if in_flight.is_empty() {
        return;
    }
    let waiting = std::mem::take(held);
    for out in in_flight.drain(..) {
        if held.len() < bus.settings.queue {
            shard.queue.hold(out.len());
            held.push_back(out);
        } else {
            bus.counters.history_publishes_dropped.fetch_add(1, Relaxed);
        }
    }
    held.extend(waiting);
}

/// A target's checked messages on their way to the node ([`deliver_loop`]).
struct Inbox {
    tx: mpsc::Sender<(Bytes, Payload)>,
    /// Bytes of text in it.
    bytes: Arc<AtomicUsize>,
    /// Signalled each time the deliverer takes a message out.
    taken: Arc<Notify>,
}

impl Inbox {
    /// Whether the subscriber connection may be read (one more message fits).
    fn has_room(&self) -> bool {
        self.tx.capacity() > 0 && self.bytes.load(Relaxed) < INBOX_BYTES
    }

    /// Queues a message of `group` (read only while [`Inbox::has_room`], so it fits).
    fn push(&self, group: Bytes, text: Payload) {
        let len = text.len();
        self.bytes.fetch_add(len, Relaxed);
        if self.tx.try_send((group, text)).is_err() {
            self.bytes.fetch_sub(len, Relaxed);
        }
    }
}

/// Hands a target's messages to the node, in order, waiting while its workers are full.
async fn deliver_loop<N: Node>(
    node: Arc<N>,
    mut rx: mpsc::Receiver<(Bytes, Payload)>,
    bytes: Arc<AtomicUsize>,
    taken: Arc<Notify>,
    stop: CancellationToken,
) {
    loop {
        let (group, text) = tokio::select! {
            next = rx.recv() => match next {
                Some(next) => next,
                None => return,
            },
            _ = stop.cancelled() => return,
        };
        let len = text.len();
        // The group was checked against the gateway's limits when the message arrived.
        let name = std::str::from_utf8(&group)
            .ok()
            .and_then(|g| GroupName::parse(g, usize::MAX).ok());
        if let Some(name) = name {
            tokio::select! {
                _ = node.deliver(name, text) => {}
                _ = stop.cancelled() => return,
            }
        }
        bytes.fetch_sub(len, Relaxed);
        taken.notify_one();
    }
}

/// One target's task: connects, serves, and reconnects with backoff until it is stopped.
async fn run_shard<N: Node>(
    bus: Arc<RedisBus<N>>,
    shard: Arc<Shard>,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    let (tx, inbox_rx) = mpsc::channel(INBOX_MESSAGES);
    let inbox = Inbox {
        tx,
        bytes: Arc::new(AtomicUsize::new(0)),
        taken: Arc::new(Notify::new()),
    };
    let deliverer = tokio::spawn(deliver_loop(
        bus.node.clone(),
        inbox_rx,
        inbox.bytes.clone(),
        inbox.taken.clone(),
        shard.stop.clone(),
    ));
    serve_shard(&bus, &shard, &mut rx, &inbox).await;
    drop(inbox);
    let _ = deliverer.await;
}

/// Connects, serves, and reconnects with backoff until the target is stopped.
async fn serve_shard<N: Node>(
    bus: &Arc<RedisBus<N>>,
    shard: &Arc<Shard>,
    rx: &mut mpsc::Receiver<Outgoing>,
    inbox: &Inbox,
) {
    let bus = bus.clone();
    let shard = shard.clone();
    let settings = &bus.settings;
    let mut backoff = settings.reconnect_min;
    let mut ever_up = false;
    // History publishes kept while the shard is down, for its next connection.
    let mut held = VecDeque::new();
    loop {
        let connected = tokio::select! {
            c = connect_pair(&bus, &shard) => c,
            _ = shard.stop.cancelled() => break,
        };
        match connected {
            Ok((sub, publisher, script)) => {
                let started = Instant::now();
                let reconnected = ever_up;
                if reconnected {
                    bus.counters.reconnects.fetch_add(1, Relaxed);
                }
                ever_up = true;
                let connection = Connection {
                    sub,
                    publisher,
                    script: PublishScript {
                        sha: script,
                        ..PublishScript::default()
                    },
                };
                let mut in_flight = VecDeque::new();
                let result = session(
                    &bus,
                    &shard,
                    rx,
                    Pending {
                        held: &mut held,
                        in_flight: &mut in_flight,
                    },
                    inbox,
                    connection,
                    reconnected,
                )
                .await;
                shard.up.store(false, Relaxed);
                // A batch that waited for subscriptions: its history publishes are kept, its
                // plain ones dropped, as for what is still queued (`drain`).
                held.retain(|out| {
                    let history = matches!(out, Outgoing::History(..));
                    if !history {
                        out.discard(&bus, &shard);
                    }
                    history
                });
                requeue(&bus, &shard, &mut in_flight, &mut held);
                shard.interest.lock().lost();
                shard.subscribed.store(0, Relaxed);
                let backlog = shard.backlog.lock().take().unwrap_or(0);
                drain(&bus, &shard, rx, &mut held);
                // Start the backoff over only after a session that lasted, so a server that
                // accepts and then drops the connection is not hammered.
                if started.elapsed() >= settings.reconnect_max.max(Duration::from_secs(1)) {
                    backoff = settings.reconnect_min;
                }
                let error = match result {
                    Ok(()) => break,
                    Err(RedisError::Closed | RedisError::Io(_))
                        if backlog >= SLOW_CONSUMER_BACKLOG =>
                    {
                        bus.counters.slow_consumer.fetch_add(1, Relaxed);
                        RedisError::SlowConsumer(format!(
                            "the server closed the subscriber connection with {backlog} bytes \
                             in its output buffer"
                        ))
                    }
                    Err(e) => e,
                };
                bus.failed(&shard, &error);
                tracing::warn!(carrier = bus.carrier, shard = %shard.address, cause = %error, "redis connection lost");
                bus.shard_changed(&shard, Some(&error));
            }
            Err(error) => {
                bus.failed(&shard, &error);
                drain(&bus, &shard, rx, &mut held);
                if let Some(suppressed) = shard.may_warn() {
                    tracing::warn!(carrier = bus.carrier, shard = %shard.address, cause = %error, retry_in = ?backoff, suppressed, "cannot reach redis");
                }
            }
        }
        if bus.cluster {
            bus.refresh.notify_one();
        }
        tokio::select! {
            _ = tokio::time::sleep(jittered(backoff)) => {}
            _ = shard.stop.cancelled() => break,
        }
        backoff = (backoff * 2).min(settings.reconnect_max);
    }
    shard.up.store(false, Relaxed);
    drain(&bus, &shard, rx, &mut held);
    for out in &held {
        out.discard(&bus, &shard);
    }
}

/// Connects a target's subscriber and publisher connections; with groups with history, loads
/// the publish script on the publisher connection and returns its SHA (`None`: the server
/// refused it, an ACL say; the shard serves plain groups, and its history publishes are
/// dropped and counted).
async fn connect_pair<N: Node>(
    bus: &RedisBus<N>,
    shard: &Shard,
) -> Result<(Conn, Conn, Option<Bytes>), RedisError> {
    let s = &bus.settings;
    let sub = connect(
        &shard.url,
        &format!("{}-sub", s.client_name),
        s.resp,
        s.connect_timeout,
    )
    .await?;
    let mut publisher = connect(
        &shard.url,
        &format!("{}-pub", s.client_name),
        s.resp,
        s.connect_timeout,
    )
    .await?;
    if !s.history {
        return Ok((sub, publisher, None));
    }
    match history::load(&mut publisher, PUBLISH_SCRIPT, s.connect_timeout).await {
        Ok(sha) => Ok((sub, publisher, Some(sha))),
        Err(RedisError::Server(cause)) => {
            tracing::warn!(carrier = bus.carrier, shard = %shard.address, cause, "redis refused the history script: this shard's history messages are dropped");
            Ok((sub, publisher, None))
        }
        Err(e) => Err(e),
    }
}

/// A connected target's connections.
struct Connection {
    sub: Conn,
    publisher: Conn,
    script: PublishScript,
}

/// The publish script on a publisher connection.
#[derive(Debug, Default)]
struct PublishScript {
    /// Its SHA (`None`: not loaded; history publishes are dropped and counted).
    sha: Option<Bytes>,
    /// A `NOSCRIPT` answered: to be loaded again.
    reload: bool,
    /// A `SCRIPT LOAD` sent, not answered yet.
    loading: bool,
}

/// What the next replies on a publisher connection answer.
#[derive(Debug, PartialEq, Eq)]
enum Expect {
    /// This many publishes.
    Publish(usize),
    /// This many history publishes (the publish script's calls).
    History(usize),
    /// The heartbeat's `CLIENT LIST ID` (or `PING`).
    Probe,
    /// `SCRIPT LOAD` of the publish script, after a `NOSCRIPT`.
    Load,
}

/// One more reply to expect, for a publish (`history`: a history publish).
fn expect_publish(expected: &mut VecDeque<Expect>, history: bool) {
    match (expected.back_mut(), history) {
        (Some(Expect::Publish(n)), false) | (Some(Expect::History(n)), true) => *n += 1,
        (_, false) => expected.push_back(Expect::Publish(1)),
        (_, true) => expected.push_back(Expect::History(1)),
    }
}

/// History publishes not sent yet on a target's connection, and those written but not answered.
struct Pending<'a> {
    /// Publishes on their way to the publisher connection: within a session, the batch taken
    /// last (written at once, or once the subscriptions before it are answered); between
    /// sessions, the history publishes kept for the next connection.
    held: &'a mut VecDeque<Outgoing>,
    /// Written, in order, their replies not read yet: sent again on the next connection should
    /// this one be lost ([`requeue`]).
    in_flight: &'a mut VecDeque<Outgoing>,
}

/// What a publisher connection waits for: the replies to expect, and the history publishes
/// they answer.
struct Unanswered<'a> {
    expected: &'a mut VecDeque<Expect>,
    in_flight: &'a mut VecDeque<Outgoing>,
}

/// Writes `batch` on the publisher connection (history publishes with the script's SHA and
/// their numbers) and records the replies to expect. Its bytes leave the queue's bound whatever
/// happens. Publishes not written (the connection failed) are dropped and counted; history
/// publishes, written or not, join `in_flight` until their replies come, to be sent again on
/// the next connection should this one fail; without the script they are dropped and counted.
async fn write_batch<N: Node>(
    bus: &RedisBus<N>,
    shard: &Shard,
    publisher: &mut Conn,
    batch: &mut Vec<Outgoing>,
    script: Option<&[u8]>,
    heard: Instant,
    unanswered: Unanswered<'_>,
) -> Result<(), RedisError> {
    let Unanswered {
        expected,
        in_flight,
    } = unanswered;
    let sha = match script {
        Some(sha) => sha,
        None => {
            batch.retain(|out| {
                let history = matches!(out, Outgoing::History(..));
                if history {
                    out.discard(bus, shard);
                }
                !history
            });
            &[]
        }
    };
    let bytes: usize = batch.iter().map(Outgoing::len).sum();
    let mut scratch = BytesMut::new();
    let written = bounded(heard, bus.settings.timeout, async {
        for out in batch.iter_mut() {
            match out {
                Outgoing::Publish(command) => publisher.writer.write_all(command).await?,
                Outgoing::History(call, id) => {
                    let id = *id.get_or_insert_with(|| bus.history_ids.fetch_add(1, Relaxed));
                    scratch.clear();
                    call.put_head(sha, history::PUBLISH_ID_ARGS, &mut scratch);
                    publisher.writer.write_all(&scratch).await?;
                    publisher.writer.write_all(&call.tail).await?;
                    scratch.clear();
                    history::put_publish_id(&bus.history_field, id, &mut scratch);
                    publisher.writer.write_all(&scratch).await?;
                }
            }
        }
        Ok(publisher.writer.flush().await?)
    })
    .await;
    // Written out, or lost with the connection: either way no longer held.
    shard.queue.release(bytes);
    for out in batch.drain(..) {
        match out {
            Outgoing::History(..) => {
                if written.is_ok() {
                    expect_publish(expected, true);
                }
                in_flight.push_back(out);
            }
            Outgoing::Publish(_) if written.is_ok() => expect_publish(expected, false),
            Outgoing::Publish(_) => {
                bus.counters.publishes_dropped.fetch_add(1, Relaxed);
            }
        }
    }
    written
}

/// Runs a write, giving up once nothing has been heard on its connection for `timeout` since
/// `last_heard`: a server that stopped reading fills the socket buffers, and a write blocked on
/// them would keep the task from ever reaching the heartbeat check.
async fn bounded<T>(
    last_heard: Instant,
    timeout: Duration,
    write: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, RedisError> {
    tokio::time::timeout_at(last_heard + timeout, write)
        .await
        .unwrap_or(Err(RedisError::Stalled(timeout)))
}

/// One connected session of a target: full resubscription and the history publishes `held`
/// since the last one, then messages in, publishes out, subscription changes and heartbeats,
/// until an error or the stop.
///
/// **History publishes wait for subscriptions.** Redis publishes a history message to the
/// subscribers of its channel when the script stores it, and this gateway's members get it only
/// that way: a client that joins a group and sends to it at once (the seed's snippet does) must
/// find this gateway subscribed. The subscriber and publisher connections are two, which Redis
/// serves in no set order, so a batch with a history publish first sends the target's pending
/// subscriptions (the bus recorded them before queuing the publish) and then waits, in `held`,
/// until Redis has answered every subscribe sent on the subscriber connection so far (this
/// join's and any other not answered yet), at most `--history-timeout`; meanwhile the publish
/// queue is not read (it fills and counts its drops as ever). Plain publishes reach this
/// gateway's members without Redis; they wait only when they are in or behind a held batch
/// (their order is kept).
async fn session<N: Node>(
    bus: &RedisBus<N>,
    shard: &Shard,
    rx: &mut mpsc::Receiver<Outgoing>,
    pending: Pending<'_>,
    inbox: &Inbox,
    connection: Connection,
    reconnected: bool,
) -> Result<(), RedisError> {
    let Pending { held, in_flight } = pending;
    let Connection {
        mut sub,
        mut publisher,
        mut script,
    } = connection;
    let settings = &bus.settings;
    let timeout = settings.timeout;
    let mut sub_heard = Instant::now();
    let mut pub_heard = Instant::now();
    let mut subs = SubCommands::default();
    let everything = shard.interest.lock().full_sync();
    let changes = super::SubscriptionChanges {
        subscribe: everything,
        unsubscribe: Vec::new(),
    };
    let count = changes.subscribe.len();
    bounded(
        sub_heard,
        timeout,
        write_subscriptions(bus, &mut sub, changes, &mut subs),
    )
    .await?;
    shard.up.store(true, Relaxed);
    *shard.warnings.lock() = Throttle::default();
    tracing::debug!(carrier = bus.carrier, shard = %shard.address, subscriptions = count, "redis shard up");
    bus.shard_changed(shard, None);
    if reconnected {
        // Subscribed again: what groups with history got meanwhile is asked of the store.
        bus.node.reconnected();
    }
    let mut expected: VecDeque<Expect> = VecDeque::new();
    // The history publishes kept while Redis was down go once the resubscription is answered.
    // A wait ends after `--history-timeout` all the same (the subscriber connection may be
    // left unread while the inbox is full): the batch is sent, in order, and a join just made
    // may miss it.
    let hold = settings.requests.timeout;
    let mut held_until = subs.subscribes_sent;
    let mut held_deadline = Instant::now() + hold;
    if !held.is_empty() {
        tracing::debug!(carrier = bus.carrier, shard = %shard.address, held = held.len(), "history messages kept while redis was down: sent once resubscribed");
    }

    let mut heartbeat = tokio::time::interval_at(
        Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    let load = encode(&[b"SCRIPT", b"LOAD", PUBLISH_SCRIPT.as_bytes()]);
    let ping = encode(&[b"PING"]);
    let probe = match sub.id {
        Some(id) => encode(&[b"CLIENT", b"LIST", b"ID", id.to_string().as_bytes()]),
        None => ping.clone(),
    };
    loop {
        let answered = subs.answered_through(held_until);
        if !held.is_empty() && (answered || Instant::now() >= held_deadline) {
            if !answered {
                if let Some(suppressed) = shard.may_warn() {
                    tracing::warn!(carrier = bus.carrier, shard = %shard.address, waited = ?hold, suppressed, "redis did not answer subscriptions in time: history messages sent without waiting for them");
                }
            }
            batch.extend(held.drain(..));
            write_batch(
                bus,
                shard,
                &mut publisher,
                &mut batch,
                script.sha.as_deref(),
                pub_heard,
                Unanswered {
                    expected: &mut expected,
                    in_flight,
                },
            )
            .await?;
        }
        let room = inbox.has_room();
        // Not biased: a saturated inbound stream must not starve the writes, nor a saturated
        // publish queue the reads.
        tokio::select! {
            _ = shard.stop.cancelled() => return Ok(()),
            reply = sub.reader.next(), if room => {
                let reply = match reply {
                    None => return Err(RedisError::Closed),
                    Some(reply) => reply?,
                };
                sub_heard = Instant::now();
                on_sub_reply(bus, shard, inbox, reply, &mut subs)?;
            }
            // The inbox full: the subscriber connection is left unread, which is not the
            // server's silence.
            _ = inbox.taken.notified(), if !room => {
                sub_heard = Instant::now();
            }
            reply = publisher.reader.next() => {
                let reply = match reply {
                    None => return Err(RedisError::Closed),
                    Some(reply) => reply?,
                };
                pub_heard = Instant::now();
                on_pub_reply(bus, shard, reply, &mut expected, in_flight, &mut script)?;
                if script.reload {
                    script.reload = false;
                    script.loading = true;
                    bounded(pub_heard, timeout, async {
                        publisher.writer.write_all(&load).await?;
                        Ok(publisher.writer.flush().await?)
                    })
                    .await?;
                    expected.push_back(Expect::Load);
                }
            }
            _ = tokio::time::sleep_until(held_deadline), if !held.is_empty() => {}
            _ = shard.changed.notified() => {
                // After a topology refresh too: the groups a `MOVED` answered for are retried
                // here, unless they moved to another master.
                let mut changes = shard.interest.lock().take_changes();
                changes.subscribe.extend(subs.take_retries(bus, shard));
                bounded(sub_heard, timeout, write_subscriptions(bus, &mut sub, changes, &mut subs)).await?;
            }
            n = rx.recv_many(&mut batch, WRITE_BATCH), if held.is_empty() => {
                if n == 0 {
                    return Ok(());
                }
                // Every batch goes out through `held`, at the top of the loop: at once, or,
                // with a history publish in it, once the subscriptions are answered. Held
                // before they are written: should that write fail, the session's end keeps or
                // counts the batch like anything else held.
                let history = batch.iter().any(|out| matches!(out, Outgoing::History(..)));
                held.extend(batch.drain(..));
                held_until = 0;
                if history {
                    held_deadline = Instant::now() + hold;
                    let changes = shard.interest.lock().take_changes();
                    bounded(sub_heard, timeout, write_subscriptions(bus, &mut sub, changes, &mut subs)).await?;
                    held_until = subs.subscribes_sent;
                }
            }
            _ = heartbeat.tick() => {
                if !inbox.has_room() {
                    sub_heard = Instant::now();
                }
                for heard in [sub_heard, pub_heard] {
                    if heard.elapsed() > timeout {
                        return Err(RedisError::Silent(timeout));
                    }
                }
                let retries = super::SubscriptionChanges {
                    subscribe: subs.take_retries(bus, shard),
                    unsubscribe: Vec::new(),
                };
                bounded(sub_heard, timeout, async {
                    write_subscriptions(bus, &mut sub, retries, &mut subs).await?;
                    sub.writer.write_all(&ping).await?;
                    Ok(sub.writer.flush().await?)
                })
                .await?;
                subs.sent(SubCommand::Ping);
                bounded(pub_heard, timeout, async {
                    publisher.writer.write_all(&probe).await?;
                    Ok(publisher.writer.flush().await?)
                })
                .await?;
                expected.push_back(Expect::Probe);
            }
        }
    }
}

/// A command on a subscriber connection whose replies have not all been read.
#[derive(Debug, Clone, PartialEq, Eq)]
enum SubCommand {
    /// `(S)SUBSCRIBE`: the channels not confirmed yet, in order.
    Subscribe(VecDeque<Bytes>),
    /// `(S)UNSUBSCRIBE`: likewise.
    Unsubscribe(VecDeque<Bytes>),
    Ping,
}

/// The subscriber connection's commands in the order the server answers them, so that an
/// error maps to the channels of the command it answers, and a `sunsubscribe` that answers
/// none is known to come from the server (a slot that left the node); and the groups to
/// subscribe again (refused, or answered with `MOVED`).
#[derive(Debug, Default)]
struct SubCommands {
    pending: VecDeque<SubCommand>,
    retry: HashSet<GroupId>,
    /// `(S)SUBSCRIBE` commands sent on this connection, and those answered (every channel
    /// confirmed, or an error): a history publish waits until the subscriptions sent before it
    /// are answered ([`SubCommands::answered_through`]).
    subscribes_sent: u64,
    subscribes_answered: u64,
}

impl SubCommands {
    fn sent(&mut self, command: SubCommand) {
        if matches!(command, SubCommand::Subscribe(_)) {
            self.subscribes_sent += 1;
        }
        self.pending.push_back(command);
    }

    /// Whether the first `mark` subscribe commands sent are answered: Redis has made those
    /// subscriptions (or refused them) before it runs anything sent after the answer came.
    fn answered_through(&self, mark: u64) -> bool {
        self.subscribes_answered >= mark
    }

    /// Takes a confirmation of `channel`: whether it answers the command in front.
    fn confirmed(&mut self, subscribe: bool, channel: &[u8]) -> bool {
        let channels = match self.pending.front_mut() {
            Some(SubCommand::Subscribe(channels)) if subscribe => channels,
            Some(SubCommand::Unsubscribe(channels)) if !subscribe => channels,
            _ => return false,
        };
        let Some(at) = channels.iter().position(|c| c == channel) else {
            return false;
        };
        channels.remove(at);
        if channels.is_empty() {
            self.pending.pop_front();
            if subscribe {
                self.subscribes_answered += 1;
            }
        }
        true
    }

    fn ponged(&mut self) {
        if self.pending.front() == Some(&SubCommand::Ping) {
            self.pending.pop_front();
        }
    }

    /// The command an error reply answers.
    fn errored(&mut self) -> Option<SubCommand> {
        let command = self.pending.pop_front();
        if matches!(command, Some(SubCommand::Subscribe(_))) {
            self.subscribes_answered += 1;
        }
        command
    }

    fn retry(&mut self, prefix: &str, channels: impl IntoIterator<Item = Bytes>) {
        self.retry
            .extend(channels.into_iter().filter_map(|ch| group_id(prefix, &ch)));
    }

    /// The groups to subscribe again that this target still serves.
    fn take_retries<N: Node>(&mut self, bus: &RedisBus<N>, shard: &Shard) -> Vec<GroupId> {
        if self.retry.is_empty() {
            return Vec::new();
        }
        let retry: Vec<GroupId> = {
            let interest = shard.interest.lock();
            self.retry
                .drain()
                .filter(|g| interest.wanted().contains(g))
                .collect()
        };
        if !retry.is_empty() {
            if let Some(suppressed) = shard.may_warn() {
                tracing::info!(carrier = bus.carrier, shard = %shard.address, groups = retry.len(), suppressed, "subscribing again to groups refused or moved");
            }
        }
        retry
    }
}

/// The group of one of this deployment's channels.
fn group_id(prefix: &str, channel: &[u8]) -> Option<GroupId> {
    let group = std::str::from_utf8(group_of(prefix, channel)?).ok()?;
    GroupId::new(group, usize::MAX).ok()
}

/// At most this much of a reply is quoted in an error (its status and logs).
const QUOTED: usize = 200;

/// `text`, cut to [`QUOTED`] bytes (on a character boundary).
fn quoted(mut text: String) -> String {
    if text.len() > QUOTED {
        let mut end = QUOTED;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("...");
    }
    text
}

/// Sends subscription changes on a subscriber connection: `SUBSCRIBE`/`UNSUBSCRIBE` in batches,
/// or a cluster's `SSUBSCRIBE`/`SUNSUBSCRIBE` one channel each, and records each command. The
/// confirmations are read by the session's loop.
async fn write_subscriptions<N: Node>(
    bus: &RedisBus<N>,
    sub: &mut Conn,
    changes: super::SubscriptionChanges,
    subs: &mut SubCommands,
) -> Result<(), RedisError> {
    if changes.is_empty() {
        return Ok(());
    }
    let prefix = &bus.settings.prefix;
    let channels = |groups: &[GroupId]| -> Vec<Vec<u8>> {
        groups.iter().map(|g| channel(prefix, g.as_str())).collect()
    };
    let (subscribe, unsubscribe) = (channels(&changes.subscribe), channels(&changes.unsubscribe));
    if bus.cluster {
        for ch in subscribe {
            sub.writer.write_all(&encode(&[b"SSUBSCRIBE", &ch])).await?;
            subs.sent(SubCommand::Subscribe([Bytes::from(ch)].into()));
        }
        for ch in unsubscribe {
            sub.writer
                .write_all(&encode(&[b"SUNSUBSCRIBE", &ch]))
                .await?;
            subs.sent(SubCommand::Unsubscribe([Bytes::from(ch)].into()));
        }
    } else {
        for (verb, list) in [
            (&b"SUBSCRIBE"[..], &subscribe),
            (&b"UNSUBSCRIBE"[..], &unsubscribe),
        ] {
            for chunk in list.chunks(SUBSCRIBE_BATCH) {
                let mut args: Vec<&[u8]> = Vec::with_capacity(chunk.len() + 1);
                args.push(verb);
                args.extend(chunk.iter().map(Vec::as_slice));
                sub.writer.write_all(&encode(&args)).await?;
                let channels = chunk.iter().map(|c| Bytes::copy_from_slice(c)).collect();
                subs.sent(if verb == b"SUBSCRIBE" {
                    SubCommand::Subscribe(channels)
                } else {
                    SubCommand::Unsubscribe(channels)
                });
            }
        }
    }
    sub.writer.flush().await?;
    Ok(())
}

/// Whether an error reply says that the cluster's slots are not where this gateway thinks.
fn is_topology_error(error: &[u8]) -> bool {
    ["MOVED", "ASK", "CLUSTERDOWN", "TRYAGAIN"]
        .iter()
        .any(|code| error.starts_with(code.as_bytes()))
}

fn on_sub_reply<N: Node>(
    bus: &RedisBus<N>,
    shard: &Shard,
    inbox: &Inbox,
    reply: Reply,
    subs: &mut SubCommands,
) -> Result<(), RedisError> {
    let items = match reply {
        Reply::Array(Some(items)) => items,
        Reply::Simple(pong) if pong.eq_ignore_ascii_case(b"PONG") => {
            subs.ponged();
            return Ok(());
        }
        Reply::Error(e) => return on_sub_error(bus, shard, &e, subs),
        other => return Err(RedisError::Unexpected(quoted(format!("{other:?}")))),
    };
    let mut items = items.into_iter();
    let kind = items.next();
    let kind = kind
        .as_ref()
        .and_then(Reply::as_bytes)
        .map(|k| k.to_ascii_lowercase());
    let channel = items.next().and_then(|c| c.as_bytes().cloned());
    let third = items.next();
    match (kind.as_deref(), channel, third) {
        (Some(b"message" | b"smessage"), Some(channel), Some(Reply::Bulk(Some(payload)))) => {
            on_message(bus, shard, inbox, &channel, payload);
        }
        (Some(b"subscribe" | b"ssubscribe"), Some(channel), Some(Reply::Int(n))) => {
            shard.subscribed.store(n.max(0) as u64, Relaxed);
            subs.confirmed(true, &channel);
        }
        (Some(b"unsubscribe" | b"sunsubscribe"), Some(channel), Some(Reply::Int(n))) => {
            shard.subscribed.store(n.max(0) as u64, Relaxed);
            if !subs.confirmed(false, &channel) && bus.cluster {
                // Not an answer: the server dropped the channel, its slot having left this
                // node. The refresh moves the group to its new master; should the topology
                // not show it yet, the group is subscribed here again (and `MOVED` says so).
                tracing::debug!(carrier = bus.carrier, shard = %shard.address, channel = %String::from_utf8_lossy(&channel), "the server unsubscribed a channel (its slot moved)");
                bus.refresh.notify_one();
                subs.retry(&bus.settings.prefix, [channel]);
            }
        }
        (Some(b"pong"), _, _) => subs.ponged(),
        (kind, _, _) => {
            return Err(RedisError::Unexpected(format!(
                "a {:?} push on the subscriber connection",
                kind.map(|k| String::from_utf8_lossy(k).into_owned())
            )))
        }
    }
    Ok(())
}

/// An error answering the subscriber connection's command in front: a refused subscription
/// (an ACL, a limit) is counted per channel and retried at the next heartbeat; a `MOVED` (or
/// another topology error) asks for a refresh, after which the group is retried where it then
/// lives. Neither costs the connection.
fn on_sub_error<N: Node>(
    bus: &RedisBus<N>,
    shard: &Shard,
    error: &[u8],
    subs: &mut SubCommands,
) -> Result<(), RedisError> {
    let topology = bus.cluster && is_topology_error(error);
    if topology {
        bus.refresh.notify_one();
    }
    let cause = quoted(String::from_utf8_lossy(error).into_owned());
    match subs.errored() {
        Some(SubCommand::Subscribe(channels)) => {
            if !topology {
                bus.counters
                    .subscriptions_refused
                    .fetch_add(channels.len() as u64, Relaxed);
                if let Some(suppressed) = shard.may_warn() {
                    tracing::warn!(carrier = bus.carrier, shard = %shard.address, cause, channels = channels.len(), suppressed, "redis refused a subscription");
                }
            }
            subs.retry(&bus.settings.prefix, channels);
            Ok(())
        }
        Some(SubCommand::Unsubscribe(_)) => {
            if !topology {
                if let Some(suppressed) = shard.may_warn() {
                    tracing::warn!(carrier = bus.carrier, shard = %shard.address, cause, suppressed, "redis refused an unsubscription");
                }
            }
            Ok(())
        }
        Some(SubCommand::Ping) | None if topology => Ok(()),
        Some(SubCommand::Ping) | None => Err(RedisError::Server(cause)),
    }
}

/// A message from another gateway (or not): checked, then queued for delivery or dropped and
/// counted.
fn on_message<N: Node>(
    bus: &RedisBus<N>,
    shard: &Shard,
    inbox: &Inbox,
    channel: &Bytes,
    payload: Bytes,
) {
    let c = &bus.counters;
    let payload = match (
        group_of(&bus.settings.prefix, channel),
        bus.origin.open(payload),
    ) {
        (_, Ok(Received::Echo(payload))) => {
            // Control frames come back too: this gateway's own heartbeats, its questions.
            c.count_received(&payload);
            if !protocol::cluster::ControlFrame::is_control(&payload) {
                c.echoes_dropped.fetch_add(1, Relaxed);
            }
            return;
        }
        (Some(group), Ok(Received::Message(payload))) => {
            c.count_received(&payload);
            (group, payload)
        }
        (_, result) => {
            c.messages_in.fetch_add(1, Relaxed);
            c.messages_invalid.fetch_add(1, Relaxed);
            if let Some(suppressed) = shard.may_warn() {
                let cause = result
                    .err()
                    .map(|e| e.to_string())
                    .unwrap_or_else(|| "not a channel of this prefix".into());
                tracing::warn!(carrier = bus.carrier, shard = %shard.address, cause, suppressed, "dropping a redis message that is not a gateway's envelope");
            }
            return;
        }
    };
    match bus.settings.inbound.check(payload.0, payload.1) {
        Ok((_, text)) => inbox.push(channel.slice(bus.settings.prefix.len() + 1..), text),
        Err(Rejected::Invalid) => {
            c.messages_invalid.fetch_add(1, Relaxed);
            if let Some(suppressed) = shard.may_warn() {
                tracing::warn!(carrier = bus.carrier, shard = %shard.address, suppressed, "dropping a redis message that is not UTF-8 or not for a valid group id");
            }
        }
        Err(Rejected::TooLarge) => {
            c.messages_too_large.fetch_add(1, Relaxed);
            if let Some(suppressed) = shard.may_warn() {
                tracing::warn!(carrier = bus.carrier, shard = %shard.address, max = bus.settings.inbound.max_message_size, suppressed, "dropping a redis message larger than --max-message-size");
            }
        }
    }
}

fn on_pub_reply<N: Node>(
    bus: &RedisBus<N>,
    shard: &Shard,
    reply: Reply,
    expected: &mut VecDeque<Expect>,
    in_flight: &mut VecDeque<Outgoing>,
    script: &mut PublishScript,
) -> Result<(), RedisError> {
    match expected.front_mut() {
        None => Err(RedisError::Unexpected(format!(
            "{reply:?} on the publisher connection, answering nothing"
        ))),
        Some(Expect::Publish(n)) => {
            *n -= 1;
            if *n == 0 {
                expected.pop_front();
            }
            if let Reply::Error(e) = reply {
                bus.counters.publishes_dropped.fetch_add(1, Relaxed);
                if bus.cluster && is_topology_error(&e) {
                    bus.refresh.notify_one();
                }
                if let Some(suppressed) = shard.may_warn() {
                    tracing::warn!(carrier = bus.carrier, shard = %shard.address, cause = %String::from_utf8_lossy(&e), suppressed, "redis refused a publish");
                }
            }
            Ok(())
        }
        Some(Expect::History(n)) => {
            *n -= 1;
            if *n == 0 {
                expected.pop_front();
            }
            // Answered: stored (or skipped as stored already), or refused; not to be sent again.
            in_flight.pop_front();
            if let Reply::Error(e) = reply {
                // Not stored, so delivered by no gateway.
                bus.counters.history_publishes_dropped.fetch_add(1, Relaxed);
                if is_noscript(&e) {
                    // The server's script cache was flushed: loaded again once; the calls sent
                    // before it is are lost too (counted as their answers come).
                    script.reload |= !script.loading;
                } else if bus.cluster && is_topology_error(&e) {
                    bus.refresh.notify_one();
                }
                if let Some(suppressed) = shard.may_warn() {
                    tracing::warn!(carrier = bus.carrier, shard = %shard.address, cause = %String::from_utf8_lossy(&e), suppressed, "redis refused a history message");
                }
            }
            Ok(())
        }
        Some(Expect::Load) => {
            expected.pop_front();
            script.loading = false;
            match reply {
                Reply::Bulk(Some(sha)) => script.sha = Some(sha),
                other => {
                    tracing::warn!(carrier = bus.carrier, shard = %shard.address, reply = %quoted(format!("{other:?}")), "redis refused to load the history script again");
                }
            }
            Ok(())
        }
        Some(Expect::Probe) => {
            expected.pop_front();
            *shard.backlog.lock() = match &reply {
                Reply::Bulk(Some(line)) => output_buffer(line),
                _ => None,
            };
            Ok(())
        }
    }
}

/// `omem` of a `CLIENT LIST` line: the bytes of the client's output buffer.
fn output_buffer(line: &[u8]) -> Option<u64> {
    std::str::from_utf8(line)
        .ok()?
        .split_ascii_whitespace()
        .find_map(|field| field.strip_prefix("omem="))?
        .parse()
        .ok()
}

/// A cluster's masters and which serves each slot, as `CLUSTER SLOTS` tells it.
#[derive(PartialEq, Eq)]
struct Discovered {
    /// Sorted by address, so that two answers of the same topology compare equal.
    masters: Vec<Url>,
    /// Slot -> index in `masters` (`u16::MAX`: not served).
    slots: Box<[u16]>,
}

/// Asks the known masters, then the seeds, for the cluster's topology; the first answer wins.
async fn discover<N: Node>(bus: &RedisBus<N>) -> Result<Discovered, RedisError> {
    let mut candidates: Vec<Url> = bus
        .topology
        .read()
        .shards
        .iter()
        .filter(|s| s.up.load(Relaxed))
        .map(|s| s.url.clone())
        .collect();
    for seed in &bus.seeds {
        if !candidates.contains(seed) {
            candidates.push(seed.clone());
        }
    }
    let s = &bus.settings;
    let mut last = RedisError::Closed;
    for url in candidates {
        let asked = async {
            let mut conn = connect(
                &url,
                &format!("{}-topology", s.client_name),
                RespLimits {
                    max_reply: CLUSTER_SLOTS_REPLY_BYTES.max(s.resp.max_reply),
                    ..s.resp
                },
                s.connect_timeout,
            )
            .await?;
            let reply = tokio::time::timeout(s.timeout, conn.request(&[b"CLUSTER", b"SLOTS"]))
                .await
                .map_err(|_| RedisError::Silent(s.timeout))??;
            parse_slots(&url, &reply)
        };
        match asked.await {
            Ok(discovered) => return Ok(discovered),
            Err(e) => {
                tracing::debug!(carrier = bus.carrier, node = %redacted(&url), cause = %e, "no topology from this node");
                last = e;
            }
        }
    }
    Err(last)
}

/// Reads a `CLUSTER SLOTS` reply; the masters' URLs are `asked` with their host and port.
fn parse_slots(asked: &Url, reply: &Reply) -> Result<Discovered, RedisError> {
    let entries = match reply {
        Reply::Array(Some(entries)) => entries,
        Reply::Error(e) => return Err(RedisError::Server(String::from_utf8_lossy(e).into_owned())),
        other => {
            return Err(RedisError::Unexpected(format!(
                "CLUSTER SLOTS answered {other:?}"
            )))
        }
    };
    let bad = || RedisError::Unexpected("a malformed CLUSTER SLOTS entry".into());
    let mut ranges: Vec<(Url, u16, u16)> = Vec::new();
    for entry in entries {
        let Reply::Array(Some(items)) = entry else {
            return Err(bad());
        };
        let (Some(start), Some(end), Some(Reply::Array(Some(master)))) = (
            items.first().and_then(Reply::as_int),
            items.get(1).and_then(Reply::as_int),
            items.get(2),
        ) else {
            return Err(bad());
        };
        let host = master
            .first()
            .and_then(Reply::as_bytes)
            .and_then(|h| std::str::from_utf8(h).ok())
            .ok_or_else(bad)?;
        let port = master.get(1).and_then(Reply::as_int).ok_or_else(bad)?;
        if !(0..SLOTS as i64).contains(&start) || !(start..SLOTS as i64).contains(&end) {
            return Err(bad());
        }
        let port = u16::try_from(port).map_err(|_| bad())?;
        let mut url = asked.clone();
        // An empty host (or `?`) is the node that was asked.
        if !host.is_empty() && host != "?" {
            let host = if host.contains(':') && !host.starts_with('[') {
                format!("[{host}]")
            } else {
                host.to_owned()
            };
            url.set_host(Some(&host)).map_err(|_| bad())?;
        }
        url.set_port(Some(port)).map_err(|()| bad())?;
        ranges.push((url, start as u16, end as u16));
    }
    let mut masters: Vec<Url> = ranges.iter().map(|(url, _, _)| url.clone()).collect();
    masters.sort_by_key(Url::to_string);
    masters.dedup();
    if masters.is_empty() {
        return Err(RedisError::Server("the cluster serves no slot".into()));
    }
    let mut slots = vec![u16::MAX; SLOTS].into_boxed_slice();
    for (url, start, end) in ranges {
        let index = masters.iter().position(|m| *m == url).unwrap_or_default() as u16;
        for slot in start..=end {
            slots[usize::from(slot)] = index;
        }
    }
    Ok(Discovered { masters, slots })
}

/// Queries the topology and applies it if it changed.
async fn refresh<N: Node>(
    bus: &Arc<RedisBus<N>>,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let discovered = tokio::select! {
        d = discover(bus) => d,
        _ = shutdown.cancelled() => return,
    };
    match discovered {
        Ok(d) => apply_topology(bus, d, shutdown, tasks),
        Err(e) => {
            tracing::debug!(carrier = bus.carrier, cause = %e, "cannot refresh the cluster's topology");
        }
    }
}

/// Makes `discovered` the topology, if it differs: masters still there keep their connections,
/// groups whose slot changed owner move (an unsubscribe on the old, a subscribe on the new),
/// masters gone are stopped, new ones started.
fn apply_topology<N: Node>(
    bus: &Arc<RedisBus<N>>,
    discovered: Discovered,
    shutdown: &CancellationToken,
    tasks: &mut JoinSet<()>,
) {
    let _routing = bus.routing.lock();
    let old = bus.topology.read().clone();
    let unchanged = old.slots.as_deref() == Some(&discovered.slots[..])
        && old.shards.len() == discovered.masters.len()
        && old
            .shards
            .iter()
            .zip(&discovered.masters)
            .all(|(s, url)| s.url == *url);
    if unchanged {
        return;
    }
    let shards: Vec<Arc<Shard>> = discovered
        .masters
        .iter()
        .map(|url| {
            old.shards
                .iter()
                .find(|s| s.url == *url)
                .cloned()
                .unwrap_or_else(|| bus.settings.shard(url.clone(), shutdown.child_token()))
        })
        .collect();
    let new = Arc::new(Topology {
        shards,
        slots: Some(discovered.slots),
    });
    let mut wanted: Vec<(GroupId, Option<Arc<Shard>>)> = Vec::new();
    for shard in &old.shards {
        let interest = shard.interest.lock();
        wanted.extend(
            interest
                .wanted()
                .iter()
                .map(|g| (g.clone(), Some(shard.clone()))),
        );
    }
    wanted.extend(bus.unrouted.lock().drain().map(|g| (g, None)));
    for (group, from) in wanted {
        let ch = channel(&bus.settings.prefix, group.as_str());
        let to = new
            .index_of(group.as_str(), &ch)
            .map(|i| new.shards[i].clone());
        if let (Some(from), Some(to)) = (&from, &to) {
            if Arc::ptr_eq(from, to) {
                continue;
            }
        }
        if let Some(from) = &from {
            from.interest.lock().record(group.clone(), false);
        }
        match &to {
            Some(to) => to.interest.lock().record(group, true),
            None => {
                bus.unrouted.lock().insert(group);
            }
        }
    }
    *bus.topology.write() = new.clone();
    for shard in &old.shards {
        if !new.shards.iter().any(|s| Arc::ptr_eq(s, shard)) {
            shard.stop.cancel();
        } else {
            shard.changed.notify_one();
        }
    }
    let addresses: Vec<&str> = new.shards.iter().map(|s| s.address.as_str()).collect();
    tracing::info!(carrier = bus.carrier, masters = ?addresses, "redis cluster topology");
    for shard in &new.shards {
        spawn_shard(bus, shard.clone(), tasks);
    }
    if let Some(first) = new.shards.first() {
        bus.shard_changed(first, None);
    }
}

/// Addresses as they may be shown: without passwords.
fn shown(urls: &[Url]) -> Vec<String> {
    urls.iter().map(redacted).collect()
}

impl std::fmt::Debug for Targets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Targets::Shards(urls) => f.debug_tuple("Shards").field(&shown(urls)).finish(),
            Targets::Cluster(urls) => f.debug_tuple("Cluster").field(&shown(urls)).finish(),
        }
    }
}

impl std::fmt::Debug for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shard")
            .field("address", &self.address)
            .field("up", &self.up)
            .field("subscribed", &self.subscribed)
            .finish_non_exhaustive()
    }
}

impl<N> std::fmt::Debug for RedisBus<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("carrier", &self.carrier)
            .field("seeds", &shown(&self.seeds))
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Discovered {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Discovered")
            .field("masters", &shown(&self.masters))
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Reply {
        Reply::Bulk(Some(Bytes::copy_from_slice(text.as_bytes())))
    }

    #[test]
    fn cluster_slots_become_a_slot_table() {
        let asked: Url = "redis+cluster://:pw@10.0.0.1:7000".parse().expect("url");
        let entry = |start, end, host: &str, port| {
            Reply::Array(Some(vec![
                Reply::Int(start),
                Reply::Int(end),
                Reply::Array(Some(vec![bulk(host), Reply::Int(port), bulk("id")])),
            ]))
        };
        let reply = Reply::Array(Some(vec![
            entry(5461, 16383, "10.0.0.2", 7001),
            entry(0, 5460, "", 7000),
        ]));
        let d = parse_slots(&asked, &reply).expect("valid");
        let shown: Vec<String> = d.masters.iter().map(redacted).collect();
        assert_eq!(
            shown,
            [
                "redis+cluster://:***@10.0.0.1:7000",
                "redis+cluster://:***@10.0.0.2:7001"
            ]
        );
        assert_eq!(
            (d.slots[0], d.slots[5460], d.slots[5461], d.slots[16383]),
            (0, 0, 1, 1)
        );
        let same = Reply::Array(Some(vec![
            entry(0, 5460, "10.0.0.1", 7000),
            entry(5461, 16383, "10.0.0.2", 7001),
        ]));
        assert_eq!(
            parse_slots(&asked, &same).expect("valid"),
            d,
            "order does not matter"
        );

        let partial = Reply::Array(Some(vec![entry(0, 10, "h", 1)]));
        assert_eq!(
            parse_slots(&asked, &partial).expect("valid").slots[11],
            u16::MAX
        );
        for bad in [
            Reply::Array(Some(vec![entry(0, 16384, "h", 1)])),
            Reply::Array(Some(vec![entry(10, 5, "h", 1)])),
            Reply::Array(Some(vec![entry(0, 1, "h", 70000)])),
            Reply::Array(Some(vec![Reply::Int(3)])),
            Reply::Array(Some(vec![])),
            Reply::Error(Bytes::from_static(
                b"ERR This instance has cluster support disabled",
            )),
        ] {
            assert!(parse_slots(&asked, &bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_output_buffer_comes_from_client_list() {
        let line = b"id=7 addr=127.0.0.1:5000 name=gp-x-sub omem=20504 tot-mem=42 cmd=ssubscribe\n";
        assert_eq!(output_buffer(line), Some(20504));
        assert_eq!(output_buffer(b"id=7 addr=x"), None);
        assert_eq!(output_buffer(b"omem=lots"), None);
    }

    #[test]
    fn topology_errors_are_recognized() {
        assert!(is_topology_error(b"MOVED 3999 127.0.0.1:6381"));
        assert!(is_topology_error(b"CLUSTERDOWN The cluster is down"));
        assert!(!is_topology_error(b"ERR unknown command"));
    }

    /// A node with nothing to deliver to, for the functions that only need a bus.
    struct NoNode;

    impl Node for NoNode {
        async fn deliver(&self, _: GroupName<'_>, _: Payload) {}
        fn subscriptions(&self, _: bool) -> super::super::SubscriptionChanges {
            Default::default()
        }
        fn subscriptions_lost(&self) {}
        fn wanted(&self) -> usize {
            0
        }
        async fn subscriptions_changed(&self) {
            std::future::pending().await
        }
    }

    fn test_bus(cluster: bool) -> RedisBus<NoNode> {
        let url: Url = "redis://127.0.0.1:1".parse().expect("url");
        let address = if cluster {
            BusAddress::RedisCluster(vec![url.clone()])
        } else {
            BusAddress::Redis(vec![url.clone()])
        };
        RedisCarrier::new(&address, &GatewayConfig::default())
            .expect("a redis address")
            .into_bus(Arc::new(NoNode))
    }

    fn id(name: &str) -> GroupId {
        GroupId::new(name, 64).expect("group id")
    }

    fn confirmation(kind: &str, ch: &Bytes, n: i64) -> Reply {
        Reply::Array(Some(vec![
            bulk(kind),
            Reply::Bulk(Some(ch.clone())),
            Reply::Int(n),
        ]))
    }

    /// A shard that wants `groups`, its inbox, and the channels of the groups.
    fn wanting(groups: &[&str]) -> (Arc<Shard>, Inbox, Vec<Bytes>) {
        let shard = Shard::new(
            "redis://127.0.0.1:1".parse().expect("url"),
            1,
            usize::MAX,
            CancellationToken::new(),
        );
        for g in groups {
            shard.interest.lock().record(id(g), true);
        }
        let (tx, _) = mpsc::channel(1);
        let inbox = Inbox {
            tx,
            bytes: Arc::default(),
            taken: Arc::default(),
        };
        let channels = groups
            .iter()
            .map(|g| Bytes::from(channel("gp", g)))
            .collect();
        (shard, inbox, channels)
    }

    fn refresh_asked<N: Node>(bus: &RedisBus<N>) -> bool {
        use futures_util::FutureExt;
        bus.refresh.notified().now_or_never().is_some()
    }

    #[test]
    fn a_subscribe_is_answered_once_every_channel_is_confirmed_or_refused() {
        let bus = test_bus(false);
        let (shard, inbox, channels) = wanting(&["a", "b", "c"]);
        let mut subs = SubCommands::default();
        assert!(
            subs.answered_through(0),
            "nothing sent, nothing to wait for"
        );
        subs.sent(SubCommand::Subscribe(
            [channels[0].clone(), channels[1].clone()].into(),
        ));
        subs.sent(SubCommand::Ping);
        subs.sent(SubCommand::Unsubscribe([channels[0].clone()].into()));
        subs.sent(SubCommand::Subscribe([channels[2].clone()].into()));
        assert_eq!(
            subs.subscribes_sent, 2,
            "pings and unsubscribes are not counted"
        );
        let mark = subs.subscribes_sent;

        let reply = |r: Reply, subs: &mut SubCommands| {
            on_sub_reply(&bus, &shard, &inbox, r, subs).expect("an answer");
        };
        reply(confirmation("subscribe", &channels[0], 1), &mut subs);
        assert!(
            !subs.answered_through(1),
            "one of its two channels confirmed"
        );
        reply(confirmation("subscribe", &channels[1], 2), &mut subs);
        assert!(subs.answered_through(1) && !subs.answered_through(mark));
        reply(Reply::Simple(Bytes::from_static(b"PONG")), &mut subs);
        reply(confirmation("unsubscribe", &channels[0], 1), &mut subs);
        assert!(
            !subs.answered_through(mark),
            "an unsubscribe answers no subscribe"
        );
        // Refused (an ACL, say): answered all the same, and retried later.
        reply(
            Reply::Error(Bytes::from_static(b"NOPERM no access")),
            &mut subs,
        );
        assert!(subs.answered_through(mark));
        assert!(subs.pending.is_empty(), "{:?}", subs.pending);
        assert_eq!(bus.counters.subscriptions_refused.load(Relaxed), 1);
    }

    #[test]
    fn cluster_replies_map_to_their_commands_and_cost_no_connection() {
        let bus = test_bus(true);
        let (shard, inbox, channels) = wanting(&["g"]);
        let ch = &channels[0];
        let mut subs = SubCommands::default();
        // Leave, join, leave, all written before the first confirmation is read.
        subs.sent(SubCommand::Unsubscribe([ch.clone()].into()));
        subs.sent(SubCommand::Subscribe([ch.clone()].into()));
        subs.sent(SubCommand::Unsubscribe([ch.clone()].into()));
        subs.sent(SubCommand::Ping);
        for reply in [
            confirmation("sunsubscribe", ch, 0),
            confirmation("ssubscribe", ch, 1),
            confirmation("sunsubscribe", ch, 0),
            Reply::Array(Some(vec![bulk("pong"), bulk("")])),
        ] {
            on_sub_reply(&bus, &shard, &inbox, reply, &mut subs).expect("an answer");
        }
        assert!(subs.pending.is_empty(), "{:?}", subs.pending);
        assert!(!refresh_asked(&bus) && subs.retry.is_empty());

        // The server drops the channel (its slot moved): a refresh, and the group retried
        // should the topology still put it here.
        on_sub_reply(
            &bus,
            &shard,
            &inbox,
            confirmation("sunsubscribe", ch, 0),
            &mut subs,
        )
        .expect("not an error");
        assert!(refresh_asked(&bus));
        assert_eq!(subs.take_retries(&bus, &shard), [id("g")]);

        // MOVED answering a subscription: a refresh and a retry, not a refusal.
        subs.sent(SubCommand::Subscribe([ch.clone()].into()));
        let moved = Reply::Error(Bytes::from_static(b"MOVED 3999 127.0.0.1:7001"));
        on_sub_reply(&bus, &shard, &inbox, moved.clone(), &mut subs).expect("not an error");
        assert!(refresh_asked(&bus));
        assert_eq!(bus.counters.subscriptions_refused.load(Relaxed), 0);
        // Moved elsewhere by the refresh meanwhile: not retried here.
        shard.interest.lock().record(id("g"), false);
        assert!(subs.take_retries(&bus, &shard).is_empty());
        // A MOVED answering nothing asks for a refresh only.
        on_sub_reply(&bus, &shard, &inbox, moved, &mut subs).expect("not an error");
        assert!(refresh_asked(&bus));
    }

    #[test]
    fn a_refused_batch_counts_each_channel_and_is_retried() {
        let bus = test_bus(false);
        let (shard, inbox, channels) = wanting(&["g", "h", "i"]);
        let mut subs = SubCommands::default();
        subs.sent(SubCommand::Subscribe(channels[..2].to_vec().into()));
        subs.sent(SubCommand::Subscribe(channels[2..].to_vec().into()));
        subs.sent(SubCommand::Unsubscribe(channels[2..].to_vec().into()));
        let refused = || Reply::Error(Bytes::from_static(b"NOPERM no permissions"));
        on_sub_reply(&bus, &shard, &inbox, refused(), &mut subs).expect("kept");
        let ch = &channels[2];
        on_sub_reply(
            &bus,
            &shard,
            &inbox,
            confirmation("subscribe", ch, 1),
            &mut subs,
        )
        .expect("an answer");
        on_sub_reply(&bus, &shard, &inbox, refused(), &mut subs).expect("kept");
        assert!(subs.pending.is_empty());
        assert_eq!(
            bus.counters.subscriptions_refused.load(Relaxed),
            2,
            "per channel, and not for the refused unsubscription"
        );
        let mut retried = subs.take_retries(&bus, &shard);
        retried.sort_by(|a, b| a.as_str().cmp(b.as_str()));
        assert_eq!(retried, [id("g"), id("h")]);
        // An error answering nothing is the server's.
        assert!(on_sub_reply(&bus, &shard, &inbox, refused(), &mut subs).is_err());
    }

    #[test]
    fn groups_no_master_serves_make_the_bus_down() {
        let bus = test_bus(true);
        let (shard, _, _) = wanting(&[]);
        shard.up.store(true, Relaxed);
        let mut slots = vec![0; SLOTS].into_boxed_slice();
        slots[..10].fill(u16::MAX);
        *bus.topology.write() = Arc::new(Topology {
            shards: vec![shard],
            slots: Some(slots),
        });
        assert!(bus.status().up, "unserved slots no group wanted here is on");
        bus.unrouted(id("g"), true);
        let status = bus.status();
        assert!(!status.up);
        assert_eq!(
            status.last_error.as_deref(),
            Some("1 wanted groups are on slots no master serves (10 of 16384 slots unserved)")
        );
        bus.unrouted(id("g"), false);
        assert!(bus.status().up);
    }

    #[test]
    fn own_positioned_messages_are_delivered_and_plain_echoes_dropped() {
        let bus = test_bus(false);
        let (shard, _, channels) = wanting(&["g"]);
        let (tx, mut rx) = mpsc::channel(4);
        let inbox = Inbox {
            tx,
            bytes: Arc::default(),
            taken: Arc::default(),
        };
        let position = protocol::history::Position {
            offset: 7,
            epoch: protocol::history::Epoch::new("e1").expect("epoch"),
        };
        // As the publish script sends it: the envelope (sequence 0), then the frame.
        let mut own = Envelope::header(bus.origin.node_id(), 0).to_vec();
        own.extend_from_slice(&protocol::history::Positioned::encode(&position, b"hi"));
        on_message(&bus, &shard, &inbox, &channels[0], Bytes::from(own));
        let (group, payload) = rx.try_recv().expect("delivered");
        assert_eq!(&group[..], b"g");
        assert!(
            matches!(&payload, Payload::Positioned(p, text) if *p == position && text.as_str() == "hi"),
            "{payload:?}"
        );
        on_message(
            &bus,
            &shard,
            &inbox,
            &channels[0],
            bus.origin.stamp(b"plain"),
        );
        assert!(rx.try_recv().is_err(), "a plain echo is dropped");
        let c = &bus.counters;
        assert_eq!(
            (
                c.positioned_in.load(Relaxed),
                c.echoes_dropped.load(Relaxed),
                c.messages_in.load(Relaxed)
            ),
            (1, 1, 1)
        );
    }

    fn history_call() -> Outgoing {
        let keys = HistoryKeys::new("gp", "g");
        let policy = HistoryPolicy {
            size: 1,
            ttl: Duration::from_secs(1),
        };
        Outgoing::History(
            publish_call(&keys, b"h", b"x", policy, &new_epoch(), b"PUBLISH"),
            None,
        )
    }

    #[test]
    fn a_down_shard_keeps_history_publishes_within_the_queue_bound() {
        let bus = test_bus(false);
        let shard = Shard::new(
            "redis://127.0.0.1:1".parse().expect("url"),
            8,
            usize::MAX,
            CancellationToken::new(),
        );
        let mut rx = shard.publish_rx.lock().take().expect("its receiver");
        let queue = &shard.queue;
        let held_bound = bus.settings.queue;
        for out in [
            Outgoing::Publish(Bytes::from_static(b"p")),
            history_call(),
            history_call(),
        ] {
            let len = out.len();
            assert!(queue.push(out, len));
        }
        let mut held = VecDeque::new();
        drain(&bus, &shard, &mut rx, &mut held);
        assert_eq!(held.len(), 2);
        assert_eq!(bus.counters.publishes_dropped.load(Relaxed), 1);
        assert_eq!(bus.counters.history_publishes_dropped.load(Relaxed), 0);
        // Past the bound, dropped and counted.
        held.extend((0..held_bound).map(|_| history_call()));
        let out = history_call();
        let len = out.len();
        assert!(queue.push(out, len));
        drain(&bus, &shard, &mut rx, &mut held);
        assert_eq!(held.len(), held_bound + 2);
        assert_eq!(bus.counters.history_publishes_dropped.load(Relaxed), 1);
    }

    #[test]
    fn unanswered_history_publishes_go_again_first_with_their_numbers() {
        let bus = test_bus(false);
        let len = history_call().len();
        let shard = Shard::new(
            "redis://127.0.0.1:1".parse().expect("url"),
            8,
            2 * len + len / 2,
            CancellationToken::new(),
        );
        let numbered = |id| match history_call() {
            Outgoing::History(call, _) => Outgoing::History(call, Some(id)),
            other => other,
        };
        let mut in_flight: VecDeque<Outgoing> = [numbered(1), numbered(2)].into();
        let mut held: VecDeque<Outgoing> = [history_call()].into();
        requeue(&bus, &shard, &mut in_flight, &mut held);
        let ids: Vec<Option<u64>> = held
            .iter()
            .map(|out| match out {
                Outgoing::History(_, id) => *id,
                Outgoing::Publish(_) => None,
            })
            .collect();
        assert_eq!(
            ids,
            [Some(1), Some(2), None],
            "the unanswered ones first, in order"
        );
        assert!(in_flight.is_empty());
        // Their bytes count against the bound again (released when written once more).
        assert!(
            !shard.queue.push(numbered(3), len),
            "the bound counts the held bytes"
        );
        // Past `--link-queue-frames`, dropped and counted.
        let mut in_flight: VecDeque<Outgoing> =
            (0..bus.settings.queue as u64 + 2).map(numbered).collect();
        requeue(&bus, &shard, &mut in_flight, &mut held);
        assert_eq!(held.len(), bus.settings.queue + 3, "what was held stays");
        assert_eq!(bus.counters.history_publishes_dropped.load(Relaxed), 2);
    }

    #[test]
    fn a_noscript_loses_its_publish_and_loads_the_script_once() {
        let bus = test_bus(false);
        let (shard, _, _) = wanting(&[]);
        let mut expected = VecDeque::new();
        expect_publish(&mut expected, false);
        expect_publish(&mut expected, true);
        expect_publish(&mut expected, true);
        expect_publish(&mut expected, true);
        assert_eq!(
            expected,
            [Expect::Publish(1), Expect::History(3)],
            "runs of one kind share an entry"
        );
        let mut script = PublishScript::default();
        let mut in_flight: VecDeque<Outgoing> = (0..3).map(|_| history_call()).collect();
        let noscript = || Reply::Error(Bytes::from_static(b"NOSCRIPT No matching script."));
        for reply in [Reply::Int(1), Reply::Int(17), noscript()] {
            on_pub_reply(
                &bus,
                &shard,
                reply,
                &mut expected,
                &mut in_flight,
                &mut script,
            )
            .expect("answers");
        }
        assert_eq!(in_flight.len(), 1, "each answered history call leaves");
        assert!(script.reload);
        // The session sends `SCRIPT LOAD` (the reload asked and not answered yet).
        script.reload = false;
        script.loading = true;
        expected.push_back(Expect::Load);
        on_pub_reply(
            &bus,
            &shard,
            noscript(),
            &mut expected,
            &mut in_flight,
            &mut script,
        )
        .expect("answers");
        assert!(in_flight.is_empty());
        assert!(!script.reload, "one load at a time");
        let sha = Bytes::from_static(b"0123456789012345678901234567890123456789");
        on_pub_reply(
            &bus,
            &shard,
            Reply::Bulk(Some(sha.clone())),
            &mut expected,
            &mut in_flight,
            &mut script,
        )
        .expect("answers");
        assert_eq!((script.sha, script.loading), (Some(sha), false));
        assert!(expected.is_empty());
        let c = &bus.counters;
        assert_eq!(
            (
                c.history_publishes_dropped.load(Relaxed),
                c.publishes_dropped.load(Relaxed)
            ),
            (2, 0)
        );
    }

    #[test]
    fn routing_without_targets_drops() {
        let topology = Topology::default();
        assert_eq!(topology.index_of("g", b"gp:g"), None);
        let mut slots = vec![u16::MAX; SLOTS].into_boxed_slice();
        slots[usize::from(slot_of(b"gp:g"))] = 0;
        let cluster = Topology {
            shards: vec![Shard::new(
                "redis://a".parse().expect("url"),
                1,
                usize::MAX,
                CancellationToken::new(),
            )],
            slots: Some(slots),
        };
        assert_eq!(cluster.index_of("g", b"gp:g"), Some(0));
        assert_eq!(cluster.index_of("h", b"gp:h"), None, "a slot nobody serves");
    }
}
