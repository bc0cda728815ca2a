//! A positioned join: the group's position in the answer and, with `recover`, what the member
//! missed first, from the store, then the live messages with no duplicate and no gap.
//!
//! The member is joined (and counted in the group's stream) before the store is asked, and
//! holds the live messages that arrive meanwhile. Once the store answered: the messages after
//! the member's offset are queued (paced by its outbox), then the held live ones after the last
//! recovered offset; a live message still on its way that the history already had is skipped
//! (the member remembers its last recovered position until a later one arrives). A hole between
//! the history and the first held message (the group's subscription came after the history was
//! read) is asked for again. `recovered` is false when the epoch changed or the history no
//! longer reaches back to the member's offset: the application reloads its state.

use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use protocol::history::{joined_reply, positioned_message, Epoch, Position, Recover};
use protocol::{GroupId, GroupName, Text};

use crate::bus::{HistoryPolicy, HistoryQuery};
use crate::fanout::local::Client;
use crate::worker::state::WorkerState;

/// Attempts at filling a hole between the history read and the first live message.
const SEAM_ATTEMPTS: usize = 3;

/// What a connection keeps for its positioned groups while it recovers, and just after.
#[derive(Debug, Default)]
pub(crate) struct MemberHistory {
    /// Groups being recovered: the live messages held meanwhile, and whether more came than
    /// could be held.
    recovering: HashMap<GroupId, Held>,
    /// Per group, the last position recovered: live messages up to it are skipped.
    recovered: HashMap<GroupId, Position>,
}

#[derive(Debug, Default)]
struct Held {
    messages: Vec<(Position, Text)>,
    overflowed: bool,
}

/// Whether a live positioned message goes to `client` now: not while it recovers `group` (it
/// is held), nor when it recovered past it.
pub(crate) fn takes_live(
    client: &Client,
    group: &GroupId,
    position: &Position,
    text: &Text,
    hold_max: usize,
) -> bool {
    let mut history = client.history.borrow_mut();
    let Some(history) = history.as_mut() else {
        return true;
    };
    if let Some(held) = history.recovering.get_mut(group) {
        if held.messages.len() < hold_max {
            held.messages.push((position.clone(), text.clone()));
        } else {
            held.overflowed = true;
        }
        return false;
    }
    if let Some(recovered) = history.recovered.get(group) {
        if recovered.epoch == position.epoch && position.offset <= recovered.offset {
            return false;
        }
        history.recovered.remove(group);
    }
    true
}

/// `client` left `group`: nothing of it is kept.
pub(crate) fn forget(client: &Client, group: &GroupId) {
    let mut slot = client.history.borrow_mut();
    if let Some(history) = slot.as_mut() {
        history.recovering.remove(group);
        history.recovered.remove(group);
        if history.recovering.is_empty() && history.recovered.is_empty() {
            *slot = None;
        }
    }
}

fn start_holding(client: &Client, group: &GroupId) {
    client
        .history
        .borrow_mut()
        .get_or_insert_with(Default::default)
        .recovering
        .insert(group.clone(), Held::default());
}

fn take_held(client: &Client, group: &GroupId) -> Held {
    client
        .history
        .borrow_mut()
        .as_mut()
        .and_then(|h| h.recovering.remove(group))
        .unwrap_or_default()
}

fn first_held(client: &Client, group: &GroupId, epoch: &Epoch) -> Option<u64> {
    let history = client.history.borrow();
    let held = history.as_ref()?.recovering.get(group)?;
    held.messages
        .iter()
        .find(|(p, _)| &p.epoch == epoch)
        .map(|(p, _)| p.offset)
}

/// Answers a positioned join of `group` (already joined): reads the group's position, and with
/// `recover` delivers what the member missed. Returns the `joined` reply.
pub(crate) async fn join(
    state: Rc<WorkerState>,
    client: Rc<Client>,
    group: GroupId,
    policy: HistoryPolicy,
    recover: Option<Recover>,
    req_id: Option<String>,
) -> String {
    let hub = state.local.hub().clone();
    let name = GroupName::from_group_id(&group);
    let Some(recover) = recover else {
        return match hub.history(&name, policy, HistoryQuery::POSITION).await {
            Ok(page) => {
                state.local.seed_stream(&group, page.position());
                joined_reply(
                    group.as_str(),
                    Some(&page.position()),
                    None,
                    None,
                    req_id.as_deref(),
                )
            }
            Err(e) => joined_reply(
                group.as_str(),
                None,
                None,
                Some(&e.to_string()),
                req_id.as_deref(),
            ),
        };
    };
    let counters = &hub.history_counters;
    counters.recoveries.fetch_add(1, Relaxed);
    start_holding(&client, &group);
    let query = HistoryQuery {
        since: Some(recover.offset),
        limit: policy.size as usize,
        reverse: false,
    };
    let page = match hub.history(&name, policy, query).await {
        Ok(page) => page,
        Err(e) => {
            counters.recoveries_incomplete.fetch_add(1, Relaxed);
            let held = take_held(&client, &group);
            for (position, text) in held.messages {
                push(&state, &client, &group, &position, &text);
            }
            return joined_reply(
                group.as_str(),
                None,
                Some(false),
                Some(&e.to_string()),
                req_id.as_deref(),
            );
        }
    };
    let epoch = page.epoch.clone();
    let mut last = recover.offset;
    let mut recovered = page.epoch == recover.epoch && recover.offset <= page.top;
    if page.epoch != recover.epoch || recover.offset > page.top {
        // Nothing of the old epoch can be given: the member starts from now.
        last = page.top;
    } else {
        let first = page.messages.first().map(|(offset, _)| *offset);
        if page.top > recover.offset && first != Some(recover.offset + 1) {
            recovered = false; // the history no longer reaches back that far
        }
        for (offset, text) in &page.messages {
            if *offset <= last {
                continue;
            }
            paced(&state, &client).await;
            let position = Position {
                offset: *offset,
                epoch: epoch.clone(),
            };
            push(&state, &client, &group, &position, text);
            counters.recovered_messages.fetch_add(1, Relaxed);
            last = *offset;
        }
    }
    // A hole between the history and the first live message held: asked for again.
    for _ in 0..SEAM_ATTEMPTS {
        let Some(first) = first_held(&client, &group, &epoch) else {
            break;
        };
        if first <= last + 1 {
            break;
        }
        let query = HistoryQuery {
            since: Some(last),
            limit: (first - last - 1) as usize,
            reverse: false,
        };
        let Ok(gap) = hub.history(&name, policy, query).await else {
            break;
        };
        if gap.epoch != epoch {
            break;
        }
        let since = last;
        for (offset, text) in gap
            .messages
            .iter()
            .filter(|(o, _)| *o > since && *o < first)
        {
            paced(&state, &client).await;
            let position = Position {
                offset: *offset,
                epoch: epoch.clone(),
            };
            push(&state, &client, &group, &position, text);
            last = *offset;
        }
        if last + 1 < first {
            recovered = false;
            break;
        }
    }
    let held = take_held(&client, &group);
    if held.overflowed {
        recovered = false;
    }
    for (position, text) in held.messages {
        if position.epoch == epoch && position.offset <= last {
            continue;
        }
        if position.epoch == epoch {
            last = position.offset;
        }
        push(&state, &client, &group, &position, &text);
    }
    let position = Position {
        offset: last.max(page.top),
        epoch: epoch.clone(),
    };
    let reached = Position {
        offset: last,
        epoch,
    };
    // Left meanwhile (an order of the admin API, a join again without positions): nothing to
    // remember of the group.
    if client.is_positioned(&group) {
        client
            .history
            .borrow_mut()
            .get_or_insert_with(Default::default)
            .recovered
            .insert(group.clone(), reached.clone());
        state.local.seed_stream(&group, reached);
    } else {
        forget(&client, &group);
    }
    if !recovered {
        counters.recoveries_incomplete.fetch_add(1, Relaxed);
    }
    joined_reply(
        group.as_str(),
        Some(&position),
        Some(recovered),
        None,
        req_id.as_deref(),
    )
}

fn push(
    state: &WorkerState,
    client: &Rc<Client>,
    group: &GroupId,
    position: &Position,
    text: &Text,
) {
    let json = positioned_message(group.as_str(), position, text.as_str());
    state.local.push_one(client, json);
}

/// Waits while the member's outbox is half full (its connection writes meanwhile), at most the
/// write timeout: past it the next push overflows the outbox and the slow member is closed.
async fn paced(state: &WorkerState, client: &Client) {
    if client.outbox.len() < client.outbox.half() {
        return;
    }
    let wait: Duration = state.config.write_timeout;
    let _ = tokio::time::timeout(wait, client.outbox.drained()).await;
}
