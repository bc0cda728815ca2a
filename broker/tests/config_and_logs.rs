//! The `broker` binary's settings and logs: a config file's settings apply (its log format and
//! address here) beneath flags, a bad file stops it before it serves with a message naming the
//! file and the key, and a dead log pipe does not stop it from shutting down on SIGTERM.

use anyhow::{Context, Result};
use serde_json::Value;
use test_support::process::{command, Process};
use test_support::{TempFile, EXIT_TIMEOUT, STARTUP_TIMEOUT};
use tokio::process::Command;

/// The binary, in an environment without the test's own settings.
fn broker() -> Command {
    command(env!("CARGO_BIN_EXE_broker"))
}

/// Starts the broker with `--config FILE` and `args`.
fn with_config(file: &TempFile, args: &[&str]) -> Result<Process> {
    let mut command = broker();
    command.arg("--config").arg(file.path()).args(args);
    Process::spawn_command("broker", command)
}

#[tokio::test]
async fn settings_from_the_file_apply() -> Result<()> {
    let config = TempFile::new(
        "json.toml",
        "listen = \"127.0.0.1:0\"\nlog-format = \"json\"\nlink-queue-frames = 8\n",
    )?;
    let broker = with_config(&config, &[])?;
    let listening = broker
        .wait_for_log("broker listening", STARTUP_TIMEOUT)
        .await?;
    let seen = broker.stderr_lines();
    for line in &seen {
        if let Err(e) = serde_json::from_str::<Value>(line) {
            panic!("log line is not JSON ({e}): {line}");
        }
    }
    let read = broker
        .wait_for_log("settings read from config file", STARTUP_TIMEOUT)
        .await
        .with_context(|| format!("{seen:#?}"))?;
    assert_eq!(read["path"], config.path().display().to_string());
    let addr = listening["addr"].as_str().context("addr field")?;
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");
    assert_ne!(addr, "127.0.0.1:2206", "listen comes from the file");
    Ok(())
}

#[tokio::test]
async fn a_flag_beats_the_file() -> Result<()> {
    let config = TempFile::new(
        "flag.toml",
        "listen = \"127.0.0.1:0\"\nlog-format = \"json\"\n",
    )?;
    let broker = with_config(&config, &["--log-format", "text"])?;
    broker
        .wait_for_stderr_line("a `broker listening` line", STARTUP_TIMEOUT, |line| {
            line.contains("broker listening")
        })
        .await?;
    for line in broker.stderr_lines() {
        assert!(!line.starts_with('{'), "text wanted, got JSON: {line}");
    }
    Ok(())
}

#[tokio::test]
async fn a_bad_file_stops_it_with_a_clear_message() -> Result<()> {
    let config = TempFile::new(
        "bad.toml",
        "listen = \"127.0.0.1:0\"\nlink_queue_frames = 5\n",
    )?;
    let mut broker = with_config(&config, &[])?;
    let status = broker.wait(EXIT_TIMEOUT).await?;
    let text = broker.stderr();
    assert_eq!(status.code(), Some(1), "{text}");
    let path = config.path().display().to_string();
    assert!(text.contains(&path), "{text}");
    assert!(
        text.contains("unknown key `link_queue_frames` (did you mean `link-queue-frames`?)"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    assert!(!text.contains("listening"), "{text}");
    Ok(())
}

#[tokio::test]
async fn help_still_works() -> Result<()> {
    let mut command = broker();
    command.arg("--help");
    let mut broker = Process::spawn_command("broker --help", command)?;
    let status = broker.wait(EXIT_TIMEOUT).await?;
    assert!(status.success());
    let help = broker.stdout();
    assert!(help.contains("--config <FILE>"), "{help}");
    assert!(help.contains("BROKER_CONFIG"), "{help}");
    Ok(())
}

#[tokio::test]
async fn shuts_down_on_sigterm_after_its_log_reader_is_gone() -> Result<()> {
    let mut command = broker();
    command.args(["--broker-listen", "127.0.0.1:0"]);
    let mut broker = Process::spawn_command("broker", command)?;
    // Read up to the readiness line, then close the pipe: later log lines fail with EPIPE.
    broker
        .wait_for_stderr_line("a `broker listening` line", STARTUP_TIMEOUT, |line| {
            line.contains("broker listening")
        })
        .await?;
    broker.close_stderr().await;

    broker.terminate().await?;
    let status = broker
        .wait(EXIT_TIMEOUT)
        .await
        .context("the broker ignored SIGTERM")?;
    assert!(status.success(), "{status}");
    Ok(())
}
