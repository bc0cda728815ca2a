//! One PHP Channel connection: a reader that applies its commands, and the link writer.
//!
//! Malformed input (a bad length, a value that does not unserialize within the limits, a
//! command that is not one) closes this connection only, logged at `warn` and counted in
//! `php_bad_frames`. The original server answers nothing, so neither does this one.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use protocol::client::{message_text, parse_group_id};
use protocol::php::{
    to_json, unserialize, PhpCommand, PhpFrame, PhpFrameCodec, PhpLimits, PhpValue,
};
use serde_json::value::RawValue;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;

use super::hub::SEND_TO_GROUP;
use crate::link::write_loop;
use crate::queue::link_queue;
use crate::registry::{LinkHandle, LinkId};
use crate::state::Shared;

/// How long a closing connection may take to write what is queued for it.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// Serves a connection accepted on the PHP Channel listener, if its source is allowed.
pub(crate) async fn serve_php_stream(
    stream: TcpStream,
    peer: SocketAddr,
    id: LinkId,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (read_half, write_half) = stream.into_split();
    serve_php(read_half, write_half, peer, id, shared, shutdown).await
}

/// Serves one PHP Channel client until it closes, breaks the protocol, or the broker stops.
pub(crate) async fn serve_php<R, W>(
    read_half: R,
    write_half: W,
    peer: SocketAddr,
    id: LinkId,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let php = &shared.config.php;
    let has_link_secret = shared.security.link_secret.is_some();
    if !super::php_peer_allowed(&php.allow, has_link_secret, peer.ip()) {
        shared.stats.php_refused_peers.fetch_add(1, Relaxed);
        if php.allow.is_empty() {
            tracing::warn!(
                conn = id.0,
                %peer,
                "PHP Channel client refused: the broker has a link secret and the source is not \
                 loopback (list trusted PHP servers with --php-allow)"
            );
        } else {
            tracing::warn!(conn = id.0, %peer, "PHP Channel client refused: source not in --php-allow");
        }
        return;
    }
    shared.stats.php_connections.fetch_add(1, Relaxed);
    shared.stats.php_connections_total.fetch_add(1, Relaxed);
    tracing::debug!(conn = id.0, %peer, "PHP Channel client connected");
    let config = &shared.config;
    let (tx, rx) = link_queue(config.link_queue_frames, config.link_queue_bytes);
    let kill = CancellationToken::new();
    let handle = LinkHandle::new(id, tx, kill.clone());
    let writer = tokio::spawn(write_loop(rx, write_half, kill.clone()));
    let mut frames = FramedRead::new(read_half, PhpFrameCodec::new(config.max_frame_size));
    let limits = PhpLimits {
        max_frame_size: config.max_frame_size,
        max_depth: php.max_depth,
        max_elements: php.max_elements,
    };
    let mut conn = Conn {
        handle,
        shared: &shared,
        subscribed: HashSet::new(),
        watching: HashSet::new(),
    };
    let idle = php.idle_timeout;
    let mut last_heard = Instant::now();
    let idle_timer = tokio::time::sleep(idle);
    tokio::pin!(idle_timer);
    let bad: Option<String> = loop {
        let frame = tokio::select! {
            _ = kill.cancelled() => break None,
            _ = shutdown.cancelled() => break None,
            frame = frames.next() => frame,
            _ = &mut idle_timer => {
                let deadline = last_heard + idle;
                if Instant::now() >= deadline {
                    shared.stats.php_idle_closed.fetch_add(1, Relaxed);
                    tracing::warn!(conn = id.0, %peer, timeout = ?idle, "PHP Channel client closed: idle");
                    break None;
                }
                idle_timer.as_mut().reset(deadline);
                continue;
            }
        };
        last_heard = Instant::now();
        match frame {
            None => break None,
            Some(Err(protocol::php::PhpFrameError::Io(_))) => break None,
            Some(Err(e)) => break Some(e.to_string()),
            Some(Ok(PhpFrame::Ping)) => {}
            Some(Ok(PhpFrame::Body(body))) => {
                let command = unserialize(&body, &limits)
                    .map_err(|e| e.to_string())
                    .and_then(|v| {
                        PhpCommand::parse(v, config.max_channel_len).map_err(|e| e.to_string())
                    });
                match command {
                    Ok(command) => conn.apply(command),
                    Err(reason) => break Some(reason),
                }
            }
        }
    };
    if let Some(reason) = bad {
        shared.stats.php_bad_frames.fetch_add(1, Relaxed);
        tracing::warn!(conn = id.0, %peer, %reason, "closing PHP Channel client: bad input");
    }
    shared
        .php
        .remove_conn(id, conn.subscribed.iter(), conn.watching.iter());
    drop(conn);
    // The writer ends once every queue sender is gone and what was queued is written; a client
    // that does not read is cut.
    if tokio::time::timeout(CLOSE_FLUSH_TIMEOUT, writer)
        .await
        .is_err()
    {
        kill.cancel();
    }
    shared.stats.php_connections.fetch_sub(1, Relaxed);
}

struct Conn<'a> {
    handle: LinkHandle,
    shared: &'a Shared,
    subscribed: HashSet<Bytes>,
    watching: HashSet<Bytes>,
}

impl Conn<'_> {
    fn apply(&mut self, command: PhpCommand) {
        let hub = &self.shared.php;
        match command {
            PhpCommand::Subscribe(channels) => {
                for channel in channels {
                    if self.subscribed.contains(&channel) {
                        continue;
                    }
                    if self.subscribed.len() >= self.shared.config.max_channels_per_link {
                        self.shared
                            .stats
                            .subscriptions_refused
                            .fetch_add(1, Relaxed);
                        tracing::warn!(
                            conn = self.handle.id.0,
                            channel = %String::from_utf8_lossy(&channel),
                            "PHP subscription refused: too many channels on this connection"
                        );
                        continue;
                    }
                    let channel = Bytes::copy_from_slice(&channel);
                    self.subscribed.insert(channel.clone());
                    hub.subscribe(&self.handle, channel);
                }
            }
            PhpCommand::Unsubscribe(channels) => {
                for channel in channels {
                    if self.subscribed.remove(&channel) {
                        hub.unsubscribe(self.handle.id, &channel);
                    }
                }
            }
            PhpCommand::Publish { channels, data } => {
                for channel in channels {
                    hub.publish(&channel, &data);
                    if channel.as_ref() == SEND_TO_GROUP {
                        self.bridge(&data);
                    }
                }
            }
            PhpCommand::PublishLoop { channels, data } => {
                for channel in channels {
                    hub.publish_loop(&channel, &data);
                }
            }
            PhpCommand::Watch(channels) => {
                for channel in channels {
                    if self.watching.insert(channel.clone()) {
                        hub.watch(self.handle.id, Bytes::copy_from_slice(&channel));
                    }
                }
            }
            PhpCommand::Unwatch(channels) => {
                for channel in channels {
                    if self.watching.remove(&channel) {
                        hub.unwatch(self.handle.id, &channel);
                    }
                }
            }
            PhpCommand::Enqueue { channels, data } => {
                for channel in channels {
                    hub.enqueue(&channel, &data);
                }
            }
            PhpCommand::Reserve => hub.reserve(&self.handle, self.watching.iter()),
        }
    }

    /// A PHP `send_to_group` on to the gateways' group, by the client protocol's rules.
    fn bridge(&self, data: &PhpValue) {
        let stats = &self.shared.stats;
        match group_send(data, self.shared.config.max_channel_len) {
            Ok((group, message)) => {
                match self.shared.registry.publish_without_bridge(
                    self.handle.id,
                    group.as_bytes(),
                    message,
                ) {
                    Ok(_) => {
                        stats.php_bridged.fetch_add(1, Relaxed);
                    }
                    Err(e) => {
                        stats.php_bridge_refused.fetch_add(1, Relaxed);
                        tracing::warn!(conn = self.handle.id.0, %group, cause = %e, "PHP send_to_group not sent to the gateways");
                    }
                }
            }
            Err(reason) => {
                stats.php_bridge_refused.fetch_add(1, Relaxed);
                tracing::warn!(
                    conn = self.handle.id.0,
                    %reason,
                    "PHP send_to_group not sent to the gateways"
                );
            }
        }
    }
}

/// The group and the message text of a PHP `send_to_group`'s data: `group_id` as a client's
/// would be read (a string, or an integer), `message` a string as its text, any other value as
/// its JSON.
fn group_send(data: &PhpValue, max_group_len: usize) -> Result<(String, Bytes), String> {
    let group = data.get("group_id").ok_or("data has no 'group_id'")?;
    let message = data.get("message").ok_or("data has no 'message'")?;
    let group_json = to_json(group).map_err(|e| format!("group_id: {e}"))?;
    let raw = RawValue::from_string(group_json).map_err(|e| format!("group_id: {e}"))?;
    let group = parse_group_id(&raw, max_group_len)
        .map_err(|e| e.to_string())?
        .as_str()
        .to_owned();
    let text = match message {
        PhpValue::Str(s) => {
            std::str::from_utf8(s).map_err(|_| "message: a string that is not UTF-8")?;
            s.clone()
        }
        other => {
            let json = to_json(other).map_err(|e| format!("message: {e}"))?;
            let raw = RawValue::from_string(json).map_err(|e| format!("message: {e}"))?;
            let text = message_text(&raw).map_err(|e| format!("message: {}", e.reason))?;
            Bytes::from(text.into_owned())
        }
    };
    Ok((group, text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use protocol::php::PhpKey;

    fn data(group: PhpValue, message: PhpValue) -> PhpValue {
        PhpValue::Array(vec![
            (PhpKey::Str("group_id".into()), group),
            (PhpKey::Str("message".into()), message),
        ])
    }

    #[test]
    fn group_sends_follow_the_client_protocol() {
        let ok = |g, m| group_send(&data(g, m), 16).unwrap();
        assert_eq!(
            ok(PhpValue::Int(123), PhpValue::str("hi")),
            ("123".into(), Bytes::from_static(b"hi"))
        );
        assert_eq!(
            ok(PhpValue::Float(7.0), PhpValue::Int(5)),
            ("7".into(), Bytes::from_static(b"5"))
        );
        let list = PhpValue::Array(vec![(PhpKey::Int(0), PhpValue::Bool(true))]);
        assert_eq!(
            ok(PhpValue::str("g"), list).1,
            Bytes::from_static(b"[true]")
        );
        for bad in [
            data(PhpValue::Null, PhpValue::str("m")),
            data(PhpValue::str(""), PhpValue::str("m")),
            data(PhpValue::str("\u{1f}cluster"), PhpValue::str("m")),
            data(PhpValue::str("x".repeat(17)), PhpValue::str("m")),
            data(PhpValue::Float(1.5), PhpValue::str("m")),
            data(
                PhpValue::str("g"),
                PhpValue::Str(Bytes::from_static(b"\xff")),
            ),
            PhpValue::Array(vec![]),
        ] {
            assert!(group_send(&bad, 16).is_err(), "{bad:?}");
        }
    }
}
