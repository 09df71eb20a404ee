//! Other nodes' sessions that take pushes (sans-IO): what a lookup here lists in
//! `firewalled` for them, and where a push to one of them is relayed (see
//! [`relay`](super::relay)).
//!
//! A remote session enters at its [`Record::Reachability`](super::Record::Reachability) (its
//! home node's probe ended, or its peer serves no port) and leaves with its session (its `End`,
//! its node's death, or this node's fence). Kept by address, as the home node keeps its own
//! sessions: several sessions at one address (behind one NAT) are each counted.

use hashbrown::HashMap;
use std::net::SocketAddr;

/// Remote sessions that take pushes, by address; see the module docs.
#[derive(Debug, Default)]
pub struct RemotePushes {
    /// The home node of each session that takes pushes, by the session's address (one name
    /// per session; taken in turn by [`RemotePushes::node_for`]).
    takers: HashMap<SocketAddr, Vec<String>>,
    /// Sessions found unreachable, by address.
    unreachable: HashMap<SocketAddr, u32>,
}

impl RemotePushes {
    /// A session of `node` at `addr` takes pushes, and is `reachable` or not.
    pub fn handle_known(&mut self, node: &str, addr: SocketAddr, reachable: bool) {
        self.takers.entry(addr).or_default().push(node.to_string());
        if !reachable {
            *self.unreachable.entry(addr).or_insert(0) += 1;
        }
    }

    /// A session of `node` at `addr` that took pushes (and was `reachable` or not) ended.
    pub fn handle_gone(&mut self, node: &str, addr: SocketAddr, reachable: bool) {
        if let Some(nodes) = self.takers.get_mut(&addr) {
            if let Some(i) = nodes.iter().position(|n| n == node) {
                nodes.swap_remove(i);
            }
            if nodes.is_empty() {
                self.takers.remove(&addr);
            }
        }
        if !reachable {
            if let Some(n) = self.unreachable.get_mut(&addr) {
                *n -= 1;
                if *n == 0 {
                    self.unreachable.remove(&addr);
                }
            }
        }
    }

    /// Every remote session went (this node was fenced).
    pub fn clear(&mut self) {
        self.takers.clear();
        self.unreachable.clear();
    }

    /// Whether a remote session at `addr` was found unreachable.
    pub fn is_unreachable(&self, addr: &SocketAddr) -> bool {
        self.unreachable.contains_key(addr)
    }

    /// The home node of a remote session at `addr` that takes pushes, if any: each in turn
    /// when there are several.
    pub fn node_for(&mut self, addr: &SocketAddr) -> Option<&str> {
        let nodes = self.takers.get_mut(addr)?;
        nodes.rotate_left(1);
        nodes.last().map(String::as_str)
    }

    /// Remote sessions that take pushes.
    pub fn count(&self) -> usize {
        self.takers.values().map(Vec::len).sum()
    }
}
