//! The recipes of docs/deploy.md ("First steps" and "Recipes") and the migration from a
//! Workerman Channel server (docs/php-channel.md) run as written, through the docs harness
//! (`e2e::docs`: every port replaced by a free one, the same port everywhere in a session,
//! `0.0.0.0` by `127.0.0.1`, `target/release/NAME` by the binaries the tests built). A recipe
//! with two gateways then has to deliver both ways between them: a member on each gateway
//! receives what a member of the other sends, once, and nothing else.
//!
//! The Redis Cluster recipe names seed nodes it does not start: the test starts a cluster and
//! maps the recipe's ports to its nodes.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use std::time::Duration;

use e2e::docs::{covered_blocks, Session};
use e2e::{expect_quiet, Client, STARTUP_TIMEOUT};

use test_support::redis::RedisCluster;

/// How long b waits for each probe before a sends the next.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// A client of each gateway receives its own message: the gateway serves, its bus is up.
async fn each_serves(name: &str, started: &Session) -> Result<()> {
    for addr in started.gateway_addrs() {
        let mut client = Client::connect(format!("{name} {addr}"), addr).await?;
        client.join("recipe").await?;
        client.publish("recipe", "hello").await?;
        client.expect_text("hello").await?;
        expect_quiet([&mut client]).await?;
    }
    Ok(())
}

/// A member on each of the two gateways receives what the other's member sends, once.
async fn delivers_both_ways(name: &str, started: &Session) -> Result<()> {
    let [a, b] = started.gateway_addrs()[..] else {
        bail!(
            "{name}: expected two gateways, got {:?}",
            started.gateway_addrs()
        );
    };
    let mut on_a = Client::connect(format!("{name} a"), a).await?;
    let mut on_b = Client::connect(format!("{name} b"), b).await?;
    on_a.join("recipe").await?;
    on_b.join("recipe").await?;
    // Subscriptions reach the bus asynchronously: probe until one crosses; the probes sent
    // after it must then arrive too, in order.
    let deadline = tokio::time::Instant::now() + STARTUP_TIMEOUT;
    let mut sent = 0u32;
    let first = loop {
        sent += 1;
        let probe = format!("probe {sent}");
        on_a.publish("recipe", &probe).await?;
        on_a.expect_text(&probe).await?;
        match on_b.recv_text(PROBE_INTERVAL).await {
            Ok(text) => break text,
            Err(_) if tokio::time::Instant::now() < deadline => continue,
            Err(e) => return Err(e.context(format!("{name}: no probe crossed from a to b"))),
        }
    };
    let crossed: u32 = first
        .strip_prefix("probe ")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("{name}: b received {first:?}"))?;
    for later in crossed + 1..=sent {
        on_b.expect_text(&format!("probe {later}")).await?;
    }
    on_b.publish("recipe", "from b").await?;
    on_b.expect_text("from b").await?;
    on_a.expect_text("from b").await?;
    on_a.publish("recipe", "from a").await?;
    on_a.expect_text("from a").await?;
    on_b.expect_text("from a").await?;
    expect_quiet([&mut on_a, &mut on_b]).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_deploy_recipe_delivers_between_its_gateways() -> Result<()> {
    let blocks = covered_blocks("docs/deploy.md", "## Recipes")?;
    for (i, block) in blocks.iter().enumerate() {
        let name = format!("deploy.md recipe {}", i + 1);
        let mut session = Session::new(&name)?;
        let cluster = if block.contains("redis+cluster://") {
            let cluster = RedisCluster::start(3, 0).await?;
            // The recipe's seeds are the cluster's first two nodes.
            let seeds: Vec<u16> = block
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse::<u16>().ok())
                .filter(|p| (7000..7100).contains(p))
                .collect();
            for (seed, node) in seeds.iter().zip(&cluster.nodes) {
                session.map_port(*seed, node.port);
            }
            Some(cluster)
        } else {
            None
        };
        session.run_block("recipe", block).await?;
        delivers_both_ways(&name, &session)
            .await
            .with_context(|| format!("{name}:\n{block}"))?;
        session.finish().await?;
        drop(session);
        drop(cluster);
    }
    Ok(())
}

/// docs/deploy.md's first steps, block by block on one machine (so in one session): two
/// gateways on Redis deliver to each other; a standalone broker with a link secret made by
/// `openssl` serves a gateway that knows it; two gateways share a port with `--reuse-port` on
/// the first block's Redis, both announcing that one address. Servers stay up from one block
/// to the next, as they would on the reader's machine; each block's gateways stop before the
/// next starts (blocks one and three use the same addresses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_deploy_steps_work_as_written() -> Result<()> {
    let blocks = covered_blocks("docs/deploy.md", "## First steps")?;
    let mut session = Session::new("deploy-first-steps")?;
    for (i, block) in blocks.iter().enumerate() {
        let name = format!("first steps block {}", i + 1);
        session.stop_gateways().await?;
        session
            .run_block(&name, block)
            .await
            .with_context(|| format!("{name}:\n{block}"))?;
        match i {
            0 => delivers_both_ways(&name, &session).await,
            1 => each_serves(&name, &session).await,
            _ => {
                let addrs = session.gateway_addrs();
                ensure!(
                    addrs.len() == 2 && addrs[0] == addrs[1],
                    "{name}: two gateways on one address, got {addrs:?}"
                );
                each_serves(&name, &session).await
            }
        }
        .with_context(|| format!("{name}:\n{block}"))?;
    }
    session.finish().await
}

/// The migration from a Workerman Channel server (docs/php-channel.md), its two blocks as
/// written on one machine: the broker in `Channel\Server`'s place, a gateway linked to it; then
/// a PHP publisher (e2e/php/channel_client.php, php-fpm style) reaches a WebSocket member of
/// the gateway. The block's `cargo build` is skipped (the tests built the binaries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_migration_from_channel_server_works_as_written() -> Result<()> {
    let blocks = covered_blocks(
        "docs/php-channel.md",
        "## Migrating from a Workerman Channel server",
    )?;
    let mut session = Session::new("migration")?;
    for (i, block) in blocks.iter().enumerate() {
        let name = format!("migration block {}", i + 1);
        session
            .run_block(&name, block)
            .await
            .with_context(|| format!("{name}:\n{block}"))?;
    }
    ensure!(
        session.skipped.len() == 1 && session.skipped[0].0.starts_with("cargo build"),
        "skipped: {:?}",
        session.skipped
    );
    let broker_port = session.port(2206)?;
    let broker_admin: SocketAddr = format!("127.0.0.1:{}", session.port(9091)?).parse()?;
    let gateway = *session.gateway_addrs().first().context("the gateway")?;
    let mut member = Client::connect("member", gateway).await?;
    member.join("123").await?;
    let admin = test_support::Admin::new("broker admin", broker_admin)?;
    admin
        .wait_for_counters("the gateway subscribed to 123", &[("/subscriptions", 1)])
        .await?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("php/channel_client.php");
    let output = tokio::time::timeout(
        STARTUP_TIMEOUT,
        tokio::process::Command::new("php")
            .arg(&script)
            .args([
                "publish",
                &format!("127.0.0.1:{broker_port}"),
                "send_to_group",
                r#"{"group_id":"123","message":"from PHP"}"#,
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .context("php timed out")?
    .context("cannot run php (install php-cli)")?;
    ensure!(
        output.status.success(),
        "php publish failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    member.expect_text("from PHP").await?;
    expect_quiet([&mut member]).await?;
    session.finish().await
}
