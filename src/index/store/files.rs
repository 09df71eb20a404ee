//! The file table: one record per distinct hash, the hash index ordering them by hash, the
//! filter telling new hashes from known ones, and the holder counts of files with several
//! names.

use super::blockset::{interpolate, BlockSet};
use super::filter::{prefix32, HashFilter};
use super::table::{Slot, Table};
use super::{LookupError, ID_MASK, NONE};
use crate::wire::FileHash;
use std::cmp::Ordering;

/// One file (hash). `first_entry == NONE` marks a free slot.
pub(super) struct FileRec {
    pub(super) hash: FileHash,
    /// The size as `[low, high]` halves: a `u64` would align the record to 8 and pad it from
    /// 44 to 48 bytes, 4 MB per million files.
    size: [u32; 2],
    /// Head of the singly linked list of this file's entries (through `EntryRec::next`).
    /// (No holder count: a file with one entry has that entry's holders, and the few files
    /// with several names have theirs in `Files::multi_holders`, which saves 4 bytes per file.)
    pub(super) first_entry: u32,
}

const _: () = assert!(std::mem::size_of::<FileRec>() == 44);

impl FileRec {
    #[inline]
    pub(super) fn size(&self) -> u64 {
        u64::from(self.size[0]) | (u64::from(self.size[1]) << 32)
    }
}

impl Slot for FileRec {
    const FREE: Self = FileRec {
        hash: FileHash([0; 32]),
        size: [0, 0],
        first_entry: NONE,
    };

    /// (Also true of a file just created, before its first entry is linked.)
    fn is_free(&self) -> bool {
        self.first_entry == NONE
    }
}

/// Files a filter rebuild puts in the new filter per step (per reactor turn): about 8 bytes
/// read in order and a bit set in a random word each, well under a millisecond.
pub(super) const FILTER_REBUILD_STEP_FILES: usize = 65_536;

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
    pub(super) multi_holders: hashbrown::HashMap<u32, u32>,
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
    pub(super) fn new() -> Self {
        Files {
            recs: Table::new(),
            by_hash: BlockSet::new(),
            seen: HashFilter::default(),
            rebuild_step: FILTER_REBUILD_STEP_FILES,
            multi_holders: hashbrown::HashMap::new(),
        }
    }

    /// Files in the table (staged ones are not).
    #[inline]
    pub(super) fn len(&self) -> usize {
        self.recs.len()
    }

    /// The file with hash `h`, in `O(log n)` over the full-hash order.
    #[inline]
    pub(super) fn find(&self, h: &FileHash) -> Option<u32> {
        self.position(h).ok().map(|at| self.id_at(at))
    }

    /// The id of the file at `at` in the hash order.
    #[inline]
    pub(super) fn id_at(&self, at: (usize, usize)) -> u32 {
        self.by_hash.get(at) as u32
    }

    /// Where `h` is (or would go) in the hash order.
    ///
    /// Honest hashes are uniformly distributed, so the position is first guessed from the
    /// 4-byte prefix (interpolation) and then searched outward from the guess: a few
    /// neighbouring cache lines are read instead of a binary search's scattered ones. Peers
    /// choose the hash bytes, but a skewed set only makes the gallop longer: still `O(log n)`.
    #[inline]
    pub(super) fn position(&self, h: &FileHash) -> Result<(usize, usize), (usize, usize)> {
        let p32 = prefix32(h);
        self.by_hash.search_guided(
            |&item| {
                ((item >> 32) as u32)
                    .cmp(&p32)
                    .then_with(|| self.recs[item as u32].hash.cmp(h))
            },
            |items| interpolate(items, p32),
        )
    }

    /// The one file whose hash's hex starts with `hex` (lowercase, at least 8 digits, the
    /// first 8 being `p32`), among the files `counts` accepts (those with a live holder).
    pub(super) fn find_prefix(
        &self,
        p32: u32,
        hex: &str,
        counts: impl Fn(u32) -> bool,
    ) -> Result<u32, LookupError> {
        let start = self
            .by_hash
            .search(|&item| ((item >> 32) as u32).cmp(&p32).then(Ordering::Greater))
            .unwrap_or_else(|at| at);
        let mut found = None;
        for item in self.by_hash.iter_from(start) {
            if (item >> 32) as u32 != p32 {
                break;
            }
            let file = item as u32;
            if self.recs[file].hash.has_hex_prefix(hex) && counts(file) {
                if found.is_some() {
                    return Err(LookupError::Ambiguous);
                }
                found = Some(file);
            }
        }
        found.ok_or(LookupError::NotFound)
    }

    /// Adds a file whose hash is not indexed yet, without entries; `at` is where
    /// [`Files::position`] said it would go.
    pub(super) fn create(&mut self, at: (usize, usize), hash: FileHash, size: u64) -> u32 {
        let id = self.recs.insert(FileRec {
            hash,
            size: [size as u32, (size >> 32) as u32],
            first_entry: NONE,
        });
        // Files are at most entries, which register keeps below `MAX_ENTRIES`.
        assert!(id < ID_MASK, "file ids exhausted");
        self.seen.insert(&hash);
        debug_assert_eq!(self.position(&hash), Err(at));
        self.by_hash
            .insert_at(at, (u64::from(prefix32(&hash)) << 32) | u64::from(id));
        id
    }

    /// Removes `file`, which has no entries left.
    pub(super) fn delete(&mut self, file: u32) {
        let hash = self.recs[file].hash;
        let at = self
            .position(&hash)
            .expect("a live file is indexed by hash");
        self.by_hash.remove_at(at);
        self.seen.note_deleted();
        self.recs.remove(file);
    }

    /// Whether `file` is a live file's id.
    #[inline]
    pub(super) fn is_live(&self, file: u32) -> bool {
        self.recs.get(file).is_some_and(|r| r.first_entry != NONE)
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

    /// Puts the next [`Files::rebuild_step`] files of the hash order in the filter being
    /// rebuilt; swaps it in after the last.
    pub(super) fn rebuild_filter_step(&mut self) {
        let Some(next) = &self.seen.next else {
            return;
        };
        // Resume after the last hash put in, wherever it now is (files come and go between
        // steps: a position would not do).
        let (from, skip) = match &next.after {
            None => ((0, 0), 0),
            Some(h) => match self.position(h) {
                Ok(at) => (at, 1),
                Err(at) => (at, 0),
            },
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

    /// Whether a filter rebuild is in progress.
    pub(super) fn is_rebuilding(&self) -> bool {
        self.seen.next.is_some()
    }

    /// Whether every allocation went back (no file is left).
    #[cfg(test)]
    pub(super) fn is_released(&self) -> bool {
        self.recs.capacity() == 0 && self.by_hash.capacity() == 0
    }
}
