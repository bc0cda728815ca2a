//! Groups with history on Redis: where a group's history lives (its keys), the two Lua scripts
//! that store and read it, and the request connection that reads it.
//!
//! **Keys.** A group's history is a hash `{prefix}:h:{TAG}:m:{group}` (field `e` the epoch, `o`
//! the last offset) and a stream `{prefix}:h:{TAG}:s:{group}` whose entry ids are the offsets
//! (`17-0`), each entry `t` (the server's time when stored, ms) and `p` (the payload). Both get
//! the group's TTL at every publish, so a group nobody published to for TTL loses them together
//! and its next message starts a new epoch, as the built-in broker's store does.
//!
//! **Slots.** A script may only touch keys of one hash slot, and on a cluster it must run on the
//! master that also serves the group's channel (`SPUBLISH` from the script goes to that
//! channel). The channel `{prefix}:{group}` hashes as a whole, or by a `{...}` the group id
//! contains: no suffix or prefix added to it keeps its slot in every case (a group id may hold
//! `{` and `}` anywhere). So the keys carry a hash tag computed for the channel's slot: `TAG` is
//! the smallest number whose decimal digits hash to that slot ([`slot_tag`]). The same on
//! independent shards, where it only keeps the key names uniform. The group id follows the tag
//! and the one-letter kind, so the names are injective.
//!
//! **Bounds.** The stream keeps the last SIZE entries: the publish trims it approximately
//! (`MAXLEN ~`, whole stream nodes, so it holds at most SIZE plus one node, the server's
//! `stream-node-max-entries`, 100 by default), and a read trims it exactly before it reads.
//!
//! **Scripts.** [`PUBLISH_SCRIPT`] assigns the offset, stores, trims and publishes in one atomic
//! step (a reader never sees an offset that is not stored, nor two gateways the same offset);
//! [`READ_SCRIPT`] answers a read, and gives a group without history its epoch. The read drops
//! entries older than the TTL first, the publish every 16th message (`MAXLEN` bounds the stream
//! in between): times are in order and offsets consecutive, so the first entry kept is found by
//! bisection, a few `XRANGE`s even for a long history. Scripts run by
//! `EVALSHA`; the SHA is the one `SCRIPT LOAD` answers on each new connection (a restarted or
//! failed-over server has an empty script cache).
//!
//! **Reads** are rare (a recovering join, a hole repaired, the admin API): one connection per
//! shard, made on the first read and kept, one request at a time, never on the publisher's or
//! subscriber's connection. A read is made of pages of at most [`READ_PAGE_MESSAGES`] messages
//! and [`READ_PAGE_BYTES`] bytes of payload, so that one reply stays within the connection's
//! [`RespLimits`] however large the history is.

use bytes::{BufMut, Bytes, BytesMut};
use protocol::history::Epoch;
use protocol::Text;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use url::Url;

use super::conn::{connect, Conn, RedisError};
use super::resp::{encode, put_bulk_header, Reply, RespLimits};
use super::routing::{channel, slot_of, SLOTS};
use crate::bus::history::{HistoryError, HistoryPage, HistoryPolicy, HistoryQuery};

/// Lua shared by both scripts: the server's clock, and dropping expired entries.
macro_rules! lua_prelude {
    () => {
        r#"
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function id(n)
  return string.format('%d', n)
end
-- Drops the entries of `stream` stored before `cutoff` (ms); its offsets are consecutive up to
-- `top` and their times in order. Returns the first offset kept (top + 1: none).
local function trim_expired(stream, cutoff, top)
  local head = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
  if #head == 0 then return top + 1 end
  local first = tonumber(string.match(head[1][1], '^%d+'))
  if tonumber(head[1][2][2]) >= cutoff then return first end
  local lo, hi = first + 1, top + 1
  while lo < hi do
    local mid = math.floor((lo + hi) / 2)
    local e = redis.call('XRANGE', stream, id(mid), id(mid))
    if #e > 0 and tonumber(e[1][2][2]) >= cutoff then hi = mid else lo = mid + 1 end
  end
  redis.call('XTRIM', stream, 'MINID', id(lo))
  return lo
end
"#
    };
}

/// Stores a message and publishes it with its position, atomically.
///
/// KEYS: meta, stream. ARGV: envelope header, payload, size, TTL (ms), epoch for a new history,
/// `PUBLISH` or `SPUBLISH`, channel, then the two arguments [`put_publish_id`] writes: the
/// publishing gateway's field in the meta hash and the call's number, which grows with each
/// message of a group a gateway sends. A call whose number is not above the one the field
/// holds was stored already (sent again after a lost connection): it is answered 0 and not
/// stored twice. Publishes header, 0xFE (`\254`), offset, ' ', epoch, ' ', payload: the envelope a
/// receiving gateway opens, around a positioned frame ([`protocol::history`]). Returns the
/// offset.
///
/// The meta hash holds a field per gateway process that published to the group since its
/// history started; past [`PUBLISHER_FIELDS`] of them the others' are cleared (they only
/// matter during a gateway's reconnection).
pub const PUBLISH_SCRIPT: &str = concat!(
    lua_prelude!(),
    r#"
local meta = redis.call('HMGET', KEYS[1], 'e', 'o', ARGV[8])
local epoch = meta[1]
if not epoch then
  epoch = ARGV[5]
  redis.call('DEL', KEYS[2])
elseif meta[3] and tonumber(meta[3]) >= tonumber(ARGV[9]) then
  return 0
end
local offset = (tonumber(meta[2]) or 0) + 1
redis.call('HSET', KEYS[1], 'e', epoch, 'o', id(offset), ARGV[8], ARGV[9])
if not meta[3] and redis.call('HLEN', KEYS[1]) > 2 + tonumber(ARGV[10]) then
  for _, field in ipairs(redis.call('HKEYS', KEYS[1])) do
    if field ~= 'e' and field ~= 'o' and field ~= ARGV[8] then redis.call('HDEL', KEYS[1], field) end
  end
end
local now = now_ms()
-- Expired entries are dropped every 16th message (a read drops them first anyway): MAXLEN
-- bounds the stream in between, and a scan per message would cost more than the rest.
if offset % 16 == 0 then trim_expired(KEYS[2], now - tonumber(ARGV[4]), offset - 1) end
-- Trimmed to SIZE approximately (whole stream nodes; an exact trim costs the server about as
-- much again as the rest of the script): a read trims exactly first.
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], id(offset) .. '-0', 't', id(now), 'p', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
redis.call(ARGV[6], ARGV[7], ARGV[1] .. '\254' .. id(offset) .. ' ' .. epoch .. ' ' .. ARGV[2])
return offset
"#
);

/// Reads a page of a group's history; a group without one gets its epoch (kept for the TTL).
///
/// KEYS: meta, stream. ARGV: epoch for a new history, TTL (ms), size, since (0: from the
/// oldest), before (0: up to the newest; else only offsets below it), limit, reverse (`1`),
/// payload bytes budget. Returns `{epoch, top, cut, offset, payload, ...}`: `cut` is 1 when the
/// budget ended the page before `limit` (the first message is always given).
pub const READ_SCRIPT: &str = concat!(
    lua_prelude!(),
    r#"
local epoch = redis.call('HGET', KEYS[1], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', epoch, 'o', 0)
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return {epoch, 0, 0}
end
local top = tonumber(redis.call('HGET', KEYS[1], 'o') or '0')
redis.call('XTRIM', KEYS[2], 'MAXLEN', '=', ARGV[3])
local first = trim_expired(KEYS[2], now_ms() - tonumber(ARGV[2]), top)
local limit = tonumber(ARGV[6])
local lo = math.max(tonumber(ARGV[4]) + 1, first)
local hi = top
if tonumber(ARGV[5]) > 0 then hi = math.min(hi, tonumber(ARGV[5]) - 1) end
local out = {epoch, top, 0}
if limit == 0 or lo > hi then return out end
local entries
if ARGV[7] == '1' then
  entries = redis.call('XREVRANGE', KEYS[2], id(hi), id(lo), 'COUNT', limit)
else
  entries = redis.call('XRANGE', KEYS[2], id(lo), id(hi), 'COUNT', limit)
end
local budget = tonumber(ARGV[8])
for _, entry in ipairs(entries) do
  local payload = entry[2][4]
  if #out > 3 and #payload > budget then
    out[3] = 1
    break
  end
  budget = budget - #payload
  out[#out + 1] = tonumber(string.match(entry[1], '^%d+'))
  out[#out + 1] = payload
end
return out
"#
);

/// Messages in one read reply at most; a longer read takes several.
pub const READ_PAGE_MESSAGES: usize = 1000;
/// Bytes of payload in one read reply at most (beyond its first message, which is whole).
pub const READ_PAGE_BYTES: usize = 4 * 1024 * 1024;
/// Bytes of a read reply beyond its payloads, per message at most: its offset's and payload's
/// RESP headers.
const READ_ENTRY_OVERHEAD: usize = 48;

/// The reply limits of a request connection, for messages of at most `max_bulk` bytes: a page
/// of [`READ_PAGE_MESSAGES`] and [`READ_PAGE_BYTES`], plus one message (the first of a page is
/// given whole) and `slack`. A history holding a message larger than `max_bulk` (stored by a
/// gateway with other limits) cannot be read by this one: the read fails, the connection is
/// made again.
pub fn request_limits(max_bulk: usize, slack: usize) -> RespLimits {
    RespLimits {
        max_bulk,
        max_elements: 3 + 2 * READ_PAGE_MESSAGES,
        max_reply: READ_PAGE_BYTES
            .saturating_add(max_bulk)
            .saturating_add(READ_PAGE_MESSAGES * READ_ENTRY_OVERHEAD)
            .saturating_add(slack),
    }
}

/// For each hash slot, the smallest number whose decimal digits hash to it (computed once:
/// about 170,000 CRC16s of a few bytes).
fn slot_tags() -> &'static [u32] {
    static TAGS: OnceLock<Box<[u32]>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let mut tags = vec![u32::MAX; SLOTS].into_boxed_slice();
        let mut left = SLOTS;
        let mut n: u32 = 0;
        while left > 0 {
            let slot = usize::from(slot_of(n.to_string().as_bytes()));
            if tags[slot] == u32::MAX {
                tags[slot] = n;
                left -= 1;
            }
            n += 1;
        }
        tags
    })
}

/// The hash tag that puts a key in `slot`.
pub fn slot_tag(slot: u16) -> u32 {
    slot_tags()[usize::from(slot) % SLOTS]
}

/// A group's history keys, in the slot of its channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryKeys {
    /// The channel the group's messages are published on.
    pub channel: Vec<u8>,
    /// Hash: `e` the epoch, `o` the last offset.
    pub meta: Vec<u8>,
    /// Stream: the messages kept, by offset.
    pub stream: Vec<u8>,
}

impl HistoryKeys {
    pub fn new(prefix: &str, group: &str) -> HistoryKeys {
        let channel = channel(prefix, group);
        let tag = slot_tag(slot_of(&channel));
        let key = |kind: &str| format!("{prefix}:h:{{{tag}}}:{kind}:{group}").into_bytes();
        HistoryKeys {
            meta: key("m"),
            stream: key("s"),
            channel,
        }
    }
}

/// A fresh epoch for a group whose history starts (the script keeps an existing one).
pub fn new_epoch() -> Epoch {
    Epoch::from_random(fastrand::u64(..))
}

/// Milliseconds of a TTL, as the scripts take it (at least 1).
fn ttl_ms(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// An `EVALSHA` whose arguments after the SHA are encoded once (the payload copied once, when
/// the message is published), and whose SHA is written in front of them when the command is
/// sent: the SHA is learned from the server (`SCRIPT LOAD`) by the connection that sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptCall {
    /// Elements of the command, `EVALSHA` and the SHA included.
    elements: usize,
    /// The elements after the SHA, as RESP bulk strings.
    pub tail: Bytes,
}

impl ScriptCall {
    fn new(args: &[&[u8]]) -> ScriptCall {
        let len: usize = args.iter().map(|a| a.len() + 2 + 23).sum();
        let mut tail = BytesMut::with_capacity(len);
        for arg in args {
            put_bulk_header(&mut tail, arg.len());
            tail.put_slice(arg);
            tail.put_slice(b"\r\n");
        }
        ScriptCall {
            elements: args.len() + 2,
            tail: tail.freeze(),
        }
    }

    /// What goes before [`ScriptCall::tail`] on the wire: the array header, `EVALSHA`, `sha`.
    pub fn head(&self, sha: &[u8]) -> Vec<u8> {
        let mut head = BytesMut::with_capacity(32 + sha.len());
        self.put_head(sha, 0, &mut head);
        head.to_vec()
    }

    /// Writes the head into `buf`, for a command with `extra` more arguments after the tail.
    pub fn put_head(&self, sha: &[u8], extra: usize, buf: &mut BytesMut) {
        buf.put_u8(b'*');
        buf.put_slice(itoa::Buffer::new().format(self.elements + extra).as_bytes());
        buf.put_slice(b"\r\n");
        put_bulk_header(buf, 7);
        buf.put_slice(b"EVALSHA\r\n");
        put_bulk_header(buf, sha.len());
        buf.put_slice(sha);
        buf.put_slice(b"\r\n");
    }

    /// Bytes it holds (for the publish queue's bound).
    pub fn len(&self) -> usize {
        self.tail.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tail.is_empty()
    }

    /// The whole command, for `sha`.
    pub fn command(&self, sha: &[u8]) -> Vec<u8> {
        let mut command = self.head(sha);
        command.extend_from_slice(&self.tail);
        command
    }
}

/// Gateway fields a group's meta hash keeps ([`PUBLISH_SCRIPT`]).
pub const PUBLISHER_FIELDS: usize = 64;
/// The arguments [`put_publish_id`] adds after a publish call's tail.
pub const PUBLISH_ID_ARGS: usize = 3;

/// The field of a group's meta hash that holds the number of the last message the gateway with
/// origin `node_id` stored there.
pub fn publisher_field(node_id: u64) -> Vec<u8> {
    format!("n{node_id:016x}").into_bytes()
}

/// Writes the last arguments of a [`PUBLISH_SCRIPT`] call, given when it is first sent and kept
/// for a resend: the gateway's `field`, the call's number `id`, and [`PUBLISHER_FIELDS`].
pub fn put_publish_id(field: &[u8], id: u64, buf: &mut BytesMut) {
    let mut number = itoa::Buffer::new();
    for arg in [
        field,
        number.format(id).as_bytes(),
        PUBLISHER_FIELDS_ARG.as_bytes(),
    ] {
        put_bulk_header(buf, arg.len());
        buf.put_slice(arg);
        buf.put_slice(b"\r\n");
    }
}

/// [`PUBLISHER_FIELDS`] as the script takes it.
const PUBLISHER_FIELDS_ARG: &str = "64";

/// The [`PUBLISH_SCRIPT`] call storing `payload` in `group`'s history and publishing it behind
/// `header` (the envelope this gateway stamps) with `verb` (`PUBLISH`, or a cluster's
/// `SPUBLISH`).
pub fn publish_call(
    keys: &HistoryKeys,
    header: &[u8],
    payload: &[u8],
    policy: HistoryPolicy,
    epoch: &Epoch,
    verb: &[u8],
) -> ScriptCall {
    ScriptCall::new(&[
        b"2",
        &keys.meta,
        &keys.stream,
        header,
        payload,
        policy.size.max(1).to_string().as_bytes(),
        ttl_ms(policy.ttl).to_string().as_bytes(),
        epoch.as_str().as_bytes(),
        verb,
        &keys.channel,
    ])
}

/// One page of a read, as [`READ_SCRIPT`] takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRequest {
    pub since: u64,
    /// Only offsets below this (0: no bound); a reverse read's next page.
    pub before: u64,
    pub limit: usize,
    pub reverse: bool,
}

/// The [`READ_SCRIPT`] call for one page.
pub fn read_call(
    keys: &HistoryKeys,
    policy: HistoryPolicy,
    epoch: &Epoch,
    page: PageRequest,
) -> ScriptCall {
    ScriptCall::new(&[
        b"2",
        &keys.meta,
        &keys.stream,
        epoch.as_str().as_bytes(),
        ttl_ms(policy.ttl).to_string().as_bytes(),
        policy.size.max(1).to_string().as_bytes(),
        page.since.to_string().as_bytes(),
        page.before.to_string().as_bytes(),
        page.limit.to_string().as_bytes(),
        if page.reverse { b"1" } else { b"0" },
        READ_PAGE_BYTES.to_string().as_bytes(),
    ])
}

/// A page as [`READ_SCRIPT`] answers it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub epoch: Epoch,
    pub top: u64,
    /// The byte budget ended it: more may follow.
    pub cut: bool,
    pub messages: Vec<(u64, Text)>,
}

/// Reads [`READ_SCRIPT`]'s reply; anything else is the store's error.
pub fn parse_page(reply: Reply) -> Result<Page, HistoryError> {
    let bad = |what: &str| HistoryError::Store(format!("a history read answered {what}"));
    let items = match reply {
        Reply::Array(Some(items)) => items,
        Reply::Error(e) => return Err(HistoryError::Store(String::from_utf8_lossy(&e).into())),
        _ => return Err(bad("something else than an array")),
    };
    if items.len() < 3 || items.len() % 2 == 0 {
        return Err(bad("an array of the wrong length"));
    }
    let mut items = items.into_iter();
    let epoch = items
        .next()
        .as_ref()
        .and_then(Reply::as_bytes)
        .and_then(|e| std::str::from_utf8(e).ok())
        .and_then(|e| Epoch::new(e).ok())
        .ok_or_else(|| bad("an invalid epoch"))?;
    let mut number = |what: &str| {
        items
            .next()
            .as_ref()
            .and_then(Reply::as_int)
            .and_then(|n| u64::try_from(n).ok())
            .ok_or_else(|| bad(what))
    };
    let top = number("an invalid top offset")?;
    let cut = number("an invalid cut flag")? == 1;
    let mut messages = Vec::with_capacity(items.len() / 2);
    while let Some(offset) = items.next() {
        let offset = offset
            .as_int()
            .and_then(|n| u64::try_from(n).ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| bad("an invalid offset"))?;
        let payload = match items.next() {
            Some(Reply::Bulk(Some(payload))) => payload,
            _ => return Err(bad("a message that is not a string")),
        };
        let text = Text::new(payload).map_err(|_| bad("a message that is not UTF-8"))?;
        messages.push((offset, text));
    }
    Ok(Page {
        epoch,
        top,
        cut,
        messages,
    })
}

/// What a shard's request connection needs to connect and wait.
#[derive(Debug, Clone)]
pub struct RequestSettings {
    /// Its `CLIENT SETNAME`.
    pub client_name: String,
    pub limits: RespLimits,
    pub connect_timeout: Duration,
    /// One request's reply at most this late (`--history-timeout`).
    pub timeout: Duration,
}

/// A shard's connection for history reads and removals: made on the first, kept while it
/// works, dropped on any error (and on a request abandoned half-way: a caller that gave up),
/// made again by the next request.
#[derive(Debug, Default)]
pub struct Requests {
    conn: tokio::sync::Mutex<Option<RequestConn>>,
}

#[derive(Debug)]
struct RequestConn {
    conn: Conn,
    /// [`READ_SCRIPT`]'s SHA on this server.
    sha: Bytes,
}

/// How a request failed, for the caller's error.
fn unavailable(e: RedisError) -> HistoryError {
    HistoryError::Unavailable(format!("redis: {e}"))
}

impl RequestConn {
    async fn open(url: &Url, settings: &RequestSettings) -> Result<RequestConn, RedisError> {
        let mut conn = connect(
            url,
            &settings.client_name,
            settings.limits,
            settings.connect_timeout,
        )
        .await?;
        let sha = load(&mut conn, READ_SCRIPT, settings.connect_timeout).await?;
        Ok(RequestConn { conn, sha })
    }

    async fn request(&mut self, command: &[u8], timeout: Duration) -> Result<Reply, RedisError> {
        let conn = &mut self.conn;
        tokio::time::timeout(timeout, async {
            conn.writer.write_all(command).await?;
            conn.writer.flush().await?;
            conn.next().await
        })
        .await
        .map_err(|_| RedisError::Silent(timeout))?
    }
}

/// `SCRIPT LOAD script`: its SHA on this server.
pub async fn load(conn: &mut Conn, script: &str, timeout: Duration) -> Result<Bytes, RedisError> {
    let reply = tokio::time::timeout(
        timeout,
        conn.request(&[b"SCRIPT", b"LOAD", script.as_bytes()]),
    )
    .await
    .map_err(|_| RedisError::Silent(timeout))??;
    match reply {
        Reply::Bulk(Some(sha)) => Ok(sha),
        Reply::Error(e) => Err(RedisError::Server(String::from_utf8_lossy(&e).into())),
        other => Err(RedisError::Unexpected(format!(
            "SCRIPT LOAD answered {other:?}"
        ))),
    }
}

/// Whether an error reply says the script is not in the server's cache.
pub fn is_noscript(error: &[u8]) -> bool {
    error.starts_with(b"NOSCRIPT")
}

impl Requests {
    /// Sends the command `make` builds for the read script's SHA and reads its reply; a
    /// `NOSCRIPT` (the server's cache flushed) loads the script again and sends it once more.
    async fn call(
        &self,
        url: &Url,
        settings: &RequestSettings,
        make: impl Fn(&[u8]) -> Vec<u8>,
    ) -> Result<Reply, HistoryError> {
        let mut slot = self.conn.lock().await;
        // Out of its slot while in use: a request abandoned half-way drops it with its reply.
        let (mut conn, kept) = match slot.take() {
            Some(conn) => (conn, true),
            None => (
                RequestConn::open(url, settings)
                    .await
                    .map_err(unavailable)?,
                false,
            ),
        };
        let mut reply = match conn.request(&make(&conn.sha), settings.timeout).await {
            Ok(reply) => reply,
            // A kept connection the server has closed since (it restarted, or dropped idle
            // clients): once more on a new one. Reads and removals may be repeated.
            Err(RedisError::Closed | RedisError::Io(_) | RedisError::Protocol(_)) if kept => {
                conn = RequestConn::open(url, settings)
                    .await
                    .map_err(unavailable)?;
                conn.request(&make(&conn.sha), settings.timeout)
                    .await
                    .map_err(unavailable)?
            }
            Err(e) => return Err(unavailable(e)),
        };
        if matches!(&reply, Reply::Error(e) if is_noscript(e)) {
            conn.sha = load(&mut conn.conn, READ_SCRIPT, settings.timeout)
                .await
                .map_err(unavailable)?;
            reply = conn
                .request(&make(&conn.sha), settings.timeout)
                .await
                .map_err(unavailable)?;
        }
        *slot = Some(conn);
        match reply {
            // The slot moved (a cluster's failover or resharding): not the store's refusal.
            Reply::Error(e) if super::is_topology_error(&e) => Err(HistoryError::Unavailable(
                format!("redis: {}", String::from_utf8_lossy(&e)),
            )),
            reply => Ok(reply),
        }
    }

    /// Reads `keys`' history, page after page.
    pub async fn read(
        &self,
        url: &Url,
        settings: &RequestSettings,
        keys: &HistoryKeys,
        policy: HistoryPolicy,
        query: HistoryQuery,
    ) -> Result<HistoryPage, HistoryError> {
        let epoch = new_epoch();
        let mut page = PageRequest {
            since: query.since.unwrap_or(0),
            before: 0,
            limit: 0,
            reverse: query.reverse,
        };
        let mut first: Option<(Epoch, u64)> = None;
        let mut messages: Vec<(u64, Text)> = Vec::new();
        loop {
            page.limit = query
                .limit
                .saturating_sub(messages.len())
                .min(READ_PAGE_MESSAGES);
            let call = read_call(keys, policy, &epoch, page);
            let got = parse_page(self.call(url, settings, |sha| call.command(sha)).await?)?;
            match &first {
                None => {
                    // The read is of the history as the first page found it: later pages do
                    // not reach the messages stored since (they arrive live).
                    if !query.reverse {
                        page.before = got.top.saturating_add(1);
                    }
                    first = Some((got.epoch.clone(), got.top));
                }
                Some((epoch, _)) if *epoch != got.epoch => {
                    return Err(HistoryError::Unavailable(
                        "the group's history was lost during the read".into(),
                    ))
                }
                Some(_) => {}
            }
            let n = got.messages.len();
            if let Some((last, _)) = got.messages.last() {
                if query.reverse {
                    page.before = *last;
                } else {
                    page.since = *last;
                }
            }
            messages.extend(got.messages);
            if n == 0 || messages.len() >= query.limit || (!got.cut && n < page.limit) {
                break;
            }
        }
        let (epoch, top) = first.unwrap_or((epoch, 0));
        Ok(HistoryPage {
            epoch,
            top,
            messages,
        })
    }

    /// Removes `keys`' history: its next message starts a new epoch.
    pub async fn remove(
        &self,
        url: &Url,
        settings: &RequestSettings,
        keys: &HistoryKeys,
    ) -> Result<(), HistoryError> {
        let command = encode(&[b"DEL", &keys.meta, &keys.stream]);
        match self.call(url, settings, |_| command.clone()).await? {
            Reply::Int(_) => Ok(()),
            Reply::Error(e) => Err(HistoryError::Store(String::from_utf8_lossy(&e).into())),
            other => Err(HistoryError::Store(format!("DEL answered {other:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn epoch(text: &str) -> Epoch {
        Epoch::new(text).expect("an epoch")
    }

    #[test]
    fn keys_share_the_channel_slot_whatever_the_group_id() {
        let long = "x".repeat(300);
        for group in [
            "chat:1",
            "{x}",
            "a}b",
            "{}x}",
            "a{b}c{d}",
            "}{",
            "{",
            "é 🎉",
            long.as_str(),
        ] {
            let keys = HistoryKeys::new("gp", group);
            assert_eq!(keys.channel, channel("gp", group));
            let slot = slot_of(&keys.channel);
            assert_eq!(slot_of(&keys.meta), slot, "{group:?}");
            assert_eq!(slot_of(&keys.stream), slot, "{group:?}");
            assert_ne!(keys.meta, keys.stream);
        }
        let keys = HistoryKeys::new("gp", "chat:1");
        let tag = slot_tag(slot_of(b"gp:chat:1"));
        assert_eq!(keys.meta, format!("gp:h:{{{tag}}}:m:chat:1").into_bytes());
        assert_eq!(keys.stream, format!("gp:h:{{{tag}}}:s:chat:1").into_bytes());
    }

    #[test]
    fn every_slot_has_the_smallest_tag_that_hashes_to_it() {
        // Fixed forever: every gateway of a deployment must name the same keys.
        assert_eq!(slot_tag(slot_of(b"0")), 0);
        assert_eq!(slot_tag(slot_of(b"1")), 1);
        assert_eq!(slot_tag(12182), slot_tag(slot_of(b"foo")));
        for slot in (0..SLOTS as u16).step_by(97) {
            let tag = slot_tag(slot);
            assert_eq!(slot_of(tag.to_string().as_bytes()), slot);
            assert!((0..tag).all(|n| slot_of(n.to_string().as_bytes()) != slot));
        }
    }

    #[test]
    fn a_script_call_is_the_command_encode_writes() {
        let keys = HistoryKeys::new("gp", "chat:1");
        let policy = HistoryPolicy {
            size: 20,
            ttl: Duration::from_secs(600),
        };
        let e = epoch("00000000000000ab");
        let call = publish_call(&keys, b"HDR\r\n", b"hi \xfe", policy, &e, b"SPUBLISH");
        let sha = b"0123456789012345678901234567890123456789";
        let expected = encode(&[
            b"EVALSHA",
            sha,
            b"2",
            &keys.meta,
            &keys.stream,
            b"HDR\r\n",
            b"hi \xfe",
            b"20",
            b"600000",
            b"00000000000000ab",
            b"SPUBLISH",
            b"gp:chat:1",
        ]);
        assert_eq!(call.command(sha), expected);
        assert_eq!([call.head(sha), call.tail.to_vec()].concat(), expected);

        let page = PageRequest {
            since: 17,
            before: 0,
            limit: 1000,
            reverse: true,
        };
        let budget = READ_PAGE_BYTES.to_string();
        let read = read_call(&keys, policy, &e, page);
        assert_eq!(
            read.command(sha),
            encode(&[
                b"EVALSHA",
                sha,
                b"2",
                &keys.meta,
                &keys.stream,
                b"00000000000000ab",
                b"600000",
                b"20",
                b"17",
                b"0",
                b"1000",
                b"1",
                budget.as_bytes(),
            ])
        );
    }

    fn bulk(b: &[u8]) -> Reply {
        Reply::Bulk(Some(Bytes::copy_from_slice(b)))
    }

    #[test]
    fn pages_are_read_and_checked() {
        let reply = Reply::Array(Some(vec![
            bulk(b"e1"),
            Reply::Int(12),
            Reply::Int(1),
            Reply::Int(11),
            bulk(b"a"),
            Reply::Int(12),
            bulk(b"b"),
        ]));
        let page = parse_page(reply).expect("a page");
        assert_eq!(page.epoch, epoch("e1"));
        assert_eq!((page.top, page.cut), (12, true));
        let texts: Vec<(u64, &str)> = page
            .messages
            .iter()
            .map(|(o, t)| (*o, t.as_str()))
            .collect();
        assert_eq!(texts, [(11, "a"), (12, "b")]);
        let new = Reply::Array(Some(vec![bulk(b"e2"), Reply::Int(0), Reply::Int(0)]));
        assert_eq!(
            parse_page(new).expect("a page"),
            Page {
                epoch: epoch("e2"),
                top: 0,
                cut: false,
                messages: vec![]
            }
        );

        for bad in [
            Reply::Error(Bytes::from_static(b"ERR Error running script")),
            Reply::Int(3),
            Reply::Array(Some(vec![bulk(b"e 1"), Reply::Int(0), Reply::Int(0)])),
            Reply::Array(Some(vec![bulk(b"e1"), Reply::Int(-1), Reply::Int(0)])),
            Reply::Array(Some(vec![bulk(b"e1"), Reply::Int(0)])),
            Reply::Array(Some(vec![
                bulk(b"e1"),
                Reply::Int(1),
                Reply::Int(0),
                Reply::Int(1),
                bulk(b"\xff"),
            ])),
            Reply::Array(Some(vec![
                bulk(b"e1"),
                Reply::Int(1),
                Reply::Int(0),
                Reply::Int(0),
                bulk(b"x"),
            ])),
            Reply::Array(Some(vec![
                bulk(b"e1"),
                Reply::Int(1),
                Reply::Int(0),
                bulk(b"1"),
                bulk(b"x"),
            ])),
        ] {
            assert!(
                matches!(parse_page(bad.clone()), Err(HistoryError::Store(_))),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn a_full_page_fits_the_request_connection() {
        let limits = request_limits(1 << 20, 64 * 1024);
        assert!(limits.max_elements >= 3 + 2 * READ_PAGE_MESSAGES);
        assert!(limits.max_reply >= READ_PAGE_BYTES + (1 << 20));
    }

    #[test]
    fn the_scripts_publish_a_positioned_frame_in_an_envelope() {
        // What `on_message` opens: the header, then 0xFE, offset, epoch, payload.
        assert!(PUBLISH_SCRIPT
            .contains(r"ARGV[1] .. '\254' .. id(offset) .. ' ' .. epoch .. ' ' .. ARGV[2]"));
        assert_eq!(protocol::history::POSITIONED_TAG, 254);
        for script in [PUBLISH_SCRIPT, READ_SCRIPT] {
            assert!(script.contains("local function trim_expired"));
        }
    }
}
