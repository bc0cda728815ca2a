//! The client commands, one file each: what a command checks (the connection's rights, its
//! limits) and what it does. Parsing and the wire format are `protocol::client`'s, shared with
//! client-cli; a new command is a new variant there and a new file here.
//!
//! [`Session`] is what commands act on: one connection's groups, rights and outbox.

mod add_group;
mod auth;
mod leave_group;
mod send_to_group;

use std::collections::HashSet;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use protocol::client::{ack_reply, error_reply, ClientCommand, ErrorCode, Request};
use protocol::{parse_command, CommandError, GroupId, ReqId};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::edge::join_token::Access;
use crate::fanout::local::ConnId;
use crate::fanout::outbox::{Outbox, Push};
use crate::worker::state::WorkerState;

/// One connection's side of the commands: its groups, its rights, and where replies go.
pub(crate) struct Session {
    pub(crate) id: ConnId,
    pub(crate) outbox: Rc<Outbox>,
    groups: HashSet<GroupId>,
    /// What the connection's join token allows.
    access: Access,
    state: Rc<WorkerState>,
}

impl Session {
    pub(crate) fn new(
        id: ConnId,
        outbox: Rc<Outbox>,
        access: Access,
        state: Rc<WorkerState>,
    ) -> Session {
        Session {
            id,
            outbox,
            groups: HashSet::new(),
            access,
            state,
        }
    }

    /// Parses and runs one text frame, and answers it: an ack when it carried a `req_id` and
    /// succeeded, an error reply when it failed.
    pub(crate) async fn execute(&mut self, text: Utf8Bytes) {
        let stats = &self.state.stats;
        stats.messages_in.fetch_add(1, Relaxed);
        stats.bytes_in.fetch_add(text.len() as u64, Relaxed);
        let request = match parse_command(text.as_str(), &self.state.parse_limits) {
            Ok(request) => request,
            Err(e) => {
                self.reply_error(e.code, &e.reason, e.req_id);
                return;
            }
        };
        let Request { command, req_id } = request;
        let result = match command {
            ClientCommand::AddGroup { group_id } => add_group::apply(self, group_id),
            ClientCommand::LeaveGroup { group_id } => leave_group::apply(self, group_id),
            ClientCommand::SendToGroup { group_id, message } => {
                send_to_group::apply(self, &text, group_id, message).await
            }
            ClientCommand::Auth { token } => auth::apply(self, &token),
        };
        match result {
            Ok(()) => {
                if let Some(req_id) = req_id {
                    self.reply(ack_reply(req_id));
                }
            }
            Err(e) => self.reply_error(e.code, &e.reason, req_id),
        }
    }

    /// Leaves every group: the connection is closing.
    pub(crate) fn leave_all(&mut self) {
        for group in std::mem::take(&mut self.groups) {
            self.state.local.remove_member(&group, self.id);
        }
    }

    pub(crate) fn reply_error(&self, code: ErrorCode, reason: &str, req_id: Option<ReqId<'_>>) {
        self.state.stats.count_error(code);
        tracing::debug!(code = %code, reason, "error reply");
        self.reply(error_reply(code, reason, req_id));
    }

    fn reply(&self, text: String) {
        let len = text.len() as u64;
        if self.outbox.push(Utf8Bytes::from(text)) == Push::Queued {
            self.state.stats.deliveries.fetch_add(1, Relaxed);
            self.state.stats.bytes_out.fetch_add(len, Relaxed);
        }
    }
}

/// What a command answers when it fails.
type CommandResult = Result<(), CommandError<'static>>;
