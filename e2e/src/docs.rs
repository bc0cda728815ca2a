//! Runs the `sh` blocks of README.md and docs/*.md as a reader would, so that the documentation
//! cannot drift from the binaries.
//!
//! [`COVERED`] lists every heading of those files that has `sh` blocks, with the test that runs
//! them; `e2e/tests/docs.rs` fails when a block is not listed (a new block needs a test). Tests
//! take their blocks through [`covered_blocks`], which checks the registry's block count.
//!
//! A [`Session`] is the reader's machine: one working directory (where a block's files go:
//! secrets, certificates) and one mapping of the ports the docs name to free ones, kept from one
//! block to the next. Each line of a block is run through `sh -c` in that directory, after these
//! substitutions, and only these:
//!
//! - `target/release/NAME`, and `cargo run --release -p NAME [--]`, become the binary the tests
//!   built ([`test_support::process::binary`]); a workspace binary named bare (`gateway ...`)
//!   is refused, since the docs build once and run `target/release/NAME` (issue 14, point 3);
//! - every `HOST:PORT` (HOST an IPv4 address or `localhost`) and the number after `--port` or
//!   `-p` get the session's free port for that number; `0.0.0.0` and other hosts' addresses
//!   become `127.0.0.1` (the docs' other servers are this machine);
//! - the defaults the docs rely on are the same mapped ports, set through the environment:
//!   a gateway's `--listen` (1234), `--admin` (9090) and embedded `--broker-listen` (2206), a
//!   broker's `--broker-listen` (2206), client-cli's `--url` and `--admin-url`, push-bench's
//!   `--url`; servers log in JSON (`GATEWAY_LOG_FORMAT`, `BROKER_LOG_FORMAT`), for readiness;
//! - `$(pgrep -n NAME)` becomes the pid of the last NAME the session started (another test's
//!   gateway may be newer), and `/etc/push/` the working directory;
//! - push-bench runs are scaled down ([`SCALED`]): shorter, and at most 1000 connections (the
//!   docs' runs last a minute and hold 10,000 connections).
//!
//! Then, by the line's program: [`SKIPPED`] lines are not run, each with its reason (recorded in
//! [`Session::skipped`]); servers (`gateway`, `broker`, `redis-server`, `nats-server`) are
//! started and waited for (a gateway until its bus is up); `client-cli join` is started and
//! waited for until it has joined (with `--count`, it must then exit 0 by the end of the
//! session: [`Session::finish`]); any other line runs to completion and must exit 0. Every wait
//! has a deadline; nothing sleeps.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use test_support::process::{binary, command};
use test_support::{wait_until, Process, EXIT_TIMEOUT, STARTUP_TIMEOUT};

/// The headings of README.md and docs/*.md that have `sh` blocks, and the test that runs them.
#[derive(Debug)]
pub struct Covered {
    /// The file, from the workspace's root.
    pub file: &'static str,
    /// The nearest heading above the blocks, as written (`## Run it`).
    pub heading: &'static str,
    /// How many `sh` blocks it has.
    pub blocks: usize,
    /// The test that runs them (`file::function`).
    pub test: &'static str,
}

/// Every heading with `sh` blocks in README.md and docs/*.md, and its test. A block under a
/// heading missing here fails `e2e/tests/docs.rs`.
pub const COVERED: &[Covered] = &[
    Covered {
        file: "README.md",
        heading: "### 1. Build",
        blocks: 1,
        test: "docs::the_readme_tour_works_as_written",
    },
    Covered {
        file: "README.md",
        heading: "### 2. Run the system",
        blocks: 1,
        test: "docs::the_readme_tour_works_as_written",
    },
    Covered {
        file: "README.md",
        heading: "### 4. Join from a terminal",
        blocks: 1,
        test: "docs::the_readme_tour_works_as_written",
    },
    Covered {
        file: "README.md",
        heading: "### 5. Publish from your backend",
        blocks: 1,
        test: "docs::the_readme_tour_works_as_written",
    },
    Covered {
        file: "README.md",
        heading: "### 6. Scale to two gateways",
        blocks: 1,
        test: "docs::the_readme_tour_works_as_written",
    },
    Covered {
        file: "README.md",
        heading: "## Run the tests",
        blocks: 2,
        test: "docs::the_readme_test_command_is_the_one_ci_runs",
    },
    Covered {
        file: "README.md",
        heading: "## Benchmark it",
        blocks: 1,
        test: "docs::the_readme_benchmark_runs_scaled_down",
    },
    Covered {
        file: "docs/deploy.md",
        heading: "## First steps",
        blocks: 3,
        test: "deploy_recipes::the_first_deploy_steps_work_as_written",
    },
    Covered {
        file: "docs/deploy.md",
        heading: "## Recipes",
        blocks: 5,
        test: "deploy_recipes::every_deploy_recipe_delivers_between_its_gateways",
    },
    Covered {
        file: "docs/php-channel.md",
        heading: "## Migrating from a Workerman Channel server",
        blocks: 2,
        test: "deploy_recipes::the_migration_from_channel_server_works_as_written",
    },
    Covered {
        file: "docs/php-channel.md",
        heading: "## Security",
        blocks: 1,
        test: "docs::the_php_channel_security_block_starts_its_broker",
    },
    Covered {
        file: "docs/usage.md",
        heading: "## The command-line client",
        blocks: 1,
        test: "docs::the_usage_command_line_client_works_as_written",
    },
    Covered {
        file: "docs/usage.md",
        heading: "### The cluster API from a terminal",
        blocks: 1,
        test: "docs::the_usage_cluster_api_works_as_written",
    },
    Covered {
        file: "docs/usage.md",
        heading: "## Publish from your backend",
        blocks: 1,
        test: "docs::the_usage_publish_examples_work_as_written",
    },
    Covered {
        file: "docs/security.md",
        heading: "## To deploy safely",
        blocks: 3,
        test: "docs::the_secure_deployment_links_over_tls_with_a_secret",
    },
    Covered {
        file: "docs/protocol.md",
        heading: "### From the command line",
        blocks: 3,
        test: "docs::the_protocol_command_line_examples_work_as_written",
    },
];

/// Lines not run, by the start of their text, with the reason.
pub const SKIPPED: &[(&str, &str)] = &[
    (
        "cargo build",
        "builds the binaries: the tests run the ones they built, in the tests' profile",
    ),
    (
        "cargo test",
        "the command that runs these tests (docs::the_readme_test_command_is_the_one_ci_runs checks it is CI's)",
    ),
    (
        "apt-get ",
        "installs system packages: .ci/run installs them (the same test checks its list)",
    ),
];

/// push-bench settings scaled down for a test, by flag: the value the test uses instead (for
/// `--connections`, the most it uses: idle's default `--groups`, 1000, needs as many).
pub const SCALED: &[(&str, &str)] = &[
    ("--duration", "1s"),
    ("--hold", "1s"),
    ("--connections", "1000"),
];

/// The workspace binaries, which the docs run as `target/release/NAME`.
const BINARIES: &[&str] = &["gateway", "broker", "client-cli", "push-bench"];

/// How long a one-shot line may run.
const ONE_SHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// The text of `path`, from the workspace's root.
pub fn read_doc(path: &str) -> Result<String> {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))
}

/// One `sh` block of a markdown file, with the nearest heading above it.
#[derive(Debug, Clone)]
pub struct ShBlock {
    pub heading: String,
    pub text: String,
}

/// The `sh` blocks of `markdown`, in order, each with its heading. Lines inside code fences are
/// never headings; a block indented in a list keeps its lines, unindented.
pub fn sh_blocks(markdown: &str) -> Vec<ShBlock> {
    let mut blocks = Vec::new();
    let mut heading = String::new();
    // The block being read, if inside a code fence (`sh` or not).
    let mut fence: Option<(bool, String)> = None;
    for line in markdown.lines() {
        let trimmed = line.trim_start();
        match &mut fence {
            None if trimmed.starts_with("```") => {
                fence = Some((trimmed == "```sh", String::new()));
            }
            None => {
                let hashes = line.chars().take_while(|c| *c == '#').count();
                if hashes > 0 && line[hashes..].starts_with(' ') {
                    heading = line.to_owned();
                }
            }
            Some(_) if trimmed == "```" => {
                if let Some((true, text)) = fence.take() {
                    blocks.push(ShBlock {
                        heading: heading.clone(),
                        text,
                    });
                }
            }
            Some((_, text)) => {
                text.push_str(trimmed);
                text.push('\n');
            }
        }
    }
    blocks
}

/// The `sh` blocks of `file` under `heading`, which [`COVERED`] must list with that many blocks.
pub fn covered_blocks(file: &str, heading: &str) -> Result<Vec<String>> {
    let entry = COVERED
        .iter()
        .find(|c| c.file == file && c.heading == heading)
        .with_context(|| format!("{file} {heading:?} is not in docs::COVERED"))?;
    let blocks: Vec<String> = sh_blocks(&read_doc(file)?)
        .into_iter()
        .filter(|b| b.heading == heading)
        .map(|b| b.text)
        .collect();
    ensure!(
        blocks.len() == entry.blocks,
        "{file} {heading:?} has {} sh blocks, docs::COVERED says {}: update the registry and {}",
        blocks.len(),
        entry.blocks,
        entry.test
    );
    Ok(blocks)
}

/// The command lines of a block: continuation lines joined, comments and blank lines dropped,
/// each with whether it ends with `&`.
pub fn command_lines(block: &str) -> Vec<(String, bool)> {
    let mut lines = Vec::new();
    let mut pending = String::new();
    for raw in block.lines() {
        let line = strip_comment(raw);
        let line = line.trim_end();
        if let Some(start) = line.strip_suffix('\\') {
            pending.push_str(start);
            pending.push(' ');
            continue;
        }
        pending.push_str(line);
        let full = std::mem::take(&mut pending);
        let full = full.split_whitespace().collect::<Vec<_>>().join(" ");
        if full.is_empty() {
            continue;
        }
        match full.strip_suffix('&') {
            Some(rest) if !rest.ends_with('&') => lines.push((rest.trim_end().to_owned(), true)),
            _ => lines.push((full, false)),
        }
    }
    lines
}

/// `line` without its `# comment` (a `#` that starts a word outside quotes).
fn strip_comment(line: &str) -> &str {
    let mut quote = None;
    let mut previous = ' ';
    for (i, c) in line.char_indices() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (None, '#') if previous.is_whitespace() => return &line[..i],
            _ => {}
        }
        previous = c;
    }
    line
}

/// Whether `host` is written as an IPv4 address or `localhost`.
fn is_host(host: &str) -> bool {
    host == "localhost"
        || (host.split('.').count() == 4
            && host
                .split('.')
                .all(|part| !part.is_empty() && part.chars().all(|c| c.is_ascii_digit())))
}

/// What a line is, by its program.
#[derive(Debug, PartialEq)]
enum Kind {
    Skipped(&'static str),
    Gateway,
    Broker,
    Engine { port: u16 },
    Join { finite: bool },
    OneShot,
}

/// A started `client-cli join`.
#[derive(Debug)]
pub struct Join {
    pub line: String,
    pub process: Process,
    /// It was given `--count`: it must exit 0 on its own.
    pub finite: bool,
}

/// A reader's machine: see the module's documentation.
#[derive(Debug)]
pub struct Session {
    name: String,
    dir: WorkDir,
    ports: HashMap<u16, u16>,
    env: Vec<(String, String)>,
    /// Shell text run before each line (e.g. a function standing for the reader's program).
    prelude: String,
    /// Engines and brokers, in the order they started.
    pub servers: Vec<Process>,
    /// Gateways with their client address, in the order they started.
    pub gateways: Vec<(SocketAddr, Process)>,
    pub joins: Vec<Join>,
    /// The one-shot lines run, with their stdout.
    pub outputs: Vec<(String, String)>,
    /// The lines not run, with the reason.
    pub skipped: Vec<(String, &'static str)>,
    pids: HashMap<String, u32>,
}

impl Session {
    /// What the first one-shot line starting with `prefix` (e.g. `curl`) printed, trimmed.
    pub fn printed_by(&self, prefix: &str) -> Result<&str> {
        self.outputs
            .iter()
            .find(|(line, _)| line.starts_with(prefix))
            .map(|(_, out)| out.trim())
            .with_context(|| format!("{}: no line starting with {prefix:?} ran", self.name))
    }

    /// A session with a fresh directory and no port mapped yet but the defaults' (1234, 9090,
    /// 2206).
    pub fn new(name: &str) -> Result<Session> {
        let mut session = Session {
            name: name.to_owned(),
            dir: WorkDir::new(name)?,
            ports: HashMap::new(),
            env: Vec::new(),
            prelude: String::new(),
            servers: Vec::new(),
            gateways: Vec::new(),
            joins: Vec::new(),
            outputs: Vec::new(),
            skipped: Vec::new(),
            pids: HashMap::new(),
        };
        let ws = session.port(1234)?;
        let admin = session.port(9090)?;
        let link = session.port(2206)?;
        let path = std::env::var("PATH").unwrap_or_default();
        session.env = vec![
            ("PATH".into(), format!("{path}:/usr/sbin:/usr/bin:/bin")),
            ("GATEWAY_LISTEN".into(), format!("127.0.0.1:{ws}")),
            ("GATEWAY_ADMIN".into(), format!("127.0.0.1:{admin}")),
            ("GATEWAY_BROKER_LISTEN".into(), format!("127.0.0.1:{link}")),
            ("GATEWAY_LOG_FORMAT".into(), "json".into()),
            ("BROKER_BROKER_LISTEN".into(), format!("127.0.0.1:{link}")),
            ("BROKER_LOG_FORMAT".into(), "json".into()),
            ("CLIENT_CLI_URL".into(), format!("ws://127.0.0.1:{ws}")),
            (
                "CLIENT_CLI_ADMIN_URL".into(),
                format!("http://127.0.0.1:{admin}"),
            ),
            ("PUSH_BENCH_URL".into(), format!("ws://127.0.0.1:{ws}")),
        ];
        Ok(session)
    }

    /// The working directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The free port standing for the docs' `port` (chosen the first time).
    pub fn port(&mut self, port: u16) -> Result<u16> {
        if let Some(mapped) = self.ports.get(&port) {
            return Ok(*mapped);
        }
        let free = test_support::redis::free_port()?;
        self.ports.insert(port, free);
        Ok(free)
    }

    /// Makes the docs' `port` stand for `real` (a server the test started itself).
    pub fn map_port(&mut self, port: u16, real: u16) {
        self.ports.insert(port, real);
    }

    /// Sets an environment variable for every line run from now on (as the reader's shell has).
    pub fn set_env(&mut self, name: &str, value: &str) {
        self.env.push((name.to_owned(), value.to_owned()));
    }

    /// Shell text run before each line, e.g. `producer() { cat messages.json; }` for a block
    /// that names the reader's own program.
    pub fn set_prelude(&mut self, prelude: &str) {
        prelude.clone_into(&mut self.prelude);
    }

    /// The client addresses of the gateways started, in order.
    pub fn gateway_addrs(&self) -> Vec<SocketAddr> {
        self.gateways.iter().map(|(addr, _)| *addr).collect()
    }

    /// Stops the gateways started so far (as a reader stops them before the next block), and
    /// waits until they are gone, so that their ports are free again.
    pub async fn stop_gateways(&mut self) -> Result<()> {
        for (_, mut gateway) in self.gateways.drain(..) {
            gateway.kill(EXIT_TIMEOUT).await?;
        }
        Ok(())
    }

    /// Runs every line of `block`, in order; `name` labels it in messages.
    pub async fn run_block(&mut self, name: &str, block: &str) -> Result<()> {
        for (i, (line, background)) in command_lines(block).into_iter().enumerate() {
            let label = format!("{} {name} line {}", self.name, i + 1);
            self.run_line(&label, &line, background)
                .await
                .with_context(|| format!("{label}: {line}"))?;
        }
        Ok(())
    }

    async fn run_line(&mut self, label: &str, line: &str, background: bool) -> Result<()> {
        let line = normalize_cargo_run(line);
        let (kind, words) = classify(&line)?;
        if let Kind::Skipped(reason) = kind {
            self.skipped.push((line, reason));
            return Ok(());
        }
        let text = self.rewrite(&line, &words)?;
        let program = words.first().cloned().unwrap_or_default();
        let name = program.rsplit('/').next().unwrap_or_default().to_owned();
        match kind {
            Kind::Skipped(_) => unreachable!("handled above"),
            Kind::Gateway | Kind::Broker => {
                let process = self.spawn(label, &text, true)?;
                let ready = if kind == Kind::Gateway {
                    "gateway listening"
                } else {
                    "broker listening"
                };
                let fields = process.wait_for_log(ready, STARTUP_TIMEOUT).await?;
                let addr: SocketAddr = fields
                    .get("addr")
                    .and_then(|a| a.as_str())
                    .with_context(|| format!("{ready:?} without addr"))?
                    .parse()?;
                self.pids.insert(name, process.pid()?);
                if kind == Kind::Gateway {
                    process.wait_for_log("bus up", STARTUP_TIMEOUT).await?;
                    self.gateways.push((addr, process));
                } else {
                    self.servers.push(process);
                }
            }
            Kind::Engine { port } => {
                let process = self.spawn(label, &text, true)?;
                self.pids.insert(name, process.pid()?);
                self.servers.push(process);
                let port = self.port(port)?;
                let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
                wait_until(
                    &format!("{label} accepts"),
                    STARTUP_TIMEOUT,
                    || async move { Ok(tokio::net::TcpStream::connect(addr).await?) },
                )
                .await?;
            }
            Kind::Join { finite } => {
                let process = self.spawn(label, &text, true)?;
                process
                    .wait_for_stderr_line("\"joined ...\" on stderr", STARTUP_TIMEOUT, |l| {
                        l.starts_with("joined ")
                    })
                    .await?;
                self.joins.push(Join {
                    line,
                    process,
                    finite,
                });
            }
            Kind::OneShot => {
                ensure!(!background, "no rule to run {program:?} in the background");
                let mut process = self.spawn(label, &text, false)?;
                let status = process.wait(ONE_SHOT_TIMEOUT).await?;
                ensure!(
                    status.success(),
                    "exited with {status}; stdout: {:?}; stderr: {:?}",
                    process.stdout(),
                    process.stderr_lines()
                );
                self.outputs.push((line, process.stdout()));
            }
        }
        Ok(())
    }

    /// Starts `text` through `sh -c` in the directory, with the session's environment;
    /// `exec` for a single program, so that the process is the program.
    fn spawn(&self, label: &str, text: &str, exec: bool) -> Result<Process> {
        let script = if exec {
            format!("{}exec {text}", self.prelude_text())
        } else {
            format!("{}{text}", self.prelude_text())
        };
        let mut cmd = command("sh");
        cmd.arg("-c").arg(script).current_dir(self.dir());
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        Process::spawn_command(label, cmd)
    }

    fn prelude_text(&self) -> String {
        if self.prelude.is_empty() {
            String::new()
        } else {
            format!("{}\n", self.prelude)
        }
    }

    /// The substitutions of the module's documentation, on one line.
    fn rewrite(&mut self, line: &str, words: &[String]) -> Result<String> {
        let mut text = line.to_owned();
        for name in BINARIES {
            let path = binary(name)?;
            text = text.replace(
                &format!("target/release/{name}"),
                path.to_str().context("a binary's path is not UTF-8")?,
            );
        }
        if words.first().is_some_and(|w| w == "nats-server") {
            let program = test_support::nats::program()?;
            text = format!(
                "{}{}",
                program.display(),
                text.strip_prefix("nats-server").unwrap_or_default()
            );
        }
        while let Some(start) = text.find("$(pgrep -n ") {
            let end = start
                + text[start..]
                    .find(')')
                    .context("an unclosed $(pgrep -n ...)")?;
            let name = text[start + "$(pgrep -n ".len()..end].trim().to_owned();
            let pid = self
                .pids
                .get(&name)
                .with_context(|| format!("pgrep -n {name}: the session started no {name}"))?;
            text.replace_range(start..=end, &pid.to_string());
        }
        text = text.replace("/etc/push/", "");
        if words
            .first()
            .is_some_and(|w| w.ends_with("target/release/push-bench"))
        {
            text = scale_bench(&text);
        }
        // `--port N`, `-p N`.
        let mut out = Vec::new();
        let mut previous = "";
        for word in text.split(' ') {
            if matches!(previous, "--port" | "-p") && word.chars().all(|c| c.is_ascii_digit()) {
                out.push(self.port(word.parse()?)?.to_string());
            } else {
                out.push(word.to_owned());
            }
            previous = word;
        }
        let text = out.join(" ");
        // `HOST:PORT`, in runs of address characters.
        let mut result = String::new();
        let mut run = String::new();
        for c in text.chars().chain(std::iter::once('\0')) {
            if c.is_ascii_alphanumeric() || c == '.' || c == ':' {
                run.push(c);
                continue;
            }
            let mapped = match run.rsplit_once(':') {
                Some((host, port))
                    if is_host(host)
                        && !port.is_empty()
                        && port.chars().all(|c| c.is_ascii_digit()) =>
                {
                    let host = if host == "localhost" || host.starts_with("127.") {
                        host
                    } else {
                        "127.0.0.1"
                    };
                    format!("{host}:{}", self.port(port.parse()?)?)
                }
                _ => run.clone(),
            };
            result.push_str(&mapped);
            run.clear();
            if c != '\0' {
                result.push(c);
            }
        }
        Ok(result)
    }

    /// Waits until join `index` has printed `lines` lines; returns them.
    pub async fn join_lines(&self, index: usize, lines: usize) -> Result<Vec<String>> {
        let join = self.joins.get(index).context("no such join")?;
        let mut printed = Vec::new();
        join.process
            .wait_for_stdout_line(
                &format!("{lines} lines from {}", join.line),
                STARTUP_TIMEOUT,
                |line| {
                    printed.push(line.to_owned());
                    printed.len() >= lines
                },
            )
            .await
            .with_context(|| format!("printed so far: {:?}", join.process.stdout()))?;
        Ok(join.process.stdout().lines().map(str::to_owned).collect())
    }

    /// Ends the session: every `client-cli join --count` must have exited 0.
    pub async fn finish(&mut self) -> Result<()> {
        for join in &mut self.joins {
            if join.finite {
                let status = join.process.wait(EXIT_TIMEOUT).await?;
                ensure!(
                    status.success(),
                    "{}: exited with {status}; stderr: {:?}",
                    join.line,
                    join.process.stderr_lines()
                );
            }
        }
        for (_, gateway) in &self.gateways {
            gateway.assert_no_panics()?;
        }
        Ok(())
    }
}

/// `cargo run --release -p NAME [-- ARGS]` as `target/release/NAME [ARGS]`.
fn normalize_cargo_run(line: &str) -> String {
    let Some(rest) = line.strip_prefix("cargo run --release -p ") else {
        return line.to_owned();
    };
    let (name, args) = rest.split_once(' ').unwrap_or((rest, ""));
    let args = args.trim_start();
    let args = args.strip_prefix("--").unwrap_or(args).trim_start();
    if args.is_empty() {
        format!("target/release/{name}")
    } else {
        format!("target/release/{name} {args}")
    }
}

/// What `line` is, and its words (split on spaces, quotes not interpreted).
fn classify(line: &str) -> Result<(Kind, Vec<String>)> {
    let words: Vec<String> = line.split(' ').map(str::to_owned).collect();
    if let Some((_, reason)) = SKIPPED.iter().find(|(prefix, _)| line.starts_with(prefix)) {
        return Ok((Kind::Skipped(reason), words));
    }
    for part in line.split('|') {
        let first = part.split_whitespace().next().unwrap_or_default();
        ensure!(
            !BINARIES.contains(&first),
            "{first:?} is not on the PATH: the docs run target/release/{first}"
        );
    }
    let program = words[0].as_str();
    let kind = match program.strip_prefix("target/release/") {
        _ if words.iter().any(|w| w == "--help" || w == "--version") => Kind::OneShot,
        Some("gateway") => Kind::Gateway,
        Some("broker") => Kind::Broker,
        Some("client-cli") if subcommand(&words) == Some("join") => Kind::Join {
            finite: words.iter().any(|w| w == "--count"),
        },
        _ if program == "redis-server" || program == "nats-server" => {
            let port = words
                .windows(2)
                .find(|w| matches!(w[0].as_str(), "--port" | "-p"))
                .map(|w| w[1].parse())
                .context("a server line without its port")??;
            Kind::Engine { port }
        }
        _ => Kind::OneShot,
    };
    if matches!(kind, Kind::OneShot) && line.contains("target/release/gateway") {
        bail!("no rule for this gateway line");
    }
    Ok((kind, words))
}

/// client-cli's subcommand in `words` (the first word that is neither an option nor its value).
fn subcommand(words: &[String]) -> Option<&str> {
    let mut words = words.iter().skip(1);
    while let Some(word) = words.next() {
        if matches!(
            word.as_str(),
            "--url" | "--admin-url" | "--token" | "--timeout"
        ) {
            words.next();
        } else if !word.starts_with('-') {
            return Some(word);
        }
    }
    None
}

/// A push-bench line with [`SCALED`]'s values.
fn scale_bench(text: &str) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut previous = String::new();
    for word in text.split(' ') {
        match SCALED.iter().find(|(flag, _)| *flag == previous) {
            Some((_, cap)) if previous == "--connections" => {
                let at_most = match (word.parse::<u64>(), cap.parse::<u64>()) {
                    (Ok(n), Ok(most)) if n > most => cap,
                    _ => word,
                };
                out.push(at_most.to_owned());
            }
            Some((_, value)) => out.push((*value).to_owned()),
            None => out.push(word.to_owned()),
        }
        previous = word.to_owned();
    }
    out.join(" ")
}

/// A fresh directory for a session's files, removed on drop.
#[derive(Debug)]
pub struct WorkDir(PathBuf);

impl WorkDir {
    pub fn new(name: &str) -> Result<WorkDir> {
        let dir = std::env::temp_dir().join(format!(
            "docs-{}-{}",
            std::process::id(),
            name.replace([' ', '/'], "-")
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        Ok(WorkDir(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_joined_and_comments_dropped() {
        let block = "a --x 1 \\\n   --y '#not' # comment\n\n# only a comment\nb &\nc \"x # y\"\n";
        assert_eq!(
            command_lines(block),
            vec![
                ("a --x 1 --y '#not'".to_owned(), false),
                ("b".to_owned(), true),
                ("c \"x # y\"".to_owned(), false),
            ]
        );
    }

    #[test]
    fn cargo_run_is_the_binary() {
        assert_eq!(
            normalize_cargo_run("cargo run --release -p gateway"),
            "target/release/gateway"
        );
        assert_eq!(
            normalize_cargo_run("cargo run --release -p client-cli -- join 123"),
            "target/release/client-cli join 123"
        );
    }

    #[test]
    fn bare_binaries_are_refused_and_skips_have_reasons() {
        assert!(classify("client-cli join 1").is_err());
        assert!(classify("echo x | push-bench fanout").is_err());
        assert!(matches!(
            classify("cargo build --release").map(|k| k.0),
            Ok(Kind::Skipped(_))
        ));
        assert!(matches!(
            classify("target/release/client-cli --url ws://x:1 join 1 --count 1").map(|k| k.0),
            Ok(Kind::Join { finite: true })
        ));
        assert!(matches!(
            classify("target/release/client-cli send 1 join").map(|k| k.0),
            Ok(Kind::OneShot)
        ));
    }

    #[test]
    fn bench_runs_are_scaled() {
        assert_eq!(
            scale_bench("b fanout --connections 1000 --duration 30s --rate 40"),
            "b fanout --connections 1000 --duration 1s --rate 40"
        );
        assert_eq!(
            scale_bench("b idle --connections 10000 --hold 10s"),
            "b idle --connections 1000 --hold 1s"
        );
    }

    #[test]
    fn headings_inside_fences_are_not_headings() {
        let md = "# T\n## A\n```sh\n# x\na\n```\n```text\n# y\n```\n### B\n  ```sh\n  b\n  ```\n";
        let blocks = sh_blocks(md);
        assert_eq!(blocks.len(), 2);
        assert_eq!(blocks[0].heading, "## A");
        assert_eq!(blocks[0].text, "# x\na\n");
        assert_eq!(blocks[1].heading, "### B");
    }
}
