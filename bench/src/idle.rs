//! `push-bench idle`: many joined connections that only read (answering the server's pings), to
//! measure what an idle member costs the server and that it keeps them all.
//!
//! The parent reads the server's memory before anything connects and again once every
//! connection has joined, holds them for `--hold`, then proves they still work: connection `g`
//! (a member of group `g`) sends one message to each verification group `g`, which every member
//! of those groups must receive. (A member sends rather than a new connection, which a server
//! at its connection limit would refuse.) Then all close cleanly.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::Duration;

use anyhow::{bail, Result};
use client_cli::conn::describe_close;
use client_cli::frames;
use futures_util::{SinkExt as _, StreamExt as _};
use tokio::sync::{watch, Notify, Semaphore};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::args::Cli;
use crate::args::IdleArgs;
use crate::coord::{
    self, unix_ns, AgentIo, AgentReport, Fleet, FromAgent, IdlePlan, IdleReport, ModePlan, Plan,
    Progress, ToAgent, SLACK,
};
use crate::countdown::Countdown;
use crate::net::{self, BenchWs, Reasons, CLOSE_TIMEOUT};
use crate::procfs;
use crate::progress::Bar;
use crate::report::{self, IdleResult, MemoryUsage, ServerUsage};
use crate::setup::Setup;

/// How long members have to receive the verification messages once they are sent.
const VERIFY_TIMEOUT: Duration = Duration::from_secs(10);
/// The request id of a verification message, and the server's ack of it.
const VERIFY_REQ_ID: u64 = 2;
const VERIFY_ACK: &str = r#"{"cmd":"ack","req_id":2}"#;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Setup,
    Hold,
    Verify,
    Close,
}

#[derive(Debug)]
struct Shared {
    plan: Plan,
    idle: IdlePlan,
    phase: watch::Sender<Phase>,
    permits: Semaphore,
    joined: Cell<u64>,
    failed: Cell<u64>,
    dropped: Cell<u64>,
    unexpected: Cell<u64>,
    /// Members of verification groups that are still connected.
    verify_expected: Cell<u64>,
    verify_received: Cell<u64>,
    verify_changed: Notify,
    failures: RefCell<Reasons>,
    drops: RefCell<Reasons>,
    setting_up: Countdown,
    running: Countdown,
}

fn bump(cell: &Cell<u64>) {
    cell.set(cell.get() + 1);
}

/// The text of the verification message for `group`.
fn verify_message(run_id: &str, group: u64) -> String {
    format!("verify-{run_id}-{group}")
}

/// Runs one agent's share of an idle benchmark.
pub async fn agent(plan: Plan, idle: IdlePlan, mut io: AgentIo) -> Result<()> {
    let owned: Vec<u64> = plan.owned().collect();
    let n = owned.len() as u64;
    let (phase, _) = watch::channel(Phase::Setup);
    let shared = Rc::new(Shared {
        permits: Semaphore::new(plan.concurrency.max(1)),
        phase,
        joined: Cell::new(0),
        failed: Cell::new(0),
        dropped: Cell::new(0),
        unexpected: Cell::new(0),
        verify_expected: Cell::new(0),
        verify_received: Cell::new(0),
        verify_changed: Notify::new(),
        failures: RefCell::default(),
        drops: RefCell::default(),
        setting_up: Countdown::new(n),
        running: Countdown::new(n),
        plan,
        idle,
    });
    for index in owned {
        let phase = shared.phase.subscribe();
        tokio::task::spawn_local(connection(Rc::clone(&shared), index, phase));
    }
    let outbox = io.outbox.clone();
    let progress_of = Rc::clone(&shared);
    let progress = tokio::task::spawn_local(async move {
        let mut every = tokio::time::interval(coord::PROGRESS_EVERY);
        loop {
            every.tick().await;
            let s = &progress_of;
            let p = Progress {
                joined: s.joined.get(),
                failed: s.failed.get(),
                dropped: s.dropped.get(),
                sent: 0,
                delivered: s.verify_received.get(),
                rate_limited: 0,
            };
            if outbox.send(FromAgent::Progress(p)).await.is_err() {
                return;
            }
        }
    });
    let result = drive(&shared, &mut io).await;
    progress.abort();
    shared.phase.send_replace(Phase::Close);
    result
}

async fn drive(shared: &Shared, io: &mut AgentIo) -> Result<()> {
    let plan = &shared.plan;
    let deadline = Instant::now() + plan.setup_timeout;
    if !shared.setting_up.wait(deadline).await {
        bail!(
            "{} connections still connecting after {:?}",
            shared.setting_up.left(),
            plan.setup_timeout
        );
    }
    io.outbox
        .send(FromAgent::Ready {
            joined: shared.joined.get(),
            failed: shared.failed.get(),
        })
        .await?;
    match io.recv(plan.setup_timeout + SLACK, "start").await? {
        ToAgent::Start { .. } => {}
        other => bail!("expected start, got {other:?}"),
    }
    shared.phase.send_replace(Phase::Hold);
    // The parent times the hold; it says when the verification messages are out.
    match io.recv(Duration::from_secs(86_400), "finish").await? {
        ToAgent::Finish => {}
        other => bail!("expected finish, got {other:?}"),
    }
    shared.phase.send_replace(Phase::Verify);
    let verify_deadline = Instant::now() + VERIFY_TIMEOUT;
    let all_verified = async {
        while shared.verify_received.get() < shared.verify_expected.get() {
            shared.verify_changed.notified().await;
        }
    };
    let _ = tokio::time::timeout_at(verify_deadline, all_verified).await;
    // Read before closing: a member that closes is no longer expected.
    let verify_expected = shared.verify_expected.get();
    let verify_received = shared.verify_received.get();
    let dropped = shared.dropped.get();

    shared.phase.send_replace(Phase::Close);
    let close_deadline = Instant::now() + CLOSE_TIMEOUT + Duration::from_secs(1);
    let _ = shared.running.wait(close_deadline).await;
    let report = IdleReport {
        joined: shared.joined.get(),
        failed: shared.failed.get(),
        dropped,
        verify_expected,
        verify_received,
        unexpected: shared.unexpected.get(),
        failures: shared.failures.borrow().clone(),
        drops: shared.drops.borrow().clone(),
    };
    io.outbox
        .send(FromAgent::Report(Box::new(AgentReport::Idle(report))))
        .await
}

async fn connection(shared: Rc<Shared>, index: u64, mut phase: watch::Receiver<Phase>) {
    let plan = &shared.plan;
    let group = index % plan.groups;
    let opened = {
        let _permit = shared.permits.acquire().await;
        net::open_and_join(
            &plan.url,
            plan.server,
            plan.source_ip(index),
            net::Join::Group(&plan.group_name(group)),
            plan.connect_timeout,
        )
        .await
    };
    let mut ws = match opened {
        Ok(ws) => ws,
        Err(reason) => {
            bump(&shared.failed);
            shared.failures.borrow_mut().note(&reason);
            shared.setting_up.done_one();
            shared.running.done_one();
            return;
        }
    };
    bump(&shared.joined);
    let verifying = group < shared.idle.verify_groups;
    if verifying {
        bump(&shared.verify_expected);
    }
    shared.setting_up.done_one();
    let expected = verify_message(&plan.run_id, group);
    // Connection g is the first member of group g: it sends that group's message.
    let send = (index < shared.idle.verify_groups)
        .then(|| frames::send_request(&plan.group_name(group), &expected, false, VERIFY_REQ_ID))
        .and_then(Result::ok);
    let verify = verifying.then_some(expected.as_str());
    match hold(&shared, &mut ws, &mut phase, verify, send).await {
        Ok(()) => net::close(&mut ws).await,
        Err(reason) => {
            bump(&shared.dropped);
            shared.drops.borrow_mut().note(&reason);
            if verifying {
                shared
                    .verify_expected
                    .set(shared.verify_expected.get().saturating_sub(1));
                shared.verify_changed.notify_one();
            }
        }
    }
    shared.running.done_one();
}

/// Reads until the close phase; an error is why the connection was lost. `verify` is the
/// message this member waits for, `send` the request it sends when verification starts.
async fn hold(
    shared: &Shared,
    ws: &mut BenchWs,
    phase: &mut watch::Receiver<Phase>,
    verify: Option<&str>,
    mut send: Option<String>,
) -> Result<(), String> {
    let mut verified = false;
    phase.mark_changed();
    loop {
        tokio::select! {
            biased;
            changed = phase.changed() => {
                let now = if changed.is_err() { Phase::Close } else { *phase.borrow_and_update() };
                match now {
                    Phase::Setup | Phase::Hold => {}
                    Phase::Verify => {
                        if let Some(request) = send.take() {
                            ws.send(Message::Text(request.into()))
                                .await
                                .map_err(|e| format!("sending the verification message: {e}"))?;
                        }
                    }
                    Phase::Close => return Ok(()),
                }
            }
            item = ws.next() => match item {
                Some(Ok(Message::Text(text))) => {
                    if !verified && verify == Some(text.as_str()) {
                        verified = true;
                        bump(&shared.verify_received);
                        shared.verify_changed.notify_one();
                    } else if text.as_str() != VERIFY_ACK {
                        bump(&shared.unexpected);
                    }
                }
                Some(Ok(Message::Close(frame))) => {
                    return Err(format!("closed by the server: {}", describe_close(frame.as_ref())));
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(format!("read: {e}")),
                None => return Err("connection closed without a close frame".to_owned()),
            },
        }
    }
}

/// The parent: runs the whole benchmark and prints the result.
pub async fn run(cli: &Cli, args: &IdleArgs) -> Result<()> {
    args.validate()?;
    let setup = Setup::prepare(cli, &args.common, args.connections).await?;
    let verify_groups = args.verify_groups.min(args.groups);
    let plans = setup.plans(args.groups, &ModePlan::Idle(IdlePlan { verify_groups }));
    let bar = Bar::new(args.common.json);
    let before = procfs::sample_all(&setup.server_pids)?;

    let connect_start = Instant::now();
    let (mut fleet, io) = Fleet::launch(&plans).await?;
    let local = tokio::task::spawn_local(coord::run_local(
        io.outbox.clone(),
        agent(plans[0].clone(), IdlePlan { verify_groups }, io),
    ));
    bar.connecting(args.connections);
    let ready = fleet
        .collect(
            connect_start + setup.setup_timeout + SLACK,
            "ready",
            |msg| match msg {
                FromAgent::Ready { joined, failed } => Some((joined, failed)),
                _ => None,
            },
            |p| bar.connected(p),
        )
        .await?;
    let connect_secs = connect_start.elapsed().as_secs_f64();
    let joined: u64 = ready.iter().map(|r| r.0).sum();
    let after_join = procfs::sample_all(&setup.server_pids)?;

    fleet
        .send_all(&ToAgent::Start {
            t0_unix_ns: unix_ns(),
        })
        .await?;
    let hold_start = Instant::now();
    bar.holding(args.hold);
    let hold_end = hold_start + args.hold;
    let mut every = tokio::time::interval(coord::PROGRESS_EVERY);
    while Instant::now() < hold_end {
        tokio::select! {
            _ = every.tick() => {}
            () = tokio::time::sleep_until(hold_end) => {}
        }
        fleet.drain_progress()?;
        bar.held(&fleet.progress);
    }
    let after_hold = procfs::sample_all(&setup.server_pids)?;
    let hold_secs = hold_start.elapsed();

    bar.message("verifying");
    fleet.send_all(&ToAgent::Finish).await?;
    let reports = fleet
        .collect(
            Instant::now() + VERIFY_TIMEOUT + CLOSE_TIMEOUT + SLACK,
            "report",
            |msg| match msg {
                FromAgent::Report(report) => match *report {
                    AgentReport::Idle(report) => Some(report),
                    AgentReport::Fanout(_) => None,
                },
                _ => None,
            },
            |p| bar.held(p),
        )
        .await?;
    fleet.finish().await;
    let _ = local.await;
    bar.finish();

    let mut failures = Reasons::default();
    let mut drops = Reasons::default();
    let mut total = IdleReport::default();
    for r in &reports {
        failures.merge(&r.failures);
        drops.merge(&r.drops);
        total.joined += r.joined;
        total.failed += r.failed;
        total.dropped += r.dropped;
        total.verify_expected += r.verify_expected;
        total.verify_received += r.verify_received;
        total.unexpected += r.unexpected;
    }
    let servers = ServerUsage::between(&after_join, &after_hold, hold_secs);
    let memory = MemoryUsage::new(&before, &after_join, joined);
    let result = IdleResult {
        mode: "idle",
        url: setup.url.clone(),
        connections: args.connections,
        groups: args.groups,
        hold_secs: args.hold.as_secs_f64(),
        processes: setup.processes,
        source_ips: setup.source_ips.iter().map(ToString::to_string).collect(),
        connections_joined: total.joined,
        connections_failed: total.failed,
        connections_dropped: total.dropped,
        connect_secs,
        joins_per_sec: total.joined as f64 / connect_secs.max(1e-9),
        verify_groups,
        verify_expected: total.verify_expected,
        verify_received: total.verify_received,
        unexpected: total.unexpected,
        memory,
        servers,
        failures,
        drops,
    };
    result.print(args.common.json)?;
    report::verdict(result.problems())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verification_text_names_the_run_and_group() {
        assert_eq!(verify_message("ab12", 2), "verify-ab12-2");
    }
}
