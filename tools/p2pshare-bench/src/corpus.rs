//! A corpus of real file names (`--names FILE`, one name a line) in place of the synthetic
//! vocabulary: reading it, growing it to more files than it has lines, the statistics of the
//! names indexed (commonest words, first letters and names), and the search query classes drawn
//! from them. Pure apart from [`Corpus::read`].
//!
//! # Reading
//! A line is a name's bytes up to `\n` (a name containing `\n` cannot be written one a line,
//! which is why `tools/corpus` leaves those out). Bytes that are not UTF-8 are decoded the way
//! the peer decodes its own file names before registering them (`to_string_lossy`: each bad
//! sequence becomes U+FFFD), so the index sees what it would see from a real peer sharing that
//! file; such lines are counted. Lines the index would refuse (empty, longer than its
//! `MAX_NAME_BYTES`, containing `/` or NUL) are skipped and counted.
//!
//! # Growing
//! File `i` of `N` is line `i` while there are lines; beyond the `M` names read, file `i` is
//! a copy of name `i % M`. Copies stay realistic rather than `name (2)`: a name that occurs
//! more than once among the lines (a licence, `__init__.py`, `index.html`: files every machine
//! has) is copied unchanged, so the commonest names keep their share of the index; any other
//! name gets, half the time, a version or number token before its extension (`report.pdf` →
//! `report-v2.13.pdf`, `notes_2017.txt`), using the separator the name already uses, and
//! otherwise a directory-like prefix word taken from another name of the corpus
//! (`report.pdf` → `kernel_report.pdf`), so the words stay the corpus's own words.
//! `tools/corpus` grows its file with the same rules.
//!
//! # Invariants
//! - Every name handed out passes the index's `is_valid_name`.
//! - `Corpus::name(i, seed)` is a pure function of the lines read, `i` and `seed`.

use crate::workload::Rng;
use p2pshare::index::store::{is_valid_name, MAX_NAME_BYTES};
use std::collections::{HashMap, HashSet};
use std::io::{self, BufRead};
use std::path::Path;

/// Names whose statistics are counted at most: beyond it, an evenly spaced sample.
pub const STATS_SAMPLE_NAMES: usize = 1_000_000;

/// Words, first letters and names each statistic keeps.
pub const TOP: usize = 10;

/// One-letter prefixes the abuse mode cycles through.
pub const TOP_LETTERS: usize = 14;

/// Names read from a file, with what was skipped.
#[derive(Debug, Clone, Default)]
pub struct Corpus {
    /// The valid names, in file order.
    names: Vec<String>,
    /// Names occurring more than once among `names`: copied unchanged when growing.
    repeated: HashSet<String>,
    /// Lines read.
    pub lines: usize,
    /// Lines that were not UTF-8, decoded as the peer decodes such a file name.
    pub not_utf8: usize,
    /// Lines skipped: empty.
    pub skipped_empty: usize,
    /// Lines skipped: over the index's name limit.
    pub skipped_too_long: usize,
    /// Lines skipped: containing `/` or NUL.
    pub skipped_bad_byte: usize,
}

impl Corpus {
    /// Reads names from `path` until `want` valid ones are read or the file ends.
    pub fn read(path: &Path, want: usize) -> io::Result<Corpus> {
        let file = std::fs::File::open(path)
            .map_err(|e| io::Error::new(e.kind(), format!("--names {}: {e}", path.display())))?;
        let corpus = Corpus::parse(io::BufReader::with_capacity(1 << 20, file), want)?;
        if corpus.names.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "--names {}: no usable name in {} line(s)",
                    path.display(),
                    corpus.lines
                ),
            ));
        }
        Ok(corpus)
    }

    /// Reads names from `input`, one a line, until `want` valid ones are read.
    pub fn parse(mut input: impl BufRead, want: usize) -> io::Result<Corpus> {
        let mut c = Corpus::default();
        let mut line = Vec::new();
        while c.names.len() < want {
            line.clear();
            if input.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            if line.last() == Some(&b'\n') {
                line.pop();
            }
            c.lines += 1;
            let name = match String::from_utf8(std::mem::take(&mut line)) {
                Ok(s) => s,
                Err(e) => {
                    c.not_utf8 += 1;
                    String::from_utf8_lossy(e.as_bytes()).into_owned()
                }
            };
            if is_valid_name(&name) {
                c.names.push(name);
            } else if name.is_empty() {
                c.skipped_empty += 1;
            } else if name.len() > MAX_NAME_BYTES {
                c.skipped_too_long += 1;
            } else {
                c.skipped_bad_byte += 1;
            }
        }
        let mut seen = HashSet::with_capacity(c.names.len());
        for n in &c.names {
            if !seen.insert(n.as_str()) {
                c.repeated.insert(n.clone());
            }
        }
        Ok(c)
    }

    /// Valid names read.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether no valid name was read.
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// Lines skipped, all reasons.
    pub fn skipped(&self) -> usize {
        self.skipped_empty + self.skipped_too_long + self.skipped_bad_byte
    }

    /// The name of file `i`: line `i`, or a copy of it beyond the lines (see the module docs).
    pub fn name(&self, i: usize, seed: u64) -> String {
        let m = self.names.len();
        let base = &self.names[i % m];
        if i < m || self.repeated.contains(base) {
            return base.clone();
        }
        let mut rng = Rng::for_stream(seed ^ 0xC0_4B05, i as u64);
        let grown = if rng.below(2) == 0 {
            with_version(base, &mut rng)
        } else {
            let donor = &self.names[rng.below(m)];
            with_prefix(base, first_word(donor).unwrap_or("copy"), &mut rng)
        };
        if is_valid_name(&grown) {
            grown
        } else {
            base.clone()
        }
    }
}

/// `(stem, extension with its dot)`: the extension is 1–4 ASCII letters and digits with at
/// least one letter after the last dot, behind a non-empty stem; else no extension.
fn split_extension(name: &str) -> (&str, &str) {
    match name.rfind('.') {
        Some(dot) if dot > 0 => {
            let ext = &name[dot + 1..];
            let ok = (1..=4).contains(&ext.len())
                && ext.bytes().all(|b| b.is_ascii_alphanumeric())
                && ext.bytes().any(|b| b.is_ascii_alphabetic());
            if ok {
                (&name[..dot], &name[dot..])
            } else {
                (name, "")
            }
        }
        _ => (name, ""),
    }
}

/// The separator `stem` already uses between its words (`_`, `-`, space or `.`), else `-`.
fn separator(stem: &str) -> char {
    ['_', '-', ' ', '.']
        .into_iter()
        .find(|&c| stem.contains(c))
        .unwrap_or('-')
}

/// `name` with a version or number token before its extension.
fn with_version(name: &str, rng: &mut Rng) -> String {
    let (stem, ext) = split_extension(name);
    let token = match rng.below(4) {
        0 => format!("v{}.{}", rng.below(10), rng.below(21)),
        1 => format!("{}", 1990 + rng.below(37)),
        2 => format!("{:02}", 1 + rng.below(99)),
        _ => format!("{}.{}.{}", rng.below(10), rng.below(30), rng.below(100)),
    };
    format!("{stem}{}{token}{ext}", separator(stem))
}

/// `name` behind a directory-like prefix word.
fn with_prefix(name: &str, word: &str, rng: &mut Rng) -> String {
    let sep = ['_', '-', ' '][rng.below(3)];
    format!("{word}{sep}{name}")
}

/// The first run of at least two ASCII letters and digits in `name`: a word that reads like
/// a directory name.
fn first_word(name: &str) -> Option<&str> {
    name.split(|c: char| !c.is_ascii_alphanumeric())
        .find(|w| w.len() >= 2)
}

/// The words of `name` as the index cuts them: maximal runs of alphanumeric characters,
/// lowercased character by character.
pub fn words(name: &str) -> Vec<String> {
    name.split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(|w| w.chars().flat_map(char::to_lowercase).collect())
        .collect()
}

/// How often something occurs among the names counted.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Share {
    /// The word, letter or name.
    pub text: String,
    /// Names it occurs in (for a letter: names with a word starting with it).
    pub names: u64,
    /// `names` over the names counted.
    pub fraction: f64,
}

/// Statistics of the names in the index, from which queries are drawn.
#[derive(Debug, Clone, PartialEq, Default, serde::Serialize)]
pub struct NameStats {
    /// Names counted (all, or an evenly spaced sample of [`STATS_SAMPLE_NAMES`]).
    pub names_counted: u64,
    /// Distinct names among them.
    pub distinct_names: u64,
    /// Distinct words among them.
    pub distinct_words: u64,
    /// Names with a one-character word (`a`, `1`, `x`).
    pub names_with_one_letter_word: u64,
    /// Names with a word of digits only.
    pub names_with_number: u64,
    /// The commonest words, by names they occur in.
    pub top_words: Vec<Share>,
    /// The commonest first letters of words, by names with a word starting with one.
    pub top_letters: Vec<Share>,
    /// The commonest exact names.
    pub top_names: Vec<Share>,
}

impl NameStats {
    /// Counts the statistics of `count` names, name `i` given by `name_of(i)`, sampling
    /// evenly when there are more than [`STATS_SAMPLE_NAMES`].
    pub fn of(count: usize, name_of: impl Fn(usize) -> String) -> NameStats {
        let step = count.div_ceil(STATS_SAMPLE_NAMES).max(1);
        let mut word_names: HashMap<String, u64> = HashMap::new();
        let mut letter_names: HashMap<char, u64> = HashMap::new();
        let mut name_count: HashMap<String, u64> = HashMap::new();
        let (mut counted, mut one_letter, mut number) = (0u64, 0u64, 0u64);
        let mut letters = Vec::new();
        for i in (0..count).step_by(step) {
            let name = name_of(i);
            let mut ws = words(&name);
            counted += 1;
            if ws.iter().any(|w| w.chars().nth(1).is_none()) {
                one_letter += 1;
            }
            if ws.iter().any(|w| w.bytes().all(|b| b.is_ascii_digit())) {
                number += 1;
            }
            letters.clear();
            letters.extend(ws.iter().filter_map(|w| w.chars().next()));
            letters.sort_unstable();
            letters.dedup();
            for &c in &letters {
                *letter_names.entry(c).or_default() += 1;
            }
            ws.sort_unstable();
            ws.dedup();
            for w in ws {
                *word_names.entry(w).or_default() += 1;
            }
            *name_count.entry(name).or_default() += 1;
        }
        let share = |text: String, names: u64| Share {
            text,
            names,
            fraction: (names as f64 / counted.max(1) as f64 * 10_000.0).round() / 10_000.0,
        };
        let top = |m: Vec<(String, u64)>, k: usize| -> Vec<Share> {
            let mut v = m;
            // Most first, then by text, so ties do not depend on hashing.
            v.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            v.truncate(k);
            v.into_iter().map(|(t, n)| share(t, n)).collect()
        };
        NameStats {
            names_counted: counted,
            distinct_names: name_count.len() as u64,
            distinct_words: word_names.len() as u64,
            names_with_one_letter_word: one_letter,
            names_with_number: number,
            top_letters: top(
                letter_names
                    .into_iter()
                    .map(|(c, n)| (c.to_string(), n))
                    .collect(),
                TOP_LETTERS,
            ),
            top_words: top(word_names.into_iter().collect(), TOP),
            top_names: top(name_count.into_iter().collect(), TOP),
        }
    }
}

/// The classes of search a person makes, reported apart when searching real names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QueryClass {
    /// One whole word of an indexed name.
    OneWord,
    /// Two different whole words of one indexed name.
    TwoWords,
    /// The first letter of a word of an indexed name.
    Prefix1,
    /// The first three letters of a word of an indexed name.
    Prefix3,
    /// One of the [`TOP`] commonest words.
    CommonWord,
}

impl QueryClass {
    /// Every class, in report order.
    pub const ALL: [QueryClass; 5] = [
        QueryClass::OneWord,
        QueryClass::TwoWords,
        QueryClass::Prefix1,
        QueryClass::Prefix3,
        QueryClass::CommonWord,
    ];

    /// The JSON key.
    pub fn key(self) -> &'static str {
        match self {
            QueryClass::OneWord => "one_word",
            QueryClass::TwoWords => "two_words",
            QueryClass::Prefix1 => "prefix_1",
            QueryClass::Prefix3 => "prefix_3",
            QueryClass::CommonWord => "common_word",
        }
    }

    /// The short label of the console table (at most 8 characters).
    pub fn label(self) -> &'static str {
        match self {
            QueryClass::OneWord => "s:1word",
            QueryClass::TwoWords => "s:2words",
            QueryClass::Prefix1 => "s:pre1",
            QueryClass::Prefix3 => "s:pre3",
            QueryClass::CommonWord => "s:top10",
        }
    }

    /// What a query of the class is, for the report.
    pub fn meaning(self) -> &'static str {
        match self {
            QueryClass::OneWord => "one whole word of an indexed name",
            QueryClass::TwoWords => "two different whole words of one indexed name",
            QueryClass::Prefix1 => "the first letter of a word of an indexed name",
            QueryClass::Prefix3 => "the first three letters of a word of an indexed name",
            QueryClass::CommonWord => "one of the ten commonest words of the indexed names",
        }
    }

    /// Position in [`QueryClass::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// A query of `class` drawn from the indexed names (`name_of(i)` for `i` in `0..count`) and
/// the commonest words, or `None` when no name has the words the class needs.
pub fn query(
    class: QueryClass,
    count: usize,
    name_of: impl Fn(usize) -> String,
    common: &[Share],
    rng: &mut Rng,
) -> Option<String> {
    if class == QueryClass::CommonWord {
        return (!common.is_empty()).then(|| common[rng.below(common.len())].text.clone());
    }
    // A few names may lack what the class needs (no word of three letters, one word only):
    // draw again, and give up only when the corpus seems to have none.
    for _ in 0..64 {
        let mut ws = words(&name_of(rng.below(count)));
        match class {
            QueryClass::OneWord if !ws.is_empty() => {
                return Some(ws.swap_remove(rng.below(ws.len())))
            }
            QueryClass::TwoWords => {
                ws.sort_unstable();
                ws.dedup();
                if ws.len() >= 2 {
                    let a = rng.below(ws.len());
                    let b = (a + 1 + rng.below(ws.len() - 1)) % ws.len();
                    return Some(format!("{} {}", ws[a], ws[b]));
                }
            }
            QueryClass::Prefix1 if !ws.is_empty() => {
                return ws[rng.below(ws.len())].chars().next().map(String::from);
            }
            QueryClass::Prefix3 => {
                ws.retain(|w| w.chars().nth(2).is_some());
                if !ws.is_empty() {
                    return Some(ws[rng.below(ws.len())].chars().take(3).collect());
                }
            }
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn corpus(text: &[u8]) -> Corpus {
        Corpus::parse(text, usize::MAX).unwrap()
    }

    #[test]
    fn reading_skips_what_the_index_refuses_and_decodes_like_the_peer() {
        let long = "x".repeat(MAX_NAME_BYTES + 1);
        let mut text = b"Song A.mp3\n\nbad\0name\ncaf\xe9 menu.pdf\n".to_vec();
        text.extend_from_slice(long.as_bytes());
        text.extend_from_slice(b"\nlast line without newline");
        let c = corpus(&text);
        assert_eq!(c.lines, 6);
        assert_eq!(c.len(), 3);
        assert_eq!(
            (c.skipped_empty, c.skipped_bad_byte, c.skipped_too_long),
            (1, 1, 1)
        );
        assert_eq!(c.skipped(), 3);
        assert_eq!(c.not_utf8, 1);
        assert_eq!(c.name(0, 1), "Song A.mp3");
        assert_eq!(c.name(1, 1), "caf\u{fffd} menu.pdf");
        assert_eq!(c.name(2, 1), "last line without newline");
        // A trailing `\r` is part of the name (it is a legal byte), not a line ending.
        assert_eq!(corpus(b"a\r\n").name(0, 1), "a\r");
    }

    #[test]
    fn reading_stops_at_the_names_wanted() {
        let c = Corpus::parse(&b"a\nb\n\nc\nd\n"[..], 3).unwrap();
        assert_eq!((c.len(), c.lines, c.skipped()), (3, 4, 1));
    }

    #[test]
    fn growing_keeps_repeated_names_and_varies_the_others() {
        let c = corpus(b"LICENSE\nholiday photo 12.jpg\nLICENSE\nlibfoo_bar.so\nREADME\n");
        let m = c.len();
        let mut grown = Vec::new();
        for i in m..m * 200 {
            let n = c.name(i, 7);
            assert!(is_valid_name(&n));
            assert_eq!(n, c.name(i, 7), "pure");
            match i % m {
                0 | 2 => assert_eq!(n, "LICENSE"),
                _ => grown.push((i % m, n)),
            }
        }
        let distinct: HashSet<&String> = grown.iter().map(|(_, n)| n).collect();
        assert!(distinct.len() > grown.len() / 3, "mostly distinct copies");
        for (b, n) in &grown {
            let base = c.name(*b, 7);
            assert_ne!(n, &base);
            assert!(!n.contains("(2)"));
            match *b {
                // The extension stays last, the name's own separator is used.
                1 if !n.ends_with(" holiday photo 12.jpg")
                    && !n.ends_with("_holiday photo 12.jpg")
                    && !n.ends_with("-holiday photo 12.jpg") =>
                {
                    assert!(
                        n.starts_with("holiday photo 12 ") && n.ends_with(".jpg"),
                        "{n}"
                    );
                }
                3 if !n.ends_with("libfoo_bar.so") => {
                    assert!(n.starts_with("libfoo_bar_") && n.ends_with(".so"), "{n}")
                }
                4 if !n.ends_with("README") => assert!(n.starts_with("README-"), "{n}"),
                _ => {}
            }
        }
    }

    #[test]
    fn an_overlong_copy_falls_back_to_its_base() {
        let long = "y".repeat(MAX_NAME_BYTES - 1);
        let c = corpus(format!("{long}\nzz\n").as_bytes());
        for i in 2..200 {
            assert!(is_valid_name(&c.name(i, 3)));
        }
    }

    #[test]
    fn words_and_statistics_follow_the_index() {
        assert_eq!(
            words("Ünïcode_Name-v2.0 (a).TXT"),
            ["ünïcode", "name", "v2", "0", "a", "txt"]
        );
        let names = ["a b.txt", "read me.txt", "b.txt", "b.txt", "x"];
        let s = NameStats::of(names.len(), |i| names[i].to_string());
        assert_eq!(s.names_counted, 5);
        assert_eq!(s.distinct_names, 4);
        assert_eq!(s.top_words[0].text, "txt");
        assert_eq!(s.top_words[0].names, 4);
        assert_eq!(s.top_words[0].fraction, 0.8);
        assert_eq!(s.top_words[1].text, "b");
        assert_eq!(s.top_names[0].text, "b.txt");
        assert_eq!(s.top_names[0].names, 2);
        assert_eq!(s.names_with_one_letter_word, 4);
        // `b.txt` counts its letters once per name: b, t.
        assert_eq!(s.top_letters[0].text, "t");
    }

    #[test]
    fn queries_match_their_class() {
        let names = ["Alpha beta.mp3", "gamma", "delta epsilon zeta.ogg"];
        let s = NameStats::of(3, |i| names[i].to_string());
        let mut rng = Rng::new(5);
        let all: Vec<String> = names.iter().flat_map(|n| words(n)).collect();
        for _ in 0..200 {
            for class in QueryClass::ALL {
                let q = query(class, 3, |i| names[i].to_string(), &s.top_words, &mut rng)
                    .expect("a query");
                let parts: Vec<&str> = q.split(' ').collect();
                match class {
                    QueryClass::OneWord | QueryClass::CommonWord => {
                        assert!(all.contains(&q), "{q}")
                    }
                    QueryClass::TwoWords => {
                        assert_eq!(parts.len(), 2);
                        assert_ne!(parts[0], parts[1]);
                        assert!(names.iter().any(|n| {
                            let w = words(n);
                            parts.iter().all(|p| w.iter().any(|x| x == p))
                        }));
                    }
                    QueryClass::Prefix1 => assert_eq!(q.chars().count(), 1),
                    QueryClass::Prefix3 => {
                        assert_eq!(q.chars().count(), 3);
                        assert!(all.iter().any(|w| w.starts_with(&q)), "{q}");
                    }
                }
            }
        }
        // No name has two words: that class has no query.
        let one = ["solo"];
        assert_eq!(
            query(
                QueryClass::TwoWords,
                1,
                |i| one[i].to_string(),
                &[],
                &mut rng
            ),
            None
        );
    }
}
