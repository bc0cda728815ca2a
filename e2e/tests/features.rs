//! Every binary, built alone, asks for the same features of each crate it shares with another
//! binary: so `cargo build -p gateway` then `cargo run -p client-cli` builds no shared crate
//! twice. workspace-hack/Cargo.toml holds the union; this test reads what cargo resolves for each
//! binary (`cargo tree -e no-dev`, its build without tests) and, when a crate differs, prints the
//! line that belongs in workspace-hack.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;

use anyhow::{bail, ensure, Context, Result};

/// The workspace's binaries, by package.
const BINARIES: [&str; 4] = ["gateway", "broker", "client-cli", "push-bench"];

/// A crate (name and version) and the features cargo enables for it.
type Resolved = BTreeMap<(String, String), BTreeSet<String>>;

/// What cargo resolves for the normal and build dependencies of `packages` built together.
fn resolve(packages: &[&str]) -> Result<Resolved> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut command = Command::new(cargo);
    command
        .current_dir(root)
        .args(["tree", "--locked", "-e", "no-dev"]);
    for package in packages {
        command.args(["-p", package]);
    }
    command.args(["--prefix", "none", "-f", "{p}|{f}"]);
    let output = command.output().context("running cargo tree")?;
    ensure!(
        output.status.success(),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut resolved = Resolved::new();
    for line in String::from_utf8(output.stdout)?.lines() {
        // "name vX.Y.Z (path or (*))|feature,feature"
        let Some((package, features)) = line.split_once('|') else {
            continue;
        };
        let mut words = package.split_whitespace();
        let (Some(name), Some(version)) = (words.next(), words.next()) else {
            bail!("unexpected cargo tree line: {line}");
        };
        if package.contains("(/") {
            continue; // a workspace member
        }
        // "(*)" (seen before) follows the features; a line of an earlier crate says them all.
        let features = features.trim_end_matches(" (*)");
        let features: BTreeSet<String> = features
            .split(',')
            .filter(|f| !f.is_empty())
            .map(String::from)
            .collect();
        let key = (
            name.to_string(),
            version.trim_start_matches('v').to_string(),
        );
        if let Some(seen) = resolved.get(&key) {
            ensure!(
                *seen == features,
                "{} {} resolved twice with different features: {seen:?} and {features:?}",
                key.0,
                key.1
            );
        }
        resolved.insert(key, features);
    }
    ensure!(!resolved.is_empty(), "cargo tree printed no crate");
    Ok(resolved)
}

#[test]
fn the_binaries_share_one_feature_set_per_crate() -> Result<()> {
    let alone: Vec<(&str, Resolved)> = BINARIES
        .iter()
        .map(|b| Ok((*b, resolve(&[b])?)))
        .collect::<Result<_>>()?;
    let together = resolve(&BINARIES)?;
    let mut differ = Vec::new();
    for (key, union) in &together {
        let having: Vec<&(&str, Resolved)> =
            alone.iter().filter(|(_, r)| r.contains_key(key)).collect();
        if having.len() < 2 {
            continue;
        }
        let short: Vec<String> = having
            .iter()
            .filter(|(_, r)| r[key] != *union)
            .map(|(binary, r)| {
                let missing: Vec<&String> = union.difference(&r[key]).collect();
                format!("{binary} lacks {missing:?}")
            })
            .collect();
        if !short.is_empty() {
            differ.push(format!(
                "{} {}: {}; workspace-hack needs features {:?}",
                key.0,
                key.1,
                short.join(", "),
                union
            ));
        }
    }
    ensure!(
        differ.is_empty(),
        "crates built with other features for one binary than for another (each would be \
         built twice):\n{}",
        differ.join("\n")
    );
    // The lines were read: every binary has tokio, with its features.
    for (binary, resolved) in &alone {
        ensure!(
            resolved
                .iter()
                .any(|((name, _), f)| name == "tokio" && f.contains("rt")),
            "{binary}: no tokio with `rt` read from cargo tree"
        );
    }
    Ok(())
}
