//! `GET /metrics`: the broker's counters in the OpenMetrics text format (prometheus-client).
//!
//! The counters live in [`BrokerStats`](crate::stats::BrokerStats) atomics, updated on the hot
//! path; [`BrokerCollector`] reads a snapshot of them at scrape time and encodes it, so nothing is
//! counted twice and scrapes cost nothing between scrapes. [`encode_broker_stats`] is public because the gateway
//! exports its embedded broker's counters the same way.

use std::fmt;
use std::sync::Arc;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;

use server_kit::admin_http::AdminHttpStats;
use server_kit::metrics::{counter, gauge};

use crate::server::Broker;
use crate::stats::StatsSnapshot;

/// Encodes a broker's counters as the `broker_*` families.
pub fn encode_broker_stats(
    stats: &StatsSnapshot,
    encoder: &mut DescriptorEncoder<'_>,
) -> fmt::Result {
    let e = encoder;
    gauge(e, "broker_links", "Open gateway links.", stats.links)?;
    counter(
        e,
        "broker_links_opened",
        "Gateway links accepted since start.",
        stats.links_total,
    )?;
    gauge(
        e,
        "broker_channels",
        "Group channels with at least one subscribed link.",
        stats.channels,
    )?;
    gauge(
        e,
        "broker_cluster_channels",
        "The gateways' cluster topics (heartbeats, queries, uids, presence) with a subscriber.",
        stats.cluster_channels,
    )?;
    counter(
        e,
        "broker_cluster_publishes",
        "Publish frames received on the gateways' cluster topics.",
        stats.cluster_publishes,
    )?;
    gauge(
        e,
        "broker_subscriptions",
        "(link, channel) subscriptions.",
        stats.subscriptions,
    )?;
    counter(
        e,
        "broker_subscriptions_refused",
        "Subscriptions refused because their link already held broker-max-channels-per-link channels.",
        stats.subscriptions_refused,
    )?;
    counter(
        e,
        "broker_publishes",
        "Publish frames received on group channels.",
        stats.publishes,
    )?;
    counter(
        e,
        "broker_deliveries",
        "Message frames queued to subscribed links.",
        stats.deliveries,
    )?;
    counter(
        e,
        "broker_slow_link_disconnects",
        "Links disconnected because their outbound queue was full.",
        stats.slow_link_disconnects,
    )?;
    counter(
        e,
        "broker_dropped_frames",
        "Frames queued to a link but dropped because it was being disconnected.",
        stats.dropped_frames,
    )?;
    counter(
        e,
        "broker_bad_frames",
        "Links closed because of a malformed or forbidden frame.",
        stats.bad_frames,
    )?;
    counter(
        e,
        "broker_unauthorized_links",
        "Links refused because they did not prove that they know the link secret.",
        stats.unauthorized_links,
    )?;
    gauge(
        e,
        "broker_php_connections",
        "Open PHP Channel connections.",
        stats.php_connections,
    )?;
    counter(
        e,
        "broker_php_connections_opened",
        "PHP Channel connections accepted since start.",
        stats.php_connections_total,
    )?;
    counter(
        e,
        "broker_php_bad_frames",
        "PHP Channel connections closed because of a malformed frame or value.",
        stats.php_bad_frames,
    )?;
    counter(
        e,
        "broker_php_refused_peers",
        "PHP Channel connections refused by their source address: not in --php-allow, or (without it) not loopback on a broker with a link secret.",
        stats.php_refused_peers,
    )?;
    counter(
        e,
        "broker_php_idle_closed",
        "PHP Channel connections closed because they sent nothing for --php-idle-timeout.",
        stats.php_idle_closed,
    )?;
    counter(
        e,
        "broker_php_publishes",
        "publish and publishLoop channels from PHP clients.",
        stats.php_publishes,
    )?;
    counter(
        e,
        "broker_php_bridged",
        "send_to_group publishes from PHP clients sent on to the gateways' group.",
        stats.php_bridged,
    )?;
    counter(
        e,
        "broker_php_bridge_refused",
        "send_to_group publishes from PHP clients not sent on to the gateways: no valid group_id or message.",
        stats.php_bridge_refused,
    )?;
    counter(
        e,
        "broker_php_queue_drops",
        "Items enqueued to a full PHP queue, dropped.",
        stats.php_queue_drops,
    )?;
    counter(
        e,
        "broker_php_dropped",
        "PHP messages not sent because they exceed link-max-frame-size.",
        stats.php_dropped,
    )
}

/// Reads a broker's counters, and its admin server's, at scrape time.
#[derive(Debug)]
pub struct BrokerCollector {
    broker: Broker,
    admin_http: Arc<AdminHttpStats>,
}

impl BrokerCollector {
    pub fn new(broker: Broker, admin_http: Arc<AdminHttpStats>) -> BrokerCollector {
        BrokerCollector { broker, admin_http }
    }
}

impl Collector for BrokerCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        encode_broker_stats(&self.broker.stats(), &mut encoder)?;

        self.admin_http.snapshot().encode("broker", &mut encoder)
    }
}

/// A registry holding just the broker's collector.
pub fn registry(broker: Broker, admin_http: Arc<AdminHttpStats>) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(BrokerCollector::new(broker, admin_http)));
    registry
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_are_encoded_with_their_types() {
        let stats = StatsSnapshot {
            links: 2,
            links_total: 5,
            channels: 3,
            subscriptions: 4,
            subscriptions_refused: 11,
            publishes: 6,
            deliveries: 7,
            cluster_channels: 12,
            cluster_subscriptions: 13,
            cluster_publishes: 14,
            cluster_deliveries: 15,
            slow_link_disconnects: 1,
            dropped_frames: 8,
            bad_frames: 9,
            unauthorized_links: 10,
            php_connections: 16,
            php_connections_total: 17,
            php_bad_frames: 18,
            php_refused_peers: 19,
            php_publishes: 20,
            php_bridged: 21,
            php_bridge_refused: 22,
            php_queue_drops: 23,
            php_dropped: 24,
            history_channels: 0,
            history_messages: 0,
            history_bytes: 0,
            history_evictions: 0,
            php_idle_closed: 25,
        };
        #[derive(Debug)]
        struct Fixed(StatsSnapshot);
        impl Collector for Fixed {
            fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
                encode_broker_stats(&self.0, &mut encoder)
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(stats)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "# TYPE broker_links gauge",
            "broker_links 2",
            "# TYPE broker_links_opened counter",
            "broker_links_opened_total 5",
            "broker_channels 3",
            "broker_subscriptions 4",
            "# TYPE broker_subscriptions_refused counter",
            "broker_subscriptions_refused_total 11",
            "broker_publishes_total 6",
            "broker_deliveries_total 7",
            "broker_slow_link_disconnects_total 1",
            "broker_dropped_frames_total 8",
            "broker_bad_frames_total 9",
            "broker_unauthorized_links_total 10",
            "broker_php_connections 16",
            "broker_php_bad_frames_total 18",
            "broker_php_queue_drops_total 23",
            "broker_php_idle_closed_total 25",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
