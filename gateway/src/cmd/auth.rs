//! `{"cmd":"auth","token":T}`: replace the connection's rights with what join token T grants.
//! Without `--require-join-token` tokens are not checked, and the command only succeeds.

use protocol::client::ErrorCode;
use protocol::CommandError;

use super::{Answered, CommandResult, Session};
use crate::edge::join_token::Access;

pub(super) fn apply(session: &mut Session, token: &str) -> CommandResult {
    let Some(tokens) = &session.state.security.join_tokens else {
        return Ok(Answered::Ack);
    };
    session.access = Access::from_token(tokens, token);
    match &session.access {
        Access::Granted(grants) => {
            tracing::debug!(subject = grants.subject(), "join token accepted");
            Ok(Answered::Ack)
        }
        Access::Refused(reason) => Err(CommandError::new(
            ErrorCode::Unauthorized,
            format!("join token refused: {reason}"),
        )),
        Access::Open | Access::NoToken => Ok(Answered::Ack),
    }
}
