//! A broker library instance serving on port 0 in the test's runtime, and [`Link`]: a
//! gateway's end of a link, reduced to what the tests need.
//!
//! Like assertions, these panic with a message when something is not as expected: the broker's
//! tests are written that way.
//!
//! "Nothing else arrived" is proven with a ping/pong [`Link::barrier`]: the broker writes a
//! link's frames in the order it queued them, so once the pong for a ping arrives, everything
//! queued before that ping was handled has arrived too.

use std::net::SocketAddr;

use broker::auth::BrokerSecurity;
use broker::{Broker, BrokerConfig, BrokerError, StatsSnapshot};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use protocol::link::{Body, Hello, LinkError, Message, Ping, Publish, Subscribe, Unsubscribe};
use protocol::{Frame, FrameError, LinkCodec, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

use crate::{net, wait, RECV_TIMEOUT, STATS_TIMEOUT};

/// A broker serving on `127.0.0.1:0` in the test's runtime; cancelled on drop.
#[derive(Debug)]
pub struct TestBroker {
    pub broker: Broker,
    /// Where links connect.
    pub addr: SocketAddr,
    pub shutdown: CancellationToken,
    /// The serving task: it returns once `shutdown` is cancelled and every link has ended.
    pub serve: JoinHandle<Result<(), BrokerError>>,
}

impl TestBroker {
    /// A broker that requires nothing of its links.
    pub async fn start(config: BrokerConfig) -> TestBroker {
        TestBroker::with_security(config, BrokerSecurity::default()).await
    }

    /// A broker with a link secret or TLS.
    pub async fn with_security(config: BrokerConfig, security: BrokerSecurity) -> TestBroker {
        let broker = Broker::with_security(config, security).expect("the test's config is valid");
        let listener = net::listener().await.expect("a listener");
        let addr = listener.local_addr().expect("the listener's address");
        let shutdown = CancellationToken::new();
        let serve = tokio::spawn({
            let (broker, shutdown) = (broker.clone(), shutdown.clone());
            async move { broker.serve(listener, shutdown).await }
        });
        TestBroker {
            broker,
            addr,
            shutdown,
            serve,
        }
    }

    pub fn stats(&self) -> StatsSnapshot {
        self.broker.stats()
    }

    /// Polls the stats until `done` holds, for counters the broker updates after the fact
    /// (once a socket closed); returns them.
    pub async fn wait_for_stats(
        &self,
        what: &str,
        done: impl Fn(&StatsSnapshot) -> bool,
    ) -> StatsSnapshot {
        wait::wait_for_state(what, STATS_TIMEOUT, || self.stats(), done)
            .await
            .unwrap_or_else(|e| panic!("{e:#}"))
    }
}

impl Drop for TestBroker {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A gateway's end of a link over any stream (TCP, or TLS over TCP).
#[derive(Debug)]
pub struct Link<S = TcpStream> {
    pub framed: Framed<S, LinkCodec>,
    next_nonce: u64,
}

impl Link<TcpStream> {
    /// Connects without reading or sending anything.
    pub async fn connect_raw(addr: SocketAddr) -> Link {
        let stream = timeout(RECV_TIMEOUT, TcpStream::connect(addr))
            .await
            .expect("connect timed out")
            .expect("connect to the broker");
        // Like a gateway: a ping right after a publish must not wait out Nagle + delayed ACK.
        stream.set_nodelay(true).expect("set TCP_NODELAY");
        Link::new(stream)
    }

    /// Connects and completes the handshake; the link is up (the broker applied our hello) on
    /// return. Like a gateway, it says hello first: on a port shared with PHP Channel clients
    /// the broker answers only once it knows the peer is a gateway.
    pub async fn connect(addr: SocketAddr) -> Link {
        let mut link = Link::connect_raw(addr).await;
        link.send(Frame::hello("test")).await;
        link.expect_hello().await;
        link.barrier().await;
        link
    }
}

impl Link<TcpStream> {
    /// The broker's end, scripted by a test: accepts a gateway's link on `listener` and
    /// answers its hello as a broker without a link secret would. What follows is the test's.
    pub async fn accept(listener: &tokio::net::TcpListener) -> Link {
        let (stream, _) = timeout(RECV_TIMEOUT, listener.accept())
            .await
            .expect("the gateway did not connect")
            .expect("accept the gateway's link");
        let mut link = Link::new(stream);
        match link.expect_frame().await.body {
            Some(Body::Hello(_)) => {}
            other => panic!("expected the gateway's hello first, got {other:?}"),
        }
        link.send(Frame::hello("scripted-broker")).await;
        link
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Link<S> {
    /// A link over `stream`, connected already (e.g. a TLS stream).
    pub fn new(stream: S) -> Link<S> {
        Link {
            framed: Framed::new(stream, LinkCodec::default()),
            next_nonce: 1,
        }
    }

    pub async fn send(&mut self, frame: Frame) {
        timeout(RECV_TIMEOUT, self.framed.send(frame))
            .await
            .expect("send timed out")
            .expect("send a frame");
    }

    /// Writes bytes as they are, bypassing the codec (whose write buffer is flushed after
    /// every `send`, so ordering is kept).
    pub async fn send_raw(&mut self, bytes: &[u8]) {
        timeout(RECV_TIMEOUT, self.framed.get_mut().write_all(bytes))
            .await
            .expect("raw write timed out")
            .expect("raw write");
    }

    pub async fn publish(&mut self, channel: &str, payload: &[u8], no_echo: bool) {
        self.send(publish(channel, payload, no_echo)).await;
    }

    /// Subscribes, then waits until the broker has applied it.
    pub async fn subscribe(&mut self, channels: &[&str]) {
        self.send(subscribe(channels)).await;
        self.barrier().await;
    }

    /// Unsubscribes, then waits until the broker has applied it.
    pub async fn unsubscribe(&mut self, channels: &[&str]) {
        self.send(Frame::new(Body::Unsubscribe(Unsubscribe {
            channels: to_bytes(channels),
        })))
        .await;
        self.barrier().await;
    }

    /// The next frame, a link error, or `None` at end of file.
    pub async fn recv(&mut self) -> Option<Result<Frame, FrameError>> {
        timeout(RECV_TIMEOUT, self.framed.next())
            .await
            .expect("nothing arrived (no frame, no EOF) in time")
    }

    pub async fn expect_frame(&mut self) -> Frame {
        match self.recv().await {
            Some(Ok(frame)) => frame,
            Some(Err(e)) => panic!("expected a frame, got a link error: {e}"),
            None => panic!("expected a frame, got EOF"),
        }
    }

    /// The broker speaks first: its hello, in this protocol version. Returns it (with the
    /// challenge, when the broker asks for a link secret).
    pub async fn expect_hello(&mut self) -> Hello {
        match self.expect_frame().await.body {
            Some(Body::Hello(hello)) => {
                assert_eq!(hello.version, PROTOCOL_VERSION);
                hello
            }
            other => panic!("expected the broker's hello first, got {other:?}"),
        }
    }

    pub async fn expect_message(&mut self, channel: &str, payload: &[u8]) {
        match self.expect_frame().await.body {
            Some(Body::Message(Message {
                channel: got_channel,
                payload: got_payload,
            })) => {
                assert_eq!(got_channel.as_ref(), channel.as_bytes(), "message channel");
                assert_eq!(got_payload.as_ref(), payload, "message payload");
            }
            other => panic!("expected a message on {channel:?}, got {other:?}"),
        }
    }

    /// Ping, and require the very next frame to be the matching pong: nothing was queued for
    /// this link before the ping was handled, except what the caller already read. The nonces
    /// count from 1.
    pub async fn barrier(&mut self) {
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        self.send(ping(nonce)).await;
        match self.expect_frame().await.body {
            Some(Body::Pong(pong)) if pong.nonce == nonce => {}
            other => panic!("expected pong {nonce} with nothing before it, got {other:?}"),
        }
    }

    /// The next frame is an `Error` with `code` and a reason; returns the reason.
    pub async fn expect_error(&mut self, code: &str) -> String {
        match self.expect_frame().await.body {
            Some(Body::Error(LinkError { code: got, reason })) => {
                assert_eq!(got, code, "error code (reason: {reason})");
                assert!(!reason.is_empty(), "an error says why");
                reason
            }
            other => panic!("expected an error {code:?}, got {other:?}"),
        }
    }

    /// The broker closes the link after an `Error` frame with `code`, and sends nothing else.
    pub async fn expect_error_code(&mut self, code: &str) {
        self.expect_error(code).await;
        self.expect_eof().await;
    }

    /// The broker refuses the link: an `Error` frame with `code`, then the link ends (cleanly
    /// or not). Returns the reason.
    pub async fn expect_refused(&mut self, code: &str) -> String {
        let reason = self.expect_error(code).await;
        self.expect_closed().await;
        reason
    }

    /// A clean close: no frame, no error, just EOF.
    pub async fn expect_eof(&mut self) {
        if let Some(got) = self.recv().await {
            panic!("expected EOF, got {got:?}");
        }
    }

    /// The link ends, cleanly or with an error, and no frame comes first.
    pub async fn expect_closed(&mut self) {
        if let Some(Ok(frame)) = self.recv().await {
            panic!("expected the link to end, got {frame:?}");
        }
    }
}

pub fn to_bytes(channels: &[&str]) -> Vec<Bytes> {
    channels
        .iter()
        .map(|c| Bytes::copy_from_slice(c.as_bytes()))
        .collect()
}

pub fn subscribe(channels: &[&str]) -> Frame {
    Frame::new(Body::Subscribe(Subscribe {
        channels: to_bytes(channels),
    }))
}

pub fn publish(channel: &str, payload: &[u8], no_echo: bool) -> Frame {
    Frame::new(Body::Publish(Publish {
        channel: Bytes::copy_from_slice(channel.as_bytes()),
        payload: Bytes::copy_from_slice(payload),
        no_echo,
        history: None,
        id: 0,
        origin: 0,
    }))
}

/// A publish to a channel with history (`size` messages for `ttl_ms`).
pub fn publish_history(channel: &str, payload: &[u8], size: u32, ttl_ms: u64) -> Frame {
    Frame::new(Body::Publish(Publish {
        channel: Bytes::copy_from_slice(channel.as_bytes()),
        payload: Bytes::copy_from_slice(payload),
        no_echo: true,
        history: Some(protocol::link::HistoryOptions { size, ttl_ms }),
        id: 0,
        origin: 0,
    }))
}

pub fn ping(nonce: u64) -> Frame {
    Frame::new(Body::Ping(Ping { nonce }))
}
