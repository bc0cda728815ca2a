//! Command-line flags (clap derive) and their value parsers.

use std::fmt;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use protocol::client::{GroupName, DEFAULT_MAX_GROUP_ID_LEN};

pub const DEFAULT_URL: &str = "ws://127.0.0.1:1234";
pub const DEFAULT_ADMIN_URL: &str = "http://127.0.0.1:9090";

const EXIT_CODES: &str = "\
Exit codes:
  0  success: `send` was acknowledged; `publish` was accepted (HTTP 200); `join`
     received its --count messages, or was stopped by Ctrl-C or SIGTERM (the
     connection is closed cleanly with code 1000)
  1  error: bad arguments, cannot connect, an error reply from the server (for
     `publish`, an error answer of the admin API: `error: CODE: REASON`), the
     server closed the connection, or stdout cannot be written
  2  timeout: `join --timeout`, `send --timeout` or `publish --timeout` expired first";

/// Client of the group push gateway: join groups and print what they receive, or send to a group.
#[derive(Debug, Parser)]
#[command(name = "client-cli", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// WebSocket URL of the gateway.
    #[arg(long, global = true, env = "CLIENT_CLI_URL", default_value = DEFAULT_URL)]
    pub url: String,

    /// How long to wait for the WebSocket handshake, in seconds.
    #[arg(long, global = true, value_name = "SECS", default_value = "5", value_parser = parse_secs)]
    pub connect_timeout: Secs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Join groups, then print every message they receive on stdout, one per line.
    ///
    /// Once the server has acknowledged every join, prints `joined G1 G2 ...` on stderr; from
    /// then on each text frame received is printed verbatim on stdout, flushed line by line.
    /// Runs until Ctrl-C, until --count messages arrived, or until --timeout expires.
    #[command(after_help = EXIT_CODES)]
    Join(JoinArgs),
    /// Send one message to a group and wait for the server's ack.
    #[command(after_help = EXIT_CODES)]
    Send(SendArgs),
    /// Publish through the gateway's admin HTTP API (POST /api/publish), as a backend does.
    ///
    /// `publish GROUP MESSAGE` publishes one message; `publish --batch FILE` (or `-` for stdin)
    /// publishes a JSON array of {"group_id":G,"message":M} objects, all or nothing. Prints
    /// `published N` on stderr once the gateway accepted them.
    #[command(after_help = EXIT_CODES)]
    Publish(PublishArgs),
}

#[derive(Debug, Args)]
pub struct JoinArgs {
    /// Group ids to join.
    #[arg(required = true, value_name = "GROUP", allow_negative_numbers = true, value_parser = parse_group)]
    pub groups: Vec<String>,

    /// Exit (closing cleanly) after this many messages.
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,

    /// Give up (exit 2) if the joins, and the --count messages when given, have not all arrived
    /// this many seconds after start.
    #[arg(long, value_name = "SECS", value_parser = parse_secs)]
    pub timeout: Option<Secs>,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Group id to send to.
    #[arg(value_name = "GROUP", allow_negative_numbers = true, value_parser = parse_group)]
    pub group: String,

    /// The message: sent as a JSON string, or with --json as the JSON value it spells.
    #[arg(value_name = "MESSAGE", allow_hyphen_values = true)]
    pub message: String,

    /// Parse MESSAGE as JSON and send that value (members receive its compact JSON text).
    #[arg(long)]
    pub json: bool,

    /// Give up (exit 2) if connecting, sending and the ack take longer than this, in seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub timeout: Secs,
}

#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Group id to publish to.
    #[arg(
        value_name = "GROUP",
        allow_negative_numbers = true,
        value_parser = parse_group,
        required_unless_present = "batch"
    )]
    pub group: Option<String>,

    /// The message: sent as a JSON string, or with --json as the JSON value it spells.
    #[arg(
        value_name = "MESSAGE",
        allow_hyphen_values = true,
        required_unless_present = "batch"
    )]
    pub message: Option<String>,

    /// Parse MESSAGE as JSON and publish that value (members receive its compact JSON text).
    #[arg(long, conflicts_with = "batch")]
    pub json: bool,

    /// Publish the JSON array of {"group_id":G,"message":M} objects in FILE (`-`: stdin).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["group", "message"])]
    pub batch: Option<String>,

    /// Base URL of the gateway's admin HTTP server (its --admin address).
    #[arg(long, env = "CLIENT_CLI_ADMIN_URL", default_value = DEFAULT_ADMIN_URL)]
    pub admin_url: String,

    /// Bearer token of the admin API (the gateway's --api-token).
    #[arg(long, env = "CLIENT_CLI_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Give up (exit 2) if the gateway has not answered within this many seconds.
    #[arg(long, value_name = "SECS", default_value = "10", value_parser = parse_secs)]
    pub timeout: Secs,
}

/// A positive duration given on the command line as seconds (`0.5`, `10`) or as a humantime
/// duration (`500ms`, `1m`). Displays as seconds, the way error messages quote it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Secs(Duration);

impl Secs {
    pub fn duration(self) -> Duration {
        self.0
    }
}

impl fmt::Display for Secs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0.as_secs_f64())
    }
}

fn parse_secs(text: &str) -> Result<Secs, String> {
    let duration = match text.trim().parse::<f64>() {
        Ok(secs) => Duration::try_from_secs_f64(secs)
            .map_err(|e| format!("{text:?} is not a usable number of seconds: {e}"))?,
        Err(_) => humantime::parse_duration(text).map_err(|_| {
            format!("{text:?} is neither seconds (e.g. 0.5 or 10) nor a duration (e.g. 500ms)")
        })?,
    };
    if duration.is_zero() {
        return Err("must be greater than zero".to_owned());
    }
    Ok(Secs(duration))
}

/// Checks a group id the way the server does (non-empty, at most the default length).
fn parse_group(text: &str) -> Result<String, String> {
    GroupName::parse(text, DEFAULT_MAX_GROUP_ID_LEN)
        .map(|name| name.as_str().to_owned())
        .map_err(|e| e.to_string())
}

/// Environment variables of the previous release, and their names now.
pub const RENAMED_ENV: [(&str, &str); 3] = [
    ("PUSH_URL", "CLIENT_CLI_URL"),
    ("PUSH_ADMIN_URL", "CLIENT_CLI_ADMIN_URL"),
    ("PUSH_API_TOKEN", "CLIENT_CLI_TOKEN"),
];

/// Applies environment variables of the previous release: each `(old, new)` whose old variable is
/// set, and whose new one is not, becomes the default of the setting that reads the new one, so
/// a flag and the new variable still win. Returns the command and the old names that were used.
pub fn with_old_env(
    mut command: clap::Command,
    renamed: &[(&'static str, &'static str)],
    env: impl Fn(&str) -> Option<String>,
) -> (clap::Command, Vec<&'static str>) {
    let mut used = Vec::new();
    for &(old, new) in renamed {
        let Some(value) = env(old) else {
            continue;
        };
        used.push(old);
        if env(new).is_some() {
            continue;
        }
        // Read once per process: leaking it gives clap the 'static default it wants.
        let value: &'static str = Box::leak(value.into_boxed_str());
        let reads_new = |arg: &clap::Arg| arg.get_env().is_some_and(|e| e == new);
        let set = |arg: clap::Arg| {
            if reads_new(&arg) {
                arg.default_value(value)
            } else {
                arg
            }
        };
        command = command.mut_args(set);
        let names: Vec<String> = command
            .get_subcommands()
            .map(|s| s.get_name().to_owned())
            .collect();
        for name in names {
            command = command.mut_subcommand(name, |sub| sub.mut_args(set));
        }
    }
    (command, used)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("client-cli").chain(args.iter().copied()))
    }

    fn join(cli: &Cli) -> &JoinArgs {
        match &cli.command {
            Command::Join(args) => args,
            other => panic!("not a join: {other:?}"),
        }
    }

    fn send(cli: &Cli) -> &SendArgs {
        match &cli.command {
            Command::Send(args) => args,
            other => panic!("not a send: {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let cli = parse(&["join", "123"]).unwrap();
        if std::env::var_os("CLIENT_CLI_URL").is_none() {
            assert_eq!(cli.url, DEFAULT_URL);
        }
        assert_eq!(cli.connect_timeout.duration(), Duration::from_secs(5));
        let args = join(&cli);
        assert_eq!(args.groups, ["123"]);
        assert_eq!(args.count, None);
        assert_eq!(args.timeout, None);

        let cli = parse(&["send", "123", "msg"]).unwrap();
        let args = send(&cli);
        assert_eq!((args.group.as_str(), args.message.as_str()), ("123", "msg"));
        assert!(!args.json);
        assert_eq!(args.timeout.duration(), Duration::from_secs(10));
    }

    #[test]
    fn url_before_or_after_the_subcommand() {
        let url = "ws://example.test:9";
        for args in [
            &["--url", url, "join", "1", "2"][..],
            &["join", "--url", url, "1", "2"],
            &["join", "1", "2", "--url", url],
        ] {
            let cli = parse(args).unwrap();
            assert_eq!(cli.url, url, "{args:?}");
            assert_eq!(join(&cli).groups, ["1", "2"], "{args:?}");
        }
        let cli = parse(&["send", "1", "hi", "--url", url, "--connect-timeout", "0.25"]).unwrap();
        assert_eq!(cli.url, url);
        assert_eq!(cli.connect_timeout.duration(), Duration::from_millis(250));
    }

    #[test]
    fn join_flags() {
        let cli = parse(&["join", "1", "--count", "3", "--timeout", "0.5", "-7"]).unwrap();
        let args = join(&cli);
        assert_eq!(args.groups, ["1", "-7"]);
        assert_eq!(args.count, Some(3));
        assert_eq!(
            args.timeout.map(Secs::duration),
            Some(Duration::from_millis(500))
        );
        assert!(parse(&["join"]).is_err(), "at least one group");
        assert!(parse(&["join", "1", "--count", "-1"]).is_err());
    }

    #[test]
    fn send_flags() {
        let cli = parse(&["send", "1", "--json", r#"{"a":1}"#, "--timeout", "2"]).unwrap();
        let args = send(&cli);
        assert!(args.json);
        assert_eq!(args.message, r#"{"a":1}"#);
        assert_eq!(args.timeout.duration(), Duration::from_secs(2));

        let cli = parse(&["send", "1", "-not a flag", "--json"]).unwrap();
        assert_eq!(send(&cli).message, "-not a flag");
        assert!(send(&cli).json);

        assert!(parse(&["send", "1"]).is_err(), "message is required");
        assert!(parse(&["send", "1", "a", "b"]).is_err(), "one message only");
    }

    fn publish(cli: &Cli) -> &PublishArgs {
        match &cli.command {
            Command::Publish(args) => args,
            other => panic!("not a publish: {other:?}"),
        }
    }

    #[test]
    fn publish_flags() {
        let cli = parse(&[
            "publish",
            "-5",
            "--json",
            "[1]",
            "--admin-url",
            "http://h:1",
        ])
        .unwrap();
        let args = publish(&cli);
        assert_eq!(args.group.as_deref(), Some("-5"));
        assert_eq!(args.message.as_deref(), Some("[1]"));
        assert!(args.json);
        assert_eq!(args.admin_url, "http://h:1");
        assert_eq!(args.batch, None);
        assert_eq!(args.timeout.duration(), Duration::from_secs(10));

        let cli = parse(&["publish", "--batch", "-", "--token", "t", "--timeout", "2"]).unwrap();
        let args = publish(&cli);
        assert_eq!(args.batch.as_deref(), Some("-"));
        assert_eq!(args.token.as_deref(), Some("t"));
        assert_eq!((args.group.as_ref(), args.message.as_ref()), (None, None));

        if std::env::var_os("CLIENT_CLI_ADMIN_URL").is_none() {
            let cli = parse(&["publish", "1", "m"]).unwrap();
            assert_eq!(publish(&cli).admin_url, DEFAULT_ADMIN_URL);
        }
        assert!(parse(&["publish"]).is_err(), "GROUP MESSAGE or --batch");
        assert!(parse(&["publish", "1"]).is_err(), "MESSAGE is required");
        assert!(parse(&["publish", "1", "m", "--batch", "f"]).is_err());
        assert!(parse(&["publish", "--batch", "f", "--json"]).is_err());
        assert!(parse(&["publish", "", "m"]).is_err());
    }

    #[test]
    fn group_ids_are_validated() {
        assert!(parse(&["join", ""]).is_err());
        assert!(parse(&["send", "", "m"]).is_err());
        let long = "x".repeat(DEFAULT_MAX_GROUP_ID_LEN + 1);
        assert!(parse(&["join", &long]).is_err());
        let max = "x".repeat(DEFAULT_MAX_GROUP_ID_LEN);
        assert!(parse(&["join", &max]).is_ok());
    }

    #[test]
    fn seconds() {
        let ok = |text: &str| parse_secs(text).map(Secs::duration);
        assert_eq!(ok("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(ok("10"), Ok(Duration::from_secs(10)));
        assert_eq!(ok("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(ok("1m"), Ok(Duration::from_secs(60)));
        for bad in ["0", "-1", "abc", "nan", "inf", "1e400", ""] {
            assert!(parse_secs(bad).is_err(), "{bad:?}");
        }
        assert_eq!(parse_secs("0.5").unwrap().to_string(), "0.5");
        assert_eq!(parse_secs("10").unwrap().to_string(), "10");
    }

    #[test]
    fn help_lists_exit_codes() {
        let err = parse(&["--help"]).unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayHelp);
        assert!(err.to_string().contains("Exit codes:"));
    }

    #[test]
    fn clap_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn old_environment_variables_are_defaults_below_flags_and_new_ones() {
        use clap::{CommandFactory, FromArgMatches};
        let parse = |args: &[&str], env: &[(&str, &str)]| {
            let lookup = |name: &str| {
                env.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            };
            let (command, used) = with_old_env(Cli::command(), &RENAMED_ENV, lookup);
            let matches = command
                .try_get_matches_from(std::iter::once("client-cli").chain(args.iter().copied()))
                .expect("parses");
            (Cli::from_arg_matches(&matches).expect("fits"), used)
        };
        let old = [
            ("PUSH_URL", "ws://old:1"),
            ("PUSH_ADMIN_URL", "http://old:2"),
            ("PUSH_API_TOKEN", "old-token"),
        ];
        let (cli, used) = parse(&["publish", "1", "m"], &old);
        assert_eq!(used, ["PUSH_URL", "PUSH_ADMIN_URL", "PUSH_API_TOKEN"]);
        assert_eq!(cli.url, "ws://old:1");
        let args = publish(&cli);
        assert_eq!(args.admin_url, "http://old:2");
        assert_eq!(args.token.as_deref(), Some("old-token"));

        let (cli, _) = parse(&["--url", "ws://flag:1", "publish", "1", "m"], &old);
        assert_eq!(cli.url, "ws://flag:1", "a flag beats an old variable");
        let (cli, _) = parse(
            &["join", "1"],
            &[("PUSH_URL", "ws://old:1"), ("CLIENT_CLI_URL", "x")],
        );
        assert_ne!(cli.url, "ws://old:1", "the new variable beats the old one");
    }
}
