//! Starting up: a port another process holds stops a gateway before it says it listens
//! anywhere, with one clean error line naming the flag (no backtrace, although the tests run
//! every binary with `RUST_BACKTRACE=1`); sharing a port is something both gateways ask for; a
//! broker that cannot be reached is warned about once, not at every attempt.

use anyhow::{ensure, Result};
use e2e::{Gateway, GatewayConfig, Process, EXIT_TIMEOUT, LINK_DEBUG, STARTUP_TIMEOUT};
use tokio::net::TcpListener;

/// Runs `gateway ARGS` that must refuse to start, and returns its stderr lines.
async fn refused(args: &[&str]) -> Result<Vec<String>> {
    let mut process = Process::spawn("gateway (refused)", "gateway", args)?;
    let status = process.wait(EXIT_TIMEOUT).await?;
    let stderr = process.stderr_lines();
    ensure!(status.code() == Some(1), "{args:?}: {status}\n{stderr:#?}");
    ensure!(
        !stderr
            .iter()
            .any(|l| l.contains("stack backtrace") || l.contains("Caused by")),
        "a user error is one line, not a backtrace: {stderr:#?}"
    );
    for announced in ["gateway listening", "admin listening", "gateway started"] {
        ensure!(
            !stderr.iter().any(|l| l.contains(announced)),
            "{announced:?} before refusing: {stderr:#?}"
        );
    }
    Ok(stderr)
}

fn has(stderr: &[String], parts: &[&str]) -> bool {
    stderr
        .iter()
        .any(|line| parts.iter().all(|part| line.contains(part)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_taken_port_stops_startup_with_the_flag_that_moves_it() -> Result<()> {
    let taken = TcpListener::bind("127.0.0.1:0").await?;
    let taken = taken.local_addr()?.to_string();

    let stderr = refused(&[
        "--listen",
        &taken,
        "--admin",
        "off",
        "--broker-listen",
        "127.0.0.1:0",
    ])
    .await?;
    ensure!(
        has(
            &stderr,
            &["cannot listen on", &taken, "--listen", "another process"]
        ),
        "{stderr:#?}"
    );
    let stderr = refused(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        &taken,
        "--broker-listen",
        "127.0.0.1:0",
    ])
    .await?;
    ensure!(
        has(&stderr, &["cannot listen on", &taken, "--admin off"]),
        "{stderr:#?}"
    );
    let stderr = refused(&[
        "--listen",
        "127.0.0.1:0",
        "--admin",
        "off",
        "--broker-listen",
        &taken,
    ])
    .await?;
    ensure!(has(&stderr, &[&taken, "--broker-listen"]), "{stderr:#?}");
    // An error found before the logs are set up reads the same way.
    let stderr = refused(&["--config", "/nonexistent/gateway.toml"]).await?;
    ensure!(
        has(&stderr, &["/nonexistent/gateway.toml", "check the path"]),
        "{stderr:#?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_gateway_shares_a_port_only_when_both_ask() -> Result<()> {
    let first = Gateway::start(GatewayConfig::embedded("first").arg("--reuse-port")).await?;
    let port = first.addr.to_string();
    let broker = first
        .embedded_broker
        .map(|addr| addr.to_string())
        .unwrap_or_default();

    // Without --reuse-port: refused, even though the first one allows sharing.
    let stderr = refused(&["--listen", &port, "--admin", "off", "--broker", &broker]).await?;
    ensure!(
        has(&stderr, &["cannot listen on", &port, "--listen"]),
        "{stderr:#?}"
    );

    // With it, on the same bus: both serve the port.
    let mut second = Process::spawn(
        "second",
        "gateway",
        [
            "--listen",
            &port,
            "--reuse-port",
            "--admin",
            "off",
            "--broker",
            &broker,
            "--log-format",
            "json",
        ],
    )?;
    let fields = second
        .wait_for_log("gateway listening", e2e::STARTUP_TIMEOUT)
        .await?;
    ensure!(
        fields.get("addr").and_then(|a| a.as_str()) == Some(port.as_str()),
        "{fields:?}"
    );
    second.wait_for_log("bus up", e2e::STARTUP_TIMEOUT).await?;
    second.terminate().await?;
    ensure!(second.wait(EXIT_TIMEOUT).await?.success());
    Ok(())
}

/// While the broker stays down, the first failed attempt is a warning at once, with nothing
/// held back; the next ones are `debug` lines only, until 30 s have passed (then one warning
/// with the number held back: gateway::bus::warnings's test).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_warned_about_once_per_interval() -> Result<()> {
    let down = test_support::net::refused_addr().await?;
    let config = GatewayConfig::with_broker("gateway", down)
        .workers(1)
        .arg("--reconnect-min")
        .arg("10ms")
        .arg("--reconnect-max")
        .arg("50ms")
        .log_filter(LINK_DEBUG)
        .without_waiting_for_the_link();
    let started = std::time::Instant::now();
    let gateway = Gateway::start(config).await?;
    let first = gateway
        .process
        .wait_for_log("cannot reach broker", STARTUP_TIMEOUT)
        .await?;
    ensure!(
        first.get("suppressed").and_then(|n| n.as_u64()) == Some(0),
        "{first:?}"
    );
    gateway
        .process
        .wait_for_nth_log("broker connection attempt failed", 20, STARTUP_TIMEOUT)
        .await?;
    let warnings = gateway.process.log_count("cannot reach broker");
    // Twenty attempts 50 ms apart take about a second; the bound below is the warning interval.
    if started.elapsed() < std::time::Duration::from_secs(30) {
        ensure!(warnings == 1, "{warnings} warnings for 20 failed attempts");
    }
    gateway.process.assert_no_panics()
}
