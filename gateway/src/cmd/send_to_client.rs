//! `{"cmd":"send_to_client","client_id":C,"message":M}`: deliver M to that one connection,
//! wherever it is (allowed by the token's `send_to_client` claim). Only its gateway receives
//! it; a client id no longer connected receives nothing.

use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;

use protocol::cluster::ClientId;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{message_payload, Answered, CommandResult, Session};
use crate::edge::join_token::Right;

pub(super) async fn apply(
    session: &mut Session,
    frame: &Utf8Bytes,
    client: ClientId,
    message: Cow<'_, str>,
) -> CommandResult {
    session.access.check_right(Right::SendToClient)?;
    session.state.stats.sends.fetch_add(1, Relaxed);
    let payload = message_payload(frame, message);
    session
        .state
        .local
        .hub()
        .send_to_client(client, &payload)
        .await;
    Ok(Answered::Ack)
}
