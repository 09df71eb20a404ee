//! A cluster node's rebuild without NATS: the bench's pre-populated files (`--files N`, one
//! register record per 1,000 files, as node a publishes them) handed to a
//! [`Replica`](p2pshare::index::cluster::apply::Replica) at most
//! [`MAX_QUEUED_RECORDS`] at a time, as the NATS thread hands them to the reactor, and applied
//! with `Replica::poll_rebuilding`, as indexd does before it listens. Prints the time
//! (entries/s), the index's heap by part (`Index::heap_bytes`: capacities) and the process's
//! `VmRSS`/`VmHWM` growth per entry.
//! `cargo run --release -p p2pshare-bench --example replica_rebuild [FILES]` (default
//! 1,000,000). The records are built before the clock starts and are held throughout (the
//! growth figures count what was freed of them), so this is the index's side of a rebuild
//! only: indexd's `VmHWM` adds what the NATS client buffers.

use p2pshare::index::cluster::apply::{Inbound, Replica};
use p2pshare::index::cluster::link::MAX_QUEUED_RECORDS;
use p2pshare::index::cluster::{Cap, Record};
use p2pshare::index::store::Index;
use p2pshare_bench::workload::{self, FILES_PER_FAKE_PEER};
use std::time::Instant;

/// A field of `/proc/self/status`, in kB.
fn status_kb(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("a status line")
}

fn main() {
    let count: usize = match std::env::args().nth(1) {
        Some(s) => s.parse().expect("FILES: a number"),
        None => 1_000_000,
    };
    let seed = 1;
    let mut inbound = Vec::new();
    for (n, start) in (0..count).step_by(FILES_PER_FAKE_PEER).enumerate() {
        let node = "a-1".to_string();
        let addr = std::net::SocketAddr::from(([127, 0, 0, 1], n as u16));
        let session = n as u64;
        inbound.push(Inbound::Record {
            node: node.clone(),
            session,
            record: Record::Open { addr },
        });
        let files = (start..(start + FILES_PER_FAKE_PEER).min(count))
            .map(|i| workload::populated_file(seed, i))
            .collect();
        inbound.push(Inbound::Record {
            node,
            session,
            record: Record::Register {
                files,
                cap: Cap::All,
            },
        });
    }
    let (rss, hwm) = (status_kb("VmRSS"), status_kb("VmHWM"));
    let began = Instant::now();
    let mut index = Index::new();
    let mut replica = Replica::new();
    let mut events = Vec::new();
    let mut records = inbound.into_iter();
    loop {
        let before = replica.queued_records();
        for i in records.by_ref().take(MAX_QUEUED_RECORDS - before) {
            replica.handle_inbound(i);
        }
        if !replica.has_work() {
            break;
        }
        replica.poll_rebuilding(&mut index, &mut events);
    }
    index.post_pending();
    let took = began.elapsed();
    assert!(events.is_empty(), "{events:?}");
    let per = |bytes: usize| bytes as f64 / count as f64;
    let mut total = 0;
    for (part, bytes) in index.heap_bytes() {
        total += bytes;
        println!("{part:28} {:7.1} B/entry", per(bytes));
    }
    println!("{:28} {:7.1} B/entry", "heap in all", per(total));
    println!(
        "{:28} {:7.1} B/entry (VmHWM {:.1})",
        "resident growth",
        per(status_kb("VmRSS").saturating_sub(rss) * 1024),
        per(status_kb("VmHWM").saturating_sub(hwm) * 1024)
    );
    println!(
        "{} entries rebuilt in {:.2} s: {:.0} entries/s",
        index.entry_count(),
        took.as_secs_f64(),
        count as f64 / took.as_secs_f64()
    );
}
