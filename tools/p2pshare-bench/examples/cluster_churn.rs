//! Register/unregister churn at one cluster node, and another node's loop pauses while it
//! applies it (issue 16: "b's loop pauses while applying another node's churn").
//!
//! `cargo run --release -p p2pshare-bench --example cluster_churn -- A B CLIENTS FILES SECS`:
//! CLIENTS sessions at node A (`HOST:PORT`) each register FILES new files in one request,
//! unregister them all in one request, and again, for SECS seconds; meanwhile an observer
//! at node B reads B's `Stats` every 100 ms. Printed: the churn's rate (entries registered
//! and withdrawn per second at A), B's loop pauses (its `loop_max_pause_us`, p99 and p99.9
//! since it started, read before and after, and every second), and how long after the
//! churn B's entry count was back to what it was before (its apply caught up).
//! An optional sixth argument KEPT: each client first registers KEPT files it keeps (in
//! requests of 10,000) and churns beside them, so that A compacts a session of KEPT entries
//! by snapshots; A's loop pauses are printed too.
//! Start the nodes with their rate limits off (`--rate-register 0 --rate-address 0
//! --max-holdings-per-ip 0`), as the bench's cluster mode does.

use p2pshare::wire::{FileEntry, FileHash, RequestBody, ResponseBody, ServerStats};
use p2pshare_bench::client::Client;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

fn stats(c: &mut Client) -> ServerStats {
    match c.call(RequestBody::Stats).expect("stats") {
        ResponseBody::Stats(s) => s,
        other => panic!("Stats answered {other:?}"),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (a, b, clients, files, secs, kept) = match &args[..] {
        [a, b, c, f, s] => (a, b, c, f, s, 0),
        [a, b, c, f, s, k] => (a, b, c, f, s, k.parse().expect("KEPT")),
        _ => {
            eprintln!("usage: cluster_churn A B CLIENTS FILES SECS [KEPT]");
            std::process::exit(2);
        }
    };
    let a: SocketAddr = a.parse().expect("A: HOST:PORT");
    let b: SocketAddr = b.parse().expect("B: HOST:PORT");
    let clients: usize = clients.parse().expect("CLIENTS");
    let files: usize = files.parse().expect("FILES");
    let run = Duration::from_secs(secs.parse().expect("SECS"));
    let mut observer = Client::hello(b, 0, "cluster_churn observer").expect("B");
    let mut at_a = Client::hello(a, 0, "cluster_churn observer").expect("A");
    let before = stats(&mut observer);
    println!(
        "b before: {} entries, loop max {} µs, p99 {} µs, p99.9 {} µs, {} turns",
        before.names,
        before.loop_max_pause_us,
        before.loop_p99_pause_us,
        before.loop_p999_pause_us,
        before.loop_turns
    );
    let stop = Arc::new(AtomicBool::new(false));
    let churned = Arc::new(AtomicU64::new(0));
    let mut threads = Vec::new();
    for c in 0..clients {
        let (stop, churned) = (stop.clone(), churned.clone());
        threads.push(std::thread::spawn(move || {
            let mut client = Client::hello(a, 7000 + c as u16, "cluster_churn").expect("A");
            let kept_list: Vec<FileEntry> = (0..kept)
                .map(|i| FileEntry {
                    hash: FileHash::of(format!("kept {c} {i}").as_bytes()),
                    size: 1000 + i as u64,
                    name: format!("kept {c} file {i} of a long shared folder.flac"),
                })
                .collect();
            for part in kept_list.chunks(10_000) {
                match client.call(RequestBody::Register {
                    files: part.to_vec(),
                }) {
                    Ok(ResponseBody::Registered { .. }) => {}
                    other => panic!("client {c}: the kept register answered {other:?}"),
                }
            }
            let list: Vec<FileEntry> = (0..files)
                .map(|i| FileEntry {
                    hash: FileHash::of(format!("churn {c} {i}").as_bytes()),
                    size: 1000 + i as u64,
                    name: format!("churn {c} file {i}.mp3"),
                })
                .collect();
            let hashes: Vec<FileHash> = list.iter().map(|f| f.hash).collect();
            while !stop.load(Ordering::Relaxed) {
                match client.call(RequestBody::Register {
                    files: list.clone(),
                }) {
                    Ok(ResponseBody::Registered { added, .. }) => {
                        churned.fetch_add(u64::from(added), Ordering::Relaxed);
                    }
                    Ok(other) => {
                        eprintln!("client {c}: register answered {other:?}");
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    Err(e) => panic!("client {c}: {e}"),
                }
                match client.call(RequestBody::Unregister {
                    hashes: hashes.clone(),
                }) {
                    Ok(ResponseBody::Unregistered { removed, .. }) => {
                        churned.fetch_add(u64::from(removed), Ordering::Relaxed);
                    }
                    Ok(other) => eprintln!("client {c}: unregister answered {other:?}"),
                    Err(e) => panic!("client {c}: {e}"),
                }
            }
        }));
    }
    let began = Instant::now();
    let mut next = Duration::from_secs(1);
    while began.elapsed() < run {
        std::thread::sleep(Duration::from_millis(100));
        if began.elapsed() >= next {
            next += Duration::from_secs(1);
            let s = stats(&mut observer);
            println!(
                "{:4.1} s: churned {} entries at a; b: {} entries, loop max {} µs, p99 {} µs, p99.9 {} µs",
                began.elapsed().as_secs_f64(),
                churned.load(Ordering::Relaxed),
                s.names,
                s.loop_max_pause_us,
                s.loop_p99_pause_us,
                s.loop_p999_pause_us
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("a churn thread");
    }
    let took = began.elapsed();
    let total = churned.load(Ordering::Relaxed);
    let sa = stats(&mut at_a);
    println!(
        "a: loop max {} µs, p99 {} µs, p99.9 {} µs, {} turns",
        sa.loop_max_pause_us, sa.loop_p99_pause_us, sa.loop_p999_pause_us, sa.loop_turns
    );
    let ended = Instant::now();
    let mut s = stats(&mut observer);
    while s.names != before.names && ended.elapsed() < Duration::from_secs(120) {
        std::thread::sleep(Duration::from_millis(50));
        s = stats(&mut observer);
    }
    println!(
        "churn: {clients} clients × {files} files at a for {:.1} s: {total} entries registered or withdrawn, {:.0}/s",
        took.as_secs_f64(),
        total as f64 / took.as_secs_f64()
    );
    println!(
        "b after: {} entries ({} before) {:.2} s after the churn; loop max {} µs, p99 {} µs, p99.9 {} µs, {} turns",
        s.names,
        before.names,
        ended.elapsed().as_secs_f64(),
        s.loop_max_pause_us,
        s.loop_p99_pause_us,
        s.loop_p999_pause_us,
        s.loop_turns
    );
}
