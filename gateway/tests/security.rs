//! Security of the gateway library over real sockets: wss clients, a broker link over TLS with a
//! link secret (and gateways that cannot prove themselves never coming up), and join tokens
//! (allowed and forbidden joins and sends, expired tokens, bad signatures, missing tokens).
//! Certificates and tokens are made at test time.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Result};
use broker::auth::BrokerSecurity;
use broker::BrokerConfig;
use gateway::credentials::{BrokerTls, ClientSecurity, LinkSecurity, Security};
use gateway::edge::join_token::JoinTokens;
use gateway::{Gateway, GatewayConfig};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use protocol::link_auth::LinkSecret;
use serde_json::{json, Value};
use test_support::broker::TestBroker;
use test_support::certs::{self, TestPki};
use test_support::gateway::TestGateway;
use test_support::ws::{add_group, send_to_group};
use test_support::RECV_TIMEOUT;
use tokio_rustls::TlsAcceptor;

const WAIT: Duration = RECV_TIMEOUT;
/// How long a gateway that must not come up is watched.
const NEVER_UP: Duration = Duration::from_millis(1500);
const LINK_SECRET: &str = "link-secret-for-tests";
const TOKEN_SECRET: &[u8] = b"join-token-secret-for-tests-0123456789";

/// The gateway's TLS settings for clients, with the test certificate.
fn acceptor(pki: &TestPki) -> Result<TlsAcceptor> {
    Ok(TlsAcceptor::from(server_kit::tls::server_config(
        &pki.cert, &pki.key,
    )?))
}

/// The gateway's TLS settings for its broker link, trusting the test CA.
fn broker_tls(pki: &TestPki) -> Result<BrokerTls> {
    Ok(BrokerTls::new(
        server_kit::tls::client_config(&pki.ca)?,
        "localhost",
    )?)
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

/// A gateway linked to the broker at `broker`, with `security`; its bus may not come up.
async fn gateway(broker: SocketAddr, security: Security) -> Result<TestGateway> {
    let builder = Gateway::builder(config())
        .security(security)
        .broker(broker.to_string());
    TestGateway::start(builder).await
}

/// An open broker and a gateway whose clients need join tokens, linked.
async fn with_join_tokens() -> Result<(TestBroker, TestGateway)> {
    let broker = TestBroker::start(BrokerConfig::default()).await;
    let tokens = JoinTokens::new(Some((TOKEN_SECRET, "test")), None)?;
    let security = Security {
        clients: ClientSecurity {
            tls: None,
            join_tokens: Some(tokens),
        },
        ..Security::default()
    };
    let gateway = gateway(broker.addr, security).await?;
    gateway.wait_ready().await?;
    Ok((broker, gateway))
}

fn auth(token: &str) -> Value {
    json!({"cmd": "auth", "token": token})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wss_clients_join_and_receive() -> Result<()> {
    let pki = TestPki::generate()?;
    let broker = TestBroker::start(BrokerConfig::default()).await;
    let security = Security {
        clients: ClientSecurity {
            tls: Some(acceptor(&pki)?),
            join_tokens: None,
        },
        ..Security::default()
    };
    let gateway = gateway(broker.addr, security).await?;
    gateway.wait_ready().await?;

    let tls = certs::client_config(&pki.ca)?;
    let mut member = gateway.client("member").tls(tls.clone()).connect().await?;
    let mut sender = gateway.client("sender").tls(tls).connect().await?;
    assert_eq!(member.outcome(add_group("room")).await?, Ok(()));
    assert_eq!(
        sender.outcome(send_to_group("room", "over TLS")).await?,
        Ok(())
    );
    assert_eq!(member.recv_text(WAIT).await?, "over TLS");

    // A plain WebSocket client fails its handshake, and is counted.
    assert!(
        gateway.connect("plain").await.is_err(),
        "plain ws on a wss port"
    );
    gateway
        .wait_stats("the handshake failure counted", |s| {
            s.workers.iter().map(|w| w.handshake_failures).sum::<u64>() > 0
        })
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_deliver_across_a_tls_broker_with_a_link_secret() -> Result<()> {
    let pki = TestPki::generate()?;
    let broker = TestBroker::with_security(
        BrokerConfig::default(),
        BrokerSecurity {
            link_secret: Some(link_secret(LINK_SECRET)),
            tls: Some(server_kit::tls::server_config(&pki.cert, &pki.key)?),
        },
    )
    .await;
    let security = || -> Result<Security> {
        Ok(Security {
            link: LinkSecurity {
                secret: Some(link_secret(LINK_SECRET)),
                tls: Some(broker_tls(&pki)?),
            },
            ..Security::default()
        })
    };
    let x = gateway(broker.addr, security()?).await?;
    let y = gateway(broker.addr, security()?).await?;
    x.wait_ready().await?;
    y.wait_ready().await?;

    let mut member = x.connect("member").await?;
    assert_eq!(member.outcome(add_group("room")).await?, Ok(()));
    broker
        .wait_for_stats("one subscription", |s| s.subscriptions == 1)
        .await;
    let mut sender = y.connect("sender").await?;
    assert_eq!(
        sender.outcome(send_to_group("room", "across")).await?,
        Ok(())
    );
    assert_eq!(member.recv_text(WAIT).await?, "across");
    assert_eq!(broker.stats().unauthorized_links, 0);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_that_cannot_prove_itself_never_comes_up() -> Result<()> {
    let pki = TestPki::generate()?;
    let other_pki = TestPki::generate()?;
    let secured = TestBroker::with_security(
        BrokerConfig::default(),
        BrokerSecurity {
            link_secret: Some(link_secret(LINK_SECRET)),
            tls: Some(server_kit::tls::server_config(&pki.cert, &pki.key)?),
        },
    )
    .await;
    let open = TestBroker::start(BrokerConfig::default()).await;
    let (secured_addr, open_addr) = (secured.addr, open.addr);
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
            link(Some(LINK_SECRET), Some(broker_tls(&other_pki)?)),
        ),
        (
            "the wrong secret",
            secured_addr,
            link(Some("another-link-secret"), Some(broker_tls(&pki)?)),
        ),
        (
            "no secret for a broker that asks",
            secured_addr,
            link(None, Some(broker_tls(&pki)?)),
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
        gateways.push((name, gateway(broker, security).await?));
    }
    let deadline = tokio::time::Instant::now() + NEVER_UP;
    while tokio::time::Instant::now() < deadline {
        for (name, gateway) in &gateways {
            ensure!(!gateway.gateway.is_ready(), "{name}: the link came up");
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
    let (_broker, gateway) = with_join_tokens().await?;
    let exp = unix_now() + 3600;
    let reader = token(json!({"exp": exp, "groups": ["news", 42], "send": []}));
    let writer = token(json!({"exp": exp, "groups": ["chat"]}));

    let mut alice = gateway
        .client("alice")
        .path(format!("/?token={reader}"))
        .connect()
        .await?;
    assert_eq!(
        alice.outcome(add_group("news")).await?,
        Ok(()),
        "allowed join"
    );
    assert_eq!(
        alice.outcome(add_group("42")).await?,
        Ok(()),
        "a numeric group"
    );
    assert_eq!(
        alice.outcome(add_group("chat")).await?,
        forbidden(),
        "forbidden join"
    );
    assert_eq!(
        alice.outcome(send_to_group("news", "x")).await?,
        forbidden(),
        "send: []"
    );

    let mut bob = gateway.connect("bob").await?;
    assert_eq!(bob.outcome(auth(&writer)).await?, Ok(()));
    assert_eq!(
        bob.outcome(send_to_group("chat", "hi")).await?,
        Ok(()),
        "send defaults to groups"
    );
    assert_eq!(
        bob.outcome(send_to_group("news", "x")).await?,
        forbidden(),
        "forbidden send"
    );
    assert_eq!(bob.outcome(add_group("chat")).await?, Ok(()));
    // A join refused leaves the connection open and in its groups.
    assert_eq!(
        bob.outcome(send_to_group("chat", "still here")).await?,
        Ok(())
    );
    assert_eq!(bob.recv_text(WAIT).await?, "still here");

    // Nothing forbidden was delivered: the next frame alice receives is her own barrier's ack.
    assert_eq!(alice.outcome(add_group("news")).await?, Ok(()));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_expired_or_forged_tokens_are_unauthorized() -> Result<()> {
    let (_broker, gateway) = with_join_tokens().await?;
    let exp = unix_now() + 3600;
    let expired = token(json!({"exp": unix_now() - 3600, "groups": ["*"]}));
    let forged = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &json!({"exp": exp, "groups": ["*"]}),
        &EncodingKey::from_secret(b"not-the-gateway-secret-0123456789abcdef"),
    )?;
    let valid = token(json!({"exp": exp, "groups": ["*"]}));

    let mut anonymous = gateway.connect("anonymous").await?;
    assert_eq!(
        anonymous.outcome(add_group("room")).await?,
        unauthorized(),
        "no token"
    );
    assert_eq!(
        anonymous.outcome(send_to_group("room", "x")).await?,
        unauthorized()
    );

    for (name, bad) in [("expired", &expired), ("bad signature", &forged)] {
        let mut in_url = gateway
            .client("in_url")
            .path(format!("/?token={bad}"))
            .connect()
            .await?;
        assert_eq!(
            in_url.outcome(add_group("room")).await?,
            unauthorized(),
            "{name} in the URL"
        );
        let mut by_command = gateway.connect("by_command").await?;
        assert_eq!(
            by_command.outcome(auth(bad)).await?,
            unauthorized(),
            "{name} in auth"
        );
        assert_eq!(
            by_command.outcome(add_group("room")).await?,
            unauthorized(),
            "{name}"
        );
    }
    let reply = anonymous.reply_to(auth(&expired)).await?;
    let reason = reply["reason"].as_str().unwrap_or_default();
    ensure!(reason.contains("expired"), "{reply}");
    ensure!(
        !reason.contains(&expired),
        "the token is not echoed: {reply}"
    );

    // A valid token afterwards grants its rights; a bad one then takes them away again.
    assert_eq!(anonymous.outcome(auth(&valid)).await?, Ok(()));
    assert_eq!(anonymous.outcome(add_group("room")).await?, Ok(()));
    assert_eq!(anonymous.outcome(auth("garbage")).await?, unauthorized());
    assert_eq!(anonymous.outcome(add_group("other")).await?, unauthorized());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_require_join_token_nothing_changes() -> Result<()> {
    let broker = TestBroker::start(BrokerConfig::default()).await;
    let gateway = gateway(broker.addr, Security::default()).await?;
    gateway.wait_ready().await?;
    let mut client = gateway
        .client("client")
        .path("/?token=ignored")
        .connect()
        .await?;
    assert_eq!(client.outcome(add_group("room")).await?, Ok(()));
    assert_eq!(client.outcome(auth("not checked")).await?, Ok(()));
    assert_eq!(client.outcome(send_to_group("room", "open")).await?, Ok(()));
    assert_eq!(client.recv_text(WAIT).await?, "open");
    Ok(())
}
