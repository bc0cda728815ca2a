//! The server's CPU time and memory, read from `/proc` (Linux). The parsers are pure; [`sample`]
//! reads the files.

use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use serde::Serialize;

/// Clock ticks per second in `/proc/PID/stat` (`USER_HZ`: 100 on every Linux architecture that
/// matters here; reading `sysconf(_SC_CLK_TCK)` would need `unsafe`).
const TICKS_PER_SEC: u64 = 100;

/// User plus system CPU time of a process, in clock ticks (fields 14 and 15 of `/proc/PID/stat`).
pub fn parse_cpu_ticks(stat: &str) -> Result<u64> {
    // Field 2 (the command name) is in parentheses and may itself hold spaces and parentheses.
    let rest = stat
        .rfind(')')
        .map(|at| &stat[at + 1..])
        .context("no `)` after the command name")?;
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let mut fields = rest.split_whitespace().skip(11);
    let mut next = |name: &str| -> Result<u64> {
        fields
            .next()
            .with_context(|| format!("no {name} field"))?
            .parse::<u64>()
            .with_context(|| format!("{name} is not a number"))
    };
    let utime = next("utime")?;
    let stime = next("stime")?;
    Ok(utime + stime)
}

/// Resident memory of a process from `/proc/PID/smaps_rollup`, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Memory {
    pub rss_bytes: u64,
    pub pss_bytes: u64,
}

pub fn parse_smaps_rollup(text: &str) -> Result<Memory> {
    let field = |name: &str| -> Result<u64> {
        let line = text
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .with_context(|| format!("no {name} line"))?;
        let kb = line
            .trim()
            .strip_suffix("kB")
            .with_context(|| format!("{name} is not in kB"))?
            .trim()
            .parse::<u64>()
            .with_context(|| format!("{name} is not a number"))?;
        Ok(kb * 1024)
    };
    Ok(Memory {
        rss_bytes: field("Rss")?,
        pss_bytes: field("Pss")?,
    })
}

/// The first and last port of `/proc/sys/net/ipv4/ip_local_port_range`.
pub fn parse_port_range(text: &str) -> Result<(u16, u16)> {
    let mut ports = text.split_whitespace().map(str::parse::<u16>);
    match (ports.next(), ports.next()) {
        (Some(Ok(low)), Some(Ok(high))) if low <= high => Ok((low, high)),
        _ => bail!("not a port range: {text:?}"),
    }
}

/// How many ephemeral ports one source address has towards one destination.
pub fn ephemeral_ports() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let (low, high) = parse_port_range(&text).ok()?;
    Some(u64::from(high - low) + 1)
}

/// One reading of a server process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sample {
    pub pid: u32,
    pub cpu_ticks: u64,
    pub memory: Memory,
}

pub fn sample(pid: u32) -> Result<Sample> {
    let read = |file: &str| {
        let path = format!("/proc/{pid}/{file}");
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))
    };
    let cpu_ticks = parse_cpu_ticks(&read("stat")?)
        .with_context(|| format!("cannot parse /proc/{pid}/stat"))?;
    let memory = parse_smaps_rollup(&read("smaps_rollup")?)
        .with_context(|| format!("cannot parse /proc/{pid}/smaps_rollup"))?;
    Ok(Sample {
        pid,
        cpu_ticks,
        memory,
    })
}

pub fn sample_all(pids: &[u32]) -> Result<Vec<Sample>> {
    pids.iter().map(|&pid| sample(pid)).collect()
}

/// CPU used between two samples as a percentage of one core (200 = two cores busy).
pub fn cpu_percent(before: u64, after: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs <= 0.0 {
        return 0.0;
    }
    let ticks = after.saturating_sub(before) as f64;
    ticks / TICKS_PER_SEC as f64 / secs * 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT: &str = "4242 (gate way (w)) S 1 4242 4242 0 -1 4194560 1234 0 0 0 \
                        250 75 0 0 20 0 3 0 123456 987654321 2345 18446744073709551615 \
                        1 1 0 0 0 0 0 4096 17415 0 0 0 17 1 0 0 0 0 0\n";

    const ROLLUP: &str = "\
55d0c0a00000-7ffd5c1ff000 ---p 00000000 00:00 0                          [rollup]
Rss:               12288 kB
Pss:                9876 kB
Pss_Dirty:          8000 kB
Pss_Anon:           7000 kB
Shared_Clean:       2048 kB
Swap:                  0 kB
SwapPss:               0 kB
";

    #[test]
    fn cpu_ticks_from_stat() {
        assert_eq!(parse_cpu_ticks(STAT).unwrap(), 325);
        assert!(parse_cpu_ticks("4242 (x) S 1 2").is_err());
        assert!(parse_cpu_ticks("no parenthesis").is_err());
    }

    #[test]
    fn memory_from_smaps_rollup() {
        assert_eq!(
            parse_smaps_rollup(ROLLUP).unwrap(),
            Memory {
                rss_bytes: 12288 * 1024,
                pss_bytes: 9876 * 1024,
            }
        );
        assert!(parse_smaps_rollup("Rss: 1 kB\n").is_err());
        assert!(parse_smaps_rollup("Rss: 1 MB\nPss: 1 kB\n").is_err());
    }

    #[test]
    fn port_range() {
        assert_eq!(parse_port_range("32768\t60999\n").unwrap(), (32768, 60999));
        assert!(parse_port_range("60999 32768").is_err());
        assert!(parse_port_range("1").is_err());
    }

    #[test]
    fn cpu_percent_of_one_core() {
        assert_eq!(cpu_percent(100, 250, Duration::from_secs(1)), 150.0);
        assert_eq!(cpu_percent(100, 150, Duration::from_secs(2)), 25.0);
        assert_eq!(cpu_percent(100, 90, Duration::from_secs(1)), 0.0);
        assert_eq!(cpu_percent(0, 90, Duration::ZERO), 0.0);
    }

    #[test]
    fn reads_our_own_process() {
        let me = sample(std::process::id()).unwrap();
        assert!(me.memory.rss_bytes > 0);
        assert!(me.memory.pss_bytes > 0);
    }
}
