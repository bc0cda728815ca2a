//! `client-cli join`: join groups, announce readiness on stderr, print messages on stdout.

use std::collections::BTreeSet;
use std::io::Write as _;

use anyhow::{bail, Context as _, Result};
use client_cli::conn::{self, Interrupt, Next, TimedOut, Waited};
use client_cli::frames::{self, Incoming};
use futures_util::SinkExt as _;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::cli::{Cli, JoinArgs};

pub async fn run(cli: &Cli, args: &JoinArgs) -> Result<()> {
    let deadline = args
        .timeout
        .and_then(|t| Instant::now().checked_add(t.duration()));
    let timed_out = |what: String| -> anyhow::Error {
        let secs = args.timeout.map(|t| t.to_string()).unwrap_or_default();
        TimedOut(format!("timed out after {secs} s {what}")).into()
    };
    let requests = (1..)
        .zip(&args.groups)
        .map(|(req_id, group)| frames::join_request(group, req_id))
        .collect::<Result<Vec<String>>>()?;
    let mut interrupt = Interrupt::on_signals();

    let connecting = conn::connect(&cli.url, cli.connect_timeout.duration());
    let mut ws = match conn::wait(connecting, deadline, &mut interrupt).await {
        Waited::Done(ws) => ws?,
        Waited::Deadline => return Err(timed_out(format!("connecting to {}", cli.url))),
        Waited::Interrupted => return Ok(()),
    };

    let sending = async {
        for request in requests {
            ws.feed(Message::Text(request.into())).await?;
        }
        ws.flush().await
    };
    match conn::wait(sending, deadline, &mut interrupt).await {
        Waited::Done(sent) => sent.context("cannot send the join requests")?,
        Waited::Deadline => return Err(timed_out("sending the join requests".to_owned())),
        Waited::Interrupted => {
            conn::close(&mut ws).await;
            return Ok(());
        }
    }

    let total = args.groups.len();
    let mut pending: BTreeSet<u64> = (1..).take(total).collect();
    // Group messages that arrive between two acks: printed once the join is announced.
    let mut early: Vec<Utf8Bytes> = Vec::new();
    while !pending.is_empty() {
        let text = match conn::next_text(&mut ws, deadline, &mut interrupt).await? {
            Next::Text(text) => text,
            Next::Deadline => {
                conn::close(&mut ws).await;
                let got = total - pending.len();
                return Err(timed_out(format!(
                    "waiting for join acks (got {got} of {total})"
                )));
            }
            Next::Interrupted => {
                conn::close(&mut ws).await;
                return Ok(());
            }
        };
        match frames::classify(text.as_str()) {
            Incoming::Ack { req_id } if pending.remove(&req_id) => {}
            Incoming::Error {
                req_id,
                code,
                reason,
            } if pending.contains(&req_id) => {
                conn::close(&mut ws).await;
                bail!("{code}: {reason}");
            }
            _ => early.push(text),
        }
    }
    eprintln!("joined {}", args.groups.join(" "));

    let mut printer = Printer {
        count: args.count,
        received: 0,
    };
    for text in early {
        if printer.done() {
            break;
        }
        printer.print(&text)?;
    }
    // Without --count, --timeout only bounds the join.
    let deadline = args.count.and(deadline);
    loop {
        if printer.done() {
            conn::close(&mut ws).await;
            return Ok(());
        }
        match conn::next_text(&mut ws, deadline, &mut interrupt).await? {
            Next::Text(text) => printer.print(&text)?,
            Next::Deadline => {
                conn::close(&mut ws).await;
                let wanted = args.count.unwrap_or_default();
                return Err(timed_out(format!(
                    "waiting for messages (got {} of {wanted})",
                    printer.received
                )));
            }
            Next::Interrupted => {
                conn::close(&mut ws).await;
                return Ok(());
            }
        }
    }
}

/// Prints group messages on stdout and counts them against `--count`.
#[derive(Debug)]
struct Printer {
    count: Option<u64>,
    received: u64,
}

impl Printer {
    fn done(&self) -> bool {
        self.count.is_some_and(|n| self.received >= n)
    }

    fn print(&mut self, text: &str) -> Result<()> {
        let mut out = std::io::stdout().lock();
        // Flushed per line: readers are usually pipes, which would otherwise buffer.
        writeln!(out, "{text}")
            .and_then(|()| out.flush())
            .context("cannot write to stdout")?;
        self.received += 1;
        Ok(())
    }
}
