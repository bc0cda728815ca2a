//! The `push-bench` load generator against a real gateway: short runs over two processes (the
//! second a copy of push-bench itself), checked through its JSON report.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e::{Gateway, GatewayConfig, Process};
use serde_json::Value;

/// A short run's setup, measured window, drain and close, with room for a slow machine.
const RUN_TIMEOUT: Duration = Duration::from_secs(60);

/// A gateway with the per-connection message rate limit off, as the benchmark floods on purpose.
async fn unlimited_gateway() -> Result<Gateway> {
    let config = GatewayConfig::embedded("gateway")
        .workers(2)
        .arg("--max-messages-per-second")
        .arg("0");
    Gateway::start(config).await
}

/// Runs `push-bench --url <gateway> <args> --json` to its end; returns its exit status's success
/// and its report.
async fn bench(gateway: &Gateway, args: &[&str]) -> Result<(bool, Value, Process)> {
    let url = gateway.url();
    let mut all = vec!["--url", url.as_str()];
    all.extend(args);
    all.push("--json");
    let mut bench = Process::spawn("push-bench", "push-bench", &all)?;
    let status = bench.wait(RUN_TIMEOUT).await?;
    let stdout = bench.stdout();
    let report = serde_json::from_str(&stdout).with_context(|| {
        format!(
            "`push-bench {}` ({status}) printed no JSON report: {stdout:?}; stderr: {:?}",
            all.join(" "),
            bench.stderr_lines()
        )
    })?;
    Ok((status.success(), report, bench))
}

fn number(report: &Value, field: &str) -> Result<u64> {
    report
        .get(field)
        .and_then(Value::as_u64)
        .with_context(|| format!("no number {field:?} in the report {report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fanout_over_two_processes_delivers_everything() -> Result<()> {
    let gateway = unlimited_gateway().await?;
    let pid = gateway.process.pid()?.to_string();
    let args = [
        "fanout",
        "--connections",
        "40",
        "--groups",
        "4",
        "--senders",
        "4",
        "--duration",
        "1s",
        "--warmup",
        "0",
        "--processes",
        "2",
        "--server-pid",
        &pid,
    ];
    let (success, report, bench) = bench(&gateway, &args).await?;
    let stderr = bench.stderr_lines();
    ensure!(success, "push-bench failed: {report}; stderr: {stderr:?}");
    ensure!(number(&report, "processes")? == 2, "{report}");
    ensure!(number(&report, "connections_joined")? == 40, "{report}");
    let expected = number(&report, "deliveries_expected")?;
    ensure!(expected > 0, "nothing was sent: {report}");
    ensure!(
        number(&report, "deliveries_received")? == expected,
        "{report}"
    );
    for field in ["lost", "duplicated", "server_errors", "connections_dropped"] {
        ensure!(number(&report, field)? == 0, "{field}: {report}");
    }
    ensure!(report["drain_complete"] == true, "{report}");
    ensure!(
        report["servers"][0]["pid"].as_u64() == Some(gateway.process.pid()?.into()),
        "{report}"
    );
    gateway.process.assert_no_panics()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_held_and_verified() -> Result<()> {
    let gateway = unlimited_gateway().await?;
    let args = [
        "idle",
        "--connections",
        "20",
        "--groups",
        "4",
        "--hold",
        "0.5",
        "--verify-groups",
        "2",
        "--processes",
        "2",
    ];
    let (success, report, bench) = bench(&gateway, &args).await?;
    let stderr = bench.stderr_lines();
    ensure!(success, "push-bench failed: {report}; stderr: {stderr:?}");
    ensure!(number(&report, "connections_joined")? == 20, "{report}");
    ensure!(number(&report, "connections_dropped")? == 0, "{report}");
    // Groups 0 and 1 have 5 members each.
    ensure!(number(&report, "verify_expected")? == 10, "{report}");
    ensure!(number(&report, "verify_received")? == 10, "{report}");
    gateway.process.assert_no_panics()
}
