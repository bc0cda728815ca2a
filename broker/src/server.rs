//! [`Broker`]: the accept loop, and the handle through which the admin server and embedders read
//! the counters.

use std::sync::Arc;
use std::time::Duration;

use server_kit::settings::ConfigError;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::BrokerSecurity;
use crate::config::BrokerConfig;
use crate::link::serve_connection;
use crate::local::LocalLink;
use crate::registry::LocalSubscriber;
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
        self.shared.stats.snapshot()
    }

    /// Accepts links on `listener` until `shutdown` is cancelled, then closes every link and
    /// waits (up to the configured shutdown timeout) for them to finish.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), BrokerError> {
        let tracker = TaskTracker::new();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                _ = shutdown.cancelled() => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let id = self.shared.next_link_id();
                    tracker.spawn(serve_connection(
                        stream,
                        peer,
                        id,
                        self.shared.clone(),
                        shutdown.clone(),
                    ));
                }
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::error!(cause = %e, "accept failed");
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
            tracing::warn!(links = tracker.len(), "shutdown timeout: links still open");
        }
        tracing::info!("broker stopped");
        Ok(())
    }
}
