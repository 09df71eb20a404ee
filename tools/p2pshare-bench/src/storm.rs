//! The reconnect-storm mode (`--storm PEERS`, issue 13 case 8): PEERS simulated peers of
//! [`FILES_PER_PEER`] files each register with an indexd the bench starts; indexd is
//! SIGKILLed, left down for the outage, and started again on the same address; the peers
//! come back with the peer's own backoff (250 ms doubling to 30 s, full jitter: each wait
//! uniform between zero and its step) and register again. Measured: the time from the
//! restart until the index is whole again (every file back, by `Stats`), and an honest
//! client's lookups by hash meanwhile (one at a time, from the restart until whole).
//!
//! # Invariants
//! - The simulated peers live on one reactor thread of their own; the honest client and the
//!   `Stats` polls run on the calling thread. Both stop before the result is returned, and
//!   indexd is killed when the run ends (its guard).
//! - A lookup answered `NotFound` (its file not back yet) is an answer like any other for the
//!   latency; they are counted apart.

use super::client::Client;
use super::floor::{spawn_listening, ChildGuard};
use super::stats::{self, OpSummary};
use super::workload::Rng;
use p2pshare::peer::session::{BACKOFF_MAX, BACKOFF_MIN};
use p2pshare::reactor::{
    CloseReason, Config as ReactorConfig, ConnId, Ctx, Handler, Reactor, Verdict,
};
use p2pshare::wire::{
    self, FileEntry, FileHash, LookupKey, Request, RequestBody, Response, ResponseBody,
    PROTOCOL_VERSION,
};
use serde::Serialize;
use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

/// Files each simulated peer shares.
pub const FILES_PER_PEER: usize = 100;

/// How often the index's file count is polled.
const POLL: Duration = Duration::from_millis(50);

/// The storm's figures (`storm.json`).
#[derive(Debug, Clone, Serialize)]
pub struct StormResult {
    /// Simulated peers.
    pub peers: usize,
    /// Files in all.
    pub files: u64,
    /// Seconds from the first connect until every file was registered (before the kill).
    pub initial_load_s: f64,
    /// Seconds indexd stayed down.
    pub outage_s: f64,
    /// Seconds from the restart until every file was back; `None`: not within the limit.
    pub whole_after_s: Option<f64>,
    /// Files back when the run ended.
    pub files_back: u64,
    /// The honest client's lookups by hash between the restart and the index being whole.
    pub lookup: OpSummary,
    /// Of those, answered `NotFound` (the file not back yet).
    pub lookups_not_found: u64,
    /// Answers `RateLimited` the simulated peers got.
    pub peers_rate_limited: u64,
}

/// The file `i` of simulated peer `n`.
fn file(n: usize, i: usize) -> FileEntry {
    FileEntry {
        hash: FileHash::of(format!("storm {n} {i}").as_bytes()),
        size: 1,
        name: format!("storm{n} file{i}.dat"),
    }
}

struct FakePeer {
    n: usize,
    welcomed: bool,
}

struct Peers {
    addr: SocketAddr,
    rng: Rng,
    /// Reconnect attempts since each peer's last Welcome.
    attempts: Vec<u32>,
    registered: Arc<AtomicU64>,
    rate_limited: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
}

impl Peers {
    fn connect(&mut self, ctx: &mut Ctx<FakePeer>, n: usize) {
        match ctx.connect(self.addr, FakePeer { n, welcomed: false }) {
            Ok(conn) => ctx.send(
                conn,
                wire::framed(&Request {
                    id: 0,
                    body: RequestBody::Hello {
                        version: PROTOCOL_VERSION,
                        listen_port: 10_000 + (n % 50_000) as u16,
                        agent: "p2pshare-bench storm".into(),
                    },
                }),
            ),
            Err(_) => self.retry_later(ctx, n),
        }
    }

    /// The peer's backoff: the step doubles from 250 ms to 30 s; the wait is uniform in
    /// [0, step].
    fn retry_later(&mut self, ctx: &mut Ctx<FakePeer>, n: usize) {
        if self.stop.load(Ordering::Relaxed) {
            return;
        }
        let step = BACKOFF_MIN
            .saturating_mul(1u32 << self.attempts[n].min(16))
            .min(BACKOFF_MAX);
        self.attempts[n] = self.attempts[n].saturating_add(1);
        let wait = self.rng.below(step.as_millis() as usize + 1);
        ctx.set_timer(Duration::from_millis(wait as u64), n as u64);
    }
}

impl Handler for Peers {
    type Conn = FakePeer;

    fn handle_accept(&mut self, ctx: &mut Ctx<FakePeer>, conn: ConnId, _: SocketAddr) -> FakePeer {
        ctx.close(conn, CloseReason::Local);
        FakePeer {
            n: usize::MAX,
            welcomed: false,
        }
    }

    fn handle_frame(
        &mut self,
        ctx: &mut Ctx<FakePeer>,
        conn: ConnId,
        st: &mut FakePeer,
        payload: &[u8],
    ) -> Verdict {
        let Ok(resp) = wire::decode::<Response>(payload) else {
            return Verdict::Close(CloseReason::Protocol("undecodable answer".into()));
        };
        match resp.body {
            ResponseBody::Welcome { .. } if !st.welcomed => {
                st.welcomed = true;
                self.attempts[st.n] = 0;
                let files = (0..FILES_PER_PEER).map(|i| file(st.n, i)).collect();
                ctx.send(
                    conn,
                    wire::framed(&Request {
                        id: 1,
                        body: RequestBody::Register { files },
                    }),
                );
            }
            ResponseBody::Registered { .. } => {
                self.registered.fetch_add(1, Ordering::Relaxed);
            }
            ResponseBody::RateLimited { .. } => {
                self.rate_limited.fetch_add(1, Ordering::Relaxed);
                return Verdict::Close(CloseReason::Local);
            }
            _ if !st.welcomed => return Verdict::Close(CloseReason::Local),
            _ => {}
        }
        Verdict::Continue
    }

    fn handle_close(&mut self, ctx: &mut Ctx<FakePeer>, _: ConnId, st: FakePeer, _: &CloseReason) {
        if st.n != usize::MAX {
            self.retry_later(ctx, st.n);
        }
    }

    fn handle_timer(&mut self, ctx: &mut Ctx<FakePeer>, timer: u64) {
        if !self.stop.load(Ordering::Relaxed) {
            self.connect(ctx, timer as usize);
        }
    }

    fn handle_wake(&mut self, ctx: &mut Ctx<FakePeer>) {
        if self.stop.load(Ordering::Relaxed) {
            ctx.stop();
        }
    }
}

fn start_indexd(indexd: &Path, listen: &str, peers: usize) -> io::Result<(ChildGuard, SocketAddr)> {
    let max = (peers + 1000).to_string();
    spawn_listening(
        indexd,
        &[
            "--listen",
            listen,
            "--max-connections",
            &max,
            "--max-connections-per-ip",
            "0",
            "--max-holdings-per-ip",
            "0",
            "--log",
            "warn",
        ],
    )
}

/// Files indexd holds, by `Stats` on a fresh session (None while it is not reachable).
fn files_indexed(addr: SocketAddr) -> Option<u64> {
    let mut c = Client::hello(addr, 0, "p2pshare-bench storm stats").ok()?;
    match c.call(RequestBody::Stats).ok()? {
        ResponseBody::Stats(s) => Some(s.files),
        _ => None,
    }
}

/// Runs the storm against a fresh `indexd`: see the module docs. `limit` bounds each wait
/// (the initial load, the refill).
pub fn run(
    indexd: &Path,
    peers: usize,
    outage: Duration,
    limit: Duration,
    seed: u64,
) -> io::Result<StormResult> {
    if let Err(e) = p2pshare::sys::process::raise_fd_limit() {
        eprintln!("bench: storm: cannot raise the open-files limit: {e}");
    }
    let (mut guard, addr) = start_indexd(indexd, "127.0.0.1:0", peers)?;
    let files = (peers * FILES_PER_PEER) as u64;
    let registered = Arc::new(AtomicU64::new(0));
    let rate_limited = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut reactor = Reactor::<FakePeer>::new(ReactorConfig::default())?;
    let waker = reactor.ctx().waker();
    let mut handler = Peers {
        addr,
        rng: Rng::for_stream(seed, 0x5707),
        attempts: vec![0; peers],
        registered: registered.clone(),
        rate_limited: rate_limited.clone(),
        stop: stop.clone(),
    };
    let began = Instant::now();
    for n in 0..peers {
        handler.connect(reactor.ctx(), n);
    }
    let peers_thread = thread::spawn(move || reactor.run(&mut handler));
    let finish = |stop: &AtomicBool| {
        stop.store(true, Ordering::Relaxed);
        let _ = waker.wake();
    };

    // The initial load: every peer registered.
    let deadline = Instant::now() + limit;
    while registered.load(Ordering::Relaxed) < peers as u64 {
        if Instant::now() > deadline || peers_thread.is_finished() {
            finish(&stop);
            return Err(io::Error::other(format!(
                "storm: only {} of {peers} peers registered in {limit:?}",
                registered.load(Ordering::Relaxed)
            )));
        }
        thread::sleep(POLL);
    }
    let initial_load = began.elapsed();
    eprintln!(
        "bench: storm: {peers} peers of {FILES_PER_PEER} files registered in {:.1} s; SIGKILL indexd, {:.1} s outage",
        initial_load.as_secs_f64(),
        outage.as_secs_f64()
    );

    // The kill, the outage, the restart on the same address.
    let _ = guard.0.kill();
    let _ = guard.0.wait();
    thread::sleep(outage);
    let (guard, _) = start_indexd(indexd, &addr.to_string(), peers)?;
    let restarted = Instant::now();

    // The honest client's lookups until the index is whole.
    let mut hist = stats::new_histogram();
    let mut not_found = 0;
    let mut rng = Rng::for_stream(seed, 0x100C);
    let mut honest = None;
    let mut next_poll = Instant::now();
    let mut whole_after = None;
    let mut files_back = 0;
    let deadline = restarted + limit;
    while Instant::now() < deadline {
        if Instant::now() >= next_poll {
            next_poll = Instant::now() + POLL;
            if let Some(n) = files_indexed(addr) {
                files_back = n;
                if n >= files {
                    whole_after = Some(restarted.elapsed());
                    break;
                }
            }
        }
        let c = match &mut honest {
            Some(c) => c,
            None => match Client::hello(addr, 0, "p2pshare-bench storm honest") {
                Ok(c) => honest.insert(c),
                Err(_) => {
                    thread::sleep(Duration::from_millis(5));
                    continue;
                }
            },
        };
        let key = LookupKey::Hash(file(rng.below(peers), rng.below(FILES_PER_PEER)).hash);
        let sent = Instant::now();
        match c.call(RequestBody::Lookup { key, after: None }) {
            Ok(ResponseBody::Holders { .. }) => stats::record(&mut hist, sent.elapsed()),
            Ok(_) => {
                stats::record(&mut hist, sent.elapsed());
                not_found += 1;
            }
            Err(_) => honest = None,
        }
    }
    finish(&stop);
    let _ = peers_thread.join();
    drop(guard);
    Ok(StormResult {
        peers,
        files,
        initial_load_s: initial_load.as_secs_f64(),
        outage_s: outage.as_secs_f64(),
        whole_after_s: whole_after.map(|d| d.as_secs_f64()),
        files_back,
        lookup: OpSummary::of(&hist, 0),
        lookups_not_found: not_found,
        peers_rate_limited: rate_limited.load(Ordering::Relaxed),
    })
}
