//! The index server's side of cluster mode (see [`crate::index::cluster`]): local changes
//! handed to the [`Link`], and other nodes' changes applied between requests, within the same
//! per-turn budget as the other background work. Without `--cluster` none of this runs: the
//! hooks are one `Option` test each.
//!
//! Every request is first checked against the node's liveness lease (see
//! [`link`](crate::index::cluster::link)'s fencing): a fenced node answers `Busy` and closes,
//! so the peer goes on at another `--index` node. A timer checks the lease while no request
//! comes, so local sessions end soon after it runs out even on an idle node.

use super::{IndexServer, Session};
use crate::index::cluster::apply::Event;
use crate::index::cluster::link::{ClusterStatus, Link};
use crate::index::store::{PeerId, RegisterOutcome};
use crate::index::worktrace;
use crate::reactor::{CloseReason, Ctx};
use crate::wire::{ErrorCode, FileEntry, FileHash, RequestBody};
use std::time::{Duration, Instant};

/// The timer that checks the lease while no request comes.
pub(super) const CLUSTER_TIMER: u64 = 0x636c_7573;
/// How often it does.
const LEASE_CHECK: Duration = Duration::from_millis(250);

impl IndexServer {
    /// Makes this server a cluster node: local changes go to `link`, other nodes' come from it.
    pub fn join_cluster(&mut self, link: Link) {
        self.cluster = Some(Box::new(link));
    }

    /// The cluster link, if clustered.
    pub fn cluster(&self) -> Option<&Link> {
        self.cluster.as_deref()
    }

    /// The cluster's figures for the metrics, if clustered.
    pub fn cluster_status(&self) -> Option<ClusterStatus> {
        self.cluster.as_deref().map(|link| link.status(&self.index))
    }

    /// Reads the stream to its end and applies it (before serving anyone). Err: why the
    /// cluster cannot be joined.
    pub fn rebuild_from_cluster(&mut self) -> Result<(), String> {
        let Some(link) = self.cluster.as_mut() else {
            return Ok(());
        };
        link.rebuild(&mut self.index)?;
        self.index.post_pending();
        while self.index.has_departures() {
            self.index.continue_departures(usize::MAX);
        }
        Ok(())
    }

    /// Why the cluster link failed while serving, if it did (indexd then stops).
    pub fn cluster_failure(&self) -> Option<&str> {
        self.cluster_failed.as_deref()
    }

    /// indexd is stopping: the NATS thread deletes our liveness key.
    pub(super) fn leave_cluster(&mut self) {
        if let Some(link) = self.cluster.as_mut() {
            link.stop();
        }
    }

    /// Whether the cluster refuses `body` now: the node is fenced (its lease ran out: then
    /// the connection closes) or too many changes wait for the stream (a hello or a
    /// register). Sets the connections to end at the turn's end.
    pub(super) fn cluster_refusal(
        &mut self,
        body: &RequestBody,
    ) -> Option<(ErrorCode, bool, &'static str)> {
        let link = self.cluster.as_mut()?;
        if link.check_fence(Instant::now(), &mut self.cluster_to_close) {
            return Some((
                ErrorCode::Busy,
                true,
                "cluster: this index node is fenced (rejoining the cluster); use another",
            ));
        }
        let grows = matches!(
            body,
            RequestBody::Hello { .. } | RequestBody::Register { .. }
        );
        if grows && link.is_congested() {
            let hello = matches!(body, RequestBody::Hello { .. });
            return Some((
                ErrorCode::Busy,
                hello,
                "cluster: too many changes wait for the cluster's stream; try again later",
            ));
        }
        None
    }

    pub(super) fn cluster_opened(&mut self, peer: PeerId, addr: std::net::SocketAddr) {
        if let Some(link) = self.cluster.as_mut() {
            link.handle_opened(peer, addr, self.current_conn);
        }
    }

    pub(super) fn cluster_registered(
        &mut self,
        peer: PeerId,
        files: Vec<FileEntry>,
        outcome: RegisterOutcome,
    ) {
        if let Some(link) = self.cluster.as_mut() {
            link.handle_registered(peer, files, outcome);
            self.cluster_compact(peer);
        }
    }

    /// Compacts local `peer`'s subject on the stream if it asks for it: a snapshot of its
    /// entries (see [`Link::wants_snapshot`]), built in slices by
    /// [`IndexServer::poll_cluster_snapshots`].
    fn cluster_compact(&mut self, peer: PeerId) {
        if let Some(link) = self.cluster.as_mut() {
            if link.wants_snapshot(peer, self.index.entries_of(peer)) {
                link.begin_snapshot(peer);
            }
        }
    }

    /// Takes a step of the snapshots of local sessions under way, about `budget` holdings
    /// (see [`Link::poll_snapshots`]); returns the holdings walked (0: none can go on now).
    pub fn poll_cluster_snapshots(&mut self, budget: usize) -> usize {
        match self.cluster.as_mut() {
            Some(link) => link.poll_snapshots(&self.index, budget),
            None => 0,
        }
    }

    pub(super) fn cluster_unregistered(&mut self, peer: PeerId, hashes: Vec<FileHash>, n: u32) {
        if let Some(link) = self.cluster.as_mut() {
            link.handle_unregistered(peer, hashes, n);
            self.cluster_compact(peer);
        }
    }

    pub(super) fn cluster_closed(&mut self, peer: PeerId) {
        if let Some(link) = self.cluster.as_mut() {
            link.handle_closed(peer);
        }
    }

    /// Checks the lease and takes what the NATS thread sent; at a turn's end (`turn_end`: the
    /// one call of a reactor turn that does), applies it within the turn's background share
    /// ([`super::BACKGROUND_WORK_PER_TURN`], and no further than [`super::TURN_WORK_TARGET`]
    /// into the turn, after one slice at least), acts on the NATS thread's news and takes
    /// slices of the local sessions' snapshots within the same share; asks for another turn
    /// while work is left. The NATS thread's wake and the lease timer come in the same turn
    /// before its end, so they apply nothing: until session 12 each took a share of its own,
    /// and a woken turn whose timer fired spent up to three (2.4 ms and more of CPU).
    pub(super) fn cluster_turn(&mut self, ctx: &mut Ctx<Session>, turn_end: bool) {
        self.share_address_limits(ctx.now());
        let Some(link) = self.cluster.as_mut() else {
            return;
        };
        if !self.cluster_timer_armed {
            self.cluster_timer_armed = true;
            ctx.set_timer(LEASE_CHECK, CLUSTER_TIMER);
        }
        let mut close = std::mem::take(&mut self.cluster_to_close);
        link.check_fence(Instant::now(), &mut close);
        link.receive();
        if !turn_end {
            self.cluster_to_close = close;
            return;
        }
        let had_work = link.has_work();
        let started = Instant::now();
        let deadline =
            (started + super::BACKGROUND_WORK_PER_TURN).min(ctx.now() + super::TURN_WORK_TARGET);
        let mut events = Vec::new();
        while link.has_work() {
            let late = || Instant::now() >= deadline;
            link.poll_until(
                &mut self.index,
                super::SLICE_UNITS,
                late,
                &mut events,
                &mut close,
            );
            if Instant::now() >= deadline {
                break;
            }
        }
        // Snapshots of local sessions: a slice at least, however busy the apply was.
        let mut snapshot_progress = false;
        loop {
            let walked = worktrace::time("cluster snapshot slice", || {
                link.poll_snapshots(&self.index, super::SLICE_UNITS)
            });
            snapshot_progress |= walked > 0;
            if walked == 0 || Instant::now() >= deadline {
                break;
            }
        }
        for conn in close {
            ctx.close(conn, CloseReason::Protocol("cluster: node fenced".into()));
        }
        for event in events {
            match event {
                Event::Rebuilt | Event::Fenced => {}
                Event::Lost(session) => {
                    if let Some(conn) = link.conn_of(session) {
                        ctx.close(
                            conn,
                            CloseReason::Protocol("cluster: a change was not stored".into()),
                        );
                    }
                }
                Event::Failed(why) => {
                    log::error!("cluster: {why}; stopping");
                    self.cluster_failed = Some(why);
                    ctx.stop();
                }
            }
        }
        if had_work || (snapshot_progress && link.has_snapshots()) {
            // Departures and new words are background work too. (A snapshot that cannot go
            // on waits for the stream's acknowledgements or the turn's posting of its staged
            // files, and the lease timer comes back every 250 ms.)
            ctx.request_turn();
        }
        self.relay_turn(ctx);
    }

    /// The lease timer: checks the lease (in the turn) and sets itself again.
    pub(super) fn cluster_timer(&mut self, ctx: &mut Ctx<Session>) {
        self.cluster_timer_armed = false;
        self.cluster_turn(ctx, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::cluster::apply::Inbound;
    use crate::index::cluster::link::Outbound;
    use crate::index::cluster::Record;
    use crate::index::server::test_node::{self, call, carry, replicate, Node};
    use crate::index::server::{ServerLimits, SessionState};
    use crate::wire::{self, LookupKey, Request, RequestBody, ResponseBody};
    use std::net::SocketAddr;

    fn node() -> Node {
        test_node::node(ServerLimits::default())
    }

    fn join(server: &mut IndexServer, ip: [u8; 4], port: u16) -> Session {
        test_node::join(server, &SocketAddr::from((ip, 40000)).to_string(), port)
    }

    fn holders(server: &mut IndexServer, name: &str) -> Vec<SocketAddr> {
        match server.index.lookup(&LookupKey::Name(name.into())) {
            Ok(files) => files.into_iter().flat_map(|f| f.holders).collect(),
            Err(_) => Vec::new(),
        }
    }

    use super::super::tests::distinct_files as files;

    /// Builds the snapshots under way to their end, a slice of 64 holdings at a time,
    /// as the reactor's turns would (the staged files posted first, as at a turn's end).
    fn drive_snapshots(server: &mut IndexServer) {
        server.index.post_pending();
        while server.poll_cluster_snapshots(crate::index::server::SLICE_UNITS) > 0 {
            server.index.post_pending();
        }
    }

    /// Carries what `from` published to `to` as node `name`'s records (each acknowledged, as
    /// the NATS thread would once stored) and applies them `budget` units a poll, checking
    /// after each poll that no file lists a holder twice; returns the records carried.
    fn replicate_in_slices(from: &mut Node, name: &str, to: &mut Node, budget: usize) -> usize {
        let counters = from.server.cluster().unwrap().counters();
        let n = carry(from, name, to, || counters.handle_done());
        to.server.cluster.as_mut().unwrap().receive();
        let (mut events, mut close) = (Vec::new(), Vec::new());
        while let Some(link) = to.server.cluster.as_mut().filter(|l| l.has_work()) {
            link.poll(&mut to.server.index, budget, &mut events, &mut close);
            assert_no_holder_twice(&mut to.server);
        }
        while to.server.index.has_departures() {
            to.server.index.continue_departures(usize::MAX);
        }
        assert!(events.is_empty(), "{events:?}");
        n
    }

    /// Every holding of the index peer at `at` in `server`: (hash, size, name).
    fn holdings_at(server: &IndexServer, at: SocketAddr) -> Vec<(FileHash, u64, String)> {
        let peer = (0..16)
            .map(PeerId)
            .find(|&p| server.index.peer_addr(p) == Some(at))
            .expect("a live peer at that address");
        let mut out = Vec::new();
        server
            .index
            .holdings_from(peer, 0, usize::MAX, |_, hash, size, name| {
                out.push((*hash, size, String::from_utf8(name.to_vec()).unwrap()));
            });
        out.sort();
        out
    }

    /// `b`'s peer at `at` holds what `a`'s does (the difference if not).
    fn assert_same_holdings(b: &IndexServer, a: &IndexServer, at: SocketAddr, seed: u64) {
        let (at_b, at_a) = (holdings_at(b, at), holdings_at(a, at));
        let extra: Vec<_> = at_b.iter().filter(|h| !at_a.contains(h)).collect();
        let missing: Vec<_> = at_a.iter().filter(|h| !at_b.contains(h)).collect();
        assert!(
            extra.is_empty() && missing.is_empty(),
            "seed {seed}: b holds {extra:?} beyond a, misses {missing:?}"
        );
    }

    /// No lookup by hash lists a holder twice.
    fn assert_no_holder_twice(server: &mut IndexServer) {
        server.index.post_pending();
        let mut hashes = Vec::new();
        for p in 0..16 {
            server
                .index
                .holdings_from(PeerId(p), 0, usize::MAX, |_, h, _, _| {
                    hashes.push(*h);
                });
        }
        for hash in hashes {
            for file in server.index.lookup(&LookupKey::Hash(hash)).unwrap() {
                let mut listed = file.holders.clone();
                listed.sort();
                listed.dedup();
                assert_eq!(listed.len(), file.holders.len(), "{file:?}");
            }
        }
    }

    #[test]
    fn a_snapshot_built_in_slices_stays_exact_under_the_session_s_own_changes() {
        // A small deterministic generator: every seed another interleaving.
        for seed in 1..=12u64 {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            let mut rand = move |n: u64| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x % n
            };
            let (mut a, mut b) = (node(), node());
            a.server
                .set_rate_limits(crate::index::limits::RateLimits::off());
            let mut session = join(&mut a.server, [10, 0, 0, 5], 7005);
            let at: SocketAddr = "10.0.0.5:7005".parse().unwrap();
            let SessionState::Ready { peer, .. } = session.state else {
                unreachable!()
            };
            // A universe of 300 files; one hash also under a second name.
            let mut universe = files("u", 300);
            universe.push(FileEntry {
                name: "u 7 again".into(),
                ..universe[7].clone()
            });
            call(
                &mut a.server,
                &mut session,
                RequestBody::Register {
                    files: universe[..200].to_vec(),
                },
            );
            replicate_in_slices(&mut a, "a-1", &mut b, 64);
            // b missed an unregister (deleted by a compaction before b read it): it holds
            // "u 150" still, which a withdrew.
            call(
                &mut a.server,
                &mut session,
                RequestBody::Unregister {
                    hashes: vec![universe[150].hash],
                },
            );
            while a.sent.try_recv().is_ok() {}
            a.server.cluster.as_mut().unwrap().begin_snapshot(peer);
            let mut steps = 0;
            loop {
                a.server.index.post_pending();
                // Between slices, the session registers and withdraws (small requests,
                // answered at once), sometimes a file just restated, sometimes one the walk
                // has not reached, sometimes one withdrawn before.
                for _ in 0..rand(3) {
                    let mut pick: Vec<FileEntry> = (0..1 + rand(4))
                        .map(|_| universe[rand(universe.len() as u64) as usize].clone())
                        .collect();
                    pick.dedup_by(|x, y| x.hash == y.hash);
                    let body = if rand(2) == 0 {
                        RequestBody::Register { files: pick }
                    } else {
                        let hashes = pick.iter().map(|f| f.hash).collect();
                        RequestBody::Unregister { hashes }
                    };
                    call(&mut a.server, &mut session, body);
                }
                a.server.index.post_pending();
                let walked = a.server.poll_cluster_snapshots(1 + rand(40) as usize);
                replicate_in_slices(&mut a, "a-1", &mut b, 1 + rand(50) as usize);
                if walked == 0 {
                    break;
                }
                steps += 1;
            }
            assert!(steps > 5, "{steps} steps");
            assert!(!a.server.cluster().unwrap().has_snapshots());
            // At the snapshot's end b holds exactly what a does, the missed withdrawal
            // included.
            assert_same_holdings(&b.server, &a.server, at, seed);
            // And it stays so after more changes.
            call(
                &mut a.server,
                &mut session,
                RequestBody::Unregister {
                    hashes: vec![universe[7].hash, universe[8].hash],
                },
            );
            replicate_in_slices(&mut a, "a-1", &mut b, 3);
            assert_same_holdings(&b.server, &a.server, at, seed);
        }
    }

    #[test]
    fn a_register_capped_while_a_snapshot_runs_starts_it_again() {
        let (mut a, mut b) = (node(), node());
        a.server
            .set_rate_limits(crate::index::limits::RateLimits::off());
        a.server.limits.max_files_per_peer = 120;
        let mut session = join(&mut a.server, [10, 0, 0, 4], 7004);
        let at: SocketAddr = "10.0.0.4:7004".parse().unwrap();
        let SessionState::Ready { peer, .. } = session.state else {
            unreachable!()
        };
        let body = RequestBody::Register {
            files: files("c", 100),
        };
        call(&mut a.server, &mut session, body);
        replicate_in_slices(&mut a, "a-1", &mut b, 64);
        a.server.cluster.as_mut().unwrap().begin_snapshot(peer);
        let mut snapshots = 0;
        // The Snapshot record, then a slice walked.
        assert_eq!(drive_one(&mut a.server), 1);
        assert_eq!(drive_one(&mut a.server), 64);
        // 30 new files offered, 20 let in.
        let answer = call(
            &mut a.server,
            &mut session,
            RequestBody::Register {
                files: files("d", 30),
            },
        );
        assert!(matches!(
            answer,
            ResponseBody::Registered {
                added: 20,
                rejected: 10,
                ..
            }
        ));
        drive_snapshots(&mut a.server);
        // What a published: a second Snapshot after the capped register.
        let mut kinds = Vec::new();
        while let Ok(Outbound::Publish { record, session }) = a.sent.try_recv() {
            kinds.push(match &record {
                Record::Snapshot { .. } => "snapshot",
                Record::SnapshotEnd => "end",
                Record::Register { .. } => "register",
                _ => "other",
            });
            if matches!(record, Record::Snapshot { .. }) {
                snapshots += 1;
            }
            b.inbox
                .send(Inbound::Record {
                    node: "a-1".into(),
                    session,
                    record,
                })
                .unwrap();
        }
        assert_eq!(snapshots, 2, "{kinds:?}");
        assert_eq!(kinds.last(), Some(&"end"));
        b.inbox.send(Inbound::Rebuilt).unwrap();
        b.server.rebuild_from_cluster().unwrap();
        assert_eq!(holdings_at(&b.server, at), holdings_at(&a.server, at));
        assert_eq!(holdings_at(&a.server, at).len(), 120);
    }

    #[test]
    fn a_snapshot_waits_for_files_staged_by_a_register_published_before_it() {
        let (mut a, mut b) = (node(), node());
        let mut session = join(&mut a.server, [10, 0, 0, 3], 7003);
        let at: SocketAddr = "10.0.0.3:7003".parse().unwrap();
        let SessionState::Ready { peer, .. } = session.state else {
            unreachable!()
        };
        let body = RequestBody::Register {
            files: files("s", 40),
        };
        call(&mut a.server, &mut session, body);
        // Published, answered, not in the tables yet: they would get entry ids later, maybe
        // behind the walk, and no later record would carry them.
        assert!(a.server.index.has_staged(peer));
        a.server.cluster.as_mut().unwrap().begin_snapshot(peer);
        assert_eq!(a.server.poll_cluster_snapshots(64), 0);
        assert!(a.server.cluster().unwrap().has_snapshots());
        drive_snapshots(&mut a.server);
        replicate_in_slices(&mut a, "a-1", &mut b, 5);
        assert_same_holdings(&b.server, &a.server, at, 0);
        assert_eq!(holdings_at(&b.server, at).len(), 40);
    }

    /// One slice of the snapshots under way (of 64 holdings), the staged files posted first.
    fn drive_one(server: &mut IndexServer) -> usize {
        server.index.post_pending();
        server.poll_cluster_snapshots(64)
    }

    #[test]
    fn a_peer_registered_at_one_node_is_answered_by_another_then_leaves_it() {
        let (mut a, mut b) = (node(), node());
        let mut peer = join(&mut a.server, [10, 0, 0, 7], 7007);
        let files = files("song", 3);
        call(
            &mut a.server,
            &mut peer,
            RequestBody::Register {
                files: files.clone(),
            },
        );
        // Open and one register record.
        assert_eq!(replicate(&mut a, "a-1", &mut b), 2);
        let at: SocketAddr = "10.0.0.7:7007".parse().unwrap();
        assert_eq!(holders(&mut b.server, "song 1"), [at]);
        call(
            &mut a.server,
            &mut peer,
            RequestBody::Unregister {
                hashes: vec![files[1].hash],
            },
        );
        // Withdrawing nothing publishes nothing.
        call(
            &mut a.server,
            &mut peer,
            RequestBody::Unregister {
                hashes: vec![FileHash([9; 32])],
            },
        );
        assert_eq!(replicate(&mut a, "a-1", &mut b), 1);
        assert!(holders(&mut b.server, "song 1").is_empty());
        assert_eq!(holders(&mut b.server, "song 2"), [at]);
        a.server.close(peer, &CloseReason::Eof);
        assert_eq!(replicate(&mut a, "a-1", &mut b), 1);
        assert!(holders(&mut b.server, "song 2").is_empty());
        assert_eq!(b.server.index.entry_count(), 0);
        // B's own peers are published by B, not echoed back.
        assert!(b.sent.try_recv().is_err());
    }

    #[test]
    fn a_churning_session_is_compacted_by_a_snapshot_and_another_node_stays_exact() {
        let (mut a, mut b) = (node(), node());
        // Outside a reactor a big register is charged its time, which the rate limits would
        // refuse here (a reactor makes it a job, charged its entries).
        a.server
            .set_rate_limits(crate::index::limits::RateLimits::off());
        let mut peer = join(&mut a.server, [10, 0, 0, 6], 7006);
        let at: SocketAddr = "10.0.0.6:7006".parse().unwrap();
        let kept = files("kept", 10);
        call(
            &mut a.server,
            &mut peer,
            RequestBody::Register {
                files: kept.clone(),
            },
        );
        let mut snapshots = 0;
        for round in 0..40 {
            let churn = files(&format!("churn {round} {}", "x".repeat(40)), 1_000);
            let hashes = churn.iter().map(|f| f.hash).collect();
            let answer = call(
                &mut a.server,
                &mut peer,
                RequestBody::Register { files: churn },
            );
            assert!(
                matches!(answer, ResponseBody::Registered { added: 1_000, .. }),
                "{answer:?}"
            );
            let answer = call(&mut a.server, &mut peer, RequestBody::Unregister { hashes });
            assert!(
                matches!(answer, ResponseBody::Unregistered { removed: 1_000, .. }),
                "{answer:?}"
            );
            drive_snapshots(&mut a.server);
            // What A published, as B reads it (each stored, as the NATS thread tells).
            while let Ok(out) = a.sent.try_recv() {
                let Outbound::Publish { session, record } = out else {
                    continue;
                };
                a.server.cluster().unwrap().counters().handle_done();
                if let Record::Snapshot { addr } = &record {
                    assert_eq!(*addr, at);
                    snapshots += 1;
                }
                let node = "a-1".to_string();
                b.inbox
                    .send(Inbound::Record {
                        node,
                        session,
                        record,
                    })
                    .unwrap();
            }
        }
        // About 90 KB registered and 33 KB withdrawn a round: a snapshot every few rounds
        // (past the floor and twice the live set), each restating the 10 kept files.
        assert!((10..=25).contains(&snapshots), "{snapshots} snapshots");
        b.inbox.send(Inbound::Rebuilt).unwrap();
        b.server.rebuild_from_cluster().unwrap();
        assert_eq!(holders(&mut b.server, "kept 3"), [at]);
        assert!(holders(&mut b.server, "churn 39 3").is_empty());
        assert_eq!(b.server.index.entry_count(), 10);
        assert_eq!(b.server.index.peer_count(), 1);
    }

    #[test]
    fn a_big_register_is_published_once_done_with_what_the_limits_let_in() {
        let (mut a, mut b) = (node(), node());
        a.server.limits.max_files_per_peer = 150;
        let mut peer = join(&mut a.server, [10, 0, 0, 8], 7008);
        // More than a slice, outside a reactor: done in one go.
        let answer = call(
            &mut a.server,
            &mut peer,
            RequestBody::Register {
                files: files("big", 200),
            },
        );
        assert!(matches!(
            answer,
            ResponseBody::Registered {
                added: 150,
                rejected: 50,
                ..
            }
        ));
        replicate(&mut a, "a-1", &mut b);
        assert_eq!(b.server.index.entry_count(), 150);
        // A node death drops them.
        b.inbox
            .send(Inbound::NodeDead { node: "a-1".into() })
            .unwrap();
        b.inbox.send(Inbound::Rebuilt).unwrap();
        b.server.rebuild_from_cluster().unwrap();
        assert_eq!(b.server.index.entry_count(), 0);
        assert_eq!(b.server.index.peer_count(), 0);
    }

    #[test]
    fn a_register_frame_decoded_in_slices_is_published_whole() {
        let (mut a, mut b) = (node(), node());
        let mut peer = join(&mut a.server, [10, 0, 0, 9], 7009);
        let files = files(&"long name ".repeat(4), 1_000);
        let payload = wire::to_payload(&Request {
            id: 1,
            body: RequestBody::Register {
                files: files.clone(),
            },
        });
        assert!(payload.len() > crate::index::server::LAZY_REGISTER_BYTES);
        call(&mut a.server, &mut peer, RequestBody::Register { files });
        replicate(&mut a, "a-1", &mut b);
        assert_eq!(b.server.index.entry_count(), 1_000);
    }
}
