//! One client connection: WebSocket handshake (after a TLS one with `--tls-cert`), then a single
//! task that reads commands, writes what its outbox holds in batches (one flush per batch),
//! pings, and closes with a code that says why (docs/protocol.md lists them).
//!
//! Past the handshake the code is generic over the stream, so plain TCP pays nothing for TLS.
//! With `--require-join-token`, each join and send is checked against the connection's
//! [`Access`] (its join token's rights).

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use protocol::client::{close_code, ErrorCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::server::TlsStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::cmd::{Later, Session};
use crate::edge::join_token::{Access, CaptureToken};

use crate::edge::frame_meter::{FrameFlood, FrameMeter};
use crate::edge::limits::{Permit, RateLimiter, Verdict};
use crate::fanout::outbox::Outbox;
use crate::worker::state::WorkerState;

/// Time allowed for the closing handshake before the socket is simply dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(1);

type Ws<S> = WebSocketStream<S>;

/// A client's upgraded connection, and the join token from its URL if it had one.
#[expect(
    clippy::large_enum_variant,
    reason = "boxing the plain variant would cost plain connections an allocation; the TLS one \
              is over a kilobyte, which plain connections' tasks must not carry"
)]
enum Accepted {
    Plain(Ws<FrameMeter<TcpStream>>, Option<String>),
    Tls(Box<Ws<FrameMeter<TlsStream<TcpStream>>>>, Option<String>),
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
/// and is given back when this returns, whichever way.
pub(crate) async fn serve(
    stream: std::net::TcpStream,
    peer: SocketAddr,
    permit: Permit,
    state: Rc<WorkerState>,
    shutdown: CancellationToken,
) {
    let conn = state.local.next_conn_id();
    let span = tracing::debug_span!("conn", worker = state.id, conn, %peer);
    async move {
        let _permit = permit;
        // A handshake still in progress when shutdown begins is dropped.
        // Boxed: the handshake's state is large and only needed once; the connection's task
        // keeps its own size for as long as the connection lives.
        let handshake = tokio::select! {
            ws = Box::pin(handshake(stream, &state)) => ws,
            _ = shutdown.cancelled() => Err(HandshakeError::ShuttingDown),
        };
        // Matched in place: binding the upgraded stream to a variable first would make the task
        // store it once more.
        match handshake {
            Err(cause) => {
                state.stats.handshake_failures.fetch_add(1, Relaxed);
                tracing::debug!(%cause, "handshake failed");
            }
            Ok(Accepted::Plain(ws, url_token)) => {
                established(ws, conn, &state, &shutdown, url_token).await
            }
            // Boxed, like the TLS handshake: plain connections' tasks stay their own size.
            Ok(Accepted::Tls(ws, url_token)) => {
                Box::pin(established(*ws, conn, &state, &shutdown, url_token)).await
            }
        }
    }
    .instrument(span)
    .await
}

/// Serves an upgraded connection until it closes.
async fn established<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: Ws<S>,
    conn: u64,
    state: &Rc<WorkerState>,
    shutdown: &CancellationToken,
    url_token: Option<String>,
) {
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
    let client = state.local.register(conn, outbox);
    let mut connection = Connection {
        session: Session::new(client, access, state.clone()),
        rate: RateLimiter::new(state.rate_limit, Instant::now()),
        state: state.clone(),
    };
    let close = connection.run(&mut ws, shutdown).await;
    connection.session.leave_all();
    match close {
        Close::ClientGone => {}
        Close::Shutdown => {
            close_with(&mut ws, 1001, "server shutting down").await;
        }
        Close::SlowConsumer => {
            state.stats.slow_consumer_closes.fetch_add(1, Relaxed);
            tracing::info!("closing slow consumer");
            close_with(&mut ws, close_code::SLOW_CONSUMER, "slow consumer").await;
        }
        Close::Idle => {
            state.stats.idle_closes.fetch_add(1, Relaxed);
            close_with(&mut ws, close_code::IDLE_TIMEOUT, "idle timeout").await;
        }
        Close::RateLimited => {
            state.stats.rate_limit_closes.fetch_add(1, Relaxed);
            tracing::info!("closing for sustained rate-limit abuse");
            close_with(&mut ws, 1008, "rate limit exceeded").await;
        }
        Close::FrameFlood(flood) => {
            state.stats.rate_limit_closes.fetch_add(1, Relaxed);
            tracing::info!(cause = %flood, "closing for a flood of control frames");
            close_with(&mut ws, 1008, "too many control frames").await;
        }
        Close::Violation(code, reason) => {
            state.stats.protocol_closes.fetch_add(1, Relaxed);
            tracing::debug!(code, %reason, "closing on protocol violation");
            close_with(&mut ws, code, &reason).await;
        }
        Close::Ordered(code, reason) => {
            tracing::info!(code, %reason, "closing as ordered through the admin API");
            close_with(&mut ws, code, &reason).await;
        }
    }
    state.stats.connections.fetch_sub(1, Relaxed);
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
                let (ws, url_token) = upgrade(stream, state).await?;
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
) -> Result<(Ws<FrameMeter<S>>, Option<String>), HandshakeError> {
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

async fn close_with<S: AsyncRead + AsyncWrite + Unpin>(ws: &mut Ws<S>, code: u16, reason: &str) {
    let frame = CloseFrame {
        code: CloseCode::from(code),
        reason: Utf8Bytes::from(reason),
    };
    // Boxed, as it runs once: idle connections do not carry its state.
    let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, async {
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
}

impl Connection {
    async fn run<S: AsyncRead + AsyncWrite + Unpin>(
        &mut self,
        ws: &mut Ws<S>,
        shutdown: &CancellationToken,
    ) -> Close {
        let config = self.state.config.clone();
        let client = self.session.client.clone();
        let outbox = &client.outbox;
        let mut batch = VecDeque::new();
        let mut last_heard = Instant::now();
        let mut next_ping = last_heard + config.ping_interval;
        let timer = tokio::time::sleep_until(next_ping.min(last_heard + config.idle_timeout));
        tokio::pin!(timer);
        // A cluster query's reply being gathered: the connection writes meanwhile, and reads
        // its next frame once it is answered (commands stay in order).
        let mut later: Option<Later> = None;
        loop {
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    // Deliver what is already queued, within the shutdown deadline.
                    let write = write_outbox(ws, outbox, &mut batch, config.write_timeout);
                    // Boxed, as it runs once: idle connections do not carry its state.
                    let _ = Box::pin(tokio::time::timeout(config.shutdown_timeout, write)).await;
                    return Close::Shutdown;
                }
                _ = outbox.wake.notified() => {
                    if let Err(close) = self.write(ws, &mut batch).await {
                        return close;
                    }
                }
                reply = async { later.as_mut().expect("polled only while set").await }, if later.is_some() => {
                    later = None;
                    self.session.reply_later(reply);
                }
                message = ws.next(), if later.is_none() => {
                    last_heard = Instant::now();
                    let message = match message {
                        None => return Close::ClientGone,
                        Some(Ok(message)) => message,
                        Some(Err(e)) => return read_error(e),
                    };
                    if matches!(message, Message::Text(_) | Message::Binary(_)) {
                        match self.rate.check(last_heard) {
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
                        // tungstenite answers pings itself; a pong only proves the client is alive.
                        Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
                        Message::Close(_) => {
                            // tungstenite queued the close reply; flushing sends it.
                            let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, ws.flush())).await;
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
                        let ping = async {
                            ws.feed(Message::Ping(Default::default())).await?;
                            ws.flush().await
                        };
                        // Boxed, like every rare path, to keep idle connections small.
                        match Box::pin(tokio::time::timeout(config.write_timeout, ping)).await {
                            Ok(Ok(())) => {}
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
    async fn write<S: AsyncRead + AsyncWrite + Unpin>(
        &self,
        ws: &mut Ws<S>,
        batch: &mut VecDeque<Utf8Bytes>,
    ) -> Result<(), Close> {
        let client = &self.session.client;
        if client.outbox.overflowed() {
            return Err(Close::SlowConsumer);
        }
        let write = write_outbox(ws, &client.outbox, batch, self.state.config.write_timeout);
        tokio::select! {
            result = write => match result {
                Ok(()) => {}
                Err(WriteError::Ws(e)) => return Err(read_error(e)),
                Err(WriteError::Stalled) => return Err(Close::SlowConsumer),
            },
            _ = client.outbox.overflow.notified() => return Err(Close::SlowConsumer),
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

/// Frames written between two extensions of the write deadline.
const FRAMES_PER_DEADLINE: usize = 16;

enum WriteError {
    Ws(WsError),
    /// One step of the write (handing a frame to the socket, or the flush) made no progress for
    /// the write timeout: the client is not reading.
    Stalled,
}

/// Writes everything queued (and whatever is queued meanwhile), then flushes once. Every
/// [`FRAMES_PER_DEADLINE`] frames, and the flush, must be written within `step_timeout`: a
/// client that reads slowly but steadily is fine however long the whole write takes. One timer
/// per call, pushed back as frames go out: reading the clock per frame showed up in profiles.
async fn write_outbox<S: AsyncRead + AsyncWrite + Unpin>(
    ws: &mut Ws<S>,
    outbox: &Outbox,
    batch: &mut VecDeque<Utf8Bytes>,
    step_timeout: Duration,
) -> Result<(), WriteError> {
    let deadline = tokio::time::sleep(step_timeout);
    tokio::pin!(deadline);
    loop {
        outbox.take_all(batch);
        if batch.is_empty() {
            break;
        }
        let mut since_reset = 0;
        while let Some(message) = batch.pop_front() {
            tokio::select! {
                biased;
                result = ws.feed(Message::Text(message)) => result.map_err(WriteError::Ws)?,
                _ = &mut deadline => return Err(WriteError::Stalled),
            }
            since_reset += 1;
            if since_reset == FRAMES_PER_DEADLINE {
                since_reset = 0;
                deadline.as_mut().reset(Instant::now() + step_timeout);
            }
        }
        deadline.as_mut().reset(Instant::now() + step_timeout);
    }
    tokio::select! {
        biased;
        result = ws.flush() => result.map_err(WriteError::Ws),
        _ = &mut deadline => Err(WriteError::Stalled),
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
