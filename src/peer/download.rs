//! One download: the [`Download`] machine fetches one file from every holder of its
//! (hash, size) claim at once, driving a [`Swarm`] (the piece scheduler) and verifying every
//! 16 KiB group against the file's hash as it arrives, over a [`PartFile`] (the partial file
//! and its resume record).
//!
//! Verification is split: each answer's proof is checked against the root on the loop as soon
//! as it is in (`outboard::check_proof`, a few dozen parent hashes), then the data bytes are
//! gathered into whole groups and handed, with the hashes the proof promises, to the
//! verifying thread ([`Action::Verify`], [`super::verify`]), which hashes them and writes the
//! verified ones; its answers come back through [`Download::handle_verified`]. A range covers
//! one piece, or a run of consecutive pieces for a fast holder; each of its pieces is
//! verified once every one of its groups has been answered verified and written.
//!
//! A holder is one connection ([`Attempt`] in its slot names the download and the
//! connection), carrying the swarm's requests for it pipelined: each request is a range of
//! groups, answered in order by a header, the range's proof and its data bytes
//! (`wire::TransferRequest::Range`). One connection per holder, not several: the holder's
//! reactor answers requests in order and reads the next one as soon as the previous file
//! range is queued, so a few requests in flight keep its socket full, and the upload slots,
//! the per-address places and the rate floors of the holder keep counting one downloader as
//! one connection.
//!
//! # Invariants
//! - Nothing unverified is written: a group reaches the partial file only after its hash
//!   matched a proof checked against the root (the requested hash). A holder whose proof or
//!   bytes fail is dropped at once, named ([`DownloadEvent::Dropped`]), and never asked again
//!   in this download; its pieces go to the others. (A bad group is found when the verifying
//!   thread answers, at most the bounds below behind the bytes that arrive.)
//! - Bounded memory in flight: a holder whose unverified bytes with the verifying thread
//!   reach [`SOURCE_UNVERIFIED_BYTES`], or any holder once the download's reach
//!   [`DOWNLOAD_UNVERIFIED_BYTES`], is no longer read ([`Action::Hold`]) until answers bring
//!   them back under ([`Action::Resume`]); its input waits in the kernel's socket buffer.
//! - A holder that errs, closes, stalls ([`DownloadLimits::stall`]), stays under the rate
//!   floor over a whole window ([`RateFloor`]) or waits in its upload queue past
//!   [`DownloadLimits::queue_wait`] is dropped; it may come back from a later lookup, at most
//!   [`MAX_HOLDER_FAILURES`] times. A local disk error fails the download at once.
//! - When no holder is left, one lookup by hash is asked for ([`DownloadEvent::NeedHolders`]);
//!   if it brings no usable holder the download fails with every holder's reason. A long
//!   download asks again every [`RELOOKUP_EVERY`] to pick up new holders.
//! - Every download ends: each holder is bounded by the deadlines above and the whole
//!   download by [`DownloadLimits::max_get`].
//! - Bytes go to `DOWNLOADS/.<hash>.p2pshare-part`, written at their offsets; the verified
//!   pieces are recorded beside it (`swarm::ResumeRecord`), saved at most every
//!   [`RECORD_EVERY`] and when the download stops, always after the data is fdatasynced. A
//!   restart fetches only the pieces the record names as missing, from any holders. The
//!   final name appears only by a link/rename after every piece verified and the data was
//!   fsynced; it is sanitised ([`names::sanitize`]) and never overwrites a different file.
//! - Firewalled holders (issue 15): a holder the index flags unreachable
//!   ([`Download::note_firewalled`]), or one we could not connect to, is asked for a push
//!   instead ([`DownloadEvent::Push`], once per holder after a failed connect): the core asks
//!   the index, and the holder's connection, when it comes to our file server, is handed to
//!   [`Download::handle_connected`] like an outgoing one. A push that cannot happen
//!   ([`Download::handle_push_failed`]) drops the holder; when we are firewalled too it is
//!   never taken back. A push the index refused only over its budget
//!   ([`Download::handle_push_deferred`]) is asked again after the wait it named, within
//!   the whole download's deadline, the holder kept meanwhile.

use super::core::{Action, Role};
use super::names::{self, display_name, Landing};
use super::outboard::{self, ExpectedGroup};
use super::rate::RateFloor;
use super::share::PART_SUFFIX;
use super::swarm::{self, DropReason, HolderId, Loaded, PieceSet, ResumeRecord, Swarm};
use super::verify::{PartWriter, SyncJob, SyncWork, VerifyDone, VerifyFailure, VerifyJob};
use crate::reactor::{CloseReason, ConnId, Verdict};
use crate::wire::{
    self, ErrorCode, FileHash, HeldFile, TransferRequest, TransferResponse, PROTOCOL_VERSION,
};
use std::collections::{HashSet, VecDeque};
use std::fmt::Write as _;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a download (or a holder of it) failed.
#[derive(Debug)]
pub enum TransferError {
    /// Writing the partial file failed (disk full, permissions): not the holder's fault.
    Local(io::Error),
    /// The holder misbehaved or went away.
    Holder(String),
}

impl std::fmt::Display for TransferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferError::Local(e) => write!(f, "cannot write the download: {e}"),
            TransferError::Holder(m) => f.write_str(m),
        }
    }
}

/// The file side of one download: the partial file, its resume record, landing.
pub struct PartFile {
    /// What is wanted.
    pub hash: FileHash,
    /// Its size, from the index.
    pub size: u64,
    /// The name to save it under (untrusted; sanitised when landing).
    pub name: String,
    /// Where the partial bytes go.
    pub part_path: PathBuf,
    /// Where the verified pieces are recorded.
    pub record_path: PathBuf,
    part: Option<File>,
    /// The same file, as the verifying thread writes it and the recording thread records
    /// it (closed when the download ends).
    writer: Arc<PartWriter>,
    piece_bytes: u64,
}

impl PartFile {
    /// Opens (or creates) the partial file of `hash` in `dir` and reads its resume record:
    /// the pieces (of `piece_bytes`) it proves verified. A record without its partial file,
    /// or a damaged or foreign one, proves nothing.
    pub fn open(
        dir: &Path,
        hash: FileHash,
        size: u64,
        name: String,
        piece_bytes: u64,
    ) -> Result<(PartFile, PieceSet), TransferError> {
        let part_path = dir.join(format!(".{hash}{PART_SUFFIX}"));
        let record_path = swarm::record_path(dir, &hash);
        let pieces = swarm::piece_count(size, piece_bytes);
        let existed = part_path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&part_path)
            .map_err(local(&part_path))?;
        let verified = if existed {
            match ResumeRecord::load(&record_path, &hash, size, piece_bytes) {
                Ok(Loaded::Intact(set)) => set,
                Ok(Loaded::Untrusted(why)) => {
                    log::warn!(target: "peer", "resume record of {hash} ignored: {why}");
                    PieceSet::new(pieces)
                }
                _ => PieceSet::new(pieces),
            }
        } else {
            PieceSet::new(pieces)
        };
        if file.metadata().map_err(local(&part_path))?.len() > size {
            file.set_len(size).map_err(local(&part_path))?;
        }
        let writer = Arc::new(
            PartWriter::new(
                file.try_clone().map_err(local(&part_path))?,
                size,
                record_path.clone(),
            )
            .map_err(local(&part_path))?,
        );
        Ok((
            PartFile {
                hash,
                size,
                name,
                part_path,
                record_path,
                part: Some(file),
                writer,
                piece_bytes,
            },
            verified,
        ))
    }

    /// Writes verified bytes at `offset` (as the verifying thread does).
    #[cfg(test)]
    fn write_at(&mut self, offset: u64, bytes: &[u8]) -> io::Result<()> {
        match self.writer.write_at(offset, bytes) {
            (_, Some(e)) => Err(e),
            (_, None) => Ok(()),
        }
    }

    /// The writer the verifying thread writes verified groups with.
    pub fn writer(&self) -> Arc<PartWriter> {
        self.writer.clone()
    }

    /// No more bytes are written (the download ended): a late job writes nothing.
    fn close_writer(&self) {
        self.writer.close();
    }

    /// The record of `verified`, these pieces of this file.
    fn record(&self, verified: &PieceSet) -> ResumeRecord {
        ResumeRecord {
            hash: self.hash,
            size: self.size,
            piece_bytes: self.piece_bytes,
            verified: verified.clone(),
        }
    }

    /// The job that saves the record of `verified` on the syncing thread, unless an
    /// earlier one is not done yet (`None`: ask again later).
    fn record_job(&self, verified: &PieceSet) -> Option<SyncJob> {
        self.writer.start_saving().then(|| SyncJob {
            writer: self.writer.clone(),
            work: SyncWork::Record(self.record(verified)),
        })
    }

    /// Makes the verified bytes durable, then records `verified` beside them, here and now.
    pub fn save_record(&self, verified: &PieceSet) -> io::Result<()> {
        self.writer.save_record(&self.record(verified)).map(|_| ())
    }

    /// Saves the last record, of `verified` (`None`: none, the file landed): no other is
    /// saved after it.
    fn close_records(&self, verified: Option<&PieceSet>) -> io::Result<()> {
        let last = verified.map(|v| self.record(v));
        self.writer.close_records(last.as_ref())
    }

    /// Moves the complete, verified partial file to its final name in `dir`. Returns the
    /// final path and whether an identical file was already there (then nothing new was
    /// written).
    pub fn land(&mut self, dir: &Path) -> Result<(PathBuf, bool), TransferError> {
        self.close_writer();
        self.close_records(None).map_err(local(&self.record_path))?;
        let part = self
            .part
            .take()
            .ok_or_else(|| TransferError::Local(io::Error::other("partial file not open")))?;
        part.set_len(self.size).map_err(local(&self.part_path))?;
        part.sync_all().map_err(local(&self.part_path))?;
        drop(part);
        let (size, hash) = (self.size, self.hash);
        let landing = names::landing(dir, &self.name, |p| same_file(p, size, &hash));
        let landed = match landing {
            Landing::Identical(path) => {
                let _ = fs::remove_file(&self.part_path);
                (path, true)
            }
            Landing::Free(path) => {
                // rename(2) replaces silently; a file created at `path` since we looked would
                // be lost, so link first (fails if it exists), then drop the temporary name.
                match fs::hard_link(&self.part_path, &path) {
                    Ok(()) => {
                        let _ = fs::remove_file(&self.part_path);
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        self.part = Some(
                            OpenOptions::new()
                                .read(true)
                                .write(true)
                                .open(&self.part_path)
                                .map_err(local(&self.part_path))?,
                        );
                        return self.land(dir);
                    }
                    Err(_) => fs::rename(&self.part_path, &path).map_err(local(&path))?,
                }
                sync_dir(dir);
                (path, false)
            }
        };
        let _ = fs::remove_file(&self.record_path);
        Ok(landed)
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
/// A running download looks its file up again this often, for new holders.
pub const RELOOKUP_EVERY: Duration = Duration::from_secs(10);
/// A lookup not answered in this long counts as answered with no holder.
const RELOOKUP_PATIENCE: Duration = Duration::from_secs(10);
/// The resume record is saved at most this often while pieces arrive.
pub const RECORD_EVERY: Duration = Duration::from_secs(1);
/// A holder dropped this many times (errors, closes, stalls) is not taken back by lookups.
pub const MAX_HOLDER_FAILURES: u32 = 2;

/// The bounds every download keeps to, so that a `get` always ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadLimits {
    /// A holder silent this long (connecting, before its header, between bytes) is dropped.
    pub stall: Duration,
    /// A holder sending fewer bytes per second than this, averaged over `rate_window`, is
    /// dropped (0: no floor).
    pub min_rate: u64,
    /// The window `min_rate` is averaged over (a sliding window; see [`RateFloor`]).
    pub rate_window: Duration,
    /// The whole download (every holder, connecting and waiting included) fails after this.
    pub max_get: Duration,
    /// The longest wait in one holder's upload queue; then that holder is dropped.
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

/// What a download connection serves, kept in its slot: which download, which of its
/// connections. A connection whose number is no longer its holder's live one is stale and
/// its events are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// The download.
    pub download: DownloadId,
    /// Which connection of that download.
    pub n: u32,
}

/// What a download tells the rest of the peer.
#[derive(Debug, Clone, PartialEq)]
pub enum DownloadEvent {
    /// Resuming: a resume record proves these bytes verified.
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
    /// A holder was dropped.
    Dropped {
        /// The holder.
        holder: SocketAddr,
        /// Why, for the person.
        why: String,
        /// It sent bytes that fail verification (never asked again in this download).
        liar: bool,
    },
    /// Look the file up by hash and hand the holders to [`Download::handle_holders`].
    NeedHolders,
    /// Ask the index to have `holder` connect to us (a push) for `attempt`; the connection
    /// comes to our file server, or [`Download::handle_push_failed`] says why not.
    Push {
        /// The holder, as the lookup listed it.
        holder: SocketAddr,
        /// The attempt the connection will serve.
        attempt: u32,
    },
    /// Pieces were verified: the progress to show.
    Progress {
        /// Verified bytes on disk.
        have: u64,
    },
    /// Verified and landed.
    Saved {
        /// The final path.
        path: PathBuf,
        /// An identical file was already there.
        existed: bool,
        /// Data bytes received in this run (resumed pieces are not fetched again).
        received: u64,
        /// Seconds since the run started.
        secs: f64,
        /// Holders that delivered verified pieces.
        holders: usize,
    },
    /// Given up: the sentence for the person.
    Failed(String),
}

/// A request sent (or to send once connected) to a holder, answered in order.
#[derive(Debug, Clone)]
struct Asked {
    /// The pieces asked for (a run of one or more).
    pieces: Range<usize>,
    groups: Range<u64>,
}

/// The answer being read from a holder: proof first, then data, whose whole groups go to
/// the verifying thread as they complete.
#[derive(Debug)]
struct Receiving {
    pieces: Range<usize>,
    groups: Range<u64>,
    proof: Vec<u8>,
    proof_len: usize,
    /// The range's groups and their hashes, once its proof checked out.
    expected: Option<Vec<ExpectedGroup>>,
    /// The first group not yet handed over.
    next_group: usize,
    /// Data bytes of groups not yet handed over (at most one read and one group).
    buf: Vec<u8>,
    /// The range's number among the download's [`Check`]s.
    check: u64,
    /// Where the next data byte goes in the file, and how many are still to come.
    data_at: u64,
    data_left: u64,
}

/// One range whose groups are being verified on the verifying thread. Its jobs are answered
/// in order (one verifying thread, one queue), so the bytes verified so far are a prefix of
/// the range, and each of its pieces is verified once that prefix covers it.
#[derive(Debug)]
struct Check {
    id: u64,
    source: usize,
    /// The pieces of the range not verified yet (the first is the one being verified).
    pieces: Range<usize>,
    /// The end, in the file, of the bytes verified so far.
    verified_to: u64,
    /// Jobs handed over and not yet answered.
    jobs: u32,
    state: CheckState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CheckState {
    /// Bytes still arrive.
    Receiving,
    /// Every byte was handed over: done once the last job answers.
    Complete,
    /// Its holder was dropped before every byte came (or lied): its answers are only
    /// counted out.
    Dead,
}

/// Unverified bytes one holder may have with the verifying thread before its socket is no
/// longer read ([`Download`] holds the connection until answers come back).
pub const SOURCE_UNVERIFIED_BYTES: u64 = 1 << 20;
/// Unverified bytes one download may have with the verifying thread (all holders together)
/// before its holders' sockets are no longer read.
pub const DOWNLOAD_UNVERIFIED_BYTES: u64 = 4 << 20;
/// A receive buffer: one read of the reactor (256 KiB) after a partial group.
const RECEIVE_BUF_BYTES: usize = (256 << 10) + outboard::GROUP_BYTES as usize;
/// Receive buffers kept for reuse per download.
const SPARE_BUFFERS: usize = 8;

/// One holder of the file and the connection to it.
struct Source {
    addr: SocketAddr,
    /// The live connection's number (0: none), and the connection once connected.
    attempt: u32,
    conn: Option<ConnId>,
    asked: VecDeque<Asked>,
    receiving: Option<Receiving>,
    /// Waiting in its upload queue since, and the last position shown (and when).
    queued_since: Option<Instant>,
    queued_shown: Option<(u32, Instant)>,
    floor: Option<RateFloor>,
    rate_check: Option<Instant>,
    /// Times dropped for errors, closes or stalls.
    failures: u32,
    /// Dropped for bad bytes.
    liar: bool,
    /// Delivered at least one verified piece.
    delivered: bool,
    /// The live attempt is a push (the holder connects to us).
    pushed: bool,
    /// Why connecting to it failed, before it was asked for a push.
    connect_failed: Option<String>,
    /// The index refused its push over a budget: ask again at this time.
    push_again_at: Option<Instant>,
    /// Its bytes with the verifying thread, not yet answered.
    unverified: u64,
    /// Its connection is held (not read) until those answers come back.
    held: bool,
}

impl Source {
    fn new(addr: SocketAddr) -> Source {
        Source {
            addr,
            attempt: 0,
            conn: None,
            asked: VecDeque::new(),
            receiving: None,
            queued_since: None,
            queued_shown: None,
            floor: None,
            rate_check: None,
            failures: 0,
            liar: false,
            delivered: false,
            pushed: false,
            connect_failed: None,
            push_again_at: None,
            unverified: 0,
            held: false,
        }
    }

    /// Forgets the connection and everything asked on it (its bytes with the verifying
    /// thread are still counted until they are answered).
    fn reset(&mut self) -> Option<ConnId> {
        self.attempt = 0;
        self.pushed = false;
        self.push_again_at = None;
        self.held = false;
        self.asked.clear();
        self.receiving = None;
        self.queued_since = None;
        self.queued_shown = None;
        self.floor = None;
        self.rate_check = None;
        self.conn.take()
    }
}

/// The swarm download of one file (see the module docs). Inputs are `handle_*` with `now`;
/// outputs are [`Action`]s and [`DownloadEvent`]s.
pub struct Download {
    id: DownloadId,
    part: PartFile,
    dir: PathBuf,
    swarm: Swarm,
    sources: Vec<Source>,
    /// Our own address as the index sees it (never a holder).
    me: Option<SocketAddr>,
    next_attempt: u32,
    limits: DownloadLimits,
    /// One line per dropped holder, for the final error.
    failures: Vec<String>,
    /// The whole download fails at this time ([`DownloadLimits::max_get`]).
    give_up: Instant,
    /// A lookup for holders was asked for at this time and is not answered yet.
    relookup_asked: Option<Instant>,
    next_relookup: Instant,
    next_record: Instant,
    /// Pieces were verified since the record was last saved.
    record_due: bool,
    started: Instant,
    /// Data bytes received in this run.
    received: u64,
    next_progress: Instant,
    done: bool,
    events: VecDeque<DownloadEvent>,
    /// Holders asked for a push rather than connected to (the index flagged them, or a
    /// connect to them failed).
    firewalled: HashSet<SocketAddr>,
    /// Ranges being verified, and the next range's number.
    checks: Vec<Check>,
    next_check: u64,
    /// Bytes with the verifying thread, not yet answered.
    unverified: u64,
    /// The bounds on those: per holder, per download.
    unverified_caps: (u64, u64),
    /// Receive buffers handed back by the verifying thread.
    spare: Vec<Vec<u8>>,
    /// Every piece is verified; the file lands once no job is out.
    finish_pending: bool,
    /// A lookup found no holder while bytes were still with the verifying thread: the
    /// download fails once they are answered, unless they finished the file.
    holderless_pending: bool,
}

impl Download {
    /// A download of `file` into `dir` from `holders` (the first ones first), resuming from
    /// the verified pieces of an earlier run. `me` is left out of the holders.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        id: DownloadId,
        now: Instant,
        dir: &Path,
        file: &HeldFile,
        holders: Vec<SocketAddr>,
        me: Option<SocketAddr>,
        limits: DownloadLimits,
        cfg: swarm::Config,
    ) -> Result<Download, TransferError> {
        let cfg = swarm::Config {
            stall_timeout: limits.stall,
            // This machine decides when to give up on having no holder (after a lookup).
            holderless_grace: limits.max_get,
            ..cfg
        };
        let (part, verified) = PartFile::open(
            dir,
            file.hash,
            file.size,
            file.name.clone(),
            cfg.piece_bytes,
        )?;
        let swarm = Swarm::new(file.size, cfg, Some(verified), now);
        let mut events = VecDeque::new();
        let have = swarm.progress().verified_bytes;
        if have > 0 {
            events.push_back(DownloadEvent::Resuming { have });
        }
        let mut sources: Vec<Source> = Vec::new();
        for h in holders {
            if Some(h) != me && !sources.iter().any(|s| s.addr == h) {
                sources.push(Source::new(h));
            }
        }
        Ok(Download {
            id,
            part,
            dir: dir.to_path_buf(),
            swarm,
            sources,
            me,
            next_attempt: 0,
            limits,
            failures: Vec::new(),
            give_up: now + limits.max_get,
            relookup_asked: None,
            next_relookup: now + RELOOKUP_EVERY,
            next_record: now + RECORD_EVERY,
            record_due: false,
            started: now,
            received: 0,
            next_progress: now,
            done: false,
            events,
            firewalled: HashSet::new(),
            checks: Vec::new(),
            next_check: 0,
            unverified: 0,
            unverified_caps: (SOURCE_UNVERIFIED_BYTES, DOWNLOAD_UNVERIFIED_BYTES),
            spare: Vec::new(),
            finish_pending: false,
            holderless_pending: false,
        })
    }

    /// Sets the bounds on unverified bytes in flight (per holder, per download).
    pub fn set_unverified_caps(&mut self, per_holder: u64, per_download: u64) {
        self.unverified_caps = (per_holder, per_download);
    }

    /// The file's name (untrusted, unsanitised) and size, and the verified bytes on disk.
    pub fn progress(&self) -> (&str, u64, u64) {
        let p = self.swarm.progress();
        (&self.part.name, p.verified_bytes, self.part.size)
    }

    /// Holders in use now.
    pub fn sources(&self) -> usize {
        self.swarm.progress().holders
    }

    /// Data bytes received in this run, and seconds since it started.
    pub fn received(&self, now: Instant) -> (u64, f64) {
        (self.received, (now - self.started).as_secs_f64().max(1e-6))
    }

    /// Which download this is.
    pub fn id(&self) -> DownloadId {
        self.id
    }

    /// The file's hash.
    pub fn hash(&self) -> FileHash {
        self.part.hash
    }

    /// Whether the download is over (saved or failed).
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// What happened, for the rest of the peer.
    pub fn poll_event(&mut self) -> Option<DownloadEvent> {
        self.events.pop_front()
    }

    /// Starts: every holder is handed to the scheduler (a file already verified lands).
    pub fn start(&mut self, now: Instant, out: &mut VecDeque<Action>) {
        for i in 0..self.sources.len() {
            self.swarm.handle_holder_added(HolderId(i as u64), now);
        }
        self.run(now, out);
    }

    /// The holders a lookup found (asked for by [`DownloadEvent::NeedHolders`]; `None`: the
    /// lookup failed). New ones join; dropped ones come back unless they lied or failed
    /// [`MAX_HOLDER_FAILURES`] times.
    pub fn handle_holders(
        &mut self,
        now: Instant,
        holders: Option<Vec<SocketAddr>>,
        out: &mut VecDeque<Action>,
    ) {
        if self.done {
            return;
        }
        self.relookup_asked = None;
        self.holderless_pending = false;
        for h in holders.unwrap_or_default() {
            if Some(h) == self.me {
                continue;
            }
            let i = match self.sources.iter().position(|s| s.addr == h) {
                Some(i) => i,
                None => {
                    self.sources.push(Source::new(h));
                    self.sources.len() - 1
                }
            };
            let s = &self.sources[i];
            if !s.liar && s.failures < MAX_HOLDER_FAILURES {
                self.swarm.handle_holder_added(HolderId(i as u64), now);
            }
        }
        self.check_holderless(out);
        self.run(now, out);
    }

    /// These holders cannot be connected to (the index found them unreachable): they are
    /// asked for pushes.
    pub fn note_firewalled(&mut self, holders: impl IntoIterator<Item = SocketAddr>) {
        self.firewalled.extend(holders);
    }

    /// The push for `attempt` will not come: the index refused it (`why`), or we cannot be
    /// reached either (`we_too`: the holder is never taken back, and the person is told so
    /// plainly).
    pub fn handle_push_failed(
        &mut self,
        now: Instant,
        attempt: u32,
        why: String,
        we_too: bool,
        out: &mut VecDeque<Action>,
    ) {
        let Some(i) = self.source_of_push(attempt) else {
            return;
        };
        if we_too {
            let s = &mut self.sources[i];
            s.failures = MAX_HOLDER_FAILURES;
            let addr = s.addr;
            s.reset();
            self.failures.push(super::push::both_firewalled(addr));
            self.events.push_back(DownloadEvent::Dropped {
                holder: addr,
                why: "it is firewalled and so are we: cannot download from it".into(),
                liar: false,
            });
            self.swarm.handle_holder_removed(HolderId(i as u64), now);
        } else {
            let why = match self.sources[i].connect_failed.take() {
                Some(before) => format!("{before}, and the push was refused: {why}"),
                None => format!("push refused: {why}"),
            };
            self.holder_failed(now, i, why, out);
        }
        self.run(now, out);
    }

    /// The index refused the push for `attempt` over its budget: it is asked again after
    /// `retry_after` (the holder is kept, its pieces waiting), unless that is past the
    /// whole download's deadline, which drops it as any refusal does.
    pub fn handle_push_deferred(
        &mut self,
        now: Instant,
        attempt: u32,
        retry_after: Duration,
        out: &mut VecDeque<Action>,
    ) {
        let Some(i) = self.source_of_push(attempt) else {
            return;
        };
        let at = now + retry_after;
        if at >= self.give_up {
            let why = format!(
                "push refused: the index's push rate limit (try again in {} ms, past the \
                 --get-timeout)",
                retry_after.as_millis()
            );
            self.holder_failed(now, i, why, out);
            self.run(now, out);
            return;
        }
        self.sources[i].push_again_at = Some(at);
        self.swarm.handle_alive(HolderId(i as u64), now);
    }

    /// The source whose push `attempt` (numbered in this download) an answer is about.
    fn source_of_push(&self, attempt: u32) -> Option<usize> {
        self.source_of(Attempt {
            download: self.id,
            n: attempt,
        })
    }

    fn source_of(&self, attempt: Attempt) -> Option<usize> {
        if attempt.download != self.id || self.done || attempt.n == 0 {
            return None;
        }
        self.sources.iter().position(|s| s.attempt == attempt.n)
    }

    /// A connect completed: the requests waiting for it go out, pipelined.
    pub fn handle_connected(
        &mut self,
        now: Instant,
        conn: ConnId,
        attempt: Attempt,
        out: &mut VecDeque<Action>,
    ) -> Verdict {
        let Some(i) = self.source_of(attempt) else {
            return Verdict::Close(CloseReason::Local);
        };
        self.sources[i].conn = Some(conn);
        let asked: Vec<Range<u64>> = self.sources[i]
            .asked
            .iter()
            .map(|a| a.groups.clone())
            .collect();
        for groups in asked {
            out.push_back(self.request_frame(conn, groups));
        }
        self.run(now, out);
        Verdict::Continue
    }

    fn request_frame(&self, conn: ConnId, groups: Range<u64>) -> Action {
        let mut frame = Vec::new();
        wire::encode_frame(
            &TransferRequest::Range {
                version: PROTOCOL_VERSION,
                hash: self.part.hash,
                size: self.part.size,
                first: groups.start,
                end: groups.end,
            },
            &mut frame,
        );
        Action::Send { conn, frame }
    }

    /// A frame from a holder: a header (then raw bytes), a queue position or an error.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        conn: ConnId,
        attempt: Attempt,
        payload: &[u8],
        out: &mut VecDeque<Action>,
    ) -> Verdict {
        let Some(i) = self.source_of(attempt) else {
            return Verdict::Close(CloseReason::Local);
        };
        let verdict = self.frame_from(now, i, conn, payload, out);
        self.run(now, out);
        verdict
    }

    fn frame_from(
        &mut self,
        now: Instant,
        i: usize,
        conn: ConnId,
        payload: &[u8],
        out: &mut VecDeque<Action>,
    ) -> Verdict {
        let holder = HolderId(i as u64);
        if self.sources[i].receiving.is_some() {
            self.holder_failed(now, i, "sent a frame inside a range".into(), out);
            return Verdict::Close(CloseReason::Local);
        }
        let why = match wire::decode::<TransferResponse>(payload) {
            Ok(TransferResponse::Queued { position }) => {
                let s = &mut self.sources[i];
                // Shown when first queued, then when the line moves forward, at most once a
                // second: a holder cannot flood the console with positions.
                let show = match s.queued_shown {
                    None => true,
                    Some((shown, at)) => position < shown && now >= at + QUEUE_NOTE_EVERY,
                };
                s.queued_since.get_or_insert(now);
                if show {
                    s.queued_shown = Some((position, now));
                    let addr = s.addr;
                    self.events.push_back(DownloadEvent::Queued {
                        holder: addr,
                        position,
                    });
                }
                self.swarm.handle_alive(holder, now);
                return Verdict::Continue;
            }
            Ok(TransferResponse::Sending { size, first, end }) => {
                match self.sources[i].asked.front() {
                    Some(a) if size == self.part.size && a.groups == (first..end) => {
                        let a = self.sources[i].asked.pop_front().expect("front exists");
                        return self.start_range(now, i, conn, a, out);
                    }
                    Some(a) => format!(
                        "answered groups {first}..{end} of {size} bytes, asked for {}..{} of {}",
                        a.groups.start, a.groups.end, self.part.size
                    ),
                    None => "sent a range nobody asked for".to_string(),
                }
            }
            Ok(TransferResponse::Error { code, message }) => {
                self.holder_failed(now, i, format!("{code}: {message}"), out);
                if code == ErrorCode::Busy {
                    // Busy for now (full, or preparing the file's outboard): a later lookup
                    // may bring it back whatever its count.
                    self.sources[i].failures -= 1;
                }
                return Verdict::Close(CloseReason::Local);
            }
            Ok(TransferResponse::Probed { .. }) => "sent a probe answer".to_string(),
            Err(e) => format!("protocol error: holder sent {e}"),
        };
        self.holder_failed(now, i, why, out);
        Verdict::Close(CloseReason::Local)
    }

    /// A header matched the oldest request: its proof and data follow, raw.
    fn start_range(
        &mut self,
        now: Instant,
        i: usize,
        conn: ConnId,
        a: Asked,
        out: &mut VecDeque<Action>,
    ) -> Verdict {
        let size = self.part.size;
        let proof_len = outboard::proof_len(size, a.groups.clone()).unwrap_or(0);
        let data = outboard::group_bytes(size, a.groups.clone());
        let s = &mut self.sources[i];
        s.queued_since = None;
        s.queued_shown = None;
        if s.floor.is_none() {
            let floor = RateFloor::new(now, self.limits.min_rate, self.limits.rate_window);
            s.rate_check = floor.poll_check(now);
            s.floor = Some(floor);
        }
        self.next_check += 1;
        let check = self.next_check;
        s.receiving = Some(Receiving {
            pieces: a.pieces.clone(),
            groups: a.groups,
            proof: Vec::with_capacity(proof_len),
            proof_len,
            expected: None,
            next_group: 0,
            buf: Vec::new(),
            check,
            data_at: data.start,
            data_left: data.end - data.start,
        });
        self.checks.push(Check {
            id: check,
            source: i,
            pieces: a.pieces,
            verified_to: data.start,
            jobs: 0,
            state: CheckState::Receiving,
        });
        let total = proof_len as u64 + (data.end - data.start);
        if total == 0 {
            // The empty file: its one empty group is checked with no bytes at all.
            return self.feed(now, i, &[], out);
        }
        out.push_back(Action::ExpectRaw { conn, len: total });
        Verdict::Continue
    }

    /// Proof and data bytes from a holder.
    pub fn handle_raw(
        &mut self,
        now: Instant,
        attempt: Attempt,
        data: &[u8],
        out: &mut VecDeque<Action>,
    ) -> Verdict {
        let Some(i) = self.source_of(attempt) else {
            return Verdict::Close(CloseReason::Local);
        };
        let verdict = self.feed(now, i, data, out);
        self.run(now, out);
        verdict
    }

    /// Proof and data bytes of the range `i` is answering: the proof is checked against the
    /// root at once; data bytes are kept until whole groups are there, which go to the
    /// verifying thread ([`Action::Verify`]), answered in [`Download::handle_verified`].
    fn feed(
        &mut self,
        now: Instant,
        i: usize,
        mut data: &[u8],
        out: &mut VecDeque<Action>,
    ) -> Verdict {
        let holder = HolderId(i as u64);
        let Some(mut r) = self.sources[i].receiving.take() else {
            return Verdict::Close(CloseReason::Local);
        };
        if r.expected.is_none() {
            let take = (r.proof_len - r.proof.len()).min(data.len());
            r.proof.extend_from_slice(&data[..take]);
            data = &data[take..];
            if r.proof.len() < r.proof_len {
                self.sources[i].receiving = Some(r);
                self.swarm.handle_alive(holder, now);
                return Verdict::Continue;
            }
            match outboard::check_proof(self.part.hash, self.part.size, r.groups.clone(), &r.proof)
            {
                Ok(expected) => {
                    r.expected = Some(expected);
                    r.proof = Vec::new();
                }
                Err(e) => {
                    self.end_check(r.check);
                    return self.liar(now, i, r.pieces.start, e.to_string(), out);
                }
            }
        }
        let n = data.len() as u64;
        if r.buf.capacity() == 0 {
            r.buf = self.take_buffer();
        }
        r.buf.extend_from_slice(data);
        r.data_left = r.data_left.saturating_sub(n);
        self.received += n;
        let s = &mut self.sources[i];
        if let Some(floor) = &mut s.floor {
            floor.handle_bytes(now, n);
        }
        let piece = (r.data_at / self.part.piece_bytes) as usize;
        r.data_at += n;
        self.swarm.handle_bytes(holder, piece, n, now);
        // Every whole group goes to the verifying thread; a partial one waits for its rest.
        let expected = r.expected.as_deref().expect("set above");
        let (mut ready, mut end) = (0, r.next_group);
        while let Some(g) = expected.get(end) {
            if ready + g.len() > r.buf.len() {
                break;
            }
            ready += g.len();
            end += 1;
        }
        if end > r.next_group {
            let groups = expected[r.next_group..end].to_vec();
            r.next_group = end;
            let mut job = std::mem::take(&mut r.buf);
            if ready < job.len() {
                let mut rest = self.take_buffer();
                rest.extend_from_slice(&job[ready..]);
                job.truncate(ready);
                r.buf = rest;
            }
            self.hand_over(i, r.check, groups, job, out);
        }
        if r.data_left > 0 {
            self.sources[i].receiving = Some(r);
        } else if let Some(c) = self.checks.iter_mut().find(|c| c.id == r.check) {
            // Every byte of the range is with the verifying thread; `buf` is empty, since
            // the range's length is the sum of its groups'.
            c.state = CheckState::Complete;
            self.spare_buffer(r.buf);
        }
        Verdict::Continue
    }

    /// Hands `groups` of `check` (holder `i`'s bytes, in `data`) to the verifying thread,
    /// and stops reading holder `i` if too much waits there.
    fn hand_over(
        &mut self,
        i: usize,
        check: u64,
        groups: Vec<ExpectedGroup>,
        data: Vec<u8>,
        out: &mut VecDeque<Action>,
    ) {
        let len = data.len() as u64;
        self.unverified += len;
        if let Some(c) = self.checks.iter_mut().find(|c| c.id == check) {
            c.jobs += 1;
        }
        let (per_holder, per_download) = self.unverified_caps;
        let s = &mut self.sources[i];
        s.unverified += len;
        out.push_back(Action::Verify(VerifyJob {
            download: self.id,
            check,
            groups,
            data,
            writer: self.part.writer(),
        }));
        if !s.held && (s.unverified >= per_holder || self.unverified >= per_download) {
            if let Some(conn) = s.conn {
                s.held = true;
                out.push_back(Action::Hold(conn));
            }
        }
    }

    fn take_buffer(&mut self) -> Vec<u8> {
        self.spare
            .pop()
            .unwrap_or_else(|| Vec::with_capacity(RECEIVE_BUF_BYTES))
    }

    fn spare_buffer(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < SPARE_BUFFERS && buf.capacity() >= RECEIVE_BUF_BYTES {
            buf.clear();
            self.spare.push(buf);
        }
    }

    /// The range `check` will get no more bytes (its holder was dropped): its jobs still in
    /// flight are only counted out when they answer.
    fn end_check(&mut self, check: u64) {
        if let Some(k) = self.checks.iter().position(|c| c.id == check) {
            if self.checks[k].jobs == 0 {
                self.checks.swap_remove(k);
            } else {
                self.checks[k].state = CheckState::Dead;
            }
        }
    }

    /// The verifying thread answered a job of this download: its buffer comes back, its
    /// bytes leave the count in flight (held holders are read again when under the bounds),
    /// and each piece of its range is verified once the range's verified and written prefix
    /// covers it (see [`Check`]). A group that failed makes
    /// its holder a liar: dropped at once and named (even if it was dropped already for
    /// another reason); a write that failed fails the download.
    pub fn handle_verified(&mut self, now: Instant, done: VerifyDone, out: &mut VecDeque<Action>) {
        let len = done.len as u64;
        self.unverified = self.unverified.saturating_sub(len);
        let k = self.checks.iter().position(|c| c.id == done.check);
        if let Some(k) = k {
            let s = &mut self.sources[self.checks[k].source];
            s.unverified = s.unverified.saturating_sub(len);
        }
        self.spare_buffer(done.buf);
        if self.done {
            return;
        }
        if done.writeback {
            out.push_back(Action::Sync(SyncJob {
                writer: self.part.writer(),
                work: SyncWork::Writeback,
            }));
        }
        let Some(k) = k else {
            self.resume_held(out);
            return;
        };
        let c = &mut self.checks[k];
        c.jobs = c.jobs.saturating_sub(1);
        let (i, state, jobs) = (c.source, c.state, c.jobs);
        // The pieces the verified prefix now covers: the bytes written were verified, even
        // those before a bad group or a failed write (none of a dead range's: its pieces went
        // back to the others).
        c.verified_to += done.written as u64;
        let first = c.pieces.start;
        while state != CheckState::Dead
            && !c.pieces.is_empty()
            && self.swarm.piece_range(c.pieces.start).1.end <= c.verified_to
        {
            c.pieces.start += 1;
        }
        let (verified, next) = (first..c.pieces.start, c.pieces.start);
        if done.result.is_ok() && jobs == 0 && state != CheckState::Receiving {
            self.checks.swap_remove(k);
        }
        for piece in verified {
            self.piece_verified(now, i, piece, out);
        }
        match done.result {
            Ok(()) => self.swarm.handle_alive(HolderId(i as u64), now),
            Err(VerifyFailure::Range(e)) => {
                self.end_check(done.check);
                if !self.sources[i].liar {
                    let _ = self.liar(now, i, next, e.to_string(), out);
                }
            }
            Err(VerifyFailure::Write(e)) => {
                let text = format!(
                    "get {}: {} ({} bytes kept for resume)",
                    display_name(&self.part.name),
                    local(&self.part.part_path)(e),
                    self.swarm.progress().verified_bytes
                );
                self.fail(text, out);
                return;
            }
        }
        self.resume_held(out);
        self.run(now, out);
        if self.checks.iter().all(|c| c.jobs == 0) {
            if self.finish_pending && !self.done {
                self.finish(now, out);
            }
            if std::mem::take(&mut self.holderless_pending) {
                self.check_holderless(out);
            }
        }
    }

    /// Reads again the holders held for their unverified bytes, once under the bounds.
    fn resume_held(&mut self, out: &mut VecDeque<Action>) {
        let (per_holder, per_download) = self.unverified_caps;
        if self.unverified >= per_download {
            return;
        }
        for s in &mut self.sources {
            if s.held && s.unverified < per_holder {
                s.held = false;
                if let Some(conn) = s.conn {
                    out.push_back(Action::Resume(conn));
                }
            }
        }
    }

    /// Every group of `piece` from holder `i` verified and was written.
    fn piece_verified(&mut self, now: Instant, i: usize, piece: usize, out: &mut VecDeque<Action>) {
        self.sources[i].delivered = true;
        self.swarm
            .handle_piece_verified(HolderId(i as u64), piece, now);
        if !self.swarm.verified().contains(piece) {
            // Its holder was dropped after the bytes arrived (a bad frame after them, a
            // close): they are verified and written all the same.
            self.swarm.handle_piece_verified_after_drop(piece, now);
        }
        if now >= self.next_progress {
            self.next_progress = now + PROGRESS_EVERY;
            let have = self.swarm.progress().verified_bytes;
            self.events.push_back(DownloadEvent::Progress { have });
        }
        self.record_due = true;
        if now >= self.next_record && !self.swarm.is_finished() {
            self.save_record_now(now, out);
        }
    }

    /// `holder`'s proof or bytes for `piece` failed verification.
    fn liar(
        &mut self,
        now: Instant,
        i: usize,
        piece: usize,
        why: String,
        out: &mut VecDeque<Action>,
    ) -> Verdict {
        self.sources[i].liar = true;
        self.drop_source(i, why, true, out);
        self.swarm
            .handle_piece_failed(HolderId(i as u64), piece, now);
        Verdict::Close(CloseReason::Local)
    }

    /// Holder `i` failed (error, close, stall, slow): dropped; its pieces go to the others.
    fn holder_failed(&mut self, now: Instant, i: usize, why: String, out: &mut VecDeque<Action>) {
        self.sources[i].failures += 1;
        self.drop_source(i, why, false, out);
        self.swarm.handle_holder_removed(HolderId(i as u64), now);
    }

    /// Closes holder `i`'s connection, and records and tells why it was dropped.
    fn drop_source(&mut self, i: usize, why: String, liar: bool, out: &mut VecDeque<Action>) {
        let addr = self.sources[i].addr;
        if let Some(conn) = self.reset_source(i) {
            out.push_back(close(conn));
        }
        self.failures.push(format!("{addr}: {why}"));
        self.events.push_back(DownloadEvent::Dropped {
            holder: addr,
            why,
            liar,
        });
    }

    /// A connection of this download closed (or its connect failed).
    pub fn handle_close(
        &mut self,
        now: Instant,
        attempt: Attempt,
        reason: &CloseReason,
        out: &mut VecDeque<Action>,
    ) {
        let Some(i) = self.source_of(attempt) else {
            return;
        };
        self.sources[i].conn = None;
        let s = &self.sources[i];
        if matches!(reason, CloseReason::ConnectFailed(_))
            && !s.pushed
            && self.firewalled.insert(s.addr)
        {
            // It may be firewalled: ask it to connect to us instead, its requests kept.
            self.sources[i].connect_failed = Some(reason.to_string());
            self.swarm.handle_alive(HolderId(i as u64), now);
            self.push(i);
            self.run(now, out);
            return;
        }
        let why = match reason {
            CloseReason::Eof => "the holder closed the connection early".to_string(),
            other => other.to_string(),
        };
        self.holder_failed(now, i, why, out);
        self.run(now, out);
    }

    /// Time passed: the whole-download bound, rate floors, queue waits, the scheduler's
    /// stall checks, the periodic lookup, an unanswered lookup.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut VecDeque<Action>) {
        if self.done {
            return;
        }
        if now >= self.give_up {
            let mut text = format!(
                "get {}: gave up after {} s (--get-timeout)",
                display_name(&self.part.name),
                self.limits.max_get.as_secs()
            );
            let have = self.swarm.progress().verified_bytes;
            if have > 0 {
                let _ = write!(text, " ({have} bytes kept for resume)");
            }
            return self.fail(text, out);
        }
        for i in 0..self.sources.len() {
            let s = &mut self.sources[i];
            if s.queued_since
                .is_some_and(|t| now >= t + self.limits.queue_wait)
            {
                let why = format!(
                    "still in its upload queue after {:.1} s",
                    self.limits.queue_wait.as_secs_f64()
                );
                self.holder_failed(now, i, why, out);
                continue;
            }
            if s.rate_check.is_some_and(|t| t <= now) {
                if let Some(floor) = &mut s.floor {
                    if floor.is_below(now) {
                        let why = format!(
                            "slower than {} ({} bytes in the last window)",
                            floor.describe(),
                            floor.window_bytes(now)
                        );
                        self.holder_failed(now, i, why, out);
                        continue;
                    }
                    s.rate_check = floor.poll_check(now);
                }
            }
        }
        if self
            .relookup_asked
            .is_some_and(|t| now >= t + RELOOKUP_PATIENCE)
        {
            self.relookup_asked = None;
            self.handle_holders(now, None, out);
        }
        if now >= self.next_relookup && self.relookup_asked.is_none() {
            self.next_relookup = now + RELOOKUP_EVERY;
            self.relookup_asked = Some(now);
            self.events.push_back(DownloadEvent::NeedHolders);
        }
        if self.record_due && now >= self.next_record {
            self.save_record_now(now, out);
        }
        // A holder that keeps us in its upload queue is bounded by the queue wait, not the
        // stall timer; one whose push waits for the index's budget, by the whole download's
        // deadline.
        for (i, s) in self.sources.iter_mut().enumerate() {
            if s.push_again_at.is_some_and(|t| t <= now) {
                s.push_again_at = None;
                self.events.push_back(DownloadEvent::Push {
                    holder: s.addr,
                    attempt: s.attempt,
                });
            }
            if s.queued_since.is_some() || s.push_again_at.is_some() {
                self.swarm.handle_alive(HolderId(i as u64), now);
            }
        }
        self.swarm.handle_tick(now);
        self.run(now, out);
    }

    /// When [`Download::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.done {
            return None;
        }
        let per_source = self.sources.iter().flat_map(|s| {
            [
                s.rate_check,
                s.queued_since.map(|t| t + self.limits.queue_wait),
                s.push_again_at,
            ]
            .into_iter()
            .flatten()
        });
        let relookup = self
            .relookup_asked
            .map_or(self.next_relookup, |t| t + RELOOKUP_PATIENCE);
        let record = self.record_due.then_some(self.next_record);
        per_source
            .chain(self.swarm.poll_deadline())
            .chain(record)
            .chain([self.give_up, relookup])
            .min()
    }

    /// Carries out what the scheduler decided, then checks whether holders are needed.
    fn run(&mut self, now: Instant, out: &mut VecDeque<Action>) {
        while let Some(action) = self.swarm.poll_action() {
            if self.done {
                return;
            }
            match action {
                swarm::Action::Request {
                    holder,
                    pieces,
                    groups,
                    ..
                } => self.request(now, holder.0 as usize, pieces, groups, out),
                // A pipelined answer cannot be recalled; its bytes still arrive, verified
                // and harmless, and the scheduler ignores the late copy.
                swarm::Action::Cancel { .. } => {}
                swarm::Action::DropHolder { holder, reason } => {
                    let i = holder.0 as usize;
                    match reason {
                        // Already dropped and named by `liar`.
                        DropReason::BadBytes { .. } => {}
                        DropReason::Stalled => {
                            self.sources[i].failures += 1;
                            let addr = self.sources[i].addr;
                            if let Some(conn) = self.reset_source(i) {
                                out.push_back(close(conn));
                            }
                            let why = format!(
                                "nothing received for {:.1} s",
                                self.limits.stall.as_secs_f64()
                            );
                            self.failures.push(format!("{addr}: {why}"));
                            self.events.push_back(DownloadEvent::Dropped {
                                holder: addr,
                                why,
                                liar: false,
                            });
                        }
                    }
                }
                // Every piece verified: landed once the verifying thread has answered every
                // job still out, so a holder whose bytes there fail is still named.
                swarm::Action::Done if self.checks.iter().any(|c| c.jobs > 0) => {
                    self.finish_pending = true;
                }
                swarm::Action::Done => self.finish(now, out),
                swarm::Action::Failed(reason) => {
                    let text = format!("get {}: {reason}", display_name(&self.part.name));
                    self.fail(text, out);
                }
            }
        }
        if !self.done
            && self.swarm.progress().holders == 0
            && self.relookup_asked.is_none()
            && !self.holderless_pending
        {
            {
                // Ask once for holders; `handle_holders` with nothing usable ends it.
                self.relookup_asked = Some(now);
                self.events.push_back(DownloadEvent::NeedHolders);
            }
        }
    }

    /// Called when a lookup brought nothing: with no holder, the download fails, unless
    /// bytes it received are still with the verifying thread. Those may finish the file (a
    /// holder that sent all of it and then junk was dropped for the junk): it waits for
    /// them (asking no more lookups meanwhile), and is checked again when the last answers.
    fn check_holderless(&mut self, out: &mut VecDeque<Action>) {
        if self.done || self.swarm.progress().holders > 0 || self.relookup_asked.is_some() {
            return;
        }
        if self.finish_pending || self.checks.iter().any(|c| c.jobs > 0) {
            self.holderless_pending = true;
            return;
        }
        let have = self.swarm.progress().verified_bytes;
        let kept = if have > 0 {
            format!(" ({have} bytes kept for resume)")
        } else {
            String::new()
        };
        let why = if self.failures.is_empty() {
            "no holder could be reached".to_string()
        } else {
            self.failures.join("; ")
        };
        let text = format!(
            "get {}: every holder failed: {why}{kept}",
            display_name(&self.part.name)
        );
        self.fail(text, out);
    }

    fn request(
        &mut self,
        now: Instant,
        i: usize,
        pieces: Range<usize>,
        groups: Range<u64>,
        out: &mut VecDeque<Action>,
    ) {
        let s = &mut self.sources[i];
        s.asked.push_back(Asked {
            pieces,
            groups: groups.clone(),
        });
        if let Some(conn) = s.conn {
            let action = self.request_frame(conn, groups);
            out.push_back(action);
        } else if s.attempt == 0 && self.firewalled.contains(&s.addr) {
            self.push(i);
        } else if s.attempt == 0 {
            self.next_attempt += 1;
            s.attempt = self.next_attempt;
            let addr = s.addr;
            self.events.push_back(DownloadEvent::Trying(addr));
            let _ = now;
            out.push_back(Action::Connect {
                addr,
                role: Role::Download(Attempt {
                    download: self.id,
                    n: self.next_attempt,
                }),
            });
        }
    }

    /// Holder `i` is asked for a push on a new attempt (its requests wait for the
    /// connection).
    fn push(&mut self, i: usize) {
        self.next_attempt += 1;
        let s = &mut self.sources[i];
        s.attempt = self.next_attempt;
        s.pushed = true;
        self.events.push_back(DownloadEvent::Push {
            holder: s.addr,
            attempt: s.attempt,
        });
    }

    /// Hands the record of the pieces verified so far to the syncing thread; if the last
    /// one is still being saved, it stays due and is tried again at the next turn of
    /// [`RECORD_EVERY`].
    fn save_record_now(&mut self, now: Instant, out: &mut VecDeque<Action>) {
        self.next_record = now + RECORD_EVERY;
        if let Some(job) = self.part.record_job(self.swarm.verified()) {
            self.record_due = false;
            out.push_back(Action::Sync(job));
        }
    }

    /// The download stopped short: the verified pieces are recorded, here and now, and no
    /// record is saved after this one.
    fn save_last_record(&mut self) {
        if let Err(e) = self.part.close_records(Some(self.swarm.verified())) {
            log::warn!(target: "peer", "cannot save the resume record of {}: {e}", self.part.hash);
        }
    }

    fn close_all(&mut self, out: &mut VecDeque<Action>) {
        for i in 0..self.sources.len() {
            if let Some(conn) = self.reset_source(i) {
                out.push_back(close(conn));
            }
        }
    }

    /// Forgets holder `i`'s connection, and the range it was sending.
    fn reset_source(&mut self, i: usize) -> Option<ConnId> {
        if let Some(check) = self.sources[i].receiving.as_ref().map(|r| r.check) {
            self.end_check(check);
        }
        self.sources[i].reset()
    }

    /// Every piece verified: land the file.
    fn finish(&mut self, now: Instant, out: &mut VecDeque<Action>) {
        self.done = true;
        self.close_all(out);
        match self.part.land(&self.dir) {
            Ok((path, existed)) => {
                let (received, secs) = self.received(now);
                let holders = self.sources.iter().filter(|s| s.delivered).count();
                self.events.push_back(DownloadEvent::Saved {
                    path,
                    existed,
                    received,
                    secs,
                    holders,
                });
            }
            Err(e) => {
                self.events
                    .push_back(DownloadEvent::Failed(format!("get: {e}")));
            }
        }
    }

    fn fail(&mut self, text: String, out: &mut VecDeque<Action>) {
        if self.done {
            return;
        }
        self.done = true;
        self.close_all(out);
        self.save_last_record();
        self.part.close_writer();
        self.events.push_back(DownloadEvent::Failed(text));
    }

    /// The peer is stopping (or the download is abandoned): the verified pieces are recorded
    /// for a later resume, the connections closed.
    pub fn abandon(&mut self, out: &mut VecDeque<Action>) {
        if !self.done {
            self.done = true;
            self.close_all(out);
            self.save_last_record();
            self.part.close_writer();
        }
    }
}

fn close(conn: ConnId) -> Action {
    Action::Close {
        conn,
        reason: CloseReason::Local,
        after_flush: false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::peer::verify;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("p2pshare-dl-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn a_record_without_its_partial_file_proves_nothing_and_landing_removes_both() {
        let dir = tmpdir("record");
        let content = common_bytes(100_000);
        let hash = FileHash::of(&content);
        let pb = swarm::Config::default().piece_bytes;
        let (mut part, verified) =
            PartFile::open(&dir, hash, content.len() as u64, "../x.bin".into(), pb).unwrap();
        assert_eq!(verified.count(), 0);
        part.write_at(0, &content).unwrap();
        let mut all = PieceSet::new(verified.len());
        all.insert(0);
        part.save_record(&all).unwrap();
        drop(part);
        // Reopened: the record proves the piece.
        let (mut part, verified) =
            PartFile::open(&dir, hash, content.len() as u64, "../x.bin".into(), pb).unwrap();
        assert_eq!(verified.count(), 1);
        let (path, existed) = part.land(&dir).unwrap();
        assert_eq!(path, dir.join("_x.bin"));
        assert!(!existed);
        assert_eq!(fs::read(&path).unwrap(), content);
        assert!(!part.part_path.exists() && !part.record_path.exists());
        // A record alone (its partial file gone) is not trusted.
        ResumeRecord {
            hash,
            size: content.len() as u64,
            piece_bytes: pb,
            verified: all,
        }
        .save(&part.record_path)
        .unwrap();
        let (_, verified) =
            PartFile::open(&dir, hash, content.len() as u64, "y".into(), pb).unwrap();
        assert_eq!(verified.count(), 0);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// The ranges asked for in `out`'s frames, and the verifying jobs it holds, in order;
    /// whether it holds or resumes `conn`.
    struct Seen {
        asked: Vec<Range<u64>>,
        jobs: Vec<VerifyJob>,
        held: bool,
        resumed: bool,
    }

    fn take(out: &mut VecDeque<Action>, conn: ConnId) -> Seen {
        let mut seen = Seen {
            asked: Vec::new(),
            jobs: Vec::new(),
            held: false,
            resumed: false,
        };
        for action in out.drain(..) {
            match action {
                Action::Send { frame, .. } => {
                    let mut decoder = crate::codec::Decoder::new(1 << 20);
                    for payload in crate::codec::decode_all(&mut decoder, &frame).unwrap().0 {
                        let TransferRequest::Range { first, end, .. } =
                            wire::decode(&payload).unwrap()
                        else {
                            panic!("a download sends only range requests");
                        };
                        seen.asked.push(first..end);
                    }
                }
                Action::Verify(job) => seen.jobs.push(job),
                Action::Hold(c) => seen.held |= c == conn,
                Action::Resume(c) => seen.resumed |= c == conn,
                _ => {}
            }
        }
        seen
    }

    /// A download of `content` (one holder, `holder`) started and connected on `conn`: the
    /// download, its attempt, and what it asked for first.
    fn connected(
        id: DownloadId,
        dir: &Path,
        content: &[u8],
        holder: &str,
        conn: ConnId,
    ) -> (Download, Attempt, Seen) {
        let holder: SocketAddr = holder.parse().unwrap();
        let file = HeldFile {
            hash: FileHash::of(content),
            size: content.len() as u64,
            name: format!("{id}.bin"),
            holders: vec![holder],
            holder_count: 1,
        };
        let now = Instant::now();
        let cfg = swarm::Config::default();
        let mut dl = Download::new(
            id,
            now,
            dir,
            &file,
            vec![holder],
            None,
            Default::default(),
            cfg,
        )
        .unwrap();
        let (attempt, seen) = start_and_connect(&mut dl, now, conn);
        (dl, attempt, seen)
    }

    /// Starts `dl` and connects its first attempt on `conn`: the attempt, and what it asked
    /// for first.
    fn start_and_connect(dl: &mut Download, now: Instant, conn: ConnId) -> (Attempt, Seen) {
        let mut out = VecDeque::new();
        dl.start(now, &mut out);
        let attempt = out
            .iter()
            .find_map(|a| match a {
                Action::Connect {
                    role: Role::Download(attempt),
                    ..
                } => Some(*attempt),
                _ => None,
            })
            .expect("a connect");
        out.clear();
        assert_eq!(
            dl.handle_connected(now, conn, attempt, &mut out),
            Verdict::Continue
        );
        (attempt, take(&mut out, conn))
    }

    /// The holder's answer to `groups`: the header frame's payload, then proof and data.
    fn answer(content: &[u8], groups: Range<u64>) -> (Vec<u8>, Vec<u8>) {
        let (_, ob) = outboard::compute_in_memory(content);
        let range = outboard::answer_range(&ob, groups.clone()).unwrap();
        let mut frame = Vec::new();
        wire::encode_frame(
            &TransferResponse::Sending {
                size: content.len() as u64,
                first: groups.start,
                end: groups.end,
            },
            &mut frame,
        );
        let mut decoder = crate::codec::Decoder::new(1 << 20);
        let header = crate::codec::decode_all(&mut decoder, &frame)
            .unwrap()
            .0
            .remove(0);
        let mut raw = range.proof;
        raw.extend_from_slice(&content[range.data.start as usize..range.data.end as usize]);
        (header, raw)
    }

    #[test]
    fn unverified_bytes_stop_the_reading_and_nothing_is_written_before_it_verifies() {
        let dir = tmpdir("inflight");
        let content = common_bytes(1 << 20);
        let holder: SocketAddr = "10.0.0.1:7000".parse().unwrap();
        let file = HeldFile {
            hash: FileHash::of(&content),
            size: content.len() as u64,
            name: "f.bin".into(),
            holders: vec![holder],
            holder_count: 1,
        };
        let now = Instant::now();
        let cfg = swarm::Config::default();
        let piece_bytes = cfg.piece_bytes;
        let mut dl = Download::new(
            1,
            now,
            &dir,
            &file,
            vec![holder],
            None,
            Default::default(),
            cfg,
        )
        .unwrap();
        dl.set_unverified_caps(300 << 10, 4 << 20);
        let conn = ConnId(5);
        let (attempt, seen) = start_and_connect(&mut dl, now, conn);
        let mut out = VecDeque::new();
        assert!(seen.asked.len() >= 2, "{:?}", seen.asked);
        let part = dir.join(format!(".{}{PART_SUFFIX}", file.hash));
        let mut jobs = Vec::new();
        let mut held_after = None;
        // The first two ranges arrive, 64 KiB at a time; nothing is verified meanwhile.
        let asked = seen.asked[..2].to_vec();
        for groups in asked.clone() {
            let (header, raw) = answer(&content, groups);
            assert_eq!(
                dl.handle_frame(now, conn, attempt, &header, &mut out),
                Verdict::Continue
            );
            for chunk in raw.chunks(64 << 10) {
                assert_eq!(
                    dl.handle_raw(now, attempt, chunk, &mut out),
                    Verdict::Continue
                );
                let seen = take(&mut out, conn);
                jobs.extend(seen.jobs);
                if seen.held && held_after.is_none() {
                    held_after = Some(jobs.iter().map(|j| j.data.len()).sum::<usize>());
                }
            }
        }
        // Held as soon as 300 KiB waited (whole groups, handed over a read at a time).
        let held_after = held_after.expect("held");
        assert!(
            (300 << 10..(300 + 64 + 16) << 10).contains(&held_after),
            "{held_after}"
        );
        assert!(jobs.iter().all(|j| j.data.len() % GROUP as usize == 0));
        assert_eq!(
            fs::metadata(&part).unwrap().len(),
            0,
            "nothing written unverified"
        );
        assert_eq!(dl.progress().1, 0);
        // The verifying thread answers: the holder is read again, both pieces verified and
        // written.
        let mut resumed = false;
        for job in jobs {
            dl.handle_verified(now, verify::run(job), &mut out);
            resumed |= take(&mut out, conn).resumed;
        }
        assert!(resumed);
        assert_eq!(dl.progress().1, 2 * piece_bytes);
        let on_disk = fs::read(&part).unwrap();
        for groups in asked {
            let b = outboard::group_bytes(file.size, groups);
            let b = b.start as usize..b.end as usize;
            assert_eq!(on_disk[b.clone()], content[b]);
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_bad_group_found_by_the_verifying_thread_drops_and_names_its_holder() {
        let dir = tmpdir("liar");
        let content = common_bytes(600 << 10);
        let holder: SocketAddr = "10.0.0.2:7000".parse().unwrap();
        let (hash, size) = (FileHash::of(&content), content.len() as u64);
        let now = Instant::now();
        let conn = ConnId(6);
        let (mut dl, attempt, seen) = connected(2, &dir, &content, "10.0.0.2:7000", conn);
        let mut out = VecDeque::new();
        let groups = seen.asked[0].clone();
        let (header, mut raw) = answer(&content, groups.clone());
        // One byte wrong in the range's third group.
        let proof = outboard::proof_len(size, groups.clone()).unwrap();
        raw[proof + 2 * GROUP as usize + 100] ^= 1;
        let bad = groups.start + 2;
        dl.handle_frame(now, conn, attempt, &header, &mut out);
        dl.handle_raw(now, attempt, &raw, &mut out);
        let jobs = take(&mut out, conn).jobs;
        for job in jobs {
            dl.handle_verified(now, verify::run(job), &mut out);
        }
        let closed = out
            .iter()
            .any(|a| matches!(a, Action::Close { conn: c, .. } if *c == conn));
        assert!(closed, "the liar's connection is closed");
        let mut named = false;
        while let Some(e) = dl.poll_event() {
            if let DownloadEvent::Dropped {
                holder: h,
                why,
                liar,
            } = e
            {
                named |= h == holder && liar && why.contains(&format!("(group {bad})"));
            }
        }
        assert!(named);
        // Only the two verified groups before the bad one were written.
        let part = dir.join(format!(".{}{PART_SUFFIX}", hash));
        let on_disk = fs::read(&part).unwrap();
        let (start, end) = ((groups.start * GROUP) as usize, (bad * GROUP) as usize);
        assert_eq!(on_disk.len(), end);
        assert_eq!(on_disk[start..end], content[start..end]);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A holder that sent the whole file and was then dropped (junk after it) leaves every
    /// byte with the verifying thread; a lookup that finds no other holder meanwhile must
    /// not fail the download: it lands once the bytes verify.
    #[test]
    fn a_holder_dropped_while_its_bytes_verify_does_not_fail_the_download() {
        let dir = tmpdir("dropped-verifying");
        let content = common_bytes(100_000);
        let now = Instant::now();
        let conn = ConnId(7);
        let (mut dl, attempt, seen) = connected(3, &dir, &content, "10.0.0.3:7000", conn);
        let mut out = VecDeque::new();
        let mut jobs = Vec::new();
        for groups in seen.asked {
            let (header, raw) = answer(&content, groups);
            dl.handle_frame(now, conn, attempt, &header, &mut out);
            dl.handle_raw(now, attempt, &raw, &mut out);
            jobs.extend(take(&mut out, conn).jobs);
        }
        assert_eq!(
            jobs.iter().map(|j| j.data.len()).sum::<usize>(),
            content.len()
        );
        // The junk after the file: the holder's connection ends, nothing verified yet.
        let junk = CloseReason::Protocol("frame not terminated by \\r\\r\\n".into());
        dl.handle_close(now, attempt, &junk, &mut out);
        let mut asked_holders = false;
        while let Some(e) = dl.poll_event() {
            asked_holders |= matches!(e, DownloadEvent::NeedHolders);
        }
        assert!(asked_holders);
        // The lookup finds nobody: the download waits for its bytes.
        dl.handle_holders(now, Some(Vec::new()), &mut out);
        assert!(!dl.is_done());
        for job in jobs {
            dl.handle_verified(now, verify::run(job), &mut out);
        }
        assert!(dl.is_done());
        let mut saved = None;
        while let Some(e) = dl.poll_event() {
            match e {
                DownloadEvent::Saved { path, .. } => saved = Some(path),
                DownloadEvent::Failed(why) => panic!("failed: {why}"),
                _ => {}
            }
        }
        assert_eq!(fs::read(saved.expect("saved")).unwrap(), content);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A holder dropped with only part of the file verified: once its bytes are answered
    /// and a lookup finds nobody, the download fails (it does not wait forever).
    #[test]
    fn a_holderless_download_fails_once_its_bytes_are_verified() {
        let dir = tmpdir("holderless");
        let content = common_bytes(2 << 20);
        let now = Instant::now();
        let conn = ConnId(8);
        let (mut dl, attempt, seen) = connected(4, &dir, &content, "10.0.0.4:7000", conn);
        let mut out = VecDeque::new();
        let (header, raw) = answer(&content, seen.asked[0].clone());
        dl.handle_frame(now, conn, attempt, &header, &mut out);
        dl.handle_raw(now, attempt, &raw, &mut out);
        let jobs = take(&mut out, conn).jobs;
        assert!(!jobs.is_empty());
        dl.handle_close(now, attempt, &CloseReason::Eof, &mut out);
        while dl.poll_event().is_some() {}
        dl.handle_holders(now, Some(Vec::new()), &mut out);
        assert!(!dl.is_done(), "its bytes are still being verified");
        // It waits for them without asking the index again.
        let mut jobs = jobs;
        let last = jobs.pop().unwrap();
        for job in jobs {
            dl.handle_verified(now, verify::run(job), &mut out);
        }
        assert!(!dl.is_done());
        assert!(std::iter::from_fn(|| dl.poll_event())
            .all(|e| !matches!(e, DownloadEvent::NeedHolders)));
        // The last answer leaves the file unfinished and no holder: it fails.
        dl.handle_verified(now, verify::run(last), &mut out);
        assert!(dl.is_done());
        let failed = std::iter::from_fn(|| dl.poll_event())
            .find_map(|e| match e {
                DownloadEvent::Failed(why) => Some(why),
                _ => None,
            })
            .expect("failed");
        assert!(failed.contains("every holder failed"), "{failed}");
        assert!(failed.contains("bytes kept for resume"), "{failed}");
        fs::remove_dir_all(&dir).unwrap();
    }

    const GROUP: u64 = outboard::GROUP_BYTES;

    fn common_bytes(n: usize) -> Vec<u8> {
        (0..n as u32).map(|i| (i * 7 % 251) as u8).collect()
    }
}
