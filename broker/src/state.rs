//! The state every link shares: settings, the channel registry, the counters, link security,
//! and the source of link ids. [`crate::server`] creates it; [`crate::link`] reads it.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use crate::auth::BrokerSecurity;
use crate::config::BrokerConfig;
use crate::php::hub::PhpHub;
use crate::registry::{LinkId, Registry};
use crate::stats::BrokerStats;

#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) config: BrokerConfig,
    pub(crate) registry: Registry,
    /// PHP Channel clients' channels and queues.
    pub(crate) php: Arc<PhpHub>,
    pub(crate) stats: Arc<BrokerStats>,
    pub(crate) security: BrokerSecurity,
    next_link: AtomicU64,
}

impl Shared {
    /// State for a broker with a validated `config`.
    pub(crate) fn new(config: BrokerConfig, security: BrokerSecurity) -> Shared {
        let stats = Arc::new(BrokerStats::default());
        let php = Arc::new(PhpHub::new(
            stats.clone(),
            config.max_frame_size,
            config.php.queue_max_items,
        ));
        Shared {
            registry: Registry::with_php(stats.clone(), config.max_frame_size, php.clone()),
            php,
            config,
            stats,
            security,
            next_link: AtomicU64::new(1),
        }
    }

    /// A link id never handed out before by this broker.
    pub(crate) fn next_link_id(&self) -> LinkId {
        LinkId(self.next_link.fetch_add(1, Relaxed))
    }
}
