//! [`BlockSet`]: a sorted set of small items in blocks (a two-level B-tree), and the guided
//! search the hash index uses on it.

use std::cmp::Ordering;

/// Largest block of a [`BlockSet`]: big enough that block headers cost little per item, small
/// enough that an insert or remove moves at most 2 KiB (of `u64`s).
const BLOCK_ITEMS: usize = 256;

/// A sorted set of small `Copy` items stored as sorted blocks of at most [`BLOCK_ITEMS`]
/// (a two-level B-tree). About `size_of::<T>()` bytes per item plus a small fraction for block
/// headers, `O(log n)` search, and inserts/removes that move at most one block's items.
/// The order is given by the caller's probe (`item.cmp(target)`), so an item may be ordered by
/// data it points to (the hash index orders file ids by their full hash).
pub(super) struct BlockSet<T> {
    /// Non-empty, sorted, each block entirely before the next.
    blocks: Vec<Vec<T>>,
    /// `blocks[i][0]`, kept contiguous so locating a block touches one cache-friendly array.
    firsts: Vec<T>,
    len: usize,
}

impl<T: Copy> BlockSet<T> {
    /// Heap bytes held (capacities, not lengths).
    pub(super) fn heap_bytes(&self) -> usize {
        let item = std::mem::size_of::<T>();
        self.blocks
            .iter()
            .map(|b| b.capacity() * item)
            .sum::<usize>()
            + self.blocks.capacity() * std::mem::size_of::<Vec<T>>()
            + self.firsts.capacity() * item
    }

    pub(super) fn new() -> Self {
        BlockSet {
            blocks: Vec::new(),
            firsts: Vec::new(),
            len: 0,
        }
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.blocks.capacity()
    }

    pub(super) fn get(&self, (b, i): (usize, usize)) -> T {
        self.blocks[b][i]
    }

    /// Like `binary_search_by`: `Ok(position)` of the item for which `probe` says `Equal`, or
    /// `Err(position)` where it would be inserted. `probe(item)` is `item.cmp(target)`.
    pub(super) fn search(
        &self,
        mut probe: impl FnMut(&T) -> Ordering,
    ) -> Result<(usize, usize), (usize, usize)> {
        if self.blocks.is_empty() {
            return Err((0, 0));
        }
        let b = self
            .firsts
            .partition_point(|f| probe(f) != Ordering::Greater)
            .saturating_sub(1);
        match self.blocks[b].binary_search_by(probe) {
            Ok(i) => Ok((b, i)),
            Err(i) => Err((b, i)),
        }
    }

    /// Like [`Self::search`], for items whose order is roughly predictable: `guess(items)`
    /// estimates where the target falls in a sorted slice (of the block heads, then of the
    /// block), and the search gallops outward from there.
    pub(super) fn search_guided(
        &self,
        mut probe: impl FnMut(&T) -> Ordering,
        guess: impl Fn(&[T]) -> usize,
    ) -> Result<(usize, usize), (usize, usize)> {
        if self.blocks.is_empty() {
            return Err((0, 0));
        }
        let b = partition_near(&self.firsts, guess(&self.firsts), |f| {
            probe(f) != Ordering::Greater
        })
        .saturating_sub(1);
        let block = &self.blocks[b];
        let i = partition_near(block, guess(block), |x| probe(x) == Ordering::Less);
        match block.get(i) {
            Some(x) if probe(x) == Ordering::Equal => Ok((b, i)),
            _ => Err((b, i)),
        }
    }

    pub(super) fn insert_at(&mut self, (mut b, mut i): (usize, usize), item: T) {
        self.len += 1;
        if self.blocks.is_empty() {
            self.blocks.push(vec![item]);
            self.firsts.push(item);
            return;
        }
        if self.blocks[b].len() >= BLOCK_ITEMS {
            if b + 1 == self.blocks.len() && i == BLOCK_ITEMS {
                // Appending past the end: start a new block, so that append-mostly sets (ids
                // handed out in increasing order) end up with full blocks rather than half ones.
                self.blocks.push(vec![item]);
                self.firsts.push(item);
                return;
            }
            let tail = self.blocks[b].split_off(BLOCK_ITEMS / 2);
            // The left half keeps the full block's allocation: give the unused half back
            // (a shrinking `realloc` stays in place), or every split block would carry
            // `BLOCK_ITEMS / 2` empty slots.
            self.blocks[b].shrink_to(BLOCK_ITEMS / 2 + BLOCK_ITEMS / 16);
            crate::index::worktrace::time("blockset split", || {
                self.firsts.insert(b + 1, tail[0]);
                self.blocks.insert(b + 1, tail);
            });
            if i > BLOCK_ITEMS / 2 {
                b += 1;
                i -= BLOCK_ITEMS / 2;
            }
        }
        let block = &mut self.blocks[b];
        if block.len() == block.capacity() {
            // Grow by an eighth rather than double: the hash index and the word order are
            // ~8 bytes per file each, and doubling (or halving) would leave a quarter (a
            // tenth) of them unused. A block is at most 2 KiB, so the extra reallocations
            // copy little.
            let more = (block.len() / 8).max(4).min(BLOCK_ITEMS - block.len());
            block.reserve_exact(more);
        }
        block.insert(i, item);
        if i == 0 {
            self.firsts[b] = item;
        }
    }

    pub(super) fn remove_at(&mut self, (b, i): (usize, usize)) {
        self.len -= 1;
        let block = &mut self.blocks[b];
        block.remove(i);
        if block.is_empty() {
            self.blocks.remove(b);
            self.firsts.remove(b);
            if self.blocks.is_empty() {
                *self = Self::new();
            }
            return;
        }
        if i == 0 {
            self.firsts[b] = block[0];
        }
        if block.len() < BLOCK_ITEMS / 4 {
            // Merge small neighbours so a set that shrank does not keep many sparse blocks.
            let pair = if b + 1 < self.blocks.len() {
                Some(b)
            } else {
                b.checked_sub(1)
            };
            if let Some(l) = pair {
                if self.blocks[l].len() + self.blocks[l + 1].len() <= BLOCK_ITEMS / 2 {
                    let right = self.blocks.remove(l + 1);
                    self.firsts.remove(l + 1);
                    self.blocks[l].extend_from_slice(&right);
                }
            }
        }
        let last = self.blocks.len() - 1;
        let block = &mut self.blocks[b.min(last)];
        if block.capacity() >= 16 && block.len() * 4 <= block.capacity() {
            block.shrink_to(block.len() * 2);
        }
    }

    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.blocks.iter().flatten().copied()
    }

    /// The position of `item` among the `limit` items from position `(b, i)` on, if there.
    pub(super) fn scan_for(
        &self,
        (mut b, mut i): (usize, usize),
        item: T,
        limit: usize,
    ) -> Option<(usize, usize)>
    where
        T: PartialEq,
    {
        let mut left = limit;
        while left > 0 {
            let block = self.blocks.get(b)?;
            for (j, x) in block.iter().enumerate().skip(i).take(left) {
                if *x == item {
                    return Some((b, j));
                }
            }
            left = left.saturating_sub(block.len().saturating_sub(i));
            (b, i) = (b + 1, 0);
        }
        None
    }

    /// Items from position `(b, i)` on (`i` may be one past the end of block `b`).
    pub(super) fn iter_from(&self, (b, i): (usize, usize)) -> impl Iterator<Item = T> + '_ {
        let first = self
            .blocks
            .get(b)
            .map_or(&[][..], |blk| &blk[i.min(blk.len())..]);
        first
            .iter()
            .chain(self.blocks.iter().skip(b + 1).flatten())
            .copied()
    }
}

/// The partition point of `items` for `is_before` (true for a prefix of the items, false for
/// the rest), found by galloping outward from `guess`: `O(log d)` probes for a guess `d` items
/// off, near each other in memory.
fn partition_near<T>(items: &[T], guess: usize, mut is_before: impl FnMut(&T) -> bool) -> usize {
    let n = items.len();
    let g = guess.min(n);
    if g < n && is_before(&items[g]) {
        // The point is after g: items[lo - 1] is before it.
        let (mut lo, mut step) = (g + 1, 1);
        loop {
            let hi = lo + step;
            if hi >= n || !is_before(&items[hi]) {
                return lo + items[lo..hi.min(n)].partition_point(&mut is_before);
            }
            lo = hi + 1;
            step *= 2;
        }
    }
    // The point is at g or before: items[hi] is not before it (or hi == n).
    let (mut hi, mut step) = (g, 1);
    loop {
        if hi < step {
            return items[..hi].partition_point(&mut is_before);
        }
        let lo = hi - step;
        if is_before(&items[lo]) {
            return lo + 1 + items[lo + 1..hi].partition_point(&mut is_before);
        }
        hi = lo;
        step *= 2;
    }
}

/// Where `p32` falls among `items` (hash index items, sorted, `prefix32 << 32 | id`),
/// assuming the prefixes between the first and last item are evenly spread.
pub(super) fn interpolate(items: &[u64], p32: u32) -> usize {
    let (Some(&first), Some(&last)) = (items.first(), items.last()) else {
        return 0;
    };
    let (lo, hi) = ((first >> 32) as u32, (last >> 32) as u32);
    if p32 <= lo || hi <= lo {
        return 0;
    }
    if p32 >= hi {
        return items.len() - 1;
    }
    let span = u64::from(hi - lo);
    (u64::from(p32 - lo) * (items.len() as u64 - 1) / span) as usize
}

/// Used by the tests only: the hash index orders items through a probe.
#[cfg(test)]
impl<T: Copy + Ord> BlockSet<T> {
    /// Inserts `item`; false if it was there.
    fn insert(&mut self, item: T) -> bool {
        match self.search(|x| x.cmp(&item)) {
            Ok(_) => false,
            Err(at) => {
                self.insert_at(at, item);
                true
            }
        }
    }

    /// Removes `item`; false if it was not there.
    fn remove(&mut self, item: T) -> bool {
        match self.search(|x| x.cmp(&item)) {
            Ok(at) => {
                self.remove_at(at);
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn block_set_stays_sorted_through_splits_and_merges() {
        let mut set = BlockSet::new();
        let mut model = BTreeSet::new();
        let mut x = 12345u32;
        for round in 0..20_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let v = (x >> 8) % 3000;
            if round % 3 == 2 {
                assert_eq!(set.remove(v), model.remove(&v));
            } else {
                assert_eq!(set.insert(v), model.insert(v));
            }
        }
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            model.iter().copied().collect::<Vec<_>>()
        );
        assert_eq!(set.len(), model.len());
        for b in &set.blocks {
            assert!(!b.is_empty() && b.len() <= BLOCK_ITEMS);
        }
        for v in model {
            assert!(set.remove(v));
        }
        assert!(set.is_empty() && set.blocks.capacity() == 0);
    }
}
