//! The merged results of a run: one JSON object with `--json`, a short table otherwise.

use std::fmt::{self, Write as _};
use std::io::Write as _;
use std::time::Duration;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::coord::{Address, Pace};
use crate::latency::Summary;
use crate::net::Reasons;
use crate::procfs::{self, Memory, Sample};

/// A server process over the measured window: CPU used, memory at its end.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ServerUsage {
    pub pid: u32,
    /// User + system time over the window, as % of one core (200 = two cores busy).
    pub cpu_percent: f64,
    pub pss_bytes: u64,
    pub rss_bytes: u64,
}

impl ServerUsage {
    pub fn between(before: &[Sample], after: &[Sample], elapsed: Duration) -> Vec<ServerUsage> {
        before
            .iter()
            .zip(after)
            .map(|(b, a)| ServerUsage {
                pid: a.pid,
                cpu_percent: procfs::cpu_percent(b.cpu_ticks, a.cpu_ticks, elapsed),
                pss_bytes: a.memory.pss_bytes,
                rss_bytes: a.memory.rss_bytes,
            })
            .collect()
    }
}

/// Server memory before any connection and once all had joined, summed over the server pids.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct MemoryUsage {
    pub before: Memory,
    pub joined: Memory,
    /// `(joined - before) / connections joined`, in bytes.
    pub pss_per_connection: f64,
    pub rss_per_connection: f64,
}

impl MemoryUsage {
    pub fn new(before: &[Sample], joined: &[Sample], connections: u64) -> Option<MemoryUsage> {
        if before.is_empty() {
            return None;
        }
        let sum = |samples: &[Sample]| {
            samples.iter().fold(Memory::default(), |acc, s| Memory {
                rss_bytes: acc.rss_bytes + s.memory.rss_bytes,
                pss_bytes: acc.pss_bytes + s.memory.pss_bytes,
            })
        };
        let (before, joined) = (sum(before), sum(joined));
        let per = |b: u64, a: u64| (a as f64 - b as f64) / connections.max(1) as f64;
        Some(MemoryUsage {
            before,
            joined,
            pss_per_connection: per(before.pss_bytes, joined.pss_bytes),
            rss_per_connection: per(before.rss_bytes, joined.rss_bytes),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct FanoutResult {
    pub mode: &'static str,
    pub url: String,
    pub connections: u64,
    pub groups: u64,
    /// `group` (add_group, send_to_group) or `uid` (bind_uid, send_to_uid).
    pub address: Address,
    pub senders: u64,
    pub pace: Pace,
    pub payload_bytes: usize,
    pub warmup_secs: f64,
    pub duration_secs: f64,
    pub processes: u64,
    pub source_ips: Vec<String>,
    pub connections_joined: u64,
    pub connections_failed: u64,
    pub connections_dropped: u64,
    pub messages_sent: u64,
    /// Sent with a timestamp inside the measured window.
    pub messages_sent_measured: u64,
    pub deliveries_received: u64,
    /// Messages sent times the joined members of their group.
    pub deliveries_expected: u64,
    /// Received inside the measured window.
    pub deliveries_measured: u64,
    pub deliveries_per_sec: f64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub unexpected: u64,
    pub server_errors: u64,
    /// The server errors that were `rate_limited`: the gateway's per-connection rate limit.
    pub rate_limited: u64,
    pub first_server_error: Option<String>,
    /// Publish to receive, of the messages sent in the measured window, in microseconds.
    pub latency_us: Summary,
    /// Every message sent arrived (or its receiver was gone) before the drain timeout.
    pub drain_complete: bool,
    pub failures: Reasons,
    pub drops: Reasons,
    pub servers: Vec<ServerUsage>,
}

#[derive(Debug, Clone, Serialize)]
pub struct IdleResult {
    pub mode: &'static str,
    pub url: String,
    pub connections: u64,
    pub groups: u64,
    pub hold_secs: f64,
    pub processes: u64,
    pub source_ips: Vec<String>,
    pub connections_joined: u64,
    pub connections_failed: u64,
    /// Closed by the server or failed after joining, before the end of the hold.
    pub connections_dropped: u64,
    /// From the first connect to the last join ack.
    pub connect_secs: f64,
    pub joins_per_sec: f64,
    pub verify_groups: u64,
    /// Members of the verification groups still connected, and how many got the message.
    pub verify_expected: u64,
    pub verify_received: u64,
    pub unexpected: u64,
    /// Summed over the server pids; absent without --server-pid.
    pub memory: Option<MemoryUsage>,
    /// CPU over the hold, memory at its end.
    pub servers: Vec<ServerUsage>,
    pub failures: Reasons,
    pub drops: Reasons,
}

/// A run that went to its end, its report printed, but is broken: what broke it. `main` exits 2.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broken(pub Vec<String>);

impl fmt::Display for Broken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "broken run: {}", self.0.join(", "))
    }
}

impl std::error::Error for Broken {}

/// The connections that failed to join or were dropped, as problems of a run.
fn connection_problems(connections: u64, failed: u64, dropped: u64) -> Vec<String> {
    let mut problems = Vec::new();
    if failed > 0 {
        problems.push(format!(
            "{failed} of {connections} connections failed to join"
        ));
    }
    if dropped > 0 {
        problems.push(format!("{dropped} connections dropped"));
    }
    problems
}

/// The run's outcome once its report is out: [`Broken`] when there are `problems`.
pub fn verdict(problems: Vec<String>) -> Result<()> {
    if problems.is_empty() {
        Ok(())
    } else {
        Err(Broken(problems).into())
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn ms(micros: u64) -> String {
    format!("{:.3} ms", micros as f64 / 1000.0)
}

fn reasons(out: &mut String, title: &str, reasons: &Reasons) {
    for (reason, count) in reasons.iter() {
        let _ = writeln!(out, "{title:<13} {count} x {reason}");
    }
}

fn servers(out: &mut String, servers: &[ServerUsage], window: &str) {
    for s in servers {
        let _ = writeln!(
            out,
            "server {:<6} cpu {:.1} % of one core over the {window}, pss {}, rss {}",
            s.pid,
            s.cpu_percent,
            mib(s.pss_bytes),
            mib(s.rss_bytes)
        );
    }
}

fn emit(json: bool, value: &impl Serialize, table: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer(&mut out, value).context("cannot write the report")?;
        writeln!(out).context("cannot write the report")?;
    } else {
        out.write_all(table.as_bytes())
            .context("cannot write the report")?;
    }
    out.flush().context("cannot write the report")
}

impl FanoutResult {
    pub fn print(&self, json: bool) -> Result<()> {
        emit(json, self, &self.table())
    }

    /// What makes the run broken (loss, duplicates, errors, a drain timeout); empty when clean.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = connection_problems(
            self.connections,
            self.connections_failed,
            self.connections_dropped,
        );
        if self.lost > 0 {
            problems.push(format!(
                "{} of {} deliveries lost",
                self.lost, self.deliveries_expected
            ));
        }
        for (count, what) in [
            (self.duplicated, "duplicated"),
            (self.reordered, "reordered"),
            (self.unexpected, "unexpected frames"),
        ] {
            if count > 0 {
                problems.push(format!("{count} {what}"));
            }
        }
        if self.server_errors > 0 {
            let mut text = format!("{} server errors", self.server_errors);
            if self.rate_limited > 0 {
                text.push_str(&format!(" ({} rate_limited)", self.rate_limited));
            }
            problems.push(text);
        }
        if !self.drain_complete {
            problems.push("the drain timed out".to_owned());
        }
        problems
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let pace = match self.pace {
            Pace::Window(n) => format!("as fast as delivered, window {n}"),
            Pace::Rate(r) => format!("{r} msgs/s per sender"),
        };
        let targets = match self.address {
            Address::Group => "groups",
            Address::Uid => "uids (bind_uid, send_to_uid)",
        };
        let _ = writeln!(
            out,
            "fanout        {} connections, {} {targets}, {} senders ({pace}), {}-byte messages",
            self.connections, self.groups, self.senders, self.payload_bytes
        );
        let _ = writeln!(
            out,
            "run           {} s warmup + {} s measured, {} process(es), source {}",
            self.warmup_secs,
            self.duration_secs,
            self.processes,
            if self.source_ips.is_empty() {
                "chosen by the kernel".to_owned()
            } else {
                self.source_ips.join(",")
            }
        );
        let _ = writeln!(
            out,
            "connections   joined {}, failed {}, dropped {}",
            self.connections_joined, self.connections_failed, self.connections_dropped
        );
        let _ = writeln!(
            out,
            "messages      sent {} ({} in the measured window)",
            self.messages_sent, self.messages_sent_measured
        );
        let _ = writeln!(
            out,
            "deliveries    {:.0} /s measured; received {} of {} expected",
            self.deliveries_per_sec, self.deliveries_received, self.deliveries_expected
        );
        let _ = writeln!(
            out,
            "errors        lost {}, duplicated {}, reordered {}, unexpected {}, server errors {}{}",
            self.lost,
            self.duplicated,
            self.reordered,
            self.unexpected,
            self.server_errors,
            if self.drain_complete {
                ""
            } else {
                " (drain timed out)"
            }
        );
        if let Some(first) = &self.first_server_error {
            let _ = writeln!(out, "first error   {first}");
        }
        if self.rate_limited > 0 {
            let _ = writeln!(
                out,
                "rate limit    {} messages refused: the gateway's --max-messages-per-second \
                 throttled this run",
                self.rate_limited
            );
        }
        let l = &self.latency_us;
        let _ = writeln!(
            out,
            "latency       p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  ({} samples)",
            ms(l.p50),
            ms(l.p90),
            ms(l.p99),
            ms(l.p999),
            ms(l.max),
            l.count
        );
        servers(&mut out, &self.servers, "measured window");
        reasons(&mut out, "failed", &self.failures);
        reasons(&mut out, "dropped", &self.drops);
        out
    }
}

impl IdleResult {
    pub fn print(&self, json: bool) -> Result<()> {
        emit(json, self, &self.table())
    }

    /// What makes the run broken (connections lost, verification missed); empty when clean.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = connection_problems(
            self.connections,
            self.connections_failed,
            self.connections_dropped,
        );
        if self.verify_received < self.verify_expected {
            problems.push(format!(
                "{} of {} members did not get the verification message",
                self.verify_expected - self.verify_received,
                self.verify_expected
            ));
        }
        if self.unexpected > 0 {
            problems.push(format!("{} unexpected frames", self.unexpected));
        }
        problems
    }

    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "idle          {} connections over {} groups, held {} s, {} process(es), source {}",
            self.connections,
            self.groups,
            self.hold_secs,
            self.processes,
            if self.source_ips.is_empty() {
                "chosen by the kernel".to_owned()
            } else {
                self.source_ips.join(",")
            }
        );
        let _ = writeln!(
            out,
            "connections   joined {}, failed {}, dropped {} (joined in {:.1} s, {:.0} /s)",
            self.connections_joined,
            self.connections_failed,
            self.connections_dropped,
            self.connect_secs,
            self.joins_per_sec
        );
        let verdict = if self.verify_expected == 0 {
            "nothing to check"
        } else if self.verify_received == self.verify_expected {
            "ok"
        } else {
            "FAILED"
        };
        let _ = writeln!(
            out,
            "verify        {verdict}: {} of {} members of {} group(s) got the message",
            self.verify_received, self.verify_expected, self.verify_groups,
        );
        if let Some(m) = &self.memory {
            let _ = writeln!(
                out,
                "server memory pss {} -> {}, rss {} -> {}",
                mib(m.before.pss_bytes),
                mib(m.joined.pss_bytes),
                mib(m.before.rss_bytes),
                mib(m.joined.rss_bytes)
            );
            let _ = writeln!(
                out,
                "per conn      pss {:.0} bytes ({:.2} KiB), rss {:.0} bytes",
                m.pss_per_connection,
                m.pss_per_connection / 1024.0,
                m.rss_per_connection
            );
        }
        servers(&mut out, &self.servers, "hold");
        reasons(&mut out, "failed", &self.failures);
        reasons(&mut out, "dropped", &self.drops);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(pid: u32, ticks: u64, kib: u64) -> Sample {
        Sample {
            pid,
            cpu_ticks: ticks,
            memory: Memory {
                rss_bytes: kib * 1024 + 4096,
                pss_bytes: kib * 1024,
            },
        }
    }

    #[test]
    fn server_usage_over_a_window() {
        let usage = ServerUsage::between(
            &[sample(1, 100, 10), sample(2, 0, 10)],
            &[sample(1, 250, 20), sample(2, 50, 30)],
            Duration::from_secs(1),
        );
        assert_eq!(usage.len(), 2);
        assert_eq!(usage[0].cpu_percent, 150.0);
        assert_eq!(usage[1].cpu_percent, 50.0);
        assert_eq!(usage[1].pss_bytes, 30 * 1024);
    }

    #[test]
    fn memory_per_connection_sums_the_servers() {
        let m = MemoryUsage::new(
            &[sample(1, 0, 1000), sample(2, 0, 1000)],
            &[sample(1, 0, 2000), sample(2, 0, 3000)],
            1024,
        )
        .unwrap();
        assert_eq!(m.before.pss_bytes, 2000 * 1024);
        assert_eq!(m.pss_per_connection, 3000.0);
        assert_eq!(m.rss_per_connection, 3000.0);
        assert_eq!(MemoryUsage::new(&[], &[], 10), None);
    }

    fn fanout_result() -> FanoutResult {
        FanoutResult {
            mode: "fanout",
            url: "ws://127.0.0.1:1234".to_owned(),
            connections: 100,
            groups: 10,
            address: Address::Group,
            senders: 10,
            pace: Pace::Window(64),
            payload_bytes: 64,
            warmup_secs: 2.0,
            duration_secs: 10.0,
            processes: 1,
            source_ips: Vec::new(),
            connections_joined: 100,
            connections_failed: 0,
            connections_dropped: 0,
            messages_sent: 7054,
            messages_sent_measured: 5000,
            deliveries_received: 70540,
            deliveries_expected: 70540,
            deliveries_measured: 50000,
            deliveries_per_sec: 5000.0,
            lost: 0,
            duplicated: 0,
            reordered: 0,
            unexpected: 0,
            server_errors: 0,
            rate_limited: 0,
            first_server_error: None,
            latency_us: Summary::default(),
            drain_complete: true,
            failures: Reasons::default(),
            drops: Reasons::default(),
            servers: Vec::new(),
        }
    }

    #[test]
    fn a_clean_fanout_run_passes() {
        let result = fanout_result();
        assert!(result.problems().is_empty());
        verdict(result.problems()).unwrap();
        assert!(!result.table().contains("rate limit"));
    }

    #[test]
    fn the_address_mode_is_reported() {
        let group = fanout_result();
        assert!(group
            .table()
            .contains("100 connections, 10 groups, 10 senders"));
        let json = serde_json::to_value(&group).unwrap();
        assert_eq!(json["address"], "group");
        let uid = FanoutResult {
            address: Address::Uid,
            ..fanout_result()
        };
        assert!(uid.table().contains("10 uids (bind_uid, send_to_uid)"));
        assert_eq!(serde_json::to_value(&uid).unwrap()["address"], "uid");
    }

    #[test]
    fn loss_and_rate_limited_errors_break_a_fanout_run() {
        let result = FanoutResult {
            deliveries_received: 40395,
            lost: 30145,
            server_errors: 1000,
            rate_limited: 1000,
            first_server_error: Some(
                r#"{"cmd":"error","code":"rate_limited","reason":"more than 100 messages per second"}"#
                    .to_owned(),
            ),
            ..fanout_result()
        };
        assert_eq!(
            result.problems(),
            [
                "30145 of 70540 deliveries lost",
                "1000 server errors (1000 rate_limited)"
            ]
        );
        let err = verdict(result.problems()).unwrap_err();
        assert!(err.is::<Broken>());
        assert_eq!(
            err.to_string(),
            "broken run: 30145 of 70540 deliveries lost, 1000 server errors (1000 rate_limited)"
        );
        let table = result.table();
        assert!(
            table.contains(
                "rate limit    1000 messages refused: the gateway's --max-messages-per-second"
            ),
            "{table}"
        );
        let json = serde_json::to_value(&result).unwrap();
        assert_eq!(json["rate_limited"], 1000);
    }

    #[test]
    fn every_kind_of_fanout_problem_is_named() {
        let result = FanoutResult {
            connections_failed: 2,
            connections_dropped: 1,
            duplicated: 3,
            reordered: 4,
            unexpected: 5,
            server_errors: 6,
            drain_complete: false,
            ..fanout_result()
        };
        assert_eq!(
            result.problems(),
            [
                "2 of 100 connections failed to join",
                "1 connections dropped",
                "3 duplicated",
                "4 reordered",
                "5 unexpected frames",
                "6 server errors",
                "the drain timed out"
            ]
        );
    }

    #[test]
    fn idle_problems() {
        let clean = IdleResult {
            mode: "idle",
            url: "ws://127.0.0.1:1234".to_owned(),
            connections: 1000,
            groups: 100,
            hold_secs: 1.0,
            processes: 1,
            source_ips: Vec::new(),
            connections_joined: 1000,
            connections_failed: 0,
            connections_dropped: 0,
            connect_secs: 0.5,
            joins_per_sec: 2000.0,
            verify_groups: 3,
            verify_expected: 30,
            verify_received: 30,
            unexpected: 0,
            memory: None,
            servers: Vec::new(),
            failures: Reasons::default(),
            drops: Reasons::default(),
        };
        assert!(clean.problems().is_empty());
        let broken = IdleResult {
            connections_joined: 990,
            connections_failed: 10,
            connections_dropped: 1,
            verify_expected: 29,
            verify_received: 20,
            unexpected: 2,
            ..clean
        };
        assert_eq!(
            broken.problems(),
            [
                "10 of 1000 connections failed to join",
                "1 connections dropped",
                "9 of 29 members did not get the verification message",
                "2 unexpected frames"
            ]
        );
    }
}
