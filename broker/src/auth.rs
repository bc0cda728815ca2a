//! Who may use the broker link: the link secret (challenge and response, see
//! [`protocol::link_auth`]), TLS on the link listener, and the rule that a link reachable from
//! other hosts is not left open by accident.
//!
//! [`SecurityArgs`] are the `broker` binary's flags; [`BrokerSecurity`] is what a [`Broker`]
//! runs with (`Broker::with_security`). The secret helpers and [`check_exposure`] are shared
//! with the gateway, whose embedded broker follows the same rule.
//!
//! [`Broker`]: crate::Broker

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use protocol::link_auth::{LinkSecret, LinkSecretError, CHALLENGE_LEN};
use tokio_rustls::rustls::ServerConfig;

use crate::tls::TlsError;

/// What a broker requires of its links. The default is the seed's: no secret, no TLS.
#[derive(Debug, Clone, Default)]
pub struct BrokerSecurity {
    /// When set, every link must answer the challenge in the broker's hello.
    pub link_secret: Option<LinkSecret>,
    /// When set, the link listener speaks TLS.
    pub tls: Option<Arc<ServerConfig>>,
}

/// Why the security settings cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("cannot read the link secret file {}: {source}", path.display())]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {source}")]
    Secret {
        origin: String,
        source: LinkSecretError,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("{0}")]
    Exposed(String),
}

/// The `broker` binary's security flags.
#[derive(Clone, clap::Args)]
pub struct SecurityArgs {
    /// Shared secret that gateways must prove they know (challenge and response: the secret never
    /// crosses the wire). At least 16 bytes. Prefer --link-secret-file, which keeps it out of
    /// process listings.
    #[arg(
        long,
        env = "BROKER_LINK_SECRET",
        hide_env_values = true,
        conflicts_with = "link_secret_file"
    )]
    pub link_secret: Option<String>,

    /// File holding the link secret (one trailing newline is ignored).
    #[arg(long, env = "BROKER_LINK_SECRET_FILE", value_name = "FILE")]
    pub link_secret_file: Option<PathBuf>,

    /// Allow --listen on a non-loopback address without a link secret: anyone who reaches the
    /// port can then publish to any group.
    #[arg(long, env = "BROKER_INSECURE")]
    pub insecure: bool,

    /// PEM certificate chain: the link listener speaks TLS (needs --tls-key).
    #[arg(
        long,
        env = "BROKER_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(
        long,
        env = "BROKER_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

/// Keeps the secret out of logs.
impl fmt::Debug for SecurityArgs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SecurityArgs")
            .field(
                "link_secret",
                &self.link_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("link_secret_file", &self.link_secret_file)
            .field("insecure", &self.insecure)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

impl SecurityArgs {
    /// Reads the secret and the TLS files, and refuses a link listener on `listen` that other
    /// hosts can reach without a secret (unless `--insecure`).
    pub fn load(&self, listen: SocketAddr) -> Result<BrokerSecurity, SecurityError> {
        let link_secret = load_secret(
            self.link_secret.as_deref(),
            self.link_secret_file.as_deref(),
            "BROKER",
        )?;
        check_exposure(
            listen,
            link_secret.is_some(),
            self.insecure,
            "--listen",
            "BROKER",
        )?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
            _ => None,
        };
        Ok(BrokerSecurity { link_secret, tls })
    }
}

/// The link secret given inline or in a file (`env_prefix` names the binary's environment
/// variables in error messages). A file's trailing newline is not part of the secret.
pub fn load_secret(
    inline: Option<&str>,
    file: Option<&Path>,
    env_prefix: &str,
) -> Result<Option<LinkSecret>, SecurityError> {
    let (bytes, origin) = match (inline, file) {
        (Some(secret), _) => (
            secret.as_bytes().to_vec(),
            format!("--link-secret ({env_prefix}_LINK_SECRET)"),
        ),
        (None, Some(path)) => {
            let bytes = read_secret_file(path).map_err(|source| SecurityError::SecretFile {
                path: path.to_owned(),
                source,
            })?;
            (bytes, format!("link secret file {}", path.display()))
        }
        (None, None) => return Ok(None),
    };
    LinkSecret::new(bytes)
        .map(Some)
        .map_err(|source| SecurityError::Secret { origin, source })
}

/// A secret kept in a file: its bytes, less one trailing newline (`\n` or `\r\n`), which
/// editors and `echo` add and nobody means as part of the secret.
pub fn read_secret_file(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut bytes = std::fs::read(path)?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    Ok(bytes)
}

/// Refuses a broker link listener that hosts other than this one can reach while it has no
/// secret: anyone who reaches it could publish to every group. `--insecure` overrides.
pub fn check_exposure(
    addr: SocketAddr,
    has_secret: bool,
    insecure: bool,
    listen_flag: &str,
    env_prefix: &str,
) -> Result<(), SecurityError> {
    if has_secret || insecure || addr.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    Err(SecurityError::Exposed(format!(
        "the broker link address {addr} ({listen_flag}) is not a loopback address and no link \
         secret is set: anyone who reaches it could publish to every group. Set --link-secret-file \
         (or {env_prefix}_LINK_SECRET), listen on 127.0.0.1, or pass --insecure to accept the risk \
         on a trusted network"
    )))
}

/// A fresh random challenge for a broker hello.
pub(crate) fn new_challenge() -> Result<Bytes, getrandom::Error> {
    let mut challenge = [0u8; CHALLENGE_LEN];
    getrandom::fill(&mut challenge)?;
    Ok(Bytes::copy_from_slice(&challenge))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().expect("socket address")
    }

    #[test]
    fn exposure_needs_a_secret_or_insecure() {
        for loopback in ["127.0.0.1:2206", "[::1]:2206", "[::ffff:127.0.0.1]:2206"] {
            assert!(check_exposure(addr(loopback), false, false, "--listen", "BROKER").is_ok());
        }
        let err = check_exposure(addr("0.0.0.0:2206"), false, false, "--listen", "BROKER")
            .expect_err("exposed")
            .to_string();
        assert!(err.contains("0.0.0.0:2206"), "{err}");
        assert!(err.contains("--insecure"), "{err}");
        assert!(err.contains("BROKER_LINK_SECRET"), "{err}");
        assert!(check_exposure(addr("0.0.0.0:2206"), true, false, "--listen", "BROKER").is_ok());
        assert!(check_exposure(addr("10.0.0.1:2206"), false, true, "--listen", "BROKER").is_ok());
    }

    #[test]
    fn secrets_inline_or_from_a_file() {
        assert!(load_secret(None, None, "BROKER").expect("none").is_none());
        assert!(load_secret(Some("0123456789abcdef"), None, "BROKER")
            .expect("inline")
            .is_some());
        let err = load_secret(Some("short"), None, "BROKER")
            .expect_err("short")
            .to_string();
        assert!(err.contains("BROKER_LINK_SECRET"), "{err}");
        assert!(!err.contains("short"), "the secret is not echoed: {err}");

        let path = std::env::temp_dir().join(format!("broker-secret-{}", std::process::id()));
        std::fs::write(&path, "0123456789abcdef\n").expect("write");
        let from_file = load_secret(None, Some(&path), "BROKER")
            .expect("file")
            .expect("some");
        let inline = LinkSecret::new("0123456789abcdef").expect("secret");
        let mac = inline.answer(b"challenge", "node");
        assert!(
            from_file.verify(b"challenge", "node", &mac),
            "the trailing newline is not part of the secret"
        );
        std::fs::write(&path, "too short\n").expect("write");
        let err = load_secret(None, Some(&path), "BROKER")
            .expect_err("short")
            .to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        let _ = std::fs::remove_file(&path);
        let err = load_secret(None, Some(&path), "BROKER")
            .expect_err("missing")
            .to_string();
        assert!(err.contains("cannot read the link secret file"), "{err}");
    }

    #[test]
    fn debug_redacts_the_secret() {
        let args = SecurityArgs {
            link_secret: Some("super-secret-value".into()),
            link_secret_file: None,
            insecure: false,
            tls_cert: None,
            tls_key: None,
        };
        assert!(!format!("{args:?}").contains("super-secret-value"));
    }
}
