//! This gateway's identity on an external bus: every publish leaves in an [`Envelope`] with its
//! node id and the next sequence number, and what comes back with its own node id is its own
//! publish echoed by the engine (Redis sends a publish to every subscriber of the channel,
//! the publisher's own subscriber connection included), dropped here.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::Bytes;
use protocol::envelope::{Envelope, EnvelopeError, ENVELOPE_HEADER_LEN};

/// Stamps this gateway's publishes and recognizes them when they come back.
#[derive(Debug)]
pub struct Origin {
    node_id: u64,
    next_seq: AtomicU64,
}

/// What a received bus message turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Another gateway's message: its payload.
    Message(Bytes),
    /// This gateway's own publish, echoed back: its payload.
    Echo(Bytes),
}

impl Origin {
    /// A fresh node id: random, so that a restarted gateway is a new origin.
    pub fn new() -> Origin {
        Origin::with_node_id(fastrand::u64(1..))
    }

    pub fn with_node_id(node_id: u64) -> Origin {
        Origin {
            node_id,
            next_seq: AtomicU64::new(1),
        }
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The bytes to publish for `payload`.
    pub fn stamp(&self, payload: &[u8]) -> Bytes {
        Envelope::encode(self.node_id, self.next_seq.fetch_add(1, Relaxed), payload)
    }

    /// The envelope header of the next publish, for a carrier that writes the payload after it
    /// in a buffer of its own (one copy of the payload instead of two).
    pub fn header(&self) -> [u8; ENVELOPE_HEADER_LEN] {
        Envelope::header(self.node_id, self.next_seq.fetch_add(1, Relaxed))
    }

    /// Opens a received message. A positioned message (a group with history) is never an echo,
    /// whoever published it: its store brings it to every gateway, this one included, whose
    /// members receive their own gateway's history messages only this way.
    pub fn open(&self, bytes: Bytes) -> Result<Received, EnvelopeError> {
        let envelope = Envelope::decode(bytes)?;
        let own = envelope.origin == self.node_id
            && !protocol::history::Positioned::is_positioned(&envelope.payload);
        Ok(if own {
            Received::Echo(envelope.payload)
        } else {
            Received::Message(envelope.payload)
        })
    }
}

impl Default for Origin {
    fn default() -> Self {
        Origin::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn own_publishes_come_back_as_echoes_and_others_as_messages() {
        let (me, other) = (Origin::with_node_id(1), Origin::with_node_id(2));
        assert_eq!(
            me.open(me.stamp(b"mine")),
            Ok(Received::Echo(Bytes::from_static(b"mine")))
        );
        assert_eq!(
            me.open(other.stamp(b"theirs")),
            Ok(Received::Message(Bytes::from_static(b"theirs")))
        );
        assert!(me.open(Bytes::from_static(b"raw text")).is_err());
    }

    #[test]
    fn sequence_numbers_are_consecutive_from_one() {
        let me = Origin::with_node_id(9);
        let seqs: Vec<u64> = (0..3)
            .map(|_| Envelope::decode(me.stamp(b"x")).expect("envelope").seq)
            .collect();
        assert_eq!(seqs, [1, 2, 3]);
    }
}
