//! A link whose TCP connection is reset, as when a gateway's process dies with bytes still
//! unread (the kernel then answers with RST instead of FIN): the peer is gone, it sent nothing
//! malformed. The broker drops the link and its subscriptions without counting a bad frame.

use std::time::Duration;

use broker::{Broker, BrokerConfig, StatsSnapshot};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use protocol::link::{Body, Ping, Subscribe};
use protocol::{Frame, LinkCodec};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{timeout, Instant};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(3);

async fn wait_for_stats(broker: &Broker, what: &str, done: impl Fn(&StatsSnapshot) -> bool) {
    let deadline = Instant::now() + WAIT;
    loop {
        let stats = broker.stats();
        if done(&stats) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}; stats: {stats:?}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn next_frame(framed: &mut Framed<TcpStream, LinkCodec>) -> Frame {
    timeout(WAIT, framed.next())
        .await
        .expect("a frame in time")
        .expect("the link is open")
        .expect("a valid frame")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_link_is_dropped_without_counting_a_bad_frame() {
    let broker = Broker::new(BrokerConfig::default()).expect("default config is valid");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("listener address");
    let shutdown = CancellationToken::new();
    let _drop_guard = shutdown.clone().drop_guard();
    tokio::spawn({
        let broker = broker.clone();
        async move { broker.serve(listener, shutdown).await }
    });

    let stream = TcpStream::connect(addr).await.expect("connect");
    let mut link = Framed::new(stream, LinkCodec::default());
    assert!(matches!(
        next_frame(&mut link).await.body,
        Some(Body::Hello(_))
    ));
    for frame in [
        Frame::hello("doomed"),
        Frame::new(Body::Subscribe(Subscribe {
            channels: vec![Bytes::from_static(b"room")],
        })),
        Frame::new(Body::Ping(Ping { nonce: 1 })),
    ] {
        timeout(WAIT, link.send(frame))
            .await
            .expect("send in time")
            .expect("send");
    }
    // The pong comes after the subscription was applied.
    assert!(matches!(
        next_frame(&mut link).await.body,
        Some(Body::Pong(_))
    ));
    wait_for_stats(&broker, "the subscription", |s| {
        s.links == 1 && s.subscriptions == 1
    })
    .await;

    // Linger 0: closing sends RST, not FIN.
    socket2::SockRef::from(link.get_ref())
        .set_linger(Some(Duration::ZERO))
        .expect("set SO_LINGER");
    drop(link);
    wait_for_stats(&broker, "the reset link to go", |s| {
        s.links == 0 && s.channels == 0 && s.subscriptions == 0
    })
    .await;
    let stats = broker.stats();
    assert_eq!(
        stats.bad_frames, 0,
        "a reset is not a protocol fault: {stats:?}"
    );
}
