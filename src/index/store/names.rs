//! The name arena: length-prefixed byte strings back to back, addressed by `u32` offsets. It
//! holds the entries' (encoded) names and the words' texts.

use super::table::reserve_gently;

/// An arena is compacted only once its garbage is at least this big (tiny in tests, so that
/// the property test exercises compaction).
const COMPACT_MIN_BYTES: usize = if cfg!(test) { 16 } else { 1 << 20 };

/// Every indexed name, back to back in one byte vector: a record is the name's length as a
/// one- or two-byte varint (names are at most [`MAX_NAME_BYTES`](super::MAX_NAME_BYTES)), then its bytes. Entries
/// refer to a record by its `u32` offset. This costs one byte per name over its text, rather
/// than a 16-byte pointer plus malloc's per-chunk overhead for a `Box<str>` per name.
///
/// A freed record becomes garbage; a later name of the same length reuses it (exact-length
/// free lists, so steady churn creates no new garbage), and once garbage is a third of the
/// arena the [`Arena`] around it moves the live records to a fresh one, a step at a time.
///
/// The arena spans at most `cap` bytes (the `u32` offsets' limit). What may not fit is refused
/// before anything is stored: an owner [`Names::reserve`]s room when it accepts a name and
/// [`Names::push`]es it later, maybe in another call, into room nothing else can take.
pub(super) struct Names {
    bytes: Vec<u8>,
    /// Bytes in freed records.
    garbage: usize,
    /// `free[len]`: offsets of freed records of names of `len` bytes.
    free: Vec<Vec<u32>>,
    /// Most bytes the arena may span.
    pub(super) cap: usize,
    /// Bytes reserved for records not pushed yet.
    reserved: usize,
}

impl Default for Names {
    fn default() -> Self {
        Names {
            bytes: Vec::new(),
            garbage: 0,
            free: Vec::new(),
            cap: u32::MAX as usize,
            reserved: 0,
        }
    }
}

impl Names {
    /// Heap bytes held (the arena's capacity and the free lists).
    pub(super) fn heap_bytes(&self) -> usize {
        self.bytes.capacity() + self.free.iter().map(|f| f.capacity() * 4).sum::<usize>()
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
        let (len, start) = Self::decode_header(&self.bytes, at as usize);
        &self.bytes[start..start + len]
    }

    fn write(&mut self, at: usize, name: &[u8]) {
        let n = name.len();
        let mut i = at;
        if n < 0x80 {
            self.bytes[i] = n as u8;
            i += 1;
        } else {
            self.bytes[i] = (n as u8 & 0x7f) | 0x80;
            self.bytes[i + 1] = (n >> 7) as u8;
            i += 2;
        }
        self.bytes[i..i + n].copy_from_slice(name);
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
        self.bytes.len() + self.reserved + bytes <= self.cap
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
        debug_assert!(name.len() < 1 << 14, "the length fits the two-byte header");
        let rec_len = Self::record_len(name.len());
        if let Some(at) = self.free.get_mut(name.len()).and_then(Vec::pop) {
            self.garbage -= rec_len;
            self.write(at as usize, name);
            return at;
        }
        let at = self.bytes.len();
        debug_assert!(
            at + rec_len <= self.cap,
            "a record within its reserved room"
        );
        let at32 = u32::try_from(at).expect("records start below the cap");
        if self.bytes.capacity() - self.bytes.len() < rec_len {
            crate::index::worktrace::time("grow arena", || {
                reserve_gently(&mut self.bytes, rec_len)
            });
        }
        self.bytes.resize(at + rec_len, 0);
        self.write(at, name);
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
        let share = if self.bytes.len() > self.cap - self.cap / 8 {
            8
        } else {
            3
        };
        self.garbage >= COMPACT_MIN_BYTES && self.garbage * share > self.bytes.len()
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
        self.bytes.len()
    }

    #[cfg(test)]
    pub(super) fn garbage(&self) -> usize {
        self.garbage
    }

    #[cfg(test)]
    pub(super) fn capacity(&self) -> usize {
        self.bytes.capacity()
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
/// is in the new arena, any other in the old one, which is dropped once the cursor has passed
/// every owner. Records stored meanwhile go to the arena their owner's id says (an owner
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
}

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
        self.cur.heap_bytes() + self.old.as_ref().map_or(0, Names::heap_bytes)
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
    }

    /// Whether a compaction is under way.
    pub(super) fn is_compacting(&self) -> bool {
        self.old.is_some()
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
    /// `owners`) the old arena goes.
    pub(super) fn end_step(&mut self, step: std::ops::Range<u32>, owners: u32) {
        if self.old.is_none() {
            return;
        }
        self.cursor = step.end;
        if self.cursor >= owners {
            self.old = None;
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
