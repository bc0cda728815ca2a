//! One client connection: WebSocket handshake (after a TLS one with `--tls-cert`), then a single
//! task that reads commands, writes what its outbox holds (what the worker could not write to
//! the socket itself, see [`Outbox::write_direct`]; several frames per `writev`),
//! pings, and closes with a code that says why (docs/protocol.md lists them).
//!
//! Past the handshake the code is generic over the stream, so plain TCP pays nothing for TLS.
//! With `--require-join-token`, each join and send is checked against the connection's
//! [`Access`] (its join token's rights).

use std::cell::Cell;
use std::future::Future;
use std::io::IoSlice;
use std::net::SocketAddr;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::client::{close_code, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cmd::{Later, Session};
use crate::edge::join_token::{Access, CaptureToken};

use crate::edge::frame_meter::{FrameFlood, FrameMeter};
use crate::edge::limits::{Permit, RateLimiter, Verdict};
use crate::edge::socket::SharedTcp;
use crate::edge::wire::{ReadReady, Wire, Ws};
use crate::fanout::frame::{Frames, FRAMES_PER_WRITE};
use crate::fanout::outbox::Outbox;
use crate::worker::state::WorkerState;

/// Time allowed for the closing handshake before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

/// A client's upgraded connection, and the join token from its URL if it had one.
#[expect(
    clippy::large_enum_variant,
    reason = "boxing the plain variant would cost plain connections an allocation; the TLS one \
              is over a kilobyte, which plain connections' tasks must not carry"
)]
enum Accepted {
    Plain(Ws<SharedTcp>, Option<String>),
    Tls(Box<Ws<TlsStream<TcpStream>>>, Option<String>),
}

/// Why a handshake failed (logged at debug level and counted; the client sees its socket close).
#[derive(Debug, thiserror::Error)]
enum HandshakeError {
    #[error("socket: {0}")]
    Socket(std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Tls(std::io::Error),
    #[error("WebSocket upgrade failed: {0}")]
    Upgrade(WsError),
    #[error("no handshake within {0:?}")]
    Timeout(Duration),
    #[error("shutting down")]
    ShuttingDown,
}

/// Why a connection ended.
#[derive(Debug)]
enum Close {
    /// The client closed or vanished.
    ClientGone,
    Shutdown,
    SlowConsumer,
    Idle,
    /// Rate-limited too often (`--rate-limit-strikes`).
    RateLimited,
    /// Over `--max-control-frames-per-second`.
    FrameFlood(FrameFlood),
    /// A WebSocket-level violation: close code and reason.
    Violation(u16, String),
    /// Closed by an order (the admin API's `close_client`): code and reason.
    Ordered(u16, String),
}

/// Serves one client socket until it closes. `permit` holds its place in the connection limits
/// and is given back when this ends, whichever way.
///
/// Not an `async fn`: the task is this future, and an `async fn` would keep a copy of each
/// argument beside the one the block below moves in. The connection's state lives once in the
/// task ([`Live`]), built in one step after the handshake and served through `&mut`, so that no
/// value is kept twice across an await (BENCHMARKS.md, "Where an idle connection's memory goes").
pub(crate) fn serve(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: Permit,
    state: Rc<WorkerState>,
    shutdown: CancellationToken,
) -> impl Future<Output = ()> {
    let conn = state.local.next_conn_id();
    let span = tracing::debug_span!("conn", worker = state.id, conn, %peer);
    async move {
        let _permit = &permit;
        // A handshake still in progress when shutdown begins is dropped.
        // Boxed: the handshake's state is large and only needed once; the connection's task
        // keeps its own size for as long as the connection lives.
        let handshake = async {
            tokio::select! {
                ws = handshake(stream, &state) => ws,
                _ = shutdown.cancelled() => Err(HandshakeError::ShuttingDown),
            }
        };
        // Built within this statement: the handshake's result is not kept beside it.
        let mut live = match Box::pin(handshake).await {
            Err(cause) => {
                state.stats.handshake_failures.fetch_add(1, Relaxed);
                tracing::debug!(%cause, "handshake failed");
                return;
            }
            Ok(Accepted::Plain(ws, url_token)) => {
                Live::Plain(Established::new(ws, conn, &state, url_token))
            }
            // Boxed, like the TLS handshake: plain connections' tasks stay their own size.
            Ok(Accepted::Tls(ws, url_token)) => {
                Live::Tls(Box::new(Established::new(*ws, conn, &state, url_token)))
            }
        };
        match &mut live {
            Live::Plain(established) => established.serve().await,
            Live::Tls(established) => Box::pin(established.serve()).await,
        }
    }
    .instrument(span)
}

/// An upgraded connection, plain or over TLS.
enum Live {
    Plain(Established<SharedTcp>),
    Tls(Box<Established<TlsStream<TcpStream>>>),
}

/// An upgraded connection: its end of the socket and what it serves it with.
struct Established<X> {
    wire: Wire<X>,
    connection: Connection,
}

impl<X: AsyncRead + AsyncWrite + ReadReady + Unpin> Established<X> {
    /// Registers the connection with its worker (it receives from here on).
    fn new(
        ws: Ws<X>,
        conn: u64,
        state: &Rc<WorkerState>,
        url_token: Option<String>,
    ) -> Established<X> {
        let access = Access::new(state.security.join_tokens.as_ref(), url_token.as_deref());
        if let Access::Refused(reason) = &access {
            tracing::debug!(%reason, "join token in the URL refused");
        }
        state.stats.connections.fetch_add(1, Relaxed);
        state.stats.connections_total.fetch_add(1, Relaxed);
        let outbox = Outbox::new(
            state.config.outbound_queue_messages,
            state.config.outbound_queue_bytes,
        );
        if let Some(socket) = ws.get_ref().get_ref().shared() {
            outbox.attach(socket);
            // The handshake's response is written: nothing is pending.
            outbox.set_direct(true);
        }
        let client = state.local.register(conn, outbox);
        let connection = Connection {
            session: Session::new(client, access, state.clone()),
            rate: RateLimiter::new(Instant::now()),
            state: state.clone(),
            unwritten: Unwritten::default(),
        };
        Established {
            wire: Wire::new(ws, state.clone()),
            connection,
        }
    }

    /// Serves the connection until it closes (or its worker stops: then it is woken, and finds
    /// [`LocalGroups::closing`](crate::fanout::local::LocalGroups::closing) set).
    async fn serve(&mut self) {
        let Established { wire, connection } = self;
        let close = connection.run(wire).await;
        // From here the library writes (the close frame): no frame may go to the socket beside it.
        connection.session.client.outbox.set_direct(false);
        connection.session.leave_all();
        let Connection {
            state, unwritten, ..
        } = connection;
        let stats = &state.stats;
        match close {
            Close::ClientGone => {}
            Close::Shutdown => close_with(wire, unwritten, 1001, "server shutting down").await,
            Close::SlowConsumer => {
                stats.slow_consumer_closes.fetch_add(1, Relaxed);
                tracing::info!("closing slow consumer");
                close_with(wire, unwritten, close_code::SLOW_CONSUMER, "slow consumer").await;
            }
            Close::Idle => {
                stats.idle_closes.fetch_add(1, Relaxed);
                close_with(wire, unwritten, close_code::IDLE_TIMEOUT, "idle timeout").await;
            }
            Close::RateLimited => {
                stats.rate_limit_closes.fetch_add(1, Relaxed);
                tracing::info!("closing for sustained rate-limit abuse");
                close_with(wire, unwritten, 1008, "rate limit exceeded").await;
            }
            Close::FrameFlood(flood) => {
                stats.rate_limit_closes.fetch_add(1, Relaxed);
                tracing::info!(cause = %flood, "closing for a flood of control frames");
                close_with(wire, unwritten, 1008, "too many control frames").await;
            }
            Close::Violation(code, reason) => {
                stats.protocol_closes.fetch_add(1, Relaxed);
                tracing::debug!(code, %reason, "closing on protocol violation");
                close_with(wire, unwritten, code, &reason).await;
            }
            Close::Ordered(code, reason) => {
                tracing::info!(code, %reason, "closing as ordered through the admin API");
                close_with(wire, unwritten, code, &reason).await;
            }
        }
        // Not counted as resting once it is not counted as open.
        wire.finish();
        stats.connections.fetch_sub(1, Relaxed);
    }
}

/// The TLS handshake (with a certificate) and the WebSocket upgrade, within one deadline.
async fn handshake(
    stream: std::net::TcpStream,
    state: &WorkerState,
) -> Result<Accepted, HandshakeError> {
    let stream = TcpStream::from_std(stream).map_err(HandshakeError::Socket)?;
    let _ = stream.set_nodelay(true);
    let accept = async {
        match &state.security.tls {
            None => {
                let (ws, url_token) = upgrade(SharedTcp(Rc::new(stream)), state).await?;
                Ok(Accepted::Plain(ws, url_token))
            }
            // Boxed: a TLS stream is over a kilobyte, which plain connections' tasks need not
            // carry.
            Some(tls) => {
                Box::pin(async {
                    let stream = tls.accept(stream).await.map_err(HandshakeError::Tls)?;
                    let (ws, url_token) = upgrade(stream, state).await?;
                    Ok(Accepted::Tls(Box::new(ws), url_token))
                })
                .await
            }
        }
    };
    match tokio::time::timeout(state.config.handshake_timeout, accept).await {
        Ok(accepted) => accepted,
        Err(_) => Err(HandshakeError::Timeout(state.config.handshake_timeout)),
    }
}

/// The WebSocket upgrade, with the Origin check; also reads the join token from the URL.
async fn upgrade<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    state: &WorkerState,
) -> Result<(Ws<S>, Option<String>), HandshakeError> {
    let check_origin = state.origins.callback(&state.stats.origin_rejections);
    let mut url_token = None;
    let callback = CaptureToken::new(&mut url_token, check_origin);
    let stream = FrameMeter::new(stream, state.frame_budget);
    let mut ws =
        tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(state.ws_config))
            .await
            .map_err(HandshakeError::Upgrade)?;
    ws.get_mut().start();
    Ok((ws, url_token))
}

async fn close_with<X: AsyncRead + AsyncWrite + ReadReady + Unpin>(
    wire: &mut Wire<X>,
    unwritten: &mut Unwritten,
    code: u16,
    reason: &str,
) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from(reason),
    };
    // Boxed, as it runs once: idle connections do not carry its state.
    let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, async {
        // The rest of a frame begun goes first: the close frame must not cut into it.
        if let Some(rest) = unwritten.frames.begun() {
            let Ok(socket) = wire.socket() else { return };
            if socket.write_all(rest).await.is_err() {
                return;
            }
        }
        let Ok(ws) = wire.open() else { return };
        if ws.close(Some(frame)).await.is_err() {
            return;
        }
        // Wait for the client's half of the closing handshake.
        while let Some(Ok(_)) = ws.next().await {}
    }))
    .await;
}

struct Connection {
    session: Session,
    rate: RateLimiter,
    state: Rc<WorkerState>,
    unwritten: Unwritten,
}

/// What the connection took from its outbox and has not written yet. The frames are written
/// to the socket as they are (encoded once per worker, see [`frame`](crate::fanout::frame)),
/// beside the WebSocket library, which writes its own (pongs, our pings, the close frame): so a
/// frame of one may never be cut by a frame of the other.
#[derive(Debug, Default)]
struct Unwritten {
    frames: Frames,
    /// The library may hold a frame of its own not yet written (a pong to a ping just read):
    /// it is flushed before our next frames.
    library: bool,
}

impl Connection {
    async fn run<X: AsyncRead + AsyncWrite + ReadReady + Unpin>(
        &mut self,
        wire: &mut Wire<X>,
    ) -> Close {
        let config = self.state.config.clone();
        let client = self.session.client.clone();
        let outbox = &client.outbox;
        let mut last_heard = Instant::now();
        let mut next_ping = last_heard + config.ping_interval;
        let timer = tokio::time::sleep_until(next_ping.min(last_heard + config.idle_timeout));
        tokio::pin!(timer);
        // A cluster query's reply being gathered: the connection writes meanwhile, and reads
        // its next frame once it is answered (commands stay in order).
        let mut later: Option<Later> = None;
        // The last read found nothing: read again once the socket is readable (`next_frame`).
        let mut read_all = false;
        loop {
            tokio::select! {
                biased;
                _ = outbox.wake.raised() => {
                    if self.state.local.closing() {
                        // Deliver what is already queued, within the shutdown deadline.
                        let write = write_outbox(wire, outbox, &mut self.unwritten, config.write_timeout);
                        // Boxed, as it runs once: idle connections do not carry its state.
                        let _ = Box::pin(tokio::time::timeout(config.shutdown_timeout, write)).await;
                        return Close::Shutdown;
                    }
                    // Boxed: the connection writes only what the worker could not (a full socket,
                    // a frame begun), and idle connections' tasks need no room for it.
                    if let Err(close) = Box::pin(self.write(wire)).await {
                        return close;
                    }
                }
                reply = async { later.as_mut().expect("polled only while set").await }, if later.is_some() => {
                    later = None;
                    self.session.reply_later(reply);
                }
                message = next_frame(wire, &mut read_all, self.unwritten.library), if later.is_none() => {
                    last_heard = Instant::now();
                    let message = match message {
                        None => return Close::ClientGone,
                        Some(Ok(message)) => message,
                        Some(Err(e)) => return read_error(e),
                    };
                    if matches!(message, Message::Text(_) | Message::Binary(_)) {
                        match self.rate.check(self.state.rate_limit.as_ref(), last_heard) {
                            Verdict::Allow => {}
                            Verdict::Reject => {
                                self.reject_rate_limited(&message);
                                continue;
                            }
                            Verdict::Close => return Close::RateLimited,
                        }
                    }
                    match message {
                        // Boxed: a command's state is needed only while it runs, and every idle
                        // connection's task would otherwise carry room for it (see BENCHMARKS.md).
                        Message::Text(text) => later = Box::pin(self.session.execute(text)).await,
                        Message::Binary(bytes) => {
                            self.state.stats.messages_in.fetch_add(1, Relaxed);
                            self.state.stats.bytes_in.fetch_add(bytes.len() as u64, Relaxed);
                            self.session.reply_error(ErrorCode::BinaryNotSupported, "binary frames are not supported: send JSON text frames", None);
                        }
                        // tungstenite answers pings itself: the pong waits in the library until
                        // it is written, and no frame of ours may go to the socket before it.
                        Message::Ping(_) => {
                            self.unwritten.library = true;
                            outbox.set_direct(false);
                        }
                        // A pong only proves the client is alive.
                        Message::Pong(_) | Message::Frame(_) => {}
                        Message::Close(_) => {
                            // tungstenite queued the close reply; flushing sends it.
                            if let Ok(ws) = wire.open() {
                                let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, ws.flush())).await;
                            }
                            return Close::ClientGone;
                        }
                    }
                }
                _ = &mut timer => {
                    let now = Instant::now();
                    if now >= last_heard + config.idle_timeout {
                        return Close::Idle;
                    }
                    if now >= next_ping {
                        next_ping = now + config.ping_interval;
                        // The library writes: no frame may go to the socket beside it.
                        outbox.set_direct(false);
                        let ping = async {
                            let ws = wire.open().map_err(WsError::Io)?;
                            ws.feed(Message::Ping(Default::default())).await?;
                            ws.flush().await
                        };
                        // Boxed, like every rare path, to keep idle connections small.
                        match Box::pin(tokio::time::timeout(config.write_timeout, ping)).await {
                            Ok(Ok(())) => {
                                // Flushed with the ping, whatever the library held.
                                self.unwritten.library = false;
                                outbox.set_direct(true);
                            }
                            Ok(Err(e)) => return read_error(e),
                            Err(_) => return Close::SlowConsumer,
                        }
                    }
                    timer.as_mut().reset(next_ping.min(last_heard + config.idle_timeout));
                }
            }
        }
    }

    /// Writes the outbox out. Gives up (slow consumer) if the queue overflows meanwhile or a
    /// write makes no progress for the write timeout.
    async fn write<X: AsyncRead + AsyncWrite + ReadReady + Unpin>(
        &mut self,
        wire: &mut Wire<X>,
    ) -> Result<(), Close> {
        let client = self.session.client.clone();
        if client.outbox.overflowed() {
            // All that is left is the rest of a frame a direct write began, if one did: it goes
            // before the close frame (`close_with`).
            if self.unwritten.frames.is_empty() {
                client.outbox.take_all(&mut self.unwritten.frames);
            }
            return Err(Close::SlowConsumer);
        }
        let write = write_outbox(
            wire,
            &client.outbox,
            &mut self.unwritten,
            self.state.config.write_timeout,
        );
        tokio::select! {
            result = write => match result {
                Ok(()) => {}
                Err(WriteError::Ws(e)) => return Err(read_error(e)),
                Err(WriteError::Io(cause)) => {
                    tracing::debug!(%cause, "write to the client failed");
                    return Err(Close::ClientGone);
                }
                Err(WriteError::Stalled) => return Err(Close::SlowConsumer),
            },
            _ = client.outbox.overflow.raised() => return Err(Close::SlowConsumer),
        }
        // An order to close comes with a wake-up, after what was queued before it.
        match client.close_requested() {
            Some((code, reason)) => Err(Close::Ordered(code, reason)),
            None => Ok(()),
        }
    }

    /// Answers a frame over the rate limit without looking into it.
    fn reject_rate_limited(&self, message: &Message) {
        let stats = &self.state.stats;
        stats.messages_in.fetch_add(1, Relaxed);
        stats.bytes_in.fetch_add(message.len() as u64, Relaxed);
        let reason = format!(
            "more than {} messages per second: this one was not executed",
            self.state.config.max_messages_per_second
        );
        self.session
            .reply_error(ErrorCode::RateLimited, &reason, None);
    }
}

/// The client's next frame. After one, the WebSocket library may hold more bytes, so it is
/// asked again at once; once it had nothing (`read_all`), it is asked only when the socket is
/// readable. Without that, every wake-up to write would cost a read attempt through the whole
/// library (a quarter of a delivery's instructions, BENCHMARKS.md). Once it had nothing, the
/// connection rests if the library holds nothing ([`Wire::rest`]; `pong_due`: a ping was read
/// since the library last flushed).
///
/// A pong the library queued while the socket was full is then written with the next write
/// (a message, a ping of ours) or read, not on its own.
async fn next_frame<X: AsyncRead + AsyncWrite + ReadReady + Unpin>(
    wire: &mut Wire<X>,
    read_all: &mut bool,
    pong_due: bool,
) -> Option<Result<Message, WsError>> {
    std::future::poll_fn(|cx| {
        // An error is the library's to report: it reads and fails.
        if *read_all && wire.poll_read_ready(cx).is_pending() {
            return Poll::Pending;
        }
        let ws = match wire.open() {
            Ok(ws) => ws,
            Err(e) => return Poll::Ready(Some(Err(WsError::Io(e)))),
        };
        let next = ws.poll_next_unpin(cx);
        *read_all = next.is_pending();
        if *read_all {
            wire.rest(pong_due);
        }
        next
    })
    .await
}

enum WriteError {
    /// The WebSocket library's flush of its own frames failed.
    Ws(WsError),
    /// Writing our frames to the socket failed.
    Io(std::io::Error),
    /// The write (handing a frame to the socket, or the flush) made no progress for the write
    /// timeout: the client is not reading.
    Stalled,
}

/// Writes everything queued (and whatever is queued meanwhile), then flushes once. Each
/// `step_timeout` must see progress (bytes handed to the socket, or the flush done): a client
/// that reads slowly but steadily is fine however long the whole write takes.
///
/// The usual write completes in its first poll (the socket takes it all): then no timer is set.
/// Setting and clearing one per write showed up in the profiles (BENCHMARKS.md).
async fn write_outbox<X: AsyncRead + AsyncWrite + ReadReady + Unpin>(
    wire: &mut Wire<X>,
    outbox: &Outbox,
    unwritten: &mut Unwritten,
    step_timeout: Duration,
) -> Result<(), WriteError> {
    let progress = Cell::new(0u64);
    let write = write_all(wire, outbox, unwritten, &progress);
    tokio::pin!(write);
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    if let Poll::Ready(result) = first {
        return result;
    }
    let deadline = tokio::time::sleep(step_timeout);
    tokio::pin!(deadline);
    let mut seen = progress.get();
    loop {
        tokio::select! {
            biased;
            result = &mut write => return result,
            _ = &mut deadline => {
                if progress.get() == seen {
                    return Err(WriteError::Stalled);
                }
                seen = progress.get();
                deadline.as_mut().reset(Instant::now() + step_timeout);
            }
        }
    }
}

/// The write of [`write_outbox`], without its deadline; counts the writes that made progress.
async fn write_all<X: AsyncRead + AsyncWrite + ReadReady + Unpin>(
    wire: &mut Wire<X>,
    outbox: &Outbox,
    unwritten: &mut Unwritten,
    progress: &Cell<u64>,
) -> Result<(), WriteError> {
    // Writing: a push queues behind what this writes, until it is all written.
    outbox.set_direct(false);
    if unwritten.library {
        // Set only by a read: the library's stream is open.
        if let Some(ws) = wire.if_open() {
            ws.flush().await.map_err(WriteError::Ws)?;
        }
        unwritten.library = false;
    }
    loop {
        if unwritten.frames.is_empty() {
            outbox.take_all(&mut unwritten.frames);
            if unwritten.frames.is_empty() {
                break;
            }
        }
        let frames = &unwritten.frames;
        let socket = wire.socket().map_err(WriteError::Io)?;
        let written =
            std::future::poll_fn(|cx| poll_write_frames(Pin::new(&mut *socket), cx, frames))
                .await
                .map_err(WriteError::Io)?;
        if written == 0 {
            return Err(WriteError::Io(std::io::ErrorKind::WriteZero.into()));
        }
        unwritten.frames.consume(written);
        progress.set(progress.get() + 1);
    }
    let socket = wire.socket().map_err(WriteError::Io)?;
    std::future::poll_fn(|cx| Pin::new(&mut *socket).poll_flush(cx))
        .await
        .map_err(WriteError::Io)?;
    // All written, the library's frames included: the next push may write at once.
    outbox.set_direct(true);
    Ok(())
}

/// Hands the first frames (up to [`FRAMES_PER_WRITE`]) to the socket in one write; returns the
/// bytes it took.
fn poll_write_frames<W: AsyncWrite + Unpin>(
    socket: Pin<&mut W>,
    cx: &mut Context<'_>,
    frames: &Frames,
) -> Poll<std::io::Result<usize>> {
    match frames.front() {
        Some(front) if frames.len() == 1 || !socket.is_write_vectored() => {
            socket.poll_write(cx, front)
        }
        _ => {
            let mut slices = [IoSlice::new(&[]); FRAMES_PER_WRITE];
            socket.poll_write_vectored(cx, frames.slices(&mut slices))
        }
    }
}

fn read_error(e: WsError) -> Close {
    match e {
        WsError::Capacity(e) => Close::Violation(1009, e.to_string()),
        WsError::Utf8(_) => Close::Violation(1007, "invalid UTF-8 in a text frame".into()),
        WsError::Protocol(p) => match p {
            tokio_tungstenite::tungstenite::error::ProtocolError::ResetWithoutClosingHandshake => {
                Close::ClientGone
            }
            p => Close::Violation(1002, p.to_string()),
        },
        WsError::Io(e) => match e.get_ref().and_then(|e| e.downcast_ref::<FrameFlood>()) {
            Some(flood) => Close::FrameFlood(*flood),
            None => Close::ClientGone,
        },
        _ => Close::ClientGone,
    }
}
