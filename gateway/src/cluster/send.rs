//! Sends beyond a group: to a uid's connections, to one client, to everyone; a group send that
//! skips some connections; presence events. Each is delivered here directly and published for
//! the other gateways on the topic that reaches only those concerned where the carrier allows:
//! a uid's topic is subscribed only by the gateways holding a connection of that uid, a client's
//! node topic only by its gateway.
//!
//! Delivery is as for groups: the raw message, once per connection, in the sender's order.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use protocol::cluster::{topic, ClientId, Control, Uid};
use protocol::{GroupName, Text};

use super::publish_control;
use crate::fanout::hub::Hub;
use crate::fanout::local::PresenceEvent;

impl Hub {
    /// `send_to_group` with an `exclude` list (a plain publish when it is empty).
    pub async fn publish_excluding(
        &self,
        group: &GroupName<'_>,
        payload: &Text,
        exclude: Vec<ClientId>,
    ) {
        if exclude.is_empty() {
            return self.publish(group, payload).await;
        }
        let control = Control::Deliver { exclude };
        publish_control(self, group.as_str(), &control, payload.as_bytes());
        let Control::Deliver { exclude } = control else {
            return;
        };
        let exclude: Arc<[ClientId]> = Arc::from(exclude);
        self.router()
            .dispatch_excluding(group.as_str(), payload, Some(&exclude))
            .await;
    }

    /// Every connection of `uid`, on every gateway.
    pub async fn send_to_uid(&self, uid: &Uid, payload: &Text) {
        self.cluster().counters().sends_to_uid.fetch_add(1, Relaxed);
        let name = topic::uid(uid.as_str());
        if let Ok(topic) = GroupName::parse(&name, usize::MAX) {
            self.publish(&topic, payload).await;
        }
    }

    /// One connection, wherever it is.
    pub async fn send_to_client(&self, client: ClientId, payload: &Text) {
        self.cluster()
            .counters()
            .sends_to_client
            .fetch_add(1, Relaxed);
        if client.node == self.node_id() {
            return deliver_to_here(self, client, payload.clone()).await;
        }
        let control = Control::ToClient { client };
        publish_control(
            self,
            &topic::node(client.node),
            &control,
            payload.as_bytes(),
        );
    }

    /// Every connection on every gateway, but those in `exclude`.
    pub async fn send_to_all(&self, payload: &Text, exclude: Vec<ClientId>) {
        self.cluster().counters().sends_to_all.fetch_add(1, Relaxed);
        let control = Control::Deliver { exclude };
        publish_control(self, topic::CONTROL, &control, payload.as_bytes());
        let Control::Deliver { exclude } = control else {
            return;
        };
        deliver_all_here(self, payload.clone(), exclude).await;
    }

    /// A join or leave, to the members of its group that asked for presence events (not to
    /// the connection it is about).
    pub(crate) async fn publish_presence(&self, event: PresenceEvent) {
        self.cluster()
            .counters()
            .presence_events
            .fetch_add(1, Relaxed);
        let name = topic::presence(event.group.as_str());
        let control = Control::Deliver {
            exclude: vec![event.client],
        };
        publish_control(self, &name, &control, event.text.as_bytes());
        let exclude: Arc<[ClientId]> = Arc::from([event.client]);
        self.router()
            .dispatch_excluding(&name, &event.text, Some(&exclude))
            .await;
    }
}

/// `send_to_all`'s delivery to this gateway's connections.
pub(crate) async fn deliver_all_here(hub: &Hub, payload: Text, exclude: Vec<ClientId>) {
    let exclude: Arc<[ClientId]> = Arc::from(exclude);
    hub.router()
        .run_on_all(move |local| local.deliver_all(payload.clone(), &exclude))
        .await;
}

/// `send_to_client`'s delivery to a connection of this gateway.
pub(crate) async fn deliver_to_here(hub: &Hub, client: ClientId, payload: Text) {
    hub.router()
        .run_on(usize::from(client.worker), move |local| {
            local.deliver_to(client.conn, payload)
        })
        .await;
}
