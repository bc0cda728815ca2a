//! The admin HTTP servers of the real `gateway` and `broker` binaries hold up against idle,
//! half-sent and too many connections (issue: "admin HTTP servers have no timeouts and no
//! connection cap"): each is closed or refused within its limit, counted in `/metrics`, and the
//! server keeps answering everyone else.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use e2e::{Admin, Broker, Gateway, GatewayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

const MAX_CONNECTIONS: usize = 8;
/// Long enough that a connection refused at once is told from one closed by this timeout on a
/// loaded machine.
const HEADER_TIMEOUT: Duration = Duration::from_millis(3000);
const REQUEST_TIMEOUT: Duration = Duration::from_millis(2000);
/// How long past its limit the server may take to act.
const SLACK: Duration = Duration::from_secs(3);

fn limit_args() -> Vec<String> {
    [
        "--admin-max-connections",
        &MAX_CONNECTIONS.to_string(),
        "--admin-header-timeout",
        &format!("{}ms", HEADER_TIMEOUT.as_millis()),
        "--admin-request-timeout",
        &format!("{}ms", REQUEST_TIMEOUT.as_millis()),
    ]
    .map(String::from)
    .into()
}

/// Reads until the server closes the connection; returns what it sent and when it closed.
async fn read_until_closed(stream: &mut TcpStream, within: Duration) -> Result<(String, Instant)> {
    let mut answer = Vec::new();
    let read = tokio::time::timeout(within, stream.read_to_end(&mut answer)).await;
    match read {
        Ok(Ok(_)) => Ok((
            String::from_utf8_lossy(&answer).into_owned(),
            Instant::now(),
        )),
        // A reset is a close too.
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => Ok((
            String::from_utf8_lossy(&answer).into_owned(),
            Instant::now(),
        )),
        Ok(Err(e)) => Err(e).context("reading from the admin server"),
        Err(_) => anyhow::bail!("the admin server kept the connection open for {within:?}"),
    }
}

async fn metric(admin: &Admin, name: &str) -> Result<u64> {
    let (status, text) = admin.get("/metrics").await?;
    ensure!(status == 200, "/metrics answered {status}");
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .with_context(|| format!("no {name} in:\n{text}"))
}

/// Every limit of one admin server at `addr`, whose metrics start with `prefix`.
async fn check_limits(admin: &Admin, prefix: &str) -> Result<()> {
    let addr: SocketAddr = admin.addr();

    // Idle connections (nothing sent) and a half-sent request are closed after the header
    // timeout, not kept forever.
    let started = Instant::now();
    let mut idle = TcpStream::connect(addr).await?;
    let mut half = TcpStream::connect(addr).await?;
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await?;
    for stream in [&mut idle, &mut half] {
        let (_, closed) = read_until_closed(stream, HEADER_TIMEOUT + SLACK).await?;
        ensure!(
            closed - started >= HEADER_TIMEOUT.mul_f32(0.9),
            "closed before the header timeout: {:?}",
            closed - started
        );
    }

    // More than the cap at once: one past the cap is closed at once (refused), while the
    // others wait for the header timeout; the server still answers once they are gone.
    //
    // Told by the order, not by a clock, so that a stalled server or test cannot blur the two:
    // the first connections to close must be among the last ones opened. A server that took
    // them all would close the first ones opened first (each at its header timeout). The last
    // three, not only the extra one: the idle and half-sent connections above may hold their
    // places for a moment after they were closed (a place is given back when the connection's
    // task ends), so the last two held ones may be refused instead, and the extra one then
    // taken in a place given back meanwhile.
    let mut opened = Vec::new();
    for _ in 0..=MAX_CONNECTIONS {
        opened.push(TcpStream::connect(addr).await?);
    }
    let may_be_refused = opened.len() - 3..opened.len();
    let deadline = Instant::now() + HEADER_TIMEOUT + SLACK;
    let closed = loop {
        let closed: Vec<usize> = opened
            .iter()
            .enumerate()
            .filter(|(_, stream)| {
                let mut byte = [0u8; 1];
                !matches!(stream.try_read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
            })
            .map(|(i, _)| i)
            .collect();
        if !closed.is_empty() {
            break closed;
        }
        ensure!(
            Instant::now() < deadline,
            "none of {} connections closed within {:?}",
            opened.len(),
            HEADER_TIMEOUT + SLACK
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    ensure!(
        closed.iter().all(|i| may_be_refused.contains(i)),
        "the first connections closed were {closed:?} of {}: not refused past the cap",
        opened.len()
    );
    drop(opened);

    // Everyone else is served again, and every refusal and timeout was counted.
    let deadline = Instant::now() + SLACK;
    loop {
        if let Ok((200, _)) = admin.get("/healthz").await {
            break;
        }
        ensure!(Instant::now() < deadline, "/healthz never answered again");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let refused = metric(admin, &format!("{prefix}_admin_connections_refused_total")).await?;
    ensure!(refused >= 1, "refusals counted: {refused}");
    let timed_out = metric(
        admin,
        &format!("{prefix}_admin_connections_timed_out_total"),
    )
    .await?;
    ensure!(timed_out >= 2, "connection timeouts counted: {timed_out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_admin_server_closes_idle_half_sent_and_excess_connections() -> Result<()> {
    let mut config = GatewayConfig::embedded("gateway");
    for arg in limit_args() {
        config = config.arg(arg);
    }
    let gateway = Gateway::start(config).await?;
    check_limits(&gateway.admin, "gateway").await?;

    // A body that never arrives: 408 after the request timeout, and counted.
    let mut slow_body = TcpStream::connect(gateway.admin.addr()).await?;
    let started = Instant::now();
    slow_body
        .write_all(b"POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"gro")
        .await?;
    let mut answer = [0u8; 12];
    tokio::time::timeout(REQUEST_TIMEOUT + SLACK, slow_body.read_exact(&mut answer))
        .await
        .context("no answer to a request whose body never arrives")??;
    ensure!(
        &answer == b"HTTP/1.1 408",
        "a request whose body never arrives: {:?}",
        String::from_utf8_lossy(&answer)
    );
    ensure!(
        started.elapsed() >= REQUEST_TIMEOUT.mul_f32(0.9),
        "answered before the request timeout: {:?}",
        started.elapsed()
    );
    let timed_out = metric(&gateway.admin, "gateway_admin_requests_timed_out_total").await?;
    ensure!(timed_out == 1, "request timeouts counted: {timed_out}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_admin_server_closes_idle_half_sent_and_excess_connections() -> Result<()> {
    let broker = Broker::start_with(
        "broker",
        SocketAddr::from(([127, 0, 0, 1], 0)),
        &limit_args(),
    )
    .await?;
    check_limits(&broker.admin, "broker").await
}
