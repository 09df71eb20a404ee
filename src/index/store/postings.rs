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
/// item (new ids) needs no decoding at all.
pub(super) struct PackedSet {
    /// Non-empty, sorted, each block entirely before the next.
    blocks: Vec<PackedBlock>,
    len: usize,
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
            .iter()
            .map(|b| b.deltas.capacity())
            .sum::<usize>()
            + self.blocks.capacity() * std::mem::size_of::<PackedBlock>()
    }

    pub(super) fn new() -> Self {
        PackedSet {
            blocks: Vec::new(),
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

    /// The block that holds or would hold `item`: the last whose first item is ≤ it (or 0).
    fn block_of(&self, item: u32) -> usize {
        self.blocks
            .partition_point(|b| b.first <= item)
            .saturating_sub(1)
    }

    /// Inserts `item`; false if it was there.
    pub(super) fn insert(&mut self, item: u32) -> bool {
        if self.blocks.is_empty() {
            // Most words have a single block: no room for more until needed.
            self.blocks.reserve_exact(1);
            self.blocks.push(PackedBlock::single(item));
            self.len = 1;
            return true;
        }
        // New ids are the largest yet, so most inserts append: no search for those.
        let b = match self.blocks.last() {
            Some(last) if item > last.last => self.blocks.len() - 1,
            _ => self.block_of(item),
        };
        let blk = &mut self.blocks[b];
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
                self.grow_blocks();
                self.blocks.insert(b + 1, PackedBlock::single(item));
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
        if self.blocks[b].deltas.len() > PACKED_BLOCK_BYTES {
            self.split(b);
        }
        true
    }

    /// Splits block `b` in two halves of about equal encoded size.
    fn split(&mut self, b: usize) {
        let blk = &mut self.blocks[b];
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
        self.grow_blocks();
        self.blocks.insert(b + 1, right);
    }

    /// Makes room for one more block, by a quarter at a time (a `Vec` would start at four
    /// blocks and double, most of it unused for the many one- and two-block sets).
    fn grow_blocks(&mut self) {
        if self.blocks.len() == self.blocks.capacity() {
            self.blocks.reserve_exact((self.blocks.len() / 4).max(1));
        }
    }

    /// Removes `item`; false if it was not there.
    pub(super) fn remove(&mut self, item: u32) -> bool {
        if self.blocks.is_empty() {
            return false;
        }
        let b = self.block_of(item);
        let blk = &mut self.blocks[b];
        if item < blk.first || item > blk.last {
            return false;
        }
        if item == blk.first {
            if blk.deltas.is_empty() {
                self.blocks.remove(b);
                self.len -= 1;
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
        self.after_shrink(b);
        true
    }

    /// Merges block `b` into a neighbour if both are small, and trims its spare capacity.
    fn after_shrink(&mut self, b: usize) {
        if self.blocks[b].deltas.len() < PACKED_BLOCK_BYTES / 4 {
            let pair = if b + 1 < self.blocks.len() {
                Some(b)
            } else {
                b.checked_sub(1)
            };
            if let Some(l) = pair {
                let (left, right) = (&self.blocks[l], &self.blocks[l + 1]);
                if left.deltas.len() + right.deltas.len() + 5 <= PACKED_BLOCK_BYTES / 2 {
                    let right = self.blocks.remove(l + 1);
                    let left = &mut self.blocks[l];
                    let mut buf = [0u8; 10];
                    let n = put_varint(&mut buf, 0, right.first - left.last);
                    left.deltas.extend_from_slice(&buf[..n]);
                    left.deltas.extend_from_slice(&right.deltas);
                    left.last = right.last;
                }
            }
        }
        let last = self.blocks.len() - 1;
        let deltas = &mut self.blocks[b.min(last)].deltas;
        if deltas.capacity() >= 32 && deltas.len() * 4 <= deltas.capacity() {
            deltas.shrink_to(deltas.len() * 2);
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
        // The blocks changed, `lo..hi` (`items` is sorted, so they are a range).
        let (mut lo, mut hi) = (usize::MAX, 0);
        while i < items.len() && !self.blocks.is_empty() {
            let b = self.block_of(items[i]);
            let blk = &mut self.blocks[b];
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
            lo = lo.min(b);
            hi = b + 1;
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
                // the blocks stay ordered by it for `block_of`.
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
            // Only the blocks changed and their two neighbours can be emptied or newly small:
            // the rest of a big set (a common word's tens of thousands of blocks) is left
            // alone, not rebuilt.
            let window = lo.saturating_sub(1)..(hi + 1).min(self.blocks.len());
            self.merge_small_in(window);
            if self.blocks.is_empty() {
                *self = Self::new();
            }
        }
    }

    /// Drops the emptied blocks of `window` and merges each run of adjacent small blocks in
    /// it, in place: the blocks after it move once.
    fn merge_small_in(&mut self, window: std::ops::Range<usize>) {
        // Blocks `window.start..w` are the result so far; those from `w` to `r` are spent.
        let mut w = window.start;
        for r in window.clone() {
            if self.blocks[r].last == NONE {
                continue;
            }
            if w > window.start {
                let (head, tail) = self.blocks.split_at_mut(r);
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
            self.blocks.swap(w, r);
            w += 1;
        }
        self.blocks.drain(w..window.end);
    }

    /// The items from the first one at least `from` on, ascending: blocks before it are
    /// skipped without decoding.
    pub(super) fn iter_from(&self, from: u32) -> impl Iterator<Item = u32> + '_ {
        // From the start (most searches) without a search over the blocks.
        let b = match self.blocks.first() {
            Some(first) if from > first.last => self.block_of(from),
            _ => 0,
        };
        PackedIter {
            blocks: self.blocks[b.min(self.blocks.len())..].iter(),
            deltas: &[],
            pos: 0,
            cur: 0,
        }
        .skip_while(move |&x| x < from)
    }

    #[inline]
    pub(super) fn iter(&self) -> PackedIter<'_> {
        PackedIter {
            blocks: self.blocks.iter(),
            deltas: &[],
            pos: 0,
            cur: 0,
        }
    }
}

/// A cursor over a [`PackedSet`] that seeks forward: [`PackedCursor::seek`] gives the first
/// item at least a target, for targets that never decrease. Blocks wholly before a target are
/// skipped without decoding (galloping over their `last` items, then a binary search), so
/// intersecting a short list with a long one costs about the short one's length times a
/// logarithm and a part of a block, not the long one's length.
pub(super) struct PackedCursor<'a> {
    blocks: &'a [PackedBlock],
    /// The block of `cur` (`blocks.len()` once past the end).
    b: usize,
    /// Where the delta after `cur` starts in block `b`.
    pos: usize,
    /// The item the cursor is on.
    cur: u32,
}

impl<'a> PackedCursor<'a> {
    /// On the set's first item.
    pub(super) fn new(set: &'a PackedSet) -> Self {
        PackedCursor {
            blocks: &set.blocks,
            b: 0,
            pos: 0,
            cur: set.blocks.first().map_or(0, |b| b.first),
        }
    }

    /// The first item at least `target` (`None` if there is none), moving the cursor to it.
    /// `target` must be at least the previous call's.
    #[inline]
    pub(super) fn seek(&mut self, target: u32) -> Option<u32> {
        let n = self.blocks.len();
        if self.b >= n {
            return None;
        }
        if self.cur >= target {
            return Some(self.cur);
        }
        if self.blocks[self.b].last < target {
            // Gallop over the blocks after this one by their last items, then search the
            // stretch found.
            let b = self.b;
            let mut step = 1;
            while b + step < n && self.blocks[b + step].last < target {
                step *= 2;
            }
            let lo = b + step / 2 + 1;
            let hi = (b + step + 1).min(n);
            self.b = lo + self.blocks[lo..hi].partition_point(|x| x.last < target);
            if self.b >= n {
                return None;
            }
            let blk = &self.blocks[self.b];
            self.cur = blk.first;
            self.pos = 0;
            if self.cur >= target {
                return Some(self.cur);
            }
        }
        // The block's last item is at least `target`: it is in this block.
        let deltas = &self.blocks[self.b].deltas;
        while self.cur < target {
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
        let b = self.blocks.next()?;
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
        for b in &set.blocks {
            assert!(b.first <= b.last && b.deltas.len() <= PACKED_BLOCK_BYTES);
        }
        let all: Vec<u32> = model.iter().copied().collect();
        set.remove_sorted(&all[..all.len() / 2], &mut decoded);
        for v in &all[all.len() / 2..] {
            assert!(set.remove(*v));
        }
        assert!(set.is_empty() && set.blocks.capacity() == 0);
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
        for pair in set.blocks.windows(2) {
            assert!(pair[0].last < pair[1].first && pair[0].last != NONE);
            assert!(
                pair[0].deltas.len() + pair[1].deltas.len() + 5 > PACKED_BLOCK_BYTES / 2,
                "two small neighbours left unmerged"
            );
        }
    }
}
