//! The gateway's admin HTTP server, served with `axum::serve` on `127.0.0.1:0` next to gateways
//! and a broker running in this process, and driven by real HTTP and WebSocket clients.
//!
//! "Nothing else arrived" is proven with a marker: the admin handler publishes in order, and a
//! group's messages from one publisher reach each member in order (through the worker inbox, and
//! across gateways through the broker link), so a member whose next message after the expected
//! ones is the marker received nothing else in between: no duplicate, no rejected message.

use std::net::SocketAddr;

use anyhow::{ensure, Context, Result};
use gateway::admin::AdminConfig;
use gateway::{Gateway, GatewayConfig};
use serde_json::{json, Value};
use server_kit::metrics::CONTENT_TYPE;
use test_support::broker::TestBroker;
use test_support::gateway::{serve_admin, workers, TestGateway};
use test_support::http::sample;
use test_support::ws::{add_group, Client};
use test_support::{net, wait_for_state, Admin, RECV_TIMEOUT, STATS_TIMEOUT};
use tokio_util::sync::CancellationToken;

/// Gateways linked through one broker, stopped on drop: embedded in the first gateway that asks
/// for it, or else run on its own.
#[derive(Default)]
struct Cluster {
    broker_addr: Option<SocketAddr>,
    standalone: Option<TestBroker>,
}

/// One gateway and its admin server.
struct Node {
    gateway: TestGateway,
    admin: Admin,
}

impl Cluster {
    /// Starts a gateway linked to the cluster's broker (which it runs when `embedded`), serves
    /// its admin router, and waits until its broker link is up.
    async fn node(
        &mut self,
        config: GatewayConfig,
        admin: AdminConfig,
        embedded: bool,
    ) -> Result<Node> {
        let builder = Gateway::builder(config);
        let builder = match self.broker_addr {
            Some(_) if embedded => anyhow::bail!("the cluster's broker runs already"),
            Some(addr) => builder.broker(addr.to_string()),
            None if embedded => {
                let listener = net::listener().await?;
                self.broker_addr = Some(listener.local_addr()?);
                builder.embedded_broker(listener)
            }
            None => {
                let broker = TestBroker::start(broker::BrokerConfig::default()).await;
                self.broker_addr = Some(broker.addr);
                let builder = builder.broker(broker.addr.to_string());
                self.standalone = Some(broker);
                builder
            }
        };
        let gateway = TestGateway::start(builder).await?;
        let admin = serve_admin(&gateway.gateway, admin, &gateway.shutdown).await?;
        gateway.wait_ready().await?;
        Ok(Node { gateway, admin })
    }
}

/// `POST /api/publish` with a JSON content type: the status and the JSON answer.
async fn publish(node: &Node, body: impl Into<reqwest::Body>) -> Result<(u16, Value)> {
    let request = node
        .admin
        .http()
        .post(node.admin.url("/api/publish"))
        .header("content-type", "application/json")
        .body(body);
    node.admin.call(request).await
}

fn admin_config() -> AdminConfig {
    AdminConfig::default()
}

/// The next messages must be exactly `expected`, in order.
async fn expect(ws: &mut Client, expected: &[&str]) -> Result<()> {
    for want in expected {
        ws.expect_text(want).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_stats_and_metrics() -> Result<()> {
    let mut cluster = Cluster::default();
    let node = cluster.node(workers(2), admin_config(), true).await?;

    assert_eq!(node.admin.get("/healthz").await?, (200, "ok".into()));
    assert_eq!(node.admin.get("/readyz").await?, (200, "ready".into()));

    let stats = node.admin.get_json("/api/stats").await?;
    assert_eq!(stats["connections"], 0, "{stats:#}");
    assert_eq!(stats["groups"], 0, "{stats:#}");
    assert_eq!(stats["api_publishes"], 0, "{stats:#}");
    assert_eq!(stats["bus"]["up"], true, "{stats:#}");
    assert!(stats["embedded_broker"]["links"].is_u64(), "{stats:#}");
    let workers = stats["workers"].as_array().context("workers")?;
    assert_eq!(workers.len(), 2);
    for (id, worker) in workers.iter().enumerate() {
        assert_eq!(worker["id"], id);
        for field in [
            "connections",
            "memberships",
            "sends",
            "deliveries",
            "bytes_in",
            "bytes_out",
        ] {
            assert_eq!(worker[field], 0, "{field}: {worker:#}");
        }
    }

    let text = node.admin.metrics(CONTENT_TYPE).await?;
    for family in [
        "# TYPE gateway_connections gauge",
        "# TYPE gateway_connections_opened counter",
        "# TYPE gateway_groups gauge",
        "# TYPE gateway_memberships gauge",
        "# TYPE gateway_errors counter",
        "# TYPE gateway_bus_up gauge",
        "# TYPE gateway_bus_publishes counter",
        "# TYPE broker_links gauge",
        "# TYPE broker_publishes counter",
    ] {
        assert!(
            text.lines().any(|l| l == family),
            "{family} not in:\n{text}"
        );
    }
    for (series, value) in [
        ("gateway_connections{worker=\"0\"}", 0),
        ("gateway_connections{worker=\"1\"}", 0),
        ("gateway_sends_total", 0),
        ("gateway_bus_up{carrier=\"embedded\"}", 1),
        ("gateway_errors_total{code=\"invalid_json\"}", 0),
        ("gateway_errors_total{code=\"too_many_groups\"}", 0),
        // This gateway reaches its embedded broker in process: no link.
        ("broker_links", 0),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    }

    // Traffic: a join, a send to the joined group, and a frame that is not JSON.
    let mut ws = node.gateway.connect("member").await?;
    let join_frame = r#"{"cmd":"add_group","group_id":"g","req_id":"j"}"#;
    let send_frame = r#"{"cmd":"send_to_group","group_id":"g","message":"hello"}"#;
    let bad_frame = "{";
    ws.send_text(join_frame).await?;
    expect(&mut ws, &[r#"{"cmd":"ack","req_id":"j"}"#]).await?;
    ws.send_text(send_frame).await?;
    expect(&mut ws, &["hello"]).await?;
    ws.send_text(bad_frame).await?;
    let error = ws.recv_text(RECV_TIMEOUT).await?;
    ensure!(error.contains(r#""code":"invalid_json""#), "{error}");

    let text = node
        .admin
        .wait_for_metric(CONTENT_TYPE, "broker_publishes_total", 1)
        .await?;
    let bytes_in = join_frame.len() + send_frame.len() + bad_frame.len();
    let bytes_out = r#"{"cmd":"ack","req_id":"j"}"#.len() + "hello".len() + error.len();
    for (series, value) in [
        // The first connection goes to worker 0.
        ("gateway_connections{worker=\"0\"}", 1),
        ("gateway_connections{worker=\"1\"}", 0),
        ("gateway_connections_opened_total", 1),
        ("gateway_groups", 1),
        ("gateway_memberships", 1),
        ("gateway_joins_total", 1),
        ("gateway_leaves_total", 0),
        ("gateway_messages_in_total", 3),
        ("gateway_sends_total", 1),
        ("gateway_deliveries_total", 3),
        ("gateway_bytes_in_total", bytes_in as u64),
        ("gateway_bytes_out_total", bytes_out as u64),
        ("gateway_errors_total{code=\"invalid_json\"}", 1),
        ("gateway_bus_subscriptions", 1),
        ("gateway_bus_publishes_total", 1),
        ("gateway_bus_publishes_dropped_total", 0),
        ("gateway_api_publishes_total", 0),
        ("broker_subscriptions", 1),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_until_listening_and_while_the_broker_is_unreachable() -> Result<()> {
    // An address nothing listens on: connections to it are refused.
    let refused = net::refused_addr().await?;
    let shutdown = CancellationToken::new();
    let _cancel = shutdown.clone().drop_guard();

    let gateway = Gateway::builder(workers(1))
        .broker(refused.to_string())
        .start(shutdown.clone())?;
    let admin = serve_admin(&gateway, admin_config(), &shutdown).await?;
    assert_eq!(
        admin.get("/readyz").await?,
        (503, "not listening yet".into())
    );

    let listener = net::listener().await?;
    tokio::spawn({
        let gateway = gateway.clone();
        async move { gateway.serve(listener).await }
    });
    wait_for_state(
        "the gateway is listening",
        STATS_TIMEOUT,
        || gateway.ws_addr(),
        Option::is_some,
    )
    .await?;
    assert_eq!(admin.get("/readyz").await?, (503, "bus down".into()));
    let (health, _) = admin.get("/healthz").await?;
    assert_eq!(health, 200);
    let (_, metrics) = admin.get("/metrics").await?;
    assert_eq!(
        sample(&metrics, "gateway_bus_up{carrier=\"broker\"}"),
        Some(0),
        "{metrics}"
    );
    assert!(
        !metrics.contains("broker_links"),
        "no embedded broker:\n{metrics}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_every_member_once_across_gateways() -> Result<()> {
    let mut cluster = Cluster::default();
    let a = cluster.node(workers(2), admin_config(), true).await?;
    let b = cluster.node(workers(1), admin_config(), false).await?;

    // Two members of g on A's two workers, one on B, and a member of group 7 only.
    let mut a0 = a.gateway.connect("a0").await?;
    let mut a1 = a.gateway.connect("a1").await?;
    let mut b0 = b.gateway.connect("b0").await?;
    let mut seven = a.gateway.connect("seven").await?;
    for ws in [&mut a0, &mut a1, &mut b0] {
        ws.ack(add_group("g")).await?;
    }
    seven.ack(add_group("7")).await?;
    let stats = a.gateway.stats();
    assert!(
        stats.workers.iter().all(|w| w.memberships >= 1),
        "{stats:#?}"
    );
    // The broker knows of A's g and 7 and of B's g before anything is published.
    wait_for_state(
        "the broker has 3 subscriptions",
        STATS_TIMEOUT,
        || a.gateway.stats().embedded_broker,
        |broker| broker.as_ref().is_some_and(|b| b.subscriptions == 3),
    )
    .await?;

    let (status, answer) = publish(&a, r#"{"group_id":"g","message":"one"}"#).await?;
    assert_eq!((status, answer), (200, json!({"published": 1})));
    let batch = json!([
        {"group_id": "g", "message": {"n": 2}},
        {"group_id": 7.0, "message": "for seven"},
        {"group_id": "g", "message": "three", "ignored": true},
    ]);
    let (status, answer) = publish(&a, batch.to_string()).await?;
    assert_eq!((status, answer), (200, json!({"published": 3})));
    let markers = json!([
        {"group_id": "g", "message": "end"},
        {"group_id": 7, "message": "end"},
    ]);
    let (status, answer) = publish(&a, markers.to_string()).await?;
    assert_eq!((status, answer), (200, json!({"published": 2})));

    for ws in [&mut a0, &mut a1, &mut b0] {
        expect(ws, &["one", r#"{"n":2}"#, "three", "end"]).await?;
    }
    expect(&mut seven, &["for seven", "end"]).await?;

    assert_eq!(a.gateway.stats().api_publishes, 6);
    let text = a.admin.metrics(CONTENT_TYPE).await?;
    assert_eq!(
        sample(&text, "gateway_api_publishes_total"),
        Some(6),
        "{text}"
    );
    assert_eq!(sample(&text, "gateway_sends_total"), Some(0), "{text}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_errors_are_json_and_publish_nothing() -> Result<()> {
    let mut cluster = Cluster::default();
    let gateway_config = GatewayConfig {
        max_message_size: 1024,
        ..workers(1)
    };
    let admin = AdminConfig {
        api_max_body_size: 4096,
        api_max_batch: 3,
        ..AdminConfig::default()
    };
    let node = cluster.node(gateway_config, admin, false).await?;
    let mut member = node.gateway.connect("member").await?;
    member.ack(add_group("g")).await?;

    let ok = r#"{"group_id":"g","message":"must not arrive"}"#;
    let cases: Vec<(String, u16, &str, Option<usize>)> = vec![
        ("{".into(), 400, "invalid_json", None),
        ("".into(), 400, "invalid_json", None),
        (format!("[{ok}"), 400, "invalid_json", None),
        (r#""g""#.into(), 400, "not_an_object", None),
        (format!("[{ok},3]"), 400, "not_an_object", Some(1)),
        (r#"{"group_id":"g"}"#.into(), 400, "missing_field", None),
        (r#"{"message":"m"}"#.into(), 400, "missing_field", None),
        (
            r#"{"group_id":"","message":"m"}"#.into(),
            400,
            "invalid_group_id",
            None,
        ),
        (
            r#"{"group_id":null,"message":"m"}"#.into(),
            400,
            "invalid_group_id",
            None,
        ),
        (
            format!(r#"[{ok},{{"group_id":1.5,"message":"m"}}]"#),
            400,
            "invalid_group_id",
            Some(1),
        ),
        (
            r#"{"group_id":"g","message":"a","message":"b"}"#.into(),
            400,
            "duplicate_field",
            None,
        ),
        (
            r#"{"group_id":"g","message":"\ud800"}"#.into(),
            400,
            "invalid_field",
            None,
        ),
        (
            json!({"group_id": "g", "message": "x".repeat(1025)}).to_string(),
            413,
            "message_too_large",
            None,
        ),
        (
            format!(
                r#"[{ok},{{"group_id":"g","message":"{}"}}]"#,
                "x".repeat(1025)
            ),
            413,
            "message_too_large",
            Some(1),
        ),
        (
            format!("[{ok},{ok},{ok},{ok}]"),
            413,
            "batch_too_large",
            None,
        ),
        (
            json!({"group_id": "g", "message": "x".repeat(4096)}).to_string(),
            413,
            "body_too_large",
            None,
        ),
    ];
    for (body, status, code, index) in cases {
        let (got_status, answer) = publish(&node, body.clone()).await?;
        let what = format!("{:.80}", body);
        assert_eq!(got_status, status, "{what}: {answer}");
        assert_eq!(answer["error"]["code"], code, "{what}: {answer}");
        assert!(
            answer["error"]["reason"]
                .as_str()
                .is_some_and(|r| !r.is_empty()),
            "{what}: {answer}"
        );
        match index {
            Some(index) => assert_eq!(answer["error"]["index"], index, "{what}: {answer}"),
            None => assert!(answer["error"].get("index").is_none(), "{what}: {answer}"),
        }
    }

    let (status, answer) = publish(&node, vec![0xffu8, b'{']).await?;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (400, &json!("invalid_json"))
    );

    let http = node.admin.http();
    let url = node.admin.url("/api/publish");
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = http.post(&url).body(ok);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let (status, answer) = node.admin.call(request).await?;
        assert_eq!(status, 415, "{content_type:?}: {answer}");
        assert_eq!(answer["error"]["code"], "unsupported_media_type");
    }
    let (status, answer) = node.admin.call(http.get(&url)).await?;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (405, &json!("method_not_allowed"))
    );
    let (status, answer) = node.admin.call(http.get(node.admin.url("/nope"))).await?;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (404, &json!("not_found"))
    );

    // The largest message that fits is accepted; then the marker. The member received nothing
    // of the rejected requests.
    let largest = "y".repeat(1024);
    let (status, _) = publish(
        &node,
        json!({"group_id": "g", "message": largest}).to_string(),
    )
    .await?;
    assert_eq!(status, 200);
    let (status, _) = publish(&node, r#"{"group_id":"g","message":"end"}"#).await?;
    assert_eq!(status, 200);
    expect(&mut member, &[&largest, "end"]).await?;
    assert_eq!(node.gateway.stats().api_publishes, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guards_the_api_only() -> Result<()> {
    let mut cluster = Cluster::default();
    let admin = AdminConfig {
        api_token: Some("s3cret".into()),
        ..AdminConfig::default()
    };
    let node = cluster.node(workers(1), admin, false).await?;
    let mut member = node.gateway.connect("member").await?;
    member.ack(add_group("g")).await?;

    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, body) = node.admin.get(path).await?;
        assert_eq!(status, 200, "{path}: {body}");
    }

    let http = node.admin.http();
    let stats_url = node.admin.url("/api/stats");
    let publish_url = node.admin.url("/api/publish");
    let body = r#"{"group_id":"g","message":"authorized"}"#;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cret2"),
        Some("Basic s3cret"),
        Some("s3cret"),
    ] {
        let mut get = http.get(&stats_url);
        let mut post = http
            .post(&publish_url)
            .header("content-type", "application/json")
            .body(body);
        if let Some(auth) = auth {
            get = get.header("authorization", auth);
            post = post.header("authorization", auth);
        }
        for request in [get, post] {
            let response = request.send().await?;
            assert_eq!(response.status(), 401, "{auth:?}");
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            let answer: Value = response.json().await?;
            assert_eq!(answer["error"]["code"], "unauthorized", "{auth:?}");
        }
    }

    let stats = http.get(&stats_url).bearer_auth("s3cret").send().await?;
    assert_eq!(stats.status(), 200);
    let (status, answer) = node
        .admin
        .call(
            http.post(&publish_url)
                .header("content-type", "application/json")
                .header("authorization", "bearer s3cret")
                .body(body),
        )
        .await?;
    assert_eq!((status, answer), (200, json!({"published": 1})));
    expect(&mut member, &["authorized"]).await?;
    // Nothing from the refused publishes came before it, and nothing after: a marker.
    let (status, _) = node
        .admin
        .call(
            http.post(&publish_url)
                .header("content-type", "application/json")
                .bearer_auth("s3cret")
                .body(r#"{"group_id":"g","message":"end"}"#),
        )
        .await?;
    assert_eq!(status, 200);
    expect(&mut member, &["end"]).await?;
    Ok(())
}
