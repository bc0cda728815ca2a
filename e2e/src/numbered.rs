//! Numbered messages through outages: a [`Sender`] numbers what it sends to one group, a
//! [`Receiver`] checks each message as it arrives (only what was sent, never twice, never out
//! of order per sender) and remembers what it got, so a test can wait for a given message or
//! for the first one after an outage.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::time::Instant;

use crate::{check_numbered, numbered, Client, Event, RECV_TIMEOUT};

/// Messages sent so far, per sender name (the count, so `n < sent[sender]` was sent).
pub type Sent = BTreeMap<String, u64>;

/// A client sending numbered messages to one group.
#[derive(Debug)]
pub struct Sender {
    pub client: Client,
    group: String,
    next: u64,
}

impl Sender {
    pub fn new(client: Client, group: &str) -> Sender {
        Sender {
            client,
            group: group.to_owned(),
            next: 0,
        }
    }

    /// The number its next message will carry.
    pub fn next(&self) -> u64 {
        self.next
    }

    /// Sends its next message and records it in `sent`; returns `(its name, the number)`.
    pub async fn send(&mut self, sent: &mut Sent) -> Result<(String, u64)> {
        let name = self.client.name().to_owned();
        let n = self.next;
        self.client
            .publish(&self.group, &numbered(&name, n))
            .await?;
        self.next += 1;
        sent.insert(name.clone(), self.next);
        Ok((name, n))
    }
}

/// A member checking every numbered message it gets.
#[derive(Debug)]
pub struct Receiver {
    pub client: Client,
    /// Highest number received from each sender.
    last: BTreeMap<String, u64>,
    /// Every message received, by sender.
    seen: BTreeMap<String, BTreeSet<u64>>,
}

impl Receiver {
    pub fn new(client: Client) -> Receiver {
        Receiver {
            client,
            last: BTreeMap::new(),
            seen: BTreeMap::new(),
        }
    }

    fn check(&mut self, event: Event, sent: &Sent) -> Result<()> {
        let (sender, n) = check_numbered(self.client.name(), event, sent, &self.last)?;
        self.last.insert(sender.clone(), n);
        self.seen.entry(sender).or_default().insert(n);
        Ok(())
    }

    fn has(&self, sender: &str, n: u64) -> bool {
        self.seen.get(sender).is_some_and(|seen| seen.contains(&n))
    }

    /// Whether a message of `sender` numbered `first` or later has arrived.
    pub fn got_from(&self, sender: &str, first: u64) -> bool {
        self.seen
            .get(sender)
            .is_some_and(|seen| seen.range(first..).next().is_some())
    }

    /// Checks whatever arrives within `wait`.
    pub async fn drain(&mut self, wait: Duration, sent: &Sent) -> Result<()> {
        let deadline = Instant::now() + wait;
        while let Some(event) = self.client.next_event(deadline).await {
            self.check(event, sent)?;
        }
        Ok(())
    }

    /// Receives until every `(sender, n)` of `required` has arrived (within [`RECV_TIMEOUT`]).
    pub async fn require(&mut self, required: &[(String, u64)], sent: &Sent) -> Result<()> {
        let deadline = Instant::now() + RECV_TIMEOUT;
        loop {
            let missing: Vec<String> = required
                .iter()
                .filter(|(s, n)| !self.has(s, *n))
                .map(|(s, n)| numbered(s, *n))
                .collect();
            if missing.is_empty() {
                return Ok(());
            }
            let event = self.client.next_event(deadline).await.with_context(|| {
                format!(
                    "{}: timed out; still missing {missing:?}",
                    self.client.name()
                )
            })?;
            self.check(event, sent)?;
        }
    }

    /// Checks what arrives until `deadline`, or until a message of `sender` numbered `first`
    /// or later has arrived (then returns true).
    pub async fn until(
        &mut self,
        deadline: Instant,
        sent: &Sent,
        sender: &str,
        first: u64,
    ) -> Result<bool> {
        while !self.got_from(sender, first) {
            let Some(event) = self.client.next_event(deadline).await else {
                return Ok(false);
            };
            self.check(event, sent)?;
        }
        Ok(true)
    }
}
