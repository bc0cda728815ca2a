//! Runs the built push-bench binary: its help, usage errors, and a run against an address where
//! nothing listens (runs against a real gateway are in e2e/tests/bench.rs).

use std::net::TcpListener;
use std::process::{Command, Output, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_push-bench");

fn bench(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .env_remove("PUSH_URL")
        .stdin(Stdio::null())
        .output()
        .expect("run push-bench")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn unreachable_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    drop(listener);
    format!("ws://127.0.0.1:{port}")
}

#[test]
fn help_names_both_modes() {
    let out = bench(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = text(&out.stdout);
    assert!(help.starts_with("Load generator"), "{help}");
    for mode in ["fanout", "idle"] {
        assert!(help.contains(mode), "{help}");
    }
    assert!(
        !help
            .lines()
            .any(|line| line.trim_start().starts_with("agent")),
        "the agent subcommand is internal: {help}"
    );
    assert!(help.contains("Exit codes:"), "{help}");
    let out = bench(&["fanout", "--help"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(text(&out.stdout).contains("push-bench fanout --connections 10000"));
}

#[test]
fn usage_errors_exit_one() {
    for args in [
        &[][..],
        &["bench", "fanout"],
        &["fanout", "--rate", "0"],
        &["idle", "--connect-timeout", "0"],
    ] {
        let out = bench(args);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(!text(&out.stderr).is_empty(), "{args:?}");
    }
    let out = bench(&["fanout", "--senders", "0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("error: --senders must be between 1 and --connections"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn no_gateway_is_an_error_in_every_process() {
    let url = unreachable_url();
    // Two processes: the second is a copy of push-bench, which must start and report back.
    let out = bench(&[
        "--url",
        &url,
        "fanout",
        "--connections",
        "4",
        "--groups",
        "2",
        "--senders",
        "2",
        "--processes",
        "2",
        "--connect-timeout",
        "2",
    ]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("error: no connection could join its group"),
        "{stderr}"
    );
    assert!(text(&out.stdout).is_empty());
}
