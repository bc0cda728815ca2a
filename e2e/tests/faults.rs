//! Processes dying under a running cluster: a broker SIGKILLed during a long outage and
//! restarted (cross-gateway delivery resumes within 2 s of its readiness, with the gateways'
//! default reconnect settings), and one gateway of three SIGKILLed (the others and their clients
//! do not notice, and the broker forgets the dead gateway's subscriptions).
//!
//! The half-open link (no FIN) is tested in gateway/tests/link_faults.rs, behind a TCP proxy.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use e2e::{
    check_numbered, expect_quiet, numbered, publish_tagged, stat, tagged_streams, Broker, Client,
    Event, Gateway, GatewayConfig, Process, EXIT_TIMEOUT, LINK_DEBUG, RECV_TIMEOUT,
    STARTUP_TIMEOUT,
};
use futures_util::future::try_join_all;
use serde_json::Value;
use tokio::time::Instant;

/// What issue 5 promises: cross-gateway delivery resumes this soon after the broker is back.
const RESUME_BOUND: Duration = Duration::from_secs(2);

/// A member of "room" in the restart test. Checks every message as it arrives: only what was
/// sent, each sender's messages in order and never twice; notes when the first message from
/// the other gateway's sender arrived after the restart.
struct Member {
    client: Client,
    /// The sender on the other gateway.
    remote: &'static str,
    /// Last number received from each sender.
    last: BTreeMap<String, u64>,
    /// First message from `remote` numbered at least this counts as resumed delivery.
    resume_from: u64,
    resumed_at: Option<Instant>,
}

impl Member {
    fn new(client: Client, remote: &'static str) -> Member {
        Member {
            client,
            remote,
            last: BTreeMap::new(),
            resume_from: u64::MAX,
            resumed_at: None,
        }
    }

    fn check(&mut self, event: Event, sent: &BTreeMap<String, u64>) -> Result<()> {
        let (sender, n) = check_numbered(self.client.name(), event, sent, &self.last)?;
        if sender == self.remote && n >= self.resume_from && self.resumed_at.is_none() {
            self.resumed_at = Some(Instant::now());
        }
        self.last.insert(sender, n);
        Ok(())
    }

    /// Checks whatever arrives within `wait`.
    async fn drain(&mut self, wait: Duration, sent: &BTreeMap<String, u64>) -> Result<()> {
        let deadline = Instant::now() + wait;
        while let Some(event) = self.client.next_event(deadline).await {
            self.check(event, sent)?;
        }
        Ok(())
    }

    /// Receives until `sender|n` has arrived.
    async fn require(&mut self, sender: &str, n: u64, sent: &BTreeMap<String, u64>) -> Result<()> {
        let deadline = Instant::now() + RECV_TIMEOUT;
        while self.last.get(sender).is_none_or(|&last| last < n) {
            let event = self.client.next_event(deadline).await.with_context(|| {
                format!(
                    "{}: {} did not arrive",
                    self.client.name(),
                    numbered(sender, n)
                )
            })?;
            self.check(event, sent)?;
        }
        ensure!(
            self.last.get(sender) == Some(&n),
            "{}: {} never arrived (the next one did)",
            self.client.name(),
            numbered(sender, n)
        );
        Ok(())
    }
}

/// Sends `sender|n` to "room" (numbered from 0 per sender) and counts it in `sent`.
async fn send_numbered(sender: &mut Client, sent: &mut BTreeMap<String, u64>) -> Result<u64> {
    let name = sender.name().to_owned();
    let n = sent.get(&name).copied().unwrap_or(0);
    sender.publish("room", &numbered(&name, n)).await?;
    sent.insert(name, n + 1);
    Ok(n)
}

/// Waits until the gateway's reconnect backoff stopped growing (two failed attempts in a row
/// report the same `retry_in`): from then on, the outage counts as long. Returns that backoff.
/// Each attempt is a `debug` line ([`LINK_DEBUG`]); the warning is rate limited.
async fn wait_for_longest_backoff(gateway: &Process) -> Result<String> {
    let mut previous: Option<String> = None;
    let mut n = 0;
    loop {
        n += 1;
        let fields = gateway
            .wait_for_nth_log("broker connection attempt failed", n, STARTUP_TIMEOUT)
            .await?;
        let retry_in = fields
            .get("retry_in")
            .and_then(Value::as_str)
            .with_context(|| format!("no retry_in in {fields:?}"))?
            .to_owned();
        if previous.as_deref() == Some(retry_in.as_str()) {
            return Ok(retry_in);
        }
        previous = Some(retry_in);
    }
}

/// The broker is SIGKILLed and stays down until both gateways' reconnect backoff has reached
/// its (default) maximum, then is restarted on its port. Measured from the new broker's
/// readiness: the first message crossing from gateway a to gateway b and back. Clients stay
/// connected, and each gateway's members receive its own senders' messages all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_killed_during_a_long_outage_resumes_within_2s() -> Result<()> {
    let mut broker = Broker::start("broker").await?;
    let broker_addr = broker.addr;
    // Default link settings: the bound must hold for what operators run.
    let (gateway_a, gateway_b) = tokio::try_join!(
        Gateway::start(
            GatewayConfig::with_broker("gateway-a", broker_addr)
                .workers(2)
                .log_filter(LINK_DEBUG)
        ),
        Gateway::start(
            GatewayConfig::with_broker("gateway-b", broker_addr)
                .workers(2)
                .log_filter(LINK_DEBUG)
        ),
    )?;
    let mut a1 = Member::new(gateway_a.connect("a1").await?, "sb");
    let mut b1 = Member::new(gateway_b.connect("b1").await?, "sa");
    a1.client.join("room").await?;
    b1.client.join("room").await?;
    let mut sa = gateway_a.connect("sa").await?;
    let mut sb = gateway_b.connect("sb").await?;
    broker
        .admin
        .wait_for_counters("both gateways subscribed to room", &[("/subscriptions", 2)])
        .await?;
    let mut sent = BTreeMap::new();
    let n = send_numbered(&mut sa, &mut sent).await?;
    a1.require("sa", n, &sent).await?;
    b1.require("sa", n, &sent).await?;
    let n = send_numbered(&mut sb, &mut sent).await?;
    a1.require("sb", n, &sent).await?;
    b1.require("sb", n, &sent).await?;

    broker.process.kill(EXIT_TIMEOUT).await?;
    let killed = Instant::now();
    // Local delivery does not depend on the broker; nothing crosses (checked below: b1 must
    // not get this one, a1 must not get sb's).
    let outage_a = send_numbered(&mut sa, &mut sent).await?;
    let outage_b = send_numbered(&mut sb, &mut sent).await?;
    a1.require("sa", outage_a, &sent).await?;
    b1.require("sb", outage_b, &sent).await?;
    let (backoff_a, backoff_b) = tokio::try_join!(
        wait_for_longest_backoff(&gateway_a.process),
        wait_for_longest_backoff(&gateway_b.process),
    )?;
    let outage = killed.elapsed();

    let spawned = Instant::now();
    let broker = Broker::start_on("broker (restarted)", broker_addr).await?;
    // `start_on` returns once the broker logged that it listens (links and admin): its
    // readiness.
    let ready = Instant::now();
    let (first_a, first_b) = (sent["sa"], sent["sb"]);
    a1.resume_from = first_b;
    b1.resume_from = first_a;
    // Probe both directions every few ms until a message has crossed each way.
    while a1.resumed_at.is_none() || b1.resumed_at.is_none() {
        if ready.elapsed() > RESUME_BOUND + Duration::from_secs(3) {
            bail!(
                "no cross-gateway delivery within {:?} of the broker's restart (a->b: {}, \
                 b->a: {})",
                ready.elapsed(),
                b1.resumed_at.is_some(),
                a1.resumed_at.is_some()
            );
        }
        send_numbered(&mut sa, &mut sent).await?;
        send_numbered(&mut sb, &mut sent).await?;
        let wait = Duration::from_millis(5);
        tokio::try_join!(a1.drain(wait, &sent), b1.drain(wait, &sent))?;
    }
    let a_to_b = b1.resumed_at.map(|t| t - ready).unwrap_or_default();
    let b_to_a = a1.resumed_at.map(|t| t - ready).unwrap_or_default();
    eprintln!(
        "broker restart after a {outage:?} outage (longest reconnect backoff: gateway-a \
         {backoff_a}, gateway-b {backoff_b}): broker ready {:?} after spawn; first delivery \
         after readiness a->b {a_to_b:?}, b->a {b_to_a:?}",
        ready - spawned
    );
    ensure!(
        a_to_b < RESUME_BOUND && b_to_a < RESUME_BOUND,
        "cross-gateway delivery resumed after a->b {a_to_b:?}, b->a {b_to_a:?}; promised \
         within {RESUME_BOUND:?}"
    );
    // Outage messages never crossed (b1 got sa's messages from `first_a` on only, in order).
    ensure!(
        b1.last.get("sa").is_some_and(|&last| last >= first_a),
        "b1 got nothing from sa after the restart"
    );

    // Every probe from the own gateway's sender arrived, and the next messages each way.
    let last_a = send_numbered(&mut sa, &mut sent).await?;
    let last_b = send_numbered(&mut sb, &mut sent).await?;
    for member in [&mut a1, &mut b1] {
        member.require("sa", last_a, &sent).await?;
        member.require("sb", last_b, &sent).await?;
    }
    expect_quiet([&mut a1.client, &mut b1.client, &mut sa, &mut sb]).await?;
    for gateway in [&gateway_a, &gateway_b] {
        let stats = gateway.admin.stats().await?;
        ensure!(
            stat(&stats, "/connections") == Some(2)
                && stat(&stats, "/bus/reconnects") == Some(1)
                && stats.pointer("/bus/up") == Some(&Value::Bool(true)),
            "{}: expected both clients still connected and one reconnection: {stats}",
            gateway.process.name()
        );
    }
    for process in [&broker.process, &gateway_a.process, &gateway_b.process] {
        process.assert_no_panics()?;
    }
    Ok(())
}

/// The JSON log events of `process` at level WARN or ERROR.
fn warnings(process: &Process) -> Vec<String> {
    process
        .stderr_lines()
        .into_iter()
        .filter(|line| {
            serde_json::from_str::<Value>(line).is_ok_and(|event| {
                matches!(
                    event.get("level").and_then(Value::as_str),
                    Some("WARN" | "ERROR")
                )
            })
        })
        .collect()
}

/// Three gateways on one broker; gateway c is SIGKILLed while a and b are publishing to a
/// group that all three have members of. a's and b's clients keep their connections and get
/// every message, in order, with nothing else; the broker drops c's link and subscriptions;
/// nobody but c's clients sees anything wrong.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_gateway_leaves_the_others_unaffected() -> Result<()> {
    const COUNT: usize = 200;
    let broker = Broker::start("broker").await?;
    // Each publisher sends COUNT messages at once: leave the rate limit room for them.
    let config = |name| {
        GatewayConfig::with_broker(name, broker.addr)
            .workers(2)
            .arg("--message-burst")
            .arg((2 * COUNT).to_string())
    };
    let (gateway_a, gateway_b, mut gateway_c) = tokio::try_join!(
        Gateway::start(config("gateway-a")),
        Gateway::start(config("gateway-b")),
        Gateway::start(config("gateway-c")),
    )?;
    let mut survivors = Vec::new();
    for (name, gateway) in [
        ("a1", &gateway_a),
        ("a2", &gateway_a),
        ("b1", &gateway_b),
        ("b2", &gateway_b),
    ] {
        let mut client = gateway.connect(name).await?;
        client.join("room").await?;
        survivors.push(client);
    }
    let mut doomed = Vec::new();
    for name in ["c1", "c2"] {
        let mut client = gateway_c.connect(name).await?;
        client.join("room").await?;
        client.join("c-only").await?;
        doomed.push(client);
    }
    broker
        .admin
        .wait_for_counters(
            "3 links, 2 channels, 4 subscriptions",
            &[("/links", 3), ("/channels", 2), ("/subscriptions", 4)],
        )
        .await?;

    // a1 and b1 publish while c dies.
    let (a_side, b_side) = survivors.split_at_mut(2);
    let (_, _, killed) = tokio::try_join!(
        publish_tagged(&mut a_side[0], &["room"], COUNT),
        publish_tagged(&mut b_side[0], &["room"], COUNT),
        async {
            gateway_c.process.kill(EXIT_TIMEOUT).await?;
            Ok(Instant::now())
        },
    )?;
    // Its clients lose their connections without a close frame: the process is gone.
    for client in &mut doomed {
        loop {
            match client.recv(RECV_TIMEOUT).await? {
                Event::Text(_) => {}
                Event::Disconnected(_) => break,
                other => bail!("{}: expected a disconnection, got {other}", client.name()),
            }
        }
    }
    let stats = broker
        .admin
        .wait_for_counters(
            "c's link and subscriptions gone",
            &[("/links", 2), ("/channels", 1), ("/subscriptions", 2)],
        )
        .await?;
    eprintln!(
        "gateway SIGKILL: the broker dropped its link and subscriptions within {:?}",
        killed.elapsed()
    );
    ensure!(
        stat(&stats, "/bad_frames") == Some(0) && stat(&stats, "/slow_link_disconnects") == Some(0),
        "a gateway that dies is not a protocol fault nor a slow consumer: {stats}"
    );

    // Everyone left got both streams in full, in order.
    let streams = tagged_streams(&["room"], &["a1", "b1"], &["room"], COUNT);
    try_join_all(
        survivors
            .iter_mut()
            .map(|client| client.expect_streams(streams.clone())),
    )
    .await?;
    // And delivery goes on both ways.
    survivors[3].send_to_group("room", "after").await?;
    for client in &mut survivors {
        client.expect_text("after").await?;
    }
    expect_quiet(survivors.iter_mut()).await?;

    for gateway in [&gateway_a, &gateway_b] {
        let stats = gateway.admin.stats().await?;
        ensure!(
            stat(&stats, "/connections") == Some(2)
                && stats.pointer("/bus/up") == Some(&Value::Bool(true))
                && stat(&stats, "/bus/reconnects") == Some(0)
                && stat(&stats, "/bus/publishes_dropped") == Some(0),
            "{}: expected an undisturbed gateway: {stats}",
            gateway.process.name()
        );
    }
    for process in [&broker.process, &gateway_a.process, &gateway_b.process] {
        process.assert_no_panics()?;
        let warnings = warnings(process);
        ensure!(
            warnings.is_empty(),
            "{} logged warnings:\n{}",
            process.name(),
            warnings.join("\n")
        );
    }
    Ok(())
}
