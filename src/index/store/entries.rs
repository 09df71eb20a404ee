//! The entry table: one record per distinct (hash, name) pair, its name in the name arena
//! (compressed by the [`NameCodec`]), and its holders.

use super::chunked::ChunkSlab;
use super::codec::NameCodec;
use super::names::Arena;
use super::shards::U32Map;
use super::table::{Slot, Table};
#[cfg(doc)]
use super::SOLE;
use super::{ID_BITS, ID_MASK, NONE, SPILLED, UNPOSTED};
use std::cmp::Ordering;

/// One (hash, name) pair, 16 bytes. `file == NONE` marks a free slot. (The next entry of
/// the same file is not a field: most files have one entry, so the few links live in
/// `Entries::links`, which saves 4 bytes a file.)
pub(super) struct EntryRec {
    /// Offset of the name's record in `Entries::names`.
    pub(super) name: u32,
    /// The file id (the low [`ID_BITS`] bits), the tier its postings carry (4 bits above,
    /// [`UNPOSTED`] until its words are posted), and [`SOLE`] while this is the file's only
    /// entry.
    pub(super) file: u32,
    /// Up to two peer ids inline (unused slots are `NONE`), or `[SPILLED, spill key]`.
    holders: [u32; 2],
}

impl EntryRec {
    #[inline]
    pub(super) fn file(&self) -> u32 {
        self.file & ID_MASK
    }

    /// The tier this entry's postings carry ([`UNPOSTED`] before they exist).
    #[inline]
    pub(super) fn posted_tier(&self) -> u32 {
        (self.file >> ID_BITS) & 0xf
    }

    #[inline]
    pub(super) fn set_posted_tier(&mut self, tier: u32) {
        self.file = (self.file & !(0xf << ID_BITS)) | (tier << ID_BITS);
    }
}

impl Slot for EntryRec {
    const FREE: Self = EntryRec {
        name: NONE,
        file: NONE,
        holders: [NONE, NONE],
    };

    fn is_free(&self) -> bool {
        self.file == NONE
    }
}

/// The entries. See the module docs.
pub(super) struct Entries {
    recs: Table<EntryRec>,
    /// The names, encoded by `codec`, each owned by its entry id.
    pub(super) names: Arena,
    /// The symbols names are compressed with.
    pub(super) codec: NameCodec,
    /// The holders of entries with more than two.
    spill: ChunkSlab<Vec<u32>>,
    /// Entry → the next entry of the same file, for each entry that has one (files of
    /// several names): each file's entries form a list from its `first_entry`.
    links: U32Map,
}

impl std::ops::Index<u32> for Entries {
    type Output = EntryRec;

    #[inline]
    fn index(&self, e: u32) -> &EntryRec {
        &self.recs[e]
    }
}

impl std::ops::IndexMut<u32> for Entries {
    #[inline]
    fn index_mut(&mut self, e: u32) -> &mut EntryRec {
        &mut self.recs[e]
    }
}

impl Entries {
    /// Heap bytes held by part: records, names, spilled holder lists.
    pub(super) fn heap_bytes(&self) -> [(&'static str, usize); 4] {
        let spill: usize = self
            .spill
            .iter()
            .map(|(_, v)| v.capacity() * 4)
            .sum::<usize>()
            + self.spill.capacity() * std::mem::size_of::<Vec<u32>>();
        [
            ("entry records", self.recs.heap_bytes()),
            ("names", self.names.heap_bytes()),
            ("spilled holders", spill),
            ("entry links", self.links.heap_bytes()),
        ]
    }

    pub(super) fn new() -> Self {
        Entries {
            recs: Table::new(),
            names: Arena::default(),
            codec: NameCodec::default(),
            spill: ChunkSlab::new(),
            links: U32Map::default(),
        }
    }

    /// Live entries (staged ones are not).
    #[inline]
    pub(super) fn len(&self) -> usize {
        self.recs.len()
    }

    /// One more than the largest entry id: the size of a bitmap over entries.
    #[inline]
    pub(super) fn id_bound(&self) -> usize {
        self.recs.id_bound()
    }

    /// The id the next [`Entries::insert`] will return (the owner of the name it stores).
    pub(super) fn next_id(&self) -> u32 {
        self.recs.next_id()
    }

    /// Adds an entry of `file` (with `SOLE` if it is the file's only one) without holders,
    /// named by the record at `name`, before `next` in its file's list; returns its id.
    pub(super) fn insert(&mut self, name: u32, file: u32, next: u32) -> u32 {
        let id = self.recs.insert(EntryRec {
            name,
            file: file | (UNPOSTED << ID_BITS),
            holders: [NONE, NONE],
        });
        // Register refuses entries beyond `MAX_ENTRIES`, so ids fit their bits.
        assert!(id < ID_MASK, "entry ids exhausted");
        self.set_next(id, next);
        id
    }

    /// Whether `e` is a live entry whose words are posted.
    pub(super) fn is_posted(&self, e: u32) -> bool {
        self.recs
            .get(e)
            .is_some_and(|r| !r.is_free() && r.posted_tier() != UNPOSTED)
    }

    /// The entry after `e` in its file's list, or `NONE`.
    #[inline]
    pub(super) fn next(&self, e: u32) -> u32 {
        if self.links.is_empty() {
            return NONE;
        }
        self.links.get(e).unwrap_or(NONE)
    }

    /// Makes `next` the entry after `e` in its file's list (`NONE`: `e` is the last).
    pub(super) fn set_next(&mut self, e: u32, next: u32) {
        if next == NONE {
            if !self.links.is_empty() {
                self.links.remove(e);
            }
        } else {
            self.links.insert(e, next);
        }
    }

    /// Frees entry `e`'s record and name.
    pub(super) fn remove(&mut self, e: u32) {
        let rec = self.recs.remove(e);
        self.names.free(e, rec.name);
        self.set_next(e, NONE);
        if self.recs.is_empty() {
            self.spill = ChunkSlab::new();
            self.links = U32Map::default();
            self.names.clear();
        }
    }

    /// Entry `e`'s name, encoded.
    #[inline]
    pub(super) fn encoded_name(&self, e: u32) -> &[u8] {
        self.names.get(e, self.recs[e].name)
    }

    /// Replaces `out` with entry `e`'s name.
    #[inline]
    pub(super) fn decode_name(&self, e: u32, out: &mut Vec<u8>) {
        self.codec.decode(self.encoded_name(e), out);
    }

    /// Orders entry `e`'s name against `name`, decoding no further than the first difference.
    #[inline]
    pub(super) fn cmp_name(&self, e: u32, name: &[u8]) -> Ordering {
        self.codec.cmp(self.encoded_name(e), name)
    }

    /// Entry `e`'s holders (peer ids, in no order).
    #[inline]
    pub(super) fn holders(&self, e: u32) -> &[u32] {
        let h = &self.recs[e].holders;
        match *h {
            [SPILLED, key] => &self.spill[key as usize],
            [NONE, _] => &[],
            [_, NONE] => &h[..1],
            _ => &h[..],
        }
    }

    /// How many peers hold `entry` (without touching the spill slab for up to two).
    #[inline]
    pub(super) fn holder_count(&self, entry: &EntryRec) -> u32 {
        match entry.holders {
            [SPILLED, key] => self.spill[key as usize].len() as u32,
            [NONE, _] => 0,
            [_, NONE] => 1,
            _ => 2,
        }
    }

    pub(super) fn push_holder(&mut self, e: u32, peer: u32) {
        let h = &mut self.recs[e].holders;
        match *h {
            [SPILLED, key] => self.spill[key as usize].push(peer),
            [NONE, _] => h[0] = peer,
            [_, NONE] => h[1] = peer,
            [a, b] => {
                let key = self.spill.insert(vec![a, b, peer]);
                *h = [SPILLED, key as u32];
            }
        }
    }

    /// Removes `peer` from entry `e`'s holders (it must be there).
    pub(super) fn pop_holder(&mut self, e: u32, peer: u32) {
        let h = &mut self.recs[e].holders;
        match *h {
            [SPILLED, key] => {
                let list = &mut self.spill[key as usize];
                if let Some(i) = list.iter().position(|&p| p == peer) {
                    list.swap_remove(i);
                }
                if list.len() <= 2 {
                    // Back inline: no spill allocation for an entry with two holders.
                    let list = self.spill.remove(key as usize);
                    *h = [NONE, NONE];
                    h[..list.len()].copy_from_slice(&list);
                }
            }
            [a, b] if a == peer => *h = [b, NONE],
            [_, b] if b == peer => h[1] = NONE,
            _ => debug_assert!(false, "peer {peer} does not hold entry {e}"),
        }
    }

    /// One step of the name arena's compaction, if one is under way (see [`Arena`]).
    pub(super) fn compact_names_step(&mut self) {
        let owners = self.recs.id_bound() as u32;
        let step = self.names.step_owners(owners);
        for e in step.clone() {
            let rec = &self.recs[e];
            if !rec.is_free() {
                let to = self.names.move_record(rec.name);
                self.recs[e].name = to;
            }
        }
        self.names.end_step(step, owners);
    }

    /// The live entries with their ids.
    #[cfg(test)]
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, &EntryRec)> {
        self.recs.iter()
    }

    /// Whether every allocation went back (no entry is left).
    #[cfg(test)]
    pub(super) fn is_released(&self) -> bool {
        self.recs.capacity() == 0 && self.spill.capacity() == 0
    }

    /// Entries with more than two holders.
    #[cfg(test)]
    pub(super) fn spilled(&self) -> usize {
        self.spill.len()
    }
}
