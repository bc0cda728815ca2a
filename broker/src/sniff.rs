//! Telling a PHP Channel client from a gateway on the shared port, by its first bytes.
//!
//! A gateway speaks first: its hello is a frame whose body starts with the protobuf tag of
//! `Frame.hello` (0x0A). A PHP client's first frame is a ping (total length 4) or a
//! `serialize()`d array, whose body starts with `a`. A connection that sends nothing within the
//! handshake timeout is a PHP client too (a Workerman client with no subscriptions only pings,
//! every 25 to 55 s); a gateway always says hello at once. The broker sends its own hello only
//! once it knows the peer is a gateway.
//!
//! A silent connection from a source that may not be a PHP client (the broker has a link secret
//! and the source is neither loopback nor in `--php-allow`, see [`php_peer_allowed`]) is a link
//! that did not say hello in time: it gets the broker's hello and `Error{handshake_timeout}`,
//! counted in `bad_frames`, as with `--php-channel off`. A PHP client's first frame from such a
//! source is refused by [`serve_php`] (`php_refused_peers`).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncReadExt, BufReader};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use crate::link::serve_link;
use crate::php::{php_peer_allowed, serve_php};
use crate::registry::LinkId;
use crate::state::Shared;

/// Bytes read to decide: the length header and the body's first byte.
const SNIFF_LEN: usize = 5;

enum Peer {
    Php,
    Gateway,
}

fn classify(prefix: &[u8]) -> Option<Peer> {
    if prefix.len() >= 4 && prefix[..4] == [0, 0, 0, 4] {
        return Some(Peer::Php);
    }
    if prefix.len() < SNIFF_LEN {
        return None;
    }
    Some(if prefix[4] == b'a' {
        Peer::Php
    } else {
        Peer::Gateway
    })
}

pub(crate) async fn serve_either(
    stream: TcpStream,
    peer: SocketAddr,
    id: LinkId,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let (read_half, write_half) = stream.into_split();
    let mut read_half = BufReader::new(read_half);
    let mut prefix = Vec::with_capacity(SNIFF_LEN);
    let deadline = tokio::time::Instant::now() + shared.config.handshake_timeout;
    let kind = loop {
        if let Some(kind) = classify(&prefix) {
            break kind;
        }
        let mut byte = [0u8; SNIFF_LEN];
        let want = SNIFF_LEN - prefix.len();
        let read = tokio::select! {
            read = tokio::time::timeout_at(deadline, read_half.read(&mut byte[..want])) => read,
            _ = shutdown.cancelled() => return,
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => prefix.extend_from_slice(&byte[..n]),
            // Silent: a PHP client that only pings, if one may connect from there. Otherwise,
            // or a few bytes then silence: the link's handshake refuses it, counted.
            Err(_) if prefix.is_empty() && may_be_php(&shared, peer) => break Peer::Php,
            Err(_) => break Peer::Gateway,
        }
    };
    let read_half = std::io::Cursor::new(prefix).chain(read_half);
    match kind {
        Peer::Php => serve_php(read_half, write_half, peer, id, shared, shutdown).await,
        Peer::Gateway => {
            serve_link(read_half, write_half, peer, id, shared, shutdown, deadline).await
        }
    }
}

fn may_be_php(shared: &Shared, peer: SocketAddr) -> bool {
    php_peer_allowed(
        &shared.config.php.allow,
        shared.security.link_secret.is_some(),
        peer.ip(),
    )
}
