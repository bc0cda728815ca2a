//! The Origin allowlist (`--allowed-origins`), checked in the WebSocket handshake.
//!
//! Browsers send an `Origin` header with every WebSocket handshake, and a page cannot forge it;
//! other clients send none. The allowlist keeps other sites' pages from opening connections on
//! their visitors' behalf: a handshake whose `Origin` is not listed is answered `403 Forbidden`.
//! A handshake without `Origin` is not a browser's and is always let through, so the allowlist
//! is no access control against other programs.

use std::fmt;
use std::str::FromStr;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use tokio_tungstenite::tungstenite::handshake::server::{
    Callback, ErrorResponse, Request, Response,
};
use tokio_tungstenite::tungstenite::http::{header, StatusCode};

/// One entry of the allowlist: `*` (any origin), or an origin as browsers serialise it,
/// `scheme://host[:port]`. Kept lowercase, without a default port (`:80` for http, `:443` for
/// https) or a trailing `/`, so that it compares equal to the header a browser sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowedOrigin(Option<String>);

impl AllowedOrigin {
    /// `*`: every origin.
    pub fn any() -> AllowedOrigin {
        AllowedOrigin(None)
    }
}

impl FromStr for AllowedOrigin {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if s == "*" {
            return Ok(AllowedOrigin::any());
        }
        let lower = s.to_ascii_lowercase();
        let lower = lower.strip_suffix('/').unwrap_or(&lower);
        let invalid = |why: &str| {
            Err(format!(
                "invalid origin {s:?}: {why} (expected `*` or scheme://host[:port], such as \
                 https://example.com)"
            ))
        };
        let Some((scheme, authority)) = lower.split_once("://") else {
            return invalid("no scheme");
        };
        let scheme_ok = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !scheme_ok {
            return invalid("bad scheme");
        }
        if authority.is_empty() {
            return invalid("no host");
        }
        if authority.contains(['/', '?', '#', '@', ' ', ',']) {
            return invalid("an origin has no path, query, user or spaces");
        }
        let authority = match (scheme, authority.rsplit_once(':')) {
            ("http" | "ws", Some((host, "80"))) | ("https" | "wss", Some((host, "443"))) => host,
            _ => authority,
        };
        Ok(AllowedOrigin(Some(format!("{scheme}://{authority}"))))
    }
}

impl fmt::Display for AllowedOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.as_deref().unwrap_or("*"))
    }
}

/// What the handshake checks, built once from the settings.
#[derive(Debug, Clone, Default)]
pub(crate) struct OriginPolicy {
    /// `None`: every origin is allowed (empty list, or `*` in it).
    allowed: Option<Vec<String>>,
}

impl OriginPolicy {
    pub(crate) fn new(list: &[AllowedOrigin]) -> OriginPolicy {
        let any = list.is_empty() || list.iter().any(|o| o.0.is_none());
        OriginPolicy {
            allowed: (!any).then(|| list.iter().filter_map(|o| o.0.clone()).collect()),
        }
    }

    /// True if the handshake `request` may go on: no allowlist, no `Origin` header (not a
    /// browser), or exactly one that is listed.
    pub(crate) fn allows(&self, request: &Request) -> bool {
        let Some(allowed) = &self.allowed else {
            return true;
        };
        let mut origins = request.headers().get_all(header::ORIGIN).iter();
        let Some(origin) = origins.next() else {
            return true;
        };
        origins.next().is_none()
            && allowed
                .iter()
                .any(|a| a.as_bytes().eq_ignore_ascii_case(origin.as_bytes()))
    }

    /// The handshake callback: lets allowed requests through and answers the others
    /// `403 Forbidden`, counting them in `rejections`.
    pub(crate) fn callback<'a>(&'a self, rejections: &'a AtomicU64) -> OriginCheck<'a> {
        OriginCheck {
            policy: self,
            rejections,
        }
    }
}

/// See [`OriginPolicy::callback`].
#[derive(Debug)]
pub(crate) struct OriginCheck<'a> {
    policy: &'a OriginPolicy,
    rejections: &'a AtomicU64,
}

impl Callback for OriginCheck<'_> {
    fn on_request(self, request: &Request, response: Response) -> Result<Response, ErrorResponse> {
        if self.policy.allows(request) {
            return Ok(response);
        }
        self.rejections.fetch_add(1, Relaxed);
        let origin = request.headers().get(header::ORIGIN);
        tracing::debug!(?origin, "origin not allowed");
        let mut response = ErrorResponse::new(Some("origin not allowed\n".to_owned()));
        *response.status_mut() = StatusCode::FORBIDDEN;
        Err(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(s: &str) -> AllowedOrigin {
        s.parse().unwrap_or_else(|e| panic!("{e}"))
    }

    fn request(origins: &[&str]) -> Request {
        let mut builder = Request::builder().uri("/");
        for o in origins {
            builder = builder.header(header::ORIGIN, *o);
        }
        builder.body(()).expect("request")
    }

    #[test]
    fn entries_are_normalised_like_browser_origins() {
        assert_eq!(
            origin("https://Example.COM/").to_string(),
            "https://example.com"
        );
        assert_eq!(
            origin("https://example.com:443").to_string(),
            "https://example.com"
        );
        assert_eq!(
            origin("http://example.com:80").to_string(),
            "http://example.com"
        );
        assert_eq!(
            origin("http://127.0.0.1:9090").to_string(),
            "http://127.0.0.1:9090"
        );
        assert_eq!(
            origin("https://example.com:8443").to_string(),
            "https://example.com:8443"
        );
        assert_eq!(origin("http://[::1]:80").to_string(), "http://[::1]");
        assert_eq!(origin("http://[::1]").to_string(), "http://[::1]");
        assert_eq!(origin(" * ").to_string(), "*");
        for bad in [
            "example.com",
            "null",
            "https://",
            "https://example.com/app",
            "https://user@example.com",
            "1http://x",
            "",
        ] {
            assert!(bad.parse::<AllowedOrigin>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn listed_origins_pass_others_get_403() {
        let policy = OriginPolicy::new(&[
            origin("https://example.com"),
            origin("http://127.0.0.1:9090"),
        ]);
        assert!(policy.allows(&request(&["https://example.com"])));
        assert!(policy.allows(&request(&["HTTPS://EXAMPLE.com"])));
        assert!(policy.allows(&request(&["http://127.0.0.1:9090"])));
        assert!(policy.allows(&request(&[])), "no Origin: not a browser");
        let rejections = AtomicU64::new(0);
        for refused in [
            &["https://evil.example"][..],
            &["http://example.com"],
            &["https://example.com:8443"],
            &["null"],
            &["https://example.com", "https://evil.example"],
        ] {
            assert!(!policy.allows(&request(refused)), "{refused:?}");
            let answer = policy
                .callback(&rejections)
                .on_request(&request(refused), Response::default());
            let response = answer.expect_err("refused");
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{refused:?}");
        }
        assert_eq!(rejections.load(Relaxed), 5);
        let allowed = policy
            .callback(&rejections)
            .on_request(&request(&["https://example.com"]), Response::default());
        assert!(allowed.is_ok());
    }

    #[test]
    fn empty_list_or_star_allows_any() {
        for policy in [
            OriginPolicy::new(&[]),
            OriginPolicy::new(&[origin("https://a.example"), AllowedOrigin::any()]),
        ] {
            assert!(policy.allows(&request(&["https://evil.example"])));
            assert!(policy.allows(&request(&["null"])));
        }
    }
}
