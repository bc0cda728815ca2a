//! Real `redis-server` processes for the Redis carrier's tests: a [`RedisServer`] on a free
//! port (killed on drop, its output shown when a test fails), and a [`RedisCluster`] of them.
//! Helpers read the engine's own view of pub/sub (`PUBSUB NUMSUB`, `PUBSUB SHARDNUMSUB`, ...),
//! so tests check what Redis holds rather than what the gateway says it did.
//!
//! Readiness is a `PING` that answers; every wait has a deadline.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use redis::aio::MultiplexedConnection;
use tokio::time::Instant;

use crate::process::{command, Process};
use crate::{wait_until, EXIT_TIMEOUT, POLL_INTERVAL, STARTUP_TIMEOUT};

/// How long `redis-cli --cluster create` may take.
const CLUSTER_CREATE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long one query to a server may take.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);
/// A cluster node that does not answer for this long is failing (`--cluster-node-timeout`):
/// short, so that a replica takes over within a few seconds of its master's death.
pub const CLUSTER_NODE_TIMEOUT: Duration = Duration::from_millis(1000);

/// A port that was free a moment ago (a port-0 bind, released): `redis-server` cannot report
/// a port it was given 0 for. Never one this process was given before: the kernel may hand a
/// released port out again at once, and two servers of a test given the same one would make
/// the second fail to start.
pub fn free_port() -> Result<u16> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    for _ in 0..64 {
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    bail!("no port this process was not given already, in 64 tries")
}

/// One `redis-server`.
#[derive(Debug)]
pub struct RedisServer {
    pub process: Process,
    pub port: u16,
    extra: Vec<String>,
}

impl RedisServer {
    /// A server on a free port, without persistence.
    pub async fn start(name: &str) -> Result<RedisServer> {
        RedisServer::start_with(name, free_port()?, Vec::new()).await
    }

    /// A server on `port` (to restart one where it was).
    pub async fn start_on(name: &str, port: u16) -> Result<RedisServer> {
        RedisServer::start_with(name, port, Vec::new()).await
    }

    /// A server on `port` with more arguments (`--cluster-enabled yes`, ...).
    pub async fn start_with(name: &str, port: u16, extra: Vec<String>) -> Result<RedisServer> {
        let mut cmd = command("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            // Its log on stderr, whose tail a failed test shows.
            .args(["--logfile", "/dev/stderr"])
            .args(&extra);
        let mut process = Process::spawn_command(name, cmd)?;
        let url = format!("redis://127.0.0.1:{port}");
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Ok(Ok(mut conn)) = tokio::time::timeout(QUERY_TIMEOUT, connection(&url)).await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    break;
                }
            }
            if let Some(status) = process.try_wait()? {
                bail!(
                    "{name} exited ({status}) before answering PING:\n{}",
                    process.stdout()
                );
            }
            if Instant::now() >= deadline {
                bail!("{name} did not answer PING within {STARTUP_TIMEOUT:?}");
            }
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        Ok(RedisServer {
            process,
            port,
            extra,
        })
    }

    /// Starts this server again on its port, with its arguments (after [`RedisServer::kill`]).
    pub async fn restart(&mut self) -> Result<()> {
        let name = self.process.name().to_owned();
        *self = RedisServer::start_with(&name, self.port, self.extra.clone()).await?;
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Stops the server (SIGTERM: it finishes the command it runs and closes its clients'
    /// connections) and after `pause` starts it again on its port, empty (no persistence).
    pub async fn stop_and_restart(&mut self, pause: Duration) -> Result<()> {
        self.process.terminate().await?;
        self.process.wait(EXIT_TIMEOUT).await?;
        tokio::time::sleep(pause).await; // the outage itself
        self.restart().await
    }

    /// SIGKILLs the server and waits until it is gone.
    pub async fn kill(&mut self) -> Result<()> {
        self.process.kill(EXIT_TIMEOUT).await?;
        Ok(())
    }

    /// A new connection to this server.
    pub async fn connection(&self) -> Result<MultiplexedConnection> {
        tokio::time::timeout(QUERY_TIMEOUT, connection(&self.url()))
            .await
            .with_context(|| format!("connecting to {} timed out", self.url()))?
    }

    /// Runs `cmd` on this server.
    pub async fn query<T: redis::FromRedisValue>(&self, cmd: &redis::Cmd) -> Result<T> {
        let mut conn = self.connection().await?;
        tokio::time::timeout(QUERY_TIMEOUT, cmd.query_async(&mut conn))
            .await
            .context("query timed out")?
            .with_context(|| format!("query to {}", self.url()))
    }

    /// `PUBSUB NUMSUB`: subscribers of each channel.
    pub async fn numsub(&self, channels: &[&[u8]]) -> Result<Vec<i64>> {
        numbers(
            self.query(redis::cmd("PUBSUB").arg("NUMSUB").arg(channels))
                .await?,
        )
    }

    /// `PUBSUB SHARDNUMSUB`: shard-channel subscribers of each channel on this node.
    pub async fn shard_numsub(&self, channels: &[&[u8]]) -> Result<Vec<i64>> {
        numbers(
            self.query(redis::cmd("PUBSUB").arg("SHARDNUMSUB").arg(channels))
                .await?,
        )
    }

    /// `PUBSUB CHANNELS pattern`: channels with at least one subscriber.
    pub async fn channels(&self, pattern: &str) -> Result<Vec<Vec<u8>>> {
        self.query(redis::cmd("PUBSUB").arg("CHANNELS").arg(pattern))
            .await
    }

    /// `PUBSUB SHARDCHANNELS pattern` on this node.
    pub async fn shard_channels(&self, pattern: &str) -> Result<Vec<Vec<u8>>> {
        self.query(redis::cmd("PUBSUB").arg("SHARDCHANNELS").arg(pattern))
            .await
    }
}

async fn connection(url: &str) -> Result<MultiplexedConnection> {
    let client = redis::Client::open(url).with_context(|| format!("bad url {url}"))?;
    Ok(client.get_multiplexed_async_connection().await?)
}

/// The counts of a `[channel, count, channel, count, ...]` reply.
fn numbers(reply: Vec<redis::Value>) -> Result<Vec<i64>> {
    reply
        .chunks(2)
        .map(|pair| match pair {
            [_, redis::Value::Int(n)] => Ok(*n),
            other => bail!("unexpected NUMSUB entry {other:?}"),
        })
        .collect()
}

/// A directory removed (with what it holds) on drop.
#[derive(Debug)]
struct TempDir(PathBuf);

impl TempDir {
    fn new(what: &str) -> Result<TempDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "test-{}-{}-{what}",
            std::process::id(),
            NEXT.fetch_add(1, Relaxed)
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A Redis Cluster on 127.0.0.1: masters (and replicas), with a short node timeout.
#[derive(Debug)]
pub struct RedisCluster {
    /// Every node, masters first as `redis-cli --cluster create` assigned them.
    pub nodes: Vec<RedisServer>,
    /// Declared after the nodes, so that it is removed once they are killed.
    _dir: TempDir,
}

impl RedisCluster {
    /// `masters` masters with `replicas` replicas each, every slot served, every node agreeing.
    pub async fn start(masters: usize, replicas: usize) -> Result<RedisCluster> {
        let dir = TempDir::new("redis-cluster")?;
        let mut nodes = Vec::new();
        for i in 0..masters * (1 + replicas) {
            let port = free_port()?;
            let conf = dir.path().join(format!("nodes-{port}.conf"));
            let extra: Vec<String> = [
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                conf.to_str().context("temp path not UTF-8")?,
                "--cluster-node-timeout",
                &CLUSTER_NODE_TIMEOUT.as_millis().to_string(),
                // The other masters' slots keep working while one is down.
                "--cluster-require-full-coverage",
                "no",
                "--dir",
                dir.path().to_str().context("temp path not UTF-8")?,
            ]
            .map(String::from)
            .into();
            nodes.push(RedisServer::start_with(&format!("redis-node-{i}"), port, extra).await?);
        }
        let mut create = command("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(format!("127.0.0.1:{}", node.port));
        }
        create
            .args(["--cluster-replicas", &replicas.to_string()])
            .arg("--cluster-yes");
        let finished = Process::spawn_command("redis-cli --cluster create", create)?
            .finish(CLUSTER_CREATE_TIMEOUT)
            .await?;
        ensure!(
            finished.code == Some(0),
            "redis-cli --cluster create failed:\n{}{}",
            finished.stdout,
            finished.stderr
        );
        let cluster = RedisCluster { nodes, _dir: dir };
        cluster
            .wait_until_ok(&cluster.nodes.iter().collect::<Vec<_>>(), masters)
            .await?;
        Ok(cluster)
    }

    /// `redis+cluster://` with every node as a seed.
    pub fn url(&self) -> String {
        let seeds: Vec<String> = self
            .nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        format!("redis+cluster://{}", seeds.join(","))
    }

    /// Waits until each of `nodes` says `cluster_state:ok` and knows `masters` masters serving
    /// every slot.
    pub async fn wait_until_ok(&self, nodes: &[&RedisServer], masters: usize) -> Result<()> {
        for node in nodes {
            wait_until(
                &format!("{} reports cluster_state:ok", node.process.name()),
                STARTUP_TIMEOUT,
                || async {
                    let info: String = node.query(redis::cmd("CLUSTER").arg("INFO")).await?;
                    ensure!(
                        info.contains("cluster_state:ok")
                            && info.contains("cluster_slots_assigned:16384")
                            && info.contains("cluster_slots_ok:16384")
                            && info.contains(&format!("cluster_size:{masters}\r")),
                        "{info}"
                    );
                    Ok(())
                },
            )
            .await?;
        }
        Ok(())
    }

    /// The index in `nodes` of the master serving `channel`'s slot, as node `asked` sees it.
    pub async fn master_of(&self, asked: usize, channel: &[u8]) -> Result<usize> {
        let node = &self.nodes[asked];
        let slot: i64 = node
            .query(redis::cmd("CLUSTER").arg("KEYSLOT").arg(channel))
            .await?;
        let slots: Vec<redis::Value> = node.query(redis::cmd("CLUSTER").arg("SLOTS")).await?;
        for entry in slots {
            let redis::Value::Array(items) = entry else {
                continue;
            };
            let (Some(redis::Value::Int(start)), Some(redis::Value::Int(end))) =
                (items.first(), items.get(1))
            else {
                continue;
            };
            if (*start..=*end).contains(&slot) {
                let Some(redis::Value::Array(master)) = items.get(2) else {
                    bail!("no master in {items:?}");
                };
                let Some(redis::Value::Int(port)) = master.get(1) else {
                    bail!("no port in {master:?}");
                };
                return self
                    .nodes
                    .iter()
                    .position(|n| i64::from(n.port) == *port)
                    .with_context(|| format!("port {port} is not a node of this cluster"));
            }
        }
        bail!("no master serves slot {slot}")
    }

    /// The index in `nodes` of a replica of master `master`, once the master knows one (the
    /// cluster's gossip may take a moment after it was created).
    pub async fn replica_of(&self, master: usize) -> Result<usize> {
        let node = &self.nodes[master];
        let id: String = node.query(redis::cmd("CLUSTER").arg("MYID")).await?;
        let port = wait_until(
            &format!("{} knows a replica of its own", node.process.name()),
            STARTUP_TIMEOUT,
            || async {
                let replicas: Vec<String> = node
                    .query(redis::cmd("CLUSTER").arg("REPLICAS").arg(&id))
                    .await?;
                // Each line: `<id> <ip>:<port>@<cport> slave <master id> ...`.
                replicas
                    .first()
                    .and_then(|line| line.split_whitespace().nth(1))
                    .and_then(|addr| {
                        addr.split(['@'])
                            .next()?
                            .rsplit(':')
                            .next()?
                            .parse::<u16>()
                            .ok()
                    })
                    .with_context(|| format!("no replica of {id}: {replicas:?}"))
            },
        )
        .await?;
        self.nodes
            .iter()
            .position(|n| n.port == port)
            .with_context(|| format!("port {port} is not a node of this cluster"))
    }

    /// Makes `replica` a master at once (`CLUSTER FAILOVER TAKEOVER`: no agreement of the
    /// other masters needed, as when its master is dead) and waits until the live nodes
    /// serve every slot again.
    pub async fn take_over(&self, replica: usize, masters: usize) -> Result<()> {
        let node = &self.nodes[replica];
        let _: () = node
            .query(redis::cmd("CLUSTER").arg("FAILOVER").arg("TAKEOVER"))
            .await?;
        wait_until(
            &format!("{} is a master", node.process.name()),
            STARTUP_TIMEOUT,
            || async {
                let info: String = node.query(redis::cmd("INFO").arg("replication")).await?;
                ensure!(info.contains("role:master"), "{info}");
                Ok(())
            },
        )
        .await?;
        let live: Vec<&RedisServer> = self
            .nodes
            .iter()
            .filter(|n| n.process.pid().is_ok())
            .collect();
        self.wait_until_ok(&live, masters).await
    }

    /// Subscribers of `channel` as a shard channel, summed over the live nodes.
    pub async fn shard_numsub(&self, channel: &[u8]) -> Result<i64> {
        let mut total = 0;
        for node in &self.nodes {
            if let Ok(counts) = node.shard_numsub(&[channel]).await {
                total += counts.first().copied().unwrap_or(0);
            }
        }
        Ok(total)
    }

    /// Shard channels matching `pattern`, over the live nodes.
    pub async fn shard_channels(&self, pattern: &str) -> Result<Vec<Vec<u8>>> {
        let mut all = Vec::new();
        for node in &self.nodes {
            if let Ok(mut channels) = node.shard_channels(pattern).await {
                all.append(&mut channels);
            }
        }
        Ok(all)
    }
}
