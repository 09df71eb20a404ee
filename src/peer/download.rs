//! One download: the [`Download`] machine (holders tried in order, resume offset, stall
//! detection, the verifying thread's result as an input) over a [`PartFile`] (the partial file
//! under a temporary name, verified against the requested hash, then renamed into place).
//! The machine owns its holders; a download connection's slot names only the download and the
//! attempt it serves ([`Attempt`]), so one download can later own many connections.
//!
//! # Invariants
//! - One attempt is live at a time; events from any other attempt's connection are ignored,
//!   so a late close never fails the next holder.
//! - Any failure of the holder (error frame, close, wrong header, [`DownloadLimits::stall`]
//!   without bytes, a rate under the floor over a whole window ([`RateFloor`]), a wait in its
//!   upload queue past [`DownloadLimits::queue_wait`], bytes that do not verify) moves to the
//!   next holder; a local disk error fails the download at once and keeps the partial file.
//! - Every download ends: each holder is bounded by the deadlines above and the whole
//!   download by [`DownloadLimits::max_get`].
//! - Bytes go to `DOWNLOADS/.<hash>.p2pshare-part`, never to the final name. The final name
//!   appears only by `rename` after the BLAKE3 of the whole file matched and the data was
//!   fsynced, so nothing partial or unverified ever sits under a final name.
//! - A partial file is resumable from any holder of the same hash: the hash is of the bytes,
//!   not of who sent them. If the finished file does not verify, the partial is deleted (we
//!   cannot tell which holder lied) and the next holder starts from zero.
//! - The final name is sanitised ([`names::sanitize`]) and never overwrites a different file.
//! - BLAKE3 runs on a verifying thread that follows the partial file as it grows, reading it
//!   back from the page cache, so hashing overlaps the transfer instead of costing the reactor
//!   thread; the reactor learns the result through a callback (the peer turns it into an
//!   event). Each (re)opening of the partial file has its own generation, so a result from a
//!   discarded attempt is recognised and ignored.

use super::core::{Action, Role};
use super::names::{self, display_name, Landing};
use super::rate::RateFloor;
use super::share::PART_SUFFIX;
use crate::reactor::{CloseReason, ConnId, Verdict};
use crate::sys;
use crate::wire::{self, FileHash, HeldFile, TransferRequest, TransferResponse, PROTOCOL_VERSION};
use std::collections::VecDeque;
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// A number no other attempt of this process has: tells a result of the current attempt from
/// one of a discarded attempt.
fn fresh_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Receives the BLAKE3 of a complete partial file: `(generation, result)`. Called on the
/// verifying thread.
pub type HashDone = Arc<dyn Fn(u64, io::Result<FileHash>) + Send + Sync>;

/// How far the verifying thread may read, and whether it should finish or stop.
#[derive(Default)]
struct Follow {
    /// Bytes of the partial file written so far.
    written: u64,
    /// No more bytes will come: hash up to `written`, then report.
    finished: bool,
    /// The attempt was abandoned: stop without reporting.
    cancelled: bool,
}

/// A thread hashing a partial file as it grows. Dropping it stops the thread.
struct HashFollower {
    shared: Arc<(Mutex<Follow>, Condvar)>,
}

impl HashFollower {
    fn start(path: &Path, generation: u64, done: HashDone) -> io::Result<HashFollower> {
        let file = File::open(path)?;
        let shared = Arc::new((Mutex::new(Follow::default()), Condvar::new()));
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("verify".into())
            .spawn(move || {
                if let Some(result) = follow(&file, &theirs) {
                    done(generation, result);
                }
            })?;
        Ok(HashFollower { shared })
    }

    fn update(&self, change: impl FnOnce(&mut Follow)) {
        let (lock, wake) = &*self.shared;
        let mut follow = lock.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut follow);
        wake.notify_one();
    }
}

impl Drop for HashFollower {
    fn drop(&mut self) {
        self.update(|f| f.cancelled = true);
    }
}

/// The verifying thread: hashes `file` up to what has been written, waiting for more, until
/// told the file is complete (`Some(hash)`) or abandoned (`None`).
fn follow(file: &File, shared: &(Mutex<Follow>, Condvar)) -> Option<io::Result<FileHash>> {
    let (lock, wake) = shared;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut hashed = 0u64;
    loop {
        let (target, finished) = {
            let mut f = lock.lock().unwrap_or_else(|e| e.into_inner());
            while !f.cancelled && !f.finished && hashed >= f.written {
                f = wake.wait(f).unwrap_or_else(|e| e.into_inner());
            }
            if f.cancelled {
                return None;
            }
            (f.written, f.finished)
        };
        if finished && hashed >= target {
            return Some(Ok(FileHash(*hasher.finalize().as_bytes())));
        }
        while hashed < target {
            let want = (target - hashed).min(buf.len() as u64) as usize;
            match file.read_at(&mut buf[..want], hashed) {
                Ok(0) => {
                    return Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the partial file shrank while it was verified",
                    )))
                }
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    hashed += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Writeback of received data is started every this many bytes, so it overlaps the transfer.
const WRITEBACK_BYTES: u64 = 8 << 20;

/// Why a download (or an attempt at one holder) failed.
#[derive(Debug)]
pub enum TransferError {
    /// Writing the partial file failed (disk full, permissions): not the holder's fault.
    Local(io::Error),
    /// The holder misbehaved or went away; try the next one.
    Holder(String),
    /// The whole file arrived but its hash is wrong.
    Corrupt,
}

impl std::fmt::Display for TransferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferError::Local(e) => write!(f, "cannot write the download: {e}"),
            TransferError::Holder(m) => f.write_str(m),
            TransferError::Corrupt => f.write_str("the bytes received do not match the hash"),
        }
    }
}

/// The file side of one download: the partial file, its verifying thread, landing.
pub struct PartFile {
    /// What is wanted.
    pub hash: FileHash,
    /// Its size, from the index.
    pub size: u64,
    /// The name to save it under (untrusted; sanitised when landing).
    pub name: String,
    /// Where the partial bytes go.
    pub part_path: PathBuf,
    part: Option<File>,
    /// Hashes the partial file as it grows.
    follower: Option<HashFollower>,
    /// Tells results of this attempt from those of a discarded one.
    pub generation: u64,
    done: HashDone,
    /// Bytes in the partial file.
    pub have: u64,
    /// Bytes already handed to the kernel for writeback.
    written_back: u64,
}

impl PartFile {
    /// Prepares a download into `dir`, resuming from an existing partial file. `done` is
    /// called (on another thread) with [`PartFile::generation`] and the file's hash once
    /// [`PartFile::finish`] was called and every byte is hashed.
    pub fn open(
        dir: &Path,
        hash: FileHash,
        size: u64,
        name: String,
        done: HashDone,
    ) -> Result<PartFile, TransferError> {
        let part_path = dir.join(format!(".{hash}{PART_SUFFIX}"));
        let mut d = PartFile {
            hash,
            size,
            name,
            part_path,
            part: None,
            follower: None,
            generation: fresh_generation(),
            done,
            have: 0,
            written_back: 0,
        };
        d.open_part().map_err(local(&d.part_path))?;
        Ok(d)
    }

    /// Opens (or creates) the partial file and starts hashing what it already holds.
    fn open_part(&mut self) -> io::Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.part_path)?;
        let mut len = file.metadata()?.len();
        if len > self.size {
            // Not a prefix of this file: start over.
            file.set_len(0)?;
            len = 0;
        }
        self.have = len;
        self.written_back = len;
        let follower = HashFollower::start(&self.part_path, self.generation, self.done.clone())?;
        follower.update(|f| f.written = len);
        self.follower = Some(follower);
        self.part = Some(file);
        Ok(())
    }

    /// Whether every byte is here.
    pub fn is_complete(&self) -> bool {
        self.have == self.size
    }

    /// Checks a holder's header against what we asked for.
    pub fn accept_header(&mut self, size: u64, offset: u64) -> Result<u64, TransferError> {
        if size != self.size {
            return Err(TransferError::Holder(format!(
                "holder says the file has {size} bytes, the index says {}",
                self.size
            )));
        }
        if offset != self.have {
            return Err(TransferError::Holder(format!(
                "holder sends from offset {offset}, we asked for {}",
                self.have
            )));
        }
        Ok(size - offset)
    }

    /// Appends received bytes to the partial file.
    pub fn write(&mut self, data: &[u8]) -> Result<(), TransferError> {
        let part = self
            .part
            .as_mut()
            .ok_or_else(|| TransferError::Local(io::Error::other("partial file not open")))?;
        part.write_all(data).map_err(local(&self.part_path))?;
        self.have += data.len() as u64;
        let have = self.have;
        if let Some(f) = &self.follower {
            f.update(|f| f.written = have);
        }
        if self.have - self.written_back >= WRITEBACK_BYTES {
            sys::io::start_writeback(part, self.written_back, self.have - self.written_back);
            self.written_back = self.have;
        }
        Ok(())
    }

    /// Every byte is here: the verifying thread finishes and reports the hash.
    pub fn finish(&mut self) {
        if let Some(f) = &self.follower {
            f.update(|f| f.finished = true);
        }
    }

    /// Checks the hash the verifying thread reported. On a mismatch the partial is deleted
    /// and reopened empty under a new generation, so the next holder starts from zero.
    pub fn check(&mut self, hashed: io::Result<FileHash>) -> Result<(), TransferError> {
        match hashed {
            Ok(got) if got == self.hash => Ok(()),
            Ok(_) => {
                self.part = None;
                self.follower = None;
                let _ = fs::remove_file(&self.part_path);
                self.generation = fresh_generation();
                self.open_part().map_err(local(&self.part_path))?;
                Err(TransferError::Corrupt)
            }
            Err(e) => Err(TransferError::Local(e)),
        }
    }

    /// Moves the verified partial file to its final name in `dir`. Returns the final path and
    /// whether an identical file was already there (then nothing new was written).
    pub fn land(&mut self, dir: &Path) -> Result<(PathBuf, bool), TransferError> {
        let part = self
            .part
            .take()
            .ok_or_else(|| TransferError::Local(io::Error::other("partial file not open")))?;
        part.sync_all().map_err(local(&self.part_path))?;
        drop(part);
        let (size, hash) = (self.size, self.hash);
        let landing = names::landing(dir, &self.name, |p| same_file(p, size, &hash));
        match landing {
            Landing::Identical(path) => {
                let _ = fs::remove_file(&self.part_path);
                Ok((path, true))
            }
            Landing::Free(path) => {
                // rename(2) replaces silently; a file created at `path` since we looked would
                // be lost, so link first (fails if it exists), then drop the temporary name.
                match fs::hard_link(&self.part_path, &path) {
                    Ok(()) => {
                        let _ = fs::remove_file(&self.part_path);
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return self.land_retry(dir);
                    }
                    Err(_) => fs::rename(&self.part_path, &path).map_err(local(&path))?,
                }
                sync_dir(dir);
                Ok((path, false))
            }
        }
    }

    fn land_retry(&mut self, dir: &Path) -> Result<(PathBuf, bool), TransferError> {
        self.part = Some(
            OpenOptions::new()
                .read(true)
                .append(true)
                .open(&self.part_path)
                .map_err(local(&self.part_path))?,
        );
        self.land(dir)
    }
}

/// A local failure on `path`, its message naming the path (the person must know which
/// file or directory could not be written).
fn local(path: &Path) -> impl Fn(io::Error) -> TransferError + '_ {
    move |e| TransferError::Local(io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Whether the file at `path` has exactly this size and hash.
fn same_file(path: &Path, size: u64, hash: &FileHash) -> bool {
    match fs::metadata(path) {
        Ok(m) if m.len() == size => {
            super::share::hash_file(path, |_| {}).is_ok_and(|(h, _)| h == *hash)
        }
        _ => false,
    }
}

/// Makes a rename durable; failure only weakens durability, so it is ignored.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// A holder silent this long (connecting, before its header, or between bytes) is given up.
pub const STALL: Duration = Duration::from_secs(15);
/// The default floor of a holder's rate once it sends ([`DownloadLimits::min_rate`]).
pub const MIN_RATE_BYTES_PER_SEC: u64 = 1024;
/// The default window the rate is averaged over ([`DownloadLimits::rate_window`]).
pub const RATE_WINDOW: Duration = Duration::from_secs(10);
/// The default longest wait in one holder's upload queue ([`DownloadLimits::queue_wait`]).
pub const QUEUE_WAIT: Duration = Duration::from_secs(600);
/// The default bound on a whole `get` ([`DownloadLimits::max_get`]).
pub const MAX_GET: Duration = Duration::from_secs(24 * 3600);

/// The bounds every download keeps to, so that a `get` always ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadLimits {
    /// A holder silent this long (connecting, before its header, between bytes) is dropped.
    pub stall: Duration,
    /// A holder sending fewer bytes per second than this, averaged over `rate_window`, is
    /// dropped and the next one tried (0: no floor).
    pub min_rate: u64,
    /// The window `min_rate` is averaged over (a sliding window; see [`RateFloor`]).
    pub rate_window: Duration,
    /// The whole download (every holder, connecting and waiting included) fails after this.
    pub max_get: Duration,
    /// The longest wait in one holder's upload queue; then the next holder is tried.
    pub queue_wait: Duration,
}

impl Default for DownloadLimits {
    fn default() -> Self {
        DownloadLimits {
            stall: STALL,
            min_rate: MIN_RATE_BYTES_PER_SEC,
            rate_window: RATE_WINDOW,
            max_get: MAX_GET,
            queue_wait: QUEUE_WAIT,
        }
    }
}
/// A holder's queue position is shown again at most this often.
const QUEUE_NOTE_EVERY: Duration = Duration::from_secs(1);
/// Progress is reported at most this often.
const PROGRESS_EVERY: Duration = Duration::from_millis(250);

/// Names a download within the peer.
pub type DownloadId = u64;

/// What a download connection serves, kept in its slot: which download, which attempt. The
/// download owns its holders; a connection whose attempt is no longer the live one is stale
/// and its events are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The download.
    pub download: DownloadId,
    /// Which connection attempt of that download.
    pub n: u32,
}

/// What a download tells the rest of the peer.
#[derive(Debug, Clone, PartialEq)]
pub enum DownloadEvent {
    /// Resuming from bytes already in the partial file.
    Resuming {
        /// Bytes kept.
        have: u64,
    },
    /// Connecting to a holder.
    Trying(SocketAddr),
    /// Waiting in the holder's upload queue at this position.
    Queued {
        /// The holder.
        holder: SocketAddr,
        /// 1-based place in its line.
        position: u32,
    },
    /// Bytes arrived: the progress to show.
    Progress {
        /// Bytes on disk.
        have: u64,
    },
    /// Verified and landed.
    Saved {
        /// The final path.
        path: PathBuf,
        /// An identical file was already there.
        existed: bool,
        /// Bytes received in this run, and how long the run took (for the rate).
        received: u64,
        /// Seconds since the run started.
        secs: f64,
    },
    /// Given up: the sentence for the person.
    Failed(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Connecting to the current holder (or about to).
    Connecting,
    /// Get sent; waiting for the header.
    AwaitingHeader,
    /// Waiting in the holder's upload queue for the header.
    Queued,
    /// Raw bytes arriving.
    Receiving,
    /// Every byte is on disk; waiting for the verifying thread's hash.
    Verifying,
    /// Saved or failed: nothing more happens.
    Done,
}

/// The download machine: one file, its holders tried in order, each failure (error, close,
/// stall, wrong header, bytes that do not verify) moving to the next. Inputs are `handle_*`
/// with `now`; outputs are [`Action`]s and [`DownloadEvent`]s.
pub struct Download {
    id: DownloadId,
    part: PartFile,
    dir: PathBuf,
    holders: Vec<SocketAddr>,
    /// Index into `holders` of the one being tried.
    current: usize,
    /// One line per failed holder, for the final error.
    failures: Vec<String>,
    phase: Phase,
    /// The live attempt's number, and its connection once connected.
    attempt: u32,
    conn: Option<ConnId>,
    /// The live attempt is given up if nothing arrives by then.
    deadline: Option<Instant>,
    limits: DownloadLimits,
    /// The current holder's rate, once it sends bytes.
    floor: Option<RateFloor>,
    /// When the floor is next checked.
    rate_check: Option<Instant>,
    /// The whole download fails at this time ([`DownloadLimits::max_get`]).
    give_up: Instant,
    /// The last queue position shown for the current holder, and when.
    queued_shown: Option<(u32, Instant)>,
    started: Instant,
    /// Bytes received in this run (for the rate).
    received: u64,
    next_progress: Instant,
    events: VecDeque<DownloadEvent>,
}

impl Download {
    /// A download of `file` into `dir` from `holders` (in order), resuming a partial file.
    pub fn new(
        id: DownloadId,
        now: Instant,
        dir: &Path,
        file: &HeldFile,
        holders: Vec<SocketAddr>,
        limits: DownloadLimits,
        done: HashDone,
    ) -> Result<Download, TransferError> {
        let part = PartFile::open(dir, file.hash, file.size, file.name.clone(), done)?;
        let mut events = VecDeque::new();
        if part.have > 0 {
            events.push_back(DownloadEvent::Resuming { have: part.have });
        }
        Ok(Download {
            id,
            part,
            dir: dir.to_path_buf(),
            holders,
            current: 0,
            failures: Vec::new(),
            phase: Phase::Connecting,
            attempt: 0,
            conn: None,
            deadline: None,
            limits,
            floor: None,
            rate_check: None,
            give_up: now + limits.max_get,
            queued_shown: None,
            started: now,
            received: 0,
            next_progress: now,
            events,
        })
    }

    /// The file's name (untrusted, unsanitised) and size, and the bytes on disk.
    pub fn progress(&self) -> (&str, u64, u64) {
        (&self.part.name, self.part.have, self.part.size)
    }

    /// Which download this is.
    pub fn id(&self) -> DownloadId {
        self.id
    }

    /// Starts: the first holder, or verification if every byte is already here.
    pub fn start(&mut self, now: Instant, out: &mut VecDeque<Action>) {
        self.try_holder(now, out);
    }

    fn try_holder(&mut self, now: Instant, out: &mut VecDeque<Action>) {
        self.conn = None;
        self.deadline = None;
        self.floor = None;
        self.rate_check = None;
        self.queued_shown = None;
        if self.part.is_complete() {
            self.phase = Phase::Verifying;
            self.part.finish();
            return;
        }
        let Some(&addr) = self.holders.get(self.current) else {
            let kept = if self.part.have > 0 {
                format!(" ({} bytes kept for resume)", self.part.have)
            } else {
                String::new()
            };
            return self.fail(format!(
                "get {}: every holder failed: {}{kept}",
                display_name(&self.part.name),
                self.failures.join("; ")
            ));
        };
        self.attempt += 1;
        self.phase = Phase::Connecting;
        self.received = 0;
        self.started = now;
        self.deadline = Some(now + self.limits.stall);
        self.events.push_back(DownloadEvent::Trying(addr));
        out.push_back(Action::Connect {
            addr,
            role: Role::Download(Attempt {
                download: self.id,
                n: self.attempt,
            }),
        });
    }

    fn fail(&mut self, text: String) {
        self.phase = Phase::Done;
        self.conn = None;
        self.deadline = None;
        self.floor = None;
        self.rate_check = None;
        self.events.push_back(DownloadEvent::Failed(text));
    }

    fn is_live(&self, attempt: Attempt) -> bool {
        attempt.download == self.id
            && attempt.n == self.attempt
            && matches!(
                self.phase,
                Phase::Connecting | Phase::AwaitingHeader | Phase::Queued | Phase::Receiving
            )
    }

    /// The current holder failed: record why, close its connection, try the next.
    fn holder_failed(&mut self, now: Instant, why: String, out: &mut VecDeque<Action>) {
        if let Some(conn) = self.conn.take() {
            out.push_back(Action::Close {
                conn,
                reason: CloseReason::Local,
                after_flush: false,
            });
        }
        if let Some(h) = self.holders.get(self.current) {
            self.failures.push(format!("{h}: {why}"));
        }
        self.current += 1;
        self.try_holder(now, out);
    }

    /// A connect completed: ask for the bytes we lack. A stale attempt is closed.
    pub fn handle_connected(
        &mut self,
        now: Instant,
        conn: ConnId,
        attempt: Attempt,
        out: &mut VecDeque<Action>,
    ) -> Verdict {
        if !self.is_live(attempt) {
            return Verdict::Close(CloseReason::Local);
        }
        self.conn = Some(conn);
        self.phase = Phase::AwaitingHeader;
        self.deadline = Some(now + self.limits.stall);
        let mut frame = Vec::new();
        wire::encode_frame(
            &TransferRequest::Get {
                version: PROTOCOL_VERSION,
                hash: self.part.hash,
                offset: self.part.have,
            },
            &mut frame,
        );
        out.push_back(Action::Send { conn, frame });
        Verdict::Continue
    }

    /// A frame from the holder: the header (then raw bytes) or an error.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        conn: ConnId,
        attempt: Attempt,
        payload: &[u8],
        out: &mut VecDeque<Action>,
    ) -> Verdict {
        if !self.is_live(attempt) || !matches!(self.phase, Phase::AwaitingHeader | Phase::Queued) {
            return Verdict::Close(CloseReason::Local);
        }
        let why = match wire::decode::<TransferResponse>(payload) {
            Ok(TransferResponse::Queued { position }) => {
                // Shown when first queued, then when the line moves forward, at most once a
                // second: a holder cannot flood the console with positions.
                let show = match self.queued_shown {
                    None => true,
                    Some((shown, at)) => position < shown && now >= at + QUEUE_NOTE_EVERY,
                };
                if self.phase == Phase::AwaitingHeader {
                    // The wait in line is bounded by its own deadline, not the stall timer.
                    self.phase = Phase::Queued;
                    self.deadline = Some(now + self.limits.queue_wait);
                }
                if let (true, Some(&holder)) = (show, self.holders.get(self.current)) {
                    self.queued_shown = Some((position, now));
                    self.events
                        .push_back(DownloadEvent::Queued { holder, position });
                }
                return Verdict::Continue;
            }
            Ok(TransferResponse::Sending { size, offset, .. }) => {
                match self.part.accept_header(size, offset) {
                    Ok(0) => {
                        self.verify();
                        return Verdict::Close(CloseReason::Local);
                    }
                    Ok(n) => {
                        self.phase = Phase::Receiving;
                        let floor =
                            RateFloor::new(now, self.limits.min_rate, self.limits.rate_window);
                        self.rate_check = floor.poll_check(now);
                        self.floor = Some(floor);
                        self.deadline = Some(now + self.limits.stall);
                        out.push_back(Action::ExpectRaw { conn, len: n });
                        return Verdict::Continue;
                    }
                    Err(e) => e.to_string(),
                }
            }
            Ok(TransferResponse::Error { code, message }) => {
                format!("protocol error: {code}: {message}")
            }
            Err(e) => format!("protocol error: holder sent {e}"),
        };
        self.conn = None;
        self.holder_failed(now, why, out);
        Verdict::Close(CloseReason::Local)
    }

    /// File bytes from the holder.
    pub fn handle_raw(
        &mut self,
        now: Instant,
        attempt: Attempt,
        data: &[u8],
        out: &mut VecDeque<Action>,
    ) -> Verdict {
        if !self.is_live(attempt) || self.phase != Phase::Receiving {
            return Verdict::Close(CloseReason::Local);
        }
        match self.part.write(data) {
            Ok(()) => {}
            Err(e @ TransferError::Local(_)) => {
                // Our disk, not the holder: stop, keep the partial for a later resume.
                let text = format!(
                    "get {}: {e} ({} bytes kept for resume)",
                    display_name(&self.part.name),
                    self.part.have
                );
                self.fail(text);
                return Verdict::Close(CloseReason::Local);
            }
            Err(e) => {
                self.conn = None;
                self.holder_failed(now, e.to_string(), out);
                return Verdict::Close(CloseReason::Local);
            }
        }
        self.received += data.len() as u64;
        if let Some(floor) = &mut self.floor {
            floor.handle_bytes(now, data.len() as u64);
        }
        self.deadline = Some(now + self.limits.stall);
        if now >= self.next_progress {
            self.next_progress = now + PROGRESS_EVERY;
            self.events.push_back(DownloadEvent::Progress {
                have: self.part.have,
            });
        }
        if self.part.is_complete() {
            // Extra bytes after the file are ignored: the connection closes here.
            self.verify();
            return Verdict::Close(CloseReason::Local);
        }
        Verdict::Continue
    }

    /// Every byte is here: wait for the verifying thread.
    fn verify(&mut self) {
        self.conn = None;
        self.deadline = None;
        self.floor = None;
        self.rate_check = None;
        self.phase = Phase::Verifying;
        self.part.finish();
    }

    /// A connection of this download closed (or its connect failed).
    pub fn handle_close(
        &mut self,
        now: Instant,
        attempt: Attempt,
        reason: &CloseReason,
        out: &mut VecDeque<Action>,
    ) {
        if !self.is_live(attempt) {
            return;
        }
        self.conn = None;
        let why = match reason {
            CloseReason::Eof => "the holder closed the connection early".to_string(),
            other => other.to_string(),
        };
        self.holder_failed(now, why, out);
    }

    /// Time passed: past [`DownloadLimits::max_get`] the download fails; a holder silent for
    /// [`DownloadLimits::stall`], or below the rate floor over a whole window, is given up.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut VecDeque<Action>) {
        if !matches!(
            self.phase,
            Phase::Connecting | Phase::AwaitingHeader | Phase::Queued | Phase::Receiving
        ) {
            return;
        }
        if now >= self.give_up {
            if let Some(conn) = self.conn.take() {
                out.push_back(Action::Close {
                    conn,
                    reason: CloseReason::Local,
                    after_flush: false,
                });
            }
            let mut text = format!(
                "get {}: gave up after {} s (--get-timeout)",
                display_name(&self.part.name),
                self.limits.max_get.as_secs()
            );
            if self.part.have > 0 {
                let _ = write!(text, " ({} bytes kept for resume)", self.part.have);
            }
            return self.fail(text);
        }
        if self.rate_check.is_some_and(|t| t <= now) {
            if let Some(floor) = &mut self.floor {
                if floor.is_below(now) {
                    let why = format!(
                        "slower than {} ({} bytes in the last window)",
                        floor.describe(),
                        floor.window_bytes(now)
                    );
                    return self.holder_failed(now, why, out);
                }
                self.rate_check = floor.poll_check(now);
            }
        }
        if self.deadline.is_some_and(|d| d <= now) {
            let why = if self.phase == Phase::Queued {
                format!(
                    "still in its upload queue after {:.1} s",
                    self.limits.queue_wait.as_secs_f64()
                )
            } else {
                format!(
                    "nothing received for {:.1} s",
                    self.limits.stall.as_secs_f64()
                )
            };
            self.holder_failed(now, why, out);
        }
    }

    /// When [`Download::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Done {
            return None;
        }
        [self.deadline, self.rate_check]
            .into_iter()
            .flatten()
            .fold(None, |a: Option<Instant>, t| {
                Some(a.map_or(t, |a| a.min(t)))
            })
            .map(|t| t.min(self.give_up))
    }

    /// The verifying thread's result for generation `generation`.
    pub fn handle_hashed(
        &mut self,
        now: Instant,
        generation: u64,
        hashed: io::Result<FileHash>,
        out: &mut VecDeque<Action>,
    ) {
        if self.phase != Phase::Verifying || generation != self.part.generation {
            // From an attempt that was discarded since.
            return;
        }
        match self.part.check(hashed) {
            Ok(()) => {}
            Err(e @ TransferError::Corrupt) => {
                // Bytes from somewhere were wrong: start over from the next holder.
                return self.holder_failed(now, e.to_string(), out);
            }
            Err(e) => return self.fail(format!("get {}: {e}", display_name(&self.part.name))),
        }
        match self.part.land(&self.dir) {
            Ok((path, existed)) => {
                self.phase = Phase::Done;
                let secs = (now - self.started).as_secs_f64().max(1e-6);
                self.events.push_back(DownloadEvent::Saved {
                    path,
                    existed,
                    received: self.received,
                    secs,
                });
            }
            Err(e) => self.fail(format!("get: {e}")),
        }
    }

    /// What happened, for the rest of the peer.
    pub fn poll_event(&mut self) -> Option<DownloadEvent> {
        self.events.pop_front()
    }

    /// Whether the download is over (saved or failed).
    pub fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// The file's hash.
    pub fn hash(&self) -> FileHash {
        self.part.hash
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("p2pshare-dl-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// A download whose verifying thread reports into a channel.
    fn download(
        dir: &Path,
        content: &[u8],
        name: &str,
    ) -> (PartFile, mpsc::Receiver<(u64, io::Result<FileHash>)>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let done: HashDone = Arc::new(move |g, r| {
            let _ = tx.lock().unwrap().send((g, r));
        });
        let d = PartFile::open(
            dir,
            FileHash::of(content),
            content.len() as u64,
            name.into(),
            done,
        )
        .unwrap();
        (d, rx)
    }

    /// Finishes and checks, as the peer does when the hash arrives.
    fn finish_and_check(
        d: &mut PartFile,
        rx: &mpsc::Receiver<(u64, io::Result<FileHash>)>,
    ) -> Result<(), TransferError> {
        d.finish();
        let (generation, result) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(generation, d.generation);
        d.check(result)
    }

    #[test]
    fn resume_verify_and_land() {
        let dir = tmpdir("resume");
        let content = b"hello, resumable world".to_vec();
        let (mut d, _rx) = download(&dir, &content, "../x.txt");
        d.write(&content[..5]).unwrap();
        drop(d);
        // A new run resumes from the 5 bytes on disk.
        let (mut d, rx) = download(&dir, &content, "../x.txt");
        assert_eq!(d.have, 5);
        assert!(d.accept_header(content.len() as u64, 0).is_err());
        assert_eq!(d.accept_header(content.len() as u64, 5).unwrap(), 17);
        d.write(&content[5..]).unwrap();
        assert!(d.is_complete());
        finish_and_check(&mut d, &rx).unwrap();
        let (path, existed) = d.land(&dir).unwrap();
        assert_eq!(path, dir.join("_x.txt"));
        assert!(!existed);
        assert_eq!(fs::read(&path).unwrap(), content);
        assert!(!d.part_path.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_bytes_never_land() {
        let dir = tmpdir("corrupt");
        let (mut d, rx) = download(&dir, b"good", "f");
        d.write(b"evil").unwrap();
        let before = d.generation;
        assert!(matches!(
            finish_and_check(&mut d, &rx),
            Err(TransferError::Corrupt)
        ));
        assert_eq!(d.have, 0);
        assert_ne!(d.generation, before, "a new attempt");
        assert!(!dir.join("f").exists());
        assert_eq!(fs::metadata(&d.part_path).unwrap().len(), 0);
        d.write(b"good").unwrap();
        finish_and_check(&mut d, &rx).unwrap();
        let (path, _) = d.land(&dir).unwrap();
        assert_eq!(fs::read(path).unwrap(), b"good");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn identical_file_is_not_duplicated() {
        let dir = tmpdir("ident");
        fs::write(dir.join("f"), b"same").unwrap();
        let (mut d, rx) = download(&dir, b"same", "f");
        d.write(b"same").unwrap();
        finish_and_check(&mut d, &rx).unwrap();
        assert_eq!(d.land(&dir).unwrap(), (dir.join("f"), true));
        let (mut d, rx) = download(&dir, b"diff", "f");
        d.write(b"diff").unwrap();
        finish_and_check(&mut d, &rx).unwrap();
        assert_eq!(d.land(&dir).unwrap(), (dir.join("f (1)"), false));
        assert_eq!(fs::read(dir.join("f")).unwrap(), b"same");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_large_file_hashed_while_it_grows() {
        let dir = tmpdir("grow");
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (mut d, rx) = download(&dir, &content, "big");
        for chunk in content.chunks(65_536) {
            d.write(chunk).unwrap();
        }
        finish_and_check(&mut d, &rx).unwrap();
        // An abandoned download reports nothing.
        let (d2, rx2) = download(&tmpdir("grow2"), &content, "big");
        drop(d2);
        assert!(rx2.recv_timeout(Duration::from_millis(200)).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
