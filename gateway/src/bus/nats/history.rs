//! [`NatsHistory`]: the histories of groups with history (`--history`) in NATS JetStream.
//!
//! **Streams.** One stream per history policy (`SIZE,TTL` of a `--history` rule), made on first
//! use by whichever gateway needs it: `{prefix}_history_{size}_{ttl_ms}`, file storage, one
//! replica, `max_msgs_per_subject` = SIZE and `max_age` = TTL, so the server itself keeps each
//! group's last SIZE messages, each for at most TTL, exactly as the built-in broker does. A
//! single stream for every policy would need the largest SIZE and TTL and trimming on read,
//! holding more than any policy asks for; the policies are a handful (the rules). A stream
//! found already made is used as it is: an operator may give it more replicas (`nats stream
//! edit`), and a policy no rule names any more leaves a stream whose messages age out.
//!
//! **Subjects.** A group's messages are on `{prefix}.h.{size}.{ttl_ms}.m.{token}`, stored as
//! the carrier sends any message: this gateway's [`Origin`] envelope around a [`Positioned`]
//! frame, whose offset and epoch are the message's. The epoch of a history read before its
//! first message is on `{prefix}.h.{size}.{ttl_ms}.e.{token}`, one message whose payload is the
//! epoch ([`subject::history_subjects`]).
//!
//! **Offsets.** JetStream's sequence is per stream, not per subject, so the offsets are this
//! carrier's, made consecutive per group by optimistic concurrency: a gateway publishes the
//! group's next message (last offset + 1, same epoch) with `Nats-Expected-Last-Subject-Sequence`
//! = the stream sequence of the group's last message as it knows it (remembered per group,
//! fetched from the stream on a miss). The server stores it only if that is still the group's
//! last message; otherwise it answers "wrong last sequence", and the gateway fetches the last
//! message and tries again, at most [`APPEND_ATTEMPTS`] times. Two gateways racing on one
//! group are thus serialized by the server: one wins, the other retries with the next offset.
//! A sequence cannot come back (a stream's sequences only grow), except when the stream is
//! made anew (the server lost its store): what a gateway remembers is forgotten at every new
//! connection and whenever the stream is not found.
//!
//! **Epochs.** A group's first message takes the epoch on its `e` subject, made there (with
//! `Nats-Expected-Last-Subject-Sequence: 0`, so two gateways agree on one) if there is none; a
//! read of a group with no message makes it the same way, so a client told that epoch at
//! offset 0 recovers what comes next. That message is older than the group's first one, so it
//! expires no later: once a group's messages all expired (or were removed) its next message or
//! read starts a new epoch, with offsets from 1.
//!
//! **Delivery.** The stream republishes each stored message of a group (`republish`, from the
//! `m` subjects to `{prefix}.g.{token}`), so the positioned frame reaches every gateway
//! subscribed to the group in the order of the offsets, straight from the server that stored
//! it. The server is the publisher, so the `no_echo` of this gateway's connection does not
//! keep its own messages from it, and the carrier lets through its own positioned frames that
//! its origin would otherwise drop as echoes. Nothing is published by the gateway after the
//! ack, so a gateway that stops between the two loses nothing, and no second connection is
//! needed. A gateway that misses a republished message (its connection was down) sees a hole
//! at the next one and repairs it from the stream.
//!
//! **Reads** fetch the group's messages with an ephemeral pull consumer filtered on its `m`
//! subject, in batches of [`READ_BATCH`] (a group holds at most SIZE), up to the last message
//! at the time of the read, then delete it; `since`, `limit` and `reverse` are applied as they
//! come, keeping at most `limit` messages. **Removal** purges both subjects of the group.
//!
//! **Lost acks.** An ack that does not come (timeout) leaves unknown whether the message was
//! stored: the gateway fetches the group's last message, and if it is this one (its envelope),
//! it was. If another gateway stored a message after it in the meantime, this one is stored a
//! second time at the next offset (members see it twice, each at its own offset).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, context::PublishErrorKind, stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use protocol::envelope::{Envelope, ENVELOPE_HEADER_LEN};
use protocol::history::{Epoch, Position, Positioned};
use protocol::Text;

use super::subject;
use crate::bus::origin::Origin;
use crate::bus::{HistoryError, HistoryPage, HistoryPolicy, HistoryQuery};
use crate::history::policy::HistoryRules;

/// Tries at storing one message before it is given up (counted in
/// `history_publishes_dropped`): each failed try means another gateway stored one of the
/// group's messages meanwhile, so only a group written by many gateways at once at a high rate
/// runs out of them.
pub const APPEND_ATTEMPTS: u32 = 32;
/// Groups whose last stored message (sequence and position) a gateway remembers: past it the
/// memory is cleared, and each group's next message first fetches its last one.
pub const REMEMBERED_GROUPS: usize = 65_536;
/// Messages asked of the server at once while reading a history.
pub const READ_BATCH: usize = 1024;
/// How long a read's consumer lives on the server unused, should the gateway not delete it
/// (the connection was lost during the read).
pub const READ_CONSUMER_IDLE: Duration = Duration::from_secs(30);

/// A group's last stored message, as this gateway knows it.
#[derive(Debug, Clone)]
struct Last {
    /// Its stream sequence: what the next publish expects.
    sequence: u64,
    position: Position,
}

/// The stream and subjects of one group's history.
#[derive(Debug)]
struct Names {
    stream: String,
    policy: (u32, u64),
    messages: String,
    epoch: String,
    both: String,
}

/// Where this carrier keeps histories: JetStream, through the carrier's client.
#[derive(Debug)]
pub struct NatsHistory {
    prefix: String,
    rules: HistoryRules,
    /// The JetStream API's timeout for each request and publish ack (`--history-timeout`).
    timeout: Duration,
    /// Set once the client exists.
    context: Mutex<Option<jetstream::Context>>,
    /// Policies (size, TTL in ms) whose stream is known to exist on this connection.
    streams: Mutex<HashSet<(u32, u64)>>,
    /// Each group's last message, by its `m` subject; at most [`REMEMBERED_GROUPS`].
    last: Mutex<HashMap<String, Last>>,
}

/// Why a JetStream publish failed, as [`NatsHistory::append`] handles it.
enum Refused {
    /// Another message is the group's last now.
    WrongLast,
    /// No stream took the subject: it was deleted, or the server lost its store.
    NoStream,
    /// No ack in time: stored or not, unknown.
    NoAck(String),
    Other(HistoryError),
}

impl NatsHistory {
    /// The JetStream API's timeout (`--history-timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    pub fn new(prefix: String, rules: HistoryRules, timeout: Duration) -> NatsHistory {
        NatsHistory {
            prefix,
            rules,
            timeout,
            context: Mutex::new(None),
            streams: Mutex::new(HashSet::new()),
            last: Mutex::new(HashMap::new()),
        }
    }

    /// The carrier's client exists: JetStream goes through it.
    pub fn set_client(&self, client: async_nats::Client) {
        let context = jetstream::ContextBuilder::new()
            .timeout(self.timeout)
            .build(client);
        *self.context.lock() = Some(context);
    }

    /// The carrier task is ending: the client goes.
    pub fn clear_client(&self) {
        self.context.lock().take();
    }

    /// A new connection (perhaps to a server that lost its store): what was known of the
    /// streams and the groups' last messages is fetched again.
    pub fn forget(&self) {
        self.streams.lock().clear();
        self.last.lock().clear();
    }

    fn names(&self, group: &str, policy: HistoryPolicy) -> Names {
        let ttl_ms = u64::try_from(policy.ttl.as_millis()).unwrap_or(u64::MAX);
        let [messages, epoch, both] =
            subject::history_subjects(&self.prefix, policy.size, ttl_ms, group);
        Names {
            stream: subject::history_stream(&self.prefix, policy.size, ttl_ms),
            policy: (policy.size, ttl_ms),
            messages,
            epoch,
            both,
        }
    }

    fn context(&self) -> Result<jetstream::Context, HistoryError> {
        self.context
            .lock()
            .clone()
            .ok_or_else(|| HistoryError::Unavailable("the NATS client has not started".into()))
    }

    /// Stores `text` as `group`'s next message; returns its position. The server republishes
    /// it to every gateway subscribed to the group.
    pub async fn append(
        &self,
        group: &str,
        text: &Bytes,
        policy: HistoryPolicy,
        origin: &Origin,
    ) -> Result<Position, HistoryError> {
        let context = self.context()?;
        let names = self.names(group, policy);
        let stream = self.stream(&context, &names, policy).await?;
        let remembered = self.last.lock().get(&names.messages).cloned();
        let mut last = match remembered {
            Some(last) => Some(last),
            None => self.fetch_last(&stream, &names).await?,
        };
        for _ in 0..APPEND_ATTEMPTS {
            let (expected, position) = match &last {
                Some(last) => (
                    last.sequence,
                    Position {
                        offset: last.position.offset + 1,
                        epoch: last.position.epoch.clone(),
                    },
                ),
                None => (
                    0,
                    Position {
                        offset: 1,
                        epoch: self.epoch(&context, &stream, &names).await?,
                    },
                ),
            };
            let frame = origin.stamp(&Positioned::encode(&position, text));
            let mut unacked = false;
            match self
                .publish(&context, &names.messages, expected, frame.clone())
                .await
            {
                Ok(sequence) => {
                    let stored = Last {
                        sequence,
                        position: position.clone(),
                    };
                    self.remember(&names.messages, stored);
                    return Ok(position);
                }
                Err(Refused::WrongLast) => {}
                Err(Refused::NoStream) => {
                    self.streams.lock().remove(&names.policy);
                    self.stream(&context, &names, policy).await?;
                }
                Err(Refused::NoAck(cause)) => {
                    tracing::debug!(
                        carrier = "nats",
                        group,
                        cause,
                        "no ack for a history message: checking whether it was stored"
                    );
                    unacked = true;
                }
                Err(Refused::Other(e)) => {
                    self.last.lock().remove(&names.messages);
                    return Err(e);
                }
            }
            last = self.fetch_last(&stream, &names).await?;
            if let Some(found) = last
                .as_ref()
                .filter(|found| unacked && found.position == position)
            {
                // Stored after all (the ack was lost), unless another gateway's message took
                // the same place: the envelope (origin and its sequence) tells.
                let stored = self.message_at(&stream, found.sequence).await?;
                let header = |bytes: &Bytes| bytes.get(..ENVELOPE_HEADER_LEN).map(<[u8]>::to_vec);
                if stored.is_some_and(|stored| header(&stored) == header(&frame)) {
                    return Ok(position);
                }
            }
        }
        self.last.lock().remove(&names.messages);
        Err(HistoryError::Store(format!(
            "no place for the message after {APPEND_ATTEMPTS} tries: other gateways kept storing \
             messages of the group"
        )))
    }

    /// Reads `group`'s history; a group without one gets its epoch.
    pub async fn read(
        &self,
        group: &str,
        policy: HistoryPolicy,
        query: HistoryQuery,
    ) -> Result<HistoryPage, HistoryError> {
        let context = self.context()?;
        let names = self.names(group, policy);
        let stream = self.stream(&context, &names, policy).await?;
        let last = self.fetch_last(&stream, &names).await?;
        let Some(last) = last else {
            let epoch = self.epoch(&context, &stream, &names).await?;
            return Ok(HistoryPage {
                epoch,
                top: 0,
                messages: Vec::new(),
            });
        };
        self.remember(&names.messages, last.clone());
        let after = query.since.unwrap_or(0);
        let messages = if query.limit == 0 || last.position.offset <= after {
            Vec::new()
        } else {
            self.scan(&stream, &names, &last, after, query).await?
        };
        Ok(HistoryPage {
            epoch: last.position.epoch,
            top: last.position.offset,
            messages,
        })
    }

    /// Removes `group`'s history (both its subjects): its next message starts a new epoch. A
    /// group no rule gives a history has none.
    pub async fn remove(&self, group: &str) -> Result<(), HistoryError> {
        let Some(policy) = self.rules.policy(group) else {
            return Ok(());
        };
        let context = self.context()?;
        let names = self.names(group, policy);
        let stream = self.stream(&context, &names, policy).await?;
        let purged = stream.purge().filter(names.both.clone()).await;
        self.last.lock().remove(&names.messages);
        purged.map_err(|e| HistoryError::Store(format!("purging {}: {e}", names.both)))?;
        Ok(())
    }

    /// The stream of `policy`, made if it does not exist yet.
    async fn stream(
        &self,
        context: &jetstream::Context,
        names: &Names,
        policy: HistoryPolicy,
    ) -> Result<stream::Stream<()>, HistoryError> {
        if !self.streams.lock().contains(&names.policy) {
            let (size, ttl_ms) = names.policy;
            let (subjects, source, destination) =
                subject::history_stream_subjects(&self.prefix, size, ttl_ms);
            let config = stream::Config {
                name: names.stream.clone(),
                description: Some(format!(
                    "Histories of the gateway's groups keeping their last {size} messages for \
                     {ttl_ms} ms (--bus-prefix {})",
                    self.prefix
                )),
                subjects: vec![subjects],
                max_messages_per_subject: i64::from(size),
                max_age: policy.ttl,
                discard: stream::DiscardPolicy::Old,
                storage: stream::StorageType::File,
                num_replicas: 1,
                republish: Some(stream::Republish {
                    source,
                    destination,
                    headers_only: false,
                }),
                ..stream::Config::default()
            };
            context.get_or_create_stream(config).await.map_err(|e| {
                unavailable_or(
                    e.kind() == jetstream::context::CreateStreamErrorKind::TimedOut,
                    format!("stream {}: {e}", names.stream),
                )
            })?;
            self.streams.lock().insert(names.policy);
        }
        context
            .get_stream_no_info(&names.stream)
            .await
            .map_err(|e| HistoryError::Store(format!("stream {}: {e}", names.stream)))
    }

    /// Publishes `frame` on `subject` if the group's last message is still at `expected`
    /// (0: none); returns its stream sequence.
    async fn publish(
        &self,
        context: &jetstream::Context,
        subject: &str,
        expected: u64,
        frame: Bytes,
    ) -> Result<u64, Refused> {
        let mut headers = HeaderMap::new();
        headers.insert(
            async_nats::header::NATS_EXPECTED_LAST_SUBJECT_SEQUENCE,
            expected.to_string().as_str(),
        );
        let refused = |e: jetstream::context::PublishError| match e.kind() {
            PublishErrorKind::WrongLastSequence => Refused::WrongLast,
            PublishErrorKind::StreamNotFound => Refused::NoStream,
            PublishErrorKind::TimedOut => Refused::NoAck(e.to_string()),
            PublishErrorKind::BrokenPipe => {
                Refused::Other(HistoryError::Unavailable(e.to_string()))
            }
            _ => Refused::Other(HistoryError::Store(e.to_string())),
        };
        let ack = context
            .publish_with_headers(subject.to_owned(), headers, frame)
            .await
            .map_err(refused)?
            .await
            .map_err(refused)?;
        Ok(ack.sequence)
    }

    /// The group's last message, if it has one.
    async fn fetch_last(
        &self,
        stream: &stream::Stream<()>,
        names: &Names,
    ) -> Result<Option<Last>, HistoryError> {
        let message = match stream
            .get_last_raw_message_by_subject(&names.messages)
            .await
        {
            Ok(message) => message,
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {
                self.last.lock().remove(&names.messages);
                return Ok(None);
            }
            Err(e) => {
                self.last.lock().remove(&names.messages);
                return Err(read_error(&names.messages, &e));
            }
        };
        let (position, _) = decode(message.payload)
            .map_err(|e| HistoryError::Store(format!("{}: {e}", names.messages)))?;
        let last = Last {
            sequence: message.sequence,
            position,
        };
        self.remember(&names.messages, last.clone());
        Ok(Some(last))
    }

    /// The payload stored at `sequence`, if any.
    async fn message_at(
        &self,
        stream: &stream::Stream<()>,
        sequence: u64,
    ) -> Result<Option<Bytes>, HistoryError> {
        match stream.get_raw_message(sequence).await {
            Ok(message) => Ok(Some(message.payload)),
            Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => Ok(None),
            Err(e) => Err(read_error(&format!("sequence {sequence}"), &e)),
        }
    }

    /// The group's epoch for its first message: the one on its `e` subject, made if there is
    /// none.
    async fn epoch(
        &self,
        context: &jetstream::Context,
        stream: &stream::Stream<()>,
        names: &Names,
    ) -> Result<Epoch, HistoryError> {
        // A second try can only find the epoch another gateway made meanwhile.
        for _ in 0..2 {
            match stream.get_last_raw_message_by_subject(&names.epoch).await {
                Ok(message) => {
                    return std::str::from_utf8(&message.payload)
                        .ok()
                        .and_then(|text| Epoch::new(text).ok())
                        .ok_or_else(|| {
                            HistoryError::Store(format!("{}: not an epoch", names.epoch))
                        })
                }
                Err(e) if e.kind() == stream::LastRawMessageErrorKind::NoMessageFound => {}
                Err(e) => return Err(read_error(&names.epoch, &e)),
            }
            let epoch = Epoch::from_random(fastrand::u64(..));
            let payload = Bytes::copy_from_slice(epoch.as_str().as_bytes());
            match self.publish(context, &names.epoch, 0, payload).await {
                Ok(_) => return Ok(epoch),
                Err(Refused::WrongLast) => {}
                Err(Refused::NoStream) => {
                    self.streams.lock().remove(&names.policy);
                    return Err(HistoryError::Unavailable(format!(
                        "stream {} not found",
                        names.stream
                    )));
                }
                Err(Refused::NoAck(cause)) => return Err(HistoryError::Unavailable(cause)),
                Err(Refused::Other(e)) => return Err(e),
            }
        }
        Err(HistoryError::Store(format!(
            "{}: the epoch was made and gone at once",
            names.epoch
        )))
    }

    /// The messages of the group after offset `after`, up to `last`, as `query` asks.
    async fn scan(
        &self,
        stream: &stream::Stream<()>,
        names: &Names,
        last: &Last,
        after: u64,
        query: HistoryQuery,
    ) -> Result<Vec<(u64, Text)>, HistoryError> {
        let store = |e: &dyn std::fmt::Display| {
            HistoryError::Store(format!("reading {}: {e}", names.messages))
        };
        let reader = stream
            .create_consumer(consumer::pull::Config {
                filter_subject: names.messages.clone(),
                deliver_policy: consumer::DeliverPolicy::All,
                ack_policy: consumer::AckPolicy::None,
                inactive_threshold: READ_CONSUMER_IDLE,
                memory_storage: true,
                num_replicas: 1,
                ..consumer::pull::Config::default()
            })
            .await
            .map_err(|e| store(&e))?;
        let mut kept = std::collections::VecDeque::new();
        let scanned = async {
            // Until the group's last message when the read began, or a fetch that finds none.
            // Not a count of batches: a fetch may bring fewer than asked (what the server had
            // ready), and the subject holds a finite number of messages, each fetched once.
            'batches: loop {
                let mut batch = reader
                    .fetch()
                    .max_messages(READ_BATCH)
                    .messages()
                    .await
                    .map_err(|e| store(&e))?;
                let mut fetched = 0;
                while let Some(message) = batch.next().await {
                    let message = message.map_err(|e| store(&e))?;
                    fetched += 1;
                    let sequence = message.info().map_err(|e| store(&e))?.stream_sequence;
                    if sequence > last.sequence {
                        break 'batches; // stored after the read began
                    }
                    let (position, text) =
                        decode(message.message.payload.clone()).map_err(|e| store(&e))?;
                    if position.offset > after && position.epoch == last.position.epoch {
                        kept.push_back((position.offset, text));
                        if query.reverse {
                            // The newest `limit`: the oldest kept goes.
                            if kept.len() > query.limit {
                                kept.pop_front();
                            }
                        } else if kept.len() >= query.limit {
                            break 'batches;
                        }
                    }
                    if sequence == last.sequence {
                        break 'batches;
                    }
                }
                if fetched == 0 {
                    break;
                }
            }
            Ok::<(), HistoryError>(())
        }
        .await;
        let name = reader.cached_info().name.clone();
        if let Err(e) = stream.delete_consumer(&name).await {
            tracing::debug!(carrier = "nats", consumer = name, cause = %e, "cannot delete a history read's consumer: it goes when idle");
        }
        scanned?;
        let mut messages: Vec<(u64, Text)> = kept.into();
        if query.reverse {
            messages.reverse();
        }
        Ok(messages)
    }

    fn remember(&self, subject: &str, last: Last) {
        let mut remembered = self.last.lock();
        if remembered.len() >= REMEMBERED_GROUPS && !remembered.contains_key(subject) {
            remembered.clear();
        }
        remembered.insert(subject.to_owned(), last);
    }
}

/// A stored message: its position and text.
fn decode(payload: Bytes) -> Result<(Position, Text), String> {
    let envelope = Envelope::decode(payload).map_err(|e| format!("not a gateway message: {e}"))?;
    let positioned =
        Positioned::decode(envelope.payload).map_err(|e| format!("not a positioned frame: {e}"))?;
    let text =
        Text::new(positioned.payload).map_err(|_| "a message that is not UTF-8".to_owned())?;
    Ok((positioned.position, text))
}

fn read_error(what: &str, e: &stream::LastRawMessageError) -> HistoryError {
    let text = format!("reading {what}: {e}");
    unavailable_or(e.kind() == stream::LastRawMessageErrorKind::Other, text)
}

/// An error the server did not answer (a timeout, no connection) is `Unavailable`; one it
/// answered is the store's.
fn unavailable_or(unanswered: bool, text: String) -> HistoryError {
    if unanswered {
        HistoryError::Unavailable(text)
    } else {
        HistoryError::Store(text)
    }
}
