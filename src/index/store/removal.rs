//! Removing holdings: [`Index::unregister`] and [`Index::remove_peer`], and the deletion of
//! the entries, words and files left without holders (see the module docs' "Removal").

use super::lookup::entry_key;
use super::words::lower_words;
use super::{posting_key, Index, PeerId, NONE, SOLE};
use crate::wire::FileHash;

impl Index {
    /// Removes `peer` and all its holdings at once, in time proportional to its holdings
    /// (and finishes every departure in progress: see `depart.rs` for the sliced way).
    /// Returns how many entries it held, or `None` if it was not live.
    pub fn remove_peer(&mut self, peer: PeerId) -> Option<u32> {
        let held = self.begin_departure(peer)?;
        while self.has_departures() {
            self.continue_departures(usize::MAX);
        }
        Some(held)
    }

    /// Withdraws all of `peer`'s holdings of `hashes` (whatever sizes it claimed); returns how
    /// many entries it lost. Hashes it never registered count 0 and leave other peers'
    /// holdings alone.
    pub fn unregister(&mut self, peer: PeerId, hashes: &[FileHash]) -> u32 {
        self.post_pending();
        if self.peers.get(peer).is_none() {
            return 0;
        }
        let mut removed = 0;
        let mut held = std::mem::take(&mut self.work.items);
        let mut dead = std::mem::take(&mut self.work.dead);
        dead.clear();
        let mut files = Vec::new();
        for h in hashes {
            // Every size claimed for the hash: the peer withdraws the hash, whatever it said.
            files.clear();
            files.extend(self.files.variants(h));
            for &file in &files {
                held.clear();
                let mut e = self.files[file].first_entry();
                while e != NONE {
                    if self.entries.holders(e).contains(&peer.0) {
                        held.push(e);
                    }
                    e = self.entries.next(e);
                }
                for &e in &held {
                    // Deleted after the loop: a later hash of the same call may name this file
                    // again, and must still find it (now without this peer).
                    if self.withdraw_holding(peer, e) {
                        dead.push(e);
                    }
                    removed += 1;
                }
            }
        }
        self.work.items = held;
        self.delete_entries(&dead);
        self.work.dead = dead;
        self.peers.holdings -= removed as usize;
        removed
    }

    /// Withdraws `peer`'s holdings of the entries `ids`: distinct ids of entries it holds, as
    /// [`Index::holdings_from`] gave them with no change of the peer since. One name of a
    /// file goes, where [`Index::unregister`] withdraws every name of a hash. Returns how
    /// many holdings went.
    pub fn unregister_entries(&mut self, peer: PeerId, ids: &[u32]) -> u32 {
        self.post_pending();
        if self.peers.get(peer).is_none() {
            return 0;
        }
        let mut removed = 0;
        let mut dead = std::mem::take(&mut self.work.dead);
        dead.clear();
        for &e in ids {
            if !self.entries.holders(e).contains(&peer.0) {
                debug_assert!(false, "entry {e} is not held by {peer:?}");
                continue;
            }
            if self.withdraw_holding(peer, e) {
                dead.push(e);
            }
            removed += 1;
        }
        self.delete_entries(&dead);
        self.work.dead = dead;
        self.peers.holdings -= removed as usize;
        removed
    }

    /// Takes `peer`'s holding of entry `e` (which it holds) off the entry, its file's counts
    /// and the peer's record, re-ranking the entry; whether the entry is left with no holder
    /// (the caller deletes it, with the peer's other holdings counted).
    fn withdraw_holding(&mut self, peer: PeerId, e: u32) -> bool {
        let file = self.entries[e].file();
        let before = self.file_holder_count(file);
        let entry_before = self.entries.holder_count(&self.entries[e]);
        self.entries.pop_holder(e, peer.0);
        self.rerank(e, entry_before);
        if !self.peer_holds_file(peer.0, file) {
            self.peers.get_mut(peer).files -= 1;
            self.lose_holder(file);
        }
        self.note_holders_changed(file, before);
        self.peers.get_mut(peer).entries.remove(e);
        self.entries.holders(e).is_empty()
    }

    /// `file` lost one of its distinct holders (counted only for a file of several names).
    pub(super) fn lose_holder(&mut self, file: u32) {
        if let Some(n) = self.files.multi_holders.get_mut(file) {
            *n -= 1;
        }
    }

    /// Deletes the entries in `dead` (each without holders, listed once): their postings in
    /// one sorted batch, then their names and records, then files left without entries.
    pub(super) fn delete_entries(&mut self, dead: &[u32]) {
        if dead.is_empty() {
            return;
        }
        let mut scratch = std::mem::take(&mut self.work.words);
        let mut unpost = std::mem::take(&mut self.work.unpost);
        let mut name_buf = std::mem::take(&mut self.work.name);
        let posted = |ix: &Self, text: &str| {
            ix.words
                .find(text.as_bytes())
                .expect("an entry is posted under each word of its name")
        };
        unpost.clear();
        for &e in dead {
            // Postings are keyed by the tier the entry was posted in.
            let key = u64::from(posting_key(self.entries[e].posted_tier(), e));
            self.entries.decode_name(e, &mut name_buf);
            let rank = entry_key(&self.entries, &self.files, e);
            self.by_name.remove(e, &name_buf, rank);
            lower_words(
                std::str::from_utf8(&name_buf).expect("names are stored from str"),
                &mut scratch,
            );
            if scratch.spans.is_empty() {
                unpost.push((u64::from(posted(self, "")) << 32) | key);
            }
            for w in scratch.words() {
                unpost.push((u64::from(posted(self, w)) << 32) | key);
            }
        }
        // A word that occurs twice in a name was posted once.
        unpost.sort_unstable();
        unpost.dedup();
        // Crowded words that fall to the uncrowded mark, with the postings they keep.
        let mut falling = Vec::new();
        for group in unpost.chunk_by(|a, b| a >> 32 == b >> 32) {
            let w = (group[0] >> 32) as u32;
            if self.by_name.is_crowded(w) {
                let left = self.words.posting_count(w) - group.len();
                if left <= self.by_name.uncrowded_at {
                    falling.push((w, left));
                }
            }
        }
        self.words
            .unpost_sorted(&unpost, &mut self.work.items, &mut self.work.decoded);
        for (w, left) in falling {
            self.uncrowd_word(w, left);
        }
        self.work.words = scratch;
        self.work.name = name_buf;
        self.work.unpost = unpost;
        for &e in dead {
            self.delete_entry_record(e);
        }
        self.entries.names.start_compaction_if_due();
    }

    /// Frees entry `e`'s record and name (its postings are gone already), and its file if that
    /// was the file's last entry.
    fn delete_entry_record(&mut self, e: u32) {
        let file = self.entries[e].file();
        // Unlink from the file's entry list.
        let next = self.entries.next(e);
        let head = self.files[file].first_entry();
        let new_head = if head == e {
            self.files[file].set_first_entry(next);
            next
        } else {
            let mut prev = head;
            while self.entries.next(prev) != e {
                prev = self.entries.next(prev);
            }
            self.entries.set_next(prev, next);
            head
        };
        if new_head != NONE && self.entries.next(new_head) == NONE {
            self.entries[new_head].file |= SOLE;
            self.files.multi_holders.remove(file);
        }
        self.entries.remove(e);
        if self.files[file].first_entry() == NONE {
            self.files.delete(file);
        }
    }
}
