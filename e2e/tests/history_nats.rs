//! History and recovery (`--history`) on the NATS carrier, against real `nats-server` processes
//! with JetStream (`-js`): the scenarios every carrier runs ([`e2e::history`]), two gateways
//! storing messages of one group at once (offsets consecutive, every member in the same order),
//! an epoch change when the server comes back without its store, and what the stream holds
//! (read with the JetStream API, as `nats stream info` would).

use std::collections::BTreeMap;

use anyhow::{bail, ensure, Context, Result};
use e2e::history::{join_positioned, next_positioned, send_all, WAIT};
use e2e::{expect_quiet, Gateway, GatewayConfig};
use serde_json::{json, Value};
use test_support::nats::NatsServer;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// A gateway named `name` on `server`, with `--history history`.
async fn gateway(name: &str, server: &NatsServer, history: &str) -> Result<Gateway> {
    Gateway::start(
        GatewayConfig::with_bus(name, server.url())
            .workers(2)
            .arg(format!("--node-name={name}"))
            .arg("--max-messages-per-second=0")
            .arg("--history")
            .arg(history),
    )
    .await
}

async fn jetstream(name: &str) -> Result<NatsServer> {
    NatsServer::start_jetstream(name, None).await
}

/// A JetStream API request (`$JS.API.{api}`) over a plain NATS connection: its JSON answer.
async fn jetstream_api(server: &NatsServer, api: &str, request: &Value) -> Result<Value> {
    let exchange = async {
        let stream = TcpStream::connect(server.addr()).await?;
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let body = request.to_string();
        write
            .write_all(
                format!(
                    "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB _INBOX.e2e 1\r\n\
                     PUB $JS.API.{api} _INBOX.e2e {}\r\n{body}\r\n",
                    body.len()
                )
                .as_bytes(),
            )
            .await?;
        loop {
            let mut line = String::new();
            if read.read_line(&mut line).await? == 0 {
                bail!("the server closed the connection");
            }
            if line.starts_with("PING") {
                write.write_all(b"PONG\r\n").await?;
            } else if line.starts_with("-ERR") {
                bail!("the server refused: {}", line.trim_end());
            } else if line.starts_with("MSG ") {
                let size: usize = line
                    .split_whitespace()
                    .last()
                    .and_then(|size| size.parse().ok())
                    .with_context(|| format!("no size in {line:?}"))?;
                let mut payload = vec![0; size + 2];
                read.read_exact(&mut payload).await?;
                payload.truncate(size);
                return Ok(serde_json::from_slice(&payload)?);
            }
        }
    };
    tokio::time::timeout(WAIT, exchange)
        .await
        .with_context(|| format!("no answer to $JS.API.{api}"))?
}

/// The stream of a `--history` policy: its config, and the messages on each of its subjects.
async fn stream_info(server: &NatsServer, stream: &str) -> Result<(Value, BTreeMap<String, u64>)> {
    let info = jetstream_api(
        server,
        &format!("STREAM.INFO.{stream}"),
        &json!({"subjects_filter": ">"}),
    )
    .await?;
    ensure!(info.get("error").is_none(), "{info}");
    let subjects = info["state"]["subjects"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(subject, n)| (subject.clone(), n.as_u64().unwrap_or_default()))
        .collect();
    Ok((info["config"].clone(), subjects))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_recovers_exactly_what_it_missed() -> Result<()> {
    let nats = jetstream("nats").await?;
    let a = gateway("gw0", &nats, "chat:=1000,10m").await?;
    let b = gateway("gw1", &nats, "chat:=1000,10m").await?;
    e2e::history::a_member_recovers_exactly_what_it_missed(&a, &b).await
}

/// What is left of a history of 20 after 50 messages, and the stream holds no more than that:
/// 20 messages on the group's subject (and its epoch on the other).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_older_than_history_recovers_what_is_left() -> Result<()> {
    let nats = jetstream("nats").await?;
    let gateway = gateway("gw0", &nats, "h:=20,10m").await?;
    e2e::history::an_offset_older_than_history_recovers_what_is_left(&gateway).await?;

    let (config, subjects) = stream_info(&nats, "gp_history_20_600000").await?;
    ensure!(
        config["max_msgs_per_subject"] == 20,
        "the stream keeps 20 per subject: {config}"
    );
    ensure!(
        config["max_age"] == 600_000_000_000u64,
        "the stream keeps them 10 minutes: {config}"
    );
    let expected = BTreeMap::from([
        ("gp.h.20.600000.e.h~3A1".to_owned(), 1),
        ("gp.h.20.600000.m.h~3A1".to_owned(), 20),
    ]);
    ensure!(subjects == expected, "{subjects:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_members_see_no_change() -> Result<()> {
    let nats = jetstream("nats").await?;
    let a = gateway("gw0", &nats, "chat:=100,10m").await?;
    let b = gateway("gw1", &nats, "chat:=100,10m").await?;
    e2e::history::raw_members_see_no_change(&a, &b).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_joins_and_sends_at_once_gets_its_message() -> Result<()> {
    let nats = jetstream("nats").await?;
    let gateway = gateway("gw0", &nats, "seed:=100,10m").await?;
    e2e::history::a_member_that_joins_and_sends_at_once_gets_its_message(&gateway).await
}

/// Senders on two gateways store messages of one group at once: the offsets are 1 to 200
/// without a gap or a repeat, each sender's messages in its order, and the members on both
/// gateways receive the same messages at the same offsets, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_gateways_storing_at_once_share_one_sequence_of_offsets() -> Result<()> {
    const EACH: usize = 100;
    let nats = jetstream("nats").await?;
    let a = gateway("gw0", &nats, "chat:=1000,10m").await?;
    let b = gateway("gw1", &nats, "chat:=1000,10m").await?;
    let mut member_a = a.connect("member a").await?;
    let mut member_b = b.connect("member b").await?;
    join_positioned(&mut member_a, "chat:race", None).await?;
    join_positioned(&mut member_b, "chat:race", None).await?;
    let mut sender_a = a.connect("sender a").await?;
    let mut sender_b = b.connect("sender b").await?;
    let from = |who: &str| (0..EACH).map(|i| format!("{who}{i}")).collect::<Vec<_>>();
    let (sent_a, sent_b) = tokio::join!(
        send_all(&mut sender_a, "chat:race", from("a")),
        send_all(&mut sender_b, "chat:race", from("b")),
    );
    sent_a?;
    sent_b?;
    let got_a = next_positioned(&mut member_a, "chat:race", 2 * EACH).await?;
    let got_b = next_positioned(&mut member_b, "chat:race", 2 * EACH).await?;
    let offsets: Vec<u64> = got_a.iter().map(|(offset, _)| *offset).collect();
    ensure!(
        offsets == (1..=2 * EACH as u64).collect::<Vec<_>>(),
        "{offsets:?}"
    );
    ensure!(
        got_a == got_b,
        "the members disagree:\n{got_a:?}\n{got_b:?}"
    );
    for who in ["a", "b"] {
        let theirs: Vec<String> = got_a
            .iter()
            .filter(|(_, text)| text.starts_with(who))
            .map(|(_, text)| text.clone())
            .collect();
        ensure!(theirs == from(who), "{who}'s messages: {theirs:?}");
    }
    expect_quiet([&mut member_a, &mut member_b]).await?;
    for gateway in [&a, &b] {
        gateway.process.assert_no_panics()?;
    }
    Ok(())
}

/// The server comes back without its store: a recover answers `recovered:false` with a new
/// epoch, and the group starts again from offset 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_change_answers_recovered_false() -> Result<()> {
    let mut nats = jetstream("nats").await?;
    let gateway = gateway("gw0", &nats, "chat:=100,10m").await?;
    let (sender, epoch) = e2e::history::before_the_store_is_lost(&gateway).await?;
    let port = nats.port;
    nats.kill().await?;
    drop(nats);
    let _nats = NatsServer::start_jetstream("nats (restarted, empty)", Some(port)).await?;
    e2e::history::after_the_store_is_lost(&gateway, sender, &epoch).await
}

/// While 10,000 messages go out in a steady stream, the NATS server stops for a second and
/// comes back with its store, and one of two gateways is replaced: every positioned member ends
/// with all 10,000 in order, none twice (the scenario of [`e2e::history`]); what the sender's
/// gateway took during the outage is stored once the server is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_survives_a_nats_outage_and_a_gateway_restart() -> Result<()> {
    let server = jetstream("nats").await?;
    e2e::history::a_stream_survives_an_outage_and_a_gateway_restart(
        &mut e2e::history::Engine::Nats(server),
    )
    .await
}
