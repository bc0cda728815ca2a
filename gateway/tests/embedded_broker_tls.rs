//! The embedded broker with TLS on its listener (`--broker-tls-cert`, `--broker-tls-key`): the
//! gateway that runs it reaches it in process, another gateway joins it over TLS, and a link
//! that does not speak TLS gets no hello.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use gateway::credentials::{BrokerTls, LinkSecurity, Security};
use gateway::{Gateway, GatewayConfig};
use protocol::link_auth::LinkSecret;
use protocol::{Frame, LinkCodec};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(5);
const LINK_SECRET: &str = "embedded-broker-link-secret";

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
            "embedded-broker-pki-{}-{}",
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

    /// What a gateway needs to link to a broker with this certificate, at 127.0.0.1.
    fn link(&self) -> Result<LinkSecurity> {
        Ok(LinkSecurity {
            secret: Some(LinkSecret::new(LINK_SECRET)?),
            tls: Some(BrokerTls::new(
                server_kit::tls::client_config(&self.ca)?,
                "127.0.0.1",
            )?),
        })
    }
}

impl Drop for TestPki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn config() -> GatewayConfig {
    GatewayConfig {
        workers: Some(1),
        ..GatewayConfig::default()
    }
}

async fn wait_ready(gateway: &Gateway) -> Result<()> {
    let ready = async {
        while !gateway.is_ready() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(WAIT, ready)
        .await
        .with_context(|| format!("the broker link never came up: {:?}", gateway.stats().bus))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_embedded_broker_speaks_tls_to_every_gateway() -> Result<()> {
    let pki = TestPki::generate()?;
    let shutdown = CancellationToken::new();
    let broker_listener = TcpListener::bind("127.0.0.1:0").await?;
    let broker_addr = broker_listener.local_addr()?;
    let host = Gateway::builder(config())
        .security(Security {
            link: pki.link()?,
            embedded_broker_tls: Some(server_kit::tls::server_config(&pki.cert, &pki.key)?),
            ..Security::default()
        })
        .embedded_broker(broker_listener)
        .start(shutdown.clone())?;
    wait_ready(&host).await?;

    let joiner = Gateway::builder(config())
        .security(Security {
            link: pki.link()?,
            ..Security::default()
        })
        .broker(broker_addr.to_string())
        .start(shutdown.clone())?;
    wait_ready(&joiner).await?;

    // A link in plain TCP says hello and gets nothing back: the broker wanted a TLS handshake.
    let stream = TcpStream::connect(broker_addr).await?;
    let mut plain = Framed::new(stream, LinkCodec::new(protocol::DEFAULT_MAX_FRAME_SIZE));
    plain.send(Frame::hello("plain")).await?;
    match tokio::time::timeout(Duration::from_secs(10), plain.next()).await {
        Ok(None | Some(Err(_))) => {}
        Ok(Some(Ok(frame))) => bail!("a plain TCP link got a frame: {frame:?}"),
        Err(_) => bail!("a plain TCP link was neither answered nor closed"),
    }
    shutdown.cancel();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_that_embeds_a_tls_broker_needs_no_tls_of_its_own() -> Result<()> {
    let pki = TestPki::generate()?;
    let shutdown = CancellationToken::new();
    let broker_listener = TcpListener::bind("127.0.0.1:0").await?;
    let broker_addr = broker_listener.local_addr()?;
    // Only the certificate: this gateway reaches its broker in process.
    let host = Gateway::builder(config())
        .security(Security {
            link: LinkSecurity {
                secret: Some(LinkSecret::new(LINK_SECRET)?),
                tls: None,
            },
            embedded_broker_tls: Some(server_kit::tls::server_config(&pki.cert, &pki.key)?),
            ..Security::default()
        })
        .embedded_broker(broker_listener)
        .start(shutdown.clone())?;
    wait_ready(&host).await?;
    assert_eq!(host.stats().bus.carrier, "embedded");
    let joiner = Gateway::builder(config())
        .security(Security {
            link: pki.link()?,
            ..Security::default()
        })
        .broker(broker_addr.to_string())
        .start(shutdown.clone())?;
    wait_ready(&joiner).await?;
    shutdown.cancel();
    Ok(())
}
