//! Runs the built client-cli binary: against unreachable URLs, and against a scripted fake
//! gateway (one WebSocket connection per test) to check output, exit codes and clean closes.

use std::future::Future;
use std::io::{BufRead as _, BufReader, Read};
use std::net::TcpListener;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt as _, StreamExt as _};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

const BIN: &str = env!("CARGO_BIN_EXE_client-cli");
/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

/// Kills the child if a test fails before it exited.
struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn client(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("PUSH_URL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

#[derive(Debug)]
struct Finished {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

fn read_all(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        pipe.read_to_string(&mut text).expect("read child output");
        text
    })
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "client-cli did not exit within {WAIT:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn run(mut cmd: Command) -> Finished {
    let mut child = ChildGuard(cmd.spawn().expect("spawn client-cli"));
    let stdout = read_all(child.0.stdout.take().expect("stdout piped"));
    let stderr = read_all(child.0.stderr.take().expect("stderr piped"));
    let status = wait_exit(&mut child.0);
    Finished {
        code: status.code(),
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

fn unreachable_url() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("local addr").port();
    drop(listener);
    format!("ws://127.0.0.1:{port}")
}

type ServerWs = WebSocketStream<tokio::net::TcpStream>;

/// A one-connection WebSocket server running `script` on its own thread; the script returns a
/// transcript of what it received.
struct FakeServer {
    url: String,
    done: mpsc::Receiver<Vec<String>>,
}

impl FakeServer {
    fn start<F, Fut>(script: F) -> FakeServer
    where
        F: FnOnce(ServerWs) -> Fut + Send + 'static,
        Fut: Future<Output = Vec<String>>,
    {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let url = format!("ws://{}", listener.local_addr().expect("local addr"));
        let (tx, done) = mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let transcript = runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let accept = async {
                    let (tcp, _) = listener.accept().await.expect("accept");
                    tokio_tungstenite::accept_async(tcp)
                        .await
                        .expect("handshake")
                };
                let ws = tokio::time::timeout(WAIT, accept)
                    .await
                    .expect("client-cli connects");
                tokio::time::timeout(WAIT, script(ws))
                    .await
                    .expect("server script finishes")
            });
            let _ = tx.send(transcript);
        });
        FakeServer { url, done }
    }

    fn transcript(self) -> Vec<String> {
        self.done
            .recv_timeout(WAIT)
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

#[test]
fn help_exits_zero_and_lists_exit_codes() {
    for args in [&["--help"][..], &["join", "--help"], &["send", "--help"]] {
        let out = run(client(args));
        assert_eq!(out.code, Some(0), "{args:?}: {out:?}");
        assert!(out.stdout.contains("Exit codes:"), "{args:?}: {out:?}");
    }
}

#[test]
fn usage_errors_exit_one() {
    for args in [
        &["join"][..],
        &["join", ""],
        &["join", "1", "--timeout", "soon"],
        &["send", "1"],
        &["frobnicate"],
    ] {
        let out = run(client(args));
        assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
        assert!(out.stderr.starts_with("error: "), "{args:?}: {out:?}");
    }
}

#[test]
fn unreachable_server_is_an_error_not_a_panic() {
    let url = unreachable_url();
    let expected = format!("error: cannot connect to {url}: ");
    let by_flag = [
        vec!["--url", &url, "send", "1", "hi"],
        vec!["join", "1", "--url", &url, "--timeout", "20"],
        vec!["send", "1", "hi", "--url", &url],
    ];
    for args in by_flag {
        let out = run(client(&args));
        assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
        assert!(out.stderr.starts_with(&expected), "{args:?}: {out:?}");
        assert!(!out.stderr.contains("panicked"), "{args:?}: {out:?}");
        assert_eq!(out.stdout, "");
    }
    let mut by_env = client(&["join", "1"]);
    by_env.env("PUSH_URL", &url);
    let out = run(by_env);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stderr.starts_with(&expected), "{out:?}");
}

#[test]
fn join_prints_messages_until_count_then_closes_cleanly() {
    let server = FakeServer::start(|mut ws| async move {
        let mut log = vec![next_event(&mut ws).await, next_event(&mut ws).await];
        send_text(&mut ws, r#"{"cmd":"ack","req_id":1}"#).await;
        // A group message between two acks is printed after the readiness line.
        send_text(&mut ws, "early").await;
        send_text(&mut ws, r#"{"cmd":"ack","req_id":2}"#).await;
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
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(out.stdout, "early\nhello world\n{\"a\":1}\n");
    let stderr: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(
        stderr,
        ["joined 1 g2", "warning: skipping a binary frame of 3 bytes"]
    );
    assert_eq!(
        server.transcript(),
        [
            add_group("1", 1),
            add_group("g2", 2),
            "close 1000".to_owned()
        ]
    );
}

#[test]
fn join_error_reply_exits_one() {
    let server = FakeServer::start(|mut ws| async move {
        let mut log = vec![next_event(&mut ws).await];
        send_text(
            &mut ws,
            r#"{"cmd":"error","code":"too_many_groups","reason":"at most 0 groups","req_id":1}"#,
        )
        .await;
        log.push(next_event(&mut ws).await);
        log
    });
    let out = run(client(&["join", "7", "--url", &server.url]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stderr, "error: too_many_groups: at most 0 groups\n");
    assert_eq!(out.stdout, "");
    assert_eq!(
        server.transcript(),
        [add_group("7", 1), "close 1000".to_owned()]
    );
}

#[test]
fn join_timeout_exits_two() {
    let server = FakeServer::start(|mut ws| async move {
        let mut log = vec![next_event(&mut ws).await];
        send_text(&mut ws, r#"{"cmd":"ack","req_id":1}"#).await;
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
    ]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(out.stdout, "one\n");
    assert_eq!(
        out.stderr,
        "joined 5\nerror: timed out after 2.5 s waiting for messages (got 1 of 2)\n"
    );
    assert_eq!(
        server.transcript(),
        [add_group("5", 1), "close 1000".to_owned()]
    );
}

#[test]
fn join_timeout_without_count_bounds_the_join_only() {
    let server = FakeServer::start(|mut ws| async move {
        let mut log = vec![next_event(&mut ws).await, next_event(&mut ws).await];
        send_text(&mut ws, r#"{"cmd":"ack","req_id":2}"#).await;
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
    ]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(
        out.stderr,
        "error: timed out after 0.5 s waiting for join acks (got 1 of 2)\n"
    );
    assert_eq!(
        server.transcript(),
        [
            add_group("1", 1),
            add_group("2", 2),
            "close 1000".to_owned()
        ]
    );
}

#[test]
fn server_close_before_count_exits_one() {
    let server = FakeServer::start(|mut ws| async move {
        let log = vec![next_event(&mut ws).await];
        send_text(&mut ws, r#"{"cmd":"ack","req_id":1}"#).await;
        ws.close(Some(CloseFrame {
            code: CloseCode::from(4001),
            reason: "slow consumer".into(),
        }))
        .await
        .expect("server close");
        while let Some(Ok(_)) = ws.next().await {}
        log
    });
    let out = run(client(&["join", "9", "--count", "1", "--url", &server.url]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.stderr,
        "joined 9\nerror: server closed the connection: 4001 slow consumer\n"
    );
    assert_eq!(server.transcript(), [add_group("9", 1)]);
}

#[cfg(unix)]
#[test]
fn join_stops_cleanly_on_sigint_and_sigterm() {
    for signal in ["-INT", "-TERM"] {
        let server = FakeServer::start(|mut ws| async move {
            let mut log = vec![next_event(&mut ws).await];
            send_text(&mut ws, r#"{"cmd":"ack","req_id":1}"#).await;
            send_text(&mut ws, "m1").await;
            log.push(next_event(&mut ws).await);
            log
        });
        let mut child = ChildGuard(
            client(&["join", "3", "--url", &server.url])
                .spawn()
                .expect("spawn client-cli"),
        );
        let lines = |pipe: Box<dyn Read + Send>| {
            let (tx, rx) = mpsc::channel();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
            rx
        };
        let stdout = lines(Box::new(child.0.stdout.take().expect("stdout piped")));
        let stderr = lines(Box::new(child.0.stderr.take().expect("stderr piped")));
        assert_eq!(stderr.recv_timeout(WAIT).as_deref(), Ok("joined 3"));
        assert_eq!(stdout.recv_timeout(WAIT).as_deref(), Ok("m1"));
        let killed = Command::new("kill")
            .args([signal, &child.0.id().to_string()])
            .status()
            .expect("run kill");
        assert!(killed.success());
        let status = wait_exit(&mut child.0);
        assert_eq!(status.code(), Some(0), "{signal}");
        assert_eq!(
            server.transcript(),
            [add_group("3", 1), "close 1000".to_owned()],
            "{signal}"
        );
    }
}

#[test]
fn send_waits_for_its_ack_then_closes_cleanly() {
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
    ]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""));
    assert_eq!(
        server.transcript(),
        [
            r#"text {"cmd":"send_to_group","group_id":"42","message":{"b":[1, 2],"a":1.50},"req_id":1}"#,
            "close 1000"
        ]
    );
}

#[test]
fn send_plain_message_is_a_json_string() {
    let server = FakeServer::start(|mut ws| async move {
        let mut log = vec![next_event(&mut ws).await];
        send_text(&mut ws, r#"{"cmd":"ack","req_id":1}"#).await;
        log.push(next_event(&mut ws).await);
        log
    });
    let out = run(client(&["send", "123", "msg \"q\"", "--url", &server.url]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert_eq!(
        server.transcript(),
        [
            r#"text {"cmd":"send_to_group","group_id":"123","message":"msg \"q\"","req_id":1}"#,
            "close 1000"
        ]
    );
}

#[test]
fn send_error_reply_exits_one() {
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
    let out = run(client(&["send", "1", "m", "--url", &server.url]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(out.stderr, "error: invalid_group_id: nope\n");
    assert_eq!(server.transcript().len(), 2);
}

#[test]
fn send_timeout_exits_two() {
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
    ]));
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(
        out.stderr,
        "error: timed out after 0.5 s waiting for the server's ack\n"
    );
    assert_eq!(server.transcript()[1], "close 1000");
}
