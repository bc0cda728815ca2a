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

/// A gateway started by `command` (its listeners on port 0, the embedded broker), and its
/// admin API once it listens.
async fn started(name: &str, mut command: Command) -> Result<(Process, test_support::Admin)> {
    command
        .args(["--listen", "127.0.0.1:0"])
        .args(["--broker-listen", "127.0.0.1:0"])
        .args(["--admin", "127.0.0.1:0"])
        .args(["--log-format", "json"]);
    let gateway = Process::spawn_command(name, command)?;
    let fields = gateway
        .wait_for_log("admin listening", STARTUP_TIMEOUT)
        .await?;
    let addr = fields["addr"]
        .as_str()
        .context("admin addr")?
        .parse()
        .context("admin addr")?;
    gateway.wait_for_log("bus up", STARTUP_TIMEOUT).await?;
    Ok((gateway, test_support::Admin::new(name, addr)?))
}

/// Each of `sizes` (group, SIZE) keeps a history of SIZE messages: a read of SIZE is answered,
/// one of SIZE + 1 refused naming SIZE; `plain` keeps none.
async fn rules_hold(admin: &test_support::Admin, sizes: &[(&str, u32)], plain: &str) -> Result<()> {
    for (group, size) in sizes {
        let (status, body) = admin
            .get(&format!("/api/history/{group}?limit={size}"))
            .await?;
        anyhow::ensure!(status == 200, "{group}: {status} {body}");
        let (status, body) = admin
            .get(&format!("/api/history/{group}?limit={}", size + 1))
            .await?;
        anyhow::ensure!(
            status == 400 && body.contains(&format!("history size, {size}")),
            "{group}: {status} {body}"
        );
    }
    let (status, body) = admin.get(&format!("/api/history/{plain}")).await?;
    anyhow::ensure!(
        status == 400 && body.contains("no_history"),
        "{plain}: {status} {body}"
    );
    Ok(())
}

/// `--history` rules from `GATEWAY_HISTORY` (`;` between rules) and from a config file's
/// `[history]` table of `"PREFIX" = "SIZE,TTL"`.
#[tokio::test]
async fn history_rules_from_the_environment_and_from_a_config_table() -> Result<()> {
    let mut command = gateway();
    command.env("GATEWAY_HISTORY", "a:=5,1m;b:=7,10m");
    let (_env_gateway, admin) = started("gateway (env)", command).await?;
    rules_hold(&admin, &[("a:1", 5), ("b:1", 7)], "c:1").await?;

    let file = TempFile::new(
        "history.toml",
        "[history]\n\"t:\" = \"3,1m\"\n\"u:\" = \"4,30s\"\n",
    )?;
    let mut command = gateway();
    command.arg("--config").arg(file.path());
    let (_file_gateway, admin) = started("gateway (file)", command).await?;
    rules_hold(&admin, &[("t:1", 3), ("u:1", 4)], "a:1").await
}
