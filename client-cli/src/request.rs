//! One WebSocket connection for the commands that send requests and wait for their replies
//! (`send`, `send-all`, `send-uid`, `send-client`, `whoami`, `count`, `members`): connects,
//! sends each request with an integer `req_id` and waits for its ack or answer, everything under
//! one deadline, then closes cleanly.

use anyhow::{bail, Context as _, Result};
use client_cli::conn::{self, Interrupt, Next, TimedOut, Waited, Ws};
use client_cli::frames::{self, Incoming};
use futures_util::SinkExt as _;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::cli::{Cli, Secs};

/// How errors name what was sent and what was awaited.
#[derive(Debug, Clone, Copy)]
pub struct Wording {
    pub request: &'static str,
    pub reply: &'static str,
}

/// For sends, answered by an ack.
pub const MESSAGE: Wording = Wording {
    request: "the message",
    reply: "the server's ack",
};

/// For queries, answered with data.
pub const QUERY: Wording = Wording {
    request: "the request",
    reply: "the server's answer",
};

#[derive(Debug)]
pub struct Requester {
    ws: Ws,
    timeout: Secs,
    deadline: Option<Instant>,
    interrupt: Interrupt,
    wording: Wording,
}

fn timed_out(timeout: Secs, what: &str) -> anyhow::Error {
    TimedOut(format!("timed out after {timeout} s {what}")).into()
}

impl Requester {
    /// Connects to `--url`; `timeout` bounds everything from now on.
    pub async fn connect(cli: &Cli, timeout: Secs, wording: Wording) -> Result<Requester> {
        let deadline = Instant::now().checked_add(timeout.duration());
        let mut interrupt = Interrupt::on_signals();
        let connecting = conn::connect(&cli.url, cli.connect_timeout.duration());
        let ws = match conn::wait(connecting, deadline, &mut interrupt).await {
            Waited::Done(ws) => ws?,
            Waited::Deadline => {
                return Err(timed_out(timeout, &format!("connecting to {}", cli.url)))
            }
            Waited::Interrupted => bail!("interrupted before {} was sent", wording.request),
        };
        Ok(Requester {
            ws,
            timeout,
            deadline,
            interrupt,
            wording,
        })
    }

    /// Sends `frame`, a request carrying `req_id`, and waits for its ack or answer: returns the
    /// reply's text. Frames that do not answer it are skipped. An error reply becomes the error
    /// `CODE: REASON`, after a clean close.
    pub async fn call(&mut self, frame: String, req_id: u64) -> Result<Utf8Bytes> {
        let Wording { request, reply } = self.wording;
        let sending = self.ws.send(Message::Text(frame.into()));
        match conn::wait(sending, self.deadline, &mut self.interrupt).await {
            Waited::Done(sent) => sent.with_context(|| format!("cannot send {request}"))?,
            Waited::Deadline => return Err(timed_out(self.timeout, &format!("sending {request}"))),
            Waited::Interrupted => bail!("interrupted while sending {request}"),
        }
        loop {
            match conn::next_text(&mut self.ws, self.deadline, &mut self.interrupt).await? {
                Next::Text(text) => match frames::classify(text.as_str()) {
                    Incoming::Ack { req_id: r } | Incoming::Answer { req_id: r, .. }
                        if r == req_id =>
                    {
                        return Ok(text)
                    }
                    Incoming::Error {
                        req_id: r,
                        code,
                        reason,
                    } if r == req_id => {
                        conn::close(&mut self.ws).await;
                        bail!("{code}: {reason}");
                    }
                    // Not an answer to this request (a message for a group, a uid, everyone).
                    _ => {}
                },
                Next::Deadline => {
                    conn::close(&mut self.ws).await;
                    return Err(timed_out(self.timeout, &format!("waiting for {reply}")));
                }
                Next::Interrupted => {
                    conn::close(&mut self.ws).await;
                    bail!("interrupted while waiting for {reply}");
                }
            }
        }
    }

    /// Closes the connection cleanly (code 1000).
    pub async fn close(mut self) {
        conn::close(&mut self.ws).await;
    }
}
