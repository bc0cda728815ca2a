//! Opening benchmark connections: the server address, source addresses, the open-files limit,
//! and a WebSocket with small buffers over a socket bound to a chosen source address.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use serde::{Deserialize, Serialize};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::http::Uri;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use client_cli::conn::describe_close;
pub use client_cli::conn::{close, CLOSE_TIMEOUT};
use client_cli::frames::{self, Incoming};
use protocol::cluster::{Uid, DEFAULT_MAX_UID_LEN};

pub type BenchWs = WebSocketStream<TcpStream>;

/// File descriptors a process keeps for itself (stdio, the runtime, pipes to its children).
const RESERVED_FDS: u64 = 64;
/// The request id of the one `add_group` (or `bind_uid`) each connection sends.
const JOIN_REQ_ID: u64 = 1;
/// Distinct failure reasons remembered; the rest are counted under "other".
const MAX_REASONS: usize = 16;

/// Small buffers, so that one process holds many connections: the read buffer is allocated
/// eagerly for every connection (tungstenite's default is 128 KiB).
pub fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(8 * 1024)
        .max_message_size(Some(1 << 20))
}

/// The server's address, from a `ws://host[:port]` URL (IPv4 preferred).
pub async fn resolve(url: &str) -> Result<SocketAddr> {
    let uri: Uri = url
        .parse()
        .with_context(|| format!("invalid URL {url:?}"))?;
    match uri.scheme_str() {
        Some("ws") => {}
        Some("wss") => bail!("bench supports ws:// URLs only, not wss://"),
        _ => bail!("invalid URL {url:?}: expected ws://host:port"),
    }
    let host = uri
        .host()
        .with_context(|| format!("no host in URL {url:?}"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = uri.port_u16().unwrap_or(80);
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .with_context(|| format!("cannot resolve {host}"))?
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .with_context(|| format!("{host} has no address"))
}

/// `127.0.0.1..=127.0.0.count`.
pub fn loopback_range(count: u8) -> Result<Vec<Ipv4Addr>> {
    if count == 0 || count == 255 {
        bail!("--source-ip-count must be between 1 and 254");
    }
    Ok((1..=count).map(|d| Ipv4Addr::new(127, 0, 0, d)).collect())
}

/// Source addresses when none were given: on loopback, as many 127.0.0.x as `connections`
/// need with `ports_per_ip` ephemeral ports each (keeping 10 % spare); elsewhere, or when one
/// address is enough, none (the kernel chooses).
pub fn auto_source_ips(
    server: IpAddr,
    connections: u64,
    ports_per_ip: Option<u64>,
) -> Result<Vec<Ipv4Addr>> {
    let (IpAddr::V4(v4), Some(ports)) = (server, ports_per_ip) else {
        return Ok(Vec::new());
    };
    let usable = (ports * 9 / 10).max(1);
    let needed = connections.div_ceil(usable);
    if !v4.is_loopback() || needed <= 1 {
        return Ok(Vec::new());
    }
    let count = u8::try_from(needed)
        .ok()
        .filter(|&n| n < 255)
        .ok_or_else(|| anyhow!("{connections} connections need more than 254 source addresses"))?;
    loopback_range(count)
}

/// Raises the soft open-files limit to the hard limit; returns how many connections this
/// process can then hold.
pub fn raise_nofile_limit() -> Result<u64> {
    let limit =
        rlimit::increase_nofile_limit(u64::MAX).context("cannot raise the open-files limit")?;
    Ok(limit.saturating_sub(RESERVED_FDS).max(1))
}

/// Processes needed to hold `connections` with `per_process` each.
pub fn processes_needed(connections: u64, per_process: u64) -> u64 {
    connections.div_ceil(per_process.max(1)).max(1)
}

/// What a connection does once open, acknowledged before it counts as joined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join<'a> {
    /// `add_group` this group.
    Group(&'a str),
    /// `bind_uid` this uid (the gateway must be in open mode).
    Uid(&'a str),
    /// `add_group` this group with positions, answered by `joined`.
    Positioned(&'a str),
}

impl Join<'_> {
    fn command(self) -> &'static str {
        match self {
            Join::Group(_) | Join::Positioned(_) => "add_group",
            Join::Uid(_) => "bind_uid",
        }
    }

    /// The request, with [`JOIN_REQ_ID`].
    fn request(self) -> Result<String, String> {
        match self {
            Join::Group(group) => frames::join_request(group, JOIN_REQ_ID),
            Join::Positioned(group) => {
                frames::positioned_join_request(group, false, None, JOIN_REQ_ID)
            }
            Join::Uid(uid) => Uid::new(uid, DEFAULT_MAX_UID_LEN)
                .map(|uid| frames::bind_uid_request(&uid, JOIN_REQ_ID))
                .map_err(anyhow::Error::from),
        }
        .map_err(|e| format!("{e:#}"))
    }
}

/// Opens a WebSocket from `source` (when given) and joins its group (or binds its uid) with an
/// acknowledged request, all within `timeout`. The error is a short reason, counted by kind.
pub async fn open_and_join(
    url: &str,
    server: SocketAddr,
    source: Option<Ipv4Addr>,
    join: Join<'_>,
    timeout: Duration,
) -> Result<BenchWs, String> {
    match tokio::time::timeout(timeout, open_and_join_inner(url, server, source, join)).await {
        Ok(result) => result,
        Err(_) => Err(format!("no handshake and join ack within {timeout:?}")),
    }
}

async fn open_and_join_inner(
    url: &str,
    server: SocketAddr,
    source: Option<Ipv4Addr>,
    join: Join<'_>,
) -> Result<BenchWs, String> {
    let socket = match server {
        SocketAddr::V4(_) => TcpSocket::new_v4(),
        SocketAddr::V6(_) => TcpSocket::new_v6(),
    }
    .map_err(|e| format!("socket: {e}"))?;
    if let Some(ip) = source {
        // The port is then chosen by connect(), per destination: a bind that reserves one
        // searches the whole range every time, which grows quadratic over many connections.
        #[cfg(target_os = "linux")]
        nix::sys::socket::setsockopt(
            &socket,
            nix::sys::socket::sockopt::IpBindAddressNoPort,
            &true,
        )
        .map_err(|e| format!("IP_BIND_ADDRESS_NO_PORT: {e}"))?;
        socket
            .bind(SocketAddr::from((ip, 0)))
            .map_err(|e| format!("bind {ip}: {e}"))?;
    }
    let stream = socket
        .connect(server)
        .await
        .map_err(|e| format!("connect: {e}"))?;
    stream
        .set_nodelay(true)
        .map_err(|e| format!("TCP_NODELAY: {e}"))?;
    let (mut ws, _response) =
        tokio_tungstenite::client_async_with_config(url, stream, Some(ws_config()))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    let command = join.command();
    ws.send(Message::Text(join.request()?.into()))
        .await
        .map_err(|e| format!("send {command}: {e}"))?;
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => match frames::classify(text.as_str()) {
                Incoming::Ack {
                    req_id: JOIN_REQ_ID,
                } => return Ok(ws),
                Incoming::Answer {
                    req_id: JOIN_REQ_ID,
                    cmd,
                } if cmd == "joined" => return Ok(ws),
                Incoming::Error {
                    req_id: JOIN_REQ_ID,
                    code,
                    ..
                } => return Err(format!("{command} refused: {code}")),
                _ => {}
            },
            Some(Ok(Message::Close(frame))) => {
                return Err(format!(
                    "closed before the join ack: {}",
                    describe_close(frame.as_ref())
                ))
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(format!("waiting for the join ack: {e}")),
            None => return Err("closed before the join ack".to_owned()),
        }
    }
}

/// Counts of failures by reason, at most [`MAX_REASONS`] distinct ones.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Reasons(BTreeMap<String, u64>);

impl Reasons {
    pub fn note(&mut self, reason: &str) {
        self.add(reason, 1);
    }

    pub fn merge(&mut self, other: &Reasons) {
        for (reason, &count) in &other.0 {
            self.add(reason, count);
        }
    }

    fn add(&mut self, reason: &str, count: u64) {
        let key = if self.0.contains_key(reason) || self.0.len() < MAX_REASONS {
            reason
        } else {
            "other"
        };
        *self.0.entry(key.to_owned()).or_default() += count;
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, u64)> {
        self.0
            .iter()
            .map(|(reason, &count)| (reason.as_str(), count))
    }
}

/// Reads (and discards) until the server's close frame, an error or `limit`; says which.
pub async fn read_until_close(ws: &mut BenchWs, limit: Duration) -> String {
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return "still open at the end".to_owned(),
            Ok(None) => return "connection ended without a close frame".to_owned(),
            Ok(Some(Err(e))) => return format!("connection error: {e}"),
            Ok(Some(Ok(Message::Close(frame)))) => {
                return format!("closed by the server: {}", describe_close(frame.as_ref()))
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_ranges() {
        let ips = loopback_range(3).unwrap();
        assert_eq!(
            ips,
            [
                Ipv4Addr::new(127, 0, 0, 1),
                Ipv4Addr::new(127, 0, 0, 2),
                Ipv4Addr::new(127, 0, 0, 3)
            ]
        );
        assert_eq!(loopback_range(254).unwrap().len(), 254);
        assert!(loopback_range(0).is_err());
        assert!(loopback_range(255).is_err());
    }

    #[test]
    fn source_ips_cover_the_ephemeral_ports() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let ports = Some(28_232);
        assert!(auto_source_ips(lo, 1_000, ports).unwrap().is_empty());
        assert!(auto_source_ips(lo, 25_000, ports).unwrap().is_empty());
        assert_eq!(auto_source_ips(lo, 26_000, ports).unwrap().len(), 2);
        assert_eq!(auto_source_ips(lo, 100_000, ports).unwrap().len(), 4);
        // Not loopback, or the range unknown: the kernel chooses.
        let remote = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        assert!(auto_source_ips(remote, 100_000, ports).unwrap().is_empty());
        assert!(auto_source_ips(lo, 100_000, None).unwrap().is_empty());
        assert!(auto_source_ips(lo, 100_000_000, ports).is_err());
    }

    #[test]
    fn processes_for_the_open_files_limit() {
        assert_eq!(processes_needed(1_000, 19_936), 1);
        assert_eq!(processes_needed(19_936, 19_936), 1);
        assert_eq!(processes_needed(100_000, 19_936), 6);
        assert_eq!(processes_needed(0, 19_936), 1);
    }

    #[test]
    fn reasons_are_bounded() {
        let mut reasons = Reasons::default();
        for i in 0..MAX_REASONS + 5 {
            reasons.note(&format!("reason {i}"));
        }
        reasons.note("reason 0");
        let mut other = Reasons::default();
        other.note("reason 0");
        other.note("brand new");
        reasons.merge(&other);
        let counts: BTreeMap<&str, u64> = reasons.iter().collect();
        assert_eq!(counts.len(), MAX_REASONS + 1);
        assert_eq!(counts["reason 0"], 3);
        assert_eq!(counts["other"], 6);
    }

    #[test]
    fn join_requests() {
        let group: serde_json::Value =
            serde_json::from_str(&Join::Group("bench-r-7").request().unwrap()).unwrap();
        assert_eq!(
            group,
            serde_json::json!({"cmd": "add_group", "group_id": "bench-r-7", "req_id": JOIN_REQ_ID})
        );
        let uid: serde_json::Value =
            serde_json::from_str(&Join::Uid("bench-r-7").request().unwrap()).unwrap();
        assert_eq!(
            uid,
            serde_json::json!({"cmd": "bind_uid", "uid": "bench-r-7", "req_id": JOIN_REQ_ID})
        );
        assert!(Join::Uid("").request().is_err());
        assert_eq!(Join::Uid("u").command(), "bind_uid");
    }

    #[tokio::test]
    async fn resolves_ws_urls_only() {
        let addr = resolve("ws://127.0.0.1:1234").await.unwrap();
        assert_eq!(addr, SocketAddr::from(([127, 0, 0, 1], 1234)));
        assert_eq!(resolve("ws://127.0.0.2").await.unwrap().port(), 80);
        assert!(resolve("wss://127.0.0.1:1").await.is_err());
        assert!(resolve("http://127.0.0.1:1").await.is_err());
        assert!(resolve("not a url").await.is_err());
    }
}
