//! The gateway's queue of publishes to the broker is bounded in bytes (`--link-queue-bytes`),
//! not only in frames: a broker that completes the handshake and then stops reading must not
//! make the gateway hold more than the bound. Past it, publishes are dropped and counted in
//! `publishes_dropped`.

use std::time::Duration;

use anyhow::{Context, Result};
use gateway::{Gateway, GatewayConfig};
use protocol::GroupName;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);
const QUEUE_BYTES: usize = 1024 * 1024;
const MESSAGE: usize = 32 * 1024;
/// What the sockets between the gateway and the broker can absorb before writes block (kernel
/// buffers on both ends, and the link's write buffer), with room to spare.
const SOCKET_SLACK: usize = 16 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_stops_reading_holds_at_most_the_queue_bound() -> Result<()> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let config = GatewayConfig {
        workers: Some(1),
        link_queue_bytes: QUEUE_BYTES,
        // Long enough that the blocked link is not given up on during the test.
        link_timeout: Duration::from_secs(120),
        ..GatewayConfig::default()
    };
    let shutdown = CancellationToken::new();
    let gateway = Gateway::builder(config)
        .broker(addr.to_string())
        .start(shutdown.clone())?;
    // Its hello answered, the link is never read again (it stays open until dropped).
    let _link = test_support::broker::Link::accept(&listener).await;
    let ready = async {
        while !gateway.is_ready() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(WAIT, ready)
        .await
        .context("the link never came up")?;

    // Far more than the bound and every socket buffer together.
    let count = 4 * (QUEUE_BYTES + SOCKET_SLACK) / MESSAGE;
    let group = GroupName::parse("g", 256)?;
    let payload = "x".repeat(MESSAGE);
    for _ in 0..count {
        gateway.publish(&group, payload.clone().into()).await;
    }

    let link = gateway.stats().bus;
    assert_eq!(link.publishes, count as u64);
    assert!(
        link.publishes_dropped > 0,
        "nothing dropped after {count} publishes of {MESSAGE} bytes: {link:?}"
    );
    let held = (link.publishes - link.publishes_dropped) as usize * MESSAGE;
    assert!(
        held <= QUEUE_BYTES + SOCKET_SLACK,
        "{held} bytes of publishes taken for a broker that does not read: {link:?}"
    );
    assert!(link.up, "the link stays up: {link:?}");
    shutdown.cancel();
    Ok(())
}
