//! Process-wide routing between workers, and between this process and the bus.
//!
//! [`Router`] knows which workers have local members of each group and queues deliveries to
//! their inboxes; it is the [`Node`] the bus delivers to, and keeps the bus's
//! [`Subscriptions`] beside its table, under the same lock, so that first joins and last leaves
//! reach the bus in the order they happened. [`Hub`] adds the bus: a client's send is
//! delivered to local workers directly and published on the bus for the other gateways (which
//! is why the carriers drop a gateway's own messages).
//!
//! No lock is held while calling out: the bus is notified, and published to, after the table's
//! lock is released.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::RwLock;
use protocol::{GroupId, GroupName, Text};
use tokio::sync::{mpsc, Notify};

use server_kit::memory::shrink_if_sparse;

use crate::bus::interest::{SubscriptionChanges, Subscriptions};
use crate::bus::{Bus, Node};

/// A join refused: the process already has members in this many distinct groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this gateway already has members in {0} distinct groups, its limit (--max-groups)")]
pub struct GroupLimit(pub usize);

/// One message for the members of a group on one worker.
#[derive(Debug)]
pub struct Delivery {
    pub group: GroupId,
    pub payload: Text,
}

/// A set of worker indexes (at most [`crate::config::MAX_WORKERS`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct WorkerSet(u64);

impl WorkerSet {
    fn insert(&mut self, worker: usize) {
        self.0 |= 1 << worker;
    }
    fn remove(&mut self, worker: usize) {
        self.0 &= !(1 << worker);
    }
    fn is_empty(self) -> bool {
        self.0 == 0
    }
    fn iter(self) -> impl Iterator<Item = usize> {
        let mut bits = self.0;
        std::iter::from_fn(move || {
            if bits == 0 {
                return None;
            }
            let worker = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            Some(worker)
        })
    }
}

/// Group -> workers with local members, and the workers' inboxes.
#[derive(Debug)]
pub struct Router {
    table: RwLock<Table>,
    inboxes: Vec<mpsc::Sender<Delivery>>,
    /// Most distinct groups at once (`--max-groups`): each is one subscription on the bus.
    max_groups: usize,
    /// Joins refused because `max_groups` groups had members.
    groups_refused: AtomicU64,
    /// Woken when `table.subscriptions` has a change for the bus.
    subscriptions_changed: Notify,
}

#[derive(Debug, Default)]
struct Table {
    workers: HashMap<GroupId, WorkerSet>,
    subscriptions: Subscriptions,
}

impl Router {
    /// A router for workers with these inboxes, without a limit on groups.
    pub fn new(inboxes: Vec<mpsc::Sender<Delivery>>) -> Router {
        Router {
            table: RwLock::new(Table::default()),
            inboxes,
            max_groups: usize::MAX,
            groups_refused: AtomicU64::new(0),
            subscriptions_changed: Notify::new(),
        }
    }

    /// At most `max_groups` distinct groups at once.
    pub fn with_max_groups(self, max_groups: usize) -> Router {
        Router { max_groups, ..self }
    }

    /// `worker` got its first local member of `group`; refused when `group` would be one more
    /// than `max_groups`.
    pub fn worker_joined(&self, worker: usize, group: &GroupId) -> Result<(), GroupLimit> {
        let first = {
            let mut table = self.table.write();
            if table.workers.len() >= self.max_groups && !table.workers.contains_key(group) {
                drop(table);
                self.groups_refused.fetch_add(1, Relaxed);
                return Err(GroupLimit(self.max_groups));
            }
            let workers = table.workers.entry(group.clone()).or_default();
            let first = workers.is_empty();
            workers.insert(worker);
            if first {
                table.subscriptions.record(group, true);
            }
            first
        };
        if first {
            self.subscriptions_changed.notify_one();
        }
        Ok(())
    }

    /// `worker` lost its last local member of `group`.
    pub fn worker_left(&self, worker: usize, group: &GroupId) {
        let last = {
            let mut table = self.table.write();
            let Some(workers) = table.workers.get_mut(group) else {
                return;
            };
            workers.remove(worker);
            let last = workers.is_empty();
            if last {
                table.workers.remove(group);
                shrink_if_sparse(&mut table.workers);
                table.subscriptions.record(group, false);
            }
            last
        };
        if last {
            self.subscriptions_changed.notify_one();
        }
    }

    /// Queues `payload` to every worker with members of `group`, waiting for room in a full
    /// inbox (backpressure on the publisher). Returns the number of workers reached.
    pub async fn dispatch(&self, group: &str, payload: &Text) -> usize {
        let (group, workers) = {
            let table = self.table.read();
            match table.workers.get_key_value(group) {
                Some((key, workers)) => (key.clone(), *workers),
                None => return 0,
            }
        };
        let mut reached = 0;
        for worker in workers.iter() {
            let delivery = Delivery {
                group: group.clone(),
                payload: payload.clone(),
            };
            let inbox = &self.inboxes[worker];
            let sent = match inbox.try_send(delivery) {
                Ok(()) => true,
                // Only a stopped worker (shutdown) closes its inbox.
                Err(mpsc::error::TrySendError::Closed(_)) => false,
                // Backpressure: wait for room. Boxed, so that the futures of every caller (one
                // per connection) do not carry the send's state while idle.
                Err(mpsc::error::TrySendError::Full(delivery)) => {
                    Box::pin(inbox.send(delivery)).await.is_ok()
                }
            };
            if sent {
                reached += 1;
            }
        }
        reached
    }

    /// Distinct groups with members anywhere in this process.
    pub fn group_count(&self) -> usize {
        self.table.read().workers.len()
    }

    /// Joins refused because the process had `max_groups` groups.
    pub fn groups_refused(&self) -> u64 {
        self.groups_refused.load(Relaxed)
    }
}

impl Node for Router {
    async fn deliver(&self, group: GroupName<'_>, payload: Text) {
        self.dispatch(group.as_str(), &payload).await;
    }

    fn subscriptions(&self, full: bool) -> SubscriptionChanges {
        if !full {
            return self.table.write().subscriptions.take_changes();
        }
        self.table.write().subscriptions.start_full_sync();
        // The snapshot under the read lock: deliveries go on meanwhile.
        let subscribe = self.table.read().workers.keys().cloned().collect();
        SubscriptionChanges {
            subscribe,
            unsubscribe: Vec::new(),
        }
    }

    fn subscriptions_lost(&self) {
        self.table.write().subscriptions.lost();
    }

    fn wanted(&self) -> usize {
        self.group_count()
    }

    async fn subscriptions_changed(&self) {
        self.subscriptions_changed.notified().await;
    }
}

/// The router plus the bus: what workers call when a client sends.
pub struct Hub {
    router: Arc<Router>,
    bus: Arc<dyn Bus>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("router", &self.router)
            .finish_non_exhaustive()
    }
}

impl Hub {
    pub fn new(router: Arc<Router>, bus: Arc<dyn Bus>) -> Hub {
        Hub { router, bus }
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// A client's send: delivered to this process's members directly, and to other gateways
    /// through the bus.
    pub async fn publish(&self, group: &GroupName<'_>, payload: &Text) {
        self.bus.publish(group, payload);
        self.router.dispatch(group.as_str(), payload).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A million groups once joined and then left must not keep their table (the finding:
    /// 700-875 bytes of RSS per group stayed after the groups were gone).
    #[test]
    fn the_group_table_gives_memory_back_once_groups_are_gone() {
        let router = Router::new(Vec::new());
        let groups: Vec<GroupId> = (0..50_000)
            .map(|i| GroupId::new(&format!("g{i}"), 64).expect("valid group id"))
            .collect();
        for group in &groups {
            router.worker_joined(0, group).expect("no limit");
        }
        let full = router.table.read().workers.capacity();
        for group in &groups {
            router.worker_left(0, group);
        }
        let left = router.table.read().workers.capacity();
        assert!(full >= 50_000, "{full}");
        assert!(left <= 1024, "capacity {left} kept after every group left");
    }

    #[test]
    fn worker_set() {
        let mut set = WorkerSet::default();
        assert!(set.is_empty());
        set.insert(0);
        set.insert(5);
        set.insert(63);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 5, 63]);
        set.remove(5);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 63]);
        set.remove(0);
        set.remove(63);
        assert!(set.is_empty());
    }
}
