//! Checks that a binary's documentation says what its flags are: its example config file holds
//! exactly the defaults and names every setting, and docs/configuration.md has a row for each
//! flag with its environment variable, its default and, word for word, its help text, and lists
//! its environment variable. Only tests use it (feature `docs-check`).

use std::ffi::OsString;
use std::path::Path;

use clap::{Command, Parser};

use crate::settings::{
    env_case, env_var, try_parse_from, try_parse_with, Aliases, Parsed, CONFIG_FLAG,
};

/// What each binary's test checks: `docs/<bin>.example.toml` parses to exactly the defaults
/// (once `without_config_file` clears the `--config` field itself) and lists every setting, and
/// the `## <section>` part of `docs/configuration.md` has a row for every flag (see
/// [`undocumented`]), and its `## Environment variables` table a row for each flag's variable,
/// which is the binary's name in capitals, `_`, and the flag's (`BROKER_LINK_QUEUE_FRAMES`).
/// `Err` says what is wrong.
pub fn check_docs<C>(
    bin: &str,
    section: &str,
    docs: &Path,
    without_config_file: impl Fn(C) -> C,
) -> Result<(), String>
where
    C: Parser + std::fmt::Debug,
{
    let example = docs.join(format!("{bin}.example.toml"));
    let args = [
        OsString::from(bin),
        OsString::from("--config"),
        example.clone().into(),
    ];
    let from_file: C =
        try_parse_from(args).map_err(|e| format!("{} does not parse: {e}", example.display()))?;
    let defaults = C::try_parse_from([bin]).map_err(|e| format!("defaults do not parse: {e}"))?;
    let (from_file, defaults) = (without_config_file(from_file), defaults);
    if format!("{from_file:?}") != format!("{defaults:?}") {
        return Err(format!(
            "{} does not hold the defaults:\n{from_file:#?}\nvs\n{defaults:#?}",
            example.display()
        ));
    }
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
    };
    let reference = read(&docs.join("configuration.md"))?;
    let section = reference
        .split("\n## ")
        .find(|s| s.starts_with(&format!("{section}\n")))
        .ok_or_else(|| format!("configuration.md has no `## {section}` section"))?;
    let command = C::command();
    let mut missing = undocumented(&command, &read(&example)?, section);
    let env_section = reference
        .split("\n## ")
        .find(|s| s.starts_with("Environment variables\n"))
        .ok_or("configuration.md has no `## Environment variables` section")?;
    missing.extend(env_undocumented(&command, bin, env_section));
    if missing.is_empty() {
        Ok(())
    } else {
        Err(format!("not documented: {missing:#?}"))
    }
}

/// What an example config file and a reference page fail to say about `command`'s settings:
/// each flag's key must appear in `example_toml` (as `key =`, commented out or not), and
/// `reference_md` must have a table row starting `` | `--flag` | `` that names the flag's
/// environment variable and its default (each in backquotes), and whose fifth column
/// ("meaning") is the flag's help text (its doc comment), up to line breaks and a final period.
/// A row for a flag the command does not have is reported too. Tests call this so the
/// documentation cannot fall behind the flags.
pub fn undocumented(command: &Command, example_toml: &str, reference_md: &str) -> Vec<String> {
    let listed = |key: &str| {
        example_toml.lines().any(|line| {
            let line = line.trim_start().trim_start_matches('#').trim_start();
            line.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
    };
    let mut missing = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        if long != CONFIG_FLAG && !listed(long) {
            missing.push(format!("example config: key `{long}`"));
        }
        let row_start = format!("| `--{long}` |");
        let Some(row) = reference_md.lines().find(|l| l.starts_with(&row_start)) else {
            missing.push(format!("reference: row for `--{long}`"));
            continue;
        };
        if let Some(env) = arg.get_env() {
            let env = env.to_string_lossy();
            if !row.contains(&format!("`{env}`")) {
                missing.push(format!("reference: `--{long}` reads `{env}`"));
            }
        }
        let defaults: Vec<_> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy())
            .collect();
        if !defaults.is_empty() {
            let default = defaults.join(",");
            if !row.contains(&format!("`{default}`")) {
                missing.push(format!("reference: `--{long}` defaults to `{default}`"));
            }
        }
        let help = arg
            .get_long_help()
            .or(arg.get_help())
            .map(|h| normalized(&h.to_string()))
            .unwrap_or_default();
        let cells: Vec<&str> = row.trim().trim_matches('|').split(" | ").collect();
        let meaning = cells.get(4).map(|m| normalized(m)).unwrap_or_default();
        if meaning != help {
            missing.push(format!(
                "reference: `--{long}` means what its help says:\n  help: {help}\n  docs: {meaning}"
            ));
        }
    }
    for line in reference_md.lines() {
        let Some(long) = line
            .strip_prefix("| `--")
            .and_then(|rest| rest.split_once("` |"))
            .map(|(long, _)| long)
        else {
            continue;
        };
        if !command.get_arguments().any(|a| a.get_long() == Some(long)) {
            missing.push(format!("reference: row for `--{long}`, which is no flag"));
        }
    }
    missing
}

/// What the `## Environment variables` table fails to say about `command`'s variables: each
/// flag reads the variable named after the binary and the flag, and has a row
/// `` | `VAR` | bin | `--flag` | ``.
pub fn env_undocumented(command: &Command, bin: &str, env_md: &str) -> Vec<String> {
    let prefix = env_case(bin);
    let mut missing = Vec::new();
    for arg in command.get_arguments() {
        let Some(long) = arg.get_long() else {
            continue;
        };
        let expected = env_var(&prefix, long);
        match arg.get_env() {
            Some(env) if env == expected.as_str() => {}
            _ => missing.push(format!("`--{long}` should read `{expected}`")),
        }
        let row = format!("| `{expected}` | {bin} | `--{long}` |");
        if !env_md.lines().any(|l| l == row) {
            missing.push(format!("environment table: row {row}"));
        }
    }
    missing
}

/// Text with its whitespace runs made single spaces and without a final period (clap drops the
/// period of a one-paragraph doc comment).
fn normalized(text: &str) -> String {
    let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
    text.strip_suffix('.').unwrap_or(&text).to_owned()
}

/// A binary's test that its docs cover its flags: [`check_docs`] on the workspace's docs/
/// folder, panicking with what is missing.
pub fn assert_documented<C>(bin: &str, section: &str, without_config_file: impl Fn(C) -> C)
where
    C: Parser + std::fmt::Debug,
{
    let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    if let Err(problem) = check_docs(bin, section, &docs, without_config_file) {
        panic!("{problem}");
    }
}

/// Parses `bin ARGS` with `env` as the only environment variables the old-name aliases see,
/// for the binaries' tests of their aliases.
pub fn parse_with_env<C: Parser>(
    bin: &str,
    args: &[&str],
    env: &[(&str, &str)],
    aliases: &Aliases,
) -> Parsed<C> {
    let lookup = |name: &str| {
        env.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| OsString::from(v))
    };
    match try_parse_with(
        std::iter::once(bin).chain(args.iter().copied()),
        lookup,
        aliases,
    ) {
        Ok(parsed) => parsed,
        Err(e) => panic!("`{bin} {args:?}` does not parse: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;
    use crate::settings::tests::TestCli;

    #[test]
    fn undocumented_names_what_is_missing() {
        let command = TestCli::command();
        let example =
            "count = 1\n# timeout = \"5s\"\nfrom-env = \"x\"\nname=\"n\"\nverbose = true\n";
        let reference = "\
| `--config` | none |
| `--count` | `1` |
| `--timeout` | `10s` |
| `--from-env` | `PATH` | `from-env` | `default` | PATH is set in every test process. | — |
| `--name` | none |
| `--verbose` | `false` |
| `--tag` | none |
| `--gone` | none |
";
        let missing = undocumented(&command, example, reference);
        assert_eq!(
            missing,
            [
                "reference: `--timeout` defaults to `5s`",
                "reference: `--from-env` means what its help says:\n  help: PATH is set in every \
                 test process, so precedence over the environment is tested without `set_var` \
                 (which races with other test threads reading the environment)\n  docs: PATH is \
                 set in every test process",
                "example config: key `tag`",
                "example config: key `log-format`",
                "reference: row for `--log-format`",
                "reference: row for `--gone`, which is no flag",
            ]
        );
    }

    #[test]
    fn env_undocumented_names_misnamed_and_unlisted_variables() {
        #[derive(Debug, Parser)]
        struct Cli {
            #[arg(long, env = "TOOL_COUNT")]
            count: usize,
            #[arg(long, env = "COUNT_TOO")]
            count_too: usize,
        }
        let env = "| `TOOL_COUNT` | tool | `--count` |\n";
        assert_eq!(
            env_undocumented(&Cli::command(), "tool", env),
            [
                "`--count-too` should read `TOOL_COUNT_TOO`",
                "environment table: row | `TOOL_COUNT_TOO` | tool | `--count-too` |",
            ]
        );
    }
}
