//! One connection to a Redis server: TCP, TLS for `rediss://`, `AUTH` from the URL, a client
//! name; then RESP2 replies read through [`RespCodec`] and commands written through a buffer.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use futures_util::StreamExt;
use percent_encoding::percent_decode_str;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpStream;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, RootCertStore};
use tokio_rustls::TlsConnector;
use tokio_util::codec::FramedRead;
use url::Url;

use super::resp::{encode, Reply, RespCodec, RespError, RespLimits};

/// Why a Redis connection failed.
#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("connect timed out")]
    ConnectTimeout,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("protocol: {0}")]
    Protocol(#[from] RespError),
    #[error("server closed the connection")]
    Closed,
    #[error("authentication refused: {0}")]
    Auth(String),
    #[error("server error: {0}")]
    Server(String),
    #[error("unexpected reply: {0}")]
    Unexpected(String),
    #[error("no reply for {0:?}")]
    Silent(Duration),
    #[error("a write blocked for {0:?} with no reply heard")]
    Stalled(Duration),
    #[error("the cluster moved: {0}")]
    Moved(String),
    #[error("the gateway could not keep up: {0}")]
    SlowConsumer(String),
}

pub type Reader = FramedRead<Box<dyn AsyncRead + Send + Unpin>, RespCodec>;
pub type Writer = BufWriter<Box<dyn AsyncWrite + Send + Unpin>>;

/// A connected, authenticated connection.
pub struct Conn {
    pub reader: Reader,
    pub writer: Writer,
    /// `CLIENT ID`, when the server answered it (for `CLIENT LIST ID`).
    pub id: Option<i64>,
}

/// The TLS client configuration for `rediss://`: the system's roots (`SSL_CERT_FILE` and
/// `SSL_CERT_DIR` are honored), with the ring provider the workspace uses.
fn tls_config() -> Result<Arc<ClientConfig>, RedisError> {
    static CONFIG: OnceLock<Result<Arc<ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let mut roots = RootCertStore::empty();
            let found = rustls_native_certs::load_native_certs();
            for cert in found.certs {
                let _ = roots.add(cert);
            }
            if roots.is_empty() {
                return Err(format!("no trusted root certificates: {:?}", found.errors));
            }
            ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()
                .map(|b| Arc::new(b.with_root_certificates(roots).with_no_client_auth()))
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(RedisError::Tls)
}

fn decoded(text: &str) -> String {
    percent_decode_str(text).decode_utf8_lossy().into_owned()
}

/// Connects to `url`, authenticates and names the connection `name`, all within `timeout`;
/// its replies are held to `limits`.
pub async fn connect(
    url: &Url,
    name: &str,
    limits: RespLimits,
    timeout: Duration,
) -> Result<Conn, RedisError> {
    let handshake = async {
        let host = url.host_str().unwrap_or_default();
        let port = url.port().unwrap_or(6379);
        let host_bare = host.trim_start_matches('[').trim_end_matches(']');
        let stream = TcpStream::connect((host_bare, port)).await?;
        stream.set_nodelay(true)?;
        let (read_half, write_half): (
            Box<dyn AsyncRead + Send + Unpin>,
            Box<dyn AsyncWrite + Send + Unpin>,
        ) = if url.scheme().starts_with("rediss") {
            let server_name = ServerName::try_from(host_bare.to_owned())
                .map_err(|e| RedisError::Tls(e.to_string()))?;
            let stream = TlsConnector::from(tls_config()?)
                .connect(server_name, stream)
                .await
                .map_err(|e| RedisError::Tls(e.to_string()))?;
            let (r, w) = tokio::io::split(stream);
            (Box::new(r), Box::new(w))
        } else {
            let (r, w) = stream.into_split();
            (Box::new(r), Box::new(w))
        };
        let mut conn = Conn {
            reader: FramedRead::with_capacity(read_half, RespCodec::new(limits), 16 * 1024),
            writer: BufWriter::with_capacity(64 * 1024, write_half),
            id: None,
        };
        let user = decoded(url.username());
        if let Some(password) = url.password().map(decoded) {
            let auth = if user.is_empty() {
                encode(&[b"AUTH", password.as_bytes()])
            } else {
                encode(&[b"AUTH", user.as_bytes(), password.as_bytes()])
            };
            conn.writer.write_all(&auth).await?;
        }
        conn.writer
            .write_all(&encode(&[b"CLIENT", b"SETNAME", name.as_bytes()]))
            .await?;
        conn.writer.write_all(&encode(&[b"CLIENT", b"ID"])).await?;
        conn.writer.flush().await?;
        if url.password().is_some() {
            if let Reply::Error(e) = conn.next().await? {
                return Err(RedisError::Auth(String::from_utf8_lossy(&e).into_owned()));
            }
        }
        match conn.next().await? {
            // A server that refuses the name (an ACL) is still usable.
            Reply::Error(e) if e.starts_with(b"NOAUTH") => {
                return Err(RedisError::Auth(String::from_utf8_lossy(&e).into_owned()))
            }
            _ => {}
        }
        conn.id = conn.next().await?.as_int();
        Ok(conn)
    };
    tokio::time::timeout(timeout, handshake)
        .await
        .map_err(|_| RedisError::ConnectTimeout)?
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Conn {
    /// The next reply.
    pub async fn next(&mut self) -> Result<Reply, RedisError> {
        match self.reader.next().await {
            None => Err(RedisError::Closed),
            Some(reply) => Ok(reply?),
        }
    }

    /// Sends one command and reads its reply (before the connection is shared by anything).
    pub async fn request(&mut self, args: &[&[u8]]) -> Result<Reply, RedisError> {
        self.writer.write_all(&encode(args)).await?;
        self.writer.flush().await?;
        self.next().await
    }
}
