//! The load: pre-populating the index from many fake peers, and the closed-loop runs where
//! each simulated peer (a thread with its own connection) does its operations one at a time.

use super::client::Client;
use super::config::OpCounts;
use super::corpus::{self, Corpus, QueryClass, Share};
use super::floor;
use super::stats;
use super::workload::{self, OpKind, Rng, FILES_PER_FAKE_PEER};
use hdrhistogram::Histogram;
use p2pshare::wire::{FileEntry, LookupKey, RequestBody, ResponseBody};
use std::io::{self, Write};
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

/// Name bytes one pre-populating Register carries at most: 1,000 names of a real corpus may
/// be long, and indexd refuses a frame over 1 MiB.
const REGISTER_NAME_BYTES: usize = 512 << 10;

/// Fake listening ports: populate connections from here up.
const POPULATE_PORT_BASE: u16 = 20000;
/// Simulated peers announce ports from here up.
const PEER_PORT_BASE: u16 = 40000;

/// The pre-populated part of the index: the files, and the connections that hold them
/// (kept open and pinged until dropped, because the index forgets a closed peer's files).
pub struct Population {
    /// Every pre-populated file, in order.
    pub files: Arc<Vec<FileEntry>>,
    /// With a corpus of real names: the commonest words, and searches are drawn by
    /// [`QueryClass`] ([`corpus::query`]); `None`: 1–2 words of a name
    /// ([`workload::query_for`]).
    pub common_words: Option<Arc<Vec<Share>>>,
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
    /// The files are named from `names` when given ([`Corpus::name`]), else from the
    /// synthetic vocabulary.
    pub fn create(
        addr: SocketAddr,
        count: usize,
        holders: usize,
        seed: u64,
        names: Option<&Corpus>,
    ) -> io::Result<Population> {
        let files: Vec<FileEntry> = (0..count)
            .map(|i| match names {
                Some(c) => workload::populated_file_named(seed, i, c.name(i, seed)),
                None => workload::populated_file(seed, i),
            })
            .collect();
        let fake_peers = count.div_ceil(FILES_PER_FAKE_PEER);
        if holders == 0 || holders > fake_peers.max(1) {
            return Err(io::Error::other(format!(
                "{holders} holders per file need at least {holders} fake peers, but {count} \
                 files make {fake_peers} (one per {FILES_PER_FAKE_PEER} files)"
            )));
        }
        let files = Arc::new(files);
        // The keepalive runs from the start: populating millions of files can take longer
        // than indexd's idle timeout, and the first connections must not time out (taking
        // their files with them) while the last ones register.
        let conns = Arc::new(Mutex::new(Vec::<Client>::new()));
        let (stop, stopped) = mpsc::channel::<()>();
        let keepalive = {
            let conns = conns.clone();
            thread::spawn(move || {
                while let Err(mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(KEEPALIVE_INTERVAL)
                {
                    for c in conns.lock().expect("keepalive lock").iter_mut() {
                        if let Err(e) = c.call(RequestBody::Ping) {
                            eprintln!("bench: a populating connection failed its ping: {e}");
                        }
                    }
                }
            })
        };
        // From here on, an early return stops the keepalive (Drop).
        let population = Population {
            files: files.clone(),
            common_words: None,
            stop: Some(stop),
            keepalive: Some(keepalive),
        };
        let chunks: Vec<&[FileEntry]> = files.chunks(FILES_PER_FAKE_PEER).collect();
        let started = Instant::now();
        let mut last = None;
        for n in 0..chunks.len() {
            let port = POPULATE_PORT_BASE.wrapping_add((n % 20000) as u16);
            let mut c = Client::hello(addr, port, "p2pshare-bench populate")?;
            for back in 0..holders {
                let chunk = chunks[(n + chunks.len() - back) % chunks.len()];
                for part in parts_by_name_bytes(chunk, REGISTER_NAME_BYTES) {
                    match c.call(RequestBody::Register {
                        files: part.to_vec(),
                    })? {
                        ResponseBody::Registered { rejected: 0, .. } => {}
                        other => {
                            return Err(io::Error::other(format!(
                                "pre-populating: register answered {other:?} (every fake peer \
                                 connects from one address: an indexd of your own needs \
                                 --max-holdings-per-ip 0 and --max-connections-per-ip 0)"
                            )))
                        }
                    }
                }
            }
            if n + 1 == chunks.len() {
                last = Some(c.call(RequestBody::Stats)?);
            }
            conns.lock().expect("keepalive lock").push(c);
            if started.elapsed() > Duration::from_secs(1) && n % 50 == 49 {
                super::progress(&format!(
                    "bench: populating {}/{count} files",
                    ((n + 1) * FILES_PER_FAKE_PEER).min(count)
                ));
            }
        }
        super::progress_done(&format!(
            "bench: populated {count} files, {holders} holder(s) each, from {} fake peers in {:.1}s",
            chunks.len(),
            started.elapsed().as_secs_f64()
        ));
        // Every file registered is still there: no populating connection was lost.
        if let Some(ResponseBody::Stats(st)) = last {
            if (st.names as usize) < count {
                return Err(io::Error::other(format!(
                    "indexd holds {} entries after {count} files were pre-populated: some \
                     populating connections were closed",
                    st.names
                )));
            }
        }
        Ok(population)
    }
}

/// `files` cut into runs whose names add up to at most `max_bytes` (a longer name alone).
fn parts_by_name_bytes(files: &[FileEntry], max_bytes: usize) -> Vec<&[FileEntry]> {
    let mut parts = Vec::new();
    let (mut start, mut bytes) = (0, 0);
    for (i, f) in files.iter().enumerate() {
        if i > start && bytes + f.name.len() > max_bytes {
            parts.push(&files[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += f.name.len();
    }
    if start < files.len() {
        parts.push(&files[start..]);
    }
    parts
}

impl Drop for Population {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.keepalive.take() {
            let _ = t.join();
        }
    }
}

/// One closed-loop run: which run of the bench, how many simulated peers, what each does.
#[derive(Debug, Clone, Copy)]
pub struct RunSpec {
    /// Numbers the run (it keeps registered hashes unique and seeds the peers' orders).
    pub run: usize,
    /// Simulated peers.
    pub peers: usize,
    /// Operations per peer.
    pub ops: OpCounts,
    /// `None`: every peer does all its ops. `Some(t)`: a peer starts no op after `t`, and a
    /// request with no answer in [`super::client::REPLY_TIMEOUT`] ends its loop (counted as
    /// an error at that latency) instead of failing the run: the abuse mode's honest client.
    pub limit: Option<Duration>,
    /// `None`: closed loop, each op right after the last. `Some(t)`: a peer starts an op at
    /// most every `t` (the abuse mode's honest client, a busy user rather than a flood).
    pub pace: Option<Duration>,
}

/// What one closed-loop run measured.
pub struct RunResult {
    /// Simulated peers.
    pub peers: usize,
    /// Latencies (ns) per op kind, in [`OpKind::ALL`] order, all peers merged.
    pub hists: [Histogram<u64>; 3],
    /// Error responses per op kind.
    pub errors: [u64; 3],
    /// Search latencies (ns) per [`QueryClass`], in [`QueryClass::ALL`] order, when the
    /// searches are drawn by class (a corpus of real names); empty otherwise.
    pub classes: Vec<Histogram<u64>>,
    /// The same searches' server time (ns; what indexd reports in each answer), per class.
    pub class_server: Vec<Histogram<u64>>,
    /// Bare loopback round trips (ns) to the echo server, one after each op of each peer
    /// (and one after each of its `Ping`s, with [`Pings::Timed`]): the floor measured under
    /// exactly the run's conditions (same time, same concurrency).
    pub floor: Histogram<u64>,
    /// indexd's `Ping` (ns), one after each op's floor ping, with [`Pings::Timed`]; empty
    /// otherwise.
    pub ping: Histogram<u64>,
    /// From the start signal to the last peer's last answer.
    pub elapsed: Duration,
    /// Requests that got no answer in time (only with [`RunSpec::limit`]).
    pub unanswered: u64,
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
    classes: Vec<Histogram<u64>>,
    class_server: Vec<Histogram<u64>>,
    floor: Histogram<u64>,
    ping: Histogram<u64>,
    unanswered: u64,
}

/// Whether a closed-loop run also times indexd's own `Ping`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pings {
    /// Each op is followed by a floor ping only.
    Untimed,
    /// Each op is followed by a floor ping, indexd's `Ping` on the peer's index session, and
    /// another floor ping: the `Ping` shares the ops' moments and CPU contention as the
    /// floor does, and every index request (op or `Ping`) comes right after a floor ping,
    /// so indexd's work after one answer overlaps a floor ping, never the next request.
    Timed,
}

/// Runs `spec.peers` simulated peers against `addr`, each doing `spec.ops` in its own seeded
/// order, all starting together, each op followed by a floor ping.
pub fn run_closed_loop(
    addr: SocketAddr,
    echo: SocketAddr,
    spec: RunSpec,
    population: &Population,
    seed: u64,
) -> io::Result<RunResult> {
    run_closed_loop_with(addr, echo, spec, population, seed, Pings::Untimed)
}

/// [`run_closed_loop`], timing indexd's `Ping` too as `pings` says (the main job's runs).
pub fn run_closed_loop_with(
    addr: SocketAddr,
    echo: SocketAddr,
    spec: RunSpec,
    population: &Population,
    seed: u64,
    pings: Pings,
) -> io::Result<RunResult> {
    let RunSpec {
        run, peers, ops, ..
    } = spec;
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
        let common = population.common_words.clone();
        handles.push(thread::spawn(move || -> io::Result<PeerResult> {
            // Wait at the barrier even on a failed connect, or the others would hang.
            start.wait();
            let mut client = client?;
            let mut pinger = pinger?;
            let work = PeerWork {
                spec,
                peer,
                files: &files,
                common: common.as_deref().map(Vec::as_slice),
                seed,
                pings,
            };
            peer_loop(&mut client, &mut pinger, &work, &done_ops)
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
    let mut classes = Vec::new();
    let mut class_server: Vec<Histogram<u64>> = Vec::new();
    let mut floor = stats::new_histogram();
    let mut ping = stats::new_histogram();
    let mut unanswered = 0;
    for h in handles {
        let r = h
            .join()
            .map_err(|_| io::Error::other("a simulated peer panicked"))??;
        for k in 0..3 {
            hists[k].add(&r.hists[k]).expect("same histogram bounds");
            errors[k] += r.errors[k];
        }
        if classes.is_empty() {
            classes = r.classes;
            class_server = r.class_server;
        } else {
            for (all, one) in classes.iter_mut().zip(&r.classes) {
                all.add(one).expect("same histogram bounds");
            }
            for (all, one) in class_server.iter_mut().zip(&r.class_server) {
                all.add(one).expect("same histogram bounds");
            }
        }
        floor.add(&r.floor).expect("same histogram bounds");
        ping.add(&r.ping).expect("same histogram bounds");
        unanswered += r.unanswered;
    }
    let done: u64 = hists.iter().map(Histogram::len).sum();
    super::progress_done(&format!(
        "bench: {peers} peer(s): {done} ops in {:.2}s",
        elapsed.as_secs_f64()
    ));
    Ok(RunResult {
        peers,
        hists,
        errors,
        classes,
        class_server,
        floor,
        ping,
        elapsed,
        unanswered,
    })
}

/// What one simulated peer does.
struct PeerWork<'a> {
    spec: RunSpec,
    peer: usize,
    files: &'a [FileEntry],
    /// The commonest words, when searches are drawn by class.
    common: Option<&'a [Share]>,
    seed: u64,
    pings: Pings,
}

/// A search request for `files`: by a random [`QueryClass`] when `common` is given (the
/// class returned), else 1–2 words of a random name.
pub fn search_request(
    files: &[FileEntry],
    common: Option<&[Share]>,
    rng: &mut Rng,
) -> (RequestBody, Option<QueryClass>) {
    let (query, class) = match common {
        Some(common) => {
            let class = QueryClass::ALL[rng.below(QueryClass::ALL.len())];
            let name_of = |i: usize| files[i].name.clone();
            match corpus::query(class, files.len(), name_of, common, rng) {
                Some(q) => (q, Some(class)),
                // A corpus without two-word names, say: a plain search, in no class.
                None => {
                    let f = &files[rng.below(files.len())];
                    (workload::query_for(&f.name, rng), None)
                }
            }
        }
        None => {
            let f = &files[rng.below(files.len())];
            (workload::query_for(&f.name, rng), None)
        }
    };
    let body = RequestBody::Search {
        query,
        limit: SEARCH_LIMIT,
        filter: Default::default(),
        after: None,
    };
    (body, class)
}

/// One simulated peer's closed loop.
fn peer_loop(
    client: &mut Client,
    pinger: &mut floor::Pinger,
    work: &PeerWork,
    done_ops: &AtomicUsize,
) -> io::Result<PeerResult> {
    let PeerWork {
        spec,
        peer,
        files,
        common,
        seed,
        pings,
    } = *work;
    let run = spec.run;
    let mut rng = Rng::for_stream(seed, (run as u64) << 32 | peer as u64);
    let order = workload::op_order(spec.ops.as_array(), &mut rng);
    let mut hists: [Histogram<u64>; 3] = std::array::from_fn(|_| stats::new_histogram());
    let mut errors = [0u64; 3];
    let mut classes: Vec<Histogram<u64>> = match common {
        Some(_) => QueryClass::ALL.map(|_| stats::new_histogram()).into(),
        None => Vec::new(),
    };
    let mut class_server: Vec<Histogram<u64>> =
        classes.iter().map(|_| stats::new_histogram()).collect();
    let mut floor = stats::new_histogram();
    let mut ping = stats::new_histogram();
    // `SEARCH_LOG=FILE`: each search's query, class and times, one a line (which queries make
    // a class's tail); the file name gets the run and peer.
    let mut search_log = match std::env::var_os("SEARCH_LOG") {
        Some(p) => {
            let mut p = std::path::PathBuf::from(p).into_os_string();
            p.push(format!(".run{run}.peer{peer}"));
            Some(io::BufWriter::new(std::fs::File::create(p)?))
        }
        None => None,
    };
    let mut unanswered = 0;
    let mut registers = 0;
    let started = Instant::now();
    let mut next_op = started;
    for kind in order {
        if spec.limit.is_some_and(|t| started.elapsed() >= t) {
            break;
        }
        if let Some(pace) = spec.pace {
            let now = Instant::now();
            if next_op > now {
                thread::sleep(next_op - now);
            }
            next_op = next_op.max(now) + pace;
        }
        // Build and encode the request before the clock starts, decode the answer after it
        // stops: only the round trip is timed, as for the bare ping-pong.
        let mut class = None;
        let mut query = None;
        let body = match kind {
            OpKind::Search => {
                let (body, c) = search_request(files, common, &mut rng);
                class = c;
                if search_log.is_some() {
                    if let RequestBody::Search { query: q, .. } = &body {
                        query = Some(q.clone());
                    }
                }
                body
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
        match client.exchange() {
            Ok(()) => {}
            Err(e) if spec.limit.is_some() && is_timeout(&e) => {
                // A stalled index: the op counts at the time waited, and this peer's session
                // is out of step, so its loop ends here.
                stats::record(&mut hists[kind.index()], began.elapsed());
                errors[kind.index()] += 1;
                unanswered += 1;
                break;
            }
            Err(e) => return Err(e),
        }
        let took = began.elapsed();
        stats::record(&mut hists[kind.index()], took);
        if let Some(c) = class {
            stats::record(&mut classes[c.index()], took);
        }
        let answer = client.answer(id)?;
        if let (Some(c), ResponseBody::SearchResults { server_us, .. }) = (class, &answer) {
            stats::record(
                &mut class_server[c.index()],
                Duration::from_micros(u64::from(*server_us)),
            );
        }
        if let (
            Some(log),
            Some(q),
            ResponseBody::SearchResults {
                server_us,
                partial,
                hits,
                ..
            },
        ) = (search_log.as_mut(), &query, &answer)
        {
            writeln!(
                log,
                "{}\t{}\t{server_us}\t{}\t{partial}\t{}\t{q}",
                started.elapsed().as_micros(),
                class.map_or("-", |c| c.key()),
                took.as_micros(),
                hits.len(),
            )?;
        }
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
        if pings == Pings::Timed {
            stats::record(&mut ping, timed_ping(client)?);
            stats::record(&mut floor, pinger.round_trip()?);
        }
        done_ops.fetch_add(1, Ordering::Relaxed);
    }
    if unanswered == 0 {
        let _ = client.call(RequestBody::Bye);
    }
    Ok(PeerResult {
        hists,
        errors,
        classes,
        class_server,
        floor,
        ping,
        unanswered,
    })
}

/// Times one `Ping` on the index session, its encoding and decoding outside the clock as
/// for the ops; anything but `Pong` is an error.
fn timed_ping(client: &mut Client) -> io::Result<Duration> {
    let id = client.prepare(RequestBody::Ping);
    let began = Instant::now();
    client.exchange()?;
    let took = began.elapsed();
    match client.answer(id)? {
        ResponseBody::Pong => Ok(took),
        other => Err(io::Error::other(format!(
            "indexd answered a Ping with {other:?}"
        ))),
    }
}

/// Whether `e` is a read that timed out.
fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_parts_bound_their_name_bytes() {
        let f = |len: usize| FileEntry {
            hash: p2pshare::wire::FileHash([0; 32]),
            size: 1,
            name: "n".repeat(len),
        };
        let files = [f(4), f(4), f(4), f(10), f(1)];
        let parts = parts_by_name_bytes(&files, 8);
        let lens: Vec<usize> = parts.iter().map(|p| p.len()).collect();
        // A name over the bound travels alone.
        assert_eq!(lens, [2, 1, 1, 1]);
        assert_eq!(parts_by_name_bytes(&files, 1 << 20).len(), 1);
        assert!(parts_by_name_bytes(&[], 8).is_empty());
    }
}
