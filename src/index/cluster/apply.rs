//! The apply path (sans-IO): other nodes' records and deaths applied to the local index.
//!
//! A [`Replica`] queues what the NATS thread received ([`Inbound`]) and applies it in order,
//! a bounded amount of work per [`Replica::poll`] call (a big register record is applied in
//! slices of the caller's budget), so that a burst of replication never holds the reactor
//! loop for long.
//!
//! # Remote sessions
//! Another node's session becomes an index peer at its `Open` record, with the address its
//! home node saw; its registers and unregisters are applied to that peer; its `End` makes the
//! peer depart (the index's sliced departure: no answer lists it from then on, its holdings
//! go over the next turns). Records of a session never opened here (its `Open` was purged
//! before this node read it) are dropped: the session has ended already.
//!
//! # Snapshots
//! A [`Record::Snapshot`] of a session known here starts *marking*: every holding its
//! `Register`s restate, or register anew, up to its [`Record::SnapshotEnd`] is noted by a
//! 64-bit key of (hash, size, name) (keyed by a random key of this process, so a peer cannot
//! choose collisions). Restated holdings the peer has already are left as they are (no
//! change, and no second holder: a lookup or search never lists the peer twice), missing ones
//! are added, unregisters apply as usual. At the end, a *sweep* walks the peer's holdings a
//! slice at a time and withdraws those not marked: what the session no longer holds although
//! this node never read its unregister (deleted from the stream by the compaction before it
//! was read). The sweep is work at the head of the queue, so nothing after the end applies
//! before it is done. Memory: 8 bytes and a control byte of a hash set per marked holding
//! (about 1.65 buckets per key), while the snapshot is read and swept; the set is a
//! [`KeySet`], whose shards grow a few keys at a time, so no call allocates or rehashes it
//! whole. (A restated name of a hash of which the peer holds
//! [`MAX_NAMES_PER_HASH`](crate::index::store::MAX_NAMES_PER_HASH) stale names here is
//! refused, and missing until the session's next snapshot: only for a node that missed
//! records.)
//!
//! # Reachability
//! A session's [`Record::Reachability`] (its home node's probe ended) enters it in the
//! [`RemotePushes`] by its address: lookups here flag it as its home node does, and pushes to
//! it are relayed to that node. It leaves with the session (its end, its node's death, a
//! fence). A snapshot restates it; a restatement of what is known changes nothing.
//!
//! # Holdings per address
//! Each remote session is also kept by its address (IPv4, IPv6 /64: [`Address`]), so the
//! server checks `--max-holdings-per-ip` against every node's sessions at an address, not
//! only its own ([`Replica::remote_holdings_at`]). The replica keeps a running total of
//! entries per address, adjusted wherever a remote session's entries change (a register or
//! unregister slice, a snapshot's sweep: the index's count after the call less before, an
//! O(1) look) and by the session's whole count when it ends (its end, its node's death, a
//! fence), before its holdings are withdrawn, as a local session's do. So the check costs
//! one map look whatever the sessions at the address: walking them on each register slice
//! let a host with many Hello-only sessions at other nodes make every small register here
//! walk them all, uncharged. Memory: a map entry per address with remote sessions.
//!
//! # Node deaths
//! Remote sessions are kept per home node. When a node dies, every one of its sessions
//! departs at once (work in proportion to its sessions; the holdings go in slices), and the
//! node is remembered as dead: a record of it read late (a node a little behind the stream)
//! is dropped instead of bringing a dead peer back.

use super::reach::RemotePushes;
use super::{Cap, Record};
use crate::index::limits::Address;
use crate::index::store::{Index, KeySet, PeerId};
use crate::wire::{FileEntry, FileHash};
use hashbrown::{HashMap, HashSet};
use std::collections::VecDeque;
use std::hash::{BuildHasher, RandomState};

/// Units of work ([`Replica::poll`]'s) applied between two postings of the index's pending
/// words while a node reads the stream before it serves ([`Replica::poll_rebuilding`]).
pub const REBUILD_SLICE_UNITS: usize = 16_384;

/// Most entries applied whose words wait to be posted before a poll posts them first, within
/// its budget. A node applying behind the stream (a burst, a stall) spent each turn's share
/// applying registers and left the posting to the turn's end, which got only what was left of
/// the turn: the entries waiting piled up, each name stored plain, then were compressed (their
/// plain records freed) after the catch-up, and the name arena's compaction that followed held
/// two arenas at once, a peak far over the settled index (docs/MEASUREMENTS.md, "Cluster mode":
/// "That outlier").
pub const MAX_UNPOSTED_ENTRIES: usize = REBUILD_SLICE_UNITS;

/// Units of work [`Replica::poll_until`] does between two looks at the clock. (Groups of 4
/// were tried in session 13 and did not lower b's longest cluster turn: docs/MEASUREMENTS.md.)
pub const GROUP_UNITS: usize = crate::index::store::DEPARTURE_GROUP_HOLDINGS;

/// What the NATS thread hands to the reactor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inbound {
    /// Another node's record, from subject `<prefix>.<node>.<session>`.
    Record {
        /// The home node's name.
        node: String,
        /// The session, as its home node numbers them.
        session: u64,
        /// The change.
        record: Record,
    },
    /// A node's liveness key expired or was deleted: its sessions end.
    NodeDead {
        /// The node's name.
        node: String,
    },
    /// The stream was read to its end at start: the index holds the whole cluster's.
    Rebuilt,
    /// A publish of this local session was not acknowledged: the other nodes may miss a
    /// change of it, so it is ended (its peer reconnects and registers again).
    Lost {
        /// The local session.
        session: u64,
    },
    /// This node was fenced (its liveness key lost or not refreshed in time: the other nodes
    /// have dropped, or are about to drop, our sessions) and rejoins as a new incarnation:
    /// every remote session is dropped here too, and the stream is read again from its start,
    /// up to a new [`Inbound::Rebuilt`]. Meanwhile the node serves no one.
    Fenced,
    /// The NATS thread stopped for good, with why.
    Failed(String),
    /// Another node relays a push to a holder here (see [`relay`](super::relay)); the answer
    /// goes back as [`Outbound::PushAnswer`](super::link::Outbound::PushAnswer) with `token`.
    /// Handled by the link, never queued in the replica.
    PushIn {
        /// The NATS thread's handle on the request's reply.
        token: u64,
        /// The push.
        push: super::relay::RelayedPush,
        /// Past it, the requester's node no longer waits: not delivered (see
        /// [`relay`](super::relay)'s deadlines).
        deadline: std::time::Instant,
    },
    /// The answer to push relay `id` this node sent
    /// ([`Outbound::Push`](super::link::Outbound::Push)): the holder's node's, or the NATS
    /// thread's refusal when it could not be asked or did not answer in time. Handled by the
    /// link, never queued in the replica.
    PushAnswer {
        /// The relay.
        id: u64,
        /// The answer.
        answer: super::relay::RelayAnswer,
    },
}

/// One remote session.
#[derive(Debug)]
struct RemoteSession {
    peer: PeerId,
    /// The address its home node saw: where its entries count.
    address: Address,
    /// Its entries as last counted in its address's [`AddressTotal`].
    entries: u32,
    /// While a [`Record::Snapshot`] of the session is read: the keys of the holdings it
    /// restated or registered since (see the module docs).
    marks: Option<KeySet>,
    /// What the cap of a capped register left for its later parts.
    cap_left: u32,
    /// Its [`Record::Reachability`]: it takes pushes, reachable or not (`None`: not known).
    reachable: Option<bool>,
}

/// The remote sessions at one address and their entries (see the module docs).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct AddressTotal {
    sessions: u32,
    entries: u64,
}

/// What [`Replica::poll`] saw that the caller acts on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// [`Inbound::Rebuilt`] was reached: everything before it is applied.
    Rebuilt,
    /// End this local session ([`Inbound::Lost`]).
    Lost(u64),
    /// End every local session and serve no one until the next [`Event::Rebuilt`]
    /// ([`Inbound::Fenced`]; the remote sessions are dropped already).
    Fenced,
    /// The NATS thread failed.
    Failed(String),
}

/// Counts of what was applied, for logs and tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ApplyCounts {
    /// Records applied.
    pub records: u64,
    /// Records dropped: of a session never opened here, of a dead node, or a second `Open`.
    pub dropped: u64,
    /// Nodes found dead.
    pub deaths: u64,
}

/// The sweep after a snapshot's end: `peer`'s holdings from entry id `next` on not in
/// `marks` are withdrawn, a slice a poll.
#[derive(Debug)]
struct Sweep {
    node: String,
    session: u64,
    peer: PeerId,
    marks: KeySet,
    next: u32,
}

/// Other nodes' sessions in the local index; see the module docs.
#[derive(Debug, Default)]
pub struct Replica {
    /// Remote sessions by home node, then by session: the per-home-node index.
    nodes: HashMap<String, HashMap<u64, RemoteSession>>,
    /// Nodes found dead (their late records are dropped).
    dead: HashSet<String>,
    /// Received, not applied yet, oldest first.
    queue: VecDeque<Inbound>,
    /// Files of the register at the head of `queue` applied so far.
    at: usize,
    /// A snapshot's sweep under way: it goes before `queue`.
    sweep: Option<Sweep>,
    /// The key of the holdings' marks.
    keys: RandomState,
    counts: ApplyCounts,
    /// Remote sessions that take pushes, by address.
    pushes: RemotePushes,
    /// Remote sessions' entries by address (see the module docs).
    by_address: HashMap<Address, AddressTotal>,
}

impl Replica {
    /// No remote session.
    pub fn new() -> Replica {
        Replica::default()
    }

    /// Queues what the NATS thread received.
    pub fn handle_inbound(&mut self, inbound: Inbound) {
        self.queue.push_back(inbound);
    }

    /// Whether received changes wait to be applied.
    pub fn has_work(&self) -> bool {
        !self.queue.is_empty() || self.sweep.is_some()
    }

    /// What was applied so far.
    pub fn counts(&self) -> ApplyCounts {
        self.counts
    }

    /// Remote sessions in the index (departing ones not counted).
    pub fn session_count(&self) -> usize {
        self.nodes.values().map(HashMap::len).sum()
    }

    /// Records received and not applied yet.
    pub fn queued_records(&self) -> usize {
        self.queue
            .iter()
            .filter(|i| matches!(i, Inbound::Record { .. }))
            .count()
    }

    /// Holdings of remote sessions in `index` (one walk of the remote sessions).
    pub fn remote_holdings(&self, index: &Index) -> u64 {
        self.nodes
            .values()
            .flat_map(HashMap::values)
            .map(|s| u64::from(index.holdings_of(s.peer)))
            .sum()
    }

    /// Entries held by remote sessions at `address`: the running total (one map look; see
    /// the module docs).
    pub fn remote_holdings_at(&self, address: Address) -> usize {
        self.by_address
            .get(&address)
            .map_or(0, |t| usize::try_from(t.entries).unwrap_or(usize::MAX))
    }

    /// A new remote session's `peer` at `addr` (no entries yet): counted at its address.
    fn new_session(&mut self, peer: PeerId, addr: std::net::SocketAddr) -> RemoteSession {
        let address = Address::of(addr.ip());
        self.by_address.entry(address).or_default().sessions += 1;
        RemoteSession {
            peer,
            address,
            entries: 0,
            marks: None,
            cap_left: u32::MAX,
            reachable: None,
        }
    }

    /// The remote sessions' entries by address, walked: what the running totals must be
    /// (for checks and tests).
    fn walked_totals(&self, index: &Index) -> HashMap<Address, AddressTotal> {
        let mut totals: HashMap<Address, AddressTotal> = HashMap::new();
        for s in self.nodes.values().flat_map(HashMap::values) {
            let t = totals.entry(s.address).or_default();
            t.sessions += 1;
            t.entries += u64::from(index.entries_of(s.peer));
        }
        totals
    }

    /// Checks (in debug builds) that the running totals by address are what a walk finds.
    fn debug_check_totals(&self, index: &Index) {
        if cfg!(debug_assertions) {
            debug_assert_eq!(self.by_address, self.walked_totals(index));
        }
    }

    /// Nodes with remote sessions here.
    pub fn nodes(&self) -> impl Iterator<Item = &str> {
        self.nodes.keys().map(String::as_str)
    }

    /// Applies queued changes to `index`, about `budget` units of work (a file registered or
    /// withdrawn, a session opened or ended, each one unit; at least one step), stopping
    /// early at an [`Event`], which it returns. Returns the units used.
    pub fn poll(&mut self, index: &mut Index, budget: usize, events: &mut Vec<Event>) -> usize {
        self.poll_in_groups(index, budget, budget, || false, events)
    }

    /// [`Replica::poll`], stopping early once `is_late()` says time is up. It is asked after
    /// each step of at most [`GROUP_UNITS`] units (the first step is always done), so a poll
    /// ends within one group's work of its deadline however slow each unit turns out (words
    /// posted in cold memory took 20–40 µs an entry at times: 64 of them, a poll's budget, were
    /// 1–2.5 ms of CPU in one go). (Time is the caller's: `is_late` reads its clock.)
    pub fn poll_until(
        &mut self,
        index: &mut Index,
        budget: usize,
        is_late: impl Fn() -> bool,
        events: &mut Vec<Event>,
    ) -> usize {
        self.poll_in_groups(index, budget, GROUP_UNITS, is_late, events)
    }

    /// Applies queued changes, about `budget` units, in steps of at most `group` units, asking
    /// `is_late()` after each (see [`Replica::poll_until`]).
    fn poll_in_groups(
        &mut self,
        index: &mut Index,
        budget: usize,
        group: usize,
        is_late: impl Fn() -> bool,
        events: &mut Vec<Event>,
    ) -> usize {
        let budget = budget.max(1);
        let mut used = 0;
        while used < budget && (used == 0 || !is_late()) {
            let room = (budget - used).min(group.max(1));
            // An unregister or a departure posts every word left pending first, at once: under
            // a churn of 10,000-file registers and unregisters at another node, that was the
            // words of a whole register in one turn (22 ms of CPU). They are posted here
            // within the budget first, a slice a poll.
            let settles = self.sweep.is_some()
                || matches!(
                    self.queue.front(),
                    Some(
                        Inbound::Record {
                            record: Record::Unregister { .. } | Record::End,
                            ..
                        } | Inbound::NodeDead { .. }
                            | Inbound::Fenced
                    )
                );
            if (settles && index.has_pending()) || index.unposted_count() >= MAX_UNPOSTED_ENTRIES {
                let posted = std::cell::Cell::new(0);
                crate::index::worktrace::time("apply: posting", || {
                    index.post_pending_until(|| {
                        posted.set(posted.get() + 1);
                        posted.get() >= room
                    })
                });
                used += posted.get().max(1);
                continue;
            }
            if let Some(mut sweep) = self.sweep.take() {
                used += crate::index::worktrace::time("snapshot sweep", || {
                    self.sweep_step(index, &mut sweep, room)
                });
                if sweep.next != u32::MAX {
                    self.sweep = Some(sweep);
                }
                continue;
            }
            let Some(head) = self.queue.front_mut() else {
                break;
            };
            match head {
                Inbound::Record {
                    node,
                    session,
                    record: Record::Register { files, cap },
                } => {
                    let (node, session, cap) = (node.clone(), *session, *cap);
                    let end = (self.at + room).min(files.len());
                    let slice = std::mem::take(files);
                    let done = crate::index::worktrace::time("apply: register", || {
                        self.register(index, &node, session, &slice[self.at..end], cap, self.at)
                    });
                    used += (end - self.at).max(1);
                    if !done || end == slice.len() {
                        self.queue.pop_front();
                        self.at = 0;
                        self.counts.records += u64::from(done);
                    } else {
                        self.at = end;
                        if let Some(Inbound::Record {
                            record: Record::Register { files, .. },
                            ..
                        }) = self.queue.front_mut()
                        {
                            *files = slice;
                        }
                    }
                }
                Inbound::Record {
                    node,
                    session,
                    record: Record::Unregister { hashes },
                } => {
                    // As a register: a big unregister (one record of a peer's frame) is
                    // withdrawn a slice a poll, so applying it never holds the loop long.
                    let (node, session) = (node.clone(), *session);
                    let hashes = std::mem::take(hashes);
                    let end = (self.at + room).min(hashes.len());
                    let peer = self.session(&node, session).map(|s| s.peer);
                    if let Some(peer) = peer {
                        crate::index::worktrace::time("apply: unregister", || {
                            index.unregister(peer, &hashes[self.at..end])
                        });
                        self.recount(index, &node, session);
                    }
                    used += (end - self.at).max(1);
                    if peer.is_none() || end == hashes.len() {
                        self.queue.pop_front();
                        self.at = 0;
                        match peer {
                            Some(_) => self.counts.records += 1,
                            None => self.counts.dropped += 1,
                        }
                    } else {
                        self.at = end;
                        if let Some(Inbound::Record {
                            record: Record::Unregister { hashes: head },
                            ..
                        }) = self.queue.front_mut()
                        {
                            *head = hashes;
                        }
                    }
                }
                _ => {
                    let inbound = self.queue.pop_front().expect("a head");
                    used += 1;
                    let event = crate::index::worktrace::time("apply: other", || {
                        self.apply(index, inbound, &mut used)
                    });
                    if let Some(event) = event {
                        events.push(event);
                        self.debug_check_totals(index);
                        return used;
                    }
                }
            }
        }
        self.debug_check_totals(index);
        used
    }

    /// Applies everything queued at once (for a rebuild before serving, and tests).
    pub fn poll_all(&mut self, index: &mut Index, events: &mut Vec<Event>) {
        while self.has_work() {
            self.poll(index, usize::MAX, events);
        }
    }

    /// Applies a slice of what is queued ([`REBUILD_SLICE_UNITS`]), then does what a serving
    /// node does at the end of each turn: posts the pending words, compresses the new names,
    /// and takes a step of the index's filter rebuild, compactions and name walks. For a node
    /// reading the stream before it serves (no time budget); returns the units used.
    ///
    /// Left to the end of the rebuild, a million entries waited with their names plain and
    /// their words unposted, then were compressed at once, which grew the name arena by half
    /// before any compaction could take it back: the rebuilding node peaked at 227 B per
    /// entry against 150 at a node that applied the same records as they came.
    pub fn poll_rebuilding(&mut self, index: &mut Index, events: &mut Vec<Event>) -> usize {
        let used = self.poll(index, REBUILD_SLICE_UNITS, events);
        index.post_pending();
        index.continue_filter_rebuild();
        index.continue_compaction();
        index.continue_name_walks();
        used
    }

    /// Withdraws what `sweep`'s peer holds and the snapshot did not mark, about `budget`
    /// holdings of it; sets `sweep.next` to `u32::MAX` once done. Returns the units used.
    fn sweep_step(&mut self, index: &mut Index, sweep: &mut Sweep, budget: usize) -> usize {
        let (keys, marks) = (&self.keys, &sweep.marks);
        let mut gone = Vec::new();
        let mut visited = 0;
        let next =
            index.holdings_from(sweep.peer, sweep.next, budget.max(1), |e, h, size, name| {
                visited += 1;
                if !marks.contains(keys.hash_one((&h.0, size, name))) {
                    gone.push(e);
                }
            });
        index.unregister_entries(sweep.peer, &gone);
        // The sweep goes before anything queued, so its session is live still.
        self.recount(index, &sweep.node, sweep.session);
        sweep.next = next.unwrap_or(u32::MAX);
        visited.max(1)
    }

    /// The entries of `node`'s session `session` (if live here) changed in `index`: counts
    /// the change at its address.
    fn recount(&mut self, index: &Index, node: &str, session: u64) {
        if let Some(s) = self.nodes.get_mut(node).and_then(|n| n.get_mut(&session)) {
            recount(&mut self.by_address, index, s);
        }
    }

    /// The session `session` of `node`, if it is live here.
    fn session(&mut self, node: &str, session: u64) -> Option<&mut RemoteSession> {
        self.nodes.get_mut(node)?.get_mut(&session)
    }

    /// Applies one part of a register record (files from `offset` on). False if the record
    /// is dropped.
    fn register(
        &mut self,
        index: &mut Index,
        node: &str,
        session: u64,
        files: &[crate::wire::FileEntry],
        cap: Cap,
        offset: usize,
    ) -> bool {
        let Some(s) = self.nodes.get_mut(node).and_then(|n| n.get_mut(&session)) else {
            self.counts.dropped += 1;
            return false;
        };
        if offset == 0 {
            match cap {
                Cap::All => s.cap_left = u32::MAX,
                Cap::AtMost(n) => s.cap_left = n,
                Cap::Rest => {}
            }
        }
        let (peer, room) = (s.peer, s.cap_left);
        let outcome = index.register_at_most(peer, files, room);
        // This slice's files go in the tables now, within its units (see the method's docs).
        index.unstage_pending();
        recount(&mut self.by_address, index, s);
        if let Some(marks) = &mut s.marks {
            let keys = &self.keys;
            crate::index::worktrace::time("snapshot marks", || {
                for f in files {
                    marks.insert(mark(keys, f));
                }
            });
        }
        if room != u32::MAX {
            if let Some(s) = self.session(node, session) {
                s.cap_left = room - outcome.added.min(room);
            }
        }
        true
    }

    /// Applies one change other than a register; returns an event for the caller.
    fn apply(&mut self, index: &mut Index, inbound: Inbound, used: &mut usize) -> Option<Event> {
        match inbound {
            Inbound::Record {
                node,
                session,
                record,
            } => {
                if self.dead.contains(&node) {
                    self.counts.dropped += 1;
                    return None;
                }
                match record {
                    Record::Open { addr } => {
                        if self.session(&node, session).is_some() {
                            self.counts.dropped += 1;
                            return None;
                        }
                        let peer = index.add_peer(addr);
                        let s = self.new_session(peer, addr);
                        self.nodes.entry(node).or_default().insert(session, s);
                    }
                    Record::Snapshot { addr } => {
                        match self.session(&node, session) {
                            Some(s) => {
                                // Marking starts again: a snapshot read in part (its end
                                // deleted by the next one's compaction) is replaced by this one.
                                // A set that grows a shard at a time: one sized at once for
                                // 300,000 holdings (or grown by doubling) took milliseconds.
                                s.marks = Some(KeySet::new());
                            }
                            None => {
                                let peer = index.add_peer(addr);
                                let s = self.new_session(peer, addr);
                                self.nodes.entry(node).or_default().insert(session, s);
                            }
                        }
                    }
                    Record::SnapshotEnd => {
                        let Some(s) = self.session(&node, session) else {
                            self.counts.dropped += 1;
                            return None;
                        };
                        if let Some(marks) = s.marks.take() {
                            let peer = s.peer;
                            self.sweep = Some(Sweep {
                                node,
                                session,
                                peer,
                                marks,
                                next: 0,
                            });
                        }
                    }
                    Record::End => {
                        let sessions = self.nodes.get_mut(&node);
                        let Some(s) = sessions.and_then(|s| s.remove(&session)) else {
                            self.counts.dropped += 1;
                            return None;
                        };
                        if self.nodes.get(&node).is_some_and(HashMap::is_empty) {
                            self.nodes.remove(&node);
                        }
                        self.forget(index, &node, &s);
                        depart(index, &s);
                    }
                    Record::Reachability { reachable } => {
                        if !self.handle_reachability(index, &node, session, reachable) {
                            self.counts.dropped += 1;
                            return None;
                        }
                    }
                    Record::Register { .. } | Record::Unregister { .. } => {
                        unreachable!("applied in slices by poll")
                    }
                }
                self.counts.records += 1;
                None
            }
            Inbound::NodeDead { node } => {
                let sessions = self.nodes.remove(&node).unwrap_or_default();
                *used += sessions.len();
                for s in sessions.values() {
                    self.forget(index, &node, s);
                    depart(index, s);
                }
                if self.dead.insert(node.clone()) {
                    self.counts.deaths += 1;
                    log::info!(
                        "cluster: node {node} is dead; its {} sessions' entries are being withdrawn",
                        sessions.len()
                    );
                }
                None
            }
            Inbound::Rebuilt => Some(Event::Rebuilt),
            Inbound::Lost { session } => Some(Event::Lost(session)),
            Inbound::Fenced => {
                // Our view may miss changes (we read nothing while stalled): the stream is
                // read again from its start, so every remote session goes now.
                let nodes = std::mem::take(&mut self.nodes);
                self.pushes.clear();
                self.by_address.clear();
                for s in nodes.values().flat_map(HashMap::values) {
                    *used += 1;
                    depart(index, s);
                }
                Some(Event::Fenced)
            }
            Inbound::Failed(why) => Some(Event::Failed(why)),
            // The link keeps these out of the queue.
            Inbound::PushIn { .. } | Inbound::PushAnswer { .. } => None,
        }
    }
}

impl Replica {
    /// Other nodes' sessions that take pushes.
    pub fn pushes(&self) -> &RemotePushes {
        &self.pushes
    }

    /// See [`Replica::pushes`]: to take a node in turn.
    pub fn pushes_mut(&mut self) -> &mut RemotePushes {
        &mut self.pushes
    }

    /// Applies `session` of `node`'s [`Record::Reachability`]; false if the session is not
    /// live here. A restatement (after a snapshot) of what is known changes nothing.
    fn handle_reachability(
        &mut self,
        index: &Index,
        node: &str,
        session: u64,
        reachable: bool,
    ) -> bool {
        let Some(s) = self.nodes.get_mut(node).and_then(|n| n.get_mut(&session)) else {
            return false;
        };
        let Some(addr) = index.peer_addr(s.peer) else {
            return false;
        };
        if s.reachable == Some(reachable) {
            return true;
        }
        if let Some(was) = s.reachable.replace(reachable) {
            self.pushes.handle_gone(node, addr, was);
        }
        self.pushes.handle_known(node, addr, reachable);
        true
    }

    /// Remote session `s` of `node` ends: it takes no more pushes, and its holdings no longer
    /// count at its address (before its peer departs, while its address is known).
    fn forget(&mut self, index: &Index, node: &str, s: &RemoteSession) {
        if let Some(t) = self.by_address.get_mut(&s.address) {
            t.sessions -= 1;
            t.entries -= u64::from(s.entries);
            if t.sessions == 0 {
                debug_assert_eq!(
                    t.entries, 0,
                    "an address's last session took all its entries"
                );
                self.by_address.remove(&s.address);
            }
        } else {
            debug_assert!(false, "a live session's address is counted");
        }
        let Some(addr) = index.peer_addr(s.peer) else {
            return;
        };
        if let Some(reachable) = s.reachable {
            self.pushes.handle_gone(node, addr, reachable);
        }
    }
}

/// Remote session `s`'s entries changed in `index`: its address's total takes the change.
fn recount(totals: &mut HashMap<Address, AddressTotal>, index: &Index, s: &mut RemoteSession) {
    let now = index.entries_of(s.peer);
    if now == s.entries {
        return;
    }
    let t = totals
        .get_mut(&s.address)
        .expect("a live session's address is counted");
    t.entries = t.entries - u64::from(s.entries) + u64::from(now);
    s.entries = now;
}

/// Remote session `s` ends: its peer departs.
fn depart(index: &mut Index, s: &RemoteSession) {
    index.begin_departure(s.peer);
}

/// The key a snapshot marks `f` with (see the module docs); [`Replica::sweep_step`] computes
/// the same from the index's entry.
fn mark(keys: &RandomState, f: &FileEntry) -> u64 {
    let hash: &FileHash = &f.hash;
    keys.hash_one((&hash.0, f.size, f.name.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{FileEntry, FileHash, LookupKey};
    use std::net::SocketAddr;

    fn file(name: &str) -> FileEntry {
        FileEntry {
            hash: FileHash::of(name.as_bytes()),
            size: name.len() as u64,
            name: name.into(),
        }
    }

    fn rec(node: &str, session: u64, record: Record) -> Inbound {
        Inbound::Record {
            node: node.into(),
            session,
            record,
        }
    }

    fn open(node: &str, session: u64, addr: &str) -> Inbound {
        rec(
            node,
            session,
            Record::Open {
                addr: addr.parse().unwrap(),
            },
        )
    }

    fn register(node: &str, session: u64, files: Vec<FileEntry>) -> Inbound {
        rec(
            node,
            session,
            Record::Register {
                files,
                cap: Cap::All,
            },
        )
    }

    fn apply_all(replica: &mut Replica, index: &mut Index) -> Vec<Event> {
        let mut events = Vec::new();
        replica.poll_all(index, &mut events);
        while index.has_departures() {
            index.continue_departures(usize::MAX);
        }
        events
    }

    fn holders(index: &mut Index, name: &str) -> Vec<SocketAddr> {
        match index.lookup(&LookupKey::Hash(FileHash::of(name.as_bytes()))) {
            Ok(files) => files.into_iter().flat_map(|f| f.holders).collect(),
            Err(_) => Vec::new(),
        }
    }

    #[test]
    fn a_snapshot_replaces_a_session_s_holdings_without_a_gap_or_a_second_holder() {
        let at: SocketAddr = "10.0.0.2:7001".parse().unwrap();
        let snapshot = || rec("b-1", 4, Record::Snapshot { addr: at });
        let end = || rec("b-1", 4, Record::SnapshotEnd);
        // A reader that read the session from its start, but missed an unregister of
        // "gone" (deleted by the compaction before it read it).
        let mut index = Index::new();
        let mut replica = Replica::new();
        replica.handle_inbound(open("b-1", 4, "10.0.0.2:7001"));
        let old: Vec<FileEntry> = (0..50).map(|i| file(&format!("old {i}"))).collect();
        let mut first = vec![file("kept"), file("gone")];
        first.extend(old.iter().cloned());
        replica.handle_inbound(register("b-1", 4, first));
        apply_all(&mut replica, &mut index);
        replica.handle_inbound(snapshot());
        // The restatement, in parts, with the session's own changes between them: "old 3"
        // withdrawn after its restatement, "old 40" before it (so it is not restated).
        replica.handle_inbound(register("b-1", 4, vec![file("kept"), file("new")]));
        replica.handle_inbound(register("b-1", 4, old[..20].to_vec()));
        let withdraw = |names: &[&str]| {
            let hashes = names.iter().map(|n| file(n).hash).collect();
            rec("b-1", 4, Record::Unregister { hashes })
        };
        replica.handle_inbound(withdraw(&["old 3", "old 40"]));
        replica.handle_inbound(register("b-1", 4, old[20..40].to_vec()));
        replica.handle_inbound(register("b-1", 4, old[41..].to_vec()));
        replica.handle_inbound(end());
        // Changes after the end wait for its sweep.
        replica.handle_inbound(register("b-1", 4, vec![file("after")]));
        let mut events = Vec::new();
        let mut polls = 0;
        while replica.has_work() {
            replica.poll(&mut index, 1, &mut events);
            polls += 1;
            // Every entry is listed all along, once (never twice), until its withdrawal or
            // the sweep; nothing after the end is applied before the sweep is done.
            assert_eq!(holders(&mut index, "kept"), [at]);
            if !holders(&mut index, "after").is_empty() {
                assert!(holders(&mut index, "gone").is_empty());
            }
            for f in &old {
                assert!(holders(&mut index, &f.name).len() <= 1);
            }
        }
        assert!(polls > 50, "{polls}");
        assert!(events.is_empty());
        while index.has_departures() {
            index.continue_departures(usize::MAX);
        }
        for name in ["kept", "new", "old 0", "old 39", "old 41", "after"] {
            assert_eq!(holders(&mut index, name), [at], "{name}");
        }
        for name in ["gone", "old 3", "old 40"] {
            assert!(holders(&mut index, name).is_empty(), "{name}");
        }
        assert_eq!((index.peer_count(), index.entry_count()), (1, 51));
        assert_eq!(replica.session_count(), 1);
        // Its later changes and its end apply to the same peer.
        replica.handle_inbound(withdraw(&["new"]));
        apply_all(&mut replica, &mut index);
        assert!(holders(&mut index, "new").is_empty());
        replica.handle_inbound(rec("b-1", 4, Record::End));
        apply_all(&mut replica, &mut index);
        assert_eq!((index.peer_count(), index.entry_count()), (0, 0));

        // A reader that comes after the older records were deleted: the snapshot opens the
        // session. A second snapshot read before the first one's end replaces it.
        let mut index = Index::new();
        let mut replica = Replica::new();
        replica.handle_inbound(snapshot());
        replica.handle_inbound(register("b-1", 4, vec![file("old")]));
        replica.handle_inbound(snapshot());
        replica.handle_inbound(register("b-1", 4, vec![file("kept")]));
        replica.handle_inbound(end());
        assert!(apply_all(&mut replica, &mut index).is_empty());
        assert_eq!(holders(&mut index, "kept"), [at]);
        assert!(holders(&mut index, "old").is_empty());
        assert_eq!((index.peer_count(), index.entry_count()), (1, 1));
        // A node death in the middle of a snapshot drops the session.
        replica.handle_inbound(snapshot());
        replica.handle_inbound(register("b-1", 4, vec![file("kept")]));
        replica.handle_inbound(Inbound::NodeDead { node: "b-1".into() });
        apply_all(&mut replica, &mut index);
        assert_eq!((index.peer_count(), index.entry_count()), (0, 0));
    }

    #[test]
    fn a_remote_session_s_reachability_is_known_until_it_ends_and_a_snapshot_restates_it() {
        let reach =
            |node: &str, session, reachable| rec(node, session, Record::Reachability { reachable });
        let (fw, open_port): (SocketAddr, SocketAddr) = (
            "10.0.0.2:0".parse().unwrap(),
            "10.0.0.3:7000".parse().unwrap(),
        );
        let mut index = Index::new();
        let mut replica = Replica::new();
        // Of a session never opened here: dropped.
        replica.handle_inbound(reach("b-1", 9, false));
        apply_all(&mut replica, &mut index);
        assert_eq!(replica.counts().dropped, 1);
        // Two sessions of b-1: one firewalled, one reachable; both take pushes.
        replica.handle_inbound(open("b-1", 1, "10.0.0.2:0"));
        replica.handle_inbound(open("b-1", 2, "10.0.0.3:7000"));
        // Not known yet: neither flagged nor a push target.
        apply_all(&mut replica, &mut index);
        assert!(!replica.pushes().is_unreachable(&fw));
        assert_eq!(replica.pushes_mut().node_for(&fw), None);
        replica.handle_inbound(reach("b-1", 1, false));
        replica.handle_inbound(reach("b-1", 2, true));
        // c-1 has a session at the same firewalled address (one NAT).
        replica.handle_inbound(open("c-1", 1, "10.0.0.2:0"));
        replica.handle_inbound(reach("c-1", 1, false));
        apply_all(&mut replica, &mut index);
        assert!(replica.pushes().is_unreachable(&fw));
        assert!(!replica.pushes().is_unreachable(&open_port));
        assert_eq!(replica.pushes().count(), 3);
        assert_eq!(replica.pushes_mut().node_for(&open_port), Some("b-1"));
        // Each node in turn.
        let turns: Vec<String> = (0..2)
            .map(|_| replica.pushes_mut().node_for(&fw).unwrap().to_string())
            .collect();
        assert!(turns.contains(&"b-1".to_string()) && turns.contains(&"c-1".to_string()));
        // A snapshot restating it changes nothing; one opening the session here (its Open
        // deleted by the compaction) brings it.
        replica.handle_inbound(rec("b-1", 1, Record::Snapshot { addr: fw }));
        replica.handle_inbound(reach("b-1", 1, false));
        replica.handle_inbound(rec("b-1", 1, Record::SnapshotEnd));
        let late: SocketAddr = "10.0.0.4:0".parse().unwrap();
        replica.handle_inbound(rec("b-1", 7, Record::Snapshot { addr: late }));
        replica.handle_inbound(reach("b-1", 7, false));
        replica.handle_inbound(rec("b-1", 7, Record::SnapshotEnd));
        apply_all(&mut replica, &mut index);
        assert_eq!(replica.pushes().count(), 4);
        assert!(replica.pushes().is_unreachable(&late));
        // b-1's session 1 ends: the address is still flagged for c-1's.
        replica.handle_inbound(rec("b-1", 1, Record::End));
        apply_all(&mut replica, &mut index);
        assert!(replica.pushes().is_unreachable(&fw));
        assert_eq!(replica.pushes_mut().node_for(&fw), Some("c-1"));
        assert_eq!(replica.pushes_mut().node_for(&fw), Some("c-1"));
        // b-1 dies: its sessions go, c-1's stays.
        replica.handle_inbound(Inbound::NodeDead { node: "b-1".into() });
        apply_all(&mut replica, &mut index);
        assert!(!replica.pushes().is_unreachable(&late));
        assert_eq!(replica.pushes_mut().node_for(&open_port), None);
        assert_eq!(replica.pushes().count(), 1);
        // A fence drops everything.
        replica.handle_inbound(Inbound::Fenced);
        apply_all(&mut replica, &mut index);
        assert_eq!(replica.pushes().count(), 0);
        assert!(!replica.pushes().is_unreachable(&fw));
    }

    #[test]
    fn a_snapshot_sweep_withdraws_one_name_of_a_file_and_keeps_the_other() {
        let at: SocketAddr = "10.0.0.2:7001".parse().unwrap();
        let mut index = Index::new();
        let mut replica = Replica::new();
        let renamed = FileEntry {
            name: "one name".into(),
            ..file("a file")
        };
        let other = FileEntry {
            name: "other name".into(),
            ..renamed.clone()
        };
        replica.handle_inbound(open("b-1", 1, "10.0.0.2:7001"));
        replica.handle_inbound(register("b-1", 1, vec![renamed.clone(), other.clone()]));
        apply_all(&mut replica, &mut index);
        replica.handle_inbound(rec("b-1", 1, Record::Snapshot { addr: at }));
        replica.handle_inbound(register("b-1", 1, vec![other.clone()]));
        replica.handle_inbound(rec("b-1", 1, Record::SnapshotEnd));
        apply_all(&mut replica, &mut index);
        let files = index.lookup(&LookupKey::Hash(renamed.hash)).unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].name, "other name");
        assert_eq!(files[0].holders, [at]);
        assert_eq!(index.entry_count(), 1);
        assert_eq!(index.holdings_of(PeerId(0)), 1);
    }

    #[test]
    fn a_remote_register_answers_lookups_and_searches_like_a_local_one() {
        let mut index = Index::new();
        let local = index.add_peer("10.0.0.1:7000".parse().unwrap());
        index.register(local, &[file("zebra crossing.flac")]);
        let mut replica = Replica::new();
        replica.handle_inbound(open("b-1", 4, "10.0.0.2:7001"));
        replica.handle_inbound(register(
            "b-1",
            4,
            vec![file("zebra crossing.flac"), file("zebra stripes.ogg")],
        ));
        assert!(apply_all(&mut replica, &mut index).is_empty());
        let mut both = holders(&mut index, "zebra crossing.flac");
        both.sort();
        assert_eq!(
            both,
            [
                "10.0.0.1:7000".parse().unwrap(),
                "10.0.0.2:7001".parse().unwrap()
            ]
        );
        assert_eq!(
            holders(&mut index, "zebra stripes.ogg"),
            ["10.0.0.2:7001".parse::<SocketAddr>().unwrap()]
        );
        let (hits, _) = index.search("zebra", 10);
        assert_eq!(hits.len(), 2);
        let crossing = hits
            .iter()
            .find(|h| h.name == "zebra crossing.flac")
            .unwrap();
        assert_eq!(crossing.holders, 2);
        assert_eq!(replica.session_count(), 1);
        assert_eq!(replica.counts().records, 2);
    }

    #[test]
    fn a_remote_unregister_and_session_end_withdraw_only_that_peer() {
        let mut index = Index::new();
        let local = index.add_peer("10.0.0.1:7000".parse().unwrap());
        index.register(local, &[file("shared")]);
        let mut replica = Replica::new();
        replica.handle_inbound(open("b-1", 1, "10.0.0.2:7001"));
        replica.handle_inbound(register(
            "b-1",
            1,
            vec![file("shared"), file("a"), file("b")],
        ));
        replica.handle_inbound(rec(
            "b-1",
            1,
            Record::Unregister {
                hashes: vec![file("a").hash],
            },
        ));
        apply_all(&mut replica, &mut index);
        assert!(holders(&mut index, "a").is_empty());
        assert_eq!(holders(&mut index, "b").len(), 1);
        assert_eq!(holders(&mut index, "shared").len(), 2);
        replica.handle_inbound(rec("b-1", 1, Record::End));
        // The peer leaves every answer at once, before its holdings are withdrawn.
        let mut events = Vec::new();
        replica.poll_all(&mut index, &mut events);
        assert!(holders(&mut index, "b").is_empty());
        apply_all(&mut replica, &mut index);
        assert_eq!(
            holders(&mut index, "shared"),
            ["10.0.0.1:7000".parse::<SocketAddr>().unwrap()]
        );
        assert_eq!(index.entry_count(), 1);
        assert_eq!(index.peer_count(), 1);
        assert_eq!(replica.session_count(), 0);
    }

    #[test]
    fn a_node_death_drops_all_its_sessions_and_later_records_of_it() {
        let mut index = Index::new();
        let mut replica = Replica::new();
        for s in 0..5 {
            replica.handle_inbound(open("a-1", s, &format!("10.0.1.{s}:7000")));
            let files = (0..100).map(|i| file(&format!("a{s} {i}"))).collect();
            replica.handle_inbound(register("a-1", s, files));
        }
        replica.handle_inbound(open("c-1", 0, "10.0.2.1:7000"));
        replica.handle_inbound(register("c-1", 0, vec![file("c only")]));
        apply_all(&mut replica, &mut index);
        assert_eq!(index.entry_count(), 501);
        replica.handle_inbound(Inbound::NodeDead { node: "a-1".into() });
        // A record of the dead node read late does not bring it back.
        replica.handle_inbound(open("a-1", 9, "10.0.1.9:7000"));
        replica.handle_inbound(register("a-1", 9, vec![file("late")]));
        let mut events = Vec::new();
        replica.poll_all(&mut index, &mut events);
        // Gone from every answer at once; withdrawn in slices.
        assert_eq!(index.peer_count(), 1);
        assert!(holders(&mut index, "a0 1").is_empty());
        assert!(index.has_departures());
        let mut slices = 0;
        while index.has_departures() {
            assert!(index.continue_departures(64) <= 64 + 1);
            slices += 1;
        }
        assert!(slices >= 500 / 65, "{slices}");
        assert_eq!(index.entry_count(), 1);
        assert_eq!(holders(&mut index, "c only").len(), 1);
        assert!(holders(&mut index, "late").is_empty());
        assert_eq!(replica.counts().deaths, 1);
        assert_eq!(replica.counts().dropped, 2);
        assert_eq!(replica.nodes().collect::<Vec<_>>(), ["c-1"]);
    }

    #[test]
    fn records_of_a_session_never_opened_here_are_dropped() {
        let mut index = Index::new();
        let mut replica = Replica::new();
        replica.handle_inbound(register("b-1", 3, vec![file("x")]));
        replica.handle_inbound(rec("b-1", 3, Record::End));
        replica.handle_inbound(rec("b-1", 3, Record::Unregister { hashes: vec![] }));
        apply_all(&mut replica, &mut index);
        assert_eq!(index.entry_count(), 0);
        assert_eq!(replica.counts().dropped, 3);
        // A second Open of a live session is dropped too (the peer is not added twice).
        replica.handle_inbound(open("b-1", 4, "10.0.0.2:1"));
        replica.handle_inbound(open("b-1", 4, "10.0.0.2:2"));
        apply_all(&mut replica, &mut index);
        assert_eq!(index.peer_count(), 1);
    }

    /// Polls `replica` with a budget of 64 until it is idle, checking that no poll uses more
    /// or changes more than 64 entries, and that none raises an event; returns the polls.
    fn poll_in_slices_of_64(replica: &mut Replica, index: &mut Index) -> usize {
        let mut events = Vec::new();
        let mut polls = 0;
        while replica.has_work() {
            let before = index.entry_count();
            let used = replica.poll(index, 64, &mut events);
            assert!(used <= 64, "{used}");
            assert!(index.entry_count().abs_diff(before) <= 64);
            polls += 1;
        }
        assert!(events.is_empty());
        polls
    }

    #[test]
    fn a_big_remote_register_is_applied_in_bounded_slices_and_the_cap_holds() {
        let mut index = Index::new();
        let mut replica = Replica::new();
        replica.handle_inbound(open("b-1", 1, "10.0.0.2:7001"));
        let files: Vec<FileEntry> = (0..1000).map(|i| file(&format!("f {i}"))).collect();
        // The home node accepted 700 of these 1000 and 200 of the next part.
        replica.handle_inbound(rec(
            "b-1",
            1,
            Record::Register {
                files: files[..600].to_vec(),
                cap: Cap::AtMost(700),
            },
        ));
        replica.handle_inbound(rec(
            "b-1",
            1,
            Record::Register {
                files: files[600..].to_vec(),
                cap: Cap::Rest,
            },
        ));
        let polls = poll_in_slices_of_64(&mut replica, &mut index);
        assert!(polls >= 1000 / 64, "{polls}");
        assert_eq!(index.entry_count(), 700);
    }

    #[test]
    fn a_big_remote_unregister_is_withdrawn_in_bounded_slices() {
        let mut index = Index::new();
        let mut replica = Replica::new();
        replica.handle_inbound(open("b-1", 1, "10.0.0.2:7001"));
        let files: Vec<FileEntry> = (0..1000).map(|i| file(&format!("f {i}"))).collect();
        replica.handle_inbound(register("b-1", 1, files.clone()));
        apply_all(&mut replica, &mut index);
        assert_eq!(index.entry_count(), 1000);
        let gone: Vec<FileHash> = files[..900].iter().map(|f| f.hash).collect();
        replica.handle_inbound(rec("b-1", 1, Record::Unregister { hashes: gone }));
        let polls = poll_in_slices_of_64(&mut replica, &mut index);
        assert!(polls >= 900 / 64, "{polls}");
        assert_eq!(index.entry_count(), 100);
        assert!(holders(&mut index, "f 0").is_empty());
        assert_eq!(holders(&mut index, "f 950").len(), 1);
    }

    #[test]
    fn a_poll_until_a_deadline_stops_after_each_group_whatever_the_work() {
        let (mut index, mut replica, mut events) = (Index::new(), Replica::new(), Vec::new());
        replica.handle_inbound(open("b-1", 1, "10.0.0.2:7001"));
        let files: Vec<FileEntry> = (0..1000).map(|i| file(&format!("f {i}"))).collect();
        replica.handle_inbound(register("b-1", 1, files.clone()));
        assert_eq!(replica.poll(&mut index, 1, &mut events), 1);
        // Late from the start: one group, and the group's files are in the tables, not left
        // staged for a later step (where thousands came out at once).
        let used = replica.poll_until(&mut index, 64, || true, &mut events);
        assert_eq!(used, GROUP_UNITS);
        assert_eq!(index.entry_count(), GROUP_UNITS);
        assert_eq!(index.staged_count(), 0);
        // Late at the third look: three groups.
        let looks = std::cell::Cell::new(0);
        let late = || {
            looks.set(looks.get() + 1);
            looks.get() >= 3
        };
        assert_eq!(
            replica.poll_until(&mut index, 64, late, &mut events),
            3 * GROUP_UNITS
        );
        assert_eq!(index.staged_count(), 0);
        while index.entry_count() < 1000 {
            replica.poll_until(&mut index, 64, || false, &mut events);
        }
        // The words left pending before an unregister are posted a group at a time too.
        let gone: Vec<FileHash> = files[100..].iter().map(|f| f.hash).collect();
        replica.handle_inbound(rec("b-1", 1, Record::Unregister { hashes: gone }));
        assert!(index.has_pending());
        assert!(replica.poll_until(&mut index, 64, || true, &mut events) <= GROUP_UNITS);
        assert!(index.has_pending());
        let mut polls = 0;
        while replica.has_work() {
            let before = index.entry_count();
            assert!(replica.poll_until(&mut index, 64, || true, &mut events) <= GROUP_UNITS);
            assert!(before - index.entry_count() <= GROUP_UNITS);
            polls += 1;
        }
        assert!(polls >= 900 / GROUP_UNITS, "{polls}");
        assert_eq!(index.entry_count(), 100);
        assert!(events.is_empty());
    }

    #[test]
    fn a_snapshot_s_marks_take_memory_as_its_records_come_and_its_sweep_goes_by_groups() {
        let at: SocketAddr = "10.0.0.2:7001".parse().unwrap();
        let (mut index, mut replica, mut events) = (Index::new(), Replica::new(), Vec::new());
        replica.handle_inbound(open("b-1", 1, "10.0.0.2:7001"));
        let files: Vec<FileEntry> = (0..1000).map(|i| file(&format!("f {i}"))).collect();
        replica.handle_inbound(register("b-1", 1, files.clone()));
        apply_all(&mut replica, &mut index);
        let marks = |r: &Replica| {
            let s = &r.nodes["b-1"][&1];
            s.marks.as_ref().map(|m| (m.len(), m.heap_bytes()))
        };
        // The snapshot's start allocates nothing for the 1,000 holdings it will restate (a
        // set sized for 300,000 took milliseconds in one call).
        replica.handle_inbound(rec("b-1", 1, Record::Snapshot { addr: at }));
        replica.poll_all(&mut index, &mut events);
        assert_eq!(marks(&replica), Some((0, 0)));
        replica.handle_inbound(register("b-1", 1, files[..100].to_vec()));
        replica.poll_all(&mut index, &mut events);
        assert_eq!(marks(&replica).map(|m| m.0), Some(100));
        replica.handle_inbound(rec("b-1", 1, Record::SnapshotEnd));
        let mut polls = 0;
        while replica.has_work() {
            let before = index.entry_count();
            replica.poll_until(&mut index, 64, || true, &mut events);
            assert!(before - index.entry_count() <= GROUP_UNITS);
            polls += 1;
        }
        assert!(polls >= 1000 / GROUP_UNITS, "{polls}");
        assert_eq!(index.entry_count(), 100);
        assert_eq!(holders(&mut index, "f 99"), [at]);
        assert!(holders(&mut index, "f 100").is_empty());
        assert!(events.is_empty());
    }

    #[test]
    fn a_rebuild_posts_the_words_of_each_slice_as_a_serving_node_does() {
        let mut index = Index::new();
        let mut replica = Replica::new();
        replica.handle_inbound(open("b-1", 1, "10.0.0.2:7001"));
        let n = 3 * REBUILD_SLICE_UNITS;
        let files: Vec<FileEntry> = (0..n).map(|i| file(&format!("song {i}"))).collect();
        replica.handle_inbound(register("b-1", 1, files));
        replica.handle_inbound(Inbound::Rebuilt);
        let mut events = Vec::new();
        let mut slices = 0;
        while replica.has_work() {
            let used = replica.poll_rebuilding(&mut index, &mut events);
            assert!(used <= REBUILD_SLICE_UNITS, "{used}");
            // Nothing waits for a later post: the words are posted, the names compressed.
            assert!(!index.has_pending());
            slices += 1;
        }
        assert!(slices >= 3, "{slices}");
        assert_eq!(events, [Event::Rebuilt]);
        assert_eq!(index.entry_count(), n);
        assert_eq!(holders(&mut index, "song 7").len(), 1);
    }

    #[test]
    fn words_left_pending_are_posted_a_slice_a_poll_before_an_unregister() {
        let mut index = Index::new();
        let mut replica = Replica::new();
        replica.handle_inbound(open("b-1", 1, "10.0.0.2:7001"));
        let files: Vec<FileEntry> = (0..1000).map(|i| file(&format!("f {i}"))).collect();
        replica.handle_inbound(register("b-1", 1, files.clone()));
        let gone: Vec<FileHash> = files[..900].iter().map(|f| f.hash).collect();
        replica.handle_inbound(rec("b-1", 1, Record::Unregister { hashes: gone }));
        let mut events = Vec::new();
        // The register is applied in slices; the index leaves its words pending.
        while index.entry_count() < 1000 {
            replica.poll(&mut index, 64, &mut events);
        }
        assert!(index.has_pending());
        assert!(replica.poll(&mut index, 64, &mut events) <= 64);
        assert!(
            index.has_pending(),
            "the unregister posted every pending word at once"
        );
        poll_in_slices_of_64(&mut replica, &mut index);
        assert_eq!(index.entry_count(), 100);
        assert_eq!(holders(&mut index, "f 950").len(), 1);
    }

    #[test]
    fn a_node_applying_behind_posts_words_as_it_goes() {
        let mut index = Index::new();
        let mut replica = Replica::new();
        replica.handle_inbound(open("b-1", 1, "10.0.0.2:7001"));
        let n = 3 * MAX_UNPOSTED_ENTRIES;
        for chunk in (0..n).collect::<Vec<_>>().chunks(1000) {
            let files = chunk.iter().map(|i| file(&format!("song {i}"))).collect();
            replica.handle_inbound(register("b-1", 1, files));
        }
        let mut events = Vec::new();
        // Polls as a turn's share takes them, the turn's end posting nothing (it had no
        // time left): the entries waiting for their words stay bounded.
        let mut most = 0;
        while replica.has_work() {
            replica.poll_until(&mut index, 800, || false, &mut events);
            most = most.max(index.unposted_count());
        }
        assert!(most <= MAX_UNPOSTED_ENTRIES + GROUP_UNITS, "{most}");
        // (Sampled after each poll, not each step: within a group of the bound.)
        assert!(
            most + GROUP_UNITS >= MAX_UNPOSTED_ENTRIES,
            "the bound was never reached: {most}"
        );
        assert_eq!(index.entry_count(), n);
        assert_eq!(holders(&mut index, "song 7").len(), 1);
    }

    #[test]
    fn control_messages_stop_the_poll_in_order() {
        let mut index = Index::new();
        let mut replica = Replica::new();
        replica.handle_inbound(open("b-1", 1, "10.0.0.2:7001"));
        replica.handle_inbound(Inbound::Rebuilt);
        replica.handle_inbound(register("b-1", 1, vec![file("after")]));
        replica.handle_inbound(Inbound::Lost { session: 7 });
        let mut events = Vec::new();
        replica.poll(&mut index, usize::MAX, &mut events);
        // Everything before the rebuild mark is in; nothing after it.
        assert_eq!(events, [Event::Rebuilt]);
        assert_eq!(index.peer_count(), 1);
        assert_eq!(index.entry_count(), 0);
        replica.poll(&mut index, usize::MAX, &mut events);
        assert_eq!(events, [Event::Rebuilt, Event::Lost(7)]);
        assert_eq!(index.entry_count(), 1);
    }

    /// The running totals by address are what a walk of the sessions finds.
    fn assert_totals(replica: &Replica, index: &Index) {
        assert_eq!(replica.by_address, replica.walked_totals(index));
    }

    fn at(replica: &Replica, ip: &str) -> usize {
        replica.remote_holdings_at(Address::of(ip.parse().unwrap()))
    }

    fn files_named(prefix: &str, n: usize) -> Vec<FileEntry> {
        (0..n).map(|i| file(&format!("{prefix} {i}"))).collect()
    }

    /// Applies what is queued, departures left undone (a departing peer's entries are still
    /// in the index: the totals must not count them).
    fn poll_only(replica: &mut Replica, index: &mut Index) -> Vec<Event> {
        let mut events = Vec::new();
        replica.poll_all(index, &mut events);
        events
    }

    #[test]
    fn an_address_s_remote_entries_follow_every_change_and_leave_with_a_session_at_once() {
        let mut index = Index::new();
        let mut replica = Replica::new();
        replica.handle_inbound(open("b-1", 1, "10.0.0.9:7001"));
        replica.handle_inbound(open("b-1", 2, "10.0.0.9:7002"));
        replica.handle_inbound(open("c-1", 1, "10.0.0.9:7003"));
        replica.handle_inbound(open("b-1", 3, "10.0.0.8:7001"));
        replica.handle_inbound(register("b-1", 1, files_named("one", 10)));
        replica.handle_inbound(register("b-1", 2, files_named("two", 5)));
        replica.handle_inbound(register("c-1", 1, files_named("three", 7)));
        replica.handle_inbound(register("b-1", 3, files_named("four", 3)));
        poll_only(&mut replica, &mut index);
        assert_totals(&replica, &index);
        assert_eq!(
            (at(&replica, "10.0.0.9"), at(&replica, "10.0.0.8")),
            (22, 3)
        );
        // A capped register counts what it took, not what it asked.
        replica.handle_inbound(rec(
            "b-1",
            3,
            Record::Register {
                files: files_named("capped", 5),
                cap: Cap::AtMost(2),
            },
        ));
        // An unregister: 4 of session 1's.
        let hashes = files_named("one", 4).into_iter().map(|f| f.hash).collect();
        replica.handle_inbound(rec("b-1", 1, Record::Unregister { hashes }));
        poll_only(&mut replica, &mut index);
        assert_totals(&replica, &index);
        assert_eq!(
            (at(&replica, "10.0.0.9"), at(&replica, "10.0.0.8")),
            (18, 5)
        );
        // An end: gone from the count before its departure has withdrawn anything.
        replica.handle_inbound(rec("b-1", 2, Record::End));
        poll_only(&mut replica, &mut index);
        assert!(index.has_departures());
        assert_totals(&replica, &index);
        assert_eq!(at(&replica, "10.0.0.9"), 13);
        // A restating snapshot of session 1 (6 entries): 2 restated, 1 new; its sweep
        // withdraws the other 4, a slice a poll, the total right after each.
        replica.handle_inbound(rec(
            "b-1",
            1,
            Record::Snapshot {
                addr: "10.0.0.9:7001".parse().unwrap(),
            },
        ));
        let mut restated = files_named("one", 6)[4..].to_vec();
        restated.push(file("one new"));
        replica.handle_inbound(register("b-1", 1, restated));
        replica.handle_inbound(rec("b-1", 1, Record::SnapshotEnd));
        let mut events = Vec::new();
        let mut sweeps = 0;
        while replica.has_work() {
            replica.poll(&mut index, 2, &mut events);
            assert_totals(&replica, &index);
            sweeps += usize::from(replica.sweep.is_some());
        }
        assert!(sweeps >= 2, "the sweep went in slices");
        assert_eq!(at(&replica, "10.0.0.9"), 3 + 7);
        // A node's death: its sessions leave the count at once.
        replica.handle_inbound(Inbound::NodeDead { node: "c-1".into() });
        poll_only(&mut replica, &mut index);
        assert_totals(&replica, &index);
        assert_eq!(at(&replica, "10.0.0.9"), 3);
        // A fence: every remote session at once.
        replica.handle_inbound(Inbound::Fenced);
        assert_eq!(poll_only(&mut replica, &mut index), [Event::Fenced]);
        assert!(index.has_departures());
        assert_totals(&replica, &index);
        assert!(replica.by_address.is_empty());
        assert_eq!((at(&replica, "10.0.0.9"), at(&replica, "10.0.0.8")), (0, 0));
    }

    #[test]
    fn a_freed_peer_slot_taken_by_a_new_session_starts_from_nothing() {
        let mut index = Index::new();
        let mut replica = Replica::new();
        replica.handle_inbound(open("b-1", 1, "10.0.0.9:7001"));
        replica.handle_inbound(register("b-1", 1, files_named("old", 10)));
        poll_only(&mut replica, &mut index);
        let old = replica.nodes["b-1"][&1].peer;
        replica.handle_inbound(rec("b-1", 1, Record::End));
        apply_all(&mut replica, &mut index);
        assert_eq!(at(&replica, "10.0.0.9"), 0);
        // A new session at the same address and one at another take the freed slot in turn.
        replica.handle_inbound(open("c-1", 5, "10.0.0.9:7002"));
        poll_only(&mut replica, &mut index);
        assert_eq!(replica.nodes["c-1"][&5].peer, old, "the slot is reused");
        assert_totals(&replica, &index);
        assert_eq!(at(&replica, "10.0.0.9"), 0);
        replica.handle_inbound(register("c-1", 5, files_named("new", 2)));
        poll_only(&mut replica, &mut index);
        assert_totals(&replica, &index);
        assert_eq!(at(&replica, "10.0.0.9"), 2);
        replica.handle_inbound(rec("c-1", 5, Record::End));
        apply_all(&mut replica, &mut index);
        replica.handle_inbound(open("b-1", 2, "10.0.0.7:7001"));
        poll_only(&mut replica, &mut index);
        assert_eq!(replica.nodes["b-1"][&2].peer, old, "the slot is reused");
        assert_totals(&replica, &index);
        assert_eq!((at(&replica, "10.0.0.9"), at(&replica, "10.0.0.7")), (0, 0));
    }

    /// A change of the property test below.
    #[derive(Debug, Clone)]
    enum Op {
        Open {
            node: u8,
            session: u8,
            ip: u8,
        },
        Register {
            node: u8,
            session: u8,
            from: u8,
            n: u8,
            cap: Option<u8>,
        },
        Unregister {
            node: u8,
            session: u8,
            from: u8,
            n: u8,
        },
        Snapshot {
            node: u8,
            session: u8,
            from: u8,
            n: u8,
        },
        End {
            node: u8,
            session: u8,
        },
        Dead {
            node: u8,
        },
        Fenced,
        Depart,
    }

    fn op() -> impl proptest::strategy::Strategy<Value = Op> {
        use proptest::prelude::*;
        let (node, session, name) = (0..3u8, 0..4u8, 0..40u8);
        prop_oneof![
            3 => (node.clone(), session.clone(), 0..3u8)
                .prop_map(|(node, session, ip)| Op::Open { node, session, ip }),
            4 => (node.clone(), session.clone(), name.clone(), 0..20u8, proptest::option::of(0..10u8))
                .prop_map(|(node, session, from, n, cap)| Op::Register { node, session, from, n, cap }),
            2 => (node.clone(), session.clone(), name.clone(), 0..20u8)
                .prop_map(|(node, session, from, n)| Op::Unregister { node, session, from, n }),
            1 => (node.clone(), session.clone(), name, 0..20u8)
                .prop_map(|(node, session, from, n)| Op::Snapshot { node, session, from, n }),
            1 => (node.clone(), session).prop_map(|(node, session)| Op::End { node, session }),
            1 => node.prop_map(|node| Op::Dead { node }),
            1 => Just(Op::Fenced),
            1 => Just(Op::Depart),
        ]
    }

    proptest::proptest! {
        /// Whatever the changes, and however the polls slice them, the running totals by
        /// address are what a walk of the live sessions finds after every poll.
        #[test]
        fn the_totals_by_address_match_a_walk_after_every_poll(
            ops in proptest::collection::vec(op(), 1..60),
            budget in 1..8usize,
        ) {
            let mut index = Index::new();
            let mut replica = Replica::new();
            let names = |from: u8, n: u8| -> Vec<FileEntry> {
                (from..from.saturating_add(n)).map(|i| file(&format!("f{}", i % 40))).collect()
            };
            let n = |node: u8| format!("n-{node}");
            for op in ops {
                match op {
                    Op::Open { node, session, ip } => replica.handle_inbound(open(
                        &n(node), session.into(), &format!("10.0.0.{ip}:700{session}"),
                    )),
                    Op::Register { node, session, from, n: k, cap } => {
                        let cap = cap.map_or(Cap::All, |c| Cap::AtMost(c.into()));
                        let files = names(from, k);
                        replica.handle_inbound(rec(&n(node), session.into(), Record::Register { files, cap }));
                    }
                    Op::Unregister { node, session, from, n: k } => {
                        let hashes = names(from, k).into_iter().map(|f| f.hash).collect();
                        replica.handle_inbound(rec(&n(node), session.into(), Record::Unregister { hashes }));
                    }
                    Op::Snapshot { node, session, from, n: k } => {
                        let addr = format!("10.0.0.{}:7000", session % 3).parse().unwrap();
                        replica.handle_inbound(rec(&n(node), session.into(), Record::Snapshot { addr }));
                        replica.handle_inbound(register(&n(node), session.into(), names(from, k)));
                        replica.handle_inbound(rec(&n(node), session.into(), Record::SnapshotEnd));
                    }
                    Op::End { node, session } => replica.handle_inbound(rec(&n(node), session.into(), Record::End)),
                    Op::Dead { node } => replica.handle_inbound(Inbound::NodeDead { node: n(node) }),
                    Op::Fenced => replica.handle_inbound(Inbound::Fenced),
                    Op::Depart => {
                        index.continue_departures(usize::MAX);
                    }
                }
                let mut events = Vec::new();
                replica.poll(&mut index, budget, &mut events);
                proptest::prop_assert_eq!(&replica.by_address, &replica.walked_totals(&index));
            }
            let mut events = Vec::new();
            while replica.has_work() {
                replica.poll(&mut index, budget, &mut events);
                proptest::prop_assert_eq!(&replica.by_address, &replica.walked_totals(&index));
            }
        }
    }
}
