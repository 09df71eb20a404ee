//! [`Index::lookup`]: who holds a file, by hash or hash prefix; [`Index::lookup_name`]: the
//! files of one exact name, a page at a time, best first.

use super::byname::{key_entry, rank_key, Page, WALK_CHECK, WALK_STEP};
use super::search::SPARE_NAME_BYTES;
use super::words::{lower_words, Scratch};
use super::{
    source_of, Entries, Files, Index, LookupError, NamePage, PeerId, ID_MASK, MAX_CLAIMS, NONE,
};
use crate::wire::{is_hex_prefix, FileHash, HeldFile, LookupKey};
use std::cmp::Ordering;

/// Files of lookup answers given back ([`Index::recycle_held`]) kept for the next answers: a
/// lookup by hash answers at most this many. With [`SPARE_NAME_BYTES`] and [`SPARE_HOLDERS`]
/// the spares hold at most 8 × (1 KiB + 8 KiB) whatever the answers were.
const SPARE_HELD: usize = MAX_CLAIMS;
/// A file given back with room for more holders than this is dropped, not kept.
const SPARE_HOLDERS: usize = 256;

impl Index {
    /// Who holds a file. `Hash` and a unique `HashPrefix` give the files of that hash: one per
    /// size claimed for it (see `Files::position`), the claim made from the most distinct
    /// addresses first (IPv4 addresses or IPv6 /64s, so one host's many sessions count once,
    /// and never more than one: the number of holders is not a criterion; ties: the smaller
    /// size), at most [`MAX_CLAIMS`]. Each is named by the name held from the most distinct
    /// addresses (ties: the name registered first), with
    /// every distinct holder's address in peer-id order. `Name` gives the first page of
    /// [`Index::lookup_name`] with its default sizes ([`NamePage::DEFAULT_FILES`] files of at
    /// most [`NamePage::DEFAULT_HOLDERS`] holders).
    pub fn lookup(&mut self, key: &LookupKey) -> Result<Vec<HeldFile>, LookupError> {
        self.post_pending();
        match key {
            LookupKey::Hash(h) => {
                // Nearly every hash has one claim: answered without a vector of them.
                let (first, second) = {
                    let mut variants = self.files.variants(h);
                    (variants.next(), variants.next())
                };
                match (first, second) {
                    (None, _) => Err(LookupError::NotFound),
                    (Some(file), None) => self.claims(&[file]),
                    (Some(_), Some(_)) => {
                        let files: Vec<u32> = self.files.variants(h).collect();
                        self.claims(&files)
                    }
                }
            }
            LookupKey::HashPrefix(p) => {
                if !is_hex_prefix(p) {
                    return Err(LookupError::BadPrefix);
                }
                let p = p.to_ascii_lowercase();
                // `is_hex_prefix` guarantees at least 8 hex digits: the first 4 bytes.
                let p32 = u32::from_str_radix(&p[..8], 16).map_err(|_| LookupError::BadPrefix)?;
                // A file only departing peers hold is not there (see `depart.rs`).
                let departing = self.has_departures();
                let files = self.files.find_prefix(p32, &p, |f| {
                    !departing || self.file_holders(f).iter().any(|&p| !self.is_departing(p))
                })?;
                self.claims(&files)
            }
            LookupKey::Name(name) => self
                .lookup_name(
                    name,
                    None,
                    NamePage::DEFAULT_FILES,
                    NamePage::DEFAULT_HOLDERS,
                )
                .map(|page| page.files),
        }
    }

    /// The files named exactly `name`, most holders first (holders of the file *under that
    /// name*; ties by hash): at most `max_files` (at least one) after position `after` (a
    /// [`NamePage::next`] of an earlier page; `None`: from the best), each with at most
    /// `max_holders` of its holders under that name (the lowest peer ids). Costs
    /// `O(log n + max_files × holders)` whatever the number `n` of files of that name, plus
    /// fewer than [`CROWDED_POSTINGS`](super::byname::CROWDED_POSTINGS) name comparisons for a
    /// name with a word that is not crowded (see `byname.rs`).
    pub fn lookup_name(
        &mut self,
        name: &str,
        after: Option<u128>,
        max_files: usize,
        max_holders: usize,
    ) -> Result<NamePage, LookupError> {
        self.post_pending();
        let mut scratch = Scratch::default();
        lower_words(name, &mut scratch);
        let words: Vec<&str> = if scratch.spans.is_empty() {
            vec![""]
        } else {
            scratch.words().collect()
        };
        // The rarest word that is not crowded bounds a scan; with none, the name table.
        let mut rare: Option<(usize, u32)> = None;
        for w in words {
            let id = self.words.find(w.as_bytes()).ok_or(LookupError::NotFound)?;
            if !self.by_name.serves(id) {
                let n = self.words.posting_count(id);
                if rare.map_or(true, |(b, _)| n < b) {
                    rare = Some((n, id));
                }
            }
        }
        let (entries, files) = (&self.entries, &self.files);
        let same = |e: u32| entries.cmp_name(e, name.as_bytes()) == Ordering::Equal;
        let page = match rare {
            None => self
                .by_name
                .page(name.as_bytes(), after, max_files, same, |e| {
                    entry_key(entries, files, e)
                })
                .ok_or(LookupError::NotFound)?,
            Some((_, w)) => {
                let mut keys: Vec<u128> = self
                    .words
                    .postings(w)
                    .map(|key| key & ID_MASK)
                    .filter(|&e| same(e))
                    .map(|e| entry_key(entries, files, e))
                    .collect();
                if keys.is_empty() {
                    return Err(LookupError::NotFound);
                }
                keys.sort_unstable();
                let total = keys.len();
                let mut rest = keys
                    .into_iter()
                    .filter(|&k| after.map_or(true, |a| k > a))
                    .map(|k| (k, key_entry(k)));
                let shown: Vec<(u128, u32)> = rest.by_ref().take(max_files.max(1)).collect();
                let next = rest.next().and(shown.last().map(|&(k, _)| k));
                Page {
                    entries: shown,
                    total,
                    next,
                }
            }
        };
        let mut ids = Vec::new();
        // A departing peer is no holder (see `depart.rs`): a file it alone held is left out.
        let departing = self.has_departures();
        let held: Vec<HeldFile> = page
            .entries
            .iter()
            .filter(|&&(_, e)| !departing || self.live_entry_holders(e) > 0)
            .map(|&(_, e)| {
                ids.clear();
                ids.extend(
                    self.entries
                        .holders(e)
                        .iter()
                        .filter(|&&p| !departing || !self.is_departing(p)),
                );
                let holder_count = ids.len() as u32;
                if ids.len() > max_holders {
                    ids.select_nth_unstable(max_holders);
                    ids.truncate(max_holders);
                }
                ids.sort_unstable();
                let rec = &self.files[self.entries[e].file()];
                HeldFile {
                    hash: rec.hash,
                    size: rec.size(),
                    name: name.to_string(),
                    holders: ids
                        .iter()
                        .filter_map(|&p| self.peer_addr(PeerId(p)))
                        .collect(),
                    holder_count,
                }
            })
            .collect();
        if held.is_empty() && page.next.is_none() && after.is_none() {
            return Err(LookupError::NotFound);
        }
        Ok(NamePage {
            files: held,
            total: page.total as u64,
            next: page.next,
        })
    }

    /// Distinct holder ids of `file`, ascending.
    pub(super) fn file_holders(&self, file: u32) -> Vec<u32> {
        let mut ids = Vec::new();
        self.file_holders_into(file, &mut ids);
        ids
    }

    /// [`Index::file_holders`] into `ids` (cleared first).
    fn file_holders_into(&self, file: u32, ids: &mut Vec<u32>) {
        ids.clear();
        let mut e = self.files[file].first_entry();
        while e != NONE {
            ids.extend_from_slice(self.entries.holders(e));
            e = self.entries.next(e);
        }
        ids.sort_unstable();
        ids.dedup();
    }

    /// The files of one hash (`files`, one per size claimed) as a lookup answer, best claim
    /// first (see [`Index::lookup`]); claims only departing peers hold are left out (see
    /// `depart.rs`), and with none left the hash is not found.
    fn claims(&mut self, files: &[u32]) -> Result<Vec<HeldFile>, LookupError> {
        let mut answer = std::mem::take(&mut self.work.held_vec);
        answer.clear();
        if let [file] = files[..] {
            // One claim (nearly always): nothing to weigh; its holders are the live ones.
            let held = self.held_file(file, None);
            if held.holders.is_empty() {
                answer.push(held);
                self.recycle_held(answer);
                return Err(LookupError::NotFound);
            }
            answer.push(held);
            return Ok(answer);
        }
        // Departing peers have no address, so they count for no address.
        let mut weighed: Vec<(usize, u32)> = files
            .iter()
            .map(|&f| (self.sources(&self.file_holders(f)), f))
            .filter(|&(addresses, _)| addresses > 0)
            .collect();
        if weighed.is_empty() {
            self.work.held_vec = answer;
            return Err(LookupError::NotFound);
        }
        // More addresses first; the sort is stable, so equal claims stay in size order.
        weighed.sort_by_key(|w| std::cmp::Reverse(w.0));
        weighed.truncate(MAX_CLAIMS);
        for (_, f) in weighed {
            let held = self.held_file(f, None);
            answer.push(held);
        }
        Ok(answer)
    }

    /// How many distinct addresses (IPv4 addresses, IPv6 /64s) the live peers among
    /// `holders` are at (a departing peer has none).
    fn sources(&self, holders: &[u32]) -> usize {
        let mut sources: Vec<(bool, u64)> = holders
            .iter()
            .filter_map(|&p| self.peer_addr(PeerId(p)))
            .map(|a| source_of(a.ip()))
            .collect();
        sources.sort_unstable();
        sources.dedup();
        sources.len()
    }

    /// `file` as a lookup answer, named by `entry`, or by the name held from the most distinct
    /// addresses (ties: the name registered first; departing holders count for none).
    /// The answer is built in the buffers of an earlier answer given back
    /// ([`Index::recycle_held`]) when there is one.
    fn held_file(&mut self, file: u32, entry: Option<u32>) -> HeldFile {
        let entry = entry.unwrap_or_else(|| self.naming_entry(file));
        let mut ids = std::mem::take(&mut self.work.holder_ids);
        self.file_holders_into(file, &mut ids);
        let mut held = self.work.held_spare.pop().unwrap_or_else(|| HeldFile {
            hash: FileHash([0; 32]),
            size: 0,
            name: String::new(),
            holders: Vec::new(),
            holder_count: 0,
        });
        let rec = &self.files[file];
        held.hash = rec.hash;
        held.size = rec.size();
        held.holders.clear();
        held.holders
            .extend(ids.iter().filter_map(|&p| self.peer_addr(PeerId(p))));
        held.holder_count = held.holders.len() as u32;
        let mut name = std::mem::take(&mut held.name).into_bytes();
        self.entries.decode_name(entry, &mut name);
        held.name = String::from_utf8(name).expect("names are stored from str");
        self.work.holder_ids = ids;
        held
    }

    /// The entry whose name a lookup by hash gives `file`: the name held from the most
    /// distinct addresses (ties: the name registered first; departing holders count for
    /// none).
    fn naming_entry(&self, file: u32) -> u32 {
        // A file's entries are listed newest first, so on a tie the later one wins.
        let first = self.files[file].first_entry();
        if self.entries.next(first) == NONE {
            return first;
        }
        let weight = |e: u32| self.sources(self.entries.holders(e));
        let (mut best, mut best_weight) = (first, weight(first));
        let mut e = self.entries.next(first);
        while e != NONE {
            let w = weight(e);
            if w >= best_weight {
                (best, best_weight) = (e, w);
            }
            e = self.entries.next(e);
        }
        best
    }

    /// Takes back the files of a lookup answer once it is encoded, so that the next answers
    /// build theirs in the same memory rather than in fresh allocations (each costs hundreds
    /// of ns on the heap a large index leaves; see `search.rs`): at most [`SPARE_HELD`]
    /// files are kept, none with a name of more than [`SPARE_NAME_BYTES`] bytes or room for
    /// more than [`SPARE_HOLDERS`] holders. Answers are the same whether or not files are
    /// given back.
    pub fn recycle_held(&mut self, mut files: Vec<HeldFile>) {
        let spare = &mut self.work.held_spare;
        for held in files.drain(..) {
            if spare.len() < SPARE_HELD
                && held.name.capacity() <= SPARE_NAME_BYTES
                && held.holders.capacity() <= SPARE_HOLDERS
            {
                spare.push(held);
            }
        }
        if files.capacity() <= SPARE_HELD && files.capacity() > self.work.held_vec.capacity() {
            self.work.held_vec = files;
        }
    }

    /// Whether every word of `text` is crowded (then the entries of that name belong in the
    /// name table).
    pub(super) fn words_crowded(&self, text: &str, scratch: &mut Scratch) -> bool {
        lower_words(text, scratch);
        let crowded = |w: &str| {
            self.words
                .find(w.as_bytes())
                .is_some_and(|id| self.by_name.is_crowded(id))
        };
        if scratch.spans.is_empty() {
            crowded("")
        } else {
            scratch.words().all(crowded)
        }
    }

    /// Entry `e` (posted, its name in `text`, the ids of its words in `word_ids`: the empty
    /// word's for a name without words) joins the name table if its words are all crowded; a
    /// word of it that has just reached the crowded mark becomes crowded first, with every
    /// entry under it (see `byname.rs`).
    pub(super) fn track_posted(&mut self, e: u32, text: &str, word_ids: &[u32]) {
        for &w in word_ids {
            if !self.by_name.is_crowded(w) && self.words.posting_count(w) >= self.by_name.crowded_at
            {
                self.crowd_word(w);
            }
        }
        if word_ids.iter().all(|&w| self.by_name.is_crowded(w)) {
            self.table_insert(e, text.as_bytes());
        }
    }

    fn table_insert(&mut self, e: u32, name: &[u8]) {
        let key = entry_key(&self.entries, &self.files, e);
        let Index {
            entries,
            files,
            by_name,
            ..
        } = self;
        by_name.insert(
            e,
            name,
            key,
            |x| entries.cmp_name(x, name) == Ordering::Equal,
            |x| entry_key(entries, files, x),
        );
    }

    /// Word `w` becomes crowded: the entries under it whose words are now all crowded are to
    /// join the name table, walked later (see `byname.rs`).
    fn crowd_word(&mut self, w: u32) {
        let under: Vec<u32> = self.words.postings(w).map(|key| key & ID_MASK).collect();
        self.by_name.set_crowded(w, true, under);
    }

    /// Word `w` stops being crowded (it has fallen to the uncrowded mark; `left` postings
    /// remain): the entries under it are to leave the name table, walked later.
    pub(super) fn uncrowd_word(&mut self, w: u32, left: usize) {
        // With none left the word is gone (its id free for another): nothing to walk.
        let under: Vec<u32> = if left == 0 {
            Vec::new()
        } else {
            self.words.postings(w).map(|key| key & ID_MASK).collect()
        };
        self.by_name.set_crowded(w, false, under);
    }

    /// Settles up to [`WALK_STEP`] entries of the name table's walks (see `byname.rs`): each
    /// joins the table if every word of its name is crowded, else leaves it. The owner calls
    /// it once a turn while [`Index::has_name_walks`]; answers are the same whatever the step
    /// (only how a lookup by name finds its entries changes).
    pub fn continue_name_walks(&mut self) {
        self.continue_name_walks_until(|| false);
    }

    /// [`Index::continue_name_walks`], ending early once `is_late` says so (asked after every
    /// [`WALK_CHECK`] entries, so at least that many are settled a call): an entry's settling
    /// decodes its name and looks up each of its words, about 4 µs in cold memory at 10M
    /// entries but up to 23 µs on real names (session 17), so a whole step is not bounded by
    /// its count alone.
    pub fn continue_name_walks_until(&mut self, is_late: impl Fn() -> bool) {
        let (mut scratch, mut name) = (Scratch::default(), Vec::new());
        let mut left = WALK_STEP;
        while left > 0 {
            let Some(walk) = self.by_name.walks.front_mut() else {
                break;
            };
            let (from, ids) = (walk.at, std::mem::take(&mut walk.entries));
            let end = (from + left.min(WALK_CHECK)).min(ids.len());
            for &e in &ids[from..end] {
                self.settle_entry(e, &mut scratch, &mut name);
            }
            left -= end - from;
            let walk = self.by_name.walks.front_mut().expect("the walk under way");
            walk.entries = ids;
            walk.at = end;
            if end == walk.entries.len() {
                self.by_name.end_walk();
            }
            if left > 0 && is_late() {
                break;
            }
        }
    }

    /// Whether the name table has walks to do.
    pub fn has_name_walks(&self) -> bool {
        !self.by_name.walks.is_empty()
    }

    /// Visits `peer`'s holdings from entry id `from` on, in entry-id order, at most `max` of
    /// them: `visit(entry id, hash, size, name)`. Returns the entry id to go on from, or
    /// `None` once the last was visited (or for an unknown peer). Work in proportion to `max`,
    /// so a caller walks a big peer a slice a turn (the cluster's snapshot of a local session,
    /// `cluster/link.rs`, and the sweep after another node's, `cluster/apply.rs`). Staged
    /// holdings (files new to the index, not in the tables yet: [`Index::has_staged`]) are not
    /// visited. An entry the peer holds keeps its id, so a walk resumed after other changes
    /// visits every holding the peer had throughout.
    pub fn holdings_from(
        &self,
        peer: PeerId,
        from: u32,
        max: usize,
        mut visit: impl FnMut(u32, &FileHash, u64, &[u8]),
    ) -> Option<u32> {
        let rec = self.peers.get(peer)?;
        let mut name = Vec::new();
        for (seen, e) in rec.entries.iter_from(from).enumerate() {
            if seen == max {
                return Some(e);
            }
            let file = &self.files[self.entries[e].file()];
            self.entries.decode_name(e, &mut name);
            visit(e, &file.hash, file.size(), &name);
        }
        None
    }

    /// Whether `peer` holds files that are staged (answered for by a register, not in the
    /// tables yet: [`Index::post_pending`] puts them in, under entry ids not known before).
    pub fn has_staged(&self, peer: PeerId) -> bool {
        self.peers.get(peer).is_some_and(|p| p.staged > 0)
    }

    /// Puts entry `e` in the name table or takes it out, as the marks of its words now say; a
    /// free or unposted id is left alone.
    fn settle_entry(&mut self, e: u32, scratch: &mut Scratch, name: &mut Vec<u8>) {
        if !self.entries.is_posted(e) {
            return;
        }
        self.entries.decode_name(e, name);
        let text = std::str::from_utf8(name).expect("names are stored from str");
        if self.words_crowded(text, scratch) {
            self.table_insert(e, name);
        } else {
            let key = entry_key(&self.entries, &self.files, e);
            self.by_name.remove(e, name, key);
        }
    }

    /// Entry `e` changed from `old_holders` holders: re-rank it among the entries of its name.
    #[inline]
    pub(super) fn rerank(&mut self, e: u32, old_holders: u32) {
        if self.by_name.is_grouped(e) {
            let hash8 = hash8(&self.files, &self.entries, e);
            let new = self.entries.holder_count(&self.entries[e]);
            self.by_name
                .rerank(e, rank_key(old_holders, hash8, e), rank_key(new, hash8, e));
        }
    }
}

/// The first 8 bytes of entry `e`'s hash, as a number that orders like the hash.
#[inline]
fn hash8(files: &Files, entries: &Entries, e: u32) -> u64 {
    let hash = &files[entries[e].file()].hash.0;
    u64::from_be_bytes(hash[..8].try_into().expect("8 bytes"))
}

/// Entry `e`'s position among the entries of its name, as it is now.
pub(super) fn entry_key(entries: &Entries, files: &Files, e: u32) -> u128 {
    rank_key(
        entries.holder_count(&entries[e]),
        hash8(files, entries, e),
        e,
    )
}
