//! The reactor's side of the NATS thread: the two channels, the local sessions' numbers,
//! and the [`Replica`] that applies what arrives.
//!
//! Local changes become [`Outbound`] records sent to the NATS thread without waiting (the
//! reactor never blocks on NATS). The records handed over and not stored yet are bounded by
//! [`MAX_OUTBOUND_RECORDS`]: past it the reactor refuses new sessions and registers
//! ([`Link::is_congested`]), so session churn waits in its peers, never in this process's
//! memory. What the NATS thread receives
//! arrives on a std channel, and the thread wakes the reactor; [`Link::receive`] moves it into
//! the replica, which applies it in bounded slices. The reactor stays the only thread that
//! touches the index.
//!
//! Records received and not applied yet are bounded by a [`Backlog`]: the NATS thread waits
//! (asynchronously) while [`MAX_QUEUED_RECORDS`] of them are queued, so a fast stream (a
//! rebuild reads a million entries in seconds) waits in NATS, not decoded in this process's
//! memory.
//!
//! # Snapshots
//! A local session whose subject holds much more than its live set is compacted by a
//! snapshot ([`Record::Snapshot`], see [`Link::wants_snapshot`]), built a slice at a time
//! across turns ([`Link::poll_snapshots`]): a walk of the peer's holdings in entry-id order,
//! published as `Register` records, then a [`Record::SnapshotEnd`]. The session's own changes
//! go on meanwhile and are published as they happen, each after what the walk restated so
//! far, so the stream holds the changes in the order the index saw them. Why that is exact at
//! the other nodes (`apply.rs` marks what a snapshot restates and withdraws the rest at its
//! end): a holding the peer has at the end was either there when the walk passed its entry
//! id (restated then, and not withdrawn since) or came after the walk passed it, from a
//! register published after the `Snapshot` record; a holding it no longer has was withdrawn
//! by an unregister published after its restatement, or is not restated at all. Two things
//! would break that, and are kept out: files staged by a register published *before* the
//! `Snapshot` (they get entry ids later, possibly behind the walk), so the snapshot begins
//! only once the peer has none staged; and a register the home node's limits capped while
//! the snapshot runs (another node applies the cap to what it holds, which differs from the
//! home node's holdings until the snapshot ends), which starts the snapshot again.
//!
//! # Fencing
//! Before it answers anyone, the reactor checks the node's liveness lease
//! ([`Lease`](super::counters::Lease)): once it runs out, the other nodes may drop this
//! node's sessions at any moment, and its own view may lag (a stalled NATS thread reads
//! nothing). The node then fences itself ([`Link::fence`]): it ends every local session (each
//! peer goes on at another `--index` node), refuses everyone, and asks the NATS thread to
//! rejoin as a new incarnation and read the stream again; it serves again at the
//! [`Event::Rebuilt`] that ends that read. A node the others consider dead never answers as
//! if its view were whole.

use super::apply::{Event, Inbound, Replica};
use super::counters::{Counters, CountersSnapshot};
use super::relay::{RelayAnswer, RelayedPush};
use super::{Record, MAX_RECORD_BYTES};
use crate::index::store::{Index, PeerId, RegisterOutcome};
use crate::reactor::ConnId;
use crate::wire::{FileEntry, FileHash};
use hashbrown::HashMap;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::Arc;
use tokio::sync::mpsc::UnboundedSender;

/// What the reactor hands to the NATS thread.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outbound {
    /// Publish a local session's record on its subject (an `End` also deletes the session's
    /// records, a [`Record::SnapshotEnd`] those before its snapshot).
    Publish {
        /// The local session's number.
        session: u64,
        /// The change.
        record: Record,
    },
    /// The reactor fenced itself (its lease ran out): rejoin as a new incarnation, and read
    /// the stream again from its start ([`Inbound::Fenced`], then [`Inbound::Rebuilt`]).
    Fence,
    /// indexd is stopping: delete our liveness key (the others drop our sessions at once)
    /// and end the thread.
    Stop,
    /// Relay a push to node `node`'s holder (see [`relay`](super::relay)); the answer comes
    /// back as [`Inbound::PushAnswer`] with `id`, within [`RELAY_TIMEOUT`](super::relay::RELAY_TIMEOUT).
    Push {
        /// The relay's number here.
        id: u64,
        /// The holder's node (its name with its incarnation).
        node: String,
        /// The push.
        push: RelayedPush,
        /// When the reactor gives it up: past it, the NATS thread drops it unsent (see
        /// [`relay`](super::relay)'s deadlines).
        deadline: std::time::Instant,
    },
    /// The answer to [`Inbound::PushIn`] `token`.
    PushAnswer {
        /// The request's handle.
        token: u64,
        /// The answer.
        answer: RelayAnswer,
    },
}

/// Most records handed to the NATS thread and not stored yet before the reactor refuses new
/// sessions and registers (ends and unregisters are always taken: they shrink the index).
pub const MAX_OUTBOUND_RECORDS: u64 = 4096;

/// Most records received from the NATS thread and not applied yet (each at most
/// [`MAX_RECORD_BYTES`](super::MAX_RECORD_BYTES) on the stream: 16 MiB of payloads at most).
pub const MAX_QUEUED_RECORDS: usize = 64;

/// Records handed to the reactor and not applied yet; see the module docs.
#[derive(Debug, Default)]
pub struct Backlog {
    queued: AtomicUsize,
    drained: tokio::sync::Notify,
}

impl Backlog {
    /// Waits until fewer than [`MAX_QUEUED_RECORDS`] are queued, then counts one more (the
    /// NATS thread, before it hands a record over).
    pub async fn reserve(&self) {
        while self.queued.load(Ordering::Acquire) >= MAX_QUEUED_RECORDS {
            // A release between the load and this wait leaves a permit: no wake is lost.
            self.drained.notified().await;
        }
        self.queued.fetch_add(1, Ordering::AcqRel);
    }

    /// `n` records were applied (or dropped).
    fn release(&self, n: usize) {
        if n > 0 {
            let _ = self
                .queued
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                    Some(q.saturating_sub(n))
                });
            self.drained.notify_one();
        }
    }

    /// Records queued now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// A local session, as the cluster knows it.
#[derive(Debug)]
struct Local {
    session: u64,
    conn: Option<ConnId>,
    /// Its peer's download address (for its snapshots).
    addr: SocketAddr,
    /// Bytes its records take on the stream since its last snapshot began (that snapshot
    /// included): what its subject holds ([`Record::stream_bytes`]).
    written: u64,
    /// Payload bytes and files of every register it published: the average entry's size,
    /// to size its live set from its entry count.
    register_bytes: u64,
    register_files: u64,
    /// Its snapshot under way, if one is.
    snapshot: Option<Box<Snapshotting>>,
    /// Its [`Record::Reachability`], once published (restated after each snapshot's start).
    reachable: Option<bool>,
}

/// A local session's snapshot under way; see the module docs.
#[derive(Debug, Default)]
struct Snapshotting {
    /// `None` until its [`Record::Snapshot`] is published; then the entry id the walk goes on
    /// from.
    next: Option<u32>,
    /// Holdings walked and not published yet, and their bytes as [`Record::registers`]
    /// counts them: published at [`MAX_RECORD_BYTES`], at the walk's end, and before any
    /// other record of the session.
    walked: Vec<FileEntry>,
    walked_bytes: usize,
}

/// A local session's subject is compacted once it holds more than this many bytes and
/// [`SNAPSHOT_GROWTH`] times its live set's (see [`Link::wants_snapshot`]).
pub const SNAPSHOT_FLOOR_BYTES: u64 = 256 * 1024;
/// See [`SNAPSHOT_FLOOR_BYTES`].
pub const SNAPSHOT_GROWTH: u64 = 2;
/// Records handed to the NATS thread and not stored yet past which snapshots wait: a walk
/// fills records of up to [`MAX_RECORD_BYTES`] faster than the stream stores them (one at a
/// time per session), so this bounds what a big session's snapshot queues in this process
/// (64 MiB at worst), and a snapshot never brings the node near [`MAX_OUTBOUND_RECORDS`],
/// where it refuses its peers' registers.
pub const SNAPSHOT_OUTBOUND_RECORDS: u64 = MAX_OUTBOUND_RECORDS / 16;

/// The reactor's side of the cluster; see the module docs.
pub struct Link {
    replica: Replica,
    to_nats: UnboundedSender<Outbound>,
    from_nats: Receiver<Inbound>,
    /// Local sessions by their index peer.
    local: HashMap<PeerId, Local>,
    /// Local sessions with a snapshot under way, oldest first (a session ended since is
    /// skipped).
    snapshots: VecDeque<PeerId>,
    next_session: u64,
    /// The NATS thread is gone (its channel closed).
    gone: bool,
    /// What the NATS thread counts (it holds a clone).
    counters: Arc<Counters>,
    /// Records received and not applied (the NATS thread holds a clone).
    backlog: Arc<Backlog>,
    /// Fenced: serving no one until the stream is read again ([`Event::Rebuilt`]) and the
    /// new incarnation's lease holds.
    fenced: bool,
    /// The stream was read again since the fence.
    reread: bool,
    /// Relay messages received ([`Inbound::PushIn`], [`Inbound::PushAnswer`]), for the server.
    relays: Vec<Inbound>,
}

/// The cluster as the metrics show it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClusterStatus {
    /// The NATS thread's counts.
    pub nats: CountersSnapshot,
    /// Other nodes' records applied here.
    pub applied: u64,
    /// Other nodes' records dropped (of an ended session or a dead node).
    pub dropped: u64,
    /// Nodes found dead.
    pub deaths: u64,
    /// Records received and not applied yet.
    pub queued: u64,
    /// Local sessions.
    pub local_sessions: u64,
    /// Other nodes' sessions in the index.
    pub remote_sessions: u64,
    /// Other nodes' peers' holdings in the index.
    pub remote_holdings: u64,
}

impl ClusterStatus {
    /// Records of the stream not applied here yet: those not read (the stream's last
    /// sequence past the last read; this node's own records count too, as the stream cannot
    /// tell them apart) and those read but not applied.
    pub fn apply_lag(&self) -> u64 {
        self.nats
            .stream_sequence
            .saturating_sub(self.nats.read_sequence)
            + self.queued
    }
}

impl Link {
    /// A link over these channels (the NATS thread holds their other ends).
    pub fn new(to_nats: UnboundedSender<Outbound>, from_nats: Receiver<Inbound>) -> Link {
        Link {
            replica: Replica::new(),
            to_nats,
            from_nats,
            local: HashMap::new(),
            snapshots: VecDeque::new(),
            next_session: 1,
            gone: false,
            counters: Arc::default(),
            backlog: Arc::default(),
            fenced: false,
            reread: false,
            relays: Vec::new(),
        }
    }

    /// The bound on records received and not applied: the NATS thread reserves room in it.
    pub fn backlog(&self) -> Arc<Backlog> {
        self.backlog.clone()
    }

    /// Applies queued changes with `apply`, releasing the backlog of the records it used up.
    fn applying<T>(&mut self, apply: impl FnOnce(&mut Replica) -> T) -> T {
        let before = self.replica.queued_records();
        let out = apply(&mut self.replica);
        self.backlog
            .release(before.saturating_sub(self.replica.queued_records()));
        out
    }

    /// What the NATS thread counts: it updates the counters given to it here.
    pub fn counters(&self) -> Arc<Counters> {
        self.counters.clone()
    }

    /// The cluster's figures for the metrics (walks the remote sessions).
    pub fn status(&self, index: &Index) -> ClusterStatus {
        let counts = self.replica.counts();
        ClusterStatus {
            nats: self.counters.snapshot(),
            applied: counts.records,
            dropped: counts.dropped,
            deaths: counts.deaths,
            queued: self.replica.queued_records() as u64,
            local_sessions: self.local.len() as u64,
            remote_sessions: self.replica.session_count() as u64,
            remote_holdings: self.replica.remote_holdings(index),
        }
    }

    /// Live nodes of the cluster, this one included, as the NATS thread last saw the
    /// liveness bucket.
    pub fn nodes_alive(&self) -> u64 {
        self.counters.nodes_alive() + 1
    }

    /// The apply path's state (for stats and tests).
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    fn publish(&mut self, session: u64, record: Record) {
        // A closed channel means the thread failed; that arrives as `Failed` (or already did).
        if self
            .to_nats
            .send(Outbound::Publish { session, record })
            .is_ok()
        {
            self.counters.handle_queued();
        }
    }

    /// Whether new sessions and registers are refused: [`MAX_OUTBOUND_RECORDS`] wait for the
    /// stream.
    pub fn is_congested(&self) -> bool {
        self.counters.outbound() >= MAX_OUTBOUND_RECORDS
    }

    /// Whether the node is fenced (serving no one), fencing it first if its lease ran out
    /// at `now`; the connections to end then go to `close`.
    pub fn check_fence(&mut self, now: std::time::Instant, close: &mut Vec<ConnId>) -> bool {
        let expired = self.counters.lease.is_expired(now);
        if self.fenced && self.reread && !expired {
            log::info!(
                "cluster: the stream was read again and our new key is alive; serving again"
            );
            self.fenced = false;
        }
        if !self.fenced && expired {
            log::error!(
                "cluster: our liveness key was not refreshed in time (NATS unreachable or this \
                 node's NATS thread stalled): the other nodes may drop our sessions; fencing \
                 ({} local sessions end), rejoining and reading the stream again",
                self.local.len()
            );
            let _ = self.to_nats.send(Outbound::Fence);
            self.fence(close);
        }
        self.fenced
    }

    /// Fences the node: every local session is forgotten (its end is not published: the old
    /// incarnation's subjects are purged as a dead node's) and its connection goes to
    /// `close`; see the module docs.
    fn fence(&mut self, close: &mut Vec<ConnId>) {
        self.fenced = true;
        self.reread = false;
        close.extend(self.local.drain().filter_map(|(_, l)| l.conn));
    }

    /// Whether the node is fenced.
    pub fn is_fenced(&self) -> bool {
        self.fenced
    }

    /// A local session said hello: its peer is `peer`, serving at `addr`, on `conn` (when
    /// under a reactor).
    pub fn handle_opened(&mut self, peer: PeerId, addr: SocketAddr, conn: Option<ConnId>) {
        let session = self.next_session;
        self.next_session += 1;
        let open = Record::Open { addr };
        let local = Local {
            session,
            conn,
            addr,
            written: open.stream_bytes(),
            register_bytes: 0,
            register_files: 0,
            snapshot: None,
            reachable: None,
        };
        self.local.insert(peer, local);
        self.publish(session, open);
    }

    /// A local peer's register request is done: `files` as it sent them, with its outcome.
    pub fn handle_registered(&mut self, peer: PeerId, files: Vec<FileEntry>, o: RegisterOutcome) {
        if o.added == 0 || !self.local.contains_key(&peer) {
            return;
        }
        self.flush_snapshot(peer);
        let Some(local) = self.local.get_mut(&peer) else {
            return;
        };
        if o.rejected > 0 {
            // Capped: start again (see the module docs).
            if let Some(snapshot) = local.snapshot.as_mut() {
                snapshot.next = None;
            }
        }
        let session = local.session;
        let records = Record::registers(files, o.added, o.rejected);
        for record in &records {
            local.written += record.stream_bytes();
            if let Record::Register { files, .. } = record {
                local.register_files += files.len() as u64;
                local.register_bytes += record.stream_bytes();
            }
        }
        for record in records {
            self.publish(session, record);
        }
    }

    /// A local peer's unregister request is done (`removed` entries went).
    pub fn handle_unregistered(&mut self, peer: PeerId, hashes: Vec<FileHash>, removed: u32) {
        if removed == 0 || !self.local.contains_key(&peer) {
            return;
        }
        self.flush_snapshot(peer);
        let Some(local) = self.local.get_mut(&peer) else {
            return;
        };
        let session = local.session;
        let records = Record::unregisters(hashes);
        local.written += records.iter().map(Record::stream_bytes).sum::<u64>();
        for record in records {
            self.publish(session, record);
        }
    }

    /// Whether local `peer`'s subject should be compacted now that its peer holds `entries`:
    /// no snapshot of it is under way, and it holds more than [`SNAPSHOT_FLOOR_BYTES`] and
    /// [`SNAPSHOT_GROWTH`] times what a snapshot of those entries would take.
    pub fn wants_snapshot(&self, peer: PeerId, entries: u32) -> bool {
        let Some(l) = self.local.get(&peer) else {
            return false;
        };
        let per_entry = l.register_bytes.checked_div(l.register_files).unwrap_or(0);
        let live = u64::from(entries) * per_entry;
        l.snapshot.is_none()
            && l.written > SNAPSHOT_FLOOR_BYTES
            && l.written > SNAPSHOT_GROWTH * live
    }

    /// Starts a snapshot of local `peer`'s session (see the module docs): its records are
    /// published by [`Link::poll_snapshots`]; once its end is stored, the NATS thread deletes
    /// the subject's older records.
    pub fn begin_snapshot(&mut self, peer: PeerId) {
        if let Some(local) = self.local.get_mut(&peer) {
            if local.snapshot.is_none() {
                local.snapshot = Some(Box::default());
                self.snapshots.push_back(peer);
            }
        }
    }

    /// Whether a snapshot is under way.
    pub fn has_snapshots(&self) -> bool {
        !self.snapshots.is_empty()
    }

    /// Takes a step of the oldest snapshot under way: publishes its [`Record::Snapshot`], or
    /// walks about `budget` of its peer's holdings in `index` (publishing them once they fill
    /// a record, and the [`Record::SnapshotEnd`] after the last). Returns the holdings walked
    /// (at least 1 for a step taken), or 0 if no snapshot can go on now: none is under way,
    /// [`SNAPSHOT_OUTBOUND_RECORDS`] wait for the stream, or the oldest one's peer has files
    /// staged (they are posted at the turn's end).
    pub fn poll_snapshots(&mut self, index: &Index, budget: usize) -> usize {
        let peer = loop {
            let Some(&peer) = self.snapshots.front() else {
                return 0;
            };
            if self.local.get(&peer).is_some_and(|l| l.snapshot.is_some()) {
                break peer;
            }
            self.snapshots.pop_front();
        };
        if self.counters.outbound() >= SNAPSHOT_OUTBOUND_RECORDS {
            return 0;
        }
        let local = self.local.get_mut(&peer).expect("checked above");
        let snapshot = local.snapshot.as_mut().expect("checked above");
        let mut records = Vec::new();
        let mut walked = 0;
        match snapshot.next {
            None if index.has_staged(peer) => return 0,
            None => {
                // (Begun again after a capped register: what was walked went before it.)
                snapshot.walked.clear();
                snapshot.walked_bytes = 0;
                snapshot.next = Some(0);
                records.push(Record::Snapshot { addr: local.addr });
                if let Some(reachable) = local.reachable {
                    records.push(Record::Reachability { reachable });
                }
                local.written = 0;
                self.counters.handle_snapshot();
            }
            Some(from) => {
                let (files, bytes) = (&mut snapshot.walked, &mut snapshot.walked_bytes);
                let next = index.holdings_from(peer, from, budget.max(1), |_, hash, size, name| {
                    let name = String::from_utf8(name.to_vec()).expect("names are stored from str");
                    *bytes += name.len() + 48;
                    files.push(FileEntry {
                        hash: *hash,
                        size,
                        name,
                    });
                    walked += 1;
                });
                if (next.is_none() || *bytes >= MAX_RECORD_BYTES) && !files.is_empty() {
                    let n = files.len() as u32;
                    records.extend(Record::registers(std::mem::take(files), n, 0));
                    *bytes = 0;
                }
                snapshot.next = next;
                if next.is_none() {
                    records.push(Record::SnapshotEnd);
                    local.snapshot = None;
                    self.snapshots.pop_front();
                }
            }
        }
        local.written += records.iter().map(Record::stream_bytes).sum::<u64>();
        let session = local.session;
        for record in records {
            self.publish(session, record);
        }
        walked.max(1)
    }

    /// Publishes what local `peer`'s snapshot walked and has not published yet: before any
    /// other record of the session (see the module docs).
    fn flush_snapshot(&mut self, peer: PeerId) {
        let Some(local) = self.local.get_mut(&peer) else {
            return;
        };
        let Some(snapshot) = local.snapshot.as_mut() else {
            return;
        };
        if snapshot.walked.is_empty() {
            return;
        }
        let files = std::mem::take(&mut snapshot.walked);
        snapshot.walked_bytes = 0;
        let n = files.len() as u32;
        let records = Record::registers(files, n, 0);
        local.written += records.iter().map(Record::stream_bytes).sum::<u64>();
        let session = local.session;
        for record in records {
            self.publish(session, record);
        }
    }

    /// Local `peer`'s reachability is known (its probe ended, or it serves no port; or it
    /// will not be probed, `reachable`): it takes pushes. Published when new or changed;
    /// restated by its snapshots.
    pub fn handle_reachability(&mut self, peer: PeerId, reachable: bool) {
        if self
            .local
            .get(&peer)
            .map_or(true, |l| l.reachable == Some(reachable))
        {
            return;
        }
        self.flush_snapshot(peer);
        let Some(local) = self.local.get_mut(&peer) else {
            return;
        };
        local.reachable = Some(reachable);
        let record = Record::Reachability { reachable };
        local.written += record.stream_bytes();
        let session = local.session;
        self.publish(session, record);
    }

    /// A local session ended.
    pub fn handle_closed(&mut self, peer: PeerId) {
        if let Some(l) = self.local.remove(&peer) {
            self.publish(l.session, Record::End);
        }
    }

    /// The connection of local session `session`, if it is open.
    pub fn conn_of(&self, session: u64) -> Option<ConnId> {
        self.local
            .values()
            .find(|l| l.session == session)
            .and_then(|l| l.conn)
    }

    /// Moves what the NATS thread sent into the replica; true if anything came.
    pub fn receive(&mut self) -> bool {
        let mut any = false;
        loop {
            match self.from_nats.try_recv() {
                Ok(inbound @ (Inbound::PushIn { .. } | Inbound::PushAnswer { .. })) => {
                    self.relays.push(inbound);
                    any = true;
                }
                Ok(inbound) => {
                    self.replica.handle_inbound(inbound);
                    any = true;
                }
                Err(TryRecvError::Empty) => return any,
                Err(TryRecvError::Disconnected) => {
                    if !self.gone {
                        self.gone = true;
                        self.replica
                            .handle_inbound(Inbound::Failed("the NATS thread ended".into()));
                    }
                    return true;
                }
            }
        }
    }

    /// Waits for what the NATS thread sends and applies it, until the stream has been read to
    /// its end ([`Inbound::Rebuilt`]); before serving anyone, so without a time budget. Returns the
    /// events met on the way, or why the rebuild failed.
    pub fn rebuild(&mut self, index: &mut Index) -> Result<Vec<Event>, String> {
        let mut events = Vec::new();
        loop {
            match self.from_nats.recv() {
                Ok(inbound @ (Inbound::PushIn { .. } | Inbound::PushAnswer { .. })) => {
                    self.relays.push(inbound);
                }
                Ok(inbound) => self.replica.handle_inbound(inbound),
                Err(_) => return Err("the NATS thread ended".into()),
            }
            self.receive();
            while self.replica.has_work() {
                self.applying(|r| r.poll_rebuilding(index, &mut events));
            }
            if let Some(i) = events.iter().position(|e| *e == Event::Rebuilt) {
                events.remove(i);
                if let Some(Event::Failed(why)) = events.first() {
                    return Err(why.clone());
                }
                return Ok(events);
            }
            if let Some(Event::Failed(why)) = events.iter().find(|e| matches!(e, Event::Failed(_)))
            {
                return Err(why.clone());
            }
        }
    }

    /// Applies received changes, about `budget` units of work; see [`Replica::poll`]. A
    /// [`Event::Fenced`] fences the node (its connections go to `close`), a
    /// [`Event::Rebuilt`] ends it once the lease holds again ([`Link::check_fence`]).
    pub fn poll(
        &mut self,
        index: &mut Index,
        budget: usize,
        events: &mut Vec<Event>,
        close: &mut Vec<ConnId>,
    ) -> usize {
        self.poll_until(index, budget, || false, events, close)
    }

    /// [`Link::poll`], stopping early once `is_late()` says time is up (see
    /// [`Replica::poll_until`]).
    pub fn poll_until(
        &mut self,
        index: &mut Index,
        budget: usize,
        is_late: impl Fn() -> bool,
        events: &mut Vec<Event>,
        close: &mut Vec<ConnId>,
    ) -> usize {
        let first = events.len();
        let used = self.applying(|r| r.poll_until(index, budget, is_late, events));
        for event in &events[first..] {
            match event {
                Event::Fenced => self.fence(close),
                Event::Rebuilt => self.reread = true,
                _ => {}
            }
        }
        used
    }

    /// Whether received changes wait to be applied.
    pub fn has_work(&self) -> bool {
        self.replica.has_work()
    }

    /// Relay messages received since the last call.
    pub fn take_relays(&mut self) -> Vec<Inbound> {
        std::mem::take(&mut self.relays)
    }

    /// Relays push `id` to node `node`, given up at `deadline` (its answer comes as an
    /// [`Inbound::PushAnswer`]); false if the NATS thread is gone.
    pub fn relay_push(
        &mut self,
        id: u64,
        node: &str,
        push: RelayedPush,
        deadline: std::time::Instant,
    ) -> bool {
        let node = node.to_string();
        let push = Outbound::Push {
            id,
            node,
            push,
            deadline,
        };
        self.to_nats.send(push).is_ok()
    }

    /// Answers another node's relayed push `token`.
    pub fn answer_push(&mut self, token: u64, answer: RelayAnswer) {
        let _ = self.to_nats.send(Outbound::PushAnswer { token, answer });
    }

    /// Other nodes' sessions that take pushes (to relay one to).
    pub fn remote_pushes(&mut self) -> &mut super::reach::RemotePushes {
        self.replica.pushes_mut()
    }

    /// indexd is stopping: tell the NATS thread.
    pub fn stop(&mut self) {
        let _ = self.to_nats.send(Outbound::Stop);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn the_backlog_holds_the_nats_thread_back_until_the_reactor_applies_records() {
        let (to_nats, _published) = tokio::sync::mpsc::unbounded_channel();
        let (inbox, from_nats) = std::sync::mpsc::channel();
        let mut link = Link::new(to_nats, from_nats);
        let backlog = link.backlog();
        // The NATS thread hands over as many records as the bound allows, then waits.
        for session in 0..MAX_QUEUED_RECORDS as u64 {
            assert!(backlog.reserve().now_or_never().is_some());
            inbox
                .send(Inbound::Record {
                    node: "b-1".into(),
                    session,
                    record: Record::Open {
                        addr: "10.0.0.2:7001".parse().unwrap(),
                    },
                })
                .unwrap();
        }
        assert!(backlog.reserve().now_or_never().is_none());
        // Received is not applied: still full.
        assert!(link.receive());
        assert!(backlog.reserve().now_or_never().is_none());
        // Applying some makes room for as many.
        let mut index = Index::new();
        let mut events = Vec::new();
        let mut close = Vec::new();
        link.poll(&mut index, 10, &mut events, &mut close);
        assert_eq!(backlog.queued(), MAX_QUEUED_RECORDS - 10);
        assert!(backlog.reserve().now_or_never().is_some());
        while link.has_work() {
            link.poll(&mut index, 10, &mut events, &mut close);
        }
        assert_eq!(backlog.queued(), 1);
        assert_eq!(index.peer_count(), MAX_QUEUED_RECORDS);
    }

    #[test]
    fn a_run_out_lease_fences_the_node_until_the_stream_is_read_again() {
        use std::time::{Duration, Instant};
        let (to_nats, mut published) = tokio::sync::mpsc::unbounded_channel();
        let (inbox, from_nats) = std::sync::mpsc::channel();
        let mut link = Link::new(to_nats, from_nats);
        let mut index = Index::new();
        let local = index.add_peer("10.0.0.1:7000".parse().unwrap());
        link.handle_opened(local, "10.0.0.1:7000".parse().unwrap(), Some(ConnId(5)));
        inbox
            .send(Inbound::Record {
                node: "b-1".into(),
                session: 1,
                record: Record::Open {
                    addr: "10.0.0.2:7001".parse().unwrap(),
                },
            })
            .unwrap();
        let mut events = Vec::new();
        let mut close = Vec::new();
        link.receive();
        link.poll(&mut index, 100, &mut events, &mut close);
        assert_eq!(link.replica().session_count(), 1);
        let t0 = Instant::now();
        link.counters().lease.renew(t0, Duration::from_secs(3));
        assert!(!link.check_fence(t0 + Duration::from_secs(2), &mut close));
        assert!(close.is_empty());
        // Run out: the local session's connection ends, the NATS thread is told, and its
        // end is not published (the old incarnation is dead to the others).
        assert!(link.check_fence(t0 + Duration::from_secs(3), &mut close));
        assert_eq!(close, [ConnId(5)]);
        link.handle_closed(local);
        let sent: Vec<Outbound> = std::iter::from_fn(|| published.try_recv().ok()).collect();
        assert!(matches!(
            sent[..],
            [Outbound::Publish { .. }, Outbound::Fence]
        ));
        // The NATS thread rejoins: the remote sessions go, the stream is read again.
        inbox.send(Inbound::Fenced).unwrap();
        link.receive();
        link.poll(&mut index, 100, &mut events, &mut close);
        assert_eq!(link.replica().session_count(), 0);
        assert!(link.is_fenced());
        inbox.send(Inbound::Rebuilt).unwrap();
        link.receive();
        link.poll(&mut index, 100, &mut events, &mut close);
        // Read again, but the new incarnation's key is not written yet: still fenced, and
        // not fenced again.
        assert!(link.check_fence(t0 + Duration::from_secs(4), &mut close));
        let lease = &link.counters().lease;
        lease.renew(t0 + Duration::from_secs(4), Duration::from_secs(3));
        assert!(!link.check_fence(t0 + Duration::from_secs(5), &mut close));
        let sent: Vec<Outbound> = std::iter::from_fn(|| published.try_recv().ok()).collect();
        assert!(sent.is_empty());
        assert_eq!(events, [Event::Fenced, Event::Rebuilt]);
    }
}
