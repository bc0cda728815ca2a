//! The gateway library with an in-process broker, driven by real WebSocket clients.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use gateway::GatewayConfig;
use test_support::frame::fragments;
use test_support::gateway::{workers, TestGateway};
use test_support::ws::{add_group, expect_quiet, Event};
use test_support::RawFrame;
use test_support::RECV_TIMEOUT;
use tokio_tungstenite::tungstenite::Message;

const WAIT: Duration = RECV_TIMEOUT;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_and_cleanup() -> Result<()> {
    let mut fx = TestGateway::embedded(workers(2)).await?;
    let mut ws = fx.connect("seed").await?;
    ws.send_text(r#"{"cmd":"add_group", "group_id":"123"}"#)
        .await?;
    ws.send_text(r#"{"cmd":"send_to_group", "group_id":"123", "message":"C'est le message"}"#)
        .await?;
    assert_eq!(ws.recv_text(WAIT).await?, "C'est le message");
    // Nothing else came first or in between: the next thing is the ack of a barrier request.
    ws.send_text(r#"{"cmd":"leave_group","group_id":123,"req_id":"b"}"#)
        .await?;
    assert_eq!(ws.recv_text(WAIT).await?, r#"{"cmd":"ack","req_id":"b"}"#);
    ws.ack(add_group("123")).await?;
    fx.wait_stats("one group, member and subscription", |s| {
        s.groups == 1 && s.memberships == 1 && s.bus.subscriptions == 1
    })
    .await?;
    ws.close().await?;
    let stats = fx
        .wait_stats("nothing left", |s| {
            s.connections == 0 && s.groups == 0 && s.memberships == 0 && s.bus.subscriptions == 0
        })
        .await?;
    assert!(stats.workers.iter().all(|w| w.groups == 0));
    fx.wait_stats("nothing left on the broker", |s| {
        s.embedded_broker
            .is_some_and(|b| b.subscriptions == 0 && b.channels == 0)
    })
    .await?;
    fx.shutdown.cancel();
    fx.stopped().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_workers_exactly_once() -> Result<()> {
    let fx = TestGateway::embedded(workers(3)).await?;
    let mut members = Vec::new();
    for i in 0..6 {
        let mut ws = fx.connect(format!("member-{i}")).await?;
        ws.ack(add_group("g")).await?;
        members.push(ws);
    }
    let mut outsider = fx.connect("outsider").await?;
    outsider.ack(add_group("other")).await?;
    let stats = fx
        .wait_stats("7 connections", |s| s.connections == 7)
        .await?;
    assert!(
        stats.workers.iter().all(|w| w.connections >= 2),
        "{stats:#?}"
    );
    for n in 0..20 {
        members[n % 6].publish("g", &format!("m{n}")).await?;
        for ws in members.iter_mut() {
            assert_eq!(ws.recv_text(WAIT).await?, format!("m{n}"));
        }
    }
    outsider.publish("other", "only me").await?;
    assert_eq!(outsider.recv_text(WAIT).await?, "only me");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_keep_the_connection_open() -> Result<()> {
    let fx = TestGateway::embedded(workers(1)).await?;
    let mut ws = fx.connect("client").await?;
    for (input, code) in [
        ("nope", "invalid_json"),
        ("[1]", "not_an_object"),
        (r#"{"cmd":"add_group"}"#, "missing_field"),
        (r#"{"cmd":"jump","group_id":1}"#, "unknown_cmd"),
        (r#"{"cmd":"add_group","group_id":[1]}"#, "invalid_group_id"),
    ] {
        ws.send_text(input).await?;
        let reply = ws.recv_json(WAIT).await?;
        assert_eq!(reply["cmd"], "error", "{input}");
        assert_eq!(reply["code"], code, "{input}");
    }
    ws.send_binary(vec![1, 2, 3]).await?;
    let reply = ws.recv_json(WAIT).await?;
    assert_eq!(reply["code"], "binary_not_supported");
    ws.ack(add_group("still-open")).await?;
    let stats = fx.stats();
    assert_eq!(stats.workers[0].errors["invalid_json"], 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limits_close_with_documented_codes() -> Result<()> {
    let fx = TestGateway::embedded(GatewayConfig {
        workers: Some(1),
        max_message_size: 1024,
        max_groups_per_connection: 2,
        ..GatewayConfig::default()
    })
    .await?;
    let mut ws = fx.connect("client").await?;
    ws.ack(add_group("a")).await?;
    ws.ack(add_group("b")).await?;
    ws.send_text(r#"{"cmd":"add_group","group_id":"c","req_id":3}"#)
        .await?;
    let reply = ws.recv_json(WAIT).await?;
    assert_eq!(reply["code"], "too_many_groups");
    assert_eq!(reply["req_id"], 3);

    let mut bystander = fx.connect("bystander").await?;
    bystander.ack(add_group("a")).await?;
    ws.send_text("x".repeat(2000)).await?;
    assert_eq!(ws.expect_close(WAIT).await?, 1009);
    fx.wait_stats("the bystander alone", |s| {
        s.connections == 1 && s.memberships == 1
    })
    .await?;
    bystander.publish("a", "fine").await?;
    assert_eq!(bystander.recv_text(WAIT).await?, "fine");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_client_is_closed_and_pinged_client_is_not() -> Result<()> {
    let fx = TestGateway::embedded(GatewayConfig {
        workers: Some(1),
        ping_interval: Duration::from_millis(100),
        idle_timeout: Duration::from_millis(400),
        ..GatewayConfig::default()
    })
    .await?;
    // tokio-tungstenite answers pings while it is polled: a client that keeps reading stays alive.
    let mut alive = fx.connect("alive").await?;
    alive.ack(add_group("g")).await?;
    let (mut alive_tx, mut alive_rx) = alive.into_inner()?.split();
    let (texts_tx, mut texts) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        let mut pings = 0;
        while let Some(Ok(msg)) = alive_rx.next().await {
            match msg {
                Message::Ping(_) => pings += 1,
                Message::Text(t) => {
                    let _ = texts_tx.send(t.as_str().to_owned());
                }
                _ => break,
            }
        }
        pings
    });
    assert_eq!(fx.stats().workers[0].idle_closes, 0);
    // A client that stops reading cannot answer pings: after the idle timeout it is closed
    // with 4000. (Not reading is the subject of this test, hence the deliberate pause.)
    let mut silent = fx.connect("silent").await?;
    silent.ack(add_group("g")).await?;
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(silent.expect_close(WAIT).await?, 4000);
    let stats = fx
        .wait_stats("one connection", |s| s.connections == 1)
        .await?;
    assert_eq!(stats.workers[0].idle_closes, 1);
    // The reading client survived all along.
    alive_tx
        .send(Message::text(
            r#"{"cmd":"send_to_group","group_id":"g","message":"still here"}"#,
        ))
        .await?;
    let got = tokio::time::timeout(WAIT, texts.recv()).await?;
    assert_eq!(got.as_deref(), Some("still here"));
    alive_tx.close().await?;
    let pings = tokio::time::timeout(WAIT, reader).await??;
    assert!(pings >= 5, "the server pinged every 100 ms, saw {pings}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_closed_and_others_get_everything() -> Result<()> {
    let fx = TestGateway::embedded(GatewayConfig {
        workers: Some(2),
        outbound_queue_messages: 256,
        outbound_queue_bytes: 256 * 1024,
        // The sender floods on purpose.
        max_messages_per_second: 0,
        ..GatewayConfig::default()
    })
    .await?;
    let mut slow = fx.connect("slow").await?;
    slow.ack(add_group("g")).await?;
    let mut fast = fx.connect("fast").await?;
    fast.ack(add_group("g")).await?;
    const N: usize = 20_000;
    let reader = tokio::spawn(async move {
        let mut got = 0;
        while got < N {
            match fast.recv_text(WAIT).await {
                Ok(text) if text.starts_with(&format!("{got:06}")) => got += 1,
                Ok(text) => {
                    return Err(anyhow::anyhow!(
                        "out of order: expected {got}, got {}",
                        &text[..6]
                    ))
                }
                Err(e) => return Err(e.context(format!("after {got} messages"))),
            }
        }
        Ok((got, fast))
    });
    let mut sender = fx.connect("sender").await?;
    let filler = "x".repeat(1000);
    for i in 0..N {
        sender.publish("g", &format!("{i:06}{filler}")).await?;
    }
    let (got, _fast) = tokio::time::timeout(Duration::from_secs(30), reader).await???;
    assert_eq!(got, N);
    let stats = fx
        .wait_stats("one slow consumer closed", |s| {
            s.workers
                .iter()
                .map(|w| w.slow_consumer_closes)
                .sum::<u64>()
                == 1
                && s.connections == 2
        })
        .await?;
    assert!(stats.workers.iter().map(|w| w.queue_drops).sum::<u64>() > 0);
    assert_eq!(stats.memberships, 1, "the slow consumer left its group");
    drop(slow);
    Ok(())
}

/// A member that stops reading while 24 MB arrive (more than the socket buffers hold, less than
/// its outbound queue) and then reads again gets every message whole and in order: frames
/// written in part, straight from the fan-out or by the connection, are finished before the next
/// one, whatever their sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_pauses_gets_every_frame_whole_and_in_order() -> Result<()> {
    let fx = TestGateway::embedded(GatewayConfig {
        workers: Some(2),
        outbound_queue_messages: 10_000,
        outbound_queue_bytes: 64 << 20,
        max_messages_per_second: 0,
        ..GatewayConfig::default()
    })
    .await?;
    let mut paused = fx.connect("paused").await?;
    paused.ack(add_group("g")).await?;
    let mut reading = fx.connect("reading").await?;
    reading.ack(add_group("g")).await?;
    const N: usize = 800;
    // Sizes from 100 bytes to 60 kB, in no order: the socket fills at any point of a frame.
    let message = |i: usize| format!("{i:06}{}", "y".repeat(100 + (i * 7919) % 60_000));
    let mut sender = fx.connect("sender").await?;
    for i in 0..N {
        sender.publish("g", &message(i)).await?;
    }
    for i in 0..N {
        let text = reading.recv_text(WAIT).await.context(i)?;
        anyhow::ensure!(text == message(i), "reading member: message {i} differs");
    }
    // Everything is delivered to the paused member's socket or queue; it reads now.
    for i in 0..N {
        let text = paused.recv_text(WAIT).await.context(i)?;
        anyhow::ensure!(text == message(i), "paused member: message {i} differs");
    }
    test_support::expect_quiet([&mut paused, &mut reading]).await?;
    let stats = fx.stats();
    assert_eq!(stats.connections, 3, "{stats:#?}");
    assert!(
        stats
            .workers
            .iter()
            .all(|w| w.slow_consumer_closes == 0 && w.queue_drops == 0),
        "{stats:#?}"
    );
    Ok(())
}

/// A slow consumer closed while a frame is written in part reads the rest of that frame, then
/// the close frame (4001): the close never cuts into a message. The client stops reading while
/// large messages fill its socket and overflow its queue, and reads again once it is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_reads_whole_frames_then_its_close() -> Result<()> {
    let fx = TestGateway::embedded(GatewayConfig {
        workers: Some(1),
        outbound_queue_messages: 16,
        outbound_queue_bytes: 4 << 20,
        max_messages_per_second: 0,
        ..GatewayConfig::default()
    })
    .await?;
    let mut slow = fx.connect("slow").await?;
    slow.ack(add_group("g")).await?;
    let message = |i: usize| format!("{i:06}{}", "z".repeat(30_000 + (i * 7919) % 20_000));
    let mut sender = fx.connect("sender").await?;
    let mut sent = 0;
    while fx
        .stats()
        .workers
        .iter()
        .map(|w| w.slow_consumer_closes)
        .sum::<u64>()
        == 0
    {
        anyhow::ensure!(sent < 5_000, "no slow consumer close after {sent} messages");
        sender.publish("g", &message(sent)).await?;
        sent += 1;
        if sent % 16 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    // Reads within the server's closing time (1 s): every message that arrives is whole, the
    // first ones in order, then the close.
    let deadline = tokio::time::Instant::now() + WAIT;
    let mut got = 0;
    loop {
        match slow.next_event(deadline).await {
            Some(Event::Text(text)) => {
                anyhow::ensure!(text == message(got), "message {got} differs or is missing");
                got += 1;
            }
            Some(Event::Close(Some((code, _)))) => {
                assert_eq!(code, 4001);
                break;
            }
            other => bail!(
                "after {got} messages of {sent}: {}",
                other.map_or("nothing".into(), |e| e.to_string())
            ),
        }
    }
    assert!(got > 0 && got < sent, "{got} of {sent}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_clients_with_1001() -> Result<()> {
    let mut fx = TestGateway::embedded(workers(2)).await?;
    let mut a = fx.connect("a").await?;
    let mut b = fx.connect("b").await?;
    a.ack(add_group("g")).await?;
    b.ack(add_group("g")).await?;
    fx.shutdown.cancel();
    for ws in [&mut a, &mut b] {
        assert_eq!(ws.expect_close(WAIT).await?, 1001);
    }
    fx.stopped().await?;
    Ok(())
}

/// Shutdown delivers what is queued before it closes: a member that reads slowly but steadily,
/// with 10,000 messages (10 MB, more than socket buffers hold) published to it just before the
/// shutdown, receives every one in order and then 1001, although the flush takes longer than
/// the write timeout. A connection attempted once the shutdown began fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_flushes_queued_messages_before_1001() -> Result<()> {
    const N: usize = 10_000;
    let mut fx = TestGateway::embedded(GatewayConfig {
        workers: Some(1),
        outbound_queue_messages: 2 * N,
        outbound_queue_bytes: 64 * 1024 * 1024,
        // Bounds each step of a write, not the whole flush.
        write_timeout: Duration::from_millis(500),
        shutdown_timeout: Duration::from_secs(30),
        ..GatewayConfig::default()
    })
    .await?;
    let mut member = fx.connect("member").await?;
    member.ack(add_group("g")).await?;
    let reader = tokio::spawn(async move {
        let mut got = 0;
        loop {
            let event = member
                .recv(WAIT)
                .await
                .with_context(|| format!("after {got} messages"))?;
            match event {
                Event::Text(text) if text.starts_with(&format!("{got:05}")) => got += 1,
                Event::Close(Some((code, _))) => return Ok((got, code)),
                other => bail!("expected message {got} or a close frame, got {other}"),
            }
            // Slowly but steadily: about 1 s for everything.
            if got % 100 == 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    });
    let group = protocol::GroupName::parse("g", 256)?;
    let filler = "x".repeat(1000);
    for i in 0..N {
        let payload = format!("{i:05}{filler}");
        fx.gateway.publish(&group, payload.into()).await;
    }
    fx.shutdown.cancel();

    let late = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(fx.url()))
        .await
        .context("a connection attempted during shutdown hung")?;
    assert!(late.is_err(), "a connection was accepted during shutdown");

    let (got, code) = tokio::time::timeout(Duration::from_secs(30), reader).await???;
    assert_eq!((got, code), (N, 1001));
    fx.stopped().await?;
    let stats = fx.stats();
    assert_eq!(stats.workers[0].slow_consumer_closes, 0);
    assert_eq!(stats.client_sockets, 0);
    Ok(())
}

/// Issue 5, section 3: with 1% of the members not reading during a fan-out, every other member
/// receives every message, the slow one is closed as a slow consumer (4001, counted) once its
/// bounded queue overflows, and the gateway's memory stays bounded by that queue.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_percent_slow_consumers_do_not_hurt_the_others() -> Result<()> {
    const MEMBERS: usize = 100;
    const MESSAGES: usize = 3000;
    let fx = TestGateway::embedded(GatewayConfig {
        workers: Some(2),
        outbound_queue_messages: 128,
        outbound_queue_bytes: 128 * 1024,
        max_messages_per_second: 0,
        ..GatewayConfig::default()
    })
    .await?;
    // The slow member shrinks its receive window so that the kernel buffers little for it:
    // the gateway's queue, not the kernel, has to absorb what it does not read.
    let mut slow = fx.client("slow").recv_buffer(4096).connect().await?;
    slow.ack(add_group("g")).await?;
    let mut readers = Vec::new();
    for i in 1..MEMBERS {
        let mut ws = fx.connect(format!("member-{i}")).await?;
        ws.ack(add_group("g")).await?;
        readers.push(tokio::spawn(async move {
            for n in 0..MESSAGES {
                let text = ws
                    .recv_text(WAIT)
                    .await
                    .with_context(|| format!("message {n}"))?;
                if !text.starts_with(&format!("{n:06}")) {
                    bail!("member {i}: expected message {n}, got {}", &text[..6]);
                }
            }
            Ok::<_, anyhow::Error>(ws)
        }));
    }
    let mut sender = fx.connect("sender").await?;
    let filler = "x".repeat(1000);
    for n in 0..MESSAGES {
        sender.publish("g", &format!("{n:06}{filler}")).await?;
    }
    let mut kept = Vec::new();
    for reader in readers {
        kept.push(tokio::time::timeout(Duration::from_secs(60), reader).await???);
    }
    let stats = fx
        .wait_stats("one slow consumer closed", |s| {
            s.workers
                .iter()
                .map(|w| w.slow_consumer_closes)
                .sum::<u64>()
                == 1
                && s.connections == MEMBERS as u64
        })
        .await?;
    assert_eq!(
        stats.memberships,
        MEMBERS as u64 - 1,
        "only the slow member left"
    );
    assert!(stats.workers.iter().map(|w| w.queue_drops).sum::<u64>() > 0);
    drop(slow);
    Ok(())
}

/// Whether worker 0 holds `n` resting connections (no WebSocket stream, see `edge::wire`).
fn resting(n: u64) -> impl Fn(&gateway::stats::GatewaySnapshot) -> bool {
    move |s| s.workers[0].connections_resting == n
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resting_connection_loses_nothing_the_client_sends() -> Result<()> {
    let fx = TestGateway::embedded(workers(1)).await?;
    let mut ws = fx.connect("rester").await?;
    ws.ack(add_group("g")).await?;
    fx.wait_stats("the connection rests", resting(1)).await?;

    // A frame in two parts: the connection wakes for the first and stays awake until it has
    // the whole frame (resting would drop the part its library holds).
    let send = |text: &str| {
        RawFrame::text(format!(
            r#"{{"cmd":"send_to_group","group_id":"g","message":"{text}"}}"#
        ))
    };
    let frame = send("split").encode();
    ws.send_raw(&frame[..9]).await?;
    fx.wait_stats("it woke to read the first part", resting(0))
        .await?;
    ws.send_raw(&frame[9..]).await?;
    assert_eq!(ws.recv_text(WAIT).await?, "split");
    fx.wait_stats("it rests again", resting(1)).await?;

    // A message in fragments: no rest while it is open.
    let fragments = fragments(
        br#"{"cmd":"send_to_group","group_id":"g","message":"fragmented"}"#,
        20,
    );
    ws.send_frames(&fragments[..1]).await?;
    fx.wait_stats("it woke to read the first fragment", resting(0))
        .await?;
    ws.send_frames(&fragments[1..]).await?;
    assert_eq!(ws.recv_text(WAIT).await?, "fragmented");
    fx.wait_stats("it rests again", resting(1)).await?;

    // A ping: the library writes the pong at its next read, then holds nothing.
    ws.ping(b"are you there").await?;
    fx.wait_stats("it rests once the pong is written", resting(1))
        .await?;

    // Messages to it are written while it rests.
    let mut sender = fx.connect("sender").await?;
    for n in 0..3 {
        sender
            .publish("g", &format!("to a resting member {n}"))
            .await?;
        assert_eq!(
            ws.recv_text(WAIT).await?,
            format!("to a resting member {n}")
        );
    }
    ws.send_frames(&[send("after")]).await?;
    assert_eq!(ws.recv_text(WAIT).await?, "after");
    expect_quiet([&mut ws, &mut sender]).await?;
    ws.close().await?;
    fx.wait_stats("a closed connection is not counted", |s| {
        // The sender rests: it has nothing pending.
        s.connections == 1 && s.workers[0].connections_resting == 1
    })
    .await?;
    Ok(())
}
