//! Keyword search over names and its ranking: [`Index::search`].

use super::words::{lower_words, Scratch};
use super::{Index, SOLE};
use crate::wire::{FileHash, SearchHit};
use std::cmp::Ordering;
use std::collections::BinaryHeap;

impl Index {
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
            for w in self.words.range(q) {
                total += self.words.posting_count(w);
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
            let fits = self.words.range(q).all(|w| {
                total += self.words.posting_count(w);
                total <= budget
            });
            if fits {
                bitmaps.push(self.word_bits(q, total));
            } else {
                by_name.push(q.clone());
            }
        }
        let q = &qwords[pick];
        let exact = self.words.find(q.as_bytes());
        let range: Vec<(bool, u32)> = self.words.range(q).map(|w| (Some(w) == exact, w)).collect();
        // An entry may contain several words of the range; count it once. The exact word
        // sorts first in the range, so a single-word query sees its whole-word hits first.
        let mut seen = (range.len() > 1).then(|| vec![0u64; self.entries.id_bound().div_ceil(64)]);

        let mut heap: BinaryHeap<Ranked<'_>> = BinaryHeap::new();
        let mut matched = 0usize;
        let mut name_buf = Vec::new();
        for &(exact, w) in &range {
            for e in self.words.postings(w) {
                if let Some(seen) = seen.as_mut() {
                    let (word, bit) = (e as usize / 64, 1u64 << (e % 64));
                    if seen[word] & bit != 0 {
                        continue;
                    }
                    seen[word] |= bit;
                }
                let entry = &self.entries[e];
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
                    self.entries.decode_name(e, &mut name_buf);
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
                    self.entries.holder_count(entry)
                } else {
                    self.files.multi_holders[&entry.file()]
                };
                if heap.len() == limit {
                    // Cheap keys first: most candidates of a big query lose here without
                    // their name or file record being read.
                    let worst = heap.peek().expect("limit > 0");
                    match (whole, holders).cmp(&(worst.whole, worst.holders)) {
                        Ordering::Less => continue,
                        Ordering::Equal => {
                            // Compared while decoding: the first symbol usually settles it.
                            match self.entries.cmp_name(e, &worst.name) {
                                Ordering::Greater => continue,
                                Ordering::Equal if self.files[entry.file()].hash > *worst.hash => {
                                    continue
                                }
                                _ => {}
                            }
                        }
                        Ordering::Greater => {}
                    }
                }
                let file = &self.files[entry.file()];
                let mut name = Vec::new();
                self.entries.decode_name(e, &mut name);
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

    /// The entries with a word starting with `prefix` (`postings` of them, counted by the
    /// caller), each marked whole if a word equals it.
    fn word_bits(&self, prefix: &str, postings: usize) -> WordBits {
        let exact = self.words.find(prefix.as_bytes());
        let range = self.words.range(prefix).map(|w| (Some(w) == exact, w));
        if postings.saturating_mul(SPARSE_BITS) < self.entries.id_bound() {
            // Few: a sorted list, searched per candidate.
            let mut list: Vec<u32> = Vec::with_capacity(postings);
            for (whole, w) in range {
                list.extend(self.words.postings(w).map(|e| e << 1 | u32::from(whole)));
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
            for e in self.words.postings(w) {
                let (i, bit) = (e as usize / 64, 1u64 << (e % 64));
                any[i] |= bit;
                if exact {
                    whole[i] |= bit;
                }
            }
        }
        WordBits::Dense { any, whole }
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
