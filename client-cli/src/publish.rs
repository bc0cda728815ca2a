//! `client-cli publish`: one message, or a batch, through the gateway's admin HTTP API
//! (`POST /api/publish`), the way a backend script pushes to groups.

use std::io::Read as _;

use anyhow::{bail, Context as _, Result};
use client_cli::frames;

use crate::admin::Admin;
use crate::cli::{Cli, PublishArgs};

pub async fn run(cli: &Cli, args: &PublishArgs) -> Result<()> {
    let body = match (&args.batch, &args.group, &args.message) {
        (Some(source), _, _) => {
            let body = read_batch(source)?;
            frames::check_batch(&body)?;
            body
        }
        (None, Some(group), Some(message)) => {
            frames::publish_body_excluding(group, message, args.json, &args.exclude)?
        }
        // clap requires GROUP and MESSAGE unless --batch is given.
        (None, _, _) => bail!("give GROUP and MESSAGE, or --batch FILE"),
    };
    let admin = Admin::new(cli, &args.admin)?;
    let url = admin.url(&["api", "publish"], &[])?;
    let unsure = "the messages may or may not have been published";
    let (status, text) = admin.post(url, body, unsure).await?;
    let published = frames::publish_outcome(status, &text)?;
    eprintln!("published {published}");
    Ok(())
}

/// The batch file's text, or standard input's for `-`.
fn read_batch(source: &str) -> Result<String> {
    if source == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("--batch -: cannot read standard input")?;
        return Ok(text);
    }
    std::fs::read_to_string(source).with_context(|| format!("--batch: cannot read {source}"))
}
