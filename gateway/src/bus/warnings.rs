//! Repeated warnings of a bus connection, rate limited: while an engine stays down a carrier
//! retries every `--reconnect-max`, and would log the same line each time. A [`Throttle`] lets
//! one through per [`WARN_EVERY`] and says how many it held back since the last.

use std::time::Duration;

use tokio::time::Instant;

/// At most one warning of a kind this often.
pub const WARN_EVERY: Duration = Duration::from_secs(30);

/// One kind of repeated warning (its owner keeps it behind its own lock).
#[derive(Debug, Default)]
pub struct Throttle {
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    /// `Some(held back since the last one)` when this warning is to be logged; `None` (and one
    /// more held back) otherwise.
    pub fn allow(&mut self) -> Option<u64> {
        if self.last.is_some_and(|last| last.elapsed() < WARN_EVERY) {
            self.suppressed += 1;
            return None;
        }
        self.last = Some(Instant::now());
        Some(std::mem::take(&mut self.suppressed))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_warning_per_period_with_the_count_held_back() {
        let mut throttle = Throttle::default();
        assert_eq!(throttle.allow(), Some(0));
        assert_eq!(throttle.allow(), None);
        assert_eq!(throttle.allow(), None);
        tokio::time::advance(WARN_EVERY).await;
        assert_eq!(throttle.allow(), Some(2));
        assert_eq!(throttle.allow(), None);
    }
}
