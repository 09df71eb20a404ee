//! Benchmarks of the index data structure at a million files, and its memory per file.
//!
//! Two datasets, each built in its own process (the bench re-runs itself once per dataset, so
//! that one dataset's freed memory does not hide the other's resident growth; set
//! `INDEX_BENCH_DATASET=vocab` or `=unique` to run one):
//! - `vocab` (criterion group `index_1M`): 1,000,000 files, names of 4–6 words, ~40 bytes,
//!   drawn with a Zipf skew from a 50,000-word vocabulary (~49k distinct words in all).
//! - `unique` (group `index_1M_unique`): 1,000,000 files, names of 3–4 vocabulary words plus
//!   one token unique to the file (a catalogue number of up to 10 digits, in random order) plus an
//!   extension, ~40 bytes: a million distinct words that each occur in one entry, as real names
//!   full of track numbers, IDs and years make.
//!
//! Both give every file two holders among 1,000 peers registering batches of 1,000, print the
//! heap bytes per file counted by a wrapping global allocator and the process's resident
//! growth per file, then time register, search, lookup and peer removal against the index.

use criterion::{black_box, Criterion};
use p2pshare::index::store::{Index, PeerId};
use p2pshare::wire::{FileEntry, FileHash, LookupKey, SearchFilter};
use std::alloc::{GlobalAlloc, Layout, System};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::time::{Duration, Instant};

/// Counts live heap bytes (requested sizes, so malloc's own per-chunk overhead is excluded).
struct Counting;

static LIVE_BYTES: AtomicUsize = AtomicUsize::new(0);

// SAFETY (all four): each method forwards its arguments unchanged to `System`, which upholds
// the `GlobalAlloc` contract; the counter is bookkeeping only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() {
            LIVE_BYTES.fetch_add(layout.size(), Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() {
            LIVE_BYTES.fetch_sub(layout.size(), Relaxed);
            LIVE_BYTES.fetch_add(new_size, Relaxed);
        }
        p
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const FILES: usize = 1_000_000;
const PEERS: usize = 1_000;
const BATCH: usize = 1_000;
const VOCABULARY: usize = 50_000;

/// Which names to index (see the module docs).
#[derive(Clone, Copy, PartialEq)]
enum Dataset {
    Vocab,
    Unique,
}

impl Dataset {
    fn name(self) -> &'static str {
        match self {
            Dataset::Vocab => "vocab",
            Dataset::Unique => "unique",
        }
    }

    fn group(self) -> &'static str {
        match self {
            Dataset::Vocab => "index_1M",
            Dataset::Unique => "index_1M_unique",
        }
    }
}

/// The file's unique token in the `unique` dataset: its number (and family, so the benchmarks'
/// fresh files get new tokens) through a 4-round Feistel permutation of `u32`, in decimal (mostly
/// 10 digits): unique, and registered in random order, as real catalogue numbers and IDs are.
fn unique_token(n: u64, salt: u64) -> u64 {
    let family = match salt {
        0 => 0,
        0xfeed => 1,
        _ => 2,
    };
    let x = u32::try_from(n + family * FILES as u64).expect("under 2^32");
    let (mut l, mut r) = (x >> 16, x & 0xffff);
    for round in 0..4u64 {
        let f = (Rng(u64::from(r) ^ (round << 20)).next() & 0xffff) as u32;
        (l, r) = (r, l ^ f);
    }
    u64::from((l << 16) | r)
}

/// splitmix64: a tiny deterministic generator, so every run builds the same index.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The vocabulary and a Zipf (s = 1) sampler over it.
struct Words {
    words: Vec<String>,
    cumulative: Vec<f64>,
}

impl Words {
    fn new() -> Self {
        let mut rng = Rng(7);
        let words = (0..VOCABULARY)
            .map(|_| {
                let len = 3 + rng.below(7);
                (0..len)
                    .map(|_| (b'a' + rng.below(26) as u8) as char)
                    .collect()
            })
            .collect();
        let mut total = 0.0;
        let cumulative = (1..=VOCABULARY)
            .map(|r| {
                total += 1.0 / r as f64;
                total
            })
            .collect();
        Words { words, cumulative }
    }

    fn pick(&self, rng: &mut Rng) -> &str {
        let x = (rng.next() >> 11) as f64 / (1u64 << 53) as f64 * self.cumulative[VOCABULARY - 1];
        let i = self
            .cumulative
            .partition_point(|&c| c < x)
            .min(VOCABULARY - 1);
        &self.words[i]
    }
}

const EXTENSIONS: &[&str] = &[".mp3", ".flac", ".ogg", ".avi", ".mkv", ".txt"];
const SEPARATORS: &[&str] = &[" ", "_", "-", " - ", "."];

/// The 1,000 files of block `b` (files `b * 1000 ..`); `salt` makes a disjoint family.
fn block(data: Dataset, words: &Words, b: usize, salt: u64) -> Vec<FileEntry> {
    (0..BATCH)
        .map(|i| {
            let n = (b * BATCH + i) as u64;
            let mut rng = Rng(n ^ salt.rotate_left(32));
            let count = match data {
                Dataset::Vocab => 4 + rng.below(3),
                Dataset::Unique => 3 + rng.below(2),
            };
            let mut name = String::new();
            for k in 0..count {
                if k > 0 {
                    name.push_str(SEPARATORS[rng.below(SEPARATORS.len())]);
                }
                let w = words.pick(&mut rng);
                if rng.below(3) == 0 {
                    // Some capitalised words, as real names have.
                    let mut cs = w.chars();
                    name.extend(cs.next().map(|c| c.to_ascii_uppercase()));
                    name.push_str(cs.as_str());
                } else {
                    name.push_str(w);
                }
            }
            if data == Dataset::Unique {
                name.push_str(SEPARATORS[rng.below(SEPARATORS.len())]);
                name.push_str(&unique_token(n, salt).to_string());
            }
            name.push_str(EXTENSIONS[rng.below(EXTENSIONS.len())]);
            let mut key = n.to_le_bytes().to_vec();
            key.extend_from_slice(&salt.to_le_bytes());
            FileEntry {
                hash: FileHash::of(&key),
                size: rng.next() % (1 << 30),
                name,
            }
        })
        .collect()
}

fn addr(i: usize) -> SocketAddr {
    SocketAddr::from(([10, (i >> 16) as u8, (i >> 8) as u8, i as u8], 6699))
}

fn rss_bytes() -> usize {
    // Second field of statm: resident pages.
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// A `kB` field of /proc/self/status (e.g. `VmRSS`, `VmHWM`), in bytes.
fn status_bytes(field: &str) -> usize {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            let line = s.lines().find(|l| l.starts_with(field))?;
            line.split_whitespace().nth(1)?.parse::<usize>().ok()
        })
        .map_or(0, |kb| kb * 1024)
}

fn build(data: Dataset, words: &Words) -> (Index, Vec<PeerId>) {
    let start = Instant::now();
    let (heap0, rss0) = (LIVE_BYTES.load(Relaxed), rss_bytes());
    let vm_rss0 = status_bytes("VmRSS:");
    let mut index = Index::new();
    let peers: Vec<PeerId> = (0..PEERS).map(|i| index.add_peer(addr(i))).collect();
    let blocks = FILES / BATCH;
    let mut name_bytes = 0usize;
    // Round 0 creates every file; round 1 gives each a second holder.
    for round in 0..2 {
        for (p, peer) in peers.iter().enumerate() {
            let b = (p + round) % blocks;
            let files = block(data, words, b, 0);
            if round == 0 {
                name_bytes += files.iter().map(|f| f.name.len()).sum::<usize>();
            }
            let out = index.register(*peer, &files);
            assert_eq!(out.rejected, 0);
            // As the server does after each answer: the words, and the compressed names.
            index.post_pending();
        }
    }
    assert_eq!(index.file_count(), FILES);
    let heap = LIVE_BYTES.load(Relaxed) - heap0;
    let rss = rss_bytes().saturating_sub(rss0);
    eprintln!(
        "[{}] index: {} files, {} entries, {} words, avg name {:.1} B, built in {:.1?}",
        data.name(),
        index.file_count(),
        index.entry_count(),
        index.word_count(),
        name_bytes as f64 / FILES as f64,
        start.elapsed()
    );
    eprintln!(
        "[{}] index memory: {:.1} heap bytes per file ({:.1} MB); resident growth {:.1} bytes per file",
        data.name(),
        heap as f64 / FILES as f64,
        heap as f64 / 1e6,
        rss as f64 / FILES as f64
    );
    // The whole process, as an operator sees it (glibc malloc: fragmentation included).
    let vm_rss = status_bytes("VmRSS:");
    eprintln!(
        "[{}] process VmRSS: {:.1} MB before the build, {:.1} MB after ({:.1} bytes per file of \
         growth); VmHWM (peak) {:.1} MB",
        data.name(),
        vm_rss0 as f64 / 1e6,
        vm_rss as f64 / 1e6,
        (vm_rss - vm_rss0.min(vm_rss)) as f64 / FILES as f64,
        status_bytes("VmHWM:") as f64 / 1e6
    );
    (index, peers)
}

fn main() {
    let data = match std::env::var("INDEX_BENCH_DATASET").as_deref() {
        Ok("vocab") => Dataset::Vocab,
        Ok("unique") => Dataset::Unique,
        Ok(other) => panic!("INDEX_BENCH_DATASET={other}: expected vocab or unique"),
        Err(_) => {
            // One process per dataset, so each one's resident growth is measured from scratch.
            let exe = std::env::current_exe().expect("own executable");
            for data in [Dataset::Vocab, Dataset::Unique] {
                let status = std::process::Command::new(&exe)
                    .args(std::env::args_os().skip(1))
                    .env("INDEX_BENCH_DATASET", data.name())
                    .status()
                    .expect("run the bench for one dataset");
                assert!(status.success(), "{} dataset: {status}", data.name());
            }
            return;
        }
    };
    let words = Words::new();
    let (mut index, peers) = build(data, &words);
    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(2))
        .configure_from_args();

    let known = block(data, &words, 123, 0);
    let fresh = block(data, &words, 0, 0xfeed);
    let fresh_hashes: Vec<FileHash> = fresh.iter().map(|f| f.hash).collect();
    let newcomer = index.add_peer(addr(PEERS));

    let mut g = c.benchmark_group(data.group());
    g.bench_function("register_1k_new_files", |b| {
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                // The word postings a register defers are part of its cost.
                let t = Instant::now();
                black_box(index.register(newcomer, &fresh));
                index.post_pending();
                spent += t.elapsed();
                index.unregister(newcomer, &fresh_hashes);
            }
            spent
        })
    });
    g.bench_function("register_1k_known_files", |b| {
        let hashes: Vec<FileHash> = known.iter().map(|f| f.hash).collect();
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let t = Instant::now();
                black_box(index.register(newcomer, &known));
                index.post_pending();
                spent += t.elapsed();
                index.unregister(newcomer, &hashes);
            }
            spent
        })
    });

    // Queries built from an indexed name, so they find something.
    let sample = &known[7].name;
    let sample_words: Vec<&str> = sample
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let two_words = format!(
        "{} {}",
        sample_words[0],
        &sample_words[1][..2.min(sample_words[1].len())]
    );
    let common = words.words[0].clone();
    let none = SearchFilter::default();
    // Sizes are uniform below 1 GiB: this keeps about 2% of the files.
    let big = SearchFilter {
        min_size: 1000 << 20,
        ..SearchFilter::default()
    };
    let flac = SearchFilter {
        exts: vec!["flac".into()],
        ..SearchFilter::default()
    };
    let mut queries = vec![
        ("search_2_words", two_words, &none),
        ("search_1_word_common", common.clone(), &none),
        ("search_1_letter", "s".to_string(), &none),
        ("search_common_ext_flac", common.clone(), &flac),
        ("search_common_size_rejects_98pc", common.clone(), &big),
        ("search_1_letter_size_rejects_98pc", "s".to_string(), &big),
    ];
    if data == Dataset::Unique {
        // The file's own token: a word with a single posting.
        queries.push((
            "search_unique_token",
            unique_token(123 * BATCH as u64 + 7, 0).to_string(),
            &none,
        ));
    }
    for (label, query, filter) in &queries {
        let (label, query) = (*label, query.as_str());
        let page = index
            .search_page(query, filter, None, 100)
            .expect("no cursor");
        eprintln!(
            "{label}: {query:?} -> {} hits, total {}{}, next {}, partial {}",
            page.hits.len(),
            if page.total_exact { "" } else { ">=" },
            page.total,
            page.next.is_some(),
            page.partial
        );
        g.bench_function(label, |b| {
            b.iter(|| black_box(index.search_page(black_box(query), filter, None, 100)))
        });
    }
    // The second page of the common word: continues from a cursor.
    let first = index
        .search_page(&common, &none, None, 100)
        .expect("no cursor");
    let cursor = first.next.expect("a common word has more than 100 matches");
    g.bench_function("search_1_word_common_page_2", |b| {
        b.iter(|| black_box(index.search_page(black_box(&common), &none, Some(&cursor), 100)))
    });
    let by_hash = LookupKey::Hash(known[3].hash);
    let by_prefix = LookupKey::HashPrefix(known[3].hash.to_hex()[..10].to_string());
    let by_name = LookupKey::Name(known[3].name.clone());
    for (label, key) in [
        ("lookup_hash", &by_hash),
        ("lookup_prefix", &by_prefix),
        ("lookup_name", &by_name),
    ] {
        assert!(index.lookup(key).is_ok(), "{label}");
        g.bench_function(label, |b| {
            b.iter(|| black_box(index.lookup(black_box(key))))
        });
    }
    g.finish();

    let big: Vec<Vec<FileEntry>> = (0..10).map(|b| block(data, &words, b, 0xbeef)).collect();
    let mut g = c.benchmark_group(data.group());
    g.bench_function("remove_peer_10k_files", |b| {
        // Setup (registering the 10,000 files) is outside the timed part; only the removal
        // of the peer, its holdings, entries, files and words is measured.
        b.iter_custom(|iters| {
            let mut spent = Duration::ZERO;
            for _ in 0..iters {
                let p = index.add_peer(addr(PEERS + 1));
                for files in &big {
                    index.register(p, files);
                }
                index.post_pending();
                let t = Instant::now();
                black_box(index.remove_peer(p));
                spent += t.elapsed();
            }
            spent
        })
    });
    g.finish();
    eprintln!(
        "[{}] after the benchmarks' churn: {} files, {:.1} heap bytes per file, process VmRSS {:.1} MB",
        data.name(),
        index.file_count(),
        LIVE_BYTES.load(Relaxed) as f64 / index.file_count() as f64,
        status_bytes("VmRSS:") as f64 / 1e6
    );
    drop(peers);
    c.final_summary();
}
