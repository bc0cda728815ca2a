//! The PHP Channel server's state, shared by every PHP connection: channel -> subscribed
//! connections (with a round-robin cursor for `publishLoop`), and the bounded queues of
//! `enqueue` with their watchers and pending reserves.
//!
//! PHP channel names are their own namespace: only `send_to_group` is bridged to the gateways'
//! groups ([`PhpHub::bridge_group_send`]), and the gateways' cluster topics are never seen here.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use protocol::php::{server_message, PhpKey, PhpValue, ServerMessage};

use crate::registry::{LinkHandle, LinkId};
use crate::stats::BrokerStats;

/// The event PHP WebSocket workers subscribe to for sends to a group (the seed's convention).
pub const SEND_TO_GROUP: &[u8] = b"send_to_group";

#[derive(Debug)]
struct PhpChannel {
    subscribers: Vec<LinkHandle>,
    /// The subscriber the next `publishLoop` goes to (modulo their number).
    next: AtomicUsize,
}

#[derive(Debug, Default)]
struct PhpQueue {
    /// Framed `queue` messages, oldest first.
    items: VecDeque<Bytes>,
    watchers: HashSet<LinkId>,
    /// Connections that reserved an item and wait for one, in order.
    pulls: VecDeque<LinkHandle>,
}

impl PhpQueue {
    fn is_unused(&self) -> bool {
        self.watchers.is_empty() && self.items.is_empty()
    }

    /// Hands queued items to waiting reserves, one each.
    fn dispatch(&mut self, stats: &BrokerStats) {
        while !self.items.is_empty() {
            let Some(pull) = self.pulls.pop_front() else {
                return;
            };
            if pull.is_slow() {
                continue;
            }
            if let Some(item) = self.items.pop_front() {
                pull.send(item, stats);
            }
        }
    }
}

#[derive(Debug)]
pub struct PhpHub {
    channels: RwLock<HashMap<Bytes, PhpChannel>>,
    queues: Mutex<HashMap<Bytes, PhpQueue>>,
    /// Subscriptions to `send_to_group`: the one atomic the gateways' publish path reads while
    /// no PHP worker listens.
    group_listeners: AtomicUsize,
    stats: Arc<BrokerStats>,
    max_frame_size: usize,
    queue_max_items: usize,
}

impl PhpHub {
    pub fn new(stats: Arc<BrokerStats>, max_frame_size: usize, queue_max_items: usize) -> Self {
        PhpHub {
            channels: RwLock::new(HashMap::new()),
            queues: Mutex::new(HashMap::new()),
            group_listeners: AtomicUsize::new(0),
            stats,
            max_frame_size,
            queue_max_items,
        }
    }

    /// Adds `conn` to `channel`. The caller guarantees it is not already subscribed.
    pub fn subscribe(&self, conn: &LinkHandle, channel: Bytes) {
        if channel.as_ref() == SEND_TO_GROUP {
            self.group_listeners.fetch_add(1, Relaxed);
        }
        self.channels
            .write()
            .entry(channel)
            .or_insert_with(|| PhpChannel {
                subscribers: Vec::with_capacity(1),
                next: AtomicUsize::new(0),
            })
            .subscribers
            .push(conn.clone());
    }

    /// Removes `conn` from `channel`, where the caller knows it is subscribed.
    pub fn unsubscribe(&self, conn: LinkId, channel: &[u8]) {
        let mut channels = self.channels.write();
        let Some(entry) = channels.get_mut(channel) else {
            return;
        };
        if let Some(pos) = entry.subscribers.iter().position(|s| s.id == conn) {
            // `remove`, not `swap_remove`: publishLoop's turn order stays the subscription order.
            entry.subscribers.remove(pos);
            if channel == SEND_TO_GROUP {
                self.group_listeners.fetch_sub(1, Relaxed);
            }
        }
        if entry.subscribers.is_empty() {
            channels.remove(channel);
            server_kit::memory::shrink_if_sparse(&mut channels);
        }
    }

    /// Removes every trace of a closing connection.
    pub fn remove_conn<'a>(
        &self,
        conn: LinkId,
        subscribed: impl IntoIterator<Item = &'a Bytes>,
        watching: impl IntoIterator<Item = &'a Bytes>,
    ) {
        for channel in subscribed {
            self.unsubscribe(conn, channel);
        }
        for channel in watching {
            self.unwatch(conn, channel);
        }
    }

    /// A framed message, or `None` (counted) when it would exceed the frame limit.
    fn frame(&self, kind: ServerMessage, channel: &[u8], data: &PhpValue) -> Option<Bytes> {
        let frame = server_message(kind, channel, data);
        if frame.len() > self.max_frame_size {
            self.stats.php_dropped.fetch_add(1, Relaxed);
            tracing::warn!(
                channel = %String::from_utf8_lossy(channel),
                len = frame.len(),
                max = self.max_frame_size,
                "PHP message dropped: larger than link-max-frame-size"
            );
            return None;
        }
        Some(frame)
    }

    /// `event` to every subscriber of `channel`; returns how many took it.
    pub fn publish(&self, channel: &[u8], data: &PhpValue) -> usize {
        self.stats.php_publishes.fetch_add(1, Relaxed);
        let channels = self.channels.read();
        let Some(entry) = channels.get(channel) else {
            return 0;
        };
        let Some(frame) = self.frame(ServerMessage::Event, channel, data) else {
            return 0;
        };
        entry
            .subscribers
            .iter()
            .filter(|s| s.send(frame.clone(), &self.stats))
            .count()
    }

    /// `event` to the next subscriber of `channel` in turn.
    pub fn publish_loop(&self, channel: &[u8], data: &PhpValue) -> bool {
        self.stats.php_publishes.fetch_add(1, Relaxed);
        let channels = self.channels.read();
        let Some(entry) = channels.get(channel) else {
            return false;
        };
        let Some(frame) = self.frame(ServerMessage::Event, channel, data) else {
            return false;
        };
        let turn = entry.next.fetch_add(1, Relaxed) % entry.subscribers.len();
        entry.subscribers[turn].send(frame, &self.stats)
    }

    /// A gateway's send to `group`: to PHP subscribers of `send_to_group` as the seed's array,
    /// when there are any (one atomic read otherwise).
    /// Whether a gateway's publish on `channel` goes to PHP clients too: a group's (never a
    /// cluster topic's), while one of them listens to `send_to_group`.
    pub fn bridges(&self, channel: &[u8]) -> bool {
        self.group_listeners.load(Relaxed) > 0
            && !protocol::cluster::topic::is_cluster_topic(channel)
    }

    pub fn bridge_group_send(&self, group: &[u8], message: &[u8]) {
        if !self.bridges(group) {
            return;
        }
        let data = PhpValue::Array(vec![
            (
                PhpKey::Str(Bytes::from_static(b"group_id")),
                PhpValue::str(group),
            ),
            (
                PhpKey::Str(Bytes::from_static(b"message")),
                PhpValue::str(message),
            ),
        ]);
        self.publish(SEND_TO_GROUP, &data);
    }

    pub fn watch(&self, conn: LinkId, channel: Bytes) {
        self.queues
            .lock()
            .entry(channel)
            .or_default()
            .watchers
            .insert(conn);
    }

    pub fn unwatch(&self, conn: LinkId, channel: &[u8]) {
        let mut queues = self.queues.lock();
        let Some(queue) = queues.get_mut(channel) else {
            return;
        };
        queue.watchers.remove(&conn);
        queue.pulls.retain(|p| p.id != conn);
        if queue.is_unused() {
            queues.remove(channel);
        }
    }

    /// Queues `data` on `channel` (dropped and counted when the queue is full), and hands it to
    /// a waiting reserve if there is one.
    pub fn enqueue(&self, channel: &[u8], data: &PhpValue) {
        let Some(frame) = self.frame(ServerMessage::Queue, channel, data) else {
            return;
        };
        let mut queues = self.queues.lock();
        let queue = queues.entry(Bytes::copy_from_slice(channel)).or_default();
        if queue.items.len() >= self.queue_max_items {
            self.stats.php_queue_drops.fetch_add(1, Relaxed);
            tracing::warn!(
                queue = %String::from_utf8_lossy(channel),
                max = self.queue_max_items,
                "PHP queue full: item dropped"
            );
            return;
        }
        queue.items.push_back(frame);
        queue.dispatch(&self.stats);
    }

    /// One pending reserve of `conn` on each queue it watches (a second reserve before the first
    /// is served changes nothing), served at once where an item waits.
    pub fn reserve<'a>(&self, conn: &LinkHandle, watching: impl IntoIterator<Item = &'a Bytes>) {
        let mut queues = self.queues.lock();
        for channel in watching {
            if let Some(queue) = queues.get_mut(channel.as_ref()) {
                if !queue.pulls.iter().any(|p| p.id == conn.id) {
                    queue.pulls.push_back(conn.clone());
                }
                queue.dispatch(&self.stats);
            }
        }
    }
}
