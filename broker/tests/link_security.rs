//! Link security over real sockets: the challenge-response handshake with a link secret (right,
//! wrong and missing answers, each refused with `Error{code: "unauthorized"}` and counted), and
//! TLS on the link listener (a client trusting the CA is served; a plain TCP client, or one that
//! trusts another CA, never gets a hello). Certificates are made at test time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use broker::auth::BrokerSecurity;
use broker::{Broker, BrokerConfig};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use protocol::link::{Auth, Body, Hello, Message, Ping, Pong, Publish, Subscribe};
use protocol::link_auth::{LinkSecret, CHALLENGE_LEN};
use protocol::{Frame, LinkCodec};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(3);
const SECRET: &str = "link-secret-for-tests";

/// A throwaway CA and a certificate it signed for `localhost` and 127.0.0.1, as PEM files in a
/// fresh directory that is removed on drop.
struct TestPki {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TestPki {
    fn generate() -> TestPki {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "broker-pki-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Relaxed)
        ));
        std::fs::create_dir_all(&dir).expect("create the PKI directory");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("CA key"))
            .expect("CA certificate");
        let key = KeyPair::generate().expect("key");
        let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&key, &*ca)
            .expect("certificate");
        let write = |name: &str, pem: String| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("write PEM");
            path
        };
        TestPki {
            ca: write("ca.pem", ca.pem()),
            cert: write("cert.pem", cert.pem()),
            key: write("key.pem", key.serialize_pem()),
            dir,
        }
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

struct TestBroker {
    broker: Broker,
    addr: SocketAddr,
    shutdown: CancellationToken,
}

impl TestBroker {
    async fn start(config: BrokerConfig, security: BrokerSecurity) -> TestBroker {
        let broker = Broker::with_security(config, security).expect("valid config");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let shutdown = CancellationToken::new();
        tokio::spawn({
            let (broker, shutdown) = (broker.clone(), shutdown.clone());
            async move { broker.serve(listener, shutdown).await }
        });
        TestBroker {
            broker,
            addr,
            shutdown,
        }
    }

    async fn with_secret() -> TestBroker {
        TestBroker::start(
            BrokerConfig::default(),
            BrokerSecurity {
                link_secret: Some(secret(SECRET)),
                tls: None,
            },
        )
        .await
    }

    async fn wait_unauthorized(&self, n: u64) {
        let deadline = tokio::time::Instant::now() + WAIT;
        while self.broker.stats().unauthorized_links != n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "unauthorized_links stays at {:?}, expected {n}",
                self.broker.stats()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

fn secret(s: &str) -> LinkSecret {
    LinkSecret::new(s).expect("long enough")
}

/// A gateway's end of a link over any stream.
struct Link<S> {
    framed: Framed<S, LinkCodec>,
}

impl Link<TcpStream> {
    async fn tcp(addr: SocketAddr) -> Link<TcpStream> {
        let stream = timeout(WAIT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect");
        Link::new(stream)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Link<S> {
    fn new(stream: S) -> Link<S> {
        Link {
            framed: Framed::new(stream, LinkCodec::default()),
        }
    }

    async fn send(&mut self, frame: Frame) {
        timeout(WAIT, self.framed.send(frame))
            .await
            .expect("send timed out")
            .expect("send");
    }

    /// The next frame, or `None` at EOF or a broken connection.
    async fn next(&mut self) -> Option<Frame> {
        match timeout(WAIT, self.framed.next())
            .await
            .expect("nothing arrived in time")
        {
            Some(Ok(frame)) => Some(frame),
            Some(Err(_)) | None => None,
        }
    }

    /// The broker's hello; returns its challenge.
    async fn hello(&mut self) -> Bytes {
        match self.next().await.map(|f| f.body) {
            Some(Some(Body::Hello(hello))) => hello.challenge,
            other => panic!("expected the broker's hello, got {other:?}"),
        }
    }

    /// Hello, then the right answer to `challenge`; returns once the broker answered a ping.
    async fn authenticate(&mut self, challenge: &[u8], node: &str) {
        self.send(Frame::hello(node)).await;
        let mac = secret(SECRET).answer(challenge, node);
        self.send(auth(&mac)).await;
        self.expect_pong(1).await;
    }

    async fn expect_pong(&mut self, nonce: u64) {
        self.send(Frame::new(Body::Ping(Ping { nonce }))).await;
        match self.next().await.map(|f| f.body) {
            Some(Some(Body::Pong(Pong { nonce: got }))) => assert_eq!(got, nonce),
            other => panic!("expected pong {nonce}, got {other:?}"),
        }
    }

    /// The broker refuses the link: an `Error` frame with `code`, then EOF.
    async fn expect_refused(&mut self, code: &str) -> String {
        let reason = match self.next().await.map(|f| f.body) {
            Some(Some(Body::Error(e))) => {
                assert_eq!(e.code, code, "{}", e.reason);
                e.reason
            }
            other => panic!("expected Error{{{code}}}, got {other:?}"),
        };
        assert!(
            self.next().await.is_none(),
            "the link is closed after the error"
        );
        reason
    }
}

fn auth(mac: &[u8]) -> Frame {
    Frame::new(Body::Auth(Auth {
        mac: Bytes::copy_from_slice(mac),
    }))
}

#[tokio::test]
async fn a_gateway_that_answers_the_challenge_is_served() {
    let broker = TestBroker::with_secret().await;
    let mut subscriber = Link::tcp(broker.addr).await;
    let challenge = subscriber.hello().await;
    assert_eq!(challenge.len(), CHALLENGE_LEN);
    subscriber.authenticate(&challenge, "gw-a").await;
    subscriber
        .send(Frame::new(Body::Subscribe(Subscribe {
            channels: vec![Bytes::from_static(b"room")],
        })))
        .await;
    subscriber.expect_pong(2).await;

    let mut publisher = Link::tcp(broker.addr).await;
    let other = publisher.hello().await;
    assert_ne!(other, challenge, "every link gets a fresh challenge");
    publisher.authenticate(&other, "gw-b").await;
    publisher
        .send(Frame::new(Body::Publish(Publish {
            channel: Bytes::from_static(b"room"),
            payload: Bytes::from_static(b"hi"),
            no_echo: true,
        })))
        .await;
    match subscriber.next().await.map(|f| f.body) {
        Some(Some(Body::Message(Message { channel, payload }))) => {
            assert_eq!((&channel[..], &payload[..]), (&b"room"[..], &b"hi"[..]));
        }
        other => panic!("expected the message, got {other:?}"),
    }
    assert_eq!(broker.broker.stats().unauthorized_links, 0);
}

#[tokio::test]
async fn wrong_or_missing_answers_are_refused_and_counted() {
    let broker = TestBroker::with_secret().await;
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
        let mut link = Link::tcp(broker.addr).await;
        let challenge = link.hello().await;
        link.send(Frame::hello("gw")).await;
        for frame in answer(&challenge) {
            link.send(frame).await;
        }
        let reason = link.expect_refused("unauthorized").await;
        assert!(!reason.contains(SECRET), "{name}: {reason}");
        broker.wait_unauthorized(i as u64 + 1).await;
    }
    // Only links that proved themselves were ever up: nothing was subscribed.
    assert_eq!(broker.broker.stats().subscriptions, 0);
}

#[tokio::test]
async fn an_auth_that_never_comes_times_out_as_unauthorized() {
    let config = BrokerConfig {
        handshake_timeout: Duration::from_millis(200),
        ..BrokerConfig::default()
    };
    let security = BrokerSecurity {
        link_secret: Some(secret(SECRET)),
        tls: None,
    };
    let broker = TestBroker::start(config, security).await;
    let mut link = Link::tcp(broker.addr).await;
    link.hello().await;
    link.send(Frame::hello("slow")).await;
    let reason = link.expect_refused("unauthorized").await;
    assert!(reason.contains("no auth frame"), "{reason}");
    broker.wait_unauthorized(1).await;
}

#[tokio::test]
async fn without_a_secret_there_is_no_challenge_and_auth_is_unexpected() {
    let broker = TestBroker::start(BrokerConfig::default(), BrokerSecurity::default()).await;
    let mut link = Link::tcp(broker.addr).await;
    assert!(link.hello().await.is_empty(), "no challenge");
    link.send(Frame::new(Body::Hello(Hello {
        version: protocol::PROTOCOL_VERSION,
        node: "gw".into(),
        ..Hello::default()
    })))
    .await;
    link.expect_pong(1).await;
    link.send(auth(&[0; 32])).await;
    link.expect_refused("unexpected_frame").await;
}

fn connector(ca: &Path) -> TlsConnector {
    TlsConnector::from(server_kit::tls::client_config(ca).expect("CA loads"))
}

#[tokio::test]
async fn a_tls_link_is_served_to_clients_that_trust_its_ca() {
    let pki = TestPki::generate();
    let security = BrokerSecurity {
        link_secret: Some(secret(SECRET)),
        tls: Some(server_kit::tls::server_config(&pki.cert, &pki.key).expect("cert loads")),
    };
    let broker = TestBroker::start(BrokerConfig::default(), security).await;

    let tcp = TcpStream::connect(broker.addr).await.expect("connect");
    let name = ServerName::try_from("localhost").expect("name");
    let tls = timeout(WAIT, connector(&pki.ca).connect(name.clone(), tcp))
        .await
        .expect("TLS handshake timed out")
        .expect("TLS handshake");
    let mut link = Link::new(tls);
    let challenge = link.hello().await;
    link.authenticate(&challenge, "gw-tls").await;

    // Plain TCP gets no hello: the broker waits for a TLS client hello, and this is not one.
    let mut plain = Link::tcp(broker.addr).await;
    plain.send(Frame::hello("plain")).await;
    assert!(
        plain.next().await.is_none(),
        "a plain client is never served"
    );

    // A client that trusts another CA refuses the broker's certificate.
    let other = TestPki::generate();
    let tcp = TcpStream::connect(broker.addr).await.expect("connect");
    let refused = timeout(WAIT, connector(&other.ca).connect(name, tcp))
        .await
        .expect("TLS handshake timed out");
    let error = refused.expect_err("untrusted certificate").to_string();
    assert!(error.contains("certificate"), "{error}");
}
