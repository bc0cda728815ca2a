//! `client-cli join`: bind a uid (--uid), join groups, announce readiness and the connection's
//! client id on stderr, print messages (and presence events) on stdout.

use std::collections::BTreeSet;
use std::io::Write as _;

use anyhow::{bail, Context as _, Result};
use client_cli::conn::{self, Interrupt, Next, TimedOut, Waited};
use client_cli::frames::{self, Incoming};
use futures_util::SinkExt as _;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::cli::{Cli, JoinArgs};
use crate::output;

pub async fn run(cli: &Cli, args: &JoinArgs) -> Result<()> {
    let deadline = args
        .timeout
        .and_then(|t| Instant::now().checked_add(t.duration()));
    let timed_out = |what: String| -> anyhow::Error {
        let secs = args.timeout.map(|t| t.to_string()).unwrap_or_default();
        TimedOut(format!("timed out after {secs} s {what}")).into()
    };
    // Numbered in the order they are sent: the bind first, then the joins, then `whoami`.
    let mut last_id = 0;
    let mut number = || {
        last_id += 1;
        last_id
    };
    let mut requests: Vec<String> = Vec::new();
    let bind_id = match &args.uid {
        Some(uid) => {
            let req_id = number();
            requests.push(frames::bind_uid_request(uid, req_id));
            Some(req_id)
        }
        None => None,
    };
    let mut join_ids = Vec::with_capacity(args.groups.len());
    for group in &args.groups {
        let req_id = number();
        requests.push(frames::add_group_request(group, args.presence, req_id)?);
        join_ids.push(req_id);
    }
    let whoami_id = number();
    requests.push(frames::whoami_request(whoami_id));
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

    let total = join_ids.len();
    let mut pending: BTreeSet<u64> = join_ids.iter().copied().collect();
    pending.extend(bind_id);
    pending.insert(whoami_id);
    let mut client_id: Option<String> = None;
    // Group messages that arrive between two replies: printed once the join is announced.
    let mut early: Vec<Utf8Bytes> = Vec::new();
    while !pending.is_empty() {
        let text = match conn::next_text(&mut ws, deadline, &mut interrupt).await? {
            Next::Text(text) => text,
            Next::Deadline => {
                conn::close(&mut ws).await;
                let got = join_ids.iter().filter(|id| !pending.contains(id)).count();
                let what = if bind_id.is_some_and(|id| pending.contains(&id)) {
                    "waiting for the bind_uid ack".to_owned()
                } else if got < total {
                    format!("waiting for join acks (got {got} of {total})")
                } else {
                    "waiting for the whoami answer".to_owned()
                };
                return Err(timed_out(what));
            }
            Next::Interrupted => {
                conn::close(&mut ws).await;
                return Ok(());
            }
        };
        match frames::classify(text.as_str()) {
            Incoming::Answer { req_id, .. } if req_id == whoami_id && pending.remove(&req_id) => {
                let id = output::parse_answer(text.as_str())
                    .and_then(|a| output::whoami_client_id(&a).map(str::to_owned));
                match id {
                    Ok(id) => client_id = Some(id),
                    Err(e) => eprintln!("warning: no client id: {e:#}"),
                }
            }
            // A gateway without `whoami`: the joins still count.
            Incoming::Error {
                req_id,
                code,
                reason,
            } if req_id == whoami_id && pending.remove(&req_id) => {
                eprintln!("warning: no client id: whoami refused: {code}: {reason}");
            }
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
    if let Some(id) = client_id {
        eprintln!("client_id {id}");
    }

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
