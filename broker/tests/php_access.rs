//! Who may be a PHP Channel client on the shared port (docs/php-channel.md, "Security"), and the
//! PHP idle timeout. PHP clients cannot authenticate: with a link secret, only loopback sources
//! or those `--php-allow` lists are served. Every test address is loopback, so the refusal of a
//! non-loopback source without `--php-allow` is tested as a unit (`php_peer_allowed`); here
//! `--php-allow 127.0.0.2` stands for the list that leaves 127.0.0.1 out.

use std::time::Duration;

use broker::auth::BrokerSecurity;
use broker::config::PhpConfig;
use broker::BrokerConfig;
use protocol::link_auth::LinkSecret;
use protocol::php::{encode_php_frame, serialize, PhpKey, PhpValue};
use test_support::broker::{Link, TestBroker};
use test_support::net::{self, loopback, SocketOptions};
use test_support::RECV_TIMEOUT as WAIT;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::timeout;

const PING: [u8; 4] = [0, 0, 0, 4];

fn with_secret() -> BrokerSecurity {
    BrokerSecurity {
        link_secret: Some(LinkSecret::new("link-secret-for-tests").expect("long enough")),
        tls: None,
    }
}

fn allowing(last: u8) -> BrokerConfig {
    BrokerConfig {
        php: PhpConfig {
            allow: vec![loopback(last)],
            ..PhpConfig::default()
        },
        ..BrokerConfig::default()
    }
}

async fn connect_from(broker: &TestBroker, last: u8) -> TcpStream {
    net::connect(
        broker.addr,
        SocketOptions {
            from: Some(loopback(last)),
            ..SocketOptions::default()
        },
    )
    .await
    .expect("connect to the broker")
}

/// A PHP command frame: `serialize(['type' => $kind, 'channels' => [$channel], ...])`.
fn command(kind: &str, channel: &str, data: Option<&str>) -> Vec<u8> {
    let mut fields = vec![
        (PhpKey::Str("type".into()), PhpValue::str(kind)),
        (
            PhpKey::Str("channels".into()),
            PhpValue::Array(vec![(PhpKey::Int(0), PhpValue::str(channel))]),
        ),
    ];
    if let Some(data) = data {
        fields.push((PhpKey::Str("data".into()), PhpValue::str(data)));
    }
    let mut body = Vec::new();
    serialize(&PhpValue::Array(fields), &mut body);
    encode_php_frame(&body).to_vec()
}

/// The connection ends (EOF or reset) with nothing read.
async fn expect_closed(stream: &mut TcpStream) {
    let mut buf = [0u8; 64];
    match timeout(WAIT, stream.read(&mut buf))
        .await
        .expect("the broker did not close the connection")
    {
        Ok(0) | Err(_) => {}
        Ok(n) => panic!("expected the connection to close, read {:?}", &buf[..n]),
    }
}

#[tokio::test]
async fn with_a_link_secret_a_php_client_outside_php_allow_is_refused() {
    let broker = TestBroker::with_security(allowing(2), with_secret()).await;
    let mut stranger = connect_from(&broker, 1).await;
    stranger
        .write_all(&command("publish", "send_to_group", Some("x")))
        .await
        .unwrap();
    expect_closed(&mut stranger).await;
    let stats = broker
        .wait_for_stats("1 refused PHP peer", |s| s.php_refused_peers == 1)
        .await;
    assert_eq!(stats.php_connections_total, 0);

    // The listed source is served: a subscriber gets another client's publish.
    let mut subscriber = connect_from(&broker, 2).await;
    subscriber
        .write_all(&command("subscribe", "news", None))
        .await
        .unwrap();
    broker
        .wait_for_stats("a PHP subscriber", |s| s.php_connections == 1)
        .await;
    let mut publisher = connect_from(&broker, 2).await;
    publisher
        .write_all(&command("publish", "news", Some("hello")))
        .await
        .unwrap();
    let mut buf = vec![0u8; 256];
    let n = timeout(WAIT, subscriber.read(&mut buf))
        .await
        .expect("no event")
        .unwrap();
    let event = String::from_utf8_lossy(&buf[..n]);
    assert!(
        event.contains("s:5:\"event\"") && event.contains("s:5:\"hello\""),
        "{event}"
    );
    assert_eq!(broker.stats().php_refused_peers, 1);
}

#[tokio::test]
async fn with_a_link_secret_and_no_php_allow_loopback_php_clients_are_served() {
    let broker = TestBroker::with_security(BrokerConfig::default(), with_secret()).await;
    let mut client = connect_from(&broker, 1).await;
    client.write_all(&PING).await.unwrap();
    broker
        .wait_for_stats("a PHP client", |s| s.php_connections == 1)
        .await;
    assert_eq!(broker.stats().php_refused_peers, 0);
}

#[tokio::test]
async fn a_silent_connection_from_a_source_that_may_not_be_php_is_a_link_without_hello() {
    let config = BrokerConfig {
        handshake_timeout: Duration::from_millis(200),
        ..allowing(2)
    };
    let broker = TestBroker::with_security(config, with_secret()).await;
    let mut link = Link::new(connect_from(&broker, 1).await);
    link.expect_hello().await;
    link.expect_refused("handshake_timeout").await;
    let stats = broker
        .wait_for_stats("1 bad frame", |s| s.bad_frames == 1)
        .await;
    assert_eq!(stats.php_connections_total, 0);
    assert_eq!(stats.php_refused_peers, 0);
}

#[tokio::test]
async fn a_php_client_that_sends_nothing_for_the_idle_timeout_is_closed() {
    let config = BrokerConfig {
        php: PhpConfig {
            idle_timeout: Duration::from_millis(400),
            ..PhpConfig::default()
        },
        ..BrokerConfig::default()
    };
    let broker = TestBroker::start(config).await;
    let mut client = connect_from(&broker, 1).await;
    // Pings keep it open past the timeout.
    for _ in 0..4 {
        client.write_all(&PING).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(broker.stats().php_idle_closed, 0);
    assert_eq!(broker.stats().php_connections, 1);
    expect_closed(&mut client).await;
    broker
        .wait_for_stats("1 idle PHP client closed", |s| {
            s.php_idle_closed == 1 && s.php_connections == 0
        })
        .await;
}

#[tokio::test]
async fn a_connection_silent_from_the_start_is_closed_after_the_handshake_and_idle_timeouts() {
    let config = BrokerConfig {
        handshake_timeout: Duration::from_millis(200),
        php: PhpConfig {
            idle_timeout: Duration::from_millis(300),
            ..PhpConfig::default()
        },
        ..BrokerConfig::default()
    };
    let broker = TestBroker::start(config).await;
    let mut silent = connect_from(&broker, 1).await;
    expect_closed(&mut silent).await;
    let stats = broker
        .wait_for_stats("1 idle PHP client closed", |s| s.php_idle_closed == 1)
        .await;
    assert_eq!(stats.php_connections_total, 1);
    assert_eq!(stats.bad_frames, 0);
}
