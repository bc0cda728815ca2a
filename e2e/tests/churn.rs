//! Churn: thousands of short-lived clients, each connecting, joining three groups, sending one
//! message, receiving it and leaving, many at a time, spread over two gateways on one broker.
//! Afterwards every table is empty again: the gateways' groups, memberships, connections and
//! broker subscriptions, and the broker's channels and subscriptions; nothing was dropped and
//! no client was closed as a slow consumer.
//!
//! `E2E_CHURN_CYCLES` sets the number of cycles (default 5000), for long runs that watch the
//! gateways' memory (printed before and after, from /proc), e.g.
//! `E2E_CHURN_CYCLES=200000 cargo test --release -p e2e --test churn -- --nocapture`.

use std::collections::HashSet;
use std::net::SocketAddr;

use anyhow::{bail, ensure, Context, Result};
use e2e::{stat, Broker, Client, Event, Gateway, GatewayConfig, Process, RECV_TIMEOUT};
use serde_json::{json, Value};
use tokio::time::Instant;

const DEFAULT_CYCLES: u64 = 5000;
/// Clients alive at once.
const CONCURRENCY: u64 = 50;
/// Groups shared by the cycles: `p0..p10` receive the sends, `q0..q6` only churn.
const SHARED_P: u64 = 11;
const SHARED_Q: u64 = 7;

fn cycles() -> Result<u64> {
    match std::env::var("E2E_CHURN_CYCLES") {
        Ok(text) => text
            .parse()
            .with_context(|| format!("E2E_CHURN_CYCLES={text:?} is not a number")),
        Err(_) => Ok(DEFAULT_CYCLES),
    }
}

/// The groups of cycle `i`: one of its own, and two shared with other cycles on both gateways.
/// The first shared one is where it sends.
fn groups_of(i: u64) -> [String; 3] {
    [
        format!("p{}", i % SHARED_P),
        format!("q{}", i % SHARED_Q),
        format!("u{i}"),
    ]
}

/// Which gateway cycle `i` uses.
fn gateway_of(i: u64) -> usize {
    (i % 2) as usize
}

/// What the cycles of one task saw.
#[derive(Debug, Default)]
struct Seen {
    cycles: u64,
    /// Messages of other cycles received (members of the same shared group at the time).
    others: u64,
    /// Of those, the ones sent through the other gateway: they crossed the broker.
    crossed: u64,
}

/// One cycle: connect, join 3 groups (acked), send one message (acked), receive it, leave
/// (a close handshake, or every third time just dropping the TCP connection).
async fn cycle(i: u64, gateways: [SocketAddr; 2], seen: &mut Seen) -> Result<()> {
    let gateway = gateway_of(i);
    let mut client = Client::connect(format!("c{i}"), gateways[gateway]).await?;
    let groups = groups_of(i);
    for group in &groups {
        client.join(group).await?;
    }
    let own = format!("{i}>{}", groups[0]);
    client
        .request(json!({"cmd": "send_to_group", "group_id": groups[0], "message": own}))
        .await?;
    let deadline = Instant::now() + RECV_TIMEOUT;
    let mut received = HashSet::new();
    loop {
        let event = client
            .next_event(deadline)
            .await
            .with_context(|| format!("c{i}: its own message {own:?} did not arrive"))?;
        let Event::Text(text) = event else {
            bail!("c{i}: expected group messages, got {event}");
        };
        ensure!(received.insert(text.clone()), "c{i}: got {text:?} twice");
        if text == own {
            break;
        }
        // Another cycle's message: it must be to a group this client is in.
        let (sender, group) = text
            .split_once('>')
            .and_then(|(j, g)| Some((j.parse::<u64>().ok()?, g)))
            .with_context(|| format!("c{i}: unexpected message {text:?}"))?;
        ensure!(
            groups.iter().any(|g| g == group) && groups_of(sender)[0] == group,
            "c{i} (in {groups:?}) got {text:?}"
        );
        seen.others += 1;
        if gateway_of(sender) != gateway {
            seen.crossed += 1;
        }
    }
    if i % 3 == 2 {
        drop(client);
    } else {
        client.close().await?;
    }
    seen.cycles += 1;
    Ok(())
}

/// Resident and proportional set size of a process, from /proc (Linux), for the record.
fn memory(process: &Process) -> String {
    let read = || -> Option<String> {
        let rollup =
            std::fs::read_to_string(format!("/proc/{}/smaps_rollup", process.pid().ok()?)).ok()?;
        let field = |name: &str| {
            rollup
                .lines()
                .find(|l| l.starts_with(name))
                .map(|l| l[name.len()..].trim().to_owned())
        };
        Some(format!("RSS {}, PSS {}", field("Rss:")?, field("Pss:")?))
    };
    read().unwrap_or_else(|| "unknown".to_owned())
}

/// True when nothing describes a client any more, in the process and in every worker.
fn gateway_empty(stats: &Value) -> bool {
    let workers_empty = stats["workers"].as_array().is_some_and(|workers| {
        workers.iter().all(|w| {
            ["/connections", "/groups", "/memberships"]
                .iter()
                .all(|p| stat(w, p) == Some(0))
        })
    });
    workers_empty
        && [
            "/connections",
            "/groups",
            "/memberships",
            "/bus/subscriptions",
        ]
        .iter()
        .all(|p| stat(stats, p) == Some(0))
}

/// Sum of a per-worker counter.
fn workers_sum(stats: &Value, pointer: &str) -> Option<u64> {
    stats["workers"]
        .as_array()?
        .iter()
        .map(|w| stat(w, pointer))
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn churn_leaves_no_trace() -> Result<()> {
    let cycles = cycles()?;
    let broker = Broker::start("broker").await?;
    let (gateway_a, gateway_b) = tokio::try_join!(
        Gateway::start(GatewayConfig::with_broker("gateway-a", broker.addr).workers(4)),
        Gateway::start(GatewayConfig::with_broker("gateway-b", broker.addr).workers(2)),
    )?;
    let gateways = [&gateway_a, &gateway_b];
    let before: Vec<String> = gateways.iter().map(|g| memory(&g.process)).collect();

    let started = Instant::now();
    let addrs = [gateway_a.addr, gateway_b.addr];
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|first| {
            tokio::spawn(async move {
                let mut seen = Seen::default();
                for i in (first..cycles).step_by(CONCURRENCY as usize) {
                    cycle(i, addrs, &mut seen).await?;
                }
                Ok::<_, anyhow::Error>(seen)
            })
        })
        .collect();
    let mut total = Seen::default();
    for task in tasks {
        let seen = task.await??;
        total.cycles += seen.cycles;
        total.others += seen.others;
        total.crossed += seen.crossed;
    }
    let elapsed = started.elapsed();
    ensure!(
        total.cycles == cycles,
        "{} of {cycles} cycles ran",
        total.cycles
    );

    // Everything a client left behind is gone.
    for gateway in gateways {
        gateway
            .admin
            .wait_for_stats(
                "no connections, groups, memberships or subscriptions",
                gateway_empty,
            )
            .await?;
    }
    let broker_stats = broker
        .admin
        .wait_for_counters(
            "no channels and no subscriptions",
            &[("/channels", 0), ("/subscriptions", 0), ("/links", 2)],
        )
        .await?;
    let after: Vec<String> = gateways.iter().map(|g| memory(&g.process)).collect();
    eprintln!(
        "churn: {cycles} cycles, {CONCURRENCY} at a time, in {elapsed:.2?} ({:.0} cycles/s); \
         {} messages of other cycles received, {} of them across gateways; gateway-a memory \
         {} before, {} after; gateway-b {} before, {} after",
        cycles as f64 / elapsed.as_secs_f64(),
        total.others,
        total.crossed,
        before[0],
        after[0],
        before[1],
        after[1],
    );
    ensure!(
        total.crossed > 0,
        "no message crossed between gateways during the churn"
    );

    // Nothing was dropped, nobody was slow, nothing was refused; every cycle was counted.
    let mut connections = 0;
    for gateway in gateways {
        let stats = gateway.admin.stats().await?;
        let name = gateway.process.name();
        for counter in [
            "/slow_consumer_closes",
            "/queue_drops",
            "/idle_closes",
            "/protocol_closes",
            "/handshake_failures",
        ] {
            ensure!(
                workers_sum(&stats, counter) == Some(0),
                "{name}: {counter} should be 0: {stats}"
            );
        }
        ensure!(
            stats["workers"]
                .as_array()
                .is_some_and(|workers| workers.iter().all(|w| w["errors"]
                    .as_object()
                    .is_some_and(|errors| errors.values().all(|n| n.as_u64() == Some(0))))),
            "{name}: error replies were sent: {stats}"
        );
        ensure!(
            stat(&stats, "/bus/publishes_dropped") == Some(0)
                && stat(&stats, "/bus/reconnects") == Some(0),
            "{name}: the broker link dropped publishes or was lost: {stats}"
        );
        connections += workers_sum(&stats, "/connections_total").unwrap_or(0);
    }
    ensure!(
        connections == cycles,
        "the gateways counted {connections} connections for {cycles} cycles"
    );
    for counter in ["/slow_link_disconnects", "/dropped_frames", "/bad_frames"] {
        ensure!(
            stat(&broker_stats, counter) == Some(0),
            "broker: {counter} should be 0: {broker_stats}"
        );
    }
    ensure!(
        stat(&broker_stats, "/publishes") == Some(cycles),
        "the broker should have relayed one publish per cycle: {broker_stats}"
    );
    for process in [&broker.process, &gateway_a.process, &gateway_b.process] {
        process.assert_no_panics()?;
    }
    Ok(())
}
