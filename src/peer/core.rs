//! The peer's sans-IO core: the role machines (index session, uploads, the downloads, the
//! command runner, the output) and the few rules that join them (a Welcome registers the
//! share; a lookup leads to a download, and a download's own lookups bring it new holders; a
//! changed file is withdrawn and re-hashed; startup ends once the share is hashed and
//! registered).
//!
//! Uploads: a range request takes an upload slot while its file range is sent; with every
//! slot busy it waits in the [`UploadQueue`] (fair per address: a freed slot goes to the
//! address holding the fewest; requests pipelined behind it wait with it, and ask again
//! behind the others once it is sent); with `--max-upload-rate` it may wait for the
//! rate ([`Throttle`]) holding no slot.
//!
//! Inputs are `handle_*` calls with `now` (reactor events, helper-thread [`Event`]s, time);
//! outputs are [`Action`]s ([`PeerCore::poll_action`]) for the reactor handler to carry out,
//! and [`Line`](super::output::Line)s for the person ([`PeerCore::output`]). It owns no
//! socket, thread or clock, so the test harness drives it with an in-memory index and
//! holders and virtual time.
//!
//! Pushes (see `peer/push.rs`): a firewalled holder a download meets is asked through the
//! index to connect to us; its connection arrives at our file server and, named by its first
//! frame, becomes that download's connection. A push relayed to us makes us connect out
//! ([`Role::Push`]) and serve the file there as an ordinary upload.
//!
//! Per-connection state is the [`Role`] in the reactor's slot; the core keeps no map of
//! connections beside it (but the few outgoing push connections, counted for their cap).

use super::commands::{self, Commands, Follow, Next, Waiting};
use super::console::{Command, Target};
use super::download::{Attempt, Download, DownloadEvent, DownloadId, DownloadLimits};
use super::metrics::{CoreView, PeerCounters};
use super::names::display_name;
use super::output::{Line, Output};
use super::push::{self as pushes, FirstFrame, PushOut, PushState};
use super::render::{self, DownloadStatus, FileRow, Saved, ShareSummary, StatusReport};
use super::session::{IndexSession, SessionEvent, Tag};
use super::share::{self, Share, SharedFile};
use super::swarm;
use super::threads::{Event, Job};
use super::throttle::Throttle;
use super::upload::{self, Answer, Joined, Outboards, Upload, UploadQueue};
use super::verify::{SyncJob, VerifyDone, VerifyJob};
use super::withdrawn::Withdrawn;
use crate::reactor::{CloseReason, ConnId, Verdict};
use crate::wire::{
    self, FileHash, HeldFile, LookupKey, RequestBody, Response, ResponseBody, SearchCursor,
    SearchFilter,
};
use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;
use std::fs::File;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What a connection is for: the peer's per-connection state, kept in the reactor's slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// The session with the index.
    Index,
    /// Another peer's downloader.
    Upload(Upload),
    /// One attempt of one of our downloads.
    Download(Attempt),
    /// Connecting to a downloader that asked us for a push; an upload once connected.
    Push(PushOut),
}

/// Something for the reactor handler to do.
#[derive(Debug)]
pub enum Action {
    /// Look the index's host name up (on a helper thread); answer with [`Event::Resolved`].
    Resolve(String),
    /// Open a connection with this role; a failure comes back as its close.
    Connect {
        /// Where to.
        addr: SocketAddr,
        /// Its slot state.
        role: Role,
    },
    /// Queue a frame.
    Send {
        /// On which connection.
        conn: ConnId,
        /// The encoded frame.
        frame: Vec<u8>,
    },
    /// Queue a file range (an upload): reading parks until it drains.
    SendFile {
        /// On which connection.
        conn: ConnId,
        /// The open file.
        file: File,
        /// First byte.
        offset: u64,
        /// Bytes.
        len: u64,
    },
    /// The next `len` input bytes are raw file bytes.
    ExpectRaw {
        /// On which connection.
        conn: ConnId,
        /// How many.
        len: u64,
    },
    /// Close a connection (after sending what is queued, with `after_flush`).
    Close {
        /// Which.
        conn: ConnId,
        /// Why.
        reason: CloseReason,
        /// Send the queued output first.
        after_flush: bool,
    },
    /// Replace the slot state of another connection (an upload leaving the queue).
    SetRole {
        /// Which.
        conn: ConnId,
        /// Its new state.
        role: Role,
    },
    /// Give the hashing thread a job; answered with [`Event::Scanned`].
    Hash(Job),
    /// Verify and write received groups of a download on the verifying thread (see
    /// [`super::verify`]); answered with [`PeerCore::handle_verified`].
    Verify(VerifyJob),
    /// Start a download's writeback or save its resume record on the syncing thread (see
    /// [`super::verify::Syncer`]).
    Sync(SyncJob),
    /// Stop reading a connection (a download's unverified bytes wait for the verifying
    /// thread); its input waits, in order.
    Hold(ConnId),
    /// Read a held connection again.
    Resume(ConnId),
    /// Stop the peer.
    Stop,
}

/// The core's part of the peer's configuration.
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// The directory shared.
    pub share_dir: PathBuf,
    /// Where downloads land.
    pub downloads_dir: PathBuf,
    /// The index, `HOST:PORT`.
    pub index: String,
    /// Commands come from stdin and its end quits (false: `--serve`).
    pub console: bool,
    /// Progress is drawn as a bar (else each holder tried is named on stderr).
    pub progress_bar: bool,
    /// Seeds the reconnect jitter.
    pub seed: u64,
    /// How long the index may stay silent while it owes an answer before the session is
    /// taken for lost (see `session`).
    pub index_timeout: Duration,
    /// The bounds of every download (stall, rate floor, whole `get`).
    pub download_limits: DownloadLimits,
    /// Uploads sent at once; more requests wait in the upload queue.
    pub upload_slots: usize,
    /// Requests waiting in the upload queue at once from one address (IPv4, IPv6 /64).
    pub max_queued_per_ip: usize,
    /// While requests wait in the queue, an upload sending fewer bytes per second than this
    /// over a whole `upload_rate_window` loses its slot (0: never).
    pub upload_min_rate: u64,
    /// The window the upload floor is measured over.
    pub upload_rate_window: Duration,
    /// All uploads together send at most this many bytes per second (0: no limit).
    pub max_upload_rate: u64,
}

/// Where a range request being answered comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    /// Just read from its connection.
    Conn,
    /// The head of the upload queue, whose slot is free.
    UploadQueue,
    /// Let through by the upload rate limit.
    Throttle,
}

/// The core; see the module docs.
pub struct PeerCore {
    cfg: CoreConfig,
    share: Share,
    session: IndexSession,
    commands: Commands,
    /// The downloads running, oldest first.
    downloads: Vec<Running>,
    next_download: DownloadId,
    /// The file server's outboards (the proofs of the ranges it serves).
    outboards: Outboards,
    /// Requests pipelined behind the one being sent, by upload connection, that waited in
    /// the upload queue with it: each asks again once the one before is sent.
    backlog: HashMap<ConnId, VecDeque<Vec<u8>>>,
    /// `--max-upload-rate`: the ranges waiting for it.
    throttle: Throttle,
    /// The `get` whose lookup is running was typed with `-b`.
    get_background: bool,
    /// The person was told that the end of input waits for the downloads.
    said_waiting: bool,
    output: Output,
    actions: VecDeque<Action>,
    listen_port: u16,
    uploads: UploadStats,
    queue: UploadQueue,
    /// When the uploads' rates are next checked (only while requests wait).
    upload_check: Option<Instant>,
    stopped: bool,
    /// Totals for `--metrics`.
    counters: PeerCounters,
    /// What the person withdrew (`unregister`): not shared again until `register PATH`.
    withdrawn: Withdrawn,
    /// Every register sent was answered since [`PeerCore::take_registers_done`] was asked.
    registers_done: bool,
    /// The web page's index requests: the next number, and the answers not yet taken.
    next_web_request: u64,
    web_answers: VecDeque<(u64, ResponseBody)>,
    /// Pushes asked and served, and what the index found of our reachability.
    push: PushState,
    /// Holders the index's lookups flagged unreachable (bounded: cleared when it grows past
    /// [`FIREWALLED_KEPT`]).
    firewalled: std::collections::HashSet<SocketAddr>,
}

/// Most firewalled holders remembered from lookups.
const FIREWALLED_KEPT: usize = 4096;

/// A download and what the core keeps beside it.
struct Running {
    dl: Download,
    /// The other sizes claimed for the hash being downloaded, best first: tried in turn when
    /// no holder of the current claim delivers bytes that match the hash.
    claims_left: VecDeque<HeldFile>,
    /// Started by `get -b`: the console does not wait for it.
    background: bool,
}

#[derive(Debug, Default)]
struct UploadStats {
    active: u64,
    done: u64,
    bytes: u64,
}

impl PeerCore {
    /// A core.
    pub fn new(cfg: CoreConfig) -> PeerCore {
        PeerCore {
            session: IndexSession::new(cfg.index.clone(), 0, cfg.seed, cfg.index_timeout),
            commands: Commands::new(cfg.console),
            queue: UploadQueue::new(cfg.upload_slots, cfg.max_queued_per_ip),
            upload_check: None,
            output: Output::new(cfg.progress_bar),
            share: Share::default(),
            downloads: Vec::new(),
            next_download: 1,
            outboards: Outboards::new(&cfg.share_dir),
            backlog: HashMap::new(),
            throttle: Throttle::new(cfg.max_upload_rate),
            get_background: false,
            said_waiting: false,
            actions: VecDeque::new(),
            listen_port: 0,
            uploads: UploadStats::default(),
            stopped: false,
            counters: PeerCounters::default(),
            withdrawn: Withdrawn::load(&cfg.share_dir),
            registers_done: false,
            next_web_request: 1,
            web_answers: VecDeque::new(),
            push: PushState::new(cfg.seed),
            firewalled: std::collections::HashSet::new(),
            cfg,
        }
    }

    /// The file server listens on `listen_port`: scan the share and connect to the index.
    pub fn start(&mut self, listen_port: u16) {
        self.listen_port = listen_port;
        if listen_port == 0 {
            // `--listen none`: nobody can connect to us.
            self.push.reachable = Some(false);
        }
        self.session = IndexSession::new(
            self.cfg.index.clone(),
            listen_port,
            self.cfg.seed,
            self.cfg.index_timeout,
        );
        self.actions
            .push_back(Action::Hash(Job::Rescan { console: false }));
        self.session.start(&mut self.actions);
    }

    /// The next thing for the reactor handler to do.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// What is queued for the person.
    pub fn output(&mut self) -> &mut Output {
        &mut self.output
    }

    /// The earliest time [`PeerCore::handle_timeout`] has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let dl = self.downloads.iter().filter_map(|r| r.dl.poll_timeout());
        [
            self.session.poll_timeout(),
            self.upload_check,
            self.throttle.poll_deadline(),
        ]
        .into_iter()
        .flatten()
        .chain(dl)
        .min()
    }

    /// Whether [`PeerCore::handle_upload_progress`] is due: requests wait in the upload queue
    /// and a window has passed since the last check.
    pub fn wants_upload_progress(&self, now: Instant) -> bool {
        self.upload_check.is_some_and(|t| t <= now)
    }

    /// Every upload being sent, with the bytes it has not sent yet: while requests wait in the
    /// queue, an upload below the floor over its whole window loses its slot to the head of
    /// the line, and so does, while requests of addresses holding less than their share of
    /// the slots wait, an upload of an address holding more than its share (one per slot
    /// those wait for; see [`UploadQueue::shortfall`]): one address cannot keep many slots
    /// by reading just above the floor. The others start a new window.
    pub fn handle_upload_progress(&mut self, now: Instant, uploads: &[(ConnId, Upload, u64)]) {
        let window = self.cfg.upload_rate_window;
        let floor = (self.cfg.upload_min_rate as u128 * window.as_millis() / 1000) as u64;
        let (share, mut short) = self.queue.shortfall();
        // Slots taken back here, by address, so an address is brought down to its share and
        // no further.
        let mut taken: HashMap<u128, usize> = HashMap::new();
        for &(conn, upload, unsent) in uploads {
            let Upload::Sending {
                hash,
                bytes,
                from,
                window: (since, unsent_then),
            } = upload
            else {
                continue;
            };
            if since + window > now {
                continue;
            }
            let sent = unsent_then.saturating_sub(unsent);
            let key = upload::address_key(from);
            let holds = self
                .queue
                .slots_held(from)
                .saturating_sub(taken.get(&key).copied().unwrap_or(0));
            let slow = !self.queue.is_empty() && self.cfg.upload_min_rate > 0 && sent < floor;
            let over = short > 0 && holds > share;
            if slow || over {
                let why = if slow {
                    log::info!(
                        target: "peer",
                        "upload of {hash} to {from} taken back: {sent} bytes in {:.1} s while others wait",
                        window.as_secs_f64()
                    );
                    format!(
                        "slower than {} B/s while others wait",
                        self.cfg.upload_min_rate
                    )
                } else {
                    log::info!(
                        target: "peer",
                        "upload of {hash} to {from} taken back: its address holds {holds} slots, \
                         more than its share of {share}, while others wait"
                    );
                    format!("your address holds more than its share of {share} upload slots while others wait")
                };
                short = short.saturating_sub(1);
                *taken.entry(key).or_insert(0) += 1;
                self.actions.push_back(Action::Close {
                    conn,
                    reason: CloseReason::Protocol(why),
                    after_flush: false,
                });
            } else {
                self.actions.push_back(Action::SetRole {
                    conn,
                    role: Role::Upload(Upload::Sending {
                        hash,
                        bytes,
                        from,
                        window: (now, unsent),
                    }),
                });
            }
        }
        self.upload_check = if self.queue.is_empty() {
            None
        } else {
            Some(now + window / 4)
        };
    }

    /// Time passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.session.handle_timeout(now, &mut self.actions);
        for r in &mut self.downloads {
            r.dl.handle_timeout(now, &mut self.actions);
        }
        self.release_throttled(now);
        self.pump(now);
    }

    /// A helper thread reported.
    pub fn handle_event(&mut self, now: Instant, event: Event) {
        match event {
            Event::Line(line) => self.commands.handle_line(line),
            Event::StdinEof => self.commands.handle_input_end(),
            Event::ScanProgress(p) => {
                if p.files_done < p.files {
                    self.output.say(Line::Hashing {
                        files_done: p.files_done,
                        files: p.files,
                        bytes_done: p.bytes_done,
                        bytes: p.bytes,
                    });
                }
            }
            Event::Scanned {
                job,
                files,
                warnings,
            } => self.handle_scanned(now, job, files, warnings),
            Event::Outboard { file, result } => {
                self.outboards.handle_computed(&file.hash);
                match result {
                    Ok(hash) if hash == file.hash => {}
                    Ok(_) => self.file_changed(now, &file),
                    Err(e) => log::warn!(target: "peer",
                        "cannot compute the outboard of {}: {e}", file.path.display()),
                }
            }
            Event::Resolved(result) => self.session.handle_resolved(now, result, &mut self.actions),
            Event::Watched(paths) => self.actions.push_back(Action::Hash(Job::Watched { paths })),
        }
        self.pump(now);
    }

    /// The verifying thread answered a job (see [`Action::Verify`]).
    pub fn handle_verified(&mut self, now: Instant, done: VerifyDone) {
        if let Some(r) = running(&mut self.downloads, done.download) {
            r.dl.handle_verified(now, done, &mut self.actions);
        }
        self.pump(now);
    }

    /// The hashing thread could not take `job`.
    pub fn handle_hasher_gone(&mut self, now: Instant, job: Job) {
        if matches!(
            job,
            Job::Rescan { console: true } | Job::Paths { console: true, .. }
        ) {
            self.output.error("register: the hashing thread is gone");
            self.commands.finish();
        }
        self.pump(now);
    }

    /// The output has room again: console commands paused for it may run.
    pub fn handle_output_room(&mut self, now: Instant) {
        self.pump(now);
    }

    /// SIGINT or SIGTERM.
    pub fn handle_shutdown(&mut self) {
        self.output.note("peer: shutting down");
        self.quit();
    }

    /// Whether every register sent was answered since the last call (the memory they took can
    /// be handed back to the system).
    pub fn take_registers_done(&mut self) -> bool {
        std::mem::take(&mut self.registers_done)
    }

    /// Whether the peer has stopped.
    pub fn is_stopped(&self) -> bool {
        self.stopped
    }

    // ----- connections --------------------------------------------------------------------

    /// A downloader connected to our file server from `from`.
    pub fn handle_accept(&mut self, from: IpAddr) -> Role {
        Role::Upload(Upload::AwaitingGet { from })
    }

    /// An outgoing connection is established.
    pub fn handle_connected(&mut self, now: Instant, conn: ConnId, role: &mut Role) -> Verdict {
        let verdict = match role {
            Role::Index => {
                self.session.handle_connected(now, conn, &mut self.actions);
                Verdict::Continue
            }
            Role::Download(attempt) => match running(&mut self.downloads, attempt.download) {
                Some(r) => {
                    r.dl.handle_connected(now, conn, *attempt, &mut self.actions)
                }
                None => Verdict::Close(CloseReason::Local),
            },
            Role::Upload(_) => Verdict::Continue,
            Role::Push(p) => {
                // Say which push this is, then serve like any upload.
                let p = *p;
                self.push.handle_connected(conn, p.to);
                self.actions.push_back(Action::Send {
                    conn,
                    frame: p.hello_frame(),
                });
                log::info!(target: "peer", "pushing {} to {}", p.hash, p.to);
                *role = Role::Upload(Upload::AwaitingGet { from: p.to.ip() });
                Verdict::Continue
            }
        };
        self.pump(now);
        verdict
    }

    /// A frame arrived.
    pub fn handle_frame(
        &mut self,
        now: Instant,
        conn: ConnId,
        role: &mut Role,
        payload: &[u8],
    ) -> Verdict {
        let verdict = match role {
            Role::Index => match wire::decode::<Response>(payload) {
                Ok(resp) => {
                    self.session.handle_response(now, resp, &mut self.actions);
                    Verdict::Continue
                }
                Err(e) => Verdict::Close(CloseReason::Protocol(format!("index sent {e}"))),
            },
            Role::Upload(Upload::AwaitingGet { .. }) if pushes::is_not_range(payload) => {
                self.handle_first_frame(now, conn, role, payload)
            }
            Role::Upload(state) => self.handle_get(now, conn, state, payload, Origin::Conn),
            Role::Push(_) => Verdict::Close(CloseReason::Local),
            Role::Download(attempt) => match running(&mut self.downloads, attempt.download) {
                Some(r) => {
                    r.dl.handle_frame(now, conn, *attempt, payload, &mut self.actions)
                }
                None => Verdict::Close(CloseReason::Local),
            },
        };
        self.pump(now);
        verdict
    }

    /// Raw file bytes arrived (downloads only).
    pub fn handle_raw(&mut self, now: Instant, role: &mut Role, data: &[u8]) -> Verdict {
        let verdict = match role {
            Role::Download(attempt) => match running(&mut self.downloads, attempt.download) {
                Some(r) => r.dl.handle_raw(now, *attempt, data, &mut self.actions),
                None => Verdict::Close(CloseReason::Local),
            },
            _ => Verdict::Close(CloseReason::Local),
        };
        self.pump(now);
        verdict
    }

    /// A connection's output drained (an upload finished sending): its slot goes to the
    /// head of the upload queue, then the connection's next pipelined request (if it was
    /// held back while the line waited) asks again, behind the others.
    pub fn handle_drained(&mut self, now: Instant, conn: ConnId, role: &mut Role) {
        if let Role::Upload(Upload::Sending { bytes, from, .. }) = *role {
            self.throttle.handle_sent(conn);
            let mut state = Upload::AwaitingGet { from };
            self.uploads.active -= 1;
            self.queue.handle_slot_freed(from);
            self.uploads.done += 1;
            self.uploads.bytes += bytes;
            self.serve_queue(now);
            if let Some(next) = self.backlog.get_mut(&conn).and_then(VecDeque::pop_front) {
                let verdict = self.handle_get(now, conn, &mut state, &next, Origin::Conn);
                self.apply_verdict(conn, verdict);
            }
            *role = Role::Upload(state);
            self.release_throttled(now);
        }
        self.pump(now);
    }

    /// Lets the ranges waiting for the upload rate through as far as it allows.
    fn release_throttled(&mut self, now: Instant) {
        while let Some(w) = self.throttle.poll_ready(now) {
            let mut state = Upload::AwaitingGet { from: w.from };
            let verdict = self.handle_get(now, w.conn, &mut state, &w.request, Origin::Throttle);
            self.actions.push_back(Action::SetRole {
                conn: w.conn,
                role: Role::Upload(state),
            });
            self.apply_verdict(w.conn, verdict);
        }
    }

    fn apply_verdict(&mut self, conn: ConnId, verdict: Verdict) {
        match verdict {
            Verdict::Continue => {}
            Verdict::Close(reason) => self.actions.push_back(Action::Close {
                conn,
                reason,
                after_flush: false,
            }),
            Verdict::CloseAfterFlush(reason) => self.actions.push_back(Action::Close {
                conn,
                reason,
                after_flush: true,
            }),
        }
    }

    /// Gives free upload slots to the head of the queue, and tells those still waiting their
    /// new places.
    fn serve_queue(&mut self, now: Instant) {
        let mut moved = false;
        while (self.uploads.active as usize) < self.queue.slots {
            let Some((conn, from, request, extra)) = self.queue.pop() else {
                break;
            };
            moved = true;
            if !extra.is_empty() {
                self.backlog.insert(conn, extra);
            }
            let mut state = Upload::AwaitingGet { from };
            let verdict = self.handle_get(now, conn, &mut state, &request, Origin::UploadQueue);
            match verdict {
                Verdict::Continue => {
                    self.actions.push_back(Action::SetRole {
                        conn,
                        role: Role::Upload(state),
                    });
                }
                other => self.apply_verdict(conn, other),
            }
        }
        if moved {
            for (conn, position) in self.queue.positions() {
                self.actions.push_back(Action::Send {
                    conn,
                    frame: upload::queued_frame(position),
                });
            }
        }
    }

    /// A connection ended (or its connect failed).
    /// `conn` is `None` for a connect that failed before it had one.
    pub fn handle_close(
        &mut self,
        now: Instant,
        conn: Option<ConnId>,
        role: Role,
        reason: &CloseReason,
    ) {
        if let Some(c) = conn {
            self.push.handle_closed(c);
        }
        match role {
            Role::Push(p) => {
                self.push.handle_connect_failed(p.to);
                log::info!(target: "peer", "push of {} to {} failed: {reason}", p.hash, p.to);
            }
            Role::Index => self.session.handle_closed(now, reason, &mut self.actions),
            Role::Download(attempt) => {
                if let Some(r) = running(&mut self.downloads, attempt.download) {
                    r.dl.handle_close(now, attempt, reason, &mut self.actions);
                }
            }
            Role::Upload(Upload::Sending { hash, from, .. }) => {
                if let Some(c) = conn {
                    self.backlog.remove(&c);
                    self.throttle.forget(c);
                }
                self.uploads.active -= 1;
                self.queue.handle_slot_freed(from);
                log::info!(target: "peer", "upload of {hash} ended: {reason}");
                self.serve_queue(now);
            }
            Role::Upload(Upload::Queued { .. }) => {
                if let Some(c) = conn {
                    self.backlog.remove(&c);
                    self.throttle.forget(c);
                }
                if conn.is_some_and(|c| self.queue.leave(c)) {
                    for (conn, position) in self.queue.positions() {
                        self.actions.push_back(Action::Send {
                            conn,
                            frame: upload::queued_frame(position),
                        });
                    }
                }
            }
            Role::Upload(Upload::AwaitingGet { .. }) => {
                if let Some(c) = conn {
                    self.backlog.remove(&c);
                    self.throttle.forget(c);
                }
            }
        }
        self.pump(now);
    }

    /// A first frame on our file server that is no range request: the index's probe, or a
    /// holder answering our push (the connection becomes that download's).
    fn handle_first_frame(
        &mut self,
        now: Instant,
        conn: ConnId,
        role: &mut Role,
        payload: &[u8],
    ) -> Verdict {
        match self.push.identify(payload, now) {
            // Not ours after all: the upload machine answers it.
            None => {
                let Role::Upload(state) = role else {
                    return Verdict::Close(CloseReason::Local);
                };
                self.handle_get(now, conn, state, payload, Origin::Conn)
            }
            Some(FirstFrame::Probe(answer)) => {
                self.actions.push_back(Action::Send {
                    conn,
                    frame: answer,
                });
                Verdict::CloseAfterFlush(CloseReason::Local)
            }
            Some(FirstFrame::Unexpected(why)) => {
                log::info!(target: "peer", "refused a connection: {why}");
                Verdict::Close(CloseReason::Protocol(why))
            }
            Some(FirstFrame::Pushed { download, attempt }) => {
                let attempt = Attempt {
                    download,
                    n: attempt,
                };
                let Some(r) = running(&mut self.downloads, download) else {
                    return Verdict::Close(CloseReason::Local);
                };
                *role = Role::Download(attempt);
                // A download connection has no idle timeout (its own timers bound it).
                self.actions.push_back(Action::SetRole {
                    conn,
                    role: role.clone(),
                });
                r.dl.handle_connected(now, conn, attempt, &mut self.actions)
            }
        }
    }

    /// A downloader asks us, through the index, to connect to it and serve `hash`.
    fn handle_push_request(&mut self, hash: FileHash, to: SocketAddr, nonce: u64) {
        let shared = self.share.by_hash(&hash).is_some();
        match self.push.admit(shared, to) {
            Ok(evicted) => {
                if let Some(conn) = evicted {
                    log::info!(target: "peer", "an idle push connection gives way to a push to {to}");
                    self.actions.push_back(Action::Close {
                        conn,
                        reason: CloseReason::Local,
                        after_flush: false,
                    });
                }
                self.actions.push_back(Action::Connect {
                    addr: to,
                    role: Role::Push(PushOut { hash, to, nonce }),
                })
            }
            Err(why) => log::info!(target: "peer", "push of {hash} to {to} not served: {why:?}"),
        }
    }

    /// Download `i` wants holder `holder` to connect to us for `attempt`.
    fn ask_push(&mut self, now: Instant, i: usize, holder: SocketAddr, attempt: u32) {
        let r = &mut self.downloads[i];
        if self.listen_port == 0 || self.push.reachable == Some(false) {
            r.dl.handle_push_failed(now, attempt, String::new(), true, &mut self.actions);
            return;
        }
        let (id, hash) = (r.dl.id(), r.dl.hash());
        self.output.note(format!(
            "get: {}: {holder} is firewalled: asking it to connect to us",
            display_name(r.dl.progress().0)
        ));
        let nonce = self.push.expect(id, attempt, hash, now);
        let body = RequestBody::Push {
            hash,
            holder,
            nonce,
        };
        if !self
            .session
            .request(now, body, Tag::Push(id, attempt), &mut self.actions)
        {
            let why = "not connected to the index".to_string();
            self.downloads[i]
                .dl
                .handle_push_failed(now, attempt, why, false, &mut self.actions);
        }
    }

    /// The index's answer to a push we asked.
    fn handle_push_answer(
        &mut self,
        now: Instant,
        id: DownloadId,
        attempt: u32,
        body: ResponseBody,
    ) {
        let why = match body {
            ResponseBody::PushRelayed => return,
            ResponseBody::Error { message, .. } => message,
            ResponseBody::RateLimited {
                retry_after_ms,
                banned: false,
            } => {
                if let Some(r) = running(&mut self.downloads, id) {
                    self.output.note(format!(
                        "get: {}: the index's push budget is spent for now: asking again in \
                         {retry_after_ms} ms",
                        display_name(r.dl.progress().0)
                    ));
                    let wait = Duration::from_millis(retry_after_ms);
                    r.dl.handle_push_deferred(now, attempt, wait, &mut self.actions);
                }
                return;
            }
            ResponseBody::RateLimited { .. } => "the index banned our address for now".into(),
            other => format!("unexpected answer {other:?}"),
        };
        // The index knows better than us: it refused because we are not reachable either.
        let we_too = self.push.reachable == Some(false);
        if let Some(r) = running(&mut self.downloads, id) {
            r.dl.handle_push_failed(now, attempt, why, we_too, &mut self.actions);
        }
    }

    /// Our file server's address as the index gives it out, never a holder of ours to
    /// download from. None without a file server: `IP:0` is every `--listen none` peer
    /// behind our address, not us.
    fn me(&self) -> Option<SocketAddr> {
        self.session.observed().filter(|a| a.port() != 0)
    }

    /// Remembers which holders a lookup answer flagged firewalled.
    fn note_firewalled(&mut self, body: &ResponseBody) {
        if let ResponseBody::Holders {
            files, firewalled, ..
        } = body
        {
            for f in files {
                for h in &f.holders {
                    self.firewalled.remove(h);
                }
            }
            if self.firewalled.len() + firewalled.len() > FIREWALLED_KEPT {
                self.firewalled.clear();
            }
            self.firewalled.extend(firewalled.iter().copied());
        }
    }

    /// Answers one range request of `conn`.
    fn handle_get(
        &mut self,
        now: Instant,
        conn: ConnId,
        state: &mut Upload,
        payload: &[u8],
        origin: Origin,
    ) -> Verdict {
        self.push.handle_asked(conn);
        let from = match *state {
            Upload::AwaitingGet { from } | Upload::Sending { from, .. } => from,
            Upload::Queued { .. } => {
                // A request pipelined behind the one waiting: it waits behind it.
                if self.queue.push_extra(conn, payload) {
                    return Verdict::Continue;
                }
                return Verdict::Close(CloseReason::Protocol(format!(
                    "more than {} requests pipelined in the upload queue",
                    upload::MAX_PIPELINED
                )));
            }
        };
        if origin == Origin::Conn && self.throttle.has_waiting(conn) {
            // Behind its own requests waiting for the upload rate.
            return self.wait_for_rate(conn, from, payload);
        }
        let is_full = self.uploads.active as usize >= self.queue.slots
            || (origin != Origin::UploadQueue && !self.queue.is_empty());
        match upload::answer(payload, &self.share, &mut self.outboards) {
            Answer::Serve { .. } if is_full && !matches!(state, Upload::Sending { .. }) => {
                let extra = self.backlog.remove(&conn).unwrap_or_default();
                match self.queue.join(conn, from, payload, extra) {
                    Joined::At(position) => {
                        self.actions.push_back(Action::Send {
                            conn,
                            frame: upload::queued_frame(position),
                        });
                        // Served fairly, it may come ahead of others: they are told their
                        // new places.
                        for (other, place) in self.queue.positions() {
                            if place > position {
                                self.actions.push_back(Action::Send {
                                    conn: other,
                                    frame: upload::queued_frame(place),
                                });
                            }
                        }
                        *state = Upload::Queued { from };
                        self.upload_check
                            .get_or_insert(now + self.cfg.upload_rate_window);
                        // Lifts the idle timeout (the state itself is set above).
                        self.actions.push_back(Action::SetRole {
                            conn,
                            role: Role::Upload(*state),
                        });
                        Verdict::Continue
                    }
                    Joined::AddressFull => {
                        self.actions.push_back(Action::Send {
                            conn,
                            frame: upload::address_full_frame(self.queue.per_address),
                        });
                        Verdict::CloseAfterFlush(CloseReason::Protocol(
                            "upload queue full for that address".into(),
                        ))
                    }
                }
            }
            Answer::Serve { .. }
                if origin != Origin::Throttle && !self.throttle.admits(now, conn) =>
            {
                self.wait_for_rate(conn, from, payload)
            }
            Answer::Serve {
                header,
                file,
                offset,
                len,
                hash,
                name,
            } => {
                self.throttle.charge(conn, len);
                self.actions.push_back(Action::Send {
                    conn,
                    frame: header,
                });
                self.actions.push_back(Action::SendFile {
                    conn,
                    file,
                    offset,
                    len,
                });
                if !matches!(state, Upload::Sending { .. }) {
                    self.uploads.active += 1;
                    self.queue.handle_slot_taken(from);
                }
                *state = Upload::Sending {
                    hash,
                    bytes: len,
                    from,
                    window: (now, len),
                };
                log::info!(target: "peer", "upload of {} from {offset}", display_name(&name));
                Verdict::Continue
            }
            Answer::Refuse {
                frame,
                message,
                changed,
                outboard,
            } => {
                if let Some(file) = changed {
                    self.file_changed(now, &file);
                }
                if let Some(file) = outboard {
                    self.actions
                        .push_back(Action::Hash(Job::Outboard { file: *file }));
                }
                self.counters.gets_refused += 1;
                self.actions.push_back(Action::Send { conn, frame });
                Verdict::CloseAfterFlush(CloseReason::Protocol(message))
            }
        }
    }

    /// A range request waits for the upload rate (`--max-upload-rate`), holding no slot.
    fn wait_for_rate(&mut self, conn: ConnId, from: IpAddr, payload: &[u8]) -> Verdict {
        if self.throttle.wait(conn, from, payload) {
            Verdict::Continue
        } else {
            Verdict::Close(CloseReason::Protocol(format!(
                "more than {} requests pipelined",
                super::throttle::MAX_WAITING_PER_CONN
            )))
        }
    }

    /// The files of `hashes` left the share: the outboards of those no longer shared under
    /// another path are let go and deleted (on the hasher thread).
    fn forget_outboards(&mut self, hashes: &[FileHash]) {
        let gone: Vec<FileHash> = hashes
            .iter()
            .filter(|h| self.share.by_hash(h).is_none())
            .copied()
            .collect();
        if gone.is_empty() {
            return;
        }
        for h in &gone {
            self.outboards.forget(h);
        }
        self.actions
            .push_back(Action::Hash(Job::ForgetOutboards { hashes: gone }));
    }

    /// A shared file no longer matches its hash: stop announcing it and hash it again.
    fn file_changed(&mut self, now: Instant, file: &SharedFile) {
        if self.share.remove_path(&file.path).is_some() {
            self.session
                .unregister(now, vec![file.hash], &mut self.actions);
            self.forget_outboards(&[file.hash]);
        }
        self.actions.push_back(Action::Hash(Job::Paths {
            paths: vec![file.path.clone()],
            console: false,
        }));
    }

    fn handle_scanned(
        &mut self,
        now: Instant,
        job: Job,
        mut files: Vec<SharedFile>,
        warnings: Vec<String>,
    ) {
        for w in warnings {
            self.output.warning(w);
        }
        if let Job::Paths { console: true, .. } = job {
            // `register PATH` shares withdrawn files again.
            if let Err(e) = self.withdrawn.restore(&files) {
                self.output
                    .warning(format!("cannot save the withdrawn list: {e}"));
            }
        } else if !self.withdrawn.is_empty() {
            files.retain(|f| !self.withdrawn.contains(f));
        }
        let rescan = matches!(job, Job::Rescan { .. });
        let (diff, console) = match job {
            Job::Rescan { console } => (
                self.share.replace_under(&self.cfg.share_dir, files),
                console,
            ),
            Job::Paths { console, .. } => (self.share.upsert(files), console),
            Job::Watched { paths } => (self.share.replace_paths(&paths, files), false),
            Job::Outboard { .. } | Job::ForgetOutboards { .. } | Job::PruneOutboards { .. } => {
                return
            }
        };
        self.forget_outboards(&diff.removed);
        if rescan {
            // Outboards of files that left the share while the peer was down (or of any hash
            // no longer shared) are swept.
            let keep = self.share.files().map(|f| f.hash).collect();
            self.actions
                .push_back(Action::Hash(Job::PruneOutboards { keep }));
        }
        let (added, removed) = (diff.added.len(), diff.removed.len());
        self.session
            .unregister(now, diff.removed, &mut self.actions);
        self.session.register(now, diff.added, &mut self.actions);
        let summary = ShareSummary {
            files: self.share.len(),
            bytes: self.share.total_bytes(),
            added,
            withdrawn: removed,
        };
        if !rescan && !console {
            log::debug!(target: "peer", "share changed: {summary:?}");
        }
        match self.commands.waiting() {
            Some(Waiting::Startup { scanned: false }) if rescan => {
                self.commands.handle_startup_scanned();
                self.output.say(Line::Sharing {
                    summary,
                    result: false,
                });
            }
            Some(Waiting::Scan) if console => {
                self.output.say(Line::Sharing {
                    summary,
                    result: true,
                });
                self.commands.finish();
            }
            _ => {}
        }
    }

    // ----- joining the machines -----------------------------------------------------------

    /// Hands each machine's events to the others, then runs console commands until one
    /// waits. Called after every input.
    fn pump(&mut self, now: Instant) {
        loop {
            let mut progressed = false;
            while let Some(event) = self.session.poll_event() {
                progressed = true;
                self.handle_session_event(now, event);
            }
            let mut i = 0;
            while i < self.downloads.len() {
                match self.downloads[i].dl.poll_event() {
                    Some(event) => {
                        progressed = true;
                        if self.handle_download_event(now, i, event) {
                            self.downloads.remove(i);
                        }
                    }
                    None => i += 1,
                }
            }
            if let Some(Waiting::Startup { scanned: true }) = self.commands.waiting() {
                if self.session.is_settled() {
                    self.commands.finish();
                }
            }
            if self.stopped {
                return;
            }
            match self.commands.poll_command(&mut self.output) {
                Some(Next::Run(cmd)) => self.execute(now, cmd),
                // End of input: background downloads finish first (`quit` does not wait).
                Some(Next::Quit) if !self.downloads.is_empty() => {
                    if !std::mem::replace(&mut self.said_waiting, true) {
                        self.output.note(format!(
                            "end of input: waiting for {} download{} before quitting",
                            self.downloads.len(),
                            if self.downloads.len() == 1 { "" } else { "s" }
                        ));
                    }
                    if !progressed {
                        return;
                    }
                }
                Some(Next::Quit) => self.quit(),
                None if !progressed => return,
                None => {}
            }
        }
    }

    fn handle_session_event(&mut self, now: Instant, event: SessionEvent) {
        match event {
            SessionEvent::Up { observed, again } => {
                if again {
                    self.output.say(Line::IndexUp {
                        index: self.session.index().to_string(),
                    });
                }
                log::info!(target: "peer", "index session up; seen as {observed}");
                if self.listen_port != 0 {
                    // A new session tests our file server again.
                    self.push.reachable = None;
                }
                // Soft state: the index knows nothing of us on a new session.
                let entries = self.share.entries();
                self.session.register(now, entries, &mut self.actions);
            }
            SessionEvent::Down {
                why,
                first,
                command_lost,
            } => {
                if command_lost {
                    self.output.error(format!(
                        "the index connection was lost during the command ({why})"
                    ));
                    self.commands.finish();
                }
                if first {
                    self.output.say(Line::IndexDown {
                        index: self.cfg.index.clone(),
                        reason: why,
                        connected_before: self.session.has_been_up(),
                    });
                }
            }
            SessionEvent::Refused(status) | SessionEvent::Note(status) => self.output.note(status),
            SessionEvent::Reachability(reachable) => {
                self.push.reachable = Some(reachable);
                log::info!(
                    target: "peer",
                    "the index {} our file server{}",
                    if reachable { "reached" } else { "could not reach" },
                    if reachable { "" } else { ": firewalled; other peers download from us through pushes" }
                );
            }
            SessionEvent::PushRequest { hash, to, nonce } => {
                self.handle_push_request(hash, to, nonce)
            }
            SessionEvent::Error(text) => self.output.error(text),
            SessionEvent::Answer { tag, body } => self.handle_answer(now, tag, body),
        }
    }

    fn handle_answer(&mut self, now: Instant, tag: Tag, body: ResponseBody) {
        self.note_firewalled(&body);
        match (tag, body) {
            (Tag::Push(id, attempt), body) => self.handle_push_answer(now, id, attempt, body),
            (Tag::Reachability, _) => {}
            (
                Tag::Register,
                ResponseBody::Registered {
                    rejected, total, ..
                },
            ) => {
                if rejected > 0 {
                    self.output
                        .note(format!("index: refused {rejected} entries"));
                }
                log::debug!(target: "peer", "index holds {total} of our files");
                // The last register of a batch is answered: its frames and the copies kept
                // for a resend are freed.
                self.registers_done |= self.session.is_settled();
            }
            (Tag::Unregister, ResponseBody::Unregistered { total, .. }) => {
                log::debug!(target: "peer", "index holds {total} of our files");
            }
            (Tag::Holders(id), body) => self.handle_holders_answer(now, id, body),
            (Tag::Command, body) => match self.commands.handle_answer(body, &mut self.output) {
                None => {}
                Some(Follow::Lookup(key)) => self.lookup_again(now, key),
                Some(Follow::Get {
                    target,
                    files,
                    holder,
                    total,
                }) => {
                    let background = std::mem::take(&mut self.get_background);
                    self.start_get(now, &target, files, holder, total, background)
                }
            },
            (Tag::Web(id), body) => self.web_answers.push_back((id, body)),
            (_, ResponseBody::Error { code, message }) => {
                self.output.error(format!("index: {code}: {message}"))
            }
            _ => {}
        }
    }

    /// The running lookup asks again (hex tried as a name).
    fn lookup_again(&mut self, now: Instant, key: LookupKey) {
        let body = RequestBody::Lookup { key, after: None };
        if !self
            .session
            .request(now, body, Tag::Command, &mut self.actions)
        {
            let index = &self.cfg.index;
            self.output
                .error(format!("not connected to the index {index}"));
            self.commands.finish();
        }
    }

    /// One event of download `i`; true when the download is over (and must be removed).
    fn handle_download_event(&mut self, now: Instant, i: usize, event: DownloadEvent) -> bool {
        let r = &self.downloads[i];
        let (raw, _, size) = r.dl.progress();
        let name = raw.to_string();
        let background = r.background;
        let id = r.dl.id();
        match event {
            DownloadEvent::Resuming { have } => {
                self.output.say(Line::Resuming { name, have, size });
            }
            // Not written as text while a bar shows progress (see `render`).
            DownloadEvent::Trying(holder) => self.output.say(Line::Trying { name, size, holder }),
            DownloadEvent::Queued { holder, position } => self.output.say(Line::Queued {
                name,
                holder,
                position,
            }),
            DownloadEvent::Dropped { holder, why, liar } => self.output.say(Line::Dropped {
                name,
                holder,
                why,
                liar,
            }),
            DownloadEvent::Push { holder, attempt } => self.ask_push(now, i, holder, attempt),
            DownloadEvent::NeedHolders => {
                let hash = self.downloads[i].dl.hash();
                let body = RequestBody::Lookup {
                    key: LookupKey::Hash(hash),
                    after: None,
                };
                if !self
                    .session
                    .request(now, body, Tag::Holders(id), &mut self.actions)
                {
                    self.downloads[i]
                        .dl
                        .handle_holders(now, None, &mut self.actions);
                }
            }
            DownloadEvent::Progress { have } => {
                if !background {
                    self.output.progress(&name, have, size);
                }
            }
            DownloadEvent::Saved {
                path,
                existed,
                received,
                secs,
                holders,
            } => {
                let hash = self.downloads[i].dl.hash();
                if !background {
                    self.output.progress_end();
                }
                if existed {
                    self.output.say(Line::AlreadyHave { path, hash, size });
                } else {
                    self.output.note(format!(
                        "get: {}: {received} bytes fetched from {holders} holder{}",
                        display_name(&name),
                        if holders == 1 { "" } else { "s" }
                    ));
                    self.output.say(Line::Saved(Saved {
                        path: path.clone(),
                        hash,
                        size,
                        received,
                        secs,
                        holders,
                    }));
                    self.share_download(now, &path, size, hash);
                }
                self.counters.downloads_saved += 1;
                if !background {
                    self.commands.finish();
                }
                return true;
            }
            DownloadEvent::Failed(text) => {
                if !background {
                    self.output.progress_end();
                }
                self.counters.downloads_failed += 1;
                let r = self.downloads.remove(i);
                let hash = r.dl.hash();
                self.next_claim(now, hash, text, r.claims_left, r.background);
                return false;
            }
        }
        false
    }

    /// The holders a download's lookup found.
    fn handle_holders_answer(&mut self, now: Instant, id: DownloadId, body: ResponseBody) {
        let me = self.me();
        let Some(r) = running(&mut self.downloads, id) else {
            return;
        };
        let (hash, size) = (r.dl.hash(), r.dl.progress().2);
        let holders = match body {
            ResponseBody::Holders { files, .. } => files
                .into_iter()
                .filter(|f| f.hash == hash && f.size == size)
                .flat_map(|f| f.holders)
                .filter(|h| Some(*h) != me)
                .collect(),
            _ => Vec::new(),
        };
        r.dl.note_firewalled(self.firewalled.iter().copied());
        r.dl.handle_holders(now, Some(holders), &mut self.actions);
    }

    /// Downloads inside the share are shared once verified.
    fn share_download(&mut self, now: Instant, path: &Path, size: u64, hash: FileHash) {
        if !path.starts_with(&self.cfg.share_dir) {
            return;
        }
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        let f = SharedFile {
            file_id: share::file_id(&meta),
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.to_path_buf(),
            size,
            mtime_ns: share::mtime_ns(&meta),
            hash,
        };
        if size > super::outboard::GROUP_BYTES && self.outboards.start_compute(hash) {
            // Its ranges are served once its outboard is computed (off the loop).
            self.actions
                .push_back(Action::Hash(Job::Outboard { file: f.clone() }));
        }
        let diff = self.share.upsert(vec![f]);
        self.session.register(now, diff.added, &mut self.actions);
    }

    // ----- console commands ---------------------------------------------------------------

    /// Asks the index for a page of search results.
    fn search(
        &mut self,
        now: Instant,
        query: String,
        filter: SearchFilter,
        after: Option<SearchCursor>,
    ) {
        let body = RequestBody::Search {
            query: query.clone(),
            limit: 0,
            filter: filter.clone(),
            after,
        };
        if self
            .session
            .request(now, body, Tag::Command, &mut self.actions)
        {
            self.commands.wait(Waiting::Search { query, filter });
        } else {
            let index = &self.cfg.index;
            self.output
                .error(format!("search: not connected to the index {index}"));
        }
    }

    fn execute(&mut self, now: Instant, cmd: Command) {
        match cmd {
            Command::Help => self.output.say(Line::Help),
            Command::Search { query, filter } => self.search(now, query, filter, None),
            Command::More => match self.commands.continuation() {
                Some((query, filter, after)) => self.search(now, query, filter, Some(after)),
                None => self.more(now),
            },
            Command::Lookup(target) => self.lookup(now, target, None),
            Command::Get {
                target,
                holder,
                background,
            } => {
                // "get X N" after "lookup X" uses that lookup's numbering.
                if let (Some(n), Some(files)) = (holder, self.commands.remembered(&target)) {
                    let total = files.len() as u64;
                    return self.start_get(now, &target, files, Some(n), total, background);
                }
                // The lookup runs as a command; its answer starts the download (see
                // `start_get`), waited for unless `-b`.
                self.get_background = background;
                self.lookup(now, target, Some(holder));
            }
            Command::Downloads => {
                let list = self.download_list(now);
                self.output.say(Line::Downloads(list));
            }
            Command::Files => {
                let files = self
                    .share
                    .files()
                    .map(|f| FileRow {
                        hash: f.hash,
                        size: f.size,
                        name: f.name.clone(),
                    })
                    .collect();
                let bytes = self.share.total_bytes();
                self.output.say(Line::Files { files, bytes });
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
                self.actions.push_back(Action::Hash(job));
                self.commands.wait(Waiting::Scan);
            }
            Command::Unregister(target) => self.unregister(now, &target),
            Command::Status => {
                let report = self.status_report(now);
                self.output.say(Line::Status(Box::new(report)));
            }
            Command::Quit => self.quit(),
        }
    }

    fn lookup(&mut self, now: Instant, target: Target, then_get: Option<Option<usize>>) {
        let key = commands::lookup_key(&target);
        let body = RequestBody::Lookup { key, after: None };
        if self
            .session
            .request(now, body, Tag::Command, &mut self.actions)
        {
            self.commands.wait(Waiting::Lookup {
                target,
                then_get,
                by_name_retry: false,
                shown: 0,
            });
        } else {
            let index = &self.cfg.index;
            self.output
                .error(format!("not connected to the index {index}"));
        }
    }

    /// `more` after a lookup: the next page of the last lookup that had more files.
    fn more(&mut self, now: Instant) {
        let Some(page) = self.commands.more().cloned() else {
            self.output
                .error("more: nothing more to show (it continues a search or lookup that says so)");
            return;
        };
        let body = RequestBody::Lookup {
            key: LookupKey::Name(page.name),
            after: Some(page.token),
        };
        if self
            .session
            .request(now, body, Tag::Command, &mut self.actions)
        {
            self.commands.wait(Waiting::Lookup {
                target: page.target,
                then_get: None,
                by_name_retry: true,
                shown: page.shown,
            });
        } else {
            let index = &self.cfg.index;
            self.output
                .error(format!("more: not connected to the index {index}"));
        }
    }

    fn unregister(&mut self, now: Instant, target: &Target) {
        let mut hashes: Vec<FileHash> = self
            .share
            .find(|f| match target {
                Target::Hash(h) => f.hash == *h,
                Target::HashPrefix(p) => f.hash.has_hex_prefix(p) || f.name == *p,
                Target::Name(n) => f.name == *n,
            })
            .iter()
            .map(|f| f.hash)
            .collect();
        hashes.sort();
        hashes.dedup();
        match hashes.len() {
            0 => self
                .output
                .error(format!("unregister: this peer does not share {target}")),
            1 => {
                let removed = self.share.remove_hash(&hashes[0]);
                self.session
                    .unregister(now, hashes.clone(), &mut self.actions);
                self.forget_outboards(&hashes);
                // Remembered: a rescan, a change or a restart does not share it again.
                if let Err(e) = self.withdrawn.withdraw(&removed) {
                    self.output.note(format!(
                        "warning: cannot save the withdrawn list (it is withdrawn until the \
                         peer restarts): {e}"
                    ));
                }
                let names: Vec<String> = removed.iter().map(|f| f.name.clone()).collect();
                self.output.say(Line::Unregistered {
                    hash: hashes[0],
                    names,
                });
            }
            n => self.output.error(format!(
                "unregister: {n} files match {target}; name one by hash"
            )),
        }
    }

    /// What a metrics scrape reports of the core.
    pub fn metrics_view(&self) -> CoreView {
        CoreView {
            counters: self.counters.clone(),
            uploads_active: self.uploads.active,
            uploads_done: self.uploads.done,
            upload_bytes: self.uploads.bytes,
            download_active: !self.downloads.is_empty(),
            session_state: self.session.state_name(),
            shared_files: self.share.len() as u64,
            shared_bytes: self.share.total_bytes(),
        }
    }

    // ----- the web page (see `web`) ---------------------------------------------------------

    /// Sends a request of the web page to the index, beside the console's; its answer comes
    /// from [`PeerCore::poll_web_answer`] with the number returned. `None`: not connected.
    pub fn handle_web_request(&mut self, now: Instant, body: RequestBody) -> Option<u64> {
        let id = self.next_web_request;
        if !self
            .session
            .request(now, body, Tag::Web(id), &mut self.actions)
        {
            return None;
        }
        self.next_web_request += 1;
        Some(id)
    }

    /// The index's answer to a web request.
    pub fn poll_web_answer(&mut self) -> Option<(u64, ResponseBody)> {
        self.web_answers.pop_front()
    }

    /// A command line from the web page: it runs in turn with the console's, and its output
    /// is the console's.
    pub fn handle_web_command(&mut self, now: Instant, line: String) {
        self.commands.handle_line(line);
        self.pump(now);
    }

    /// The downloads running now.
    pub fn downloads_view(&self, now: Instant) -> Vec<DownloadStatus> {
        self.download_list(now)
    }

    /// The files shared.
    pub fn shared_files(&self) -> impl Iterator<Item = SharedFile> + '_ {
        self.share.files()
    }

    /// What `status` reports.
    pub fn status_view(&self, now: Instant) -> StatusReport {
        self.status_report(now)
    }

    /// The running downloads, for `status` and `downloads`.
    fn download_list(&self, now: Instant) -> Vec<DownloadStatus> {
        self.downloads
            .iter()
            .map(|r| {
                let (name, done, total) = r.dl.progress();
                let (received, secs) = r.dl.received(now);
                DownloadStatus {
                    name: name.to_string(),
                    hash: r.dl.hash(),
                    done,
                    total,
                    rate: received as f64 / secs.max(1e-9),
                    sources: r.dl.sources(),
                    background: r.background,
                }
            })
            .collect()
    }

    fn status_report(&self, now: Instant) -> StatusReport {
        StatusReport {
            index: self.session.status(),
            share_dir: self.cfg.share_dir.clone(),
            files: self.share.len(),
            bytes: self.share.total_bytes(),
            listen_port: self.listen_port,
            reachable: self.push.reachable,
            uploads_active: self.uploads.active,
            upload_slots: self.queue.slots,
            uploads_queued: self.queue.len(),
            uploads_done: self.uploads.done,
            upload_bytes: self.uploads.bytes,
            downloads: self.download_list(now),
        }
    }

    fn quit(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        for r in &mut self.downloads {
            r.dl.abandon(&mut self.actions);
        }
        self.session.quit(&mut self.actions);
        self.actions.push_back(Action::Stop);
    }

    /// Starts downloading the one file a lookup found (the runner waits for it unless
    /// `background`), or says why not.
    fn start_get(
        &mut self,
        now: Instant,
        target: &Target,
        files: Vec<HeldFile>,
        holder: Option<usize>,
        total: u64,
        background: bool,
    ) {
        if background {
            // The lookup that led here was the command; the console goes on.
            self.commands.finish();
        } else {
            self.commands.wait(Waiting::Get);
        }
        // A `get` by hash (as the web page asks) names the download its failure ends.
        let failed_hash = match target {
            Target::Hash(h) => Some(*h),
            _ => None,
        };
        let fail = |core: &mut PeerCore, text: String| {
            match failed_hash {
                Some(hash) => core.output.say(Line::Failed {
                    hash,
                    message: text,
                }),
                None => core.output.error(text),
            }
            if !background {
                core.commands.finish();
            }
        };
        let total = total.max(files.len() as u64);
        let mut claims_left = VecDeque::new();
        // Several sizes claimed for one hash (see `ResponseBody::Holders`): one file, the
        // best claim first, the others tried if its holders fail.
        let claims = files.len() > 1 && files.iter().all(|f| f.hash == files[0].hash);
        let mut file = match files.len() {
            0 => return fail(self, format!("no peer shares {target}")),
            _ if claims => {
                let mut files: VecDeque<HeldFile> = files.into();
                let first = files.pop_front().expect("several claims");
                claims_left = files;
                first
            }
            1 if total == 1 => files.into_iter().next().expect("one file"),
            _ => {
                let mut text = format!(
                    "{total} different files are called {target}; get one by hash:\n{}",
                    render::holders_text(&files, render::Style::default())
                );
                if total > files.len() as u64 {
                    let _ = write!(
                        text,
                        "\n(the first {}, most holders first; `lookup {target}` then `more` \
                         lists the others)",
                        files.len()
                    );
                }
                return fail(self, text);
            }
        };
        // The name saved is the one our own lookup chose: the name typed for `get NAME` (an
        // index answer cannot rename it), else the name the index answer shows. It is
        // sanitised when it lands.
        if let Target::Name(typed) = target {
            file.name.clone_from(typed);
            for claim in &mut claims_left {
                claim.name.clone_from(typed);
            }
        }
        if let Some(mine) = self.share.by_hash(&file.hash) {
            self.output.say(Line::AlreadyHave {
                path: mine.path.clone(),
                hash: file.hash,
                size: mine.size,
            });
            if !background {
                self.commands.finish();
            }
            return;
        }
        if self.downloads.iter().any(|r| r.dl.hash() == file.hash) {
            return fail(
                self,
                format!("{} is already being downloaded", display_name(&file.name)),
            );
        }
        if background {
            self.output.say(Line::Started {
                name: file.name.clone(),
                hash: file.hash,
                size: file.size,
            });
        }
        if let Err(why) = self.download_claim(now, &file, holder, claims_left.clone(), background) {
            self.next_claim(now, file.hash, why, claims_left, background);
        }
    }

    /// The download of one claim failed (`why`): tries the next size claimed for the same
    /// hash, whose holders may have the real file, or ends the `get` with `why`.
    fn next_claim(
        &mut self,
        now: Instant,
        hash: FileHash,
        mut why: String,
        mut claims_left: VecDeque<HeldFile>,
        background: bool,
    ) {
        while let Some(next) = claims_left.pop_front() {
            self.output.note(format!(
                "get: {why}; trying the holders that claim {} bytes",
                next.size
            ));
            match self.download_claim(now, &next, None, claims_left.clone(), background) {
                Ok(()) => return,
                Err(e) => why = e,
            }
        }
        self.output.say(Line::Failed { hash, message: why });
        if !background {
            self.commands.finish();
        }
    }

    /// Starts downloading `file` from all its holders (holder number `holder` first, when
    /// given), or says why not.
    fn download_claim(
        &mut self,
        now: Instant,
        file: &HeldFile,
        holder: Option<usize>,
        claims_left: VecDeque<HeldFile>,
        background: bool,
    ) -> Result<(), String> {
        // Our own address may be listed if we shared it before; never download from self.
        let me = self.me();
        let mut holders: Vec<SocketAddr> = file
            .holders
            .iter()
            .copied()
            .filter(|h| Some(*h) != me)
            .collect();
        if let Some(n) = holder {
            if n > file.holders.len() {
                return Err(format!(
                    "holder {n} does not exist: the lookup listed {}",
                    file.holders.len()
                ));
            }
            // Holder N first, the others beside it.
            let chosen = file.holders[n - 1];
            holders.retain(|h| *h != chosen);
            holders.insert(0, chosen);
        }
        if holders.is_empty() {
            return Err(format!("no other peer holds {}", display_name(&file.name)));
        }
        let id = self.next_download;
        self.next_download += 1;
        let mut dl = Download::new(
            id,
            now,
            &self.cfg.downloads_dir,
            file,
            holders,
            me,
            self.cfg.download_limits,
            swarm::Config::default(),
        )
        .map_err(|e| format!("get: {e}"))?;
        dl.note_firewalled(self.firewalled.iter().copied());
        dl.start(now, &mut self.actions);
        self.downloads.push(Running {
            dl,
            claims_left,
            background,
        });
        self.counters.downloads_started += 1;
        Ok(())
    }
}

/// The running download `id`.
fn running(downloads: &mut [Running], id: DownloadId) -> Option<&mut Running> {
    downloads.iter_mut().find(|r| r.dl.id() == id)
}
