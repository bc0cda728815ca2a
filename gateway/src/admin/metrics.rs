//! `GET /metrics`: the gateway's counters in the OpenMetrics text format (prometheus-client).
//!
//! The counters live where they are updated: each worker's [`WorkerStats`](crate::stats) atomics,
//! the bus's [`BusStatus`](crate::bus::BusStatus) and, when the broker runs in this process, its
//! [`broker::BrokerStats`]. [`GatewayCollector`] takes one [`GatewaySnapshot`] per scrape and
//! encodes it, so nothing is counted twice. Counter families get the `_total` suffix from the
//! encoder; per-worker counters are summed, except `gateway_connections`, labelled by worker.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::DescriptorEncoder;
use prometheus_client::registry::Registry;
use protocol::ErrorCode;
use server_kit::metrics::{counter, counter_family, gauge, gauge_family};

use crate::gateway::Gateway;
use crate::stats::{GatewaySnapshot, WorkerSnapshot};

/// Encodes a gateway snapshot as the `gateway_*` families, and the embedded broker's as the
/// `broker_*` ones.
pub fn encode_snapshot(s: &GatewaySnapshot, encoder: &mut DescriptorEncoder<'_>) -> fmt::Result {
    let e = encoder;
    let sum = |field: fn(&WorkerSnapshot) -> u64| s.workers.iter().map(field).sum::<u64>();

    gauge_family(
        e,
        "gateway_connections",
        "Open client connections, by worker.",
        s.workers
            .iter()
            .map(|w| ([("worker", w.id)], w.connections)),
    )?;
    gauge_family(
        e,
        "gateway_connections_resting",
        "Client connections resting (holding no WebSocket stream), by worker.",
        s.workers
            .iter()
            .map(|w| ([("worker", w.id)], w.connections_resting)),
    )?;
    counter(
        e,
        "gateway_connections_opened",
        "Client connections accepted (WebSocket handshake completed) since start.",
        sum(|w| w.connections_total),
    )?;
    counter(
        e,
        "gateway_handshake_failures",
        "TCP connections that failed or timed out in the WebSocket handshake.",
        sum(|w| w.handshake_failures),
    )?;
    counter(
        e,
        "gateway_origin_rejections",
        "Handshakes refused with 403 for an Origin not in the allowlist.",
        sum(|w| w.origin_rejections),
    )?;
    let c = &s.cluster;
    gauge(
        e,
        "gateway_cluster_other_nodes",
        "Other gateways heard from within node-timeout.",
        c.other_nodes,
    )?;
    counter(
        e,
        "gateway_cluster_queries",
        "Cluster queries and orders this gateway scattered to the others.",
        c.queries,
    )?;
    counter(
        e,
        "gateway_cluster_queries_partial",
        "Cluster queries answered without every gateway (some missing).",
        c.queries_partial,
    )?;
    counter(
        e,
        "gateway_cluster_asks_refused",
        "Questions from other gateways refused: too many being answered at once.",
        c.asks_refused,
    )?;
    counter(
        e,
        "gateway_cluster_control_invalid",
        "Control frames from the bus that could not be read or did not belong to their topic.",
        c.control_invalid,
    )?;
    gauge(
        e,
        "gateway_client_sockets",
        "Client sockets counted against max-connections (handshakes in progress included).",
        s.client_sockets,
    )?;
    counter_family(
        e,
        "gateway_connections_refused",
        "Connections refused with 503, by the limit that was reached.",
        [
            ([("limit", "max_connections")], s.connections_refused),
            (
                [("limit", "max_connections_per_ip")],
                s.connections_refused_per_ip,
            ),
        ],
    )?;
    gauge(
        e,
        "gateway_groups",
        "Distinct groups with members in this process.",
        s.groups,
    )?;
    counter(
        e,
        "gateway_groups_refused",
        "Joins refused because the process had --max-groups groups.",
        s.groups_refused,
    )?;
    gauge(
        e,
        "gateway_memberships",
        "(connection, group) memberships.",
        s.memberships,
    )?;
    counter(e, "gateway_joins", "Groups joined.", sum(|w| w.joins))?;
    counter(e, "gateway_leaves", "Groups left.", sum(|w| w.leaves))?;
    counter(
        e,
        "gateway_messages_in",
        "Frames received from clients.",
        sum(|w| w.messages_in),
    )?;
    counter(
        e,
        "gateway_bytes_in",
        "Payload bytes of the frames received from clients.",
        sum(|w| w.bytes_in),
    )?;
    counter(
        e,
        "gateway_sends",
        "send_to_group commands accepted from clients.",
        sum(|w| w.sends),
    )?;
    counter(
        e,
        "gateway_api_publishes",
        "Messages published through POST /api/publish.",
        s.api_publishes,
    )?;
    s.admin_http.encode("gateway", e)?;
    counter(
        e,
        "gateway_deliveries",
        "Messages queued to client connections (group messages and replies).",
        sum(|w| w.deliveries),
    )?;
    counter(
        e,
        "gateway_bytes_out",
        "Bytes of the messages queued to client connections.",
        sum(|w| w.bytes_out),
    )?;
    counter_family(
        e,
        "gateway_errors",
        "Error replies sent to clients, by code.",
        ErrorCode::ALL.iter().map(|code| {
            let code = code.as_str();
            let n = s
                .workers
                .iter()
                .filter_map(|w| w.errors.get(code))
                .sum::<u64>();
            ([("code", code)], n)
        }),
    )?;
    counter(
        e,
        "gateway_slow_consumer_closes",
        "Connections closed because their outbound queue overflowed (close code 4001).",
        sum(|w| w.slow_consumer_closes),
    )?;
    counter(
        e,
        "gateway_queue_drops",
        "Messages discarded with a slow consumer's queue.",
        sum(|w| w.queue_drops),
    )?;
    counter(
        e,
        "gateway_idle_closes",
        "Connections closed for the idle timeout (close code 4000).",
        sum(|w| w.idle_closes),
    )?;
    counter(
        e,
        "gateway_protocol_closes",
        "Connections closed for a WebSocket violation (close codes 1002, 1007, 1009).",
        sum(|w| w.protocol_closes),
    )?;
    counter(
        e,
        "gateway_rate_limit_closes",
        "Connections closed for sustained rate-limit abuse (close code 1008).",
        sum(|w| w.rate_limit_closes),
    )?;

    let link = &s.bus;
    gauge_family(
        e,
        "gateway_bus_up",
        "1 while the bus is up and subscribed (with shards: all of them), else 0, by carrier.",
        [([("carrier", link.carrier)], u64::from(link.up))],
    )?;
    gauge_family(
        e,
        "gateway_bus_shard_up",
        "1 while this connection of the bus (a Redis shard or cluster master, the NATS server, \
         the broker) is up, else 0.",
        link.shards
            .iter()
            .map(|shard| ([("shard", shard.address.as_str())], u64::from(shard.up))),
    )?;
    gauge_family(
        e,
        "gateway_bus_shard_backlog_bytes",
        "Bytes the engine holds for this gateway on this connection, not yet read (Redis: the \
         subscriber connection's output buffer, sampled at each heartbeat).",
        link.shards.iter().filter_map(|shard| {
            let backlog = shard.backlog_bytes?;
            Some(([("shard", shard.address.as_str())], backlog))
        }),
    )?;
    counter(
        e,
        "gateway_bus_reconnects",
        "Times a bus connection was re-established after a loss.",
        link.reconnects,
    )?;
    counter(
        e,
        "gateway_bus_subscriptions_refused",
        "Group subscriptions the bus refused (the broker's --broker-max-channels-per-link): those \
         groups' members here miss what other gateways send them.",
        link.subscriptions_refused,
    )?;
    gauge(
        e,
        "gateway_bus_subscriptions",
        "Groups this gateway is subscribed to on the bus.",
        link.subscriptions,
    )?;
    counter(
        e,
        "gateway_bus_echoes_dropped",
        "This gateway's own publishes that the engine sent back, dropped (Redis).",
        link.echoes_dropped,
    )?;
    counter(
        e,
        "gateway_bus_slow_consumer",
        "Messages for this gateway that the bus dropped because it did not read them fast \
         enough (NATS slow-consumer events; the embedded broker's queue to this gateway full).",
        link.slow_consumer,
    )?;
    counter(
        e,
        "gateway_bus_publishes",
        "Messages published to other gateways through the bus.",
        link.publishes,
    )?;
    counter(
        e,
        "gateway_bus_publishes_dropped",
        "Messages not sent to other gateways (the bus down or its queue full).",
        link.publishes_dropped,
    )?;
    counter(
        e,
        "gateway_bus_messages_in",
        "Messages received from other gateways through the bus.",
        link.messages_in,
    )?;
    counter(
        e,
        "gateway_bus_messages_invalid",
        "Messages from the bus discarded as invalid (not UTF-8).",
        link.messages_invalid,
    )?;
    counter(
        e,
        "gateway_bus_messages_too_large",
        "Messages from the bus discarded as larger than --max-message-size.",
        link.messages_too_large,
    )?;

    if let Some(broker) = &s.embedded_broker {
        broker::metrics::encode_broker_stats(broker, e)?;
    }
    Ok(())
}

/// Reads a gateway's counters at scrape time.
#[derive(Debug)]
pub struct GatewayCollector {
    gateway: Gateway,
}

impl GatewayCollector {
    pub fn new(gateway: Gateway) -> GatewayCollector {
        GatewayCollector { gateway }
    }
}

impl Collector for GatewayCollector {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
        encode_snapshot(&self.gateway.stats(), &mut encoder)
    }
}

/// A registry holding just the gateway's collector.
pub fn registry(gateway: Gateway) -> Registry {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(GatewayCollector::new(gateway)));
    registry
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;

    use super::*;
    use crate::bus::BusStatus;
    use crate::stats::WorkerStats;

    fn render(snapshot: GatewaySnapshot) -> String {
        #[derive(Debug)]
        struct Fixed(GatewaySnapshot);
        impl Collector for Fixed {
            fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> fmt::Result {
                encode_snapshot(&self.0, &mut encoder)
            }
        }
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Fixed(snapshot)));
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        text
    }

    #[test]
    fn workers_are_summed_and_connections_labelled() {
        let (w0, w1) = (WorkerStats::default(), WorkerStats::default());
        w0.connections.store(2, Relaxed);
        w1.connections.store(3, Relaxed);
        w0.sends.store(4, Relaxed);
        w1.sends.store(5, Relaxed);
        w0.bytes_out.store(100, Relaxed);
        w1.bytes_out.store(11, Relaxed);
        w0.count_error(ErrorCode::InvalidJson);
        w1.count_error(ErrorCode::InvalidJson);
        w1.count_error(ErrorCode::TooManyGroups);
        let text = render(GatewaySnapshot {
            connections: 5,
            client_sockets: 6,
            client_addresses: 2,
            connections_refused: 3,
            connections_refused_per_ip: 4,
            groups: 7,
            groups_refused: 0,
            memberships: 8,
            workers: vec![w0.snapshot(0), w1.snapshot(1)],
            api_publishes: 9,
            bus: BusStatus {
                carrier: "broker",
                up: true,
                publishes_dropped: 6,
                ..BusStatus::default()
            },
            embedded_broker: None,
            admin_http: Default::default(),
            cluster: crate::stats::ClusterSnapshot {
                node: protocol::cluster::NodeId(1),
                other_nodes: 2,
                topics: 2,
                heartbeats_in: 0,
                queries: 10,
                queries_partial: 1,
                queries_refused: 0,
                asks_answered: 0,
                asks_refused: 0,
                answers_late: 0,
                control_invalid: 0,
                sends_to_all: 0,
                sends_to_uid: 0,
                sends_to_client: 0,
                presence_events: 0,
                presence_dropped: 0,
            },
            history: crate::stats::HistorySnapshot::default(),
        });
        for line in [
            "# TYPE gateway_connections gauge",
            "gateway_connections{worker=\"0\"} 2",
            "gateway_cluster_other_nodes 2",
            "gateway_cluster_queries_total 10",
            "gateway_cluster_queries_partial_total 1",
            "gateway_connections{worker=\"1\"} 3",
            "# TYPE gateway_sends counter",
            "gateway_sends_total 9",
            "gateway_bytes_out_total 111",
            "gateway_groups 7",
            "gateway_memberships 8",
            "gateway_api_publishes_total 9",
            "gateway_errors_total{code=\"invalid_json\"} 2",
            "gateway_errors_total{code=\"too_many_groups\"} 1",
            "gateway_errors_total{code=\"unknown_cmd\"} 0",
            "gateway_bus_up{carrier=\"broker\"} 1",
            "gateway_bus_publishes_dropped_total 6",
            "gateway_client_sockets 6",
            "gateway_connections_refused_total{limit=\"max_connections\"} 3",
            "gateway_connections_refused_total{limit=\"max_connections_per_ip\"} 4",
        ] {
            assert!(text.lines().any(|l| l == line), "{line:?} not in:\n{text}");
        }
        assert!(
            !text.contains("broker_links"),
            "no embedded broker:\n{text}"
        );
    }
}
