//! [`NatsCarrier`]: group messages between gateways over NATS core pub/sub (`--bus nats://...`).
//!
//! Each group this gateway has members of is one NATS subscription on the subject
//! `{--bus-prefix}.g.{group}` ([`subject`] escapes the group id into one safe token); a publish
//! goes to that subject, stamped with this gateway's [`Origin`]. The connection has `no_echo`,
//! so the server does not send a gateway its own publishes; an echo that comes anyway is dropped
//! by origin and counted.
//!
//! **Why async-nats.** It is the NATS maintainers' client: it speaks the protocol, TLS (rustls,
//! here with *ring*), user/password and token authentication, learns the other servers of a
//! cluster from the server's `INFO`, reconnects across them, resends every live subscription
//! after a reconnect, pings, and reports what happens through an event callback. What is
//! written here: the subject mapping, the interest routing (subscribe a group while the
//! gateway has members, drop the subscription when the last one leaves), the reconciliation
//! with the gateway's [`Node`] after every (re)connect, the bounded publish queue, the checks
//! on what arrives, the reconnect backoff, and the status.
//!
//! **One task, one `Subscriber` per group.** The carrier task holds a map group ->
//! [`AbortHandle`] and merges every group's [`Subscriber`] into one [`SelectAll`] (a
//! `FuturesUnordered` inside: a message wakes only its own stream, so 100,000 subscriptions
//! cost nothing per message). Aborting a handle ends that stream; `SelectAll` drops it and the
//! `Subscriber`'s drop sends `UNSUB`, so the server forgets the interest. Memory: async-nats
//! gives each subscription a bounded tokio channel, whose first block of 32 message slots is
//! allocated when it is created: measured with 20,000 groups (`gateway/tests/nats.rs`,
//! `many_subscriptions_come_and_go`), a subscription costs about 5.5 KB of this process, so
//! `--max-groups` 100,000 is about 0.55 GB, besides the server's own. A hand-written client
//! multiplexing every subscription onto one channel would cost a few hundred bytes each; it
//! would also have to redo TLS, authentication, cluster discovery and reconnection, which is
//! why it is not done here.
//!
//! **Reconnection.** async-nats reconnects by itself (with [`reconnect_delay`]: the
//! `--reconnect-min`/`--reconnect-max` backoff with equal jitter) and resends `SUB` for every
//! `Subscriber` alive. The carrier task watches the connection (events, and
//! [`STATE_POLL`] as a backstop since the client's event channel can drop events): when it is
//! lost the bus is down, the [`Node`] stops recording changes, and after every new connection
//! the task takes the full set of wanted groups and reconciles its map with it: groups no
//! longer wanted are unsubscribed, missing ones subscribed, and each wanted group is held by
//! exactly one `Subscriber` (so one `SUB` on the server). Then the bus is up again. The
//! client's loss event marks the bus down at once, before the task has seen it. While the
//! client reconnects it does not drain its command channel, so nothing here waits on the
//! client without also watching for the loss ([`until_down`]): a subscription that cannot be
//! handed over is given up, the task goes on (down, the node told), and the reconciliation
//! after the next connection makes it.
//!
//! **Timers.** `--link-ping-interval` is the client's ping interval: after two pings left
//! unanswered it closes the connection at the third tick, so a silent connection is replaced
//! within about 3 × `--link-ping-interval` (15 s by default). `--link-idle-timeout` is not used
//! by this carrier. `--link-connect-timeout` bounds each connection attempt (TCP, TLS,
//! `INFO`/`CONNECT`). If no server answers at start, the gateway starts anyway and keeps
//! trying (`/readyz` answers 503 until the bus is up).
//!
//! **Bounds and drops.** Publishes wait in a queue of `--link-queue-frames` frames and
//! `--link-queue-bytes` bytes, drained by one task into the client; a publish that does not
//! fit, or made while the bus is down, is counted in `publishes_dropped` (local members got it
//! anyway), and so is one waiting for room in the client when the connection is lost; those
//! already handed to the client before the loss (at most its command channel) are sent after
//! the reconnection. The client's own command channel holds [`CLIENT_CAPACITY`] commands.
//! Messages that arrive are opened ([`Origin::open`]) and held to this gateway's limits
//! ([`InboundLimits`]); what fails is counted (`messages_invalid`, `messages_too_large`).
//! The carrier task reads every subscription as fast as messages come and queues them for
//! another task that hands them to the workers, waiting while they are full: that queue holds
//! [`INBOX_MESSAGES`] messages and [`INBOX_BYTES`] bytes, and what does not fit is dropped and
//! counted exactly (`slow_consumer`), so the policy and the count are this gateway's, not the
//! client's. Should the carrier task itself fall behind, the client drops what overflows a
//! subscription's [`SUBSCRIPTION_CAPACITY`] and reports slow-consumer events, counted too (its
//! event channel is bounded, so such a count may be short).
//!
//! **Limits.** A subject must fit in a NATS control line (4096 bytes by default): with the
//! default prefix, group ids up to 1,342 bytes do (see [`subject::max_group_id_len`]), and a
//! `--max-group-id-len` beyond that is refused at start. Messages larger than the server's
//! `max_payload` (1 MiB by default) are refused by the client and counted as dropped.
//!
//! **TLS.** `tls://` URLs require TLS (the system's root certificates); what the tests run is
//! plain `nats://` against real `nats-server` processes, with and without a cluster. TLS is
//! wired but not exercised end to end (no test CA for a NATS server here).
//!
//! async-nats logs its own events at `info` under the target `async_nats` (every failed
//! reconnection attempt, say): `RUST_LOG=info,async_nats=warn` quiets it.

pub mod history;
pub mod subject;

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use async_nats::connection::State;
use async_nats::{ConnectOptions, Event, Message, ServerAddr, ServerError, Subject, Subscriber};
use bytes::Bytes;
use futures_util::stream::{AbortHandle, Abortable, SelectAll};
use futures_util::{Stream, StreamExt};
use parking_lot::Mutex;
use protocol::{GroupId, GroupName};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::address::redacted;
use super::inbound::{InboundLimits, Rejected, INBOX_BYTES, INBOX_MESSAGES};
use super::origin::{Origin, Received};
use super::publish_queue::PublishQueue;
use super::warnings::Throttle;
use super::{
    equal_jitter, Bus, BusCounters, BusError, BusStatus, Carrier, HistoryError, HistoryFuture,
    HistoryPage, HistoryPolicy, HistoryQuery, Node, Payload, RunningBus, ShardStatus,
};
use crate::config::GatewayConfig;
use crate::history::policy::HistoryRules;
use history::NatsHistory;

/// The carrier's name in [`BusStatus::carrier`] and in logs.
const CARRIER: &str = "nats";
/// Messages the client queues for one subscription before it drops them and reports a slow
/// consumer: about a second of a busy group, while this gateway's workers are full.
pub const SUBSCRIPTION_CAPACITY: usize = 1024;
/// Commands (publishes, subscriptions) the client queues for its connection. Our own queue is
/// in front (`--link-queue-frames`), so this only has to keep the connection busy.
pub const CLIENT_CAPACITY: usize = 1024;
/// Most publishes taken from the queue at once.
const PUBLISH_BATCH: usize = 256;
/// How often the carrier task checks the connection's state, should an event have been lost.
pub const STATE_POLL: Duration = Duration::from_millis(250);
/// How long a flush after a full resubscription may take before the bus is declared up anyway.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// First and longest pause between tries of a history store that does not answer.
const STORE_RETRY_MIN: Duration = Duration::from_millis(20);
const STORE_RETRY_MAX: Duration = Duration::from_millis(500);
/// Messages of groups with history taken from their queue at once: those of different groups
/// are stored concurrently, those of one group one after the other (each waits for the
/// previous one's place in the stream).
pub const HISTORY_BATCH: usize = 64;

/// NATS core pub/sub, not started yet: the servers of `--bus nats://...` and the settings.
#[derive(Debug, Clone)]
pub struct NatsCarrier {
    servers: Vec<ServerAddr>,
    /// The servers without their credentials, as they may be logged.
    shown: Vec<Url>,
    credentials: Credentials,
    tls: bool,
    settings: Settings,
}

#[derive(Debug, Clone)]
struct Settings {
    prefix: String,
    node_name: String,
    inbound: InboundLimits,
    queue: usize,
    queue_bytes: usize,
    ping_interval: Duration,
    connect_timeout: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    history: HistoryRules,
    history_timeout: Duration,
}

/// Authentication from the URLs' userinfo: `user:pass@`, or a token alone as `token@`.
#[derive(Clone, PartialEq, Eq)]
enum Credentials {
    None,
    UserPassword(String, String),
    Token(String),
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::None => "None",
            Credentials::UserPassword(..) => "UserPassword(***)",
            Credentials::Token(_) => "Token(***)",
        })
    }
}

impl NatsCarrier {
    /// The carrier for `servers` (from [`super::BusAddress::Nats`]) with the bus settings of
    /// `config`. Refuses servers that disagree on TLS or credentials, and settings whose
    /// subjects would not fit a NATS control line.
    pub fn new(servers: &[Url], config: &GatewayConfig) -> Result<NatsCarrier, BusError> {
        let listed = || servers.iter().map(redacted).collect::<Vec<_>>().join(",");
        let invalid = |reason: String| BusError::InvalidAddress {
            address: listed(),
            reason,
        };
        if servers.is_empty() {
            return Err(invalid("no NATS server".into()));
        }
        let tls = servers[0].scheme() == "tls";
        if servers.iter().any(|url| (url.scheme() == "tls") != tls) {
            return Err(invalid(
                "tls:// and nats:// mixed: TLS is for every server or none".into(),
            ));
        }
        let mut credentials = Credentials::None;
        let mut addrs = Vec::with_capacity(servers.len());
        let mut shown = Vec::with_capacity(servers.len());
        for url in servers {
            let these = credentials_of(url).map_err(&invalid)?;
            match (&credentials, &these) {
                (_, Credentials::None) => {}
                (Credentials::None, _) => credentials = these,
                (known, these) if known == these => {}
                _ => {
                    return Err(invalid(
                        "the servers carry different credentials: give them once, or the same"
                            .into(),
                    ))
                }
            }
            let mut bare = url.clone();
            // The credentials go to the client's options, not into addresses it may log.
            let _ = bare.set_password(None);
            let _ = bare.set_username("");
            addrs.push(
                ServerAddr::from_url(bare.clone())
                    .map_err(|e| invalid(format!("{}: {e}", redacted(url))))?,
            );
            shown.push(bare);
        }
        let prefix = config.bus_prefix.clone();
        // The longest topic is a group's presence topic or a uid's: 3 bytes more.
        if !subject::fits_control_line(&prefix, config.max_topic_len()) {
            return Err(invalid(format!(
                "--max-group-id-len {} and --max-uid-len {} give NATS subjects of up to {} \
                 bytes, too long for a NATS control line ({} bytes by default): with \
                 --bus-prefix {prefix:?} use at most {} for each",
                config.max_group_id_len,
                config.max_uid_len,
                subject::max_subject_len(&prefix, config.max_topic_len()),
                subject::MAX_CONTROL_LINE,
                subject::max_group_id_len(&prefix) - protocol::cluster::topic::MAX_PREFIX_LEN,
            )));
        }
        if !config.history.is_empty()
            && !subject::history_fits_control_line(&prefix, config.max_group_id_len)
        {
            return Err(invalid(format!(
                "--max-group-id-len {} gives history subjects (--history) too long for a NATS \
                 control line ({} bytes by default) with --bus-prefix {prefix:?}",
                config.max_group_id_len,
                subject::MAX_CONTROL_LINE,
            )));
        }
        Ok(NatsCarrier {
            servers: addrs,
            shown,
            credentials,
            tls,
            settings: Settings {
                prefix,
                node_name: config.node_name(),
                inbound: InboundLimits::from_config(config),
                queue: config.link_queue,
                queue_bytes: config.link_queue_bytes,
                ping_interval: config.link_ping_interval,
                connect_timeout: config.link_connect_timeout,
                reconnect_min: config.reconnect_min,
                reconnect_max: config.reconnect_max,
                history: HistoryRules::new(&config.history),
                history_timeout: config.history_timeout,
            },
        })
    }

    fn options(&self, bus: &Arc<NatsBus>) -> ConnectOptions {
        let settings = &self.settings;
        let events = bus.clone();
        let backoff = bus.clone();
        let (min, max) = (settings.reconnect_min, settings.reconnect_max);
        let options = ConnectOptions::new()
            .name(&settings.node_name)
            .no_echo()
            .retry_on_initial_connect()
            .max_reconnects(None::<usize>)
            .ping_interval(settings.ping_interval)
            .connection_timeout(settings.connect_timeout)
            .subscription_capacity(SUBSCRIPTION_CAPACITY)
            .client_capacity(CLIENT_CAPACITY)
            .require_tls(self.tls)
            .reconnect_delay_callback(move |attempts| {
                let streak = backoff.short_sessions.load(Relaxed) as usize;
                reconnect_delay(attempts + streak, min, max, fastrand::f64())
            })
            .event_callback(move |event| {
                events.on_event(event);
                std::future::ready(())
            });
        match &self.credentials {
            Credentials::None => options,
            Credentials::UserPassword(user, password) => {
                options.user_and_password(user.clone(), password.clone())
            }
            Credentials::Token(token) => options.token(token.clone()),
        }
    }
}

/// The userinfo of `url`, percent-decoded.
fn credentials_of(url: &Url) -> Result<Credentials, String> {
    let decode = |text: &str| {
        percent_encoding::percent_decode_str(text)
            .decode_utf8()
            .map(|text| text.into_owned())
            .map_err(|_| format!("{}: the credentials are not UTF-8", redacted(url)))
    };
    let user = decode(url.username())?;
    Ok(match url.password() {
        Some(password) => Credentials::UserPassword(user, decode(password)?),
        None if user.is_empty() => Credentials::None,
        None => Credentials::Token(user),
    })
}

/// The wait before connection attempt `attempt` (from 1) of a series: `reconnect_min`
/// doubling up to `reconnect_max`, of which a random half (`random` in `[0, 1)`) is left
/// out ("equal jitter"), so that gateways do not reconnect in step.
pub fn reconnect_delay(attempt: usize, min: Duration, max: Duration, random: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(20) as u32;
    let backoff = min.saturating_mul(1 << doublings).min(max);
    equal_jitter(backoff, random)
}

impl Carrier for NatsCarrier {
    fn start<N: Node>(self, node: Arc<N>, shutdown: CancellationToken) -> RunningBus {
        let (queue, publish_rx) = PublishQueue::new(self.settings.queue, self.settings.queue_bytes);
        let (history_queue, history_rx) =
            PublishQueue::new(self.settings.queue, self.settings.queue_bytes);
        let bus = Arc::new(NatsBus {
            prefix: self.settings.prefix.clone(),
            origin: Origin::new(),
            queue,
            history_queue,
            history: Arc::new(NatsHistory::new(
                self.settings.prefix.clone(),
                self.settings.history.clone(),
                self.settings.history_timeout,
            )),
            history_queued: AtomicU64::new(0),
            history_done: watch::Sender::new(0),
            subscriptions_asked: AtomicU64::new(0),
            subscriptions_wanted: Notify::new(),
            subscriptions_applied: watch::Sender::new(0),
            session: AtomicU64::new(0),
            client: Mutex::new(None),
            down: Notify::new(),
            up: Notify::new(),
            subscriptions: AtomicU64::new(0),
            counters: BusCounters::default(),
            last_error: Mutex::new(None),
            server: Mutex::new(
                self.shown
                    .iter()
                    .map(redacted)
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            link_changed: Notify::new(),
            short_sessions: AtomicU32::new(0),
            warnings: Mutex::new(Warnings::default()),
        });
        let task = tokio::spawn(run(
            bus.clone(),
            self,
            node,
            publish_rx,
            history_rx,
            shutdown,
        ));
        RunningBus { bus, task }
    }
}

/// A publish on its way to the client.
#[derive(Debug)]
struct Outgoing {
    subject: Subject,
    payload: Bytes,
}

impl Outgoing {
    /// What it counts against `--link-queue-bytes`.
    fn len(&self) -> usize {
        self.subject.len() + self.payload.len()
    }
}

/// A message of a group with history on its way to the stream.
#[derive(Debug)]
struct HistoryPublish {
    group: GroupId,
    payload: Bytes,
    policy: HistoryPolicy,
}

/// The started carrier: what workers publish through, and what the task and the client's
/// events report.
#[derive(Debug)]
struct NatsBus {
    prefix: String,
    origin: Origin,
    /// Publishes waiting for the client, and the batch being handed to it.
    queue: PublishQueue<Outgoing>,
    /// Messages of groups with history waiting for the stream (`--link-queue-frames` and
    /// `--link-queue-bytes` too, apart from the other publishes: a slow stream does not hold
    /// them up).
    history_queue: PublishQueue<HistoryPublish>,
    history: Arc<NatsHistory>,
    /// Messages of groups with history queued so far, and those the history task is done
    /// with (stored or dropped): a read or removal waits until the task is done with what was
    /// queued before it, so that it sees (or removes) what this gateway accepted before it, as
    /// the broker link's single queue gives.
    history_queued: AtomicU64,
    history_done: watch::Sender<u64>,
    /// The history task's requests that the carrier task apply the node's subscription
    /// changes (numbered), and the last one it answered: see [`subscriptions_applied`].
    subscriptions_asked: AtomicU64,
    subscriptions_wanted: Notify,
    subscriptions_applied: watch::Sender<u64>,
    /// The client's connection count of the session the carrier task reconciled with the
    /// node; 0 while the bus is down. Set by the task, cleared by it or by the event callback
    /// when that session is lost ([`NatsBus::connection_lost`]).
    session: AtomicU64,
    /// The client, for the event callback to read the connection's state. Taken when the
    /// carrier task ends: the client holds the callback, which holds this.
    client: Mutex<Option<async_nats::Client>>,
    /// The client reported a loss: whoever waits on the client ([`until_down`]) stops.
    down: Notify,
    /// The carrier task reconciled a connection: the history task, holding messages while the
    /// bus was down ([`until_up`]), stores them.
    up: Notify,
    /// Groups subscribed on the server (one `Subscriber` each).
    subscriptions: AtomicU64,
    counters: BusCounters,
    last_error: Mutex<Option<String>>,
    /// The server in use (or the configured ones, before the first connection), redacted.
    server: Mutex<String>,
    /// The client reported a connection or a loss.
    link_changed: Notify,
    /// Connections in a row that were lost soon after they were made: each doubles the
    /// backoff once more, so a server that accepts and then drops the connection is not
    /// hammered (the client itself starts over after every successful connection).
    short_sessions: AtomicU32,
    warnings: Mutex<Warnings>,
}

/// Repeated warnings, each kind logged at most every [`WARN_EVERY`](super::warnings::WARN_EVERY).
#[derive(Debug, Default)]
struct Warnings {
    unreachable: Throttle,
    server_error: Throttle,
    slow_consumer: Throttle,
    publish_failed: Throttle,
    invalid: Throttle,
    history_dropped: Throttle,
}

impl NatsBus {
    /// Handles an event of the client (called in its event task, one event at a time).
    fn on_event(&self, event: Event) {
        match event {
            Event::Connected => self.link_changed.notify_one(),
            Event::Disconnected => {
                *self.last_error.lock() = Some("connection to the NATS server lost".into());
                self.connection_lost();
                self.down.notify_waiters();
                self.link_changed.notify_one();
            }
            Event::SlowConsumer(sid) | Event::ServerError(ServerError::SlowConsumer(sid)) => {
                self.counters.slow_consumer.fetch_add(1, Relaxed);
                if let Some(repeats) = self.warnings.lock().slow_consumer.allow() {
                    tracing::warn!(
                        carrier = CARRIER,
                        sid,
                        repeats,
                        "NATS client dropped a message: the carrier did not read its \
                         subscription in time"
                    );
                }
            }
            Event::ServerError(error) => {
                let text = error.to_string();
                // The server refused a subscription: over its limit, or not allowed to this
                // user (`Permissions Violation for Subscription to "..."`).
                let lower = text.to_lowercase();
                if lower.contains("maximum subscriptions exceeded")
                    || lower.contains("permissions violation for subscription")
                {
                    self.counters.subscriptions_refused.fetch_add(1, Relaxed);
                }
                if let Some(repeats) = self.warnings.lock().server_error.allow() {
                    tracing::warn!(carrier = CARRIER, cause = %text, repeats, "NATS server error");
                }
                *self.last_error.lock() = Some(text);
            }
            Event::ClientError(error) => {
                let text = error.to_string();
                if let Some(repeats) = self.warnings.lock().unreachable.allow() {
                    tracing::warn!(
                        carrier = CARRIER,
                        cause = %text,
                        repeats,
                        "cannot reach NATS; retrying"
                    );
                }
                *self.last_error.lock() = Some(text);
            }
            Event::LameDuckMode => tracing::info!(
                carrier = CARRIER,
                server = %self.server.lock(),
                "NATS server in lame duck mode: it will close the connection soon"
            ),
            Event::Draining | Event::Closed => {}
        }
    }

    /// The bus is up: the carrier task reconciled the current connection with the node.
    fn is_up(&self) -> bool {
        self.session.load(Relaxed) != 0
    }

    /// The client reported a lost connection: the bus is down at once, so that publishes are
    /// dropped rather than queued behind a client that is reconnecting, even while the carrier
    /// task has not noticed yet. Only the session the task reconciled is cleared, and only if
    /// it is really over: this event may be handled late, after the task has already
    /// reconciled the next connection, which must stay up.
    fn connection_lost(&self) {
        let session = self.session.load(Relaxed);
        if session == 0 {
            return;
        }
        let over = match &*self.client.lock() {
            Some(client) => {
                client.connection_state() != State::Connected
                    || client.statistics().connects.load(Relaxed) > session
            }
            None => true,
        };
        if over {
            let _ = self.session.compare_exchange(session, 0, Relaxed, Relaxed);
        }
    }

    fn drop_publish(&self) {
        self.counters.publishes_dropped.fetch_add(1, Relaxed);
    }

    /// Resolves once the history task is done with every message queued so far (the caller's
    /// timeout bounds the wait: `--history-timeout`).
    fn written(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let queued = self.history_queued.load(Relaxed);
        let mut done = self.history_done.subscribe();
        async move {
            // Err: the carrier stopped; the read that follows says so.
            let _ = done.wait_for(|done| *done >= queued).await;
        }
    }

    /// A message of a group with history was not stored: no gateway delivers it.
    fn drop_history(&self, group: &str, cause: &str) {
        self.counters
            .history_publishes_dropped
            .fetch_add(1, Relaxed);
        if let Some(repeats) = self.warnings.lock().history_dropped.allow() {
            tracing::warn!(
                carrier = CARRIER,
                group,
                cause,
                repeats,
                "dropping a message of a group with history: not stored, so no gateway \
                 delivers it"
            );
        }
    }
}

impl Bus for NatsBus {
    fn publish(&self, group: &GroupName<'_>, payload: &Bytes) {
        self.counters.count_publish(payload);
        if !self.is_up() {
            return self.drop_publish();
        }
        let outgoing = Outgoing {
            subject: Subject::from(subject::group_subject(&self.prefix, group.as_str())),
            payload: self.origin.stamp(payload),
        };
        let len = outgoing.len();
        if !self.queue.push(outgoing, len) {
            self.drop_publish();
        }
    }

    fn publish_history(&self, group: &GroupName<'_>, payload: &Bytes, policy: HistoryPolicy) {
        self.counters.history_publishes.fetch_add(1, Relaxed);
        // Queued while the bus is down too (within the queue's bounds): the history task holds
        // it until the next connection and stores it then, at the group's next offset, as the
        // broker link and Redis do.
        let queued = self.history_queue.push(
            HistoryPublish {
                group: GroupId::from(group.clone()),
                payload: payload.clone(),
                policy,
            },
            payload.len(),
        );
        if queued {
            self.history_queued.fetch_add(1, Relaxed);
        } else {
            self.drop_history(group.as_str(), "the history queue is full");
        }
    }

    fn history(
        &self,
        group: &GroupName<'_>,
        policy: HistoryPolicy,
        query: HistoryQuery,
    ) -> HistoryFuture<HistoryPage> {
        let history = self.history.clone();
        if !self.is_up() {
            return super::history::failed(HistoryError::Unavailable("the bus is down".into()));
        }
        let group = GroupId::from(group.clone());
        let written = self.written();
        Box::pin(async move {
            written.await;
            history.read(group.as_str(), policy, query).await
        })
    }

    fn remove_history(&self, group: &GroupName<'_>) -> HistoryFuture<()> {
        let history = self.history.clone();
        if !self.is_up() {
            return super::history::failed(HistoryError::Unavailable("the bus is down".into()));
        }
        let group = GroupId::from(group.clone());
        let written = self.written();
        Box::pin(async move {
            written.await;
            history.remove(group.as_str()).await
        })
    }

    fn status(&self) -> BusStatus {
        let up = self.is_up();
        let subscriptions = self.subscriptions.load(Relaxed);
        let last_error = self.last_error.lock().clone();
        BusStatus {
            carrier: CARRIER,
            up,
            shards: vec![ShardStatus {
                address: self.server.lock().clone(),
                up,
                subscriptions,
                last_error: last_error.clone(),
                backlog_bytes: None,
            }],
            subscriptions,
            last_error,
            ..BusStatus::default()
        }
        .with_counters(&self.counters)
    }
}

async fn run<N: Node>(
    bus: Arc<NatsBus>,
    carrier: NatsCarrier,
    node: Arc<N>,
    publish_rx: mpsc::Receiver<Outgoing>,
    history_rx: mpsc::Receiver<HistoryPublish>,
    shutdown: CancellationToken,
) {
    // With `retry_on_initial_connect` this returns at once; the client connects in the
    // background and reports it through the event callback.
    let client = match carrier.options(&bus).connect(carrier.servers.clone()).await {
        Ok(client) => client,
        Err(e) => {
            tracing::error!(carrier = CARRIER, cause = %e, "cannot start the NATS client");
            *bus.last_error.lock() = Some(e.to_string());
            return;
        }
    };
    *bus.client.lock() = Some(client.clone());
    bus.history.set_client(client.clone());
    let publisher = tokio::spawn(publish_loop(
        client.clone(),
        bus.clone(),
        publish_rx,
        shutdown.clone(),
    ));
    let historian = tokio::spawn(history_loop(bus.clone(), history_rx, shutdown.clone()));
    let (inbox, inbox_rx) = mpsc::channel(INBOX_MESSAGES);
    let inbox_bytes = Arc::new(AtomicUsize::new(0));
    let deliverer = tokio::spawn(deliver_loop(
        node.clone(),
        inbox_rx,
        inbox_bytes.clone(),
        shutdown.clone(),
    ));
    let mut link = Link {
        client,
        bus,
        node,
        inbox,
        inbox_bytes,
        settings: carrier.settings,
        shown: carrier.shown,
        subscribed: HashMap::new(),
        inbound: SelectAll::new(),
        synced: None,
        session_started: Instant::now(),
    };
    link.run(&shutdown).await;
    link.bus.session.store(0, Relaxed);
    link.bus.client.lock().take();
    link.bus.history.clear_client();
    drop(link);
    let _ = tokio::join!(publisher, deliverer, historian);
}

/// Hands the messages that arrived to the node, waiting while its workers are full (the
/// inbox then fills, and what does not fit is dropped and counted by the carrier task).
async fn deliver_loop<N: Node>(
    node: Arc<N>,
    mut inbox: mpsc::Receiver<(GroupId, Payload)>,
    inbox_bytes: Arc<AtomicUsize>,
    shutdown: CancellationToken,
) {
    loop {
        let (group, text) = tokio::select! {
            next = inbox.recv() => match next {
                Some(next) => next,
                None => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let len = text.len();
        // The group id was checked against the gateway's limit when it was subscribed.
        if let Ok(name) = GroupName::parse(group.as_str(), usize::MAX) {
            tokio::select! {
                _ = node.deliver(name, text) => {}
                _ = shutdown.cancelled() => return,
            }
        }
        inbox_bytes.fetch_sub(len, Relaxed);
    }
}

/// Hands queued publishes to the client, in order, one task for all: NATS keeps the order of
/// one connection's publishes, so each sender's order is kept.
async fn publish_loop(
    client: async_nats::Client,
    bus: Arc<NatsBus>,
    mut publish_rx: mpsc::Receiver<Outgoing>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    loop {
        let n = tokio::select! {
            n = publish_rx.recv_many(&mut batch, PUBLISH_BATCH) => n,
            _ = shutdown.cancelled() => return,
        };
        if n == 0 {
            return; // the bus itself is gone
        }
        for outgoing in batch.drain(..) {
            let len = outgoing.len();
            if !bus.is_up() {
                // Lost with the connection, as the broker link loses its queue.
                bus.drop_publish();
            } else {
                // The client's command channel is not drained while it reconnects: a publish
                // waiting for room is given up when the connection is lost, not sent late.
                let sent = tokio::select! {
                    biased;
                    sent = client.publish(outgoing.subject, outgoing.payload) => Some(sent),
                    _ = until_down(&bus, &client) => None,
                    _ = shutdown.cancelled() => return,
                };
                if sent.is_none() {
                    bus.drop_publish();
                } else if let Some(Err(e)) = sent {
                    bus.drop_publish();
                    if let Some(repeats) = bus.warnings.lock().publish_failed.allow() {
                        tracing::warn!(carrier = CARRIER, cause = %e, repeats, "NATS publish failed");
                    }
                }
            }
            bus.queue.release(len);
        }
    }
}

/// Stores the messages of groups with history in their streams ([`history`]), those of one
/// group in the order they were published, up to [`HISTORY_BATCH`] groups at once. The server
/// republishes each one stored to the group's subject. While the bus is down the messages wait
/// (in the bounded history queue, where `publish_history` counts what does not fit) and are
/// stored once it is up again; a message whose store fails because the connection was lost is
/// tried again then. What the store refuses is counted in `history_publishes_dropped`.
async fn history_loop(
    bus: Arc<NatsBus>,
    mut history_rx: mpsc::Receiver<HistoryPublish>,
    shutdown: CancellationToken,
) {
    let mut batch = Vec::with_capacity(HISTORY_BATCH);
    loop {
        let n = tokio::select! {
            n = history_rx.recv_many(&mut batch, HISTORY_BATCH) => n,
            _ = shutdown.cancelled() => return,
        };
        if n == 0 {
            return; // the bus itself is gone
        }
        tokio::select! {
            _ = subscriptions_applied(&bus) => {}
            _ = shutdown.cancelled() => return,
        }
        // Each group's messages in order, the groups side by side.
        let mut by_group: Vec<Vec<HistoryPublish>> = Vec::new();
        let mut index: HashMap<GroupId, usize> = HashMap::new();
        for publish in batch.drain(..) {
            let i = *index.entry(publish.group.clone()).or_insert_with(|| {
                by_group.push(Vec::new());
                by_group.len() - 1
            });
            by_group[i].push(publish);
        }
        let stores = by_group.into_iter().map(|publishes| {
            let bus = &bus;
            async move {
                for publish in publishes {
                    store_history(bus, &publish).await;
                    bus.history_queue.release(publish.payload.len());
                }
            }
        });
        tokio::select! {
            _ = futures_util::future::join_all(stores) => {}
            _ = shutdown.cancelled() => return,
        }
        bus.history_done.send_modify(|done| *done += n as u64);
    }
}

/// Resolves once the carrier task has applied the node's subscription changes recorded so far:
/// their `SUB`s are in the client's command channel, ahead of any store made after this (one
/// connection, whose commands the server runs in order). The stream republishes a stored
/// message to the subscribers of the group's subject at once, and this gateway's members get it
/// only that way: a client that joins a group and sends to it at once (the seed's snippet does)
/// must find this gateway subscribed. Bounded by `--history-timeout`; while the bus is down the
/// carrier task answers at once, and the reconciliation after the next connection comes before
/// any store ([`until_up`]).
async fn subscriptions_applied(bus: &NatsBus) {
    let asked = bus.subscriptions_asked.fetch_add(1, Relaxed) + 1;
    let mut applied = bus.subscriptions_applied.subscribe();
    bus.subscriptions_wanted.notify_one();
    let _ = tokio::time::timeout(
        bus.history.timeout(),
        applied.wait_for(|applied| *applied >= asked),
    )
    .await;
}

/// Stores one message of a group with history, waiting while the bus is down; counts it
/// dropped if the store refuses it. A store that fails because the connection was lost (its
/// ack never came and the check that follows could not be made) is tried again on the next
/// connection: should the server have stored it after all, members see it twice, each time at
/// its own offset, as after any lost ack (docs/protocol.md, "On NATS"). A store that does not
/// answer while the connection is up (JetStream still bringing its streams back after a server
/// restart) is tried again for `--history-timeout`, then the message is dropped.
async fn store_history(bus: &NatsBus, publish: &HistoryPublish) {
    let group = publish.group.as_str();
    let mut unanswered_since: Option<tokio::time::Instant> = None;
    let mut backoff = STORE_RETRY_MIN;
    loop {
        until_up(bus).await;
        match bus
            .history
            .append(group, &publish.payload, publish.policy, &bus.origin)
            .await
        {
            Ok(_) => return,
            Err(_) if !bus.is_up() => continue,
            Err(e @ HistoryError::Unavailable(_)) => {
                let since = *unanswered_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= bus.history.timeout() {
                    return bus.drop_history(group, &e.to_string());
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(STORE_RETRY_MAX);
            }
            Err(e) => return bus.drop_history(group, &e.to_string()),
        }
    }
}

/// Resolves once the bus is up: told by the carrier task, or seen in [`STATE_POLL`] at the
/// latest. The caller's task is ended by the shutdown.
async fn until_up(bus: &NatsBus) {
    loop {
        let up = bus.up.notified();
        tokio::pin!(up);
        up.as_mut().enable();
        if bus.is_up() {
            return;
        }
        tokio::select! {
            _ = up => {}
            _ = tokio::time::sleep(STATE_POLL) => {}
        }
    }
}

/// Resolves once the client's connection is lost: told by the event callback, or seen in
/// [`STATE_POLL`] at the latest should that event be missed. Raced against every wait on the
/// client: while it reconnects, its command channel is not drained, and whatever waits for
/// room in it would wait for the whole outage.
async fn until_down(bus: &NatsBus, client: &async_nats::Client) {
    loop {
        let down = bus.down.notified();
        tokio::pin!(down);
        down.as_mut().enable();
        if client.connection_state() != State::Connected {
            return;
        }
        tokio::select! {
            _ = down => {}
            _ = tokio::time::sleep(STATE_POLL) => {}
        }
    }
}

/// One group's subscription, its messages tagged with the group.
struct GroupStream {
    group: GroupId,
    subscriber: Subscriber,
}

impl Stream for GroupStream {
    type Item = (GroupId, Message);

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        Pin::new(&mut this.subscriber)
            .poll_next(cx)
            .map(|message| message.map(|message| (this.group.clone(), message)))
    }
}

/// The carrier task's state: the client, and the subscriptions it holds.
struct Link<N> {
    client: async_nats::Client,
    bus: Arc<NatsBus>,
    node: Arc<N>,
    settings: Settings,
    shown: Vec<Url>,
    /// One entry per group subscribed; aborting it ends its stream in `inbound`, which drops
    /// the `Subscriber` (and so unsubscribes).
    subscribed: HashMap<GroupId, AbortHandle>,
    inbound: SelectAll<Abortable<GroupStream>>,
    /// The client's connection count when the subscriptions were last reconciled with the
    /// node: `Some` while the bus is up.
    synced: Option<u64>,
    session_started: Instant,
    /// Checked messages on their way to the node ([`deliver_loop`]), and their bytes.
    inbox: mpsc::Sender<(GroupId, Payload)>,
    inbox_bytes: Arc<AtomicUsize>,
}

/// What woke the carrier task.
enum Wake {
    Link,
    Changes,
    Message(GroupId, Message),
}

impl<N: Node> Link<N> {
    async fn run(&mut self, shutdown: &CancellationToken) {
        let mut poll = tokio::time::interval(STATE_POLL);
        poll.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            let wake = tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.bus.link_changed.notified() => Wake::Link,
                _ = poll.tick() => Wake::Link,
                _ = self.node.subscriptions_changed() => Wake::Changes,
                _ = self.bus.subscriptions_wanted.notified() => Wake::Changes,
                Some((group, message)) = self.inbound.next() => Wake::Message(group, message),
            };
            let handled = async {
                match wake {
                    Wake::Link => self.check_link().await,
                    Wake::Changes => {
                        // What the history task asked before the changes are taken is
                        // answered once they are applied.
                        let asked = self.bus.subscriptions_asked.load(Relaxed);
                        let changes = self.node.subscriptions(false);
                        if self.synced.is_some()
                            && !changes.is_empty()
                            && !self.apply(changes.subscribe, changes.unsubscribe).await
                        {
                            // Lost while subscribing: what was not subscribed is left to the
                            // full reconciliation after the next connection.
                            self.lost();
                        }
                        self.bus.subscriptions_applied.send_if_modified(|applied| {
                            let newer = asked > *applied;
                            *applied = (*applied).max(asked);
                            newer
                        });
                    }
                    Wake::Message(group, message) => self.receive(group, message),
                }
            };
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = handled => {}
            }
        }
    }

    /// Follows the client's connection: down when it is lost, and after each new connection
    /// the subscriptions reconciled with the node, then up.
    async fn check_link(&mut self) {
        let connects = self.client.statistics().connects.load(Relaxed);
        let connected = self.client.connection_state() == State::Connected;
        if let Some(synced) = self.synced {
            // The event callback may have found this session lost before this task did.
            if connected && connects == synced && self.bus.session.load(Relaxed) == synced {
                return;
            }
            self.lost();
        }
        if !connected {
            return;
        }
        if !self.resync().await {
            // Lost again while reconciling: the next connection starts over.
            self.node.subscriptions_lost();
            tracing::debug!(carrier = CARRIER, "connection lost while resubscribing");
            return;
        }
        self.synced = Some(connects);
        self.session_started = Instant::now();
        // Perhaps another server, or one that lost its store: streams and last messages are
        // looked up again.
        self.bus.history.forget();
        self.bus
            .counters
            .reconnects
            .store(connects.saturating_sub(1), Relaxed);
        let info = self.client.server_info();
        let server = self.server_shown(&info.host, info.port);
        *self.bus.server.lock() = server.clone();
        let message_bound = self.settings.inbound.max_message_size
            + protocol::envelope::Envelope::encode(0, 0, b"").len();
        if message_bound > info.max_payload {
            tracing::warn!(
                carrier = CARRIER,
                server = %server,
                max_payload = info.max_payload,
                max_message_size = self.settings.inbound.max_message_size,
                "the NATS server's max_payload is below --max-message-size: larger messages \
                 reach only this gateway's members"
            );
        }
        if !self.settings.history.is_empty() && !info.jetstream {
            tracing::warn!(
                carrier = CARRIER,
                server = %server,
                "the NATS server has no JetStream (nats-server -js): messages of groups with \
                 history cannot be stored, and are dropped"
            );
        }
        self.bus.session.store(connects, Relaxed);
        // Lost since it was checked, and the client's event handled before the store: down
        // again at once rather than at the next poll.
        self.bus.connection_lost();
        self.bus.up.notify_waiters();
        tracing::info!(
            carrier = CARRIER,
            server = %server,
            subscriptions = self.subscribed.len(),
            reconnects = connects.saturating_sub(1),
            "bus up"
        );
        if connects > 1 {
            // What groups with history got meanwhile is asked of the store.
            self.node.reconnected();
        }
    }

    /// The connection was lost (or replaced before this task noticed).
    fn lost(&mut self) {
        self.synced = None;
        self.bus.session.store(0, Relaxed);
        self.node.subscriptions_lost();
        let lasted = self.session_started.elapsed();
        if lasted >= self.settings.reconnect_max.max(Duration::from_secs(1)) {
            self.bus.short_sessions.store(0, Relaxed);
        } else {
            let streak = self.bus.short_sessions.load(Relaxed);
            self.bus.short_sessions.store((streak + 1).min(20), Relaxed);
        }
        let cause = self.bus.last_error.lock().clone().unwrap_or_default();
        tracing::warn!(
            carrier = CARRIER,
            server = %self.bus.server.lock(),
            cause,
            after = ?lasted,
            "bus down"
        );
    }

    /// Every wanted group subscribed exactly once, nothing else: after a (re)connection the
    /// client has resent `SUB` for the subscriptions it holds; this drops those no longer
    /// wanted and adds the missing ones. False if the connection was lost meanwhile.
    async fn resync(&mut self) -> bool {
        let changes = self.node.subscriptions(true);
        let wanted: HashSet<GroupId> = changes.subscribe.iter().cloned().collect();
        let stale: Vec<GroupId> = self
            .subscribed
            .keys()
            .filter(|group| !wanted.contains(*group))
            .cloned()
            .collect();
        if !self.apply(changes.subscribe, stale).await {
            return false;
        }
        // The SUBs are written out (not necessarily processed) before the bus says it is up.
        tokio::select! {
            biased;
            flushed = tokio::time::timeout(FLUSH_TIMEOUT, self.client.flush()) => {
                if flushed.is_err() {
                    tracing::debug!(carrier = CARRIER, "flush after resubscribing timed out");
                }
                true
            }
            _ = until_down(&self.bus, &self.client) => false,
        }
    }

    /// Subscribes `subscribe` and unsubscribes `unsubscribe`. False if the connection was lost
    /// while a subscription waited for room in the client: that one and those after it are
    /// not subscribed (the unsubscriptions are made all the same), and the caller leaves them
    /// to the full reconciliation after the next connection.
    async fn apply(&mut self, subscribe: Vec<GroupId>, unsubscribe: Vec<GroupId>) -> bool {
        let mut complete = true;
        for group in subscribe {
            if self.subscribed.contains_key(&group) {
                continue; // in the snapshot and among the changes, or kept across a reconnect
            }
            let subject = subject::group_subject(&self.settings.prefix, group.as_str());
            // A subscribe cancelled while waiting for room sends nothing: no `SUB` is made
            // for a `Subscriber` that does not exist.
            let subscribed = tokio::select! {
                biased;
                subscribed = self.client.subscribe(subject) => subscribed,
                _ = until_down(&self.bus, &self.client) => {
                    complete = false;
                    break;
                }
            };
            match subscribed {
                Ok(subscriber) => {
                    let (stream, handle) = futures_util::stream::abortable(GroupStream {
                        group: group.clone(),
                        subscriber,
                    });
                    self.inbound.push(stream);
                    self.subscribed.insert(group, handle);
                }
                Err(e) => {
                    // Only a client that is shutting down gets here: the subject is valid.
                    self.bus
                        .counters
                        .subscriptions_refused
                        .fetch_add(1, Relaxed);
                    tracing::warn!(carrier = CARRIER, group = %group, cause = %e, "cannot subscribe");
                }
            }
        }
        for group in unsubscribe {
            if let Some(handle) = self.subscribed.remove(&group) {
                handle.abort();
            }
        }
        // Client groups: the cluster's own topics (permanent, uids, presence) are not counted.
        let topics = self
            .subscribed
            .keys()
            .filter(|g| protocol::cluster::topic::is_cluster_topic(g.as_str().as_bytes()))
            .count();
        self.bus
            .subscriptions
            .store((self.subscribed.len() - topics) as u64, Relaxed);
        complete
    }

    /// A message from another gateway: opened, checked, and queued for the members here.
    fn receive(&self, group: GroupId, message: Message) {
        let counters = &self.bus.counters;
        let payload = match self.bus.origin.open(message.payload) {
            Ok(Received::Message(payload)) => {
                counters.count_received(&payload);
                payload
            }
            Ok(Received::Echo(payload)) => {
                counters.count_received(&payload);
                if !protocol::cluster::ControlFrame::is_control(&payload) {
                    counters.echoes_dropped.fetch_add(1, Relaxed);
                }
                return;
            }
            Err(e) => {
                counters.messages_in.fetch_add(1, Relaxed);
                counters.messages_invalid.fetch_add(1, Relaxed);
                if let Some(repeats) = self.bus.warnings.lock().invalid.allow() {
                    tracing::warn!(carrier = CARRIER, group = %group, cause = %e, repeats, "dropping a NATS message that is not a gateway envelope");
                }
                return;
            }
        };
        match self
            .settings
            .inbound
            .check(group.as_str().as_bytes(), payload)
        {
            Ok((_, text)) => {
                let len = text.len();
                let queued = self.inbox_bytes.fetch_add(len, Relaxed);
                let full = queued > 0 && queued + len > INBOX_BYTES;
                if full || self.inbox.try_send((group.clone(), text)).is_err() {
                    self.inbox_bytes.fetch_sub(len, Relaxed);
                    counters.slow_consumer.fetch_add(1, Relaxed);
                    if let Some(repeats) = self.bus.warnings.lock().slow_consumer.allow() {
                        tracing::warn!(
                            carrier = CARRIER,
                            group = %group,
                            repeats,
                            "dropping a NATS message: the gateway's workers do not take them \
                             fast enough"
                        );
                    }
                }
            }
            Err(rejected) => {
                let (counter, why) = match rejected {
                    Rejected::Invalid => (&counters.messages_invalid, "not UTF-8"),
                    Rejected::TooLarge => (
                        &counters.messages_too_large,
                        "larger than --max-message-size",
                    ),
                };
                counter.fetch_add(1, Relaxed);
                if let Some(repeats) = self.bus.warnings.lock().invalid.allow() {
                    tracing::warn!(carrier = CARRIER, group = %group, why, repeats, "dropping a NATS message");
                }
            }
        }
    }

    /// The server at `host:port` (from its `INFO`) as configured, if it is one of ours;
    /// otherwise as it announces itself (a server discovered in the cluster).
    fn server_shown(&self, host: &str, port: u16) -> String {
        let unspecified = host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_unspecified());
        self.shown
            .iter()
            .find(|url| url.port() == Some(port) && (unspecified || url.host_str() == Some(host)))
            .map(redacted)
            .unwrap_or_else(|| {
                let scheme = if self.client_tls() { "tls" } else { "nats" };
                format!("{scheme}://{host}:{port}")
            })
    }

    fn client_tls(&self) -> bool {
        self.shown.first().is_some_and(|url| url.scheme() == "tls")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn carrier(urls: &str, config: &GatewayConfig) -> Result<NatsCarrier, BusError> {
        let super::super::BusAddress::Nats(servers) = urls.parse().expect("a NATS address") else {
            panic!("{urls} is not a NATS address")
        };
        NatsCarrier::new(&servers, config)
    }

    #[test]
    fn credentials_come_from_the_urls() {
        let config = GatewayConfig::default();
        let c = carrier("nats://alice:p%40ss@n1:4222,n2", &config).expect("valid");
        assert_eq!(
            c.credentials,
            Credentials::UserPassword("alice".into(), "p@ss".into())
        );
        assert!(!c.tls);
        for server in &c.servers {
            assert!(!server.has_user_pass(), "{:?}", server.as_url_str());
        }
        let c = carrier("tls://s3cr3t@n1", &config).expect("valid");
        assert_eq!(c.credentials, Credentials::Token("s3cr3t".into()));
        assert!(c.tls);
        assert!(!format!("{c:?}").contains("s3cr3t"));
        assert_eq!(
            carrier("nats://n1", &config).expect("valid").credentials,
            Credentials::None
        );
    }

    #[test]
    fn disagreeing_servers_are_refused() {
        let config = GatewayConfig::default();
        let err = carrier("nats://n1,tls://n2", &config)
            .expect_err("mixed TLS")
            .to_string();
        assert!(err.contains("mixed"), "{err}");
        let err = carrier("nats://a:hunter2@n1,nats://b:other@n2", &config)
            .expect_err("two users")
            .to_string();
        assert!(err.contains("different credentials"), "{err}");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn group_ids_too_long_for_a_subject_are_refused_at_start() {
        let mut config = GatewayConfig::default();
        config.max_group_id_len = subject::max_group_id_len(&config.bus_prefix)
            - protocol::cluster::topic::MAX_PREFIX_LEN;
        assert!(carrier("nats://n1", &config).is_ok());
        config.max_group_id_len += 1;
        let err = carrier("nats://n1", &config)
            .expect_err("too long")
            .to_string();
        assert!(
            err.contains("--max-group-id-len") && err.contains("use at most 1339"),
            "{err}"
        );
    }

    #[test]
    fn reconnect_delays_double_with_equal_jitter() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(1));
        let ms = |attempt, random| reconnect_delay(attempt, min, max, random).as_millis();
        assert_eq!((ms(1, 0.0), ms(1, 0.999_999)), (50, 99));
        assert_eq!(ms(2, 0.0), 100);
        assert_eq!(ms(3, 0.0), 200);
        assert_eq!(
            (ms(5, 0.0), ms(50, 0.0), ms(usize::MAX, 1.0)),
            (500, 500, 1000)
        );
    }
}
