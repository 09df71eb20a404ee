//! What the NATS thread counts for the metrics: atomics it updates as it publishes and reads,
//! which the reactor reads at scrape time (`indexd --metrics`). Relaxed ordering: each value
//! is a figure on its own, never used to synchronise anything.

use std::sync::atomic::{AtomicU64, Ordering};

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

    /// `n` other nodes are believed alive.
    pub fn set_nodes_alive(&self, n: usize) {
        self.nodes_alive.store(n as u64, Ordering::Relaxed);
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
        assert_eq!(s.nodes_alive, 2);
    }
}
