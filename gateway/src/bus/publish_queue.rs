//! [`PublishQueue`]: what every carrier puts between [`Bus::publish`](super::Bus::publish),
//! called on any worker thread and never waiting, and the task that writes to the engine. It is
//! bounded in entries (`--link-queue-frames`) and in bytes (`--link-queue-bytes`): bytes are
//! counted when an entry is queued and released once the writer has written it (or dropped it
//! with its connection), so an engine that stops reading holds at most that much memory. A
//! refused entry is the caller's to count (`publishes_dropped`).

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

use tokio::sync::mpsc;

/// The sending side; the writer task holds the `mpsc::Receiver`.
#[derive(Debug)]
pub struct PublishQueue<T> {
    tx: mpsc::Sender<T>,
    queued_bytes: AtomicUsize,
    max_bytes: usize,
}

impl<T> PublishQueue<T> {
    /// A queue of at most `entries` entries and `max_bytes` bytes, and its receiver.
    pub fn new(entries: usize, max_bytes: usize) -> (PublishQueue<T>, mpsc::Receiver<T>) {
        let (tx, rx) = mpsc::channel(entries.max(1));
        let queue = PublishQueue {
            tx,
            queued_bytes: AtomicUsize::new(0),
            max_bytes,
        };
        (queue, rx)
    }

    /// Queues `entry` of `len` bytes without waiting; `false` (nothing queued) when a bound is
    /// reached or the writer is gone. The bytes are counted before the entry is queued, so
    /// publishers on several threads cannot pass the bound together; an entry larger than the
    /// bound still goes when nothing else is queued.
    pub fn push(&self, entry: T, len: usize) -> bool {
        let queued = self.queued_bytes.fetch_add(len, Relaxed);
        if queued > 0 && queued + len > self.max_bytes {
            self.queued_bytes.fetch_sub(len, Relaxed);
            return false;
        }
        if self.tx.try_send(entry).is_err() {
            self.queued_bytes.fetch_sub(len, Relaxed);
            return false;
        }
        true
    }

    /// `len` bytes taken from the queue were written out, or dropped with their connection.
    pub fn release(&self, len: usize) {
        self.queued_bytes.fetch_sub(len, Relaxed);
    }

    /// `len` bytes released by a write are held again (to be written once more, after a lost
    /// connection): counted against the bound until [`PublishQueue::release`]d, even past it,
    /// so that publishers wait for them to go.
    pub fn hold(&self, len: usize) {
        self.queued_bytes.fetch_add(len, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_entries_and_in_bytes() {
        let (queue, mut rx) = PublishQueue::new(2, 10);
        assert!(
            queue.push("a", 20),
            "larger than the bound, but nothing is queued"
        );
        assert!(!queue.push("b", 1), "the bytes bound");
        assert_eq!(rx.try_recv().ok(), Some("a"));
        queue.release(20);
        assert!(queue.push("c", 5) && queue.push("d", 5));
        assert!(!queue.push("e", 0), "the entries bound");
        drop(rx);
        queue.release(10);
        assert!(!queue.push("f", 1), "the writer is gone");
    }
}
