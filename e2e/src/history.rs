//! History and recovery scenarios (`--history`), run by every carrier's tests: the helpers to
//! join with positions and read positioned messages, and the scenarios themselves.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use std::net::SocketAddr;

use test_support::nats::NatsServer;
use test_support::redis::RedisServer;

use crate::{expect_quiet, stat, Broker, Client, Gateway, GatewayConfig, RawFrame};

pub const WAIT: Duration = Duration::from_secs(10);

/// What a positioned join brought: the messages before its reply (offset, text), and the reply.
#[derive(Debug)]
pub struct Joined {
    pub messages: Vec<(u64, String)>,
    pub reply: Value,
}

impl Joined {
    pub fn position(&self) -> (u64, String) {
        (
            self.reply["offset"].as_u64().unwrap_or_default(),
            self.reply["epoch"].as_str().unwrap_or_default().to_owned(),
        )
    }
}

/// Joins `group` with positions (and `recover` from `from`), collecting what comes before the
/// `joined` reply.
pub async fn join_positioned(
    client: &mut Client,
    group: &str,
    from: Option<(u64, &str)>,
) -> Result<Joined> {
    let mut command = json!({"cmd":"add_group","group_id":group,"positioned":true,"req_id":"j"});
    if let Some((offset, epoch)) = from {
        command["recover"] = json!({"offset": offset, "epoch": epoch});
    }
    client.send_json(&command).await?;
    let mut messages = Vec::new();
    loop {
        let value = client
            .recv_json(WAIT)
            .await
            .context("waiting for the joined reply")?;
        match value["cmd"].as_str() {
            Some("message") => messages.push(positioned(&value, group)?),
            Some("joined") => {
                ensure!(
                    value["req_id"] == "j",
                    "joined reply without its req_id: {value}"
                );
                return Ok(Joined {
                    messages,
                    reply: value,
                });
            }
            _ => bail!("unexpected frame before the joined reply: {value}"),
        }
    }
}

pub fn positioned(value: &Value, group: &str) -> Result<(u64, String)> {
    ensure!(
        value["cmd"] == "message" && value["group_id"] == group,
        "not a message of {group}: {value}"
    );
    let offset = value["offset"].as_u64().context("offset")?;
    let text = value["message"].as_str().context("message")?.to_owned();
    ensure!(
        value["epoch"].as_str().is_some_and(|e| !e.is_empty()),
        "no epoch: {value}"
    );
    Ok((offset, text))
}

/// The next `n` positioned messages of `group`.
pub async fn next_positioned(
    client: &mut Client,
    group: &str,
    n: usize,
) -> Result<Vec<(u64, String)>> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let value = client
            .recv_json(WAIT)
            .await
            .with_context(|| format!("{} of {n} received", out.len()))?;
        out.push(positioned(&value, group)?);
    }
    Ok(out)
}

/// Sends `texts` to `group` from `sender`, each acknowledged.
pub async fn send_all(
    sender: &mut Client,
    group: &str,
    texts: impl IntoIterator<Item = String>,
) -> Result<()> {
    for text in texts {
        sender.send_to_group(group, &text).await?;
    }
    Ok(())
}

/// The offsets of the messages of an admin API history page (`GET /api/history/{group}`).
pub fn page_offsets(page: &Value) -> Result<Vec<u64>> {
    Ok(page["messages"]
        .as_array()
        .with_context(|| format!("no messages in {page}"))?
        .iter()
        .filter_map(|m| m["offset"].as_u64())
        .collect())
}

/// Polls `group`'s history (the admin API) until its last message has offset `offset`.
pub async fn stored_through(gateway: &Gateway, group: &str, offset: u64) -> Result<()> {
    let path = format!("/api/history/{group}?reverse=true&limit=1");
    test_support::wait::wait_until(
        &format!("{group}'s history through offset {offset}"),
        WAIT,
        || async {
            let page = gateway.admin.get_json(&path).await?;
            ensure!(page_offsets(&page)? == vec![offset], "{page}");
            Ok(())
        },
    )
    .await
}

pub fn texts(from: usize, to: usize) -> Vec<String> {
    (from..to).map(|i| format!("m{i}")).collect()
}

/// A member disconnects, 500 messages are sent, it reconnects with its last position: exactly
/// the 500, in order, then the live ones, none twice.
///
/// The sender's acks come before its gateway stored the messages, and the store is another
/// gateway's read away: a positioned member on the sender's gateway (the witness) has them
/// all only once they are stored, so the member reconnects after that.
///
/// `a` and `b` run with `--history chat:=1000,10m`.
pub async fn a_member_recovers_exactly_what_it_missed(a: &Gateway, b: &Gateway) -> Result<()> {
    let mut sender = a.connect("sender").await?;
    let mut witness = a.connect("witness").await?;
    join_positioned(&mut witness, "chat:1", None).await?;
    let mut member = b.connect("member").await?;
    let joined = join_positioned(&mut member, "chat:1", None).await?;
    ensure!(joined.messages.is_empty(), "{:?}", joined.messages);
    let (top, epoch) = joined.position();
    ensure!(top == 0, "a new group starts at 0: {}", joined.reply);

    send_all(&mut sender, "chat:1", texts(0, 10)).await?;
    let first = next_positioned(&mut member, "chat:1", 10).await?;
    ensure!(
        first == (1..=10).zip(texts(0, 10)).collect::<Vec<_>>(),
        "{first:?}"
    );
    drop(member);

    send_all(&mut sender, "chat:1", texts(10, 510)).await?;
    next_positioned(&mut witness, "chat:1", 510).await?;
    let mut member = b.connect("member again").await?;
    let recovered = join_positioned(&mut member, "chat:1", Some((10, &epoch))).await?;
    ensure!(recovered.reply["recovered"] == true, "{}", recovered.reply);
    ensure!(
        recovered.position() == (510, epoch.clone()),
        "{}",
        recovered.reply
    );
    let expected: Vec<(u64, String)> = (11..=510).zip(texts(10, 510)).collect();
    ensure!(
        recovered.messages.len() == 500,
        "{} recovered",
        recovered.messages.len()
    );
    ensure!(
        recovered.messages == expected,
        "recovered out of order or wrong"
    );

    send_all(&mut sender, "chat:1", texts(510, 515)).await?;
    let live = next_positioned(&mut member, "chat:1", 5).await?;
    ensure!(
        live == (511..=515).zip(texts(510, 515)).collect::<Vec<_>>(),
        "{live:?}"
    );
    next_positioned(&mut witness, "chat:1", 5).await?;
    expect_quiet([&mut member, &mut witness]).await?;
    a.process.assert_no_panics()?;
    b.process.assert_no_panics()
}

/// A recover from an offset the history no longer holds: `recovered:false` and what is left.
///
/// `gateway` runs with `--history h:=20,10m`.
pub async fn an_offset_older_than_history_recovers_what_is_left(gateway: &Gateway) -> Result<()> {
    let mut sender = gateway.connect("sender").await?;
    let mut member = gateway.connect("member").await?;
    let joined = join_positioned(&mut member, "h:1", None).await?;
    let (_, epoch) = joined.position();
    drop(member);
    send_all(&mut sender, "h:1", texts(0, 50)).await?;
    // The sender's acks come before the store has the messages.
    stored_through(gateway, "h:1", 50).await?;

    let mut member = gateway.connect("late").await?;
    let recovered = join_positioned(&mut member, "h:1", Some((5, &epoch))).await?;
    ensure!(recovered.reply["recovered"] == false, "{}", recovered.reply);
    let expected: Vec<(u64, String)> = (31..=50).zip(texts(30, 50)).collect();
    ensure!(recovered.messages == expected, "{:?}", recovered.messages);

    // An unknown epoch: nothing of it can be given.
    let mut other = gateway.connect("other epoch").await?;
    let recovered = join_positioned(&mut other, "h:1", Some((45, "not-the-epoch"))).await?;
    ensure!(recovered.reply["recovered"] == false, "{}", recovered.reply);
    ensure!(recovered.messages.is_empty(), "{:?}", recovered.messages);
    ensure!(
        recovered.position() == (50, epoch.clone()),
        "{}",
        recovered.reply
    );

    // Up to date: recovered, nothing to send.
    let mut current = gateway.connect("current").await?;
    let recovered = join_positioned(&mut current, "h:1", Some((50, &epoch))).await?;
    ensure!(recovered.reply["recovered"] == true, "{}", recovered.reply);
    ensure!(recovered.messages.is_empty());
    expect_quiet([&mut member, &mut other, &mut current]).await?;
    gateway.process.assert_no_panics()
}

/// Members that did not ask for positions get the raw text, as the seed; a group without
/// history refuses a positioned join.
///
/// `a` and `b` run with `--history chat:=100,10m`.
pub async fn raw_members_see_no_change(a: &Gateway, b: &Gateway) -> Result<()> {
    let mut raw_here = a.connect("raw here").await?;
    raw_here
        .send_text(r#"{"cmd":"add_group", "group_id":"chat:9"}"#)
        .await?;
    let mut raw_there = b.connect("raw there").await?;
    raw_there.join("chat:9").await?;
    let mut positioned_member = b.connect("positioned").await?;
    join_positioned(&mut positioned_member, "chat:9", None).await?;
    // The seed's snippet: the sender is a member without req_id.
    raw_here
        .send_text(r#"{"cmd":"send_to_group", "group_id":"chat:9", "message":"hello"}"#)
        .await?;
    raw_here.expect_text("hello").await?;
    raw_there.expect_text("hello").await?;
    let got = next_positioned(&mut positioned_member, "chat:9", 1).await?;
    ensure!(got == vec![(1, "hello".to_owned())], "{got:?}");

    let refused = raw_there
        .reply_to(json!({"cmd":"add_group","group_id":"plain","positioned":true}))
        .await?;
    ensure!(refused["cmd"] == "error", "{refused}");
    expect_quiet([&mut raw_here, &mut raw_there, &mut positioned_member]).await?;
    Ok(())
}

/// The seed's flow on a group with history (`gateway` runs with `--history seed:=100,10m`): a
/// client joins and sends at once, both frames in one write (as the seed's browser snippet's two
/// sends arrive), and gets its message. A history message reaches this gateway's members only
/// through the store and the bus, so the join's subscription must be in place before the
/// message is published (without that it was lost in about half of the runs). Ten groups, each
/// joined first by this client; then, once every member left and the carrier dropped the
/// groups' subscriptions ([`carrier_subscriptions`]), the same again on the same groups (the
/// store knows them by then: no first-message lookup delays the publish).
pub async fn a_member_that_joins_and_sends_at_once_gets_its_message(
    gateway: &Gateway,
) -> Result<()> {
    let before = carrier_subscriptions(&gateway.admin.stats().await?)?;
    for pass in 0..2 {
        let mut clients = Vec::new();
        for i in 0..10 {
            let mut client = gateway.connect(format!("pass {pass} client {i}")).await?;
            let join = format!(r#"{{"cmd":"add_group","group_id":"seed:{i}"}}"#);
            let send = format!(
                r#"{{"cmd":"send_to_group","group_id":"seed:{i}","message":"message {pass}"}}"#
            );
            client
                .send_frames(&[RawFrame::text(join), RawFrame::text(send)])
                .await?;
            client
                .expect_text(&format!("message {pass}"))
                .await
                .with_context(|| format!("pass {pass}, group seed:{i}"))?;
            clients.push(client);
        }
        expect_quiet(clients.iter_mut()).await?;
        drop(clients);
        gateway
            .admin
            .wait_for_stats(
                "the carrier's subscriptions back to where they were",
                |stats| carrier_subscriptions(stats).ok() == Some(before),
            )
            .await?;
    }
    Ok(())
}

/// The subscriptions the carrier holds, as far as a gateway's stats tell: what Redis counted
/// for each shard's subscriber connection, NATS's live subscriptions, the embedded broker's
/// registry. A standalone broker's link reports the groups wanted (its subscribe and
/// unsubscribe frames are in order with its publishes on one connection).
pub fn carrier_subscriptions(stats: &Value) -> Result<u64> {
    if let Some(shards) = stats["bus"]["shards"].as_array().filter(|s| !s.is_empty()) {
        return shards
            .iter()
            .map(|shard| shard["subscriptions"].as_u64())
            .sum::<Option<u64>>()
            .with_context(|| format!("shards' subscriptions in {stats}"));
    }
    stat(stats, "/embedded_broker/subscriptions")
        .or_else(|| stat(stats, "/bus/subscriptions"))
        .with_context(|| format!("no subscription count in {stats}"))
}

/// The first half of the epoch change scenario (`gateway` runs with `--history
/// chat:=100,10m`): a member of `chat:1` receives 3 messages and leaves. Returns the sender and
/// the epoch the member knew; the test then makes the store lose its history (a restart, empty).
pub async fn before_the_store_is_lost(gateway: &Gateway) -> Result<(Client, String)> {
    let mut sender = gateway.connect("sender").await?;
    let mut member = gateway.connect("member").await?;
    let joined = join_positioned(&mut member, "chat:1", None).await?;
    let (_, epoch) = joined.position();
    send_all(&mut sender, "chat:1", texts(0, 3)).await?;
    next_positioned(&mut member, "chat:1", 3).await?;
    Ok((sender, epoch))
}

/// The second half, once the store came back empty: after the carrier's second `bus up`, a
/// recover from the old epoch answers `recovered:false` with a new epoch at offset 0 and
/// nothing recovered, and the group goes on from offset 1.
pub async fn after_the_store_is_lost(
    gateway: &Gateway,
    mut sender: Client,
    epoch: &str,
) -> Result<()> {
    gateway.process.wait_for_nth_log("bus up", 2, WAIT).await?;
    let mut member = gateway.connect("member again").await?;
    let recovered = join_positioned(&mut member, "chat:1", Some((3, epoch))).await?;
    ensure!(recovered.reply["recovered"] == false, "{}", recovered.reply);
    let (top, new_epoch) = recovered.position();
    ensure!(top == 0 && new_epoch != epoch, "{}", recovered.reply);
    ensure!(recovered.messages.is_empty());
    send_all(&mut sender, "chat:1", texts(3, 4)).await?;
    let live = next_positioned(&mut member, "chat:1", 1).await?;
    ensure!(live == vec![(1, "m3".to_owned())], "{live:?}");
    expect_quiet([&mut member]).await?;
    gateway.process.assert_no_panics()
}

/// Messages of the stream test.
const STREAM: usize = 10_000;
/// Positioned members on each of the two gateways.
const MEMBERS: usize = 3;

/// How far a member got.
#[derive(Debug, Default)]
struct Progress {
    received: std::sync::atomic::AtomicUsize,
    report: std::sync::Mutex<String>,
}

/// A positioned member of `group` that follows the gateway whose address `addr` holds: it
/// reads until it has [`STREAM`] messages, and after its gateway is gone it reconnects to the
/// next one and recovers from its last position. Returns the texts, and every `recovered` it
/// was answered. `progress` tells how far it got, for the report of a test that times out.
async fn follow(
    name: String,
    group: &'static str,
    mut addr: tokio::sync::watch::Receiver<std::net::SocketAddr>,
    progress: std::sync::Arc<Progress>,
) -> Result<(Vec<String>, Vec<Value>)> {
    let mut texts: Vec<String> = Vec::with_capacity(STREAM);
    let mut position: Option<(u64, String)> = None;
    let mut answers = Vec::new();
    let mut holes: Vec<(u64, u64)> = Vec::new();
    let mut take = |texts: &mut Vec<String>,
                    position: &mut Option<(u64, String)>,
                    offset: u64,
                    epoch: &str,
                    text: String| {
        if let Some((last, last_epoch)) = position.as_ref() {
            if last_epoch == epoch && offset != last + 1 {
                holes.push((*last, offset));
            }
        }
        *position = Some((offset, epoch.to_owned()));
        texts.push(text);
        progress
            .received
            .store(texts.len(), std::sync::atomic::Ordering::Relaxed);
        if let Ok(mut p) = progress.report.lock() {
            *p = format!(
                "{name}: {} received, at {position:?}, holes {holes:?}",
                texts.len()
            );
        }
    };
    while texts.len() < STREAM {
        let to = *addr.borrow_and_update();
        let Ok(mut client) = Client::connect(name.clone(), to).await else {
            // The gateway is going away: wait for the next one.
            tokio::time::timeout(Duration::from_secs(30), addr.changed())
                .await
                .context("no next gateway")??;
            continue;
        };
        let from = position.as_ref().map(|(o, e)| (*o, e.as_str()));
        let Ok(joined) = join_positioned(&mut client, group, from).await else {
            continue;
        };
        if from.is_some() {
            answers.push(json!({"from": from, "reply": joined.reply, "recovered_messages": joined.messages.len()}));
        }
        let epoch = joined.reply["epoch"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        if position.is_none() {
            position = Some(joined.position());
        }
        for (offset, text) in joined.messages {
            take(&mut texts, &mut position, offset, &epoch, text);
        }
        while texts.len() < STREAM {
            let Ok(value) = client.recv_json(Duration::from_secs(30)).await else {
                break; // the gateway is gone
            };
            let (offset, text) = positioned(&value, group)?;
            let epoch = value["epoch"].as_str().unwrap_or_default().to_owned();
            take(&mut texts, &mut position, offset, &epoch, text);
        }
    }
    Ok((texts, answers))
}

/// Where the histories of the stream test live, and how it goes away for a second.
#[derive(Debug)]
pub enum Engine {
    /// A standalone broker, stopped (SIGTERM) and started again on its port, empty.
    Broker {
        addr: SocketAddr,
        broker: Option<Broker>,
    },
    /// A `redis-server`, stopped (SIGTERM) and started again on its port, empty.
    Redis(RedisServer),
    /// A `nats-server -js`, stopped (SIGTERM) and started again on its port with its store.
    Nats(NatsServer),
}

impl Engine {
    fn gateway(&self, name: &str) -> GatewayConfig {
        match self {
            Engine::Broker { addr, .. } => GatewayConfig::with_broker(name, *addr),
            Engine::Redis(server) => GatewayConfig::with_bus(name, server.url()),
            Engine::Nats(server) => GatewayConfig::with_bus(name, server.url()),
        }
    }

    /// The engine goes away for [`OUTAGE`] and comes back where the gateways expect it.
    async fn interrupt(&mut self) -> Result<()> {
        match self {
            Engine::Broker { addr, broker } => {
                let mut stopped = broker.take().context("the broker")?;
                stopped.process.terminate().await?;
                stopped.process.wait(WAIT).await?;
                tokio::time::sleep(OUTAGE).await; // the outage itself
                *broker = Some(Broker::start_on("broker (restarted)", *addr).await?);
            }
            Engine::Redis(server) => server.stop_and_restart(OUTAGE).await?,
            Engine::Nats(server) => server.restart_keeping_store(OUTAGE).await?,
        }
        Ok(())
    }

    /// What the engine says of itself, for the report of a failed test.
    async fn report(&self) -> String {
        match self {
            Engine::Broker {
                broker: Some(broker),
                ..
            } => match broker.admin.stats().await {
                Ok(stats) => stats.to_string(),
                Err(e) => format!("{e:#}"),
            },
            Engine::Broker { broker: None, .. } => "the broker is down".into(),
            Engine::Redis(server) => server.process.stderr(),
            Engine::Nats(server) => server.process.stderr(),
        }
    }
}

/// How long the engine of the stream test is away.
const OUTAGE: Duration = Duration::from_secs(1);

/// While 10,000 messages go out in a steady stream (2,500 a second, from one sender on gateway
/// a): the engine stops for a second and comes back (the broker and Redis empty, with a new
/// epoch; NATS with its store), and later gateway b is killed (SIGKILL) and replaced. Every
/// positioned member ends with all 10,000 in order, none twice; those of b recover completely
/// (`recovered:true`) on the new b; a dropped no history message.
pub async fn a_stream_survives_an_outage_and_a_gateway_restart(engine: &mut Engine) -> Result<()> {
    const GROUP: &str = "s:1";
    let start_gateway = |engine: &Engine, name: &str| {
        Gateway::start(
            engine
                .gateway(name)
                .workers(2)
                .arg("--max-messages-per-second=0")
                // What the sender's gateway kept during the outage arrives as one burst: the
                // members' queues take it (the default, 1024, closes them as slow consumers,
                // and a recovery from before the outage rightly answers `recovered:false`).
                .arg("--outbound-queue-messages=20000")
                .arg("--outbound-queue-bytes=16777216")
                .arg("--history")
                .arg("s:=20000,10m"),
        )
    };
    let a = start_gateway(engine, "a").await?;
    let mut b = start_gateway(engine, "b").await?;
    let (a_addr, _keep_a) = tokio::sync::watch::channel(a.addr);
    let (b_addr, b_rx) = tokio::sync::watch::channel(b.addr);
    let mut members = Vec::new();
    let mut progress = Vec::new();
    for i in 0..MEMBERS {
        for (name, rx) in [
            (format!("a{i}"), a_addr.subscribe()),
            (format!("b{i}"), b_rx.clone()),
        ] {
            let p = std::sync::Arc::new(Progress::default());
            progress.push(p.clone());
            members.push(tokio::spawn(follow(name, GROUP, rx, p)));
        }
    }
    // Every member joined: both gateways hold the group.
    for gateway in [&a, &b] {
        gateway
            .admin
            .wait_for_counters("members joined", &[("/memberships", MEMBERS as u64)])
            .await?;
    }

    let mut sender = a.connect("sender").await?;
    let sent = texts(0, STREAM);
    let mut interval = tokio::time::interval(Duration::from_millis(20));
    // A steady stream: after the outage it goes on at the same pace, not in a catch-up burst.
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut b_before = String::new();
    for (i, chunk) in sent.chunks(50).enumerate() {
        interval.tick().await; // 2,500 messages a second
        for text in chunk {
            sender
                .send_text(
                    json!({"cmd":"send_to_group","group_id":GROUP,"message":text}).to_string(),
                )
                .await?;
        }
        let done = (i + 1) * 50;
        if done == 2_000 {
            engine.interrupt().await?;
        }
        if done == 6_000 {
            // Once every member of b has messages from after the outage (an engine that came
            // back empty has a new epoch: recovering from the old one would rightly answer
            // `recovered:false`).
            let members_of_b: Vec<_> = progress.iter().skip(1).step_by(2).cloned().collect();
            let caught_up = async {
                while members_of_b
                    .iter()
                    .any(|p| p.received.load(std::sync::atomic::Ordering::Relaxed) < 2_100)
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            if tokio::time::timeout(Duration::from_secs(30), caught_up)
                .await
                .is_err()
            {
                let stats = b.admin.stats().await?;
                let seen: Vec<String> = progress
                    .iter()
                    .filter_map(|p| p.report.lock().ok().map(|p| p.clone()))
                    .collect();
                let engine_report = engine.report().await;
                bail!(
                    "the members of b never got 2,100 messages: {seen:#?}\nb: {} {}\npanics: {:?}\nengine: {engine_report}\nb log: {}",
                    stats["history"],
                    stats["bus"],
                    b.process.panics(),
                    b.process.stderr().lines().filter(|l| l.contains("bus") || l.contains("broker")).collect::<Vec<_>>().join("\n")
                );
            }
            let before = b.admin.stats().await?;
            b_before = format!("{} {}", before["history"], before["bus"]);
            b.process.kill(WAIT).await?;
            b = start_gateway(engine, "b (restarted)").await?;
            b_addr.send_replace(b.addr);
        }
    }

    let mut results = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    for member in members {
        let Ok(result) = tokio::time::timeout_at(deadline, member).await else {
            let seen: Vec<String> = progress
                .iter()
                .filter_map(|p| p.report.lock().ok().map(|p| p.clone()))
                .collect();
            let a_stats = a.admin.stats().await?;
            let b_stats = b.admin.stats().await?;
            bail!(
                "a member never got every message: {seen:#?}\nb before its restart: {b_before}\na: {} {} {}\nb: {} {} {}",
                a_stats["history"],
                a_stats["bus"],
                a_stats["workers"],
                b_stats["history"],
                b_stats["bus"],
                b_stats["workers"]
            );
        };
        results.push(result??);
    }
    for (i, (texts, answers)) in results.iter().enumerate() {
        let first_wrong = texts.iter().zip(&sent).position(|(got, want)| got != want);
        ensure!(
            texts.len() == STREAM && first_wrong.is_none(),
            "member {i}: {} messages, first out of place at {first_wrong:?}",
            texts.len()
        );
        ensure!(
            answers
                .iter()
                .all(|r| r["reply"]["recovered"] == Value::Bool(true)),
            "member {i}: recoveries {answers:?}"
        );
    }
    // The members of b recovered once each.
    ensure!(results.iter().filter(|(_, a)| a.len() == 1).count() == MEMBERS);
    let stats = a.admin.stats().await?;
    ensure!(
        stats["bus"]["history_publishes_dropped"] == 0,
        "{}",
        stats["bus"]
    );
    a.process.assert_no_panics()?;
    b.process.assert_no_panics()
}
