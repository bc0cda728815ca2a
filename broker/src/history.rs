//! Channel histories kept in the broker's memory, for gateways' groups with history.
//!
//! A channel's history starts with the first publish (or read) that carries history options:
//! it gets a random epoch and offsets from 1. Each publish takes the next offset and is kept
//! while it is among the channel's last `size` messages and younger than `ttl`. A channel whose
//! newest message is older than `ttl` has lost its history: the next publish starts a new
//! epoch (as a Redis key that expired would).
//!
//! Bounded as a whole: at most `--history-max-channels` channels and `--history-max-bytes`
//! bytes of payload; past either, the channels created first lose their history (their next
//! message starts a new epoch), each counted in `history_evictions`. A sweep every second drops
//! expired messages, so memory follows the TTLs even on channels nobody publishes to.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use protocol::history::{Epoch, Position};
use protocol::link::{HistoryOptions, HistoryReply, HistoryRequest};
use tokio::time::Instant;

/// How often expired history is dropped.
pub const HISTORY_SWEEP: Duration = Duration::from_secs(1);

/// Most messages a channel keeps, whatever a gateway asks.
pub use protocol::history::MAX_HISTORY_SIZE;

/// The store's bounds (`--history-max-channels`, `--history-max-bytes`).
#[derive(Debug, Clone, Copy)]
pub struct HistoryLimits {
    pub max_channels: usize,
    pub max_bytes: usize,
}

/// What the store holds, for the broker's stats.
#[derive(Debug, Default)]
pub struct HistoryCounters {
    pub channels: AtomicU64,
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    /// Channels whose history was dropped to stay within the bounds.
    pub evictions: AtomicU64,
}

#[derive(Debug)]
pub struct HistoryStore {
    limits: HistoryLimits,
    inner: Mutex<Inner>,
    pub counters: HistoryCounters,
}

#[derive(Debug, Default)]
struct Inner {
    channels: HashMap<Bytes, Channel>,
    /// Channels in the order their history started, with that start's generation (a stale
    /// entry names a history since removed): who is evicted first.
    order: VecDeque<(Bytes, u64)>,
    generation: u64,
    bytes: usize,
    messages: usize,
    /// Per publishing gateway process, the last publish id stored: a publish sent again after
    /// a lost acknowledgement is not stored twice.
    origins: HashMap<u64, u64>,
}

/// Publishing gateways remembered at most (a gateway restarted is a new one); past it the
/// table starts over, and a publish sent again right then could be stored twice.
pub const MAX_ORIGINS: usize = 65_536;

#[derive(Debug)]
struct Channel {
    epoch: Epoch,
    generation: u64,
    top: u64,
    size: u32,
    ttl: Duration,
    /// When the newest message was published (or the history started).
    touched: Instant,
    messages: VecDeque<Entry>,
}

#[derive(Debug)]
struct Entry {
    offset: u64,
    at: Instant,
    payload: Bytes,
}

impl HistoryStore {
    pub fn new(limits: HistoryLimits) -> HistoryStore {
        HistoryStore {
            limits,
            inner: Mutex::new(Inner::default()),
            counters: HistoryCounters::default(),
        }
    }

    /// Stores `payload` as `channel`'s next message; returns its position.
    pub fn append(&self, channel: &Bytes, payload: Bytes, options: HistoryOptions) -> Position {
        self.append_once(channel, payload, options, None)
            .expect("a publish without identity is always stored")
    }

    /// [`HistoryStore::append`], once per `(origin, id)` (publish ids grow per origin): `None`
    /// when that publish, or a later one of its origin, was stored already.
    pub fn append_once(
        &self,
        channel: &Bytes,
        payload: Bytes,
        options: HistoryOptions,
        identity: Option<(u64, u64)>,
    ) -> Option<Position> {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        if let Some((origin, id)) = identity {
            if inner.origins.get(&origin).is_some_and(|last| id <= *last) {
                return None;
            }
            if inner.origins.len() >= MAX_ORIGINS && !inner.origins.contains_key(&origin) {
                inner.origins.clear();
            }
            inner.origins.insert(origin, id);
        }
        inner.channel(channel, options, now);
        let len = payload.len();
        let position = {
            let history = inner.channels.get_mut(channel).expect("just made");
            history.top += 1;
            history.touched = now;
            history.messages.push_back(Entry {
                offset: history.top,
                at: now,
                payload,
            });
            Position {
                offset: history.top,
                epoch: history.epoch.clone(),
            }
        };
        inner.bytes += len;
        inner.messages += 1;
        inner.trim(channel, now);
        let evicted = inner.bound(self.limits, channel);
        self.publish_counters(inner, evicted);
        Some(position)
    }

    /// Answers a read or a removal.
    pub fn serve(&self, request: &HistoryRequest) -> HistoryReply {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        if request.remove {
            inner.remove(&request.channel);
            self.publish_counters(inner, 0);
            return HistoryReply {
                id: request.id,
                ..HistoryReply::default()
            };
        }
        let Some(options) = request.options else {
            return HistoryReply {
                id: request.id,
                error: "a history read needs the channel's history options".into(),
                ..HistoryReply::default()
            };
        };
        inner.channel(&request.channel, options, now);
        inner.trim(&request.channel, now);
        let evicted = inner.bound(self.limits, &request.channel);
        self.publish_counters(inner, evicted);
        let history = &inner.channels[&request.channel];
        let after = request.since.unwrap_or(0);
        let limit = request.limit as usize;
        let kept = history.messages.iter().filter(|e| e.offset > after);
        let (offsets, payloads): (Vec<u64>, Vec<Bytes>) = if request.reverse {
            kept.rev()
                .take(limit)
                .map(|e| (e.offset, e.payload.clone()))
                .unzip()
        } else {
            kept.take(limit)
                .map(|e| (e.offset, e.payload.clone()))
                .unzip()
        };
        HistoryReply {
            id: request.id,
            epoch: history.epoch.to_string(),
            top: history.top,
            offsets,
            payloads,
            error: String::new(),
        }
    }

    /// Drops expired messages (and the channels whose history expired); run every second.
    pub fn sweep(&self) {
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let inner = &mut *inner;
        let expired: Vec<Bytes> = inner
            .channels
            .iter()
            .filter(|(_, h)| now.saturating_duration_since(h.touched) > h.ttl)
            .map(|(c, _)| c.clone())
            .collect();
        for channel in &expired {
            inner.remove(channel);
        }
        let channels: Vec<Bytes> = inner.channels.keys().cloned().collect();
        for channel in &channels {
            inner.trim(channel, now);
        }
        inner
            .order
            .retain(|(c, g)| inner.channels.get(c).is_some_and(|h| h.generation == *g));
        server_kit::memory::shrink_if_sparse(&mut inner.channels);
        self.publish_counters(inner, 0);
    }

    fn publish_counters(&self, inner: &Inner, evicted: u64) {
        let c = &self.counters;
        c.channels.store(inner.channels.len() as u64, Relaxed);
        c.messages.store(inner.messages as u64, Relaxed);
        c.bytes.store(inner.bytes as u64, Relaxed);
        if evicted > 0 {
            c.evictions.fetch_add(evicted, Relaxed);
        }
    }
}

impl Inner {
    /// Makes sure `channel` has a live history (a new epoch when it had none, or it expired).
    fn channel(&mut self, channel: &Bytes, options: HistoryOptions, now: Instant) {
        let size = options.size.clamp(1, MAX_HISTORY_SIZE);
        let ttl = Duration::from_millis(options.ttl_ms.max(1));
        if let Some(history) = self.channels.get_mut(channel) {
            if now.saturating_duration_since(history.touched) <= history.ttl {
                history.size = size;
                history.ttl = ttl;
                return;
            }
            self.remove(channel);
        }
        self.generation += 1;
        self.order.push_back((channel.clone(), self.generation));
        self.channels.insert(
            channel.clone(),
            Channel {
                epoch: new_epoch(self.generation),
                generation: self.generation,
                top: 0,
                size,
                ttl,
                touched: now,
                messages: VecDeque::new(),
            },
        );
    }

    /// Keeps `channel`'s last `size` messages younger than its TTL.
    fn trim(&mut self, channel: &Bytes, now: Instant) {
        let Some(history) = self.channels.get_mut(channel) else {
            return;
        };
        while let Some(front) = history.messages.front() {
            let old = now.saturating_duration_since(front.at) > history.ttl;
            if history.messages.len() <= history.size as usize && !old {
                break;
            }
            let entry = history.messages.pop_front().expect("has a front");
            self.bytes -= entry.payload.len();
            self.messages -= 1;
        }
        if history.messages.capacity() > 64
            && history.messages.len() < history.messages.capacity() / 4
        {
            history.messages.shrink_to_fit();
        }
    }

    fn remove(&mut self, channel: &[u8]) {
        if let Some(history) = self.channels.remove(channel) {
            self.bytes -= history
                .messages
                .iter()
                .map(|e| e.payload.len())
                .sum::<usize>();
            self.messages -= history.messages.len();
        }
    }

    /// Evicts the oldest histories but `keep`'s until within `limits`; returns how many.
    fn bound(&mut self, limits: HistoryLimits, keep: &Bytes) -> u64 {
        let mut evicted = 0;
        let mut kept = None;
        while self.channels.len() > limits.max_channels || self.bytes > limits.max_bytes {
            let Some((channel, generation)) = self.order.pop_front() else {
                break;
            };
            let live = self
                .channels
                .get(&channel)
                .is_some_and(|h| h.generation == generation);
            if !live {
                continue; // a history since removed or started again: its entry is stale
            }
            if channel == *keep {
                // The channel being written stays, first in line once the others are gone.
                kept = Some((channel, generation));
                continue;
            }
            self.remove(&channel);
            evicted += 1;
        }
        if let Some(entry) = kept {
            self.order.push_front(entry);
        }
        evicted
    }
}

/// A random epoch (the generation makes it differ even if the system's random source fails).
fn new_epoch(generation: u64) -> Epoch {
    let mut bytes = [0u8; 8];
    let random = match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes),
        Err(_) => {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or_default();
            nanos ^ generation.rotate_left(32)
        }
    };
    Epoch::from_random(random)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_channels: usize, max_bytes: usize) -> HistoryStore {
        HistoryStore::new(HistoryLimits {
            max_channels,
            max_bytes,
        })
    }

    fn options(size: u32, ttl_ms: u64) -> HistoryOptions {
        HistoryOptions { size, ttl_ms }
    }

    fn read(store: &HistoryStore, channel: &'static str, since: Option<u64>) -> HistoryReply {
        store.serve(&HistoryRequest {
            id: 1,
            channel: Bytes::from_static(channel.as_bytes()),
            options: Some(options(100, 60_000)),
            since,
            limit: 1000,
            reverse: false,
            remove: false,
        })
    }

    #[test]
    fn offsets_are_consecutive_and_history_is_bounded_by_size() {
        let store = store(10, 1 << 20);
        let g = Bytes::from_static(b"g");
        let first = store.append(&g, Bytes::from_static(b"a"), options(3, 60_000));
        assert_eq!(first.offset, 1);
        for i in 2..=5u64 {
            let p = store.append(&g, Bytes::from(format!("m{i}")), options(3, 60_000));
            assert_eq!(p.offset, i);
            assert_eq!(p.epoch, first.epoch);
        }
        let reply = read(&store, "g", None);
        assert_eq!(reply.top, 5);
        assert_eq!(reply.offsets, vec![3, 4, 5]);
        assert_eq!(reply.epoch, first.epoch.as_str());
        let reply = read(&store, "g", Some(4));
        assert_eq!(reply.offsets, vec![5]);
        assert_eq!(store.counters.messages.load(Relaxed), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn messages_expire_and_an_expired_history_starts_a_new_epoch() {
        let store = store(10, 1 << 20);
        let g = Bytes::from_static(b"g");
        let first = store.append(&g, Bytes::from_static(b"a"), options(10, 1_000));
        tokio::time::advance(Duration::from_millis(600)).await;
        store.append(&g, Bytes::from_static(b"b"), options(10, 1_000));
        tokio::time::advance(Duration::from_millis(600)).await;
        store.sweep();
        assert_eq!(store.counters.messages.load(Relaxed), 1, "a expired");
        tokio::time::advance(Duration::from_millis(600)).await;
        store.sweep();
        assert_eq!(store.counters.channels.load(Relaxed), 0);
        assert_eq!(store.counters.bytes.load(Relaxed), 0);
        let again = store.append(&g, Bytes::from_static(b"c"), options(10, 1_000));
        assert_eq!(again.offset, 1);
        assert_ne!(again.epoch, first.epoch);
    }

    #[test]
    fn the_first_channels_are_evicted_past_the_bounds() {
        let store = store(2, 1 << 20);
        for name in ["a", "b", "c"] {
            store.append(
                &Bytes::from_static(name.as_bytes()),
                Bytes::from_static(b"x"),
                options(10, 60_000),
            );
        }
        assert_eq!(store.counters.channels.load(Relaxed), 2);
        assert_eq!(store.counters.evictions.load(Relaxed), 1);
        assert_eq!(read(&store, "b", None).offsets, vec![1]);

        let store = store_bytes();
        assert!(store.counters.bytes.load(Relaxed) <= 10);
    }

    fn store_bytes() -> HistoryStore {
        let store = store(100, 10);
        for name in ["a", "b", "c", "d"] {
            store.append(
                &Bytes::from_static(name.as_bytes()),
                Bytes::from_static(b"xxxx"),
                options(10, 60_000),
            );
        }
        store
    }

    /// A channel over the bound by itself, with a stale entry of its own from before a
    /// removal: the channel stays, and the eviction ends (it used to spin, lock held).
    #[test]
    fn a_channel_over_the_bound_alone_is_kept_and_the_eviction_ends() {
        let store = store(10, 5);
        let g = Bytes::from_static(b"g");
        store.append(&g, Bytes::from_static(b"0123456789"), options(10, 60_000));
        store.serve(&HistoryRequest {
            id: 1,
            channel: g.clone(),
            remove: true,
            ..HistoryRequest::default()
        });
        let again = store.append(&g, Bytes::from_static(b"0123456789"), options(10, 60_000));
        assert_eq!(again.offset, 1);
        assert_eq!(read(&store, "g", None).offsets, vec![1]);
    }

    #[test]
    fn a_publish_sent_again_is_stored_once() {
        let store = store(10, 1 << 20);
        let g = Bytes::from_static(b"g");
        let o = options(10, 60_000);
        let first = store.append_once(&g, Bytes::from_static(b"a"), o, Some((7, 1)));
        assert_eq!(first.map(|p| p.offset), Some(1));
        assert_eq!(
            store.append_once(&g, Bytes::from_static(b"a"), o, Some((7, 1))),
            None
        );
        let other = store.append_once(&g, Bytes::from_static(b"b"), o, Some((8, 1)));
        assert_eq!(other.map(|p| p.offset), Some(2));
        let next = store.append_once(&g, Bytes::from_static(b"c"), o, Some((7, 2)));
        assert_eq!(next.map(|p| p.offset), Some(3));
        assert_eq!(read(&store, "g", None).offsets, vec![1, 2, 3]);
    }

    #[test]
    fn removal_starts_a_new_epoch_and_reads_need_options() {
        let store = store(10, 1 << 20);
        let g = Bytes::from_static(b"g");
        let first = store.append(&g, Bytes::from_static(b"a"), options(10, 60_000));
        store.serve(&HistoryRequest {
            id: 2,
            channel: g.clone(),
            remove: true,
            ..HistoryRequest::default()
        });
        let reply = read(&store, "g", None);
        assert_eq!(reply.top, 0);
        assert_ne!(reply.epoch, first.epoch.as_str());
        let refused = store.serve(&HistoryRequest {
            id: 3,
            channel: g,
            ..HistoryRequest::default()
        });
        assert!(!refused.error.is_empty());
    }
}
