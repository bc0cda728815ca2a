//! A child process under test: killed on drop, its stdout and stderr captured line by line.
//!
//! The servers announce readiness with JSON log events on stderr (`--log-format json`);
//! [`Process::wait_for_log`] waits for one and returns its fields.
//!
//! [`binary`] finds a workspace binary after building it: a package's own tests can use
//! `CARGO_BIN_EXE_<name>`, but Cargo sets those only for the package under test, and a binary
//! merely found in `target/` may be stale or missing (left there, or not, by another crate's
//! tests).

use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// How many stderr lines of a process are shown when a wait on it fails or a test panics.
const TAIL_LINES: usize = 40;
/// How long building the workspace's binaries may take: a build from scratch on a small machine.
const BUILD_TIMEOUT: Duration = Duration::from_secs(30 * 60);
/// How long `kill` may take to send a signal.
const SIGNAL_TIMEOUT: Duration = Duration::from_secs(5);

/// The path of the workspace binary `name`. The first call in a test process runs
/// `cargo build --workspace --bins` in the test executable's profile and target directory
/// (a no-op when they are fresh), so the binary is never stale nor missing.
pub fn binary(name: &str) -> Result<PathBuf> {
    static BUILT: OnceLock<Result<HashMap<String, PathBuf>, String>> = OnceLock::new();
    let built = BUILT
        .get_or_init(|| build_binaries().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("cannot build the workspace's binaries: {e}"))?;
    let path = built.get(name).with_context(|| {
        let mut names: Vec<&String> = built.keys().collect();
        names.sort();
        format!("the workspace has no binary `{name}`; it has {names:?}")
    })?;
    ensure!(path.is_file(), "{} is gone", path.display());
    Ok(path.clone())
}

/// Where the test executable was built: `<target dir>[/<triple>]/<profile dir>/deps/<exe>`.
#[derive(Debug, PartialEq, Eq)]
struct BuildLayout {
    target_dir: PathBuf,
    /// `--target`, when the tests were built for an explicit target.
    triple: Option<String>,
    /// The profile directory: `debug` (the dev and test profiles), `release`, or a custom one.
    profile_dir: String,
}

impl BuildLayout {
    /// Reads the layout from the test executable's path; `is_target_dir` says whether a
    /// directory is known to be a target directory (Cargo leaves `CACHEDIR.TAG` or
    /// `.rustc_info.json` there). Without such a sign, the executable's profile directory is
    /// taken to be right under the target directory.
    fn of(exe: &Path, is_target_dir: impl Fn(&Path) -> bool) -> Result<BuildLayout> {
        let unexpected = || format!("{} is not in <target>/<profile>/deps/", exe.display());
        let deps = exe.parent().with_context(unexpected)?;
        ensure!(deps.file_name() == Some(OsStr::new("deps")), unexpected());
        let profile = deps.parent().with_context(unexpected)?;
        let profile_dir = profile
            .file_name()
            .and_then(OsStr::to_str)
            .with_context(unexpected)?
            .to_owned();
        let above = profile.parent().with_context(unexpected)?;
        let cross = above
            .parent()
            .filter(|dir| !is_target_dir(above) && is_target_dir(dir));
        let triple = above.file_name().and_then(OsStr::to_str);
        match (cross, triple) {
            (Some(target_dir), Some(triple)) => Ok(BuildLayout {
                target_dir: target_dir.to_owned(),
                triple: Some(triple.to_owned()),
                profile_dir,
            }),
            _ => Ok(BuildLayout {
                target_dir: above.to_owned(),
                triple: None,
                profile_dir,
            }),
        }
    }

    /// The `cargo build` arguments that build into this layout.
    fn cargo_args(&self) -> Vec<String> {
        let mut args = vec![
            "--target-dir".to_owned(),
            self.target_dir.display().to_string(),
        ];
        if let Some(triple) = &self.triple {
            args.extend(["--target".to_owned(), triple.clone()]);
        }
        match self.profile_dir.as_str() {
            "debug" => {}
            "release" => args.push("--release".to_owned()),
            custom => args.extend(["--profile".to_owned(), custom.to_owned()]),
        }
        args
    }
}

/// Builds every binary of the workspace like the test executable; returns their paths by name.
fn build_binaries() -> Result<HashMap<String, PathBuf>> {
    let exe = std::env::current_exe().context("cannot locate the test executable")?;
    let layout = BuildLayout::of(&exe, |dir| {
        dir.join("CACHEDIR.TAG").is_file() || dir.join(".rustc_info.json").is_file()
    })?;
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    // The cargo running the tests; its environment (RUSTFLAGS, ...) is inherited.
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut command = std::process::Command::new(cargo);
    // What cargo sets for the test process describes the test's package: a build script that
    // watches one of these (ring's watches CARGO_MANIFEST_DIR) would otherwise rebuild, and
    // the next `cargo test` would rebuild it back.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || name.starts_with("CARGO_MANIFEST_")
            || [
                "CARGO_CRATE_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&name.as_ref())
        {
            command.env_remove(name.as_ref());
        }
    }
    command
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .args([
            "--workspace",
            "--bins",
            "--message-format=json-render-diagnostics",
        ])
        .args(layout.cargo_args())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    eprintln!("building the binaries under test: {command:?}");
    let mut child = command.spawn().context("cannot run cargo")?;
    let (tx, rx) = mpsc::channel();
    for (stream, pipe) in [
        (
            "stdout",
            child
                .stdout
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
        (
            "stderr",
            child
                .stderr
                .take()
                .map(|p| Box::new(p) as Box<dyn Read + Send>),
        ),
    ] {
        let mut pipe = pipe.context("cargo's output is not piped")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = pipe.read_to_string(&mut text);
            let _ = tx.send((stream, text));
        });
    }
    let mut output = HashMap::new();
    let deadline = std::time::Instant::now() + BUILD_TIMEOUT;
    while output.len() < 2 {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok((stream, text)) => {
                output.insert(stream, text);
            }
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                bail!("`cargo build` did not finish within {BUILD_TIMEOUT:?}");
            }
        }
    }
    let status = child.wait().context("cannot wait for cargo")?;
    let stderr = output.remove("stderr").unwrap_or_default();
    ensure!(
        status.success(),
        "`cargo build` failed ({status}):\n{stderr}"
    );
    let binaries = executables(&output.remove("stdout").unwrap_or_default());
    ensure!(
        !binaries.is_empty(),
        "`cargo build` reported no binary:\n{stderr}"
    );
    Ok(binaries)
}

/// The binaries in cargo's JSON messages, by name.
fn executables(messages: &str) -> HashMap<String, PathBuf> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter_map(|message| {
            let name = message.pointer("/target/name")?.as_str()?.to_owned();
            let path = message["executable"].as_str()?.into();
            Some((name, path))
        })
        .collect()
}

/// A command running `program` in a clean environment (no stray `BROKER_*`, `GATEWAY_*` or
/// `PUSH_*` setting of the shell, no proxy), logging at `info` (readiness events are at that
/// level) or at `E2E_RUST_LOG`.
pub fn command(program: impl AsRef<OsStr>) -> Command {
    let mut command = Command::new(program);
    command
        .env_clear()
        .env("RUST_LOG", log_filter())
        .env("RUST_BACKTRACE", "1");
    command
}

fn log_filter() -> String {
    std::env::var("E2E_RUST_LOG").unwrap_or_else(|_| "info".to_owned())
}

/// Everything a process wrote to one of its output streams so far.
#[derive(Debug, Default)]
struct Captured {
    /// The exact text (invalid UTF-8 replaced).
    text: String,
    /// The same text split into lines, without line terminators.
    lines: Vec<String>,
    /// The stream reached end of file (the process closed it, usually by exiting).
    eof: bool,
}

fn capture(
    pipe: impl AsyncRead + Unpin + Send + 'static,
) -> (watch::Receiver<Captured>, JoinHandle<()>) {
    let (tx, rx) = watch::channel(Captured::default());
    let task = tokio::spawn(async move {
        let mut reader = BufReader::new(pipe);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match reader.read_until(b'\n', &mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let chunk = String::from_utf8_lossy(&buf);
                    tx.send_modify(|c| {
                        c.text.push_str(&chunk);
                        c.lines
                            .push(chunk.trim_end_matches(['\n', '\r']).to_owned());
                    });
                }
            }
        }
        tx.send_modify(|c| c.eof = true);
    });
    (rx, task)
}

/// The `fields` of a JSON log line whose `fields.message` is `message`.
fn log_fields(line: &str, message: &str) -> Option<Map<String, Value>> {
    let Value::Object(mut event) = serde_json::from_str(line).ok()? else {
        return None;
    };
    match event.remove("fields")? {
        Value::Object(fields) if fields.get("message")?.as_str()? == message => Some(fields),
        _ => None,
    }
}

/// A running program. Dropping it kills the process (SIGKILL) and prints the tail of its
/// stderr, which the test harness shows only for a failed test.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    stdout: watch::Receiver<Captured>,
    stderr: watch::Receiver<Captured>,
    stderr_task: JoinHandle<()>,
}

impl Process {
    /// Starts the workspace binary `binary_name` (see [`binary`]) with `args` in a clean
    /// environment ([`command`]), both output streams captured. `name` labels the process in
    /// messages (e.g. "gateway-a").
    pub fn spawn<I, S>(name: impl Into<String>, binary_name: &str, args: I) -> Result<Process>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = command(binary(binary_name)?);
        command.args(args);
        Process::spawn_command(name, command)
    }

    /// Starts `command` as it is set up (e.g. from [`command`], or a program that is not part
    /// of the workspace, such as chromedriver), with stdin closed and both output streams
    /// captured.
    pub fn spawn_command(name: impl Into<String>, command: Command) -> Result<Process> {
        Process::start(name.into(), command, None)
    }

    /// Like [`Process::spawn_command`], with `input` written to its stdin, which is then closed.
    pub fn spawn_with_input(
        name: impl Into<String>,
        command: Command,
        input: impl Into<Vec<u8>>,
    ) -> Result<Process> {
        Process::start(name.into(), command, Some(input.into()))
    }

    fn start(name: String, mut command: Command, input: Option<Vec<u8>>) -> Result<Process> {
        let program = command.as_std().get_program().to_owned();
        let stdin = if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        };
        let mut child = command
            .stdin(stdin)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.to_string_lossy()))?;
        if let Some(input) = input {
            let mut stdin = child.stdin.take().context("stdin is not piped")?;
            // Dropping the pipe once written closes it: the process reads end of file.
            tokio::spawn(async move {
                let _ = stdin.write_all(&input).await;
            });
        }
        let (stdout, _) = capture(child.stdout.take().context("stdout is not piped")?);
        let (stderr, stderr_task) = capture(child.stderr.take().context("stderr is not piped")?);
        Ok(Process {
            name,
            child,
            stdout,
            stderr,
            stderr_task,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The OS process id, while the process has not been reaped.
    pub fn pid(&self) -> Result<u32> {
        self.child
            .id()
            .with_context(|| format!("{} has already exited", self.name))
    }

    /// Everything written to stdout so far, exactly.
    pub fn stdout(&self) -> String {
        self.stdout.borrow().text.clone()
    }

    /// Everything written to stderr so far, exactly.
    pub fn stderr(&self) -> String {
        self.stderr.borrow().text.clone()
    }

    /// The stderr lines written so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.borrow().lines.clone()
    }

    fn stderr_tail(&self) -> String {
        let captured = self.stderr.borrow();
        let skip = captured.lines.len().saturating_sub(TAIL_LINES);
        captured.lines[skip..].join("\n")
    }

    /// Stops reading stderr and closes the pipe: what the process writes there from now on
    /// fails (EPIPE), as when whatever read its logs is gone.
    pub async fn close_stderr(&mut self) {
        self.stderr_task.abort();
        // The task (and the pipe it owns) is dropped once it has stopped.
        let _ = (&mut self.stderr_task).await;
    }

    /// Waits until a stderr line satisfies `matches` and returns it.
    pub async fn wait_for_stderr_line(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl FnMut(&str) -> bool,
    ) -> Result<String> {
        self.wait_line(&self.stderr, what, timeout, matches).await
    }

    /// Waits until a stdout line satisfies `matches` and returns it.
    pub async fn wait_for_stdout_line(
        &self,
        what: &str,
        timeout: Duration,
        matches: impl FnMut(&str) -> bool,
    ) -> Result<String> {
        self.wait_line(&self.stdout, what, timeout, matches).await
    }

    async fn wait_line(
        &self,
        stream: &watch::Receiver<Captured>,
        what: &str,
        timeout: Duration,
        mut matches: impl FnMut(&str) -> bool,
    ) -> Result<String> {
        self.wait_output(stream, what, timeout, |lines| {
            lines.iter().find(|l| matches(l)).cloned()
        })
        .await
    }

    /// Waits for the first JSON log event with this message and returns its fields.
    pub async fn wait_for_log(
        &self,
        message: &str,
        timeout: Duration,
    ) -> Result<Map<String, Value>> {
        self.wait_for_nth_log(message, 1, timeout).await
    }

    /// Waits for the `n`th (from 1) JSON log event with this message and returns its fields.
    pub async fn wait_for_nth_log(
        &self,
        message: &str,
        n: usize,
        timeout: Duration,
    ) -> Result<Map<String, Value>> {
        let what = format!("log event #{n} {message:?}");
        self.wait_output(&self.stderr, &what, timeout, |lines| {
            lines
                .iter()
                .filter_map(|l| log_fields(l, message))
                .nth(n.saturating_sub(1))
        })
        .await
    }

    /// How many JSON log events with this message were written so far.
    pub fn log_count(&self, message: &str) -> usize {
        self.stderr
            .borrow()
            .lines
            .iter()
            .filter(|l| log_fields(l, message).is_some())
            .count()
    }

    /// Lines reporting a panic: a server must never panic on anything a peer sends.
    pub fn panics(&self) -> Vec<String> {
        self.stderr
            .borrow()
            .lines
            .iter()
            .filter(|l| l.contains("panicked"))
            .cloned()
            .collect()
    }

    /// Fails if the process reported a panic on stderr.
    pub fn assert_no_panics(&self) -> Result<()> {
        let panics = self.panics();
        if !panics.is_empty() {
            bail!("{} panicked:\n{}", self.name, panics.join("\n"));
        }
        Ok(())
    }

    async fn wait_output<T>(
        &self,
        stream: &watch::Receiver<Captured>,
        what: &str,
        timeout: Duration,
        mut find: impl FnMut(&[String]) -> Option<T>,
    ) -> Result<T> {
        let mut rx = stream.clone();
        let mut found = None;
        let waited = tokio::time::timeout(
            timeout,
            rx.wait_for(|c| {
                found = find(&c.lines);
                found.is_some() || c.eof
            }),
        )
        .await
        .map(|r| r.map(drop));
        if let Some(found) = found {
            return Ok(found);
        }
        let why = match waited {
            Err(_) => format!("timed out after {timeout:?}"),
            Ok(_) => "its output closed (it exited?)".to_owned(),
        };
        bail!(
            "{}: {why} waiting for {what}; stderr tail:\n{}",
            self.name,
            self.stderr_tail()
        )
    }

    /// Sends `signal` (`TERM`, `INT`, ...) through the `kill` command.
    pub async fn signal(&self, signal: &str) -> Result<()> {
        let pid = self.pid()?;
        let status = tokio::time::timeout(
            SIGNAL_TIMEOUT,
            Command::new("kill")
                .arg(format!("-{signal}"))
                .arg(pid.to_string())
                .status(),
        )
        .await
        .with_context(|| format!("`kill -{signal}` timed out"))?
        .context("cannot run `kill`")?;
        if !status.success() {
            bail!("`kill -{signal} {pid}` ({}) failed: {status}", self.name);
        }
        Ok(())
    }

    /// Sends SIGTERM (graceful shutdown).
    pub async fn terminate(&self) -> Result<()> {
        self.signal("TERM").await
    }

    /// The exit status if the process has exited, without waiting.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        self.child
            .try_wait()
            .with_context(|| format!("cannot check on {}", self.name))
    }

    /// SIGKILLs the process and reaps it.
    pub async fn kill(&mut self, timeout: Duration) -> Result<ExitStatus> {
        self.child
            .start_kill()
            .with_context(|| format!("cannot kill {}", self.name))?;
        self.wait(timeout).await
    }

    /// Waits until the process exits and both of its output streams are closed, so that
    /// [`Process::stdout`] and [`Process::stderr`] are complete.
    pub async fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let mut stdout = self.stdout.clone();
        let mut stderr = self.stderr.clone();
        let child = &mut self.child;
        let exited = async {
            let status = child.wait().await?;
            // An Err means the capture task is gone, which also means end of file.
            let _ = stdout.wait_for(|c| c.eof).await;
            let _ = stderr.wait_for(|c| c.eof).await;
            Ok::<_, std::io::Error>(status)
        };
        match tokio::time::timeout(timeout, exited).await {
            Ok(status) => status.with_context(|| format!("cannot wait for {}", self.name)),
            Err(_) => bail!(
                "{} did not exit within {timeout:?}; stderr tail:\n{}",
                self.name,
                self.stderr_tail()
            ),
        }
    }
}

/// What a process that ran to its end left: its exit code and everything it wrote.
#[derive(Debug)]
pub struct Finished {
    /// `None` when a signal ended it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Process {
    /// Waits (at most `timeout`) until the process exits; returns its code and output.
    pub async fn finish(mut self, timeout: Duration) -> Result<Finished> {
        let status = self.wait(timeout).await?;
        Ok(Finished {
            code: status.code(),
            stdout: self.stdout(),
            stderr: self.stderr(),
        })
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        // kill_on_drop does the killing; this only helps to diagnose a failed test.
        eprintln!(
            "----- {} stderr (last {TAIL_LINES} lines) -----\n{}",
            self.name,
            self.stderr_tail()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(exe: &str, target_dirs: &[&str]) -> Result<BuildLayout> {
        BuildLayout::of(Path::new(exe), |dir| {
            target_dirs.iter().any(|t| Path::new(t) == dir)
        })
    }

    #[test]
    fn the_build_follows_the_test_executable() {
        let debug = layout("/w/target/debug/deps/e2e-1234", &["/w/target"]).unwrap();
        assert_eq!(debug.target_dir, Path::new("/w/target"));
        assert_eq!(debug.cargo_args(), ["--target-dir", "/w/target"]);
        let release = layout("/t/release/deps/churn-1", &["/t"]).unwrap();
        assert_eq!(release.cargo_args(), ["--target-dir", "/t", "--release"]);
        let custom = layout("/t/ci/deps/churn-1", &["/t"]).unwrap();
        assert_eq!(
            custom.cargo_args(),
            ["--target-dir", "/t", "--profile", "ci"]
        );
        let cross = layout("/t/x86_64-unknown-linux-musl/debug/deps/e2e-1", &["/t"]).unwrap();
        assert_eq!(
            cross.cargo_args(),
            [
                "--target-dir",
                "/t",
                "--target",
                "x86_64-unknown-linux-musl"
            ]
        );
        let unmarked = layout("/u/debug/deps/e2e-1", &[]).unwrap();
        assert_eq!(unmarked.cargo_args(), ["--target-dir", "/u"]);
        let err = layout("/elsewhere/e2e", &["/t"]).unwrap_err().to_string();
        assert!(err.contains("<target>/<profile>/deps/"), "{err}");
    }

    #[test]
    fn binaries_come_from_cargo_messages() {
        let messages = [
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"gateway"},"executable":null}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"gateway"},"executable":"/t/debug/gateway"}"#,
            r#"{"reason":"build-finished","success":true}"#,
            "not json",
        ]
        .join("\n");
        let binaries = executables(&messages);
        assert_eq!(binaries.len(), 1);
        assert_eq!(binaries["gateway"], Path::new("/t/debug/gateway"));
    }
}
