//! One connected gateway: a reader task that applies its frames, a writer task that drains its
//! bounded queue in batches (one flush per batch).
//!
//! Malformed input closes this link only, after an `Error` frame that says why. With a link
//! secret, the gateway must answer the challenge of the broker's hello with an `Auth` frame
//! right after its own hello; with TLS, the TLS handshake comes first, within the same
//! handshake timeout.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use protocol::codec::{encode_frame, subscribe_refused_frames};
use protocol::link::{Body, Pong, Stored};
use protocol::{Frame, FrameError, LinkCodec, LinkFault, PROTOCOL_VERSION};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use crate::queue::{link_queue, QueueReceiver};
use crate::registry::{LinkHandle, LinkId};
use crate::state::Shared;

/// Most frames the writer takes from the queue before it flushes.
const WRITE_BATCH: usize = 256;
/// Largest frame accepted before the handshake completes (hello and auth frames are tiny).
const HANDSHAKE_MAX_FRAME_SIZE: usize = 64 * 1024;
/// How long a closing link may take to write its last frames (e.g. an `Error`).
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Why a link ended.
#[derive(Debug)]
enum Close {
    Eof,
    /// Reading failed: the connection was reset (e.g. the gateway's process died with data
    /// unread) or broke. The peer is gone; nothing it sent was malformed.
    ReadFailed(std::io::Error),
    Shutdown,
    SlowConsumer,
    /// The writer could not write to the socket.
    WriteFailed,
    Idle,
    /// The peer broke the protocol; the fault is sent back in an `Error` frame.
    Fault {
        fault: LinkFault,
        reason: String,
    },
    /// The peer sent an `Error` frame: its code (not necessarily one this build knows) and reason.
    PeerError {
        code: String,
        reason: String,
    },
    /// The peer did not prove that it knows the link secret.
    Unauthorized(String),
}

/// Serves one accepted connection: plain TCP, or TLS first when the broker has a certificate.
pub(crate) async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    id: LinkId,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let Some(tls) = shared.security.tls.clone() else {
        let (read_half, write_half) = stream.into_split();
        let deadline = Instant::now() + shared.config.handshake_timeout;
        return serve_link(read_half, write_half, peer, id, shared, shutdown, deadline).await;
    };
    let started = Instant::now();
    let accept = tokio_rustls::TlsAcceptor::from(tls).accept(stream);
    let accepted = tokio::select! {
        accepted = tokio::time::timeout(shared.config.handshake_timeout, accept) => accepted,
        _ = shutdown.cancelled() => return,
    };
    match accepted {
        Ok(Ok(stream)) => {
            let (read_half, write_half) = tokio::io::split(stream);
            let deadline = Instant::now() + shared.config.handshake_timeout;
            serve_link(read_half, write_half, peer, id, shared, shutdown, deadline).await
        }
        Ok(Err(cause)) => {
            tracing::warn!(link = id.0, %peer, %cause, "link refused: TLS handshake failed")
        }
        Err(_) => tracing::warn!(
            link = id.0,
            %peer,
            waited = ?started.elapsed(),
            "link refused: no TLS handshake within the handshake timeout"
        ),
    }
}

/// Serves one gateway link; its hello (and auth frame) must arrive by `handshake_deadline`.
pub(crate) async fn serve_link<R, W>(
    read_half: R,
    write_half: W,
    peer: SocketAddr,
    id: LinkId,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
    handshake_deadline: Instant,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let config = &shared.config;
    let (tx, rx) = link_queue(config.link_queue_frames, config.link_queue_bytes);
    let kill = CancellationToken::new();
    let handle = LinkHandle::new(id, tx, kill.clone());
    let writer = tokio::spawn(write_loop(rx, write_half, kill.clone()));
    let mut frames =
        // Until the peer has said hello (and authenticated), a frame may not be large: a 4-byte
        // length prefix must not make the broker reserve megabytes for a stranger.
        FramedRead::with_capacity(
            read_half,
            LinkCodec::new(HANDSHAKE_MAX_FRAME_SIZE.min(config.max_frame_size)),
            8 * 1024,
        );
    let mut subscribed: HashSet<Bytes> = HashSet::new();
    let reading = shared.readers.enter();

    shared.stats.links.fetch_add(1, Relaxed);
    shared.stats.links_total.fetch_add(1, Relaxed);
    // A challenge only when the gateway must answer it: its absence tells the gateway that this
    // broker does not check.
    let challenge = match &shared.security.link_secret {
        None => Ok(Bytes::new()),
        Some(_) => crate::auth::new_challenge(),
    };

    let close = async {
        let challenge = match challenge {
            Ok(challenge) => challenge,
            Err(cause) => {
                tracing::error!(link = id.0, %peer, %cause, "no randomness for a link challenge");
                return Close::WriteFailed;
            }
        };
        send_frame(
            &handle,
            &shared,
            &Frame::hello_with_challenge("broker", challenge.clone()),
        );
        // Handshake: the first frame must be a compatible hello.
        let first = tokio::select! {
            first = tokio::time::timeout_at(handshake_deadline, frames.next()) => first,
            _ = shutdown.cancelled() => return Close::Shutdown,
        };
        let node = match first {
            Err(_) => {
                return Close::Fault {
                    fault: LinkFault::HandshakeTimeout,
                    reason: format!("no hello within {:?}", config.handshake_timeout),
                }
            }
            Ok(None) => return Close::Eof,
            Ok(Some(Err(e))) => return e.into(),
            Ok(Some(Ok(Frame {
                body: Some(Body::Hello(hello)),
            }))) => {
                if hello.version != PROTOCOL_VERSION {
                    return Close::Fault {
                        fault: LinkFault::IncompatibleVersion,
                        reason: format!(
                            "broker speaks link protocol version {PROTOCOL_VERSION}, peer sent {}",
                            hello.version
                        ),
                    };
                }
                hello.node
            }
            Ok(Some(Ok(other))) => {
                return Close::Fault {
                    fault: LinkFault::ExpectedHello,
                    reason: format!("first frame must be hello, got {}", other.kind()),
                }
            }
        };
        if let Some(secret) = &shared.security.link_secret {
            let next = tokio::select! {
                next = tokio::time::timeout_at(handshake_deadline, frames.next()) => next,
                _ = shutdown.cancelled() => return Close::Shutdown,
            };
            match next {
                Err(_) => {
                    return Close::Unauthorized(format!(
                        "no auth frame within {:?}",
                        config.handshake_timeout
                    ))
                }
                Ok(None) => return Close::Eof,
                Ok(Some(Err(e))) => return e.into(),
                Ok(Some(Ok(Frame {
                    body: Some(Body::Auth(auth)),
                }))) => {
                    if !secret.verify(&challenge, &node, &auth.mac) {
                        return Close::Unauthorized(
                            "wrong link secret: the auth frame does not answer the challenge"
                                .into(),
                        );
                    }
                }
                Ok(Some(Ok(other))) => {
                    return Close::Unauthorized(format!(
                        "this broker requires link authentication: expected an auth frame after \
                         the hello, got {}; give the gateway the broker's link secret",
                        other.kind()
                    ))
                }
            }
        }
        frames
            .decoder_mut()
            .set_max_frame_size(config.max_frame_size);
        tracing::info!(
            link = id.0,
            %peer,
            node = %node,
            authenticated = shared.security.link_secret.is_some(),
            "link up"
        );

        let idle = config.link_idle_timeout;
        let mut last_heard = Instant::now();
        let idle_timer = tokio::time::sleep(idle);
        tokio::pin!(idle_timer);
        loop {
            tokio::select! {
                biased;
                _ = kill.cancelled() => {
                    return if handle.is_slow() { Close::SlowConsumer } else { Close::WriteFailed };
                }
                _ = shutdown.cancelled() => return Close::Shutdown,
                frame = frames.next() => {
                    let frame = match frame {
                        None => return Close::Eof,
                        Some(Err(e)) => return e.into(),
                        Some(Ok(frame)) => frame,
                    };
                    last_heard = Instant::now();
                    if let Err(close) = apply(frame, &handle, &shared, &mut subscribed) {
                        return close;
                    }
                }
                _ = &mut idle_timer => {
                    let deadline = last_heard + idle;
                    if Instant::now() >= deadline {
                        return Close::Idle;
                    }
                    idle_timer.as_mut().reset(deadline);
                }
            }
        }
    }
    .await;
    drop(reading);
    if matches!(close, Close::Shutdown) {
        // Every link stops applying frames before any leaves the registry, so that what one
        // applied reaches all the others' queues, which are then flushed (see `Readers`).
        let _ = tokio::time::timeout(config.shutdown_timeout, shared.readers.all_stopped()).await;
    }

    match &close {
        Close::Eof | Close::Shutdown | Close::WriteFailed => {
            tracing::info!(link = id.0, %peer, reason = ?close, "link closed")
        }
        Close::ReadFailed(cause) => {
            tracing::info!(link = id.0, %peer, %cause, "link closed: connection lost")
        }
        Close::SlowConsumer => {
            tracing::warn!(link = id.0, %peer, "link closed: slow consumer")
        }
        Close::Idle => {
            tracing::warn!(link = id.0, %peer, timeout = ?config.link_idle_timeout, "link closed: idle")
        }
        Close::PeerError { code, reason } => {
            tracing::warn!(link = id.0, %peer, code = %code, reason = %reason, "link closed by peer error")
        }
        Close::Fault { fault, reason } => {
            shared.stats.bad_frames.fetch_add(1, Relaxed);
            tracing::warn!(link = id.0, %peer, code = %fault, reason = %reason, "closing link: bad input");
            send_frame(&handle, &shared, &Frame::fault(*fault, reason.clone()));
        }
        Close::Unauthorized(reason) => {
            shared.stats.unauthorized_links.fetch_add(1, Relaxed);
            tracing::warn!(link = id.0, %peer, reason = %reason, "link refused: unauthorized");
            send_frame(
                &handle,
                &shared,
                &Frame::fault(LinkFault::Unauthorized, reason.clone()),
            );
        }
    }
    shared.registry.remove_link(id, subscribed.iter());
    drop(handle);
    if matches!(
        close,
        Close::SlowConsumer | Close::WriteFailed | Close::ReadFailed(_)
    ) {
        kill.cancel();
    }
    // The writer ends once every queue sender is gone and the queue is drained (at shutdown
    // too: what the link was sent goes out, within the flush timeout).
    if tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, writer)
        .await
        .is_err()
    {
        kill.cancel();
    }
    shared.stats.links.fetch_sub(1, Relaxed);
}

/// A frame that cannot be read: the connection broke (the peer is gone, nothing it sent was
/// malformed), or the bytes are not a frame.
impl From<FrameError> for Close {
    fn from(e: FrameError) -> Close {
        match e {
            FrameError::Io(e) => Close::ReadFailed(e),
            e => Close::Fault {
                fault: LinkFault::BadFrame,
                reason: e.to_string(),
            },
        }
    }
}

/// Applies one post-handshake frame.
fn apply(
    frame: Frame,
    handle: &LinkHandle,
    shared: &Shared,
    subscribed: &mut HashSet<Bytes>,
) -> Result<(), Close> {
    let config = &shared.config;
    match frame.body {
        Some(Body::Subscribe(sub)) => {
            let refused = subscribe(sub.channels, handle, shared, subscribed)?;
            refuse(refused, handle, shared, subscribed.len());
        }
        Some(Body::Unsubscribe(unsub)) => {
            for channel in unsub.channels {
                if subscribed.remove(channel.as_ref()) {
                    server_kit::memory::shrink_set_if_sparse(subscribed);
                    shared.registry.unsubscribe(handle.id, &channel);
                }
            }
        }
        Some(Body::Publish(publish)) => {
            check_channel(&publish.channel, config.max_channel_len)?;
            let published = match publish.history {
                Some(options) => {
                    let identity = (publish.id != 0).then_some((publish.origin, publish.id));
                    let published = shared.publish_positioned_once(
                        handle.id,
                        &publish.channel,
                        publish.payload,
                        options,
                        identity,
                    );
                    if publish.id != 0 && published.is_ok() {
                        let stored = Stored { id: publish.id };
                        send_frame(handle, shared, &Frame::new(Body::Stored(stored)));
                    }
                    published
                }
                None => shared.registry.publish(
                    handle.id,
                    &publish.channel,
                    publish.payload,
                    publish.no_echo,
                ),
            };
            if let Err(e) = published {
                return Err(Close::Fault {
                    fault: LinkFault::BadPublish,
                    reason: e.to_string(),
                });
            }
        }
        Some(Body::Ping(ping)) => {
            send_frame(
                handle,
                shared,
                &Frame::new(Body::Pong(Pong { nonce: ping.nonce })),
            );
        }
        Some(Body::HistoryRequest(request)) => {
            check_channel(&request.channel, config.max_channel_len)?;
            let reply = shared.history.serve(&request);
            send_frame(handle, shared, &Frame::new(Body::HistoryReply(reply)));
        }
        Some(Body::Pong(_)) => {}
        Some(Body::Error(e)) => {
            return Err(Close::PeerError {
                code: e.code,
                reason: e.reason,
            });
        }
        Some(Body::Hello(_))
        | Some(Body::Message(_))
        | Some(Body::Auth(_))
        | Some(Body::SubscribeRefused(_))
        | Some(Body::HistoryReply(_))
        | Some(Body::Stored(_))
        | None => {
            return Err(Close::Fault {
                fault: LinkFault::UnexpectedFrame,
                reason: format!(
                    "a gateway may not send {} frames here",
                    frame_kind(&frame.body)
                ),
            });
        }
    }
    Ok(())
}

/// Subscribes the link to each channel it does not hold yet, while it holds fewer than
/// `broker-max-channels-per-link`. Returns the channels refused for that limit, each once. An invalid
/// channel name closes the link (those before it in the frame were subscribed, and are removed
/// with the link).
fn subscribe(
    channels: Vec<Bytes>,
    handle: &LinkHandle,
    shared: &Shared,
    subscribed: &mut HashSet<Bytes>,
) -> Result<Vec<Bytes>, Close> {
    let config = &shared.config;
    let mut refused = Vec::new();
    for channel in channels {
        check_channel(&channel, config.max_channel_len)?;
        if subscribed.contains(channel.as_ref()) {
            continue;
        }
        if subscribed.len() >= config.max_channels_per_link {
            refused.push(channel);
            continue;
        }
        // Own the name: the frame's buffer must not stay alive for it.
        let channel = Bytes::copy_from_slice(&channel);
        subscribed.insert(channel.clone());
        shared.registry.subscribe(handle, channel);
    }
    refused.sort_unstable();
    refused.dedup();
    Ok(refused)
}

/// Counts and logs the subscriptions of one frame that [`subscribe`] refused, and tells the link
/// which they are. The link and its other subscriptions stay.
fn refuse(refused: Vec<Bytes>, handle: &LinkHandle, shared: &Shared, held: usize) {
    let Some(first) = refused.first() else {
        return;
    };
    let limit = shared.config.max_channels_per_link;
    shared
        .stats
        .subscriptions_refused
        .fetch_add(refused.len() as u64, Relaxed);
    tracing::warn!(
        link = handle.id.0,
        refused = refused.len(),
        first = %String::from_utf8_lossy(first),
        subscribed = held,
        limit,
        "subscriptions refused: too many channels on this link"
    );
    let reason = format!("a link may subscribe to at most {limit} channels");
    match subscribe_refused_frames(
        refused,
        LinkFault::TooManyChannels,
        &reason,
        shared.config.max_frame_size,
    ) {
        Ok(frames) => {
            for frame in &frames {
                send_frame(handle, shared, frame);
            }
        }
        // Only a channel name within a few dozen bytes of link-max-frame-size gets here.
        Err(cause) => tracing::error!(
            link = handle.id.0,
            %cause,
            "cannot tell the link which subscriptions were refused"
        ),
    }
}

fn frame_kind(body: &Option<Body>) -> &'static str {
    Frame { body: body.clone() }.kind()
}

fn check_channel(channel: &[u8], max_len: usize) -> Result<(), Close> {
    if channel.is_empty() || channel.len() > max_len {
        return Err(Close::Fault {
            fault: LinkFault::InvalidChannel,
            reason: format!(
                "channel names must be 1 to {max_len} bytes, got {}",
                channel.len()
            ),
        });
    }
    Ok(())
}

fn send_frame(handle: &LinkHandle, shared: &Shared, frame: &Frame) {
    match encode_frame(frame, shared.config.max_frame_size) {
        Ok(bytes) => {
            handle.send(bytes, &shared.stats);
        }
        Err(e) => tracing::error!(link = handle.id.0, cause = %e, "cannot encode frame"),
    }
}

pub(crate) async fn write_loop<W: AsyncWrite + Unpin>(
    mut rx: QueueReceiver,
    write_half: W,
    kill: CancellationToken,
) {
    let mut out = BufWriter::with_capacity(64 * 1024, write_half);
    let drain = async {
        let mut batch = Vec::with_capacity(WRITE_BATCH);
        while rx.recv_many(&mut batch, WRITE_BATCH).await > 0 {
            for frame in batch.drain(..) {
                out.write_all(&frame).await?;
                rx.written(&frame);
            }
            out.flush().await?;
        }
        out.shutdown().await
    };
    tokio::select! {
        result = drain => {
            if let Err(e) = result {
                tracing::debug!(cause = %e, "link write failed");
                kill.cancel();
            }
        }
        _ = kill.cancelled() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::BrokerSecurity;
    use crate::config::BrokerConfig;

    fn shared(max_channels_per_link: usize) -> Shared {
        Shared::new(
            BrokerConfig {
                max_channels_per_link,
                max_channel_len: 8,
                ..BrokerConfig::default()
            },
            BrokerSecurity::default(),
        )
    }

    fn channels(names: &[&'static str]) -> Vec<Bytes> {
        names
            .iter()
            .map(|n| Bytes::from_static(n.as_bytes()))
            .collect()
    }

    #[test]
    fn subscribe_takes_channels_up_to_the_limit_and_refuses_the_rest_once() {
        let shared = shared(2);
        let (tx, _rx) = link_queue(8, 1 << 20);
        let handle = LinkHandle::new(LinkId(1), tx, CancellationToken::new());
        let mut subscribed = HashSet::new();

        let refused = subscribe(
            channels(&["a", "a", "b", "c"]),
            &handle,
            &shared,
            &mut subscribed,
        );
        assert_eq!(refused.ok(), Some(channels(&["c"])));
        // Held channels cost nothing; refused ones are named once, in order of their bytes.
        let refused = subscribe(
            channels(&["b", "e", "d", "e"]),
            &handle,
            &shared,
            &mut subscribed,
        );
        assert_eq!(refused.ok(), Some(channels(&["d", "e"])));
        assert_eq!(subscribed.len(), 2);
        assert_eq!(shared.stats.snapshot().subscriptions, 2);
    }

    #[test]
    fn an_invalid_channel_still_closes_the_link_past_the_limit() {
        let shared = shared(1);
        let (tx, _rx) = link_queue(8, 1 << 20);
        let handle = LinkHandle::new(LinkId(1), tx, CancellationToken::new());
        let mut subscribed = HashSet::new();
        let result = subscribe(
            channels(&["a", "b", "much-too-long"]),
            &handle,
            &shared,
            &mut subscribed,
        );
        assert!(
            matches!(
                result,
                Err(Close::Fault {
                    fault: LinkFault::InvalidChannel,
                    ..
                })
            ),
            "{result:?}"
        );
    }
}
