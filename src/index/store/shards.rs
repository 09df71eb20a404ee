//! [`ShardedTable`]: a hash table of `u32` ids split into shards of staggered sizes, so that
//! its memory per item does not jump with each doubling and no single growth rehashes more
//! than a small share of the items.
//!
//! A `hashbrown` table doubles its buckets when it is 7/8 full, so its bytes per item swing
//! between 1.14 and 2.29 buckets' worth depending on where the item count falls, and the
//! doubling rehashes every item in one call (tens of milliseconds at millions of words, on
//! the reactor thread). Splitting the items evenly over shards would not help: equal shards
//! double together. Here shard `i` of [`SHARDS`] receives a share of the hashes proportional
//! to `2^(i / SHARDS)`, so the shards reach their doubling points at counts spread evenly
//! in log scale: at any item count, their fill levels are spread over the whole range, the
//! expected buckets per item are `(8/7) / ln 2 ≈ 1.65` whatever the count (5 bytes each: a
//! `u32` and a control byte), and one growth rehashes at most the largest shard, about
//! `2 / SHARDS` of the items.
//!
//! The shard is chosen from hash bits 24–55, which `hashbrown` uses neither for the bucket
//! index (the low bits, up to 16M buckets a shard) nor for the control tag (the top 7 bits),
//! so the items of one shard stay spread over its buckets and tags.

/// Number of shards.
const SHARDS: usize = 64;

/// A hash table of `u32` ids (each hashed by the caller, like `hashbrown::HashTable`), in
/// shards of staggered sizes. See the module docs.
pub(super) struct ShardedTable {
    shards: Vec<hashbrown::HashTable<u32>>,
    /// `bounds[i]`: the first 32-bit shard key of shard `i + 1` (ascending).
    bounds: [u32; SHARDS - 1],
}

/// The 32-bit key that picks a hash's shard (see the module docs for the bits).
#[inline]
fn shard_key(hash: u64) -> u32 {
    (hash >> 24) as u32
}

impl ShardedTable {
    pub(super) fn new() -> Self {
        // Cumulative shares of 2^(i / SHARDS), scaled to the 32-bit key space.
        let weights: Vec<f64> = (0..SHARDS)
            .map(|i| (i as f64 / SHARDS as f64).exp2())
            .collect();
        let total: f64 = weights.iter().sum();
        let mut bounds = [0u32; SHARDS - 1];
        let mut acc = 0.0;
        for (i, w) in weights[..SHARDS - 1].iter().enumerate() {
            acc += w;
            bounds[i] = (acc / total * 4_294_967_296.0) as u32;
        }
        ShardedTable {
            shards: (0..SHARDS).map(|_| hashbrown::HashTable::new()).collect(),
            bounds,
        }
    }

    #[inline]
    fn shard(&self, hash: u64) -> usize {
        let key = shard_key(hash);
        self.bounds.partition_point(|&b| b <= key)
    }

    /// The id hashed `hash` for which `eq` holds, if any.
    #[inline]
    pub(super) fn find(&self, hash: u64, eq: impl FnMut(&u32) -> bool) -> Option<u32> {
        self.shards[self.shard(hash)].find(hash, eq).copied()
    }

    /// Inserts `id` hashed `hash` (not present yet); `rehash(id)` gives the hash of an id
    /// already present, for when its shard grows.
    #[inline]
    pub(super) fn insert_unique(&mut self, hash: u64, id: u32, rehash: impl Fn(&u32) -> u64) {
        let s = self.shard(hash);
        self.shards[s].insert_unique(hash, id, rehash);
    }

    /// Removes the id hashed `hash` for which `eq` holds; false if there is none.
    pub(super) fn remove(&mut self, hash: u64, eq: impl FnMut(&u32) -> bool) -> bool {
        let s = self.shard(hash);
        match self.shards[s].find_entry(hash, eq) {
            Ok(entry) => {
                entry.remove();
                true
            }
            Err(_) => false,
        }
    }

    /// Gives every shard's memory back (all ids are gone).
    pub(super) fn clear(&mut self) {
        for s in &mut self.shards {
            *s = hashbrown::HashTable::new();
        }
    }

    /// Heap bytes held: each shard's buckets (a `u32` and a control byte each).
    pub(super) fn heap_bytes(&self) -> usize {
        self.shards.iter().map(|s| buckets(s.capacity()) * 5).sum()
    }

    /// The most ids one shard holds (what its next growth rehashes), for tests.
    #[cfg(test)]
    fn largest_shard(&self) -> usize {
        self.shards.iter().map(|s| s.len()).max().unwrap_or(0)
    }
}

/// Buckets of a `hashbrown` table of `capacity` (it fills buckets to 7/8 beyond 8 of them).
fn buckets(capacity: usize) -> usize {
    match capacity {
        0 => 0,
        c if c < 8 => (c + 1).next_power_of_two(),
        c => (c * 8 / 7).next_power_of_two(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::hash::BuildHasher;

    fn hasher() -> hashbrown::DefaultHashBuilder {
        hashbrown::DefaultHashBuilder::default()
    }

    #[test]
    fn finds_what_it_holds_and_nothing_else() {
        let h = hasher();
        let mut t = ShardedTable::new();
        let n = 20_000u32;
        for id in 0..n {
            t.insert_unique(h.hash_one(id), id, |x| h.hash_one(*x));
        }
        for id in 0..n {
            assert_eq!(t.find(h.hash_one(id), |x| *x == id), Some(id));
        }
        assert_eq!(t.find(h.hash_one(n), |x| *x == n), None);
        for id in (0..n).step_by(2) {
            assert!(t.remove(h.hash_one(id), |x| *x == id));
            assert!(!t.remove(h.hash_one(id), |x| *x == id));
        }
        for id in 0..n {
            let found = t.find(h.hash_one(id), |x| *x == id);
            assert_eq!(found, (id % 2 == 1).then_some(id));
        }
    }

    #[test]
    fn bytes_per_item_stay_near_the_mean_and_growth_rehashes_a_small_share() {
        let h = hasher();
        let mut t = ShardedTable::new();
        let mut worst: f64 = 0.0;
        let mut id = 0u32;
        // Past the point where the shards first fill, bytes per item stay within the band
        // the staggering promises, at every count: a single `hashbrown` table swings from
        // 5.7 to 11.4 bytes per item.
        for target in [50_000u32, 70_000, 100_000, 140_000, 200_000, 280_000] {
            while id < target {
                t.insert_unique(h.hash_one(id), id, |x| h.hash_one(*x));
                id += 1;
            }
            let per_item = t.heap_bytes() as f64 / f64::from(id);
            worst = worst.max(per_item);
            assert!(
                (6.0..10.0).contains(&per_item),
                "{per_item} bytes per item at {id}"
            );
            // The largest shard's share: 2^(63/64) of the weights, about 3.1%.
            assert!(
                t.largest_shard() * 25 < id as usize,
                "largest shard at {id}"
            );
        }
        assert!(worst < 10.0);
    }

    #[test]
    fn shard_bounds_ascend_and_cover_the_keys() {
        let t = ShardedTable::new();
        assert!(t.bounds.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(t.shard(0), 0);
        assert_eq!(t.shard(u64::MAX), SHARDS - 1);
        // The last shard's share is about twice the first's.
        let first = f64::from(t.bounds[0]);
        let last = 4_294_967_296.0 - f64::from(t.bounds[SHARDS - 2]);
        assert!((1.9..2.1).contains(&(last / first)), "{}", last / first);
    }
}
