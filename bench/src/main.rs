//! `push-bench`: the load generator of the group push gateway.
//!
//! ```text
//! push-bench --url ws://127.0.0.1:1234 fanout --connections 1000 --groups 10 --senders 10
//! push-bench idle --connections 10000 --hold 60s --server-pid PID
//! ```
//!
//! Everything but the process's entry point is in the library ([`push_bench`]). Errors are
//! printed as `error: ...` on stderr; exit codes are listed in `--help`.

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};
use push_bench::args::Cli;
use push_bench::Broken;

fn main() -> ExitCode {
    // PUSH_URL, the previous release's name of PUSH_BENCH_URL, as a default beneath both.
    let old_url = std::env::var("PUSH_URL").ok();
    let mut command = Cli::command();
    if let Some(url) = &old_url {
        if std::env::var_os("PUSH_BENCH_URL").is_none() {
            let url: &'static str = Box::leak(url.clone().into_boxed_str());
            command = command.mut_arg("url", |arg| arg.default_value(url));
        }
        eprintln!("warning: the environment variable PUSH_URL is deprecated: use PUSH_BENCH_URL");
    }
    let parsed = command
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        // Usage errors exit 1, as every other error does (clap's own code is 2).
        Err(e) if e.use_stderr() => {
            let _ = e.print();
            return ExitCode::FAILURE;
        }
        // --help, --version.
        Err(e) => e.exit(),
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    let result = match runtime {
        Ok(runtime) => runtime.block_on(push_bench::run(&cli)),
        Err(e) => Err(anyhow::anyhow!("cannot start the async runtime: {e}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            if e.is::<Broken>() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
