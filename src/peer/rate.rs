//! The minimum transfer rate of a download from one holder: a sliding window of received
//! bytes ([`RateFloor`]), sans-IO (time is an input). A holder that sends a valid header and
//! then trickles (one byte every few seconds) never trips a "nothing received" stall timer;
//! this floor drops it once a whole window has passed below the rate.
//!
//! # Invariants
//! - The window is measured in [`BUCKETS`] buckets, so "the last window" is exact to one
//!   bucket: bytes older than `window + window / BUCKETS` never count.
//! - A holder is judged only once it has been receiving for a whole window (a slow start, or
//!   a resume near the end, is not a verdict by itself), and only while the file is not
//!   complete: the last window of a small file may hold few bytes.
//! - A floor of 0 bytes/s never drops anyone.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Buckets per window.
pub const BUCKETS: u32 = 10;

/// The floor: at least `min_rate` bytes per second, averaged over the last `window`.
#[derive(Debug, Clone)]
pub struct RateFloor {
    min_rate: u64,
    window: Duration,
    bucket: Duration,
    /// When measuring started (the first check is a window after it).
    since: Instant,
    /// `(bucket start, bytes)`, oldest first; only buckets overlapping the last window.
    buckets: VecDeque<(Instant, u64)>,
}

impl RateFloor {
    /// A floor of `min_rate` bytes/s over `window`, measuring from `now`.
    pub fn new(now: Instant, min_rate: u64, window: Duration) -> RateFloor {
        let window = window.max(Duration::from_millis(BUCKETS as u64));
        RateFloor {
            min_rate,
            window,
            bucket: window / BUCKETS,
            since: now,
            buckets: VecDeque::new(),
        }
    }

    /// The fewest bytes a whole window must hold.
    pub fn min_window_bytes(&self) -> u64 {
        (self.min_rate as u128 * self.window.as_millis() / 1000) as u64
    }

    /// `bytes` arrived at `now`.
    pub fn handle_bytes(&mut self, now: Instant, bytes: u64) {
        match self.buckets.back_mut() {
            Some((start, n)) if now < *start + self.bucket => *n += bytes,
            _ => self.buckets.push_back((now, bytes)),
        }
        self.forget(now);
    }

    fn forget(&mut self, now: Instant) {
        while let Some(&(start, _)) = self.buckets.front() {
            if start + self.bucket + self.window <= now {
                self.buckets.pop_front();
            } else {
                break;
            }
        }
    }

    /// Bytes received in the last window (to one bucket).
    pub fn window_bytes(&mut self, now: Instant) -> u64 {
        self.forget(now);
        self.buckets.iter().map(|&(_, n)| n).sum()
    }

    /// Whether the holder is too slow at `now`: measured for a whole window, and the last
    /// window holds fewer than [`RateFloor::min_window_bytes`].
    pub fn is_below(&mut self, now: Instant) -> bool {
        self.min_rate > 0
            && now >= self.since + self.window
            && self.window_bytes(now) < self.min_window_bytes()
    }

    /// When [`RateFloor::is_below`] should next be asked (once a bucket after measuring
    /// started a window ago), or `None` without a floor.
    pub fn poll_check(&self, now: Instant) -> Option<Instant> {
        if self.min_rate == 0 {
            return None;
        }
        Some((self.since + self.window).max(now + self.bucket))
    }

    /// The floor, for messages.
    pub fn describe(&self) -> String {
        format!(
            "{} B/s over {:.1} s",
            self.min_rate,
            self.window.as_secs_f64()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_trickle_is_below_and_a_steady_stream_is_not() {
        let t0 = Instant::now();
        // 100 B/s over 1 s: 100 bytes per window.
        let mut f = RateFloor::new(t0, 100, 1000 * MS);
        assert_eq!(f.min_window_bytes(), 100);
        // Not judged before a whole window.
        assert!(!f.is_below(t0 + 999 * MS));
        assert!(f.is_below(t0 + 1000 * MS));
        let mut g = RateFloor::new(t0, 100, 1000 * MS);
        // One byte every 100 ms: 10 per window.
        for i in 0..50 {
            g.handle_bytes(t0 + i * 100 * MS, 1);
        }
        assert!(g.is_below(t0 + 5000 * MS));
        // 20 bytes every 100 ms: 200 per window.
        let mut h = RateFloor::new(t0, 100, 1000 * MS);
        for i in 0..50 {
            h.handle_bytes(t0 + i * 100 * MS, 20);
            assert!(!h.is_below(t0 + i * 100 * MS), "{i}");
        }
    }

    #[test]
    fn a_burst_then_silence_falls_below_a_window_later() {
        let t0 = Instant::now();
        let mut f = RateFloor::new(t0, 100, 1000 * MS);
        f.handle_bytes(t0 + 1500 * MS, 1_000_000);
        assert!(!f.is_below(t0 + 2000 * MS));
        assert!(!f.is_below(t0 + 2500 * MS));
        // The burst's bucket is out of the window one bucket after the window passed.
        assert!(f.is_below(t0 + 2600 * MS));
        assert_eq!(f.window_bytes(t0 + 2600 * MS), 0);
    }

    #[test]
    fn no_floor_never_drops_and_never_asks() {
        let t0 = Instant::now();
        let mut f = RateFloor::new(t0, 0, 1000 * MS);
        assert!(!f.is_below(t0 + 100_000 * MS));
        assert_eq!(f.poll_check(t0), None);
    }

    #[test]
    fn checks_are_asked_for_from_a_window_on() {
        let t0 = Instant::now();
        let f = RateFloor::new(t0, 1, 1000 * MS);
        assert_eq!(f.poll_check(t0), Some(t0 + 1000 * MS));
        assert_eq!(f.poll_check(t0 + 5000 * MS), Some(t0 + 5100 * MS));
    }
}
