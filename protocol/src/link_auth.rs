//! Authentication of a broker link with a shared secret, by challenge and response: the secret
//! itself never crosses the wire.
//!
//! The broker puts [`CHALLENGE_LEN`] random bytes in its hello ([`crate::link::Hello::challenge`]);
//! the gateway answers with an [`crate::link::Auth`] frame holding
//! `HMAC-SHA256(secret, challenge || node)`, `node` being the name in the gateway's own hello. The
//! broker recomputes the MAC and compares in constant time. A fresh challenge per link makes a
//! recorded answer useless on another link. docs/protocol.md describes the whole handshake.

use std::fmt;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Bytes of random challenge a broker sends.
pub const CHALLENGE_LEN: usize = 32;
/// Bytes of an HMAC-SHA256 tag.
pub const MAC_LEN: usize = 32;
/// Shortest secret accepted: the challenge and its answer travel in the clear (without TLS),
/// so a short secret could be guessed offline from one recorded handshake.
pub const MIN_SECRET_LEN: usize = 16;

type HmacSha256 = Hmac<Sha256>;

/// The shared secret of the broker link. Its `Debug` does not show it.
#[derive(Clone)]
pub struct LinkSecret(Box<[u8]>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkSecretError {
    #[error("the link secret must be at least {MIN_SECRET_LEN} bytes, got {0}")]
    TooShort(usize),
}

impl LinkSecret {
    /// A secret of at least [`MIN_SECRET_LEN`] bytes.
    pub fn new(secret: impl Into<Vec<u8>>) -> Result<LinkSecret, LinkSecretError> {
        let secret = secret.into();
        if secret.len() < MIN_SECRET_LEN {
            return Err(LinkSecretError::TooShort(secret.len()));
        }
        Ok(LinkSecret(secret.into_boxed_slice()))
    }

    fn hmac(&self, challenge: &[u8], node: &str) -> HmacSha256 {
        // HMAC takes keys of any length; this cannot fail.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(&self.0)
            .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"));
        mac.update(challenge);
        mac.update(node.as_bytes());
        mac
    }

    /// The gateway's answer to `challenge`.
    pub fn answer(&self, challenge: &[u8], node: &str) -> [u8; MAC_LEN] {
        self.hmac(challenge, node).finalize().into_bytes().into()
    }

    /// Whether `mac` is the answer to `challenge` for `node`, compared in constant time.
    pub fn verify(&self, challenge: &[u8], node: &str, mac: &[u8]) -> bool {
        self.hmac(challenge, node).verify_slice(mac).is_ok()
    }
}

impl fmt::Debug for LinkSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("LinkSecret(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret(s: &str) -> LinkSecret {
        LinkSecret::new(s).expect("long enough")
    }

    #[test]
    fn answer_verifies_only_with_the_same_secret_challenge_and_node() {
        let s = secret("0123456789abcdef-shared");
        let challenge = [7u8; CHALLENGE_LEN];
        let mac = s.answer(&challenge, "gw-1");
        assert!(s.verify(&challenge, "gw-1", &mac));
        assert!(!s.verify(&challenge, "gw-2", &mac), "bound to the node");
        assert!(
            !s.verify(&[8u8; CHALLENGE_LEN], "gw-1", &mac),
            "bound to the challenge"
        );
        assert!(!secret("0123456789abcdef-other").verify(&challenge, "gw-1", &mac));
        assert!(
            !s.verify(&challenge, "gw-1", &mac[..MAC_LEN - 1]),
            "truncated"
        );
        assert!(!s.verify(&challenge, "gw-1", b""), "missing");
    }

    /// The wire contract: the MAC covers the challenge, then the node name, with nothing between.
    #[test]
    fn answer_is_hmac_sha256_of_challenge_then_node() {
        let s = secret("key-key-key-key-");
        let mut expected = <HmacSha256 as Mac>::new_from_slice(b"key-key-key-key-").expect("key");
        expected.update(b"nonce-bytesnode");
        let expected: [u8; 32] = expected.finalize().into_bytes().into();
        assert_eq!(s.answer(b"nonce-bytes", "node"), expected);
    }

    #[test]
    fn short_secrets_are_refused_and_debug_redacts() {
        assert_eq!(
            LinkSecret::new("short").unwrap_err(),
            LinkSecretError::TooShort(5)
        );
        let s = secret("do-not-print-this-secret");
        assert!(!format!("{s:?}").contains("do-not-print"));
    }
}
