//! The admin HTTP API of a real `gateway` process, driven by the real `client-cli publish`, with
//! WebSocket members receiving what it publishes.

use std::path::PathBuf;

use anyhow::{ensure, Context, Result};
use e2e::{Gateway, GatewayConfig, Process, EXIT_TIMEOUT};

const TOKEN: &str = "e2e-s3cret";

/// Runs `client-cli publish ARGS --admin-url <gateway admin>` and returns its exit code and
/// stderr lines.
async fn publish(gateway: &Gateway, args: &[&str]) -> Result<(Option<i32>, Vec<String>)> {
    let admin_url = format!("http://{}", gateway.admin.addr());
    let mut all = vec!["publish"];
    all.extend(args);
    all.extend(["--admin-url", admin_url.as_str()]);
    let mut process = Process::spawn("client-cli publish", "client-cli", &all)?;
    let status = process.wait(EXIT_TIMEOUT).await?;
    Ok((status.code(), process.stderr_lines()))
}

/// Like [`publish`], and it must exit 0 after printing `published N`.
async fn publish_ok(gateway: &Gateway, args: &[&str], n: usize) -> Result<()> {
    let (code, stderr) = publish(gateway, args).await?;
    ensure!(
        code == Some(0) && stderr == [format!("published {n}")],
        "`client-cli publish {args:?}` exited with {code:?}; stderr: {stderr:?}"
    );
    Ok(())
}

/// A batch file in the temp directory, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> Result<TempFile> {
        let path = std::env::temp_dir().join(format!("e2e-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).with_context(|| format!("write {}", path.display()))?;
        Ok(TempFile(path))
    }

    fn path(&self) -> Result<&str> {
        self.0.to_str().context("temp path is not UTF-8")
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cli_publish_reaches_members_through_the_api() -> Result<()> {
    let gateway = Gateway::start(
        GatewayConfig::embedded("gateway")
            .workers(2)
            .arg("--api-token")
            .arg(TOKEN),
    )
    .await?;
    // Two members of 123, on the two workers, and a member of another group.
    let mut first = gateway.connect("first").await?;
    let mut second = gateway.connect("second").await?;
    let mut other = gateway.connect("other").await?;
    first.join("123").await?;
    second.join("123").await?;
    other.join("other").await?;

    publish_ok(&gateway, &["123", "C'est le message", "--token", TOKEN], 1).await?;
    let batch = TempFile::new(
        "batch.json",
        r#"[{"group_id":123,"message":{"n": 1}},{"group_id":"other","message":"for other"}]"#,
    )?;
    publish_ok(&gateway, &["--batch", batch.path()?, "--token", TOKEN], 2).await?;

    // Refused: no token, a wrong token, an invalid batch item. Nothing of them is delivered.
    for (args, expected) in [
        (vec!["123", "no token"], "error: unauthorized: "),
        (
            vec!["123", "wrong", "--token", "nope"],
            "error: unauthorized: ",
        ),
        (vec!["", "x", "--token", TOKEN], "invalid value"),
    ] {
        let (code, stderr) = publish(&gateway, &args).await?;
        ensure!(
            code == Some(1) && stderr.iter().any(|l| l.contains(expected)),
            "`client-cli publish {args:?}`: exit {code:?}, stderr {stderr:?}"
        );
    }
    let bad_batch = TempFile::new(
        "bad-batch.json",
        r#"[{"group_id":123,"message":"not delivered"},{"group_id":"","message":"x"}]"#,
    )?;
    let (code, stderr) =
        publish(&gateway, &["--batch", bad_batch.path()?, "--token", TOKEN]).await?;
    ensure!(
        code == Some(1)
            && stderr.iter().any(
                |l| l.starts_with("error: invalid_group_id: ") && l.ends_with("(batch item 1)")
            ),
        "bad batch: exit {code:?}, stderr {stderr:?}"
    );

    // The markers come last from the same publisher: whatever else reached a member arrived
    // before them.
    let markers = TempFile::new(
        "markers.json",
        r#"[{"group_id":"123","message":"end"},{"group_id":"other","message":"end"}]"#,
    )?;
    publish_ok(&gateway, &["--batch", markers.path()?, "--token", TOKEN], 2).await?;
    for member in [&mut first, &mut second] {
        for expected in ["C'est le message", r#"{"n":1}"#, "end"] {
            member.expect_text(expected).await?;
        }
    }
    other.expect_text("for other").await?;
    other.expect_text("end").await?;

    // /metrics stays open without the token and counts the API's messages.
    let (status, metrics) = gateway.admin.get("/metrics").await?;
    ensure!(status == 200, "/metrics answered {status}");
    ensure!(
        metrics
            .lines()
            .any(|l| l == "gateway_api_publishes_total 5"),
        "gateway_api_publishes_total is not 5:\n{metrics}"
    );
    let (status, _) = gateway.admin.get("/api/stats").await?;
    ensure!(
        status == 401,
        "/api/stats without the token answered {status}"
    );
    gateway.process.assert_no_panics()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_loopback_admin_without_token_refuses_to_start() -> Result<()> {
    let mut gateway = Process::spawn(
        "gateway",
        "gateway",
        [
            "--listen",
            "127.0.0.1:0",
            "--broker-listen",
            "127.0.0.1:0",
            "--admin",
            "0.0.0.0:0",
            "--log-format",
            "json",
        ],
    )?;
    let status = gateway.wait(EXIT_TIMEOUT).await?;
    ensure!(!status.success(), "the gateway started: {status}");
    let stderr = gateway.stderr_lines();
    ensure!(
        stderr
            .iter()
            .any(|l| l.contains("not a loopback address") && l.contains("--api-token")),
        "no clear error: {stderr:#?}"
    );
    ensure!(
        !stderr.iter().any(|l| l.contains("gateway listening")),
        "it listened before refusing: {stderr:#?}"
    );
    Ok(())
}
