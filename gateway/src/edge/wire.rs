//! A connection's end of its socket: the WebSocket library's stream while it has something to
//! do, or only the socket while the connection rests.
//!
//! The library's stream holds a read buffer (`--ws-read-buffer`, allocated whole at its start)
//! and its own state, most of what an idle connection would hold (BENCHMARKS.md). Once a read
//! finds nothing, the library holds nothing either when every byte read so far belonged to a
//! whole frame, no fragmented message is open ([`FrameMeter::at_rest`]) and none of its own
//! frames waits to be written (a pong it could not write): the connection then drops the stream
//! and keeps the socket ([`Wire::rest`]). The stream is made anew, with no I/O, when the socket
//! is readable again, or when the connection pings or closes ([`Wire::open`]). The fan-out's
//! frames never need it: they are written to the socket beneath the library.

use std::io;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use crate::edge::frame_meter::FrameMeter;
use crate::edge::socket::SharedTcp;
use crate::worker::state::WorkerState;

/// The library's stream over a metered socket.
pub(crate) type Ws<X> = WebSocketStream<FrameMeter<X>>;

/// See the module docs. Resting connections are counted in the worker's `connections_resting`.
pub(crate) struct Wire<X> {
    end: End<X>,
    state: Rc<WorkerState>,
}

enum End<X> {
    /// Boxed: a resting connection keeps none of its room.
    Open(Box<Ws<X>>),
    Resting(FrameMeter<X>),
    /// Left only if making the stream anew did not complete at once (it takes no I/O, so it
    /// does): the connection then ends as if the client had gone.
    Gone,
}

impl<X: AsyncRead + AsyncWrite + ReadReady + Unpin> Wire<X> {
    pub(crate) fn new(ws: Ws<X>, state: Rc<WorkerState>) -> Wire<X> {
        Wire {
            end: End::Open(Box::new(ws)),
            state,
        }
    }

    /// The library's stream, made anew if the connection rested.
    pub(crate) fn open(&mut self) -> io::Result<&mut Ws<X>> {
        if let End::Resting(_) = self.end {
            if let End::Resting(socket) = std::mem::replace(&mut self.end, End::Gone) {
                self.state.stats.connections_resting.fetch_sub(1, Relaxed);
                let config = Some(self.state.ws_config);
                let ws = WebSocketStream::from_raw_socket(socket, Role::Server, config);
                if let Some(ws) = ws.now_or_never() {
                    self.end = End::Open(Box::new(ws));
                }
            }
        }
        match &mut self.end {
            End::Open(ws) => Ok(ws),
            End::Resting(_) | End::Gone => Err(gone()),
        }
    }

    /// The library's stream if it is open: it may hold a frame of its own to write.
    pub(crate) fn if_open(&mut self) -> Option<&mut Ws<X>> {
        match &mut self.end {
            End::Open(ws) => Some(ws),
            End::Resting(_) | End::Gone => None,
        }
    }

    /// Drops the library's stream if it holds nothing. Called when a read found nothing.
    /// `pong_due`: the connection read a ping since the library last flushed. The library writes
    /// the pong at its next read, before reading: if that write completed, nothing is left.
    pub(crate) fn rest(&mut self, pong_due: bool) {
        let idle = |ws: &Ws<X>| {
            let meter = ws.get_ref();
            meter.at_rest() && (!pong_due || meter.writes_done())
        };
        if matches!(&self.end, End::Open(ws) if idle(ws)) {
            if let End::Open(ws) = std::mem::replace(&mut self.end, End::Gone) {
                self.end = End::Resting(ws.into_inner());
                self.state.stats.connections_resting.fetch_add(1, Relaxed);
            }
        }
    }

    /// The socket beneath the library, for the connection's own frames.
    pub(crate) fn socket(&mut self) -> io::Result<&mut FrameMeter<X>> {
        match &mut self.end {
            End::Open(ws) => Ok(ws.get_mut()),
            End::Resting(socket) => Ok(socket),
            End::Gone => Err(gone()),
        }
    }

    /// Whether the socket has bytes to read, asked without reading them.
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match &self.end {
            End::Open(ws) => ws.get_ref().get_ref().poll_read_ready(cx),
            End::Resting(socket) => socket.get_ref().poll_read_ready(cx),
            End::Gone => Poll::Ready(Err(gone())),
        }
    }
}

impl<X> Wire<X> {
    /// Lets the socket go (the connection has ended).
    pub(crate) fn finish(&mut self) {
        if let End::Resting(_) = std::mem::replace(&mut self.end, End::Gone) {
            self.state.stats.connections_resting.fetch_sub(1, Relaxed);
        }
    }
}

impl<X> Drop for Wire<X> {
    fn drop(&mut self) {
        self.finish();
    }
}

fn gone() -> io::Error {
    io::Error::new(
        io::ErrorKind::NotConnected,
        "the connection's stream is gone",
    )
}

/// What the connection asks of the socket under the WebSocket library.
pub(crate) trait ReadReady {
    /// Whether it has bytes to read, asked without reading them.
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>>;

    /// The socket, for the fan-out's direct writes; `None` for TLS (see [`SharedTcp`]).
    fn shared(&self) -> Option<Rc<TcpStream>>;
}

impl ReadReady for SharedTcp {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.0.poll_read_ready(cx)
    }

    fn shared(&self) -> Option<Rc<TcpStream>> {
        Some(self.0.clone())
    }
}

impl ReadReady for TlsStream<TcpStream> {
    fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_ref().0.poll_read_ready(cx)
    }

    fn shared(&self) -> Option<Rc<TcpStream>> {
        None
    }
}
