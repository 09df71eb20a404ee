//! The index server's data structure: who shares which file under which name. Pure, no I/O.
//!
//! # Model
//! - A **peer** is a live session, with the address other peers download from.
//! - A **file** is a content hash ([`FileHash`]) with one size.
//! - An **entry** is a distinct (hash, name) pair; one file may have several names.
//! - A **holding** is (peer, entry): the peer shares that file under that name.
//!
//! # Invariants
//! - Every live entry has at least one holder; every live file has at least one entry. When the
//!   last holding of an entry goes, the entry goes (its name, its word postings); when the last
//!   entry of a file goes, the file goes (its hash-index item). Nothing outlives its holders, so
//!   after every peer is removed all counts are zero and the big vectors are released.
//! - `FileRec::holders` is the number of distinct peers holding any entry of the file;
//!   `PeerRec::files` is the number of distinct files the peer holds.
//! - A word's posting set holds exactly the live entries whose name contains that word.
//! - A file's size never changes while it is indexed: a register with another size is rejected.
//!
//! # Memory layout (why it is this shape)
//! The target is ≤150 bytes per indexed file at a million files, so no per-file `String`,
//! `Vec` or `HashMap` key copies:
//! - `files: Vec<FileRec>` (44 B: hash, size, first entry, holder count), addressed by `u32`
//!   ids with a free list.
//! - `by_hash`: a [`BlockSet`] of `u64` items `(first 4 hash bytes << 32) | file id`, kept in
//!   full-hash order (ties on the 4-byte prefix are broken by comparing the full hash through
//!   `files`). It serves exact lookups, prefix lookups (a range) and duplicate checks in
//!   `O(log n)` with ~8–11 B per file. Ordering by the *full* hash matters: peers choose the hash
//!   bytes, so anything keyed on a fixed prefix could be flooded with collisions.
//! - `entries: Vec<EntryRec>` (32 B: name, file id, next entry of the same file, two inline
//!   holder slots). Entries with more than two holders spill to `spill`, a slab of `Vec<u32>`.
//! - Words: a `BTreeMap` from lowercase word to word id (sorted, so a prefix is a range), and one
//!   posting [`BlockSet<u32>`] of entry ids per word: sorted blocks of at most 256 ids, ~4–5 B per
//!   posting, `O(log n)` insert and remove so removing an entry never scans a long posting list.
//! - Each peer keeps a `BlockSet<u32>` of the entries it holds, so removing a peer costs time
//!   proportional to its own holdings.
//! - Exact word lookups go through a hash map beside the `BTreeMap` (~1 B per file at 50k
//!   words), because a B-tree walk over boxed strings costs a cache miss per level.
//! - Exact-name lookup has no table of its own: it goes through the postings of the name's
//!   rarest word and compares names, which saves a hash table slot per entry.
//!
//! # Words
//! Words are maximal runs of `char::is_alphanumeric` characters, lowercased character by
//! character (`char::to_lowercase`, no context rules, so the lowercase of a prefix is a prefix of
//! the lowercase). Names without any word are indexed under the empty word so that an exact name
//! lookup still finds them; a query never produces the empty word.

use crate::wire::{is_hex_prefix, FileEntry, FileHash, HeldFile, LookupKey, SearchHit};
use slab::Slab;
use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap};
use std::fmt;
use std::net::SocketAddr;
use std::ops::Bound;

/// Longest accepted file name, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// Marks an unused inline holder slot, a missing link, or a free record.
const NONE: u32 = u32::MAX;
/// In `EntryRec::holders[0]`: the holders live in `spill[holders[1]]`.
const SPILLED: u32 = u32::MAX - 1;
/// Largest block of a [`BlockSet`]: big enough that block headers cost little per item, small
/// enough that an insert or remove moves at most 1 KiB (of `u32`s).
const BLOCK_ITEMS: usize = 256;

/// A live peer's id, handed out by [`Index::add_peer`]. Ids are reused after removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

/// What a [`Index::register`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegisterOutcome {
    /// Holdings new to this peer.
    pub added: u32,
    /// Entries refused: bad name, or a size that disagrees with the indexed size of the hash.
    pub rejected: u32,
    /// Distinct hashes this peer holds after the call.
    pub total: u32,
}

/// Why a lookup found nothing usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LookupError {
    /// No file has that hash, hash prefix or name.
    NotFound,
    /// The hash prefix matches several files.
    Ambiguous,
    /// The hash prefix is not 8 to 64 hex digits.
    BadPrefix,
}

impl fmt::Display for LookupError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LookupError::NotFound => "no such file",
            LookupError::Ambiguous => "hash prefix matches several files",
            LookupError::BadPrefix => "hash prefix must be 8 to 64 hex digits",
        })
    }
}

impl std::error::Error for LookupError {}

/// Whether `name` may be indexed: non-empty, at most [`MAX_NAME_BYTES`], no `/` and no NUL.
/// Any other byte, control characters included, is legal.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_BYTES && !name.contains(['/', '\0'])
}

/// One file (hash). `first_entry == NONE` marks a free slot.
struct FileRec {
    hash: FileHash,
    /// The size as `[low, high]` halves: a `u64` would align the record to 8 and pad it from
    /// 44 to 48 bytes, 4 MB per million files.
    size: [u32; 2],
    /// Head of the singly linked list of this file's entries (through `EntryRec::next`).
    first_entry: u32,
    /// Distinct peers holding any entry of this file.
    holders: u32,
}

impl FileRec {
    fn size(&self) -> u64 {
        u64::from(self.size[0]) | (u64::from(self.size[1]) << 32)
    }
}

/// One (hash, name) pair. `file == NONE` marks a free slot.
struct EntryRec {
    name: Box<str>,
    file: u32,
    /// Next entry of the same file, or `NONE`.
    next: u32,
    /// Up to two peer ids inline (unused slots are `NONE`), or `[SPILLED, spill key]`.
    holders: [u32; 2],
}

/// One live peer.
struct PeerRec {
    addr: SocketAddr,
    /// Entry ids this peer holds.
    entries: BlockSet<u32>,
    /// Distinct files this peer holds.
    files: u32,
}

/// The index: peers, files, names and the word index over names. See the module docs.
pub struct Index {
    files: Vec<FileRec>,
    free_files: Vec<u32>,
    file_count: usize,
    by_hash: BlockSet<u64>,
    entries: Vec<EntryRec>,
    free_entries: Vec<u32>,
    entry_count: usize,
    spill: Slab<Vec<u32>>,
    word_ids: BTreeMap<Box<str>, u32>,
    /// The same map hashed: exact word lookups (register, removal, name lookup) are hot, and a
    /// B-tree walk over 50k boxed strings costs a cache miss per level.
    word_hash: hashbrown::HashMap<Box<str>, u32>,
    postings: Vec<BlockSet<u32>>,
    free_words: Vec<u32>,
    peers: Vec<Option<PeerRec>>,
    free_peers: Vec<u32>,
    peer_count: usize,
}

impl Default for Index {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Index")
            .field("peers", &self.peer_count)
            .field("files", &self.file_count)
            .field("entries", &self.entry_count)
            .field("words", &self.word_ids.len())
            .finish()
    }
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Index {
            files: Vec::new(),
            free_files: Vec::new(),
            file_count: 0,
            by_hash: BlockSet::new(),
            entries: Vec::new(),
            free_entries: Vec::new(),
            entry_count: 0,
            spill: Slab::new(),
            word_ids: BTreeMap::new(),
            word_hash: hashbrown::HashMap::new(),
            postings: Vec::new(),
            free_words: Vec::new(),
            peers: Vec::new(),
            free_peers: Vec::new(),
            peer_count: 0,
        }
    }

    /// Live peers.
    pub fn peer_count(&self) -> usize {
        self.peer_count
    }

    /// Distinct hashes indexed.
    pub fn file_count(&self) -> usize {
        self.file_count
    }

    /// Distinct (hash, name) entries indexed.
    pub fn entry_count(&self) -> usize {
        self.entry_count
    }

    /// Distinct words in the word index (the empty word of wordless names included).
    pub fn word_count(&self) -> usize {
        self.word_ids.len()
    }

    /// Distinct hashes `peer` holds (0 for an unknown peer).
    pub fn holdings_of(&self, peer: PeerId) -> u32 {
        self.peer(peer).map_or(0, |p| p.files)
    }

    /// The download address of `peer`, if it is live.
    pub fn peer_addr(&self, peer: PeerId) -> Option<SocketAddr> {
        self.peer(peer).map(|p| p.addr)
    }

    /// Adds a peer that serves downloads at `addr` (the IP seen on its socket, the port it
    /// announced).
    pub fn add_peer(&mut self, addr: SocketAddr) -> PeerId {
        let rec = PeerRec {
            addr,
            entries: BlockSet::new(),
            files: 0,
        };
        self.peer_count += 1;
        if let Some(id) = self.free_peers.pop() {
            self.peers[id as usize] = Some(rec);
            PeerId(id)
        } else {
            self.peers.push(Some(rec));
            PeerId((self.peers.len() - 1) as u32)
        }
    }

    /// Removes `peer` and all its holdings, in time proportional to its holdings. Returns how
    /// many entries it held, or `None` if it was not live.
    pub fn remove_peer(&mut self, peer: PeerId) -> Option<u32> {
        let rec = self.peers.get_mut(peer.0 as usize)?.take()?;
        self.peer_count -= 1;
        if self.peer_count == 0 {
            self.peers = Vec::new();
            self.free_peers = Vec::new();
        } else {
            self.free_peers.push(peer.0);
        }
        let mut held = 0;
        for e in rec.entries.iter() {
            held += 1;
            self.pop_holder(e, peer.0);
            let file = self.entries[e as usize].file;
            // Entries of this file still to be visited may hold the peer: the file loses this
            // holder only at the last of them.
            if !self.peer_holds_file(peer.0, file) {
                self.files[file as usize].holders -= 1;
            }
            self.delete_entry_if_unheld(e);
        }
        Some(held)
    }

    /// Registers `files` for `peer`, in bulk. Entries the peer already holds are no-ops;
    /// entries with an invalid name or a size that disagrees with the indexed size of their
    /// hash are rejected. An unknown peer gets every entry rejected.
    pub fn register(&mut self, peer: PeerId, files: &[FileEntry]) -> RegisterOutcome {
        let mut out = RegisterOutcome::default();
        if self.peer(peer).is_none() {
            out.rejected = files.len() as u32;
            return out;
        }
        let mut scratch = Scratch::default();
        for f in files {
            if !is_valid_name(&f.name) {
                out.rejected += 1;
                continue;
            }
            let file = match self.find_file(&f.hash) {
                Some(id) if self.files[id as usize].size() != f.size => {
                    out.rejected += 1;
                    continue;
                }
                Some(id) => id,
                None => self.create_file(f.hash, f.size),
            };
            let entry = match self.find_entry(file, &f.name) {
                Some(e) => e,
                None => self.create_entry(file, &f.name, &mut scratch),
            };
            if self.add_holding(peer, entry) {
                out.added += 1;
            }
        }
        out.total = self.holdings_of(peer);
        out
    }

    /// Withdraws all of `peer`'s holdings of `hashes`; returns how many entries it lost.
    /// Hashes it never registered count 0 and leave other peers' holdings alone.
    pub fn unregister(&mut self, peer: PeerId, hashes: &[FileHash]) -> u32 {
        if self.peer(peer).is_none() {
            return 0;
        }
        let mut removed = 0;
        let mut held = Vec::new();
        for h in hashes {
            let Some(file) = self.find_file(h) else {
                continue;
            };
            held.clear();
            let mut e = self.files[file as usize].first_entry;
            while e != NONE {
                if self.holder_slice(e).contains(&peer.0) {
                    held.push(e);
                }
                e = self.entries[e as usize].next;
            }
            for &e in &held {
                self.pop_holder(e, peer.0);
                if !self.peer_holds_file(peer.0, file) {
                    self.files[file as usize].holders -= 1;
                    self.peer_mut(peer).files -= 1;
                }
                self.peer_mut(peer).entries.remove(e);
                self.delete_entry_if_unheld(e);
                removed += 1;
            }
        }
        removed
    }

    /// Keyword search over names. Returns at most `limit` hits, best first, and whether more
    /// matched. Every query word (see the module docs for words) must equal
    /// or prefix a word of the name; query words are deduplicated; ranking is: more query words equal
    /// to a whole word of the name, then more holders, then name (bytewise), then hash.
    ///
    /// Candidates come from the postings of the most selective query word (the one whose
    /// prefix range has the fewest postings); the other words are checked against the
    /// candidate's name. The best `limit` are kept in a bounded heap, so a query matching a
    /// million entries costs time linear in the matches but memory only for `limit` hits.
    pub fn search(&self, query: &str, limit: usize) -> (Vec<SearchHit>, bool) {
        let mut scratch = Scratch::default();
        lower_words(query, &mut scratch);
        let mut qwords: Vec<String> = scratch.words().map(str::to_owned).collect();
        qwords.sort_unstable();
        qwords.dedup();
        if qwords.is_empty() {
            return (Vec::new(), false);
        }

        // The most selective query word: fewest postings over its prefix range.
        let mut best: Option<(usize, usize)> = None; // (postings, query word index)
        for (i, q) in qwords.iter().enumerate() {
            let mut total = 0usize;
            for (_, &w) in self.word_range(q) {
                total += self.postings[w as usize].len();
                if best.is_some_and(|(b, _)| total >= b) {
                    break;
                }
            }
            if best.map_or(true, |(b, _)| total < b) {
                best = Some((total, i));
            }
        }
        let Some((_, pick)) = best else {
            return (Vec::new(), false);
        };
        let q = &qwords[pick];
        let range: Vec<(bool, u32)> = self
            .word_range(q)
            .map(|(word, &w)| (**word == **q, w))
            .collect();
        // An entry may contain several words of the range; count it once. The exact word
        // sorts first in the range, so a single-word query sees its whole-word hits first.
        let mut seen = (range.len() > 1).then(|| vec![0u64; self.entries.len().div_ceil(64)]);

        let mut heap: BinaryHeap<Ranked<'_>> = BinaryHeap::new();
        let mut matched = 0usize;
        for &(exact, w) in &range {
            for e in self.postings[w as usize].iter() {
                if let Some(seen) = seen.as_mut() {
                    let (word, bit) = (e as usize / 64, 1u64 << (e % 64));
                    if seen[word] & bit != 0 {
                        continue;
                    }
                    seen[word] |= bit;
                }
                let entry = &self.entries[e as usize];
                let whole = if qwords.len() == 1 {
                    u32::from(exact)
                } else {
                    match match_words(&qwords, &entry.name, &mut scratch) {
                        Some(whole) => whole,
                        None => continue,
                    }
                };
                matched += 1;
                let file = &self.files[entry.file as usize];
                let hit = Ranked {
                    whole,
                    holders: file.holders,
                    name: &entry.name,
                    hash: &file.hash,
                    size: file.size(),
                };
                if heap.len() < limit {
                    heap.push(hit);
                } else if heap.peek().is_some_and(|worst| hit < *worst) {
                    heap.pop();
                    heap.push(hit);
                }
            }
        }
        let hits = heap
            .into_sorted_vec()
            .into_iter()
            .map(|r| SearchHit {
                name: r.name.to_owned(),
                size: r.size,
                hash: *r.hash,
                holders: r.holders,
            })
            .collect();
        (hits, matched > limit)
    }

    /// Who holds a file. `Hash` and a unique `HashPrefix` give one file, named by its most held
    /// name (ties: the smallest name); `Name` gives every hash with an entry of exactly that
    /// name, in hash order. `holders` are the distinct holders' addresses in peer-id order.
    pub fn lookup(&self, key: &LookupKey) -> Result<Vec<HeldFile>, LookupError> {
        match key {
            LookupKey::Hash(h) => {
                let file = self.find_file(h).ok_or(LookupError::NotFound)?;
                Ok(vec![self.held_file(file, None)])
            }
            LookupKey::HashPrefix(p) => {
                if !is_hex_prefix(p) {
                    return Err(LookupError::BadPrefix);
                }
                let p = p.to_ascii_lowercase();
                // `is_hex_prefix` guarantees at least 8 hex digits: the first 4 bytes.
                let p32 = u32::from_str_radix(&p[..8], 16).map_err(|_| LookupError::BadPrefix)?;
                let start = self
                    .by_hash
                    .search(|&item| ((item >> 32) as u32).cmp(&p32).then(Ordering::Greater));
                let start = start.unwrap_or_else(|at| at);
                let mut found = None;
                for item in self.by_hash.iter_from(start) {
                    if (item >> 32) as u32 != p32 {
                        break;
                    }
                    let file = item as u32;
                    if self.files[file as usize].hash.has_hex_prefix(&p) {
                        if found.is_some() {
                            return Err(LookupError::Ambiguous);
                        }
                        found = Some(file);
                    }
                }
                let file = found.ok_or(LookupError::NotFound)?;
                Ok(vec![self.held_file(file, None)])
            }
            LookupKey::Name(name) => {
                let mut scratch = Scratch::default();
                lower_words(name, &mut scratch);
                // The rarest word of the name bounds the scan; a wordless name uses the
                // empty word's postings.
                let mut best: Option<&BlockSet<u32>> = None;
                let words: Vec<&str> = if scratch.spans.is_empty() {
                    vec![""]
                } else {
                    scratch.words().collect()
                };
                for w in words {
                    let Some(&id) = self.word_hash.get(w) else {
                        return Err(LookupError::NotFound);
                    };
                    let set = &self.postings[id as usize];
                    if best.map_or(true, |b| set.len() < b.len()) {
                        best = Some(set);
                    }
                }
                let set = best.ok_or(LookupError::NotFound)?;
                let mut files: Vec<HeldFile> = set
                    .iter()
                    .filter(|&e| *self.entries[e as usize].name == **name)
                    .map(|e| self.held_file(self.entries[e as usize].file, Some(e)))
                    .collect();
                if files.is_empty() {
                    return Err(LookupError::NotFound);
                }
                files.sort_unstable_by_key(|f| f.hash);
                Ok(files)
            }
        }
    }

    // ---- internals ----

    fn peer(&self, peer: PeerId) -> Option<&PeerRec> {
        self.peers.get(peer.0 as usize)?.as_ref()
    }

    fn peer_mut(&mut self, peer: PeerId) -> &mut PeerRec {
        self.peers[peer.0 as usize]
            .as_mut()
            .expect("holding of a live peer")
    }

    /// Words whose text starts with `prefix`, in order (the word equal to it first).
    fn word_range<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = (&'a Box<str>, &'a u32)> {
        self.word_ids
            .range::<str, _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(w, _)| w.starts_with(prefix))
    }

    /// The file with hash `h`, in `O(log n)` over the full-hash order.
    fn find_file(&self, h: &FileHash) -> Option<u32> {
        let p32 = prefix32(h);
        self.by_hash
            .search(|&item| {
                ((item >> 32) as u32)
                    .cmp(&p32)
                    .then_with(|| self.files[item as u32 as usize].hash.cmp(h))
            })
            .ok()
            .map(|at| self.by_hash.get(at) as u32)
    }

    fn create_file(&mut self, hash: FileHash, size: u64) -> u32 {
        let rec = FileRec {
            hash,
            size: [size as u32, (size >> 32) as u32],
            first_entry: NONE,
            holders: 0,
        };
        let id = if let Some(id) = self.free_files.pop() {
            self.files[id as usize] = rec;
            id
        } else {
            self.files.push(rec);
            (self.files.len() - 1) as u32
        };
        self.file_count += 1;
        let p32 = prefix32(&hash);
        let at = self
            .by_hash
            .search(|&item| {
                ((item >> 32) as u32)
                    .cmp(&p32)
                    .then_with(|| self.files[item as u32 as usize].hash.cmp(&hash))
            })
            .expect_err("a new hash is not indexed yet");
        self.by_hash
            .insert_at(at, (u64::from(p32) << 32) | u64::from(id));
        id
    }

    fn delete_file(&mut self, file: u32) {
        let hash = self.files[file as usize].hash;
        let p32 = prefix32(&hash);
        let at = self
            .by_hash
            .search(|&item| {
                ((item >> 32) as u32)
                    .cmp(&p32)
                    .then_with(|| self.files[item as u32 as usize].hash.cmp(&hash))
            })
            .expect("a live file is indexed by hash");
        self.by_hash.remove_at(at);
        self.file_count -= 1;
        if self.file_count == 0 {
            // Give the memory back once the index is empty.
            self.files = Vec::new();
            self.free_files = Vec::new();
            self.by_hash = BlockSet::new();
        } else {
            self.files[file as usize].first_entry = NONE;
            self.free_files.push(file);
        }
    }

    fn find_entry(&self, file: u32, name: &str) -> Option<u32> {
        let mut e = self.files[file as usize].first_entry;
        while e != NONE {
            let rec = &self.entries[e as usize];
            if *rec.name == *name {
                return Some(e);
            }
            e = rec.next;
        }
        None
    }

    fn create_entry(&mut self, file: u32, name: &str, scratch: &mut Scratch) -> u32 {
        let rec = EntryRec {
            name: name.into(),
            file,
            next: self.files[file as usize].first_entry,
            holders: [NONE, NONE],
        };
        let id = if let Some(id) = self.free_entries.pop() {
            self.entries[id as usize] = rec;
            id
        } else {
            self.entries.push(rec);
            (self.entries.len() - 1) as u32
        };
        self.files[file as usize].first_entry = id;
        self.entry_count += 1;
        lower_words(name, scratch);
        scratch.sort_dedup();
        if scratch.spans.is_empty() {
            self.post(id, "");
        }
        for i in 0..scratch.spans.len() {
            let (a, b) = scratch.spans[i];
            self.post(id, &scratch.buf[a..b]);
        }
        id
    }

    fn post(&mut self, entry: u32, word: &str) {
        let w = match self.word_hash.get(word) {
            Some(&w) => w,
            None => {
                let w = if let Some(w) = self.free_words.pop() {
                    w
                } else {
                    self.postings.push(BlockSet::new());
                    (self.postings.len() - 1) as u32
                };
                self.word_ids.insert(word.into(), w);
                self.word_hash.insert(word.into(), w);
                w
            }
        };
        self.postings[w as usize].insert(entry);
    }

    fn unpost(&mut self, entry: u32, word: &str) {
        let w = self.word_hash[word];
        let set = &mut self.postings[w as usize];
        set.remove(entry);
        if set.is_empty() {
            *set = BlockSet::new();
            self.word_ids.remove(word);
            self.word_hash.remove(word);
            if self.word_ids.is_empty() {
                self.word_hash = hashbrown::HashMap::new();
                self.postings = Vec::new();
                self.free_words = Vec::new();
            } else {
                self.free_words.push(w);
            }
        }
    }

    /// Deletes entry `e` if nobody holds it any more, and its file if that was its last entry.
    fn delete_entry_if_unheld(&mut self, e: u32) {
        if !self.holder_slice(e).is_empty() {
            return;
        }
        let file = self.entries[e as usize].file;
        // Unlink from the file's entry list.
        let next = self.entries[e as usize].next;
        let head = self.files[file as usize].first_entry;
        if head == e {
            self.files[file as usize].first_entry = next;
        } else {
            let mut prev = head;
            while self.entries[prev as usize].next != e {
                prev = self.entries[prev as usize].next;
            }
            self.entries[prev as usize].next = next;
        }
        let name = std::mem::take(&mut self.entries[e as usize].name);
        let mut scratch = Scratch::default();
        lower_words(&name, &mut scratch);
        scratch.sort_dedup();
        if scratch.spans.is_empty() {
            self.unpost(e, "");
        }
        for i in 0..scratch.spans.len() {
            let (a, b) = scratch.spans[i];
            self.unpost(e, &scratch.buf[a..b]);
        }
        self.entry_count -= 1;
        if self.entry_count == 0 {
            self.entries = Vec::new();
            self.free_entries = Vec::new();
            self.spill = Slab::new();
        } else {
            let rec = &mut self.entries[e as usize];
            rec.file = NONE;
            rec.next = NONE;
            self.free_entries.push(e);
        }
        if self.files[file as usize].first_entry == NONE {
            self.delete_file(file);
        }
    }

    /// Adds holding (peer, e); false if the peer already held it.
    fn add_holding(&mut self, peer: PeerId, e: u32) -> bool {
        if self.holder_slice(e).contains(&peer.0) {
            return false;
        }
        let file = self.entries[e as usize].file;
        let new_file = !self.peer_holds_file(peer.0, file);
        self.push_holder(e, peer.0);
        if new_file {
            self.files[file as usize].holders += 1;
        }
        let rec = self.peer_mut(peer);
        if new_file {
            rec.files += 1;
        }
        rec.entries.insert(e);
        true
    }

    /// Whether `peer` holds any entry of `file`.
    fn peer_holds_file(&self, peer: u32, file: u32) -> bool {
        let mut e = self.files[file as usize].first_entry;
        while e != NONE {
            if self.holder_slice(e).contains(&peer) {
                return true;
            }
            e = self.entries[e as usize].next;
        }
        false
    }

    fn holder_slice(&self, e: u32) -> &[u32] {
        let h = &self.entries[e as usize].holders;
        match *h {
            [SPILLED, key] => &self.spill[key as usize],
            [NONE, _] => &[],
            [_, NONE] => &h[..1],
            _ => &h[..],
        }
    }

    fn push_holder(&mut self, e: u32, peer: u32) {
        let h = &mut self.entries[e as usize].holders;
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
    fn pop_holder(&mut self, e: u32, peer: u32) {
        let h = &mut self.entries[e as usize].holders;
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

    /// Distinct holder ids of `file`, ascending.
    fn file_holders(&self, file: u32) -> Vec<u32> {
        let mut ids = Vec::new();
        let mut e = self.files[file as usize].first_entry;
        while e != NONE {
            ids.extend_from_slice(self.holder_slice(e));
            e = self.entries[e as usize].next;
        }
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// `file` as a lookup answer, named by `entry`, or by its most held name.
    fn held_file(&self, file: u32, entry: Option<u32>) -> HeldFile {
        let entry = entry.unwrap_or_else(|| {
            let mut best = self.files[file as usize].first_entry;
            let mut e = self.entries[best as usize].next;
            while e != NONE {
                let (n, bn) = (self.holder_slice(e).len(), self.holder_slice(best).len());
                if n > bn
                    || (n == bn && self.entries[e as usize].name < self.entries[best as usize].name)
                {
                    best = e;
                }
                e = self.entries[e as usize].next;
            }
            best
        });
        let rec = &self.files[file as usize];
        HeldFile {
            hash: rec.hash,
            size: rec.size(),
            name: self.entries[entry as usize].name.to_string(),
            holders: self
                .file_holders(file)
                .into_iter()
                .filter_map(|p| self.peer_addr(PeerId(p)))
                .collect(),
        }
    }
}

fn prefix32(h: &FileHash) -> u32 {
    u32::from_be_bytes([h.0[0], h.0[1], h.0[2], h.0[3]])
}

/// A search candidate, ordered best first (`Less` is better) so a max-heap's top is the worst
/// hit kept.
struct Ranked<'a> {
    whole: u32,
    holders: u32,
    name: &'a str,
    hash: &'a FileHash,
    size: u64,
}

impl Ord for Ranked<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .whole
            .cmp(&self.whole)
            .then(other.holders.cmp(&self.holders))
            .then_with(|| self.name.cmp(other.name))
            .then_with(|| self.hash.cmp(other.hash))
    }
}

impl PartialOrd for Ranked<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl PartialEq for Ranked<'_> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Ranked<'_> {}

/// Reusable buffers for splitting text into lowercase words without an allocation per word.
#[derive(Default)]
struct Scratch {
    buf: String,
    spans: Vec<(usize, usize)>,
}

impl Scratch {
    fn words(&self) -> impl Iterator<Item = &str> {
        self.spans.iter().map(|&(a, b)| &self.buf[a..b])
    }

    fn sort_dedup(&mut self) {
        let buf = &self.buf;
        self.spans
            .sort_unstable_by(|&(a, b), &(c, d)| buf[a..b].cmp(&buf[c..d]));
        self.spans
            .dedup_by(|&mut (a, b), &mut (c, d)| buf[a..b] == buf[c..d]);
    }
}

/// Splits `text` into maximal runs of alphanumeric characters, lowercased char by char, into
/// `scratch` (replacing its contents).
fn lower_words(text: &str, scratch: &mut Scratch) {
    let Scratch { buf, spans } = scratch;
    buf.clear();
    spans.clear();
    let mut start = None;
    for c in text.chars() {
        if c.is_alphanumeric() {
            if start.is_none() {
                start = Some(buf.len());
            }
            if c.is_ascii() {
                buf.push(c.to_ascii_lowercase());
            } else {
                buf.extend(c.to_lowercase());
            }
        } else if let Some(s) = start.take() {
            spans.push((s, buf.len()));
        }
    }
    if let Some(s) = start {
        spans.push((s, buf.len()));
    }
}

/// Whether every query word equals or prefixes a word of `name`; if so, how many equal one.
fn match_words(qwords: &[String], name: &str, scratch: &mut Scratch) -> Option<u32> {
    lower_words(name, scratch);
    let mut whole = 0;
    for q in qwords {
        let mut prefix = false;
        let mut equal = false;
        for w in scratch.words() {
            if w == q {
                equal = true;
                break;
            }
            prefix |= w.starts_with(q.as_str());
        }
        if equal {
            whole += 1;
        } else if !prefix {
            return None;
        }
    }
    Some(whole)
}

/// A sorted set of small `Copy` items stored as sorted blocks of at most [`BLOCK_ITEMS`]
/// (a two-level B-tree). About `size_of::<T>()` bytes per item plus a small fraction for block
/// headers, `O(log n)` search, and inserts/removes that move at most one block's items.
/// The order is given by the caller's probe (`item.cmp(target)`), so an item may be ordered by
/// data it points to (the hash index orders file ids by their full hash).
struct BlockSet<T> {
    /// Non-empty, sorted, each block entirely before the next.
    blocks: Vec<Vec<T>>,
    /// `blocks[i][0]`, kept contiguous so locating a block touches one cache-friendly array.
    firsts: Vec<T>,
    len: usize,
}

impl<T: Copy> BlockSet<T> {
    fn new() -> Self {
        BlockSet {
            blocks: Vec::new(),
            firsts: Vec::new(),
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn get(&self, (b, i): (usize, usize)) -> T {
        self.blocks[b][i]
    }

    /// Like `binary_search_by`: `Ok(position)` of the item for which `probe` says `Equal`, or
    /// `Err(position)` where it would be inserted. `probe(item)` is `item.cmp(target)`.
    fn search(
        &self,
        mut probe: impl FnMut(&T) -> Ordering,
    ) -> Result<(usize, usize), (usize, usize)> {
        if self.blocks.is_empty() {
            return Err((0, 0));
        }
        let b = self
            .firsts
            .partition_point(|f| probe(f) != Ordering::Greater)
            .saturating_sub(1);
        match self.blocks[b].binary_search_by(probe) {
            Ok(i) => Ok((b, i)),
            Err(i) => Err((b, i)),
        }
    }

    fn insert_at(&mut self, (mut b, mut i): (usize, usize), item: T) {
        self.len += 1;
        if self.blocks.is_empty() {
            self.blocks.push(vec![item]);
            self.firsts.push(item);
            return;
        }
        if self.blocks[b].len() >= BLOCK_ITEMS {
            if b + 1 == self.blocks.len() && i == BLOCK_ITEMS {
                // Appending past the end: start a new block, so that append-mostly sets (ids
                // handed out in increasing order) end up with full blocks rather than half ones.
                self.blocks.push(vec![item]);
                self.firsts.push(item);
                return;
            }
            let tail = self.blocks[b].split_off(BLOCK_ITEMS / 2);
            self.firsts.insert(b + 1, tail[0]);
            self.blocks.insert(b + 1, tail);
            if i > BLOCK_ITEMS / 2 {
                b += 1;
                i -= BLOCK_ITEMS / 2;
            }
        }
        let block = &mut self.blocks[b];
        if block.len() == block.capacity() {
            // Grow by half rather than double: posting lists are most of the index, and
            // doubling would leave a quarter of their memory unused on average.
            let more = (block.len() / 2).max(4).min(BLOCK_ITEMS - block.len());
            block.reserve_exact(more);
        }
        block.insert(i, item);
        if i == 0 {
            self.firsts[b] = item;
        }
    }

    fn remove_at(&mut self, (b, i): (usize, usize)) {
        self.len -= 1;
        let block = &mut self.blocks[b];
        block.remove(i);
        if block.is_empty() {
            self.blocks.remove(b);
            self.firsts.remove(b);
            if self.blocks.is_empty() {
                *self = Self::new();
            }
            return;
        }
        if i == 0 {
            self.firsts[b] = block[0];
        }
        if block.len() < BLOCK_ITEMS / 4 {
            // Merge small neighbours so a set that shrank does not keep many sparse blocks.
            let pair = if b + 1 < self.blocks.len() {
                Some(b)
            } else {
                b.checked_sub(1)
            };
            if let Some(l) = pair {
                if self.blocks[l].len() + self.blocks[l + 1].len() <= BLOCK_ITEMS / 2 {
                    let right = self.blocks.remove(l + 1);
                    self.firsts.remove(l + 1);
                    self.blocks[l].extend_from_slice(&right);
                }
            }
        }
        let last = self.blocks.len() - 1;
        let block = &mut self.blocks[b.min(last)];
        if block.capacity() >= 16 && block.len() * 4 <= block.capacity() {
            block.shrink_to(block.len() * 2);
        }
    }

    fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.blocks.iter().flatten().copied()
    }

    /// Items from position `(b, i)` on (`i` may be one past the end of block `b`).
    fn iter_from(&self, (b, i): (usize, usize)) -> impl Iterator<Item = T> + '_ {
        let first = self
            .blocks
            .get(b)
            .map_or(&[][..], |blk| &blk[i.min(blk.len())..]);
        first
            .iter()
            .chain(self.blocks.iter().skip(b + 1).flatten())
            .copied()
    }
}

impl<T: Copy + Ord> BlockSet<T> {
    /// Inserts `item`; false if it was there.
    fn insert(&mut self, item: T) -> bool {
        match self.search(|x| x.cmp(&item)) {
            Ok(_) => false,
            Err(at) => {
                self.insert_at(at, item);
                true
            }
        }
    }

    /// Removes `item`; false if it was not there.
    fn remove(&mut self, item: T) -> bool {
        match self.search(|x| x.cmp(&item)) {
            Ok(at) => {
                self.remove_at(at);
                true
            }
            Err(_) => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashMap};

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    fn h(n: u8) -> FileHash {
        FileHash([n; 32])
    }

    fn fe(hash: FileHash, size: u64, name: &str) -> FileEntry {
        FileEntry {
            hash,
            size,
            name: name.into(),
        }
    }

    fn names(hits: &[SearchHit]) -> Vec<&str> {
        hits.iter().map(|h| h.name.as_str()).collect()
    }

    #[test]
    fn word_prefixes_match_across_separators_and_case() {
        let mut ix = Index::new();
        let p = ix.add_peer(addr(1));
        ix.register(p, &[fe(h(1), 10, "Zebra_Crossing-Live 1999.flac")]);
        assert_eq!(
            names(&ix.search("zeb cross", 10).0),
            ["Zebra_Crossing-Live 1999.flac"]
        );
        assert_eq!(ix.search("LIVE 199", 10).0.len(), 1);
        assert_eq!(ix.search("flac", 10).0.len(), 1);
        // A query word must prefix a word: not match inside one.
        assert!(ix.search("rossing", 10).0.is_empty());
        assert!(ix.search("zebra x", 10).0.is_empty());
        assert_eq!(ix.search("", 10), (vec![], false));
        assert_eq!(ix.search(" -_. ", 10), (vec![], false));
    }

    #[test]
    fn case_insensitive_beyond_ascii() {
        let mut ix = Index::new();
        let p = ix.add_peer(addr(1));
        ix.register(p, &[fe(h(1), 1, "ÜBER Straße ΣΟΦΙΑ.txt")]);
        assert_eq!(ix.search("über", 10).0.len(), 1);
        assert_eq!(ix.search("STRASSE", 10).0.len(), 0);
        assert_eq!(ix.search("STRAßE", 10).0.len(), 1);
        assert_eq!(ix.search("σοφ", 10).0.len(), 1);
        assert_eq!(ix.search("Üb sO", 10).0.len(), 0);
        assert_eq!(ix.search("Üb σο", 10).0.len(), 1);
    }

    #[test]
    fn ranking_whole_words_then_holders_then_name_then_hash() {
        let mut ix = Index::new();
        let a = ix.add_peer(addr(1));
        let b = ix.add_peer(addr(2));
        ix.register(
            a,
            &[
                fe(h(1), 1, "rock anthem"),
                fe(h(2), 1, "rocky road"),
                fe(h(3), 1, "rock zzz"),
            ],
        );
        ix.register(
            b,
            &[
                fe(h(2), 1, "rocky road"),
                fe(h(4), 1, "rock aaa"),
                fe(h(5), 1, "rock aaa"),
            ],
        );
        let (hits, truncated) = ix.search("rock", 10);
        assert!(!truncated);
        // Whole-word "rock" beats "rocky" despite rocky's two holders; then name, then hash.
        assert_eq!(
            names(&hits),
            [
                "rock aaa",
                "rock aaa",
                "rock anthem",
                "rock zzz",
                "rocky road"
            ]
        );
        assert_eq!(hits[0].hash, h(4));
        assert_eq!(hits[1].hash, h(5));
        assert_eq!(hits[4].holders, 2);
        let (hits, truncated) = ix.search("roc", 10);
        // No whole-word match: more holders first.
        assert_eq!(hits[0].name, "rocky road");
        assert!(!truncated);
        let (hits, truncated) = ix.search("rock", 2);
        assert_eq!(names(&hits), ["rock aaa", "rock aaa"]);
        assert!(truncated);
        assert_eq!(ix.search("rock", 0), (vec![], true));
    }

    #[test]
    fn control_characters_in_names_are_legal_and_bad_names_rejected() {
        let mut ix = Index::new();
        let p = ix.add_peer(addr(1));
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let out = ix.register(
            p,
            &[
                fe(h(1), 1, "a\r\r\nb"),
                fe(h(2), 1, ""),
                fe(h(3), 1, "dir/file"),
                fe(h(4), 1, "nul\0byte"),
                fe(h(5), 1, &long),
                fe(h(6), 1, &long[1..]),
            ],
        );
        assert_eq!(
            out,
            RegisterOutcome {
                added: 2,
                rejected: 4,
                total: 2
            }
        );
        assert_eq!(ix.search("b", 10).0[0].name, "a\r\r\nb");
        let found = ix.lookup(&LookupKey::Name("a\r\r\nb".into())).unwrap();
        assert_eq!(found[0].hash, h(1));
        assert_eq!(ix.file_count(), 2);
    }

    #[test]
    fn size_conflicts_are_rejected() {
        let mut ix = Index::new();
        let a = ix.add_peer(addr(1));
        let b = ix.add_peer(addr(2));
        assert_eq!(ix.register(a, &[fe(h(1), 5, "x")]).added, 1);
        let out = ix.register(b, &[fe(h(1), 6, "x"), fe(h(1), 6, "y"), fe(h(1), 5, "z")]);
        assert_eq!(
            out,
            RegisterOutcome {
                added: 1,
                rejected: 2,
                total: 1
            }
        );
        // Once every holder is gone, the hash may come back with another size.
        ix.remove_peer(a);
        ix.remove_peer(b);
        let c = ix.add_peer(addr(3));
        assert_eq!(ix.register(c, &[fe(h(1), 6, "x")]).added, 1);
    }

    #[test]
    fn register_is_idempotent_and_counts_distinct_hashes() {
        let mut ix = Index::new();
        let p = ix.add_peer(addr(1));
        let files = [fe(h(1), 1, "one"), fe(h(1), 1, "uno"), fe(h(2), 2, "two")];
        assert_eq!(
            ix.register(p, &files),
            RegisterOutcome {
                added: 3,
                rejected: 0,
                total: 2
            }
        );
        assert_eq!(
            ix.register(p, &files),
            RegisterOutcome {
                added: 0,
                rejected: 0,
                total: 2
            }
        );
        assert_eq!((ix.file_count(), ix.entry_count()), (2, 3));
        // Same bytes under two names: one file, two entries, one holder.
        let hits = ix.search("one", 10).0;
        assert_eq!(hits[0].holders, 1);
        assert_eq!(ix.register(PeerId(99), &files).rejected, 3);
    }

    #[test]
    fn unregister_touches_only_own_holdings() {
        let mut ix = Index::new();
        let a = ix.add_peer(addr(1));
        let b = ix.add_peer(addr(2));
        ix.register(
            a,
            &[fe(h(1), 1, "one"), fe(h(1), 1, "uno"), fe(h(2), 1, "two")],
        );
        ix.register(b, &[fe(h(1), 1, "one"), fe(h(3), 1, "three")]);
        // b never registered h(2); its h(1) holding goes, a's stays.
        assert_eq!(ix.unregister(b, &[h(2), h(1), h(9)]), 1);
        assert_eq!(ix.holdings_of(b), 1);
        assert_eq!(
            ix.lookup(&LookupKey::Hash(h(2))).unwrap()[0].holders,
            [addr(1)]
        );
        assert_eq!(
            ix.lookup(&LookupKey::Hash(h(1))).unwrap()[0].holders,
            [addr(1)]
        );
        assert_eq!(ix.unregister(a, &[h(1), h(1)]), 2);
        assert_eq!(
            ix.lookup(&LookupKey::Hash(h(1))),
            Err(LookupError::NotFound)
        );
        assert!(ix.search("uno", 10).0.is_empty());
        assert_eq!(
            (ix.file_count(), ix.entry_count(), ix.holdings_of(a)),
            (2, 2, 1)
        );
        assert_eq!(ix.unregister(PeerId(42), &[h(2)]), 0);
    }

    #[test]
    fn removing_every_peer_leaves_nothing() {
        let mut ix = Index::new();
        let mut peers = Vec::new();
        for p in 0..20u16 {
            let id = ix.add_peer(addr(p));
            let files: Vec<FileEntry> = (0..300u32)
                .map(|i| {
                    let n = i + u32::from(p) * 50;
                    fe(
                        FileHash::of(&n.to_le_bytes()),
                        u64::from(n),
                        &format!("song {n} of {} by {}", n % 7, n % 13),
                    )
                })
                .collect();
            assert_eq!(ix.register(id, &files).total, 300);
            peers.push(id);
        }
        assert_eq!(ix.file_count(), 300 + 19 * 50);
        let hits = ix.search("song 100", 5).0;
        assert_eq!(hits[0].name, "song 100 of 2 by 9");
        assert_eq!(hits[0].holders, 3);
        for (i, p) in peers.iter().enumerate() {
            let held = ix.remove_peer(*p).unwrap();
            assert_eq!(held, 300);
            assert_eq!(ix.remove_peer(*p), None);
            assert_eq!(ix.peer_count(), peers.len() - i - 1);
        }
        assert_eq!(
            (
                ix.file_count(),
                ix.entry_count(),
                ix.word_count(),
                ix.peer_count()
            ),
            (0, 0, 0, 0)
        );
        assert!(
            ix.files.capacity() == 0 && ix.entries.capacity() == 0 && ix.postings.capacity() == 0
        );
        assert!(
            ix.by_hash.blocks.capacity() == 0
                && ix.spill.capacity() == 0
                && ix.peers.capacity() == 0
        );
        assert!(ix.search("song", 10).0.is_empty());
    }

    #[test]
    fn many_holders_spill_and_come_back() {
        let mut ix = Index::new();
        let peers: Vec<PeerId> = (0..10).map(|i| ix.add_peer(addr(i))).collect();
        for p in &peers {
            ix.register(*p, &[fe(h(7), 7, "shared")]);
        }
        let held = ix.lookup(&LookupKey::Hash(h(7))).unwrap();
        assert_eq!(held[0].holders, (0..10).map(addr).collect::<Vec<_>>());
        for p in &peers[..9] {
            ix.remove_peer(*p);
        }
        assert_eq!(ix.spill.len(), 0);
        assert_eq!(ix.search("shared", 1).0[0].holders, 1);
        ix.remove_peer(peers[9]);
        assert_eq!(ix.entry_count(), 0);
    }

    #[test]
    fn lookup_by_name_and_prefix() {
        let mut ix = Index::new();
        let a = ix.add_peer(addr(1));
        let b = ix.add_peer(addr(2));
        let mut x = [0u8; 32];
        x[..5].copy_from_slice(&[0xab, 0xcd, 0xef, 0x01, 0x23]);
        let mut y = x;
        y[4] = 0x24;
        let (x, y) = (FileHash(x), FileHash(y));
        ix.register(
            a,
            &[
                fe(y, 1, "same.txt"),
                fe(x, 2, "same.txt"),
                fe(h(3), 3, "other"),
            ],
        );
        ix.register(b, &[fe(x, 2, "alias"), fe(x, 2, "alt")]);
        let found = ix.lookup(&LookupKey::Name("same.txt".into())).unwrap();
        assert_eq!(found.iter().map(|f| f.hash).collect::<Vec<_>>(), [x, y]);
        assert_eq!(found[0].holders, [addr(1), addr(2)]);
        assert_eq!(found[0].name, "same.txt");
        assert_eq!(
            ix.lookup(&LookupKey::Name("same".into())),
            Err(LookupError::NotFound)
        );
        assert_eq!(
            ix.lookup(&LookupKey::Name("".into())),
            Err(LookupError::NotFound)
        );
        // Ambiguous on 8 and 9 digits, unique from the 10th.
        let p = |s: &str| ix.lookup(&LookupKey::HashPrefix(s.into()));
        assert_eq!(p("abcdef01"), Err(LookupError::Ambiguous));
        assert_eq!(p("ABCDEF012"), Err(LookupError::Ambiguous));
        assert_eq!(p("abcdef0123").unwrap()[0].hash, x);
        assert_eq!(p("abcdef0124").unwrap()[0].hash, y);
        assert_eq!(p(&x.to_hex()).unwrap()[0].hash, x);
        assert_eq!(p("abcdef0125"), Err(LookupError::NotFound));
        assert_eq!(p("abcdef0"), Err(LookupError::BadPrefix));
        assert_eq!(p("abcdef0g"), Err(LookupError::BadPrefix));
        assert_eq!(p(&"a".repeat(65)), Err(LookupError::BadPrefix));
        // Most held name names a file: "same.txt" has one holder, like "alias" and "alt";
        // the smallest wins the tie.
        assert_eq!(ix.lookup(&LookupKey::Hash(x)).unwrap()[0].name, "alias");
        assert_eq!(
            LookupError::Ambiguous.to_string(),
            "hash prefix matches several files"
        );
    }

    #[test]
    fn block_set_stays_sorted_through_splits_and_merges() {
        let mut set = BlockSet::new();
        let mut model = BTreeSet::new();
        let mut x = 12345u32;
        for round in 0..20_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            let v = (x >> 8) % 3000;
            if round % 3 == 2 {
                assert_eq!(set.remove(v), model.remove(&v));
            } else {
                assert_eq!(set.insert(v), model.insert(v));
            }
        }
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            model.iter().copied().collect::<Vec<_>>()
        );
        assert_eq!(set.len(), model.len());
        for b in &set.blocks {
            assert!(!b.is_empty() && b.len() <= BLOCK_ITEMS);
        }
        for v in model {
            assert!(set.remove(v));
        }
        assert!(set.is_empty() && set.blocks.capacity() == 0);
    }

    // ---- the naive model ----

    /// Everything as plain holdings; every answer computed by scanning.
    #[derive(Default)]
    struct Model {
        peers: BTreeMap<u32, (SocketAddr, BTreeSet<(FileHash, String)>)>,
        sizes: HashMap<FileHash, u64>,
    }

    fn model_words(s: &str) -> Vec<String> {
        s.split(|c: char| !c.is_alphanumeric())
            .filter(|w| !w.is_empty())
            .map(|w| w.chars().flat_map(char::to_lowercase).collect())
            .collect()
    }

    impl Model {
        fn holders_of(&self, hash: &FileHash) -> Vec<u32> {
            self.peers
                .iter()
                .filter(|(_, (_, held))| held.iter().any(|(h, _)| h == hash))
                .map(|(&p, _)| p)
                .collect()
        }

        fn entries(&self) -> BTreeSet<(FileHash, String)> {
            self.peers
                .values()
                .flat_map(|(_, held)| held.iter().cloned())
                .collect()
        }

        fn total(&self, p: u32) -> u32 {
            let held = &self.peers[&p].1;
            held.iter().map(|(h, _)| h).collect::<BTreeSet<_>>().len() as u32
        }

        fn refresh_sizes(&mut self) {
            let live: BTreeSet<FileHash> = self.entries().into_iter().map(|(h, _)| h).collect();
            self.sizes.retain(|h, _| live.contains(h));
        }

        fn register(&mut self, p: u32, files: &[FileEntry]) -> RegisterOutcome {
            let mut out = RegisterOutcome::default();
            for f in files {
                let ok_name = !f.name.is_empty()
                    && f.name.len() <= 1024
                    && !f.name.contains('/')
                    && !f.name.contains('\0');
                if !ok_name || self.sizes.get(&f.hash).is_some_and(|&s| s != f.size) {
                    out.rejected += 1;
                    continue;
                }
                self.sizes.insert(f.hash, f.size);
                if self
                    .peers
                    .get_mut(&p)
                    .unwrap()
                    .1
                    .insert((f.hash, f.name.clone()))
                {
                    out.added += 1;
                }
            }
            out.total = self.total(p);
            out
        }

        fn unregister(&mut self, p: u32, hashes: &[FileHash]) -> u32 {
            let held = &mut self.peers.get_mut(&p).unwrap().1;
            let before = held.len();
            held.retain(|(h, _)| !hashes.contains(h));
            let removed = (before - held.len()) as u32;
            self.refresh_sizes();
            removed
        }

        fn search(&self, query: &str, limit: usize) -> (Vec<SearchHit>, bool) {
            let mut q = model_words(query);
            q.sort();
            q.dedup();
            if q.is_empty() {
                return (vec![], false);
            }
            let mut all: Vec<(u32, SearchHit)> = Vec::new();
            for (hash, name) in self.entries() {
                let words = model_words(&name);
                if !q
                    .iter()
                    .all(|q| words.iter().any(|w| w.starts_with(q.as_str())))
                {
                    continue;
                }
                let whole = q.iter().filter(|q| words.contains(q)).count() as u32;
                let hit = SearchHit {
                    size: self.sizes[&hash],
                    holders: self.holders_of(&hash).len() as u32,
                    name,
                    hash,
                };
                all.push((whole, hit));
            }
            all.sort_by(|(wa, a), (wb, b)| {
                wb.cmp(wa)
                    .then(b.holders.cmp(&a.holders))
                    .then(a.name.cmp(&b.name))
                    .then(a.hash.cmp(&b.hash))
            });
            let truncated = all.len() > limit;
            (
                all.into_iter().take(limit).map(|(_, h)| h).collect(),
                truncated,
            )
        }

        fn held(&self, hash: FileHash, name: Option<String>) -> HeldFile {
            let holders = self.holders_of(&hash);
            let name = name.unwrap_or_else(|| {
                let mut names: Vec<(usize, String)> = self
                    .entries()
                    .into_iter()
                    .filter(|(h, _)| *h == hash)
                    .map(|(_, n)| {
                        let count = self
                            .peers
                            .values()
                            .filter(|(_, held)| held.contains(&(hash, n.clone())))
                            .count();
                        (count, n)
                    })
                    .collect();
                names.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)));
                names.remove(0).1
            });
            HeldFile {
                hash,
                size: self.sizes[&hash],
                name,
                holders: holders.iter().map(|p| self.peers[p].0).collect(),
            }
        }

        fn lookup(&self, key: &LookupKey) -> Result<Vec<HeldFile>, LookupError> {
            let hashes: BTreeSet<FileHash> = self.entries().into_iter().map(|(h, _)| h).collect();
            match key {
                LookupKey::Hash(h) if hashes.contains(h) => Ok(vec![self.held(*h, None)]),
                LookupKey::Hash(_) => Err(LookupError::NotFound),
                LookupKey::HashPrefix(p) => {
                    let ok =
                        (8..=64).contains(&p.len()) && p.chars().all(|c| c.is_ascii_hexdigit());
                    if !ok {
                        return Err(LookupError::BadPrefix);
                    }
                    let p = p.to_lowercase();
                    let m: Vec<&FileHash> = hashes
                        .iter()
                        .filter(|h| h.to_hex().starts_with(&p))
                        .collect();
                    match m.len() {
                        0 => Err(LookupError::NotFound),
                        1 => Ok(vec![self.held(*m[0], None)]),
                        _ => Err(LookupError::Ambiguous),
                    }
                }
                LookupKey::Name(n) => {
                    let m: Vec<HeldFile> = self
                        .entries()
                        .into_iter()
                        .filter(|(_, name)| name == n)
                        .map(|(h, name)| self.held(h, Some(name)))
                        .collect();
                    if m.is_empty() {
                        Err(LookupError::NotFound)
                    } else {
                        Ok(m)
                    }
                }
            }
        }
    }

    // Small alphabets so that names, words, prefixes and hashes collide often.
    const WORDS: &[&str] = &["a", "ab", "Abc", "b", "ÄB", "äbc", "x1", "9", "", "é"];
    const SEPS: &[&str] = &[" ", "-", "_", ".", "\r\r\n", "/", "\0"];

    fn test_hash(i: usize) -> FileHash {
        // Six hashes sharing long hex prefixes in pairs.
        let mut b = [0x5au8; 32];
        b[..4].copy_from_slice(&[0xab, 0xcd, 0xef, 0x01]);
        b[4] = (i / 2) as u8;
        b[5] = (i % 2) as u8 * 0x10;
        FileHash(b)
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec((0..WORDS.len(), 0..SEPS.len()), 1..4).prop_map(|parts| {
            let mut s = String::new();
            for (i, (w, sep)) in parts.iter().enumerate() {
                if i > 0 {
                    // '/' and NUL are rare so that most names are valid.
                    s.push_str(if *sep >= 5 && i % 2 == 1 {
                        " "
                    } else {
                        SEPS[*sep]
                    });
                }
                s.push_str(WORDS[*w]);
            }
            s
        })
    }

    fn query_strategy() -> impl Strategy<Value = String> {
        prop::collection::vec(0..WORDS.len(), 0..3).prop_map(|ws| {
            ws.iter()
                .map(|&w| WORDS[w].to_uppercase())
                .collect::<Vec<_>>()
                .join(" ")
        })
    }

    fn key_strategy() -> impl Strategy<Value = LookupKey> {
        prop_oneof![
            (0..7usize).prop_map(|i| LookupKey::Hash(test_hash(i))),
            (0..7usize, 6..12usize, any::<bool>()).prop_map(|(i, n, up)| {
                let hex = test_hash(i).to_hex()[..n].to_string();
                LookupKey::HashPrefix(if up { hex.to_uppercase() } else { hex })
            }),
            name_strategy().prop_map(LookupKey::Name),
        ]
    }

    #[derive(Debug, Clone)]
    enum Op {
        AddPeer(u16),
        Register(usize, Vec<(usize, u64, String)>),
        Unregister(usize, Vec<usize>),
        RemovePeer(usize),
        Search(String, usize),
        Lookup(LookupKey),
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => any::<u16>().prop_map(Op::AddPeer),
            5 => (any::<usize>(), prop::collection::vec((0..6usize, 1..3u64, name_strategy()), 0..6))
                .prop_map(|(p, f)| Op::Register(p, f)),
            2 => (any::<usize>(), prop::collection::vec(0..7usize, 0..4)).prop_map(|(p, h)| Op::Unregister(p, h)),
            1 => any::<usize>().prop_map(Op::RemovePeer),
            4 => (query_strategy(), 0..5usize).prop_map(|(q, l)| Op::Search(q, l)),
            3 => key_strategy().prop_map(Op::Lookup),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        #[test]
        fn agrees_with_naive_model(ops in prop::collection::vec(op_strategy(), 1..60)) {
            let mut ix = Index::new();
            let mut model = Model::default();
            let mut live: Vec<PeerId> = Vec::new();
            for op in ops {
                match op {
                    Op::AddPeer(port) => {
                        let p = ix.add_peer(addr(port));
                        prop_assert!(!model.peers.contains_key(&p.0));
                        model.peers.insert(p.0, (addr(port), BTreeSet::new()));
                        live.push(p);
                    }
                    Op::Register(p, files) if !live.is_empty() => {
                        let p = live[p % live.len()];
                        let files: Vec<FileEntry> =
                            files.into_iter().map(|(h, s, n)| fe(test_hash(h), s, &n)).collect();
                        prop_assert_eq!(ix.register(p, &files), model.register(p.0, &files));
                    }
                    Op::Unregister(p, hashes) if !live.is_empty() => {
                        let p = live[p % live.len()];
                        let hashes: Vec<FileHash> = hashes.into_iter().map(test_hash).collect();
                        prop_assert_eq!(ix.unregister(p, &hashes), model.unregister(p.0, &hashes));
                    }
                    Op::RemovePeer(p) if !live.is_empty() => {
                        let p = live.swap_remove(p % live.len());
                        let held = model.peers.remove(&p.0).unwrap().1.len() as u32;
                        model.refresh_sizes();
                        prop_assert_eq!(ix.remove_peer(p), Some(held));
                    }
                    Op::Search(q, limit) => {
                        prop_assert_eq!(ix.search(&q, limit), model.search(&q, limit), "query {:?}", q);
                    }
                    Op::Lookup(key) => {
                        prop_assert_eq!(ix.lookup(&key), model.lookup(&key), "key {:?}", key);
                    }
                    _ => {}
                }
                prop_assert_eq!(ix.peer_count(), model.peers.len());
                let entries = model.entries();
                prop_assert_eq!(ix.entry_count(), entries.len());
                prop_assert_eq!(ix.file_count(), entries.iter().map(|(h, _)| h).collect::<BTreeSet<_>>().len());
                for p in &live {
                    prop_assert_eq!(ix.holdings_of(*p), model.total(p.0));
                    prop_assert_eq!(ix.peer_addr(*p), Some(model.peers[&p.0].0));
                }
            }
            for p in live {
                ix.remove_peer(p);
            }
            prop_assert_eq!((ix.file_count(), ix.entry_count(), ix.word_count()), (0, 0, 0));
        }
    }
}
