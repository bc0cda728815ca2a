//! The seam between a gateway and whatever carries group messages between gateways.
//!
//! Today [`broker_link::BrokerBus`] speaks to the built-in broker; Redis and NATS buses will
//! implement the same trait. A bus hands incoming messages to the [`crate::fanout::hub::Router`] it was
//! built with.

pub mod broker_link;

use bytes::Bytes;
use protocol::GroupId;

/// What a bus reports about itself, for `/readyz` and `/api/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct BusStatus {
    /// Connected and subscribed: messages flow between gateways.
    pub up: bool,
    /// Groups this gateway is subscribed to (has local members of).
    pub subscriptions: u64,
    /// Times the connection was re-established after a loss.
    pub reconnects: u64,
    pub publishes: u64,
    /// Publishes not sent to other gateways (link down or its queue full). Local members still
    /// received them.
    pub publishes_dropped: u64,
    pub messages_in: u64,
    /// Incoming messages discarded as invalid (not UTF-8).
    pub messages_invalid: u64,
}

/// Carries group messages between gateways. Every method returns at once: the bus queues and
/// counts; it never blocks a worker.
pub trait Bus: Send + Sync + 'static {
    /// Sends `payload` to the other gateways with members of `group`.
    fn publish(&self, group: &str, payload: &Bytes);
    /// Starts receiving `group`'s messages. Called once per group, on its first local member.
    fn subscribe(&self, group: &GroupId);
    /// Stops receiving `group`'s messages. Called when its last local member leaves.
    fn unsubscribe(&self, group: &GroupId);
    fn status(&self) -> BusStatus;
}
