//! Process-wide routing between workers, and between this process and the bus.
//!
//! [`Router`] knows which workers have local members of each group and queues deliveries to
//! their inboxes. [`Hub`] adds the bus: the first local member of a group anywhere in the
//! process subscribes the gateway to it, the last one leaving unsubscribes (interest routing);
//! a client's send is delivered to local workers directly and published on the bus for the
//! other gateways (which is why the broker is asked not to echo it back).

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::RwLock;
use protocol::GroupId;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::bus::Bus;

/// One message for the members of a group on one worker.
#[derive(Debug)]
pub struct Delivery {
    pub group: GroupId,
    pub payload: Utf8Bytes,
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
    interest: RwLock<HashMap<GroupId, WorkerSet>>,
    inboxes: Vec<mpsc::Sender<Delivery>>,
}

impl Router {
    pub fn new(inboxes: Vec<mpsc::Sender<Delivery>>) -> Router {
        Router {
            interest: RwLock::new(HashMap::new()),
            inboxes,
        }
    }

    /// Queues `payload` to every worker with members of `group`, waiting for room in a full
    /// inbox (backpressure on the publisher). Returns the number of workers reached.
    pub async fn dispatch(&self, group: &str, payload: &Utf8Bytes) -> usize {
        let (group, workers) = {
            let interest = self.interest.read();
            match interest.get_key_value(group) {
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
        self.interest.read().len()
    }
}

/// The router plus the bus: what workers call when membership changes or a client sends.
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

    /// `worker` got its first local member of `group`.
    pub fn worker_joined(&self, worker: usize, group: &GroupId) {
        let mut interest = self.router.interest.write();
        let workers = interest.entry(group.clone()).or_default();
        if workers.is_empty() {
            self.bus.subscribe(group);
        }
        workers.insert(worker);
    }

    /// `worker` lost its last local member of `group`.
    pub fn worker_left(&self, worker: usize, group: &GroupId) {
        let mut interest = self.router.interest.write();
        let Some(workers) = interest.get_mut(group) else {
            return;
        };
        workers.remove(worker);
        if workers.is_empty() {
            interest.remove(group);
            self.bus.unsubscribe(group);
        }
    }

    /// A client's send: delivered to this process's members directly, and to other gateways
    /// through the bus.
    pub async fn publish(&self, group: &str, payload: &Utf8Bytes) {
        self.bus.publish(group, payload.as_ref());
        self.router.dispatch(group, payload).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
