//! End-to-end test harness: runs the real `broker`, `gateway`, `client-cli` and `push-bench`
//! binaries and talks to them as users do. The first test of a test executable to start one
//! builds them (`cargo build --workspace --bins`, a no-op when they are fresh): `cargo test -p
//! e2e` needs no earlier build.
//!
//! - [`servers`]: starts a [`Broker`] or a [`Gateway`] process on port 0, waits until it is
//!   ready, and reads its admin API ([`Admin`]).
//! - The rest comes from the workspace's `test-support` crate, re-exported here: [`process`]
//!   (a child process guard, killed on drop, output captured; it builds the binaries), [`ws`]
//!   (the WebSocket [`Client`]), [`frame`] (malformed frames), [`certs`] (test certificates),
//!   the timeouts.
//! - [`numbered`](mod@numbered): numbered senders and checking receivers, for the tests of
//!   outages and recovery.
//! - [`history`]: the history and recovery scenarios (`--history`), shared by every carrier's
//!   tests.
//! - [`docs`]: runs the `sh` blocks of README.md and docs/*.md, and lists which test runs each.
//! - [`seed`]: the seed scenario over several gateways, shared by every carrier's tests.
//! - Below: the tagged and numbered messages the delivery tests send and check.
//!
//! No fixed ports and no sleeps for readiness: addresses and readiness come from the log events.
//! Every wait has a deadline (the constants re-exported below); stats are polled every
//! [`POLL_INTERVAL`].

pub mod docs;
pub mod history;
pub mod numbered;
pub mod seed;
pub mod servers;

pub use servers::{Broker, BrokerMode, Gateway, GatewayConfig, LINK_DEBUG};
pub use test_support::{certs, frame, process, ws};
pub use test_support::{
    expect_quiet, stat, Admin, Client, Event, Process, RawFrame, EXIT_TIMEOUT, POLL_INTERVAL,
    QUIET_PERIOD, RECV_TIMEOUT, STARTUP_TIMEOUT, STATS_TIMEOUT,
};

/// The text of message `seq` from `sender` to `group`: unique per test, so a received message
/// tells who sent it, where, and in which order.
pub fn tagged(sender: &str, group: &str, seq: usize) -> String {
    format!("{sender}>{group}#{seq}")
}

/// Sends `count` tagged messages from `sender` to each of `groups`, interleaved
/// (`g1#0, g2#0, g1#1, ...`), without `req_id` (as the seed does).
pub async fn publish_tagged(
    sender: &mut Client,
    groups: &[&str],
    count: usize,
) -> anyhow::Result<()> {
    for seq in 0..count {
        for group in groups {
            let message = tagged(sender.name(), group, seq);
            sender.publish(group, &message).await?;
        }
    }
    Ok(())
}

/// The streams (see [`Client::expect_streams`]) a member of `member_of` receives when each of
/// `senders` ran [`publish_tagged`] with `groups` and `count`.
pub fn tagged_streams(
    member_of: &[&str],
    senders: &[&str],
    groups: &[&str],
    count: usize,
) -> Vec<Vec<String>> {
    let mut streams = Vec::new();
    for sender in senders {
        for group in groups.iter().filter(|g| member_of.contains(g)) {
            streams.push((0..count).map(|seq| tagged(sender, group, seq)).collect());
        }
    }
    streams
}

/// The text of numbered message `n` from `sender`: `sender|n`.
pub fn numbered(sender: &str, n: u64) -> String {
    format!("{sender}|{n}")
}

/// Reads a numbered message (see [`numbered`]) received by `receiver`, checking that it was
/// sent (below `sent[sender]`, the count each sender sent) and that it comes after `last`, the
/// previous number from that sender, if any. Returns the sender and number.
pub fn check_numbered(
    receiver: &str,
    event: Event,
    sent: &std::collections::BTreeMap<String, u64>,
    last: &std::collections::BTreeMap<String, u64>,
) -> anyhow::Result<(String, u64)> {
    use anyhow::{bail, ensure, Context};
    let Event::Text(text) = event else {
        bail!("{receiver}: expected a message, got {event}");
    };
    let (sender, n) = text
        .split_once('|')
        .and_then(|(s, n)| Some((s.to_owned(), n.parse::<u64>().ok()?)))
        .with_context(|| format!("{receiver}: unexpected message {text:?}"))?;
    ensure!(
        sent.get(&sender).is_some_and(|&count| n < count),
        "{receiver}: got {text:?}, which was never sent"
    );
    if let Some(&previous) = last.get(&sender) {
        ensure!(
            n > previous,
            "{receiver}: got {text:?} after {}",
            numbered(&sender, previous)
        );
    }
    Ok((sender, n))
}
