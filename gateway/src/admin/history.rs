//! The admin API of groups with history (`--history`): read a group's history, remove it.
//! `POST /api/publish` with `"history":false` (in `super`) sends past it.
//!
//! - `GET /api/history/{group_id}?since=&limit=&reverse=`: the group's epoch, last offset and
//!   up to `limit` messages (at most the group's history size, default 100) after offset
//!   `since`, oldest first (newest first with `reverse=true`).
//! - `POST /api/history_remove` `{"group_id":G}`: the group's history is dropped; its next
//!   message starts a new epoch (positioned members recovering from the old one get
//!   `recovered:false`).

use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, Request, State};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::cluster::{bad, group_field, group_id, path_param, read_json};
use super::{ApiError, Shared};
use crate::bus::{HistoryError, HistoryQuery};

/// Messages of a history read when `limit` is not given (or the group's size, if smaller).
pub const DEFAULT_HISTORY_PAGE: u32 = 100;

#[derive(Deserialize)]
pub(super) struct HistoryParams {
    #[serde(default)]
    since: Option<u64>,
    #[serde(default)]
    limit: Option<u32>,
    #[serde(default)]
    reverse: bool,
}

#[derive(Serialize)]
pub(super) struct HistoryMessage {
    offset: u64,
    message: String,
}

#[derive(Serialize)]
pub(super) struct HistoryAnswer {
    group_id: String,
    epoch: String,
    /// The group's last offset (0: none yet in this epoch).
    offset: u64,
    messages: Vec<HistoryMessage>,
}

#[derive(Serialize)]
pub(super) struct Removed {
    group_id: String,
    removed: bool,
}

fn store_error(e: HistoryError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "history_unavailable",
        e.to_string(),
    )
}

fn no_history(group: &str) -> ApiError {
    bad(
        "no_history",
        format!("group {group:?} keeps no history (--history)"),
    )
}

/// `GET /api/history/{group_id}?since=&limit=&reverse=`.
pub(super) async fn read(
    State(state): State<Shared>,
    group: Result<Path<String>, PathRejection>,
    params: Result<Query<HistoryParams>, QueryRejection>,
) -> Result<Json<HistoryAnswer>, ApiError> {
    let group = path_param(group)?;
    let Query(params) = params.map_err(|e| bad("invalid_field", e.body_text()))?;
    let name = group_id(&state, &group)?;
    let hub = state.gateway.hub();
    let policy = hub
        .history_policy(name.as_str())
        .ok_or_else(|| no_history(name.as_str()))?;
    let limit = match params.limit {
        None => DEFAULT_HISTORY_PAGE.min(policy.size),
        Some(n) if n > policy.size => {
            return Err(bad(
                "invalid_field",
                format!(
                    "`limit` is at most the group's history size, {}",
                    policy.size
                ),
            ))
        }
        Some(n) => n,
    };
    let query = HistoryQuery {
        since: params.since,
        limit: limit as usize,
        reverse: params.reverse,
    };
    let page = hub
        .history(&name, policy, query)
        .await
        .map_err(store_error)?;
    Ok(Json(HistoryAnswer {
        group_id: name.as_str().to_owned(),
        epoch: page.epoch.to_string(),
        offset: page.top,
        messages: page
            .messages
            .into_iter()
            .map(|(offset, text)| HistoryMessage {
                offset,
                message: text.as_str().to_owned(),
            })
            .collect(),
    }))
}

#[derive(Deserialize)]
pub(super) struct RemoveBody {
    #[serde(default)]
    group_id: Option<Box<RawValue>>,
}

/// `POST /api/history_remove` `{"group_id":G}`.
pub(super) async fn remove(
    State(state): State<Shared>,
    request: Request,
) -> Result<Json<Removed>, ApiError> {
    let body: RemoveBody = read_json(&state, request).await?;
    let group = group_field(&state, body.group_id.as_deref())?;
    let name = group_id(&state, &group)?;
    let hub = state.gateway.hub();
    if hub.history_policy(name.as_str()).is_none() {
        return Err(no_history(name.as_str()));
    }
    hub.remove_history(&name).await.map_err(store_error)?;
    tracing::info!(
        group = name.as_str(),
        "history removed through the admin API"
    );
    Ok(Json(Removed {
        group_id: name.as_str().to_owned(),
        removed: true,
    }))
}
