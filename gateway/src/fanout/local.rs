//! One worker's connections and group table: every [`Client`] it holds, and topic -> (connection
//! -> client) for the groups and cluster topics (a uid's, a group's presence) they are in. Only
//! its own thread touches it (no locks on the per-message path); the first member of a topic on
//! this worker and the last one to leave tell the [`Router`](crate::fanout::hub::Router), which
//! keeps the process-wide view.
//!
//! Every change of membership goes through here, whoever asks for it (the client's own command,
//! the admin API, the connection closing), so that a client's groups, its uid and the tables
//! always agree, and each join or leave of a group yields its presence event, queued in the order
//! the changes happen on this worker ([`PRESENCE_QUEUE`]) for one task to publish.

use std::cell::{Cell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use bytes::Bytes;

use protocol::client::{presence_event, PresenceKind};
use protocol::cluster::{topic, ClientId, ClientInfo, Member, NodeId, Uid};
use protocol::history::Position;
use protocol::{GroupId, Text};
use server_kit::memory::shrink_if_sparse;

use tokio::sync::mpsc;

use crate::fanout::frame;
use crate::fanout::hub::{Delivery, GroupLimit, Hub, Work};
pub(crate) use crate::fanout::memberships::Membership;
use crate::fanout::memberships::Memberships;
use crate::fanout::outbox::{Outbox, Push, Signal};
use crate::stats::WorkerStats;

/// A connection's number within its worker.
pub(crate) type ConnId = u64;

/// Presence events waiting to be published, per worker; past it they are dropped and counted
/// (`presence_dropped`).
pub const PRESENCE_QUEUE: usize = 4096;

/// Most uid hashes one worker reports for a group's count; past it the count of distinct uids
/// is this worker's own (the cluster's is then a sum, not exact).
pub(crate) const MAX_UID_HASHES: usize = 10_000;

/// One connection as its worker knows it: where its messages go, its uid and its groups.
#[derive(Debug)]
pub(crate) struct Client {
    /// Its cluster-wide id; `id.conn` is its number on this worker.
    pub(crate) id: ClientId,
    pub(crate) outbox: Outbox,
    uid: RefCell<Option<Uid>>,
    /// Client groups (not cluster topics), and how it is in each.
    pub(crate) groups: RefCell<Memberships>,
    /// Recoveries in progress and positions already delivered, for its positioned groups
    /// (`None`, 8 bytes, for a connection that never recovered).
    pub(crate) history: RefCell<Option<Box<crate::history::recovery::MemberHistory>>>,
    /// Set by an order to close it (the admin API's `close_client`): code and reason.
    close: RefCell<Option<Box<(u16, String)>>>,
}

impl Client {
    pub(crate) fn is_positioned(&self, group: &GroupId) -> bool {
        self.groups
            .borrow()
            .get(group.as_str())
            .is_some_and(|m| m.positioned)
    }

    pub(crate) fn uid(&self) -> Option<Uid> {
        self.uid.borrow().clone()
    }

    pub(crate) fn group_names(&self) -> Vec<String> {
        let groups = self.groups.borrow().groups();
        let mut names: Vec<String> = groups.iter().map(|g| g.to_string()).collect();
        names.sort_unstable();
        names
    }

    pub(crate) fn group_count(&self) -> usize {
        self.groups.borrow().len()
    }

    /// Asks the connection to close with `code` and `reason` (once it has written its queue).
    pub(crate) fn request_close(&self, code: u16, reason: String) {
        *self.close.borrow_mut() = Some(Box::new((code, reason)));
        self.outbox.wake.raise();
    }

    pub(crate) fn close_requested(&self) -> Option<(u16, String)> {
        self.close.borrow_mut().take().map(|close| *close)
    }

    fn info(&self) -> ClientInfo {
        ClientInfo {
            uid: self.uid(),
            groups: self.group_names(),
        }
    }
}

/// A join or leave of a group, for those who asked for its presence events.
#[derive(Debug)]
pub(crate) struct PresenceEvent {
    pub(crate) group: GroupId,
    pub(crate) client: ClientId,
    pub(crate) text: Text,
}

/// Why a join was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum JoinError {
    #[error("a connection may be in at most {0} groups")]
    PerConnection(usize),
    #[error(transparent)]
    Process(#[from] GroupLimit),
}

#[derive(Debug)]
pub(crate) struct LocalGroups {
    worker: usize,
    node: NodeId,
    max_groups_per_connection: usize,
    hub: Arc<Hub>,
    stats: Arc<WorkerStats>,
    topics: RefCell<HashMap<GroupId, HashMap<ConnId, Rc<Client>>>>,
    clients: RefCell<HashMap<ConnId, Rc<Client>>>,
    /// Per history group with positioned members here: the last position delivered to them.
    pub(crate) streams: RefCell<HashMap<GroupId, crate::history::stream::Stream>>,
    /// Most live messages held for a recovering member, or for a group whose hole is being
    /// repaired (`--outbound-queue-messages`).
    pub(crate) hold_max: usize,
    next_conn: Cell<ConnId>,
    /// Set once the worker stops: its connections write what they hold and close.
    closing: Cell<bool>,
    /// Connections with frames for the worker to write ([`Push::ForWorker`]), written by
    /// [`LocalGroups::write_direct`]: after each batch of deliveries, or when `to_write` rings.
    to_write: RefCell<Vec<Rc<Client>>>,
    /// Raised when `to_write` gets its first connection: the worker writes them soon (a reply
    /// queued by a connection's own task, outside the worker's batches).
    pub(crate) write_soon: Signal,
    /// Presence events in the order they happened, for [`publish_presence_events`].
    presence: mpsc::Sender<PresenceEvent>,
}

impl LocalGroups {
    /// A worker's table, and the receiving end of its presence events (for
    /// [`publish_presence_events`]).
    pub(crate) fn new(
        worker: usize,
        max_groups_per_connection: usize,
        hold_max: usize,
        hub: Arc<Hub>,
        stats: Arc<WorkerStats>,
    ) -> (LocalGroups, mpsc::Receiver<PresenceEvent>) {
        let (presence, events) = mpsc::channel(PRESENCE_QUEUE);
        let local = LocalGroups {
            worker,
            node: hub.node_id(),
            max_groups_per_connection,
            hub,
            stats,
            topics: RefCell::new(HashMap::new()),
            clients: RefCell::new(HashMap::new()),
            streams: RefCell::new(HashMap::new()),
            hold_max,
            next_conn: Cell::new(0),
            closing: Cell::new(false),
            to_write: RefCell::new(Vec::new()),
            write_soon: Signal::default(),
            presence,
        };
        (local, events)
    }

    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub(crate) fn worker(&self) -> usize {
        self.worker
    }

    /// The group table, read.
    pub(crate) fn topics_ref(
        &self,
    ) -> std::cell::Ref<'_, HashMap<GroupId, HashMap<ConnId, Rc<Client>>>> {
        self.topics.borrow()
    }

    pub(crate) fn next_conn_id(&self) -> ConnId {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        id
    }

    /// The client id of connection `conn` of this worker.
    pub(crate) fn client_id(&self, conn: ConnId) -> ClientId {
        ClientId {
            node: self.node,
            worker: self.worker as u16,
            conn,
        }
    }

    /// A new connection, with an outbox of these bounds.
    pub(crate) fn register(&self, conn: ConnId, outbox: Outbox) -> Rc<Client> {
        let client = Rc::new(Client {
            id: self.client_id(conn),
            outbox,
            uid: RefCell::new(None),
            groups: RefCell::new(Memberships::default()),
            history: RefCell::new(None),
            close: RefCell::new(None),
        });
        self.clients.borrow_mut().insert(conn, client.clone());
        if self.closing.get() {
            client.outbox.wake.raise();
        }
        client
    }

    /// The worker is stopping: every connection, and any registered from now on, is woken to
    /// write what it holds and close (see [`LocalGroups::closing`]).
    pub(crate) fn close_all(&self) {
        self.closing.set(true);
        for client in self.clients.borrow().values() {
            client.outbox.wake.raise();
        }
    }

    /// Writes the frames queued for the connections with nothing pending, each connection's in
    /// one write (see [`Outbox::write_direct`]); `write_soon` is answered with it.
    pub(crate) fn write_direct(&self) {
        self.write_soon.lower();
        // A direct write queues nothing: the list cannot change meanwhile.
        for client in self.to_write.borrow_mut().drain(..) {
            client.outbox.write_direct();
        }
    }

    /// Queues `frame` for `client`: true if it counts as delivered.
    fn push(&self, client: &Rc<Client>, frame: Bytes) -> bool {
        match client.outbox.push(frame) {
            Push::Queued => true,
            Push::ForWorker => {
                let mut to_write = self.to_write.borrow_mut();
                if to_write.is_empty() {
                    self.write_soon.raise();
                }
                to_write.push(client.clone());
                true
            }
            Push::Overflowed { dropped } => {
                self.stats.queue_drops.fetch_add(dropped as u64, Relaxed);
                false
            }
            Push::Closed => {
                self.stats.queue_drops.fetch_add(1, Relaxed);
                false
            }
        }
    }

    /// True once [`LocalGroups::close_all`] has run.
    pub(crate) fn closing(&self) -> bool {
        self.closing.get()
    }

    /// The connection is closing: it leaves every group and its uid.
    pub(crate) fn unregister(&self, client: &Rc<Client>) {
        let groups = client.groups.borrow().groups();
        for group in &groups {
            self.leave(client, group.as_str());
        }
        self.bind_uid(client, None);
        let mut clients = self.clients.borrow_mut();
        clients.remove(&client.id.conn);
        shrink_if_sparse(&mut clients);
    }

    pub(crate) fn client(&self, conn: ConnId) -> Option<Rc<Client>> {
        self.clients.borrow().get(&conn).cloned()
    }

    /// `client` joins `group` (with its presence events when `presence`, with positions when
    /// `positioned`), announced to those watching it. Joining again only changes `presence`
    /// and `positioned`, and announces nothing.
    pub(crate) fn join(
        &self,
        client: &Rc<Client>,
        group: &GroupId,
        presence: bool,
        positioned: bool,
    ) -> Result<(), JoinError> {
        let was = client.groups.borrow().get(group.as_str());
        let membership = Membership {
            presence,
            positioned,
        };
        if let Some(was) = was {
            if was.presence != presence {
                self.set_presence(client, group, presence)?;
            }
            if was.positioned != positioned {
                self.count_positioned(group, positioned);
                if !positioned {
                    crate::history::recovery::forget(client, group);
                }
            }
            client.groups.borrow_mut().insert(group, membership);
            return Ok(());
        }
        if client.group_count() >= self.max_groups_per_connection {
            return Err(JoinError::PerConnection(self.max_groups_per_connection));
        }
        self.add_member(group, client)?;
        if presence {
            if let Err(e) = self.set_presence(client, group, true) {
                self.remove_member(group, client.id.conn);
                return Err(e);
            }
        }
        if positioned {
            self.count_positioned(group, true);
        }
        client.groups.borrow_mut().insert(group, membership);
        self.announce(PresenceKind::Join, group, client);
        Ok(())
    }

    /// `client` leaves `group`, announced to those watching it; false when it was not in it.
    pub(crate) fn leave(&self, client: &Rc<Client>, group: &str) -> bool {
        let Some((group, membership)) = client.groups.borrow_mut().remove(group) else {
            return false;
        };
        if membership.presence {
            let _ = self.set_presence(client, &group, false);
        }
        if membership.positioned {
            self.count_positioned(&group, false);
            crate::history::recovery::forget(client, &group);
        }
        self.remove_member(&group, client.id.conn);
        self.announce(PresenceKind::Leave, &group, client);
        true
    }

    /// Binds `client` to `uid` (or unbinds it), moving it between uid topics.
    pub(crate) fn bind_uid(&self, client: &Rc<Client>, uid: Option<Uid>) {
        let old = client.uid.replace(uid.clone());
        if old == uid {
            return;
        }
        if let Some(old) = old {
            self.remove_member(&topic_id(&topic::uid(old.as_str())), client.id.conn);
        }
        if let Some(uid) = uid {
            // Cluster topics are not limited by --max-groups (a uid per connection at most).
            let _ = self.add_member(&topic_id(&topic::uid(uid.as_str())), client);
        }
    }

    fn set_presence(
        &self,
        client: &Rc<Client>,
        group: &GroupId,
        on: bool,
    ) -> Result<(), JoinError> {
        let presence = topic_id(&topic::presence(group.as_str()));
        if on {
            self.add_member(&presence, client)?;
        } else {
            self.remove_member(&presence, client.id.conn);
        }
        Ok(())
    }

    /// Queues the presence event of a join or leave, in order with this worker's others.
    fn announce(&self, kind: PresenceKind, group: &GroupId, client: &Client) {
        let uid = client.uid.borrow();
        let event = PresenceEvent {
            group: group.clone(),
            client: client.id,
            text: Text::from(presence_event(
                kind,
                group.as_str(),
                &client.id,
                uid.as_ref(),
            )),
        };
        if self.presence.try_send(event).is_err() {
            let counters = self.hub.cluster().counters();
            counters.presence_dropped.fetch_add(1, Relaxed);
        }
    }

    /// Adds `client` to `topic`; refused when it is a group new to the process and the process
    /// has its limit of groups.
    fn add_member(&self, topic: &GroupId, client: &Rc<Client>) -> Result<(), GroupLimit> {
        let is_group = is_client_group(topic);
        let mut topics = self.topics.borrow_mut();
        let members = match topics.get_mut(topic) {
            Some(members) => members,
            None => {
                self.hub.router().worker_joined(self.worker, topic)?;
                if is_group {
                    self.stats.groups.fetch_add(1, Relaxed);
                }
                topics.entry(topic.clone()).or_default()
            }
        };
        if members.insert(client.id.conn, client.clone()).is_none() && is_group {
            self.stats.memberships.fetch_add(1, Relaxed);
            self.stats.joins.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    fn remove_member(&self, topic: &GroupId, conn: ConnId) {
        let is_group = is_client_group(topic);
        let mut topics = self.topics.borrow_mut();
        let Some(members) = topics.get_mut(topic) else {
            return;
        };
        if members.remove(&conn).is_some() && is_group {
            self.stats.memberships.fetch_sub(1, Relaxed);
            self.stats.leaves.fetch_add(1, Relaxed);
        }
        if members.is_empty() {
            topics.remove(topic);
            shrink_if_sparse(&mut topics);
            if is_group {
                self.stats.groups.fetch_sub(1, Relaxed);
            }
            self.hub.router().worker_left(self.worker, topic);
        }
    }

    /// Does what the router queued for this worker.
    pub(crate) fn run(&self, work: Work) {
        match work {
            Work::Deliver(delivery) => self.deliver(delivery),
            Work::Run(job) => job.run(self),
        }
    }

    /// Queues a message to every local member of its topic but the excluded ones.
    pub(crate) fn deliver(&self, delivery: Delivery) {
        if let Some(position) = delivery.position {
            self.deliver_positioned(delivery.group, position, delivery.payload);
            return;
        }
        let topics = self.topics.borrow();
        let Some(members) = topics.get(&delivery.group) else {
            return; // the last member left after the router looked
        };
        let excluded = self.excluded(delivery.exclude.as_deref());
        self.push_all(
            members.values().filter(|c| !excluded.contains(&c.id.conn)),
            delivery.payload,
        );
    }

    /// Queues a message to every connection of this worker but the excluded ones.
    pub(crate) fn deliver_all(&self, payload: Text, exclude: &[ClientId]) {
        let clients = self.clients.borrow();
        let excluded = self.excluded(Some(exclude));
        self.push_all(
            clients.values().filter(|c| !excluded.contains(&c.id.conn)),
            payload,
        );
    }

    /// Queues a message to one connection, if it is still here.
    pub(crate) fn deliver_to(&self, conn: ConnId, payload: Text) {
        if let Some(client) = self.client(conn) {
            self.push_all(std::iter::once(&client), payload);
        }
    }

    /// The connections of this worker among `exclude`.
    fn excluded(&self, exclude: Option<&[ClientId]>) -> Vec<ConnId> {
        exclude
            .unwrap_or_default()
            .iter()
            .filter(|id| id.node == self.node && usize::from(id.worker) == self.worker)
            .map(|id| id.conn)
            .collect()
    }

    /// A history group's message: the raw text to its members that did not ask for positions,
    /// and to the positioned ones through the group's stream (in order, holes repaired).
    fn deliver_positioned(&self, group: GroupId, position: Position, payload: Text) {
        let positioned = self.positioned_members(&group);
        {
            let topics = self.topics.borrow();
            let Some(members) = topics.get(&group) else {
                return;
            };
            // No member positioned, or every one (the usual cases): no lookup per member.
            if positioned == 0 {
                self.push_all(members.values(), payload);
                return;
            }
            if positioned < members.len() {
                self.push_all(
                    members.values().filter(|c| !c.is_positioned(&group)),
                    payload.clone(),
                );
            }
        }
        self.sequence(group, position, payload);
    }

    /// Queues `text` (a reply, a recovered message) to one connection.
    pub(crate) fn push_one(&self, client: &Rc<Client>, text: String) {
        self.push_all(std::iter::once(client), Text::from(text));
    }

    /// Queues a message to every one of `clients`: its frame is encoded once, here, and the
    /// same bytes go to each.
    pub(crate) fn push_all<'c>(
        &self,
        clients: impl Iterator<Item = &'c Rc<Client>>,
        payload: Text,
    ) {
        let frame = frame::text(payload.as_str());
        let mut delivered = 0;
        for client in clients {
            delivered += u64::from(self.push(client, frame.clone()));
        }
        self.stats.deliveries.fetch_add(delivered, Relaxed);
        self.stats
            .bytes_out
            .fetch_add(delivered * payload.len() as u64, Relaxed);
    }

    // Queries, answered on this worker's thread for the cluster API.

    /// The members of `topic` here.
    pub(crate) fn members_of(&self, topic: &str) -> Vec<Rc<Client>> {
        self.topics
            .borrow()
            .get(topic)
            .map(|members| members.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Connections in `group` here, and the hashes of their distinct uids (`None` past
    /// [`MAX_UID_HASHES`]: the connections are counted in constant time, the uids stop there).
    pub(crate) fn count(&self, group: &str) -> (u64, Option<HashSet<u64>>) {
        let topics = self.topics.borrow();
        let Some(members) = topics.get(group) else {
            return (0, Some(HashSet::new()));
        };
        let mut uids = HashSet::new();
        for uid in members
            .values()
            .filter_map(|c| c.uid.borrow().as_ref().map(Uid::hash64))
        {
            uids.insert(uid);
            if uids.len() > MAX_UID_HASHES {
                return (members.len() as u64, None);
            }
        }
        (members.len() as u64, Some(uids))
    }

    /// Up to `limit` members of `group` with a client id after `after`, in client id order.
    pub(crate) fn members(
        &self,
        group: &str,
        after: Option<ClientId>,
        limit: usize,
    ) -> Vec<Member> {
        let topics = self.topics.borrow();
        let Some(members) = topics.get(group) else {
            return Vec::new();
        };
        let mut page: Vec<&Rc<Client>> = members
            .values()
            .filter(|c| after.is_none_or(|after| c.id > after))
            .collect();
        // The first `limit` in linear time, then only those sorted.
        if page.len() > limit && limit > 0 {
            page.select_nth_unstable_by_key(limit - 1, |c| c.id);
            page.truncate(limit);
        }
        page.sort_unstable_by_key(|c| c.id);
        page.truncate(limit);
        page.into_iter()
            .map(|c| Member {
                client_id: c.id,
                uid: c.uid(),
            })
            .collect()
    }

    /// Up to `limit` groups with an id after `after`, in order, with their connections here.
    pub(crate) fn groups(&self, after: Option<&str>, limit: usize) -> Vec<(String, u64)> {
        let topics = self.topics.borrow();
        let mut page: Vec<(&GroupId, usize)> = topics
            .iter()
            .filter(|(g, _)| is_client_group(g) && after.is_none_or(|after| g.as_str() > after))
            .map(|(g, members)| (g, members.len()))
            .collect();
        page.sort_unstable();
        page.truncate(limit);
        page.into_iter()
            .map(|(g, n)| (g.to_string(), n as u64))
            .collect()
    }

    pub(crate) fn client_info(&self, conn: ConnId) -> Option<ClientInfo> {
        self.client(conn).map(|c| c.info())
    }

    /// This worker's connections and memberships.
    pub(crate) fn totals(&self) -> (u64, u64) {
        (
            self.clients.borrow().len() as u64,
            self.stats.memberships.load(Relaxed),
        )
    }
}

/// A cluster topic's name as a routing key (topic names are built here, never from a client's
/// text alone, and are valid by construction).
pub(crate) fn topic_id(name: &str) -> GroupId {
    GroupId::new(name, usize::MAX).expect("topic names are never empty")
}

/// Whether `topic` is a client's group rather than a cluster topic.
pub(crate) fn is_client_group(topic: &GroupId) -> bool {
    !topic::is_cluster_topic(topic.as_str().as_bytes())
}

/// Publishes a worker's presence events, one at a time in the order they happened (its
/// connections' own joins and leaves and the admin API's orders alike), until the worker stops.
pub(crate) async fn publish_presence_events(
    hub: Arc<Hub>,
    mut events: mpsc::Receiver<PresenceEvent>,
) {
    while let Some(event) = events.recv().await {
        hub.publish_presence(event).await;
    }
}
