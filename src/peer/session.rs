//! The index session machine: the peer's one long-lived connection to the index, as a sans-IO
//! state machine. Inputs are `handle_*` calls with `now`; outputs are [`Action`]s appended to
//! the caller's list (connect, send, close, resolve) and [`SessionEvent`]s for the rest of the
//! peer ([`IndexSession::poll_event`]). It owns no socket and reads no clock.
//!
//! ```text
//!  start / retry due --> Resolving (a host name) --addresses--> Connecting --connected-->
//!  AwaitingWelcome --Welcome--> Ready (Ping every PING_INTERVAL; requests by id)
//!  any close, failed connect or lookup, or the index silent for the reply timeout while it
//!  owes an answer (AwaitingWelcome, Ready) --> Down (retry after a jittered backoff, and not
//!  before a ban the index announced has expired)
//!  a connect that fails while the name has more addresses --> Connecting to the next one
//!  Hello answered VersionMismatch --> Refused: closed, never retried; said once, in `status`
//! ```
//!
//! # Invariants
//! - Requests carry ids; every request in flight is in `pending` under its id, with a [`Tag`]
//!   saying whose it is. They die with the connection: a console request in flight is
//!   reported failed in [`SessionEvent::Down`].
//! - Soft state: the index forgets us when the connection ends, so [`SessionEvent::Up`] comes
//!   after every Welcome and the peer registers everything again.
//! - Reconnects back off exponentially from [`BACKOFF_MIN`] to [`BACKOFF_MAX`], each wait
//!   drawn uniformly between zero and its step ("full jitter": thousands of peers that lost
//!   the same index come back spread over the whole step, not in a wave at its end); the
//!   random source is seeded by the caller, so tests are repeatable. A Welcome resets the
//!   backoff.
//! - A register or unregister the index refuses with `RateLimited` is sent again, as it was,
//!   once the wait it names has passed (if the session is still up; a new session registers
//!   everything anyway). A `RateLimited` that says the address is banned holds every
//!   reconnect off until the ban ends.
//! - An index that owes us an answer (the Hello, a Ping, a register, a search...) and says
//!   nothing for the reply timeout ([`DEFAULT_REPLY_TIMEOUT`], `peer --index-timeout`) is
//!   taken for hung (stopped, its loop wedged, a network that swallows packets): the
//!   connection is closed and the session is down as if the index had closed it, so the
//!   next `--index` node is tried and everything registered there. Any frame from the index
//!   restarts the wait, so a long bulk register answered slice by slice is not mistaken for
//!   a hang. `Reachability` and `Push` wait on a connect-back the index makes (its own
//!   timeouts bound them) and `Bye` on nothing: they owe no prompt answer.
//! - The person is told once that the index went away, and once that it is back.
//! - A version mismatch cannot be fixed by retrying: the session stays down until the peer is
//!   restarted, instead of hammering the index.
//! - Every Welcome is followed by a `Reachability` request: the index tests our file server
//!   with a connect-back, and from then on relays push requests to us (notices with id 0,
//!   [`SessionEvent::PushRequest`]; see `peer/push.rs`). What it found is
//!   [`SessionEvent::Reachability`]; it is forgotten with the session.

use super::core::{Action, Role};
use super::render::{IndexState, IndexStatus};
use crate::reactor::{CloseReason, ConnId};
use crate::wire::{
    self, ErrorCode, FileEntry, FileHash, Request, RequestBody, Response, ResponseBody,
    PROTOCOL_VERSION,
};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// How often a ready session is pinged (indexd's default idle timeout is 120 s). Short, so
/// that an idle peer finds a hung index out (a ping unanswered for the reply timeout) within
/// the sum of the two, 15 s by default: about when a cluster's other nodes drop a silent
/// node's peers (`indexd --cluster-ttl`, 15 s), so its holders reappear through another node.
pub const PING_INTERVAL: Duration = Duration::from_secs(5);
/// How long the index may stay silent while it owes us an answer before the session is
/// taken for lost (`peer --index-timeout-ms`). indexd answers at once (big registers frame
/// by frame), so this only has to outlast a busy machine; a ping is owed every
/// [`PING_INTERVAL`], so a hung index is found within the sum of the two when idle.
pub const DEFAULT_REPLY_TIMEOUT: Duration = Duration::from_secs(10);
/// The first reconnect step; it doubles up to [`BACKOFF_MAX`].
pub const BACKOFF_MIN: Duration = Duration::from_millis(250);
/// The longest reconnect step.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Largest Register frame built (well under indexd's default 1 MiB frame limit).
const REGISTER_BATCH_BYTES: usize = 512 * 1024;

/// Whose request an id belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    /// The handshake.
    Hello,
    /// A bulk register of shared files.
    Register,
    /// Files withdrawn.
    Unregister,
    /// Keep-alive.
    Ping,
    /// Goodbye before quitting.
    Bye,
    /// The running console command (search, lookup): at most one at a time.
    Command,
    /// A running download's lookup of its file's holders.
    Holders(u64),
    /// A request of the web page (search, lookup), numbered by the core; several at once.
    Web(u64),
    /// The test of our file server's reachability (after every Welcome).
    Reachability,
    /// A push asked of a holder for a download: the download and its attempt number.
    Push(u64, u32),
}

impl Tag {
    /// Whether the index answers this at once: false for requests that wait on a
    /// connect-back the index makes (bounded by its own timeouts) and for `Bye`.
    fn is_owed_promptly(self) -> bool {
        !matches!(self, Tag::Reachability | Tag::Push(..) | Tag::Bye)
    }
}

/// What the rest of the peer hears from the session.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// Welcome received: register everything. `again`: the person was told it was down.
    Up {
        /// Our address as the index sees it.
        observed: SocketAddr,
        /// The session had been reported down and is back.
        again: bool,
    },
    /// The session ended and will be retried.
    Down {
        /// What happened.
        why: String,
        /// First time since it was last up: tell the person.
        first: bool,
        /// A console request was in flight and is lost.
        command_lost: bool,
    },
    /// An answer to a request.
    Answer {
        /// Whose request it was.
        tag: Tag,
        /// The answer.
        body: ResponseBody,
    },
    /// An error frame that answers nothing of ours (or the handshake).
    Error(String),
    /// The index speaks another protocol version: the session stays down.
    Refused(String),
    /// Something the person should know that needs no action (a rate limit waited out).
    Note(String),
    /// The index tested our file server: reachable or not (firewalled).
    Reachability(bool),
    /// A downloader asks us, through the index, to connect to it and serve `hash`.
    PushRequest {
        /// The file.
        hash: FileHash,
        /// The downloader's file server, as the index sees it.
        to: SocketAddr,
        /// To name in our first frame there.
        nonce: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum State {
    /// Not connected; `retry_at` is when the next attempt starts (none: not started).
    Down { retry_at: Option<Instant> },
    /// The index's host name is being looked up.
    Resolving,
    /// A connect is in progress.
    Connecting,
    /// Hello sent on `conn`.
    AwaitingWelcome { conn: ConnId },
    /// Welcomed: requests can be sent.
    Ready {
        conn: ConnId,
        observed: SocketAddr,
        next_ping: Instant,
    },
    /// The index refused our protocol version; nothing more is tried.
    Refused { message: String },
    /// The peer is quitting.
    Closed,
}

/// The index session; see the module docs.
pub struct IndexSession {
    /// The index being tried or used (`HOST:PORT`): one of `indexes`.
    index: String,
    /// Every index given (`--index A,B,C`: the nodes of one cluster); after a failure the
    /// session moves to the next one.
    indexes: Vec<String>,
    /// Which of `indexes` is `index`.
    current: usize,
    /// The file server's port, announced in Hello.
    listen_port: u16,
    state: State,
    pending: HashMap<u32, Tag>,
    next_id: u32,
    /// Reconnect attempts since the last Welcome (the backoff's exponent).
    attempts: u32,
    rng: fastrand::Rng,
    /// The looked-up name's other addresses, tried in turn while connects fail.
    addrs: VecDeque<SocketAddr>,
    /// The person was told the index is down, and not yet that it is back.
    told_down: bool,
    /// A session has been up (Welcome) since the peer started: before, the peer is "not
    /// connected yet" rather than "disconnected".
    been_up: bool,
    /// Why the last connect or session ended, for `status`.
    last_error: Option<String>,
    events: VecDeque<SessionEvent>,
    /// Registers and unregisters in flight, by id: sent again if refused over a rate limit.
    automatic: HashMap<u32, RequestBody>,
    /// Refused automatic requests and when to send them again.
    deferred: Vec<(Instant, RequestBody, Tag)>,
    /// The index banned our address until then: no reconnect before.
    banned_until: Option<Instant>,
    /// How long the index may stay silent while it owes an answer.
    reply_timeout: Duration,
    /// While the index owes an answer (see [`Tag::is_owed_promptly`]): when it must have
    /// said something by.
    answer_due: Option<Instant>,
}

impl IndexSession {
    /// A session with the index at `index` (`HOST:PORT`, or several separated by commas:
    /// the nodes of one cluster, tried in turn), announcing `listen_port`. `seed` seeds the
    /// backoff's jitter; `reply_timeout` is how long the index may stay silent while it owes
    /// an answer.
    pub fn new(
        index: String,
        listen_port: u16,
        seed: u64,
        reply_timeout: Duration,
    ) -> IndexSession {
        let mut indexes: Vec<String> = index
            .split(',')
            .map(str::trim)
            .filter(|i| !i.is_empty())
            .map(String::from)
            .collect();
        if indexes.is_empty() {
            indexes.push(index);
        }
        IndexSession {
            index: indexes[0].clone(),
            indexes,
            current: 0,
            listen_port,
            state: State::Down { retry_at: None },
            pending: HashMap::new(),
            next_id: 1,
            attempts: 0,
            rng: fastrand::Rng::with_seed(seed),
            addrs: VecDeque::new(),
            told_down: false,
            been_up: false,
            last_error: None,
            events: VecDeque::new(),
            automatic: HashMap::new(),
            deferred: Vec::new(),
            banned_until: None,
            reply_timeout,
            answer_due: None,
        }
    }

    /// The first connect.
    pub fn start(&mut self, out: &mut VecDeque<Action>) {
        if self.state == (State::Down { retry_at: None }) {
            self.connect(out);
        }
    }

    /// At once for an address; after a lookup (on a helper thread: a slow DNS server must
    /// not stall the loop) for a host name.
    fn connect(&mut self, out: &mut VecDeque<Action>) {
        match self.index.parse::<SocketAddr>() {
            Ok(addr) => self.connect_to(addr, out),
            Err(_) => {
                self.state = State::Resolving;
                out.push_back(Action::Resolve(self.index.clone()));
            }
        }
    }

    fn connect_to(&mut self, addr: SocketAddr, out: &mut VecDeque<Action>) {
        self.state = State::Connecting;
        out.push_back(Action::Connect {
            addr,
            role: Role::Index,
        });
    }

    /// The lookup asked for by [`Action::Resolve`] ended.
    pub fn handle_resolved(
        &mut self,
        now: Instant,
        result: Result<Vec<SocketAddr>, String>,
        out: &mut VecDeque<Action>,
    ) {
        if self.state != State::Resolving {
            return;
        }
        match result {
            Ok(addrs) if !addrs.is_empty() => {
                self.addrs = addrs.into();
                let first = self.addrs.pop_front().expect("not empty");
                self.connect_to(first, out);
            }
            Ok(_) => self.down(now, format!("{} has no address", self.index)),
            Err(e) => self.down(now, format!("cannot resolve {}: {e}", self.index)),
        }
    }

    /// The connect completed: say Hello.
    pub fn handle_connected(&mut self, now: Instant, conn: ConnId, out: &mut VecDeque<Action>) {
        if self.state != State::Connecting {
            return;
        }
        self.state = State::AwaitingWelcome { conn };
        self.addrs.clear();
        let body = RequestBody::Hello {
            version: PROTOCOL_VERSION,
            listen_port: self.listen_port,
            agent: format!("p2pshare-peer/{}", env!("CARGO_PKG_VERSION")),
        };
        self.send(now, conn, body, Tag::Hello, out);
    }

    /// A frame from the index.
    pub fn handle_response(&mut self, now: Instant, resp: Response, out: &mut VecDeque<Action>) {
        let tag = self.pending.remove(&resp.id);
        // The index is alive: the wait for the next answer owed starts again.
        self.answer_due = self.owes_answer().then_some(now + self.reply_timeout);
        let Some(tag) = tag else {
            match resp.body {
                ResponseBody::Error { code, message } => self
                    .events
                    .push_back(SessionEvent::Error(format!("index: {code}: {message}"))),
                // Refused at accept for a ban: the close that follows waits it out.
                ResponseBody::RateLimited {
                    retry_after_ms,
                    banned,
                } => self.rate_limited(now, retry_after_ms, banned, "connecting"),
                // Relayed to us because we asked `Reachability` on this session.
                ResponseBody::PushRequest { hash, to, nonce } if self.is_ready() => self
                    .events
                    .push_back(SessionEvent::PushRequest { hash, to, nonce }),
                _ => {}
            }
            return;
        };
        let automatic = self.automatic.remove(&resp.id);
        match (tag, resp.body) {
            (
                tag,
                ResponseBody::RateLimited {
                    retry_after_ms,
                    banned,
                },
            ) if !matches!(tag, Tag::Command | Tag::Web(_) | Tag::Push(..)) => {
                let what = match tag {
                    Tag::Register => "registering",
                    Tag::Unregister => "withdrawing files",
                    _ => "talking to it",
                };
                self.rate_limited(now, retry_after_ms, banned, what);
                if let (Some(body), false) = (automatic, banned) {
                    let at = now + Duration::from_millis(retry_after_ms);
                    self.deferred.push((at, body, tag));
                }
            }
            (Tag::Hello, ResponseBody::Welcome { observed, .. }) => {
                let State::AwaitingWelcome { conn } = self.state else {
                    return;
                };
                self.state = State::Ready {
                    conn,
                    observed,
                    next_ping: now + PING_INTERVAL,
                };
                self.attempts = 0;
                let again = std::mem::take(&mut self.told_down);
                self.been_up = true;
                self.last_error = None;
                self.events.push_back(SessionEvent::Up { observed, again });
                self.send(now, conn, RequestBody::Reachability, Tag::Reachability, out);
            }
            (Tag::Reachability, ResponseBody::Reachability { reachable }) => {
                self.events.push_back(SessionEvent::Reachability(reachable));
            }
            (Tag::Hello, ResponseBody::Error { code, message }) => {
                let conn = self.conn();
                self.events
                    .push_back(SessionEvent::Error(format!("index: {code}: {message}")));
                if code == ErrorCode::VersionMismatch {
                    self.pending.clear();
                    self.state = State::Refused { message };
                    self.events
                        .push_back(SessionEvent::Refused(self.status_line()));
                }
                // Otherwise (busy, say) the close that follows backs off and retries.
                if let Some(conn) = conn {
                    out.push_back(Action::Close {
                        conn,
                        reason: CloseReason::Local,
                        after_flush: false,
                    });
                }
            }
            (tag, body) => self.events.push_back(SessionEvent::Answer { tag, body }),
        }
    }

    /// The index refused a request over its rate limits: say so, and remember a ban.
    fn rate_limited(&mut self, now: Instant, retry_after_ms: u64, banned: bool, what: &str) {
        let wait = Duration::from_millis(retry_after_ms);
        let secs = wait.as_secs_f64();
        let text = if banned {
            self.banned_until = Some(now + wait);
            format!(
                "index: our address is banned for {secs:.1} s (too many requests over its rate \
                 limits); reconnecting after that"
            )
        } else {
            format!("index: rate limited while {what}; trying again in {secs:.1} s")
        };
        self.events.push_back(SessionEvent::Note(text));
    }

    /// The connection (or its connect) ended.
    pub fn handle_closed(
        &mut self,
        now: Instant,
        reason: &CloseReason,
        out: &mut VecDeque<Action>,
    ) {
        match self.state {
            State::Refused { .. } | State::Closed | State::Down { .. } | State::Resolving => {}
            State::Connecting => match self.addrs.pop_front() {
                // This address refused: the name's next one may listen.
                Some(next) if *reason != CloseReason::Local => self.connect_to(next, out),
                _ => self.down(now, reason.to_string()),
            },
            State::AwaitingWelcome { .. } | State::Ready { .. } => {
                self.down(now, reason.to_string())
            }
        }
    }

    /// The index being tried or used.
    pub fn index(&self) -> &str {
        &self.index
    }

    fn down(&mut self, now: Instant, mut why: String) {
        if self.indexes.len() > 1 {
            // The next node of the cluster is tried next; it has our entries back once we
            // register there.
            why = format!("{}: {why}", self.index);
            self.current = (self.current + 1) % self.indexes.len();
            self.index = self.indexes[self.current].clone();
        }
        let command_lost = self.pending.values().any(|t| *t == Tag::Command);
        self.pending.clear();
        self.answer_due = None;
        self.addrs.clear();
        self.automatic.clear();
        self.deferred.clear();
        let delay = self.next_backoff();
        let retry_at = (now + delay).max(self.banned_until.take().unwrap_or(now));
        self.state = State::Down {
            retry_at: Some(retry_at),
        };
        let first = !self.told_down;
        self.told_down = true;
        self.last_error = Some(why.clone());
        self.events.push_back(SessionEvent::Down {
            why,
            first,
            command_lost,
        });
    }

    /// The wait before the next attempt: the step doubles from [`BACKOFF_MIN`] up to
    /// [`BACKOFF_MAX`], and the wait is drawn uniformly between zero and the step (full
    /// jitter).
    fn next_backoff(&mut self) -> Duration {
        let step = BACKOFF_MIN
            .saturating_mul(1u32 << self.attempts.min(16))
            .min(BACKOFF_MAX);
        self.attempts = self.attempts.saturating_add(1);
        Duration::from_millis(self.rng.u64(0..=step.as_millis() as u64))
    }

    /// Time passed: give up on a silent index, retry a connect or send a ping when due.
    pub fn handle_timeout(&mut self, now: Instant, out: &mut VecDeque<Action>) {
        if let (Some(due), Some(conn)) = (self.answer_due, self.conn()) {
            if due <= now {
                let secs = self.reply_timeout.as_secs_f64();
                let why = format!("no answer from the index in {secs:.1} s");
                log::warn!(target: "peer", "index {}: {why}; closing the session", self.index);
                out.push_back(Action::Close {
                    conn,
                    reason: CloseReason::Protocol(why.clone()),
                    after_flush: false,
                });
                self.down(now, why);
                return;
            }
        }
        if self.is_ready() && self.deferred.iter().any(|(at, ..)| *at <= now) {
            let (due, later) = std::mem::take(&mut self.deferred)
                .into_iter()
                .partition(|(at, ..)| *at <= now);
            self.deferred = later;
            for (_, body, tag) in due {
                self.request(now, body, tag, out);
            }
        }
        match self.state {
            State::Down { retry_at: Some(at) } if at <= now => self.connect(out),
            State::Ready {
                conn, next_ping, ..
            } if next_ping <= now => {
                self.send(now, conn, RequestBody::Ping, Tag::Ping, out);
                if let State::Ready { next_ping, .. } = &mut self.state {
                    *next_ping = now + PING_INTERVAL;
                }
            }
            _ => {}
        }
    }

    /// When [`IndexSession::handle_timeout`] next has something to do.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let due = self.answer_due;
        match self.state {
            State::Down { retry_at } => retry_at,
            State::AwaitingWelcome { .. } => due,
            State::Ready { next_ping, .. } => {
                let retry = self.deferred.iter().map(|(at, ..)| *at).min();
                [Some(next_ping), retry, due].into_iter().flatten().min()
            }
            _ => None,
        }
    }

    /// Whether a request the index answers at once is unanswered.
    fn owes_answer(&self) -> bool {
        self.pending.values().any(|t| t.is_owed_promptly())
    }

    /// What happened, for the rest of the peer.
    pub fn poll_event(&mut self) -> Option<SessionEvent> {
        self.events.pop_front()
    }

    /// Sends a request if the session is ready; false if it is not.
    pub fn request(
        &mut self,
        now: Instant,
        body: RequestBody,
        tag: Tag,
        out: &mut VecDeque<Action>,
    ) -> bool {
        match self.state {
            State::Ready { conn, .. } => {
                self.send(now, conn, body, tag, out);
                true
            }
            _ => false,
        }
    }

    fn send(
        &mut self,
        now: Instant,
        conn: ConnId,
        body: RequestBody,
        tag: Tag,
        out: &mut VecDeque<Action>,
    ) {
        if tag.is_owed_promptly() && self.answer_due.is_none() {
            self.answer_due = Some(now + self.reply_timeout);
        }
        self.send_frame(conn, body, tag, out);
    }

    /// Sends a request, owed promptly or not (see [`IndexSession::send`]).
    fn send_frame(
        &mut self,
        conn: ConnId,
        body: RequestBody,
        tag: Tag,
        out: &mut VecDeque<Action>,
    ) {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        let mut frame = Vec::new();
        let request = Request { id, body };
        wire::encode_frame(&request, &mut frame);
        let body = request.body;
        out.push_back(Action::Send { conn, frame });
        self.pending.insert(id, tag);
        if matches!(tag, Tag::Register | Tag::Unregister) {
            self.automatic.insert(id, body);
        }
    }

    /// Registers `entries` in bulk (several frames if they are many); nothing if not ready
    /// (the next Welcome registers everything anyway).
    pub fn register(&mut self, now: Instant, entries: Vec<FileEntry>, out: &mut VecDeque<Action>) {
        let mut batch = Vec::new();
        let mut bytes = 0;
        for e in entries {
            bytes += e.name.len() + 48;
            batch.push(e);
            if bytes >= REGISTER_BATCH_BYTES {
                let files = std::mem::take(&mut batch);
                self.request(now, RequestBody::Register { files }, Tag::Register, out);
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            self.request(
                now,
                RequestBody::Register { files: batch },
                Tag::Register,
                out,
            );
        }
    }

    /// Withdraws files (nothing if not ready: the index forgot them with the session).
    pub fn unregister(&mut self, now: Instant, hashes: Vec<FileHash>, out: &mut VecDeque<Action>) {
        if !hashes.is_empty() {
            self.request(
                now,
                RequestBody::Unregister { hashes },
                Tag::Unregister,
                out,
            );
        }
    }

    /// Says goodbye (when ready) and closes; nothing is retried after this.
    pub fn quit(&mut self, out: &mut VecDeque<Action>) {
        if let State::Ready { conn, .. } = self.state {
            // Owed no answer: the peer is leaving.
            self.send_frame(conn, RequestBody::Bye, Tag::Bye, out);
        }
        if let Some(conn) = self.conn() {
            out.push_back(Action::Close {
                conn,
                reason: CloseReason::Local,
                after_flush: true,
            });
        }
        self.state = State::Closed;
    }

    fn conn(&self) -> Option<ConnId> {
        match self.state {
            State::AwaitingWelcome { conn } | State::Ready { conn, .. } => Some(conn),
            _ => None,
        }
    }

    /// The state's name, for metrics: `down`, `resolving`, `connecting`, `awaiting_welcome`,
    /// `ready`, `refused` or `closed`.
    pub fn state_name(&self) -> &'static str {
        match self.state {
            State::Down { .. } => "down",
            State::Resolving => "resolving",
            State::Connecting => "connecting",
            State::AwaitingWelcome { .. } => "awaiting_welcome",
            State::Ready { .. } => "ready",
            State::Refused { .. } => "refused",
            State::Closed => "closed",
        }
    }

    /// Whether requests can be sent.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready { .. })
    }

    /// Whether the session got as far as it will for now: ready with every register
    /// answered, or down (startup waits for this before console commands run).
    pub fn is_settled(&self) -> bool {
        match self.state {
            State::Ready { .. } => !self.pending.values().any(|t| *t == Tag::Register),
            State::Down { retry_at } => retry_at.is_some(),
            State::Refused { .. } | State::Closed => true,
            _ => false,
        }
    }

    /// Our address as the index sees it, while ready.
    pub fn observed(&self) -> Option<SocketAddr> {
        match self.state {
            State::Ready { observed, .. } => Some(observed),
            _ => None,
        }
    }

    /// Whether a session has been up since the peer started.
    pub fn has_been_up(&self) -> bool {
        self.been_up
    }

    /// Where the session stands, for `status`.
    pub fn status(&self) -> IndexStatus {
        let (state, reason) = match &self.state {
            State::Ready { .. } => (IndexState::Connected, None),
            State::Refused { message } => (IndexState::Refused, Some(message.clone())),
            State::Closed => (IndexState::Closed, None),
            _ if !self.been_up => (IndexState::NotConnectedYet, self.last_error.clone()),
            State::Down { retry_at: Some(_) } => {
                (IndexState::Disconnected, self.last_error.clone())
            }
            _ => (IndexState::Connecting, None),
        };
        IndexStatus {
            address: self.index.clone(),
            state,
            observed: self.observed(),
            reason,
        }
    }

    /// One line for `status`.
    pub fn status_line(&self) -> String {
        super::render::index_status_text(&self.status())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn connects(out: &mut VecDeque<Action>) -> Vec<SocketAddr> {
        out.drain(..)
            .filter_map(|a| match a {
                Action::Connect { addr, .. } => Some(addr),
                _ => None,
            })
            .collect()
    }

    fn welcome(s: &mut IndexSession, now: Instant, out: &mut VecDeque<Action>) {
        s.handle_connected(now, ConnId(1), out);
        s.handle_response(
            now,
            Response {
                id: s.next_id - 1,
                body: ResponseBody::Welcome {
                    observed: addr("10.0.0.1:5"),
                    version: PROTOCOL_VERSION,
                    session: 1,
                },
            },
            out,
        );
    }

    /// The waits between attempts while the index stays away.
    fn waits(seed: u64, n: usize) -> Vec<Duration> {
        let mut s = IndexSession::new("127.0.0.1:9".into(), 1, seed, DEFAULT_REPLY_TIMEOUT);
        let mut out = VecDeque::new();
        let mut now = Instant::now();
        s.start(&mut out);
        out.clear();
        let mut waits = Vec::new();
        for _ in 0..n {
            s.handle_closed(
                now,
                &CloseReason::ConnectFailed(std::io::ErrorKind::ConnectionRefused),
                &mut out,
            );
            let at = s.poll_timeout().unwrap();
            waits.push(at - now);
            now = at;
            s.handle_timeout(now, &mut out);
            assert_eq!(connects(&mut out), vec![addr("127.0.0.1:9")]);
        }
        waits
    }

    #[test]
    fn backoff_doubles_with_full_jitter_within_bounds_and_is_repeatable() {
        let w = waits(7, 12);
        for (i, wait) in w.iter().enumerate() {
            let step = (BACKOFF_MIN * (1 << i)).min(BACKOFF_MAX);
            assert!(*wait <= step, "wait {i}: {wait:?} for step {step:?}");
        }
        // Full jitter: waits spread over the whole step, not only its upper half.
        assert!(w
            .iter()
            .enumerate()
            .any(|(i, wait)| { *wait < (BACKOFF_MIN * (1 << i)).min(BACKOFF_MAX) / 2 }));
        assert_eq!(w, waits(7, 12), "same seed, same waits");
        assert_ne!(w, waits(8, 12), "jitter differs between peers");
    }

    #[test]
    fn a_welcome_resets_the_backoff_and_the_person_is_told_once_each_way() {
        let mut s = IndexSession::new("127.0.0.1:9".into(), 1, 1, DEFAULT_REPLY_TIMEOUT);
        let mut out = VecDeque::new();
        let now = Instant::now();
        s.start(&mut out);
        for _ in 0..5 {
            s.handle_closed(now, &CloseReason::Eof, &mut out);
            s.handle_timeout(s.poll_timeout().unwrap(), &mut out);
        }
        let downs: Vec<bool> = std::iter::from_fn(|| s.poll_event())
            .map(|e| match e {
                SessionEvent::Down { first, .. } => first,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(downs, vec![true, false, false, false, false]);
        welcome(&mut s, now, &mut out);
        assert!(matches!(
            s.poll_event(),
            Some(SessionEvent::Up { again: true, .. })
        ));
        assert!(s.is_ready() && s.is_settled());
        s.handle_closed(now, &CloseReason::Eof, &mut out);
        assert!(s.poll_timeout().unwrap() - now <= BACKOFF_MIN);
    }

    #[test]
    fn several_indexes_are_tried_in_turn_and_the_next_one_gets_our_entries() {
        let mut s = IndexSession::new(
            "127.0.0.1:1, 127.0.0.1:2,127.0.0.1:3".into(),
            1,
            1,
            DEFAULT_REPLY_TIMEOUT,
        );
        let mut out = VecDeque::new();
        let now = Instant::now();
        s.start(&mut out);
        assert_eq!(connects(&mut out), vec![addr("127.0.0.1:1")]);
        welcome(&mut s, now, &mut out);
        assert!(matches!(s.poll_event(), Some(SessionEvent::Up { .. })));
        assert_eq!(s.index(), "127.0.0.1:1");
        // The node dies: the next one, soon (the backoff was reset by the welcome).
        s.handle_closed(now, &CloseReason::Eof, &mut out);
        let Some(SessionEvent::Down { why, .. }) = s.poll_event() else {
            panic!()
        };
        assert!(why.starts_with("127.0.0.1:1: "), "{why}");
        assert!(s.poll_timeout().unwrap() - now <= BACKOFF_MIN);
        s.handle_timeout(s.poll_timeout().unwrap(), &mut out);
        assert_eq!(connects(&mut out), vec![addr("127.0.0.1:2")]);
        // That one refuses: the third, then round to the first.
        let refused = CloseReason::ConnectFailed(std::io::ErrorKind::ConnectionRefused);
        s.handle_closed(now, &refused, &mut out);
        s.handle_timeout(s.poll_timeout().unwrap(), &mut out);
        assert_eq!(connects(&mut out), vec![addr("127.0.0.1:3")]);
        s.handle_closed(now, &refused, &mut out);
        s.handle_timeout(s.poll_timeout().unwrap(), &mut out);
        assert_eq!(connects(&mut out), vec![addr("127.0.0.1:1")]);
        // Welcomed there: Up, and the peer registers everything again.
        welcome(&mut s, now, &mut out);
        assert!(std::iter::from_fn(|| s.poll_event())
            .any(|e| matches!(e, SessionEvent::Up { again: true, .. })));
        assert_eq!(s.index(), "127.0.0.1:1");
    }

    /// The close the session asked for, if any.
    fn closes(out: &mut VecDeque<Action>) -> Vec<ConnId> {
        out.drain(..)
            .filter_map(|a| match a {
                Action::Close { conn, .. } => Some(conn),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn an_index_silent_past_the_reply_timeout_is_left_for_the_next_one() {
        let timeout = Duration::from_secs(5);
        let mut s = IndexSession::new("127.0.0.1:1,127.0.0.1:2".into(), 1, 1, timeout);
        let mut out = VecDeque::new();
        let now = Instant::now();
        s.start(&mut out);
        welcome(&mut s, now, &mut out);
        while s.poll_event().is_some() {}
        out.clear();
        // Only Reachability is unanswered: it waits on the index's connect-back, not a hang.
        assert_eq!(s.poll_timeout(), Some(now + PING_INTERVAL));
        // The ping goes unanswered (the index was SIGSTOPped).
        let ping_at = now + PING_INTERVAL;
        s.handle_timeout(ping_at, &mut out);
        out.clear();
        assert_eq!(s.poll_timeout(), Some(ping_at + timeout));
        s.handle_timeout(ping_at + timeout - Duration::from_millis(1), &mut out);
        assert!(out.is_empty() && s.is_ready());
        s.handle_timeout(ping_at + timeout, &mut out);
        assert_eq!(closes(&mut out), vec![ConnId(1)]);
        let Some(SessionEvent::Down { why, .. }) = s.poll_event() else {
            panic!()
        };
        assert_eq!(why, "127.0.0.1:1: no answer from the index in 5.0 s");
        // Its close, when the reactor reports it, changes nothing.
        s.handle_closed(ping_at + timeout, &CloseReason::Local, &mut out);
        assert!(s.poll_event().is_none());
        let retry = s.poll_timeout().unwrap();
        assert!(retry <= ping_at + timeout + BACKOFF_MIN);
        s.handle_timeout(retry, &mut out);
        assert_eq!(connects(&mut out), vec![addr("127.0.0.1:2")]);
        // A Hello that is never answered is a hang too.
        s.handle_connected(retry, ConnId(2), &mut out);
        out.clear();
        assert_eq!(s.poll_timeout(), Some(retry + timeout));
        s.handle_timeout(retry + timeout, &mut out);
        assert_eq!(closes(&mut out), vec![ConnId(2)]);
        assert!(matches!(s.poll_event(), Some(SessionEvent::Down { .. })));
    }

    #[test]
    fn every_frame_of_the_index_restarts_the_wait_for_the_next() {
        // Shorter than the ping interval, so that no ping is owed meanwhile.
        let timeout = PING_INTERVAL * 2 / 5;
        let mut s = IndexSession::new("127.0.0.1:9".into(), 1, 1, timeout);
        let mut out = VecDeque::new();
        let now = Instant::now();
        s.start(&mut out);
        welcome(&mut s, now, &mut out);
        out.clear();
        // A big share goes in two frames, answered one after the other, slowly.
        let entry = |i: u32| FileEntry {
            hash: FileHash::of(&i.to_le_bytes()),
            size: 1,
            name: format!("{i:0>600}"),
        };
        s.register(now, (0..1000).map(entry).collect(), &mut out);
        let sent = sent(&mut out);
        assert_eq!(sent.len(), 2);
        let registered = ResponseBody::Registered {
            added: 1,
            rejected: 0,
            total: 1,
        };
        let later = now + timeout - Duration::from_millis(1);
        assert!(later + timeout < now + PING_INTERVAL);
        let answer = |id| Response {
            id,
            body: registered.clone(),
        };
        s.handle_response(later, answer(sent[0].id), &mut out);
        assert_eq!(s.poll_timeout(), Some(later + timeout));
        s.handle_timeout(now + timeout, &mut out);
        assert!(s.is_ready(), "the index spoke within the timeout");
        s.handle_response(later + timeout / 2, answer(sent[1].id), &mut out);
        // Nothing owed: only the ping is due.
        assert_eq!(s.poll_timeout(), Some(now + PING_INTERVAL));
    }

    #[test]
    fn a_failed_connect_tries_the_next_address_of_the_name() {
        let mut s = IndexSession::new("index.example:9".into(), 1, 1, DEFAULT_REPLY_TIMEOUT);
        let mut out = VecDeque::new();
        let now = Instant::now();
        s.start(&mut out);
        assert!(matches!(out.pop_front(), Some(Action::Resolve(n)) if n == "index.example:9"));
        s.handle_resolved(
            now,
            Ok(vec![addr("[::1]:9"), addr("127.0.0.1:9")]),
            &mut out,
        );
        assert_eq!(connects(&mut out), vec![addr("[::1]:9")]);
        let refused = CloseReason::ConnectFailed(std::io::ErrorKind::ConnectionRefused);
        s.handle_closed(now, &refused, &mut out);
        assert_eq!(connects(&mut out), vec![addr("127.0.0.1:9")]);
        assert!(
            s.poll_event().is_none(),
            "not down while an address is left"
        );
        s.handle_closed(now, &refused, &mut out);
        assert!(matches!(s.poll_event(), Some(SessionEvent::Down { .. })));
        // The retry looks the name up again.
        s.handle_timeout(s.poll_timeout().unwrap(), &mut out);
        assert!(matches!(out.pop_front(), Some(Action::Resolve(_))));
    }

    #[test]
    fn a_version_mismatch_stays_down() {
        let mut s = IndexSession::new("127.0.0.1:9".into(), 1, 1, DEFAULT_REPLY_TIMEOUT);
        let mut out = VecDeque::new();
        let now = Instant::now();
        s.start(&mut out);
        s.handle_connected(now, ConnId(3), &mut out);
        out.clear();
        s.handle_response(
            now,
            Response {
                id: 1,
                body: ResponseBody::Error {
                    code: ErrorCode::VersionMismatch,
                    message: "speaks 9".into(),
                },
            },
            &mut out,
        );
        assert!(matches!(
            out.pop_front(),
            Some(Action::Close {
                conn: ConnId(3),
                ..
            })
        ));
        assert!(matches!(s.poll_event(), Some(SessionEvent::Error(e)) if e.contains("speaks 9")));
        assert!(matches!(s.poll_event(), Some(SessionEvent::Refused(_))));
        s.handle_closed(now, &CloseReason::Eof, &mut out);
        assert_eq!(s.poll_timeout(), None, "nothing is retried");
        assert!(out.is_empty() && s.poll_event().is_none());
        assert!(s.is_settled() && !s.is_ready());
        assert!(
            s.status_line().contains("not retrying"),
            "{}",
            s.status_line()
        );
    }

    #[test]
    fn pings_every_interval_and_a_lost_command_is_reported() {
        let mut s = IndexSession::new("127.0.0.1:9".into(), 1, 1, DEFAULT_REPLY_TIMEOUT);
        let mut out = VecDeque::new();
        let now = Instant::now();
        s.start(&mut out);
        welcome(&mut s, now, &mut out);
        out.clear();
        assert_eq!(s.poll_timeout(), Some(now + PING_INTERVAL));
        s.handle_timeout(now + PING_INTERVAL, &mut out);
        let ping = sent(&mut out);
        assert_eq!(ping.len(), 1);
        // The pong is owed first; once it came, the next ping.
        let pinged = now + PING_INTERVAL;
        let owed = pinged + DEFAULT_REPLY_TIMEOUT;
        assert_eq!(s.poll_timeout(), Some(owed.min(pinged + PING_INTERVAL)));
        let pong = Response {
            id: ping[0].id,
            body: ResponseBody::Pong,
        };
        s.handle_response(pinged, pong, &mut out);
        assert_eq!(s.poll_timeout(), Some(now + 2 * PING_INTERVAL));
        assert!(s.request(
            now,
            RequestBody::Search {
                query: "x".into(),
                limit: 0,
                filter: crate::wire::SearchFilter::default(),
                after: None,
            },
            Tag::Command,
            &mut out
        ));
        while s.poll_event().is_some() {}
        s.handle_closed(now, &CloseReason::Eof, &mut out);
        assert!(matches!(
            s.poll_event(),
            Some(SessionEvent::Down {
                command_lost: true,
                ..
            })
        ));
        assert!(!s.request(now, RequestBody::Ping, Tag::Ping, &mut out));
    }

    /// The requests sent, decoded.
    fn sent(out: &mut VecDeque<Action>) -> Vec<Request> {
        out.drain(..)
            .filter_map(|a| match a {
                Action::Send { frame, .. } => {
                    let (frames, _) =
                        crate::codec::decode_all(&mut crate::codec::Decoder::default(), &frame)
                            .unwrap();
                    Some(wire::decode(&frames[0]).unwrap())
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn a_register_refused_over_a_rate_limit_is_sent_again_after_the_wait() {
        let mut s = IndexSession::new("127.0.0.1:9".into(), 1, 1, DEFAULT_REPLY_TIMEOUT);
        let mut out = VecDeque::new();
        let now = Instant::now();
        s.start(&mut out);
        welcome(&mut s, now, &mut out);
        while s.poll_event().is_some() {}
        out.clear();
        let files = vec![FileEntry {
            hash: FileHash::of(b"x"),
            size: 1,
            name: "x".into(),
        }];
        s.register(now, files.clone(), &mut out);
        let first = sent(&mut out);
        assert_eq!(first.len(), 1);
        let refusal = ResponseBody::RateLimited {
            retry_after_ms: 1500,
            banned: false,
        };
        s.handle_response(
            now,
            Response {
                id: first[0].id,
                body: refusal,
            },
            &mut out,
        );
        assert!(matches!(
            s.poll_event(),
            Some(SessionEvent::Note(t)) if t.contains("rate limited while registering")
        ));
        // Nothing before the wait; the same files then.
        let due = now + Duration::from_millis(1500);
        assert_eq!(s.poll_timeout(), Some(due));
        s.handle_timeout(due - Duration::from_millis(1), &mut out);
        assert!(sent(&mut out).is_empty());
        s.handle_timeout(due, &mut out);
        let again = sent(&mut out);
        assert_eq!(again.len(), 1);
        assert_ne!(again[0].id, first[0].id);
        assert_eq!(again[0].body, RequestBody::Register { files });
        // Its answer is owed now (the next ping may come first).
        let owed = due + DEFAULT_REPLY_TIMEOUT;
        assert_eq!(s.poll_timeout(), Some(owed.min(now + PING_INTERVAL)));
    }

    #[test]
    fn a_ban_holds_every_reconnect_off_until_it_ends() {
        let mut s = IndexSession::new("127.0.0.1:9".into(), 1, 1, DEFAULT_REPLY_TIMEOUT);
        let mut out = VecDeque::new();
        let now = Instant::now();
        s.start(&mut out);
        s.handle_connected(now, ConnId(1), &mut out);
        // Refused at accept: request 0's answer, then the close.
        let ban = ResponseBody::RateLimited {
            retry_after_ms: 60_000,
            banned: true,
        };
        s.handle_response(now, Response { id: 0, body: ban }, &mut out);
        assert!(matches!(
            s.poll_event(),
            Some(SessionEvent::Note(t)) if t.contains("banned for 60.0 s")
        ));
        s.handle_closed(now, &CloseReason::Eof, &mut out);
        assert_eq!(s.poll_timeout(), Some(now + Duration::from_secs(60)));
        // Only that once: the next failure backs off as usual.
        s.handle_timeout(now + Duration::from_secs(60), &mut out);
        s.handle_closed(now + Duration::from_secs(60), &CloseReason::Eof, &mut out);
        assert!(s.poll_timeout().unwrap() <= now + Duration::from_secs(60) + BACKOFF_MIN * 4);
    }
}
