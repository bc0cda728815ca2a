//! Putting a gateway together ([`GatewayBuilder`]) and running it: worker threads, the bus, the
//! embedded broker when there is one, the accept loop, the stop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use broker::auth::BrokerSecurity;
use broker::{Broker, BrokerConfig, BrokerError};
use parking_lot::Mutex;
use protocol::{GroupName, Text};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use server_kit::admin_http::AdminHttpStats;
use server_kit::settings::ConfigError;

use crate::bus::broker_link::BrokerLink;
use crate::bus::embedded::EmbeddedBus;
use crate::bus::{Carrier, RunningBus};
use crate::cluster::nodes::run_heartbeats;
use crate::cluster::{Cluster, ClusterSettings};
use crate::config::GatewayConfig;
use crate::credentials::Security;
use crate::edge::limits::{ConnectionLimits, Refusal};
use crate::fanout::hub::{Hub, Router};
use crate::history::policy::HistoryRules;
use crate::stats::{ClusterSnapshot, GatewaySnapshot, WorkerStats};
use crate::worker::{self, NewConnection, WorkerSetup};
use protocol::cluster::NodeId;

/// Sockets waiting to be picked up by one worker.
const HANDOFF_QUEUE: usize = 1024;
/// Refused connections being answered 503 at once; more are closed without an answer.
const REFUSALS_IN_FLIGHT: usize = 256;
/// Longest time a refused connection may take to send its request (less if the handshake
/// timeout is shorter).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("invalid configuration: {0}")]
    Setting(#[from] ConfigError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Bus(#[from] crate::bus::BusError),
}

/// A running gateway. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct Gateway {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: Arc<GatewayConfig>,
    hub: Arc<Hub>,
    worker_stats: Vec<Arc<WorkerStats>>,
    handoff: Vec<mpsc::Sender<NewConnection>>,
    limits: Arc<ConnectionLimits>,
    refusals: Arc<Semaphore>,
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    bus_task: Mutex<Option<JoinHandle<()>>>,
    embedded_broker: Option<EmbeddedBroker>,
    /// Where clients connect, once `serve` has been called.
    ws_addr: std::sync::OnceLock<SocketAddr>,
    /// Messages published through [`Gateway::publish`].
    api_publishes: AtomicU64,
    /// Counted by the admin HTTP server (`server_kit::admin_http::serve_admin`).
    admin_http: Arc<AdminHttpStats>,
    /// Clients connect with TLS (`wss://`).
    client_tls: bool,
    shutdown: CancellationToken,
}

/// How a gateway is put together: [`Gateway::builder`], then the bus, then [`start`].
///
/// [`start`]: GatewayBuilder::start
pub struct GatewayBuilder {
    config: GatewayConfig,
    security: Security,
    bus: BusChoice,
    /// PHP Channel clients' own listener for the embedded broker (`--broker-php-channel ADDR`).
    embedded_broker_php: Option<TcpListener>,
}

enum BusChoice {
    None,
    /// The built-in broker at this address, over TCP.
    Broker(String),
    /// A broker started in this process on this listener, and a link to it.
    Embedded(TcpListener, Box<BrokerConfig>),
    /// Any carrier, started with the gateway's router.
    Carrier(StartBus),
}

type StartBus = Box<dyn FnOnce(Arc<Hub>, CancellationToken) -> RunningBus + Send>;

impl std::fmt::Debug for GatewayBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let bus = match &self.bus {
            BusChoice::None => "none".to_owned(),
            BusChoice::Broker(addr) => format!("broker at {addr}"),
            BusChoice::Embedded(listener, _) => {
                format!("embedded broker on {:?}", listener.local_addr())
            }
            BusChoice::Carrier(_) => "carrier".to_owned(),
        };
        let php = self
            .embedded_broker_php
            .as_ref()
            .map(|listener| listener.local_addr());
        f.debug_struct("GatewayBuilder")
            .field("config", &self.config)
            .field("bus", &bus)
            .field("embedded_broker_php", &php)
            .finish_non_exhaustive()
    }
}

impl GatewayBuilder {
    /// What the gateway requires of its peers: the broker link's secret and TLS, TLS for
    /// clients, join tokens. The default requires nothing, as the seed.
    pub fn security(mut self, security: Security) -> Self {
        self.security = security;
        self
    }

    /// The settings the gateway will run with (a carrier reads its own from them).
    pub fn config(&self) -> &GatewayConfig {
        &self.config
    }

    /// Links to the standalone broker at `addr` ("host:port"), with the link secret and TLS of
    /// [`GatewayBuilder::security`].
    pub fn broker(mut self, addr: impl Into<String>) -> Self {
        self.bus = BusChoice::Broker(addr.into());
        self
    }

    /// Runs a broker in this process on `listener`, for any other gateway that joins it there
    /// (they must know the link secret of [`Security::link`]), with the settings of
    /// [`GatewayConfig::embedded_broker_config`]; with [`Security::embedded_broker_tls`] it
    /// speaks TLS. This gateway reaches it in process ([`EmbeddedBus`]): no socket, no frame.
    pub fn embedded_broker(self, listener: TcpListener) -> Self {
        let config = self.config.embedded_broker_config();
        self.embedded_broker_with(listener, config)
    }

    /// [`GatewayBuilder::embedded_broker`] with the broker's own settings.
    pub fn embedded_broker_with(mut self, listener: TcpListener, config: BrokerConfig) -> Self {
        self.bus = BusChoice::Embedded(listener, Box::new(config));
        self
    }

    /// Serves the embedded broker's PHP Channel clients (docs/php-channel.md) on `listener`, a
    /// port of their own (`--broker-php-channel ADDR`), beside its link listener. Only with
    /// [`GatewayBuilder::embedded_broker`].
    pub fn embedded_broker_php(mut self, listener: TcpListener) -> Self {
        self.embedded_broker_php = Some(listener);
        self
    }

    /// Carries messages between gateways with `carrier`.
    pub fn bus<C: Carrier>(mut self, carrier: C) -> Self {
        self.bus = BusChoice::Carrier(Box::new(move |hub, shutdown| carrier.start(hub, shutdown)));
        self
    }

    /// Starts the workers, the bus and, when asked for, the embedded broker. Must be called
    /// within a tokio runtime, which runs the bus (and the broker). Clients are accepted once
    /// [`Gateway::serve`] runs.
    pub fn start(self, shutdown: CancellationToken) -> Result<Gateway, GatewayError> {
        let GatewayBuilder {
            config,
            security,
            bus,
            embedded_broker_php,
        } = self;
        if embedded_broker_php.is_some() && !matches!(bus, BusChoice::Embedded(..)) {
            return Err(GatewayError::Config(
                "a PHP Channel listener is for the embedded broker, and there is none".into(),
            ));
        }
        config.validate()?;
        let config = Arc::new(config);
        let link_to = |addr: String| -> Result<StartBus, GatewayError> {
            let link = BrokerLink::new(addr, &config, security.link.clone())?;
            Ok(Box::new(move |hub, token| link.start(hub, token)))
        };
        let (carrier, embedded): (StartBus, _) = match bus {
            BusChoice::None => {
                return Err(GatewayError::Config(
                    "no bus: give the gateway a broker, an embedded broker or a carrier".into(),
                ))
            }
            BusChoice::Carrier(start) => (start, None),
            BusChoice::Broker(addr) => (link_to(addr)?, None),
            BusChoice::Embedded(listener, broker_config) => {
                let broker_security = BrokerSecurity {
                    link_secret: security.link.secret.clone(),
                    tls: security.embedded_broker_tls.clone(),
                };
                let broker = Broker::with_security(*broker_config, broker_security)
                    .map_err(|e| GatewayError::Config(format!("embedded broker: {e}")))?;
                let addr = listener.local_addr()?;
                let task = tokio::spawn({
                    let (broker, token) = (broker.clone(), shutdown.clone());
                    async move { broker.serve(listener, token).await }
                });
                tracing::debug!(%addr, "embedded broker serving other gateways");
                let php_task = embedded_broker_php.map(|php_listener| {
                    let (broker, token) = (broker.clone(), shutdown.clone());
                    tokio::spawn(async move { broker.serve_php(php_listener, token).await })
                });
                let carrier = EmbeddedBus::new(broker.clone(), &config);
                (
                    Box::new(move |hub, token| carrier.start(hub, token)) as StartBus,
                    Some(EmbeddedBroker {
                        broker,
                        task: Mutex::new(Some(task)),
                        php_task: Mutex::new(php_task),
                    }),
                )
            }
        };
        Gateway::launch(config, security, carrier, embedded, shutdown)
    }
}

/// A broker running in this process, its task and that of its PHP Channel listener.
#[derive(Debug)]
struct EmbeddedBroker {
    broker: Broker,
    task: Mutex<Option<JoinHandle<Result<(), BrokerError>>>>,
    php_task: Mutex<Option<JoinHandle<Result<(), BrokerError>>>>,
}

impl Gateway {
    /// Puts a gateway together; see [`GatewayBuilder`].
    pub fn builder(config: GatewayConfig) -> GatewayBuilder {
        GatewayBuilder {
            config,
            security: Security::default(),
            bus: BusChoice::None,
            embedded_broker_php: None,
        }
    }

    fn launch(
        config: Arc<GatewayConfig>,
        security: Security,
        start_bus: StartBus,
        embedded_broker: Option<EmbeddedBroker>,
        shutdown: CancellationToken,
    ) -> Result<Gateway, GatewayError> {
        let workers = config.worker_count();
        let (inbox_txs, inbox_rxs): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| mpsc::channel(config.worker_queue))
            .unzip();
        let router = Router::new(inbox_txs).with_max_groups(config.max_groups);
        let node = NodeId(fastrand::u64(1..));
        let cluster = Cluster::new(node, ClusterSettings::from_config(&config));
        let hub = Hub::with_history(
            router,
            cluster,
            HistoryRules::new(&config.history),
            config.history_timeout,
        );
        // The bus stops once the heartbeats said bye on it (a drop guard: also if they panic).
        let bus_shutdown = CancellationToken::new();
        let RunningBus {
            bus,
            task: bus_task,
        } = start_bus(hub.clone(), bus_shutdown.clone());
        hub.set_bus(bus);
        let client_tls = security.clients.tls.is_some();
        let client_security = Arc::new(security.clients);

        let mut handoff = Vec::with_capacity(workers);
        let mut threads = Vec::with_capacity(workers);
        let mut worker_stats = Vec::with_capacity(workers);
        for (id, inbox) in inbox_rxs.into_iter().enumerate() {
            let (tx, rx) = mpsc::channel(HANDOFF_QUEUE);
            let stats = Arc::new(WorkerStats::default());
            let spawned = worker::spawn(WorkerSetup {
                id,
                config: config.clone(),
                hub: hub.clone(),
                stats: stats.clone(),
                connections: rx,
                inbox,
                security: client_security.clone(),
                shutdown: shutdown.clone(),
            });
            match spawned {
                Ok(thread) => threads.push(thread),
                Err(e) => {
                    shutdown.cancel();
                    return Err(e.into());
                }
            }
            handoff.push(tx);
            worker_stats.push(stats);
        }
        tracing::info!(workers, node = %node, "gateway started");
        let inner = Arc::new_cyclic(|me: &std::sync::Weak<Inner>| {
            let (stats, addr) = (me.clone(), me.clone());
            let bus_stops = bus_shutdown.clone().drop_guard();
            let heartbeats = run_heartbeats(
                hub.clone(),
                move || {
                    stats.upgrade().map_or(0, |inner| {
                        inner
                            .worker_stats
                            .iter()
                            .map(|w| w.connections.load(Relaxed))
                            .sum()
                    })
                },
                move || {
                    addr.upgrade()
                        .and_then(|inner| inner.ws_addr.get().map(ToString::to_string))
                },
                shutdown.clone(),
            );
            tokio::spawn(async move {
                heartbeats.await;
                drop(bus_stops);
            });
            Inner {
                limits: Arc::new(ConnectionLimits::new(&config)),
                refusals: Arc::new(Semaphore::new(REFUSALS_IN_FLIGHT)),
                config,
                hub,
                worker_stats,
                handoff,
                threads: Mutex::new(threads),
                bus_task: Mutex::new(Some(bus_task)),
                embedded_broker,
                ws_addr: std::sync::OnceLock::new(),
                api_publishes: AtomicU64::new(0),
                admin_http: Arc::default(),
                client_tls,
                shutdown,
            }
        });
        Ok(Gateway { inner })
    }

    /// Accepts clients on `listener` and hands them to the workers in turn until shutdown, then
    /// waits for the workers (which close their clients with 1001) and the broker link. A
    /// client over a connection limit is refused here, before it reaches a worker.
    pub async fn serve(&self, listener: TcpListener) -> Result<(), GatewayError> {
        let inner = &self.inner;
        let _ = inner.ws_addr.set(listener.local_addr()?);
        let mut next = 0usize;
        loop {
            let accepted = tokio::select! {
                // Once shutdown begins, nothing more is accepted.
                biased;
                _ = inner.shutdown.cancelled() => break,
                accepted = listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let permit = match inner.limits.admit(peer.ip()) {
                Ok(permit) => permit,
                Err(refusal) => {
                    self.refuse(stream, peer, refusal);
                    continue;
                }
            };
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(%peer, cause = %e, "cannot hand off connection");
                    continue;
                }
            };
            let worker = next % inner.handoff.len();
            next = next.wrapping_add(1);
            if inner.handoff[worker]
                .send((stream, peer, permit))
                .await
                .is_err()
            {
                if !inner.shutdown.is_cancelled() {
                    tracing::error!(worker, "worker is gone; stopping");
                    inner.shutdown.cancel();
                }
                break;
            }
        }
        drop(listener);
        self.wait().await;
        Ok(())
    }

    /// Answers a connection over a limit `503 Service Unavailable` in the WebSocket handshake,
    /// on this task's runtime rather than a worker's. Bounded: at most [`REFUSALS_IN_FLIGHT`]
    /// at once, each for at most [`REFUSAL_TIMEOUT`]; past that the socket is just closed. So
    /// is it when clients use TLS: a TLS handshake would cost more than the refusal saves.
    fn refuse(&self, stream: TcpStream, peer: SocketAddr, refusal: Refusal) {
        tracing::debug!(%peer, reason = refusal.reason(), "connection refused");
        if self.inner.client_tls {
            return;
        }
        let Ok(slot) = self.inner.refusals.clone().try_acquire_owned() else {
            return;
        };
        let timeout = self.inner.config.handshake_timeout.min(REFUSAL_TIMEOUT);
        tokio::spawn(async move {
            let answer = tokio_tungstenite::accept_hdr_async(stream, refusal);
            let _ = tokio::time::timeout(timeout, answer).await;
            drop(slot);
        });
    }

    async fn wait(&self) {
        let threads = std::mem::take(&mut *self.inner.threads.lock());
        let join = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        });
        let deadline = self.inner.config.shutdown_timeout + Duration::from_secs(3);
        if tokio::time::timeout(deadline, join).await.is_err() {
            tracing::warn!("workers did not stop in time");
        }
        let bus_task = self.inner.bus_task.lock().take();
        if let Some(task) = bus_task {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
        let broker_tasks = self
            .inner
            .embedded_broker
            .as_ref()
            .map(|embedded| {
                [
                    ("embedded broker", embedded.task.lock().take()),
                    (
                        "embedded broker's PHP Channel server",
                        embedded.php_task.lock().take(),
                    ),
                ]
            })
            .into_iter()
            .flatten();
        for (what, task) in broker_tasks {
            let Some(task) = task else { continue };
            match tokio::time::timeout(Duration::from_secs(1), task).await {
                Ok(Ok(Err(e))) => tracing::error!(cause = %e, "{what} failed"),
                Ok(Err(e)) => tracing::error!(cause = %e, "{what} panicked"),
                Ok(Ok(Ok(()))) | Err(_) => {}
            }
        }
        tracing::info!("gateway stopped");
    }

    /// The address clients connect to (set once `serve` runs).
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.inner.ws_addr.get().copied()
    }

    /// True when clients connect with TLS (`wss://`).
    pub fn client_tls(&self) -> bool {
        self.inner.client_tls
    }

    /// True while messages flow to and from other gateways (the broker link is up).
    pub fn is_ready(&self) -> bool {
        self.inner.hub.bus().is_some_and(|bus| bus.status().up)
    }

    /// The router, the bus and the cluster API of this gateway.
    pub fn hub(&self) -> &Arc<Hub> {
        &self.inner.hub
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    /// Delivers `payload` to `group` exactly as a client's `send_to_group` does: to this
    /// process's members directly and to other gateways through the bus. Waits while a worker's
    /// inbox is full (backpressure), like a client's send.
    pub async fn publish(&self, group: &GroupName<'_>, payload: Text) {
        self.inner.api_publishes.fetch_add(1, Relaxed);
        self.inner.hub.publish(group, &payload).await;
    }

    /// [`Gateway::publish`], skipping the connections in `exclude`.
    pub async fn publish_excluding(
        &self,
        group: &GroupName<'_>,
        payload: Text,
        exclude: Vec<protocol::cluster::ClientId>,
    ) {
        self.inner.api_publishes.fetch_add(1, Relaxed);
        self.inner
            .hub
            .publish_excluding(group, &payload, exclude)
            .await;
    }

    /// [`Gateway::publish_excluding`] past the group's history, if it keeps one: not stored,
    /// delivered without a position (the admin API's `"history":false`).
    pub async fn publish_plain(
        &self,
        group: &GroupName<'_>,
        payload: Text,
        exclude: Vec<protocol::cluster::ClientId>,
    ) {
        self.inner.api_publishes.fetch_add(1, Relaxed);
        if exclude.is_empty() {
            self.inner.hub.publish_plain(group, &payload).await;
        } else {
            self.inner
                .hub
                .publish_excluding(group, &payload, exclude)
                .await;
        }
    }

    /// What the admin HTTP server serving this gateway counts (reported in its stats).
    pub fn admin_http_stats(&self) -> Arc<AdminHttpStats> {
        self.inner.admin_http.clone()
    }

    pub fn stats(&self) -> GatewaySnapshot {
        let workers: Vec<_> = self
            .inner
            .worker_stats
            .iter()
            .enumerate()
            .map(|(id, stats)| stats.snapshot(id))
            .collect();
        let limits = &self.inner.limits;
        let (connections_refused, connections_refused_per_ip) = limits.refused();
        GatewaySnapshot {
            connections: workers.iter().map(|w| w.connections).sum(),
            client_sockets: limits.open() as u64,
            client_addresses: limits.addresses() as u64,
            connections_refused,
            connections_refused_per_ip,
            groups: self.inner.hub.router().group_count() as u64,
            groups_refused: self.inner.hub.router().groups_refused(),
            memberships: workers.iter().map(|w| w.memberships).sum(),
            workers,
            api_publishes: self.inner.api_publishes.load(Relaxed),
            bus: self
                .inner
                .hub
                .bus()
                .map(|bus| bus.status())
                .unwrap_or_default(),
            embedded_broker: self
                .inner
                .embedded_broker
                .as_ref()
                .map(|e| e.broker.stats()),
            admin_http: self.inner.admin_http.snapshot(),
            cluster: ClusterSnapshot::of(self.inner.hub.cluster(), {
                let router = self.inner.hub.router();
                (router.subscription_count() - router.group_count()) as u64
            }),
            history: crate::stats::HistorySnapshot::of(&self.inner.hub.history_counters),
        }
    }
}

/// Binds the clients' listener. With `reuse_port`, `SO_REUSEPORT` lets several gateway
/// processes that all ask for it share the port (the kernel spreads connections over them);
/// without it, a port another process holds is an error (`AddrInUse`).
pub fn bind_client_listener(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(reuse_port)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}
