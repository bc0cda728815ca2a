//! `{"cmd":"bind_uid","uid":U}` and `{"cmd":"unbind_uid"}`: the connection's uid, in open mode
//! only. With join tokens the uid is the token's `sub`, which a client cannot change (backends
//! bind and unbind through the admin API).

use protocol::client::ErrorCode;
use protocol::cluster::Uid;
use protocol::CommandError;

use super::{Answered, CommandResult, Session};

pub(super) fn bind(session: &mut Session, uid: Uid) -> CommandResult {
    check_open(session)?;
    session.state.local.bind_uid(&session.client, Some(uid));
    Ok(Answered::Ack)
}

pub(super) fn unbind(session: &mut Session) -> CommandResult {
    check_open(session)?;
    session.state.local.bind_uid(&session.client, None);
    Ok(Answered::Ack)
}

fn check_open(session: &Session) -> Result<(), CommandError<'static>> {
    if session.access.is_open() {
        return Ok(());
    }
    Err(CommandError::new(
        ErrorCode::Forbidden,
        "with join tokens the uid is the token's `sub`: a client cannot bind one",
    ))
}
