//! The server's side of the push relay between cluster nodes (see
//! [`crate::index::cluster::relay`]): a push for a holder whose session lives on another node
//! is sent there through the NATS thread and answered when that node answers (or the relay
//! is given up at [`RELAY_DEADLINE`](super::push::RELAY_DEADLINE)); a push another node
//! relays here is checked and delivered as a local one is. Nothing here waits: the answers
//! arrive as [`Inbound`] messages at a later turn.

use super::push::PushRefusal;
use super::{IndexServer, Session};
use crate::index::cluster::apply::Inbound;
use crate::index::cluster::relay::{RelayAnswer, RelayedPush, RELAY_TIMEOUT};
use crate::index::limits::{Counted, SessionBuckets};
use crate::reactor::{Ctx, Verdict};
use crate::wire::{self, ErrorCode, FileHash, Response, ResponseBody};
use std::net::SocketAddr;
use std::time::Instant;

impl IndexServer {
    /// Local `session`'s push request `id` for a holder at `holder` that takes no pushes
    /// here (the requester checked and charged already): sent to the node of a session at
    /// that address that does, answered later; or refused now.
    pub(super) fn relay_push(
        &mut self,
        out: &mut Vec<u8>,
        session: u64,
        id: u32,
        (hash, holder, to, nonce): (FileHash, SocketAddr, SocketAddr, u64),
        now: Instant,
    ) -> Verdict {
        let Some(link) = self.cluster.as_mut() else {
            unreachable!("relayed only in a cluster");
        };
        let Some(node) = link.remote_pushes().node_for(&holder).map(str::to_string) else {
            let why = format!("push: no peer at {holder} takes pushes on any node of the cluster");
            self.error(out, id, ErrorCode::NotFound, why);
            return Verdict::Continue;
        };
        let Some(relay) = self.pushes.begin_relay(session, id, (&node, to), now) else {
            self.pushes.relay_counts.out_refused += 1;
            let body = ResponseBody::RateLimited {
                retry_after_ms: (RELAY_TIMEOUT / 4).as_millis() as u64,
                banned: false,
            };
            wire::encode_frame(&Response { id, body }, out);
            return Verdict::Continue;
        };
        let push = RelayedPush {
            hash,
            holder,
            to,
            nonce,
        };
        // The moment `begin_relay` gives it up.
        let deadline = now + super::push::RELAY_DEADLINE;
        if !link.relay_push(relay, &node, push, deadline) {
            self.pushes.handle_relay_answer(relay);
            self.pushes.relay_counts.out_refused += 1;
            let why = "push: the cluster link is down; try again later";
            self.error(out, id, ErrorCode::Busy, why);
            return Verdict::Continue;
        }
        self.pushes.relay_counts.out += 1;
        log::debug!("push of {hash} to {holder} relayed to node {node}");
        Verdict::Continue
    }

    /// Acts on the relay messages the NATS thread sent (after the cluster's turn).
    pub(super) fn relay_turn(&mut self, ctx: &mut Ctx<Session>) {
        let Some(relays) = self.cluster.as_mut().map(|l| l.take_relays()) else {
            return;
        };
        if relays.is_empty() {
            return;
        }
        let now = ctx.now();
        for inbound in relays {
            match inbound {
                Inbound::PushIn {
                    token,
                    push,
                    deadline,
                } => {
                    let answer = self.handle_relayed_in(&push, deadline, now);
                    if let Some(link) = self.cluster.as_mut() {
                        link.answer_push(token, answer);
                    }
                }
                Inbound::PushAnswer { id, answer } => self.handle_relay_answer(id, answer),
                _ => {}
            }
        }
        self.push_turn(ctx);
    }

    /// Another node's relayed push: refused undelivered past its `deadline` (the requester's
    /// node no longer waits for it: a notice now would be a duplicate of the push asked
    /// again); else the requester's address's push budget here (shared with its own pushes
    /// here, so asking through other nodes gains it nothing), then the checks and budget of
    /// a local push.
    pub(super) fn handle_relayed_in(
        &mut self,
        push: &RelayedPush,
        deadline: Instant,
        now: Instant,
    ) -> RelayAnswer {
        if now >= deadline {
            self.pushes.relay_counts.in_refused += 1;
            log::debug!(
                "push of {} to {} relayed here too late: not delivered",
                push.hash,
                push.holder
            );
            return RelayAnswer::refused(
                ErrorCode::Busy,
                "push: the relay reached the holder's index node after its deadline; try again",
            );
        }
        let mut unmetered = SessionBuckets::unlimited(now);
        let ip = push.to.ip();
        // The requester's address has no session here: its record is swept as those of
        // sessions that left are.
        self.limiter.sweep(now);
        let answer = match self
            .limiter
            .admit_counted(&mut unmetered, ip, Counted::Push, now)
        {
            Err(refusal) => {
                self.pushes.rate_limited += 1;
                RelayAnswer::RateLimited {
                    retry_after_ms: refusal.retry_after.as_millis().max(1) as u64,
                }
            }
            Ok(()) => {
                match self.pushes.handle_relayed_in(
                    push.hash,
                    push.holder,
                    push.to,
                    push.nonce,
                    now,
                ) {
                    Ok(()) => RelayAnswer::Relayed,
                    Err(PushRefusal::RateLimited(wait)) => RelayAnswer::RateLimited {
                        retry_after_ms: wait.as_millis().max(1) as u64,
                    },
                    Err(PushRefusal::Error(code, message)) => {
                        RelayAnswer::Refused { code, message }
                    }
                }
            }
        };
        if answer == RelayAnswer::Relayed {
            self.pushes.relay_counts.in_delivered += 1;
        } else {
            self.pushes.relay_counts.in_refused += 1;
        }
        answer
    }

    /// The answer to relay `relay`: to the requester, if it is still waiting.
    pub(super) fn handle_relay_answer(&mut self, relay: u64, answer: RelayAnswer) {
        let Some((session, id)) = self.pushes.handle_relay_answer(relay) else {
            return;
        };
        let body = match answer {
            RelayAnswer::Relayed => ResponseBody::PushRelayed,
            RelayAnswer::RateLimited { retry_after_ms } => {
                self.pushes.relay_counts.out_refused += 1;
                ResponseBody::RateLimited {
                    retry_after_ms,
                    banned: false,
                }
            }
            RelayAnswer::Refused { code, message } => {
                self.pushes.relay_counts.out_refused += 1;
                self.stats.errors += 1;
                self.metrics.record_error(code);
                ResponseBody::Error { code, message }
            }
        };
        let mut frame = Vec::new();
        wire::encode_frame(&Response { id, body }, &mut frame);
        self.pushes.send_to(session, frame);
    }

    /// Relays past their deadline are given up (the NATS thread did not answer in time).
    pub(super) fn relays_expired(&mut self, ctx: &mut Ctx<Session>) {
        for (session, id) in self.pushes.expired_relays(ctx.now()) {
            self.pushes.relay_counts.out_refused += 1;
            let body = ResponseBody::Error {
                code: ErrorCode::Busy,
                message: "push: the holder's index node did not answer in time; try again".into(),
            };
            let mut frame = Vec::new();
            wire::encode_frame(&Response { id, body }, &mut frame);
            self.pushes.send_to(session, frame);
        }
        // The timer set when a relay began can fire a little before its deadline (the timer
        // counts from the turn's start, the deadline from the moment the push was handled):
        // it is set again for the earliest relay left, so none waits on a later push's timer.
        if let Some(next) = self.pushes.next_relay_deadline() {
            ctx.set_timer(
                next.saturating_duration_since(ctx.now()),
                super::push::PUSH_TIMER,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::cluster::link::Outbound;
    use crate::index::cluster::Record;
    use crate::index::server::test_node::{
        calls as call, join, node as node_with, replicate, Node,
    };
    use crate::index::server::ServerLimits;
    use crate::wire::{FileEntry, LookupKey, RequestBody};
    use std::time::Duration;

    fn node() -> Node {
        node_with(ServerLimits::default())
    }

    fn decode(frame: &[u8]) -> Response {
        let (frames, _) =
            crate::codec::decode_all(&mut crate::codec::Decoder::default(), frame).unwrap();
        wire::decode(&frames[0]).unwrap()
    }

    /// The relays `node` sent its NATS thread.
    fn relays(node: &mut Node) -> Vec<(u64, String, RelayedPush)> {
        let mut out = Vec::new();
        while let Ok(o) = node.sent.try_recv() {
            if let Outbound::Push { id, node, push, .. } = o {
                out.push((id, node, push));
            }
        }
        out
    }

    #[test]
    fn another_node_flags_a_firewalled_holder_and_relays_pushes_to_its_home_node() {
        let (mut a, mut b) = (node(), node());
        let file = FileEntry {
            hash: FileHash::of(b"f"),
            size: 1,
            name: "f".into(),
        };
        // At B: a holder serving no port, taking pushes; and an open holder not probed yet.
        let mut holder = join(&mut b.server, "10.0.0.1:999", 0);
        call(&mut b.server, &mut holder, RequestBody::Reachability);
        let register = RequestBody::Register {
            files: vec![file.clone()],
        };
        call(&mut b.server, &mut holder, register.clone());
        // And one announcing a port its probe found closed.
        let closed: SocketAddr = "10.0.0.3:7001".parse().unwrap();
        let mut shut = join(&mut b.server, "10.0.0.3:999", 7001);
        probed_unreachable(&mut b.server, &mut shut, closed);
        call(&mut b.server, &mut shut, register);
        replicate(&mut b, "b-1", &mut a);
        // At A, a lookup flags both as B does.
        let at: SocketAddr = "10.0.0.1:0".parse().unwrap();
        let mut asker = join(&mut a.server, "10.0.0.2:999", 7000);
        let lookup = RequestBody::Lookup {
            key: LookupKey::Hash(file.hash),
            after: None,
        };
        let ResponseBody::Holders { firewalled, .. } = &call(&mut a.server, &mut asker, lookup)[0]
        else {
            panic!()
        };
        assert_eq!(firewalled, &[at, closed]);
        // A push at A: no answer yet, a relay to b-1 naming the asker's own address.
        let push = |nonce| RequestBody::Push {
            hash: file.hash,
            holder: at,
            nonce,
        };
        assert!(call(&mut a.server, &mut asker, push(5)).is_empty());
        let sent = relays(&mut a);
        assert_eq!(sent.len(), 1);
        let (id, to_node, relayed) = sent[0].clone();
        assert_eq!(to_node, "b-1");
        let want = RelayedPush {
            hash: file.hash,
            holder: at,
            to: "10.0.0.2:7000".parse().unwrap(),
            nonce: 5,
        };
        assert_eq!(relayed, want);
        // B delivers it to the holder's session as a local push, and says so.
        let now = Instant::now();
        assert_eq!(
            b.server.handle_relayed_in(&relayed, far(now), now),
            RelayAnswer::Relayed
        );
        let d = b.server.pushes.take_deliveries();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].0, holder.id);
        assert_eq!(
            decode(&d[0].1).body,
            ResponseBody::PushRequest {
                hash: file.hash,
                to: want.to,
                nonce: 5
            }
        );
        // A answers the asker's request (its id) with B's answer; a second answer of the
        // same relay is dropped.
        a.server.handle_relay_answer(id, RelayAnswer::Relayed);
        a.server.handle_relay_answer(id, RelayAnswer::Relayed);
        let d = a.server.pushes.take_deliveries();
        assert_eq!(d.len(), 1);
        assert_eq!(d[0].0, asker.id);
        let answer = decode(&d[0].1);
        assert_eq!((answer.id, answer.body), (7, ResponseBody::PushRelayed));
        // B's refusal is carried back as an error, and a relay not answered in time is
        // given up with one.
        call(&mut a.server, &mut asker, push(6));
        let (id, ..) = relays(&mut a)[0].clone();
        let gone = RelayAnswer::refused(ErrorCode::NotFound, "push: no peer at ... (it left)");
        a.server.handle_relay_answer(id, gone);
        let answer = decode(&a.server.pushes.take_deliveries()[0].1);
        assert!(matches!(
            answer.body,
            ResponseBody::Error { code: ErrorCode::NotFound, ref message } if message.contains("it left")
        ));
        assert_eq!(a.server.pushes.next_relay_deadline(), None);
        let before = Instant::now();
        call(&mut a.server, &mut asker, push(7));
        assert_eq!(relays(&mut a).len(), 1);
        // The deadline the timer is set again for, while the relay is in flight.
        let deadline = a.server.pushes.next_relay_deadline().expect("in flight");
        assert!(deadline >= before + crate::index::server::push::RELAY_DEADLINE);
        assert_eq!(
            a.server
                .pushes
                .expired_relays(deadline - Duration::from_millis(1)),
            []
        );
        let later = Instant::now() + crate::index::server::push::RELAY_DEADLINE;
        assert_eq!(a.server.pushes.expired_relays(later), [(asker.id, 7)]);
        assert_eq!(a.server.pushes.next_relay_deadline(), None);
        let counts = a.server.push_counts().relay;
        assert_eq!((counts.out, counts.out_refused), (3, 1));
        assert_eq!(b.server.push_counts().relay.in_delivered, 1);
        // The holder leaves B: A relays to it no more.
        b.server.close(holder, &crate::reactor::CloseReason::Eof);
        replicate(&mut b, "b-1", &mut a);
        let remote = a.server.cluster.as_mut().unwrap().remote_pushes();
        assert!(!remote.is_unreachable(&at) && remote.node_for(&at).is_none());
        assert!(matches!(
            call(&mut a.server, &mut asker, push(8))[0],
            ResponseBody::Error {
                code: ErrorCode::NotFound,
                ..
            }
        ));
        assert!(relays(&mut a).is_empty());
        // What B still gets relayed (a late relay) is refused.
        assert!(matches!(
            b.server.handle_relayed_in(&want, far(now), now),
            RelayAnswer::Refused {
                code: ErrorCode::NotFound,
                ..
            }
        ));
    }

    #[test]
    fn relays_in_flight_are_bounded_and_a_relayed_requester_shares_its_address_budget() {
        use crate::index::cluster::relay::RELAYS_IN_FLIGHT_PER_KEY;
        use crate::index::limits::RateLimits;
        let (mut a, mut b) = (node(), node());
        a.server.set_rate_limits(RateLimits::off());
        let mut holder = join(&mut b.server, "10.0.0.1:999", 0);
        call(&mut b.server, &mut holder, RequestBody::Reachability);
        replicate(&mut b, "b-1", &mut a);
        let at: SocketAddr = "10.0.0.1:0".parse().unwrap();
        let mut asker = join(&mut a.server, "10.0.0.2:999", 7000);
        let push = RequestBody::Push {
            hash: FileHash::of(b"f"),
            holder: at,
            nonce: 1,
        };
        // One requester's address to one node: a quarter of the room (the whole room's
        // bound is `Pushes`' own test's).
        for _ in 0..RELAYS_IN_FLIGHT_PER_KEY {
            assert!(call(&mut a.server, &mut asker, push.clone()).is_empty());
        }
        assert!(matches!(
            call(&mut a.server, &mut asker, push.clone())[0],
            ResponseBody::RateLimited { banned: false, .. }
        ));
        assert_eq!(relays(&mut a).len(), RELAYS_IN_FLIGHT_PER_KEY);
        // At B, the requester's address has the push budget it would have there itself
        // (its burst, one in debt), whatever node it asks through.
        let limits = RateLimits::default();
        let relayed = RelayedPush {
            hash: FileHash::of(b"f"),
            holder: at,
            to: "10.0.0.2:7000".parse().unwrap(),
            nonce: 1,
        };
        let now = Instant::now();
        let delivered = (0..1000)
            .filter(|_| b.server.handle_relayed_in(&relayed, far(now), now) == RelayAnswer::Relayed)
            .count() as u64;
        assert!(delivered <= limits.push_address_per_s * RateLimits::BURST_SECONDS + 1);
        assert!(delivered > 0);
        let counts = b.server.push_counts().relay;
        assert_eq!(counts.in_delivered, delivered);
        assert_eq!(counts.in_refused, 1000 - delivered);
    }

    #[test]
    fn a_snapshot_restates_a_session_s_reachability() {
        let (mut a, mut b) = (node(), node());
        let at: SocketAddr = "10.0.0.1:7001".parse().unwrap();
        let mut holder = join(&mut b.server, "10.0.0.1:999", 7001);
        probed_unreachable(&mut b.server, &mut holder, at);
        let SessionStateView(peer) = peer_of(&holder);
        b.server.cluster.as_mut().unwrap().begin_snapshot(peer);
        b.server.index.post_pending();
        while b.server.poll_cluster_snapshots(64) > 0 {}
        // What B published: Open, Reachability, then the snapshot restating it.
        let mut kinds = Vec::new();
        let mut records = Vec::new();
        while let Ok(Outbound::Publish { session, record }) = b.sent.try_recv() {
            kinds.push(match record {
                Record::Open { .. } => "open",
                Record::Reachability { reachable: false } => "unreachable",
                Record::Snapshot { .. } => "snapshot",
                Record::SnapshotEnd => "end",
                _ => "other",
            });
            records.push((session, record));
        }
        assert_eq!(
            kinds,
            ["open", "unreachable", "snapshot", "unreachable", "end"]
        );
        // A node that reads only the snapshot (what came before it deleted) knows it too.
        for (session, record) in records.into_iter().skip(2) {
            let node = "b-1".to_string();
            a.inbox
                .send(Inbound::Record {
                    node,
                    session,
                    record,
                })
                .unwrap();
        }
        a.inbox.send(Inbound::Rebuilt).unwrap();
        a.server.rebuild_from_cluster().unwrap();
        assert_eq!(a.server.firewalled([at].iter()), [at]);
        assert_eq!(
            a.server
                .cluster
                .as_mut()
                .unwrap()
                .remote_pushes()
                .node_for(&at),
            Some("b-1")
        );
    }

    #[test]
    fn a_session_left_unprobed_takes_pushes_relayed_from_other_nodes_too() {
        let (mut a, mut b) = (node(), node());
        let at: SocketAddr = "10.0.0.1:7001".parse().unwrap();
        let mut holder = join(&mut b.server, "10.0.0.1:999", 7001);
        // B's probe queue is full: no answer, no probe; B takes pushes for it, unflagged.
        b.server.pushes.set_probe_queue_full(true);
        assert!(call(&mut b.server, &mut holder, RequestBody::Reachability).is_empty());
        assert_eq!(b.server.pushes.poll_probe(Instant::now()), None);
        b.server.publish_reachability();
        replicate(&mut b, "b-1", &mut a);
        // So does A: a push for it there is relayed to B, and lookups do not flag it.
        assert_eq!(a.server.firewalled([at].iter()), []);
        let remote = a.server.cluster.as_mut().unwrap().remote_pushes();
        assert_eq!(remote.node_for(&at), Some("b-1"));
        // A later ask is probed, and finds it unreachable: A learns that too.
        b.server.pushes.set_probe_queue_full(false);
        probed_unreachable(&mut b.server, &mut holder, at);
        replicate(&mut b, "b-1", &mut a);
        assert_eq!(a.server.firewalled([at].iter()), [at]);
        let remote = a.server.cluster.as_mut().unwrap().remote_pushes();
        assert_eq!(remote.node_for(&at), Some("b-1"));
        assert_eq!(remote.count(), 1);
    }

    /// A relay's deadline well after `now` (the NATS thread's longest).
    fn far(now: Instant) -> Instant {
        now + RELAY_TIMEOUT
    }

    #[test]
    fn a_relay_carries_its_deadline_and_is_not_delivered_past_it() {
        let (mut a, mut b) = (node(), node());
        let mut holder = join(&mut b.server, "10.0.0.1:999", 0);
        call(&mut b.server, &mut holder, RequestBody::Reachability);
        replicate(&mut b, "b-1", &mut a);
        let at: SocketAddr = "10.0.0.1:0".parse().unwrap();
        let mut asker = join(&mut a.server, "10.0.0.2:999", 7000);
        // A hands its NATS thread the moment its reactor gives the relay up.
        let before = Instant::now();
        let push = RequestBody::Push {
            hash: FileHash::of(b"f"),
            holder: at,
            nonce: 1,
        };
        assert!(call(&mut a.server, &mut asker, push).is_empty());
        let mut deadlines = Vec::new();
        while let Ok(out) = a.sent.try_recv() {
            if let Outbound::Push { deadline, .. } = out {
                deadlines.push(deadline);
            }
        }
        let [deadline] = deadlines[..] else {
            panic!("relays sent: {deadlines:?}");
        };
        let given_up = a.server.pushes.next_relay_deadline().unwrap();
        assert_eq!(deadline, given_up);
        assert!(deadline >= before + crate::index::server::push::RELAY_DEADLINE);
        // B: a relay reached past its deadline is refused, not delivered, and counted; one
        // in time is delivered.
        let relayed = RelayedPush {
            hash: FileHash::of(b"f"),
            holder: at,
            to: "10.0.0.2:7000".parse().unwrap(),
            nonce: 1,
        };
        let now = Instant::now();
        for late in [now, now - Duration::from_millis(1)] {
            assert!(matches!(
                b.server.handle_relayed_in(&relayed, late, now),
                RelayAnswer::Refused { code: ErrorCode::Busy, ref message } if message.contains("deadline")
            ));
        }
        assert!(b.server.pushes.take_deliveries().is_empty());
        let counts = b.server.push_counts().relay;
        assert_eq!((counts.in_delivered, counts.in_refused), (0, 2));
        // Not charged to the requester's budget either: the next one in time goes.
        let in_time = now + Duration::from_millis(1);
        assert_eq!(
            b.server.handle_relayed_in(&relayed, in_time, now),
            RelayAnswer::Relayed
        );
        assert_eq!(b.server.pushes.take_deliveries().len(), 1);
        // Through the reactor's inbox as the NATS thread hands it over: a late one is
        // answered refused (the NATS thread answers A with it), not delivered.
        b.inbox
            .send(Inbound::PushIn {
                token: 9,
                push: relayed,
                deadline: now,
            })
            .unwrap();
        let link = b.server.cluster.as_mut().unwrap();
        link.receive();
        for inbound in link.take_relays() {
            let Inbound::PushIn {
                token,
                push,
                deadline,
            } = inbound
            else {
                panic!("not a relay")
            };
            let answer = b.server.handle_relayed_in(&push, deadline, Instant::now());
            assert_eq!(token, 9);
            assert!(matches!(answer, RelayAnswer::Refused { .. }));
        }
        assert!(b.server.pushes.take_deliveries().is_empty());
        assert_eq!(b.server.push_counts().relay.in_refused, 3);
    }

    /// `s` (serving at `at`) asks whether it is reachable; its probe finds it is not.
    fn probed_unreachable(server: &mut IndexServer, s: &mut Session, at: SocketAddr) {
        assert!(call(server, s, RequestBody::Reachability).is_empty());
        let (probed, addr, _) = server.pushes.poll_probe(Instant::now()).unwrap();
        assert_eq!((probed, addr), (s.id, at));
        server.pushes.handle_probe_done(probed, addr, false);
        server.publish_reachability();
    }

    struct SessionStateView(crate::index::store::PeerId);

    fn peer_of(s: &Session) -> SessionStateView {
        match s.state {
            super::super::SessionState::Ready { peer, .. } => SessionStateView(peer),
            _ => panic!("not ready"),
        }
    }
}
