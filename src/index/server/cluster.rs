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

    /// Compacts local `peer`'s subject on the stream if it asks for it (a snapshot of its
    /// entries, see [`Link::wants_snapshot`]).
    fn cluster_compact(&mut self, peer: PeerId) {
        if let Some(link) = self.cluster.as_mut() {
            if link.wants_snapshot(peer, self.index.entries_of(peer)) {
                let files = self.index.files_of(peer);
                link.publish_snapshot(peer, files);
            }
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

    /// Applies what other nodes sent, within [`super::BACKGROUND_WORK_PER_TURN`], and acts on
    /// the NATS thread's news; asks for another turn while work is left.
    pub(super) fn cluster_turn(&mut self, ctx: &mut Ctx<Session>) {
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
        let had_work = link.has_work();
        let started = Instant::now();
        let mut events = Vec::new();
        while link.has_work() && started.elapsed() < super::BACKGROUND_WORK_PER_TURN {
            link.poll(&mut self.index, super::SLICE_UNITS, &mut events, &mut close);
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
        if had_work {
            // Departures and new words are background work too.
            ctx.request_turn();
        }
    }

    /// The lease timer: checks the lease (in the turn) and sets itself again.
    pub(super) fn cluster_timer(&mut self, ctx: &mut Ctx<Session>) {
        self.cluster_timer_armed = false;
        self.cluster_turn(ctx);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::cluster::apply::Inbound;
    use crate::index::cluster::link::Outbound;
    use crate::index::cluster::Record;
    use crate::index::server::ServerLimits;
    use crate::wire::{self, LookupKey, Request, RequestBody, ResponseBody};
    use std::net::SocketAddr;
    use std::sync::mpsc;
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

    /// A clustered server without NATS: what it publishes, and where to hand it records.
    struct Node {
        server: IndexServer,
        published: UnboundedReceiver<Outbound>,
        inbox: mpsc::Sender<Inbound>,
    }

    fn node() -> Node {
        let (to_nats, published) = unbounded_channel();
        let (inbox, from_nats) = mpsc::channel();
        let mut server = IndexServer::new(ServerLimits::default());
        server.join_cluster(Link::new(to_nats, from_nats));
        Node {
            server,
            published,
            inbox,
        }
    }

    /// Carries what `from` published to `to` as node `name`'s records, and applies them.
    fn replicate(from: &mut Node, name: &str, to: &mut Node) -> usize {
        let mut n = 0;
        while let Ok(out) = from.published.try_recv() {
            if let Outbound::Publish { session, record } = out {
                let node = name.to_string();
                to.inbox
                    .send(Inbound::Record {
                        node,
                        session,
                        record,
                    })
                    .unwrap();
                n += 1;
            }
        }
        to.inbox.send(Inbound::Rebuilt).unwrap();
        to.server.rebuild_from_cluster().unwrap();
        n
    }

    fn call(server: &mut IndexServer, session: &mut Session, body: RequestBody) -> ResponseBody {
        let mut out = Vec::new();
        let payload = wire::to_payload(&Request { id: 1, body });
        server.handle_payload(session, &payload, &mut out);
        let (frames, _) =
            crate::codec::decode_all(&mut crate::codec::Decoder::default(), &out).unwrap();
        wire::decode::<wire::Response>(&frames[0]).unwrap().body
    }

    fn join(server: &mut IndexServer, ip: [u8; 4], port: u16) -> Session {
        let mut s = server.accept(SocketAddr::from((ip, 40000)));
        let hello = RequestBody::Hello {
            version: wire::PROTOCOL_VERSION,
            listen_port: port,
            agent: "t".into(),
        };
        assert!(matches!(
            call(server, &mut s, hello),
            ResponseBody::Welcome { .. }
        ));
        s
    }

    fn holders(server: &mut IndexServer, name: &str) -> Vec<SocketAddr> {
        match server.index.lookup(&LookupKey::Name(name.into())) {
            Ok(files) => files.into_iter().flat_map(|f| f.holders).collect(),
            Err(_) => Vec::new(),
        }
    }

    use super::super::tests::distinct_files as files;

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
        assert!(b.published.try_recv().is_err());
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
            // What A published, as B reads it.
            while let Ok(out) = a.published.try_recv() {
                let Outbound::Publish { session, record } = out else {
                    continue;
                };
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
