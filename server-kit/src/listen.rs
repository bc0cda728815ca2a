//! Listeners: binding with a readiness log line, and serving an admin HTTP router.

use std::net::SocketAddr;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// Serves an admin router on `listener` until `shutdown`.
pub async fn serve_admin(
    listener: TcpListener,
    router: axum::Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

/// Binds a TCP listener and logs `message` with the bound address (the readiness signal tests
/// and scripts wait for).
pub async fn bind_logged(addr: SocketAddr, message: &'static str) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "{message}");
    Ok(listener)
}
