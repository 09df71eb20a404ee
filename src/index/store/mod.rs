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
//! - `PeerRec::files` is the number of distinct files the peer holds; `multi_holders` has an
//!   item exactly for each file of two or more entries: its number of distinct holders.
//! - A word's posting set holds exactly the live entries whose name contains that word, but
//!   for the entries in `unposted`: [`Index::register`] creates entries and leaves their
//!   words to [`Index::post_pending`], which every other method calls first (the server
//!   calls it right after sending the register's answer).
//! - `staged` holds holdings of files new to the index that [`Index::register`] has answered
//!   for but not put in the tables: distinct hashes, none in `by_hash`, each counted in its
//!   peer's `PeerRec::staged` and by [`Index::file_count`] and [`Index::entry_count`] (not in
//!   the `file_count` and `entry_count` fields, which count the tables).
//!   [`Index::post_pending`] puts them in the tables first.
//! - Every hash in `by_hash` or `staged` has its bits set in the [`HashFilter`] `seen`.
//! - A file's size never changes while it is indexed: a register with another size is rejected.
//! - An entry's `file` field carries the [`SOLE`] bit exactly while it is its file's only entry
//!   (then the file's holders are the entry's holders).
//! - Every live entry's `name` is the offset of a live record in the name arena; freed records
//!   are counted in `Names::garbage` and listed in its free lists.
//! - Every live word has at least one posting; its postings are inline exactly while there are
//!   at most two (ascending), else in a `postings` set; it is in `word_hash` once and in
//!   `word_order` once, under its own 4-byte prefix; its `text` is a live `word_text` record.
//!
//! # Memory layout (why it is this shape)
//! The target is ≤150 bytes of resident memory per indexed file at a million files (whole
//! process, glibc malloc), so nothing is allocated per file or per rare word: every per-file
//! structure is a slot in a big vector or bytes in a compressed block. Measured at 1M files of
//! ~40-byte names with two holders each (`benches/index.rs`), on a ~49k-word vocabulary: ~117
//! heap bytes and ~120 resident bytes per file. With one word unique to each file besides (a
//! 10-digit catalogue number): ~162 heap and ~166 resident bytes per file, the million rare
//! words costing ~40 bytes each (record 12, text 11, hash table ~10, order ~9). The real
//! indexd at the bench's spec (1M files, 2 holders, ~40-byte names with a unique number, 1,000
//! connections): ~147 resident bytes per file.
//! - `files: Vec<FileRec>` (44 B: hash, size, first entry), addressed by `u32`
//!   ids with a free list.
//! - `by_hash`: a [`BlockSet`] of `u64` items `(first 4 hash bytes << 32) | file id`, kept in
//!   full-hash order (ties on the 4-byte prefix are broken by comparing the full hash through
//!   `files`). It serves exact lookups, prefix lookups (a range) and duplicate checks in
//!   `O(log n)` with ~8–11 B per file. Ordering by the *full* hash matters: peers choose the hash
//!   bytes, so anything keyed on a fixed prefix could be flooded with collisions.
//! - `seen`: a [`HashFilter`] (a Bloom filter of 8–10 bits per file after each reactor turn,
//!   ~1.2 B) that tells a register which hashes are certainly new without a hash-index search.
//! - `entries: Vec<EntryRec>` (20 B: name offset, file id + [`SOLE`] bit, next entry of the
//!   same file, two inline holder slots). Entries with more than two holders spill to `spill`,
//!   a slab of `Vec<u32>`.
//! - `names`: one byte arena ([`Names`]) of length-prefixed names, one byte of overhead per
//!   name, each name compressed by a [`NameCodec`]: words common in names (with the space
//!   after them) become one- or two-byte codes, so a typical name takes about half its length.
//!   A registered name is stored plain (a valid encoding without codes) and compressed by
//!   [`Index::post_pending`], once its words are posted (the encoding looks at their counts).
//!   Search decodes the names it must match; ranking compares names while decoding. Freed
//!   records are reused by names of the same length; once garbage is a third of
//!   the arena it is compacted in place (amortised constant cost per freed name).
//! - Words: real names are full of rare words (track and catalogue numbers, IDs, years), so a
//!   word seen in one or two entries must cost little more than its text. Nothing is allocated
//!   per word:
//!   - `words: Vec<WordRec>` (12 B: the text's offset, then the postings: up to two entry ids
//!     inline, or a key into `postings` for three or more), addressed by `u32` word ids with
//!     a free list;
//!   - `word_text`: the lowercase texts in a byte arena like the names' ([`Names`]);
//!   - `word_hash`: a `hashbrown::HashTable<u32>` of word ids hashed by text (~5–10 B per
//!     word), for the hot exact lookups (register, removal, name lookup);
//!   - `word_order`: a [`BlockSet`] of `(first 4 text bytes << 32) | word id` in text order
//!     (~11 B per word), so a prefix is a range; most comparisons settle on the 4 bytes without
//!     reading the text, and a prefix of up to 4 bytes is matched on the items alone;
//!   - `postings`: a slab of [`PackedSet`]s of entry ids, one per word with three or more
//!     entries: sorted blocks of varint deltas, ~1.5 B per posting plus block headers, insert
//!     and remove decode one block of at most ~128 bytes. A set goes back inline when it
//!     shrinks to two.
//! - Each peer keeps a [`PackedSet`] of the entries it holds (~1 B per holding: ids a peer
//!   registers together are close), so removing a peer costs time proportional to its own
//!   holdings.
//! - Big vectors grow by a sixteenth at a time (glibc moves `mmap`ed blocks with `mremap`, so
//!   growth does not copy) rather than doubling, so that little capacity sits unused.
//! - Exact-name lookup has no table of its own: it goes through the postings of the name's
//!   rarest word and compares names, which saves a hash table slot per entry.
//!
//! # Removal
//! Removing holdings first drops the peer from each entry's holders, collecting entries left
//! without holders; those are then deleted in one batch: their `(word, entry)` postings are
//! gathered (re-tokenising each name into a reused buffer), sorted, and removed word by word,
//! each affected posting block decoded and re-encoded once; words left without postings go
//! (a dropped word is found in `word_order` by its id among the words sharing its 4-byte
//! prefix, without reading their texts); then names, records and files left without entries
//! go.
//!
//! # Words
//! Words are maximal runs of `char::is_alphanumeric` characters, lowercased character by
//! character (`char::to_lowercase`, no context rules, so the lowercase of a prefix is a prefix of
//! the lowercase). Names without any word are indexed under the empty word so that an exact name
//! lookup still finds them; a query never produces the empty word.

use crate::wire::{is_hex_prefix, FileEntry, FileHash, HeldFile, LookupKey, SearchHit};
use slab::Slab;
use std::cmp::Ordering;
#[cfg(test)]
use std::collections::BTreeMap; // the tests' model
use std::collections::BinaryHeap;
use std::fmt;
use std::hash::BuildHasher;
use std::net::SocketAddr;

/// Longest accepted file name, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// Marks an unused inline holder or posting slot, a missing link, or a free record.
const NONE: u32 = u32::MAX;
/// In `EntryRec::holders[0]`: the holders live in `spill[holders[1]]`. In
/// `WordRec::postings[0]`: the postings live in `Index::postings[postings[1]]`. (Neither is a
/// valid peer or entry id.)
const SPILLED: u32 = u32::MAX - 1;
/// Largest block of a [`BlockSet`]: big enough that block headers cost little per item, small
/// enough that an insert or remove moves at most 2 KiB (of `u64`s).
const BLOCK_ITEMS: usize = 256;
/// Up to this many staged files, a register checks a seen hash against them one by one;
/// beyond, it puts them all in the tables first.
const STAGED_SCAN: usize = 64;
/// Each staging buffer keeps at most this much capacity once emptied.
const KEEP_STAGED_BYTES: usize = 64 * 1024;
/// Staged names past this many bytes are put in the tables before more are staged.
const STAGED_MAX_NAME_BYTES: usize = 16 << 20;
/// A [`PackedSet`] block splits when its deltas exceed this many bytes: about 75 items of a
/// common word. Block headers then cost under half a byte per item, and an insert or remove
/// into the middle of a block decodes at most this many bytes.
const PACKED_BLOCK_BYTES: usize = 128;
/// The name arena is compacted once its garbage is a third of it and at least this big (tiny
/// in tests, so that the property test exercises compaction).
const COMPACT_MIN_BYTES: usize = if cfg!(test) { 16 } else { 1 << 20 };
/// How many `word_order` items sharing a dropped word's 4-byte prefix are scanned for its id
/// (8 KiB, sequential) before falling back to a search by text (a dozen dependent reads of
/// word records and texts). Numbers share prefixes in groups of hundreds. (Tiny in tests, so
/// that the property tests exercise the fallback.)
const WORD_SCAN: usize = if cfg!(test) { 2 } else { 1024 };
/// While the index holds a single entry of a file, the entry's `file` field carries this bit:
/// the file's holders are then exactly the entry's, and search need not touch the file record
/// to rank the entry.
const SOLE: u32 = 1 << 31;

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
    !name.is_empty() && name.len() <= MAX_NAME_BYTES && !name.bytes().any(|b| b == b'/' || b == 0)
}

/// One file (hash). `first_entry == NONE` marks a free slot.
struct FileRec {
    hash: FileHash,
    /// The size as `[low, high]` halves: a `u64` would align the record to 8 and pad it from
    /// 44 to 48 bytes, 4 MB per million files.
    size: [u32; 2],
    /// Head of the singly linked list of this file's entries (through `EntryRec::next`).
    /// (No holder count: a file with one entry has that entry's holders, and the few files
    /// with several names have theirs in `Index::multi_holders`, which saves 4 bytes per file.)
    first_entry: u32,
}

const _: () = assert!(std::mem::size_of::<FileRec>() == 44);

impl FileRec {
    fn size(&self) -> u64 {
        u64::from(self.size[0]) | (u64::from(self.size[1]) << 32)
    }
}

/// One (hash, name) pair, 20 bytes. `file == NONE` marks a free slot.
struct EntryRec {
    /// Offset of the name's record in [`Names`].
    name: u32,
    /// The file id, with [`SOLE`] set while this is the file's only entry.
    file: u32,
    /// Next entry of the same file, or `NONE`.
    next: u32,
    /// Up to two peer ids inline (unused slots are `NONE`), or `[SPILLED, spill key]`.
    holders: [u32; 2],
}

impl EntryRec {
    fn file(&self) -> u32 {
        self.file & !SOLE
    }
}

/// One word, 12 bytes. `text == NONE` marks a free slot.
struct WordRec {
    /// Offset of the word's (lowercase) text in `Index::word_text`.
    text: u32,
    /// The entries whose name contains the word: up to two entry ids inline, ascending
    /// (unused slots are `NONE`), or `[SPILLED, key]` for a [`PackedSet`] in
    /// `Index::postings` once there are three or more. A set goes back inline when it shrinks
    /// to two, so "inline" is exactly "at most two postings".
    postings: [u32; 2],
}

/// A holding of a file new to the index, registered but not yet in the tables.
struct Staged {
    hash: FileHash,
    size: u64,
    /// The name's bytes in `Index::staged_names`.
    name: std::ops::Range<u32>,
    peer: u32,
}

/// A Bloom filter over the hashes of the indexed and staged files: "certainly not indexed" in
/// one word read, where the hash index needs a search. Two bits per hash, both in one `u64`;
/// 10 bits per file after a rebuild and never fewer than 8 (about 1.2 bytes per file): about
/// one false "maybe" in twenty-five.
/// Bits are not cleared when a file goes; the filter is rebuilt from the files once it is too
/// full or too stale. Peers choose hashes, so they can make the filter answer "maybe" for
/// theirs, but a "maybe" only costs what every register used to cost (a hash-index search and
/// the tables' inserts), plus a scan of at most [`STAGED_SCAN`] staged hashes. Between two
/// calls of [`Index::post_pending`] (one reactor turn) a big batch can fill the filter past
/// its bits per file; that only raises the rate of "maybe".
#[derive(Default)]
struct HashFilter {
    words: Vec<u64>,
    /// Files deleted since the last rebuild (their bits may still be set).
    stale: usize,
    /// Tests: answer "maybe" for every hash.
    #[cfg(test)]
    saturated: bool,
}

impl HashFilter {
    /// Bits per file a rebuild aims at.
    const BITS_PER_FILE: usize = 10;
    /// Fewer bits per file than this (counting deleted files' stale bits) and it is rebuilt.
    const MIN_BITS_PER_FILE: usize = 8;

    /// The word and the two bits of a hash, from its first 4 bytes (`p32`, uniform for an
    /// honest hash), which the hash index's items carry: a rebuild reads only those items.
    /// The multiply spreads them: the word comes from the product's high bits, the bits from
    /// its low ones.
    fn slot(&self, p32: u32) -> (usize, u64) {
        let k = u64::from(p32).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let word = ((u128::from(k) * self.words.len() as u128) >> 64) as usize;
        (word, 1u64 << (k & 63) | 1u64 << ((k >> 6) & 63))
    }

    /// False only if `h` was never inserted since the last rebuild.
    fn may_contain(&self, h: &FileHash) -> bool {
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

    fn insert(&mut self, h: &FileHash) {
        self.insert_prefix(prefix32(h));
    }

    fn insert_prefix(&mut self, p32: u32) {
        if self.words.is_empty() {
            self.words = vec![0; 64];
        }
        let (w, bits) = self.slot(p32);
        self.words[w] |= bits;
    }

    /// Whether a rebuild is due, with `files` files in the tables: too few bits per file
    /// (deleted files' bits count as set), or more deleted files than live ones (then most set
    /// bits are stale and the filter is also oversized). A rebuild costs time in proportion to
    /// the live files, and follows at least a quarter as many new files (512 for the smallest
    /// filter) or as many deletions, so its cost per register or deletion is constant.
    fn needs_rebuild(&self, files: usize) -> bool {
        (files + self.stale) * Self::MIN_BITS_PER_FILE > self.words.len() * 64
            || (self.stale > files && self.words.len() > 64)
    }

    /// Empties the filter, sized for `files` files.
    fn reset(&mut self, files: usize) {
        self.words = vec![0; (files * Self::BITS_PER_FILE).div_ceil(64).max(64)];
        self.stale = 0;
    }
}

/// One live peer.
struct PeerRec {
    addr: SocketAddr,
    /// Entry ids this peer holds.
    entries: PackedSet,
    /// Distinct files this peer holds in the tables.
    files: u32,
    /// Files this peer holds that are staged, not yet in the tables (each a distinct new
    /// file: see [`Index::register`]).
    staged: u32,
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
    names: Names,
    /// The symbols names are compressed with (see [`NameCodec`]).
    codec: NameCodec,
    spill: Slab<Vec<u32>>,
    /// Word records by word id (with a free list).
    words: Vec<WordRec>,
    free_words: Vec<u32>,
    word_count: usize,
    /// The words' lowercase texts, an arena like the names'.
    word_text: Names,
    /// Word ids hashed by their text, for exact lookups (register, removal, name lookup).
    word_hash: hashbrown::HashTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    /// Word ids in text order, for prefix ranges: `(first 4 text bytes << 32) | word id`
    /// (see [`pad4`]), so most comparisons need not read the text.
    word_order: BlockSet<u64>,
    /// Posting sets of the words with more than two entries.
    postings: Slab<PackedSet>,
    peers: Vec<Option<PeerRec>>,
    free_peers: Vec<u32>,
    peer_count: usize,
    /// Holdings (peer, entry), staged ones included: the sum of every peer's entries.
    holding_count: usize,
    /// Distinct holders of each file with two or more entries (a file with one entry has that
    /// entry's holders), kept as holdings come and go so that search ranks in `O(1)` per hit.
    /// Most files have one name, so this costs nothing per file.
    multi_holders: hashbrown::HashMap<u32, u32>,
    /// Entries created by [`Index::register`] whose words are not posted yet (see
    /// [`Index::post_pending`]).
    unposted: Vec<u32>,
    /// Which hashes may be indexed or staged: no bit missing for any of them.
    seen: HashFilter,
    /// Holdings of files new to the index, registered but not yet in the tables (see
    /// [`Index::register`]): distinct hashes, none indexed.
    staged: Vec<Staged>,
    /// The staged holdings' names, end to end.
    staged_names: String,
    /// Reused buffers, so that register and removal allocate nothing per entry.
    work: Work,
}

/// Buffers reused across calls (their contents mean nothing between calls).
#[derive(Default)]
struct Work {
    words: Scratch,
    /// Entries that lost their last holder, to delete in one batch.
    dead: Vec<u32>,
    /// `(word id << 32) | entry id` postings to remove, sorted so that each word's posting
    /// set is visited once.
    unpost: Vec<u64>,
    items: Vec<u32>,
    decoded: Vec<u32>,
    /// A name being encoded or decoded.
    name: Vec<u8>,
    /// A name's text while its words are posted.
    text: String,
    /// The word ids of the name being registered, one per word in order.
    name_words: Vec<u32>,
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
            .field("words", &self.word_count)
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
            names: Names::default(),
            codec: NameCodec::default(),
            spill: Slab::new(),
            words: Vec::new(),
            free_words: Vec::new(),
            word_count: 0,
            word_text: Names::default(),
            word_hash: hashbrown::HashTable::new(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            word_order: BlockSet::new(),
            postings: Slab::new(),
            peers: Vec::new(),
            free_peers: Vec::new(),
            peer_count: 0,
            holding_count: 0,
            multi_holders: hashbrown::HashMap::new(),
            unposted: Vec::new(),
            seen: HashFilter::default(),
            staged: Vec::new(),
            staged_names: String::new(),
            work: Work::default(),
        }
    }

    /// Live peers.
    pub fn peer_count(&self) -> usize {
        self.peer_count
    }

    /// Distinct hashes indexed.
    pub fn file_count(&self) -> usize {
        // Each staged holding is a file new to the index, with one entry.
        self.file_count + self.staged.len()
    }

    /// Distinct (hash, name) entries indexed.
    pub fn entry_count(&self) -> usize {
        self.entry_count + self.staged.len()
    }

    /// Distinct words in the word index (the empty word of wordless names included).
    pub fn word_count(&mut self) -> usize {
        self.post_pending();
        self.word_count
    }

    /// Distinct hashes `peer` holds (0 for an unknown peer).
    pub fn holdings_of(&self, peer: PeerId) -> u32 {
        self.peer(peer).map_or(0, |p| p.files + p.staged)
    }

    /// Holdings in the index: every peer's entries summed (a file two peers share under one
    /// name counts twice).
    pub fn holding_count(&self) -> usize {
        self.holding_count
    }

    /// Entries (hash and name pairs) `peer` holds (0 for an unknown peer).
    pub fn entries_of(&self, peer: PeerId) -> u32 {
        self.peer(peer)
            .map_or(0, |p| p.entries.len() as u32 + p.staged)
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
            entries: PackedSet::new(),
            files: 0,
            staged: 0,
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
        self.post_pending();
        let rec = self.peers.get_mut(peer.0 as usize)?.take()?;
        self.peer_count -= 1;
        if self.peer_count == 0 {
            self.peers = Vec::new();
            self.free_peers = Vec::new();
        } else {
            self.free_peers.push(peer.0);
        }
        let mut dead = std::mem::take(&mut self.work.dead);
        dead.clear();
        let mut held = 0;
        for e in rec.entries.iter() {
            held += 1;
            self.pop_holder(e, peer.0);
            let file = self.entries[e as usize].file();
            // Entries of this file still to be visited may hold the peer: a file of several
            // names loses this holder only at the last of them.
            if self.multi_holders.contains_key(&file) && !self.peer_holds_file(peer.0, file) {
                self.lose_holder(file);
            }
            if self.holder_slice(e).is_empty() {
                dead.push(e);
            }
        }
        self.delete_entries(&dead);
        self.work.dead = dead;
        self.holding_count -= held as usize;
        Some(held)
    }

    /// Registers `files` for `peer`, in bulk. Entries the peer already holds are no-ops;
    /// entries with an invalid name or a size that disagrees with the indexed size of their
    /// hash are rejected. An unknown peer gets every entry rejected.
    ///
    /// The outcome is all a register's answer needs, so this does only what decides it. A file
    /// whose hash the [`HashFilter`] has never seen is certainly new to the index and to this
    /// peer: it is only staged (its name copied to a buffer), and [`Index::post_pending`] puts
    /// it in the tables later. Reading a few filter words costs far less than searching the
    /// hash index, creating the file, its entry and the holding, and the filter's reads do not
    /// depend on each other, so a batch's cache misses overlap. Any other file (the hash was
    /// seen, or the filter says so wrongly, about one time in twenty-five) goes through the tables
    /// at once, after any staged file of the same hash.
    pub fn register(&mut self, peer: PeerId, files: &[FileEntry]) -> RegisterOutcome {
        self.register_at_most(peer, files, u32::MAX)
    }

    /// [`Index::register`], adding at most `room` new holdings: the entries beyond it that
    /// the peer does not hold yet are rejected (those it holds stay no-ops).
    pub fn register_at_most(
        &mut self,
        peer: PeerId,
        files: &[FileEntry],
        room: u32,
    ) -> RegisterOutcome {
        let mut out = RegisterOutcome::default();
        if self.peer(peer).is_none() {
            out.rejected = files.len() as u32;
            return out;
        }
        for f in files {
            if !is_valid_name(&f.name) {
                out.rejected += 1;
                continue;
            }
            let may_add = out.added < room;
            let fresh = if !self.seen.may_contain(&f.hash) {
                true
            } else if self.is_staged(&f.hash) {
                self.unstage_all();
                false
            } else {
                // Not staged: the hash index alone says whether the file is new.
                self.hash_position(&f.hash).is_err()
            };
            let added = if fresh {
                if !may_add {
                    out.rejected += 1;
                    continue;
                }
                if self.staged_names.len() + f.name.len() > STAGED_MAX_NAME_BYTES {
                    // Bounds the buffer (and its `u32` offsets) whatever one turn brings.
                    self.unstage_all();
                }
                self.stage(peer, f);
                true
            } else {
                match self.add_entry(peer, &f.name, &f.hash, f.size, may_add) {
                    Some(added) => added,
                    None => {
                        out.rejected += 1;
                        continue;
                    }
                }
            };
            if added {
                out.added += 1;
            }
        }
        out.total = self.holdings_of(peer);
        out
    }

    /// Puts `f`, a file new to the index, in the staging area as held by `peer`.
    fn stage(&mut self, peer: PeerId, f: &FileEntry) {
        self.seen.insert(&f.hash);
        let start = self.staged_names.len() as u32;
        self.staged_names.push_str(&f.name);
        self.staged.push(Staged {
            hash: f.hash,
            size: f.size,
            name: start..self.staged_names.len() as u32,
            peer: peer.0,
        });
        self.peer_mut(peer).staged += 1;
        self.holding_count += 1;
    }

    /// Whether a staged file has hash `h`. Beyond [`STAGED_SCAN`] staged files, answers true
    /// without looking (the caller then unstages them all, which costs the same in the end).
    fn is_staged(&self, h: &FileHash) -> bool {
        !self.staged.is_empty()
            && (self.staged.len() > STAGED_SCAN || self.staged.iter().any(|s| s.hash == *h))
    }

    /// Puts every staged file in the tables.
    fn unstage_all(&mut self) {
        if self.staged.is_empty() {
            return;
        }
        let staged = std::mem::take(&mut self.staged);
        let names = std::mem::take(&mut self.staged_names);
        for s in &staged {
            let name = &names[s.name.start as usize..s.name.end as usize];
            let peer = PeerId(s.peer);
            self.peer_mut(peer).staged -= 1;
            self.holding_count -= 1;
            let added = self.add_entry(peer, name, &s.hash, s.size, true);
            debug_assert_eq!(added, Some(true), "a staged file is new to the index");
        }
        self.staged = staged;
        self.staged.clear();
        self.staged_names = names;
        self.staged_names.clear();
        // A big batch's buffers go back; a small one's are kept for the next register.
        if self.staged_names.capacity() > KEEP_STAGED_BYTES
            || self.staged.capacity() * std::mem::size_of::<Staged>() > KEEP_STAGED_BYTES
        {
            self.staged_names = String::new();
            self.staged = Vec::new();
        }
    }

    /// Adds `peer`'s holding of the file `hash` of `size` under `name` (valid; the hash not
    /// staged) to the tables. Returns whether the holding is new, or `None` if `size`
    /// contradicts the indexed file's or the holding would be new and `!may_add`.
    fn add_entry(
        &mut self,
        peer: PeerId,
        name: &str,
        hash: &FileHash,
        size: u64,
        may_add: bool,
    ) -> Option<bool> {
        let file = match self.hash_position(hash) {
            Ok(at) => {
                let id = self.by_hash.get(at) as u32;
                if self.files[id as usize].size() != size {
                    return None;
                }
                id
            }
            Err(_) if !may_add => return None,
            Err(at) => self.create_file(at, *hash, size),
        };
        let entry = match self.find_entry(file, name) {
            Some(e) if self.holder_slice(e).contains(&peer.0) => return Some(false),
            Some(e) => e,
            None if !may_add => return None,
            None => self.create_entry(file, name),
        };
        if !may_add {
            return None;
        }
        Some(self.add_holding(peer, entry))
    }

    /// Withdraws all of `peer`'s holdings of `hashes`; returns how many entries it lost.
    /// Hashes it never registered count 0 and leave other peers' holdings alone.
    pub fn unregister(&mut self, peer: PeerId, hashes: &[FileHash]) -> u32 {
        self.post_pending();
        if self.peer(peer).is_none() {
            return 0;
        }
        let mut removed = 0;
        let mut held = std::mem::take(&mut self.work.items);
        let mut dead = std::mem::take(&mut self.work.dead);
        dead.clear();
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
                    self.peer_mut(peer).files -= 1;
                    self.lose_holder(file);
                }
                self.peer_mut(peer).entries.remove(e);
                // Deleted after the loop: a later hash of the same call may name this file
                // again, and must still find it (now without this peer).
                if self.holder_slice(e).is_empty() {
                    dead.push(e);
                }
                removed += 1;
            }
        }
        self.work.items = held;
        self.delete_entries(&dead);
        self.work.dead = dead;
        self.holding_count -= removed as usize;
        removed
    }

    /// Keyword search over names. Returns at most `limit` hits, best first, and whether more
    /// matched. Every query word (see the module docs for words) must equal
    /// or prefix a word of the name; query words are deduplicated; ranking is: more query words equal
    /// to a whole word of the name, then more holders, then name (bytewise), then hash.
    ///
    /// Candidates come from the postings of the most selective query word (the one whose
    /// prefix range has the fewest postings). Each other word is checked against a bitmap of
    /// its own postings when those are few enough (a few per candidate), or else against the
    /// candidate's name, so two common words cost a pass over their postings rather than a
    /// parse of every candidate's name. The best `limit` are kept in a bounded heap, so a
    /// query matching a million entries costs time linear in the matches but memory only for
    /// `limit` hits.
    /// A candidate is first ranked by its cheap keys (whole words, holders), read from the
    /// entry record alone for a file's sole entry; its name is read only when those keys tie
    /// with the worst hit kept.
    pub fn search(&mut self, query: &str, limit: usize) -> (Vec<SearchHit>, bool) {
        self.post_pending();
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
            for w in self.word_range(q) {
                total += self.posting_count(w);
                if best.is_some_and(|(b, _)| total >= b) {
                    break;
                }
            }
            if best.map_or(true, |(b, _)| total < b) {
                best = Some((total, i));
            }
        }
        let Some((picked, pick)) = best else {
            return (Vec::new(), false);
        };
        // The other words: by bitmap when their postings are at most a few per candidate,
        // by name otherwise.
        let budget = picked.saturating_mul(BITMAP_POSTINGS_PER_CANDIDATE);
        let mut bitmaps: Vec<WordBits> = Vec::new();
        let mut by_name: Vec<String> = Vec::new();
        for (i, q) in qwords.iter().enumerate() {
            if i == pick {
                continue;
            }
            let mut total = 0usize;
            let fits = self.word_range(q).all(|w| {
                total += self.posting_count(w);
                total <= budget
            });
            if fits {
                bitmaps.push(self.word_bits(q, total));
            } else {
                by_name.push(q.clone());
            }
        }
        let q = &qwords[pick];
        let exact = self.find_word(q.as_bytes());
        let range: Vec<(bool, u32)> = self.word_range(q).map(|w| (Some(w) == exact, w)).collect();
        // An entry may contain several words of the range; count it once. The exact word
        // sorts first in the range, so a single-word query sees its whole-word hits first.
        let mut seen = (range.len() > 1).then(|| vec![0u64; self.entries.len().div_ceil(64)]);

        let mut heap: BinaryHeap<Ranked<'_>> = BinaryHeap::new();
        let mut matched = 0usize;
        let mut name_buf = Vec::new();
        for &(exact, w) in &range {
            for e in self.posting_iter(w) {
                if let Some(seen) = seen.as_mut() {
                    let (word, bit) = (e as usize / 64, 1u64 << (e % 64));
                    if seen[word] & bit != 0 {
                        continue;
                    }
                    seen[word] |= bit;
                }
                let entry = &self.entries[e as usize];
                let mut whole = u32::from(exact);
                let mut all = true;
                for b in &bitmaps {
                    match b.matches(e) {
                        Some(w) => whole += u32::from(w),
                        None => {
                            all = false;
                            break;
                        }
                    }
                }
                if !all {
                    continue;
                }
                if !by_name.is_empty() {
                    self.codec.decode(self.names.get(entry.name), &mut name_buf);
                    let name = std::str::from_utf8(&name_buf).expect("names are stored from str");
                    match match_words(&by_name, name, &mut scratch) {
                        Some(n) => whole += n,
                        None => continue,
                    }
                }
                matched += 1;
                if limit == 0 {
                    continue;
                }
                let holders = if entry.file & SOLE != 0 {
                    self.holder_count(entry)
                } else {
                    self.multi_holders[&entry.file()]
                };
                if heap.len() == limit {
                    // Cheap keys first: most candidates of a big query lose here without
                    // their name or file record being read.
                    let worst = heap.peek().expect("limit > 0");
                    match (whole, holders).cmp(&(worst.whole, worst.holders)) {
                        Ordering::Less => continue,
                        Ordering::Equal => {
                            // Compared while decoding: the first symbol usually settles it.
                            match self.codec.cmp(self.names.get(entry.name), &worst.name) {
                                Ordering::Greater => continue,
                                Ordering::Equal
                                    if self.files[entry.file() as usize].hash > *worst.hash =>
                                {
                                    continue
                                }
                                _ => {}
                            }
                        }
                        Ordering::Greater => {}
                    }
                }
                let file = &self.files[entry.file() as usize];
                let mut name = Vec::new();
                self.codec.decode(self.names.get(entry.name), &mut name);
                let hit = Ranked {
                    whole,
                    holders,
                    name,
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
                name: String::from_utf8(r.name).expect("names are stored from str"),
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
    pub fn lookup(&mut self, key: &LookupKey) -> Result<Vec<HeldFile>, LookupError> {
        self.post_pending();
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
                let mut best: Option<(usize, u32)> = None; // (postings, word id)
                let words: Vec<&str> = if scratch.spans.is_empty() {
                    vec![""]
                } else {
                    scratch.words().collect()
                };
                for w in words {
                    let Some(id) = self.find_word(w.as_bytes()) else {
                        return Err(LookupError::NotFound);
                    };
                    let n = self.posting_count(id);
                    if best.map_or(true, |(b, _)| n < b) {
                        best = Some((n, id));
                    }
                }
                let (_, w) = best.ok_or(LookupError::NotFound)?;
                let mut files: Vec<HeldFile> = self
                    .posting_iter(w)
                    .filter(|&e| {
                        let enc = self.names.get(self.entries[e as usize].name);
                        self.codec.cmp(enc, name.as_bytes()) == Ordering::Equal
                    })
                    .map(|e| self.held_file(self.entries[e as usize].file(), Some(e)))
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

    /// Ids of the words whose text starts with `prefix` (non-empty), in text order (the word
    /// equal to it first). A prefix of up to 4 bytes is matched on the items alone.
    fn word_range<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = u32> + 'a {
        let prefix = prefix.as_bytes();
        let p4 = pad4(prefix);
        let start = self
            .word_order
            .search(|&item| {
                ((item >> 32) as u32)
                    .cmp(&p4)
                    .then_with(|| self.word_bytes(item as u32).cmp(prefix))
                    .then(Ordering::Greater)
            })
            .unwrap_or_else(|at| at);
        // Words contain no NUL byte, so a word shorter than a short prefix cannot match the
        // zero padding of its item.
        let shift = 8 * 4usize.saturating_sub(prefix.len()) as u32;
        self.word_order
            .iter_from(start)
            .take_while(move |&item| {
                let top = item >> 32;
                top >> shift == u64::from(p4) >> shift
                    && (prefix.len() <= 4 || self.word_bytes(item as u32).starts_with(prefix))
            })
            .map(|item| item as u32)
    }

    /// The entries with a word starting with `prefix` (`postings` of them, counted by the
    /// caller), each marked whole if a word equals it.
    fn word_bits(&self, prefix: &str, postings: usize) -> WordBits {
        let exact = self.find_word(prefix.as_bytes());
        let range = self.word_range(prefix).map(|w| (Some(w) == exact, w));
        if postings.saturating_mul(SPARSE_BITS) < self.entries.len() {
            // Few: a sorted list, searched per candidate.
            let mut list: Vec<u32> = Vec::with_capacity(postings);
            for (whole, w) in range {
                list.extend(self.posting_iter(w).map(|e| e << 1 | u32::from(whole)));
            }
            list.sort_unstable();
            return WordBits::Sparse(list);
        }
        let words = self.entries.len().div_ceil(64);
        let (mut any, mut whole) = (vec![0u64; words], Vec::new());
        for (exact, w) in range {
            if exact {
                whole = vec![0u64; words];
            }
            for e in self.posting_iter(w) {
                let (i, bit) = (e as usize / 64, 1u64 << (e % 64));
                any[i] |= bit;
                if exact {
                    whole[i] |= bit;
                }
            }
        }
        WordBits::Dense { any, whole }
    }

    fn word_bytes(&self, w: u32) -> &[u8] {
        self.word_text.get(self.words[w as usize].text)
    }

    fn hash_word(&self, text: &[u8]) -> u64 {
        self.hasher.hash_one(text)
    }

    /// The id of the word `text` (lowercase), if indexed.
    fn find_word(&self, text: &[u8]) -> Option<u32> {
        self.find_word_hashed(text, self.hash_word(text))
    }

    fn find_word_hashed(&self, text: &[u8], hash: u64) -> Option<u32> {
        self.word_hash
            .find(hash, |&w| self.word_bytes(w) == text)
            .copied()
    }

    /// Where the word `text` is (or would go) in `word_order`.
    fn word_position(&self, text: &[u8]) -> Result<(usize, usize), (usize, usize)> {
        let p4 = pad4(text);
        self.word_order.search(|&item| {
            ((item >> 32) as u32)
                .cmp(&p4)
                .then_with(|| self.word_bytes(item as u32).cmp(text))
        })
    }

    /// How many entries word `w` is posted under.
    fn posting_count(&self, w: u32) -> usize {
        match self.words[w as usize].postings {
            [SPILLED, key] => self.postings[key as usize].len(),
            [NONE, _] => 0,
            [_, NONE] => 1,
            _ => 2,
        }
    }

    /// The entries posted under word `w`, ascending.
    fn posting_iter(&self, w: u32) -> PostingIter<'_> {
        let p = &self.words[w as usize].postings;
        match *p {
            [SPILLED, key] => PostingIter::Packed(self.postings[key as usize].iter()),
            [NONE, _] => PostingIter::Inline([].iter()),
            [_, NONE] => PostingIter::Inline(p[..1].iter()),
            _ => PostingIter::Inline(p.iter()),
        }
    }

    /// The file with hash `h`, in `O(log n)` over the full-hash order.
    fn find_file(&self, h: &FileHash) -> Option<u32> {
        self.hash_position(h)
            .ok()
            .map(|at| self.by_hash.get(at) as u32)
    }

    /// Where `h` is (or would go) in `by_hash`.
    ///
    /// Honest hashes are uniformly distributed, so the position is first guessed from the
    /// 4-byte prefix (interpolation) and then searched outward from the guess: a few
    /// neighbouring cache lines are read instead of a binary search's scattered ones. Peers
    /// choose the hash bytes, but a skewed set only makes the gallop longer: still `O(log n)`.
    fn hash_position(&self, h: &FileHash) -> Result<(usize, usize), (usize, usize)> {
        let p32 = prefix32(h);
        self.by_hash.search_guided(
            |&item| {
                ((item >> 32) as u32)
                    .cmp(&p32)
                    .then_with(|| self.files[item as u32 as usize].hash.cmp(h))
            },
            |items| interpolate(items, p32),
        )
    }

    /// Adds a file whose hash is not indexed yet; `at` is where [`Self::hash_position`] said
    /// it would go.
    fn create_file(&mut self, at: (usize, usize), hash: FileHash, size: u64) -> u32 {
        let rec = FileRec {
            hash,
            size: [size as u32, (size >> 32) as u32],
            first_entry: NONE,
        };
        let id = if let Some(id) = self.free_files.pop() {
            self.files[id as usize] = rec;
            id
        } else {
            reserve_gently(&mut self.files, 1);
            self.files.push(rec);
            let id = (self.files.len() - 1) as u32;
            assert!(id < SOLE, "more than 2^31 files");
            id
        };
        self.file_count += 1;
        self.seen.insert(&hash);
        debug_assert_eq!(self.hash_position(&hash), Err(at));
        self.by_hash
            .insert_at(at, (u64::from(prefix32(&hash)) << 32) | u64::from(id));
        id
    }

    fn delete_file(&mut self, file: u32) {
        let hash = self.files[file as usize].hash;
        let at = self
            .hash_position(&hash)
            .expect("a live file is indexed by hash");
        self.by_hash.remove_at(at);
        self.file_count -= 1;
        self.seen.stale += 1;
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
            if self.codec.cmp(self.names.get(rec.name), name.as_bytes()) == Ordering::Equal {
                return Some(e);
            }
            e = rec.next;
        }
        None
    }

    fn create_entry(&mut self, file: u32, name: &str) -> u32 {
        let head = self.files[file as usize].first_entry;
        let sole = if head == NONE {
            SOLE
        } else {
            // The file gains a second entry: the first is no longer its sole one, and the
            // file's holders (so far that entry's) are counted on their own from now on.
            if self.entries[head as usize].next == NONE {
                self.entries[head as usize].file &= !SOLE;
                let n = self.holder_slice(head).len() as u32;
                self.multi_holders.insert(file, n);
            }
            0
        };
        assert!(self.entries.len() < SPILLED as usize, "entry ids exhausted");
        let rec = EntryRec {
            // Set below, once the id is known.
            name: NONE,
            file: file | sole,
            next: head,
            holders: [NONE, NONE],
        };
        let id = if let Some(id) = self.free_entries.pop() {
            self.entries[id as usize] = rec;
            id
        } else {
            reserve_gently(&mut self.entries, 1);
            self.entries.push(rec);
            (self.entries.len() - 1) as u32
        };
        self.files[file as usize].first_entry = id;
        self.entry_count += 1;
        self.unposted.push(id);
        // Stored plain for now (a valid encoding without symbols, cheap to write); its words
        // are posted and it is compressed in `post_pending`, off the register's answer.
        let mut plain = std::mem::take(&mut self.work.name);
        NameCodec::plain(name, &mut plain);
        self.entries[id as usize].name = self.names.push(&plain);
        self.work.name = plain;
        id
    }

    /// Finishes what [`Index::register`] left: puts the staged files in the tables, posts the
    /// words of the entries created since the last call and compresses their names (which
    /// needs the words' posting counts), and rebuilds the hash filter when it is due. Every
    /// other method calls it first, so no answer ever sees a file without its tables or an
    /// entry without its words; an owner that answers a register before calling it (the
    /// server does, to answer sooner) defers the work, not its effect.
    pub fn post_pending(&mut self) {
        self.unstage_all();
        if self.seen.needs_rebuild(self.file_count) {
            self.rebuild_filter();
        }
        if self.unposted.is_empty() {
            return;
        }
        let unposted = std::mem::take(&mut self.unposted);
        let mut scratch = std::mem::take(&mut self.work.words);
        let mut name_words = std::mem::take(&mut self.work.name_words);
        let mut text = std::mem::take(&mut self.work.text);
        let mut enc = std::mem::take(&mut self.work.name);
        for &id in &unposted {
            let at = self.entries[id as usize].name;
            text.clear();
            text.push_str(NameCodec::plain_str(self.names.get(at)));
            lower_words(&text, &mut scratch);
            name_words.clear();
            if scratch.spans.is_empty() {
                self.post(id, "");
            }
            for i in 0..scratch.spans.len() {
                let (a, b) = scratch.spans[i];
                name_words.push(self.post(id, &scratch.buf[a..b]));
            }
            let Index {
                codec,
                words,
                postings,
                ..
            } = self;
            codec.encode(&text, &mut enc, |i| {
                name_words
                    .get(i)
                    .is_some_and(|&w| match words[w as usize].postings {
                        [SPILLED, key] => postings[key as usize].len() >= NameCodec::MIN_POSTINGS,
                        _ => false,
                    })
            });
            if enc.as_slice() != self.names.get(at) {
                self.names.free(at);
                self.entries[id as usize].name = self.names.push(&enc);
            }
        }
        self.work.words = scratch;
        self.work.name_words = name_words;
        self.work.text = text;
        self.work.name = enc;
        self.unposted = unposted;
        self.unposted.clear();
        if self.names.needs_compaction() {
            self.compact_names();
        }
    }

    /// Rebuilds the hash filter from the indexed files (none staged): one pass over the hash
    /// index's items, which carry the bytes the filter reads, so the time is in proportion to
    /// the live files and reads 8 bytes of each, in order.
    fn rebuild_filter(&mut self) {
        debug_assert!(self.staged.is_empty());
        let Index { seen, by_hash, .. } = self;
        seen.reset(by_hash.len);
        for item in by_hash.iter_from((0, 0)) {
            seen.insert_prefix((item >> 32) as u32);
        }
    }

    /// Whether [`Index::register`] left work for [`Index::post_pending`].
    pub fn has_pending(&self) -> bool {
        !self.unposted.is_empty() || !self.staged.is_empty()
    }

    /// Posts `entry` under `word`; a no-op if it is there already (a name may repeat a word).
    /// Returns the word's id.
    fn post(&mut self, entry: u32, word: &str) -> u32 {
        let text = word.as_bytes();
        let hash = self.hash_word(text);
        let w = match self.find_word_hashed(text, hash) {
            Some(w) => w,
            None => self.create_word(text, hash),
        };
        let p = &mut self.words[w as usize].postings;
        match *p {
            [SPILLED, key] => {
                self.postings[key as usize].insert(entry);
            }
            [NONE, _] => p[0] = entry,
            [a, NONE] if a != entry => *p = [a.min(entry), a.max(entry)],
            [a, b] if a != entry && b != entry => {
                // A third posting: spill to a packed set.
                let mut set = PackedSet::new();
                for x in [a, b, entry] {
                    set.insert(x);
                }
                let key = self.postings.insert(set);
                *p = [SPILLED, key as u32];
            }
            _ => {}
        }
        w
    }

    /// Adds word `text` (hashed `hash`) without postings; returns its id.
    fn create_word(&mut self, text: &[u8], hash: u64) -> u32 {
        let rec = WordRec {
            text: self.word_text.push(text),
            postings: [NONE, NONE],
        };
        let w = if let Some(w) = self.free_words.pop() {
            self.words[w as usize] = rec;
            w
        } else {
            reserve_gently(&mut self.words, 1);
            self.words.push(rec);
            (self.words.len() - 1) as u32
        };
        self.word_count += 1;
        let (words, word_text, hasher) = (&self.words, &self.word_text, &self.hasher);
        self.word_hash.insert_unique(hash, w, |&x| {
            hasher.hash_one(word_text.get(words[x as usize].text))
        });
        let at = self
            .word_position(text)
            .expect_err("a new word is not indexed yet");
        self.word_order
            .insert_at(at, (u64::from(pad4(text)) << 32) | u64::from(w));
        w
    }

    /// Removes `items` (sorted, distinct, all posted) from word `w`'s postings; true if none
    /// are left.
    fn unpost(&mut self, w: u32, items: &[u32], decoded: &mut Vec<u32>) -> bool {
        let p = &mut self.words[w as usize].postings;
        match *p {
            [SPILLED, key] => {
                let set = &mut self.postings[key as usize];
                set.remove_sorted(items, decoded);
                if set.len() <= 2 {
                    // Back inline: no allocation for a word with two entries or fewer.
                    let mut it = set.iter();
                    let inline = [it.next().unwrap_or(NONE), it.next().unwrap_or(NONE)];
                    self.postings.remove(key as usize);
                    *p = inline;
                }
            }
            inline => {
                let mut kept = [NONE, NONE];
                let mut n = 0;
                for x in inline {
                    if x != NONE && items.binary_search(&x).is_err() {
                        kept[n] = x;
                        n += 1;
                    }
                }
                *p = kept;
            }
        }
        p[0] == NONE
    }

    /// Deletes the entries in `dead` (each without holders, listed once): their postings in
    /// one sorted batch, then their names and records, then files left without entries.
    fn delete_entries(&mut self, dead: &[u32]) {
        if dead.is_empty() {
            return;
        }
        let mut scratch = std::mem::take(&mut self.work.words);
        let mut unpost = std::mem::take(&mut self.work.unpost);
        let mut items = std::mem::take(&mut self.work.items);
        let mut decoded = std::mem::take(&mut self.work.decoded);
        let posted = |ix: &Self, text: &str| {
            ix.find_word(text.as_bytes())
                .expect("an entry is posted under each word of its name")
        };
        unpost.clear();
        let mut name_buf = std::mem::take(&mut self.work.name);
        for &e in dead {
            self.codec
                .decode(self.names.get(self.entries[e as usize].name), &mut name_buf);
            lower_words(
                std::str::from_utf8(&name_buf).expect("names are stored from str"),
                &mut scratch,
            );
            if scratch.spans.is_empty() {
                unpost.push((u64::from(posted(self, "")) << 32) | u64::from(e));
            }
            for w in scratch.words() {
                unpost.push((u64::from(posted(self, w)) << 32) | u64::from(e));
            }
        }
        // A word that occurs twice in a name was posted once.
        unpost.sort_unstable();
        unpost.dedup();
        let mut emptied = Vec::new();
        for group in unpost.chunk_by(|a, b| a >> 32 == b >> 32) {
            let w = (group[0] >> 32) as u32;
            items.clear();
            items.extend(group.iter().map(|&x| x as u32));
            if self.unpost(w, &items, &mut decoded) {
                emptied.push(w);
            }
        }
        for w in emptied {
            self.drop_word(w);
        }
        self.work.words = scratch;
        self.work.name = name_buf;
        self.work.unpost = unpost;
        self.work.items = items;
        self.work.decoded = decoded;
        if self.word_text.needs_compaction() {
            self.compact_words();
        }
        for &e in dead {
            self.delete_entry_record(e);
        }
        if self.names.needs_compaction() {
            self.compact_names();
        }
    }

    /// Forgets word `w`, whose postings just became empty.
    fn drop_word(&mut self, w: u32) {
        let text = self.word_bytes(w);
        let hash = self.hash_word(text);
        let p4 = pad4(text);
        // Among the words sharing its 4-byte prefix, the word's item is found by its id alone
        // (no text read per comparison) when they are few, by its text otherwise.
        let group = self
            .word_order
            .search(|&item| ((item >> 32) as u32).cmp(&p4).then(Ordering::Greater))
            .unwrap_or_else(|at| at);
        let at = self
            .word_order
            .scan_for(group, (u64::from(p4) << 32) | u64::from(w), WORD_SCAN)
            .unwrap_or_else(|| self.word_position(text).expect("a live word is ordered"));
        self.word_order.remove_at(at);
        self.word_hash
            .find_entry(hash, |&x| x == w)
            .expect("a live word is hashed")
            .remove();
        self.word_text.free(self.words[w as usize].text);
        self.word_count -= 1;
        if self.word_count == 0 {
            // Give the memory back once no word is left.
            self.words = Vec::new();
            self.free_words = Vec::new();
            self.word_text = Names::default();
            self.word_hash = hashbrown::HashTable::new();
            self.word_order = BlockSet::new();
            self.postings = Slab::new();
        } else {
            self.words[w as usize] = WordRec {
                text: NONE,
                postings: [NONE, NONE],
            };
            self.free_words.push(w);
        }
    }

    /// Frees entry `e`'s record and name (its postings are gone already), and its file if that
    /// was the file's last entry.
    fn delete_entry_record(&mut self, e: u32) {
        let file = self.entries[e as usize].file();
        // Unlink from the file's entry list.
        let next = self.entries[e as usize].next;
        let head = self.files[file as usize].first_entry;
        let new_head = if head == e {
            self.files[file as usize].first_entry = next;
            next
        } else {
            let mut prev = head;
            while self.entries[prev as usize].next != e {
                prev = self.entries[prev as usize].next;
            }
            self.entries[prev as usize].next = next;
            head
        };
        if new_head != NONE && self.entries[new_head as usize].next == NONE {
            self.entries[new_head as usize].file |= SOLE;
            self.multi_holders.remove(&file);
        }
        self.names.free(self.entries[e as usize].name);
        self.entry_count -= 1;
        if self.entry_count == 0 {
            self.entries = Vec::new();
            self.free_entries = Vec::new();
            self.spill = Slab::new();
            self.names = Names::default();
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

    /// Rewrites the name arena without garbage, in offset order (so in place). Costs a sort of
    /// the live entries; it runs only after a third of the arena has been freed since the last
    /// compaction, so its cost per freed name is a constant.
    fn compact_names(&mut self) {
        let live: Vec<u64> = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, r)| r.file != NONE)
            .map(|(i, r)| (u64::from(r.name) << 32) | i as u64)
            .collect();
        let entries = &mut self.entries;
        self.names.compact(live, |e, at| entries[e].name = at);
    }

    /// [`Index::compact_names`] for the word texts.
    fn compact_words(&mut self) {
        let live: Vec<u64> = self
            .words
            .iter()
            .enumerate()
            .filter(|(_, r)| r.text != NONE)
            .map(|(i, r)| (u64::from(r.text) << 32) | i as u64)
            .collect();
        let words = &mut self.words;
        self.word_text.compact(live, |w, at| words[w].text = at);
    }

    /// Adds holding (peer, e); false if the peer already held it.
    fn add_holding(&mut self, peer: PeerId, e: u32) -> bool {
        if self.holder_slice(e).contains(&peer.0) {
            return false;
        }
        let file = self.entries[e as usize].file();
        let new_file = !self.peer_holds_file(peer.0, file);
        self.push_holder(e, peer.0);
        if new_file {
            if let Some(n) = self.multi_holders.get_mut(&file) {
                *n += 1;
            }
        }
        let rec = self.peer_mut(peer);
        if new_file {
            rec.files += 1;
        }
        rec.entries.insert(e);
        self.holding_count += 1;
        true
    }

    /// `file` lost one of its distinct holders (counted only for a file of several names).
    fn lose_holder(&mut self, file: u32) {
        if let Some(n) = self.multi_holders.get_mut(&file) {
            *n -= 1;
        }
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

    /// How many peers hold `entry` (without touching the spill slab for up to two).
    fn holder_count(&self, entry: &EntryRec) -> u32 {
        match entry.holders {
            [SPILLED, key] => self.spill[key as usize].len() as u32,
            [NONE, _] => 0,
            [_, NONE] => 1,
            _ => 2,
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
        let name_of = |e: u32| {
            let mut name = Vec::new();
            self.codec
                .decode(self.names.get(self.entries[e as usize].name), &mut name);
            name
        };
        let entry = entry.unwrap_or_else(|| {
            let mut best = self.files[file as usize].first_entry;
            let mut e = self.entries[best as usize].next;
            while e != NONE {
                let (n, bn) = (self.holder_slice(e).len(), self.holder_slice(best).len());
                if n > bn || (n == bn && name_of(e) < name_of(best)) {
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
            name: String::from_utf8(name_of(entry)).expect("names are stored from str"),
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

/// Grows `v` so it has room for `extra` more items, by a sixteenth at a time rather than by
/// doubling: the record vectors are most of the index, and doubling would leave up to half of
/// them allocated and unused. (Large vectors are `mmap`ed, so the growth moves pages rather
/// than copying them.)
fn reserve_gently<T>(v: &mut Vec<T>, extra: usize) {
    if v.capacity() - v.len() < extra {
        v.reserve_exact(extra.max(v.len() / 16).max(16));
    }
}

/// How many postings per candidate a query word may have and still be checked by bitmap
/// rather than by reading the candidate's name (a posting costs a varint decode and a bit set,
/// a name check a parse of the name).
const BITMAP_POSTINGS_PER_CANDIDATE: usize = 8;

/// Below one posting per this many entries, a query word's postings are kept as a sorted list
/// rather than a bitmap over all entry ids.
const SPARSE_BITS: usize = 64;

/// The entries a query word matches: those with a word of their name starting with it, and
/// which of them have a word equal to it.
enum WordBits {
    /// `entry << 1 | whole`, sorted.
    Sparse(Vec<u32>),
    /// Bitmaps by entry id; `whole` is empty when no word equals the query word.
    Dense { any: Vec<u64>, whole: Vec<u64> },
}

impl WordBits {
    /// `None` if entry `e` does not match, else whether it matches a whole word.
    fn matches(&self, e: u32) -> Option<bool> {
        match self {
            WordBits::Sparse(list) => {
                let at = list.partition_point(|&x| x >> 1 < e);
                list.get(at).filter(|&&x| x >> 1 == e).map(|&x| x & 1 == 1)
            }
            WordBits::Dense { any, whole } => {
                let (i, bit) = (e as usize / 64, 1u64 << (e % 64));
                (any[i] & bit != 0).then(|| whole.get(i).is_some_and(|w| w & bit != 0))
            }
        }
    }
}

/// A search candidate, ordered best first (`Less` is better) so a max-heap's top is the worst
/// hit kept.
struct Ranked<'a> {
    whole: u32,
    holders: u32,
    /// Decoded.
    name: Vec<u8>,
    hash: &'a FileHash,
    size: u64,
}

impl Ord for Ranked<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .whole
            .cmp(&self.whole)
            .then(other.holders.cmp(&self.holders))
            .then_with(|| self.name.cmp(&other.name))
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

/// Every indexed name, back to back in one byte vector: a record is the name's length as a
/// one- or two-byte varint (names are at most [`MAX_NAME_BYTES`]), then its bytes. Entries
/// refer to a record by its `u32` offset. This costs one byte per name over its text, where a
/// `Box<str>` per name cost a 16-byte pointer plus malloc's per-chunk overhead.
///
/// A freed record becomes garbage; a later name of the same length reuses it (exact-length
/// free lists, so steady churn creates no new garbage), and [`Index::compact_names`] squeezes
/// the garbage out once it is a third of the arena.
#[derive(Default)]
struct Names {
    bytes: Vec<u8>,
    /// Bytes in freed records.
    garbage: usize,
    /// `free[len]`: offsets of freed records of names of `len` bytes.
    free: Vec<Vec<u32>>,
}

impl Names {
    fn header_len(name_len: usize) -> usize {
        if name_len < 0x80 {
            1
        } else {
            2
        }
    }

    /// The name length and where its bytes start, for the record at `at`.
    fn decode_header(bytes: &[u8], at: usize) -> (usize, usize) {
        let b0 = bytes[at];
        if b0 < 0x80 {
            (usize::from(b0), at + 1)
        } else {
            (
                usize::from(b0 & 0x7f) | usize::from(bytes[at + 1]) << 7,
                at + 2,
            )
        }
    }

    fn record_len_at(bytes: &[u8], at: usize) -> usize {
        let (len, start) = Self::decode_header(bytes, at);
        start - at + len
    }

    fn get(&self, at: u32) -> &[u8] {
        let (len, start) = Self::decode_header(&self.bytes, at as usize);
        &self.bytes[start..start + len]
    }

    fn write(&mut self, at: usize, name: &[u8]) {
        let n = name.len();
        let mut i = at;
        if n < 0x80 {
            self.bytes[i] = n as u8;
            i += 1;
        } else {
            self.bytes[i] = (n as u8 & 0x7f) | 0x80;
            self.bytes[i + 1] = (n >> 7) as u8;
            i += 2;
        }
        self.bytes[i..i + n].copy_from_slice(name);
    }

    fn push(&mut self, name: &[u8]) -> u32 {
        debug_assert!(name.len() <= MAX_NAME_BYTES + 1);
        let rec_len = Self::header_len(name.len()) + name.len();
        if let Some(at) = self.free.get_mut(name.len()).and_then(Vec::pop) {
            self.garbage -= rec_len;
            self.write(at as usize, name);
            return at;
        }
        let at = self.bytes.len();
        let at32 = u32::try_from(at).expect("name arena under 4 GiB");
        reserve_gently(&mut self.bytes, rec_len);
        self.bytes.resize(at + rec_len, 0);
        self.write(at, name);
        at32
    }

    fn free(&mut self, at: u32) {
        let n = self.get(at).len();
        self.garbage += Self::header_len(n) + n;
        if self.free.len() <= n {
            self.free.resize_with(n + 1, Vec::new);
        }
        self.free[n].push(at);
    }

    fn needs_compaction(&self) -> bool {
        self.garbage >= COMPACT_MIN_BYTES && self.garbage * 3 > self.bytes.len()
    }

    /// Rewrites the arena without garbage, in offset order (so in place). `live` lists
    /// `(offset << 32) | owner` for every live record; `moved(owner, offset)` is told each
    /// record's new offset.
    fn compact(&mut self, mut live: Vec<u64>, mut moved: impl FnMut(usize, u32)) {
        live.sort_unstable();
        let bytes = &mut self.bytes;
        let mut to = 0usize;
        for item in live {
            let (from, owner) = ((item >> 32) as usize, item as u32 as usize);
            let len = Self::record_len_at(bytes, from);
            bytes.copy_within(from..from + len, to);
            moved(owner, to as u32);
            to += len;
        }
        bytes.truncate(to);
        if bytes.capacity() > to + to / 4 {
            bytes.shrink_to(to + to / 8);
        }
        self.garbage = 0;
        self.free = Vec::new();
    }
}

/// Compresses names against a growing table of symbols: the words common in names. Most names
/// are a few common words plus a rare one (a number), so storing each common word (with the
/// space after it) as a one- or two-byte code roughly halves the name arena, the biggest part
/// of the index after the file records.
///
/// An encoded ASCII name is a byte string where a byte below `0x80` is itself, `0xC0 + k` is
/// symbol `k` (`k < 64`) and `0x80 + (j >> 8), j & 0xFF` is symbol `64 + j`. A name with any
/// other byte is stored as `0x00` then its bytes (no valid name contains NUL).
///
/// Symbols are only ever added, never changed or removed, so an encoded name stays valid for
/// the index's lifetime; a word becomes a symbol when a name containing it is registered while
/// the word is posted under at least [`NameCodec::MIN_POSTINGS`] entries (so unique words such
/// as catalogue numbers never fill the table), until [`NameCodec::MAX_SYMBOLS`]. The table
/// costs a few hundred kilobytes at most.
#[derive(Default)]
struct NameCodec {
    /// The symbols' bytes back to back: symbol `k` is `text[at[k]..at[k + 1]]`.
    text: Vec<u8>,
    /// Symbol offsets into `text`, one more than there are symbols (empty before the first).
    at: Vec<u32>,
    /// Symbol codes hashed by their bytes, compared against `text` (one small contiguous
    /// arena that stays in cache, where a boxed key per symbol cost a pointer chase per probe).
    codes: hashbrown::HashTable<u16>,
    hasher: hashbrown::DefaultHashBuilder,
}

/// Symbol `k` of a [`NameCodec`]'s `text` and `at`.
fn symbol_in<'a>(text: &'a [u8], at: &[u32], k: usize) -> &'a [u8] {
    &text[at[k] as usize..at[k + 1] as usize]
}

impl NameCodec {
    /// Symbols with a one-byte code.
    const SHORT: usize = 64;
    /// Most symbols: one-byte codes, then two-byte codes.
    const MAX_SYMBOLS: usize = Self::SHORT + (64 << 8);
    /// A word is made a symbol once this many entries contain it.
    const MIN_POSTINGS: usize = 3;
    /// Longest word made a symbol: common words are short, and the cap bounds the table
    /// (at most `MAX_SYMBOLS` of these, about half a megabyte) whatever peers register.
    const MAX_SYMBOL_WORD: usize = 32;
    /// Marks a name stored as is.
    const RAW: u8 = 0;

    fn symbol(&self, k: usize) -> &[u8] {
        symbol_in(&self.text, &self.at, k)
    }

    fn find(&self, sym: &[u8]) -> Option<usize> {
        let hash = self.hasher.hash_one(sym);
        self.codes
            .find(hash, |&k| self.symbol(usize::from(k)) == sym)
            .map(|&k| usize::from(k))
    }

    /// Replaces `out` with `name` encoded without symbols: itself if ASCII, else marked raw.
    fn plain(name: &str, out: &mut Vec<u8>) {
        out.clear();
        if !name.is_ascii() {
            out.push(Self::RAW);
        }
        out.extend_from_slice(name.as_bytes());
    }

    /// The name in `enc`, an encoding from [`NameCodec::plain`].
    fn plain_str(enc: &[u8]) -> &str {
        let bytes = enc.strip_prefix(&[Self::RAW]).unwrap_or(enc);
        debug_assert!(bytes.iter().all(|&b| b != Self::RAW));
        std::str::from_utf8(bytes).expect("a plain encoding holds the name's bytes")
    }

    /// Appends `name`'s encoding to `out` (after clearing it). `common(i)` says whether the
    /// `i`th word of the name (its `i`th run of ASCII letters and digits) may become a symbol.
    fn encode(&mut self, name: &str, out: &mut Vec<u8>, common: impl Fn(usize) -> bool) {
        out.clear();
        let bytes = name.as_bytes();
        if !name.is_ascii() {
            out.push(Self::RAW);
            out.extend_from_slice(bytes);
            return;
        }
        let mut i = 0;
        let mut word = 0;
        while i < bytes.len() {
            if !bytes[i].is_ascii_alphanumeric() {
                out.push(bytes[i]);
                i += 1;
                continue;
            }
            let run_end = bytes[i..]
                .iter()
                .position(|c| !c.is_ascii_alphanumeric())
                .map_or(bytes.len(), |n| i + n);
            // The symbol takes the space after the word with it, when there is one.
            let end = run_end + usize::from(bytes.get(run_end) == Some(&b' '));
            let sym = &bytes[i..end];
            let code = match self.find(sym) {
                Some(k) => Some(k),
                None if (2..=Self::MAX_SYMBOL_WORD).contains(&(run_end - i))
                    && self.at.len() <= Self::MAX_SYMBOLS
                    && common(word) =>
                {
                    Some(self.add(sym))
                }
                None => None,
            };
            match code {
                Some(k) if k < Self::SHORT => out.push(0xC0 + k as u8),
                Some(k) => {
                    let j = k - Self::SHORT;
                    out.push(0x80 + (j >> 8) as u8);
                    out.push(j as u8);
                }
                None => out.extend_from_slice(sym),
            }
            word += 1;
            i = end;
        }
    }

    fn add(&mut self, sym: &[u8]) -> usize {
        if self.at.is_empty() {
            self.at.push(0);
        }
        let k = self.at.len() - 1;
        self.text.extend_from_slice(sym);
        self.at.push(self.text.len() as u32);
        let NameCodec {
            text,
            at,
            codes,
            hasher,
        } = self;
        let hash = hasher.hash_one(sym);
        codes.insert_unique(hash, k as u16, |&j| {
            hasher.hash_one(symbol_in(text, at, usize::from(j)))
        });
        k
    }

    /// Symbol `k`'s bytes, for the code starting at `enc[*i]` (`>= 0x80`); advances `i`.
    #[inline]
    fn code_at(&self, enc: &[u8], i: &mut usize) -> &[u8] {
        let b = enc[*i];
        let k = if b >= 0xC0 {
            *i += 1;
            usize::from(b - 0xC0)
        } else {
            *i += 2;
            Self::SHORT + (usize::from(b - 0x80) << 8 | usize::from(enc[*i - 1]))
        };
        self.symbol(k)
    }

    /// Replaces `out` with the decoded name.
    fn decode(&self, enc: &[u8], out: &mut Vec<u8>) {
        out.clear();
        if enc.first() == Some(&Self::RAW) {
            out.extend_from_slice(&enc[1..]);
            return;
        }
        // Room for the usual ratio at once, rather than doubling from nothing.
        out.reserve(enc.len() * 3);
        let mut i = 0;
        while i < enc.len() {
            if enc[i] < 0x80 {
                out.push(enc[i]);
                i += 1;
            } else {
                out.extend_from_slice(self.code_at(enc, &mut i));
            }
        }
    }

    /// Orders the decoded `enc` against `plain`, decoding no further than the first
    /// difference (byte by byte: the pieces are short, a `memcmp` call per piece cost more).
    fn cmp(&self, enc: &[u8], plain: &[u8]) -> Ordering {
        if enc.first() == Some(&Self::RAW) {
            return enc[1..].cmp(plain);
        }
        let mut pos = 0;
        let mut i = 0;
        while i < enc.len() {
            let b = enc[i];
            if b < 0x80 {
                i += 1;
                match plain.get(pos) {
                    Some(&p) if p == b => pos += 1,
                    Some(&p) => return b.cmp(&p),
                    None => return Ordering::Greater,
                }
            } else {
                for &c in self.code_at(enc, &mut i) {
                    match plain.get(pos) {
                        Some(&p) if p == c => pos += 1,
                        Some(&p) => return c.cmp(&p),
                        None => return Ordering::Greater,
                    }
                }
            }
        }
        if pos < plain.len() {
            Ordering::Less
        } else {
            Ordering::Equal
        }
    }
}

/// The first four bytes of a word, zero-padded, as a big-endian `u32`: ordering words by it
/// agrees with their byte order (ties are broken by the full text).
fn pad4(text: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = text.len().min(4);
    b[..n].copy_from_slice(&text[..n]);
    u32::from_be_bytes(b)
}

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
}

/// Splits `text` into maximal runs of alphanumeric characters, lowercased char by char, into
/// `scratch` (replacing its contents).
fn lower_words(text: &str, scratch: &mut Scratch) {
    let Scratch { buf, spans } = scratch;
    buf.clear();
    buf.reserve(text.len());
    spans.clear();
    let mut start = None;
    let bytes = text.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_alphanumeric() {
            // A run of ASCII letters and digits, most of most names, copied in one go.
            let end = bytes[i..]
                .iter()
                .position(|c| !c.is_ascii_alphanumeric())
                .map_or(bytes.len(), |n| i + n);
            if start.is_none() {
                start = Some(buf.len());
            }
            let at = buf.len();
            buf.push_str(&text[i..end]);
            buf[at..].make_ascii_lowercase();
            i = end;
        } else if b.is_ascii() {
            if let Some(s) = start.take() {
                spans.push((s, buf.len()));
            }
            i += 1;
        } else {
            let c = text[i..].chars().next().expect("i is a char boundary");
            i += c.len_utf8();
            if c.is_alphanumeric() {
                if start.is_none() {
                    start = Some(buf.len());
                }
                buf.extend(c.to_lowercase());
            } else if let Some(s) = start.take() {
                spans.push((s, buf.len()));
            }
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

    #[cfg(test)]
    fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
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

    /// Like [`Self::search`], for items whose order is roughly predictable: `guess(items)`
    /// estimates where the target falls in a sorted slice (of the block heads, then of the
    /// block), and the search gallops outward from there.
    fn search_guided(
        &self,
        mut probe: impl FnMut(&T) -> Ordering,
        guess: impl Fn(&[T]) -> usize,
    ) -> Result<(usize, usize), (usize, usize)> {
        if self.blocks.is_empty() {
            return Err((0, 0));
        }
        let b = partition_near(&self.firsts, guess(&self.firsts), |f| {
            probe(f) != Ordering::Greater
        })
        .saturating_sub(1);
        let block = &self.blocks[b];
        let i = partition_near(block, guess(block), |x| probe(x) == Ordering::Less);
        match block.get(i) {
            Some(x) if probe(x) == Ordering::Equal => Ok((b, i)),
            _ => Err((b, i)),
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
            // The left half keeps the full block's allocation: give the unused half back
            // (a shrinking `realloc` stays in place), or every split block would carry
            // `BLOCK_ITEMS / 2` empty slots.
            self.blocks[b].shrink_to(BLOCK_ITEMS / 2 + BLOCK_ITEMS / 16);
            self.firsts.insert(b + 1, tail[0]);
            self.blocks.insert(b + 1, tail);
            if i > BLOCK_ITEMS / 2 {
                b += 1;
                i -= BLOCK_ITEMS / 2;
            }
        }
        let block = &mut self.blocks[b];
        if block.len() == block.capacity() {
            // Grow by an eighth rather than double: the hash index and the word order are
            // ~8 bytes per file each, and doubling (or halving) would leave a quarter (a
            // tenth) of them unused. A block is at most 2 KiB, so the extra reallocations
            // copy little.
            let more = (block.len() / 8).max(4).min(BLOCK_ITEMS - block.len());
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

    #[cfg(test)]
    fn iter(&self) -> impl Iterator<Item = T> + '_ {
        self.blocks.iter().flatten().copied()
    }

    /// The position of `item` among the `limit` items from position `(b, i)` on, if there.
    fn scan_for(
        &self,
        (mut b, mut i): (usize, usize),
        item: T,
        limit: usize,
    ) -> Option<(usize, usize)>
    where
        T: PartialEq,
    {
        let mut left = limit;
        while left > 0 {
            let block = self.blocks.get(b)?;
            for (j, x) in block.iter().enumerate().skip(i).take(left) {
                if *x == item {
                    return Some((b, j));
                }
            }
            left = left.saturating_sub(block.len().saturating_sub(i));
            (b, i) = (b + 1, 0);
        }
        None
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

/// The partition point of `items` for `is_before` (true for a prefix of the items, false for
/// the rest), found by galloping outward from `guess`: `O(log d)` probes for a guess `d` items
/// off, near each other in memory.
fn partition_near<T>(items: &[T], guess: usize, mut is_before: impl FnMut(&T) -> bool) -> usize {
    let n = items.len();
    let g = guess.min(n);
    if g < n && is_before(&items[g]) {
        // The point is after g: items[lo - 1] is before it.
        let (mut lo, mut step) = (g + 1, 1);
        loop {
            let hi = lo + step;
            if hi >= n || !is_before(&items[hi]) {
                return lo + items[lo..hi.min(n)].partition_point(&mut is_before);
            }
            lo = hi + 1;
            step *= 2;
        }
    }
    // The point is at g or before: items[hi] is not before it (or hi == n).
    let (mut hi, mut step) = (g, 1);
    loop {
        if hi < step {
            return items[..hi].partition_point(&mut is_before);
        }
        let lo = hi - step;
        if is_before(&items[lo]) {
            return lo + 1 + items[lo + 1..hi].partition_point(&mut is_before);
        }
        hi = lo;
        step *= 2;
    }
}

/// Where `p32` falls among `items` (hash index items, sorted, `prefix32 << 32 | id`),
/// assuming the prefixes between the first and last item are evenly spread.
fn interpolate(items: &[u64], p32: u32) -> usize {
    let (Some(&first), Some(&last)) = (items.first(), items.last()) else {
        return 0;
    };
    let (lo, hi) = ((first >> 32) as u32, (last >> 32) as u32);
    if p32 <= lo || hi <= lo {
        return 0;
    }
    if p32 >= hi {
        return items.len() - 1;
    }
    let span = u64::from(hi - lo);
    (u64::from(p32 - lo) * (items.len() as u64 - 1) / span) as usize
}

/// Used by the tests only: the hash index orders items through a probe.
#[cfg(test)]
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

/// A sorted set of `u32` (entry ids), compressed: sorted blocks, each holding its first and
/// last item and the LEB128 varint deltas of the items after the first. Dense sets (common
/// words; a peer's entries, created together) cost about one byte per item, sparse ones two or
/// three. Blocks split above [`PACKED_BLOCK_BYTES`] and merge with a neighbour below a
/// quarter of it, so an insert or remove decodes one small block; appending past the last
/// item (new ids) needs no decoding at all.
struct PackedSet {
    /// Non-empty, sorted, each block entirely before the next.
    blocks: Vec<PackedBlock>,
    len: usize,
}

struct PackedBlock {
    first: u32,
    last: u32,
    /// Varint deltas (each ≥ 1) from `first` to the next item, and so on up to `last`.
    deltas: Vec<u8>,
}

fn put_varint(out: &mut [u8; 10], at: usize, mut v: u32) -> usize {
    let mut i = at;
    while v >= 0x80 {
        out[i] = v as u8 | 0x80;
        v >>= 7;
        i += 1;
    }
    out[i] = v as u8;
    i + 1
}

fn get_varint(bytes: &[u8], pos: &mut usize) -> u32 {
    let mut v = 0u32;
    let mut shift = 0;
    loop {
        let b = bytes[*pos];
        *pos += 1;
        v |= u32::from(b & 0x7f) << shift;
        if b < 0x80 {
            return v;
        }
        shift += 7;
    }
}

/// Replaces `v[range]` by `with`, growing `v` by half at a time and never far past a full
/// block. Postings are a few bytes per file, so the slack costs about a byte per file, while
/// growing by less made appends reallocate every few items.
fn splice_bytes(v: &mut Vec<u8>, range: std::ops::Range<usize>, with: &[u8]) {
    reserve_block_bytes(v, with.len().saturating_sub(range.len()));
    v.splice(range, with.iter().copied());
}

/// Makes room for `grow` more bytes in a block's deltas, as [`splice_bytes`] describes.
fn reserve_block_bytes(v: &mut Vec<u8>, grow: usize) {
    if v.capacity() - v.len() < grow {
        let step = (v.len() / 2)
            .max(8)
            .min((PACKED_BLOCK_BYTES + 10).saturating_sub(v.len()));
        v.reserve_exact(grow.max(step));
    }
}

impl PackedBlock {
    fn single(item: u32) -> Self {
        PackedBlock {
            first: item,
            last: item,
            deltas: Vec::new(),
        }
    }

    /// Appends `item` (> `last`).
    fn push(&mut self, item: u32) {
        let mut buf = [0u8; 10];
        let n = put_varint(&mut buf, 0, item - self.last);
        reserve_block_bytes(&mut self.deltas, n);
        self.deltas.extend_from_slice(&buf[..n]);
        self.last = item;
    }

    fn decode_into(&self, out: &mut Vec<u32>) {
        out.push(self.first);
        let (mut pos, mut cur) = (0, self.first);
        while pos < self.deltas.len() {
            cur += get_varint(&self.deltas, &mut pos);
            out.push(cur);
        }
    }

    /// A block of `items` (sorted, non-empty), reusing `deltas`' allocation.
    fn encode(items: &[u32], mut deltas: Vec<u8>) -> Self {
        deltas.clear();
        let mut buf = [0u8; 10];
        for pair in items.windows(2) {
            let n = put_varint(&mut buf, 0, pair[1] - pair[0]);
            deltas.extend_from_slice(&buf[..n]);
        }
        if deltas.capacity() > 2 * deltas.len() + 16 {
            deltas.shrink_to(deltas.len() + deltas.len() / 4);
        }
        PackedBlock {
            first: items[0],
            last: items[items.len() - 1],
            deltas,
        }
    }
}

impl PackedSet {
    fn new() -> Self {
        PackedSet {
            blocks: Vec::new(),
            len: 0,
        }
    }

    fn len(&self) -> usize {
        self.len
    }

    #[cfg(test)]
    fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The block that holds or would hold `item`: the last whose first item is ≤ it (or 0).
    fn block_of(&self, item: u32) -> usize {
        self.blocks
            .partition_point(|b| b.first <= item)
            .saturating_sub(1)
    }

    /// Inserts `item`; false if it was there.
    fn insert(&mut self, item: u32) -> bool {
        if self.blocks.is_empty() {
            // Most words have a single block: no room for more until needed.
            self.blocks.reserve_exact(1);
            self.blocks.push(PackedBlock::single(item));
            self.len = 1;
            return true;
        }
        // New ids are the largest yet, so most inserts append: no search for those.
        let b = match self.blocks.last() {
            Some(last) if item > last.last => self.blocks.len() - 1,
            _ => self.block_of(item),
        };
        let last_block = b + 1 == self.blocks.len();
        let blk = &mut self.blocks[b];
        let mut buf = [0u8; 10];
        if item < blk.first {
            // Only the first block: the new item becomes its first.
            let n = put_varint(&mut buf, 0, blk.first - item);
            splice_bytes(&mut blk.deltas, 0..0, &buf[..n]);
            blk.first = item;
        } else if item == blk.first || item == blk.last {
            return false;
        } else if item > blk.last {
            if last_block && blk.deltas.len() >= PACKED_BLOCK_BYTES {
                // Appending to a full last block starts a new one, so append-mostly sets end
                // up with full blocks rather than half ones.
                self.grow_blocks();
                self.blocks.push(PackedBlock::single(item));
                self.len += 1;
                return true;
            }
            blk.push(item);
        } else {
            let (mut pos, mut prev) = (0, blk.first);
            loop {
                let start = pos;
                let cur = prev + get_varint(&blk.deltas, &mut pos);
                match cur.cmp(&item) {
                    Ordering::Equal => return false,
                    Ordering::Greater => {
                        let n = put_varint(&mut buf, 0, item - prev);
                        let n = put_varint(&mut buf, n, cur - item);
                        splice_bytes(&mut blk.deltas, start..pos, &buf[..n]);
                        break;
                    }
                    Ordering::Less => prev = cur,
                }
            }
        }
        self.len += 1;
        if self.blocks[b].deltas.len() > PACKED_BLOCK_BYTES {
            self.split(b);
        }
        true
    }

    /// Splits block `b` in two halves of about equal encoded size.
    fn split(&mut self, b: usize) {
        let blk = &mut self.blocks[b];
        let half = blk.deltas.len() / 2;
        let (mut pos, mut prev) = (0, blk.first);
        let (start, cur) = loop {
            let start = pos;
            let cur = prev + get_varint(&blk.deltas, &mut pos);
            if pos > half {
                break (start, cur);
            }
            prev = cur;
        };
        let right = PackedBlock {
            first: cur,
            last: blk.last,
            deltas: blk.deltas[pos..].to_vec(),
        };
        blk.deltas.truncate(start);
        blk.deltas.shrink_to(start + start / 4);
        blk.last = prev;
        self.grow_blocks();
        self.blocks.insert(b + 1, right);
    }

    /// Makes room for one more block, by a quarter at a time (a `Vec` would start at four
    /// blocks and double, most of it unused for the many one- and two-block sets).
    fn grow_blocks(&mut self) {
        if self.blocks.len() == self.blocks.capacity() {
            self.blocks.reserve_exact((self.blocks.len() / 4).max(1));
        }
    }

    /// Removes `item`; false if it was not there.
    fn remove(&mut self, item: u32) -> bool {
        if self.blocks.is_empty() {
            return false;
        }
        let b = self.block_of(item);
        let blk = &mut self.blocks[b];
        if item < blk.first || item > blk.last {
            return false;
        }
        if item == blk.first {
            if blk.deltas.is_empty() {
                self.blocks.remove(b);
                self.len -= 1;
                if self.blocks.is_empty() {
                    *self = Self::new();
                }
                return true;
            }
            let mut pos = 0;
            blk.first += get_varint(&blk.deltas, &mut pos);
            blk.deltas.drain(..pos);
        } else {
            let (mut pos, mut prev) = (0, blk.first);
            loop {
                let start = pos;
                let cur = prev + get_varint(&blk.deltas, &mut pos);
                match cur.cmp(&item) {
                    Ordering::Less => prev = cur,
                    Ordering::Greater => return false,
                    Ordering::Equal if pos == blk.deltas.len() => {
                        blk.deltas.truncate(start);
                        blk.last = prev;
                        break;
                    }
                    Ordering::Equal => {
                        let mut end = pos;
                        let next = cur + get_varint(&blk.deltas, &mut end);
                        let mut buf = [0u8; 10];
                        let n = put_varint(&mut buf, 0, next - prev);
                        blk.deltas.splice(start..end, buf[..n].iter().copied());
                        break;
                    }
                }
            }
        }
        self.len -= 1;
        self.after_shrink(b);
        true
    }

    /// Merges block `b` into a neighbour if both are small, and trims its spare capacity.
    fn after_shrink(&mut self, b: usize) {
        if self.blocks[b].deltas.len() < PACKED_BLOCK_BYTES / 4 {
            let pair = if b + 1 < self.blocks.len() {
                Some(b)
            } else {
                b.checked_sub(1)
            };
            if let Some(l) = pair {
                let (left, right) = (&self.blocks[l], &self.blocks[l + 1]);
                if left.deltas.len() + right.deltas.len() + 5 <= PACKED_BLOCK_BYTES / 2 {
                    let right = self.blocks.remove(l + 1);
                    let left = &mut self.blocks[l];
                    let mut buf = [0u8; 10];
                    let n = put_varint(&mut buf, 0, right.first - left.last);
                    left.deltas.extend_from_slice(&buf[..n]);
                    left.deltas.extend_from_slice(&right.deltas);
                    left.last = right.last;
                }
            }
        }
        let last = self.blocks.len() - 1;
        let deltas = &mut self.blocks[b.min(last)].deltas;
        if deltas.capacity() >= 32 && deltas.len() * 4 <= deltas.capacity() {
            deltas.shrink_to(deltas.len() * 2);
        }
    }

    /// Removes `items` (sorted ascending, distinct; absent ones are ignored), decoding and
    /// re-encoding each affected block once: a peer's removal takes many postings out of the
    /// same common-word sets.
    fn remove_sorted(&mut self, items: &[u32], decoded: &mut Vec<u32>) {
        if items.len() == 1 {
            self.remove(items[0]);
            return;
        }
        let mut i = 0;
        let mut emptied = false;
        let mut touched_small = false;
        while i < items.len() && !self.blocks.is_empty() {
            let b = self.block_of(items[i]);
            let blk = &mut self.blocks[b];
            if blk.last == NONE {
                // Emptied by this call: the item is absent.
                i += 1;
                continue;
            }
            // Items up to this block's last belong here (or nowhere).
            let end = i + items[i..].partition_point(|&x| x <= blk.last);
            if end == i {
                i += 1;
                continue;
            }
            decoded.clear();
            blk.decode_into(decoded);
            let before = decoded.len();
            let gone = &items[i..end];
            let mut g = 0;
            decoded.retain(|&x| {
                while g < gone.len() && gone[g] < x {
                    g += 1;
                }
                !(g < gone.len() && gone[g] == x)
            });
            self.len -= before - decoded.len();
            if decoded.is_empty() {
                // Marked empty by `last == NONE` (no item is `NONE`); `first` stays, so that
                // the blocks stay ordered by it for `block_of`.
                blk.deltas = Vec::new();
                blk.last = NONE;
                emptied = true;
            } else if decoded.len() < before {
                let deltas = std::mem::take(&mut blk.deltas);
                *blk = PackedBlock::encode(decoded, deltas);
                touched_small |= blk.deltas.len() < PACKED_BLOCK_BYTES / 4;
            }
            i = end;
        }
        if emptied {
            self.blocks.retain(|b| b.last != NONE);
            if self.blocks.is_empty() {
                *self = Self::new();
                return;
            }
        }
        if touched_small || emptied {
            self.merge_small();
        }
    }

    /// Merges each run of adjacent small blocks.
    fn merge_small(&mut self) {
        let mut out: Vec<PackedBlock> = Vec::with_capacity(self.blocks.len());
        for blk in self.blocks.drain(..) {
            if let Some(left) = out.last_mut() {
                if left.deltas.len() + blk.deltas.len() + 5 <= PACKED_BLOCK_BYTES / 2 {
                    let mut buf = [0u8; 10];
                    let n = put_varint(&mut buf, 0, blk.first - left.last);
                    left.deltas.extend_from_slice(&buf[..n]);
                    left.deltas.extend_from_slice(&blk.deltas);
                    left.last = blk.last;
                    continue;
                }
            }
            out.push(blk);
        }
        self.blocks = out;
    }

    fn iter(&self) -> PackedIter<'_> {
        PackedIter {
            blocks: self.blocks.iter(),
            deltas: &[],
            pos: 0,
            cur: 0,
        }
    }
}

/// A word's postings, ascending: inline or packed.
enum PostingIter<'a> {
    Inline(std::slice::Iter<'a, u32>),
    Packed(PackedIter<'a>),
}

impl Iterator for PostingIter<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        match self {
            PostingIter::Inline(it) => it.next().copied(),
            PostingIter::Packed(it) => it.next(),
        }
    }
}

/// The items of a [`PackedSet`], ascending.
struct PackedIter<'a> {
    blocks: std::slice::Iter<'a, PackedBlock>,
    deltas: &'a [u8],
    pos: usize,
    cur: u32,
}

impl Iterator for PackedIter<'_> {
    type Item = u32;

    fn next(&mut self) -> Option<u32> {
        if self.pos < self.deltas.len() {
            self.cur += get_varint(self.deltas, &mut self.pos);
            return Some(self.cur);
        }
        let b = self.blocks.next()?;
        self.deltas = &b.deltas;
        self.pos = 0;
        self.cur = b.first;
        Some(b.first)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_codec_round_trips_and_orders_like_the_plain_names() {
        let mut codec = NameCodec::default();
        // 100 words made symbols: one- and two-byte codes.
        let names: Vec<String> = (0..300)
            .map(|i| match i % 5 {
                0 => format!("w{} w{} x{i}.flac", i % 100, (i * 7) % 100),
                1 => format!("W{}-w{}  w{}", i % 100, i % 3, i % 100),
                2 => format!("Ünïcode w{} {i}", i % 100),
                3 => format!("w{} ", i % 100),
                _ => format!("{i} w{}w w{}", i % 100, i % 50),
            })
            .collect();
        let mut enc = Vec::new();
        let mut stored = Vec::new();
        for n in &names {
            codec.encode(n, &mut enc, |w| w % 2 == 0);
            stored.push(enc.clone());
        }
        assert!(codec.at.len() > NameCodec::SHORT + 2, "two-byte codes used");
        let mut out = Vec::new();
        for (n, e) in names.iter().zip(&stored) {
            codec.decode(e, &mut out);
            assert_eq!(out, n.as_bytes());
            for m in names.iter().take(40) {
                assert_eq!(codec.cmp(e, m.as_bytes()), n.as_bytes().cmp(m.as_bytes()));
            }
            assert_eq!(
                codec.cmp(e, &n.as_bytes()[..n.len() - 1]),
                Ordering::Greater
            );
        }
        // Common words of ASCII names got shorter.
        let plain: usize = names.iter().map(String::len).sum();
        let packed: usize = stored.iter().map(Vec::len).sum();
        assert!(packed < plain * 4 / 5, "{packed} vs {plain}");
    }
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

    /// A real (BLAKE3) hash for each `n`, unlike `h`'s one repeated byte.
    fn spread_hash(n: u32) -> FileHash {
        FileHash::of(&n.to_le_bytes())
    }

    fn outcome(added: u32, rejected: u32, total: u32) -> RegisterOutcome {
        RegisterOutcome {
            added,
            rejected,
            total,
        }
    }

    #[test]
    fn staged_files_answer_like_indexed_ones() {
        // More new files than a seen hash is checked against one by one, then repeats of the
        // batch's own hashes: same name (a no-op), another name (a new entry of a staged
        // file), another size (rejected).
        let mut ix = Index::new();
        let p = ix.add_peer(addr(1));
        let mut batch: Vec<FileEntry> = (0..100)
            .map(|i| {
                fe(
                    spread_hash(i),
                    10 + u64::from(i),
                    &format!("track {i} of many.ogg"),
                )
            })
            .collect();
        batch.push(fe(spread_hash(3), 13, "track 3 of many.ogg"));
        batch.push(fe(spread_hash(4), 14, "another name for four.ogg"));
        batch.push(fe(spread_hash(5), 99, "a lying size.ogg"));
        assert_eq!(ix.register(p, &batch), outcome(101, 1, 100));
        // A few new files, staged; the next batch repeats one before anything is posted.
        let q = ix.add_peer(addr(2));
        let small: Vec<FileEntry> = (200..205)
            .map(|i| fe(spread_hash(i), 1, &format!("small {i}")))
            .collect();
        assert_eq!(ix.register(q, &small), outcome(5, 0, 5));
        assert!(ix.has_pending());
        assert_eq!((ix.file_count(), ix.entry_count()), (105, 106));
        assert_eq!(ix.holdings_of(q), 5);
        let again = [
            fe(spread_hash(202), 1, "small 202"),
            fe(spread_hash(203), 1, "small 203 renamed"),
            fe(spread_hash(204), 2, "small 204"),
            fe(spread_hash(7), 17, "track 7 of many.ogg"),
        ];
        assert_eq!(ix.register(q, &again), outcome(2, 1, 6));
        assert_eq!((ix.file_count(), ix.entry_count()), (105, 107));
        ix.post_pending();
        assert!(!ix.has_pending());
        assert_eq!((ix.file_count(), ix.entry_count()), (105, 107));
        assert_eq!((ix.holdings_of(p), ix.holdings_of(q)), (100, 6));
        let four = ix.lookup(&LookupKey::Hash(spread_hash(4))).unwrap();
        assert_eq!(four[0].holders, [addr(1)]);
        let seven = ix.lookup(&LookupKey::Hash(spread_hash(7))).unwrap();
        assert_eq!(seven[0].holders, [addr(1), addr(2)]);
        assert_eq!(ix.search("renamed", 10).0.len(), 1);
        assert_eq!(ix.search("track many", 200).0.len(), 100);
        assert_eq!(ix.remove_peer(q), Some(7));
        assert_eq!(ix.remove_peer(p), Some(101));
        assert_eq!(
            (ix.file_count(), ix.entry_count(), ix.word_count()),
            (0, 0, 0)
        );
    }

    #[test]
    fn hash_filter_grows_and_shrinks_without_losing_a_file() {
        let mut ix = Index::new();
        let peers: Vec<PeerId> = (0..4).map(|i| ix.add_peer(addr(i))).collect();
        for (k, &p) in peers.iter().enumerate() {
            for chunk in 0..25u32 {
                let base = (k as u32 * 25 + chunk) * 100;
                let files: Vec<FileEntry> = (base..base + 100)
                    .map(|i| fe(spread_hash(i), 1, &format!("f{i}")))
                    .collect();
                assert_eq!(ix.register(p, &files).added, 100);
                ix.post_pending();
            }
        }
        let bits = ix.seen.words.len() * 64;
        assert!(
            bits >= HashFilter::MIN_BITS_PER_FILE * 10_000,
            "{bits} bits"
        );
        assert!(
            bits <= 2 * HashFilter::BITS_PER_FILE * 10_000,
            "{bits} bits"
        );
        for i in 0..10_000 {
            assert!(ix.seen.may_contain(&spread_hash(i)), "file {i} missing");
        }
        let maybes = (10_000..20_000)
            .filter(|&i| ix.seen.may_contain(&spread_hash(i)))
            .count();
        assert!(maybes < 1_500, "{maybes} false maybes in 10,000");
        // Three of four peers leave: the filter shrinks, and still has every file left.
        for &p in &peers[1..] {
            ix.remove_peer(p);
        }
        ix.post_pending();
        assert_eq!(ix.file_count(), 2_500);
        assert!(ix.seen.words.len() * 64 <= 2 * HashFilter::BITS_PER_FILE * 2_500);
        for i in 0..2_500 {
            assert!(ix.seen.may_contain(&spread_hash(i)), "file {i} missing");
        }
        ix.remove_peer(peers[0]);
        ix.post_pending();
        assert_eq!(ix.seen.words.len(), 64);
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
    fn other_query_words_are_checked_by_list_bitmap_or_name_alike() {
        let mut ix = Index::new();
        let p = ix.add_peer(addr(1));
        // 200 "common" names; 100 "half"; 21 "mid"; 2 "duo"; 1 "rare". "rare common" checks
        // "common" by name (too many postings per candidate), "rare duo" checks "duo" in a
        // sorted list (few postings), "mid half" checks "half" in a bitmap.
        let files: Vec<FileEntry> = (0..200u64)
            .map(|i| {
                let mut name = format!("common {i}");
                if i % 2 == 0 {
                    name.push_str(" half");
                }
                if i % 10 == 0 || i == 7 {
                    name.push_str(" mid");
                }
                if i == 7 || i == 9 {
                    name.push_str(" duo");
                }
                if i == 7 {
                    name.push_str(" rare");
                }
                fe(FileHash::of(&i.to_le_bytes()), i + 1, &name)
            })
            .collect();
        ix.register(p, &files);
        let mut names = |q: &str| -> Vec<String> {
            let mut v: Vec<String> = ix.search(q, 500).0.into_iter().map(|h| h.name).collect();
            v.sort();
            v
        };
        assert_eq!(names("rare common"), ["common 7 mid duo rare"]);
        assert_eq!(names("rare comm"), ["common 7 mid duo rare"]);
        assert_eq!(names("rare duo"), ["common 7 mid duo rare"]);
        assert_eq!(names("rare du"), ["common 7 mid duo rare"]);
        assert_eq!(names("duo mid"), ["common 7 mid duo rare"]);
        assert_eq!(names("mid half").len(), 20);
        assert_eq!(names("mid hal").len(), 20);
        assert!(names("rare nothing").is_empty());
        assert!(names("rare half").is_empty());
        // Whole words rank first: "common 1" has both words whole, "common 10 half mid" one.
        let hits = ix.search("1 common", 3).0;
        assert_eq!(hits[0].name, "common 1");
        let hits = ix.search("7 mid", 3).0;
        assert_eq!(hits[0].name, "common 7 mid duo rare");
    }

    #[test]
    fn a_file_of_many_names_counts_its_distinct_holders() {
        let mut ix = Index::new();
        let (a, b) = (ix.add_peer(addr(1)), ix.add_peer(addr(2)));
        let names: Vec<FileEntry> = (0..200)
            .map(|i| fe(h(9), 9, &format!("multi {i}")))
            .collect();
        ix.register(a, &names);
        ix.register(b, &names[..1]);
        let hits = ix.search("multi", 300).0;
        assert_eq!(hits.len(), 200);
        assert!(hits.iter().all(|hit| hit.holders == 2));
        ix.remove_peer(b);
        assert!(ix.search("multi", 300).0.iter().all(|hit| hit.holders == 1));
        let c = ix.add_peer(addr(3));
        ix.register(c, &names[5..6]);
        // Holders are the file's: every name of it counts both.
        assert!(ix.search("multi", 300).0.iter().all(|hit| hit.holders == 2));
        ix.unregister(a, &[h(9)]);
        let hits = ix.search("multi", 300).0;
        assert_eq!((hits.len(), hits[0].holders), (1, 1));
        assert!(ix.multi_holders.is_empty());
    }

    #[test]
    fn a_word_repeated_in_a_name_is_posted_once() {
        let mut ix = Index::new();
        let p = ix.add_peer(addr(1));
        // Inline postings (one entry), then a spilled set (three entries with the word).
        ix.register(p, &[fe(h(1), 1, "La la LAND la")]);
        assert_eq!(ix.search("la", 10).0.len(), 1);
        ix.register(p, &[fe(h(2), 2, "la-la"), fe(h(3), 3, "la_la_la")]);
        assert_eq!(ix.search("la", 10).0.len(), 3);
        assert_eq!(ix.search("la land", 10).0.len(), 1);
        assert_eq!(ix.posting_count(ix.find_word(b"la").unwrap()), 3);
        ix.unregister(p, &[h(1), h(2)]);
        assert_eq!(ix.search("la", 10).0.len(), 1);
        assert!(ix.find_word(b"land").is_none());
        assert_eq!(ix.remove_peer(p), Some(1));
        assert_eq!((ix.word_count(), ix.entry_count()), (0, 0));
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
        let mut p = |s: &str| ix.lookup(&LookupKey::HashPrefix(s.into()));
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

    #[test]
    fn packed_set_agrees_with_btree_set() {
        let mut set = PackedSet::new();
        let mut model = BTreeSet::new();
        let mut decoded = Vec::new();
        let mut x = 777u32;
        for round in 0..60_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            // Mostly dense ids, some far apart (multi-byte deltas), some appends.
            let v = match x % 7 {
                0 => (x >> 4) % 5_000_000,
                1 => 3000 + round / 4,
                _ => (x >> 8) % 3000,
            };
            match round % 5 {
                3 => assert_eq!(set.remove(v), model.remove(&v)),
                4 if round % 50 == 4 => {
                    let gone: Vec<u32> = model
                        .iter()
                        .copied()
                        .filter(|y| y % 3 == x % 3)
                        .take(400)
                        .collect();
                    let mut with_absent = gone.clone();
                    with_absent.push(u32::MAX - 5);
                    set.remove_sorted(&with_absent, &mut decoded);
                    for y in gone {
                        model.remove(&y);
                    }
                }
                _ => assert_eq!(set.insert(v), model.insert(v)),
            }
            assert_eq!(set.len(), model.len());
        }
        assert_eq!(
            set.iter().collect::<Vec<_>>(),
            model.iter().copied().collect::<Vec<_>>()
        );
        for b in &set.blocks {
            assert!(b.first <= b.last && b.deltas.len() <= PACKED_BLOCK_BYTES);
        }
        let all: Vec<u32> = model.iter().copied().collect();
        set.remove_sorted(&all[..all.len() / 2], &mut decoded);
        for v in &all[all.len() / 2..] {
            assert!(set.remove(*v));
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
            self.register_at_most(p, files, u32::MAX)
        }

        fn register_at_most(&mut self, p: u32, files: &[FileEntry], room: u32) -> RegisterOutcome {
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
                let holding = (f.hash, f.name.clone());
                if self.peers[&p].1.contains(&holding) {
                    continue;
                }
                if out.added >= room {
                    out.rejected += 1;
                    continue;
                }
                self.sizes.insert(f.hash, f.size);
                self.peers.get_mut(&p).unwrap().1.insert(holding);
                out.added += 1;
            }
            out.total = self.total(p);
            out
        }

        fn holdings(&self) -> usize {
            self.peers.values().map(|(_, held)| held.len()).sum()
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
        /// Peer, files, and the room for new holdings (`u32::MAX` mostly).
        Register(usize, Vec<(usize, u64, String)>, u32),
        Unregister(usize, Vec<usize>),
        RemovePeer(usize),
        Search(String, usize),
        Lookup(LookupKey),
    }

    fn op_strategy() -> impl Strategy<Value = Op> {
        prop_oneof![
            2 => any::<u16>().prop_map(Op::AddPeer),
            5 => (
                any::<usize>(),
                prop::collection::vec((0..6usize, 1..3u64, name_strategy()), 0..6),
                prop_oneof![3 => Just(u32::MAX), 1 => 0..4u32],
            )
                .prop_map(|(p, f, room)| Op::Register(p, f, room)),
            2 => (any::<usize>(), prop::collection::vec(0..7usize, 0..4)).prop_map(|(p, h)| Op::Unregister(p, h)),
            1 => any::<usize>().prop_map(Op::RemovePeer),
            4 => (query_strategy(), 0..5usize).prop_map(|(q, l)| Op::Search(q, l)),
            3 => key_strategy().prop_map(Op::Lookup),
        ]
    }

    /// The index's counts and every live peer's holdings and address, against the model.
    fn counts_agree(ix: &Index, model: &Model, live: &[PeerId]) -> Result<(), TestCaseError> {
        prop_assert_eq!(ix.peer_count(), model.peers.len());
        let entries = model.entries();
        prop_assert_eq!(ix.entry_count(), entries.len());
        let files: BTreeSet<_> = entries.iter().map(|(h, _)| h).collect();
        prop_assert_eq!(ix.file_count(), files.len());
        prop_assert_eq!(ix.holding_count(), model.holdings());
        for p in live {
            prop_assert_eq!(ix.holdings_of(*p), model.total(p.0));
            prop_assert_eq!(ix.peer_addr(*p), Some(model.peers[&p.0].0));
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1000))]
        #[test]
        fn agrees_with_naive_model(
            ops in prop::collection::vec(op_strategy(), 1..60),
            saturated in any::<bool>(),
        ) {
            let mut ix = Index::new();
            // A filter that always says "maybe" sends every file through the tables at once.
            ix.seen.saturated = saturated;
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
                    Op::Register(p, files, room) if !live.is_empty() => {
                        let p = live[p % live.len()];
                        let files: Vec<FileEntry> =
                            files.into_iter().map(|(h, s, n)| fe(test_hash(h), s, &n)).collect();
                        prop_assert_eq!(
                            ix.register_at_most(p, &files, room),
                            model.register_at_most(p.0, &files, room)
                        );
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
                counts_agree(&ix, &model, &live)?;
            }
            for p in live {
                ix.remove_peer(p);
            }
            prop_assert_eq!((ix.file_count(), ix.entry_count(), ix.word_count()), (0, 0, 0));
        }
    }

    /// Hash `i` of [`big_batches_agree_with_naive_model`]: real hashes, but from 400 on each
    /// shares its first 4 bytes (what the filter reads) with hash `i - 400`, so that it is a
    /// "maybe" once that one is in (and ties with it in the hash index's items).
    fn wide_hash(i: usize) -> FileHash {
        let mut h = spread_hash(i as u32);
        if i >= 400 {
            h.0[..4].copy_from_slice(&spread_hash(i as u32 - 400).0[..4]);
        }
        h
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]
        /// Batches bigger than [`STAGED_SCAN`], over hundreds of hashes (some colliding in the
        /// filter), with deletions enough to rebuild the filter, and the deferred work left
        /// pending across calls or finished at random points.
        #[test]
        fn big_batches_agree_with_naive_model(
            steps in prop::collection::vec(
                (
                    0..3usize,
                    prop::collection::vec((0..600usize, 1..3u64, 0..3usize), 0..150),
                    0..10usize,
                ),
                1..25,
            ),
        ) {
            let mut ix = Index::new();
            let mut model = Model::default();
            let mut peers: Vec<PeerId> = Vec::new();
            for port in 0..3 {
                let p = ix.add_peer(addr(port));
                model.peers.insert(p.0, (addr(port), BTreeSet::new()));
                peers.push(p);
            }
            for (who, batch, what) in steps {
                let files: Vec<FileEntry> = batch
                    .iter()
                    .map(|&(i, size, n)| fe(wide_hash(i), size, &format!("name {n} of {}", i % 7)))
                    .collect();
                let hashes: Vec<FileHash> = files.iter().map(|f| f.hash).collect();
                match what {
                    0..=5 => {
                        let p = peers[who];
                        prop_assert_eq!(ix.register(p, &files), model.register(p.0, &files));
                    }
                    6 => {
                        let p = peers[who];
                        prop_assert_eq!(ix.unregister(p, &hashes), model.unregister(p.0, &hashes));
                    }
                    7 => {
                        let p = peers[who];
                        let held = model.peers.remove(&p.0).unwrap().1.len() as u32;
                        model.refresh_sizes();
                        prop_assert_eq!(ix.remove_peer(p), Some(held));
                        let port = 10 + who as u16;
                        let q = ix.add_peer(addr(port));
                        model.peers.insert(q.0, (addr(port), BTreeSet::new()));
                        peers[who] = q;
                    }
                    8 => ix.post_pending(),
                    _ => {
                        for h in hashes.iter().take(20) {
                            let key = LookupKey::Hash(*h);
                            prop_assert_eq!(ix.lookup(&key), model.lookup(&key));
                        }
                    }
                }
                counts_agree(&ix, &model, &peers)?;
            }
            ix.post_pending();
            for (h, _) in model.entries() {
                prop_assert!(ix.seen.may_contain(&h), "an indexed hash missing from the filter");
            }
            for p in peers {
                ix.remove_peer(p);
            }
            prop_assert_eq!((ix.file_count(), ix.entry_count(), ix.word_count()), (0, 0, 0));
        }
    }

    /// Checks the word index against the live entries' names: every word posted under exactly
    /// the entries whose name contains it, inline exactly when it has at most two, the order
    /// and the exact lookups agreeing. Returns (inline words, spilled words).
    fn check_words(ix: &mut Index) -> (usize, usize) {
        ix.post_pending();
        let mut expect: BTreeMap<String, Vec<u32>> = BTreeMap::new();
        for (e, rec) in ix.entries.iter().enumerate() {
            if rec.file == NONE {
                continue;
            }
            let mut name = Vec::new();
            ix.codec.decode(ix.names.get(rec.name), &mut name);
            let mut ws = model_words(std::str::from_utf8(&name).unwrap());
            ws.sort();
            ws.dedup();
            if ws.is_empty() {
                ws.push(String::new());
            }
            for w in ws {
                expect.entry(w).or_default().push(e as u32);
            }
        }
        assert_eq!(ix.word_count(), expect.len());
        let order: Vec<u32> = ix.word_order.iter().map(|x| x as u32).collect();
        let texts: Vec<&[u8]> = order.iter().map(|&w| ix.word_bytes(w)).collect();
        let want: Vec<&[u8]> = expect.keys().map(|k| k.as_bytes()).collect();
        assert_eq!(texts, want, "word order");
        let (mut inline, mut spilled) = (0, 0);
        for item in ix.word_order.iter() {
            let w = item as u32;
            let text = ix.word_bytes(w);
            assert_eq!((item >> 32) as u32, pad4(text));
            assert_eq!(ix.find_word(text), Some(w));
            let posted = &expect[std::str::from_utf8(text).unwrap()];
            assert_eq!(ix.posting_iter(w).collect::<Vec<_>>(), *posted);
            assert_eq!(ix.posting_count(w), posted.len());
            if posted.len() <= 2 {
                assert_ne!(ix.words[w as usize].postings[0], SPILLED);
                inline += 1;
            } else {
                assert_eq!(ix.words[w as usize].postings[0], SPILLED);
                spilled += 1;
            }
        }
        assert_eq!(ix.postings.len(), spilled);
        assert_eq!(
            ix.words.iter().filter(|r| r.text != NONE).count(),
            ix.word_count()
        );
        (inline, spilled)
    }

    #[test]
    fn rare_words_stay_inline_and_common_ones_spill_and_come_back() {
        let mut ix = Index::new();
        let p = ix.add_peer(addr(1));
        let files: Vec<FileEntry> = (0..5u8)
            .map(|i| fe(h(i), 1, &format!("Alpha {i}x{i}")))
            .collect();
        let alpha = |ix: &mut Index| {
            ix.post_pending();
            ix.find_word(b"alpha")
                .map(|w| ix.words[w as usize].postings)
        };
        assert_eq!(alpha(&mut ix), None);
        ix.register(p, &files[..1]);
        assert_eq!(alpha(&mut ix), Some([0, NONE]));
        ix.register(p, &files[1..2]);
        assert_eq!(alpha(&mut ix), Some([0, 1]));
        assert_eq!(ix.postings.len(), 0);
        ix.register(p, &files[2..]);
        ix.post_pending();
        assert_eq!(alpha(&mut ix).unwrap()[0], SPILLED);
        assert_eq!(ix.postings.len(), 1);
        assert_eq!(check_words(&mut ix), (5, 1));
        assert_eq!(ix.search("alpha", 10).0.len(), 5);
        assert_eq!(ix.search("3x3", 10).0[0].name, "Alpha 3x3");
        // Back to two (the first and the last): inline again, ascending.
        ix.unregister(p, &[h(1), h(2), h(3)]);
        assert_eq!(alpha(&mut ix), Some([0, 4]));
        assert_eq!(ix.postings.len(), 0);
        assert_eq!(check_words(&mut ix), (3, 0));
        // Up again through a reused entry id between the inline ones, then down to one.
        ix.register(p, &files[1..2]);
        assert_eq!(ix.search("alpha", 10).0.len(), 3);
        assert_eq!(alpha(&mut ix).unwrap()[0], SPILLED);
        ix.unregister(p, &[h(0), h(4)]);
        assert_eq!(
            alpha(&mut ix),
            Some([
                ix.find_entry(ix.find_file(&h(1)).unwrap(), "Alpha 1x1")
                    .unwrap(),
                NONE
            ])
        );
        check_words(&mut ix);
        ix.remove_peer(p);
        assert_eq!(ix.word_count(), 0);
        assert!(ix.words.capacity() == 0 && ix.word_text.bytes.capacity() == 0);
        assert!(ix.postings.capacity() == 0 && ix.word_order.is_empty());
    }

    #[test]
    fn word_texts_are_compacted() {
        let mut ix = Index::new();
        let p = ix.add_peer(addr(1));
        let q = ix.add_peer(addr(2));
        let files = |from: u32| -> Vec<FileEntry> {
            (from..from + 50)
                .map(|i| fe(FileHash::of(&i.to_le_bytes()), 1, &format!("track {i:08}")))
                .collect()
        };
        ix.register(p, &files(0));
        ix.register(q, &files(1000));
        ix.post_pending();
        let before = ix.word_text.bytes.len();
        ix.remove_peer(p);
        // 50 of 101 word texts freed: more than a third, so the arena was compacted.
        assert!(ix.word_text.bytes.len() < before / 2 + 16);
        assert_eq!(ix.word_text.garbage, 0);
        check_words(&mut ix);
        assert_eq!(ix.search("00001049", 5).0[0].name, "track 00001049");
        assert!(ix.search("00000049", 5).0.is_empty());
    }

    /// Runs the naive-model property test's operation sequences (register, unregister,
    /// remove) and checks the word index after each step; the small alphabets must reach both
    /// inline and spilled posting sets.
    #[test]
    fn model_ops_keep_words_consistent_and_reach_both_posting_forms() {
        use proptest::strategy::ValueTree;
        use proptest::test_runner::TestRunner;
        let mut runner = TestRunner::deterministic();
        let ops_strategy = prop::collection::vec(op_strategy(), 1..60);
        let (mut saw_inline_pair, mut saw_spilled) = (false, false);
        for _ in 0..300 {
            let ops = ops_strategy.new_tree(&mut runner).unwrap().current();
            let mut ix = Index::new();
            let mut live: Vec<PeerId> = Vec::new();
            for op in ops {
                match op {
                    Op::AddPeer(port) => live.push(ix.add_peer(addr(port))),
                    Op::Register(p, files, _) if !live.is_empty() => {
                        let files: Vec<FileEntry> = files
                            .into_iter()
                            .map(|(h, s, n)| fe(test_hash(h), s, &n))
                            .collect();
                        ix.register(live[p % live.len()], &files);
                    }
                    Op::Unregister(p, hashes) if !live.is_empty() => {
                        let hashes: Vec<FileHash> = hashes.into_iter().map(test_hash).collect();
                        ix.unregister(live[p % live.len()], &hashes);
                    }
                    Op::RemovePeer(p) if !live.is_empty() => {
                        ix.remove_peer(live.swap_remove(p % live.len()));
                    }
                    _ => continue,
                }
                let (_, spilled) = check_words(&mut ix);
                saw_spilled |= spilled > 0;
                saw_inline_pair |= ix
                    .words
                    .iter()
                    .any(|r| r.text != NONE && r.postings[0] != SPILLED && r.postings[1] != NONE);
            }
            for p in live {
                ix.remove_peer(p);
            }
            assert_eq!(check_words(&mut ix), (0, 0));
        }
        assert!(saw_inline_pair && saw_spilled);
    }
}
