//! The index server's data structure: who shares which file under which name. Pure, no I/O.
//!
//! # Model
//! - A **peer** is a live session, with the address other peers download from.
//! - A **file** is a content hash ([`FileHash`]) with one size.
//! - An **entry** is a distinct (hash, name) pair; one file may have several names.
//! - A **holding** is (peer, entry): the peer shares that file under that name.
//!
//! # The folder
//! | file | holds |
//! |---|---|
//! | `mod.rs` | [`Index`], its parts, the public types, the peer table |
//! | `register.rs` | register: staging new files, admitting names, [`Index::post_pending`] |
//! | `removal.rs` | unregister and peer removal, deleting entries, words and files left without holders |
//! | `depart.rs` | sliced peer removal: departing peers, hidden from answers, withdrawn in slices |
//! | `search.rs` | keyword search: its ranking, filters, pages and work budget |
//! | `lookup.rs` | lookup by hash, hash prefix or name (a page of a name's files) |
//! | `byname.rs` | the name table: the entries of each exact name, ranked |
//! | `files.rs` | the file table, the hash index, the holder counts of files of several names |
//! | `entries.rs` | the entry table, the entries' names and holders |
//! | `words.rs` | the word index (texts, postings, prefix order) and how names split into words |
//! | `table.rs` | `Table`, the record vector with a free list the four tables are |
//! | `chunked.rs` | `ChunkVec` and `ChunkSlab`, vectors in fixed-size chunks that growth never copies (the tables', the slabs of posting sets and spilled holders) |
//! | `shards.rs` | `ShardedTable` and `U32Map`, hash tables in 4,096 shards of staggered sizes (the words', the multi-name holder counts, the name table's) |
//! | `names.rs` | the name arena (names and word texts), bounded by its cap, compacted a step at a time |
//! | `codec.rs` | the name codec (common words as one- or two-byte codes) |
//! | `filter.rs` | the hash filter (is this hash certainly new?) |
//! | `blockset.rs` | the block set (sorted `u64` items in blocks, the blocks in groups) the hash and word orders are |
//! | `postings.rs` | packed posting sets (varint deltas in blocks, a long set's blocks in groups) |
//! | `tests.rs` | the index against a naive model, and tests across the parts |
//!
//! # Invariants
//! - Every live entry has at least one holder; every live file has at least one entry. When the
//!   last holding of an entry goes, the entry goes (its name, its word postings); when the last
//!   entry of a file goes, the file goes (its hash-index item). Nothing outlives its holders, so
//!   after every peer is removed all counts are zero and the big vectors are released.
//! - `PeerRec::files` is the number of distinct files the peer holds; `Files::multi_holders`
//!   has an item exactly for each file of two or more entries: its number of distinct holders.
//! - A word's posting set holds exactly the live entries whose name contains that word, but
//!   for the entries in `Pending::unposted`: [`Index::register`] creates entries and leaves
//!   their words to [`Index::post_pending`], which every other method calls first (the server
//!   calls it right after sending the register's answer).
//! - `Pending::staged` holds holdings of files new to the index that [`Index::register`] has
//!   answered for but not put in the tables: distinct hashes, none in the hash index, each
//!   counted in its peer's `PeerRec::staged` and by [`Index::file_count`] and
//!   [`Index::entry_count`] (not by the file and entry tables).
//!   [`Index::post_pending`] puts them in the tables first.
//! - A posted live entry whose words are all crowded is in the name table ([`ByName`]) once,
//!   ranked among the entries of its name by its current holder count; no other entry is.
//!   This holds for the names a lookup reads from the table, and for all once the table's
//!   walks are done ([`Index::continue_name_walks`]; see `byname.rs`).
//! - Every hash in the hash index or staged has its bits set in the [`HashFilter`]
//!   `Files::seen` (and, while it is being rebuilt, in the new filter once the rebuild has
//!   passed it or it was added since).
//! - A departing peer (`PeerRec::departing`) is in `Peers::departing` once; its record stays
//!   (its id is not reused) until its last holding is withdrawn; it still counts as a holder
//!   in the tables and tiers, but never in an answer (see `depart.rs`).
//! - A file's size never changes while it is indexed: a register with another size is rejected.
//! - An entry's `file` field carries the [`SOLE`] bit exactly while it is its file's only entry
//!   (then the file's holders are the entry's holders).
//! - Every live entry's `name` is the offset of a live record in the name arena (while a
//!   compaction runs, in the new arena for an entry id below its cursor, else in the old
//!   one); freed records are counted in `Names::garbage` and listed in its free lists.
//! - Every name accepted and not yet in the arena (staged), and every word text of an entry
//!   not yet posted, has room reserved in its arena: what a register accepts is never refused
//!   later, and no arena passes its cap (see [`Names`]).
//! - A posting is a key, [`posting_key`]`(tier, entry id)`: the entries under a word are in
//!   search rank order (higher holder tier first, then smaller id; see `search.rs`). Every
//!   posted entry carries in its `file` field the tier its postings are keyed with; after
//!   [`Index::post_pending`] that is the tier of its file's current holder count
//!   ([`tier_of`]). A holder change that crosses a tier lists the file in `Pending::retier`
//!   and `post_pending` moves its entries' postings. Entry and file ids stay below
//!   [`MAX_ENTRIES`] (register refuses more), so an id and a tier fit one `u32`.
//! - Every live word has at least one posting; its postings are inline exactly while there are
//!   at most two (ascending), else in a packed set; it is in `Words::by_text` once and in
//!   `Words::order` once, under its own 4-byte prefix; its `text` is a live record of
//!   `Words::texts`.
//!
//! # Memory layout (why it is this shape)
//! The target is ≤150 bytes of resident memory per indexed file at a million files (whole
//! process, glibc malloc), so nothing is allocated per file or per rare word: every per-file
//! structure is a slot in a big vector or bytes in a compressed block. (README gives the
//! figures `benches/index.rs` measures.)
//! - The file table, a `Table` of `FileRec` (42 B: hash, then size and first entry packed into
//!   80 bits, see [`MAX_FILE_SIZE`]),
//!   addressed by `u32` ids with a free list.
//! - The hash index, a [`BlockSet`] of `u64` items `(first 4 hash bytes << 32) | file id`, kept
//!   in full-hash order (ties on the 4-byte prefix are broken by comparing the full hash
//!   through the file table). It serves exact lookups, prefix lookups (a range) and duplicate
//!   checks in `O(log n)` with ~8–11 B per file. Ordering by the *full* hash matters: peers
//!   choose the hash bytes, so anything keyed on a fixed prefix could be flooded with
//!   collisions.
//! - `seen`: a [`HashFilter`] (a Bloom filter of 8–10 bits per file after each reactor turn,
//!   ~1.2 B) that tells a register which hashes are certainly new without a hash-index search.
//! - The entry table of `EntryRec` (16 B: name offset, file id + posted tier + [`SOLE`] bit,
//!   two inline holder slots). Entries with more than two holders spill to a slab of
//!   `Vec<u32>`. The link to the next entry of the same file is kept only for files of
//!   several names, in a map beside the table (most files have one name: 4 bytes a file). The tier costs no byte: it lives in the top bits
//!   of the ids, as it does in the posting keys (a word's postings stay ascending runs of
//!   close ids within a tier, so their varint deltas are as small as before).
//! - `names`: one byte arena ([`Names`]) of length-prefixed names, one byte of overhead per
//!   name, each name compressed by a [`NameCodec`]: words common in names (with the space
//!   after them) become one- or two-byte codes, so a typical name takes about half its length.
//!   A registered name is stored plain (a valid encoding without codes) and compressed by
//!   [`Index::post_pending`], once its words are posted (the encoding looks at their counts).
//!   Search decodes the names it must match; ranking compares names while decoding. Freed
//!   records are reused by names of the same length; once garbage is a third of
//!   the arena its live records are moved to a fresh arena in entry-id order, a bounded step
//!   per reactor turn ([`Index::continue_compaction`]; see `names.rs`), so no single pass
//!   holds the loop; the word texts' arena the same way.
//! - Words: real names are full of rare words (track and catalogue numbers, IDs, years), so a
//!   word seen in one or two entries must cost little more than its text. Nothing is allocated
//!   per word:
//!   - the word table of `WordRec` (12 B: the text's offset, then the postings: up to two entry
//!     ids inline, or a key into `postings` for three or more), addressed by `u32` word ids
//!     with a free list;
//!   - `texts`: the folded texts ([`fold`]) in a byte arena like the names' ([`Names`]);
//!   - `by_text`: a [`ShardedTable`] of word ids hashed by text (~8 B per
//!     word), for the hot exact lookups (register, removal, name lookup);
//!   - `order`: a [`BlockSet`] of `(first 4 text bytes << 32) | word id` in text order
//!     (~11 B per word), so a prefix is a range; most comparisons settle on the 4 bytes without
//!     reading the text, and a prefix of up to 4 bytes is matched on the items alone;
//!   - `postings`: a slab of [`PackedSet`]s of entry ids, one per word with three or more
//!     entries: sorted blocks of varint deltas, ~1.5 B per posting plus 12-byte block
//!     headers, insert and remove decode one block of at most ~256 bytes. The blocks are in
//!     groups of up to 32, each group's deltas one after another in one byte arena, so that
//!     a search walking a long list's blocks reads one stretch of memory, not an allocation
//!     per block. A set goes back inline when it shrinks to two.
//! - Each peer keeps a [`PackedSet`] of the entries it holds (~1 B per holding: ids a peer
//!   registers together are close), so removing a peer costs time proportional to its own
//!   holdings.
//! - The big vectors (the four record tables, the slabs of posting sets and spilled holders,
//!   the two arenas, the hash filter) are stored in fixed-size chunks (`chunked.rs`,
//!   `names.rs`, `filter.rs`): growth appends a chunk and never copies or moves what is
//!   stored, so no growth pauses the reactor (a vector of hundreds of megabytes grown by a
//!   sixteenth was a copy of megabytes once glibc carved it from its heap), and at most one
//!   chunk of each sits unused. The block lists of the sorted orders (a [`BlockSet`]'s, a long
//!   [`PackedSet`]'s) are in groups of blocks for the same reason: a block split or removal
//!   moves one group's block headers (and a [`PackedSet`] group's few KiB of deltas), never a
//!   list of all the blocks.
//! - Exact-name lookup goes through the postings of the name's rarest word and compares
//!   names, which saves a hash table slot per entry, as long as that word has fewer than
//!   [`byname::CROWDED_POSTINGS`] postings. Names whose words are all that common (a lookup of
//!   `copyright` compared hundreds of thousands of names) have a table of their own
//!   ([`ByName`]: 8 bytes a slot per such name, and a ranked set for each one several files
//!   bear), so that a page of them comes best first without ranking all of them.
//!
//! # Removal
//! A peer leaves in two steps (`depart.rs`): [`Index::begin_departure`] marks it departing,
//! which hides it from every answer at once, and [`Index::continue_departures`] withdraws its
//! holdings a bounded slice at a time, each slice as below.
//!
//! Removing holdings first drops the peer from each entry's holders, collecting entries left
//! without holders; those are then deleted in one batch: their `(word, entry)` postings are
//! gathered (re-tokenising each name into a reused buffer), sorted, and removed word by word,
//! each affected posting block decoded and re-encoded once; words left without postings go
//! (a dropped word is found in the word order by its id among the words sharing its 4-byte
//! prefix, without reading their texts); then names, records and files left without entries
//! go.
//!
//! # Words
//! Words are maximal runs of `char::is_alphanumeric` characters of the name's search fold
//! ([`fold`]: NFKC-style compatibility normalisation, full case folding and generic diacritics
//! dropped, character by character with no context rules, so the fold of a prefix is a prefix
//! of the fold; `strasse` finds `straße`, `istanbul` `İstanbul`, `cafe` `café`). Names without any word are indexed under the empty word so that an exact name
//! lookup still finds them; a query never produces the empty word.

mod blockset;
mod byname;
mod chunked;
mod codec;
mod depart;
mod entries;
mod files;
mod filter;
mod lookup;
mod names;
mod postings;
mod register;
mod removal;
mod search;
mod shards;
mod table;
#[cfg(test)]
mod tests;
mod words;

pub use self::depart::DEPARTURE_GROUP_HOLDINGS;
pub use self::files::MAX_FILE_SIZE;
pub use self::search::{
    SearchError, SearchPage, MAX_QUERY_WORDS, SEARCH_TIME_LIMIT, SEARCH_WORK_BUDGET,
};
pub use self::shards::KeySet;
pub use self::words::fold;

use self::byname::ByName;
use self::entries::Entries;
use self::files::Files;
use self::postings::PackedSet;
use self::register::Pending;
#[cfg(doc)]
use self::shards::ShardedTable;
use self::table::Table;
use self::words::{Scratch, Words};
#[cfg(doc)]
use self::{blockset::BlockSet, codec::NameCodec, filter::HashFilter, names::Names};
#[cfg(doc)]
use crate::wire::FileHash;
use crate::wire::{HeldFile, SearchHit};
use std::fmt;
use std::net::SocketAddr;

/// Longest accepted file name, in bytes.
pub const MAX_NAME_BYTES: usize = 1024;

/// Most names one peer may register for one hash (all claimed sizes together): a peer that
/// really has one file's content under many names (empty files, copies) keeps up to this
/// many, while a session cannot flood searches with thousands of names of one popular file
/// or outvote its holders' name (see [`Index::lookup`]). Register counts the rest `rejected`.
pub const MAX_NAMES_PER_HASH: usize = 16;

/// Most files (sizes claimed for one hash) a lookup by hash answers, the best claims (see
/// [`Index::lookup`]).
pub const MAX_CLAIMS: usize = 8;

/// Marks an unused inline holder or posting slot, a missing link, or a free record.
const NONE: u32 = u32::MAX;
/// In `EntryRec::holders[0]`: the holders live in the entries' spill slab at
/// `holders[1]`. In `WordRec::postings[0]`: the postings live in the words' packed set at
/// `postings[1]`. (Neither is a valid peer or entry id.)
const SPILLED: u32 = u32::MAX - 1;
/// While the index holds a single entry of a file, the entry's `file` field carries this bit:
/// the file's holders are then exactly the entry's, and search need not touch the file record
/// to rank the entry.
const SOLE: u32 = 1 << 31;

/// Bits of an entry or file id. Ids stay below `1 << ID_BITS` (register refuses more entries,
/// see [`MAX_ENTRIES`]), so that a posting key and an entry's `file` field have room for a
/// tier.
const ID_BITS: u32 = 27;
/// The id part of a posting key or of an entry's `file` field.
const ID_MASK: u32 = (1 << ID_BITS) - 1;
/// Most entries the index holds (ids are below it). Register refuses new entries beyond.
pub const MAX_ENTRIES: usize = ID_MASK as usize;
/// The highest tier: files of `1 << MAX_TIER` holders or more.
const MAX_TIER: u32 = 14;
/// In an entry's tier bits: its words are not posted yet.
const UNPOSTED: u32 = 15;

/// The tier of a file of `holders` holders: 0 for one (or none), 1 for 2–3, 2 for 4–7, …,
/// `floor(log2(holders))`, capped at [`MAX_TIER`].
#[inline]
pub fn tier_of(holders: u32) -> u32 {
    (31 - holders.max(1).leading_zeros()).min(MAX_TIER)
}

/// The posting key of entry `id` in tier `tier`: keys sort by tier (highest first), then by
/// id, so a word's postings are in rank order.
#[inline]
fn posting_key(tier: u32, id: u32) -> u32 {
    ((MAX_TIER - tier) << ID_BITS) | id
}

/// The tier of a posting key.
#[inline]
fn key_tier(key: u32) -> u32 {
    MAX_TIER - (key >> ID_BITS)
}

/// A live peer's id, handed out by [`Index::add_peer`]. Ids are reused after removal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerId(pub u32);

/// What a [`Index::register`] call did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegisterOutcome {
    /// Holdings new to this peer.
    pub added: u32,
    /// Entries refused: bad name, a size over [`MAX_FILE_SIZE`], more than
    /// [`MAX_NAMES_PER_HASH`] names of one hash, no
    /// room for more holdings (see [`Index::register_at_most`]), or no room for the name.
    pub rejected: u32,
    /// Distinct hashes this peer holds after the call.
    pub total: u32,
}

/// One page of the files of one name: see [`Index::lookup_name`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamePage {
    /// The files, best first.
    pub files: Vec<HeldFile>,
    /// How many files bear the name in all.
    pub total: u64,
    /// More files follow: the position to continue after.
    pub next: Option<u128>,
}

impl NamePage {
    /// Files in a page when the caller does not say.
    pub const DEFAULT_FILES: usize = 100;
    /// Holders listed per file when the caller does not say.
    pub const DEFAULT_HOLDERS: usize = 64;
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

/// The address group a peer's IP belongs to for counting distinct holders: an IPv4 address
/// (IPv4-mapped IPv6 included), or an IPv6 /64 (what one host is usually given).
fn source_of(ip: std::net::IpAddr) -> (bool, u64) {
    match ip.to_canonical() {
        std::net::IpAddr::V4(a) => (false, u64::from(u32::from(a))),
        std::net::IpAddr::V6(a) => (true, (u128::from(a) >> 64) as u64),
    }
}

/// Whether `name` may be indexed: non-empty, at most [`MAX_NAME_BYTES`], no `/` and no NUL.
/// Any other byte, control characters included, is legal.
pub fn is_valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_BYTES && !name.bytes().any(|b| b == b'/' || b == 0)
}

/// The index: peers, files, names and the word index over names. See the module docs.
pub struct Index {
    /// The files by hash, and which hashes may be known.
    files: Files,
    /// The (hash, name) entries, their names and holders.
    entries: Entries,
    /// The word index over the entries' names.
    words: Words,
    /// The entries of each exact name.
    by_name: ByName,
    /// The live peers and their holdings.
    peers: Peers,
    /// What [`Index::register`] left for [`Index::post_pending`].
    pending: Pending,
    /// Reused buffers, so that register and removal allocate nothing per entry.
    work: Work,
    /// Work units one search may spend (see `search.rs`).
    search_budget: usize,
    /// Time one search may take, its answer built (see `search.rs`; `None`: the budget
    /// alone).
    search_time_limit: Option<std::time::Duration>,
    /// What building a search's answer has cost per hit lately, in ns (a moving average):
    /// the walk stops that much before the time limit (see `search.rs`).
    search_hit_ns: u32,
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
    /// Its session ended: its holdings are being withdrawn (see `depart.rs`).
    departing: bool,
}

/// The live peers, by [`PeerId`].
struct Peers {
    recs: Table<Option<PeerRec>>,
    /// Holdings (peer, entry), staged ones included: the sum of every peer's entries.
    holdings: usize,
    /// Departures in progress, oldest first (see `depart.rs`).
    departing: std::collections::VecDeque<self::depart::Departure>,
}

impl Peers {
    #[inline]
    fn get(&self, peer: PeerId) -> Option<&PeerRec> {
        self.recs.get(peer.0)?.as_ref()
    }

    #[inline]
    fn get_mut(&mut self, peer: PeerId) -> &mut PeerRec {
        self.recs[peer.0].as_mut().expect("holding of a live peer")
    }

    /// Removes `peer`: its record, or `None` if it was not live.
    fn remove(&mut self, peer: PeerId) -> Option<PeerRec> {
        self.get(peer)?;
        self.recs.remove(peer.0)
    }
}

/// Buffers reused across calls (their contents mean nothing between calls).
#[derive(Default)]
struct Work {
    words: Scratch,
    /// Bitmaps over entry ids that searches reuse (cleared; see `search.rs`).
    bitmaps: Vec<search::Bitmap>,
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
    /// The entries of a departure's slice.
    slice: Vec<u32>,
    /// Name buffers of answers given back ([`Index::recycle_hits`]), for the next answer's
    /// names: glibc's malloc on the heap a large index leaves costs hundreds of ns per small
    /// allocation (see `search.rs`).
    hit_names: Vec<String>,
    /// An answer's vector given back, empty, for the next answer.
    hit_vec: Vec<SearchHit>,
    /// The (entry, file) ids of an answer's hits while it is built.
    hit_ids: Vec<(u32, u32)>,
    /// A search's best ranks (its heap), empty between searches.
    ranks: Vec<u64>,
    /// Files of lookup answers given back ([`Index::recycle_held`]), for the next answer's
    /// files (their names' and holders' buffers).
    held_spare: Vec<HeldFile>,
    /// A lookup answer's vector given back, empty, for the next answer.
    held_vec: Vec<HeldFile>,
    /// A file's holder ids while a lookup answer is built.
    holder_ids: Vec<u32>,
}

impl Default for Index {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Index {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Index")
            .field("peers", &self.peer_count())
            .field("files", &self.files.len())
            .field("entries", &self.entries.len())
            .field("words", &self.words.len())
            .finish()
    }
}

impl Index {
    /// An empty index.
    pub fn new() -> Self {
        Index {
            files: Files::new(),
            entries: Entries::new(),
            words: Words::new(),
            by_name: ByName::new(),
            peers: Peers {
                recs: Table::new(),
                holdings: 0,
                departing: Default::default(),
            },
            pending: Pending::default(),
            work: Work::default(),
            search_budget: SEARCH_WORK_BUDGET,
            search_time_limit: None,
            search_hit_ns: search::INITIAL_HIT_NS,
        }
    }

    /// Live peers, departing ones not counted.
    pub fn peer_count(&self) -> usize {
        self.peers.recs.len() - self.peers.departing.len()
    }

    /// Distinct hashes indexed.
    pub fn file_count(&self) -> usize {
        // Each staged holding is a file new to the index, with one entry.
        self.files.len() + self.pending.staged_len()
    }

    /// Distinct (hash, name) entries indexed.
    pub fn entry_count(&self) -> usize {
        self.entries.len() + self.pending.staged_len()
    }

    /// Distinct words in the word index (the empty word of wordless names included).
    pub fn word_count(&mut self) -> usize {
        self.post_pending();
        self.words.len()
    }

    /// Distinct hashes `peer` holds (0 for an unknown peer).
    pub fn holdings_of(&self, peer: PeerId) -> u32 {
        self.peers.get(peer).map_or(0, |p| p.files + p.staged)
    }

    /// Holdings in the index: every peer's entries summed (a file two peers share under one
    /// name counts twice).
    pub fn holding_count(&self) -> usize {
        self.peers.holdings
    }

    /// Entries (hash and name pairs) `peer` holds (0 for an unknown peer).
    pub fn entries_of(&self, peer: PeerId) -> u32 {
        self.peers
            .get(peer)
            .map_or(0, |p| p.entries.len() as u32 + p.staged)
    }

    /// The download address of `peer`, if it is live and not departing.
    pub fn peer_addr(&self, peer: PeerId) -> Option<SocketAddr> {
        self.peers
            .get(peer)
            .filter(|p| !p.departing)
            .map(|p| p.addr)
    }

    /// Adds a peer that serves downloads at `addr` (the IP seen on its socket, the port it
    /// announced).
    pub fn add_peer(&mut self, addr: SocketAddr) -> PeerId {
        PeerId(self.peers.recs.insert(Some(PeerRec {
            addr,
            entries: PackedSet::new(),
            files: 0,
            staged: 0,
            departing: false,
        })))
    }

    /// Heap bytes the index holds, by part (capacities, so slack counts; hash tables at their
    /// bucket counts), for memory reports. Malloc's own overhead is not included.
    pub fn heap_bytes(&self) -> Vec<(&'static str, usize)> {
        let mut parts = Vec::new();
        parts.extend(self.files.heap_bytes());
        parts.extend(self.entries.heap_bytes());
        parts.extend(self.words.heap_bytes());
        parts.push(("names table", self.by_name.heap_bytes()));
        let peers: usize = self
            .peers
            .recs
            .iter()
            .map(|(_, p)| p.as_ref().map_or(0, |p| p.entries.heap_bytes()))
            .sum();
        parts.push(("peers", self.peers.recs.heap_bytes() + peers));
        parts.push(("search bitmaps", self.search_memory_bytes()));
        parts
    }

    // ---- internals shared by the operations ----

    /// The entry of `file` named `name`, if any.
    fn find_entry(&self, file: u32, name: &str) -> Option<u32> {
        let mut e = self.files[file].first_entry();
        while e != NONE {
            if self.entries.cmp_name(e, name.as_bytes()) == std::cmp::Ordering::Equal {
                return Some(e);
            }
            e = self.entries.next(e);
        }
        None
    }

    /// How many distinct peers hold `file` (a live file).
    #[inline]
    fn file_holder_count(&self, file: u32) -> u32 {
        let first = self.files[file].first_entry();
        let rec = &self.entries[first];
        if rec.file & SOLE != 0 {
            self.entries.holder_count(rec)
        } else {
            self.files.multi_holders[&file]
        }
    }

    /// `file` had `before` holders: if it crossed a tier, its entries' postings move (in
    /// [`Index::post_pending`]).
    #[inline]
    fn note_holders_changed(&mut self, file: u32, before: u32) {
        if tier_of(before) != tier_of(self.file_holder_count(file)) {
            self.pending.retier.push(file);
        }
    }

    /// Whether `peer` holds any entry of `file`.
    fn peer_holds_file(&self, peer: u32, file: u32) -> bool {
        let mut e = self.files[file].first_entry();
        while e != NONE {
            if self.entries.holders(e).contains(&peer) {
                return true;
            }
            e = self.entries.next(e);
        }
        false
    }
}
