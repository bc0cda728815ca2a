//! The admin API of the cluster-wide API, for backends: sends to everyone, a uid or a client;
//! orders (bind or unbind a uid, join or leave a group, empty a group, close connections) by
//! client id or by uid; lookups (a client, a uid, the groups, a group's count and members, the
//! live gateways). docs/protocol.md and docs/openapi.json describe every endpoint.
//!
//! Everything that asks the other gateways answers within `--cluster-query-timeout` with
//! `"nodes":{"answered":[...],"missing":[...]}`: a slow or dead gateway makes the answer
//! partial, never late or an error.

use std::borrow::Cow;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::Json;
use protocol::cluster::{ClientId, NodeId, Op, Reply, Request as Ask, Target, Uid};
use protocol::{GroupName, Text};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::{check_content_type, ApiError, Published, Shared};
use crate::cluster::nodes::NodeView;
use crate::cluster::query::{
    merge_applied, merge_client, merge_count, merge_groups_page, merge_members, merge_totals,
    merge_uid, Answer, Applied, ClientLookup, GroupCount, GroupsPage, InGroup, MembersPage, Scope,
    UidLookup,
};

/// Default page size of the listing endpoints.
pub const DEFAULT_PAGE: u32 = 100;
/// Default close code of `close_client`: 4002 ("closed by the application's backend").
pub const DEFAULT_CLOSE_CODE: u16 = 4002;

pub(super) fn bad(code: &'static str, reason: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, code, reason)
}

/// Reads a JSON body of type `T` (after the content type and size checks of every endpoint).
pub(super) async fn read_json<T: for<'de> Deserialize<'de>>(
    state: &Shared,
    request: Request,
) -> Result<T, ApiError> {
    check_content_type(request.headers())?;
    let max = state.config.api_max_body_size;
    let body = Bytes::from_request(request, state).await.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("the body is larger than {max} bytes"),
            )
        } else {
            bad("bad_request", e.body_text())
        }
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        let code = if e.is_data() {
            "invalid_field"
        } else {
            "invalid_json"
        };
        bad(code, e.to_string())
    })
}

/// A body's `message`: a string is sent as its text, any other JSON value as its compact text,
/// keys in their order and numbers as written (as `send_to_group` and `/api/publish` do).
fn message_text(state: &Shared, message: Option<&RawValue>) -> Result<Text, ApiError> {
    let message = message.ok_or_else(|| bad("missing_field", "`message` is required"))?;
    let text = protocol::client::message_text(message)
        .map_err(|e| bad(e.code.as_str(), e.reason))?
        .into_owned();
    let max = state.gateway.config().max_message_size;
    if text.len() > max {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
            format!(
                "the message is {} bytes, more than the limit of {max}",
                text.len()
            ),
        ));
    }
    Ok(Text::from(text))
}

/// A group id given in a path.
pub(super) fn group_id<'a>(state: &Shared, group: &'a str) -> Result<GroupName<'a>, ApiError> {
    GroupName::parse_client(group, state.gateway.config().max_group_id_len)
        .map_err(|e| bad("invalid_group_id", e.to_string()))
}

/// A body's `group_id`: a string or an integer, as in commands.
pub(super) fn group_field(state: &Shared, group: Option<&RawValue>) -> Result<String, ApiError> {
    let group = group.ok_or_else(|| bad("missing_field", "`group_id` is required"))?;
    protocol::client::parse_group_id(group, state.gateway.config().max_group_id_len)
        .map(|name| name.as_str().to_owned())
        .map_err(|e| bad("invalid_group_id", e.to_string()))
}

/// A path parameter, or the JSON error of one that does not decode.
pub(super) fn path_param(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(value)| value)
        .map_err(|e| bad("invalid_field", e.body_text()))
}

/// A uid given as a JSON string or integer.
fn uid_of(state: &Shared, value: &Value) -> Result<Uid, ApiError> {
    let text: Cow<'_, str> = match value {
        Value::String(s) => Cow::Borrowed(s),
        Value::Number(n) if n.is_i64() || n.is_u64() => Cow::Owned(n.to_string()),
        _ => return Err(bad("invalid_field", "`uid` must be a string or an integer")),
    };
    Uid::new(&text, state.gateway.config().max_uid_len)
        .map_err(|e| bad("invalid_field", format!("`uid`: {e}")))
}

fn client_id(text: &str) -> Result<ClientId, ApiError> {
    text.parse()
        .map_err(|e: protocol::cluster::BadId| bad("invalid_field", format!("`client_id`: {e}")))
}

fn check_targets(state: &Shared, n: usize, what: &str) -> Result<(), ApiError> {
    let max = state.gateway.config().max_targets;
    if n > max {
        return Err(bad(
            "invalid_field",
            format!("`{what}` holds at most {max} entries (--max-targets)"),
        ));
    }
    Ok(())
}

#[derive(Deserialize)]
pub(super) struct SendToAll {
    #[serde(default)]
    message: Option<Box<RawValue>>,
    #[serde(default)]
    exclude: Vec<String>,
}

fn exclude_list(state: &Shared, exclude: &[String]) -> Result<Vec<ClientId>, ApiError> {
    check_targets(state, exclude.len(), "exclude")?;
    exclude.iter().map(|id| client_id(id)).collect()
}

/// `POST /api/send_to_all`: `{"message":M,"exclude":[client ids]}`.
pub(super) async fn send_to_all(
    State(state): State<Shared>,
    request: Request,
) -> Result<Json<Published>, ApiError> {
    let body: SendToAll = read_json(&state, request).await?;
    let payload = message_text(&state, body.message.as_deref())?;
    let exclude = exclude_list(&state, &body.exclude)?;
    state.gateway.hub().send_to_all(&payload, exclude).await;
    Ok(Json(Published { published: 1 }))
}

#[derive(Deserialize)]
pub(super) struct SendToUid {
    #[serde(default)]
    uid: Value,
    #[serde(default)]
    message: Option<Box<RawValue>>,
}

/// `POST /api/send_to_uid`: `{"uid":U or [U...],"message":M}`.
pub(super) async fn send_to_uid(
    State(state): State<Shared>,
    request: Request,
) -> Result<Json<Published>, ApiError> {
    let body: SendToUid = read_json(&state, request).await?;
    let uids: Vec<Uid> = match &body.uid {
        Value::Null => return Err(bad("missing_field", "`uid` is required")),
        Value::Array(items) => {
            if items.is_empty() {
                return Err(bad("invalid_field", "`uid` must not be an empty array"));
            }
            check_targets(&state, items.len(), "uid")?;
            let mut uids: Vec<Uid> = Vec::with_capacity(items.len());
            for item in items {
                let uid = uid_of(&state, item)?;
                if !uids.contains(&uid) {
                    uids.push(uid);
                }
            }
            uids
        }
        one => vec![uid_of(&state, one)?],
    };
    let payload = message_text(&state, body.message.as_deref())?;
    let hub = state.gateway.hub();
    for uid in &uids {
        hub.send_to_uid(uid, &payload).await;
    }
    Ok(Json(Published {
        published: uids.len(),
    }))
}

#[derive(Deserialize)]
pub(super) struct SendToClient {
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    message: Option<Box<RawValue>>,
}

/// `POST /api/send_to_client`: `{"client_id":C,"message":M}`.
pub(super) async fn send_to_client(
    State(state): State<Shared>,
    request: Request,
) -> Result<Json<Published>, ApiError> {
    let body: SendToClient = read_json(&state, request).await?;
    let id = client_id(
        body.client_id
            .as_deref()
            .ok_or_else(|| bad("missing_field", "`client_id` is required"))?,
    )?;
    let payload = message_text(&state, body.message.as_deref())?;
    state.gateway.hub().send_to_client(id, &payload).await;
    Ok(Json(Published { published: 1 }))
}

/// Which connections an order is for: `client_id` or `uid` (exactly one).
#[derive(Deserialize)]
pub(super) struct Order {
    #[serde(default)]
    client_id: Option<String>,
    #[serde(default)]
    uid: Value,
    #[serde(default)]
    group_id: Option<Box<RawValue>>,
    #[serde(default)]
    presence: bool,
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

fn target_of(state: &Shared, order: &Order) -> Result<(Target, Scope), ApiError> {
    match (&order.client_id, &order.uid) {
        (Some(id), Value::Null) => {
            let id = client_id(id)?;
            Ok((Target::Client(id), Scope::Node(id.node)))
        }
        (None, uid) if !uid.is_null() => Ok((Target::Uid(uid_of(state, uid)?), Scope::All)),
        (Some(_), _) => Err(bad("invalid_field", "give `client_id` or `uid`, not both")),
        (None, _) => Err(bad("missing_field", "`client_id` or `uid` is required")),
    }
}

/// Asks `scope` and answers what `merge` makes of the replies, with the gateways that answered.
async fn ask<T>(
    state: &Shared,
    request: Ask,
    scope: Scope,
    merge: impl FnOnce(Vec<(NodeId, Reply)>) -> T,
) -> Json<Answer<T>> {
    Json(state.gateway.hub().ask(request, scope, merge).await)
}

/// The answer to an order: what it did, and which gateways answered.
type OrderDone = Answer<Applied>;

async fn run_order(state: &Shared, target: Target, scope: Scope, op: Op) -> Json<OrderDone> {
    ask(state, Ask::Apply { target, op }, scope, |r| {
        merge_applied(&r)
    })
    .await
}

/// `POST /api/bind_uid`: `{"client_id":C,"uid":U}`.
pub(super) async fn bind_uid(
    State(state): State<Shared>,
    request: Request,
) -> Result<Json<OrderDone>, ApiError> {
    let order: Order = read_json(&state, request).await?;
    let id = client_id(
        order
            .client_id
            .as_deref()
            .ok_or_else(|| bad("missing_field", "`client_id` is required"))?,
    )?;
    if order.uid.is_null() {
        return Err(bad("missing_field", "`uid` is required"));
    }
    let uid = uid_of(&state, &order.uid)?;
    Ok(run_order(
        &state,
        Target::Client(id),
        Scope::Node(id.node),
        Op::BindUid { uid },
    )
    .await)
}

/// `POST /api/unbind_uid`: `{"client_id":C}` or `{"uid":U}` (all its connections).
pub(super) async fn unbind_uid(
    State(state): State<Shared>,
    request: Request,
) -> Result<Json<OrderDone>, ApiError> {
    let order: Order = read_json(&state, request).await?;
    let (target, scope) = target_of(&state, &order)?;
    Ok(run_order(&state, target, scope, Op::UnbindUid).await)
}

/// `POST /api/join_group`: `{"client_id":C or "uid":U,"group_id":G,"presence":false}`.
pub(super) async fn join_group(
    State(state): State<Shared>,
    request: Request,
) -> Result<Json<OrderDone>, ApiError> {
    let order: Order = read_json(&state, request).await?;
    let (target, scope) = target_of(&state, &order)?;
    let group = group_field(&state, order.group_id.as_deref())?;
    let op = Op::JoinGroup {
        group,
        presence: order.presence,
    };
    Ok(run_order(&state, target, scope, op).await)
}

/// `POST /api/leave_group`: `{"client_id":C or "uid":U,"group_id":G}`.
pub(super) async fn leave_group(
    State(state): State<Shared>,
    request: Request,
) -> Result<Json<OrderDone>, ApiError> {
    let order: Order = read_json(&state, request).await?;
    let (target, scope) = target_of(&state, &order)?;
    let group = group_field(&state, order.group_id.as_deref())?;
    Ok(run_order(&state, target, scope, Op::LeaveGroup { group }).await)
}

/// `POST /api/ungroup`: `{"group_id":G}`: every member, on every gateway, leaves G.
pub(super) async fn ungroup(
    State(state): State<Shared>,
    request: Request,
) -> Result<Json<OrderDone>, ApiError> {
    let order: Order = read_json(&state, request).await?;
    let group = group_field(&state, order.group_id.as_deref())?;
    Ok(ask(&state, Ask::Ungroup { group }, Scope::All, |r| {
        merge_applied(&r)
    })
    .await)
}

/// `POST /api/close_client`: `{"client_id":C or "uid":U,"code":4002,"reason":"..."}`.
pub(super) async fn close_client(
    State(state): State<Shared>,
    request: Request,
) -> Result<Json<OrderDone>, ApiError> {
    let order: Order = read_json(&state, request).await?;
    let (target, scope) = target_of(&state, &order)?;
    let code = order.code.unwrap_or(DEFAULT_CLOSE_CODE);
    if !(code == 1000 || (3000..=4999).contains(&code)) {
        return Err(bad(
            "invalid_field",
            "`code` must be 1000 or between 3000 and 4999",
        ));
    }
    let reason = order.reason.clone().unwrap_or_else(|| "closed".into());
    if reason.len() > 123 {
        return Err(bad(
            "invalid_field",
            "`reason` is at most 123 bytes (a WebSocket close frame's room)",
        ));
    }
    Ok(run_order(&state, target, scope, Op::Close { code, reason }).await)
}

/// `GET /api/clients/{client_id}`.
pub(super) async fn client(
    State(state): State<Shared>,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<Answer<ClientLookup>>, ApiError> {
    let id = client_id(&path_param(id)?)?;
    let request = Ask::Client { client: id };
    Ok(ask(&state, request, Scope::Node(id.node), |r| {
        merge_client(id, &r)
    })
    .await)
}

/// `GET /api/uids/{uid}`.
pub(super) async fn uid(
    State(state): State<Shared>,
    uid: Result<Path<String>, PathRejection>,
) -> Result<Json<Answer<UidLookup>>, ApiError> {
    let uid = uid_of(&state, &Value::String(path_param(uid)?))?;
    let request = Ask::Uid { uid: uid.clone() };
    Ok(ask(&state, request, Scope::All, |r| merge_uid(uid, &r)).await)
}

/// `?limit=N&cursor=C` of the listing endpoints.
#[derive(Deserialize)]
pub(super) struct Page {
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    cursor: Option<String>,
}

fn page_limit(state: &Shared, page: &Page) -> Result<u32, ApiError> {
    let max = state.gateway.config().max_page_size;
    match page.limit.unwrap_or(DEFAULT_PAGE.min(max)) {
        0 => Err(bad("invalid_field", "`limit` must be at least 1")),
        n if n > max => Err(bad(
            "invalid_field",
            format!("`limit` is at most {max} (--max-page-size)"),
        )),
        n => Ok(n),
    }
}

/// `GET /api/groups?limit=&cursor=`: groups with members anywhere, in order, with their
/// connections.
pub(super) async fn groups(
    State(state): State<Shared>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Answer<GroupsPage>>, ApiError> {
    let Query(page) = page.map_err(|e| bad("invalid_field", e.body_text()))?;
    let limit = page_limit(&state, &page)?;
    let request = Ask::Groups {
        after: page.cursor,
        limit,
    };
    Ok(ask(&state, request, Scope::All, |r| {
        merge_groups_page(r, limit as usize)
    })
    .await)
}

/// `GET /api/groups/{group_id}`: its connections and distinct uids on every gateway.
pub(super) async fn group(
    State(state): State<Shared>,
    group: Result<Path<String>, PathRejection>,
) -> Result<Json<Answer<InGroup<GroupCount>>>, ApiError> {
    let group = path_param(group)?;
    let group_id = group_id(&state, &group)?.as_str().to_owned();
    let request = Ask::Count {
        group: group_id.clone(),
    };
    Ok(ask(&state, request, Scope::All, |r| InGroup {
        group_id,
        result: merge_count(&r),
    })
    .await)
}

/// `GET /api/groups/{group_id}/members?limit=&cursor=`.
pub(super) async fn members(
    State(state): State<Shared>,
    group: Result<Path<String>, PathRejection>,
    page: Result<Query<Page>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Answer<InGroup<MembersPage>>>, ApiError> {
    let group = path_param(group)?;
    let Query(page) = page.map_err(|e| bad("invalid_field", e.body_text()))?;
    let group_id = group_id(&state, &group)?.as_str().to_owned();
    let limit = page_limit(&state, &page)?;
    let after = page.cursor.as_deref().map(client_id).transpose()?;
    let request = Ask::Members {
        group: group_id.clone(),
        after,
        limit,
    };
    Ok(ask(&state, request, Scope::All, |r| InGroup {
        group_id,
        result: merge_members(r, limit as usize),
    })
    .await)
}

/// `GET /api/nodes`: the live gateways, this one first.
#[derive(Serialize)]
pub(super) struct NodesAnswer {
    nodes: Vec<NodeView>,
}

pub(super) async fn nodes(State(state): State<Shared>) -> Json<NodesAnswer> {
    let cluster = state.gateway.hub().cluster();
    Json(NodesAnswer {
        nodes: cluster
            .nodes()
            .views(cluster.node_id(), cluster.settings().node_timeout),
    })
}

/// The cluster's totals in `/api/stats`.
pub(super) async fn cluster_totals(state: &Shared) -> Value {
    let Json(totals) = ask(state, Ask::Stats, Scope::All, |r| merge_totals(&r)).await;
    serde_json::to_value(totals).unwrap_or(Value::Null)
}
