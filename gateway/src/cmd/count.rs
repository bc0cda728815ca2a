//! `{"cmd":"count","group_id":G}`: how many connections (and distinct uids) G has on every
//! gateway, and which gateways answered (allowed on the groups of the token's `groups` and
//! `presence` claims; open without tokens). Each gateway counts its own members without
//! listing them. The answer is gathered while the connection goes on writing ([`Answered::Later`]).

use protocol::client::GroupName;
use protocol::cluster::Request;
use protocol::ReqId;
use serde::Serialize;

use super::{with_req_id, Answered, CommandResult, Session};
use crate::cluster::query::{merge_count, NodesAnswered, Scope};
use crate::edge::join_token::Action;

#[derive(Serialize)]
struct CountReply {
    cmd: &'static str,
    group_id: String,
    connections: u64,
    uids: u64,
    uids_exact: bool,
    nodes: NodesAnswered,
}

pub(super) fn apply(
    session: &mut Session,
    group: GroupName<'_>,
    req_id: Option<ReqId<'_>>,
) -> CommandResult {
    session.access.check(Action::Count, group.as_str())?;
    let group = group.as_str().to_owned();
    let req_id = req_id.map(|r| r.as_json().to_owned());
    let hub = session.state.local.hub().clone();
    Ok(Answered::Later(Box::pin(async move {
        let request = Request::Count {
            group: group.clone(),
        };
        let gathered = hub.gather(request, Scope::All).await;
        let count = merge_count(&gathered.replies);
        let reply = CountReply {
            cmd: "count",
            group_id: group,
            connections: count.connections,
            uids: count.uids,
            uids_exact: count.uids_exact,
            nodes: gathered.nodes,
        };
        with_req_id(&reply, req_id.as_deref())
    })))
}
