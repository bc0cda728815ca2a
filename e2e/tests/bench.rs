//! The `push-bench` load generator against a real gateway: short runs over two processes (the
//! second a copy of push-bench itself), checked through its JSON report, and a run that the
//! gateway's rate limit breaks.

use std::process::ExitStatus;
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

/// Starts `push-bench --url <gateway> <args> --json`.
fn start_bench(gateway: &Gateway, args: &[&str]) -> Result<Process> {
    let url = gateway.url();
    let mut all = vec!["--url", url.as_str()];
    all.extend(args);
    all.push("--json");
    Process::spawn("push-bench", "push-bench", &all)
}

/// Waits for push-bench to exit; returns its exit status and its report.
async fn finish_bench(bench: &mut Process) -> Result<(ExitStatus, Value)> {
    let status = bench.wait(RUN_TIMEOUT).await?;
    let stdout = bench.stdout();
    let report = serde_json::from_str(&stdout).with_context(|| {
        format!(
            "push-bench ({status}) printed no JSON report: {stdout:?}; stderr: {:?}",
            bench.stderr_lines()
        )
    })?;
    Ok((status, report))
}

/// Runs `push-bench --url <gateway> <args> --json` to its end; returns whether it exited 0 and
/// its report.
async fn bench(gateway: &Gateway, args: &[&str]) -> Result<(bool, Value, Process)> {
    let mut bench = start_bench(gateway, args)?;
    let (status, report) = finish_bench(&mut bench).await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_run_warns_at_once_and_exits_2() -> Result<()> {
    // 5 messages per second against a sender of 50: most are refused, and the sender is not
    // closed for it before the end.
    let config = GatewayConfig::embedded("gateway")
        .workers(2)
        .arg("--max-messages-per-second")
        .arg("5")
        .arg("--message-burst")
        .arg("5")
        .arg("--rate-limit-strikes")
        .arg("1000");
    let gateway = Gateway::start(config).await?;
    let args = [
        "fanout",
        "--connections",
        "10",
        "--groups",
        "1",
        "--senders",
        "1",
        "--rate",
        "50",
        "--warmup",
        "0",
        "--duration",
        "3s",
        "--drain",
        "1s",
    ];
    let mut bench = start_bench(&gateway, &args)?;
    let is_warning = |line: &str| line.starts_with("warning: the gateway refuses messages");
    bench
        .wait_for_stderr_line(
            "the rate limit warning",
            Duration::from_secs(20),
            is_warning,
        )
        .await?;
    ensure!(
        bench.try_wait()?.is_none(),
        "the rate limit warning came only at the end of the run"
    );
    let (status, report) = finish_bench(&mut bench).await?;
    let stderr = bench.stderr_lines();
    ensure!(status.code() == Some(2), "{status}; stderr: {stderr:?}");
    let warnings = stderr.iter().filter(|line| is_warning(line)).count();
    ensure!(warnings == 1, "{warnings} rate limit warnings: {stderr:?}");
    let rate_limited = number(&report, "rate_limited")?;
    ensure!(rate_limited > 0, "{report}");
    ensure!(
        number(&report, "server_errors")? >= rate_limited,
        "{report}"
    );
    ensure!(number(&report, "lost")? > 0, "{report}");
    let first = report["first_server_error"].as_str().unwrap_or_default();
    ensure!(first.contains(r#""code":"rate_limited""#), "{report}");
    let error = stderr.last().map(String::as_str).unwrap_or_default();
    ensure!(
        error.starts_with("error: broken run: ")
            && error.contains(" deliveries lost")
            && error.contains(" rate_limited)"),
        "last stderr line: {error:?}"
    );
    gateway.process.assert_no_panics()
}
