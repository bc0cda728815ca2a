//! Process-wide routing between workers, and between this process and the bus.
//!
//! [`Router`] knows which workers have local members of each group (and cluster topic) and
//! queues deliveries to their inboxes, and runs [`Job`]s on them (the cluster API's questions
//! and orders); it keeps the bus's [`Subscriptions`] beside its table, under the same lock, so
//! that first joins and last leaves reach the bus in the order they happened. [`Hub`] adds the
//! bus and the cluster: it is the [`Node`] the bus delivers to, a client's send is delivered to
//! local workers directly and published on the bus for the other gateways (which is why the
//! carriers drop a gateway's own messages), and control frames go to [`crate::cluster`].
//!
//! No lock is held while calling out: the bus is notified, and published to, after the table's
//! lock is released.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use parking_lot::RwLock;
use protocol::cluster::{ClientId, NodeId};
use protocol::history::Position;
use protocol::{GroupId, GroupName, Text};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, Notify};

use server_kit::memory::shrink_if_sparse;

use crate::bus::interest::{SubscriptionChanges, Subscriptions};
use crate::bus::{Bus, HistoryError, HistoryPage, HistoryPolicy, HistoryQuery, Node, Payload};
use crate::cluster::Cluster;
use crate::fanout::local::{is_client_group, LocalGroups};
use crate::history::policy::HistoryRules;

/// A join refused: the process already has members in this many distinct groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this gateway already has members in {0} distinct groups, its limit (--max-groups)")]
pub struct GroupLimit(pub usize);

/// One message for the members of a group (or cluster topic) on one worker.
#[derive(Debug)]
pub struct Delivery {
    pub group: GroupId,
    pub payload: Text,
    /// Connections not to deliver to (`send_to_group`'s `exclude`; a presence event's subject).
    pub exclude: Option<Arc<[ClientId]>>,
    /// A history group's message: its position, for the positioned members.
    pub position: Option<Position>,
}

/// Something to run on a worker's thread, with its connections and group table at hand.
pub struct Job(Box<dyn FnOnce(&LocalGroups) + Send>);

impl std::fmt::Debug for Job {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Job")
    }
}

impl Job {
    pub(crate) fn run(self, local: &LocalGroups) {
        (self.0)(local)
    }
}

/// What a worker's inbox holds.
pub enum Work {
    Deliver(Delivery),
    Run(Job),
}

impl std::fmt::Debug for Work {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Work::Deliver(delivery) => delivery.fmt(f),
            Work::Run(job) => job.fmt(f),
        }
    }
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
    inboxes: Vec<mpsc::Sender<Work>>,
    /// Topics subscribed for as long as the process runs (the cluster's control topic and this
    /// node's own), whatever the workers hold.
    permanent: Vec<GroupId>,
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
    /// Entries of `workers` that are cluster topics (uids, presence), not client groups.
    topics: usize,
    subscriptions: Subscriptions,
}

impl Router {
    /// A router for workers with these inboxes, without a limit on groups.
    pub fn new(inboxes: Vec<mpsc::Sender<Work>>) -> Router {
        Router {
            table: RwLock::new(Table::default()),
            inboxes,
            permanent: Vec::new(),
            max_groups: usize::MAX,
            groups_refused: AtomicU64::new(0),
            subscriptions_changed: Notify::new(),
        }
    }

    /// At most `max_groups` distinct groups at once.
    pub fn with_max_groups(self, max_groups: usize) -> Router {
        Router { max_groups, ..self }
    }

    /// Subscribes `topics` for as long as the router lives.
    pub fn with_permanent(self, permanent: Vec<GroupId>) -> Router {
        Router { permanent, ..self }
    }

    /// `worker` got its first local member of `group`; refused when `group` is a client group
    /// that would be one more than `max_groups` (cluster topics are bounded by the connections
    /// and groups they serve).
    pub fn worker_joined(&self, worker: usize, group: &GroupId) -> Result<(), GroupLimit> {
        let is_group = is_client_group(group);
        let first = {
            let mut table = self.table.write();
            let groups = table.workers.len() - table.topics;
            if is_group && groups >= self.max_groups && !table.workers.contains_key(group) {
                drop(table);
                self.groups_refused.fetch_add(1, Relaxed);
                return Err(GroupLimit(self.max_groups));
            }
            let workers = table.workers.entry(group.clone()).or_default();
            let first = workers.is_empty();
            workers.insert(worker);
            if first {
                if !is_group {
                    table.topics += 1;
                }
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
                if !is_client_group(group) {
                    table.topics -= 1;
                }
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
        self.dispatch_excluding(group, payload, None).await
    }

    /// [`Router::dispatch`], skipping the connections in `exclude`.
    pub async fn dispatch_excluding(
        &self,
        group: &str,
        payload: &Text,
        exclude: Option<&Arc<[ClientId]>>,
    ) -> usize {
        self.dispatch_to(group, payload, exclude, None).await
    }

    /// A history group's message, with its position, to every worker with members of `group`.
    pub async fn dispatch_positioned(
        &self,
        group: &str,
        position: &Position,
        payload: &Text,
    ) -> usize {
        self.dispatch_to(group, payload, None, Some(position)).await
    }

    async fn dispatch_to(
        &self,
        group: &str,
        payload: &Text,
        exclude: Option<&Arc<[ClientId]>>,
        position: Option<&Position>,
    ) -> usize {
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
                exclude: exclude.cloned(),
                position: position.cloned(),
            };
            if self.send(worker, Work::Deliver(delivery)).await {
                reached += 1;
            }
        }
        reached
    }

    /// Queues `work` to `worker`, waiting for room in a full inbox. False when the worker has
    /// stopped (shutdown) or does not exist.
    async fn send(&self, worker: usize, work: Work) -> bool {
        let Some(inbox) = self.inboxes.get(worker) else {
            return false;
        };
        match inbox.try_send(work) {
            Ok(()) => true,
            // Only a stopped worker (shutdown) closes its inbox.
            Err(mpsc::error::TrySendError::Closed(_)) => false,
            // Backpressure: wait for room. Boxed, so that the futures of every caller (one per
            // connection) do not carry the send's state while idle.
            Err(mpsc::error::TrySendError::Full(work)) => Box::pin(inbox.send(work)).await.is_ok(),
        }
    }

    /// Runs `job` on `worker` and returns what it returns; `None` when the worker is gone.
    pub(crate) async fn ask<T: Send + 'static>(
        &self,
        worker: usize,
        job: impl FnOnce(&LocalGroups) -> T + Send + 'static,
    ) -> Option<T> {
        let (tx, rx) = oneshot::channel();
        let work = Work::Run(Job(Box::new(move |local| {
            let _ = tx.send(job(local));
        })));
        if !self.send(worker, work).await {
            return None;
        }
        rx.await.ok()
    }

    /// Runs `job` on every worker (in parallel) and returns what each returned.
    pub(crate) async fn ask_all<T: Send + 'static>(
        &self,
        job: impl Fn(&LocalGroups) -> T + Send + Sync + 'static,
    ) -> Vec<T> {
        let job = Arc::new(job);
        let mut answers = Vec::with_capacity(self.inboxes.len());
        for worker in 0..self.inboxes.len() {
            let (tx, rx) = oneshot::channel();
            let job = job.clone();
            let work = Work::Run(Job(Box::new(move |local| {
                let _ = tx.send(job(local));
            })));
            if self.send(worker, work).await {
                answers.push(rx);
            }
        }
        let mut out = Vec::with_capacity(answers.len());
        for rx in answers {
            if let Ok(answer) = rx.await {
                out.push(answer);
            }
        }
        out
    }

    /// Runs `job` on every worker, without waiting for it to have run.
    pub(crate) async fn run_on_all(&self, job: impl Fn(&LocalGroups) + Send + Sync + 'static) {
        let job = Arc::new(job);
        for worker in 0..self.inboxes.len() {
            let job = job.clone();
            self.send(worker, Work::Run(Job(Box::new(move |local| job(local)))))
                .await;
        }
    }

    /// Runs `job` on `worker`, without waiting for it to have run.
    pub(crate) async fn run_on(
        &self,
        worker: usize,
        job: impl FnOnce(&LocalGroups) + Send + 'static,
    ) {
        self.send(worker, Work::Run(Job(Box::new(job)))).await;
    }

    /// Workers of this process.
    pub fn worker_count(&self) -> usize {
        self.inboxes.len()
    }

    /// Distinct client groups with members anywhere in this process.
    pub fn group_count(&self) -> usize {
        let table = self.table.read();
        table.workers.len() - table.topics
    }

    /// Topics this process is subscribed to: client groups, cluster topics, permanent topics.
    pub fn subscription_count(&self) -> usize {
        self.table.read().workers.len() + self.permanent.len()
    }

    /// Joins refused because the process had `max_groups` groups.
    pub fn groups_refused(&self) -> u64 {
        self.groups_refused.load(Relaxed)
    }
}

impl Router {
    fn subscriptions(&self, full: bool) -> SubscriptionChanges {
        if !full {
            // Asked at every history publish too: the exclusive lock only when there is
            // something to take.
            if !self.table.read().subscriptions.has_changes() {
                return SubscriptionChanges::default();
            }
            return self.table.write().subscriptions.take_changes();
        }
        self.table.write().subscriptions.start_full_sync();
        // The snapshot under the read lock: deliveries go on meanwhile.
        let subscribe = {
            let table = self.table.read();
            let mut subscribe = Vec::with_capacity(self.permanent.len() + table.workers.len());
            subscribe.extend(self.permanent.iter().cloned());
            subscribe.extend(table.workers.keys().cloned());
            subscribe
        };
        SubscriptionChanges {
            subscribe,
            unsubscribe: Vec::new(),
        }
    }
}

/// The router, the bus and the cluster: what workers call when a client sends, and the [`Node`]
/// the bus delivers to.
pub struct Hub {
    /// Itself, for the tasks it spawns.
    me: std::sync::Weak<Hub>,
    router: Arc<Router>,
    /// Set once the carrier has started (it is started with this hub as its node).
    bus: OnceLock<Arc<dyn Bus>>,
    cluster: Cluster,
    /// Which groups keep a history (`--history`).
    history: HistoryRules,
    /// How long a history read waits (`--history-timeout`).
    history_timeout: Duration,
    pub(crate) history_counters: HistoryCounters,
}

/// What the gateway counts of history groups (in `/api/stats` `history`).
#[derive(Debug, Default)]
pub struct HistoryCounters {
    /// Positioned messages dropped as already delivered (a carrier that brought one twice).
    pub duplicates: AtomicU64,
    /// Holes in a group's offsets seen by a worker, and the messages it then asked the store for.
    pub holes: AtomicU64,
    /// Messages of such holes the store no longer had (or could not give in time): positioned
    /// members never received them.
    pub unrepaired: AtomicU64,
    /// Recovering joins, and those that could not recover everything (`recovered:false`).
    pub recoveries: AtomicU64,
    pub recoveries_incomplete: AtomicU64,
    /// Messages delivered to recovering members from the store.
    pub recovered_messages: AtomicU64,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("router", &self.router)
            .field("node", &self.cluster.node_id())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub whose groups keep no history.
    pub fn new(router: Router, cluster: Cluster) -> Arc<Hub> {
        Hub::with_history(
            router,
            cluster,
            HistoryRules::default(),
            Duration::from_secs(2),
        )
    }

    /// A hub whose groups keep history as `rules` say, read within `timeout`.
    pub fn with_history(
        router: Router,
        cluster: Cluster,
        rules: HistoryRules,
        timeout: Duration,
    ) -> Arc<Hub> {
        let router = router.with_permanent(cluster.permanent_topics());
        Arc::new_cyclic(|me| Hub {
            me: me.clone(),
            router: Arc::new(router),
            bus: OnceLock::new(),
            cluster,
            history: rules,
            history_timeout: timeout,
            history_counters: HistoryCounters::default(),
        })
    }

    /// The history `group` keeps, if any.
    pub fn history_policy(&self, group: &str) -> Option<HistoryPolicy> {
        self.history.policy(group)
    }

    /// Reads `group`'s history within `--history-timeout`.
    pub async fn history(
        &self,
        group: &GroupName<'_>,
        policy: HistoryPolicy,
        query: HistoryQuery,
    ) -> Result<HistoryPage, HistoryError> {
        let Some(bus) = self.bus.get() else {
            return Err(HistoryError::Unavailable("the bus has not started".into()));
        };
        let read = bus.history(group, policy, query);
        match tokio::time::timeout(self.history_timeout, read).await {
            Ok(page) => page,
            Err(_) => Err(HistoryError::Unavailable(format!(
                "no answer within {:?} (--history-timeout)",
                self.history_timeout
            ))),
        }
    }

    /// Removes `group`'s history (its next message starts a new epoch).
    pub async fn remove_history(&self, group: &GroupName<'_>) -> Result<(), HistoryError> {
        let Some(bus) = self.bus.get() else {
            return Err(HistoryError::Unavailable("the bus has not started".into()));
        };
        match tokio::time::timeout(self.history_timeout, bus.remove_history(group)).await {
            Ok(removed) => removed,
            Err(_) => Err(HistoryError::Unavailable(format!(
                "no answer within {:?} (--history-timeout)",
                self.history_timeout
            ))),
        }
    }

    /// This hub, shared (`None` only while it is being dropped).
    pub(crate) fn me(&self) -> Option<Arc<Hub>> {
        self.me.upgrade()
    }

    /// Sets the bus, once, when the carrier started.
    pub fn set_bus(&self, bus: Arc<dyn Bus>) {
        let _ = self.bus.set(bus);
    }

    pub fn router(&self) -> &Arc<Router> {
        &self.router
    }

    pub fn cluster(&self) -> &Cluster {
        &self.cluster
    }

    pub fn node_id(&self) -> NodeId {
        self.cluster.node_id()
    }

    /// The bus, once started.
    pub fn bus(&self) -> Option<&Arc<dyn Bus>> {
        self.bus.get()
    }

    /// Publishes `payload` on the bus (dropped before the bus has started).
    pub fn publish_raw(&self, topic: &GroupName<'_>, payload: &Bytes) {
        if let Some(bus) = self.bus.get() {
            bus.publish(topic, payload);
        }
    }

    /// A client's send: delivered to this process's members directly, and to other gateways
    /// through the bus.
    /// A message of a group with history goes to the store only, and reaches this gateway's
    /// members when it comes back positioned.
    pub async fn publish(&self, group: &GroupName<'_>, payload: &Text) {
        if let Some(policy) = self.history.policy(group.as_str()) {
            match self.bus.get() {
                Some(bus) => bus.publish_history(group, payload.as_bytes(), policy),
                None => tracing::warn!(
                    group = group.as_str(),
                    "history message dropped: the bus has not started"
                ),
            }
            return;
        }
        self.publish_plain(group, payload).await;
    }

    /// A send that skips the group's history (the admin API's `"history":false`): delivered as
    /// to a group without history, with no position.
    pub async fn publish_plain(&self, group: &GroupName<'_>, payload: &Text) {
        self.publish_raw(group, payload.as_bytes());
        self.router.dispatch(group.as_str(), payload).await;
    }
}

impl Node for Hub {
    async fn deliver(&self, group: GroupName<'_>, payload: Payload) {
        match payload {
            Payload::Text(text) => {
                self.router.dispatch(group.as_str(), &text).await;
            }
            Payload::Control(frame) => crate::cluster::on_control(self, group, frame).await,
            Payload::Positioned(position, text) => {
                self.router
                    .dispatch_positioned(group.as_str(), &position, &text)
                    .await;
            }
        }
    }

    fn subscriptions(&self, full: bool) -> SubscriptionChanges {
        self.router.subscriptions(full)
    }

    fn subscriptions_lost(&self) {
        self.router.table.write().subscriptions.lost();
    }

    /// Client groups only: the cluster's topics are counted apart (`/api/stats` `cluster`).
    fn wanted(&self) -> usize {
        self.router.group_count()
    }

    async fn subscriptions_changed(&self) {
        self.router.subscriptions_changed.notified().await;
    }

    /// Every worker asks the store what its history groups got while the bus was down.
    fn reconnected(&self) {
        if self.history.is_empty() {
            return;
        }
        let Some(hub) = self.me() else {
            return;
        };
        tokio::spawn(async move {
            hub.router
                .run_on_all(|local| local.catch_up_streams())
                .await;
        });
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
