//! [`LinkFault`]: the codes a broker sends in a link `Error` frame, typed.
//!
//! The wire carries the code as a string ([`crate::link::LinkError::code`]); [`LinkFault::as_str`]
//! gives exactly that string, and parsing (`"bad_frame".parse::<LinkFault>()`) turns a received
//! code back into the type. A code this build does not know (a newer peer) is an
//! [`UnknownLinkFault`] that keeps the code, so a receiver can still log or show it.

use std::fmt;
use std::str::FromStr;

/// Why a peer refused something on the link, or closed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum LinkFault {
    /// The bytes are not a frame: a zero or oversize length prefix, a body that does not
    /// decode, or a frame without a body.
    BadFrame,
    /// The first frame was not a hello.
    ExpectedHello,
    /// The hello announced another link protocol version.
    IncompatibleVersion,
    /// No hello (or auth frame) within the handshake timeout.
    HandshakeTimeout,
    /// A frame the receiver does not accept in that direction, or at that point.
    UnexpectedFrame,
    /// An empty channel name, or one longer than the receiver's limit.
    InvalidChannel,
    /// More subscriptions on one link than the broker takes.
    TooManyChannels,
    /// A publish the broker cannot relay (its message would not fit in a frame).
    BadPublish,
    /// The peer did not prove that it knows the link secret.
    Unauthorized,
}

impl LinkFault {
    /// Every fault, for tests and documentation.
    pub const ALL: [LinkFault; 9] = [
        LinkFault::BadFrame,
        LinkFault::ExpectedHello,
        LinkFault::IncompatibleVersion,
        LinkFault::HandshakeTimeout,
        LinkFault::UnexpectedFrame,
        LinkFault::InvalidChannel,
        LinkFault::TooManyChannels,
        LinkFault::BadPublish,
        LinkFault::Unauthorized,
    ];

    /// The code on the wire.
    pub const fn as_str(self) -> &'static str {
        match self {
            LinkFault::BadFrame => "bad_frame",
            LinkFault::ExpectedHello => "expected_hello",
            LinkFault::IncompatibleVersion => "incompatible_version",
            LinkFault::HandshakeTimeout => "handshake_timeout",
            LinkFault::UnexpectedFrame => "unexpected_frame",
            LinkFault::InvalidChannel => "invalid_channel",
            LinkFault::TooManyChannels => "too_many_channels",
            LinkFault::BadPublish => "bad_publish",
            LinkFault::Unauthorized => "unauthorized",
        }
    }
}

impl fmt::Display for LinkFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::error::Error for LinkFault {}

/// A fault code this build does not know; `code` is what the peer sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown link fault code {code:?}")]
pub struct UnknownLinkFault {
    pub code: String,
}

impl FromStr for LinkFault {
    type Err = UnknownLinkFault;

    fn from_str(code: &str) -> Result<LinkFault, UnknownLinkFault> {
        LinkFault::ALL
            .into_iter()
            .find(|fault| fault.as_str() == code)
            .ok_or_else(|| UnknownLinkFault { code: code.into() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_todays_wire_strings_and_parse_back() {
        let codes: Vec<&str> = LinkFault::ALL.iter().map(|f| f.as_str()).collect();
        assert_eq!(
            codes,
            [
                "bad_frame",
                "expected_hello",
                "incompatible_version",
                "handshake_timeout",
                "unexpected_frame",
                "invalid_channel",
                "too_many_channels",
                "bad_publish",
                "unauthorized",
            ]
        );
        for fault in LinkFault::ALL {
            assert_eq!(fault.to_string(), fault.as_str());
            assert_eq!(fault.as_str().parse::<LinkFault>(), Ok(fault));
        }
    }

    #[test]
    fn an_unknown_code_is_kept() {
        let err = "from_the_future".parse::<LinkFault>().unwrap_err();
        assert_eq!(err.code, "from_the_future");
        assert_eq!(
            err.to_string(),
            "unknown link fault code \"from_the_future\""
        );
        assert!("".parse::<LinkFault>().is_err());
        assert!("BAD_FRAME".parse::<LinkFault>().is_err());
    }
}
