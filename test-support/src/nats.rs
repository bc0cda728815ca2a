//! Real `nats-server` processes for the NATS carrier's tests: one server ([`NatsServer`]) or a
//! three-node cluster ([`NatsCluster`]), on ports the servers pick (`-1`) and log, with their
//! monitoring endpoint for the engine's own view of the subscriptions.
//!
//! The program is `nats-server` (Debian's package, in `/usr/sbin`; `.ci/run` installs it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use anyhow::{ensure, Context, Result};
use tokio::net::TcpStream;

use crate::http::Admin;
use crate::process::{command, Process};
use crate::wait::wait_until;
use crate::{EXIT_TIMEOUT, STARTUP_TIMEOUT};

/// `nats-server` as found on the `PATH`, or in `/usr/sbin` where Debian puts it (the
/// command's environment is cleared, `PATH` too).
pub fn program() -> Result<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/bin".into()])
        .map(|dir| dir.join("nats-server"))
        .find(|candidate| candidate.is_file())
        .context("nats-server is not on the PATH (Debian: apt-get install nats-server)")
}

/// A `nats-server` process, killed on drop.
#[derive(Debug)]
pub struct NatsServer {
    pub process: Process,
    /// Where clients connect, on 127.0.0.1.
    pub port: u16,
    /// Where the other nodes of its cluster connect, when it is in one.
    pub cluster_port: Option<u16>,
    /// The monitoring endpoint (`/varz`, `/connz`, `/subsz`, `/routez`).
    pub monitor: Admin,
    /// Its JetStream store, when it has one ([`NatsServer::start_jetstream`]); declared last,
    /// so that it is removed once the process is killed.
    store: Option<StoreDir>,
}

/// A JetStream store directory, removed (with what it holds) on drop.
#[derive(Debug)]
struct StoreDir(PathBuf);

impl StoreDir {
    fn new(name: &str) -> Result<StoreDir> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let path = std::env::temp_dir().join(format!(
            "test-{}-{}-nats-{name}",
            std::process::id(),
            NEXT.fetch_add(1, Relaxed)
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(StoreDir(path))
    }
}

impl Drop for StoreDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The port at the end of the first log line containing `text` (`... on 127.0.0.1:4222`).
async fn logged_port(process: &Process, text: &str) -> Result<u16> {
    let line = process
        .wait_for_stderr_line(text, STARTUP_TIMEOUT, |line| line.contains(text))
        .await?;
    line.rsplit(':')
        .next()
        .and_then(|port| port.trim().parse().ok())
        .with_context(|| format!("{}: no port in {line:?}", process.name()))
}

impl NatsServer {
    /// A server on a port of its choosing.
    pub async fn start(name: &str) -> Result<NatsServer> {
        NatsServer::start_with(name, None, &[]).await
    }

    /// A server on `port`: to restart one where its clients expect it.
    pub async fn start_on(name: &str, port: u16) -> Result<NatsServer> {
        NatsServer::start_with(name, Some(port), &[]).await
    }

    /// A server with JetStream (`-js`) on `port` (or one of its choosing), its store in a fresh
    /// directory: started again on the same port, it is a server that lost its store.
    pub async fn start_jetstream(name: &str, port: Option<u16>) -> Result<NatsServer> {
        let store = StoreDir::new(name)?;
        let extra = [
            "-js".to_owned(),
            "-sd".to_owned(),
            store.0.display().to_string(),
        ];
        let mut server = NatsServer::start_with(name, port, &extra).await?;
        server.store = Some(store);
        Ok(server)
    }

    /// A server on `port` (or one of its choosing) with more arguments (`--cluster`, ...).
    /// Returns once it accepts connections and answers on its monitoring port.
    pub async fn start_with(name: &str, port: Option<u16>, extra: &[String]) -> Result<NatsServer> {
        let port_arg = port.map_or_else(|| "-1".to_owned(), |p| p.to_string());
        let server_name: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let mut cmd = command(program()?);
        cmd.args(["-a", "127.0.0.1", "-p", &port_arg, "-m", "-1", "-n"])
            .arg(&server_name)
            .args(extra);
        let process = Process::spawn_command(name, cmd)?;
        let port = logged_port(&process, "Listening for client connections on").await?;
        let monitor_port = logged_port(&process, "Starting http monitor on").await?;
        let cluster_port = if extra.iter().any(|arg| arg == "--cluster") {
            Some(logged_port(&process, "Listening for route connections on").await?)
        } else {
            None
        };
        let monitor = Admin::new(name, SocketAddr::from((Ipv4Addr::LOCALHOST, monitor_port)))?;
        let server = NatsServer {
            process,
            port,
            cluster_port,
            monitor,
            store: None,
        };
        wait_until(&format!("{name} is ready"), STARTUP_TIMEOUT, || async {
            server.monitor.get_json("/varz").await?;
            TcpStream::connect(server.addr()).await?;
            Ok(())
        })
        .await?;
        Ok(server)
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// `nats://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("nats://{}", self.addr())
    }

    /// Stops the server (SIGTERM: it closes its clients' connections and its store), and after
    /// `pause` starts it again on its port with its JetStream store as it left it (a store it
    /// keeps, as a server restarted by its operator does). Only for a server of
    /// [`NatsServer::start_jetstream`].
    pub async fn restart_keeping_store(&mut self, pause: std::time::Duration) -> Result<()> {
        let store = self
            .store
            .take()
            .context("restart_keeping_store: a server without a store")?;
        self.process.terminate().await?;
        self.process.wait(EXIT_TIMEOUT).await?;
        tokio::time::sleep(pause).await; // the outage itself
        let name = self.process.name().to_owned();
        let extra = [
            "-js".to_owned(),
            "-sd".to_owned(),
            store.0.display().to_string(),
        ];
        let mut server = NatsServer::start_with(&name, Some(self.port), &extra).await?;
        server.store = Some(store);
        *self = server;
        Ok(())
    }

    /// SIGKILL: no goodbye to its clients or its cluster.
    pub async fn kill(&mut self) -> Result<()> {
        self.process.kill(EXIT_TIMEOUT).await?;
        Ok(())
    }

    /// The subjects each client connection has subscribed to, by connection name (the
    /// gateway names its connection after `--node-name`), from `/connz?subs=1`.
    pub async fn subscriptions(&self) -> Result<BTreeMap<String, BTreeSet<String>>> {
        Ok(self
            .subscription_lists()
            .await?
            .into_iter()
            .map(|(name, subjects)| (name, subjects.into_iter().collect()))
            .collect())
    }

    /// Like [`NatsServer::subscriptions`], but one entry per subscription, sorted: a subject
    /// subscribed twice by a connection is listed twice. Group subjects only: the gateways'
    /// cluster topics (group token starting `~1F`, U+001F) are left out.
    pub async fn subscription_lists(&self) -> Result<BTreeMap<String, Vec<String>>> {
        let connz = self.monitor.get_json("/connz?subs=1&limit=100000").await?;
        let mut by_client: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for connection in connz["connections"].as_array().into_iter().flatten() {
            let name = connection["name"].as_str().unwrap_or_default().to_owned();
            let subjects = by_client.entry(name).or_default();
            for subject in connection["subscriptions_list"]
                .as_array()
                .into_iter()
                .flatten()
            {
                subjects.extend(
                    subject
                        .as_str()
                        .filter(|s| !is_cluster_topic(s))
                        .map(str::to_owned),
                );
            }
            subjects.sort();
        }
        Ok(by_client)
    }

    /// The group subjects the other nodes of its cluster told it they have interest in
    /// (`/routez?subs=1`): what it forwards to them (cluster topics left out).
    pub async fn route_subjects(&self) -> Result<BTreeSet<String>> {
        let routez = self.monitor.get_json("/routez?subs=1").await?;
        Ok(routez["routes"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|route| route["subscriptions_list"].as_array().into_iter().flatten())
            .filter_map(|subject| subject.as_str().map(str::to_owned))
            .filter(|subject| !is_cluster_topic(subject))
            .collect())
    }

    /// Subscriptions in the server's interest table (`/subsz`): its clients' and, in a
    /// cluster, those the other nodes told it of.
    pub async fn subscription_count(&self) -> Result<u64> {
        let subsz = self.monitor.get_json("/subsz").await?;
        subsz["num_subscriptions"]
            .as_u64()
            .with_context(|| format!("no num_subscriptions in {subsz}"))
    }

    /// The names of the clients connected (`/connz`).
    pub async fn client_names(&self) -> Result<Vec<String>> {
        let connz = self.monitor.get_json("/connz?limit=100000").await?;
        Ok(connz["connections"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect())
    }
}

/// Three `nats-server` nodes routed to each other as one cluster.
#[derive(Debug)]
pub struct NatsCluster {
    pub nodes: Vec<NatsServer>,
}

impl NatsCluster {
    /// Starts three nodes (the second and third routed to the first; the cluster completes the
    /// mesh) and waits until every node has routes to the two others.
    pub async fn start(name: &str) -> Result<NatsCluster> {
        let cluster_name = format!("{name}-{}", std::process::id());
        let cluster_args = |routes: Option<u16>| {
            let mut args: Vec<String> = [
                "--cluster_name",
                &cluster_name,
                "--cluster",
                "nats://127.0.0.1:-1",
            ]
            .map(String::from)
            .into();
            if let Some(port) = routes {
                args.extend(["--routes".into(), format!("nats://127.0.0.1:{port}")]);
            }
            args
        };
        let first = NatsServer::start_with(&format!("{name}-1"), None, &cluster_args(None)).await?;
        let seed = first
            .cluster_port
            .context("the first node has no cluster port")?;
        let mut nodes = vec![first];
        for i in 2..=3 {
            nodes.push(
                NatsServer::start_with(&format!("{name}-{i}"), None, &cluster_args(Some(seed)))
                    .await?,
            );
        }
        let cluster = NatsCluster { nodes };
        for node in &cluster.nodes {
            wait_until(
                &format!("{} has routes to both other nodes", node.process.name()),
                STARTUP_TIMEOUT,
                || async {
                    let routez = node.monitor.get_json("/routez").await?;
                    let routes = routez["num_routes"].as_u64().unwrap_or_default();
                    ensure!(routes == 2, "{routes} routes");
                    Ok(())
                },
            )
            .await?;
        }
        Ok(cluster)
    }

    /// Every node's subscriptions by client name, merged (a client is on one node at a time).
    pub async fn subscriptions(&self) -> Result<BTreeMap<String, BTreeSet<String>>> {
        let mut merged: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for node in &self.nodes {
            if node.monitor.get_json("/varz").await.is_err() {
                continue; // killed
            }
            for (client, subjects) in node.subscriptions().await? {
                merged.entry(client).or_default().extend(subjects);
            }
        }
        Ok(merged)
    }
}

/// Whether `subject` is one of the gateways' cluster topics (heartbeats, node, uid and presence
/// topics) rather than a group's.
pub fn is_cluster_topic(subject: &str) -> bool {
    subject.contains(".g.~1F")
}
