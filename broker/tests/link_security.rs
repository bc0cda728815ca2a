//! Link security over real sockets: the challenge-response handshake with a link secret (right,
//! wrong and missing answers, each refused with `Error{code: "unauthorized"}` and counted), and
//! TLS on the link listener (a client trusting the CA is served; a plain TCP client, or one that
//! trusts another CA, never gets a hello). Certificates are made at test time.

use std::path::Path;
use std::time::Duration;

use broker::auth::BrokerSecurity;
use broker::BrokerConfig;
use bytes::Bytes;
use protocol::link::{Auth, Body, Hello, Message, Publish, Subscribe};
use protocol::link_auth::{LinkSecret, CHALLENGE_LEN};
use protocol::Frame;
use test_support::broker::{Link, TestBroker};
use test_support::certs::TestPki;
use test_support::RECV_TIMEOUT as WAIT;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

const SECRET: &str = "link-secret-for-tests";

fn secret(s: &str) -> LinkSecret {
    LinkSecret::new(s).expect("long enough")
}

fn test_pki() -> TestPki {
    TestPki::generate().expect("test certificates")
}

async fn with_secret() -> TestBroker {
    TestBroker::with_security(
        link_only(),
        BrokerSecurity {
            link_secret: Some(secret(SECRET)),
            tls: None,
        },
    )
    .await
}

async fn wait_unauthorized(broker: &TestBroker, n: u64) {
    broker
        .wait_for_stats(&format!("{n} unauthorized links"), |s| {
            s.unauthorized_links == n
        })
        .await;
}

/// The broker's hello; returns its challenge.
async fn hello<S: AsyncRead + AsyncWrite + Unpin>(link: &mut Link<S>) -> Bytes {
    link.expect_hello().await.challenge
}

/// Hello, then the right answer to `challenge`; returns once the broker answered a ping.
async fn authenticate<S: AsyncRead + AsyncWrite + Unpin>(
    link: &mut Link<S>,
    challenge: &[u8],
    node: &str,
) {
    link.send(Frame::hello(node)).await;
    let mac = secret(SECRET).answer(challenge, node);
    link.send(auth(&mac)).await;
    link.barrier().await;
}

fn auth(mac: &[u8]) -> Frame {
    Frame::new(Body::Auth(Auth {
        mac: Bytes::copy_from_slice(mac),
    }))
}

#[tokio::test]
async fn a_gateway_that_answers_the_challenge_is_served() {
    let broker = with_secret().await;
    let mut subscriber = Link::connect_raw(broker.addr).await;
    let challenge = hello(&mut subscriber).await;
    assert_eq!(challenge.len(), CHALLENGE_LEN);
    authenticate(&mut subscriber, &challenge, "gw-a").await;
    subscriber
        .send(Frame::new(Body::Subscribe(Subscribe {
            channels: vec![Bytes::from_static(b"room")],
        })))
        .await;
    subscriber.barrier().await;

    let mut publisher = Link::connect_raw(broker.addr).await;
    let other = hello(&mut publisher).await;
    assert_ne!(other, challenge, "every link gets a fresh challenge");
    authenticate(&mut publisher, &other, "gw-b").await;
    publisher
        .send(Frame::new(Body::Publish(Publish {
            channel: Bytes::from_static(b"room"),
            payload: Bytes::from_static(b"hi"),
            no_echo: true,
            history: None,
            id: 0,
            origin: 0,
        })))
        .await;
    match subscriber.expect_frame().await.body {
        Some(Body::Message(Message { channel, payload })) => {
            assert_eq!((&channel[..], &payload[..]), (&b"room"[..], &b"hi"[..]));
        }
        other => panic!("expected the message, got {other:?}"),
    }
    assert_eq!(broker.broker.stats().unauthorized_links, 0);
}

#[tokio::test]
async fn wrong_or_missing_answers_are_refused_and_counted() {
    let broker = with_secret().await;
    type Answer = fn(&[u8]) -> Vec<Frame>;
    let cases: [(&str, Answer); 5] = [
        ("another secret", |c| {
            vec![auth(&secret("another-secret-value").answer(c, "gw"))]
        }),
        ("the answer for another node", |c| {
            vec![auth(&secret(SECRET).answer(c, "other-gw"))]
        }),
        ("the answer to another challenge", |_| {
            vec![auth(&secret(SECRET).answer(&[0; CHALLENGE_LEN], "gw"))]
        }),
        ("an empty auth", |_| vec![auth(b"")]),
        ("a subscribe instead of an auth (an older gateway)", |_| {
            vec![Frame::new(Body::Subscribe(Subscribe {
                channels: vec![Bytes::from_static(b"room")],
            }))]
        }),
    ];
    for (i, (name, answer)) in cases.iter().enumerate() {
        let mut link = Link::connect_raw(broker.addr).await;
        let challenge = hello(&mut link).await;
        link.send(Frame::hello("gw")).await;
        for frame in answer(&challenge) {
            link.send(frame).await;
        }
        let reason = link.expect_refused("unauthorized").await;
        assert!(!reason.contains(SECRET), "{name}: {reason}");
        wait_unauthorized(&broker, i as u64 + 1).await;
    }
    // Only links that proved themselves were ever up: nothing was subscribed.
    assert_eq!(broker.broker.stats().subscriptions, 0);
}

#[tokio::test]
async fn an_auth_that_never_comes_times_out_as_unauthorized() {
    let handshake_timeout = Duration::from_secs(10);
    let config = BrokerConfig {
        handshake_timeout,
        ..link_only()
    };
    let security = BrokerSecurity {
        link_secret: Some(secret(SECRET)),
        tls: None,
    };
    let broker = TestBroker::with_security(config, security).await;
    let mut link = Link::connect_raw(broker.addr).await;
    link.expect_hello().await;
    link.send(Frame::hello("slow")).await;
    // The broker runs in this runtime: its clock jumps past the timeout at once. Time is paused
    // only for the jump, with no I/O in flight (see broker/tests/link.rs, `jump`).
    tokio::time::pause();
    tokio::time::advance(handshake_timeout).await;
    tokio::time::resume();
    let reason = link.expect_refused("unauthorized").await;
    assert!(reason.contains("no auth frame"), "{reason}");
    wait_unauthorized(&broker, 1).await;
}

#[tokio::test]
async fn without_a_secret_there_is_no_challenge_and_auth_is_unexpected() {
    let broker = TestBroker::start(link_only()).await;
    let mut link = Link::connect_raw(broker.addr).await;
    assert!(hello(&mut link).await.is_empty(), "no challenge");
    link.send(Frame::new(Body::Hello(Hello {
        version: protocol::PROTOCOL_VERSION,
        node: "gw".into(),
        ..Hello::default()
    })))
    .await;
    link.barrier().await;
    link.send(auth(&[0; 32])).await;
    link.expect_refused("unexpected_frame").await;
}

fn connector(ca: &Path) -> TlsConnector {
    TlsConnector::from(server_kit::tls::client_config(ca).expect("CA loads"))
}

#[tokio::test]
async fn a_tls_link_is_served_to_clients_that_trust_its_ca() {
    let pki = test_pki();
    let security = BrokerSecurity {
        link_secret: Some(secret(SECRET)),
        tls: Some(server_kit::tls::server_config(&pki.cert, &pki.key).expect("cert loads")),
    };
    let broker = TestBroker::with_security(link_only(), security).await;

    let tcp = TcpStream::connect(broker.addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = timeout(WAIT, connector(&pki.ca).connect(name.clone(), tcp))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake");
    let mut link = Link::new(tls);
    let challenge = hello(&mut link).await;
    authenticate(&mut link, &challenge, "gw-tls").await;

    // Plain TCP gets no hello: the broker waits for a TLS client hello, and this is not one.
    let mut plain = Link::connect_raw(broker.addr).await;
    plain.send(Frame::hello("plain")).await;
    // A plain client is never served.
    plain.expect_closed().await;

    // A client that trusts another CA refuses the broker's certificate.
    let other = test_pki();
    let tcp = TcpStream::connect(broker.addr).await.expect("connect");
    let refused = timeout(WAIT, connector(&other.ca).connect(name, tcp))
        .await
        .expect("TLS handshake timed out");
    let error = refused.expect_err("untrusted certificate").to_string();
    assert!(error.contains("certificate"), "{error}");
}

/// The broker link on a port of its own (`--php-channel off`): the broker says hello first.
/// PHP Channel clients on the shared port are tested in e2e/tests/php_channel.rs.
fn link_only() -> BrokerConfig {
    let mut config = BrokerConfig::default();
    config.php.channel = broker::config::PhpListen::Off;
    config
}
