//! Posting sets: [`PackedSet`], a compressed sorted set of entry ids (a word's postings once
//! it has three or more, a peer's holdings), and [`PostingIter`] over a word's postings.

use super::NONE;
use std::cmp::Ordering;

/// A [`PackedSet`] block splits when its deltas exceed this many bytes: about 75 items of a
/// common word. Block headers then cost under half a byte per item, and an insert or remove
/// into the middle of a block decodes at most this many bytes.
const PACKED_BLOCK_BYTES: usize = 256;

/// A sorted set of `u32` (entry ids), compressed: sorted blocks, each holding its first and
/// last item and the LEB128 varint deltas of the items after the first. Dense sets (common
/// words; a peer's entries, created together) cost about one byte per item, sparse ones two or
/// three. Blocks split above [`PACKED_BLOCK_BYTES`] and merge with a neighbour below a
/// quarter of it, so an insert or remove decodes one small block; appending past the last
/// item (new ids) needs no decoding at all. The list of blocks is one vector up to
/// [`GROUP_BLOCKS`] blocks (most sets: one block), else in groups of at most that many
/// ([`Blocks`]), so that no insert or remove of a block shifts or grows the whole list (a word
/// in every one of ten million names has about 60,000 blocks, 2 MB of block headers).
pub(super) struct PackedSet {
    blocks: Blocks,
    len: usize,
}

/// Largest group of blocks of a [`PackedSet`] (32 bytes a block: 32 KiB moved at most by an
/// insert or remove of a block). (A small one in tests, so that the store's property tests
/// cross groups.)
const GROUP_BLOCKS: usize = if cfg!(test) { 4 } else { 1024 };

/// The blocks of a [`PackedSet`]: one vector while they are at most [`GROUP_BLOCKS`], else
/// groups of at most that many (each non-empty), boxed so that a set costs no more than one
/// vector (most sets have one block). A block's address is its group and its place in it.
enum Blocks {
    One(Vec<PackedBlock>),
    // Boxed on purpose: the enum is then the size of one vector (the box fits beside the
    // vector's niche), which a second unboxed vector would not be.
    #[allow(clippy::box_collection)]
    Many(Box<Vec<Vec<PackedBlock>>>),
}

/// A block's address in [`Blocks`]: (group, block in the group).
type Addr = (usize, usize);

impl Blocks {
    /// The groups, each non-empty (none for an empty set).
    #[inline]
    fn groups(&self) -> &[Vec<PackedBlock>] {
        match self {
            Blocks::One(v) if v.is_empty() => &[],
            Blocks::One(v) => std::slice::from_ref(v),
            Blocks::Many(groups) => groups,
        }
    }

    #[inline]
    fn group_mut(&mut self, g: usize) -> &mut Vec<PackedBlock> {
        match self {
            Blocks::One(v) => {
                debug_assert_eq!(g, 0);
                v
            }
            Blocks::Many(groups) => &mut groups[g],
        }
    }

    #[inline]
    fn is_empty(&self) -> bool {
        matches!(self, Blocks::One(v) if v.is_empty())
    }

    #[inline]
    fn get(&self, (g, j): Addr) -> &PackedBlock {
        &self.groups()[g][j]
    }

    #[inline]
    fn get_mut(&mut self, (g, j): Addr) -> &mut PackedBlock {
        &mut self.group_mut(g)[j]
    }

    /// The last block's address (the set is not empty).
    fn last_addr(&self) -> Addr {
        let groups = self.groups();
        let g = groups.len() - 1;
        (g, groups[g].len() - 1)
    }

    /// The block that holds or would hold `item`: the last whose first item is ≤ it (or the
    /// first). The set is not empty.
    fn locate(&self, item: u32) -> Addr {
        let groups = self.groups();
        let g = groups
            .partition_point(|grp| grp[0].first <= item)
            .saturating_sub(1);
        let j = groups[g]
            .partition_point(|b| b.first <= item)
            .saturating_sub(1);
        (g, j)
    }

    /// Inserts `block` at place `j` of group `g` (up to its length), splitting the group in
    /// two halves first if it is full.
    fn insert(&mut self, g: usize, j: usize, block: PackedBlock) {
        let full = self.groups()[g].len() >= GROUP_BLOCKS;
        let half = GROUP_BLOCKS / 2;
        match self {
            Blocks::One(v) if full => {
                let mut right = v.split_off(half);
                let mut left = std::mem::take(v);
                if j > half {
                    right.insert(j - half, block);
                } else {
                    left.insert(j, block);
                }
                *self = Blocks::Many(Box::new(vec![left, right]));
            }
            Blocks::One(v) => {
                // Grow by a quarter at a time (a `Vec` would start at four blocks and double,
                // most of it unused for the many one- and two-block sets).
                if v.len() == v.capacity() {
                    v.reserve_exact((v.len() / 4).max(1));
                }
                v.insert(j, block);
            }
            Blocks::Many(groups) => {
                if full {
                    let right = groups[g].split_off(half);
                    groups.insert(g + 1, right);
                    if j > half {
                        groups[g + 1].insert(j - half, block);
                        return;
                    }
                }
                groups[g].insert(j, block);
            }
        }
    }

    /// Group `g` lost blocks: drops it if it is empty, merges it with a neighbour if both are
    /// small, and goes back to one vector when one group is left.
    fn after_group_shrink(&mut self, g: usize) {
        let Blocks::Many(groups) = self else {
            if self.is_empty() {
                *self = Blocks::One(Vec::new());
            }
            return;
        };
        if groups[g].is_empty() {
            groups.remove(g);
        } else if groups[g].len() < GROUP_BLOCKS / 4 {
            let pair = if g + 1 < groups.len() {
                Some(g)
            } else {
                g.checked_sub(1)
            };
            if let Some(l) = pair {
                if groups[l].len() + groups[l + 1].len() <= GROUP_BLOCKS / 2 {
                    let right = groups.remove(l + 1);
                    groups[l].extend(right);
                }
            }
        }
        if groups.len() <= 1 {
            let last = groups.pop().unwrap_or_default();
            *self = Blocks::One(last);
        }
    }

    /// Heap bytes of the block lists (not of the blocks' deltas).
    fn heap_bytes(&self) -> usize {
        let block = std::mem::size_of::<PackedBlock>();
        match self {
            Blocks::One(v) => v.capacity() * block,
            Blocks::Many(groups) => {
                groups.iter().map(|g| g.capacity() * block).sum::<usize>()
                    + groups.capacity() * std::mem::size_of::<Vec<PackedBlock>>()
                    + std::mem::size_of::<Vec<Vec<PackedBlock>>>()
            }
        }
    }
}

struct PackedBlock {
    first: u32,
    last: u32,
    /// Varint deltas (each ≥ 1) from `first` to the next item, and so on up to `last`.
    deltas: Vec<u8>,
}

#[inline]
fn put_varint(out: &mut [u8; 10], at: usize, mut v: u32) -> usize {
    let mut i = at;
    while v >= 0x80 {
        out[i] = v as u8 | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
    i + 1
}

#[inline]
fn get_varint(bytes: &[u8], pos: &mut usize) -> u32 {
    let mut v = 0u32;
    let mut shift = 0;
    loop {
        let b = bytes[*pos];
        *pos += 1;
        v |= u32::from(b & 0x7f) << shift;
        if b < 0x80 {
            return v;
        }
        shift += 7;
    }
}

/// The sum of eight varint deltas of one byte each, if every byte of `chunk` (eight) is one
/// (none has the continuation bit; the byte before it ends a varint). Bytes are below 128, so
/// pairs of them fit in 16-bit lanes and the four lanes' sum (at most 1,016) in the top one.
#[inline]
fn sum_of_8(chunk: &[u8]) -> Option<u32> {
    let x = u64::from_le_bytes(chunk.try_into().ok()?);
    if x & 0x8080_8080_8080_8080 != 0 {
        return None;
    }
    let pairs = (x & 0x00ff_00ff_00ff_00ff) + ((x >> 8) & 0x00ff_00ff_00ff_00ff);
    Some((pairs.wrapping_mul(0x0001_0001_0001_0001) >> 48) as u32)
}

/// Replaces `v[range]` by `with`, growing `v` by half at a time and never far past a full
/// block. Postings are a few bytes per file, so the slack costs about a byte per file, while
/// growing by less would make appends reallocate every few items.
fn splice_bytes(v: &mut Vec<u8>, range: std::ops::Range<usize>, with: &[u8]) {
    reserve_block_bytes(v, with.len().saturating_sub(range.len()));
    v.splice(range, with.iter().copied());
}

/// Makes room for `grow` more bytes in a block's deltas, as [`splice_bytes`] describes.
fn reserve_block_bytes(v: &mut Vec<u8>, grow: usize) {
    if v.capacity() - v.len() < grow {
        let step = (v.len() / 2)
            .max(8)
            .min((PACKED_BLOCK_BYTES + 10).saturating_sub(v.len()));
        v.reserve_exact(grow.max(step));
    }
}

impl PackedBlock {
    fn single(item: u32) -> Self {
        PackedBlock {
            first: item,
            last: item,
            deltas: Vec::new(),
        }
    }

    /// Appends `item` (> `last`).
    fn push(&mut self, item: u32) {
        let mut buf = [0u8; 10];
        let n = put_varint(&mut buf, 0, item - self.last);
        reserve_block_bytes(&mut self.deltas, n);
        self.deltas.extend_from_slice(&buf[..n]);
        self.last = item;
    }

    fn decode_into(&self, out: &mut Vec<u32>) {
        out.push(self.first);
        let (mut pos, mut cur) = (0, self.first);
        while pos < self.deltas.len() {
            cur += get_varint(&self.deltas, &mut pos);
            out.push(cur);
        }
    }

    /// A block of `items` (sorted, non-empty), reusing `deltas`' allocation.
    fn encode(items: &[u32], mut deltas: Vec<u8>) -> Self {
        deltas.clear();
        let mut buf = [0u8; 10];
        for pair in items.windows(2) {
            let n = put_varint(&mut buf, 0, pair[1] - pair[0]);
            deltas.extend_from_slice(&buf[..n]);
        }
        if deltas.capacity() > 2 * deltas.len() + 16 {
            deltas.shrink_to(deltas.len() + deltas.len() / 4);
        }
        PackedBlock {
            first: items[0],
            last: items[items.len() - 1],
            deltas,
        }
    }
}

impl PackedSet {
    /// Heap bytes held (capacities, not lengths).
    pub(super) fn heap_bytes(&self) -> usize {
        self.blocks
            .groups()
            .iter()
            .flatten()
            .map(|b| b.deltas.capacity())
            .sum::<usize>()
            + self.blocks.heap_bytes()
    }

    pub(super) fn new() -> Self {
        PackedSet {
            blocks: Blocks::One(Vec::new()),
            len: 0,
        }
    }

    #[inline]
    pub(super) fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(super) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Inserts `item`; false if it was there.
    pub(super) fn insert(&mut self, item: u32) -> bool {
        if self.blocks.is_empty() {
            // Most words have a single block: no room for more until needed.
            self.blocks = Blocks::One(vec![PackedBlock::single(item)]);
            self.len = 1;
            return true;
        }
        // New ids are the largest yet, so most inserts append: no search for those.
        let last = self.blocks.last_addr();
        let at = if item > self.blocks.get(last).last {
            last
        } else {
            self.blocks.locate(item)
        };
        let blk = self.blocks.get_mut(at);
        let mut buf = [0u8; 10];
        if item < blk.first {
            // Only the first block: the new item becomes its first.
            let n = put_varint(&mut buf, 0, blk.first - item);
            splice_bytes(&mut blk.deltas, 0..0, &buf[..n]);
            blk.first = item;
        } else if item == blk.first || item == blk.last {
            return false;
        } else if item > blk.last {
            if blk.deltas.len() >= PACKED_BLOCK_BYTES {
                // Appending to a full block starts a new one after it, so that ascending
                // runs of inserts (new ids at the end; entries moving into a tier's run in
                // the middle) end up in full blocks rather than half ones.
                self.blocks
                    .insert(at.0, at.1 + 1, PackedBlock::single(item));
                self.len += 1;
                return true;
            }
            blk.push(item);
        } else {
            let (mut pos, mut prev) = (0, blk.first);
            loop {
                let start = pos;
                let cur = prev + get_varint(&blk.deltas, &mut pos);
                match cur.cmp(&item) {
                    Ordering::Equal => return false,
                    Ordering::Greater => {
                        let n = put_varint(&mut buf, 0, item - prev);
                        let n = put_varint(&mut buf, n, cur - item);
                        splice_bytes(&mut blk.deltas, start..pos, &buf[..n]);
                        break;
                    }
                    Ordering::Less => prev = cur,
                }
            }
        }
        self.len += 1;
        if self.blocks.get(at).deltas.len() > PACKED_BLOCK_BYTES {
            self.split(at);
        }
        true
    }

    /// Splits block `at` in two halves of about equal encoded size.
    fn split(&mut self, at: Addr) {
        let blk = self.blocks.get_mut(at);
        let half = blk.deltas.len() / 2;
        let (mut pos, mut prev) = (0, blk.first);
        let (start, cur) = loop {
            let start = pos;
            let cur = prev + get_varint(&blk.deltas, &mut pos);
            if pos > half {
                break (start, cur);
            }
            prev = cur;
        };
        let right = PackedBlock {
            first: cur,
            last: blk.last,
            deltas: blk.deltas[pos..].to_vec(),
        };
        blk.deltas.truncate(start);
        blk.deltas.shrink_to(start + start / 4);
        blk.last = prev;
        self.blocks.insert(at.0, at.1 + 1, right);
    }

    /// Removes `item`; false if it was not there.
    pub(super) fn remove(&mut self, item: u32) -> bool {
        if self.blocks.is_empty() {
            return false;
        }
        let at = self.blocks.locate(item);
        let blk = self.blocks.get_mut(at);
        if item < blk.first || item > blk.last {
            return false;
        }
        if item == blk.first {
            if blk.deltas.is_empty() {
                self.blocks.group_mut(at.0).remove(at.1);
                self.len -= 1;
                self.blocks.after_group_shrink(at.0);
                if self.blocks.is_empty() {
                    *self = Self::new();
                }
                return true;
            }
            let mut pos = 0;
            blk.first += get_varint(&blk.deltas, &mut pos);
            blk.deltas.drain(..pos);
        } else {
            let (mut pos, mut prev) = (0, blk.first);
            loop {
                let start = pos;
                let cur = prev + get_varint(&blk.deltas, &mut pos);
                match cur.cmp(&item) {
                    Ordering::Less => prev = cur,
                    Ordering::Greater => return false,
                    Ordering::Equal if pos == blk.deltas.len() => {
                        blk.deltas.truncate(start);
                        blk.last = prev;
                        break;
                    }
                    Ordering::Equal => {
                        let mut end = pos;
                        let next = cur + get_varint(&blk.deltas, &mut end);
                        let mut buf = [0u8; 10];
                        let n = put_varint(&mut buf, 0, next - prev);
                        blk.deltas.splice(start..end, buf[..n].iter().copied());
                        break;
                    }
                }
            }
        }
        self.len -= 1;
        self.after_shrink(at);
        true
    }

    /// Merges block `at` into a neighbour in its group if both are small, and trims its spare
    /// capacity.
    fn after_shrink(&mut self, (g, b): Addr) {
        let group = self.blocks.group_mut(g);
        let mut merged = false;
        if group[b].deltas.len() < PACKED_BLOCK_BYTES / 4 {
            let pair = if b + 1 < group.len() {
                Some(b)
            } else {
                b.checked_sub(1)
            };
            if let Some(l) = pair {
                let (left, right) = (&group[l], &group[l + 1]);
                if left.deltas.len() + right.deltas.len() + 5 <= PACKED_BLOCK_BYTES / 2 {
                    let right = group.remove(l + 1);
                    let left = &mut group[l];
                    let mut buf = [0u8; 10];
                    let n = put_varint(&mut buf, 0, right.first - left.last);
                    left.deltas.extend_from_slice(&buf[..n]);
                    left.deltas.extend_from_slice(&right.deltas);
                    left.last = right.last;
                    merged = true;
                }
            }
        }
        let last = group.len() - 1;
        let deltas = &mut group[b.min(last)].deltas;
        if deltas.capacity() >= 32 && deltas.len() * 4 <= deltas.capacity() {
            deltas.shrink_to(deltas.len() * 2);
        }
        if merged {
            self.blocks.after_group_shrink(g);
        }
    }

    /// Removes `items` (sorted ascending, distinct; absent ones are ignored), decoding and
    /// re-encoding each affected block once: a peer's removal takes many postings out of the
    /// same common-word sets.
    pub(super) fn remove_sorted(&mut self, items: &[u32], decoded: &mut Vec<u32>) {
        if items.len() == 1 {
            self.remove(items[0]);
            return;
        }
        let mut i = 0;
        let mut emptied = false;
        let mut touched_small = false;
        // The blocks changed, from `lo` to `hi` (`items` is sorted, so they are a range).
        let (mut lo, mut hi) = ((usize::MAX, usize::MAX), (0, 0));
        while i < items.len() && !self.blocks.is_empty() {
            let at = self.blocks.locate(items[i]);
            let blk = self.blocks.get_mut(at);
            if blk.last == NONE {
                // Emptied by this call: the item is absent.
                i += 1;
                continue;
            }
            // Items up to this block's last belong here (or nowhere).
            let end = i + items[i..].partition_point(|&x| x <= blk.last);
            if end == i {
                i += 1;
                continue;
            }
            lo = lo.min(at);
            hi = hi.max(at);
            decoded.clear();
            blk.decode_into(decoded);
            let before = decoded.len();
            let gone = &items[i..end];
            let mut g = 0;
            decoded.retain(|&x| {
                while g < gone.len() && gone[g] < x {
                    g += 1;
                }
                !(g < gone.len() && gone[g] == x)
            });
            self.len -= before - decoded.len();
            if decoded.is_empty() {
                // Marked empty by `last == NONE` (no item is `NONE`); `first` stays, so that
                // the blocks stay ordered by it for `locate`.
                blk.deltas = Vec::new();
                blk.last = NONE;
                emptied = true;
            } else if decoded.len() < before {
                let deltas = std::mem::take(&mut blk.deltas);
                *blk = PackedBlock::encode(decoded, deltas);
                touched_small |= blk.deltas.len() < PACKED_BLOCK_BYTES / 4;
            }
            i = end;
        }
        if touched_small || emptied {
            // Only the blocks changed and their two neighbours (in their groups) can be
            // emptied or newly small: the rest of a big set (a common word's tens of
            // thousands of blocks) is left alone, not rebuilt. Groups from the last, so that
            // the addresses of those before stay.
            for g in (lo.0..=hi.0).rev() {
                let group = self.blocks.group_mut(g);
                let start = if g == lo.0 { lo.1.saturating_sub(1) } else { 0 };
                let end = if g == hi.0 {
                    (hi.1 + 2).min(group.len())
                } else {
                    group.len()
                };
                merge_small_in(group, start..end);
                self.blocks.after_group_shrink(g);
            }
            if self.blocks.is_empty() {
                *self = Self::new();
            }
        }
    }

    /// The items from the first one at least `from` on, ascending: blocks before it are
    /// skipped without decoding.
    pub(super) fn iter_from(&self, from: u32) -> impl Iterator<Item = u32> + '_ {
        let groups = self.blocks.groups();
        // From the start (most searches) without a search over the blocks.
        let (g, b) = match groups.first() {
            Some(first) if from > first[0].last => self.blocks.locate(from),
            _ => (0, 0),
        };
        PackedIter {
            groups: groups.get(g + 1..).unwrap_or(&[]).iter(),
            blocks: groups.get(g).map_or(&[][..], |grp| &grp[b..]).iter(),
            deltas: &[],
            pos: 0,
            cur: 0,
        }
        .skip_while(move |&x| x < from)
    }

    #[inline]
    pub(super) fn iter(&self) -> PackedIter<'_> {
        PackedIter {
            groups: self.blocks.groups().iter(),
            blocks: [].iter(),
            deltas: &[],
            pos: 0,
            cur: 0,
        }
    }
}

/// Drops the emptied blocks of `window` in `blocks` and merges each run of adjacent small
/// blocks in it, in place: the blocks after it move once.
fn merge_small_in(blocks: &mut Vec<PackedBlock>, window: std::ops::Range<usize>) {
    // Blocks `window.start..w` are the result so far; those from `w` to `r` are spent.
    let mut w = window.start;
    for r in window.clone() {
        if blocks[r].last == NONE {
            continue;
        }
        if w > window.start {
            let (head, tail) = blocks.split_at_mut(r);
            let (left, blk) = (&mut head[w - 1], &tail[0]);
            if left.deltas.len() + blk.deltas.len() + 5 <= PACKED_BLOCK_BYTES / 2 {
                let mut buf = [0u8; 10];
                let n = put_varint(&mut buf, 0, blk.first - left.last);
                left.deltas.extend_from_slice(&buf[..n]);
                left.deltas.extend_from_slice(&blk.deltas);
                left.last = blk.last;
                continue;
            }
        }
        blocks.swap(w, r);
        w += 1;
    }
    blocks.drain(w..window.end);
}

/// A cursor over a [`PackedSet`] that seeks forward: [`PackedCursor::seek`] gives the first
/// item at least a target, for targets that never decrease. Blocks wholly before a target are
/// skipped without decoding (galloping over the groups' and then the blocks' `last` items,
/// then a binary search), so intersecting a short list with a long one costs about the short
/// one's length times a logarithm and a part of a block, not the long one's length.
pub(super) struct PackedCursor<'a> {
    groups: &'a [Vec<PackedBlock>],
    /// The group of `cur` (`groups.len()` once past the end).
    g: usize,
    /// The blocks of group `g`.
    blocks: &'a [PackedBlock],
    /// The block of `cur` in its group.
    b: usize,
    /// Where the delta after `cur` starts in block `b`.
    pos: usize,
    /// The item the cursor is on.
    cur: u32,
}

/// The first of `items[from..]` for which `is_before` is false, given that it is false for
/// the last item and true for `items[from]`: galloping from `from`, then a binary search.
#[inline]
fn gallop<T>(items: &[T], from: usize, is_before: impl Fn(&T) -> bool) -> usize {
    let n = items.len();
    let mut step = 1;
    while from + step < n && is_before(&items[from + step]) {
        step *= 2;
    }
    let lo = from + step / 2 + 1;
    let hi = (from + step + 1).min(n);
    lo + items[lo..hi].partition_point(is_before)
}

impl<'a> PackedCursor<'a> {
    /// On the set's first item.
    pub(super) fn new(set: &'a PackedSet) -> Self {
        let groups = set.blocks.groups();
        let blocks = groups.first().map_or(&[][..], |g| &g[..]);
        PackedCursor {
            groups,
            g: 0,
            blocks,
            b: 0,
            pos: 0,
            cur: blocks.first().map_or(0, |b| b.first),
        }
    }

    /// The first item at least `target` (`None` if there is none), moving the cursor to it.
    /// `target` must be at least the previous call's.
    #[inline]
    pub(super) fn seek(&mut self, target: u32) -> Option<u32> {
        if self.g >= self.groups.len() {
            return None;
        }
        if self.cur >= target {
            return Some(self.cur);
        }
        if self.blocks[self.b].last < target {
            if self.blocks[self.blocks.len() - 1].last < target {
                // Past this group: gallop over the groups after it by their last items.
                self.g = gallop(self.groups, self.g, |grp| grp[grp.len() - 1].last < target);
                if self.g >= self.groups.len() {
                    return None;
                }
                self.blocks = &self.groups[self.g];
                self.b = 0;
            }
            // The group's last item is at least `target`: gallop over its blocks after this
            // one by their last items.
            if self.blocks[self.b].last < target {
                self.b = gallop(self.blocks, self.b, |x| x.last < target);
            }
            let blk = &self.blocks[self.b];
            // The next block's deltas are a separate allocation, cold at 10M entries: start
            // loading their first line now, so that its miss overlaps this block's work
            // (an intersection's seeks walk a long list's blocks nearly one after another).
            if let Some(next) = self.blocks.get(self.b + 1) {
                crate::sys::cache::prefetch(&next.deltas);
            }
            self.cur = blk.first;
            self.pos = 0;
            if self.cur >= target {
                return Some(self.cur);
            }
        }
        // The block's last item is at least `target`: it is in this block.
        let deltas = &self.blocks[self.b].deltas;
        while self.cur < target {
            // Eight one-byte deltas at a time while they all stay below `target` (a dense
            // list's deltas are nearly all one byte): a seek into a block of a common word
            // adds up about a hundred deltas, one at a time a chain of dependent steps.
            if let Some(sum) = deltas.get(self.pos..self.pos + 8).and_then(sum_of_8) {
                if self.cur + sum < target {
                    self.cur += sum;
                    self.pos += 8;
                    continue;
                }
            }
            self.cur += get_varint(deltas, &mut self.pos);
        }
        Some(self.cur)
    }
}

/// A word's postings, ascending: inline or packed.
pub(super) enum PostingIter<'a> {
    Inline(std::slice::Iter<'a, u32>),
    Packed(PackedIter<'a>),
}

impl Iterator for PostingIter<'_> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        match self {
            PostingIter::Inline(it) => it.next().copied(),
            PostingIter::Packed(it) => it.next(),
        }
    }
}

/// The items of a [`PackedSet`], ascending.
pub(super) struct PackedIter<'a> {
    /// The groups after the one of `blocks`.
    groups: std::slice::Iter<'a, Vec<PackedBlock>>,
    /// The blocks after the one of `deltas`, in its group.
    blocks: std::slice::Iter<'a, PackedBlock>,
    deltas: &'a [u8],
    pos: usize,
    cur: u32,
}

impl Iterator for PackedIter<'_> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        if self.pos < self.deltas.len() {
            self.cur += get_varint(self.deltas, &mut self.pos);
            return Some(self.cur);
        }
        let b = loop {
            match self.blocks.next() {
                Some(b) => break b,
                None => self.blocks = self.groups.next()?.iter(),
            }
        };
        self.deltas = &b.deltas;
        self.pos = 0;
        self.cur = b.first;
        Some(b.first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    #[test]
    fn a_cursor_seeks_the_first_item_at_least_each_target() {
        let mut set = PackedSet::new();
        let mut model = BTreeSet::new();
        let mut x = 99u32;
        for _ in 0..20_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            // Runs of close ids and far jumps, so that blocks and gaps vary.
            let v = if x % 3 == 0 {
                (x >> 6) % 2_000_000
            } else {
                (x >> 8) % 40_000
            };
            set.insert(v);
            model.insert(v);
        }
        for stride in [1u32, 7, 150, 4_000, 90_000, 700_000] {
            let mut c = PackedCursor::new(&set);
            let mut t = 0u32;
            loop {
                let want = model.range(t..).next().copied();
                assert_eq!(c.seek(t), want, "target {t} stride {stride}");
                // The same target again stays put.
                assert_eq!(c.seek(t), want);
                if want.is_none() {
                    break;
                }
                t += 1 + (t.wrapping_mul(2_654_435_761) % stride);
            }
        }
        let empty = PackedSet::new();
        assert_eq!(PackedCursor::new(&empty).seek(0), None);
    }

    #[test]
    fn eight_one_byte_deltas_are_summed_and_longer_ones_refused() {
        assert_eq!(sum_of_8(&[1, 2, 3, 4, 5, 6, 7, 8]), Some(36));
        assert_eq!(sum_of_8(&[127; 8]), Some(8 * 127));
        assert_eq!(sum_of_8(&[0x81, 1, 1, 1, 1, 1, 1, 1]), None);
        assert_eq!(sum_of_8(&[1, 1, 1, 1, 1, 1, 1, 0x80]), None);
        assert_eq!(sum_of_8(&[1; 7]), None);
    }

    /// Seeks into dense blocks (one-byte deltas, added eight at a time) with some longer
    /// deltas among them, to every target in turn and in strides: the first item at least
    /// each target, as a sorted set says.
    #[test]
    fn a_cursor_seeks_through_dense_blocks() {
        let mut set = PackedSet::new();
        let mut model = BTreeSet::new();
        let mut v = 5u32;
        let mut x = 3u32;
        while model.len() < 30_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            v += match x >> 28 {
                0 => 200 + (x >> 8) % 20_000,
                _ => 1 + (x >> 8) % 9,
            };
            set.insert(v);
            model.insert(v);
        }
        for stride in [1u32, 2, 9, 40, 130, 1_000, 50_000] {
            let mut c = PackedCursor::new(&set);
            let mut t = 0u32;
            loop {
                let want = model.range(t..).next().copied();
                assert_eq!(c.seek(t), want, "target {t} stride {stride}");
                let Some(got) = want else { break };
                t = if stride == 1 { got + 1 } else { t + stride };
            }
        }
    }

    /// The first of `items` (sorted) at least `target`.
    fn naive_seek(items: &[u32], target: u32) -> Option<u32> {
        items.get(items.partition_point(|&x| x < target)).copied()
    }

    /// Every target worth trying on `set`: around each block's first and last items, past
    /// the last item, and 0.
    fn edge_targets(set: &PackedSet) -> Vec<u32> {
        let mut t = vec![0, u32::MAX - 1];
        for b in set.blocks.groups().iter().flatten() {
            for e in [b.first, b.last] {
                t.extend([e.saturating_sub(1), e, e.saturating_add(1)]);
            }
        }
        t.sort_unstable();
        t
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(200))]

        /// A cursor's seek against a naive one over the sorted items, on sets of every shape
        /// (empty, one item, one block, many blocks and groups; dense runs of one-byte deltas
        /// and longer ones), some items removed, for increasing targets at the blocks' edges
        /// (the last block's included) and at random strides.
        #[test]
        fn a_seek_agrees_with_a_naive_seek(
            gaps in proptest::collection::vec(
                proptest::prop_oneof![
                    8 => 1u32..4,
                    4 => 1u32..128,
                    2 => 128u32..20_000,
                    1 => 20_000u32..3_000_000,
                ],
                0..3_000,
            ),
            removals in proptest::collection::vec(proptest::prelude::any::<usize>(), 0..200),
            strides in proptest::collection::vec(1u32..5_000, 1..40),
            shuffled in proptest::prelude::any::<bool>(),
        ) {
            let mut items: Vec<u32> = gaps
                .iter()
                .scan(0u32, |v, g| {
                    *v = v.saturating_add(*g);
                    Some(*v)
                })
                .collect();
            items.dedup();
            let mut set = PackedSet::new();
            if shuffled {
                // Inserts in the middle of blocks and before their first items, not only
                // appends.
                let n = items.len();
                for i in (0..n).step_by(2).chain((1..n).step_by(2).rev()) {
                    set.insert(items[i]);
                }
            } else {
                for &v in &items {
                    set.insert(v);
                }
            }
            check_shape(&set);
            let mut decoded = Vec::new();
            for (i, r) in removals.iter().enumerate() {
                if items.is_empty() {
                    break;
                }
                let at = r % items.len();
                if i % 4 == 0 {
                    let run: Vec<u32> = items[at..].iter().copied().take(1 + r % 300).collect();
                    set.remove_sorted(&run, &mut decoded);
                    items.drain(at..at + run.len());
                } else {
                    proptest::prop_assert!(set.remove(items.remove(at)));
                }
            }
            check_shape(&set);
            proptest::prop_assert_eq!(set.len(), items.len());
            // Each edge target, in order, from one cursor.
            let mut c = PackedCursor::new(&set);
            for t in edge_targets(&set) {
                proptest::prop_assert_eq!(c.seek(t), naive_seek(&items, t), "edge target {}", t);
            }
            // Targets at random strides (a seek that stays in its block, moves on to a
            // later one, or runs off the end).
            let mut c = PackedCursor::new(&set);
            let mut t = 0u32;
            for (i, s) in strides.iter().cycle().take(2_000).enumerate() {
                let want = naive_seek(&items, t);
                proptest::prop_assert_eq!(c.seek(t), want, "target {}", t);
                let Some(got) = want else { break };
                t = if i % 3 == 0 { got.saturating_add(1) } else { t.saturating_add(*s) };
            }
            // A fresh cursor on each edge target alone.
            for t in edge_targets(&set) {
                proptest::prop_assert_eq!(
                    PackedCursor::new(&set).seek(t),
                    naive_seek(&items, t)
                );
            }
        }
    }

    /// A set of one item: a seek finds it or nothing.
    #[test]
    fn a_cursor_over_one_item() {
        let mut set = PackedSet::new();
        set.insert(10);
        check_shape(&set);
        assert_eq!(PackedCursor::new(&set).seek(0), Some(10));
        assert_eq!(PackedCursor::new(&set).seek(10), Some(10));
        assert_eq!(PackedCursor::new(&set).seek(11), None);
    }

    #[test]
    fn packed_set_agrees_with_btree_set() {
        let mut set = PackedSet::new();
        let mut model = BTreeSet::new();
        let mut decoded = Vec::new();
        let mut x = 777u32;
        for round in 0..60_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            // Mostly dense ids, some far apart (multi-byte deltas), some appends.
            let v = match x % 7 {
                0 => (x >> 4) % 5_000_000,
                1 => 3000 + round / 4,
                _ => (x >> 8) % 3000,
            };
            match round % 5 {
                3 => assert_eq!(set.remove(v), model.remove(&v)),
                4 if round % 50 == 4 => {
                    let gone: Vec<u32> = model
                        .iter()
                        .copied()
                        .filter(|y| y % 3 == x % 3)
                        .take(400)
                        .collect();
                    let mut with_absent = gone.clone();
                    with_absent.push(u32::MAX - 5);
                    set.remove_sorted(&with_absent, &mut decoded);
                    for y in gone {
                        model.remove(&y);
                    }
                }
                _ => assert_eq!(set.insert(v), model.insert(v)),
            }
            assert_eq!(set.len(), model.len());
        }
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            model.iter().copied().collect::<Vec<_>>()
        );
        for b in set.blocks.groups().iter().flatten() {
            assert!(b.first <= b.last && b.deltas.len() <= PACKED_BLOCK_BYTES);
        }
        let all: Vec<u32> = model.iter().copied().collect();
        set.remove_sorted(&all[..all.len() / 2], &mut decoded);
        for v in &all[all.len() / 2..] {
            assert!(set.remove(*v));
        }
        assert!(set.is_empty() && matches!(&set.blocks, Blocks::One(v) if v.capacity() == 0));
    }

    /// A departing peer's entries leave a common word's big set 64 at a time: each removal
    /// empties or shrinks a few blocks, which merge with their neighbours there, and the set
    /// still holds the rest, with no two adjacent blocks small enough to merge.
    #[test]
    fn removing_runs_from_a_big_set_merges_around_them() {
        let mut set = PackedSet::new();
        let mut model = BTreeSet::new();
        for v in (0..200_000u32).filter(|v| v % 7 != 3) {
            set.insert(v);
            model.insert(v);
        }
        let mut decoded = Vec::new();
        for run in 0..400u32 {
            let from = (run * 7_919) % 190_000;
            let gone: Vec<u32> = model.range(from..).copied().take(64).collect();
            set.remove_sorted(&gone, &mut decoded);
            for v in &gone {
                model.remove(v);
            }
            assert_eq!(set.len(), model.len());
        }
        assert!(set.iter().eq(model.iter().copied()));
        check_shape(&set);
        for group in set.blocks.groups() {
            for pair in group.windows(2) {
                assert!(
                    pair[0].deltas.len() + pair[1].deltas.len() + 5 > PACKED_BLOCK_BYTES / 2,
                    "two small neighbours left unmerged"
                );
            }
        }
    }

    #[test]
    fn a_set_costs_one_vector_and_a_count() {
        assert_eq!(
            std::mem::size_of::<Blocks>(),
            std::mem::size_of::<Vec<PackedBlock>>()
        );
        assert_eq!(std::mem::size_of::<Option<PackedSet>>(), 32);
    }

    /// Checks a set's shape: its blocks ordered, none emptied, within their size; its groups
    /// non-empty and within theirs, and more than one unless it is one vector.
    fn check_shape(set: &PackedSet) {
        let groups = set.blocks.groups();
        if let Blocks::Many(_) = &set.blocks {
            assert!(groups.len() >= 2, "one group is one vector");
        }
        for group in groups {
            assert!(!group.is_empty() && group.len() <= GROUP_BLOCKS);
        }
        let blocks: Vec<&PackedBlock> = groups.iter().flatten().collect();
        for b in &blocks {
            assert!(b.first <= b.last && b.last != NONE);
            assert!(b.deltas.len() <= PACKED_BLOCK_BYTES);
        }
        for pair in blocks.windows(2) {
            assert!(pair[0].last < pair[1].first);
        }
        assert_eq!(set.iter().count(), set.len());
    }

    /// Reads from any item on (`iter_from`, a cursor's seek) agree with a model while a set
    /// grows past one group of blocks, shrinks back to one vector and grows again, with
    /// inserts in the middle (a tier's run) and runs removed.
    #[test]
    fn a_set_in_groups_reads_like_a_sorted_set() {
        let mut set = PackedSet::new();
        let mut model = BTreeSet::new();
        let mut decoded = Vec::new();
        let mut x = 4242u32;
        for phase in 0..3u32 {
            // Grow: appends, and inserts into a run in the middle.
            for i in 0..6_000u32 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let v = if i % 4 == 0 {
                    (x >> 8) % 1_000_000
                } else {
                    1_000_000 + phase * 100_000 + i * 3
                };
                assert_eq!(set.insert(v), model.insert(v));
            }
            check_shape(&set);
            assert!(matches!(set.blocks, Blocks::Many(_)), "grown past a group");
            for probe in 0..200u32 {
                let from = probe.wrapping_mul(7_919) % 1_400_000;
                let want: Vec<u32> = model.range(from..).copied().take(30).collect();
                assert_eq!(set.iter_from(from).take(30).collect::<Vec<_>>(), want);
            }
            let mut c = PackedCursor::new(&set);
            let mut t = 0u32;
            while let Some(got) = c.seek(t) {
                assert_eq!(Some(got), model.range(t..).next().copied());
                t = got + 1 + (t % 5_000);
            }
            assert_eq!(model.range(t..).next(), None);
            // Shrink: runs removed, and single items, until few are left.
            while model.len() > 40 {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
                let from = (x >> 8) % 1_400_000;
                let mut gone: Vec<u32> = model.range(from..).copied().take(500).collect();
                if gone.is_empty() {
                    gone = model.iter().copied().take(500).collect();
                }
                if x % 3 == 0 {
                    assert!(set.remove(gone[0]));
                    model.remove(&gone[0]);
                } else {
                    set.remove_sorted(&gone, &mut decoded);
                    for v in &gone {
                        model.remove(v);
                    }
                }
                assert_eq!(set.len(), model.len());
            }
            check_shape(&set);
            assert!(matches!(set.blocks, Blocks::One(_)), "back to one vector");
            assert!(set.iter().eq(model.iter().copied()));
        }
    }
}
