//! Security of the gateway library over real sockets: wss clients, a broker link over TLS with a
//! link secret (and gateways that cannot prove themselves never coming up), and join tokens
//! (allowed and forbidden joins and sends, expired tokens, bad signatures, missing tokens).
//! Certificates and tokens are made at test time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, ensure, Context, Result};
use broker::auth::BrokerSecurity;
use broker::{Broker, BrokerConfig};
use futures_util::{SinkExt, StreamExt};
use gateway::credentials::{BrokerTls, ClientSecurity, LinkSecurity, Security};
use gateway::edge::join_token::JoinTokens;
use gateway::{Gateway, GatewayConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use protocol::link_auth::LinkSecret;
use serde_json::{json, Value};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_rustls::{TlsAcceptor, TlsConnector};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);
/// How long a gateway that must not come up is watched.
const NEVER_UP: Duration = Duration::from_millis(1500);
const LINK_SECRET: &str = "link-secret-for-tests";
const TOKEN_SECRET: &[u8] = b"join-token-secret-for-tests-0123456789";

/// A throwaway CA and a certificate it signed for `localhost` and 127.0.0.1, as PEM files in a
/// fresh directory that is removed on drop.
struct TestPki {
    dir: PathBuf,
    ca: PathBuf,
    cert: PathBuf,
    key: PathBuf,
}

impl TestPki {
    fn generate() -> Result<TestPki> {
        use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let dir = std::env::temp_dir().join(format!(
            "gateway-pki-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Relaxed)
        ));
        std::fs::create_dir_all(&dir)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate()?)?;
        let key = KeyPair::generate()?;
        let cert = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()])?
            .signed_by(&key, &*ca)?;
        let write = |name: &str, pem: String| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, pem)?;
            Ok(path)
        };
        Ok(TestPki {
            ca: write("ca.pem", ca.pem())?,
            cert: write("cert.pem", cert.pem())?,
            key: write("key.pem", key.serialize_pem())?,
            dir,
        })
    }

    fn acceptor(&self) -> Result<TlsAcceptor> {
        Ok(TlsAcceptor::from(server_kit::tls::server_config(
            &self.cert, &self.key,
        )?))
    }

    fn broker_tls(&self) -> Result<BrokerTls> {
        Ok(BrokerTls::new(
            server_kit::tls::client_config(&self.ca)?,
            "localhost",
        )?)
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn link_secret(s: &str) -> LinkSecret {
    LinkSecret::new(s).expect("long enough")
}

fn config() -> GatewayConfig {
    GatewayConfig {
        workers: Some(2),
        link_connect_timeout: Duration::from_millis(500),
        reconnect_min: Duration::from_millis(50),
        reconnect_max: Duration::from_millis(200),
        ..GatewayConfig::default()
    }
}

/// Servers for one test, stopped on drop.
struct Cluster {
    shutdown: CancellationToken,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Cluster {
    fn new() -> Cluster {
        Cluster {
            shutdown: CancellationToken::new(),
        }
    }

    async fn broker(&self, security: BrokerSecurity) -> Result<(Broker, SocketAddr)> {
        let broker = Broker::with_security(BrokerConfig::default(), security)?;
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn({
            let (broker, shutdown) = (broker.clone(), self.shutdown.clone());
            async move { broker.serve(listener, shutdown).await }
        });
        Ok((broker, addr))
    }

    /// A gateway linked to `broker`; returns it and its client address.
    async fn gateway(
        &self,
        broker: SocketAddr,
        security: Security,
    ) -> Result<(Gateway, SocketAddr)> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let gateway = Gateway::builder(config())
            .security(security)
            .broker(broker.to_string())
            .start(self.shutdown.clone())?;
        tokio::spawn({
            let gateway = gateway.clone();
            async move { gateway.serve(listener).await }
        });
        Ok((gateway, addr))
    }

    /// An open broker and a gateway whose clients need join tokens.
    async fn with_join_tokens(&self) -> Result<SocketAddr> {
        let (_, broker) = self.broker(BrokerSecurity::default()).await?;
        let tokens = JoinTokens::new(Some((TOKEN_SECRET, "test")), None)?;
        let security = Security {
            clients: ClientSecurity {
                tls: None,
                join_tokens: Some(tokens),
            },
            ..Security::default()
        };
        let (gateway, addr) = self.gateway(broker, security).await?;
        wait_ready(&gateway).await?;
        Ok(addr)
    }
}

async fn wait_ready(gateway: &Gateway) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !gateway.is_ready() {
        if tokio::time::Instant::now() > deadline {
            bail!("the broker link never came up: {:#?}", gateway.stats());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// A WebSocket client over any stream.
struct Client<S> {
    ws: WebSocketStream<S>,
    next_req_id: u64,
}

async fn ws_client(addr: SocketAddr, path: &str) -> Result<Client<TcpStream>> {
    let stream = TcpStream::connect(addr).await?;
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(url, stream))
        .await
        .context("handshake timed out")??;
    Ok(Client { ws, next_req_id: 1 })
}

async fn wss_client(
    addr: SocketAddr,
    ca: &std::path::Path,
) -> Result<Client<tokio_rustls::client::TlsStream<TcpStream>>> {
    let connector = TlsConnector::from(server_kit::tls::client_config(ca)?);
    let stream = TcpStream::connect(addr).await?;
    let tls = connector
        .connect(ServerName::try_from("localhost")?, stream)
        .await?;
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(format!("wss://localhost:{}/", addr.port()), tls),
    )
    .await
    .context("handshake timed out")??;
    Ok(Client { ws, next_req_id: 1 })
}

impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
    async fn recv_text(&mut self) -> Result<String> {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .context("nothing received in time")?
                .context("the connection ended")??;
            match message {
                Message::Text(text) => return Ok(text.as_str().to_owned()),
                Message::Ping(_) | Message::Pong(_) => {}
                other => bail!("expected text, got {other:?}"),
            }
        }
    }

    /// Sends `command` with a fresh `req_id`; the reply (an ack or an error) as JSON.
    async fn request(&mut self, mut command: Value) -> Result<Value> {
        let req_id = self.next_req_id;
        self.next_req_id += 1;
        command["req_id"] = req_id.into();
        self.ws.send(Message::text(command.to_string())).await?;
        let reply: Value = serde_json::from_str(&self.recv_text().await?)?;
        ensure!(
            reply["req_id"] == req_id,
            "reply to another request: {reply}"
        );
        Ok(reply)
    }

    /// `Ok(())` for an ack, else the error code.
    async fn outcome(&mut self, command: Value) -> Result<Result<(), String>> {
        let reply = self.request(command).await?;
        match reply["cmd"].as_str() {
            Some("ack") => Ok(Ok(())),
            Some("error") => Ok(Err(reply["code"].as_str().unwrap_or("?").to_owned())),
            _ => bail!("unexpected reply {reply}"),
        }
    }

    async fn join(&mut self, group: &str) -> Result<Result<(), String>> {
        self.outcome(json!({"cmd": "add_group", "group_id": group}))
            .await
    }

    async fn send_to(&mut self, group: &str, message: &str) -> Result<Result<(), String>> {
        self.outcome(json!({"cmd": "send_to_group", "group_id": group, "message": message}))
            .await
    }

    async fn auth(&mut self, token: &str) -> Result<Result<(), String>> {
        self.outcome(json!({"cmd": "auth", "token": token})).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_clients_join_and_receive() -> Result<()> {
    let pki = TestPki::generate()?;
    let cluster = Cluster::new();
    let (_, broker) = cluster.broker(BrokerSecurity::default()).await?;
    let security = Security {
        clients: ClientSecurity {
            tls: Some(pki.acceptor()?),
            join_tokens: None,
        },
        ..Security::default()
    };
    let (gateway, addr) = cluster.gateway(broker, security).await?;
    wait_ready(&gateway).await?;

    let mut member = wss_client(addr, &pki.ca).await?;
    let mut sender = wss_client(addr, &pki.ca).await?;
    assert_eq!(member.join("room").await?, Ok(()));
    assert_eq!(sender.send_to("room", "over TLS").await?, Ok(()));
    assert_eq!(member.recv_text().await?, "over TLS");

    // A plain WebSocket client fails its handshake, and is counted.
    assert!(
        ws_client(addr, "/").await.is_err(),
        "plain ws on a wss port"
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while gateway
        .stats()
        .workers
        .iter()
        .map(|w| w.handshake_failures)
        .sum::<u64>()
        == 0
    {
        ensure!(
            tokio::time::Instant::now() < deadline,
            "handshake failure not counted"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_deliver_across_a_tls_broker_with_a_link_secret() -> Result<()> {
    let pki = TestPki::generate()?;
    let cluster = Cluster::new();
    let (broker, broker_addr) = cluster
        .broker(BrokerSecurity {
            link_secret: Some(link_secret(LINK_SECRET)),
            tls: Some(server_kit::tls::server_config(&pki.cert, &pki.key)?),
        })
        .await?;
    let security = || -> Result<Security> {
        Ok(Security {
            link: LinkSecurity {
                secret: Some(link_secret(LINK_SECRET)),
                tls: Some(pki.broker_tls()?),
            },
            ..Security::default()
        })
    };
    let (x, x_addr) = cluster.gateway(broker_addr, security()?).await?;
    let (y, y_addr) = cluster.gateway(broker_addr, security()?).await?;
    wait_ready(&x).await?;
    wait_ready(&y).await?;

    let mut member = ws_client(x_addr, "/").await?;
    assert_eq!(member.join("room").await?, Ok(()));
    let deadline = tokio::time::Instant::now() + WAIT;
    while broker.stats().subscriptions != 1 {
        ensure!(tokio::time::Instant::now() < deadline, "never subscribed");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut sender = ws_client(y_addr, "/").await?;
    assert_eq!(sender.send_to("room", "across").await?, Ok(()));
    assert_eq!(member.recv_text().await?, "across");
    assert_eq!(broker.stats().unauthorized_links, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_cannot_prove_itself_never_comes_up() -> Result<()> {
    let pki = TestPki::generate()?;
    let other_pki = TestPki::generate()?;
    let cluster = Cluster::new();
    let (secured, secured_addr) = cluster
        .broker(BrokerSecurity {
            link_secret: Some(link_secret(LINK_SECRET)),
            tls: Some(server_kit::tls::server_config(&pki.cert, &pki.key)?),
        })
        .await?;
    let (_, open_addr) = cluster.broker(BrokerSecurity::default()).await?;
    let link = |secret: Option<&str>, tls: Option<BrokerTls>| Security {
        link: LinkSecurity {
            secret: secret.map(link_secret),
            tls,
        },
        ..Security::default()
    };
    let cases = [
        (
            "a CA that did not sign the broker's certificate",
            secured_addr,
            link(Some(LINK_SECRET), Some(other_pki.broker_tls()?)),
        ),
        (
            "the wrong secret",
            secured_addr,
            link(Some("another-link-secret"), Some(pki.broker_tls()?)),
        ),
        (
            "no secret for a broker that asks",
            secured_addr,
            link(None, Some(pki.broker_tls()?)),
        ),
        (
            "plain TCP to a TLS broker",
            secured_addr,
            link(Some(LINK_SECRET), None),
        ),
        (
            "a secret for a broker that does not ask",
            open_addr,
            link(Some(LINK_SECRET), None),
        ),
    ];
    let mut gateways = Vec::new();
    for (name, broker, security) in cases {
        let (gateway, _) = cluster.gateway(broker, security).await?;
        gateways.push((name, gateway));
    }
    let deadline = tokio::time::Instant::now() + NEVER_UP;
    while tokio::time::Instant::now() < deadline {
        for (name, gateway) in &gateways {
            ensure!(!gateway.is_ready(), "{name}: the link came up");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The wrong secret was refused by the broker, and counted (more than once: it retries).
    ensure!(
        secured.stats().unauthorized_links >= 1,
        "{:?}",
        secured.stats()
    );
    ensure!(secured.stats().subscriptions == 0);
    Ok(())
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(TOKEN_SECRET),
    )
    .expect("sign")
}

fn forbidden() -> Result<(), String> {
    Err("forbidden".into())
}

fn unauthorized() -> Result<(), String> {
    Err("unauthorized".into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_join_token_grants_exactly_its_groups() -> Result<()> {
    let cluster = Cluster::new();
    let addr = cluster.with_join_tokens().await?;
    let exp = unix_now() + 3600;
    let reader = token(json!({"exp": exp, "groups": ["news", 42], "send": []}));
    let writer = token(json!({"exp": exp, "groups": ["chat"]}));

    let mut alice = ws_client(addr, &format!("/?token={reader}")).await?;
    assert_eq!(alice.join("news").await?, Ok(()), "allowed join");
    assert_eq!(alice.join("42").await?, Ok(()), "a numeric group");
    assert_eq!(alice.join("chat").await?, forbidden(), "forbidden join");
    assert_eq!(alice.send_to("news", "x").await?, forbidden(), "send: []");

    let mut bob = ws_client(addr, "/").await?;
    assert_eq!(bob.auth(&writer).await?, Ok(()));
    assert_eq!(
        bob.send_to("chat", "hi").await?,
        Ok(()),
        "send defaults to groups"
    );
    assert_eq!(
        bob.send_to("news", "x").await?,
        forbidden(),
        "forbidden send"
    );
    assert_eq!(bob.join("chat").await?, Ok(()));
    // A join refused leaves the connection open and in its groups.
    assert_eq!(bob.send_to("chat", "still here").await?, Ok(()));
    assert_eq!(bob.recv_text().await?, "still here");

    // Nothing forbidden was delivered: the next frame alice receives is her own barrier's ack.
    assert_eq!(alice.join("news").await?, Ok(()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_expired_or_forged_tokens_are_unauthorized() -> Result<()> {
    let cluster = Cluster::new();
    let addr = cluster.with_join_tokens().await?;
    let exp = unix_now() + 3600;
    let expired = token(json!({"exp": unix_now() - 3600, "groups": ["*"]}));
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": exp, "groups": ["*"]}),
        &EncodingKey::from_secret(b"not-the-gateway-secret-0123456789abcdef"),
    )?;
    let valid = token(json!({"exp": exp, "groups": ["*"]}));

    let mut anonymous = ws_client(addr, "/").await?;
    assert_eq!(anonymous.join("room").await?, unauthorized(), "no token");
    assert_eq!(anonymous.send_to("room", "x").await?, unauthorized());

    for (name, bad) in [("expired", &expired), ("bad signature", &forged)] {
        let mut in_url = ws_client(addr, &format!("/?token={bad}")).await?;
        assert_eq!(
            in_url.join("room").await?,
            unauthorized(),
            "{name} in the URL"
        );
        let mut by_command = ws_client(addr, "/").await?;
        assert_eq!(
            by_command.auth(bad).await?,
            unauthorized(),
            "{name} in auth"
        );
        assert_eq!(by_command.join("room").await?, unauthorized(), "{name}");
    }
    let reply = anonymous
        .request(json!({"cmd": "auth", "token": expired}))
        .await?;
    let reason = reply["reason"].as_str().unwrap_or_default();
    ensure!(reason.contains("expired"), "{reply}");
    ensure!(
        !reason.contains(&expired),
        "the token is not echoed: {reply}"
    );

    // A valid token afterwards grants its rights; a bad one then takes them away again.
    assert_eq!(anonymous.auth(&valid).await?, Ok(()));
    assert_eq!(anonymous.join("room").await?, Ok(()));
    assert_eq!(anonymous.auth("garbage").await?, unauthorized());
    assert_eq!(anonymous.join("other").await?, unauthorized());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_require_join_token_nothing_changes() -> Result<()> {
    let cluster = Cluster::new();
    let (_, broker) = cluster.broker(BrokerSecurity::default()).await?;
    let (gateway, addr) = cluster.gateway(broker, Security::default()).await?;
    wait_ready(&gateway).await?;
    let mut client = ws_client(addr, "/?token=ignored").await?;
    assert_eq!(client.join("room").await?, Ok(()));
    assert_eq!(client.auth("not checked").await?, Ok(()));
    assert_eq!(client.send_to("room", "open").await?, Ok(()));
    assert_eq!(client.recv_text().await?, "open");
    Ok(())
}
