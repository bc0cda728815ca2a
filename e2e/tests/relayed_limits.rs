//! What arrives from the bus is held to the gateway's own limits (issue: "relayed messages skip
//! the size limit"): a message over `--max-message-size` published straight on the broker link
//! (any local process can, on a broker without a secret; so can a peer gateway with a larger
//! limit) reaches no member and is counted; smaller ones still flow.

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use e2e::{expect_quiet, stat, Broker, Gateway, GatewayConfig, RECV_TIMEOUT};
use futures_util::{SinkExt, StreamExt};
use protocol::link::{Body, Publish};
use protocol::{Frame, LinkCodec};
use tokio::net::TcpStream;
use tokio_util::codec::Framed;

/// A raw link client: hello exchanged, nothing subscribed.
async fn raw_link(broker: &Broker) -> Result<Framed<TcpStream, LinkCodec>> {
    let stream = TcpStream::connect(broker.addr).await?;
    let mut link = Framed::new(stream, LinkCodec::new(16 * 1024 * 1024));
    link.send(Frame::hello("intruder")).await?;
    let hello = tokio::time::timeout(RECV_TIMEOUT, link.next())
        .await
        .context("no hello from the broker")?
        .context("the broker closed the link")??;
    ensure!(matches!(hello.body, Some(Body::Hello(_))), "{hello:?}");
    Ok(link)
}

fn publish(group: &str, payload: Bytes) -> Frame {
    Frame::new(Body::Publish(Publish {
        channel: Bytes::copy_from_slice(group.as_bytes()),
        payload,
        no_echo: false,
        history: None,
        id: 0,
        origin: 0,
    }))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relayed_message_over_the_gateway_limit_reaches_no_member() -> Result<()> {
    let broker = Broker::start("broker").await?;
    let gateway = Gateway::start(
        GatewayConfig::with_broker("gateway", broker.addr)
            .workers(2)
            .arg("--max-message-size")
            .arg("65536"),
    )
    .await?;
    let mut member = gateway.connect("member").await?;
    member.join("big").await?;
    gateway.wait_for_subscriptions(1).await?;

    let mut link = raw_link(&broker).await?;
    let huge = Bytes::from(vec![b'x'; 9 * 1024 * 1024]);
    link.send(publish("big", huge)).await?;
    let at_limit = Bytes::from(vec![b'y'; 65536]);
    link.send(publish("big", at_limit.clone())).await?;
    link.send(publish("big", Bytes::from_static(b"after")))
        .await?;

    let text = member.recv_text(RECV_TIMEOUT).await?;
    ensure!(
        text.len() == 65536 && text.bytes().all(|b| b == b'y'),
        "the message at the limit arrives first ({} bytes)",
        text.len()
    );
    member.expect_text("after").await?;
    let stats = gateway.admin.stats().await?;
    ensure!(
        stat(&stats, "/bus/messages_too_large") == Some(1),
        "{stats:#}"
    );
    let (_, metrics) = gateway.admin.get("/metrics").await?;
    ensure!(
        metrics
            .lines()
            .any(|l| l == "gateway_bus_messages_too_large_total 1"),
        "{metrics}"
    );
    expect_quiet([&mut member]).await
}
