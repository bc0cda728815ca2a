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

/// The original Workerman example's WebSocket server, as its PHP does it: `add_group` joins
/// the connection to the group, `send_to_group` writes the message's raw text to every member
/// of the group, and nothing is ever answered (no ack, no error: anything else is ignored).
mod seed_server {
    use std::collections::HashMap;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    use anyhow::Result;
    use futures_util::{SinkExt as _, StreamExt as _};
    use serde_json::Value;
    use tokio::sync::{mpsc, watch};
    use tokio_tungstenite::tungstenite::Message;

    /// Members' outgoing queues by group, and every frame received (in order).
    #[derive(Default)]
    struct State {
        groups: HashMap<String, Vec<mpsc::UnboundedSender<String>>>,
        received: Vec<Value>,
    }

    pub struct SeedServer {
        pub addr: SocketAddr,
        state: Arc<Mutex<State>>,
        /// How many `add_group` the server has applied.
        pub joins: watch::Receiver<usize>,
        /// How many frames the server has received.
        pub frames: watch::Receiver<usize>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for SeedServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl SeedServer {
        pub async fn start() -> Result<SeedServer> {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
            let addr = listener.local_addr()?;
            let state = Arc::new(Mutex::new(State::default()));
            let (joined, joins) = watch::channel(0);
            let (received, frames) = watch::channel(0);
            let counters = Arc::new((joined, received));
            let shared = state.clone();
            let task = tokio::spawn(async move {
                while let Ok((tcp, _)) = listener.accept().await {
                    tokio::spawn(connection(tcp, shared.clone(), counters.clone()));
                }
            });
            Ok(SeedServer {
                addr,
                state,
                joins,
                frames,
                task,
            })
        }

        pub fn url(&self) -> String {
            format!("ws://{}", self.addr)
        }

        /// The `cmd` of every frame received so far, in order.
        pub fn commands(&self) -> Vec<String> {
            let state = self.state.lock().expect("not poisoned");
            state
                .received
                .iter()
                .map(|v| v["cmd"].as_str().unwrap_or("?").to_owned())
                .collect()
        }
    }

    async fn connection(
        tcp: tokio::net::TcpStream,
        state: Arc<Mutex<State>>,
        counters: Arc<(watch::Sender<usize>, watch::Sender<usize>)>,
    ) {
        let (joined, received) = &*counters;
        let Ok(ws) = tokio_tungstenite::accept_async(tcp).await else {
            return;
        };
        let (mut sink, mut stream) = ws.split();
        let (outbox, mut queued) = mpsc::unbounded_channel::<String>();
        let writer = tokio::spawn(async move {
            while let Some(text) = queued.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    return;
                }
            }
        });
        while let Some(Ok(message)) = stream.next().await {
            let Message::Text(text) = message else {
                continue;
            };
            let Ok(data) = serde_json::from_str::<Value>(text.as_str()) else {
                continue;
            };
            let group = match &data["group_id"] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let mut state = state.lock().expect("not poisoned");
            state.received.push(data.clone());
            received.send_modify(|n| *n += 1);
            match data["cmd"].as_str() {
                Some("add_group") => {
                    state.groups.entry(group).or_default().push(outbox.clone());
                    joined.send_modify(|n| *n += 1);
                }
                Some("send_to_group") => {
                    let text = match &data["message"] {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    for member in state.groups.get(&group).into_iter().flatten() {
                        let _ = member.send(text.clone());
                    }
                }
                _ => {}
            }
        }
        writer.abort();
    }
}

/// What `client-cli` says once on stderr when a server answered nothing within --ack-timeout.
const NO_REPLIES: &str = "warning: no reply from the server within 0.5 s: it sends no \
                          acknowledgements (a seed-protocol server, such as the original \
                          Workerman example?): ";

/// client-cli against a server of the seed protocol, which never answers: `join` says once that
/// its joins are unconfirmed and prints exactly what `send` sent; `send` exits 0 with the warning
/// (the message was written, which is all the seed promises); with --acks none, neither waits
/// nor warns.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cli_works_against_a_seed_protocol_server() -> Result<()> {
    let server = seed_server::SeedServer::start().await?;
    let url = server.url();
    let mut joins = server.joins.clone();
    let joiner = |name: &str, extra: &[&str]| {
        let mut args = vec!["--url", url.as_str(), "join", "123", "--count", "2"];
        args.extend(["--timeout", "20", "--ack-timeout", "0.5"]);
        args.extend(extra);
        Process::spawn(name, "client-cli", args)
    };
    let mut auto = joiner("client-cli join (auto)", &[])?;
    let mut none = joiner("client-cli join (--acks none)", &["--acks", "none"])?;
    for join in [&auto, &none] {
        join.wait_for_stderr_line("the unconfirmed join", STARTUP_TIMEOUT, |line| {
            line == "joined 123 (unconfirmed)"
        })
        .await?;
    }
    // Both joins applied by the server before anything is sent.
    tokio::time::timeout(STARTUP_TIMEOUT, joins.wait_for(|n| *n == 2)).await??;

    for message in ["C'est le message", "second"] {
        let mut send = Process::spawn(
            "client-cli send",
            "client-cli",
            [
                "--url",
                &url,
                "send",
                "123",
                message,
                "--ack-timeout",
                "0.5",
            ],
        )?;
        let status = send.wait(EXIT_TIMEOUT).await?;
        ensure!(
            status.success(),
            "send exited with {status}: {:?}",
            send.stderr()
        );
        ensure!(send.stdout().is_empty(), "send printed {:?}", send.stdout());
        let expected = format!(
            "{NO_REPLIES}the message was sent, its delivery is unconfirmed (--acks none does \
             not wait)\n"
        );
        ensure!(send.stderr() == expected, "send said {:?}", send.stderr());
    }
    let mut unwaited = Process::spawn(
        "client-cli send (--acks none)",
        "client-cli",
        ["--url", &url, "send", "123", "unheard", "--acks", "none"],
    )?;
    for (name, join) in [("auto", &mut auto), ("none", &mut none)] {
        let status = join.wait(EXIT_TIMEOUT).await?;
        ensure!(
            status.success(),
            "join ({name}) exited with {status}: {:?}",
            join.stderr()
        );
        ensure!(
            join.stdout() == "C'est le message\nsecond\n",
            "join ({name}) printed {:?}",
            join.stdout()
        );
    }
    let expected = format!(
        "{NO_REPLIES}the joins are unconfirmed; printing what arrives (--acks none does not \
         wait)\njoined 123 (unconfirmed)\n"
    );
    ensure!(auto.stderr() == expected, "join said {:?}", auto.stderr());
    ensure!(
        none.stderr() == "joined 123 (unconfirmed)\n",
        "join --acks none said {:?}",
        none.stderr()
    );
    let status = unwaited.wait(EXIT_TIMEOUT).await?;
    ensure!(
        status.success() && unwaited.stderr().is_empty(),
        "send --acks none: {status}, {:?}",
        unwaited.stderr()
    );
    // The joins (and, from the one that waits, a `whoami` the seed ignores) and the sends:
    // nothing else.
    let mut frames = server.frames.clone();
    tokio::time::timeout(STARTUP_TIMEOUT, frames.wait_for(|n| *n >= 6)).await??;
    let mut commands = server.commands();
    commands.sort_unstable();
    ensure!(
        commands
            == [
                "add_group",
                "add_group",
                "send_to_group",
                "send_to_group",
                "send_to_group",
                "whoami"
            ],
        "the server received {commands:?}"
    );
    Ok(())
}

/// client-cli over `wss://` (the test CA trusted through SSL_CERT_FILE) to a gateway that
/// requires join tokens: with --join-token it joins and sends what the token allows; a send the
/// token forbids, and a join without a token, end with the gateway's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cli_over_wss_with_a_join_token() -> Result<()> {
    use e2e::certs::{flag, TestPki};
    use e2e::process::{binary, command};
    use jsonwebtoken::{Algorithm, EncodingKey, Header};
    use serde_json::json;

    const SECRET: &str = "e2e-client-cli-join-token-secret-0123456789";
    let pki = TestPki::generate()?;
    let secret = pki.write("join.secret", SECRET)?;
    let mut config = GatewayConfig::embedded("gateway").workers(2);
    for arg in [
        flag("--tls-cert", &pki.cert),
        flag("--tls-key", &pki.key),
        flag("--join-token-secret-file", &secret),
    ]
    .into_iter()
    .flatten()
    {
        config = config.arg(arg);
    }
    let gateway = Gateway::start(config.arg("--require-join-token")).await?;
    let url = format!("wss://{}", gateway.addr);
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs()
        + 3600;
    let token = |claims: serde_json::Value| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
    };
    let reader = token(json!({"exp": exp, "groups": ["news"], "send": []}))?;
    let editor = token(json!({"exp": exp, "groups": [], "send": ["news"]}))?;
    let client = |name: &str, args: &[&str]| -> Result<Process> {
        let mut cli = command(binary("client-cli")?);
        cli.env("SSL_CERT_FILE", &pki.ca)
            .arg("--url")
            .arg(&url)
            .args(args);
        Process::spawn_command(name, cli)
    };

    let mut join = client(
        "client-cli join",
        &[
            "join",
            "news",
            "--count",
            "1",
            "--timeout",
            "20",
            "--join-token",
            &reader,
        ],
    )?;
    join.wait_for_stderr_line("\"joined news\" on stderr", STARTUP_TIMEOUT, |line| {
        line == "joined news"
    })
    .await?;
    let mut send = client(
        "client-cli send",
        &["send", "news", "over TLS", "--join-token", &editor],
    )?;
    let status = send.wait(EXIT_TIMEOUT).await?;
    ensure!(
        status.success() && send.stderr().is_empty(),
        "send: {status}, {:?}",
        send.stderr()
    );
    let status = join.wait(EXIT_TIMEOUT).await?;
    ensure!(status.success(), "join: {status}, {:?}", join.stderr());
    ensure!(
        join.stdout() == "over TLS\n",
        "join printed {:?}",
        join.stdout()
    );

    // The reader's token allows no send; no token allows no join.
    let mut refused = client(
        "client-cli send (forbidden)",
        &["send", "news", "x", "--join-token", &reader],
    )?;
    let status = refused.wait(EXIT_TIMEOUT).await?;
    ensure!(
        status.code() == Some(1) && refused.stderr().starts_with("error: forbidden: "),
        "forbidden send: {status}, {:?}",
        refused.stderr()
    );
    let mut anonymous = client("client-cli join (no token)", &["join", "news"])?;
    let status = anonymous.wait(EXIT_TIMEOUT).await?;
    ensure!(
        status.code() == Some(1) && anonymous.stderr().starts_with("error: unauthorized: "),
        "join without a token: {status}, {:?}",
        anonymous.stderr()
    );
    gateway.process.assert_no_panics()
}
