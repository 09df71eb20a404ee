//! Sliced peer removal: [`Index::begin_departure`] marks a peer *departing* at once, and
//! [`Index::continue_departures`] withdraws its holdings a bounded slice at a time.
//!
//! # Why it is exact between slices
//! From [`Index::begin_departure`] on, no answer lists a departing peer or counts it:
//! - it has no address ([`Index::peer_addr`] is `None`), so lookups, which list holders by
//!   address, leave it out, and a file or name entry whose holders are all departing is not
//!   found;
//! - a search counts only live holders ([`Index::live_holder_count`]): an entry without one is
//!   skipped, and a hit's holder count, its tier in the ranking and the `holders>=` filter use
//!   the live count. A departing holder can only lower a file's tier, so an entry's true
//!   posting key is at least the key it is posted under: the search walk, which stops when
//!   the next *posted* key cannot beat the worst hit kept, pushes each candidate with its
//!   *true* key and so stays exact (a threshold algorithm);
//! - [`Index::peer_count`] leaves departing peers out.
//!
//! What a departure in progress does count: [`Index::file_count`], [`Index::entry_count`] and
//! [`Index::holding_count`] include the holdings not withdrawn yet (they fall slice by slice),
//! and a lookup by name ranks a name's files and counts its `total` as the name table has them,
//! departing holders included, for the few turns a departure lasts (the files and holders it
//! lists are still only live ones, so a page may come short of a file whose holders all left).
//!
//! Each slice is what [`Index::unregister`] of part of the peer's entries would do, so the
//! index is consistent after every slice. A departing peer's id is not reused until its last
//! slice is done (its record stays in the peer table until then). Departures are worked on in
//! the order they began.

use super::{tier_of, Index, PeerId, SOLE};

/// Holdings a departure withdraws between two questions to the caller's clock (see
/// [`Index::continue_departures_until`]): few enough that a group takes well under the
/// loop's pause target even in cold memory, enough that the postings of a common word are
/// still removed many at a time. (A few in tests, so that the property tests stop slices
/// between groups.)
pub const DEPARTURE_GROUP_HOLDINGS: usize = if cfg!(test) { 3 } else { 16 };

/// A departure in progress: the peer, and the smallest of its entry ids not withdrawn yet
/// (its entries are withdrawn in id order; an entry it holds cannot be freed, so its id
/// cannot be reused, before its turn comes).
#[derive(Debug, Clone, Copy)]
pub(super) struct Departure {
    peer: u32,
    next: u32,
}

impl Index {
    /// Marks `peer` departing: from now on no answer lists or counts it as a holder (see the
    /// module docs of `depart.rs`), and [`Index::continue_departures`] withdraws its holdings.
    /// Returns how many entries it holds, or `None` if it is not live (or departing already).
    pub fn begin_departure(&mut self, peer: PeerId) -> Option<u32> {
        self.post_pending();
        if self.peers.get(peer)?.departing {
            return None;
        }
        let rec = self.peers.get_mut(peer);
        rec.departing = true;
        let held = rec.entries.len() as u32;
        self.peers.departing.push_back(Departure {
            peer: peer.0,
            next: 0,
        });
        Some(held)
    }

    /// Withdraws up to about `budget` holdings of departing peers (at least one step), the
    /// oldest departure first; a peer whose last holding goes is removed and its id freed.
    /// Returns the work done, in holdings (a finished departure counts one more), so that a
    /// caller can share one budget between several kinds of work.
    pub fn continue_departures(&mut self, budget: usize) -> usize {
        self.continue_departures_until(budget, || false)
    }

    /// [`Index::continue_departures`], stopping early once `is_late()` says time is up. It is
    /// asked after each group of [`DEPARTURE_GROUP_HOLDINGS`] holdings (the first group is
    /// always done), so a slice ends within one group's work of its deadline, however slow
    /// each holding turns out to be (cold memory at ten million entries, a busy machine). A
    /// group is withdrawn whole, as an unregister of those holdings would be, so the index is
    /// consistent whenever the slice stops. (Time is the caller's: `is_late` reads its clock.)
    pub fn continue_departures_until(
        &mut self,
        budget: usize,
        mut is_late: impl FnMut() -> bool,
    ) -> usize {
        if self.peers.departing.is_empty() {
            return 0;
        }
        self.post_pending();
        let budget = budget.max(1);
        let mut used = 0;
        let mut ids = std::mem::take(&mut self.work.slice);
        while used < budget {
            let Some(d) = self.peers.departing.front().copied() else {
                break;
            };
            let want = (budget - used).min(DEPARTURE_GROUP_HOLDINGS);
            ids.clear();
            let rec = self.peers.recs[d.peer]
                .as_ref()
                .expect("a departing peer is live");
            ids.extend(rec.entries.iter_from(d.next).take(want));
            used += ids.len();
            self.withdraw(d.peer, &ids);
            // The files whose holder count crossed a tier (a file another peer holds too)
            // move their postings now, inside the group the caller's clock bounds: left
            // to the next slice's first `post_pending`, a whole slice's moves came out at once
            // there, before any look at the clock (1.2–1.5 ms at 10M real names).
            if !self.pending.retier.is_empty() {
                self.post_pending();
            }
            match ids.last() {
                Some(&last) if ids.len() == want => {
                    if let Some(front) = self.peers.departing.front_mut() {
                        front.next = last + 1;
                    }
                }
                _ => {
                    self.peers.departing.pop_front();
                    self.peers.remove(PeerId(d.peer));
                    used += 1;
                }
            }
            if used < budget && is_late() {
                break;
            }
        }
        self.work.slice = ids;
        used
    }

    /// One step of the hash filter's rebuild, if one is in progress (a bounded number of
    /// files: see `filter.rs`). The owner calls it once a turn; until the rebuild is complete
    /// the old filter answers, so it is about memory and false "maybe"s, never correctness.
    pub fn continue_filter_rebuild(&mut self) {
        self.files.rebuild_filter_step();
    }

    /// One step of each arena compaction under way (the names', the word texts'): a bounded
    /// number of records moved to a fresh arena (see `names.rs`). The owner calls it once a
    /// turn; the index answers the same whatever the step.
    pub fn continue_compaction(&mut self) {
        self.entries.compact_names_step();
        self.words.compact_texts_step();
    }

    /// Whether an arena compaction is under way.
    pub fn is_compacting(&self) -> bool {
        self.entries.names.is_compacting() || self.words.is_compacting()
    }

    /// Whether the hash filter is being rebuilt.
    pub fn is_rebuilding_filter(&self) -> bool {
        self.files.is_rebuilding()
    }

    /// Whether a departure is in progress.
    pub fn has_departures(&self) -> bool {
        !self.peers.departing.is_empty()
    }

    /// Peers departing (marked, holdings not all withdrawn yet).
    pub fn departing_count(&self) -> usize {
        self.peers.departing.len()
    }

    /// Whether peer id `p` belongs to a departing peer.
    #[inline]
    pub(super) fn is_departing(&self, p: u32) -> bool {
        self.peers
            .recs
            .get(p)
            .and_then(Option::as_ref)
            .is_some_and(|r| r.departing)
    }

    /// Holders of entry `e` (under its name) that are not departing.
    pub(super) fn live_entry_holders(&self, e: u32) -> u32 {
        let all = self.entries.holders(e);
        if self.peers.departing.is_empty() {
            return all.len() as u32;
        }
        all.iter().filter(|&&p| !self.is_departing(p)).count() as u32
    }

    /// Distinct holders of entry `e`'s file that are not departing: what search ranks and
    /// shows.
    pub(super) fn live_holder_count(&self, e: u32) -> u32 {
        let entry = &self.entries[e];
        if entry.file & SOLE != 0 {
            return self.live_entry_holders(e);
        }
        let file = entry.file();
        let all = self.files.multi_holders[&file];
        if self.peers.departing.is_empty() {
            return all;
        }
        // Few departures: ask each whether it holds the file; many: count the file's live
        // holders directly.
        if self.peers.departing.len() <= 4 {
            let gone = self
                .peers
                .departing
                .iter()
                .filter(|d| self.peer_holds_file(d.peer, file))
                .count() as u32;
            all - gone
        } else {
            let mut ids = self.file_holders(file);
            ids.retain(|&p| !self.is_departing(p));
            ids.len() as u32
        }
    }

    /// The posting key entry `e` would have with only its live holders counted (at least
    /// its posted key: departing holders only lower a tier), or `None` if no live peer holds
    /// it under its name (then it is as good as withdrawn).
    pub(super) fn live_posting_key(&self, e: u32) -> Option<(u32, u32)> {
        if self.live_entry_holders(e) == 0 {
            return None;
        }
        let live = self.live_holder_count(e);
        (live > 0).then(|| (super::posting_key(tier_of(live), e), live))
    }

    /// Withdraws departing `peer`'s holdings of `ids` (entries it holds), as an unregister
    /// would: entries left without holders go, with their words and files.
    fn withdraw(&mut self, peer: u32, ids: &[u32]) {
        let mut dead = std::mem::take(&mut self.work.dead);
        dead.clear();
        for &e in ids {
            let file = self.entries[e].file();
            let before = self.file_holder_count(file);
            let entry_before = self.entries.holder_count(&self.entries[e]);
            self.entries.pop_holder(e, peer);
            self.rerank(e, entry_before);
            // Entries of this file still to be visited may hold the peer: a file of several
            // names loses this holder only at the last of them.
            if self.files.multi_holders.contains_key(file) && !self.peer_holds_file(peer, file) {
                self.lose_holder(file);
            }
            self.note_holders_changed(file, before);
            if self.entries.holders(e).is_empty() {
                dead.push(e);
            }
        }
        self.delete_entries(&dead);
        self.work.dead = dead;
        self.peers.holdings -= ids.len();
    }
}
