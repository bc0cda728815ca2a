//! `{"cmd":"add_group","group_id":G}`: join G (allowed by the join token, within
//! `--max-groups-per-connection`, and within the process's `--max-groups`). Joining a group
//! twice is a no-op. With `"presence":true` the connection also receives G's join and leave
//! events (allowed by the token's `presence` claim, or `--client-member-lists` without tokens);
//! joining again changes only that.

use protocol::client::{ErrorCode, GroupName};
use protocol::CommandError;

use super::{Answered, CommandResult, Session};
use crate::edge::join_token::Action;
use crate::fanout::local::JoinError;

pub(super) fn apply(session: &mut Session, group: GroupName<'_>, presence: bool) -> CommandResult {
    session.access.check(Action::Join, group.as_str())?;
    if presence {
        super::members::check_presence(session, group.as_str())?;
    }
    let group = group.to_group_id();
    session
        .state
        .local
        .join(&session.client, &group, presence)
        .map_err(|e| match e {
            JoinError::PerConnection(_) | JoinError::Process(_) => {
                CommandError::new(ErrorCode::TooManyGroups, e.to_string())
            }
        })?;
    Ok(Answered::Ack)
}
