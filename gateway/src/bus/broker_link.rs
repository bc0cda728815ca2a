//! [`BrokerLink`]: the carrier over one TCP link to the built-in broker.
//!
//! One task owns the link. It connects (over TLS with `--broker-tls`), exchanges hellos, answers
//! the broker's challenge when it sends one (an `Auth` frame, then a ping whose pong confirms
//! that the broker accepted it), subscribes every group that has local
//! members (split so no frame exceeds the limit), then loops: write queued publishes in batches,
//! send subscription changes, hand incoming messages to the router, ping, and watch for silence.
//! When the link drops it reconnects with exponential backoff and jitter; clients stay
//! connected and local delivery goes on meanwhile.
//!
//! Which groups to subscribe comes from the gateway's [`Node`]: everything it wants after a
//! (re)connect, then the changes as they happen (see [`super::interest`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use protocol::codec::{encode_frame, encode_publish, subscribe_frames, unsubscribe_frames};
use protocol::link::{Auth, Body, HistoryReply, Ping, Pong, Publish};
use protocol::{Frame, FrameError, GroupId, GroupName, LinkCodec, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, Notify};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::history::{link_request, page_from_link, removed_from_link};
use super::inbound::{InboundLimits, Rejected};
use super::publish_queue::PublishQueue;
use super::warnings::Throttle;
use super::{
    jittered, Bus, BusCounters, BusError, BusStatus, Carrier, HistoryError, HistoryFuture,
    HistoryPage, HistoryPolicy, HistoryQuery, Node, RunningBus, ShardStatus,
};
use crate::config::GatewayConfig;
use crate::credentials::LinkSecurity;

/// Most publishes written before one flush.
const WRITE_BATCH: usize = 256;
/// How long a stopping link may take to write what is queued.
const SHUTDOWN_FLUSH: Duration = Duration::from_secs(1);

/// Why the link to the broker failed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS handshake with the broker failed: {0}")]
    Tls(std::io::Error),
    #[error(
        "the broker requires link authentication: set --link-secret-file (or --link-secret) to \
         its secret"
    )]
    AuthRequired,
    #[error(
        "the broker does not ask for link authentication although this gateway has a link \
         secret: set the same secret on the broker"
    )]
    BrokerWithoutAuth,
    #[error("frame: {0}")]
    Frame(#[from] FrameError),
    #[error("broker closed the link")]
    Closed,
    #[error("broker refused the link: {code}: {reason}")]
    Refused { code: String, reason: String },
    #[error("broker speaks link protocol version {0}, this gateway {PROTOCOL_VERSION}")]
    Version(u32),
    #[error("unexpected {0} frame from the broker")]
    Unexpected(&'static str),
    #[error("no frame from the broker for {0:?}")]
    Silent(Duration),
    #[error("no frame from the broker for {0:?} and a write to it is blocked")]
    Stalled(Duration),
}

/// The built-in broker over TCP (or TLS), not started yet: `--broker HOST:PORT`, or the
/// embedded broker's address.
#[derive(Debug, Clone)]
pub struct BrokerLink {
    settings: LinkSettings,
    queue: usize,
    queue_bytes: usize,
}

impl BrokerLink {
    /// A link to the broker at `broker` ("host:port"), with the link settings of `config`.
    pub fn new(
        broker: impl Into<String>,
        config: &GatewayConfig,
        security: LinkSecurity,
    ) -> Result<Self, BusError> {
        let broker = broker.into();
        let port = broker
            .rsplit_once(':')
            .map(|(host, port)| (host, port.parse::<u16>()));
        match port {
            Some((host, Ok(port))) if !host.is_empty() && port != 0 => {}
            _ => {
                return Err(BusError::InvalidAddress {
                    address: broker,
                    reason: "expected HOST:PORT, e.g. 127.0.0.1:2206".into(),
                })
            }
        }
        Ok(BrokerLink {
            settings: LinkSettings {
                broker,
                node: config.node_name(),
                max_frame_size: config.link_max_frame_size,
                inbound: InboundLimits::from_config(config),
                ping_interval: config.link_ping_interval,
                timeout: config.link_timeout,
                connect_timeout: config.link_connect_timeout,
                reconnect_min: config.reconnect_min,
                reconnect_max: config.reconnect_max,
                security,
            },
            queue: config.link_queue,
            queue_bytes: config.link_queue_bytes,
        })
    }
}

impl Carrier for BrokerLink {
    fn start<N: Node>(self, node: Arc<N>, shutdown: CancellationToken) -> RunningBus {
        let (queue, publish_rx) = PublishQueue::new(self.queue, self.queue_bytes);
        let bus = Arc::new(BrokerBus {
            queue,
            up: AtomicBool::new(false),
            counters: BusCounters::default(),
            last_error: Mutex::new(None),
            max_frame_size: self.settings.max_frame_size,
            address: self.settings.broker.clone(),
            node,
            requests: Arc::default(),
            history: Mutex::new(HistoryOutbox::new(self.queue, self.queue_bytes)),
            history_ready: Notify::new(),
            origin: fastrand::u64(1..),
        });
        let task = tokio::spawn(link_loop(bus.clone(), self.settings, publish_rx, shutdown));
        RunningBus { bus, task }
    }
}

/// The started link: what workers publish through, and what its task reports.
#[derive(Debug)]
struct BrokerBus<N> {
    /// Encoded publishes waiting for the link, and the batch being written.
    queue: PublishQueue<Bytes>,
    up: AtomicBool,
    counters: BusCounters,
    last_error: Mutex<Option<String>>,
    max_frame_size: usize,
    /// The broker's `HOST:PORT`, for the status.
    address: String,
    node: Arc<N>,
    /// History reads waiting for the broker's reply.
    requests: Arc<Requests>,
    /// History publishes not acknowledged yet (`Stored`): written in order, kept until
    /// acknowledged, and written again on the next link when this one is lost.
    history: Mutex<HistoryOutbox>,
    /// Woken when `history` has publishes to write.
    history_ready: Notify,
    /// This gateway process, as the broker tells its publishes apart (`Publish.origin`).
    origin: u64,
}

/// History publishes waiting for the broker's acknowledgement, bounded like the link's queue.
#[derive(Debug)]
struct HistoryOutbox {
    /// Id of the next publish (consecutive from 1).
    next_id: u64,
    /// Encoded publishes, by id, oldest first.
    entries: std::collections::VecDeque<(u64, Bytes)>,
    bytes: usize,
    /// Entries already written on the current link (the first `written` of `entries`).
    written: usize,
    max_entries: usize,
    max_bytes: usize,
}

impl HistoryOutbox {
    fn new(max_entries: usize, max_bytes: usize) -> HistoryOutbox {
        HistoryOutbox {
            next_id: 1,
            entries: std::collections::VecDeque::new(),
            bytes: 0,
            written: 0,
            max_entries,
            max_bytes,
        }
    }

    /// The next id, if one more publish of `len` bytes fits.
    fn reserve(&self, len: usize) -> Option<u64> {
        let fits = self.entries.len() < self.max_entries
            && (self.bytes + len <= self.max_bytes || self.entries.is_empty());
        fits.then_some(self.next_id)
    }

    fn push(&mut self, id: u64, frame: Bytes) {
        self.next_id = id + 1;
        self.bytes += frame.len();
        self.entries.push_back((id, frame));
    }

    /// Publishes up to `id` are stored: forgotten.
    fn acknowledged(&mut self, id: u64) {
        while self.entries.front().is_some_and(|(first, _)| *first <= id) {
            if let Some((_, frame)) = self.entries.pop_front() {
                self.bytes -= frame.len();
                self.written = self.written.saturating_sub(1);
            }
        }
        if self.entries.is_empty() && self.entries.capacity() > 1024 {
            self.entries.shrink_to_fit();
        }
    }

    /// What is still to be written on this link, marked written.
    fn take_unwritten(&mut self, into: &mut Vec<Bytes>) {
        into.extend(
            self.entries
                .iter()
                .skip(self.written)
                .map(|(_, f)| f.clone()),
        );
        self.written = self.entries.len();
    }
}

/// History requests sent on the link, by id, waiting for their reply; failed all at once when
/// the link is lost.
#[derive(Debug, Default)]
struct Requests {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, oneshot::Sender<HistoryReply>>>,
}

impl Requests {
    fn answer(&self, reply: HistoryReply) {
        if let Some(waiter) = self.waiting.lock().remove(&reply.id) {
            let _ = waiter.send(reply);
        }
    }

    /// The link is gone: every waiting request fails (its sender dropped).
    fn fail_all(&self) {
        self.waiting.lock().clear();
    }
}

/// A request's place in [`Requests`], given up when its caller stops waiting (its timeout, or
/// the client gone) rather than when the broker answers: a reply that never comes leaves
/// nothing behind.
struct Waiting {
    requests: Arc<Requests>,
    id: u64,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.requests.waiting.lock().remove(&self.id);
    }
}

#[derive(Debug, Clone)]
struct LinkSettings {
    broker: String,
    node: String,
    max_frame_size: usize,
    inbound: InboundLimits,
    ping_interval: Duration,
    timeout: Duration,
    connect_timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    security: LinkSecurity,
}

impl<N: Node> Bus for BrokerBus<N> {
    fn publish(&self, group: &GroupName<'_>, payload: &Bytes) {
        self.counters.count_publish(payload);
        if !self.up.load(Relaxed) {
            self.counters.publishes_dropped.fetch_add(1, Relaxed);
            return;
        }
        let group = group.as_str();
        let frame = match encode_publish(group.as_bytes(), payload, true, self.max_frame_size) {
            Ok(frame) => frame,
            Err(e) => {
                // Config validation keeps group + message within a frame; count it regardless.
                tracing::error!(group, cause = %e, "cannot encode publish");
                self.counters.publishes_dropped.fetch_add(1, Relaxed);
                return;
            }
        };
        let len = frame.len();
        if !self.queue.push(frame, len) {
            self.counters.publishes_dropped.fetch_add(1, Relaxed);
        }
    }

    fn publish_history(&self, group: &GroupName<'_>, payload: &Bytes, policy: HistoryPolicy) {
        self.counters.history_publishes.fetch_add(1, Relaxed);
        // Kept even while the link is down, and until the broker acknowledges it (within the
        // link queue's bounds): the store is the only way this message reaches anyone, this
        // gateway's own members included.
        let mut outbox = self.history.lock();
        let len = payload.len() + group.as_str().len() + 32;
        let Some(id) = outbox.reserve(len) else {
            drop(outbox);
            self.counters
                .history_publishes_dropped
                .fetch_add(1, Relaxed);
            return;
        };
        let frame = Frame::new(Body::Publish(Publish {
            channel: Bytes::copy_from_slice(group.as_str().as_bytes()),
            payload: payload.clone(),
            no_echo: false,
            history: Some(policy.to_link()),
            id,
            origin: self.origin,
        }));
        match encode_frame(&frame, self.max_frame_size) {
            Ok(frame) => outbox.push(id, frame),
            Err(e) => {
                drop(outbox);
                tracing::error!(group = group.as_str(), cause = %e, "cannot encode publish");
                self.counters
                    .history_publishes_dropped
                    .fetch_add(1, Relaxed);
                return;
            }
        }
        drop(outbox);
        self.history_ready.notify_one();
    }

    fn history(
        &self,
        group: &GroupName<'_>,
        policy: HistoryPolicy,
        query: HistoryQuery,
    ) -> HistoryFuture<HistoryPage> {
        let reply = self.request(group, Some(policy), query, false);
        Box::pin(async move { page_from_link(reply.await?) })
    }

    fn remove_history(&self, group: &GroupName<'_>) -> HistoryFuture<()> {
        let reply = self.request(group, None, HistoryQuery::POSITION, true);
        Box::pin(async move { removed_from_link(reply.await?) })
    }

    fn status(&self) -> BusStatus {
        let up = self.up.load(Relaxed);
        let subscriptions = self.node.wanted() as u64;
        let last_error = self.last_error.lock().clone();
        BusStatus {
            carrier: "broker",
            up,
            shards: vec![ShardStatus {
                address: self.address.clone(),
                up,
                subscriptions,
                backlog_bytes: None,
                last_error: last_error.clone(),
            }],
            subscriptions,
            last_error,
            ..BusStatus::default()
        }
        .with_counters(&self.counters)
    }
}

impl<N: Node> BrokerBus<N> {
    /// Sends a history request; resolves with the broker's reply, or fails when the link is
    /// down or lost before the reply came.
    fn request(
        &self,
        group: &GroupName<'_>,
        policy: Option<HistoryPolicy>,
        query: HistoryQuery,
        remove: bool,
    ) -> impl std::future::Future<Output = Result<HistoryReply, HistoryError>> + Send + 'static
    {
        let unavailable = || HistoryError::Unavailable("the link to the broker is down".into());
        let queued = (|| {
            if !self.up.load(Relaxed) {
                return Err(unavailable());
            }
            let id = self.requests.next.fetch_add(1, Relaxed);
            let request = link_request(id, group.as_str().as_bytes(), policy, query, remove);
            let frame = encode_frame(
                &Frame::new(Body::HistoryRequest(request)),
                self.max_frame_size,
            )
            .map_err(|e| HistoryError::Store(e.to_string()))?;
            let (tx, rx) = oneshot::channel();
            self.requests.waiting.lock().insert(id, tx);
            let waiting = Waiting {
                requests: self.requests.clone(),
                id,
            };
            let len = frame.len();
            if !self.queue.push(frame, len) {
                return Err(HistoryError::Unavailable(
                    "the queue to the broker is full".into(),
                ));
            }
            Ok((rx, waiting))
        })();
        async move {
            let (rx, _waiting) = queued?;
            rx.await.map_err(|_| unavailable())
        }
    }
}

async fn link_loop<N: Node>(
    bus: Arc<BrokerBus<N>>,
    settings: LinkSettings,
    mut publish_rx: mpsc::Receiver<Bytes>,
    shutdown: CancellationToken,
) {
    let mut backoff = settings.reconnect_min;
    let mut ever_up = false;
    // While the broker stays down, `cannot reach broker` is logged at once, then at most once
    // per `WARN_EVERY` with the attempts held back; each attempt is logged at `debug`.
    let mut unreachable = Throttle::default();
    loop {
        let connected = tokio::select! {
            connected = connect(&settings) => connected,
            _ = shutdown.cancelled() => return,
        };
        match connected {
            Ok((reader, writer)) => {
                // The next outage's first failure is logged at once.
                unreachable = Throttle::default();
                let started = tokio::time::Instant::now();
                let reconnected = ever_up;
                if reconnected {
                    bus.counters.reconnects.fetch_add(1, Relaxed);
                }
                ever_up = true;
                let result = session(
                    &bus,
                    reconnected,
                    &settings,
                    &mut publish_rx,
                    reader,
                    writer,
                    &shutdown,
                )
                .await;
                bus.up.store(false, Relaxed);
                bus.requests.fail_all();
                // What this link did not acknowledge is written again on the next one.
                bus.history.lock().written = 0;
                bus.node.subscriptions_lost();
                // Start the backoff over only after a session that lasted: a broker that
                // accepts the connection and then refuses it (too many channels, say) must not
                // be hammered with a reconnect and a full resubscription every few milliseconds.
                if started.elapsed() >= settings.reconnect_max.max(Duration::from_secs(1)) {
                    backoff = settings.reconnect_min;
                }
                match result {
                    Ok(()) => return, // shutdown
                    Err(e) => {
                        tracing::warn!(carrier = "broker", broker = %settings.broker, cause = %e, "bus down");
                        *bus.last_error.lock() = Some(e.to_string());
                    }
                }
            }
            Err(e) => {
                tracing::debug!(broker = %settings.broker, cause = %e, retry_in = ?backoff, "broker connection attempt failed");
                if let Some(suppressed) = unreachable.allow() {
                    tracing::warn!(broker = %settings.broker, cause = %e, retry_in = ?backoff, suppressed, "cannot reach broker");
                }
                *bus.last_error.lock() = Some(e.to_string());
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(jittered(backoff)) => {}
            _ = shutdown.cancelled() => return,
        }
        backoff = (backoff * 2).min(settings.reconnect_max);
    }
}

/// The link's halves, plain TCP or TLS: one link per gateway, so a virtual call per read or
/// write of a whole buffer costs nothing worth a second copy of this code.
type Reader = FramedRead<Box<dyn AsyncRead + Send + Unpin>, LinkCodec>;
type Writer = BufWriter<Box<dyn AsyncWrite + Send + Unpin>>;

async fn connect(settings: &LinkSettings) -> Result<(Reader, Writer), LinkError> {
    let handshake = async {
        let stream = TcpStream::connect(&settings.broker).await?;
        stream.set_nodelay(true)?;
        let (read_half, write_half): (
            Box<dyn AsyncRead + Send + Unpin>,
            Box<dyn AsyncWrite + Send + Unpin>,
        ) = match &settings.security.tls {
            None => {
                let (read_half, write_half) = stream.into_split();
                (Box::new(read_half), Box::new(write_half))
            }
            Some(tls) => {
                let stream = tls
                    .connector
                    .connect(tls.server_name.clone(), stream)
                    .await
                    .map_err(LinkError::Tls)?;
                let (read_half, write_half) = tokio::io::split(stream);
                (Box::new(read_half), Box::new(write_half))
            }
        };
        let mut reader = FramedRead::with_capacity(
            read_half,
            LinkCodec::new(settings.max_frame_size),
            16 * 1024,
        );
        let mut writer = BufWriter::with_capacity(64 * 1024, write_half);
        write_frame(
            &mut writer,
            &Frame::hello(settings.node.clone()),
            settings.max_frame_size,
        )
        .await?;
        writer.flush().await?;
        let challenge = match reader.next().await {
            None => Err(LinkError::Closed),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(Frame {
                body: Some(Body::Hello(hello)),
            })) if hello.version == PROTOCOL_VERSION => Ok(hello.challenge),
            Some(Ok(Frame {
                body: Some(Body::Hello(hello)),
            })) => Err(LinkError::Version(hello.version)),
            Some(Ok(Frame {
                body: Some(Body::Error(e)),
            })) => Err(LinkError::Refused {
                code: e.code,
                reason: e.reason,
            }),
            Some(Ok(other)) => Err(LinkError::Unexpected(other.kind())),
        }?;
        authenticate(&mut reader, &mut writer, settings, &challenge).await?;
        Ok((reader, writer))
    };
    tokio::time::timeout(settings.connect_timeout, handshake)
        .await
        .map_err(|_| LinkError::ConnectTimeout)?
}

/// Answers the challenge of the broker's hello, if it sent one, and waits until the broker has
/// accepted the answer: it handles frames in order, so the pong to a ping sent after the `Auth`
/// frame means the link is authenticated, while a wrong answer gets an `Error` frame instead.
async fn authenticate(
    reader: &mut Reader,
    writer: &mut Writer,
    settings: &LinkSettings,
    challenge: &[u8],
) -> Result<(), LinkError> {
    let secret = match (&settings.security.secret, challenge.is_empty()) {
        (None, true) => return Ok(()),
        (None, false) => return Err(LinkError::AuthRequired),
        (Some(_), true) => return Err(LinkError::BrokerWithoutAuth),
        (Some(secret), false) => secret,
    };
    let mac = secret.answer(challenge, &settings.node);
    let max = settings.max_frame_size;
    let auth = Frame::new(Body::Auth(Auth {
        mac: Bytes::copy_from_slice(&mac),
    }));
    write_frame(writer, &auth, max).await?;
    write_frame(writer, &Frame::new(Body::Ping(Ping { nonce: 0 })), max).await?;
    writer.flush().await?;
    loop {
        let frame = match reader.next().await {
            None => return Err(LinkError::Closed),
            Some(frame) => frame?,
        };
        match frame.body {
            Some(Body::Pong(_)) => return Ok(()),
            Some(Body::Ping(ping)) => {
                let pong = Frame::new(Body::Pong(Pong { nonce: ping.nonce }));
                write_frame(writer, &pong, max).await?;
                writer.flush().await?;
            }
            Some(Body::Error(e)) => {
                return Err(LinkError::Refused {
                    code: e.code,
                    reason: e.reason,
                })
            }
            body => return Err(LinkError::Unexpected(frame_kind(body))),
        }
    }
}

async fn write_frame(writer: &mut Writer, frame: &Frame, max: usize) -> Result<(), LinkError> {
    let bytes = encode_frame(frame, max)?;
    writer.write_all(&bytes).await?;
    Ok(())
}

/// Sends the subscription changes since the last call (every wanted group when `full`).
/// Returns once they are written.
async fn sync_subscriptions<N: Node>(
    node: &N,
    writer: &mut Writer,
    max: usize,
    full: bool,
) -> Result<(), LinkError> {
    let changes = node.subscriptions(full);
    if changes.is_empty() {
        return Ok(());
    }
    let names = |groups: Vec<GroupId>| -> Vec<Bytes> {
        groups
            .iter()
            .map(|g| Bytes::copy_from_slice(g.as_str().as_bytes()))
            .collect()
    };
    for frame in subscribe_frames(names(changes.subscribe), max)?
        .iter()
        .chain(unsubscribe_frames(names(changes.unsubscribe), max)?.iter())
    {
        write_frame(writer, frame, max).await?;
    }
    writer.flush().await?;
    Ok(())
}

async fn session<N: Node>(
    bus: &BrokerBus<N>,
    reconnected: bool,
    settings: &LinkSettings,
    publish_rx: &mut mpsc::Receiver<Bytes>,
    mut reader: Reader,
    mut writer: Writer,
    shutdown: &CancellationToken,
) -> Result<(), LinkError> {
    let max = settings.max_frame_size;
    // The broker's hello has just arrived.
    let mut last_heard = Instant::now();
    bounded(
        last_heard,
        settings.timeout,
        sync_subscriptions(&*bus.node, &mut writer, max, true),
    )
    .await?;
    bus.up.store(true, Relaxed);
    tracing::info!(carrier = "broker", broker = %settings.broker, "bus up");
    // History publishes kept from a lost link (and those made while it was down) go first.
    bus.history_ready.notify_one();
    if reconnected {
        bus.node.reconnected();
    }

    let mut heartbeat = tokio::time::interval_at(
        Instant::now() + settings.ping_interval,
        settings.ping_interval,
    );
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut nonce = 0u64;
    let mut batch = Vec::with_capacity(WRITE_BATCH);
    loop {
        // Not biased: a saturated inbound stream must not starve the writes (publishes, pings),
        // nor a saturated publish queue the reads.
        tokio::select! {
            _ = shutdown.cancelled() => {
                // What is queued (the gateway's bye, last) goes out before the link closes.
                let _ = tokio::time::timeout(SHUTDOWN_FLUSH, async {
                    while let Ok(frame) = publish_rx.try_recv() {
                        writer.write_all(&frame).await?;
                    }
                    writer.flush().await?;
                    writer.shutdown().await
                })
                .await;
                return Ok(());
            }
            frame = reader.next() => {
                let frame = match frame {
                    None => return Err(LinkError::Closed),
                    Some(frame) => frame?,
                };
                last_heard = Instant::now();
                match frame.body {
                    Some(Body::Message(message)) => {
                        bus.counters.count_received(&message.payload);
                        let (group, payload) = match settings.inbound.check(&message.channel, message.payload) {
                            Ok(accepted) => accepted,
                            Err(Rejected::Invalid) => {
                                bus.counters.messages_invalid.fetch_add(1, Relaxed);
                                tracing::warn!("dropping a broker message that is not UTF-8 or not for a valid group id");
                                continue;
                            }
                            Err(Rejected::TooLarge) => {
                                bus.counters.messages_too_large.fetch_add(1, Relaxed);
                                tracing::warn!(max = settings.inbound.max_message_size, "dropping a broker message larger than --max-message-size");
                                continue;
                            }
                        };
                        bus.node.deliver(group, payload).await;
                        // Waiting for a full worker inbox is not the broker's silence.
                        last_heard = Instant::now();
                    }
                    Some(Body::Ping(ping)) => {
                        let pong = Frame::new(Body::Pong(Pong { nonce: ping.nonce }));
                        bounded(last_heard, settings.timeout, async {
                            write_frame(&mut writer, &pong, max).await?;
                            Ok(writer.flush().await?)
                        })
                        .await?;
                    }
                    Some(Body::Pong(_)) => {}
                    Some(Body::HistoryReply(reply)) => bus.requests.answer(reply),
                    Some(Body::Stored(stored)) => bus.history.lock().acknowledged(stored.id),
                    Some(Body::SubscribeRefused(refused)) => {
                        // The link stays up for every other group; these are retried with the
                        // next full resubscription.
                        bus.counters.subscriptions_refused.fetch_add(refused.channels.len() as u64, Relaxed);
                        tracing::warn!(
                            broker = %settings.broker,
                            refused = refused.channels.len(),
                            code = %refused.code,
                            reason = %refused.reason,
                            "broker refused subscriptions"
                        );
                    }
                    Some(Body::Error(e)) => return Err(LinkError::Refused { code: e.code, reason: e.reason }),
                    _ => return Err(LinkError::Unexpected(frame_kind(frame.body))),
                }
            }
            _ = bus.node.subscriptions_changed() => {
                bounded(last_heard, settings.timeout, sync_subscriptions(&*bus.node, &mut writer, max, false)).await?;
            }
            _ = bus.history_ready.notified() => {
                // The broker delivers a history message to the links subscribed when it stores
                // it, and reads this link's frames in order: the subscriptions of the joins
                // made before these publishes (the sender's own, say) go first, or this
                // gateway's members of a group it just joined would miss the message.
                bounded(last_heard, settings.timeout, sync_subscriptions(&*bus.node, &mut writer, max, false)).await?;
                let mut frames = Vec::new();
                bus.history.lock().take_unwritten(&mut frames);
                bounded(last_heard, settings.timeout, async {
                    for frame in &frames {
                        writer.write_all(frame).await?;
                    }
                    Ok(writer.flush().await?)
                })
                .await?;
            }
            n = publish_rx.recv_many(&mut batch, WRITE_BATCH) => {
                if n == 0 {
                    return Ok(()); // the bus itself is gone
                }
                let bytes: usize = batch.iter().map(Bytes::len).sum();
                let written = bounded(last_heard, settings.timeout, async {
                    for frame in batch.drain(..) {
                        writer.write_all(&frame).await?;
                    }
                    Ok(writer.flush().await?)
                })
                .await;
                // Written out, or dropped with the link: either way no longer held.
                bus.queue.release(bytes);
                batch.clear();
                written?;
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() > settings.timeout {
                    return Err(LinkError::Silent(settings.timeout));
                }
                nonce += 1;
                let ping = Frame::new(Body::Ping(Ping { nonce }));
                bounded(last_heard, settings.timeout, async {
                    write_frame(&mut writer, &ping, max).await?;
                    Ok(writer.flush().await?)
                })
                .await?;
            }
        }
    }
}

/// Runs a write to the broker, giving up once nothing has been heard from it for `timeout`
/// since `last_heard`. A broker (or a path to it) that stopped reading fills the socket
/// buffers, and a write blocked on them would otherwise keep this task from ever reaching the
/// heartbeat check: the link would never be found dead.
async fn bounded<T>(
    last_heard: Instant,
    timeout: Duration,
    write: impl std::future::Future<Output = Result<T, LinkError>>,
) -> Result<T, LinkError> {
    tokio::time::timeout_at(last_heard + timeout, write)
        .await
        .unwrap_or(Err(LinkError::Stalled(timeout)))
}

fn frame_kind(body: Option<Body>) -> &'static str {
    Frame { body }.kind()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_broker_address_needs_a_host_and_a_port() {
        let config = GatewayConfig::default();
        for good in ["127.0.0.1:2206", "broker.internal:2206", "[::1]:2206"] {
            assert!(
                BrokerLink::new(good, &config, LinkSecurity::default()).is_ok(),
                "{good}"
            );
        }
        for bad in [
            "127.0.0.1",
            "nonsense",
            ":2206",
            "host:0",
            "host:99999",
            "host:port",
        ] {
            let err = BrokerLink::new(bad, &config, LinkSecurity::default())
                .expect_err(bad)
                .to_string();
            assert!(err.contains("HOST:PORT") && err.contains(bad), "{err}");
        }
    }

    #[test]
    fn a_request_no_one_waits_for_leaves_nothing_behind() {
        let requests = Arc::new(Requests::default());
        for id in [7, 8] {
            let (tx, _rx) = oneshot::channel();
            requests.waiting.lock().insert(id, tx);
        }
        let answered = Waiting {
            requests: requests.clone(),
            id: 7,
        };
        drop(Waiting {
            requests: requests.clone(),
            id: 8,
        });
        assert_eq!(
            requests.waiting.lock().keys().copied().collect::<Vec<_>>(),
            [7],
            "the abandoned request is gone, the other still waits"
        );
        drop(answered);
        assert!(requests.waiting.lock().is_empty());
    }
}
