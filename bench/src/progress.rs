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

/// `n` in at most 5 characters, to 3 digits (cut, not rounded): 987, 1.23k, 45.6k, 789k, 1.23M.
fn compact(n: u64) -> String {
    const UNITS: [&str; 6] = ["k", "M", "G", "T", "P", "E"];
    if n < 1000 {
        return n.to_string();
    }
    let mut scale = 1000u64;
    let mut unit = 0;
    while n / scale >= 1000 && unit + 1 < UNITS.len() {
        scale *= 1000;
        unit += 1;
    }
    let whole = n / scale;
    let fraction = u128::from(n % scale);
    let unit = UNITS[unit];
    match whole {
        0..=9 => format!("{whole}.{:02}{unit}", fraction * 100 / u128::from(scale)),
        10..=99 => format!("{whole}.{}{unit}", fraction * 10 / u128::from(scale)),
        _ => format!("{whole}{unit}"),
    }
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
        Bar::with_target(target)
    }

    fn with_target(target: ProgressDrawTarget) -> Bar {
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
            .set_style(style("{prefix:>9} [{bar:20}] {pos}/{len} {wide_msg}"));
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
            .set_style(style("{prefix:>9} [{bar:20}] {wide_msg}"));
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
        // Counts in at most 5 characters each keep the line within 80 columns.
        self.bar.set_message(format!(
            "{} deliveries/s, sent {}, dropped {}",
            compact(self.rate.get() as u64),
            compact(sum(progress, |p| p.sent)),
            compact(sum(progress, |p| p.dropped))
        ));
    }

    pub fn draining(&self) {
        self.start.set(None);
        self.bar.set_prefix("draining");
    }

    /// Idle: the bar is the hold, in tenths of a second.
    pub fn holding(&self, hold: Duration) {
        self.bar
            .set_style(style("{prefix:>9} [{bar:20}] {elapsed} {wide_msg}"));
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

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::{Arc, Mutex};

    use indicatif::TermLike;

    use super::*;

    /// An 80-column terminal that keeps everything written to it.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<String>>);

    impl Screen {
        /// The last line drawn.
        fn last(&self) -> String {
            let text = self.0.lock().unwrap();
            let mut lines = text.rsplit(['\r', '\n']);
            lines
                .find(|l| !l.trim().is_empty())
                .unwrap_or_default()
                .to_owned()
        }
    }

    impl TermLike for Screen {
        fn width(&self) -> u16 {
            80
        }
        fn move_cursor_up(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> io::Result<()> {
            Ok(())
        }
        fn write_line(&self, line: &str) -> io::Result<()> {
            self.write_str(&format!("{line}\n"))
        }
        fn write_str(&self, text: &str) -> io::Result<()> {
            self.0.lock().unwrap().push_str(text);
            Ok(())
        }
        fn clear_line(&self) -> io::Result<()> {
            let mut text = self.0.lock().unwrap();
            let start = text.rfind('\n').map_or(0, |at| at + 1);
            text.truncate(start);
            Ok(())
        }
        fn flush(&self) -> io::Result<()> {
            Ok(())
        }
    }

    /// The line drawn last: it must hold `whole` and fit in 80 columns.
    fn assert_fits(screen: &Screen, whole: &str) {
        let line = screen.last();
        let line = line.trim_end();
        assert!(line.contains(whole), "{whole:?} is cut: {line:?}");
        assert!(
            line.chars().count() < 80,
            "{} columns: {line:?}",
            line.chars().count()
        );
    }

    #[test]
    fn compact_counts() {
        let cases = [
            (0, "0"),
            (999, "999"),
            (1_000, "1.00k"),
            (1_234, "1.23k"),
            (9_999, "9.99k"),
            (45_678, "45.6k"),
            (999_999, "999k"),
            (1_000_000, "1.00M"),
            (3_412_967, "3.41M"),
            (123_456_789_012, "123G"),
            (u64::MAX, "18.4E"),
        ];
        for (n, text) in cases {
            assert_eq!(compact(n), text, "{n}");
        }
    }

    #[test]
    fn progress_lines_fit_80_columns() {
        let screen = Screen::default();
        let bar = Bar::with_target(ProgressDrawTarget::term_like(Box::new(screen.clone())));
        // Large figures, each at its widest: a long run of many connections.
        let p = [Progress {
            joined: 1_000_000,
            failed: 1_000_000,
            dropped: 99_999,
            sent: 12_345_678_901,
            delivered: 987_654_321_098,
            rate_limited: 0,
        }];
        bar.connecting(2_000_000);
        bar.connected(&p);
        assert_fits(&screen, "2000000/2000000 failed 1000000");

        bar.running(Instant::now(), Duration::ZERO, Duration::from_secs(60));
        bar.rate.set(12_345_678.0);
        bar.delivering(&p);
        assert_fits(&screen, "measuring [");
        assert_fits(&screen, "12.3M deliveries/s, sent 12.3G, dropped 99.9k");

        bar.holding(Duration::from_secs(3600));
        bar.held(&p);
        assert_fits(&screen, "joined 1000000, dropped 99999");

        for line in RATE_LIMIT_WARNING.lines() {
            assert!(line.len() < 80, "{line:?}");
        }
    }
}
