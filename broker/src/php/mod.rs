//! PHP Channel clients (Workerman's `Channel\Client`, php-fpm scripts writing a framed
//! `publish`): the broker takes the place of `Channel\Server` for them.
//!
//! - [`hub`]: their channels and queues, shared by every PHP connection, and the
//!   `send_to_group` bridge from the gateways' groups.
//! - `conn`: one PHP connection: frames in (`protocol::php`), commands applied, `event` and
//!   `queue` frames out through the same bounded queue and writer as a gateway link.
//!
//! A PHP `publish` on `send_to_group` with `group_id` and `message` also goes to the gateways'
//! group, as a client's `send_to_group` would; see docs/php-channel.md.

mod conn;
pub mod hub;

pub(crate) use conn::{serve_php, serve_php_stream};

use std::net::IpAddr;

/// Whether a PHP Channel client from `peer` is served, on the shared port and on a port of its
/// own alike (docs/php-channel.md, "Security"). PHP clients cannot authenticate, so:
///
/// - with `--php-allow` (`allow` not empty): only from a listed address (loopback too only if
///   listed);
/// - without: from a loopback address, or from anywhere when the broker has no link secret (then
///   anyone who reaches the port may use the link too).
///
/// An IPv4 address seen as IPv6 (`::ffff:10.0.0.5`, on a dual-stack listener) is compared as IPv4.
pub(crate) fn php_peer_allowed(allow: &[IpAddr], has_link_secret: bool, peer: IpAddr) -> bool {
    let peer = peer.to_canonical();
    if !allow.is_empty() {
        return allow.iter().any(|a| a.to_canonical() == peer);
    }
    !has_link_secret || peer.is_loopback()
}

#[cfg(test)]
mod tests {
    use super::php_peer_allowed;
    use std::net::IpAddr;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn without_an_allow_list_a_link_secret_restricts_php_clients_to_loopback() {
        for peer in ["127.0.0.1", "127.0.0.2", "::1", "::ffff:127.0.0.1"] {
            assert!(php_peer_allowed(&[], true, ip(peer)), "{peer}");
        }
        for peer in ["10.0.0.5", "192.168.1.2", "::ffff:10.0.0.5", "2001:db8::1"] {
            assert!(!php_peer_allowed(&[], true, ip(peer)), "{peer}");
            assert!(php_peer_allowed(&[], false, ip(peer)), "{peer}");
        }
    }

    #[test]
    fn an_allow_list_admits_only_its_addresses() {
        let allow = [ip("10.0.0.5"), ip("::ffff:10.0.0.6")];
        for secret in [false, true] {
            assert!(php_peer_allowed(&allow, secret, ip("10.0.0.5")));
            assert!(php_peer_allowed(&allow, secret, ip("::ffff:10.0.0.5")));
            assert!(php_peer_allowed(&allow, secret, ip("10.0.0.6")));
            assert!(!php_peer_allowed(&allow, secret, ip("10.0.0.7")));
            // Loopback only if listed.
            assert!(!php_peer_allowed(&allow, secret, ip("127.0.0.1")));
            assert!(!php_peer_allowed(&allow, secret, ip("::1")));
        }
        assert!(php_peer_allowed(&[ip("127.0.0.2")], true, ip("127.0.0.2")));
        assert!(!php_peer_allowed(&[ip("127.0.0.2")], true, ip("127.0.0.1")));
    }
}
