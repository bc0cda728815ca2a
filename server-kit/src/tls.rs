//! TLS settings from PEM files (rustls with the `ring` provider), shared with the gateway: the
//! broker's link listener and the gateway's WebSocket listener use [`server_config`], the
//! gateway's broker link uses [`client_config`].
//!
//! Every failure names the file and what is wrong with it, so that a bad certificate or key stops
//! startup with a clear message instead of failing handshakes later.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why TLS settings could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: no PEM certificate found (expected -----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: no PEM private key found (expected PKCS#8, PKCS#1 or SEC1)", path.display())]
    NoKey { path: PathBuf },
    #[error("{}: malformed PEM: {reason}", path.display())]
    Pem { path: PathBuf, reason: String },
    #[error("{}: {reason}", path.display())]
    Invalid { path: PathBuf, reason: String },
}

/// Reads a PEM file of certificates (a chain: the leaf first, then intermediates).
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key of a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    use tokio_rustls::rustls::pki_types::pem::Error;
    let pem = read(path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| match e {
        Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        e => TlsError::Pem {
            path: path.to_owned(),
            reason: e.to_string(),
        },
    })
}

/// A server configuration presenting the certificate chain in `cert` with the key in `key`.
/// A key that does not match the certificate is refused here.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(cert)?;
    let key_der = load_key(key)?;
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(cert, e))?
        .with_no_client_auth()
        .with_single_cert(certs, key_der)
        .map_err(|e| TlsError::Invalid {
            path: key.to_owned(),
            reason: format!(
                "cannot be used with the certificate in {}: {e}",
                cert.display()
            ),
        })?;
    Ok(Arc::new(config))
}

/// A client configuration that trusts exactly the CA certificates in `ca` (no system roots).
pub fn client_config(ca: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca)? {
        roots.add(cert).map_err(|e| invalid(ca, e))?;
    }
    let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| invalid(ca, e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })
}

fn invalid(path: &Path, e: impl std::fmt::Display) -> TlsError {
    TlsError::Invalid {
        path: path.to_owned(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file in the temp directory, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, contents: &str) -> TempFile {
            let path =
                std::env::temp_dir().join(format!("broker-tls-test-{}-{name}", std::process::id()));
            std::fs::write(&path, contents).expect("write temp file");
            TempFile(path)
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn self_signed() -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn loads_a_matching_pair() {
        let (cert, key) = self_signed();
        let (cert, key) = (
            TempFile::new("ok.crt", &cert),
            TempFile::new("ok.key", &key),
        );
        assert!(server_config(&cert.0, &key.0).is_ok());
        assert!(client_config(&cert.0).is_ok());
    }

    #[test]
    fn bad_files_are_named_and_never_panic() {
        let (cert, key) = self_signed();
        let (_, other_key) = self_signed();
        let cert = TempFile::new("c.crt", &cert);
        let key = TempFile::new("c.key", &key);
        let other_key = TempFile::new("other.key", &other_key);
        let garbage = TempFile::new("garbage.pem", "not a pem file\n");
        let broken = TempFile::new(
            "broken.pem",
            "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n",
        );
        let missing = std::env::temp_dir().join("broker-tls-test-does-not-exist.pem");

        type Case<'a> = (Result<Arc<ServerConfig>, TlsError>, &'a Path, &'a str);
        let cases: Vec<Case<'_>> = vec![
            (server_config(&missing, &key.0), &missing, "cannot read"),
            (
                server_config(&garbage.0, &key.0),
                &garbage.0,
                "no PEM certificate",
            ),
            (server_config(&broken.0, &key.0), &broken.0, "malformed PEM"),
            (
                server_config(&cert.0, &garbage.0),
                &garbage.0,
                "no PEM private key",
            ),
            (
                server_config(&cert.0, &cert.0),
                &cert.0,
                "no PEM private key",
            ),
            (
                server_config(&cert.0, &other_key.0),
                &other_key.0,
                "cannot be used",
            ),
        ];
        for (result, path, expected) in cases {
            let message = result.expect_err(expected).to_string();
            assert!(message.contains(&path.display().to_string()), "{message}");
            assert!(message.contains(expected), "{message}");
        }
        let message = client_config(&garbage.0).expect_err("no CA").to_string();
        assert!(message.contains("no PEM certificate"), "{message}");
    }
}
