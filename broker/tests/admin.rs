//! The broker's admin HTTP server: `/healthz`, `/readyz`, `/api/stats` and `/metrics`, served
//! on `127.0.0.1:0` next to a broker that real TCP links talk to.

use std::net::SocketAddr;
use std::time::Duration;

use broker::{Broker, BrokerConfig};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use protocol::link::{Body, Message, Ping, Publish, Subscribe};
use protocol::{Frame, LinkCodec};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

struct Fixture {
    broker_addr: SocketAddr,
    admin: String,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start() -> Fixture {
    let broker = Broker::new(BrokerConfig::default()).expect("default config is valid");
    let shutdown = CancellationToken::new();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind broker");
    let broker_addr = listener.local_addr().expect("broker address");
    tokio::spawn({
        let (broker, shutdown) = (broker.clone(), shutdown.clone());
        async move { broker.serve(listener, shutdown).await }
    });
    let admin_listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
    let admin = format!(
        "http://{}",
        admin_listener.local_addr().expect("admin address")
    );
    let admin_http = std::sync::Arc::new(server_kit::admin_http::AdminHttpStats::default());
    tokio::spawn(server_kit::admin_http::serve_admin(
        admin_listener,
        broker::admin::router(broker, admin_http.clone()),
        server_kit::admin_http::AdminHttpLimits::default(),
        admin_http,
        shutdown.clone(),
    ));
    let http = reqwest::Client::builder()
        .timeout(WAIT)
        .no_proxy()
        .build()
        .expect("HTTP client");
    Fixture {
        broker_addr,
        admin,
        http,
        shutdown,
    }
}

impl Fixture {
    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.admin))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    async fn metrics(&self) -> String {
        let response = self.get("/metrics").await;
        assert_eq!(response.status(), 200);
        assert_eq!(
            response.headers()["content-type"],
            server_kit::metrics::CONTENT_TYPE
        );
        let text = response.text().await.expect("metrics body");
        assert!(text.ends_with("# EOF\n"), "{text}");
        text
    }
}

/// The value of the sample whose series (name and labels) is exactly `series`.
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

struct Link {
    framed: Framed<TcpStream, LinkCodec>,
    nonce: u64,
}

impl Link {
    async fn connect(addr: SocketAddr) -> Link {
        let stream = timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect to the broker");
        let mut link = Link {
            framed: Framed::new(stream, LinkCodec::default()),
            nonce: 0,
        };
        match link.recv().await.body {
            Some(Body::Hello(_)) => {}
            other => panic!("expected the broker's hello, got {other:?}"),
        }
        link.send(Frame::hello("test")).await;
        link.barrier().await;
        link
    }

    async fn send(&mut self, frame: Frame) {
        timeout(WAIT, self.framed.send(frame))
            .await
            .expect("send timed out")
            .expect("send a frame");
    }

    async fn recv(&mut self) -> Frame {
        timeout(WAIT, self.framed.next())
            .await
            .expect("nothing arrived in time")
            .expect("the link closed")
            .expect("a valid frame")
    }

    /// Everything sent before has been applied when the pong arrives.
    async fn barrier(&mut self) {
        self.nonce += 1;
        let nonce = self.nonce;
        self.send(Frame::new(Body::Ping(Ping { nonce }))).await;
        match self.recv().await.body {
            Some(Body::Pong(pong)) if pong.nonce == nonce => {}
            other => panic!("expected pong {nonce}, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_stats() {
    let fx = start().await;
    for path in ["/healthz", "/readyz"] {
        let response = fx.get(path).await;
        assert_eq!(response.status(), 200, "{path}");
    }
    let stats: serde_json::Value = fx.get("/api/stats").await.json().await.expect("JSON");
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

    let mut subscriber = Link::connect(fx.broker_addr).await;
    let mut publisher = Link::connect(fx.broker_addr).await;
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
        })))
        .await;
    match subscriber.recv().await.body {
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
