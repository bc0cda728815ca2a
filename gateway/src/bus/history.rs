//! What a carrier offers for groups with history (`--history`): it stores each message of such
//! a group where the history lives, with the group's next offset, and brings it to every
//! gateway subscribed to the group (the publishing one too) as a positioned message
//! ([`Payload::Positioned`](super::Payload)); and it reads or removes a group's history.
//!
//! Offsets and epochs are assigned by the store, never by a gateway, so that every gateway
//! sees the same positions ([`protocol::history`]). Reads are rare (a recovering client, a
//! hole in the offsets a gateway repairs, the admin API): they are futures, not on the per
//! message path.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use protocol::history::{Epoch, Position};
use protocol::Text;

/// How much history a group keeps: its last `size` messages, each for at most `ttl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryPolicy {
    pub size: u32,
    pub ttl: Duration,
}

impl HistoryPolicy {
    /// As the broker link carries it.
    pub fn to_link(self) -> protocol::link::HistoryOptions {
        protocol::link::HistoryOptions {
            size: self.size,
            ttl_ms: u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX),
        }
    }
}

/// Which messages of a group's history to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryQuery {
    /// Only messages after this offset (`None`: from the oldest kept; with `reverse`, from the
    /// newest).
    pub since: Option<u64>,
    /// At most this many (0: none, only the group's position).
    pub limit: usize,
    /// Newest first.
    pub reverse: bool,
}

impl HistoryQuery {
    /// Only the group's epoch and last offset.
    pub const POSITION: HistoryQuery = HistoryQuery {
        since: None,
        limit: 0,
        reverse: false,
    };
}

/// A read of a group's history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryPage {
    pub epoch: Epoch,
    /// The group's last offset (0: none yet in this epoch).
    pub top: u64,
    /// The messages asked for, each with its offset, in the order asked.
    pub messages: Vec<(u64, Text)>,
}

impl HistoryPage {
    /// The group's current position (its last offset and epoch).
    pub fn position(&self) -> Position {
        Position {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }
}

/// Why a history request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// The store cannot be reached now (the link is down, the engine did not answer in time).
    #[error("history store unavailable: {0}")]
    Unavailable(String),
    /// The store answered with an error.
    #[error("history store error: {0}")]
    Store(String),
    /// This carrier keeps no history.
    #[error("the {0} carrier keeps no history")]
    NotSupported(&'static str),
}

/// What a history read or removal returns, once answered.
pub type HistoryFuture<T> = Pin<Box<dyn Future<Output = Result<T, HistoryError>> + Send>>;

/// A future that fails at once.
pub fn failed<T: Send + 'static>(error: HistoryError) -> HistoryFuture<T> {
    Box::pin(std::future::ready(Err(error)))
}

/// A broker's `HistoryRequest` for `group`.
pub fn link_request(
    id: u64,
    group: &[u8],
    policy: Option<HistoryPolicy>,
    query: HistoryQuery,
    remove: bool,
) -> protocol::link::HistoryRequest {
    protocol::link::HistoryRequest {
        id,
        channel: bytes::Bytes::copy_from_slice(group),
        options: policy.map(HistoryPolicy::to_link),
        since: query.since,
        limit: u32::try_from(query.limit).unwrap_or(u32::MAX),
        reverse: query.reverse,
        remove,
    }
}

/// A broker's `HistoryReply` as a page, checked: a message that is not UTF-8 or an epoch
/// that is not one is the broker's error.
pub fn page_from_link(reply: protocol::link::HistoryReply) -> Result<HistoryPage, HistoryError> {
    if !reply.error.is_empty() {
        return Err(HistoryError::Store(reply.error));
    }
    let epoch = Epoch::new(&reply.epoch)
        .map_err(|_| HistoryError::Store(format!("invalid epoch {:?}", reply.epoch)))?;
    if reply.offsets.len() != reply.payloads.len() {
        return Err(HistoryError::Store(
            "history reply with as many offsets as messages".into(),
        ));
    }
    let mut messages = Vec::with_capacity(reply.offsets.len());
    for (offset, payload) in reply.offsets.into_iter().zip(reply.payloads) {
        let text = Text::new(payload)
            .map_err(|_| HistoryError::Store("a history message is not UTF-8".into()))?;
        messages.push((offset, text));
    }
    Ok(HistoryPage {
        epoch,
        top: reply.top,
        messages,
    })
}

/// A broker's `HistoryReply` to a removal.
pub fn removed_from_link(reply: protocol::link::HistoryReply) -> Result<(), HistoryError> {
    if reply.error.is_empty() {
        Ok(())
    } else {
        Err(HistoryError::Store(reply.error))
    }
}
