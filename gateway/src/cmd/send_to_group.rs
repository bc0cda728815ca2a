//! `{"cmd":"send_to_group","group_id":G,"message":M}`: deliver M to every member of G on every
//! gateway (allowed by the join token). The message goes out as the raw text of M, as in the
//! seed; when M is a JSON string without escapes, it is a slice of the received frame (no copy).

use std::borrow::Cow;
use std::sync::atomic::Ordering::Relaxed;

use protocol::client::GroupName;
use protocol::Text;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{CommandResult, Session};
use crate::edge::join_token::Action;

pub(super) async fn apply(
    session: &mut Session,
    frame: &Utf8Bytes,
    group: GroupName<'_>,
    message: Cow<'_, str>,
) -> CommandResult {
    session.access.check(Action::Send, group.as_str())?;
    session.state.stats.sends.fetch_add(1, Relaxed);
    let payload = match message {
        Cow::Borrowed(slice) => share_slice(frame, slice),
        Cow::Owned(owned) => Utf8Bytes::from(owned),
    };
    let payload = Text::from_utf8_source(payload);
    session.state.local.hub().publish(&group, &payload).await;
    Ok(())
}

/// The message text as a slice of the received frame's buffer: no copy.
fn share_slice(frame: &Utf8Bytes, slice: &str) -> Utf8Bytes {
    let bytes: &bytes::Bytes = frame.as_ref();
    Utf8Bytes::try_from(bytes.slice_ref(slice.as_bytes()))
        .unwrap_or_else(|_| Utf8Bytes::from(slice))
}
