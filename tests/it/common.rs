//! Shared helpers for the integration tests: start the real binaries on loopback port 0 and
//! talk to them with small blocking clients. Every read has a timeout, every child is killed
//! on drop, so a failing test never hangs or leaks processes.

use p2pshare::codec::{self, Decoder};
use p2pshare::wire::{
    self, ErrorCode, FileEntry, FileHash, Request, RequestBody, Response, ResponseBody,
    TransferRequest, TransferResponse, PROTOCOL_VERSION,
};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// Longest any single read in a test may block.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// A running `indexd` child process, killed when dropped.
pub struct Indexd {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Indexd {
    /// Starts `indexd --listen 127.0.0.1:0 EXTRA...` and waits for its address line.
    pub fn start(extra: &[&str]) -> Indexd {
        Self::start_on("127.0.0.1:0", extra)
    }

    /// Starts `indexd` on a given address.
    pub fn start_on(listen: &str, extra: &[&str]) -> Indexd {
        Self::start_within(listen, extra, IO_TIMEOUT)
    }

    /// [`Indexd::start_on`], waiting up to `limit` for its address line (a cluster node
    /// prints it once it has read the stream).
    pub fn start_within(listen: &str, extra: &[&str], limit: Duration) -> Indexd {
        // A cluster node's info lines (joins, deaths, purges) say what a failed cluster test
        // went through; nothing else logs below warn.
        let child = Command::new(env!("CARGO_BIN_EXE_indexd"))
            .args([
                "--listen",
                listen,
                "--log",
                "warn,p2pshare::index::cluster=info",
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn indexd");
        // Owned by the guard at once: killed if its address line never comes.
        let mut indexd = Indexd {
            child,
            addr: ([0, 0, 0, 0], 0).into(),
        };
        // Read on a thread, so the wait for it is bounded.
        let mut stdout = BufReader::new(indexd.child.stdout.take().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = stdout.read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(limit)
            .expect("indexd's address line in time");
        indexd.addr = line
            .trim()
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected first line from indexd: {line:?}"));
        indexd
    }
}

impl Drop for Indexd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking index client speaking frames over one TCP connection.
pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    decoder: Decoder,
    next_id: u32,
}

impl Client {
    /// Connects (no hello).
    pub fn connect(addr: SocketAddr) -> Client {
        Self::over(TcpStream::connect(addr).expect("connect to indexd"))
    }

    /// A client over a connected stream.
    fn over(stream: TcpStream) -> Client {
        stream.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        Client {
            stream,
            buf: Vec::new(),
            decoder: Decoder::new(64 << 20),
            next_id: 1,
        }
    }

    /// Connects from the loopback address `from` (e.g. 127.0.0.2, to play another host).
    pub fn connect_from(addr: SocketAddr, from: std::net::IpAddr) -> Client {
        let socket = socket2::Socket::new(
            socket2::Domain::for_address(addr),
            socket2::Type::STREAM,
            None,
        )
        .unwrap();
        socket.bind(&SocketAddr::new(from, 0).into()).unwrap();
        socket.connect(&addr.into()).expect("connect to indexd");
        Self::over(socket.into())
    }

    /// Connects and completes the handshake announcing `port`; returns the observed address.
    pub fn hello(addr: SocketAddr, port: u16) -> (Client, SocketAddr) {
        Self::handshake(Client::connect(addr), port)
    }

    /// [`Client::hello`] from the loopback address `from`.
    pub fn hello_from(addr: SocketAddr, from: std::net::IpAddr, port: u16) -> (Client, SocketAddr) {
        Self::handshake(Client::connect_from(addr, from), port)
    }

    fn handshake(mut c: Client, port: u16) -> (Client, SocketAddr) {
        match c.call(RequestBody::Hello {
            version: PROTOCOL_VERSION,
            listen_port: port,
            agent: "test".into(),
        }) {
            ResponseBody::Welcome { observed, .. } => (c, observed),
            other => panic!("expected welcome, got {other:?}"),
        }
    }

    /// Sends a request with a fresh id; returns the id.
    pub fn send(&mut self, body: RequestBody) -> u32 {
        let id = self.next_id;
        self.next_id += 1;
        let mut out = Vec::new();
        wire::encode_frame(&Request { id, body }, &mut out);
        self.stream.write_all(&out).expect("send request");
        id
    }

    /// Writes raw bytes.
    pub fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// The next response frame; `None` at EOF.
    pub fn recv(&mut self) -> Option<Response> {
        self.recv_payload()
            .map(|p| wire::decode(&p).expect("decodable response"))
    }

    /// The next raw frame payload; `None` at EOF or reset.
    pub fn recv_payload(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(d) = self
                .decoder
                .decode(&self.buf)
                .expect("valid frame from server")
            {
                let payload = self.buf[d.payload.clone()].to_vec();
                self.buf.drain(..d.consumed);
                return Some(payload);
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return None,
                // `read` does not retry EINTR (seen once, a cluster test's read right after
                // it SIGSTOPped its NATS servers): read again.
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => panic!("read from server: {e}"),
            }
        }
    }

    /// Sends a request and returns the body of its response (checking the id).
    pub fn call(&mut self, body: RequestBody) -> ResponseBody {
        let id = self.send(body);
        let resp = self.recv().expect("response before EOF");
        assert_eq!(resp.id, id, "response id");
        resp.body
    }

    /// Leaves as [`leave`] says: once this returns, the server has removed the connection and
    /// everything it held.
    pub fn leave(mut self) {
        leave(&mut self.stream);
    }

    /// Whether the server closed the connection (EOF or reset) within the read timeout.
    pub fn is_closed_by_server(&mut self) -> bool {
        self.recv_payload().is_none()
    }
}

/// Closes our side of `s` and waits for the server's close in answer. Our reactors close a
/// connection at the remote's EOF and free it (its slot and per-address count, its session's
/// entries) in the same turn of the loop that sends their FIN, before reading anything else:
/// once this returns, every later request, on any connection, finds it gone. Dropping the
/// socket would not tell us when: the server sees that close only once every copy of the
/// socket is closed, and a child process another test spawns at that moment holds a copy
/// until it execs (`shutdown` acts on the socket itself, copies or not).
pub fn leave(s: &mut TcpStream) {
    s.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    s.shutdown(Shutdown::Write).expect("half-close");
    let mut sink = [0u8; 4096];
    loop {
        match s.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => panic!("the server did not close after our EOF: {e}"),
        }
    }
}

/// A frame holding exactly `payload`.
pub fn frame(payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    codec::encode(payload, &mut out);
    out
}

/// A fresh, empty directory for one test, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let dir =
            std::env::temp_dir().join(format!("p2pshare-test-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &std::path::Path {
        &self.0
    }

    pub fn sub(&self, name: &str) -> std::path::PathBuf {
        let p = self.0.join(name);
        std::fs::create_dir_all(&p).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// How long a serving peer may take to register its share: hashing 24 MiB on a loaded
/// machine, or reconnecting through its backoff after the index restarted. Only reached when
/// a test fails.
pub const REGISTER_LIMIT: Duration = Duration::from_secs(60);

/// A `peer --serve` child process, killed when dropped. Its stderr is read on a thread of its
/// own into [`Lines`], so the test can wait for what the peer says.
pub struct ServingPeer {
    pub child: Child,
    /// Its file server's address, as it printed it (and as the index gives it out).
    pub addr: SocketAddr,
    stderr: Arc<Lines>,
    /// Lines of `stderr` already consumed by a wait.
    seen: usize,
}

/// What a child printed on one stream so far; the reading thread notifies `changed` after
/// each line and at the end.
#[derive(Default)]
struct Lines {
    state: Mutex<Said>,
    changed: Condvar,
}

#[derive(Default)]
struct Said {
    lines: Vec<String>,
    /// The child closed the stream (it exited).
    ended: bool,
}

impl ServingPeer {
    pub fn start(share: &std::path::Path, index: SocketAddr) -> ServingPeer {
        Self::start_with(share, index, &[])
    }

    /// Starts a serving peer with extra flags and waits for its `serving files on ADDR` line.
    pub fn start_with(share: &std::path::Path, index: SocketAddr, extra: &[&str]) -> ServingPeer {
        let mut args = peer_args(share, index);
        args.extend(extra.iter().map(Into::into));
        Self::start_args(args)
    }

    /// Starts a serving peer with exactly `args` (and `--serve` and the log filter) and waits
    /// for its `serving files on ADDR` line.
    pub fn start_args(args: Vec<std::ffi::OsString>) -> ServingPeer {
        let mut child = Command::new(env!("CARGO_BIN_EXE_peer"))
            .args(args)
            // The peer logs each answer to its registers at debug level: see `wait_registered`.
            .args(["--serve", "--log", "warn,peer=debug"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn peer");
        let stderr = Arc::new(Lines::default());
        let theirs = stderr.clone();
        let mut pipe = BufReader::new(child.stderr.take().unwrap());
        std::thread::spawn(move || loop {
            let mut line = Vec::new();
            let open = matches!(pipe.read_until(b'\n', &mut line), Ok(n) if n > 0);
            let mut said = theirs.state.lock().unwrap_or_else(|e| e.into_inner());
            if open {
                let line = String::from_utf8_lossy(&line).trim_end().to_string();
                said.lines.push(line);
            } else {
                said.ended = true;
            }
            drop(said);
            theirs.changed.notify_all();
            if !open {
                return;
            }
        });
        let mut peer = ServingPeer {
            child,
            addr: ([0, 0, 0, 0], 0).into(),
            stderr,
            seen: 0,
        };
        let line = peer.wait_line("its address", IO_TIMEOUT, |l| {
            l.starts_with("peer: serving files on ") || l.starts_with("peer: no file server")
        });
        if line.starts_with("peer: no file server") {
            // `--listen none`: it serves through pushes only; its address stays 0.0.0.0:0.
            return peer;
        }
        peer.addr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected address line from the peer: {line:?}"));
        peer
    }

    /// Waits until the index has answered a register of this peer's with `files` files held
    /// in all, and consumes the stderr up to that answer. The peer logs `index holds N of our
    /// files` when the index's answer arrives, and the index answers a register only once the
    /// files are in it: every request the test sends afterwards, on any connection, finds
    /// them. (Its `sharing N files` note is no such event: it comes when the share is hashed,
    /// before the register is even sent if the index session is not up yet.)
    pub fn wait_registered(&mut self, files: usize) {
        let want = format!("index holds {files} of our files");
        self.wait_line(&want, REGISTER_LIMIT, |l| l.contains(&want));
    }

    /// Whether any line of stderr so far contains `what` (consumed or not).
    pub fn has_said(&self, what: &str) -> bool {
        let said = self.stderr.state.lock().unwrap_or_else(|e| e.into_inner());
        said.lines.iter().any(|l| l.contains(what))
    }

    /// How many lines of stderr so far contain `what` (consumed or not).
    pub fn lines_containing(&self, what: &str) -> usize {
        let said = self.stderr.state.lock().unwrap_or_else(|e| e.into_inner());
        said.lines.iter().filter(|l| l.contains(what)).count()
    }

    /// Waits for the next line of stderr (after those consumed) that `is_it` accepts, and
    /// consumes the stderr up to it; fails the test at EOF or after `limit`.
    pub fn wait_line(
        &mut self,
        what: &str,
        limit: Duration,
        is_it: impl Fn(&str) -> bool,
    ) -> String {
        let seen = self.seen;
        let found = |said: &Said| {
            let at = said.lines[seen..].iter().position(|l| is_it(l.as_str()));
            at.map(|i| seen + i)
        };
        let (said, _) = self
            .stderr
            .changed
            .wait_timeout_while(
                self.stderr.state.lock().unwrap_or_else(|e| e.into_inner()),
                limit,
                |said| found(said).is_none() && !said.ended,
            )
            .unwrap_or_else(|e| e.into_inner());
        let Some(at) = found(&said) else {
            let why = if said.ended {
                "it closed stderr"
            } else {
                "timed out"
            };
            panic!(
                "the serving peer never said {what:?} ({why}); its stderr:\n{}",
                said.lines.join("\n")
            );
        };
        self.seen = at + 1;
        said.lines[at].clone()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServingPeer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Any other child process a test starts, killed (and reaped) when dropped, so a failing test
/// leaves none behind.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What a console peer printed.
#[derive(Debug)]
pub struct ConsoleRun {
    pub stdout: String,
    pub stderr: String,
    pub success: bool,
    /// The exit status (`None`: killed by a signal).
    pub code: Option<i32>,
}

/// How stdin reaches a console peer.
pub enum Input<'a> {
    /// Written into a pipe, then closed.
    Pipe(&'a str),
    /// A regular file opened as stdin.
    File(&'a std::path::Path),
}

/// Runs `peer --share DIR --index ADDR [extra]` with `input` as stdin until it exits
/// (bounded by `limit`), and returns what it printed.
pub fn run_console(
    share: &std::path::Path,
    index: SocketAddr,
    extra: &[&str],
    input: Input<'_>,
    limit: Duration,
) -> ConsoleRun {
    run_console_at(share, &index.to_string(), extra, input, limit)
}

/// [`run_console`] with the index given as the user would type it (`HOST:PORT`).
pub fn run_console_at(
    share: &std::path::Path,
    index: &str,
    extra: &[&str],
    input: Input<'_>,
    limit: Duration,
) -> ConsoleRun {
    let stdin = match &input {
        Input::Pipe(_) => Stdio::piped(),
        Input::File(p) => Stdio::from(std::fs::File::open(p).unwrap()),
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_peer"))
        .args(peer_args_to(share, index))
        .args(extra)
        .stdin(stdin)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn peer");
    if let Input::Pipe(text) = input {
        let mut w = child.stdin.take().unwrap();
        w.write_all(text.as_bytes()).unwrap();
    }
    match output_within(child, limit) {
        Ok(out) => ConsoleRun {
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            success: out.status.success(),
            code: out.status.code(),
        },
        Err(out) => panic!(
            "console peer did not finish in {limit:?}\nstdout:\n{}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    }
}

/// Collects a child's piped stdout and stderr until both reach EOF (the child exited), then
/// reaps it: `Err` with what it printed if that took longer than `limit` (it is killed).
pub fn output_within(mut child: Child, limit: Duration) -> Result<Output, Output> {
    let (tx, rx) = std::sync::mpsc::channel();
    let pipes: [Box<dyn Read + Send>; 2] = [
        Box::new(child.stdout.take().expect("piped stdout")),
        Box::new(child.stderr.take().expect("piped stderr")),
    ];
    let readers = pipes.map(|mut pipe| {
        let tx = tx.clone();
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = tx.send(());
            bytes
        })
    });
    let deadline = std::time::Instant::now() + limit;
    let in_time = (0..2).all(|_| {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        rx.recv_timeout(left).is_ok()
    });
    if !in_time {
        let _ = child.kill();
    }
    let status = child.wait().expect("reap child");
    let [stdout, stderr] = readers.map(|r| r.join().unwrap());
    let out = Output {
        status,
        stdout,
        stderr,
    };
    if in_time {
        Ok(out)
    } else {
        Err(out)
    }
}

/// How a fake holder misbehaves when asked for a range of a file.
#[derive(Clone, Copy, Debug)]
pub enum Fake {
    /// Serves every range right (a test-only honest holder).
    Honest,
    /// Claims twice the size in its header, then sends the bytes.
    WrongSize,
    /// Sends other groups than asked.
    WrongOffset,
    /// Answers with garbage instead of a frame.
    Garbage,
    /// Answers with an error frame.
    Refuses,
    /// Sends a frame that is not a transfer response.
    NotAResponse,
    /// Sends the header, the proof and half the bytes, then closes (a holder that dies).
    DiesHalfway,
    /// Sends the true proof with the right number of wrong bytes.
    WrongBytes,
    /// Serves right, except that every byte from this offset of the file on is wrong.
    LiesFrom(u64),
    /// Sends too many bytes: the right range followed by junk.
    TooMany,
    /// Sends the header, the proof and half the bytes, then hangs with the connection open.
    Hangs,
    /// Serves the file's first this many 16 KiB groups right, then says nothing more (the
    /// connection stays open): a request reaching past them gets its header, its proof and
    /// the bytes up to there (a fast holder is asked for runs of pieces, so whole requests
    /// would not stop at a given piece).
    ServesThenHangs(u64),
    /// Sends a valid header and proof, then the right bytes one at a time, one every 20 ms
    /// (a holder that never stalls long enough for a "nothing received" timer and never
    /// finishes).
    Trickles,
}

impl Fake {
    /// What this fake writes for a request of `groups` of `bytes`, and whether it then
    /// stops answering (keeping the connection open until the downloader gives up, or
    /// closing it when `closes`).
    fn reply(self, bytes: &[u8], groups: std::ops::Range<u64>) -> (Vec<u8>, bool) {
        use p2pshare::peer::outboard;
        let size = bytes.len() as u64;
        let (_, ob) = outboard::compute_in_memory(bytes);
        let range = match outboard::answer_range(&ob, groups.clone()) {
            Ok(r) => r,
            Err(_) => return (Vec::new(), true),
        };
        let data = &bytes[range.data.start as usize..range.data.end as usize];
        let mut out = match self {
            Fake::WrongSize => sending_header(size * 2, groups),
            Fake::WrongOffset => sending_header(size, groups.start + 1..groups.end + 1),
            Fake::Garbage => pseudo_random(5000, 9),
            Fake::Refuses => {
                let mut out = Vec::new();
                wire::encode_frame(
                    &TransferResponse::Error {
                        code: ErrorCode::Io,
                        message: "no".into(),
                    },
                    &mut out,
                );
                out
            }
            Fake::NotAResponse => frame(b"\x09\x09\x09"),
            _ => sending_header(size, groups),
        };
        let proof = &range.proof;
        match self {
            Fake::Honest | Fake::WrongSize | Fake::WrongOffset => {
                out.extend_from_slice(proof);
                out.extend_from_slice(data);
            }
            Fake::DiesHalfway | Fake::Hangs => {
                out.extend_from_slice(proof);
                out.extend_from_slice(&data[..data.len() / 2]);
            }
            Fake::WrongBytes => {
                out.extend_from_slice(proof);
                out.extend(data.iter().map(|b| b ^ 0x55));
            }
            Fake::LiesFrom(at) => {
                out.extend_from_slice(proof);
                out.extend(data.iter().enumerate().map(|(i, b)| {
                    if range.data.start + i as u64 >= at {
                        b ^ 0x55
                    } else {
                        *b
                    }
                }));
            }
            Fake::TooMany => {
                out.extend_from_slice(proof);
                out.extend_from_slice(data);
                out.extend_from_slice(&[7u8; 100_000]);
            }
            Fake::Trickles => out.extend_from_slice(proof),
            Fake::Garbage | Fake::Refuses | Fake::NotAResponse | Fake::ServesThenHangs(_) => {}
        }
        let goes_on = matches!(self, Fake::Honest | Fake::LiesFrom(_));
        if let Fake::ServesThenHangs(_) = self {
            out.extend_from_slice(proof);
            out.extend_from_slice(data);
        }
        (out, !goes_on)
    }
}

/// A transfer header frame, as a holder sends it before the proof and the data.
fn sending_header(size: u64, groups: std::ops::Range<u64>) -> Vec<u8> {
    let mut out = Vec::new();
    wire::encode_frame(
        &TransferResponse::Sending {
            size,
            first: groups.start,
            end: groups.end,
        },
        &mut out,
    );
    out
}

/// A fake holder of one file, registered in the index through its own session (which keeps
/// the entry alive until [`FakeHolder::leave`] or drop), misbehaving as told on every request.
pub struct FakeHolder {
    /// Its address as the index gives it out.
    pub addr: SocketAddr,
    session: Client,
    hash: FileHash,
    /// Range requests answered, in all.
    pub served: Arc<std::sync::atomic::AtomicUsize>,
}

impl FakeHolder {
    /// Registers a fake holder of `entry` (whose contents are `bytes`) in the index at `index`.
    pub fn start(index: SocketAddr, entry: FileEntry, bytes: Vec<u8>, how: Fake) -> FakeHolder {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let hash = entry.hash;
        let (mut session, addr) = Client::hello(index, port);
        match session.call(RequestBody::Register { files: vec![entry] }) {
            ResponseBody::Registered { added: 1, .. } => {}
            other => panic!("fake holder not registered: {other:?}"),
        }
        let bytes = std::sync::Arc::new(bytes);
        let served = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = served.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(s) = stream else { return };
                let bytes = bytes.clone();
                let counter = counter.clone();
                std::thread::spawn(move || serve_fake(s, how, &bytes, &counter));
            }
        });
        FakeHolder {
            addr,
            session,
            hash,
            served,
        }
    }

    /// Withdraws the entry and returns once the index has: its answer to `Unregister` comes
    /// after the removal. Closing the session is not enough to know that: the index sees the
    /// close only once every copy of the socket is closed, and a child process another test
    /// spawns at that moment holds a copy until it execs.
    pub fn leave(mut self) {
        match self.session.call(RequestBody::Unregister {
            hashes: vec![self.hash],
        }) {
            ResponseBody::Unregistered { removed: 1, .. } => {}
            other => panic!("fake holder not withdrawn: {other:?}"),
        }
    }
}

/// Answers one downloader's range requests as `how` says, in order.
fn serve_fake(mut s: TcpStream, how: Fake, bytes: &[u8], served: &std::sync::atomic::AtomicUsize) {
    /// How long a stalling fake keeps a connection open at most.
    const STALL: Duration = Duration::from_secs(30);
    s.set_read_timeout(Some(STALL)).unwrap();
    let mut buf = Vec::new();
    let mut dec = Decoder::default();
    loop {
        let req: TransferRequest = loop {
            if let Ok(Some(d)) = dec.decode(&buf) {
                let req = wire::decode(&buf[d.payload.clone()]).unwrap();
                buf.drain(..d.consumed);
                break req;
            }
            let mut chunk = [0u8; 4096];
            let n = match s.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            buf.extend_from_slice(&chunk[..n]);
        };
        let TransferRequest::Range { first, end, .. } = req else {
            return;
        };
        served.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        let (out, stops) = match how {
            Fake::ServesThenHangs(k) if first >= k => (Vec::new(), true),
            Fake::ServesThenHangs(k) => {
                let (mut out, _) = how.reply(bytes, first..end);
                let size = bytes.len() as u64;
                let data = p2pshare::peer::outboard::group_bytes(size, first..end);
                let kept = p2pshare::peer::outboard::group_bytes(size, first..end.min(k));
                out.truncate(out.len() - (data.end - kept.end) as usize);
                (out, end > k)
            }
            _ => how.reply(bytes, first..end),
        };
        if s.write_all(&out).is_err() {
            return;
        }
        if !stops {
            continue;
        }
        if let Fake::Trickles = how {
            // Until the downloader closes (the write fails) or STALL passes.
            let started = std::time::Instant::now();
            let data = p2pshare::peer::outboard::group_bytes(bytes.len() as u64, first..end);
            for b in &bytes[data.start as usize..data.end as usize] {
                std::thread::sleep(Duration::from_millis(20));
                if s.write_all(&[*b]).is_err() || started.elapsed() > STALL {
                    return;
                }
            }
        }
        if matches!(how, Fake::DiesHalfway | Fake::WrongBytes | Fake::TooMany) {
            return;
        }
        // Say nothing more until the downloader gives up and closes (or STALL passes).
        while matches!(s.read(&mut [0u8; 4096]), Ok(n) if n > 0) {}
        return;
    }
}

/// Runs `get HASH N` (holder N of the lookup first) in a console peer sharing `dir`, and
/// checks that it saved `name` with exactly `bytes` and that nothing else landed there;
/// `what` labels a failure.
#[allow(clippy::too_many_arguments)]
pub fn get_from_holder_saves_only(
    dir: &std::path::Path,
    index: SocketAddr,
    hash: p2pshare::wire::FileHash,
    holder: usize,
    limit: Duration,
    name: &str,
    bytes: &[u8],
    what: &str,
) {
    let run = run_console(
        dir,
        index,
        &[],
        Input::Pipe(&format!("get {hash} {holder}\n")),
        limit,
    );
    assert!(run.success, "{what}: {run:?}");
    assert!(run.stdout.contains("saved "), "{what}: {run:?}");
    assert!(
        std::fs::read(dir.join(name)).unwrap() == bytes,
        "{what}: {run:?}"
    );
    assert_eq!(
        visible_names(dir),
        vec![name.to_string()],
        "{what}: {run:?}"
    );
}

/// The 1-based position of `addr` among the holders the index lists for `hash`.
pub fn holder_number(index: SocketAddr, hash: p2pshare::wire::FileHash, addr: SocketAddr) -> usize {
    let (mut c, _) = Client::hello(index, 0);
    match c.call(RequestBody::Lookup {
        key: p2pshare::wire::LookupKey::Hash(hash),
        after: None,
    }) {
        ResponseBody::Holders { files, .. } => {
            files[0].holders.iter().position(|h| *h == addr).unwrap() + 1
        }
        other => panic!("{other:?}"),
    }
}

/// Deterministic pseudo-random bytes (xorshift), for file contents and noise.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs a console peer sharing `dir` whose only command is `get TARGET`, bounded by a minute.
pub fn get(dir: &std::path::Path, index: SocketAddr, target: impl std::fmt::Display) -> ConsoleRun {
    run_console(
        dir,
        index,
        &[],
        Input::Pipe(&format!("get {target}\n")),
        Duration::from_secs(60),
    )
}

/// The arguments every test peer gets: share `share`, use the index at `index`, serve files on
/// a free loopback port.
pub fn peer_args(share: &std::path::Path, index: SocketAddr) -> Vec<std::ffi::OsString> {
    peer_args_to(share, &index.to_string())
}

/// [`peer_args`] with the index as `HOST:PORT` text.
pub fn peer_args_to(share: &std::path::Path, index: &str) -> Vec<std::ffi::OsString> {
    vec![
        "--share".into(),
        share.as_os_str().to_owned(),
        "--index".into(),
        index.into(),
        "--listen".into(),
        "127.0.0.1:0".into(),
    ]
}

/// The names in `dir` that are not dot files (the peer's cache and partial downloads).
pub fn visible_names(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    names
}

/// The file-server address of the first holder the index lists for `hash`.
pub fn holder_of(index: SocketAddr, hash: p2pshare::wire::FileHash) -> SocketAddr {
    let (mut c, _) = Client::hello(index, 0);
    match c.call(RequestBody::Lookup {
        key: p2pshare::wire::LookupKey::Hash(hash),
        after: None,
    }) {
        ResponseBody::Holders { files, .. } => files[0].holders[0],
        other => panic!("{other:?}"),
    }
}

/// A free loopback port, for servers that cannot listen on port 0 and report it (Prometheus,
/// nats-server).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
