//! Cluster mode: several indexd nodes sharing one live index through NATS JetStream.
//!
//! Each node stays one reactor holding the whole index in memory. It publishes its own
//! peers' changes as [`Record`]s to one JetStream stream, one subject per node and session
//! (`<prefix>.<node>.<session>`), and applies every other node's records to its own
//! [`Index`](crate::index::store::Index) as *remote sessions*: a remote peer is an index
//! peer like a local one (its address, its holdings), so lookups and searches answer it
//! exactly as they answer local peers, at one-node speed.
//!
//! # Parts
//! - [`Record`], [`Cap`]: what goes on the stream (postcard, after a format byte).
//! - [`apply`]: the sans-IO apply path ([`apply::Replica`]): records and node deaths in,
//!   index changes out, a bounded amount of work per call; the per-home-node index of remote
//!   sessions, so that a node's death costs in proportion to its sessions (their holdings go
//!   through the index's sliced departures).
//! - [`link`]: the reactor's side of the NATS thread ([`link::Link`]): the channels, the
//!   local sessions' ids, records built from local changes.
//! - [`reach`]: other nodes' sessions that take pushes, by address (from their
//!   [`Record::Reachability`]): what lookups flag, and where pushes are relayed.
//! - [`relay`]: the push relay between nodes (core NATS request and reply, not the stream).
//! - [`counters`]: what the NATS thread counts for the metrics (records stored, publish
//!   errors, the stream's sequence and what was read of it, nodes alive).
//! - [`nats`]: the NATS thread (the official `async-nats` client on a current-thread tokio
//!   runtime): publishes, consumes, purges, keeps the node's liveness key, watches the
//!   others'. It never touches the index; it hands what it receives to the reactor through a
//!   channel and the reactor's waker.
//!
//! # Invariants
//! - The stream holds the live index: a session's records are deleted when it ends (its
//!   `End` record is kept as a tombstone for [`nats::TOMBSTONE_LINGER`], then deleted too, so
//!   that a node reading a little behind still sees the end), and a dead node's by one
//!   survivor (the lowest node name alive). A live session's subject is compacted once it
//!   holds much more than its live set ([`link::Link::wants_snapshot`]): a snapshot
//!   ([`Record::Snapshot`]) restates it, then the older records are deleted. Records are
//!   deleted by sequence, never by a subject purge (see [`nats`]).
//! - A node's name carries an incarnation (`ID-INCARNATION`, new at every start), so a
//!   restarted node never mixes with what its previous run left: that run is a dead node
//!   like any other.
//! - Records of one session are published in the order the session's changes were applied
//!   locally, and consumed in stream order, so every node applies them in that order.

pub mod apply;
pub mod counters;
pub mod link;
pub mod nats;
pub mod reach;
pub mod relay;

use crate::wire::{FileEntry, FileHash};
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;

/// The first byte of every record's payload: its format.
pub const RECORD_FORMAT: u8 = 1;

/// Largest record payload published (NATS's default `max_payload` is 1 MiB): a bigger
/// register or unregister goes out as several records.
pub const MAX_RECORD_BYTES: usize = 256 * 1024;

/// What a stored record costs the stream beside its payload: the subject
/// (`<prefix>.<node>-<incarnation>.<session>`), the publish's headers and the store's own
/// framing, about.
pub const RECORD_OVERHEAD_BYTES: usize = 96;

/// One change of one local session, as every other node applies it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Record {
    /// The session began: its peer serves downloads at `addr` (the IP its home node saw on
    /// its socket, the port it announced).
    Open {
        /// The peer's download address.
        addr: SocketAddr,
    },
    /// The peer registered `files` (one register request, or a part of a big one).
    Register {
        /// The files, as the peer sent them.
        files: Vec<FileEntry>,
        /// How many new holdings the home node accepted of them.
        cap: Cap,
    },
    /// The peer withdrew these hashes.
    Unregister {
        /// The hashes.
        hashes: Vec<FileHash>,
    },
    /// The session ended: its peer's entries go.
    End,
    /// A snapshot of the session begins (its compaction, see [`nats`]): up to its
    /// [`Record::SnapshotEnd`], `Register`s restate every entry the session holds, between
    /// the session's own changes as they happened (see [`link`]); once the end is stored,
    /// the session's older records are deleted from the stream. A node that knows the
    /// session marks what is restated and withdraws the rest at the end (see [`apply`]), so
    /// no entry disappears meanwhile and none is listed twice; a node that does not (it read
    /// on after the older records, its `Open` among them, were deleted) opens the session
    /// here.
    Snapshot {
        /// The peer's download address, as in [`Record::Open`].
        addr: SocketAddr,
    },
    /// The snapshot begun by the last [`Record::Snapshot`] is complete.
    SnapshotEnd,
    /// The session's reachability is known (its probe ended, or its peer serves no port), or
    /// it asked and will not be probed (the probe queue was full: `reachable`, as its home
    /// node treats it): it takes pushes (its peer asked `Reachability`), and lookups list it
    /// in `firewalled` unless `reachable`, at every node as at its home node. Published when
    /// it becomes known or changes (a session left unprobed, probed at a later ask), and
    /// restated right after each [`Record::Snapshot`] of it (the compaction deletes the first).
    /// (The last variant: records written before it existed decode as they did.)
    Reachability {
        /// Its file server answered the home node's probe.
        reachable: bool,
    },
}

/// How many new holdings a [`Record::Register`] adds. The home node's limits (per peer, per
/// address, index-wide) decide what it accepts; the others apply the same count rather than
/// their own limits, so every node holds the same entries for the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Cap {
    /// Everything was accepted.
    All,
    /// At most this many new holdings (the home node refused the rest).
    AtMost(u32),
    /// A later part of a capped request: what the previous part's cap left.
    Rest,
}

impl Record {
    /// The payload of the record's message.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![RECORD_FORMAT];
        postcard::to_io(self, &mut out).expect("a record always encodes");
        out
    }

    /// Decodes a message's payload; `None` for another format or a malformed payload.
    pub fn decode(payload: &[u8]) -> Option<Record> {
        match payload.split_first() {
            Some((&RECORD_FORMAT, rest)) => postcard::from_bytes(rest).ok(),
            _ => None,
        }
    }

    /// Splits a register of `files` (of which the home node accepted `added` new holdings,
    /// refusing `rejected`) into records of at most about [`MAX_RECORD_BYTES`].
    pub fn registers(files: Vec<FileEntry>, added: u32, rejected: u32) -> Vec<Record> {
        let mut cap = if rejected == 0 {
            Cap::All
        } else {
            Cap::AtMost(added)
        };
        chunks(files, |f| f.name.len() + 48)
            .into_iter()
            .map(|files| {
                let record = Record::Register { files, cap };
                if cap != Cap::All {
                    cap = Cap::Rest;
                }
                record
            })
            .collect()
    }

    /// About how many bytes the record takes on the stream: its payload (as [`chunks`]
    /// counts it) and the message's overhead ([`RECORD_OVERHEAD_BYTES`]).
    pub fn stream_bytes(&self) -> u64 {
        let payload = match self {
            Record::Register { files, .. } => files.iter().map(|f| f.name.len() + 48).sum(),
            Record::Unregister { hashes } => hashes.len() * 33,
            Record::Open { .. } | Record::Snapshot { .. } => 24,
            Record::End | Record::SnapshotEnd | Record::Reachability { .. } => 2,
        };
        (payload + RECORD_OVERHEAD_BYTES) as u64
    }

    /// Splits an unregister of `hashes` into records of at most [`MAX_RECORD_BYTES`].
    pub fn unregisters(hashes: Vec<FileHash>) -> Vec<Record> {
        chunks(hashes, |_| 33)
            .into_iter()
            .map(|hashes| Record::Unregister { hashes })
            .collect()
    }
}

/// Splits `items` into runs of at most about [`MAX_RECORD_BYTES`] by `size` (an upper bound
/// of an item's encoded size); always at least one run.
fn chunks<T>(items: Vec<T>, size: impl Fn(&T) -> usize) -> Vec<Vec<T>> {
    let total: usize = items.iter().map(&size).sum();
    if total <= MAX_RECORD_BYTES {
        return vec![items];
    }
    let mut out = Vec::new();
    let mut run = Vec::new();
    let mut bytes = 0;
    for item in items {
        let s = size(&item);
        if !run.is_empty() && bytes + s > MAX_RECORD_BYTES {
            out.push(std::mem::take(&mut run));
            bytes = 0;
        }
        bytes += s;
        run.push(item);
    }
    out.push(run);
    out
}

/// Whether `name` may be a node id: 1 to 32 ASCII letters, digits, `_` (it becomes a
/// subject token and a key name, with the incarnation after a `-`).
pub fn is_valid_node_id(name: &str) -> bool {
    (1..=32).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Whether `name` is a node name as subjects carry it (`ID-INCARNATION`, or any token of
/// subject-safe characters): what a consumed subject's node token must be.
pub fn is_valid_node_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(n: usize, name_len: usize) -> Vec<FileEntry> {
        (0..n)
            .map(|i| FileEntry {
                hash: FileHash::of(&i.to_le_bytes()),
                size: i as u64,
                name: format!("{i:0name_len$}"),
            })
            .collect()
    }

    #[test]
    fn records_round_trip_and_other_formats_are_refused() {
        let records = [
            Record::Open {
                addr: "[::1]:7000".parse().unwrap(),
            },
            Record::Register {
                files: files(3, 10),
                cap: Cap::AtMost(2),
            },
            Record::Unregister {
                hashes: vec![FileHash([7; 32])],
            },
            Record::End,
            Record::Snapshot {
                addr: "10.0.0.1:7000".parse().unwrap(),
            },
            Record::SnapshotEnd,
            Record::Reachability { reachable: false },
        ];
        for r in records {
            let bytes = r.encode();
            assert_eq!(Record::decode(&bytes), Some(r));
            let mut other = bytes.clone();
            other[0] = RECORD_FORMAT + 1;
            assert_eq!(Record::decode(&other), None);
            assert_eq!(Record::decode(&bytes[..bytes.len() - 1]), None);
        }
        assert_eq!(Record::decode(b""), None);
    }

    #[test]
    fn a_big_register_is_split_under_the_payload_limit_with_its_cap_carried() {
        let all = files(5000, 200);
        let records = Record::registers(all.clone(), 4000, 1000);
        assert!(records.len() > 1);
        let mut back = Vec::new();
        for (i, r) in records.iter().enumerate() {
            assert!(r.encode().len() <= MAX_RECORD_BYTES);
            let Record::Register { files, cap } = r else {
                panic!()
            };
            assert_eq!(*cap, if i == 0 { Cap::AtMost(4000) } else { Cap::Rest });
            back.extend(files.iter().cloned());
        }
        assert_eq!(back, all);
        // Nothing refused: every part is uncapped; a small one is one record.
        let records = Record::registers(files(5000, 200), 5000, 0);
        assert!(records
            .iter()
            .all(|r| matches!(r, Record::Register { cap: Cap::All, .. })));
        assert_eq!(Record::registers(files(3, 5), 3, 0).len(), 1);
        let hashes: Vec<FileHash> = (0..20_000u32)
            .map(|i| FileHash::of(&i.to_le_bytes()))
            .collect();
        let records = Record::unregisters(hashes);
        assert!(records.len() > 1);
        assert!(records.iter().all(|r| r.encode().len() <= MAX_RECORD_BYTES));
    }

    #[test]
    fn node_names_are_subject_tokens() {
        assert!(is_valid_node_id("a1_B"));
        for bad in ["", "a.b", "a*", "a>", "a b", "a-b", &"x".repeat(33)] {
            assert!(!is_valid_node_id(bad), "{bad}");
        }
        assert!(is_valid_node_name("a1-5f3e"));
        assert!(!is_valid_node_name("a.b"));
    }
}
