//! The broker link over real TCP: handshake, fan-out, `no_echo`, unsubscribe and cleanup,
//! malformed input, handshake and idle timeouts, slow consumers, graceful shutdown.
//!
//! Each test runs its own broker on `127.0.0.1:0`. "Nothing else arrived" is proven with a
//! ping/pong barrier: the broker writes a link's frames in the order it queued them, so once the
//! pong for a ping arrives, everything queued before that ping was handled has arrived too. To
//! prove a publish was *not* delivered, the publisher's own barrier comes first (its frames are
//! applied in order, so the fan-out is done when its pong arrives), then the subscriber's.
//!
//! The timeout tests make time [`jump`] past a timeout as long as a production one, instead of
//! waiting for a short one in real time: the broker runs in the test's runtime, whose clock the
//! test controls.

use std::time::Duration;

use broker::BrokerConfig;
use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::{SinkExt, StreamExt};
use prost::Message as _;
use protocol::link::{Body, Hello, Message, Publish, SubscribeRefused};
use protocol::{Frame, FrameError, LinkCodec, DEFAULT_MAX_FRAME_SIZE, PROTOCOL_VERSION};
use test_support::broker::{ping, publish, subscribe, to_bytes, Link, TestBroker};
use test_support::RECV_TIMEOUT as WAIT;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::time::{timeout, Instant};
use tokio_util::codec::Framed;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_broker_speaks_first_then_link_is_up() {
    let tb = TestBroker::start(link_only()).await;
    let mut client = Link::connect_raw(tb.addr).await;
    // Read before sending anything: the broker's hello must not wait for ours.
    client.expect_hello().await;
    client.send(Frame::hello("gateway-1")).await;
    client.barrier().await;

    let stats = tb.stats();
    assert_eq!((stats.links, stats.links_total), (1, 1));
    assert_eq!(stats.bad_frames, 0);
    assert_eq!((stats.channels, stats.subscriptions), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_reaches_each_subscriber_of_the_channel_exactly_once() {
    let tb = TestBroker::start(link_only()).await;
    let mut a = Link::connect(tb.addr).await;
    let mut b = Link::connect(tb.addr).await;
    let mut other = Link::connect(tb.addr).await;
    let mut publisher = Link::connect(tb.addr).await;
    a.subscribe(&["g"]).await;
    b.subscribe(&["g"]).await;
    other.subscribe(&["other"]).await;

    // Payloads are bytes, not text.
    let payload = b"hello \x00\xff group";
    publisher.publish("g", payload, false).await;
    publisher.publish("nobody-listens", b"lost", false).await;
    publisher.barrier().await;

    a.expect_message("g", payload).await;
    a.barrier().await;
    b.expect_message("g", payload).await;
    b.barrier().await;
    other.barrier().await;

    let stats = tb.stats();
    assert_eq!((stats.publishes, stats.deliveries), (2, 2));
    assert_eq!((stats.channels, stats.subscriptions), (2, 3));
    assert_eq!(stats.links, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_echo_skips_only_the_publishing_link() {
    let tb = TestBroker::start(link_only()).await;
    let mut publisher = Link::connect(tb.addr).await;
    let mut peer = Link::connect(tb.addr).await;
    publisher.subscribe(&["g"]).await;
    peer.subscribe(&["g"]).await;

    publisher.publish("g", b"echoed", false).await;
    publisher.expect_message("g", b"echoed").await;
    publisher.barrier().await;
    peer.expect_message("g", b"echoed").await;
    peer.barrier().await;

    publisher.publish("g", b"not echoed", true).await;
    publisher.barrier().await;
    peer.expect_message("g", b"not echoed").await;
    peer.barrier().await;

    assert_eq!(tb.stats().deliveries, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_stops_delivery_and_closing_removes_subscriptions() {
    let tb = TestBroker::start(link_only()).await;
    let mut leaver = Link::connect(tb.addr).await;
    let mut stayer = Link::connect(tb.addr).await;
    let mut publisher = Link::connect(tb.addr).await;
    // A channel named twice, in one frame and again later, is one subscription.
    leaver.subscribe(&["g", "h", "g"]).await;
    leaver.subscribe(&["h"]).await;
    stayer.subscribe(&["g"]).await;
    let stats = tb.stats();
    assert_eq!((stats.channels, stats.subscriptions), (2, 3));

    // Unsubscribing from a channel never subscribed is a no-op, not an error.
    leaver.unsubscribe(&["g", "never-subscribed"]).await;
    let stats = tb.stats();
    assert_eq!((stats.channels, stats.subscriptions), (2, 2));

    publisher.publish("g", b"to g", false).await;
    publisher.publish("h", b"to h", false).await;
    publisher.barrier().await;
    leaver.expect_message("h", b"to h").await;
    leaver.barrier().await;
    stayer.expect_message("g", b"to g").await;
    stayer.barrier().await;

    drop(leaver);
    let stats = tb
        .wait_for_stats("the closed link's subscriptions to go", |s| s.links == 2)
        .await;
    assert_eq!((stats.channels, stats.subscriptions), (1, 1));

    drop(stayer);
    let stats = tb
        .wait_for_stats("every subscription to go", |s| s.links == 1)
        .await;
    assert_eq!((stats.channels, stats.subscriptions), (0, 0));
    assert_eq!(stats.bad_frames, 0);
}

/// What a misbehaving client sends.
enum Input {
    Raw(Vec<u8>),
    Frames(Vec<Frame>),
}

struct Case {
    name: &'static str,
    /// Whether the client completes the handshake before sending `input`.
    handshake: bool,
    input: Input,
    code: &'static str,
}

const MAX_CHANNEL_LEN: usize = 16;
const MAX_CHANNELS: usize = 3;

fn limits_config() -> BrokerConfig {
    BrokerConfig {
        max_channel_len: MAX_CHANNEL_LEN,
        max_channels_per_link: MAX_CHANNELS,
        ..link_only()
    }
}

fn malformed_cases() -> Vec<Case> {
    let oversize = u32::try_from(DEFAULT_MAX_FRAME_SIZE + 1).expect("limit fits a u32");
    let long_channel = "x".repeat(MAX_CHANNEL_LEN + 1);
    vec![
        Case {
            name: "zero-length frame",
            handshake: true,
            input: Input::Raw(vec![0, 0, 0, 0]),
            code: "bad_frame",
        },
        Case {
            name: "length prefix over the frame limit",
            handshake: true,
            input: Input::Raw(oversize.to_be_bytes().to_vec()),
            code: "bad_frame",
        },
        Case {
            name: "undecodable body",
            handshake: true,
            input: Input::Raw(vec![0, 0, 0, 3, 0xff, 0xff, 0xff]),
            code: "bad_frame",
        },
        Case {
            // Field 15, varint 1: decodes to a frame with no body.
            name: "frame without a body",
            handshake: true,
            input: Input::Raw(vec![0, 0, 0, 2, 0x78, 0x01]),
            code: "bad_frame",
        },
        Case {
            name: "undecodable body instead of hello",
            handshake: false,
            input: Input::Raw(vec![0, 0, 0, 3, 0xff, 0xff, 0xff]),
            code: "bad_frame",
        },
        Case {
            name: "first frame not hello",
            handshake: false,
            input: Input::Frames(vec![ping(1)]),
            code: "expected_hello",
        },
        Case {
            name: "hello with another version",
            handshake: false,
            input: Input::Frames(vec![Frame::new(Body::Hello(Hello {
                version: PROTOCOL_VERSION + 1,
                node: "future".into(),
                ..Hello::default()
            }))]),
            code: "incompatible_version",
        },
        Case {
            name: "second hello",
            handshake: true,
            input: Input::Frames(vec![Frame::hello("again")]),
            code: "unexpected_frame",
        },
        Case {
            name: "message frame from a gateway",
            handshake: true,
            input: Input::Frames(vec![Frame::new(Body::Message(Message {
                channel: Bytes::from_static(b"g"),
                payload: Bytes::from_static(b"forged"),
            }))]),
            code: "unexpected_frame",
        },
        Case {
            name: "subscribe_refused frame from a gateway",
            handshake: true,
            input: Input::Frames(vec![Frame::new(Body::SubscribeRefused(SubscribeRefused {
                channels: to_bytes(&["g"]),
                code: "too_many_channels".into(),
                reason: "forged".into(),
            }))]),
            code: "unexpected_frame",
        },
        Case {
            name: "empty channel in subscribe",
            handshake: true,
            input: Input::Frames(vec![subscribe(&[""])]),
            code: "invalid_channel",
        },
        Case {
            name: "channel over max_channel_len in subscribe",
            handshake: true,
            input: Input::Frames(vec![subscribe(&[&long_channel])]),
            code: "invalid_channel",
        },
        Case {
            name: "empty channel in publish",
            handshake: true,
            input: Input::Frames(vec![publish("", b"p", false)]),
            code: "invalid_channel",
        },
        Case {
            name: "channel over max_channel_len in publish",
            handshake: true,
            input: Input::Frames(vec![publish(&long_channel, b"p", false)]),
            code: "invalid_channel",
        },
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_closes_only_that_link_with_an_error_code() {
    let tb = TestBroker::start(limits_config()).await;
    let mut healthy = Link::connect(tb.addr).await;
    healthy.subscribe(&["g"]).await;
    let mut publisher = Link::connect(tb.addr).await;

    for case in malformed_cases() {
        let name = case.name;
        let before = tb.stats().bad_frames;
        let mut bad = if case.handshake {
            Link::connect(tb.addr).await
        } else {
            let mut client = Link::connect_raw(tb.addr).await;
            client.expect_hello().await;
            client
        };
        match &case.input {
            Input::Raw(bytes) => bad.send_raw(bytes).await,
            Input::Frames(frames) => {
                for frame in frames {
                    bad.send(frame.clone()).await;
                }
            }
        }
        bad.expect_error_code(case.code).await;
        assert_eq!(tb.stats().bad_frames, before + 1, "bad_frames after {name}");

        let payload = format!("after {name}");
        publisher.publish("g", payload.as_bytes(), true).await;
        publisher.barrier().await;
        healthy.expect_message("g", payload.as_bytes()).await;
        healthy.barrier().await;
        let stats = tb
            .wait_for_stats(&format!("the link closed by {name} to go"), |s| {
                s.links == 2
            })
            .await;
        assert_eq!(
            (stats.channels, stats.subscriptions),
            (1, 1),
            "only the healthy subscription is left after {name}"
        );
    }
    let stats = tb.stats();
    assert_eq!(stats.bad_frames, malformed_cases().len() as u64);
    assert_eq!(stats.slow_link_disconnects, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_limits_are_inclusive() {
    let tb = TestBroker::start(limits_config()).await;
    let longest = "y".repeat(MAX_CHANNEL_LEN);
    let mut client = Link::connect(tb.addr).await;
    client.subscribe(&["a", "b", &longest]).await;
    // Already subscribed: does not count against the limit again.
    client.subscribe(&["a"]).await;
    let mut publisher = Link::connect(tb.addr).await;
    publisher.publish(&longest, b"fits", false).await;
    publisher.barrier().await;
    client.expect_message(&longest, b"fits").await;
    client.barrier().await;

    let stats = tb.stats();
    assert_eq!(stats.subscriptions, MAX_CHANNELS as u64);
    assert_eq!(stats.bad_frames, 0);
}

/// The next frame is a `SubscribeRefused` for `too_many_channels`; returns its channels, sorted.
async fn expect_refusal(link: &mut Link) -> Vec<Bytes> {
    {
        match link.expect_frame().await.body {
            Some(Body::SubscribeRefused(SubscribeRefused {
                mut channels,
                code,
                reason,
            })) => {
                assert_eq!(code, "too_many_channels", "refusal code (reason: {reason})");
                assert!(!reason.is_empty(), "a refusal says why");
                channels.sort();
                channels
            }
            other => panic!("expected a subscribe_refused frame, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscriptions_past_the_limit_are_refused_and_the_link_stays_up() {
    let tb = TestBroker::start(limits_config()).await;
    let mut client = Link::connect(tb.addr).await;
    let mut publisher = Link::connect(tb.addr).await;
    client.subscribe(&["a", "b"]).await;

    // The limit (3) counts across frames. "a" is already held and costs nothing; "c" is
    // taken; "d" and "e" are refused, "d" named once although it was asked for twice.
    client.send(subscribe(&["a", "c", "d", "e", "d"])).await;
    assert_eq!(expect_refusal(&mut client).await, to_bytes(&["d", "e"]));
    client.barrier().await;

    for channel in ["a", "b", "c", "d", "e"] {
        publisher.publish(channel, channel.as_bytes(), false).await;
    }
    publisher.barrier().await;
    for channel in ["a", "b", "c"] {
        client.expect_message(channel, channel.as_bytes()).await;
    }
    client.barrier().await;

    // Still full: a later subscribe is refused as a whole. Unsubscribing makes room again.
    client.send(subscribe(&["e"])).await;
    assert_eq!(expect_refusal(&mut client).await, to_bytes(&["e"]));
    client.barrier().await;
    client.unsubscribe(&["a"]).await;
    client.subscribe(&["e"]).await;
    publisher.publish("e", b"now", false).await;
    publisher.barrier().await;
    client.expect_message("e", b"now").await;
    client.barrier().await;

    let stats = tb.stats();
    assert_eq!(stats.links, 2, "no link was closed");
    assert_eq!((stats.channels, stats.subscriptions), (3, 3));
    assert_eq!(stats.subscriptions_refused, 3);
    assert_eq!(stats.bad_frames, 0);
}

/// A publish whose whole frame body is exactly `len` bytes.
fn publish_of_frame_len(channel: &str, len: usize) -> Frame {
    (0..len)
        .map(|n| publish(channel, &vec![b'p'; n], false))
        .find(|frame| frame.encoded_len() == len)
        .expect("some payload length gives this frame length")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frame_size_limit_is_inclusive() {
    const MAX_FRAME_SIZE: usize = 1024;
    let tb = TestBroker::start(BrokerConfig {
        max_frame_size: MAX_FRAME_SIZE,
        // The default channel limit does not fit in frames this small.
        max_channel_len: 64,
        ..link_only()
    })
    .await;
    let mut subscriber = Link::connect(tb.addr).await;
    subscriber.subscribe(&["g"]).await;
    let mut publisher = Link::connect(tb.addr).await;

    // The relayed message is the same size as the publish (no_echo unset is not encoded).
    let largest = publish_of_frame_len("g", MAX_FRAME_SIZE);
    let Some(Body::Publish(Publish { payload, .. })) = &largest.body else {
        unreachable!("built as a publish");
    };
    let payload = payload.clone();
    publisher.send(largest).await;
    publisher.barrier().await;
    subscriber.expect_message("g", &payload).await;
    subscriber.barrier().await;
    assert_eq!(tb.stats().bad_frames, 0);

    publisher
        .send(publish_of_frame_len("g", MAX_FRAME_SIZE + 1))
        .await;
    publisher.expect_error_code("bad_frame").await;
    subscriber.barrier().await;
    assert_eq!(tb.stats().bad_frames, 1);
}

/// Moves the clock of the test's runtime (the broker's) forward by `by` at once: every timer due
/// by then fires. Time is paused only for the jump: while paused, a runtime with nothing to do
/// jumps to its next timer, which would fire timeouts whenever a socket's bytes are in flight.
/// So no I/O may be awaited across a jump, nor a timeout be pending (they would fire too).
async fn jump(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

#[tokio::test]
async fn silent_new_link_is_closed_after_the_handshake_timeout() {
    let handshake_timeout = Duration::from_secs(10);
    let tb = TestBroker::start(BrokerConfig {
        handshake_timeout,
        ..link_only()
    })
    .await;
    let started = Instant::now();
    let mut silent = Link::connect_raw(tb.addr).await;
    silent.expect_hello().await;
    let mut prompt = Link::connect(tb.addr).await;
    // Just before the timeout, the silent link is still there.
    jump(handshake_timeout - Duration::from_secs(1)).await;
    prompt.barrier().await;
    assert_eq!(tb.stats().links, 2, "closed before the handshake timeout");

    jump(Duration::from_secs(1)).await;
    silent.expect_error_code("handshake_timeout").await;
    assert!(
        started.elapsed() >= handshake_timeout,
        "closed after {:?}, before the handshake timeout",
        started.elapsed()
    );
    // The handshake timeout does not apply once the hello is in.
    prompt.barrier().await;
    let stats = tb
        .wait_for_stats("the silent link to go", |s| s.links == 1)
        .await;
    assert_eq!(stats.bad_frames, 1);
}

#[tokio::test]
async fn idle_link_is_closed_and_pinging_link_stays_up() {
    let idle = Duration::from_secs(30);
    let tb = TestBroker::start(BrokerConfig {
        link_idle_timeout: idle,
        ..link_only()
    })
    .await;
    let mut silent = Link::connect(tb.addr).await;
    let mut active = Link::connect(tb.addr).await;

    let started = Instant::now();
    // The last frame the broker hears from this link; it was sent after `started`.
    silent.barrier().await;
    // The active link is heard every third of the idle timeout.
    let step = idle / 3;
    for _ in 0..2 {
        jump(step).await;
        active.barrier().await;
    }
    // Just before the timeout, the silent link is still there.
    jump(step - Duration::from_secs(1)).await;
    active.barrier().await;
    assert_eq!(tb.stats().links, 2, "closed before the idle timeout");

    jump(Duration::from_secs(2)).await;
    silent.expect_eof().await;
    let silent_lifetime = started.elapsed();
    assert!(
        silent_lifetime >= idle,
        "idle link closed after {silent_lifetime:?}, before the idle timeout"
    );
    // The active link stays up as long as it is heard.
    for _ in 0..6 {
        jump(step).await;
        active.barrier().await;
    }
    let stats = tb
        .wait_for_stats("the idle link to go", |s| s.links == 1)
        .await;
    assert_eq!(stats.bad_frames, 0, "an idle close is not a protocol fault");
}

/// What the concurrently reading subscriber saw.
#[derive(Debug, PartialEq)]
enum Seen {
    Message(u64),
    Pong(u64),
}

fn numbered_payload(seq: u64, len: usize) -> Vec<u8> {
    let mut payload = vec![0x5a; len];
    payload[..8].copy_from_slice(&seq.to_be_bytes());
    payload
}

fn payload_seq(payload: &[u8]) -> u64 {
    u64::from_be_bytes(payload[..8].try_into().expect("8-byte sequence number"))
}

/// A subscriber of "g" that reads on its own task and reports each frame. A test that publishes
/// in lockstep with it keeps its queue at one message at most, so it cannot be the slow one.
struct ReadingSubscriber {
    sink: SplitSink<Framed<TcpStream, LinkCodec>, Frame>,
    seen: tokio::sync::mpsc::Receiver<Seen>,
    reading: JoinHandle<()>,
}

impl ReadingSubscriber {
    fn start(client: Link, payload_len: usize) -> ReadingSubscriber {
        let (sink, mut stream) = client.framed.split();
        let (seen_tx, seen) = tokio::sync::mpsc::channel(16);
        let reading = tokio::spawn(async move {
            loop {
                let frame = timeout(WAIT, stream.next())
                    .await
                    .expect("reading subscriber starved")
                    .expect("reading subscriber's link closed")
                    .expect("reading subscriber's link failed");
                let (report, last) = match frame.body {
                    Some(Body::Message(m)) => {
                        assert_eq!(m.channel.as_ref(), b"g");
                        assert_eq!(m.payload.len(), payload_len);
                        (Seen::Message(payload_seq(&m.payload)), false)
                    }
                    Some(Body::Pong(p)) => (Seen::Pong(p.nonce), true),
                    other => panic!("reading subscriber got {other:?}"),
                };
                seen_tx.send(report).await.expect("test is listening");
                if last {
                    return;
                }
            }
        });
        ReadingSubscriber {
            sink,
            seen,
            reading,
        }
    }

    async fn next(&mut self) -> Seen {
        timeout(WAIT, self.seen.recv())
            .await
            .expect("reading subscriber did not get the frame in time")
            .expect("reading task ended")
    }

    /// Nothing beyond the numbered messages reached the reader: a ping's pong comes next. The
    /// reading task ends; the link stays up while `self` lives.
    async fn finish(&mut self) {
        timeout(WAIT, self.sink.send(ping(99)))
            .await
            .expect("ping timed out")
            .expect("ping the reader's link");
        assert_eq!(self.next().await, Seen::Pong(99));
        timeout(WAIT, &mut self.reading)
            .await
            .expect("reading task did not finish")
            .expect("reading task panicked");
    }
}

/// Publishes numbered payloads of `payload_len` bytes on "g", each once `reader` has it, until
/// the broker has disconnected a slow link and `after` more publishes have gone through, or
/// `max` publishes. Returns how many were published, and after how many the broker had
/// disconnected the slow link (`None`: it never did).
async fn publish_until_slow_disconnect(
    tb: &TestBroker,
    publisher: &mut Link,
    reader: &mut ReadingSubscriber,
    payload_len: usize,
    max: u64,
    after: u64,
) -> (u64, Option<u64>) {
    let mut published = 0;
    let mut disconnected_after = None;
    while published < max {
        publisher
            .publish("g", &numbered_payload(published, payload_len), false)
            .await;
        assert_eq!(reader.next().await, Seen::Message(published));
        published += 1;
        // The message reached the reader, so the broker is done fanning it out.
        if disconnected_after.is_none() && tb.stats().slow_link_disconnects > 0 {
            disconnected_after = Some(published);
        }
        if disconnected_after.is_some_and(|n| published >= n + after) {
            break;
        }
    }
    (published, disconnected_after)
}

/// Reads what a disconnected link got: an in-order prefix of the numbered messages, then the
/// end of the link (a frame the writer was cut off in may be truncated: that is an I/O error at
/// the end). Returns how many messages it got.
async fn read_until_the_end(stalled: &mut Link) -> u64 {
    let mut next_seq = 0;
    loop {
        match stalled.recv().await {
            Some(Ok(Frame {
                body: Some(Body::Message(m)),
            })) => {
                assert_eq!(payload_seq(&m.payload), next_seq, "stalled link order");
                next_seq += 1;
            }
            None | Some(Err(FrameError::Io(_))) => return next_seq,
            Some(other) => panic!("stalled link got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_consumer_is_disconnected_and_a_reading_subscriber_gets_everything() {
    const PAYLOAD_LEN: usize = 64 * 1024;
    /// More than enough to fill any socket buffers between the broker and a stalled reader.
    const MAX_PUBLISHES: u64 = 2000;
    /// Publishes after the disconnect, which must reach the reading subscriber alone.
    const AFTER_DISCONNECT: u64 = 20;
    let tb = TestBroker::start(BrokerConfig {
        link_queue_frames: 8,
        ..link_only()
    })
    .await;

    let mut stalled = Link::connect(tb.addr).await;
    stalled.subscribe(&["g"]).await;
    let mut reader = Link::connect(tb.addr).await;
    reader.subscribe(&["g"]).await;
    let mut publisher = Link::connect(tb.addr).await;
    let mut reader = ReadingSubscriber::start(reader, PAYLOAD_LEN);

    let (published, disconnected_after) = publish_until_slow_disconnect(
        &tb,
        &mut publisher,
        &mut reader,
        PAYLOAD_LEN,
        MAX_PUBLISHES,
        AFTER_DISCONNECT,
    )
    .await;
    let disconnected_after =
        disconnected_after.expect("the stalled subscriber was never disconnected");
    reader.finish().await;

    let stats = tb
        .wait_for_stats("the stalled link to go", |s| s.links == 2)
        .await;
    assert_eq!(stats.slow_link_disconnects, 1, "only the stalled link");
    assert!(stats.dropped_frames >= 1, "the frame that did not fit");
    assert_eq!((stats.channels, stats.subscriptions), (1, 1));
    assert_eq!(stats.publishes, published);
    assert_eq!(stats.bad_frames, 0);

    let next_seq = read_until_the_end(&mut stalled).await;
    assert!(
        next_seq < disconnected_after,
        "the stalled link got {next_seq} messages; it was disconnected after {disconnected_after}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_queue_is_bounded_in_bytes_as_well_as_in_frames() {
    const PAYLOAD_LEN: usize = 64 * 1024;
    /// Fifteen frames of PAYLOAD_LEN and a bit, not sixteen.
    const LINK_QUEUE_BYTES: usize = 1024 * 1024;
    /// Far below the frame bound (16,384 by default), and more than enough to fill the socket
    /// buffers between the broker and a stalled reader and then the byte bound.
    const MAX_PUBLISHES: u64 = 2000;
    const AFTER_DISCONNECT: u64 = 20;
    let tb = TestBroker::start(BrokerConfig {
        link_queue_bytes: LINK_QUEUE_BYTES,
        ..link_only()
    })
    .await;

    let mut stalled = Link::connect(tb.addr).await;
    stalled.subscribe(&["g"]).await;
    let mut reader = Link::connect(tb.addr).await;
    reader.subscribe(&["g"]).await;
    let mut publisher = Link::connect(tb.addr).await;
    let mut reader = ReadingSubscriber::start(reader, PAYLOAD_LEN);

    let (published, disconnected_after) = publish_until_slow_disconnect(
        &tb,
        &mut publisher,
        &mut reader,
        PAYLOAD_LEN,
        MAX_PUBLISHES,
        AFTER_DISCONNECT,
    )
    .await;
    assert!(
        disconnected_after.is_some(),
        "the stalled subscriber was not disconnected after {published} publishes of \
         {PAYLOAD_LEN} bytes (link-queue-bytes {LINK_QUEUE_BYTES}); stats: {:?}",
        tb.stats()
    );
    // Other links keep receiving: the reader got every publish, before and after.
    reader.finish().await;

    let stats = tb
        .wait_for_stats("the stalled link to go", |s| s.links == 2)
        .await;
    assert_eq!(stats.slow_link_disconnects, 1, "only the stalled link");
    assert!(stats.dropped_frames >= 1, "the frame that did not fit");
    assert_eq!(stats.publishes, published);

    // Every publish was queued to the reader; the rest of the deliveries went to the stalled
    // link. What it was sent before the socket filled up, it can read; the rest was still in
    // the broker when the link was dropped: in the queue, or (one frame at most) taken from the
    // queue by the writer, partly written, its tail in the writer's 64 KiB buffer.
    let queued_to_stalled = stats.deliveries - published;
    let read_by_stalled = read_until_the_end(&mut stalled).await;
    let unread = queued_to_stalled - read_by_stalled;
    let frame_len =
        u64::try_from(publish("g", &numbered_payload(0, PAYLOAD_LEN), false).encoded_len() + 4)
            .expect("a frame length fits a u64");
    let bound = u64::try_from(LINK_QUEUE_BYTES).expect("the bound fits a u64");
    let in_queue_at_most = unread;
    let in_queue_at_least = unread.saturating_sub(1);
    assert!(
        in_queue_at_least * frame_len <= bound,
        "{in_queue_at_least} frames of {frame_len} bytes were queued, over link-queue-bytes {bound}"
    );
    assert!(
        (in_queue_at_most + 1) * frame_len > bound,
        "the link was dropped with only {in_queue_at_most} frames of {frame_len} bytes queued"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_stops_serving_and_closes_every_link() {
    let shutdown_timeout = Duration::from_secs(2);
    let mut tb = TestBroker::start(BrokerConfig {
        shutdown_timeout,
        ..link_only()
    })
    .await;
    let mut up = Link::connect(tb.addr).await;
    up.subscribe(&["g"]).await;
    let mut handshaking = Link::connect_raw(tb.addr).await;
    handshaking.expect_hello().await;
    tb.wait_for_stats("both links to be accepted", |s| s.links == 2)
        .await;

    tb.shutdown.cancel();
    timeout(shutdown_timeout, &mut tb.serve)
        .await
        .expect("serve did not return within the shutdown timeout")
        .expect("serve task panicked")
        .expect("serve returned an error");

    up.expect_eof().await;
    handshaking.expect_eof().await;
    let stats = tb.stats();
    assert_eq!(
        stats.links, 0,
        "every link task finished before serve returned"
    );
    assert_eq!((stats.channels, stats.subscriptions), (0, 0));
    assert!(
        TcpStream::connect(tb.addr).await.is_err(),
        "the listener is closed"
    );
}

/// The broker link on a port of its own (`--php-channel off`): the broker says hello first, and
/// a silent or malformed peer is a link's. PHP Channel clients on the shared port are tested in
/// e2e/tests/php_channel.rs.
fn link_only() -> BrokerConfig {
    let mut config = BrokerConfig::default();
    config.php.channel = broker::config::PhpListen::Off;
    config
}
