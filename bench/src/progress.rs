//! [`Bar`]: the progress bar on stderr, fed with the agents' [`Progress`].

use std::cell::Cell;
use std::fmt;
use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::time::Instant;

use crate::coord::Progress;

/// The progress bar on stderr; hidden with --json or when stderr is not a terminal.
pub struct Bar {
    bar: ProgressBar,
    /// Deliveries and time at the previous tick, for the rate.
    last: Cell<(u64, Instant)>,
    /// Deliveries per second over the last second or so.
    rate: Cell<f64>,
    /// While the bar shows time: when it started, and the warmup in it.
    start: Cell<Option<(Instant, Duration)>>,
    /// Whether the rate limit warning has been printed.
    warned_rate_limit: Cell<bool>,
}

impl fmt::Debug for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bar").finish_non_exhaustive()
    }
}

const RATE_LIMIT_WARNING: &str = "\
warning: the gateway refuses messages with `rate_limited`: its rate limit per
  connection (gateway --max-messages-per-second) throttles this run, which then
  measures that limit, not the gateway. For throughput runs, start the gateway
  with --max-messages-per-second 0.";

fn sum(progress: &[Progress], field: impl Fn(&Progress) -> u64) -> u64 {
    progress.iter().map(field).sum()
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Bar {
    pub fn new(json: bool) -> Bar {
        let target = if json || !std::io::stderr().is_terminal() {
            ProgressDrawTarget::hidden()
        } else {
            ProgressDrawTarget::stderr()
        };
        Bar {
            bar: ProgressBar::with_draw_target(None, target),
            last: Cell::new((0, Instant::now())),
            rate: Cell::new(0.0),
            start: Cell::new(None),
            warned_rate_limit: Cell::new(false),
        }
    }

    pub fn connecting(&self, connections: u64) {
        self.bar
            .set_style(style("{prefix:>9} [{bar:25}] {pos}/{len} {wide_msg}"));
        self.bar.set_prefix("joining");
        self.bar.set_length(connections);
        self.bar.set_position(0);
    }

    pub fn connected(&self, progress: &[Progress]) {
        self.bar
            .set_position(sum(progress, |p| p.joined) + sum(progress, |p| p.failed));
        self.bar
            .set_message(format!("failed {}", sum(progress, |p| p.failed)));
    }

    /// Fanout: the bar is the warmup plus the measured window, in tenths of a second.
    pub fn running(&self, start: Instant, warmup: Duration, duration: Duration) {
        self.bar
            .set_style(style("{prefix:>9} [{bar:25}] {wide_msg}"));
        self.bar.set_prefix("warmup");
        self.bar
            .set_length(((warmup + duration).as_millis() / 100).max(1) as u64);
        self.bar.set_position(0);
        self.last.set((0, Instant::now()));
        self.bar.reset_elapsed();
        self.start.set(Some((start, warmup)));
    }

    pub fn delivering(&self, progress: &[Progress]) {
        let delivered = sum(progress, |p| p.delivered);
        let now = Instant::now();
        // Over a second at least: agents report every 250 ms, not in step with each other.
        let (before, at) = self.last.get();
        let secs = (now - at).as_secs_f64();
        if secs >= 1.0 {
            self.rate
                .set(delivered.saturating_sub(before) as f64 / secs);
            self.last.set((delivered, now));
        }
        if let Some((start, warmup)) = self.start.get() {
            let elapsed = now.saturating_duration_since(start);
            self.bar.set_position((elapsed.as_millis() / 100) as u64);
            self.bar.set_prefix(if elapsed < warmup {
                "warmup"
            } else {
                "measuring"
            });
        }
        self.bar.set_message(format!(
            "{:.0} deliveries/s, sent {}, dropped {}",
            self.rate.get(),
            sum(progress, |p| p.sent),
            sum(progress, |p| p.dropped)
        ));
    }

    pub fn draining(&self) {
        self.start.set(None);
        self.bar.set_prefix("draining");
    }

    /// Idle: the bar is the hold, in tenths of a second.
    pub fn holding(&self, hold: Duration) {
        self.bar
            .set_style(style("{prefix:>9} [{bar:25}] {elapsed} {wide_msg}"));
        self.bar.set_prefix("holding");
        self.bar.set_length((hold.as_millis() / 100).max(1) as u64);
        self.bar.set_position(0);
        self.bar.reset_elapsed();
        self.start.set(Some((Instant::now(), Duration::ZERO)));
    }

    pub fn held(&self, progress: &[Progress]) {
        if let Some((start, _)) = self.start.get() {
            self.bar
                .set_position((start.elapsed().as_millis() / 100) as u64);
        }
        self.bar.set_message(format!(
            "joined {}, dropped {}",
            sum(progress, |p| p.joined),
            sum(progress, |p| p.dropped)
        ));
    }

    pub fn message(&self, prefix: &'static str) {
        self.start.set(None);
        self.bar.set_prefix(prefix);
    }

    /// Once `refused` (the messages the gateway answered `rate_limited`) is above zero: says once,
    /// on stderr above the bar, that the gateway's rate limit throttles the run.
    pub fn warn_if_rate_limited(&self, refused: u64) {
        if refused > 0 && !self.warned_rate_limit.replace(true) {
            self.bar.suspend(|| eprintln!("{RATE_LIMIT_WARNING}"));
        }
    }

    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
