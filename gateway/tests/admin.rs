//! The gateway's admin HTTP server, served with `axum::serve` on `127.0.0.1:0` next to gateways
//! and a broker running in this process, and driven by real HTTP and WebSocket clients.
//!
//! "Nothing else arrived" is proven with a marker: the admin handler publishes in order, and a
//! group's messages from one publisher reach each member in order (through the worker inbox, and
//! across gateways through the broker link), so a member whose next message after the expected
//! ones is the marker received nothing else in between: no duplicate, no rejected message.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures_util::{SinkExt, StreamExt};
use gateway::admin::AdminConfig;
use gateway::{Gateway, GatewayBuilder, GatewayConfig};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Gateways linked through one broker, cancelled on drop. The broker listens on `broker_addr`:
/// embedded in the first gateway that asks for it, or else run on its own.
struct Cluster {
    broker_listener: Mutex<Option<TcpListener>>,
    broker_addr: SocketAddr,
    shutdown: CancellationToken,
    http: reqwest::Client,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// One gateway, its WebSocket URL and its admin server's base URL.
struct Node {
    gateway: Gateway,
    url: String,
    admin: String,
}

impl Cluster {
    async fn start() -> Result<Cluster> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let broker_addr = listener.local_addr()?;
        let shutdown = CancellationToken::new();
        let http = reqwest::Client::builder()
            .timeout(WAIT)
            .no_proxy()
            .build()?;
        Ok(Cluster {
            broker_listener: Mutex::new(Some(listener)),
            broker_addr,
            shutdown,
            http,
        })
    }

    /// Starts a gateway linked to the broker (which it runs when `embedded`), serves its admin
    /// router, and waits until its broker link is up.
    async fn node(
        &self,
        config: GatewayConfig,
        admin: AdminConfig,
        embedded: bool,
    ) -> Result<Node> {
        let unclaimed = self.broker_listener.lock().expect("not poisoned").take();
        let builder = Gateway::builder(config);
        let builder = match unclaimed {
            Some(listener) if embedded => builder.embedded_broker(listener),
            Some(listener) => {
                let broker = broker::Broker::new(broker::BrokerConfig::default())?;
                tokio::spawn({
                    let shutdown = self.shutdown.clone();
                    async move { broker.serve(listener, shutdown).await }
                });
                builder.broker(self.broker_addr.to_string())
            }
            None if embedded => anyhow::bail!("the cluster's broker runs already"),
            None => builder.broker(self.broker_addr.to_string()),
        };
        let node = start_node(builder, admin, &self.shutdown).await?;
        wait_until("the broker link is up", || node.gateway.is_ready()).await?;
        Ok(node)
    }

    async fn get(&self, url: String) -> Result<(u16, String)> {
        let response = self.http.get(&url).send().await.context(url)?;
        Ok((response.status().as_u16(), response.text().await?))
    }

    async fn get_json(&self, url: String) -> Result<Value> {
        let (status, body) = self.get(url).await?;
        ensure!(status == 200, "answered {status}: {body}");
        Ok(serde_json::from_str(&body)?)
    }

    /// `POST /api/publish` with a JSON content type: the status and the JSON answer.
    async fn publish(&self, node: &Node, body: impl Into<reqwest::Body>) -> Result<(u16, Value)> {
        let request = self
            .http
            .post(format!("{}/api/publish", node.admin))
            .header("content-type", "application/json")
            .body(body);
        call(request).await
    }

    async fn metrics(&self, node: &Node) -> Result<String> {
        let response = self
            .http
            .get(format!("{}/metrics", node.admin))
            .send()
            .await?;
        ensure!(
            response.status() == 200,
            "/metrics answered {}",
            response.status()
        );
        let content_type = response.headers().get("content-type").cloned();
        ensure!(
            content_type.as_ref().and_then(|v| v.to_str().ok())
                == Some(server_kit::metrics::CONTENT_TYPE),
            "content type {content_type:?}"
        );
        let text = response.text().await?;
        ensure!(text.ends_with("# EOF\n"), "no EOF marker:\n{text}");
        Ok(text)
    }

    /// Scrapes until `series` has `value` (for counters updated after the fact, like the
    /// broker's), then returns the scrape.
    async fn wait_metric(&self, node: &Node, series: &str, value: u64) -> Result<String> {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.metrics(node).await?;
            if sample(&text, series) == Some(value) {
                return Ok(text);
            }
            if tokio::time::Instant::now() > deadline {
                bail!("{series} never reached {value}:\n{text}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn start_node(
    builder: GatewayBuilder,
    admin: AdminConfig,
    shutdown: &CancellationToken,
) -> Result<Node> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}", listener.local_addr()?);
    let gateway = builder.start(shutdown.clone())?;
    tokio::spawn({
        let gateway = gateway.clone();
        async move { gateway.serve(listener).await }
    });
    let admin_addr = serve_admin(&gateway, admin, shutdown).await?;
    wait_until("the gateway is listening", || gateway.ws_addr().is_some()).await?;
    Ok(Node {
        gateway,
        url,
        admin: format!("http://{admin_addr}"),
    })
}

async fn serve_admin(
    gateway: &Gateway,
    admin: AdminConfig,
    shutdown: &CancellationToken,
) -> Result<SocketAddr> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let limits = admin.http_limits();
    let router = gateway::admin::router(gateway.clone(), admin);
    tokio::spawn(server_kit::admin_http::serve_admin(
        listener,
        router,
        limits,
        gateway.admin_http_stats(),
        shutdown.clone(),
    ));
    Ok(addr)
}

/// Polls `done` (in-process state, no I/O) until it holds.
async fn wait_until(what: &str, done: impl Fn() -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done() {
        if tokio::time::Instant::now() > deadline {
            bail!("timed out waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

async fn call(request: reqwest::RequestBuilder) -> Result<(u16, Value)> {
    let response = request.send().await?;
    let status = response.status().as_u16();
    let body = response.text().await?;
    let value =
        serde_json::from_str(&body).with_context(|| format!("{status}: not JSON: {body}"))?;
    Ok((status, value))
}

/// The value of the sample whose series (name and labels) is exactly `series`.
fn sample(text: &str, series: &str) -> Option<u64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn admin_config() -> AdminConfig {
    AdminConfig::default()
}

fn config(workers: usize) -> GatewayConfig {
    GatewayConfig {
        workers: Some(workers),
        ..GatewayConfig::default()
    }
}

async fn connect(node: &Node) -> Result<Client> {
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(&node.url))
        .await
        .context("connect timed out")??;
    Ok(ws)
}

async fn send(ws: &mut Client, text: &str) -> Result<()> {
    ws.send(Message::text(text)).await?;
    Ok(())
}

async fn recv_text(ws: &mut Client) -> Result<String> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .context("nothing received in time")?
            .context("stream ended")??;
        match msg {
            Message::Text(text) => return Ok(text.as_str().to_owned()),
            Message::Ping(_) | Message::Pong(_) => {}
            other => bail!("expected text, got {other:?}"),
        }
    }
}

/// Joins `group` and waits for the ack.
async fn join(ws: &mut Client, group: &str) -> Result<()> {
    send(
        ws,
        &format!(r#"{{"cmd":"add_group","group_id":"{group}","req_id":"j"}}"#),
    )
    .await?;
    let reply = recv_text(ws).await?;
    ensure!(
        reply == r#"{"cmd":"ack","req_id":"j"}"#,
        "join answered {reply}"
    );
    Ok(())
}

/// The next messages must be exactly `expected`, in order.
async fn expect(ws: &mut Client, who: &str, expected: &[&str]) -> Result<()> {
    for want in expected {
        let got = recv_text(ws)
            .await
            .with_context(|| format!("{who}: waiting for {want}"))?;
        ensure!(got == *want, "{who}: expected {want:?}, got {got:?}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_stats_and_metrics() -> Result<()> {
    let cluster = Cluster::start().await?;
    let node = cluster.node(config(2), admin_config(), true).await?;

    assert_eq!(
        cluster.get(format!("{}/healthz", node.admin)).await?,
        (200, "ok".into())
    );
    assert_eq!(
        cluster.get(format!("{}/readyz", node.admin)).await?,
        (200, "ready".into())
    );

    let stats = cluster
        .get_json(format!("{}/api/stats", node.admin))
        .await?;
    assert_eq!(stats["connections"], 0, "{stats:#}");
    assert_eq!(stats["groups"], 0, "{stats:#}");
    assert_eq!(stats["api_publishes"], 0, "{stats:#}");
    assert_eq!(stats["broker_link"]["up"], true, "{stats:#}");
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

    let text = cluster.metrics(&node).await?;
    for family in [
        "# TYPE gateway_connections gauge",
        "# TYPE gateway_connections_opened counter",
        "# TYPE gateway_groups gauge",
        "# TYPE gateway_memberships gauge",
        "# TYPE gateway_errors counter",
        "# TYPE gateway_broker_link_up gauge",
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
        ("gateway_broker_link_up", 1),
        ("gateway_errors_total{code=\"invalid_json\"}", 0),
        ("gateway_errors_total{code=\"too_many_groups\"}", 0),
        ("broker_links", 1),
    ] {
        assert_eq!(sample(&text, series), Some(value), "{series} in:\n{text}");
    }

    // Traffic: a join, a send to the joined group, and a frame that is not JSON.
    let mut ws = connect(&node).await?;
    let join_frame = r#"{"cmd":"add_group","group_id":"g","req_id":"j"}"#;
    let send_frame = r#"{"cmd":"send_to_group","group_id":"g","message":"hello"}"#;
    let bad_frame = "{";
    send(&mut ws, join_frame).await?;
    expect(&mut ws, "member", &[r#"{"cmd":"ack","req_id":"j"}"#]).await?;
    send(&mut ws, send_frame).await?;
    expect(&mut ws, "member", &["hello"]).await?;
    send(&mut ws, bad_frame).await?;
    let error = recv_text(&mut ws).await?;
    ensure!(error.contains(r#""code":"invalid_json""#), "{error}");

    let text = cluster
        .wait_metric(&node, "broker_publishes_total", 1)
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
        ("gateway_broker_link_subscriptions", 1),
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
    let refused = TcpListener::bind("127.0.0.1:0").await?.local_addr()?;
    let shutdown = CancellationToken::new();
    let _cancel = shutdown.clone().drop_guard();
    let http = reqwest::Client::builder()
        .timeout(WAIT)
        .no_proxy()
        .build()?;

    let gateway = Gateway::builder(config(1))
        .broker(refused.to_string())
        .start(shutdown.clone())?;
    let admin = format!(
        "http://{}",
        serve_admin(&gateway, admin_config(), &shutdown).await?
    );
    let readyz = || async {
        let response = http.get(format!("{admin}/readyz")).send().await?;
        Ok::<_, anyhow::Error>((response.status().as_u16(), response.text().await?))
    };
    assert_eq!(readyz().await?, (503, "not listening yet".into()));

    let listener = TcpListener::bind("127.0.0.1:0").await?;
    tokio::spawn({
        let gateway = gateway.clone();
        async move { gateway.serve(listener).await }
    });
    wait_until("the gateway is listening", || gateway.ws_addr().is_some()).await?;
    assert_eq!(readyz().await?, (503, "broker link down".into()));
    let health = http.get(format!("{admin}/healthz")).send().await?;
    assert_eq!(health.status(), 200);
    let metrics = http
        .get(format!("{admin}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    assert_eq!(
        sample(&metrics, "gateway_broker_link_up"),
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
    let cluster = Cluster::start().await?;
    let a = cluster.node(config(2), admin_config(), true).await?;
    let b = cluster.node(config(1), admin_config(), false).await?;

    // Two members of g on A's two workers, one on B, and a member of group 7 only.
    let mut a0 = connect(&a).await?;
    let mut a1 = connect(&a).await?;
    let mut b0 = connect(&b).await?;
    let mut seven = connect(&a).await?;
    for ws in [&mut a0, &mut a1, &mut b0] {
        join(ws, "g").await?;
    }
    join(&mut seven, "7").await?;
    let stats = a.gateway.stats();
    assert!(
        stats.workers.iter().all(|w| w.memberships >= 1),
        "{stats:#?}"
    );
    // The broker knows of A's g and 7 and of B's g before anything is published.
    wait_until("the broker has 3 subscriptions", || {
        let broker = a
            .gateway
            .stats()
            .embedded_broker
            .expect("A runs the broker");
        broker.subscriptions == 3
    })
    .await?;

    let (status, answer) = cluster
        .publish(&a, r#"{"group_id":"g","message":"one"}"#)
        .await?;
    assert_eq!((status, answer), (200, json!({"published": 1})));
    let batch = json!([
        {"group_id": "g", "message": {"n": 2}},
        {"group_id": 7.0, "message": "for seven"},
        {"group_id": "g", "message": "three", "ignored": true},
    ]);
    let (status, answer) = cluster.publish(&a, batch.to_string()).await?;
    assert_eq!((status, answer), (200, json!({"published": 3})));
    let markers = json!([
        {"group_id": "g", "message": "end"},
        {"group_id": 7, "message": "end"},
    ]);
    let (status, answer) = cluster.publish(&a, markers.to_string()).await?;
    assert_eq!((status, answer), (200, json!({"published": 2})));

    for (who, ws) in [("a0", &mut a0), ("a1", &mut a1), ("b0", &mut b0)] {
        expect(ws, who, &["one", r#"{"n":2}"#, "three", "end"]).await?;
    }
    expect(&mut seven, "seven", &["for seven", "end"]).await?;

    assert_eq!(a.gateway.stats().api_publishes, 6);
    let text = cluster.metrics(&a).await?;
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
    let cluster = Cluster::start().await?;
    let gateway_config = GatewayConfig {
        max_message_size: 1024,
        ..config(1)
    };
    let admin = AdminConfig {
        api_max_body_size: 4096,
        api_max_batch: 3,
        ..AdminConfig::default()
    };
    let node = cluster.node(gateway_config, admin, false).await?;
    let mut member = connect(&node).await?;
    join(&mut member, "g").await?;

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
        let (got_status, answer) = cluster.publish(&node, body.clone()).await?;
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

    let (status, answer) = cluster.publish(&node, vec![0xffu8, b'{']).await?;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (400, &json!("invalid_json"))
    );

    let url = format!("{}/api/publish", node.admin);
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        None,
    ] {
        let mut request = cluster.http.post(&url).body(ok);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let (status, answer) = call(request).await?;
        assert_eq!(status, 415, "{content_type:?}: {answer}");
        assert_eq!(answer["error"]["code"], "unsupported_media_type");
    }
    let (status, answer) = call(cluster.http.get(&url)).await?;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (405, &json!("method_not_allowed"))
    );
    let (status, answer) = call(cluster.http.get(format!("{}/nope", node.admin))).await?;
    assert_eq!(
        (status, &answer["error"]["code"]),
        (404, &json!("not_found"))
    );

    // The largest message that fits is accepted; then the marker. The member received nothing
    // of the rejected requests.
    let largest = "y".repeat(1024);
    let (status, _) = cluster
        .publish(
            &node,
            json!({"group_id": "g", "message": largest}).to_string(),
        )
        .await?;
    assert_eq!(status, 200);
    let (status, _) = cluster
        .publish(&node, r#"{"group_id":"g","message":"end"}"#)
        .await?;
    assert_eq!(status, 200);
    expect(&mut member, "member", &[&largest, "end"]).await?;
    assert_eq!(node.gateway.stats().api_publishes, 2);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guards_the_api_only() -> Result<()> {
    let cluster = Cluster::start().await?;
    let admin = AdminConfig {
        api_token: Some("s3cret".into()),
        ..AdminConfig::default()
    };
    let node = cluster.node(config(1), admin, false).await?;
    let mut member = connect(&node).await?;
    join(&mut member, "g").await?;

    for path in ["/healthz", "/readyz", "/metrics"] {
        let (status, body) = cluster.get(format!("{}{path}", node.admin)).await?;
        assert_eq!(status, 200, "{path}: {body}");
    }

    let stats_url = format!("{}/api/stats", node.admin);
    let publish_url = format!("{}/api/publish", node.admin);
    let body = r#"{"group_id":"g","message":"authorized"}"#;
    for auth in [
        None,
        Some("Bearer wrong"),
        Some("Bearer s3cret2"),
        Some("Basic s3cret"),
        Some("s3cret"),
    ] {
        let mut get = cluster.http.get(&stats_url);
        let mut post = cluster
            .http
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

    let stats = cluster
        .http
        .get(&stats_url)
        .bearer_auth("s3cret")
        .send()
        .await?;
    assert_eq!(stats.status(), 200);
    let (status, answer) = call(
        cluster
            .http
            .post(&publish_url)
            .header("content-type", "application/json")
            .header("authorization", "bearer s3cret")
            .body(body),
    )
    .await?;
    assert_eq!((status, answer), (200, json!({"published": 1})));
    expect(&mut member, "member", &["authorized"]).await?;
    // Nothing from the refused publishes came before it, and nothing after: a marker.
    let (status, _) = call(
        cluster
            .http
            .post(&publish_url)
            .header("content-type", "application/json")
            .bearer_auth("s3cret")
            .body(r#"{"group_id":"g","message":"end"}"#),
    )
    .await?;
    assert_eq!(status, 200);
    expect(&mut member, "member", &["end"]).await?;
    Ok(())
}
