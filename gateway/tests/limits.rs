//! Limits on what clients may take, each with its documented answer: connections per process
//! and per client address (HTTP 503), frames per second (`rate_limited`, then close 1008), the
//! handshake timeout, and the Origin allowlist (HTTP 403). Clients that stay within them are not
//! affected.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use gateway::GatewayConfig;
use test_support::gateway::{workers, TestGateway};
use test_support::net::{self, loopback as local, SocketOptions};
use test_support::ws::{add_group, send_to_group, Client, Refused};
use test_support::RECV_TIMEOUT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = RECV_TIMEOUT;

/// `sender` sends `text` to `group`; each of `members` must receive it next.
async fn delivered(
    sender: &mut Client,
    members: &mut [&mut Client],
    group: &str,
    text: &str,
) -> Result<()> {
    sender.publish(group, text).await?;
    for member in members {
        ensure!(
            member.recv_text(WAIT).await? == text,
            "{text} not delivered"
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_is_refused_with_503() -> Result<()> {
    let fx = TestGateway::embedded(GatewayConfig {
        max_connections: 2,
        ..workers(1)
    })
    .await?;
    let mut a = fx.client("a").from(local(1)).connect().await?;
    let mut b = fx.client("b").from(local(2)).connect().await?;
    a.ack(add_group("g")).await?;
    b.ack(add_group("g")).await?;

    for from in [local(1), local(3)] {
        match fx.client("third").from(from).try_connect().await? {
            Err(Refused { status: 503, body }) => {
                ensure!(body.contains("too many connections"), "{body}")
            }
            Err(Refused { status, body }) => bail!("expected 503, got {status}: {body}"),
            Ok(_) => bail!("a third connection was accepted"),
        }
    }
    let stats = fx.stats();
    assert_eq!(
        (stats.connections_refused, stats.connections_refused_per_ip),
        (2, 0)
    );
    // The connected clients did not notice.
    delivered(&mut a, &mut [&mut b], "g", "still here").await?;
    assert_eq!(a.recv_text(WAIT).await?, "still here");

    // A slot is free again once a connection ends.
    drop(a);
    fx.wait_stats("one socket", |s| s.client_sockets == 1)
        .await?;
    let mut c = fx.client("c").from(local(3)).connect().await?;
    c.ack(add_group("g")).await?;
    delivered(&mut c, &mut [&mut b], "g", "welcome").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_max_connections_per_ip_is_refused_for_that_address_only() -> Result<()> {
    let fx = TestGateway::embedded(GatewayConfig {
        max_connections_per_ip: 2,
        ..workers(1)
    })
    .await?;
    let mut first = fx.client("first").from(local(2)).connect().await?;
    let _second = fx.client("second").from(local(2)).connect().await?;
    match fx.client("third").from(local(2)).try_connect().await? {
        Err(Refused { status: 503, body }) => {
            ensure!(body.contains("from your address"), "{body}")
        }
        Err(Refused { status, body }) => bail!("expected 503, got {status}: {body}"),
        Ok(_) => bail!("a third connection from 127.0.0.2 was accepted"),
    }
    // Another address is not affected.
    let mut other = fx.client("other").from(local(3)).connect().await?;
    first.ack(add_group("g")).await?;
    other.ack(add_group("g")).await?;
    delivered(&mut other, &mut [&mut first], "g", "hello").await?;

    let stats = fx.stats();
    assert_eq!(
        (stats.connections_refused, stats.connections_refused_per_ip),
        (0, 1)
    );
    assert_eq!((stats.client_sockets, stats.client_addresses), (3, 2));

    // When the connections end, so do the addresses' entries.
    drop((first, _second, other));
    fx.wait_stats("no socket, no address", |s| {
        s.client_sockets == 0 && s.client_addresses == 0
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_timeout_drops_silent_and_partial_clients() -> Result<()> {
    const TIMEOUT: Duration = Duration::from_millis(300);
    let fx = TestGateway::embedded(GatewayConfig {
        handshake_timeout: TIMEOUT,
        // One connection per address: every failed handshake must give its slot back.
        max_connections_per_ip: 1,
        ..workers(1)
    })
    .await?;
    let from = local(4);
    let partial = b"GET / HTTP/1.1\r\nHost: gateway\r\nUpgrade: websocket\r\n".as_slice();
    for (what, sent) in [("silent", &b""[..]), ("partial request", partial)] {
        let options = SocketOptions {
            from: Some(from),
            ..SocketOptions::default()
        };
        let mut stream = net::connect(fx.addr, options).await?;
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
        fx.wait_stats("no socket", |s| s.client_sockets == 0)
            .await?;
        let mut ws = fx
            .client(what)
            .from(from)
            .connect()
            .await
            .with_context(|| format!("after {what}"))?;
        ws.ack(add_group("g")).await?;
        drop(ws);
        fx.wait_stats("no socket", |s| s.client_sockets == 0)
            .await?;
    }
    let stats = fx
        .wait_stats("no address", |s| s.client_addresses == 0)
        .await?;
    assert_eq!(stats.workers[0].handshake_failures, 2);
    assert_eq!(stats.connections_refused_per_ip, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_is_answered_then_closed_with_1008() -> Result<()> {
    // One frame per second after a burst of 5: the test's frames all fall in the burst's
    // second, so which ones are over the rate does not depend on timing.
    let fx = TestGateway::embedded(GatewayConfig {
        max_messages_per_second: 1,
        message_burst: 5,
        rate_limit_strikes: 2,
        ..workers(1)
    })
    .await?;
    let mut bystander = fx.client("bystander").from(local(5)).connect().await?;
    bystander.ack(add_group("g")).await?;
    let mut flooder = fx.client("flooder").from(local(6)).connect().await?;

    // Pings and pongs are free.
    for _ in 0..20 {
        flooder.send_message(Message::Ping("free".into())).await?;
    }
    // The burst: a join, three sends, a binary frame (which counts too).
    flooder.ack(add_group("g")).await?;
    for n in 0..3 {
        let text = format!("m{n}");
        flooder.ack(send_to_group("g", text.as_str())).await?;
        assert_eq!(flooder.recv_text(WAIT).await?, text);
        assert_eq!(bystander.recv_text(WAIT).await?, text);
    }
    flooder.send_binary(vec![1, 2, 3]).await?;
    assert_eq!(
        flooder.recv_json(WAIT).await?["code"],
        "binary_not_supported"
    );

    // Over the rate: answered, not executed, without the req_id it was not read for.
    for _ in 0..2 {
        flooder
            .send_text(r#"{"cmd":"send_to_group","group_id":"g","message":"over","req_id":99}"#)
            .await?;
        let reply = flooder.recv_json(WAIT).await?;
        assert_eq!(reply["code"], "rate_limited", "{reply}");
        assert!(reply.get("req_id").is_none(), "{reply}");
    }
    // One strike too many.
    flooder.send_binary(vec![4]).await?;
    assert_eq!(flooder.expect_close(WAIT).await?, 1008);

    // The bystander got every message sent within the rate, nothing else, and is served.
    let mut sender = fx.client("sender").from(local(7)).connect().await?;
    delivered(&mut sender, &mut [&mut bystander], "g", "after").await?;
    let stats = fx
        .wait_stats("two connections", |s| s.connections == 2)
        .await?;
    let worker = &stats.workers[0];
    assert_eq!(worker.rate_limit_closes, 1);
    assert_eq!(worker.errors["rate_limited"], 2);
    assert_eq!(worker.sends, 4, "the rejected sends were not executed");
    assert_eq!(stats.memberships, 1, "the flooder left its group");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn origins_outside_the_allowlist_get_403() -> Result<()> {
    let fx = TestGateway::embedded(GatewayConfig {
        allowed_origins: vec![
            "https://example.com".parse().map_err(anyhow::Error::msg)?,
            "http://127.0.0.1:9090"
                .parse()
                .map_err(anyhow::Error::msg)?,
        ],
        ..workers(1)
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
        let mut client = fx.client(format!("{origin:?}")).from(local(1));
        if let Some(origin) = origin {
            client = client.origin(origin);
        }
        match client.try_connect().await? {
            Ok(ws) => allowed.push(ws),
            Err(Refused { status, body }) => bail!("{origin:?} refused with {status}: {body}"),
        }
    }
    for origin in [
        "https://evil.example",
        "http://example.com",
        "https://example.com:8443",
        "null",
    ] {
        match fx
            .client(origin)
            .from(local(1))
            .origin(origin)
            .try_connect()
            .await?
        {
            Err(Refused { status: 403, .. }) => {}
            Err(Refused { status, body }) => bail!("{origin}: expected 403, got {status}: {body}"),
            Ok(_) => bail!("{origin} was accepted"),
        }
    }
    // A refused client may see its 403 before the worker has counted it: wait for the counts.
    let stats = fx
        .wait_stats("four sockets and four refusals counted", |s| {
            s.client_sockets == 4
                && s.workers[0].origin_rejections >= 4
                && s.workers[0].handshake_failures >= 4
        })
        .await?;
    assert_eq!(stats.workers[0].origin_rejections, 4);
    assert_eq!(stats.workers[0].handshake_failures, 4);
    assert_eq!(stats.connections, 4);
    for ws in &mut allowed {
        ws.ack(add_group("g")).await?;
    }

    // Without an allowlist, every origin is accepted.
    let open = TestGateway::embedded(workers(1)).await?;
    ensure!(open
        .client("evil")
        .from(local(1))
        .origin("https://evil.example")
        .try_connect()
        .await?
        .is_ok());
    Ok(())
}
