//! `client-cli publish` against a scripted fake admin server (one HTTP exchange per test): the
//! request it sends, and its output and exit code for each kind of answer. The real gateway is
//! exercised by the e2e tests.

use std::time::Duration;

use test_support::net;
use test_support::process::{command, Finished, Process};
use test_support::TempFile;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::Command;
use tokio::sync::oneshot;
use tokio::time::timeout;

/// Bound on every wait in these tests.
const WAIT: Duration = Duration::from_secs(30);

/// The binary with `args`, in an environment without the test's own settings (`PUSH_ADMIN_URL`,
/// `PUSH_API_TOKEN`, and the proxy variables reqwest honours: the fake server is local).
fn client(args: &[&str]) -> Command {
    let mut command = command(env!("CARGO_BIN_EXE_client-cli"));
    command.args(args);
    command
}

/// Runs the command to completion, writing `stdin` to it first when given.
async fn run(command: Command, stdin: Option<&str>) -> Finished {
    let process = match stdin {
        Some(text) => Process::spawn_with_input("client-cli", command, text),
        None => Process::spawn_command("client-cli", command),
    };
    process
        .expect("spawn client-cli")
        .finish(WAIT)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"))
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

/// A one-request HTTP server in the test's runtime. With `answer`, it replies with that status
/// and body; without, it never replies (and holds the connection until the client gives up).
struct FakeAdmin {
    url: String,
    received: oneshot::Receiver<Received>,
}

impl FakeAdmin {
    async fn start(answer: Option<(u16, &'static str)>) -> FakeAdmin {
        let listener = net::listener().await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let (tx, received) = oneshot::channel();
        tokio::spawn(async move {
            let Ok(Ok((stream, _))) = timeout(WAIT, listener.accept()).await else {
                return;
            };
            let mut reader = BufReader::new(stream);
            let request = timeout(WAIT, read_request(&mut reader))
                .await
                .expect("the request in time");
            let _ = tx.send(request);
            match answer {
                Some((status, body)) => respond(reader.into_inner(), status, body).await,
                // Hold the connection open until the client closes it.
                None => {
                    let _ = timeout(WAIT, reader.read_to_end(&mut Vec::new())).await;
                }
            }
        });
        FakeAdmin { url, received }
    }

    async fn request(self) -> Received {
        timeout(WAIT, self.received)
            .await
            .expect("a request in time")
            .expect("the fake admin server received a request")
    }
}

async fn read_request(reader: &mut BufReader<TcpStream>) -> Received {
    let mut line = String::new();
    reader.read_line(&mut line).await.expect("request line");
    let request_line = line.trim_end().to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).await.expect("header line");
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
    reader.read_exact(&mut body).await.expect("body");
    Received {
        request_line,
        headers,
        body: String::from_utf8(body).expect("UTF-8 body"),
    }
}

async fn respond(mut stream: TcpStream, status: u16, body: &str) {
    let response = format!(
        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
         connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
}

#[tokio::test]
async fn publishes_one_message_with_the_token() {
    let admin = FakeAdmin::start(Some((200, r#"{"published":1}"#))).await;
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
    )
    .await;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(finished.stderr, "published 1\n");
    let request = admin.request().await;
    assert_eq!(request.request_line, "POST /api/publish HTTP/1.1");
    assert_eq!(request.header("content-type"), Some("application/json"));
    assert_eq!(request.header("authorization"), Some("Bearer t0k"));
    assert_eq!(
        request.body,
        r#"{"group_id":"123","message":"hi \"there\""}"#
    );
}

#[tokio::test]
async fn json_message_and_token_from_the_environment() {
    let admin = FakeAdmin::start(Some((200, r#"{"published":1}"#))).await;
    let mut cmd = client(&["publish", "g", "--json", r#"{"a": [1, 2.50]}"#]);
    cmd.env("PUSH_ADMIN_URL", &admin.url)
        .env("PUSH_API_TOKEN", "from-env");
    let finished = run(cmd, None).await;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let request = admin.request().await;
    assert_eq!(request.header("authorization"), Some("Bearer from-env"));
    assert_eq!(
        request.body,
        r#"{"group_id":"g","message":{"a": [1, 2.50]}}"#
    );
}

#[tokio::test]
async fn batch_from_stdin_is_sent_as_is() {
    let admin = FakeAdmin::start(Some((200, r#"{"published":2}"#))).await;
    let batch = "[{\"group_id\":1,\"message\":\"a\"},\n {\"group_id\":\"b\",\"message\":null}]\n";
    let finished = run(
        client(&["publish", "--batch", "-", "--admin-url", &admin.url]),
        Some(batch),
    )
    .await;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(finished.stderr, "published 2\n");
    let request = admin.request().await;
    assert_eq!(request.header("authorization"), None);
    assert_eq!(request.body, batch);
}

#[tokio::test]
async fn an_error_answer_exits_1_with_its_code() {
    let admin = FakeAdmin::start(Some((
        400,
        r#"{"error":{"code":"invalid_group_id","reason":"group_id must not be empty","index":1}}"#,
    )))
    .await;
    let finished = run(
        client(&["publish", "--batch", "-", "--admin-url", &admin.url]),
        Some(r#"[{"group_id":"a","message":"m"},{"group_id":"","message":"m"}]"#),
    )
    .await;
    assert_eq!(finished.code, Some(1), "{finished:?}");
    assert_eq!(
        finished.stderr,
        "error: invalid_group_id: group_id must not be empty (batch item 1)\n"
    );

    let admin = FakeAdmin::start(Some((
        401,
        r#"{"error":{"code":"unauthorized","reason":"wrong token"}}"#,
    )))
    .await;
    let finished = run(
        client(&["publish", "1", "m", "--admin-url", &admin.url]),
        None,
    )
    .await;
    assert_eq!(finished.code, Some(1), "{finished:?}");
    assert_eq!(finished.stderr, "error: unauthorized: wrong token\n");
}

#[tokio::test]
async fn a_bad_batch_is_refused_before_sending() {
    let file =
        TempFile::new("not-an-array.json", r#"{"group_id":1,"message":"m"}"#).expect("write batch");
    let path = file.arg().expect("UTF-8 path");
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
    )
    .await;
    assert_eq!(finished.code, Some(1), "{finished:?}");
    assert!(
        finished.stderr.contains("expected a JSON array"),
        "{finished:?}"
    );

    let missing = run(
        client(&["publish", "--batch", "/nonexistent/batch.json"]),
        None,
    )
    .await;
    assert_eq!(missing.code, Some(1), "{missing:?}");
    assert!(missing.stderr.contains("cannot read"), "{missing:?}");
}

#[tokio::test]
async fn unreachable_admin_exits_1() {
    let addr = net::refused_addr().await.expect("a free port");
    let url = format!("http://{addr}");
    let finished = run(client(&["publish", "1", "m", "--admin-url", &url]), None).await;
    assert_eq!(finished.code, Some(1), "{finished:?}");
    assert!(finished.stderr.contains("cannot POST"), "{finished:?}");
}

#[tokio::test]
async fn no_answer_times_out_with_exit_2() {
    let admin = FakeAdmin::start(None).await;
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
    )
    .await;
    assert_eq!(finished.code, Some(2), "{finished:?}");
    assert!(
        finished.stderr.contains("timed out after 0.3 s"),
        "{finished:?}"
    );
    assert_eq!(
        admin.request().await.body,
        r#"{"group_id":"1","message":"m"}"#
    );
}

/// An admin server that answers its requests with `answers` in order, one connection each
/// (every answer says `connection: close`).
struct Answering {
    url: String,
    received: tokio::sync::mpsc::UnboundedReceiver<Received>,
}

impl Answering {
    async fn start(answers: Vec<(u16, String)>) -> Answering {
        let listener = net::listener().await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("local addr"));
        let (tx, received) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            for (status, body) in answers {
                let Ok(Ok((stream, _))) = timeout(WAIT, listener.accept()).await else {
                    return;
                };
                let mut reader = BufReader::new(stream);
                let request = timeout(WAIT, read_request(&mut reader))
                    .await
                    .expect("the request in time");
                let _ = tx.send(request);
                respond(reader.into_inner(), status, &body).await;
            }
        });
        Answering { url, received }
    }

    /// The requests received (the server has stopped by the time the client exited).
    async fn requests(mut self) -> Vec<Received> {
        let mut all = Vec::new();
        while let Ok(Some(request)) =
            timeout(Duration::from_millis(200), self.received.recv()).await
        {
            all.push(request);
        }
        all
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).expect("JSON")
}

const C1: &str = "5f0c1d2e3a4b6c7d-1-42";

#[tokio::test]
async fn publish_excludes_connections() {
    let admin = Answering::start(vec![(200, r#"{"published":1}"#.to_owned())]).await;
    let finished = run(
        client(&[
            "publish",
            "g",
            "m",
            "--exclude",
            C1,
            "--admin-url",
            &admin.url,
        ]),
        None,
    )
    .await;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    let requests = admin.requests().await;
    assert_eq!(
        requests[0].body,
        format!(r#"{{"group_id":"g","message":"m","exclude":["{C1}"]}}"#)
    );
}

#[tokio::test]
async fn bind_and_unbind_print_what_they_did() {
    let answer = r#"{"affected":1,"failed":0,"nodes":{"answered":["aa"],"missing":["bb"]}}"#;
    let admin = Answering::start(vec![(200, answer.to_owned())]).await;
    let finished = run(
        client(&[
            "bind",
            C1,
            "alice",
            "--admin-url",
            &admin.url,
            "--token",
            "t",
        ]),
        None,
    )
    .await;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(finished.stdout, "affected 1\n");
    assert_eq!(finished.stderr, "partial answer: no answer from bb\n");
    let requests = admin.requests().await;
    assert_eq!(requests[0].request_line, "POST /api/bind_uid HTTP/1.1");
    assert_eq!(requests[0].header("content-type"), Some("application/json"));
    assert_eq!(requests[0].header("authorization"), Some("Bearer t"));
    assert_eq!(
        json(&requests[0].body),
        serde_json::json!({"client_id": C1, "uid": "alice"})
    );

    let answer = r#"{"affected":2,"failed":0,"nodes":{"answered":["aa"],"missing":[]}}"#;
    let admin = Answering::start(vec![(200, answer.to_owned()), (200, answer.to_owned())]).await;
    let finished = run(
        client(&[
            "unbind",
            "--uid",
            "a b",
            "--json",
            "--admin-url",
            &admin.url,
        ]),
        None,
    )
    .await;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(
        (finished.stdout.trim_end(), finished.stderr.as_str()),
        (answer, "")
    );
    let finished = run(
        client(&["unbind", "--client", C1, "--admin-url", &admin.url]),
        None,
    )
    .await;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(finished.stdout, "affected 2\n");
    let requests = admin.requests().await;
    assert_eq!(requests[0].request_line, "POST /api/unbind_uid HTTP/1.1");
    assert_eq!(json(&requests[0].body), serde_json::json!({"uid": "a b"}));
    assert_eq!(
        json(&requests[1].body),
        serde_json::json!({"client_id": C1})
    );
}

#[tokio::test]
async fn lookups_encode_their_path() {
    let by_uid = r#"{"uid":"a/b c","online":true,"client_ids":["5f0c1d2e3a4b6c7d-1-42"],"nodes":{"answered":["aa"],"missing":[]}}"#;
    let by_client = r#"{"client_id":"5f0c1d2e3a4b6c7d-1-42","online":true,"node":"5f0c1d2e3a4b6c7d","uid":null,"groups":["g"],"nodes":{"answered":["aa"],"missing":[]}}"#;
    let admin = Answering::start(vec![(200, by_uid.to_owned()), (200, by_client.to_owned())]).await;
    let finished = run(
        client(&["clients", "--uid", "a/b c", "--admin-url", &admin.url]),
        None,
    )
    .await;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(
        finished.stdout,
        format!("uid a/b c\nonline true\nclient_id {C1}\n")
    );
    let finished = run(client(&["clients", C1, "--admin-url", &admin.url]), None).await;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(
        finished.stdout,
        format!("client_id {C1}\nonline true\nnode 5f0c1d2e3a4b6c7d\nuid -\ngroup g\n")
    );
    let requests = admin.requests().await;
    assert_eq!(requests[0].request_line, "GET /api/uids/a%2Fb%20c HTTP/1.1");
    assert_eq!(
        requests[1].request_line,
        format!("GET /api/clients/{C1} HTTP/1.1")
    );
}

#[tokio::test]
async fn groups_follow_the_cursor_with_all() {
    let page1 = r#"{"groups":[{"group_id":"a b","connections":2}],"cursor":"a b","nodes":{"answered":["aa"],"missing":[]}}"#;
    let page2 = r#"{"groups":[{"group_id":"c","connections":1}],"cursor":null,"nodes":{"answered":["aa"],"missing":["bb"]}}"#;
    let admin = Answering::start(vec![(200, page1.to_owned()), (200, page2.to_owned())]).await;
    let finished = run(
        client(&["groups", "--limit", "1", "--all", "--admin-url", &admin.url]),
        None,
    )
    .await;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(finished.stdout, "a b 2\nc 1\n");
    assert_eq!(finished.stderr, "partial answer: no answer from bb\n");
    let requests = admin.requests().await;
    assert_eq!(requests[0].request_line, "GET /api/groups?limit=1 HTTP/1.1");
    assert_eq!(
        requests[1].request_line,
        "GET /api/groups?limit=1&cursor=a+b HTTP/1.1"
    );
}

#[tokio::test]
async fn nodes_one_line_each_and_errors_exit_1() {
    let answer = r#"{"nodes":[{"node":"aa","name":"gw-1","connections":3,"started_ms":1,"last_seen_ms":0,"self":true},{"node":"bb","name":"gw-2","connections":0,"started_ms":1,"last_seen_ms":500,"self":false}]}"#;
    let refused = r#"{"error":{"code":"unauthorized","reason":"wrong token"}}"#;
    let admin = Answering::start(vec![(200, answer.to_owned()), (401, refused.to_owned())]).await;
    let finished = run(client(&["nodes", "--admin-url", &admin.url]), None).await;
    assert_eq!(finished.code, Some(0), "{finished:?}");
    assert_eq!(finished.stdout, "aa gw-1 3 conns (self)\nbb gw-2 0 conns\n");
    let finished = run(client(&["nodes", "--admin-url", &admin.url]), None).await;
    assert_eq!(finished.code, Some(1), "{finished:?}");
    assert_eq!(finished.stderr, "error: unauthorized: wrong token\n");
    assert_eq!(finished.stdout, "");
    let requests = admin.requests().await;
    assert_eq!(requests[0].request_line, "GET /api/nodes HTTP/1.1");
}

#[tokio::test]
async fn lookups_time_out_with_exit_2() {
    let admin = FakeAdmin::start(None).await;
    let finished = run(
        client(&["groups", "--admin-url", &admin.url, "--timeout", "0.3"]),
        None,
    )
    .await;
    assert_eq!(finished.code, Some(2), "{finished:?}");
    assert_eq!(
        finished.stderr,
        format!(
            "error: timed out after 0.3 s waiting for {}/api/groups\n",
            admin.url
        )
    );
}
