//! `{"cmd":"leave_group","group_id":G}`: leave G. Leaving a group one is not in is a no-op.

use protocol::client::GroupName;

use super::{Answered, CommandResult, Session};

pub(super) fn apply(session: &mut Session, group: GroupName<'_>) -> CommandResult {
    session.state.local.leave(&session.client, group.as_str());
    Ok(Answered::Ack)
}
