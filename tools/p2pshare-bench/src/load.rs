//! The load: pre-populating the index from many fake peers, and the closed-loop runs where
//! each simulated peer (a thread with its own connection) does its operations one at a time.

use super::client::Client;
use super::config::OpCounts;
use super::floor;
use super::stats;
use super::workload::{self, OpKind, Rng, FILES_PER_FAKE_PEER};
use hdrhistogram::Histogram;
use p2pshare::wire::{FileEntry, LookupKey, RequestBody, ResponseBody};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;
use std::time::{Duration, Instant};

/// How often the pre-populating connections ping, well within indexd's default 120 s idle
/// timeout: a closed connection would take its files out of the index mid-run.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);

/// How often a run reports progress.
const PROGRESS_INTERVAL: Duration = Duration::from_secs(2);

/// Results per search asked for (the server caps it further).
pub const SEARCH_LIMIT: u32 = 100;

/// Fake listening ports: populate connections from here up.
const POPULATE_PORT_BASE: u16 = 20000;
/// Simulated peers announce ports from here up.
const PEER_PORT_BASE: u16 = 40000;

/// The pre-populated part of the index: the files, and the connections that hold them
/// (kept open and pinged until dropped, because the index forgets a closed peer's files).
pub struct Population {
    /// Every pre-populated file, in order.
    pub files: Arc<Vec<FileEntry>>,
    stop: Option<mpsc::Sender<()>>,
    keepalive: Option<thread::JoinHandle<()>>,
}

impl Population {
    /// Registers `count` files with the index at `addr` from `ceil(count /`
    /// [`FILES_PER_FAKE_PEER`]`)` fake peer connections, each file held by `holders` of them:
    /// fake peer `n` owns chunk `n` of the files and also registers the `holders - 1` chunks
    /// before it (wrapping around), one bulk Register per chunk. So the peer count stays
    /// `count / 1,000` whatever `holders` is (1,000,000 files, 2 holders: 1,000 peers of
    /// 2,000 files each). `holders` must be at least 1 and at most the number of fake peers.
    pub fn create(
        addr: SocketAddr,
        count: usize,
        holders: usize,
        seed: u64,
    ) -> io::Result<Population> {
        let files: Vec<FileEntry> = (0..count)
            .map(|i| workload::populated_file(seed, i))
            .collect();
        let chunks: Vec<&[FileEntry]> = files.chunks(FILES_PER_FAKE_PEER).collect();
        if holders == 0 || holders > chunks.len().max(1) {
            return Err(io::Error::other(format!(
                "{holders} holders per file need at least {holders} fake peers, but {count} \
                 files make {} (one per {FILES_PER_FAKE_PEER} files)",
                chunks.len()
            )));
        }
        let mut conns = Vec::new();
        let started = Instant::now();
        for n in 0..chunks.len() {
            let port = POPULATE_PORT_BASE.wrapping_add((n % 20000) as u16);
            let mut c = Client::hello(addr, port, "p2pshare-bench populate")?;
            for back in 0..holders {
                let chunk = chunks[(n + chunks.len() - back) % chunks.len()];
                match c.call(RequestBody::Register {
                    files: chunk.to_vec(),
                })? {
                    ResponseBody::Registered { rejected: 0, .. } => {}
                    other => {
                        return Err(io::Error::other(format!(
                            "pre-populating: register answered {other:?}"
                        )))
                    }
                }
            }
            conns.push(c);
            if started.elapsed() > Duration::from_secs(1) && n % 50 == 49 {
                super::progress(&format!(
                    "bench: populating {}/{count} files",
                    ((n + 1) * FILES_PER_FAKE_PEER).min(count)
                ));
            }
        }
        super::progress_done(&format!(
            "bench: populated {count} files, {holders} holder(s) each, from {} fake peers in {:.1}s",
            conns.len(),
            started.elapsed().as_secs_f64()
        ));
        let conns = Mutex::new(conns);
        let (stop, stopped) = mpsc::channel::<()>();
        let keepalive = thread::spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) =
                stopped.recv_timeout(KEEPALIVE_INTERVAL)
            {
                for c in conns.lock().expect("keepalive lock").iter_mut() {
                    if let Err(e) = c.call(RequestBody::Ping) {
                        eprintln!("bench: a populating connection failed its ping: {e}");
                    }
                }
            }
        });
        Ok(Population {
            files: Arc::new(files),
            stop: Some(stop),
            keepalive: Some(keepalive),
        })
    }
}

impl Drop for Population {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.keepalive.take() {
            let _ = t.join();
        }
    }
}

/// What one closed-loop run measured.
pub struct RunResult {
    /// Simulated peers.
    pub peers: usize,
    /// Latencies (ns) per op kind, in [`OpKind::ALL`] order, all peers merged.
    pub hists: [Histogram<u64>; 3],
    /// Error responses per op kind.
    pub errors: [u64; 3],
    /// Bare loopback round trips (ns) to the echo server, one after each op of each peer:
    /// the floor measured under exactly the run's conditions (same time, same concurrency).
    pub floor: Histogram<u64>,
    /// From the start signal to the last peer's last answer.
    pub elapsed: Duration,
}

impl RunResult {
    /// Operations per second, all peers and kinds together.
    pub fn ops_per_s(&self) -> f64 {
        let ops: u64 = self.hists.iter().map(Histogram::len).sum();
        ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

struct PeerResult {
    hists: [Histogram<u64>; 3],
    errors: [u64; 3],
    floor: Histogram<u64>,
}

/// Runs `peers` simulated peers against `addr`, each doing `ops` in its own seeded order,
/// all starting together. `run` numbers the run (it keeps registered hashes unique).
pub fn run_closed_loop(
    addr: SocketAddr,
    echo: SocketAddr,
    run: usize,
    peers: usize,
    ops: OpCounts,
    population: &Population,
    seed: u64,
) -> io::Result<RunResult> {
    // Every peer connects and says hello before the clock starts.
    let start = Arc::new(Barrier::new(peers + 1));
    let done_ops = Arc::new(AtomicUsize::new(0));
    let mut handles = Vec::with_capacity(peers);
    for peer in 0..peers {
        let port = PEER_PORT_BASE.wrapping_add((run * 1000 + peer) as u16 % 20000);
        let client = Client::hello(addr, port, "p2pshare-bench peer");
        let pinger = floor::Pinger::connect(echo);
        let start = start.clone();
        let done_ops = done_ops.clone();
        let files = population.files.clone();
        handles.push(thread::spawn(move || -> io::Result<PeerResult> {
            // Wait at the barrier even on a failed connect, or the others would hang.
            start.wait();
            let mut client = client?;
            let mut pinger = pinger?;
            peer_loop(
                &mut client,
                &mut pinger,
                run,
                peer,
                ops,
                &files,
                seed,
                &done_ops,
            )
        }));
    }
    start.wait();
    let began = Instant::now();
    let total = peers * ops.total();
    let mut last_print = Instant::now();
    while handles.iter().any(|h| !h.is_finished()) {
        thread::sleep(Duration::from_millis(20));
        if last_print.elapsed() >= PROGRESS_INTERVAL {
            last_print = Instant::now();
            super::progress(&format!(
                "bench: {peers} peer(s): {}/{total} ops",
                done_ops.load(Ordering::Relaxed)
            ));
        }
    }
    let elapsed = began.elapsed();
    let mut hists: [Histogram<u64>; 3] = std::array::from_fn(|_| stats::new_histogram());
    let mut errors = [0u64; 3];
    let mut floor = stats::new_histogram();
    for h in handles {
        let r = h
            .join()
            .map_err(|_| io::Error::other("a simulated peer panicked"))??;
        for k in 0..3 {
            hists[k].add(&r.hists[k]).expect("same histogram bounds");
            errors[k] += r.errors[k];
        }
        floor.add(&r.floor).expect("same histogram bounds");
    }
    super::progress_done(&format!(
        "bench: {peers} peer(s): {total} ops in {:.2}s",
        elapsed.as_secs_f64()
    ));
    Ok(RunResult {
        peers,
        hists,
        errors,
        floor,
        elapsed,
    })
}

/// One simulated peer's closed loop.
#[allow(clippy::too_many_arguments)]
fn peer_loop(
    client: &mut Client,
    pinger: &mut floor::Pinger,
    run: usize,
    peer: usize,
    ops: OpCounts,
    files: &[FileEntry],
    seed: u64,
    done_ops: &AtomicUsize,
) -> io::Result<PeerResult> {
    let mut rng = Rng::for_stream(seed, (run as u64) << 32 | peer as u64);
    let order = workload::op_order(ops.as_array(), &mut rng);
    let mut hists: [Histogram<u64>; 3] = std::array::from_fn(|_| stats::new_histogram());
    let mut errors = [0u64; 3];
    let mut floor = stats::new_histogram();
    let mut registers = 0;
    for kind in order {
        // Build and encode the request before the clock starts, decode the answer after it
        // stops: only the round trip is timed, as for the bare ping-pong.
        let body = match kind {
            OpKind::Search => {
                let f = &files[rng.below(files.len())];
                RequestBody::Search {
                    query: workload::query_for(&f.name, &mut rng),
                    limit: SEARCH_LIMIT,
                }
            }
            OpKind::Register => {
                registers += 1;
                RequestBody::Register {
                    files: workload::register_batch(seed, run, peer, registers),
                }
            }
            OpKind::Lookup => RequestBody::Lookup {
                key: LookupKey::Hash(files[rng.below(files.len())].hash),
                after: None,
            },
        };
        let id = client.prepare(body);
        let began = Instant::now();
        client.exchange()?;
        stats::record(&mut hists[kind.index()], began.elapsed());
        let answer = client.answer(id)?;
        let ok = matches!(
            (kind, &answer),
            (OpKind::Search, ResponseBody::SearchResults { .. })
                | (
                    OpKind::Register,
                    ResponseBody::Registered { rejected: 0, .. }
                )
                | (OpKind::Lookup, ResponseBody::Holders { .. })
        );
        if !ok {
            errors[kind.index()] += 1;
        }
        // The floor sample right after the op: same moment, same load on the machine.
        stats::record(&mut floor, pinger.round_trip()?);
        done_ops.fetch_add(1, Ordering::Relaxed);
    }
    let _ = client.call(RequestBody::Bye);
    Ok(PeerResult {
        hists,
        errors,
        floor,
    })
}
