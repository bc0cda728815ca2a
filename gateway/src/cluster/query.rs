//! Cluster queries and orders, scattered and gathered: the asking gateway publishes an `ask`
//! (on the control topic for every node, or on one node's topic), answers its own part at once,
//! and waits for the others' `answer`s on its own topic until every live node answered or
//! `--cluster-query-timeout` passed. The result lists the nodes that answered and those that did
//! not (`missing`): a slow or dead node gives a partial answer in bounded time, never a hang.
//!
//! Each node answers from its workers ([`answer`]), each worker from its own table, on its own
//! thread.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use protocol::cluster::{
    topic, ClientId, ClientInfo, Control, Member, NodeId, Op, Reply, Request, Target, Uid,
};
use protocol::{GroupId, GroupName};
use serde::Serialize;
use tokio::sync::oneshot;

use super::{publish_control, Cluster};
use crate::fanout::hub::Hub;
use crate::fanout::local::{Client, LocalGroups, MAX_UID_HASHES};

/// Questions waiting for answers, by id.
#[derive(Debug, Default)]
pub struct Pending {
    next_id: u64,
    waiting: HashMap<u64, Waiting>,
}

#[derive(Debug)]
struct Waiting {
    expected: HashSet<NodeId>,
    replies: Vec<(NodeId, Reply)>,
    done: Option<oneshot::Sender<()>>,
}

/// A cluster query's answer as clients and the admin API receive it: what was made of the
/// replies, and which nodes answered.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Answer<T> {
    #[serde(flatten)]
    pub result: T,
    pub nodes: NodesAnswered,
}

/// A result about one group, named first.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct InGroup<T> {
    pub group_id: String,
    #[serde(flatten)]
    pub result: T,
}

/// Which nodes answered a cluster query, and which did not in time.
#[derive(Debug, Clone, Default, Serialize, PartialEq, Eq)]
pub struct NodesAnswered {
    pub answered: Vec<NodeId>,
    pub missing: Vec<NodeId>,
}

/// The answers of a cluster query.
#[derive(Debug, Default)]
pub struct Gathered {
    pub replies: Vec<(NodeId, Reply)>,
    pub nodes: NodesAnswered,
}

/// Who a query goes to.
#[derive(Debug, Clone, Copy)]
pub enum Scope {
    /// Every live node (this one included).
    All,
    /// One node (this one, or another).
    Node(NodeId),
}

impl Hub {
    /// Asks `scope` and answers what `merge` makes of the replies, with the nodes that
    /// answered.
    pub async fn ask<T>(
        &self,
        request: Request,
        scope: Scope,
        merge: impl FnOnce(Vec<(NodeId, Reply)>) -> T,
    ) -> Answer<T> {
        let gathered = self.gather(request, scope).await;
        Answer {
            result: merge(gathered.replies),
            nodes: gathered.nodes,
        }
    }

    /// Asks `scope` and gathers the answers within `--cluster-query-timeout`.
    pub async fn gather(&self, request: Request, scope: Scope) -> Gathered {
        let cluster = self.cluster();
        let settings = cluster.settings();
        cluster.counters.queries.fetch_add(1, Relaxed);
        let this = cluster.node_id();
        let (expected, topic_name): (Vec<NodeId>, String) = match scope {
            Scope::All => (
                cluster.nodes.live(settings.node_timeout),
                topic::CONTROL.to_owned(),
            ),
            Scope::Node(node) if node == this => (Vec::new(), String::new()),
            Scope::Node(node) => (vec![node], topic::node(node)),
        };
        let asks_self = matches!(scope, Scope::All) || matches!(scope, Scope::Node(n) if n == this);
        let registered = if expected.is_empty() {
            None
        } else {
            register(cluster, &expected)
        };
        if !expected.is_empty() && registered.is_none() {
            cluster.counters.queries_refused.fetch_add(1, Relaxed);
        }
        if let Some((id, _)) = &registered {
            let ask = Control::Ask {
                id: *id,
                from: this,
                request: request.clone(),
            };
            publish_control(self, &topic_name, &ask, b"");
        }
        let deadline = tokio::time::Instant::now() + settings.query_timeout;
        let mut gathered = Gathered::default();
        if asks_self {
            match tokio::time::timeout_at(deadline, answer(self, request)).await {
                Ok(reply) => {
                    gathered.replies.push((this, reply));
                    gathered.nodes.answered.push(this);
                }
                Err(_) => gathered.nodes.missing.push(this),
            }
        }
        if let Some((id, done)) = registered {
            // Forgets the question however this future ends: answered, timed out, or dropped
            // (an admin client that went away), so that questions never pile up.
            let forget = Forget { cluster, id };
            let _ = tokio::time::timeout_at(deadline, done).await;
            let waiting = forget.now();
            if let Some(waiting) = waiting {
                for (node, reply) in waiting.replies {
                    gathered.nodes.answered.push(node);
                    gathered.replies.push((node, reply));
                }
            }
        }
        let answered: HashSet<NodeId> = gathered.nodes.answered.iter().copied().collect();
        gathered
            .nodes
            .missing
            .extend(expected.into_iter().filter(|n| !answered.contains(n)));
        // A node that refused did not answer.
        let refused: Vec<NodeId> = gathered
            .replies
            .iter()
            .filter(|(_, r)| matches!(r, Reply::Refused { .. }))
            .map(|(n, _)| *n)
            .collect();
        gathered
            .replies
            .retain(|(_, r)| !matches!(r, Reply::Refused { .. }));
        gathered.nodes.answered.retain(|n| !refused.contains(n));
        gathered.nodes.missing.extend(refused);
        gathered.nodes.answered.sort_unstable();
        gathered.nodes.answered.dedup();
        gathered.nodes.missing.sort_unstable();
        gathered.nodes.missing.dedup();
        if !gathered.nodes.missing.is_empty() {
            cluster.counters.queries_partial.fetch_add(1, Relaxed);
        }
        gathered
    }
}

/// Removes a question from the pending ones when dropped.
struct Forget<'a> {
    cluster: &'a Cluster,
    id: u64,
}

impl Forget<'_> {
    /// Removes it now, with the answers it got.
    fn now(self) -> Option<Waiting> {
        self.cluster.pending.lock().waiting.remove(&self.id)
    }
}

impl Drop for Forget<'_> {
    fn drop(&mut self) {
        self.cluster.pending.lock().waiting.remove(&self.id);
    }
}

fn register(cluster: &Cluster, expected: &[NodeId]) -> Option<(u64, oneshot::Receiver<()>)> {
    let mut pending = cluster.pending.lock();
    if pending.waiting.len() >= super::MAX_PENDING_QUERIES {
        return None;
    }
    pending.next_id = pending.next_id.wrapping_add(1);
    let id = pending.next_id;
    let (tx, rx) = oneshot::channel();
    pending.waiting.insert(
        id,
        Waiting {
            expected: expected.iter().copied().collect(),
            replies: Vec::new(),
            done: Some(tx),
        },
    );
    Some((id, rx))
}

/// An answer to one of this node's questions.
pub(crate) fn on_answer(cluster: &Cluster, id: u64, from: NodeId, reply: Reply) {
    let mut pending = cluster.pending.lock();
    let Some(waiting) = pending.waiting.get_mut(&id) else {
        cluster.counters.answers_late.fetch_add(1, Relaxed);
        return;
    };
    if waiting.replies.iter().any(|(node, _)| *node == from) {
        return;
    }
    waiting.replies.push((from, reply));
    waiting.expected.remove(&from);
    if waiting.expected.is_empty() {
        if let Some(done) = waiting.done.take() {
            let _ = done.send(());
        }
    }
}

/// Another node's question: answered on a task of its own, within [`super::MAX_ASKS_IN_FLIGHT`].
pub(crate) fn on_ask(hub: &Hub, id: u64, from: NodeId, request: Request) {
    let cluster = hub.cluster();
    let Some(hub) = hub.me() else {
        return;
    };
    let Ok(permit) = cluster.asks.clone().try_acquire_owned() else {
        cluster.counters.asks_refused.fetch_add(1, Relaxed);
        let reply = Reply::Refused {
            reason: "too many cluster questions at once".into(),
        };
        return send_answer(&hub, id, from, reply);
    };
    tokio::spawn(async move {
        let reply = answer(&hub, request).await;
        hub.cluster().counters.asks_answered.fetch_add(1, Relaxed);
        send_answer(&hub, id, from, reply);
        drop(permit);
    });
}

fn send_answer(hub: &Hub, id: u64, to: NodeId, reply: Reply) {
    let answer = Control::Answer {
        id,
        node: hub.node_id(),
        reply,
    };
    publish_control(hub, &topic::node(to), &answer, b"");
}

/// This node's answer to `request`.
pub async fn answer(hub: &Hub, request: Request) -> Reply {
    let router = hub.router();
    let max_page = hub.cluster().settings().max_page_size;
    let refused = || Reply::Refused {
        reason: "invalid group id or uid".into(),
    };
    match request {
        Request::Count { group } => {
            let Some(group) = valid_group(hub, &group) else {
                return refused();
            };
            let counts = router
                .ask_all(move |local| local.count(group.as_str()))
                .await;
            let connections = counts.iter().map(|(n, _)| n).sum();
            // Past the bound, this node's distinct uids are counted without their hashes.
            let mut hashes = Some(HashSet::new());
            let mut uids_here = 0;
            for (_, set) in counts {
                match (&mut hashes, set) {
                    (Some(all), Some(set)) if all.len() + set.len() <= MAX_UID_HASHES => {
                        all.extend(set)
                    }
                    (_, set) => {
                        uids_here += hashes.take().map_or(0, |all| all.len() as u64);
                        uids_here += set.map_or(MAX_UID_HASHES as u64, |s| s.len() as u64);
                    }
                }
            }
            let uids = hashes.as_ref().map_or(uids_here, |all| all.len() as u64);
            Reply::Count {
                connections,
                uids,
                uid_hashes: hashes.map(|all| all.into_iter().collect()),
            }
        }
        Request::Members {
            group,
            after,
            limit,
        } => {
            let Some(group) = valid_group(hub, &group) else {
                return refused();
            };
            // One more than asked: the asker learns whether there is a next page.
            let limit = limit.min(max_page) as usize + 1;
            let pages = router
                .ask_all(move |local| local.members(group.as_str(), after, limit))
                .await;
            let mut members: Vec<Member> = pages.into_iter().flatten().collect();
            members.sort_unstable_by_key(|m| m.client_id);
            members.truncate(limit);
            Reply::Members { members }
        }
        Request::Groups { after, limit } => {
            let limit = limit.min(max_page) as usize + 1;
            let pages = router
                .ask_all(move |local| local.groups(after.as_deref(), limit))
                .await;
            Reply::Groups {
                groups: merge_groups(pages.into_iter().flatten(), limit),
            }
        }
        Request::Client { client } => {
            let info = if client.node == hub.node_id() {
                router
                    .ask(usize::from(client.worker), move |local| {
                        local.client_info(client.conn)
                    })
                    .await
                    .flatten()
            } else {
                None
            };
            Reply::Client { client: info }
        }
        Request::Uid { uid } => {
            if uid.as_str().len() > hub.cluster().settings().max_uid_len {
                return refused();
            }
            let name = topic::uid(uid.as_str());
            let lists = router
                .ask_all(move |local| {
                    local
                        .members_of(&name)
                        .iter()
                        .map(|c| c.id)
                        .collect::<Vec<_>>()
                })
                .await;
            let mut clients: Vec<ClientId> = lists.into_iter().flatten().collect();
            clients.sort_unstable();
            Reply::Uid { clients }
        }
        Request::Stats => {
            let totals = router.ask_all(|local| local.totals()).await;
            Reply::Stats {
                connections: totals.iter().map(|t| t.0).sum(),
                memberships: totals.iter().map(|t| t.1).sum(),
                groups: router.group_count() as u64,
            }
        }
        Request::Apply { target, op } => apply(hub, target, op).await,
        Request::Ungroup { group } => {
            let Some(group) = valid_group(hub, &group) else {
                return Reply::Refused {
                    reason: "invalid group id".into(),
                };
            };
            let results = router
                .ask_all(move |local| {
                    let members = local.members_of(group.as_str());
                    members
                        .iter()
                        .filter(|c| local.leave(c, group.as_str()))
                        .count() as u64
                })
                .await;
            Reply::Applied {
                affected: results.iter().sum(),
                failed: 0,
                error: None,
            }
        }
    }
}

/// Sums the connections of each group over the pages, and keeps the first `limit` groups.
fn merge_groups(pages: impl Iterator<Item = (String, u64)>, limit: usize) -> Vec<(String, u64)> {
    let mut merged: BTreeMap<String, u64> = BTreeMap::new();
    for (group, n) in pages {
        *merged.entry(group).or_default() += n;
    }
    merged.into_iter().take(limit).collect()
}

/// A group id of an order from another node, checked again here.
fn valid_group(hub: &Hub, group: &str) -> Option<GroupId> {
    let max = hub.cluster().settings().max_group_id_len;
    GroupName::parse_client(group, max)
        .ok()
        .map(|name| name.to_group_id())
}

/// Applies `op` to `target`'s connections on this node.
async fn apply(hub: &Hub, target: Target, op: Op) -> Reply {
    let max_uid_len = hub.cluster().settings().max_uid_len;
    let uid_ok = |uid: &Uid| uid.as_str().len() <= max_uid_len;
    let uids_ok = match (&target, &op) {
        (Target::Uid(a), Op::BindUid { uid: b }) => uid_ok(a) && uid_ok(b),
        (Target::Uid(uid), _) | (_, Op::BindUid { uid }) => uid_ok(uid),
        _ => true,
    };
    if !uids_ok {
        return Reply::Refused {
            reason: "uid longer than --max-uid-len".into(),
        };
    }
    let group = match &op {
        Op::JoinGroup { group, .. } | Op::LeaveGroup { group } => match valid_group(hub, group) {
            Some(group) => Some(group),
            None => {
                return Reply::Refused {
                    reason: "invalid group id".into(),
                }
            }
        },
        _ => None,
    };
    let op = Arc::new((op, group));
    let router = hub.router();
    let results: Vec<(u64, u64, Option<String>)> = match target {
        Target::Client(client) if client.node == hub.node_id() => router
            .ask(usize::from(client.worker), move |local| {
                let clients: Vec<_> = local.client(client.conn).into_iter().collect();
                apply_here(local, &clients, &op)
            })
            .await
            .into_iter()
            .collect(),
        Target::Client(_) => Vec::new(),
        Target::Uid(uid) => {
            let name = topic::uid(uid.as_str());
            router
                .ask_all(move |local| apply_here(local, &local.members_of(&name), &op))
                .await
        }
    };
    let mut affected = 0;
    let mut failed = 0;
    let mut error = None;
    for (a, f, e) in results {
        affected += a;
        failed += f;
        error = error.or(e);
    }
    Reply::Applied {
        affected,
        failed,
        error,
    }
}

/// Applies an order to these connections of one worker: (affected, failed, first error).
fn apply_here(
    local: &LocalGroups,
    clients: &[std::rc::Rc<Client>],
    op: &(Op, Option<GroupId>),
) -> (u64, u64, Option<String>) {
    let mut affected = 0;
    let mut failed = 0;
    let mut error = None;
    for client in clients {
        match op {
            (Op::BindUid { uid }, _) => local.bind_uid(client, Some(uid.clone())),
            (Op::UnbindUid, _) => local.bind_uid(client, None),
            (Op::JoinGroup { presence, .. }, Some(group)) => {
                match local.join(client, group, *presence, client.is_positioned(group)) {
                    Ok(()) => {}
                    Err(e) => {
                        failed += 1;
                        error = error.or(Some(e.to_string()));
                        continue;
                    }
                }
            }
            (Op::LeaveGroup { .. }, Some(group)) => {
                local.leave(client, group.as_str());
            }
            (Op::Close { code, reason }, _) => {
                // Checked where the order was given; checked again, as it came over the bus.
                let code = if *code == 1000 || (3000..=4999).contains(code) {
                    *code
                } else {
                    4002
                };
                let mut reason = reason.clone();
                truncate_to(&mut reason, 123);
                client.request_close(code, reason)
            }
            (Op::JoinGroup { .. } | Op::LeaveGroup { .. }, None) => continue,
        }
        affected += 1;
    }
    (affected, failed, error)
}

/// Cuts `text` to at most `max` bytes, on a character boundary.
fn truncate_to(text: &mut String, max: usize) {
    if text.len() > max {
        let mut end = max;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
    }
}

// Merging the nodes' answers into what clients and the admin API receive.

/// A group's size across the cluster.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupCount {
    pub connections: u64,
    /// Distinct uids among them.
    pub uids: u64,
    /// False when a node had too many distinct uids to send their hashes: `uids` is then the
    /// sum of each node's count, which counts twice a uid connected to two nodes.
    pub uids_exact: bool,
}

pub fn merge_count(replies: &[(NodeId, Reply)]) -> GroupCount {
    let mut connections = 0;
    let mut sum = 0;
    let mut exact = true;
    let mut union = HashSet::new();
    for (_, reply) in replies {
        if let Reply::Count {
            connections: n,
            uids,
            uid_hashes,
        } = reply
        {
            connections += n;
            sum += uids;
            match uid_hashes {
                Some(hashes) => union.extend(hashes.iter().copied()),
                None => exact = false,
            }
        }
    }
    GroupCount {
        connections,
        uids: if exact { union.len() as u64 } else { sum },
        uids_exact: exact,
    }
}

/// A page of a group's members, and the cursor of the next (none when this is the last).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct MembersPage {
    pub members: Vec<Member>,
    pub cursor: Option<ClientId>,
}

pub fn merge_members(replies: Vec<(NodeId, Reply)>, limit: usize) -> MembersPage {
    let mut members: Vec<Member> = replies
        .into_iter()
        .flat_map(|(_, reply)| match reply {
            Reply::Members { members } => members,
            _ => Vec::new(),
        })
        .collect();
    members.sort_unstable_by_key(|m| m.client_id);
    members.dedup_by_key(|m| m.client_id);
    let more = members.len() > limit;
    members.truncate(limit);
    let cursor = if more {
        members.last().map(|m| m.client_id)
    } else {
        None
    };
    MembersPage { members, cursor }
}

/// One group of a listing.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupEntry {
    pub group_id: String,
    pub connections: u64,
}

/// A page of groups, and the cursor of the next.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct GroupsPage {
    pub groups: Vec<GroupEntry>,
    pub cursor: Option<String>,
}

pub fn merge_groups_page(replies: Vec<(NodeId, Reply)>, limit: usize) -> GroupsPage {
    let pages = replies.into_iter().flat_map(|(_, reply)| match reply {
        Reply::Groups { groups } => groups,
        _ => Vec::new(),
    });
    let mut groups = merge_groups(pages, limit + 1);
    let more = groups.len() > limit;
    groups.truncate(limit);
    let cursor = if more {
        groups.last().map(|(g, _)| g.clone())
    } else {
        None
    };
    GroupsPage {
        groups: groups
            .into_iter()
            .map(|(group_id, connections)| GroupEntry {
                group_id,
                connections,
            })
            .collect(),
        cursor,
    }
}

/// One client, wherever it is.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClientLookup {
    pub client_id: ClientId,
    pub online: bool,
    pub node: NodeId,
    pub uid: Option<Uid>,
    pub groups: Vec<String>,
}

pub fn merge_client(client: ClientId, replies: &[(NodeId, Reply)]) -> ClientLookup {
    let info: Option<&ClientInfo> = replies.iter().find_map(|(_, r)| match r {
        Reply::Client { client: Some(info) } => Some(info),
        _ => None,
    });
    ClientLookup {
        client_id: client,
        online: info.is_some(),
        node: client.node,
        uid: info.and_then(|i| i.uid.clone()),
        groups: info.map(|i| i.groups.clone()).unwrap_or_default(),
    }
}

/// A uid's connections.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct UidLookup {
    pub uid: Uid,
    pub online: bool,
    pub client_ids: Vec<ClientId>,
}

pub fn merge_uid(uid: Uid, replies: &[(NodeId, Reply)]) -> UidLookup {
    let mut client_ids: Vec<ClientId> = replies
        .iter()
        .flat_map(|(_, r)| match r {
            Reply::Uid { clients } => clients.clone(),
            _ => Vec::new(),
        })
        .collect();
    client_ids.sort_unstable();
    client_ids.dedup();
    UidLookup {
        uid,
        online: !client_ids.is_empty(),
        client_ids,
    }
}

/// What an order did.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Applied {
    /// Connections it was applied to.
    pub affected: u64,
    /// Connections that refused it (a join over a limit).
    pub failed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub fn merge_applied(replies: &[(NodeId, Reply)]) -> Applied {
    let mut applied = Applied {
        affected: 0,
        failed: 0,
        error: None,
    };
    for (_, reply) in replies {
        if let Reply::Applied {
            affected,
            failed,
            error,
        } = reply
        {
            applied.affected += affected;
            applied.failed += failed;
            if applied.error.is_none() {
                applied.error = error.clone();
            }
        }
    }
    applied
}

/// Totals of the cluster.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClusterTotals {
    pub connections: u64,
    pub memberships: u64,
}

pub fn merge_totals(replies: &[(NodeId, Reply)]) -> ClusterTotals {
    let mut totals = ClusterTotals {
        connections: 0,
        memberships: 0,
    };
    for (_, reply) in replies {
        if let Reply::Stats {
            connections,
            memberships,
            ..
        } = reply
        {
            totals.connections += connections;
            totals.memberships += memberships;
        }
    }
    totals
}
