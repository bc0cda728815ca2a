//! History and recovery (`--history`), on the embedded broker and the standalone one: offsets
//! and epochs, recovery after a disconnection with no duplicate and no gap, `recovered:false`
//! when the epoch changed or the history no longer reaches back, bounds, and raw members that
//! see no change.

use anyhow::{ensure, Context, Result};
use e2e::history::{join_positioned, next_positioned, texts, WAIT};
use e2e::{Broker, Gateway, GatewayConfig};

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
    a_member_that_joins_and_sends_at_once_gets_its_message,
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
    let offsets = e2e::history::page_offsets(&page)?;
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

/// While 10,000 messages go out in a steady stream: the broker stops for a second (its history
/// with it: a new epoch), and one of two gateways is restarted. Every positioned member ends
/// with all 10,000 in order, none twice; those of the restarted gateway recover completely.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_survives_a_broker_outage_and_a_gateway_restart() -> Result<()> {
    let broker = Broker::start("broker").await?;
    let mut engine = e2e::history::Engine::Broker {
        addr: broker.addr,
        broker: Some(broker),
    };
    e2e::history::a_stream_survives_an_outage_and_a_gateway_restart(&mut engine).await
}

/// While the store cannot be reached (the broker is down): a history read answers 503
/// `history_unavailable`, a positioned join is answered `joined` with the error and no position,
/// and a recovering one `recovered:false` with the error. Once the broker is back, both work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_store_reads_and_joins_say_so() -> Result<()> {
    let broker = Broker::start("broker").await?;
    let broker_addr = broker.addr;
    let gateway = Gateway::start(
        GatewayConfig::with_broker("gw", broker_addr)
            .workers(2)
            .arg("--history")
            .arg("h:=10,1m"),
    )
    .await?;
    let mut member = gateway.connect("member").await?;
    let joined = join_positioned(&mut member, "h:1", None).await?;
    let (_, epoch) = joined.position();
    drop(broker);
    gateway
        .admin
        .wait_for_stats("the bus down", |stats| stats["bus"]["up"] == false)
        .await?;

    let (status, body) = gateway.admin.get("/api/history/h:1").await?;
    ensure!(
        status == 503 && body.contains("history_unavailable"),
        "{status} {body}"
    );
    let mut other = gateway.connect("other").await?;
    let joined = join_positioned(&mut other, "h:2", None).await?;
    ensure!(
        joined.messages.is_empty()
            && joined.reply["error"]
                .as_str()
                .is_some_and(|e| !e.is_empty())
            && joined.reply.get("offset").is_none(),
        "{}",
        joined.reply
    );
    let mut again = gateway.connect("again").await?;
    let joined = join_positioned(&mut again, "h:1", Some((0, &epoch))).await?;
    ensure!(
        joined.reply["recovered"] == false
            && joined.reply["error"]
                .as_str()
                .is_some_and(|e| !e.is_empty()),
        "{}",
        joined.reply
    );

    let _broker = Broker::start_on("broker (restarted)", broker_addr).await?;
    gateway
        .admin
        .wait_for_stats("the bus up", |stats| stats["bus"]["up"] == true)
        .await?;
    let mut late = gateway.connect("late").await?;
    let joined = join_positioned(&mut late, "h:3", None).await?;
    ensure!(
        joined.reply["offset"] == 0 && joined.reply.get("error").is_none(),
        "{}",
        joined.reply
    );
    e2e::expect_quiet([&mut member, &mut other, &mut again, &mut late]).await
}

async fn a_member_that_joins_and_sends_at_once_gets_its_message(carrier: Carrier) -> Result<()> {
    let setup = setup(carrier, 1, "seed:=100,10m").await?;
    e2e::history::a_member_that_joins_and_sends_at_once_gets_its_message(&setup.gateways[0]).await
}
