//! The file table: one record per distinct hash, the hash index ordering them by hash, the
//! filter telling new hashes from known ones, and the holder counts of files with several
//! names.

use super::blockset::{interpolate, BlockSet};
use super::filter::{prefix32, HashFilter};
use super::shards::U32Map;
use super::table::{Slot, Table};
use super::{LookupError, ID_BITS, ID_MASK, NONE};
use crate::wire::FileHash;
use std::cmp::Ordering;

/// One file (hash). A first entry of `NONE` marks a free slot.
///
/// 42 bytes: the hash, then the size (52 bits, see [`MAX_FILE_SIZE`]) and the first entry
/// (28 bits: ids are below `1 << ID_BITS`, and all ones is `NONE`) packed into five `u16`s,
/// so the record aligns to 2 and has no padding. (A `u64` size and a `u32` entry would align
/// it to 8 and pad it to 48 bytes; `[u32; 2]` and a `u32`, to 44.) Two bytes a file are
/// 2 MB a million files.
pub(super) struct FileRec {
    pub(super) hash: FileHash,
    /// `size | first_entry << 52`, little-endian in `u16`s.
    packed: [u16; 5],
}

const _: () = assert!(std::mem::size_of::<FileRec>() == 42);
const _: () = assert!(ID_BITS < ENTRY_BITS);

/// Bits of the first entry in a [`FileRec`].
const ENTRY_BITS: u32 = 28;
/// The packed first entry that stands for `NONE`.
const PACKED_NONE: u32 = (1 << ENTRY_BITS) - 1;

/// Largest file size the index takes (4 PiB less a byte): register rejects larger claims, as
/// no file system holds such a file.
pub const MAX_FILE_SIZE: u64 = (1 << 52) - 1;

impl FileRec {
    fn new(hash: FileHash, size: u64, first_entry: u32) -> Self {
        debug_assert!(size <= MAX_FILE_SIZE);
        let entry = if first_entry == NONE {
            PACKED_NONE
        } else {
            first_entry
        };
        let bits = u128::from(size) | (u128::from(entry) << 52);
        let mut packed = [0u16; 5];
        for (i, p) in packed.iter_mut().enumerate() {
            *p = (bits >> (16 * i)) as u16;
        }
        FileRec { hash, packed }
    }

    #[inline]
    fn bits(&self) -> u128 {
        self.packed
            .iter()
            .enumerate()
            .fold(0, |acc, (i, &p)| acc | (u128::from(p) << (16 * i)))
    }

    #[inline]
    pub(super) fn size(&self) -> u64 {
        (self.bits() & u128::from(MAX_FILE_SIZE)) as u64
    }

    /// Head of the singly linked list of this file's entries (through `EntryRec::next`), or
    /// `NONE`. (No holder count: a file with one entry has that entry's holders, and the few
    /// files with several names have theirs in `Files::multi_holders`, which saves 4 bytes
    /// per file.)
    #[inline]
    pub(super) fn first_entry(&self) -> u32 {
        match (self.bits() >> 52) as u32 {
            PACKED_NONE => NONE,
            e => e,
        }
    }

    #[inline]
    pub(super) fn set_first_entry(&mut self, entry: u32) {
        *self = FileRec::new(self.hash, self.size(), entry);
    }
}

impl Slot for FileRec {
    const FREE: Self = FileRec {
        hash: FileHash([0; 32]),
        // Size 0, first entry `PACKED_NONE`.
        packed: [0, 0, 0, 0xfff0, 0xffff],
    };

    /// (Also true of a file just created, before its first entry is linked.)
    fn is_free(&self) -> bool {
        self.first_entry() == NONE
    }
}

/// Files a filter rebuild puts in the new filter per step (per reactor turn): about 8 bytes
/// read in order and a bit set in a random word each. A random word of a 12 MB filter is a
/// cache miss, so a step costs up to a few tenths of a millisecond (16,384 a step took up to
/// 1.4 ms at ten million files, and 4,096 up to 1.3 ms in cold memory).
pub(super) const FILTER_REBUILD_STEP_FILES: usize = 1_024;

/// The files. See the module docs.
pub(super) struct Files {
    recs: Table<FileRec>,
    /// `(first 4 hash bytes << 32) | file id` in full-hash order (ties on the 4-byte prefix
    /// are broken by comparing the full hash through `recs`).
    by_hash: BlockSet<u64>,
    /// Which hashes may be indexed or staged: no bit missing for any of them.
    pub(super) seen: HashFilter,
    /// Files put in a filter being rebuilt per step (see [`Files::refresh_filter`]).
    pub(super) rebuild_step: usize,
    /// Distinct holders of each file with two or more entries (a file with one entry has that
    /// entry's holders), kept as holdings come and go so that search ranks in `O(1)` per hit.
    /// Most files have one name, so this costs nothing per file.
    pub(super) multi_holders: U32Map,
}

impl std::ops::Index<u32> for Files {
    type Output = FileRec;

    #[inline]
    fn index(&self, file: u32) -> &FileRec {
        &self.recs[file]
    }
}

impl std::ops::IndexMut<u32> for Files {
    #[inline]
    fn index_mut(&mut self, file: u32) -> &mut FileRec {
        &mut self.recs[file]
    }
}

impl Files {
    /// Heap bytes held by part: records, the hash index, the filter, multi-name holder counts.
    pub(super) fn heap_bytes(&self) -> [(&'static str, usize); 4] {
        [
            ("file records", self.recs.heap_bytes()),
            ("hash index", self.by_hash.heap_bytes()),
            ("hash filter", self.seen.heap_bytes()),
            ("multi-name holder counts", self.multi_holders.heap_bytes()),
        ]
    }

    pub(super) fn new() -> Self {
        Files {
            recs: Table::new(),
            by_hash: BlockSet::new(),
            seen: HashFilter::default(),
            rebuild_step: FILTER_REBUILD_STEP_FILES,
            multi_holders: U32Map::default(),
        }
    }

    /// Files in the table (staged ones are not).
    #[inline]
    pub(super) fn len(&self) -> usize {
        self.recs.len()
    }

    /// The files with hash `h` (one per claimed size, see [`Files::position`]), ascending by
    /// size, in `O(log n)` over the full-hash order plus one step per file.
    #[inline]
    pub(super) fn variants<'a>(&'a self, h: &'a FileHash) -> impl Iterator<Item = u32> + 'a {
        let p32 = prefix32(h);
        let start = self.lower_bound(h);
        self.by_hash
            .iter_from(start)
            .take_while(move |&item| {
                (item >> 32) as u32 == p32 && self.recs[item as u32].hash == *h
            })
            .map(|item| item as u32)
    }

    /// Whether any file has hash `h`.
    #[inline]
    pub(super) fn has_hash(&self, h: &FileHash) -> bool {
        self.variants(h).next().is_some()
    }

    /// The file with hash `h` claimed at `size`.
    #[cfg(test)]
    pub(super) fn find(&self, h: &FileHash, size: u64) -> Option<u32> {
        self.position(h, size).ok().map(|at| self.id_at(at))
    }

    /// The id of the file at `at` in the hash order.
    #[inline]
    pub(super) fn id_at(&self, at: (usize, usize)) -> u32 {
        self.by_hash.get(at) as u32
    }

    /// Where the first file with hash `h` is (or would go) in the hash order.
    #[inline]
    fn lower_bound(&self, h: &FileHash) -> (usize, usize) {
        let p32 = prefix32(h);
        self.by_hash
            .search_guided(
                |&item| {
                    ((item >> 32) as u32)
                        .cmp(&p32)
                        .then_with(|| self.recs[item as u32].hash.cmp(h))
                        .then(Ordering::Greater)
                },
                |items| interpolate(items, p32),
            )
            .expect_err("the probe never says equal")
    }

    /// Where the file of hash `h` claimed at `size` is (or would go) in the hash order.
    ///
    /// A file is a (hash, size) claim: peers choose both, and a hash registered first with a
    /// wrong size must not lock out the peers that hold the real file, so each size claimed
    /// for a hash is a file of its own, ordered by size after the hash. Honest hashes are
    /// uniformly distributed, so the position is first guessed from the 4-byte prefix
    /// (interpolation) and then searched outward from the guess: a few neighbouring cache
    /// lines are read instead of a binary search's scattered ones. Peers choose the hash
    /// bytes, but a skewed set only makes the gallop longer: still `O(log n)`.
    #[inline]
    pub(super) fn position(
        &self,
        h: &FileHash,
        size: u64,
    ) -> Result<(usize, usize), (usize, usize)> {
        let p32 = prefix32(h);
        self.by_hash.search_guided(
            |&item| {
                let rec = &self.recs[item as u32];
                ((item >> 32) as u32)
                    .cmp(&p32)
                    .then_with(|| rec.hash.cmp(h))
                    .then_with(|| rec.size().cmp(&size))
            },
            |items| interpolate(items, p32),
        )
    }

    /// The files of the one hash whose hex starts with `hex` (lowercase, at least 8 digits,
    /// the first 8 being `p32`), ascending by size, among the files `counts` accepts (those
    /// with a live holder).
    pub(super) fn find_prefix(
        &self,
        p32: u32,
        hex: &str,
        counts: impl Fn(u32) -> bool,
    ) -> Result<Vec<u32>, LookupError> {
        let start = self
            .by_hash
            .search(|&item| ((item >> 32) as u32).cmp(&p32).then(Ordering::Greater))
            .unwrap_or_else(|at| at);
        let mut found: Vec<u32> = Vec::new();
        for item in self.by_hash.iter_from(start) {
            if (item >> 32) as u32 != p32 {
                break;
            }
            let file = item as u32;
            if self.recs[file].hash.has_hex_prefix(hex) && counts(file) {
                if found
                    .first()
                    .is_some_and(|&f| self.recs[f].hash != self.recs[file].hash)
                {
                    return Err(LookupError::Ambiguous);
                }
                found.push(file);
            }
        }
        if found.is_empty() {
            return Err(LookupError::NotFound);
        }
        Ok(found)
    }

    /// Adds a file whose (hash, size) is not indexed yet, without entries; `at` is where
    /// [`Files::position`] said it would go.
    pub(super) fn create(&mut self, at: (usize, usize), hash: FileHash, size: u64) -> u32 {
        let id = self.recs.insert(FileRec::new(hash, size, NONE));
        // Files are at most entries, which register keeps below `MAX_ENTRIES`.
        assert!(id < ID_MASK, "file ids exhausted");
        self.seen.insert(&hash);
        debug_assert_eq!(self.position(&hash, size), Err(at));
        self.by_hash
            .insert_at(at, (u64::from(prefix32(&hash)) << 32) | u64::from(id));
        id
    }

    /// Removes `file`, which has no entries left.
    pub(super) fn delete(&mut self, file: u32) {
        let rec = &self.recs[file];
        let at = self
            .position(&rec.hash, rec.size())
            .expect("a live file is indexed by hash");
        self.by_hash.remove_at(at);
        self.seen.note_deleted();
        self.recs.remove(file);
    }

    /// Whether `file` is a live file's id.
    #[inline]
    pub(super) fn is_live(&self, file: u32) -> bool {
        self.recs.get(file).is_some_and(|r| r.first_entry() != NONE)
    }

    /// Rebuilds the hash filter if it is due, from the files in the table (the caller has
    /// none staged): passes over the hash index's items, which carry the bytes the filter
    /// reads, so the time is in proportion to the live files and reads 8 bytes of each, in
    /// order. Up to [`Files::rebuild_step`] files it is done at once; a bigger one is started
    /// here and done in steps of that many files by [`Files::rebuild_filter_step`], which the
    /// owner calls once a reactor turn (see `filter.rs`).
    pub(super) fn refresh_filter(&mut self) {
        if self.seen.next.is_none() {
            if !self.seen.needs_rebuild(self.len()) {
                return;
            }
            if self.by_hash.len() <= self.rebuild_step {
                self.seen.reset(self.by_hash.len());
                for item in self.by_hash.iter_from((0, 0)) {
                    self.seen.insert_prefix((item >> 32) as u32);
                }
                return;
            }
            self.seen.start_rebuild(self.by_hash.len());
            self.rebuild_filter_step();
        }
    }

    /// One step of a filter rebuild: allocates a few chunks of the new filter while it is not
    /// whole, else puts the next [`Files::rebuild_step`] files of the hash order in it, and
    /// swaps it in after the last. The steps after that free the replaced filter's chunks, a
    /// few a step.
    pub(super) fn rebuild_filter_step(&mut self) {
        if self.seen.has_retired() {
            self.seen.free_retired();
            return;
        }
        let Some(next) = &mut self.seen.next else {
            return;
        };
        if !next.allocate_step() {
            return;
        }
        let Some(next) = &self.seen.next else {
            return;
        };
        // Resume after the last hash put in, wherever it now is (files come and go between
        // steps: a position would not do), past every size claimed for it (they share its
        // filter bits).
        let (from, skip) = match &next.after {
            None => ((0, 0), 0),
            Some(h) => (self.lower_bound(h), self.variants(h).count()),
        };
        let step = self.rebuild_step;
        let Some(next) = &mut self.seen.next else {
            return;
        };
        let mut last = None;
        let mut n = 0;
        for item in self.by_hash.iter_from(from).skip(skip).take(step) {
            next.insert_prefix((item >> 32) as u32);
            last = Some(item as u32);
            n += 1;
        }
        if n < step {
            self.seen.finish_rebuild();
        } else if let Some(file) = last {
            next.after = Some(self.recs[file].hash);
        }
    }

    /// Whether a filter rebuild is in progress (or the old filter is still being freed).
    pub(super) fn is_rebuilding(&self) -> bool {
        self.seen.next.is_some() || self.seen.has_retired()
    }

    /// Whether every allocation went back (no file is left).
    #[cfg(test)]
    pub(super) fn is_released(&self) -> bool {
        self.recs.capacity() == 0 && self.by_hash.capacity() == 0
    }
}
