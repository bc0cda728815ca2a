//! Which groups this gateway wants from the bus, as every carrier needs it: the changes to send
//! while connected, everything after a reconnect.
//!
//! [`Subscriptions`] is plain data kept by the gateway beside its group table, under the same
//! lock, so that the order of first joins and last leaves is the order of the changes a carrier
//! sees; a carrier takes the changes (a snapshot) and does its I/O with no lock held.

use std::collections::HashMap;

use protocol::GroupId;

/// Subscription changes recorded since a carrier last caught up.
#[derive(Debug, Default)]
pub struct Subscriptions {
    /// A connection is up and has taken every wanted group: only then are changes worth
    /// recording (while it is down the next full sync covers them, and a backlog would only
    /// grow).
    in_sync: bool,
    /// Group -> wanted (true = subscribe), changed since the carrier last caught up.
    pending: HashMap<GroupId, bool>,
}

/// What a carrier sends: subscribe these, unsubscribe those (in that order).
#[derive(Debug, Default, PartialEq, Eq)]
pub struct SubscriptionChanges {
    pub subscribe: Vec<GroupId>,
    pub unsubscribe: Vec<GroupId>,
}

impl SubscriptionChanges {
    pub fn is_empty(&self) -> bool {
        self.subscribe.is_empty() && self.unsubscribe.is_empty()
    }
}

/// From `(group, wanted)` pairs: the wanted ones to subscribe, the others to unsubscribe.
impl FromIterator<(GroupId, bool)> for SubscriptionChanges {
    fn from_iter<I: IntoIterator<Item = (GroupId, bool)>>(pairs: I) -> Self {
        let mut changes = SubscriptionChanges::default();
        for (group, wanted) in pairs {
            if wanted {
                changes.subscribe.push(group);
            } else {
                changes.unsubscribe.push(group);
            }
        }
        changes
    }
}

impl Subscriptions {
    /// `group` got its first local member (`wanted`) or lost its last one.
    pub fn record(&mut self, group: &GroupId, wanted: bool) {
        if self.in_sync {
            self.pending.insert(group.clone(), wanted);
        }
    }

    /// Whether there are changes to take.
    pub fn has_changes(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The changes since the last call (or since [`Subscriptions::start_full_sync`]).
    pub fn take_changes(&mut self) -> SubscriptionChanges {
        self.pending.drain().collect()
    }

    /// A fresh connection is about to take every wanted group (a snapshot the caller makes
    /// next). Changes from here on are recorded, so that none made while the snapshot is taken
    /// is lost; a group both in the snapshot and among them is sent twice, which subscribing
    /// tolerates.
    pub fn start_full_sync(&mut self) {
        self.in_sync = true;
        self.pending.clear();
    }

    /// The connection was lost: nothing is recorded until the next full sync.
    pub fn lost(&mut self) {
        self.in_sync = false;
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> GroupId {
        GroupId::new(name, 64).expect("valid group id")
    }

    #[test]
    fn nothing_is_recorded_while_out_of_sync() {
        let mut subs = Subscriptions::default();
        subs.record(&id("a"), true);
        assert!(subs.take_changes().is_empty(), "a full sync covers it");
        subs.start_full_sync();
        subs.record(&id("b"), true);
        subs.record(&id("c"), true);
        subs.record(&id("c"), false);
        assert!(subs.has_changes());
        let mut changes = subs.take_changes();
        changes.subscribe.sort_by(|x, y| x.as_str().cmp(y.as_str()));
        assert_eq!(changes.subscribe, vec![id("b")]);
        assert_eq!(
            changes.unsubscribe,
            vec![id("c")],
            "the last change of a group wins"
        );
        assert!(!subs.has_changes() && subs.take_changes().is_empty());
    }

    #[test]
    fn a_lost_connection_forgets_and_a_full_sync_restarts() {
        let mut subs = Subscriptions::default();
        subs.start_full_sync();
        subs.record(&id("a"), true);
        subs.lost();
        subs.record(&id("b"), true);
        subs.start_full_sync();
        assert!(subs.take_changes().is_empty(), "the snapshot covers both");
        subs.record(&id("a"), false);
        assert_eq!(subs.take_changes().unsubscribe, vec![id("a")]);
    }
}
