//! The channel server: a pub/sub broker that relays group messages between gateways.
//!
//! - [`server`]: [`Broker`] owns the shared state; [`Broker::serve`] accepts links until shutdown.
//! - [`link`]: one task pair per connected gateway: a reader that applies subscribe / unsubscribe /
//!   publish frames, and a writer that drains the link's bounded queue in batches.
//! - [`registry`]: channel -> subscribed links. A publish is encoded once and the same bytes are
//!   queued to every subscriber; a link whose queue is full is disconnected as a slow consumer.
//! - [`auth`]: link security: the shared secret (challenge and response in the handshake), TLS
//!   on the listener ([`tls`] loads PEM files), and the refusal to expose an open link.
//! - [`config`]: every limit, with its default. [`stats`]: counters for `/api/stats`;
//!   [`metrics`]: the same counters read at scrape time for `/metrics` (prometheus-client).
//! - [`admin`]: `/healthz`, `/readyz`, `/metrics` and `/api/stats` over HTTP (axum).
//! - [`ops`]: process plumbing shared with the gateway binary: tracing setup, signals, admin HTTP;
//!   [`cli_config`]: `--config FILE`, settings from TOML beneath flags and environment variables.

pub mod admin;
pub mod auth;
pub mod cli_config;
pub mod config;
pub mod link;
pub mod metrics;
pub mod ops;
pub mod registry;
pub mod server;
pub mod stats;
pub mod tls;

pub use config::BrokerConfig;
pub use server::{run, Broker, BrokerError};
pub use stats::{BrokerStats, StatsSnapshot};
