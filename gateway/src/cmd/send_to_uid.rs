//! `{"cmd":"send_to_uid","uid":U,"message":M}` (`uid` may be an array): deliver M to every
//! connection of those uids, on whichever gateways hold them (allowed by the token's
//! `send_to_uid` claim, for each uid). Only the gateways holding a uid receive its messages.

use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;

use protocol::cluster::Uid;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{message_payload, Answered, CommandResult, Session};
use crate::edge::join_token::Right;

pub(super) async fn apply(
    session: &mut Session,
    frame: &Utf8Bytes,
    uids: Vec<Uid>,
    message: Cow<'_, str>,
) -> CommandResult {
    for uid in &uids {
        session.access.check_right(Right::SendToUid(uid.as_str()))?;
    }
    session.state.stats.sends.fetch_add(1, Relaxed);
    let payload = message_payload(frame, message);
    let hub = session.state.local.hub();
    for uid in &uids {
        hub.send_to_uid(uid, &payload).await;
    }
    Ok(Answered::Ack)
}
