//! `{"cmd":"send_to_all","message":M}`: deliver M to every connection on every gateway but
//! those in the optional `"exclude"` list (allowed by the token's `send_to_all` claim).

use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;

use protocol::cluster::ClientId;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{message_payload, Answered, CommandResult, Session};
use crate::edge::join_token::Right;

pub(super) async fn apply(
    session: &mut Session,
    frame: &Utf8Bytes,
    message: Cow<'_, str>,
    exclude: Vec<ClientId>,
) -> CommandResult {
    session.access.check_right(Right::SendToAll)?;
    session.state.stats.sends.fetch_add(1, Relaxed);
    let payload = message_payload(frame, message);
    session
        .state
        .local
        .hub()
        .send_to_all(&payload, exclude)
        .await;
    Ok(Answered::Ack)
}
