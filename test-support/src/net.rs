//! Addresses for tests: every listener on port 0, so that tests run in parallel.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use anyhow::{Context, Result};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::RECV_TIMEOUT;

/// `127.0.0.1:0`: for a child process to bind (it logs the port it got).
pub const ANY_PORT: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);

/// A listener on `127.0.0.1` and a port the system chose.
pub async fn listener() -> Result<TcpListener> {
    TcpListener::bind(ANY_PORT)
        .await
        .context("cannot bind 127.0.0.1:0")
}

/// An address where nothing listens: connections to it are refused. (The port was free a moment
/// ago; nothing in the tests binds a fixed port, so it stays free.)
pub async fn refused_addr() -> Result<SocketAddr> {
    let listener = listener().await?;
    Ok(listener.local_addr()?)
}

/// `127.0.0.last`: any address of 127.0.0.0/8 is a distinct client address on loopback.
pub fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// How a test's TCP connection is set up before it connects.
#[derive(Debug, Clone, Copy, Default)]
pub struct SocketOptions {
    /// The local address to connect from (any of 127.0.0.0/8 on loopback).
    pub from: Option<IpAddr>,
    /// A receive buffer this small (bytes), so that the kernel holds little for a client that
    /// does not read.
    pub recv_buffer: Option<u32>,
}

/// Connects to `to` with `options`, within [`RECV_TIMEOUT`].
pub async fn connect(to: SocketAddr, options: SocketOptions) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    if let Some(size) = options.recv_buffer {
        socket.set_recv_buffer_size(size)?;
    }
    if let Some(from) = options.from {
        socket
            .bind(SocketAddr::new(from, 0))
            .with_context(|| format!("cannot bind {from}"))?;
    }
    tokio::time::timeout(RECV_TIMEOUT, socket.connect(to))
        .await
        .with_context(|| format!("connecting to {to} timed out"))?
        .with_context(|| format!("cannot connect to {to}"))
}
