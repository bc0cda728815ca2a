//! `{"cmd":"send_to_group","group_id":G,"message":M}`: deliver M to every member of G on every
//! gateway (allowed by the join token), but those in the optional `"exclude"` list of client
//! ids. The message goes out as the raw text of M, as in the seed; when M is a JSON string
//! without escapes, it is a slice of the received frame (no copy).

use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;

use protocol::client::GroupName;
use protocol::cluster::ClientId;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{message_payload, Answered, CommandResult, Session};
use crate::edge::join_token::Action;

pub(super) async fn apply(
    session: &mut Session,
    frame: &Utf8Bytes,
    group: GroupName<'_>,
    message: Cow<'_, str>,
    exclude: Vec<ClientId>,
) -> CommandResult {
    session.access.check(Action::Send, group.as_str())?;
    session.state.stats.sends.fetch_add(1, Relaxed);
    let payload = message_payload(frame, message);
    let hub = session.state.local.hub();
    if exclude.is_empty() {
        hub.publish(&group, &payload).await;
    } else if hub.history_policy(group.as_str()).is_some() {
        return Err(protocol::CommandError::new(
            protocol::ErrorCode::InvalidField,
            "`exclude` is not supported on a group with history (--history)",
        ));
    } else {
        hub.publish_excluding(&group, &payload, exclude).await;
    }
    Ok(Answered::Ack)
}
