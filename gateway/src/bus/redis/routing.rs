//! Where a group lives: its channel name, its shard (jump consistent hash over independent
//! servers) or its cluster hash slot, and the per-shard interest that the carrier's dispatcher
//! keeps for each connection.

use std::collections::{HashMap, HashSet};

use protocol::GroupId;

use crate::bus::SubscriptionChanges;

/// Hash slots of a Redis Cluster.
pub const SLOTS: usize = 16384;

/// The Redis channel of `group`: `{prefix}:{group}`. The prefix is `[A-Za-z0-9_-]{1,64}`
/// (config validation), so the first `:` ends it and the mapping is injective.
pub fn channel(prefix: &str, group: &str) -> Vec<u8> {
    let mut channel = Vec::with_capacity(prefix.len() + 1 + group.len());
    channel.extend_from_slice(prefix.as_bytes());
    channel.push(b':');
    channel.extend_from_slice(group.as_bytes());
    channel
}

/// The group of a channel of this deployment (`None`: not one of ours).
pub fn group_of<'a>(prefix: &str, channel: &'a [u8]) -> Option<&'a [u8]> {
    channel
        .strip_prefix(prefix.as_bytes())
        .and_then(|rest| rest.strip_prefix(b":"))
}

/// 64-bit FNV-1a: stable across builds, platforms and Rust versions (unlike std's hasher), so
/// every gateway, of any version, puts a group on the same shard.
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash
}

/// Jump consistent hash (Lamping and Veach, 2014): the bucket in `0..buckets` of `key`. Going
/// from n to n+1 buckets moves only 1/(n+1) of the keys, all to the new bucket.
pub fn jump(mut key: u64, buckets: usize) -> usize {
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < buckets as i64 {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b.max(0) as usize
}

/// The shard of `group` among `shards` independent servers.
pub fn shard_of(group: &str, shards: usize) -> usize {
    jump(fnv1a64(group.as_bytes()), shards)
}

/// The cluster hash slot of a channel, as the cluster specification defines it: CRC16
/// (XMODEM) of the key, or of what is between its first `{` and the first `}` after it when
/// that is not empty. (redis-rs computes the same but does not expose the number.)
pub fn slot_of(channel: &[u8]) -> u16 {
    let tag = channel.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &channel[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16::State::<crc16::XMODEM>::calculate(tag.unwrap_or(channel)) % SLOTS as u16
}

/// The groups one connection (a shard, a cluster master) should be subscribed to, and the
/// changes its connection has not sent yet. The dispatcher records every change of the node
/// here; the connection's task takes them. After a reconnect the task takes the whole set, so
/// each connection resynchronizes on its own, whatever the others do.
#[derive(Debug, Default)]
pub struct ShardInterest {
    wanted: HashSet<GroupId>,
    /// Changes since the connection last caught up; kept only while it is in sync.
    pending: HashMap<GroupId, bool>,
    in_sync: bool,
}

impl ShardInterest {
    pub fn record(&mut self, group: GroupId, wanted: bool) {
        let changed = if wanted {
            self.wanted.insert(group.clone())
        } else {
            self.wanted.remove(&group)
        };
        if changed && self.in_sync {
            self.pending.insert(group, wanted);
        }
    }

    /// A fresh connection: every wanted group; changes are recorded from here on.
    pub fn full_sync(&mut self) -> Vec<GroupId> {
        self.in_sync = true;
        self.pending.clear();
        self.wanted.iter().cloned().collect()
    }

    pub fn take_changes(&mut self) -> SubscriptionChanges {
        self.pending.drain().collect()
    }

    pub fn has_changes(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The connection is gone: the next one takes everything.
    pub fn lost(&mut self) {
        self.in_sync = false;
        self.pending.clear();
    }

    pub fn wanted(&self) -> &HashSet<GroupId> {
        &self.wanted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str) -> GroupId {
        GroupId::new(name, 256).expect("valid group id")
    }

    #[test]
    fn fnv_matches_the_reference_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(fnv1a64(b"foobar"), 0x8594_4171_f739_67e8);
    }

    #[test]
    fn jump_hash_is_stable_balanced_and_moves_little() {
        // Values of the paper's reference implementation, fixed forever: a change here would
        // split a deployment of mixed versions.
        assert_eq!(jump(0, 1), 0);
        assert_eq!(jump(1, 10), 6);
        assert_eq!(jump(0xdead_beef, 100), 87);
        assert_eq!(jump(0x0123_4567_89ab_cdef, 1000), 194);
        assert_eq!(shard_of("room", 3), shard_of("room", 3));

        let groups: Vec<String> = (0..30_000).map(|i| format!("group-{i}")).collect();
        let mut counts = [0usize; 5];
        for g in &groups {
            counts[shard_of(g, 5)] += 1;
        }
        for count in counts {
            assert!((5_400..6_600).contains(&count), "unbalanced: {counts:?}");
        }
        let moved = groups
            .iter()
            .filter(|g| shard_of(g, 5) != shard_of(g, 6))
            .collect::<Vec<_>>();
        assert!(
            moved.iter().all(|g| shard_of(g, 6) == 5),
            "only to the new shard"
        );
        let share = moved.len() as f64 / groups.len() as f64;
        assert!((0.14..0.19).contains(&share), "moved {share}");
    }

    #[test]
    fn channels_keep_any_group_id_apart() {
        assert_eq!(channel("gp", "a.b"), b"gp:a.b");
        assert_eq!(channel("gp", "{x} *"), b"gp:{x} *");
        assert_eq!(group_of("gp", b"gp:a:b"), Some(&b"a:b"[..]));
        assert_eq!(group_of("gp", b"gpx:a"), None);
        assert_eq!(group_of("gp", b"other:a"), None);
        assert_eq!(group_of("g", b"gp:a"), None, "the prefix ends at the colon");
    }

    #[test]
    fn slots_follow_the_cluster_spec() {
        // Values from the cluster specification and `CLUSTER KEYSLOT`.
        assert_eq!(slot_of(b"123456789"), 0x31c3, "CRC16 of the check string");
        assert_eq!(slot_of(b"foo"), 12182);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
        assert_eq!(
            slot_of(b"gp:{x}"),
            slot_of(b"x"),
            "the group {{x}} is a hash tag"
        );
        assert_eq!(slot_of(b"foo{}{bar}"), slot_of(b"foo{}{bar}"));
        assert_ne!(
            slot_of(b"foo{}{bar}"),
            slot_of(b"bar"),
            "an empty tag hashes the whole key"
        );
        assert!(usize::from(slot_of("gp:é 🎉".as_bytes())) < SLOTS);
    }

    #[test]
    fn a_shard_resyncs_alone_and_keeps_only_the_last_change() {
        let mut shard = ShardInterest::default();
        shard.record(id("a"), true);
        assert!(!shard.has_changes(), "not in sync: the full sync covers it");
        let mut full = shard.full_sync();
        full.sort();
        assert_eq!(full, vec![id("a")]);
        shard.record(id("b"), true);
        shard.record(id("c"), true);
        shard.record(id("c"), false);
        shard.record(id("a"), true); // already wanted: no change
        let changes = shard.take_changes();
        assert_eq!(changes.subscribe, vec![id("b")]);
        assert_eq!(changes.unsubscribe, vec![id("c")]);
        shard.lost();
        shard.record(id("d"), true);
        assert!(!shard.has_changes());
        assert_eq!(shard.wanted().len(), 3);
    }

    /// How the dispatcher splits one stream of changes: each group to its shard, and a
    /// reconnecting shard gets exactly its own groups.
    #[test]
    fn changes_split_by_shard() {
        let mut shards: Vec<ShardInterest> = (0..3).map(|_| ShardInterest::default()).collect();
        for s in &mut shards {
            s.full_sync();
        }
        let groups: Vec<GroupId> = (0..300).map(|i| id(&format!("g{i}"))).collect();
        for g in &groups {
            shards[shard_of(g.as_str(), 3)].record(g.clone(), true);
        }
        let mut total = 0;
        for (i, shard) in shards.iter_mut().enumerate() {
            let changes = shard.take_changes();
            assert!(changes
                .subscribe
                .iter()
                .all(|g| shard_of(g.as_str(), 3) == i));
            total += changes.subscribe.len();
            shard.lost();
            assert_eq!(shard.full_sync().len(), changes.subscribe.len());
        }
        assert_eq!(total, 300);
    }
}
