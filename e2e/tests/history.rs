//! History and recovery (`--history`), on the embedded broker and the standalone one: offsets
//! and epochs, recovery after a disconnection with no duplicate and no gap, `recovered:false`
//! when the epoch changed or the history no longer reaches back, bounds, and raw members that
//! see no change.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use e2e::history::{join_positioned, next_positioned, texts, WAIT};
use e2e::{Broker, Gateway, GatewayConfig};
use serde_json::{json, Value};

enum Carrier {
    Embedded,
    Standalone,
}

struct Setup {
    gateways: Vec<Gateway>,
    broker: Option<Broker>,
}

async fn setup(carrier: Carrier, gateways: usize, history: &str) -> Result<Setup> {
    let broker = match carrier {
        Carrier::Embedded => None,
        Carrier::Standalone => Some(Broker::start("broker").await?),
    };
    let mut started = Vec::new();
    for i in 0..gateways {
        let config = match &broker {
            Some(broker) => GatewayConfig::with_broker(&format!("gw{i}"), broker.addr),
            None if i == 0 => GatewayConfig::embedded("gw0"),
            None => GatewayConfig::with_broker(
                &format!("gw{i}"),
                started
                    .first()
                    .and_then(|g: &Gateway| g.embedded_broker)
                    .context("the first gateway's embedded broker")?,
            ),
        };
        started.push(
            Gateway::start(
                config
                    .workers(2)
                    .arg("--max-messages-per-second=0")
                    .arg("--history")
                    .arg(history),
            )
            .await?,
        );
    }
    Ok(Setup {
        gateways: started,
        broker,
    })
}

macro_rules! on_both_brokers {
    ($($name:ident),* $(,)?) => {
        mod embedded {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Carrier::Embedded).await
                }
            )*
        }
        mod standalone {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(super::Carrier::Standalone).await
                }
            )*
        }
    };
}

on_both_brokers!(
    a_member_recovers_exactly_what_it_missed,
    an_offset_older_than_history_recovers_what_is_left,
    raw_members_see_no_change,
);

async fn a_member_recovers_exactly_what_it_missed(carrier: Carrier) -> Result<()> {
    let setup = setup(carrier, 2, "chat:=1000,10m").await?;
    e2e::history::a_member_recovers_exactly_what_it_missed(&setup.gateways[0], &setup.gateways[1])
        .await
}

async fn an_offset_older_than_history_recovers_what_is_left(carrier: Carrier) -> Result<()> {
    let setup = setup(carrier, 1, "h:=20,10m").await?;
    e2e::history::an_offset_older_than_history_recovers_what_is_left(&setup.gateways[0]).await
}

async fn raw_members_see_no_change(carrier: Carrier) -> Result<()> {
    let setup = setup(carrier, 2, "chat:=100,10m").await?;
    e2e::history::raw_members_see_no_change(&setup.gateways[0], &setup.gateways[1]).await
}

/// The store restarted empty (the standalone broker): a recover answers `recovered:false` with
/// the new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_change_answers_recovered_false() -> Result<()> {
    let mut setup = setup(Carrier::Standalone, 1, "chat:=100,10m").await?;
    let (sender, epoch) = e2e::history::before_the_store_is_lost(&setup.gateways[0]).await?;
    let mut broker = setup.broker.take().context("standalone broker")?;
    let addr = broker.addr;
    broker.process.kill(WAIT).await?;
    let _broker = Broker::start_on("broker (restarted)", addr).await?;
    e2e::history::after_the_store_is_lost(&setup.gateways[0], sender, &epoch).await
}

/// The admin API reads a group's history (since, limit, reverse), publishes past it
/// (`"history":false`), and removes it (a new epoch follows).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_reads_and_removes_history() -> Result<()> {
    let setup = setup(Carrier::Embedded, 1, "log:=5,10m").await?;
    let gateway = &setup.gateways[0];
    let admin = &gateway.admin;
    let mut member = gateway.connect("member").await?;
    let joined = join_positioned(&mut member, "log:1", None).await?;
    let (_, epoch) = joined.position();
    let mut raw = gateway.connect("raw").await?;
    raw.join("log:1").await?;
    let publish = |body: serde_json::Value| {
        admin.call(
            admin
                .http()
                .post(admin.url("/api/publish"))
                .header("content-type", "application/json")
                .body(body.to_string()),
        )
    };
    let items: Vec<_> = texts(0, 7)
        .into_iter()
        .map(|m| serde_json::json!({"group_id": "log:1", "message": m}))
        .collect();
    let (status, answer) = publish(serde_json::Value::Array(items)).await?;
    ensure!(
        status == 200 && answer["published"] == 7,
        "{status} {answer}"
    );
    next_positioned(&mut member, "log:1", 7).await?;
    for text in texts(0, 7) {
        raw.expect_text(&text).await?;
    }

    let page = admin.get_json("/api/history/log:1").await?;
    ensure!(
        page["epoch"] == epoch.as_str() && page["offset"] == 7,
        "{page}"
    );
    let offsets: Vec<u64> = page["messages"]
        .as_array()
        .context("messages")?
        .iter()
        .filter_map(|m| m["offset"].as_u64())
        .collect();
    ensure!(offsets == [3, 4, 5, 6, 7], "the last 5 kept: {page}");
    ensure!(page["messages"][0]["message"] == "m2", "{page}");
    let page = admin.get_json("/api/history/log:1?since=5&limit=1").await?;
    ensure!(
        page["messages"] == serde_json::json!([{"offset":6,"message":"m5"}]),
        "{page}"
    );
    let page = admin
        .get_json("/api/history/log:1?reverse=true&limit=2")
        .await?;
    ensure!(
        page["messages"][0]["offset"] == 7 && page["messages"][1]["offset"] == 6,
        "{page}"
    );
    let (status, body) = admin.get("/api/history/plain").await?;
    ensure!(
        status == 400 && body.contains("no_history"),
        "{status} {body}"
    );
    let (status, body) = admin.get("/api/history/log:1?limit=6").await?;
    ensure!(
        status == 400 && body.contains("invalid_field"),
        "{status} {body}"
    );

    // Past the history: raw text for everyone, nothing stored.
    let (status, answer) =
        publish(serde_json::json!({"group_id": "log:1", "message": "unstored", "history": false}))
            .await?;
    ensure!(status == 200, "{status} {answer}");
    raw.expect_text("unstored").await?;
    member.expect_text("unstored").await?;
    let page = admin.get_json("/api/history/log:1").await?;
    ensure!(page["offset"] == 7, "not stored: {page}");
    // `exclude` on a group with history needs `"history":false`.
    let (status, answer) = publish(
        serde_json::json!({"group_id": "log:1", "message": "x", "exclude": ["0000000000000001-0-0"]}),
    )
    .await?;
    ensure!(
        status == 400 && answer["error"]["code"] == "invalid_field",
        "{status} {answer}"
    );
    // A client cannot skip the history: its send with `exclude` is refused.
    let refused = raw
        .reply_to(
            serde_json::json!({"cmd": "send_to_group", "group_id": "log:1", "message": "x",
            "exclude": ["0000000000000001-0-0"]}),
        )
        .await?;
    ensure!(
        refused["cmd"] == "error" && refused["code"] == "invalid_field",
        "{refused}"
    );

    let (status, answer) = admin
        .call(
            admin
                .http()
                .post(admin.url("/api/history_remove"))
                .header("content-type", "application/json")
                .body(r#"{"group_id":"log:1"}"#),
        )
        .await?;
    ensure!(
        status == 200 && answer["removed"] == true,
        "{status} {answer}"
    );
    let page = admin.get_json("/api/history/log:1").await?;
    ensure!(
        page["offset"] == 0 && page["epoch"] != epoch.as_str(),
        "{page}"
    );
    e2e::expect_quiet([&mut member, &mut raw]).await?;
    Ok(())
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
        let Ok(mut client) = e2e::Client::connect(name.clone(), to).await else {
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
            let (offset, text) = e2e::history::positioned(&value, group)?;
            let epoch = value["epoch"].as_str().unwrap_or_default().to_owned();
            take(&mut texts, &mut position, offset, &epoch, text);
        }
    }
    Ok((texts, answers))
}

/// While 10,000 messages go out in a steady stream: the broker stops for a second (its history
/// with it: a new epoch), and one of two gateways is restarted. Every positioned member ends
/// with all 10,000 in order, none twice; those of the restarted gateway recover completely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_survives_a_broker_outage_and_a_gateway_restart() -> Result<()> {
    const GROUP: &str = "s:1";
    let broker = Broker::start("broker").await?;
    let broker_addr = broker.addr;
    let mut broker = Some(broker);
    let start_gateway = |name: &str| {
        Gateway::start(
            GatewayConfig::with_broker(name, broker_addr)
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
    let a = start_gateway("a").await?;
    let mut b = start_gateway("b").await?;
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
            // The broker stops (gracefully) for a second and comes back empty.
            let mut stopped = broker.take().context("the broker")?;
            stopped.process.terminate().await?;
            stopped.process.wait(WAIT).await?;
            tokio::time::sleep(Duration::from_secs(1)).await; // the outage itself
            broker = Some(Broker::start_on("broker (restarted)", broker_addr).await?);
        }
        if done == 6_000 {
            // Once every member of b has messages of the new epoch (the old one's history went
            // with the broker: recovering from it would rightly answer `recovered:false`).
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
                let broker_stats = match &broker {
                    Some(broker) => broker.admin.stats().await?,
                    None => Value::Null,
                };
                bail!(
                    "the members of b never got messages of the new epoch: {seen:#?}\nb: {} {}\npanics: {:?}\nbroker: {broker_stats}\nb log: {}",
                    stats["history"],
                    stats["bus"],
                    b.process.panics(),
                    b.process.stderr().lines().filter(|l| l.contains("bus") || l.contains("broker")).collect::<Vec<_>>().join("\n")
                );
            }
            let before = b.admin.stats().await?;
            b_before = format!("{} {}", before["history"], before["bus"]);
            b.process.kill(WAIT).await?;
            b = start_gateway("b (restarted)").await?;
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
