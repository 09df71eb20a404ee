//! Registering: what [`Index::register`] decides at once (the outcome: what is added, what is
//! rejected, arena room for every accepted name), and what it leaves to
//! [`Index::post_pending`] (new files' tables, words, name compression).

use super::codec::NameCodec;
use super::files::MAX_FILE_SIZE;
use super::names::Names;
use super::words::lower_words;
use super::{
    is_valid_name, posting_key, tier_of, Index, PeerId, RegisterOutcome, MAX_ENTRIES,
    MAX_NAMES_PER_HASH, NONE, SOLE, UNPOSTED,
};
use crate::wire::{AnnouncedFile, FileEntry, FileHash};

/// Up to this many staged files, a register checks a seen hash against them one by one;
/// beyond, it puts them all in the tables first.
pub(super) const STAGED_SCAN: usize = 64;
/// Each staging buffer keeps at most this much capacity once emptied.
const KEEP_STAGED_BYTES: usize = 64 * 1024;
/// Staged names past this many bytes are put in the tables before more are staged.
const STAGED_MAX_NAME_BYTES: usize = 16 << 20;

/// A holding of a file new to the index, registered but not yet in the tables.
struct Staged {
    hash: FileHash,
    size: u64,
    /// The name's bytes in `Pending::staged_names`.
    name: std::ops::Range<u32>,
    peer: u32,
}

/// The work [`Index::register`] leaves to [`Index::post_pending`].
#[derive(Default)]
pub(super) struct Pending {
    /// Holdings of files new to the index, registered but not yet in the tables: distinct
    /// hashes, none indexed.
    staged: Vec<Staged>,
    /// The staged holdings' names, end to end.
    staged_names: String,
    /// Entries created by a register whose words are not posted yet.
    unposted: Vec<u32>,
    /// Files whose holder count may have crossed a tier since their entries were posted.
    pub(super) retier: Vec<u32>,
}

impl Pending {
    /// Staged holdings (each a file new to the index, with one entry).
    pub(super) fn staged_len(&self) -> usize {
        self.staged.len()
    }
}

impl Index {
    /// Registers `files` for `peer`, in bulk. Entries the peer already holds are no-ops;
    /// entries with an invalid name, a size over [`MAX_FILE_SIZE`], beyond the peer's
    /// [`MAX_NAMES_PER_HASH`] names of one hash, or a name the name arena has no room for are
    /// rejected. A size that disagrees with another peer's claim for the same hash is not: it
    /// is a file of its own (see `Files::position`). An unknown peer gets every
    /// entry rejected.
    ///
    /// The outcome is all a register's answer needs, so this does only what decides it. A file
    /// whose hash the `HashFilter` has never seen is certainly
    /// new to the index and to this peer: it is only staged (its name copied to a buffer, its
    /// arena room reserved), and [`Index::post_pending`] puts it in the tables later. Reading a
    /// few filter words costs far less than searching the hash index, creating the file, its
    /// entry and the holding, and the filter's reads do not depend on each other, so a batch's
    /// cache misses overlap. Any other file (the hash was seen, or the filter says so wrongly,
    /// about one time in twenty-five) goes through the tables at once, after any staged file of
    /// the same hash.
    pub fn register(&mut self, peer: PeerId, files: &[FileEntry]) -> RegisterOutcome {
        self.register_at_most(peer, files, u32::MAX)
    }

    /// [`Index::register`], adding at most `room` new holdings: the entries beyond it that
    /// the peer does not hold yet are rejected (those it holds stay no-ops). The entries'
    /// names may be owned or borrowed from the request's frame.
    pub fn register_at_most<F: AnnouncedFile>(
        &mut self,
        peer: PeerId,
        files: &[F],
        room: u32,
    ) -> RegisterOutcome {
        let mut out = RegisterOutcome::default();
        if self.peers.get(peer).is_none() {
            out.rejected = files.len() as u32;
            return out;
        }
        for f in files {
            let (hash, size, name) = (f.hash(), f.size(), f.name());
            if !is_valid_name(name) || size > MAX_FILE_SIZE {
                out.rejected += 1;
                continue;
            }
            let may_add = out.added < room;
            let fresh = if !self.files.seen.may_contain(hash) {
                true
            } else if self.is_staged(hash) {
                self.unstage_all();
                false
            } else {
                // Not staged: the hash index alone says whether the hash is new.
                !self.files.has_hash(hash)
            };
            let added = if fresh {
                if !may_add || !self.reserve_name(name) {
                    out.rejected += 1;
                    continue;
                }
                if self.pending.staged_names.len() + name.len() > STAGED_MAX_NAME_BYTES {
                    // Bounds the buffer (and its `u32` offsets) whatever one turn brings.
                    self.unstage_all();
                }
                self.stage(peer, hash, size, name);
                true
            } else {
                match self.add_entry(peer, name, hash, size, may_add) {
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

    /// Reserves the arena room a new entry named `name` will take: its name's record (stored
    /// plain until [`Index::post_pending`] compresses it, which never makes it longer) and
    /// its words' texts. False, reserving nothing, if either arena lacks the room.
    fn reserve_name(&mut self, name: &str) -> bool {
        let record = Names::record_len(NameCodec::plain_len(name));
        if self.entry_count() >= MAX_ENTRIES
            || !self.entries.names.has_room(record)
            || !self.words.has_room_for(name.len())
        {
            return false;
        }
        self.entries.names.reserve(record);
        self.words.reserve_texts(name.len());
        true
    }

    /// Puts the file `hash` of `size` named `name`, new to the index, in the staging area as
    /// held by `peer`.
    fn stage(&mut self, peer: PeerId, hash: &FileHash, size: u64, name: &str) {
        self.files.seen.insert(hash);
        let pending = &mut self.pending;
        let start = pending.staged_names.len() as u32;
        pending.staged_names.push_str(name);
        pending.staged.push(Staged {
            hash: *hash,
            size,
            name: start..pending.staged_names.len() as u32,
            peer: peer.0,
        });
        self.peers.get_mut(peer).staged += 1;
        self.peers.holdings += 1;
    }

    /// Whether a staged file has hash `h`. Beyond [`STAGED_SCAN`] staged files, answers true
    /// without looking (the caller then unstages them all, which costs the same in the end).
    fn is_staged(&self, h: &FileHash) -> bool {
        let staged = &self.pending.staged;
        !staged.is_empty() && (staged.len() > STAGED_SCAN || staged.iter().any(|s| s.hash == *h))
    }

    /// Puts every staged file in the tables, in the arena room reserved for its name.
    fn unstage_all(&mut self) {
        if self.pending.staged.is_empty() {
            return;
        }
        let staged = std::mem::take(&mut self.pending.staged);
        let names = std::mem::take(&mut self.pending.staged_names);
        for s in &staged {
            let name = &names[s.name.start as usize..s.name.end as usize];
            let peer = PeerId(s.peer);
            self.peers.get_mut(peer).staged -= 1;
            self.peers.holdings -= 1;
            let at = self
                .files
                .position(&s.hash, s.size)
                .expect_err("a staged file is new to the index");
            let file = self.files.create(at, s.hash, s.size);
            let entry = self.create_entry(file, name);
            let added = self.add_holding(peer, entry);
            debug_assert!(added, "a staged file is new to its peer");
        }
        let pending = &mut self.pending;
        pending.staged = staged;
        pending.staged.clear();
        pending.staged_names = names;
        pending.staged_names.clear();
        // A big batch's buffers go back; a small one's are kept for the next register.
        if pending.staged_names.capacity() > KEEP_STAGED_BYTES
            || pending.staged.capacity() * std::mem::size_of::<Staged>() > KEEP_STAGED_BYTES
        {
            pending.staged_names = String::new();
            pending.staged = Vec::new();
        }
    }

    /// Adds `peer`'s holding of the file `hash` of `size` under `name` (valid; the hash not
    /// staged) to the tables. Returns whether the holding is new, or `None` if the holding
    /// would be new and `!may_add`, or the peer holds [`MAX_NAMES_PER_HASH`] names of this hash
    /// already (whatever their sizes), or there is no room for its name.
    fn add_entry(
        &mut self,
        peer: PeerId,
        name: &str,
        hash: &FileHash,
        size: u64,
        may_add: bool,
    ) -> Option<bool> {
        // The file, or where a new one goes in the hash order. Another size claimed for a
        // known hash is a file of its own (see `Files::position`).
        let file = match self.files.position(hash, size) {
            Ok(at) => {
                let file = self.files.id_at(at);
                match self.find_entry(file, name) {
                    Some(e) if self.entries.holders(e).contains(&peer.0) => return Some(false),
                    Some(_) if !may_add => return None,
                    Some(_) if self.names_held(peer, hash) >= MAX_NAMES_PER_HASH => return None,
                    Some(e) => return Some(self.add_holding(peer, e)),
                    None => Ok(file),
                }
            }
            Err(at) => Err(at),
        };
        if !may_add || self.names_held(peer, hash) >= MAX_NAMES_PER_HASH {
            return None;
        }
        if !self.reserve_name(name) {
            return None;
        }
        let file = file.unwrap_or_else(|at| self.files.create(at, *hash, size));
        let entry = self.create_entry(file, name);
        Some(self.add_holding(peer, entry))
    }

    /// How many entries of hash `hash` (any size) `peer` holds, counting up to
    /// [`MAX_NAMES_PER_HASH`].
    fn names_held(&self, peer: PeerId, hash: &FileHash) -> usize {
        let mut held = 0;
        for file in self.files.variants(hash) {
            let mut e = self.files[file].first_entry();
            while e != NONE && held < MAX_NAMES_PER_HASH {
                if self.entries.holders(e).contains(&peer.0) {
                    held += 1;
                }
                e = self.entries.next(e);
            }
        }
        held
    }

    /// Adds an entry named `name` to `file`, in the name room reserved for it.
    fn create_entry(&mut self, file: u32, name: &str) -> u32 {
        let head = self.files[file].first_entry();
        let sole = if head == NONE {
            SOLE
        } else {
            // The file gains a second entry: the first is no longer its sole one, and the
            // file's holders (so far that entry's) are counted on their own from now on.
            if self.entries.next(head) == NONE {
                self.entries[head].file &= !SOLE;
                let n = self.entries.holders(head).len() as u32;
                self.files.multi_holders.insert(file, n);
            }
            0
        };
        // Stored plain for now (a valid encoding without symbols, cheap to write); its words
        // are posted and it is compressed in `post_pending`, off the register's answer.
        let mut plain = std::mem::take(&mut self.work.name);
        NameCodec::plain(name, &mut plain);
        let owner = self.entries.next_id();
        let at = self.entries.names.push(owner, &plain);
        self.work.name = plain;
        let id = self.entries.insert(at, file | sole, head);
        debug_assert_eq!(id, owner);
        self.files[file].set_first_entry(id);
        self.pending.unposted.push(id);
        id
    }

    /// Adds holding (peer, e); false if the peer already held it.
    fn add_holding(&mut self, peer: PeerId, e: u32) -> bool {
        if self.entries.holders(e).contains(&peer.0) {
            return false;
        }
        let file = self.entries[e].file();
        let new_file = !self.peer_holds_file(peer.0, file);
        let before = self.file_holder_count(file);
        let entry_before = self.entries.holder_count(&self.entries[e]);
        self.entries.push_holder(e, peer.0);
        self.rerank(e, entry_before);
        if new_file {
            if let Some(n) = self.files.multi_holders.get_mut(file) {
                *n += 1;
            }
        }
        self.note_holders_changed(file, before);
        let rec = self.peers.get_mut(peer);
        if new_file {
            rec.files += 1;
        }
        rec.entries.insert(e);
        self.peers.holdings += 1;
        true
    }

    /// Finishes what [`Index::register`] left: puts the staged files in the tables, posts the
    /// words of the entries created since the last call and compresses their names (which
    /// needs the words' posting counts), and rebuilds the hash filter when it is due. Every
    /// other method calls it first, so no answer ever sees a file without its tables or an
    /// entry without its words; an owner that answers a register before calling it (the
    /// server does, to answer sooner) defers the work, not its effect.
    pub fn post_pending(&mut self) {
        self.post_pending_until(|| false);
    }

    /// Puts the staged files in the tables now (the first step of [`Index::post_pending`],
    /// words left pending). For an owner that applies registers in slices and counts its
    /// work per file: staging is cheap and putting in the tables is not, so a slice that
    /// leaves its files staged does the next slice's or the turn's end's work for it, and
    /// staged files piled up over a turn (thousands) came out at once, in milliseconds, when
    /// one more register met one of their hashes.
    pub fn unstage_pending(&mut self) {
        crate::index::worktrace::time("staged files", || self.unstage_all());
    }

    /// Files registered and not yet in the tables (staged), for tests.
    #[cfg(test)]
    pub(crate) fn staged_count(&self) -> usize {
        self.pending.staged.len()
    }

    /// [`Index::post_pending`], but the word posting stops after the entry during which
    /// `is_late()` turned true (one entry at least is posted), the rest left pending for the
    /// next call; returns whether nothing is left. For an owner that bounds its turns: what
    /// is left is finished by the next call of any other method, so no answer ever sees less.
    pub fn post_pending_until(&mut self, is_late: impl Fn() -> bool) -> bool {
        use crate::index::worktrace::time;
        time("staged files", || self.unstage_all());
        time("filter refresh", || self.files.refresh_filter());
        time("word posting", || self.post_unposted(&is_late));
        time("retiering", || self.apply_retiers());
        !self.has_pending()
    }

    /// Moves the postings of the entries of files in `Pending::retier` to their file's
    /// current tier. A file crosses a tier only when its holder count doubles or halves, so
    /// this costs each holding a constant amortised number of reposted words.
    fn apply_retiers(&mut self) {
        if self.pending.retier.is_empty() {
            return;
        }
        let mut files = std::mem::take(&mut self.pending.retier);
        files.sort_unstable();
        files.dedup();
        let mut scratch = std::mem::take(&mut self.work.words);
        let mut name = std::mem::take(&mut self.work.name);
        let mut ids = std::mem::take(&mut self.work.name_words);
        for &file in &files {
            // A file deleted since (its id maybe reused) is skipped or retiered as is.
            if !self.files.is_live(file) {
                continue;
            }
            let tier = tier_of(self.file_holder_count(file));
            let mut e = self.files[file].first_entry();
            while e != NONE {
                let old = self.entries[e].posted_tier();
                if old != UNPOSTED && old != tier {
                    self.entries.decode_name(e, &mut name);
                    lower_words(
                        std::str::from_utf8(&name).expect("names are stored from str"),
                        &mut scratch,
                    );
                    ids.clear();
                    if scratch.spans.is_empty() {
                        ids.extend(self.words.find(b""));
                    }
                    ids.extend(
                        scratch
                            .words()
                            .filter_map(|w| self.words.find(w.as_bytes())),
                    );
                    // A word repeated in a name is posted once.
                    ids.sort_unstable();
                    ids.dedup();
                    for &w in &ids {
                        self.words
                            .repost(w, posting_key(old, e), posting_key(tier, e));
                    }
                    self.entries[e].set_posted_tier(tier);
                }
                e = self.entries.next(e);
            }
        }
        self.work.words = scratch;
        self.work.name = name;
        self.work.name_words = ids;
        files.clear();
        self.pending.retier = files;
    }

    /// Posts the words of the entries registered since the last call, and compresses their
    /// names, oldest first, until `is_late()` after one of them.
    fn post_unposted(&mut self, is_late: &impl Fn() -> bool) {
        use crate::index::worktrace::time_outlier;
        if self.pending.unposted.is_empty() {
            return;
        }
        let mut unposted = std::mem::take(&mut self.pending.unposted);
        let mut done = 0;
        let mut scratch = std::mem::take(&mut self.work.words);
        let mut name_words = std::mem::take(&mut self.work.name_words);
        let mut text = std::mem::take(&mut self.work.text);
        let mut enc = std::mem::take(&mut self.work.name);
        for &id in &unposted {
            done += 1;
            let at = self.entries[id].name;
            text.clear();
            text.push_str(NameCodec::plain_str(self.entries.names.get(id, at)));
            lower_words(&text, &mut scratch);
            name_words.clear();
            let tier = tier_of(self.file_holder_count(self.entries[id].file()));
            self.entries[id].set_posted_tier(tier);
            let key = posting_key(tier, id);
            // (The pieces' rare long runs, in wall-clock time, go to the work trace.)
            let wordless = time_outlier("post: words (outliers)", || {
                let wordless = scratch.spans.is_empty().then(|| self.words.post(key, ""));
                for i in 0..scratch.spans.len() {
                    let (a, b) = scratch.spans[i];
                    name_words.push(self.words.post(key, &scratch.buf[a..b]));
                }
                wordless
            });
            let ids = match &wordless {
                Some(w) => std::slice::from_ref(w),
                None => &name_words[..],
            };
            time_outlier("post: name table (outliers)", || {
                self.track_posted(id, &text, ids)
            });
            let Index { entries, words, .. } = self;
            time_outlier("post: name encoding (outliers)", || {
                entries.codec.encode(&text, &mut enc, |i| {
                    name_words
                        .get(i)
                        .is_some_and(|&w| words.has_packed(w, NameCodec::MIN_POSTINGS))
                });
                if enc.as_slice() != entries.names.get(id, at) {
                    // Without room for the encoding (at the arena's cap) the name stays
                    // plain, which is a valid encoding too.
                    if let Some(moved) = entries.names.replace(id, at, &enc) {
                        entries[id].name = moved;
                    }
                }
            });
            if is_late() {
                break;
            }
        }
        self.work.words = scratch;
        self.work.name_words = name_words;
        self.work.text = text;
        self.work.name = enc;
        time_outlier("post: end (outliers)", || {
            unposted.drain(..done);
            self.pending.unposted = unposted;
            if self.pending.unposted.is_empty() {
                // Every reserved word text is in: what is left was an upper bound. (Names
                // were reserved exactly, and are all in since `unstage_all`.)
                self.words.release_texts();
                debug_assert_eq!(self.entries.names.reserved(), 0);
                self.entries.names.start_compaction_if_due();
            }
        });
    }

    /// Entries whose words wait for [`Index::post_pending`] (their names stored plain).
    pub fn unposted_count(&self) -> usize {
        self.pending.unposted.len()
    }

    /// Whether [`Index::register`] left work for [`Index::post_pending`].
    pub fn has_pending(&self) -> bool {
        !self.pending.unposted.is_empty()
            || !self.pending.staged.is_empty()
            || !self.pending.retier.is_empty()
    }
}
