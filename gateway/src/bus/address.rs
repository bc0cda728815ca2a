//! `--bus URL`: which carrier, and where its engine is. The scheme picks the carrier; several
//! comma-separated addresses are Redis shards, Redis Cluster seed nodes, or NATS servers.
//!
//! | `--bus` | carrier |
//! |---|---|
//! | unset | the embedded broker, reached in process |
//! | `broker://HOST:PORT` (or `--broker HOST:PORT`) | the built-in broker over TCP |
//! | `redis://[USER:PASS@]HOST[:PORT][/DB]`, `rediss://` (TLS); comma-separated: shards | Redis pub/sub |
//! | `redis+cluster://HOST:PORT[,HOST:PORT...]`, `rediss+cluster://` | Redis Cluster, sharded pub/sub |
//! | `nats://[USER:PASS@ or TOKEN@]HOST[:PORT][,HOST:PORT...]`, `tls://` | NATS core pub/sub |
//!
//! An address after a comma without a scheme takes the first one's. Passwords never reach a
//! log line: [`BusAddress`]'s `Display` and [`redacted`] hide them.

use std::fmt;
use std::str::FromStr;

use url::Url;

use super::BusError;

/// A parsed `--bus`. Its `Debug` is its `Display`: without passwords or tokens.
#[derive(Clone, PartialEq, Eq)]
pub enum BusAddress {
    /// No `--bus`: the broker embedded in this process, reached without TCP.
    Embedded,
    /// The built-in broker at `HOST:PORT`, over TCP.
    Broker(String),
    /// Independent Redis servers; each group lives on one (consistent hash).
    Redis(Vec<Url>),
    /// Seed nodes of one Redis Cluster (sharded pub/sub).
    RedisCluster(Vec<Url>),
    /// Servers of one NATS cluster (any is as good as another).
    Nats(Vec<Url>),
}

impl BusAddress {
    /// The carrier's name, as `/api/stats` reports it.
    pub fn carrier(&self) -> &'static str {
        match self {
            BusAddress::Embedded => "embedded",
            BusAddress::Broker(_) => "broker",
            BusAddress::Redis(_) => "redis",
            BusAddress::RedisCluster(_) => "redis-cluster",
            BusAddress::Nats(_) => "nats",
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Broker,
    Redis,
    RedisCluster,
    Nats,
}

fn kind_of(scheme: &str) -> Option<(Kind, u16)> {
    Some(match scheme {
        "broker" => (Kind::Broker, 2206),
        "redis" | "rediss" => (Kind::Redis, 6379),
        "redis+cluster" | "rediss+cluster" => (Kind::RedisCluster, 6379),
        "nats" | "tls" => (Kind::Nats, 4222),
        _ => return None,
    })
}

const SCHEMES: &str = "broker://, redis://, rediss://, redis+cluster://, rediss+cluster://, \
                       nats:// or tls://";

impl FromStr for BusAddress {
    type Err = BusError;

    fn from_str(text: &str) -> Result<BusAddress, BusError> {
        let invalid = |reason: String| BusError::InvalidAddress {
            address: redact_text(text),
            reason,
        };
        let mut parts = text.split(',').map(str::trim);
        let first = parts.next().unwrap_or_default();
        let Some((scheme, _)) = first.split_once("://") else {
            return Err(invalid(format!(
                "no scheme: write it as a URL starting with {SCHEMES} (e.g. redis://{first})"
            )));
        };
        let Some((kind, default_port)) = kind_of(scheme) else {
            return Err(invalid(format!(
                "unknown scheme {scheme:?}: expected {SCHEMES}"
            )));
        };
        let mut urls = Vec::new();
        for part in std::iter::once(first).chain(parts) {
            if part.is_empty() {
                return Err(invalid("an empty address between commas".into()));
            }
            let full = if part.contains("://") {
                part.to_owned()
            } else {
                format!("{scheme}://{part}")
            };
            let userinfo = full
                .split_once("://")
                .and_then(|(_, rest)| rest.rsplit_once('@'))
                .map(|(userinfo, _)| userinfo);
            if userinfo.is_some_and(|u| u.ends_with(':')) {
                // The url crate drops an empty password, and `user` alone reads as a token.
                return Err(invalid(format!(
                    "{}: an empty password: give one, or no `:`",
                    redact_text(part)
                )));
            }
            let mut url =
                Url::parse(&full).map_err(|e| invalid(format!("{}: {e}", redact_text(part))))?;
            if kind_of(url.scheme()).map(|(k, _)| k) != Some(kind) {
                return Err(invalid(format!(
                    "{} mixes carriers: every address must use {scheme}:// (or the TLS form)",
                    redact_text(part)
                )));
            }
            if url.host_str().is_none_or(str::is_empty) {
                return Err(invalid(format!("{} has no host", redact_text(part))));
            }
            if url.port().is_none() {
                // Schemes the url crate does not know have no default port.
                let _ = url.set_port(Some(default_port));
            }
            if url.port() == Some(0) {
                return Err(invalid(format!("{} has port 0", redact_text(part))));
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(invalid(format!(
                    "{}: query strings and fragments are not used",
                    redact_text(part)
                )));
            }
            match kind {
                Kind::Redis | Kind::RedisCluster => {
                    let db = url.path().trim_start_matches('/');
                    if !db.is_empty() && db.parse::<u32>().is_err() {
                        return Err(invalid(format!(
                            "{}: the path must be a database number, e.g. /0",
                            redact_text(part)
                        )));
                    }
                    if !url.username().is_empty() && url.password().is_none() {
                        return Err(invalid(format!(
                            "{}: a Redis user needs its password (redis://USER:PASSWORD@HOST)",
                            redact_text(part)
                        )));
                    }
                    if kind == Kind::RedisCluster && !db.is_empty() && db != "0" {
                        return Err(invalid("Redis Cluster has only database 0".to_owned()));
                    }
                }
                Kind::Broker | Kind::Nats => {
                    if !matches!(url.path(), "" | "/") {
                        return Err(invalid(format!("{}: no path expected", redact_text(part))));
                    }
                }
            }
            urls.push(url);
        }
        Ok(match kind {
            Kind::Broker => {
                let [url] = &urls[..] else {
                    return Err(invalid("one broker address only".into()));
                };
                if !url.username().is_empty() || url.password().is_some() {
                    return Err(invalid(
                        "the broker takes its secret from --link-secret-file, not the URL".into(),
                    ));
                }
                let host = url.host_str().unwrap_or_default();
                let port = url.port().unwrap_or(2206);
                BusAddress::Broker(format!("{host}:{port}"))
            }
            Kind::Redis => BusAddress::Redis(urls),
            Kind::RedisCluster => BusAddress::RedisCluster(urls),
            Kind::Nats => BusAddress::Nats(urls),
        })
    }
}

/// `url` as it may be logged: its password replaced by `***`.
pub fn redacted(url: &Url) -> String {
    let mut shown = url.clone();
    if shown.password().is_some() {
        let _ = shown.set_password(Some("***"));
    } else if !shown.username().is_empty() && matches!(url.scheme(), "nats" | "tls") {
        // A NATS token is written as the user part (`nats://TOKEN@host`, `tls://TOKEN@host`).
        let _ = shown.set_username("***");
    }
    shown.to_string()
}

/// Text that failed to parse as it may be logged: anything between `://` and `@` hidden.
fn redact_text(text: &str) -> String {
    text.split(',')
        .map(|part| match (part.find("://"), part.rfind('@')) {
            (Some(start), Some(at)) if at > start => {
                format!("{}***{}", &part[..start + 3], &part[at..])
            }
            _ => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

impl fmt::Debug for BusAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BusAddress({self})")
    }
}

impl fmt::Display for BusAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let urls = match self {
            BusAddress::Embedded => return f.write_str("embedded"),
            BusAddress::Broker(addr) => return write!(f, "broker://{addr}"),
            BusAddress::Redis(urls) | BusAddress::RedisCluster(urls) | BusAddress::Nats(urls) => {
                urls
            }
        };
        let shown: Vec<String> = urls.iter().map(redacted).collect();
        f.write_str(&shown.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> BusAddress {
        text.parse().unwrap_or_else(|e| panic!("{text}: {e}"))
    }

    fn refused(text: &str) -> String {
        text.parse::<BusAddress>().expect_err(text).to_string()
    }

    #[test]
    fn the_scheme_picks_the_carrier() {
        assert_eq!(
            parse("broker://10.0.0.5:2206"),
            BusAddress::Broker("10.0.0.5:2206".into())
        );
        assert_eq!(parse("broker://b"), BusAddress::Broker("b:2206".into()));
        assert_eq!(parse("redis://r:6380").carrier(), "redis");
        assert_eq!(parse("rediss://r").carrier(), "redis");
        assert_eq!(
            parse("redis+cluster://a:7000,b:7001").carrier(),
            "redis-cluster"
        );
        assert_eq!(parse("nats://n1:4222, n2:4223").carrier(), "nats");
        assert_eq!(parse("tls://n1").carrier(), "nats");
    }

    #[test]
    fn shards_and_seeds_are_listed_with_default_ports() {
        let BusAddress::Redis(shards) = parse("redis://a,redis://:pw@b:7000/2,c") else {
            panic!("redis")
        };
        let shown: Vec<_> = shards.iter().map(redacted).collect();
        assert_eq!(
            shown,
            ["redis://a:6379", "redis://:***@b:7000/2", "redis://c:6379"]
        );
        let BusAddress::Nats(servers) = parse("nats://n1,n2:5222") else {
            panic!("nats")
        };
        assert_eq!(servers[0].port(), Some(4222));
        assert_eq!(servers[1].port(), Some(5222));
    }

    #[test]
    fn passwords_never_show() {
        let address = parse("redis://user:hunter2@r:6379,nats-less");
        assert!(!address.to_string().contains("hunter2"), "{address}");
        assert!(!format!("{address:?}").contains("hunter2"), "{address:?}");
        for token in ["nats://s3cr3t-token@n:4222", "tls://s3cr3t-token@n:4222"] {
            let address = parse(token);
            assert!(!address.to_string().contains("s3cr3t"), "{address}");
            assert!(!format!("{address:?}").contains("s3cr3t"), "{address:?}");
        }
        let err = refused("redis://user:hunter2@r:6379,nats://x");
        assert!(
            !err.contains("hunter2") && err.contains("mixes carriers"),
            "{err}"
        );
        let err = refused("redis://user:hunter2@r:notaport");
        assert!(!err.contains("hunter2"), "{err}");
    }

    #[test]
    fn mistakes_are_explained() {
        for (text, expected) in [
            ("127.0.0.1:2206", "no scheme"),
            ("http://x", "unknown scheme"),
            ("redis://a,,b", "empty address"),
            ("redis://a/x", "database number"),
            ("redis+cluster://a/3", "only database 0"),
            ("nats://a/b", "no path"),
            ("broker://a,b", "one broker"),
            ("broker://u:p@a", "--link-secret-file"),
            ("redis://a:0", "port 0"),
            ("redis://a?x=1", "query"),
            ("nats://", "no host"),
            ("nats://user:@n", "empty password"),
            ("redis://user@r", "needs its password"),
        ] {
            let err = refused(text);
            assert!(err.contains(expected), "{text}: {err}");
        }
    }
}
