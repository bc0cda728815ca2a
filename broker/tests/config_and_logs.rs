//! The `broker` binary's settings and logs: a config file's settings apply (its log format and
//! address here) beneath flags, a bad file stops it before it serves with a message naming the
//! file and the key, and a dead log pipe does not stop it from shutting down on SIGTERM.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Upper bound on any wait for the process.
const WAIT: Duration = Duration::from_secs(20);

/// A config file in the temp directory, removed on drop.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(name: &str, text: &str) -> TempConfig {
        let path = std::env::temp_dir().join(format!(
            "broker-cli-test-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&path, text).expect("write config file");
        TempConfig(path)
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The broker process, killed on drop.
struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary with a clean environment for its settings, so the test's own cannot leak in.
fn broker() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_broker"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("BROKER_") || name == "LOG_FORMAT" || name.starts_with("RUST_") {
            command.env_remove(name);
        }
    }
    command
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Sends each stderr line as it arrives; the channel closes when the process closes stderr.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let stderr = child.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

#[test]
fn settings_from_the_file_apply() {
    let config = TempConfig::new(
        "json",
        "listen = \"127.0.0.1:0\"\nlog-format = \"json\"\nlink-queue-frames = 8\n",
    );
    let mut broker = Broker(
        broker()
            .arg("--config")
            .arg(&config.0)
            .spawn()
            .expect("start broker"),
    );
    let lines = stderr_lines(&mut broker.0);
    let mut seen = Vec::new();
    loop {
        let line = match lines.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(e) => panic!("no `broker listening` line ({e}); stderr so far: {seen:#?}"),
        };
        let event: serde_json::Value = match serde_json::from_str(&line) {
            Ok(event) => event,
            Err(e) => panic!("log line is not JSON ({e}): {line}"),
        };
        let fields = &event["fields"];
        seen.push(line.clone());
        if fields["message"] == "settings read from config file" {
            assert_eq!(fields["path"], config.0.display().to_string());
        }
        if fields["message"] == "broker listening" {
            let addr = fields["addr"].as_str().expect("addr field");
            assert!(addr.starts_with("127.0.0.1:"), "{addr}");
            assert_ne!(addr, "127.0.0.1:2206", "listen comes from the file");
            break;
        }
    }
    assert!(
        seen.iter()
            .any(|l| l.contains("settings read from config file")),
        "{seen:#?}"
    );
}

#[test]
fn a_flag_beats_the_file() {
    let config = TempConfig::new("flag", "listen = \"127.0.0.1:0\"\nlog-format = \"json\"\n");
    let mut broker = Broker(
        broker()
            .arg("--config")
            .arg(&config.0)
            .args(["--log-format", "text"])
            .spawn()
            .expect("start broker"),
    );
    let lines = stderr_lines(&mut broker.0);
    loop {
        let line = lines.recv_timeout(WAIT).expect("a `broker listening` line");
        assert!(!line.starts_with('{'), "text wanted, got JSON: {line}");
        if line.contains("broker listening") {
            break;
        }
    }
}

#[test]
fn a_bad_file_stops_it_with_a_clear_message() {
    let config = TempConfig::new("bad", "listen = \"127.0.0.1:0\"\nlink_queue_frames = 5\n");
    let mut broker = Broker(
        broker()
            .arg("--config")
            .arg(&config.0)
            .spawn()
            .expect("start broker"),
    );
    let mut stderr = broker.0.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let text = rx.recv_timeout(WAIT).expect("the broker exits");
    let status = broker.0.wait().expect("exit status");
    assert_eq!(status.code(), Some(1), "{text}");
    let path = config.0.display().to_string();
    assert!(text.contains(&path), "{text}");
    assert!(
        text.contains("unknown key `link_queue_frames` (did you mean `link-queue-frames`?)"),
        "{text}"
    );
    assert!(!text.contains("panicked"), "{text}");
    assert!(!text.contains("listening"), "{text}");
}

#[test]
fn help_still_works() {
    let output = broker()
        .arg("--help")
        .stdout(Stdio::piped())
        .output()
        .expect("run broker --help");
    assert!(output.status.success());
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("--config <FILE>"), "{help}");
    assert!(help.contains("BROKER_CONFIG"), "{help}");
}

#[test]
fn shuts_down_on_sigterm_after_its_log_reader_is_gone() {
    let mut broker = Broker(
        broker()
            .args(["--listen", "127.0.0.1:0"])
            .spawn()
            .expect("start broker"),
    );
    // Read up to the readiness line, then close the pipe: later log lines fail with EPIPE.
    let stderr = broker.0.stderr.take().expect("stderr is piped");
    let (tx, ready) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("broker listening") {
                let _ = tx.send(());
                break;
            }
        }
    });
    ready.recv_timeout(WAIT).expect("a `broker listening` line");

    let kill = Command::new("kill")
        .args(["-TERM", &broker.0.id().to_string()])
        .status()
        .expect("run kill");
    assert!(kill.success());
    let deadline = Instant::now() + WAIT;
    let status = loop {
        if let Some(status) = broker.0.try_wait().expect("poll the broker") {
            break status;
        }
        assert!(Instant::now() < deadline, "the broker ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
}
