//! Gateway counters. Workers update their own [`WorkerStats`] (atomics, so the admin server can
//! read them from another thread without locks).

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use protocol::ErrorCode;

#[derive(Debug, Default)]
pub struct WorkerStats {
    pub connections: AtomicU64,
    /// Connections resting: nothing half read or unwritten, so they hold no WebSocket stream
    /// (see `edge::wire`).
    pub connections_resting: AtomicU64,
    pub connections_total: AtomicU64,
    pub handshake_failures: AtomicU64,
    /// Handshakes refused (HTTP 403) for an Origin not in `--allowed-origins`; also counted in
    /// `handshake_failures`.
    pub origin_rejections: AtomicU64,
    /// Distinct groups with members on this worker.
    pub groups: AtomicU64,
    /// (connection, group) pairs on this worker.
    pub memberships: AtomicU64,
    pub joins: AtomicU64,
    pub leaves: AtomicU64,
    /// Frames received from clients.
    pub messages_in: AtomicU64,
    /// Payload bytes of the text and binary frames received from clients.
    pub bytes_in: AtomicU64,
    /// `send_to_group` commands accepted.
    pub sends: AtomicU64,
    /// Messages queued to client connections (group messages and replies).
    pub deliveries: AtomicU64,
    /// Bytes of the messages counted in `deliveries`.
    pub bytes_out: AtomicU64,
    /// Connections closed because their outbound queue overflowed (code 4001).
    pub slow_consumer_closes: AtomicU64,
    /// Messages discarded when a slow consumer's queue was dropped.
    pub queue_drops: AtomicU64,
    pub idle_closes: AtomicU64,
    /// Connections closed for a WebSocket-level violation (1002, 1007, 1009).
    pub protocol_closes: AtomicU64,
    /// Connections closed for sustained rate-limit abuse (1008).
    pub rate_limit_closes: AtomicU64,
    errors: [AtomicU64; ErrorCode::ALL.len()],
}

impl WorkerStats {
    pub fn count_error(&self, code: ErrorCode) {
        if let Some(i) = ErrorCode::ALL.iter().position(|c| *c == code) {
            self.errors[i].fetch_add(1, Relaxed);
        }
    }

    pub fn snapshot(&self, id: usize) -> WorkerSnapshot {
        WorkerSnapshot {
            id,
            connections: self.connections.load(Relaxed),
            connections_resting: self.connections_resting.load(Relaxed),
            connections_total: self.connections_total.load(Relaxed),
            handshake_failures: self.handshake_failures.load(Relaxed),
            origin_rejections: self.origin_rejections.load(Relaxed),
            groups: self.groups.load(Relaxed),
            memberships: self.memberships.load(Relaxed),
            joins: self.joins.load(Relaxed),
            leaves: self.leaves.load(Relaxed),
            messages_in: self.messages_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            sends: self.sends.load(Relaxed),
            deliveries: self.deliveries.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            slow_consumer_closes: self.slow_consumer_closes.load(Relaxed),
            queue_drops: self.queue_drops.load(Relaxed),
            idle_closes: self.idle_closes.load(Relaxed),
            protocol_closes: self.protocol_closes.load(Relaxed),
            rate_limit_closes: self.rate_limit_closes.load(Relaxed),
            errors: ErrorCode::ALL
                .iter()
                .zip(&self.errors)
                .map(|(code, n)| (code.as_str(), n.load(Relaxed)))
                .collect(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct WorkerSnapshot {
    pub id: usize,
    pub connections: u64,
    pub connections_resting: u64,
    pub connections_total: u64,
    pub handshake_failures: u64,
    pub origin_rejections: u64,
    pub groups: u64,
    pub memberships: u64,
    pub joins: u64,
    pub leaves: u64,
    pub messages_in: u64,
    pub bytes_in: u64,
    pub sends: u64,
    pub deliveries: u64,
    pub bytes_out: u64,
    pub slow_consumer_closes: u64,
    pub queue_drops: u64,
    pub idle_closes: u64,
    pub protocol_closes: u64,
    pub rate_limit_closes: u64,
    /// Error replies sent, by code.
    pub errors: std::collections::BTreeMap<&'static str, u64>,
}

/// What `/api/stats` serves.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GatewaySnapshot {
    pub connections: u64,
    /// Client sockets counted against `--max-connections`: connections and handshakes in
    /// progress.
    pub client_sockets: u64,
    /// Distinct client addresses with open sockets (tracked only with a per-address limit).
    pub client_addresses: u64,
    /// Connections refused (HTTP 503) because the process had `--max-connections`.
    pub connections_refused: u64,
    /// Connections refused (HTTP 503) because their address had `--max-connections-per-ip`.
    pub connections_refused_per_ip: u64,
    /// Distinct groups with members in this process.
    pub groups: u64,
    /// Joins refused because the process had `--max-groups` groups.
    pub groups_refused: u64,
    pub memberships: u64,
    pub workers: Vec<WorkerSnapshot>,
    /// Messages published through the admin API (`POST /api/publish`).
    pub api_publishes: u64,
    pub bus: crate::bus::BusStatus,
    /// Present when the broker runs inside this process.
    pub embedded_broker: Option<broker::StatsSnapshot>,
    /// The admin HTTP server's refusals and timeouts.
    pub admin_http: server_kit::admin_http::AdminHttpSnapshot,
    /// This gateway in the cluster: its node id, the other live gateways, the cluster API's
    /// counters.
    pub cluster: ClusterSnapshot,
    /// Groups with history (`--history`): positioned delivery and recovery.
    pub history: HistorySnapshot,
}

/// What the gateway counts of its groups with history.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct HistorySnapshot {
    /// Positioned messages dropped as already delivered.
    pub duplicates: u64,
    /// Holes in a group's offsets a worker saw and asked the store to fill.
    pub holes: u64,
    /// Messages of those holes the store no longer had (or not in time): positioned members
    /// never received them.
    pub unrepaired: u64,
    /// Joins with `recover`, those answered `recovered:false`, and the messages recovered.
    pub recoveries: u64,
    pub recoveries_incomplete: u64,
    pub recovered_messages: u64,
}

impl HistorySnapshot {
    pub fn of(counters: &crate::fanout::hub::HistoryCounters) -> HistorySnapshot {
        HistorySnapshot {
            duplicates: counters.duplicates.load(Relaxed),
            holes: counters.holes.load(Relaxed),
            unrepaired: counters.unrepaired.load(Relaxed),
            recoveries: counters.recoveries.load(Relaxed),
            recoveries_incomplete: counters.recoveries_incomplete.load(Relaxed),
            recovered_messages: counters.recovered_messages.load(Relaxed),
        }
    }
}

/// The cluster API as one gateway sees it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ClusterSnapshot {
    pub node: protocol::cluster::NodeId,
    /// Other gateways heard from within `--node-timeout`.
    pub other_nodes: u64,
    /// Cluster topics this gateway is subscribed to on the bus: its uid topics (one per uid it
    /// holds a connection of), presence topics, the control topic and its own (`bus`'s
    /// `subscriptions` counts client groups only).
    pub topics: u64,
    pub heartbeats_in: u64,
    pub queries: u64,
    pub queries_partial: u64,
    pub queries_refused: u64,
    pub asks_answered: u64,
    pub asks_refused: u64,
    pub answers_late: u64,
    pub control_invalid: u64,
    pub sends_to_all: u64,
    pub sends_to_uid: u64,
    pub sends_to_client: u64,
    pub presence_events: u64,
    pub presence_dropped: u64,
}

impl ClusterSnapshot {
    pub fn of(cluster: &crate::cluster::Cluster, topics: u64) -> ClusterSnapshot {
        use std::sync::atomic::Ordering::Relaxed;
        let c = cluster.counters();
        ClusterSnapshot {
            node: cluster.node_id(),
            other_nodes: cluster.nodes().live(cluster.settings().node_timeout).len() as u64,
            topics,
            heartbeats_in: c.heartbeats_in.load(Relaxed),
            queries: c.queries.load(Relaxed),
            queries_partial: c.queries_partial.load(Relaxed),
            queries_refused: c.queries_refused.load(Relaxed),
            asks_answered: c.asks_answered.load(Relaxed),
            asks_refused: c.asks_refused.load(Relaxed),
            answers_late: c.answers_late.load(Relaxed),
            control_invalid: c.control_invalid.load(Relaxed),
            sends_to_all: c.sends_to_all.load(Relaxed),
            sends_to_uid: c.sends_to_uid.load(Relaxed),
            sends_to_client: c.sends_to_client.load(Relaxed),
            presence_events: c.presence_events.load(Relaxed),
            presence_dropped: c.presence_dropped.load(Relaxed),
        }
    }
}
