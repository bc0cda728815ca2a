//! What a worker's tasks share (all on its one thread): settings, the client-facing policies,
//! counters, and the worker's group table.

use std::sync::Arc;

use protocol::client::ParseLimits;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::config::GatewayConfig;
use crate::credentials::ClientSecurity;
use crate::edge::frame_meter::FrameBudget;
use crate::edge::limits::RateLimit;
use crate::edge::origin::OriginPolicy;
use crate::fanout::local::LocalGroups;
use crate::stats::WorkerStats;

/// State shared by the worker's tasks (all on its one thread).
#[derive(Debug)]
pub(crate) struct WorkerState {
    pub(crate) id: usize,
    pub(crate) config: Arc<GatewayConfig>,
    pub(crate) ws_config: WebSocketConfig,
    pub(crate) parse_limits: ParseLimits,
    pub(crate) origins: OriginPolicy,
    pub(crate) rate_limit: Option<RateLimit>,
    /// Control and continuation frames allowed per connection.
    pub(crate) frame_budget: Option<FrameBudget>,
    pub(crate) stats: Arc<WorkerStats>,
    /// TLS and join tokens for clients.
    pub(crate) security: Arc<ClientSecurity>,
    /// This worker's connections' groups.
    pub(crate) local: LocalGroups,
}
