//! The gateway's security settings: the broker link's secret and TLS, TLS on the embedded
//! broker's listener, TLS for WebSocket clients (wss), and signed join tokens
//! ([`crate::edge::join_token`]).
//!
//! [`SecurityArgs`] are the `gateway` binary's flags; [`SecurityArgs::load`] reads the files
//! they name and checks that they fit together, so a bad certificate, key or secret stops
//! startup with a message naming it. [`Security`] is what `Gateway::start_secured` runs with;
//! its default is the seed's behaviour (nothing required, plain TCP).

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use protocol::link_auth::LinkSecret;
use server_kit::secret::{check_exposure, load_secret, parse_secret, ExposeSecret, SecretString};
use server_kit::tls::TlsError;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::rustls::{ClientConfig, ServerConfig};
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::bus::BusAddress;
use crate::edge::join_token::{JoinTokenError, JoinTokens};

/// Everything the gateway requires of its peers.
#[derive(Debug, Clone, Default)]
pub struct Security {
    pub link: LinkSecurity,
    pub clients: ClientSecurity,
    /// When set, the embedded broker's listener speaks TLS (the gateway's own link to it then
    /// needs [`LinkSecurity::tls`]).
    pub embedded_broker_tls: Option<Arc<ServerConfig>>,
}

/// How the gateway proves itself to the broker and checks who the broker is.
#[derive(Debug, Clone, Default)]
pub struct LinkSecurity {
    /// Answers the challenge of a broker that asks for it; without it, such a broker is refused.
    pub secret: Option<LinkSecret>,
    /// Connect with TLS, verifying the broker's certificate.
    pub tls: Option<BrokerTls>,
}

/// TLS towards the broker: the trusted CAs and the name its certificate must carry.
#[derive(Clone)]
pub struct BrokerTls {
    pub connector: TlsConnector,
    pub server_name: ServerName<'static>,
}

impl BrokerTls {
    pub fn new(config: Arc<ClientConfig>, server_name: &str) -> Result<BrokerTls, SecurityError> {
        let server_name = ServerName::try_from(server_name.to_owned()).map_err(|_| {
            SecurityError::Invalid(format!(
                "{server_name:?} is not a valid TLS server name (--broker-tls-name)"
            ))
        })?;
        Ok(BrokerTls {
            connector: TlsConnector::from(config),
            server_name,
        })
    }
}

impl fmt::Debug for BrokerTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BrokerTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// What WebSocket clients must do: speak TLS, present a join token.
#[derive(Clone, Default)]
pub struct ClientSecurity {
    pub tls: Option<TlsAcceptor>,
    /// Set with `--require-join-token`: joins and sends need a token's rights.
    pub join_tokens: Option<JoinTokens>,
}

impl fmt::Debug for ClientSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSecurity")
            .field("tls", &self.tls.is_some())
            .field("join_tokens", &self.join_tokens)
            .finish()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(transparent)]
    Link(#[from] server_kit::secret::SecretError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    JoinToken(#[from] JoinTokenError),
    #[error("{0}")]
    Invalid(String),
}

/// The `gateway` binary's security flags (docs/configuration.md, "Security").
#[derive(Debug, Clone, clap::Args)]
pub struct SecurityArgs {
    /// Shared secret of the broker link, at least 16 bytes. The gateway answers the broker's
    /// challenge with it (docs/protocol.md, "Link authentication"); the embedded broker requires it
    /// of every gateway that links to it. Not with `--link-secret-file`.
    #[arg(
        long,
        env = "GATEWAY_LINK_SECRET",
        hide_env_values = true,
        conflicts_with = "link_secret_file",
        value_parser = parse_secret
    )]
    pub link_secret: Option<SecretString>,

    /// File holding the link secret (one trailing newline is ignored).
    #[arg(long, env = "GATEWAY_LINK_SECRET_FILE", value_name = "FILE")]
    pub link_secret_file: Option<PathBuf>,

    /// Allows the embedded broker to listen on a non-loopback `--broker-listen` (or
    /// `--broker-php-channel` address) without a link secret.
    #[arg(long, env = "GATEWAY_INSECURE")]
    pub insecure: bool,

    /// PEM certificate chain (leaf first) for WebSocket clients: with it the client listener speaks
    /// TLS only (`wss://`). Needs `--tls-key`.
    #[arg(
        long,
        env = "GATEWAY_TLS_CERT",
        value_name = "FILE",
        requires = "tls_key"
    )]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--tls-cert`.
    #[arg(
        long,
        env = "GATEWAY_TLS_KEY",
        value_name = "FILE",
        requires = "tls_cert"
    )]
    pub tls_key: Option<PathBuf>,

    /// PEM certificate chain (leaf first): the embedded broker's listener speaks TLS only (to
    /// other gateways; this one reaches it in process). Needs `--broker-tls-key`.
    #[arg(
        long,
        env = "GATEWAY_BROKER_TLS_CERT",
        value_name = "FILE",
        requires = "broker_tls_key"
    )]
    pub broker_tls_cert: Option<PathBuf>,

    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `--broker-tls-cert`.
    #[arg(
        long,
        env = "GATEWAY_BROKER_TLS_KEY",
        value_name = "FILE",
        requires = "broker_tls_cert"
    )]
    pub broker_tls_key: Option<PathBuf>,

    /// Connect to `--broker` with TLS, verifying its certificate against `--broker-ca`. Needs
    /// `--broker` and `--broker-ca`.
    #[arg(long, env = "GATEWAY_BROKER_TLS", requires = "broker_ca")]
    pub broker_tls: bool,

    /// PEM file of the CA certificates trusted to sign the broker's certificate. No system roots
    /// are used.
    #[arg(
        long,
        env = "GATEWAY_BROKER_CA",
        value_name = "FILE",
        requires = "broker_tls"
    )]
    pub broker_ca: Option<PathBuf>,

    /// DNS name or IP address the broker's certificate must carry.
    #[arg(long, env = "GATEWAY_BROKER_TLS_NAME", requires = "broker_tls")]
    pub broker_tls_name: Option<String>,

    /// Clients must present a signed join token (docs/protocol.md, "Join tokens") to join or send,
    /// and may join and send only where it allows. Needs one of the three keys below; a key without
    /// this flag stops startup.
    #[arg(long, env = "GATEWAY_REQUIRE_JOIN_TOKEN")]
    pub require_join_token: bool,

    /// HS256 key of join tokens, at least 32 bytes. Not with `--join-token-secret-file`.
    #[arg(
        long,
        env = "GATEWAY_JOIN_TOKEN_SECRET",
        hide_env_values = true,
        conflicts_with = "join_token_secret_file",
        value_parser = parse_secret
    )]
    pub join_token_secret: Option<SecretString>,

    /// File holding the HS256 key (one trailing newline is ignored).
    #[arg(long, env = "GATEWAY_JOIN_TOKEN_SECRET_FILE", value_name = "FILE")]
    pub join_token_secret_file: Option<PathBuf>,

    /// PEM public key that verifies RS256 (an RSA key) or ES256 (an EC P-256 key) join tokens, for
    /// token issuers that keep the private key to themselves. May be combined with a secret: each
    /// token is checked with the key of its `alg`.
    #[arg(long, env = "GATEWAY_JOIN_TOKEN_PUBLIC_KEY", value_name = "FILE")]
    pub join_token_public_key: Option<PathBuf>,
}

impl SecurityArgs {
    /// Reads every file named and checks the combination. `broker` is `--broker` (`None`: the
    /// embedded broker listens on `broker_listen`).
    pub fn load(
        &self,
        bus: &BusAddress,
        broker_listen: SocketAddr,
    ) -> Result<Security, SecurityError> {
        let broker = match bus {
            BusAddress::Embedded => None,
            BusAddress::Broker(addr) => Some(addr.as_str()),
            BusAddress::Redis(_) | BusAddress::RedisCluster(_) | BusAddress::Nats(_) => {
                return self.load_without_broker(bus);
            }
        };
        let secret = load_secret(
            self.link_secret.as_ref().map(|s| s.expose_secret()),
            self.link_secret_file.as_deref(),
            "GATEWAY",
        )?;
        if broker.is_none() {
            check_exposure(
                broker_listen,
                secret.is_some(),
                self.insecure,
                "--broker-listen",
                "GATEWAY",
            )?;
        }
        if self.broker_tls_cert.is_some() && broker.is_some() {
            return Err(SecurityError::Invalid(
                "--broker-tls-cert is for the embedded broker, which does not run with --broker"
                    .into(),
            ));
        }
        let embedded_tls = match (&self.broker_tls_cert, &self.broker_tls_key) {
            (Some(cert), Some(key)) => Some(server_kit::tls::server_config(cert, key)?),
            _ => None,
        };
        // This gateway reaches an embedded broker in process: only a standalone one is dialed.
        let link_tls =
            match (self.broker_tls, broker, &self.broker_ca) {
                (false, _, _) => None,
                (true, None, _) => return Err(SecurityError::Invalid(
                    "--broker-tls is for the link to a standalone broker (--broker); the embedded \
                     broker speaks TLS to other gateways with --broker-tls-cert alone"
                        .into(),
                )),
                (true, Some(_), None) => {
                    return Err(SecurityError::Invalid(
                        "--broker-tls needs --broker-ca (no system CA roots are used)".into(),
                    ))
                }
                (true, Some(target), Some(ca)) => {
                    let name = match &self.broker_tls_name {
                        Some(name) => name.clone(),
                        None => host_of(target).to_owned(),
                    };
                    Some(BrokerTls::new(server_kit::tls::client_config(ca)?, &name)?)
                }
            };
        let tls = self.client_tls()?;
        Ok(Security {
            link: LinkSecurity {
                secret,
                tls: link_tls,
            },
            clients: ClientSecurity {
                tls,
                join_tokens: self.join_tokens()?,
            },
            embedded_broker_tls: embedded_tls,
        })
    }

    /// For a carrier other than the built-in broker, which takes its credentials and TLS from
    /// its URL: the broker link's settings would be silently ignored, so they are refused.
    fn load_without_broker(&self, bus: &BusAddress) -> Result<Security, SecurityError> {
        let broker_settings = [
            ("--link-secret", self.link_secret.is_some()),
            ("--link-secret-file", self.link_secret_file.is_some()),
            ("--broker-tls", self.broker_tls),
            ("--broker-ca", self.broker_ca.is_some()),
            ("--broker-tls-name", self.broker_tls_name.is_some()),
            ("--broker-tls-cert", self.broker_tls_cert.is_some()),
        ];
        if let Some((flag, _)) = broker_settings.iter().find(|(_, set)| *set) {
            return Err(SecurityError::Invalid(format!(
                "{flag} is for the built-in broker; the {} bus takes its credentials and TLS from                  its URL (--bus)",
                bus.carrier()
            )));
        }
        let tls = self.client_tls()?;
        Ok(Security {
            link: LinkSecurity::default(),
            clients: ClientSecurity {
                tls,
                join_tokens: self.join_tokens()?,
            },
            embedded_broker_tls: None,
        })
    }

    fn client_tls(&self) -> Result<Option<TlsAcceptor>, SecurityError> {
        Ok(match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsAcceptor::from(server_kit::tls::server_config(
                cert, key,
            )?)),
            _ => None,
        })
    }

    fn join_tokens(&self) -> Result<Option<JoinTokens>, SecurityError> {
        let secret = match (&self.join_token_secret, &self.join_token_secret_file) {
            (Some(secret), _) => Some((
                secret.expose_secret().as_bytes().to_vec(),
                "--join-token-secret (GATEWAY_JOIN_TOKEN_SECRET)".to_owned(),
            )),
            (None, Some(path)) => {
                let bytes = server_kit::secret::read_secret_file(path).map_err(|source| {
                    JoinTokenError::Read {
                        path: path.clone(),
                        source,
                    }
                })?;
                Some((bytes, format!("join token secret file {}", path.display())))
            }
            (None, None) => None,
        };
        let has_key = secret.is_some() || self.join_token_public_key.is_some();
        match (self.require_join_token, has_key) {
            (false, false) => Ok(None),
            (true, false) => Err(SecurityError::Invalid(
                "--require-join-token needs --join-token-secret, --join-token-secret-file or \
                 --join-token-public-key"
                    .into(),
            )),
            (false, true) => Err(SecurityError::Invalid(
                "a join token key is set but --require-join-token is not: tokens would not be \
                 checked"
                    .into(),
            )),
            (true, true) => Ok(Some(JoinTokens::new(
                secret
                    .as_ref()
                    .map(|(s, origin)| (s.as_slice(), origin.as_str())),
                self.join_token_public_key.as_deref(),
            )?)),
        }
    }
}

/// The host part of `host:port` (`[v6]:port` gives `v6`).
fn host_of(addr: &str) -> &str {
    let host = match addr.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => addr,
    };
    host.strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host)
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        security: SecurityArgs,
    }

    fn args(flags: &[&str]) -> SecurityArgs {
        Cli::try_parse_from(std::iter::once("gateway").chain(flags.iter().copied()))
            .expect("flags parse")
            .security
    }

    fn loopback() -> SocketAddr {
        "127.0.0.1:2206".parse().expect("addr")
    }

    fn bus(broker: Option<&str>) -> BusAddress {
        match broker {
            Some(addr) => BusAddress::Broker(addr.to_owned()),
            None => BusAddress::Embedded,
        }
    }

    fn error(flags: &[&str], broker: Option<&str>, listen: &str) -> String {
        args(flags)
            .load(&bus(broker), listen.parse().expect("addr"))
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn defaults_require_nothing() {
        let security = args(&[])
            .load(&BusAddress::Embedded, loopback())
            .expect("loads");
        assert!(security.link.secret.is_none() && security.link.tls.is_none());
        assert!(security.clients.tls.is_none() && security.clients.join_tokens.is_none());
    }

    #[test]
    fn an_exposed_embedded_broker_needs_a_secret() {
        let e = error(&[], None, "0.0.0.0:2206");
        assert!(
            e.contains("--broker-listen") && e.contains("--insecure"),
            "{e}"
        );
        let secret = ["--link-secret", "0123456789abcdef"];
        assert!(args(&secret)
            .load(&BusAddress::Embedded, "0.0.0.0:2206".parse().expect("addr"))
            .is_ok());
        assert!(args(&["--insecure"])
            .load(&BusAddress::Embedded, "0.0.0.0:2206".parse().expect("addr"))
            .is_ok());
        // With --broker there is no embedded broker to expose.
        assert!(args(&[])
            .load(
                &bus(Some("10.0.0.1:2206")),
                "0.0.0.0:2206".parse().expect("addr")
            )
            .is_ok());
    }

    #[test]
    fn combinations_that_cannot_work_are_refused() {
        let e = error(
            &["--broker-tls", "--broker-ca", "/nonexistent/ca.pem"],
            None,
            "127.0.0.1:2206",
        );
        assert!(
            e.contains("--broker-tls is for the link to a standalone broker"),
            "{e}"
        );
        let e = error(
            &["--broker-tls", "--broker-ca", "/nonexistent/ca.pem"],
            Some("broker.internal:2206"),
            "127.0.0.1:2206",
        );
        assert!(e.contains("/nonexistent/ca.pem"), "{e}");
        assert!(
            Cli::try_parse_from(["gateway", "--broker-tls"]).is_err(),
            "needs --broker-ca"
        );
        assert!(
            Cli::try_parse_from(["gateway", "--tls-cert", "c.pem"]).is_err(),
            "needs a key"
        );
        let e = error(&["--require-join-token"], None, "127.0.0.1:2206");
        assert!(e.contains("--join-token-secret"), "{e}");
        let e = error(
            &["--join-token-secret", &"k".repeat(32)],
            None,
            "127.0.0.1:2206",
        );
        assert!(e.contains("--require-join-token is not"), "{e}");
        let e = error(
            &["--require-join-token", "--join-token-secret", "too-short"],
            None,
            "127.0.0.1:2206",
        );
        assert!(
            e.contains("at least 32 bytes") && !e.contains("too-short"),
            "{e}"
        );
    }

    #[test]
    fn tls_on_the_embedded_broker_needs_only_its_certificate() {
        let cert = ["--broker-tls-cert", "/nonexistent/cert.pem"];
        let key = ["--broker-tls-key", "/nonexistent/key.pem"];
        let with_broker = error(
            &[&cert[..], &key[..]].concat(),
            Some("b:2206"),
            "127.0.0.1:2206",
        );
        assert!(
            with_broker.contains("does not run with --broker"),
            "{with_broker}"
        );
        let link_tls = error(
            &["--broker-tls", "--broker-ca", "/nonexistent/ca.pem"],
            None,
            "127.0.0.1:2206",
        );
        assert!(
            link_tls.contains("standalone broker"),
            "the embedded broker is reached in process: {link_tls}"
        );
        let bad_file = error(&[&cert[..], &key[..]].concat(), None, "127.0.0.1:2206");
        assert!(bad_file.contains("/nonexistent/cert.pem"), "{bad_file}");
        assert!(
            Cli::try_parse_from(["gateway", "--broker-tls-cert", "c.pem"]).is_err(),
            "needs a key"
        );
    }

    #[test]
    fn the_tls_name_defaults_to_the_broker_host() {
        assert_eq!(host_of("broker.internal:2206"), "broker.internal");
        assert_eq!(host_of("10.0.0.1:2206"), "10.0.0.1");
        assert_eq!(host_of("[::1]:2206"), "::1");
        assert_eq!(host_of("broker.internal"), "broker.internal");
    }

    #[test]
    fn debug_redacts_secrets() {
        let args = args(&[
            "--link-secret",
            "link-secret-value-1234",
            "--join-token-secret",
            "join-secret-value-join-secret-value",
        ]);
        let debug = format!("{args:?}");
        assert!(!debug.contains("secret-value"), "{debug}");
    }

    #[test]
    fn broker_link_settings_are_refused_with_another_carrier() {
        let redis: BusAddress = "redis://127.0.0.1:6379".parse().expect("redis url");
        for flags in [
            &["--link-secret", "0123456789abcdef0123"][..],
            &["--broker-tls", "--broker-ca", "ca.pem"][..],
        ] {
            let err = args(flags)
                .load(&redis, loopback())
                .expect_err("refused")
                .to_string();
            assert!(
                err.contains("built-in broker") && err.contains("redis"),
                "{err}"
            );
        }
        let security = args(&[]).load(&redis, loopback()).expect("loads");
        assert!(security.link.secret.is_none() && security.embedded_broker_tls.is_none());
    }
}
