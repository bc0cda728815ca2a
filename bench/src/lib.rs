//! `push-bench`: the load generator of the group push gateway. `main.rs` parses the flags and
//! calls [`run`] (or [`run_agent`] in the processes it spawns).
//!
//! - [`args`]: the flags of `push-bench fanout` and `push-bench idle`.
//! - [`fanout`] and [`idle`]: each mode's agent (the connections one process owns) and parent
//!   (the whole run: start, timing, server readings, merged report).
//! - [`setup`]: what both modes settle before starting the agents (processes, source addresses,
//!   each agent's plan).
//! - [`coord`]: running the agents as child processes, and the JSON lines between them.
//! - [`countdown`] and [`progress`]: the counts an agent waits on, and the progress bar.
//! - [`net`]: server address, source addresses, open-files limit, connect-and-join.
//! - [`payload`], [`seq`], [`latency`], [`procfs`]: the pure parts: the message format, loss and
//!   duplicate accounting, histograms, `/proc` parsing.
//! - [`report`]: the merged result as a table or JSON.
//!
//! This root only picks the mode: the modules above import nothing from it.
//!
//! Each process runs one single-threaded runtime (the generator shares the machine with the
//! server under test) with one task per connection; more cores mean more processes.

pub mod args;
mod coord;
mod countdown;
mod fanout;
mod idle;
mod latency;
mod net;
mod payload;
mod procfs;
mod progress;
mod report;
mod seq;
mod setup;

use anyhow::Result;
use tokio::task::LocalSet;

use args::{BenchMode, Cli};
use coord::{AgentIo, ModePlan, Plan};
pub use report::Broken;

/// `push-bench fanout ...`, `push-bench idle ...`, or (in a child) `push-bench agent`.
pub async fn run(cli: &Cli) -> Result<()> {
    match &cli.mode {
        BenchMode::Fanout(args) => LocalSet::new().run_until(fanout::run(cli, args)).await,
        BenchMode::Idle(args) => LocalSet::new().run_until(idle::run(cli, args)).await,
        BenchMode::Agent => run_agent().await,
    }
}

/// `push-bench agent`: a child of a multi-process run, driven over stdin/stdout.
pub async fn run_agent() -> Result<()> {
    LocalSet::new()
        .run_until(coord::serve_parent(|plan, io| async move {
            net::raise_nofile_limit()?;
            agent(plan, io).await
        }))
        .await
}

async fn agent(plan: Plan, io: AgentIo) -> Result<()> {
    match plan.mode.clone() {
        ModePlan::Fanout(fanout) => fanout::agent(plan, fanout, io).await,
        ModePlan::Idle(idle) => idle::agent(plan, idle, io).await,
    }
}
