//! Which gateways are alive: each announces itself on the control topic every
//! `--node-heartbeat` ([`run_heartbeats`]); one not heard from for `--node-timeout` is taken for
//! dead ([`NodeTable`]). A gateway that starts, or whose bus comes back, says hello: the others
//! answer with a heartbeat at once, so that it knows them before its first query. A gateway
//! that stops says bye.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use parking_lot::Mutex;
use protocol::cluster::{topic, Control, NodeId, NodeInfo};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::publish_control;
use crate::fanout::hub::Hub;

/// The other live gateways, as their heartbeats describe them.
#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: Mutex<HashMap<NodeId, Known>>,
    /// This node's own description, sent in its heartbeats.
    own: Mutex<NodeInfo>,
}

#[derive(Debug, Clone)]
struct Known {
    info: NodeInfo,
    last_seen: Instant,
}

/// A gateway as `/api/nodes` lists it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct NodeView {
    pub node: NodeId,
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ws: Option<String>,
    /// Its open client connections, as of its last heartbeat.
    pub connections: u64,
    pub started_ms: u64,
    /// Milliseconds since its last heartbeat (0 for the gateway answering).
    pub last_seen_ms: u64,
    /// The gateway answering.
    #[serde(rename = "self")]
    pub this: bool,
}

impl NodeTable {
    pub(crate) fn seen(&self, node: NodeId, info: NodeInfo) {
        let known = Known {
            info,
            last_seen: Instant::now(),
        };
        if self.nodes.lock().insert(node, known).is_none() {
            tracing::info!(node = %node, "gateway joined the cluster");
        }
    }

    pub(crate) fn forget(&self, node: NodeId) {
        if self.nodes.lock().remove(&node).is_some() {
            tracing::info!(node = %node, "gateway left the cluster");
        }
    }

    /// Drops the nodes not heard from for `timeout`.
    pub(crate) fn prune(&self, timeout: Duration) {
        let now = Instant::now();
        self.nodes.lock().retain(|node, known| {
            let alive = now.duration_since(known.last_seen) < timeout;
            if !alive {
                tracing::warn!(node = %node, silent_for = ?now.duration_since(known.last_seen), "gateway timed out: taken for dead");
            }
            alive
        });
    }

    /// The other nodes taken for alive (heard from within `timeout`).
    pub fn live(&self, timeout: Duration) -> Vec<NodeId> {
        let now = Instant::now();
        let mut live: Vec<NodeId> = self
            .nodes
            .lock()
            .iter()
            .filter(|(_, known)| now.duration_since(known.last_seen) < timeout)
            .map(|(node, _)| *node)
            .collect();
        live.sort_unstable();
        live
    }

    /// Every live node, this one first.
    pub fn views(&self, this: NodeId, timeout: Duration) -> Vec<NodeView> {
        let own = self.own.lock().clone();
        let mut views = vec![view(this, own, 0, true)];
        let now = Instant::now();
        let mut others: Vec<NodeView> = self
            .nodes
            .lock()
            .iter()
            .filter(|(_, known)| now.duration_since(known.last_seen) < timeout)
            .map(|(node, known)| {
                let ago = now.duration_since(known.last_seen).as_millis() as u64;
                view(*node, known.info.clone(), ago, false)
            })
            .collect();
        others.sort_by_key(|v| v.node);
        views.extend(others);
        views
    }

    fn set_own(&self, info: NodeInfo) {
        *self.own.lock() = info;
    }
}

fn view(node: NodeId, info: NodeInfo, last_seen_ms: u64, this: bool) -> NodeView {
    NodeView {
        node,
        name: info.name,
        ws: info.ws,
        connections: info.connections,
        started_ms: info.started_ms,
        last_seen_ms,
        this,
    }
}

/// Publishes this node's heartbeat (with `hello`: asking the others for theirs).
pub(crate) fn announce(hub: &Hub, hello: bool) {
    let cluster = hub.cluster();
    let info = cluster.nodes.own.lock().clone();
    let heartbeat = Control::Heartbeat {
        node: cluster.node_id(),
        info,
        hello,
    };
    publish_control(hub, topic::CONTROL, &heartbeat, b"");
}

/// Announces this node until `shutdown`, then says bye. `connections` counts its open client
/// connections; `ws` is where they connect, once known.
pub async fn run_heartbeats(
    hub: Arc<Hub>,
    connections: impl Fn() -> u64 + Send + 'static,
    ws: impl Fn() -> Option<String> + Send + 'static,
    shutdown: CancellationToken,
) {
    let settings = hub.cluster().settings().clone();
    let started_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default();
    // While the bus is down the loop looks often, so that the hello goes out as soon as it
    // is up; then once per heartbeat.
    let poll = settings.heartbeat.min(Duration::from_millis(100));
    let mut bus_was_up = false;
    let mut next_heartbeat = Instant::now();
    loop {
        let cluster = hub.cluster();
        let up = hub.bus().is_some_and(|bus| bus.status().up);
        let now = Instant::now();
        if up && (!bus_was_up || now >= next_heartbeat) {
            cluster.nodes.set_own(NodeInfo {
                name: settings.node_name.clone(),
                ws: ws(),
                connections: connections(),
                started_ms,
                heartbeat_ms: settings.heartbeat.as_millis() as u64,
            });
            // Hello whenever the bus (re)connects: the others may have come or gone meanwhile.
            announce(&hub, !bus_was_up);
            next_heartbeat = now + settings.heartbeat;
        }
        bus_was_up = up;
        cluster.nodes.prune(settings.node_timeout);
        let wait = if up {
            next_heartbeat.saturating_duration_since(now)
        } else {
            poll
        };
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let bye = Control::Bye {
        node: hub.node_id(),
    };
    publish_control(&hub, topic::CONTROL, &bye, b"");
}
