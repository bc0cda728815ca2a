//! The client protocol: JSON text frames on the WebSocket.
//!
//! Requests, each with an optional `"req_id"`:
//! - groups: `{"cmd":"add_group","group_id":G,"presence":B}` (`presence` optional),
//!   `{"cmd":"leave_group","group_id":G}`;
//! - sends: `{"cmd":"send_to_group","group_id":G,"message":M,"exclude":[C...]}`,
//!   `{"cmd":"send_to_all","message":M,"exclude":[C...]}` (`exclude` optional),
//!   `{"cmd":"send_to_uid","uid":U|[U...],"message":M}`,
//!   `{"cmd":"send_to_client","client_id":C,"message":M}`;
//! - identity: `{"cmd":"bind_uid","uid":U}`, `{"cmd":"unbind_uid"}`, `{"cmd":"whoami"}`,
//!   `{"cmd":"auth","token":T}`;
//! - queries: `{"cmd":"count","group_id":G}`,
//!   `{"cmd":"members","group_id":G,"limit":N,"cursor":C|null}` (`limit`, `cursor` optional).
//!
//! Client ids `C` are strings ([`ClientId`]); uids `U` are strings or integers written plainly
//! ([`Uid`]). Group ids given by clients may not start with [`RESERVED_PREFIX`].
//!
//! Replies: `{"cmd":"ack","req_id":R}` (only when the request had a `req_id`, so the seed's
//! browser snippet sees nothing but group messages),
//! `{"cmd":"error","code":C,"reason":"...","req_id":R}` (always; `req_id` when known),
//! [`whoami_reply`] and, for groups joined with `presence`, [`presence_event`]s.
//! Group messages are delivered as the raw message text, unframed.
//!
//! [`parse_command`] borrows from the frame text wherever it can: a message string without escapes,
//! a string group id without escapes and an integer group id written plainly are slices of the
//! input, not copies, and keys are matched without being copied, so a typical command is parsed
//! without allocating. [`parse_publish`] reads the gateway admin API's
//! `{"group_id":G,"message":M}` by the same rules.

use std::borrow::{Borrow, Cow};
use std::fmt;
use std::sync::Arc;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;

use crate::cluster::{ClientId, Uid, DEFAULT_MAX_UID_LEN, RESERVED_PREFIX};
use crate::history::{Epoch, Recover};

/// Default limit on a group id, in bytes of UTF-8.
pub const DEFAULT_MAX_GROUP_ID_LEN: usize = 256;
/// Default limit on the uids of one `send_to_uid` and the client ids of one `exclude`.
pub const DEFAULT_MAX_TARGETS: usize = 100;
/// Default limit on a `members` page.
pub const DEFAULT_MAX_PAGE_SIZE: u32 = 1000;
/// A `members` page's size when the request gives no `limit` (at most the `max_page_size`).
pub const DEFAULT_PAGE_SIZE: u32 = 100;
/// Longest accepted `req_id`, in bytes of its JSON text.
pub const MAX_REQ_ID_LEN: usize = 64;
/// The whitespace JSON allows around values.
const JSON_WHITESPACE: [char; 4] = [' ', '\t', '\n', '\r'];
/// Largest magnitude of a numeric group id written with a fraction or an exponent: 2^53, beyond
/// which JavaScript numbers (doubles) no longer hold every integer.
const MAX_EXACT_INT: u64 = 1 << 53;
/// `10^MAX_EXACT_DIGITS` is larger than [`MAX_EXACT_INT`], and fits in a `u64`.
const MAX_EXACT_DIGITS: i64 = 16;

/// A validated group id: non-empty UTF-8 of at most the configured length. `123`, `"123"` and
/// `123.0` in a command all become the group `"123"`. Cheap to clone (shared).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupId(Arc<str>);

impl GroupId {
    /// Validates `name` as a group id of at most `max_len` bytes.
    pub fn new(name: &str, max_len: usize) -> Result<GroupId, GroupIdError> {
        validate_group_name(name, max_len)?;
        Ok(GroupId(Arc::from(name)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for GroupId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for GroupId {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for GroupId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl<'a> From<GroupName<'a>> for GroupId {
    fn from(name: GroupName<'a>) -> GroupId {
        GroupId(Arc::from(name.0.as_ref()))
    }
}

/// A validated group id borrowed from a request where possible (see [`GroupId`]).
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct GroupName<'a>(Cow<'a, str>);

impl<'a> GroupName<'a> {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn to_group_id(&self) -> GroupId {
        GroupId(Arc::from(self.0.as_ref()))
    }

    /// A group id already validated, borrowed.
    pub fn from_group_id(id: &'a GroupId) -> GroupName<'a> {
        GroupName(Cow::Borrowed(id.as_str()))
    }
}

impl fmt::Debug for GroupName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GroupIdError {
    #[error("group_id must not be empty")]
    Empty,
    #[error("group_id is {len} bytes, longer than the limit of {max}")]
    TooLong { len: usize, max: usize },
    #[error("group_id must be a string or an integer, not {0}")]
    WrongType(&'static str),
    #[error("a numeric group_id must be a whole number")]
    NotAnInteger,
    #[error(
        "a numeric group_id must fit in 64 bits, and be of magnitude at most 2^53 when written \
         with a fraction or an exponent"
    )]
    NumberTooLarge,
    #[error("group ids starting with U+001F are reserved for the gateways' own topics")]
    Reserved,
}

/// Refuses the gateways' own topics as a client's group id.
fn check_client_group(name: &str) -> Result<(), GroupIdError> {
    if name.starts_with(RESERVED_PREFIX) {
        return Err(GroupIdError::Reserved);
    }
    Ok(())
}

fn validate_group_name(name: &str, max_len: usize) -> Result<(), GroupIdError> {
    if name.is_empty() {
        return Err(GroupIdError::Empty);
    }
    if name.len() > max_len {
        return Err(GroupIdError::TooLong {
            len: name.len(),
            max: max_len,
        });
    }
    Ok(())
}

/// The raw JSON text of a request's `req_id` (a string or a non-negative integer), echoed back
/// verbatim in the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReqId<'a>(&'a str);

impl<'a> ReqId<'a> {
    /// The JSON text, ready to be embedded in a reply.
    pub fn as_json(&self) -> &'a str {
        self.0
    }
}

/// One parsed client request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientCommand<'a> {
    /// Joins a group; with `presence`, the connection also receives the group's join and leave
    /// events ([`presence_event`]).
    AddGroup {
        group_id: GroupName<'a>,
        presence: bool,
        /// With `"positioned":true` (a group with history only), the connection receives the
        /// group's messages with their position ([`crate::history::positioned_message`]) and the
        /// join is answered with the group's position ([`crate::history::joined_reply`]).
        positioned: bool,
        /// `"recover":{"offset":O,"epoch":E}` (positioned joins only): every message after O
        /// still in history is delivered first, in order, then the live ones.
        recover: Option<Recover>,
    },
    LeaveGroup {
        group_id: GroupName<'a>,
    },
    /// `message` is the exact text members receive: a JSON string's content, or the compact JSON
    /// text of any other value. Connections in `exclude` do not receive it (empty, not
    /// allocated, when the request has none).
    SendToGroup {
        group_id: GroupName<'a>,
        message: Cow<'a, str>,
        exclude: Vec<ClientId>,
    },
    /// `message` for every connection of the cluster but those in `exclude`.
    SendToAll {
        message: Cow<'a, str>,
        exclude: Vec<ClientId>,
    },
    /// `message` for every connection bound to one of `uids` (1 to `max_targets`, distinct, in
    /// the request's order).
    SendToUid {
        uids: Vec<Uid>,
        message: Cow<'a, str>,
    },
    /// `message` for one connection, wherever in the cluster.
    SendToClient {
        client_id: ClientId,
        message: Cow<'a, str>,
    },
    /// Binds the connection to a user id (replacing any previous one).
    BindUid {
        uid: Uid,
    },
    UnbindUid,
    /// Asks for the connection's client id, uid and groups ([`whoami_reply`]).
    Whoami,
    /// Asks for the number of connections in a group, cluster-wide.
    Count {
        group_id: GroupName<'a>,
    },
    /// Asks for a page of a group's members: at most `limit` client ids after `cursor`, in
    /// client id order.
    Members {
        group_id: GroupName<'a>,
        limit: u32,
        cursor: Option<ClientId>,
    },
    /// Presents a signed join token (a JWT) that grants the connection its rights. Only a
    /// gateway started with `--require-join-token` checks it.
    Auth {
        token: Cow<'a, str>,
    },
}

/// A request and its optional `req_id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request<'a> {
    pub command: ClientCommand<'a>,
    pub req_id: Option<ReqId<'a>>,
}

/// The machine-readable codes of error replies. Stable: clients match on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// The frame is not valid JSON.
    InvalidJson,
    /// The frame is valid JSON but not an object.
    NotAnObject,
    /// A key appears twice in the object.
    DuplicateField,
    /// A required field (`cmd`, `group_id`, `message`, `uid`, `client_id`, `token`) is missing.
    MissingField,
    /// A field has the wrong type or value (`cmd` not a string, `req_id` not a string or
    /// integer, a bad client id or uid, too many targets, `limit` out of range, ...).
    InvalidField,
    /// `group_id` is empty, too long, not a string or integer, or starts with the reserved
    /// prefix (U+001F).
    InvalidGroupId,
    /// `cmd` names no known command.
    UnknownCmd,
    /// A binary frame: the protocol is JSON text only.
    BinaryNotSupported,
    /// Joining would exceed the groups-per-connection limit.
    TooManyGroups,
    /// A join token is required and the connection has no valid one (none yet, or it is
    /// invalid or expired).
    Unauthorized,
    /// The connection's join token does not allow this join or send.
    Forbidden,
    /// The connection sends frames faster than its rate limit; the frame was not executed.
    RateLimited,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 12] = [
        ErrorCode::InvalidJson,
        ErrorCode::NotAnObject,
        ErrorCode::DuplicateField,
        ErrorCode::MissingField,
        ErrorCode::InvalidField,
        ErrorCode::InvalidGroupId,
        ErrorCode::UnknownCmd,
        ErrorCode::BinaryNotSupported,
        ErrorCode::TooManyGroups,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::NotAnObject => "not_an_object",
            ErrorCode::DuplicateField => "duplicate_field",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::InvalidGroupId => "invalid_group_id",
            ErrorCode::UnknownCmd => "unknown_cmd",
            ErrorCode::BinaryNotSupported => "binary_not_supported",
            ErrorCode::TooManyGroups => "too_many_groups",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a request cannot be served; becomes an `error` reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandError<'a> {
    pub code: ErrorCode,
    pub reason: String,
    /// The request's `req_id`, when it could be read.
    pub req_id: Option<ReqId<'a>>,
}

impl<'a> CommandError<'a> {
    pub fn new(code: ErrorCode, reason: impl Into<String>) -> Self {
        CommandError {
            code,
            reason: reason.into(),
            req_id: None,
        }
    }

    /// The JSON error reply for this error.
    pub fn to_reply(&self) -> String {
        error_reply(self.code, &self.reason, self.req_id)
    }
}

impl fmt::Display for CommandError<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.reason)
    }
}

/// Limits applied while parsing.
#[derive(Debug, Clone, Copy)]
pub struct ParseLimits {
    pub max_group_id_len: usize,
    /// Longest uid, in bytes.
    pub max_uid_len: usize,
    /// Most uids in one `send_to_uid`, most client ids in one `exclude`.
    pub max_targets: usize,
    /// Largest `limit` of a `members` request.
    pub max_page_size: u32,
}

impl Default for ParseLimits {
    fn default() -> Self {
        ParseLimits {
            max_group_id_len: DEFAULT_MAX_GROUP_ID_LEN,
            max_uid_len: DEFAULT_MAX_UID_LEN,
            max_targets: DEFAULT_MAX_TARGETS,
            max_page_size: DEFAULT_MAX_PAGE_SIZE,
        }
    }
}

/// Parses one text frame into a request.
pub fn parse_command<'a>(
    text: &'a str,
    limits: &ParseLimits,
) -> Result<Request<'a>, CommandError<'a>> {
    let raw = parse_raw(text, "a command must be a JSON object")?;
    let req_id = match raw.req_id {
        None => None,
        Some(r) => Some(parse_req_id(r)?),
    };
    let command = parse_fields(&raw, limits).map_err(|mut e| {
        e.req_id = req_id;
        e
    })?;
    Ok(Request { command, req_id })
}

/// One message of the gateway's admin publish API (`POST /api/publish`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish<'a> {
    pub group_id: GroupName<'a>,
    /// The exact text members receive, as for [`ClientCommand::SendToGroup`].
    pub message: Cow<'a, str>,
}

/// Parses `{"group_id":G,"message":M}`: a `send_to_group` command without `cmd`, read by the same
/// rules and answered with the same error codes (`not_an_object`, `duplicate_field`,
/// `missing_field`, `invalid_group_id`, `invalid_field`). Other fields (`exclude` included) are
/// ignored.
pub fn parse_publish<'a>(
    text: &'a str,
    limits: &ParseLimits,
) -> Result<Publish<'a>, CommandError<'a>> {
    let raw = parse_raw(text, "a publish must be a JSON object")?;
    check_duplicates(&raw)?;
    let (group_id, message) = send_fields(&raw, limits)?;
    Ok(Publish { group_id, message })
}

fn parse_raw<'a>(text: &'a str, not_an_object: &str) -> Result<RawCommand<'a>, CommandError<'a>> {
    serde_json::from_str(text).map_err(|e| parse_error(text, e, not_an_object))
}

/// The error for a frame that is not a JSON object: `invalid_json` or `not_an_object`.
#[cold]
fn parse_error<'a>(text: &str, error: serde_json::Error, not_an_object: &str) -> CommandError<'a> {
    // The object parse gives up at the first value when it is not an object, whatever follows:
    // only reading the whole frame tells valid JSON (`[1,2]`, `1e400`) from text that merely
    // starts like it (`[1,`, `12x`). Skipping a value is iterative in serde_json, with no
    // recursion limit: any depth is read in linear time and constant stack.
    let error = if text.trim_start_matches(JSON_WHITESPACE).starts_with('{') {
        error
    } else {
        match serde_json::from_str::<IgnoredAny>(text) {
            Ok(IgnoredAny) => return CommandError::new(ErrorCode::NotAnObject, not_an_object),
            Err(e) => e,
        }
    };
    CommandError::new(ErrorCode::InvalidJson, format!("invalid JSON: {error}"))
}

fn check_duplicates<'a>(raw: &RawCommand<'a>) -> Result<(), CommandError<'a>> {
    match raw.duplicate {
        Some(field) => Err(CommandError::new(
            ErrorCode::DuplicateField,
            format!("`{field}` appears more than once"),
        )),
        None => Ok(()),
    }
}

fn required_group_id<'a>(
    raw: &RawCommand<'a>,
    limits: &ParseLimits,
) -> Result<GroupName<'a>, CommandError<'a>> {
    let raw_group = raw
        .group_id
        .ok_or_else(|| CommandError::new(ErrorCode::MissingField, "`group_id` is required"))?;
    parse_group_id(raw_group, limits.max_group_id_len)
        .map_err(|e| CommandError::new(ErrorCode::InvalidGroupId, e.to_string()))
}

/// The fields of a send: `group_id`, then `message`.
fn send_fields<'a>(
    raw: &RawCommand<'a>,
    limits: &ParseLimits,
) -> Result<(GroupName<'a>, Cow<'a, str>), CommandError<'a>> {
    let group_id = required_group_id(raw, limits)?;
    Ok((group_id, required_message(raw)?))
}

fn required_message<'a>(raw: &RawCommand<'a>) -> Result<Cow<'a, str>, CommandError<'a>> {
    let message = raw
        .message
        .ok_or_else(|| CommandError::new(ErrorCode::MissingField, "`message` is required"))?;
    message_text(message)
}

fn invalid_field<'a>(reason: impl Into<String>) -> CommandError<'a> {
    CommandError::new(ErrorCode::InvalidField, reason)
}

/// The optional `presence` of an `add_group`: a JSON boolean.
fn presence_field<'a>(raw: &RawCommand<'a>) -> Result<bool, CommandError<'a>> {
    bool_field(raw.presence, "presence")
}

/// An optional boolean field, false when absent.
fn bool_field<'a>(value: Option<&RawValue>, name: &str) -> Result<bool, CommandError<'a>> {
    match value.map(RawValue::get) {
        None | Some("false") => Ok(false),
        Some("true") => Ok(true),
        Some(_) => Err(invalid_field(format!("`{name}` must be true or false"))),
    }
}

/// The optional `recover` of a positioned join: `{"offset":O,"epoch":E}`, O an integer of 0 or
/// more (0: from the start of the history), E an epoch a `joined` reply or a message gave.
fn recover_field<'a>(raw: &RawCommand<'a>) -> Result<Option<Recover>, CommandError<'a>> {
    const WHAT: &str =
        "`recover` must be {\"offset\":N,\"epoch\":\"...\"}, N an integer of 0 or more and the epoch as received";
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct RawRecover<'r> {
        offset: u64,
        #[serde(borrow)]
        epoch: Cow<'r, str>,
    }
    let Some(value) = raw.recover else {
        return Ok(None);
    };
    let parsed: RawRecover<'_> =
        serde_json::from_str(value.get()).map_err(|_| invalid_field(WHAT))?;
    let epoch = Epoch::new(&parsed.epoch).map_err(|_| invalid_field(WHAT))?;
    Ok(Some(Recover {
        offset: parsed.offset,
        epoch,
    }))
}

/// The optional `exclude` of a send: an array of at most `max_targets` client id strings.
/// Absent or empty, it is an empty `Vec`, not allocated.
fn exclude_field<'a>(
    raw: &RawCommand<'a>,
    limits: &ParseLimits,
) -> Result<Vec<ClientId>, CommandError<'a>> {
    const WHAT: &str = "`exclude` must be an array of client id strings";
    let Some(exclude) = raw.exclude else {
        return Ok(Vec::new());
    };
    let items = raw_array(exclude, limits.max_targets).map_err(|e| match e {
        ArrayError::NotAnArray => invalid_field(WHAT),
        ArrayError::TooLong => invalid_field(format!(
            "`exclude` may list at most {} client ids",
            limits.max_targets
        )),
    })?;
    items
        .into_iter()
        .map(|item| client_id_value(item, "exclude", WHAT))
        .collect()
}

/// A client id given as a JSON string.
fn client_id_value<'a>(
    raw: &RawValue,
    field: &str,
    wrong_type: &str,
) -> Result<ClientId, CommandError<'a>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return Err(invalid_field(wrong_type));
    }
    let text = json_string(text).map_err(|e| invalid_field(format!("`{field}`: {e}")))?;
    text.parse()
        .map_err(|e| invalid_field(format!("`{field}`: {e}")))
}

/// The required `client_id` of a `send_to_client`.
fn client_id_field<'a>(raw: &RawCommand<'a>) -> Result<ClientId, CommandError<'a>> {
    let client_id = raw
        .client_id
        .ok_or_else(|| CommandError::new(ErrorCode::MissingField, "`client_id` is required"))?;
    client_id_value(client_id, "client_id", "`client_id` must be a string")
}

/// The required `uid` of a `send_to_uid`: one uid or an array of 1 to `max_targets`, made
/// distinct keeping their first order.
fn uids_field<'a>(
    raw: &RawCommand<'a>,
    limits: &ParseLimits,
) -> Result<Vec<Uid>, CommandError<'a>> {
    let uid = raw
        .uid
        .ok_or_else(|| CommandError::new(ErrorCode::MissingField, "`uid` is required"))?;
    if !uid.get().starts_with('[') {
        return Ok(vec![uid_value(uid, limits)?]);
    }
    let max = limits.max_targets;
    let range = || invalid_field(format!("`uid` must list 1 to {max} uids"));
    let items = raw_array(uid, max).map_err(|_| range())?;
    if items.is_empty() {
        return Err(range());
    }
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    let mut uids = Vec::with_capacity(items.len());
    for item in items {
        let uid = uid_value(item, limits)?;
        if seen.insert(uid.clone()) {
            uids.push(uid);
        }
    }
    Ok(uids)
}

/// The required `uid` of a `bind_uid`: a single uid.
fn uid_field<'a>(raw: &RawCommand<'a>, limits: &ParseLimits) -> Result<Uid, CommandError<'a>> {
    let uid = raw
        .uid
        .ok_or_else(|| CommandError::new(ErrorCode::MissingField, "`uid` is required"))?;
    uid_value(uid, limits)
}

/// One uid: a JSON string, or an integer written plainly (no fraction, no exponent), which
/// stands for its decimal text (`-0` is `0`).
fn uid_value<'a>(raw: &RawValue, limits: &ParseLimits) -> Result<Uid, CommandError<'a>> {
    const WHAT: &str = "`uid` must be a string or an integer written without fraction or exponent";
    let text = raw.get();
    let name: Cow<'_, str> = match text.as_bytes().first() {
        Some(b'"') => json_string(text).map_err(|e| invalid_field(format!("`uid`: {e}")))?,
        Some(b'-' | b'0'..=b'9') => {
            if text.contains(['.', 'e', 'E']) {
                return Err(invalid_field(WHAT));
            }
            if text.parse::<i64>().is_err() && text.parse::<u64>().is_err() {
                return Err(invalid_field("a numeric `uid` must fit in 64 bits"));
            }
            Cow::Borrowed(if text == "-0" { "0" } else { text })
        }
        _ => return Err(invalid_field(WHAT)),
    };
    Uid::new(&name, limits.max_uid_len).map_err(|e| invalid_field(format!("`uid`: {e}")))
}

/// The optional `limit` of a `members`: an integer from 1 to `max_page_size`.
fn limit_field<'a>(raw: &RawCommand<'a>, limits: &ParseLimits) -> Result<u32, CommandError<'a>> {
    let max = limits.max_page_size;
    let Some(limit) = raw.limit else {
        return Ok(DEFAULT_PAGE_SIZE.min(max));
    };
    let text = limit.get();
    let value = if text.bytes().all(|b| b.is_ascii_digit()) {
        // Digits only: too many of them for a u32 is simply out of range.
        text.parse::<u32>().unwrap_or(u32::MAX)
    } else {
        0
    };
    if value == 0 || value > max {
        return Err(invalid_field(format!(
            "`limit` must be an integer from 1 to {max}"
        )));
    }
    Ok(value)
}

/// The optional `cursor` of a `members`: a client id string, or null.
fn cursor_field<'a>(raw: &RawCommand<'a>) -> Result<Option<ClientId>, CommandError<'a>> {
    match raw.cursor {
        None => Ok(None),
        Some(cursor) if cursor.get() == "null" => Ok(None),
        Some(cursor) => client_id_value(
            cursor,
            "cursor",
            "`cursor` must be a client id string or null",
        )
        .map(Some),
    }
}

/// Why a value is not an acceptable array.
enum ArrayError {
    NotAnArray,
    /// More than the allowed number of items.
    TooLong,
}

/// The items of a JSON array of at most `max` items, as raw values borrowed from its text.
/// Reading stops at the item past `max`.
fn raw_array(raw: &RawValue, max: usize) -> Result<Vec<&RawValue>, ArrayError> {
    struct Items(usize);

    impl<'de> Visitor<'de> for Items {
        type Value = Result<Vec<&'de RawValue>, ArrayError>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("an array")
        }

        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut items = Vec::new();
            while let Some(item) = seq.next_element::<&'de RawValue>()? {
                if items.len() == self.0 {
                    // Stop reading: the deserializer then reports the unread rest, which is
                    // not looked at.
                    return Ok(Err(ArrayError::TooLong));
                }
                items.push(item);
            }
            Ok(Ok(items))
        }
    }

    let text = raw.get();
    if !text.starts_with('[') {
        return Err(ArrayError::NotAnArray);
    }
    let mut de = serde_json::Deserializer::from_str(text);
    match de::Deserializer::deserialize_seq(&mut de, Items(max)) {
        Ok(result) => result,
        // Only reachable when the array was left unread (too long): the raw value is valid
        // JSON.
        Err(_) => Err(ArrayError::TooLong),
    }
}

fn parse_fields<'a>(
    raw: &RawCommand<'a>,
    limits: &ParseLimits,
) -> Result<ClientCommand<'a>, CommandError<'a>> {
    check_duplicates(raw)?;
    let cmd = raw
        .cmd
        .ok_or_else(|| CommandError::new(ErrorCode::MissingField, "`cmd` is required"))?;
    let cmd: &str = serde_json::from_str(cmd.get()).map_err(|_| {
        CommandError::new(
            ErrorCode::InvalidField,
            "`cmd` must be a string without escapes",
        )
    })?;
    match cmd {
        "add_group" => {
            let positioned = bool_field(raw.positioned, "positioned")?;
            let recover = recover_field(raw)?;
            if recover.is_some() && !positioned {
                return Err(invalid_field("`recover` needs `\"positioned\":true`"));
            }
            Ok(ClientCommand::AddGroup {
                group_id: required_group_id(raw, limits)?,
                presence: presence_field(raw)?,
                positioned,
                recover,
            })
        }
        "leave_group" => Ok(ClientCommand::LeaveGroup {
            group_id: required_group_id(raw, limits)?,
        }),
        "send_to_group" => {
            let (group_id, message) = send_fields(raw, limits)?;
            Ok(ClientCommand::SendToGroup {
                group_id,
                message,
                exclude: exclude_field(raw, limits)?,
            })
        }
        "send_to_all" => Ok(ClientCommand::SendToAll {
            message: required_message(raw)?,
            exclude: exclude_field(raw, limits)?,
        }),
        "send_to_uid" => Ok(ClientCommand::SendToUid {
            uids: uids_field(raw, limits)?,
            message: required_message(raw)?,
        }),
        "send_to_client" => Ok(ClientCommand::SendToClient {
            client_id: client_id_field(raw)?,
            message: required_message(raw)?,
        }),
        "bind_uid" => Ok(ClientCommand::BindUid {
            uid: uid_field(raw, limits)?,
        }),
        "unbind_uid" => Ok(ClientCommand::UnbindUid),
        "whoami" => Ok(ClientCommand::Whoami),
        "count" => Ok(ClientCommand::Count {
            group_id: required_group_id(raw, limits)?,
        }),
        "members" => Ok(ClientCommand::Members {
            group_id: required_group_id(raw, limits)?,
            limit: limit_field(raw, limits)?,
            cursor: cursor_field(raw)?,
        }),
        "auth" => Ok(ClientCommand::Auth {
            token: token_field(raw)?,
        }),
        other => Err(CommandError::new(
            ErrorCode::UnknownCmd,
            format!(
                "unknown cmd {:?}; expected add_group, leave_group, send_to_group, send_to_all, \
                 send_to_uid, send_to_client, bind_uid, unbind_uid, whoami, count, members or auth",
                truncate(other, 64)
            ),
        )),
    }
}

/// The `token` of an `auth` command: a JSON string.
fn token_field<'a>(raw: &RawCommand<'a>) -> Result<Cow<'a, str>, CommandError<'a>> {
    let token = raw
        .token
        .ok_or_else(|| CommandError::new(ErrorCode::MissingField, "`token` is required"))?;
    if !token.get().starts_with('"') {
        return Err(CommandError::new(
            ErrorCode::InvalidField,
            "`token` must be a string",
        ));
    }
    json_string(token.get())
        .map_err(|e| CommandError::new(ErrorCode::InvalidField, format!("`token`: {e}")))
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn parse_req_id<'a>(raw: &'a RawValue) -> Result<ReqId<'a>, CommandError<'a>> {
    let text = raw.get();
    let ok_type = match text.as_bytes().first() {
        Some(b'"') => true,
        Some(b'0'..=b'9') => text.bytes().all(|b| b.is_ascii_digit()),
        _ => false,
    };
    if !ok_type || text.len() > MAX_REQ_ID_LEN {
        return Err(CommandError::new(
            ErrorCode::InvalidField,
            format!(
                "`req_id` must be a string or a non-negative integer of at most {MAX_REQ_ID_LEN} characters"
            ),
        ));
    }
    Ok(ReqId(text))
}

/// `"123"`, `123` and `123.0` name the same group, as in the original. Refuses the reserved
/// prefix.
///
/// Public for the other JSON bodies that name a group (the gateway's admin API).
pub fn parse_group_id<'a>(
    raw: &'a RawValue,
    max_len: usize,
) -> Result<GroupName<'a>, GroupIdError> {
    let text = raw.get();
    let name: Cow<'a, str> = match text.as_bytes().first() {
        Some(b'"') => {
            json_string(text).map_err(|_| GroupIdError::WrongType("an undecodable string"))?
        }
        Some(b'-' | b'0'..=b'9') => numeric_group_name(text)?,
        Some(b'{') => return Err(GroupIdError::WrongType("an object")),
        Some(b'[') => return Err(GroupIdError::WrongType("an array")),
        Some(b't' | b'f') => return Err(GroupIdError::WrongType("a boolean")),
        _ => return Err(GroupIdError::WrongType("null")),
    };
    validate_group_name(&name, max_len)?;
    check_client_group(&name)?;
    Ok(GroupName(name))
}

/// The group a JSON number names: the decimal text of its exact value, which must be an
/// integer. Written without fraction or exponent, any 64-bit integer is taken as written
/// (borrowed; `-0` is `0`). Otherwise the value is read from the digits and the exponent, never
/// through a float: a nonzero fraction, however small, or a magnitude beyond 2^53 is refused, so
/// no two numbers of different values name the same group.
fn numeric_group_name(text: &str) -> Result<Cow<'_, str>, GroupIdError> {
    let (negative, unsigned) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (mantissa, exponent) = match unsigned.split_once(['e', 'E']) {
        Some((mantissa, exponent)) => (mantissa, Some(exponent)),
        None => (unsigned, None),
    };
    let (int_digits, frac_digits) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let has_fraction = mantissa.len() > int_digits.len();
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !all_digits(int_digits) || (has_fraction && !all_digits(frac_digits)) {
        // Not a JSON number: serde_json has validated the text, so this does not happen.
        return Err(GroupIdError::NotAnInteger);
    }
    let Some(exponent) = exponent else {
        if has_fraction {
            return exact_integer(negative, int_digits, frac_digits, 0);
        }
        // A plain integer: JSON allows no leading zeros, so the text is canonical but for `-0`.
        if text == "-0" {
            return Ok(Cow::Borrowed("0"));
        }
        if text.parse::<i64>().is_ok() || text.parse::<u64>().is_ok() {
            return Ok(Cow::Borrowed(text));
        }
        return Err(GroupIdError::NumberTooLarge);
    };
    let (exp_negative, exp_digits) = match exponent.as_bytes().first() {
        Some(b'-') => (true, &exponent[1..]),
        Some(b'+') => (false, &exponent[1..]),
        _ => (false, exponent),
    };
    if !all_digits(exp_digits) {
        return Err(GroupIdError::NotAnInteger);
    }
    // Saturating: an exponent beyond the i64 range is as good as infinite, since the digits
    // around it are far fewer.
    let magnitude = exp_digits.bytes().fold(0i64, |acc, b| {
        acc.saturating_mul(10).saturating_add(i64::from(b - b'0'))
    });
    let exp = if exp_negative { -magnitude } else { magnitude };
    exact_integer(negative, int_digits, frac_digits, exp)
}

/// The decimal text of `±int_digits.frac_digits × 10^exp`, if that is an integer of magnitude at
/// most 2^53.
fn exact_integer(
    negative: bool,
    int_digits: &str,
    frac_digits: &str,
    exp: i64,
) -> Result<Cow<'static, str>, GroupIdError> {
    let digits = || int_digits.bytes().chain(frac_digits.bytes());
    let len = int_digits.len() + frac_digits.len();
    let leading_zeros = digits().take_while(|&b| b == b'0').count();
    if leading_zeros == len {
        return Ok(Cow::Borrowed("0"));
    }
    let trailing_zeros = digits().rev().take_while(|&b| b == b'0').count();
    let significant = len - leading_zeros - trailing_zeros;
    let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    // The value is `significant digits × 10^scale`, and the last significant digit is not 0:
    // it is an integer exactly when `scale` is not negative.
    let scale = exp
        .saturating_sub(as_i64(frac_digits.len()))
        .saturating_add(as_i64(trailing_zeros));
    if scale < 0 {
        return Err(GroupIdError::NotAnInteger);
    }
    if as_i64(significant).saturating_add(scale) > MAX_EXACT_DIGITS {
        return Err(GroupIdError::NumberTooLarge);
    }
    // At most MAX_EXACT_DIGITS digits: no overflow.
    let value = digits()
        .skip(leading_zeros)
        .take(significant)
        .fold(0u64, |acc, b| acc * 10 + u64::from(b - b'0'))
        * 10u64.pow(scale as u32);
    if value > MAX_EXACT_INT {
        return Err(GroupIdError::NumberTooLarge);
    }
    Ok(Cow::Owned(if negative {
        format!("-{value}")
    } else {
        value.to_string()
    }))
}

/// The text members receive for a `message` value.
///
/// Public for the other JSON bodies that carry a message (the gateway's admin API).
pub fn message_text<'a>(raw: &'a RawValue) -> Result<Cow<'a, str>, CommandError<'a>> {
    let text = raw.get();
    if text.starts_with('"') {
        return json_string(text)
            .map_err(|e| CommandError::new(ErrorCode::InvalidField, format!("`message`: {e}")));
    }
    Ok(compact_json(text))
}

/// The content of a JSON string literal that serde_json already validated (a `RawValue`):
/// without escapes it is the text between the quotes, borrowed; with escapes it is decoded.
fn json_string(literal: &str) -> Result<Cow<'_, str>, serde_json::Error> {
    if !literal.contains('\\') {
        if let Some(inner) = literal.strip_prefix('"').and_then(|s| s.strip_suffix('"')) {
            return Ok(Cow::Borrowed(inner));
        }
    }
    serde_json::from_str::<String>(literal).map(Cow::Owned)
}

/// Removes insignificant whitespace from valid JSON text, keeping key order and number spelling.
fn compact_json(text: &str) -> Cow<'_, str> {
    let is_ws = |b: u8| matches!(b, b' ' | b'\t' | b'\n' | b'\r');
    let mut in_string = false;
    let mut escaped = false;
    let needs_work = text.bytes().any(|b| {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            false
        } else if b == b'"' {
            in_string = true;
            false
        } else {
            is_ws(b)
        }
    });
    if !needs_work {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    let (mut in_string, mut escaped) = (false, false);
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !(c.is_ascii() && is_ws(c as u8)) {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// The fields we read, kept as raw JSON so each gets its own precise error.
struct RawCommand<'a> {
    cmd: Option<&'a RawValue>,
    group_id: Option<&'a RawValue>,
    message: Option<&'a RawValue>,
    req_id: Option<&'a RawValue>,
    token: Option<&'a RawValue>,
    presence: Option<&'a RawValue>,
    exclude: Option<&'a RawValue>,
    uid: Option<&'a RawValue>,
    client_id: Option<&'a RawValue>,
    limit: Option<&'a RawValue>,
    cursor: Option<&'a RawValue>,
    positioned: Option<&'a RawValue>,
    recover: Option<&'a RawValue>,
    duplicate: Option<&'static str>,
}

impl<'de> de::Deserialize<'de> for RawCommand<'de> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RawVisitor;

        impl<'de> Visitor<'de> for RawVisitor {
            type Value = RawCommand<'de>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a command object")
            }

            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = RawCommand {
                    cmd: None,
                    group_id: None,
                    message: None,
                    req_id: None,
                    token: None,
                    presence: None,
                    exclude: None,
                    uid: None,
                    client_id: None,
                    limit: None,
                    cursor: None,
                    positioned: None,
                    recover: None,
                    duplicate: None,
                };
                while let Some(key) = map.next_key::<Key>()? {
                    let (slot, name) = match key {
                        Key::Cmd => (&mut out.cmd, "cmd"),
                        Key::GroupId => (&mut out.group_id, "group_id"),
                        Key::Message => (&mut out.message, "message"),
                        Key::ReqId => (&mut out.req_id, "req_id"),
                        Key::Token => (&mut out.token, "token"),
                        Key::Presence => (&mut out.presence, "presence"),
                        Key::Exclude => (&mut out.exclude, "exclude"),
                        Key::Uid => (&mut out.uid, "uid"),
                        Key::ClientId => (&mut out.client_id, "client_id"),
                        Key::Limit => (&mut out.limit, "limit"),
                        Key::Cursor => (&mut out.cursor, "cursor"),
                        Key::Positioned => (&mut out.positioned, "positioned"),
                        Key::Recover => (&mut out.recover, "recover"),
                        Key::Other => {
                            map.next_value::<IgnoredAny>()?;
                            continue;
                        }
                    };
                    let value: &'de RawValue = map.next_value()?;
                    if slot.replace(value).is_some() && out.duplicate.is_none() {
                        out.duplicate = Some(name);
                    }
                }
                Ok(out)
            }
        }

        deserializer.deserialize_map(RawVisitor)
    }
}

/// A key of a request object, told apart without copying it (keys with escapes are decoded by
/// serde_json into its scratch buffer).
enum Key {
    Cmd,
    GroupId,
    Message,
    ReqId,
    Token,
    Presence,
    Exclude,
    Uid,
    ClientId,
    Limit,
    Cursor,
    Positioned,
    Recover,
    Other,
}

impl<'de> de::Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;

        impl Visitor<'_> for KeyVisitor {
            type Value = Key;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }

            fn visit_str<E: de::Error>(self, key: &str) -> Result<Key, E> {
                Ok(match key {
                    "cmd" => Key::Cmd,
                    "group_id" => Key::GroupId,
                    "message" => Key::Message,
                    "req_id" => Key::ReqId,
                    "token" => Key::Token,
                    "presence" => Key::Presence,
                    "exclude" => Key::Exclude,
                    "uid" => Key::Uid,
                    "client_id" => Key::ClientId,
                    "limit" => Key::Limit,
                    "cursor" => Key::Cursor,
                    "positioned" => Key::Positioned,
                    "recover" => Key::Recover,
                    _ => Key::Other,
                })
            }
        }

        deserializer.deserialize_identifier(KeyVisitor)
    }
}

/// `{"cmd":"ack","req_id":R}`.
pub fn ack_reply(req_id: ReqId<'_>) -> String {
    format!(r#"{{"cmd":"ack","req_id":{}}}"#, req_id.as_json())
}

/// `{"cmd":"error","code":C,"reason":"...","req_id":R}` (`req_id` only when given).
pub fn error_reply(code: ErrorCode, reason: &str, req_id: Option<ReqId<'_>>) -> String {
    let reason = serde_json::Value::from(reason).to_string();
    match req_id {
        Some(r) => format!(
            r#"{{"cmd":"error","code":"{code}","reason":{reason},"req_id":{}}}"#,
            r.as_json()
        ),
        None => format!(r#"{{"cmd":"error","code":"{code}","reason":{reason}}}"#),
    }
}

/// Whether a [`presence_event`] tells of a join or a leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceKind {
    Join,
    Leave,
}

impl PresenceKind {
    /// The event's `cmd`: `join` or `leave`.
    pub fn as_str(self) -> &'static str {
        match self {
            PresenceKind::Join => "join",
            PresenceKind::Leave => "leave",
        }
    }
}

/// `text` as a JSON string literal, appended to `out`.
pub(crate) fn push_json_str(out: &mut String, text: &str) {
    out.push_str(&serde_json::Value::from(text).to_string());
}

fn push_json_uid(out: &mut String, uid: Option<&Uid>) {
    match uid {
        Some(uid) => push_json_str(out, uid.as_str()),
        None => out.push_str("null"),
    }
}

/// `{"cmd":"whoami","client_id":C,"uid":U|null,"groups":[G...],"req_id":R}` (`req_id` only
/// when given).
pub fn whoami_reply(
    client_id: &ClientId,
    uid: Option<&Uid>,
    groups: &[&str],
    req_id: Option<ReqId<'_>>,
) -> String {
    let mut out = String::with_capacity(64 + groups.iter().map(|g| g.len() + 3).sum::<usize>());
    out.push_str(r#"{"cmd":"whoami","client_id":""#);
    out.push_str(&client_id.to_string());
    out.push_str(r#"","uid":"#);
    push_json_uid(&mut out, uid);
    out.push_str(r#","groups":["#);
    for (i, group) in groups.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, group);
    }
    out.push(']');
    if let Some(r) = req_id {
        out.push_str(r#","req_id":"#);
        out.push_str(r.as_json());
    }
    out.push('}');
    out
}

/// `{"cmd":"join"|"leave","group_id":G,"client_id":C,"uid":U|null}`: a member joined or left a
/// group, sent to the group's members that asked for presence.
pub fn presence_event(
    kind: PresenceKind,
    group: &str,
    client_id: &ClientId,
    uid: Option<&Uid>,
) -> String {
    let mut out = String::with_capacity(96 + group.len());
    out.push_str(r#"{"cmd":""#);
    out.push_str(kind.as_str());
    out.push_str(r#"","group_id":"#);
    push_json_str(&mut out, group);
    out.push_str(r#","client_id":""#);
    out.push_str(&client_id.to_string());
    out.push_str(r#"","uid":"#);
    push_json_uid(&mut out, uid);
    out.push('}');
    out
}

/// Builds request frames, for clients such as client-cli. Optional fields are written only
/// when they differ from their default (`presence` when true, `exclude` when not empty, `cursor`
/// when given); `limit` always; `uid` as a string when there is one, an array otherwise.
pub fn request_json(command: &ClientCommand<'_>, req_id: Option<u64>) -> String {
    use serde_json::Value;
    let client_ids =
        |ids: &[ClientId]| Value::Array(ids.iter().map(|c| c.to_string().into()).collect());
    let mut obj = serde_json::Map::new();
    let cmd = match command {
        ClientCommand::AddGroup { .. } => "add_group",
        ClientCommand::LeaveGroup { .. } => "leave_group",
        ClientCommand::SendToGroup { .. } => "send_to_group",
        ClientCommand::SendToAll { .. } => "send_to_all",
        ClientCommand::SendToUid { .. } => "send_to_uid",
        ClientCommand::SendToClient { .. } => "send_to_client",
        ClientCommand::BindUid { .. } => "bind_uid",
        ClientCommand::UnbindUid => "unbind_uid",
        ClientCommand::Whoami => "whoami",
        ClientCommand::Count { .. } => "count",
        ClientCommand::Members { .. } => "members",
        ClientCommand::Auth { .. } => "auth",
    };
    obj.insert("cmd".into(), cmd.into());
    match command {
        ClientCommand::AddGroup {
            group_id,
            presence,
            positioned,
            recover,
        } => {
            obj.insert("group_id".into(), group_id.as_str().into());
            if *presence {
                obj.insert("presence".into(), true.into());
            }
            if *positioned {
                obj.insert("positioned".into(), true.into());
            }
            if let Some(recover) = recover {
                obj.insert(
                    "recover".into(),
                    serde_json::json!({"offset": recover.offset, "epoch": recover.epoch.as_str()}),
                );
            }
        }
        ClientCommand::LeaveGroup { group_id } | ClientCommand::Count { group_id } => {
            obj.insert("group_id".into(), group_id.as_str().into());
        }
        ClientCommand::SendToGroup {
            group_id,
            message,
            exclude,
        } => {
            obj.insert("group_id".into(), group_id.as_str().into());
            obj.insert("message".into(), message.as_ref().into());
            if !exclude.is_empty() {
                obj.insert("exclude".into(), client_ids(exclude));
            }
        }
        ClientCommand::SendToAll { message, exclude } => {
            obj.insert("message".into(), message.as_ref().into());
            if !exclude.is_empty() {
                obj.insert("exclude".into(), client_ids(exclude));
            }
        }
        ClientCommand::SendToUid { uids, message } => {
            let uid = match uids.as_slice() {
                [one] => one.as_str().into(),
                many => Value::Array(many.iter().map(|u| u.as_str().into()).collect()),
            };
            obj.insert("uid".into(), uid);
            obj.insert("message".into(), message.as_ref().into());
        }
        ClientCommand::SendToClient { client_id, message } => {
            obj.insert("client_id".into(), client_id.to_string().into());
            obj.insert("message".into(), message.as_ref().into());
        }
        ClientCommand::BindUid { uid } => {
            obj.insert("uid".into(), uid.as_str().into());
        }
        ClientCommand::UnbindUid | ClientCommand::Whoami => {}
        ClientCommand::Members {
            group_id,
            limit,
            cursor,
        } => {
            obj.insert("group_id".into(), group_id.as_str().into());
            obj.insert("limit".into(), (*limit).into());
            if let Some(cursor) = cursor {
                obj.insert("cursor".into(), cursor.to_string().into());
            }
        }
        ClientCommand::Auth { token } => {
            obj.insert("token".into(), token.as_ref().into());
        }
    }
    if let Some(r) = req_id {
        obj.insert("req_id".into(), r.into());
    }
    serde_json::Value::Object(obj).to_string()
}

/// A reply from the server, as a client reads it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Reply {
    pub cmd: String,
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub reason: Option<String>,
    #[serde(default)]
    pub req_id: Option<serde_json::Value>,
}

impl<'a> GroupName<'a> {
    /// Validates a group id given as text. Permissive: accepts the gateways' own topics (names
    /// starting with [`RESERVED_PREFIX`]); see [`GroupName::parse_client`].
    pub fn parse(name: &'a str, max_len: usize) -> Result<GroupName<'a>, GroupIdError> {
        validate_group_name(name, max_len)?;
        Ok(GroupName(Cow::Borrowed(name)))
    }

    /// Validates a group id a client or an operator gave (on a command line, in a URL or an
    /// admin path): as [`GroupName::parse`], and refuses [`RESERVED_PREFIX`]
    /// ([`GroupIdError::Reserved`]).
    pub fn parse_client(name: &'a str, max_len: usize) -> Result<GroupName<'a>, GroupIdError> {
        validate_group_name(name, max_len)?;
        check_client_group(name)?;
        Ok(GroupName(Cow::Borrowed(name)))
    }
}

/// WebSocket close codes the gateway sends, beyond the standard ones it uses as RFC 6455 defines
/// them (1000 normal, 1001 shutting down, 1002 protocol violation, 1007 invalid UTF-8, 1008
/// policy violation: sustained rate-limit abuse, 1009 too big).
pub mod close_code {
    /// Nothing was received from the client for the idle timeout.
    pub const IDLE_TIMEOUT: u16 = 4000;
    /// The connection's outbound queue exceeded its bound: the client does not read fast enough.
    pub const SLOW_CONSUMER: u16 = 4001;
}

#[cfg(test)]
mod tests;
