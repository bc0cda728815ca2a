//! What the workspace's tests share, so that each test file holds only its scenarios.
//!
//! - [`wait`]: [`wait_until`] polls a probe until it succeeds or its deadline passes; every
//!   wait in the tests has one of the deadlines below.
//! - [`net`]: port-0 listeners, addresses where nothing listens, connections from a chosen
//!   loopback address.
//! - [`process`]: a child process guard, killed on drop, whose output is captured line by
//!   line; waits for the log events that signal readiness. [`process::binary`] builds the
//!   workspace's binaries before it hands out their paths.
//! - [`ws`]: a WebSocket [`Client`] speaking the JSON protocol (over `ws://` or `wss://`), with
//!   barriers (a request whose ack must come next) and quiet checks ([`expect_quiet`]);
//!   [`frame`] builds the malformed frames it can also send.
//! - [`http`]: an [`Admin`] HTTP endpoint: probes, stats, metrics samples.
//! - [`nats`]: real `nats-server` processes, one or a three-node cluster, killed on drop, and
//!   their monitoring view of the subscriptions.
//! - [`redis`]: `redis-server` processes (a server, a cluster) and the engine's view of
//!   pub/sub, for the Redis carrier's tests.
//! - [`certs`]: a CA and certificates made at test time, for TLS tests; [`TempFile`]: a file
//!   removed on drop.
//! - `broker` (feature `broker`): a broker library instance on port 0 in the test's runtime,
//!   and a link client speaking the broker protocol to it.
//! - `gateway` (feature `gateway`): a gateway library instance on port 0 in the test's process;
//!   `fake_node`: a stand-in for the gateway's router, to run one bus carrier alone.
//!
//! No fixed ports and no sleeps for readiness: servers listen on port 0, and readiness comes
//! from their log events or their state.

pub mod certs;
pub mod frame;
pub mod http;
pub mod nats;
pub mod net;
pub mod process;
pub mod redis;
pub mod wait;
pub mod ws;

#[cfg(feature = "broker")]
pub mod broker;
#[cfg(feature = "gateway")]
pub mod fake_node;
#[cfg(feature = "gateway")]
pub mod gateway;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{Context, Result};

pub use frame::RawFrame;
pub use http::{stat, Admin};
pub use process::Process;
pub use wait::{wait_for_state, wait_until};
pub use ws::{expect_quiet, Client, Event};

/// How long a server may take to say that it is ready.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);
/// How long one expected frame (or one request's answer) may take to arrive.
pub const RECV_TIMEOUT: Duration = Duration::from_secs(5);
/// How long stats may take to reach an expected state.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a process may take to exit once told to.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval between two polls of a state (stats, an admin endpoint).
pub const POLL_INTERVAL: Duration = Duration::from_millis(10);
/// After every expected frame arrived (barriers included), how long a client must then stay
/// silent: catches late duplicates and strays that no barrier can order.
pub const QUIET_PERIOD: Duration = Duration::from_millis(300);

/// A file in the temp directory, named after the test process, removed on drop.
#[derive(Debug)]
pub struct TempFile(PathBuf);

impl TempFile {
    /// Writes `contents` to a fresh file whose name ends with `name` (e.g. `bad.toml`).
    pub fn new(name: &str, contents: impl AsRef<[u8]>) -> Result<TempFile> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "test-{}-{}-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Relaxed)
        ));
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        Ok(TempFile(path))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// The path as a command-line argument.
    pub fn arg(&self) -> Result<&str> {
        self.0.to_str().context("the temp path is not UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
