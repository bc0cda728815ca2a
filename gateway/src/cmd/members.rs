//! `{"cmd":"members","group_id":G,"limit":N,"cursor":C}`: a page of G's members on every
//! gateway, `{client_id, uid}` in client id order, with the cursor of the next page (null on the
//! last) and which gateways answered. Allowed by the token's `presence` claim; without tokens
//! by `--client-member-lists`. Gathered while the connection goes on writing.

use protocol::client::{ErrorCode, GroupName};
use protocol::cluster::{ClientId, Request};
use protocol::{CommandError, ReqId};

use super::{cluster_reply, CommandResult, Session};
use crate::cluster::query::{merge_members, InGroup};
use crate::edge::join_token::Action;

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
    let group_id = group.as_str().to_owned();
    let request = Request::Members {
        group: group_id.clone(),
        after: cursor,
        limit,
    };
    Ok(cluster_reply(
        session,
        "members",
        request,
        req_id,
        move |r| InGroup {
            group_id,
            result: merge_members(r, limit as usize),
        },
    ))
}
