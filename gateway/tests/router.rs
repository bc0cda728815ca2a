//! The process-wide router, without sockets: which workers a message goes to, and which groups
//! the bus is asked to subscribe. The interest rule: the first local member anywhere in the
//! process subscribes its group, the last one to leave unsubscribes it, once each however many
//! workers hold members; after a lost connection the next full sync asks for every group still
//! wanted, then only changes again.
//!
//! Nothing here does I/O, so time is paused: "nothing happens" is checked without waiting.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use gateway::bus::{
    Bus, BusStatus, HistoryError, HistoryFuture, HistoryPage, HistoryPolicy, HistoryQuery, Node,
    Payload, SubscriptionChanges,
};
use gateway::cluster::{Cluster, ClusterSettings};
use gateway::fanout::hub::{Delivery, Hub, Router, Work};
use gateway::GatewayConfig;
use protocol::cluster::NodeId;
use protocol::{GroupId, GroupName, Text};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Group ids in these tests are short.
const MAX_GROUP_LEN: usize = 64;
/// Long enough for anything that is going to happen in paused time.
const PATIENCE: Duration = Duration::from_secs(1);

fn id(name: &str) -> GroupId {
    GroupId::new(name, MAX_GROUP_LEN).expect("a valid group id")
}

fn name(group: &str) -> GroupName<'_> {
    GroupName::parse(group, MAX_GROUP_LEN).expect("a valid group name")
}

/// The hub of a gateway whose router has `workers` inboxes of `capacity` deliveries each (what
/// the bus sees as its node), and the inboxes' receivers.
fn router(workers: usize, capacity: usize) -> (Arc<Hub>, Vec<mpsc::Receiver<Work>>) {
    let (senders, receivers) = (0..workers).map(|_| mpsc::channel(capacity)).unzip();
    let cluster = Cluster::new(
        NodeId(1),
        ClusterSettings::from_config(&GatewayConfig::default()),
    );
    (Hub::new(Router::new(senders), cluster), receivers)
}

/// The delivery a worker's inbox holds next.
fn delivery(work: Option<Work>) -> Delivery {
    match work {
        Some(Work::Deliver(delivery)) => delivery,
        Some(Work::Run(_)) => panic!("a job, not a delivery"),
        None => panic!("no delivery"),
    }
}

/// The changes as sorted names: (subscribe, unsubscribe).
fn names(changes: SubscriptionChanges) -> (Vec<String>, Vec<String>) {
    // The cluster's own topics are not client groups.
    let sorted = |groups: Vec<GroupId>| {
        let mut names: Vec<String> = groups
            .iter()
            .map(|g| g.as_ref().to_owned())
            .filter(|g| !g.starts_with('\u{1f}'))
            .collect();
        names.sort();
        names
    };
    (sorted(changes.subscribe), sorted(changes.unsubscribe))
}

fn subscribe(groups: &[&str]) -> (Vec<String>, Vec<String>) {
    (groups.iter().map(|g| g.to_string()).collect(), Vec::new())
}

fn unsubscribe(groups: &[&str]) -> (Vec<String>, Vec<String>) {
    (Vec::new(), groups.iter().map(|g| g.to_string()).collect())
}

fn nothing() -> (Vec<String>, Vec<String>) {
    (Vec::new(), Vec::new())
}

#[tokio::test(start_paused = true)]
async fn first_join_anywhere_subscribes_and_last_leave_unsubscribes_once() {
    let (router, _inboxes) = router(3, 8);
    // A fresh connection takes every wanted group: none yet.
    assert_eq!(names(router.subscriptions(true)), nothing());

    router
        .router()
        .worker_joined(0, &id("g"))
        .expect("no group limit");
    assert_eq!(names(router.subscriptions(false)), subscribe(&["g"]));
    // More workers with members of g: no change for the bus.
    router
        .router()
        .worker_joined(1, &id("g"))
        .expect("no group limit");
    router
        .router()
        .worker_joined(2, &id("g"))
        .expect("no group limit");
    assert_eq!(names(router.subscriptions(false)), nothing());
    assert_eq!((router.router().group_count(), router.wanted()), (1, 1));

    // Workers leave one by one: only the last one unsubscribes.
    router.router().worker_left(2, &id("g"));
    router.router().worker_left(0, &id("g"));
    assert_eq!(names(router.subscriptions(false)), nothing());
    router.router().worker_left(1, &id("g"));
    assert_eq!(names(router.subscriptions(false)), unsubscribe(&["g"]));
    assert_eq!(router.router().group_count(), 0);

    // A worker leaving a group nobody has is not a change.
    router.router().worker_left(1, &id("never-joined"));
    assert_eq!(names(router.subscriptions(false)), nothing());

    // Between two looks by the carrier, a group's last change wins; each group appears once.
    router
        .router()
        .worker_joined(0, &id("a"))
        .expect("no group limit");
    router
        .router()
        .worker_joined(1, &id("b"))
        .expect("no group limit");
    router.router().worker_left(1, &id("b"));
    router
        .router()
        .worker_joined(2, &id("c"))
        .expect("no group limit");
    assert_eq!(
        names(router.subscriptions(false)),
        (vec!["a".into(), "c".into()], vec!["b".into()])
    );
}

#[tokio::test(start_paused = true)]
async fn only_first_joins_and_last_leaves_wake_the_carrier() {
    let (router, _inboxes) = router(2, 8);
    router.subscriptions(true);

    router
        .router()
        .worker_joined(0, &id("g"))
        .expect("no group limit");
    timeout(PATIENCE, router.subscriptions_changed())
        .await
        .expect("a first join wakes the carrier");
    router.subscriptions(false);

    router
        .router()
        .worker_joined(1, &id("g"))
        .expect("no group limit");
    router.router().worker_left(0, &id("g"));
    assert!(
        timeout(PATIENCE, router.subscriptions_changed())
            .await
            .is_err(),
        "neither a second worker's join nor a leave with members left is a change"
    );

    router.router().worker_left(1, &id("g"));
    timeout(PATIENCE, router.subscriptions_changed())
        .await
        .expect("a last leave wakes the carrier");
}

#[tokio::test(start_paused = true)]
async fn after_a_lost_connection_a_full_sync_wants_every_group_then_only_changes() {
    let (router, _inboxes) = router(2, 8);
    router
        .router()
        .worker_joined(0, &id("g1"))
        .expect("no group limit");
    router
        .router()
        .worker_joined(1, &id("g2"))
        .expect("no group limit");
    // The first connection: everything wanted so far.
    assert_eq!(names(router.subscriptions(true)), subscribe(&["g1", "g2"]));
    router
        .router()
        .worker_joined(0, &id("g3"))
        .expect("no group limit");
    assert_eq!(names(router.subscriptions(false)), subscribe(&["g3"]));

    // The connection is lost: changes meanwhile are not kept...
    router.subscriptions_lost();
    router.router().worker_left(0, &id("g1"));
    router
        .router()
        .worker_joined(1, &id("g4"))
        .expect("no group limit");
    assert_eq!(names(router.subscriptions(false)), nothing());
    // ...because the next connection takes every group still wanted, whatever happened.
    assert_eq!(
        names(router.subscriptions(true)),
        subscribe(&["g2", "g3", "g4"])
    );
    assert_eq!(router.wanted(), 3);
    // And then only changes again.
    router
        .router()
        .worker_joined(0, &id("g5"))
        .expect("no group limit");
    router.router().worker_left(1, &id("g2"));
    assert_eq!(
        names(router.subscriptions(false)),
        (vec!["g5".into()], vec!["g2".into()])
    );
    assert_eq!(names(router.subscriptions(false)), nothing());
}

#[tokio::test(start_paused = true)]
async fn dispatch_reaches_each_interested_worker_once() {
    let (router, mut inboxes) = router(3, 8);
    router
        .router()
        .worker_joined(0, &id("g"))
        .expect("no group limit");
    router
        .router()
        .worker_joined(2, &id("g"))
        .expect("no group limit");
    router
        .router()
        .worker_joined(1, &id("other"))
        .expect("no group limit");

    let payload = Text::from("hello");
    assert_eq!(router.router().dispatch("g", &payload).await, 2);
    for worker in [0, 2] {
        let delivery = delivery(inboxes[worker].try_recv().ok());
        assert_eq!(delivery.group, id("g"));
        assert_eq!(delivery.payload.as_str(), "hello");
        assert!(inboxes[worker].try_recv().is_err(), "exactly one");
    }
    assert!(
        inboxes[1].try_recv().is_err(),
        "worker 1 has no member of g"
    );

    assert_eq!(router.router().dispatch("nobody", &payload).await, 0);
    // A message from another gateway takes the same path.
    router
        .deliver(name("other"), Payload::Text(Text::from("relayed")))
        .await;
    let delivery = delivery(inboxes[1].try_recv().ok());
    assert_eq!(delivery.payload.as_str(), "relayed");
    for inbox in &mut inboxes {
        assert!(inbox.try_recv().is_err(), "nothing else");
    }
}

#[tokio::test(start_paused = true)]
async fn dispatch_waits_for_room_in_a_full_inbox_and_skips_a_stopped_worker() {
    let (router, mut inboxes) = router(2, 1);
    router
        .router()
        .worker_joined(0, &id("g"))
        .expect("no group limit");
    router
        .router()
        .worker_joined(1, &id("g"))
        .expect("no group limit");
    assert_eq!(router.router().dispatch("g", &Text::from("first")).await, 2);

    // Both inboxes are full: the publisher waits (backpressure) until worker 0 makes room...
    let second = tokio::spawn({
        let router = router.clone();
        async move { router.router().dispatch("g", &Text::from("second")).await }
    });
    tokio::task::yield_now().await;
    assert!(!second.is_finished(), "the dispatch waits for room");
    let first = delivery(inboxes[0].recv().await);
    assert_eq!(first.payload.as_str(), "first");
    // ...and for worker 1, which stops instead: its message is not counted as delivered.
    drop(inboxes.remove(1));
    let reached = timeout(PATIENCE, second)
        .await
        .expect("the dispatch finishes once there is room")
        .expect("the dispatch task");
    assert_eq!(reached, 1);
    let delivered = delivery(inboxes[0].recv().await);
    assert_eq!(delivered.payload.as_str(), "second");
}

/// A bus that records what it is asked to publish.
#[derive(Default)]
struct RecordingBus {
    published: Mutex<Vec<(String, String)>>,
}

impl Bus for RecordingBus {
    fn publish(&self, group: &GroupName<'_>, payload: &Bytes) {
        self.published.lock().expect("not poisoned").push((
            group.as_str().to_owned(),
            String::from_utf8_lossy(payload).into_owned(),
        ));
    }

    fn publish_history(&self, group: &GroupName<'_>, payload: &Bytes, _: HistoryPolicy) {
        self.publish(group, payload);
    }

    fn history(
        &self,
        _: &GroupName<'_>,
        _: HistoryPolicy,
        _: HistoryQuery,
    ) -> HistoryFuture<HistoryPage> {
        gateway::bus::history::failed(HistoryError::NotSupported("recording"))
    }

    fn remove_history(&self, _: &GroupName<'_>) -> HistoryFuture<()> {
        gateway::bus::history::failed(HistoryError::NotSupported("recording"))
    }

    fn status(&self) -> BusStatus {
        BusStatus::default()
    }
}

#[tokio::test(start_paused = true)]
async fn a_send_goes_once_to_the_bus_and_once_to_each_local_worker() {
    let (hub, mut inboxes) = router(2, 8);
    let bus = Arc::new(RecordingBus::default());
    hub.set_bus(bus.clone());
    hub.router()
        .worker_joined(1, &id("g"))
        .expect("no group limit");

    hub.publish(&name("g"), &Text::from("to everyone")).await;
    // Other gateways may have members even when this one has none.
    hub.publish(&name("elsewhere"), &Text::from("to others only"))
        .await;

    assert_eq!(
        *bus.published.lock().expect("not poisoned"),
        [
            ("g".to_owned(), "to everyone".to_owned()),
            ("elsewhere".to_owned(), "to others only".to_owned()),
        ]
    );
    let delivery = delivery(inboxes[1].try_recv().ok());
    assert_eq!(delivery.payload.as_str(), "to everyone");
    assert!(inboxes[1].try_recv().is_err());
    assert!(inboxes[0].try_recv().is_err());
}
