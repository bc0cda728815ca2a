//! A link's outbound queue, bounded twice: in frames (the channel's capacity, `link-queue-frames`)
//! and in bytes (`link-queue-bytes`: a counter that a frame's length is added to when it is
//! queued and subtracted from once the writer has written it).
//!
//! Queueing never waits: a frame that does not fit is refused, and the caller decides what that
//! means (the registry disconnects the link as a slow consumer). The byte count is one atomic per
//! link, shared by the senders and the writer, so the hot path takes no lock.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc;

/// A queue for up to `max_frames` frames and `max_bytes` bytes of them. A frame that finds the
/// queue empty is taken whatever its size, so frames larger than `max_bytes` still pass, one at a
/// time.
pub fn link_queue(max_frames: usize, max_bytes: usize) -> (QueueSender, QueueReceiver) {
    let (tx, rx) = mpsc::channel(max_frames);
    let queued = Arc::new(AtomicUsize::new(0));
    (
        QueueSender {
            tx,
            queued: queued.clone(),
            max_bytes,
        },
        QueueReceiver { rx, queued },
    )
}

/// Why a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// The queue holds as many frames as it may.
    Frames,
    /// The frame would take the queued bytes over the bound.
    Bytes,
    /// The writer is gone.
    Closed,
}

impl Refused {
    /// For logs: which bound was hit.
    pub fn as_str(self) -> &'static str {
        match self {
            Refused::Frames => "frames",
            Refused::Bytes => "bytes",
            Refused::Closed => "closed",
        }
    }
}

/// The queueing end; cheap to clone, every clone feeds the same queue.
#[derive(Debug, Clone)]
pub struct QueueSender {
    tx: mpsc::Sender<Bytes>,
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
}

impl QueueSender {
    /// Queues `frame` without waiting, or says why it cannot.
    pub fn try_send(&self, frame: Bytes) -> Result<(), Refused> {
        let len = frame.len();
        // Reserve first: of two frames racing for the last room, at most one gets it.
        let before = self.queued.fetch_add(len, Relaxed);
        if before != 0 && before.saturating_add(len) > self.max_bytes {
            self.queued.fetch_sub(len, Relaxed);
            return Err(Refused::Bytes);
        }
        self.tx.try_send(frame).map_err(|e| {
            self.queued.fetch_sub(len, Relaxed);
            match e {
                mpsc::error::TrySendError::Full(_) => Refused::Frames,
                mpsc::error::TrySendError::Closed(_) => Refused::Closed,
            }
        })
    }

    /// Bytes queued and not yet written.
    pub fn queued_bytes(&self) -> usize {
        self.queued.load(Relaxed)
    }
}

/// The writer's end.
#[derive(Debug)]
pub struct QueueReceiver {
    rx: mpsc::Receiver<Bytes>,
    queued: Arc<AtomicUsize>,
}

impl QueueReceiver {
    /// Waits for frames and moves up to `limit` of them into `buf`; 0 once every sender is gone
    /// and the queue is empty. The frames still count against the byte bound until
    /// [`QueueReceiver::written`].
    pub async fn recv_many(&mut self, buf: &mut Vec<Bytes>, limit: usize) -> usize {
        self.rx.recv_many(buf, limit).await
    }

    /// Releases the bytes of `frame`, taken from this queue, once it has been written.
    pub fn written(&self, frame: &Bytes) {
        self.queued.fetch_sub(frame.len(), Relaxed);
    }

    /// Takes one frame, if any, and releases its bytes: for tests that stand in for the writer.
    #[cfg(test)]
    pub(crate) fn try_recv(&mut self) -> Result<Bytes, mpsc::error::TryRecvError> {
        let frame = self.rx.try_recv()?;
        self.written(&frame);
        Ok(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(len: usize) -> Bytes {
        Bytes::from(vec![0; len])
    }

    #[test]
    fn bytes_are_held_from_queueing_until_written() {
        let (tx, mut rx) = link_queue(16, 100);
        tx.try_send(frame(60)).unwrap();
        tx.try_send(frame(40)).unwrap();
        assert_eq!(tx.queued_bytes(), 100, "exactly at the bound is inside it");
        assert_eq!(tx.try_send(frame(1)), Err(Refused::Bytes));
        assert_eq!(tx.queued_bytes(), 100, "a refused frame leaves no trace");

        // Taken from the queue but not yet written: still counted.
        let mut batch = Vec::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(rt.block_on(rx.recv_many(&mut batch, 16)), 2);
        assert_eq!(tx.try_send(frame(1)), Err(Refused::Bytes));
        rx.written(&batch[0]);
        assert_eq!(tx.queued_bytes(), 40);
        tx.try_send(frame(60)).unwrap();
        assert_eq!(tx.queued_bytes(), 100);
    }

    #[test]
    fn an_empty_queue_takes_a_frame_larger_than_the_byte_bound() {
        let (tx, mut rx) = link_queue(16, 100);
        tx.try_send(frame(500)).unwrap();
        assert_eq!(tx.try_send(frame(1)), Err(Refused::Bytes));
        assert_eq!(rx.try_recv().map(|f| f.len()), Ok(500));
        assert_eq!(tx.queued_bytes(), 0);
        tx.try_send(frame(500)).unwrap();
    }

    #[test]
    fn the_frame_bound_and_a_closed_writer_refuse_too() {
        let (tx, rx) = link_queue(2, 1000);
        tx.try_send(frame(1)).unwrap();
        tx.try_send(frame(1)).unwrap();
        assert_eq!(tx.try_send(frame(1)), Err(Refused::Frames));
        assert_eq!(tx.queued_bytes(), 2);
        drop(rx);
        assert_eq!(tx.try_send(frame(1)), Err(Refused::Closed));
        assert_eq!(tx.queued_bytes(), 2);
    }
}
