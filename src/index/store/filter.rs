//! The hash filter: which hashes may be indexed or staged, so that a register tells a new file
//! from a known one without searching the hash index.
//!
//! A rebuild is done in steps (see `Files::refresh_filter`): the new filter ([`Rebuild`]) is
//! first allocated, [`ALLOC_WORDS_PER_STEP`] words a step, each written once so that its
//! pages are in memory before it is used (a 12 MB filter allocated zeroed in one piece was a
//! memset, or thousands of page faults on its first step, of several milliseconds); then
//! filled from the hash index a bounded number of files per reactor turn while the old one
//! answers. Every hash inserted meanwhile goes into both (into a short list while the new one
//! is being allocated), so when the last step swaps them in no indexed or staged hash is
//! missing from the one that answers. The old filter's chunks are then freed one a step.

use crate::wire::FileHash;

/// A Bloom filter over the hashes of the indexed and staged files: "certainly not indexed" in
/// one word read, where the hash index needs a search. Two bits per hash, both in one `u64`;
/// 10 bits per file after a rebuild and never fewer than 8 (about 1.2 bytes per file): about
/// one false "maybe" in twenty-five.
/// Bits are not cleared when a file goes; the filter is rebuilt from the files once it is too
/// full or too stale. Peers choose hashes, so they can make the filter answer "maybe" for
/// theirs, but a "maybe" only costs a hash-index search and the tables' inserts, plus a scan of at most [`STAGED_SCAN`](super::register::STAGED_SCAN) staged hashes. Between two
/// calls of [`Index::post_pending`](super::Index::post_pending) (one reactor turn) a big batch can fill the filter past
/// its bits per file; that only raises the rate of "maybe".
#[derive(Default)]
pub(super) struct HashFilter {
    words: Bits,
    /// Files deleted since the last rebuild (their bits may still be set).
    pub(super) stale: usize,
    /// A rebuild in progress: the filter that replaces this one when complete.
    pub(super) next: Option<Rebuild>,
    /// The chunks of the filter a rebuild replaced, freed a few a step.
    retired: Vec<Vec<u64>>,
    /// Tests: answer "maybe" for every hash.
    #[cfg(test)]
    pub(super) saturated: bool,
}

/// A filter being rebuilt from the hash index, in hash order.
pub(super) struct Rebuild {
    words: Bits,
    /// The prefixes of the hashes inserted while `words` is being allocated, put in after.
    early: Vec<u32>,
    /// Files deleted since the rebuild began (their bits may be set in it).
    pub(super) stale: usize,
    /// The last hash of the hash index put in it (none yet: start from the first).
    pub(super) after: Option<FileHash>,
}

impl HashFilter {
    /// Heap bytes held (a rebuild in progress included).
    pub(super) fn heap_bytes(&self) -> usize {
        self.words.heap_bytes()
            + self
                .next
                .as_ref()
                .map_or(0, |n| n.words.heap_bytes() + n.early.capacity() * 4)
            + self.retired.iter().map(|c| c.capacity() * 8).sum::<usize>()
    }

    /// Words in the filter that answers.
    #[cfg(test)]
    pub(super) fn word_count(&self) -> usize {
        self.words.len
    }

    /// Bits per file a rebuild aims at.
    pub(super) const BITS_PER_FILE: usize = 10;
    /// Fewer bits per file than this (counting deleted files' stale bits) and it is rebuilt.
    pub(super) const MIN_BITS_PER_FILE: usize = 8;

    /// False only if `h` was never inserted since the last rebuild.
    #[inline]
    pub(super) fn may_contain(&self, h: &FileHash) -> bool {
        #[cfg(test)]
        if self.saturated {
            return true;
        }
        if self.words.len == 0 {
            return false;
        }
        let (w, bits) = slot_in(self.words.len, prefix32(h));
        self.words.get(w) & bits == bits
    }

    #[inline]
    pub(super) fn insert(&mut self, h: &FileHash) {
        self.insert_prefix(prefix32(h));
    }

    #[inline]
    pub(super) fn insert_prefix(&mut self, p32: u32) {
        if self.words.len == 0 {
            self.words = Bits::zeroed(64);
        }
        self.words.set(p32);
        if let Some(next) = &mut self.next {
            next.insert_prefix(p32);
        }
    }

    /// Starts a rebuild sized for `files` files (see the module docs); nothing is allocated
    /// yet.
    pub(super) fn start_rebuild(&mut self, files: usize) {
        self.next = Some(Rebuild {
            words: Bits::unallocated(Self::words_for(files)),
            early: Vec::new(),
            stale: 0,
            after: None,
        });
    }

    /// Words of a filter of [`HashFilter::BITS_PER_FILE`] for `files` files.
    fn words_for(files: usize) -> usize {
        (files * Self::BITS_PER_FILE).div_ceil(64).max(64)
    }

    /// A rebuild is complete: the new filter answers from now on; the old one's chunks are
    /// freed by the next steps ([`HashFilter::free_retired`]).
    pub(super) fn finish_rebuild(&mut self) {
        if let Some(next) = self.next.take() {
            debug_assert!(next.early.is_empty());
            let old = std::mem::replace(&mut self.words, next.words);
            self.retired.extend(old.chunks);
            self.stale = next.stale;
        }
    }

    /// Frees up to [`FREE_CHUNKS_PER_STEP`] chunks of a replaced filter; whether some are
    /// left.
    pub(super) fn free_retired(&mut self) -> bool {
        let keep = self.retired.len().saturating_sub(FREE_CHUNKS_PER_STEP);
        self.retired.truncate(keep);
        !self.retired.is_empty()
    }

    /// Whether chunks of a replaced filter wait to be freed.
    pub(super) fn has_retired(&self) -> bool {
        !self.retired.is_empty()
    }

    /// A file was deleted: its bits may stay set.
    pub(super) fn note_deleted(&mut self) {
        self.stale += 1;
        if let Some(next) = &mut self.next {
            next.stale += 1;
        }
    }

    /// Whether a rebuild is due, with `files` files in the tables: too few bits per file
    /// (deleted files' bits count as set), or more deleted files than live ones (then most set
    /// bits are stale and the filter is also oversized). A rebuild costs time in proportion to
    /// the live files, and follows at least a quarter as many new files (512 for the smallest
    /// filter) or as many deletions, so its cost per register or deletion is constant.
    pub(super) fn needs_rebuild(&self, files: usize) -> bool {
        (files + self.stale) * Self::MIN_BITS_PER_FILE > self.words.len * 64
            || (self.stale > files && self.words.len > 64)
    }

    /// Empties the filter, sized for `files` files.
    pub(super) fn reset(&mut self, files: usize) {
        self.words = Bits::zeroed(Self::words_for(files));
        self.stale = 0;
        self.next = None;
    }
}

impl Rebuild {
    #[inline]
    pub(super) fn insert_prefix(&mut self, p32: u32) {
        if self.words.is_allocated() {
            self.words.set(p32);
        } else {
            self.early.push(p32);
        }
    }

    /// Allocates the next [`ALLOC_WORDS_PER_STEP`] words of the new filter; after the last,
    /// puts in the hashes inserted meanwhile. Whether it is allocated whole.
    pub(super) fn allocate_step(&mut self) -> bool {
        if self.words.is_allocated() {
            return true;
        }
        self.words.allocate(ALLOC_WORDS_PER_STEP);
        if !self.words.is_allocated() {
            return false;
        }
        for p32 in std::mem::take(&mut self.early) {
            self.words.set(p32);
        }
        true
    }
}

/// Words per chunk of a filter, as a power of two: 32,768 (256 KiB; 64 words in tests).
const FILTER_CHUNK_SHIFT: u32 = if cfg!(test) { 6 } else { 15 };
const FILTER_CHUNK_WORDS: usize = 1 << FILTER_CHUNK_SHIFT;

/// Words a rebuild step allocates (writes for the first time): 8,192, 64 KiB (24 in tests,
/// so that steps end inside chunks). Each fresh page is a fault, 4–50 µs of CPU on the VM of
/// the measurements: with four whole chunks (1 MiB) a step, each allocation step took 2.0–2.3
/// ms of CPU, and up to 6.2 ms (12.3 ms the first, counted as `filter refresh`) in a slower
/// window, 12 of them per rebuild at 10M files; 64 KiB is 16 faults.
pub(super) const ALLOC_WORDS_PER_STEP: usize = if cfg!(test) { 24 } else { 8 * 1024 };

/// Chunks of a replaced filter freed a step: one, 256 KiB (freeing does not fault).
pub(super) const FREE_CHUNKS_PER_STEP: usize = 1;

/// A filter's words, `len` of them, in chunks of [`FILTER_CHUNK_WORDS`] (the last one shorter),
/// allocated a few words at a time, chunk after chunk (only the last chunk may be short of its
/// length while allocating). Every word of a filter that answers or is filled is allocated.
#[derive(Default)]
struct Bits {
    chunks: Vec<Vec<u64>>,
    len: usize,
}

impl Bits {
    /// `len` zero words, allocated now (a small filter).
    fn zeroed(len: usize) -> Self {
        let mut bits = Self::unallocated(len);
        bits.allocate(usize::MAX);
        bits
    }

    /// `len` words, none allocated yet.
    fn unallocated(len: usize) -> Self {
        Bits {
            chunks: Vec::with_capacity(len.div_ceil(FILTER_CHUNK_WORDS)),
            len,
        }
    }

    /// The length of chunk `i` once allocated.
    fn chunk_words(&self, i: usize) -> usize {
        (self.len - i * FILTER_CHUNK_WORDS).min(FILTER_CHUNK_WORDS)
    }

    fn is_allocated(&self) -> bool {
        let n = self.len.div_ceil(FILTER_CHUNK_WORDS);
        self.chunks.len() == n
            && self
                .chunks
                .last()
                .map_or(true, |c| c.len() == self.chunk_words(n - 1))
    }

    /// Allocates up to `n` more words, zeroed by writing them (so that their pages are mapped
    /// now, not on the first inserts): the rest of the last chunk, then new chunks.
    fn allocate(&mut self, mut n: usize) {
        while n > 0 && !self.is_allocated() {
            let last = self.chunks.len().wrapping_sub(1);
            if self
                .chunks
                .last()
                .map_or(true, |c| c.len() == self.chunk_words(last))
            {
                let words = self.chunk_words(self.chunks.len());
                // `black_box` hides where the vector comes from, so that the zeroing below is
                // not turned into a `calloc` whose pages would be mapped (and zeroed) on first
                // use.
                self.chunks
                    .push(std::hint::black_box(Vec::with_capacity(words)));
            }
            let i = self.chunks.len() - 1;
            let full = self.chunk_words(i);
            let chunk = &mut self.chunks[i];
            let add = (full - chunk.len()).min(n);
            chunk.resize(chunk.len() + add, 0);
            n -= add;
        }
    }

    fn heap_bytes(&self) -> usize {
        self.chunks.iter().map(|c| c.capacity() * 8).sum::<usize>()
            + self.chunks.capacity() * std::mem::size_of::<Vec<u64>>()
    }

    #[inline]
    fn get(&self, w: usize) -> u64 {
        self.chunks[w >> FILTER_CHUNK_SHIFT][w & (FILTER_CHUNK_WORDS - 1)]
    }

    /// Sets the two bits of `p32`.
    #[inline]
    fn set(&mut self, p32: u32) {
        let (w, bits) = slot_in(self.len, p32);
        self.chunks[w >> FILTER_CHUNK_SHIFT][w & (FILTER_CHUNK_WORDS - 1)] |= bits;
    }
}

/// The word and the two bits of a hash in a filter of `len` words, from the hash's first 4
/// bytes (`p32`, uniform for an honest hash), which the hash index's items carry: a rebuild
/// reads only those items. The multiply spreads them: the word comes from the product's high
/// bits, the bits from its low ones.
#[inline]
fn slot_in(len: usize, p32: u32) -> (usize, u64) {
    let k = u64::from(p32).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let word = ((u128::from(k) * len as u128) >> 64) as usize;
    (word, 1u64 << (k & 63) | 1u64 << ((k >> 6) & 63))
}

#[inline]
pub(super) fn prefix32(h: &FileHash) -> u32 {
    u32::from_be_bytes([h.0[0], h.0[1], h.0[2], h.0[3]])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash(p32: u32) -> FileHash {
        let mut h = [7u8; 32];
        h[..4].copy_from_slice(&p32.to_be_bytes());
        FileHash(h)
    }

    /// Spread prefixes, like honest hashes'.
    fn prefix(i: u32) -> u32 {
        i.wrapping_mul(0x9E37_79B1)
    }

    /// Starting a rebuild allocates nothing; each step allocates a few words, ending inside
    /// chunks; hashes inserted while it allocates are kept aside and put in once it is whole;
    /// the old filter's chunks are freed one a step after the swap.
    #[test]
    fn a_rebuild_allocates_in_steps_and_keeps_what_is_inserted_meanwhile() {
        let mut f = HashFilter::default();
        for i in 0..1_000 {
            f.insert(&hash(prefix(i)));
        }
        let old_chunks = f.words.chunks.len();
        // 10,000 files: 1,563 words, 25 chunks of 64 in tests.
        f.start_rebuild(10_000);
        assert_eq!(f.next.as_ref().unwrap().words.chunks.len(), 0);
        let mut inserted = 1_000;
        let mut steps = 0;
        while !f.next.as_mut().unwrap().allocate_step() {
            steps += 1;
            let words = &f.next.as_ref().unwrap().words;
            let allocated: usize = words.chunks.iter().map(Vec::len).sum();
            assert_eq!(allocated, steps * ALLOC_WORDS_PER_STEP);
            assert_eq!(words.chunks.len(), allocated.div_ceil(FILTER_CHUNK_WORDS));
            // The old filter answers meanwhile, for the old hashes and the new.
            f.insert(&hash(prefix(inserted)));
            inserted += 1;
            assert!((0..inserted).all(|i| f.may_contain(&hash(prefix(i)))));
        }
        assert_eq!(steps, 1_563usize.div_ceil(ALLOC_WORDS_PER_STEP) - 1);
        let next = f.next.as_ref().unwrap();
        assert!(next.early.is_empty());
        assert_eq!(next.words.chunks.iter().map(Vec::len).sum::<usize>(), 1_563);
        // The fill: the hashes the index held when the rebuild began.
        for i in 0..1_000 {
            f.next.as_mut().unwrap().insert_prefix(prefix(i));
        }
        f.finish_rebuild();
        assert_eq!(f.word_count(), 1_563);
        assert!((0..inserted).all(|i| f.may_contain(&hash(prefix(i)))));
        let false_maybes = (100_000..110_000)
            .filter(|&i| f.may_contain(&hash(prefix(i))))
            .count();
        assert!(false_maybes < 100, "{false_maybes} false maybes");
        assert_eq!(f.retired.len(), old_chunks);
        let mut frees = 0;
        while f.free_retired() {
            frees += 1;
        }
        assert_eq!(frees, old_chunks.div_ceil(FREE_CHUNKS_PER_STEP) - 1);
        assert!(!f.has_retired());
    }
}
