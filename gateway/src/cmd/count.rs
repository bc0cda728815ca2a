//! `{"cmd":"count","group_id":G}`: how many connections (and distinct uids) G has on every
//! gateway, and which gateways answered (allowed on the groups of the token's `groups` and
//! `presence` claims; open without tokens). Each gateway counts its own members without
//! listing them. The answer is gathered while the connection goes on writing.

use protocol::client::GroupName;
use protocol::cluster::Request;
use protocol::ReqId;

use super::{cluster_reply, CommandResult, Session};
use crate::cluster::query::{merge_count, InGroup};
use crate::edge::join_token::Action;

pub(super) fn apply(
    session: &mut Session,
    group: GroupName<'_>,
    req_id: Option<ReqId<'_>>,
) -> CommandResult {
    session.access.check(Action::Count, group.as_str())?;
    let group_id = group.as_str().to_owned();
    let request = Request::Count {
        group: group_id.clone(),
    };
    Ok(cluster_reply(session, "count", request, req_id, |r| {
        InGroup {
            group_id,
            result: merge_count(&r),
        }
    }))
}
