//! The broker's admin HTTP server: `/healthz`, `/readyz`, `/api/stats` and `/metrics`, served
//! on `127.0.0.1:0` next to a broker that real TCP links talk to.

use broker::BrokerConfig;
use bytes::Bytes;
use protocol::link::{Body, Message, Publish, Subscribe};
use protocol::Frame;
use server_kit::metrics::CONTENT_TYPE;
use test_support::broker::{Link, TestBroker};
use test_support::http::sample;
use test_support::{net, Admin};

struct Fixture {
    broker: TestBroker,
    admin: Admin,
}

async fn start() -> Fixture {
    let broker = TestBroker::start(BrokerConfig::default()).await;
    let listener = net::listener().await.expect("bind admin");
    let addr = listener.local_addr().expect("admin address");
    let admin_http = std::sync::Arc::new(server_kit::admin_http::AdminHttpStats::default());
    tokio::spawn(server_kit::admin_http::serve_admin(
        listener,
        broker::admin::router(broker.broker.clone(), admin_http.clone()),
        server_kit::admin_http::AdminHttpLimits::default(),
        admin_http,
        broker.shutdown.clone(),
    ));
    let admin = Admin::new("broker", addr).expect("HTTP client");
    Fixture { broker, admin }
}

impl Fixture {
    async fn metrics(&self) -> String {
        self.admin
            .metrics(CONTENT_TYPE)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_stats() {
    let fx = start().await;
    for path in ["/healthz", "/readyz"] {
        let (status, _) = fx.admin.get(path).await.expect("GET");
        assert_eq!(status, 200, "{path}");
    }
    let stats = fx.admin.get_json("/api/stats").await.expect("JSON");
    assert_eq!(stats["links"], 0);
    assert_eq!(stats["publishes"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_follow_the_traffic() {
    let fx = start().await;
    let text = fx.metrics().await;
    for (series, value) in [
        ("broker_links", 0),
        ("broker_links_opened_total", 0),
        ("broker_channels", 0),
        ("broker_subscriptions", 0),
        ("broker_publishes_total", 0),
        ("broker_deliveries_total", 0),
        ("broker_slow_link_disconnects_total", 0),
        ("broker_dropped_frames_total", 0),
        ("broker_bad_frames_total", 0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    }
    assert!(text.contains("# TYPE broker_links gauge\n"), "{text}");
    assert!(text.contains("# TYPE broker_publishes counter\n"), "{text}");

    let mut subscriber = Link::connect(fx.broker.addr).await;
    let mut publisher = Link::connect(fx.broker.addr).await;
    subscriber
        .send(Frame::new(Body::Subscribe(Subscribe {
            channels: vec![Bytes::from_static(b"g")],
        })))
        .await;
    subscriber.barrier().await;
    publisher
        .send(Frame::new(Body::Publish(Publish {
            channel: Bytes::from_static(b"g"),
            payload: Bytes::from_static(b"hi"),
            no_echo: true,
            history: None,
            id: 0,
            origin: 0,
        })))
        .await;
    match subscriber.expect_frame().await.body {
        Some(Body::Message(Message { channel, payload })) => {
            assert_eq!(
                (channel.as_ref(), payload.as_ref()),
                (&b"g"[..], &b"hi"[..])
            );
        }
        other => panic!("expected the message, got {other:?}"),
    }

    let text = fx.metrics().await;
    for (series, value) in [
        ("broker_links", 2),
        ("broker_links_opened_total", 2),
        ("broker_channels", 1),
        ("broker_subscriptions", 1),
        ("broker_publishes_total", 1),
        ("broker_deliveries_total", 1),
        ("broker_bad_frames_total", 0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    }
}
