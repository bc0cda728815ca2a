//! Waiting for a state, always with a deadline.
//!
//! [`wait_until`] polls a probe every [`POLL_INTERVAL`]: a probe that fails means "not yet",
//! and its last failure is what the timeout reports, so a test that times out says what it saw.

use std::fmt::Debug;
use std::future::Future;
use std::time::Duration;

use anyhow::{anyhow, bail, Result};
use tokio::time::Instant;

use crate::POLL_INTERVAL;

/// Polls `probe` until it returns `Ok`, for at most `timeout`; returns its value. An `Err` from
/// the probe means "not yet" (an unreachable endpoint, a condition that does not hold yet), and
/// the last one is reported when the deadline passes.
pub async fn wait_until<T, F, Fut>(what: &str, timeout: Duration, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match tokio::time::timeout_at(deadline, probe()).await {
            Ok(Ok(value)) => return Ok(value),
            Ok(Err(e)) => e,
            Err(_) => anyhow!("the probe itself did not answer"),
        };
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting until {what}; last: {last:#}");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Reads in-process state (a stats snapshot) with `read` until `done` holds for it; returns
/// that state. A timeout reports the last state read.
pub async fn wait_for_state<T: Debug>(
    what: &str,
    timeout: Duration,
    mut read: impl FnMut() -> T,
    done: impl Fn(&T) -> bool,
) -> Result<T> {
    wait_until(what, timeout, || {
        let state = read();
        let result = if done(&state) {
            Ok(state)
        } else {
            Err(anyhow!("{state:#?}"))
        };
        std::future::ready(result)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn reports_the_last_failure_at_the_deadline() {
        let mut polls = 0;
        let err = wait_for_state(
            "it is ready",
            Duration::from_secs(1),
            || {
                polls += 1;
                polls
            },
            |_| false,
        )
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("waiting until it is ready"), "{err}");
        assert!(err.contains(&format!("last: {polls}")), "{err}");
        assert!(polls > 1, "polled more than once");
    }

    #[tokio::test(start_paused = true)]
    async fn returns_the_first_success() {
        let mut polls = 0;
        let got = wait_until("the third poll", Duration::from_secs(1), || {
            polls += 1;
            let result = if polls == 3 {
                Ok(polls)
            } else {
                Err(anyhow!("poll {polls}"))
            };
            std::future::ready(result)
        })
        .await;
        assert_eq!(got.ok(), Some(3));
    }
}
