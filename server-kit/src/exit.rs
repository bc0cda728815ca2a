//! How a server binary ends on an error: one log line with the error and its causes, each said
//! once, and a hint for the usual mistakes; never a backtrace, whatever `RUST_BACKTRACE` says
//! (backtraces are for bugs: a panic still prints one). Exit status 1.
//!
//! ```no_run
//! fn main() -> std::process::ExitCode {
//!     server_kit::exit::report(run())
//! }
//! # fn run() -> anyhow::Result<()> { Ok(()) }
//! ```

use std::io::ErrorKind;
use std::process::ExitCode;

use crate::logging::{init_tracing, LogFormat};

/// Exit status 0 for `Ok`; for `Err`, the error logged (see the module) and status 1.
pub fn report(result: anyhow::Result<()>) -> ExitCode {
    let Err(error) = result else {
        return ExitCode::SUCCESS;
    };
    if !tracing::dispatcher::has_been_set() {
        // Failed before the logs were set up (settings that do not parse).
        init_tracing(LogFormat::Text);
    }
    let message = chain(&error);
    match hint(&error) {
        Some(hint) => tracing::error!(hint, "{message}"),
        None => tracing::error!("{message}"),
    }
    ExitCode::FAILURE
}

/// The error and its causes, `: `-separated, leaving out a cause whose text the message before
/// it already holds (errors that print their source, as `thiserror`'s `{0}` does).
pub fn chain(error: &anyhow::Error) -> String {
    let mut message = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if message.contains(&text) {
            continue;
        }
        if !message.is_empty() {
            message.push_str(": ");
        }
        message.push_str(&text);
    }
    message
}

/// What to do about the usual mistakes, found among the causes.
fn hint(error: &anyhow::Error) -> Option<&'static str> {
    error.chain().find_map(|cause| {
        let io = cause.downcast_ref::<std::io::Error>()?;
        match io.kind() {
            ErrorKind::AddrInUse => Some(
                "another process already listens on that address: stop it, or move this one \
                 with the flag named in the message",
            ),
            ErrorKind::AddrNotAvailable => {
                Some("that address is not one of this host's: check the flag named in the message")
            }
            ErrorKind::PermissionDenied => {
                Some("ports below 1024 need privileges, and files must be readable by this user")
            }
            ErrorKind::NotFound => Some("check the path in the message"),
            _ => None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("the link secret: {0}")]
    struct Wraps(#[source] std::io::Error);

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(ErrorKind::NotFound, "No such file or directory");
        let error = anyhow::Error::new(Wraps(io)).context("invalid security configuration");
        assert_eq!(
            chain(&error),
            "invalid security configuration: the link secret: No such file or directory"
        );
        assert_eq!(hint(&error), Some("check the path in the message"));
    }

    #[test]
    fn a_taken_port_gets_a_hint() {
        let io = std::io::Error::from(ErrorKind::AddrInUse);
        let error = anyhow::Error::new(io).context("cannot listen on 127.0.0.1:9090 (--admin)");
        assert!(chain(&error).starts_with("cannot listen on 127.0.0.1:9090 (--admin): "));
        assert!(hint(&error).is_some_and(|h| h.contains("another process")));
        assert_eq!(hint(&anyhow::anyhow!("plain")), None);
    }
}
