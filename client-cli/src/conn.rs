//! The WebSocket connection: connecting (`ws://`, or `wss://` trusting the system's roots),
//! reading text frames under a deadline, closing cleanly.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// How long a clean close waits for the server's close echo before dropping the connection.
pub const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A deadline expired: `main` turns this error into exit code 2.
#[derive(Debug)]
pub struct TimedOut(pub String);

impl fmt::Display for TimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TimedOut {}

/// Resolves on Ctrl-C (or SIGTERM on Unix), once.
pub struct Interrupt {
    signal: Pin<Box<dyn Future<Output = ()>>>,
    fired: bool,
}

impl fmt::Debug for Interrupt {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Interrupt")
            .field("fired", &self.fired)
            .finish()
    }
}

impl Interrupt {
    pub fn on_signals() -> Interrupt {
        Interrupt {
            signal: Box::pin(signals()),
            fired: false,
        }
    }

    async fn wait(&mut self) {
        if !self.fired {
            self.signal.as_mut().await;
            self.fired = true;
        }
    }
}

async fn signals() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    r = tokio::signal::ctrl_c() => ctrl_c_result(r).await,
                    _ = term.recv() => {}
                }
            }
            Err(e) => {
                eprintln!("warning: cannot listen for SIGTERM: {e}");
                ctrl_c_result(tokio::signal::ctrl_c().await).await;
            }
        }
    }
    #[cfg(not(unix))]
    ctrl_c_result(tokio::signal::ctrl_c().await).await;
}

/// A failure to install the Ctrl-C handler must not look like a Ctrl-C: wait forever instead.
async fn ctrl_c_result(result: std::io::Result<()>) {
    if let Err(e) = result {
        eprintln!("warning: cannot listen for Ctrl-C: {e}");
        std::future::pending::<()>().await;
    }
}

/// How a [`wait`] ended.
#[derive(Debug)]
pub enum Waited<T> {
    Done(T),
    Deadline,
    Interrupted,
}

/// Runs `fut` until it completes, `deadline` passes (never when `None`) or `interrupt` fires.
pub async fn wait<F: Future>(
    fut: F,
    deadline: Option<Instant>,
    interrupt: &mut Interrupt,
) -> Waited<F::Output> {
    let deadline = async {
        match deadline {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        out = fut => Waited::Done(out),
        () = deadline => Waited::Deadline,
        () = interrupt.wait() => Waited::Interrupted,
    }
}

/// Opens the WebSocket, giving up after `timeout`. A `wss://` URL is verified against the
/// system's trusted roots (`SSL_CERT_FILE` and `SSL_CERT_DIR` add or replace them, e.g. for a
/// private CA).
pub async fn connect(url: &str, timeout: Duration) -> Result<Ws> {
    let connector = if is_wss(url) {
        let config = tls_config().map_err(|e| anyhow!("cannot connect to {url}: {e}"))?;
        Some(Connector::Rustls(config))
    } else {
        None
    };
    let connecting = tokio_tungstenite::connect_async_tls_with_config(url, None, false, connector);
    match tokio::time::timeout(timeout, connecting).await {
        Ok(Ok((ws, _response))) => Ok(ws),
        Ok(Err(e)) => Err(anyhow!("cannot connect to {url}: {e}")),
        Err(_) => Err(anyhow!(
            "cannot connect to {url}: no handshake within {} s",
            timeout.as_secs_f64()
        )),
    }
}

fn is_wss(url: &str) -> bool {
    url.get(..6)
        .is_some_and(|scheme| scheme.eq_ignore_ascii_case("wss://"))
}

/// The TLS client configuration of `wss://`: the system's roots, with the ring provider.
fn tls_config() -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    let found = rustls_native_certs::load_native_certs();
    for cert in found.certs {
        // A certificate the system lists but rustls cannot use is no reason to stop.
        let _ = roots.add(cert);
    }
    if roots.is_empty() {
        bail!(
            "no trusted root certificates for wss:// (set SSL_CERT_FILE to a PEM file of CA \
             certificates): {:?}",
            found.errors
        );
    }
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// What [`next_text`] ended with.
#[derive(Debug)]
pub enum Next {
    Text(Utf8Bytes),
    Deadline,
    Interrupted,
}

/// Reads up to the next text frame. Binary frames are reported on stderr and skipped; pings and
/// pongs are left to tungstenite. The server closing the connection is an error.
pub async fn next_text(
    ws: &mut Ws,
    deadline: Option<Instant>,
    interrupt: &mut Interrupt,
) -> Result<Next> {
    loop {
        let item = match wait(ws.next(), deadline, interrupt).await {
            Waited::Done(item) => item,
            Waited::Deadline => return Ok(Next::Deadline),
            Waited::Interrupted => return Ok(Next::Interrupted),
        };
        match item {
            Some(Ok(Message::Text(text))) => return Ok(Next::Text(text)),
            Some(Ok(Message::Binary(data))) => {
                eprintln!("warning: skipping a binary frame of {} bytes", data.len());
            }
            Some(Ok(Message::Close(frame))) => {
                let why = describe_close(frame.as_ref());
                // Reading on lets tungstenite send its close echo, completing the handshake.
                drain(ws).await;
                bail!("server closed the connection: {why}");
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            Some(Err(e)) => return Err(read_error(e)),
            None => return Err(read_error(WsError::ConnectionClosed)),
        }
    }
}

fn read_error(e: WsError) -> anyhow::Error {
    match e {
        WsError::ConnectionClosed
        | WsError::AlreadyClosed
        | WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => {
            anyhow!("the server closed the connection without a close frame")
        }
        other => anyhow!("connection error: {other}"),
    }
}

/// `<code> <reason>` of a close frame.
pub fn describe_close(frame: Option<&CloseFrame>) -> String {
    match frame {
        None => "1005 (no status code)".to_owned(),
        Some(f) if f.reason.is_empty() => f.code.to_string(),
        Some(f) => format!("{} {}", f.code, f.reason),
    }
}

/// Sends a close frame with code 1000 and waits (briefly) for the server's echo or EOF.
pub async fn close<S>(ws: &mut WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let frame = CloseFrame {
        code: CloseCode::Normal,
        reason: Utf8Bytes::default(),
    };
    let closing = async {
        if ws.send(Message::Close(Some(frame))).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    };
    // The server may be gone or slow: the close is best effort once the work is done.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, closing).await;
}

/// Reads until EOF or an error, for at most [`CLOSE_TIMEOUT`].
async fn drain(ws: &mut Ws) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(_)) = ws.next().await {}
    })
    .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_descriptions() {
        assert_eq!(describe_close(None), "1005 (no status code)");
        let frame = |code: u16, reason: &str| CloseFrame {
            code: CloseCode::from(code),
            reason: reason.into(),
        };
        assert_eq!(describe_close(Some(&frame(1000, ""))), "1000");
        assert_eq!(
            describe_close(Some(&frame(4001, "slow consumer"))),
            "4001 slow consumer"
        );
    }

    #[test]
    fn wss_urls_use_tls() {
        assert!(is_wss("wss://h:1/"));
        assert!(is_wss("WSS://h"));
        assert!(!is_wss("ws://h:1"));
        assert!(!is_wss("wss:"));
    }

    #[test]
    fn timeouts_are_recognisable() {
        let err = anyhow::Error::from(TimedOut("timed out".to_owned()));
        assert!(err.is::<TimedOut>());
        assert!(!anyhow!("other").is::<TimedOut>());
    }
}
