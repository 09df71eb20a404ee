//! The name table: which entries bear each exact name whose words are all *crowded*, so that
//! a lookup of such a name (tens of thousands of files called `copyright`) pages through its
//! files best first in work proportional to the page, not to the name.
//!
//! # Crowded words
//! A lookup by name goes through the postings of the name's rarest word and compares names,
//! which costs nothing per entry in memory and is bounded while that word is rare. A word is
//! *crowded* from the moment it has [`CROWDED_POSTINGS`] postings until it falls back to
//! [`UNCROWDED_POSTINGS`] (the gap keeps a word near the mark from flapping). Only the
//! entries whose every word is crowded are in this table, so a name with a word that is not
//! crowded is looked up by scanning fewer than [`CROWDED_POSTINGS`] postings, and a name of
//! crowded words only through the table. When a word becomes crowded, or stops being, the
//! entries under it join or leave the table: a walk of at most a few thousand postings, once
//! per crossing. Most real names hold some rare word (a number, a title), so the table costs
//! memory only for names like `copyright`, `README.md` or `01 - Intro.mp3`.
//!
//! # Walks
//! That walk decodes a name and looks up its words for each of about a thousand entries,
//! 2–8 ms in cold memory at 10M entries: too long for one reactor turn. So a crossing only
//! flips the word's mark and queues a [`Walk`] of the entries posted under it then, which
//! `Index::continue_name_walks` does [`WALK_STEP`] entries at a time. Each step *settles* an
//! entry: puts it in the table if every word of its name is crowded, takes it out otherwise
//! (both no-ops when it is already so), from the index as it is at that step, so a stale
//! walk, or an entry id freed and reused since, is harmless. A word that became crowded serves
//! lookups through the table only once its walks are done ([`ByName::serves`]); until then a
//! lookup scans its postings (a few more than [`CROWDED_POSTINGS`]). A word that stops being
//! crowded serves no lookup at once, and its entries leave the table as its walk reaches them.
//!
//! # Shape
//! - `slots`: a [`ShardedTable`] (no growth rehashes more than a small share of it) with one
//!   slot per distinct name: 32 bits of the name's keyed hash (peers choose names, so the
//!   hash is seeded per process) and either the one entry bearing it or, with [`GROUP`] set,
//!   the group of a name borne by several. The hash is kept in the slot so that growing the
//!   table never decodes a name (8 bytes a slot).
//! - `groups`: for each name of two or more entries, its entries ranked: a `BTreeSet` of
//!   [`rank_key`]s, most holders first, then by hash (its first 8 bytes, then the entry id).
//! - `member`: entry → group ([`U32Map`], sharded too), for grouped entries only, so that a
//!   holder change re-ranks its entry in `O(log n)` without decoding its name.
//!
//! # Invariants
//! - A posted live entry is in the table exactly when every word of its name is crowded, and
//!   then in exactly one slot: alone, or in its name's group; an entry not yet posted (see
//!   `Index::post_pending`) is in none. This holds for every name whose words all serve
//!   lookups ([`ByName::serves`]), and for every name once the walks are done: since the last
//!   change of a mark of one of its words, every entry bearing it has been settled (by the
//!   walk that change queued, walks being done in order, or when it was posted).
//! - A crowded word has more than [`UNCROWDED_POSTINGS`] postings; a word that is not has
//!   fewer than [`CROWDED_POSTINGS`].
//! - A group has at least two entries, each in `member`; its keys carry the entries' current
//!   holder counts (the index re-ranks an entry whenever its holders change).
//! - With no entry left, every allocation is released.

use super::shards::{ShardedTable, U32Map};
use slab::Slab;
use std::collections::{BTreeSet, VecDeque};
use std::hash::BuildHasher;
use std::ops::Bound;

/// In a slot's value: the rest is a group id, not an entry id.
const GROUP: u32 = 1 << 31;

/// A word with this many postings becomes crowded (see the module docs): a lookup of a name
/// with a word that is not crowded compares fewer names than this.
pub(super) const CROWDED_POSTINGS: usize = 1024;
/// A crowded word that falls to this many postings is not crowded any more.
pub(super) const UNCROWDED_POSTINGS: usize = 512;

/// Entries a walk settles per [`Index::continue_name_walks`](super::Index::continue_name_walks)
/// call (about 4 µs each in cold memory at 10M entries).
pub(super) const WALK_STEP: usize = 64;

/// Entries settled between two looks at the caller's clock in
/// [`Index::continue_name_walks_until`](super::Index::continue_name_walks_until).
pub(super) const WALK_CHECK: usize = 8;

/// The entries under a word when it crossed a mark, to be settled (see the module docs).
pub(super) struct Walk {
    /// The word, and whether it became crowded (else it stopped being).
    pub(super) word: u32,
    pub(super) crowded: bool,
    pub(super) entries: Vec<u32>,
    /// The entries before it are settled.
    pub(super) at: usize,
}

/// The position of an entry with `holders` holders, hash prefix `hash8` and id `entry` in its
/// name's order: ascending keys are most holders first, then the hash, then the id.
#[inline]
pub(super) fn rank_key(holders: u32, hash8: u64, entry: u32) -> u128 {
    (u128::from(u32::MAX - holders) << 96) | (u128::from(hash8) << 32) | u128::from(entry)
}

/// The entry id in a [`rank_key`].
#[inline]
pub(super) fn key_entry(key: u128) -> u32 {
    key as u32
}

/// One page of a name's entries.
#[derive(Debug, Default)]
pub(super) struct Page {
    /// The entries, best first, with their keys.
    pub(super) entries: Vec<(u128, u32)>,
    /// How many entries bear the name.
    pub(super) total: usize,
    /// More follow: the key of the last one shown.
    pub(super) next: Option<u128>,
}

struct Group {
    /// The name's hash (to find its slot again).
    hash: u32,
    ranked: BTreeSet<u128>,
}

/// The name table. See the module docs.
pub(super) struct ByName {
    hasher: hashbrown::DefaultHashBuilder,
    /// `(name hash, entry or GROUP | group)`.
    slots: ShardedTable<(u32, u32)>,
    groups: Slab<Group>,
    member: U32Map,
    /// The crowded words.
    crowded: hashbrown::HashSet<u32>,
    /// Walks to do, oldest first.
    pub(super) walks: VecDeque<Walk>,
    /// Crowded words with walks to do since they became crowded, and how many.
    settling: hashbrown::HashMap<u32, u32>,
    /// [`CROWDED_POSTINGS`] and [`UNCROWDED_POSTINGS`] (tests lower them).
    pub(super) crowded_at: usize,
    pub(super) uncrowded_at: usize,
}

#[inline]
fn widen(h: u32) -> u64 {
    // hashbrown takes the top 7 bits for its tags and the low bits for the bucket, the shards
    // bits 24–55: a multiplication by an odd constant spreads the 32 bits over all of them.
    u64::from(h).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl ByName {
    /// Heap bytes held, roughly (hash tables at their bucket counts, ranked sets by item).
    pub(super) fn heap_bytes(&self) -> usize {
        let groups: usize = self
            .groups
            .iter()
            .map(|(_, g)| 24 + g.ranked.len() * 20)
            .sum();
        self.slots.heap_bytes()
            + self.groups.capacity() * std::mem::size_of::<Group>()
            + groups
            + self.member.heap_bytes()
            + self.crowded.capacity() * 5
    }

    pub(super) fn new() -> Self {
        ByName {
            hasher: hashbrown::DefaultHashBuilder::default(),
            slots: ShardedTable::new(),
            groups: Slab::new(),
            member: U32Map::default(),
            crowded: hashbrown::HashSet::new(),
            walks: VecDeque::new(),
            settling: hashbrown::HashMap::new(),
            crowded_at: CROWDED_POSTINGS,
            uncrowded_at: UNCROWDED_POSTINGS,
        }
    }

    /// Whether word `w` is crowded.
    #[inline]
    pub(super) fn is_crowded(&self, w: u32) -> bool {
        !self.crowded.is_empty() && self.crowded.contains(&w)
    }

    /// Whether word `w` is crowded and its walks are done: a name whose words all serve is
    /// looked up through the table.
    #[inline]
    pub(super) fn serves(&self, w: u32) -> bool {
        self.is_crowded(w) && (self.settling.is_empty() || !self.settling.contains_key(&w))
    }

    /// Marks word `w` crowded or not, and queues the walk of `under`, the entries posted
    /// under it (see the module docs).
    pub(super) fn set_crowded(&mut self, w: u32, crowded: bool, under: Vec<u32>) {
        if crowded {
            self.crowded.insert(w);
            *self.settling.entry(w).or_insert(0) += 1;
        } else {
            self.crowded.remove(&w);
            if self.crowded.is_empty() {
                self.crowded = hashbrown::HashSet::new();
            }
        }
        if crowded || !under.is_empty() {
            self.walks.push_back(Walk {
                word: w,
                crowded,
                entries: under,
                at: 0,
            });
        }
    }

    /// The oldest walk is done.
    pub(super) fn end_walk(&mut self) {
        let walk = self.walks.pop_front().expect("a walk under way");
        if walk.crowded {
            let n = self.settling.get_mut(&walk.word).expect("counted");
            *n -= 1;
            if *n == 0 {
                self.settling.remove(&walk.word);
            }
        }
        if self.walks.is_empty() {
            self.walks = VecDeque::new();
            self.settling = hashbrown::HashMap::new();
        }
    }

    fn hash(&self, name: &[u8]) -> u32 {
        self.hasher.hash_one(name) as u32
    }

    /// An entry standing for the slot's name.
    fn representative(groups: &Slab<Group>, v: u32) -> u32 {
        if v & GROUP == 0 {
            v
        } else {
            let g = &groups[(v & !GROUP) as usize];
            key_entry(*g.ranked.first().expect("a group has entries"))
        }
    }

    /// Adds posted entry `e`, named `name`, whose current key is `key` (a no-op if it is in
    /// already). `same(x)`: whether entry `x` bears `name`; `key_of(x)`: entry `x`'s current
    /// key.
    pub(super) fn insert(
        &mut self,
        e: u32,
        name: &[u8],
        key: u128,
        same: impl Fn(u32) -> bool,
        key_of: impl Fn(u32) -> u128,
    ) {
        assert!(e < GROUP, "entry ids beyond the name table's range");
        let h = self.hash(name);
        let ByName {
            slots,
            groups,
            member,
            ..
        } = self;
        let found = slots.find_mut(widen(h), |&(sh, v)| {
            sh == h && same(Self::representative(groups, v))
        });
        match found {
            Some(slot) if slot.1 == e => {}
            Some(slot) if slot.1 & GROUP != 0 => {
                let g = slot.1 & !GROUP;
                if member.insert(e, g).is_none() {
                    groups[g as usize].ranked.insert(key);
                }
            }
            Some(slot) => {
                let alone = slot.1;
                let ranked = BTreeSet::from([key_of(alone), key]);
                let g = groups.insert(Group { hash: h, ranked }) as u32;
                member.insert(alone, g);
                member.insert(e, g);
                slot.1 = GROUP | g;
            }
            None => {
                slots.insert_unique(widen(h), (h, e), |&(sh, _)| widen(sh));
            }
        }
    }

    /// Whether `e` shares its name with other entries (then its holder changes re-rank it).
    #[inline]
    pub(super) fn is_grouped(&self, e: u32) -> bool {
        !self.member.is_empty() && self.member.contains_key(e)
    }

    /// Grouped entry `e`'s key changed from `old` to `new`.
    pub(super) fn rerank(&mut self, e: u32, old: u128, new: u128) {
        if let Some(g) = self.member.get(e) {
            let ranked = &mut self.groups[g as usize].ranked;
            ranked.remove(&old);
            ranked.insert(new);
        }
    }

    /// Removes entry `e`, named `name`, whose current key is `key`.
    pub(super) fn remove(&mut self, e: u32, name: &[u8], key: u128) {
        if let Some(g) = self.member.remove(e) {
            let group = &mut self.groups[g as usize];
            group.ranked.remove(&key);
            if group.ranked.len() == 1 {
                // Alone again: the slot holds the entry itself.
                let last = key_entry(*group.ranked.first().expect("one left"));
                let h = group.hash;
                self.member.remove(last);
                self.groups.remove(g as usize);
                if let Some(slot) = self
                    .slots
                    .find_mut(widen(h), |&(sh, v)| sh == h && v == GROUP | g)
                {
                    slot.1 = last;
                }
            }
        } else {
            let h = self.hash(name);
            self.slots
                .remove(widen(h), |&(sh, v)| sh == h && v == e, |&(sh, _)| widen(sh));
        }
        if self.slots.len() == 0 && self.groups.capacity() > 0 {
            self.groups = Slab::new();
        }
    }

    /// The entries named `name` after position `after` (from the best if `None`), at most
    /// `max` of them (at least one), or `None` if no entry bears the name. `same` and
    /// `key_of` as for [`ByName::insert`]. Costs `O(log n + max)` for a name of `n` entries.
    pub(super) fn page(
        &self,
        name: &[u8],
        after: Option<u128>,
        max: usize,
        same: impl Fn(u32) -> bool,
        key_of: impl Fn(u32) -> u128,
    ) -> Option<Page> {
        let h = self.hash(name);
        let &(_, v) = self.slots.find(widen(h), |&(sh, v)| {
            sh == h && same(Self::representative(&self.groups, v))
        })?;
        let max = max.max(1);
        let mut page = Page::default();
        if v & GROUP == 0 {
            let key = key_of(v);
            page.total = 1;
            if after.map_or(true, |a| key > a) {
                page.entries.push((key, v));
            }
            return Some(page);
        }
        let ranked = &self.groups[(v & !GROUP) as usize].ranked;
        page.total = ranked.len();
        let from = after.map_or(Bound::Unbounded, Bound::Excluded);
        let mut keys = ranked.range((from, Bound::Unbounded));
        page.entries
            .extend(keys.by_ref().take(max).map(|&k| (k, key_entry(k))));
        if keys.next().is_some() {
            page.next = page.entries.last().map(|&(k, _)| k);
        }
        Some(page)
    }

    /// Whether entry `e`, named `name`, is in the table (for tests).
    #[cfg(test)]
    pub(super) fn contains(&self, e: u32, name: &[u8]) -> bool {
        let h = self.hash(name);
        self.member.contains_key(e)
            || self
                .slots
                .find(widen(h), |&(sh, v)| sh == h && v == e)
                .is_some()
    }

    /// Distinct names in the table and entries in groups (for tests).
    #[cfg(test)]
    pub(super) fn counts(&self) -> (usize, usize) {
        (self.slots.len(), self.member.len())
    }

    /// Whether every allocation went back.
    #[cfg(test)]
    pub(super) fn is_released(&self) -> bool {
        self.slots.is_released()
            && self.groups.capacity() == 0
            && self.member.is_released()
            && self.crowded.capacity() == 0
            && self.walks.capacity() == 0
            && self.settling.capacity() == 0
    }
}
