//! Posting sets: [`PackedSet`], a compressed sorted set of entry ids (a word's postings once
//! it has three or more, a peer's holdings), and [`PostingIter`] over a word's postings.

use super::NONE;
use std::cmp::Ordering;

/// A [`PackedSet`] block splits when its deltas exceed this many bytes: about 75 items of a
/// common word. Block headers then cost under a fifth of a byte per item, and an insert or
/// remove into the middle of a block decodes at most this many bytes.
const PACKED_BLOCK_BYTES: usize = 256;

/// A sorted set of `u32` (entry ids), compressed: sorted blocks, each holding its first and
/// last item and the LEB128 varint deltas of the items after the first. Dense sets (common
/// words; a peer's entries, created together) cost about one byte per item, sparse ones two or
/// three. Blocks split above [`PACKED_BLOCK_BYTES`] and merge with a neighbour below a
/// quarter of it, so an insert or remove decodes one small block; appending past the last
/// item (new ids) needs no decoding at all.
///
/// The blocks are kept in [`Group`]s of at most [`GROUP_BLOCKS`]: a group holds its blocks'
/// headers (12 bytes each) in one vector and their deltas one after another in one byte
/// arena. So a cursor that walks a long list's blocks (an intersection's seeks) reads one
/// stretch of memory, each block's deltas right after the one before, not an allocation per
/// block somewhere in the heap; and a block costs its 12-byte header and no allocation of
/// its own. A change inside a block moves the rest of its group's bytes (a few KiB at most).
/// A set of up to
/// [`GROUP_BLOCKS`] blocks is one group (most sets: one block), else a list of groups
/// ([`Blocks`]), so that no insert or remove of a block moves the whole list (a word in every
/// one of ten million names has about 130,000 blocks).
pub(super) struct PackedSet {
    blocks: Blocks,
    len: usize,
}

/// Most blocks in a [`Group`] of a [`PackedSet`] (about 6 KiB of deltas: what an insert into
/// the group's first block moves at most). (A small one in tests, so that the store's
/// property tests cross groups.)
const GROUP_BLOCKS: usize = if cfg!(test) { 4 } else { 32 };

/// A block's header in its [`Group`]: its first and last items, and where its deltas end in
/// the group's bytes (they start where the block before it ends, or at 0).
#[derive(Clone, Copy, Debug)]
struct Head {
    first: u32,
    last: u32,
    end: u32,
}

/// A run of consecutive blocks of a [`PackedSet`]: their headers, and their deltas one after
/// another in one arena (block `j`'s are `bytes[start(j)..heads[j].end]`).
#[derive(Default)]
struct Group {
    heads: Vec<Head>,
    bytes: Vec<u8>,
}

impl Group {
    /// Its last item (it is not empty; `NONE` while its last block is emptied by
    /// `remove_sorted`, until that call ends).
    #[inline]
    fn last(&self) -> u32 {
        self.heads[self.heads.len() - 1].last
    }

    /// Where block `j`'s deltas start.
    #[inline]
    fn start(&self, j: usize) -> usize {
        if j == 0 {
            0
        } else {
            self.heads[j - 1].end as usize
        }
    }

    /// Block `j`'s deltas.
    #[inline]
    fn deltas(&self, j: usize) -> &[u8] {
        &self.bytes[self.start(j)..self.heads[j].end as usize]
    }

    /// The byte length of block `j`'s deltas.
    #[inline]
    fn block_len(&self, j: usize) -> usize {
        self.heads[j].end as usize - self.start(j)
    }

    /// Replaces `range` of block `j`'s deltas (offsets in them) by `with`, moving the bytes
    /// of the blocks after it.
    fn splice(&mut self, j: usize, range: std::ops::Range<usize>, with: &[u8]) {
        let s = self.start(j);
        if with.len() > range.len() {
            reserve_arena(&mut self.bytes, with.len() - range.len());
        }
        self.bytes
            .splice(s + range.start..s + range.end, with.iter().copied());
        if with.len() != range.len() {
            let (grow, shrink) = (with.len() as u32, range.len() as u32);
            for h in &mut self.heads[j..] {
                h.end = h.end + grow - shrink;
            }
        }
    }

    /// Inserts header `head` at place `j`, its deltas (if any) already in place before
    /// `head.end`.
    fn insert_head(&mut self, j: usize, head: Head) {
        // Grow by a quarter at a time (a `Vec` would start at four and double, most of it
        // unused for the many one- and two-block sets).
        if self.heads.len() == self.heads.capacity() {
            self.heads.reserve_exact((self.heads.len() / 4).max(1));
        }
        self.heads.insert(j, head);
    }

    /// Merges block `l + 1` into block `l` (its deltas follow, after the delta between them).
    fn merge_next(&mut self, l: usize) {
        let right = self.heads[l + 1];
        let mut buf = [0u8; 10];
        let n = put_varint(&mut buf, 0, right.first - self.heads[l].last);
        let at = self.block_len(l);
        self.splice(l, at..at, &buf[..n]);
        let right_end = self.heads[l + 1].end;
        let left = &mut self.heads[l];
        left.last = right.last;
        left.end = right_end;
        self.heads.remove(l + 1);
    }

    /// Splits off the blocks from `at` on into a group of their own.
    fn split_off(&mut self, at: usize) -> Group {
        let cut = self.start(at);
        let mut heads = self.heads.split_off(at);
        for h in &mut heads {
            h.end -= cut as u32;
        }
        let bytes = self.bytes[cut..].to_vec();
        self.bytes.truncate(cut);
        self.bytes.shrink_to(cut + cut / 8);
        self.heads.shrink_to_fit();
        Group { heads, bytes }
    }

    /// Appends the blocks of `right` (all after this group's).
    fn append(&mut self, right: Group) {
        let base = self.bytes.len() as u32;
        self.bytes.extend_from_slice(&right.bytes);
        self.heads.extend(right.heads.iter().map(|h| Head {
            end: h.end + base,
            ..*h
        }));
    }

    /// Gives back most spare room once the bytes held are a quarter of the capacity or less.
    fn trim(&mut self) {
        let (len, cap) = (self.bytes.len(), self.bytes.capacity());
        if cap >= 32 && len * 4 <= cap {
            self.bytes.shrink_to(len * 2);
        }
    }
}

/// Makes room for `grow` more bytes in a group's arena: by half at a time up to a full block
/// (small sets, the many), then an eighth (a long list's groups, a few KiB each), so that
/// appends reallocate rarely and the slack stays small.
fn reserve_arena(v: &mut Vec<u8>, grow: usize) {
    if v.capacity() - v.len() < grow {
        let len = v.len();
        let step = if len < PACKED_BLOCK_BYTES {
            (len / 2).max(8)
        } else {
            len / 8
        };
        v.reserve_exact(grow.max(step));
    }
}

/// The blocks of a [`PackedSet`]: one group while they are at most [`GROUP_BLOCKS`], else
/// groups of at most that many (each non-empty), boxed so that a set costs no more than one
/// group. A block's address is its group and its place in it.
enum Blocks {
    One(Group),
    // Boxed on purpose: the enum is then the size of one group.
    Many(Box<Many>),
}

/// The groups of a [`PackedSet`] of more than one group, and each group's last item in one
/// array beside them: a cursor gallops over the groups by their last items (see
/// [`PackedCursor::seek`]), which are then read from one stretch of memory instead of each
/// from its group's own headers, a pointer chase (a cache miss at 10M entries) per probe.
struct Many {
    groups: Vec<Group>,
    /// `lasts[g]` is group `g`'s last item (kept equal by [`Blocks::refresh_lasts`] after
    /// each change of the set).
    lasts: Vec<u32>,
}

impl Many {
    fn new(groups: Vec<Group>) -> Box<Many> {
        let lasts = groups.iter().map(Group::last).collect();
        Box::new(Many { groups, lasts })
    }
}

/// A block's address in [`Blocks`]: (group, block in the group).
type Addr = (usize, usize);

impl Blocks {
    /// The groups, each non-empty (none for an empty set).
    #[inline]
    fn groups(&self) -> &[Group] {
        match self {
            Blocks::One(v) if v.heads.is_empty() => &[],
            Blocks::One(v) => std::slice::from_ref(v),
            Blocks::Many(many) => &many.groups,
        }
    }

    /// Each group's last item, when there are several groups (empty for one).
    #[inline]
    fn lasts(&self) -> &[u32] {
        match self {
            Blocks::One(_) => &[],
            Blocks::Many(many) => &many.lasts,
        }
    }

    /// Sets `lasts` of groups `range` (clipped to the groups) from their headers.
    fn refresh_lasts(&mut self, range: std::ops::Range<usize>) {
        if let Blocks::Many(many) = self {
            let end = range.end.min(many.groups.len());
            for g in range.start.min(end)..end {
                many.lasts[g] = many.groups[g].last();
            }
        }
    }

    #[inline]
    fn group_mut(&mut self, g: usize) -> &mut Group {
        match self {
            Blocks::One(v) => {
                debug_assert_eq!(g, 0);
                v
            }
            Blocks::Many(many) => &mut many.groups[g],
        }
    }

    #[inline]
    fn is_empty(&self) -> bool {
        matches!(self, Blocks::One(v) if v.heads.is_empty())
    }

    #[inline]
    fn head(&self, (g, j): Addr) -> Head {
        self.groups()[g].heads[j]
    }

    /// The last block's address (the set is not empty).
    fn last_addr(&self) -> Addr {
        let groups = self.groups();
        let g = groups.len() - 1;
        (g, groups[g].heads.len() - 1)
    }

    /// The block that holds or would hold `item`: the last whose first item is ≤ it (or the
    /// first). The set is not empty.
    fn locate(&self, item: u32) -> Addr {
        let groups = self.groups();
        let g = groups
            .partition_point(|grp| grp.heads[0].first <= item)
            .saturating_sub(1);
        let j = groups[g]
            .heads
            .partition_point(|h| h.first <= item)
            .saturating_sub(1);
        (g, j)
    }

    /// Group `g` gained a block: splits it in two halves if it is over [`GROUP_BLOCKS`].
    fn after_group_grow(&mut self, g: usize) {
        if self.groups()[g].heads.len() <= GROUP_BLOCKS {
            return;
        }
        let half = self.groups()[g].heads.len() / 2;
        match self {
            Blocks::One(v) => {
                let right = v.split_off(half);
                let left = std::mem::take(v);
                *self = Blocks::Many(Many::new(vec![left, right]));
            }
            Blocks::Many(many) => {
                let right = many.groups[g].split_off(half);
                many.lasts.insert(g + 1, right.last());
                many.lasts[g] = many.groups[g].last();
                many.groups.insert(g + 1, right);
            }
        }
    }

    /// Group `g` lost blocks: drops it if it is empty, merges it with a neighbour if both are
    /// small, and goes back to one group when one is left.
    fn after_group_shrink(&mut self, g: usize) {
        let Blocks::Many(many) = self else {
            if self.is_empty() {
                *self = Blocks::One(Group::default());
            }
            return;
        };
        let Many { groups, lasts } = &mut **many;
        if groups[g].heads.is_empty() {
            groups.remove(g);
            lasts.remove(g);
        } else if groups[g].heads.len() < GROUP_BLOCKS / 4 {
            let pair = if g + 1 < groups.len() {
                Some(g)
            } else {
                g.checked_sub(1)
            };
            if let Some(l) = pair {
                if groups[l].heads.len() + groups[l + 1].heads.len() <= GROUP_BLOCKS / 2 {
                    let right = groups.remove(l + 1);
                    lasts.remove(l + 1);
                    groups[l].append(right);
                }
            }
        }
        if groups.len() <= 1 {
            let last = groups.pop().unwrap_or_default();
            *self = Blocks::One(last);
        }
    }

    /// Heap bytes of the groups: headers, deltas and the list of groups.
    fn heap_bytes(&self) -> usize {
        let group =
            |g: &Group| g.heads.capacity() * std::mem::size_of::<Head>() + g.bytes.capacity();
        match self {
            Blocks::One(g) => group(g),
            Blocks::Many(many) => {
                many.groups.iter().map(group).sum::<usize>()
                    + many.groups.capacity() * std::mem::size_of::<Group>()
                    + many.lasts.capacity() * 4
                    + std::mem::size_of::<Many>()
            }
        }
    }
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

/// Decodes block `j` of `grp` (its first item, then its deltas) onto `out`.
fn decode_block_into(grp: &Group, j: usize, out: &mut Vec<u32>) {
    let h = grp.heads[j];
    let deltas = grp.deltas(j);
    out.push(h.first);
    let (mut pos, mut cur) = (0, h.first);
    while pos < deltas.len() {
        cur += get_varint(deltas, &mut pos);
        out.push(cur);
    }
}

impl PackedSet {
    /// Heap bytes held (capacities, not lengths).
    pub(super) fn heap_bytes(&self) -> usize {
        self.blocks.heap_bytes()
    }

    pub(super) fn new() -> Self {
        PackedSet {
            blocks: Blocks::One(Group::default()),
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
        let (added, g) = self.insert_in(item);
        if added {
            // (A split of group `g` made group `g + 1`.)
            self.blocks.refresh_lasts(g..g + 2);
        }
        added
    }

    /// Inserts `item` (false if it was there), and the group it went in (the groups' last
    /// items not refreshed).
    fn insert_in(&mut self, item: u32) -> (bool, usize) {
        if self.blocks.is_empty() {
            // Most words have a single block: no room for more until needed.
            self.blocks = Blocks::One(Group {
                heads: vec![Head {
                    first: item,
                    last: item,
                    end: 0,
                }],
                bytes: Vec::new(),
            });
            self.len = 1;
            return (true, 0);
        }
        // New ids are the largest yet, so most inserts append: no search for those.
        let last = self.blocks.last_addr();
        let at = if item > self.blocks.head(last).last {
            last
        } else {
            self.blocks.locate(item)
        };
        let (g, j) = at;
        let grp = self.blocks.group_mut(g);
        let h = grp.heads[j];
        let mut buf = [0u8; 10];
        if item < h.first {
            // Only the first block: the new item becomes its first.
            let n = put_varint(&mut buf, 0, h.first - item);
            grp.splice(j, 0..0, &buf[..n]);
            grp.heads[j].first = item;
        } else if item == h.first || item == h.last {
            return (false, g);
        } else if item > h.last {
            let len = grp.block_len(j);
            if len >= PACKED_BLOCK_BYTES {
                // Appending to a full block starts a new one after it, so that ascending
                // runs of inserts (new ids at the end; entries moving into a tier's run in
                // the middle) end up in full blocks rather than half ones.
                grp.insert_head(
                    j + 1,
                    Head {
                        first: item,
                        last: item,
                        end: h.end,
                    },
                );
                self.blocks.after_group_grow(g);
                self.len += 1;
                return (true, g);
            }
            let n = put_varint(&mut buf, 0, item - h.last);
            grp.splice(j, len..len, &buf[..n]);
            grp.heads[j].last = item;
        } else {
            let deltas = grp.deltas(j);
            let (mut pos, mut prev) = (0, h.first);
            let (start, pos, n) = loop {
                let start = pos;
                let cur = prev + get_varint(deltas, &mut pos);
                match cur.cmp(&item) {
                    Ordering::Equal => return (false, g),
                    Ordering::Greater => {
                        let n = put_varint(&mut buf, 0, item - prev);
                        break (start, pos, put_varint(&mut buf, n, cur - item));
                    }
                    Ordering::Less => prev = cur,
                }
            };
            grp.splice(j, start..pos, &buf[..n]);
        }
        self.len += 1;
        if self.blocks.groups()[g].block_len(j) > PACKED_BLOCK_BYTES {
            self.split(at);
        }
        (true, g)
    }

    /// Splits block `at` in two halves of about equal encoded size.
    fn split(&mut self, (g, j): Addr) {
        let grp = self.blocks.group_mut(g);
        let h = grp.heads[j];
        let deltas = grp.deltas(j);
        let half = deltas.len() / 2;
        let (mut pos, mut prev) = (0, h.first);
        let (start, pos, cur) = loop {
            let start = pos;
            let cur = prev + get_varint(deltas, &mut pos);
            if pos > half {
                break (start, pos, cur);
            }
            prev = cur;
        };
        // The delta that led to `cur` goes: `cur` becomes the right block's first item, its
        // deltas the rest, already in place after the left block's.
        grp.splice(j, start..pos, &[]);
        let end = grp.heads[j].end;
        let left_end = (grp.start(j) + start) as u32;
        grp.heads[j].last = prev;
        grp.heads[j].end = left_end;
        grp.insert_head(
            j + 1,
            Head {
                first: cur,
                last: h.last,
                end,
            },
        );
        self.blocks.after_group_grow(g);
    }

    /// Removes `item`; false if it was not there.
    pub(super) fn remove(&mut self, item: u32) -> bool {
        if self.blocks.is_empty() {
            return false;
        }
        let g = self.blocks.locate(item).0;
        let removed = self.remove_in(item);
        if removed {
            // (Group `g` may have gone, or merged with a neighbour.)
            self.blocks.refresh_lasts(g.saturating_sub(1)..g + 1);
        }
        removed
    }

    /// Removes `item` (false if it was not there; the set is not empty), the groups' last
    /// items not refreshed.
    fn remove_in(&mut self, item: u32) -> bool {
        let at = self.blocks.locate(item);
        let (g, j) = at;
        let grp = self.blocks.group_mut(g);
        let h = grp.heads[j];
        if item < h.first || item > h.last {
            return false;
        }
        if item == h.first {
            if grp.block_len(j) == 0 {
                grp.heads.remove(j);
                self.len -= 1;
                self.blocks.after_group_shrink(g);
                if self.blocks.is_empty() {
                    *self = Self::new();
                }
                return true;
            }
            let mut pos = 0;
            let d = get_varint(grp.deltas(j), &mut pos);
            grp.splice(j, 0..pos, &[]);
            grp.heads[j].first += d;
        } else {
            let deltas = grp.deltas(j);
            let (mut pos, mut prev) = (0, h.first);
            loop {
                let start = pos;
                let cur = prev + get_varint(deltas, &mut pos);
                match cur.cmp(&item) {
                    Ordering::Less => prev = cur,
                    Ordering::Greater => return false,
                    Ordering::Equal if pos == deltas.len() => {
                        grp.splice(j, start..pos, &[]);
                        grp.heads[j].last = prev;
                        break;
                    }
                    Ordering::Equal => {
                        let mut end = pos;
                        let next = cur + get_varint(deltas, &mut end);
                        let mut buf = [0u8; 10];
                        let n = put_varint(&mut buf, 0, next - prev);
                        grp.splice(j, start..end, &buf[..n]);
                        break;
                    }
                }
            }
        }
        self.len -= 1;
        self.after_shrink(at);
        true
    }

    /// Merges block `at` into a neighbour in its group if both are small, and trims its
    /// group's spare capacity.
    fn after_shrink(&mut self, (g, b): Addr) {
        let grp = self.blocks.group_mut(g);
        let mut merged = false;
        if grp.block_len(b) < PACKED_BLOCK_BYTES / 4 {
            let pair = if b + 1 < grp.heads.len() {
                Some(b)
            } else {
                b.checked_sub(1)
            };
            if let Some(l) = pair {
                if grp.block_len(l) + grp.block_len(l + 1) + 5 <= PACKED_BLOCK_BYTES / 2 {
                    grp.merge_next(l);
                    merged = true;
                }
            }
        }
        grp.trim();
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
            let h = self.blocks.head(at);
            if h.last == NONE {
                // Emptied by this call: the item is absent.
                i += 1;
                continue;
            }
            // Items up to this block's last belong here (or nowhere).
            let end = i + items[i..].partition_point(|&x| x <= h.last);
            if end == i {
                i += 1;
                continue;
            }
            lo = lo.min(at);
            hi = hi.max(at);
            let grp = self.blocks.group_mut(at.0);
            let j = at.1;
            decoded.clear();
            decode_block_into(grp, j, decoded);
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
            let len = grp.block_len(j);
            if decoded.is_empty() {
                // Marked empty by `last == NONE` (no item is `NONE`); `first` stays, so that
                // the blocks stay ordered by it for `locate`.
                grp.splice(j, 0..len, &[]);
                grp.heads[j].last = NONE;
                emptied = true;
            } else if decoded.len() < before {
                // The fewer items' deltas take no more bytes than before (a delta over a
                // removed item is at most the two it replaces): written over the old ones
                // in place, the rest of the block's bytes then dropped.
                let s = grp.start(j);
                let mut at = s;
                let mut buf = [0u8; 10];
                for pair in decoded.windows(2) {
                    let n = put_varint(&mut buf, 0, pair[1] - pair[0]);
                    grp.bytes[at..at + n].copy_from_slice(&buf[..n]);
                    at += n;
                }
                grp.splice(j, at - s..len, &[]);
                grp.heads[j].first = decoded[0];
                grp.heads[j].last = decoded[decoded.len() - 1];
                touched_small |= grp.block_len(j) < PACKED_BLOCK_BYTES / 4;
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
                    (hi.1 + 2).min(group.heads.len())
                } else {
                    group.heads.len()
                };
                merge_small_in(group, start..end);
                group.trim();
                self.blocks.after_group_shrink(g);
            }
            if self.blocks.is_empty() {
                *self = Self::new();
            }
        } else if lo.0 != usize::MAX {
            for g in lo.0..=hi.0 {
                self.blocks.group_mut(g).trim();
            }
        }
        if lo.0 != usize::MAX {
            // (Groups from `lo.0` on may have gone, or merged with a neighbour.)
            self.blocks.refresh_lasts(lo.0.saturating_sub(1)..hi.0 + 1);
        }
    }

    /// The items from the first one at least `from` on, ascending: blocks before it are
    /// skipped without decoding.
    pub(super) fn iter_from(&self, from: u32) -> impl Iterator<Item = u32> + '_ {
        let groups = self.blocks.groups();
        // From the start (most searches) without a search over the blocks.
        let (g, b) = match groups.first() {
            Some(first) if from > first.heads[0].last => self.blocks.locate(from),
            _ => (0, 0),
        };
        let (heads, bytes, pos): (&[Head], &[u8], usize) = match groups.get(g) {
            Some(grp) => (&grp.heads[b..], &grp.bytes, grp.start(b)),
            None => (&[], &[], 0),
        };
        PackedIter {
            groups: groups.get(g + 1..).unwrap_or(&[]).iter(),
            heads: heads.iter(),
            bytes,
            end: pos,
            pos,
            cur: 0,
        }
        .skip_while(move |&x| x < from)
    }

    #[inline]
    pub(super) fn iter(&self) -> PackedIter<'_> {
        PackedIter {
            groups: self.blocks.groups().iter(),
            heads: [].iter(),
            bytes: &[],
            end: 0,
            pos: 0,
            cur: 0,
        }
    }
}

/// Drops the emptied blocks of `window` in `grp` and merges each run of adjacent small
/// blocks in it.
fn merge_small_in(grp: &mut Group, window: std::ops::Range<usize>) {
    let (mut r, mut end) = (window.start, window.end);
    while r < end {
        if grp.heads[r].last == NONE {
            // No deltas left: its header alone goes.
            grp.heads.remove(r);
            end -= 1;
            continue;
        }
        if r > window.start && grp.block_len(r - 1) + grp.block_len(r) + 5 <= PACKED_BLOCK_BYTES / 2
        {
            grp.merge_next(r - 1);
            end -= 1;
            continue;
        }
        r += 1;
    }
}

/// A cursor over a [`PackedSet`] that seeks forward: [`PackedCursor::seek`] gives the first
/// item at least a target, for targets that never decrease. Blocks wholly before a target are
/// skipped by their headers without touching their deltas (galloping over the groups' and
/// then the blocks' `last` items, then a binary search), so intersecting a short list with a
/// long one costs about the short one's length times a logarithm and a part of a block, not
/// the long one's length.
pub(super) struct PackedCursor<'a> {
    groups: &'a [Group],
    /// The groups' last items (empty for a set of one group).
    lasts: &'a [u32],
    /// The group of `cur` (`groups.len()` once past the end).
    g: usize,
    /// The block headers of group `g`.
    heads: &'a [Head],
    /// The deltas of group `g`.
    bytes: &'a [u8],
    /// The block of `cur` in its group.
    b: usize,
    /// Where the delta after `cur` starts in `bytes`.
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
        let (heads, bytes): (&[Head], &[u8]) =
            groups.first().map_or((&[], &[]), |g| (&g.heads, &g.bytes));
        PackedCursor {
            groups,
            lasts: set.blocks.lasts(),
            g: 0,
            heads,
            bytes,
            b: 0,
            pos: 0,
            cur: heads.first().map_or(0, |h| h.first),
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
        if self.heads[self.b].last < target {
            if self.heads[self.heads.len() - 1].last < target {
                // Past this group: gallop over the groups after it by their last items, read
                // from the array of them.
                self.g = match self.lasts {
                    [] => self.groups.len(),
                    lasts => gallop(lasts, self.g, |&last| last < target),
                };
                if self.g >= self.groups.len() {
                    return None;
                }
                self.heads = &self.groups[self.g].heads;
                self.bytes = &self.groups[self.g].bytes;
                self.b = 0;
            }
            // The group's last item is at least `target`: gallop over its blocks after this
            // one by their last items.
            if self.heads[self.b].last < target {
                self.b = gallop(self.heads, self.b, |h| h.last < target);
            }
            let h = self.heads[self.b];
            self.pos = if self.b == 0 {
                0
            } else {
                self.heads[self.b - 1].end as usize
            };
            // The next block's deltas follow this one's: start loading their first line
            // now, so that its miss overlaps this block's work (an intersection's seeks
            // walk a long list's blocks nearly one after another).
            crate::sys::cache::prefetch(self.bytes.get(h.end as usize..).unwrap_or(&[]));
            self.cur = h.first;
            if self.cur >= target {
                return Some(self.cur);
            }
        }
        // The block's last item is at least `target`: it is in this block.
        let deltas = &self.bytes[..self.heads[self.b].end as usize];
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
    /// The groups after the one of `bytes`.
    groups: std::slice::Iter<'a, Group>,
    /// The block headers after the current block's, in its group.
    heads: std::slice::Iter<'a, Head>,
    /// The current group's deltas.
    bytes: &'a [u8],
    /// Where the current block's deltas end in `bytes` (the next block's start).
    end: usize,
    pos: usize,
    cur: u32,
}

impl Iterator for PackedIter<'_> {
    type Item = u32;

    #[inline]
    fn next(&mut self) -> Option<u32> {
        if self.pos < self.end {
            self.cur += get_varint(self.bytes, &mut self.pos);
            return Some(self.cur);
        }
        let h = loop {
            match self.heads.next() {
                Some(h) => break h,
                None => {
                    let grp = self.groups.next()?;
                    self.heads = grp.heads.iter();
                    self.bytes = &grp.bytes;
                    self.pos = 0;
                }
            }
        };
        self.end = h.end as usize;
        self.cur = h.first;
        Some(h.first)
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
        for (b, _) in blocks_of(set) {
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
        check_shape(&set);
        let all: Vec<u32> = model.iter().copied().collect();
        set.remove_sorted(&all[..all.len() / 2], &mut decoded);
        for v in &all[all.len() / 2..] {
            assert!(set.remove(*v));
        }
        assert!(
            set.is_empty()
                && matches!(&set.blocks, Blocks::One(v) if v.heads.capacity() == 0 && v.bytes.capacity() == 0)
        );
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
            for j in 1..group.heads.len() {
                assert!(
                    group.block_len(j - 1) + group.block_len(j) + 5 > PACKED_BLOCK_BYTES / 2,
                    "two small neighbours left unmerged"
                );
            }
        }
    }

    #[test]
    fn a_set_costs_one_group_and_a_count() {
        assert_eq!(std::mem::size_of::<Blocks>(), std::mem::size_of::<Group>());
        assert_eq!(std::mem::size_of::<Head>(), 12);
        assert_eq!(std::mem::size_of::<Option<PackedSet>>(), 56);
    }

    /// Every block of `set` in order: its header and its deltas.
    fn blocks_of(set: &PackedSet) -> Vec<(Head, &[u8])> {
        set.blocks
            .groups()
            .iter()
            .flat_map(|g| (0..g.heads.len()).map(move |j| (g.heads[j], g.deltas(j))))
            .collect()
    }

    /// Checks a set's shape: its blocks ordered, none emptied, within their size, each one's
    /// deltas ending on its last item; each group's headers covering its bytes exactly; its
    /// groups non-empty and within their size, and more than one unless it is one group.
    fn check_shape(set: &PackedSet) {
        let groups = set.blocks.groups();
        if let Blocks::Many(many) = &set.blocks {
            assert!(groups.len() >= 2, "a single group is kept as `One`");
            let lasts: Vec<u32> = groups.iter().map(Group::last).collect();
            assert_eq!(many.lasts, lasts, "the array of last items is the groups'");
        }
        for group in groups {
            assert!(!group.heads.is_empty() && group.heads.len() <= GROUP_BLOCKS);
            assert_eq!(
                group.heads[group.heads.len() - 1].end as usize,
                group.bytes.len()
            );
            for pair in group.heads.windows(2) {
                assert!(pair[0].end <= pair[1].end);
            }
        }
        let blocks = blocks_of(set);
        for (b, deltas) in &blocks {
            assert!(b.first <= b.last && b.last != NONE);
            assert!(deltas.len() <= PACKED_BLOCK_BYTES);
            let (mut pos, mut cur) = (0, b.first);
            while pos < deltas.len() {
                let d = get_varint(deltas, &mut pos);
                assert!(d >= 1);
                cur += d;
            }
            assert_eq!(cur, b.last, "a block's deltas end on its last item");
        }
        for pair in blocks.windows(2) {
            assert!(pair[0].0.last < pair[1].0.first);
        }
        assert_eq!(set.iter().count(), set.len());
    }

    /// Reads from any item on (`iter_from`, a cursor's seek) agree with a model while a set
    /// grows past one group of blocks, shrinks back to one group and grows again, with
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
                // (Among others, that the groups' last items stay those of their headers.)
                check_shape(&set);
            }
            assert!(matches!(set.blocks, Blocks::One(_)), "back to one group");
            assert!(set.iter().eq(model.iter().copied()));
        }
    }
}
