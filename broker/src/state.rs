//! The state every link shares: settings, the channel registry, the counters, link security,
//! and the source of link ids. [`crate::server`] creates it; [`crate::link`] reads it.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use protocol::codec::FrameError;
use protocol::history::Positioned;
use protocol::link::HistoryOptions;

use crate::auth::BrokerSecurity;
use crate::config::BrokerConfig;
use crate::history::{HistoryLimits, HistoryStore};
use crate::php::hub::PhpHub;
use crate::registry::{LinkId, Registry};
use crate::stats::BrokerStats;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: BrokerConfig,
    pub(crate) registry: Registry,
    /// PHP Channel clients' channels and queues.
    pub(crate) php: Arc<PhpHub>,
    pub(crate) stats: Arc<BrokerStats>,
    pub(crate) security: BrokerSecurity,
    /// Histories of the channels gateways publish to with history options.
    pub(crate) history: HistoryStore,
    /// Gateway links still reading (and applying) frames: at shutdown every link waits until
    /// none is before it closes ([`Readers`]).
    pub(crate) readers: Readers,
    next_link: AtomicU64,
}

/// The gateway links that may still apply a frame. At shutdown each link stops reading, then
/// waits until every other one has stopped too before it leaves the registry and flushes what
/// it was sent: a publish the broker applied has then been delivered to every subscribed link
/// and acknowledged (`Stored`) to its publisher, or neither, never one without the other (a
/// gateway sends again what was not acknowledged, to the broker that comes next).
#[derive(Debug, Default)]
pub(crate) struct Readers {
    reading: AtomicUsize,
    stopped: tokio::sync::Notify,
}

impl Readers {
    /// A link starts reading; it stops when the guard drops.
    pub(crate) fn enter(&self) -> ReaderGuard<'_> {
        self.reading.fetch_add(1, Relaxed);
        ReaderGuard(self)
    }

    /// Resolves once no link reads any more.
    pub(crate) async fn all_stopped(&self) {
        loop {
            let stopped = self.stopped.notified();
            tokio::pin!(stopped);
            stopped.as_mut().enable();
            if self.reading.load(Relaxed) == 0 {
                return;
            }
            stopped.await;
        }
    }
}

/// A link that reads; dropped when it stops.
#[derive(Debug)]
pub(crate) struct ReaderGuard<'a>(&'a Readers);

impl Drop for ReaderGuard<'_> {
    fn drop(&mut self) {
        if self.0.reading.fetch_sub(1, Relaxed) == 1 {
            self.0.stopped.notify_waiters();
        }
    }
}

impl Shared {
    /// State for a broker with a validated `config`.
    pub(crate) fn new(config: BrokerConfig, security: BrokerSecurity) -> Shared {
        let stats = Arc::new(BrokerStats::default());
        let php = Arc::new(PhpHub::new(
            stats.clone(),
            config.max_frame_size,
            config.php.queue_max_items,
        ));
        let history = HistoryStore::new(HistoryLimits {
            max_channels: config.history_max_channels,
            max_bytes: config.history_max_bytes,
        });
        Shared {
            history,
            registry: Registry::with_php(stats.clone(), config.max_frame_size, php.clone()),
            php,
            config,
            stats,
            security,
            readers: Readers::default(),
            next_link: AtomicU64::new(1),
        }
    }

    /// A link id never handed out before by this broker.
    pub(crate) fn next_link_id(&self) -> LinkId {
        LinkId(self.next_link.fetch_add(1, Relaxed))
    }
}

impl Shared {
    /// A publish to a channel with history: stored with the channel's next offset, then fanned
    /// out as a positioned frame to every subscriber (`origin` too: it delivers its own members
    /// only once the position is known). PHP subscribers of `send_to_group` get the text alone.
    pub(crate) fn publish_positioned(
        &self,
        origin: LinkId,
        channel: &Bytes,
        payload: Bytes,
        options: HistoryOptions,
    ) -> Result<usize, FrameError> {
        self.publish_positioned_once(origin, channel, payload, options, None)
    }

    /// [`Shared::publish_positioned`] of a publish with an identity (`Publish.origin`, `.id`):
    /// one already stored is not stored or sent again (`Ok(0)`).
    pub(crate) fn publish_positioned_once(
        &self,
        origin: LinkId,
        channel: &Bytes,
        payload: Bytes,
        options: HistoryOptions,
        identity: Option<(u64, u64)>,
    ) -> Result<usize, FrameError> {
        let framed = {
            let Some(position) = self
                .history
                // A copy: the payload is a slice of the link's read buffer, which the
                // history would otherwise keep whole (and `--history-max-bytes` not count).
                .append_once(channel, Bytes::copy_from_slice(&payload), options, identity)
            else {
                return Ok(0);
            };
            Positioned::encode(&position, &payload)
        };
        let queued = self
            .registry
            .publish_without_bridge(origin, channel, framed)?;
        if self.php.bridges(channel) {
            self.php.bridge_group_send(channel, &payload);
        }
        Ok(queued)
    }
}
