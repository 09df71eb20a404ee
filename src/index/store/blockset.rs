//! [`BlockSet`]: a sorted set of small items in blocks, the blocks in groups (a three-level
//! B-tree), and the guided search the hash index uses on it.

use std::cmp::Ordering;

/// Largest block of a [`BlockSet`]: big enough that block headers cost little per item, small
/// enough that an insert or remove moves at most 2 KiB (of `u64`s). (A small one in tests, so
/// that the store's property tests split and merge blocks and groups.)
const BLOCK_ITEMS: usize = if cfg!(test) { 8 } else { 256 };

/// Largest group of blocks: an insert or remove of a block moves at most this many block
/// headers (24 bytes) and first items (12 KiB and 4 KiB at most), and the list of groups
/// stays short (about 80 groups at ten million items). (A small one in tests, as above.)
const GROUP_BLOCKS: usize = if cfg!(test) { 4 } else { 512 };

/// A block's address packs its group and its place in the group: `group << GROUP_SHIFT |
/// block`.
const GROUP_SHIFT: u32 = 16;
const _: () = assert!(GROUP_BLOCKS < 1 << GROUP_SHIFT);

/// A position in a [`BlockSet`]: a block's address (see [`GROUP_SHIFT`]) and an item's index
/// in the block (up to its length: where an item would be inserted).
pub(super) type Pos = (usize, usize);

#[inline]
fn addr(g: usize, j: usize) -> usize {
    (g << GROUP_SHIFT) | j
}

#[inline]
fn unaddr(b: usize) -> (usize, usize) {
    (b >> GROUP_SHIFT, b & ((1 << GROUP_SHIFT) - 1))
}

/// A sorted set of small `Copy` items stored as sorted blocks of at most [`BLOCK_ITEMS`],
/// the blocks in groups of at most [`GROUP_BLOCKS`] (a three-level B-tree). About
/// `size_of::<T>()` bytes per item plus a small fraction for block headers, `O(log n)`
/// search, and inserts/removes that move at most one block's items and one group's block
/// headers: no single step shifts or copies a list of all the blocks (at ten million items
/// that list was 1.7 MB, and shifting or growing it took milliseconds in cold memory).
/// The order is given by the caller's probe (`item.cmp(target)`), so an item may be ordered by
/// data it points to (the hash index orders file ids by their full hash).
pub(super) struct BlockSet<T> {
    /// Non-empty, each entirely before the next.
    groups: Vec<Group<T>>,
    /// `groups[g].firsts[0]`, kept contiguous so locating a group touches one small array.
    heads: Vec<T>,
    len: usize,
}

/// Consecutive blocks of a [`BlockSet`].
struct Group<T> {
    /// Non-empty, sorted, each block entirely before the next.
    blocks: Vec<Vec<T>>,
    /// `blocks[j][0]`, kept contiguous so locating a block touches one cache-friendly array.
    firsts: Vec<T>,
}

impl<T: Copy> Group<T> {
    fn heap_bytes(&self) -> usize {
        let item = std::mem::size_of::<T>();
        self.blocks
            .iter()
            .map(|b| b.capacity() * item)
            .sum::<usize>()
            + self.blocks.capacity() * std::mem::size_of::<Vec<T>>()
            + self.firsts.capacity() * item
    }

    /// Gives back spare room once the group is a quarter full or less.
    fn trim(&mut self) {
        if self.blocks.capacity() >= 16 && self.blocks.len() * 4 <= self.blocks.capacity() {
            self.blocks.shrink_to(self.blocks.len() * 2);
            self.firsts.shrink_to(self.blocks.len() * 2);
        }
    }
}

impl<T: Copy> BlockSet<T> {
    /// Heap bytes held (capacities, not lengths).
    pub(super) fn heap_bytes(&self) -> usize {
        self.groups.iter().map(Group::heap_bytes).sum::<usize>()
            + self.groups.capacity() * std::mem::size_of::<Group<T>>()
            + self.heads.capacity() * std::mem::size_of::<T>()
    }

    pub(super) fn new() -> Self {
        BlockSet {
            groups: Vec::new(),
            heads: Vec::new(),
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
        self.groups.capacity()
    }

    pub(super) fn get(&self, (b, i): Pos) -> T {
        let (g, j) = unaddr(b);
        self.groups[g].blocks[j][i]
    }

    /// Like `binary_search_by`: `Ok(position)` of the item for which `probe` says `Equal`, or
    /// `Err(position)` where it would be inserted. `probe(item)` is `item.cmp(target)`.
    pub(super) fn search(&self, mut probe: impl FnMut(&T) -> Ordering) -> Result<Pos, Pos> {
        if self.groups.is_empty() {
            return Err((0, 0));
        }
        let g = self
            .heads
            .partition_point(|f| probe(f) != Ordering::Greater)
            .saturating_sub(1);
        let grp = &self.groups[g];
        let j = grp
            .firsts
            .partition_point(|f| probe(f) != Ordering::Greater)
            .saturating_sub(1);
        match grp.blocks[j].binary_search_by(probe) {
            Ok(i) => Ok((addr(g, j), i)),
            Err(i) => Err((addr(g, j), i)),
        }
    }

    /// Like [`Self::search`], for items whose order is roughly predictable: `guess(items)`
    /// estimates where the target falls in a sorted slice (of the group heads, then of the
    /// group's block heads, then of the block), and the search gallops outward from there.
    pub(super) fn search_guided(
        &self,
        mut probe: impl FnMut(&T) -> Ordering,
        guess: impl Fn(&[T]) -> usize,
    ) -> Result<Pos, Pos> {
        if self.groups.is_empty() {
            return Err((0, 0));
        }
        let g = partition_near(&self.heads, guess(&self.heads), |f| {
            probe(f) != Ordering::Greater
        })
        .saturating_sub(1);
        let grp = &self.groups[g];
        let j = partition_near(&grp.firsts, guess(&grp.firsts), |f| {
            probe(f) != Ordering::Greater
        })
        .saturating_sub(1);
        let block = &grp.blocks[j];
        let i = partition_near(block, guess(block), |x| probe(x) == Ordering::Less);
        match block.get(i) {
            Some(x) if probe(x) == Ordering::Equal => Ok((addr(g, j), i)),
            _ => Err((addr(g, j), i)),
        }
    }

    pub(super) fn insert_at(&mut self, (b, mut i): Pos, item: T) {
        self.len += 1;
        if self.groups.is_empty() {
            self.groups.push(Group {
                blocks: vec![vec![item]],
                firsts: vec![item],
            });
            self.heads.push(item);
            return;
        }
        let (mut g, mut j) = unaddr(b);
        if self.groups[g].blocks[j].len() >= BLOCK_ITEMS {
            if g + 1 == self.groups.len()
                && j + 1 == self.groups[g].blocks.len()
                && i == BLOCK_ITEMS
            {
                // Appending past the end: start a new block (and a new group after a full
                // one), so that append-mostly sets (ids handed out in increasing order) end
                // up with full blocks and groups rather than half ones.
                self.push_block(vec![item]);
                return;
            }
            (g, j) = self.make_room(g, j);
            let grp = &mut self.groups[g];
            let tail = grp.blocks[j].split_off(BLOCK_ITEMS / 2);
            // The left half keeps the full block's allocation: give the unused half back
            // (a shrinking `realloc` stays in place), or every split block would carry
            // `BLOCK_ITEMS / 2` empty slots.
            grp.blocks[j].shrink_to(BLOCK_ITEMS / 2 + BLOCK_ITEMS / 16);
            crate::index::worktrace::time("blockset split", || {
                grp.firsts.insert(j + 1, tail[0]);
                grp.blocks.insert(j + 1, tail);
            });
            if i > BLOCK_ITEMS / 2 {
                j += 1;
                i -= BLOCK_ITEMS / 2;
            }
        }
        let grp = &mut self.groups[g];
        let block = &mut grp.blocks[j];
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
            grp.firsts[j] = item;
            if j == 0 {
                self.heads[g] = item;
            }
        }
    }

    /// Appends `block` (all of whose items come after every item held) as the last block.
    fn push_block(&mut self, block: Vec<T>) {
        let first = block[0];
        match self.groups.last_mut() {
            Some(grp) if grp.blocks.len() < GROUP_BLOCKS => {
                grp.firsts.push(first);
                grp.blocks.push(block);
            }
            _ => {
                self.groups.push(Group {
                    blocks: vec![block],
                    firsts: vec![first],
                });
                self.heads.push(first);
            }
        }
    }

    /// Makes room for one more block after block `j` of group `g`: splits the group in two
    /// halves if it is full. Returns where block `j` is then.
    fn make_room(&mut self, g: usize, j: usize) -> (usize, usize) {
        if self.groups[g].blocks.len() < GROUP_BLOCKS {
            return (g, j);
        }
        let half = GROUP_BLOCKS / 2;
        crate::index::worktrace::time("blockset group split", || {
            let grp = &mut self.groups[g];
            let right = Group {
                blocks: grp.blocks.split_off(half),
                firsts: grp.firsts.split_off(half),
            };
            self.heads.insert(g + 1, right.firsts[0]);
            self.groups.insert(g + 1, right);
        });
        if j >= half {
            (g + 1, j - half)
        } else {
            (g, j)
        }
    }

    pub(super) fn remove_at(&mut self, (b, i): Pos) {
        self.len -= 1;
        let (g, j) = unaddr(b);
        let grp = &mut self.groups[g];
        let block = &mut grp.blocks[j];
        block.remove(i);
        if block.is_empty() {
            grp.blocks.remove(j);
            grp.firsts.remove(j);
            self.after_group_shrink(g);
            return;
        }
        if i == 0 {
            grp.firsts[j] = block[0];
            if j == 0 {
                self.heads[g] = block[0];
            }
        }
        let mut merged = false;
        if block.len() < BLOCK_ITEMS / 4 {
            // Merge small neighbours (in the group) so a set that shrank does not keep many
            // sparse blocks.
            let pair = if j + 1 < grp.blocks.len() {
                Some(j)
            } else {
                j.checked_sub(1)
            };
            if let Some(l) = pair {
                if grp.blocks[l].len() + grp.blocks[l + 1].len() <= BLOCK_ITEMS / 2 {
                    let right = grp.blocks.remove(l + 1);
                    grp.firsts.remove(l + 1);
                    grp.blocks[l].extend_from_slice(&right);
                    merged = true;
                }
            }
        }
        let last = grp.blocks.len() - 1;
        let block = &mut grp.blocks[j.min(last)];
        if block.capacity() >= 16 && block.len() * 4 <= block.capacity() {
            block.shrink_to(block.len() * 2);
        }
        if merged {
            self.after_group_shrink(g);
        }
    }

    /// Group `g` lost a block: drops it if empty, merges it with a neighbour if both are
    /// small, and trims its spare room.
    fn after_group_shrink(&mut self, g: usize) {
        let grp = &self.groups[g];
        if grp.blocks.is_empty() {
            self.groups.remove(g);
            self.heads.remove(g);
            if self.groups.is_empty() {
                *self = Self::new();
            }
            return;
        }
        self.heads[g] = grp.firsts[0];
        if grp.blocks.len() < GROUP_BLOCKS / 4 {
            let pair = if g + 1 < self.groups.len() {
                Some(g)
            } else {
                g.checked_sub(1)
            };
            if let Some(l) = pair {
                if self.groups[l].blocks.len() + self.groups[l + 1].blocks.len() <= GROUP_BLOCKS / 2
                {
                    let right = self.groups.remove(l + 1);
                    self.heads.remove(l + 1);
                    let left = &mut self.groups[l];
                    left.blocks.extend(right.blocks);
                    left.firsts.extend(right.firsts);
                }
            }
        }
        let last = self.groups.len() - 1;
        self.groups[g.min(last)].trim();
        if self.groups.capacity() >= 16 && self.groups.len() * 4 <= self.groups.capacity() {
            self.groups.shrink_to(self.groups.len() * 2);
            self.heads.shrink_to(self.groups.len() * 2);
        }
    }

    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.groups
            .iter()
            .flat_map(|grp| grp.blocks.iter().flatten())
            .copied()
    }

    /// The position of `item` among the `limit` items from position `(b, i)` on, if there.
    pub(super) fn scan_for(&self, (b, mut i): Pos, item: T, limit: usize) -> Option<Pos>
    where
        T: PartialEq,
    {
        let (mut g, mut j) = unaddr(b);
        let mut left = limit;
        while left > 0 {
            let grp = self.groups.get(g)?;
            let Some(block) = grp.blocks.get(j) else {
                (g, j, i) = (g + 1, 0, 0);
                continue;
            };
            for (k, x) in block.iter().enumerate().skip(i).take(left) {
                if *x == item {
                    return Some((addr(g, j), k));
                }
            }
            left = left.saturating_sub(block.len().saturating_sub(i));
            (j, i) = (j + 1, 0);
        }
        None
    }

    /// Items from position `(b, i)` on (`i` may be one past the end of block `b`).
    pub(super) fn iter_from(&self, (b, i): Pos) -> impl Iterator<Item = T> + '_ {
        let (g, j) = unaddr(b);
        let grp = self.groups.get(g);
        let first = grp
            .and_then(|grp| grp.blocks.get(j))
            .map_or(&[][..], |blk| &blk[i.min(blk.len())..]);
        let rest = grp.map_or(&[][..], |grp| grp.blocks.get(j + 1..).unwrap_or(&[]));
        first
            .iter()
            .chain(rest.iter().flatten())
            .chain(
                self.groups
                    .iter()
                    .skip(g + 1)
                    .flat_map(|grp| grp.blocks.iter().flatten()),
            )
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

    /// Checks the set's shape: blocks and groups non-empty and within their sizes, the
    /// first items and group heads copies of what they stand for, the items sorted.
    fn check_shape(set: &BlockSet<u32>) {
        assert_eq!(set.heads.len(), set.groups.len());
        let mut n = 0;
        for (grp, head) in set.groups.iter().zip(&set.heads) {
            assert!(!grp.blocks.is_empty() && grp.blocks.len() <= GROUP_BLOCKS);
            assert_eq!(grp.firsts.len(), grp.blocks.len());
            assert_eq!(*head, grp.firsts[0]);
            for (b, f) in grp.blocks.iter().zip(&grp.firsts) {
                assert!(!b.is_empty() && b.len() <= BLOCK_ITEMS);
                assert_eq!(*f, b[0]);
                n += b.len();
            }
        }
        assert_eq!(n, set.len());
        let items: Vec<u32> = set.iter().collect();
        assert!(items.windows(2).all(|w| w[0] < w[1]), "sorted and distinct");
    }

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
            if round % 97 == 0 {
                check_shape(&set);
            }
        }
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            model.iter().copied().collect::<Vec<_>>()
        );
        assert_eq!(set.len(), model.len());
        check_shape(&set);
        assert!(set.groups.len() > 4, "the test crosses groups");
        for v in model {
            assert!(set.remove(v));
        }
        assert!(set.is_empty() && set.capacity() == 0 && set.heads.capacity() == 0);
    }

    /// Appends (ids handed out in increasing order) fill blocks and groups, then removals of
    /// runs and of scattered items empty and merge them; every read agrees with a model.
    #[test]
    fn block_set_reads_agree_with_a_model_through_appends_and_runs_removed() {
        let mut set: BlockSet<u32> = BlockSet::new();
        let mut model = BTreeSet::new();
        for v in 0..5_000u32 {
            let at = set.search(|x| x.cmp(&(v * 2))).unwrap_err();
            set.insert_at(at, v * 2);
            model.insert(v * 2);
        }
        check_shape(&set);
        // Appended blocks and groups are full but the last.
        let full_groups = set.groups.len() - 1;
        assert!(set.groups[..full_groups]
            .iter()
            .all(|g| g.blocks.len() == GROUP_BLOCKS
                && g.blocks.iter().all(|b| b.len() == BLOCK_ITEMS)));
        let mut x = 7u32;
        for round in 0..3_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let v = (x >> 8) % 10_000;
            if round % 10 < 3 {
                // A run of up to 40 items removed.
                let run: Vec<u32> = model.range(v..).copied().take(40).collect();
                for r in run {
                    assert!(set.remove(r));
                    model.remove(&r);
                }
            } else if round % 10 < 6 {
                assert_eq!(set.remove(v), model.remove(&v));
            } else {
                assert_eq!(set.insert(v), model.insert(v));
            }
            if round % 50 == 0 {
                check_shape(&set);
            }
            // Reads: the position of v (or where it goes), and what follows it.
            let want_next: Vec<u32> = model.range(v..).copied().take(20).collect();
            match set.search(|x| x.cmp(&v)) {
                Ok(at) => {
                    assert!(model.contains(&v));
                    assert_eq!(set.get(at), v);
                    assert_eq!(set.scan_for(at, v, 1), Some(at));
                    let guided = set.search_guided(|x| x.cmp(&v), |items| items.len() / 2);
                    assert_eq!(guided, Ok(at));
                    assert_eq!(set.iter_from(at).take(20).collect::<Vec<_>>(), want_next);
                }
                Err(at) => {
                    assert!(!model.contains(&v));
                    let guided = set.search_guided(|x| x.cmp(&v), |_| 0);
                    let got: Vec<u32> = set.iter_from(at).take(20).collect();
                    assert_eq!(got, want_next);
                    let g: Vec<u32> = set.iter_from(guided.unwrap_err()).take(20).collect();
                    assert_eq!(g, want_next);
                }
            }
            // scan_for finds an item some way on from a position before it, within limit.
            if let Some(&far) = want_next.get(15) {
                let start = set.search(|x| x.cmp(&v)).unwrap_or_else(|at| at);
                let found = set.scan_for(start, far, 16).expect("within 16 items");
                assert_eq!(set.get(found), far);
                assert_eq!(set.scan_for(start, far, 15), None);
            }
        }
        check_shape(&set);
        assert!(set.iter().eq(model.iter().copied()));
    }
}
