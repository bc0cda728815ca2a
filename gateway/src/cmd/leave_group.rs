//! `{"cmd":"leave_group","group_id":G}`: leave G. Leaving a group one is not in is a no-op.

use protocol::client::GroupName;

use super::{CommandResult, Session};

pub(super) fn apply(session: &mut Session, group: GroupName<'_>) -> CommandResult {
    if let Some(group) = session.groups.take(group.as_str()) {
        session.state.local.remove_member(&group, session.id);
    }
    Ok(())
}
