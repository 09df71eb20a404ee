//! The file server's total upload rate (`peer --max-upload-rate`), sans-IO: a token bucket
//! charged per range served, and the line of range requests waiting for it.
//!
//! A range is sent whole by `sendfile` once it is let through, so the bucket is charged the
//! range's bytes when it starts and may go into debt; while it is in debt (or anyone waits),
//! every new range request waits in one line, in arrival order, and is let through as the
//! debt is paid off. Uploads therefore share the rate fairly, one range each in turn (a
//! downloader pipelining several requests has one of them sent at a time), and the average
//! never exceeds the rate by more than one range (at most 16 MiB, `upload::MAX_RANGE_GROUPS`).
//!
//! # Invariants
//! - A connection has at most one range let through and not yet sent ([`Throttle::is_sending`]),
//!   so its requests are answered in order.
//! - The line is bounded per connection ([`MAX_WAITING_PER_CONN`]); a closed connection's
//!   requests leave it ([`Throttle::forget`]).

use crate::reactor::ConnId;
use std::collections::{HashSet, VecDeque};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Requests one connection may have waiting for the rate at once.
pub const MAX_WAITING_PER_CONN: usize = 64;
/// The bucket holds at most this much of the rate (the burst after an idle time).
const BURST: Duration = Duration::from_millis(100);

/// A request waiting for the rate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiting {
    /// Its connection.
    pub conn: ConnId,
    /// The downloader's address.
    pub from: IpAddr,
    /// The request's payload.
    pub request: Vec<u8>,
}

/// The upload rate limit (see the module docs).
#[derive(Debug)]
pub struct Throttle {
    rate: u64,
    /// Bytes that may be sent now; negative: the debt.
    tokens: f64,
    last: Option<Instant>,
    waiting: VecDeque<Waiting>,
    /// Connections with a range let through and not yet sent.
    sending: HashSet<ConnId>,
}

impl Throttle {
    /// A limit of `rate` bytes per second in all (0: none).
    pub fn new(rate: u64) -> Throttle {
        Throttle {
            rate,
            tokens: 0.0,
            last: None,
            waiting: VecDeque::new(),
            sending: HashSet::new(),
        }
    }

    /// Whether there is a limit.
    pub fn is_on(&self) -> bool {
        self.rate > 0
    }

    fn refill(&mut self, now: Instant) {
        let last = self.last.replace(now).unwrap_or(now);
        let dt = now.saturating_duration_since(last).as_secs_f64();
        let cap = self.rate as f64 * BURST.as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate as f64).min(cap);
    }

    /// Whether a range of `conn` may start now: no debt, nobody waiting before it, and no
    /// range of its own still being sent.
    pub fn admits(&mut self, now: Instant, conn: ConnId) -> bool {
        if !self.is_on() {
            return true;
        }
        self.refill(now);
        self.tokens >= 0.0 && self.waiting.is_empty() && !self.sending.contains(&conn)
    }

    /// A range of `bytes` starts on `conn`.
    pub fn charge(&mut self, conn: ConnId, bytes: u64) {
        if self.is_on() {
            self.tokens -= bytes as f64;
            self.sending.insert(conn);
        }
    }

    /// `conn`'s range was sent (or it closed).
    pub fn handle_sent(&mut self, conn: ConnId) {
        self.sending.remove(&conn);
    }

    /// Whether `conn` has a range let through and not yet sent.
    pub fn is_sending(&self, conn: ConnId) -> bool {
        self.sending.contains(&conn)
    }

    /// Puts a request at the end of the line; false if its connection has
    /// [`MAX_WAITING_PER_CONN`] waiting already.
    pub fn wait(&mut self, conn: ConnId, from: IpAddr, request: &[u8]) -> bool {
        if self.waiting.iter().filter(|w| w.conn == conn).count() >= MAX_WAITING_PER_CONN {
            return false;
        }
        self.waiting.push_back(Waiting {
            conn,
            from,
            request: request.to_vec(),
        });
        true
    }

    /// Whether `conn` has requests waiting (its later ones must wait behind them).
    pub fn has_waiting(&self, conn: ConnId) -> bool {
        self.waiting.iter().any(|w| w.conn == conn)
    }

    /// The next request to let through now, if the debt is paid: the first in line whose
    /// connection has no range being sent.
    pub fn poll_ready(&mut self, now: Instant) -> Option<Waiting> {
        if !self.is_on() {
            return self.waiting.pop_front();
        }
        self.refill(now);
        if self.tokens < 0.0 {
            return None;
        }
        let i = self
            .waiting
            .iter()
            .position(|w| !self.sending.contains(&w.conn))?;
        self.waiting.remove(i)
    }

    /// When [`Throttle::poll_ready`] may next give something (while requests wait).
    pub fn poll_deadline(&self) -> Option<Instant> {
        // A connection's range waits for its previous one to be sent (`handle_sent`), not
        // for time: with only those waiting, no time will let anything through.
        if !self.is_on() || !self.waiting.iter().any(|w| !self.sending.contains(&w.conn)) {
            return None;
        }
        let debt = (-self.tokens).max(0.0);
        Some(self.last? + Duration::from_secs_f64(debt / self.rate as f64))
    }

    /// `conn` closed: its requests leave the line.
    pub fn forget(&mut self, conn: ConnId) {
        self.waiting.retain(|w| w.conn != conn);
        self.sending.remove(&conn);
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether no request waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

/// Parses a rate: bytes per second, with an optional suffix `K`, `M` or `G` (powers of 1000,
/// as link speeds are given; `50M` is 50,000,000 B/s), optionally followed by `B/s` or `/s`.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t
        .strip_suffix("B/s")
        .or_else(|| t.strip_suffix("/s"))
        .unwrap_or(t);
    let (digits, mult) = match t.chars().last() {
        Some('k' | 'K') => (&t[..t.len() - 1], 1_000),
        Some('m' | 'M') => (&t[..t.len() - 1], 1_000_000),
        Some('g' | 'G') => (&t[..t.len() - 1], 1_000_000_000),
        _ => (t, 1),
    };
    digits
        .trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{text:?} is not a rate (bytes per second, e.g. 50M)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_share_the_rate_in_turn_and_in_order_per_connection() {
        let t0 = Instant::now();
        let mut t = Throttle::new(1_000_000);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let (a, b) = (ConnId(1), ConnId(2));
        // The first range goes at once (no debt yet) and puts the bucket 1 s in debt.
        assert!(t.admits(t0, a));
        t.charge(a, 1_000_000);
        // Everyone waits now, in one line.
        assert!(!t.admits(t0, b));
        assert!(t.wait(b, ip, b"b1"));
        assert!(t.wait(a, ip, b"a2"));
        assert!(t.wait(b, ip, b"b2"));
        assert_eq!(t.poll_ready(t0), None);
        let due = t.poll_deadline().unwrap();
        assert_eq!(due, t0 + Duration::from_secs(1));
        // Paid off: b's first; then a's (its first range is sent by now), then b's second.
        let next = t.poll_ready(due).unwrap();
        assert_eq!((next.conn, next.request.as_slice()), (b, &b"b1"[..]));
        t.charge(b, 500_000);
        assert_eq!(t.poll_ready(due), None, "in debt again");
        let later = due + Duration::from_millis(500);
        // a's first range is still being sent: its next waits; b is sending too.
        assert_eq!(t.poll_ready(later), None);
        t.handle_sent(a);
        let next = t.poll_ready(later).unwrap();
        assert_eq!((next.conn, next.request.as_slice()), (a, &b"a2"[..]));
        t.forget(b);
        assert!(t.is_empty());
    }

    /// With only the sending connection's next ranges waiting, nothing is due at any time
    /// (they go when its range is sent): a deadline then made the peer's timer fire for
    /// "now" again and again, and the holder spun without serving anyone.
    #[test]
    fn ranges_waiting_behind_their_own_connection_set_no_deadline() {
        let t0 = Instant::now();
        let mut t = Throttle::new(1_000_000);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let (a, b) = (ConnId(1), ConnId(2));
        assert!(t.admits(t0, a));
        t.charge(a, 1_000);
        assert!(t.wait(a, ip, b"a2"));
        // The debt (1 ms) is paid long before a's range is sent.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(t.poll_ready(later), None);
        assert_eq!(t.poll_deadline(), None);
        // Another connection waiting is due as soon as the debt allows.
        assert!(t.wait(b, ip, b"b1"));
        assert_eq!(t.poll_deadline(), Some(later));
        assert_eq!(t.poll_ready(later).map(|w| w.conn), Some(b));
        // a's range sent: its next one goes.
        t.handle_sent(a);
        assert_eq!(
            t.poll_ready(later + Duration::from_secs(1)).map(|w| w.conn),
            Some(a)
        );
    }

    #[test]
    fn no_limit_admits_everything_and_the_line_is_bounded() {
        let t0 = Instant::now();
        let mut t = Throttle::new(0);
        assert!(t.admits(t0, ConnId(1)));
        t.charge(ConnId(1), u64::MAX);
        assert!(t.admits(t0, ConnId(1)));
        let mut t = Throttle::new(10);
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        for _ in 0..MAX_WAITING_PER_CONN {
            assert!(t.wait(ConnId(3), ip, b"r"));
        }
        assert!(!t.wait(ConnId(3), ip, b"r"));
    }

    #[test]
    fn rates_parse_with_decimal_suffixes() {
        assert_eq!(parse_rate("1024"), Ok(1024));
        assert_eq!(parse_rate("50M"), Ok(50_000_000));
        assert_eq!(parse_rate("2k"), Ok(2_000));
        assert_eq!(parse_rate("1G"), Ok(1_000_000_000));
        assert_eq!(parse_rate("50MB/s"), Ok(50_000_000));
        assert!(parse_rate("fast").is_err());
        assert!(parse_rate("99999999999G").is_err());
        assert!(parse_rate("").is_err());
    }
}
