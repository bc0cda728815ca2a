//! Serving an admin HTTP router (axum) with the limits a server facing untrusted peers needs:
//! the admin port shares the process's file descriptors with everything else it serves, and it
//! is reached before any authentication. So: at most [`AdminHttpLimits::max_connections`] open
//! at once (more are closed at once), a request's header must arrive within
//! [`AdminHttpLimits::header_timeout`], a whole request (body read and answer) must finish within
//! [`AdminHttpLimits::request_timeout`] (else `408`). The header timeout also runs between the
//! requests of a kept-alive connection, so an idle one is closed after it. Each is counted in
//! [`AdminHttpStats`].

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode};
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

pub const DEFAULT_ADMIN_MAX_CONNECTIONS: usize = 64;
pub const DEFAULT_ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_ADMIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The `--admin` setting of both binaries: an address, or `off` (any case) for no admin server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminAddr(pub Option<std::net::SocketAddr>);

impl std::str::FromStr for AdminAddr {
    type Err = std::net::AddrParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.eq_ignore_ascii_case("off") {
            return Ok(AdminAddr(None));
        }
        s.parse().map(|addr| AdminAddr(Some(addr)))
    }
}

/// How long open connections may take to finish once shutdown begins.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The admin server's limits; each binary exposes them as `--admin-*` settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdminHttpLimits {
    pub max_connections: usize,
    pub header_timeout: Duration,
    pub request_timeout: Duration,
}

impl Default for AdminHttpLimits {
    fn default() -> Self {
        AdminHttpLimits {
            max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
            header_timeout: DEFAULT_ADMIN_HEADER_TIMEOUT,
            request_timeout: DEFAULT_ADMIN_REQUEST_TIMEOUT,
        }
    }
}

/// What the admin server refused or cut off, for `/metrics`.
#[derive(Debug, Default)]
pub struct AdminHttpStats {
    /// Connections open now.
    pub connections: AtomicU64,
    /// Connections closed at once because `max_connections` were open.
    pub connections_refused: AtomicU64,
    /// Connections closed because a request's header did not arrive within the header timeout
    /// (idle kept-alive connections included).
    pub connections_timed_out: AtomicU64,
    /// Requests answered `408` because they took longer than the request timeout.
    pub requests_timed_out: AtomicU64,
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// Serves `router` on `listener` until `shutdown`, within `limits`, counting in `stats`.
pub async fn serve_admin(
    listener: TcpListener,
    router: axum::Router,
    limits: AdminHttpLimits,
    stats: Arc<AdminHttpStats>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(cause = %e, "admin accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            stats.connections_refused.fetch_add(1, Relaxed);
            tracing::debug!(%peer, "admin connection refused: too many open");
            continue;
        };
        let router = router.clone();
        let stats = stats.clone();
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            stats.connections.fetch_add(1, Relaxed);
            serve_connection(stream, router, limits, &stats, shutdown).await;
            stats.connections.fetch_sub(1, Relaxed);
            drop(slot);
        });
    }
    connections.close();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, connections.wait()).await;
    Ok(())
}

async fn serve_connection(
    stream: tokio::net::TcpStream,
    router: axum::Router,
    limits: AdminHttpLimits,
    stats: &Arc<AdminHttpStats>,
    shutdown: CancellationToken,
) {
    let request_stats = stats.clone();
    let service = hyper::service::service_fn(move |request: Request<Incoming>| {
        let router = router.clone();
        let stats = request_stats.clone();
        let answer: BoxFuture = Box::pin(async move {
            match tokio::time::timeout(limits.request_timeout, router.oneshot(request)).await {
                Ok(answer) => answer,
                Err(_) => {
                    stats.requests_timed_out.fetch_add(1, Relaxed);
                    Ok((StatusCode::REQUEST_TIMEOUT, "request timed out").into_response())
                }
            }
        });
        answer
    });
    // The header timeout runs from the moment hyper waits for a request's head, between
    // requests too: it is also the idle timeout of kept-alive connections.
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        _ = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            match tokio::time::timeout(SHUTDOWN_GRACE, connection.as_mut()).await {
                Ok(result) => result,
                Err(_) => return,
            }
        }
    };
    if let Err(e) = result {
        if e.is_timeout() {
            stats.connections_timed_out.fetch_add(1, Relaxed);
        }
        tracing::debug!(cause = %e, "admin connection ended");
    }
}

/// [`AdminHttpStats`] read at one moment, for `/api/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AdminHttpSnapshot {
    pub connections: u64,
    pub connections_refused: u64,
    pub connections_timed_out: u64,
    pub requests_timed_out: u64,
}

impl AdminHttpStats {
    pub fn snapshot(&self) -> AdminHttpSnapshot {
        AdminHttpSnapshot {
            connections: self.connections.load(Relaxed),
            connections_refused: self.connections_refused.load(Relaxed),
            connections_timed_out: self.connections_timed_out.load(Relaxed),
            requests_timed_out: self.requests_timed_out.load(Relaxed),
        }
    }
}

impl AdminHttpSnapshot {
    /// The `<prefix>_admin_*` families of `/metrics`.
    pub fn encode(
        &self,
        prefix: &str,
        encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> std::fmt::Result {
        use crate::metrics::{counter, gauge};
        let name = |what: &str| format!("{prefix}_admin_{what}");
        gauge(
            encoder,
            &name("connections"),
            "Admin HTTP connections open.",
            self.connections,
        )?;
        counter(
            encoder,
            &name("connections_refused"),
            "Admin HTTP connections closed at once: --admin-max-connections were open.",
            self.connections_refused,
        )?;
        counter(
            encoder,
            &name("connections_timed_out"),
            "Admin HTTP connections closed: no request header in time, or idle too long.",
            self.connections_timed_out,
        )?;
        counter(
            encoder,
            &name("requests_timed_out"),
            "Admin HTTP requests answered 408: over --admin-request-timeout.",
            self.requests_timed_out,
        )
    }
}
