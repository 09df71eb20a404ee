//! Where a request's time over the bench's floor goes, at one closed-loop client: seven kinds
//! of round trip taken in turn, round after round, so that all of them share the same
//! moments, each after a floor ping as in the bench:
//!
//! 1. `floor`: the bench's floor, 32 bytes to its echo server (a blocking thread per
//!    connection: `read`, `write`, nothing else);
//! 2. `mio`: the same 32 bytes to an echo on a bare `mio::Poll` (wait, read, write: what
//!    any readiness loop pays over a blocking thread);
//! 3. `mio+timer`: the same echo with every wait bounded by 250 ms, as the reactor's waits
//!    are by its idle sweep (what arming a timer for each wait costs);
//! 4. `reactor`: 32 bytes in one `\r\r\n` frame to an echo on p2pshare's own reactor (mio's
//!    `epoll_wait`, the slab, the frame codec, the output queue, the turn's bookkeeping) and
//!    nothing of the protocol;
//! 5. `ping`: indexd's `Ping` (the protocol's decoding and encoding, the session, the rate
//!    limiter, the turn's end work), no index work;
//! 6. `lookup`: a `Lookup` by hash of one of the indexed files (the main job's lookup);
//! 7. `register`: a `Register` of 10 new files (the main job's register).
//!
//! Each is reported as p50 and as µs over the floor's p50, and the differences between
//! neighbours name the cost of each layer. indexd (with `FILES` pre-populated files, as the
//! main job's 10,000) and the echo servers run pinned to the last CPU, the client to CPU 0,
//! as in the bench.
//!
//! `cargo build --release && target/release/examples/overhead [ROUNDS] [FILES]` (defaults
//! 20,000 and 10,000): it starts `indexd` and `bench` from the directory above its own.

use p2pshare::codec;
use p2pshare::reactor::{CloseReason, Config, ConnId, Ctx, Handler, Reactor, Verdict};
use p2pshare::wire::{LookupKey, RequestBody, ResponseBody};
use p2pshare_bench::client::Client;
use p2pshare_bench::floor::{self, ChildGuard};
use p2pshare_bench::workload::{self, Rng, FILES_PER_FAKE_PEER};
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::time::Instant;

/// The bench's default `--seed`.
const SEED: u64 = 1;
/// Bytes of the floor's and the reactor echo's pings (the bench's `PING_BYTES`).
const PING_BYTES: usize = floor::PING_BYTES;

/// The echo on p2pshare's reactor: every frame is sent back as it came.
struct Echo;

impl Handler for Echo {
    type Conn = ();

    fn handle_accept(&mut self, _: &mut Ctx<()>, _: ConnId, _: SocketAddr) {}

    fn handle_frame(&mut self, ctx: &mut Ctx<()>, conn: ConnId, _: &mut (), p: &[u8]) -> Verdict {
        ctx.send(conn, |out| codec::encode(p, out));
        Verdict::Continue
    }

    fn handle_close(&mut self, _: &mut Ctx<()>, _: ConnId, _: (), _: &CloseReason) {}
}

/// `--reactor-echo`: serves [`Echo`] on a loopback port until stdin closes.
fn reactor_echo() -> io::Result<()> {
    let mut reactor = Reactor::new(Config::default())?;
    let addr = reactor
        .ctx()
        .listen("127.0.0.1:0".parse().expect("address"))?;
    println!("echo listening on {addr}");
    io::stdout().flush()?;
    std::thread::spawn(|| {
        let _ = io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    reactor.run(&mut Echo)
}

/// `--mio-echo`: an echo on a bare `mio::Poll`, one read and one write per wake-up; with
/// `timeout`, every wait is bounded by it (as a loop with timers waits: the reactor waits
/// at most until its next idle sweep, 250 ms away), else it waits without a bound.
fn mio_echo(timeout: Option<std::time::Duration>) -> io::Result<()> {
    use mio::{Events, Interest, Poll, Token};
    let mut listener = mio::net::TcpListener::bind("127.0.0.1:0".parse().expect("address"))?;
    println!("echo listening on {}", listener.local_addr()?);
    io::stdout().flush()?;
    std::thread::spawn(|| {
        let _ = io::stdin().read_to_end(&mut Vec::new());
        std::process::exit(0);
    });
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut listener, Token(0), Interest::READABLE)?;
    let mut events = Events::with_capacity(64);
    let mut conns: Vec<Option<mio::net::TcpStream>> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match poll.poll(&mut events, timeout) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            if event.token() == Token(0) {
                while let Ok((mut s, _)) = listener.accept() {
                    s.set_nodelay(true)?;
                    let token = Token(conns.len() + 1);
                    poll.registry()
                        .register(&mut s, token, Interest::READABLE)?;
                    conns.push(Some(s));
                }
                continue;
            }
            let slot = &mut conns[event.token().0 - 1];
            let Some(s) = slot else { continue };
            // Edge-triggered: read until the socket is empty, echoing as it comes.
            loop {
                match s.read(&mut buf) {
                    Ok(0) => {
                        *slot = None;
                        break;
                    }
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            *slot = None;
                            break;
                        }
                        if n < buf.len() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(_) => {
                        *slot = None;
                        break;
                    }
                }
            }
        }
    }
}

/// A blocking client of an echo server: one ping of `frame` at a time.
struct Pinger {
    stream: TcpStream,
    frame: Vec<u8>,
    buf: Vec<u8>,
}

impl Pinger {
    fn new(addr: SocketAddr, frame: Vec<u8>) -> io::Result<Pinger> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        let buf = vec![0; frame.len()];
        Ok(Pinger { stream, frame, buf })
    }

    /// One round trip; the echo sends back exactly what it got.
    fn ping(&mut self) -> io::Result<()> {
        self.stream.write_all(&self.frame)?;
        self.stream.read_exact(&mut self.buf)?;
        if self.buf != self.frame {
            return Err(io::Error::other("the echo sent back other bytes"));
        }
        Ok(())
    }
}

/// Times `f` in ns.
fn timed(f: impl FnOnce() -> io::Result<()>) -> io::Result<u64> {
    let began = Instant::now();
    f()?;
    Ok(began.elapsed().as_nanos() as u64)
}

/// One index request, its encoding outside the clock (as in the bench); the answer must
/// be `ok`.
fn timed_call(
    client: &mut Client,
    body: RequestBody,
    ok: fn(&ResponseBody) -> bool,
) -> io::Result<u64> {
    let id = client.prepare(body);
    let ns = timed(|| client.exchange())?;
    let answer = client.answer(id)?;
    if !ok(&answer) {
        return Err(io::Error::other(format!("unexpected answer {answer:?}")));
    }
    Ok(ns)
}

fn p50_us(samples: &mut [u64]) -> f64 {
    samples.sort_unstable();
    samples[samples.len() / 2] as f64 / 1000.0
}

fn main() -> io::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    match args.peek().map(String::as_str) {
        Some("--reactor-echo") => return reactor_echo(),
        Some("--mio-echo") => return mio_echo(None),
        Some("--mio-echo-timer") => return mio_echo(Some(std::time::Duration::from_millis(250))),
        _ => {}
    }
    let rounds: usize = args.next().map_or(20_000, |s| s.parse().expect("ROUNDS"));
    let files: usize = args.next().map_or(10_000, |s| s.parse().expect("FILES"));
    let me = std::env::current_exe()?;
    let dir: PathBuf = me
        .parent()
        .and_then(|examples| examples.parent())
        .expect("target/release/examples/overhead")
        .into();

    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus >= 2 {
        p2pshare::sys::process::pin_current_thread(cpus - 1)?;
    }
    let indexd_args = [
        "--listen",
        "127.0.0.1:0",
        "--log",
        "warn",
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
        "--rate-register-address",
        "0",
    ];
    let (_indexd, index_addr): (ChildGuard, _) =
        floor::spawn_listening(&dir.join("indexd"), &indexd_args)?;
    let (_echo, echo_addr) = floor::spawn_listening(&dir.join("bench"), &["--echo-server"])?;
    let (_mio, mio_addr) = floor::spawn_listening(&me, &["--mio-echo"])?;
    let (_mio_timer, mio_timer_addr) = floor::spawn_listening(&me, &["--mio-echo-timer"])?;
    let (_reactor, reactor_addr) = floor::spawn_listening(&me, &["--reactor-echo"])?;
    if cpus >= 2 {
        p2pshare::sys::process::pin_current_thread(0)?;
    }

    // The main job's population: fake peers of 1,000 files, kept connected.
    let population: Vec<_> = (0..files)
        .map(|i| workload::populated_file(SEED, i))
        .collect();
    let mut fake_peers = Vec::new();
    for (n, chunk) in population.chunks(FILES_PER_FAKE_PEER).enumerate() {
        let mut c = Client::hello(index_addr, 20_000 + n as u16, "overhead populate")?;
        for part in chunk.chunks(100) {
            timed_call(
                &mut c,
                RequestBody::Register {
                    files: part.to_vec(),
                },
                |a| matches!(a, ResponseBody::Registered { rejected: 0, .. }),
            )?;
        }
        fake_peers.push(c);
    }

    let mut floor = Pinger::new(echo_addr, vec![0x5a; PING_BYTES])?;
    let mut bare = Pinger::new(mio_addr, vec![0x5a; PING_BYTES])?;
    let mut bare_timer = Pinger::new(mio_timer_addr, vec![0x5a; PING_BYTES])?;
    let mut frame = Vec::new();
    codec::encode(&[0x5a; PING_BYTES], &mut frame);
    let mut reactor = Pinger::new(reactor_addr, frame)?;
    let mut client = Client::hello(index_addr, 9, "overhead")?;
    let mut rng = Rng::new(7);
    let names = [
        "floor",
        "mio",
        "mio+timer",
        "reactor",
        "ping",
        "lookup",
        "register",
    ];
    let mut samples: Vec<Vec<u64>> = vec![Vec::with_capacity(rounds); names.len()];
    let warmup = rounds / 20 + 100;
    for round in 0..warmup + rounds {
        // Each measured round trip comes after a floor ping, as every op in the bench does:
        // a server's work after its answer (its turn's end) overlaps the client's next
        // ping, not the next request to the same server. The floor counts all its pings.
        let mut ns = [0u64; 7];
        for (k, slot) in ns.iter_mut().enumerate().skip(1) {
            let floor_ns = timed(|| floor.ping())?;
            if round >= warmup {
                samples[0].push(floor_ns);
            }
            *slot = match k {
                1 => timed(|| bare.ping())?,
                2 => timed(|| bare_timer.ping())?,
                3 => timed(|| reactor.ping())?,
                4 => timed_call(&mut client, RequestBody::Ping, |a| {
                    matches!(a, ResponseBody::Pong)
                })?,
                5 => timed_call(
                    &mut client,
                    RequestBody::Lookup {
                        key: LookupKey::Hash(population[rng.below(population.len())].hash),
                        after: None,
                    },
                    |a| matches!(a, ResponseBody::Holders { .. }),
                )?,
                _ => timed_call(
                    &mut client,
                    RequestBody::Register {
                        files: workload::register_batch(SEED, 9, 0, round),
                    },
                    |a| matches!(a, ResponseBody::Registered { rejected: 0, .. }),
                )?,
            };
        }
        if round >= warmup {
            for (s, ns) in samples.iter_mut().zip(ns).skip(1) {
                s.push(ns);
            }
        }
    }
    drop(fake_peers);

    let p50: Vec<f64> = samples.iter_mut().map(|s| p50_us(s)).collect();
    println!(
        "{rounds} rounds, {files} files indexed, servers on CPU {}, client on CPU 0",
        cpus.saturating_sub(1)
    );
    println!(
        "{:<10} {:>8} {:>12} {:>14}",
        "", "p50 µs", "over floor", "over previous"
    );
    for (i, name) in names.iter().enumerate() {
        let previous = if i == 0 { 0.0 } else { p50[i] - p50[i - 1] };
        println!(
            "{:<10} {:>8.2} {:>12.2} {:>14.2}",
            name,
            p50[i],
            p50[i] - p50[0],
            previous
        );
    }
    println!(
        "lookup {:.2}x and register {:.2}x the floor; 1.15x leaves {:.2} µs",
        p50[5] / p50[0],
        p50[6] / p50[0],
        0.15 * p50[0]
    );
    Ok(())
}
