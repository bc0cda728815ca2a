//! Channel -> subscribers, shared by every link task.
//!
//! Reads (publishes) take a shared lock; subscription changes take it exclusively. A publish
//! encodes the `Message` frame once and queues clones of the same `Bytes` to each subscribed
//! link. A [`LocalSubscriber`] (the gateway that embeds the broker) is handed the channel and
//! payload as they are, without a frame.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::RwLock;
use protocol::codec::{encode_message, FrameError};
use tokio_util::sync::CancellationToken;

use crate::php::hub::PhpHub;
use crate::queue::{QueueSender, Refused};
use crate::stats::BrokerStats;

/// Identifies one link for the lifetime of the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LinkId(pub u64);

/// What the registry holds of a link: its outbound queue and its kill switch.
#[derive(Debug, Clone)]
pub struct LinkHandle {
    pub id: LinkId,
    queue: QueueSender,
    kill: CancellationToken,
    /// Set once, by whichever publisher first finds the queue full.
    slow: Arc<AtomicBool>,
}

impl LinkHandle {
    pub fn new(id: LinkId, queue: QueueSender, kill: CancellationToken) -> Self {
        LinkHandle {
            id,
            queue,
            kill,
            slow: Arc::new(AtomicBool::new(false)),
        }
    }

    /// True once the link was found too slow and is being disconnected.
    pub fn is_slow(&self) -> bool {
        self.slow.load(Relaxed)
    }

    /// Queues an encoded frame without waiting. A full queue (in frames or in bytes) means the
    /// link cannot keep up: it is disconnected (slow consumer) rather than allowed to stall the
    /// publisher or grow memory.
    pub fn send(&self, frame: Bytes, stats: &BrokerStats) -> bool {
        let Err(refused) = self.queue.try_send(frame) else {
            return true;
        };
        stats.dropped_frames.fetch_add(1, Relaxed);
        if refused != Refused::Closed && !self.slow.swap(true, Relaxed) {
            stats.slow_link_disconnects.fetch_add(1, Relaxed);
            tracing::warn!(
                link = self.id.0,
                bound = refused.as_str(),
                queued_bytes = self.queue.queued_bytes(),
                "slow consumer: link queue full, disconnecting"
            );
            self.kill.cancel();
        }
        false
    }
}

/// A subscriber in the broker's own process: the gateway that embeds it. It takes messages
/// as channel and payload, never encoded.
pub trait LocalSubscriber: Send + Sync + std::fmt::Debug + 'static {
    /// Takes one message without waiting; `false` when it has no room (the message is dropped
    /// and counted in `dropped_frames`; a local subscriber is never disconnected).
    fn offer(&self, channel: &Bytes, payload: &Bytes) -> bool;
}

/// One subscriber of a channel.
#[derive(Debug, Clone)]
enum Outlet {
    Link(LinkHandle),
    Local {
        id: LinkId,
        subscriber: Arc<dyn LocalSubscriber>,
    },
}

impl Outlet {
    fn id(&self) -> LinkId {
        match self {
            Outlet::Link(link) => link.id,
            Outlet::Local { id, .. } => *id,
        }
    }
}

#[derive(Debug)]
pub struct Registry {
    channels: RwLock<HashMap<Bytes, Vec<Outlet>>>,
    stats: Arc<BrokerStats>,
    max_frame_size: usize,
    /// Where gateways' group sends also go: PHP subscribers of `send_to_group`.
    php: Option<Arc<PhpHub>>,
}

impl Registry {
    pub fn new(stats: Arc<BrokerStats>, max_frame_size: usize) -> Self {
        Registry {
            channels: RwLock::new(HashMap::new()),
            stats,
            max_frame_size,
            php: None,
        }
    }

    /// A registry whose group publishes also reach `php`'s `send_to_group` subscribers.
    pub fn with_php(stats: Arc<BrokerStats>, max_frame_size: usize, php: Arc<PhpHub>) -> Self {
        Registry {
            php: Some(php),
            ..Registry::new(stats, max_frame_size)
        }
    }

    /// Adds `link` to `channel`. The caller guarantees it is not already subscribed.
    pub fn subscribe(&self, link: &LinkHandle, channel: Bytes) {
        self.add(Outlet::Link(link.clone()), channel);
    }

    /// Adds the local subscriber `id` to `channel`. The caller guarantees it is not already
    /// subscribed.
    pub fn subscribe_local(
        &self,
        id: LinkId,
        subscriber: &Arc<dyn LocalSubscriber>,
        channel: Bytes,
    ) {
        self.add(
            Outlet::Local {
                id,
                subscriber: subscriber.clone(),
            },
            channel,
        );
    }

    fn add(&self, outlet: Outlet, channel: Bytes) {
        let counters = self.stats.of_channel(&channel);
        let mut channels = self.channels.write();
        let subscribers = channels.entry(channel).or_insert_with(|| {
            counters.channels.fetch_add(1, Relaxed);
            Vec::with_capacity(1)
        });
        subscribers.push(outlet);
        counters.subscriptions.fetch_add(1, Relaxed);
    }

    pub fn unsubscribe(&self, link: LinkId, channel: &[u8]) {
        let mut channels = self.channels.write();
        self.remove_locked(&mut channels, link, channel);
    }

    /// Removes every subscription of a closing link.
    pub fn remove_link<'a>(&self, link: LinkId, subscribed: impl IntoIterator<Item = &'a Bytes>) {
        let mut channels = self.channels.write();
        for channel in subscribed {
            self.remove_locked(&mut channels, link, channel);
        }
    }

    fn remove_locked(
        &self,
        channels: &mut HashMap<Bytes, Vec<Outlet>>,
        link: LinkId,
        channel: &[u8],
    ) {
        let Some(subscribers) = channels.get_mut(channel) else {
            return;
        };
        let counters = self.stats.of_channel(channel);
        if let Some(pos) = subscribers.iter().position(|s| s.id() == link) {
            subscribers.swap_remove(pos);
            counters.subscriptions.fetch_sub(1, Relaxed);
        }
        if subscribers.is_empty() {
            channels.remove(channel);
            server_kit::memory::shrink_if_sparse(channels);
            counters.channels.fetch_sub(1, Relaxed);
        }
    }

    /// Fans a publish out to the channel's subscribers (all but `origin` when `no_echo`), and a
    /// group's to PHP subscribers of `send_to_group` (never a cluster topic's). Returns how many
    /// links it was queued to.
    pub fn publish(
        &self,
        origin: LinkId,
        channel: &[u8],
        payload: Bytes,
        no_echo: bool,
    ) -> Result<usize, FrameError> {
        // Cloned (a reference count) only when a PHP client listens.
        let bridged = match &self.php {
            Some(php) if php.bridges(channel) => Some((php, payload.clone())),
            _ => None,
        };
        let queued = self.publish_without_bridge_echo(origin, channel, payload, no_echo)?;
        if let Some((php, payload)) = bridged {
            php.bridge_group_send(channel, &payload);
        }
        Ok(queued)
    }

    /// A PHP client's `send_to_group`, to the group's gateways only: its PHP subscribers had
    /// the PHP event already.
    pub fn publish_without_bridge(
        &self,
        origin: LinkId,
        channel: &[u8],
        payload: Bytes,
    ) -> Result<usize, FrameError> {
        self.publish_without_bridge_echo(origin, channel, payload, false)
    }

    fn publish_without_bridge_echo(
        &self,
        origin: LinkId,
        channel: &[u8],
        payload: Bytes,
        no_echo: bool,
    ) -> Result<usize, FrameError> {
        let counters = self.stats.of_channel(channel);
        counters.publishes.fetch_add(1, Relaxed);
        let channels = self.channels.read();
        let Some((channel, subscribers)) = channels.get_key_value(channel) else {
            return Ok(0);
        };
        let recipients = || {
            subscribers
                .iter()
                .filter(move |s| !(no_echo && s.id() == origin))
        };
        // Encoded only for links, and before anyone is served: a message too large for a frame
        // reaches no one.
        let frame = if recipients().any(|s| matches!(s, Outlet::Link(_))) {
            Some(encode_message(channel, &payload, self.max_frame_size)?)
        } else {
            None
        };
        let mut queued = 0;
        for subscriber in recipients() {
            let taken = match (subscriber, &frame) {
                (Outlet::Link(link), Some(frame)) => link.send(frame.clone(), &self.stats),
                (Outlet::Link(_), None) => false,
                (Outlet::Local { subscriber, .. }, _) => {
                    let taken = subscriber.offer(channel, &payload);
                    if !taken {
                        self.stats.dropped_frames.fetch_add(1, Relaxed);
                    }
                    taken
                }
            };
            if taken {
                queued += 1;
            }
        }
        counters.deliveries.fetch_add(queued as u64, Relaxed);
        Ok(queued)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{link_queue, QueueReceiver};
    use protocol::link::Body;

    fn link(id: u64, cap: usize) -> (LinkHandle, QueueReceiver) {
        let (tx, rx) = link_queue(cap, usize::MAX);
        (
            LinkHandle::new(LinkId(id), tx, CancellationToken::new()),
            rx,
        )
    }

    fn decode(frame: Bytes) -> (Bytes, Bytes) {
        let mut buf = bytes::BytesMut::from(&frame[..]);
        match protocol::codec::decode_frame(&mut buf, 1 << 20).unwrap() {
            Some(protocol::Frame {
                body: Some(Body::Message(m)),
            }) => (m.channel, m.payload),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn publish_reaches_each_subscriber_once_with_shared_bytes() {
        let stats = Arc::new(BrokerStats::default());
        let registry = Registry::new(stats.clone(), 1 << 20);
        let (a, mut ra) = link(1, 8);
        let (b, mut rb) = link(2, 8);
        let (c, mut rc) = link(3, 8);
        registry.subscribe(&a, Bytes::from_static(b"g"));
        registry.subscribe(&b, Bytes::from_static(b"g"));
        registry.subscribe(&c, Bytes::from_static(b"other"));
        let n = registry
            .publish(LinkId(1), b"g", Bytes::from_static(b"hi"), false)
            .unwrap();
        assert_eq!(n, 2);
        let fa = ra.try_recv().unwrap();
        let fb = rb.try_recv().unwrap();
        assert_eq!(fa.as_ptr(), fb.as_ptr(), "one encoding shared by all");
        assert_eq!(
            decode(fa),
            (Bytes::from_static(b"g"), Bytes::from_static(b"hi"))
        );
        assert!(rc.try_recv().is_err());
        assert!(ra.try_recv().is_err() && rb.try_recv().is_err());

        // no_echo skips the publisher only.
        let n = registry
            .publish(LinkId(1), b"g", Bytes::from_static(b"x"), true)
            .unwrap();
        assert_eq!(n, 1);
        assert!(ra.try_recv().is_err());
        assert!(rb.try_recv().is_ok());
        let snap = stats.snapshot();
        assert_eq!(
            (snap.channels, snap.subscriptions, snap.deliveries),
            (2, 3, 3)
        );
    }

    #[test]
    fn slow_subscriber_is_killed_and_others_still_served() {
        let stats = Arc::new(BrokerStats::default());
        let registry = Registry::new(stats.clone(), 1 << 20);
        let (slow, _slow_rx) = link(1, 1);
        let (fast, mut fast_rx) = link(2, 16);
        registry.subscribe(&slow, Bytes::from_static(b"g"));
        registry.subscribe(&fast, Bytes::from_static(b"g"));
        for _ in 0..3 {
            registry
                .publish(LinkId(9), b"g", Bytes::from_static(b"m"), false)
                .unwrap();
        }
        assert!(slow.kill.is_cancelled() && slow.is_slow());
        assert_eq!(stats.snapshot().slow_link_disconnects, 1);
        assert_eq!(stats.snapshot().dropped_frames, 2);
        for _ in 0..3 {
            assert!(fast_rx.try_recv().is_ok());
        }
    }

    #[test]
    fn removal_returns_tables_to_empty() {
        let stats = Arc::new(BrokerStats::default());
        let registry = Registry::new(stats.clone(), 1 << 20);
        let (a, _ra) = link(1, 8);
        let (b, _rb) = link(2, 8);
        let chans: Vec<Bytes> = (0..10).map(|i| Bytes::from(format!("c{i}"))).collect();
        for c in &chans {
            registry.subscribe(&a, c.clone());
            registry.subscribe(&b, c.clone());
        }
        registry.unsubscribe(LinkId(1), b"c0");
        registry.unsubscribe(LinkId(1), b"never");
        registry.remove_link(LinkId(1), chans[1..].iter());
        assert_eq!(stats.snapshot().subscriptions, 10);
        registry.remove_link(LinkId(2), chans.iter());
        let snap = stats.snapshot();
        assert_eq!((snap.channels, snap.subscriptions), (0, 0));
        assert!(registry.channels.read().is_empty());
    }

    fn publish(registry: &Registry, origin: u64, channel: &'static [u8], no_echo: bool) -> usize {
        registry
            .publish(
                LinkId(origin),
                channel,
                Bytes::from_static(b"payload"),
                no_echo,
            )
            .expect("a small message fits")
    }

    #[test]
    fn subscribe_and_unsubscribe_move_the_gauges_and_delivery() {
        let stats = Arc::new(BrokerStats::default());
        let registry = Registry::new(stats.clone(), 1 << 20);
        let (a, mut ra) = link(1, 8);
        let (b, mut rb) = link(2, 8);
        registry.subscribe(&a, Bytes::from_static(b"g"));
        registry.subscribe(&a, Bytes::from_static(b"h"));
        registry.subscribe(&b, Bytes::from_static(b"g"));
        let snap = stats.snapshot();
        assert_eq!((snap.channels, snap.subscriptions), (2, 3));

        registry.unsubscribe(LinkId(1), b"g");
        let snap = stats.snapshot();
        assert_eq!(
            (snap.channels, snap.subscriptions),
            (2, 2),
            "g keeps its other subscriber"
        );
        assert_eq!(publish(&registry, 9, b"g", false), 1);
        assert!(ra.try_recv().is_err(), "an unsubscribed link gets nothing");
        assert!(rb.try_recv().is_ok());

        registry.unsubscribe(LinkId(1), b"h");
        let snap = stats.snapshot();
        assert_eq!(
            (snap.channels, snap.subscriptions),
            (1, 1),
            "h had no one left"
        );
        assert_eq!(publish(&registry, 9, b"h", false), 0);
        assert!(ra.try_recv().is_err());

        // Unsubscribing twice, or from a channel no one has, changes nothing.
        registry.unsubscribe(LinkId(1), b"h");
        registry.unsubscribe(LinkId(2), b"nobody");
        let snap = stats.snapshot();
        assert_eq!((snap.channels, snap.subscriptions), (1, 1));

        registry.unsubscribe(LinkId(2), b"g");
        let snap = stats.snapshot();
        assert_eq!((snap.channels, snap.subscriptions), (0, 0));
        assert!(registry.channels.read().is_empty());
    }

    #[test]
    fn a_publish_no_one_receives_is_counted_but_not_delivered() {
        let stats = Arc::new(BrokerStats::default());
        let registry = Registry::new(stats.clone(), 1 << 20);
        let (a, mut ra) = link(1, 8);
        registry.subscribe(&a, Bytes::from_static(b"g"));

        assert_eq!(publish(&registry, 1, b"nobody", false), 0);
        // The publisher is the only subscriber, and asked not to get its own message back.
        assert_eq!(publish(&registry, 1, b"g", true), 0);
        assert!(ra.try_recv().is_err());
        // Without no_echo it does get it.
        assert_eq!(publish(&registry, 1, b"g", false), 1);
        assert!(ra.try_recv().is_ok());

        let snap = stats.snapshot();
        assert_eq!((snap.publishes, snap.deliveries), (3, 1));
        assert_eq!((snap.dropped_frames, snap.slow_link_disconnects), (0, 0));
    }

    #[test]
    fn a_message_over_the_frame_limit_reaches_no_one() {
        let stats = Arc::new(BrokerStats::default());
        let registry = Registry::new(stats.clone(), 64);
        let (a, mut ra) = link(1, 8);
        registry.subscribe(&a, Bytes::from_static(b"g"));
        let result = registry.publish(LinkId(2), b"g", Bytes::from(vec![b'x'; 64]), false);
        assert!(
            matches!(result, Err(FrameError::TooLarge { .. })),
            "{result:?}"
        );
        assert!(ra.try_recv().is_err());
        assert_eq!(stats.snapshot().deliveries, 0);
    }

    #[test]
    fn a_closed_link_drops_its_frames_and_is_not_called_slow() {
        let stats = Arc::new(BrokerStats::default());
        let registry = Registry::new(stats.clone(), 1 << 20);
        let (closed, closed_rx) = link(1, 8);
        let (open, mut open_rx) = link(2, 8);
        registry.subscribe(&closed, Bytes::from_static(b"g"));
        registry.subscribe(&open, Bytes::from_static(b"g"));
        drop(closed_rx);

        assert_eq!(publish(&registry, 9, b"g", false), 1);
        assert!(open_rx.try_recv().is_ok());
        assert!(!closed.is_slow() && !closed.kill.is_cancelled());
        let snap = stats.snapshot();
        assert_eq!((snap.deliveries, snap.dropped_frames), (1, 1));
        assert_eq!(snap.slow_link_disconnects, 0);
    }

    /// Records what it is offered; refuses once `room` is used up.
    #[derive(Debug, Default)]
    struct Recorder {
        room: usize,
        got: parking_lot::Mutex<Vec<(Bytes, Bytes)>>,
    }

    impl LocalSubscriber for Recorder {
        fn offer(&self, channel: &Bytes, payload: &Bytes) -> bool {
            let mut got = self.got.lock();
            if got.len() >= self.room {
                return false;
            }
            got.push((channel.clone(), payload.clone()));
            true
        }
    }

    #[test]
    fn a_local_subscriber_gets_channel_and_payload_without_a_frame() {
        let stats = Arc::new(BrokerStats::default());
        let registry = Registry::new(stats.clone(), 64);
        let recorder = Arc::new(Recorder {
            room: 2,
            ..Recorder::default()
        });
        let local: Arc<dyn LocalSubscriber> = recorder.clone();
        let (remote, mut remote_rx) = link(2, 8);
        registry.subscribe_local(LinkId(1), &local, Bytes::from_static(b"g"));
        registry.subscribe(&remote, Bytes::from_static(b"g"));

        // Its own publish does not come back to it; the remote link gets a frame.
        assert_eq!(publish(&registry, 1, b"g", true), 1);
        assert!(recorder.got.lock().is_empty());
        assert!(remote_rx.try_recv().is_ok());
        // A remote publish reaches it as it was sent.
        assert_eq!(publish(&registry, 2, b"g", true), 1);
        assert_eq!(
            recorder.got.lock().as_slice(),
            &[(Bytes::from_static(b"g"), Bytes::from_static(b"payload"))]
        );
        // Only local subscribers left: a payload too large for a frame still reaches them.
        registry.unsubscribe(LinkId(2), b"g");
        let large = Bytes::from(vec![b'x'; 100]);
        assert_eq!(
            registry.publish(LinkId(9), b"g", large, false).ok(),
            Some(1)
        );
        // Full: dropped and counted, never disconnected.
        assert_eq!(publish(&registry, 9, b"g", false), 0);
        assert_eq!(stats.snapshot().dropped_frames, 1);
        registry.remove_link(LinkId(1), [Bytes::from_static(b"g")].iter());
        assert_eq!(stats.snapshot().subscriptions, 0);
    }
}
