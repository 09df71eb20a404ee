//! What the NATS thread counts for the metrics: atomics it updates as it publishes and reads,
//! which the reactor reads at scrape time (`indexd --metrics`). Relaxed ordering: each value
//! is a figure on its own, never used to synchronise anything.
//!
//! Also the node's liveness [`Lease`]: when its key was last refreshed, which the reactor
//! checks before it answers anyone (see [`Lease::is_expired`]).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The NATS thread's counts; see the module docs.
#[derive(Debug, Default)]
pub struct Counters {
    /// Records the stream acknowledged (stored).
    published: AtomicU64,
    /// Publish tries that failed (each is tried again until the retry limit).
    publish_errors: AtomicU64,
    /// Records given up after the retry limit (their sessions were ended).
    lost: AtomicU64,
    /// The stream's last sequence, as last seen (acknowledgements, records read).
    stream_sequence: AtomicU64,
    /// The stream sequence of the last record read.
    read_sequence: AtomicU64,
    /// Other nodes believed alive.
    nodes_alive: AtomicU64,
    /// Snapshots of local sessions published (their subjects compacted).
    snapshots: AtomicU64,
    /// Records deleted from the stream (ended sessions', compacted ones', dead nodes').
    deleted: AtomicU64,
    /// Our liveness key's lease.
    pub lease: Lease,
    /// Records the reactor handed over and the stream has not stored (or given up) yet: the
    /// outbound queue, which the reactor bounds ([`super::link::MAX_OUTBOUND_RECORDS`]).
    outbound: AtomicU64,
}

/// When our liveness key was last refreshed, as the reactor checks it: another node declares
/// us dead once it has not seen our key take a new revision for the TTL, by its own clock,
/// from when the refresh reached the stream, which is after we sent it. So a lease counted
/// from the sending of the last refresh that succeeded, and shorter than the TTL, ends
/// before any other node can declare us dead: a node whose NATS thread is stalled stops
/// serving before the others drop its sessions, never after.
#[derive(Debug, Default)]
pub struct Lease {
    /// When the last successful refresh was sent, and how long the lease lasts from then
    /// (none before the join).
    granted: Mutex<Option<(Instant, Duration)>>,
}

impl Lease {
    /// A refresh sent at `sent` succeeded: the lease lasts `length` from then (the NATS
    /// thread; a later `sent` only).
    pub fn renew(&self, sent: Instant, length: Duration) {
        let mut granted = self.granted.lock().expect("never poisoned");
        if !granted.is_some_and(|(at, _)| at >= sent) {
            *granted = Some((sent, length));
        }
    }

    /// The key is gone: the lease ends now (until a refresh sent later succeeds).
    pub fn revoke(&self) {
        let mut granted = self.granted.lock().expect("never poisoned");
        if let Some((_, length)) = granted.as_mut() {
            *length = Duration::ZERO;
        }
    }

    /// Whether the lease ran out at `now` (false before the join: no one is served then).
    pub fn is_expired(&self, now: Instant) -> bool {
        let granted = *self.granted.lock().expect("never poisoned");
        granted.is_some_and(|(at, length)| now.saturating_duration_since(at) >= length)
    }
}

/// The lease a liveness TTL gives: three quarters of it (the key is refreshed every quarter,
/// so two refreshes in a row may fail or be late before the node fences itself).
pub fn lease_length(ttl: Duration) -> Duration {
    ttl * 3 / 4
}

/// A snapshot of [`Counters`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CountersSnapshot {
    /// See [`Counters`].
    pub published: u64,
    /// See [`Counters`].
    pub publish_errors: u64,
    /// See [`Counters`].
    pub lost: u64,
    /// See [`Counters`].
    pub stream_sequence: u64,
    /// See [`Counters`].
    pub read_sequence: u64,
    /// See [`Counters`].
    pub nodes_alive: u64,
    /// See [`Counters`].
    pub snapshots: u64,
    /// See [`Counters`].
    pub deleted: u64,
}

impl Counters {
    /// The stream stored a record at `sequence`.
    pub fn handle_stored(&self, sequence: u64) {
        self.published.fetch_add(1, Ordering::Relaxed);
        self.stream_sequence.fetch_max(sequence, Ordering::Relaxed);
    }

    /// One publish try failed.
    pub fn handle_publish_error(&self) {
        self.publish_errors.fetch_add(1, Ordering::Relaxed);
    }

    /// The reactor handed a record over.
    pub fn handle_queued(&self) {
        self.outbound.fetch_add(1, Ordering::Relaxed);
    }

    /// A record handed over is done with (stored, or given up).
    pub fn handle_done(&self) {
        let _ = self
            .outbound
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(1))
            });
    }

    /// Records handed over and not done with.
    pub fn outbound(&self) -> u64 {
        self.outbound.load(Ordering::Relaxed)
    }

    /// A record was given up.
    pub fn handle_lost(&self) {
        self.lost.fetch_add(1, Ordering::Relaxed);
    }

    /// A record at `sequence` was read, with `pending` more after it.
    pub fn handle_read(&self, sequence: u64, pending: u64) {
        self.read_sequence.fetch_max(sequence, Ordering::Relaxed);
        self.stream_sequence
            .fetch_max(sequence.saturating_add(pending), Ordering::Relaxed);
    }

    /// The stream's info gives `sequence` as its last: what was read off records (each
    /// one's sequence plus its pending count) is replaced, as that count can stay too high
    /// after deletes (nats-server 2.9.10), which showed an apply lag of 1 for good.
    pub fn handle_last_sequence(&self, sequence: u64) {
        self.stream_sequence.store(sequence, Ordering::Relaxed);
    }

    /// A snapshot of a local session was handed over.
    pub fn handle_snapshot(&self) {
        self.snapshots.fetch_add(1, Ordering::Relaxed);
    }

    /// A record was deleted from the stream.
    pub fn handle_deleted(&self) {
        self.deleted.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` other nodes are believed alive.
    pub fn set_nodes_alive(&self, n: usize) {
        self.nodes_alive.store(n as u64, Ordering::Relaxed);
    }

    /// Other nodes believed alive now.
    pub fn nodes_alive(&self) -> u64 {
        self.nodes_alive.load(Ordering::Relaxed)
    }

    /// The values now.
    pub fn snapshot(&self) -> CountersSnapshot {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CountersSnapshot {
            published: get(&self.published),
            publish_errors: get(&self.publish_errors),
            lost: get(&self.lost),
            stream_sequence: get(&self.stream_sequence),
            read_sequence: get(&self.read_sequence),
            nodes_alive: get(&self.nodes_alive),
            snapshots: get(&self.snapshots),
            deleted: get(&self.deleted),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_stream_sequence_is_the_highest_seen() {
        let c = Counters::default();
        c.handle_stored(7);
        c.handle_read(3, 10);
        c.handle_read(5, 0);
        c.handle_publish_error();
        c.handle_lost();
        c.set_nodes_alive(2);
        let s = c.snapshot();
        assert_eq!((s.published, s.publish_errors, s.lost), (1, 1, 1));
        assert_eq!((s.stream_sequence, s.read_sequence), (13, 5));
        // Read off a record whose pending count stays 1 too high: the stream's info corrects it.
        c.handle_read(14, 1);
        assert_eq!(c.snapshot().stream_sequence, 15);
        c.handle_last_sequence(14);
        assert_eq!(c.snapshot().stream_sequence, 14);
        assert_eq!(s.nodes_alive, 2);
    }

    #[test]
    fn the_lease_runs_from_the_last_refresh_sent() {
        let lease = Lease::default();
        let t0 = Instant::now();
        assert!(!lease.is_expired(t0 + Duration::from_secs(100)));
        lease.renew(t0, Duration::from_secs(3));
        assert!(!lease.is_expired(t0 + Duration::from_millis(2999)));
        assert!(lease.is_expired(t0 + Duration::from_secs(3)));
        // An older refresh answered late does not move it back.
        lease.renew(t0 + Duration::from_secs(2), Duration::from_secs(3));
        lease.renew(t0 + Duration::from_secs(1), Duration::from_secs(3));
        assert!(!lease.is_expired(t0 + Duration::from_millis(4999)));
        assert!(lease.is_expired(t0 + Duration::from_secs(5)));
        lease.revoke();
        assert!(lease.is_expired(t0 + Duration::from_secs(2)));
        lease.renew(t0 + Duration::from_secs(3), Duration::from_secs(3));
        assert!(!lease.is_expired(t0 + Duration::from_secs(4)));
        assert_eq!(lease_length(Duration::from_secs(4)), Duration::from_secs(3));
    }
}
