//! A clustered server without NATS, for the unit tests of the server's cluster code
//! (`cluster.rs`, `cluster_limits.rs`, `relay.rs`): what it sends its NATS thread, and the
//! inbox its records come in by.

use super::{IndexServer, ServerLimits, Session};
use crate::index::cluster::apply::Inbound;
use crate::index::cluster::link::{Link, Outbound};
use crate::wire::{self, Request, RequestBody, Response, ResponseBody};
use std::sync::mpsc;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

/// A clustered server and its two ends towards the (absent) NATS thread.
pub(super) struct Node {
    pub server: IndexServer,
    /// What the server handed its NATS thread (records to publish, relays).
    pub sent: UnboundedReceiver<Outbound>,
    /// Where records of other nodes are handed to it.
    pub inbox: mpsc::Sender<Inbound>,
}

/// A server with `limits` in a cluster of its own.
pub(super) fn node(limits: ServerLimits) -> Node {
    let (to_nats, sent) = unbounded_channel();
    let (inbox, from_nats) = mpsc::channel();
    let mut server = IndexServer::new(limits);
    server.join_cluster(Link::new(to_nats, from_nats));
    Node {
        server,
        sent,
        inbox,
    }
}

/// Hands what `from` published to `to`'s inbox as node `name`'s records, calling `each`
/// for every record; returns how many (other things `from` sent are dropped).
pub(super) fn carry(from: &mut Node, name: &str, to: &Node, mut each: impl FnMut()) -> usize {
    let mut n = 0;
    while let Ok(out) = from.sent.try_recv() {
        if let Outbound::Publish { session, record } = out {
            each();
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
    n
}

/// Carries what `from` published to `to` as node `name`'s records, and applies them (their
/// departures included); returns how many.
pub(super) fn replicate(from: &mut Node, name: &str, to: &mut Node) -> usize {
    let n = carry(from, name, to, || {});
    apply(to);
    n
}

/// Applies what `to`'s inbox holds, to the end (its departures included).
pub(super) fn apply(to: &mut Node) {
    to.inbox.send(Inbound::Rebuilt).unwrap();
    to.server.rebuild_from_cluster().unwrap();
}

/// Every answer to one request (id 7) on `session`.
pub(super) fn calls(
    server: &mut IndexServer,
    session: &mut Session,
    body: RequestBody,
) -> Vec<ResponseBody> {
    let mut out = Vec::new();
    let payload = wire::to_payload(&Request { id: 7, body });
    server.handle_payload(session, &payload, &mut out);
    let (frames, _) =
        crate::codec::decode_all(&mut crate::codec::Decoder::default(), &out).unwrap();
    frames
        .iter()
        .map(|f| wire::decode::<Response>(f).unwrap().body)
        .collect()
}

/// The (first) answer to one request (id 7) on `session`.
pub(super) fn call(
    server: &mut IndexServer,
    session: &mut Session,
    body: RequestBody,
) -> ResponseBody {
    calls(server, session, body).swap_remove(0)
}

/// A session from `remote` ("IP:PORT") welcomed, its peer listening on `port`.
pub(super) fn join(server: &mut IndexServer, remote: &str, port: u16) -> Session {
    let mut s = server.accept(remote.parse().unwrap());
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
