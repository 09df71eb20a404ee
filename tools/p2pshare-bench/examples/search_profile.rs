//! Search's server-side time per query class on real names, without indexd or sockets: the
//! bench's pre-populated files (`--names FILE --files N`, one holder each, fake peers of 1,000
//! files) put straight into an `Index`, then queries of each class drawn as the bench draws
//! them, each timed around `Index::search_page` with indexd's time limit (what `server_us`
//! measures, less the request's decoding). For profiling (`perf record` on it) and for
//! comparing two builds on the same queries; the figures README quotes come from the bench.
//!
//! `cargo run --release -p p2pshare-bench --example search_profile -- NAMES FILES [QUERIES]
//! [CLASS]`: QUERIES per class (default 2,000), CLASS one of `one_word`, `two_words`,
//! `prefix_1`, `prefix_3`, `common_word` (default all). Environment: `ANSWERS=FILE` writes
//! each query and its hits' hashes (to check two builds give the same answers);
//! `NO_TIME_LIMIT=1` leaves the time limit off (so answers do not depend on the machine's
//! speed); `REPEAT=N` runs each class's queries N times (for a profiler); `TIMES=FILE` writes
//! each query with its time in µs, hits, total, whether partial and the work units spent
//! (to find which queries make a class's tail); `QUERIES=FILE` takes the queries from FILE,
//! one a line, as one class `file`, instead of drawing them.

use p2pshare::index::store::{Index, SEARCH_TIME_LIMIT};
use p2pshare::wire::{encode_frame, Response, ResponseBody, SearchFilter};
use p2pshare_bench::corpus::{self, Corpus, NameStats, QueryClass};
use p2pshare_bench::workload::{self, Rng, FILES_PER_FAKE_PEER};
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

/// The bench's default `--seed`.
const SEED: u64 = 1;
/// The bench's search limit.
const LIMIT: usize = 100;

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("NAMES: a file of names, one a line");
    let count: usize = args.next().map_or(1_000_000, |s| s.parse().expect("FILES"));
    let queries: usize = args.next().map_or(2_000, |s| s.parse().expect("QUERIES"));
    let only = args.next();
    let repeat: usize = std::env::var("REPEAT").map_or(1, |s| s.parse().expect("REPEAT"));
    let corpus = Corpus::read(path.as_ref(), count).expect("names");
    let name_of = |i: usize| corpus.name(i, SEED);

    let started = Instant::now();
    let mut index = Index::new();
    let mut chunk = Vec::with_capacity(FILES_PER_FAKE_PEER);
    for n in 0..count.div_ceil(FILES_PER_FAKE_PEER) {
        chunk.clear();
        let end = ((n + 1) * FILES_PER_FAKE_PEER).min(count);
        chunk.extend(
            (n * FILES_PER_FAKE_PEER..end)
                .map(|i| workload::populated_file_named(SEED, i, name_of(i))),
        );
        let peer = index.add_peer(SocketAddr::from((Ipv4Addr::LOCALHOST, n as u16)));
        index.register(peer, &chunk);
        // What indexd does at the end of each reactor turn.
        index.post_pending();
        index.continue_filter_rebuild();
    }
    while index.is_compacting() || index.has_name_walks() {
        index.continue_compaction();
        index.continue_name_walks();
    }
    eprintln!(
        "{} files indexed in {:.1} s, {} words",
        index.file_count(),
        started.elapsed().as_secs_f64(),
        index.word_count()
    );
    if std::env::var_os("NO_TIME_LIMIT").is_none() {
        index.set_search_time_limit(Some(SEARCH_TIME_LIMIT));
    }
    let stats = NameStats::of(count, name_of);
    let mut answers = std::env::var_os("ANSWERS")
        .map(|p| std::io::BufWriter::new(std::fs::File::create(p).expect("ANSWERS file")));
    let mut times_out = std::env::var_os("TIMES")
        .map(|p| std::io::BufWriter::new(std::fs::File::create(p).expect("TIMES file")));
    let given: Option<Vec<String>> = std::env::var_os("QUERIES").map(|p| {
        std::fs::read_to_string(p)
            .expect("QUERIES file")
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_owned)
            .collect()
    });

    println!(
        "class        queries   p50 µs   p90 µs   p99 µs   max µs  partial | p50 µs of full pages, others | encode µs, bytes (mean) | slowest"
    );
    let classes: Vec<Option<QueryClass>> = match given {
        Some(_) => vec![None],
        None => QueryClass::ALL.into_iter().map(Some).collect(),
    };
    for class in classes {
        let key = class.map_or("file", |c| c.key());
        if class.is_some() && only.as_deref().is_some_and(|o| o != key) {
            continue;
        }
        let qs: Vec<String> = match (class, &given) {
            (Some(class), _) => {
                let mut rng = Rng::for_stream(SEED, 0x5EA_0000 + class.index() as u64);
                (0..queries)
                    .filter_map(|_| {
                        corpus::query(class, count, name_of, &stats.top_words, &mut rng)
                    })
                    .collect()
            }
            (None, Some(given)) => given.clone(),
            (None, None) => unreachable!("a class or a file"),
        };
        let mut times: Vec<(u64, usize)> = Vec::with_capacity(qs.len() * repeat);
        // Times of the searches that filled a page of `LIMIT` hits, and of the others.
        let (mut full, mut short) = (Vec::new(), Vec::new());
        let (mut encode_ns, mut bytes) = (0u64, 0usize);
        let mut frame = Vec::new();
        let mut partial = 0;
        for _ in 0..repeat {
            for (i, q) in qs.iter().enumerate() {
                let t = Instant::now();
                let page = index
                    .search_page(q, &SearchFilter::default(), None, LIMIT)
                    .expect("no cursor");
                let ns = t.elapsed().as_nanos() as u64;
                times.push((ns, i));
                if page.hits.len() == LIMIT {
                    full.push(ns);
                } else {
                    short.push(ns);
                }
                partial += usize::from(page.partial);
                if let Some(out) = times_out.as_mut() {
                    writeln!(
                        out,
                        "{key}\t{q}\t{}\t{}\t{}\t{}\t{}",
                        ns / 1000,
                        page.hits.len(),
                        page.total,
                        page.partial,
                        page.work
                    )
                    .expect("write");
                }
                // What indexd does next: the answer encoded as a frame, its hits given back.
                let answer = Response {
                    id: 1,
                    body: ResponseBody::SearchResults {
                        hits: page.hits,
                        total: page.total,
                        total_exact: page.total_exact,
                        next: page.next,
                        partial: page.partial,
                        server_us: 0,
                    },
                };
                frame.clear();
                let t = Instant::now();
                encode_frame(&answer, &mut frame);
                encode_ns += t.elapsed().as_nanos() as u64;
                bytes += frame.len();
                let ResponseBody::SearchResults { hits, .. } = answer.body else {
                    unreachable!("built above")
                };
                if let Some(out) = answers.as_mut() {
                    let hashes: Vec<String> = hits
                        .iter()
                        .map(|h| h.hash.to_hex()[..12].to_string())
                        .collect();
                    writeln!(
                        out,
                        "{}\t{q}\t{}\t{}\t{}",
                        key,
                        page.partial,
                        page.total,
                        hashes.join(",")
                    )
                    .expect("write");
                }
                index.recycle_hits(hits);
            }
        }
        times.sort_unstable();
        let at = |p: f64| times[((times.len() as f64 * p) as usize).min(times.len() - 1)].0 / 1000;
        let slowest: Vec<String> = times
            .iter()
            .rev()
            .take(5)
            .map(|&(ns, i)| format!("{:?} {}", qs[i], ns / 1000))
            .collect();
        let median = |v: &mut Vec<u64>| {
            v.sort_unstable();
            v.get(v.len() / 2).map_or(0, |ns| ns / 1000)
        };
        let n = times.len().max(1) as u64;
        println!(
            "{:12} {:7} {:8} {:8} {:8} {:8} {:8} | {} ({}) {} ({}) | {:.1} {} | {}",
            key,
            times.len(),
            at(0.5),
            at(0.9),
            at(0.99),
            times.last().map_or(0, |t| t.0 / 1000),
            partial,
            median(&mut full),
            full.len(),
            median(&mut short),
            short.len(),
            encode_ns as f64 / n as f64 / 1000.0,
            bytes as u64 / n,
            slowest.join(" | ")
        );
        eprintln!(
            "{key}: answers built at about {} ns per hit (the index's moving average, which \
             the time limit reserves for)",
            index.search_hit_ns()
        );
    }
}
