//! The recipes of docs/deploy.md ("Recipes") and every block of README's "Deploy on several
//! servers" run as written, through a small harness: each `sh` block's lines are started as
//! processes in a fresh directory, with every port replaced by a free one (the same port
//! everywhere in the test), `0.0.0.0` by `127.0.0.1`, `target/release/gateway` and `broker` by
//! the binaries the tests built, `--log-format json` added for their readiness events, and
//! `--admin 127.0.0.1:0` for a gateway that leaves its admin address to the default. A block
//! with two gateways then has to deliver both ways between them: a member on each gateway
//! receives what a member of the other sends, once, and nothing else.
//!
//! The Redis Cluster recipe names seed nodes it does not start: the test starts a cluster and
//! maps the recipe's ports to its nodes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use std::time::Duration;

use e2e::{expect_quiet, Client, Process, STARTUP_TIMEOUT};

use test_support::process::{binary as binary_path, command};
use test_support::redis::RedisCluster;
use test_support::wait_until;

/// How long b waits for each probe before a sends the next.
const PROBE_INTERVAL: Duration = Duration::from_millis(200);

/// The `sh` code blocks of `markdown` under the heading `heading` (up to the next heading of
/// the same or a higher level).
fn blocks_under(markdown: &str, heading: &str) -> Result<Vec<String>> {
    let level = heading.chars().take_while(|c| *c == '#').count();
    let mut lines = markdown.lines().skip_while(|line| *line != heading);
    ensure!(lines.next().is_some(), "no {heading:?} heading");
    let mut blocks = Vec::new();
    // The block being read, if inside a code fence (`sh` or not).
    let mut fence: Option<(bool, String)> = None;
    for line in lines {
        let trimmed = line.trim_start();
        match &mut fence {
            None if trimmed.starts_with("```") => fence = Some((trimmed == "```sh", String::new())),
            None => {
                let hashes = line.chars().take_while(|c| *c == '#').count();
                if hashes > 0 && hashes <= level && line[hashes..].starts_with(' ') {
                    break;
                }
            }
            Some(_) if trimmed == "```" => {
                if let Some((true, block)) = fence.take() {
                    blocks.push(block);
                }
            }
            Some((_, block)) => {
                block.push_str(trimmed);
                block.push('\n');
            }
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
        if raw.is_empty() || raw.starts_with('#') {
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

/// A started recipe: its servers (engines, brokers), and each gateway with its client address.
#[derive(Default)]
struct Started {
    servers: Vec<Process>,
    gateways: Vec<(SocketAddr, Process)>,
}

impl Started {
    fn addrs(&self) -> Vec<SocketAddr> {
        self.gateways.iter().map(|(addr, _)| *addr).collect()
    }
}

/// Starts `lines` in `dir` (their working directory, where a recipe's files go) and adds them
/// to `started`. A gateway line without `--admin` gets `--admin 127.0.0.1:0`, so that it does
/// not take the default port of another gateway of the test.
async fn start(name: &str, lines: Vec<Line>, dir: &Path, started: &mut Started) -> Result<()> {
    for (i, line) in lines.into_iter().enumerate() {
        let label = format!("{name} line {}", i + 1);
        match line.program.as_str() {
            "target/release/gateway" | "target/release/broker" => {
                let (binary, ready) = match line.program.as_str() {
                    "target/release/gateway" => ("gateway", "gateway listening"),
                    _ => ("broker", "broker listening"),
                };
                let mut args = line.args;
                if binary == "gateway" && !args.iter().any(|a| a == "--admin") {
                    args.extend(["--admin".into(), "127.0.0.1:0".into()]);
                }
                args.extend(["--log-format".into(), "json".into()]);
                let mut cmd = command(binary_path(binary)?);
                cmd.args(&args).current_dir(dir);
                let process = Process::spawn_command(&label, cmd)?;
                let fields = process.wait_for_log(ready, STARTUP_TIMEOUT).await?;
                let addr = fields
                    .get("addr")
                    .and_then(|a| a.as_str())
                    .with_context(|| format!("{ready:?} without addr"))?
                    .parse()?;
                if binary == "gateway" {
                    process.wait_for_log("bus up", STARTUP_TIMEOUT).await?;
                    started.gateways.push((addr, process));
                } else {
                    started.servers.push(process);
                }
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
                cmd.args(&line.args).current_dir(dir);
                started.servers.push(Process::spawn_command(&label, cmd)?);
                let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
                wait_until(
                    &format!("{label} accepts"),
                    STARTUP_TIMEOUT,
                    || async move { Ok(tokio::net::TcpStream::connect(addr).await?) },
                )
                .await?;
            }
            "openssl" => {
                // `openssl rand -hex 32 > FILE`: a shell redirect, so through the shell.
                let status = std::process::Command::new("sh")
                    .arg("-c")
                    .arg(format!("openssl {}", line.args.join(" ")))
                    .current_dir(dir)
                    .status()
                    .with_context(|| format!("{label}: running openssl"))?;
                ensure!(status.success(), "{label}: openssl {status}");
            }
            other => bail!("{name}: no harness for {other:?}"),
        }
    }
    Ok(())
}

/// A client of each gateway receives its own message: the gateway serves, its bus is up.
async fn each_serves(name: &str, started: &Started) -> Result<()> {
    for addr in started.addrs() {
        let mut client = Client::connect(format!("{name} {addr}"), addr).await?;
        client.join("recipe").await?;
        client.publish("recipe", "hello").await?;
        client.expect_text("hello").await?;
        expect_quiet([&mut client]).await?;
    }
    Ok(())
}

/// A member on each of the two gateways receives what the other's member sends, once.
async fn delivers_both_ways(name: &str, started: &Started) -> Result<()> {
    let [a, b] = started.addrs()[..] else {
        bail!("{name}: expected two gateways, got {:?}", started.addrs());
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
        let dir = WorkDir::new(&name)?;
        let mut started = Started::default();
        start(&name, rewrite(block, &mut ports)?, dir.path(), &mut started).await?;
        delivers_both_ways(&name, &started)
            .await
            .with_context(|| format!("{name}:\n{block}"))?;
        drop(started);
        drop(cluster);
    }
    Ok(())
}

/// README's deploy section, block by block on one machine (so with one port mapping): two
/// gateways on Redis deliver to each other; a standalone broker with a link secret made by
/// `openssl` serves a gateway that knows it; two gateways share a port with `--reuse-port` on
/// the first block's Redis, both announcing that one address. Servers stay up from one block
/// to the next, as they would on the reader's machine; each block's gateways stop before the
/// next starts (blocks one and three use the same addresses).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_deploy_recipes_work_as_written() -> Result<()> {
    let readme = read_doc("README.md")?;
    let blocks = blocks_under(&readme, "## Deploy on several servers")?;
    ensure!(
        blocks.len() == 3,
        "README's deploy section has {} blocks",
        blocks.len()
    );
    let dir = WorkDir::new("readme-deploy")?;
    let mut ports = HashMap::new();
    let mut servers = Vec::new();
    for (i, block) in blocks.iter().enumerate() {
        let name = format!("README deploy block {}", i + 1);
        let mut started = Started::default();
        start(&name, rewrite(block, &mut ports)?, dir.path(), &mut started)
            .await
            .with_context(|| format!("{name}:\n{block}"))?;
        match i {
            0 => delivers_both_ways(&name, &started).await,
            1 => each_serves(&name, &started).await,
            _ => {
                let addrs = started.addrs();
                ensure!(
                    addrs.len() == 2 && addrs[0] == addrs[1],
                    "{name}: two gateways on one address, got {addrs:?}"
                );
                each_serves(&name, &started).await
            }
        }
        .with_context(|| format!("{name}:\n{block}"))?;
        servers.append(&mut started.servers);
    }
    Ok(())
}

/// A fresh directory for a recipe's files (a link secret), removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new(name: &str) -> Result<WorkDir> {
        let dir = std::env::temp_dir().join(format!(
            "recipe-{}-{}",
            std::process::id(),
            name.replace(' ', "-")
        ));
        std::fs::create_dir_all(&dir)?;
        Ok(WorkDir(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// README's migration from a Workerman Channel server, its two blocks as written on one machine:
/// the broker in `Channel\Server`'s place, a gateway linked to it; then a PHP publisher
/// (e2e/php/channel_client.php, php-fpm style) reaches a WebSocket member of the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_migration_from_channel_server_works_as_written() -> Result<()> {
    let readme = read_doc("README.md")?;
    let blocks = blocks_under(&readme, "## Migrating from a Workerman Channel server")?;
    ensure!(
        blocks.len() == 2,
        "README's migration section has {} blocks",
        blocks.len()
    );
    let dir = WorkDir::new("readme-migration")?;
    let mut ports = HashMap::new();
    let mut started = Started::default();
    for (i, block) in blocks.iter().enumerate() {
        let name = format!("README migration block {}", i + 1);
        // `cargo build` is what the tests' own build already did.
        let block: String = block
            .lines()
            .filter(|line| !line.trim_start().starts_with("cargo "))
            .map(|line| format!("{line}\n"))
            .collect();
        start(
            &name,
            rewrite(&block, &mut ports)?,
            dir.path(),
            &mut started,
        )
        .await
        .with_context(|| format!("{name}:\n{block}"))?;
    }
    let broker_port = ports.get(&2206).context("the broker's port")?;
    let broker_admin: SocketAddr =
        format!("127.0.0.1:{}", ports.get(&9091).context("its admin")?).parse()?;
    let gateway = *started.addrs().first().context("the gateway")?;
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
    expect_quiet([&mut member]).await
}
