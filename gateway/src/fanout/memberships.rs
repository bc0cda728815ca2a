//! The groups one connection is in, and how ([`Membership`]).
//!
//! Most connections are in a few groups: up to [`FEW`] are kept in a vector sized exactly
//! (a connection in one group holds a 24-byte allocation, not a hash table's 160 bytes, which
//! counts at a million idle connections); past that, a hash map (up to
//! `--max-groups-per-connection`).

use std::collections::HashMap;

use protocol::GroupId;

/// Groups kept in a vector, searched in order.
const FEW: usize = 8;

/// How a connection is in one of its groups.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Membership {
    /// It receives the group's join and leave events.
    pub(crate) presence: bool,
    /// It receives the group's messages with their position (a group with history).
    pub(crate) positioned: bool,
}

/// See the module docs.
#[derive(Debug)]
pub(crate) enum Memberships {
    Few(Vec<(GroupId, Membership)>),
    Many(HashMap<GroupId, Membership>),
}

impl Default for Memberships {
    fn default() -> Memberships {
        Memberships::Few(Vec::new())
    }
}

impl Memberships {
    pub(crate) fn get(&self, group: &str) -> Option<Membership> {
        match self {
            Memberships::Few(few) => few
                .iter()
                .find(|(g, _)| g.as_str() == group)
                .map(|(_, m)| *m),
            Memberships::Many(many) => many.get(group).copied(),
        }
    }

    /// Sets how the connection is in `group` (joining it if it was not).
    pub(crate) fn insert(&mut self, group: &GroupId, membership: Membership) {
        match self {
            Memberships::Few(few) => {
                if let Some((_, m)) = few.iter_mut().find(|(g, _)| g == group) {
                    *m = membership;
                } else if few.len() < FEW {
                    few.reserve_exact(1);
                    few.push((group.clone(), membership));
                } else {
                    let mut many: HashMap<GroupId, Membership> = few.drain(..).collect();
                    many.insert(group.clone(), membership);
                    *self = Memberships::Many(many);
                }
            }
            Memberships::Many(many) => {
                many.insert(group.clone(), membership);
            }
        }
    }

    /// Leaves `group`: the group and how the connection was in it, if it was.
    pub(crate) fn remove(&mut self, group: &str) -> Option<(GroupId, Membership)> {
        match self {
            Memberships::Few(few) => {
                let at = few.iter().position(|(g, _)| g.as_str() == group)?;
                let left = few.swap_remove(at);
                if few.is_empty() {
                    *few = Vec::new();
                }
                Some(left)
            }
            Memberships::Many(many) => many.remove_entry(group),
        }
    }

    pub(crate) fn len(&self) -> usize {
        match self {
            Memberships::Few(few) => few.len(),
            Memberships::Many(many) => many.len(),
        }
    }

    pub(crate) fn groups(&self) -> Vec<GroupId> {
        match self {
            Memberships::Few(few) => few.iter().map(|(g, _)| g.clone()).collect(),
            Memberships::Many(many) => many.keys().cloned().collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn group(name: &str) -> GroupId {
        GroupId::new(name, 64).expect("a valid group id")
    }

    #[test]
    fn few_then_many_keep_every_membership() {
        let mut groups = Memberships::default();
        let positioned = Membership {
            presence: false,
            positioned: true,
        };
        for i in 0..20 {
            groups.insert(&group(&format!("g{i}")), Membership::default());
            assert_eq!(groups.len(), i + 1);
            assert_eq!(matches!(groups, Memberships::Few(_)), i < FEW);
        }
        groups.insert(&group("g3"), positioned);
        assert_eq!(groups.len(), 20, "joining again changes how, not how many");
        assert_eq!(groups.get("g3"), Some(positioned));
        assert_eq!(groups.get("g4"), Some(Membership::default()));
        assert_eq!(groups.get("nope"), None);
        assert_eq!(
            groups.remove("g3").map(|(g, m)| (g.to_string(), m)),
            Some(("g3".into(), positioned))
        );
        assert_eq!(groups.remove("g3"), None);
        let mut names: Vec<String> = groups.groups().iter().map(|g| g.to_string()).collect();
        names.sort();
        assert_eq!(names.len(), 19);
        assert!(!names.contains(&"g3".to_owned()));
    }

    #[test]
    fn a_few_are_kept_exactly_and_released_when_gone() {
        let mut groups = Memberships::default();
        groups.insert(&group("a"), Membership::default());
        groups.insert(&group("b"), Membership::default());
        match &groups {
            Memberships::Few(few) => assert_eq!(few.capacity(), 2),
            Memberships::Many(_) => panic!("two groups are few"),
        }
        assert_eq!(groups.get("a"), Some(Membership::default()));
        assert!(groups.remove("a").is_some());
        assert!(groups.remove("b").is_some());
        match &groups {
            Memberships::Few(few) => assert_eq!(few.capacity(), 0),
            Memberships::Many(_) => panic!("none are few"),
        }
    }
}
