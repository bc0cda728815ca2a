//! Who may use the broker link: the link secret (challenge and response, see
//! [`protocol::link_auth`]), TLS on the link listener, and the rule that a link reachable from
//! other hosts is not left open by accident.
//!
//! [`SecurityArgs`] are the `broker` binary's flags; [`BrokerSecurity`] is what a [`Broker`]
//! runs with (`Broker::with_security`). The secret helpers live in `server_kit::secret`,
//! shared with the gateway, whose embedded broker follows the same rule.
//!
//! [`Broker`]: crate::Broker

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;
use protocol::link_auth::{LinkSecret, CHALLENGE_LEN};
use tokio_rustls::rustls::ServerConfig;

use server_kit::secret::{
    check_exposure, load_secret, parse_secret, ExposeSecret, SecretError, SecretString,
};
use server_kit::tls::TlsError;

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
    #[error(transparent)]
    Secret(#[from] SecretError),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

/// The `broker` binary's security flags.
#[derive(Debug, Clone, clap::Args)]
pub struct SecurityArgs {
    /// Shared secret, at least 16 bytes, that every gateway must prove it knows: the broker's
    /// hello carries a random challenge, and the gateway answers with an HMAC of it (docs/protocol.md,
    /// "Link authentication"); the secret never crosses the wire. Required when
    /// `--broker-listen` is not a loopback address (unless `--insecure`). Not with
    /// `--link-secret-file`.
    #[arg(
        long,
        env = "BROKER_LINK_SECRET",
        hide_env_values = true,
        conflicts_with = "link_secret_file",
        value_parser = parse_secret
    )]
    pub link_secret: Option<SecretString>,

    /// File holding the link secret (one trailing newline is ignored): keeps it out of process
    /// listings and the config file.
    #[arg(long, env = "BROKER_LINK_SECRET_FILE", value_name = "FILE")]
    pub link_secret_file: Option<PathBuf>,

    /// Allows a non-loopback `--broker-listen` without a link secret, for a network where every
    /// host that can reach the port is trusted: anyone who reaches it can publish to any group.
    #[arg(long, env = "BROKER_INSECURE")]
    pub insecure: bool,

    /// PEM certificate chain (leaf first): the link listener speaks TLS only. Needs
    /// `--broker-tls-key`. Gateways connect with `--broker-tls --broker-ca`.
    #[arg(
        long = "broker-tls-cert",
        env = "BROKER_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--broker-tls-cert`.
    #[arg(
        long = "broker-tls-key",
        env = "BROKER_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,
}

impl SecurityArgs {
    /// Reads the secret and the TLS files, and refuses a link listener on `listen` that other
    /// hosts can reach without a secret (unless `--insecure`).
    pub fn load(&self, listen: SocketAddr) -> Result<BrokerSecurity, SecurityError> {
        let link_secret = load_secret(
            self.link_secret.as_ref().map(|s| s.expose_secret()),
            self.link_secret_file.as_deref(),
            "BROKER",
        )?;
        check_exposure(
            listen,
            link_secret.is_some(),
            self.insecure,
            "--broker-listen",
            "BROKER",
        )?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(server_kit::tls::server_config(cert, key)?),
            _ => None,
        };
        Ok(BrokerSecurity { link_secret, tls })
    }
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
