//! The background work of churn, timed group by group without indexd or sockets: the bench's
//! pre-populated files (`--names FILE --files N`, one holder each, fake peers of 1,000 files)
//! put straight into an `Index`, then peers of `CHURN_FILES` files register and depart in
//! the groups indexd's background slices are made of (`GROUP_UNITS` holdings between two
//! looks at the clock; each register group followed by its word posting), with a filter
//! rebuild step, a compaction step and a name-table walk step after each (indexd does those
//! once a turn). Prints, for each kind of step, how many, p50, p99, the longest and how many
//! took 1 ms or more, in the thread's CPU time; with `P2PSHARE_WORK_TRACE=FILE`, the work
//! trace (see `p2pshare::index::worktrace`) of the steps after the population, each group
//! with its steps a turn, says what the longest were made of. For profiling (`perf record` on
//! it) and for comparing two builds;
//! the loop pauses README quotes come from indexd itself (`measure_churn` in
//! tests/it/indexd.rs).
//!
//! `cargo run --release -p p2pshare-bench --example churn_profile -- NAMES FILES [ROUNDS]`:
//! ROUNDS peers (default 2) of `CHURN_FILES` files (default 100,000) named by the corpus
//! lines after the first FILES, or, with `SYNTHETIC=1`, the pre-populated files named
//! `base{i}.bin` and the churn peers' `churn{i}.bin` (as `measure_churn` names them; NAMES is
//! then not read). `BASE_PEER_FILES=N`: the pre-populated files are held by peers of N
//! files (default 1,000); `BASE_DEPARTURES=N`: after the rounds, N of those peers leave.

use p2pshare::index::server::GROUP_UNITS;
use p2pshare::index::store::Index;
use p2pshare::index::worktrace;
use p2pshare::sys::process::thread_cpu_time;
use p2pshare::wire::FileEntry;
use p2pshare_bench::corpus::Corpus;
use p2pshare_bench::workload::{self, FILES_PER_FAKE_PEER};
use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

/// The bench's default `--seed`.
const SEED: u64 = 1;

/// The durations of one kind of step, in the thread's CPU time (a busy machine's other
/// processes do not inflate it; page faults and the kernel's work for the thread count).
#[derive(Default)]
struct Steps(Vec<Duration>);

fn cpu() -> Duration {
    thread_cpu_time().expect("a thread CPU clock")
}

impl Steps {
    fn time<R>(&mut self, f: impl FnOnce() -> R) -> R {
        let t = cpu();
        let r = f();
        self.0.push(cpu().saturating_sub(t));
        r
    }

    fn report(&mut self, what: &str) {
        if self.0.is_empty() {
            return;
        }
        self.0.sort_unstable();
        let n = self.0.len();
        let us = |d: Duration| d.as_micros();
        let over = self.0.iter().filter(|d| d.as_millis() >= 1).count();
        println!(
            "{what:18} {n:9} {:8} {:8} {:8} {:6}",
            us(self.0[n / 2]),
            us(self.0[(n * 99 / 100).min(n - 1)]),
            us(self.0[n - 1]),
            over
        );
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("NAMES: a file of names, one a line");
    let count: usize = args.next().map_or(1_000_000, |s| s.parse().expect("FILES"));
    let rounds: usize = args.next().map_or(2, |s| s.parse().expect("ROUNDS"));
    let churn: usize = std::env::var("CHURN_FILES").map_or(100_000, |s| s.parse().expect("N"));
    let synthetic = std::env::var_os("SYNTHETIC").is_some();
    let per_peer: usize =
        std::env::var("BASE_PEER_FILES").map_or(FILES_PER_FAKE_PEER, |s| s.parse().expect("N"));
    let base_departures: usize =
        std::env::var("BASE_DEPARTURES").map_or(0, |s| s.parse().expect("N"));
    let corpus = (!synthetic).then(|| Corpus::read(path.as_ref(), count).expect("names"));
    let name_of = |tag: &str, i: usize| match &corpus {
        Some(c) => c.name(i, SEED),
        None => format!("{tag}{i}.bin"),
    };

    let started = Instant::now();
    let mut index = Index::new();
    let mut chunk = Vec::with_capacity(per_peer);
    let mut base_peers = Vec::new();
    for n in 0..count.div_ceil(per_peer) {
        chunk.clear();
        let end = ((n + 1) * per_peer).min(count);
        chunk.extend(
            (n * per_peer..end)
                .map(|i| workload::populated_file_named(SEED, i, name_of("base", i))),
        );
        let peer = index.add_peer(SocketAddr::from((Ipv4Addr::LOCALHOST, n as u16)));
        base_peers.push(peer);
        index.register(peer, &chunk);
        index.post_pending();
        index.continue_filter_rebuild();
    }
    while index.is_compacting() || index.is_rebuilding_filter() || index.has_name_walks() {
        index.continue_compaction();
        index.continue_filter_rebuild();
        index.continue_name_walks();
    }
    eprintln!(
        "{} files indexed in {:.1} s",
        index.file_count(),
        started.elapsed().as_secs_f64()
    );

    // The population is not a turn.
    worktrace::end_turn();
    let (mut register, mut depart, mut filter, mut compact, mut walk) = Default::default();
    let (register, depart, filter, compact, walk): (
        &mut Steps,
        &mut Steps,
        &mut Steps,
        &mut Steps,
        &mut Steps,
    ) = (
        &mut register,
        &mut depart,
        &mut filter,
        &mut compact,
        &mut walk,
    );
    let files: Vec<FileEntry> = (0..churn)
        .map(|k| {
            let i = count + k;
            let mut f = workload::populated_file_named(SEED, i, name_of("churn", k));
            f.size = f.size.max(1);
            f
        })
        .collect();
    let mut end_of_turn = |index: &mut Index| {
        filter.time(|| worktrace::time("filter", || index.continue_filter_rebuild()));
        compact.time(|| worktrace::time("compact", || index.continue_compaction()));
        walk.time(|| worktrace::time("name walk", || index.continue_name_walks()));
    };
    for round in 0..rounds {
        let peer = index.add_peer(SocketAddr::from((Ipv4Addr::LOCALHOST, 60_000)));
        for slice in files.chunks(GROUP_UNITS) {
            register.time(|| {
                worktrace::time("register", || index.register(peer, slice));
                index.post_pending();
            });
            end_of_turn(&mut index);
            worktrace::end_turn();
        }
        index.begin_departure(peer);
        while index.has_departures() {
            depart.time(|| worktrace::time("depart", || index.continue_departures(GROUP_UNITS)));
            end_of_turn(&mut index);
            worktrace::end_turn();
        }
        eprintln!(
            "round {round}: {} entries at {:.1} s",
            index.entry_count(),
            started.elapsed().as_secs_f64()
        );
    }
    // Holders of the base entries leave, one after the other (their entries are in the
    // middle of every common word's postings, not at the end).
    for &peer in base_peers.iter().take(base_departures) {
        index.begin_departure(peer);
        while index.has_departures() {
            depart.time(|| worktrace::time("depart", || index.continue_departures(GROUP_UNITS)));
            end_of_turn(&mut index);
            worktrace::end_turn();
        }
    }
    println!("step                   count   p50 µs   p99 µs   max µs  >=1ms");
    register.report("register group");
    depart.report("departure group");
    filter.report("filter step");
    compact.report("compaction step");
    walk.report("name walk step");
}
