//! [`Setup`]: what both modes settle before starting the agents, and each agent's [`Plan`].

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::{bail, Context as _, Result};

use crate::args::Cli;
use crate::args::CommonArgs;
use crate::coord::{self, ModePlan, Plan};
use crate::{net, procfs};

/// What both modes settle before starting the agents.
#[derive(Debug)]
pub struct Setup {
    pub url: String,
    pub server: SocketAddr,
    pub source_ips: Vec<Ipv4Addr>,
    pub processes: u64,
    pub server_pids: Vec<u32>,
    pub run_id: String,
    pub connect_timeout: Duration,
    pub setup_timeout: Duration,
    pub concurrency: usize,
    pub connections: u64,
}

impl Setup {
    pub async fn prepare(cli: &Cli, common: &CommonArgs, connections: u64) -> Result<Setup> {
        let per_process = net::raise_nofile_limit()?;
        let needed = net::processes_needed(connections, per_process);
        let processes = match common.processes {
            Some(p) if p < needed => bail!(
                "{connections} connections need at least {needed} processes \
                 (each holds at most {per_process} with the open-files limit here)"
            ),
            Some(p) => p,
            None => needed,
        };
        if processes > connections {
            bail!("--processes ({processes}) is more than --connections ({connections})");
        }
        let server = net::resolve(&cli.url).await?;
        let ports = procfs::ephemeral_ports();
        let source_ips = if !common.source_ips.is_empty() {
            common.source_ips.clone()
        } else if let Some(count) = common.source_ip_count {
            net::loopback_range(count)?
        } else {
            net::auto_source_ips(server.ip(), connections, ports)?
        };
        if !source_ips.is_empty() && !server.is_ipv4() {
            bail!("source addresses are IPv4, but {} is {server}", cli.url);
        }
        if let Some(ports) = ports {
            let per_address = connections.div_ceil(source_ips.len().max(1) as u64);
            if per_address > ports {
                eprintln!(
                    "warning: {per_address} connections per source address, but only {ports} \
                     ephemeral ports: use more --source-ip-count"
                );
            }
        }
        for &pid in &common.server_pids {
            procfs::sample(pid).with_context(|| format!("--server-pid {pid}"))?;
        }
        Ok(Setup {
            url: cli.url.clone(),
            server,
            source_ips,
            processes,
            server_pids: common.server_pids.clone(),
            run_id: format!(
                "{:x}{:04x}",
                std::process::id(),
                coord::unix_ns() % 0x1_0000
            ),
            connect_timeout: cli.connect_timeout,
            setup_timeout: common.setup_timeout,
            concurrency: usize::try_from(common.connect_concurrency).unwrap_or(usize::MAX),
            connections,
        })
    }

    pub fn plans(&self, groups: u64, mode: &ModePlan) -> Vec<Plan> {
        (0..self.processes)
            .map(|agent| Plan {
                agent,
                agents: self.processes,
                url: self.url.clone(),
                server: self.server,
                source_ips: self.source_ips.clone(),
                connect_timeout: self.connect_timeout,
                setup_timeout: self.setup_timeout,
                concurrency: self.concurrency,
                run_id: self.run_id.clone(),
                connections: self.connections,
                groups,
                mode: mode.clone(),
            })
            .collect()
    }
}
