//! Command-line client of the group push gateway.
//!
//! ```text
//! client-cli join 123 456            # prints `joined 123 456` on stderr, then messages on stdout
//! client-cli send 123 "hello"        # sends, waits for the ack, closes
//! client-cli --url ws://host:1234 send 123 --json '{"a":1}'
//! client-cli publish 123 "hello" --admin-url http://127.0.0.1:9090   # through the admin API
//! client-cli publish --batch messages.json --token "$TOKEN"
//! ```
//!
//! - [`cli`]: the flags and their parsers.
//! - [`client_cli::frames`] and [`client_cli::conn`] (the library half of this package): the JSON
//!   requests sent and how replies are read, connecting, reading under a deadline, clean close.
//! - [`join`] and [`send`]: the WebSocket subcommands; [`publish`]: the admin API (HTTP).
//!
//! Errors are printed as `error: ...` on stderr; exit codes are listed in `--help`.

// Printing received messages on stdout is this binary's job.
#![allow(clippy::print_stdout)]

mod cli;
mod join;
mod publish;
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
            Command::Publish(args) => publish::run(&cli, args).await,
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
