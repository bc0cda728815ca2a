//! Binding a listener with a readiness log line.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Binds a TCP listener and logs `message` with the bound address (the readiness signal tests
/// and scripts wait for).
pub async fn bind_logged(addr: SocketAddr, message: &'static str) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "{message}");
    Ok(listener)
}
