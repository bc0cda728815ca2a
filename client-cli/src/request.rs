//! One WebSocket connection for the commands that send requests and wait for their replies
//! (`send`, `send-all`, `send-uid`, `send-client`, `whoami`, `count`, `members`): connects,
//! presents the join token (--join-token), sends each request with an integer `req_id` and waits
//! for its ack or answer, everything under one deadline, then closes cleanly.
//!
//! A server speaking the seed protocol (the original Workerman example) answers no request: the
//! sends may stop waiting after a grace period ([`Requester::exchange`]), and say so.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use client_cli::conn::{self, Interrupt, Next, TimedOut, Waited, Ws};
use client_cli::frames::{self, Incoming};
use futures_util::SinkExt as _;
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::cli::{Cli, Secs, WsArgs};

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

/// The `req_id` of the `auth` request that presents --join-token (the others count from 1).
const AUTH_ID: u64 = 0;

/// What a stderr warning says of a server that answered nothing within `grace`.
pub fn no_replies_warning(grace: Secs, consequence: &str) -> String {
    format!(
        "warning: no reply from the server within {grace} s: it sends no acknowledgements (a \
         seed-protocol server, such as the original Workerman example?): {consequence}"
    )
}

#[derive(Debug)]
pub struct Requester {
    ws: Ws,
    timeout: Secs,
    deadline: Option<Instant>,
    interrupt: Interrupt,
    wording: Wording,
    /// Requests sent earlier whose replies have not come yet (the `auth`).
    earlier: BTreeSet<u64>,
    /// Whether the server has answered any request of this connection yet.
    answered: bool,
}

fn timed_out(timeout: Secs, what: &str) -> anyhow::Error {
    TimedOut(format!("timed out after {timeout} s {what}")).into()
}

impl Requester {
    /// Connects to the command's URL, and sends the `auth` request of --join-token (its reply
    /// is awaited with the first request's); `timeout` bounds everything from now on.
    pub async fn connect(
        cli: &Cli,
        ws_args: &WsArgs,
        timeout: Secs,
        wording: Wording,
    ) -> Result<Requester> {
        let deadline = Instant::now().checked_add(timeout.duration());
        let mut interrupt = Interrupt::on_signals();
        let url = cli.ws_url(ws_args);
        let connecting = conn::connect(url, cli.connect_timeout.duration());
        let ws = match conn::wait(connecting, deadline, &mut interrupt).await {
            Waited::Done(ws) => ws?,
            Waited::Deadline => return Err(timed_out(timeout, &format!("connecting to {url}"))),
            Waited::Interrupted => bail!("interrupted before {} was sent", wording.request),
        };
        let mut requester = Requester {
            ws,
            timeout,
            deadline,
            interrupt,
            wording,
            earlier: BTreeSet::new(),
            answered: false,
        };
        if let Some(token) = &ws_args.join_token {
            requester
                .write(frames::auth_request(token, AUTH_ID), "the join token")
                .await?;
            requester.earlier.insert(AUTH_ID);
        }
        Ok(requester)
    }

    async fn write(&mut self, frame: String, what: &str) -> Result<()> {
        let sending = self.ws.send(Message::Text(frame.into()));
        match conn::wait(sending, self.deadline, &mut self.interrupt).await {
            Waited::Done(sent) => sent.with_context(|| format!("cannot send {what}")),
            Waited::Deadline => Err(timed_out(self.timeout, &format!("sending {what}"))),
            Waited::Interrupted => bail!("interrupted while sending {what}"),
        }
    }

    /// Sends `frame`, a request carrying `req_id`, and waits for its ack or answer: returns the
    /// reply's text. Frames that do not answer it are skipped. An error reply becomes the error
    /// `CODE: REASON`, after a clean close.
    pub async fn call(&mut self, frame: String, req_id: u64) -> Result<Utf8Bytes> {
        match self.exchange(frame, req_id, None).await? {
            Some(text) => Ok(text),
            None => unreachable!("without a grace period, only a reply ends the wait"),
        }
    }

    /// [`Requester::call`], but when `grace` is given and the server has answered nothing
    /// within it (a seed-protocol server answers no request), returns `None`: the request was
    /// written, its outcome is unknown. A zero `grace` does not wait at all.
    pub async fn exchange(
        &mut self,
        frame: String,
        req_id: u64,
        grace: Option<Duration>,
    ) -> Result<Option<Utf8Bytes>> {
        let Wording { request, reply } = self.wording;
        self.write(frame, request).await?;
        if grace.is_some_and(|g| g.is_zero()) {
            return Ok(None);
        }
        let give_up_at = grace
            .filter(|_| !self.answered)
            .and_then(|g| Instant::now().checked_add(g));
        loop {
            let wake = match (self.deadline, give_up_at.filter(|_| !self.answered)) {
                (Some(deadline), Some(give_up)) => Some(deadline.min(give_up)),
                (deadline, give_up) => deadline.or(give_up),
            };
            match conn::next_text(&mut self.ws, wake, &mut self.interrupt).await? {
                Next::Text(text) => match frames::classify(text.as_str()) {
                    Incoming::Ack { req_id: r } | Incoming::Answer { req_id: r, .. }
                        if r == req_id =>
                    {
                        self.answered = true;
                        return Ok(Some(text));
                    }
                    Incoming::Ack { req_id: r } | Incoming::Answer { req_id: r, .. }
                        if self.earlier.remove(&r) =>
                    {
                        self.answered = true;
                    }
                    Incoming::Error {
                        req_id: r,
                        code,
                        reason,
                    } if r == req_id || self.earlier.contains(&r) => {
                        conn::close(&mut self.ws).await;
                        bail!("{code}: {reason}");
                    }
                    // Not an answer to this request (a message for a group, a uid, everyone).
                    _ => {}
                },
                Next::Deadline
                    if !self.answered && self.deadline.is_none_or(|at| Instant::now() < at) =>
                {
                    return Ok(None);
                }
                Next::Deadline => {
                    conn::close(&mut self.ws).await;
                    let silent = if self.answered {
                        ""
                    } else {
                        " (the server answered nothing: a seed-protocol server, such as the \
                         original Workerman example, answers no request)"
                    };
                    return Err(timed_out(
                        self.timeout,
                        &format!("waiting for {reply}{silent}"),
                    ));
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
