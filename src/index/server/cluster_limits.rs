//! Per-address limits across a cluster's nodes. An address may have sessions at every node,
//! so a limit each node kept for its own sessions alone would give it N times the limit:
//! - `--max-holdings-per-ip` counts the entries of every session at the address, this
//!   node's and (from the replicated records, [`Replica::remote_holdings_at`]) every other
//!   node's, so a register is checked against the cluster's count; exact up to the
//!   replication lag (two nodes taking registers of one address at the same moment each miss
//!   what the other took within it);
//! - the per-address write budgets (registers, pushes, reachability asks) are split over the
//!   live nodes ([`Limiter::set_nodes`](crate::index::limits::Limiter::set_nodes)), N read
//!   from the liveness bucket at each cluster turn.
//!
//! [`Replica::remote_holdings_at`]: crate::index::cluster::apply::Replica::remote_holdings_at

use super::IndexServer;
use std::time::Instant;

impl IndexServer {
    /// Splits the per-address write budgets over the cluster's live nodes as the NATS thread
    /// last saw them (a node alone, or not clustered: whole).
    pub(super) fn share_address_limits(&mut self, now: Instant) {
        let nodes = self.cluster.as_deref().map_or(1, |link| link.nodes_alive());
        self.limiter.set_nodes(nodes, now);
    }
}

#[cfg(test)]
mod tests {
    use crate::index::cluster::apply::Inbound;
    use crate::index::cluster::relay::{RelayAnswer, RelayedPush, RELAY_TIMEOUT};
    use crate::index::limits::RateLimits;
    use crate::index::server::test_node::{apply, call, join, node, replicate};
    use crate::index::server::tests::distinct_files as files;
    use crate::index::server::{IndexServer, ServerLimits, Session};
    use crate::wire::{self, FileHash, RequestBody, ResponseBody};
    use std::net::SocketAddr;
    use std::time::{Duration, Instant};

    /// How many of `files` a register of `s` added.
    fn added(server: &mut IndexServer, s: &mut Session, files: Vec<wire::FileEntry>) -> u32 {
        match call(server, s, RequestBody::Register { files }) {
            ResponseBody::Registered { added, .. } => added,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn an_address_s_holdings_at_other_nodes_count_toward_its_cap_here() {
        let limits = ServerLimits {
            max_holdings_per_address: 30,
            ..ServerLimits::default()
        };
        let (mut a, mut b, mut c) = (node(limits.clone()), node(limits.clone()), node(limits));
        // One host holds 12 entries through B and 8 through C.
        let mut at_b = join(&mut b.server, "10.0.0.1:999", 7001);
        assert_eq!(added(&mut b.server, &mut at_b, files("b", 12)), 12);
        let mut at_c = join(&mut c.server, "10.0.0.1:998", 7002);
        assert_eq!(added(&mut c.server, &mut at_c, files("c", 8)), 8);
        replicate(&mut b, "b-1", &mut a);
        replicate(&mut c, "c-1", &mut a);
        // At A it gets what is left of the cluster's count: 10, not 30.
        let mut at_a = join(&mut a.server, "10.0.0.1:997", 7003);
        assert_eq!(added(&mut a.server, &mut at_a, files("a", 20)), 10);
        assert_eq!(added(&mut a.server, &mut at_a, files("a more", 5)), 0);
        // Another host is not affected.
        let mut other = join(&mut a.server, "10.0.0.2:999", 7004);
        assert_eq!(added(&mut a.server, &mut other, files("o", 20)), 20);
        // B's session withdraws 5: the room comes back at A once A has applied that.
        let hashes = files("b", 5).iter().map(|f| f.hash).collect();
        call(&mut b.server, &mut at_b, RequestBody::Unregister { hashes });
        replicate(&mut b, "b-1", &mut a);
        assert_eq!(added(&mut a.server, &mut at_a, files("a more", 10)), 5);
        // C's session ends: its 8 come back at A.
        c.server.close(at_c, &crate::reactor::CloseReason::Eof);
        replicate(&mut c, "c-1", &mut a);
        assert_eq!(added(&mut a.server, &mut at_a, files("a most", 10)), 8);
        // B dies: its 7 come back too.
        a.inbox
            .send(Inbound::NodeDead { node: "b-1".into() })
            .unwrap();
        apply(&mut a);
        assert_eq!(added(&mut a.server, &mut at_a, files("a last", 10)), 7);
        // And every node's count is the same, B's too once it applies A's records.
        replicate(&mut a, "a-1", &mut b);
        assert_eq!(added(&mut b.server, &mut at_b, files("b more", 10)), 0);
    }

    #[test]
    fn the_per_address_write_budgets_are_split_over_the_live_nodes() {
        let mut a = node(ServerLimits::default());
        let counters = a.server.cluster.as_ref().unwrap().counters();
        let now = Instant::now();
        // Alone: the whole budget.
        a.server.share_address_limits(now);
        assert_eq!(a.server.limiter.nodes(), 1);
        // Three other nodes alive: a quarter of each address's push budget here.
        counters.set_nodes_alive(3);
        a.server.share_address_limits(now);
        assert_eq!(a.server.limiter.nodes(), 4);
        let limits = RateLimits::default();
        let mut holder = join(&mut a.server, "10.0.0.1:999", 0);
        call(&mut a.server, &mut holder, RequestBody::Reachability);
        let push = RelayedPush {
            hash: FileHash::of(b"f"),
            holder: "10.0.0.1:0".parse().unwrap(),
            to: "10.0.0.2:7000".parse::<SocketAddr>().unwrap(),
            nonce: 1,
        };
        let deliver = |server: &mut IndexServer, at: Instant| {
            (0..200)
                .filter(|_| {
                    server.handle_relayed_in(&push, at + RELAY_TIMEOUT, at) == RelayAnswer::Relayed
                })
                .count() as u64
        };
        let quarter = limits.push_address_per_s / 4 * RateLimits::BURST_SECONDS;
        let delivered = deliver(&mut a.server, now);
        assert!(delivered > 0 && delivered <= quarter + 1, "{delivered}");
        // Two of them die: a half from now on, for the address known already too.
        counters.set_nodes_alive(1);
        a.server.share_address_limits(now);
        assert_eq!(a.server.limiter.nodes(), 2);
        let later = now + Duration::from_secs(1);
        let half_per_s = limits.push_address_per_s / 2;
        let delivered = deliver(&mut a.server, later);
        assert!(delivered > limits.push_address_per_s / 4, "{delivered}");
        assert!(delivered <= half_per_s + 1, "{delivered}");
    }
}
