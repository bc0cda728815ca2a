//! The `gateway` binary with `--config`: it starts from docs/gateway.example.toml with flags and
//! environment variables over the file, and a bad file stops it with a message naming the file
//! and the key.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Upper bound on any wait for the process.
const WAIT: Duration = Duration::from_secs(20);

/// The gateway process, killed on drop.
struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The binary with a clean environment for its settings, so the test's own cannot leak in.
fn gateway() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_gateway"));
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy().into_owned();
        if name.starts_with("GATEWAY_") || name == "LOG_FORMAT" || name.starts_with("RUST_") {
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

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/gateway.example.toml")
}

#[test]
fn starts_from_the_example_file_under_flags_and_env() {
    // The file says text logs on 0.0.0.0:1234: the environment and the flags win.
    let mut gateway = Gateway(
        gateway()
            .env("LOG_FORMAT", "json")
            .arg("--config")
            .arg(example())
            .args(["--listen", "127.0.0.1:0"])
            .args(["--broker-listen", "127.0.0.1:0"])
            .args(["--admin", "127.0.0.1:0"])
            .spawn()
            .expect("start gateway"),
    );
    let stderr = gateway.0.stderr.take().expect("stderr is piped");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    loop {
        let line = lines
            .recv_timeout(WAIT)
            .expect("a `gateway listening` line");
        let event: serde_json::Value = match serde_json::from_str(&line) {
            Ok(event) => event,
            Err(e) => panic!("log line is not JSON ({e}): {line}"),
        };
        if event["fields"]["message"] == "gateway listening" {
            let addr = event["fields"]["addr"].as_str().expect("addr field");
            assert!(addr.starts_with("127.0.0.1:"), "{addr}");
            break;
        }
    }
}

#[test]
fn a_bad_value_stops_it_with_a_clear_message() {
    let path =
        std::env::temp_dir().join(format!("gateway-cli-test-{}-bad.toml", std::process::id()));
    std::fs::write(&path, "admin = \"off\"\nidle-timeout = 60\n").expect("write config file");
    let mut gateway = Gateway(
        gateway()
            .arg("--config")
            .arg(&path)
            .spawn()
            .expect("start gateway"),
    );
    let mut stderr = gateway.0.stderr.take().expect("stderr is piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = tx.send(text);
    });
    let text = rx.recv_timeout(WAIT).expect("the gateway exits");
    let status = gateway.0.wait().expect("exit status");
    let _ = std::fs::remove_file(&path);
    assert_eq!(status.code(), Some(1), "{text}");
    assert!(text.contains(&path.display().to_string()), "{text}");
    assert!(text.contains("key `idle-timeout`"), "{text}");
    assert!(text.contains("invalid value '60'"), "{text}");
    assert!(!text.contains("panicked"), "{text}");
    assert!(!text.contains("listening"), "{text}");
}
