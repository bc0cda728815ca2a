//! `client-cli send`: send one message to a group, wait for the ack, close cleanly.

use anyhow::{bail, Context as _, Result};
use client_cli::conn::{self, Interrupt, Next, TimedOut, Waited};
use client_cli::frames::{self, Incoming};
use futures_util::SinkExt as _;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use crate::cli::{Cli, SendArgs};

const REQ_ID: u64 = 1;

pub async fn run(cli: &Cli, args: &SendArgs) -> Result<()> {
    let deadline = Instant::now().checked_add(args.timeout.duration());
    let timed_out = |what: &str| -> anyhow::Error {
        TimedOut(format!("timed out after {} s {what}", args.timeout)).into()
    };
    let request = frames::send_request(&args.group, &args.message, args.json, REQ_ID)?;
    let mut interrupt = Interrupt::on_signals();

    let connecting = conn::connect(&cli.url, cli.connect_timeout.duration());
    let mut ws = match conn::wait(connecting, deadline, &mut interrupt).await {
        Waited::Done(ws) => ws?,
        Waited::Deadline => return Err(timed_out(&format!("connecting to {}", cli.url))),
        Waited::Interrupted => bail!("interrupted before the message was sent"),
    };

    let sending = ws.send(Message::Text(request.into()));
    match conn::wait(sending, deadline, &mut interrupt).await {
        Waited::Done(sent) => sent.context("cannot send the message")?,
        Waited::Deadline => return Err(timed_out("sending the message")),
        Waited::Interrupted => bail!("interrupted while sending the message"),
    }

    loop {
        match conn::next_text(&mut ws, deadline, &mut interrupt).await? {
            Next::Text(text) => match frames::classify(text.as_str()) {
                Incoming::Ack { req_id: REQ_ID } => break,
                Incoming::Error {
                    req_id: REQ_ID,
                    code,
                    reason,
                } => {
                    conn::close(&mut ws).await;
                    bail!("{code}: {reason}");
                }
                // Not an answer to our request (a sender is not a member of any group, but a
                // server may still push something).
                _ => {}
            },
            Next::Deadline => {
                conn::close(&mut ws).await;
                return Err(timed_out("waiting for the server's ack"));
            }
            Next::Interrupted => {
                conn::close(&mut ws).await;
                bail!("interrupted while waiting for the server's ack");
            }
        }
    }
    conn::close(&mut ws).await;
    Ok(())
}
