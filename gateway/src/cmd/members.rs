//! `{"cmd":"members","group_id":G,"limit":N,"cursor":C}`: a page of G's members on every
//! gateway, `{client_id, uid}` in client id order, with the cursor of the next page (null on the
//! last) and which gateways answered. Allowed by the token's `presence` claim; without tokens
//! by `--client-member-lists`. Gathered while the connection goes on writing.

use protocol::client::{ErrorCode, GroupName};
use protocol::cluster::{ClientId, Request};
use protocol::{CommandError, ReqId};
use serde::Serialize;

use super::{with_req_id, Answered, CommandResult, Session};
use crate::cluster::query::{merge_members, MembersPage, NodesAnswered, Scope};
use crate::edge::join_token::Action;

#[derive(Serialize)]
struct MembersReply {
    cmd: &'static str,
    group_id: String,
    #[serde(flatten)]
    page: MembersPage,
    nodes: NodesAnswered,
}

/// Whether the connection may see `group`'s members (a member list, presence events).
pub(super) fn check_presence(session: &Session, group: &str) -> Result<(), CommandError<'static>> {
    if session.access.is_open() {
        if session.state.config.client_member_lists {
            return Ok(());
        }
        return Err(CommandError::new(
            ErrorCode::Forbidden,
            "this gateway does not let clients list members or watch presence \
             (--client-member-lists false)",
        ));
    }
    session.access.check(Action::Presence, group)
}

pub(super) fn apply(
    session: &mut Session,
    group: GroupName<'_>,
    limit: u32,
    cursor: Option<ClientId>,
    req_id: Option<ReqId<'_>>,
) -> CommandResult {
    check_presence(session, group.as_str())?;
    let group = group.as_str().to_owned();
    let req_id = req_id.map(|r| r.as_json().to_owned());
    let hub = session.state.local.hub().clone();
    Ok(Answered::Later(Box::pin(async move {
        let request = Request::Members {
            group: group.clone(),
            after: cursor,
            limit,
        };
        let gathered = hub.gather(request, Scope::All).await;
        let reply = MembersReply {
            cmd: "members",
            page: merge_members(gathered.replies, limit as usize),
            group_id: group,
            nodes: gathered.nodes,
        };
        with_req_id(&reply, req_id.as_deref())
    })))
}
