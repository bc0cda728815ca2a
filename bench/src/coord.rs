//! Running one benchmark over several processes.
//!
//! The parent is agent 0 and spawns agents 1..P as copies of itself (`push-bench agent`).
//! Each agent owns the connections `i` with `i % P == agent`. They talk in JSON lines: the
//! parent writes [`ToAgent`] to a child's stdin, the child writes [`FromAgent`] to its stdout
//! (its stderr is the parent's). Agent 0 gets the same messages over in-process channels, so
//! every agent runs the same code.
//!
//! ```text
//! parent                                   agent (child or in-process)
//!   Plan ------------------------------------> connects and joins its connections
//!   <------------------------- Progress ...    (every 250 ms until the end)
//!   <------------------------------ Ready      all its joins acknowledged or failed
//!   Start{t0} -------------------------------> fanout: warmup, measure; idle: hold
//!   <------------------------------- Sent      fanout: its senders have stopped
//!   Totals{sent} ----------------------------> fanout: drain until all of it arrived
//!   Finish ----------------------------------> idle: hold over; verify, then close
//!   <----------------------------- Report      counters, histogram; then it closes and exits
//! ```
//!
//! Every wait has a deadline. A child exits as soon as its stdin closes (the parent is gone),
//! and children are killed when the parent drops them.

use std::net::{Ipv4Addr, SocketAddr};
use std::process::Stdio;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, bail, Context as _, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::latency;
use crate::net::Reasons;
use crate::seq::SenderTotals;

/// How often agents report progress.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(250);
/// Slack added to the parent's deadlines for pipes and scheduling.
pub const SLACK: Duration = Duration::from_secs(15);
/// How long a child may take to exit after its report.
const EXIT_TIMEOUT: Duration = Duration::from_secs(5);
/// Name of the hidden subcommand children run.
pub const AGENT_SUBCOMMAND: &str = "agent";

/// Everything an agent needs to know, the same for all but `agent`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Plan {
    pub agent: u64,
    pub agents: u64,
    pub url: String,
    pub server: SocketAddr,
    /// Bound round-robin by each agent over its own connections; empty: the kernel chooses.
    pub source_ips: Vec<Ipv4Addr>,
    pub connect_timeout: Duration,
    pub setup_timeout: Duration,
    /// Handshakes (and joins) in flight per agent.
    pub concurrency: usize,
    /// Prefix of the group names, so that two runs against one server never mix.
    pub run_id: String,
    pub connections: u64,
    pub groups: u64,
    pub mode: ModePlan,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ModePlan {
    Fanout(FanoutPlan),
    Idle(IdlePlan),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FanoutPlan {
    pub senders: u64,
    pub pace: Pace,
    /// With `Pace::Rate`: all senders start together instead of spread over one period.
    #[serde(default)]
    pub aligned: bool,
    /// Every `slow_every`-th receiving connection stops reading after it joins (0: none).
    #[serde(default)]
    pub slow_every: u64,
    pub payload: usize,
    pub warmup: Duration,
    pub duration: Duration,
    pub drain: Duration,
    /// How connections are addressed: group membership, or a bound uid of the same name.
    #[serde(default)]
    pub address: Address,
    /// Group members join with positions and read the message out of each positioned object.
    #[serde(default)]
    pub positioned: bool,
}

/// How a fanout connection is reached: connection i and the senders that send to it name the
/// same `bench-RUN-G` (G = i % groups) either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Address {
    /// `add_group` G, and senders `send_to_group` G.
    #[default]
    Group,
    /// `bind_uid` G (open mode), and senders `send_to_uid` G.
    Uid,
}

impl Address {
    pub fn as_str(self) -> &'static str {
        match self {
            Address::Group => "group",
            Address::Uid => "uid",
        }
    }
}

/// How fast each sender sends.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Pace {
    /// As fast as its own messages come back, with at most this many in flight.
    Window(u64),
    /// This many messages per second.
    Rate(f64),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IdlePlan {
    /// Groups `0..verify_groups` get one message at the end of the hold.
    pub verify_groups: u64,
}

impl Plan {
    /// The connections this agent owns.
    pub fn owned(&self) -> impl Iterator<Item = u64> {
        (self.agent..self.connections).step_by(usize::try_from(self.agents).unwrap_or(1))
    }

    /// The source address of connection `index`: round-robin over this agent's connections.
    pub fn source_ip(&self, index: u64) -> Option<Ipv4Addr> {
        if self.source_ips.is_empty() {
            return None;
        }
        let local = index / self.agents.max(1);
        let at = usize::try_from(local % self.source_ips.len() as u64).unwrap_or(0);
        self.source_ips.get(at).copied()
    }

    /// Group names carry the run id, so that two runs against one server never mix.
    pub fn group_name(&self, group: u64) -> String {
        format!("bench-{}-{group}", self.run_id)
    }
}

/// Parent to agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToAgent {
    Plan(Box<Plan>),
    /// Senders start at `t0` (ns since the Unix epoch); the hold starts at once.
    Start {
        t0_unix_ns: u64,
    },
    /// Fanout: how many messages each sender sent, in all agents.
    Totals {
        sent: Vec<u64>,
    },
    /// Idle: the hold is over; send and check the verification messages, then close.
    Finish,
}

/// Agent to parent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromAgent {
    Progress(Progress),
    Ready {
        joined: u64,
        failed: u64,
    },
    /// Fanout: how many messages each sender of this agent sent (indexed by sender id).
    Sent {
        sent: Vec<u64>,
    },
    Report(Box<AgentReport>),
    Failed {
        error: String,
    },
}

/// Counters so far, for the progress bar.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub struct Progress {
    pub joined: u64,
    pub failed: u64,
    pub dropped: u64,
    pub sent: u64,
    pub delivered: u64,
    /// Fanout: messages the gateway refused with `rate_limited` (its per-connection rate limit).
    pub rate_limited: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentReport {
    Fanout(FanoutReport),
    Idle(IdleReport),
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FanoutReport {
    pub joined: u64,
    pub failed: u64,
    pub dropped: u64,
    /// Per sender id (only this agent's senders are non-zero).
    pub sent: Vec<u64>,
    pub sent_measured: u64,
    pub delivered: u64,
    pub delivered_measured: u64,
    /// Per sender id: this agent's receivers' trackers.
    pub totals: Vec<SenderTotals>,
    /// Frames that were neither a benchmark message of the receiver's group nor a reply.
    pub unexpected: u64,
    pub server_errors: u64,
    /// The server errors that were `rate_limited`.
    pub rate_limited: u64,
    pub first_server_error: Option<String>,
    /// Latency histogram of the messages sent in the measured window (see [`latency`]).
    pub histogram: String,
    pub drain_complete: bool,
    pub failures: Reasons,
    pub drops: Reasons,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct IdleReport {
    pub joined: u64,
    pub failed: u64,
    pub dropped: u64,
    /// Members of the verification groups still connected when the messages were sent.
    pub verify_expected: u64,
    pub verify_received: u64,
    pub unexpected: u64,
    pub failures: Reasons,
    pub drops: Reasons,
}

impl FanoutReport {
    pub fn histogram(&self) -> Result<hdrhistogram::Histogram<u64>> {
        latency::decode(&self.histogram)
    }
}

/// Now, in ns since the Unix epoch.
pub fn unix_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The local [`Instant`] of a Unix time in ns (clamped to now when it is in the past).
pub fn instant_of(unix_ns_at: u64) -> Instant {
    let now_instant = Instant::now();
    let ahead = unix_ns_at.saturating_sub(unix_ns());
    now_instant + Duration::from_nanos(ahead)
}

/// One message from an agent, tagged with its number; `None` when the agent went away.
#[derive(Debug)]
pub struct Event {
    pub agent: usize,
    pub msg: Option<FromAgent>,
}

/// An agent's end of the conversation.
#[derive(Debug)]
pub struct AgentIo {
    inbox: mpsc::Receiver<ToAgent>,
    pub outbox: Outbox,
}

impl AgentIo {
    /// The next message from the parent, within `timeout`.
    pub async fn recv(&mut self, timeout: Duration, waiting_for: &str) -> Result<ToAgent> {
        match tokio::time::timeout(timeout, self.inbox.recv()).await {
            Ok(Some(msg)) => Ok(msg),
            Ok(None) => bail!("the parent went away while this agent waited for {waiting_for}"),
            Err(_) => bail!("no {waiting_for} from the parent within {timeout:?}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct Outbox {
    agent: usize,
    tx: mpsc::Sender<Event>,
}

impl Outbox {
    pub async fn send(&self, msg: FromAgent) -> Result<()> {
        let event = Event {
            agent: self.agent,
            msg: Some(msg),
        };
        self.tx
            .send(event)
            .await
            .map_err(|_| anyhow!("the parent is no longer listening"))
    }
}

/// The parent's end: every agent, in-process or child.
#[derive(Debug)]
pub struct Fleet {
    local: mpsc::Sender<ToAgent>,
    children: Vec<(Child, ChildStdin)>,
    events: mpsc::Receiver<Event>,
    /// The latest progress of each agent.
    pub progress: Vec<Progress>,
}

impl Fleet {
    /// Starts `plans.len() - 1` children and hands each its plan; returns the fleet and the
    /// in-process agent's end, whose plan is `plans[0]`.
    pub async fn launch(plans: &[Plan]) -> Result<(Fleet, AgentIo)> {
        let (events_tx, events) = mpsc::channel(1024);
        let (local, local_inbox) = mpsc::channel(8);
        let exe = std::env::current_exe().context("cannot find this program to run agents")?;
        let mut children = Vec::with_capacity(plans.len().saturating_sub(1));
        for (agent, plan) in plans.iter().enumerate().skip(1) {
            let mut child = Command::new(&exe)
                .arg(AGENT_SUBCOMMAND)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true)
                .spawn()
                .with_context(|| format!("cannot start agent {agent} ({})", exe.display()))?;
            let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
                bail!("agent {agent} has no stdin or stdout pipe");
            };
            write_line(&mut stdin, &ToAgent::Plan(Box::new(plan.clone())))
                .await
                .with_context(|| format!("cannot send agent {agent} its plan"))?;
            let tx = events_tx.clone();
            tokio::task::spawn_local(async move {
                let mut lines = BufReader::new(stdout).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    let msg = serde_json::from_str::<FromAgent>(&line).unwrap_or_else(|e| {
                        FromAgent::Failed {
                            error: format!("unreadable message {line:?}: {e}"),
                        }
                    });
                    if tx
                        .send(Event {
                            agent,
                            msg: Some(msg),
                        })
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                let _ = tx.send(Event { agent, msg: None }).await;
            });
            children.push((child, stdin));
        }
        let io = AgentIo {
            inbox: local_inbox,
            outbox: Outbox {
                agent: 0,
                tx: events_tx,
            },
        };
        let fleet = Fleet {
            local,
            children,
            events,
            progress: vec![Progress::default(); plans.len()],
        };
        Ok((fleet, io))
    }

    pub fn len(&self) -> usize {
        self.children.len() + 1
    }

    pub async fn send_all(&mut self, msg: &ToAgent) -> Result<()> {
        self.local
            .send(msg.clone())
            .await
            .map_err(|_| anyhow!("agent 0 has stopped"))?;
        for (i, (_, stdin)) in self.children.iter_mut().enumerate() {
            write_line(stdin, msg)
                .await
                .with_context(|| format!("cannot write to agent {}", i + 1))?;
        }
        Ok(())
    }

    /// Waits until every agent has sent the message `pick` accepts, updating
    /// [`progress`](Self::progress) and calling `tick` every [`PROGRESS_EVERY`] meanwhile.
    pub async fn collect<T>(
        &mut self,
        deadline: Instant,
        waiting_for: &str,
        mut pick: impl FnMut(FromAgent) -> Option<T>,
        mut tick: impl FnMut(&[Progress]),
    ) -> Result<Vec<T>> {
        let mut got: Vec<Option<T>> = (0..self.len()).map(|_| None).collect();
        let mut ticker = tokio::time::interval(PROGRESS_EVERY);
        while got.iter().any(Option::is_none) {
            let event = tokio::select! {
                event = self.events.recv() => event,
                _ = ticker.tick() => {
                    tick(&self.progress);
                    continue;
                }
                () = tokio::time::sleep_until(deadline) => {
                    let missing: Vec<usize> = (0..got.len()).filter(|&i| got[i].is_none()).collect();
                    bail!("agents {missing:?} sent no {waiting_for} in time");
                }
            };
            let Some(Event { agent, msg }) = event else {
                bail!("all agents have stopped");
            };
            match msg {
                // An agent that has sent what was waited for may end before the others.
                None if got.get(agent).is_some_and(Option::is_some) => {}
                None => {
                    let status = self.exit_status(agent).await;
                    bail!("agent {agent} exited ({status}) before its {waiting_for}")
                }
                Some(FromAgent::Progress(p)) => {
                    if let Some(slot) = self.progress.get_mut(agent) {
                        *slot = p;
                    }
                }
                Some(FromAgent::Failed { error }) => bail!("agent {agent} failed: {error}"),
                Some(other) => match pick(other) {
                    Some(value) => {
                        if let Some(slot) = got.get_mut(agent) {
                            *slot = Some(value);
                        }
                    }
                    None => bail!("agent {agent} sent something else than its {waiting_for}"),
                },
            }
        }
        tick(&self.progress);
        Ok(got.into_iter().flatten().collect())
    }

    /// How child `agent` ended, for error messages (its stdout has closed, so it is ending).
    async fn exit_status(&mut self, agent: usize) -> String {
        let Some((child, _)) = agent.checked_sub(1).and_then(|i| self.children.get_mut(i)) else {
            return "in-process".to_owned();
        };
        match tokio::time::timeout(Duration::from_secs(1), child.wait()).await {
            Ok(Ok(status)) => status.to_string(),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "still running".to_owned(),
        }
    }

    /// Takes in the progress reports that have arrived, without waiting. An agent that failed or
    /// exited is an error.
    pub fn drain_progress(&mut self) -> Result<()> {
        while let Ok(Event { agent, msg }) = self.events.try_recv() {
            match msg {
                Some(FromAgent::Progress(p)) => {
                    if let Some(slot) = self.progress.get_mut(agent) {
                        *slot = p;
                    }
                }
                Some(FromAgent::Failed { error }) => bail!("agent {agent} failed: {error}"),
                Some(other) => bail!("agent {agent} sent {other:?} out of turn"),
                None => bail!("agent {agent} exited early"),
            }
        }
        Ok(())
    }

    /// Waits (briefly) for the children to exit after their reports; kills those that do not.
    pub async fn finish(mut self) {
        drop(self.local);
        for (agent, (mut child, stdin)) in self.children.drain(..).enumerate() {
            match tokio::time::timeout(EXIT_TIMEOUT, child.wait()).await {
                Ok(Ok(status)) if status.success() => {}
                Ok(Ok(status)) => eprintln!("warning: agent {} exited with {status}", agent + 1),
                Ok(Err(e)) => eprintln!("warning: agent {}: {e}", agent + 1),
                Err(_) => {
                    eprintln!("warning: agent {} did not exit; killing it", agent + 1);
                    let _ = child.kill().await;
                }
            }
            drop(stdin);
        }
    }
}

/// Agent 0, in the parent's process: its error goes to the parent like a child's would.
pub async fn run_local(outbox: Outbox, agent: impl std::future::Future<Output = Result<()>>) {
    if let Err(e) = agent.await {
        let error = format!("{e:#}");
        let _ = outbox.send(FromAgent::Failed { error }).await;
    }
}

async fn write_line(stdin: &mut ChildStdin, msg: &ToAgent) -> Result<()> {
    let mut line = serde_json::to_vec(msg)?;
    line.push(b'\n');
    stdin.write_all(&line).await?;
    stdin.flush().await?;
    Ok(())
}

/// The child's end: reads the plan from stdin, then runs `agent` with an [`AgentIo`] over
/// stdin/stdout. Returns an error as soon as stdin closes.
pub async fn serve_parent<F, Fut>(agent: F) -> Result<()>
where
    F: FnOnce(Plan, AgentIo) -> Fut,
    Fut: std::future::Future<Output = Result<()>>,
{
    let (inbox_tx, inbox) = mpsc::channel::<ToAgent>(8);
    let (parent_gone_tx, parent_gone) = tokio::sync::oneshot::channel::<String>();
    // A plain thread, not tokio's stdin: the runtime waits for its blocking reads when it shuts
    // down, which would keep this process alive until the parent closes the pipe.
    std::thread::Builder::new()
        .name("bench-stdin".to_owned())
        .spawn(move || {
            let why = read_parent(&inbox_tx);
            let _ = parent_gone_tx.send(why);
        })
        .context("cannot start the stdin reader")?;

    let (events_tx, mut events) = mpsc::channel::<Event>(64);
    let writer = tokio::task::spawn_local(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(Event { msg: Some(msg), .. }) = events.recv().await {
            let Ok(mut line) = serde_json::to_vec(&msg) else {
                continue;
            };
            line.push(b'\n');
            if stdout.write_all(&line).await.is_err() || stdout.flush().await.is_err() {
                return;
            }
        }
    });
    let mut io = AgentIo {
        inbox,
        outbox: Outbox {
            agent: 0,
            tx: events_tx,
        },
    };

    let run = async {
        let plan = match io.recv(SLACK, "plan").await? {
            ToAgent::Plan(plan) => *plan,
            other => bail!("expected a plan, got {other:?}"),
        };
        let outbox = io.outbox.clone();
        let result = agent(plan, io).await;
        if let Err(e) = &result {
            let _ = outbox
                .send(FromAgent::Failed {
                    error: format!("{e:#}"),
                })
                .await;
        }
        drop(outbox);
        result
    };
    let result = tokio::select! {
        result = run => result,
        Ok(why) = parent_gone => Err(anyhow!("{why}")),
    };
    // Everything queued for stdout (the report above all) goes out before the process exits.
    let _ = tokio::time::timeout(EXIT_TIMEOUT, writer).await;
    result
}

/// Forwards the parent's messages until stdin ends; returns why it ended.
fn read_parent(inbox: &mpsc::Sender<ToAgent>) -> String {
    use std::io::BufRead as _;
    for line in std::io::stdin().lock().lines() {
        let line = match line {
            Ok(line) => line,
            Err(e) => return format!("cannot read stdin: {e}"),
        };
        match serde_json::from_str::<ToAgent>(&line) {
            // A closed inbox means the agent is finishing anyway.
            Ok(msg) => {
                let _ = inbox.blocking_send(msg);
            }
            Err(e) => return format!("unreadable message from the parent {line:?}: {e}"),
        }
    }
    "stdin closed: the parent went away".to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(agent: u64, agents: u64, connections: u64, ips: u8) -> Plan {
        Plan {
            agent,
            agents,
            url: "ws://127.0.0.1:1".to_owned(),
            server: SocketAddr::from(([127, 0, 0, 1], 1)),
            source_ips: (1..=ips).map(|d| Ipv4Addr::new(127, 0, 0, d)).collect(),
            connect_timeout: Duration::from_secs(1),
            setup_timeout: Duration::from_secs(1),
            concurrency: 10,
            run_id: "r1".to_owned(),
            connections,
            groups: 4,
            mode: ModePlan::Idle(IdlePlan { verify_groups: 1 }),
        }
    }

    #[test]
    fn agents_split_the_connections() {
        let owned: Vec<Vec<u64>> = (0..3)
            .map(|a| plan(a, 3, 10, 0).owned().collect())
            .collect();
        assert_eq!(owned, [vec![0, 3, 6, 9], vec![1, 4, 7], vec![2, 5, 8]]);
        assert_eq!(plan(0, 1, 3, 0).owned().collect::<Vec<_>>(), [0, 1, 2]);
    }

    #[test]
    fn each_agent_uses_every_source_ip() {
        for agent in 0..2 {
            let p = plan(agent, 2, 12, 3);
            let ips: Vec<u8> = p
                .owned()
                .map(|i| p.source_ip(i).unwrap().octets()[3])
                .collect();
            assert_eq!(ips, [1, 2, 3, 1, 2, 3], "agent {agent}");
        }
        assert_eq!(plan(0, 2, 12, 0).source_ip(4), None);
    }

    #[test]
    fn messages_are_json_lines() {
        let msg = ToAgent::Plan(Box::new(plan(1, 2, 10, 2)));
        let line = serde_json::to_string(&msg).unwrap();
        assert!(!line.contains('\n'));
        let ToAgent::Plan(back) = serde_json::from_str(&line).unwrap() else {
            panic!("not a plan: {line}");
        };
        assert_eq!(back.source_ips.len(), 2);
        assert_eq!(back.group_name(3), "bench-r1-3");

        let start = serde_json::to_string(&ToAgent::Start { t0_unix_ns: 5 }).unwrap();
        assert_eq!(start, r#"{"type":"start","t0_unix_ns":5}"#);
        let ready: FromAgent =
            serde_json::from_str(r#"{"type":"ready","joined":3,"failed":1}"#).unwrap();
        assert!(matches!(
            ready,
            FromAgent::Ready {
                joined: 3,
                failed: 1
            }
        ));
        let pace = serde_json::to_string(&Pace::Rate(40.0)).unwrap();
        assert_eq!(pace, r#"{"rate":40.0}"#);
    }

    #[test]
    fn unix_times_become_instants() {
        let now = Instant::now();
        let later = instant_of(unix_ns() + 1_000_000_000);
        let gap = later - now;
        assert!(
            gap > Duration::from_millis(900) && gap <= Duration::from_millis(1100),
            "{gap:?}"
        );
        assert!(instant_of(0) >= now);
    }
}
