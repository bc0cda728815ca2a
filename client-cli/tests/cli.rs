//! Runs the built client-cli binary: against unreachable URLs, and against a scripted fake
//! gateway (one WebSocket connection per test) to check output, exit codes and clean closes.

use std::future::Future;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use test_support::net;
use test_support::process::{command, Finished, Process};
use test_support::TempFile;
use tokio::process::Command;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

/// The binary with `args`, in an environment without the test's own settings (`PUSH_URL`).
fn client(args: &[&str]) -> Command {
    let mut command = command(env!("CARGO_BIN_EXE_client-cli"));
    command.args(args);
    command
}

/// Runs the command to its end.
async fn run(command: Command) -> Finished {
    Process::spawn_command("client-cli", command)
        .expect("spawn client-cli")
        .finish(WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
}

async fn unreachable_url() -> String {
    let addr = net::refused_addr().await.expect("a free port");
    format!("ws://{addr}")
}

type ServerWs = WebSocketStream<tokio::net::TcpStream>;

/// A one-connection WebSocket server running `script` in the test's runtime; the script returns
/// a transcript of what it received.
struct FakeServer {
    url: String,
    done: JoinHandle<Vec<String>>,
}

impl FakeServer {
    fn start<F, Fut>(script: F) -> FakeServer
    where
        F: FnOnce(ServerWs) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<String>> + Send,
    {
        let listener = std::net::TcpListener::bind(net::ANY_PORT).expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("ws://{}", listener.local_addr().expect("local addr"));
        let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
        let done = tokio::spawn(async move {
            let accept = async {
                let (tcp, _) = listener.accept().await.expect("accept");
                tokio_tungstenite::accept_async(tcp)
                    .await
                    .expect("handshake")
            };
            let ws = timeout(WAIT, accept).await.expect("client-cli connects");
            timeout(WAIT, script(ws))
                .await
                .expect("server script finishes")
        });
        FakeServer { url, done }
    }

    async fn transcript(self) -> Vec<String> {
        timeout(WAIT, self.done)
            .await
            .expect("the fake server finishes")
            .expect("fake server finished without panicking")
    }
}

/// The next event on the server side, as text: `text ...`, `close CODE`, `eof` or `error ...`.
async fn next_event(ws: &mut ServerWs) -> String {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) => return format!("text {}", text.as_str()),
            Some(Ok(Message::Close(frame))) => {
                let code = frame.map_or(1005, |f| u16::from(f.code));
                // Reading on sends tungstenite's close echo.
                while let Some(Ok(_)) = ws.next().await {}
                return format!("close {code}");
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => return format!("error {e}"),
            None => return "eof".to_owned(),
        }
    }
}

async fn send_text(ws: &mut ServerWs, text: &str) {
    ws.send(Message::Text(text.into()))
        .await
        .expect("server send");
}

fn add_group(group: &str, req_id: u64) -> String {
    format!(r#"text {{"cmd":"add_group","group_id":"{group}","req_id":{req_id}}}"#)
}

/// The `whoami` request `join` sends after its joins, as the server sees it.
fn whoami(req_id: u64) -> String {
    format!(r#"text {{"cmd":"whoami","req_id":{req_id}}}"#)
}

const CLIENT_ID: &str = "5f0c1d2e3a4b6c7d-1-42";

/// Answers `whoami` request `req_id`.
async fn send_whoami(ws: &mut ServerWs, req_id: u64) {
    let reply = format!(
        r#"{{"cmd":"whoami","client_id":"{CLIENT_ID}","uid":null,"groups":[],"req_id":{req_id}}}"#
    );
    send_text(ws, &reply).await;
}

#[tokio::test]
async fn help_exits_zero_and_lists_exit_codes() {
    for args in [
        &["--help"][..],
        &["join", "--help"],
        &["send", "--help"],
        &["send-uid", "--help"],
        &["members", "--help"],
        &["clients", "--help"],
    ] {
        let out = run(client(args)).await;
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
        assert!(out.stdout.contains("Exit codes:"), "{args:?}: {out:?}");
    }
}

#[tokio::test]
async fn usage_errors_exit_one() {
    for args in [
        &["join"][..],
        &["join", ""],
        &["join", "1", "--timeout", "soon"],
        &["send", "1"],
        &["send", "1", "m", "--exclude", "not-a-client-id"],
        &["send-uid", "alice"],
        &["unbind"],
        &["frobnicate"],
    ] {
        let out = run(client(args)).await;
        assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
        assert!(out.stderr.starts_with("error: "), "{args:?}: {out:?}");
    }
}

#[tokio::test]
async fn a_url_without_its_scheme_says_which_one() {
    let out = run(client(&["--url", "127.0.0.1:1234", "send", "1", "hi"])).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("did you mean ws://127.0.0.1:1234?"),
        "{out:?}"
    );
    let out = run(client(&["nodes", "--admin-url", "127.0.0.1:9090"])).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.stderr.contains("did you mean http://127.0.0.1:9090?"),
        "{out:?}"
    );
}

#[tokio::test]
async fn unreachable_server_is_an_error_not_a_panic() {
    let url = unreachable_url().await;
    let expected = format!("error: cannot connect to {url}: ");
    let by_flag = [
        vec!["--url", &url, "send", "1", "hi"],
        vec!["join", "1", "--url", &url, "--timeout", "20"],
        vec!["send", "1", "hi", "--url", &url],
    ];
    for args in by_flag {
        let out = run(client(&args)).await;
        assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
        assert!(out.stderr.starts_with(&expected), "{args:?}: {out:?}");
        assert!(!out.stderr.contains("panicked"), "{args:?}: {out:?}");
        assert_eq!(out.stdout, "");
    }
    let mut by_env = client(&["join", "1"]);
    by_env.env("PUSH_URL", &url);
    let out = run(by_env).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.starts_with(&expected), "{out:?}");
}

#[tokio::test]
async fn join_prints_messages_until_count_then_closes_cleanly() {
    let server = FakeServer::start(|mut ws| async move {
        let mut log = vec![
            next_event(&mut ws).await,
            next_event(&mut ws).await,
            next_event(&mut ws).await,
        ];
        send_text(&mut ws, r#"{"cmd":"ack","req_id":1}"#).await;
        // A group message between two acks is printed after the readiness line.
        send_text(&mut ws, "early").await;
        send_text(&mut ws, r#"{"cmd":"ack","req_id":2}"#).await;
        send_whoami(&mut ws, 3).await;
        send_text(&mut ws, "hello world").await;
        ws.send(Message::Binary(vec![1, 2, 3].into()))
            .await
            .expect("send binary");
        ws.send(Message::Ping(Vec::new().into()))
            .await
            .expect("send ping");
        send_text(&mut ws, r#"{"a":1}"#).await;
        log.push(next_event(&mut ws).await);
        log
    });
    let out = run(client(&[
        "join",
        "1",
        "g2",
        "--count",
        "3",
        "--timeout",
        "20",
        "--url",
        &server.url,
    ]))
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "early\nhello world\n{\"a\":1}\n");
    let stderr: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        stderr,
        [
            "joined 1 g2",
            &format!("client_id {CLIENT_ID}"),
            "warning: skipping a binary frame of 3 bytes"
        ]
    );
    assert_eq!(
        server.transcript().await,
        [
            add_group("1", 1),
            add_group("g2", 2),
            whoami(3),
            "close 1000".to_owned()
        ]
    );
}

#[tokio::test]
async fn join_error_reply_exits_one() {
    let server = FakeServer::start(|mut ws| async move {
        let mut log = vec![next_event(&mut ws).await, next_event(&mut ws).await];
        send_text(
            &mut ws,
            r#"{"cmd":"error","code":"too_many_groups","reason":"at most 0 groups","req_id":1}"#,
        )
        .await;
        log.push(next_event(&mut ws).await);
        log
    });
    let out = run(client(&["join", "7", "--url", &server.url])).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stderr, "error: too_many_groups: at most 0 groups\n");
    assert_eq!(out.stdout, "");
    assert_eq!(
        server.transcript().await,
        [add_group("7", 1), whoami(2), "close 1000".to_owned()]
    );
}

#[tokio::test]
async fn join_timeout_exits_two() {
    let server = FakeServer::start(|mut ws| async move {
        let mut log = vec![next_event(&mut ws).await, next_event(&mut ws).await];
        send_text(&mut ws, r#"{"cmd":"ack","req_id":1}"#).await;
        send_whoami(&mut ws, 2).await;
        send_text(&mut ws, "one").await;
        log.push(next_event(&mut ws).await);
        log
    });
    let out = run(client(&[
        "join",
        "5",
        "--count",
        "2",
        "--timeout",
        "2.5",
        "--url",
        &server.url,
    ]))
    .await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(out.stdout, "one\n");
    assert_eq!(
        out.stderr,
        format!(
            "joined 5\nclient_id {CLIENT_ID}\n\
             error: timed out after 2.5 s waiting for messages (got 1 of 2)\n"
        )
    );
    assert_eq!(
        server.transcript().await,
        [add_group("5", 1), whoami(2), "close 1000".to_owned()]
    );
}

#[tokio::test]
async fn join_timeout_without_count_bounds_the_join_only() {
    let server = FakeServer::start(|mut ws| async move {
        let mut log = vec![
            next_event(&mut ws).await,
            next_event(&mut ws).await,
            next_event(&mut ws).await,
        ];
        send_text(&mut ws, r#"{"cmd":"ack","req_id":2}"#).await;
        send_whoami(&mut ws, 3).await;
        log.push(next_event(&mut ws).await);
        log
    });
    let out = run(client(&[
        "join",
        "1",
        "2",
        "--timeout",
        "0.5",
        "--url",
        &server.url,
    ]))
    .await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(
        out.stderr,
        "error: timed out after 0.5 s waiting for join acks (got 1 of 2)\n"
    );
    assert_eq!(
        server.transcript().await,
        [
            add_group("1", 1),
            add_group("2", 2),
            whoami(3),
            "close 1000".to_owned()
        ]
    );
}

#[tokio::test]
async fn server_close_before_count_exits_one() {
    let server = FakeServer::start(|mut ws| async move {
        let log = vec![next_event(&mut ws).await, next_event(&mut ws).await];
        send_text(&mut ws, r#"{"cmd":"ack","req_id":1}"#).await;
        send_whoami(&mut ws, 2).await;
        ws.close(Some(CloseFrame {
            code: CloseCode::from(4001),
            reason: "slow consumer".into(),
        }))
        .await
        .expect("server close");
        while let Some(Ok(_)) = ws.next().await {}
        log
    });
    let out = run(client(&["join", "9", "--count", "1", "--url", &server.url])).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.stderr,
        format!(
            "joined 9\nclient_id {CLIENT_ID}\n\
             error: server closed the connection: 4001 slow consumer\n"
        )
    );
    assert_eq!(server.transcript().await, [add_group("9", 1), whoami(2)]);
}

#[cfg(unix)]
#[tokio::test]
async fn join_stops_cleanly_on_sigint_and_sigterm() {
    for signal in ["INT", "TERM"] {
        let server = FakeServer::start(|mut ws| async move {
            let mut log = vec![next_event(&mut ws).await, next_event(&mut ws).await];
            send_text(&mut ws, r#"{"cmd":"ack","req_id":1}"#).await;
            send_whoami(&mut ws, 2).await;
            send_text(&mut ws, "m1").await;
            log.push(next_event(&mut ws).await);
            log
        });
        let mut child = Process::spawn_command(
            "client-cli join",
            client(&["join", "3", "--url", &server.url]),
        )
        .expect("spawn client-cli");
        let first_line = |_: &str| true;
        let stderr = child.wait_for_stderr_line("a line", WAIT, first_line).await;
        assert_eq!(stderr.ok().as_deref(), Some("joined 3"));
        let stdout = child.wait_for_stdout_line("a line", WAIT, first_line).await;
        assert_eq!(stdout.ok().as_deref(), Some("m1"));
        child.signal(signal).await.expect("run kill");
        let status = child.wait(WAIT).await.expect("client-cli exits");
        assert_eq!(status.code(), Some(0), "{signal}");
        assert_eq!(
            server.transcript().await,
            [add_group("3", 1), whoami(2), "close 1000".to_owned()],
            "{signal}"
        );
    }
}

#[tokio::test]
async fn send_waits_for_its_ack_then_closes_cleanly() {
    let server = FakeServer::start(|mut ws| async move {
        let mut log = vec![next_event(&mut ws).await];
        // Frames that do not answer request 1 are ignored.
        send_text(&mut ws, "noise").await;
        send_text(
            &mut ws,
            r#"{"cmd":"error","code":"invalid_json","reason":"x","req_id":2}"#,
        )
        .await;
        send_text(&mut ws, r#"{"cmd":"ack","req_id":1}"#).await;
        log.push(next_event(&mut ws).await);
        log
    });
    let out = run(client(&[
        "send",
        "42",
        "--json",
        r#"{"b":[1, 2],"a":1.50}"#,
        "--url",
        &server.url,
    ]))
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""));
    assert_eq!(
        server.transcript().await,
        [
            r#"text {"cmd":"send_to_group","group_id":"42","message":{"b":[1, 2],"a":1.50},"req_id":1}"#,
            "close 1000"
        ]
    );
}

#[tokio::test]
async fn send_plain_message_is_a_json_string() {
    let server = FakeServer::start(|mut ws| async move {
        let mut log = vec![next_event(&mut ws).await];
        send_text(&mut ws, r#"{"cmd":"ack","req_id":1}"#).await;
        log.push(next_event(&mut ws).await);
        log
    });
    let out = run(client(&["send", "123", "msg \"q\"", "--url", &server.url])).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        server.transcript().await,
        [
            r#"text {"cmd":"send_to_group","group_id":"123","message":"msg \"q\"","req_id":1}"#,
            "close 1000"
        ]
    );
}

#[tokio::test]
async fn send_error_reply_exits_one() {
    let server = FakeServer::start(|mut ws| async move {
        let mut log = vec![next_event(&mut ws).await];
        send_text(
            &mut ws,
            r#"{"cmd":"error","code":"invalid_group_id","reason":"nope","req_id":1}"#,
        )
        .await;
        log.push(next_event(&mut ws).await);
        log
    });
    let out = run(client(&["send", "1", "m", "--url", &server.url])).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stderr, "error: invalid_group_id: nope\n");
    assert_eq!(server.transcript().await.len(), 2);
}

#[tokio::test]
async fn send_timeout_exits_two() {
    let server = FakeServer::start(|mut ws| async move {
        vec![next_event(&mut ws).await, next_event(&mut ws).await]
    });
    let out = run(client(&[
        "send",
        "1",
        "m",
        "--timeout",
        "0.5",
        "--url",
        &server.url,
    ]))
    .await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(
        out.stderr,
        "error: timed out after 0.5 s waiting for the server's ack (the server answered \
         nothing: a seed-protocol server, such as the original Workerman example, answers no \
         request)\n"
    );
    assert_eq!(server.transcript().await[1], "close 1000");
}

/// A server that never answers (the seed protocol's): with --acks auto, `send` gives up waiting
/// after --ack-timeout, says so once and exits 0; with --acks require it waits until --timeout
/// and exits 2; with --acks none it does not wait.
#[tokio::test]
async fn send_to_a_server_without_acks() {
    let silent = || {
        FakeServer::start(|mut ws| async move {
            vec![next_event(&mut ws).await, next_event(&mut ws).await]
        })
    };
    let server = silent();
    let out = run(client(&[
        "send",
        "1",
        "m",
        "--ack-timeout",
        "0.3",
        "--url",
        &server.url,
    ]))
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "");
    assert_eq!(
        out.stderr,
        "warning: no reply from the server within 0.3 s: it sends no acknowledgements (a \
         seed-protocol server, such as the original Workerman example?): the message was sent, \
         its delivery is unconfirmed (--acks none does not wait)\n"
    );
    let transcript = server.transcript().await;
    assert_eq!(request(&transcript[0])["cmd"], "send_to_group");
    assert_eq!(transcript[1], "close 1000");

    let server = silent();
    let args = [
        "send",
        "1",
        "m",
        "--acks",
        "require",
        "--ack-timeout",
        "0.1",
    ];
    let mut command = client(&args);
    command.args(["--timeout", "0.6", "--url", &server.url]);
    let out = run(command).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.stderr.starts_with("error: timed out after 0.6 s"),
        "{out:?}"
    );
    assert_eq!(server.transcript().await[1], "close 1000");

    let server = silent();
    let mut command = client(&["send", "1", "m", "--acks", "none", "--url", &server.url]);
    // The environment's setting is below the flag.
    command.env("CLIENT_CLI_ACKS", "require");
    let started = std::time::Instant::now();
    let out = run(command).await;
    assert_eq!((out.code, out.stderr.as_str()), (Some(0), ""), "{out:?}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "it did not wait"
    );
    assert_eq!(server.transcript().await[1], "close 1000");
}

/// --acks auto decides once: a server that acked a join is waited for as before, and a join
/// token goes first, as `auth`; an error reply that comes after the grace period still ends a
/// join that went on without acknowledgements.
#[tokio::test]
async fn join_token_goes_first_and_late_errors_still_count() {
    let (past_grace, wait_for_grace) = tokio::sync::oneshot::channel::<()>();
    let server = FakeServer::start(|mut ws| async move {
        let mut log = vec![
            next_event(&mut ws).await,
            next_event(&mut ws).await,
            next_event(&mut ws).await,
        ];
        // Once the client went on without acks (it said so on stderr): a message, then the
        // refusal.
        wait_for_grace.await.expect("the test goes on");
        send_text(&mut ws, "hello").await;
        send_text(
            &mut ws,
            r#"{"cmd":"error","code":"unauthorized","reason":"join token refused: bad","req_id":1}"#,
        )
        .await;
        log.push(next_event(&mut ws).await);
        log
    });
    let mut command = client(&["join", "7", "--ack-timeout", "0.2", "--url", &server.url]);
    command.env("CLIENT_CLI_JOIN_TOKEN", "a.b.c");
    let cli = Process::spawn_command("client-cli", command).expect("spawn");
    cli.wait_for_stderr_line("the unconfirmed join", WAIT, |line| {
        line == "joined 7 (unconfirmed)"
    })
    .await
    .expect("joined");
    past_grace.send(()).expect("the server waits");
    let out = cli.finish(WAIT).await.expect("finishes");
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stdout, "hello\n");
    let warnings = out
        .stderr
        .matches("warning: no reply from the server")
        .count();
    assert_eq!(warnings, 1, "{out:?}");
    assert!(
        out.stderr
            .ends_with("error: unauthorized: join token refused: bad\n"),
        "{out:?}"
    );
    let transcript = server.transcript().await;
    assert_eq!(
        request(&transcript[0]),
        serde_json::json!({"cmd":"auth","token":"a.b.c","req_id":1})
    );
    assert_eq!(transcript[1], add_group("7", 2));
    assert_eq!(transcript[2], whoami(3));
    assert_eq!(transcript[3], "close 1000");
}

/// A server that answers each request with the next of `replies`, then records how the client
/// ends the connection.
fn answering(replies: Vec<String>) -> FakeServer {
    FakeServer::start(move |mut ws| async move {
        let mut log = Vec::new();
        for reply in replies {
            log.push(next_event(&mut ws).await);
            send_text(&mut ws, &reply).await;
        }
        log.push(next_event(&mut ws).await);
        log
    })
}

/// A request frame of the transcript as JSON (whatever the order of its keys).
fn request(event: &str) -> serde_json::Value {
    let text = event
        .strip_prefix("text ")
        .unwrap_or_else(|| panic!("not a text frame: {event}"));
    serde_json::from_str(text).expect("a JSON request")
}

fn ack(req_id: u64) -> String {
    format!(r#"{{"cmd":"ack","req_id":{req_id}}}"#)
}

#[tokio::test]
async fn join_binds_a_uid_and_asks_for_presence() {
    let event = format!(r#"{{"cmd":"join","group_id":"g","client_id":"{CLIENT_ID}","uid":"bob"}}"#);
    let presence = event.clone();
    let server = FakeServer::start(|mut ws| async move {
        let mut log = vec![
            next_event(&mut ws).await,
            next_event(&mut ws).await,
            next_event(&mut ws).await,
        ];
        send_text(&mut ws, &ack(1)).await;
        send_text(&mut ws, &ack(2)).await;
        // A gateway without `whoami`: the join still succeeds, without a client id.
        send_text(
            &mut ws,
            r#"{"cmd":"error","code":"unknown_cmd","reason":"no whoami","req_id":3}"#,
        )
        .await;
        send_text(&mut ws, &presence).await;
        log.push(next_event(&mut ws).await);
        log
    });
    let out = run(client(&[
        "join",
        "g",
        "--presence",
        "--uid",
        "alice",
        "--count",
        "1",
        "--url",
        &server.url,
    ]))
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, format!("{event}\n"));
    assert_eq!(
        out.stderr,
        "warning: no client id: whoami refused: unknown_cmd: no whoami\njoined g\n"
    );
    let log = server.transcript().await;
    assert_eq!(
        request(&log[0]),
        serde_json::json!({"cmd":"bind_uid","uid":"alice","req_id":1})
    );
    assert_eq!(
        request(&log[1]),
        serde_json::json!({"cmd":"add_group","group_id":"g","presence":true,"req_id":2})
    );
    assert_eq!(log[2], whoami(3));
    assert_eq!(log[3], "close 1000");
}

#[tokio::test]
async fn sends_to_everyone_uids_and_one_client() {
    let other = "00000000000000ff-0-7";
    let cases: [(Vec<&str>, serde_json::Value); 4] = [
        (
            vec!["send", "g", "m", "--exclude", CLIENT_ID, "--exclude", other],
            serde_json::json!({"cmd":"send_to_group","group_id":"g","message":"m",
                "exclude":[CLIENT_ID, other],"req_id":1}),
        ),
        (
            vec!["send-all", "--json", r#"{"a":[1]}"#, "--exclude", CLIENT_ID],
            serde_json::json!({"cmd":"send_to_all","message":{"a":[1]},"exclude":[CLIENT_ID],
                "req_id":1}),
        ),
        (
            vec!["send-uid", "alice", "42", "hi"],
            serde_json::json!({"cmd":"send_to_uid","uid":["alice","42"],"message":"hi","req_id":1}),
        ),
        (
            vec!["send-client", CLIENT_ID, "hi"],
            serde_json::json!({"cmd":"send_to_client","client_id":CLIENT_ID,"message":"hi",
                "req_id":1}),
        ),
    ];
    for (args, expected) in cases {
        let server = answering(vec![ack(1)]);
        let url = server.url.clone();
        let mut args = args.clone();
        args.extend(["--url", &url]);
        let out = run(client(&args)).await;
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
        assert_eq!(
            (out.stdout.as_str(), out.stderr.as_str()),
            ("", ""),
            "{args:?}"
        );
        let log = server.transcript().await;
        assert_eq!(request(&log[0]), expected, "{args:?}");
        assert_eq!(log[1], "close 1000", "{args:?}");
    }
}

#[tokio::test]
async fn whoami_binds_then_prints_the_identity() {
    let reply = format!(
        r#"{{"cmd":"whoami","client_id":"{CLIENT_ID}","uid":"alice","groups":["a","b c"],"req_id":2}}"#
    );
    let server = answering(vec![ack(1), reply.clone()]);
    let out = run(client(&["whoami", "--bind", "alice", "--url", &server.url])).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stdout,
        format!("client_id {CLIENT_ID}\nuid alice\ngroup a\ngroup b c\n")
    );
    assert_eq!(out.stderr, "");
    let log = server.transcript().await;
    assert_eq!(
        request(&log[0]),
        serde_json::json!({"cmd":"bind_uid","uid":"alice","req_id":1})
    );
    assert_eq!(log[1], whoami(2));
    assert_eq!(log[2], "close 1000");

    let reply = reply.replace(r#""req_id":2"#, r#""req_id":1"#);
    let server = answering(vec![reply.clone()]);
    let out = run(client(&["whoami", "--json", "--url", &server.url])).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, format!("{reply}\n"));
    assert_eq!(
        server.transcript().await,
        [whoami(1), "close 1000".to_owned()]
    );
}

#[tokio::test]
async fn count_reports_partial_answers_on_stderr() {
    let reply = r#"{"cmd":"count","group_id":"g","connections":3,"uids":2,"uids_exact":true,"nodes":{"answered":["aa"],"missing":["bb","cc"]},"req_id":1}"#;
    let server = answering(vec![reply.to_owned()]);
    let out = run(client(&["count", "g", "--url", &server.url])).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "g: 3 connections, 2 uids\n");
    assert_eq!(out.stderr, "partial answer: no answer from bb, cc\n");
    let log = server.transcript().await;
    assert_eq!(
        request(&log[0]),
        serde_json::json!({"cmd":"count","group_id":"g","req_id":1})
    );

    let server = answering(vec![reply.to_owned()]);
    let out = run(client(&["count", "g", "--json", "--url", &server.url])).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!((out.stdout.trim_end(), out.stderr.as_str()), (reply, ""));

    let refused = r#"{"cmd":"error","code":"forbidden","reason":"not yours","req_id":1}"#;
    let server = answering(vec![refused.to_owned()]);
    let out = run(client(&["count", "g", "--url", &server.url])).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stderr, "error: forbidden: not yours\n");
}

#[tokio::test]
async fn members_follow_the_cursor_with_all() {
    let other = "00000000000000ff-0-7";
    let page1 = format!(
        r#"{{"cmd":"members","group_id":"g","members":[{{"client_id":"{other}","uid":"u"}}],"cursor":"{other}","nodes":{{"answered":["aa"],"missing":["bb"]}},"req_id":1}}"#
    );
    let page2 = format!(
        r#"{{"cmd":"members","group_id":"g","members":[{{"client_id":"{CLIENT_ID}","uid":null}}],"cursor":null,"nodes":{{"answered":["aa","bb"],"missing":[]}},"req_id":2}}"#
    );
    let server = answering(vec![page1.clone(), page2]);
    let args = [
        "members",
        "g",
        "--limit",
        "1",
        "--all",
        "--url",
        &server.url,
    ];
    let out = run(client(&args)).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, format!("{other} u\n{CLIENT_ID} -\n"));
    assert_eq!(out.stderr, "partial answer: no answer from bb\n");
    let log = server.transcript().await;
    assert_eq!(
        request(&log[0]),
        serde_json::json!({"cmd":"members","group_id":"g","limit":1,"req_id":1})
    );
    assert_eq!(
        request(&log[1]),
        serde_json::json!({"cmd":"members","group_id":"g","limit":1,"cursor":other,"req_id":2})
    );
    assert_eq!(log[2], "close 1000");

    // Without --all: the first page, and a hint that more follow.
    let server = answering(vec![page1]);
    let out = run(client(&["members", "g", "--url", &server.url])).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, format!("{other} u\n"));
    assert_eq!(
        out.stderr,
        "more members follow: --all lists them all\npartial answer: no answer from bb\n"
    );
    let log = server.transcript().await;
    assert_eq!(request(&log[0])["limit"], 100);
}

/// What a positioned member receives for message `offset` of `group`.
fn positioned(group: &str, offset: u64, epoch: &str, text: &str) -> String {
    serde_json::json!({"cmd":"message","group_id":group,"offset":offset,"epoch":epoch,"message":text})
        .to_string()
}

/// The positions a resume file holds, as JSON.
fn resume_file(file: &TempFile) -> serde_json::Value {
    let text = std::fs::read_to_string(file.path()).expect("read the resume file");
    serde_json::from_str(&text).expect("the resume file is JSON")
}

#[tokio::test]
async fn join_resumes_from_the_file_and_stores_the_last_position() {
    let state = TempFile::new(
        "resume.json",
        r#"{"groups":{"g":{"offset":2,"epoch":"e1"},"other":{"offset":5,"epoch":"o"}}}"#,
    )
    .expect("write the resume file");
    let server = FakeServer::start(|mut ws| async move {
        let mut log = vec![
            next_event(&mut ws).await,
            next_event(&mut ws).await,
            next_event(&mut ws).await,
        ];
        // The missed messages come before the reply.
        send_text(&mut ws, &positioned("g", 3, "e1", "three")).await;
        send_text(&mut ws, &positioned("g", 4, "e1", "four")).await;
        send_text(
            &mut ws,
            r#"{"cmd":"joined","group_id":"g","offset":4,"epoch":"e1","recovered":true,"req_id":1}"#,
        )
        .await;
        send_text(
            &mut ws,
            r#"{"cmd":"joined","group_id":"h","offset":0,"epoch":"e2","req_id":2}"#,
        )
        .await;
        send_whoami(&mut ws, 3).await;
        send_text(&mut ws, &positioned("g", 5, "e1", "five \"5\"")).await;
        // Not a group of this join: printed as it is.
        send_text(&mut ws, &positioned("x", 1, "e1", "x")).await;
        log.push(next_event(&mut ws).await);
        log
    });
    let out = run(client(&[
        "join",
        "g",
        "h",
        "--resume-file",
        state.arg().expect("path"),
        "--count",
        "4",
        "--timeout",
        "20",
        "--url",
        &server.url,
    ]))
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        out.stdout,
        format!(
            "three\nfour\nfive \"5\"\n{}\n",
            positioned("x", 1, "e1", "x")
        )
    );
    assert_eq!(out.stderr, format!("joined g h\nclient_id {CLIENT_ID}\n"));
    let log = server.transcript().await;
    assert_eq!(
        request(&log[0]),
        serde_json::json!({"cmd":"add_group","group_id":"g","positioned":true,"recover":{"offset":2,"epoch":"e1"},"req_id":1})
    );
    assert_eq!(
        request(&log[1]),
        serde_json::json!({"cmd":"add_group","group_id":"h","positioned":true,"req_id":2})
    );
    assert_eq!(log[2..], [whoami(3), "close 1000".to_owned()]);
    assert_eq!(
        resume_file(&state),
        serde_json::json!({"groups":{
            "g":{"offset":5,"epoch":"e1"},
            "h":{"offset":0,"epoch":"e2"},
            "other":{"offset":5,"epoch":"o"}
        }})
    );
}

#[tokio::test]
async fn join_reports_an_incomplete_recovery_and_history_errors() {
    let state = TempFile::new(
        "resume.json",
        r#"{"groups":{"a":{"offset":7,"epoch":"old"},"b":{"offset":3,"epoch":"e"}}}"#,
    )
    .expect("write the resume file");
    let server = FakeServer::start(|mut ws| async move {
        let mut log = vec![
            next_event(&mut ws).await,
            next_event(&mut ws).await,
            next_event(&mut ws).await,
        ];
        send_text(
            &mut ws,
            r#"{"cmd":"joined","group_id":"a","offset":2,"epoch":"new","recovered":false,"req_id":1}"#,
        )
        .await;
        send_text(
            &mut ws,
            r#"{"cmd":"joined","group_id":"b","error":"store unreachable","req_id":2}"#,
        )
        .await;
        send_whoami(&mut ws, 3).await;
        send_text(&mut ws, &positioned("a", 3, "new", "m")).await;
        log.push(next_event(&mut ws).await);
        log
    });
    let out = run(client(&[
        "join",
        "a",
        "b",
        "--resume-file",
        state.arg().expect("path"),
        "--count",
        "1",
        "--url",
        &server.url,
    ]))
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "m\n");
    let stderr: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        stderr,
        [
            "warning: group a: recovery incomplete (history no longer reaches back / epoch \
             changed; asked from offset 7 of epoch old; the group is at offset 2 of epoch new): \
             reload your state",
            "warning: group b: the history could not be read: store unreachable",
            "warning: group b: recovery incomplete (the history could not be read; asked from \
             offset 3 of epoch e): reload your state",
            "joined a b",
            &format!("client_id {CLIENT_ID}"),
        ]
    );
    server.transcript().await;
    // b keeps its position: the next run asks again.
    assert_eq!(
        resume_file(&state),
        serde_json::json!({"groups":{"a":{"offset":3,"epoch":"new"},"b":{"offset":3,"epoch":"e"}}})
    );
}

#[tokio::test]
async fn positioned_join_without_a_file_waits_for_joined_and_prints_texts() {
    let server = FakeServer::start(|mut ws| async move {
        let mut log = vec![next_event(&mut ws).await, next_event(&mut ws).await];
        // A live message before the reply is printed after the readiness line.
        send_text(&mut ws, &positioned("g", 41, "e", "early")).await;
        send_text(
            &mut ws,
            r#"{"cmd":"joined","group_id":"g","offset":40,"epoch":"e","req_id":1}"#,
        )
        .await;
        send_whoami(&mut ws, 2).await;
        send_text(&mut ws, "raw").await;
        log.push(next_event(&mut ws).await);
        log
    });
    let out = run(client(&[
        "join",
        "g",
        "--positioned",
        "--count",
        "2",
        "--url",
        &server.url,
    ]))
    .await;
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "early\nraw\n");
    assert_eq!(out.stderr, format!("joined g\nclient_id {CLIENT_ID}\n"));
    let log = server.transcript().await;
    assert_eq!(
        request(&log[0]),
        serde_json::json!({"cmd":"add_group","group_id":"g","positioned":true,"req_id":1})
    );
}

#[tokio::test]
async fn a_malformed_resume_file_is_an_error() {
    let state = TempFile::new("resume.json", r#"{"groups":{"g":{"offset":"x"}}}"#)
        .expect("write the resume file");
    let path = state.arg().expect("path");
    let url = unreachable_url().await;
    let out = run(client(&["join", "g", "--resume-file", path, "--url", &url])).await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.stderr,
        format!(
            "error: --resume-file {path}: malformed: expected \
             {{\"groups\":{{\"GROUP\":{{\"offset\":N,\"epoch\":\"E\"}}}}}}: group \"g\" has no \
             valid \"offset\" and \"epoch\"\n"
        )
    );
    assert_eq!(
        std::fs::read_to_string(state.path()).expect("read"),
        r#"{"groups":{"g":{"offset":"x"}}}"#,
        "left as it was"
    );
}

/// Sends positioned messages `offsets` of group `g`, epoch `e`, text `mN`.
async fn send_positioned(ws: &mut ServerWs, offsets: std::ops::RangeInclusive<u64>) {
    for offset in offsets {
        let text = positioned("g", offset, "e", &format!("m{offset}"));
        send_text(ws, &text).await;
    }
}

#[cfg(unix)]
#[tokio::test]
async fn join_writes_positions_while_idle_and_the_last_one_on_sigint() {
    let state = TempFile::new("resume.json", r#"{"groups":{}}"#).expect("write the resume file");
    let (more, more_wanted) = tokio::sync::oneshot::channel::<()>();
    let server = FakeServer::start(|mut ws| async move {
        let mut log = vec![next_event(&mut ws).await, next_event(&mut ws).await];
        send_text(
            &mut ws,
            r#"{"cmd":"joined","group_id":"g","offset":0,"epoch":"e","req_id":1}"#,
        )
        .await;
        send_whoami(&mut ws, 2).await;
        send_positioned(&mut ws, 1..=50).await;
        more_wanted.await.expect("the test asks for more");
        send_positioned(&mut ws, 51..=60).await;
        log.push(next_event(&mut ws).await);
        log
    });
    let mut child = Process::spawn_command(
        "client-cli join",
        client(&[
            "join",
            "g",
            "--resume-file",
            state.arg().expect("path"),
            "--url",
            &server.url,
        ]),
    )
    .expect("spawn client-cli");
    let printed = |last: &'static str| move |line: &str| line == last;
    let last = child
        .wait_for_stdout_line("m50", WAIT, printed("m50"))
        .await;
    assert_eq!(last.ok().as_deref(), Some("m50"));
    // Nothing more arrives: the position is written within the interval all the same.
    let stored = |state: &TempFile| resume_file(state)["groups"]["g"]["offset"].as_u64();
    let idle_write = timeout(WAIT, async {
        while stored(&state) != Some(50) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    idle_write.await.expect("offset 50 written while idle");
    more.send(()).expect("server waiting");
    let last = child
        .wait_for_stdout_line("m60", WAIT, printed("m60"))
        .await;
    assert_eq!(last.ok().as_deref(), Some("m60"));
    child.signal("INT").await.expect("run kill");
    let status = child.wait(WAIT).await.expect("client-cli exits");
    assert_eq!(status.code(), Some(0));
    assert_eq!(
        server.transcript().await,
        [
            add_group_positioned("g", 1),
            whoami(2),
            "close 1000".to_owned()
        ]
    );
    assert_eq!(
        resume_file(&state),
        serde_json::json!({"groups":{"g":{"offset":60,"epoch":"e"}}})
    );
}

fn add_group_positioned(group: &str, req_id: u64) -> String {
    format!(
        r#"text {{"cmd":"add_group","group_id":"{group}","positioned":true,"req_id":{req_id}}}"#
    )
}
