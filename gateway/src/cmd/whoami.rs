//! `{"cmd":"whoami"}`: answers `{"cmd":"whoami","client_id":C,"uid":U or null,"groups":[...]}`.

use protocol::client::whoami_reply;
use protocol::ReqId;

use super::Session;

pub(super) fn apply(session: &Session, req_id: Option<ReqId<'_>>) {
    let client = &session.client;
    let names = client.group_names();
    let groups: Vec<&str> = names.iter().map(String::as_str).collect();
    session.reply(whoami_reply(
        &client.id,
        client.uid().as_ref(),
        &groups,
        req_id,
    ));
}
