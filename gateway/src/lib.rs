//! The multi-worker WebSocket gateway.
//!
//! - [`server`]: [`Gateway::start`] spawns the workers and the bus; [`Gateway::serve`] accepts
//!   clients and hands them to workers in turn.
//! - [`worker`]: one thread and single-threaded runtime per worker, owning its connections and
//!   their group table; fans deliveries out to local members.
//! - [`connection`]: one task per client: handshake, commands, batched writes, ping/idle, close
//!   codes. [`outbox`]: its bounded outbound queue (slow consumers are closed, never waited on).
//! - [`hub`]: which workers have members of which group; a send goes to those workers directly
//!   and to the [`bus`] for other gateways; the first/last local member (un)subscribes the bus.
//! - [`bus`]: the trait under cross-gateway fan-out, and the built-in broker link behind it.
//! - [`limits`]: connections per process and per client address (the acceptor holds a permit
//!   per socket), and the per-connection frame rate limit. [`origin`]: the Origin allowlist
//!   checked in the handshake.
//! - [`security`]: the broker link's secret and TLS, TLS for clients (wss), and [`auth`]: signed
//!   join tokens, checked at each join and send.
//! - [`config`], [`stats`]: settings and counters; [`metrics`] reads the counters at scrape time.
//! - [`admin`]: the admin HTTP server: probes, `/metrics`, `/api/stats`, and `POST /api/publish`,
//!   which enters the same path as a client's send (`Gateway::publish` -> `Hub::publish`).
//! - [`demo`]: the demo page (`static/demo.html`, served at `/` and `/demo` by the admin server).
//!
//! A message's path: client frame -> `connection` parses it -> `Hub::publish` -> (a) `Router`
//! queues it to each interested worker's inbox -> `worker` pushes the shared bytes into each
//! member's outbox -> the member's `connection` writes its batch; (b) the bus sends it to the
//! broker, which relays it to the other gateways' routers.

pub mod admin;
pub mod bus;
mod cmd;
pub mod config;
pub mod credentials;
pub mod edge;
pub mod fanout;
pub mod gateway;
pub mod stats;
mod worker;

pub use config::GatewayConfig;
pub use gateway::{bind_reuseport, Gateway, GatewayBuilder, GatewayError};
