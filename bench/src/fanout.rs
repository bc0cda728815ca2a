//! `push-bench fanout`: senders publish to their groups; every member measures what arrives.
//! With `--address uid` a "group" is a uid of the same name: connections `bind_uid` it instead
//! of joining, senders `send_to_uid` it; nothing else differs.
//!
//! Agent side: one task per connection ([`connection`]) reads its group's messages, tracks
//! sequence numbers per sender and records latency into the agent's histogram; the connections
//! `0..senders` also send (sender `s` is connection `s`, a member of group `s % groups`, so its
//! own messages come back to it and bound its window; a message the server refuses comes back
//! as an error reply instead). The agent is single-threaded, so its
//! counters are plain `Cell`s.
//!
//! Parent side ([`run`]): starts the agents, picks the common start time, reads the server's CPU
//! at the edges of the measured window, sums what was sent so agents know when they have
//! drained, merges the reports.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use client_cli::conn::describe_close;
use futures_util::{FutureExt as _, SinkExt as _, StreamExt as _};
use hdrhistogram::Histogram;
use protocol::ErrorCode;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

use crate::args::Cli;
use crate::args::FanoutArgs;
use crate::coord::{
    self, instant_of, unix_ns, Address, AgentIo, AgentReport, FanoutPlan, FanoutReport, Fleet,
    FromAgent, ModePlan, Outbox, Pace, Plan, Progress, ToAgent, SLACK,
};
use crate::countdown::Countdown;
use crate::net::{self, BenchWs, Reasons, CLOSE_TIMEOUT};
use crate::payload::{self, Stamp};
use crate::progress::Bar;
use crate::report::{self, FanoutResult, ServerUsage};
use crate::seq::{add_all, Seen, SenderTotals, SeqTracker, Tally};
use crate::setup::Setup;
use crate::{latency, procfs};

/// How far in the future the parent puts the start, so every agent hears of it in time.
const START_DELAY: Duration = Duration::from_millis(300);
/// Frames a connection handles in a row when they are already buffered.
const READ_BATCH: usize = 64;

/// The same for every agent: from `t0` on senders send; `[from, until)` is measured.
#[derive(Debug, Clone, Copy)]
struct Timeline {
    start: Instant,
    until: Instant,
    from_ns: u64,
    until_ns: u64,
}

impl Timeline {
    fn new(t0_ns: u64, warmup: Duration, duration: Duration) -> Timeline {
        let warmup_ns = u64::try_from(warmup.as_nanos()).unwrap_or(u64::MAX);
        let duration_ns = u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX);
        let from_ns = t0_ns.saturating_add(warmup_ns);
        let until_ns = from_ns.saturating_add(duration_ns);
        Timeline {
            start: instant_of(t0_ns),
            until: instant_of(until_ns),
            from_ns,
            until_ns,
        }
    }

    fn measures(&self, unix_ns: u64) -> bool {
        (self.from_ns..self.until_ns).contains(&unix_ns)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Setup,
    Run,
    Drain,
    Close,
}

#[derive(Debug, Default)]
struct Counters {
    joined: Cell<u64>,
    failed: Cell<u64>,
    dropped: Cell<u64>,
    sent: Cell<u64>,
    sent_measured: Cell<u64>,
    delivered: Cell<u64>,
    delivered_measured: Cell<u64>,
    unexpected: Cell<u64>,
    server_errors: Cell<u64>,
    rate_limited: Cell<u64>,
}

fn bump(cell: &Cell<u64>) {
    cell.set(cell.get() + 1);
}

/// One agent's state, shared by its connection tasks.
#[derive(Debug)]
struct Shared {
    plan: Plan,
    fanout: FanoutPlan,
    phase: watch::Sender<Phase>,
    timeline: Cell<Option<Timeline>>,
    /// How many messages each sender sent in all agents, once known (drain).
    final_sent: RefCell<Vec<u64>>,
    permits: Semaphore,
    counters: Counters,
    histogram: RefCell<Histogram<u64>>,
    /// Per sender id.
    sent: RefCell<Vec<u64>>,
    totals: RefCell<Vec<SenderTotals>>,
    failures: RefCell<Reasons>,
    drops: RefCell<Reasons>,
    first_server_error: RefCell<Option<String>>,
    setting_up: Countdown,
    sending: Countdown,
    undrained: Countdown,
    running: Countdown,
}

impl Shared {
    fn progress(&self) -> Progress {
        let c = &self.counters;
        Progress {
            joined: c.joined.get(),
            failed: c.failed.get(),
            dropped: c.dropped.get(),
            sent: c.sent.get(),
            delivered: c.delivered.get(),
            rate_limited: c.rate_limited.get(),
        }
    }
}

/// Senders that are members of `group`: `group`, `group + groups`, ... below `senders`.
fn senders_in_group(group: u64, groups: u64, senders: u64) -> u64 {
    if group >= senders {
        0
    } else {
        (senders - 1 - group) / groups + 1
    }
}

/// Runs one agent's share of a fanout benchmark.
pub async fn agent(plan: Plan, fanout: FanoutPlan, mut io: AgentIo) -> Result<()> {
    let owned: Vec<u64> = plan.owned().collect();
    let n = owned.len() as u64;
    let my_senders = owned.iter().filter(|&&i| i < fanout.senders).count() as u64;
    let senders = usize::try_from(fanout.senders)?;
    let (phase, _) = watch::channel(Phase::Setup);
    let shared = Rc::new(Shared {
        permits: Semaphore::new(plan.concurrency.max(1)),
        phase,
        timeline: Cell::new(None),
        final_sent: RefCell::new(Vec::new()),
        counters: Counters::default(),
        histogram: RefCell::new(latency::new_histogram()),
        sent: RefCell::new(vec![0; senders]),
        totals: RefCell::new(vec![SenderTotals::default(); senders]),
        failures: RefCell::default(),
        drops: RefCell::default(),
        first_server_error: RefCell::new(None),
        setting_up: Countdown::new(n),
        sending: Countdown::new(my_senders),
        undrained: Countdown::new(n),
        running: Countdown::new(n),
        plan,
        fanout,
    });
    for index in owned {
        let phase = shared.phase.subscribe();
        tokio::task::spawn_local(connection(Rc::clone(&shared), index, phase));
    }
    let progress = spawn_progress(Rc::clone(&shared), io.outbox.clone());
    let result = drive(&shared, &mut io).await;
    progress.abort();
    // On an error too: every connection closes, and the runtime ends with the process.
    shared.phase.send_replace(Phase::Close);
    result
}

fn spawn_progress(shared: Rc<Shared>, outbox: Outbox) -> JoinHandle<()> {
    tokio::task::spawn_local(async move {
        let mut every = tokio::time::interval(coord::PROGRESS_EVERY);
        loop {
            every.tick().await;
            if outbox
                .send(FromAgent::Progress(shared.progress()))
                .await
                .is_err()
            {
                return;
            }
        }
    })
}

async fn drive(shared: &Shared, io: &mut AgentIo) -> Result<()> {
    let plan = &shared.plan;
    let fanout = &shared.fanout;
    if !shared
        .setting_up
        .wait(Instant::now() + plan.setup_timeout)
        .await
    {
        bail!(
            "{} connections still connecting after {:?}",
            shared.setting_up.left(),
            plan.setup_timeout
        );
    }
    let c = &shared.counters;
    io.outbox
        .send(FromAgent::Ready {
            joined: c.joined.get(),
            failed: c.failed.get(),
        })
        .await?;

    let t0 = match io.recv(plan.setup_timeout + SLACK, "start").await? {
        ToAgent::Start { t0_unix_ns } => t0_unix_ns,
        other => bail!("expected start, got {other:?}"),
    };
    let timeline = Timeline::new(t0, fanout.warmup, fanout.duration);
    shared.timeline.set(Some(timeline));
    shared.phase.send_replace(Phase::Run);

    if !shared.sending.wait(timeline.until + SLACK).await {
        bail!(
            "{} senders still sending long after the end",
            shared.sending.left()
        );
    }
    let sent = shared.sent.borrow().clone();
    io.outbox.send(FromAgent::Sent { sent }).await?;
    let totals = match io.recv(SLACK * 2, "totals").await? {
        ToAgent::Totals { sent } => sent,
        other => bail!("expected totals, got {other:?}"),
    };
    *shared.final_sent.borrow_mut() = totals;
    shared.phase.send_replace(Phase::Drain);
    let drain_complete = shared.undrained.wait(Instant::now() + fanout.drain).await;

    shared.phase.send_replace(Phase::Close);
    let _ = shared
        .running
        .wait(Instant::now() + CLOSE_TIMEOUT + Duration::from_secs(1))
        .await;
    let report = FanoutReport {
        joined: c.joined.get(),
        failed: c.failed.get(),
        dropped: c.dropped.get(),
        sent: shared.sent.borrow().clone(),
        sent_measured: c.sent_measured.get(),
        delivered: c.delivered.get(),
        delivered_measured: c.delivered_measured.get(),
        totals: shared.totals.borrow().clone(),
        unexpected: c.unexpected.get(),
        server_errors: c.server_errors.get(),
        rate_limited: c.rate_limited.get(),
        first_server_error: shared.first_server_error.borrow().clone(),
        histogram: latency::encode(&shared.histogram.borrow())?,
        drain_complete,
        failures: shared.failures.borrow().clone(),
        drops: shared.drops.borrow().clone(),
    };
    io.outbox
        .send(FromAgent::Report(Box::new(AgentReport::Fanout(report))))
        .await
}

/// One connection, from connecting to closing.
async fn connection(shared: Rc<Shared>, index: u64, mut phase: watch::Receiver<Phase>) {
    let plan = &shared.plan;
    let group = index % plan.groups;
    let group_name = plan.group_name(group);
    let opened = {
        let _permit = shared.permits.acquire().await;
        let join = match shared.fanout.address {
            Address::Group if shared.fanout.positioned => net::Join::Positioned(&group_name),
            Address::Group => net::Join::Group(&group_name),
            Address::Uid => net::Join::Uid(&group_name),
        };
        net::open_and_join(
            &plan.url,
            plan.server,
            plan.source_ip(index),
            join,
            plan.connect_timeout,
        )
        .await
    };
    let mut conn = Conn::new(&shared, index, group, &group_name);
    let mut ws = match opened {
        Ok(ws) => ws,
        Err(reason) => {
            bump(&shared.counters.failed);
            shared.failures.borrow_mut().note(&reason);
            shared.setting_up.done_one();
            conn.finish(false);
            shared.running.done_one();
            return;
        }
    };
    bump(&shared.counters.joined);
    shared.setting_up.done_one();
    let slow_every = shared.fanout.slow_every;
    if slow_every > 0 && index >= shared.fanout.senders && index % slow_every == 0 {
        // A deliberately slow consumer: it stops reading now and is no member in the tally.
        conn.finish(false);
        while *phase.borrow_and_update() != Phase::Close {
            if phase.changed().await.is_err() {
                break;
            }
        }
        let outcome = net::read_until_close(&mut ws, Duration::from_secs(2)).await;
        shared.drops.borrow_mut().note(&format!(
            "deliberately slow reader (not counted as dropped): {outcome}"
        ));
        shared.running.done_one();
        return;
    }
    let end = conn.run(&mut ws, &mut phase).await;
    conn.finish(true);
    match end {
        End::Close => net::close(&mut ws).await,
        End::Dropped(reason) => {
            bump(&shared.counters.dropped);
            shared.drops.borrow_mut().note(&reason);
        }
    }
    shared.running.done_one();
}

#[derive(Debug)]
enum End {
    Close,
    Dropped(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Sending {
    NotYet,
    Now,
    Over,
}

#[derive(Debug)]
struct Sender {
    id: u64,
    /// Its messages that are no longer in flight: each one comes back to it (it is a member),
    /// or is refused with an error reply (a rate limit, say).
    resolved: u64,
    next_seq: u64,
    /// The request up to the message text: `{"cmd":"send_to_group","group_id":"G","message":"`
    /// (or `{"cmd":"send_to_uid","uid":"G","message":"`).
    prefix: String,
    state: Sending,
}

impl Sender {
    /// The next message, counted as sent.
    fn next_frame(&mut self, shared: &Shared, timeline: Option<Timeline>) -> Message {
        let size = shared.fanout.payload;
        let now = unix_ns();
        let mut text = String::with_capacity(self.prefix.len() + size + 2);
        text.push_str(&self.prefix);
        let stamp = Stamp {
            sender: u32::try_from(self.id).unwrap_or(u32::MAX),
            seq: self.next_seq,
            sent_ns: now,
        };
        payload::encode(&mut text, stamp, size);
        text.push_str("\"}");
        self.next_seq += 1;
        let id = usize::try_from(self.id).unwrap_or(usize::MAX);
        if let Some(count) = shared.sent.borrow_mut().get_mut(id) {
            *count += 1;
        }
        bump(&shared.counters.sent);
        if timeline.is_some_and(|tl| tl.measures(now)) {
            bump(&shared.counters.sent_measured);
        }
        Message::Text(text.into())
    }
}

#[derive(Debug)]
struct Conn<'a> {
    shared: &'a Shared,
    group: u64,
    /// One per sender of the group: sender `group + k * groups` at `k`.
    trackers: Vec<SeqTracker>,
    sender: Option<Sender>,
    timeline: Option<Timeline>,
    /// Once in the drain: whether every tracker has reached its sender's total.
    drained: Option<bool>,
}

impl<'a> Conn<'a> {
    fn new(shared: &'a Shared, index: u64, group: u64, group_name: &str) -> Conn<'a> {
        let groups = shared.plan.groups;
        let senders = shared.fanout.senders;
        let count = senders_in_group(group, groups, senders);
        let sender = (index < senders).then(|| Sender {
            id: index,
            resolved: 0,
            next_seq: 0,
            prefix: send_prefix(shared.fanout.address, group_name),
            state: Sending::NotYet,
        });
        Conn {
            shared,
            group,
            trackers: vec![SeqTracker::default(); usize::try_from(count).unwrap_or(0)],
            sender,
            timeline: None,
            drained: None,
        }
    }

    async fn run(&mut self, ws: &mut BenchWs, phase: &mut watch::Receiver<Phase>) -> End {
        let timer = tokio::time::sleep(Duration::from_secs(86_400));
        tokio::pin!(timer);
        let mut timer_armed = false;
        let mut ticker: Option<Interval> = None;
        // The phase may have moved on while this connection was connecting.
        phase.mark_changed();
        loop {
            if let Err(reason) = self.fill_window(ws).await {
                return End::Dropped(reason);
            }
            tokio::select! {
                biased;
                changed = phase.changed() => {
                    if changed.is_err() {
                        return End::Close;
                    }
                    let now = *phase.borrow_and_update();
                    match now {
                        Phase::Setup => {}
                        Phase::Run => {
                            self.timeline = self.shared.timeline.get();
                            if let (Some(_), Some(tl)) = (&self.sender, self.timeline) {
                                timer.as_mut().reset(tl.start);
                                timer_armed = true;
                            }
                        }
                        Phase::Drain => {
                            self.stop_sending();
                            timer_armed = false;
                            ticker = None;
                            self.drained = Some(false);
                            self.check_drained();
                        }
                        Phase::Close => return End::Close,
                    }
                }
                () = &mut timer, if timer_armed => {
                    let Some(tl) = self.timeline else { continue };
                    match self.sender.as_ref().map(|s| s.state) {
                        Some(Sending::NotYet) => {
                            if let Some(s) = self.sender.as_mut() {
                                s.state = Sending::Now;
                            }
                            timer.as_mut().reset(tl.until);
                            if let Pace::Rate(rate) = self.shared.fanout.pace {
                                let period = Duration::from_secs_f64(1.0 / rate);
                                let fanout = &self.shared.fanout;
                                let phase = match &self.sender {
                                    Some(s) if !fanout.aligned && fanout.senders > 0 => {
                                        period.mul_f64(s.id as f64 / fanout.senders as f64)
                                    }
                                    _ => Duration::ZERO,
                                };
                                let mut every = tokio::time::interval_at(Instant::now() + phase, period);
                                every.set_missed_tick_behavior(MissedTickBehavior::Burst);
                                ticker = Some(every);
                            }
                        }
                        _ => {
                            timer_armed = false;
                            ticker = None;
                            self.stop_sending();
                        }
                    }
                }
                () = tick(&mut ticker) => {
                    if let Err(reason) = self.send_one(ws).await {
                        return End::Dropped(reason);
                    }
                }
                item = ws.next() => {
                    if let Err(end) = self.on_item(item) {
                        return end;
                    }
                    // Whatever else is already buffered, without a trip through the select.
                    for _ in 0..READ_BATCH {
                        let Some(item) = ws.next().now_or_never() else { break };
                        if let Err(end) = self.on_item(item) {
                            return end;
                        }
                    }
                }
            }
        }
    }

    fn on_item(&mut self, item: Option<Result<Message, WsError>>) -> Result<(), End> {
        match item {
            Some(Ok(Message::Text(text))) => self.on_text(text.as_bytes()),
            Some(Ok(Message::Close(frame))) => {
                return Err(End::Dropped(format!(
                    "closed by the server: {}",
                    describe_close(frame.as_ref())
                )));
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return Err(End::Dropped(format!("read: {e}"))),
            None => {
                return Err(End::Dropped(
                    "connection closed without a close frame".to_owned(),
                ))
            }
        }
        Ok(())
    }

    /// Window mode: sends until the window is full, then flushes once.
    async fn fill_window(&mut self, ws: &mut BenchWs) -> Result<(), String> {
        let Pace::Window(window) = self.shared.fanout.pace else {
            return Ok(());
        };
        let Some(s) = self.sender.as_mut() else {
            return Ok(());
        };
        let mut fed = false;
        while s.state == Sending::Now && s.next_seq.saturating_sub(s.resolved) < window {
            let frame = s.next_frame(self.shared, self.timeline);
            ws.feed(frame).await.map_err(|e| format!("send: {e}"))?;
            fed = true;
        }
        if fed {
            ws.flush().await.map_err(|e| format!("send: {e}"))?;
        }
        Ok(())
    }

    /// Rate mode: one message per tick.
    async fn send_one(&mut self, ws: &mut BenchWs) -> Result<(), String> {
        match self.sender.as_mut() {
            Some(s) if s.state == Sending::Now => {
                let frame = s.next_frame(self.shared, self.timeline);
                ws.send(frame).await.map_err(|e| format!("send: {e}"))
            }
            _ => Ok(()),
        }
    }

    fn stop_sending(&mut self) {
        if let Some(s) = self.sender.as_mut() {
            if s.state != Sending::Over {
                s.state = Sending::Over;
                self.shared.sending.done_one();
            }
        }
    }

    fn on_text(&mut self, bytes: &[u8]) {
        let shared = self.shared;
        let counters = &shared.counters;
        let bytes = if shared.fanout.positioned {
            payload::positioned_text(bytes).unwrap_or(bytes)
        } else {
            bytes
        };
        let Some(stamp) = payload::parse(bytes) else {
            self.on_other(bytes);
            return;
        };
        let groups = shared.plan.groups;
        let sender = u64::from(stamp.sender);
        let tracker = if sender < shared.fanout.senders && sender % groups == self.group {
            self.trackers
                .get_mut(usize::try_from(sender / groups).unwrap_or(usize::MAX))
        } else {
            None
        };
        let Some(tracker) = tracker else {
            bump(&counters.unexpected);
            return;
        };
        let seen = tracker.observe(stamp.seq);
        if let Some(s) = self.sender.as_mut().filter(|s| s.id == sender) {
            if seen != Seen::Duplicate {
                s.resolved += 1;
            }
        }
        bump(&counters.delivered);
        if let Some(tl) = self.timeline {
            let now = unix_ns();
            if tl.measures(now) {
                bump(&counters.delivered_measured);
            }
            if tl.measures(stamp.sent_ns) {
                latency::record(&mut shared.histogram.borrow_mut(), stamp.sent_ns, now);
            }
        }
        if self.drained == Some(false) {
            self.check_drained();
        }
    }

    fn on_other(&mut self, bytes: &[u8]) {
        let counters = &self.shared.counters;
        if bytes.starts_with(br#"{"cmd":"error""#) {
            bump(&counters.server_errors);
            if is_rate_limited(bytes) {
                bump(&counters.rate_limited);
            }
            // Only senders send anything after their join: this refuses one of its messages.
            if let Some(s) = self.sender.as_mut() {
                s.resolved += 1;
            }
            let mut first = self.shared.first_server_error.borrow_mut();
            if first.is_none() {
                let text = String::from_utf8_lossy(&bytes[..bytes.len().min(300)]);
                *first = Some(text.into_owned());
            }
        } else {
            bump(&counters.unexpected);
        }
    }

    fn check_drained(&mut self) {
        let groups = self.shared.plan.groups;
        let done = {
            let totals = self.shared.final_sent.borrow();
            self.trackers.iter().zip(0u64..).all(|(tracker, k)| {
                let sender = usize::try_from(self.group + k * groups).unwrap_or(usize::MAX);
                tracker.next() >= totals.get(sender).copied().unwrap_or(0)
            })
        };
        if done {
            self.drained = Some(true);
            self.shared.undrained.done_one();
        }
    }

    /// Folds the trackers into the agent's totals (for members only) and settles the counts
    /// the agent waits on.
    fn finish(&mut self, member: bool) {
        let groups = self.shared.plan.groups;
        if member {
            let mut totals = self.shared.totals.borrow_mut();
            for (tracker, k) in self.trackers.iter().zip(0u64..) {
                let sender = usize::try_from(self.group + k * groups).unwrap_or(usize::MAX);
                if let Some(t) = totals.get_mut(sender) {
                    t.add_tracker(tracker);
                }
            }
        }
        self.stop_sending();
        if self.drained != Some(true) {
            self.drained = Some(true);
            self.shared.undrained.done_one();
        }
    }
}

/// A sender's request up to its message text, addressed to `name` as a group or as a uid.
fn send_prefix(address: Address, name: &str) -> String {
    let name = serde_json::Value::from(name);
    match address {
        Address::Group => format!(r#"{{"cmd":"send_to_group","group_id":{name},"message":""#),
        Address::Uid => format!(r#"{{"cmd":"send_to_uid","uid":{name},"message":""#),
    }
}

/// Whether an error reply is `rate_limited`: a message over the gateway's per-connection rate.
fn is_rate_limited(reply: &[u8]) -> bool {
    let code = ErrorCode::RateLimited.as_str();
    serde_json::from_slice::<serde_json::Value>(reply)
        .is_ok_and(|reply| reply.get("code").and_then(serde_json::Value::as_str) == Some(code))
}

async fn tick(ticker: &mut Option<Interval>) {
    match ticker {
        Some(every) => {
            every.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// The parent: runs the whole benchmark and prints the result.
pub async fn run(cli: &Cli, args: &FanoutArgs) -> Result<()> {
    args.validate()?;
    let setup = Setup::prepare(cli, &args.common, args.connections).await?;
    let fanout = FanoutPlan {
        senders: args.senders,
        pace: args.pace(),
        aligned: args.aligned,
        slow_every: if args.slow_percent > 0.0 {
            (100.0 / args.slow_percent).round().max(1.0) as u64
        } else {
            0
        },
        payload: args.payload,
        warmup: args.warmup,
        duration: args.duration,
        drain: args.drain,
        address: args.address,
        positioned: args.positioned,
    };
    let plans = setup.plans(args.groups, &ModePlan::Fanout(fanout.clone()));
    let bar = Bar::new(args.common.json);
    let delivering = |progress: &[Progress]| {
        bar.delivering(progress);
        bar.warn_if_rate_limited(progress.iter().map(|p| p.rate_limited).sum());
    };
    let (mut fleet, io) = Fleet::launch(&plans).await?;
    let local = tokio::task::spawn_local(coord::run_local(
        io.outbox.clone(),
        agent(plans[0].clone(), fanout.clone(), io),
    ));

    bar.connecting(args.connections);
    let setup_deadline = Instant::now() + setup.setup_timeout + SLACK;
    let ready = fleet
        .collect(
            setup_deadline,
            "ready",
            |msg| match msg {
                FromAgent::Ready { joined, failed } => Some((joined, failed)),
                _ => None,
            },
            |p| bar.connected(p),
        )
        .await?;
    let joined: u64 = ready.iter().map(|r| r.0).sum();
    if joined == 0 {
        bail!("no connection could join its group (see the failures with --json)");
    }

    let t0 = unix_ns() + u64::try_from(START_DELAY.as_nanos())?;
    let timeline = Timeline::new(t0, fanout.warmup, fanout.duration);
    let measure_from = instant_of(timeline.from_ns);
    fleet.send_all(&ToAgent::Start { t0_unix_ns: t0 }).await?;
    let pids = setup.server_pids.clone();
    let sampler = tokio::task::spawn_local(async move {
        tokio::time::sleep_until(measure_from).await;
        let before = (Instant::now(), procfs::sample_all(&pids)?);
        tokio::time::sleep_until(timeline.until).await;
        let after = (Instant::now(), procfs::sample_all(&pids)?);
        anyhow::Ok((before, after))
    });

    bar.running(timeline.start, fanout.warmup, fanout.duration);
    let sent_parts = fleet
        .collect(
            timeline.until + SLACK,
            "sent counts",
            |msg| match msg {
                FromAgent::Sent { sent } => Some(sent),
                _ => None,
            },
            delivering,
        )
        .await?;
    let mut sent = Vec::new();
    for part in &sent_parts {
        add_all(&mut sent, part, |a, b| *a += b);
    }
    fleet
        .send_all(&ToAgent::Totals { sent: sent.clone() })
        .await?;

    bar.draining();
    let reports = fleet
        .collect(
            Instant::now() + fanout.drain + CLOSE_TIMEOUT + SLACK,
            "report",
            |msg| match msg {
                FromAgent::Report(report) => match *report {
                    AgentReport::Fanout(report) => Some(report),
                    AgentReport::Idle(_) => None,
                },
                _ => None,
            },
            delivering,
        )
        .await?;
    let ((t1, before), (t2, after)) = sampler.await.context("the /proc sampler failed")??;
    fleet.finish().await;
    let _ = local.await;
    bar.finish();

    let servers = ServerUsage::between(&before, &after, t2 - t1);
    let result = merge(&setup, args, &sent, &reports, servers)?;
    // The agents' last progress may have come before the first refusal.
    bar.warn_if_rate_limited(result.rate_limited);
    result.print(args.common.json)?;
    report::verdict(result.problems())
}

fn merge(
    setup: &Setup,
    args: &FanoutArgs,
    sent: &[u64],
    reports: &[FanoutReport],
    servers: Vec<ServerUsage>,
) -> Result<FanoutResult> {
    let mut histogram = latency::new_histogram();
    let mut totals = Vec::new();
    let mut failures = Reasons::default();
    let mut drops = Reasons::default();
    let mut r = FanoutReport::default();
    for part in reports {
        latency::merge(&mut histogram, &part.histogram()?)?;
        add_all(&mut totals, &part.totals, SenderTotals::add);
        failures.merge(&part.failures);
        drops.merge(&part.drops);
        r.joined += part.joined;
        r.failed += part.failed;
        r.dropped += part.dropped;
        r.sent_measured += part.sent_measured;
        r.delivered += part.delivered;
        r.delivered_measured += part.delivered_measured;
        r.unexpected += part.unexpected;
        r.server_errors += part.server_errors;
        r.rate_limited += part.rate_limited;
        if r.first_server_error.is_none() {
            r.first_server_error.clone_from(&part.first_server_error);
        }
    }
    let tally = Tally::new(sent, &totals);
    let secs = args.duration.as_secs_f64();
    Ok(FanoutResult {
        mode: "fanout",
        url: setup.url.clone(),
        connections: args.connections,
        groups: args.groups,
        address: args.address,
        senders: args.senders,
        pace: args.pace(),
        payload_bytes: args.payload,
        warmup_secs: args.warmup.as_secs_f64(),
        duration_secs: secs,
        processes: setup.processes,
        source_ips: setup.source_ips.iter().map(ToString::to_string).collect(),
        connections_joined: r.joined,
        connections_failed: r.failed,
        connections_dropped: r.dropped,
        messages_sent: sent.iter().sum(),
        messages_sent_measured: r.sent_measured,
        deliveries_received: r.delivered,
        deliveries_expected: tally.expected,
        deliveries_measured: r.delivered_measured,
        deliveries_per_sec: r.delivered_measured as f64 / secs,
        lost: tally.lost,
        duplicated: tally.duplicated,
        reordered: tally.reordered,
        unexpected: r.unexpected,
        server_errors: r.server_errors,
        rate_limited: r.rate_limited,
        first_server_error: r.first_server_error,
        latency_us: latency::Summary::of(&histogram),
        drain_complete: reports.iter().all(|p| p.drain_complete),
        failures,
        drops,
        servers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn senders_per_group() {
        // 10 senders over 4 groups: groups 0 and 1 get 3 (0,4,8 / 1,5,9), groups 2 and 3 get 2.
        let counts: Vec<u64> = (0..4).map(|g| senders_in_group(g, 4, 10)).collect();
        assert_eq!(counts, [3, 3, 2, 2]);
        assert_eq!(senders_in_group(5, 10, 3), 0);
        assert_eq!(senders_in_group(0, 1, 1), 1);
        let total: u64 = (0..100).map(|g| senders_in_group(g, 100, 100)).sum();
        assert_eq!(total, 100);
    }

    #[test]
    fn senders_address_a_group_or_a_uid() {
        let frame = |address| {
            let mut text = send_prefix(address, "bench-r-\"3");
            text.push_str("hi\"}");
            serde_json::from_str::<serde_json::Value>(&text).unwrap()
        };
        assert_eq!(
            frame(Address::Group),
            serde_json::json!({"cmd": "send_to_group", "group_id": "bench-r-\"3", "message": "hi"})
        );
        assert_eq!(
            frame(Address::Uid),
            serde_json::json!({"cmd": "send_to_uid", "uid": "bench-r-\"3", "message": "hi"})
        );
    }

    #[test]
    fn rate_limited_replies() {
        let reply = protocol::client::error_reply(ErrorCode::RateLimited, "too fast", None);
        assert!(is_rate_limited(reply.as_bytes()));
        let other = protocol::client::error_reply(ErrorCode::InvalidJson, "rate_limited", None);
        assert!(!is_rate_limited(other.as_bytes()));
        assert!(!is_rate_limited(br#"{"cmd":"error""#));
    }

    #[test]
    fn timeline_measures_after_the_warmup() {
        let tl = Timeline::new(1_000, Duration::from_nanos(100), Duration::from_nanos(50));
        assert!(!tl.measures(1_099));
        assert!(tl.measures(1_100));
        assert!(tl.measures(1_149));
        assert!(!tl.measures(1_150));
    }
}
