//! The NATS thread: the official `async-nats` client on a current-thread tokio runtime of its
//! own. It talks to the reactor only through [`Outbound`] (a tokio channel the reactor sends
//! on without blocking) and [`Inbound`] (a std channel, followed by a wake of the reactor's
//! waker; a record waits for room in the reactor's [`Backlog`] first); it never touches the
//! index.
//!
//! # What it does
//! - At start: connects (refusing to start if no server answers within
//!   [`CONNECT_TIMEOUT`]: a node that cannot read the stream cannot serve the whole index),
//!   creates the stream `<PREFIX>_INDEX` (subjects `<prefix>.>`) and the liveness bucket
//!   `<prefix>_nodes` (`max_age` = the TTL) if they do not exist, creates its liveness key,
//!   and reads the stream from its start with an ordered consumer; once it has read what the
//!   stream held (see [`Reread`]: the consumer's pending count reaches 0, a record at or past
//!   the stream's last sequence is read, or nothing is left), it checks that every node met in
//!   it is alive (else: [`Inbound::NodeDead`]) and sends [`Inbound::Rebuilt`]. The join
//!   (stream, bucket, key, consumer, watch) is tried again as a whole, each try bounded by
//!   [`JOIN_TRY_TIMEOUT`], while the NATS cluster cannot answer (a server just died and its
//!   leaders are being elected), with a warning per try, for up to [`JOIN_TIMEOUT`]; then the
//!   thread fails and indexd exits (status 2).
//! - Publishes each [`Outbound::Publish`] on `<prefix>.<node>.<session>`; acknowledgements are
//!   awaited concurrently, and one that fails (the stream did not take the record) becomes
//!   [`Inbound::Lost`] for that session. It keeps the stream sequence of each local session's
//!   records: after an `End` is acknowledged, a task of its own ([`Removals`]) deletes them
//!   but for that tombstone, and another deletes the tombstone [`TOMBSTONE_LINGER`] later;
//!   after a snapshot's end ([`Record::SnapshotEnd`]) is acknowledged, the records before the
//!   snapshot go (the session's compaction). The main loop never waits for a delete. Records
//!   are deleted one by one by sequence, never by a subject purge nor a `Nats-Rollup`
//!   header: on nats-server 2.9.10 both move every consumer of the stream past records it had
//!   not read yet, of every subject, and those were lost (see [`Removals`]).
//! - Every request it awaits once joined is bounded ([`REQUEST_TIMEOUT`]): the client's own
//!   waits are not always (a publish waits without end for room among the acknowledgements in
//!   flight), and one unbounded wait in this loop once left a node's thread parked, its key
//!   unrefreshed, while its reactor went on serving.
//! - Consumes every other node's subjects and forwards their records in stream order. A
//!   consumer that misses its heartbeats, or reads nothing between two checks
//!   [`STALL_CHECK`] apart while the stream holds records it has not read (the client's own
//!   re-creation after a reconnect can retry for minutes without a word), is replaced by a
//!   new one resuming after the last record read.
//! - Refreshes its liveness key every TTL/4 with a revision check, in a task of its own
//!   ([`Keeper`]) on a JetStream context of its own: nothing the main loop waits for (a
//!   consumer or a watch made again after a NATS server died, each request up to seconds
//!   while leaders are elected; a burst of publishes) may hold a refresh back past the TTL,
//!   or the others would drop a node that is well. Each refresh that succeeds renews the
//!   node's lease ([`Lease`](super::counters::Lease)), which the reactor checks before it
//!   answers anyone. If the check fails (the key was deleted or expired while NATS was
//!   unreachable, so the others dropped this node) the lease is revoked at once.
//! - At [`Outbound::Fence`] (the reactor found the lease run out and fenced itself), or when
//!   the [`Keeper`] finds our key gone (even during such a rejoin), takes a new incarnation, deletes the old one's key and its subjects' records, sends
//!   [`Inbound::Fenced`] (the reactor drops every remote session) and reads the stream again
//!   from its start, up to a new [`Inbound::Rebuilt`], as at a join.
//! - Watches the bucket, and checks the other nodes' keys every [`check_interval`]: a node
//!   whose key is deleted or gone is dead, and so is one whose key this node has not seen
//!   take a new revision for a TTL (by its own clock, from the watch, or read when in doubt):
//!   that key is deleted at the revision seen, so that every other node learns the death at
//!   once from the watch and a node merely cut off from NATS finds itself fenced at its next
//!   refresh. The bucket's `max_age` expiry is only the backstop: nats-server 2.9 removes an
//!   expired key without telling the watchers, and when it does so depends on its own expiry
//!   timer, so waiting for it made a death take up to two TTLs to be noticed. A dead node is
//!   [`Inbound::NodeDead`], and the lowest-named node alive deletes its subjects' records
//!   (found by a walk of them).
//! - At [`Outbound::Stop`], deletes its key (the others drop its sessions at once).

use super::apply::Inbound;
use super::counters::Counters;
use super::link::{Backlog, Outbound};
use super::relay::{self, RelayAnswer, RelayedPush, RELAYS_IN_MAX, RELAY_TIMEOUT};
use super::Record;
use crate::wire::ErrorCode;
use async_nats::jetstream::{self, consumer, kv, stream};
use futures_util::future::BoxFuture;
use futures_util::stream::FuturesUnordered;
use futures_util::StreamExt;
use hashbrown::{HashMap, HashSet};
use std::collections::VecDeque;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::time::Instant;

/// How long a start waits for a NATS server to answer before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long an ended session's `End` record stays on the stream before it is deleted: a node
/// reading less than this behind still sees every session it saw begin end.
pub const TOMBSTONE_LINGER: Duration = Duration::from_secs(60);
/// How long a start may take to join once connected: set up the stream, the bucket and the
/// liveness key, and subscribe, all tried again while the NATS cluster cannot answer (a
/// server just died and leaders are being elected), then given up.
pub const JOIN_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one try of the join may take.
pub const JOIN_TRY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long one JetStream request of the join waits for its answer. Short: a request sent
/// to a stream whose leader died is never answered, even once a new leader is elected, so
/// the sooner it is given up, the sooner the next try reaches the new leader (the client's
/// usual 10 s would make each such request cost 10 s; it still applies once joined).
const JOIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(2);

/// `request` (one step of the join, named `what`), given up after [`JOIN_REQUEST_TIMEOUT`].
async fn quick<T, E: std::fmt::Display>(
    what: impl std::fmt::Display,
    request: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    within(JOIN_REQUEST_TIMEOUT, what, request).await
}

/// `request` (named `what`), given up after `limit`.
async fn within<T, E: std::fmt::Display>(
    limit: Duration,
    what: impl std::fmt::Display,
    request: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(format!("{what}: {e}")),
        Err(_) => Err(format!("{what}: no answer within {limit:?}")),
    }
}
/// How often another try of an ephemeral consumer's creation is sent while none has answered
/// ([`hedged`]).
const HEDGE_EVERY: Duration = Duration::from_millis(500);
/// Most tries of one creation in flight at once ([`hedged`]).
const HEDGE_IN_FLIGHT: usize = 8;

/// Creates an ephemeral consumer (an ordered consumer, a bucket's watch, a probe) by tries
/// sent side by side: `try_once` is sent at once, then again every [`HEDGE_EVERY`] while no try
/// has answered (at most [`HEDGE_IN_FLIGHT`] in flight, each given up after
/// [`JOIN_REQUEST_TIMEOUT`]); the first answer wins, and the whole (named `what`) is given up
/// after `limit`.
///
/// Why: nats-server before 2.9.12 places an ephemeral consumer (R1, as ordered consumers and
/// watches are) on a peer of its stream's group drawn at random, up or down
/// (`createGroupForConsumer` and `setPreferred` in 2.9.10; fixed by nats-server commit e15eb22,
/// issue 3791). A creation placed on a dead server is never answered (the server creates it
/// when it comes back). With one server of 3 dead, each try is lost with a chance of 1 in 3:
/// tries sent one after another, each waited for 2 s, made a node resume its replication
/// 2 s later per lost try, and 4 lost in a row (1 in 81) kept a node's consumer down past
/// the end of `bench --cluster`'s engine fault (1,456 of 1,552 files "lost" at node a,
/// session 15). A try that lost the race, answered or not, leaves a consumer no one
/// subscribes to, which the server deletes after its inactive threshold (30 s).
pub async fn hedged<T, E, F>(
    what: &str,
    limit: Duration,
    try_once: impl FnMut() -> F,
) -> Result<T, String>
where
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
{
    hedged_each(what, limit, JOIN_REQUEST_TIMEOUT, try_once).await
}

/// [`hedged`] with each try given up after `per_try` (for a step whose server may be slow
/// rather than dead: one slow answer within it still wins).
pub async fn hedged_each<T, E, F>(
    what: &str,
    limit: Duration,
    per_try: Duration,
    mut try_once: impl FnMut() -> F,
) -> Result<T, String>
where
    E: std::fmt::Display,
    F: std::future::Future<Output = Result<T, E>>,
{
    let deadline = Instant::now() + limit;
    let mut tries = FuturesUnordered::new();
    let (mut sent, mut next) = (0usize, Instant::now());
    let mut last = String::from("none sent");
    loop {
        let now = Instant::now();
        if now >= next && now < deadline && tries.len() < HEDGE_IN_FLIGHT {
            sent += 1;
            let n = sent;
            let answer = tokio::time::timeout(per_try, try_once());
            tries.push(async move { (n, answer.await) });
            next = Instant::now() + HEDGE_EVERY;
        }
        tokio::select! {
            // An answer at the deadline still wins; a try due at the deadline is not sent.
            biased;
            Some((n, done)) = tries.next() => match done {
                Ok(Ok(v)) => {
                    if n > 1 {
                        log::warn!("cluster: {what}: answered to try {n} ({sent} sent)");
                    }
                    return Ok(v);
                }
                Ok(Err(e)) => last = format!("try {n}: {e}"),
                Err(_) => last = format!("try {n}: no answer within {per_try:?}"),
            },
            _ = tokio::time::sleep_until(deadline) => {
                return Err(format!("{what}: none of {sent} tries answered within {limit:?} (last: {last})"));
            }
            _ = tokio::time::sleep_until(next), if tries.len() < HEDGE_IN_FLIGHT => {}
        }
    }
}

/// How often the consumer is checked for a stall ([`Node::is_stuck`]).
const STALL_CHECK: Duration = Duration::from_secs(5);
/// How long a lost consumer's re-creation is tried at once (then: at its next error or stall).
const RESUME_LIMIT: Duration = Duration::from_secs(30);
/// How often the other nodes' keys are checked: a quarter of the TTL, at most a second, so
/// that a death is noticed within about the TTL plus this after the node's last refresh.
pub fn check_interval(ttl: Duration) -> Duration {
    (ttl / 4).min(Duration::from_secs(1))
}

/// The default liveness TTL: longer than a NATS cluster's failover (a stream leader election
/// after a server died takes seconds), so that an engine fault does not look like every node
/// dying.
pub const DEFAULT_TTL: Duration = Duration::from_secs(15);

/// How a node joins the cluster.
#[derive(Debug, Clone)]
pub struct NatsConfig {
    /// NATS server URLs (`nats://HOST:PORT`), any of the cluster's.
    pub servers: Vec<String>,
    /// This node's name: `ID-INCARNATION`.
    pub node: String,
    /// The node's id, for new incarnations.
    pub node_id: String,
    /// Subject prefix, stream and bucket names are derived from it.
    pub prefix: String,
    /// Liveness TTL (the bucket's `max_age`, when this node creates it).
    pub ttl: Duration,
    /// Replicas of the stream and the bucket, when this node creates them.
    pub replicas: usize,
    /// The stream's size limit, when this node creates it or finds it without one.
    pub max_bytes: u64,
}

impl NatsConfig {
    /// The stream's name.
    pub fn stream_name(&self) -> String {
        format!("{}_INDEX", self.prefix.to_ascii_uppercase())
    }

    /// The liveness bucket's name.
    pub fn bucket_name(&self) -> String {
        format!("{}_nodes", self.prefix)
    }
}

/// A new incarnation name for node `id`.
pub fn incarnation(id: &str) -> String {
    format!("{id}-{:08x}", fastrand::u32(..))
}

/// Starts the NATS thread. It sends what it receives on `inbound`, waking the reactor with
/// `wake` after each batch.
pub fn spawn(
    config: NatsConfig,
    outbound: UnboundedReceiver<Outbound>,
    inbound: Sender<Inbound>,
    wake: Arc<dyn Fn() + Send + Sync>,
    counters: Arc<Counters>,
    backlog: Arc<Backlog>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("nats".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    let _ = inbound.send(Inbound::Failed(format!("tokio runtime: {e}")));
                    wake();
                    return;
                }
            };
            let to_reactor = ToReactor {
                tx: inbound,
                wake: wake.clone(),
                backlog,
            };
            let result = runtime.block_on(run(config, outbound, &to_reactor, counters));
            if let Err(why) = result {
                log::error!("cluster: {why}");
                to_reactor.send(Inbound::Failed(why));
            }
        })
}

/// The reactor's channel and waker, and the bound on the records it has not applied.
struct ToReactor {
    tx: Sender<Inbound>,
    wake: Arc<dyn Fn() + Send + Sync>,
    backlog: Arc<Backlog>,
}

impl ToReactor {
    fn send(&self, inbound: Inbound) {
        let _ = self.tx.send(inbound);
        (self.wake)();
    }

    /// Hands a record over once the reactor's backlog has room for it.
    async fn send_record(&self, record: Inbound) {
        self.backlog.reserve().await;
        self.send(record);
    }
}

/// What the thread does once a record is stored, by the record's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Its sequence is kept, to delete it when its session ends or is compacted.
    Change,
    /// The session's records are deleted, this tombstone [`TOMBSTONE_LINGER`] later.
    End,
    /// A snapshot begins here: the records before it go at its end.
    Snapshot,
    /// The snapshot is stored whole: the session's records before its beginning are
    /// deleted.
    SnapshotEnd,
}

impl Kind {
    fn of(record: &Record) -> Kind {
        match record {
            Record::End => Kind::End,
            Record::Snapshot { .. } => Kind::Snapshot,
            Record::SnapshotEnd => Kind::SnapshotEnd,
            _ => Kind::Change,
        }
    }
}

/// A record's publish, retried until stored or [`PUBLISH_RETRY_LIMIT`]: the incarnation it
/// was published under (see [`Ledger`]), its session, its kind, and the outcome (the stream
/// sequence it was stored at).
type Ack = BoxFuture<'static, (u64, u64, Kind, Result<u64, String>)>;

/// How long a record's publish is retried (a stream without a leader for a moment, while
/// the NATS cluster elects one after a server died) before its session is ended.
pub const PUBLISH_RETRY_LIMIT: Duration = Duration::from_secs(20);

/// How long one JetStream request or publish try may wait once joined (the client's own
/// waits are unbounded in places: a publish waits for room among the acknowledgements in
/// flight without end).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// `request` (named `what`), given up after [`REQUEST_TIMEOUT`].
async fn bounded<T, E: std::fmt::Display>(
    what: impl std::fmt::Display,
    request: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    within(REQUEST_TIMEOUT, what, request).await
}

/// Publishes `payload` on `subject` and waits for the stream's acknowledgement, each try
/// bounded by [`REQUEST_TIMEOUT`], trying again every 250 ms until [`PUBLISH_RETRY_LIMIT`].
/// (A try whose acknowledgement was lost may have been stored: a record applied twice in a
/// row changes nothing.)
fn publish(
    js: jetstream::Context,
    incarnation: u64,
    session: u64,
    subject: String,
    record: &Record,
    counters: Arc<Counters>,
) -> Ack {
    let payload = record.encode();
    let kind = Kind::of(record);
    Box::pin(async move {
        let deadline = Instant::now() + PUBLISH_RETRY_LIMIT;
        loop {
            let attempt = async {
                let ack = js.publish(subject.clone(), payload.clone().into()).await?;
                ack.await
            };
            let result = bounded("publish", attempt).await.map(|ack| {
                counters.handle_stored(ack.sequence);
                ack.sequence
            });
            if result.is_err() {
                counters.handle_publish_error();
            }
            match result {
                Err(e) if Instant::now() < deadline => {
                    log::debug!("cluster: publish on {subject}: {e}; trying again");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                result => return (incarnation, session, kind, result),
            }
        }
    })
}

/// When another node's liveness key was last seen take a new revision (this node's clock:
/// the nodes' clocks are never compared), and that revision (0: known only from its records
/// on the stream).
#[derive(Debug, Clone, Copy)]
struct Seen {
    at: Instant,
    revision: u64,
}

/// What [`Node::is_stuck`] remembers between ticks.
#[derive(Debug, Default)]
struct Stall {
    /// The last record read at the previous check, if the stream held records after it.
    behind_at: Option<u64>,
    /// The stream's last sequence when a probe found nothing left to read before it (its
    /// records were purged unread): not a stall.
    read_to_end: u64,
}

/// Whether a read of the stream from its start (a join's, or a rejoin's after a fence) has
/// reached the stream's end, from what the NATS thread sees: each record read with the
/// consumer's count of records pending after it, and at each tick (TTL/4) the stream's last
/// sequence or a probe of what is left.
///
/// A count of 0 may never come: nats-server 2.9.10 does not always take a record deleted
/// after the consumer counted it off the count (in session 11 a node re-reading after a fence
/// read with 2 pending, then 4, for 45 s, while the old incarnation's records it had counted
/// were deleted). And a probe only while nothing is read (the one other rule, before) never
/// ran while another node published a record every tick (the fence test's hellos at the node
/// that rejoined first did): that node stayed fenced. So the read is also done once it read a
/// record at or past the stream's last sequence as known at its first tick (asked again each
/// tick until known): every record stored before was read by then.
#[derive(Debug, Default)]
struct Reread {
    /// The stream's last sequence when the read began (or first known since).
    target: Option<u64>,
    /// The last record read.
    last: u64,
    /// A record was read since the last tick.
    read_since_tick: bool,
}

impl Reread {
    /// A record at `seq` was read, with `pending` more after it by the consumer's count:
    /// whether the read is done.
    fn handle_read(&mut self, seq: u64, pending: u64) -> bool {
        self.last = self.last.max(seq);
        self.read_since_tick = true;
        pending == 0 || self.is_past_target()
    }

    /// Whether the stream's last sequence is still to be asked (at the next tick).
    fn wants_target(&self) -> bool {
        self.target.is_none()
    }

    /// The stream's last sequence is `last`: whether the read is done (it is if the stream
    /// never held a record, or every one was read).
    fn handle_target(&mut self, last: u64) -> bool {
        self.target.get_or_insert(last);
        self.is_past_target()
    }

    fn is_past_target(&self) -> bool {
        self.target.is_some_and(|t| self.last >= t)
    }

    /// A tick: the record to probe from, if nothing was read since the last tick (the
    /// records left may all have been deleted: then no record read ever reaches the target).
    fn poll_probe(&mut self) -> Option<u64> {
        let quiet = !std::mem::take(&mut self.read_since_tick);
        quiet.then_some(self.last + 1)
    }
}

/// Each local session's records on the stream (by sequence), to delete them when it ends or
/// is compacted (never by a subject purge: see [`Removals`]).
///
/// At a fence the node takes a new incarnation, and the old one's subjects are walked and
/// their records deleted; a record acknowledged after that (its publish was in flight at the
/// fence) belongs to a session the reactor dropped, which will never end: it is deleted at
/// once, and not kept (before session 11 its sequence was kept for ever, and the record
/// stayed on the stream if the walk had passed).
#[derive(Debug, Default)]
struct Ledger {
    sessions: HashMap<u64, Stored>,
    /// The node's incarnation, counted from 0 at the join: bumped at each fence.
    incarnation: u64,
}

/// What to delete once a record is stored: these records now, and a tombstone after
/// [`TOMBSTONE_LINGER`].
#[derive(Debug, Default, PartialEq, Eq)]
struct Deletes {
    now: Vec<u64>,
    tombstone: Option<u64>,
}

impl Ledger {
    /// The node fenced itself: what is kept is of the old incarnation, whose records go with
    /// its subjects.
    fn handle_fence(&mut self) {
        self.sessions.clear();
        self.incarnation += 1;
    }

    /// A record of `kind` of local session `session`, published under `incarnation`, was
    /// stored at `seq`: what to delete now.
    fn handle_stored(&mut self, incarnation: u64, session: u64, kind: Kind, seq: u64) -> Deletes {
        if incarnation != self.incarnation {
            return Deletes {
                now: vec![seq],
                tombstone: None,
            };
        }
        let mut deletes = Deletes::default();
        let s = self.sessions.entry(session).or_default();
        match kind {
            Kind::Change => s.seqs.push(seq),
            Kind::Snapshot => {
                s.seqs.push(seq);
                s.snapshot = Some(seq);
            }
            Kind::SnapshotEnd => {
                s.seqs.push(seq);
                if let Some(from) = s.snapshot.take() {
                    let older = s.seqs.partition_point(|&q| q < from);
                    deletes.now = s.seqs.drain(..older).collect();
                }
            }
            Kind::End => {
                deletes.now = self.sessions.remove(&session).unwrap_or_default().seqs;
                deletes.tombstone = Some(seq);
            }
        }
        deletes
    }

    /// Sequences kept, of every session.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.sessions.values().map(|s| s.seqs.len()).sum()
    }
}

/// Keeps this node's liveness key: a task of its own, on a JetStream context of its own (a
/// publish waits for room among the context's acknowledgements in flight: sharing the
/// records' context, a burst of them held the refreshes back past the TTL); see the module
/// docs.
struct Keeper {
    kv: kv::Store,
    /// Our name (`ID-INCARNATION`), the key's.
    node: String,
    /// The key's last revision (none: the key is to be written, for a new incarnation).
    revision: Option<u64>,
    ttl: Duration,
    counters: Arc<Counters>,
    wake: Arc<dyn Fn() + Send + Sync>,
}

impl Keeper {
    /// A refresh found the key at another revision than the last one we know: whether it is
    /// still ours, at a revision written by a refresh whose answer came too late (the try was
    /// given up, but the server stored it: under load, in session 11), which is then the one
    /// refreshed next. Only we write our key; the others only delete it. Read within TTL/4;
    /// a key that cannot be read counts as gone.
    async fn is_ours_still(&mut self) -> bool {
        let entry = tokio::time::timeout(self.ttl / 4, self.kv.entry(&self.node)).await;
        match entry {
            // (A revision not past ours may come from a replica behind: counted as gone.)
            Ok(Ok(Some(e)))
                if e.operation == kv::Operation::Put && Some(e.revision) > self.revision =>
            {
                log::warn!(
                    "cluster: {}: our liveness key is at revision {}, written by a refresh \
                     answered too late; refreshing from it",
                    self.node,
                    e.revision
                );
                self.revision = Some(e.revision);
                true
            }
            _ => false,
        }
    }

    /// Refreshes the key every TTL/4, each try bounded by TTL/4, renewing the lease from
    /// when the refresh was sent. If the key is gone (deleted or expired: the others dropped
    /// us), the lease is revoked, the reactor woken (it fences the node) and the task ends
    /// (the NATS thread then rejoins under a new name).
    async fn run(mut self) {
        let mut tick = tokio::time::interval(self.ttl / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let length = super::counters::lease_length(self.ttl);
        loop {
            tick.tick().await;
            let sent = std::time::Instant::now();
            let refresh = async {
                match self.revision {
                    Some(r) => self
                        .kv
                        .update(&self.node, "alive".into(), r)
                        .await
                        .map_err(|e| {
                            let gone = e.kind() == kv::UpdateErrorKind::WrongLastRevision;
                            (e.to_string(), gone)
                        }),
                    // A new incarnation's key: no one else writes it, and a put that timed out
                    // may have been stored (a create would then fail for ever).
                    None => self
                        .kv
                        .put(&self.node, "alive".into())
                        .await
                        .map_err(|e| (e.to_string(), false)),
                }
            };
            match tokio::time::timeout(self.ttl / 4, refresh).await {
                Ok(Ok(revision)) => {
                    self.revision = Some(revision);
                    self.counters.lease.renew(sent, length);
                }
                Ok(Err((_, true))) if self.is_ours_still().await => {}
                Ok(Err((_, true))) => {
                    log::error!(
                        "cluster: {}: our liveness key is gone (NATS unreachable, or this node too \
                         slow to refresh it, for longer than {:?}): the other nodes dropped our \
                         sessions; fencing",
                        self.node,
                        self.ttl
                    );
                    self.counters.lease.revoke();
                    (self.wake)();
                    return;
                }
                Ok(Err((e, false))) => {
                    log::warn!("cluster: {}: refreshing our liveness key: {e}", self.node)
                }
                Err(_) => log::warn!(
                    "cluster: {}: refreshing our liveness key: no answer within {:?}",
                    self.node,
                    self.ttl / 4
                ),
            }
        }
    }
}

/// A spawned task, aborted when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The thread's state once connected.
struct Node {
    config: NatsConfig,
    js: jetstream::Context,
    stream: stream::Stream,
    kv: kv::Store,
    /// The bucket on the [`Keeper`]'s own JetStream context.
    keeper_kv: kv::Store,
    /// Our key's revision at the join (the [`Keeper`] goes on from it).
    joined_revision: u64,
    ttl: Duration,
    /// Other nodes believed alive, with when their key was last seen take a new revision.
    alive: HashMap<String, Seen>,
    dead: HashSet<String>,
    /// What the metrics show, and our lease.
    counters: Arc<Counters>,
    /// Deletes records now (ended sessions', compacted ones', dead nodes').
    removals: Removals,
}

async fn run(
    config: NatsConfig,
    mut outbound: UnboundedReceiver<Outbound>,
    to_reactor: &ToReactor,
    counters: Arc<Counters>,
) -> Result<(), String> {
    let mut servers = Vec::new();
    for s in &config.servers {
        servers.push(
            s.parse::<async_nats::ServerAddr>()
                .map_err(|e| format!("--cluster {s}: {e}"))?,
        );
    }
    let options = async_nats::ConnectOptions::new()
        .name(format!("indexd {}", config.node))
        .connection_timeout(CONNECT_TIMEOUT)
        .event_callback(|event| async move {
            match event {
                async_nats::Event::Connected => log::info!("cluster: nats: {event}"),
                _ => log::warn!("cluster: nats: {event}"),
            }
        });
    let client = tokio::time::timeout(
        CONNECT_TIMEOUT,
        async_nats::connect_with_options(servers.as_slice(), options),
    )
    .await
    .map_err(|_| format!("no NATS server answered within {CONNECT_TIMEOUT:?}"))?
    .map_err(|e| format!("cannot connect to NATS: {e}"))?;
    // A JetStream request may go unanswered while the NATS cluster elects leaders (a server
    // just died): the whole join is tried again, each try bounded, until JOIN_TIMEOUT.
    let deadline = Instant::now() + JOIN_TIMEOUT;
    let mut tries = 0;
    let (mut node, joined) = loop {
        tries += 1;
        let attempt = async {
            let node = setup(&config, &client, counters.clone()).await?;
            let joined = node.subscribe(&client).await?;
            Ok::<_, String>((node, joined))
        };
        let e = match tokio::time::timeout(JOIN_TRY_TIMEOUT, attempt).await {
            Ok(Ok(both)) => break both,
            Ok(Err(e)) => e,
            Err(_) => format!("no answer within {JOIN_TRY_TIMEOUT:?}"),
        };
        if Instant::now() >= deadline {
            return Err(format!(
                "NATS JetStream did not let this node join within {JOIN_TIMEOUT:?} ({tries} \
                 tries; is a majority of the NATS cluster up?): {e}"
            ));
        }
        log::warn!(
            "cluster: NATS JetStream not ready (try {tries}: {e}); trying again, for up to \
             {JOIN_TIMEOUT:?} in all"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    if tries > 1 {
        log::warn!("cluster: joined after {tries} tries");
    }
    node.serve(client, joined, &mut outbound, to_reactor).await
}

/// A push relayed to another node: its number and the answer (that node's, or why not).
type RelayRequest = BoxFuture<'static, (u64, RelayAnswer)>;

/// Relays push `id` to `node` on `subject` and waits for the answer, up to [`RELAY_TIMEOUT`]
/// and no later than `deadline` (when the reactor gives it up); one that comes here past
/// it (this thread stalled) is dropped unsent; the time left goes with it
/// ([`relay::WITHIN_HEADER`]), so the holder's node does not deliver it later either. A node
/// with no subscriber there (dead, or fenced and rejoining as a new incarnation) is refused
/// at once.
fn relay_request(
    client: async_nats::Client,
    subject: String,
    node: String,
    (id, push, deadline): (u64, RelayedPush, std::time::Instant),
) -> RelayRequest {
    Box::pin(async move {
        let Some(left) = relay::remaining(deadline, std::time::Instant::now()) else {
            log::debug!("cluster: push relay {id} to {node} past its deadline: not sent");
            let why = "push: the relay to the holder's index node was not sent before its \
                       deadline (this node's cluster link was slow); try again";
            return (id, RelayAnswer::refused(ErrorCode::Busy, why));
        };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(relay::WITHIN_HEADER, left.as_millis().to_string());
        let payload = relay::encode(&push).into();
        let request = client.request_with_headers(subject, headers, payload);
        let answer = match tokio::time::timeout(left, request).await {
            Ok(Ok(msg)) => relay::decode(&msg.payload).unwrap_or_else(|| {
                RelayAnswer::refused(
                    ErrorCode::Busy,
                    format!("push: node {node} answered the relay with a malformed message"),
                )
            }),
            Ok(Err(e)) if e.kind() == async_nats::client::RequestErrorKind::NoResponders => {
                RelayAnswer::refused(
                    ErrorCode::NotFound,
                    format!(
                        "push: the holder's index node {node} is gone (dead, or fenced and \
                         rejoining); look the file up again"
                    ),
                )
            }
            Ok(Err(e)) => RelayAnswer::refused(
                ErrorCode::Busy,
                format!("push: relaying to the holder's index node {node}: {e}"),
            ),
            Err(_) => RelayAnswer::refused(
                ErrorCode::Busy,
                format!(
                    "push: the holder's index node {node} did not answer within {left:?}; \
                     try again"
                ),
            ),
        };
        (id, answer)
    })
}

/// The pushes other nodes relay to this incarnation, read by a task of their own that stamps
/// each with the moment it came and hands it on (at most [`RELAYS_IN_MAX`] waiting; beyond,
/// answered `Busy` at once): so a relay's deadline runs from its arrival, not from when the
/// thread's loop gets to it (a loop awaiting a publish's room, a check of the other nodes or
/// a rejoin would otherwise give the relays piled up meanwhile a fresh [`RELAY_TIMEOUT`]).
/// Dropped, the reader stops and the subscription with it.
struct RelayInbox {
    rx: tokio::sync::mpsc::Receiver<(std::time::Instant, async_nats::Message)>,
    reader: tokio::task::JoinHandle<()>,
}

impl Drop for RelayInbox {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl RelayInbox {
    /// Reads `sub` (on the runtime this is called on); refusals are sent by `answers`.
    fn new(
        mut sub: async_nats::Subscriber,
        client: async_nats::Client,
        answers: Answers,
    ) -> RelayInbox {
        let (tx, rx) = tokio::sync::mpsc::channel(RELAYS_IN_MAX);
        let reader = tokio::spawn(async move {
            while let Some(msg) = sub.next().await {
                match tx.try_send((std::time::Instant::now(), msg)) {
                    Ok(()) => {}
                    Err(tokio::sync::mpsc::error::TrySendError::Full((_, msg))) => {
                        let Some(reply) = msg.reply else {
                            continue;
                        };
                        let busy = RelayAnswer::refused(
                            ErrorCode::Busy,
                            "push: the holder's index node has too many relayed pushes \
                             waiting; try again",
                        );
                        send_answer(&answers, &client, reply, &busy);
                    }
                    Err(tokio::sync::mpsc::error::TrySendError::Closed(_)) => return,
                }
            }
        });
        RelayInbox { rx, reader }
    }
}

/// The next relay of `inbox` with the moment it came, or never if there is none.
async fn next_relay(
    inbox: Option<&mut RelayInbox>,
) -> Option<(std::time::Instant, async_nats::Message)> {
    match inbox {
        Some(inbox) => inbox.rx.recv().await,
        None => std::future::pending().await,
    }
}

/// Most answers to relayed pushes being sent at once, each a task of its own.
const RELAY_ANSWERS_MAX: usize = 64;

/// Tasks of their own on the NATS thread's runtime, at most a fixed number at once: the
/// answers to relayed pushes, so that one publish waiting on a connection that is down (up
/// to [`REQUEST_TIMEOUT`]) holds up neither the others nor the thread's loop.
#[derive(Clone)]
struct Answers {
    permits: Arc<tokio::sync::Semaphore>,
}

impl Answers {
    /// Room for `max` tasks at once.
    fn new(max: usize) -> Answers {
        Answers {
            permits: Arc::new(tokio::sync::Semaphore::new(max)),
        }
    }

    /// Runs `task` as a task of its own (on the runtime this is called on); false, and
    /// `task` dropped, if the room is taken.
    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) -> bool {
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            return false;
        };
        tokio::spawn(async move {
            task.await;
            drop(permit);
        });
        true
    }
}

/// Sends `answer` on `reply`, by a task of `answers`.
fn send_answer(
    answers: &Answers,
    client: &async_nats::Client,
    reply: async_nats::Subject,
    answer: &RelayAnswer,
) {
    let (client, payload) = (client.clone(), relay::encode(answer));
    let sent = answers.spawn(async move {
        let publish = client.publish(reply, payload.into());
        if let Err(e) = bounded("answering a relay", publish).await {
            log::debug!("cluster: {e}");
        }
    });
    if !sent {
        log::debug!(
            "cluster: {RELAY_ANSWERS_MAX} answers to relayed pushes are being sent already; \
             one dropped (its node gives the relay up)"
        );
    }
}

/// Pushes other nodes relayed here, waiting for the reactor's answer: their reply subjects
/// by token, at most [`RELAYS_IN_MAX`] (beyond, a relay is answered `Busy` at once). Each
/// answer is sent by a task of its own ([`Answers`]): at most [`RELAY_ANSWERS_MAX`] at once;
/// beyond (every one of them waiting on a connection that is down), an answer is dropped and
/// the requesting node gives the relay up after its own wait.
struct RelaysIn {
    waiting: HashMap<u64, (async_nats::Subject, Instant)>,
    next: u64,
    answers: Answers,
}

impl RelaysIn {
    fn new() -> RelaysIn {
        RelaysIn {
            waiting: HashMap::new(),
            next: 0,
            answers: Answers::new(RELAY_ANSWERS_MAX),
        }
    }

    /// A relayed push came at `received` (see [`RelayInbox`]): handed to the reactor with its
    /// deadline (see [`relay::deadline_from`]), or refused now.
    fn handle_request(
        &mut self,
        client: &async_nats::Client,
        (received, msg): (std::time::Instant, async_nats::Message),
        to_reactor: &ToReactor,
    ) {
        let Some(reply) = msg.reply else {
            return;
        };
        let refusal = match relay::decode::<RelayedPush>(&msg.payload) {
            None => RelayAnswer::refused(ErrorCode::Malformed, "push: malformed relay"),
            Some(_) if self.waiting.len() >= RELAYS_IN_MAX => RelayAnswer::refused(
                ErrorCode::Busy,
                "push: the holder's index node has too many relayed pushes waiting; try again",
            ),
            Some(push) => {
                let within = msg
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(relay::WITHIN_HEADER));
                let deadline = relay::deadline_from(received, within.map(|v| v.as_str()));
                let token = self.next;
                self.next += 1;
                self.waiting.insert(token, (reply, Instant::now()));
                let push = Inbound::PushIn {
                    token,
                    push,
                    deadline,
                };
                to_reactor.send(push);
                return;
            }
        };
        self.send(client, reply, &refusal);
    }

    /// The reactor's answer to relayed push `token`.
    fn answer(&mut self, client: &async_nats::Client, token: u64, answer: &RelayAnswer) {
        let Some((reply, _)) = self.waiting.remove(&token) else {
            return;
        };
        self.send(client, reply, answer);
    }

    /// Sends `answer` on `reply`, by a task of its own.
    fn send(&self, client: &async_nats::Client, reply: async_nats::Subject, answer: &RelayAnswer) {
        send_answer(&self.answers, client, reply, answer);
    }

    /// Forgets relays the requesting node has given up on (it waits [`RELAY_TIMEOUT`]): the
    /// reactor answers every one, so this only matters if it could not.
    fn forget_stale(&mut self) {
        let now = Instant::now();
        self.waiting
            .retain(|_, (_, at)| now.duration_since(*at) < 2 * RELAY_TIMEOUT);
    }
}

/// What a join subscribed to: the stream's ordered consumer from its start (whether it had
/// records pending, and its messages) and the liveness bucket's watch.
struct Joined {
    pending: bool,
    messages: consumer::push::Ordered,
    watch: kv::Watch,
}

/// Creates (or finds) the stream and the bucket, and our liveness key.
async fn setup(
    config: &NatsConfig,
    client: &async_nats::Client,
    counters: Arc<Counters>,
) -> Result<Node, String> {
    let js = jetstream::new(client.clone());
    let stream = quick(
        format_args!("stream {}", config.stream_name()),
        js.get_or_create_stream(stream::Config {
            name: config.stream_name(),
            subjects: vec![format!("{}.>", config.prefix)],
            num_replicas: config.replicas,
            storage: stream::StorageType::File,
            max_bytes: config.max_bytes as i64,
            // At the limit a new record is refused (its session ends, its peer registers
            // again), never an old one dropped: that would lose live entries silently.
            discard: stream::DiscardPolicy::New,
            ..Default::default()
        }),
    )
    .await?;
    let info = quick("stream info", stream.get_info()).await?.config;
    let unlimited = info.max_bytes <= 0;
    if info.discard != stream::DiscardPolicy::New || unlimited {
        // A stream made by an earlier version: bounded now, refusing new records at its
        // limit.
        let max_bytes = if unlimited {
            config.max_bytes as i64
        } else {
            info.max_bytes
        };
        let update = stream::Config {
            discard: stream::DiscardPolicy::New,
            max_bytes,
            ..info
        };
        quick("stream update", js.update_stream(update)).await?;
    }
    let bucket = format!("bucket {}", config.bucket_name());
    let kv = match quick(&bucket, js.get_key_value(config.bucket_name())).await {
        Ok(kv) => kv,
        Err(_) => {
            // The bucket's stream as `create_key_value` would make it (that call first reads
            // the account's info, which this client version cannot parse from a 2.9 server).
            let created = quick(
                &bucket,
                js.create_stream(stream::Config {
                    name: format!("KV_{}", config.bucket_name()),
                    subjects: vec![format!("$KV.{}.>", config.bucket_name())],
                    max_messages_per_subject: 1,
                    max_age: config.ttl,
                    storage: stream::StorageType::File,
                    num_replicas: config.replicas,
                    allow_rollup: true,
                    deny_delete: true,
                    allow_direct: true,
                    discard: stream::DiscardPolicy::New,
                    ..Default::default()
                }),
            )
            .await;
            if let Err(e) = created {
                // Another node may have created it meanwhile: then the get below works.
                log::debug!("cluster: creating {e}");
            }
            quick(&bucket, js.get_key_value(config.bucket_name())).await?
        }
    };
    // The bucket's TTL rules, whoever created it (unread, the key could outlive it unseen).
    let status = quick(&bucket, kv.status()).await?;
    let ttl = match status.max_age() {
        age if age > Duration::ZERO => age,
        _ => config.ttl,
    };
    if ttl != config.ttl {
        log::warn!(
            "cluster: the liveness bucket's TTL is {ttl:?} (--cluster-ttl {:?} applies only to a new bucket)",
            config.ttl
        );
    }
    let keeper_kv = quick(
        &bucket,
        jetstream::new(client.clone()).get_key_value(config.bucket_name()),
    )
    .await?;
    let sent = std::time::Instant::now();
    let revision = quick(
        format_args!("liveness key {}", config.node),
        kv.put(&config.node, "alive".into()),
    )
    .await?;
    counters
        .lease
        .renew(sent, super::counters::lease_length(ttl));
    log::info!(
        "cluster: node {} joined (stream {}, TTL {ttl:?})",
        config.node,
        config.stream_name()
    );
    let removals = Removals::spawn(js.clone(), &stream, client.clone(), counters.clone());
    Ok(Node {
        config: config.clone(),
        js,
        stream,
        kv,
        keeper_kv,
        joined_revision: revision,
        ttl,
        alive: HashMap::new(),
        dead: HashSet::new(),
        counters,
        removals,
    })
}

impl Node {
    /// `<prefix>.<node>.<session>`.
    fn subject(&self, session: u64) -> String {
        format!("{}.{}.{session}", self.config.prefix, self.config.node)
    }

    /// The node and session of a consumed subject, if it is one of ours to apply.
    fn parse_subject<'a>(&self, subject: &'a str) -> Option<(&'a str, u64)> {
        let rest = subject.strip_prefix(self.config.prefix.as_str())?;
        let rest = rest.strip_prefix('.')?;
        let (node, session) = rest.split_once('.')?;
        if !super::is_valid_node_name(node) {
            return None;
        }
        Some((node, session.parse().ok()?))
    }

    async fn serve(
        &mut self,
        client: async_nats::Client,
        joined: Joined,
        outbound: &mut UnboundedReceiver<Outbound>,
        to_reactor: &ToReactor,
    ) -> Result<(), String> {
        let Joined {
            pending: mut rebuilding,
            mut messages,
            mut watch,
        } = joined;
        // Nodes met in the stream while rebuilding, checked alive before serving.
        let mut met: HashSet<String> = HashSet::new();
        if !rebuilding {
            to_reactor.send(Inbound::Rebuilt);
        }
        let mut acks: FuturesUnordered<Ack> = FuturesUnordered::new();
        // Each session's records not yet stored, the first one in flight: one at a time per
        // session keeps its records in order whatever is retried.
        let mut queues: HashMap<u64, VecDeque<Record>> = HashMap::new();
        // Dropped (and so aborted) when this loop ends, however it ends.
        let mut keeper = self.keeper(Some(self.joined_revision), to_reactor);
        // Each local session's records on the stream, to delete them by sequence when it
        // ends or is compacted (never by a subject purge: see `Removals`).
        let mut ledger = Ledger::default();
        // Ended sessions' tombstones, deleted after their linger by a task of their own.
        let tombstones = Removals::spawn(
            self.js.clone(),
            &self.stream,
            client.clone(),
            self.counters.clone(),
        );
        let mut tick = tokio::time::interval(self.ttl / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut check = tokio::time::interval(check_interval(self.ttl));
        check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut applied: u64 = 0;
        // The stream sequence of the last record read, to resume after it.
        let mut last_seq: u64 = 0;
        // Whether a read from the stream's start is done (while `rebuilding`).
        let mut reread = Reread::default();
        let mut stall = Stall::default();
        let mut stall_check = tokio::time::interval(STALL_CHECK);
        stall_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // The reactor fenced the node, or our key is gone: rejoin as a new incarnation.
        let mut rejoin = false;
        // The push relay (see `relay`): pushes sent to other nodes, and those other nodes
        // sent here waiting for the reactor's answer.
        let mut relays_out: FuturesUnordered<RelayRequest> = FuturesUnordered::new();
        let mut relays_in = RelaysIn::new();
        let mut relay_sub = self.relay_subscribe(&client, &relays_in).await;
        loop {
            tokio::select! {
                out = outbound.recv() => match out {
                    Some(Outbound::Push { id, node, push, deadline }) => {
                        let subject = relay::subject(&self.config.prefix, &node);
                        relays_out.push(relay_request(client.clone(), subject, node, (id, push, deadline)));
                    }
                    Some(Outbound::PushAnswer { token, answer }) => {
                        relays_in.answer(&client, token, &answer);
                    }
                    Some(Outbound::Fence) if rebuilding => {
                        // Rejoining already: the reactor serves again at its end.
                    }
                    Some(Outbound::Fence) => rejoin = true,
                    Some(Outbound::Publish { session, record }) => {
                        let queue = queues.entry(session).or_default();
                        if queue.is_empty() {
                            acks.push(publish(self.js.clone(), ledger.incarnation, session, self.subject(session), &record, self.counters.clone()));
                        }
                        queue.push_back(record);
                    }
                    Some(Outbound::Stop) | None => {
                        // Best effort: the others drop our sessions now rather than after the TTL.
                        drop(keeper);
                        let _ = tokio::time::timeout(REQUEST_TIMEOUT, self.js.wait_for_acks()).await;
                        if let Err(e) = bounded("deleting our liveness key", self.kv.delete(&self.config.node)).await {
                            log::warn!("cluster: {e}");
                        }
                        log::info!("cluster: node {} left", self.config.node);
                        return Ok(());
                    }
                },
                Some((incarnation, session, kind, result)) = acks.next() => {
                    self.counters.handle_done();
                    match result {
                        Ok(seq) => {
                            let deletes = ledger.handle_stored(incarnation, session, kind, seq);
                            self.removals.delete(Instant::now(), deletes.now);
                            if let Some(tombstone) = deletes.tombstone {
                                tombstones.delete(Instant::now() + TOMBSTONE_LINGER, vec![tombstone]);
                            }
                        }
                        // Of a session the fence ended (and its queue went then): no one to tell.
                        Err(_) if incarnation != ledger.incarnation => {}
                        Err(e) => {
                            log::warn!("cluster: a record of session {session} was not stored: {e}");
                            self.counters.handle_lost();
                            to_reactor.send(Inbound::Lost { session });
                        }
                    }
                    if let Some(queue) = queues.get_mut(&session) {
                        queue.pop_front();
                        match queue.front() {
                            Some(next) => acks.push(publish(self.js.clone(), ledger.incarnation, session, self.subject(session), next, self.counters.clone())),
                            None => {
                                queues.remove(&session);
                            }
                        }
                    }
                },
                msg = messages.next() => match msg {
                    Some(Ok(msg)) => {
                        let (pending, seq) = msg
                            .info()
                            .map(|i| (i.pending, i.stream_sequence))
                            .unwrap_or((1, last_seq));
                        last_seq = last_seq.max(seq);
                        self.counters.handle_read(seq, pending);
                        let read_to_end = reread.handle_read(seq, pending);
                        if let Some((node, session)) = self.parse_subject(&msg.subject) {
                            if node != self.config.node && !self.dead.contains(node) {
                                match Record::decode(&msg.payload) {
                                    Some(record) => {
                                        if !self.alive.contains_key(node) {
                                            // Known from now: checked alive within a TTL.
                                            let seen = Seen { at: Instant::now(), revision: 0 };
                                            self.alive.insert(node.to_string(), seen);
                                        }
                                        if rebuilding {
                                            met.insert(node.to_string());
                                        }
                                        applied += 1;
                                        let node = node.to_string();
                                        to_reactor.send_record(Inbound::Record { node, session, record }).await;
                                    }
                                    None => log::warn!(
                                        "cluster: {}: undecodable record ({} bytes) skipped",
                                        msg.subject,
                                        msg.payload.len()
                                    ),
                                }
                            }
                        } else {
                            log::warn!("cluster: unexpected subject {} skipped", msg.subject);
                        }
                        if rebuilding && read_to_end {
                            rebuilding = false;
                            self.finish_rebuild(&met, to_reactor).await;
                            log::info!("cluster: rebuilt from {applied} records");
                        }
                    }
                    Some(Err(e)) => {
                        log::warn!("cluster: consumer: {e}; resuming after record {last_seq}");
                        // This client version's ordered consumer does not recover from missed
                        // heartbeats (its server may have died): a new one resumes the stream.
                        if e.kind() == consumer::push::OrderedErrorKind::MissingHeartbeat {
                            self.replace_consumer(&client, last_seq + 1, &mut messages).await;
                        }
                    }
                    None => return Err("the stream's consumer ended".into()),
                },
                entry = watch.next() => match entry {
                    Some(Ok(entry)) if entry.key != self.config.node => match entry.operation {
                        kv::Operation::Put => self.handle_put(entry.key, entry.revision),
                        kv::Operation::Delete | kv::Operation::Purge => {
                            self.declare_dead(&entry.key, to_reactor).await;
                        }
                    },
                    Some(Ok(_)) => {}
                    Some(Err(e)) => {
                        log::warn!("cluster: watching {}: {e}", self.config.bucket_name());
                        // Given up soon, as a consumer's re-creation is: its server may be dead.
                        match hedged("watching again", JOIN_REQUEST_TIMEOUT, || self.kv.watch_all()).await {
                            Ok(w) => watch = w,
                            Err(e) => log::warn!("cluster: {e}"),
                        }
                    }
                    None => return Err("the liveness watch ended".into()),
                },
                Some((id, answer)) = relays_out.next() => {
                    to_reactor.send(Inbound::PushAnswer { id, answer });
                }
                Some(relay) = next_relay(relay_sub.as_mut()) => {
                    relays_in.handle_request(&client, relay, to_reactor);
                }
                _ = tick.tick() => {
                    relays_in.forget_stale();
                    // No record may ever say "0 pending" (see `Reread`): the read is also
                    // done once it reaches the stream's last record as of its first ticks,
                    // or, when nothing comes, once a probe finds nothing after the last read.
                    if rebuilding && self.is_reread(&client, &mut reread).await {
                        rebuilding = false;
                        self.finish_rebuild(&met, to_reactor).await;
                        log::info!("cluster: rebuilt from {applied} records");
                    }
                }
                _ = stall_check.tick() => {
                    if self.is_stuck(&client, last_seq, &mut stall).await {
                        log::warn!(
                            "cluster: consumer: nothing read for {STALL_CHECK:?} while the stream \
                             holds records after {last_seq}; resuming after it"
                        );
                        self.replace_consumer(&client, last_seq + 1, &mut messages).await;
                    }
                }
                _ = check.tick() => self.check_others(to_reactor).await,
                _ = &mut keeper.0 => {
                    // Our key is gone (see `Keeper::run`): the others dropped this incarnation.
                    // Rejoin now, even while reading the stream again after a fence: the
                    // reactor, fenced already, would wait for ever for a lease no one renews.
                    rejoin = true;
                }
            }
            if std::mem::take(&mut rejoin) {
                // Records not published yet are of sessions the reactor ended.
                for queue in queues.values() {
                    for _ in 1..queue.len() {
                        self.counters.handle_done();
                    }
                }
                queues.clear();
                // The old incarnation's records go with its subjects (`rejoin`), and
                // those stored after the walk of them one by one (`Ledger`).
                ledger.handle_fence();
                let new = incarnation(&self.config.node_id);
                let old = std::mem::replace(&mut self.config.node, new);
                keeper = self.keeper(None, to_reactor);
                self.rejoin(&old, to_reactor).await;
                met.clear();
                applied = 0;
                last_seq = 0;
                reread = Reread::default();
                stall = Stall::default();
                rebuilding = true;
                self.replace_consumer(&client, 1, &mut messages).await;
                // Relays to the old incarnation find no one from now on.
                drop(relay_sub.take());
                relay_sub = self.relay_subscribe(&client, &relays_in).await;
            }
            self.counters.set_nodes_alive(self.alive.len());
        }
    }

    /// Subscribes to the pushes other nodes relay to this incarnation (`None`, logged, if
    /// it cannot: then relays to this node are refused as to a dead one).
    async fn relay_subscribe(
        &self,
        client: &async_nats::Client,
        relays_in: &RelaysIn,
    ) -> Option<RelayInbox> {
        let subject = relay::subject(&self.config.prefix, &self.config.node);
        match bounded(
            format_args!("subscribing to {subject}"),
            client.subscribe(subject.clone()),
        )
        .await
        {
            Ok(sub) => Some(RelayInbox::new(
                sub,
                client.clone(),
                relays_in.answers.clone(),
            )),
            Err(e) => {
                log::warn!("cluster: {e}: pushes relayed to this node are refused");
                None
            }
        }
    }

    /// The stream's ordered consumer (from its start) and the bucket's watch.
    async fn subscribe(&self, client: &async_nats::Client) -> Result<Joined, String> {
        let consumer = hedged("consumer", JOIN_REQUEST_TIMEOUT, || {
            self.stream.create_consumer(consumer::push::OrderedConfig {
                deliver_subject: client.new_inbox(),
                filter_subject: format!("{}.>", self.config.prefix),
                deliver_policy: consumer::DeliverPolicy::All,
                ..Default::default()
            })
        })
        .await?;
        let watch = hedged(
            &format!("watch {}", self.config.bucket_name()),
            JOIN_REQUEST_TIMEOUT,
            || self.kv.watch_all(),
        )
        .await?;
        let pending = consumer.cached_info().num_pending > 0;
        let messages = quick("consumer", consumer.messages()).await?;
        Ok(Joined {
            pending,
            messages,
            watch,
        })
    }

    /// An ordered consumer's settings: every node's records, from record `seq` on.
    fn ordered_from(&self, client: &async_nats::Client, seq: u64) -> consumer::push::OrderedConfig {
        consumer::push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            filter_subject: format!("{}.>", self.config.prefix),
            deliver_policy: consumer::DeliverPolicy::ByStartSequence {
                start_sequence: seq,
            },
            ..Default::default()
        }
    }

    /// At a tick of a read from the stream's start: whether it is done, asking the stream's
    /// last sequence if it is not known yet (again at the next tick if it cannot be had), and
    /// probing what is left if nothing was read since the last tick.
    async fn is_reread(&self, client: &async_nats::Client, reread: &mut Reread) -> bool {
        if reread.wants_target() {
            match quick("stream info", self.stream.get_info()).await {
                Ok(info) => {
                    log::debug!(
                        "cluster: {}: reading the stream up to record {} at least",
                        self.config.node,
                        info.state.last_sequence
                    );
                    if reread.handle_target(info.state.last_sequence) {
                        return true;
                    }
                }
                Err(e) => log::debug!("cluster: {}: {e}; asked again", self.config.node),
            }
        }
        match reread.poll_probe() {
            Some(from) => self.is_read_to_end(client, from).await,
            None => false,
        }
    }

    /// Whether the stream holds nothing from record `seq` on (false if it cannot tell).
    async fn is_read_to_end(&self, client: &async_nats::Client, seq: u64) -> bool {
        let probe = hedged("probe", JOIN_REQUEST_TIMEOUT, || {
            self.stream.create_consumer(self.ordered_from(client, seq))
        })
        .await;
        // The probe is ephemeral: the server drops it once it has no subscriber.
        match &probe {
            Ok(c) => log::debug!(
                "cluster: {}: probe from {seq}: {} pending",
                self.config.node,
                c.cached_info().num_pending
            ),
            Err(e) => log::debug!("cluster: {}: probe from {seq}: {e}", self.config.node),
        }
        probe.is_ok_and(|c| c.cached_info().num_pending == 0)
    }

    /// Whether the consumer is stuck: the stream held records after `last_seq` (the last
    /// read) at this check and at the one before ([`STALL_CHECK`] apart), nothing was read
    /// between them, and a probe
    /// finds records still to read. The client re-creates an ordered consumer by itself after
    /// a reconnect (its server died), retrying without end, 10 s apart once five tries
    /// failed, and checks no heartbeat meanwhile: without this, a node whose re-creation kept
    /// failing while the NATS cluster elected leaders replicated nothing for minutes, and
    /// said nothing.
    async fn is_stuck(
        &self,
        client: &async_nats::Client,
        last_seq: u64,
        stall: &mut Stall,
    ) -> bool {
        let last = match quick("stream info", self.stream.get_info()).await {
            Ok(info) => {
                self.counters.handle_last_sequence(info.state.last_sequence);
                info.state.last_sequence
            }
            Err(e) => {
                log::debug!("cluster: {e}");
                return false;
            }
        };
        if last <= last_seq || last == stall.read_to_end {
            stall.behind_at = None;
            return false;
        }
        if stall.behind_at != Some(last_seq) {
            stall.behind_at = Some(last_seq);
            return false;
        }
        stall.behind_at = None;
        if self.is_read_to_end(client, last_seq + 1).await {
            // What is left was purged before it was read: nothing to wait for.
            stall.read_to_end = last;
            return false;
        }
        true
    }

    /// Replaces `messages` by a new ordered consumer from record `seq` on, tried for
    /// [`RESUME_LIMIT`] (then: kept, and tried again at its next error or stall).
    async fn replace_consumer(
        &self,
        client: &async_nats::Client,
        seq: u64,
        messages: &mut consumer::push::Ordered,
    ) {
        match self.resume(client, seq).await {
            Ok(m) => {
                log::debug!("cluster: {}: consumer from {seq}", self.config.node);
                *messages = m;
            }
            Err(e) => log::warn!("cluster: {e}"),
        }
    }

    /// A new ordered consumer of the stream from record `seq` on.
    async fn resume(
        &self,
        client: &async_nats::Client,
        seq: u64,
    ) -> Result<consumer::push::Ordered, String> {
        // Tries side by side, each given up soon, as in the join: a try may be placed on a
        // dead server (see `hedged`), or sent to a meta leader that just died, and then it is
        // never answered.
        let consumer = hedged("consumer", RESUME_LIMIT, || {
            self.stream.create_consumer(self.ordered_from(client, seq))
        })
        .await?;
        quick("consumer", consumer.messages()).await
    }

    /// The stream was read to its end: every node met in it must be alive.
    async fn finish_rebuild(&mut self, met: &HashSet<String>, to_reactor: &ToReactor) {
        for node in met {
            if !self.is_alive_in_bucket(node).await {
                self.declare_dead(node, to_reactor).await;
            }
        }
        to_reactor.send(Inbound::Rebuilt);
    }

    /// Whether `node`'s liveness key is in the bucket (an unreachable bucket counts as
    /// alive: no one is declared dead on our own failure).
    async fn is_alive_in_bucket(&self, node: &str) -> bool {
        match bounded(
            format_args!("reading {node}'s liveness key"),
            self.kv.entry(node),
        )
        .await
        {
            Ok(Some(entry)) => entry.operation == kv::Operation::Put,
            Ok(None) => false,
            Err(e) => {
                log::warn!("cluster: {e}");
                true
            }
        }
    }

    /// The watch saw `node`'s key at `revision`: alive, unless that revision was seen
    /// already (a watch made again delivers the keys' last values again: an old one proves
    /// nothing).
    fn handle_put(&mut self, node: String, revision: u64) {
        if self.dead.contains(&node) {
            return;
        }
        let seen = self.alive.get(&node).map(|s| s.revision);
        if seen != Some(revision) {
            let at = Instant::now();
            self.alive.insert(node, Seen { at, revision });
        }
    }

    /// A node whose key has not been seen take a new revision for a TTL is dead, once the
    /// stream's leader confirms it: the key is deleted at the revision seen (or at none, if
    /// it is gone), which only the leader can do, and only if the node did not refresh it
    /// meanwhile; see the module docs. A node that cannot read the bucket declares no one
    /// dead: the failure may be its own.
    async fn check_others(&mut self, to_reactor: &ToReactor) {
        let now = Instant::now();
        let stale: Vec<(String, u64)> = self
            .alive
            .iter()
            .filter(|(_, seen)| now.duration_since(seen.at) > self.ttl)
            .map(|(n, seen)| (n.clone(), seen.revision))
            .collect();
        for (node, seen) in stale {
            // A read may be answered by any of the bucket's replicas, one of them behind.
            let read = self.kv.entry(node.as_str());
            let expect = match bounded(format_args!("reading {node}'s liveness key"), read).await {
                Ok(Some(e)) if e.operation != kv::Operation::Put => {
                    self.declare_dead(&node, to_reactor).await;
                    continue;
                }
                Ok(Some(e)) if e.revision > seen => {
                    // Refreshed, and the watch has not told us yet.
                    let at = Instant::now();
                    let revision = e.revision;
                    self.alive.insert(node, Seen { at, revision });
                    continue;
                }
                // A replica behind the one the watch reads answered: asked again next time.
                Ok(Some(e)) if e.revision < seen => continue,
                Ok(Some(_)) => seen,
                Ok(None) => 0,
                Err(e) => {
                    log::warn!("cluster: {e}");
                    continue;
                }
            };
            let delete = self.kv.delete_expect_revision(&node, Some(expect));
            match bounded("deleting a stale liveness key", delete).await {
                Ok(()) => {
                    log::info!(
                        "cluster: node {node} did not refresh its liveness key for {:?}; deleted it",
                        self.ttl
                    );
                    self.declare_dead(&node, to_reactor).await;
                }
                // Refreshed meanwhile (the watch brings the new revision), deleted by another
                // node (the watch brings that), or NATS unreachable: checked again next time.
                Err(e) => log::debug!("cluster: deleting {node}'s stale liveness key: {e}"),
            }
        }
    }

    /// `node` is dead: the reactor drops its sessions, and the lowest-named node alive deletes
    /// its subjects' records.
    async fn declare_dead(&mut self, node: &str, to_reactor: &ToReactor) {
        if !self.dead.insert(node.to_string()) {
            return;
        }
        self.alive.remove(node);
        to_reactor.send(Inbound::NodeDead {
            node: node.to_string(),
        });
        let lowest = self
            .alive
            .keys()
            .map(String::as_str)
            .chain([self.config.node.as_str()])
            .min()
            .expect("we are alive");
        if lowest == self.config.node {
            log::info!("cluster: node {node} is dead; deleting its records");
            let subjects = format!("{}.{node}.>", self.config.prefix);
            self.removals.delete_subjects(subjects);
        }
    }

    /// A keeper of our key (from `revision`, or creating it), as a task.
    fn keeper(&self, revision: Option<u64>, to_reactor: &ToReactor) -> AbortOnDrop {
        let keeper = Keeper {
            kv: self.keeper_kv.clone(),
            node: self.config.node.clone(),
            revision,
            ttl: self.ttl,
            counters: self.counters.clone(),
            wake: to_reactor.wake.clone(),
        };
        AbortOnDrop(tokio::spawn(keeper.run()))
    }

    /// The reactor fenced the node, which is now `self.config.node` instead of `old`: `old`'s
    /// key is deleted (the others drop its sessions at once) and its subjects' records (each
    /// bounded, best effort: a dead node's records are deleted by the others too), and the
    /// reactor is told to drop every remote session, before the stream is read again.
    async fn rejoin(&mut self, old: &str, to_reactor: &ToReactor) {
        log::warn!(
            "cluster: {old}: fenced; rejoining as {} and reading the stream again",
            self.config.node
        );
        self.dead.insert(old.to_string());
        if let Err(e) = bounded(format_args!("deleting {old}'s key"), self.kv.delete(old)).await {
            log::warn!("cluster: {e}");
        }
        let subjects = format!("{}.{old}.>", self.config.prefix);
        self.removals.delete_subjects(subjects);
        to_reactor.send(Inbound::Fenced);
    }
}

/// Deletes the record at `seq` of `stream` (without overwriting its bytes: they are not
/// secret); one already gone counts as deleted. Never moves a consumer (see [`Removals`]).
pub async fn delete_record(js: &jetstream::Context, stream: &str, seq: u64) -> Result<(), String> {
    let subject = format!("STREAM.MSG.DELETE.{stream}");
    let request = serde_json::json!({ "seq": seq, "no_erase": true });
    let answer: serde_json::Value = js
        .request(subject, &request)
        .await
        .map_err(|e| e.to_string())?;
    match answer.get("error") {
        None => Ok(()),
        Some(e) => {
            let why = e.to_string();
            if why.to_ascii_lowercase().contains("not found") {
                Ok(())
            } else {
                Err(why)
            }
        }
    }
}

/// A local session's records on the stream (their sequences, ascending), and where its
/// snapshot in progress began.
#[derive(Debug, Default)]
struct Stored {
    seqs: Vec<u64>,
    snapshot: Option<u64>,
}

/// Most deletes in flight at once, per [`Removals`] task.
const DELETES_IN_FLIGHT: usize = 32;

/// What a [`Removals`] task deletes.
#[derive(Debug)]
enum Removal {
    /// These records.
    Sequences(Vec<u64>),
    /// Every record on these subjects (a dead node's, `<prefix>.<node>.>`): found by a walk
    /// of them with a consumer of their own.
    Subjects(String),
}

/// Deletes records from the stream, one by one by sequence, in a task of its own (the main
/// loop never waits for it), each request bounded, in the order they come once their time
/// has come.
///
/// Never a purge with a subject filter: nats-server 2.9.10 (bookworm's) moves *every*
/// consumer whose filter covers the purged subject to the purged subject's first record
/// left, or past the stream's last record if none is left (`stream.purge` then
/// `consumer.purge` in its source; fixed in 2.9.12 by nats-server PR 3838, and for wider
/// filters by PR 5075). Our consumers read `<prefix>.>`, so a purge of one session's subject made a
/// node reading behind skip every unread record of every other session: records were lost,
/// as they were with a `Nats-Rollup` header, which is a purge too. A deleted record is
/// simply not delivered; no consumer moves (`tests/it/cluster.rs` shows both).
struct Removals {
    tx: tokio::sync::mpsc::UnboundedSender<(Instant, Removal)>,
    _task: AbortOnDrop,
}

impl Removals {
    fn spawn(
        js: jetstream::Context,
        stream: &stream::Stream,
        client: async_nats::Client,
        counters: Arc<Counters>,
    ) -> Removals {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        let remover = Remover {
            js,
            stream: stream.clone(),
            client,
            counters,
        };
        Removals {
            tx,
            _task: AbortOnDrop(tokio::spawn(remover.run(rx))),
        }
    }

    /// Deletes the records at `seqs` at `at` (not before anything handed over earlier).
    fn delete(&self, at: Instant, seqs: Vec<u64>) {
        if !seqs.is_empty() {
            let _ = self.tx.send((at, Removal::Sequences(seqs)));
        }
    }

    /// Deletes every record on `subjects` now.
    fn delete_subjects(&self, subjects: String) {
        let _ = self.tx.send((Instant::now(), Removal::Subjects(subjects)));
    }
}

/// The task of a [`Removals`].
struct Remover {
    js: jetstream::Context,
    stream: stream::Stream,
    client: async_nats::Client,
    counters: Arc<Counters>,
}

impl Remover {
    async fn run(self, mut rx: tokio::sync::mpsc::UnboundedReceiver<(Instant, Removal)>) {
        while let Some((at, removal)) = rx.recv().await {
            tokio::time::sleep_until(at).await;
            match removal {
                Removal::Sequences(seqs) => self.delete(seqs).await,
                Removal::Subjects(subjects) => match self.walk(&subjects).await {
                    Ok(seqs) => {
                        let n = seqs.len();
                        self.delete(seqs).await;
                        log::info!("cluster: deleted the {n} records of {subjects}");
                    }
                    Err(e) => log::warn!("cluster: deleting the records of {subjects}: {e}"),
                },
            }
        }
    }

    /// Deletes the records at `seqs`, [`DELETES_IN_FLIGHT`] at a time.
    async fn delete(&self, seqs: Vec<u64>) {
        futures_util::stream::iter(seqs)
            .for_each_concurrent(DELETES_IN_FLIGHT, |seq| async move {
                match bounded(format!("deleting record {seq}"), self.delete_one(seq)).await {
                    Ok(()) => self.counters.handle_deleted(),
                    Err(e) => log::debug!("cluster: {e}"),
                }
            })
            .await;
    }

    async fn delete_one(&self, seq: u64) -> Result<(), String> {
        delete_record(&self.js, &self.stream.cached_info().config.name, seq).await
    }

    /// The sequences of every record on `subjects`, read by a consumer of their own (headers
    /// only), each step bounded.
    async fn walk(&self, subjects: &str) -> Result<Vec<u64>, String> {
        // One try may take as long as the walk's step did before tries were hedged.
        let consumer = hedged_each("walk consumer", REQUEST_TIMEOUT, REQUEST_TIMEOUT, || {
            self.stream.create_consumer(consumer::push::OrderedConfig {
                deliver_subject: self.client.new_inbox(),
                filter_subject: subjects.to_string(),
                deliver_policy: consumer::DeliverPolicy::All,
                headers_only: true,
                ..Default::default()
            })
        })
        .await?;
        let mut seqs = Vec::new();
        if consumer.cached_info().num_pending == 0 {
            return Ok(seqs);
        }
        let mut messages = bounded("walk consumer", consumer.messages()).await?;
        loop {
            let msg = match tokio::time::timeout(REQUEST_TIMEOUT, messages.next()).await {
                Ok(Some(Ok(msg))) => msg,
                Ok(Some(Err(e))) => return Err(format!("walk: {e}")),
                Ok(None) => return Ok(seqs),
                Err(_) => return Err(format!("walk: nothing read within {REQUEST_TIMEOUT:?}")),
            };
            let info = msg.info().map_err(|e| format!("walk: {e}"))?;
            seqs.push(info.stream_sequence);
            if info.pending == 0 {
                return Ok(seqs);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads `seqs` one per tick, each counted with `pending` more after it, and ticks after
    /// each; true once the read says it is done (it never probes: a record came every tick).
    fn read_each_tick(
        reread: &mut Reread,
        seqs: std::ops::RangeInclusive<u64>,
        pending: u64,
    ) -> bool {
        for seq in seqs {
            if reread.handle_read(seq, pending) {
                return true;
            }
            assert_eq!(
                reread.poll_probe(),
                None,
                "a record came since the last tick"
            );
        }
        false
    }

    #[test]
    fn a_reread_ends_at_the_stream_s_last_record_when_the_pending_count_stays_above_0() {
        // The fence test under load: the server counted 2 records pending that it deleted
        // before they were read, and another node published a record every tick.
        let mut reread = Reread::default();
        assert!(!reread.handle_read(1, 2));
        // The stream's last sequence could not be had at the first tick: asked again.
        assert!(reread.wants_target());
        assert_eq!(reread.poll_probe(), None);
        assert!(reread.wants_target());
        assert!(!reread.handle_target(6));
        assert!(!reread.wants_target());
        assert!(read_each_tick(&mut reread, 2..=10, 2));
        // It ended at the first record at or past 6 (the 2 deleted ones never came).
        assert_eq!(reread.last, 6);
        // Only the first last sequence counts: a later, higher one does not move the end.
        let mut reread = Reread::default();
        assert!(!reread.handle_target(6));
        assert!(!reread.handle_target(1_000));
        assert!(read_each_tick(&mut reread, 1..=6, 2));
    }

    #[test]
    fn a_reread_ends_at_a_count_of_0_or_a_probe_once_nothing_comes() {
        let mut reread = Reread::default();
        assert!(!reread.handle_read(1, 1));
        assert!(reread.handle_read(2, 0));
        // The records left were deleted before they were read: nothing comes, and a probe
        // asks from the one after the last read.
        let mut reread = Reread::default();
        assert!(!reread.handle_target(9));
        assert!(!reread.handle_read(4, 5));
        assert_eq!(reread.poll_probe(), None);
        assert_eq!(reread.poll_probe(), Some(5));
        assert_eq!(reread.poll_probe(), Some(5));
        // A stream that never held a record.
        assert!(Reread::default().handle_target(0));
    }

    #[test]
    fn a_record_stored_after_a_fence_is_deleted_at_once_and_not_kept() {
        let mut ledger = Ledger::default();
        let none = Deletes::default();
        assert_eq!(ledger.handle_stored(0, 1, Kind::Change, 10), none);
        assert_eq!(ledger.handle_stored(0, 2, Kind::Change, 11), none);
        let inflight = ledger.incarnation;
        ledger.handle_fence();
        assert_eq!(ledger.kept(), 0);
        // Session 1's register was in flight at the fence: stored after the old subjects
        // were walked, of a session that will never end.
        let deletes = ledger.handle_stored(inflight, 1, Kind::Change, 12);
        assert_eq!(deletes.now, [12]);
        assert_eq!(ledger.kept(), 0);
        // The new incarnation's sessions are kept and deleted as ever.
        let now = ledger.incarnation;
        assert_eq!(ledger.handle_stored(now, 3, Kind::Change, 13), none);
        assert_eq!(ledger.kept(), 1);
        let end = ledger.handle_stored(now, 3, Kind::End, 14);
        assert_eq!(
            end,
            Deletes {
                now: vec![13],
                tombstone: Some(14)
            }
        );
        assert_eq!(ledger.kept(), 0);
    }

    #[test]
    fn a_snapshot_s_end_deletes_the_session_s_records_before_it() {
        let mut ledger = Ledger::default();
        for (seq, kind) in [(1, Kind::Change), (2, Kind::Change), (5, Kind::Snapshot)] {
            assert_eq!(ledger.handle_stored(0, 7, kind, seq), Deletes::default());
        }
        // Another session's record between them is not this one's.
        ledger.handle_stored(0, 8, Kind::Change, 6);
        ledger.handle_stored(0, 7, Kind::Change, 7);
        let end = ledger.handle_stored(0, 7, Kind::SnapshotEnd, 9);
        assert_eq!(end.now, [1, 2]);
        assert_eq!(ledger.kept(), 4);
    }

    #[test]
    fn answers_to_relayed_pushes_go_out_side_by_side_and_are_bounded_in_number() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        runtime.block_on(async {
            let answers = Answers::new(2);
            // An answer whose publish waits (a connection that is down)...
            let (release, stuck) = tokio::sync::oneshot::channel::<()>();
            assert!(answers.spawn(async move {
                let _ = stuck.await;
            }));
            // ...does not hold up the next: it goes out while the first still waits. (Sent
            // one after the other, as the thread did until now, it would wait for ever.)
            let (tx, mut sent) = tokio::sync::mpsc::unbounded_channel();
            assert!(answers.spawn(async move {
                tx.send("second").unwrap();
            }));
            let second = tokio::time::timeout(Duration::from_secs(10), sent.recv()).await;
            assert_eq!(second.unwrap(), Some("second"));
            // Its room came back once it ended; the room in all is bounded: with two waiting,
            // a third is refused (dropped) rather than queued without end.
            let (release_too, stuck_too) = tokio::sync::oneshot::channel::<()>();
            let mut room_back = false;
            for _ in 0..100 {
                if answers.permits.available_permits() == 1 {
                    room_back = true;
                    break;
                }
                tokio::task::yield_now().await;
            }
            assert!(room_back, "an ended answer's room never came back");
            assert!(answers.spawn(async move {
                let _ = stuck_too.await;
            }));
            assert!(!answers.spawn(async {}));
            // Once one ends, there is room again.
            release.send(()).unwrap();
            let mut spawned = false;
            for _ in 0..100 {
                tokio::task::yield_now().await;
                if answers.spawn(async {}) {
                    spawned = true;
                    break;
                }
            }
            assert!(spawned, "no room after an answer ended");
            drop(release_too);
        });
    }

    /// Runs `hedged` on a paused clock against tries that answer after `latency`, or never
    /// (those whose number, from 1, is in `lost`: placed on a dead server); what it returned,
    /// the virtual time it took, and how many tries it sent.
    fn hedge_against(
        lost: &[usize],
        latency: Duration,
        limit: Duration,
    ) -> (Result<usize, String>, Duration, usize) {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let began = Instant::now();
            let sent = std::cell::Cell::new(0);
            let got = hedged("consumer", limit, || {
                sent.set(sent.get() + 1);
                let n = sent.get();
                let is_lost = lost.contains(&n);
                async move {
                    if is_lost {
                        std::future::pending::<()>().await;
                    }
                    tokio::time::sleep(latency).await;
                    Ok::<usize, String>(n)
                }
            })
            .await;
            (got, began.elapsed(), sent.get())
        })
    }

    #[test]
    fn a_consumer_creation_placed_on_a_dead_server_is_outrun_by_another_try() {
        let ms = Duration::from_millis;
        // Nothing lost: one try, answered as fast as the server answers.
        assert_eq!(hedge_against(&[], ms(3), ms(2000)), (Ok(1), ms(3), 1));
        // The first 4 tries placed on the dead server (1 in 81 with one server of 3 dead):
        // the 5th, sent 4 × HEDGE_EVERY after the first, answers. Sent one after another and
        // each waited for 2 s, as before, this took 8 s.
        let (got, took, sent) = hedge_against(&[1, 2, 3, 4], ms(3), Duration::from_secs(30));
        assert_eq!(got, Ok(5));
        assert_eq!(took, HEDGE_EVERY * 4 + ms(3));
        assert_eq!(sent, 5);
        // A slow server (a starved machine): the first try answers after 1.2 s and wins, the
        // tries sent meanwhile are dropped.
        let (got, took, sent) = hedge_against(&[], ms(1200), Duration::from_secs(30));
        assert_eq!((got, took, sent), (Ok(1), ms(1200), 3));
        // Nothing answers: given up at the limit, with at most HEDGE_IN_FLIGHT in flight and
        // each try given up after JOIN_REQUEST_TIMEOUT (so tries go on being sent).
        let every: Vec<usize> = (1..=1000).collect();
        let (got, took, sent) = hedge_against(&every, ms(3), Duration::from_secs(10));
        assert!(
            got.unwrap_err().contains("none of 20 tries answered"),
            "{sent}"
        );
        assert_eq!(took, Duration::from_secs(10));
        assert_eq!(sent, 20);
    }
}
