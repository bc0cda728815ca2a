//! A connection's bounded outbound queue, shared between the worker's fan-out (producer) and
//! the connection task (consumer). Both run on the worker's thread, hence `Cell`/`RefCell`.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;

use tokio::sync::Notify;
use tokio_tungstenite::tungstenite::Utf8Bytes;

#[derive(Debug)]
pub struct Outbox {
    queue: RefCell<VecDeque<Utf8Bytes>>,
    bytes: Cell<usize>,
    overflowed: Cell<bool>,
    max_messages: usize,
    max_bytes: usize,
    /// Wakes the connection task: something was queued, or the queue overflowed.
    pub(crate) wake: Notify,
    /// Signalled once, when the queue overflows: interrupts a write in progress.
    pub(crate) overflow: Notify,
    /// Signalled when the writer takes the queue: room for a producer that paces itself (a
    /// recovery sending a history).
    pub(crate) drained: Notify,
}

/// Result of [`Outbox::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// This push overflowed the queue: the connection is now a slow consumer, its queue was
    /// dropped (`dropped` messages, this one included).
    Overflowed {
        dropped: usize,
    },
    /// The queue overflowed earlier; the message was discarded.
    Closed,
}

impl Outbox {
    pub fn new(max_messages: usize, max_bytes: usize) -> Outbox {
        Outbox {
            queue: RefCell::new(VecDeque::new()),
            bytes: Cell::new(0),
            overflowed: Cell::new(false),
            max_messages,
            max_bytes,
            wake: Notify::new(),
            overflow: Notify::new(),
            drained: Notify::new(),
        }
    }

    pub fn push(&self, message: Utf8Bytes) -> Push {
        if self.overflowed.get() {
            return Push::Closed;
        }
        let mut queue = self.queue.borrow_mut();
        let bytes = self.bytes.get() + message.len();
        // A single message larger than the byte bound is still accepted into an empty queue: a
        // big relayed message must not close every member of its group.
        if queue.len() >= self.max_messages || (bytes > self.max_bytes && !queue.is_empty()) {
            let dropped = queue.len() + 1;
            *queue = VecDeque::new();
            self.bytes.set(0);
            self.overflowed.set(true);
            self.wake.notify_one();
            self.overflow.notify_one();
            return Push::Overflowed { dropped };
        }
        let was_empty = queue.is_empty();
        queue.push_back(message);
        self.bytes.set(bytes);
        if was_empty {
            self.wake.notify_one();
        }
        Push::Queued
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed.get()
    }

    /// Moves everything queued into `into` (which should be empty), releasing the byte budget.
    pub fn take_all(&self, into: &mut VecDeque<Utf8Bytes>) {
        std::mem::swap(&mut *self.queue.borrow_mut(), into);
        self.bytes.set(0);
        self.drained.notify_one();
    }

    /// Messages queued now.
    pub fn len(&self) -> usize {
        self.queue.borrow().len()
    }

    pub fn is_empty(&self) -> bool {
        self.queue.borrow().is_empty()
    }

    /// Half the queue's bound: a paced producer waits above it.
    pub fn half(&self) -> usize {
        (self.max_messages / 2).max(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_count_and_bytes() {
        let outbox = Outbox::new(3, 10);
        assert_eq!(outbox.push("abc".into()), Push::Queued);
        assert_eq!(outbox.push("def".into()), Push::Queued);
        assert_eq!(outbox.push("ghij".into()), Push::Queued);
        assert_eq!(outbox.push("k".into()), Push::Overflowed { dropped: 4 });
        assert!(outbox.overflowed());
        assert!(outbox.is_empty());
        assert_eq!(outbox.push("l".into()), Push::Closed);

        let outbox = Outbox::new(100, 10);
        assert_eq!(outbox.push("0123456789".into()), Push::Queued);
        assert_eq!(outbox.push("x".into()), Push::Overflowed { dropped: 2 });

        // One message over the byte bound fits an empty queue, and nothing after it does.
        let outbox = Outbox::new(100, 10);
        assert_eq!(outbox.push("0123456789abc".into()), Push::Queued);
        assert_eq!(outbox.push("x".into()), Push::Overflowed { dropped: 2 });
    }

    #[test]
    fn take_all_frees_budget() {
        let outbox = Outbox::new(2, 100);
        outbox.push("a".into());
        outbox.push("b".into());
        let mut batch = VecDeque::new();
        outbox.take_all(&mut batch);
        assert_eq!(batch.len(), 2);
        assert_eq!(outbox.push("c".into()), Push::Queued);
        assert_eq!(outbox.push("d".into()), Push::Queued);
    }
}
