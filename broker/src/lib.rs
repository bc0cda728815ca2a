//! The channel server: a pub/sub broker that relays group messages between gateways.
//!
//! - [`server`]: [`Broker`] owns the shared state; [`Broker::serve`] accepts links until shutdown
//!   and hands each to [`link`].
//! - `state`: what every link shares (settings, registry, counters, link security), created by
//!   [`server`] and read by [`link`], so that neither of them imports the other's internals.
//! - [`link`]: one task pair per connected gateway: a reader that applies subscribe / unsubscribe /
//!   publish frames, and a writer that drains the link's bounded queue in batches.
//! - [`registry`]: channel -> subscribed links. A publish is encoded once and the same bytes are
//!   queued to every subscriber; a link whose queue is full is disconnected as a slow consumer.
//! - [`auth`]: link security: the shared secret (challenge and response in the handshake), TLS
//!   on the listener, and the refusal to expose an open link (helpers in `server_kit`).
//! - [`config`]: every limit, with its default. [`stats`]: counters for `/api/stats`;
//!   [`metrics`]: the same counters read at scrape time for `/metrics` (prometheus-client).
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` and `/api/stats` over HTTP (axum).
//!
//! Process plumbing (settings, logs, signals, TLS files, secrets) comes from `server_kit`, shared
//! with the gateway binary.

pub mod admin;
pub mod auth;
pub mod config;
pub mod link;
pub mod metrics;
pub mod registry;
pub mod server;
mod state;
pub mod stats;

pub use config::BrokerConfig;
pub use server::{Broker, BrokerError};
pub use stats::{BrokerStats, StatsSnapshot};
