//! The `gateway` binary with `--config`: it starts from docs/gateway.example.toml with flags and
//! environment variables over the file, and a bad file stops it with a message naming the file
//! and the key.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde_json::Value;
use test_support::process::{command, Process};
use test_support::{TempFile, EXIT_TIMEOUT, STARTUP_TIMEOUT};
use tokio::process::Command;

/// The binary, in an environment without the test's own settings.
fn gateway() -> Command {
    command(env!("CARGO_BIN_EXE_gateway"))
}

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/gateway.example.toml")
}

#[tokio::test]
async fn starts_from_the_example_file_under_flags_and_env() -> Result<()> {
    // The file says text logs on 0.0.0.0:1234: the environment and the flags win.
    let mut command = gateway();
    command
        .env("LOG_FORMAT", "json")
        .arg("--config")
        .arg(example())
        .args(["--listen", "127.0.0.1:0"])
        .args(["--broker-listen", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0"]);
    let gateway = Process::spawn_command("gateway", command)?;
    let fields = gateway
        .wait_for_log("gateway listening", STARTUP_TIMEOUT)
        .await?;
    for line in gateway.stderr_lines() {
        if let Err(e) = serde_json::from_str::<Value>(&line) {
            panic!("log line is not JSON ({e}): {line}");
        }
    }
    let addr = fields["addr"].as_str().context("addr field")?;
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    Ok(())
}

#[tokio::test]
async fn a_bad_value_stops_it_with_a_clear_message() -> Result<()> {
    let file = TempFile::new("bad.toml", "admin = \"off\"\nidle-timeout = 60\n")?;
    let mut command = gateway();
    command.arg("--config").arg(file.path());
    let mut gateway = Process::spawn_command("gateway", command)?;
    let status = gateway.wait(EXIT_TIMEOUT).await?;
    let text = gateway.stderr();
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains(&file.path().display().to_string()), "{text}");
    assert!(text.contains("key `idle-timeout`"), "{text}");
    assert!(text.contains("invalid value '60'"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(!text.contains("listening"), "{text}");
    Ok(())
}
