//! Firewalled holders at the index (issue 15 part 2): the connect-back that tests whether a
//! peer's file server can be reached, and the relay of push requests.
//!
//! # Reachability
//! A session that asks [`RequestBody::Reachability`](crate::wire::RequestBody::Reachability)
//! is probed: indexd connects (non-blocking, on its own reactor) to the IP it sees on the
//! session with the port the peer announced, sends a
//! [`TransferRequest::Probe`](crate::wire::TransferRequest::Probe) with a random nonce, and
//! counts the peer reachable only if the answer is
//! [`TransferResponse::Probed`](crate::wire::TransferResponse::Probed) with that nonce: a
//! p2pshare file server, not merely an open port. A peer announcing port 0 (`--listen none`)
//! is unreachable at once, without a probe. Probes are bounded: at most
//! [`PROBES_IN_FLIGHT_MAX`] at once and [`PROBES_IN_FLIGHT_PER_ADDRESS`] of one address
//! (IPv4, IPv6 /64), started at most [`PROBES_PER_SECOND`], each given [`PROBE_TIMEOUT`] in
//! all; sessions wait in a queue of at most [`PROBE_QUEUE_MAX`] (beyond it the answer is
//! "unknown": no `Reachability` answer, and the peer is not flagged but takes pushes, at
//! every node of a cluster too; logged at most once per [`NOT_PROBED_LOG_EVERY`]). The queue is fair between addresses: it holds one line per
//! address and the next probe is taken from each in turn, so an address whose many sessions
//! announce ports that never answer delays another's probe by at most a turn, not by its
//! whole line. How often an address may ask is the limiter's business (`RateLimits::
//! reachability_address_per_s`).
//! Unreachable holders are listed in every lookup answer's `firewalled`. In a cluster, the
//! outcome is also published on the session's subject (see [`Pushes::take_known`]), so other
//! nodes flag it too and know where to relay pushes to it.
//!
//! # Push relay
//! A session that asked `Reachability` also takes pushes. A `Push { hash, holder, nonce }` is
//! relayed to one such session whose address (IP seen, port announced) is `holder`, as a
//! notice `PushRequest { hash, to, nonce }` where `to` is always the *requester's* own
//! address as the index sees it: the request names no target, so the index cannot be used to
//! make holders connect anywhere else. Refused: a requester that announced port 0 or that the
//! probe found unreachable (the holder could not connect to it either), a holder not
//! connected to this node (in a cluster: on no node; one on another node is relayed there,
//! see `server/relay.rs`), and pushes over the budgets (answered `RateLimited`): per session and per address
//! (IPv4, IPv6 /64), checked by the limiter before anything here (`RateLimits::push_per_s`,
//! `push_address_per_s`; their refusals are strikes toward a ban, like every rate limit's),
//! and [`PUSHES_PER_SECOND`] for all sessions together. The per-address budget is well under
//! the index-wide one, so a few hosts cannot spend it all.
//!
//! Sans-IO: [`Pushes`] takes sessions, requests and probe outcomes with `now` and returns
//! frames; the `IndexServer` methods at the end connect probes and deliver notices on the
//! reactor.

use super::{IndexServer, Session, SessionState};
use crate::index::cluster::relay::{RELAYS_IN_FLIGHT_MAX, RELAYS_IN_FLIGHT_PER_KEY, RELAY_TIMEOUT};
use crate::index::limits::{Address, Bucket, Counted, SessionBuckets};
use crate::index::store::PeerId;
use crate::logging::{self, Throttled};
use crate::reactor::{CloseReason, ConnId, Ctx, Verdict};
use crate::wire::{
    self, ErrorCode, FileHash, Response, ResponseBody, TransferRequest, TransferResponse,
    PROTOCOL_VERSION,
};
use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

/// A probe (connect, probe frame, answer) that has not ended in this long counts as
/// unreachable.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most probes in flight at once.
pub const PROBES_IN_FLIGHT_MAX: usize = 64;
/// Most probes started per second (and the burst).
pub const PROBES_PER_SECOND: u64 = 100;
/// Most probes in flight at once of one address (IPv4, IPv6 /64).
pub const PROBES_IN_FLIGHT_PER_ADDRESS: usize = 8;
/// Most sessions waiting for a probe; later ones get no answer (reachability unknown).
pub const PROBE_QUEUE_MAX: usize = 10_000;
/// At most one log line this often about sessions not probed for a full queue.
pub const NOT_PROBED_LOG_EVERY: Duration = Duration::from_secs(10);
/// Pushes per second of all sessions together (and the burst).
pub const PUSHES_PER_SECOND: u64 = 200;

/// The reactor timer id of the probes' deadlines and rate waits.
pub(super) const PUSH_TIMER: u64 = 0x7075_7368;

/// A probe connection's state, in its reactor slot.
#[derive(Debug, Clone, Copy)]
pub(super) struct Probe {
    /// The session probed.
    of: u64,
    nonce: u64,
    /// The right answer came.
    reached: bool,
}

/// A ready local session, as the push machinery sees it.
#[derive(Debug)]
struct Local {
    conn: Option<ConnId>,
    addr: SocketAddr,
    /// The probe's outcome (`None`: not probed, or not over).
    reachable: Option<bool>,
    /// It asked `Reachability` (so it takes pushes); the id to answer, while not answered.
    asked: bool,
    awaiting: Option<u32>,
    /// Its index peer (under a server), for the cluster's record of its reachability.
    peer: Option<PeerId>,
}

/// Where an accepted push goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PushRoute {
    /// To a holder's session here (its notice queued).
    Delivered,
    /// No holder at that address takes pushes here: to another node's, if one does.
    Elsewhere {
        /// The requester's address, as this node sees it: where the holder is to connect.
        to: SocketAddr,
    },
}

/// A push relayed to another node, waiting for its answer.
#[derive(Debug, Clone)]
struct Relaying {
    session: u64,
    /// The request to answer.
    id: u32,
    /// The holder's node.
    node: String,
    /// The requester's address.
    from: Address,
    /// When it is given up.
    until: Instant,
}

/// How long a relayed push waits for its answer before the reactor gives it up: the NATS
/// thread's own wait ([`RELAY_TIMEOUT`]) and a margin, so the reactor answers even when that
/// thread is stalled.
pub const RELAY_DEADLINE: Duration = Duration::from_millis(RELAY_TIMEOUT.as_millis() as u64 + 1000);

/// Why a push was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PushRefusal {
    /// Over a budget: try again after this long.
    RateLimited(Duration),
    /// Refused for good; the sentence says why.
    Error(ErrorCode, String),
}

/// The sans-IO state of reachability and pushes; see the module docs.
pub struct Pushes {
    locals: HashMap<u64, Local>,
    /// Sessions that take pushes, by their address (IP seen, port announced).
    by_addr: HashMap<SocketAddr, Vec<u64>>,
    /// Sessions found unreachable, by address.
    unreachable: HashMap<SocketAddr, u32>,
    /// Sessions waiting for a probe, one line per address.
    queues: HashMap<Address, VecDeque<u64>>,
    /// The addresses with a line, in turn.
    turns: VecDeque<Address>,
    /// Sessions in all lines (those that left included, until their turn).
    queued: usize,
    in_flight: usize,
    /// Probes in flight by address (no entry: none).
    in_flight_at: HashMap<Address, usize>,
    not_probed_log: Throttled,
    /// Probe connections and when each gives up.
    probing: HashMap<ConnId, Instant>,
    probe_rate: Bucket,
    all_pushes: Bucket,
    rng: fastrand::Rng,
    /// Frames for other sessions than the one whose request is handled.
    deliveries: Vec<(u64, Vec<u8>)>,
    /// Pushes relayed and refused, for logs and tests.
    pub relayed: u64,
    /// Pushes refused over a budget.
    pub rate_limited: u64,
    /// Probes that ended, by what they found: reachable, not reachable.
    probes_ended: (u64, u64),
    /// Sessions that take pushes (the lengths of `by_addr`'s lists, summed).
    taking: usize,
    /// Peers whose reachability became known, for the cluster's stream (see
    /// [`Pushes::take_known`]).
    known: Vec<(PeerId, bool)>,
    /// Pushes relayed to other nodes, by their number, waiting for an answer.
    relays: HashMap<u64, Relaying>,
    next_relay: u64,
    /// A relay began since the reactor last set the timer that gives relays up.
    relay_timer: bool,
    /// What the cluster's relay counts.
    pub relay_counts: RelayCounts,
}

/// What the push relay between nodes counts, for the metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayCounts {
    /// Pushes sent to the holder's node.
    pub out: u64,
    /// Pushes sent to the holder's node (or meant to be) and refused: by it, not answered in
    /// time, or over [`RELAYS_IN_FLIGHT_MAX`].
    pub out_refused: u64,
    /// Pushes from other nodes delivered to a holder's session here.
    pub in_delivered: u64,
    /// Pushes from other nodes refused here.
    pub in_refused: u64,
}

/// What [`Pushes`] counts, for the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PushCounts {
    /// Pushes relayed to a holder's session.
    pub relayed: u64,
    /// Pushes refused over a budget (the session's, the address's or the index's).
    pub rate_limited: u64,
    /// Probes that ended with the peer's file server answering.
    pub probes_reachable: u64,
    /// Probes that ended without an answer (firewalled, or nothing listening).
    pub probes_unreachable: u64,
    /// Sessions that take pushes (asked `Reachability`).
    pub taking: usize,
    /// Sessions waiting in the probe lines.
    pub waiting: usize,
    /// Probes in flight.
    pub in_flight: usize,
    /// The push relay between cluster nodes.
    pub relay: RelayCounts,
}

impl Pushes {
    /// Empty.
    pub fn new(now: Instant) -> Pushes {
        Pushes {
            locals: HashMap::new(),
            by_addr: HashMap::new(),
            unreachable: HashMap::new(),
            queues: HashMap::new(),
            turns: VecDeque::new(),
            queued: 0,
            in_flight: 0,
            in_flight_at: HashMap::new(),
            not_probed_log: Throttled::new(NOT_PROBED_LOG_EVERY),
            probing: HashMap::new(),
            probe_rate: Bucket::new(PROBES_PER_SECOND, PROBES_PER_SECOND, now),
            all_pushes: Bucket::new(PUSHES_PER_SECOND, PUSHES_PER_SECOND, now),
            rng: fastrand::Rng::new(),
            deliveries: Vec::new(),
            relayed: 0,
            rate_limited: 0,
            probes_ended: (0, 0),
            taking: 0,
            known: Vec::new(),
            relays: HashMap::new(),
            next_relay: 1,
            relay_timer: false,
            relay_counts: RelayCounts::default(),
        }
    }

    /// The counts the metrics show.
    pub fn counts(&self) -> PushCounts {
        PushCounts {
            relayed: self.relayed,
            rate_limited: self.rate_limited,
            probes_reachable: self.probes_ended.0,
            probes_unreachable: self.probes_ended.1,
            taking: self.taking,
            waiting: self.queued,
            in_flight: self.in_flight,
            relay: self.relay_counts,
        }
    }

    /// Session `session` (on `conn`, under a reactor) said hello from `addr`.
    pub fn handle_joined(&mut self, session: u64, conn: Option<ConnId>, addr: SocketAddr) {
        self.locals.insert(
            session,
            Local {
                conn,
                addr,
                reachable: None,
                asked: false,
                awaiting: None,
                peer: None,
            },
        );
    }

    /// Session `session` ended.
    pub fn handle_left(&mut self, session: u64) {
        let Some(local) = self.locals.remove(&session) else {
            return;
        };
        if local.asked {
            self.taking -= 1;
            if let Some(v) = self.by_addr.get_mut(&local.addr) {
                v.retain(|s| *s != session);
                if v.is_empty() {
                    self.by_addr.remove(&local.addr);
                }
            }
        }
        if local.reachable == Some(false) {
            self.forget_unreachable(local.addr);
        }
        // A queued probe of it is skipped when its turn comes.
    }

    fn forget_unreachable(&mut self, addr: SocketAddr) {
        if let Some(n) = self.unreachable.get_mut(&addr) {
            *n -= 1;
            if *n == 0 {
                self.unreachable.remove(&addr);
            }
        }
    }

    /// `Reachability` (request `id`) from `session`: the answer now if it is known (port 0,
    /// or probed already), else `None` (it comes from [`Pushes::handle_probe_done`]).
    pub fn handle_ask(&mut self, session: u64, id: u32, now: Instant) -> Option<bool> {
        let local = self.locals.get_mut(&session)?;
        if !local.asked {
            local.asked = true;
            self.taking += 1;
            self.by_addr.entry(local.addr).or_default().push(session);
        }
        if local.addr.port() == 0 && local.reachable.is_none() {
            local.reachable = Some(false);
            *self.unreachable.entry(local.addr).or_insert(0) += 1;
            self.known.extend(local.peer.map(|p| (p, false)));
        }
        if let Some(known) = local.reachable {
            return Some(known);
        }
        if local.awaiting.is_none() {
            if self.queued >= PROBE_QUEUE_MAX {
                // It takes pushes here all the same, unflagged: so it does at every node of
                // a cluster (its probe at a later ask, if any, says what it really is).
                self.known.extend(local.peer.map(|p| (p, true)));
                if let Some(n) = self.not_probed_log.admit(now) {
                    log::warn!(
                        "{}: not probed: {PROBE_QUEUE_MAX} sessions wait for a probe already{}",
                        local.addr,
                        logging::left_out(n, self.not_probed_log.every())
                    );
                }
                return None;
            }
            let address = Address::of(local.addr.ip());
            let line = self.queues.entry(address).or_default();
            if line.is_empty() {
                self.turns.push_back(address);
            }
            line.push_back(session);
            self.queued += 1;
        }
        local.awaiting = Some(id);
        None
    }

    /// The next probe to start now, if the bounds allow: (session, address, nonce). Each
    /// address's line in turn; one at its in-flight bound waits for its next turn.
    pub fn poll_probe(&mut self, now: Instant) -> Option<(u64, SocketAddr, u64)> {
        if self.in_flight >= PROBES_IN_FLIGHT_MAX || self.probe_rate.wait(now).is_some() {
            return None;
        }
        for _ in 0..self.turns.len() {
            let address = self.turns.pop_front()?;
            if self.in_flight_at.get(&address).copied().unwrap_or(0) >= PROBES_IN_FLIGHT_PER_ADDRESS
            {
                self.turns.push_back(address);
                continue;
            }
            let line = self.queues.get_mut(&address).expect("a turn has a line");
            let mut next = None;
            while let Some(session) = line.pop_front() {
                self.queued -= 1;
                // A session that left is skipped.
                if let Some(local) = self.locals.get(&session) {
                    next = Some((session, local.addr));
                    break;
                }
            }
            if line.is_empty() {
                self.queues.remove(&address);
            } else {
                self.turns.push_back(address);
            }
            if let Some((session, addr)) = next {
                self.probe_rate.charge(1, now);
                self.in_flight += 1;
                *self.in_flight_at.entry(address).or_insert(0) += 1;
                return Some((session, addr, self.rng.u64(..)));
            }
        }
        None
    }

    /// When a probe start held back by the rate may go, if any waits.
    fn probe_wait(&mut self, now: Instant) -> Option<Duration> {
        if self.queued == 0 || self.in_flight >= PROBES_IN_FLIGHT_MAX {
            return None;
        }
        self.probe_rate.wait(now)
    }

    /// The probe of `session` at `probed` ended: the `Reachability` answer to send it (its
    /// connection, when known, and the frame), if it asked and is still there.
    pub fn handle_probe_done(
        &mut self,
        session: u64,
        probed: SocketAddr,
        reachable: bool,
    ) -> Option<(u64, Vec<u8>)> {
        self.in_flight = self.in_flight.saturating_sub(1);
        if reachable {
            self.probes_ended.0 += 1;
        } else {
            self.probes_ended.1 += 1;
        }
        let address = Address::of(probed.ip());
        if let Some(n) = self.in_flight_at.get_mut(&address) {
            *n -= 1;
            if *n == 0 {
                self.in_flight_at.remove(&address);
            }
        }
        let local = self.locals.get_mut(&session)?;
        if local.reachable.is_none() {
            local.reachable = Some(reachable);
            if !reachable {
                *self.unreachable.entry(local.addr).or_insert(0) += 1;
            }
            self.known.extend(local.peer.map(|p| (p, reachable)));
        }
        log::info!(
            "{}: {}",
            local.addr,
            if reachable {
                "reachable: its file server answered the probe"
            } else {
                "not reachable: firewalled; downloads from it go through pushes"
            }
        );
        let id = local.awaiting.take()?;
        Some((
            session,
            answer_frame(id, ResponseBody::Reachability { reachable }),
        ))
    }

    /// Makes the probe queue look full (or empty again), for tests of what happens then.
    #[cfg(test)]
    pub(super) fn set_probe_queue_full(&mut self, full: bool) {
        self.queued = if full { PROBE_QUEUE_MAX } else { 0 };
    }

    /// Peers whose reachability became known since the last call (a session that asked
    /// `Reachability` and whose probe ended, or that serves no port), for the cluster.
    pub fn take_known(&mut self) -> Vec<(PeerId, bool)> {
        std::mem::take(&mut self.known)
    }

    /// The addresses among `holders` found unreachable (or serving no port), here or
    /// (`elsewhere`) at another node of the cluster.
    pub fn firewalled<'a>(
        &self,
        holders: impl Iterator<Item = &'a SocketAddr>,
        elsewhere: impl Fn(&SocketAddr) -> bool,
    ) -> Vec<SocketAddr> {
        let mut out: Vec<SocketAddr> = holders
            .filter(|a| a.port() == 0 || self.unreachable.contains_key(a) || elsewhere(a))
            .copied()
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether `session` asked `Reachability` (so it takes pushes).
    pub fn takes_pushes(&self, session: u64) -> bool {
        self.locals.get(&session).is_some_and(|l| l.asked)
    }

    /// `Push` from `session`: relayed (the notice queued for the holder's session, see
    /// [`Pushes::take_deliveries`]) or refused.
    pub fn handle_push(
        &mut self,
        session: u64,
        hash: FileHash,
        holder: SocketAddr,
        nonce: u64,
        clustered: bool,
        now: Instant,
    ) -> Result<PushRoute, PushRefusal> {
        let Some(me) = self.locals.get(&session) else {
            return Err(PushRefusal::Error(
                ErrorCode::NotReady,
                "push: say hello first".into(),
            ));
        };
        let to = me.addr;
        if to.port() == 0 {
            return Err(PushRefusal::Error(
                ErrorCode::Invalid,
                "push: you serve no port (--listen none), so a holder has nowhere to connect \
                 to"
                .into(),
            ));
        }
        if me.reachable == Some(false) {
            return Err(PushRefusal::Error(
                ErrorCode::Invalid,
                format!(
                    "push: your file server {to} is not reachable from the index, so the \
                     holder could not connect to it either"
                ),
            ));
        }
        let Some(targets) = self.by_addr.get_mut(&holder).filter(|v| !v.is_empty()) else {
            if clustered {
                return Ok(PushRoute::Elsewhere { to });
            }
            return Err(PushRefusal::Error(
                ErrorCode::NotFound,
                format!("push: no peer at {holder} takes pushes"),
            ));
        };
        // Several sessions at one address (behind one NAT, all `--listen none`): each push
        // goes to the next, so they share the work.
        targets.rotate_left(1);
        let target = *targets.last().expect("not empty");
        if target == session {
            return Err(PushRefusal::Error(
                ErrorCode::Invalid,
                "push: that holder is you".into(),
            ));
        }
        self.deliver(target, hash, holder, to, nonce, now)?;
        Ok(PushRoute::Delivered)
    }

    /// Queues the notice of a push for `target` (at `holder`), within the index-wide budget.
    fn deliver(
        &mut self,
        target: u64,
        hash: FileHash,
        holder: SocketAddr,
        to: SocketAddr,
        nonce: u64,
        now: Instant,
    ) -> Result<(), PushRefusal> {
        if let Some(wait) = self.all_pushes.wait(now) {
            self.rate_limited += 1;
            return Err(PushRefusal::RateLimited(wait));
        }
        self.all_pushes.charge(1, now);
        let notice = ResponseBody::PushRequest { hash, to, nonce };
        self.deliveries.push((target, answer_frame(0, notice)));
        self.relayed += 1;
        log::debug!("push of {hash} relayed to {holder}: connect to {to}");
        Ok(())
    }

    /// A push another node relays to a holder at `holder` here, for a requester at `to` (as
    /// that node saw it): delivered as a local push is, under the same index-wide budget (the
    /// requester's address's budget is the server's, before this).
    pub fn handle_relayed_in(
        &mut self,
        hash: FileHash,
        holder: SocketAddr,
        to: SocketAddr,
        nonce: u64,
        now: Instant,
    ) -> Result<(), PushRefusal> {
        if to.port() == 0 {
            return Err(PushRefusal::Error(
                ErrorCode::Invalid,
                "push: the requester serves no port".into(),
            ));
        }
        let Some(targets) = self.by_addr.get_mut(&holder).filter(|v| !v.is_empty()) else {
            return Err(PushRefusal::Error(
                ErrorCode::NotFound,
                format!("push: no peer at {holder} takes pushes at its index node (it left)"),
            ));
        };
        targets.rotate_left(1);
        let target = *targets.last().expect("not empty");
        self.deliver(target, hash, holder, to, nonce, now)
    }

    /// Local `session`'s push request `id`, from a requester at `from`, is relayed to node
    /// `node`: its number, or `None` if [`RELAYS_IN_FLIGHT_MAX`] are in flight already, or
    /// [`RELAYS_IN_FLIGHT_PER_KEY`] to that node or from that address. Answered by
    /// [`Pushes::handle_relay_answer`], or given up at [`RELAY_DEADLINE`].
    pub fn begin_relay(
        &mut self,
        session: u64,
        id: u32,
        (node, from): (&str, SocketAddr),
        now: Instant,
    ) -> Option<u64> {
        let from = Address::of(from.ip());
        let (to_node, by_address) = self.relays.values().fold((0, 0), |(n, a), r| {
            (
                n + usize::from(r.node == node),
                a + usize::from(r.from == from),
            )
        });
        if self.relays.len() >= RELAYS_IN_FLIGHT_MAX
            || to_node >= RELAYS_IN_FLIGHT_PER_KEY
            || by_address >= RELAYS_IN_FLIGHT_PER_KEY
        {
            return None;
        }
        let relay = self.next_relay;
        self.next_relay += 1;
        self.relays.insert(
            relay,
            Relaying {
                session,
                id,
                node: node.to_string(),
                from,
                until: now + RELAY_DEADLINE,
            },
        );
        self.relay_timer = true;
        Some(relay)
    }

    /// Relay `relay` is over (answered, or could not be sent): the session and request id to
    /// answer, if it is still in flight.
    pub fn handle_relay_answer(&mut self, relay: u64) -> Option<(u64, u32)> {
        self.relays.remove(&relay).map(|r| (r.session, r.id))
    }

    /// Relays past their deadline at `now`, given up: the sessions and request ids to answer.
    pub fn expired_relays(&mut self, now: Instant) -> Vec<(u64, u32)> {
        let mut out = Vec::new();
        self.relays.retain(|_, r| {
            let live = r.until > now;
            if !live {
                out.push((r.session, r.id));
            }
            live
        });
        out
    }

    /// When the earliest relay still in flight is given up, if any is.
    pub fn next_relay_deadline(&self) -> Option<Instant> {
        self.relays.values().map(|r| r.until).min()
    }

    /// Frames for other sessions than the requester, with the session each goes to; a
    /// request's answer that came later (a relayed push's) goes this way too.
    pub fn take_deliveries(&mut self) -> Vec<(u64, Vec<u8>)> {
        std::mem::take(&mut self.deliveries)
    }

    /// Queues `frame` for local `session` (delivered with the notices).
    pub(super) fn send_to(&mut self, session: u64, frame: Vec<u8>) {
        self.deliveries.push((session, frame));
    }

    fn conn_of(&self, session: u64) -> Option<ConnId> {
        self.locals.get(&session).and_then(|l| l.conn)
    }
}

fn answer_frame(id: u32, body: ResponseBody) -> Vec<u8> {
    let mut frame = Vec::new();
    wire::encode_frame(&Response { id, body }, &mut frame);
    frame
}

/// The server's side: requests, probe connections on the reactor, deliveries.
impl IndexServer {
    /// What the push machinery counts, for the metrics.
    pub(crate) fn push_counts(&self) -> PushCounts {
        self.pushes.counts()
    }

    /// A session said hello (its id assigned, its index peer `peer`): known to the push
    /// machinery.
    pub(super) fn push_joined(&mut self, session: u64, peer: PeerId, addr: SocketAddr) {
        let conn = self.current_conn;
        self.pushes.handle_joined(session, conn, addr);
        if let Some(local) = self.pushes.locals.get_mut(&session) {
            local.peer = Some(peer);
        }
    }

    /// The addresses among `holders` that lookups list in `firewalled`: unreachable here or
    /// at another node of the cluster.
    pub(super) fn firewalled<'a>(
        &self,
        holders: impl Iterator<Item = &'a SocketAddr>,
    ) -> Vec<SocketAddr> {
        match self.cluster.as_deref() {
            Some(link) => {
                let remote = link.replica().pushes();
                self.pushes
                    .firewalled(holders, |a| remote.is_unreachable(a))
            }
            None => self.pushes.firewalled(holders, |_| false),
        }
    }

    /// Hands the reachability found since the last call to the cluster's stream.
    pub(super) fn publish_reachability(&mut self) {
        let known = self.pushes.take_known();
        if let Some(link) = self.cluster.as_mut() {
            for (peer, reachable) in known {
                link.handle_reachability(peer, reachable);
            }
        }
    }

    /// Answers `Reachability` now if it is known; else the probe's end answers it. Over
    /// the session's or the address's ask rate: `RateLimited`.
    pub(super) fn handle_reachability(
        &mut self,
        out: &mut Vec<u8>,
        session: &mut Session,
        id: u32,
        now: Instant,
    ) -> Verdict {
        let ip = session.remote.ip();
        if let Err(refusal) =
            self.limiter
                .admit_counted(&mut session.buckets, ip, Counted::Reachability, now)
        {
            return self.refuse(out, session, id, refusal);
        }
        if let Some(reachable) = self.pushes.handle_ask(session.id, id, now) {
            wire::encode_frame(
                &Response {
                    id,
                    body: ResponseBody::Reachability { reachable },
                },
                out,
            );
        }
        self.publish_reachability();
        Verdict::Continue
    }

    /// Relays a push, or answers why not.
    pub(super) fn handle_push(
        &mut self,
        out: &mut Vec<u8>,
        session: &mut Session,
        id: u32,
        (hash, holder, nonce): (FileHash, SocketAddr, u64),
        now: Instant,
    ) -> Verdict {
        let ip = session.remote.ip();
        if let Err(refusal) =
            self.limiter
                .admit_counted(&mut session.buckets, ip, Counted::Push, now)
        {
            self.pushes.rate_limited += 1;
            return self.refuse(out, session, id, refusal);
        }
        let clustered = self.cluster.is_some();
        let body = match self
            .pushes
            .handle_push(session.id, hash, holder, nonce, clustered, now)
        {
            Ok(PushRoute::Delivered) => ResponseBody::PushRelayed,
            Ok(PushRoute::Elsewhere { to }) => {
                return self.relay_push(out, session.id, id, (hash, holder, to, nonce), now);
            }
            Err(PushRefusal::RateLimited(wait)) => ResponseBody::RateLimited {
                retry_after_ms: wait.as_millis().max(1) as u64,
                banned: false,
            },
            Err(PushRefusal::Error(code, message)) => {
                self.error(out, id, code, message);
                return Verdict::Continue;
            }
        };
        wire::encode_frame(&Response { id, body }, out);
        Verdict::Continue
    }

    /// Delivers the notices for other sessions and starts the probes the bounds allow (after
    /// every frame: two emptiness checks when there is nothing to do).
    pub(super) fn push_turn(&mut self, ctx: &mut Ctx<Session>) {
        if std::mem::take(&mut self.pushes.relay_timer) {
            ctx.set_timer(RELAY_DEADLINE, PUSH_TIMER);
        }
        if !self.pushes.deliveries.is_empty() {
            for (session, frame) in self.pushes.take_deliveries() {
                if let Some(conn) = self.pushes.conn_of(session) {
                    ctx.send(conn, |out| out.extend_from_slice(&frame));
                }
            }
        }
        if self.pushes.queued == 0 {
            return;
        }
        let now = ctx.now();
        let mut started = false;
        while let Some((of, addr, nonce)) = self.pushes.poll_probe(now) {
            let probe = Session {
                remote: addr,
                state: SessionState::Probe(Probe {
                    of,
                    nonce,
                    reached: false,
                }),
                buckets: SessionBuckets::unlimited(now),
                id: 0,
            };
            match ctx.connect(addr, probe) {
                Ok(conn) => {
                    self.pushes.probing.insert(conn, now + PROBE_TIMEOUT);
                    started = true;
                }
                Err(e) => {
                    log::debug!("probe of {addr}: {e}");
                    self.probe_over(ctx, of, addr, false);
                }
            }
        }
        if started {
            ctx.set_timer(PROBE_TIMEOUT, PUSH_TIMER);
        }
        if let Some(wait) = self.pushes.probe_wait(now) {
            ctx.set_timer(wait, PUSH_TIMER);
        }
    }

    /// The push timer fired: probes past [`PROBE_TIMEOUT`] end (unreachable), and queued
    /// ones start if the rate allows now.
    pub(super) fn push_timer(&mut self, ctx: &mut Ctx<Session>) {
        let now = ctx.now();
        let expired: Vec<ConnId> = self
            .pushes
            .probing
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(c, _)| *c)
            .collect();
        for conn in expired {
            self.pushes.probing.remove(&conn);
            ctx.close(conn, CloseReason::IdleTimeout);
        }
        self.relays_expired(ctx);
        self.push_turn(ctx);
    }

    fn probe_over(&mut self, ctx: &mut Ctx<Session>, of: u64, probed: SocketAddr, reached: bool) {
        if let Some((session, frame)) = self.pushes.handle_probe_done(of, probed, reached) {
            if let Some(conn) = self.pushes.conn_of(session) {
                ctx.send(conn, |out| out.extend_from_slice(&frame));
            }
        }
        self.publish_reachability();
    }

    /// A probe's connect completed: send the probe.
    pub(super) fn probe_connected(&mut self, ctx: &mut Ctx<Session>, conn: ConnId, s: &Session) {
        if let SessionState::Probe(p) = s.state {
            let probe = TransferRequest::Probe {
                version: PROTOCOL_VERSION,
                nonce: p.nonce,
            };
            ctx.send(conn, wire::framed(&probe));
        }
    }

    /// The probed file server answered: reachable if it echoed the nonce. Either way the
    /// probe is over.
    pub(super) fn probe_frame(&mut self, s: &mut Session, payload: &[u8]) -> Verdict {
        if let SessionState::Probe(p) = &mut s.state {
            p.reached = matches!(
                wire::decode::<TransferResponse>(payload),
                Ok(TransferResponse::Probed { nonce }) if nonce == p.nonce
            );
        }
        Verdict::Close(CloseReason::Local)
    }

    /// A probe connection closed (answered, refused, timed out).
    pub(super) fn probe_closed(&mut self, ctx: &mut Ctx<Session>, conn: ConnId, s: Session) {
        self.pushes.probing.remove(&conn);
        if let SessionState::Probe(p) = s.state {
            self.probe_over(ctx, p.of, s.remote, p.reached);
        }
        self.push_turn(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    fn notice(frame: &[u8]) -> Response {
        let (frames, _) =
            crate::codec::decode_all(&mut crate::codec::Decoder::default(), frame).unwrap();
        wire::decode(&frames[0]).unwrap()
    }

    #[test]
    fn relays_in_flight_are_bounded_per_node_and_per_requester_address_and_in_all() {
        let now = Instant::now();
        let mut p = Pushes::new(now);
        let per = RELAYS_IN_FLIGHT_PER_KEY;
        let from = |host: usize| addr(&format!("10.0.{}.{}:7000", host / 200, host % 200 + 1));
        // One slow node takes a quarter of the room; the next push to it is refused.
        let first: Vec<u64> = (0..per)
            .map(|i| p.begin_relay(1, i as u32, ("b-1", from(i)), now).unwrap())
            .collect();
        assert_eq!(p.begin_relay(1, 99, ("b-1", from(99)), now), None);
        // One address takes a quarter too, whatever the nodes.
        for i in 0..per {
            let node = format!("c-{i}");
            assert!(p
                .begin_relay(2, i as u32, (&node, from(500)), now)
                .is_some());
        }
        assert_eq!(p.begin_relay(2, 99, ("d-1", from(500)), now), None);
        // Other nodes and addresses go on, up to the whole room.
        let mut n = 2 * per;
        while n < RELAYS_IN_FLIGHT_MAX {
            let node = format!("e-{n}");
            assert!(p
                .begin_relay(3, n as u32, (&node, from(1000 + n)), now)
                .is_some());
            n += 1;
        }
        assert_eq!(p.begin_relay(3, 0, ("f-1", from(2000)), now), None);
        // An answered relay frees its node's room.
        assert_eq!(p.handle_relay_answer(first[0]), Some((1, 0)));
        assert!(p.begin_relay(1, 100, ("b-1", from(3000)), now).is_some());
    }

    #[test]
    fn a_push_goes_to_the_holder_with_the_requesters_own_address() {
        let now = Instant::now();
        let mut p = Pushes::new(now);
        p.handle_joined(1, None, addr("10.0.0.1:0"));
        p.handle_joined(2, None, addr("10.0.0.2:7000"));
        // The holder serves no port: unreachable at once, no probe.
        assert_eq!(p.handle_ask(1, 5, now), Some(false));
        assert_eq!(p.poll_probe(now), None);
        let h = FileHash::of(b"x");
        // The requester is not probed yet: a push is let through.
        assert_eq!(
            p.handle_push(2, h, addr("10.0.0.1:0"), 42, false, now),
            Ok(PushRoute::Delivered)
        );
        let d = p.take_deliveries();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].0, 1);
        let n = notice(&d[0].1);
        assert_eq!(n.id, 0);
        assert_eq!(
            n.body,
            ResponseBody::PushRequest {
                hash: h,
                to: addr("10.0.0.2:7000"),
                nonce: 42
            }
        );
        // Lookups flag the holder.
        let listed = [addr("10.0.0.1:0"), addr("10.0.0.2:7000")];
        assert_eq!(
            p.firewalled(listed.iter(), |_| false),
            vec![addr("10.0.0.1:0")]
        );
    }

    #[test]
    fn pushes_are_refused_to_unknown_holders_and_from_firewalled_requesters() {
        let now = Instant::now();
        let mut p = Pushes::new(now);
        p.handle_joined(1, None, addr("10.0.0.1:0"));
        p.handle_ask(1, 1, now);
        p.handle_joined(2, None, addr("10.0.0.2:0"));
        let h = FileHash::of(b"x");
        // A requester serving no port: nowhere to connect to.
        assert!(matches!(
            p.handle_push(2, h, addr("10.0.0.1:0"), 1, false, now),
            Err(PushRefusal::Error(ErrorCode::Invalid, m)) if m.contains("--listen none")
        ));
        // A requester the probe found unreachable.
        p.handle_joined(3, None, addr("10.0.0.3:7000"));
        assert_eq!(p.handle_ask(3, 9, now), None);
        let (s, a, _) = p.poll_probe(now).unwrap();
        assert_eq!((s, a), (3, addr("10.0.0.3:7000")));
        let (to, frame) = p
            .handle_probe_done(3, addr("10.0.0.3:7000"), false)
            .unwrap();
        assert_eq!(to, 3);
        let answer = notice(&frame);
        assert_eq!(answer.id, 9);
        assert_eq!(answer.body, ResponseBody::Reachability { reachable: false });
        assert!(matches!(
            p.handle_push(3, h, addr("10.0.0.1:0"), 1, false, now),
            Err(PushRefusal::Error(ErrorCode::Invalid, m)) if m.contains("not reachable")
        ));
        // A reachable requester: an unknown holder is not found, or in a cluster, left to
        // the other nodes (with where to connect: the requester's own address).
        p.handle_joined(4, None, addr("10.0.0.4:7000"));
        p.handle_ask(4, 1, now);
        let (s, ..) = p.poll_probe(now).unwrap();
        p.handle_probe_done(s, addr("10.0.0.4:7000"), true);
        assert!(matches!(
            p.handle_push(4, h, addr("10.9.9.9:1"), 1, false, now),
            Err(PushRefusal::Error(ErrorCode::NotFound, _))
        ));
        assert_eq!(
            p.handle_push(4, h, addr("10.9.9.9:1"), 1, true, now),
            Ok(PushRoute::Elsewhere {
                to: addr("10.0.0.4:7000")
            })
        );
        // A holder that leaves takes no more pushes.
        p.handle_left(1);
        assert!(
            p.firewalled([addr("10.0.0.3:7000")].iter(), |_| false)
                .len()
                == 1
        );
        assert!(matches!(
            p.handle_push(
                4,
                h,
                addr("10.0.0.1:0"),
                1,
                false,
                now + Duration::from_secs(9)
            ),
            Err(PushRefusal::Error(ErrorCode::NotFound, _))
        ));
        p.handle_left(3);
        assert!(p
            .firewalled([addr("10.0.0.3:7000")].iter(), |_| false)
            .is_empty());
    }

    /// One request through the whole sans-IO server: its answers.
    fn call(
        server: &mut IndexServer,
        session: &mut Session,
        body: wire::RequestBody,
    ) -> Vec<Response> {
        let mut out = Vec::new();
        let payload = wire::to_payload(&wire::Request { id: 3, body });
        server.handle_payload(session, &payload, &mut out);
        let (frames, _) =
            crate::codec::decode_all(&mut crate::codec::Decoder::default(), &out).unwrap();
        frames.iter().map(|f| wire::decode(f).unwrap()).collect()
    }

    fn join(server: &mut IndexServer, remote: &str, port: u16) -> Session {
        let mut s = server.accept(addr(remote));
        let hello = wire::RequestBody::Hello {
            version: PROTOCOL_VERSION,
            listen_port: port,
            agent: "t".into(),
        };
        assert!(matches!(
            call(server, &mut s, hello)[0].body,
            ResponseBody::Welcome { .. }
        ));
        s
    }

    #[test]
    fn the_server_flags_firewalled_holders_and_relays_pushes_to_their_sessions() {
        let mut server = IndexServer::new(super::super::ServerLimits::default());
        let file = wire::FileEntry {
            hash: FileHash::of(b"z"),
            size: 1,
            name: "z".into(),
        };
        let register = || wire::RequestBody::Register {
            files: vec![file.clone()],
        };
        // Serving no port, a session registers only once it takes pushes.
        let mut holder = join(&mut server, "10.0.0.1:999", 0);
        assert!(matches!(
            call(&mut server, &mut holder, register())[0].body,
            ResponseBody::Error {
                code: ErrorCode::Invalid,
                ..
            }
        ));
        assert_eq!(
            call(&mut server, &mut holder, wire::RequestBody::Reachability)[0].body,
            ResponseBody::Reachability { reachable: false }
        );
        assert!(matches!(
            call(&mut server, &mut holder, register())[0].body,
            ResponseBody::Registered { added: 1, .. }
        ));
        // A reachable holder of the same file beside it (probed: its answer comes later).
        let mut open = join(&mut server, "10.0.0.2:999", 7000);
        assert!(call(&mut server, &mut open, wire::RequestBody::Reachability).is_empty());
        let (s, at, _) = server.pushes.poll_probe(Instant::now()).unwrap();
        assert_eq!((s, at), (open.id, addr("10.0.0.2:7000")));
        let (to, _) = server.pushes.handle_probe_done(s, at, true).unwrap();
        assert_eq!(to, open.id);
        call(&mut server, &mut open, register());
        let lookup = wire::RequestBody::Lookup {
            key: wire::LookupKey::Hash(file.hash),
            after: None,
        };
        let mut asker = join(&mut server, "10.0.0.3:999", 7001);
        let ResponseBody::Holders {
            files, firewalled, ..
        } = call(&mut server, &mut asker, lookup)[0].body.clone()
        else {
            panic!()
        };
        assert_eq!(files[0].holders.len(), 2);
        assert_eq!(firewalled, vec![addr("10.0.0.1:0")]);
        // The push goes to the holder's session, naming the asker's own address.
        let push = wire::RequestBody::Push {
            hash: file.hash,
            holder: addr("10.0.0.1:0"),
            nonce: 5,
        };
        assert_eq!(
            call(&mut server, &mut asker, push)[0].body,
            ResponseBody::PushRelayed
        );
        let d = server.pushes.take_deliveries();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].0, holder.id);
        // What the metrics show: one relay, one probe (a session serving no port is not
        // probed), both sessions that asked take pushes.
        let counts = PushCounts {
            relayed: 1,
            rate_limited: 0,
            probes_reachable: 1,
            probes_unreachable: 0,
            taking: 2,
            waiting: 0,
            in_flight: 0,
            relay: RelayCounts::default(),
        };
        assert_eq!(server.push_counts(), counts);
        assert_eq!(
            notice(&d[0].1).body,
            ResponseBody::PushRequest {
                hash: file.hash,
                to: addr("10.0.0.3:7001"),
                nonce: 5
            }
        );
        // Once the holder has left, nobody takes its pushes.
        server.close(holder, &CloseReason::Eof);
        let push = wire::RequestBody::Push {
            hash: file.hash,
            holder: addr("10.0.0.1:0"),
            nonce: 6,
        };
        assert!(matches!(
            call(&mut server, &mut asker, push)[0].body,
            ResponseBody::Error {
                code: ErrorCode::NotFound,
                ..
            }
        ));
        assert!(server.pushes.take_deliveries().is_empty());
        assert_eq!(
            server.push_counts(),
            PushCounts {
                taking: 1,
                ..counts
            }
        );
    }

    #[test]
    fn push_budgets_are_per_session_and_per_address_and_their_refusals_are_strikes() {
        use crate::index::limits::RateLimits;
        let mut server = IndexServer::new(super::super::ServerLimits::default());
        // Slow refills, so the test's own time adds no token.
        server.set_rate_limits(RateLimits {
            push_per_s: 1,
            push_burst: 4,
            push_address_per_s: 3,
            ban_after: 30,
            ban_window: Duration::from_secs(60),
            ban_for: Duration::from_secs(60),
            ..RateLimits::default()
        });
        let mut holder = join(&mut server, "10.0.0.1:999", 0);
        call(&mut server, &mut holder, wire::RequestBody::Reachability);
        let push = || wire::RequestBody::Push {
            hash: FileHash::of(b"z"),
            holder: addr("10.0.0.1:0"),
            nonce: 1,
        };
        let relay = |server: &mut IndexServer, s: &mut Session, times: usize| {
            let mut answers = (0, 0, 0);
            for _ in 0..times {
                match call(server, s, push())[0].body {
                    ResponseBody::PushRelayed => answers.0 += 1,
                    ResponseBody::RateLimited { banned: false, .. } => answers.1 += 1,
                    ResponseBody::RateLimited { banned: true, .. } => answers.2 += 1,
                    ref other => panic!("{other:?}"),
                }
            }
            answers
        };
        // One session: its burst (and the token it may go into debt for), then refused.
        let mut one = join(&mut server, "10.0.0.2:999", 7000);
        assert_eq!(relay(&mut server, &mut one, 8), (5, 3, 0));
        // Many sessions of one address, each within its own budget: together the address's
        // (2 s of 3 a second, and one in debt).
        let mut many: Vec<Session> = (0..4)
            .map(|_| join(&mut server, "10.0.0.3:999", 7000))
            .collect();
        let mut relayed = 0;
        for s in &mut many {
            relayed += relay(&mut server, s, 2).0;
        }
        assert_eq!(relayed, 7);
        // Another address is served all the same.
        let mut other = join(&mut server, "10.0.0.4:999", 7000);
        assert_eq!(relay(&mut server, &mut other, 1), (1, 0, 0));
        // The refusals were strikes: an address that keeps asking is banned.
        let (_, refused, banned) = relay(&mut server, &mut many[0], 40);
        assert!(banned > 0 && refused + banned == 40, "{refused} {banned}");
        assert_eq!(server.pushes.take_deliveries().len(), 5 + 7 + 1);
        let counts = server.push_counts();
        assert_eq!(counts.relayed, 5 + 7 + 1);
        assert_eq!(counts.rate_limited, 3 + 1 + 40);
    }

    #[test]
    fn probes_are_bounded_in_flight_and_skip_sessions_that_left() {
        let now = Instant::now();
        let mut p = Pushes::new(now);
        for s in 0..PROBES_IN_FLIGHT_MAX as u64 + 5 {
            let at = SocketAddr::from(([10, 0, (s >> 8) as u8, s as u8], 1000));
            p.handle_joined(s, None, at);
            assert_eq!(p.handle_ask(s, 1, now), None);
        }
        p.handle_left(0);
        let mut started = Vec::new();
        while let Some((s, ..)) = p.poll_probe(now) {
            started.push(s);
        }
        assert_eq!(started.len(), PROBES_IN_FLIGHT_MAX);
        assert_eq!(started[0], 1, "the session that left is not probed");
        // One ends: the next starts.
        p.handle_probe_done(1, addr("10.0.0.1:1000"), true);
        assert!(p.poll_probe(now).is_some());
        // A second ask does not probe again; a known answer comes at once.
        assert_eq!(p.handle_ask(1, 2, now), Some(true));
    }

    #[test]
    fn probes_take_each_address_in_turn_and_bound_one_addresss_in_flight() {
        let now = Instant::now();
        let mut p = Pushes::new(now);
        // 100 sessions of one address announcing ports that never answer, then one of
        // another address.
        for s in 0..100u64 {
            p.handle_joined(s, None, SocketAddr::from(([10, 0, 0, 1], 1000 + s as u16)));
            assert_eq!(p.handle_ask(s, 1, now), None);
        }
        p.handle_joined(100, None, addr("10.0.0.2:7000"));
        assert_eq!(p.handle_ask(100, 1, now), None);
        let mut started = Vec::new();
        while let Some((s, ..)) = p.poll_probe(now) {
            started.push(s);
        }
        // The other address's probe comes second, and the first address has its bound.
        assert_eq!(started[..2], [0, 100]);
        assert_eq!(started.len(), PROBES_IN_FLIGHT_PER_ADDRESS + 1);
        // One of the first address's probes ends: its next starts.
        p.handle_probe_done(0, SocketAddr::from(([10, 0, 0, 1], 1000)), false);
        assert_eq!(p.poll_probe(now).map(|(s, ..)| s), Some(8));
        assert_eq!(p.poll_probe(now), None);
    }
}
