//! The piece scheduler of a swarm download (issue 14, part 2), and its resume record.
//!
//! [`Swarm`] is a sans-IO machine: it owns no socket, file or clock. It plans the download of
//! one file of `size` bytes as pieces of [`Config::piece_bytes`] (a multiple of the 16 KiB
//! verification group, `outboard::GROUP_BYTES`) over a set of holders that changes while it
//! runs. Inputs are `handle_*` calls, each given `now`; outputs are [`Action`]s taken with
//! [`Swarm::poll_action`]; [`Swarm::poll_deadline`] says when to call [`Swarm::handle_tick`].
//!
//! # Policy
//! - Pieces are handed out lowest first to holders with a free slot, fastest holder first.
//!   A holder's slots ([`Swarm::depth`]) grow with its measured rate (bytes delivered per
//!   second of being busy) from [`Config::min_in_flight`] to [`Config::max_in_flight`], so a
//!   slow holder has fewer requests in flight and, as slots free up only when it delivers,
//!   gets fewer pieces.
//! - A holder fast enough to want more pieces ahead than [`Config::max_in_flight`] requests
//!   hold is asked for runs of consecutive pieces in one request ([`Swarm::run_len`], up to
//!   [`Config::max_run`]): fewer, larger ranges, so its per-request work (a proof, a header,
//!   opening the file, a turn of both loops) is paid less often. The pieces of a run are
//!   still settled one by one, as each is verified.
//! - Endgame: when no piece is left unasked and a holder is idle, it is asked for the
//!   unverified piece in flight longest (at most [`Config::racers`] holders per piece); the
//!   first verified copy wins and the other requests for it are cancelled.
//! - A holder whose bytes fail verification is dropped at once and never asked again (even if
//!   it is added again); a holder with requests in flight but no byte for
//!   [`Config::stall_timeout`] is dropped as stalled (it may be added again later). Either
//!   way its pieces go back to the pool.
//! - With no holder for [`Config::holderless_grace`] the download fails with a reason
//!   naming what is missing and why holders were lost.
//!
//! # Invariants (checked by the property test)
//! - A verified piece is never requested again, and is counted verified exactly once, even
//!   when a cancelled racer's answer arrives late.
//! - A holder is never asked twice for the same piece at once, and never asked at all after
//!   it was dropped for bad bytes.
//! - The machine ends with exactly one of [`Action::Done`] (every piece verified) or
//!   [`Action::Failed`]; after it, every input is ignored.
//!
//! # Resume record
//! [`ResumeRecord`] is the set of verified pieces of a partial file, stored next to it
//! ([`record_path`]) with a checksum and written atomically (temporary file, fsync, rename,
//! fsync of the directory). A missing, truncated, corrupt or foreign record loads as "nothing
//! verified" ([`ResumeRecord::load`]): it is never trusted beyond what it can prove about
//! itself. The downloader must make the partial file's bytes durable (`fdatasync`) before it
//! saves a record naming them.
//!
//! # How the peer uses it
//! `download::Download` keeps one `Swarm` per file: the lookup's holders and a periodic
//! lookup feed `handle_holder_added`, `Action::Request` opens (or reuses) the holder's
//! connection and sends a range request for the piece's groups, pipelined; the reader feeds
//! `handle_bytes`, and the verifying thread's answers (`verify`: every group of the range
//! verified) give `handle_piece_verified` (or `handle_piece_failed` on a bad group); a holder's
//! upload queue keeps it alive (`handle_alive`); `DropHolder` closes its connection (a
//! `Cancel`led answer still arrives on the pipelined connection and is ignored); the record
//! is saved at most every second while pieces arrive, and when the download stops.

use crate::peer::outboard::{self, GROUP_BYTES};
use crate::peer::share::PART_SUFFIX;
use crate::wire::FileHash;
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A holder as the caller names it (e.g. an index into its table of addresses).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HolderId(pub u64);

impl fmt::Display for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "holder {}", self.0)
    }
}

/// The scheduler's knobs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Bytes per piece; a multiple of `outboard::GROUP_BYTES`.
    pub piece_bytes: u64,
    /// Requests in flight per holder before its rate is known, and at least.
    pub min_in_flight: usize,
    /// Requests in flight per holder at most.
    pub max_in_flight: usize,
    /// How much work (in seconds at its measured rate) a holder is given ahead.
    pub pipeline: Duration,
    /// A busy holder that sends nothing for this long is dropped as stalled.
    pub stall_timeout: Duration,
    /// How long the download may have no holder at all before it fails.
    pub holderless_grace: Duration,
    /// Holders racing one piece in the endgame, at most.
    pub racers: usize,
    /// Consecutive pieces one request may cover, at most (a fast holder's; see
    /// [`Swarm::run_len`]).
    pub max_run: usize,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            piece_bytes: 16 * GROUP_BYTES,
            min_in_flight: 2,
            max_in_flight: 8,
            pipeline: Duration::from_millis(500),
            stall_timeout: Duration::from_secs(10),
            holderless_grace: Duration::from_secs(30),
            racers: 2,
            max_run: 8,
        }
    }
}

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Ask `holder` for `pieces` (consecutive, one or more): the groups `groups` (bytes
    /// `bytes`) of the file. Each piece is answered on its own, as it verifies.
    Request {
        /// Who to ask.
        holder: HolderId,
        /// The pieces' indexes.
        pieces: Range<usize>,
        /// The 16 KiB groups to ask for (the range request's unit).
        groups: Range<u64>,
        /// The bytes those groups cover (the last piece may be short).
        bytes: Range<u64>,
    },
    /// Stop fetching `piece` from `holder` (another holder's copy won the race).
    Cancel {
        /// Who was asked.
        holder: HolderId,
        /// The piece no longer wanted from it.
        piece: usize,
    },
    /// Close everything with `holder`; its requests are void.
    DropHolder {
        /// The holder dropped.
        holder: HolderId,
        /// Why, for the person.
        reason: DropReason,
    },
    /// Every piece is verified.
    Done,
    /// The download cannot complete.
    Failed(FailReason),
}

/// Why a holder was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// Its bytes for `piece` failed verification; it is never asked again.
    BadBytes {
        /// The piece whose bytes were wrong.
        piece: usize,
    },
    /// It had requests in flight and sent nothing for the stall timeout.
    Stalled,
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DropReason::BadBytes { piece } => {
                write!(f, "sent bytes that fail verification (piece {piece})")
            }
            DropReason::Stalled => write!(f, "stalled"),
        }
    }
}

/// Why a download failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FailReason {
    /// No holder was left for the grace period.
    NoHolders {
        /// Pieces still missing.
        missing: usize,
        /// Pieces in all.
        pieces: usize,
        /// Holders dropped for bad bytes during the download.
        liars: usize,
        /// Holders dropped as stalled.
        stalled: usize,
    },
}

impl fmt::Display for FailReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailReason::NoHolders {
                missing,
                pieces,
                liars,
                stalled,
            } => write!(
                f,
                "no holder left with {missing} of {pieces} pieces missing \
                 ({liars} dropped for bad bytes, {stalled} stalled)"
            ),
        }
    }
}

/// A set of piece indexes (a bitmap).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceSet {
    bits: Vec<u64>,
    len: usize,
    count: usize,
}

impl PieceSet {
    /// The empty set over `len` pieces.
    pub fn new(len: usize) -> PieceSet {
        PieceSet {
            bits: vec![0; len.div_ceil(64)],
            len,
            count: 0,
        }
    }

    /// Pieces the set ranges over.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the set ranges over no piece.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Pieces in the set.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Whether `i` is in the set.
    pub fn contains(&self, i: usize) -> bool {
        i < self.len && self.bits[i / 64] & (1 << (i % 64)) != 0
    }

    /// Adds `i`; returns whether it was new.
    pub fn insert(&mut self, i: usize) -> bool {
        assert!(i < self.len, "piece {i} out of {}", self.len);
        let new = !self.contains(i);
        self.bits[i / 64] |= 1 << (i % 64);
        self.count += new as usize;
        new
    }

    /// Whether every piece is in the set.
    pub fn is_full(&self) -> bool {
        self.count == self.len
    }
}

/// Number of pieces of a file of `size` bytes (an empty file has one, empty, piece).
pub fn piece_count(size: u64, piece_bytes: u64) -> usize {
    size.div_ceil(piece_bytes).max(1) as usize
}

/// A piece in flight, and the request (the run) that asked for it.
#[derive(Debug, Clone, Copy)]
struct InFlight {
    piece: usize,
    request: u64,
    asked: Instant,
}

#[derive(Debug)]
struct Holder {
    in_flight: Vec<InFlight>,
    delivered: u64,
    busy: Duration,
    busy_since: Option<Instant>,
    last_progress: Instant,
}

impl Holder {
    /// Requests in flight: a run's pieces are pushed together and keep their order.
    fn requests(&self) -> usize {
        let f = &self.in_flight;
        (0..f.len())
            .filter(|&i| i == 0 || f[i].request != f[i - 1].request)
            .count()
    }

    /// Bytes per second while busy, once it has delivered something.
    fn rate(&self, now: Instant) -> Option<f64> {
        let busy = self.busy + self.busy_since.map_or(Duration::ZERO, |t| now - t);
        (self.delivered > 0 && !busy.is_zero()).then(|| self.delivered as f64 / busy.as_secs_f64())
    }
}

/// Progress of a download, for the person.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes in verified pieces.
    pub verified_bytes: u64,
    /// The file's size.
    pub total_bytes: u64,
    /// Verified pieces.
    pub verified_pieces: usize,
    /// Pieces in all.
    pub pieces: usize,
    /// Holders in use.
    pub holders: usize,
    /// Pieces asked for and not verified yet.
    pub in_flight: usize,
}

/// The piece scheduler of one download (see the module docs).
#[derive(Debug)]
pub struct Swarm {
    cfg: Config,
    size: u64,
    verified: PieceSet,
    /// Bytes of the pieces in `verified` (kept as they are added: progress is asked for on
    /// every read of a download).
    verified_bytes: u64,
    /// Holders with each piece in flight.
    racers: Vec<Vec<HolderId>>,
    holders: BTreeMap<HolderId, Holder>,
    banned: HashSet<HolderId>,
    liars: usize,
    stalled: usize,
    holderless_since: Option<Instant>,
    actions: VecDeque<Action>,
    finished: bool,
    /// The number of the next request.
    next_request: u64,
}

impl Swarm {
    /// Plans a download of `size` bytes, of which the pieces in `verified` are already on disk
    /// and verified (resume; `None` for a fresh start).
    pub fn new(size: u64, cfg: Config, verified: Option<PieceSet>, now: Instant) -> Swarm {
        assert!(
            cfg.piece_bytes > 0 && cfg.piece_bytes % GROUP_BYTES == 0,
            "pieces are whole 16 KiB groups"
        );
        assert!(cfg.min_in_flight >= 1 && cfg.max_in_flight >= cfg.min_in_flight);
        assert!(cfg.max_run >= 1);
        let n = piece_count(size, cfg.piece_bytes);
        let verified = match verified {
            Some(v) if v.len() == n => v,
            _ => PieceSet::new(n),
        };
        let mut s = Swarm {
            cfg,
            size,
            verified,
            verified_bytes: 0,
            racers: vec![Vec::new(); n],
            holders: BTreeMap::new(),
            banned: HashSet::new(),
            liars: 0,
            stalled: 0,
            holderless_since: Some(now),
            actions: VecDeque::new(),
            finished: false,
            next_request: 0,
        };
        s.verified_bytes = (0..n)
            .filter(|&i| s.verified.contains(i))
            .map(|i| s.piece_len(i))
            .sum();
        if s.verified.is_full() {
            s.finish(Action::Done);
        }
        s
    }

    /// The groups and bytes of piece `i`.
    pub fn piece_range(&self, i: usize) -> (Range<u64>, Range<u64>) {
        let pb = self.cfg.piece_bytes;
        let start = i as u64 * pb;
        let end = (start + pb).min(self.size);
        let g0 = start / GROUP_BYTES;
        let g1 = end.div_ceil(GROUP_BYTES).max(g0 + 1);
        (g0..g1, start.min(self.size)..end.max(start.min(self.size)))
    }

    /// The bytes of piece `i` (the last piece may be short; the empty file's is empty).
    fn piece_len(&self, i: usize) -> u64 {
        let b = self.piece_range(i).1;
        b.end - b.start
    }

    /// The pieces verified so far (for the resume record).
    pub fn verified(&self) -> &PieceSet {
        &self.verified
    }

    /// Whether `Done` or `Failed` was issued.
    pub fn is_finished(&self) -> bool {
        self.finished
    }

    /// Where the download stands.
    pub fn progress(&self) -> Progress {
        Progress {
            verified_bytes: self.verified_bytes,
            total_bytes: self.size,
            verified_pieces: self.verified.count(),
            pieces: self.verified.len(),
            holders: self.holders.len(),
            in_flight: self.holders.values().map(|h| h.in_flight.len()).sum(),
        }
    }

    /// Pieces `holder` should have ahead at its measured rate ([`Config::pipeline`]'s
    /// worth), unless not measured yet.
    fn ahead(&self, holder: HolderId, now: Instant) -> Option<usize> {
        let rate = self.holders.get(&holder)?.rate(now)?;
        let ahead = rate * self.cfg.pipeline.as_secs_f64() / self.cfg.piece_bytes as f64;
        Some(ahead.ceil() as usize)
    }

    /// Requests `holder` may have in flight now.
    pub fn depth(&self, holder: HolderId, now: Instant) -> usize {
        if !self.holders.contains_key(&holder) {
            return 0;
        }
        self.ahead(holder, now)
            .map_or(self.cfg.min_in_flight, |ahead| {
                ahead.clamp(self.cfg.min_in_flight, self.cfg.max_in_flight)
            })
    }

    /// Pieces one request to `holder` covers: one, until it wants more pieces ahead than
    /// [`Config::max_in_flight`] requests of one piece hold; then enough for its
    /// [`Config::pipeline`] in that many requests, at most [`Config::max_run`].
    pub fn run_len(&self, holder: HolderId, now: Instant) -> usize {
        self.ahead(holder, now).map_or(1, |ahead| {
            ahead
                .div_ceil(self.cfg.max_in_flight)
                .clamp(1, self.cfg.max_run)
        })
    }

    /// The next thing to do, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When [`Self::handle_tick`] must be called next (a stall or the holderless grace).
    pub fn poll_deadline(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let stalls = self
            .holders
            .values()
            .filter(|h| !h.in_flight.is_empty())
            .map(|h| h.last_progress + self.cfg.stall_timeout);
        let grace = self.holderless_since.map(|t| t + self.cfg.holderless_grace);
        stalls.chain(grace).min()
    }

    /// A holder of the file is known (from a lookup). A holder dropped for bad bytes, or one
    /// already in use, is ignored.
    pub fn handle_holder_added(&mut self, holder: HolderId, now: Instant) {
        if self.finished || self.banned.contains(&holder) || self.holders.contains_key(&holder) {
            return;
        }
        self.holders.insert(
            holder,
            Holder {
                in_flight: Vec::new(),
                delivered: 0,
                busy: Duration::ZERO,
                busy_since: None,
                last_progress: now,
            },
        );
        self.holderless_since = None;
        self.fill(now);
    }

    /// A holder went away (its connection ended); its pieces go to others.
    pub fn handle_holder_removed(&mut self, holder: HolderId, now: Instant) {
        if self.finished || !self.holders.contains_key(&holder) {
            return;
        }
        self.remove(holder, now);
        self.fill(now);
    }

    /// `n` bytes of `piece` arrived from `holder` (before verification; they feed its rate and
    /// keep it from being judged stalled).
    pub fn handle_bytes(&mut self, holder: HolderId, piece: usize, n: u64, now: Instant) {
        if self.finished {
            return;
        }
        let Some(h) = self.holders.get_mut(&holder) else {
            return;
        };
        if h.in_flight.iter().any(|r| r.piece == piece) {
            h.delivered += n;
            h.last_progress = now;
        }
    }

    /// `holder` has requests in flight and is alive but not sending yet (its upload queue
    /// moved): it is not judged stalled for another stall timeout.
    pub fn handle_alive(&mut self, holder: HolderId, now: Instant) {
        if let Some(h) = self.holders.get_mut(&holder) {
            h.last_progress = now;
        }
    }

    /// Whether `holder` is in use (added, not removed or dropped).
    pub fn has_holder(&self, holder: HolderId) -> bool {
        self.holders.contains_key(&holder)
    }

    /// `holder`'s copy of `piece` was verified and written. A late answer to a cancelled
    /// request, or a second copy, changes nothing.
    pub fn handle_piece_verified(&mut self, holder: HolderId, piece: usize, now: Instant) {
        if self.finished || piece >= self.verified.len() {
            return;
        }
        let asked = self
            .holders
            .get(&holder)
            .is_some_and(|h| h.in_flight.iter().any(|r| r.piece == piece));
        if !asked || self.verified.contains(piece) {
            return;
        }
        self.mark_verified(piece);
        self.settle(holder, piece, now);
        if let Some(h) = self.holders.get_mut(&holder) {
            h.last_progress = now;
        }
        self.piece_verified(piece, Some(holder), now);
    }

    /// Adds `piece` (not verified before) to the verified set and its bytes to the count.
    fn mark_verified(&mut self, piece: usize) {
        self.verified.insert(piece);
        self.verified_bytes += self.piece_len(piece);
    }

    /// `piece` was just recorded verified (`by` that holder, whose request is settled): the
    /// others racing it are cancelled, and the download ends or goes on.
    fn piece_verified(&mut self, piece: usize, by: Option<HolderId>, now: Instant) {
        for other in std::mem::take(&mut self.racers[piece]) {
            if Some(other) != by {
                self.settle(other, piece, now);
                self.actions.push_back(Action::Cancel {
                    holder: other,
                    piece,
                });
            }
        }
        if self.verified.is_full() {
            self.finish(Action::Done);
            return;
        }
        self.fill(now);
    }

    /// `piece` was verified and written from a holder that was dropped (or whose request was
    /// settled) after its bytes arrived and before their verification was answered: the
    /// downloader vouches that it asked for them, so the piece is not fetched again and
    /// whoever races it is cancelled. (An answer nobody asked for goes to
    /// [`Swarm::handle_piece_verified`], which ignores it.)
    pub fn handle_piece_verified_after_drop(&mut self, piece: usize, now: Instant) {
        if self.finished || piece >= self.verified.len() || self.verified.contains(piece) {
            return;
        }
        self.mark_verified(piece);
        self.piece_verified(piece, None, now);
    }

    /// `holder`'s bytes of `piece` failed verification: it is dropped for good.
    pub fn handle_piece_failed(&mut self, holder: HolderId, piece: usize, now: Instant) {
        if self.finished || !self.holders.contains_key(&holder) {
            return;
        }
        self.banned.insert(holder);
        self.liars += 1;
        self.remove(holder, now);
        self.actions.push_back(Action::DropHolder {
            holder,
            reason: DropReason::BadBytes { piece },
        });
        self.fill(now);
    }

    /// Time passed: drops stalled holders, fails after the holderless grace.
    pub fn handle_tick(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        let stalled: Vec<HolderId> = self
            .holders
            .iter()
            .filter(|(_, h)| {
                !h.in_flight.is_empty() && now >= h.last_progress + self.cfg.stall_timeout
            })
            .map(|(&id, _)| id)
            .collect();
        for holder in stalled {
            self.stalled += 1;
            self.remove(holder, now);
            self.actions.push_back(Action::DropHolder {
                holder,
                reason: DropReason::Stalled,
            });
        }
        self.fill(now);
    }

    fn finish(&mut self, action: Action) {
        self.finished = true;
        self.actions.push_back(action);
    }

    /// Takes `piece` off `holder`'s requests (it was answered or cancelled).
    fn settle(&mut self, holder: HolderId, piece: usize, now: Instant) {
        if let Some(h) = self.holders.get_mut(&holder) {
            h.in_flight.retain(|r| r.piece != piece);
            if h.in_flight.is_empty() {
                if let Some(t) = h.busy_since.take() {
                    h.busy += now - t;
                }
            }
        }
        self.racers[piece].retain(|&x| x != holder);
    }

    fn remove(&mut self, holder: HolderId, now: Instant) {
        if let Some(h) = self.holders.remove(&holder) {
            for r in h.in_flight {
                self.racers[r.piece].retain(|&x| x != holder);
            }
        }
        if self.holders.is_empty() {
            self.holderless_since.get_or_insert(now);
        }
    }

    /// Asks `holder` for `pieces` in one request.
    fn ask(&mut self, holder: HolderId, pieces: Range<usize>, now: Instant) {
        let request = self.next_request;
        self.next_request += 1;
        let h = self.holders.get_mut(&holder).expect("asked holder exists");
        if h.in_flight.is_empty() {
            h.busy_since = Some(now);
            h.last_progress = now;
        }
        for piece in pieces.clone() {
            h.in_flight.push(InFlight {
                piece,
                request,
                asked: now,
            });
            self.racers[piece].push(holder);
        }
        let (first, last) = (
            self.piece_range(pieces.start),
            self.piece_range(pieces.end - 1),
        );
        self.actions.push_back(Action::Request {
            holder,
            pieces,
            groups: first.0.start..last.0.end,
            bytes: first.1.start..last.1.end,
        });
    }

    /// Whether nobody has `piece` and nobody is asked for it.
    fn is_unasked(&self, piece: usize) -> bool {
        !self.verified.contains(piece) && self.racers[piece].is_empty()
    }

    /// Hands out pieces to holders with free slots, then races the endgame.
    fn fill(&mut self, now: Instant) {
        if self.finished {
            return;
        }
        if self.holders.is_empty() {
            let since = *self.holderless_since.get_or_insert(now);
            if now >= since + self.cfg.holderless_grace {
                let reason = FailReason::NoHolders {
                    missing: self.verified.len() - self.verified.count(),
                    pieces: self.verified.len(),
                    liars: self.liars,
                    stalled: self.stalled,
                };
                self.finish(Action::Failed(reason));
            }
            return;
        }
        // Fastest first; a holder not measured yet goes first, to be measured.
        let mut order: Vec<(HolderId, f64)> = self
            .holders
            .iter()
            .map(|(&id, h)| (id, h.rate(now).unwrap_or(f64::INFINITY)))
            .collect();
        order.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let n = self.racers.len();
        let mut next = 0usize;
        for &(id, _) in &order {
            let run = self.run_len(id, now);
            while self.holders[&id].requests() < self.depth(id, now) {
                while next < n && !self.is_unasked(next) {
                    next += 1;
                }
                if next == n {
                    break;
                }
                let mut end = next + 1;
                while end < n && end - next < run && self.is_unasked(end) {
                    end += 1;
                }
                self.ask(id, next..end, now);
                next = end;
            }
        }
        // Endgame: every missing piece is in flight; idle holders race the oldest ones.
        for &(id, _) in &order {
            if !self.holders[&id].in_flight.is_empty() {
                continue;
            }
            let oldest = self
                .holders
                .values()
                .flat_map(|h| h.in_flight.iter())
                .filter(|r| {
                    let racers = &self.racers[r.piece];
                    racers.len() < self.cfg.racers && !racers.contains(&id)
                })
                .min_by_key(|r| (r.asked, r.piece))
                .map(|r| r.piece);
            if let Some(piece) = oldest {
                self.ask(id, piece..piece + 1, now);
            }
        }
    }
}

/// Where the resume record of the partial file of `hash` in `dir` lives (a name the share
/// scan skips, like the partial file's).
pub fn record_path(dir: &Path, hash: &FileHash) -> PathBuf {
    dir.join(format!(".{hash}.resume{PART_SUFFIX}"))
}

const RECORD_MAGIC: &[u8; 8] = b"P2PRS\x00\x01\n";
const RECORD_HEADER_BYTES: usize = 8 + 32 + 8 + 8;

/// The verified pieces of a partial download, as stored beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResumeRecord {
    /// The file being downloaded.
    pub hash: FileHash,
    /// Its size.
    pub size: u64,
    /// The piece size the set is counted in.
    pub piece_bytes: u64,
    /// The verified pieces.
    pub verified: PieceSet,
}

/// What loading a resume record found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// No record: start afresh.
    Missing,
    /// An intact record for this very download.
    Intact(PieceSet),
    /// A record that is damaged or belongs to another download: not trusted (start afresh).
    Untrusted(&'static str),
}

impl Loaded {
    /// The pieces that may be skipped: only an intact record's.
    pub fn into_verified(self, pieces: usize) -> PieceSet {
        match self {
            Loaded::Intact(v) => v,
            _ => PieceSet::new(pieces),
        }
    }
}

impl ResumeRecord {
    /// The record's bytes: magic, hash, size, piece size, bitmap, then a BLAKE3 checksum of
    /// all that.
    pub fn encode(&self) -> Vec<u8> {
        let mut out =
            Vec::with_capacity(RECORD_HEADER_BYTES + self.verified.len().div_ceil(8) + 32);
        out.extend_from_slice(RECORD_MAGIC);
        out.extend_from_slice(&self.hash.0);
        out.extend_from_slice(&self.size.to_le_bytes());
        out.extend_from_slice(&self.piece_bytes.to_le_bytes());
        for i in 0..self.verified.len().div_ceil(8) {
            let mut byte = 0u8;
            for b in 0..8 {
                byte |= (self.verified.contains(i * 8 + b) as u8) << b;
            }
            out.push(byte);
        }
        let sum = blake3::hash(&out);
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// Parses a record for the download of `hash` (`size` bytes, `piece_bytes` pieces).
    pub fn decode(bytes: &[u8], hash: &FileHash, size: u64, piece_bytes: u64) -> Loaded {
        let pieces = piece_count(size, piece_bytes);
        let want = RECORD_HEADER_BYTES + pieces.div_ceil(8) + 32;
        if bytes.len() < RECORD_HEADER_BYTES + 32 || &bytes[..8] != RECORD_MAGIC {
            return Loaded::Untrusted("not a resume record");
        }
        let (body, sum) = bytes.split_at(bytes.len() - 32);
        if blake3::hash(body).as_bytes() != sum {
            return Loaded::Untrusted("damaged (checksum)");
        }
        let same = body[8..40] == hash.0
            && body[40..48] == size.to_le_bytes()
            && body[48..56] == piece_bytes.to_le_bytes();
        if !same || bytes.len() != want {
            return Loaded::Untrusted("belongs to another download");
        }
        let mut set = PieceSet::new(pieces);
        for (i, byte) in body[RECORD_HEADER_BYTES..].iter().enumerate() {
            for b in 0..8 {
                if byte & (1 << b) != 0 {
                    let p = i * 8 + b;
                    if p >= pieces {
                        return Loaded::Untrusted("names pieces past the end");
                    }
                    set.insert(p);
                }
            }
        }
        Loaded::Intact(set)
    }

    /// Writes the record at `path` atomically: a temporary file, fsync, rename, fsync of the
    /// directory. A crash leaves the old record or the new one, never a mix.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = File::create(&tmp)?;
        f.write_all(&self.encode())?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        Ok(())
    }

    /// Reads the record at `path` for the download of `hash`.
    pub fn load(path: &Path, hash: &FileHash, size: u64, piece_bytes: u64) -> io::Result<Loaded> {
        match fs::read(path) {
            Ok(bytes) => Ok(ResumeRecord::decode(&bytes, hash, size, piece_bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Loaded::Missing),
            Err(e) => Err(e),
        }
    }
}

/// Checks that the piece size is a whole number of groups (for callers building a config
/// from a flag).
pub fn is_valid_piece_bytes(piece_bytes: u64) -> bool {
    piece_bytes > 0 && piece_bytes % outboard::GROUP_BYTES == 0
}

#[cfg(test)]
mod tests;
