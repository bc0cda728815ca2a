//! Fan-out inside one gateway process: which workers have members of which group, and each
//! worker's delivery to its local members.
//!
//! - [`hub`]: the process-wide [`Router`](hub::Router) (group -> workers with members) and the
//!   [`Hub`](hub::Hub), which adds the bus: a send goes to local workers directly and to the bus
//!   for other gateways.
//! - `local`: one worker's group table (group -> its members' outboxes), touched only by that
//!   worker's thread; the first member of a group on the worker and the last one to leave tell
//!   the router.
//! - `memberships`: the groups one connection is in, and how (presence events, positions).
//! - [`outbox`]: a connection's bounded outbound queue (slow consumers are closed, never waited on)
//!   of `frame`s: WebSocket frames encoded once per message and worker.

pub mod frame;
pub mod hub;
pub(crate) mod local;
pub(crate) mod memberships;
pub mod outbox;
