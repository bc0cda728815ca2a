//! Starting and stopping a gateway: worker threads, the bus, the accept loop.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use protocol::GroupName;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_util::sync::CancellationToken;

use crate::bus::broker_link::BrokerBus;
use crate::bus::Bus;
use crate::config::GatewayConfig;
use crate::hub::{Hub, Router};
use crate::stats::{GatewaySnapshot, WorkerStats};
use crate::worker::{self, NewConnection, WorkerSetup};

/// Sockets waiting to be picked up by one worker.
const HANDOFF_QUEUE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
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
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    bus_task: Mutex<Option<JoinHandle<()>>>,
    embedded_broker: Option<broker::Broker>,
    /// Where clients connect, once `serve` has been called.
    ws_addr: std::sync::OnceLock<SocketAddr>,
    /// Messages published through [`Gateway::publish`].
    api_publishes: AtomicU64,
    shutdown: CancellationToken,
}

impl Gateway {
    /// Starts the workers and the broker link (connecting to `broker`, "host:port"). Must be
    /// called within a tokio runtime, which runs the link. `embedded_broker`, when the broker runs
    /// in this process, is only reported in the stats.
    pub fn start(
        config: GatewayConfig,
        broker: String,
        embedded_broker: Option<broker::Broker>,
        shutdown: CancellationToken,
    ) -> Result<Gateway, GatewayError> {
        config.validate().map_err(GatewayError::Config)?;
        let config = Arc::new(config);
        let workers = config.worker_count();
        let (inbox_txs, inbox_rxs): (Vec<_>, Vec<_>) = (0..workers)
            .map(|_| mpsc::channel(config.worker_queue))
            .unzip();
        let router = Arc::new(Router::new(inbox_txs));
        let (bus, bus_task) = BrokerBus::start(broker, &config, router.clone(), shutdown.clone());
        let hub = Arc::new(Hub::new(router, bus as Arc<dyn Bus>));

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
        tracing::info!(workers, "gateway started");
        Ok(Gateway {
            inner: Arc::new(Inner {
                config,
                hub,
                worker_stats,
                handoff,
                threads: Mutex::new(threads),
                bus_task: Mutex::new(Some(bus_task)),
                embedded_broker,
                ws_addr: std::sync::OnceLock::new(),
                api_publishes: AtomicU64::new(0),
                shutdown,
            }),
        })
    }

    /// Accepts clients on `listener` and hands them to the workers in turn until shutdown, then
    /// waits for the workers (which close their clients with 1001) and the broker link.
    pub async fn serve(&self, listener: TcpListener) -> Result<(), GatewayError> {
        let inner = &self.inner;
        let _ = inner.ws_addr.set(listener.local_addr()?);
        let mut next = 0usize;
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = inner.shutdown.cancelled() => break,
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
            let stream = match stream.into_std() {
                Ok(stream) => stream,
                Err(e) => {
                    tracing::warn!(%peer, cause = %e, "cannot hand off connection");
                    continue;
                }
            };
            let worker = next % inner.handoff.len();
            next = next.wrapping_add(1);
            if inner.handoff[worker].send((stream, peer)).await.is_err() {
                tracing::error!(worker, "worker is gone; stopping");
                inner.shutdown.cancel();
                break;
            }
        }
        drop(listener);
        self.wait().await;
        Ok(())
    }

    async fn wait(&self) {
        let threads = std::mem::take(&mut *self.inner.threads.lock());
        let join = tokio::task::spawn_blocking(move || {
            for thread in threads {
                let _ = thread.join();
            }
        });
        let deadline = self.inner.config.shutdown_timeout + Duration::from_secs(2);
        if tokio::time::timeout(deadline, join).await.is_err() {
            tracing::warn!("workers did not stop in time");
        }
        let bus_task = self.inner.bus_task.lock().take();
        if let Some(task) = bus_task {
            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
        }
        tracing::info!("gateway stopped");
    }

    /// The address clients connect to (set once `serve` runs).
    pub fn ws_addr(&self) -> Option<SocketAddr> {
        self.inner.ws_addr.get().copied()
    }

    /// True while messages flow to and from other gateways (the broker link is up).
    pub fn is_ready(&self) -> bool {
        self.inner.hub.bus().status().up
    }

    pub fn config(&self) -> &GatewayConfig {
        &self.inner.config
    }

    /// Delivers `payload` to `group` exactly as a client's `send_to_group` does: to this
    /// process's members directly and to other gateways through the bus. Waits while a worker's
    /// inbox is full (backpressure), like a client's send.
    pub async fn publish(&self, group: &GroupName<'_>, payload: Utf8Bytes) {
        self.inner.api_publishes.fetch_add(1, Relaxed);
        self.inner.hub.publish(group.as_str(), &payload).await;
    }

    pub fn stats(&self) -> GatewaySnapshot {
        let workers: Vec<_> = self
            .inner
            .worker_stats
            .iter()
            .enumerate()
            .map(|(id, stats)| stats.snapshot(id))
            .collect();
        GatewaySnapshot {
            connections: workers.iter().map(|w| w.connections).sum(),
            groups: self.inner.hub.router().group_count() as u64,
            memberships: workers.iter().map(|w| w.memberships).sum(),
            workers,
            api_publishes: self.inner.api_publishes.load(Relaxed),
            broker_link: self.inner.hub.bus().status(),
            embedded_broker: self.inner.embedded_broker.as_ref().map(|b| b.stats()),
        }
    }
}

/// Binds a listener with SO_REUSEPORT, so several gateway processes can share one port (the
/// kernel spreads connections over them).
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}
