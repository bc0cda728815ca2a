//! [`FakeNode`]: what the gateway's router does for a bus carrier, reduced to a set of wanted
//! groups and a list of what was delivered, for the tests that run one carrier alone against
//! a real engine (`gateway/tests/nats.rs`, `gateway/tests/redis.rs`).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use anyhow::Result;
use bytes::Bytes;
use gateway::bus::interest::Subscriptions;
use gateway::bus::{Bus, BusStatus, Node, Payload, SubscriptionChanges};
use parking_lot::Mutex;
use protocol::{GroupId, GroupName};
use tokio::sync::Notify;

use crate::{wait_for_state, STATS_TIMEOUT};

#[derive(Debug, Default)]
pub struct FakeNode {
    state: Mutex<(HashSet<GroupId>, Subscriptions)>,
    changed: Notify,
    delivered: Mutex<Vec<(String, String)>>,
    /// While set, deliveries wait (the gateway's workers full).
    stalled: AtomicBool,
    unstalled: Notify,
}

impl FakeNode {
    /// `group` gets its first member (`wanted`) or loses its last one.
    pub fn want(&self, group: &str, wanted: bool) {
        let group = GroupId::new(group, 1024).expect("group id");
        let mut state = self.state.lock();
        let changed = if wanted {
            state.0.insert(group.clone())
        } else {
            state.0.remove(&group)
        };
        if changed {
            state.1.record(&group, wanted);
            self.changed.notify_one();
        }
    }

    /// `(group, text)` of every delivery so far, in order.
    pub fn delivered(&self) -> Vec<(String, String)> {
        self.delivered.lock().clone()
    }

    pub fn wanted_groups(&self) -> Vec<String> {
        let state = self.state.lock();
        state.0.iter().map(|g| g.as_str().to_owned()).collect()
    }

    /// While `stalled`, deliveries wait, as when the gateway's workers are full.
    pub fn stall(&self, stalled: bool) {
        self.stalled.store(stalled, Relaxed);
        self.unstalled.notify_waiters();
    }
}

impl Node for FakeNode {
    async fn deliver(&self, group: GroupName<'_>, payload: Payload) {
        while self.stalled.load(Relaxed) {
            let unstalled = self.unstalled.notified();
            if !self.stalled.load(Relaxed) {
                break;
            }
            unstalled.await;
        }
        let text = match &payload {
            Payload::Text(text) => text.as_str().to_owned(),
            Payload::Control(bytes) => format!("control frame of {} bytes", bytes.len()),
            Payload::Positioned(position, text) => {
                format!("{}@{} {}", position.offset, position.epoch, text.as_str())
            }
        };
        self.delivered
            .lock()
            .push((group.as_str().to_owned(), text));
    }

    fn subscriptions(&self, full: bool) -> SubscriptionChanges {
        let mut state = self.state.lock();
        if !full {
            return state.1.take_changes();
        }
        state.1.start_full_sync();
        SubscriptionChanges {
            subscribe: state.0.iter().cloned().collect(),
            unsubscribe: Vec::new(),
        }
    }

    fn subscriptions_lost(&self) {
        self.state.lock().1.lost();
    }

    fn wanted(&self) -> usize {
        self.state.lock().0.len()
    }

    async fn subscriptions_changed(&self) {
        self.changed.notified().await;
    }
}

/// Polls `bus`'s status until `done` holds for it (see [`wait_for_state`]).
pub async fn wait_for_status(
    bus: &Arc<dyn Bus>,
    what: &str,
    done: impl Fn(&BusStatus) -> bool,
) -> Result<BusStatus> {
    wait_for_state(what, STATS_TIMEOUT, || bus.status(), done).await
}

/// Publishes `text` to `group` through `bus`, as a client's send does.
pub fn publish(bus: &Arc<dyn Bus>, group: &str, text: &str) {
    let group = GroupName::parse(group, 1024).expect("group");
    bus.publish(&group, &Bytes::copy_from_slice(text.as_bytes()));
}
