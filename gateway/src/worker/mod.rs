//! A worker: one OS thread with a single-threaded runtime that owns a share of the connections
//! and the local group table for them (no locks on the per-message path).
//!
//! The acceptor hands it sockets, each served by an [`edge::connection`] task; the
//! [`Router`](crate::fanout::hub::Router) hands it deliveries, which its
//! [`LocalGroups`](crate::fanout::local::LocalGroups) fan out to the members' outboxes.
//! [`state`]: what the worker's tasks share.

pub(crate) mod state;

use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;

use protocol::client::ParseLimits;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::GatewayConfig;
use crate::credentials::ClientSecurity;
use crate::edge::connection;
use crate::edge::frame_meter::FrameBudget;
use crate::edge::limits::{Permit, RateLimit};
use crate::edge::origin::OriginPolicy;
use crate::fanout::hub::{Hub, Work};
use crate::fanout::local::{publish_presence_events, LocalGroups};
use crate::stats::WorkerStats;
use state::WorkerState;

/// Deliveries taken from the inbox per wake-up.
const INBOX_BATCH: usize = 64;

/// An accepted socket, its peer, and its place in the connection limits (held until the
/// connection task ends).
pub(crate) type NewConnection = (std::net::TcpStream, SocketAddr, Permit);

/// Everything a worker thread needs.
#[derive(Debug)]
pub(crate) struct WorkerSetup {
    pub(crate) id: usize,
    pub(crate) config: Arc<GatewayConfig>,
    pub(crate) hub: Arc<Hub>,
    pub(crate) stats: Arc<WorkerStats>,
    pub(crate) connections: mpsc::Receiver<NewConnection>,
    pub(crate) inbox: mpsc::Receiver<Work>,
    pub(crate) security: Arc<ClientSecurity>,
    pub(crate) shutdown: CancellationToken,
}

pub(crate) fn spawn(setup: WorkerSetup) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name(format!("worker-{}", setup.id))
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(e) => {
                    tracing::error!(worker = setup.id, cause = %e, "cannot start worker runtime");
                    setup.shutdown.cancel();
                    return;
                }
            };
            let local = tokio::task::LocalSet::new();
            local.block_on(&runtime, run(setup));
        })
}

async fn run(setup: WorkerSetup) {
    let WorkerSetup {
        id,
        config,
        hub,
        stats,
        mut connections,
        mut inbox,
        security,
        shutdown,
    } = setup;
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(config.ws_read_buffer)
        .write_buffer_size(config.ws_write_buffer)
        // Only the library's own frames (pings, pongs, the close frame) pass through it: messages
        // are written as encoded frames beside it, and the outbox bounds what a connection holds.
        .max_write_buffer_size(config.ws_write_buffer + config.link_max_frame_size)
        .max_message_size(Some(config.max_message_size))
        .max_frame_size(Some(config.max_message_size));
    let (local, presence_events) = LocalGroups::new(
        id,
        config.max_groups_per_connection,
        config.outbound_queue_messages,
        hub.clone(),
        stats.clone(),
    );
    tokio::task::spawn_local(publish_presence_events(hub, presence_events));
    let state = Rc::new(WorkerState {
        id,
        parse_limits: ParseLimits {
            max_group_id_len: config.max_group_id_len,
            max_uid_len: config.max_uid_len,
            max_targets: config.max_targets,
            max_page_size: config.max_page_size,
        },
        ws_config,
        origins: OriginPolicy::new(&config.allowed_origins),
        rate_limit: RateLimit::from_config(&config),
        frame_budget: FrameBudget::new(config.max_control_frames_per_second),
        config,
        local,
        stats,
        security,
    });
    let tasks = TaskTracker::new();
    // Ends the handshakes in progress; cancelled only once the inbox is delivered, when the
    // established connections are told to flush and close (`LocalGroups::close_all`).
    let close_connections = CancellationToken::new();
    let mut batch = Vec::with_capacity(INBOX_BATCH);
    tracing::debug!(worker = id, "worker started");
    loop {
        tokio::select! {
            biased;
            _ = shutdown.cancelled() => break,
            // New sockets first: they are few and cheap, and under a steady fan-out the inbox
            // is never empty, so polled second they would wait forever.
            accepted = connections.recv() => match accepted {
                Some((stream, peer, permit)) => {
                    // Spawned as is: wrapping it in another async block would store the future
                    // twice in the task (rustc keeps both the capture and the awaited copy).
                    tasks.spawn_local(connection::serve(
                        stream,
                        peer,
                        permit,
                        state.clone(),
                        close_connections.clone(),
                    ));
                }
                None => break,
            },
            // Frames queued outside the batches (replies) for connections with nothing pending.
            _ = state.local.write_soon.raised() => state.local.write_direct(),
            n = inbox.recv_many(&mut batch, INBOX_BATCH) => {
                if n == 0 {
                    break;
                }
                for work in batch.drain(..) {
                    state.local.run(work);
                }
                // Each connection with nothing pending gets what this batch queued for it in
                // one write, from here; the others' tasks were woken.
                state.local.write_direct();
                // Let the connections write what was just queued before taking more: without
                // this a burst fills outboxes faster than their owners can drain them.
                tokio::task::yield_now().await;
            }
        }
    }
    // Sockets not picked up yet are closed (and their permits given back).
    drop(connections);
    // Deliver what the inbox already holds, so that the connections flush it before closing.
    // Closing it first stops new deliveries, which bounds this loop.
    inbox.close();
    while let Ok(work) = inbox.try_recv() {
        state.local.run(work);
    }
    close_connections.cancel();
    state.local.close_all();
    tasks.close();
    // Connections flush their queues and close with 1001 on their own; the deadline is theirs.
    // Their deadline is the flush (shutdown_timeout) plus the closing handshake (1 s): a
    // margin on top so that no connection is cut off before it has left its groups.
    let deadline = state.config.shutdown_timeout + std::time::Duration::from_secs(2);
    if tokio::time::timeout(deadline, tasks.wait()).await.is_err() {
        tracing::warn!(
            worker = id,
            open = tasks.len(),
            "worker stopped with connections still open"
        );
    }
    tracing::debug!(worker = id, "worker stopped");
}
