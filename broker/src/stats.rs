//! Broker counters, readable at any time without locks.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// The counters of one kind of channel.
#[derive(Debug, Default)]
pub struct ChannelCounters {
    pub channels: AtomicU64,
    pub subscriptions: AtomicU64,
    pub publishes: AtomicU64,
    pub deliveries: AtomicU64,
}

#[derive(Debug, Default)]
pub struct BrokerStats {
    /// Open links, including those still exchanging hellos.
    pub links: AtomicU64,
    pub links_total: AtomicU64,
    /// Group channels: `channels`, `subscriptions`, `publishes`, `deliveries`.
    pub groups: ChannelCounters,
    /// The gateways' cluster topics (names starting with U+001F).
    pub cluster: ChannelCounters,
    /// Subscriptions refused because their link already held `broker-max-channels-per-link`.
    pub subscriptions_refused: AtomicU64,
    /// Links disconnected because their outbound queue was full.
    pub slow_link_disconnects: AtomicU64,
    /// Frames that were queued to a link but dropped because it was being disconnected.
    pub dropped_frames: AtomicU64,
    /// Links closed because of a malformed or forbidden frame.
    pub bad_frames: AtomicU64,
    /// Links refused because they did not prove that they know the link secret.
    pub unauthorized_links: AtomicU64,
    /// Open PHP Channel connections.
    pub php_connections: AtomicU64,
    /// PHP Channel connections accepted since start.
    pub php_connections_total: AtomicU64,
    /// PHP Channel connections closed because of a malformed frame or value.
    pub php_bad_frames: AtomicU64,
    /// PHP Channel connections refused by their source address: not in `--php-allow`, or (without
    /// it) not loopback on a broker with a link secret.
    pub php_refused_peers: AtomicU64,
    /// PHP Channel connections closed because they sent nothing for `--php-idle-timeout`.
    pub php_idle_closed: AtomicU64,
    /// `publish` and `publishLoop` channels from PHP clients.
    pub php_publishes: AtomicU64,
    /// `send_to_group` publishes from PHP clients sent on to the gateways' group.
    pub php_bridged: AtomicU64,
    /// `send_to_group` publishes from PHP clients not sent on to the gateways: no valid `group_id` or `message`.
    pub php_bridge_refused: AtomicU64,
    /// Items `enqueue`d to a full PHP queue, dropped.
    pub php_queue_drops: AtomicU64,
    /// PHP messages not sent because they exceed `link-max-frame-size`.
    pub php_dropped: AtomicU64,
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
    /// The same four for the gateways' cluster topics (heartbeats, cluster queries, uid and
    /// presence topics), which the others leave out.
    pub cluster_channels: u64,
    pub cluster_subscriptions: u64,
    pub cluster_publishes: u64,
    pub cluster_deliveries: u64,
    pub slow_link_disconnects: u64,
    pub dropped_frames: u64,
    pub bad_frames: u64,
    pub unauthorized_links: u64,
    pub php_connections: u64,
    pub php_connections_total: u64,
    pub php_bad_frames: u64,
    pub php_refused_peers: u64,
    pub php_idle_closed: u64,
    pub php_publishes: u64,
    pub php_bridged: u64,
    pub php_bridge_refused: u64,
    pub php_queue_drops: u64,
    pub php_dropped: u64,
    /// Channels with a history, their messages kept and the bytes of those, and histories
    /// dropped to stay within `--history-max-channels` / `--history-max-bytes`.
    pub history_channels: u64,
    pub history_messages: u64,
    pub history_bytes: u64,
    pub history_evictions: u64,
}

impl BrokerStats {
    /// The counters of `channel`'s kind.
    pub fn of_channel(&self, channel: &[u8]) -> &ChannelCounters {
        // The gateways' own topics (heartbeats, cluster queries, uids, presence) are counted
        // apart from group traffic.
        if protocol::cluster::topic::is_cluster_topic(channel) {
            &self.cluster
        } else {
            &self.groups
        }
    }

    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            links: self.links.load(Relaxed),
            links_total: self.links_total.load(Relaxed),
            channels: self.groups.channels.load(Relaxed),
            subscriptions: self.groups.subscriptions.load(Relaxed),
            subscriptions_refused: self.subscriptions_refused.load(Relaxed),
            publishes: self.groups.publishes.load(Relaxed),
            deliveries: self.groups.deliveries.load(Relaxed),
            cluster_channels: self.cluster.channels.load(Relaxed),
            cluster_subscriptions: self.cluster.subscriptions.load(Relaxed),
            cluster_publishes: self.cluster.publishes.load(Relaxed),
            cluster_deliveries: self.cluster.deliveries.load(Relaxed),
            slow_link_disconnects: self.slow_link_disconnects.load(Relaxed),
            dropped_frames: self.dropped_frames.load(Relaxed),
            bad_frames: self.bad_frames.load(Relaxed),
            unauthorized_links: self.unauthorized_links.load(Relaxed),
            php_connections: self.php_connections.load(Relaxed),
            php_connections_total: self.php_connections_total.load(Relaxed),
            php_bad_frames: self.php_bad_frames.load(Relaxed),
            php_refused_peers: self.php_refused_peers.load(Relaxed),
            php_idle_closed: self.php_idle_closed.load(Relaxed),
            php_publishes: self.php_publishes.load(Relaxed),
            php_bridged: self.php_bridged.load(Relaxed),
            php_bridge_refused: self.php_bridge_refused.load(Relaxed),
            php_queue_drops: self.php_queue_drops.load(Relaxed),
            php_dropped: self.php_dropped.load(Relaxed),
            // Filled in by `Broker::stats` from its history store.
            history_channels: 0,
            history_messages: 0,
            history_bytes: 0,
            history_evictions: 0,
        }
    }
}
