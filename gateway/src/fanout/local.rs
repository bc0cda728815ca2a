//! One worker's group table: group -> (connection -> outbox) for the connections it owns. Only
//! its own thread touches it (no locks on the per-message path); the first member of a group on
//! this worker and the last one to leave tell the [`Hub`], which keeps the process-wide view.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use protocol::GroupId;
use server_kit::memory::shrink_if_sparse;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::fanout::hub::{Delivery, GroupLimit, Hub};
use crate::fanout::outbox::{Outbox, Push};
use crate::stats::WorkerStats;

/// A connection's number within its worker.
pub(crate) type ConnId = u64;

#[derive(Debug)]
pub(crate) struct LocalGroups {
    worker: usize,
    hub: Arc<Hub>,
    stats: Arc<WorkerStats>,
    groups: RefCell<HashMap<GroupId, HashMap<ConnId, Rc<Outbox>>>>,
    next_conn: Cell<ConnId>,
}

impl LocalGroups {
    pub(crate) fn new(worker: usize, hub: Arc<Hub>, stats: Arc<WorkerStats>) -> LocalGroups {
        LocalGroups {
            worker,
            hub,
            stats,
            groups: RefCell::new(HashMap::new()),
            next_conn: Cell::new(0),
        }
    }

    pub(crate) fn hub(&self) -> &Arc<Hub> {
        &self.hub
    }

    pub(crate) fn next_conn_id(&self) -> ConnId {
        let id = self.next_conn.get();
        self.next_conn.set(id + 1);
        id
    }

    /// Adds `conn` to `group`; refused when the group is new to the process and the process
    /// has its limit of groups.
    pub(crate) fn add_member(
        &self,
        group: &GroupId,
        conn: ConnId,
        outbox: &Rc<Outbox>,
    ) -> Result<(), GroupLimit> {
        let mut groups = self.groups.borrow_mut();
        let members = match groups.get_mut(group) {
            Some(members) => members,
            None => {
                self.hub.router().worker_joined(self.worker, group)?;
                self.stats.groups.fetch_add(1, Relaxed);
                groups.entry(group.clone()).or_default()
            }
        };
        if members.insert(conn, outbox.clone()).is_none() {
            self.stats.memberships.fetch_add(1, Relaxed);
            self.stats.joins.fetch_add(1, Relaxed);
        }
        Ok(())
    }

    pub(crate) fn remove_member(&self, group: &GroupId, conn: ConnId) {
        let mut groups = self.groups.borrow_mut();
        let Some(members) = groups.get_mut(group) else {
            return;
        };
        if members.remove(&conn).is_some() {
            self.stats.memberships.fetch_sub(1, Relaxed);
            self.stats.leaves.fetch_add(1, Relaxed);
        }
        if members.is_empty() {
            groups.remove(group);
            shrink_if_sparse(&mut groups);
            self.stats.groups.fetch_sub(1, Relaxed);
            self.hub.router().worker_left(self.worker, group);
        }
    }

    /// Queues a group message to every local member.
    pub(crate) fn deliver(&self, delivery: Delivery) {
        let groups = self.groups.borrow();
        let Some(members) = groups.get(&delivery.group) else {
            return; // the last member left after the router looked
        };
        // Text is UTF-8 by construction; the WebSocket library checks it once more, once per
        // message and worker (not per member).
        let Ok(payload) = Utf8Bytes::try_from(delivery.payload.into_bytes()) else {
            self.stats
                .queue_drops
                .fetch_add(members.len() as u64, Relaxed);
            return;
        };
        let mut delivered = 0;
        for outbox in members.values() {
            match outbox.push(payload.clone()) {
                Push::Queued => delivered += 1,
                Push::Overflowed { dropped } => {
                    self.stats.queue_drops.fetch_add(dropped as u64, Relaxed);
                }
                Push::Closed => {
                    self.stats.queue_drops.fetch_add(1, Relaxed);
                }
            }
        }
        self.stats.deliveries.fetch_add(delivered, Relaxed);
        self.stats
            .bytes_out
            .fetch_add(delivered * payload.len() as u64, Relaxed);
    }
}
