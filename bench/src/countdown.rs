//! [`Countdown`]: the connections an agent still waits on.

use std::cell::Cell;

use tokio::sync::Notify;
use tokio::time::Instant;

/// A count of connections an agent waits on (still connecting, still sending, ...). Agents are
/// single-threaded, so a `Cell` is enough; the one waiter is woken when it reaches zero.
#[derive(Debug, Default)]
pub struct Countdown {
    left: Cell<u64>,
    zero: Notify,
}

impl Countdown {
    pub fn new(n: u64) -> Countdown {
        Countdown {
            left: Cell::new(n),
            zero: Notify::new(),
        }
    }

    pub fn left(&self) -> u64 {
        self.left.get()
    }

    pub fn done_one(&self) {
        let left = self.left.get().saturating_sub(1);
        self.left.set(left);
        if left == 0 {
            self.zero.notify_one();
        }
    }

    /// Waits for zero; false if `deadline` came first.
    pub async fn wait(&self, deadline: Instant) -> bool {
        let reached = async {
            while self.left.get() > 0 {
                self.zero.notified().await;
            }
        };
        tokio::time::timeout_at(deadline, reached).await.is_ok()
    }
}
