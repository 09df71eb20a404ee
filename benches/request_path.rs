//! The index server's request path in process, without sockets: what one `Ping`, one
//! `Lookup` by hash and one `Register` of 10 new files (the main job's register op) cost in
//! `IndexServer::handle_payload`, and how many heap allocations each makes.
//!
//! The index is pre-populated with 10,000 files (the main job's) of bench-like names (4–5 words and a tag,
//! ~40 bytes) held by 100 peers. Each op is timed warm (back to back) and cold (after
//! walking an 8 MiB buffer, as the main job's searches and the floor's echo server cool the
//! caches between two ops); the register's postings and the background work indexd does after
//! the answer is flushed (`finish_background`) are timed apart. `cargo bench --bench request_path`.

use p2pshare::index::limits::RateLimits;
use p2pshare::index::server::{IndexServer, ServerLimits, Session};
use p2pshare::wire::{self, FileEntry, FileHash, LookupKey, Request, RequestBody};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

/// Counts allocation calls (alloc, alloc_zeroed, realloc).
struct Counting;

static ALLOCS: AtomicU64 = AtomicU64::new(0);

// SAFETY (all four): each method forwards its arguments unchanged to `System`, which upholds
// the `GlobalAlloc` contract; the counter is bookkeeping only.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        System.alloc(layout)
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        System.alloc_zeroed(layout)
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Relaxed);
        System.realloc(ptr, layout, new_size)
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const WORDS: [&str; 24] = [
    "neon", "river", "live", "session", "remix", "final", "draft", "summer", "night", "blue",
    "track", "album", "photo", "report", "backup", "video", "holiday", "mix", "edit", "demo",
    "studio", "cover", "acoustic", "version",
];
const EXTENSIONS: [&str; 6] = ["flac", "mp3", "jpg", "pdf", "mkv", "zip"];
/// The main job's index: 10,000 files (`bench --files` default).
const POPULATED: usize = 10_000;
/// Pings and lookups timed per round.
const OPS: usize = 20_000;
/// Registers timed per round (the main job makes 200 at one peer).
const REGISTERS: usize = 2_000;

fn name(i: u64) -> String {
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut s = String::with_capacity(48);
    for _ in 0..4 + (x % 2) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push_str(WORDS[(x % WORDS.len() as u64) as usize]);
        s.push(' ');
    }
    s.push_str(&i.to_string());
    s.push('.');
    s.push_str(EXTENSIONS[(x >> 8) as usize % EXTENSIONS.len()]);
    s
}

fn file(label: &str, i: u64) -> FileEntry {
    FileEntry {
        hash: FileHash::of(format!("{label} {i}").as_bytes()),
        size: 1024 + i * 7919 % (64 << 20),
        name: name(i),
    }
}

fn join(server: &mut IndexServer, port: u16) -> Session {
    let mut session = server.accept(SocketAddr::from(([127, 0, 0, 1], port)));
    let hello = RequestBody::Hello {
        version: wire::PROTOCOL_VERSION,
        listen_port: port,
        agent: "bench".into(),
    };
    let mut out = Vec::new();
    server.handle_payload(&mut session, &payload(0, hello), &mut out);
    session
}

fn payload(id: u32, body: RequestBody) -> Vec<u8> {
    wire::to_payload(&Request { id, body })
}

/// Walks `cooler` so that the next op finds little of its own in the caches.
fn cool(cooler: &mut [u8]) {
    for b in cooler.iter_mut().step_by(64) {
        *b = b.wrapping_add(1);
    }
    black_box(&cooler);
}

struct Timing {
    ns: Vec<u64>,
    allocs: u64,
}

impl Timing {
    fn report(&mut self, what: &str) {
        self.ns.sort_unstable();
        let q = |p: f64| self.ns[((self.ns.len() - 1) as f64 * p) as usize];
        println!(
            "{what:<34} p50 {:>6} ns  p10 {:>6}  p90 {:>6}  allocs/op {:.2}",
            q(0.5),
            q(0.1),
            q(0.9),
            self.allocs as f64 / self.ns.len() as f64
        );
    }
}

/// Times `op(state, i)` for `i` in `0..n`, cooling the caches first if `cooler` is given,
/// and running `after(state)` (timed apart, its allocations not counted) after each.
fn time<S>(
    n: usize,
    mut cooler: Option<&mut [u8]>,
    state: &mut S,
    mut op: impl FnMut(&mut S, usize),
    mut after: impl FnMut(&mut S),
) -> (Timing, Timing) {
    let mut ns = Vec::with_capacity(n);
    let mut after_ns = Vec::with_capacity(n);
    let mut allocs = 0;
    let mut after_allocs = 0;
    for i in 0..n {
        if let Some(c) = cooler.as_deref_mut() {
            cool(c);
        }
        let a = ALLOCS.load(Relaxed);
        let t = Instant::now();
        op(state, i);
        let took = t.elapsed();
        allocs += ALLOCS.load(Relaxed) - a;
        ns.push(took.as_nanos() as u64);
        let a = ALLOCS.load(Relaxed);
        let t = Instant::now();
        after(state);
        after_ns.push(t.elapsed().as_nanos() as u64);
        after_allocs += ALLOCS.load(Relaxed) - a;
    }
    (
        Timing { ns, allocs },
        Timing {
            ns: after_ns,
            allocs: after_allocs,
        },
    )
}

struct State {
    server: IndexServer,
    me: Session,
    out: Vec<u8>,
}

impl State {
    fn handle(&mut self, p: &[u8]) {
        self.out.clear();
        black_box(self.server.handle_payload(&mut self.me, p, &mut self.out));
    }
}

fn main() {
    let mut server = IndexServer::new(ServerLimits::default());
    server.set_rate_limits(RateLimits::off());
    let mut out = Vec::with_capacity(64 * 1024);
    let mut others = Vec::new();
    for p in 0..100u16 {
        let mut s = join(&mut server, 10_000 + p);
        let files: Vec<FileEntry> = (0..POPULATED / 100)
            .map(|k| file("populate", (p as usize * (POPULATED / 100) + k) as u64))
            .collect();
        out.clear();
        server.handle_payload(
            &mut s,
            &payload(1, RequestBody::Register { files }),
            &mut out,
        );
        server.finish_background();
        others.push(s);
    }
    let me = join(&mut server, 9_000);
    let mut st = State { server, me, out };
    let mut cooler = vec![0u8; 8 << 20];

    let ping = payload(7, RequestBody::Ping);
    let lookups: Vec<Vec<u8>> = (0..OPS as u64)
        .map(|i| {
            let key = LookupKey::Hash(file("populate", i * 7 % POPULATED as u64).hash);
            payload(8, RequestBody::Lookup { key, after: None })
        })
        .collect();
    const ROUNDS: usize = 3;
    let registers: Vec<Vec<u8>> = (0..(ROUNDS * 2 * REGISTERS) as u64)
        .map(|op| {
            let files = (0..10).map(|k| file("register", op * 10 + k)).collect();
            payload(9, RequestBody::Register { files })
        })
        .collect();
    println!(
        "register payload {} bytes, ping {} bytes, lookup {} bytes",
        registers[0].len(),
        ping.len(),
        lookups[0].len()
    );
    let mut fresh = registers.iter();
    // For `perf record`: this many registers (each followed by the background work; the
    // caches cooled before each if REQUEST_PATH_PROFILE_COLD is set), nothing else.
    if let Some(n) = std::env::var("REQUEST_PATH_PROFILE_REGISTERS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
    {
        let fresh: Vec<Vec<u8>> = (0..n as u64)
            .map(|op| {
                let files = (0..10).map(|k| file("profile", op * 10 + k)).collect();
                payload(9, RequestBody::Register { files })
            })
            .collect();
        let cold = std::env::var_os("REQUEST_PATH_PROFILE_COLD").is_some();
        for p in &fresh {
            if cold {
                cool(&mut cooler);
            }
            st.handle(p);
            st.server.finish_background();
        }
        return;
    }
    let none = |_: &mut State| {};
    let settle = |s: &mut State| {
        s.server.finish_background();
    };
    for round in 0..ROUNDS {
        println!("round {round}");
        time(OPS, None, &mut st, |s, _| s.handle(&ping), none)
            .0
            .report("ping warm");
        let c = Some(&mut cooler[..]);
        time(OPS, c, &mut st, |s, _| s.handle(&ping), none)
            .0
            .report("ping cold");
        let l = &lookups;
        time(OPS, None, &mut st, |s, i| s.handle(&l[i]), none)
            .0
            .report("lookup warm");
        let c = Some(&mut cooler[..]);
        time(OPS, c, &mut st, |s, i| s.handle(&l[i]), none)
            .0
            .report("lookup cold");
        let r = &registers;
        let decode = |_: &mut State, i: usize| {
            black_box(wire::decode::<Request>(&r[i]).unwrap());
        };
        time(REGISTERS, None, &mut st, decode, none)
            .0
            .report("register decode+drop warm");
        let (mut reg, mut post) = time(
            REGISTERS,
            None,
            &mut st,
            |s, _| s.handle(fresh.next().unwrap()),
            settle,
        );
        reg.report("register 10 warm");
        post.report("  its background work (after)");
        let c = Some(&mut cooler[..]);
        let (mut reg, mut post) = time(
            REGISTERS,
            c,
            &mut st,
            |s, _| s.handle(fresh.next().unwrap()),
            settle,
        );
        reg.report("register 10 cold");
        post.report("  its background work (after)");
    }
    drop(others);
}
