//! [`LocalLink`]: the embedding gateway's place among the broker's subscribers, without a
//! socket. It subscribes and publishes through the registry directly; messages for it reach its
//! [`LocalSubscriber`] as channel and payload, never encoded into a frame. Other gateways still
//! link over TCP and see it as one more subscriber.

use std::collections::HashSet;
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::Mutex;
use protocol::codec::FrameError;
use protocol::link::{HistoryOptions, HistoryReply, HistoryRequest};

use crate::registry::{LinkId, LocalSubscriber};
use crate::state::Shared;

/// The embedding gateway's link. Dropping it removes its subscriptions.
#[derive(Debug)]
pub struct LocalLink {
    id: LinkId,
    subscriber: Arc<dyn LocalSubscriber>,
    shared: Arc<Shared>,
    subscribed: Mutex<HashSet<Bytes>>,
}

impl LocalLink {
    pub(crate) fn new(shared: Arc<Shared>, subscriber: Arc<dyn LocalSubscriber>) -> LocalLink {
        LocalLink {
            id: shared.next_link_id(),
            subscriber,
            shared,
            subscribed: Mutex::new(HashSet::new()),
        }
    }

    /// Subscribes `channel`; subscribing twice is harmless.
    pub fn subscribe(&self, channel: &[u8]) {
        let mut subscribed = self.subscribed.lock();
        if subscribed.contains(channel) {
            return;
        }
        let channel = Bytes::copy_from_slice(channel);
        subscribed.insert(channel.clone());
        self.shared
            .registry
            .subscribe_local(self.id, &self.subscriber, channel);
    }

    pub fn unsubscribe(&self, channel: &[u8]) {
        let mut subscribed = self.subscribed.lock();
        if subscribed.remove(channel) {
            server_kit::memory::shrink_set_if_sparse(&mut subscribed);
            self.shared.registry.unsubscribe(self.id, channel);
        }
    }

    /// Channels subscribed now.
    pub fn subscriptions(&self) -> usize {
        self.subscribed.lock().len()
    }

    /// Stores `payload` in `channel`'s history and publishes it, positioned, to every subscriber
    /// of `channel`, this link included.
    pub fn publish_history(
        &self,
        channel: &[u8],
        payload: Bytes,
        options: HistoryOptions,
    ) -> Result<usize, FrameError> {
        let channel = Bytes::copy_from_slice(channel);
        self.shared
            .publish_positioned(self.id, &channel, payload, options)
    }

    /// Reads (or removes) a channel's history, as a link's `HistoryRequest` would.
    pub fn history(&self, request: &HistoryRequest) -> HistoryReply {
        self.shared.history.serve(request)
    }

    /// Drops expired history (every [`crate::history::HISTORY_SWEEP`]).
    pub fn sweep_history(&self) {
        self.shared.history.sweep();
    }

    /// Publishes to every other subscriber of `channel` (never back to this link). Returns how
    /// many took it; an error when the message does not fit a link frame.
    pub fn publish(&self, channel: &[u8], payload: Bytes) -> Result<usize, FrameError> {
        self.shared
            .registry
            .publish(self.id, channel, payload, true)
    }
}

impl Drop for LocalLink {
    fn drop(&mut self) {
        let subscribed = std::mem::take(&mut *self.subscribed.lock());
        self.shared.registry.remove_link(self.id, subscribed.iter());
    }
}
