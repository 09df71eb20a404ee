//! Rate limits and temporary bans of indexd: token buckets charged with the work requests
//! actually cost, and a ban for an address that keeps running into them. Sans-IO: every
//! method takes `now`, so tests run on virtual time.
//!
//! # Accounting
//! Work is counted in *units*, the search's own (about a posting read, some nanoseconds; see
//! `store/search.rs`); the first [`FREE_UNITS`] of every request are free. A request is admitted if its session's bucket for its kind
//! ([`Kind`]) and, for searches and lookups, its address's shared bucket are not in debt;
//! once answered, it is charged what it really cost: the larger of its counted work
//! ([`search_cost`], [`lookup_cost`], one unit per register or unregister entry) and its
//! server time beyond [`FREE_TIME`] at [`NS_PER_UNIT`] a unit ([`units_of_time`]; the server
//! times each request, answer included), which may drive a bucket into debt. Buckets refill
//! at their rate up to their burst. So a client pays for the work it caused, however
//! expensive one request turned out, and a client in debt is refused until it has paid it
//! off: the refusal ([`Refusal`]) says in how many milliseconds, and costs the server a
//! decode and a small answer.
//!
//! # Registers, and the cluster's stream
//! Registers and unregisters are charged per entry sent, big ones (answered by a job, in
//! slices) included, to their session's bucket and to their address's (shared by all its
//! sessions: [`RateLimits::register_address_per_s`]). In cluster mode each one is also a
//! record on the cluster's stream, durable until its session ends or is compacted, so none
//! of it is free and it is charged the larger of its entries and its stream units: its
//! frame's bytes plus a record's overhead, [`STREAM_BYTES_PER_UNIT`] bytes a unit
//! ([`stream_units`]). One session or address churning registers and unregisters thus
//! writes the stream at most at its register rate times that many bytes a second.
//!
//! # Counted requests
//! Pushes and reachability asks ([`Counted`]) cost the server little to decode but make it
//! do something for others (relay a notice to a holder, probe a port), so they are limited
//! by number, not work: each admitted one takes a token from its session's bucket and from
//! its address's, checked and charged at once by [`Limiter::admit_counted`]. The address
//! bucket is what keeps a few hosts' many sessions from spending the index-wide push budget
//! (`server/push.rs`) or filling the probe queue.
//!
//! # Addresses and bans
//! An address is an IPv4 address (IPv4-mapped IPv6 included) or an IPv6 /64, as the reactor
//! groups its per-source connection limits: one host opening 256 connections shares one
//! address bucket. Each refusal takes a token from the address's *strike* bucket (capacity
//! `ban_after`, refilled at `ban_after` per `ban_window`); an address that empties it is banned
//! for `ban_for`: the refused request's connection is closed after its answer, every further
//! request of that address is answered with a ban and closed, and its new connections are
//! refused at accept, until the ban expires by itself. A client that waits as told between
//! refusals is never banned.
//!
//! # In a cluster
//! An address may have sessions at every node, so a budget per address kept per node would
//! give it N times the budget over N nodes. The per-address budgets of what reaches the
//! whole cluster (registers and unregisters, written to the shared stream; pushes, which
//! make other nodes' holders act; reachability asks) are split: each node takes 1/N of the
//! rate and of the burst ([`Limiter::set_nodes`], N the live nodes of the liveness bucket,
//! at least 1; at least 1 a second when the budget is on), so an address spread over every
//! node gets the budget in all, and one that uses one node gets 1/N of it. The search and
//! lookup budget per address stays whole at each node: each node answers its own reads with
//! its own CPU, which is what that budget protects.
//!
//! # Invariants
//! - A setting of 0 switches that limit off (a bucket of rate 0 is never charged or checked;
//!   `ban_after` 0 never bans).
//! - Address records are kept while the address has a session, is banned or is in debt or
//!   short of strikes; others are dropped by a periodic sweep, so the table is bounded by
//!   the addresses recently seen.

use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Units counted for any search or lookup besides the work it reports: decoding, answering.
pub const BASE_UNITS: u64 = 16;
/// Units of every request that are not charged: a request that costs no more than this (a
/// lookup by hash, a search of a rare word, a register of a few files) is as cheap as a
/// ping, and a flood of those is kept fair by the reactor's per-turn shares, not here. So
/// the limits weigh on expensive work only, and a benchmark of cheap requests never meets
/// them.
pub const FREE_UNITS: u64 = 32;
/// Units per file of a lookup's answer (reading its record and name).
pub const FILE_UNITS: u64 = 8;

/// Nanoseconds of server time a work unit stands for (a search's budget of 32,768 units is
/// about half a millisecond).
pub const NS_PER_UNIT: u64 = 16;

/// Server time of a request that is never charged: cheap requests (a lookup by hash takes a
/// microsecond or two) stay free however many are sent (floods of them are the reactor's
/// per-turn shares' business), and a stray delay (a page fault, a preemption) costs nothing.
pub const FREE_TIME: Duration = Duration::from_micros(20);

/// The units `spent` of server time is worth beyond [`FREE_TIME`]: a request is charged the
/// larger of its reported work and this.
pub fn units_of_time(spent: Duration) -> u64 {
    let charged = spent.saturating_sub(FREE_TIME).as_nanos() / u128::from(NS_PER_UNIT);
    charged.min(u128::from(u64::MAX)) as u64
}

/// Bytes of the cluster's stream a register unit stands for (an entry of a short name
/// takes about that: its hash, size and name, and its share of the record).
pub const STREAM_BYTES_PER_UNIT: u64 = 64;

/// The stream units of a register or unregister frame of `payload_bytes` (cluster mode):
/// about the bytes its records take on the stream (the entries as the frame carries them,
/// plus [`RECORD_OVERHEAD_BYTES`](crate::index::cluster::RECORD_OVERHEAD_BYTES) for its
/// record), over [`STREAM_BYTES_PER_UNIT`].
pub fn stream_units(payload_bytes: usize) -> u64 {
    let bytes = payload_bytes + crate::index::cluster::RECORD_OVERHEAD_BYTES;
    (bytes as u64).div_ceil(STREAM_BYTES_PER_UNIT)
}

/// What a search cost: the work units it reports.
pub fn search_cost(work: u64) -> u64 {
    BASE_UNITS + work
}

/// What a lookup cost: its files and the holders it listed.
pub fn lookup_cost(files: u64, holders: u64) -> u64 {
    BASE_UNITS + files * FILE_UNITS + holders
}

/// The kinds of request that are charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Keyword searches.
    Search,
    /// Lookups by hash, prefix or name.
    Lookup,
    /// Registers and unregisters, charged per entry.
    Register,
}

/// Requests limited by number (see "Counted requests" in the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counted {
    /// Push requests.
    Push,
    /// Reachability asks.
    Reachability,
}

/// The limits; 0 anywhere switches that limit off.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// Search units per second per session (burst: [`RateLimits::BURST_SECONDS`] of it).
    pub search_per_s: u64,
    /// Lookup units per second per session.
    pub lookup_per_s: u64,
    /// Register and unregister entries per second per session.
    pub register_per_s: u64,
    /// Burst of the register bucket, in entries (a peer's whole share at once); also the
    /// address's.
    pub register_burst: u64,
    /// Register and unregister entries (in cluster mode: stream units, see the module docs)
    /// per second per address, shared by all its sessions.
    pub register_address_per_s: u64,
    /// Search and lookup units per second per address (IPv4 address, IPv6 /64), shared by
    /// all its sessions.
    pub address_per_s: u64,
    /// Pushes per second one session may ask (burst: `push_burst`).
    pub push_per_s: u64,
    /// See `push_per_s`.
    pub push_burst: u64,
    /// Pushes per second per address, shared by all its sessions (burst:
    /// [`RateLimits::BURST_SECONDS`] of it).
    pub push_address_per_s: u64,
    /// Reachability asks per second per address, shared by all its sessions (burst:
    /// [`RateLimits::BURST_SECONDS`] of it). A session is probed once however often it
    /// asks; its own asks are bounded by [`REACHABILITY_SESSION_BURST`].
    pub reachability_address_per_s: u64,
    /// Refusals an address may collect within `ban_window` before it is banned.
    pub ban_after: u64,
    /// See `ban_after`.
    pub ban_window: Duration,
    /// How long a ban lasts.
    pub ban_for: Duration,
}

impl RateLimits {
    /// A bucket's burst, in seconds of its rate (register: [`RateLimits::register_burst`]).
    pub const BURST_SECONDS: u64 = 2;

    /// No limit at all.
    pub fn off() -> RateLimits {
        RateLimits {
            search_per_s: 0,
            lookup_per_s: 0,
            register_per_s: 0,
            register_burst: 0,
            register_address_per_s: 0,
            address_per_s: 0,
            push_per_s: 0,
            push_burst: 0,
            push_address_per_s: 0,
            reachability_address_per_s: 0,
            ban_after: 0,
            ban_window: Duration::ZERO,
            ban_for: Duration::ZERO,
        }
    }
}

impl Default for RateLimits {
    /// See README, "Limits and security", for why these numbers.
    fn default() -> Self {
        RateLimits {
            search_per_s: 500_000,
            lookup_per_s: 500_000,
            register_per_s: 200_000,
            register_burst: 2_000_000,
            register_address_per_s: 200_000,
            address_per_s: 2_000_000,
            push_per_s: 2,
            push_burst: 16,
            push_address_per_s: 20,
            reachability_address_per_s: 10,
            ban_after: 1_000,
            ban_window: Duration::from_secs(10),
            ban_for: Duration::from_secs(60),
        }
    }
}

/// Reachability asks one session may make at once, then one a second: a peer asks once
/// per index session (again after a reconnect, which is a new session), so more is a client
/// that misbehaves.
pub const REACHABILITY_SESSION_BURST: u64 = 4;

/// A token bucket that may go into debt. Tokens are kept in milli-units so that slow rates
/// refill smoothly.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    /// Milli-units; negative: in debt.
    level: i64,
    /// Units per second; 0: off.
    rate: u64,
    /// Milli-units at most.
    cap: i64,
    at: Instant,
}

/// `per_s` split over `nodes` nodes: 0 stays 0 (off); else at least 1.
fn share(per_s: u64, nodes: u64) -> u64 {
    if per_s == 0 {
        0
    } else {
        (per_s / nodes.max(1)).max(1)
    }
}

impl Bucket {
    /// A full bucket refilled at `rate` units a second up to `burst` units.
    pub fn new(rate: u64, burst: u64, now: Instant) -> Bucket {
        let cap = burst.saturating_mul(1000).min(i64::MAX as u64 / 2) as i64;
        Bucket {
            level: cap,
            rate,
            cap,
            at: now,
        }
    }

    /// Refills at `rate` a second up to `burst` from `now` on (what it held is kept, up to
    /// the new burst).
    fn set_rate(&mut self, rate: u64, burst: u64, now: Instant) {
        if self.is_on() {
            self.refill(now);
        }
        self.rate = rate;
        self.cap = burst.saturating_mul(1000).min(i64::MAX as u64 / 2) as i64;
        self.level = self.level.min(self.cap);
        self.at = now;
    }

    /// Whether the bucket limits anything.
    pub fn is_on(&self) -> bool {
        self.rate > 0
    }

    fn refill(&mut self, now: Instant) {
        if now <= self.at {
            return;
        }
        let gained = now.duration_since(self.at).as_micros() * u128::from(self.rate) / 1000;
        if gained == 0 && self.level < self.cap {
            // Less than a milli-unit so far: keep counting from `at`, or a slow bucket
            // checked often would never refill.
            return;
        }
        self.level = (self.level as i128 + gained as i128).min(self.cap as i128) as i64;
        self.at = now;
    }

    /// None if the bucket is not in debt (or off); else how long until it is out of it.
    pub fn wait(&mut self, now: Instant) -> Option<Duration> {
        if !self.is_on() {
            return None;
        }
        self.refill(now);
        if self.level >= 0 {
            return None;
        }
        // Milli-units owed over milli-units per ms, rounded up, one ms at least.
        let owed = (-self.level) as u64;
        Some(Duration::from_millis(owed.div_ceil(self.rate).max(1)))
    }

    /// Takes `units` (the bucket may go into debt, at most one burst deep).
    pub fn charge(&mut self, units: u64, now: Instant) {
        if !self.is_on() {
            return;
        }
        self.refill(now);
        let milli = units.saturating_mul(1000).min(i64::MAX as u64 / 4) as i64;
        self.level = (self.level - milli).max(-self.cap.max(milli));
    }

    /// Whether the bucket is empty or in debt.
    fn is_spent(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.level <= 0
    }

    /// Whether the bucket is full (nothing to remember about it).
    fn is_full(&mut self, now: Instant) -> bool {
        self.refill(now);
        self.level >= self.cap
    }
}

/// The rate and burst of an address's split budgets at one of `nodes` nodes (see the module
/// docs).
struct AddressRates {
    registers: (u64, u64),
    pushes: (u64, u64),
    reachability: (u64, u64),
}

impl AddressRates {
    fn of(l: &RateLimits, nodes: u64) -> AddressRates {
        let burst = |per_s: u64| share(per_s, nodes) * RateLimits::BURST_SECONDS;
        AddressRates {
            registers: (
                share(l.register_address_per_s, nodes),
                share(l.register_burst, nodes),
            ),
            pushes: (
                share(l.push_address_per_s, nodes),
                burst(l.push_address_per_s),
            ),
            reachability: (
                share(l.reachability_address_per_s, nodes),
                burst(l.reachability_address_per_s),
            ),
        }
    }
}

/// A session's own buckets, kept in its slot.
#[derive(Debug, Clone)]
pub struct SessionBuckets {
    search: Bucket,
    lookup: Bucket,
    register: Bucket,
    push: Bucket,
    reachability: Bucket,
}

impl SessionBuckets {
    /// Buckets that limit nothing (a connection indexd opened itself: a reachability probe).
    pub fn unlimited(now: Instant) -> SessionBuckets {
        SessionBuckets {
            search: Bucket::new(0, 0, now),
            lookup: Bucket::new(0, 0, now),
            register: Bucket::new(0, 0, now),
            push: Bucket::new(0, 0, now),
            reachability: Bucket::new(0, 0, now),
        }
    }

    fn counted(&mut self, what: Counted) -> &mut Bucket {
        match what {
            Counted::Push => &mut self.push,
            Counted::Reachability => &mut self.reachability,
        }
    }

    fn of(&mut self, kind: Kind) -> &mut Bucket {
        match kind {
            Kind::Search => &mut self.search,
            Kind::Lookup => &mut self.lookup,
            Kind::Register => &mut self.register,
        }
    }
}

/// Where connections come from, for the per-address accounting: an IPv4 address or an IPv6
/// /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Address {
    /// An IPv4 address (IPv4-mapped IPv6 included).
    V4(u32),
    /// The first 64 bits of an IPv6 address.
    V6(u64),
}

impl Address {
    /// The address `ip` is counted under.
    pub fn of(ip: IpAddr) -> Address {
        match ip.to_canonical() {
            IpAddr::V4(a) => Address::V4(u32::from(a)),
            IpAddr::V6(a) => Address::V6((u128::from(a) >> 64) as u64),
        }
    }
}

#[derive(Debug)]
struct AddressRecord {
    sessions: u32,
    queries: Bucket,
    registers: Bucket,
    pushes: Bucket,
    reachability: Bucket,
    strikes: Bucket,
    banned_until: Option<Instant>,
}

impl AddressRecord {
    /// The refusal of every request while the address is banned (a ban that has expired is
    /// forgotten).
    fn ban(&mut self, now: Instant) -> Option<Refusal> {
        match self.banned_until {
            Some(t) if t > now => Some(Refusal {
                retry_after: t - now,
                banned: true,
            }),
            Some(_) => {
                self.banned_until = None;
                None
            }
            None => None,
        }
    }
}

/// A request refused over a limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    /// When the client may try again.
    pub retry_after: Duration,
    /// The address is banned (this refusal banned it, or it was already): the connection
    /// closes after the answer.
    pub banned: bool,
}

/// Counters of what the limiter refused.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LimiterCounts {
    /// Requests refused over a rate limit (bans included).
    pub rate_limited: u64,
    /// Bans imposed.
    pub bans: u64,
    /// Connections refused at accept because their address was banned.
    pub banned_connections: u64,
}

/// The limiter: the settings and one record per address recently seen.
#[derive(Debug)]
pub struct Limiter {
    limits: RateLimits,
    addresses: hashbrown::HashMap<Address, AddressRecord>,
    /// Address records at the last sweep: the next sweep comes when the table has doubled.
    swept_at: usize,
    counts: LimiterCounts,
    /// When the last ban imposed ends (bans at accept and per request need checking only
    /// until then).
    last_ban_ends: Option<Instant>,
    /// Live nodes of the cluster (1 alone): the per-address write budgets' divisor (see the
    /// module docs).
    nodes: u64,
}

/// Fewest address records before a sweep is worth it.
const SWEEP_MIN: usize = 1024;

impl Limiter {
    /// A limiter with these limits.
    pub fn new(limits: RateLimits) -> Limiter {
        Limiter {
            limits,
            addresses: hashbrown::HashMap::new(),
            last_ban_ends: None,
            swept_at: 0,
            counts: LimiterCounts::default(),
            nodes: 1,
        }
    }

    /// The cluster has `nodes` live nodes (at least 1): each address's register, push and
    /// reachability budgets here become 1/`nodes` of the settings (see the module docs),
    /// those of the addresses known already included, from `now` on.
    pub fn set_nodes(&mut self, nodes: u64, now: Instant) {
        let nodes = nodes.max(1);
        if nodes == self.nodes {
            return;
        }
        self.nodes = nodes;
        let rates = AddressRates::of(&self.limits, nodes);
        for rec in self.addresses.values_mut() {
            let (rate, burst) = rates.registers;
            rec.registers.set_rate(rate, burst, now);
            let (rate, burst) = rates.pushes;
            rec.pushes.set_rate(rate, burst, now);
            let (rate, burst) = rates.reachability;
            rec.reachability.set_rate(rate, burst, now);
        }
    }

    /// The live nodes the per-address budgets are split over.
    pub fn nodes(&self) -> u64 {
        self.nodes
    }

    /// The limits.
    pub fn limits(&self) -> &RateLimits {
        &self.limits
    }

    /// What was refused so far.
    pub fn counts(&self) -> LimiterCounts {
        self.counts
    }

    /// Whether `ip` is banned now: how long it still is.
    pub fn banned(&mut self, ip: IpAddr, now: Instant) -> Option<Duration> {
        let rec = self.addresses.get_mut(&Address::of(ip))?;
        rec.ban(now).map(|r| r.retry_after)
    }

    /// A connection from `ip` was refused at accept for its ban.
    pub fn count_banned_connection(&mut self) {
        self.counts.banned_connections += 1;
    }

    fn record(&mut self, address: Address, now: Instant) -> &mut AddressRecord {
        let l = &self.limits;
        let rates = AddressRates::of(l, self.nodes);
        let bucket = |(rate, burst): (u64, u64)| Bucket::new(rate, burst, now);
        self.addresses
            .entry(address)
            .or_insert_with(|| AddressRecord {
                sessions: 0,
                queries: Bucket::new(
                    l.address_per_s,
                    l.address_per_s * RateLimits::BURST_SECONDS,
                    now,
                ),
                registers: bucket(rates.registers),
                pushes: bucket(rates.pushes),
                reachability: bucket(rates.reachability),
                strikes: Bucket::new(
                    (l.ban_after * 1000)
                        .checked_div(l.ban_window.as_millis().max(1) as u64)
                        .unwrap_or(0)
                        .max(u64::from(l.ban_after > 0)),
                    l.ban_after,
                    now,
                ),
                banned_until: None,
            })
    }

    /// A session from `ip` starts: its buckets.
    pub fn open(&mut self, ip: IpAddr, now: Instant) -> SessionBuckets {
        self.sweep(now);
        self.record(Address::of(ip), now).sessions += 1;
        let l = &self.limits;
        let burst = |rate: u64| rate * RateLimits::BURST_SECONDS;
        SessionBuckets {
            search: Bucket::new(l.search_per_s, burst(l.search_per_s), now),
            lookup: Bucket::new(l.lookup_per_s, burst(l.lookup_per_s), now),
            register: Bucket::new(l.register_per_s, l.register_burst, now),
            push: Bucket::new(l.push_per_s, l.push_burst, now),
            reachability: Bucket::new(
                u64::from(l.reachability_address_per_s > 0),
                REACHABILITY_SESSION_BURST,
                now,
            ),
        }
    }

    /// A session from `ip` ended.
    pub fn close(&mut self, ip: IpAddr) {
        if let Some(rec) = self.addresses.get_mut(&Address::of(ip)) {
            rec.sessions = rec.sessions.saturating_sub(1);
        }
    }

    /// Whether a request of `kind` from a session with `buckets` at `ip` may run now.
    pub fn admit(
        &mut self,
        buckets: &mut SessionBuckets,
        ip: IpAddr,
        kind: Kind,
        now: Instant,
    ) -> Result<(), Refusal> {
        let own = buckets.of(kind).wait(now);
        let shared = match kind {
            Kind::Register => self.limits.register_address_per_s > 0,
            _ => self.limits.address_per_s > 0,
        };
        if own.is_none() && !shared && self.last_ban_ends.map_or(true, |t| t <= now) {
            // Nothing to check at the address: no bucket there, and no ban in force anywhere.
            return Ok(());
        }
        let rec = self.record(Address::of(ip), now);
        if let Some(ban) = rec.ban(now) {
            return Err(ban);
        }
        let address = match kind {
            _ if !shared => None,
            Kind::Register => rec.registers.wait(now),
            _ => rec.queries.wait(now),
        };
        let Some(wait) = own.max(address) else {
            return Ok(());
        };
        Err(self.strike(ip, wait, now))
    }

    /// Whether a counted request (a push, a reachability ask) from a session with
    /// `buckets` at `ip` may run now; if so, one is taken from both buckets at once.
    pub fn admit_counted(
        &mut self,
        buckets: &mut SessionBuckets,
        ip: IpAddr,
        what: Counted,
        now: Instant,
    ) -> Result<(), Refusal> {
        let own = buckets.counted(what);
        let own_wait = own.wait(now);
        let rec = self.record(Address::of(ip), now);
        if let Some(ban) = rec.ban(now) {
            return Err(ban);
        }
        let shared = match what {
            Counted::Push => &mut rec.pushes,
            Counted::Reachability => &mut rec.reachability,
        };
        match own_wait.max(shared.wait(now)) {
            None => {
                shared.charge(1, now);
                buckets.counted(what).charge(1, now);
                Ok(())
            }
            Some(wait) => Err(self.strike(ip, wait, now)),
        }
    }

    /// A request from `ip` refused for `wait`: a strike against its address, which bans it
    /// once it has run out of them.
    fn strike(&mut self, ip: IpAddr, wait: Duration, now: Instant) -> Refusal {
        let ban_after = self.limits.ban_after;
        let ban_for = self.limits.ban_for;
        self.counts.rate_limited += 1;
        let rec = self.record(Address::of(ip), now);
        if ban_after > 0 {
            rec.strikes.charge(1, now);
            if rec.strikes.is_spent(now) {
                rec.banned_until = Some(now + ban_for);
                self.last_ban_ends = self.last_ban_ends.max(Some(now + ban_for));
                self.counts.bans += 1;
                return Refusal {
                    retry_after: ban_for,
                    banned: true,
                };
            }
        }
        Refusal {
            retry_after: wait,
            banned: false,
        }
    }

    /// Charges an admitted request of `kind` from `ip` what it cost beyond [`FREE_UNITS`].
    pub fn charge(
        &mut self,
        buckets: &mut SessionBuckets,
        ip: IpAddr,
        kind: Kind,
        units: u64,
        now: Instant,
    ) {
        let units = units.saturating_sub(FREE_UNITS);
        if units == 0 {
            return;
        }
        buckets.of(kind).charge(units, now);
        if kind == Kind::Register {
            self.charge_registers(ip, units, now);
        } else if self.limits.address_per_s > 0 {
            self.record(Address::of(ip), now).queries.charge(units, now);
        }
    }

    /// Charges an admitted register or unregister from `ip` in cluster mode: `units`, the
    /// larger of its entries and its [`stream_units`], none of them free (see the module
    /// docs).
    pub fn charge_stream(
        &mut self,
        buckets: &mut SessionBuckets,
        ip: IpAddr,
        units: u64,
        now: Instant,
    ) {
        buckets.of(Kind::Register).charge(units, now);
        self.charge_registers(ip, units, now);
    }

    fn charge_registers(&mut self, ip: IpAddr, units: u64, now: Instant) {
        if self.limits.register_address_per_s > 0 {
            self.record(Address::of(ip), now)
                .registers
                .charge(units, now);
        }
    }

    /// Drops the records with nothing to remember, once the table has doubled since the last
    /// sweep (amortised O(1) per session).
    pub(crate) fn sweep(&mut self, now: Instant) {
        if self.addresses.len() < SWEEP_MIN.max(self.swept_at * 2) {
            return;
        }
        self.addresses.retain(|_, r| {
            r.sessions > 0
                || r.banned_until.is_some_and(|t| t > now)
                || !r.queries.is_full(now)
                || !r.registers.is_full(now)
                || !r.pushes.is_full(now)
                || !r.reachability.is_full(now)
                || !r.strikes.is_full(now)
        });
        self.swept_at = self.addresses.len();
    }

    /// Address records kept (for tests).
    pub fn address_count(&self) -> usize {
        self.addresses.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(10, 0, 0, 2));

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn a_bucket_goes_into_debt_and_says_when_it_is_paid_off() {
        let t0 = Instant::now();
        let mut b = Bucket::new(1000, 100, t0);
        assert_eq!(b.wait(t0), None);
        b.charge(600, t0);
        // 500 units owed at 1 unit per ms.
        assert_eq!(b.wait(t0), Some(ms(500)));
        assert_eq!(b.wait(t0 + ms(499)), Some(ms(1)));
        assert_eq!(b.wait(t0 + ms(500)), None);
        // Refills to its burst, no further.
        assert!(b.is_full(t0 + ms(600)));
        b.charge(100, t0 + Duration::from_secs(100));
        assert_eq!(b.wait(t0 + Duration::from_secs(100)), None);
        b.charge(1, t0 + Duration::from_secs(100));
        assert_eq!(b.wait(t0 + Duration::from_secs(100)), Some(ms(1)));
        // A slow bucket checked often still refills.
        let mut slow = Bucket::new(1, 1, t0);
        slow.charge(2, t0);
        let mut t = t0;
        while slow.wait(t).is_some() {
            t += Duration::from_micros(100);
            assert!(t < t0 + Duration::from_secs(3), "never refilled");
        }
        assert!(t >= t0 + Duration::from_secs(1));
        // Off: never waits.
        let mut off = Bucket::new(0, 0, t0);
        off.charge(u64::MAX, t0);
        assert_eq!(off.wait(t0), None);
        // A huge charge is bounded: the debt is at most one charge or one burst deep.
        let mut b = Bucket::new(1000, 100, t0);
        b.charge(u64::MAX, t0);
        assert!(b.wait(t0).is_some());
    }

    fn limits() -> RateLimits {
        RateLimits {
            search_per_s: 1000,
            lookup_per_s: 1000,
            register_per_s: 0,
            register_burst: 0,
            address_per_s: 3000,
            ..RateLimits::off()
        }
    }

    #[test]
    fn an_address_s_sessions_share_one_register_budget_and_stream_units_are_never_free() {
        let t0 = Instant::now();
        let mut l = Limiter::new(RateLimits {
            register_per_s: 1000,
            register_burst: 1000,
            register_address_per_s: 1000,
            ..RateLimits::off()
        });
        let mut one = l.open(A, t0);
        let mut two = l.open(A, t0);
        let mut other = l.open(B, t0);
        // Each session is within its own budget, but together they spend the address's.
        assert!(l.admit(&mut one, A, Kind::Register, t0).is_ok());
        l.charge(&mut one, A, Kind::Register, 600 + FREE_UNITS, t0);
        assert!(l.admit(&mut two, A, Kind::Register, t0).is_ok());
        l.charge(&mut two, A, Kind::Register, 600 + FREE_UNITS, t0);
        assert_eq!(
            l.admit(&mut two, A, Kind::Register, t0)
                .map_err(|r| r.retry_after),
            Err(ms(200))
        );
        assert!(l.admit(&mut other, B, Kind::Register, t0).is_ok());
        // Stream units: a one-entry register costs its record, with nothing free.
        assert_eq!(stream_units(100), 4);
        l.charge_stream(&mut other, B, 1001, t0);
        assert_eq!(
            l.admit(&mut other, B, Kind::Register, t0)
                .map_err(|r| r.retry_after),
            Err(ms(1))
        );
        assert!(l.admit(&mut other, B, Kind::Register, t0 + ms(1)).is_ok());
    }

    #[test]
    fn a_cluster_s_live_nodes_split_an_address_s_register_budget_and_a_death_gives_it_back() {
        let t0 = Instant::now();
        let mut l = Limiter::new(RateLimits {
            register_per_s: 1000,
            register_burst: 1000,
            register_address_per_s: 1000,
            address_per_s: 1000,
            ..RateLimits::off()
        });
        // 4 live nodes: 250 units a second here, 250 of burst; the session's own stays.
        l.set_nodes(4, t0);
        let mut one = l.open(A, t0);
        l.charge_stream(&mut one, A, 251, t0);
        assert_eq!(
            l.admit(&mut one, A, Kind::Register, t0)
                .map_err(|r| r.retry_after),
            Err(ms(4))
        );
        // Reads keep the whole per-address budget at each node.
        assert!(l.admit(&mut one, A, Kind::Search, t0).is_ok());
        l.charge(&mut one, A, Kind::Search, 900 + FREE_UNITS, t0);
        assert!(l.admit(&mut one, A, Kind::Search, t0).is_ok());
        // Two die: the address known already refills at 500 a second from then on.
        l.set_nodes(2, t0);
        assert_eq!(l.nodes(), 2);
        assert!(l.admit(&mut one, A, Kind::Register, t0 + ms(2)).is_ok());
        // A budget split over more nodes than its rate is 1 a second, never off; 0 stays off.
        assert_eq!(share(3, 8), 1);
        assert_eq!(share(0, 8), 0);
        assert_eq!(share(1000, 0), 1000);
    }

    #[test]
    fn counted_requests_share_their_address_budget_over_an_ipv6_64() {
        let t0 = Instant::now();
        let mut l = Limiter::new(RateLimits {
            push_per_s: 100,
            push_burst: 100,
            push_address_per_s: 2,
            reachability_address_per_s: 100,
            ..limits()
        });
        let x: IpAddr = "2001:db8::1".parse().unwrap();
        let y: IpAddr = "2001:db8::2".parse().unwrap();
        let z: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        let (mut a, mut b, mut c) = (l.open(x, t0), l.open(y, t0), l.open(z, t0));
        // The /64's burst (2 s of 2 a second, one in debt) over two hosts' sessions.
        let mut admitted = 0;
        for _ in 0..4 {
            admitted += u32::from(l.admit_counted(&mut a, x, Counted::Push, t0).is_ok());
            admitted += u32::from(l.admit_counted(&mut b, y, Counted::Push, t0).is_ok());
        }
        assert_eq!(admitted, 5);
        let r = l.admit_counted(&mut a, x, Counted::Push, t0).unwrap_err();
        assert_eq!(r.retry_after, ms(500));
        assert_eq!(l.counts().rate_limited, 4);
        // Another /64, and the other kind, are not touched; a session's asks have their
        // own small burst.
        assert!(l.admit_counted(&mut c, z, Counted::Push, t0).is_ok());
        for _ in 0..=REACHABILITY_SESSION_BURST {
            assert!(l
                .admit_counted(&mut a, x, Counted::Reachability, t0)
                .is_ok());
        }
        assert!(l
            .admit_counted(&mut a, x, Counted::Reachability, t0)
            .is_err());
        // Waiting as told is enough.
        assert!(l
            .admit_counted(&mut b, y, Counted::Push, t0 + ms(500))
            .is_ok());
    }

    #[test]
    fn server_time_is_charged_beyond_the_free_time() {
        assert_eq!(units_of_time(Duration::ZERO), 0);
        assert_eq!(units_of_time(FREE_TIME), 0);
        assert_eq!(
            units_of_time(FREE_TIME + Duration::from_nanos(NS_PER_UNIT * 10)),
            10
        );
        // Half a millisecond is about a search's whole budget.
        let half_ms = units_of_time(Duration::from_micros(500));
        assert!((30_000..=32_768).contains(&half_ms), "{half_ms}");
        assert_eq!(units_of_time(Duration::MAX), u64::MAX);
    }

    #[test]
    fn a_session_over_its_search_rate_is_refused_while_lookups_and_others_go_on() {
        let t0 = Instant::now();
        let mut l = Limiter::new(limits());
        let mut s = l.open(A, t0);
        let mut other = l.open(B, t0);
        // The burst (BURST_SECONDS of the 1,000 units a second) is spent by one expensive
        // search, which runs whole: the burst and 532 units of work, 16 to answer, 32 free.
        let burst = 1_000 * RateLimits::BURST_SECONDS;
        assert_eq!(l.admit(&mut s, A, Kind::Search, t0), Ok(()));
        l.charge(&mut s, A, Kind::Search, search_cost(burst + 532), t0);
        let r = l.admit(&mut s, A, Kind::Search, t0).unwrap_err();
        assert_eq!(r.retry_after, ms(516));
        assert!(!r.banned);
        // Its lookups have their own bucket; another session its own.
        assert_eq!(l.admit(&mut s, A, Kind::Lookup, t0), Ok(()));
        assert_eq!(l.admit(&mut other, B, Kind::Search, t0), Ok(()));
        // Told when, and admitted then.
        assert_eq!(l.admit(&mut s, A, Kind::Search, t0 + ms(516)), Ok(()));
        assert_eq!(l.counts().rate_limited, 1);
    }

    #[test]
    fn one_address_shares_one_budget_over_its_sessions() {
        let t0 = Instant::now();
        let mut l = Limiter::new(limits());
        // Three sessions of A each within its own rate, together over A's 3,000/s.
        let mut s: Vec<SessionBuckets> = (0..4).map(|_| l.open(A, t0)).collect();
        for b in &mut s[..3] {
            assert_eq!(l.admit(b, A, Kind::Search, t0), Ok(()));
            l.charge(
                b,
                A,
                Kind::Search,
                1_000 * RateLimits::BURST_SECONDS + 16 + FREE_UNITS,
                t0,
            );
        }
        // 48 units more than A's burst owed, at 3 a ms.
        let r = l.admit(&mut s[3], A, Kind::Lookup, t0).unwrap_err();
        assert_eq!(r.retry_after, ms(16));
        // IPv6: one /64 is one address.
        let x: IpAddr = "2001:db8::1".parse().unwrap();
        let y: IpAddr = "2001:db8::ffff:1".parse().unwrap();
        let z: IpAddr = "2001:db8:0:1::1".parse().unwrap();
        assert_eq!(Address::of(x), Address::of(y));
        assert_ne!(Address::of(x), Address::of(z));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(Address::of(mapped), Address::of(A));
    }

    #[test]
    fn an_address_that_keeps_pushing_is_banned_and_the_ban_expires() {
        let t0 = Instant::now();
        let mut l = Limiter::new(RateLimits {
            ban_after: 5,
            ban_window: Duration::from_secs(10),
            ban_for: Duration::from_secs(60),
            ..limits()
        });
        let mut s = l.open(A, t0);
        l.charge(&mut s, A, Kind::Search, 10_000, t0);
        for _ in 0..4 {
            let r = l.admit(&mut s, A, Kind::Search, t0).unwrap_err();
            assert!(!r.banned);
        }
        let r = l.admit(&mut s, A, Kind::Search, t0).unwrap_err();
        assert_eq!(
            r,
            Refusal {
                retry_after: Duration::from_secs(60),
                banned: true
            }
        );
        assert_eq!(l.counts().bans, 1);
        // Everything of that address is refused now, even what its buckets would allow.
        assert!(
            l.admit(&mut s, A, Kind::Lookup, t0 + ms(1))
                .unwrap_err()
                .banned
        );
        assert_eq!(l.banned(A, t0 + ms(1)), Some(ms(59_999)));
        assert_eq!(l.banned(B, t0 + ms(1)), None);
        // It expires by itself.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(l.banned(A, later), None);
        assert_eq!(l.admit(&mut s, A, Kind::Lookup, later), Ok(()));
    }

    #[test]
    fn a_client_that_waits_as_told_is_never_banned() {
        let t0 = Instant::now();
        let mut l = Limiter::new(RateLimits {
            ban_after: 3,
            ban_window: Duration::from_secs(10),
            ban_for: Duration::from_secs(60),
            ..limits()
        });
        let mut s = l.open(A, t0);
        let mut now = t0;
        let mut admitted = 0;
        while admitted < 1000 {
            match l.admit(&mut s, A, Kind::Search, now) {
                Ok(()) => {
                    admitted += 1;
                    l.charge(&mut s, A, Kind::Search, 2_000 + FREE_UNITS, now);
                }
                Err(r) => {
                    assert!(!r.banned);
                    now += r.retry_after;
                }
            }
        }
        assert_eq!(l.counts().bans, 0);
        // It got its rate: 1,000 searches of 2,000 units at 1,000 units a second, the first
        // from the burst (BURST_SECONDS of rate) and one charge of debt.
        let from_burst = RateLimits::BURST_SECONDS / 2 + 1;
        assert_eq!(l.counts().rate_limited, 1000 - from_burst);
        assert_eq!(
            now.duration_since(t0),
            Duration::from_secs(2_000 - 2 * from_burst)
        );
        // Cheap requests are free: a flood of them never meets the limit.
        let mut s = l.open(B, now);
        for _ in 0..100_000 {
            assert_eq!(l.admit(&mut s, B, Kind::Lookup, now), Ok(()));
            l.charge(&mut s, B, Kind::Lookup, lookup_cost(1, 3), now);
        }
    }

    #[test]
    fn off_limits_admit_everything_and_forgotten_addresses_are_swept() {
        let t0 = Instant::now();
        let mut l = Limiter::new(RateLimits::off());
        let mut s = l.open(A, t0);
        for _ in 0..100 {
            assert_eq!(l.admit(&mut s, A, Kind::Search, t0), Ok(()));
            l.charge(&mut s, A, Kind::Search, 1 << 40, t0);
        }
        l.close(A);
        let mut l = Limiter::new(limits());
        for i in 0..5000u32 {
            let ip = IpAddr::V4(i.into());
            let now = t0 + ms(u64::from(i));
            let mut b = l.open(ip, now);
            l.charge(&mut b, ip, Kind::Lookup, 1, now);
            l.close(ip);
        }
        // Records of closed, refilled addresses go at a sweep; an open one stays.
        assert!(l.address_count() <= SWEEP_MIN, "{}", l.address_count());
    }
}
