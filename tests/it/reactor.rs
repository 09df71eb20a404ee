//! Loopback tests of the reactor: real sockets on 127.0.0.1 port 0, a reactor on its own thread,
//! blocking std clients with read timeouts.
//!
//! Covered: a fragmentation sweep with 64 concurrent clients; back-pressure (a client that does
//! not read is parked, its queued output bounded); disconnect mid-frame; idle and slowloris
//! timeouts; oversized and malformed frames (closed at once, answered, or ignored by the
//! handler); the connection cap and its busy reply, and the per-source cap (clients bound to
//! 127.0.0.1–4 play four hosts); outgoing connects (including to a closed port and a close
//! requested before the connect completes), `sendfile` ranges streamed as raw bytes with
//! keep-alive framing after them; a half-closing client that still gets every echo; an HTTP
//! listener beside the frame listener (answers, its own connection limit, its timeout); a web
//! listener (a deferred answer holding pipelined requests in order, an event stream whose
//! reader stalls closed at its output bound while others are served).
//!
//! Every test is bounded in time: sockets have read/write timeouts, what a handler records is
//! waited for on a condition variable it notifies, with a deadline ([`Watched::wait_for`]), and
//! every reactor is stopped (waker + flag) and joined, also when a test fails ([`Running`]'s
//! `Drop`). Random inputs come from a small seeded generator; the seed is printed and can be
//! fixed with `REACTOR_TEST_SEED` to replay a failure.

use mio::Waker;
use p2pshare::codec::{self, Decoder, FrameError};
use p2pshare::reactor::web::{write_event, Status};
use p2pshare::reactor::{
    CloseReason, Config, ConnId, Ctx, Handler, HttpBody, HttpLimits, Reactor, Verdict, WebLimits,
    WebReply, WebRequest, WebResponse,
};
use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

/// How long any single blocking socket call or wait may take before the test fails.
const IO_TIMEOUT: Duration = Duration::from_secs(10);

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// Randomness

/// xorshift64*: enough randomness for payloads and split points, reproducible from a seed.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next_u64() % (hi - lo + 1) as u64) as usize
    }

    fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// The run's seed: `REACTOR_TEST_SEED` if set, else the clock. Printed so a failure can be
/// replayed.
fn seed(test: &str) -> u64 {
    let seed = std::env::var("REACTOR_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    eprintln!("{test}: REACTOR_TEST_SEED={seed}");
    seed
}

// ---------------------------------------------------------------------------------------------
// Running a reactor on a thread

/// A reactor running on its own thread. Stopped and joined on [`Running::stop`] or on drop.
struct Running {
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Running {
    /// Builds a reactor on a new thread, calls `setup` there (listen, connect, build the
    /// handler), sends `setup`'s value back and runs until stopped.
    fn spawn<H, R>(
        config: Config,
        setup: impl FnOnce(&mut Ctx<H::Conn>) -> (H, R) + Send + 'static,
    ) -> (Running, R)
    where
        H: Handler + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = stop.clone();
        let thread = thread::spawn(move || {
            let mut reactor = Reactor::new(config).expect("reactor");
            let waker = reactor.ctx().waker();
            let (inner, value) = setup(reactor.ctx());
            tx.send((waker, value)).unwrap();
            let mut handler = Stoppable {
                inner,
                stop: stop_flag,
            };
            reactor.run(&mut handler).expect("reactor poll failed");
        });
        let (waker, value) = rx.recv_timeout(IO_TIMEOUT).expect("reactor setup");
        let running = Running {
            waker,
            stop,
            thread: Some(thread),
        };
        (running, value)
    }

    /// Stops the reactor and joins its thread; fails the test if the reactor thread panicked.
    fn stop(mut self) {
        let joined = self.halt();
        assert!(joined.is_ok(), "reactor thread panicked");
    }

    fn halt(&mut self) -> thread::Result<()> {
        let Some(thread) = self.thread.take() else {
            return Ok(());
        };
        self.stop.store(true, Ordering::SeqCst);
        self.waker.wake().expect("wake reactor");
        thread.join()
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // A failed test still stops its reactor; the failure itself is reported by the test.
        let _ = self.halt();
    }
}

/// Wraps a test handler so the waker plus a flag stop the loop.
struct Stoppable<H> {
    inner: H,
    stop: Arc<AtomicBool>,
}

impl<H: Handler> Handler for Stoppable<H> {
    type Conn = H::Conn;

    fn handle_accept(
        &mut self,
        ctx: &mut Ctx<H::Conn>,
        conn: ConnId,
        remote: SocketAddr,
    ) -> H::Conn {
        self.inner.handle_accept(ctx, conn, remote)
    }
    fn handle_connected(
        &mut self,
        ctx: &mut Ctx<H::Conn>,
        conn: ConnId,
        st: &mut H::Conn,
    ) -> Verdict {
        self.inner.handle_connected(ctx, conn, st)
    }
    fn handle_frame(
        &mut self,
        ctx: &mut Ctx<H::Conn>,
        conn: ConnId,
        st: &mut H::Conn,
        payload: &[u8],
    ) -> Verdict {
        self.inner.handle_frame(ctx, conn, st, payload)
    }
    fn handle_bad_frame(
        &mut self,
        ctx: &mut Ctx<H::Conn>,
        conn: ConnId,
        st: &mut H::Conn,
        error: FrameError,
    ) -> Verdict {
        self.inner.handle_bad_frame(ctx, conn, st, error)
    }
    fn handle_raw(
        &mut self,
        ctx: &mut Ctx<H::Conn>,
        conn: ConnId,
        st: &mut H::Conn,
        data: &[u8],
    ) -> Verdict {
        self.inner.handle_raw(ctx, conn, st, data)
    }
    fn handle_drained(
        &mut self,
        ctx: &mut Ctx<H::Conn>,
        conn: ConnId,
        st: &mut H::Conn,
    ) -> Verdict {
        self.inner.handle_drained(ctx, conn, st)
    }
    fn handle_close(
        &mut self,
        ctx: &mut Ctx<H::Conn>,
        conn: ConnId,
        st: H::Conn,
        reason: &CloseReason,
    ) {
        self.inner.handle_close(ctx, conn, st, reason)
    }
    fn handle_wake(&mut self, ctx: &mut Ctx<H::Conn>) {
        if self.stop.load(Ordering::SeqCst) {
            ctx.stop();
        }
        self.inner.handle_wake(ctx)
    }
    fn handle_timer(&mut self, ctx: &mut Ctx<H::Conn>, timer: u64) {
        self.inner.handle_timer(ctx, timer)
    }
    fn handle_turn_end(&mut self, ctx: &mut Ctx<H::Conn>) {
        self.inner.handle_turn_end(ctx)
    }
    fn handle_http_get(&mut self, ctx: &mut Ctx<H::Conn>, path: &str) -> Option<HttpBody> {
        self.inner.handle_http_get(ctx, path)
    }
    fn handle_web_request(
        &mut self,
        ctx: &mut Ctx<H::Conn>,
        conn: ConnId,
        request: WebRequest,
    ) -> WebReply {
        self.inner.handle_web_request(ctx, conn, request)
    }
    fn handle_web_close(&mut self, ctx: &mut Ctx<H::Conn>, conn: ConnId) {
        self.inner.handle_web_close(ctx, conn)
    }
}

/// State a handler records on the reactor thread and the test thread waits on: a mutex, and
/// a condition variable notified after every change ([`Watched::record`]), so a wait wakes on
/// the change itself rather than polling, and gives up at a deadline.
struct Watched<T>(Arc<WatchedInner<T>>);

#[derive(Default)]
struct WatchedInner<T> {
    state: Mutex<T>,
    changed: Condvar,
}

impl<T> Clone for Watched<T> {
    fn clone(&self) -> Self {
        Watched(self.0.clone())
    }
}

impl<T: Default> Default for Watched<T> {
    fn default() -> Self {
        Watched(Arc::default())
    }
}

impl<T> Watched<T> {
    /// The state, to read (a handler's panic does not hide what it had recorded).
    fn get(&self) -> MutexGuard<'_, T> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The state, to change; waiters are woken once the guard is dropped.
    fn record(&self) -> Recording<'_, T> {
        Recording {
            guard: Some(self.get()),
            changed: &self.0.changed,
        }
    }

    /// Waits (without polling) until `cond` holds, at most `limit`; returns the state and
    /// whether `cond` held in time.
    fn wait_within(
        &self,
        limit: Duration,
        mut cond: impl FnMut(&T) -> bool,
    ) -> (MutexGuard<'_, T>, bool) {
        let (guard, waited) = self
            .0
            .changed
            .wait_timeout_while(self.get(), limit, |t| !cond(t))
            .unwrap_or_else(|e| e.into_inner());
        (guard, !waited.timed_out())
    }

    /// Whether `cond` holds within `limit` (waking as soon as it does).
    fn holds_within(&self, limit: Duration, cond: impl FnMut(&T) -> bool) -> bool {
        self.wait_within(limit, cond).1
    }

    /// The state once `cond` holds (`what`, for the failure); fails the test after
    /// [`IO_TIMEOUT`].
    fn once(&self, what: &str, cond: impl FnMut(&T) -> bool) -> MutexGuard<'_, T> {
        let (guard, held) = self.wait_within(IO_TIMEOUT, cond);
        assert!(held, "timed out waiting for {what}");
        guard
    }

    /// Waits until `cond` holds; fails the test after [`IO_TIMEOUT`].
    fn wait_for(&self, what: &str, cond: impl FnMut(&T) -> bool) {
        drop(self.once(what, cond));
    }
}

/// A change to a [`Watched`] state in progress: unlocks, then wakes the waiters, when dropped.
struct Recording<'a, T> {
    guard: Option<MutexGuard<'a, T>>,
    changed: &'a Condvar,
}

impl<T> std::ops::Deref for Recording<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        self.guard.as_ref().expect("held until drop")
    }
}

impl<T> std::ops::DerefMut for Recording<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        self.guard.as_mut().expect("held until drop")
    }
}

impl<T> Drop for Recording<'_, T> {
    fn drop(&mut self) {
        drop(self.guard.take());
        self.changed.notify_all();
    }
}

// ---------------------------------------------------------------------------------------------
// The echo server

/// What the echo server saw, shared with the test thread.
#[derive(Default)]
struct Log {
    /// Open connections and their remote address (the client's local address).
    open: HashMap<ConnId, SocketAddr>,
    accepts: usize,
    /// Closed connections, by the client's address, in order.
    closes: Vec<(SocketAddr, CloseReason)>,
    /// When each connection was reported closed, by the client's address.
    closed_at: HashMap<SocketAddr, Instant>,
    /// Frames handled, by the client's address.
    frames: HashMap<SocketAddr, usize>,
    /// The most output ever queued for one connection, right after queueing an echo.
    max_queued: usize,
    /// The most memory one connection's output queue held after a frame was answered.
    max_output_memory: usize,
    /// Contract violations seen by the handler (e.g. a second close for one connection).
    errors: Vec<String>,
    /// Loop turns ended.
    turns: usize,
}

impl Log {
    fn closes_of(&self, addr: SocketAddr) -> Vec<CloseReason> {
        self.closes
            .iter()
            .filter(|(a, _)| *a == addr)
            .map(|(_, r)| r.clone())
            .collect()
    }
}

/// The echo server's log, shared with the test thread.
type Shared = Watched<Log>;

impl Shared {
    /// How the server closed `addr`'s connection, once it has.
    fn wait_closed(&self, addr: SocketAddr) -> CloseReason {
        let closes = self
            .once(&format!("the server to close {addr}"), |log| {
                !log.closes_of(addr).is_empty()
            })
            .closes_of(addr);
        assert_eq!(closes.len(), 1, "{addr} closed more than once: {closes:?}");
        closes[0].clone()
    }
}

/// Echoes every frame and records what happened.
struct Echo {
    log: Shared,
    on_bad_frame: OnBadFrame,
}

/// What the echo handler does with a framing error.
#[derive(Clone, Copy)]
enum OnBadFrame {
    /// Close at once (the default handler's choice).
    Close,
    /// Answer with an error frame, then close.
    Answer,
    /// Return `Continue`: the reactor must close anyway.
    Ignore,
}

/// The echo server's per-connection state is the remote address it was accepted from; the
/// handler checks that the reactor hands each connection its own state back.
impl Handler for Echo {
    type Conn = SocketAddr;

    fn handle_accept(
        &mut self,
        _ctx: &mut Ctx<SocketAddr>,
        conn: ConnId,
        remote: SocketAddr,
    ) -> SocketAddr {
        let mut log = self.log.record();
        log.accepts += 1;
        if let Some(old) = log.open.insert(conn, remote) {
            log.errors.push(format!(
                "{conn:?} accepted for {remote} while open for {old}"
            ));
        }
        remote
    }

    fn handle_frame(
        &mut self,
        ctx: &mut Ctx<SocketAddr>,
        conn: ConnId,
        remote: &mut SocketAddr,
        payload: &[u8],
    ) -> Verdict {
        ctx.send(conn, |buf| codec::encode(payload, buf));
        let queued = ctx.queued_bytes(conn);
        let mut log = self.log.record();
        log.max_queued = log.max_queued.max(queued);
        log.max_output_memory = log.max_output_memory.max(ctx.output_memory(conn));
        match log.open.get(&conn).copied() {
            Some(open) if open == *remote => *log.frames.entry(open).or_default() += 1,
            other => log.errors.push(format!(
                "frame on {conn:?} with state {remote}, open as {other:?}"
            )),
        }
        Verdict::Continue
    }

    fn handle_bad_frame(
        &mut self,
        ctx: &mut Ctx<SocketAddr>,
        conn: ConnId,
        _: &mut SocketAddr,
        error: FrameError,
    ) -> Verdict {
        match self.on_bad_frame {
            OnBadFrame::Close => Verdict::Close(CloseReason::Frame(error)),
            OnBadFrame::Answer => {
                let answer = format!("error: {error}");
                ctx.send(conn, |buf| codec::encode(answer.as_bytes(), buf));
                Verdict::CloseAfterFlush(CloseReason::Frame(error))
            }
            OnBadFrame::Ignore => Verdict::Continue,
        }
    }

    fn handle_turn_end(&mut self, _ctx: &mut Ctx<SocketAddr>) {
        self.log.get().turns += 1;
    }

    fn handle_http_get(&mut self, ctx: &mut Ctx<SocketAddr>, path: &str) -> Option<HttpBody> {
        (path == "/count").then(|| HttpBody {
            content_type: "text/plain",
            body: format!("{} connections\n", ctx.connection_count()).into_bytes(),
        })
    }

    fn handle_close(
        &mut self,
        _ctx: &mut Ctx<SocketAddr>,
        conn: ConnId,
        state: SocketAddr,
        reason: &CloseReason,
    ) {
        let mut log = self.log.record();
        match log.open.remove(&conn) {
            Some(remote) => {
                if remote != state {
                    log.errors
                        .push(format!("{conn:?} of {remote} closed with state {state}"));
                }
                log.closes.push((remote, reason.clone()));
                log.closed_at.insert(remote, Instant::now());
            }
            None => log
                .errors
                .push(format!("close of unknown or closed {conn:?}: {reason:?}")),
        }
    }
}

/// Starts an echo server; returns it, its address and its log.
fn echo_server(config: Config) -> (Running, SocketAddr, Shared) {
    echo_server_with(config, OnBadFrame::Close)
}

fn echo_server_with(config: Config, on_bad_frame: OnBadFrame) -> (Running, SocketAddr, Shared) {
    let log = Shared::default();
    let handler_log = log.clone();
    let (running, addr) = Running::spawn(config, move |ctx| {
        let addr = ctx.listen(localhost()).expect("listen");
        let echo = Echo {
            log: handler_log,
            on_bad_frame,
        };
        (echo, addr)
    });
    (running, addr, log)
}

/// Stops the server and checks the handler saw no contract violation.
fn finish(server: Running, log: &Shared) {
    server.stop();
    let errors = log.get().errors.clone();
    assert!(errors.is_empty(), "handler contract violations: {errors:?}");
}

// ---------------------------------------------------------------------------------------------
// A blocking client

fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode(payload, &mut out);
    out
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    stream.set_nodelay(true).unwrap();
    stream
}

/// Reads frames from a blocking stream.
struct FrameReader {
    stream: TcpStream,
    decoder: Decoder,
    buf: Vec<u8>,
    at: usize,
}

impl FrameReader {
    fn new(stream: TcpStream) -> FrameReader {
        FrameReader {
            stream,
            decoder: Decoder::new(codec::DEFAULT_MAX_FRAME_BYTES),
            buf: Vec::new(),
            at: 0,
        }
    }

    /// The next frame; `None` at a clean EOF (between frames).
    fn recv(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            let decoded = self
                .decoder
                .decode(&self.buf[self.at..])
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            if let Some(d) = decoded {
                let payload = self.buf[self.at + d.payload.start..self.at + d.payload.end].to_vec();
                self.at += d.consumed;
                return Ok(Some(payload));
            }
            if self.at > 0 {
                self.buf.drain(..self.at);
                self.at = 0;
            }
            let mut chunk = [0u8; 64 * 1024];
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    fn expect_frame(&mut self) -> Vec<u8> {
        self.recv()
            .expect("reading a frame")
            .expect("a frame, not EOF")
    }

    /// Reads until the server closes: clean EOF, or a reset if our unread bytes raced the
    /// close. Anything else (a timeout, a stray frame) fails the test.
    fn expect_closed(&mut self) {
        match self.recv() {
            Ok(None) => {}
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
            other => panic!("expected the server to close, got {other:?}"),
        }
    }
}

/// A request/response client.
struct Client {
    reader: FrameReader,
}

impl Client {
    fn connect(addr: SocketAddr) -> Client {
        Client::from_stream(connect(addr))
    }

    fn from_stream(stream: TcpStream) -> Client {
        Client {
            reader: FrameReader::new(stream),
        }
    }

    fn local_addr(&self) -> SocketAddr {
        self.reader.stream.local_addr().unwrap()
    }

    fn stream(&mut self) -> &mut TcpStream {
        &mut self.reader.stream
    }

    fn send(&mut self, payload: &[u8]) {
        self.stream().write_all(&frame(payload)).expect("send");
    }

    fn round_trip(&mut self, payload: &[u8]) {
        self.send(payload);
        assert_eq!(self.reader.expect_frame(), payload, "echo differs");
    }
}

// ---------------------------------------------------------------------------------------------
// 1. Many clients, random payloads, random split points

/// A payload for the fragmentation sweep: empty, terminator-heavy, big, or small, with `\r\r\n`
/// sprinkled inside.
fn random_payload(rng: &mut Rng) -> Vec<u8> {
    let mut p = match rng.range(0, 19) {
        0 => Vec::new(),
        1 => codec::TERMINATOR.repeat(rng.range(1, 50)),
        2 | 3 => {
            let len = rng.range(1, 100_000);
            rng.bytes(len)
        }
        _ => {
            let len = rng.range(1, 1500);
            rng.bytes(len)
        }
    };
    if !p.is_empty() {
        for _ in 0..rng.range(0, 4) {
            let at = rng.range(0, p.len() - 1);
            let end = (at + 3).min(p.len());
            p[at..end].copy_from_slice(&codec::TERMINATOR[..end - at]);
        }
    }
    p
}

/// Writes `wire` in randomly sized pieces: many tiny ones, some large.
fn write_fragmented(stream: &mut TcpStream, wire: &[u8], rng: &mut Rng) {
    let mut at = 0;
    while at < wire.len() {
        let n = match rng.range(0, 9) {
            0..=3 => rng.range(1, 16),
            4..=7 => rng.range(1, 4096),
            _ => rng.range(1, 64 * 1024),
        };
        let end = (at + n).min(wire.len());
        stream.write_all(&wire[at..end]).expect("client write");
        at = end;
    }
}

#[test]
fn many_clients_fragmented_frames_echo_in_order() {
    const CLIENTS: u64 = 64;
    const FRAMES: usize = 200;
    let seed = seed("many_clients");
    let (server, addr, log) = echo_server(Config::default());
    thread::scope(|s| {
        for i in 0..CLIENTS {
            s.spawn(move || {
                let mut rng = Rng::new(seed ^ (i + 1));
                let mut payloads: Vec<Vec<u8>> =
                    (0..FRAMES).map(|_| random_payload(&mut rng)).collect();
                payloads[0] = rng.bytes(100_000);
                payloads[1] = Vec::new();
                let mut wire = Vec::new();
                for p in &payloads {
                    codec::encode(p, &mut wire);
                }
                let stream = connect(addr);
                let mut writer = stream.try_clone().unwrap();
                // Write and read at once: the server parks a client whose echoes pile up.
                let write_seed = rng.next_u64();
                let w = thread::spawn(move || {
                    write_fragmented(&mut writer, &wire, &mut Rng::new(write_seed));
                });
                let mut reader = FrameReader::new(stream);
                for (n, want) in payloads.iter().enumerate() {
                    let got = reader.expect_frame();
                    assert!(
                        got == *want,
                        "client {i} frame {n}: got {} bytes, want {}",
                        got.len(),
                        want.len()
                    );
                }
                w.join().expect("writer");
            });
        }
    });
    {
        let log = log.once("every client's close", |log| {
            log.closes.len() == CLIENTS as usize
        });
        assert_eq!(log.accepts, CLIENTS as usize);
        assert!(log.closes.iter().all(|(_, r)| *r == CloseReason::Eof));
        assert!(log.frames.values().all(|&n| n == FRAMES));
    }
    finish(server, &log);
}

// ---------------------------------------------------------------------------------------------
// 2. Back-pressure

#[test]
fn a_client_that_does_not_read_is_parked_and_bounded() {
    const HIGH: usize = 256 * 1024;
    const PAYLOAD: usize = 100_000;
    const FRAMES: u32 = 400; // 40 MB: far more than the kernel buffers can absorb.
    let frame_bytes = codec::header_len(PAYLOAD) + PAYLOAD + codec::TERMINATOR.len();
    let config = Config {
        out_high_water: HIGH,
        out_low_water: 64 * 1024,
        ..Config::default()
    };
    let seed = seed("back_pressure");
    let payload_of = move |n: u32| {
        let mut p = Rng::new(seed ^ u64::from(n)).bytes(PAYLOAD);
        p[..4].copy_from_slice(&n.to_le_bytes());
        p
    };
    let (server, addr, log) = echo_server(config);

    let mut lazy = Client::connect(addr);
    let lazy_addr = lazy.local_addr();
    let mut writer = lazy.stream().try_clone().unwrap();
    let written = Arc::new(AtomicBool::new(false));
    let written_flag = written.clone();
    let w = thread::spawn(move || {
        for n in 0..FRAMES {
            writer
                .write_all(&frame(&payload_of(n)))
                .expect("lazy write");
        }
        written_flag.store(true, Ordering::SeqCst);
    });

    log.wait_for("the lazy client's output to pass high water", |log| {
        log.max_queued > HIGH
    });
    // Meanwhile another client is served.
    let mut busy = Client::connect(addr);
    for n in 0..50u32 {
        busy.round_trip(&n.to_le_bytes().repeat(n as usize));
    }
    let handled = log.get().frames.get(&lazy_addr).copied().unwrap_or(0);
    assert!(
        (handled as u32) < FRAMES && !written.load(Ordering::SeqCst),
        "the server kept reading a parked client ({handled} frames handled)"
    );

    // Now read: everything arrives, in order, and the writer finishes.
    for n in 0..FRAMES {
        let got = lazy.reader.expect_frame();
        assert!(got == payload_of(n), "lazy frame {n} differs");
    }
    w.join().expect("lazy writer");
    let max = log.get().max_queued;
    assert!(
        max <= HIGH + frame_bytes,
        "queued output reached {max} bytes, over high water {HIGH} + one frame {frame_bytes}"
    );
    // The memory behind it too: written bytes are freed a chunk at a time, not kept while
    // more frames queue behind them (the kernel took megabytes the client did not read).
    let held = log.get().max_output_memory;
    assert!(
        held <= HIGH + frame_bytes + 2 * p2pshare::reactor::outq::CHUNK_BYTES,
        "the output queue held {held} bytes, over high water {HIGH} + one frame \
         {frame_bytes} + the open chunk's room and the spare"
    );
    busy.round_trip(b"still there");
    finish(server, &log);
}

// ---------------------------------------------------------------------------------------------
// 3. Disconnect mid-frame

#[test]
fn a_client_vanishing_mid_frame_is_closed_once_with_eof() {
    let (server, addr, log) = echo_server(Config::default());
    let mut other = Client::connect(addr);
    other.round_trip(b"before");

    let mut quitter = Client::connect(addr);
    let quitter_addr = quitter.local_addr();
    quitter.round_trip(b"hello");
    let f = frame(&[7u8; 5000]);
    quitter.stream().write_all(&f[..2500]).unwrap();
    drop(quitter);

    assert_eq!(log.wait_closed(quitter_addr), CloseReason::Eof);
    other.round_trip(b"after");
    assert_eq!(log.get().closes.len(), 1, "only the quitter closed");
    finish(server, &log);
}

// ---------------------------------------------------------------------------------------------
// 4. Idle timeout, slowloris

#[test]
fn idle_and_slowloris_clients_time_out_active_ones_do_not() {
    const IDLE: Duration = Duration::from_millis(300);
    let config = Config {
        idle_timeout: Some(IDLE),
        ..Config::default()
    };
    let (server, addr, log) = echo_server(config);

    let mut idle = Client::connect(addr);
    let idle_addr = idle.local_addr();
    idle.round_trip(b"then nothing");
    // The server's last activity on `idle` was before this (it had handled the frame).
    let idle_since = Instant::now();
    let mut slow = Client::connect(addr);
    let slow_addr = slow.local_addr();
    slow.round_trip(b"then a byte at a time");
    let slow_since = Instant::now();
    let mut active = Client::connect(addr);
    let active_addr = active.local_addr();
    let started = Instant::now();

    // A frame that would take 20 s at one byte per 100 ms; the server must not wait for it.
    let slow_frame = frame(&[b's'; 200]);
    let mut sent = 0;
    let deadline = started + Duration::from_secs(5);
    loop {
        assert!(
            Instant::now() < deadline,
            "slowloris client never timed out"
        );
        if slow
            .stream()
            .write_all(&slow_frame[sent..sent + 1])
            .is_err()
        {
            break;
        }
        sent += 1;
        active.round_trip(b"busy");
        // The next byte in 100 ms (the pace of the attack), unless the server records the
        // close first: that wakes this wait at once.
        if log.holds_within(Duration::from_millis(100), |log| {
            !log.closes_of(slow_addr).is_empty()
        }) {
            break;
        }
    }
    assert!(sent >= 3, "slowloris closed after only {sent} bytes");
    assert_eq!(log.wait_closed(slow_addr), CloseReason::IdleTimeout);
    slow.reader.expect_closed();

    idle.reader.expect_closed();
    assert_eq!(log.wait_closed(idle_addr), CloseReason::IdleTimeout);

    // Closed neither early nor much later than the timeout (the sweep runs every 250 ms).
    let closed_at = log.get().closed_at.clone();
    for (what, addr, since) in [
        ("idle", idle_addr, idle_since),
        ("slowloris", slow_addr, slow_since),
    ] {
        let after = closed_at[&addr].saturating_duration_since(since);
        assert!(
            after + Duration::from_millis(20) >= IDLE && after <= IDLE + Duration::from_secs(1),
            "{what} client closed {after:?} after its last complete frame"
        );
    }

    // The client that kept completing frames is still served.
    active.round_trip(b"still here");
    assert!(log.get().closes_of(active_addr).is_empty());
    finish(server, &log);
}

// ---------------------------------------------------------------------------------------------
// 5. Oversized frame

#[test]
fn an_oversized_frame_header_closes_only_that_connection() {
    const MAX: usize = 1000;
    let config = Config {
        max_frame_bytes: MAX,
        ..Config::default()
    };
    let (server, addr, log) = echo_server(config);
    let mut good = Client::connect(addr);
    good.round_trip(&[1u8; MAX]);

    let mut bad = Client::connect(addr);
    let bad_addr = bad.local_addr();
    bad.round_trip(b"fine so far");
    // Only the header and a little of the payload: rejected from the header alone.
    let f = frame(&[2u8; 5000]);
    bad.stream().write_all(&f[..100]).unwrap();
    bad.reader.expect_closed();
    assert_eq!(
        log.wait_closed(bad_addr),
        CloseReason::Frame(FrameError::TooLarge {
            len: 5000,
            max: MAX
        })
    );

    good.round_trip(&[3u8; MAX]);
    assert_eq!(log.get().closes.len(), 1);
    finish(server, &log);
}

#[test]
fn a_framing_error_can_be_answered_before_the_close() {
    let (server, addr, log) = echo_server_with(Config::default(), OnBadFrame::Answer);
    let mut other = Client::connect(addr);
    other.round_trip(b"before");

    let mut bad = Client::connect(addr);
    let bad_addr = bad.local_addr();
    bad.round_trip(b"fine so far");
    // A whole garbage frame and more behind it: the answer must still arrive, not a reset.
    let mut garbage = frame(&[4u8; 3000]);
    let last = garbage.len() - 1;
    garbage[last] = b'X';
    garbage.extend_from_slice(&[5u8; 100_000]);
    bad.stream().write_all(&garbage).unwrap();
    assert_eq!(
        bad.reader.expect_frame(),
        format!("error: {}", FrameError::BadTerminator).as_bytes()
    );
    bad.reader.expect_closed();
    drop(bad);
    assert_eq!(
        log.wait_closed(bad_addr),
        CloseReason::Frame(FrameError::BadTerminator)
    );
    other.round_trip(b"after");
    finish(server, &log);
}

#[test]
fn a_framing_error_closes_even_if_the_handler_says_continue() {
    let (server, addr, log) = echo_server_with(Config::default(), OnBadFrame::Ignore);
    let mut bad = Client::connect(addr);
    let bad_addr = bad.local_addr();
    bad.round_trip(b"fine so far");
    bad.stream().write_all(&[0x80; 5]).unwrap(); // a length header that never ends
    bad.reader.expect_closed();
    drop(bad);
    assert_eq!(
        log.wait_closed(bad_addr),
        CloseReason::Frame(FrameError::BadHeader)
    );
    finish(server, &log);
}

// ---------------------------------------------------------------------------------------------
// 6. Connection limit

#[test]
fn max_connections_refuses_with_busy_reply_then_recovers() {
    let busy = frame(b"busy");
    let config = Config {
        max_connections: 4,
        busy_reply: busy.clone(),
        ..Config::default()
    };
    let (server, addr, log) = echo_server(config);
    let mut clients: Vec<Client> = (0..4).map(|_| Client::connect(addr)).collect();
    for (i, c) in clients.iter_mut().enumerate() {
        c.round_trip(format!("client {i}").as_bytes());
    }

    let mut refused = connect(addr);
    let mut got = Vec::new();
    refused.read_to_end(&mut got).expect("busy reply then EOF");
    assert_eq!(got, busy);
    // One that sends a request before reading still gets the reply rather than a reset.
    let mut eager = connect(addr);
    eager.write_all(&frame(b"hello?")).unwrap();
    let mut got = Vec::new();
    eager.read_to_end(&mut got).expect("busy reply then EOF");
    assert_eq!(got, busy);

    for (i, c) in clients.iter_mut().enumerate() {
        c.round_trip(format!("client {i} again").as_bytes());
    }
    assert_eq!(
        log.get().accepts,
        4,
        "the refused client reached the handler"
    );

    let gone = clients.remove(0);
    let gone_addr = gone.local_addr();
    drop(gone);
    assert_eq!(log.wait_closed(gone_addr), CloseReason::Eof);
    let mut newcomer = Client::connect(addr);
    newcomer.round_trip(b"room for me now");
    for c in &mut clients {
        c.round_trip(b"and the rest");
    }
    assert_eq!(log.get().accepts, 5);
    finish(server, &log);
}

/// Connects to `addr` from the loopback address `from` (bound before connecting, which std
/// cannot do), so one test can be several hosts.
fn connect_from(from: [u8; 4], addr: SocketAddr) -> TcpStream {
    use std::os::fd::FromRawFd;
    let SocketAddr::V4(to) = addr else {
        panic!("IPv4 only")
    };
    let sockaddr = |ip: [u8; 4], port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a fresh socket is owned by the returned stream on success and closed on failure;
    // the address structs live across the calls that read them.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0, "socket: {}", io::Error::last_os_error());
        let stream = TcpStream::from_raw_fd(fd);
        let local = sockaddr(from, 0);
        let rc = libc::bind(fd, (&local as *const libc::sockaddr_in).cast(), len);
        assert_eq!(rc, 0, "bind {from:?}: {}", io::Error::last_os_error());
        let remote = sockaddr(to.ip().octets(), to.port());
        let rc = libc::connect(fd, (&remote as *const libc::sockaddr_in).cast(), len);
        assert_eq!(rc, 0, "connect: {}", io::Error::last_os_error());
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
    }
}

#[test]
fn one_source_cannot_take_every_slot() {
    let busy = frame(b"busy");
    let too_many = frame(b"too many from you");
    let config = Config {
        max_connections: 8,
        busy_reply: busy.clone(),
        max_connections_per_source: 3,
        source_busy_reply: too_many.clone(),
        ..Config::default()
    };
    let (server, addr, log) = echo_server(config);
    // `n` echoing clients from 127.0.0.`host`.
    let clients_from = |host: u8, n: usize| -> Vec<Client> {
        (0..n)
            .map(|_| {
                let mut c = Client::from_stream(connect_from([127, 0, 0, host], addr));
                c.round_trip(format!("from .{host}").as_bytes());
                c
            })
            .collect()
    };
    let mut first = clients_from(1, 3);
    let mut refused = connect_from([127, 0, 0, 1], addr);
    let mut got = Vec::new();
    refused
        .read_to_end(&mut got)
        .expect("per-source reply then EOF");
    assert_eq!(got, too_many);
    // Another host still gets in, up to its own three.
    let second = clients_from(2, 3);
    // The global limit still holds: 6 open, room for 2 more from a third host, then busy.
    let third = clients_from(3, 2);
    let mut full = connect_from([127, 0, 0, 4], addr);
    let mut got = Vec::new();
    full.read_to_end(&mut got).expect("busy reply then EOF");
    assert_eq!(got, busy);
    assert_eq!(log.get().accepts, 8);
    // A closed connection gives its source's slot back.
    let gone = first.remove(0);
    let gone_addr = gone.local_addr();
    drop(gone);
    assert_eq!(log.wait_closed(gone_addr), CloseReason::Eof);
    let mut back = Client::from_stream(connect_from([127, 0, 0, 1], addr));
    back.round_trip(b"from .1 again");
    assert_eq!(log.get().accepts, 9);
    drop((first, second, third, back));
    finish(server, &log);
}

// ---------------------------------------------------------------------------------------------
// 7. Outgoing connect, sendfile, raw streaming, keep-alive

/// A temporary file removed on drop.
struct TempFile(PathBuf);

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Serves `GET offset len` frames with a header frame (len, u64 LE), the file range through
/// `send_file`, then an `END` frame. Also the client side: downloads each range in `wanted`
/// over one outgoing connection, one after another, collecting raw bytes.
struct Transfer {
    path: PathBuf,
    /// The downloader's connection and the closed-port probe.
    downloader: Option<ConnId>,
    probe: Option<ConnId>,
    wanted: Vec<(u64, u64)>,
    next: usize,
    state: Download,
    out: Watched<TransferLog>,
}

enum Download {
    AwaitingHeader,
    Streaming { left: u64, got: Vec<u8> },
    AwaitingEnd { got: Vec<u8> },
}

#[derive(Default)]
struct TransferLog {
    connected: bool,
    /// Bytes received for each range, in request order.
    received: Vec<Vec<u8>>,
    /// How the closed-port probe ended.
    probe_closed: Option<CloseReason>,
    errors: Vec<String>,
}

impl Transfer {
    fn request_next(&mut self, ctx: &mut Ctx<()>) {
        let (Some(conn), Some(&(offset, len))) = (self.downloader, self.wanted.get(self.next))
        else {
            return;
        };
        self.next += 1;
        self.state = Download::AwaitingHeader;
        ctx.send(conn, |buf| {
            codec::encode(format!("GET {offset} {len}").as_bytes(), buf)
        });
    }

    fn error(&self, msg: String) -> Verdict {
        self.out.record().errors.push(msg.clone());
        Verdict::Close(CloseReason::Protocol(msg))
    }

    fn serve(&mut self, ctx: &mut Ctx<()>, conn: ConnId, payload: &[u8]) -> Verdict {
        let text = String::from_utf8_lossy(payload);
        let mut words = text.split(' ');
        let (Some("GET"), Some(offset), Some(len)) = (words.next(), words.next(), words.next())
        else {
            return self.error(format!("bad request {text:?}"));
        };
        let (offset, len): (u64, u64) = (offset.parse().unwrap(), len.parse().unwrap());
        ctx.send(conn, |buf| codec::encode(&len.to_le_bytes(), buf));
        ctx.send_file(conn, File::open(&self.path).unwrap(), offset, len);
        ctx.send(conn, |buf| codec::encode(b"END", buf));
        Verdict::Continue
    }
}

impl Handler for Transfer {
    type Conn = ();

    fn handle_accept(&mut self, _: &mut Ctx<()>, _: ConnId, _: SocketAddr) {}

    fn handle_connected(&mut self, _ctx: &mut Ctx<()>, conn: ConnId, _: &mut ()) -> Verdict {
        if Some(conn) == self.downloader {
            self.out.record().connected = true;
            Verdict::Continue
        } else {
            self.error(format!("unexpected connect of {conn:?}"))
        }
    }

    fn handle_frame(
        &mut self,
        ctx: &mut Ctx<()>,
        conn: ConnId,
        _: &mut (),
        payload: &[u8],
    ) -> Verdict {
        if Some(conn) != self.downloader {
            return self.serve(ctx, conn, payload);
        }
        match std::mem::replace(&mut self.state, Download::AwaitingHeader) {
            Download::AwaitingHeader => {
                let Ok(len) = <[u8; 8]>::try_from(payload).map(u64::from_le_bytes) else {
                    return self.error(format!("bad header {payload:?}"));
                };
                ctx.expect_raw(conn, len);
                self.state = if len == 0 {
                    Download::AwaitingEnd { got: Vec::new() }
                } else {
                    Download::Streaming {
                        left: len,
                        got: Vec::with_capacity(len as usize),
                    }
                };
                Verdict::Continue
            }
            Download::AwaitingEnd { got } if payload == b"END" => {
                self.out.record().received.push(got);
                self.request_next(ctx);
                Verdict::Continue
            }
            Download::AwaitingEnd { .. } => self.error(format!("expected END, got {payload:?}")),
            Download::Streaming { left, .. } => {
                self.error(format!("a frame while {left} raw bytes were due"))
            }
        }
    }

    fn handle_raw(&mut self, _ctx: &mut Ctx<()>, conn: ConnId, _: &mut (), data: &[u8]) -> Verdict {
        if Some(conn) != self.downloader {
            return self.error(format!("raw bytes on {conn:?}"));
        }
        match &mut self.state {
            Download::Streaming { left, got } if data.len() as u64 <= *left => {
                *left -= data.len() as u64;
                got.extend_from_slice(data);
                if *left == 0 {
                    let got = std::mem::take(got);
                    self.state = Download::AwaitingEnd { got };
                }
                Verdict::Continue
            }
            _ => self.error(format!("{} unexpected raw bytes", data.len())),
        }
    }

    fn handle_close(&mut self, _ctx: &mut Ctx<()>, conn: ConnId, _: (), reason: &CloseReason) {
        let mut out = self.out.record();
        if Some(conn) == self.probe {
            self.probe = None;
            out.probe_closed = Some(reason.clone());
        } else if Some(conn) == self.downloader {
            self.downloader = None;
            out.errors.push(format!("downloader closed: {reason}"));
        }
    }
}

#[test]
fn connect_sendfile_raw_stream_and_keep_alive() {
    const FILE_BYTES: usize = 8 * 1024 * 1024 + 7;
    let seed = seed("sendfile");
    let content = Rng::new(seed).bytes(FILE_BYTES);
    let file = TempFile(std::env::temp_dir().join(format!(
        "p2pshare-reactor-test-{}-{seed}",
        std::process::id()
    )));
    std::fs::write(&file.0, &content).unwrap();
    let wanted: Vec<(u64, u64)> = vec![
        (0, FILE_BYTES as u64),
        (0, 0),
        (5, 1),
        (4095, 4097),
        (FILE_BYTES as u64 - 4097, 4097),
        (12345, 3 * 1024 * 1024 + 1),
    ];
    // A port nothing listens on: bind, note the port, close.
    let closed_port = {
        let l = std::net::TcpListener::bind(localhost()).unwrap();
        l.local_addr().unwrap()
    };

    let out = Watched::<TransferLog>::default();
    let handler_out = out.clone();
    let path = file.0.clone();
    let ranges = wanted.clone();
    let (reactor, ()) = Running::spawn(Config::default(), move |ctx| {
        let addr = ctx.listen(localhost()).expect("listen");
        let downloader = ctx.connect(addr, ()).expect("connect");
        let probe = match ctx.connect(closed_port, ()) {
            Ok(conn) => Some(conn),
            Err(e) => {
                handler_out.record().errors.push(format!(
                    "connect to a closed port failed synchronously ({e}) instead of through \
                     handle_close"
                ));
                None
            }
        };
        let mut handler = Transfer {
            path,
            downloader: Some(downloader),
            probe,
            wanted: ranges,
            next: 0,
            state: Download::AwaitingHeader,
            out: handler_out,
        };
        // Queued before the connection is up: sent once it is.
        handler.request_next(ctx);
        (handler, ())
    });

    out.wait_for("every range, or an error", |out| {
        out.received.len() == wanted.len() || !out.errors.is_empty()
    });
    out.wait_for("the closed-port probe to fail", |out| {
        out.probe_closed.is_some()
    });
    reactor.stop();
    let out = out.get();
    assert!(out.errors.is_empty(), "{:?}", out.errors);
    assert!(out.connected);
    for (&(offset, len), got) in wanted.iter().zip(&out.received) {
        let want = &content[offset as usize..(offset + len) as usize];
        assert!(
            got == want,
            "range {offset}+{len}: got {} bytes, contents differ",
            got.len()
        );
    }
    assert_eq!(
        out.probe_closed,
        Some(CloseReason::ConnectFailed(io::ErrorKind::ConnectionRefused))
    );
}

/// Connects, queues one frame and asks for a close after flushing it, all before the connection
/// is up; records how the connection ended.
struct FireAndForget {
    closed: Watched<Option<CloseReason>>,
}

impl Handler for FireAndForget {
    type Conn = ();

    fn handle_accept(&mut self, _: &mut Ctx<()>, _: ConnId, _: SocketAddr) {}

    fn handle_frame(
        &mut self,
        _ctx: &mut Ctx<()>,
        _conn: ConnId,
        _: &mut (),
        _payload: &[u8],
    ) -> Verdict {
        Verdict::Continue
    }

    fn handle_close(&mut self, _ctx: &mut Ctx<()>, _conn: ConnId, _: (), reason: &CloseReason) {
        *self.closed.record() = Some(reason.clone());
    }
}

#[test]
fn a_frame_queued_while_connecting_is_flushed_before_close() {
    let (server, addr, log) = echo_server(Config::default());
    let closed = Watched::<Option<CloseReason>>::default();
    let handler_closed = closed.clone();
    let (client, ()) = Running::spawn(Config::default(), move |ctx| {
        let conn = ctx.connect(addr, ()).expect("connect");
        ctx.send(conn, |buf| codec::encode(b"fire and forget", buf));
        ctx.close_after_flush(conn, CloseReason::Local);
        let handler = FireAndForget {
            closed: handler_closed,
        };
        (handler, ())
    });
    closed.wait_for("the one-shot connection to close", |c| c.is_some());
    log.wait_for("the server to see the connection end", |log| {
        log.closes.len() == 1
    });
    client.stop();
    assert_eq!(*closed.get(), Some(CloseReason::Local));
    assert_eq!(
        log.get().frames.values().sum::<usize>(),
        1,
        "the frame queued before the connect completed was lost"
    );
    finish(server, &log);
}

// ---------------------------------------------------------------------------------------------
// 8. Half-close

#[test]
fn a_pipelined_burst_is_handled_in_shares_of_turns_whole_and_in_order() {
    const FRAMES: u32 = 2000;
    const SHARE: usize = 4;
    let config = Config {
        frames_per_turn: SHARE,
        ..Config::default()
    };
    let (server, addr, log) = echo_server(config);
    let client = Client::connect(addr);
    let client_addr = client.local_addr();
    let mut burst = Vec::new();
    for n in 0..FRAMES {
        burst.extend_from_slice(&frame(&n.to_le_bytes()));
    }
    let mut writer = client.reader.stream.try_clone().unwrap();
    // One write, then the EOF right behind it: what waits for the next share is still
    // handled before the close.
    writer.write_all(&burst).expect("write");
    writer.shutdown(Shutdown::Write).expect("half-close");
    let mut reader = client.reader;
    for n in 0..FRAMES {
        assert!(reader.expect_frame() == n.to_le_bytes(), "echo {n} differs");
    }
    reader.expect_closed();
    assert_eq!(log.wait_closed(client_addr), CloseReason::Eof);
    assert_eq!(log.get().frames.get(&client_addr), Some(&(FRAMES as usize)));
    // A connection gets at most two shares a turn (its event's and its place in the ready
    // list), so the burst took many turns.
    let turns = log.get().turns;
    assert!(
        turns >= FRAMES as usize / SHARE / 2,
        "{FRAMES} frames in {turns} turns with shares of {SHARE}"
    );
    finish(server, &log);
}

/// Echoes frames and records, per turn, the connections whose frames it handled; a `block`
/// frame holds the loop until the test says its clients have all written (so that their
/// input is waiting at once when the loop goes on).
struct TurnLog {
    release: Mutex<mpsc::Receiver<()>>,
    /// Per turn (by number), the connections that had frames handled, in order.
    turns: Watched<Vec<Vec<ConnId>>>,
    /// Frames handled in all.
    frames: Watched<usize>,
}

impl Handler for TurnLog {
    type Conn = ();

    fn handle_accept(&mut self, _: &mut Ctx<()>, _: ConnId, _: SocketAddr) {}

    fn handle_frame(
        &mut self,
        ctx: &mut Ctx<()>,
        conn: ConnId,
        _: &mut (),
        payload: &[u8],
    ) -> Verdict {
        if payload == b"block" {
            self.release
                .lock()
                .unwrap()
                .recv_timeout(IO_TIMEOUT)
                .expect("the test's release");
        } else {
            let mut turns = self.turns.record();
            if turns.is_empty() {
                turns.push(Vec::new());
            }
            let now = turns.last_mut().unwrap();
            if !now.contains(&conn) {
                now.push(conn);
            }
            *self.frames.record() += 1;
        }
        ctx.send(conn, |buf| codec::encode(payload, buf));
        Verdict::Continue
    }

    fn handle_turn_end(&mut self, _ctx: &mut Ctx<()>) {
        let mut turns = self.turns.get();
        if turns.last().is_some_and(|t| !t.is_empty()) {
            turns.push(Vec::new());
        }
    }

    fn handle_close(&mut self, _: &mut Ctx<()>, _: ConnId, _: (), _: &CloseReason) {}
}

#[test]
fn many_pipelining_connections_share_one_turn_budget_and_all_progress() {
    const CLIENTS: usize = 10;
    const FRAMES: usize = 50;
    // A turn's budget spent at once: each turn then reads one frame of its first connection
    // and at most one of the ready list's first.
    let config = Config {
        turn_work: Duration::ZERO,
        work_per_turn: IO_TIMEOUT,
        frames_per_turn: 10,
        ..Config::default()
    };
    let (release, released) = mpsc::channel();
    let turns = Watched::<Vec<Vec<ConnId>>>::default();
    let frames = Watched::<usize>::default();
    let handler = TurnLog {
        release: Mutex::new(released),
        turns: turns.clone(),
        frames: frames.clone(),
    };
    let (server, addr) = Running::spawn(config, move |ctx| {
        (handler, ctx.listen(localhost()).expect("listen"))
    });
    let mut blocker = Client::connect(addr);
    blocker.stream().write_all(&frame(b"block")).unwrap();
    let mut clients: Vec<Client> = (0..CLIENTS).map(|_| Client::connect(addr)).collect();
    for (c, client) in clients.iter_mut().enumerate() {
        let mut burst = Vec::new();
        for n in 0..FRAMES {
            burst.extend_from_slice(&frame(format!("{c} {n}").as_bytes()));
        }
        client.stream().write_all(&burst).unwrap();
    }
    // Every burst is in the server's socket buffers before the loop goes on: all ten are
    // readable at its next poll.
    release.send(()).unwrap();
    assert_eq!(blocker.reader.expect_frame(), b"block");
    for (c, client) in clients.iter_mut().enumerate() {
        for n in 0..FRAMES {
            assert_eq!(client.reader.expect_frame(), format!("{c} {n}").as_bytes());
        }
    }
    frames.wait_for("every frame handled", |f| *f == CLIENTS * FRAMES);
    let turns = turns.get();
    let busiest = turns.iter().map(Vec::len).max().unwrap_or(0);
    assert!(
        busiest <= 2,
        "a turn handled frames of {busiest} connections: {turns:?}"
    );
    drop(turns);
    server.stop();
}

/// What [`BigWriter`] saw: bytes written per turn, and the output left of its connections.
#[derive(Default)]
struct WriteLog {
    /// Bytes the reactor wrote in each turn (its `IoTotals`).
    per_turn: Vec<u64>,
    bytes_out: u64,
    /// Connections that asked for a big answer, with the least output they had left at a
    /// turn's end.
    big: Vec<(ConnId, u64)>,
    /// The small echo: its connection, the turn its frame was handled in, and the turn at
    /// whose end nothing of it was left.
    small: Option<(ConnId, usize, Option<usize>)>,
}

/// Answers `big` with [`BIG_ANSWER_FRAMES`] frames of 64 KiB, anything else with its echo.
struct BigWriter {
    log: Watched<WriteLog>,
}

const BIG_ANSWER_FRAMES: usize = 128;

impl Handler for BigWriter {
    type Conn = ();

    fn handle_accept(&mut self, _: &mut Ctx<()>, _: ConnId, _: SocketAddr) {}

    fn handle_frame(
        &mut self,
        ctx: &mut Ctx<()>,
        conn: ConnId,
        _: &mut (),
        payload: &[u8],
    ) -> Verdict {
        if payload == b"big" {
            let chunk = vec![b'x'; 64 * 1024];
            for _ in 0..BIG_ANSWER_FRAMES {
                ctx.send(conn, |buf| codec::encode(&chunk, buf));
            }
            let left = ctx.unsent_bytes(conn);
            self.log.record().big.push((conn, left));
        } else {
            ctx.send(conn, |buf| codec::encode(payload, buf));
            let mut log = self.log.record();
            let turn = log.per_turn.len();
            log.small = Some((conn, turn, None));
        }
        Verdict::Continue
    }

    fn handle_turn_end(&mut self, ctx: &mut Ctx<()>) {
        let mut log = self.log.record();
        let out = ctx.io_totals().bytes_out;
        let delta = out - log.bytes_out;
        log.bytes_out = out;
        log.per_turn.push(delta);
        let turn = log.per_turn.len() - 1;
        for (conn, least) in log.big.iter_mut() {
            *least = (*least).min(ctx.unsent_bytes(*conn));
        }
        if let Some((conn, _, done @ None)) = log.small.as_mut() {
            if ctx.unsent_bytes(*conn) == 0 {
                *done = Some(turn);
            }
        }
    }

    fn handle_close(&mut self, _: &mut Ctx<()>, _: ConnId, _: (), _: &CloseReason) {}
}

#[test]
fn a_turn_writes_at_most_its_budget_and_every_writer_progresses() {
    const LAZY: usize = 4;
    const BUDGET: usize = 32 * 1024;
    // 8 MiB queued for each client that never reads: more than its socket buffers take, so
    // only the budget stops a turn's writes.
    let config = Config {
        write_per_turn: Some(BUDGET),
        ..Config::default()
    };
    let log = Watched::<WriteLog>::default();
    let handler = BigWriter { log: log.clone() };
    let (server, addr) = Running::spawn(config, move |ctx| {
        (handler, ctx.listen(localhost()).expect("listen"))
    });
    let mut lazy: Vec<Client> = (0..LAZY).map(|_| Client::connect(addr)).collect();
    for client in lazy.iter_mut() {
        client.send(b"big");
    }
    log.wait_for("every big answer queued", |l| l.big.len() == LAZY);
    let full = (BIG_ANSWER_FRAMES * frame(&[b'x'; 64 * 1024]).len()) as u64;
    // A small answer to another client goes out in the turn its request was handled in.
    let mut honest = Client::connect(addr);
    honest.round_trip(b"small");
    // Every lazy connection gets written to.
    let l = log.once("every lazy connection written to", |l| {
        l.big.iter().all(|&(_, least)| least < full) && l.small.is_some_and(|s| s.2.is_some())
    });
    let (_, asked, done) = l.small.unwrap();
    assert_eq!(
        done,
        Some(asked),
        "the small echo waited behind the big writers"
    );
    let busiest = l.per_turn.iter().max().copied().unwrap_or(0);
    // The echo (a 5-byte frame) is written beside the budget.
    assert!(
        busiest <= (BUDGET + 64) as u64,
        "a turn wrote {busiest} bytes (budget {BUDGET}); per turn: {:?}",
        &l.per_turn[..l.per_turn.len().min(200)]
    );
    assert!(l.per_turn.iter().filter(|&&b| b > 0).count() >= LAZY);
    drop(l);
    drop(lazy);
    server.stop();
}

/// An echo server that closes a connection parked 300 ms without write progress, and a
/// client that writes `frames` frames of 100 KB and never reads, once the server has closed it
/// as stalled: the server, its address and log, the client and its writer thread.
fn a_stalled_client(
    high: usize,
    frames: usize,
) -> (Running, SocketAddr, Shared, Client, thread::JoinHandle<()>) {
    let config = Config {
        out_high_water: high,
        out_low_water: high / 4,
        out_stall_timeout: Some(Duration::from_millis(300)),
        ..Config::default()
    };
    let (server, addr, log) = echo_server(config);
    let mut lazy = Client::connect(addr);
    let lazy_addr = lazy.local_addr();
    let mut writer = lazy.stream().try_clone().unwrap();
    let w = thread::spawn(move || {
        // Far more than the socket buffers hold: the server parks, then gives up.
        let payload = vec![7u8; 100_000];
        for _ in 0..frames {
            if writer.write_all(&frame(&payload)).is_err() {
                break;
            }
        }
    });
    assert_eq!(log.wait_closed(lazy_addr), CloseReason::Stalled);
    (server, addr, log, lazy, w)
}

#[test]
fn a_client_that_never_reads_is_closed_once_its_output_stalls() {
    const HIGH: usize = 64 * 1024;
    let (server, addr, log, lazy, w) = a_stalled_client(HIGH, 200);
    let max = log.get().max_queued;
    assert!(max <= HIGH + 100_100, "queued {max} bytes");
    // A reading client is not affected.
    let mut busy = Client::connect(addr);
    busy.round_trip(b"still served");
    drop(lazy);
    w.join().expect("writer");
    finish(server, &log);
}

/// A connection closed with more output queued than one step frees leaves its queue and socket
/// to be freed over the next turns: the socket is closed all the same, so the client, reading
/// at last, gets what the kernel held and then the end of the stream, and others are served.
#[test]
fn a_stalled_client_with_much_output_queued_still_sees_its_socket_closed() {
    let (server, addr, log, mut lazy, w) = a_stalled_client(1 << 20, 400);
    let memory = log.get().max_output_memory;
    assert!(
        memory > 256 * 1024,
        "only {memory} bytes of output were held: nothing was left to free in steps"
    );
    let mut busy = Client::connect(addr);
    busy.round_trip(b"served while the remains are freed");
    // Read what the kernel held, then the end: a reset or an EOF, not a wait.
    let stream = lazy.stream();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("the closed connection's socket was not closed: {e}"),
        }
    }
    drop(lazy);
    w.join().expect("writer");
    finish(server, &log);
}

#[test]
fn a_half_closed_client_still_gets_every_pipelined_echo() {
    const FRAMES: usize = 100;
    const HIGH: usize = 64 * 1024;
    // 100 × 100 KB, read only once the server has parked: the EOF arrives while the server is
    // not reading, with frames still unread behind the parked one.
    let payload_of = |n: usize| {
        let mut p = vec![(n % 251) as u8; 100_000];
        p[..8].copy_from_slice(&(n as u64).to_le_bytes());
        p
    };
    let config = Config {
        out_high_water: HIGH,
        out_low_water: HIGH / 4,
        ..Config::default()
    };
    let (server, addr, log) = echo_server(config);
    let client = Client::connect(addr);
    let client_addr = client.local_addr();
    let mut writer = client.reader.stream.try_clone().unwrap();
    let w = thread::spawn(move || {
        for n in 0..FRAMES {
            writer.write_all(&frame(&payload_of(n))).expect("write");
        }
        writer.shutdown(Shutdown::Write).expect("half-close");
    });
    log.wait_for("the server to park the half-closing client", |log| {
        log.max_queued > HIGH
    });
    let mut reader = client.reader;
    for n in 0..FRAMES {
        assert!(reader.expect_frame() == payload_of(n), "echo {n} differs");
    }
    match reader.recv() {
        Ok(None) => {}
        other => panic!("expected EOF after the last echo, got {other:?}"),
    }
    w.join().expect("writer");
    assert_eq!(log.wait_closed(client_addr), CloseReason::Eof);
    assert_eq!(log.get().frames.get(&client_addr), Some(&FRAMES));
    finish(server, &log);
}

/// Sends `request` and reads until the server closes; what arrived (a connection refused at
/// accept may be reset: then nothing arrived).
fn http_answer(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = connect(addr);
    let _ = s.write_all(request);
    let mut answer = Vec::new();
    let _ = s.read_to_end(&mut answer);
    String::from_utf8(answer).unwrap()
}

#[test]
fn an_http_listener_answers_beside_frames_with_its_own_limits() {
    let log = Shared::default();
    let handler_log = log.clone();
    let limits = HttpLimits {
        max_connections: 2,
        max_request_bytes: 256,
        timeout: Duration::from_millis(300),
    };
    // One frame connection at most: HTTP connections must not take its slot, nor it theirs.
    let config = Config {
        max_connections: 1,
        ..Config::default()
    };
    let (server, (frames, http)) = Running::spawn(config, move |ctx| {
        let frames = ctx.listen(localhost()).expect("listen");
        let http = ctx.listen_http(localhost(), limits).expect("listen_http");
        let echo = Echo {
            log: handler_log,
            on_bad_frame: OnBadFrame::Close,
        };
        (echo, (frames, http))
    });
    let mut client = Client::connect(frames);
    client.round_trip(b"before");
    let ok = http_answer(http, b"GET /count HTTP/1.1\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(ok.ends_with("\r\n\r\n2 connections\n"), "{ok}");
    let missing = http_answer(http, b"GET /other HTTP/1.1\r\n\r\n");
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    let bad = http_answer(http, b"\x00\x01\r\n\r\n");
    assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
    // Two idle HTTP connections fill that listener: a third is closed unanswered, while the
    // frame client keeps being served.
    let idle: Vec<TcpStream> = (0..2).map(|_| connect(http)).collect();
    let mut probe = String::new();
    for _ in 0..50 {
        // The two are accepted in the reactor's next turn; until then a third may slip in.
        probe = http_answer(http, b"GET /count HTTP/1.1\r\n\r\n");
        if probe.is_empty() {
            break;
        }
    }
    assert_eq!(probe, "", "a third HTTP connection was served");
    client.round_trip(b"during");
    // The idle ones are closed at the listener's timeout, unanswered; the slots come back.
    for mut s in idle {
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).unwrap();
        assert!(rest.is_empty(), "{rest:?}");
    }
    let ok = http_answer(http, b"GET /count HTTP/1.1\r\n\r\n");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    client.round_trip(b"after");
    drop(client);
    log.wait_for("the frame client's close", |l| l.closes.len() == 1);
    finish(server, &log);
}

// ---------------------------------------------------------------------------------------------
// Holding a connection while background work runs across turns

/// Echoes frames; a `hold` frame holds its connection for [`HOLD_TURNS`] turns of background
/// work (asked for with `request_turn`), then answers `resumed` and resumes it.
struct HoldingEcho {
    /// The held connection and the turns of work left.
    held: Option<(ConnId, u32)>,
    /// Turns ended while a connection was held.
    turns: Watched<u32>,
}

/// Turns of background work per `hold`. Without `request_turn` each would wait for the idle
/// sweep (250 ms), far longer than the test's wait.
const HOLD_TURNS: u32 = 200;

impl Handler for HoldingEcho {
    type Conn = ();

    fn handle_accept(&mut self, _: &mut Ctx<()>, _: ConnId, _: SocketAddr) {}

    fn handle_frame(
        &mut self,
        ctx: &mut Ctx<()>,
        conn: ConnId,
        _: &mut (),
        payload: &[u8],
    ) -> Verdict {
        ctx.send(conn, |buf| codec::encode(payload, buf));
        if payload == b"hold" {
            ctx.hold(conn);
            assert!(ctx.is_held(conn));
            self.held = Some((conn, HOLD_TURNS));
        }
        Verdict::Continue
    }

    fn handle_turn_end(&mut self, ctx: &mut Ctx<()>) {
        let Some((conn, left)) = self.held.as_mut() else {
            return;
        };
        *self.turns.record() += 1;
        *left -= 1;
        if *left == 0 {
            let conn = *conn;
            self.held = None;
            ctx.send(conn, |buf| codec::encode(b"resumed", buf));
            ctx.resume(conn);
        } else {
            ctx.request_turn();
        }
    }

    fn handle_close(&mut self, _: &mut Ctx<()>, _: ConnId, _: (), _: &CloseReason) {}
}

#[test]
fn a_held_connection_keeps_its_later_frames_until_resumed_and_background_turns_do_not_wait() {
    let turns = Watched::<u32>::default();
    let handler_turns = turns.clone();
    let (server, addr) = Running::spawn(Config::default(), move |ctx| {
        let addr = ctx.listen(localhost()).expect("listen");
        let h = HoldingEcho {
            held: None,
            turns: handler_turns,
        };
        (h, addr)
    });
    let mut client = Client::connect(addr);
    // One write: the frames after `hold` arrive with it, and must wait for the resume.
    let mut burst = frame(b"hold");
    for p in [&b"a"[..], b"b", b"hold", b"c"] {
        burst.extend_from_slice(&frame(p));
    }
    client.stream().write_all(&burst).expect("write");
    let want: [&[u8]; 7] = [b"hold", b"resumed", b"a", b"b", b"hold", b"resumed", b"c"];
    for w in want {
        assert_eq!(client.reader.expect_frame(), w);
    }
    assert_eq!(*turns.get(), 2 * HOLD_TURNS);
    // A connection not held is served as before.
    client.round_trip(b"after");
    server.stop();
}

// ---------------------------------------------------------------------------------------------
// Web listeners

/// A web handler: `/now` is answered at once, `/later` at the end of the turn (deferred),
/// `/events` becomes a stream that gets a 16 KiB event every turn for as long as it is open.
#[derive(Default)]
struct WebTest {
    deferred: Vec<ConnId>,
    streams: Vec<ConnId>,
    /// Web connections closed (as `handle_web_close` said).
    closed: Watched<Vec<ConnId>>,
}

impl Handler for WebTest {
    type Conn = ();

    fn handle_accept(&mut self, _: &mut Ctx<()>, _: ConnId, _: SocketAddr) {}

    fn handle_frame(&mut self, _: &mut Ctx<()>, _: ConnId, _: &mut (), _: &[u8]) -> Verdict {
        Verdict::Continue
    }

    fn handle_close(&mut self, _: &mut Ctx<()>, _: ConnId, _: (), _: &CloseReason) {}

    fn handle_web_request(&mut self, _: &mut Ctx<()>, conn: ConnId, r: WebRequest) -> WebReply {
        match r.path.as_str() {
            "/now" => WebReply::Respond(WebResponse::text(Status::Ok, "now")),
            "/later" => {
                self.deferred.push(conn);
                WebReply::Defer
            }
            "/events" => {
                self.streams.push(conn);
                WebReply::Stream
            }
            _ => WebReply::Respond(WebResponse::text(Status::NotFound, "no")),
        }
    }

    fn handle_web_close(&mut self, _: &mut Ctx<()>, conn: ConnId) {
        self.streams.retain(|c| *c != conn);
        self.closed.record().push(conn);
    }

    fn handle_turn_end(&mut self, ctx: &mut Ctx<()>) {
        for conn in std::mem::take(&mut self.deferred) {
            ctx.web_respond(conn, WebResponse::text(Status::Ok, "later"));
        }
        let mut event = Vec::new();
        write_event(&mut event, "big", &"x".repeat(16 * 1024));
        self.streams.retain(|&conn| ctx.web_push(conn, &event));
        if !self.streams.is_empty() {
            ctx.request_turn();
        }
    }
}

fn web_server() -> (Running, SocketAddr, Watched<Vec<ConnId>>) {
    let closed = Watched::default();
    let theirs = closed.clone();
    let (server, addr) = Running::spawn(Config::default(), move |ctx| {
        let addr = ctx
            .listen_web(localhost(), WebLimits::default())
            .expect("listen_web");
        let handler = WebTest {
            closed: theirs,
            ..WebTest::default()
        };
        (handler, addr)
    });
    (server, addr, closed)
}

#[test]
fn a_deferred_web_answer_keeps_pipelined_requests_in_order() {
    let (server, addr, _) = web_server();
    let mut s = connect(addr);
    // Three requests in one write: the first is answered later, the others wait behind it.
    s.write_all(b"GET /later HTTP/1.1\r\n\r\nGET /now HTTP/1.1\r\n\r\nGET /later HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    let text = String::from_utf8(answer).unwrap();
    let bodies: Vec<&str> = text
        .split("HTTP/1.1 200 OK\r\n")
        .skip(1)
        .map(|a| a.rsplit("\r\n\r\n").next().unwrap().trim_end())
        .collect();
    assert_eq!(bodies, ["later", "now", "later"], "{text}");
    assert!(text.matches("Connection: close").count() == 1, "{text}");
    server.stop();
}

#[test]
fn a_stalled_event_stream_is_closed_at_its_bound_while_others_are_served() {
    let (server, addr, closed) = web_server();
    let mut stalled = connect(addr);
    stalled.write_all(b"GET /events HTTP/1.1\r\n\r\n").unwrap();
    // It never reads: the kernel's buffers fill, then 256 KiB of events queue, then it closes.
    closed.wait_for("the stalled stream's close", |c| c.len() == 1);
    let mut s = connect(addr);
    s.write_all(b"GET /now HTTP/1.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut answer = String::new();
    s.read_to_string(&mut answer).unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200 OK") && answer.ends_with("now\n"),
        "{answer}"
    );
    // What the stalled client can still read is bounded by that close: the head and events,
    // then the end (or a reset, since its unread data was dropped).
    stalled.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stalled.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
    }
    assert!(got < 64 << 20, "{got} bytes");
    server.stop();
}
