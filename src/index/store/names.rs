//! The name arena: length-prefixed byte strings back to back in chunks of 1 MiB, addressed by
//! `u32` offsets. It holds the entries' (encoded) names and the words' texts.

/// An arena is compacted only once its garbage is at least this big (tiny in tests, so that
/// the property test exercises compaction).
const COMPACT_MIN_BYTES: usize = if cfg!(test) { 16 } else { 1 << 20 };

/// Bytes per chunk of a [`Names`] arena, as a power of two: 1 MiB (32 KiB in tests, so that
/// they cross chunks with fewer names).
const ARENA_CHUNK_SHIFT: u32 = if cfg!(test) { 15 } else { 20 };
const ARENA_CHUNK_BYTES: usize = 1 << ARENA_CHUNK_SHIFT;
const ARENA_CHUNK_MASK: usize = ARENA_CHUNK_BYTES - 1;
/// The first chunk's first allocation (it doubles from there).
const FIRST_CHUNK_BYTES: usize = 4096;
/// The longest record: a header and a name of under 2^14 bytes (names are at most
/// [`MAX_NAME_BYTES`](super::MAX_NAME_BYTES), a word's text is shorter than its name's
/// fold).
const MAX_RECORD_BYTES: usize = 2 + (1 << 14) - 1;
const _: () = assert!(MAX_RECORD_BYTES <= ARENA_CHUNK_BYTES);
/// The default cap: the `u32` offsets' limit, less the most padding the chunks can hold (a
/// record's worth each), so that every record it lets in has a `u32` offset.
const DEFAULT_CAP: usize =
    u32::MAX as usize - ((u32::MAX as usize >> ARENA_CHUNK_SHIFT) + 1) * MAX_RECORD_BYTES;

/// Every indexed name, back to back in chunks of [`ARENA_CHUNK_BYTES`]: a record is the name's
/// length as a one- or two-byte varint (names are at most [`MAX_NAME_BYTES`](super::MAX_NAME_BYTES)), then its bytes. Entries
/// refer to a record by its `u32` offset (chunk and place in it). This costs one byte per name
/// over its text, rather than a 16-byte pointer plus malloc's per-chunk overhead for a
/// `Box<str>` per name.
///
/// A record never spans two chunks: one that does not fit the rest of the last chunk starts
/// the next, and the bytes skipped are *padding* (under one record per chunk of a megabyte).
/// A full chunk never moves, so the arena grows without copying what it holds (one vector of
/// hundreds of megabytes, grown by a sixteenth, was a copy of megabytes on the reactor
/// thread once glibc carved it from its heap). The first chunk grows by doubling, so a small
/// arena stays small.
///
/// A freed record becomes garbage; a later name of the same length reuses it (exact-length
/// free lists, so steady churn creates no new garbage), and once garbage is a third of the
/// arena the [`Arena`] around it moves the live records to a fresh one, a step at a time.
///
/// The arena's records (padding left out) take at most `cap` bytes (by default the `u32`
/// offsets' limit, less the most the padding can take). What may not fit is refused before
/// anything is stored: an owner [`Names::reserve`]s room when it accepts a name and
/// [`Names::push`]es it later, maybe in another call, into room nothing else can take.
pub(super) struct Names {
    /// Every chunk but the last is full (up to its padding).
    chunks: Vec<Vec<u8>>,
    /// The offset the next record goes to: the bytes the arena spans, padding included.
    len: usize,
    /// Bytes skipped at the ends of chunks.
    padding: usize,
    /// Bytes in freed records.
    garbage: usize,
    /// `free[len]`: offsets of freed records of names of `len` bytes.
    free: Vec<Vec<u32>>,
    /// Most bytes the records may take (padding left out).
    pub(super) cap: usize,
    /// Bytes reserved for records not pushed yet.
    reserved: usize,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            chunks: Vec::new(),
            len: 0,
            padding: 0,
            garbage: 0,
            free: Vec::new(),
            cap: DEFAULT_CAP,
            reserved: 0,
        }
    }
}

impl Names {
    /// Heap bytes held (the arena's capacity and the free lists).
    pub(super) fn heap_bytes(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum::<usize>()
            + self.chunks.capacity() * std::mem::size_of::<Vec<u8>>()
            + self.free.iter().map(|f| f.capacity() * 4).sum::<usize>()
    }

    /// Bytes of the record of a name of `name_len` bytes.
    #[inline]
    pub(super) fn record_len(name_len: usize) -> usize {
        Self::header_len(name_len) + name_len
    }

    #[inline]
    fn header_len(name_len: usize) -> usize {
        if name_len < 0x80 {
            1
        } else {
            2
        }
    }

    /// The name length and where its bytes start, for the record at `at`.
    #[inline]
    fn decode_header(bytes: &[u8], at: usize) -> (usize, usize) {
        let b0 = bytes[at];
        if b0 < 0x80 {
            (usize::from(b0), at + 1)
        } else {
            (
                usize::from(b0 & 0x7f) | usize::from(bytes[at + 1]) << 7,
                at + 2,
            )
        }
    }

    #[inline]
    pub(super) fn get(&self, at: u32) -> &[u8] {
        let chunk = &self.chunks[(at >> ARENA_CHUNK_SHIFT) as usize];
        let (len, start) = Self::decode_header(chunk, at as usize & ARENA_CHUNK_MASK);
        &chunk[start..start + len]
    }

    /// Writes the record of `name` over the record of a name of the same length at `at`.
    fn write(&mut self, at: usize, name: &[u8]) {
        let chunk = &mut self.chunks[at >> ARENA_CHUNK_SHIFT];
        let i = at & ARENA_CHUNK_MASK;
        let head = Self::header_len(name.len());
        Self::header(name.len(), &mut chunk[i..i + head]);
        chunk[i + head..i + head + name.len()].copy_from_slice(name);
    }

    /// Writes the header of a name of `n` bytes to `out` (its [`Names::header_len`] bytes).
    #[inline]
    fn header(n: usize, out: &mut [u8]) {
        if n < 0x80 {
            out[0] = n as u8;
        } else {
            out[0] = (n as u8 & 0x7f) | 0x80;
            out[1] = (n >> 7) as u8;
        }
    }

    /// Reserves room for `bytes` more bytes of records, beside what the arena spans and what
    /// is reserved already; false (nothing reserved) if they would take it past `cap`.
    pub(super) fn reserve(&mut self, bytes: usize) -> bool {
        let fits = self.has_room(bytes);
        if fits {
            self.reserved += bytes;
        }
        fits
    }

    /// Whether [`Names::reserve`] would reserve `bytes`.
    #[inline]
    pub(super) fn has_room(&self, bytes: usize) -> bool {
        self.len - self.padding + self.reserved + bytes <= self.cap
    }

    /// Gives back what is left of the reserved room (a reservation may be an upper bound).
    pub(super) fn release(&mut self) {
        self.reserved = 0;
    }

    /// Bytes reserved and not pushed yet.
    pub(super) fn reserved(&self) -> usize {
        self.reserved
    }

    /// Stores `name` in room [`Names::reserve`]d for it; returns its record's offset.
    pub(super) fn push(&mut self, name: &[u8]) -> u32 {
        self.reserved = self.reserved.saturating_sub(Self::record_len(name.len()));
        self.store(name)
    }

    /// Moves the name at `at` to a record holding `name` instead, if there is room for it
    /// outside the reserved room; else leaves it and returns `None`.
    pub(super) fn replace(&mut self, at: u32, name: &[u8]) -> Option<u32> {
        let reuse = self.free.get(name.len()).is_some_and(|f| !f.is_empty());
        if !reuse && !self.has_room(Self::record_len(name.len())) {
            return None;
        }
        self.free(at);
        Some(self.store(name))
    }

    fn store(&mut self, name: &[u8]) -> u32 {
        assert!(name.len() < 1 << 14, "the length fits the two-byte header");
        let rec_len = Self::record_len(name.len());
        if let Some(at) = self.free.get_mut(name.len()).and_then(Vec::pop) {
            self.garbage -= rec_len;
            self.write(at as usize, name);
            return at;
        }
        debug_assert!(
            self.len - self.padding + rec_len <= self.cap,
            "a record within its reserved room"
        );
        let mut at = self.len;
        let off = at & ARENA_CHUNK_MASK;
        if off != 0 && off + rec_len > ARENA_CHUNK_BYTES {
            // The record would span two chunks: it starts the next.
            self.padding += ARENA_CHUNK_BYTES - off;
            at += ARENA_CHUNK_BYTES - off;
        }
        let at32 = u32::try_from(at).expect("records start below the cap");
        if at >> ARENA_CHUNK_SHIFT == self.chunks.len() {
            let size = if self.chunks.is_empty() {
                FIRST_CHUNK_BYTES
            } else {
                ARENA_CHUNK_BYTES
            };
            self.chunks.push(Vec::with_capacity(size));
        }
        let chunk = self.chunks.last_mut().expect("a chunk for the record");
        if chunk.capacity() - chunk.len() < rec_len {
            // The first chunk, growing: double it, up to the chunk size.
            let want = (2 * chunk.capacity())
                .max(chunk.len() + rec_len)
                .min(ARENA_CHUNK_BYTES);
            chunk.reserve_exact(want - chunk.len());
        }
        let mut head = [0; 2];
        Self::header(name.len(), &mut head);
        chunk.extend_from_slice(&head[..Self::header_len(name.len())]);
        chunk.extend_from_slice(name);
        self.len = at + rec_len;
        at32
    }

    pub(super) fn free(&mut self, at: u32) {
        let n = self.get(at).len();
        self.garbage += Self::header_len(n) + n;
        if self.free.len() <= n {
            self.free.resize_with(n + 1, Vec::new);
        }
        self.free[n].push(at);
    }

    /// Whether garbage is a third of the arena (an eighth once it spans most of its cap, where
    /// garbage is room that names are refused for), and at least [`COMPACT_MIN_BYTES`].
    pub(super) fn needs_compaction(&self) -> bool {
        let records = self.len - self.padding;
        let share = if records > self.cap - self.cap / 8 {
            8
        } else {
            3
        };
        self.garbage >= COMPACT_MIN_BYTES && self.garbage * share > records
    }

    /// Releases every record and the memory, keeping the cap and the reserved room.
    pub(super) fn clear(&mut self) {
        *self = Names {
            cap: self.cap,
            reserved: self.reserved,
            ..Names::default()
        };
    }

    /// Bytes the arena spans, garbage included.
    #[cfg(test)]
    pub(super) fn spanned(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    pub(super) fn garbage(&self) -> usize {
        self.garbage
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.chunks.iter().map(Vec::capacity).sum()
    }
}

/// Owners (entries or words) whose records a compaction step moves.
pub(super) const COMPACT_STEP_OWNERS: usize = if cfg!(test) { 3 } else { 2_048 };

/// A [`Names`] arena whose records each belong to one owner id (an entry, a word), compacted
/// a step at a time rather than in one pass (one pass sorted and moved every live record: a
/// pause of hundreds of milliseconds at ten million names).
///
/// A compaction starts a fresh arena and moves the records into it in owner-id order,
/// [`COMPACT_STEP_OWNERS`] owners a step; meanwhile the record of an owner below the cursor
/// is in the new arena, any other in the old one, which goes once the cursor has passed
/// every owner (its chunks and free lists freed a few a step, as freeing hundreds of
/// megabytes at once would take milliseconds). Records stored meanwhile go to the arena their owner's id says (an owner
/// created past the cursor is moved when the cursor comes). The room an owner reserves is
/// reserved in both arenas while a compaction runs, so a reserved record fits whichever it
/// goes to: what was accepted is never refused later.
#[derive(Default)]
pub(super) struct Arena {
    /// The records of owners below `cursor` while compacting; all of them otherwise.
    cur: Names,
    /// While compacting: the old arena, holding the records of owners from `cursor` on.
    old: Option<Names>,
    cursor: u32,
    /// The chunks and free lists of the last compaction's old arena, not freed yet.
    retired: (Vec<Vec<u8>>, Vec<Vec<u32>>),
}

/// Chunks (or free lists) of a compacted arena freed per step.
const FREE_PER_STEP: usize = 4;

impl Arena {
    /// The arena holding `owner`'s record.
    #[inline]
    fn of(&self, owner: u32) -> &Names {
        match &self.old {
            Some(old) if owner >= self.cursor => old,
            _ => &self.cur,
        }
    }

    #[inline]
    fn of_mut(&mut self, owner: u32) -> &mut Names {
        match &mut self.old {
            Some(old) if owner >= self.cursor => old,
            _ => &mut self.cur,
        }
    }

    /// Heap bytes held (both arenas while compacting).
    pub(super) fn heap_bytes(&self) -> usize {
        self.cur.heap_bytes()
            + self.old.as_ref().map_or(0, Names::heap_bytes)
            + self.retired.0.iter().map(Vec::capacity).sum::<usize>()
            + self
                .retired
                .1
                .iter()
                .map(|l| l.capacity() * 4)
                .sum::<usize>()
    }

    /// `owner`'s record at `at`.
    #[inline]
    pub(super) fn get(&self, owner: u32, at: u32) -> &[u8] {
        self.of(owner).get(at)
    }

    /// Reserves room for `bytes` of records (see [`Names::reserve`]), in both arenas while
    /// compacting.
    pub(super) fn reserve(&mut self, bytes: usize) -> bool {
        if !self.has_room(bytes) {
            return false;
        }
        self.cur.reserve(bytes);
        if let Some(old) = &mut self.old {
            old.reserve(bytes);
        }
        true
    }

    /// Whether [`Arena::reserve`] would reserve `bytes`.
    pub(super) fn has_room(&self, bytes: usize) -> bool {
        self.cur.has_room(bytes) && self.old.as_ref().map_or(true, |o| o.has_room(bytes))
    }

    /// Gives back what is left of the reserved room.
    pub(super) fn release(&mut self) {
        self.cur.release();
        if let Some(old) = &mut self.old {
            old.release();
        }
    }

    /// Bytes reserved and not pushed yet.
    pub(super) fn reserved(&self) -> usize {
        self.cur.reserved()
    }

    /// Stores `owner`'s record `name` in room reserved for it; returns its offset.
    pub(super) fn push(&mut self, owner: u32, name: &[u8]) -> u32 {
        let at = self.of_mut(owner).push(name);
        // The same room was reserved in the other arena too.
        let len = Names::record_len(name.len());
        match &mut self.old {
            Some(_) if owner >= self.cursor => {
                self.cur.reserved = self.cur.reserved.saturating_sub(len);
            }
            Some(old) => old.reserved = old.reserved.saturating_sub(len),
            None => {}
        }
        at
    }

    /// Moves `owner`'s record at `at` to one holding `name` (see [`Names::replace`]).
    pub(super) fn replace(&mut self, owner: u32, at: u32, name: &[u8]) -> Option<u32> {
        self.of_mut(owner).replace(at, name)
    }

    /// Frees `owner`'s record at `at`.
    pub(super) fn free(&mut self, owner: u32, at: u32) {
        self.of_mut(owner).free(at);
    }

    /// Releases every record and the memory (no owner is left), keeping the cap and the
    /// reserved room.
    pub(super) fn clear(&mut self) {
        self.cur.clear();
        self.old = None;
        self.cursor = 0;
        self.retired = Default::default();
    }

    /// Whether a compaction is under way (or the old arena is still being freed).
    pub(super) fn is_compacting(&self) -> bool {
        self.old.is_some() || !self.retired.0.is_empty() || !self.retired.1.is_empty()
    }

    /// Starts a compaction if none is under way and the garbage is due one (see
    /// [`Names::needs_compaction`]); the owner then moves the records a step at a time:
    /// [`Arena::step_owners`], [`Arena::move_record`] for each live one, [`Arena::end_step`].
    pub(super) fn start_compaction_if_due(&mut self) {
        if self.old.is_some() || !self.cur.needs_compaction() {
            return;
        }
        let fresh = Names {
            cap: self.cur.cap,
            reserved: self.cur.reserved,
            ..Names::default()
        };
        self.old = Some(std::mem::replace(&mut self.cur, fresh));
        self.cursor = 0;
    }

    /// The owners whose records the next compaction step moves (none if no compaction is
    /// under way): from the cursor on, at most [`COMPACT_STEP_OWNERS`], below `owners` (one
    /// more than the largest owner id).
    pub(super) fn step_owners(&self, owners: u32) -> std::ops::Range<u32> {
        if self.old.is_none() {
            return 0..0;
        }
        let end = owners.min(self.cursor.saturating_add(COMPACT_STEP_OWNERS as u32));
        self.cursor..end.max(self.cursor)
    }

    /// Moves the record at `at` of an owner of the step from the old arena; returns its new
    /// offset.
    pub(super) fn move_record(&mut self, at: u32) -> u32 {
        let old = self.old.as_ref().expect("a compaction is under way");
        self.cur.store(old.get(at))
    }

    /// The step's owners are moved: the cursor passes them; after the last owner (below
    /// `owners`) the old arena is retired. Each step frees a few retired chunks and lists.
    pub(super) fn end_step(&mut self, step: std::ops::Range<u32>, owners: u32) {
        let (chunks, lists) = &mut self.retired;
        chunks.truncate(chunks.len().saturating_sub(FREE_PER_STEP));
        lists.truncate(lists.len().saturating_sub(FREE_PER_STEP));
        if self.old.is_none() {
            return;
        }
        self.cursor = step.end;
        if self.cursor >= owners {
            if let Some(old) = self.old.take() {
                self.retired.0.extend(old.chunks);
                self.retired
                    .1
                    .extend(old.free.into_iter().filter(|l| l.capacity() > 0));
            }
            self.cursor = 0;
        }
    }

    /// Sets the cap of both arenas (tests).
    #[cfg(test)]
    pub(super) fn set_cap(&mut self, bytes: usize) {
        self.cur.cap = bytes;
        if let Some(old) = &mut self.old {
            old.cap = bytes;
        }
    }

    /// Heap capacity of both arenas (tests).
    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.cur.capacity() + self.old.as_ref().map_or(0, Names::capacity)
    }

    /// The arena new records of low owners go to (tests).
    #[cfg(test)]
    pub(super) fn current(&self) -> &Names {
        &self.cur
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone)]
    enum Op {
        /// Store a name of this length (a long one now and then, so that records cross the
        /// end of a chunk).
        Push(usize, u8),
        /// Free the `i % live`th live record.
        Free(usize),
        /// Replace the `i % live`th live record with a name of this length.
        Replace(usize, usize, u8),
    }

    fn name(len: usize, b: u8) -> Vec<u8> {
        (0..len).map(|i| b.wrapping_add(i as u8)).collect()
    }

    proptest! {
        /// The chunked arena reads back what was stored at every offset it gave, through
        /// frees, reuse and replacements; no record spans two chunks; what it reserves is
        /// counted without its padding.
        #[test]
        fn the_arena_reads_back_every_record(ops in prop::collection::vec(
            prop_oneof![
                6 => (prop_oneof![9 => 0usize..200, 1 => 1_000usize..16_000], any::<u8>())
                    .prop_map(|(l, b)| Op::Push(l, b)),
                2 => any::<usize>().prop_map(Op::Free),
                1 => (any::<usize>(), 0usize..300, any::<u8>())
                    .prop_map(|(i, l, b)| Op::Replace(i, l, b)),
            ],
            0..300,
        )) {
            let mut a = Names::default();
            let mut live: Vec<(u32, Vec<u8>)> = Vec::new();
            for op in ops {
                match op {
                    Op::Push(len, b) => {
                        let n = name(len, b);
                        prop_assert!(a.reserve(Names::record_len(len)));
                        let at = a.push(&n);
                        live.push((at, n));
                    }
                    Op::Free(i) if !live.is_empty() => {
                        let (at, _) = live.swap_remove(i % live.len());
                        a.free(at);
                    }
                    Op::Replace(i, len, b) if !live.is_empty() => {
                        let i = i % live.len();
                        let n = name(len, b);
                        let at = a.replace(live[i].0, &n).expect("room below the cap");
                        live[i] = (at, n);
                    }
                    _ => {}
                }
                for (at, n) in &live {
                    prop_assert_eq!(a.get(*at), &n[..]);
                    let start = *at as usize & ARENA_CHUNK_MASK;
                    prop_assert!(start + Names::record_len(n.len()) <= ARENA_CHUNK_BYTES);
                }
                let records = live.iter().map(|(_, n)| Names::record_len(n.len())).sum::<usize>();
                prop_assert_eq!(a.spanned() - a.padding - a.garbage(), records);
                prop_assert!(a.padding <= a.chunks.len().saturating_sub(1) * MAX_RECORD_BYTES);
            }
            // Room is counted without the padding: exactly what is left below the cap.
            let used = a.spanned() - a.padding;
            a.cap = used + 100;
            prop_assert!(!a.has_room(101));
            prop_assert!(a.reserve(100));
            prop_assert!(!a.reserve(1));
        }
    }

    /// Many small names fill several chunks, each but the last allocated at its full size and
    /// never moved: a record's bytes stay where they were stored.
    #[test]
    fn full_chunks_never_move() {
        let mut a = Names::default();
        let mut offsets = Vec::new();
        for i in 0..10_000u32 {
            let n = format!("name number {i}");
            assert!(a.reserve(Names::record_len(n.len())));
            offsets.push(a.push(n.as_bytes()));
        }
        assert!(a.chunks.len() > 4);
        let first: *const u8 = a.get(offsets[0]).as_ptr();
        for i in 10_000..20_000u32 {
            let n = format!("name number {i}");
            assert!(a.reserve(Names::record_len(n.len())));
            offsets.push(a.push(n.as_bytes()));
        }
        assert_eq!(a.get(offsets[0]).as_ptr(), first);
        for (i, &at) in offsets.iter().enumerate() {
            assert_eq!(a.get(at), format!("name number {i}").as_bytes());
        }
        // Slack: the last chunk's unused room at most.
        assert!(a.capacity() < a.spanned() + ARENA_CHUNK_BYTES);
    }
}
