//! [`EmbeddedBus`]: the carrier of a gateway that runs the broker in its own process. It takes
//! its place among the broker's subscribers through a [`LocalLink`]: no TCP, no frame, no
//! echo to discard. A client's send costs one registry lookup here when no other gateway has
//! members of the group; other gateways linked to the embedded broker over TCP get it as
//! before, and what they publish reaches this gateway through a bounded queue drained by one
//! task, which waits while the workers are full (as the broker link's reader does).

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

use broker::local::LocalLink;
use broker::registry::LocalSubscriber;
use broker::Broker;
use bytes::Bytes;
use protocol::GroupName;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use broker::history::HISTORY_SWEEP;

use super::history::{link_request, page_from_link, removed_from_link};
use super::inbound::{InboundLimits, Rejected, INBOX_MESSAGES};
use super::{
    Bus, BusCounters, BusStatus, Carrier, HistoryFuture, HistoryPage, HistoryPolicy, HistoryQuery,
    Node, RunningBus,
};
use crate::config::GatewayConfig;

/// The broker embedded in this process, not started yet.
#[derive(Debug, Clone)]
pub struct EmbeddedBus {
    broker: Broker,
    inbound: InboundLimits,
}

impl EmbeddedBus {
    pub fn new(broker: Broker, config: &GatewayConfig) -> EmbeddedBus {
        EmbeddedBus {
            broker,
            inbound: InboundLimits::from_config(config),
        }
    }
}

/// Where the broker hands this gateway the messages of other gateways.
#[derive(Debug)]
struct Inlet {
    tx: mpsc::Sender<(Bytes, Bytes)>,
    counters: Arc<BusCounters>,
}

impl LocalSubscriber for Inlet {
    fn offer(&self, channel: &Bytes, payload: &Bytes) -> bool {
        let taken = self.tx.try_send((channel.clone(), payload.clone())).is_ok();
        if !taken {
            self.counters.slow_consumer.fetch_add(1, Relaxed);
        }
        taken
    }
}

impl Carrier for EmbeddedBus {
    fn start<N: Node>(self, node: Arc<N>, shutdown: CancellationToken) -> RunningBus {
        let (tx, rx) = mpsc::channel(INBOX_MESSAGES);
        let counters = Arc::new(BusCounters::default());
        let inlet = Arc::new(Inlet {
            tx,
            counters: counters.clone(),
        });
        let bus = Arc::new(LocalBus {
            link: self.broker.local_link(inlet),
            counters,
            node,
            syncing: parking_lot::Mutex::new(()),
        });
        tracing::info!(carrier = "embedded", "bus up");
        let task = tokio::spawn(run(bus.clone(), rx, self.inbound, shutdown));
        RunningBus { bus, task }
    }
}

#[derive(Debug)]
struct LocalBus<N> {
    link: LocalLink,
    counters: Arc<BusCounters>,
    node: Arc<N>,
    /// Held while subscription changes are taken and applied ([`sync`]), which both the bus's
    /// task and a history publish do: changes are applied in the order they were taken.
    syncing: parking_lot::Mutex<()>,
}

impl<N: Node> Bus for LocalBus<N> {
    fn publish(&self, group: &GroupName<'_>, payload: &Bytes) {
        self.counters.count_publish(payload);
        let published = self
            .link
            .publish(group.as_str().as_bytes(), payload.clone());
        if let Err(e) = published {
            // Config validation keeps group + message within a frame; count it regardless.
            tracing::error!(group = group.as_str(), cause = %e, "cannot publish to the embedded broker");
            self.counters.publishes_dropped.fetch_add(1, Relaxed);
        }
    }

    fn publish_history(&self, group: &GroupName<'_>, payload: &Bytes, policy: HistoryPolicy) {
        self.counters.history_publishes.fetch_add(1, Relaxed);
        // A history message reaches this gateway's members only through the broker, which
        // delivers it at once: the subscriptions of the joins made before it (the sender's own,
        // say) must be applied first, not whenever the bus's task gets to them.
        sync(self, false);
        let published =
            self.link
                .publish_history(group.as_str().as_bytes(), payload.clone(), policy.to_link());
        if let Err(e) = published {
            tracing::error!(group = group.as_str(), cause = %e, "cannot publish to the embedded broker");
            self.counters
                .history_publishes_dropped
                .fetch_add(1, Relaxed);
        }
    }

    fn history(
        &self,
        group: &GroupName<'_>,
        policy: HistoryPolicy,
        query: HistoryQuery,
    ) -> HistoryFuture<HistoryPage> {
        let request = link_request(0, group.as_str().as_bytes(), Some(policy), query, false);
        let page = page_from_link(self.link.history(&request));
        Box::pin(std::future::ready(page))
    }

    fn remove_history(&self, group: &GroupName<'_>) -> HistoryFuture<()> {
        let request = link_request(
            0,
            group.as_str().as_bytes(),
            None,
            HistoryQuery::POSITION,
            true,
        );
        let removed = removed_from_link(self.link.history(&request));
        Box::pin(std::future::ready(removed))
    }

    fn status(&self) -> BusStatus {
        BusStatus {
            carrier: "embedded",
            up: true,
            subscriptions: self.node.wanted() as u64,
            ..BusStatus::default()
        }
        .with_counters(&self.counters)
    }
}

/// Applies subscription changes and delivers what other gateways publish, until shutdown.
async fn run<N: Node>(
    bus: Arc<LocalBus<N>>,
    mut rx: mpsc::Receiver<(Bytes, Bytes)>,
    inbound: InboundLimits,
    shutdown: CancellationToken,
) {
    sync(&bus, true);
    let mut sweep = tokio::time::interval(HISTORY_SWEEP);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = sweep.tick() => bus.link.sweep_history(),
            _ = bus.node.subscriptions_changed() => sync(&bus, false),
            received = rx.recv() => {
                let Some((channel, payload)) = received else { return };
                bus.counters.count_received(&payload);
                match inbound.check(&channel, payload) {
                    Ok((group, text)) => bus.node.deliver(group, text).await,
                    Err(Rejected::Invalid) => {
                        bus.counters.messages_invalid.fetch_add(1, Relaxed);
                        tracing::warn!("dropping a message from another gateway that is not UTF-8 or not for a valid group id");
                    }
                    Err(Rejected::TooLarge) => {
                        bus.counters.messages_too_large.fetch_add(1, Relaxed);
                        tracing::warn!(max = inbound.max_message_size, "dropping a message from another gateway larger than --max-message-size");
                    }
                }
            }
        }
    }
}

fn sync<N: Node>(bus: &LocalBus<N>, full: bool) {
    let _syncing = bus.syncing.lock();
    let changes = bus.node.subscriptions(full);
    for group in &changes.subscribe {
        bus.link.subscribe(group.as_str().as_bytes());
    }
    for group in &changes.unsubscribe {
        bus.link.unsubscribe(group.as_str().as_bytes());
    }
}
