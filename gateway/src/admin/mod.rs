//! The gateway's admin HTTP server (axum). docs/protocol.md, "Admin HTTP API", is the reference.
//!
//! - `GET /healthz`, `GET /readyz`: probes. `GET /metrics`: OpenMetrics text ([`metrics`]).
//! - `GET /api/stats`: [`GatewaySnapshot`](crate::stats::GatewaySnapshot) as JSON.
//! - `POST /api/publish`: `{"group_id":G,"message":M,"exclude":[...]}` or an array of them,
//!   delivered through [`Gateway::publish`] exactly like a client's `send_to_group`. A batch is
//!   validated whole before anything is published.
//! - the cluster API ([`cluster`]): sends to everyone, a uid or a client; orders by client id or
//!   uid; lookups of clients, uids, groups, members and the live gateways.
//!
//! `/api/*` requires `Authorization: Bearer TOKEN` when [`AdminConfig::api_token`] is set; the
//! probes and `/metrics` stay open. Without a token the admin server may only listen on a
//! loopback address ([`check_exposure`], enforced by [`AdminConfig::validate`]). Every error,
//! axum's own rejections included, is answered as `{"error":{"code":C,"reason":R}}`.

mod cluster;
pub mod demo;
mod history;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use prometheus_client::registry::Registry;
use protocol::client::{parse_publish, ParseLimits, Publish};
use protocol::ErrorCode;
use protocol::Text;
use serde_json::value::RawValue;
use server_kit::admin_http::{
    AdminHttpLimits, DEFAULT_ADMIN_HEADER_TIMEOUT, DEFAULT_ADMIN_MAX_CONNECTIONS,
    DEFAULT_ADMIN_REQUEST_TIMEOUT,
};
use server_kit::secret::{parse_secret, ExposeSecret, SecretString};
use server_kit::settings::ConfigError;
use subtle::ConstantTimeEq;

use crate::gateway::Gateway;

/// Default of [`AdminConfig::api_max_body_size`]: 1 MiB.
pub const DEFAULT_MAX_BODY_SIZE: usize = 1024 * 1024;
/// Default of [`AdminConfig::api_max_batch`].
pub const DEFAULT_MAX_BATCH: usize = 1000;

/// Settings of the admin HTTP API. Each is a flag and an environment variable of the `gateway`
/// binary.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminConfig {
    /// Bearer token that `/api/*` requests must carry (`Authorization: Bearer TOKEN`). Probes and
    /// `/metrics` stay open. Required when `--admin` is not a loopback address.
    #[arg(long, env = "GATEWAY_API_TOKEN", hide_env_values = true, value_parser = parse_secret)]
    pub api_token: Option<SecretString>,

    /// Largest admin API request body, in bytes.
    #[arg(long, env = "GATEWAY_API_MAX_BODY_SIZE", default_value_t = DEFAULT_MAX_BODY_SIZE)]
    pub api_max_body_size: usize,

    /// Most messages in one `POST /api/publish` batch.
    #[arg(long, env = "GATEWAY_API_MAX_BATCH", default_value_t = DEFAULT_MAX_BATCH)]
    pub api_max_batch: usize,

    /// Most admin HTTP connections open at once (they share the process's file descriptors with
    /// WebSocket clients, before any authentication).
    #[arg(long, env = "GATEWAY_ADMIN_MAX_CONNECTIONS", default_value_t = DEFAULT_ADMIN_MAX_CONNECTIONS)]
    pub admin_max_connections: usize,

    /// Time for an admin request's header to arrive; it also runs between the requests of a
    /// kept-alive connection, so it is the admin idle timeout too.
    #[arg(long, env = "GATEWAY_ADMIN_HEADER_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub admin_header_timeout: Duration,

    /// Time for a whole admin request: its body read and its answer.
    #[arg(long, env = "GATEWAY_ADMIN_REQUEST_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub admin_request_timeout: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            api_token: None,
            api_max_body_size: DEFAULT_MAX_BODY_SIZE,
            api_max_batch: DEFAULT_MAX_BATCH,
            admin_max_connections: DEFAULT_ADMIN_MAX_CONNECTIONS,
            admin_header_timeout: DEFAULT_ADMIN_HEADER_TIMEOUT,
            admin_request_timeout: DEFAULT_ADMIN_REQUEST_TIMEOUT,
        }
    }
}

impl AdminConfig {
    /// The limits of the admin HTTP server itself.
    pub fn http_limits(&self) -> AdminHttpLimits {
        AdminHttpLimits {
            max_connections: self.admin_max_connections,
            header_timeout: self.admin_header_timeout,
            request_timeout: self.admin_request_timeout,
        }
    }

    /// Rejects settings that cannot work or that would expose the API, for an admin server on
    /// `addr`.
    pub fn validate(&self, addr: SocketAddr) -> Result<(), ConfigError> {
        if let Some(token) = &self.api_token {
            let token = token.expose_secret();
            if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(ConfigError::new(
                    "--api-token",
                    "must be non-empty printable ASCII without spaces (it is sent in an HTTP \
                     header)",
                ));
            }
        }
        let positive = [
            ("--api-max-body-size", self.api_max_body_size),
            ("--api-max-batch", self.api_max_batch),
            ("--admin-max-connections", self.admin_max_connections),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(ConfigError::new(name, "must be at least 1"));
            }
        }
        for (name, value) in [
            ("--admin-header-timeout", self.admin_header_timeout),
            ("--admin-request-timeout", self.admin_request_timeout),
        ] {
            if value.is_zero() || value > server_kit::settings::MAX_DURATION {
                return Err(ConfigError::new(name, "must be between 1ms and 24h"));
            }
        }
        check_exposure(addr, self.api_token.is_some())
            .map_err(|reason| ConfigError::new("--admin", reason))
    }
}

/// Refuses an admin server reachable from other hosts without a token: `/api/publish` would let
/// anyone who reaches the port push to every group.
pub fn check_exposure(addr: SocketAddr, has_token: bool) -> Result<(), String> {
    if has_token || addr.ip().to_canonical().is_loopback() {
        return Ok(());
    }
    Err(format!(
        "{addr} is not a loopback address: set --api-token (or \
         GATEWAY_API_TOKEN) to protect /api/*, or listen on 127.0.0.1"
    ))
}

/// An error answer: `{"error":{"code":C,"reason":R}}`, with `"index":I` for a batch item.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable: clients match on it.
    pub code: &'static str,
    pub reason: String,
    /// The position of the offending item in a batch.
    pub index: Option<usize>,
}

impl ApiError {
    pub(crate) fn new(
        status: StatusCode,
        code: &'static str,
        reason: impl Into<String>,
    ) -> ApiError {
        ApiError {
            status,
            code,
            reason: reason.into(),
            index: None,
        }
    }

    fn at(mut self, index: usize) -> ApiError {
        self.index = Some(index);
        self
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        tracing::debug!(
            status = self.status.as_u16(),
            code = self.code,
            reason = %self.reason,
            index = self.index,
            "admin request rejected"
        );
        let mut error = serde_json::json!({"code": self.code, "reason": self.reason});
        if let Some(index) = self.index {
            error["index"] = index.into();
        }
        let mut response =
            (self.status, Json(serde_json::json!({ "error": error }))).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

/// The answer to a successful `POST /api/publish`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Published {
    pub published: usize,
}

#[derive(Debug)]
pub(crate) struct AdminState {
    gateway: Gateway,
    config: AdminConfig,
    registry: Registry,
}

pub(crate) type Shared = Arc<AdminState>;

/// Serves `gateway`'s admin HTTP API on `listener`, within the limits of `config`, until
/// `shutdown`: what the `gateway` binary runs, and the tests.
pub async fn serve(
    gateway: Gateway,
    config: AdminConfig,
    listener: tokio::net::TcpListener,
    shutdown: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let limits = config.http_limits();
    let stats = gateway.admin_http_stats();
    let router = router(gateway, config);
    server_kit::admin_http::serve_admin(listener, router, limits, stats, shutdown).await
}

pub fn router(gateway: Gateway, config: AdminConfig) -> Router {
    let body_limit = DefaultBodyLimit::max(config.api_max_body_size);
    let state = Arc::new(AdminState {
        registry: crate::admin::metrics::registry(gateway.clone()),
        gateway,
        config,
    });
    let api = Router::new()
        .route("/api/stats", get(stats))
        .route("/api/publish", post(publish))
        .route("/api/send_to_all", post(cluster::send_to_all))
        .route("/api/send_to_uid", post(cluster::send_to_uid))
        .route("/api/send_to_client", post(cluster::send_to_client))
        .route("/api/bind_uid", post(cluster::bind_uid))
        .route("/api/unbind_uid", post(cluster::unbind_uid))
        .route("/api/join_group", post(cluster::join_group))
        .route("/api/leave_group", post(cluster::leave_group))
        .route("/api/ungroup", post(cluster::ungroup))
        .route("/api/close_client", post(cluster::close_client))
        .route("/api/clients/{client_id}", get(cluster::client))
        .route("/api/uids/{uid}", get(cluster::uid))
        .route("/api/groups", get(cluster::groups))
        .route("/api/groups/{group_id}", get(cluster::group))
        .route("/api/groups/{group_id}/members", get(cluster::members))
        .route("/api/nodes", get(cluster::nodes))
        .route("/api/history/{group_id}", get(history::read))
        .route("/api/history_remove", post(history::remove))
        .route_layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(body_limit);
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .merge(api)
        .merge(crate::admin::demo::router(state.gateway.clone()))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

async fn readyz(State(state): State<Shared>) -> (StatusCode, &'static str) {
    if state.gateway.ws_addr().is_none() {
        (StatusCode::SERVICE_UNAVAILABLE, "not listening yet")
    } else if !state.gateway.is_ready() {
        (StatusCode::SERVICE_UNAVAILABLE, "bus down")
    } else {
        (StatusCode::OK, "ready")
    }
}

async fn metrics(State(state): State<Shared>) -> Response {
    server_kit::metrics::scrape(&state.registry)
}

/// This gateway's stats, and under `cluster_totals` the whole cluster's connections and
/// memberships (with the gateways that answered).
async fn stats(State(state): State<Shared>) -> Response {
    let mut stats = serde_json::to_value(state.gateway.stats()).unwrap_or_default();
    if let serde_json::Value::Object(fields) = &mut stats {
        fields.insert(
            "cluster_totals".into(),
            cluster::cluster_totals(&state).await,
        );
    }
    Json(stats).into_response()
}

async fn publish(
    State(state): State<Shared>,
    request: Request,
) -> Result<Json<Published>, ApiError> {
    check_content_type(request.headers())?;
    let body = Bytes::from_request(request, &state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!(
                    "the body is larger than {} bytes",
                    state.config.api_max_body_size
                ),
            )
        } else {
            ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
        }
    })?;
    let text = std::str::from_utf8(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidJson.as_str(),
            format!("the body is not UTF-8: {e}"),
        )
    })?;
    let config = state.gateway.config();
    let limits = PublishLimits {
        parse: ParseLimits {
            max_group_id_len: config.max_group_id_len,
            max_uid_len: config.max_uid_len,
            max_targets: config.max_targets,
            max_page_size: config.max_page_size,
        },
        max_message_size: config.max_message_size,
        max_batch: state.config.api_max_batch,
    };
    let items = parse_body(text, &limits)?;
    let extras = publish_extras(text, config.max_targets)?;
    let hub = state.gateway.hub();
    for (index, item) in items.iter().enumerate() {
        let (exclude, history) = extras.get(index).cloned().unwrap_or_default();
        let has_history = hub.history_policy(item.group_id.as_str()).is_some();
        if has_history && history != Some(false) && !exclude.is_empty() {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                ErrorCode::InvalidField.as_str(),
                "`exclude` is not supported on a group with history (--history): send with \
                 \"history\":false to skip its history",
            )
            .at(index));
        }
    }
    let published = items.len();
    for (index, item) in items.into_iter().enumerate() {
        let payload = Text::from(item.message.into_owned());
        let (exclude, history) = extras.get(index).cloned().unwrap_or_default();
        if history == Some(false) {
            state
                .gateway
                .publish_plain(&item.group_id, payload, exclude)
                .await;
        } else {
            state
                .gateway
                .publish_excluding(&item.group_id, payload, exclude)
                .await;
        }
    }
    tracing::debug!(published, "published through the admin API");
    Ok(Json(Published { published }))
}

/// What a publish of a body (already parsed as publishes) may add: its `exclude` list, and
/// `"history":false` to skip the history of a group that keeps one.
type Extras = (Vec<protocol::cluster::ClientId>, Option<bool>);

/// The [`Extras`] of each publish of a body.
fn publish_extras(text: &str, max: usize) -> Result<Vec<Extras>, ApiError> {
    #[derive(serde::Deserialize)]
    struct Exclude {
        #[serde(default)]
        exclude: Vec<protocol::cluster::ClientId>,
        #[serde(default)]
        history: Option<bool>,
    }
    #[derive(serde::Deserialize)]
    #[serde(untagged)]
    enum Body {
        Many(Vec<Exclude>),
        One(Exclude),
    }
    let body: Body = serde_json::from_str(text).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidField.as_str(),
            format!("`exclude` must be an array of client ids, `history` true or false: {e}"),
        )
    })?;
    let lists: Vec<Extras> = match body {
        Body::Many(items) => items.into_iter().map(|i| (i.exclude, i.history)).collect(),
        Body::One(item) => vec![(item.exclude, item.history)],
    };
    if let Some(index) = lists.iter().position(|(l, _)| l.len() > max) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidField.as_str(),
            format!("`exclude` holds at most {max} client ids (--max-targets)"),
        )
        .at(index));
    }
    Ok(lists)
}

/// `application/json` or `application/*+json`, with any parameters.
pub(crate) fn check_content_type(headers: &HeaderMap) -> Result<(), ApiError> {
    let unsupported = |got: &str| {
        ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            format!("expected Content-Type: application/json, got {got}"),
        )
    };
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(unsupported("none"));
    };
    let Ok(value) = value.to_str() else {
        return Err(unsupported("a value that is not ASCII"));
    };
    let essence = value
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    let json = essence == "application/json"
        || essence
            .strip_prefix("application/")
            .is_some_and(|subtype| subtype.ends_with("+json"));
    if json {
        Ok(())
    } else {
        Err(unsupported(&format!("{value:?}")))
    }
}

/// What a publish body may hold.
#[derive(Debug, Clone, Copy)]
struct PublishLimits {
    parse: ParseLimits,
    max_message_size: usize,
    max_batch: usize,
}

/// A body is one publish object or an array of them. Every item is checked before any is
/// published, so a batch is all or nothing.
fn parse_body<'a>(text: &'a str, limits: &PublishLimits) -> Result<Vec<Publish<'a>>, ApiError> {
    let bad = |e: protocol::CommandError<'_>| {
        ApiError::new(StatusCode::BAD_REQUEST, e.code.as_str(), e.reason)
    };
    let is_batch = text
        .trim_start_matches([' ', '\t', '\n', '\r'])
        .starts_with('[');
    if !is_batch {
        let item = parse_publish(text, &limits.parse).map_err(|e| match e.code {
            ErrorCode::NotAnObject => ApiError::new(
                StatusCode::BAD_REQUEST,
                e.code.as_str(),
                "the body must be a JSON object or an array of objects",
            ),
            _ => bad(e),
        })?;
        check_message_size(&item, limits.max_message_size)?;
        return Ok(vec![item]);
    }
    let raw: Vec<&'a RawValue> = serde_json::from_str(text).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            ErrorCode::InvalidJson.as_str(),
            format!("invalid JSON: {e}"),
        )
    })?;
    if raw.len() > limits.max_batch {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!(
                "a batch holds at most {} messages, this one {}",
                limits.max_batch,
                raw.len()
            ),
        ));
    }
    raw.into_iter()
        .enumerate()
        .map(|(index, item)| {
            let item = parse_publish(item.get(), &limits.parse).map_err(|e| bad(e).at(index))?;
            check_message_size(&item, limits.max_message_size).map_err(|e| e.at(index))?;
            Ok(item)
        })
        .collect()
}

fn check_message_size(item: &Publish<'_>, max: usize) -> Result<(), ApiError> {
    if item.message.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!(
                "the message is {} bytes, more than the limit of {max}",
                item.message.len()
            ),
        ));
    }
    Ok(())
}

async fn authorize(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let Some(expected) = state.config.api_token.as_ref().map(|t| t.expose_secret()) else {
        return next.run(request).await;
    };
    let refused = match bearer_token(request.headers()) {
        Ok(token) if constant_time_eq(token.as_bytes(), expected.as_bytes()) => None,
        Ok(_) => Some("wrong token"),
        Err(why) => Some(why),
    };
    match refused {
        None => next.run(request).await,
        Some(reason) => {
            tracing::warn!(
                path = request.uri().path(),
                reason,
                "admin API request refused"
            );
            ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", reason).into_response()
        }
    }
}

/// Compares in time that does not depend on where the two differ (subtle), so a wrong guess does
/// not tell how many of its first bytes were right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    bool::from(a.ct_eq(b))
}

/// The token of an `Authorization: Bearer TOKEN` header (the scheme is case-insensitive).
fn bearer_token(headers: &HeaderMap) -> Result<&str, &'static str> {
    let value = headers
        .get(header::AUTHORIZATION)
        .ok_or("missing Authorization header")?;
    let value = value
        .to_str()
        .map_err(|_| "the Authorization header is not ASCII")?;
    match value.trim().split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => Ok(token.trim()),
        _ => Err("expected `Authorization: Bearer <token>`"),
    }
}

async fn not_found(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no endpoint at {}", request.uri().path()),
    )
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn exposure_needs_a_token_off_loopback() {
        for loopback in [
            "127.0.0.1:9090",
            "127.1.2.3:0",
            "[::1]:9090",
            "[::ffff:127.0.0.1]:1",
        ] {
            assert_eq!(check_exposure(addr(loopback), false), Ok(()), "{loopback}");
        }
        for open in [
            "0.0.0.0:9090",
            "10.0.0.1:9090",
            "[::]:9090",
            "[::ffff:10.0.0.1]:1",
        ] {
            let err = check_exposure(addr(open), false).unwrap_err();
            assert!(err.contains("--api-token"), "{open}: {err}");
            assert_eq!(check_exposure(addr(open), true), Ok(()), "{open}");
        }
    }

    #[test]
    fn validate_checks_every_setting() {
        let config = AdminConfig::default();
        assert!(config.validate(addr("127.0.0.1:0")).is_ok());
        assert!(config.validate(addr("0.0.0.0:0")).is_err());
        let with = |token: &str| AdminConfig {
            api_token: Some(token.into()),
            ..AdminConfig::default()
        };
        assert!(with("s3cret-TOKEN_1").validate(addr("0.0.0.0:0")).is_ok());
        for bad in ["", "two words", "tab\t", "é"] {
            assert!(with(bad).validate(addr("127.0.0.1:0")).is_err(), "{bad:?}");
        }
        let zero_body = AdminConfig {
            api_max_body_size: 0,
            ..AdminConfig::default()
        };
        assert!(zero_body.validate(addr("127.0.0.1:0")).is_err());
        let zero_batch = AdminConfig {
            api_max_batch: 0,
            ..AdminConfig::default()
        };
        assert!(zero_batch.validate(addr("127.0.0.1:0")).is_err());
    }

    #[test]
    fn clap_defaults_match_default() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            admin: AdminConfig,
        }
        let parsed = Cli::try_parse_from(["gateway"]).unwrap().admin;
        let default = AdminConfig::default();
        assert_eq!(parsed.api_max_body_size, default.api_max_body_size);
        assert_eq!(parsed.api_max_batch, default.api_max_batch);
        if std::env::var_os("GATEWAY_API_TOKEN").is_none() {
            assert!(parsed.api_token.is_none());
        }
    }

    #[test]
    fn debug_hides_the_token() {
        let config = AdminConfig {
            api_token: Some("s3cret".into()),
            ..AdminConfig::default()
        };
        let text = format!("{config:?}");
        assert!(!text.contains("s3cret"), "{text}");
    }

    #[test]
    fn bearer_tokens() {
        let headers = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            headers
        };
        assert_eq!(bearer_token(&headers("Bearer abc")), Ok("abc"));
        assert_eq!(bearer_token(&headers("bearer  abc ")), Ok("abc"));
        assert!(bearer_token(&headers("Basic abc")).is_err());
        assert!(bearer_token(&headers("Bearer")).is_err());
        assert!(bearer_token(&HeaderMap::new()).is_err());
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
        assert!(!constant_time_eq(b"", b"a"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn content_types() {
        let with = |value: &str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_str(value).unwrap());
            check_content_type(&headers)
        };
        assert!(with("application/json").is_ok());
        assert!(with("Application/JSON; charset=utf-8").is_ok());
        assert!(with("application/vnd.api+json").is_ok());
        for bad in ["text/plain", "application/jsonx", "json", ""] {
            let err = with(bad).unwrap_err();
            assert_eq!(err.code, "unsupported_media_type", "{bad:?}");
            assert_eq!(err.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        }
        assert!(check_content_type(&HeaderMap::new()).is_err());
    }

    fn limits() -> PublishLimits {
        PublishLimits {
            parse: ParseLimits::default(),
            max_message_size: 8,
            max_batch: 3,
        }
    }

    fn error(body: &str) -> (&'static str, Option<usize>) {
        let err = parse_body(body, &limits()).unwrap_err();
        (err.code, err.index)
    }

    #[test]
    fn bodies() {
        let one = parse_body(r#" {"group_id":12,"message":{"a": 1}} "#, &limits()).unwrap();
        assert_eq!(one.len(), 1);
        assert_eq!(
            (one[0].group_id.as_str(), one[0].message.as_ref()),
            ("12", r#"{"a":1}"#)
        );
        let batch = parse_body(
            "\n[{\"group_id\":\"a\",\"message\":\"x\"}, {\"group_id\":1,\"message\":null}]",
            &limits(),
        )
        .unwrap();
        let got: Vec<_> = batch
            .iter()
            .map(|p| (p.group_id.as_str(), p.message.as_ref()))
            .collect();
        assert_eq!(got, [("a", "x"), ("1", "null")]);
        assert!(parse_body("[]", &limits()).unwrap().is_empty());
    }

    #[test]
    fn bad_bodies() {
        assert_eq!(error(""), ("invalid_json", None));
        assert_eq!(error("{"), ("invalid_json", None));
        assert_eq!(error("[{}"), ("invalid_json", None));
        assert_eq!(error("12x"), ("invalid_json", None));
        assert_eq!(error(r#""text" garbage"#), ("invalid_json", None));
        assert_eq!(error(r#""text""#), ("not_an_object", None));
        assert_eq!(error("12"), ("not_an_object", None));
        assert_eq!(error("1e400"), ("not_an_object", None));
        assert_eq!(error(r#"{"message":"m"}"#), ("missing_field", None));
        assert_eq!(error(r#"{"group_id":"g"}"#), ("missing_field", None));
        assert_eq!(
            error(r#"{"group_id":"","message":"m"}"#),
            ("invalid_group_id", None)
        );
        assert_eq!(
            error(r#"{"group_id":"g","message":"123456789"}"#),
            ("message_too_large", None)
        );
        assert_eq!(
            error(r#"{"group_id":"g","group_id":"g","message":"m"}"#),
            ("duplicate_field", None)
        );
        assert_eq!(
            error(r#"{"group_id":"g","message":"\ud800"}"#),
            ("invalid_field", None)
        );
        let ok = r#"{"group_id":"g","message":"m"}"#;
        assert_eq!(
            error(&format!("[{ok},{ok},{ok},{ok}]")),
            ("batch_too_large", None)
        );
        assert_eq!(error(&format!("[{ok},{ok},1]")), ("not_an_object", Some(2)));
        assert_eq!(
            error(&format!(r#"[{ok},{{"group_id":true,"message":"m"}}]"#)),
            ("invalid_group_id", Some(1))
        );
        assert_eq!(
            error(&format!(
                r#"[{{"group_id":"g","message":[1,2,3,4,5]}},{ok}]"#
            )),
            ("message_too_large", Some(0))
        );
    }
}
