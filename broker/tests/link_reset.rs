//! A link whose TCP connection is reset, as when a gateway's process dies with bytes still
//! unread (the kernel then answers with RST instead of FIN): the peer is gone, it sent nothing
//! malformed. The broker drops the link and its subscriptions without counting a bad frame.

use std::time::Duration;

use broker::BrokerConfig;
use protocol::link::Body;
use protocol::Frame;
use test_support::broker::{ping, subscribe, Link, TestBroker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_link_is_dropped_without_counting_a_bad_frame() {
    let broker = TestBroker::start(link_only()).await;

    let mut link = Link::connect_raw(broker.addr).await;
    link.expect_hello().await;
    for frame in [Frame::hello("doomed"), subscribe(&["room"]), ping(1)] {
        link.send(frame).await;
    }
    // The pong comes after the subscription was applied.
    assert!(matches!(
        link.expect_frame().await.body,
        Some(Body::Pong(_))
    ));
    broker
        .wait_for_stats("the subscription", |s| s.links == 1 && s.subscriptions == 1)
        .await;

    // Linger 0: closing sends RST, not FIN.
    socket2::SockRef::from(link.framed.get_ref())
        .set_linger(Some(Duration::ZERO))
        .expect("set SO_LINGER");
    drop(link);
    broker
        .wait_for_stats("the reset link to go", |s| {
            s.links == 0 && s.channels == 0 && s.subscriptions == 0
        })
        .await;
    let stats = broker.stats();
    assert_eq!(
        stats.bad_frames, 0,
        "a reset is not a protocol fault: {stats:?}"
    );
}

/// The broker link on a port of its own (`--php-channel off`): the broker says hello first.
/// PHP Channel clients on the shared port are tested in e2e/tests/php_channel.rs.
fn link_only() -> BrokerConfig {
    let mut config = BrokerConfig::default();
    config.php.channel = broker::config::PhpListen::Off;
    config
}
