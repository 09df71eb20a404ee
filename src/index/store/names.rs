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
/// free lists, so steady churn creates no new garbage), and the owner squeezes the garbage out
/// with [`Names::compact`] once it is a third of the arena.
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

    fn record_len_at(bytes: &[u8], at: usize) -> usize {
        let (len, start) = Self::decode_header(bytes, at);
        start - at + len
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
        reserve_gently(&mut self.bytes, rec_len);
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

    /// Rewrites the arena without garbage, in offset order (so in place). `live` lists
    /// `(offset << 32) | owner` for every live record; `moved(owner, offset)` is told each
    /// record's new offset.
    pub(super) fn compact(&mut self, mut live: Vec<u64>, mut moved: impl FnMut(usize, u32)) {
        live.sort_unstable();
        let bytes = &mut self.bytes;
        let mut to = 0usize;
        for item in live {
            let (from, owner) = ((item >> 32) as usize, item as u32 as usize);
            let len = Self::record_len_at(bytes, from);
            bytes.copy_within(from..from + len, to);
            moved(owner, to as u32);
            to += len;
        }
        bytes.truncate(to);
        if bytes.capacity() > to + to / 4 {
            bytes.shrink_to(to + to / 8);
        }
        self.garbage = 0;
        self.free = Vec::new();
    }
}
