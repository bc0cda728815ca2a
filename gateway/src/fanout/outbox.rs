//! A connection's way out: its bounded queue of encoded frames, shared between the worker's
//! fan-out (producer) and the connection task (consumer), and the worker's direct write. While
//! the connection has nothing pending, the worker writes what its batch of deliveries queued to
//! the socket itself (one write per connection and batch) and the task is not even woken; what
//! the socket does not take stays queued, and the task writes it when the socket can take more.
//!
//! Both sides run on the worker's thread, hence `Cell`/`RefCell`, and the connection task is
//! woken by a [`Signal`], not a `tokio::sync::Notify` (whose lock and waiter list cost more than
//! the rest of a delivery's queueing, see BENCHMARKS.md).

use std::cell::{Cell, OnceCell, RefCell};
use std::future::Future;
use std::io::IoSlice;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use crate::fanout::frame::{Frames, FRAMES_PER_WRITE};

#[derive(Debug)]
pub struct Outbox {
    /// Encoded WebSocket frames; the first may be the rest of one a direct write began.
    queue: RefCell<Frames>,
    bytes: Cell<usize>,
    overflowed: Cell<bool>,
    max_messages: usize,
    max_bytes: usize,
    /// Wakes the connection task: something was queued, the queue overflowed, the connection
    /// is ordered to close, or its worker is stopping.
    pub(crate) wake: Signal,
    /// Raised once, when the queue overflows: interrupts a write in progress.
    pub(crate) overflow: Signal,
    /// Signalled when the queue is taken by the connection's task or written by the worker,
    /// while a producer paces itself (a recovery sending a history) on [`Outbox::drained`].
    drained: Notify,
    /// Producers waiting in [`Outbox::drained`]: without any, taking the queue signals nothing.
    pacing: Cell<usize>,
    /// The connection's socket, written by the worker ([`Outbox::write_direct`]) while `direct`
    /// holds (plain TCP only, see [`edge::socket`](crate::edge::socket)).
    socket: OnceCell<Rc<TcpStream>>,
    /// Nothing is pending anywhere on the connection but frames for the worker to write (the
    /// frames its task has taken, the WebSocket library's own): the worker may write. Kept by
    /// the connection task, cleared when the socket does not take everything.
    direct: Cell<bool>,
    /// Handed to the worker for a direct write that has not happened yet.
    dirty: Cell<bool>,
}

/// Result of [`Outbox::push`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Push {
    Queued,
    /// Queued for the worker to write (the connection has nothing pending): the caller hands
    /// the connection to [`Outbox::write_direct`] once its batch is fanned out.
    ForWorker,
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
            queue: RefCell::new(Frames::default()),
            bytes: Cell::new(0),
            overflowed: Cell::new(false),
            max_messages,
            max_bytes,
            wake: Signal::default(),
            overflow: Signal::default(),
            drained: Notify::new(),
            pacing: Cell::new(0),
            socket: OnceCell::new(),
            direct: Cell::new(false),
            dirty: Cell::new(false),
        }
    }

    /// Queues `message` (an encoded frame). While the connection has nothing pending, the
    /// worker writes the queue itself ([`Outbox::write_direct`], once its current batch of
    /// deliveries is fanned out, so that a connection's frames of one batch go in one write) and
    /// the connection's task is not woken; otherwise the task is woken to write it.
    pub fn push(&self, message: Bytes) -> Push {
        if self.overflowed.get() {
            return Push::Closed;
        }
        let mut queue = self.queue.borrow_mut();
        let bytes = self.bytes.get() + message.len();
        // A single message larger than the byte bound is still accepted into an empty queue: a
        // big relayed message must not close every member of its group.
        if queue.len() >= self.max_messages || (bytes > self.max_bytes && !queue.is_empty()) {
            // The rest of a frame a direct write began is still owed to the socket: the close
            // frame may only follow it (the task takes it before closing).
            let dropped = queue.clear_all_but_begun() + 1;
            self.bytes.set(queue.front().map_or(0, Bytes::len));
            self.overflowed.set(true);
            self.direct.set(false);
            self.wake.raise();
            self.overflow.raise();
            return Push::Overflowed { dropped };
        }
        let was_empty = queue.is_empty();
        queue.push(message);
        self.bytes.set(bytes);
        if self.direct.get() {
            if self.dirty.replace(true) {
                return Push::Queued;
            }
            return Push::ForWorker;
        }
        if was_empty {
            self.wake.raise();
        }
        Push::Queued
    }

    /// Writes the queue to the socket, on the worker's behalf, while the connection has nothing
    /// pending (else, and for what the socket does not take, its task is woken to write it).
    /// Called once per [`Push::ForWorker`].
    pub(crate) fn write_direct(&self) {
        self.dirty.set(false);
        let socket = match self.socket.get() {
            Some(socket) if self.direct.get() => socket,
            _ => {
                // The task writes (or will): it takes this queue with its own.
                if !self.queue.borrow().is_empty() {
                    self.wake.raise();
                }
                return;
            }
        };
        let mut queue = self.queue.borrow_mut();
        while !queue.is_empty() {
            // One frame (the usual case at everyday load): no slices to set up.
            let written = match queue.front() {
                Some(front) if queue.len() == 1 => socket.try_write(front),
                _ => {
                    let mut slices = [IoSlice::new(&[]); FRAMES_PER_WRITE];
                    socket.try_write_vectored(queue.slices(&mut slices))
                }
            };
            // Would block: the task waits until it can write. Another error: the task meets it
            // too when it writes, and closes.
            let Ok(n) = written else {
                break;
            };
            if n == 0 {
                break;
            }
            self.bytes.set(self.bytes.get().saturating_sub(n));
            queue.consume(n);
            if queue.begun().is_some() {
                break; // the socket is full: the rest is the task's
            }
        }
        drop(queue);
        self.notify_drained();
        if self.queue.borrow().is_empty() {
            self.bytes.set(0);
            return;
        }
        self.direct.set(false);
        self.wake.raise();
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed.get()
    }

    /// Moves everything queued into `into` (which should be empty), releasing the byte budget.
    /// A frame a direct write began comes first, begun.
    pub fn take_all(&self, into: &mut Frames) {
        std::mem::swap(&mut *self.queue.borrow_mut(), into);
        self.bytes.set(0);
        self.notify_drained();
    }

    /// Room was made: a paced producer may go on.
    fn notify_drained(&self) {
        if self.pacing.get() > 0 {
            self.drained.notify_waiters();
        }
    }

    /// The connection's plain socket: the worker writes to it while [`Outbox::set_direct`]
    /// allows.
    pub(crate) fn attach(&self, socket: Rc<TcpStream>) {
        let _ = self.socket.set(socket);
    }

    /// Whether nothing is pending on the connection, so that the worker may write its frames.
    /// Only the connection's task says so, and only while this queue is empty.
    pub(crate) fn set_direct(&self, direct: bool) {
        self.direct
            .set(direct && self.socket.get().is_some() && self.queue.borrow().is_empty());
    }

    /// Waits until the writer next takes the queue.
    pub async fn drained(&self) {
        struct Pacing<'a>(&'a Cell<usize>);
        impl Drop for Pacing<'_> {
            fn drop(&mut self) {
                self.0.set(self.0.get() - 1);
            }
        }
        self.pacing.set(self.pacing.get() + 1);
        let _pacing = Pacing(&self.pacing);
        self.drained.notified().await;
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

/// A wake-up for one task on the same thread as those who raise it: a flag, and the waiting
/// task's waker, woken when the flag goes up. No lock and no waiter list: raising it costs a
/// flag (and a wake when the task waits), waiting for it a flag and, when the task is the same as
/// last time, no waker clone.
#[derive(Debug, Default)]
pub(crate) struct Signal {
    raised: Cell<bool>,
    waker: RefCell<Option<Waker>>,
}

impl Signal {
    /// Raises it, waking the task that waits for it (if one does).
    pub(crate) fn raise(&self) {
        if self.raised.replace(true) {
            return; // raised already: the waiting task was woken then
        }
        if let Some(waker) = &*self.waker.borrow() {
            waker.wake_by_ref();
        }
    }

    /// Lowers it, as a wait that completed would: what it announced was seen to otherwise.
    pub(crate) fn lower(&self) {
        self.raised.set(false);
    }

    /// Completes once it is raised (at once if it was raised since the last wait), and lowers
    /// it. One task waits at a time: a second one would take the first one's place.
    pub(crate) fn raised(&self) -> Raised<'_> {
        Raised(self)
    }
}

/// The future of [`Signal::raised`].
#[derive(Debug)]
pub(crate) struct Raised<'a>(&'a Signal);

impl Future for Raised<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let signal = self.0;
        if signal.raised.replace(false) {
            return Poll::Ready(());
        }
        let mut waker = signal.waker.borrow_mut();
        match &mut *waker {
            Some(waker) if waker.will_wake(cx.waker()) => {}
            slot => *slot = Some(cx.waker().clone()),
        }
        Poll::Pending
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
        let mut batch = Frames::default();
        outbox.take_all(&mut batch);
        assert_eq!(batch.len(), 2);
        assert_eq!(outbox.push("c".into()), Push::Queued);
        assert_eq!(outbox.push("d".into()), Push::Queued);
    }

    /// A waker that counts its wakes.
    struct Counter(std::sync::atomic::AtomicUsize);

    impl std::task::Wake for Counter {
        fn wake(self: std::sync::Arc<Self>) {
            self.wake_by_ref();
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    impl Counter {
        fn wakes(&self) -> usize {
            self.0.load(std::sync::atomic::Ordering::Relaxed)
        }
    }

    /// A waker and the counter of its wakes.
    fn counting() -> (std::sync::Arc<Counter>, Waker) {
        let counter = std::sync::Arc::new(Counter(Default::default()));
        (counter.clone(), Waker::from(counter))
    }

    #[test]
    fn a_signal_wakes_its_waiting_task_once_per_raise() {
        let (counter, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let signal = Signal::default();

        // Raised before anyone waits: the next wait completes at once, and lowers it.
        signal.raise();
        assert_eq!(
            Pin::new(&mut signal.raised()).poll(&mut cx),
            Poll::Ready(())
        );
        assert_eq!(Pin::new(&mut signal.raised()).poll(&mut cx), Poll::Pending);
        assert_eq!(counter.wakes(), 0);

        // Waiting: a raise wakes the task once, a second raise before it runs does not again.
        signal.raise();
        signal.raise();
        assert_eq!(counter.wakes(), 1);
        assert_eq!(
            Pin::new(&mut signal.raised()).poll(&mut cx),
            Poll::Ready(())
        );
        assert_eq!(Pin::new(&mut signal.raised()).poll(&mut cx), Poll::Pending);
        signal.raise();
        assert_eq!(counter.wakes(), 2);

        // Another task waiting takes the place of the first: only it is woken.
        let (other, other_waker) = counting();
        let mut other_cx = Context::from_waker(&other_waker);
        assert_eq!(
            Pin::new(&mut signal.raised()).poll(&mut cx),
            Poll::Ready(())
        );
        assert_eq!(
            Pin::new(&mut signal.raised()).poll(&mut other_cx),
            Poll::Pending
        );
        signal.raise();
        assert_eq!((counter.wakes(), other.wakes()), (2, 1));
    }

    #[test]
    fn a_push_into_an_empty_queue_raises_the_wake_and_an_overflow_both() {
        let outbox = Outbox::new(2, 100);
        let (counter, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(
            Pin::new(&mut outbox.wake.raised()).poll(&mut cx),
            Poll::Pending
        );
        assert_eq!(
            Pin::new(&mut outbox.overflow.raised()).poll(&mut cx),
            Poll::Pending
        );
        outbox.push("a".into());
        outbox.push("b".into());
        // One wake for the first message; the second found the queue not empty.
        assert_eq!(counter.wakes(), 1);
        assert_eq!(
            Pin::new(&mut outbox.wake.raised()).poll(&mut cx),
            Poll::Ready(())
        );
        assert_eq!(
            Pin::new(&mut outbox.overflow.raised()).poll(&mut cx),
            Poll::Pending
        );
        assert_eq!(outbox.push("c".into()), Push::Overflowed { dropped: 3 });
        assert_eq!(
            Pin::new(&mut outbox.overflow.raised()).poll(&mut cx),
            Poll::Ready(())
        );
        assert_eq!(
            Pin::new(&mut outbox.wake.raised()).poll(&mut cx),
            Poll::Ready(())
        );
    }

    /// A connected pair: the outbox's socket (attached, direct writes allowed) and its peer.
    async fn attached(outbox: &Outbox) -> TcpStream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (peer, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        outbox.attach(Rc::new(accepted.expect("accept").0));
        outbox.set_direct(true);
        peer.expect("connect")
    }

    /// Reads exactly `n` bytes from `peer`.
    async fn read_n(peer: &mut TcpStream, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut got = vec![0u8; n];
        peer.read_exact(&mut got).await.expect("read");
        got
    }

    #[tokio::test]
    async fn the_worker_writes_a_connections_frames_of_a_batch_in_one_go() {
        let outbox = Outbox::new(100, 1 << 20);
        let mut peer = attached(&outbox).await;
        let (counter, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        assert_eq!(
            Pin::new(&mut outbox.wake.raised()).poll(&mut cx),
            Poll::Pending
        );

        // The first push hands the connection to the worker, the next ones ride along.
        assert_eq!(outbox.push("ab".into()), Push::ForWorker);
        assert_eq!(outbox.push("cd".into()), Push::Queued);
        outbox.write_direct();
        assert_eq!(read_n(&mut peer, 4).await, b"abcd");
        assert!(outbox.is_empty());
        assert_eq!(outbox.bytes.get(), 0);
        assert_eq!(counter.wakes(), 0, "the connection's task was not woken");
        assert_eq!(outbox.push("ef".into()), Push::ForWorker);

        // Once the task says something is pending, pushes wake it and the worker leaves them.
        outbox.set_direct(false);
        assert_eq!(outbox.push("gh".into()), Push::Queued);
        outbox.write_direct();
        assert!(counter.wakes() >= 1);
        let mut taken = Frames::default();
        outbox.take_all(&mut taken);
        assert!(taken.begun().is_none());
        assert_eq!(taken.to_vec(), [Bytes::from("ef"), Bytes::from("gh")]);
    }

    #[tokio::test]
    async fn a_full_socket_leaves_the_rest_to_the_task_and_an_overflow_keeps_it() {
        let outbox = Outbox::new(8, 1 << 30);
        let mut peer = attached(&outbox).await;
        // Frames of 256 KiB, each byte saying its frame, until the socket takes one in part.
        let frame = |i: usize| Bytes::from(vec![b'a' + (i % 26) as u8; 256 * 1024]);
        let mut pushed = 0;
        while outbox.direct.get() {
            assert!(pushed < 1000, "the socket never filled");
            outbox.push(frame(pushed));
            pushed += 1;
            outbox.write_direct();
        }
        let begun = outbox.queue.borrow().begun().is_some();
        // More frames queue behind; then one too many overflows the queue.
        let before = outbox.len();
        for i in 0..(8 - before) {
            assert_eq!(outbox.push(frame(pushed + i)), Push::Queued);
        }
        assert!(matches!(outbox.push(frame(0)), Push::Overflowed { .. }));
        let mut taken = Frames::default();
        outbox.take_all(&mut taken);
        assert_eq!(taken.begun().is_some(), begun);
        if begun {
            // Only the rest of the frame the socket took in part: it completes that frame.
            assert_eq!(taken.len(), 1);
            let rest = taken.to_vec()[0].clone();
            let written = 256 * 1024 * pushed - rest.len();
            let got = read_n(&mut peer, written).await;
            let mut all = got;
            all.extend_from_slice(&rest);
            let expected: Vec<u8> = (0..pushed).flat_map(|i| frame(i).to_vec()).collect();
            assert!(
                all == expected,
                "the bytes out and the rest make the frames, in order"
            );
        } else {
            assert!(taken.is_empty());
        }
    }

    #[tokio::test]
    async fn a_paced_producer_goes_on_when_the_worker_writes() {
        let outbox = Outbox::new(100, 1 << 20);
        let _peer = attached(&outbox).await;
        let (_, waker) = counting();
        let mut cx = Context::from_waker(&waker);
        let mut drained = Box::pin(outbox.drained());
        assert_eq!(drained.as_mut().poll(&mut cx), Poll::Pending);
        assert_eq!(outbox.push("x".into()), Push::ForWorker);
        outbox.write_direct();
        assert_eq!(drained.as_mut().poll(&mut cx), Poll::Ready(()));
    }
}
