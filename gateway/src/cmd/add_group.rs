//! `{"cmd":"add_group","group_id":G}`: join G (allowed by the join token, within
//! `--max-groups-per-connection`, and within the process's `--max-groups`). Joining a group
//! twice is a no-op. With `"presence":true` the connection also receives G's join and leave
//! events (allowed by the token's `presence` claim, or `--client-member-lists` without tokens);
//! joining again changes only that. With `"positioned":true` (a group with `--history` only)
//! it receives G's messages with their position, and the join is answered with G's position
//! (`joined`) once the store gave it; with `"recover":{...}` what it missed comes first
//! (`crate::history::recovery`).

use protocol::client::{ErrorCode, GroupName};
use protocol::history::Recover;
use protocol::{CommandError, ReqId};

use super::{Answered, CommandResult, Session};
use crate::edge::join_token::Action;
use crate::fanout::local::JoinError;

pub(super) fn apply(
    session: &mut Session,
    group: GroupName<'_>,
    presence: bool,
    positioned: bool,
    recover: Option<Recover>,
    req_id: Option<ReqId<'_>>,
) -> CommandResult {
    session.access.check(Action::Join, group.as_str())?;
    if presence {
        super::members::check_presence(session, group.as_str())?;
    }
    let policy = if positioned {
        let policy = session.state.local.hub().history_policy(group.as_str());
        Some(policy.ok_or_else(|| {
            CommandError::new(
                ErrorCode::InvalidField,
                format!(
                    "group {:?} keeps no history (--history): join it without `positioned`",
                    group.as_str()
                ),
            )
        })?)
    } else {
        None
    };
    let group = group.to_group_id();
    session
        .state
        .local
        .join(&session.client, &group, presence, positioned)
        .map_err(|e| match e {
            JoinError::PerConnection(_) | JoinError::Process(_) => {
                CommandError::new(ErrorCode::TooManyGroups, e.to_string())
            }
        })?;
    let Some(policy) = policy else {
        return Ok(Answered::Ack);
    };
    let join = crate::history::recovery::join(
        session.state.clone(),
        session.client.clone(),
        group,
        policy,
        recover,
        req_id.map(|r| r.as_json().to_owned()),
    );
    Ok(Answered::Later(Box::pin(join)))
}
