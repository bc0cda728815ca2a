//! Binding listeners, with or without a readiness log line.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Binds a TCP listener and logs `message` with the bound address (the readiness signal tests
/// and scripts wait for).
pub async fn bind_logged(addr: SocketAddr, message: &'static str) -> std::io::Result<TcpListener> {
    let listener = TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "{message}");
    Ok(listener)
}

/// Binds a TCP listener without a word: for a process that binds every address before it says
/// it listens on any.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}
