//! The flags of `push-bench fanout` and `push-bench idle`, and their checks.

use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Args, Parser, Subcommand};

use crate::coord::{Address, Pace};
use crate::payload;

const BENCH_HELP: &str = "\
How a run goes:
  1. connect and join: every connection joins its group (fanout --address uid: binds its uid)
     with a req_id and waits for the ack;
     nothing is measured until every join in every process is acknowledged (or has failed)
  2. fanout: warmup (not recorded), then the measured window, then a drain of up to --drain
     until every message sent has arrived; idle: the hold, then one message per verification
     group, which every member must receive
  3. the connections close cleanly (code 1000) and the report is printed

Scale: one process holds as many connections as its open-files hard limit allows (the soft
limit is raised to it); more connections are spread over copies of this program
(--processes, spawned and coordinated over their stdin/stdout). Each source address has about
28k ephemeral ports towards the server, so past that connect from several 127.0.0.x addresses
(--source-ip-count). Load goes only where --url points: keep it on this machine.

Server figures (--server-pid, repeatable): CPU is utime+stime from /proc/PID/stat over the
window, in % of one core; memory is Pss and Rss from /proc/PID/smaps_rollup. Measure memory
against a freshly started server: what earlier runs freed stays with its allocator and hides
the growth.

Examples:
  # 1,000 connections, 10 groups, one sender each, as fast as deliveries keep up
  push-bench --url ws://127.0.0.1:1234 fanout --server-pid PID
  # 10,000 connections, 100 groups, 100 senders, over two processes
  push-bench fanout --connections 10000 --groups 100 --senders 100 --processes 2
  # latency at a steady 40,000 deliveries/s (10 senders x 40 msgs/s x 100 members)
  push-bench fanout --rate 40 --duration 30s
  # 100,000 idle connections for a minute, against several gateways sharing port 1234
  push-bench idle --connections 100000 --hold 60s --server-pid PID1,PID2,PID3,PID4,PID5,PID6
  # a send to one connection's uid against a send to a one-member group (run both)
  push-bench fanout --connections 10000 --groups 10000 --senders 1000 --rate 5 --address uid
  # one JSON object per run, for scripts
  push-bench fanout --json | jq .deliveries_per_sec

Exit codes:
  0  the run is clean: every connection joined and stayed; fanout: nothing lost, duplicated,
     reordered or unexpected, no server error, the drain completed; idle: every member still
     connected got the verification message
  1  error: bad arguments, the gateway cannot be reached, no connection could join, an agent
     failed (no report)
  2  broken run: the report is printed, and `error: broken run: ...` on stderr says what broke
     it (deliveries lost, server errors, ...)";

pub const DEFAULT_URL: &str = "ws://127.0.0.1:1234";

/// Load generator of the group push gateway: delivery throughput, latency and loss (`fanout`),
/// or the cost of idle connections (`idle`).
///
/// `push-bench fanout --help` and `push-bench idle --help` tell what each measures and how.
#[derive(Debug, Parser)]
#[command(name = "push-bench", version, after_long_help = BENCH_HELP)]
pub struct Cli {
    /// WebSocket URL of the gateway.
    #[arg(long, global = true, env = "PUSH_BENCH_URL", default_value = DEFAULT_URL)]
    pub url: String,

    /// How long to wait for the WebSocket handshake, in seconds.
    #[arg(long, global = true, value_name = "SECS", default_value = "5", value_parser = parse_positive)]
    pub connect_timeout: Duration,

    #[command(subcommand)]
    pub mode: BenchMode,
}

#[derive(Debug, Subcommand)]
pub enum BenchMode {
    /// Senders publish to groups; every member reports throughput, latency, loss, duplicates.
    ///
    /// Connection i joins group i % --groups. Connections 0..--senders also send: sender s sends
    /// to its own group s % --groups, so it receives its own messages back, which is what paces
    /// it: by default it sends as fast as deliveries keep up, with at most --window messages in
    /// flight; with --rate at a steady rate instead. Each message is --payload bytes of text
    /// carrying the sender, a sequence number and the send time; receivers read those
    /// fixed-width fields (no JSON parse), record publish-to-receive latency in an HdrHistogram
    /// and count gaps that never fill (lost) and repeats (duplicated).
    ///
    /// With --address uid, connection i binds the uid named like its group instead of joining
    /// it, and senders send `send_to_uid` to that uid instead of `send_to_group`: the same run
    /// through the cluster-wide uid API (`--groups` equal to `--connections` compares a send to
    /// one connection's uid with a send to a one-member group).
    ///
    /// A gateway that limits each connection's message rate (gateway --max-messages-per-second)
    /// refuses a fast sender's messages and then closes it: turn the limit off (0) for throughput
    /// runs. The first refusal prints a warning at once; refused messages show as server errors
    /// (with the first one quoted), as `rate limit` in the report and as lost, and the run exits
    /// 2.
    ///
    /// Reports messages sent, deliveries received and expected (sent x members of the group),
    /// deliveries per second over the measured window, lost, duplicated, latency
    /// p50/p90/p99/p99.9/max of the messages sent in the window, and per --server-pid the CPU
    /// over the window and memory at its end.
    #[command(after_long_help = BENCH_HELP)]
    Fanout(FanoutArgs),
    /// Opens many connections, joins each to a group, holds them, checks they still work.
    ///
    /// Connection i joins group i % --groups (with --connect-concurrency handshakes in flight
    /// per process), then only reads (so the server's pings are answered) for --hold. Then one
    /// message goes to each of the first --verify-groups groups, and every member still
    /// connected must receive it. Reports connections joined, failed, dropped during the hold
    /// (closed by the server, or errors), and with --server-pid the server's Pss and Rss before
    /// connecting and once all joined, and their growth per connection.
    #[command(after_long_help = BENCH_HELP)]
    Idle(IdleArgs),
    /// Internal: one process of a multi-process run, driven over its stdin and stdout.
    #[command(hide = true, name = "agent")]
    Agent,
}

#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Processes to spread the connections over: this one plus P-1 copies of it. Default: as few
    /// as the open-files limit allows (one per ~20k connections here).
    #[arg(long, value_name = "P", value_parser = clap::value_parser!(u64).range(1..=256))]
    pub processes: Option<u64>,

    /// Source addresses to connect from, used round-robin (IPv4, comma-separated).
    #[arg(
        long,
        value_name = "IP,...",
        value_delimiter = ',',
        conflicts_with = "source_ip_count"
    )]
    pub source_ips: Vec<Ipv4Addr>,

    /// Connect from 127.0.0.1 ..= 127.0.0.K, round-robin. Without this or --source-ips: as many
    /// 127.0.0.x as the ephemeral port range needs when the server is on loopback (one, left to
    /// the kernel, up to ~25k connections); otherwise the kernel chooses.
    #[arg(long, value_name = "K", value_parser = clap::value_parser!(u8).range(1..=254))]
    pub source_ip_count: Option<u8>,

    /// Server process to measure (CPU and memory from /proc). Repeat, or separate with commas,
    /// for several gateway processes.
    #[arg(long = "server-pid", value_name = "PID", value_delimiter = ',')]
    pub server_pids: Vec<u32>,

    /// Print the result as one JSON object on stdout (and no progress bar).
    #[arg(long)]
    pub json: bool,

    /// WebSocket handshakes, with their join, in flight at once per process.
    #[arg(long, value_name = "N", default_value_t = 500, value_parser = clap::value_parser!(u64).range(1..))]
    pub connect_concurrency: u64,

    /// Give up if the connections have not all joined or failed within this time (seconds, or
    /// a duration such as 2m). Each connection also has --connect-timeout.
    #[arg(long, value_name = "DURATION", default_value = "120s", value_parser = parse_positive)]
    pub setup_timeout: Duration,
}

#[derive(Debug, Args)]
pub struct FanoutArgs {
    /// Connections in all; connection i joins group i % GROUPS.
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub connections: u64,

    /// Groups the connections are spread over.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub groups: u64,

    /// Connections that also send: sender s is connection s and sends to its group, s % GROUPS.
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub senders: u64,

    /// How connections are addressed. `group`: connection i joins group i % GROUPS
    /// (`add_group`) and senders `send_to_group` it. `uid`: connection i binds the uid of the
    /// same name instead (`bind_uid`, which needs a gateway in open mode) and senders
    /// `send_to_uid` it; everything else (pacing, stamping, counting) is the same, so the two
    /// compare. With --groups equal to --connections every group or uid has one connection.
    #[arg(long, value_enum, value_name = "MODE", default_value_t = Address::Group)]
    pub address: Address,

    /// With --address group: join with positions (`"positioned":true`, for groups the gateway
    /// keeps a history of with `--history bench-=SIZE,TTL`): each message then arrives as
    /// `{"cmd":"message",...,"message":M}` and M is checked as usual.
    #[arg(long)]
    pub positioned: bool,

    /// Send at this steady rate, in messages per second per sender (for latency at a given
    /// load), instead of as fast as deliveries keep up.
    #[arg(long, value_name = "MSGS_PER_SEC", conflicts_with = "window", value_parser = parse_rate)]
    pub rate: Option<f64>,

    /// With --rate: start every sender at the same instant, so their messages arrive at the
    /// server in bursts. By default sender s of N starts s/N of a period later, which is what a
    /// steady load from independent senders looks like.
    #[arg(long, requires = "rate")]
    pub aligned: bool,

    /// Make about this percentage of the receiving connections stop reading right after they
    /// join (deliberately slow consumers, e.g. 1). They are left out of the expected
    /// deliveries; the report says how each one ended (the gateway should close them with 4001
    /// while everyone else keeps receiving everything).
    #[arg(long, value_name = "PERCENT", default_value_t = 0.0)]
    pub slow_percent: f64,

    /// Default mode, as fast as deliveries keep up: each sender keeps at most N messages in
    /// flight, that is sent and neither received back yet nor refused with an error reply.
    #[arg(long, value_name = "N", default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..))]
    pub window: u64,

    /// How long to measure (seconds, or a duration such as 500ms or 1m).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_positive)]
    pub duration: Duration,

    /// Sending before the measured window, not recorded; 0 for none.
    #[arg(long, value_name = "DURATION", default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,

    /// Bytes of each message as members receive it (at least 33: the fixed-width header).
    #[arg(long, value_name = "BYTES", default_value_t = 64)]
    pub payload: usize,

    /// Once sending stops, wait at most this long for the messages in flight; what has not
    /// arrived by then is lost.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub drain: Duration,

    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct IdleArgs {
    /// Connections to open and hold.
    #[arg(long, value_name = "N", default_value_t = 10_000)]
    pub connections: u64,

    /// Groups the connections are spread over (connection i joins group i % GROUPS).
    #[arg(long, value_name = "N", default_value_t = 1000)]
    pub groups: u64,

    /// How long to hold the joined connections (seconds, or a duration such as 1m).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_positive)]
    pub hold: Duration,

    /// Groups that get one message after the hold, which each of their members must receive.
    #[arg(long, value_name = "N", default_value_t = 3)]
    pub verify_groups: u64,

    #[command(flatten)]
    pub common: CommonArgs,
}

/// Largest payload: the request around it must fit the server's default 64 KiB message limit.
const MAX_PAYLOAD: usize = 60 * 1024;

impl FanoutArgs {
    pub fn pace(&self) -> Pace {
        match self.rate {
            Some(rate) => Pace::Rate(rate),
            None => Pace::Window(self.window),
        }
    }

    pub fn validate(&self) -> Result<()> {
        check_spread(self.connections, self.groups)?;
        if self.senders == 0 || self.senders > self.connections {
            bail!(
                "--senders must be between 1 and --connections ({})",
                self.connections
            );
        }
        if !(0.0..=50.0).contains(&self.slow_percent) {
            bail!("--slow-percent must be between 0 and 50");
        }
        if self.senders >= payload::MAX_SENDERS {
            bail!("--senders must be below {}", payload::MAX_SENDERS);
        }
        if !(payload::MIN_PAYLOAD..=MAX_PAYLOAD).contains(&self.payload) {
            bail!(
                "--payload must be between {} and {MAX_PAYLOAD} bytes",
                payload::MIN_PAYLOAD
            );
        }
        Ok(())
    }
}

impl IdleArgs {
    pub fn validate(&self) -> Result<()> {
        check_spread(self.connections, self.groups)
    }
}

fn check_spread(connections: u64, groups: u64) -> Result<()> {
    if connections == 0 {
        bail!("--connections must be at least 1");
    }
    if groups == 0 || groups > connections {
        bail!("--groups must be between 1 and --connections ({connections})");
    }
    Ok(())
}

/// Seconds (`0.5`, `10`) or a humantime duration (`500ms`, `1m`); zero allowed.
fn parse_duration(text: &str) -> Result<Duration, String> {
    match text.trim().parse::<f64>() {
        Ok(secs) => Duration::try_from_secs_f64(secs)
            .map_err(|e| format!("{text:?} is not a usable number of seconds: {e}")),
        Err(_) => humantime::parse_duration(text).map_err(|_| {
            format!("{text:?} is neither seconds (e.g. 0.5 or 10) nor a duration (e.g. 500ms)")
        }),
    }
}

fn parse_positive(text: &str) -> Result<Duration, String> {
    let duration = parse_duration(text)?;
    if duration.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(duration)
}

fn parse_rate(text: &str) -> Result<f64, String> {
    match text.trim().parse::<f64>() {
        Ok(rate) if rate.is_finite() && rate > 0.0 && rate <= 1e6 => Ok(rate),
        _ => Err(format!(
            "{text:?} is not a rate between 0 (excluded) and 1000000 messages per second"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coord::AGENT_SUBCOMMAND;

    fn parse_cli(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("push-bench").chain(args.iter().copied()))
    }

    fn parse(args: &[&str]) -> Result<BenchMode, clap::Error> {
        parse_cli(args).map(|cli| cli.mode)
    }

    fn fanout(args: &[&str]) -> FanoutArgs {
        match parse(&[&["fanout"], args].concat()).unwrap() {
            BenchMode::Fanout(f) => f,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn fanout_defaults() {
        let f = fanout(&[]);
        assert_eq!((f.connections, f.groups, f.senders), (1000, 10, 10));
        assert_eq!(f.pace(), Pace::Window(64));
        assert_eq!(f.duration, Duration::from_secs(10));
        assert_eq!(f.warmup, Duration::from_secs(2));
        assert_eq!(f.payload, 64);
        assert_eq!(f.common.processes, None);
        assert!(f.common.source_ips.is_empty());
        assert!(!f.common.json);
        assert_eq!(f.address, Address::Group);
        f.validate().unwrap();
    }

    #[test]
    fn fanout_address() {
        assert_eq!(fanout(&["--address", "group"]).address, Address::Group);
        let f = fanout(&[
            "--address",
            "uid",
            "--connections",
            "10000",
            "--groups",
            "10000",
            "--senders",
            "1000",
        ]);
        assert_eq!(f.address, Address::Uid);
        assert_eq!((f.connections, f.groups, f.senders), (10_000, 10_000, 1000));
        // One connection per group (or uid) is allowed.
        f.validate().unwrap();
        for bad in [
            &["--address"][..],
            &["--address", "client"],
            &["--address", "UID"],
            &["--address", "uid,group"],
        ] {
            assert!(parse(&[&["fanout"], bad].concat()).is_err(), "{bad:?}");
        }
        // Only fanout addresses connections.
        assert!(parse(&["idle", "--address", "uid"]).is_err());
    }

    #[test]
    fn fanout_flags() {
        let f = fanout(&[
            "--connections",
            "10000",
            "--groups",
            "100",
            "--senders",
            "100",
            "--rate",
            "40",
            "--duration",
            "1m",
            "--warmup",
            "0",
            "--payload",
            "33",
            "--processes",
            "2",
            "--source-ips",
            "127.0.0.1,127.0.0.2",
            "--server-pid",
            "10",
            "--server-pid",
            "11,12",
            "--json",
        ]);
        assert_eq!(f.pace(), Pace::Rate(40.0));
        assert_eq!(f.duration, Duration::from_secs(60));
        assert_eq!(f.warmup, Duration::ZERO);
        assert_eq!(f.common.processes, Some(2));
        assert_eq!(
            f.common.source_ips,
            [Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(127, 0, 0, 2)]
        );
        assert_eq!(f.common.server_pids, [10, 11, 12]);
        assert!(f.common.json);
        f.validate().unwrap();
        assert_eq!(fanout(&["--window", "8"]).pace(), Pace::Window(8));
    }

    #[test]
    fn fanout_rejects() {
        for bad in [
            &["--rate", "10", "--window", "4"][..],
            &["--source-ips", "127.0.0.1", "--source-ip-count", "2"],
            &["--source-ips", "::1"],
            &["--source-ip-count", "0"],
            &["--source-ip-count", "255"],
            &["--rate", "0"],
            &["--rate", "-1"],
            &["--window", "0"],
            &["--duration", "0"],
            &["--processes", "0"],
        ] {
            assert!(parse(&[&["fanout"], bad].concat()).is_err(), "{bad:?}");
        }
        for bad in [
            &["--senders", "0"][..],
            &["--senders", "11", "--connections", "10"],
            &["--groups", "0"],
            &["--groups", "11", "--connections", "10", "--senders", "1"],
            &["--payload", "32"],
            &["--payload", "100000"],
        ] {
            assert!(fanout(bad).validate().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn idle_flags() {
        let BenchMode::Idle(i) = parse(&[
            "idle",
            "--connections",
            "100000",
            "--hold",
            "60s",
            "--source-ip-count",
            "4",
        ])
        .unwrap() else {
            panic!("not idle");
        };
        assert_eq!(i.connections, 100_000);
        assert_eq!(i.groups, 1000);
        assert_eq!(i.hold, Duration::from_secs(60));
        assert_eq!(i.common.source_ip_count, Some(4));
        assert_eq!(i.verify_groups, 3);
        i.validate().unwrap();
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert_eq!(parse_duration("2.5"), Ok(Duration::from_millis(2500)));
        assert_eq!(parse_duration("300ms"), Ok(Duration::from_millis(300)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
        assert!(parse_positive("0s").is_err());
    }

    #[test]
    fn global_flags_before_or_after_the_mode() {
        let url = "ws://example.test:9";
        for args in [
            &["--url", url, "--connect-timeout", "0.25", "fanout"][..],
            &["fanout", "--url", url, "--connect-timeout", "250ms"],
            &["idle", "--connect-timeout", "0.25", "--url", url],
        ] {
            let cli = parse_cli(args).unwrap();
            assert_eq!(cli.url, url, "{args:?}");
            assert_eq!(cli.connect_timeout, Duration::from_millis(250), "{args:?}");
        }
        let cli = parse_cli(&["idle"]).unwrap();
        if std::env::var_os("PUSH_BENCH_URL").is_none() {
            assert_eq!(cli.url, DEFAULT_URL);
        }
        assert_eq!(cli.connect_timeout, Duration::from_secs(5));
        assert!(parse_cli(&["fanout", "--connect-timeout", "0"]).is_err());
        assert!(parse_cli(&[]).is_err(), "a mode is required");
    }

    #[test]
    fn agents_run_the_hidden_subcommand() {
        assert!(matches!(parse(&[AGENT_SUBCOMMAND]), Ok(BenchMode::Agent)));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
