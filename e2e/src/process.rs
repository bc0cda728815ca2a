//! A child process under test: killed on drop, its stdout and stderr captured line by line.
//!
//! The servers announce readiness with JSON log events on stderr (`--log-format json`);
//! [`Process::wait_for_log`] waits for one and returns its fields.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::{Map, Value};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::watch;

/// How many stderr lines of a process are shown when a wait on it fails or a test panics.
const TAIL_LINES: usize = 40;

/// The path of a workspace binary, next to the test executable (`target/<profile>/<name>`).
pub fn binary(name: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("cannot locate the test executable")?;
    // The test executable is target/<profile>/deps/e2e-<hash>.
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .with_context(|| format!("{} has no grandparent directory", exe.display()))?;
    let path = dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX));
    if !path.is_file() {
        bail!(
            "binary `{name}` not found at {}: run `cargo build --workspace --bins` first",
            path.display()
        );
    }
    Ok(path)
}

/// The children's `RUST_LOG`: `info` (readiness events are at that level), or `E2E_RUST_LOG`.
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

fn capture(pipe: impl AsyncRead + Unpin + Send + 'static) -> watch::Receiver<Captured> {
    let (tx, rx) = watch::channel(Captured::default());
    tokio::spawn(async move {
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
    rx
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

/// A running binary. Dropping it kills the process (SIGKILL) and prints the tail of its stderr,
/// which the test harness shows only for a failed test.
#[derive(Debug)]
pub struct Process {
    name: String,
    child: Child,
    stdout: watch::Receiver<Captured>,
    stderr: watch::Receiver<Captured>,
}

impl Process {
    /// Starts the workspace binary `binary_name` with `args`, both output streams captured.
    /// `name` labels the process in messages (e.g. "gateway-a").
    pub fn spawn<I, S>(name: impl Into<String>, binary_name: &str, args: I) -> Result<Process>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let path = binary(binary_name)?;
        let mut command = Command::new(&path);
        command
            .args(args)
            // A clean environment: no stray BROKER_*/GATEWAY_*/PUSH_URL settings of the shell.
            .env_clear()
            .env("RUST_LOG", log_filter())
            .env("RUST_BACKTRACE", "1");
        Process::spawn_command(name, command)
    }

    /// Starts `command` (e.g. a program that is not part of the workspace, such as
    /// chromedriver) as it is set up, with stdin closed and both output streams captured.
    pub fn spawn_command(name: impl Into<String>, mut command: Command) -> Result<Process> {
        let name = name.into();
        let program = command.as_std().get_program().to_owned();
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {name} ({})", program.to_string_lossy()))?;
        let stdout = capture(child.stdout.take().context("stdout is not piped")?);
        let stderr = capture(child.stderr.take().context("stderr is not piped")?);
        Ok(Process {
            name,
            child,
            stdout,
            stderr,
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

    /// The stderr lines written so far.
    pub fn stderr_lines(&self) -> Vec<String> {
        self.stderr.borrow().lines.clone()
    }

    fn stderr_tail(&self) -> String {
        let captured = self.stderr.borrow();
        let skip = captured.lines.len().saturating_sub(TAIL_LINES);
        captured.lines[skip..].join("\n")
    }

    /// Waits until a stderr line satisfies `matches` and returns it.
    pub async fn wait_for_stderr_line(
        &self,
        what: &str,
        timeout: Duration,
        mut matches: impl FnMut(&str) -> bool,
    ) -> Result<String> {
        self.wait_stderr(what, timeout, |lines| {
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
        self.wait_stderr(&what, timeout, |lines| {
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

    async fn wait_stderr<T>(
        &self,
        what: &str,
        timeout: Duration,
        mut find: impl FnMut(&[String]) -> Option<T>,
    ) -> Result<T> {
        let mut rx = self.stderr.clone();
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
            Ok(_) => "its stderr closed (it exited?)".to_owned(),
        };
        bail!(
            "{}: {why} waiting for {what}; stderr tail:\n{}",
            self.name,
            self.stderr_tail()
        )
    }

    /// Sends SIGTERM (graceful shutdown) through the `kill` command.
    pub async fn terminate(&self) -> Result<()> {
        let pid = self.pid()?;
        let status = tokio::time::timeout(
            Duration::from_secs(5),
            Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status(),
        )
        .await
        .context("`kill -TERM` timed out")?
        .context("cannot run `kill`")?;
        if !status.success() {
            bail!("`kill -TERM {pid}` ({}) failed: {status}", self.name);
        }
        Ok(())
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
    /// [`Process::stdout`] is complete.
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
    #[test]
    fn a_missing_binary_says_how_to_build_it() {
        let err = super::binary("no-such-binary").unwrap_err().to_string();
        assert!(err.contains("cargo build --workspace --bins"), "{err}");
    }
}
