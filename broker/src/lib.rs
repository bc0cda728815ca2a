//! The channel server: a pub/sub broker that relays group messages between gateways.
//!
//! - [`server`]: [`Broker`], the handle embedders and the admin server hold; [`Broker::serve`]
//!   accepts links until shutdown and hands each to [`link`].
//! - `state`: what every link shares (settings, registry, counters, link security), created by
//!   [`server`] and read by [`link`].
//! - [`link`]: one task pair per connected gateway: a reader that applies subscribe / unsubscribe /
//!   publish frames (subscriptions past the per-link limit are refused, the link stays), and a
//!   writer that drains the link's [`queue`] in batches.
//! - [`registry`]: channel -> subscribed links. A publish is encoded once and the same bytes are
//!   queued to every subscriber; a link whose queue is full is disconnected as a slow consumer.
//! - [`local`]: [`local::LocalLink`], the embedding gateway's own subscriber, served without a
//!   socket or a frame.
//! - [`php`]: PHP Channel clients (Workerman's `Channel\Client`), recognized on the link port
//!   by their first frame or served on a port of their own: their channels and queues, and the
//!   `send_to_group` bridge between them and the gateways' groups.
//! - [`history`]: channel histories (gateways' groups with `--history`): offsets, epochs and
//!   the last messages, in memory, bounded per channel and as a whole.
//! - [`queue`]: a link's outbound queue, bounded in frames and in bytes.
//! - [`auth`]: link security: the shared secret (challenge and response in the handshake), TLS
//!   on the listener, and the refusal to expose an open link (helpers in `server_kit`).
//! - [`config`]: every limit, with its default. [`stats`]: counters for `/api/stats`;
//!   [`metrics`]: the same counters read at scrape time for `/metrics` (prometheus-client).
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` and `/api/stats` over HTTP (axum).
//!
//! Imports go one way: `admin` -> `metrics` -> `server` -> `link`, `local` -> `state` -> `registry` ->
//! `queue`, with `config`, `auth` and `stats` beneath them all. The wire formats and their fault
//! codes come from `protocol`; process plumbing (settings and their errors, logs, signals, TLS
//! files, secrets) from `server_kit`, shared with the gateway binary.

pub mod admin;
pub mod auth;
pub mod config;
pub mod history;
pub mod link;
pub mod local;
pub mod metrics;
pub mod php;
pub mod queue;
pub mod registry;
pub mod server;
mod sniff;
mod state;
pub mod stats;

pub use config::BrokerConfig;
pub use server::{Broker, BrokerError};
pub use stats::{BrokerStats, StatsSnapshot};
