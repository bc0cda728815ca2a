//! The multi-worker WebSocket gateway, in layers from the client's socket to the bus.
//!
//! - [`gateway`]: [`Gateway::builder`] puts a gateway together (settings, security, the bus or
//!   the embedded broker) and starts the workers; [`Gateway::serve`] accepts clients and hands
//!   them to the workers in turn.
//! - `worker`: one thread and single-threaded runtime per worker, owning its connections; its
//!   `state` is what the worker's tasks share.
//! - [`edge`]: a client's socket up to a parsed command: handshakes, the connection task (reads,
//!   writes of what could not go at once, ping/idle, close codes), connection and rate limits, the
//!   [`edge::origin`] check, [`edge::join_token`]s.
//! - `cmd`: one file per client command: what it checks and what it does, on a connection's
//!   `Session`.
//! - [`fanout`]: each worker's group table (`local`), the process-wide
//!   [`Router`](fanout::hub::Router) (group -> workers, and the bus's subscriptions), the
//!   [`Hub`](fanout::hub::Hub) (router + bus), and each connection's bounded
//!   [`outbox`](fanout::outbox).
//! - [`bus`]: the seam to other gateways: [`bus::Carrier`], [`bus::Node`], [`bus::Bus`]; the
//!   subscription bookkeeping every carrier shares ([`bus::interest`]); the limits applied to what
//!   arrives ([`bus::inbound`]); the carriers over the built-in broker ([`bus::broker_link`])
//!   and over NATS ([`bus::nats`]).
//! - [`cluster`]: the cluster-wide API on top of the bus: node and client ids, uids, sends to
//!   a uid, a client or everyone, presence events, heartbeats, and the cluster queries and orders
//!   scattered to every gateway and gathered with the list of those that did not answer.
//! - [`admin`]: the admin HTTP API (probes, `/metrics`, `/api/stats`, `POST /api/publish`, which
//!   enters the same path as a client's send) and the demo page.
//! - [`config`], [`credentials`] (link secret, TLS, join-token keys), [`stats`]: settings and
//!   counters.
//!
//! A message's path: client frame -> `edge::connection` -> `cmd::send_to_group` ->
//! `Hub::publish` -> (a) the `Router` queues it to each interested worker's inbox -> the
//! worker's `LocalGroups` push the shared bytes into each member's outbox -> the member's
//! connection writes its batch; (b) the bus sends it to the broker, which relays it to the other
//! gateways, whose carriers hand it to their routers (`Node::deliver`).

pub mod admin;
pub mod bus;
pub mod cluster;
mod cmd;
pub mod config;
pub mod credentials;
pub mod edge;
pub mod fanout;
pub mod gateway;
pub mod history;
pub mod stats;
mod worker;

pub use config::GatewayConfig;
pub use gateway::{bind_client_listener, Gateway, GatewayBuilder, GatewayError};
