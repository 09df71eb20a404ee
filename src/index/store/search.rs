//! Keyword search over names, its ranking, filters and pages: [`Index::search_page`].
//!
//! # Ranking
//! A hit's rank is, best first:
//! 1. more query words equal to a whole word of the name (the rest match a word's prefix);
//! 2. a higher holder tier: 1 holder is tier 0, 2–3 tier 1, 4–7 tier 2, …
//!    (`floor(log2(holders))`, capped at [`MAX_TIER`]); holders within a tier do not order;
//! 3. the smaller entry id (a stable order the index iterates; ids are reused after removal).
//!
//! Every word's postings are kept in the order of (2, 3) (see [`posting_key`]), so a search
//! walks the candidates of one query word (the driver) best first: first the postings of the
//! word equal to it (whole matches), then those of the longer words it prefixes. Each walk
//! stops as soon as its next candidate cannot beat the worst of the best `limit + 1` kept:
//! the work is about `limit` candidates (plus those the other query words or the filter
//! reject, plus one look per word in a prefix's range), not the number of matches. A budget of
//! work units ([`SEARCH_WORK_BUDGET`]) bounds what rejections can cost; a search that hits it
//! says so (`partial`).
//!
//! While a peer is departing (see `depart.rs`) its holdings are not counted: a candidate is
//! ranked by its *true* key, the one its live holder count gives, which is never better than
//! the key it is posted under, so the walk's stopping rule (on posted keys) stays exact.
//!
//! # Pages
//! A cursor is the rank of the last hit shown (whole words, posting key) with a fingerprint of
//! the query and filter. The next page is the best hits ranked strictly after that position
//! in the index as it is then: a file that changed tier or was removed in between is simply
//! where it now ranks (it may show twice or not at all), and no position is invalid.

use super::words::{lower_words, Scratch};
use super::{key_tier, tier_of, Index, ID_MASK};
#[cfg(doc)]
use super::{posting_key, MAX_TIER};
use crate::wire::{SearchCursor, SearchFilter, SearchHit};
use std::collections::BinaryHeap;

/// Work units one search may spend. A unit is about a posting read and checked against
/// the other query words' bitmaps (some nanoseconds); a word of a prefix's range looked at
/// costs [`WORD_UNITS`], a file record read for a size filter [`SIZE_UNITS`], a name read
/// [`NAME_UNITS`], and listing another query word's postings one unit per
/// [`POSTINGS_PER_UNIT`]. So a search holds the loop for well under a millisecond of work.
pub const SEARCH_WORK_BUDGET: usize = 32_768;
/// Units of a word of the driver's range looked at (a record and a posting block).
const WORD_UNITS: usize = 2;
/// Units of a file record read.
const SIZE_UNITS: usize = 4;
/// Units of a name decoded and split into words.
const NAME_UNITS: usize = 8;
/// Postings of another query word listed per unit.
const POSTINGS_PER_UNIT: usize = 8;

/// Most distinct words in a query.
pub const MAX_QUERY_WORDS: usize = 32;

/// How many postings per candidate of the driver another query word may have and still be
/// checked by its postings (a list or bitmap) rather than by reading each candidate's name.
const BITS_POSTINGS_PER_CANDIDATE: usize = 8;

/// Below one posting per this many entries, a query word's postings are kept as a sorted list
/// rather than a bitmap over all entry ids.
const SPARSE_BITS: usize = 64;

/// Words of a query word's range counted when choosing the driver; a longer range counts as
/// enormous.
const PICK_MAX_WORDS: usize = 1024;

/// One page of search results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPage {
    /// Best first.
    pub hits: Vec<SearchHit>,
    /// Matches ranked after the cursor (all on a first page): exact if `total_exact`, else a
    /// lower bound.
    pub total: u64,
    /// Whether `total` is exact.
    pub total_exact: bool,
    /// Where the next page starts, if more may match.
    pub next: Option<SearchCursor>,
    /// The work budget ran out before the best hits were known for sure.
    pub partial: bool,
    /// Work units spent (what the rate limits charge), the hits' records not counted.
    pub work: u64,
}

/// Why a search was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SearchError {
    /// The cursor belongs to another query or filter, or is not one the server gives.
    BadCursor,
    /// More than [`MAX_QUERY_WORDS`] distinct words.
    TooManyWords,
}

impl std::fmt::Display for SearchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            SearchError::BadCursor => "the page token belongs to another search",
            SearchError::TooManyWords => "too many words in the query",
        })
    }
}

impl std::error::Error for SearchError {}

/// A source of candidates: the driver's whole word, or one word it prefixes.
struct Source {
    word: u32,
    /// 1 for the whole word, 0 for a longer one.
    whole: u32,
}

impl Index {
    /// Keyword search, first page, no filter: at most `limit` hits best first, and whether
    /// more matched. See [`Index::search_page`].
    pub fn search(&mut self, query: &str, limit: usize) -> (Vec<SearchHit>, bool) {
        let page = self
            .search_page(query, &SearchFilter::default(), None, limit)
            .expect("no cursor");
        (page.hits, page.next.is_some())
    }

    /// Keyword search over names: every query word (see the module docs for words) must
    /// equal or prefix a word of the name, and the file meet `filter`. Returns the best
    /// `limit` hits ranked after `after` (see the module docs of `search.rs` for the ranking,
    /// the work bound and pages), or an error for a cursor of another query or filter.
    pub fn search_page(
        &mut self,
        query: &str,
        filter: &SearchFilter,
        after: Option<&SearchCursor>,
        limit: usize,
    ) -> Result<SearchPage, SearchError> {
        self.post_pending();
        let mut scratch = Scratch::default();
        lower_words(query, &mut scratch);
        let mut qwords: Vec<String> = scratch.words().map(str::to_owned).collect();
        qwords.sort_unstable();
        qwords.dedup();
        if qwords.len() > MAX_QUERY_WORDS {
            return Err(SearchError::TooManyWords);
        }
        let check = fingerprint(&qwords, filter);
        let nq = qwords.len() as u32;
        let after = match after {
            None => None,
            Some(c) if c.check != check || u32::from(c.whole) > nq => {
                return Err(SearchError::BadCursor)
            }
            Some(c) => Some(rank(nq, u32::from(c.whole), c.key)),
        };
        let mut page = SearchPage {
            hits: Vec::new(),
            total: 0,
            total_exact: true,
            next: None,
            partial: false,
            work: 0,
        };
        if qwords.is_empty() || limit == 0 {
            page.total_exact = qwords.is_empty();
            return Ok(page);
        }
        let mut work = 0usize;
        let budget = self.search_budget;

        // The driver: the query word whose range has the fewest postings (a range too long
        // to count counts as enormous).
        let mut pick = 0;
        if qwords.len() > 1 {
            let mut best = usize::MAX;
            for (i, q) in qwords.iter().enumerate() {
                if work > budget {
                    // Out of budget already: the sources loop below stops at once.
                    break;
                }
                let (count, visited) = self.count_postings(q, best);
                work += visited * WORD_UNITS;
                if count < best {
                    (best, pick) = (count, i);
                }
            }
        }
        // The other words: by their postings (a sorted list or a bitmap) when they are at
        // most a few per candidate of the driver, else by the candidate's name.
        let picked = if qwords.len() > 1 {
            self.count_postings(&qwords[pick], usize::MAX).0
        } else {
            0
        };
        let most = picked.saturating_mul(BITS_POSTINGS_PER_CANDIDATE);
        let mut bits: Vec<WordBits> = Vec::new();
        let mut by_name: Vec<String> = Vec::new();
        for (i, q) in qwords.iter().enumerate() {
            if i == pick {
                continue;
            }
            if work > budget {
                // No candidate will be examined (the sources loop stops at once).
                break;
            }
            let (count, visited) = self.count_postings(q, most.saturating_add(1));
            work += visited * WORD_UNITS;
            // (A range too long to count, or postings that would cost half the budget to
            // list, go by name: their cost is then per candidate, under the budget.)
            if count <= most && count / POSTINGS_PER_UNIT <= budget / 2 {
                work += count / POSTINGS_PER_UNIT;
                bits.push(self.word_bits(q, count));
            } else {
                by_name.push(q.clone());
            }
        }
        let cond = Cond::new(filter);
        let min_tier = tier_of(filter.min_holders);

        // Departing holders are not counted: candidates are ranked by their true key.
        let departing = self.has_departures();
        let d = qwords[pick].as_str();
        let exact = self.words.find(d.as_bytes());
        let sources = exact
            .map(|w| Source { word: w, whole: 1 })
            .into_iter()
            .chain(
                self.words
                    .range(d)
                    .filter(|&w| Some(w) != exact)
                    .map(|w| Source { word: w, whole: 0 }),
            );
        // The best `limit + 1` ranks (one more than shown, to know whether a next page
        // exists), worst on top.
        let cap = limit.saturating_add(1);
        let mut heap: BinaryHeap<u64> = BinaryHeap::new();
        // Entries seen through a longer word (a name may hold several words of the range),
        // a bitmap by entry id: its zeroed pages cost nothing until touched.
        let mut seen: Vec<u64> = Vec::new();
        let mut name_buf = Vec::new();
        let mut matched = 0u64;
        'sources: for src in sources {
            work += WORD_UNITS;
            if work > budget {
                page.partial = true;
                break;
            }
            // The best rank a candidate of this source can have is with every other query word
            // whole; the worst, with none.
            let (best_whole, worst_whole) = (src.whole + nq - 1, src.whole);
            if heap.len() == cap && rank(nq, best_whole, 0) > *heap.peek().expect("cap > 0") {
                // Its best candidate would not make the cut, nor would any later source's
                // (the longer words all share this bound).
                page.total_exact = false;
                if src.whole == 0 {
                    break;
                }
                continue;
            }
            let mut from = 0;
            if let Some(a) = after {
                if rank(nq, worst_whole, u32::MAX) <= a {
                    // Every candidate ranks before the cursor: shown already.
                    continue;
                }
                // (Not while a departure is in progress: an entry's true key may then be past
                // its posted one, see `depart.rs`.)
                if best_whole == worst_whole
                    && rank(nq, best_whole, 0) >> 32 == a >> 32
                    && !departing
                {
                    // One class of whole words: continue right after the cursor's key.
                    match (a as u32).checked_add(1) {
                        Some(k) => from = k,
                        None => continue,
                    }
                }
            }
            for key in self.words.postings_from(src.word, from) {
                if key_tier(key) < min_tier {
                    // Postings are in tier order: the rest hold too few.
                    break;
                }
                if heap.len() == cap && rank(nq, best_whole, key) > *heap.peek().expect("cap > 0") {
                    page.total_exact = false;
                    break;
                }
                work += 1;
                if work > budget {
                    page.partial = true;
                    break 'sources;
                }
                let e = key & ID_MASK;
                if src.whole == 0 {
                    // Whole matches were all examined in the first source.
                    if exact.is_some_and(|w| self.words.contains(w, key)) {
                        continue;
                    }
                    if seen.is_empty() {
                        seen = vec![0u64; self.entries.id_bound().div_ceil(64)];
                    }
                    let (word, bit) = (e as usize / 64, 1u64 << (e % 64));
                    if seen[word] & bit != 0 {
                        continue;
                    }
                    seen[word] |= bit;
                }
                let mut whole = src.whole;
                let mut all = true;
                for b in &bits {
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
                if cond.by_size {
                    work += SIZE_UNITS;
                }
                if !self.meets(e, &cond, filter) {
                    continue;
                }
                if !by_name.is_empty() || cond.by_ext() {
                    work += NAME_UNITS;
                    self.entries.decode_name(e, &mut name_buf);
                    let name = std::str::from_utf8(&name_buf).expect("names are stored from str");
                    if !cond.ext_ok(name) {
                        continue;
                    }
                    if !by_name.is_empty() {
                        match match_words(&by_name, name, &mut scratch) {
                            Some(n) => whole += n,
                            None => continue,
                        }
                    }
                }
                let key = if departing {
                    match self.live_posting_key(e) {
                        Some((k, _)) => k,
                        None => continue,
                    }
                } else {
                    key
                };
                let r = rank(nq, whole, key);
                if after.is_some_and(|a| r <= a) {
                    continue;
                }
                matched += 1;
                if heap.len() < cap {
                    heap.push(r);
                } else if r < *heap.peek().expect("cap > 0") {
                    heap.pop();
                    heap.push(r);
                }
            }
        }
        let ranks = heap.into_sorted_vec();
        let more = ranks.len() > limit;
        page.hits = ranks
            .iter()
            .take(limit)
            .map(|&r| self.hit((r as u32) & ID_MASK))
            .collect();
        page.total = matched;
        page.total_exact &= !page.partial && after.is_none();
        if nq == 1 && after.is_none() && filter.is_empty() && !page.total_exact && !departing {
            // One word, no filter: its whole word's postings are matches, counted for free;
            // all of them if no longer word shares the prefix.
            if let Some(w) = exact {
                page.total = page.total.max(self.words.posting_count(w) as u64);
                page.total_exact = !page.partial && self.words.range(d).nth(1).is_none();
            }
        }
        if more || (page.partial && !page.hits.is_empty()) {
            let last = ranks[page.hits.len() - 1];
            page.next = Some(SearchCursor {
                whole: (nq - (last >> 32) as u32) as u8,
                key: last as u32,
                check,
            });
        }
        page.work = work as u64;
        Ok(page)
    }

    /// Postings over `prefix`'s range, counted up to `stop` (and over at most
    /// [`PICK_MAX_WORDS`] words, beyond which the count is `usize::MAX`), and the words
    /// looked at.
    fn count_postings(&self, prefix: &str, stop: usize) -> (usize, usize) {
        let mut total = 0usize;
        let mut visited = 0;
        for w in self.words.range(prefix) {
            visited += 1;
            if visited > PICK_MAX_WORDS {
                return (usize::MAX, visited);
            }
            total += self.words.posting_count(w);
            if total >= stop {
                break;
            }
        }
        (total, visited)
    }

    /// The entries with a word starting with `prefix` (`postings` of them, counted by the
    /// caller), each marked whole if a word equals it.
    fn word_bits(&self, prefix: &str, postings: usize) -> WordBits {
        let exact = self.words.find(prefix.as_bytes());
        let range = self.words.range(prefix).map(|w| (Some(w) == exact, w));
        if postings.saturating_mul(SPARSE_BITS) < self.entries.id_bound() {
            // Few: a sorted list, searched per candidate.
            let mut list: Vec<u32> = Vec::with_capacity(postings);
            for (whole, w) in range {
                list.extend(
                    self.words
                        .postings(w)
                        .map(|k| (k & ID_MASK) << 1 | u32::from(whole)),
                );
            }
            list.sort_unstable();
            return WordBits::Sparse(list);
        }
        let words = self.entries.id_bound().div_ceil(64);
        let (mut any, mut whole) = (vec![0u64; words], Vec::new());
        for (exact, w) in range {
            if exact {
                whole = vec![0u64; words];
            }
            for k in self.words.postings(w) {
                let e = k & ID_MASK;
                let (i, bit) = (e as usize / 64, 1u64 << (e % 64));
                any[i] |= bit;
                if exact {
                    whole[i] |= bit;
                }
            }
        }
        WordBits::Dense { any, whole }
    }

    /// Whether entry `e` meets the filter's holder and size conditions.
    fn meets(&self, e: u32, cond: &Cond, filter: &SearchFilter) -> bool {
        let entry = &self.entries[e];
        if filter.min_holders > 1 && self.entry_holders(e) < filter.min_holders {
            return false;
        }
        if cond.by_size {
            let size = self.files[entry.file()].size();
            if size < filter.min_size || filter.max_size.is_some_and(|m| size > m) {
                return false;
            }
        }
        true
    }

    /// The holders of entry `e`'s file, departing ones not counted.
    fn entry_holders(&self, e: u32) -> u32 {
        self.live_holder_count(e)
    }

    /// Entry `e` as a search hit.
    fn hit(&self, e: u32) -> SearchHit {
        let file = &self.files[self.entries[e].file()];
        let mut name = Vec::new();
        self.entries.decode_name(e, &mut name);
        SearchHit {
            name: String::from_utf8(name).expect("names are stored from str"),
            size: file.size(),
            hash: file.hash,
            holders: self.entry_holders(e),
        }
    }

    /// Sets the work budget of a search (tests make it small).
    pub fn set_search_budget(&mut self, units: usize) {
        self.search_budget = units;
    }
}

/// A rank, smaller is better: fewer query words not whole, then the posting key.
#[inline]
fn rank(nq: u32, whole: u32, key: u32) -> u64 {
    (u64::from(nq - whole.min(nq)) << 32) | u64::from(key)
}

/// A fingerprint of the normalised query and the filter, so a cursor is not applied to
/// another search (FNV-1a).
fn fingerprint(qwords: &[String], filter: &SearchFilter) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    let mut eat = |bytes: &[u8]| {
        for &b in bytes {
            h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
        }
        h = (h ^ 0xff).wrapping_mul(0x0100_0193);
    };
    for q in qwords {
        eat(q.as_bytes());
    }
    eat(&filter.min_size.to_le_bytes());
    eat(&filter.max_size.unwrap_or(u64::MAX).to_le_bytes());
    for e in &filter.exts {
        eat(e.as_bytes());
    }
    eat(filter.kind.map_or("", |k| k.name()).as_bytes());
    eat(&filter.min_holders.to_le_bytes());
    h
}

/// The filter, prepared.
struct Cond {
    by_size: bool,
    /// Lowercase extensions allowed (empty: any), and those of the kind (`None`: any).
    exts: Vec<String>,
    kind: Option<&'static [&'static str]>,
}

impl Cond {
    fn new(filter: &SearchFilter) -> Self {
        Cond {
            by_size: filter.min_size > 0 || filter.max_size.is_some(),
            exts: filter
                .exts
                .iter()
                .map(|e| e.trim_start_matches('.').to_ascii_lowercase())
                .collect(),
            kind: filter.kind.map(|k| k.extensions()),
        }
    }

    fn by_ext(&self) -> bool {
        !self.exts.is_empty() || self.kind.is_some()
    }

    /// Whether `name`'s extension (after its last `.`) passes.
    fn ext_ok(&self, name: &str) -> bool {
        if !self.by_ext() {
            return true;
        }
        let Some((_, ext)) = name.rsplit_once('.') else {
            return false;
        };
        (self.exts.is_empty() || self.exts.iter().any(|e| e.eq_ignore_ascii_case(ext)))
            && self
                .kind
                .map_or(true, |k| k.iter().any(|e| e.eq_ignore_ascii_case(ext)))
    }
}

/// The entries a query word matches: those with a word of their name starting with it, and
/// which of them have a word equal to it.
enum WordBits {
    /// `entry << 1 | whole`, sorted (an entry may be listed twice, through the word equal to
    /// the query word and a longer one).
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
                let mut found = None;
                for &x in list[at..].iter().take_while(|&&x| x >> 1 == e) {
                    found = Some(found.unwrap_or(false) | (x & 1 == 1));
                }
                found
            }
            WordBits::Dense { any, whole } => {
                let (i, bit) = (e as usize / 64, 1u64 << (e % 64));
                (any[i] & bit != 0).then(|| whole.get(i).is_some_and(|w| w & bit != 0))
            }
        }
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
