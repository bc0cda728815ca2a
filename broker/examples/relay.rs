//! Broker relay throughput: one publishing link, two subscribed links, 64-byte payloads.
//!
//! `cargo run --release -p broker --example relay -- [MESSAGES] [PAYLOAD_BYTES]`
//! Starts a broker in this process on 127.0.0.1:0, publishes MESSAGES (default 5,000,000) as
//! fast as the publisher's socket takes them, and reports publishes relayed per second, counted
//! until both subscribers have received every message. Subscribers read raw frames and only
//! count them (no decoding), so the figure is the broker's.

#![allow(clippy::print_stdout)] // A benchmark program: its report is its output.

use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use broker::{Broker, BrokerConfig};
use bytes::{Buf, BytesMut};
use futures_util::{SinkExt, StreamExt};
use protocol::codec::{encode_publish, subscribe_frames};
use protocol::{Frame, LinkCodec, DEFAULT_MAX_FRAME_SIZE};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

async fn link(addr: std::net::SocketAddr) -> Result<Framed<TcpStream, LinkCodec>> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut framed = Framed::new(stream, LinkCodec::default());
    framed.send(Frame::hello("relay-bench")).await?;
    match framed.next().await {
        Some(Ok(_hello)) => Ok(framed),
        other => bail!("no hello from the broker: {other:?}"),
    }
}

/// Counts Message frames by their length prefixes until `expected` arrived.
async fn count(mut stream: TcpStream, mut buf: BytesMut, expected: u64) -> Result<Instant> {
    let mut seen = 0u64;
    loop {
        while buf.len() >= 4 {
            let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
            if buf.len() < 4 + len {
                break;
            }
            buf.advance(4 + len);
            seen += 1;
        }
        if seen >= expected {
            return Ok(Instant::now());
        }
        buf.reserve(256 * 1024);
        if stream.read_buf(&mut buf).await? == 0 {
            bail!("broker closed a subscriber after {seen} messages");
        }
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<()> {
    let mut args = std::env::args().skip(1);
    let messages: u64 = args
        .next()
        .map(|a| a.parse())
        .transpose()?
        .unwrap_or(5_000_000);
    let payload_len: usize = args.next().map(|a| a.parse()).transpose()?.unwrap_or(64);

    let config = BrokerConfig {
        link_queue_frames: 1 << 20,
        ..BrokerConfig::default()
    };
    let broker = Broker::new(config)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let (broker, shutdown) = (broker.clone(), shutdown.clone());
        async move { broker.serve(listener, shutdown).await }
    });

    let mut subscribers = Vec::new();
    for _ in 0..2 {
        let mut sub = link(addr).await?;
        for frame in subscribe_frames([bytes::Bytes::from_static(b"g")], DEFAULT_MAX_FRAME_SIZE)? {
            sub.send(frame).await?;
        }
        subscribers.push(sub);
    }
    let mut publisher = link(addr).await?;
    // Subscriptions are applied in order with each link's frames; wait until both are in.
    let deadline = Instant::now() + Duration::from_secs(5);
    while broker.stats().subscriptions < 2 {
        if Instant::now() > deadline {
            bail!("subscriptions not applied");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    let payload = vec![b'x'; payload_len];
    let frame = encode_publish(b"g", &payload, false, DEFAULT_MAX_FRAME_SIZE)?;
    let counters: Vec<_> = subscribers
        .into_iter()
        .map(|sub| {
            let parts = sub.into_parts();
            tokio::spawn(count(parts.io, parts.read_buf, messages))
        })
        .collect();
    let start = Instant::now();
    let mut out = BufWriter::with_capacity(256 * 1024, publisher.get_mut());
    for _ in 0..messages {
        out.write_all(&frame).await?;
    }
    out.flush().await?;
    let mut last = start;
    for counter in counters {
        last = last.max(counter.await.context("subscriber task")??);
    }
    let elapsed = last - start;
    let stats = broker.stats();
    println!(
        "{messages} publishes of {payload_len} B relayed to 2 links in {:.3} s: {:.0} publishes/s, {:.0} deliveries/s (broker counted {} publishes, {} deliveries, {} slow-link disconnects)",
        elapsed.as_secs_f64(),
        messages as f64 / elapsed.as_secs_f64(),
        2.0 * messages as f64 / elapsed.as_secs_f64(),
        stats.publishes,
        stats.deliveries,
        stats.slow_link_disconnects,
    );
    shutdown.cancel();
    Ok(())
}
