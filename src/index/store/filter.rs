//! The hash filter: which hashes may be indexed or staged, so that a register tells a new file
//! from a known one without searching the hash index.
//!
//! A rebuild is done in steps (see `Files::refresh_filter`): the new filter ([`Rebuild`]) is
//! filled from the hash index a bounded number of files per reactor turn while the old one
//! answers; every hash inserted meanwhile goes into both, so when the last step swaps them in
//! no indexed or staged hash is missing from the one that answers.

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
    pub(super) words: Vec<u64>,
    /// Files deleted since the last rebuild (their bits may still be set).
    pub(super) stale: usize,
    /// A rebuild in progress: the filter that replaces this one when complete.
    pub(super) next: Option<Rebuild>,
    /// Tests: answer "maybe" for every hash.
    #[cfg(test)]
    pub(super) saturated: bool,
}

/// A filter being rebuilt from the hash index, in hash order.
pub(super) struct Rebuild {
    pub(super) words: Vec<u64>,
    /// Files deleted since the rebuild began (their bits may be set in it).
    pub(super) stale: usize,
    /// The last hash of the hash index put in it (none yet: start from the first).
    pub(super) after: Option<FileHash>,
}

impl HashFilter {
    /// Heap bytes held (a rebuild in progress included).
    pub(super) fn heap_bytes(&self) -> usize {
        (self.words.capacity() + self.next.as_ref().map_or(0, |n| n.words.capacity())) * 8
    }

    /// Bits per file a rebuild aims at.
    pub(super) const BITS_PER_FILE: usize = 10;
    /// Fewer bits per file than this (counting deleted files' stale bits) and it is rebuilt.
    pub(super) const MIN_BITS_PER_FILE: usize = 8;

    /// The word and the two bits of a hash, from its first 4 bytes (`p32`, uniform for an
    /// honest hash), which the hash index's items carry: a rebuild reads only those items.
    /// The multiply spreads them: the word comes from the product's high bits, the bits from
    /// its low ones.
    #[inline]
    fn slot(&self, p32: u32) -> (usize, u64) {
        slot_in(self.words.len(), p32)
    }

    /// False only if `h` was never inserted since the last rebuild.
    #[inline]
    pub(super) fn may_contain(&self, h: &FileHash) -> bool {
        #[cfg(test)]
        if self.saturated {
            return true;
        }
        if self.words.is_empty() {
            return false;
        }
        let (w, bits) = self.slot(prefix32(h));
        self.words[w] & bits == bits
    }

    #[inline]
    pub(super) fn insert(&mut self, h: &FileHash) {
        self.insert_prefix(prefix32(h));
    }

    #[inline]
    pub(super) fn insert_prefix(&mut self, p32: u32) {
        if self.words.is_empty() {
            self.words = vec![0; 64];
        }
        let (w, bits) = self.slot(p32);
        self.words[w] |= bits;
        if let Some(next) = &mut self.next {
            next.insert_prefix(p32);
        }
    }

    /// Starts a rebuild sized for `files` files (see the module docs).
    pub(super) fn start_rebuild(&mut self, files: usize) {
        let words = crate::index::worktrace::time("filter alloc", || {
            vec![0; (files * Self::BITS_PER_FILE).div_ceil(64).max(64)]
        });
        self.next = Some(Rebuild {
            words,
            stale: 0,
            after: None,
        });
    }

    /// A rebuild is complete: the new filter answers from now on.
    pub(super) fn finish_rebuild(&mut self) {
        if let Some(next) = self.next.take() {
            let old = std::mem::replace(&mut self.words, next.words);
            crate::index::worktrace::time("filter drop", || drop(old));
            self.stale = next.stale;
        }
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
        (files + self.stale) * Self::MIN_BITS_PER_FILE > self.words.len() * 64
            || (self.stale > files && self.words.len() > 64)
    }

    /// Empties the filter, sized for `files` files.
    pub(super) fn reset(&mut self, files: usize) {
        self.words = vec![0; (files * Self::BITS_PER_FILE).div_ceil(64).max(64)];
        self.stale = 0;
        self.next = None;
    }
}

impl Rebuild {
    #[inline]
    pub(super) fn insert_prefix(&mut self, p32: u32) {
        let (w, bits) = slot_in(self.words.len(), p32);
        self.words[w] |= bits;
    }
}

/// The word and bits of `p32` in a filter of `len` words (see [`HashFilter::slot`]).
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
