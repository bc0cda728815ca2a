//! `--config FILE` for any clap command: an optional TOML file whose keys are the command's long
//! flag names (`max-message-size = 65536`, `idle-timeout = "60s"`).
//!
//! Precedence: command-line flag > environment variable > config file > default. The command is
//! parsed once to find the file and to learn where each value came from; every key of the file
//! whose flag was set neither on the command line nor by its environment variable becomes a
//! `--key=value` argument, and the command is parsed again. clap's own value parsers therefore
//! check the file's values, and a flag added to a binary later is settable from the file with no
//! further code.
//!
//! A setting that was renamed keeps its old names for one release through [`Aliases`]: before
//! clap sees anything, an old flag (`--old`, `--old=v`) becomes the new one, an old config-file
//! key the new key, and an old environment variable a `--new=v` argument when neither the new
//! flag nor the new variable is set (so the precedence above holds, and the process environment
//! is only read, never written). Each use is returned as a [`Deprecated`] for `main` to log once
//! logging is up.

use std::ffi::OsString;
use std::path::{Path, PathBuf};

use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, ArgMatches, Command, Parser};

/// Longest accepted time setting: deadlines are computed as `now + duration`, and absurd values
/// would overflow.
pub const MAX_DURATION: std::time::Duration = std::time::Duration::from_secs(24 * 60 * 60);

/// The long flag that names the config file. A command without it parses as plain clap.
pub const CONFIG_FLAG: &str = "config";

/// A setting whose value cannot work, found when a server checks its settings after parsing
/// (alone or against each other). The message reads `max-frame-size must be ...`: the setting's
/// key, then `reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{} {reason}", self.key())]
pub struct ConfigError {
    /// The flag, e.g. `--max-frame-size`.
    pub setting: &'static str,
    /// What its value must be, e.g. `must be at least 1`.
    pub reason: String,
}

impl ConfigError {
    pub fn new(setting: &'static str, reason: impl Into<String>) -> ConfigError {
        ConfigError {
            setting,
            reason: reason.into(),
        }
    }

    /// The setting's name without the dashes: its key in a config file.
    pub fn key(&self) -> &'static str {
        self.setting.trim_start_matches('-')
    }
}

/// What is wrong with a config file. Each message names the file, and the key when one is at
/// fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigFileError {
    #[error("cannot read config file {}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {} is not valid TOML: {message}", path.display())]
    Syntax { path: PathBuf, message: String },
    #[error("config file {}: {detail}", path.display())]
    UnknownKeys { path: PathBuf, detail: String },
    #[error("config file {}: key `{key}`: {reason}", path.display())]
    InvalidValue {
        path: PathBuf,
        key: String,
        reason: String,
    },
    /// The file's settings are each valid but not together (clap conflicts and the like).
    #[error("config file {}: {reason}", path.display())]
    Rejected { path: PathBuf, reason: String },
}

/// Why the command line could not be turned into settings.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A bad flag or environment variable, or a request for `--help` or `--version`: clap's own
    /// error, which prints itself and picks the exit code (`clap::Error::exit`).
    #[error(transparent)]
    Clap(#[from] clap::Error),
    #[error(transparent)]
    ConfigFile(#[from] ConfigFileError),
}

/// A setting's former name and its current one. For a flag, both are long names without the
/// dashes (`listen`, `broker-listen`); for an environment variable, whole variable names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renamed {
    pub old: &'static str,
    pub new: &'static str,
}

/// The old names a binary still accepts, each mapped to its new one.
#[derive(Debug, Clone, Copy, Default)]
pub struct Aliases {
    /// The binary's environment prefix (`GATEWAY`): a renamed flag's variable is renamed with it,
    /// `GATEWAY_LINK_QUEUE` to `GATEWAY_LINK_QUEUE_FRAMES` (see [`env_var`]).
    pub env_prefix: &'static str,
    /// Renamed flags; each also renames its config-file key and its environment variable.
    pub flags: &'static [Renamed],
    /// Environment variables renamed otherwise (`LOG_FORMAT` to `BROKER_LOG_FORMAT`).
    pub env_vars: &'static [Renamed],
}

impl Aliases {
    /// No old names.
    pub const NONE: Aliases = Aliases {
        env_prefix: "",
        flags: &[],
        env_vars: &[],
    };

    fn flag(&self, old: &str) -> Option<&'static str> {
        self.flags.iter().find(|r| r.old == old).map(|r| r.new)
    }

    /// Every renamed environment variable, old name first.
    fn env_renames(&self) -> impl Iterator<Item = (String, String)> + '_ {
        let var = |flag: &str| env_var(self.env_prefix, flag);
        self.flags
            .iter()
            .map(move |r| (var(r.old), var(r.new)))
            // The broker's `--listen` became `--broker-listen`: both read `BROKER_LISTEN`.
            .filter(|(old, new)| old != new)
            .chain(
                self.env_vars
                    .iter()
                    .map(|r| (r.old.to_owned(), r.new.to_owned())),
            )
    }
}

/// The environment variable of flag `--flag` of the binary whose prefix is `prefix`: the prefix,
/// then the flag in upper case, less a leading `<binary>-` that would repeat the prefix
/// (`broker --broker-listen` reads `BROKER_LISTEN`, `gateway --broker-listen`
/// `GATEWAY_BROKER_LISTEN`).
pub fn env_var(prefix: &str, flag: &str) -> String {
    let own = format!("{}-", prefix.to_ascii_lowercase().replace('_', "-"));
    let flag = flag.strip_prefix(own.as_str()).unwrap_or(flag);
    format!("{prefix}_{}", env_case(flag))
}

/// `link-queue-frames` as an environment variable's suffix: `LINK_QUEUE_FRAMES`.
pub fn env_case(flag: &str) -> String {
    flag.replace('-', "_").to_ascii_uppercase()
}

/// One use of an old name: `--listen`, `listen` (a config-file key) or `BROKER_LISTEN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Deprecated {
    pub old: String,
    pub new: String,
}

impl Deprecated {
    /// Logs this use. At `info`, not `warn`: a deployment that alerts on warnings should not be
    /// paged for a name that still works.
    pub fn warn(&self) {
        tracing::warn!(old = %self.old, new = %self.new, "deprecated setting name");
    }
}

/// Settings parsed into `C`, and the old names that were used to give them.
#[derive(Debug)]
pub struct Parsed<C> {
    pub cli: C,
    pub deprecated: Vec<Deprecated>,
}

/// Parses the process's arguments, environment and config file into `C`, accepting the old
/// names of `aliases`.
///
/// Behaves like [`Parser::parse`] for the command line itself (help, version and usage errors
/// are printed and exit the process); a bad config file is returned, for `main` to report.
pub fn parse_cli<C: Parser>(aliases: &Aliases) -> Result<Parsed<C>, ConfigFileError> {
    match try_parse_with(std::env::args_os(), |name| std::env::var_os(name), aliases) {
        Ok(parsed) => Ok(parsed),
        Err(CliError::Clap(e)) => e.exit(),
        Err(CliError::ConfigFile(e)) => Err(e),
    }
}

/// [`parse_cli`] over the given arguments (the first is the binary name), without old names,
/// returning every error. Environment variables are read by clap, from the process environment.
pub fn try_parse_from<C, I, T>(args: I) -> Result<C, CliError>
where
    C: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    try_parse_with(args, |_| None, &Aliases::NONE).map(|parsed| parsed.cli)
}

/// [`parse_cli`] over the given arguments (the first is the binary name), returning every error.
/// `env` looks up the environment variables that `aliases` renames (and their new names); clap
/// reads the current names itself, from the process environment.
pub fn try_parse_with<C, I, T>(
    args: I,
    env: impl Fn(&str) -> Option<OsString>,
    aliases: &Aliases,
) -> Result<Parsed<C>, CliError>
where
    C: Parser,
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut command = C::command();
    let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let (args, mut deprecated) = renamed_args(&command, args, env, aliases);
    let matches = command.clone().try_get_matches_from(&args)?;
    let Some(path) = config_path(&command, &matches) else {
        let cli = C::from_arg_matches(&matches).map_err(|e| e.format(&mut command))?;
        return Ok(Parsed { cli, deprecated });
    };
    let table = load(&path)?;
    let table = renamed_keys(table, &path, aliases, &mut deprecated)?;
    let from_file = file_args(&command, &matches, &path, &table)?;

    let merged = with_inserted(&args, from_file);
    match C::try_parse_from(merged) {
        Ok(cli) => Ok(Parsed { cli, deprecated }),
        Err(e) => Err(ConfigFileError::Rejected {
            path,
            reason: clap_reason(&e),
        }
        .into()),
    }
}

/// `args` with each old flag spelled the new way, and with a `--new=value` argument for each old
/// environment variable whose new flag is set neither on the command line nor by its own
/// variable. Arguments after `--` are left alone.
fn renamed_args(
    command: &Command,
    args: Vec<OsString>,
    env: impl Fn(&str) -> Option<OsString>,
    aliases: &Aliases,
) -> (Vec<OsString>, Vec<Deprecated>) {
    let mut deprecated = Vec::new();
    let mut renamed = Vec::with_capacity(args.len());
    let mut options_end = false;
    for (i, arg) in args.into_iter().enumerate() {
        let text = arg.to_str().unwrap_or_default();
        options_end |= i > 0 && text == "--";
        let flag = text.strip_prefix("--").filter(|_| i > 0 && !options_end);
        let (name, value) = match flag.map(|f| f.split_once('=').unwrap_or((f, ""))) {
            Some((name, value)) => (name, value),
            None => {
                renamed.push(arg);
                continue;
            }
        };
        match aliases.flag(name) {
            Some(new) => {
                deprecated.push(Deprecated {
                    old: format!("--{name}"),
                    new: format!("--{new}"),
                });
                let equals = if text.contains('=') { "=" } else { "" };
                renamed.push(OsString::from(format!("--{new}{equals}{value}")));
            }
            None => renamed.push(arg),
        }
    }

    let on_command_line = |long: &str| {
        let flag = format!("--{long}");
        let with_value = format!("--{long}=");
        renamed.iter().skip(1).any(|a| {
            a.to_str()
                .is_some_and(|a| a == flag || a.starts_with(&with_value))
        })
    };
    let mut from_env = Vec::new();
    for (old, new) in aliases.env_renames() {
        let Some(value) = env(&old) else {
            continue;
        };
        deprecated.push(Deprecated {
            old: old.clone(),
            new: new.clone(),
        });
        let Some(arg) = command
            .get_arguments()
            .find(|a| a.get_env().is_some_and(|e| e == new.as_str()))
        else {
            continue;
        };
        let Some(long) = arg.get_long() else {
            continue;
        };
        if env(&new).is_some() || on_command_line(long) {
            continue;
        }
        match arg.get_action() {
            ArgAction::SetTrue => {
                let falsey = ["", "0", "n", "no", "f", "false", "off"];
                let value = value.to_string_lossy().to_ascii_lowercase();
                if !falsey.contains(&value.as_str()) {
                    from_env.push(OsString::from(format!("--{long}")));
                }
            }
            _ => {
                let mut arg = OsString::from(format!("--{long}="));
                arg.push(value);
                from_env.push(arg);
            }
        }
    }
    (with_inserted(&renamed, from_env), deprecated)
}

/// The config file's table with each old key renamed. A file that sets both a key and its old
/// name is refused: which one was meant is not clear.
fn renamed_keys(
    table: toml::Table,
    path: &Path,
    aliases: &Aliases,
    deprecated: &mut Vec<Deprecated>,
) -> Result<toml::Table, ConfigFileError> {
    let mut renamed = toml::Table::new();
    for (key, value) in &table {
        let Some(new) = aliases.flag(key) else {
            renamed.insert(key.clone(), value.clone());
            continue;
        };
        if table.contains_key(new) {
            return Err(ConfigFileError::InvalidValue {
                path: path.to_owned(),
                key: key.clone(),
                reason: format!("the old name of `{new}`, which the file also sets"),
            });
        }
        deprecated.push(Deprecated {
            old: key.clone(),
            new: new.to_owned(),
        });
        renamed.insert(new.to_owned(), value.clone());
    }
    Ok(renamed)
}

/// The value of `--config` (from the command line or its environment variable), if any.
fn config_path(command: &Command, matches: &ArgMatches) -> Option<PathBuf> {
    let arg = command
        .get_arguments()
        .find(|a| a.get_long() == Some(CONFIG_FLAG))?;
    let mut raw = matches.try_get_raw(arg.get_id().as_str()).ok()??;
    raw.next().map(PathBuf::from)
}

fn load(path: &Path) -> Result<toml::Table, ConfigFileError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    text.parse::<toml::Table>()
        .map_err(|e| ConfigFileError::Syntax {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })
}

/// The arguments each key of the file stands for, each checked on its own, leaving out the keys
/// whose flag was set on the command line or by an environment variable.
fn file_args(
    command: &Command,
    matches: &ArgMatches,
    path: &Path,
    table: &toml::Table,
) -> Result<Vec<OsString>, ConfigFileError> {
    let unknown: Vec<String> = table
        .keys()
        .filter(|key| find_arg(command, key).is_none())
        .map(|key| unknown_key(command, key))
        .collect();
    if !unknown.is_empty() {
        return Err(ConfigFileError::UnknownKeys {
            path: path.to_owned(),
            detail: format!(
                "{}; keys are the long flag names that `{} --help` lists",
                unknown.join(", "),
                command.get_name()
            ),
        });
    }

    let mut from_file = Vec::new();
    for (key, value) in table {
        let Some(arg) = find_arg(command, key) else {
            continue; // reported above
        };
        let invalid = |reason: String| ConfigFileError::InvalidValue {
            path: path.to_owned(),
            key: key.clone(),
            reason,
        };
        if key == CONFIG_FLAG {
            return Err(invalid("a config file cannot name another one".into()));
        }
        let args = to_args(arg, key, value).map_err(invalid)?;
        // Checked even when a flag overrides it, so the file does not break once the flag goes.
        check_alone(command, &args).map_err(invalid)?;
        let overridden = matches!(
            matches.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !overridden {
            from_file.extend(args);
        }
    }
    Ok(from_file)
}

fn find_arg<'a>(command: &'a Command, key: &str) -> Option<&'a Arg> {
    command.get_arguments().find(|a| a.get_long() == Some(key))
}

fn unknown_key(command: &Command, key: &str) -> String {
    let kebab = key.replace('_', "-");
    if kebab != key && find_arg(command, &kebab).is_some() {
        format!("unknown key `{key}` (did you mean `{kebab}`?)")
    } else {
        format!("unknown key `{key}`")
    }
}

/// `--key=value` arguments for one key of the file.
fn to_args(arg: &Arg, key: &str, value: &toml::Value) -> Result<Vec<OsString>, String> {
    let flag = || OsString::from(format!("--{key}"));
    let option = |v: String| OsString::from(format!("--{key}={v}"));
    match arg.get_action() {
        ArgAction::Set => Ok(vec![option(scalar(value)?)]),
        ArgAction::Append => match value {
            toml::Value::Array(items) => {
                items.iter().map(|item| scalar(item).map(option)).collect()
            }
            // `[history]` `"chat:" = "100,10m"`: each entry a `--key=NAME=VALUE`.
            toml::Value::Table(entries) => entries
                .iter()
                .map(|(name, item)| scalar(item).map(|v| option(format!("{name}={v}"))))
                .collect(),
            value => Ok(vec![option(scalar(value)?)]),
        },
        action @ (ArgAction::SetTrue | ArgAction::SetFalse) => match value {
            toml::Value::Boolean(b) => {
                let on = matches!(action, ArgAction::SetTrue);
                Ok(if *b == on { vec![flag()] } else { Vec::new() })
            }
            other => Err(format!("expected true or false, found {}", describe(other))),
        },
        ArgAction::Count => match value {
            toml::Value::Integer(n) if *n >= 0 => Ok((0..*n).map(|_| flag()).collect()),
            other => Err(format!(
                "expected a count (an integer, 0 or more), found {}",
                describe(other)
            )),
        },
        _ => Err("cannot be set in a config file".into()),
    }
}

/// A TOML value as the text clap parses: strings as they are, numbers and booleans written out.
fn scalar(value: &toml::Value) -> Result<String, String> {
    match value {
        toml::Value::String(s) => Ok(s.clone()),
        toml::Value::Integer(n) => Ok(n.to_string()),
        toml::Value::Float(f) => Ok(f.to_string()),
        toml::Value::Boolean(b) => Ok(b.to_string()),
        toml::Value::Datetime(d) => Ok(d.to_string()),
        other @ (toml::Value::Array(_) | toml::Value::Table(_)) => Err(format!(
            "expected a single value, found {}",
            describe(other)
        )),
    }
}

fn describe(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => format!("the string {s:?}"),
        toml::Value::Array(_) => "an array".into(),
        toml::Value::Table(_) => "a table".into(),
        toml::Value::Integer(n) => format!("the integer {n}"),
        toml::Value::Float(f) => format!("the float {f}"),
        toml::Value::Boolean(b) => format!("the boolean {b}"),
        toml::Value::Datetime(d) => format!("the datetime {d}"),
    }
}

/// `args` with `extra` inserted right after the binary name, so that a `--` or a trailing
/// positional on the command line cannot swallow them.
fn with_inserted(args: &[OsString], extra: Vec<OsString>) -> Vec<OsString> {
    let mut merged: Vec<OsString> = args.iter().take(1).cloned().collect();
    merged.extend(extra);
    merged.extend(args.iter().skip(1).cloned());
    merged
}

/// Parses one key's arguments on their own, so a bad value is blamed on its key. Errors that
/// depend on the other arguments (a missing required one, a conflict) are left to the full parse.
fn check_alone(command: &Command, key_args: &[OsString]) -> Result<(), String> {
    let args = std::iter::once(OsString::from(command.get_name())).chain(key_args.iter().cloned());
    match command.clone().try_get_matches_from(args) {
        Ok(_) => Ok(()),
        Err(e) => match e.kind() {
            ErrorKind::InvalidValue
            | ErrorKind::ValueValidation
            | ErrorKind::WrongNumberOfValues
            | ErrorKind::TooManyValues
            | ErrorKind::TooFewValues
            | ErrorKind::InvalidUtf8
            | ErrorKind::NoEquals
            | ErrorKind::UnknownArgument => Err(clap_reason(&e)),
            _ => Ok(()),
        },
    }
}

/// clap's message without its `error:` prefix, usage and tips, on one line.
fn clap_reason(err: &clap::Error) -> String {
    if matches!(
        err.kind(),
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion
    ) {
        return "cannot ask for help or the version".into();
    }
    let rendered = err.render().to_string();
    let text = rendered.trim().trim_start_matches("error:").trim_start();
    let first = text.split("\n\n").next().unwrap_or(text);
    first
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use super::*;
    use crate::logging::LogFormat;

    #[derive(Debug, Parser)]
    #[command(name = "test")]
    pub(crate) struct TestCli {
        #[arg(long = "config", value_name = "FILE")]
        config_file: Option<PathBuf>,
        #[arg(long, default_value_t = 1)]
        count: usize,
        #[arg(long, default_value = "5s", value_parser = humantime::parse_duration)]
        timeout: Duration,
        /// PATH is set in every test process, so precedence over the environment is tested
        /// without `set_var` (which races with other test threads reading the environment).
        #[arg(long = "from-env", env = "PATH", default_value = "default")]
        from_env: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        verbose: bool,
        #[arg(long)]
        tag: Vec<String>,
        #[arg(long, value_enum, default_value_t)]
        log_format: LogFormat,
    }

    #[test]
    fn a_config_error_names_the_setting_by_its_key() {
        let err = ConfigError::new("--max-frame-size", "must be at least 64 bytes");
        assert_eq!(err.key(), "max-frame-size");
        assert_eq!(err.to_string(), "max-frame-size must be at least 64 bytes");
    }

    /// A file in the temp directory, removed on drop.
    struct TempFile(PathBuf);

    impl TempFile {
        fn new(name: &str, text: &str) -> TempFile {
            let path = std::env::temp_dir().join(format!(
                "cli-config-test-{}-{name}.toml",
                std::process::id()
            ));
            std::fs::write(&path, text).expect("write temp config file");
            TempFile(path)
        }

        fn path(&self) -> &str {
            self.0.to_str().expect("temp path is UTF-8")
        }
    }

    impl Drop for TempFile {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn parse(args: &[&str]) -> Result<TestCli, CliError> {
        try_parse_from(std::iter::once("test").chain(args.iter().copied()))
    }

    fn file_error(args: &[&str]) -> ConfigFileError {
        match parse(args) {
            Err(CliError::ConfigFile(e)) => e,
            other => panic!("expected a config file error, got {other:?}"),
        }
    }

    fn path_env() -> String {
        std::env::var("PATH").expect("PATH is set")
    }

    #[test]
    fn without_a_file_it_is_plain_clap() {
        let cli = parse(&["--count", "3"]).expect("parses");
        assert_eq!(cli.count, 3);
        assert_eq!(cli.timeout, Duration::from_secs(5));
        assert_eq!(cli.from_env, path_env());
        assert!(matches!(
            parse(&["--count", "x"]),
            Err(CliError::Clap(e)) if e.kind() == ErrorKind::ValueValidation
        ));
    }

    #[test]
    fn flag_beats_env_beats_file_beats_default() {
        let file = TempFile::new(
            "precedence",
            r#"
            count = 7
            name = "from-file"
            from-env = "from-file"
            log-format = "json"
            "#,
        );
        let cli = parse(&["--config", file.path(), "--count", "9"]).expect("parses");
        assert_eq!(cli.count, 9, "flag beats file");
        assert_eq!(cli.from_env, path_env(), "env beats file");
        assert_eq!(
            cli.name.as_deref(),
            Some("from-file"),
            "file beats no default"
        );
        assert_eq!(cli.log_format, LogFormat::Json, "file beats default");
        assert_eq!(cli.timeout, Duration::from_secs(5), "default when unset");

        let cli = parse(&["--from-env=flag", "--config", file.path()]).expect("parses");
        assert_eq!(cli.from_env, "flag", "flag beats env");
        assert_eq!(cli.count, 7);
    }

    #[test]
    fn every_kind_of_value() {
        let file = TempFile::new(
            "kinds",
            r#"
            timeout = "1m 30s"
            verbose = true
            tag = ["a", "b"]
            name = "-starts-with-a-dash"
            "#,
        );
        let cli = parse(&["--config", file.path()]).expect("parses");
        assert_eq!(cli.timeout, Duration::from_secs(90));
        assert!(cli.verbose);
        assert_eq!(cli.tag, ["a", "b"]);
        assert_eq!(cli.name.as_deref(), Some("-starts-with-a-dash"));

        // A flag given on the command line replaces the file's list rather than adding to it.
        let cli = parse(&["--config", file.path(), "--tag", "c"]).expect("parses");
        assert_eq!(cli.tag, ["c"]);

        let off = TempFile::new("off", "verbose = false\ntag = []\n");
        let cli = parse(&["--config", off.path()]).expect("parses");
        assert!(!cli.verbose);
        assert!(cli.tag.is_empty());
    }

    /// A repeatable setting may also be a table: each entry is one `NAME=VALUE` (the gateway's
    /// `[history]` `"chat:" = "100,10m"`). A table must come after the plain keys in TOML.
    #[test]
    fn a_repeatable_setting_may_be_a_table() {
        let file = TempFile::new(
            "table",
            r#"
            count = 3
            [tag]
            "chat:" = "100,10m"
            news = 5
            "#,
        );
        let cli = parse(&["--config", file.path()]).expect("parses");
        assert_eq!(cli.count, 3);
        assert_eq!(cli.tag, ["chat:=100,10m", "news=5"]);
    }

    #[test]
    fn unknown_keys_are_named() {
        let file = TempFile::new("unknown", "count = 2\nmax_count = 3\nnope = 1\n");
        let e = file_error(&["--config", file.path()]);
        assert!(matches!(e, ConfigFileError::UnknownKeys { .. }), "{e:?}");
        let message = e.to_string();
        assert!(message.contains(file.path()), "{message}");
        assert!(message.contains("unknown key `max_count`"), "{message}");
        assert!(message.contains("unknown key `nope`"), "{message}");

        let file = TempFile::new("snake", "log_format = \"json\"\n");
        let message = file_error(&["--config", file.path()]).to_string();
        assert!(message.contains("did you mean `log-format`?"), "{message}");

        // Keys are flags, not sections.
        let file = TempFile::new("section", "[gateway]\ncount = 2\n");
        let message = file_error(&["--config", file.path()]).to_string();
        assert!(message.contains("unknown key `gateway`"), "{message}");
    }

    #[test]
    fn bad_values_name_file_and_key() {
        let cases = [
            ("count = \"many\"", "count", "invalid value 'many'"),
            ("count = -1", "count", "invalid value '-1'"),
            ("timeout = \"soon\"", "timeout", "invalid value 'soon'"),
            ("timeout = 5", "timeout", "invalid value '5'"),
            (
                "log-format = \"xml\"",
                "log-format",
                "possible values: text, json",
            ),
            (
                "count = [1, 2]",
                "count",
                "expected a single value, found an array",
            ),
            ("name = { a = 1 }", "name", "found a table"),
            ("verbose = \"yes\"", "verbose", "expected true or false"),
            ("config = \"other.toml\"", "config", "cannot name another"),
        ];
        for (i, (text, key, reason)) in cases.into_iter().enumerate() {
            let file = TempFile::new(&format!("bad-{i}"), text);
            let e = file_error(&["--config", file.path()]);
            let message = e.to_string();
            assert!(
                matches!(&e, ConfigFileError::InvalidValue { key: k, .. } if k == key),
                "{text}: {e:?}"
            );
            assert!(message.contains(file.path()), "{text}: {message}");
            assert!(
                message.contains(&format!("key `{key}`")),
                "{text}: {message}"
            );
            assert!(message.contains(reason), "{text}: {message}");
        }
    }

    #[test]
    fn a_bad_value_overridden_by_a_flag_is_still_an_error() {
        // The file is checked as a whole, so it does not break when the flag is dropped later.
        let file = TempFile::new("overridden", "count = \"many\"\n");
        let e = file_error(&["--config", file.path(), "--count", "2"]);
        assert!(e.to_string().contains("key `count`"), "{e}");
    }

    #[test]
    fn unreadable_and_malformed_files() {
        let missing = std::env::temp_dir().join("cli-config-test-does-not-exist.toml");
        let e = file_error(&["--config", missing.to_str().expect("UTF-8 path")]);
        assert!(matches!(e, ConfigFileError::Read { .. }), "{e:?}");
        assert!(e.to_string().contains("does-not-exist.toml"), "{e}");

        let file = TempFile::new("syntax", "count = \n");
        let e = file_error(&["--config", file.path()]);
        assert!(matches!(e, ConfigFileError::Syntax { .. }), "{e:?}");
        let message = e.to_string();
        assert!(message.contains(file.path()), "{message}");
        assert!(message.contains("line 1"), "{message}");
    }

    #[test]
    fn help_wins_over_a_bad_file() {
        match parse(&["--config", "/nonexistent/config.toml", "--help"]) {
            Err(CliError::Clap(e)) if e.kind() == ErrorKind::DisplayHelp => {
                let help = e.render().to_string();
                assert!(help.contains("--config <FILE>"), "{help}");
            }
            other => panic!("expected help, got {other:?}"),
        }
    }

    #[derive(Debug, Parser)]
    #[command(name = "renaming")]
    struct Renaming {
        #[arg(long = "config", value_name = "FILE")]
        config_file: Option<PathBuf>,
        #[arg(long, env = "SETTINGS_TEST_NEW_COUNT", default_value_t = 1)]
        new_count: usize,
        #[arg(long, env = "SETTINGS_TEST_LOG_FORMAT", value_enum, default_value_t)]
        log_format: LogFormat,
        #[arg(long, env = "SETTINGS_TEST_LOUD")]
        loud: bool,
        #[arg(long)]
        name: Option<String>,
    }

    const ALIASES: Aliases = Aliases {
        env_prefix: "SETTINGS_TEST",
        flags: &[
            Renamed {
                old: "count",
                new: "new-count",
            },
            Renamed {
                old: "quiet-not",
                new: "loud",
            },
        ],
        env_vars: &[Renamed {
            old: "LOG_FORMAT",
            new: "SETTINGS_TEST_LOG_FORMAT",
        }],
    };

    /// Parses with the old names of [`ALIASES`], and `env` as the environment those names are
    /// looked up in (the new names are not set in the test process).
    fn parse_renamed(args: &[&str], env: &[(&str, &str)]) -> Result<Parsed<Renaming>, CliError> {
        let env: Vec<(String, OsString)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), OsString::from(v)))
            .collect();
        let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        try_parse_with(
            std::iter::once("renaming").chain(args.iter().copied()),
            lookup,
            &ALIASES,
        )
    }

    fn used(old: &str, new: &str) -> Deprecated {
        Deprecated {
            old: old.into(),
            new: new.into(),
        }
    }

    #[test]
    fn an_old_flag_sets_the_new_one_and_is_reported() {
        for args in [&["--count", "3"][..], &["--count=3"]] {
            let parsed = parse_renamed(args, &[]).expect("parses");
            assert_eq!(parsed.cli.new_count, 3, "{args:?}");
            assert_eq!(parsed.deprecated, [used("--count", "--new-count")]);
        }
        let parsed = parse_renamed(&["--quiet-not"], &[]).expect("parses");
        assert!(parsed.cli.loud);
        // A value that looks like an old flag after `--name=` is a value, and `--count-x` is
        // another flag.
        let parsed = parse_renamed(&["--name=--count"], &[]).expect("parses");
        assert_eq!(parsed.cli.name.as_deref(), Some("--count"));
        assert!(parsed.deprecated.is_empty());
        assert!(parse_renamed(&["--count-x", "1"], &[]).is_err());

        let parsed = parse_renamed(&["--new-count", "4"], &[]).expect("parses");
        assert_eq!(parsed.cli.new_count, 4);
        assert!(parsed.deprecated.is_empty(), "new names are not reported");
    }

    #[test]
    fn an_old_env_var_sets_the_new_setting_below_flags() {
        let parsed = parse_renamed(&[], &[("SETTINGS_TEST_COUNT", "5"), ("LOG_FORMAT", "json")])
            .expect("parses");
        assert_eq!(parsed.cli.new_count, 5);
        assert_eq!(parsed.cli.log_format, LogFormat::Json);
        assert_eq!(
            parsed.deprecated,
            [
                used("SETTINGS_TEST_COUNT", "SETTINGS_TEST_NEW_COUNT"),
                used("LOG_FORMAT", "SETTINGS_TEST_LOG_FORMAT"),
            ]
        );
        let parsed =
            parse_renamed(&["--new-count", "9"], &[("SETTINGS_TEST_COUNT", "5")]).expect("parses");
        assert_eq!(parsed.cli.new_count, 9, "flag beats old env var");
        let parsed =
            parse_renamed(&["--count", "9"], &[("SETTINGS_TEST_COUNT", "5")]).expect("parses");
        assert_eq!(parsed.cli.new_count, 9, "old flag beats old env var");
        let parsed = parse_renamed(
            &[],
            &[
                ("SETTINGS_TEST_COUNT", "5"),
                ("SETTINGS_TEST_NEW_COUNT", "6"),
            ],
        )
        .expect("parses");
        assert_eq!(
            parsed.cli.new_count, 1,
            "the new variable, read by clap from the real environment where it is unset, wins"
        );
        for (value, loud) in [("true", true), ("1", true), ("false", false), ("0", false)] {
            let parsed = parse_renamed(&[], &[("SETTINGS_TEST_QUIET_NOT", value)]).expect("parses");
            assert_eq!(parsed.cli.loud, loud, "{value}");
        }
    }

    #[test]
    fn an_old_key_in_the_file_sets_the_new_setting_below_env_and_flags() {
        let file = TempFile::new("old-key", "count = 7\nlog-format = \"json\"\n");
        let parsed = parse_renamed(&["--config", file.path()], &[]).expect("parses");
        assert_eq!(parsed.cli.new_count, 7);
        assert_eq!(parsed.cli.log_format, LogFormat::Json);
        assert_eq!(parsed.deprecated, [used("count", "new-count")]);

        let parsed = parse_renamed(&["--config", file.path()], &[("SETTINGS_TEST_COUNT", "5")])
            .expect("parses");
        assert_eq!(parsed.cli.new_count, 5, "old env var beats old key");
        let parsed =
            parse_renamed(&["--config", file.path(), "--count", "8"], &[]).expect("parses");
        assert_eq!(parsed.cli.new_count, 8, "old flag beats old key");
        let parsed =
            parse_renamed(&["--config", file.path()], &[("LOG_FORMAT", "text")]).expect("parses");
        assert_eq!(
            parsed.cli.log_format,
            LogFormat::Text,
            "old env var beats key"
        );

        let both = TempFile::new("both-keys", "count = 7\nnew-count = 8\n");
        match parse_renamed(&["--config", both.path()], &[]) {
            Err(CliError::ConfigFile(e)) => {
                assert!(e.to_string().contains("key `count`"), "{e}")
            }
            other => panic!("expected a config file error, got {other:?}"),
        }
    }
}
