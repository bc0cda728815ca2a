//! Every `sh` block of README.md and docs/*.md runs in a test, as written but for the ports
//! (the harness and its rules: `e2e::docs`). This file has the guard that fails when a block is
//! not registered in `e2e::docs::COVERED`, and the tests of the blocks that are not deployment
//! recipes (those are in deploy_recipes.rs).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{ensure, Context, Result};
use e2e::docs::{covered_blocks, read_doc, sh_blocks, Session, COVERED, SKIPPED};

/// README's tour, in order.
const TOUR: &[&str] = &[
    "### 1. Build",
    "### 2. Run the system",
    "### 4. Join from a terminal",
    "### 5. Publish from your backend",
    "### 6. Scale to two gateways",
];

/// The markdown files whose `sh` blocks must all run: README.md and docs/*.md.
fn documents() -> Result<Vec<String>> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = vec!["README.md".to_owned()];
    let mut docs: Vec<String> = std::fs::read_dir(root.join("docs"))?
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.ends_with(".md"))
        .map(|name| format!("docs/{name}"))
        .collect();
    docs.sort();
    files.append(&mut docs);
    Ok(files)
}

/// The guard: every heading with `sh` blocks is in the registry with its number of blocks, and
/// every registry entry names a heading that has them and a test that exists.
#[test]
fn every_sh_block_is_run_by_a_test() -> Result<()> {
    let mut problems = Vec::new();
    let mut found = Vec::new();
    for file in documents()? {
        let mut by_heading: BTreeMap<String, usize> = BTreeMap::new();
        for block in sh_blocks(&read_doc(&file)?) {
            *by_heading.entry(block.heading).or_default() += 1;
        }
        for (heading, count) in by_heading {
            match COVERED
                .iter()
                .find(|c| c.file == file && c.heading == heading)
            {
                None => problems.push(format!(
                    "{file} {heading:?}: {count} sh block(s) that no test runs; run them in a \
                     test (e2e/tests/docs.rs, through e2e::docs::Session) and add them to \
                     e2e::docs::COVERED"
                )),
                Some(c) if c.blocks != count => problems.push(format!(
                    "{file} {heading:?}: {count} sh block(s), e2e::docs::COVERED says {} ({})",
                    c.blocks, c.test
                )),
                Some(_) => {}
            }
            found.push((file.clone(), heading));
        }
    }
    for covered in COVERED {
        if !found
            .iter()
            .any(|(file, heading)| file == covered.file && heading == covered.heading)
        {
            problems.push(format!(
                "e2e::docs::COVERED lists {} {:?}, which has no sh block",
                covered.file, covered.heading
            ));
        }
        let (test_file, function) = covered
            .test
            .split_once("::")
            .context("a test named file::function")?;
        let source = read_doc(&format!("e2e/tests/{test_file}.rs"))?;
        if !source.contains(&format!("async fn {function}()"))
            && !source.contains(&format!("fn {function}()"))
        {
            problems.push(format!("{}: no such test", covered.test));
        }
    }
    ensure!(problems.is_empty(), "{}", problems.join("\n"));
    Ok(())
}

/// The tour, step by step in one session: the gateway runs and serves the demo page; a
/// `client-cli join` prints what `client-cli send`, the backend's `curl`, `client-cli publish`
/// and a send through the second gateway sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_tour_works_as_written() -> Result<()> {
    let mut session = Session::new("tour")?;
    for heading in TOUR {
        for block in covered_blocks("README.md", heading)? {
            session
                .run_block(heading, &block)
                .await
                .with_context(|| format!("README {heading}:\n{block}"))?;
        }
        if *heading == "### 2. Run the system" {
            // Step 3: the demo page.
            let url = format!("http://127.0.0.1:{}/", session.port(9090)?);
            let page = reqwest::get(&url).await?;
            ensure!(page.status().is_success(), "GET {url}: {}", page.status());
            let text = page.text().await?;
            ensure!(text.contains("<html"), "GET {url} is not the demo page");
        }
    }
    ensure!(
        session.skipped.len() == 1 && session.gateways.len() == 2,
        "skipped {:?}, {} gateways",
        session.skipped,
        session.gateways.len()
    );
    let mut printed = session.join_lines(0, 4).await?;
    printed.sort();
    ensure!(
        printed
            == [
                "hello",
                "hello again",
                "hello from the backend",
                "hello from the second gateway"
            ],
        "the member printed {printed:?}"
    );
    let curl = session.printed_by("curl")?;
    ensure!(curl == r#"{"published":1}"#, "curl printed {curl:?}");
    session.finish().await
}

/// "Run the tests": nothing in it runs in a test, by the harness's listed rules; its test
/// command is the one CI runs, and the packages it installs are in CI's list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_test_command_is_the_one_ci_runs() -> Result<()> {
    let blocks = covered_blocks("README.md", "## Run the tests")?;
    let mut session = Session::new("tests")?;
    for block in &blocks {
        session.run_block("run the tests", block).await?;
    }
    ensure!(
        session.skipped.len() == 2 && session.outputs.is_empty(),
        "{:?}",
        session.skipped
    );
    ensure!(SKIPPED.iter().all(|(_, reason)| !reason.is_empty()));
    let ci = read_doc(".ci/run")?;
    let readme_test = blocks[0].trim();
    ensure!(
        ci.lines().any(|line| line.trim() == readme_test),
        "README's test command {readme_test:?} is not .ci/run's"
    );
    let install = blocks[1].trim();
    let packages = install
        .strip_prefix("apt-get install -y ")
        .with_context(|| format!("README's install line: {install:?}"))?;
    for package in packages.split_whitespace() {
        ensure!(
            ci.contains(&format!("missing+=({package})")),
            "README installs {package}, .ci/run does not"
        );
    }
    Ok(())
}

/// "Benchmark it": the gateway as written, and each push-bench run, scaled down (shorter and
/// fewer connections): each must exit 0, which push-bench does only for a clean run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_readme_benchmark_runs_scaled_down() -> Result<()> {
    let mut session = Session::new("bench")?;
    for block in covered_blocks("README.md", "## Benchmark it")? {
        session.run_block("benchmark", &block).await?;
    }
    ensure!(
        session.outputs.len() == 3 && session.gateways.len() == 1,
        "ran {:?}",
        session.outputs
    );
    session.finish().await
}

/// The broker of docs/php-channel.md's "Security", with its link secret (in the working
/// directory instead of /etc/push/, made first as the deploy docs make it) and its PHP
/// allow-list, starts and serves its admin API.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_php_channel_security_block_starts_its_broker() -> Result<()> {
    let mut session = Session::new("php-security")?;
    session
        .run_block("the secret", "openssl rand -hex 32 > link.secret\n")
        .await?;
    for block in covered_blocks("docs/php-channel.md", "## Security")? {
        session.run_block("php security", &block).await?;
    }
    ensure!(session.servers.len() == 1, "no broker");
    let url = format!("http://127.0.0.1:{}/api/stats", session.port(9091)?);
    let stats = reqwest::get(&url).await?;
    ensure!(stats.status().is_success(), "GET {url}: {}", stats.status());
    session.finish().await
}

/// Starts the system as README's tour does, for blocks that need a gateway running.
async fn run_the_system(session: &mut Session) -> Result<()> {
    for block in covered_blocks("README.md", "### 2. Run the system")? {
        session.run_block("run the system", &block).await?;
    }
    Ok(())
}

/// docs/usage.md "The command-line client": the first join prints both sends of group 123 and
/// the JSON one; the one with `--count 1` prints the first and exits 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_command_line_client_works_as_written() -> Result<()> {
    let mut session = Session::new("usage-cli")?;
    run_the_system(&mut session).await?;
    for block in covered_blocks("docs/usage.md", "## The command-line client")? {
        session.run_block("command-line client", &block).await?;
    }
    let mut printed = session.join_lines(0, 3).await?;
    printed.sort();
    ensure!(
        printed == ["hello", "hello", r#"{"price":42}"#],
        "join 123 456 printed {printed:?}"
    );
    session.finish().await?;
    let once = session.joins[1].process.stdout();
    ensure!(once == "hello\n", "join --count 1 printed {once:?}");
    Ok(())
}

/// docs/usage.md "The cluster API from a terminal": the member with uid alice receives the
/// send to alice; `count` and `members` print what the comments say; `nodes` lists this one
/// gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_cluster_api_works_as_written() -> Result<()> {
    let mut session = Session::new("usage-cluster")?;
    run_the_system(&mut session).await?;
    for block in covered_blocks("docs/usage.md", "### The cluster API from a terminal")? {
        session.run_block("cluster API", &block).await?;
    }
    let printed = session.join_lines(0, 1).await?;
    ensure!(printed == ["hello alice"], "the member printed {printed:?}");
    let output = |command: &str| {
        session
            .outputs
            .iter()
            .find(|(line, _)| line.contains(command))
            .map(|(_, out)| out.trim().to_owned())
            .with_context(|| format!("no {command} line"))
    };
    let count = output(" count 123")?;
    ensure!(
        count == "123: 1 connections, 1 uids",
        "count printed {count:?}"
    );
    let members = output(" members 123")?;
    ensure!(
        members.ends_with(" alice") && members.lines().count() == 1,
        "members printed {members:?}"
    );
    let nodes = output(" nodes")?;
    ensure!(
        nodes.lines().count() == 1 && nodes.contains("(self)"),
        "nodes printed {nodes:?}"
    );
    session.finish().await
}

/// docs/usage.md "Publish from your backend": a member of groups 123, 1 and 2 receives each
/// publish, and curl prints what its comment says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_usage_publish_examples_work_as_written() -> Result<()> {
    let mut session = Session::new("usage-publish")?;
    run_the_system(&mut session).await?;
    session
        .run_block("the member", "target/release/client-cli join 123 1 2\n")
        .await?;
    for block in covered_blocks("docs/usage.md", "## Publish from your backend")? {
        session.run_block("publish", &block).await?;
    }
    let mut printed = session.join_lines(0, 5).await?;
    printed.sort();
    ensure!(
        printed == ["a", "b", "hello", "hello", r#"{"price":42}"#],
        "the member printed {printed:?}"
    );
    let curl = session.printed_by("curl")?;
    ensure!(curl == r#"{"published":1}"#, "curl printed {curl:?}");
    session.finish().await
}

/// docs/security.md "To deploy safely", its three blocks in order: the certificates and
/// secrets, the broker with TLS and a link secret, and a gateway that links to it over TLS with
/// the secret (the harness waits until its bus is up, which takes both), started with its
/// `wss://` listener and join tokens (no client connects to them here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_secure_deployment_links_over_tls_with_a_secret() -> Result<()> {
    let mut session = Session::new("security")?;
    for (i, block) in covered_blocks("docs/security.md", "## To deploy safely")?
        .iter()
        .enumerate()
    {
        session
            .run_block(&format!("block {}", i + 1), block)
            .await?;
    }
    ensure!(
        session.servers.len() == 1 && session.gateways.len() == 1,
        "expected a broker and a gateway"
    );
    for file in [
        "ca.crt",
        "server.crt",
        "server.key",
        "link.secret",
        "join.secret",
    ] {
        ensure!(session.dir().join(file).is_file(), "no {file}");
    }
    session.finish().await
}

/// docs/protocol.md "From the command line", against a gateway with an API token (the
/// blocks' `$TOKEN`, also in `CLIENT_CLI_TOKEN` as the text says), with the reader's
/// `messages.json` and `producer`: the member of block 1 prints every send and publish of the
/// three blocks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_protocol_command_line_examples_work_as_written() -> Result<()> {
    let mut session = Session::new("protocol-cli")?;
    let token = "docs-test-token";
    session
        .run_block(
            "the gateway",
            &format!("target/release/gateway --api-token {token}\n"),
        )
        .await?;
    session.set_env("TOKEN", token);
    session.set_env("CLIENT_CLI_TOKEN", token);
    std::fs::write(
        session.dir().join("messages.json"),
        r#"[{"group_id":"123","message":"from the file"}]"#,
    )?;
    session.set_prelude(r#"producer() { echo '[{"group_id":456,"message":"from a producer"}]'; }"#);
    for (i, block) in covered_blocks("docs/protocol.md", "### From the command line")?
        .iter()
        .enumerate()
    {
        session
            .run_block(&format!("block {}", i + 1), block)
            .await?;
    }
    let mut printed = session.join_lines(0, 7).await?;
    printed.sort();
    ensure!(
        printed
            == [
                "from a producer",
                "from the file",
                "hello",
                "hello",
                "hello",
                r#"{"a":1}"#,
                r#"{"a":1}"#,
            ],
        "the member printed {printed:?}"
    );
    session.finish().await
}
