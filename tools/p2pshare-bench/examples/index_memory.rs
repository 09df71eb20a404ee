//! The index's memory by part at the memory target's spec: the bench's pre-populated files
//! (`--files N --holders 2`: fake peer n registers its own 1,000 files and those of the peer
//! before it) put straight into an `Index`, without indexd or sockets, then the heap bytes of
//! each part per file (`Index::heap_bytes`: capacities, so slack counts) and the process's
//! resident growth, against what malloc gave out (headers and rounding included) and what it
//! holds free inside its heap (holes left by blocks that grew and moved: resident, and not
//! given back by `malloc_trim` unless whole pages are free). `cargo run --release -p
//! p2pshare-bench --example index_memory [FILES]` (default 1,000,000); with `MALLOC_INFO=1`
//! it also writes glibc's `malloc_info` report (free chunks by size) to standard error. The
//! real indexd's figure, which adds the connections and the binary's resident code, is
//! measured as README says.

use p2pshare::index::store::Index;
use p2pshare_bench::workload::{self, FILES_PER_FAKE_PEER};
use std::net::{Ipv4Addr, SocketAddr};

/// VmRSS of this process, in bytes.
fn resident() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<usize>().ok())
        .expect("a VmRSS line");
    kb * 1024
}

fn main() {
    let count: usize = match std::env::args().nth(1) {
        Some(s) => s.parse().expect("FILES: a number"),
        None => 1_000_000,
    };
    let holders = 2;
    // The bench's default `--seed`.
    let seed = 1;
    let files: Vec<_> = (0..count)
        .map(|i| workload::populated_file(seed, i))
        .collect();
    let before = resident();
    let malloc_before = p2pshare::sys::process::malloc_usage();
    let mut index = Index::new();
    let chunks: Vec<_> = files.chunks(FILES_PER_FAKE_PEER).collect();
    for n in 0..chunks.len() {
        let peer = index.add_peer(SocketAddr::from((Ipv4Addr::LOCALHOST, n as u16)));
        for back in 0..holders.min(chunks.len()) {
            index.register(peer, chunks[(n + chunks.len() - back) % chunks.len()]);
            index.post_pending();
            // What indexd does at the end of each reactor turn.
            index.continue_filter_rebuild();
        }
    }
    let grown = resident().saturating_sub(before);
    let per_file = |bytes: usize| bytes as f64 / count as f64;
    let mut total = 0;
    for (part, bytes) in index.heap_bytes() {
        total += bytes;
        println!("{part:28} {:7.1} B/file", per_file(bytes));
    }
    println!("{:28} {:7.1} B/file", "heap in all", per_file(total));
    println!("{:28} {:7.1} B/file", "resident growth", per_file(grown));
    if let (Some(a), Some(b)) = (malloc_before, p2pshare::sys::process::malloc_usage()) {
        // What malloc gave the index, its headers and rounding included, against the heap
        // bytes above: the difference is malloc's overhead per block.
        let given = (b.in_use + b.mmapped).saturating_sub(a.in_use + a.mmapped);
        println!(
            "{:28} {:7.1} B/file",
            "malloc's blocks (grown)",
            per_file(given)
        );
        // Free chunks inside malloc's heap: resident where they were used before (holes
        // left by blocks that grew and moved), which `malloc_trim` cannot give back unless
        // whole pages are free.
        println!(
            "{:28} {:7.1} B/file",
            "malloc's free (grown)",
            per_file(b.free.saturating_sub(a.free))
        );
    }
    if std::env::var_os("MALLOC_INFO").is_some() {
        p2pshare::sys::process::print_malloc_info();
    }
    // What the allocator holds free (fragmentation), handed back.
    let t = std::time::Instant::now();
    p2pshare::sys::process::release_free_memory();
    let trim = t.elapsed();
    let trimmed = resident().saturating_sub(before);
    println!(
        "{:28} {:7.1} B/file (malloc_trim took {} µs)",
        "resident after malloc_trim",
        per_file(trimmed),
        trim.as_micros()
    );
    println!(
        "{} files, {} entries, {} words, {} holdings",
        index.file_count(),
        index.entry_count(),
        index.word_count(),
        index.holding_count()
    );
}
