//! History and recovery (`--history`) on Redis: the shared scenarios of `e2e::history` on one
//! server, on two independent shards and on a Redis Cluster; an epoch change when Redis comes
//! back empty; and what Redis holds of a history (at most SIZE entries, keys that expire, in the
//! slot of the group's channel).

use anyhow::{bail, ensure, Context, Result};
use e2e::history::{send_all, texts};
use e2e::{stat, Gateway, GatewayConfig};
use futures_util::future::try_join_all;
use test_support::redis::{RedisCluster, RedisServer};

/// What the gateways use: independent servers (one, or several shards), or a cluster.
enum Engine {
    Servers(Vec<RedisServer>),
    Cluster(RedisCluster),
}

impl Engine {
    async fn shards(n: usize) -> Result<Engine> {
        let mut servers = Vec::new();
        for i in 0..n {
            servers.push(RedisServer::start(&format!("redis-shard-{i}")).await?);
        }
        Ok(Engine::Servers(servers))
    }

    async fn cluster() -> Result<Engine> {
        Ok(Engine::Cluster(RedisCluster::start(3, 0).await?))
    }

    fn url(&self) -> String {
        match self {
            Engine::Servers(servers) => servers
                .iter()
                .map(RedisServer::url)
                .collect::<Vec<_>>()
                .join(","),
            Engine::Cluster(cluster) => cluster.url(),
        }
    }

    fn servers(&self) -> Vec<&RedisServer> {
        match self {
            Engine::Servers(servers) => servers.iter().collect(),
            Engine::Cluster(cluster) => cluster.nodes.iter().collect(),
        }
    }
}

/// `n` gateways on `engine`, each with `--history history`.
async fn gateways(engine: &Engine, n: usize, history: &str) -> Result<Vec<Gateway>> {
    try_join_all((0..n).map(|i| {
        Gateway::start(
            GatewayConfig::with_bus(&format!("gw{i}"), engine.url())
                .workers(2)
                .arg("--max-messages-per-second=0")
                .arg("--history")
                .arg(history),
        )
    }))
    .await
}

/// The scenario, and no history message dropped nor taken for an echo.
async fn a_member_recovers_exactly_what_it_missed(engine: &Engine) -> Result<()> {
    let gateways = gateways(engine, 2, "chat:=1000,10m").await?;
    e2e::history::a_member_recovers_exactly_what_it_missed(&gateways[0], &gateways[1]).await?;
    for gateway in &gateways {
        let stats = gateway.admin.stats().await?;
        ensure!(
            stat(&stats, "/bus/history_publishes_dropped") == Some(0)
                && stat(&stats, "/bus/echoes_dropped") == Some(0),
            "{stats}"
        );
    }
    Ok(())
}

async fn an_offset_older_than_history_recovers_what_is_left(engine: &Engine) -> Result<()> {
    let gateways = gateways(engine, 1, "h:=20,10m").await?;
    e2e::history::an_offset_older_than_history_recovers_what_is_left(&gateways[0]).await
}

async fn a_member_that_joins_and_sends_at_once_gets_its_message(engine: &Engine) -> Result<()> {
    let gateways = gateways(engine, 1, "seed:=100,10m").await?;
    e2e::history::a_member_that_joins_and_sends_at_once_gets_its_message(&gateways[0]).await
}

async fn raw_members_see_no_change(engine: &Engine) -> Result<()> {
    let gateways = gateways(engine, 2, "chat:=100,10m").await?;
    e2e::history::raw_members_see_no_change(&gateways[0], &gateways[1]).await
}

macro_rules! on_redis_and_shards {
    ($($name:ident),* $(,)?) => {
        mod one_redis {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(&super::Engine::shards(1).await?).await
                }
            )*
        }
        mod two_shards {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() -> anyhow::Result<()> {
                    super::$name(&super::Engine::shards(2).await?).await
                }
            )*
        }
    };
}

on_redis_and_shards!(
    a_member_recovers_exactly_what_it_missed,
    an_offset_older_than_history_recovers_what_is_left,
    raw_members_see_no_change,
    a_member_that_joins_and_sends_at_once_gets_its_message,
);

/// The keys of `group`'s history (prefix `gp`) on `server`: its hash and its stream.
async fn history_keys(server: &RedisServer, group: &str) -> Result<Vec<String>> {
    let mut keys: Vec<String> = server
        .query(redis::cmd("KEYS").arg(format!("gp:h:*:{group}")))
        .await?;
    keys.sort();
    Ok(keys)
}

/// On a cluster: the recovery scenario, and the history's keys are on the master serving the
/// group's channel, in its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_recovers_exactly_what_it_missed_on_a_cluster() -> Result<()> {
    let engine = Engine::cluster().await?;
    a_member_recovers_exactly_what_it_missed(&engine).await?;
    let Engine::Cluster(cluster) = &engine else {
        bail!("a cluster")
    };
    let master = cluster.master_of(0, b"gp:chat:1").await?;
    let node = &cluster.nodes[master];
    let keys = history_keys(node, "chat:1").await?;
    ensure!(keys.len() == 2, "{keys:?} on the channel's master");
    let channel_slot: i64 = node
        .query(redis::cmd("CLUSTER").arg("KEYSLOT").arg("gp:chat:1"))
        .await?;
    for key in &keys {
        let slot: i64 = node
            .query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(key))
            .await?;
        ensure!(
            slot == channel_slot,
            "{key} in slot {slot}, not {channel_slot}"
        );
    }
    Ok(())
}

/// On a cluster: a client that joins a group and sends to it at once gets its message (the
/// subscription is on the master serving the channel's slot before the script publishes there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_joins_and_sends_at_once_gets_its_message_on_a_cluster() -> Result<()> {
    a_member_that_joins_and_sends_at_once_gets_its_message(&Engine::cluster().await?).await
}

/// Redis restarted empty: a recover answers `recovered:false` with the new epoch, from 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_epoch_change_answers_recovered_false() -> Result<()> {
    let mut engine = Engine::shards(1).await?;
    let gateways = gateways(&engine, 1, "chat:=100,10m").await?;
    let (sender, epoch) = e2e::history::before_the_store_is_lost(&gateways[0]).await?;
    let Engine::Servers(servers) = &mut engine else {
        bail!("one server")
    };
    servers[0].kill().await?;
    servers[0].restart().await?;
    e2e::history::after_the_store_is_lost(&gateways[0], sender, &epoch).await
}

/// Stream nodes of a `redis-server` by default (`stream-node-max-entries`): the publish trims
/// whole nodes, so a stream holds at most SIZE plus this many entries between reads.
const STREAM_NODE_ENTRIES: i64 = 100;

/// Redis holds the last SIZE entries of a group (up to one stream node more until a read trims
/// it exactly), in two keys that expire TTL after the last message (`--history h:=20,10m`); a
/// read gives exactly the last SIZE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_at_most_size_entries_and_they_expire() -> Result<()> {
    const SENT: usize = 250;
    let engine = Engine::shards(1).await?;
    let gateways = gateways(&engine, 1, "h:=20,10m").await?;
    let mut sender = gateways[0].connect("sender").await?;
    let mut witness = gateways[0].connect("witness").await?;
    e2e::history::join_positioned(&mut witness, "h:1", None).await?;
    send_all(&mut sender, "h:1", texts(0, SENT)).await?;
    // Stored once the positioned member has them all.
    e2e::history::next_positioned(&mut witness, "h:1", SENT).await?;
    let server = engine.servers()[0];
    let keys = history_keys(server, "h:1").await?;
    let [meta, stream] = &keys[..] else {
        bail!("not two keys: {keys:?}");
    };
    ensure!(
        meta.starts_with("gp:h:{") && meta.ends_with("}:m:h:1"),
        "{meta}"
    );
    ensure!(stream.ends_with("}:s:h:1"), "{stream}");
    let len: i64 = server.query(redis::cmd("XLEN").arg(stream)).await?;
    ensure!(
        (20..=20 + STREAM_NODE_ENTRIES).contains(&len),
        "{len} entries kept, not 20 to {}",
        20 + STREAM_NODE_ENTRIES
    );
    let top: i64 = server.query(redis::cmd("HGET").arg(meta).arg("o")).await?;
    ensure!(top == SENT as i64, "last offset {top}");
    let page = gateways[0]
        .admin
        .get_json("/api/history/h:1?limit=20")
        .await?;
    let offsets = e2e::history::page_offsets(&page)?;
    ensure!(
        offsets == (SENT as u64 - 19..=SENT as u64).collect::<Vec<_>>(),
        "the last 20: {page}"
    );
    let len: i64 = server.query(redis::cmd("XLEN").arg(stream)).await?;
    ensure!(len == 20, "{len} entries after a read, not 20");
    for key in [meta, stream] {
        let ttl: i64 = server.query(redis::cmd("PTTL").arg(key)).await?;
        ensure!(0 < ttl && ttl <= 600_000, "{key} expires in {ttl} ms");
    }
    let stats = gateways[0].admin.stats().await?;
    ensure!(
        stat(&stats, "/bus/history_publishes") == Some(SENT as u64)
            && stat(&stats, "/bus/history_publishes_dropped") == Some(0),
        "{stats}"
    );
    gateways[0]
        .process
        .assert_no_panics()
        .with_context(|| format!("after {SENT} messages"))
}

/// While 10,000 messages go out in a steady stream, Redis stops for a second and comes back
/// empty (a new epoch), and one of two gateways is replaced: every positioned member ends with
/// all 10,000 in order, none twice (the scenario of [`e2e::history`]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_survives_a_redis_outage_and_a_gateway_restart() -> Result<()> {
    let server = RedisServer::start("redis").await?;
    e2e::history::a_stream_survives_an_outage_and_a_gateway_restart(
        &mut e2e::history::Engine::Redis(server),
    )
    .await
}
