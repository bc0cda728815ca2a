//! What a carrier checks of every message it receives from other gateways, before the gateway's
//! members see it: the same limits as a client's send. Another gateway (or any process that can
//! reach an unauthenticated broker) may have other limits, or none.

use bytes::Bytes;
use protocol::{GroupName, Text};

/// Messages from other gateways, checked and waiting for this gateway's workers, that a
/// carrier holds at most (per connection). Past it the Redis carrier stops reading its
/// subscriber connection (the backlog stays in Redis); the NATS and embedded carriers drop and
/// count (`slow_consumer`).
pub const INBOX_MESSAGES: usize = 4096;
/// Bytes of message text in such an inbox, at most (one message more may be in it).
pub const INBOX_BYTES: usize = 16 * 1024 * 1024;

/// The gateway's own limits, applied to what arrives from the bus.
#[derive(Debug, Clone, Copy)]
pub struct InboundLimits {
    pub max_group_id_len: usize,
    pub max_message_size: usize,
}

/// Why a message from the bus was dropped (each counted in the bus's status).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Not UTF-8, or a group id this gateway would refuse from a client.
    Invalid,
    /// Larger than `--max-message-size`.
    TooLarge,
}

impl InboundLimits {
    /// The group and text of a message received for `channel`, or why it is dropped.
    pub fn check<'a>(
        &self,
        channel: &'a [u8],
        payload: Bytes,
    ) -> Result<(GroupName<'a>, Text), Rejected> {
        if payload.len() > self.max_message_size {
            return Err(Rejected::TooLarge);
        }
        let group = std::str::from_utf8(channel)
            .ok()
            .and_then(|name| GroupName::parse(name, self.max_group_id_len).ok())
            .ok_or(Rejected::Invalid)?;
        let text = Text::new(payload).map_err(|_| Rejected::Invalid)?;
        Ok((group, text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_limits_apply_to_what_the_bus_brings() {
        let limits = InboundLimits {
            max_group_id_len: 8,
            max_message_size: 4,
        };
        let (group, text) = limits
            .check(b"g", Bytes::from_static(b"abcd"))
            .expect("within the limits");
        assert_eq!((group.as_str(), text.as_str()), ("g", "abcd"));
        assert_eq!(
            limits.check(b"g", Bytes::from_static(b"abcde")).err(),
            Some(Rejected::TooLarge)
        );
        assert_eq!(
            limits.check(b"g", Bytes::from_static(b"\xff")).err(),
            Some(Rejected::Invalid)
        );
        assert_eq!(
            limits.check(b"\xff", Bytes::from_static(b"x")).err(),
            Some(Rejected::Invalid)
        );
        assert_eq!(
            limits.check(b"too-long-id", Bytes::from_static(b"x")).err(),
            Some(Rejected::Invalid)
        );
    }
}
