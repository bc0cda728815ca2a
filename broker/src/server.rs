//! [`Broker`]: the accept loop, and the handle through which the admin server and embedders read
//! the counters.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use server_kit::settings::ConfigError;
use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::BrokerSecurity;
use crate::config::BrokerConfig;
use crate::config::PhpListen;
use crate::link::serve_connection;
use crate::local::LocalLink;
use crate::php::serve_php_stream;
use crate::registry::{LinkId, LocalSubscriber};
use crate::state::Shared;
use crate::stats::StatsSnapshot;

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

/// A broker instance. Cheap to clone; clones share state.
#[derive(Debug, Clone)]
pub struct Broker {
    shared: Arc<Shared>,
}

impl Broker {
    pub fn new(config: BrokerConfig) -> Result<Broker, BrokerError> {
        Broker::with_security(config, BrokerSecurity::default())
    }

    /// A broker that requires what `security` says of its links (a secret, TLS).
    pub fn with_security(
        config: BrokerConfig,
        security: BrokerSecurity,
    ) -> Result<Broker, BrokerError> {
        config.validate()?;
        Ok(Broker {
            shared: Arc::new(Shared::new(config, security)),
        })
    }

    /// A subscriber in this process (the gateway that embeds the broker), served without a
    /// socket: see [`LocalLink`].
    pub fn local_link(&self, subscriber: Arc<dyn LocalSubscriber>) -> LocalLink {
        LocalLink::new(self.shared.clone(), subscriber)
    }

    pub fn stats(&self) -> StatsSnapshot {
        let history = &self.shared.history.counters;
        StatsSnapshot {
            history_channels: history.channels.load(Relaxed),
            history_messages: history.messages.load(Relaxed),
            history_bytes: history.bytes.load(Relaxed),
            history_evictions: history.evictions.load(Relaxed),
            ..self.shared.stats.snapshot()
        }
    }

    /// Whether PHP Channel clients are recognized on the link listener: `--php-channel shared`,
    /// and no TLS (PHP clients speak plain TCP).
    fn shares_port_with_php(&self) -> bool {
        self.shared.config.php.channel == PhpListen::Shared && self.shared.security.tls.is_none()
    }

    /// Accepts PHP Channel clients on a listener of their own (`--php-channel ADDR`) until
    /// `shutdown` is cancelled.
    pub async fn serve_php(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), BrokerError> {
        self.accept(
            listener,
            shutdown,
            "PHP Channel clients",
            |stream, peer, id, shared, shutdown| {
                serve_php_stream(stream, peer, id, shared, shutdown)
            },
        )
        .await;
        Ok(())
    }

    /// Accepts links on `listener` until `shutdown` is cancelled, then closes every link and
    /// waits (up to the configured shutdown timeout) for them to finish.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), BrokerError> {
        let php = self.shares_port_with_php();
        // Expired history goes even on channels no one publishes to any more.
        let shared = self.shared.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut sweep = tokio::time::interval(crate::history::HISTORY_SWEEP);
            loop {
                tokio::select! {
                    _ = sweep.tick() => shared.history.sweep(),
                    _ = stop.cancelled() => return,
                }
            }
        });
        self.accept(
            listener,
            shutdown,
            "links",
            move |stream, peer, id, shared, shutdown| async move {
                if php {
                    crate::sniff::serve_either(stream, peer, id, shared, shutdown).await
                } else {
                    serve_connection(stream, peer, id, shared, shutdown).await
                }
            },
        )
        .await;
        tracing::info!("broker stopped");
        Ok(())
    }

    /// The accept loop of a listener: each connection served by `serve` on a task of its own;
    /// at shutdown, the listener closed and the connections given the shutdown timeout.
    async fn accept<F, Fut>(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
        what: &'static str,
        serve: F,
    ) where
        F: Fn(TcpStream, SocketAddr, LinkId, Arc<Shared>, CancellationToken) -> Fut,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let tracker = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.cancelled() => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let id = self.shared.next_link_id();
                    tracker.spawn(serve(
                        stream,
                        peer,
                        id,
                        self.shared.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(cause = %e, what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        drop(listener);
        tracker.close();
        if tokio::time::timeout(self.shared.config.shutdown_timeout, tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                what,
                open = tracker.len(),
                "shutdown timeout: connections still open"
            );
        }
    }
}
