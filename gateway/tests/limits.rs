//! Limits on what clients may take, each with its documented answer: connections per process
//! and per client address (HTTP 503), frames per second (`rate_limited`, then close 1008), the
//! handshake timeout, and the Origin allowlist (HTTP 403). Clients that stay within them are not
//! affected.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use futures_util::{SinkExt, StreamExt};
use gateway::stats::GatewaySnapshot;
use gateway::{Gateway, GatewayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);

type Client = WebSocketStream<TcpStream>;

struct Fixture {
    gateway: Gateway,
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn start(config: GatewayConfig) -> Result<Fixture> {
    let shutdown = CancellationToken::new();
    let broker_listener = TcpListener::bind("127.0.0.1:0").await?;
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let gateway = Gateway::builder(config)
        .embedded_broker(broker_listener)
        .start(shutdown.clone())?;
    tokio::spawn({
        let gateway = gateway.clone();
        async move { gateway.serve(listener).await }
    });
    let fixture = Fixture {
        gateway,
        addr,
        shutdown,
    };
    fixture.wait_stats(|s| s.broker_link.up).await?;
    Ok(fixture)
}

/// One worker, so that every client shares it; everything else at its default.
fn one_worker() -> GatewayConfig {
    GatewayConfig {
        workers: Some(1),
        ..GatewayConfig::default()
    }
}

fn local(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

impl Fixture {
    /// A TCP connection from `from` (any 127.0.0.0/8 address works on loopback).
    async fn tcp_from(&self, from: IpAddr) -> Result<TcpStream> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(from, 0))?;
        let stream = tokio::time::timeout(WAIT, socket.connect(self.addr))
            .await
            .context("TCP connect timed out")??;
        Ok(stream)
    }

    /// A WebSocket handshake from `from` with `origin`, if any: the client, or the HTTP
    /// response that refused it.
    async fn try_connect(
        &self,
        from: IpAddr,
        origin: Option<&str>,
    ) -> Result<Result<Client, (u16, String)>> {
        let stream = self.tcp_from(from).await?;
        let mut request = format!("ws://{}/", self.addr).into_client_request()?;
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("Origin", HeaderValue::from_str(origin)?);
        }
        let handshake = tokio_tungstenite::client_async(request, stream);
        match tokio::time::timeout(WAIT, handshake)
            .await
            .context("handshake timed out")?
        {
            Ok((ws, _)) => Ok(Ok(ws)),
            Err(WsError::Http(response)) => {
                let body = response
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
                    .into_owned();
                Ok(Err((response.status().as_u16(), body)))
            }
            Err(e) => Err(e.into()),
        }
    }

    async fn connect_from(&self, from: IpAddr) -> Result<Client> {
        match self.try_connect(from, None).await? {
            Ok(ws) => Ok(ws),
            Err((status, body)) => bail!("refused with {status}: {body}"),
        }
    }

    async fn wait_stats(&self, cond: impl Fn(&GatewaySnapshot) -> bool) -> Result<GatewaySnapshot> {
        let deadline = Instant::now() + WAIT;
        loop {
            let stats = self.gateway.stats();
            if cond(&stats) {
                return Ok(stats);
            }
            if Instant::now() > deadline {
                bail!("stats condition not met: {stats:#?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

async fn recv(ws: &mut Client) -> Result<Message> {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .context("nothing received in time")?
            .context("stream ended")??;
        if !matches!(msg, Message::Ping(_) | Message::Pong(_)) {
            return Ok(msg);
        }
    }
}

async fn recv_text(ws: &mut Client) -> Result<String> {
    match recv(ws).await? {
        Message::Text(t) => Ok(t.as_str().to_owned()),
        other => bail!("expected text, got {other:?}"),
    }
}

async fn recv_json(ws: &mut Client) -> Result<serde_json::Value> {
    Ok(serde_json::from_str(&recv_text(ws).await?)?)
}

async fn expect_close(ws: &mut Client) -> Result<u16> {
    match recv(ws).await? {
        Message::Close(Some(frame)) => Ok(u16::from(frame.code)),
        other => bail!("expected a close frame, got {other:?}"),
    }
}

/// Sends `command` with `req_id` and expects its ack as the next frame.
async fn request(ws: &mut Client, command: &str, req_id: u64) -> Result<()> {
    let command = command.replacen('{', &format!(r#"{{"req_id":{req_id},"#), 1);
    ws.send(Message::text(command)).await?;
    let reply = recv_text(ws).await?;
    ensure!(
        reply == format!(r#"{{"cmd":"ack","req_id":{req_id}}}"#),
        "expected ack {req_id}, got {reply}"
    );
    Ok(())
}

async fn join(ws: &mut Client, group: &str) -> Result<()> {
    request(
        ws,
        &format!(r#"{{"cmd":"add_group","group_id":"{group}"}}"#),
        1,
    )
    .await
}

/// `sender` sends `text` to `group`; each of `members` must receive it next.
async fn delivered(
    sender: &mut Client,
    members: &mut [&mut Client],
    group: &str,
    text: &str,
) -> Result<()> {
    sender
        .send(Message::text(format!(
            r#"{{"cmd":"send_to_group","group_id":"{group}","message":"{text}"}}"#
        )))
        .await?;
    for member in members {
        ensure!(recv_text(member).await? == text, "{text} not delivered");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_is_refused_with_503() -> Result<()> {
    let fx = start(GatewayConfig {
        max_connections: 2,
        ..one_worker()
    })
    .await?;
    let mut a = fx.connect_from(local(1)).await?;
    let mut b = fx.connect_from(local(2)).await?;
    join(&mut a, "g").await?;
    join(&mut b, "g").await?;

    for from in [local(1), local(3)] {
        match fx.try_connect(from, None).await? {
            Err((503, body)) => ensure!(body.contains("too many connections"), "{body}"),
            Err((status, body)) => bail!("expected 503, got {status}: {body}"),
            Ok(_) => bail!("a third connection was accepted"),
        }
    }
    let stats = fx.gateway.stats();
    assert_eq!(
        (stats.connections_refused, stats.connections_refused_per_ip),
        (2, 0)
    );
    // The connected clients did not notice.
    delivered(&mut a, &mut [&mut b], "g", "still here").await?;
    assert_eq!(recv_text(&mut a).await?, "still here");

    // A slot is free again once a connection ends.
    drop(a);
    fx.wait_stats(|s| s.client_sockets == 1).await?;
    let mut c = fx.connect_from(local(3)).await?;
    join(&mut c, "g").await?;
    delivered(&mut c, &mut [&mut b], "g", "welcome").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_per_ip_is_refused_for_that_address_only() -> Result<()> {
    let fx = start(GatewayConfig {
        max_connections_per_ip: 2,
        ..one_worker()
    })
    .await?;
    let mut first = fx.connect_from(local(2)).await?;
    let _second = fx.connect_from(local(2)).await?;
    match fx.try_connect(local(2), None).await? {
        Err((503, body)) => ensure!(body.contains("from your address"), "{body}"),
        Err((status, body)) => bail!("expected 503, got {status}: {body}"),
        Ok(_) => bail!("a third connection from 127.0.0.2 was accepted"),
    }
    // Another address is not affected.
    let mut other = fx.connect_from(local(3)).await?;
    join(&mut first, "g").await?;
    join(&mut other, "g").await?;
    delivered(&mut other, &mut [&mut first], "g", "hello").await?;

    let stats = fx.gateway.stats();
    assert_eq!(
        (stats.connections_refused, stats.connections_refused_per_ip),
        (0, 1)
    );
    assert_eq!((stats.client_sockets, stats.client_addresses), (3, 2));

    // When the connections end, so do the addresses' entries.
    drop((first, _second, other));
    fx.wait_stats(|s| s.client_sockets == 0 && s.client_addresses == 0)
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_drops_silent_and_partial_clients() -> Result<()> {
    const TIMEOUT: Duration = Duration::from_millis(300);
    let fx = start(GatewayConfig {
        handshake_timeout: TIMEOUT,
        // One connection per address: every failed handshake must give its slot back.
        max_connections_per_ip: 1,
        ..one_worker()
    })
    .await?;
    let from = local(4);
    let partial = b"GET / HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\n".as_slice();
    for (what, sent) in [("silent", &b""[..]), ("partial request", partial)] {
        let mut stream = fx.tcp_from(from).await?;
        let started = Instant::now();
        stream.write_all(sent).await?;
        let mut answer = Vec::new();
        let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut answer))
            .await
            .with_context(|| format!("{what}: still open after {WAIT:?}"))?;
        let elapsed = started.elapsed();
        ensure!(
            read.is_ok() || read.is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
            "{what}: not closed"
        );
        ensure!(answer.is_empty(), "{what}: got an answer: {answer:?}");
        ensure!(
            elapsed >= TIMEOUT - Duration::from_millis(20),
            "{what}: dropped after {elapsed:?}, before the timeout"
        );
        // Dropped, counted, and the address's slot is free again.
        fx.wait_stats(|s| s.client_sockets == 0).await?;
        let mut ws = fx
            .connect_from(from)
            .await
            .with_context(|| format!("after {what}"))?;
        join(&mut ws, "g").await?;
        drop(ws);
        fx.wait_stats(|s| s.client_sockets == 0).await?;
    }
    let stats = fx.wait_stats(|s| s.client_addresses == 0).await?;
    assert_eq!(stats.workers[0].handshake_failures, 2);
    assert_eq!(stats.connections_refused_per_ip, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_is_answered_then_closed_with_1008() -> Result<()> {
    // One frame per second after a burst of 5: the test's frames all fall in the burst's
    // second, so which ones are over the rate does not depend on timing.
    let fx = start(GatewayConfig {
        max_messages_per_second: 1,
        message_burst: 5,
        rate_limit_strikes: 2,
        ..one_worker()
    })
    .await?;
    let mut bystander = fx.connect_from(local(5)).await?;
    join(&mut bystander, "g").await?;
    let mut flooder = fx.connect_from(local(6)).await?;

    // Pings and pongs are free.
    for _ in 0..20 {
        flooder.send(Message::Ping("free".into())).await?;
    }
    // The burst: a join, three sends, a binary frame (which counts too).
    join(&mut flooder, "g").await?;
    for n in 0..3 {
        let text = format!("m{n}");
        request(
            &mut flooder,
            &format!(r#"{{"cmd":"send_to_group","group_id":"g","message":"{text}"}}"#),
            10 + n,
        )
        .await?;
        assert_eq!(recv_text(&mut flooder).await?, text);
        assert_eq!(recv_text(&mut bystander).await?, text);
    }
    flooder.send(Message::binary(vec![1, 2, 3])).await?;
    assert_eq!(
        recv_json(&mut flooder).await?["code"],
        "binary_not_supported"
    );

    // Over the rate: answered, not executed, without the req_id it was not read for.
    for _ in 0..2 {
        flooder
            .send(Message::text(
                r#"{"cmd":"send_to_group","group_id":"g","message":"over","req_id":99}"#,
            ))
            .await?;
        let reply = recv_json(&mut flooder).await?;
        assert_eq!(reply["code"], "rate_limited", "{reply}");
        assert!(reply.get("req_id").is_none(), "{reply}");
    }
    // One strike too many.
    flooder.send(Message::binary(vec![4])).await?;
    assert_eq!(expect_close(&mut flooder).await?, 1008);

    // The bystander got every message sent within the rate, nothing else, and is served.
    let mut sender = fx.connect_from(local(7)).await?;
    delivered(&mut sender, &mut [&mut bystander], "g", "after").await?;
    let stats = fx.wait_stats(|s| s.connections == 2).await?;
    let worker = &stats.workers[0];
    assert_eq!(worker.rate_limit_closes, 1);
    assert_eq!(worker.errors["rate_limited"], 2);
    assert_eq!(worker.sends, 4, "the rejected sends were not executed");
    assert_eq!(stats.memberships, 1, "the flooder left its group");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_outside_the_allowlist_get_403() -> Result<()> {
    let fx = start(GatewayConfig {
        allowed_origins: vec![
            "https://example.com".parse().map_err(anyhow::Error::msg)?,
            "http://127.0.0.1:9090"
                .parse()
                .map_err(anyhow::Error::msg)?,
        ],
        ..one_worker()
    })
    .await?;
    let mut allowed = Vec::new();
    for origin in [
        Some("https://example.com"),
        Some("HTTPS://EXAMPLE.COM"),
        Some("http://127.0.0.1:9090"),
        // Not a browser: no Origin header.
        None,
    ] {
        match fx.try_connect(local(1), origin).await? {
            Ok(ws) => allowed.push(ws),
            Err((status, body)) => bail!("{origin:?} refused with {status}: {body}"),
        }
    }
    for origin in [
        "https://evil.example",
        "http://example.com",
        "https://example.com:8443",
        "null",
    ] {
        match fx.try_connect(local(1), Some(origin)).await? {
            Err((403, _)) => {}
            Err((status, body)) => bail!("{origin}: expected 403, got {status}: {body}"),
            Ok(_) => bail!("{origin} was accepted"),
        }
    }
    let stats = fx.wait_stats(|s| s.client_sockets == 4).await?;
    assert_eq!(stats.workers[0].origin_rejections, 4);
    assert_eq!(stats.workers[0].handshake_failures, 4);
    assert_eq!(stats.connections, 4);
    for ws in &mut allowed {
        join(ws, "g").await?;
    }

    // Without an allowlist, every origin is accepted.
    let open = start(one_worker()).await?;
    ensure!(open
        .try_connect(local(1), Some("https://evil.example"))
        .await?
        .is_ok());
    Ok(())
}
