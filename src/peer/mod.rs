//! The peer: shares a directory, keeps a session with the index, serves files to other peers
//! and downloads from them, all on one reactor thread.
//!
//! Threads: the reactor thread runs [`Peer`]; a hashing thread walks and hashes the shared
//! directory (so a large share never freezes the loop); a stdin thread hands console lines
//! over (epoll cannot watch a regular file, and stdin may be one). Both talk to the reactor
//! through a channel and its waker.
//!
//! Connections, by role (see docs/LIFECYCLE.md):
//! - **index**: one long-lived session; Hello, then a bulk Register of everything shared;
//!   pings keep it alive; if it drops, reconnect with capped exponential backoff and register
//!   again (the index keeps only soft state).
//! - **upload**: another peer's downloader; each Get is answered by a header frame and the
//!   file's bytes via `sendfile`, only for hashes in the share table, only while the file is
//!   unchanged on disk.
//! - **download**: ours; Get from an offset (resume), header, raw bytes to the partial file,
//!   verify, rename. Any failure moves to the next holder.
//!
//! Console commands run one at a time in input order; a command that waits on the network
//! (search, lookup, get, register) completes before the next starts.

pub mod console;
pub mod download;
pub mod names;
pub mod output;
pub mod share;

pub use names::display_name;

use crate::reactor::{CloseReason, ConnId, Ctx, Handler, Verdict};
use crate::wire::{
    self, ErrorCode, FileEntry, FileHash, HeldFile, LookupKey, Request, RequestBody, Response,
    ResponseBody, TransferRequest, TransferResponse, PROTOCOL_VERSION,
};
use console::{Command, Target};
use download::{Download, TransferError};
use output::{Output, Writer};
use share::{HashCache, Share, SharedFile};
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::io::BufRead;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

const TIMER_RECONNECT: u64 = 1;
const TIMER_PING: u64 = 2;
const TIMER_PROGRESS: u64 = 3;

/// How often the index session is pinged (indexd's default idle timeout is 120 s).
const PING_INTERVAL: Duration = Duration::from_secs(30);
/// First reconnect delay; doubles up to [`BACKOFF_MAX`].
const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest reconnect delay.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// A download connection silent this long is given up (next holder).
const DOWNLOAD_IDLE: Duration = Duration::from_secs(15);
/// An upload connection waiting this long for a request is closed.
const UPLOAD_IDLE: Duration = Duration::from_secs(60);
/// Largest Register frame we build (well under indexd's default 1 MiB frame limit).
const REGISTER_BATCH_BYTES: usize = 512 * 1024;
/// Longest console line read; the rest of a longer line is discarded.
const MAX_LINE_BYTES: usize = 64 * 1024;
/// Redraw interval of the terminal progress bar.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// How a peer is set up.
#[derive(Debug, Clone)]
pub struct PeerConfig {
    /// The directory shared.
    pub share_dir: PathBuf,
    /// Where downloads land (by default the share directory).
    pub downloads_dir: PathBuf,
    /// The index server, `HOST:PORT`.
    pub index: String,
    /// Where the file server listens.
    pub listen: SocketAddr,
    /// Read commands from stdin (false: `--serve`).
    pub console: bool,
    /// Draw a progress bar (stderr is a terminal).
    pub progress_bar: bool,
}

/// Messages from the helper threads to the reactor.
pub enum Event {
    /// A console line.
    Line(String),
    /// Standard input ended.
    StdinEof,
    /// Hashing progress.
    ScanProgress(share::ScanProgress),
    /// The verifying thread hashed a complete download (generation, result).
    Hashed(u64, std::io::Result<FileHash>),
    /// The index's host name was looked up (on a thread of its own: the lookup blocks): its
    /// addresses, in the resolver's order.
    Resolved(Result<Vec<SocketAddr>, String>),
    /// A scan or hash job finished.
    Scanned {
        /// What was asked.
        job: Job,
        /// The hashed files.
        files: Vec<SharedFile>,
        /// Problems met (unreadable files).
        warnings: Vec<String>,
    },
}

/// Work for the hashing thread.
#[derive(Debug, Clone)]
pub enum Job {
    /// Walk and hash the whole share (startup, `register` with no paths).
    Rescan {
        /// Whether a console command waits for it.
        console: bool,
    },
    /// Hash these paths and add them (`register PATH...`, a changed file).
    Paths {
        /// The files.
        paths: Vec<PathBuf>,
        /// Whether a console command waits for it.
        console: bool,
    },
}

/// What a connection is for: the peer's per-connection state, kept in the reactor's slot.
pub enum Role {
    /// The session with the index.
    Index,
    /// Another peer's downloader: what is being sent to it, (hash, bytes), if anything.
    Upload {
        /// The file being streamed and its byte count, until the stream drains.
        sending: Option<(FileHash, u64)>,
    },
    /// Our download from a holder.
    Download,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum IndexState {
    Down,
    /// The index's host name is being looked up.
    Resolving,
    Connecting,
    AwaitingWelcome,
    Ready,
}

enum Pending {
    Hello,
    Register,
    Unregister,
    Ping,
    Bye,
    Search,
    Lookup {
        target: Target,
        then_get: Option<Option<usize>>,
        by_name_retry: bool,
    },
}

/// What the running console command waits for.
enum Running {
    /// Startup: the first scan (and its registration) before any command runs.
    Startup,
    /// An index request (search, lookup).
    Index,
    /// A download in progress.
    Get,
    /// A scan started by `register`.
    Scan,
}

/// The peer's reactor handler.
pub struct Peer {
    cfg: PeerConfig,
    share: Share,
    events: Receiver<Event>,
    jobs: Sender<Job>,
    shutdown: Option<Arc<AtomicBool>>,
    listen_port: u16,

    index_conn: Option<ConnId>,
    index_state: IndexState,
    observed: Option<SocketAddr>,
    next_id: u32,
    pending: HashMap<u32, Pending>,
    backoff: Duration,
    said_down: bool,
    registered_once: bool,

    lines: VecDeque<String>,
    running: Option<Running>,
    stdin_done: bool,
    last_lookup: Option<(Target, Vec<HeldFile>)>,
    download: Option<Download>,
    download_conn: Option<ConnId>,
    progress_armed: bool,
    /// What the person is told, until the writer thread takes it.
    output: Output,
    writer: Option<Writer>,
    ping_armed: bool,
    startup_scanned: bool,

    uploads_done: u64,
    bytes_sent: u64,
    /// Hands verified-hash results from the verifying thread to the reactor.
    hash_done: download::HashDone,
    /// Reports a host-name lookup of the index to the reactor.
    resolved: Arc<dyn Fn(Result<Vec<SocketAddr>, String>) + Send + Sync>,
    /// The index's other addresses, tried in turn when a connect to one fails (a name may
    /// resolve to `::1` and `127.0.0.1`, and the index listen on only one).
    index_addrs: VecDeque<SocketAddr>,
}

/// Starts the hashing thread; it runs jobs until the job channel closes.
pub fn spawn_hasher(
    root: PathBuf,
    events: Sender<Event>,
    waker: Arc<mio::Waker>,
) -> std::io::Result<Sender<Job>> {
    let (tx, rx) = mpsc::channel::<Job>();
    std::thread::Builder::new()
        .name("hasher".into())
        .spawn(move || {
            let cache_path = root.join(share::CACHE_FILE);
            let mut cache = HashCache::load(&cache_path);
            for job in rx {
                let mut warnings = Vec::new();
                let files = match &job {
                    Job::Rescan { .. } => share::walk(&root, &mut |w| warnings.push(w)),
                    Job::Paths { paths, .. } => paths
                        .iter()
                        .filter_map(|p| match std::fs::metadata(p) {
                            Ok(m) if m.is_file() => Some((p.clone(), m)),
                            Ok(_) => {
                                warnings.push(format!("{} is not a regular file", p.display()));
                                None
                            }
                            Err(e) => {
                                warnings.push(format!("cannot share {}: {e}", p.display()));
                                None
                            }
                        })
                        .collect(),
                };
                let mut last = Instant::now();
                let hashed = share::hash_all(
                    files,
                    &cache,
                    &mut |p| {
                        if last.elapsed() >= Duration::from_millis(500) || p.files_done == p.files {
                            last = Instant::now();
                            let _ = events.send(Event::ScanProgress(p));
                            let _ = waker.wake();
                        }
                    },
                    &mut |w| warnings.push(w),
                );
                if let Job::Rescan { .. } = job {
                    cache = HashCache::from_files(&hashed);
                    // A read-only share just means re-hashing next time.
                    let _ = cache.save(&cache_path);
                }
                let _ = events.send(Event::Scanned {
                    job,
                    files: hashed,
                    warnings,
                });
                let _ = waker.wake();
            }
        })?;
    Ok(tx)
}

/// Starts the stdin thread: each line becomes [`Event::Line`], end of input
/// [`Event::StdinEof`].
pub fn spawn_stdin(events: Sender<Event>, waker: Arc<mio::Waker>) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name("stdin".into())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut lock = stdin.lock();
            let mut buf = Vec::new();
            loop {
                buf.clear();
                match std::io::Read::take(&mut lock, MAX_LINE_BYTES as u64)
                    .read_until(b'\n', &mut buf)
                {
                    Ok(0) => break,
                    Ok(_) => {
                        if buf.last() != Some(&b'\n') && buf.len() >= MAX_LINE_BYTES {
                            // Discard the rest of an over-long line.
                            let mut sink = Vec::new();
                            let _ = lock.read_until(b'\n', &mut sink);
                        }
                        let line = String::from_utf8_lossy(&buf).into_owned();
                        if events.send(Event::Line(line)).is_err() {
                            return;
                        }
                        let _ = waker.wake();
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            let _ = events.send(Event::StdinEof);
            let _ = waker.wake();
        })?;
    Ok(())
}

impl Peer {
    /// A peer; call [`Peer::start`] on the reactor before running it.
    pub fn new(
        cfg: PeerConfig,
        events: (Sender<Event>, Receiver<Event>),
        jobs: Sender<Job>,
        waker: Arc<mio::Waker>,
    ) -> Peer {
        let (events_tx, events) = events;
        let progress_bar = cfg.progress_bar;
        let output_waker = waker.clone();
        // Without a writer the peer still runs; it just cannot tell the person anything.
        let writer = Writer::spawn(progress_bar, move || {
            let _ = output_waker.wake();
        })
        .ok();
        // Hands an event from a helper thread to the reactor and wakes it.
        let events_tx = std::sync::Mutex::new(events_tx);
        let notify = Arc::new(move |event: Event| {
            if let Ok(tx) = events_tx.lock() {
                let _ = tx.send(event);
            }
            let _ = waker.wake();
        });
        let to_reactor = notify.clone();
        let hash_done: download::HashDone =
            Arc::new(move |generation, hashed| to_reactor(Event::Hashed(generation, hashed)));
        let resolved = Arc::new(move |result| notify(Event::Resolved(result)));
        Peer {
            cfg,
            share: Share::default(),
            events,
            jobs,
            shutdown: None,
            listen_port: 0,
            index_conn: None,
            index_state: IndexState::Down,
            observed: None,
            next_id: 1,
            pending: HashMap::new(),
            backoff: BACKOFF_MIN,
            said_down: false,
            registered_once: false,
            lines: VecDeque::new(),
            running: Some(Running::Startup),
            stdin_done: false,
            last_lookup: None,
            download: None,
            download_conn: None,
            progress_armed: false,
            output: Output::new(progress_bar),
            writer,
            ping_armed: false,
            startup_scanned: false,
            uploads_done: 0,
            bytes_sent: 0,
            hash_done,
            resolved,
            index_addrs: VecDeque::new(),
        }
    }

    /// Stops the reactor when `flag` is set and the reactor is woken (SIGINT/SIGTERM).
    pub fn stop_on(&mut self, flag: Arc<AtomicBool>) {
        self.shutdown = Some(flag);
    }

    /// Starts listening, scanning and connecting. Returns the file server's address.
    pub fn start(&mut self, ctx: &mut Ctx<Role>) -> std::io::Result<SocketAddr> {
        let addr = ctx.listen(self.cfg.listen)?;
        self.listen_port = addr.port();
        let _ = self.jobs.send(Job::Rescan { console: false });
        self.connect_index(ctx);
        Ok(addr)
    }

    // ----- output -------------------------------------------------------------------------

    fn out(&mut self, text: &str) {
        self.output.result(text);
    }

    fn err(&mut self, text: &str) {
        self.output.error(text);
    }

    fn note(&mut self, text: &str) {
        self.output.note(text);
    }

    /// Hands the output to the writer thread: never blocks.
    fn flush_output(&mut self) {
        if let Some(w) = &self.writer {
            w.drain(&mut self.output);
        }
    }

    /// After the reactor stopped: everything still queued is written before returning.
    pub fn finish(mut self) {
        if let Some(w) = self.writer.take() {
            w.finish(&mut self.output);
        }
    }

    // ----- index session ------------------------------------------------------------------

    /// Connects to the index: at once for an address, after a lookup on a thread of its own
    /// for a host name (a slow or dead DNS server must not stall the loop: uploads, downloads
    /// and the console's other commands go on).
    fn connect_index(&mut self, ctx: &mut Ctx<Role>) {
        if let Ok(addr) = self.cfg.index.parse::<SocketAddr>() {
            return self.connect_index_at(ctx, addr);
        }
        if self.index_state == IndexState::Resolving {
            return;
        }
        self.index_state = IndexState::Resolving;
        let name = self.cfg.index.clone();
        let done = self.resolved.clone();
        let lookup = move || {
            done(match name.to_socket_addrs() {
                Ok(addrs) => Ok(addrs.collect()),
                Err(e) => Err(e.to_string()),
            })
        };
        if let Err(e) = std::thread::Builder::new()
            .name("resolve".into())
            .spawn(lookup)
        {
            self.index_down(
                ctx,
                &format!("cannot start a lookup of {}: {e}", self.cfg.index),
            );
        }
    }

    /// The lookup [`Peer::connect_index`] started has ended.
    fn handle_resolved(&mut self, ctx: &mut Ctx<Role>, result: Result<Vec<SocketAddr>, String>) {
        if self.index_state != IndexState::Resolving {
            return;
        }
        match result {
            Ok(addrs) if !addrs.is_empty() => {
                self.index_addrs = addrs.into();
                let first = self.index_addrs.pop_front().expect("not empty");
                self.connect_index_at(ctx, first);
            }
            Ok(_) => self.index_down(ctx, &format!("{} has no address", self.cfg.index)),
            Err(e) => self.index_down(ctx, &format!("cannot resolve {}: {e}", self.cfg.index)),
        }
    }

    /// Starts connecting to `addr`, or to the next of `index_addrs` while a connect fails at
    /// once.
    fn connect_index_at(&mut self, ctx: &mut Ctx<Role>, mut addr: SocketAddr) {
        loop {
            match ctx.connect(addr, Role::Index) {
                Ok(conn) => {
                    ctx.set_idle_timeout(conn, None);
                    self.index_conn = Some(conn);
                    self.index_state = IndexState::Connecting;
                    return;
                }
                Err(e) => match self.index_addrs.pop_front() {
                    Some(next) => addr = next,
                    None => return self.index_down(ctx, &e.to_string()),
                },
            }
        }
    }

    fn index_down(&mut self, ctx: &mut Ctx<Role>, why: &str) {
        self.index_conn = None;
        self.index_state = IndexState::Down;
        self.observed = None;
        // Requests in flight die with the session; a console command waiting on one fails.
        let pending = std::mem::take(&mut self.pending);
        let mut console_failed = false;
        for (_, p) in pending {
            if matches!(p, Pending::Search | Pending::Lookup { .. }) {
                console_failed = true;
            }
        }
        if !self.said_down {
            self.said_down = true;
            self.note(&format!(
                "index: {} unreachable ({why}); reconnecting in the background",
                self.cfg.index
            ));
        }
        if console_failed {
            self.err("the index connection was lost during the command");
            self.finish_command(ctx);
        }
        self.maybe_end_startup(ctx);
        ctx.set_timer(self.backoff, TIMER_RECONNECT);
        self.backoff = (self.backoff * 2).min(BACKOFF_MAX);
    }

    fn request(&mut self, ctx: &mut Ctx<Role>, body: RequestBody, pending: Pending) -> bool {
        let Some(conn) = self.index_conn else {
            return false;
        };
        if self.index_state != IndexState::Ready && !matches!(pending, Pending::Hello) {
            return false;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        ctx.send(conn, wire::framed(&Request { id, body }));
        self.pending.insert(id, pending);
        true
    }

    fn register_entries(&mut self, ctx: &mut Ctx<Role>, entries: Vec<FileEntry>) {
        if entries.is_empty() {
            return;
        }
        let mut batch = Vec::new();
        let mut bytes = 0;
        for e in entries {
            bytes += e.name.len() + 48;
            batch.push(e);
            if bytes >= REGISTER_BATCH_BYTES {
                let files = std::mem::take(&mut batch);
                self.request(ctx, RequestBody::Register { files }, Pending::Register);
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            self.request(
                ctx,
                RequestBody::Register { files: batch },
                Pending::Register,
            );
        }
    }

    fn handle_index_response(&mut self, ctx: &mut Ctx<Role>, resp: Response) {
        let Some(pending) = self.pending.remove(&resp.id) else {
            if let ResponseBody::Error { code, message } = &resp.body {
                let text = format!("index: {code}: {message}");
                self.err(&text);
            }
            return;
        };
        match (pending, resp.body) {
            (Pending::Hello, ResponseBody::Welcome { observed, .. }) => {
                self.index_state = IndexState::Ready;
                self.observed = Some(observed);
                self.backoff = BACKOFF_MIN;
                if self.said_down {
                    self.said_down = false;
                    self.note(&format!("index: connected to {} again", self.cfg.index));
                }
                log::info!("index session up; seen as {observed}");
                let entries = self.share.entries();
                self.register_entries(ctx, entries);
                if !self.ping_armed {
                    self.ping_armed = true;
                    ctx.set_timer(PING_INTERVAL, TIMER_PING);
                }
                self.maybe_end_startup(ctx);
            }
            (
                Pending::Register,
                ResponseBody::Registered {
                    rejected, total, ..
                },
            ) => {
                if rejected > 0 {
                    self.note(&format!("index: refused {rejected} entries"));
                }
                self.registered_once = true;
                log::debug!("index holds {total} of our files");
                self.maybe_end_startup(ctx);
            }
            (Pending::Unregister, ResponseBody::Unregistered { .. }) => {}
            (Pending::Ping, ResponseBody::Pong) | (Pending::Bye, ResponseBody::Bye) => {}
            (Pending::Search, ResponseBody::SearchResults { hits, truncated }) => {
                let mut text = String::new();
                for h in &hits {
                    let _ = writeln!(
                        text,
                        "{} {} {} {}",
                        h.hash,
                        h.size,
                        h.holders,
                        display_name(&h.name)
                    );
                }
                let _ = write!(
                    text,
                    "{} result{}{}",
                    hits.len(),
                    if hits.len() == 1 { "" } else { "s" },
                    if truncated { " (more not shown)" } else { "" }
                );
                self.out(&text);
                self.finish_command(ctx);
            }
            (
                Pending::Lookup {
                    target, then_get, ..
                },
                ResponseBody::Holders { files },
            ) => match then_get {
                None => {
                    let text = format_lookup(&files);
                    self.out(&text);
                    self.last_lookup = Some((target, files));
                    self.finish_command(ctx);
                }
                Some(holder) => self.start_get(ctx, &target, files, holder),
            },
            (
                Pending::Lookup {
                    target,
                    then_get,
                    by_name_retry,
                },
                ResponseBody::Error { code, message },
            ) => {
                // Hex that is no known hash may still be a file's name.
                if code == ErrorCode::NotFound && !by_name_retry {
                    if let Target::HashPrefix(p) = &target {
                        let key = LookupKey::Name(p.clone());
                        let pending = Pending::Lookup {
                            target: target.clone(),
                            then_get,
                            by_name_retry: true,
                        };
                        if self.request(ctx, RequestBody::Lookup { key }, pending) {
                            return;
                        }
                    }
                }
                let text = match code {
                    ErrorCode::NotFound => format!("no peer shares {target}"),
                    _ => format!("lookup {target}: {message}"),
                };
                self.err(&text);
                self.finish_command(ctx);
            }
            (Pending::Search, ResponseBody::Error { message, .. }) => {
                self.err(&format!("search: {message}"));
                self.finish_command(ctx);
            }
            (_, ResponseBody::Error { code, message }) => {
                self.err(&format!("index: {code}: {message}"));
                if code == ErrorCode::VersionMismatch {
                    // Retrying cannot help; say it once and stay down.
                    self.backoff = BACKOFF_MAX;
                }
                self.maybe_end_startup(ctx);
            }
            (_, other) => {
                log::warn!("unexpected index answer: {other:?}");
            }
        }
    }

    // ----- console ------------------------------------------------------------------------

    /// Runs queued console lines until one has to wait.
    fn run_commands(&mut self, ctx: &mut Ctx<Role>) {
        while self.running.is_none() && !self.output.is_backed_up() {
            let Some(line) = self.lines.pop_front() else {
                if self.stdin_done && self.cfg.console {
                    self.quit(ctx);
                }
                return;
            };
            match console::parse(&line) {
                Ok(None) => {}
                Ok(Some(cmd)) => self.execute(ctx, cmd),
                Err(e) => self.err(&e.0),
            }
        }
    }

    fn finish_command(&mut self, ctx: &mut Ctx<Role>) {
        if matches!(self.running, Some(Running::Get)) {
            self.output.progress_end();
        }
        self.running = None;
        self.run_commands(ctx);
    }

    fn execute(&mut self, ctx: &mut Ctx<Role>, cmd: Command) {
        match cmd {
            Command::Help => self.out(console::HELP),
            Command::Search(words) => {
                let body = RequestBody::Search {
                    query: words,
                    limit: 0,
                };
                if self.request(ctx, body, Pending::Search) {
                    self.running = Some(Running::Index);
                } else {
                    self.err("search: not connected to the index");
                }
            }
            Command::Lookup(target) => self.lookup(ctx, target, None),
            Command::Get { target, holder } => {
                // "get X N" after "lookup X" uses that lookup's numbering.
                if let (Some(n), Some((last, files))) = (holder, &self.last_lookup) {
                    if *last == target {
                        let files = files.clone();
                        self.start_get(ctx, &target, files, Some(n));
                        return;
                    }
                }
                self.lookup(ctx, target, Some(holder));
            }
            Command::Files => {
                let mut text = String::new();
                for f in self.share.files() {
                    let _ = writeln!(text, "{} {} {}", f.hash, f.size, display_name(&f.name));
                }
                let _ = write!(
                    text,
                    "{} file{}, {} bytes",
                    self.share.len(),
                    if self.share.len() == 1 { "" } else { "s" },
                    self.share.total_bytes()
                );
                self.out(&text);
            }
            Command::Register(paths) => {
                let job = if paths.is_empty() {
                    Job::Rescan { console: true }
                } else {
                    Job::Paths {
                        paths: paths.iter().map(PathBuf::from).collect(),
                        console: true,
                    }
                };
                if self.jobs.send(job).is_ok() {
                    self.running = Some(Running::Scan);
                } else {
                    self.err("register: the hashing thread is gone");
                }
            }
            Command::Unregister(target) => self.unregister(ctx, &target),
            Command::Status => {
                let text = self.status_text(ctx);
                self.out(&text);
            }
            Command::Quit => self.quit(ctx),
        }
    }

    fn lookup(&mut self, ctx: &mut Ctx<Role>, target: Target, then_get: Option<Option<usize>>) {
        let key = match &target {
            Target::Hash(h) => LookupKey::Hash(*h),
            Target::HashPrefix(p) => LookupKey::HashPrefix(p.clone()),
            Target::Name(n) => LookupKey::Name(n.clone()),
        };
        let pending = Pending::Lookup {
            target,
            then_get,
            by_name_retry: false,
        };
        if self.request(ctx, RequestBody::Lookup { key }, pending) {
            self.running = Some(Running::Index);
        } else {
            self.err("not connected to the index");
        }
    }

    fn unregister(&mut self, ctx: &mut Ctx<Role>, target: &Target) {
        let hashes: Vec<FileHash> = {
            let found = self.share.find(|f| match target {
                Target::Hash(h) => f.hash == *h,
                Target::HashPrefix(p) => f.hash.has_hex_prefix(p) || f.name == *p,
                Target::Name(n) => f.name == *n,
            });
            let mut h: Vec<FileHash> = found.iter().map(|f| f.hash).collect();
            h.sort();
            h.dedup();
            h
        };
        match hashes.len() {
            0 => self.err(&format!("unregister: this peer does not share {target}")),
            1 => {
                let removed = self.share.remove_hash(&hashes[0]);
                self.request(
                    ctx,
                    RequestBody::Unregister {
                        hashes: hashes.clone(),
                    },
                    Pending::Unregister,
                );
                let names: Vec<String> = removed.iter().map(|f| display_name(&f.name)).collect();
                self.out(&format!("unregistered {} {}", hashes[0], names.join(", ")));
            }
            n => self.err(&format!(
                "unregister: {n} files match {target}; name one by hash"
            )),
        }
    }

    fn status_text(&self, ctx: &Ctx<Role>) -> String {
        let mut s = String::new();
        let _ = match (self.index_state, self.observed) {
            (IndexState::Ready, Some(addr)) => {
                writeln!(s, "index: connected to {} (seen as {addr})", self.cfg.index)
            }
            (IndexState::Down, _) => {
                writeln!(s, "index: disconnected from {}, retrying", self.cfg.index)
            }
            _ => writeln!(s, "index: connecting to {}", self.cfg.index),
        };
        let _ = writeln!(
            s,
            "sharing: {} files, {} bytes from {}",
            self.share.len(),
            self.share.total_bytes(),
            self.cfg.share_dir.display()
        );
        let _ = writeln!(s, "serving on port {}", self.listen_port);
        let active: Vec<(FileHash, u64)> = ctx
            .states()
            .filter_map(|(_, r)| match r {
                Role::Upload { sending } => *sending,
                _ => None,
            })
            .collect();
        let _ = writeln!(
            s,
            "uploads: {} in progress, {} done, {} bytes sent",
            active.len(),
            self.uploads_done,
            self.bytes_sent
        );
        match &self.download {
            Some(d) => {
                let _ = write!(
                    s,
                    "download: {} {}/{} bytes",
                    display_name(&d.name),
                    d.have,
                    d.size
                );
            }
            None => {
                let _ = write!(s, "downloads: none in progress");
            }
        }
        s
    }

    fn quit(&mut self, ctx: &mut Ctx<Role>) {
        if let Some(conn) = self.index_conn {
            if self.index_state == IndexState::Ready {
                self.request(ctx, RequestBody::Bye, Pending::Bye);
            }
            ctx.close_after_flush(conn, CloseReason::Local);
        }
        ctx.stop();
    }

    // ----- downloads ----------------------------------------------------------------------

    fn start_get(
        &mut self,
        ctx: &mut Ctx<Role>,
        target: &Target,
        files: Vec<HeldFile>,
        holder: Option<usize>,
    ) {
        let file = match files.len() {
            0 => {
                self.err(&format!("no peer shares {target}"));
                return self.finish_command(ctx);
            }
            1 => files.into_iter().next().expect("one file"),
            _ => {
                let mut text = format!(
                    "{} different files are called {target}; get one by hash:\n",
                    files.len()
                );
                text.push_str(&format_lookup(&files));
                self.err(&text);
                return self.finish_command(ctx);
            }
        };
        if let Some(mine) = self.share.by_hash(&file.hash) {
            let text = format!("already have {} ({} bytes)", mine.path.display(), mine.size);
            self.out(&text);
            return self.finish_command(ctx);
        }
        // Our own address may be listed if we shared it before; never download from self.
        let me = self.observed;
        let mut holders: Vec<SocketAddr> = file
            .holders
            .iter()
            .copied()
            .filter(|h| Some(*h) != me)
            .collect();
        if let Some(n) = holder {
            if n > file.holders.len() {
                self.err(&format!(
                    "holder {n} does not exist: the lookup listed {}",
                    file.holders.len()
                ));
                return self.finish_command(ctx);
            }
            // Holder N first, the others as fallbacks.
            let chosen = file.holders[n - 1];
            holders.retain(|h| *h != chosen);
            holders.insert(0, chosen);
        }
        if holders.is_empty() {
            self.err(&format!("no other peer holds {target}"));
            return self.finish_command(ctx);
        }
        let dl = match Download::new(
            &self.cfg.downloads_dir,
            file.hash,
            file.size,
            file.name.clone(),
            holders,
            self.hash_done.clone(),
        ) {
            Ok(d) => d,
            Err(e) => {
                self.err(&format!("get: {e}"));
                return self.finish_command(ctx);
            }
        };
        if dl.have > 0 {
            self.note(&format!(
                "get: resuming {} at {} of {} bytes",
                display_name(&dl.name),
                dl.have,
                dl.size
            ));
        }
        self.download = Some(dl);
        self.running = Some(Running::Get);
        if self.cfg.progress_bar && !self.progress_armed {
            self.progress_armed = true;
            ctx.set_timer(PROGRESS_EVERY, TIMER_PROGRESS);
        }
        self.try_holder(ctx);
    }

    /// Connects to the current holder, or finishes the download if none is left or
    /// nothing is missing.
    fn try_holder(&mut self, ctx: &mut Ctx<Role>) {
        let Some(dl) = self.download.as_mut() else {
            return;
        };
        if dl.is_complete() {
            return self.complete_download();
        }
        let Some(addr) = dl.holder() else {
            let text = format!(
                "get {}: every holder failed: {}{}",
                display_name(&dl.name),
                dl.failures.join("; "),
                if dl.have > 0 {
                    format!(" ({} bytes kept for resume)", dl.have)
                } else {
                    String::new()
                }
            );
            self.download = None;
            self.err(&text);
            return self.finish_command(ctx);
        };
        dl.received_now = 0;
        dl.started = Instant::now();
        if !self.cfg.progress_bar {
            let text = format!(
                "get: downloading {} ({} bytes) from {addr}",
                display_name(&dl.name),
                dl.size
            );
            self.note(&text);
        }
        match ctx.connect(addr, Role::Download) {
            Ok(conn) => {
                ctx.set_idle_timeout(conn, Some(DOWNLOAD_IDLE));
                self.download_conn = Some(conn);
            }
            Err(e) => {
                if let Some(dl) = self.download.as_mut() {
                    dl.next_holder(&e.to_string());
                }
                self.try_holder(ctx);
            }
        }
    }

    /// The current holder failed; the connection is (being) closed.
    fn holder_failed(&mut self, ctx: &mut Ctx<Role>, why: &str) {
        self.download_conn = None;
        let Some(dl) = self.download.as_mut() else {
            return;
        };
        dl.next_holder(why);
        self.try_holder(ctx);
    }

    /// Every byte is in the partial file: wait for the verifying thread's hash
    /// ([`Event::Hashed`], handled by [`Peer::handle_hashed`]).
    fn complete_download(&mut self) {
        if let Some(dl) = self.download.as_mut() {
            dl.finish();
        }
    }

    /// The verifying thread hashed a complete partial file.
    fn handle_hashed(
        &mut self,
        ctx: &mut Ctx<Role>,
        generation: u64,
        hashed: std::io::Result<FileHash>,
    ) {
        let Some(mut dl) = self.download.take() else {
            return;
        };
        if dl.generation != generation || !dl.is_complete() {
            // From an attempt that was discarded since.
            self.download = Some(dl);
            return;
        }
        match dl.check(hashed) {
            Ok(()) => {}
            Err(e @ TransferError::Corrupt) => {
                // Bytes from somewhere were wrong: start over from the next holder.
                dl.next_holder(&e.to_string());
                self.download = Some(dl);
                return self.try_holder(ctx);
            }
            Err(e) => {
                let text = format!("get {}: {e}", display_name(&dl.name));
                self.err(&text);
                return self.finish_command(ctx);
            }
        }
        let received_in = dl.started.elapsed();
        let landing = Instant::now();
        let landed = dl.land(&self.cfg.downloads_dir);
        log::debug!(
            "download: bytes in {received_in:?}, fsync and rename in {:?}",
            landing.elapsed()
        );
        match landed {
            Ok((path, true)) => {
                self.out(&format!(
                    "already have {} ({} bytes)",
                    path.display(),
                    dl.size
                ));
            }
            Ok((path, false)) => {
                let secs = dl.started.elapsed().as_secs_f64().max(1e-6);
                let rate = dl.received_now as f64 / secs / (1 << 20) as f64;
                self.out(&format!(
                    "saved {} ({} bytes in {secs:.3} s, {rate:.1} MiB/s)",
                    path.display(),
                    dl.size,
                ));
                // Downloads inside the share are shared once verified.
                if path.starts_with(&self.cfg.share_dir) {
                    if let Ok(meta) = std::fs::metadata(&path) {
                        let f = SharedFile {
                            name: path
                                .file_name()
                                .map(|n| n.to_string_lossy().into_owned())
                                .unwrap_or_default(),
                            path: path.clone(),
                            size: meta.len(),
                            mtime_ns: share::mtime_ns(&meta),
                            hash: dl.hash,
                        };
                        let diff = self.share.upsert(vec![f]);
                        self.register_entries(ctx, diff.added);
                    }
                }
            }
            Err(e) => self.err(&format!("get: {e}")),
        }
        self.finish_command(ctx);
    }

    fn draw_progress(&mut self) {
        let Some(dl) = &self.download else { return };
        self.output.progress(&dl.name, dl.have, dl.size);
    }

    // ----- uploads ------------------------------------------------------------------------

    fn handle_get(
        &mut self,
        ctx: &mut Ctx<Role>,
        conn: ConnId,
        sending: &mut Option<(FileHash, u64)>,
        payload: &[u8],
    ) -> Verdict {
        let req = match wire::decode::<TransferRequest>(payload) {
            Ok(r) => r,
            Err(e) => {
                if let Some(v) = wire::peek_version(payload, false) {
                    if v != PROTOCOL_VERSION {
                        return refuse(
                            ctx,
                            conn,
                            ErrorCode::VersionMismatch,
                            format!("protocol version {v} is not supported; this peer speaks {PROTOCOL_VERSION}"),
                        );
                    }
                }
                return refuse(ctx, conn, ErrorCode::Malformed, e.to_string());
            }
        };
        let TransferRequest::Get {
            version,
            hash,
            offset,
        } = req;
        if version != PROTOCOL_VERSION {
            return refuse(
                ctx,
                conn,
                ErrorCode::VersionMismatch,
                format!("protocol version {version} is not supported; this peer speaks {PROTOCOL_VERSION}"),
            );
        }
        let Some(file) = self.share.by_hash(&hash).cloned() else {
            return refuse(
                ctx,
                conn,
                ErrorCode::NotFound,
                format!("not sharing {hash}"),
            );
        };
        let opened = std::fs::File::open(&file.path).and_then(|f| Ok((f.metadata()?, f)));
        let (meta, handle) = match opened {
            Ok(x) => x,
            Err(e) => {
                self.file_changed(ctx, &file);
                return refuse(
                    ctx,
                    conn,
                    ErrorCode::Io,
                    format!("cannot read the file: {e}"),
                );
            }
        };
        if !file.is_unchanged(&meta) {
            self.file_changed(ctx, &file);
            return refuse(
                ctx,
                conn,
                ErrorCode::NotFound,
                "the file changed since it was shared; it is being re-hashed".into(),
            );
        }
        if offset > file.size {
            return refuse(
                ctx,
                conn,
                ErrorCode::Invalid,
                format!("offset {offset} is past the end ({} bytes)", file.size),
            );
        }
        ctx.send(
            conn,
            wire::framed(&TransferResponse::Sending {
                name: file.name.clone(),
                size: file.size,
                offset,
            }),
        );
        ctx.send_file(conn, handle, offset, file.size - offset);
        ctx.notify_drained(conn);
        // While a file streams, the connection may be slow: no idle limit beyond progress.
        ctx.set_idle_timeout(conn, Some(UPLOAD_IDLE));
        *sending = Some((hash, file.size - offset));
        log::info!(
            "upload of {} from {offset} to {:?}",
            display_name(&file.name),
            ctx.remote_addr(conn)
        );
        Verdict::Continue
    }

    /// A shared file no longer matches its hash: stop announcing it and hash it again.
    fn file_changed(&mut self, ctx: &mut Ctx<Role>, file: &SharedFile) {
        if self.share.remove_path(&file.path).is_some() {
            self.request(
                ctx,
                RequestBody::Unregister {
                    hashes: vec![file.hash],
                },
                Pending::Unregister,
            );
        }
        let _ = self.jobs.send(Job::Paths {
            paths: vec![file.path.clone()],
            console: false,
        });
    }

    // ----- hashing results ----------------------------------------------------------------

    fn handle_scanned(
        &mut self,
        ctx: &mut Ctx<Role>,
        job: Job,
        files: Vec<SharedFile>,
        warnings: Vec<String>,
    ) {
        for w in warnings {
            self.note(&format!("warning: {w}"));
        }
        let (diff, console) = match job {
            Job::Rescan { console } => (
                self.share.replace_under(&self.cfg.share_dir, files),
                console,
            ),
            Job::Paths { console, .. } => (self.share.upsert(files), console),
        };
        let (added, removed) = (diff.added.len(), diff.removed.len());
        if !diff.removed.is_empty() {
            self.request(
                ctx,
                RequestBody::Unregister {
                    hashes: diff.removed,
                },
                Pending::Unregister,
            );
        }
        self.register_entries(ctx, diff.added);
        let summary = format!(
            "sharing {} files ({} bytes): {added} new, {removed} withdrawn",
            self.share.len(),
            self.share.total_bytes()
        );
        if matches!(self.running, Some(Running::Startup)) {
            self.startup_scanned = true;
            self.note(&summary);
            self.maybe_end_startup(ctx);
        } else if console && matches!(self.running, Some(Running::Scan)) {
            self.out(&summary);
            self.finish_command(ctx);
        }
    }

    /// Startup ends once the share is hashed and the index has it (or is unreachable).
    fn maybe_end_startup(&mut self, ctx: &mut Ctx<Role>) {
        if !matches!(self.running, Some(Running::Startup)) || !self.startup_scanned {
            return;
        }
        let registered = self.index_state == IndexState::Ready
            && !self
                .pending
                .values()
                .any(|p| matches!(p, Pending::Register | Pending::Hello));
        if registered || self.index_state == IndexState::Down {
            self.finish_command(ctx);
        }
    }
}

/// Answers a transfer request with an error and closes after sending it.
fn refuse(ctx: &mut Ctx<Role>, conn: ConnId, code: ErrorCode, message: String) -> Verdict {
    ctx.send(
        conn,
        wire::framed(&TransferResponse::Error {
            code,
            message: message.clone(),
        }),
    );
    Verdict::CloseAfterFlush(CloseReason::Protocol(message))
}

fn format_lookup(files: &[HeldFile]) -> String {
    let mut text = String::new();
    for f in files {
        let _ = writeln!(text, "{} {} {}", f.hash, f.size, display_name(&f.name));
        for (i, h) in f.holders.iter().enumerate() {
            let _ = writeln!(text, "  {} {h}", i + 1);
        }
    }
    text.pop();
    text
}

/// `1.5 GiB`-style sizes for the progress bar.
fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl Handler for Peer {
    type Conn = Role;

    fn handle_accept(&mut self, ctx: &mut Ctx<Role>, conn: ConnId, _: SocketAddr) -> Role {
        ctx.set_idle_timeout(conn, Some(UPLOAD_IDLE));
        Role::Upload { sending: None }
    }

    fn handle_connected(&mut self, ctx: &mut Ctx<Role>, conn: ConnId, role: &mut Role) -> Verdict {
        match role {
            Role::Index => {
                self.index_state = IndexState::AwaitingWelcome;
                let body = RequestBody::Hello {
                    version: PROTOCOL_VERSION,
                    listen_port: self.listen_port,
                    agent: format!("p2pshare-peer/{}", env!("CARGO_PKG_VERSION")),
                };
                self.request(ctx, body, Pending::Hello);
            }
            Role::Download => {
                if let Some(dl) = &self.download {
                    ctx.send(
                        conn,
                        wire::framed(&TransferRequest::Get {
                            version: PROTOCOL_VERSION,
                            hash: dl.hash,
                            offset: dl.have,
                        }),
                    );
                }
            }
            Role::Upload { .. } => {}
        }
        Verdict::Continue
    }

    fn handle_frame(
        &mut self,
        ctx: &mut Ctx<Role>,
        conn: ConnId,
        role: &mut Role,
        payload: &[u8],
    ) -> Verdict {
        match role {
            Role::Index => match wire::decode::<Response>(payload) {
                Ok(resp) => {
                    self.handle_index_response(ctx, resp);
                    Verdict::Continue
                }
                Err(e) => Verdict::Close(CloseReason::Protocol(format!("index sent {e}"))),
            },
            Role::Upload { sending } => self.handle_get(ctx, conn, sending, payload),
            Role::Download => {
                let Some(dl) = self.download.as_mut() else {
                    return Verdict::Close(CloseReason::Local);
                };
                match wire::decode::<TransferResponse>(payload) {
                    Ok(TransferResponse::Sending { size, offset, .. }) => {
                        match dl.accept_header(size, offset) {
                            Ok(0) => {
                                self.download_conn = None;
                                self.complete_download();
                                Verdict::Close(CloseReason::Local)
                            }
                            Ok(n) => {
                                ctx.expect_raw(conn, n);
                                Verdict::Continue
                            }
                            Err(e) => Verdict::Close(CloseReason::Protocol(e.to_string())),
                        }
                    }
                    Ok(TransferResponse::Error { code, message }) => {
                        Verdict::Close(CloseReason::Protocol(format!("{code}: {message}")))
                    }
                    Err(e) => Verdict::Close(CloseReason::Protocol(format!("holder sent {e}"))),
                }
            }
        }
    }

    fn handle_raw(&mut self, ctx: &mut Ctx<Role>, _: ConnId, _: &mut Role, data: &[u8]) -> Verdict {
        let Some(dl) = self.download.as_mut() else {
            return Verdict::Close(CloseReason::Local);
        };
        match dl.write(data) {
            Ok(()) => {}
            Err(e @ TransferError::Local(_)) => {
                // Our disk, not the holder: stop, keep the partial for a later resume.
                let text = format!(
                    "get {}: {e} ({} bytes kept for resume)",
                    display_name(&dl.name),
                    dl.have
                );
                self.download = None;
                self.download_conn = None;
                self.err(&text);
                self.finish_command(ctx);
                return Verdict::Close(CloseReason::Local);
            }
            Err(e) => return Verdict::Close(CloseReason::Protocol(e.to_string())),
        }
        if dl.is_complete() {
            // Extra bytes after the file are ignored: the connection closes here.
            self.download_conn = None;
            self.complete_download();
            return Verdict::Close(CloseReason::Local);
        }
        Verdict::Continue
    }

    fn handle_drained(&mut self, _: &mut Ctx<Role>, _: ConnId, role: &mut Role) -> Verdict {
        if let Role::Upload { sending } = role {
            if let Some((_, bytes)) = sending.take() {
                self.uploads_done += 1;
                self.bytes_sent += bytes;
            }
        }
        Verdict::Continue
    }

    fn handle_close(
        &mut self,
        ctx: &mut Ctx<Role>,
        conn: ConnId,
        role: Role,
        reason: &CloseReason,
    ) {
        match role {
            Role::Index if self.index_conn == Some(conn) => {
                // (Not when the peer itself closed it: it is quitting.)
                if self.index_state == IndexState::Connecting && *reason != CloseReason::Local {
                    if let Some(next) = self.index_addrs.pop_front() {
                        // This address refused: the name's next one may listen.
                        self.index_conn = None;
                        return self.connect_index_at(ctx, next);
                    }
                }
                self.index_addrs.clear();
                self.index_down(ctx, &reason.to_string());
            }
            Role::Download if self.download_conn == Some(conn) => {
                let why = match reason {
                    CloseReason::Eof => "the holder closed the connection early".to_string(),
                    other => other.to_string(),
                };
                self.holder_failed(ctx, &why);
            }
            Role::Upload {
                sending: Some((hash, _)),
            } => {
                log::info!("upload of {hash} ended: {reason}");
            }
            _ => {}
        }
    }

    fn handle_wake(&mut self, ctx: &mut Ctx<Role>) {
        if self
            .shutdown
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
        {
            self.note("peer: shutting down");
            return self.quit(ctx);
        }
        while let Ok(event) = self.events.try_recv() {
            match event {
                Event::Line(line) => {
                    self.lines.push_back(line);
                }
                Event::StdinEof => self.stdin_done = true,
                Event::ScanProgress(p) => {
                    if p.files_done < p.files {
                        self.note(&format!(
                            "hashing: {}/{} files, {}/{}",
                            p.files_done,
                            p.files,
                            human_bytes(p.bytes_done),
                            human_bytes(p.bytes)
                        ));
                    }
                }
                Event::Scanned {
                    job,
                    files,
                    warnings,
                } => self.handle_scanned(ctx, job, files, warnings),
                Event::Hashed(generation, hashed) => self.handle_hashed(ctx, generation, hashed),
                Event::Resolved(result) => self.handle_resolved(ctx, result),
            }
        }
        self.run_commands(ctx);
    }

    fn handle_turn_end(&mut self, ctx: &mut Ctx<Role>) {
        self.flush_output();
        // Room in the output may let waiting console commands run.
        self.run_commands(ctx);
        self.flush_output();
    }

    fn handle_timer(&mut self, ctx: &mut Ctx<Role>, timer: u64) {
        match timer {
            TIMER_RECONNECT if self.index_conn.is_none() => self.connect_index(ctx),
            TIMER_PING => {
                self.ping_armed = false;
                if self.index_state == IndexState::Ready {
                    self.request(ctx, RequestBody::Ping, Pending::Ping);
                    self.ping_armed = true;
                    ctx.set_timer(PING_INTERVAL, TIMER_PING);
                }
            }
            TIMER_PROGRESS => {
                self.progress_armed = false;
                if self.download.is_some() {
                    self.draw_progress();
                    self.progress_armed = true;
                    ctx.set_timer(PROGRESS_EVERY, TIMER_PROGRESS);
                }
            }
            _ => {}
        }
    }
}

/// Resolves the downloads directory: the share directory unless given.
pub fn downloads_dir(share: &Path, downloads: Option<&Path>) -> PathBuf {
    downloads.map_or_else(|| share.to_path_buf(), Path::to_path_buf)
}
