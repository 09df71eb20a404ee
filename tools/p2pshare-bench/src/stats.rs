//! Latency histograms and what is reported from them.
//!
//! Latencies are recorded in **nanoseconds** with 3 significant digits and reported in
//! **microseconds** (as HdrHistogram tools do with an output scaling ratio): loopback round
//! trips are tens of µs, and whole-µs buckets would make the op/floor ratio jump in steps of
//! several percent.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::fmt::Write as _;
use std::time::Duration;

/// Nanoseconds per reported unit (µs).
pub const NS_PER_US: f64 = 1000.0;

/// The slowest latency a histogram holds (longer ones are clamped to it): one minute.
const MAX_LATENCY_NS: u64 = 60_000_000_000;

/// An empty latency histogram (ns, 3 significant digits).
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_NS, 3).expect("valid histogram bounds")
}

/// Records one latency, clamped into the histogram's range.
pub fn record(hist: &mut Histogram<u64>, elapsed: Duration) {
    let ns = (elapsed.as_nanos() as u64).clamp(1, MAX_LATENCY_NS);
    hist.saturating_record(ns);
}

/// The reported figures of one operation kind (the `ops.<kind>` object of summary.json).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct OpSummary {
    /// Operations completed (error responses included).
    pub count: u64,
    /// Operations answered with an error response.
    pub errors: u64,
    /// Mean latency, µs.
    pub mean_us: f64,
    /// Median latency, µs.
    pub p50_us: f64,
    /// 90th percentile, µs.
    pub p90_us: f64,
    /// 99th percentile, µs.
    pub p99_us: f64,
    /// 99.9th percentile, µs.
    pub p999_us: f64,
    /// Slowest, µs.
    pub max_us: f64,
}

/// Rounds to 3 decimals (ns resolution) so the JSON stays readable.
fn us(ns: f64) -> f64 {
    (ns / NS_PER_US * 1000.0).round() / 1000.0
}

impl OpSummary {
    /// The figures of `hist` (ns) with `errors` error responses among them.
    pub fn of(hist: &Histogram<u64>, errors: u64) -> OpSummary {
        if hist.is_empty() {
            return OpSummary {
                errors,
                ..OpSummary::default()
            };
        }
        let q = |q: f64| us(hist.value_at_quantile(q) as f64);
        OpSummary {
            count: hist.len(),
            errors,
            mean_us: us(hist.mean()),
            p50_us: q(0.5),
            p90_us: q(0.9),
            p99_us: q(0.99),
            p999_us: q(0.999),
            max_us: us(hist.max() as f64),
        }
    }
}

/// One point of a percentile distribution: the quantile reached (0..=1) and the latency at
/// it, µs.
pub fn percentile_curve(hist: &Histogram<u64>) -> Vec<(f64, f64)> {
    hist.iter_quantiles(5)
        .map(|v| {
            (
                v.quantile_iterated_to(),
                v.value_iterated_to() as f64 / NS_PER_US,
            )
        })
        .collect()
}

/// `hist` (ns) in HdrHistogram's percentile-distribution text format (`.hgrm`), values in
/// µs: the output of Java's `outputPercentileDistribution(out, 5, 1000.0)`, which
/// HdrHistogram's plotter reads.
pub fn to_hgrm(hist: &Histogram<u64>) -> String {
    // Decimal places: 3 significant digits of ns shown in µs.
    const DECIMALS: usize = 3;
    let scale = NS_PER_US;
    let mut out = String::new();
    let _ = write!(
        out,
        "{:>12} {:>14} {:>10} {:>14}\n\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    );
    let mut total = 0u64;
    if !hist.is_empty() {
        for v in hist.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let value = v.value_iterated_to() as f64 / scale;
            let q = v.quantile_iterated_to();
            if q < 1.0 {
                let _ = writeln!(
                    out,
                    "{value:>12.DECIMALS$} {q:2.12} {total:>10} {:>14.2}",
                    1.0 / (1.0 - q)
                );
            } else {
                let _ = writeln!(out, "{value:>12.DECIMALS$} {q:2.12} {total:>10}");
            }
        }
    }
    let (mean, stdev, max) = if hist.is_empty() {
        (0.0, 0.0, 0.0)
    } else {
        (
            hist.mean() / scale,
            hist.stdev() / scale,
            hist.max() as f64 / scale,
        )
    };
    let _ = writeln!(
        out,
        "#[Mean    = {mean:>12.DECIMALS$}, StdDeviation   = {stdev:>12.DECIMALS$}]"
    );
    let _ = writeln!(
        out,
        "#[Max     = {max:>12.DECIMALS$}, Total count    = {:>12}]",
        hist.len()
    );
    let _ = writeln!(
        out,
        "#[Buckets = {:>12}, SubBuckets     = {:>12}]",
        hist.buckets(),
        sub_bucket_count(hist.sigfig())
    );
    out
}

/// Sub-buckets per bucket of a histogram with `sigfig` significant digits, as HdrHistogram
/// computes it: the power of two at or above `2 * 10^sigfig`.
fn sub_bucket_count(sigfig: u8) -> u64 {
    (2 * 10u64.pow(u32::from(sigfig))).next_power_of_two()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Histogram<u64> {
        let mut h = new_histogram();
        for i in 1..=1000u64 {
            record(&mut h, Duration::from_nanos(i * 1000));
        }
        h
    }

    #[test]
    fn summary_in_microseconds() {
        let s = OpSummary::of(&sample(), 2);
        assert_eq!(s.count, 1000);
        assert_eq!(s.errors, 2);
        assert!((s.p50_us - 500.0).abs() < 1.0, "{}", s.p50_us);
        assert!((s.p99_us - 990.0).abs() < 1.0, "{}", s.p99_us);
        assert!((s.max_us - 1000.0).abs() < 1.0, "{}", s.max_us);
        assert!((s.mean_us - 500.5).abs() < 1.0, "{}", s.mean_us);
        assert_eq!(OpSummary::of(&new_histogram(), 0).count, 0);
    }

    #[test]
    fn hgrm_format() {
        let text = to_hgrm(&sample());
        let mut lines = text.lines();
        let header = lines.next().unwrap();
        assert_eq!(
            header.split_whitespace().collect::<Vec<_>>(),
            ["Value", "Percentile", "TotalCount", "1/(1-Percentile)"]
        );
        assert_eq!(lines.next(), Some(""));
        let rows: Vec<Vec<&str>> = text
            .lines()
            .skip(2)
            .take_while(|l| !l.starts_with('#'))
            .map(|l| l.split_whitespace().collect())
            .collect();
        assert!(rows.len() > 10);
        // Percentiles rise, counts rise to the total, the last row has three columns.
        let mut last_q = -1.0;
        for r in &rows[..rows.len() - 1] {
            assert_eq!(r.len(), 4);
            let q: f64 = r[1].parse().unwrap();
            assert!(q >= last_q);
            last_q = q;
        }
        let last = rows.last().unwrap();
        assert_eq!(last.len(), 3);
        assert_eq!(last[1], "1.000000000000");
        assert_eq!(last[2], "1000");
        assert!(text.contains("#[Mean    ="));
        assert!(text.contains("Total count    =         1000]"));
        assert!(text.contains("SubBuckets     =         2048]"));
        // First row: the smallest value, 1 µs, at percentile 0.
        assert_eq!(rows[0][0], "1.000");
    }

    #[test]
    fn curve_reaches_one() {
        let c = percentile_curve(&sample());
        assert_eq!(c.last().unwrap().0, 1.0);
        assert!(c.windows(2).all(|w| w[0].1 <= w[1].1));
    }
}
