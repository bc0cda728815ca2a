//! Per worker and history group: the last position delivered to the group's positioned
//! members here, so that each message reaches them once, in offset order, with the holes a
//! carrier left filled from the store.
//!
//! A message is accepted when it is the next offset of the epoch (offset 1 of a new epoch, or
//! the first message this worker sees); an offset already delivered is a duplicate and dropped; an
//! offset past the next one is a hole: the stream holds what arrives (up to `hold_max`) while
//! it asks the store for the missing offsets, delivers those, then what it held, and counts
//! the offsets the store no longer had (`history_unrepaired`).

use std::sync::atomic::Ordering::Relaxed;

use protocol::history::{positioned_message, Epoch, Position};
use protocol::{GroupId, GroupName, Text};

use crate::bus::{HistoryError, HistoryPage, HistoryQuery};
use crate::fanout::local::LocalGroups;

/// One history group's positioned delivery on one worker.
#[derive(Debug, Default)]
pub(crate) struct Stream {
    /// Positioned members of the group on this worker.
    members: usize,
    /// The last position delivered (`None` until the first message or a join's answer).
    last: Option<Position>,
    /// While a hole is being repaired: what arrived meanwhile, in order.
    held: Option<Vec<(Position, Text)>>,
}

impl LocalGroups {
    /// A positioned member joined (`true`) or left the group here.
    pub(crate) fn count_positioned(&self, group: &GroupId, joined: bool) {
        let mut streams = self.streams.borrow_mut();
        if joined {
            streams.entry(group.clone()).or_default().members += 1;
            return;
        }
        if let Some(stream) = streams.get_mut(group) {
            stream.members -= 1;
            if stream.members == 0 {
                streams.remove(group);
                server_kit::memory::shrink_if_sparse(&mut streams);
            }
        }
    }

    /// Positioned members of `group` on this worker.
    pub(crate) fn positioned_members(&self, group: &GroupId) -> usize {
        self.streams.borrow().get(group).map_or(0, |s| s.members)
    }

    /// The group's position as the store gave it to a join, for a stream that has none yet:
    /// a hole between it and the first live message is then seen, and repaired.
    pub(crate) fn seed_stream(&self, group: &GroupId, position: Position) {
        if let Some(stream) = self.streams.borrow_mut().get_mut(group) {
            if stream.last.is_none() {
                stream.last = Some(position);
            }
        }
    }

    /// A positioned message for the group's positioned members here.
    pub(crate) fn sequence(&self, group: GroupId, position: Position, text: Text) {
        let counters = &self.hub().history_counters;
        let mut streams = self.streams.borrow_mut();
        let Some(stream) = streams.get_mut(&group) else {
            return; // no positioned member here
        };
        if let Some(held) = &mut stream.held {
            // Past `hold_max` a message is not kept: it is one more offset of the hole the
            // replay of what is held finds next, and is read from the store then.
            if held.len() < self.hold_max {
                held.push((position, text));
            }
            return;
        }
        // The offset before this one as this worker knows it: its last in the same epoch, 0 in
        // a new epoch (which starts at 1, so a later first offset is a hole too), nothing
        // before the first message.
        let previous = match &stream.last {
            Some(last) if last.epoch == position.epoch => Some(last.offset),
            Some(_) => Some(0),
            None => None,
        };
        if let Some(previous) = previous {
            if position.offset <= previous {
                counters.duplicates.fetch_add(1, Relaxed);
                return;
            }
            if position.offset > previous + 1 {
                counters.holes.fetch_add(1, Relaxed);
                let until = position.offset;
                let epoch = position.epoch.clone();
                stream.held = Some(vec![(position, text)]);
                drop(streams);
                self.repair(group, epoch, previous, until);
                return;
            }
        }
        stream.last = Some(position.clone());
        drop(streams);
        self.push_positioned(&group, &position, &text);
    }

    /// After the bus was lost: each history group with positioned members here asks the store
    /// for its position, and what was published meanwhile is repaired as a hole would be (in a
    /// new epoch, from its first offset), without waiting for the group's next message.
    pub(crate) fn catch_up_streams(&self) {
        let groups: Vec<(GroupId, Option<Position>)> = self
            .streams
            .borrow()
            .iter()
            .filter(|(_, s)| s.held.is_none())
            .map(|(g, s)| (g.clone(), s.last.clone()))
            .collect();
        for (group, last) in groups {
            let hub = self.hub().clone();
            let worker = self.worker();
            tokio::task::spawn_local(async move {
                let Some(policy) = hub.history_policy(group.as_str()) else {
                    return;
                };
                let name = GroupName::from_group_id(&group);
                let Ok(page) = hub.history(&name, policy, HistoryQuery::POSITION).await else {
                    return; // the next message finds the hole, if there is one
                };
                hub.router()
                    .run_on(worker, move |local| {
                        local.caught_up(group, last, page.position())
                    })
                    .await;
            });
        }
    }

    /// The store's position of a group after the bus came back: behind it, a hole to repair.
    fn caught_up(&self, group: GroupId, asked_at: Option<Position>, now: Position) {
        let mut streams = self.streams.borrow_mut();
        let Some(stream) = streams.get_mut(&group) else {
            return;
        };
        // Messages that arrived meanwhile went through `sequence`: only a stream still where it
        // was is behind.
        if stream.held.is_some() || stream.last != asked_at {
            return;
        }
        let since = match &stream.last {
            Some(last) if last.epoch == now.epoch => last.offset,
            Some(_) => 0,
            None => return,
        };
        if now.offset <= since {
            return;
        }
        self.hub().history_counters.holes.fetch_add(1, Relaxed);
        stream.held = Some(Vec::new());
        drop(streams);
        self.repair(group, now.epoch, since, now.offset + 1);
    }

    /// Asks the store for the offsets after `since` and before `until` of `epoch`, and hands
    /// the answer back to this worker ([`LocalGroups::repaired`]).
    fn repair(&self, group: GroupId, epoch: Epoch, since: u64, until: u64) {
        let hub = self.hub().clone();
        let worker = self.worker();
        tokio::task::spawn_local(async move {
            let page = match hub.history_policy(group.as_str()) {
                Some(policy) => {
                    let name = GroupName::from_group_id(&group);
                    let query = HistoryQuery {
                        since: Some(since),
                        limit: (until - since - 1) as usize,
                        reverse: false,
                    };
                    hub.history(&name, policy, query).await
                }
                None => Err(HistoryError::NotSupported("history")),
            };
            hub.router()
                .run_on(worker, move |local| {
                    local.repaired(group, epoch, since, until, page)
                })
                .await;
        });
    }

    /// The store's answer for a hole: what it had is delivered, then what was held.
    fn repaired(
        &self,
        group: GroupId,
        epoch: Epoch,
        since: u64,
        until: u64,
        page: Result<HistoryPage, HistoryError>,
    ) {
        let counters = &self.hub().history_counters;
        let held = {
            let mut streams = self.streams.borrow_mut();
            let Some(stream) = streams.get_mut(&group) else {
                return; // every positioned member left meanwhile
            };
            stream.last = Some(Position {
                offset: until - 1,
                epoch: epoch.clone(),
            });
            stream.held.take().unwrap_or_default()
        };
        let fill: Vec<(u64, Text)> = match page {
            Ok(page) if page.epoch == epoch => page
                .messages
                .into_iter()
                .filter(|(offset, _)| *offset > since && *offset < until)
                .collect(),
            Ok(_) => Vec::new(),
            Err(e) => {
                tracing::warn!(group = group.as_str(), cause = %e, "cannot repair a hole in a history group");
                Vec::new()
            }
        };
        let missing = (until - since - 1).saturating_sub(fill.len() as u64);
        counters.unrepaired.fetch_add(missing, Relaxed);
        for (offset, text) in fill {
            let position = Position {
                offset,
                epoch: epoch.clone(),
            };
            self.push_positioned(&group, &position, &text);
        }
        for (position, text) in held {
            self.sequence(group.clone(), position, text);
        }
    }

    /// Queues a positioned message to the group's positioned members here (a recovering one
    /// holds it; one that recovered past it skips it).
    pub(crate) fn push_positioned(&self, group: &GroupId, position: &Position, text: &Text) {
        let topics = self.topics_ref();
        let Some(members) = topics.get(group) else {
            return;
        };
        let json = Text::from(positioned_message(group.as_str(), position, text.as_str()));
        // Every member positioned (the usual case): no lookup per member.
        let all = self.positioned_members(group) >= members.len();
        let hold_max = self.hold_max;
        self.push_all(
            members.values().filter(|c| {
                (all || c.is_positioned(group))
                    && crate::history::recovery::takes_live(c, group, position, text, hold_max)
            }),
            json,
        );
    }
}
