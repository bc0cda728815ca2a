//! What a carrier checks of every message it receives from other gateways, before the gateway's
//! members see it: the same limits as a client's send. Another gateway (or any process that can
//! reach an unauthenticated broker) may have other limits, or none.

use bytes::Bytes;
use protocol::cluster::{topic, ControlFrame};
use protocol::history::Positioned;
use protocol::{GroupName, Text};

use super::Payload;
use crate::config::GatewayConfig;

/// Messages from other gateways, checked and waiting for this gateway's workers, that a
/// carrier holds at most (per connection). Past it the Redis carrier stops reading its
/// subscriber connection (the backlog stays in Redis); the NATS and embedded carriers drop and
/// count (`slow_consumer`).
pub const INBOX_MESSAGES: usize = 4096;
/// Bytes of message text in such an inbox, at most (one message more may be in it).
pub const INBOX_BYTES: usize = 16 * 1024 * 1024;

/// Longest header of a positioned frame: the tag, 20 digits, an epoch and two spaces.
const POSITION_HEADER_MAX: usize = 3 + 20 + protocol::history::MAX_EPOCH_LEN;

/// The gateway's own limits, applied to what arrives from the bus.
#[derive(Debug, Clone, Copy)]
pub struct InboundLimits {
    pub max_group_id_len: usize,
    pub max_message_size: usize,
    /// Longest cluster topic name (a uid's or a group's presence topic, a node's).
    pub max_topic_len: usize,
    /// Largest control frame (cluster answers list members: larger than a message).
    pub max_control_size: usize,
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
    /// The limits of a gateway with these settings.
    pub fn from_config(config: &GatewayConfig) -> InboundLimits {
        InboundLimits {
            max_group_id_len: config.max_group_id_len,
            max_message_size: config.max_message_size,
            max_topic_len: config.max_topic_len(),
            max_control_size: config.link_max_frame_size,
        }
    }

    /// The group (or cluster topic) and payload of a message received for `channel`, or why it
    /// is dropped.
    pub fn check<'a>(
        &self,
        channel: &'a [u8],
        payload: Bytes,
    ) -> Result<(GroupName<'a>, Payload), Rejected> {
        let control = ControlFrame::is_control(&payload);
        let max_size = if control {
            self.max_control_size
        } else if Positioned::is_positioned(&payload) {
            self.max_message_size + POSITION_HEADER_MAX
        } else {
            self.max_message_size
        };
        if payload.len() > max_size {
            return Err(Rejected::TooLarge);
        }
        let name = std::str::from_utf8(channel).map_err(|_| Rejected::Invalid)?;
        let max_len = if topic::is_cluster_topic(channel) {
            self.max_topic_len
        } else {
            self.max_group_id_len
        };
        let group = GroupName::parse(name, max_len).map_err(|_| Rejected::Invalid)?;
        if control {
            // A control frame's header is read where it is handled; shorter than its length
            // field it is nothing.
            if payload.len() < 5 {
                return Err(Rejected::Invalid);
            }
            return Ok((group, Payload::Control(payload)));
        }
        if Positioned::is_positioned(&payload) {
            // Only a client group keeps history.
            if topic::is_cluster_topic(channel) {
                return Err(Rejected::Invalid);
            }
            let positioned = Positioned::decode(payload).map_err(|_| Rejected::Invalid)?;
            let text = Text::new(positioned.payload).map_err(|_| Rejected::Invalid)?;
            return Ok((group, Payload::Positioned(positioned.position, text)));
        }
        let text = Text::new(payload).map_err(|_| Rejected::Invalid)?;
        Ok((group, Payload::Text(text)))
    }
}

/// The longest cluster topic for these limits.
pub fn max_topic_len(max_group_id_len: usize, max_uid_len: usize) -> usize {
    (max_group_id_len.max(max_uid_len) + topic::MAX_PREFIX_LEN).max(topic::MAX_FIXED_LEN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_limits_apply_to_what_the_bus_brings() {
        let limits = InboundLimits {
            max_group_id_len: 8,
            max_message_size: 4,
            max_topic_len: 12,
            max_control_size: 64,
        };
        let (group, payload) = limits
            .check(b"g", Bytes::from_static(b"abcd"))
            .expect("within the limits");
        assert_eq!(group.as_str(), "g");
        assert!(matches!(payload, Payload::Text(text) if text.as_str() == "abcd"));
        let frame = ControlFrame::encode(
            &protocol::cluster::Control::Deliver { exclude: vec![] },
            b"0123456789",
        );
        let (group, payload) = limits
            .check("\u{1f}u:123456789".as_bytes(), frame)
            .expect("a control frame may be larger than a message, a topic longer than a group id");
        assert_eq!(group.as_str(), "\u{1f}u:123456789");
        assert!(matches!(payload, Payload::Control(_)));
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
