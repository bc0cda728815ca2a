//! The client commands, one file each: what a command checks (the connection's rights, its
//! limits) and what it does. Parsing and the wire format are `protocol::client`'s, shared with
//! client-cli; a new command is a new variant there and a new file here.
//!
//! [`Session`] is what commands act on: one connection's [`Client`] (its groups, uid and
//! outbox, shared with its worker's tables) and its rights.

mod add_group;
mod auth;
mod bind_uid;
mod count;
mod leave_group;
mod members;
mod send_to_all;
mod send_to_client;
mod send_to_group;
mod send_to_uid;
mod whoami;

use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use protocol::client::{ack_reply, error_reply, ClientCommand, ErrorCode, Request};
use protocol::cluster::Uid;
use protocol::{parse_command, CommandError, ReqId};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::edge::join_token::Access;
use crate::fanout::local::Client;
use crate::worker::state::WorkerState;

/// One connection's side of the commands: its client entry, its rights, and where replies go.
pub(crate) struct Session {
    pub(crate) client: Rc<Client>,
    /// What the connection's join token allows.
    access: Access,
    state: Rc<WorkerState>,
}

impl Session {
    pub(crate) fn new(client: Rc<Client>, access: Access, state: Rc<WorkerState>) -> Session {
        let session = Session {
            client,
            access,
            state,
        };
        session.bind_token_uid();
        session
    }

    /// With join tokens, the connection's uid is its token's `sub`.
    fn bind_token_uid(&self) {
        if self.access.is_open() {
            return;
        }
        let uid = self
            .access
            .token_uid()
            .and_then(|sub| Uid::new(sub, self.state.config.max_uid_len).ok());
        self.state.local.bind_uid(&self.client, uid);
    }

    /// Parses and runs one text frame, and answers it: an ack when it carried a `req_id` and
    /// succeeded, an error reply when it failed. `whoami` replies itself; `count` and `members`
    /// return the reply still to come ([`Later`]), which the connection awaits while it goes on
    /// writing, before it reads the next frame.
    pub(crate) async fn execute(&mut self, text: Utf8Bytes) -> Option<Later> {
        let stats = &self.state.stats;
        stats.messages_in.fetch_add(1, Relaxed);
        stats.bytes_in.fetch_add(text.len() as u64, Relaxed);
        let request = match parse_command(text.as_str(), &self.state.parse_limits) {
            Ok(request) => request,
            Err(e) => {
                self.reply_error(e.code, &e.reason, e.req_id);
                return None;
            }
        };
        let Request { command, req_id } = request;
        let result = match command {
            ClientCommand::AddGroup {
                group_id,
                presence,
                positioned,
                recover,
            } => add_group::apply(self, group_id, presence, positioned, recover, req_id),
            ClientCommand::LeaveGroup { group_id } => leave_group::apply(self, group_id),
            ClientCommand::SendToGroup {
                group_id,
                message,
                exclude,
            } => send_to_group::apply(self, &text, group_id, message, exclude).await,
            ClientCommand::SendToAll { message, exclude } => {
                send_to_all::apply(self, &text, message, exclude).await
            }
            ClientCommand::SendToUid { uids, message } => {
                send_to_uid::apply(self, &text, uids, message).await
            }
            ClientCommand::SendToClient { client_id, message } => {
                send_to_client::apply(self, &text, client_id, message).await
            }
            ClientCommand::BindUid { uid } => bind_uid::bind(self, uid),
            ClientCommand::UnbindUid => bind_uid::unbind(self),
            ClientCommand::Whoami => {
                whoami::apply(self, req_id);
                return None;
            }
            ClientCommand::Count { group_id } => count::apply(self, group_id, req_id),
            ClientCommand::Members {
                group_id,
                limit,
                cursor,
            } => members::apply(self, group_id, limit, cursor, req_id),
            ClientCommand::Auth { token } => {
                let result = auth::apply(self, &token);
                self.bind_token_uid();
                result
            }
        };
        match result {
            Ok(Answered::Ack) => {
                if let Some(req_id) = req_id {
                    self.reply(ack_reply(req_id));
                }
                None
            }
            Ok(Answered::Later(reply)) => Some(reply),
            Err(e) => {
                self.reply_error(e.code, &e.reason, req_id);
                None
            }
        }
    }

    /// Queues a reply that was gathered later ([`Later`]).
    pub(crate) fn reply_later(&self, text: String) {
        self.reply(text);
    }

    /// Leaves every group and the uid: the connection is closing.
    pub(crate) fn leave_all(&mut self) {
        self.state.local.unregister(&self.client);
    }

    pub(crate) fn reply_error(&self, code: ErrorCode, reason: &str, req_id: Option<ReqId<'_>>) {
        self.state.stats.count_error(code);
        tracing::debug!(code = %code, reason, "error reply");
        self.reply(error_reply(code, reason, req_id));
    }

    fn reply(&self, text: String) {
        self.state.local.push_one(&self.client, text);
    }
}

/// A reply still being gathered from the cluster: the connection polls it beside its writes.
pub(crate) type Later = std::pin::Pin<Box<dyn std::future::Future<Output = String>>>;

/// How a command that succeeded is answered.
enum Answered {
    /// Nothing yet: an ack goes out if the request had a `req_id`.
    Ack,
    /// Its reply, once gathered.
    Later(Later),
}

/// What a command answers: how, or why it failed.
type CommandResult = Result<Answered, CommandError<'static>>;

/// A reply: `reply` (a struct, serialized as a JSON object in field order) with the request's
/// `req_id` (its JSON text) last, when it had one.
fn with_req_id(reply: &impl serde::Serialize, req_id: Option<&str>) -> String {
    let mut text = serde_json::to_string(reply).unwrap_or_else(|_| "{}".into());
    if let Some(req_id) = req_id {
        if text.ends_with('}') {
            text.pop();
            if !text.ends_with('{') {
                text.push(',');
            }
            text.push_str(r#""req_id":"#);
            text.push_str(req_id);
            text.push('}');
        }
    }
    text
}

/// The reply of a cluster query, gathered later ([`Answered::Later`]) while the connection goes
/// on writing: `{"cmd":CMD, ...what merge makes of the replies..., "nodes":{...}, "req_id":R}`.
fn cluster_reply<T: serde::Serialize + 'static>(
    session: &Session,
    cmd: &'static str,
    request: protocol::cluster::Request,
    req_id: Option<ReqId<'_>>,
    merge: impl FnOnce(Vec<(protocol::cluster::NodeId, protocol::cluster::Reply)>) -> T + 'static,
) -> Answered {
    #[derive(serde::Serialize)]
    struct Reply<T> {
        cmd: &'static str,
        #[serde(flatten)]
        answer: crate::cluster::query::Answer<T>,
    }
    let req_id = req_id.map(|r| r.as_json().to_owned());
    let hub = session.state.local.hub().clone();
    Answered::Later(Box::pin(async move {
        let answer = hub
            .ask(request, crate::cluster::query::Scope::All, merge)
            .await;
        with_req_id(&Reply { cmd, answer }, req_id.as_deref())
    }))
}

/// The message text of a send, as a slice of the received frame where it is one (no copy).
fn message_payload(frame: &Utf8Bytes, message: std::borrow::Cow<'_, str>) -> protocol::Text {
    let payload = match message {
        std::borrow::Cow::Borrowed(slice) => {
            let bytes: &bytes::Bytes = frame.as_ref();
            Utf8Bytes::try_from(bytes.slice_ref(slice.as_bytes()))
                .unwrap_or_else(|_| Utf8Bytes::from(slice))
        }
        std::borrow::Cow::Owned(owned) => Utf8Bytes::from(owned),
    };
    protocol::Text::from_utf8_source(payload)
}
