//! `{"cmd":"add_group","group_id":G}`: join G (allowed by the join token, within
//! `--max-groups-per-connection`, and within the process's `--max-groups`). Joining a group
//! twice is a no-op.

use protocol::client::{ErrorCode, GroupName};
use protocol::CommandError;

use super::{CommandResult, Session};
use crate::edge::join_token::Action;

pub(super) fn apply(session: &mut Session, group: GroupName<'_>) -> CommandResult {
    session.access.check(Action::Join, group.as_str())?;
    if session.groups.contains(group.as_str()) {
        return Ok(());
    }
    let max = session.state.config.max_groups_per_connection;
    if session.groups.len() >= max {
        return Err(CommandError::new(
            ErrorCode::TooManyGroups,
            format!("a connection may be in at most {max} groups"),
        ));
    }
    let group = group.to_group_id();
    session
        .state
        .local
        .add_member(&group, session.id, &session.outbox)
        .map_err(|limit| CommandError::new(ErrorCode::TooManyGroups, limit.to_string()))?;
    session.groups.insert(group);
    Ok(())
}
