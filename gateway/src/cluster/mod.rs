//! The cluster-wide API: what one gateway does for a client or a backend across every gateway,
//! on any carrier. docs/protocol.md, "Cluster API", is the reference.
//!
//! - identity: every gateway is a node ([`NodeId`], random per start), every connection has a
//!   [`ClientId`](protocol::cluster::ClientId) naming its node, and may carry a uid;
//! - [`send`]: `send_to_uid` (on the uid's topic, which only the gateways holding that uid
//!   subscribe to), `send_to_client` (on its node's topic), `send_to_all` (on the control
//!   topic), `exclude` lists, and presence events (on the group's presence topic);
//! - [`query`]: questions and orders scattered to the nodes and gathered within
//!   `--cluster-query-timeout`: every answer says which nodes answered and which are missing;
//! - [`nodes`]: heartbeats on the control topic, and the table of live nodes they feed.
//!
//! The topics and control frames are `protocol::cluster`'s. [`on_control`] is where control
//! frames from the bus arrive.

pub mod nodes;
pub mod query;
pub mod send;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use protocol::cluster::{topic, Control, ControlFrame, NodeId};
use protocol::{GroupId, GroupName, Text};
use tokio::sync::Semaphore;

use crate::bus::warnings::Throttle;
use crate::config::GatewayConfig;
use crate::fanout::hub::Hub;
use crate::fanout::local::topic_id;

/// Questions from other nodes answered at once; more are refused (answered `refused`, counted).
pub const MAX_ASKS_IN_FLIGHT: usize = 64;
/// This node's own questions waiting for answers at once; more are answered at once with every
/// other node missing (counted).
pub const MAX_PENDING_QUERIES: usize = 1024;

/// The settings the cluster API runs with.
#[derive(Debug, Clone)]
pub struct ClusterSettings {
    pub node_name: String,
    pub heartbeat: Duration,
    pub node_timeout: Duration,
    pub query_timeout: Duration,
    pub max_page_size: u32,
    pub max_group_id_len: usize,
    pub max_uid_len: usize,
    /// What arrives from other gateways is held to this gateway's own limits.
    pub max_message_size: usize,
    pub max_targets: usize,
}

impl ClusterSettings {
    pub fn from_config(config: &GatewayConfig) -> ClusterSettings {
        ClusterSettings {
            node_name: config.node_name(),
            heartbeat: config.node_heartbeat,
            node_timeout: config.node_timeout,
            query_timeout: config.cluster_query_timeout,
            max_page_size: config.max_page_size,
            max_group_id_len: config.max_group_id_len,
            max_uid_len: config.max_uid_len,
            max_message_size: config.max_message_size,
            max_targets: config.max_targets,
        }
    }
}

/// What the cluster API counts, reported under `cluster` in `/api/stats`.
#[derive(Debug, Default)]
pub struct ClusterCounters {
    pub heartbeats_in: AtomicU64,
    /// Questions this node asked the cluster.
    pub queries: AtomicU64,
    /// Of them, those answered without every node (some `missing`).
    pub queries_partial: AtomicU64,
    /// Questions refused at once: [`MAX_PENDING_QUERIES`] were waiting.
    pub queries_refused: AtomicU64,
    /// Questions from other nodes answered.
    pub asks_answered: AtomicU64,
    /// Questions from other nodes refused: [`MAX_ASKS_IN_FLIGHT`] were being answered.
    pub asks_refused: AtomicU64,
    /// Answers that came after their question had timed out.
    pub answers_late: AtomicU64,
    /// Control frames that could not be read, or came on a topic they do not belong to.
    pub control_invalid: AtomicU64,
    pub sends_to_all: AtomicU64,
    pub sends_to_uid: AtomicU64,
    pub sends_to_client: AtomicU64,
    pub presence_events: AtomicU64,
    /// Presence events dropped: a worker's queue of them was full
    /// (`fanout::local::PRESENCE_QUEUE`).
    pub presence_dropped: AtomicU64,
}

/// The cluster API's state in one gateway.
#[derive(Debug)]
pub struct Cluster {
    node: NodeId,
    settings: ClusterSettings,
    nodes: nodes::NodeTable,
    pending: Mutex<query::Pending>,
    asks: Arc<Semaphore>,
    counters: ClusterCounters,
    warn: Mutex<Throttle>,
}

impl Cluster {
    pub fn new(node: NodeId, settings: ClusterSettings) -> Cluster {
        Cluster {
            node,
            settings,
            nodes: nodes::NodeTable::default(),
            pending: Mutex::new(query::Pending::default()),
            asks: Arc::new(Semaphore::new(MAX_ASKS_IN_FLIGHT)),
            counters: ClusterCounters::default(),
            warn: Mutex::new(Throttle::default()),
        }
    }

    pub fn node_id(&self) -> NodeId {
        self.node
    }

    pub fn settings(&self) -> &ClusterSettings {
        &self.settings
    }

    pub fn counters(&self) -> &ClusterCounters {
        &self.counters
    }

    pub fn nodes(&self) -> &nodes::NodeTable {
        &self.nodes
    }

    /// The topics every gateway is subscribed to for as long as it runs.
    pub fn permanent_topics(&self) -> Vec<GroupId> {
        vec![topic_id(topic::CONTROL), topic_id(&topic::node(self.node))]
    }

    fn invalid(&self, why: &str) {
        self.counters.control_invalid.fetch_add(1, Relaxed);
        if let Some(suppressed) = self.warn.lock().allow() {
            tracing::warn!(cause = why, suppressed, "dropping a control frame");
        }
    }
}

/// Publishes `control` (with `body`) on `topic`.
pub(crate) fn publish_control(hub: &Hub, topic: &str, control: &Control, body: &[u8]) {
    let Ok(name) = GroupName::parse(topic, usize::MAX) else {
        return;
    };
    hub.publish_raw(&name, &ControlFrame::encode(control, body));
}

/// A control frame that arrived on `topic` from another gateway.
pub(crate) async fn on_control(hub: &Hub, topic_name: GroupName<'_>, frame: Bytes) {
    let cluster = hub.cluster();
    let frame = match ControlFrame::decode(frame) {
        Ok(frame) => frame,
        Err(e) => return cluster.invalid(&e.to_string()),
    };
    let kind = topic::kind(topic_name.as_str());
    // A message another gateway sends is held to this gateway's limits, as a client's is.
    let limits = &cluster.settings;
    if frame.body.len() > limits.max_message_size {
        return cluster.invalid("message larger than --max-message-size");
    }
    if let Control::Deliver { exclude } = &frame.control {
        if exclude.len() > limits.max_targets {
            return cluster.invalid("exclude list longer than --max-targets");
        }
    }
    match (kind, frame.control) {
        (
            topic::Kind::Group(_) | topic::Kind::Uid(_) | topic::Kind::Presence(_),
            Control::Deliver { exclude },
        ) => {
            let Ok(text) = Text::new(frame.body) else {
                return cluster.invalid("message not UTF-8");
            };
            let exclude = (!exclude.is_empty()).then(|| Arc::from(exclude));
            hub.router()
                .dispatch_excluding(topic_name.as_str(), &text, exclude.as_ref())
                .await;
        }
        (topic::Kind::Control, Control::Deliver { exclude }) => {
            let Ok(text) = Text::new(frame.body) else {
                return cluster.invalid("message not UTF-8");
            };
            send::deliver_all_here(hub, text, exclude).await;
        }
        (topic::Kind::Node(node), Control::ToClient { client })
            if node == cluster.node && client.node == cluster.node =>
        {
            let Ok(text) = Text::new(frame.body) else {
                return cluster.invalid("message not UTF-8");
            };
            send::deliver_to_here(hub, client, text).await;
        }
        (topic::Kind::Control, Control::Ask { id, from, request }) => {
            query::on_ask(hub, id, from, request)
        }
        (topic::Kind::Node(node), Control::Ask { id, from, request }) if node == cluster.node => {
            query::on_ask(hub, id, from, request)
        }
        (
            topic::Kind::Node(node),
            Control::Answer {
                id,
                node: from,
                reply,
            },
        ) if node == cluster.node => query::on_answer(cluster, id, from, reply),
        (topic::Kind::Control, Control::Heartbeat { node, info, hello }) => {
            cluster.counters.heartbeats_in.fetch_add(1, Relaxed);
            if node != cluster.node {
                cluster.nodes.seen(node, info);
                if hello {
                    nodes::announce(hub, false);
                }
            }
        }
        (topic::Kind::Control, Control::Bye { node }) => cluster.nodes.forget(node),
        _ => cluster.invalid("unexpected control frame for its topic"),
    }
}
