//! In a real browser: the seed's console snippet, the demo page (gateway/static/demo.html)
//! used through its UI, the history example of docs/protocol.md (§5, "In a browser") and the
//! browser client's example of docs/client.md (gateway/static/client.js) across gateway
//! restarts. Headless Chromium, driven over WebDriver (fantoccini -> chromedriver).
//!
//! Needs Debian's `chromium` and `chromium-driver` packages (`.ci/run` installs them), so the
//! tests that drive a browser are `#[ignore]`d: `cargo test` reports them as ignored, and
//! `cargo test -- --include-ignored` (README's test command, which CI runs) runs them. Asked to
//! run without a browser, they fail and say what to install.
//!
//! Each test starts its own gateway, its own chromedriver (in its own process group, killed with
//! its browsers on drop) and one fresh profile per browser. Every wait in the page is a poll
//! with a deadline, and each test as a whole has one too ([`TEST_TIMEOUT`]).

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use e2e::history::{send_all, texts};
use e2e::{
    stat, Admin, Broker, Gateway, GatewayConfig, Process, EXIT_TIMEOUT, QUIET_PERIOD,
    STARTUP_TIMEOUT,
};
use fantoccini::wd::{Capabilities, TimeoutConfiguration};
use fantoccini::{ClientBuilder, Locator};
use futures_util::future::try_join_all;
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{json, Value};
use tokio::time::Instant;

/// A whole test, browsers included.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the page may take to reach an expected state.
const PAGE_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval between two looks at the page.
const PAGE_POLL: Duration = Duration::from_millis(50);
/// How long a browser may take to start (several may start at once on a small machine).
const SESSION_TIMEOUT: Duration = Duration::from_secs(30);
/// Browser window size, which is also the screenshot's.
const WINDOW: (u32, u32) = (1280, 960);

/// The seed's browser snippet (the code block of `../shared/seed/*.txt`), verbatim but for:
/// - the address: `127.0.0.1:1234` is replaced by the gateway's at run time (see [`seed_code`]);
/// - `C'est` is written `C\'est`. In the seed that apostrophe sits inside the single-quoted
///   JavaScript string passed to `ws.send`, where it ends the string: the snippet is a syntax
///   error in any browser. Escaped, the string holds exactly the seed's JSON, and the message
///   sent and logged is exactly the seed's `C'est le message`.
const SEED_SNIPPET: &str = r#"// Supposons que l'adresse IP du serveur soit 127.0.0.1, veuillez la remplacer par l'adresse IP réelle du serveur pour les tests
ws = new WebSocket('ws://127.0.0.1:1234');
ws.onmessage = function(data){console.log(data.data)};
ws.onopen = function() {
	ws.send('{"cmd":"add_group", "group_id":"123"}');
    ws.send('{"cmd":"send_to_group", "group_id":"123", "message":"C\'est le message"}');
};"#;

/// What the seed's snippet logs.
const SEED_MESSAGE: &str = "C'est le message";

/// Records every `console.log` call's arguments in `window.__logs`, then logs as usual.
const CONSOLE_HOOK: &str = r#"
window.__logs = [];
const log = console.log;
console.log = function (...args) {
  window.__logs.push(args);
  return log.apply(this, args);
};
"#;

/// docs/protocol.md, whose browser example of history and recovery the recovery test runs (see
/// [`history_example`]).
const PROTOCOL_DOC: &str =
    include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md"));

/// docs/client.md, whose example of the browser client the client test runs (see
/// [`client_example`]).
const CLIENT_DOC: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/client.md"));

/// README.md, whose short example of the browser client a test runs (see [`readme_client_code`]).
const README: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md"));

/// The browser client, as the gateway serves it at `/client.js`.
const CLIENT_JS: &str = include_str!(concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../gateway/static/client.js"
));

/// Runs `arguments[0]` as a module script of the page, as a `<script type="module">` does, and
/// records in `window.__errors` what fails: the module not loading, or an exception.
const RUN_MODULE: &str = r#"
window.__errors = [];
window.addEventListener('error', (e) => window.__errors.push(String(e.message)));
window.addEventListener('unhandledrejection', (e) => window.__errors.push(String(e.reason)));
const script = document.createElement('script');
script.type = 'module';
script.onerror = () => window.__errors.push('the module script did not load');
script.textContent = arguments[0];
document.documentElement.append(script);
"#;

/// The history groups of the recovery test's gateways, as in e2e/tests/history.rs.
const CHAT_HISTORY: &str = "chat:=1000,10m";

/// What the docs' history example leaves to the application, recorded in the page:
/// `show(text)` appends to `window.__shown`, `reloadState()` counts in `window.__reloads`.
const HISTORY_HOOKS: &str = r#"
window.__shown = [];
window.__reloads = 0;
window.show = function (text) { window.__shown.push(text); };
window.reloadState = function () { window.__reloads += 1; };
"#;

/// How long the docs' history example may take to come back once its gateway is back: its
/// backoff doubles from 500 ms to at most 10 s while the gateway is away, so the next retry may
/// be up to 10 s away.
const RECONNECT_TIMEOUT: Duration = Duration::from_secs(20);

// ---- tools ------------------------------------------------------------------------------------

/// Chromium and chromedriver, found on `PATH`.
#[derive(Debug, Clone)]
struct Tools {
    chromium: PathBuf,
    chromedriver: PathBuf,
}

impl Tools {
    /// The tools, or an error saying what to install: a test that was asked to run fails
    /// without them.
    fn find() -> Result<Tools> {
        let chromium = find_program("chromium");
        let chromedriver = find_program("chromedriver");
        match (chromium, chromedriver) {
            (Some(chromium), Some(chromedriver)) => Ok(Tools {
                chromium,
                chromedriver,
            }),
            (chromium, chromedriver) => {
                let missing: Vec<&str> = [("chromium", &chromium), ("chromedriver", &chromedriver)]
                    .iter()
                    .filter(|(_, path)| path.is_none())
                    .map(|(name, _)| *name)
                    .collect();
                let verb = if missing.len() == 1 { "is" } else { "are" };
                bail!(
                    "the browser tests need Chromium and ChromeDriver, but {} {verb} not on PATH. \
                     Install Debian's packages `chromium` and `chromium-driver` \
                     (`apt-get install -y chromium chromium-driver`), or run the tests without \
                     `--include-ignored` to leave these out.",
                    missing.join(" and ")
                )
            }
        }
    }
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// Runs a test body under [`TEST_TIMEOUT`], so that no hung browser call can hang the suite.
async fn within<T>(test: &str, body: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .with_context(|| format!("{test}: did not finish within {TEST_TIMEOUT:?}"))?
}

// ---- chromedriver -----------------------------------------------------------------------------

/// A chromedriver process. It starts the browsers, which stay in its process group: dropping
/// this kills the whole group, so a failed test leaves no browser behind.
#[derive(Debug)]
struct Chromedriver {
    process: Process,
    url: String,
    chromium: PathBuf,
}

impl Chromedriver {
    async fn start(tools: &Tools) -> Result<Chromedriver> {
        // The port is picked by binding port 0 and releasing it; another process could take it
        // in between, which makes chromedriver exit: then try another one.
        let mut last_error = None;
        for _ in 0..3 {
            match Chromedriver::start_once(tools).await {
                Ok(driver) => return Ok(driver),
                Err(e) => last_error = Some(e),
            }
        }
        Err(last_error.unwrap_or_else(|| anyhow::anyhow!("chromedriver did not start")))
    }

    async fn start_once(tools: &Tools) -> Result<Chromedriver> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("cannot pick a free port")?
            .port();
        let mut command = tokio::process::Command::new(&tools.chromedriver);
        command.arg(format!("--port={port}")).process_group(0);
        let mut process = Process::spawn_command("chromedriver", command)?;
        let url = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .context("cannot build the HTTP client")?;
        let deadline = Instant::now() + STARTUP_TIMEOUT;
        loop {
            if let Some(status) = process.try_wait()? {
                bail!(
                    "chromedriver exited at startup ({status}); stdout: {}",
                    process.stdout()
                );
            }
            let ready = match http.get(format!("{url}/status")).send().await {
                Ok(response) => response
                    .json::<Value>()
                    .await
                    .is_ok_and(|status| status["value"]["ready"] == json!(true)),
                Err(_) => false,
            };
            if ready {
                break;
            }
            if Instant::now() >= deadline {
                bail!("chromedriver not ready on {url} within {STARTUP_TIMEOUT:?}");
            }
            tokio::time::sleep(PAGE_POLL).await;
        }
        Ok(Chromedriver {
            process,
            url,
            chromium: tools.chromium.clone(),
        })
    }

    /// Starts a browser with a fresh profile.
    async fn browser(&self, name: &str) -> Result<Browser> {
        let profile = Profile::new()?;
        let (width, height) = WINDOW;
        let args = [
            "--headless".to_owned(),
            "--no-sandbox".to_owned(),
            "--disable-gpu".to_owned(),
            "--disable-quic".to_owned(),
            "--no-first-run".to_owned(),
            // This machine's network is closed: no connection to anything but the tests.
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-dev-shm-usage".to_owned(),
            format!("--window-size={width},{height}"),
            format!("--user-data-dir={}", profile.0.display()),
        ];
        let mut capabilities = Capabilities::new();
        capabilities.insert(
            "goog:chromeOptions".to_owned(),
            json!({"binary": self.chromium, "args": args}),
        );
        let client = tokio::time::timeout(
            SESSION_TIMEOUT,
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities)
                .connect(&self.url),
        )
        .await
        .with_context(|| format!("{name}: the browser did not start within {SESSION_TIMEOUT:?}"))?
        .with_context(|| format!("{name}: cannot start a browser session"))?;
        client
            .update_timeouts(TimeoutConfiguration::new(
                Some(PAGE_TIMEOUT),
                Some(PAGE_TIMEOUT),
                Some(Duration::ZERO),
            ))
            .await
            .with_context(|| format!("{name}: cannot set the WebDriver timeouts"))?;
        Ok(Browser {
            name: name.to_owned(),
            client,
            _profile: profile,
        })
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // process_group(0) made chromedriver's pid its process group id.
        if let Ok(pid) = self.process.pid() {
            let _ = std::process::Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A fresh, empty browser profile directory, removed on drop.
#[derive(Debug)]
struct Profile(PathBuf);

impl Profile {
    fn new() -> Result<Profile> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "e2e-chromium-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("cannot empty {}", dir.display()))?;
        }
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create {}", dir.display()))?;
        Ok(Profile(dir))
    }
}

impl Drop for Profile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---- one browser ------------------------------------------------------------------------------

/// One browser session (one window), and what the tests do with the demo page in it.
#[derive(Debug)]
struct Browser {
    name: String,
    client: fantoccini::Client,
    _profile: Profile,
}

impl Browser {
    async fn goto(&self, url: &str) -> Result<()> {
        self.client
            .goto(url)
            .await
            .with_context(|| format!("{}: cannot open {url}", self.name))
    }

    /// Runs `script` (a function body; `arguments` are `args`) in the page.
    async fn eval(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        self.client
            .execute(script, args)
            .await
            .with_context(|| format!("{}: script failed: {script}", self.name))
    }

    /// Polls `script` until it returns something other than `null` or `false`, and returns it.
    async fn wait_for(&self, what: &str, script: &str, args: Vec<Value>) -> Result<Value> {
        self.wait_for_within(what, PAGE_TIMEOUT, script, args).await
    }

    /// [`Browser::wait_for`], with a deadline of `timeout` instead of [`PAGE_TIMEOUT`].
    async fn wait_for_within(
        &self,
        what: &str,
        timeout: Duration,
        script: &str,
        args: Vec<Value>,
    ) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.eval(script, args.clone()).await?;
            if !matches!(value, Value::Null | Value::Bool(false)) {
                return Ok(value);
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: timed out after {timeout:?} waiting for {what}",
                    self.name
                );
            }
            tokio::time::sleep(PAGE_POLL).await;
        }
    }

    async fn text_of(&self, css: &str) -> Result<String> {
        let value = self
            .eval(
                "const e = document.querySelector(arguments[0]); return e && e.textContent;",
                vec![json!(css)],
            )
            .await?;
        value
            .as_str()
            .map(str::to_owned)
            .with_context(|| format!("{}: no element {css}", self.name))
    }

    /// Replaces the content of the input `css` by typing `text`.
    async fn fill(&self, css: &str, text: &str) -> Result<()> {
        let input = self
            .client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("{}: no element {css}", self.name))?;
        input.clear().await?;
        input
            .send_keys(text)
            .await
            .with_context(|| format!("{}: cannot type into {css}", self.name))
    }

    async fn click(&self, css: &str) -> Result<()> {
        self.client
            .find(Locator::Css(css))
            .await
            .with_context(|| format!("{}: no element {css}", self.name))?
            .click()
            .await
            .with_context(|| format!("{}: cannot click {css}", self.name))
    }

    /// Opens the demo page and waits until its WebSocket is open.
    async fn open_demo(&self, admin: SocketAddr) -> Result<()> {
        self.goto(&format!("http://{admin}/")).await?;
        self.wait_for(
            "the demo page to connect",
            "return document.getElementById('status').dataset.state === 'open';",
            vec![],
        )
        .await?;
        Ok(())
    }

    /// The groups the page lists as joined (acknowledged by the server).
    async fn joined_groups(&self) -> Result<Vec<String>> {
        let value = self
            .eval(
                "return Array.from(document.querySelectorAll('#groups li'), li => li.dataset.group);",
                vec![],
            )
            .await?;
        serde_json::from_value(value).context("the joined groups are not strings")
    }

    /// Joins `group` through the form and waits until the page lists it, which it does on the
    /// server's ack.
    async fn join(&self, group: &str) -> Result<()> {
        self.fill("#group-input", group).await?;
        self.click("#join-btn").await?;
        self.wait_for(
            &format!("group {group} to be listed as joined"),
            "return Array.from(document.querySelectorAll('#groups li')).some(li => li.dataset.group === arguments[0]);",
            vec![json!(group)],
        )
        .await?;
        Ok(())
    }

    /// Clicks the leave button of `group` and waits until the page no longer lists it.
    async fn leave(&self, group: &str) -> Result<()> {
        let mut button = None;
        for item in self.client.find_all(Locator::Css("#groups li")).await? {
            if item.attr("data-group").await?.as_deref() == Some(group) {
                button = Some(item.find(Locator::Css("button.leave-btn")).await?);
            }
        }
        button
            .with_context(|| format!("{}: group {group} is not listed", self.name))?
            .click()
            .await?;
        self.wait_for(
            &format!("group {group} to be gone from the list"),
            "return !Array.from(document.querySelectorAll('#groups li')).some(li => li.dataset.group === arguments[0]);",
            vec![json!(group)],
        )
        .await?;
        Ok(())
    }

    /// Sends `message` to `group` through the form and waits for the page's ack notice.
    async fn send(&self, group: &str, message: &str) -> Result<()> {
        self.fill("#send-group-input", group).await?;
        self.fill("#message-input", message).await?;
        // The notice may still show an earlier ack that looks the same.
        self.eval(
            "document.getElementById('notice').textContent = '';",
            vec![],
        )
        .await?;
        self.click("#send-btn").await?;
        self.wait_for(
            &format!("the ack of the send to {group}"),
            "return document.getElementById('notice').textContent === '✓ Sent to group ' + arguments[0];",
            vec![json!(group)],
        )
        .await?;
        Ok(())
    }

    /// Everything in `#messages`: (`msg` or `error`, text) in order.
    async fn entries(&self) -> Result<Vec<(String, String)>> {
        let value = self
            .eval(
                "return Array.from(document.querySelectorAll('#messages li.msg, #messages li.error'), \
                 li => [li.className, li.querySelector('.text').textContent]);",
                vec![],
            )
            .await?;
        serde_json::from_value(value).context("unexpected #messages entries")
    }

    /// Waits until `#messages` holds exactly `expected` (group messages, no error). Fails at
    /// once on anything that is not on the way there.
    async fn expect_messages(&self, expected: &[&str]) -> Result<()> {
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|text| ("msg".to_owned(), (*text).to_owned()))
            .collect();
        let deadline = Instant::now() + PAGE_TIMEOUT;
        loop {
            let entries = self.entries().await?;
            if entries == expected {
                return Ok(());
            }
            ensure!(
                expected.starts_with(&entries),
                "{}: #messages shows {entries:?}, expected {expected:?}",
                self.name
            );
            if Instant::now() >= deadline {
                bail!(
                    "{}: timed out after {PAGE_TIMEOUT:?}: #messages shows {entries:?}, expected \
                     {expected:?}",
                    self.name
                );
            }
            tokio::time::sleep(PAGE_POLL).await;
        }
    }

    /// Waits (up to `timeout`) until the docs' history example has shown exactly `expected`
    /// (`window.__shown`, see [`HISTORY_HOOKS`]). Fails at once on anything that is not on the
    /// way there: a message shown twice, out of order, or never sent.
    async fn expect_shown(&self, expected: &[String], timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let shown: Vec<String> =
                serde_json::from_value(self.eval("return window.__shown;", vec![]).await?)
                    .context("window.__shown holds the texts shown")?;
            if shown == expected {
                return Ok(());
            }
            ensure!(
                expected.starts_with(&shown),
                "{}: the page showed {shown:?}, expected {expected:?}",
                self.name
            );
            if Instant::now() >= deadline {
                bail!(
                    "{}: timed out after {timeout:?}: the page showed {shown:?}, expected \
                     {expected:?}",
                    self.name
                );
            }
            tokio::time::sleep(PAGE_POLL).await;
        }
    }

    /// How many times the docs' history example called `reloadState` (see [`HISTORY_HOOKS`]).
    async fn reloads(&self) -> Result<u64> {
        let value = self.eval("return window.__reloads;", vec![]).await?;
        value
            .as_u64()
            .with_context(|| format!("{}: window.__reloads is {value}", self.name))
    }

    /// What the page logged with `console.log` (see [`CONSOLE_HOOK`]), one line per call.
    async fn logged(&self) -> Result<Vec<String>> {
        let value = self
            .eval(
                "return window.__logs.map(args => args.map(String).join(' '));",
                vec![],
            )
            .await?;
        serde_json::from_value(value).context("window.__logs holds the console's lines")
    }

    /// Waits until the page has logged `line`; fails at once when a module script failed (see
    /// [`RUN_MODULE`]).
    async fn expect_logged(&self, line: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let errors = self.eval("return window.__errors;", vec![]).await?;
            ensure!(
                errors == json!([]),
                "{}: the page's script failed: {errors}",
                self.name
            );
            if self.logged().await?.iter().any(|logged| logged == line) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{}: timed out after {timeout:?} waiting for the log {line:?}; logged: {:?}",
                    self.name,
                    self.logged().await?
                );
            }
            tokio::time::sleep(PAGE_POLL).await;
        }
    }

    async fn close(self) -> Result<()> {
        self.client
            .close()
            .await
            .with_context(|| format!("{}: cannot close the browser", self.name))
    }
}

// ---- helpers ----------------------------------------------------------------------------------

/// Connections per worker, once the gateway counts `total` connections.
async fn worker_connections(admin: &Admin, total: u64) -> Result<Vec<u64>> {
    let stats = admin
        .wait_for_stats(&format!("{total} connections"), |s| {
            stat(s, "/connections") == Some(total)
        })
        .await?;
    let workers = stats["workers"]
        .as_array()
        .with_context(|| format!("no workers in the stats: {stats}"))?;
    Ok(workers
        .iter()
        .map(|w| stat(w, "/connections").unwrap_or(0))
        .collect())
}

/// The one worker whose connection count went up by one between two readings.
fn new_connection_worker(before: &[u64], after: &[u64]) -> Result<usize> {
    let grown: Vec<usize> = (0..after.len())
        .filter(|&i| after[i] != before.get(i).copied().unwrap_or(0))
        .collect();
    match grown[..] {
        [i] if after[i] == before.get(i).copied().unwrap_or(0) + 1 => Ok(i),
        _ => bail!("expected one new connection on one worker: {before:?} -> {after:?}"),
    }
}

/// Checks the PNG signature and reads the image size from the IHDR chunk.
fn png_size(png: &[u8]) -> Result<(u32, u32)> {
    const SIGNATURE: &[u8] = b"\x89PNG\r\n\x1a\n";
    ensure!(
        png.starts_with(SIGNATURE),
        "not a PNG ({} bytes)",
        png.len()
    );
    // The first chunk: length (13), "IHDR", width, height, all big-endian.
    let ihdr = png
        .get(8..24)
        .context("the PNG ends before its IHDR chunk")?;
    ensure!(&ihdr[4..8] == b"IHDR", "the PNG's first chunk is not IHDR");
    let word = |at: usize| u32::from_be_bytes([ihdr[at], ihdr[at + 1], ihdr[at + 2], ihdr[at + 3]]);
    Ok((word(8), word(12)))
}

/// The cargo target directory: the test executable is `<target>/<profile>/deps/e2e-<hash>`.
fn target_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the test executable")?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .with_context(|| format!("{} is not in a target directory", exe.display()))
}

/// The seed's snippet, pointed at `addr`.
fn seed_code(addr: SocketAddr) -> Result<String> {
    const SEED_URL: &str = "ws://127.0.0.1:1234";
    ensure!(SEED_SNIPPET.matches(SEED_URL).count() == 1);
    Ok(SEED_SNIPPET.replace(SEED_URL, &format!("ws://{addr}")))
}

/// The ```js block of docs/protocol.md §5 "In a browser", verbatim but for its URL: the page
/// it runs in is not served by the gateway's WebSocket listener, so `"ws://" + location.host +
/// "/"` becomes `"ws://ADDR/"`. It calls `show` and `reloadState`, which [`HISTORY_HOOKS`]
/// provides.
fn history_example(addr: SocketAddr) -> Result<String> {
    const HEADING: &str = "\n### In a browser\n";
    const URL: &str = r#""ws://" + location.host + "/""#;
    let (_, section) = PROTOCOL_DOC
        .split_once("\n## 5. History and recovery\n")
        .and_then(|(_, history)| history.split_once(HEADING))
        .context("docs/protocol.md has no §5 \"History and recovery\", \"In a browser\"")?;
    // The section ends at the next heading; the example is its first ```js block.
    let section = section.split("\n#").next().unwrap_or_default();
    let (_, code) = section
        .split_once("```js\n")
        .context("docs/protocol.md §5 \"In a browser\" has no ```js block")?;
    let (code, _) = code
        .split_once("\n```")
        .context("docs/protocol.md §5 \"In a browser\": the ```js block is not closed")?;
    ensure!(
        code.matches(URL).count() == 1,
        "docs/protocol.md §5 \"In a browser\" no longer connects to {URL}: update the test"
    );
    for hook in ["show(", "reloadState("] {
        ensure!(
            code.contains(hook),
            "docs/protocol.md §5 \"In a browser\" no longer calls {hook}): update the test"
        );
    }
    Ok(code.replace(URL, &json!(format!("ws://{addr}/")).to_string()))
}

/// The ```js block of docs/client.md "Example", verbatim but for its URL, which becomes the
/// gateway's (`addr`). It imports `/client.js` (the page must come from the gateway's admin
/// server), and calls `show` and `reloadState`, which [`HISTORY_HOOKS`] provides.
fn client_example(addr: SocketAddr) -> Result<String> {
    const URL: &str = r#""ws://127.0.0.1:1234/""#;
    let (_, section) = CLIENT_DOC
        .split_once("\n## Example\n")
        .context("docs/client.md has no \"Example\" section")?;
    let section = section.split("\n#").next().unwrap_or_default();
    let (_, code) = section
        .split_once("```js\n")
        .context("docs/client.md \"Example\" has no ```js block")?;
    let (code, _) = code
        .split_once("\n```")
        .context("docs/client.md \"Example\": the ```js block is not closed")?;
    ensure!(
        code.matches(URL).count() == 1,
        "docs/client.md \"Example\" no longer connects to {URL}: update the test"
    );
    for needle in [
        r#"from "/client.js""#,
        "show(",
        "reloadState(",
        "window.client = client",
    ] {
        ensure!(
            code.contains(needle),
            "docs/client.md \"Example\" no longer has {needle}: update the test"
        );
    }
    Ok(code.replace(URL, &json!(format!("ws://{addr}/")).to_string()))
}

/// The ```javascript block after README's "**Browser client.**", pointed at `addr`.
fn readme_client_code(addr: SocketAddr) -> Result<String> {
    const URL: &str = r#""ws://127.0.0.1:1234/""#;
    let (_, section) = README
        .split_once("**Browser client.**")
        .context("README has no \"**Browser client.**\" paragraph")?;
    let (_, code) = section
        .split_once("```javascript\n")
        .context("README's \"Browser client\" has no ```javascript block")?;
    let (code, _) = code
        .split_once("\n```")
        .context("README's \"Browser client\": the block is not closed")?;
    ensure!(
        code.matches(URL).count() == 1,
        "README's \"Browser client\" block no longer connects to {URL}: update the test"
    );
    Ok(code.replace(URL, &json!(format!("ws://{addr}/")).to_string()))
}

/// A gateway linked to `broker`, with [`CHAT_HISTORY`] and no rate limit (as e2e/tests/history.rs
/// starts them), its WebSocket listener on `listen`. [`Gateway::start`] always listens on a free
/// port (and the gateway takes `--listen` once); one that stands in for a killed gateway must
/// take its port, for the page to find it again.
async fn chat_gateway(name: &str, broker: SocketAddr, listen: SocketAddr) -> Result<Gateway> {
    let args = [
        "--listen",
        &listen.to_string(),
        "--workers",
        "2",
        "--admin",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--broker",
        &broker.to_string(),
        "--max-messages-per-second=0",
        "--history",
        CHAT_HISTORY,
    ]
    .map(String::from);
    let process = Process::spawn(name, "gateway", args)?;
    let addr = logged_addr(&process, "gateway listening").await?;
    let admin = Admin::new(name, logged_addr(&process, "admin listening").await?)?;
    process.wait_for_log("bus up", STARTUP_TIMEOUT).await?;
    Ok(Gateway {
        process,
        addr,
        admin,
        embedded_broker: None,
    })
}

/// The address in the `addr` field of `process`'s first log event `message`.
async fn logged_addr(process: &Process, message: &str) -> Result<SocketAddr> {
    let fields = process.wait_for_log(message, STARTUP_TIMEOUT).await?;
    let addr = fields
        .get("addr")
        .and_then(Value::as_str)
        .with_context(|| format!("{}: {message:?} has no addr: {fields:?}", process.name()))?;
    addr.parse()
        .with_context(|| format!("{}: {message:?}: bad addr {addr:?}", process.name()))
}

/// SIGKILLs a gateway (no goodbye to its clients) after checking it did not panic.
async fn stop(gateway: &mut Gateway) -> Result<()> {
    gateway.process.kill(EXIT_TIMEOUT).await?;
    gateway.process.assert_no_panics()
}

/// Removes `group`'s history through `gateway`'s admin API: its next message starts a new epoch.
async fn remove_history(gateway: &Gateway, group: &str) -> Result<()> {
    let (status, answer) = gateway
        .admin
        .call(
            gateway
                .admin
                .http()
                .post(gateway.admin.url("/api/history_remove"))
                .header("content-type", "application/json")
                .body(json!({ "group_id": group }).to_string()),
        )
        .await?;
    ensure!(
        status == 200 && answer["removed"] == true,
        "{status} {answer}"
    );
    Ok(())
}

/// Waits until `gateway` has its one page joined to chat:1.
async fn page_joined(gateway: &Gateway) -> Result<()> {
    gateway
        .admin
        .wait_for_stats("the page in chat:1", |s| {
            stat(s, "/connections") == Some(1) && stat(s, "/memberships") == Some(1)
        })
        .await?;
    Ok(())
}

// ---- tests ------------------------------------------------------------------------------------

/// The seed's test: its snippet, run in a page as if typed into the console, logs the message,
/// and nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver: run with --include-ignored"]
async fn seed_snippet_logs_the_message() -> Result<()> {
    seed_snippet(
        "seed_snippet_logs_the_message",
        GatewayConfig::embedded("gateway"),
        false,
    )
    .await
}

/// The same on a group with history (`--history`): the snippet's raw membership still gets the
/// message alone, without a position.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver: run with --include-ignored"]
async fn seed_snippet_logs_the_message_of_a_history_group() -> Result<()> {
    seed_snippet(
        "seed_snippet_logs_the_message_of_a_history_group",
        GatewayConfig::embedded("gateway")
            .arg("--history")
            .arg("12=100,10m"),
        true,
    )
    .await
}

/// `history`: group 123 has history (its two messages must be in it).
async fn seed_snippet(test: &str, config: GatewayConfig, history: bool) -> Result<()> {
    let tools = Tools::find()?;
    within(test, async {
        let gateway = Gateway::start(config).await?;
        let driver = Chromedriver::start(&tools).await?;
        let browser = driver.browser("browser").await?;
        // Any page of a local origin will do, as any tab's console does for the seed.
        browser
            .goto(&format!("http://{}/healthz", gateway.admin.addr()))
            .await?;
        browser.eval(CONSOLE_HOOK, vec![]).await?;
        browser.eval(&seed_code(gateway.addr)?, vec![]).await?;

        let logs = browser
            .wait_for(
                "the seed's message in the console",
                "return window.__logs.some(args => args.includes(arguments[0])) && window.__logs;",
                vec![json!(SEED_MESSAGE)],
            )
            .await?;
        ensure!(
            logs == json!([[SEED_MESSAGE]]),
            "the console shows {logs}, expected only {SEED_MESSAGE:?}"
        );

        // Barrier: a message sent to 123 after the seed's is logged after anything else the
        // snippet's connection received, so the log must then be exactly these two.
        let mut other = gateway.connect("other").await?;
        other.send_to_group("123", "barrier").await?;
        let logs = browser
            .wait_for(
                "the barrier in the console",
                "return window.__logs.length >= 2 && window.__logs;",
                vec![],
            )
            .await?;
        ensure!(
            logs == json!([[SEED_MESSAGE], ["barrier"]]),
            "the console shows {logs}, expected {SEED_MESSAGE:?} then \"barrier\""
        );
        let state = browser.eval("return ws.readyState;", vec![]).await?;
        ensure!(
            state == json!(1),
            "the snippet's WebSocket is no longer open ({state})"
        );
        other.expect_silence(QUIET_PERIOD).await?;
        let (status, body) = gateway.admin.get("/api/history/123").await?;
        if history {
            let page: Value = serde_json::from_str(&body)?;
            ensure!(
                status == 200 && page["messages"][1]["message"] == "barrier",
                "group 123 holds both messages in its history: {status} {body}"
            );
        } else {
            ensure!(
                status == 400 && body.contains("no_history"),
                "{status} {body}"
            );
        }

        browser.close().await?;
        gateway.process.assert_no_panics()
    })
    .await
}

/// The history example of docs/protocol.md (§5, "In a browser", read from the docs: see
/// [`history_example`]) across gateway restarts. Its page's gateway is SIGKILLed while messages
/// go on through another gateway on the same broker, and a new one takes its port: the page
/// reconnects and recovers what it missed, then shows the live messages, each message once and
/// in order, without reloading. The history is then removed while the page is away again: on
/// its next reconnect the page reloads its state (`recovered:false`), then shows the live ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver: run with --include-ignored"]
async fn history_example_recovers_across_gateway_restarts() -> Result<()> {
    let tools = Tools::find()?;
    within("history_example_recovers_across_gateway_restarts", async {
        let broker = Broker::start("broker").await?;
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        // The sender's gateway stays up throughout; the page's is killed and replaced, twice.
        let sending = chat_gateway("gateway-sender", broker.addr, any_port).await?;
        let mut serving = chat_gateway("gateway-page", broker.addr, any_port).await?;
        let page_addr = serving.addr;
        let driver = Chromedriver::start(&tools).await?;
        let page = driver.browser("page").await?;
        // Any page of a local origin will do: the example is given the gateway's address.
        page.goto(&format!("http://{}/healthz", serving.admin.addr()))
            .await?;
        page.eval(HISTORY_HOOKS, vec![]).await?;
        page.eval(&history_example(page_addr)?, vec![]).await?;
        page_joined(&serving).await?;

        let mut sender = sending.connect("sender").await?;
        let mut expected = texts(0, 5);
        send_all(&mut sender, "chat:1", texts(0, 5)).await?;
        page.expect_shown(&expected, PAGE_TIMEOUT).await?;

        // The page's gateway dies; what is sent meanwhile is kept by the broker.
        stop(&mut serving).await?;
        send_all(&mut sender, "chat:1", texts(5, 10)).await?;
        expected.extend(texts(5, 10));
        serving = chat_gateway("gateway-page (restarted)", broker.addr, page_addr).await?;
        ensure!(serving.addr == page_addr, "{} != {page_addr}", serving.addr);
        // Only a recovery can bring these: they were sent while the page was away.
        page.expect_shown(&expected, RECONNECT_TIMEOUT).await?;
        page_joined(&serving).await?;
        send_all(&mut sender, "chat:1", texts(10, 15)).await?;
        expected.extend(texts(10, 15));
        page.expect_shown(&expected, PAGE_TIMEOUT).await?;
        ensure!(
            page.reloads().await? == 0,
            "reloadState was called, though the recovery had everything"
        );

        // Away again, and the group's history is removed meanwhile: a new epoch.
        stop(&mut serving).await?;
        remove_history(&sending, "chat:1").await?;
        serving = chat_gateway("gateway-page (restarted again)", broker.addr, page_addr).await?;
        page.wait_for_within(
            "reloadState after the reconnection",
            RECONNECT_TIMEOUT,
            "return window.__reloads > 0;",
            vec![],
        )
        .await?;
        page_joined(&serving).await?;
        send_all(&mut sender, "chat:1", texts(15, 18)).await?;
        expected.extend(texts(15, 18));
        page.expect_shown(&expected, PAGE_TIMEOUT).await?;

        // Nothing late either.
        tokio::time::sleep(QUIET_PERIOD).await;
        page.expect_shown(&expected, Duration::ZERO).await?;
        let reloads = page.reloads().await?;
        ensure!(reloads == 1, "reloadState was called {reloads} times");

        page.close().await?;
        sending.process.assert_no_panics()?;
        serving.process.assert_no_panics()?;
        broker.process.assert_no_panics()
    })
    .await
}

/// The browser client's example (docs/client.md, read from the docs: see [`client_example`]),
/// on a page that imports the module from the gateway, across gateway restarts. The example's
/// join and send promises resolve (it logs what they gave). Its gateway is SIGKILLed while
/// messages go on through another gateway on the same broker, and a new one takes its port: the
/// client reconnects by itself, joins again from its last position and recovers what it missed
/// (`recovered` true), then receives the live messages, each message once and in order, and a
/// send from the page is acknowledged. With the history removed while it is away, the next
/// reconnection reports `recovered` false and the page reloads its state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver: run with --include-ignored"]
async fn client_recovers_across_gateway_restarts() -> Result<()> {
    let tools = Tools::find()?;
    within("client_recovers_across_gateway_restarts", async {
        let broker = Broker::start("broker").await?;
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let sending = chat_gateway("gateway-sender", broker.addr, any_port).await?;
        let mut serving = chat_gateway("gateway-page", broker.addr, any_port).await?;
        let page_addr = serving.addr;
        let driver = Chromedriver::start(&tools).await?;
        let page = driver.browser("page").await?;
        // A page of the gateway's admin server, where "/client.js" is; the module stays loaded
        // when that server is gone.
        page.goto(&format!("http://{}/healthz", serving.admin.addr()))
            .await?;
        page.eval(CONSOLE_HOOK, vec![]).await?;
        page.eval(HISTORY_HOOKS, vec![]).await?;
        page.eval(RUN_MODULE, vec![json!(client_example(page_addr)?)])
            .await?;

        // The join resolves with the joined reply (a new group: offset 0), the send on its ack.
        page.expect_logged("joined chat:1 at offset 0", PAGE_TIMEOUT)
            .await?;
        page.expect_logged("sent", PAGE_TIMEOUT).await?;
        let mut expected = vec!["hello".to_owned()];
        page.expect_shown(&expected, PAGE_TIMEOUT).await?;
        page_joined(&serving).await?;

        let mut sender = sending.connect("sender").await?;
        send_all(&mut sender, "chat:1", texts(0, 5)).await?;
        expected.extend(texts(0, 5));
        page.expect_shown(&expected, PAGE_TIMEOUT).await?;

        // The page's gateway dies; what is sent meanwhile is kept by the broker.
        stop(&mut serving).await?;
        send_all(&mut sender, "chat:1", texts(5, 10)).await?;
        expected.extend(texts(5, 10));
        serving = chat_gateway("gateway-page (restarted)", broker.addr, page_addr).await?;
        ensure!(serving.addr == page_addr, "{} != {page_addr}", serving.addr);
        // Only a recovery can bring these: they were sent while the page was away.
        page.expect_shown(&expected, RECONNECT_TIMEOUT).await?;
        page.expect_logged("chat:1 recovered: true", PAGE_TIMEOUT)
            .await?;
        page_joined(&serving).await?;
        send_all(&mut sender, "chat:1", texts(10, 15)).await?;
        expected.extend(texts(10, 15));
        page.expect_shown(&expected, PAGE_TIMEOUT).await?;

        // The page's own send on the new connection: acknowledged, and received as a member.
        let answer = page
            .eval(
                "return window.client.send('chat:1', 'from the page')
                     .then(reply => reply.cmd, error => 'rejected: ' + error.code);",
                vec![],
            )
            .await?;
        ensure!(answer == json!("ack"), "the page's send: {answer}");
        expected.push("from the page".to_owned());
        page.expect_shown(&expected, PAGE_TIMEOUT).await?;
        ensure!(
            page.reloads().await? == 0,
            "reloadState was called, though the recovery had everything"
        );
        let logged = page.logged().await?;
        ensure!(
            logged
                .iter()
                .any(|line| line.starts_with("closed (1006), retrying in ")),
            "the example did not log the loss of its connection: {logged:?}"
        );

        // Away again, and the group's history is removed meanwhile: a new epoch.
        stop(&mut serving).await?;
        remove_history(&sending, "chat:1").await?;
        serving = chat_gateway("gateway-page (restarted again)", broker.addr, page_addr).await?;
        page.expect_logged("chat:1 recovered: false", RECONNECT_TIMEOUT)
            .await?;
        ensure!(page.reloads().await? == 1, "recovered false: reloadState");
        page_joined(&serving).await?;
        send_all(&mut sender, "chat:1", texts(15, 18)).await?;
        expected.extend(texts(15, 18));
        page.expect_shown(&expected, PAGE_TIMEOUT).await?;

        // Nothing late either, and each recovery reported once.
        tokio::time::sleep(QUIET_PERIOD).await;
        page.expect_shown(&expected, Duration::ZERO).await?;
        ensure!(page.reloads().await? == 1, "reloadState called again");
        let logged = page.logged().await?;
        let recoveries: Vec<&String> = logged
            .iter()
            .filter(|line| line.starts_with("chat:1 recovered: "))
            .collect();
        ensure!(
            recoveries == ["chat:1 recovered: true", "chat:1 recovered: false"],
            "recoveries logged: {recoveries:?}"
        );

        page.close().await?;
        sending.process.assert_no_panics()?;
        serving.process.assert_no_panics()?;
        broker.process.assert_no_panics()
    })
    .await
}

/// README's short example of the browser client, run as written (but for the address) in a
/// page of the gateway's admin server: it logs the message it sent to the group it joined, and
/// nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver: run with --include-ignored"]
async fn readme_client_example_logs_the_message() -> Result<()> {
    let tools = Tools::find()?;
    within("readme_client_example_logs_the_message", async {
        let gateway = Gateway::start(GatewayConfig::embedded("gateway")).await?;
        let driver = Chromedriver::start(&tools).await?;
        let page = driver.browser("page").await?;
        page.goto(&format!("http://{}/healthz", gateway.admin.addr()))
            .await?;
        page.eval(CONSOLE_HOOK, vec![]).await?;
        page.eval(RUN_MODULE, vec![json!(readme_client_code(gateway.addr)?)])
            .await?;
        page.expect_logged("hello", PAGE_TIMEOUT).await?;
        // Barrier: a later message to 123 is logged after anything else the page received.
        let mut other = gateway.connect("other").await?;
        other.send_to_group("123", "barrier").await?;
        page.expect_logged("barrier", PAGE_TIMEOUT).await?;
        let logged = page.logged().await?;
        ensure!(
            logged == ["hello", "barrier"],
            "the console shows {logged:?}, expected \"hello\" then \"barrier\""
        );
        page.close().await?;
        gateway.process.assert_no_panics()
    })
    .await
}

/// Two demo pages in group 123, on different workers, show a message sent from a third page;
/// after one of them leaves the group, only the other shows the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver: run with --include-ignored"]
async fn demo_pages_join_send_and_leave() -> Result<()> {
    let tools = Tools::find()?;
    within("demo_pages_join_send_and_leave", async {
        let gateway = Gateway::start(GatewayConfig::embedded("gateway").workers(2)).await?;
        let driver = Chromedriver::start(&tools).await?;
        let names = ["page-a", "page-b", "page-c"];
        let pages = try_join_all(names.map(|name| driver.browser(name))).await?;
        let [a, b, c] = <[Browser; 3]>::try_from(pages)
            .map_err(|_| anyhow::anyhow!("expected three browsers"))?;

        // Open the pages one at a time, to see which worker each connection lands on.
        let mut counts = worker_connections(&gateway.admin, 0).await?;
        let mut workers = Vec::new();
        for (i, page) in [&a, &b, &c].into_iter().enumerate() {
            page.open_demo(gateway.admin.addr()).await?;
            let now = worker_connections(&gateway.admin, i as u64 + 1).await?;
            workers.push(new_connection_worker(&counts, &now)?);
            counts = now;
        }
        ensure!(
            workers[0] != workers[1],
            "pages a and b landed on the same worker: {workers:?}"
        );

        // a and b in 123; every page in "lobby", the group of the barriers.
        for page in [&a, &b] {
            page.join("123").await?;
        }
        for page in [&a, &b, &c] {
            page.join("lobby").await?;
        }
        gateway
            .admin
            .wait_for_stats("two groups, five memberships", |s| {
                stat(s, "/groups") == Some(2) && stat(s, "/memberships") == Some(5)
            })
            .await?;

        // c sends to 123, then a barrier to lobby: if c were to receive its own message, it
        // would come before the barrier (one sender's messages arrive in order).
        c.send("123", "hello 123").await?;
        c.send("lobby", "barrier 1").await?;
        a.expect_messages(&["hello 123", "barrier 1"]).await?;
        b.expect_messages(&["hello 123", "barrier 1"]).await?;
        c.expect_messages(&["barrier 1"]).await?;

        b.leave("123").await?;
        ensure!(b.joined_groups().await? == ["lobby"]);
        gateway
            .admin
            .wait_for_stats("b's membership of 123 gone", |s| {
                stat(s, "/memberships") == Some(4)
            })
            .await?;
        c.send("123", "after b left").await?;
        c.send("lobby", "barrier 2").await?;
        a.expect_messages(&["hello 123", "barrier 1", "after b left", "barrier 2"])
            .await?;
        b.expect_messages(&["hello 123", "barrier 1", "barrier 2"])
            .await?;
        c.expect_messages(&["barrier 1", "barrier 2"]).await?;

        // Nothing late either.
        tokio::time::sleep(QUIET_PERIOD).await;
        a.expect_messages(&["hello 123", "barrier 1", "after b left", "barrier 2"])
            .await?;
        b.expect_messages(&["hello 123", "barrier 1", "barrier 2"])
            .await?;
        c.expect_messages(&["barrier 1", "barrier 2"]).await?;

        try_join_all([a.close(), b.close(), c.close()]).await?;
        gateway.process.assert_no_panics()
    })
    .await
}

/// The demo page across a restart of its gateway (killed; a new one takes its port): its client
/// reconnects by itself and joins the page's groups again, which receive messages again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver: run with --include-ignored"]
async fn demo_page_joins_again_after_a_gateway_restart() -> Result<()> {
    let tools = Tools::find()?;
    within("demo_page_joins_again_after_a_gateway_restart", async {
        let broker = Broker::start("broker").await?;
        let any_port = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut serving = chat_gateway("gateway", broker.addr, any_port).await?;
        let driver = Chromedriver::start(&tools).await?;
        let page = driver.browser("page").await?;
        page.open_demo(serving.admin.addr()).await?;
        page.join("123").await?;
        page.join("lobby").await?;
        let mut sender = serving.connect("sender").await?;
        sender.send_to_group("123", "before").await?;
        page.expect_messages(&["before"]).await?;

        let page_addr = serving.addr;
        stop(&mut serving).await?;
        page.wait_for(
            "the page to show the lost connection",
            "return document.getElementById('status').dataset.state === 'closed';",
            vec![],
        )
        .await?;
        serving = chat_gateway("gateway (restarted)", broker.addr, page_addr).await?;
        page.wait_for_within(
            "the page to connect again",
            RECONNECT_TIMEOUT,
            "return document.getElementById('status').dataset.state === 'open';",
            vec![],
        )
        .await?;
        serving
            .admin
            .wait_for_stats("the page in its two groups again", |s| {
                stat(s, "/connections") == Some(1) && stat(s, "/memberships") == Some(2)
            })
            .await?;
        ensure!(page.joined_groups().await? == ["123", "lobby"]);
        let mut sender = serving.connect("sender").await?;
        sender.send_to_group("123", "after").await?;
        sender.send_to_group("lobby", "barrier").await?;
        page.expect_messages(&["before", "after", "barrier"])
            .await?;

        page.close().await?;
        serving.process.assert_no_panics()?;
        broker.process.assert_no_panics()
    })
    .await
}

/// The members the page lists for `group`: `(client id, uid text)` in page order, once the list
/// is ready.
async fn member_list(page: &Browser, group: &str) -> Result<Vec<(String, String)>> {
    let value = page
        .eval(
            "const card = document.getElementById('members-' + arguments[0]);
             if (!card || card.dataset.status !== 'ready') return null;
             return Array.from(card.querySelectorAll('li[data-client-id]'),
                 li => [li.dataset.clientId, li.querySelector('.uid').textContent]);",
            vec![json!(group)],
        )
        .await?;
    if value.is_null() {
        return Ok(Vec::new());
    }
    serde_json::from_value(value).context("member rows are (client id, uid) pairs")
}

/// The client id the page shows, once it shows one.
async fn shown_client_id(page: &Browser) -> Result<String> {
    let id = page
        .wait_for(
            "the connection's client id",
            "const t = document.getElementById('client-id').textContent;
             return /^[0-9a-f]{16}-[0-9]+-[0-9]+$/.test(t) ? t : null;",
            vec![],
        )
        .await?;
    id.as_str()
        .map(str::to_owned)
        .context("the client id is text")
}

/// The page shows its connection's client id and uid, and a live member list of each group it
/// joined, kept by presence events from the other pages (on another gateway too).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver: run with --include-ignored"]
async fn demo_page_shows_identity_and_live_members() -> Result<()> {
    let tools = Tools::find()?;
    within("demo_page_shows_identity_and_live_members", async {
        let a_gateway = Gateway::start(GatewayConfig::embedded("gateway-a").workers(1)).await?;
        let broker = a_gateway
            .embedded_broker
            .context("gateway-a embeds the broker")?;
        let b_gateway =
            Gateway::start(GatewayConfig::with_broker("gateway-b", broker).workers(1)).await?;
        let driver = Chromedriver::start(&tools).await?;
        let a = driver.browser("page-a").await?;
        let b = driver.browser("page-b").await?;
        a.open_demo(a_gateway.admin.addr()).await?;
        b.open_demo(b_gateway.admin.addr()).await?;

        let a_id = shown_client_id(&a).await?;
        let b_id = shown_client_id(&b).await?;
        ensure!(a_id != b_id, "two connections, one id: {a_id}");
        ensure!(a.text_of("#uid").await? == "none", "no uid before binding");
        a.fill("#uid-input", "alice").await?;
        a.click("#bind-btn").await?;
        a.wait_for(
            "uid alice",
            "return document.getElementById('uid').textContent === 'alice';",
            vec![],
        )
        .await?;

        a.join("room").await?;
        b.join("room").await?;
        for page in [&a, &b] {
            let deadline = Instant::now() + PAGE_TIMEOUT;
            loop {
                let members = member_list(page, "room").await?;
                let ids: Vec<&str> = members.iter().map(|(id, _)| id.as_str()).collect();
                if ids.contains(&a_id.as_str()) && ids.contains(&b_id.as_str()) && ids.len() == 2 {
                    let alice = members.iter().find(|(id, _)| *id == a_id);
                    ensure!(
                        alice.is_some_and(|(_, uid)| uid.contains("alice")),
                        "a's row shows its uid: {members:?}"
                    );
                    break;
                }
                ensure!(
                    Instant::now() < deadline,
                    "the member lists never showed both pages: {members:?}"
                );
                tokio::time::sleep(PAGE_POLL).await;
            }
        }

        // b leaves: a's list follows, from the leave event.
        b.leave("room").await?;
        a.wait_for(
            "b gone from a's member list",
            "const card = document.getElementById('members-room');
             return card && card.querySelectorAll('li[data-client-id]').length === 1;",
            vec![],
        )
        .await?;
        ensure!(
            member_list(&a, "room").await?
                == [(a_id.clone(), a.text_of("#members-room li .uid").await?)],
            "only a is left"
        );
        try_join_all([a.close(), b.close()]).await?;
        a_gateway.process.assert_no_panics()?;
        b_gateway.process.assert_no_panics()
    })
    .await
}

/// The page escapes what it shows, shows error replies apart, shows live stats, and looks right:
/// a screenshot is saved to `target/demo-screenshot.png`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver: run with --include-ignored"]
async fn demo_page_screenshot() -> Result<()> {
    let tools = Tools::find()?;
    within("demo_page_screenshot", async {
        let gateway = Gateway::start(GatewayConfig::embedded("gateway").workers(2)).await?;
        let driver = Chromedriver::start(&tools).await?;
        let page = driver.browser("page").await?;
        page.open_demo(gateway.admin.addr()).await?;
        page.join("123").await?;
        page.join("news").await?;

        let markup = r#"<b>not bold</b> & "quoted" <img src=x onerror=alert(1)>"#;
        page.send("123", "Hello from the demo page").await?;
        page.send("news", markup).await?;
        page.expect_messages(&["Hello from the demo page", markup])
            .await?;
        let elements = page
            .eval(
                "return document.querySelectorAll('#messages b, #messages img').length;",
                vec![],
            )
            .await?;
        ensure!(elements == json!(0), "message text was parsed as HTML");

        // A group id over the gateway's 256-byte limit: the server's error reply is shown as
        // an error entry.
        page.fill("#group-input", &"g".repeat(257)).await?;
        page.click("#join-btn").await?;
        page.wait_for(
            "the error reply",
            "const e = document.querySelector('#messages li.error .text'); return e && e.textContent;",
            vec![],
        )
        .await
        .and_then(|text| {
            ensure!(
                text.as_str().is_some_and(|t| t.starts_with("invalid_group_id: ")),
                "unexpected error entry {text}"
            );
            Ok(())
        })?;
        ensure!(page.joined_groups().await? == ["123", "news"]);

        page.wait_for(
            "live stats",
            "return document.getElementById('stat-connections').textContent === '1' \
             && document.getElementById('stat-groups').textContent === '2' \
             && document.querySelectorAll('#stat-workers tr').length === 2;",
            vec![],
        )
        .await?;

        let png = page.client.screenshot().await.context("screenshot failed")?;
        let (width, height) = png_size(&png)?;
        ensure!(width > 0 && height > 0, "the screenshot is {width}x{height}");
        let path = target_dir()?.join("demo-screenshot.png");
        std::fs::write(&path, &png).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("demo page screenshot ({width}x{height}): {}", path.display());

        page.close().await?;
        gateway.process.assert_no_panics()
    })
    .await
}

/// With `--api-token`, `/api/stats` answers 401: the page asks for the token and then shows the
/// stats.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs chromium and chromedriver: run with --include-ignored"]
async fn demo_page_asks_for_the_api_token() -> Result<()> {
    let tools = Tools::find()?;
    within("demo_page_asks_for_the_api_token", async {
        let config = GatewayConfig::embedded("gateway")
            .workers(2)
            .arg("--api-token")
            .arg("s3cret-token");
        let gateway = Gateway::start(config).await?;
        let driver = Chromedriver::start(&tools).await?;
        let page = driver.browser("page").await?;
        page.open_demo(gateway.admin.addr()).await?;
        page.wait_for(
            "the token form",
            "return !document.getElementById('token-form').hidden;",
            vec![],
        )
        .await?;
        ensure!(page.text_of("#stat-connections").await? == "–");

        page.fill("#token-input", "wrong").await?;
        page.click("#token-btn").await?;
        page.wait_for(
            "the wrong token to be refused",
            "return document.getElementById('stats-error').textContent === 'The token was refused.';",
            vec![],
        )
        .await?;

        page.fill("#token-input", "s3cret-token").await?;
        page.click("#token-btn").await?;
        page.wait_for(
            "stats with the token",
            "return document.getElementById('stat-connections').textContent === '1' \
             && document.getElementById('token-form').hidden;",
            vec![],
        )
        .await?;
        page.close().await?;
        gateway.process.assert_no_panics()
    })
    .await
}

/// The page and its config are served without a browser: not ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_page_is_served() -> Result<()> {
    let gateway = Gateway::start(GatewayConfig::embedded("gateway")).await?;
    for path in ["/", "/demo"] {
        let (status, body) = gateway.admin.get(path).await?;
        ensure!(status == 200, "GET {path} answered {status}");
        ensure!(
            body.starts_with("<!DOCTYPE html>") && body.contains(r#"id="join-btn""#),
            "GET {path} is not the demo page"
        );
    }
    // 503 until the accept loop runs, which may be a moment after the logs the harness waits for.
    gateway
        .admin
        .wait_for_status("/demo/config.json", 200)
        .await?;
    let (status, body) = gateway.admin.get("/demo/config.json").await?;
    ensure!(
        status == 200,
        "GET /demo/config.json answered {status}: {body}"
    );
    let config: Value = serde_json::from_str(&body)?;
    // The harness binds the WebSocket listener to 127.0.0.1, so the page is told that address.
    ensure!(
        config == json!({"ws_port": gateway.addr.port(), "ws_host": "127.0.0.1"}),
        "unexpected config {config}"
    );
    Ok(())
}

/// The browser client is served at `/client.js`, as JavaScript (browsers refuse to run a module
/// of another type), and it is the file of the repository: not ignored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_module_is_served() -> Result<()> {
    let gateway = Gateway::start(GatewayConfig::embedded("gateway")).await?;
    let response = gateway
        .admin
        .http()
        .get(gateway.admin.url("/client.js"))
        .send()
        .await
        .context("GET /client.js")?;
    ensure!(
        response.status() == 200,
        "GET /client.js answered {}",
        response.status()
    );
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    ensure!(
        header("content-type").as_deref() == Some("text/javascript; charset=utf-8"),
        "GET /client.js: Content-Type {:?}",
        header("content-type")
    );
    ensure!(header("x-content-type-options").as_deref() == Some("nosniff"));
    let body = response.text().await.context("GET /client.js: the body")?;
    ensure!(
        body == CLIENT_JS,
        "GET /client.js is not gateway/static/client.js"
    );
    // The demo page may load it: its Content-Security-Policy allows scripts of its origin.
    let response = gateway
        .admin
        .http()
        .get(gateway.admin.url("/"))
        .send()
        .await
        .context("GET /")?;
    let policy = response
        .headers()
        .get("content-security-policy")
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default();
    ensure!(
        policy.contains("script-src 'self'"),
        "the demo page's policy forbids /client.js: {policy}"
    );
    Ok(())
}

/// The client test's example is found in docs/client.md and pointed at the gateway: not
/// ignored, so that the docs cannot drift away from the test unnoticed.
#[test]
fn client_example_is_in_the_docs() {
    let addr = SocketAddr::from(([127, 0, 0, 1], 4321));
    let code = client_example(addr).unwrap();
    assert!(
        code.contains(r#"new GroupPushClient("ws://127.0.0.1:4321/""#),
        "{code}"
    );
    assert!(
        code.starts_with(r#"import { GroupPushClient } from "/client.js";"#),
        "{code}"
    );
    assert!(
        code.trim_end().ends_with(r#"console.log("sent");"#),
        "{code}"
    );
}

/// The recovery test's example is found in docs/protocol.md and pointed at the gateway: not
/// ignored, so that the docs cannot drift away from the test unnoticed.
#[test]
fn history_example_is_in_the_docs() {
    let addr = SocketAddr::from(([127, 0, 0, 1], 4321));
    let code = history_example(addr).unwrap();
    assert!(
        code.contains(r#"new WebSocket("ws://127.0.0.1:4321/")"#),
        "{code}"
    );
    assert!(!code.contains("location.host"), "{code}");
    assert!(code.trim_end().ends_with("connect();"), "{code}");
}

#[test]
fn png_sizes() {
    let mut png = b"\x89PNG\r\n\x1a\n\0\0\0\x0dIHDR".to_vec();
    png.extend_from_slice(&1280u32.to_be_bytes());
    png.extend_from_slice(&900u32.to_be_bytes());
    assert_eq!(png_size(&png).unwrap(), (1280, 900));
    assert!(png_size(b"GIF89a").is_err());
    assert!(png_size(&png[..20]).is_err());
}
