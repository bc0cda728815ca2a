//! Fan-out inside one gateway process: which workers have members of which group, and each
//! worker's delivery to its local members.
//!
//! - [`hub`]: the process-wide [`Router`](hub::Router) (group -> workers with members) and the
//!   [`Hub`](hub::Hub), which adds the bus: a send goes to local workers directly and to the bus
//!   for other gateways.
//! - [`worker`]: one OS thread and single-threaded runtime per worker, owning its connections and
//!   their group table.
//! - [`outbox`]: a connection's bounded outbound queue (slow consumers are closed, never waited on).

pub mod hub;
pub(crate) mod local;
pub mod outbox;
