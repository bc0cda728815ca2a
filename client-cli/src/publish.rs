//! `client-cli publish`: one message, or a batch, through the gateway's admin HTTP API
//! (`POST /api/publish`), the way a backend script pushes to groups.

use std::io::Read as _;

use anyhow::{bail, Context as _, Result};
use client_cli::conn::{self, Interrupt, TimedOut, Waited};
use client_cli::frames;
use tokio::time::Instant;

use crate::cli::{Cli, PublishArgs};

pub async fn run(cli: &Cli, args: &PublishArgs) -> Result<()> {
    let body = match (&args.batch, &args.group, &args.message) {
        (Some(source), _, _) => {
            let body = read_batch(source)?;
            frames::check_batch(&body)?;
            body
        }
        (None, Some(group), Some(message)) => frames::publish_body(group, message, args.json)?,
        // clap requires GROUP and MESSAGE unless --batch is given.
        (None, _, _) => bail!("give GROUP and MESSAGE, or --batch FILE"),
    };
    let url = format!("{}/api/publish", args.admin_url.trim_end_matches('/'));
    let http = reqwest::Client::builder()
        .connect_timeout(cli.connect_timeout.duration())
        .build()
        .context("cannot set up the HTTP client")?;
    let mut request = http
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body);
    if let Some(token) = &args.token {
        request = request.bearer_auth(token);
    }

    let exchange = async {
        let response = request.send().await?;
        let status = response.status().as_u16();
        let text = response.text().await?;
        Ok::<_, reqwest::Error>((status, text))
    };
    let deadline = Instant::now().checked_add(args.timeout.duration());
    let mut interrupt = Interrupt::on_signals();
    let (status, text) = match conn::wait(exchange, deadline, &mut interrupt).await {
        Waited::Done(answer) => answer.with_context(|| format!("cannot POST {url}"))?,
        Waited::Deadline => {
            return Err(TimedOut(format!(
                "timed out after {} s waiting for {url}; the messages may or may not have been \
                 published",
                args.timeout
            ))
            .into())
        }
        Waited::Interrupted => {
            bail!("interrupted before {url} answered; the messages may or may not have been published")
        }
    };
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
