//! Holes in a history group's offsets (a message the carrier lost) are filled from the store
//! before the next message reaches positioned members, and what the store no longer has is
//! counted; duplicates are dropped. The broker here is scripted: it sends the positioned
//! messages it wants, with the holes it wants, and answers the gateway's history requests.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use gateway::{Gateway, GatewayConfig};
use protocol::history::{Epoch, Position, Positioned};
use protocol::link::{Body, HistoryReply, HistoryRequest, Message};
use protocol::{Frame, LinkCodec};
use serde_json::{json, Value};
use test_support::gateway::TestGateway;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;

const WAIT: Duration = Duration::from_secs(5);
const GROUP: &str = "chat:1";
const EPOCH: &str = "e1";

type Link = Framed<TcpStream, LinkCodec>;

/// The next frame from the gateway that is not a subscription change or a ping.
async fn next_request(link: &mut Link) -> Result<HistoryRequest> {
    loop {
        let frame = tokio::time::timeout(WAIT, link.next())
            .await
            .context("no history request from the gateway")?
            .context("link closed")??;
        match frame.body {
            Some(Body::HistoryRequest(request)) => return Ok(request),
            // Subscriptions, pings, and the cluster's own traffic (heartbeats, presence events).
            Some(
                Body::Subscribe(_)
                | Body::Unsubscribe(_)
                | Body::Ping(_)
                | Body::Pong(_)
                | Body::Publish(_),
            ) => {}
            other => bail!("unexpected frame from the gateway: {other:?}"),
        }
    }
}

fn position(offset: u64) -> Position {
    Position {
        offset,
        epoch: Epoch::new(EPOCH).expect("valid epoch"),
    }
}

async fn send_positioned(link: &mut Link, offset: u64) -> Result<()> {
    let payload = Positioned::encode(&position(offset), format!("m{offset}").as_bytes());
    link.send(Frame::new(Body::Message(Message {
        channel: Bytes::from_static(GROUP.as_bytes()),
        payload,
    })))
    .await?;
    Ok(())
}

/// Answers `request` with the messages of `offsets` (those it asks for), the top at `top`.
async fn answer(
    link: &mut Link,
    request: &HistoryRequest,
    offsets: &[u64],
    top: u64,
) -> Result<()> {
    let since = request.since.unwrap_or(0);
    let chosen: Vec<u64> = offsets
        .iter()
        .copied()
        .filter(|o| *o > since)
        .take(request.limit as usize)
        .collect();
    link.send(Frame::new(Body::HistoryReply(HistoryReply {
        id: request.id,
        epoch: EPOCH.into(),
        top,
        payloads: chosen
            .iter()
            .map(|o| Bytes::from(format!("m{o}")))
            .collect(),
        offsets: chosen,
        error: String::new(),
    })))
    .await?;
    Ok(())
}

fn offset_of(value: &Value) -> Result<u64> {
    ensure!(
        value["cmd"] == "message" && value["group_id"] == GROUP,
        "{value}"
    );
    let offset = value["offset"].as_u64().context("offset")?;
    ensure!(value["epoch"] == EPOCH, "{value}");
    ensure!(value["message"] == format!("m{offset}"), "{value}");
    Ok(offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn holes_are_repaired_from_the_store_and_what_it_lacks_is_counted() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = GatewayConfig {
        workers: Some(1),
        history: vec!["chat:=100,10m".parse().map_err(anyhow::Error::msg)?],
        ..GatewayConfig::default()
    };
    let gateway = TestGateway::start(Gateway::builder(config).broker(addr.to_string())).await?;
    // The broker's end: hello answered, the rest scripted below.
    let mut link = test_support::broker::Link::accept(&listener).await.framed;
    gateway.wait_ready().await?;

    let mut member = gateway.connect("positioned").await?;
    member
        .send_json(&json!({"cmd":"add_group","group_id":GROUP,"positioned":true}))
        .await?;
    let mut raw = gateway.connect("raw").await?;
    raw.join(GROUP).await?;
    // The join asks for the group's position.
    let request = next_request(&mut link).await?;
    ensure!(
        request.limit == 0 && request.options.is_some(),
        "{request:?}"
    );
    answer(&mut link, &request, &[], 0).await?;
    let joined = member.recv_json(WAIT).await?;
    ensure!(
        joined["cmd"] == "joined" && joined["offset"] == 0,
        "{joined}"
    );

    // 1, 2, then 4: the gateway asks for 3 before it delivers 4.
    for offset in [1, 2, 4] {
        send_positioned(&mut link, offset).await?;
    }
    let request = next_request(&mut link).await?;
    ensure!(
        request.since == Some(2) && request.limit == 1 && !request.remove,
        "{request:?}"
    );
    // Meanwhile 5 arrives: held behind the repair.
    send_positioned(&mut link, 5).await?;
    answer(&mut link, &request, &[1, 2, 3, 4, 5], 5).await?;
    let mut got = Vec::new();
    for _ in 0..5 {
        got.push(offset_of(&member.recv_json(WAIT).await?)?);
    }
    ensure!(got == [1, 2, 3, 4, 5], "{got:?}");

    // A duplicate of 5 is dropped; a hole the store cannot fill (7) is counted, then 8 comes.
    send_positioned(&mut link, 5).await?;
    send_positioned(&mut link, 8).await?;
    let request = next_request(&mut link).await?;
    ensure!(
        request.since == Some(5) && request.limit == 2,
        "{request:?}"
    );
    answer(&mut link, &request, &[6], 8).await?;
    let mut got = Vec::new();
    for _ in 0..2 {
        got.push(offset_of(&member.recv_json(WAIT).await?)?);
    }
    ensure!(got == [6, 8], "{got:?}");
    let stats = gateway
        .wait_stats("holes counted", |s| s.history.unrepaired == 1)
        .await?;
    ensure!(stats.history.holes == 2, "{:?}", stats.history);
    ensure!(stats.history.duplicates == 1, "{:?}", stats.history);

    // The raw member got what the carrier brought, as it came, nothing repaired.
    for expected in ["m1", "m2", "m4", "m5", "m5", "m8"] {
        raw.expect_text(expected).await?;
    }
    member.expect_silence(Duration::from_millis(200)).await?;
    raw.expect_silence(Duration::from_millis(200)).await?;
    Ok(())
}
