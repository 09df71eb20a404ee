//! The synthetic workload, sans-IO: a seeded random generator, a vocabulary of name words,
//! the fake files that pre-populate the index, the files each register op announces, the
//! search queries and the order in which a simulated peer runs its operations.
//!
//! Everything here is a pure function of a seed and indices, so a run is reproducible and
//! two simulated peers never announce the same hash.

use p2pshare::wire::{FileEntry, FileHash};

/// Files announced by one register operation.
pub const FILES_PER_REGISTER: usize = 10;

/// Files each pre-populating connection registers (in one bulk Register).
pub const FILES_PER_FAKE_PEER: usize = 1000;

/// Name words. File names are built from them, queries use them whole or as prefixes, so
/// every query matches something in the index.
pub const VOCABULARY: &[&str] = &[
    "abbey",
    "acoustic",
    "after",
    "album",
    "alpha",
    "amber",
    "anthem",
    "april",
    "arctic",
    "atlas",
    "aurora",
    "autumn",
    "ballad",
    "band",
    "basement",
    "beach",
    "bells",
    "berlin",
    "bird",
    "black",
    "blue",
    "bonus",
    "bridge",
    "broken",
    "canyon",
    "capital",
    "carnival",
    "castle",
    "cello",
    "chapter",
    "chorus",
    "cinema",
    "circle",
    "city",
    "classic",
    "cloud",
    "coast",
    "cold",
    "concert",
    "copper",
    "coral",
    "cosmic",
    "crystal",
    "dance",
    "dawn",
    "december",
    "deep",
    "delta",
    "demo",
    "desert",
    "diamond",
    "digital",
    "disco",
    "distant",
    "dream",
    "drift",
    "drum",
    "dusk",
    "echo",
    "eclipse",
    "electric",
    "ember",
    "empire",
    "endless",
    "evening",
    "falcon",
    "fever",
    "field",
    "fire",
    "flight",
    "forest",
    "fortune",
    "fragment",
    "frozen",
    "garden",
    "ghost",
    "glass",
    "gold",
    "gravity",
    "green",
    "guitar",
    "harbor",
    "harvest",
    "heart",
    "highway",
    "hollow",
    "horizon",
    "hunter",
    "island",
    "ivory",
    "jazz",
    "journey",
    "jungle",
    "kingdom",
    "lake",
    "lantern",
    "legend",
    "light",
    "live",
    "lost",
    "lunar",
    "machine",
    "magic",
    "marble",
    "meadow",
    "memory",
    "midnight",
    "mirror",
    "mix",
    "monsoon",
    "moon",
    "morning",
    "mountain",
    "neon",
    "night",
    "north",
    "ocean",
    "orbit",
    "orchestra",
    "paper",
    "paradise",
    "piano",
    "pilot",
    "planet",
    "prism",
    "quartet",
    "radio",
    "rain",
    "rebel",
    "remaster",
    "remix",
    "river",
    "rocket",
    "rose",
    "ruby",
    "saga",
    "sailor",
    "satellite",
    "session",
    "shadow",
    "signal",
    "silver",
    "sky",
    "snow",
    "solar",
    "sonata",
    "spring",
    "star",
    "station",
    "stone",
    "storm",
    "summer",
    "sunrise",
    "symphony",
    "tape",
    "temple",
    "thunder",
    "tide",
    "tiger",
    "timber",
    "tokyo",
    "tower",
    "track",
    "train",
    "tribe",
    "tropic",
    "twilight",
    "unplugged",
    "valley",
    "velvet",
    "vinyl",
    "violet",
    "voyage",
    "waltz",
    "wave",
    "west",
    "whisper",
    "wild",
    "willow",
    "winter",
    "wolf",
    "yellow",
    "zenith",
];

const EXTENSIONS: &[&str] = &["mp3", "flac", "ogg", "mkv", "pdf", "txt", "iso", "zip"];

/// A small, fast, seedable generator (SplitMix64): good enough to shuffle a workload, and
/// it keeps the bench free of a random-number dependency.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator started from `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A generator for a sub-stream: same `seed`, different `stream`s give unrelated
    /// sequences.
    pub fn for_stream(seed: u64, stream: u64) -> Rng {
        let mut r = Rng(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F));
        r.next_u64();
        r
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        // Multiply-shift: unbiased enough for a workload, and no division.
        (((self.next_u64() >> 32) * n as u64) >> 32) as usize
    }

    /// Skewed towards small indices in `0..n`, like word popularity: some words are in many
    /// names, most in few.
    pub fn skewed_below(&mut self, n: usize) -> usize {
        let a = self.below(n);
        let b = self.below(n);
        a.min(b)
    }
}

/// What one operation of a simulated peer is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OpKind {
    /// A keyword search of 1–2 words.
    Search,
    /// One bulk Register of [`FILES_PER_REGISTER`] new files.
    Register,
    /// A Lookup by hash of an indexed file.
    Lookup,
}

impl OpKind {
    /// The three kinds, in report order.
    pub const ALL: [OpKind; 3] = [OpKind::Search, OpKind::Register, OpKind::Lookup];

    /// The lowercase name used in files and JSON keys.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Search => "search",
            OpKind::Register => "register",
            OpKind::Lookup => "lookup",
        }
    }

    /// Position in [`OpKind::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// The operations of one simulated peer: `counts[k]` of each kind, shuffled with `rng`
/// (Fisher–Yates), so the kinds interleave.
pub fn op_order(counts: [usize; 3], rng: &mut Rng) -> Vec<OpKind> {
    let mut ops: Vec<OpKind> = OpKind::ALL
        .iter()
        .flat_map(|&k| std::iter::repeat(k).take(counts[k.index()]))
        .collect();
    for i in (1..ops.len()).rev() {
        let j = rng.below(i + 1);
        ops.swap(i, j);
    }
    ops
}

/// A file name of 4–5 vocabulary words plus a tag, e.g.
/// `"neon river live session 17.flac"`: about 40 bytes on average for the pre-populated
/// files (tags up to 1,000,000), the name length the index's memory target is set at.
pub fn file_name(rng: &mut Rng, tag: u64) -> String {
    let words = 4 + rng.below(2);
    let mut name = String::with_capacity(48);
    for _ in 0..words {
        name.push_str(VOCABULARY[rng.skewed_below(VOCABULARY.len())]);
        name.push(' ');
    }
    name.push_str(&tag.to_string());
    name.push('.');
    name.push_str(EXTENSIONS[rng.below(EXTENSIONS.len())]);
    name
}

/// A fake file: its hash is BLAKE3 of a label unique to (`seed`, `label`), its size random.
fn fake_file(rng: &mut Rng, seed: u64, label: &str, tag: u64) -> FileEntry {
    let name = file_name(rng, tag);
    let size = 1024 + (rng.next_u64() % (64 << 20));
    let hash = FileHash::of(format!("p2pshare-bench {seed} {label}").as_bytes());
    FileEntry { hash, size, name }
}

/// The `i`th file of the pre-populated index.
pub fn populated_file(seed: u64, i: usize) -> FileEntry {
    let mut rng = Rng::for_stream(seed, 1 << 40 | i as u64);
    fake_file(&mut rng, seed, &format!("populate {i}"), i as u64)
}

/// The `i`th file of an index pre-populated from a corpus of real names: the hash and size
/// of [`populated_file`], named `name`.
pub fn populated_file_named(seed: u64, i: usize, name: String) -> FileEntry {
    FileEntry {
        name,
        ..populated_file(seed, i)
    }
}

/// The files announced by register op `op` of peer `peer` in run `run`: new hashes, never
/// announced by anyone else in this bench.
pub fn register_batch(seed: u64, run: usize, peer: usize, op: usize) -> Vec<FileEntry> {
    (0..FILES_PER_REGISTER)
        .map(|k| {
            let label = format!("register {run} {peer} {op} {k}");
            let stream =
                (run as u64) << 48 | (peer as u64) << 32 | (op * FILES_PER_REGISTER + k) as u64;
            let mut rng = Rng::for_stream(seed ^ 0x5EED, stream);
            fake_file(&mut rng, seed, &label, op as u64)
        })
        .collect()
}

/// A query of 1–2 words taken from `name` (an indexed file's name), each kept whole or cut
/// to a prefix of at least 3 letters, so the query matches at least that file.
pub fn query_for(name: &str, rng: &mut Rng) -> String {
    let words: Vec<&str> = name
        .split(|c: char| !c.is_alphabetic())
        .filter(|w| w.len() >= 3)
        .collect();
    if words.is_empty() {
        return name.to_string();
    }
    let n = 1 + rng.below(2).min(words.len() - 1);
    let first = rng.below(words.len());
    let mut parts = Vec::with_capacity(n);
    for i in 0..n {
        let w = words[(first + i) % words.len()];
        let cut = if rng.below(2) == 0 {
            w.len()
        } else {
            3.max(w.len() / 2).min(w.len())
        };
        parts.push(&w[..cut]);
    }
    parts.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn op_order_has_the_counts_and_interleaves() {
        let ops = op_order([30, 5, 20], &mut Rng::new(7));
        assert_eq!(ops.len(), 55);
        assert_eq!(ops.iter().filter(|&&k| k == OpKind::Register).count(), 5);
        // Shuffled: the first 30 are not all searches.
        assert!(ops[..30].iter().any(|&k| k != OpKind::Search));
        assert_eq!(ops, op_order([30, 5, 20], &mut Rng::new(7)));
    }

    #[test]
    fn hashes_are_unique_across_populate_and_registers() {
        let mut seen = HashSet::new();
        for i in 0..200 {
            assert!(seen.insert(populated_file(1, i).hash));
        }
        for run in 0..2 {
            for peer in 0..3 {
                for op in 0..5 {
                    for f in register_batch(1, run, peer, op) {
                        assert!(seen.insert(f.hash));
                    }
                }
            }
        }
    }

    #[test]
    fn queries_match_their_name() {
        let mut rng = Rng::new(3);
        for i in 0..100 {
            let f = populated_file(9, i);
            let q = query_for(&f.name, &mut rng);
            let name_words: Vec<&str> = f.name.split(|c: char| !c.is_alphanumeric()).collect();
            for qw in q.split(' ') {
                assert!(qw.len() >= 3);
                assert!(
                    name_words.iter().any(|w| w.starts_with(qw)),
                    "{q} vs {}",
                    f.name
                );
            }
        }
    }

    #[test]
    fn populated_names_average_about_40_bytes() {
        let n = 20_000;
        let step = 1_000_000 / n;
        let total: usize = (0..n).map(|i| populated_file(1, i * step).name.len()).sum();
        let mean = total as f64 / n as f64;
        assert!((38.0..=42.0).contains(&mean), "mean name length {mean}");
    }

    #[test]
    fn below_stays_in_range() {
        let mut rng = Rng::new(0);
        for n in 1..50 {
            for _ in 0..100 {
                assert!(rng.below(n) < n);
                assert!(rng.skewed_below(n) < n);
            }
        }
    }
}
