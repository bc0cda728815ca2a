//! Command-line client of the group push gateway.
//!
//! ```text
//! client-cli join 123 456            # prints `joined 123 456` and `client_id C` on stderr, then
//!                                    # messages on stdout
//! client-cli join 123 --presence --uid alice   # also join/leave events; bound to uid alice
//! client-cli join 123 --resume-file pos.json   # positioned: what was missed since the last run
//! client-cli send 123 "hello"        # sends, waits for the ack, closes
//! client-cli --url wss://push.example.com join 123 --join-token "$JWT"
//! client-cli join 123 --acks none    # a seed-protocol server (the original PHP), no acks
//! client-cli --url ws://host:1234 send 123 --json '{"a":1}' --exclude 5f0c1d2e3a4b6c7d-1-42
//! client-cli send-all "hello" / send-uid alice bob "hello" / send-client C "hello"
//! client-cli whoami --bind alice     # client_id, uid, groups
//! client-cli count 123 / members 123 --all [--json]
//! client-cli publish 123 "hello" --admin-url http://127.0.0.1:9090   # through the admin API
//! client-cli publish --batch messages.json --token "$TOKEN"
//! client-cli bind C alice / unbind --uid alice / groups --all / clients C / clients --uid alice
//! client-cli nodes
//! ```
//!
//! - [`cli`]: the flags and their parsers.
//! - [`client_cli::frames`] and [`client_cli::conn`] (the library half of this package): the JSON
//!   requests sent and how replies are read, connecting, reading under a deadline, clean close.
//! - [`join`]: joining and printing; [`request`]: one request after the other on a connection,
//!   for [`send`] (the sends) and [`query`] (`whoami`, `count`, `members`).
//! - [`resume`]: the positions file of `join --resume-file`.
//! - [`admin`]: the admin API (HTTP), for [`publish`] and [`cluster_api`] (`bind`, `unbind`,
//!   `groups`, `clients`, `nodes`); [`output`]: the human output of the answers.
//!
//! Errors are printed as `error: ...` on stderr; exit codes are listed in `--help`.

// Printing received messages on stdout is this binary's job.
#![allow(clippy::print_stdout)]

mod admin;
mod cli;
mod cluster_api;
mod join;
mod output;
mod publish;
mod query;
mod request;
mod resume;
mod send;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use client_cli::conn::TimedOut;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let (command, old_env) = cli::with_old_env(Cli::command(), &cli::RENAMED_ENV, |name| {
        std::env::var(name).ok()
    });
    let parsed = command
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let code = run(parsed);
    // After the run, so that what the command prints comes first.
    for old in old_env {
        let new = cli::RENAMED_ENV
            .iter()
            .find(|(o, _)| *o == old)
            .map_or("", |(_, n)| n);
        eprintln!("warning: the environment variable {old} is deprecated: use {new}");
    }
    code
}

fn run(parsed: Result<Cli, clap::Error>) -> ExitCode {
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => {
            // Usage errors exit 1, not clap's 2: 2 means "timed out" here.
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match &cli.command {
            Command::Join(args) => join::run(&cli, args).await,
            Command::Send(args) => send::run(&cli, args).await,
            Command::SendAll(args) => send::run_all(&cli, args).await,
            Command::SendUid(args) => send::run_uid(&cli, args).await,
            Command::SendClient(args) => send::run_client(&cli, args).await,
            Command::Whoami(args) => query::whoami(&cli, args).await,
            Command::Count(args) => query::count(&cli, args).await,
            Command::Members(args) => query::members(&cli, args).await,
            Command::Publish(args) => publish::run(&cli, args).await,
            Command::Bind(args) => cluster_api::bind(&cli, args).await,
            Command::Unbind(args) => cluster_api::unbind(&cli, args).await,
            Command::Groups(args) => cluster_api::groups(&cli, args).await,
            Command::Clients(args) => cluster_api::clients(&cli, args).await,
            Command::Nodes(args) => cluster_api::nodes(&cli, args).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.is::<TimedOut>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
