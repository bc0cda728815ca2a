//! `client-cli publish` against a scripted fake admin server (one HTTP exchange per test): the
//! request it sends, and its output and exit code for each kind of answer. The real gateway is
//! exercised by the e2e tests.

use std::io::{BufRead as _, BufReader, Read, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_client-cli");
/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

struct ChildGuard(Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[derive(Debug)]
struct Finished {
    code: Option<i32>,
    stderr: String,
}

fn client(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .env_remove("PUSH_ADMIN_URL")
        .env_remove("PUSH_API_TOKEN")
        // reqwest honours the proxy variables; the fake server is local.
        .env_remove("HTTP_PROXY")
        .env_remove("http_proxy")
        .env_remove("ALL_PROXY")
        .env_remove("all_proxy")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
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

/// Runs the command to completion, writing `stdin` to it first when given.
fn run(mut cmd: Command, stdin: Option<&str>) -> Finished {
    if stdin.is_some() {
        cmd.stdin(Stdio::piped());
    }
    let mut child = ChildGuard(cmd.spawn().expect("spawn client-cli"));
    if let Some(text) = stdin {
        let mut pipe = child.0.stdin.take().expect("stdin piped");
        pipe.write_all(text.as_bytes()).expect("write stdin");
    }
    let mut stderr = child.0.stderr.take().expect("stderr piped");
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let status = wait_exit(&mut child.0);
    Finished {
        code: status.code(),
        stderr: reader.join().expect("stderr reader"),
    }
}

/// What the fake server received.
#[derive(Debug)]
struct Received {
    request_line: String,
    /// Header names lowercased.
    headers: Vec<(String, String)>,
    body: String,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// A one-request HTTP server on its own thread. With `answer`, it replies with that status and
/// body; without, it never replies (and holds the connection until the client gives up).
struct FakeAdmin {
    url: String,
    received: mpsc::Receiver<Received>,
}

impl FakeAdmin {
    fn start(answer: Option<(u16, &'static str)>) -> FakeAdmin {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let (tx, received) = mpsc::channel();
        std::thread::spawn(move || {
            let Ok((stream, _)) = listener.accept() else {
                return;
            };
            stream.set_read_timeout(Some(WAIT)).expect("read timeout");
            let mut reader = BufReader::new(stream.try_clone().expect("clone stream"));
            let request = read_request(&mut reader);
            let _ = tx.send(request);
            match answer {
                Some((status, body)) => respond(stream, status, body),
                // Hold the connection open until the client closes it.
                None => {
                    let _ = reader.read_to_end(&mut Vec::new());
                }
            }
        });
        FakeAdmin { url, received }
    }

    fn request(&self) -> Received {
        self.received
            .recv_timeout(WAIT)
            .expect("the fake admin server received a request")
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Received {
    let mut line = String::new();
    reader.read_line(&mut line).expect("request line");
    let request_line = line.trim_end().to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header.split_once(':').expect("a header has a colon");
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(n, _)| n == "content-length")
        .map(|(_, v)| v.parse().expect("content-length is a number"))
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body).expect("body");
    Received {
        request_line,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

fn respond(mut stream: TcpStream, status: u16, body: &str) {
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes());
}

#[test]
fn publishes_one_message_with_the_token() {
    let admin = FakeAdmin::start(Some((200, r#"{"published":1}"#)));
    let url = format!("{}/", admin.url);
    let finished = run(
        client(&[
            "publish",
            "123",
            "hi \"there\"",
            "--admin-url",
            &url,
            "--token",
            "t0k",
        ]),
        None,
    );
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(finished.stderr, "published 1\n");
    let request = admin.request();
    assert_eq!(request.request_line, "POST /api/publish HTTP/1.1");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("authorization"), Some("Bearer t0k"));
    assert_eq!(
        request.body,
        r#"{"group_id":"123","message":"hi \"there\""}"#
    );
}

#[test]
fn json_message_and_token_from_the_environment() {
    let admin = FakeAdmin::start(Some((200, r#"{"published":1}"#)));
    let mut cmd = client(&["publish", "g", "--json", r#"{"a": [1, 2.50]}"#]);
    cmd.env("PUSH_ADMIN_URL", &admin.url)
        .env("PUSH_API_TOKEN", "from-env");
    let finished = run(cmd, None);
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let request = admin.request();
    assert_eq!(request.header("authorization"), Some("Bearer from-env"));
    assert_eq!(
        request.body,
        r#"{"group_id":"g","message":{"a": [1, 2.50]}}"#
    );
}

#[test]
fn batch_from_stdin_is_sent_as_is() {
    let admin = FakeAdmin::start(Some((200, r#"{"published":2}"#)));
    let batch = "[{\"group_id\":1,\"message\":\"a\"},\n {\"group_id\":\"b\",\"message\":null}]\n";
    let finished = run(
        client(&["publish", "--batch", "-", "--admin-url", &admin.url]),
        Some(batch),
    );
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(finished.stderr, "published 2\n");
    let request = admin.request();
    assert_eq!(request.header("authorization"), None);
    assert_eq!(request.body, batch);
}

#[test]
fn an_error_answer_exits_1_with_its_code() {
    let admin = FakeAdmin::start(Some((
        400,
        r#"{"error":{"code":"invalid_group_id","reason":"group_id must not be empty","index":1}}"#,
    )));
    let finished = run(
        client(&["publish", "--batch", "-", "--admin-url", &admin.url]),
        Some(r#"[{"group_id":"a","message":"m"},{"group_id":"","message":"m"}]"#),
    );
    assert_eq!(finished.code, Some(1), "{finished:?}");
    assert_eq!(
        finished.stderr,
        "error: invalid_group_id: group_id must not be empty (batch item 1)\n"
    );

    let admin = FakeAdmin::start(Some((
        401,
        r#"{"error":{"code":"unauthorized","reason":"wrong token"}}"#,
    )));
    let finished = run(
        client(&["publish", "1", "m", "--admin-url", &admin.url]),
        None,
    );
    assert_eq!(finished.code, Some(1), "{finished:?}");
    assert_eq!(finished.stderr, "error: unauthorized: wrong token\n");
}

#[test]
fn a_bad_batch_is_refused_before_sending() {
    let dir = std::env::temp_dir().join(format!("client-cli-publish-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let file = dir.join("not-an-array.json");
    std::fs::write(&file, r#"{"group_id":1,"message":"m"}"#).expect("write batch");
    let path = file.to_str().expect("UTF-8 path");
    // Nothing listens there: a request would fail differently.
    let finished = run(
        client(&[
            "publish",
            "--batch",
            path,
            "--admin-url",
            "http://127.0.0.1:9",
        ]),
        None,
    );
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(finished.code, Some(1), "{finished:?}");
    assert!(
        finished.stderr.contains("expected a JSON array"),
        "{finished:?}"
    );

    let missing = run(
        client(&["publish", "--batch", "/nonexistent/batch.json"]),
        None,
    );
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert!(missing.stderr.contains("cannot read"), "{missing:?}");
}

#[test]
fn unreachable_admin_exits_1() {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("local addr"));
    drop(listener);
    let finished = run(client(&["publish", "1", "m", "--admin-url", &url]), None);
    assert_eq!(finished.code, Some(1), "{finished:?}");
    assert!(finished.stderr.contains("cannot POST"), "{finished:?}");
}

#[test]
fn no_answer_times_out_with_exit_2() {
    let admin = FakeAdmin::start(None);
    let finished = run(
        client(&[
            "publish",
            "1",
            "m",
            "--admin-url",
            &admin.url,
            "--timeout",
            "0.3",
        ]),
        None,
    );
    assert_eq!(finished.code, Some(2), "{finished:?}");
    assert!(
        finished.stderr.contains("timed out after 0.3 s"),
        "{finished:?}"
    );
    assert_eq!(admin.request().body, r#"{"group_id":"1","message":"m"}"#);
}
