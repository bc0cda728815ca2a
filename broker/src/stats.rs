//! Broker counters, readable at any time without locks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Open links, including those still exchanging hellos.
    pub links: AtomicU64,
    pub links_total: AtomicU64,
    pub channels: AtomicU64,
    pub subscriptions: AtomicU64,
    /// Subscriptions refused because their link already held `broker-max-channels-per-link`.
    pub subscriptions_refused: AtomicU64,
    pub publishes: AtomicU64,
    pub deliveries: AtomicU64,
    /// Links disconnected because their outbound queue was full.
    pub slow_link_disconnects: AtomicU64,
    /// Frames that were queued to a link but dropped because it was being disconnected.
    pub dropped_frames: AtomicU64,
    /// Links closed because of a malformed or forbidden frame.
    pub bad_frames: AtomicU64,
    /// Links refused because they did not prove that they know the link secret.
    pub unauthorized_links: AtomicU64,
}

/// A point-in-time copy of [`BrokerStats`], as served on `/api/stats`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StatsSnapshot {
    pub links: u64,
    pub links_total: u64,
    pub channels: u64,
    pub subscriptions: u64,
    pub subscriptions_refused: u64,
    pub publishes: u64,
    pub deliveries: u64,
    pub slow_link_disconnects: u64,
    pub dropped_frames: u64,
    pub bad_frames: u64,
    pub unauthorized_links: u64,
}

impl BrokerStats {
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            links: self.links.load(Relaxed),
            links_total: self.links_total.load(Relaxed),
            channels: self.channels.load(Relaxed),
            subscriptions: self.subscriptions.load(Relaxed),
            subscriptions_refused: self.subscriptions_refused.load(Relaxed),
            publishes: self.publishes.load(Relaxed),
            deliveries: self.deliveries.load(Relaxed),
            slow_link_disconnects: self.slow_link_disconnects.load(Relaxed),
            dropped_frames: self.dropped_frames.load(Relaxed),
            bad_frames: self.bad_frames.load(Relaxed),
            unauthorized_links: self.unauthorized_links.load(Relaxed),
        }
    }
}
