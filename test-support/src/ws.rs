//! A WebSocket test client speaking the JSON protocol. Every read has a deadline.
//!
//! Two ways to wait for a reply: [`Client::request`] keeps the frames that are not the awaited
//! reply and hands them out by the next reads, so nothing that arrives goes unchecked; the
//! barriers [`Client::reply_to`], [`Client::ack`] and [`Client::outcome`] require the reply to
//! be the very next frame. [`expect_quiet`] checks that nothing else arrives.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::future::try_join_all;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::rustls::ClientConfig;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::{Bytes, Error as WsError, Message};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use crate::frame::RawFrame;
use crate::net::{self, SocketOptions};
use crate::{QUIET_PERIOD, RECV_TIMEOUT};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// What a client observed on its connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Text(String),
    Binary(Vec<u8>),
    /// A close frame: its code and reason, if it had any.
    Close(Option<(u16, String)>),
    /// The connection ended without a close frame, or failed.
    Disconnected(String),
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Text(text) => write!(f, "text {}", abbreviate(text)),
            Event::Binary(bytes) => write!(f, "binary frame of {} bytes", bytes.len()),
            Event::Close(Some((code, reason))) => write!(f, "close frame {code} {reason:?}"),
            Event::Close(None) => write!(f, "close frame without a code"),
            Event::Disconnected(why) => write!(f, "disconnection ({why})"),
        }
    }
}

/// A text for messages, cut short if long.
fn abbreviate(text: &str) -> String {
    const MAX: usize = 200;
    if text.len() <= MAX {
        return format!("{text:?}");
    }
    let mut end = MAX;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}... ({} bytes)", &text[..end], text.len())
}

/// One test client connection.
#[derive(Debug)]
pub struct Client {
    name: String,
    ws: Ws,
    next_req_id: u64,
    /// Text frames read while waiting for an ack, not yet handed out.
    pending: VecDeque<String>,
}

/// How to open a [`Client`] connection: [`Client::to`], then options, then
/// [`Connect::connect`] (or [`Connect::try_connect`] to see a refusal).
#[derive(Debug, Clone)]
pub struct Connect {
    name: String,
    addr: SocketAddr,
    path: String,
    origin: Option<String>,
    tls: Option<Arc<ClientConfig>>,
    socket: SocketOptions,
}

/// A handshake the server answered with an HTTP error instead of switching protocols.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refused {
    pub status: u16,
    pub body: String,
}

impl Connect {
    /// The request path and query (`/` by default), e.g. `/?token=...`.
    pub fn path(mut self, path: impl Into<String>) -> Connect {
        self.path = path.into();
        self
    }

    /// Sends this `Origin` header, as a browser does.
    pub fn origin(mut self, origin: impl Into<String>) -> Connect {
        self.origin = Some(origin.into());
        self
    }

    /// Connects over TLS (`wss://localhost:PORT`), trusting only the CAs of `tls`.
    pub fn tls(mut self, tls: Arc<ClientConfig>) -> Connect {
        self.tls = Some(tls);
        self
    }

    /// Connects from this local address (any of 127.0.0.0/8 on loopback).
    pub fn from(mut self, from: IpAddr) -> Connect {
        self.socket.from = Some(from);
        self
    }

    /// Shrinks the socket's receive buffer, so that the kernel holds little for a client that
    /// does not read.
    pub fn recv_buffer(mut self, bytes: u32) -> Connect {
        self.socket.recv_buffer = Some(bytes);
        self
    }

    /// Connects; a refused handshake is an error.
    pub async fn connect(self) -> Result<Client> {
        let name = self.name.clone();
        match self.try_connect().await? {
            Ok(client) => Ok(client),
            Err(Refused { status, body }) => bail!("{name}: refused with {status}: {body}"),
        }
    }

    /// Connects: the client, or the HTTP answer that refused the handshake.
    pub async fn try_connect(self) -> Result<std::result::Result<Client, Refused>> {
        let Connect {
            name,
            addr,
            path,
            origin,
            tls,
            socket,
        } = self;
        let url = match tls {
            // The TCP connection goes to `addr`; the URL's host is the name the certificate
            // carries.
            Some(_) => format!("wss://localhost:{}{path}", addr.port()),
            None => format!("ws://{addr}{path}"),
        };
        let stream = net::connect(addr, socket)
            .await
            .with_context(|| name.clone())?;
        let mut request = url
            .as_str()
            .into_client_request()
            .with_context(|| format!("{name}: {url}"))?;
        if let Some(origin) = origin {
            request
                .headers_mut()
                .insert("Origin", HeaderValue::from_str(&origin)?);
        }
        let connector = match tls {
            Some(tls) => Connector::Rustls(tls),
            None => Connector::Plain,
        };
        let handshake =
            tokio_tungstenite::client_async_tls_with_config(request, stream, None, Some(connector));
        let answer = tokio::time::timeout(RECV_TIMEOUT, handshake)
            .await
            .with_context(|| format!("{name}: connecting to {url} timed out"))?;
        match answer {
            Ok((ws, _)) => Ok(Ok(Client {
                name,
                ws,
                next_req_id: 1,
                pending: VecDeque::new(),
            })),
            Err(WsError::Http(response)) => {
                let body = response
                    .body()
                    .as_deref()
                    .map(String::from_utf8_lossy)
                    .unwrap_or_default()
                    .into_owned();
                Ok(Err(Refused {
                    status: response.status().as_u16(),
                    body,
                }))
            }
            Err(e) => Err(e).with_context(|| format!("{name}: cannot connect to {url}")),
        }
    }
}

impl Client {
    /// A connection named `name` (for messages) to the WebSocket server at `addr`, to be set up.
    pub fn to(name: impl Into<String>, addr: SocketAddr) -> Connect {
        Connect {
            name: name.into(),
            addr,
            path: "/".to_owned(),
            origin: None,
            tls: None,
            socket: SocketOptions::default(),
        }
    }

    /// Connects to `ws://addr/`.
    pub async fn connect(name: impl Into<String>, addr: SocketAddr) -> Result<Client> {
        Client::to(name, addr).connect().await
    }

    /// Connects to `wss://localhost:PORT/` at `addr`, trusting only the CAs of `tls`.
    pub async fn connect_wss(
        name: impl Into<String>,
        addr: SocketAddr,
        tls: Arc<ClientConfig>,
    ) -> Result<Client> {
        Client::to(name, addr).tls(tls).connect().await
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Sends one WebSocket message as is.
    pub async fn send_message(&mut self, message: Message) -> Result<()> {
        tokio::time::timeout(RECV_TIMEOUT, self.ws.send(message))
            .await
            .with_context(|| format!("{}: sending timed out", self.name))?
            .with_context(|| format!("{}: cannot send", self.name))
    }

    /// Sends a text frame.
    pub async fn send_text(&mut self, text: impl Into<String>) -> Result<()> {
        self.send_message(Message::text(text.into())).await
    }

    /// Sends a JSON value as a text frame.
    pub async fn send_json(&mut self, value: &Value) -> Result<()> {
        self.send_text(value.to_string()).await
    }

    /// Sends a binary frame.
    pub async fn send_binary(&mut self, bytes: impl Into<Bytes>) -> Result<()> {
        self.send_message(Message::Binary(bytes.into())).await
    }

    /// Sends a (masked) text frame whose payload is `payload` even if it is not UTF-8.
    pub async fn send_raw_text_frame(&mut self, payload: impl Into<Vec<u8>>) -> Result<()> {
        self.send_frames(&[RawFrame::text(payload)]).await
    }

    /// Writes hand-built frames on the connection, in one write, behind the WebSocket library's
    /// back (it has flushed everything it was given before).
    pub async fn send_frames(&mut self, frames: &[RawFrame]) -> Result<()> {
        let bytes: Vec<u8> = frames.iter().flat_map(RawFrame::encode).collect();
        self.send_raw(&bytes).await
    }

    /// Writes `bytes` on the connection as they are.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        let stream = self.ws.get_mut();
        let write = async {
            stream.write_all(bytes).await?;
            stream.flush().await
        };
        tokio::time::timeout(RECV_TIMEOUT, write)
            .await
            .with_context(|| format!("{}: writing raw bytes timed out", self.name))?
            .with_context(|| format!("{}: cannot write raw bytes", self.name))
    }

    /// Sends a ping and waits for its pong; text frames that arrive meanwhile are kept for the
    /// next reads.
    pub async fn ping(&mut self, payload: &[u8]) -> Result<()> {
        self.send_message(Message::Ping(Bytes::copy_from_slice(payload)))
            .await?;
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .with_context(|| format!("{}: no pong within {RECV_TIMEOUT:?}", self.name))?;
            match next {
                Some(Ok(Message::Pong(pong))) if pong[..] == *payload => return Ok(()),
                Some(Ok(Message::Text(text))) => self.pending.push_back(text.as_str().to_owned()),
                Some(Ok(other)) => bail!("{}: expected a pong, got {other:?}", self.name),
                Some(Err(e)) => bail!("{}: expected a pong: {e}", self.name),
                None => bail!("{}: expected a pong, the stream ended", self.name),
            }
        }
    }

    /// The next event, or `None` if nothing arrives before `deadline`. Pings and pongs are
    /// skipped (tungstenite answers pings itself).
    pub async fn next_event(&mut self, deadline: Instant) -> Option<Event> {
        match self.pending.pop_front() {
            Some(text) => Some(Event::Text(text)),
            None => self.read_event(deadline).await,
        }
    }

    /// Like [`Client::next_event`], ignoring the pending frames.
    async fn read_event(&mut self, deadline: Instant) -> Option<Event> {
        loop {
            let next = tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .ok()?;
            let event = match next {
                None => Event::Disconnected("the stream ended".to_owned()),
                Some(Err(e)) => Event::Disconnected(e.to_string()),
                Some(Ok(Message::Text(text))) => Event::Text(text.as_str().to_owned()),
                Some(Ok(Message::Binary(bytes))) => Event::Binary(bytes.to_vec()),
                Some(Ok(Message::Close(frame))) => {
                    Event::Close(frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())))
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => continue,
            };
            return Some(event);
        }
    }

    /// The next event, waiting at most `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Result<Event> {
        self.next_event(Instant::now() + timeout)
            .await
            .with_context(|| format!("{}: nothing received within {timeout:?}", self.name))
    }

    /// The next text frame; anything else is an error.
    pub async fn recv_text(&mut self, timeout: Duration) -> Result<String> {
        match self.recv(timeout).await? {
            Event::Text(text) => Ok(text),
            other => bail!("{}: expected a text frame, got {other}", self.name),
        }
    }

    /// The next text frame, parsed as JSON.
    pub async fn recv_json(&mut self, timeout: Duration) -> Result<Value> {
        let text = self.recv_text(timeout).await?;
        serde_json::from_str(&text)
            .with_context(|| format!("{}: expected JSON, got {}", self.name, abbreviate(&text)))
    }

    /// Fails unless the next frame is exactly the text `expected`.
    pub async fn expect_text(&mut self, expected: &str) -> Result<()> {
        let text = self
            .recv_text(RECV_TIMEOUT)
            .await
            .with_context(|| format!("{}: while expecting {}", self.name, abbreviate(expected)))?;
        if text != expected {
            bail!(
                "{}: expected {}, got {}",
                self.name,
                abbreviate(expected),
                abbreviate(&text)
            );
        }
        Ok(())
    }

    /// Fails unless the next event is a close frame; returns its code. Answers it at once, as
    /// browsers do (tungstenite queues the answer until the next read or flush).
    pub async fn expect_close(&mut self, timeout: Duration) -> Result<u16> {
        match self.recv(timeout).await? {
            Event::Close(Some((code, _))) => {
                // The server may already have closed the TCP connection: nothing to answer then.
                let _ = tokio::time::timeout(RECV_TIMEOUT, self.ws.flush()).await;
                Ok(code)
            }
            other => bail!("{}: expected a close frame, got {other}", self.name),
        }
    }

    /// Fails if anything arrives within `period`.
    pub async fn expect_silence(&mut self, period: Duration) -> Result<()> {
        match self.next_event(Instant::now() + period).await {
            None => Ok(()),
            Some(event) => bail!("{}: expected nothing more, got {event}", self.name),
        }
    }

    /// Adds a fresh integer `req_id` to `command` and sends it; returns the `req_id`.
    async fn send_request(&mut self, command: &mut Value) -> Result<u64> {
        let req_id = self.next_req_id;
        self.next_req_id += 1;
        let object = command
            .as_object_mut()
            .context("a command must be a JSON object")?;
        object.insert("req_id".to_owned(), req_id.into());
        self.send_json(command).await?;
        Ok(req_id)
    }

    /// Sends `command` with a fresh integer `req_id` and waits for its ack. An error reply to it
    /// fails; other frames that arrive meanwhile are kept for the next reads.
    pub async fn request(&mut self, mut command: Value) -> Result<()> {
        let req_id = self.send_request(&mut command).await?;
        let deadline = Instant::now() + RECV_TIMEOUT;
        // Frames already pending arrived before this request was sent.
        let mut kept = std::mem::take(&mut self.pending);
        let result = loop {
            let Some(event) = self.read_event(deadline).await else {
                break Err(anyhow::anyhow!("no reply within {RECV_TIMEOUT:?}"));
            };
            let Event::Text(text) = event else {
                break Err(anyhow::anyhow!("got {event} instead of a reply"));
            };
            match reply_kind(&text, req_id) {
                Some("ack") => break Ok(()),
                Some(_) => break Err(anyhow::anyhow!("rejected: {text}")),
                None => kept.push_back(text),
            }
        };
        self.pending = kept;
        result.with_context(|| format!("{}: request {command}", self.name))
    }

    /// Sends `command` with a fresh integer `req_id`; the very next frame must be the reply to
    /// it, an ack or an error, which is returned. Nothing may arrive before it: a barrier.
    pub async fn reply_to(&mut self, mut command: Value) -> Result<Value> {
        let req_id = self.send_request(&mut command).await?;
        let text = self
            .recv_text(RECV_TIMEOUT)
            .await
            .with_context(|| format!("{}: waiting for the reply to {command}", self.name))?;
        if reply_kind(&text, req_id).is_none() {
            bail!(
                "{}: expected the reply to {command}, got {}",
                self.name,
                abbreviate(&text)
            );
        }
        serde_json::from_str(&text).with_context(|| format!("{}: {text}", self.name))
    }

    /// Like [`Client::reply_to`]: the reply must be exactly `{"cmd":"ack","req_id":N}`.
    pub async fn ack(&mut self, mut command: Value) -> Result<()> {
        let req_id = self.send_request(&mut command).await?;
        let expected = format!(r#"{{"cmd":"ack","req_id":{req_id}}}"#);
        self.expect_text(&expected)
            .await
            .with_context(|| format!("{}: request {command}", self.name))
    }

    /// Like [`Client::reply_to`]: `Ok(())` for an ack, else the error reply's code.
    pub async fn outcome(&mut self, command: Value) -> Result<std::result::Result<(), String>> {
        let reply = self.reply_to(command).await?;
        match reply["cmd"].as_str() {
            Some("ack") => Ok(Ok(())),
            _ => Ok(Err(reply["code"].as_str().unwrap_or("?").to_owned())),
        }
    }

    /// Joins `group` (a string group id) and waits for the ack.
    pub async fn join(&mut self, group: &str) -> Result<()> {
        self.request(add_group(group)).await
    }

    /// Leaves `group` and waits for the ack.
    pub async fn leave(&mut self, group: &str) -> Result<()> {
        self.request(leave_group(group)).await
    }

    /// Sends `message` to `group` and waits for the ack.
    pub async fn send_to_group(&mut self, group: &str, message: &str) -> Result<()> {
        self.request(send_to_group(group, message)).await
    }

    /// Sends `message` to `group` without a `req_id`: success is silent.
    pub async fn publish(&mut self, group: &str, message: &str) -> Result<()> {
        self.send_json(&send_to_group(group, message)).await
    }

    /// Receives until every stream is complete. Each stream is the messages one sender sent to
    /// one group this client is a member of, in sending order; streams interleave freely.
    /// Messages must be unique across streams. A message that is not expected, or expected
    /// later in its stream, or received twice, fails at once.
    pub async fn expect_streams(&mut self, streams: Vec<Vec<String>>) -> Result<()> {
        let total: usize = streams.iter().map(Vec::len).sum();
        let mut streams: Vec<VecDeque<String>> = streams
            .into_iter()
            .filter(|s| !s.is_empty())
            .map(VecDeque::from)
            .collect();
        let mut received = HashSet::new();
        // Allow time in proportion to the volume, on top of the usual wait.
        let deadline = Instant::now() + RECV_TIMEOUT + Duration::from_millis(10) * total as u32;
        while !streams.is_empty() {
            let next: Vec<&String> = streams.iter().filter_map(|s| s.front()).collect();
            let event = self.next_event(deadline).await.with_context(|| {
                format!(
                    "{}: timed out after {} of {total} messages; next expected from each stream: \
                     {next:?}",
                    self.name,
                    received.len()
                )
            })?;
            let Event::Text(text) = event else {
                bail!("{}: expected a group message, got {event}", self.name);
            };
            if let Some(i) = streams.iter().position(|s| s.front() == Some(&text)) {
                streams[i].pop_front();
                if streams[i].is_empty() {
                    streams.swap_remove(i);
                }
                received.insert(text);
                continue;
            }
            let next: Vec<&String> = streams.iter().filter_map(|s| s.front()).collect();
            if received.contains(&text) {
                bail!("{}: received {} twice", self.name, abbreviate(&text));
            }
            if streams.iter().any(|s| s.contains(&text)) {
                bail!(
                    "{}: {} arrived out of order; next expected from each stream: {next:?}",
                    self.name,
                    abbreviate(&text)
                );
            }
            bail!(
                "{}: unexpected {} (not sent to a group of this client); next expected: {next:?}",
                self.name,
                abbreviate(&text)
            );
        }
        Ok(())
    }

    /// The WebSocket stream itself, for what the client does not do (reading pings). Frames
    /// kept by [`Client::request`] are lost: there must be none.
    pub fn into_inner(self) -> Result<WebSocketStream<MaybeTlsStream<TcpStream>>> {
        if let Some(text) = self.pending.front() {
            bail!("{}: unread frame {}", self.name, abbreviate(text));
        }
        Ok(self.ws)
    }

    /// Closes the connection with a close frame and waits for the server's close frame.
    pub async fn close(mut self) -> Result<()> {
        tokio::time::timeout(RECV_TIMEOUT, self.ws.close(None))
            .await
            .with_context(|| format!("{}: closing timed out", self.name))?
            .with_context(|| format!("{}: cannot send a close frame", self.name))?;
        loop {
            match self.recv(RECV_TIMEOUT).await? {
                Event::Close(_) | Event::Disconnected(_) => return Ok(()),
                Event::Text(_) | Event::Binary(_) => {}
            }
        }
    }
}

/// `{"cmd":"add_group","group_id":GROUP}`: a string or a number.
pub fn add_group(group: impl Into<Value>) -> Value {
    json!({"cmd": "add_group", "group_id": group.into()})
}

/// `{"cmd":"leave_group","group_id":GROUP}`.
pub fn leave_group(group: impl Into<Value>) -> Value {
    json!({"cmd": "leave_group", "group_id": group.into()})
}

/// `{"cmd":"send_to_group","group_id":GROUP,"message":MESSAGE}`.
pub fn send_to_group(group: impl Into<Value>, message: impl Into<Value>) -> Value {
    json!({"cmd": "send_to_group", "group_id": group.into(), "message": message.into()})
}

/// Whether `text` is a reply to request `req_id`: `Some("ack")` or `Some("error")`.
fn reply_kind(text: &str, req_id: u64) -> Option<&'static str> {
    let reply: Value = serde_json::from_str(text).ok()?;
    if reply.get("req_id") != Some(&Value::from(req_id)) {
        return None;
    }
    match reply.get("cmd")?.as_str()? {
        "ack" => Some("ack"),
        "error" => Some("error"),
        // Commands that answer with data.
        "whoami" => Some("whoami"),
        "count" => Some("count"),
        "members" => Some("members"),
        _ => None,
    }
}

/// Fails if any of `clients` receives anything within [`QUIET_PERIOD`]; they wait together.
pub async fn expect_quiet<'a>(clients: impl IntoIterator<Item = &'a mut Client>) -> Result<()> {
    try_join_all(
        clients
            .into_iter()
            .map(|client| client.expect_silence(QUIET_PERIOD)),
    )
    .await?;
    Ok(())
}
