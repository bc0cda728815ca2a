//! Security over the real binaries: a broker link that other hosts could reach is refused
//! without a secret; a TLS broker with a link secret serves gateways that trust its CA and know
//! the secret (wss clients on both ends), and never those that do not (link errors logged,
//! `/readyz` 503); join tokens decide what a client may join and send. Keys and certificates are
//! made at test time.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{ensure, Context, Result};
use e2e::certs::{flag, TestPki};
use e2e::{
    stat, Broker, Client, Gateway, GatewayConfig, Process, EXIT_TIMEOUT, LINK_DEBUG,
    STARTUP_TIMEOUT,
};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::json;

const LINK_SECRET: &str = "e2e-link-secret-0123456789";
const TOKEN_SECRET: &str = "e2e-join-token-secret-0123456789abcdef";

fn loopback() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Runs a binary that must refuse to start: exit status 1, and a message on stderr containing
/// every one of `expected`. Returns its stderr.
async fn refused(binary: &str, args: &[&str], expected: &[&str]) -> Result<String> {
    let mut process = Process::spawn(format!("{binary} (refused)"), binary, args)?;
    let status = process.wait(EXIT_TIMEOUT).await?;
    let stderr = process.stderr_lines().join("\n");
    ensure!(
        status.code() == Some(1),
        "{binary} {args:?}: {status}\n{stderr}"
    );
    for text in expected {
        ensure!(
            stderr.contains(text),
            "{binary} {args:?}: no {text:?} in\n{stderr}"
        );
    }
    Ok(stderr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exposed_link_without_a_secret_or_bad_files_refuse_to_start() -> Result<()> {
    refused(
        "broker",
        &["--broker-listen", "0.0.0.0:0"],
        &["not a loopback address", "--link-secret-file", "--insecure"],
    )
    .await?;
    refused(
        "gateway",
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--broker-listen",
            "0.0.0.0:0",
        ],
        &["--broker-listen", "not a loopback address", "--insecure"],
    )
    .await?;
    let stderr = refused(
        "broker",
        &["--link-secret", "short-secret"],
        &["at least 16 bytes"],
    )
    .await?;
    ensure!(
        !stderr.contains("short-secret"),
        "the secret is echoed:\n{stderr}"
    );
    refused(
        "broker",
        &[
            "--broker-tls-cert",
            "/nonexistent/cert.pem",
            "--broker-tls-key",
            "/nonexistent/key.pem",
        ],
        &["/nonexistent/cert.pem"],
    )
    .await?;
    let pki = TestPki::generate()?;
    let garbage = pki.write("garbage.pem", "not a certificate\n")?;
    let garbage = garbage.display().to_string();
    let key = pki.key.display().to_string();
    refused(
        "gateway",
        &[
            "--listen",
            "127.0.0.1:0",
            "--admin",
            "off",
            "--tls-cert",
            &garbage,
            "--tls-key",
            &key,
        ],
        &[&garbage, "no PEM certificate"],
    )
    .await?;

    // Explicitly insecure, it starts (it only listens; nothing here connects off loopback).
    let insecure = Process::spawn(
        "broker (insecure)",
        "broker",
        [
            "--broker-listen",
            "0.0.0.0:0",
            "--insecure",
            "--log-format",
            "json",
        ],
    )?;
    insecure
        .wait_for_log("broker listening", STARTUP_TIMEOUT)
        .await?;
    insecure.terminate().await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_link_over_tls_with_a_secret_and_others_never_come_up() -> Result<()> {
    let pki = TestPki::generate()?;
    let secret_file = pki.write("link.secret", &format!("{LINK_SECRET}\n"))?;
    let mut broker_args = Vec::new();
    broker_args.extend(flag("--link-secret-file", &secret_file));
    broker_args.extend(flag("--broker-tls-cert", &pki.cert));
    broker_args.extend(flag("--broker-tls-key", &pki.key));
    let broker = Broker::start_with("broker", loopback(), &broker_args).await?;

    // Each gateway: wss for its clients, TLS and the secret towards the broker.
    let secured = |name: &str, ca: &std::path::Path, secret: &std::path::Path| {
        let mut config = GatewayConfig::with_broker(name, broker.addr).workers(2);
        for arg in [
            flag("--tls-cert", &pki.cert),
            flag("--tls-key", &pki.key),
            flag("--broker-ca", ca),
            flag("--link-secret-file", secret),
        ]
        .into_iter()
        .flatten()
        {
            config = config.arg(arg);
        }
        config
            .arg("--broker-tls")
            .arg("--broker-tls-name")
            .arg("localhost")
    };
    let a = Gateway::start(secured("gateway-a", &pki.ca, &secret_file));
    let b = Gateway::start(secured("gateway-b", &pki.ca, &secret_file));
    let (a, b) = tokio::try_join!(a, b)?;

    let mut member = Client::connect_wss("member", a.addr, pki.client_config()?).await?;
    member.join("room").await?;
    broker
        .admin
        .wait_for_counters("subscriptions == 1", &[("/subscriptions", 1)])
        .await?;
    let mut sender = Client::connect_wss("sender", b.addr, pki.client_config()?).await?;
    sender.send_to_group("room", "across TLS").await?;
    member.expect_text("across TLS").await?;

    // A plain ws:// client cannot talk to a wss listener.
    ensure!(
        Client::connect("plain", a.addr).await.is_err(),
        "a plain client got through"
    );

    // Another CA: the broker's certificate does not verify. The wrong secret: refused.
    let other = TestPki::generate()?;
    let wrong_secret = pki.write("wrong.secret", "not-the-link-secret-at-all")?;
    let untrusting = Gateway::start(
        secured("gateway-other-ca", &other.ca, &secret_file)
            .log_filter(LINK_DEBUG)
            .without_waiting_for_the_link(),
    );
    let impostor = Gateway::start(
        secured("gateway-wrong-secret", &pki.ca, &wrong_secret)
            .log_filter(LINK_DEBUG)
            .without_waiting_for_the_link(),
    );
    let (untrusting, impostor) = tokio::try_join!(untrusting, impostor)?;
    let failure = untrusting
        .process
        .wait_for_log("cannot reach broker", STARTUP_TIMEOUT)
        .await?;
    let cause = failure.get("cause").and_then(|c| c.as_str()).unwrap_or("");
    ensure!(
        cause.contains("TLS") && cause.contains("certificate"),
        "{failure:?}"
    );
    let failure = impostor
        .process
        .wait_for_log("cannot reach broker", STARTUP_TIMEOUT)
        .await?;
    let cause = failure.get("cause").and_then(|c| c.as_str()).unwrap_or("");
    ensure!(cause.contains("unauthorized"), "{failure:?}");
    broker
        .admin
        .wait_for_stats("unauthorized_links >= 1", |s| {
            stat(s, "/unauthorized_links").is_some_and(|n| n >= 1)
        })
        .await?;
    for gateway in [&untrusting, &impostor] {
        // Still retrying (each attempt a `debug` line, the warning rate limited), still not
        // ready.
        gateway
            .process
            .wait_for_nth_log("broker connection attempt failed", 3, STARTUP_TIMEOUT)
            .await?;
        let (status, body) = gateway.admin.get("/readyz").await?;
        ensure!(status == 503, "/readyz answered {status} {body}");
        ensure!(gateway.process.log_count("bus up") == 0);
    }
    // No log line holds the secret.
    for process in [&broker.process, &a.process, &impostor.process] {
        let logs = process.stderr_lines().join("\n");
        ensure!(
            !logs.contains(LINK_SECRET),
            "{} logged the secret",
            process.name()
        );
    }
    for process in [&broker.process, &a.process, &b.process, &untrusting.process] {
        process.assert_no_panics()?;
    }
    Ok(())
}

fn token(claims: serde_json::Value) -> Result<String> {
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(TOKEN_SECRET.as_bytes()),
    )?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_limit_what_clients_may_join_and_send() -> Result<()> {
    let pki = TestPki::generate()?;
    let secret = pki.write("join.secret", TOKEN_SECRET)?;
    let mut config = GatewayConfig::embedded("gateway").workers(2);
    for arg in flag("--join-token-secret-file", &secret) {
        config = config.arg(arg);
    }
    let gateway = Gateway::start(config.arg("--require-join-token")).await?;
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .context("clock")?
        .as_secs()
        + 3600;

    let mut reader = gateway.connect("reader").await?;
    let rejected = reader.join("news").await.expect_err("no token yet");
    ensure!(
        format!("{rejected:#}").contains(r#""code":"unauthorized""#),
        "{rejected:#}"
    );
    let grants = token(json!({"exp": exp, "groups": ["news"], "send": []}))?;
    reader
        .request(json!({"cmd": "auth", "token": grants}))
        .await?;
    reader.join("news").await?;
    let rejected = reader.join("admin").await.expect_err("forbidden join");
    ensure!(
        format!("{rejected:#}").contains(r#""code":"forbidden""#),
        "{rejected:#}"
    );
    let rejected = reader
        .send_to_group("news", "x")
        .await
        .expect_err("forbidden send");
    ensure!(
        format!("{rejected:#}").contains(r#""code":"forbidden""#),
        "{rejected:#}"
    );

    let mut editor = gateway.connect("editor").await?;
    let grants = token(json!({"exp": exp, "groups": [], "send": ["news"]}))?;
    editor
        .request(json!({"cmd": "auth", "token": grants}))
        .await?;
    editor.send_to_group("news", "extra!").await?;
    reader.expect_text("extra!").await?;

    let expired = token(json!({"exp": exp - 7200, "groups": ["*"]}))?;
    let mut late = gateway.connect("late").await?;
    let rejected = late
        .request(json!({"cmd": "auth", "token": expired}))
        .await
        .expect_err("expired");
    ensure!(format!("{rejected:#}").contains("expired"), "{rejected:#}");

    let stats = gateway.admin.stats().await?;
    let errors = |code: &str| -> u64 {
        stats["workers"]
            .as_array()
            .map(|workers| {
                workers
                    .iter()
                    .filter_map(|w| w["errors"][code].as_u64())
                    .sum()
            })
            .unwrap_or(0)
    };
    ensure!(
        errors("forbidden") == 2 && errors("unauthorized") == 2,
        "{stats}"
    );
    gateway.process.assert_no_panics()?;
    Ok(())
}
