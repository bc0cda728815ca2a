//! The demo page and the browser client, served by the admin HTTP server: the page at `/` and
//! `/demo` (one HTML file, inline CSS and JS, nothing fetched from elsewhere), the client at
//! `/client.js` (one ES module without dependencies, which the page imports; docs/client.md).
//!
//! The page is served by the admin server but talks to the WebSocket listener, whose port it
//! cannot guess: it reads `GET /demo/config.json` first. It also polls `/api/stats`.

use std::net::SocketAddr;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use crate::gateway::Gateway;

const PAGE: &str = include_str!("../../static/demo.html");

/// The browser client, an ES module: `import { GroupPushClient } from "/client.js"`.
pub const CLIENT_JS: &str = include_str!("../../static/client.js");

/// Everything the page loads is inline or from this server (`/client.js`, `/demo/config.json`,
/// `/api/stats`); it connects to the WebSocket listener wherever that is.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self' 'unsafe-inline'; \
     style-src 'unsafe-inline'; img-src data:; connect-src 'self' ws: wss:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The page's routes. Generic over the state so it merges into the admin router whatever its
/// state is; it uses none.
pub fn router<S: Clone + Send + Sync + 'static>(gateway: Gateway) -> Router<S> {
    Router::new()
        .route("/", get(page))
        .route("/demo", get(page))
        .route("/client.js", get(client_js))
        .route(
            "/demo/config.json",
            get(move || {
                let config = gateway.ws_addr().map(|addr| DemoConfig {
                    tls: gateway.client_tls(),
                    ..DemoConfig::for_ws_addr(addr)
                });
                async move { config_response(config) }
            }),
        )
}

async fn page() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/html; charset=utf-8"),
            ),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CONTENT_SECURITY_POLICY),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        PAGE,
    )
        .into_response()
}

/// The client module. Pages of other origins may import it too (a module script is fetched
/// with CORS), hence `Access-Control-Allow-Origin`: it is public code, sent without cookies.
async fn client_js() -> Response {
    (
        [
            (
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/javascript; charset=utf-8"),
            ),
            (
                header::X_CONTENT_TYPE_OPTIONS,
                HeaderValue::from_static("nosniff"),
            ),
            (
                header::ACCESS_CONTROL_ALLOW_ORIGIN,
                HeaderValue::from_static("*"),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        CLIENT_JS,
    )
        .into_response()
}

fn config_response(config: Option<DemoConfig>) -> Response {
    let no_store = [(header::CACHE_CONTROL, HeaderValue::from_static("no-store"))];
    match config {
        Some(config) => (no_store, Json(config)).into_response(),
        // Between the admin server's start and the accept loop's: the page retries.
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            no_store,
            Json(serde_json::json!({"error": "the WebSocket listener is not up yet"})),
        )
            .into_response(),
    }
}

/// What `/demo/config.json` serves: where the page opens its WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DemoConfig {
    pub ws_port: u16,
    /// The host to connect to, when the listener is bound to one address (an IPv6 address is in
    /// brackets, ready for a URL). `None` for a wildcard bind (`0.0.0.0`, `::`): the page then
    /// uses the host it was loaded from, so it works from other machines too.
    pub ws_host: Option<String>,
    /// The listener speaks TLS (`wss://`); left out of the JSON when false.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tls: bool,
}

impl DemoConfig {
    pub fn for_ws_addr(addr: SocketAddr) -> DemoConfig {
        let ip = addr.ip();
        let ws_host = match ip {
            _ if ip.is_unspecified() => None,
            std::net::IpAddr::V4(v4) => Some(v4.to_string()),
            std::net::IpAddr::V6(v6) => Some(format!("[{v6}]")),
        };
        DemoConfig {
            ws_port: addr.port(),
            ws_host,
            tls: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(addr: &str) -> DemoConfig {
        DemoConfig::for_ws_addr(addr.parse().unwrap())
    }

    #[test]
    fn a_wildcard_bind_leaves_the_host_to_the_page() {
        assert_eq!(
            config("0.0.0.0:1234"),
            DemoConfig {
                ws_port: 1234,
                ws_host: None,
                tls: false,
            }
        );
        assert_eq!(config("[::]:1234").ws_host, None);
    }

    #[test]
    fn a_specific_bind_names_its_address() {
        assert_eq!(
            config("127.0.0.1:4321"),
            DemoConfig {
                ws_port: 4321,
                ws_host: Some("127.0.0.1".to_owned()),
                tls: false,
            }
        );
        assert_eq!(config("[::1]:80").ws_host.as_deref(), Some("[::1]"));
    }

    #[test]
    fn the_page_is_self_contained() {
        // No build step and no network: nothing may be loaded from another origin.
        for needle in ["src=\"http", "href=\"http", "@import", "url(http", "//cdn"] {
            assert!(!PAGE.contains(needle), "the demo page loads {needle}...");
            assert!(!CLIENT_JS.contains(needle), "the client loads {needle}...");
        }
        // The client is a module without dependencies: it imports nothing, exports its class.
        assert!(
            !CLIENT_JS.lines().any(|line| line.starts_with("import ")),
            "the client imports something"
        );
        assert!(CLIENT_JS.contains("export class GroupPushClient "));
        assert!(
            PAGE.contains(r#"from '/client.js'"#),
            "the page does not use the client"
        );
        for id in [
            "status",
            "group-input",
            "join-btn",
            "groups",
            "send-group-input",
            "message-input",
            "send-btn",
            "messages",
            "stats",
        ] {
            assert!(
                PAGE.contains(&format!("id=\"{id}\"")),
                "the demo page has no #{id}"
            );
        }
    }
}
