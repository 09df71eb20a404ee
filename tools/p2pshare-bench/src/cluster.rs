//! The cluster mode (`--cluster`, issue 16): three `nats-server` processes in one JetStream
//! cluster and three indexd nodes on loopback, then, in this order:
//!
//! 1. **bulk load**: `--files N` pre-populated at node A (the bench's fast pre-population, one
//!    bulk register per 1,000 files), and the time until nodes B and C hold them all;
//! 2. **rebuild**: a fourth node D started against the stream holding the N entries: the time
//!    from its start to its listening line (a node opens its listeners only once it has read
//!    and applied the stream), its entry count checked by `Stats`;
//! 3. **memory and disk**: each node's `VmHWM` over its entries; each nats-server's store of
//!    the stream over the entries. From the bulk load's start to here, each of A, B, C's
//!    `VmRSS` and entry count are sampled every 20 ms ([`RssSampler`]): each node's peak, when
//!    it came and how far the node was behind A then (the timeline in `cluster-rss.csv`);
//! 4. **replication lag**: `--ops _,R,_` registers of one new file each, at node i mod 3; from
//!    the arrival of its `Registered` answer, a client at node i+1 looks the hash up, one
//!    lookup in flight, back to back, until the first answer listing it: lag = that answer's
//!    arrival − the `Registered` answer's arrival. The resolution is one lookup round trip
//!    (its latencies are reported with the lag);
//! 5. **reads**: at each of A, B, C, the main job's closed loop (`--ops S,R,L`, one simulated
//!    peer) with the loopback floor pinged after each op, as in the latency mode; then the
//!    same at a single indexd (no `--cluster`) pre-populated with the same N entries, to set
//!    each node's search and lookup p50 beside one process's; then, with the single indexd
//!    still up, **interleaved lookups**: [`INTERLEAVED_ROUNDS`] rounds, each a floor ping
//!    followed by one lookup at A, B, C and the single indexd in turn (the rotation's start
//!    moves each round), so each target's lookups are set against the floor pinged just
//!    before them, at the same moments as the others' (the floor moves between phases on
//!    this VM, 8.5–22 µs in one run);
//! 6. **engine fault**: a writer registers one new file every 10 ms at B while a client at C
//!    looks up the oldest file it has not seen yet; the nats-server leading the stream is
//!    SIGKILLed and writes go on for at least 15 s after: the longest
//!    gap of replication, C's lookup latencies meanwhile, when each node listed every file
//!    written (all polled side by side) and the files still missing at any node once it had
//!    45 s from the kill and had stopped listing more for 10 s (lost: must be 0); then the
//!    server is restarted on its store and the time until its `/healthz` is ok;
//! 7. **node death**: `--cluster-peers P` real `peer` processes (`peer --serve --index
//!    A,B,C`, 10 small files each) register at A; A is SIGKILLed: the time until no survivor
//!    answers a sample of A's pre-populated hashes, until every peer has been answered a
//!    second register (its log's `index holds 10 of our files` line, read every 50 ms: it
//!    registered again through B or C), until besides every survivor lists each peer's file
//!    once at its address (the target's moment), and until the survivors' entry counts are
//!    exactly the peers' files (A's peers' holdings, departing in slices, all removed).
//!
//! # Invariants
//! - Every process it starts (nats-servers, indexd nodes, the echo server, the peers) is a
//!   [`ChildGuard`]: killed and reaped when the run ends, on error paths and panics too; the
//!   nats-servers' store lives in a temporary directory removed at the end. Their stderr goes
//!   to `cluster-logs/` in `--out`.
//! - Every wait is bounded; a phase that does not finish in time is reported as such (`null`
//!   in `cluster.json`) and the run goes on.

use super::client::Client;
use super::config::OpCounts;
use super::floor::{self, ChildGuard};
use super::load::{self, Population, RunSpec};
use super::stats::{self, OpSummary};
use super::workload::OpKind;
use p2pshare::wire::{FileEntry, FileHash, LookupKey, RequestBody, ResponseBody, ServerStats};
use serde::Serialize;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// Files each peer of the node-death phase shares.
pub const FILES_PER_PEER: usize = 10;
/// The replication-lag target: p99 at most this.
pub const TARGET_LAG_P99_MS: f64 = 50.0;
/// The reads target: lookup p50 at most this many floors.
pub const TARGET_READ_RATIO: f64 = 1.15;
/// The memory target: bytes of peak resident memory per entry.
pub const TARGET_BYTES_PER_ENTRY: f64 = 160.0;
/// Longest one replication-lag sample is waited for (then: not seen).
const LAG_LIMIT: Duration = Duration::from_secs(10);
/// Longest the bulk load may take to reach the other nodes, and a rebuild to finish.
const LOAD_LIMIT: Duration = Duration::from_secs(600);
/// Longest the engine-fault phase writes.
const FAULT_LIMIT: Duration = Duration::from_secs(90);
/// Writes before the kill, and how often the writer registers.
const FAULT_LEAD: Duration = Duration::from_secs(1);
/// Writes go on at least this long after the kill (a consumer cut off silently is noticed
/// after two missed idle heartbeats, 10 s).
const FAULT_MIN: Duration = Duration::from_secs(15);
/// How long after the kill every node may take to list every file written (README: the
/// replication pause is about 10 to 20 s, and the tests allow 45 s on a loaded machine). A
/// node still making progress then is waited for until it stops for [`LAG_LIMIT`]; what it
/// does not list by then is lost.
const FAULT_CATCH_UP_LIMIT: Duration = Duration::from_secs(45);
const FAULT_WRITE_EVERY: Duration = Duration::from_millis(10);
/// How long a client of the engine fault keeps asking a node that refuses its handshake: a
/// node whose NATS link broke is fenced (it answers `Busy`, "rejoining the cluster") until it
/// has caught up again, and a peer then retries (or moves to another node) as this does.
const FAULT_REJOIN_LIMIT: Duration = Duration::from_secs(30);

/// A session with `addr`, asked again every 50 ms while the node refuses it (fenced while
/// it rejoins) or cannot be reached, for at most [`FAULT_REJOIN_LIMIT`].
fn hello_while_rejoining(addr: SocketAddr, port: u16, name: &str) -> io::Result<Client> {
    let deadline = Instant::now() + FAULT_REJOIN_LIMIT;
    loop {
        match Client::hello(addr, port, name) {
            Ok(c) => return Ok(c),
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(50)),
        }
    }
}
/// How often the entry counts are polled.
const POLL: Duration = Duration::from_millis(50);
/// Longest a nats-server may take to say it is healthy.
const NATS_READY_LIMIT: Duration = Duration::from_secs(60);
/// Rounds of the interleaved lookups (each: one floor ping and one lookup at every target).
pub const INTERLEAVED_ROUNDS: usize = 5_000;
/// How often the memory sampler reads each node's `VmRSS` and entry count.
const RSS_EVERY: Duration = Duration::from_millis(20);
/// Population hashes looked up at each survivor after a node death.
const DEATH_SAMPLE: usize = 32;

/// What the cluster mode needs.
pub struct Params<'a> {
    /// The indexd binary.
    pub indexd: &'a Path,
    /// The nats-server binary.
    pub nats_server: &'a Path,
    /// This binary (the echo server).
    pub self_exe: &'a Path,
    /// The peer binary (the node-death phase's peers).
    pub peer: &'a Path,
    /// Output directory.
    pub out: &'a Path,
    /// Entries pre-populated at node A.
    pub files: usize,
    /// The reads' closed loop; `register` is also the number of replication-lag samples.
    pub ops: OpCounts,
    /// Peer processes of the node-death phase.
    pub peers: usize,
    /// The liveness TTL (`--cluster-ttl`).
    pub ttl: Duration,
    /// Seed of the workload.
    pub seed: u64,
    /// Stop after the memory and disk figures (phases 1 to 3).
    pub rebuild_only: bool,
}

/// The figures (`cluster.json`).
#[derive(Debug, Clone, Serialize)]
pub struct ClusterResult {
    /// Entries pre-populated at node A.
    pub files: usize,
    /// The bulk load.
    pub bulk: Bulk,
    /// The rebuild of a fourth node.
    pub rebuild: Rebuild,
    /// Memory of each node.
    pub memory: Vec<NodeMemory>,
    /// The peak `VmRSS` of A, B and C sampled from the bulk load's start to the memory
    /// figures, and how far behind A each node was at its peak.
    pub rss_peaks: Vec<RssPeak>,
    /// The stream's store on each nats-server.
    pub disk: Vec<ServerDisk>,
    /// Replication lag.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag: Option<Lag>,
    /// Reads at each node against the floor.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reads: Option<Vec<NodeReads>>,
    /// The same reads at a single indexd (no `--cluster`) holding the same entries.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub single_reads: Option<NodeReads>,
    /// Lookups at A, B, C and the single indexd interleaved with floor pings.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub interleaved: Option<Vec<Interleaved>>,
    /// One nats-server SIGKILLed under load.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub engine_fault: Option<EngineFault>,
    /// Node A SIGKILLed with peers on it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_death: Option<NodeDeath>,
    /// How the run was made.
    pub command: String,
}

/// The bulk load at A and its replication.
#[derive(Debug, Clone, Serialize)]
pub struct Bulk {
    /// Seconds to register every file at A.
    pub registered_s: f64,
    /// Seconds from the last register's answer until B and C hold every file; `None`: not
    /// within the limit.
    pub replicated_after_s: Option<f64>,
}

/// A new node reading the stream.
#[derive(Debug, Clone, Serialize)]
pub struct Rebuild {
    /// Entries the stream held.
    pub entries: u64,
    /// Seconds from the node's start to its listening line (rebuild done).
    pub seconds: f64,
    /// Entries the new node holds once listening (`Stats`).
    pub entries_served: u64,
    /// Entries rebuilt per second.
    pub entries_per_s: f64,
    /// What that rate means for 100M entries, in seconds (linear).
    pub projected_100m_s: f64,
}

/// One node's memory.
#[derive(Debug, Clone, Serialize)]
pub struct NodeMemory {
    /// The node (a, b, c, d).
    pub node: String,
    /// Entries it holds.
    pub entries: u64,
    /// Peak resident memory (`VmHWM`), kB.
    pub vm_hwm_kb: u64,
    /// Resident memory right after it started listening, before the load (`VmRSS`), kB.
    pub idle_rss_kb: u64,
    /// `VmHWM` / entries.
    pub bytes_per_entry: f64,
    /// (`VmHWM` − idle) / entries.
    pub bytes_per_entry_over_idle: f64,
}

/// One node's peak `VmRSS` while it took the bulk load (sampled every 20 ms).
#[derive(Debug, Clone, Serialize)]
pub struct RssPeak {
    /// The node (a, b, c).
    pub node: String,
    /// The highest `VmRSS` sampled, kB.
    pub peak_rss_kb: u64,
    /// Seconds from the bulk load's start to that sample.
    pub at_s: f64,
    /// Entries the node held at that sample (its last `Stats` answer).
    pub entries_then: u64,
    /// Entries A held then, less the node's: how far it was behind.
    pub behind_a_then: u64,
    /// The last `VmRSS` sampled (after the rebuild), kB.
    pub last_rss_kb: u64,
    /// Samples taken.
    pub samples: u64,
}

/// Lookups at one target interleaved with the others' and with floor pings.
#[derive(Debug, Clone, Serialize)]
pub struct Interleaved {
    /// The target (a, b, c, single).
    pub node: String,
    /// Its lookups.
    pub lookup: OpSummary,
    /// The floor ping taken just before each of them.
    pub floor: OpSummary,
    /// Lookup p50 / that floor's p50.
    pub lookup_over_floor: f64,
    /// The median over its lookups of (lookup / the floor ping just before it).
    pub median_pair_ratio: f64,
    /// Lookup p50 / the single indexd's lookup p50 in the same rounds.
    pub over_single: f64,
}

/// Samples A, B and C's `VmRSS` and entry counts on a thread of its own until stopped.
struct RssSampler {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    handle: thread::JoinHandle<Vec<RssRow>>,
}

/// One sample: seconds since the start, node index, `VmRSS` kB, entries.
type RssRow = (f64, usize, u64, u64);

impl RssSampler {
    fn start(nodes: &[(u32, SocketAddr)]) -> io::Result<RssSampler> {
        use std::sync::atomic::{AtomicBool, Ordering};
        let mut clients: Vec<(u32, Client)> = nodes
            .iter()
            .map(|(pid, a)| Ok((*pid, Client::hello(*a, 0, "p2pshare-bench cluster rss")?)))
            .collect::<io::Result<_>>()?;
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let handle = thread::spawn(move || {
            let began = Instant::now();
            let mut rows = Vec::new();
            let mut entries = vec![0; clients.len()];
            while !stopped.load(Ordering::Relaxed) {
                for (i, (pid, c)) in clients.iter_mut().enumerate() {
                    let rss = proc_status_kb(*pid, "VmRSS").unwrap_or(0);
                    if let Ok(s) = stats_of(c) {
                        entries[i] = s.names;
                    }
                    rows.push((began.elapsed().as_secs_f64(), i, rss, entries[i]));
                }
                thread::sleep(RSS_EVERY);
            }
            rows
        });
        Ok(RssSampler { stop, handle })
    }

    /// Stops; each node's peak (`names` in the order given), the timeline in `csv`.
    fn finish(self, names: &[&str], csv: &Path) -> Vec<RssPeak> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let rows = self.handle.join().unwrap_or_default();
        let mut text = String::from("seconds,node,vm_rss_kb,entries\n");
        for (t, i, rss, e) in &rows {
            text.push_str(&format!("{t:.3},{},{rss},{e}\n", names[*i]));
        }
        if let Err(e) = fs::write(csv, text) {
            eprintln!("bench: cluster: cannot write {}: {e}", csv.display());
        }
        // A's entries at each moment, for how far behind the others were.
        let a_entries = |t: f64| {
            rows.iter()
                .rev()
                .find(|r| r.1 == 0 && r.0 <= t + 0.5 * RSS_EVERY.as_secs_f64())
                .map_or(0, |r| r.3)
        };
        names
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let mine: Vec<&RssRow> = rows.iter().filter(|r| r.1 == i).collect();
                let peak = mine.iter().max_by_key(|r| r.2).copied().copied();
                let (at, rss, entries) = peak.map_or((0.0, 0, 0), |r| (r.0, r.2, r.3));
                RssPeak {
                    node: name.to_string(),
                    peak_rss_kb: rss,
                    at_s: (at * 1e3).round() / 1e3,
                    entries_then: entries,
                    behind_a_then: a_entries(at).saturating_sub(entries),
                    last_rss_kb: mine.last().map_or(0, |r| r.2),
                    samples: mine.len() as u64,
                }
            })
            .collect()
    }
}

/// One nats-server's disk.
#[derive(Debug, Clone, Serialize)]
pub struct ServerDisk {
    /// The server (s0, s1, s2).
    pub server: String,
    /// Bytes of the stream's store directory (its replica).
    pub stream_bytes: u64,
    /// Per entry.
    pub bytes_per_entry: f64,
}

/// Replication lag.
#[derive(Debug, Clone, Serialize)]
pub struct Lag {
    /// Samples (registers).
    pub samples: u64,
    /// Samples not seen within 10 s.
    pub not_seen: u64,
    /// Lag, ms.
    pub p50_ms: f64,
    /// Lag, ms.
    pub p99_ms: f64,
    /// Lag, ms.
    pub max_ms: f64,
    /// The polling lookups' round trips (the resolution of a sample).
    pub poll_lookup: OpSummary,
    /// p99 ≤ 50 ms.
    pub met: bool,
}

/// Reads at one node.
#[derive(Debug, Clone, Serialize)]
pub struct NodeReads {
    /// The node.
    pub node: String,
    /// Searches.
    pub search: OpSummary,
    /// Registers.
    pub register: OpSummary,
    /// Lookups.
    pub lookup: OpSummary,
    /// The floor pinged after each op.
    pub floor: OpSummary,
    /// Lookup p50 / floor p50.
    pub lookup_over_floor: f64,
    /// Search p50 / floor p50.
    pub search_over_floor: f64,
    /// Lookup p50 ≤ 1.15× the floor.
    pub met: bool,
    /// The node's own time per search (timed inside indexd, decoded request to encoded
    /// answer), p99 over this loop's searches (the node serves none before it), µs: the part
    /// of the search latency that is the index's work, apart from the wire and the scheduler.
    pub server_search_p99_us: f64,
    /// The same, the longest, µs.
    pub server_search_max_us: f64,
    /// The node's own time per lookup, p99 since it started, µs.
    pub server_lookup_p99_us: f64,
}

/// One nats-server SIGKILLed under load.
#[derive(Debug, Clone, Serialize)]
pub struct EngineFault {
    /// The server killed.
    pub killed: String,
    /// Files registered at B during the phase.
    pub written: u64,
    /// Of those, missing at some node once replication was back (must be 0): not listed
    /// within [`FAULT_CATCH_UP_LIMIT`] of the kill, nor while the node still made progress.
    pub lost: u64,
    /// For each node, seconds from the kill until it listed every file written (`None`: it
    /// did not, see `lost`); all nodes are polled side by side every 50 ms.
    pub caught_up_s: Vec<(String, Option<f64>)>,
    /// Longest time a written file took to be listed at C, s (the replication pause).
    pub longest_gap_s: f64,
    /// Seconds from the kill until a file written after it was listed at C; `None`: not
    /// within the phase.
    pub resumed_after_s: Option<f64>,
    /// C's lookups during the phase (answered, listed or not yet).
    pub reads: OpSummary,
    /// Lookups at C that failed (connection lost).
    pub read_errors: u64,
    /// Times B ended the writer's session (a record not stored in 20 s); the writer then
    /// registers everything again, as a peer does.
    pub writer_sessions_ended: u64,
    /// Seconds from the restart of the killed server until its `/healthz` said ok.
    pub rejoined_after_s: Option<f64>,
}

/// Node A SIGKILLed with peers on it.
#[derive(Debug, Clone, Serialize)]
pub struct NodeDeath {
    /// `peer` processes on A.
    pub peers: usize,
    /// Files each.
    pub files_per_peer: usize,
    /// The liveness TTL, s.
    pub ttl_s: f64,
    /// Seconds from the kill until no survivor answers a sample of A's pre-populated hashes.
    pub a_entries_gone_s: Option<f64>,
    /// Seconds from the kill until the last peer was registered again through B or C (its
    /// log read every 50 ms).
    pub peers_back_s: Option<f64>,
    /// Seconds from the kill until both of the above, and every survivor lists each peer's
    /// file once, at its address (the target's moment).
    pub listed_right_s: Option<f64>,
    /// Seconds from the kill until, besides, every survivor holds exactly the peers' entries
    /// (`Stats`: A's peers' holdings, departing in slices, all removed).
    pub whole_s: Option<f64>,
    /// listed_right ≤ TTL + 5 s.
    pub met: bool,
}

/// A directory removed when dropped.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A loopback port free a moment ago.
fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One nats-server of the cluster.
struct NatsServer {
    name: String,
    args: Vec<String>,
    client_port: u16,
    monitor_port: u16,
    store: PathBuf,
    log: PathBuf,
    child: Option<ChildGuard>,
}

impl NatsServer {
    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    /// The monitoring endpoint's body for `GET path` (empty if it does not answer).
    fn monitor(&self, path: &str) -> String {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.monitor_port)) else {
            return String::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!("GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n");
        if s.write_all(req.as_bytes()).is_err() {
            return String::new();
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer
            .split_once("\r\n\r\n")
            .map_or(String::new(), |(_, body)| body.to_string())
    }

    /// The server leading `stream`'s Raft group, as this server's `/jsz` tells.
    fn stream_leader(&self, stream: &str) -> Option<String> {
        let jsz: serde_json::Value =
            serde_json::from_str(&self.monitor("/jsz?accounts=true&streams=true")).ok()?;
        jsz["account_details"]
            .as_array()?
            .iter()
            .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
            .find(|s| s["name"] == stream)
            .and_then(|s| s["cluster"]["leader"].as_str().map(str::to_string))
    }

    fn start(&mut self, program: &Path) -> io::Result<()> {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(program)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot start {}: {e}", program.display()))
            })?;
        self.child = Some(ChildGuard(child));
        Ok(())
    }

    fn kill(&mut self) {
        drop(self.child.take());
    }

    /// Whether `/healthz` answers 200 (JetStream current).
    fn is_healthy(&self) -> bool {
        let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.monitor_port)) else {
            return false;
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
        if s.write_all(b"GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut answer = String::new();
        let _ = s.read_to_string(&mut answer);
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200")
    }

    /// Bytes of the stream's store directory on this server.
    fn stream_bytes(&self, stream: &str) -> u64 {
        dir_bytes(
            &self
                .store
                .join("jetstream")
                .join("$G")
                .join("streams")
                .join(stream),
        )
    }
}

fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Waits until every server in `servers` is healthy; the time it took.
fn wait_healthy(servers: &[&NatsServer], limit: Duration) -> Option<Duration> {
    let began = Instant::now();
    while began.elapsed() < limit {
        if servers.iter().all(|s| s.is_healthy()) {
            return Some(began.elapsed());
        }
        thread::sleep(POLL);
    }
    None
}

/// The nats-servers and their store: the servers are killed before the store is removed
/// (fields drop in order).
struct NatsCluster {
    servers: Vec<NatsServer>,
    _store: TempDir,
}

/// The three nats-servers, their store removed at the end.
fn start_nats(program: &Path, logs: &Path) -> io::Result<NatsCluster> {
    let dir = std::env::temp_dir().join(format!("p2pshare-bench-nats-{}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let dir = TempDir(dir);
    let routes = [free_port()?, free_port()?, free_port()?];
    let route_urls: Vec<String> = routes
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect();
    let mut servers = Vec::new();
    for (i, route) in routes.iter().enumerate() {
        let (client_port, monitor_port) = (free_port()?, free_port()?);
        let name = format!("s{i}");
        let store = dir.0.join(&name);
        let args = vec![
            "-js".to_string(),
            "-a".into(),
            "127.0.0.1".into(),
            "-p".into(),
            client_port.to_string(),
            "-m".into(),
            monitor_port.to_string(),
            "-sd".into(),
            store.display().to_string(),
            "--server_name".into(),
            name.clone(),
            "--cluster_name".into(),
            "p2pshare_bench".into(),
            "--cluster".into(),
            format!("nats://127.0.0.1:{route}"),
            "--routes".into(),
            route_urls.join(","),
        ];
        let s = NatsServer {
            log: logs.join(format!("{name}.log")),
            name,
            args,
            client_port,
            monitor_port,
            store,
            child: None,
        };
        // Pushed first: killed with the others if a later one fails to start.
        servers.push(s);
        let last = servers.len() - 1;
        servers[last].start(program)?;
    }
    let cluster = NatsCluster {
        servers,
        _store: dir,
    };
    let all: Vec<&NatsServer> = cluster.servers.iter().collect();
    if wait_healthy(&all, NATS_READY_LIMIT).is_none() {
        return Err(io::Error::other(format!(
            "the nats-servers were not healthy within {NATS_READY_LIMIT:?} (logs in {})",
            logs.display()
        )));
    }
    Ok(cluster)
}

/// One indexd node.
struct Node {
    name: String,
    addr: SocketAddr,
    guard: Option<ChildGuard>,
    idle_rss_kb: u64,
}

impl Node {
    /// Node `name` of the cluster at `urls`; without `urls`, a single indexd (no `--cluster`)
    /// with the same limits.
    fn start(p: &Params, urls: Option<&str>, name: &str, logs: &Path) -> io::Result<Node> {
        let sessions = (p.files.div_ceil(1000) + p.peers + 1000).max(10_000);
        let ttl = p.ttl.as_secs().max(1).to_string();
        let max = sessions.to_string();
        let mut args = vec![
            "--listen",
            "127.0.0.1:0",
            "--log",
            "warn",
            "--max-connections",
            &max,
            "--max-connections-per-ip",
            "0",
            "--max-holdings-per-ip",
            "0",
            "--rate-search",
            "0",
            "--rate-lookup",
            "0",
            "--rate-address",
            "0",
            "--rate-register",
            "0",
            "--rate-register-address",
            "0",
        ];
        if let Some(urls) = urls {
            args.extend(["--cluster", urls, "--node-id", name, "--cluster-ttl", &ttl]);
        }
        let log = fs::File::create(logs.join(format!("{name}.log")))?;
        let (guard, addr) = floor::spawn_listening_logged(p.indexd, &args, log.into())?;
        let idle_rss_kb = proc_status_kb(guard.0.id(), "VmRSS").unwrap_or(0);
        Ok(Node {
            name: name.to_string(),
            addr,
            guard: Some(guard),
            idle_rss_kb,
        })
    }

    fn pid(&self) -> Option<u32> {
        self.guard.as_ref().map(|g| g.0.id())
    }

    fn kill(&mut self) {
        drop(self.guard.take());
    }
}

/// A field of `/proc/PID/status` in kB.
fn proc_status_kb(pid: u32, field: &str) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn stats_of(c: &mut Client) -> io::Result<ServerStats> {
    match c.call(RequestBody::Stats)? {
        ResponseBody::Stats(s) => Ok(s),
        other => Err(io::Error::other(format!("Stats answered {other:?}"))),
    }
}

/// Waits until every observer's index holds `want` entries; the time it took.
fn wait_entries(observers: &mut [&mut Client], want: u64, limit: Duration) -> Option<Duration> {
    let began = Instant::now();
    while began.elapsed() < limit {
        let mut all = true;
        for c in observers.iter_mut() {
            match stats_of(c) {
                Ok(s) if s.names == want => {}
                _ => {
                    all = false;
                    break;
                }
            }
        }
        if all {
            return Some(began.elapsed());
        }
        thread::sleep(POLL);
    }
    None
}

/// The holders a lookup of `hash` lists (empty: not found).
fn holders(c: &mut Client, hash: FileHash) -> io::Result<Vec<SocketAddr>> {
    let key = LookupKey::Hash(hash);
    Ok(match c.call(RequestBody::Lookup { key, after: None })? {
        ResponseBody::Holders { files, .. } => files.into_iter().flat_map(|f| f.holders).collect(),
        _ => Vec::new(),
    })
}

fn one_file(label: &str, i: usize) -> FileEntry {
    FileEntry {
        hash: FileHash::of(format!("p2pshare-bench cluster {label} {i}").as_bytes()),
        size: 1,
        name: format!("cluster {label} {i}.dat"),
    }
}

fn register(c: &mut Client, files: Vec<FileEntry>) -> io::Result<()> {
    match c.call(RequestBody::Register { files })? {
        ResponseBody::Registered { rejected: 0, .. } => Ok(()),
        other => Err(io::Error::other(format!("register answered {other:?}"))),
    }
}

fn secs(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e3).round() / 1e3
}

/// Runs the cluster mode; see the module docs.
pub fn run(p: &Params, command: String) -> io::Result<ClusterResult> {
    if let Err(e) = p2pshare::sys::process::raise_fd_limit() {
        eprintln!("bench: cluster: cannot raise the open-files limit: {e}");
    }
    let logs = p.out.join("cluster-logs");
    fs::create_dir_all(&logs)?;
    let mut cluster = start_nats(p.nats_server, &logs)?;
    let nats = &mut cluster.servers;
    let urls: Vec<String> = nats.iter().map(NatsServer::url).collect();
    let urls = urls.join(",");
    eprintln!(
        "bench: cluster: 3 nats-servers healthy ({urls}); logs in {}",
        logs.display()
    );
    let mut nodes = Vec::new();
    for name in ["a", "b", "c"] {
        nodes.push(Node::start(p, Some(&urls), name, &logs)?);
    }
    eprintln!(
        "bench: cluster: nodes {}",
        nodes
            .iter()
            .map(|n| format!("{} on {}", n.name, n.addr))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let (_echo, echo_addr) = floor::spawn_listening(p.self_exe, &["--echo-server"])?;
    // One observer session per node for Stats: no new session per poll (each would be
    // published and replicated).
    let mut observers: Vec<Client> = nodes
        .iter()
        .map(|n| Client::hello(n.addr, 0, "p2pshare-bench cluster observer"))
        .collect::<io::Result<_>>()?;

    let sampled: Vec<(u32, SocketAddr)> = nodes
        .iter()
        .filter_map(|n| Some((n.pid()?, n.addr)))
        .collect();
    let sampler = RssSampler::start(&sampled)?;

    // 1. The bulk load at A.
    let began = Instant::now();
    let population = Population::create(nodes[0].addr, p.files, 1, p.seed, None)?;
    let registered = began.elapsed();
    let entries = p.files as u64;
    let replicated = {
        let mut others: Vec<&mut Client> = observers.iter_mut().skip(1).collect();
        wait_entries(&mut others, entries, LOAD_LIMIT)
    };
    eprintln!(
        "bench: cluster: {} entries registered at a in {:.1} s; at b and c {}",
        p.files,
        registered.as_secs_f64(),
        replicated.map_or("NOT within the limit".into(), |d| format!(
            "{:.2} s later",
            d.as_secs_f64()
        ))
    );

    // 2. The rebuild of a new node.
    let began = Instant::now();
    let d = Node::start(p, Some(&urls), "d", &logs)?;
    let rebuild_time = began.elapsed();
    nodes.push(d);
    observers.push(Client::hello(
        nodes[3].addr,
        0,
        "p2pshare-bench cluster observer",
    )?);
    let served = stats_of(&mut observers[3])?.names;
    let rate = entries as f64 / rebuild_time.as_secs_f64().max(1e-9);
    let rebuild = Rebuild {
        entries,
        seconds: secs(rebuild_time),
        entries_served: served,
        entries_per_s: rate.round(),
        projected_100m_s: (1e8 / rate.max(1e-9)).round(),
    };
    eprintln!(
        "bench: cluster: node d rebuilt {served} of {entries} entries in {:.2} s ({:.0} entries/s)",
        rebuild_time.as_secs_f64(),
        rate
    );

    // 3. Memory and disk. Node d listened only once rebuilt: the idle figure of the first
    // three stands for its own.
    let idle = nodes
        .iter()
        .take(3)
        .map(|n| n.idle_rss_kb)
        .min()
        .unwrap_or(0);
    nodes[3].idle_rss_kb = idle;
    let rss_peaks = sampler.finish(&["a", "b", "c"], &p.out.join("cluster-rss.csv"));
    for r in &rss_peaks {
        eprintln!(
            "bench: cluster: {}'s peak VmRSS {} kB at {:.2} s, {} entries then ({} behind a); last {} kB",
            r.node, r.peak_rss_kb, r.at_s, r.entries_then, r.behind_a_then, r.last_rss_kb
        );
    }
    let mut memory = Vec::new();
    for (n, o) in nodes.iter().zip(observers.iter_mut()) {
        let entries = stats_of(o)?.names;
        let hwm = n
            .pid()
            .and_then(|pid| proc_status_kb(pid, "VmHWM"))
            .unwrap_or(0);
        let per = |kb: u64| (kb as f64 * 1024.0 / entries.max(1) as f64 * 10.0).round() / 10.0;
        memory.push(NodeMemory {
            node: n.name.clone(),
            entries,
            vm_hwm_kb: hwm,
            idle_rss_kb: n.idle_rss_kb,
            bytes_per_entry: per(hwm),
            bytes_per_entry_over_idle: per(hwm.saturating_sub(n.idle_rss_kb)),
        });
    }
    let disk: Vec<ServerDisk> = nats
        .iter()
        .map(|s| {
            let bytes = s.stream_bytes("P2PSHARE_INDEX");
            ServerDisk {
                server: s.name.clone(),
                stream_bytes: bytes,
                bytes_per_entry: (bytes as f64 / entries.max(1) as f64 * 10.0).round() / 10.0,
            }
        })
        .collect();

    let mut result = ClusterResult {
        files: p.files,
        bulk: Bulk {
            registered_s: secs(registered),
            replicated_after_s: replicated.map(secs),
        },
        rebuild,
        memory,
        rss_peaks,
        disk,
        lag: None,
        reads: None,
        single_reads: None,
        interleaved: None,
        engine_fault: None,
        node_death: None,
        command,
    };
    if p.rebuild_only {
        return Ok(result);
    }

    // 4. Replication lag.
    let addrs: Vec<SocketAddr> = nodes.iter().take(3).map(|n| n.addr).collect();
    let lag = measure_lag(&addrs, p.ops.register.max(1))?;
    eprintln!(
        "bench: cluster: replication lag over {} registers: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms ({} not seen)",
        lag.samples, lag.p50_ms, lag.p99_ms, lag.max_ms, lag.not_seen
    );

    // 5. Reads at each node, then at a single indexd holding the same entries.
    let mut reads = Vec::new();
    for (i, n) in nodes.iter().take(3).enumerate() {
        reads.push(reads_at(
            p,
            &n.name,
            n.addr,
            echo_addr,
            100 + i,
            &population,
        )?);
    }
    let (single_reads, interleaved) = {
        let single = Node::start(p, None, "single", &logs)?;
        let single_population = Population::create(single.addr, p.files, 1, p.seed, None)?;
        let single_reads = reads_at(p, "single", single.addr, echo_addr, 103, &single_population)?;
        let targets: Vec<(&str, SocketAddr)> = nodes
            .iter()
            .take(3)
            .map(|n| (n.name.as_str(), n.addr))
            .chain([("single", single.addr)])
            .collect();
        let interleaved = interleaved_lookups(&targets, echo_addr, &population, p.seed)?;
        for i in &interleaved {
            eprintln!(
                "bench: cluster: interleaved lookups at {}: p50 {:.1} µs, floor p50 {:.1} µs: {:.2}x floor (median pair {:.2}x), {:.2}x the single's",
                i.node, i.lookup.p50_us, i.floor.p50_us, i.lookup_over_floor, i.median_pair_ratio, i.over_single
            );
        }
        (single_reads, interleaved)
    };

    // 6. One nats-server killed under load.
    let engine_fault = engine_fault(p, nats, &nodes)?;

    // 7. Node A killed with peers on it.
    let node_death = node_death(p, &mut nodes, &mut observers, population)?;

    result.lag = Some(lag);
    result.reads = Some(reads);
    result.single_reads = Some(single_reads);
    result.interleaved = Some(interleaved);
    result.engine_fault = Some(engine_fault);
    result.node_death = Some(node_death);
    Ok(result)
}

/// The closed loop of the reads phase at `addr` (one simulated peer): see the module docs (5).
fn reads_at(
    p: &Params,
    node: &str,
    addr: SocketAddr,
    echo: SocketAddr,
    run: usize,
    population: &Population,
) -> io::Result<NodeReads> {
    let spec = RunSpec {
        run,
        peers: 1,
        ops: p.ops,
        limit: None,
        pace: None,
    };
    let r = load::run_closed_loop(addr, echo, spec, population, p.seed)?;
    let s = |k: OpKind| OpSummary::of(&r.hists[k.index()], r.errors[k.index()]);
    let floor = OpSummary::of(&r.floor, 0);
    let ratio = |o: &OpSummary| (o.p50_us / floor.p50_us.max(1e-9) * 100.0).round() / 100.0;
    let (search, register, lookup) = (s(OpKind::Search), s(OpKind::Register), s(OpKind::Lookup));
    let lookup_over_floor = ratio(&lookup);
    let server = stats_of(&mut Client::hello(
        addr,
        0,
        "p2pshare-bench cluster reads stats",
    )?)?;
    let us = |ns: u64| ns as f64 / 1000.0;
    Ok(NodeReads {
        server_search_p99_us: us(server.search_p99_ns),
        server_search_max_us: us(server.search_max_ns),
        server_lookup_p99_us: us(server.lookup_p99_ns),
        node: node.to_string(),
        search_over_floor: ratio(&search),
        lookup_over_floor,
        met: lookup.count > 0 && lookup_over_floor <= TARGET_READ_RATIO,
        search,
        register,
        lookup,
        floor,
    })
}

/// The interleaved lookups: see the module docs (5). The last target is the single indexd.
fn interleaved_lookups(
    targets: &[(&str, SocketAddr)],
    echo: SocketAddr,
    population: &Population,
    seed: u64,
) -> io::Result<Vec<Interleaved>> {
    let mut clients: Vec<Client> = targets
        .iter()
        .map(|(_, a)| Client::hello(*a, 0, "p2pshare-bench cluster interleaved"))
        .collect::<io::Result<_>>()?;
    let mut pinger = floor::Pinger::connect(echo)?;
    let files = &population.files;
    let mut rng = super::workload::Rng::for_stream(seed, 0x1e4e_0000);
    let n = targets.len();
    let mut lookups: Vec<_> = (0..n).map(|_| stats::new_histogram()).collect();
    let mut floors: Vec<_> = (0..n).map(|_| stats::new_histogram()).collect();
    let mut pairs: Vec<Vec<f64>> = vec![Vec::with_capacity(INTERLEAVED_ROUNDS); n];
    let mut errors = vec![0u64; n];
    for round in 0..INTERLEAVED_ROUNDS {
        for k in 0..n {
            let t = (round + k) % n;
            // Built before the clock starts, decoded after it stops, as in the main job.
            let id = clients[t].prepare(RequestBody::Lookup {
                key: LookupKey::Hash(files[rng.below(files.len())].hash),
                after: None,
            });
            let ping = pinger.round_trip()?;
            let began = Instant::now();
            clients[t].exchange()?;
            let took = began.elapsed();
            if !matches!(clients[t].answer(id)?, ResponseBody::Holders { .. }) {
                errors[t] += 1;
            }
            stats::record(&mut floors[t], ping);
            stats::record(&mut lookups[t], took);
            pairs[t].push(took.as_secs_f64() / ping.as_secs_f64().max(1e-9));
        }
    }
    let round2 = |v: f64| (v * 100.0).round() / 100.0;
    let single = OpSummary::of(&lookups[n - 1], errors[n - 1]);
    Ok((0..n)
        .map(|t| {
            let lookup = OpSummary::of(&lookups[t], errors[t]);
            let floor = OpSummary::of(&floors[t], 0);
            let ratios = &mut pairs[t];
            ratios.sort_by(f64::total_cmp);
            Interleaved {
                node: targets[t].0.to_string(),
                lookup_over_floor: round2(lookup.p50_us / floor.p50_us.max(1e-9)),
                median_pair_ratio: round2(ratios.get(ratios.len() / 2).copied().unwrap_or(0.0)),
                over_single: round2(lookup.p50_us / single.p50_us.max(1e-9)),
                lookup,
                floor,
            }
        })
        .collect())
}

/// Replication-lag samples: see the module docs (4).
fn measure_lag(nodes: &[SocketAddr], samples: usize) -> io::Result<Lag> {
    let mut writers: Vec<Client> = nodes
        .iter()
        .enumerate()
        .map(|(i, a)| Client::hello(*a, 30_000 + i as u16, "p2pshare-bench cluster lag"))
        .collect::<io::Result<_>>()?;
    let mut pollers: Vec<Client> = nodes
        .iter()
        .map(|a| Client::hello(*a, 0, "p2pshare-bench cluster lag poller"))
        .collect::<io::Result<_>>()?;
    let mut lag = stats::new_histogram();
    let mut rtt = stats::new_histogram();
    let mut not_seen = 0;
    for i in 0..samples {
        let (w, r) = (i % nodes.len(), (i + 1) % nodes.len());
        let file = one_file("lag", i);
        let hash = file.hash;
        register(&mut writers[w], vec![file])?;
        let registered = Instant::now();
        let poller = &mut pollers[r];
        loop {
            let id = poller.prepare(RequestBody::Lookup {
                key: LookupKey::Hash(hash),
                after: None,
            });
            let sent = Instant::now();
            poller.exchange()?;
            let arrived = Instant::now();
            stats::record(&mut rtt, arrived - sent);
            match poller.answer(id)? {
                ResponseBody::Holders { files, .. } if !files.is_empty() => {
                    stats::record(&mut lag, arrived - registered);
                    break;
                }
                _ if registered.elapsed() > LAG_LIMIT => {
                    not_seen += 1;
                    break;
                }
                _ => {}
            }
        }
    }
    // The writers' sessions end here: their files go from every node.
    let o = OpSummary::of(&lag, 0);
    Ok(Lag {
        samples: samples as u64,
        not_seen,
        p50_ms: o.p50_us / 1e3,
        p99_ms: o.p99_us / 1e3,
        max_ms: o.max_us / 1e3,
        poll_lookup: OpSummary::of(&rtt, 0),
        met: not_seen == 0 && o.p99_us / 1e3 <= TARGET_LAG_P99_MS,
    })
}

/// One nats-server killed while B takes registers and C answers lookups: see the module
/// docs (6).
fn engine_fault(p: &Params, nats: &mut [NatsServer], nodes: &[Node]) -> io::Result<EngineFault> {
    let (b, c) = (nodes[1].addr, nodes[2].addr);
    let port = 31_000;
    let mut writer = Client::hello(b, port, "p2pshare-bench cluster writer")?;
    let mut reader = Client::hello(c, 0, "p2pshare-bench cluster reader")?;
    let mut written: Vec<(FileEntry, Instant)> = Vec::new();
    let mut seen = 0; // files[..seen] are listed at C
    let mut longest = Duration::ZERO;
    let mut reads = stats::new_histogram();
    let (mut read_errors, mut sessions_ended) = (0, 0);
    let began = Instant::now();
    let mut killed_at = None;
    let mut first_after_kill = None;
    let mut resumed_after = None;
    let mut next_write = Instant::now();
    // The stream's leader is the one whose death matters most.
    let victim = nats
        .iter()
        .find_map(|s| s.stream_leader("P2PSHARE_INDEX"))
        .and_then(|leader| nats.iter().position(|s| s.name == leader))
        .unwrap_or(0);
    eprintln!(
        "bench: cluster: engine fault: writing at b, reading at c; SIGKILL {} (the stream's leader) in {FAULT_LEAD:?}",
        nats[victim].name
    );
    let writing = |killed_at: Option<Instant>, resumed: Option<Duration>| match killed_at {
        None => true,
        Some(k) => resumed.is_none() || k.elapsed() < FAULT_MIN,
    };
    while began.elapsed() < FAULT_LIMIT {
        if killed_at.is_none() && began.elapsed() >= FAULT_LEAD {
            nats[victim].kill();
            killed_at = Some(Instant::now());
        }
        // Writes stop once a file written after the kill has been listed at C, and at least
        // FAULT_MIN after the kill.
        if writing(killed_at, resumed_after) && Instant::now() >= next_write {
            next_write = Instant::now() + FAULT_WRITE_EVERY;
            let file = one_file("fault", written.len());
            if register(&mut writer, vec![file.clone()]).is_err() {
                // B ended the session (a record not stored in time): a peer registers
                // everything again on a new one.
                sessions_ended += 1;
                writer = hello_while_rejoining(b, port, "p2pshare-bench cluster writer")?;
                let again: Vec<FileEntry> = written.iter().map(|(f, _)| f.clone()).collect();
                if !again.is_empty() {
                    register(&mut writer, again)?;
                }
                register(&mut writer, vec![file.clone()])?;
            }
            if killed_at.is_some() && first_after_kill.is_none() {
                first_after_kill = Some(written.len());
            }
            written.push((file, Instant::now()));
        }
        if seen < written.len() {
            let sent = Instant::now();
            match holders(&mut reader, written[seen].0.hash) {
                Ok(h) => {
                    stats::record(&mut reads, sent.elapsed());
                    if !h.is_empty() {
                        longest = longest.max(written[seen].1.elapsed());
                        if first_after_kill == Some(seen) {
                            resumed_after = killed_at.map(|k| k.elapsed());
                        }
                        seen += 1;
                    }
                }
                Err(_) => {
                    read_errors += 1;
                    reader = hello_while_rejoining(c, 0, "p2pshare-bench cluster reader")?;
                }
            }
        } else if !writing(killed_at, resumed_after) {
            break;
        } else {
            thread::sleep(Duration::from_millis(1));
        }
    }
    // Every file written must reach every node (a node may be behind C: its consumer may
    // have been cut off and is made again once the NATS cluster has new leaders).
    let killed_at = killed_at.unwrap_or(began);
    let (lost, caught_up) = catch_up(nodes, &written, killed_at)?;
    // The killed server comes back on its store.
    nats[victim].start(p.nats_server)?;
    let rejoined = wait_healthy(&[&nats[victim]], NATS_READY_LIMIT);
    let r = EngineFault {
        killed: nats[victim].name.clone(),
        written: written.len() as u64,
        lost,
        caught_up_s: caught_up,
        longest_gap_s: secs(longest),
        resumed_after_s: resumed_after.map(secs),
        reads: OpSummary::of(&reads, 0),
        read_errors,
        writer_sessions_ended: sessions_ended,
        rejoined_after_s: rejoined.map(secs),
    };
    eprintln!(
        "bench: cluster: engine fault: {} written, {} lost, longest gap {:.2} s, every file at each node after {}; rejoined {:?}",
        r.written,
        r.lost,
        r.longest_gap_s,
        caught_up_line(&r.caught_up_s),
        r.rejoined_after_s
    );
    Ok(r)
}

/// For each node, the seconds from the kill until it listed every file written (`None`: never).
type CaughtUp = Vec<(String, Option<f64>)>;

/// Waits until every node lists every file `written`, polling them side by side: each node
/// is given until [`FAULT_CATCH_UP_LIMIT`] after `killed_at`, and beyond that for as long as
/// it lists more files at least every [`LAG_LIMIT`]. The most files missing at one node at
/// the end (lost), and for each node the seconds from the kill until it listed them all.
fn catch_up(
    nodes: &[Node],
    written: &[(FileEntry, Instant)],
    killed_at: Instant,
) -> io::Result<(u64, CaughtUp)> {
    struct Check {
        name: String,
        addr: SocketAddr,
        client: Client,
        missing: Vec<FileHash>,
        last_progress: Instant,
        done_after: Option<Duration>,
    }
    let mut checks = Vec::new();
    for n in nodes {
        checks.push(Check {
            name: n.name.clone(),
            addr: n.addr,
            client: hello_while_rejoining(n.addr, 0, "p2pshare-bench cluster check")?,
            missing: written.iter().map(|(f, _)| f.hash).collect(),
            last_progress: Instant::now(),
            done_after: None,
        });
    }
    let allowed = killed_at + FAULT_CATCH_UP_LIMIT;
    loop {
        let mut waiting = false;
        for c in checks.iter_mut().filter(|c| c.done_after.is_none()) {
            let before = c.missing.len();
            let mut still = Vec::new();
            let mut ended = None;
            for &h in &c.missing {
                match holders(&mut c.client, h) {
                    Ok(found) if found.is_empty() => still.push(h),
                    Ok(_) => {}
                    Err(e) => {
                        ended = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = ended {
                // A node that fences itself while the cluster settles ends its sessions: a
                // fresh one (waiting while the node rejoins, for a bounded time), and this
                // node's pass again.
                eprintln!(
                    "bench: cluster: engine fault: {}'s check session ended ({e}); opening another",
                    c.name
                );
                c.client = hello_while_rejoining(c.addr, 0, "p2pshare-bench cluster check")?;
                waiting = true;
                continue;
            }
            c.missing = still;
            if c.missing.is_empty() {
                c.done_after = Some(killed_at.elapsed());
                continue;
            }
            if c.missing.len() < before {
                c.last_progress = Instant::now();
            }
            let now = Instant::now();
            if now < allowed || now < c.last_progress + LAG_LIMIT {
                waiting = true;
            }
        }
        if !waiting {
            break;
        }
        thread::sleep(POLL);
    }
    let lost = checks
        .iter()
        .map(|c| c.missing.len() as u64)
        .max()
        .unwrap_or(0);
    let caught_up = checks
        .into_iter()
        .map(|c| (c.name, c.done_after.map(secs)))
        .collect();
    Ok((lost, caught_up))
}

/// `a 10.2 s, b 0.1 s, ...` (`never` for a node that did not list every file).
fn caught_up_line(caught_up: &[(String, Option<f64>)]) -> String {
    caught_up
        .iter()
        .map(|(node, s)| match s {
            Some(s) => format!("{node} {s:.1} s"),
            None => format!("{node} never"),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The line a peer logs (at debug level) when the index answers its register.
const REGISTERED_LINE: &str = "index holds 10 of our files";

/// The content of peer `n`'s file `i`: each distinct, so each is its own entry.
fn peer_file_bytes(n: usize, i: usize) -> Vec<u8> {
    format!("p2pshare-bench cluster peer {n} file {i}\n").into_bytes()
}

/// Node A killed with `p.peers` peer processes on it: see the module docs (7).
fn node_death(
    p: &Params,
    nodes: &mut [Node],
    observers: &mut Vec<Client>,
    population: Population,
) -> io::Result<NodeDeath> {
    // Fresh observer sessions: the engine fault may have fenced a node (a fence ends every
    // session), and on a starved machine the phases since the observers' last request can
    // outlast indexd's idle timeout (120 s): one run of 750 s failed here with b's observer
    // ended by its fence and c's and d's by the timeout.
    for (o, n) in observers.iter_mut().zip(nodes.iter()) {
        *o = hello_while_rejoining(n.addr, 0, "p2pshare-bench cluster observer")?;
    }
    let peers = p.peers;
    let shares = TempDir(std::env::temp_dir().join(format!(
        "p2pshare-bench-cluster-peers-{}",
        std::process::id()
    )));
    let logs = p.out.join("cluster-logs").join("peers");
    fs::create_dir_all(&logs)?;
    let indexes: Vec<String> = nodes.iter().take(3).map(|n| n.addr.to_string()).collect();
    let indexes = indexes.join(",");
    let mut children = Vec::new();
    let mut first_files = Vec::new();
    for n in 0..peers {
        let dir = shares.0.join(format!("peer{n}"));
        fs::create_dir_all(&dir)?;
        for i in 0..FILES_PER_PEER {
            fs::write(dir.join(format!("file {i}.dat")), peer_file_bytes(n, i))?;
        }
        first_files.push(FileHash::of(&peer_file_bytes(n, 0)));
        let log = logs.join(format!("peer{n}.log"));
        let child = Command::new(p.peer)
            .arg("--share")
            .arg(&dir)
            .args(["--index", &indexes, "--listen", "127.0.0.1:0", "--serve"])
            .args(["--log", "warn,peer=debug"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&log)?)
            .spawn()
            .map_err(|e| {
                io::Error::new(e.kind(), format!("cannot start {}: {e}", p.peer.display()))
            })?;
        children.push((ChildGuard(child), log));
    }
    let peer_entries = (peers * FILES_PER_PEER) as u64;
    let files = population.files.clone();
    let before = p.files as u64 + peer_entries;
    {
        let mut all: Vec<&mut Client> = observers.iter_mut().collect();
        if wait_entries(&mut all, before, LOAD_LIMIT).is_none() {
            let counts: Vec<String> = all
                .iter_mut()
                .map(|c| stats_of(c).map_or_else(|e| e.to_string(), |s| s.names.to_string()))
                .collect();
            return Err(io::Error::other(format!(
                "node death: the nodes did not reach {before} entries with the peers at a \
                 (they hold {})",
                counts.join(", ")
            )));
        }
    }
    // Each peer's file-server address, as the index lists it.
    let mut addrs = Vec::new();
    for h in &first_files {
        match holders(&mut observers[0], *h)?.as_slice() {
            [addr] => addrs.push(*addr),
            other => {
                return Err(io::Error::other(format!(
                    "node death: a peer's file is listed with holders {other:?} before the kill"
                )))
            }
        }
    }
    let registered_lines =
        |log: &Path| fs::read_to_string(log).map_or(0, |t| t.matches(REGISTERED_LINE).count());
    if let Some((_, log)) = children.iter().find(|(_, log)| registered_lines(log) != 1) {
        return Err(io::Error::other(format!(
            "node death: {} does not say it registered once at a",
            log.display()
        )));
    }
    eprintln!(
        "bench: cluster: node death: {peers} peer processes of {FILES_PER_PEER} files at a, replicated; SIGKILL a"
    );
    nodes[0].kill();
    let killed = Instant::now();
    drop(population);
    observers.remove(0);
    let sample: Vec<FileHash> = (0..DEATH_SAMPLE)
        .map(|i| files[i * files.len() / DEATH_SAMPLE].hash)
        .collect();
    let limit = p.ttl + Duration::from_secs(60);
    let (mut gone, mut back, mut listed, mut whole) = (None, None, None, None);
    while killed.elapsed() < limit && whole.is_none() {
        if back.is_none() && children.iter().all(|(_, log)| registered_lines(log) >= 2) {
            back = Some(killed.elapsed());
        }
        if gone.is_none() {
            let mut all_gone = true;
            'nodes: for o in observers.iter_mut() {
                for h in &sample {
                    if !holders(o, *h)?.is_empty() {
                        all_gone = false;
                        break 'nodes;
                    }
                }
            }
            if all_gone {
                gone = Some(killed.elapsed());
            }
        }
        if gone.is_some() && back.is_some() && listed.is_none() {
            let mut right = true;
            'right: for o in observers.iter_mut() {
                for (h, addr) in first_files.iter().zip(&addrs) {
                    if holders(o, *h)? != [*addr] {
                        right = false;
                        break 'right;
                    }
                }
            }
            if right {
                listed = Some(killed.elapsed());
            }
        }
        if listed.is_some() {
            let mut exact = true;
            for o in observers.iter_mut() {
                if stats_of(o)?.names != peer_entries {
                    exact = false;
                    break;
                }
            }
            if exact {
                whole = Some(killed.elapsed());
            }
        }
        thread::sleep(POLL);
    }
    // The peers are killed before their shares are removed.
    drop(children);
    drop(shares);
    let limit = p.ttl + Duration::from_secs(5);
    Ok(NodeDeath {
        peers,
        files_per_peer: FILES_PER_PEER,
        ttl_s: p.ttl.as_secs_f64(),
        a_entries_gone_s: gone.map(secs),
        peers_back_s: back.map(secs),
        listed_right_s: listed.map(secs),
        whole_s: whole.map(secs),
        met: listed.is_some_and(|w| w <= limit),
    })
}

/// The console lines of a result.
pub fn console(r: &ClusterResult) -> String {
    use std::fmt::Write as _;
    let mut t = String::new();
    let opt =
        |v: Option<f64>| v.map_or("NOT within the limit".to_string(), |s| format!("{s:.2} s"));
    let _ = writeln!(
        t,
        "cluster: 3 nats-servers (JetStream, R3), nodes a b c (+ d), {} entries pre-populated at a",
        r.files
    );
    let _ = writeln!(
        t,
        "bulk: registered at a in {:.2} s; held by b and c {} later",
        r.bulk.registered_s,
        opt(r.bulk.replicated_after_s)
    );
    let _ = writeln!(
        t,
        "rebuild: node d served {} of {} entries after {:.2} s: {:.0} entries/s (100M: {:.0} s, linear)",
        r.rebuild.entries_served,
        r.rebuild.entries,
        r.rebuild.seconds,
        r.rebuild.entries_per_s,
        r.rebuild.projected_100m_s
    );
    for m in &r.memory {
        let _ = writeln!(
            t,
            "memory {}: {} entries, VmHWM {} kB: {:.1} B/entry ({:.1} over its idle {} kB) (target ≤ {TARGET_BYTES_PER_ENTRY})",
            m.node, m.entries, m.vm_hwm_kb, m.bytes_per_entry, m.bytes_per_entry_over_idle, m.idle_rss_kb
        );
    }
    for m in &r.rss_peaks {
        let _ = writeln!(
            t,
            "rss {}: peak VmRSS {} kB at {:.2} s into the bulk load, holding {} entries ({} behind a); {} kB at the end",
            m.node, m.peak_rss_kb, m.at_s, m.entries_then, m.behind_a_then, m.last_rss_kb
        );
    }
    for d in &r.disk {
        let _ = writeln!(
            t,
            "disk {}: stream store {} bytes, {:.1} B/entry",
            d.server, d.stream_bytes, d.bytes_per_entry
        );
    }
    if let (Some(lag), Some(reads), Some(single), Some(e), Some(d)) = (
        &r.lag,
        &r.reads,
        &r.single_reads,
        &r.engine_fault,
        &r.node_death,
    ) {
        serving(&mut t, lag, reads, single, e, d);
    }
    for i in r.interleaved.iter().flatten() {
        let _ = writeln!(
            t,
            "interleaved lookups at {} ({INTERLEAVED_ROUNDS} rounds, a floor ping before each): p50 {:.1} µs, floor p50 {:.1} µs: {:.2}x floor (median of pairs {:.2}x), {:.2}x the single indexd's; target ≤ {TARGET_READ_RATIO}x",
            i.node, i.lookup.p50_us, i.floor.p50_us, i.lookup_over_floor, i.median_pair_ratio, i.over_single
        );
    }
    t
}

/// The console lines of phases 4 to 7.
fn serving(
    t: &mut String,
    lag: &Lag,
    reads: &[NodeReads],
    single: &NodeReads,
    e: &EngineFault,
    d: &NodeDeath,
) {
    use std::fmt::Write as _;
    let opt =
        |v: Option<f64>| v.map_or("NOT within the limit".to_string(), |s| format!("{s:.2} s"));
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    let _ = writeln!(
        t,
        "lag: {} registers, a register at one node listed at the next: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms, {} not seen in 10 s; resolution one lookup (p50 {:.1} µs, max {:.1} µs); target p99 ≤ {TARGET_LAG_P99_MS} ms: {}",
        lag.samples,
        lag.p50_ms,
        lag.p99_ms,
        lag.max_ms,
        lag.not_seen,
        lag.poll_lookup.p50_us,
        lag.poll_lookup.max_us,
        verdict(lag.met)
    );
    let of_single = |a: f64, b: f64| a / b.max(1e-9);
    for n in reads {
        let _ = writeln!(
            t,
            "reads at {}: lookup p50 {:.1} µs ({:.2}x floor, {:.2}x the single indexd's), search p50 {:.1} µs ({:.2}x floor, {:.2}x the single's), register p50 {:.1} µs, floor p50 {:.1} µs; inside the node: search p99 {:.1} µs ({:.2}x the single's), max {:.1} µs, lookup p99 {:.1} µs; target lookup ≤ {TARGET_READ_RATIO}x: {}",
            n.node,
            n.lookup.p50_us,
            n.lookup_over_floor,
            of_single(n.lookup.p50_us, single.lookup.p50_us),
            n.search.p50_us,
            n.search_over_floor,
            of_single(n.search.p50_us, single.search.p50_us),
            n.register.p50_us,
            n.floor.p50_us,
            n.server_search_p99_us,
            of_single(n.server_search_p99_us, single.server_search_p99_us),
            n.server_search_max_us,
            n.server_lookup_p99_us,
            verdict(n.met)
        );
    }
    let n = single;
    let _ = writeln!(
        t,
        "reads at a single indexd (no --cluster, the same entries): lookup p50 {:.1} µs ({:.2}x floor), search p50 {:.1} µs ({:.2}x), register p50 {:.1} µs, floor p50 {:.1} µs; inside it: search p99 {:.1} µs, max {:.1} µs, lookup p99 {:.1} µs",
        n.lookup.p50_us,
        n.lookup_over_floor,
        n.search.p50_us,
        n.search_over_floor,
        n.register.p50_us,
        n.floor.p50_us,
        n.server_search_p99_us,
        n.server_search_max_us,
        n.server_lookup_p99_us
    );
    let _ = writeln!(
        t,
        "engine fault ({} SIGKILLed): {} files written at b, {} lost; replication resumed {} after the kill (longest gap {:.2} s); every file listed after the kill at {}; lookups at c meanwhile p50 {:.1} µs, p99 {:.1} µs, max {:.1} µs, {} failed; writer sessions ended {}; restarted server healthy {}",
        e.killed,
        e.written,
        e.lost,
        opt(e.resumed_after_s),
        e.longest_gap_s,
        caught_up_line(&e.caught_up_s),
        e.reads.p50_us,
        e.reads.p99_us,
        e.reads.max_us,
        e.read_errors,
        e.writer_sessions_ended,
        opt(e.rejoined_after_s)
    );
    let _ = writeln!(
        t,
        "node death (a SIGKILLed, {} peer processes of {} files, TTL {:.0} s): a's entries gone {}; peers back through b/c {}; each peer listed once at every survivor {} (target ≤ TTL + 5 s: {}); survivors' entry counts exact {}",
        d.peers,
        d.files_per_peer,
        d.ttl_s,
        opt(d.a_entries_gone_s),
        opt(d.peers_back_s),
        opt(d.listed_right_s),
        verdict(d.met),
        opt(d.whole_s)
    );
}
