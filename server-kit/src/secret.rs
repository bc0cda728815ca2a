//! Secrets kept in files or flags, and the rule that a listener reachable from other hosts is
//! not left without one by accident.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use protocol::link_auth::{LinkSecret, LinkSecretError};
pub use secrecy::{ExposeSecret, SecretString};

/// Why a secret cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("cannot read the link secret file {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{origin}: {source}")]
    Invalid {
        origin: String,
        source: LinkSecretError,
    },
    #[error("{0}")]
    Exposed(String),
}

/// A secret given on the command line or in the environment, for clap's `value_parser`: kept
/// as a [`SecretString`], whose `Debug` never shows it.
pub fn parse_secret(value: &str) -> Result<SecretString, std::convert::Infallible> {
    Ok(SecretString::from(value))
}

/// The link secret given inline or in a file (`env_prefix` names the binary's environment
/// variables in error messages). A file's trailing newline is not part of the secret.
pub fn load_secret(
    inline: Option<&str>,
    file: Option<&Path>,
    env_prefix: &str,
) -> Result<Option<LinkSecret>, SecretError> {
    let (bytes, origin) = match (inline, file) {
        (Some(secret), _) => (
            secret.as_bytes().to_vec(),
            format!("--link-secret ({env_prefix}_LINK_SECRET)"),
        ),
        (None, Some(path)) => {
            let bytes = read_secret_file(path).map_err(|source| SecretError::File {
                path: path.to_owned(),
                source,
            })?;
            (bytes, format!("link secret file {}", path.display()))
        }
        (None, None) => return Ok(None),
    };
    LinkSecret::new(bytes)
        .map(Some)
        .map_err(|source| SecretError::Invalid { origin, source })
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
) -> Result<(), SecretError> {
    if has_secret || insecure || addr.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    Err(SecretError::Exposed(format!(
        "the broker link address {addr} ({listen_flag}) is not a loopback address and no link \
         secret is set: anyone who reaches it could publish to every group. Set --link-secret-file \
         (or {env_prefix}_LINK_SECRET), listen on 127.0.0.1, or pass --insecure to accept the risk \
         on a trusted network"
    )))
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
}
