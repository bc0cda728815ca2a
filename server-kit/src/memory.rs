//! Giving memory back after a burst: a map that once held a million groups keeps its table after
//! they are gone (`HashMap` never shrinks by itself), about 40-100 bytes a slot.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, Hash};

/// Maps at most this large are left alone: shrinking them saves nothing worth the rehash.
const MIN_CAPACITY: usize = 1024;

/// Shrinks `map` to twice its length once it uses less than a quarter of its capacity. Called
/// after removals; amortised O(1), since the map must lose three quarters of its slots between
/// two shrinks, and the room left means growing again does not rehash at once.
pub fn shrink_if_sparse<K: Eq + Hash, V, S: BuildHasher>(map: &mut HashMap<K, V, S>) {
    if let Some(capacity) = shrunk_capacity(map.len(), map.capacity()) {
        map.shrink_to(capacity);
    }
}

/// [`shrink_if_sparse`] for a set.
pub fn shrink_set_if_sparse<T: Eq + Hash, S: BuildHasher>(set: &mut HashSet<T, S>) {
    if let Some(capacity) = shrunk_capacity(set.len(), set.capacity()) {
        set.shrink_to(capacity);
    }
}

fn shrunk_capacity(len: usize, capacity: usize) -> Option<usize> {
    (capacity > MIN_CAPACITY && len < capacity / 4).then(|| (len * 2).max(MIN_CAPACITY / 2))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_that_emptied_gives_its_table_back() {
        let mut map: HashMap<u32, [u8; 64]> = (0..100_000).map(|i| (i, [0; 64])).collect();
        let full = map.capacity();
        for i in 0..100_000 {
            map.remove(&i);
            shrink_if_sparse(&mut map);
        }
        assert!(full >= 100_000);
        assert!(map.capacity() <= MIN_CAPACITY, "{}", map.capacity());
        // Small maps and busy ones are left alone.
        let mut small: HashMap<u32, u32> = (0..100)
            .collect::<Vec<_>>()
            .into_iter()
            .map(|i| (i, i))
            .collect();
        let before = small.capacity();
        small.clear();
        shrink_if_sparse(&mut small);
        assert_eq!(small.capacity(), before);
    }
}
