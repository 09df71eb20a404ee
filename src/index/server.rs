//! The index server's connection handler: turns peers' requests into calls on the pure
//! [`Index`] and answers them. Runs on one reactor thread.
//!
//! # Session lifecycle (see docs/LIFECYCLE.md)
//! `AwaitingHello` → (Hello with our version) → `Ready` → (Bye, EOF, error, idle timeout) →
//! closed. A connection that sends anything but Hello first, a second Hello, or an
//! undecodable frame gets an error response and is closed after it is sent; the rest of the
//! server is untouched. When a `Ready` session's connection closes for any reason, its peer
//! leaves every answer at once, and its entries leave the index in slices over the next turns
//! (soft state; see `server/slices.rs`).
//!
//! # Bounded work per turn
//! Big registers and unregisters, and departing peers, are done in slices across turns, the
//! requesting session held meanwhile: see `server/slices.rs`.
//!
//! # Firewalled peers
//! A session may ask whether its file server can be reached (a connect-back probe) and then
//! takes push requests; lookups flag the holders found unreachable. See `server/push.rs`.
//!
//! # Addresses
//! The address given out for a peer is the IP seen on its socket with the port it announced in
//! Hello, never an address the peer claims. An IPv4 peer on a dual-stack listener is seen as
//! plain IPv4 (the reactor maps `::ffff:a.b.c.d` at accept), so it is handed out as such.

mod cluster;
mod cluster_limits;
pub mod push;
mod register_frame;
mod relay;
mod slices;
#[cfg(test)]
mod test_node;

pub use self::register_frame::LAZY_REGISTER_BYTES;
pub use self::slices::{BACKGROUND_WORK_PER_TURN, GROUP_UNITS, SLICE_UNITS, TURN_WORK_TARGET};

use super::limits::{self, Kind, Limiter, RateLimits, Refusal, SessionBuckets};
use super::metrics::{self, IndexMetrics};
use super::store::{Index, LookupError, PeerId, RegisterOutcome, SEARCH_TIME_LIMIT};
use super::worktrace;
use crate::codec::FrameError;
use crate::reactor::{CloseReason, ConnId, Ctx, Handler, HttpBody, PauseSummary, Verdict};
use crate::wire::{
    self, AnnouncedFile, ErrorCode, FileEntryRef, FileHash, LookupKey, LookupToken, Request,
    RequestBody, Response, ResponseBody, ServerStats, PROTOCOL_VERSION,
};
use hdrhistogram::Histogram;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most files one page of a name lookup may hold, whatever [`ServerLimits`] says, and most
/// holders listed per file: with names of at most 1,024 bytes and IPv6 holders the largest
/// page encodes to under 0.75 MB (a test checks; its `firewalled` list included), far under the 16 MiB a peer accepts and under
/// the reactor's 1 MiB output mark.
pub const LOOKUP_FILES_MAX: usize = 200;
/// See [`LOOKUP_FILES_MAX`].
pub const LOOKUP_HOLDERS_MAX: usize = 64;

/// A connection whose unread answers stay over the reactor's output mark this long without
/// the remote reading any of them is closed: what one connection may hold is then bounded in
/// time as well as in size (see README, Limits and security).
pub const OUTPUT_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Limits of the server's behaviour (the reactor's own limits live in its `Config`).
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// Most results one search returns.
    pub max_results: usize,
    /// Most entries (hash and name pairs) one peer may hold in the index.
    pub max_files_per_peer: usize,
    /// Most holdings in the whole index (every peer's entries summed): new ones beyond it are
    /// refused, so that peers together cannot grow the process without bound (at most about
    /// 150 bytes per holding, when none is shared).
    pub max_holdings: usize,
    /// Most holdings of all the peers at one address (an IPv4 address or an IPv6 /64, as the
    /// rate limits count them), so that one host cannot fill the index-wide cap with many
    /// sessions. `usize::MAX`: no limit.
    pub max_holdings_per_address: usize,
    /// Most files in one page of a lookup by name (at most [`LOOKUP_FILES_MAX`]).
    pub max_lookup_files: usize,
    /// Most holders listed per file of a lookup by name (at most [`LOOKUP_HOLDERS_MAX`]).
    pub max_lookup_holders: usize,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_results: 100,
            max_files_per_peer: 1_000_000,
            max_holdings: 20_000_000,
            max_holdings_per_address: 2_000_000,
            max_lookup_files: 100,
            max_lookup_holders: LOOKUP_HOLDERS_MAX,
        }
    }
}

/// One connection's session, kept in the reactor's slot for that connection: created by
/// [`IndexServer::accept`], passed to every request, and given back to
/// [`IndexServer::close`], which withdraws its peer's entries.
#[derive(Debug)]
pub struct Session {
    remote: SocketAddr,
    state: SessionState,
    /// Its rate-limit buckets (see [`super::limits`]).
    buckets: SessionBuckets,
    /// The session's id (from its Welcome; 0 before).
    id: u64,
}

#[derive(Debug, Clone, Copy)]
enum SessionState {
    AwaitingHello,
    Ready {
        peer: PeerId,
        addr: SocketAddr,
    },
    /// Not a peer's session: indexd's own connect-back to a peer's file server.
    Probe(push::Probe),
}

/// The index server: an [`Index`] plus one session per connection.
pub struct IndexServer {
    index: Index,
    limits: ServerLimits,
    next_session: u64,
    /// Open connections (accepted and not yet closed).
    connections: u64,
    stats: ServerStats,
    /// "Index full" was logged, and the holdings have not dropped below 90% of the limit since.
    full_logged: bool,
    /// Set by the signal thread; checked when the reactor is woken.
    shutdown: Option<Arc<AtomicBool>>,
    /// The reactor loop's pauses, as last read for a `Stats` request.
    loop_pauses: PauseSummary,
    /// Server time of each search and lookup, in ns.
    search_ns: Histogram<u64>,
    lookup_ns: Histogram<u64>,
    /// What only `--metrics` reports.
    metrics: IndexMetrics,
    /// Rate limits and bans.
    limiter: Limiter,
    /// What the request being handled is to be charged (its kind and counted units), once
    /// `handle_payload` has timed it.
    charge: Option<(Kind, u64)>,
    /// Holdings of the live peers at each address, for
    /// [`ServerLimits::max_holdings_per_address`] (addresses with none are not kept).
    address_holdings: hashbrown::HashMap<limits::Address, usize>,
    /// Requests being applied in slices, oldest first (see [`slices`]).
    jobs: VecDeque<slices::Job>,
    /// The connection whose frame is being handled, when it can be held (under a reactor).
    current_conn: Option<ConnId>,
    /// The request being handled became a job: hold its connection.
    hold_current: bool,
    /// The entries of the big register frame being handled, decoded in slices (see
    /// `server/register_frame.rs`).
    lazy_register: Option<register_frame::LazyEntries>,
    /// Held connections whose job failed (a register entry that does not decode): closed
    /// after their error answer, with this reason.
    closing: Vec<(ConnId, String)>,
    /// The buffer of the last big register frame's entries, for the next one.
    spare_frame: Vec<u8>,
    /// The vector a small register's entries are decoded into (names borrowed from the
    /// frame), kept empty between frames so that a register allocates nothing.
    spare_entries: Vec<FileEntryRef<'static>>,
    /// Cluster mode's link to the NATS thread (see `server/cluster.rs`).
    cluster: Option<Box<crate::index::cluster::link::Link>>,
    /// Why the cluster link failed, if it did.
    cluster_failed: Option<String>,
    /// Connections a fence ends at the turn's end.
    cluster_to_close: Vec<ConnId>,
    /// The cluster's lease timer is set.
    cluster_timer_armed: bool,
    /// Reachability probes and the push relay (see `server/push.rs`).
    pushes: push::Pushes,
    /// Turns in a row whose background steps waited (see [`slices::STEPS_AFTER`]).
    steps_waited: u32,
}

/// Longest server time the histograms tell apart (longer ones count as this), in ns.
const MAX_TRACKED_NS: u64 = 60_000_000_000;

fn time_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_TRACKED_NS, 2).expect("valid histogram bounds")
}

impl IndexServer {
    /// An empty index with these limits.
    pub fn new(limits: ServerLimits) -> Self {
        IndexServer {
            index: {
                let mut index = Index::new();
                index.set_search_time_limit(Some(SEARCH_TIME_LIMIT));
                index
            },
            limits,
            next_session: 1,
            connections: 0,
            stats: ServerStats::default(),
            full_logged: false,
            shutdown: None,
            loop_pauses: PauseSummary::default(),
            search_ns: time_histogram(),
            lookup_ns: time_histogram(),
            metrics: IndexMetrics::default(),
            limiter: Limiter::new(RateLimits::default()),
            charge: None,
            address_holdings: hashbrown::HashMap::new(),
            jobs: VecDeque::new(),
            current_conn: None,
            hold_current: false,
            lazy_register: None,
            closing: Vec::new(),
            spare_frame: Vec::new(),
            spare_entries: Vec::new(),
            cluster: None,
            cluster_failed: None,
            cluster_to_close: Vec::new(),
            cluster_timer_armed: false,
            pushes: push::Pushes::new(Instant::now()),
            steps_waited: 0,
        }
    }

    /// Sets the rate limits and bans (the default is [`RateLimits::default`]); applies to
    /// connections accepted from now on.
    pub fn set_rate_limits(&mut self, limits: RateLimits) {
        self.limiter = Limiter::new(limits);
    }

    /// Stops the reactor when `flag` is set and the reactor is woken (SIGINT/SIGTERM).
    pub fn stop_on(&mut self, flag: Arc<AtomicBool>) {
        self.shutdown = Some(flag);
    }

    /// The index (for tests and stats).
    pub fn index(&self) -> &Index {
        &self.index
    }

    /// The index, mutably (its word count settles pending work first).
    pub(super) fn index_mut(&mut self) -> &mut Index {
        &mut self.index
    }

    /// The counters kept for `--metrics`.
    pub fn metrics(&self) -> &IndexMetrics {
        &self.metrics
    }

    /// Open connections, and those past the handshake (one per peer).
    pub fn connection_counts(&self) -> (u64, u64) {
        (self.connections, self.index.peer_count() as u64)
    }

    /// Queues an error response and says how the connection goes on.
    fn error(&mut self, out: &mut Vec<u8>, id: u32, code: ErrorCode, message: impl Into<String>) {
        self.stats.errors += 1;
        self.metrics.record_error(code);
        wire::encode_frame(
            &Response {
                id,
                body: ResponseBody::Error {
                    code,
                    message: message.into(),
                },
            },
            out,
        );
    }

    /// Answers a request that is not acceptable on this connection, then closes it.
    fn fatal(
        &mut self,
        out: &mut Vec<u8>,
        session: &Session,
        id: u32,
        code: ErrorCode,
        message: String,
    ) -> Verdict {
        log::debug!("{}: {code}: {message}", session.remote);
        self.error(out, id, code, message.clone());
        Verdict::CloseAfterFlush(CloseReason::Protocol(message))
    }

    fn handle_hello(
        &mut self,
        out: &mut Vec<u8>,
        session: &mut Session,
        id: u32,
        version: u16,
        listen_port: u16,
        agent: &str,
    ) -> Verdict {
        let remote = session.remote;
        match session.state {
            SessionState::AwaitingHello => {}
            SessionState::Ready { .. } | SessionState::Probe(_) => {
                return self.fatal(
                    out,
                    session,
                    id,
                    ErrorCode::NotReady,
                    "hello sent twice".into(),
                )
            }
        };
        if version != PROTOCOL_VERSION {
            return self.version_mismatch(out, session, id, version);
        }
        // The IP we see, the port they announce.
        let addr = SocketAddr::new(remote.ip(), listen_port);
        let peer = self.index.add_peer(addr);
        let session_id = self.next_session;
        self.next_session += 1;
        session.state = SessionState::Ready { peer, addr };
        session.id = session_id;
        self.push_joined(session_id, peer, addr);
        self.cluster_opened(peer, addr);
        log::info!(
            "peer {} joined from {remote} serving on port {listen_port} ({})",
            peer.0,
            printable(agent)
        );
        wire::encode_frame(
            &Response {
                id,
                body: ResponseBody::Welcome {
                    version: PROTOCOL_VERSION,
                    session: session_id,
                    observed: addr,
                },
            },
            out,
        );
        Verdict::Continue
    }

    fn version_mismatch(
        &mut self,
        out: &mut Vec<u8>,
        session: &Session,
        id: u32,
        theirs: u16,
    ) -> Verdict {
        let msg = format!(
            "protocol version {theirs} is not supported; this server speaks version {PROTOCOL_VERSION}"
        );
        self.fatal(out, session, id, ErrorCode::VersionMismatch, msg)
    }

    /// Handles a decoded request. A small register comes with no files in `req` and its
    /// entries in `borrowed`, their names in the frame (see `handle_payload`); `borrowed` is
    /// empty for every other request.
    fn handle_request(
        &mut self,
        out: &mut Vec<u8>,
        session: &mut Session,
        req: Request,
        borrowed: &[FileEntryRef<'_>],
        now: Instant,
    ) -> Verdict {
        let id = req.id;
        if let Some((code, fatal, why)) = self.cluster_refusal(&req.body) {
            if fatal {
                return self.fatal(out, session, id, code, why.into());
            }
            self.error(out, id, code, why);
            return Verdict::Continue;
        }
        if let RequestBody::Hello {
            version,
            listen_port,
            agent,
        } = &req.body
        {
            return self.handle_hello(out, session, id, *version, *listen_port, agent);
        }
        let (peer, addr) = match session.state {
            SessionState::Ready { peer, addr } => (peer, addr),
            SessionState::AwaitingHello | SessionState::Probe(_) => {
                return self.fatal(
                    out,
                    session,
                    id,
                    ErrorCode::NotReady,
                    "the first request must be hello".into(),
                )
            }
        };
        match req.body {
            RequestBody::Reachability => {
                return self.handle_reachability(out, session, id, now);
            }
            RequestBody::Push {
                hash,
                holder,
                nonce,
            } => {
                return self.handle_push(out, session, id, (hash, holder, nonce), now);
            }
            _ => {}
        }
        let kind = match &req.body {
            RequestBody::Search { .. } => Some(Kind::Search),
            RequestBody::Lookup { .. } => Some(Kind::Lookup),
            RequestBody::Register { .. } | RequestBody::Unregister { .. } => Some(Kind::Register),
            _ => None,
        };
        if let Some(kind) = kind {
            let ip = session.remote.ip();
            if let Err(refusal) = self.limiter.admit(&mut session.buckets, ip, kind, now) {
                return self.refuse(out, session, id, refusal);
            }
        }
        // What a search reports it spent, for its charge.
        let mut search_work = 0;
        let body = match req.body {
            RequestBody::Hello { .. } | RequestBody::Reachability | RequestBody::Push { .. } => {
                unreachable!("handled above")
            }
            RequestBody::Register { files } => {
                self.stats.registers += 1;
                // A peer serving no port can only serve through pushes: it must take them.
                // (A big register's entries are in `lazy_register`, its `files` empty.)
                let announces = !files.is_empty()
                    || !borrowed.is_empty()
                    || self.lazy_register.as_ref().is_some_and(|l| l.left() > 0);
                if addr.port() == 0 && announces && !self.pushes.takes_pushes(session.id) {
                    self.error(
                        out,
                        id,
                        ErrorCode::Invalid,
                        "announce a listening port in hello (or ask reachability, to serve \
                         through pushes) to register files",
                    );
                    return Verdict::Continue;
                }
                if !borrowed.is_empty() {
                    // At most a slice: registered at once, as a decoded one of its size.
                    self.register_borrowed(peer, borrowed)
                } else {
                    let entries = match &self.lazy_register {
                        Some(lazy) => lazy.left(),
                        None => files.len() as u64,
                    };
                    match self.start_register(peer, id, files) {
                        Ok(Some(body)) => body,
                        // Answered when its last slice is done; charged now, per entry sent.
                        Ok(None) => {
                            self.charge = Some((Kind::Register, entries));
                            return Verdict::Continue;
                        }
                        Err(e) => {
                            let message = format!("register entry: {}", e.0);
                            return self.fatal(out, session, id, ErrorCode::Malformed, message);
                        }
                    }
                }
            }
            RequestBody::Unregister { hashes } => {
                self.stats.unregisters += 1;
                let entries = hashes.len() as u64;
                match self.start_unregister(peer, id, hashes) {
                    Some(body) => body,
                    // As a big register.
                    None => {
                        self.charge = Some((Kind::Register, entries));
                        return Verdict::Continue;
                    }
                }
            }
            RequestBody::Search {
                query,
                limit,
                filter,
                after,
            } => {
                self.stats.searches += 1;
                let limit = match limit as usize {
                    0 => self.limits.max_results,
                    n => n.min(self.limits.max_results),
                };
                if !filter.is_valid() {
                    self.error(
                        out,
                        id,
                        ErrorCode::Invalid,
                        "search filter: too many or too long extensions, or an empty size range",
                    );
                    return Verdict::Continue;
                }
                let traced = worktrace::start_search();
                match self
                    .index
                    .search_page(&query, &filter, after.as_ref(), limit)
                {
                    Ok(page) => {
                        if let Some(t) = traced {
                            t.end(&query);
                        }
                        search_work = page.work;
                        ResponseBody::SearchResults {
                            hits: page.hits,
                            total: page.total,
                            total_exact: page.total_exact,
                            next: page.next,
                            partial: page.partial,
                            server_us: now.elapsed().as_micros().min(u128::from(u32::MAX)) as u32,
                        }
                    }
                    Err(e) => {
                        self.error(out, id, ErrorCode::Invalid, e.to_string());
                        return Verdict::Continue;
                    }
                }
            }
            RequestBody::Lookup { key, after } => {
                self.stats.lookups += 1;
                let answer = match (&key, after) {
                    (LookupKey::Name(name), after) => self
                        .index
                        .lookup_name(
                            name,
                            after.map(|t| t.0),
                            self.limits.max_lookup_files.clamp(1, LOOKUP_FILES_MAX),
                            self.limits.max_lookup_holders.clamp(1, LOOKUP_HOLDERS_MAX),
                        )
                        .map(|page| ResponseBody::Holders {
                            files: page.files,
                            total: page.total,
                            next: page.next.map(LookupToken),
                            firewalled: Vec::new(),
                        }),
                    (_, Some(_)) => {
                        let msg = "a continuation token goes with a lookup by name";
                        self.error(out, id, ErrorCode::Invalid, msg);
                        return Verdict::Continue;
                    }
                    (key, None) => self.index.lookup(key).map(|files| ResponseBody::Holders {
                        total: files.len() as u64,
                        files,
                        next: None,
                        firewalled: Vec::new(),
                    }),
                };
                match answer {
                    Ok(mut body) => {
                        if let ResponseBody::Holders {
                            files, firewalled, ..
                        } = &mut body
                        {
                            *firewalled =
                                self.firewalled(files.iter().flat_map(|f| f.holders.iter()));
                        }
                        body
                    }
                    Err(e) => {
                        let code = match e {
                            LookupError::NotFound => ErrorCode::NotFound,
                            LookupError::Ambiguous => ErrorCode::Ambiguous,
                            LookupError::BadPrefix => ErrorCode::Invalid,
                        };
                        let what = match &key {
                            LookupKey::Hash(h) => h.to_hex(),
                            LookupKey::HashPrefix(p) => printable(p),
                            LookupKey::Name(n) => printable(n),
                        };
                        self.error(out, id, code, format!("{e}: {what}"));
                        return Verdict::Continue;
                    }
                }
            }
            RequestBody::Ping => {
                self.stats.pings += 1;
                ResponseBody::Pong
            }
            RequestBody::Stats => ResponseBody::Stats(self.current_stats()),
            RequestBody::Bye => {
                wire::encode_frame(
                    &Response {
                        id,
                        body: ResponseBody::Bye,
                    },
                    out,
                );
                return Verdict::CloseAfterFlush(CloseReason::Local);
            }
        };
        let kind_units = kind.map(|kind| {
            let units = match &body {
                ResponseBody::SearchResults { .. } => limits::search_cost(search_work),
                ResponseBody::Holders { files, .. } => limits::lookup_cost(
                    files.len() as u64,
                    files.iter().map(|f| f.holders.len() as u64).sum(),
                ),
                ResponseBody::Registered {
                    added, rejected, ..
                } => u64::from(*added) + u64::from(*rejected),
                ResponseBody::Unregistered { removed, .. } => u64::from(*removed),
                _ => limits::BASE_UNITS,
            };
            (kind, units)
        });
        let answer = Response { id, body };
        wire::encode_frame(&answer, out);
        // Their memory builds the next answers.
        match answer.body {
            ResponseBody::SearchResults { hits, .. } => self.index.recycle_hits(hits),
            ResponseBody::Holders { files, .. } => self.index.recycle_held(files),
            _ => {}
        }
        // Charged by `handle_payload` once it has timed the request.
        self.charge = kind_units;
        Verdict::Continue
    }

    /// Answers a request refused over a rate limit; a ban closes the connection after it.
    fn refuse(
        &mut self,
        out: &mut Vec<u8>,
        session: &Session,
        id: u32,
        refusal: Refusal,
    ) -> Verdict {
        let retry_after_ms = refusal.retry_after.as_millis() as u64;
        wire::encode_frame(
            &Response {
                id,
                body: ResponseBody::RateLimited {
                    retry_after_ms,
                    banned: refusal.banned,
                },
            },
            out,
        );
        if !refusal.banned {
            return Verdict::Continue;
        }
        let remote = session.remote;
        log::warn!(
            "{remote}: banned for {} s: kept exceeding the rate limits",
            refusal.retry_after.as_secs()
        );
        Verdict::CloseAfterFlush(CloseReason::Protocol("banned: rate limits".into()))
    }

    /// Registers `files` for `peer` within the holding limits (one slice of a register).
    fn register_slice<F: AnnouncedFile>(&mut self, peer: PeerId, files: &[F]) -> RegisterOutcome {
        // New holdings are what cost memory: at most what the limits leave room for.
        let held = self.index.entries_of(peer) as usize;
        let peer_room = self.limits.max_files_per_peer.saturating_sub(held);
        let holdings = self.index.holding_count();
        let index_room = self.limits.max_holdings.saturating_sub(holdings);
        let ip = self.index.peer_addr(peer).map(|a| a.ip());
        let address = ip.map(limits::Address::of);
        let at_address = address.map_or(0, |a| self.holdings_at(a));
        let address_room = self
            .limits
            .max_holdings_per_address
            .saturating_sub(at_address);
        let room = peer_room
            .min(index_room)
            .min(address_room)
            .min(u32::MAX as usize) as u32;
        let outcome = self.index.register_at_most(peer, files, room);
        let added = self.index.entries_of(peer) as usize - held;
        if let (Some(address), Some(ip)) = (address, ip) {
            self.add_address_holdings(address, added as isize);
            let cap = self.limits.max_holdings_per_address;
            if at_address < cap && at_address + added >= cap {
                log::info!(
                    "{ip}: its peers hold {cap} entries, the --max-holdings-per-ip limit; new \
                     ones from it are refused until some leave"
                );
            }
        }
        let limit = self.limits.max_holdings;
        let holdings = self.index.holding_count();
        if holdings >= limit && outcome.rejected > 0 && !self.full_logged {
            self.full_logged = true;
            log::warn!(
                "index full: {holdings} holdings, the --max-holdings limit; new ones are \
                 refused until some leave"
            );
        } else if self.full_logged && holdings < limit - limit / 10 {
            self.full_logged = false;
        }
        outcome
    }

    /// Withdraws `peer`'s holdings of `hashes` (one slice of an unregister); returns how many
    /// entries it lost.
    fn unregister_slice(&mut self, peer: PeerId, hashes: &[FileHash]) -> u32 {
        let removed = self.index.unregister(peer, hashes);
        if let Some(addr) = self.index.peer_addr(peer) {
            self.add_address_holdings(limits::Address::of(addr.ip()), -(removed as isize));
        }
        removed
    }

    /// The counters as `stats` reports them.
    pub fn current_stats(&self) -> ServerStats {
        ServerStats {
            connections: self.connections,
            peers: self.index.peer_count() as u64,
            files: self.index.file_count() as u64,
            names: self.index.entry_count() as u64,
            loop_turns: self.loop_pauses.turns,
            loop_max_pause_us: self.loop_pauses.max_us,
            loop_p99_pause_us: self.loop_pauses.p99_us,
            loop_p999_pause_us: self.loop_pauses.p999_us,
            search_p99_ns: self.search_ns.value_at_quantile(0.99),
            search_max_ns: self.search_ns.max(),
            lookup_p99_ns: self.lookup_ns.value_at_quantile(0.99),
            lookup_max_ns: self.lookup_ns.max(),
            rate_limited: self.limiter.counts().rate_limited,
            bans: self.limiter.counts().bans,
            banned_connections: self.limiter.counts().banned_connections,
            ..self.stats.clone()
        }
    }

    /// The reactor loop's pauses, for the next `Stats` answer (the reactor handler passes
    /// them in before a `Stats` request: summing them up walks a histogram).
    pub fn set_loop_pauses(&mut self, pauses: PauseSummary) {
        self.loop_pauses = pauses;
    }
}

impl IndexServer {
    /// A connection from `remote` was accepted: its session, awaiting Hello.
    pub fn accept(&mut self, remote: SocketAddr) -> Session {
        self.connections += 1;
        Session {
            remote,
            state: SessionState::AwaitingHello,
            buckets: self.limiter.open(remote.ip(), Instant::now()),
            id: 0,
        }
    }

    /// If `remote`'s address is banned: the frame that tells it so before its connection is
    /// closed (counted).
    pub fn ban_refusal(&mut self, remote: SocketAddr) -> Option<Vec<u8>> {
        let left = self.limiter.banned(remote.ip(), Instant::now())?;
        self.limiter.count_banned_connection();
        log::debug!(
            "{remote}: refused at accept: banned for {} s more",
            left.as_secs()
        );
        Some(wire::index_banned_frame(left.as_millis() as u64))
    }

    /// Handles one request frame's payload, appending the response frame(s) to `out`.
    pub fn handle_payload(
        &mut self,
        session: &mut Session,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Verdict {
        // A small register's entries borrow their names from the frame (no allocation), in
        // a vector kept from frame to frame (`Vec<FileEntryRef<'static>>` is a
        // `Vec<FileEntryRef<'_>>`). A big register's entries are decoded in slices, by its
        // job (see `register_frame.rs`). Anything else, or a register the borrowed decode
        // declines (malformed, or over a slice), is decoded as usual.
        let mut borrowed: Vec<FileEntryRef<'_>> = std::mem::take(&mut self.spare_entries);
        let decoded = worktrace::time("decode", || {
            if payload.len() <= LAZY_REGISTER_BYTES {
                if let Some(id) = wire::decode_small_register(payload, SLICE_UNITS, &mut borrowed) {
                    let body = RequestBody::Register { files: Vec::new() };
                    return Ok(Request { id, body });
                }
            }
            match register_frame::split(payload, &mut self.spare_frame) {
                Some((head, entries)) => {
                    self.lazy_register = Some(entries);
                    Ok(head)
                }
                None => wire::decode::<Request>(payload),
            }
        });
        match decoded {
            Ok(req) => {
                // Every request is timed (two clock reads, a few tens of ns) for the metrics;
                // searches and lookups for `Stats` too.
                let kind = metrics::request_kind(Some(&req.body));
                let is_search = matches!(req.body, RequestBody::Search { .. });
                let is_lookup = matches!(req.body, RequestBody::Lookup { .. });
                if is_search
                    || is_lookup
                    || matches!(
                        req.body,
                        RequestBody::Register { .. } | RequestBody::Unregister { .. }
                    )
                {
                    // Words other sessions' registers left to post are posted before this
                    // request reads the index, and before its clock starts: its session is
                    // charged its own work's time, never theirs.
                    self.index.post_pending();
                }
                let started = Instant::now();
                let refused = self.limiter.counts().rate_limited;
                self.charge = None;
                let verdict = worktrace::time(metrics::REQUEST_KINDS[kind], || {
                    self.handle_request(out, session, req, &borrowed, started)
                });
                self.keep_spare_entries(borrowed);
                // Not taken by the register (refused, or from a session not ready).
                if let Some(entries) = self.lazy_register.take() {
                    self.spare_frame = entries.into_buffer();
                }
                let elapsed = started.elapsed();
                let ns = (elapsed.as_nanos() as u64).clamp(1, MAX_TRACKED_NS);
                if let Some((kind, units)) = self.charge.take() {
                    // Charged the larger of the work it reports and the server time it took
                    // (answer encoding included): a request whose work the units undercount
                    // (many names decoded for one answer) pays for its time.
                    let units = units.max(limits::units_of_time(elapsed));
                    let ip = session.remote.ip();
                    if kind == Kind::Register && self.cluster.is_some() {
                        // A record on the cluster's stream: its bytes count, none free.
                        let units = units.max(limits::stream_units(payload.len()));
                        self.limiter
                            .charge_stream(&mut session.buckets, ip, units, started);
                    } else {
                        self.limiter
                            .charge(&mut session.buckets, ip, kind, units, started);
                    }
                }
                self.metrics.record_request(kind, ns);
                // A request refused over a rate limit did no work: it is not timed as a
                // search or lookup.
                if self.limiter.counts().rate_limited == refused {
                    if is_search {
                        self.search_ns.saturating_record(ns);
                    } else if is_lookup {
                        self.lookup_ns.saturating_record(ns);
                    }
                }
                verdict
            }
            Err(e) => {
                self.keep_spare_entries(borrowed);
                self.metrics.record_request(metrics::request_kind(None), 1);
                let id = wire::peek_request_id(payload).unwrap_or(0);
                // A Hello from another protocol version may not decode at all: say so.
                if let Some(v) = wire::peek_version(payload, true) {
                    if v != PROTOCOL_VERSION {
                        return self.version_mismatch(out, session, id, v);
                    }
                }
                self.fatal(out, session, id, ErrorCode::Malformed, e.to_string())
            }
        }
    }

    /// Keeps the vector a small register was decoded into for the next one, emptied. The
    /// names it borrowed from the frame go with its elements; collecting an emptied
    /// `vec::IntoIter` into a vector of a type of the same layout reuses its allocation
    /// (the standard library's in-place collection), so this allocates nothing. At most a
    /// slice of entries: its capacity is bounded.
    fn keep_spare_entries(&mut self, mut entries: Vec<FileEntryRef<'_>>) {
        entries.clear();
        self.spare_entries = entries
            .into_iter()
            .map(|_| -> FileEntryRef<'static> { unreachable!("the vector is empty") })
            .collect();
    }

    /// The connection broke the framing rules: answer with an error before it closes.
    pub fn handle_framing_error(
        &mut self,
        session: &Session,
        error: FrameError,
        out: &mut Vec<u8>,
    ) -> Verdict {
        let msg = error.to_string();
        self.fatal(out, session, 0, ErrorCode::BadFrame, msg);
        Verdict::CloseAfterFlush(CloseReason::Frame(error))
    }

    /// Finishes the index work that answers do not wait for: the tables of the new files and
    /// the word postings of the names registered since the last call (a register is answered
    /// as soon as its outcome is known, and its files become searchable here, before any later
    /// request is read). Any request
    /// that reads the word index finishes this work first anyway, so calling it is about
    /// latency, never correctness.
    pub fn settle(&mut self) {
        self.index.post_pending();
    }

    /// Entries held at `address`: by this node's sessions, and in a cluster by every other
    /// node's sessions there as far as this node has applied their records (exact up to the
    /// replication lag; see `--max-holdings-per-ip` in README).
    fn holdings_at(&self, address: limits::Address) -> usize {
        let local = self.address_holdings.get(&address).copied().unwrap_or(0);
        // One map look: the replica keeps a running total per address.
        let remote = self
            .cluster
            .as_deref()
            .map_or(0, |link| link.replica().remote_holdings_at(address));
        local + remote
    }

    /// The peers at `address` gained (or lost, negative) `delta` holdings.
    fn add_address_holdings(&mut self, address: limits::Address, delta: isize) {
        if delta == 0 {
            return;
        }
        let n = self.address_holdings.entry(address).or_insert(0);
        *n = n
            .checked_add_signed(delta)
            .expect("an address never holds fewer than 0");
        if *n == 0 {
            self.address_holdings.remove(&address);
        }
    }

    /// The connection is gone: its peer leaves every answer now, and its entries leave the
    /// index in slices ([`IndexServer::poll_background`]); its unfinished jobs are dropped.
    pub fn close(&mut self, session: Session, reason: &CloseReason) {
        if let SessionState::Probe(_) = session.state {
            // Not an accepted connection: `probe_closed` (server/push.rs) ends it.
            return;
        }
        self.connections -= 1;
        self.limiter.close(session.remote.ip());
        let remote = session.remote;
        match session.state {
            SessionState::Ready { peer, addr } => {
                self.cancel_jobs(peer);
                // The address's room comes back at once: the departing entries are never
                // counted again, and no one can add to them.
                let held = self.index.entries_of(peer) as isize;
                self.add_address_holdings(limits::Address::of(addr.ip()), -held);
                let files = self.index.begin_departure(peer).unwrap_or(0);
                self.pushes.handle_left(session.id);
                self.cluster_closed(peer);
                log::info!(
                    "peer {} at {addr} left ({reason}); {files} entries being withdrawn",
                    peer.0
                );
            }
            SessionState::AwaitingHello => {
                log::debug!("connection from {remote} closed before hello ({reason})");
            }
            SessionState::Probe(_) => {}
        }
    }
}

/// The reactor side: a thin layer that hands each input to the sans-IO methods above, which
/// encode their answers straight into the connection's output buffer.
impl Handler for IndexServer {
    type Conn = Session;

    fn handle_wake(&mut self, ctx: &mut Ctx<Session>) {
        if self
            .shutdown
            .as_ref()
            .is_some_and(|f| f.load(Ordering::SeqCst))
        {
            log::info!(
                "shutting down: {} connections, {} files",
                ctx.connection_count(),
                self.index.file_count()
            );
            self.leave_cluster();
            ctx.stop();
            return;
        }
        worktrace::time("cluster wake", || self.cluster_turn(ctx, false));
    }

    fn handle_accept(
        &mut self,
        ctx: &mut Ctx<Session>,
        conn: ConnId,
        remote: SocketAddr,
    ) -> Session {
        if let Some(frame) = self.ban_refusal(remote) {
            ctx.send(conn, |out| out.extend_from_slice(&frame));
            ctx.close_after_flush(conn, CloseReason::Protocol("banned: rate limits".into()));
        }
        self.accept(remote)
    }

    fn handle_connected(
        &mut self,
        ctx: &mut Ctx<Session>,
        conn: ConnId,
        session: &mut Session,
    ) -> Verdict {
        self.probe_connected(ctx, conn, session);
        Verdict::Continue
    }

    fn handle_frame(
        &mut self,
        ctx: &mut Ctx<Session>,
        conn: ConnId,
        session: &mut Session,
        payload: &[u8],
    ) -> Verdict {
        if let SessionState::Probe(_) = session.state {
            return self.probe_frame(session, payload);
        }
        if wire::is_stats_request(payload) {
            self.set_loop_pauses(ctx.loop_pauses().summary());
        }
        let mut verdict = Verdict::Continue;
        self.current_conn = Some(conn);
        ctx.send(conn, |out| {
            verdict = self.handle_payload(session, payload, out)
        });
        self.after_frame(ctx, conn, &verdict);
        self.push_turn(ctx);
        verdict
    }

    fn handle_bad_frame(
        &mut self,
        ctx: &mut Ctx<Session>,
        conn: ConnId,
        session: &mut Session,
        error: FrameError,
    ) -> Verdict {
        let mut verdict = Verdict::Close(CloseReason::Frame(error.clone()));
        if let SessionState::Probe(_) = session.state {
            return verdict;
        }
        ctx.send(conn, |out| {
            verdict = self.handle_framing_error(session, error, out)
        });
        verdict
    }

    fn handle_close(
        &mut self,
        ctx: &mut Ctx<Session>,
        conn: ConnId,
        session: Session,
        reason: &CloseReason,
    ) {
        if let SessionState::Probe(_) = session.state {
            return self.probe_closed(ctx, conn, session);
        }
        self.close(session, reason);
    }

    fn handle_timer(&mut self, ctx: &mut Ctx<Session>, timer: u64) {
        if timer == push::PUSH_TIMER {
            self.push_timer(ctx);
        } else if timer == cluster::CLUSTER_TIMER {
            self.cluster_timer(ctx);
        }
    }

    fn handle_turn_end(&mut self, ctx: &mut Ctx<Session>) {
        worktrace::time("cluster turn", || self.cluster_turn(ctx, true));
        // What `settle` does, within the turn's work target: what is left of it is background
        // work for the next turns (and any request that reads the index finishes it first).
        let deadline = ctx.now() + TURN_WORK_TARGET;
        self.index
            .post_pending_until(|| std::time::Instant::now() >= deadline);
        worktrace::time("turn end", || self.turn_end(ctx));
        worktrace::end_turn();
    }

    fn handle_http_get(&mut self, ctx: &mut Ctx<Session>, path: &str) -> Option<HttpBody> {
        if path != "/metrics" {
            return None;
        }
        let counts = self.limiter.counts();
        self.metrics.rate_limited = counts.rate_limited;
        self.metrics.banned = counts.bans;
        Some(HttpBody {
            content_type: crate::metrics::CONTENT_TYPE,
            body: worktrace::time("metrics", || metrics::render(self, ctx)).into_bytes(),
        })
    }
}

/// A name from the network, safe to print on one log line.
fn printable(s: &str) -> String {
    const MAX_CHARS: usize = 120;
    let mut out: String = s
        .chars()
        .take(MAX_CHARS)
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect();
    if s.chars().count() > MAX_CHARS {
        out.push('…');
    }
    out
}

/// Fuzzing entry point (`fuzz/fuzz_targets/index_server.rs`): drives the sans-IO server with a
/// script of accepts, closes, raw payloads, well-formed requests and framing errors on a few
/// interleaved connections, checking after every step that each input got decodable answers
/// and the counters match the open sessions, and at the end, once every connection is closed,
/// that the index is empty (soft state).
#[doc(hidden)]
pub fn fuzz_sessions(data: &[u8]) {
    const CONNS: usize = 4;
    let mut server = IndexServer::new(ServerLimits {
        max_results: 8,
        max_files_per_peer: 16,
        max_holdings: 40,
        // Every fuzzed session is at one address.
        max_holdings_per_address: 24,
        max_lookup_files: 3,
        max_lookup_holders: 2,
    });
    let mut sessions: [Option<Session>; CONNS] = Default::default();
    let mut ready = [false; CONNS];
    let mut script = fuzz_script::Script(data);
    while let Some(op) = script.byte() {
        let c = usize::from(op >> 3) % CONNS;
        let mut out = Vec::new();
        let verdict = match (op & 7, &mut sessions[c]) {
            (0, None) => {
                let remote = SocketAddr::from(([10, 0, 0, c as u8], 1000 + c as u16));
                sessions[c] = Some(server.accept(remote));
                continue;
            }
            (1, session @ Some(_)) => {
                server.close(session.take().unwrap(), &CloseReason::Eof);
                ready[c] = false;
                continue;
            }
            (2, Some(session)) => {
                let len = usize::from(script.byte().unwrap_or(0));
                let payload = script.bytes(len);
                server.handle_payload(session, payload, &mut out)
            }
            (3, Some(session)) => {
                server.handle_framing_error(session, FrameError::BadTerminator, &mut out)
            }
            (4..=7, Some(session)) => {
                let req = Request {
                    id: u32::from(op),
                    body: script.request(),
                };
                server.handle_payload(session, &wire::to_payload(&req), &mut out)
            }
            _ => continue,
        };
        // Every input is answered with whole frames holding responses.
        let (frames, used) = crate::codec::decode_all(&mut crate::codec::Decoder::default(), &out)
            .expect("the server writes valid frames");
        assert_eq!(used, out.len());
        assert!(!frames.is_empty(), "every input gets an answer");
        for f in &frames {
            let resp: Response = wire::decode(f).expect("the server writes valid responses");
            match resp.body {
                ResponseBody::Welcome { .. } => ready[c] = true,
                ResponseBody::SearchResults { hits, .. } => assert!(hits.len() <= 8),
                ResponseBody::Holders { files, total, .. } => {
                    assert!(files.len() <= 3 && files.len() as u64 <= total);
                    assert!(files
                        .iter()
                        .all(|f| f.holders.len() <= f.holder_count as usize));
                }
                _ => {}
            }
        }
        if verdict != Verdict::Continue {
            if let Some(session) = sessions[c].take() {
                server.close(session, &CloseReason::Local);
            }
            ready[c] = false;
        }
        let stats = server.current_stats();
        assert_eq!(
            stats.connections,
            sessions.iter().filter(|s| s.is_some()).count() as u64
        );
        assert_eq!(stats.peers, ready.iter().filter(|r| **r).count() as u64);
    }
    for session in sessions.into_iter().flatten() {
        server.close(session, &CloseReason::Eof);
    }
    // Departures are withdrawn in slices; finish them.
    assert!(server.finish_background().is_empty());
    let stats = server.current_stats();
    assert_eq!((stats.connections, stats.peers), (0, 0));
    assert_eq!(server.index().file_count(), 0);
    assert_eq!(server.index().entry_count(), 0);
    assert!(server.address_holdings.is_empty());
}

/// Turns fuzzer bytes into requests for [`fuzz_sessions`]: small hash and size spaces so that
/// collisions (same hash from two peers, conflicting sizes) are common.
mod fuzz_script {
    use crate::wire::{
        FileEntry, FileHash, LookupKey, LookupToken, RequestBody, SearchCursor, SearchFilter,
        PROTOCOL_VERSION,
    };

    const NAMES: [&str; 8] = [
        "a",
        "Zebra_Crossing-Live 1999.flac",
        "a\r\r\nb",
        "",
        "ünïcødé 名前.txt",
        "x y z x",
        "..",
        "zebra",
    ];

    pub struct Script<'a>(pub &'a [u8]);

    impl<'a> Script<'a> {
        pub fn byte(&mut self) -> Option<u8> {
            let (&b, rest) = self.0.split_first()?;
            self.0 = rest;
            Some(b)
        }

        fn b(&mut self) -> u8 {
            self.byte().unwrap_or(0)
        }

        pub fn bytes(&mut self, n: usize) -> &'a [u8] {
            let (head, rest) = self.0.split_at(n.min(self.0.len()));
            self.0 = rest;
            head
        }

        fn hash(&mut self) -> FileHash {
            let mut h = [0u8; 32];
            h[0] = self.b() % 16;
            h[31] = 0x5a;
            FileHash(h)
        }

        fn text(&mut self) -> String {
            let b = self.b();
            if b & 0x80 != 0 {
                let n = usize::from(b & 0x3f);
                String::from_utf8_lossy(self.bytes(n)).into_owned()
            } else {
                NAMES[usize::from(b) % NAMES.len()].to_string()
            }
        }

        pub fn request(&mut self) -> RequestBody {
            match self.b() % 9 {
                0 => {
                    let v = self.b();
                    RequestBody::Hello {
                        version: if v == 0xff { 99 } else { PROTOCOL_VERSION },
                        listen_port: u16::from(v % 4) * 1000,
                        agent: self.text(),
                    }
                }
                1 | 2 => {
                    let n = usize::from(self.b() % 24);
                    let files = (0..n)
                        .map(|_| FileEntry {
                            hash: self.hash(),
                            size: u64::from(self.b() % 4),
                            name: self.text(),
                        })
                        .collect();
                    RequestBody::Register { files }
                }
                3 => {
                    let n = usize::from(self.b() % 8);
                    let hashes = (0..n).map(|_| self.hash()).collect();
                    RequestBody::Unregister { hashes }
                }
                4 => RequestBody::Search {
                    query: self.text(),
                    limit: u32::from(self.b()),
                    filter: SearchFilter {
                        min_holders: u32::from(self.b() % 3),
                        ..SearchFilter::default()
                    },
                    after: (self.b() % 4 == 0).then(|| SearchCursor {
                        whole: self.b(),
                        key: u32::from(self.b()) << 24 | u32::from(self.b()),
                        check: u32::from(self.b()),
                    }),
                },
                5 => {
                    let key = match self.b() % 3 {
                        0 => LookupKey::Hash(self.hash()),
                        1 => {
                            let hex = self.hash().to_hex();
                            let n = usize::from(self.b() % 70);
                            LookupKey::HashPrefix(hex[..n.min(64)].to_string())
                        }
                        _ => LookupKey::Name(self.text()),
                    };
                    let after = match self.b() {
                        0..=199 => None,
                        b => Some(LookupToken((u128::from(b) << 96) | u128::from(self.b()))),
                    };
                    RequestBody::Lookup { key, after }
                }
                6 => RequestBody::Ping,
                7 => RequestBody::Stats,
                _ => RequestBody::Bye,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{decode_all, Decoder};
    use crate::wire::{FileEntry, FileHash, SearchFilter};

    /// Sends one request through the sans-IO server and returns its answers.
    fn call(
        server: &mut IndexServer,
        session: &mut Session,
        id: u32,
        body: RequestBody,
    ) -> (Vec<Response>, Verdict) {
        let mut out = Vec::new();
        let payload = wire::to_payload(&Request { id, body });
        let verdict = server.handle_payload(session, &payload, &mut out);
        let (frames, used) = decode_all(&mut Decoder::default(), &out).unwrap();
        assert_eq!(used, out.len());
        let responses = frames.iter().map(|f| wire::decode(f).unwrap()).collect();
        (responses, verdict)
    }

    /// A session that said hello from a peer serving on `port`.
    fn join(server: &mut IndexServer, port: u16) -> Session {
        join_from(server, [127, 0, 0, 1], port)
    }

    fn join_from(server: &mut IndexServer, ip: [u8; 4], port: u16) -> Session {
        let mut session = server.accept(SocketAddr::from((ip, port)));
        let hello = RequestBody::Hello {
            version: PROTOCOL_VERSION,
            listen_port: port,
            agent: "t".into(),
        };
        assert!(matches!(
            call(server, &mut session, 0, hello).0[0].body,
            ResponseBody::Welcome { .. }
        ));
        session
    }

    fn register(
        server: &mut IndexServer,
        session: &mut Session,
        files: Vec<FileEntry>,
    ) -> ResponseBody {
        call(server, session, 1, RequestBody::Register { files }).0[0]
            .body
            .clone()
    }

    /// `n` files of one byte named `TAG i`, each of its own content.
    pub(super) fn distinct_files(tag: &str, n: usize) -> Vec<FileEntry> {
        (0..n)
            .map(|i| FileEntry {
                hash: FileHash::of(format!("{tag} {i}").as_bytes()),
                size: 1,
                name: format!("{tag} {i}"),
            })
            .collect()
    }

    #[test]
    fn holdings_are_limited_per_address_whatever_the_sessions() {
        let mut server = IndexServer::new(ServerLimits {
            max_holdings_per_address: 30,
            ..ServerLimits::default()
        });
        let files = distinct_files;
        let added = |answer: ResponseBody| match answer {
            ResponseBody::Registered { added, .. } => added,
            other => panic!("{other:?}"),
        };
        let mut a = join_from(&mut server, [10, 0, 0, 1], 7001);
        let mut b = join_from(&mut server, [10, 0, 0, 1], 7002);
        let mut c = join_from(&mut server, [10, 0, 0, 2], 7003);
        assert_eq!(added(register(&mut server, &mut a, files("a", 20))), 20);
        // Another session of the same host gets what is left of the host's share.
        assert_eq!(added(register(&mut server, &mut b, files("b", 20))), 10);
        // Another host is not affected.
        assert_eq!(added(register(&mut server, &mut c, files("c", 20))), 20);
        // What a session withdraws, or takes away when it leaves, frees the host's room.
        let (answer, _) = call(
            &mut server,
            &mut a,
            9,
            RequestBody::Unregister {
                hashes: files("a", 5).iter().map(|f| f.hash).collect(),
            },
        );
        assert!(matches!(
            answer[0].body,
            ResponseBody::Unregistered { removed: 5, .. }
        ));
        assert_eq!(added(register(&mut server, &mut b, files("b2", 20))), 5);
        server.close(a, &CloseReason::Eof);
        assert_eq!(added(register(&mut server, &mut b, files("b3", 20))), 15);
        server.close(b, &CloseReason::Eof);
        server.close(c, &CloseReason::Eof);
        assert!(server.address_holdings.is_empty());
    }

    #[test]
    fn holdings_are_limited_per_peer_and_in_all() {
        let mut server = IndexServer::new(ServerLimits {
            max_results: 100,
            max_files_per_peer: 16,
            max_holdings: 40,
            ..ServerLimits::default()
        });
        let mut a = join(&mut server, 7001);
        let mut b = join(&mut server, 7002);
        let mut c = join(&mut server, 7003);
        // One hash under 20 names is 20 entries: the per-peer limit counts entries, not hashes.
        let same_bytes = |n: usize| -> Vec<FileEntry> {
            (0..n)
                .map(|i| FileEntry {
                    hash: FileHash::of(b"one file"),
                    size: 8,
                    name: format!("alias {i}"),
                })
                .collect()
        };
        let many = distinct_files;
        let registered = |added, rejected, total| ResponseBody::Registered {
            added,
            rejected,
            total,
        };
        assert_eq!(
            register(&mut server, &mut a, same_bytes(20)),
            registered(16, 4, 1)
        );
        // The same 16 entries again from another peer: no new entry, but 16 new holdings,
        // which the index-wide limit counts (peers sharing one file list still cost memory).
        assert_eq!(
            register(&mut server, &mut b, same_bytes(16)),
            registered(16, 0, 1)
        );
        assert_eq!(
            register(&mut server, &mut c, same_bytes(12)),
            registered(8, 4, 1)
        );
        // Full: what a peer holds already is no burden and not refused; anything new is.
        assert_eq!(
            register(&mut server, &mut c, same_bytes(8)),
            registered(0, 0, 1)
        );
        assert_eq!(
            register(&mut server, &mut c, many("d", 1)),
            registered(0, 1, 1)
        );
        let stats = server.current_stats();
        assert_eq!(stats.names, 16);
        // Room again once a peer leaves.
        server.close(b, &CloseReason::Eof);
        server.finish_background();
        assert_eq!(
            register(&mut server, &mut c, many("d", 1)),
            registered(1, 0, 2)
        );
    }

    #[test]
    fn a_portless_peer_registers_nothing_whatever_the_frames_size() {
        let mut server = IndexServer::new(ServerLimits::default());
        let mut portless = join(&mut server, 0);
        // Small (decoded borrowed), the usual decode's size (up to 16 KiB), and a big frame
        // (its entries decoded lazily, its `files` empty).
        for n in [1, 100, 1000] {
            let files = distinct_files(&format!("portless{n}"), n);
            let payload = wire::to_payload(&Request {
                id: 1,
                body: RequestBody::Register {
                    files: files.clone(),
                },
            });
            assert_eq!(
                payload.len() > super::LAZY_REGISTER_BYTES,
                n == 1000,
                "{n}: {}",
                payload.len()
            );
            match register(&mut server, &mut portless, files) {
                ResponseBody::Error {
                    code: ErrorCode::Invalid,
                    ..
                } => {}
                other => panic!("{n}: {other:?}"),
            }
            assert_eq!(server.index().file_count(), 0, "{n}");
        }
    }

    #[test]
    fn a_session_without_sockets() {
        let mut server = IndexServer::new(ServerLimits::default());
        let mut session = server.accept("10.1.2.3:5555".parse().unwrap());
        let (r, v) = call(&mut server, &mut session, 1, RequestBody::Ping);
        assert!(matches!(v, Verdict::CloseAfterFlush(_)));
        assert!(matches!(
            r[0].body,
            ResponseBody::Error {
                code: ErrorCode::NotReady,
                ..
            }
        ));
        server.close(session, &CloseReason::Local);

        let mut session = server.accept("10.1.2.3:5555".parse().unwrap());
        let hello = RequestBody::Hello {
            version: PROTOCOL_VERSION,
            listen_port: 7000,
            agent: "t".into(),
        };
        let (r, v) = call(&mut server, &mut session, 1, hello);
        assert_eq!(v, Verdict::Continue);
        let ResponseBody::Welcome { observed, .. } = r[0].body else {
            panic!("{r:?}")
        };
        assert_eq!(observed, "10.1.2.3:7000".parse().unwrap());
        let files = vec![FileEntry {
            hash: FileHash::of(b"x"),
            size: 1,
            name: "Zebra_Crossing-Live 1999.flac".into(),
        }];
        call(
            &mut server,
            &mut session,
            2,
            RequestBody::Register { files },
        );
        // Answered before its words were posted; the next reader still sees them.
        assert!(server.index().has_pending());
        let name = LookupKey::Name("Zebra_Crossing-Live 1999.flac".into());
        let (r, _) = call(
            &mut server,
            &mut session,
            3,
            RequestBody::Lookup {
                key: name,
                after: None,
            },
        );
        assert!(
            matches!(&r[0].body, ResponseBody::Holders { files, total: 1, next: None, .. } if files.len() == 1)
        );
        assert!(!server.index().has_pending());
        server.settle();
        let (r, _) = call(
            &mut server,
            &mut session,
            3,
            RequestBody::Search {
                query: "zeb cross".into(),
                limit: 0,
                filter: SearchFilter::default(),
                after: None,
            },
        );
        assert_eq!(r[0].id, 3);
        let ResponseBody::SearchResults { hits, .. } = &r[0].body else {
            panic!("{r:?}")
        };
        assert_eq!(hits.len(), 1);
        assert_eq!(server.current_stats().connections, 1);
        server.close(session, &CloseReason::Eof);
        server.finish_background();
        assert_eq!(server.index().file_count(), 0);
        assert_eq!(server.current_stats().connections, 0);
    }

    /// Asks for every page of name `name`; returns the pages.
    fn all_pages(
        server: &mut IndexServer,
        session: &mut Session,
        name: &str,
    ) -> Vec<(Vec<wire::HeldFile>, u64)> {
        let mut pages = Vec::new();
        let mut after = None;
        loop {
            let key = LookupKey::Name(name.into());
            let (r, v) = call(server, session, 9, RequestBody::Lookup { key, after });
            assert_eq!(v, Verdict::Continue);
            let ResponseBody::Holders {
                files, total, next, ..
            } = r[0].body.clone()
            else {
                panic!("{r:?}")
            };
            pages.push((files, total));
            match next {
                Some(token) => after = Some(token),
                None => return pages,
            }
        }
    }

    #[test]
    fn a_name_of_many_files_comes_in_capped_pages_best_first() {
        let mut server = IndexServer::new(ServerLimits {
            max_lookup_files: 4,
            max_lookup_holders: 2,
            ..ServerLimits::default()
        });
        let mut peers: Vec<Session> = (0..3).map(|i| join(&mut server, 7000 + i)).collect();
        // 10 files called "copyright"; file i is held by i % 3 + 1 peers.
        for (k, p) in peers.iter_mut().enumerate() {
            let files = (0..10u32)
                .filter(|i| *i as usize % 3 >= k)
                .map(|i| FileEntry {
                    hash: FileHash::of(&i.to_le_bytes()),
                    size: 1,
                    name: "copyright".into(),
                })
                .collect();
            register(&mut server, p, files);
        }
        let pages = all_pages(&mut server, &mut peers[0], "copyright");
        assert_eq!(pages.len(), 3);
        let files: Vec<&wire::HeldFile> = pages.iter().flat_map(|(f, _)| f).collect();
        assert!(pages.iter().all(|(f, total)| f.len() <= 4 && *total == 10));
        assert_eq!(files.len(), 10);
        let mut hashes: Vec<FileHash> = files.iter().map(|f| f.hash).collect();
        hashes.sort();
        hashes.dedup();
        assert_eq!(hashes.len(), 10, "each file once");
        let counts: Vec<u32> = files.iter().map(|f| f.holder_count).collect();
        assert_eq!(counts, [3, 3, 3, 2, 2, 2, 1, 1, 1, 1]);
        assert!(files
            .iter()
            .all(|f| f.holders.len() == f.holder_count.min(2) as usize));
        for w in files.windows(2) {
            if w[0].holder_count == w[1].holder_count {
                assert!(w[0].hash < w[1].hash, "ties by hash");
            }
        }
        // A token belongs to a lookup by name.
        let key = LookupKey::Hash(files[0].hash);
        let after = Some(LookupToken(5));
        let (r, v) = call(
            &mut server,
            &mut peers[0],
            3,
            RequestBody::Lookup { key, after },
        );
        assert_eq!(v, Verdict::Continue);
        assert!(matches!(
            r[0].body,
            ResponseBody::Error {
                code: ErrorCode::Invalid,
                ..
            }
        ));
        // A forged token is a position like any other.
        let key = LookupKey::Name("copyright".into());
        let after = Some(LookupToken(u128::MAX));
        let (r, _) = call(
            &mut server,
            &mut peers[0],
            4,
            RequestBody::Lookup { key, after },
        );
        assert!(matches!(
            &r[0].body,
            ResponseBody::Holders { files, total: 10, next: None, .. } if files.is_empty()
        ));
    }

    #[test]
    fn the_largest_lookup_page_is_far_under_the_peers_frame_limit() {
        // Names of the longest length, in 4-byte characters; IPv6 holders; every number at
        // its longest varint.
        let name: String = "𝄞".repeat(crate::index::store::MAX_NAME_BYTES / 4);
        assert_eq!(name.len(), crate::index::store::MAX_NAME_BYTES);
        let holder: SocketAddr = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"
            .parse()
            .unwrap();
        let file = wire::HeldFile {
            hash: FileHash([0xff; 32]),
            size: u64::MAX,
            name,
            holders: vec![holder; LOOKUP_HOLDERS_MAX],
            holder_count: u32::MAX,
        };
        let page = Response {
            id: u32::MAX,
            body: ResponseBody::Holders {
                files: vec![file; LOOKUP_FILES_MAX],
                total: u64::MAX,
                next: Some(LookupToken(u128::MAX)),
                // Every holder listed, each another address, and every one firewalled.
                firewalled: (0..LOOKUP_FILES_MAX * LOOKUP_HOLDERS_MAX)
                    .map(|i| {
                        SocketAddr::new(
                            std::net::Ipv6Addr::from(u128::MAX - i as u128).into(),
                            65535,
                        )
                    })
                    .collect(),
            },
        };
        let mut out = Vec::new();
        wire::encode_frame(&page, &mut out);
        assert!(out.len() < 768 * 1024, "{} bytes", out.len());
        assert!(out.len() < crate::reactor::Config::default().out_high_water);
    }

    #[test]
    fn stats_carry_the_loop_pauses_passed_in() {
        let mut server = IndexServer::new(ServerLimits::default());
        let mut session = join(&mut server, 7000);
        server.set_loop_pauses(PauseSummary {
            turns: 10,
            max_us: 900,
            p99_us: 40,
            p999_us: 800,
        });
        let (r, _) = call(&mut server, &mut session, 1, RequestBody::Stats);
        let ResponseBody::Stats(stats) = &r[0].body else {
            panic!("{r:?}")
        };
        assert_eq!(
            (
                stats.loop_turns,
                stats.loop_max_pause_us,
                stats.loop_p99_pause_us,
                stats.loop_p999_pause_us
            ),
            (10, 900, 40, 800)
        );
        // The search and the lookup before it were timed.
        let search = RequestBody::Search {
            query: "x".into(),
            limit: 0,
            filter: SearchFilter::default(),
            after: None,
        };
        call(&mut server, &mut session, 2, search);
        let key = LookupKey::Name("x".into());
        call(
            &mut server,
            &mut session,
            3,
            RequestBody::Lookup { key, after: None },
        );
        let (r, _) = call(&mut server, &mut session, 4, RequestBody::Stats);
        let ResponseBody::Stats(stats) = &r[0].body else {
            panic!("{r:?}")
        };
        assert!(stats.search_max_ns > 0 && stats.search_p99_ns <= stats.search_max_ns);
        assert!(stats.lookup_max_ns > 0 && stats.lookup_p99_ns <= stats.lookup_max_ns);
    }

    #[test]
    fn small_registers_decoded_borrowed_answer_as_owned_ones_do() {
        // A slice of entries is decoded with borrowed names, one more the owned way: the
        // answers, the index and a malformed frame's error are the same.
        let mut server = IndexServer::new(ServerLimits::default());
        let mut a = join(&mut server, 7001);
        let mut b = join(&mut server, 7002);
        let with_bad = |tag: &str, n: usize| {
            let mut files = distinct_files(tag, n);
            files[1].name = "a/b".into();
            files[2].name = String::new();
            files[3].size = u64::MAX;
            files
        };
        let small = register(&mut server, &mut a, with_bad("small", SLICE_UNITS));
        let big = register(&mut server, &mut b, with_bad("big", SLICE_UNITS + 1));
        let outcome = |added, total| ResponseBody::Registered {
            added,
            rejected: 3,
            total,
        };
        let n = SLICE_UNITS as u32;
        assert_eq!(small, outcome(n - 3, n - 3));
        assert_eq!(big, outcome(n - 2, n - 2));
        // Again: every entry held, no-ops.
        let again = register(&mut server, &mut a, with_bad("small", SLICE_UNITS));
        assert_eq!(
            again,
            ResponseBody::Registered {
                added: 0,
                rejected: 3,
                total: n - 3
            }
        );
        // The entries' names are the frame's, searchable as any.
        server.settle();
        assert_eq!(server.index().entry_count(), 2 * SLICE_UNITS - 5);
        let (answers, _) = call(
            &mut server,
            &mut b,
            5,
            RequestBody::Search {
                query: "small".into(),
                limit: 0,
                filter: SearchFilter::default(),
                after: None,
            },
        );
        let ResponseBody::SearchResults { total, .. } = &answers[0].body else {
            panic!("{answers:?}");
        };
        assert_eq!(*total, u64::from(n - 3));
        // A truncated small register: the usual decode's error, and a close.
        let payload = wire::to_payload(&Request {
            id: 9,
            body: RequestBody::Register {
                files: distinct_files("cut", 3),
            },
        });
        let mut out = Vec::new();
        let v = server.handle_payload(&mut a, &payload[..payload.len() - 1], &mut out);
        assert!(matches!(v, Verdict::CloseAfterFlush(_)));
        let (frames, _) = decode_all(&mut Decoder::default(), &out).unwrap();
        let answer: Response = wire::decode(&frames[0]).unwrap();
        assert!(
            matches!(
                answer.body,
                ResponseBody::Error {
                    code: ErrorCode::Malformed,
                    ..
                }
            ),
            "{answer:?}"
        );
    }

    #[test]
    fn garbage_payloads_get_an_error_and_a_close() {
        let mut server = IndexServer::new(ServerLimits::default());
        for payload in [&b""[..], b"\xff\xff\xff\xff\xff\xff", b"\x01\x09"] {
            let mut session = server.accept("127.0.0.1:1".parse().unwrap());
            let mut out = Vec::new();
            let v = server.handle_payload(&mut session, payload, &mut out);
            assert!(matches!(v, Verdict::CloseAfterFlush(_)), "{payload:?}");
            assert!(!out.is_empty());
        }
    }
}
