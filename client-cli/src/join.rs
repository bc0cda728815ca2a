//! `client-cli join`: present a join token (--join-token), bind a uid (--uid), join groups,
//! announce readiness and the connection's client id on stderr, print messages (and presence
//! events) on stdout.
//!
//! A server speaking the seed protocol (the original Workerman example) answers no request:
//! with --acks auto, when nothing answered within --ack-timeout, the joins are taken as made
//! (unconfirmed), said once on stderr, and what arrives is printed; replies that still come are
//! not printed, and an error reply still ends the run.
//!
//! With --positioned (or --resume-file), the joins ask for positions: each is answered by a
//! `joined` reply instead of an `ack`, each message arrives with its offset and epoch and its
//! text is printed; with --resume-file, the position of the last message printed is kept in the
//! file ([`crate::resume`]), and the next run asks to recover from there.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::time::Duration;

use anyhow::{bail, Context as _, Result};
use client_cli::conn::{self, Interrupt, Next, TimedOut, Waited};
use client_cli::frames::{self, Incoming, Joined};
use futures_util::SinkExt as _;
use protocol::history::{Position, Recover};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use crate::cli::{Acks, Cli, JoinArgs};
use crate::output;
use crate::request;
use crate::resume::ResumeFile;

/// What arrived before every join was answered, handled in that order once they all were.
#[derive(Debug)]
enum Early {
    /// A message, to print.
    Text(Utf8Bytes),
    /// A `joined` reply's position of a group: stored once the messages before it are printed.
    Position(String, Position),
}

pub async fn run(cli: &Cli, args: &JoinArgs) -> Result<()> {
    let positioned = args.positioned || args.resume_file.is_some();
    let resume = match &args.resume_file {
        Some(path) => {
            let mut file = ResumeFile::load(path)?;
            // Written back now, so that a file that cannot be written is said before joining.
            file.write(Instant::now())?;
            Some(file)
        }
        None => None,
    };
    let deadline = args
        .timeout
        .and_then(|t| Instant::now().checked_add(t.duration()));
    let timed_out = |what: String| -> anyhow::Error {
        let secs = args.timeout.map(|t| t.to_string()).unwrap_or_default();
        TimedOut(format!("timed out after {secs} s {what}")).into()
    };
    // Numbered in the order they are sent: the auth first, the bind, then the joins, then
    // `whoami` (not with --acks none: it is answered or it is useless).
    let mut last_id = 0;
    let mut number = || {
        last_id += 1;
        last_id
    };
    let mut requests: Vec<String> = Vec::new();
    let auth_id = match &args.ws.join_token {
        Some(token) => {
            let req_id = number();
            requests.push(frames::auth_request(token, req_id));
            Some(req_id)
        }
        None => None,
    };
    let bind_id = match &args.uid {
        Some(uid) => {
            let req_id = number();
            requests.push(frames::bind_uid_request(uid, req_id));
            Some(req_id)
        }
        None => None,
    };
    let mut join_ids = Vec::with_capacity(args.groups.len());
    // Where each positioned join recovers from (by the index of its group).
    let mut recovers: Vec<Option<Recover>> = Vec::with_capacity(args.groups.len());
    for group in &args.groups {
        let req_id = number();
        let request = if positioned {
            let recover = resume.as_ref().and_then(|file| file.recover(group));
            recovers.push(recover.clone());
            frames::positioned_join_request(group, args.presence, recover, req_id)?
        } else {
            recovers.push(None);
            frames::add_group_request(group, args.presence, req_id)?
        };
        requests.push(request);
        join_ids.push(req_id);
    }
    // The group (and its index) a join request was for.
    let joining = |req_id: u64| -> Option<(usize, &str)> {
        let index = join_ids.iter().position(|id| *id == req_id)?;
        Some((index, args.groups[index].as_str()))
    };
    let whoami_id = number();
    let grace = args.acks.grace();
    if grace != Some(Duration::ZERO) {
        requests.push(frames::whoami_request(whoami_id));
    }
    let mut interrupt = Interrupt::on_signals();

    let url = cli.ws_url(&args.ws);
    let connecting = conn::connect(url, cli.connect_timeout.duration());
    let mut ws = match conn::wait(connecting, deadline, &mut interrupt).await {
        Waited::Done(ws) => ws?,
        Waited::Deadline => return Err(timed_out(format!("connecting to {url}"))),
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
    pending.extend(auth_id);
    pending.extend(bind_id);
    pending.insert(whoami_id);
    // Until the server answers something, its silence is awaited for this long at most.
    let give_up_at = grace.and_then(|g| Instant::now().checked_add(g));
    let mut answered = false;
    // Set when the server answered nothing within the grace period: the joins are unconfirmed.
    let mut unconfirmed = grace == Some(Duration::ZERO);
    let mut client_id: Option<String> = None;
    // Group messages that arrive between two replies: printed once the join is announced.
    let mut early: Vec<Early> = Vec::new();
    while !pending.is_empty() && !unconfirmed {
        let wake = match (deadline, give_up_at.filter(|_| !answered)) {
            (Some(deadline), Some(give_up)) => Some(deadline.min(give_up)),
            (deadline, give_up) => deadline.or(give_up),
        };
        let text = match conn::next_text(&mut ws, wake, &mut interrupt).await? {
            Next::Text(text) => text,
            Next::Deadline
                if !answered
                    && give_up_at.is_some()
                    && deadline.is_none_or(|at| Instant::now() < at) =>
            {
                unconfirmed = true;
                break;
            }
            Next::Deadline => {
                conn::close(&mut ws).await;
                let got = join_ids.iter().filter(|id| !pending.contains(id)).count();
                let what = if auth_id.is_some_and(|id| pending.contains(&id)) {
                    "waiting for the auth ack (--join-token)".to_owned()
                } else if bind_id.is_some_and(|id| pending.contains(&id)) {
                    "waiting for the bind_uid ack".to_owned()
                } else if got < total {
                    let replies = if positioned {
                        "joined replies"
                    } else {
                        "join acks"
                    };
                    format!("waiting for {replies} (got {got} of {total})")
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
        let incoming = frames::classify(text.as_str());
        answered |= reply_id(&incoming).is_some_and(|id| pending.contains(&id));
        match incoming {
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
            Incoming::Answer { req_id, cmd } if cmd == "joined" && pending.contains(&req_id) => {
                let Some((index, group)) = joining(req_id) else {
                    early.push(Early::Text(text));
                    continue;
                };
                pending.remove(&req_id);
                match frames::joined_answer(text.as_str()) {
                    Ok(joined) => {
                        for line in joined_warnings(group, recovers[index].as_ref(), &joined) {
                            eprintln!("{line}");
                        }
                        if let Some(position) = joined_position(joined) {
                            early.push(Early::Position(group.to_owned(), position));
                        }
                    }
                    Err(e) => eprintln!("warning: group {group}: {e:#}"),
                }
            }
            Incoming::Ack { req_id } if pending.remove(&req_id) => {
                if let Some((index, group)) = joining(req_id).filter(|_| positioned) {
                    eprintln!("{}", plain_ack_warning(group, recovers[index].as_ref()));
                }
            }
            Incoming::Error {
                req_id,
                code,
                reason,
            } if pending.contains(&req_id) => {
                conn::close(&mut ws).await;
                bail!("{code}: {reason}");
            }
            _ => early.push(Early::Text(text)),
        }
    }
    if unconfirmed {
        if args.acks.acks == Acks::Auto {
            eprintln!(
                "{}",
                request::no_replies_warning(
                    args.acks.ack_timeout,
                    "the joins are unconfirmed; printing what arrives (--acks none does not wait)"
                )
            );
        }
        eprintln!("joined {} (unconfirmed)", args.groups.join(" "));
    } else {
        eprintln!("joined {}", args.groups.join(" "));
    }
    if let Some(id) = client_id {
        eprintln!("client_id {id}");
    }

    let mut printer = Printer {
        count: args.count,
        received: 0,
        positioned: if positioned {
            args.groups.iter().cloned().collect()
        } else {
            BTreeSet::new()
        },
        resume,
    };
    // Without --count, --timeout only bounds the join.
    let deadline = args.count.and(deadline);
    let secs = args.timeout.map(|t| t.to_string()).unwrap_or_default();
    let (result, close) = receive(
        &mut ws,
        (&mut printer, &mut pending),
        early,
        (deadline, &secs),
        &mut interrupt,
    )
    .await;
    // The last positions first: closing may take a while.
    let saved = printer.save();
    if close {
        conn::close(&mut ws).await;
    }
    match (result, saved) {
        (Err(e), Err(not_saved)) => {
            eprintln!("warning: {not_saved:#}");
            Err(e)
        }
        (Err(e), Ok(())) => Err(e),
        (Ok(()), saved) => saved,
    }
}

/// The `req_id` a reply answers (`None` for anything else).
fn reply_id(incoming: &Incoming) -> Option<u64> {
    match incoming {
        Incoming::Ack { req_id }
        | Incoming::Answer { req_id, .. }
        | Incoming::Error { req_id, .. } => Some(*req_id),
        Incoming::Other => None,
    }
}

/// Prints the early frames, then what arrives until --count, the deadline, Ctrl-C or an error.
/// Replies to the `unanswered` requests (joins left unconfirmed) are not printed; an error reply
/// among them ends the run. Returns how it ended, and whether the connection is still open (to
/// close).
async fn receive(
    ws: &mut conn::Ws,
    (printer, unanswered): (&mut Printer, &mut BTreeSet<u64>),
    early: Vec<Early>,
    (deadline, secs): (Option<Instant>, &str),
    interrupt: &mut Interrupt,
) -> (Result<()>, bool) {
    for item in early {
        if printer.done() {
            break;
        }
        let handled = match item {
            Early::Text(text) => printer.print(&text),
            Early::Position(group, position) => printer.position(&group, position),
        };
        if let Err(e) = handled {
            return (Err(e), true);
        }
    }
    loop {
        if printer.done() {
            return (Ok(()), true);
        }
        // Woken early to write positions that changed since the last write.
        let save_at = printer.resume.as_ref().and_then(ResumeFile::due);
        let wake = match (deadline, save_at) {
            (Some(deadline), Some(save_at)) => Some(deadline.min(save_at)),
            (deadline, save_at) => deadline.or(save_at),
        };
        let handled = match conn::next_text(ws, wake, interrupt).await {
            Ok(Next::Text(text)) if !unanswered.is_empty() => {
                let incoming = frames::classify(text.as_str());
                match reply_id(&incoming).filter(|id| unanswered.remove(id)) {
                    Some(_) => match incoming {
                        Incoming::Error { code, reason, .. } => {
                            Err(anyhow::anyhow!("{code}: {reason}"))
                        }
                        _ => Ok(()),
                    },
                    None => printer.print(&text),
                }
            }
            Ok(Next::Text(text)) => printer.print(&text),
            Ok(Next::Deadline) if deadline.is_none_or(|at| Instant::now() < at) => {
                printer.save_if_due()
            }
            Ok(Next::Deadline) => {
                return (
                    Err(TimedOut(format!(
                        "timed out after {secs} s waiting for messages (got {} of {})",
                        printer.received,
                        printer.count.unwrap_or_default()
                    ))
                    .into()),
                    true,
                );
            }
            Ok(Next::Interrupted) => return (Ok(()), true),
            // The connection is gone.
            Err(e) => return (Err(e), false),
        };
        if let Err(e) = handled {
            return (Err(e), true);
        }
    }
}

/// The stderr lines a `joined` reply calls for: history that could not be read, and a recovery
/// (asked from `asked`) that did not bring every message missed.
fn joined_warnings(group: &str, asked: Option<&Recover>, joined: &Joined) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(error) = &joined.error {
        lines.push(format!(
            "warning: group {group}: the history could not be read: {error}"
        ));
    }
    let Some(asked) = asked else {
        return lines;
    };
    let now = match &joined.position {
        Some(at) => format!(
            "; the group is at offset {} of epoch {}",
            at.offset, at.epoch
        ),
        None => String::new(),
    };
    let why = match (joined.recovered, &joined.error) {
        (Some(true), _) => return lines,
        (Some(false), None) => "history no longer reaches back / epoch changed",
        (_, Some(_)) => "the history could not be read",
        (None, None) => "the gateway did not say it recovered",
    };
    lines.push(format!(
        "warning: group {group}: recovery incomplete ({why}; asked from offset {} of epoch \
         {}{now}): reload your state",
        asked.offset, asked.epoch
    ));
    lines
}

/// The position a `joined` reply gives to store: none when the history could not be read, so
/// that the stored one is asked again next time (until a message comes).
fn joined_position(joined: Joined) -> Option<Position> {
    joined.position.filter(|_| joined.error.is_none())
}

/// A positioned join answered by a plain `ack`: a gateway that does not know them.
fn plain_ack_warning(group: &str, asked: Option<&Recover>) -> String {
    let recovery = match asked {
        Some(_) => ", nothing recovered",
        None => "",
    };
    format!(
        "warning: group {group}: the gateway answered the positioned join with a plain ack (no \
         history for it?): messages without positions{recovery}"
    )
}

/// Prints group messages on stdout and counts them against `--count`; with positions, keeps the
/// last printed one of each group (--resume-file).
#[derive(Debug)]
struct Printer {
    count: Option<u64>,
    received: u64,
    /// The groups joined with positions: their positioned messages are printed as their text.
    positioned: BTreeSet<String>,
    resume: Option<ResumeFile>,
}

impl Printer {
    fn done(&self) -> bool {
        self.count.is_some_and(|n| self.received >= n)
    }

    fn print(&mut self, text: &str) -> Result<()> {
        let positioned = if self.positioned.is_empty() {
            None
        } else {
            frames::positioned_message(text).filter(|m| self.positioned.contains(&m.group_id))
        };
        let line = positioned.as_ref().map_or(text, |m| m.message.as_str());
        let mut out = std::io::stdout().lock();
        // Flushed per line: readers are usually pipes, which would otherwise buffer.
        writeln!(out, "{line}")
            .and_then(|()| out.flush())
            .context("cannot write to stdout")?;
        self.received += 1;
        match positioned {
            // Printed: its position may be stored.
            Some(message) => self.position(&message.group_id, message.position),
            None => Ok(()),
        }
    }

    /// `group` is at `position` (everything up to it printed).
    fn position(&mut self, group: &str, position: Position) -> Result<()> {
        match &mut self.resume {
            Some(file) => {
                file.set(group, position);
                file.write_if_due(Instant::now())
            }
            None => Ok(()),
        }
    }

    fn save_if_due(&mut self) -> Result<()> {
        match &mut self.resume {
            Some(file) => file.write_if_due(Instant::now()),
            None => Ok(()),
        }
    }

    /// Writes the positions not written yet (at exit).
    fn save(&mut self) -> Result<()> {
        match &mut self.resume {
            Some(file) => file.flush(),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::history::Epoch;

    use super::*;

    fn at(offset: u64, epoch: &str) -> Position {
        Position {
            offset,
            epoch: Epoch::new(epoch).unwrap(),
        }
    }

    fn from(offset: u64, epoch: &str) -> Recover {
        Recover {
            offset,
            epoch: Epoch::new(epoch).unwrap(),
        }
    }

    fn joined(position: Option<Position>, recovered: Option<bool>, error: Option<&str>) -> Joined {
        Joined {
            group_id: "g".to_owned(),
            position,
            recovered,
            error: error.map(str::to_owned),
        }
    }

    #[test]
    fn a_complete_or_unasked_recovery_is_silent() {
        let fresh = joined(Some(at(40, "e")), None, None);
        assert!(joined_warnings("g", None, &fresh).is_empty());
        let recovered = joined(Some(at(40, "e")), Some(true), None);
        assert!(joined_warnings("g", Some(&from(17, "e")), &recovered).is_empty());
        assert_eq!(joined_position(recovered), Some(at(40, "e")));
    }

    #[test]
    fn an_incomplete_recovery_says_to_reload() {
        let reply = joined(Some(at(40, "f")), Some(false), None);
        assert_eq!(
            joined_warnings("g", Some(&from(17, "e")), &reply),
            [
                "warning: group g: recovery incomplete (history no longer reaches back / epoch \
              changed; asked from offset 17 of epoch e; the group is at offset 40 of epoch f): \
              reload your state"
            ]
        );
        // From there on, the group's current position.
        assert_eq!(joined_position(reply), Some(at(40, "f")));
        let unsaid = joined(Some(at(40, "e")), None, None);
        let lines = joined_warnings("g", Some(&from(17, "e")), &unsaid);
        assert_eq!(lines.len(), 1);
        assert!(
            lines[0].contains("(the gateway did not say it recovered;"),
            "{lines:?}"
        );
    }

    #[test]
    fn unreadable_history_is_reported_and_keeps_the_stored_position() {
        let reply = joined(None, None, Some("store down"));
        assert_eq!(
            joined_warnings("g", None, &reply),
            ["warning: group g: the history could not be read: store down"]
        );
        assert_eq!(
            joined_warnings("g", Some(&from(3, "e")), &reply),
            [
                "warning: group g: the history could not be read: store down",
                "warning: group g: recovery incomplete (the history could not be read; asked \
                 from offset 3 of epoch e): reload your state"
            ]
        );
        assert_eq!(joined_position(reply), None);
        let with_position = joined(Some(at(9, "e")), Some(false), Some("timeout"));
        assert_eq!(joined_position(with_position), None);
    }

    #[test]
    fn plain_acks_of_positioned_joins_are_reported() {
        assert_eq!(
            plain_ack_warning("g", None),
            "warning: group g: the gateway answered the positioned join with a plain ack (no \
             history for it?): messages without positions"
        );
        assert!(plain_ack_warning("g", Some(&from(1, "e"))).ends_with(", nothing recovered"));
    }
}
