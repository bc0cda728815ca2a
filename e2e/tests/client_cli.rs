//! The `client-cli` binary against a real gateway.

use anyhow::{ensure, Result};
use e2e::{Gateway, GatewayConfig, Process, EXIT_TIMEOUT, STARTUP_TIMEOUT};

/// Starts `client-cli --url <gateway> join <groups> --count <count> --timeout 10` and waits
/// until it has joined.
async fn join(gateway: &Gateway, groups: &[&str], count: usize) -> Result<Process> {
    let url = gateway.url();
    let count = count.to_string();
    let mut args = vec!["--url", url.as_str(), "join"];
    args.extend(groups);
    args.extend(["--count", count.as_str(), "--timeout", "10"]);
    let join = Process::spawn("client-cli join", "client-cli", &args)?;
    let joined = format!("joined {}", groups.join(" "));
    join.wait_for_stderr_line(&format!("{joined:?} on stderr"), STARTUP_TIMEOUT, |line| {
        line == joined
    })
    .await?;
    Ok(join)
}

/// Runs `client-cli --url <gateway> send <group> <message>`; it must exit 0.
async fn send(gateway: &Gateway, group: &str, message: &str) -> Result<()> {
    let url = gateway.url();
    let mut send = Process::spawn(
        "client-cli send",
        "client-cli",
        ["--url", url.as_str(), "send", group, message],
    )?;
    let status = send.wait(EXIT_TIMEOUT).await?;
    ensure!(
        status.success(),
        "`client-cli send {group} {message:?}` exited with {status}; stderr: {:?}",
        send.stderr_lines()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_prints_what_send_sends() -> Result<()> {
    let gateway = Gateway::start(GatewayConfig::embedded("gateway")).await?;
    let mut join = join(&gateway, &["123"], 1).await?;
    send(&gateway, "123", "hi there").await?;
    let status = join.wait(EXIT_TIMEOUT).await?;
    ensure!(
        status.success(),
        "`client-cli join` exited with {status}; stderr: {:?}",
        join.stderr_lines()
    );
    let stdout = join.stdout();
    ensure!(
        stdout == "hi there\n",
        "join printed {stdout:?}, expected \"hi there\\n\""
    );
    gateway.process.assert_no_panics()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_several_groups() -> Result<()> {
    let gateway = Gateway::start(GatewayConfig::embedded("gateway")).await?;
    let mut join = join(&gateway, &["news", "42"], 2).await?;
    send(&gateway, "news", "first").await?;
    send(&gateway, "42", "second, with spaces").await?;
    let status = join.wait(EXIT_TIMEOUT).await?;
    ensure!(
        status.success(),
        "`client-cli join` exited with {status}; stderr: {:?}",
        join.stderr_lines()
    );
    // Two senders: their messages may arrive in either order.
    let stdout = join.stdout();
    let mut lines: Vec<&str> = stdout.lines().collect();
    lines.sort_unstable();
    ensure!(
        stdout.ends_with('\n') && lines == ["first", "second, with spaces"],
        "join printed {stdout:?}"
    );
    Ok(())
}

/// Runs `client-cli ARGS` to completion; it must exit 0. Returns its stdout.
async fn run(args: &[&str]) -> Result<String> {
    let mut cli = Process::spawn(format!("client-cli {}", args.join(" ")), "client-cli", args)?;
    let status = cli.wait(EXIT_TIMEOUT).await?;
    ensure!(
        status.success(),
        "`client-cli {}` exited with {status}; stderr: {:?}",
        args.join(" "),
        cli.stderr_lines()
    );
    Ok(cli.stdout())
}

/// The cluster API from the command line, as docs/usage.md shows it: a member joined with a uid
/// receives what is sent to its uid, to its client id and to everyone; count, members, groups,
/// clients and nodes describe it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_commands_reach_and_describe_a_member() -> Result<()> {
    let gateway = Gateway::start(GatewayConfig::embedded("gateway")).await?;
    let url = gateway.url();
    let admin = format!("http://{}", gateway.admin.addr());
    let mut member = Process::spawn(
        "client-cli join",
        "client-cli",
        [
            "--url",
            &url,
            "join",
            "room",
            "--uid",
            "alice",
            "--presence",
            "--count",
            "3",
            "--timeout",
            "20",
        ],
    )?;
    let line = member
        .wait_for_stderr_line("the member's client id", STARTUP_TIMEOUT, |line| {
            line.starts_with("client_id ")
        })
        .await?;
    let client_id = line.trim_start_matches("client_id ").to_owned();

    let count = run(&["--url", &url, "count", "room"]).await?;
    ensure!(
        count.trim() == "room: 1 connections, 1 uids",
        "count printed {count:?}"
    );
    let members = run(&["--url", &url, "members", "room"]).await?;
    ensure!(
        members.trim() == format!("{client_id} alice"),
        "members printed {members:?}"
    );
    let groups = run(&["groups", "--admin-url", &admin]).await?;
    ensure!(groups.trim() == "room 1", "groups printed {groups:?}");
    let clients = run(&["clients", "--uid", "alice", "--admin-url", &admin]).await?;
    ensure!(
        clients.contains(&client_id),
        "clients --uid printed {clients:?}"
    );
    let nodes = run(&["nodes", "--admin-url", &admin]).await?;
    ensure!(
        nodes.lines().count() == 1
            && nodes.contains("(self)")
            && client_id.starts_with(nodes.split(' ').next().unwrap_or("?")),
        "nodes printed {nodes:?}"
    );

    run(&["--url", &url, "send-uid", "alice", "to alice"]).await?;
    run(&["--url", &url, "send-client", &client_id, "just you"]).await?;
    run(&["--url", &url, "send-all", "everyone"]).await?;
    let status = member.wait(EXIT_TIMEOUT).await?;
    ensure!(
        status.success(),
        "`client-cli join` exited with {status}; stderr: {:?}",
        member.stderr_lines()
    );
    let stdout = member.stdout();
    ensure!(
        stdout == "to alice\njust you\neveryone\n",
        "the member printed {stdout:?}"
    );
    gateway.process.assert_no_panics()
}

/// `client-cli join G --resume-file F` against a gateway with history: it prints what it
/// receives and keeps the position; the next run recovers what it missed meanwhile, first, and
/// nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_with_a_resume_file_recovers_what_it_missed() -> Result<()> {
    let gateway = Gateway::start(
        GatewayConfig::embedded("gateway")
            .arg("--history")
            .arg("chat:=100,10m"),
    )
    .await?;
    let dir = std::env::temp_dir().join(format!("client-cli-resume-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let resume = dir.join("pos.json");
    let resume = resume.to_str().unwrap_or_default().to_owned();
    let url = gateway.url();
    let join = |count: &'static str| {
        Process::spawn(
            "client-cli join --resume-file",
            "client-cli",
            [
                "--url",
                url.as_str(),
                "join",
                "chat:1",
                "--resume-file",
                resume.as_str(),
                "--count",
                count,
                "--timeout",
                "10",
            ],
        )
    };
    let mut first = join("2")?;
    first
        .wait_for_stderr_line("\"joined chat:1\" on stderr", STARTUP_TIMEOUT, |line| {
            line == "joined chat:1"
        })
        .await?;
    send(&gateway, "chat:1", "one").await?;
    send(&gateway, "chat:1", "two").await?;
    let status = first.wait(EXIT_TIMEOUT).await?;
    ensure!(
        status.success(),
        "first run: {status}, {:?}",
        first.stderr_lines()
    );
    ensure!(
        first.stdout() == "one\ntwo\n",
        "first run printed {:?}",
        first.stdout()
    );

    // Missed while no one was connected.
    send(&gateway, "chat:1", "three").await?;
    send(&gateway, "chat:1", "four").await?;
    let mut second = join("3")?;
    second
        .wait_for_stderr_line("\"joined chat:1\" on stderr", STARTUP_TIMEOUT, |line| {
            line == "joined chat:1"
        })
        .await?;
    send(&gateway, "chat:1", "five").await?;
    let status = second.wait(EXIT_TIMEOUT).await?;
    ensure!(
        status.success(),
        "second run: {status}, {:?}",
        second.stderr_lines()
    );
    ensure!(
        second.stdout() == "three\nfour\nfive\n",
        "second run printed {:?}",
        second.stdout()
    );
    ensure!(
        !second.stderr().contains("recovery incomplete"),
        "{:?}",
        second.stderr_lines()
    );
    let _ = std::fs::remove_dir_all(&dir);
    gateway.process.assert_no_panics()
}
