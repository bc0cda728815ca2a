//! History and recovery scenarios (`--history`), run by every carrier's tests: the helpers to
//! join with positions and read positioned messages, and the scenarios themselves.

use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use serde_json::{json, Value};

use crate::{expect_quiet, Client, Gateway};

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
