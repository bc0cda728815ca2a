//! A WebSocket test client speaking the JSON protocol. Every read has a deadline.
//!
//! While waiting for an `ack`, frames that are not the awaited reply are kept and handed out by
//! the next reads, so nothing that arrives goes unchecked.

use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::future::try_join_all;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::frame::RawFrame;
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

impl Client {
    /// Connects to `ws://addr/`.
    pub async fn connect(name: impl Into<String>, addr: SocketAddr) -> Result<Client> {
        let name = name.into();
        let url = format!("ws://{addr}/");
        let (ws, _) = tokio::time::timeout(RECV_TIMEOUT, tokio_tungstenite::connect_async(&url))
            .await
            .with_context(|| format!("{name}: connecting to {url} timed out"))?
            .with_context(|| format!("{name}: cannot connect to {url}"))?;
        Ok(Client {
            name,
            ws,
            next_req_id: 1,
            pending: VecDeque::new(),
        })
    }

    /// Connects to `wss://localhost:PORT/` at `addr`, trusting only the CAs of `tls`.
    pub async fn connect_wss(
        name: impl Into<String>,
        addr: SocketAddr,
        tls: std::sync::Arc<tokio_rustls::rustls::ClientConfig>,
    ) -> Result<Client> {
        let name = name.into();
        let url = format!("wss://localhost:{}/", addr.port());
        // The TCP connection goes to `addr`; the URL's host is the name the certificate carries.
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("{name}: cannot connect to {addr}"))?;
        let connect = tokio_tungstenite::client_async_tls_with_config(
            url.as_str(),
            stream,
            None,
            Some(tokio_tungstenite::Connector::Rustls(tls)),
        );
        let (ws, _) = tokio::time::timeout(RECV_TIMEOUT, connect)
            .await
            .with_context(|| format!("{name}: connecting to {url} timed out"))?
            .with_context(|| format!("{name}: cannot connect to {url}"))?;
        Ok(Client {
            name,
            ws,
            next_req_id: 1,
            pending: VecDeque::new(),
        })
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

    /// Sends `command` with a fresh integer `req_id` and waits for its ack. An error reply to it
    /// fails; other frames that arrive meanwhile are kept for the next reads.
    pub async fn request(&mut self, mut command: Value) -> Result<()> {
        let req_id = self.next_req_id;
        self.next_req_id += 1;
        let object = command
            .as_object_mut()
            .context("a command must be a JSON object")?;
        object.insert("req_id".to_owned(), req_id.into());
        self.send_json(&command).await?;
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
            let reply: Option<Value> = serde_json::from_str(&text).ok();
            let is_reply_to = |cmd: &str| {
                reply.as_ref().is_some_and(|r| {
                    r.get("cmd").and_then(Value::as_str) == Some(cmd)
                        && r.get("req_id") == Some(&Value::from(req_id))
                })
            };
            if is_reply_to("ack") {
                break Ok(());
            }
            if is_reply_to("error") {
                break Err(anyhow::anyhow!("rejected: {text}"));
            }
            kept.push_back(text);
        };
        self.pending = kept;
        result.with_context(|| format!("{}: request {command}", self.name))
    }

    /// Joins `group` (a string group id) and waits for the ack.
    pub async fn join(&mut self, group: &str) -> Result<()> {
        self.request(json!({"cmd": "add_group", "group_id": group}))
            .await
    }

    /// Leaves `group` and waits for the ack.
    pub async fn leave(&mut self, group: &str) -> Result<()> {
        self.request(json!({"cmd": "leave_group", "group_id": group}))
            .await
    }

    /// Sends `message` to `group` and waits for the ack.
    pub async fn send_to_group(&mut self, group: &str, message: &str) -> Result<()> {
        self.request(json!({"cmd": "send_to_group", "group_id": group, "message": message}))
            .await
    }

    /// Sends `message` to `group` without a `req_id`: success is silent.
    pub async fn publish(&mut self, group: &str, message: &str) -> Result<()> {
        self.send_json(&json!({"cmd": "send_to_group", "group_id": group, "message": message}))
            .await
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
