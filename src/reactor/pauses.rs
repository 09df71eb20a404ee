//! [`LoopPauses`]: how long the loop works between two waits. While it works, every other
//! connection waits, so the longest of these pauses is what a peer may see added to any
//! answer.
//!
//! Recording costs one histogram increment per turn; the clock is read where the loop reads
//! it anyway (after each wait) and once more before each wait.

use hdrhistogram::Histogram;
use std::time::Duration;

/// Longest pause the histogram tells apart; longer ones are recorded as this (the maximum is
/// kept exactly beside it).
const MAX_TRACKED_US: u64 = 60_000_000;

/// The loop's pauses since it started: the time from a wait's return to the next wait.
#[derive(Debug, Clone)]
pub struct LoopPauses {
    /// In microseconds, 2 significant digits.
    histogram: Histogram<u64>,
    max: Duration,
}

/// A summary of [`LoopPauses`], in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PauseSummary {
    /// Turns measured.
    pub turns: u64,
    /// The longest pause.
    pub max_us: u64,
    /// The 99th percentile.
    pub p99_us: u64,
    /// The 99.9th percentile.
    pub p999_us: u64,
}

impl LoopPauses {
    /// No pauses yet.
    pub fn new() -> LoopPauses {
        LoopPauses {
            histogram: Histogram::new_with_bounds(1, MAX_TRACKED_US, 2)
                .expect("valid histogram bounds"),
            max: Duration::ZERO,
        }
    }

    /// One turn worked for `pause`.
    #[inline]
    pub fn record(&mut self, pause: Duration) {
        self.max = self.max.max(pause);
        let us = (pause.as_micros() as u64).clamp(1, MAX_TRACKED_US);
        self.histogram.saturating_record(us);
    }

    /// Every pause so far, in microseconds (2 significant digits; longer than a minute counts
    /// as a minute), for metrics.
    pub fn histogram(&self) -> &Histogram<u64> {
        &self.histogram
    }

    /// The longest pause so far.
    pub fn max(&self) -> Duration {
        self.max
    }

    /// The counts and percentiles (walks the histogram: not for every turn).
    pub fn summary(&self) -> PauseSummary {
        PauseSummary {
            turns: self.histogram.len(),
            max_us: self.max.as_micros() as u64,
            p99_us: self.histogram.value_at_quantile(0.99),
            p999_us: self.histogram.value_at_quantile(0.999),
        }
    }
}

impl Default for LoopPauses {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_and_percentiles() {
        let mut p = LoopPauses::new();
        assert_eq!(p.summary(), PauseSummary::default());
        for _ in 0..991 {
            p.record(Duration::from_micros(10));
        }
        for _ in 0..8 {
            p.record(Duration::from_micros(5_000));
        }
        p.record(Duration::from_secs(3600));
        let s = p.summary();
        assert_eq!(s.turns, 1000);
        assert_eq!(s.max_us, 3_600_000_000);
        assert_eq!(s.p99_us, 10);
        assert!((4_900..=5_100).contains(&s.p999_us), "{s:?}");
    }
}
