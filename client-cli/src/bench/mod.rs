//! `client-cli bench`: the load generator.
//!
//! - [`args`]: the flags of `bench fanout` and `bench idle`.
//! - [`fanout`] and [`idle`]: each mode's agent (the connections one process owns) and parent
//!   (the whole run: start, timing, server readings, merged report).
//! - [`coord`]: running the agents as child processes, and the JSON lines between them.
//! - [`net`]: server address, source addresses, open-files limit, connect-and-join.
//! - [`payload`], [`seq`], [`latency`], [`procfs`]: the pure parts: the message format, loss and
//!   duplicate accounting, histograms, `/proc` parsing.
//! - [`report`]: the merged result as a table or JSON.
//!
//! Each process runs one single-threaded runtime (the generator shares the machine with the
//! server under test) with one task per connection; more cores mean more processes.

mod args;
mod coord;
mod fanout;
mod idle;
mod latency;
mod net;
mod payload;
mod procfs;
mod report;
mod seq;

use std::cell::Cell;
use std::fmt;
use std::io::IsTerminal as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::sync::Notify;
use tokio::task::LocalSet;
use tokio::time::Instant;

pub use args::BenchArgs;
use args::{BenchMode, CommonArgs};
use coord::{AgentIo, FromAgent, ModePlan, Plan, Progress};

use crate::cli::Cli;

/// `client-cli bench ...`.
pub async fn run(cli: &Cli, args: &BenchArgs) -> Result<()> {
    LocalSet::new()
        .run_until(async {
            match &args.mode {
                BenchMode::Fanout(args) => fanout::run(cli, args).await,
                BenchMode::Idle(args) => idle::run(cli, args).await,
            }
        })
        .await
}

/// `client-cli bench-agent`: a child of `bench`, driven over stdin/stdout.
pub async fn run_agent() -> Result<()> {
    LocalSet::new()
        .run_until(coord::serve_parent(|plan, io| async move {
            net::raise_nofile_limit()?;
            agent(plan, io).await
        }))
        .await
}

async fn agent(plan: Plan, io: AgentIo) -> Result<()> {
    match plan.mode.clone() {
        ModePlan::Fanout(fanout) => fanout::agent(plan, fanout, io).await,
        ModePlan::Idle(idle) => idle::agent(plan, idle, io).await,
    }
}

/// Agent 0, in the parent's process: its error goes to the parent like a child's would.
async fn local_agent(plan: Plan, io: AgentIo) {
    let outbox = io.outbox.clone();
    if let Err(e) = agent(plan, io).await {
        let error = format!("{e:#}");
        let _ = outbox.send(FromAgent::Failed { error }).await;
    }
}

/// A count of connections an agent waits on (still connecting, still sending, ...). Agents are
/// single-threaded, so a `Cell` is enough; the one waiter is woken when it reaches zero.
#[derive(Debug, Default)]
struct Countdown {
    left: Cell<u64>,
    zero: Notify,
}

impl Countdown {
    fn new(n: u64) -> Countdown {
        Countdown {
            left: Cell::new(n),
            zero: Notify::new(),
        }
    }

    fn left(&self) -> u64 {
        self.left.get()
    }

    fn done_one(&self) {
        let left = self.left.get().saturating_sub(1);
        self.left.set(left);
        if left == 0 {
            self.zero.notify_one();
        }
    }

    /// Waits for zero; false if `deadline` came first.
    async fn wait(&self, deadline: Instant) -> bool {
        let reached = async {
            while self.left.get() > 0 {
                self.zero.notified().await;
            }
        };
        tokio::time::timeout_at(deadline, reached).await.is_ok()
    }
}

/// What both modes settle before starting the agents.
#[derive(Debug)]
struct Setup {
    url: String,
    server: SocketAddr,
    source_ips: Vec<Ipv4Addr>,
    processes: u64,
    server_pids: Vec<u32>,
    run_id: String,
    connect_timeout: Duration,
    setup_timeout: Duration,
    concurrency: usize,
    connections: u64,
}

impl Setup {
    async fn prepare(cli: &Cli, common: &CommonArgs, connections: u64) -> Result<Setup> {
        let per_process = net::raise_nofile_limit()?;
        let needed = net::processes_needed(connections, per_process);
        let processes = match common.processes {
            Some(p) if p < needed => bail!(
                "{connections} connections need at least {needed} processes \
                 (each holds at most {per_process} with the open-files limit here)"
            ),
            Some(p) => p,
            None => needed,
        };
        if processes > connections {
            bail!("--processes ({processes}) is more than --connections ({connections})");
        }
        let server = net::resolve(&cli.url).await?;
        let ports = procfs::ephemeral_ports();
        let source_ips = if !common.source_ips.is_empty() {
            common.source_ips.clone()
        } else if let Some(count) = common.source_ip_count {
            net::loopback_range(count)?
        } else {
            net::auto_source_ips(server.ip(), connections, ports)?
        };
        if !source_ips.is_empty() && !server.is_ipv4() {
            bail!("source addresses are IPv4, but {} is {server}", cli.url);
        }
        if let Some(ports) = ports {
            let per_address = connections.div_ceil(source_ips.len().max(1) as u64);
            if per_address > ports {
                eprintln!(
                    "warning: {per_address} connections per source address, but only {ports} \
                     ephemeral ports: use more --source-ip-count"
                );
            }
        }
        for &pid in &common.server_pids {
            procfs::sample(pid).with_context(|| format!("--server-pid {pid}"))?;
        }
        Ok(Setup {
            url: cli.url.clone(),
            server,
            source_ips,
            processes,
            server_pids: common.server_pids.clone(),
            run_id: format!(
                "{:x}{:04x}",
                std::process::id(),
                coord::unix_ns() % 0x1_0000
            ),
            connect_timeout: cli.connect_timeout.duration(),
            setup_timeout: common.setup_timeout,
            concurrency: usize::try_from(common.connect_concurrency).unwrap_or(usize::MAX),
            connections,
        })
    }

    fn plans(&self, groups: u64, mode: &ModePlan) -> Vec<Plan> {
        (0..self.processes)
            .map(|agent| Plan {
                agent,
                agents: self.processes,
                url: self.url.clone(),
                server: self.server,
                source_ips: self.source_ips.clone(),
                connect_timeout: self.connect_timeout,
                setup_timeout: self.setup_timeout,
                concurrency: self.concurrency,
                run_id: self.run_id.clone(),
                connections: self.connections,
                groups,
                mode: mode.clone(),
            })
            .collect()
    }
}

/// The progress bar on stderr; hidden with --json or when stderr is not a terminal.
struct Bar {
    bar: ProgressBar,
    /// Deliveries and time at the previous tick, for the rate.
    last: Cell<(u64, Instant)>,
    /// Deliveries per second over the last second or so.
    rate: Cell<f64>,
    /// While the bar shows time: when it started, and the warmup in it.
    start: Cell<Option<(Instant, Duration)>>,
}

impl fmt::Debug for Bar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bar").finish_non_exhaustive()
    }
}

fn sum(progress: &[Progress], field: impl Fn(&Progress) -> u64) -> u64 {
    progress.iter().map(field).sum()
}

fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

impl Bar {
    fn new(json: bool) -> Bar {
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
        }
    }

    fn connecting(&self, connections: u64) {
        self.bar
            .set_style(style("{prefix:>9} [{bar:25}] {pos}/{len} {wide_msg}"));
        self.bar.set_prefix("joining");
        self.bar.set_length(connections);
        self.bar.set_position(0);
    }

    fn connected(&self, progress: &[Progress]) {
        self.bar
            .set_position(sum(progress, |p| p.joined) + sum(progress, |p| p.failed));
        self.bar
            .set_message(format!("failed {}", sum(progress, |p| p.failed)));
    }

    /// Fanout: the bar is the warmup plus the measured window, in tenths of a second.
    fn running(&self, start: Instant, warmup: Duration, duration: Duration) {
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

    fn delivering(&self, progress: &[Progress]) {
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

    fn draining(&self) {
        self.start.set(None);
        self.bar.set_prefix("draining");
    }

    /// Idle: the bar is the hold, in tenths of a second.
    fn holding(&self, hold: Duration) {
        self.bar
            .set_style(style("{prefix:>9} [{bar:25}] {elapsed} {wide_msg}"));
        self.bar.set_prefix("holding");
        self.bar.set_length((hold.as_millis() / 100).max(1) as u64);
        self.bar.set_position(0);
        self.bar.reset_elapsed();
        self.start.set(Some((Instant::now(), Duration::ZERO)));
    }

    fn held(&self, progress: &[Progress]) {
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

    fn message(&self, prefix: &'static str) {
        self.start.set(None);
        self.bar.set_prefix(prefix);
    }

    fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
