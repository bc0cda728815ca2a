//! The recipes of docs/deploy.md ("Recipes") and README's "Deploy on several servers" run as
//! written, through a small harness: each `sh` block's lines are started as processes, with
//! every port replaced by a free one (the same port everywhere in the block), `0.0.0.0` by
//! `127.0.0.1`, `target/release/gateway` by the gateway the tests built, and
//! `--log-format json` added to the gateways for their readiness events. A block with two
//! gateways then has to deliver both ways between them: a member on each gateway receives what
//! a member of the other sends, once, and nothing else.
//!
//! The Redis Cluster recipe names seed nodes it does not start: the test starts a cluster and
//! maps the recipe's ports to its nodes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;

use anyhow::{bail, ensure, Context, Result};
use std::time::Duration;

use e2e::{expect_quiet, Client, Process, STARTUP_TIMEOUT};

use test_support::process::command;
use test_support::redis::RedisCluster;
use test_support::wait_until;

/// How long b waits for each probe before a sends the next.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// The `sh` code blocks of `markdown` under the heading `heading` (up to the next heading of
/// the same or a higher level).
fn blocks_under(markdown: &str, heading: &str) -> Result<Vec<String>> {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let start = markdown
        .find(&format!("\n{heading}\n"))
        .with_context(|| format!("no {heading:?} heading"))?;
    let rest = &markdown[start + heading.len() + 2..];
    let end = rest
        .match_indices('\n')
        .map(|(i, _)| i + 1)
        .find(|&i| {
            let hashes = rest[i..].chars().take_while(|c| *c == '#').count();
            hashes > 0 && hashes <= level && rest[i + hashes..].starts_with(' ')
        })
        .unwrap_or(rest.len());
    let section = &rest[..end];
    let mut blocks = Vec::new();
    let mut current: Option<String> = None;
    for line in section.lines() {
        match (&mut current, line.trim_start()) {
            (None, "```sh") => current = Some(String::new()),
            (Some(block), "```") => {
                blocks.push(std::mem::take(block));
                current = None;
            }
            (Some(block), text) => {
                block.push_str(text);
                block.push('\n');
            }
            (None, _) => {}
        }
    }
    Ok(blocks)
}

fn read_doc(path: &str) -> Result<String> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))
}

/// One command line of a recipe, its ports already replaced.
#[derive(Debug)]
struct Line {
    program: String,
    args: Vec<String>,
}

/// Replaces every port in `block` (`HOST:PORT`, `--port PORT`, `-p PORT`) by the one `ports`
/// gives it (a free one the first time), and `0.0.0.0` by `127.0.0.1`.
fn rewrite(block: &str, ports: &mut HashMap<u16, u16>) -> Result<Vec<Line>> {
    let mut port_for = |text: &str| -> Result<String> {
        let port: u16 = text.parse().with_context(|| format!("port {text:?}"))?;
        let mapped = match ports.get(&port) {
            Some(mapped) => *mapped,
            None => {
                let free = test_support::redis::free_port()?;
                ports.insert(port, free);
                free
            }
        };
        Ok(mapped.to_string())
    };
    let mut lines = Vec::new();
    for raw in block.lines() {
        let raw = raw.split(" #").next().unwrap_or_default().trim();
        let raw = raw.strip_suffix('&').unwrap_or(raw).trim();
        if raw.is_empty() {
            continue;
        }
        let words: Vec<&str> = raw.split_whitespace().collect();
        let mut args = Vec::new();
        for (i, word) in words.iter().enumerate().skip(1) {
            let word = if matches!(words[i - 1], "--port" | "-p") {
                port_for(word)?
            } else {
                let mut parts = Vec::new();
                for address in word.split(',') {
                    let (prefix, rest) = match address.find("://") {
                        Some(i) => address.split_at(i + 3),
                        None => ("", address),
                    };
                    parts.push(match rest.rsplit_once(':') {
                        Some((host, port)) if port.chars().all(|c| c.is_ascii_digit()) => {
                            let host = if host == "0.0.0.0" { "127.0.0.1" } else { host };
                            format!("{prefix}{host}:{}", port_for(port)?)
                        }
                        _ => address.to_owned(),
                    });
                }
                parts.join(",")
            };
            args.push(word);
        }
        lines.push(Line {
            program: words[0].to_owned(),
            args,
        });
    }
    Ok(lines)
}

/// A started recipe: its processes, and the client address of each gateway in it.
struct Started {
    _processes: Vec<Process>,
    gateways: Vec<SocketAddr>,
}

async fn start(name: &str, lines: Vec<Line>) -> Result<Started> {
    let mut processes = Vec::new();
    let mut gateways = Vec::new();
    for (i, line) in lines.into_iter().enumerate() {
        let label = format!("{name} line {}", i + 1);
        match line.program.as_str() {
            "target/release/gateway" => {
                let mut args = line.args;
                args.extend(["--log-format".into(), "json".into()]);
                let process = Process::spawn(&label, "gateway", &args)?;
                let fields = process
                    .wait_for_log("gateway listening", STARTUP_TIMEOUT)
                    .await?;
                let addr = fields
                    .get("addr")
                    .and_then(|a| a.as_str())
                    .context("gateway listening without addr")?
                    .parse()?;
                process.wait_for_log("bus up", STARTUP_TIMEOUT).await?;
                gateways.push(addr);
                processes.push(process);
            }
            "redis-server" | "nats-server" => {
                let program = match line.program.as_str() {
                    "nats-server" => test_support::nats::program()?,
                    other => other.into(),
                };
                let port = line
                    .args
                    .windows(2)
                    .find(|w| matches!(w[0].as_str(), "--port" | "-p"))
                    .map(|w| w[1].clone())
                    .context("a server line without its port")?;
                let mut cmd = command(program);
                cmd.args(&line.args);
                processes.push(Process::spawn_command(&label, cmd)?);
                let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
                wait_until(
                    &format!("{label} accepts"),
                    STARTUP_TIMEOUT,
                    || async move { Ok(tokio::net::TcpStream::connect(addr).await?) },
                )
                .await?;
            }
            other => bail!("{name}: no harness for {other:?}"),
        }
    }
    Ok(Started {
        _processes: processes,
        gateways,
    })
}

/// A member on each of the two gateways receives what the other's member sends, once.
async fn delivers_both_ways(name: &str, started: &Started) -> Result<()> {
    let [a, b] = started.gateways[..] else {
        bail!("{name}: expected two gateways, got {:?}", started.gateways);
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
    let doc = read_doc("docs/deploy.md")?;
    let blocks = blocks_under(&doc, "## Recipes")?;
    ensure!(
        blocks.len() == 5,
        "docs/deploy.md has {} recipes",
        blocks.len()
    );
    for (i, block) in blocks.iter().enumerate() {
        let name = format!("deploy.md recipe {}", i + 1);
        let mut ports = HashMap::new();
        let cluster = if block.contains("redis+cluster://") {
            let cluster = RedisCluster::start(3, 0).await?;
            // The recipe's seeds are the cluster's first two nodes.
            let seeds: Vec<u16> = block
                .split(|c: char| !c.is_ascii_digit())
                .filter_map(|w| w.parse::<u16>().ok())
                .filter(|p| (7000..7100).contains(p))
                .collect();
            for (seed, node) in seeds.iter().zip(&cluster.nodes) {
                ports.insert(*seed, node.port);
            }
            Some(cluster)
        } else {
            None
        };
        let started = start(&name, rewrite(block, &mut ports)?).await?;
        delivers_both_ways(&name, &started)
            .await
            .with_context(|| format!("{name}:\n{block}"))?;
        drop(started);
        drop(cluster);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_deploy_recipe_delivers_between_its_gateways() -> Result<()> {
    let readme = read_doc("README.md")?;
    let blocks = blocks_under(&readme, "## Deploy on several servers")?;
    let first = blocks
        .first()
        .context("no recipe in README's deploy section")?;
    let started = start("README deploy", rewrite(first, &mut HashMap::new())?).await?;
    delivers_both_ways("README deploy", &started).await
}
