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
//! work units ([`SEARCH_WORK_BUDGET`]) bounds what rejections can cost, and under indexd a time
//! limit ([`SEARCH_TIME_LIMIT`]) bounds the search with its answer whatever the units'
//! calibration: the walk and the set-up's scans of long ranges stop earlier by 1.5 times
//! what building the answer has cost lately (a moving average per hit, measured on each
//! answer); a search that hits either says so (`partial`).
//!
//! # Several query words
//! An entry is posted under each of its words with the same key, so the query words' postings
//! can be intersected in rank order:
//! - With no filter, the names holding *every* query word whole rank first; if there are at
//!   least `limit + 1` of them, they are the page: the whole words' postings are intersected
//!   by leapfrogging cursors ([`PostingCursor::seek`]: each list skips, block by block, to the
//!   key the last one stopped at), with no look at the ranges of longer words.
//! - Otherwise the driver (the query word whose range has the fewest postings) is walked, and
//!   each other query word is checked by seeking through its range's postings in step (when
//!   the range has few long lists; a candidate that misses moves the driver to the next key
//!   that word holds), else against a list or bitmap of its postings (when they are few per
//!   candidate), else against the candidate's name.
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

use super::words::{lower_words, PostingCursor, Scratch, Words};
use super::{key_tier, tier_of, Index, ID_MASK};
#[cfg(doc)]
use super::{posting_key, MAX_TIER};
use crate::wire::{SearchCursor, SearchFilter, SearchHit};
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

/// Work units one search may spend. A unit is about a posting read and checked against
/// the other query words' bitmaps (some nanoseconds); a word of a prefix's range looked at
/// costs [`WORD_UNITS`], a file record read for a size filter [`SIZE_UNITS`], a name read
/// [`NAME_UNITS`], and listing another query word's postings one unit per
/// [`POSTINGS_PER_UNIT`]. So a search holds the loop for well under a millisecond of work.
pub const SEARCH_WORK_BUDGET: usize = 32_768;
/// The time limit indexd gives a search, its answer built (see
/// [`Index::set_search_time_limit`]).
pub const SEARCH_TIME_LIMIT: Duration = Duration::from_micros(400);
/// What building one hit of an answer is taken to cost (ns) until searches have measured it
/// (see [`Index::set_search_time_limit`]).
pub(super) const INITIAL_HIT_NS: u32 = 500;
/// The walk stops this many halves of the answer's expected building cost before the time
/// limit (a margin for the answer's cache misses, which vary more than their mean).
const HIT_RESERVE_HALVES: u32 = 3;
/// At most this share of the time limit is reserved for building the answer.
const HIT_RESERVE_MAX_SHARE: u32 = 2;
/// Answers of fewer hits do not update the cost per hit (their fixed costs would weigh).
const HIT_SAMPLE_MIN: usize = 16;
/// Most names of answers given back that are kept for the next answers
/// ([`Index::recycle_hits`]; indexd's pages hold at most 100 hits by default).
pub(super) const SPARE_HITS: usize = 1024;
/// A name buffer given back of more capacity than this is dropped, not kept.
pub(super) const SPARE_NAME_BYTES: usize = 1024;

/// Work units between two readings of the clock against the time limit (a few µs of work).
/// The clock is first read after that much work, so a search that needs less is never cut
/// short, however long the thread waited for a CPU meanwhile: its answer depends on the
/// index, not on the machine's load.
const TIME_CHECK_UNITS: usize = 256;
/// Units of a word of the driver's range looked at (a record and a posting block).
const WORD_UNITS: usize = 2;
/// Units of a file record read.
const SIZE_UNITS: usize = 4;
/// Units of a name decoded and split into words.
const NAME_UNITS: usize = 8;
/// Postings of another query word listed per unit.
const POSTINGS_PER_UNIT: usize = 4;
/// Another query word's postings are listed only if that costs at most this share of the
/// budget (listing cannot stop half way; a word with more goes by name, per candidate, where
/// the budget and the time limit can stop the walk).
const LIST_SHARE: usize = 8;

/// The search of names that hold every query word whole (see `Index::all_whole`) may spend
/// at most this share of the budget before the full search takes over.
const WHOLE_SHARE: usize = 8;

/// Words of a range looked at between two readings of the clock in a search's set-up.
const WORDS_PER_CLOCK: usize = 64;

/// Most distinct words in a query.
pub const MAX_QUERY_WORDS: usize = 32;

/// How many postings per candidate of the driver another query word may have and still be
/// checked by its postings (a list or bitmap) rather than by reading each candidate's name.
const BITS_POSTINGS_PER_CANDIDATE: usize = 8;

/// Bitmaps kept for the next search (one per query word listed, one for the entries seen; more
/// words than this allocate their own).
const MAX_POOLED_BITMAPS: usize = 4;

/// Bitmaps the pool holds ready between searches (more are kept once searches have taken
/// them, up to [`MAX_POOLED_BITMAPS`]): the one a prefix's walk takes for the entries seen.
const READY_BITMAPS: usize = 1;

/// Words of bitmap memory one [`Index::continue_search_memory`] step makes ready (32 KiB:
/// eight pages, each faulted in for some µs).
#[cfg(not(test))]
const MEMORY_STEP_WORDS: usize = 4096;
/// Small in tests, so that a small index takes many steps.
#[cfg(test)]
const MEMORY_STEP_WORDS: usize = 4;

/// A pooled bitmap of at most this many words (256 KiB, 2M entry ids) grows in place; a
/// larger one gets a successor (see [`Index::continue_search_memory`]).
#[cfg(not(test))]
const GROW_IN_PLACE_WORDS: usize = 1 << 15;
/// Small in tests, so that a small index has large bitmaps.
#[cfg(test)]
const GROW_IN_PLACE_WORDS: usize = 64;

/// At most this many postings of a query word are kept as a sorted list (sorting more costs
/// more than setting bits in a pooled bitmap).
const SPARSE_MAX: usize = 4096;

/// Below one posting per this many entries, a query word's postings are kept as a sorted list
/// rather than a bitmap over all entry ids.
const SPARSE_BITS: usize = 64;

/// Words of a query word's range counted when choosing the driver; a longer range counts as
/// enormous.
const PICK_MAX_WORDS: usize = 1024;

/// Another query word is checked by seeking through its range's postings alongside the
/// driver's ([`SeekWord`]) when at most this many words of its range have more than
/// [`SEEK_SMALL_POSTINGS`] postings (each gets a cursor), and the others at most
/// [`SEEK_MAX_SMALL`] in all (merged into one sorted list). A check costs a comparison per
/// cursor only when the candidate has passed the nearest of them, so many cursors cost less
/// than reading the candidate's name (about a microsecond in cold memory at 10M entries),
/// the check that takes the words seeking cannot. (All three are tiny in tests, so that the
/// property tests exercise the other checks too.)
const SEEK_MAX_CURSORS: usize = if cfg!(test) { 2 } else { 128 };
/// See [`SEEK_MAX_CURSORS`].
const SEEK_MAX_SMALL: usize = if cfg!(test) { 2 } else { 4096 };
/// Most words of a range looked at for a check by seeking (a longer range goes the other
/// ways, which count its postings).
const SEEK_MAX_WORDS: usize = if cfg!(test) { 3 } else { 256 };
/// When the driver has fewer candidates than this, the other query words are checked against
/// their names, without a look at their ranges. (Only none in tests, so that they exercise
/// the other checks.)
const NAME_CHECK_BELOW: usize = if cfg!(test) { 1 } else { 9 };
/// See [`SEEK_MAX_CURSORS`].
const SEEK_SMALL_POSTINGS: usize = if cfg!(test) { 1 } else { 32 };
/// Cursors of a check by seeking moved per work unit.
const CURSORS_PER_UNIT: usize = 8;

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

/// What [`Index::all_whole`] found of the names holding every query word whole.
enum Whole {
    /// The page: as many as asked for (or, if partial, those found by the deadline).
    Page(Vec<u32>, bool),
    /// All of them, fewer than asked for.
    Fewer(Vec<u32>),
    /// Not known: the intersection ran out of its share of the budget.
    Unknown,
}

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
        // The time limit, checked every `TIME_CHECK_UNITS` of work in the candidates' walk,
        // less what building the answer is expected to take: the limit bounds the server's
        // time for the search, its answer included.
        let started = Instant::now();
        let deadline = self.search_time_limit.map(|t| {
            let hits = limit.min(u32::MAX as usize) as u32;
            let reserve = Duration::from_nanos(u64::from(
                self.search_hit_ns
                    .saturating_mul(hits)
                    .saturating_mul(HIT_RESERVE_HALVES)
                    / 2,
            ))
            .min(t / HIT_RESERVE_MAX_SHARE);
            started + (t - reserve)
        });
        let mut next_check = TIME_CHECK_UNITS;
        let mut out_of_time = |work: usize| {
            if work < next_check {
                return false;
            }
            next_check = work + TIME_CHECK_UNITS;
            deadline.is_some_and(|d| Instant::now() >= d)
        };

        // Several words, no filter: if at least `limit + 1` names hold every query word whole,
        // those are the page (they rank before any with a prefix match), found by
        // intersecting the whole words' postings alone, without the ranges' set-up.
        let whole_from = match after {
            None => Some(0),
            Some(a) if a >> 32 == 0 => (a as u32).checked_add(1),
            Some(_) => None,
        };
        // Fewer than that: all of them (ranked after the cursor), when the intersection ran
        // to its end within its share: the full search below starts from them and ranks only
        // the other classes, so its walks stop as soon as those are known (not at the end of
        // each whole word's postings, where one more name holding every word might be).
        // (After a cursor past them, there are none.)
        let mut all_whole: Option<Vec<u32>> = whole_from.is_none().then(Vec::new);
        if let (true, Some(from)) = (
            nq > 1 && filter.is_empty() && !self.has_departures(),
            whole_from,
        ) {
            let cap = limit.saturating_add(1);
            let share = budget / WHOLE_SHARE;
            let found = self.all_whole(&qwords, from, cap, &mut work, share, deadline);
            if let Whole::Fewer(keys) = found {
                all_whole = Some(keys);
            } else if let Whole::Page(keys, partial) = found {
                let shown = &keys[..limit.min(keys.len())];
                page.hits = self.timed_hits(shown.iter().map(|&k| k & ID_MASK));
                page.total = keys.len() as u64;
                page.total_exact = false;
                page.partial = partial;
                page.next =
                    (keys.len() > limit || (partial && !shown.is_empty())).then(|| SearchCursor {
                        whole: nq as u8,
                        key: shown[shown.len() - 1],
                        check,
                    });
                page.work = work as u64;
                return Ok(page);
            }
        }

        // The driver: the query word whose range has the fewest postings (a range too long
        // to count counts as enormous; those are compared by their whole word's postings,
        // which a search walks first).
        // The ranges are counted in the order of their whole words' postings, so that a
        // long range after a short one stops counting early.
        let mut pick = 0;
        let mut best = (usize::MAX, usize::MAX);
        if qwords.len() > 1 {
            let mut order: Vec<(usize, usize)> = qwords
                .iter()
                .enumerate()
                .map(|(i, q)| {
                    let whole = self.words.find(q.as_bytes());
                    (whole.map_or(0, |w| self.words.posting_count(w)), i)
                })
                .collect();
            work += order.len() * WORD_UNITS;
            order.sort_unstable();
            for (whole, i) in order {
                if work > budget {
                    // Out of budget already: the sources loop below stops at once.
                    break;
                }
                let (count, visited) = self.count_postings(&qwords[i], best.0, deadline);
                work += visited * WORD_UNITS;
                let tie = if count == usize::MAX { whole } else { 0 };
                if (count, tie) < best {
                    (best, pick) = ((count, tie), i);
                }
            }
        }
        // The other words: by seeking through their postings beside the driver's when their
        // ranges have few long lists; else by their postings (a sorted list or a bitmap) when
        // they are at most a few per candidate of the driver, else by the candidate's name.
        // (The driver's count was complete: it stopped below the best before it.)
        let picked = best.0;
        let most = picked.saturating_mul(BITS_POSTINGS_PER_CANDIDATE);
        let mut bits: Vec<WordBits> = Vec::new();
        // Bitmaps over entry ids come from a pool kept between searches: a fresh one would
        // be fresh pages, each faulted in on first touch (hundreds of them at 10M entries).
        let mut pool = std::mem::take(&mut self.work.bitmaps);
        let mut by_name: Vec<String> = Vec::new();
        let mut seeks: Vec<SeekWord> = Vec::new();
        for (i, q) in qwords.iter().enumerate() {
            if i == pick {
                continue;
            }
            if work > budget {
                // No candidate will be examined (the sources loop stops at once).
                break;
            }
            if picked < NAME_CHECK_BELOW {
                // So few candidates that reading their names costs less than looking at
                // this word's range.
                by_name.push(q.clone());
                continue;
            }
            // Best by seeking through its postings with the driver's, when its range has few
            // long lists: no set-up in proportion to its postings, and the driver skips
            // whatever lies between this word's postings.
            let (seek, visited) = SeekWord::new(&self.words, q, deadline);
            work += visited * WORD_UNITS;
            if let Some(seek) = seek {
                work += seek.small.len() / POSTINGS_PER_UNIT;
                seeks.push(seek);
                continue;
            }
            let (count, visited) = self.count_postings(q, most.saturating_add(1), deadline);
            work += visited * WORD_UNITS;
            // (A range too long to count, or postings that would cost more than a share of
            // the budget to list, go by name: their cost is then per candidate, under the
            // budget and the time limit.)
            if count <= most && count / POSTINGS_PER_UNIT <= budget / LIST_SHARE {
                work += count / POSTINGS_PER_UNIT;
                bits.push(self.word_bits(q, count, &mut pool));
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
        // (Its vector is the last search's: see `timed_hits` on allocating here.)
        let mut heap: BinaryHeap<u64> = BinaryHeap::from(std::mem::take(&mut self.work.ranks));
        // Entries seen through a longer word (a name may hold several words of the range),
        // a bitmap by entry id (from the pool).
        let mut seen: Option<Bitmap> = None;
        let mut name_buf = Vec::new();
        let mut matched = 0u64;
        // The names holding every query word whole, when known: in the heap from the start,
        // and skipped by the walks, whose candidates then rank at best one class lower.
        let top_whole = match &all_whole {
            Some(keys) => {
                matched = keys.len() as u64;
                heap.extend(keys.iter().map(|&k| rank(nq, nq, k)));
                nq - 1
            }
            None => nq,
        };
        'sources: for src in sources {
            work += WORD_UNITS;
            // (The clock is read at every source, not every `TIME_CHECK_UNITS`: a source is a
            // few reads in cold memory, and a prefix's range can hold thousands.)
            if work > budget
                || (work >= TIME_CHECK_UNITS && deadline.is_some_and(|d| Instant::now() >= d))
            {
                page.partial = true;
                break;
            }
            // The best rank a candidate of this source can have is with every other query word
            // whole (but for those known already); the worst, with none.
            let (best_whole, worst_whole) = ((src.whole + nq - 1).min(top_whole), src.whole);
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
            // Cursors over the driver's source, its whole word (for a longer word's source),
            // and the words checked by seeking, all moving forward with the candidate's key.
            let mut driver = self.words.cursor(src.word);
            let mut whole_cursor = match src.whole {
                0 => exact.map(|w| self.words.cursor(w)),
                _ => None,
            };
            let mut cursors: Vec<SeekCursors> = seeks
                .iter()
                .map(|s| SeekCursors::new(&self.words, s))
                .collect();
            let mut target = from;
            'walk: while let Some(key) = driver.seek(target) {
                target = key.saturating_add(1);
                if key_tier(key) < min_tier {
                    // Postings are in tier order: the rest hold too few.
                    break;
                }
                if heap.len() == cap && rank(nq, best_whole, key) > *heap.peek().expect("cap > 0") {
                    page.total_exact = false;
                    break;
                }
                work += 1;
                if work > budget || out_of_time(work) {
                    page.partial = true;
                    break 'sources;
                }
                let e = key & ID_MASK;
                if src.whole == 0 {
                    // Whole matches were all examined in the first source.
                    if let Some(c) = whole_cursor.as_mut() {
                        if c.seek(key) == Some(key) {
                            continue;
                        }
                    }
                    let seen = seen
                        .get_or_insert_with(|| Bitmap::take(&mut pool, self.entries.id_bound()));
                    if !seen.insert(e) {
                        continue;
                    }
                }
                let mut whole = src.whole;
                // The words checked by seeking: where the next candidate could be, if this
                // one misses any.
                let mut skip_to: Option<u32> = None;
                for (s, c) in seeks.iter().zip(cursors.iter_mut()) {
                    let (seek, moved) = c.check(s, key);
                    work += 1 + moved / CURSORS_PER_UNIT;
                    match seek {
                        Seek::Match(w) => whole += u32::from(w),
                        Seek::Next(next) => skip_to = Some(skip_to.map_or(next, |t| t.max(next))),
                        // No later candidate of this source has that word.
                        Seek::End => break 'walk,
                    }
                }
                if let Some(next) = skip_to {
                    target = next;
                    continue;
                }
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
                if !all || whole > top_whole {
                    // (Holding every word whole: in the heap already.)
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
                        if whole > top_whole {
                            continue;
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
        let mut ranks = heap.into_sorted_vec();
        let more = ranks.len() > limit;
        page.hits = self.timed_hits(ranks.iter().take(limit).map(|&r| (r as u32) & ID_MASK));
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
        if ranks.capacity() <= SPARE_HITS + 1 {
            ranks.clear();
            self.work.ranks = ranks;
        }
        // The bitmaps go back to the pool, cleared.
        for b in bits {
            if let WordBits::Dense { any, whole } = b {
                pool.push(any);
                pool.extend(whole);
            }
        }
        pool.extend(seen);
        for b in &mut pool {
            b.clear();
        }
        pool.truncate(MAX_POOLED_BITMAPS);
        self.work.bitmaps = pool;
        Ok(page)
    }

    /// The hits of entries `ids`, in order, the time they took per hit averaged into
    /// `search_hit_ns` for the next search's time limit.
    ///
    /// Each part is read for every hit before the next part (entry records, file records,
    /// holder counts, names), so that the cache misses of one part overlap across the hits
    /// instead of queueing one behind the other: at 10M entries each record a hit reads is a
    /// miss. The answer's vector and its names' buffers are those of earlier answers given
    /// back by [`Index::recycle_hits`]: on the heap a large index leaves, glibc's malloc took
    /// most of the time an answer was built in (a fresh `String` per name, and vectors large
    /// enough to make it consolidate its fast bins and sort its free chunks again).
    fn timed_hits(&mut self, ids: impl Iterator<Item = u32>) -> Vec<SearchHit> {
        let t = Instant::now();
        let mut hits = std::mem::take(&mut self.work.hit_vec);
        let mut staged = std::mem::take(&mut self.work.hit_ids);
        hits.clear();
        staged.clear();
        staged.extend(ids.map(|e| (e, self.entries[e].file())));
        let spare = &mut self.work.hit_names;
        hits.extend(staged.iter().map(|&(_, f)| SearchHit {
            name: spare.pop().unwrap_or_default(),
            size: self.files[f].size(),
            hash: self.files[f].hash,
            holders: 0,
        }));
        for (hit, &(e, _)) in hits.iter_mut().zip(&staged) {
            hit.holders = self.entry_holders(e);
        }
        for &(e, _) in &staged {
            // Only the load matters: the name's bytes are in cache for the decoding below.
            std::hint::black_box(self.entries.encoded_name(e).first());
        }
        for (hit, &(e, _)) in hits.iter_mut().zip(&staged) {
            let mut name = std::mem::take(&mut hit.name).into_bytes();
            self.entries.decode_name(e, &mut name);
            hit.name = String::from_utf8(name).expect("names are stored from str");
        }
        self.work.hit_ids = staged;
        if hits.len() >= HIT_SAMPLE_MIN {
            let per = t.elapsed().as_nanos() / hits.len() as u128;
            let per = per.min(u128::from(u32::MAX / 2)) as u32;
            // A moving average over about eight answers.
            self.search_hit_ns = self.search_hit_ns - self.search_hit_ns / 8 + per / 8;
        }
        hits
    }

    /// Takes back the hits of an answer once they are encoded, so that the next answers
    /// build theirs in the same memory rather than in fresh allocations (which cost hundreds
    /// of ns each on a large index's heap): at most [`SPARE_HITS`] names are kept, none of
    /// more than [`SPARE_NAME_BYTES`] bytes. Answers are the same whether or not hits are
    /// given back.
    pub fn recycle_hits(&mut self, mut hits: Vec<SearchHit>) {
        let spare = &mut self.work.hit_names;
        for hit in hits.drain(..) {
            if spare.len() < SPARE_HITS && hit.name.capacity() <= SPARE_NAME_BYTES {
                spare.push(hit.name);
            }
        }
        if hits.capacity() <= SPARE_HITS && hits.capacity() > self.work.hit_vec.capacity() {
            self.work.hit_vec = hits;
        }
    }

    /// Postings over `prefix`'s range, counted up to `stop` (and over at most
    /// [`PICK_MAX_WORDS`] words, or until `deadline`, beyond which the count is
    /// `usize::MAX`), and the words looked at.
    fn count_postings(
        &self,
        prefix: &str,
        stop: usize,
        deadline: Option<Instant>,
    ) -> (usize, usize) {
        let mut total = 0usize;
        let mut visited = 0;
        for w in self.words.range(prefix) {
            visited += 1;
            if visited > PICK_MAX_WORDS || past(deadline, visited) {
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
    fn word_bits(&self, prefix: &str, postings: usize, pool: &mut Vec<Bitmap>) -> WordBits {
        let exact = self.words.find(prefix.as_bytes());
        let range = self.words.range(prefix).map(|w| (Some(w) == exact, w));
        if postings <= SPARSE_MAX && postings.saturating_mul(SPARSE_BITS) < self.entries.id_bound()
        {
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
        let ids = self.entries.id_bound();
        let (mut any, mut whole) = (Bitmap::take(pool, ids), None);
        for (exact, w) in range {
            if exact {
                whole = Some(Bitmap::take(pool, ids));
            }
            for k in self.words.postings(w) {
                let e = k & ID_MASK;
                any.insert(e);
                if exact {
                    whole.as_mut().expect("taken above").insert(e);
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

    /// The first `cap` keys, from `from` on, of the entries whose names hold every one of
    /// `qwords` as a whole word (the best class of the ranking, in key order): the shortest
    /// whole word's postings are walked, the others' sought in step (each list skipping to
    /// where the last one stopped). [`Whole::Fewer`] with all of them if there are fewer
    /// (none if a query word is no whole word of any name); [`Whole::Unknown`] once `share`
    /// work units are spent on it (the full search then ranks every class). At `deadline`,
    /// the keys found so far, marked partial: they are the best matches, though fewer than
    /// `cap`.
    fn all_whole(
        &self,
        qwords: &[String],
        from: u32,
        cap: usize,
        work: &mut usize,
        share: usize,
        deadline: Option<Instant>,
    ) -> Whole {
        let mut lists: Vec<u32> = Vec::with_capacity(qwords.len());
        for q in qwords {
            *work += WORD_UNITS;
            match self.words.find(q.as_bytes()) {
                Some(w) => lists.push(w),
                None => return Whole::Fewer(Vec::new()),
            }
        }
        lists.sort_by_key(|&w| self.words.posting_count(w));
        let mut cursors: Vec<PostingCursor> = lists.iter().map(|&w| self.words.cursor(w)).collect();
        let stop = work.saturating_add(share);
        let mut keys = Vec::with_capacity(cap);
        let mut target = from;
        while keys.len() < cap {
            // Leapfrog: each list in turn moves to the first key at least the candidate; a
            // key every list reaches in a row is in all.
            let Some(mut key) = cursors[0].seek(target) else {
                return Whole::Fewer(keys);
            };
            let (mut agree, mut i) = (1, 1);
            while agree < cursors.len() {
                *work += 1;
                if *work > stop {
                    return Whole::Unknown;
                }
                if *work % TIME_CHECK_UNITS == 0 && deadline.is_some_and(|d| Instant::now() >= d) {
                    return Whole::Page(keys, true);
                }
                let Some(k) = cursors[i].seek(key) else {
                    return Whole::Fewer(keys);
                };
                if k == key {
                    agree += 1;
                } else {
                    (key, agree) = (k, 1);
                }
                i = (i + 1) % cursors.len();
            }
            keys.push(key);
            target = key + 1;
        }
        Whole::Page(keys, false)
    }

    /// Whether the pool of bitmaps that searches take is short of what they may need at this
    /// index's size (see [`Index::continue_search_memory`]).
    pub fn is_search_memory_short(&self) -> bool {
        let want = pooled_bitmap_words(self.entries.id_bound());
        self.work.bitmaps.len() < READY_BITMAPS
            || self.work.bitmaps.iter().any(|b| b.words.len() < want)
            || self.work.bitmaps.iter().any(|b| b.old.capacity() > 0)
    }

    /// One step of readying the pool of bitmaps that searches take, between requests: a
    /// bitmap over every entry id is 1.25 MB at 10M entries, and its pages, written for the
    /// first time, fault in for about 1.7 ms, which a search would pay (and make its
    /// answer wait). So the pool holds [`READY_BITMAPS`] at least, and every bitmap in it
    /// is grown ahead of the entry ids (by a sixteenth), [`MEMORY_STEP_WORDS`] a step.
    /// (About 0.13 B per entry a bitmap.) No step allocates and writes, or frees, more than
    /// that: a large bitmap's successor is allocated in a step of its own, and the bitmap it
    /// replaces is given back [`MEMORY_STEP_WORDS`] a step (freeing 1.3 MB at once unmapped
    /// all its pages in one step).
    pub fn continue_search_memory(&mut self) {
        let want = pooled_bitmap_words(self.entries.id_bound());
        let pool = &mut self.work.bitmaps;
        if let Some(b) = pool.iter_mut().find(|b| b.old.capacity() > 0) {
            let keep = b.old.capacity().saturating_sub(MEMORY_STEP_WORDS);
            if keep < MEMORY_STEP_WORDS {
                b.old = Vec::new();
            } else {
                // Shrinks where it lies (glibc's `realloc` to less neither moves nor copies).
                b.old.clear();
                b.old.shrink_to(keep);
            }
            return;
        }
        match pool.iter().position(|b| b.words.len() < want) {
            Some(i) => {
                let b = &mut pool[i];
                if b.words.capacity() >= want || b.words.len() <= GROW_IN_PLACE_WORDS {
                    if b.words.capacity() < want {
                        b.words.reserve_exact(want - b.words.len());
                    }
                    let len = (b.words.len() + MEMORY_STEP_WORDS).min(want);
                    b.words.resize(len, 0);
                } else {
                    // Growing a large one in place would copy it (a `realloc` of 1.3 MB at
                    // 10M entries into pages faulted in then: up to 2.4 ms in one step).
                    // Between searches it is all zeros, so its successor, with room for
                    // another eighth, is zeroed beside it a step at a time and then
                    // replaces it. (Small ones grow in place: their copy is short.)
                    if b.next.capacity() < want {
                        let stale =
                            std::mem::replace(&mut b.next, Vec::with_capacity(want + want / 8));
                        b.old = stale;
                        return;
                    }
                    let len = (b.next.len() + MEMORY_STEP_WORDS).min(want);
                    b.next.resize(len, 0);
                    if len == want {
                        b.old = std::mem::replace(&mut b.words, std::mem::take(&mut b.next));
                    }
                }
            }
            None if pool.len() < READY_BITMAPS => pool.push(Bitmap::default()),
            None => {}
        }
    }

    /// What building a search's answer has cost per hit lately (ns, a moving average over
    /// answers of at least 16 hits; see [`Index::set_search_time_limit`]).
    pub fn search_hit_ns(&self) -> u32 {
        self.search_hit_ns
    }

    /// Each pooled bitmap's words ready, its successor's words zeroed so far, whether the
    /// ready words are all zero, and the words of its predecessor not yet given back.
    #[cfg(test)]
    pub(super) fn pooled_bitmaps(&self) -> Vec<(usize, usize, bool, usize)> {
        let b = &self.work.bitmaps;
        b.iter()
            .map(|b| {
                let zero = b.words.iter().all(|&w| w == 0);
                (b.words.len(), b.next.len(), zero, b.old.capacity())
            })
            .collect()
    }

    /// Heap bytes of the pooled search bitmaps (their capacities).
    pub(super) fn search_memory_bytes(&self) -> usize {
        let b = &self.work.bitmaps;
        b.capacity() * std::mem::size_of::<Bitmap>()
            + b.iter()
                .map(|b| {
                    (b.words.capacity() + b.next.capacity() + b.old.capacity()) * 8
                        + b.touched.capacity() * 4
                })
                .sum::<usize>()
    }

    /// Sets the work budget of a search (tests make it small).
    pub fn set_search_budget(&mut self, units: usize) {
        self.search_budget = units;
    }

    /// Sets the time limit of a search, its answer built (`None`, the default: only the work
    /// budget). The server sets [`SEARCH_TIME_LIMIT`]: the budget's units are calibrated by
    /// estimate, and a name decoded and folded, or a cold cache at 10M entries, costs more
    /// than estimated; the walk stops before the limit by 1.5 times the answer's expected
    /// cost (the hits asked for, at the recent cost per hit; at most half the limit), then
    /// stops as at its budget (`partial`), so no search holds the loop much longer whatever
    /// the index and machine.
    pub fn set_search_time_limit(&mut self, limit: Option<Duration>) {
        self.search_time_limit = limit;
    }
}

/// Whether `deadline` has passed, read every [`WORDS_PER_CLOCK`] words of a range: a set-up
/// that looks at long ranges (thousands of words in cold memory) stops at the time limit
/// too.
#[inline]
fn past(deadline: Option<Instant>, visited: usize) -> bool {
    visited % WORDS_PER_CLOCK == 0 && deadline.is_some_and(|d| Instant::now() >= d)
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
    /// Bitmaps by entry id; `whole` is `None` when no word equals the query word.
    Dense { any: Bitmap, whole: Option<Bitmap> },
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
            WordBits::Dense { any, whole } => any
                .contains(e)
                .then(|| whole.as_ref().is_some_and(|w| w.contains(e))),
        }
    }
}

/// A set of entry ids as a bitmap, reused between searches: it remembers which of its words it
/// set, so clearing it costs what was set, not its size.
#[derive(Default)]
pub(super) struct Bitmap {
    words: Vec<u64>,
    /// Indexes of the words set since the last clear (each once).
    touched: Vec<u32>,
    /// A larger successor of `words` being zeroed, a step at a time, while the pool waits
    /// between searches (see [`Index::continue_search_memory`]).
    next: Vec<u64>,
    /// The words a successor replaced, given back to the allocator a step at a time.
    old: Vec<u64>,
}

impl Bitmap {
    /// A cleared bitmap for ids below `ids`, from `pool` if it has one.
    fn take(pool: &mut Vec<Bitmap>, ids: usize) -> Bitmap {
        let mut b = pool.pop().unwrap_or_default();
        let words = ids.div_ceil(64);
        if b.words.len() < words {
            b.words.resize(words, 0);
        }
        b
    }

    /// Adds `e`; false if it was in already.
    #[inline]
    fn insert(&mut self, e: u32) -> bool {
        let (i, bit) = (e as usize / 64, 1u64 << (e % 64));
        let w = &mut self.words[i];
        if *w & bit != 0 {
            return false;
        }
        if *w == 0 {
            self.touched.push(i as u32);
        }
        *w |= bit;
        true
    }

    #[inline]
    fn contains(&self, e: u32) -> bool {
        let (i, bit) = (e as usize / 64, 1u64 << (e % 64));
        self.words.get(i).is_some_and(|w| w & bit != 0)
    }

    /// Empties it, in time proportional to the words set.
    fn clear(&mut self) {
        if self.touched.len() > self.words.len() / 8 {
            self.words.fill(0);
        } else {
            for &i in &self.touched {
                self.words[i as usize] = 0;
            }
        }
        self.touched.clear();
    }
}

/// The words a pooled bitmap is readied to for `ids` entry ids: a sixteenth more, so that it
/// is grown again, a step at a time, well before a search would have to.
fn pooled_bitmap_words(ids: usize) -> usize {
    (ids + ids / 16).div_ceil(64).max(1)
}

/// A query word other than the driver, checked by seeking through the postings of its range
/// (the words it equals or prefixes) in step with the driver's candidates, which are in the
/// same key order: a candidate matches if its key is posted under one of them.
struct SeekWord {
    /// The words of the range with more than [`SEEK_SMALL_POSTINGS`] postings, and whether
    /// each equals the query word.
    long: Vec<(u32, bool)>,
    /// The other words' postings as `key << 1 | equals the query word`, sorted (a key may be
    /// there twice, through the word equal to the query word and a longer one).
    small: Vec<u32>,
}

impl SeekWord {
    /// The check of `prefix` by seeking, unless its range has more than [`SEEK_MAX_WORDS`]
    /// words, too many long lists or too many postings in short ones; and the words of the
    /// range looked at.
    fn new(words: &Words, prefix: &str, deadline: Option<Instant>) -> (Option<SeekWord>, usize) {
        let exact = words.find(prefix.as_bytes());
        let mut seek = SeekWord {
            long: Vec::new(),
            small: Vec::new(),
        };
        let mut visited = 0;
        for w in words.range(prefix) {
            visited += 1;
            if visited > SEEK_MAX_WORDS || past(deadline, visited) {
                return (None, visited);
            }
            let whole = Some(w) == exact;
            if words.posting_count(w) > SEEK_SMALL_POSTINGS {
                if seek.long.len() == SEEK_MAX_CURSORS {
                    return (None, visited);
                }
                seek.long.push((w, whole));
            } else {
                if seek.small.len() + words.posting_count(w) > SEEK_MAX_SMALL {
                    return (None, visited);
                }
                seek.small
                    .extend(words.postings(w).map(|k| k << 1 | u32::from(whole)));
            }
        }
        seek.small.sort_unstable();
        (Some(seek), visited)
    }
}

/// The cursors of one [`SeekWord`] over one source's walk.
struct SeekCursors<'a> {
    long: Vec<(PostingCursor<'a>, bool)>,
    /// The key each of `long` is on (`u32::MAX` past its end: keys are below `1 << 31`; 0
    /// before its first read).
    on: Vec<u32>,
    /// The least of `on`: a candidate before it is in none of the long lists, and the
    /// cursors need not be looked at one by one.
    least: u32,
    /// Where the next key at least the candidate's is in `SeekWord::small`.
    at: usize,
}

/// What a [`SeekWord`] says of a candidate.
enum Seek {
    /// Posted under a word of its range; whether one equal to the query word.
    Match(bool),
    /// Not posted: the first key after it that is.
    Next(u32),
    /// Not posted, nor any key after it.
    End,
}

impl<'a> SeekCursors<'a> {
    /// The cursors, not yet on their lists' first keys: each reads its list's first block
    /// at the first candidate (a source whose walk stops at once reads none of them).
    fn new(words: &'a Words, seek: &SeekWord) -> Self {
        let long: Vec<(PostingCursor<'a>, bool)> = seek
            .long
            .iter()
            .map(|&(w, whole)| (words.cursor(w), whole))
            .collect();
        SeekCursors {
            least: if long.is_empty() { u32::MAX } else { 0 },
            on: vec![0; long.len()],
            long,
            at: 0,
        }
    }

    /// Whether `key` is posted under `seek`'s words, and how many long lists' cursors moved;
    /// keys must not decrease from call to call.
    #[inline]
    fn check(&mut self, seek: &SeekWord, key: u32) -> (Seek, usize) {
        let mut found = None;
        let mut next = self.least;
        let mut moved = 0;
        if self.least <= key {
            // Some cursor is on the candidate or behind it: those behind move up to it.
            let SeekCursors { long, on, .. } = self;
            let mut least = u32::MAX;
            next = u32::MAX;
            for ((c, whole), k) in long.iter_mut().zip(on.iter_mut()) {
                // (`<=`: a cursor not yet read is on 0, which may be a key.)
                if *k <= key {
                    if *k < key {
                        moved += 1;
                    }
                    *k = c.seek(key).unwrap_or(u32::MAX);
                }
                if *k == key {
                    found = Some(found.unwrap_or(false) | *whole);
                } else {
                    next = next.min(*k);
                }
                least = least.min(*k);
            }
            self.least = least;
        }
        let small = &seek.small;
        // (Postings are below `1 << 31`, so `key << 1` does not overflow.)
        let from = key << 1;
        self.at += small[self.at..].partition_point(|&x| x < from);
        let mut i = self.at;
        while i < small.len() && small[i] >> 1 == key {
            found = Some(found.unwrap_or(false) | (small[i] & 1 == 1));
            i += 1;
        }
        if let Some(&x) = small.get(i) {
            next = next.min(x >> 1);
        }
        let seek = match found {
            Some(whole) => Seek::Match(whole),
            None if next == u32::MAX => Seek::End,
            None => Seek::Next(next),
        };
        (seek, moved)
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
