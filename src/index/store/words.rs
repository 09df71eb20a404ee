//! The word index: every word of the indexed names, its text, and the entries whose name
//! contains it (its postings); and how names are split into words.
//!
//! A word's postings are inline while there are at most two (most words are rare: track and
//! catalogue numbers, IDs, years), else a [`PackedSet`] in `postings`. A word is found by its
//! text through `by_text`, and words by prefix through `order`.

use super::blockset::BlockSet;
use super::chunked::ChunkSlab;
use super::names::Arena;
use super::postings::{PackedCursor, PackedSet, PostingIter};
use super::shards::ShardedTable;
use super::table::{Slot, Table};
use super::{NONE, SPILLED};
use std::cmp::Ordering;
use std::hash::BuildHasher;

/// How many `order` items sharing a dropped word's 4-byte prefix are scanned for its id
/// (8 KiB, sequential) before falling back to a search by text (a dozen dependent reads of
/// word records and texts). Numbers share prefixes in groups of hundreds. (Tiny in tests, so
/// that the property tests exercise the fallback.)
const WORD_SCAN: usize = if cfg!(test) { 2 } else { 1024 };

/// The most text-arena bytes the words of a name of `name_len` bytes take: each word's
/// record is at most twice its bytes plus one (folding grows a character by half at most, see
/// [`fold_char`], and the record adds a byte or two), and words are separated, so
/// `2 * name_len + 1`.
fn texts_bound(name_len: usize) -> usize {
    2 * name_len + 1
}

/// One word, 12 bytes. `text == NONE` marks a free slot.
pub(super) struct WordRec {
    /// Offset of the word's (lowercase) text in `Words::texts`.
    text: u32,
    /// The entries whose name contains the word: up to two entry ids inline, ascending
    /// (unused slots are `NONE`), or `[SPILLED, key]` for a [`PackedSet`] in
    /// `Words::postings` once there are three or more. A set goes back inline when it shrinks
    /// to two, so "inline" is exactly "at most two postings".
    postings: [u32; 2],
}

impl Slot for WordRec {
    const FREE: Self = WordRec {
        text: NONE,
        postings: [NONE, NONE],
    };

    fn is_free(&self) -> bool {
        self.text == NONE
    }
}

/// The word index. See the module docs.
pub(super) struct Words {
    /// Word records by word id.
    recs: Table<WordRec>,
    /// The words' lowercase texts, an arena like the names'.
    texts: Arena,
    /// Word ids hashed by their text, for exact lookups (register, removal, name lookup).
    by_text: ShardedTable<u32>,
    hasher: hashbrown::DefaultHashBuilder,
    /// Word ids in text order, for prefix ranges: `(first 4 text bytes << 32) | word id`
    /// (see [`pad4`]), so most comparisons need not read the text.
    order: BlockSet<u64>,
    /// Posting sets of the words with more than two entries.
    postings: ChunkSlab<PackedSet>,
}

impl Words {
    /// Heap bytes held by part: records, texts, the hash table by text, the prefix order,
    /// the packed posting sets.
    pub(super) fn heap_bytes(&self) -> [(&'static str, usize); 5] {
        let sets: usize = self
            .postings
            .iter()
            .map(|(_, s)| s.heap_bytes())
            .sum::<usize>()
            + self.postings.capacity() * std::mem::size_of::<PackedSet>();
        [
            ("word records", self.recs.heap_bytes()),
            ("word texts", self.texts.heap_bytes()),
            ("words by text", self.by_text.heap_bytes()),
            ("word order", self.order.heap_bytes()),
            ("postings", sets),
        ]
    }

    pub(super) fn new() -> Self {
        Words {
            recs: Table::new(),
            texts: Arena::default(),
            by_text: ShardedTable::new(),
            hasher: hashbrown::DefaultHashBuilder::default(),
            order: BlockSet::new(),
            postings: ChunkSlab::new(),
        }
    }

    /// Live words.
    #[inline]
    pub(super) fn len(&self) -> usize {
        self.recs.len()
    }

    /// Reserves room in the text arena for the new words of a name of `name_len` bytes (see
    /// [`texts_bound`]); false, reserving nothing, if there is none.
    pub(super) fn reserve_texts(&mut self, name_len: usize) -> bool {
        self.texts.reserve(texts_bound(name_len))
    }

    /// Whether [`Words::reserve_texts`] would succeed.
    pub(super) fn has_room_for(&self, name_len: usize) -> bool {
        self.texts.has_room(texts_bound(name_len))
    }

    /// Gives back the text room reserved and not used, once the reserved names are posted.
    pub(super) fn release_texts(&mut self) {
        self.texts.release();
    }

    /// The text arena's cap (tests set it small).
    #[cfg(test)]
    pub(super) fn set_text_cap(&mut self, bytes: usize) {
        self.texts.set_cap(bytes);
    }

    /// The text of word `w`.
    #[inline]
    pub(super) fn text(&self, w: u32) -> &[u8] {
        self.texts.get(w, self.recs[w].text)
    }

    #[inline]
    fn hash(&self, text: &[u8]) -> u64 {
        self.hasher.hash_one(text)
    }

    /// The id of the word `text` (lowercase), if indexed.
    #[inline]
    pub(super) fn find(&self, text: &[u8]) -> Option<u32> {
        self.find_hashed(text, self.hash(text))
    }

    #[inline]
    fn find_hashed(&self, text: &[u8], hash: u64) -> Option<u32> {
        self.by_text.find(hash, |&w| self.text(w) == text).copied()
    }

    /// Where the word `text` is (or would go) in `order`.
    fn position(&self, text: &[u8]) -> Result<(usize, usize), (usize, usize)> {
        let p4 = pad4(text);
        self.order.search(|&item| {
            ((item >> 32) as u32)
                .cmp(&p4)
                .then_with(|| self.text(item as u32).cmp(text))
        })
    }

    /// Ids of the words whose text starts with `prefix` (non-empty), in text order (the word
    /// equal to it first). A prefix of up to 4 bytes is matched on the items alone.
    pub(super) fn range<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = u32> + 'a {
        let prefix = prefix.as_bytes();
        let p4 = pad4(prefix);
        let start = self
            .order
            .search(|&item| {
                ((item >> 32) as u32)
                    .cmp(&p4)
                    .then_with(|| self.text(item as u32).cmp(prefix))
                    .then(Ordering::Greater)
            })
            .unwrap_or_else(|at| at);
        // Words contain no NUL byte, so a word shorter than a short prefix cannot match the
        // zero padding of its item.
        let shift = 8 * 4usize.saturating_sub(prefix.len()) as u32;
        self.order
            .iter_from(start)
            .take_while(move |&item| {
                let top = item >> 32;
                top >> shift == u64::from(p4) >> shift
                    && (prefix.len() <= 4 || self.text(item as u32).starts_with(prefix))
            })
            .map(|item| item as u32)
    }

    /// How many entries word `w` is posted under.
    #[inline]
    pub(super) fn posting_count(&self, w: u32) -> usize {
        match self.recs[w].postings {
            [SPILLED, key] => self.postings[key as usize].len(),
            [NONE, _] => 0,
            [_, NONE] => 1,
            _ => 2,
        }
    }

    /// Whether word `w` has a packed set of at least `n` postings.
    #[inline]
    pub(super) fn has_packed(&self, w: u32, n: usize) -> bool {
        match self.recs[w].postings {
            [SPILLED, key] => self.postings[key as usize].len() >= n,
            _ => false,
        }
    }

    /// The entries posted under word `w`, ascending.
    #[inline]
    pub(super) fn postings(&self, w: u32) -> PostingIter<'_> {
        let p = &self.recs[w].postings;
        match *p {
            [SPILLED, key] => PostingIter::Packed(self.postings[key as usize].iter()),
            [NONE, _] => PostingIter::Inline([].iter()),
            [_, NONE] => PostingIter::Inline(p[..1].iter()),
            _ => PostingIter::Inline(p.iter()),
        }
    }

    /// A cursor over word `w`'s postings that seeks forward (see [`PostingCursor::seek`]).
    #[inline]
    pub(super) fn cursor(&self, w: u32) -> PostingCursor<'_> {
        match self.recs[w].postings {
            [SPILLED, key] => {
                PostingCursor::Packed(PackedCursor::new(&self.postings[key as usize]))
            }
            p => PostingCursor::Inline(p),
        }
    }

    /// Moves a posting of word `w` from key `old` to key `new` (an entry changed tier).
    pub(super) fn repost(&mut self, w: u32, old: u32, new: u32) {
        let p = &mut self.recs[w].postings;
        match *p {
            [SPILLED, key] => {
                let set = &mut self.postings[key as usize];
                let removed = set.remove(old);
                debug_assert!(removed, "a reposted key is posted");
                set.insert(new);
            }
            [a, NONE] => {
                debug_assert_eq!(a, old);
                p[0] = new;
            }
            [a, b] => {
                let other = if a == old { b } else { a };
                debug_assert!(a == old || b == old);
                *p = [other.min(new), other.max(new)];
            }
        }
    }

    /// Posts key `entry` (an entry's posting key) under `word`; a no-op if it is there
    /// already (a name may repeat a word). Returns the word's id.
    pub(super) fn post(&mut self, entry: u32, word: &str) -> u32 {
        let text = word.as_bytes();
        let hash = self.hash(text);
        let w = match self.find_hashed(text, hash) {
            Some(w) => w,
            None => self.create(text, hash),
        };
        let p = &mut self.recs[w].postings;
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

    /// Adds word `text` (hashed `hash`) without postings, in text room reserved for it;
    /// returns its id.
    fn create(&mut self, text: &[u8], hash: u64) -> u32 {
        let owner = self.recs.next_id();
        let w = self.recs.insert(WordRec {
            text: self.texts.push(owner, text),
            postings: [NONE, NONE],
        });
        debug_assert_eq!(w, owner);
        let Words {
            recs,
            texts,
            hasher,
            by_text,
            ..
        } = self;
        by_text.insert_unique(hash, w, |&x| hasher.hash_one(texts.get(x, recs[x].text)));
        let at = self
            .position(text)
            .expect_err("a new word is not indexed yet");
        self.order
            .insert_at(at, (u64::from(pad4(text)) << 32) | u64::from(w));
        w
    }

    /// Removes the `(word id << 32) | entry id` postings in `unpost` (sorted, distinct, all
    /// posted), visiting each word's posting set once, and drops the words left without
    /// postings. `items` and `decoded` are reused buffers.
    pub(super) fn unpost_sorted(
        &mut self,
        unpost: &[u64],
        items: &mut Vec<u32>,
        decoded: &mut Vec<u32>,
    ) {
        let mut emptied = Vec::new();
        for group in unpost.chunk_by(|a, b| a >> 32 == b >> 32) {
            let w = (group[0] >> 32) as u32;
            items.clear();
            items.extend(group.iter().map(|&x| x as u32));
            if self.unpost(w, items, decoded) {
                emptied.push(w);
            }
        }
        for w in emptied {
            self.drop(w);
        }
        self.texts.start_compaction_if_due();
    }

    /// Removes `items` (sorted, distinct, all posted) from word `w`'s postings; true if none
    /// are left.
    fn unpost(&mut self, w: u32, items: &[u32], decoded: &mut Vec<u32>) -> bool {
        let p = &mut self.recs[w].postings;
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

    /// Forgets word `w`, whose postings just became empty.
    fn drop(&mut self, w: u32) {
        let text = self.text(w);
        let hash = self.hash(text);
        let p4 = pad4(text);
        // Among the words sharing its 4-byte prefix, the word's item is found by its id alone
        // (no text read per comparison) when they are few, by its text otherwise.
        let group = self
            .order
            .search(|&item| ((item >> 32) as u32).cmp(&p4).then(Ordering::Greater))
            .unwrap_or_else(|at| at);
        let at = self
            .order
            .scan_for(group, (u64::from(p4) << 32) | u64::from(w), WORD_SCAN)
            .unwrap_or_else(|| self.position(text).expect("a live word is ordered"));
        self.order.remove_at(at);
        let Words {
            recs,
            texts,
            hasher,
            by_text,
            ..
        } = self;
        let hashed = by_text.remove(
            hash,
            |&x| x == w,
            |&x| hasher.hash_one(texts.get(x, recs[x].text)),
        );
        assert!(hashed.is_some(), "a live word is hashed");
        let rec = self.recs.remove(w);
        self.texts.free(w, rec.text);
        if self.recs.is_empty() {
            // Give the memory back once no word is left.
            self.texts.clear();
            self.by_text.clear();
            self.order = BlockSet::new();
            self.postings = ChunkSlab::new();
        }
    }

    /// One step of the text arena's compaction, if one is under way (see [`Arena`]).
    pub(super) fn compact_texts_step(&mut self) {
        let owners = self.recs.id_bound() as u32;
        let step = self.texts.step_owners(owners);
        for w in step.clone() {
            if let Some(rec) = self.recs.get(w).filter(|r| !r.is_free()) {
                let to = self.texts.move_record(rec.text);
                self.recs[w].text = to;
            }
        }
        self.texts.end_step(step, owners);
    }

    /// Whether a compaction of the text arena is under way.
    pub(super) fn is_compacting(&self) -> bool {
        self.texts.is_compacting()
    }

    /// The text arena.
    #[cfg(test)]
    pub(super) fn texts(&self) -> &Arena {
        &self.texts
    }

    /// Word `w`'s postings field: inline ids, or `[SPILLED, key]`.
    #[cfg(test)]
    pub(super) fn raw_postings(&self, w: u32) -> [u32; 2] {
        self.recs[w].postings
    }

    /// Packed posting sets.
    #[cfg(test)]
    pub(super) fn packed_sets(&self) -> usize {
        self.postings.len()
    }

    /// Whether some word has two inline postings.
    #[cfg(test)]
    pub(super) fn has_inline_pair(&self) -> bool {
        self.recs
            .iter()
            .any(|(_, r)| r.postings[0] != SPILLED && r.postings[1] != NONE)
    }

    /// Whether every allocation went back (no word is left).
    #[cfg(test)]
    pub(super) fn is_released(&self) -> bool {
        self.recs.capacity() == 0
            && self.texts.capacity() == 0
            && self.postings.capacity() == 0
            && self.order.is_empty()
    }

    /// Checks the word index against `expect`, each word's text and the entries that must be
    /// posted under it: the order and the exact lookups agree, and postings are inline exactly
    /// when at most two. Returns (inline words, spilled words).
    #[cfg(test)]
    pub(super) fn check(
        &self,
        expect: &std::collections::BTreeMap<String, Vec<u32>>,
    ) -> (usize, usize) {
        assert_eq!(self.len(), expect.len());
        let texts: Vec<&[u8]> = self.order.iter().map(|x| self.text(x as u32)).collect();
        let want: Vec<&[u8]> = expect.keys().map(|k| k.as_bytes()).collect();
        assert_eq!(texts, want, "word order");
        let (mut inline, mut spilled) = (0, 0);
        for item in self.order.iter() {
            let w = item as u32;
            let text = self.text(w);
            assert_eq!((item >> 32) as u32, pad4(text));
            assert_eq!(self.find(text), Some(w));
            let posted = &expect[std::str::from_utf8(text).unwrap()];
            assert_eq!(self.postings(w).collect::<Vec<_>>(), *posted);
            assert_eq!(self.posting_count(w), posted.len());
            if posted.len() <= 2 {
                assert_ne!(self.recs[w].postings[0], SPILLED);
                inline += 1;
            } else {
                assert_eq!(self.recs[w].postings[0], SPILLED);
                spilled += 1;
            }
        }
        assert_eq!(self.postings.len(), spilled);
        assert_eq!(self.recs.iter().count(), self.len());
        (inline, spilled)
    }
}

/// A cursor over one word's postings (see [`Words::cursor`]).
pub(super) enum PostingCursor<'a> {
    /// Up to two keys, ascending, `NONE` for an unused slot (`NONE` is above every key).
    Inline([u32; 2]),
    Packed(PackedCursor<'a>),
}

impl PostingCursor<'_> {
    /// The first posting at least `target`, or `None`; `target` must be at least the previous
    /// call's.
    #[inline]
    pub(super) fn seek(&mut self, target: u32) -> Option<u32> {
        match self {
            PostingCursor::Inline(p) => p.iter().copied().find(|&k| k >= target && k != NONE),
            PostingCursor::Packed(c) => c.seek(target),
        }
    }
}

/// The first four bytes of a word, zero-padded, as a big-endian `u32`: ordering words by it
/// agrees with their byte order (ties are broken by the full text).
#[inline]
pub(super) fn pad4(text: &[u8]) -> u32 {
    let mut b = [0u8; 4];
    let n = text.len().min(4);
    b[..n].copy_from_slice(&text[..n]);
    u32::from_be_bytes(b)
}

/// Reusable buffers for splitting text into lowercase words without an allocation per word.
#[derive(Default)]
pub(super) struct Scratch {
    pub(super) buf: String,
    pub(super) spans: Vec<(usize, usize)>,
    /// One non-ASCII character's fold, before it is split into word characters.
    folded: String,
}

impl Scratch {
    pub(super) fn words(&self) -> impl Iterator<Item = &str> {
        self.spans.iter().map(|&(a, b)| &self.buf[a..b])
    }
}

/// Whether `c` is an accent or other diacritic that search folds away: the generic combining
/// diacritics blocks (Latin, Greek, Cyrillic accents: U+0300-036F, U+1AB0-1AFF,
/// U+1DC0-1DFF, U+20D0-20FF, U+FE20-FE2F). Script-specific marks (Indic vowel signs and
/// viramas, Hebrew and Arabic points) are kept: there they change the letter, not decorate it.
fn is_diacritic(c: char) -> bool {
    matches!(c,
        '\u{0300}'..='\u{036F}'
        | '\u{1AB0}'..='\u{1AFF}'
        | '\u{1DC0}'..='\u{1DFF}'
        | '\u{20D0}'..='\u{20FF}'
        | '\u{FE20}'..='\u{FE2F}')
}

/// Appends the search fold of one character to `out`: compatibility decomposition (NFKD:
/// full-width letters, ligatures such as `ﬁ`, superscripts), full Unicode case folding (`ß` →
/// `ss`, `İ` → `i̇`), diacritics dropped ([`is_diacritic`]: `é` → `e`, however the accent was
/// written), and what is left composed again (NFC, so Hangul syllables and letters whose
/// marks are kept stay one character). A character whose fold would be more than half again
/// as long as it (the rare compatibility characters that spell out words, such as `㌀` or
/// `ﷺ`) is only lowercased, so a name's words never take more than 1.5 times its bytes.
///
/// Folding is character by character, without context: the fold of a string is the
/// concatenation of its characters' folds, so the fold of a prefix is a prefix of the fold
/// and prefix search keeps working on folded words. Names and queries go through this same
/// function (the peer sends the query as typed; the index folds both).
pub fn fold_char(c: char, out: &mut String) {
    use caseless::Caseless;
    use unicode_normalization::UnicodeNormalization;
    if c.is_ascii() {
        out.push(c.to_ascii_lowercase());
        return;
    }
    let start = out.len();
    out.extend(
        std::iter::once(c)
            .nfkd()
            .default_case_fold()
            .nfkd()
            .filter(|&m| !is_diacritic(m))
            .nfc(),
    );
    if out.len() - start > c.len_utf8() * 3 / 2 {
        out.truncate(start);
        out.extend(c.to_lowercase());
    }
}

/// The search fold of a whole string ([`fold_char`] of each character).
pub fn fold(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        fold_char(c, &mut out);
    }
    out
}

/// Splits `text` into words: maximal runs of alphanumeric characters of its fold
/// ([`fold_char`], character by character), into `scratch` (replacing its contents).
pub(super) fn lower_words(text: &str, scratch: &mut Scratch) {
    let Scratch { buf, spans, folded } = scratch;
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
            // Folded at the end of `buf`, then split: a folded character can be several
            // (`ﬁ` → `fi`, `⑴` → `(1)`), or none (a lone accent, which joins the word around
            // it: `cafe\u{301}` is the word `cafe`).
            folded.clear();
            fold_char(c, folded);
            for f in folded.chars() {
                if f.is_alphanumeric() {
                    if start.is_none() {
                        start = Some(buf.len());
                    }
                    buf.push(f);
                } else if let Some(s) = start.take() {
                    spans.push((s, buf.len()));
                }
            }
        }
    }
    if let Some(s) = start {
        spans.push((s, buf.len()));
    }
}

#[cfg(test)]
mod fold_tests {
    use super::*;
    use proptest::prelude::*;

    fn words(text: &str) -> Vec<String> {
        let mut s = Scratch::default();
        lower_words(text, &mut s);
        s.words().map(str::to_string).collect()
    }

    #[test]
    fn the_cases_of_issue_13_fold_alike() {
        // (what is typed, what the name says)
        for (typed, name) in [
            ("strasse", "straße"),
            ("STRASSE", "STRAẞE"),
            ("istanbul", "İstanbul"),
            ("istanbul", "ISTANBUL"),
            ("cafe", "cafe\u{301}"),
            ("cafe", "café"),
            ("café", "cafe\u{301}"),
            ("file", "\u{FB01}le"),
            ("file", "ＦＩＬＥ"),
            ("σοφια", "ΣΟΦΊΑ"),
            ("σοφιας", "ΣΟΦΊΑΣ"),
        ] {
            assert_eq!(words(typed), words(name), "{typed:?} vs {name:?}");
        }
        assert_eq!(
            words("Straße – Café Ｎｏ.５"),
            ["strasse", "cafe", "no", "5"]
        );
        // Non-Latin letters and their own marks survive: Hangul, Devanagari, Japanese.
        assert_eq!(words("한국어 노래"), ["한국어", "노래"]);
        assert_eq!(words("東京 ｶﾀｶﾅ"), ["東京", "カタカナ"]);
    }

    #[test]
    fn invisible_format_characters_split_words() {
        assert_eq!(words("song\u{202E}3pm.exe"), ["song", "3pm", "exe"]);
        assert_eq!(words("a\u{200B}b"), ["a", "b"]);
    }

    #[test]
    fn a_character_that_spells_out_words_is_only_lowercased() {
        // U+FDFA (3 bytes) decomposes to 33 bytes: kept, so words stay within 1.5x the name.
        let mut out = String::new();
        fold_char('\u{FDFA}', &mut out);
        assert_eq!(out, "\u{FDFA}");
        // U+3300 (3 bytes) would be four katakana (12 bytes).
        assert_eq!(fold("\u{3300}"), "\u{3300}");
    }

    proptest! {
        #[test]
        fn the_fold_of_a_prefix_is_a_prefix_of_the_fold(name in "\\PC{0,40}", cut in 0usize..40) {
            let cut = name.char_indices().nth(cut).map_or(name.len(), |(i, _)| i);
            let (whole, prefix) = (fold(&name), fold(&name[..cut]));
            prop_assert!(whole.starts_with(&prefix));
        }

        #[test]
        fn words_take_at_most_half_again_the_name(name in "\\PC{0,60}") {
            let mut s = Scratch::default();
            lower_words(&name, &mut s);
            let bytes: usize = s.words().map(str::len).sum();
            prop_assert!(bytes <= name.len() * 3 / 2 + 1, "{} > {}", bytes, name.len());
        }

        #[test]
        fn folding_twice_changes_nothing_for_words(name in "\\PC{0,40}") {
            let once = words(&name);
            let twice = words(&once.join(" "));
            prop_assert_eq!(once, twice);
        }
    }
}
