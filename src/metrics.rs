//! Prometheus text exposition (format 0.0.4) for the `--metrics` endpoints of `indexd` and
//! `peer`. Sans-IO: [`Exposition`] writes families from values the caller reads out of its
//! own state at scrape time, so nothing is counted twice and the hot paths pay no more than
//! the counters they already keep; the reactor serves the text ([`crate::reactor::Ctx::listen_http`]).
//!
//! Written by hand rather than with a metrics crate: those keep their own registries of
//! atomics, while here every value already lives in the single-threaded servers' state and
//! only needs printing. The format rules kept: one `# HELP` and `# TYPE` per family before its
//! samples, counters named `_total`, histograms as cumulative `_bucket{le}` series ending in
//! `+Inf` with `_sum` and `_count`, label values escaped.

use hdrhistogram::Histogram;
use std::fmt::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// The `Content-Type` of the text format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Bucket bounds in seconds for server time per request: 10 µs to 1 s.
pub const REQUEST_BUCKETS_S: &[f64] = &[
    0.00001, 0.000025, 0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05,
    0.1, 0.25, 1.0,
];

/// Bucket bounds in seconds for the loop's pauses: 10 µs to 1 s.
pub const PAUSE_BUCKETS_S: &[f64] = REQUEST_BUCKETS_S;

/// One histogram series: its label value and the recorded values, in units of
/// `seconds_per_unit` seconds (1e-9 for nanoseconds).
pub struct HistogramSeries<'a> {
    /// The value of the family's label (ignored for a family without one).
    pub label: &'a str,
    /// The recorded values.
    pub histogram: &'a Histogram<u64>,
    /// Seconds per recorded unit.
    pub seconds_per_unit: f64,
}

/// Values in seconds counted into a histogram family's buckets as they are recorded, so
/// that a scrape writes a few numbers instead of walking a histogram (eleven hdrhistograms
/// of server times, walked at each scrape, took 0.3 ms of indexd's loop thread). For
/// [`REQUEST_BUCKETS_S`].
#[derive(Clone, Debug, Default)]
pub struct BucketCounts {
    /// `in_bucket[i]`: values over the bound before `REQUEST_BUCKETS_S[i]` and at most it
    /// (not cumulative).
    in_bucket: [u64; REQUEST_BUCKETS_S.len()],
    /// Every value, those over the last bound included.
    count: u64,
    /// The values' sum, in seconds.
    sum_s: f64,
}

impl BucketCounts {
    /// Counts one value of `secs` seconds.
    pub fn record(&mut self, secs: f64) {
        if let Some(i) = REQUEST_BUCKETS_S.iter().position(|le| secs <= *le) {
            self.in_bucket[i] += 1;
        }
        self.count += 1;
        self.sum_s += secs;
    }

    /// Values counted.
    pub fn count(&self) -> u64 {
        self.count
    }
}

/// A scrape's text, built family by family.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Exposition {
        Exposition::default()
    }

    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    /// A gauge: a value that goes up and down.
    pub fn gauge(&mut self, name: &str, help: &str, value: f64) {
        self.header(name, help, "gauge");
        let _ = writeln!(self.out, "{name} {}", number(value));
    }

    /// A counter (its name ends in `_total`).
    pub fn counter(&mut self, name: &str, help: &str, value: u64) {
        debug_assert!(name.ends_with("_total"));
        self.header(name, help, "counter");
        let _ = writeln!(self.out, "{name} {value}");
    }

    /// A counter family with one label, one sample per `(label value, count)`.
    pub fn counters(&mut self, name: &str, help: &str, label: &str, values: &[(&str, u64)]) {
        debug_assert!(name.ends_with("_total"));
        self.header(name, help, "counter");
        for (v, n) in values {
            let _ = writeln!(self.out, "{name}{{{label}=\"{}\"}} {n}", escape_label(v));
        }
    }

    /// A state set: a gauge family with one label, 1 for the states that hold, 0 otherwise.
    pub fn gauge_states(&mut self, name: &str, help: &str, label: &str, states: &[(&str, bool)]) {
        self.header(name, help, "gauge");
        for (v, on) in states {
            let _ = writeln!(
                self.out,
                "{name}{{{label}=\"{}\"}} {}",
                escape_label(v),
                u8::from(*on)
            );
        }
    }

    /// A histogram family in seconds with `buckets` (upper bounds, ascending), one series per
    /// entry of `series`, labelled `label` (or unlabelled with `None` and one series).
    /// `_sum` is the histogram's mean times its count: exact to its 2-3 significant digits.
    pub fn histograms(
        &mut self,
        name: &str,
        help: &str,
        label: Option<&str>,
        buckets: &[f64],
        series: &[HistogramSeries<'_>],
    ) {
        self.header(name, help, "histogram");
        for s in series {
            let (open, sep) = match label {
                Some(l) => (format!("{l}=\"{}\"", escape_label(s.label)), ","),
                None => (String::new(), ""),
            };
            let mut cumulative = vec![0u64; buckets.len()];
            for v in s.histogram.iter_recorded() {
                let secs = v.value_iterated_to() as f64 * s.seconds_per_unit;
                let n = v.count_at_value();
                for (i, le) in buckets.iter().enumerate() {
                    if secs <= *le {
                        cumulative[i] += n;
                    }
                }
            }
            let count = s.histogram.len();
            let sum = s.histogram.mean() * count as f64 * s.seconds_per_unit;
            self.series(name, &open, sep, buckets, &cumulative, count, sum);
        }
    }

    /// A histogram family like [`Exposition::histograms`], from counts kept in its buckets
    /// ([`BucketCounts`], recorded with the same `buckets`): a few numbers a series, where
    /// an hdrhistogram is walked whole. One series per `(label value, counts)`.
    pub fn bucket_histograms(
        &mut self,
        name: &str,
        help: &str,
        label: &str,
        buckets: &[f64],
        series: &[(&str, &BucketCounts)],
    ) {
        self.header(name, help, "histogram");
        for (value, c) in series {
            let open = format!("{label}=\"{}\"", escape_label(value));
            let cumulative: Vec<u64> = c
                .in_bucket
                .iter()
                .scan(0, |sum, n| {
                    *sum += n;
                    Some(*sum)
                })
                .collect();
            debug_assert_eq!(cumulative.len(), buckets.len());
            self.series(name, &open, ",", buckets, &cumulative, c.count, c.sum_s);
        }
    }

    /// One series of a histogram family: its cumulative bucket counts, `_sum` and `_count`.
    #[allow(clippy::too_many_arguments)]
    fn series(
        &mut self,
        name: &str,
        open: &str,
        sep: &str,
        buckets: &[f64],
        cumulative: &[u64],
        count: u64,
        sum: f64,
    ) {
        for (le, n) in buckets.iter().zip(cumulative) {
            let _ = writeln!(
                self.out,
                "{name}_bucket{{{open}{sep}le=\"{}\"}} {n}",
                number(*le)
            );
        }
        let _ = writeln!(self.out, "{name}_bucket{{{open}{sep}le=\"+Inf\"}} {count}");
        let braces = if open.is_empty() {
            String::new()
        } else {
            format!("{{{open}}}")
        };
        let _ = writeln!(self.out, "{name}_sum{braces} {}", number(sum));
        let _ = writeln!(self.out, "{name}_count{braces} {count}");
    }

    /// The reactor loop's pauses (`pauses`, in µs, as [`crate::reactor::LoopPauses`] keeps
    /// them) as the unlabelled histogram family `name`, in seconds.
    pub fn loop_pauses(&mut self, name: &str, help: &str, pauses: &Histogram<u64>) {
        self.histograms(
            name,
            help,
            None,
            PAUSE_BUCKETS_S,
            &[HistogramSeries {
                label: "",
                histogram: pauses,
                seconds_per_unit: 1e-6,
            }],
        );
    }

    /// The standard process families: resident memory and start time.
    pub fn process(&mut self, started: SystemTime) {
        if let Some(rss) = resident_bytes() {
            self.gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                rss as f64,
            );
        }
        let start = started
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64());
        self.gauge(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds.",
            start,
        );
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// The process's resident set size (`VmRSS` of `/proc/self/status`); `None` off Linux.
pub fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

fn number(v: f64) -> String {
    if v.is_finite() {
        format!("{v}")
    } else if v.is_nan() {
        "NaN".into()
    } else if v > 0.0 {
        "+Inf".into()
    } else {
        "-Inf".into()
    }
}

fn escape_help(s: &str) -> String {
    s.replace('\\', "\\\\").replace('\n', "\\n")
}

fn escape_label(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('\n', "\\n")
        .replace('"', "\\\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_counts_give_the_same_series_as_a_histogram_of_the_values() {
        // 5 µs, 30 µs, 300 µs, 2 s (over every bound); none near a bound, where the
        // histogram's 3 digits could tell them apart.
        let values_ns = [5_000u64, 30_000, 300_000, 2_000_000_000];
        let mut counts = BucketCounts::default();
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        for ns in values_ns {
            counts.record(ns as f64 * 1e-9);
            h.record(ns).unwrap();
        }
        let render = |counts: &BucketCounts| {
            let mut e = Exposition::new();
            e.bucket_histograms(
                "x_seconds",
                "Time.",
                "kind",
                REQUEST_BUCKETS_S,
                &[("lookup", counts)],
            );
            e.finish()
        };
        let mut by_histogram = Exposition::new();
        by_histogram.histograms(
            "x_seconds",
            "Time.",
            Some("kind"),
            REQUEST_BUCKETS_S,
            &[HistogramSeries {
                label: "lookup",
                histogram: &h,
                seconds_per_unit: 1e-9,
            }],
        );
        let buckets = |t: &str| -> Vec<String> {
            t.lines()
                .filter(|l| l.contains("_bucket") || l.contains("_count"))
                .map(String::from)
                .collect()
        };
        assert_eq!(buckets(&render(&counts)), buckets(&by_histogram.finish()));
        // A value on a bound is in its bucket (`le`); the sum is exact.
        counts.record(0.00001);
        assert_eq!(counts.count(), 5);
        let text = render(&counts);
        assert!(
            text.contains("x_seconds_bucket{kind=\"lookup\",le=\"0.00001\"} 2\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{kind=\"lookup\",le=\"0.00005\"} 3\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{kind=\"lookup\",le=\"1\"} 4\n"),
            "{text}"
        );
        assert!(
            text.contains("x_seconds_bucket{kind=\"lookup\",le=\"+Inf\"} 5\n"),
            "{text}"
        );
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix("x_seconds_sum{kind=\"lookup\"} "))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 2.000345).abs() < 1e-12, "{sum}");
    }

    #[test]
    fn families_are_well_formed() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 2).unwrap();
        h.record(5_000).unwrap(); // 5 µs
        h.record(300_000).unwrap(); // 300 µs
        h.record(2_000_000_000).unwrap(); // 2 s, over every bucket
        let mut e = Exposition::new();
        e.gauge("x_files", "Files.", 3.0);
        e.counter("x_requests_total", "All.", 7);
        e.counters(
            "x_errors_total",
            "By kind.",
            "kind",
            &[("a\"b", 1), ("c", 0)],
        );
        e.histograms(
            "x_seconds",
            "Time.",
            Some("kind"),
            &[0.00001, 0.001, 1.0],
            &[HistogramSeries {
                label: "search",
                histogram: &h,
                seconds_per_unit: 1e-9,
            }],
        );
        let text = e.finish();
        assert!(text.contains("# TYPE x_files gauge\nx_files 3\n"), "{text}");
        assert!(
            text.contains("x_errors_total{kind=\"a\\\"b\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("x_seconds_bucket{kind=\"search\",le=\"0.00001\"} 1\n"));
        assert!(text.contains("x_seconds_bucket{kind=\"search\",le=\"0.001\"} 2\n"));
        assert!(text.contains("x_seconds_bucket{kind=\"search\",le=\"1\"} 2\n"));
        assert!(text.contains("x_seconds_bucket{kind=\"search\",le=\"+Inf\"} 3\n"));
        assert!(text.contains("x_seconds_count{kind=\"search\"} 3\n"));
        let sum_line = text
            .lines()
            .find(|l| l.starts_with("x_seconds_sum"))
            .unwrap();
        let sum: f64 = sum_line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!((sum - 2.000305).abs() < 0.02, "{sum}");
    }

    #[test]
    fn an_unlabelled_histogram_has_bare_sum_and_count() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 2).unwrap();
        h.record(20).unwrap();
        let mut e = Exposition::new();
        e.histograms(
            "p_seconds",
            "P.",
            None,
            PAUSE_BUCKETS_S,
            &[HistogramSeries {
                label: "",
                histogram: &h,
                seconds_per_unit: 1e-6,
            }],
        );
        let text = e.finish();
        assert!(
            text.contains("p_seconds_bucket{le=\"0.000025\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("p_seconds_count 1\n"), "{text}");
    }

    #[test]
    fn resident_memory_is_read_on_linux() {
        if cfg!(target_os = "linux") {
            assert!(resident_bytes().unwrap() > 0);
        }
    }
}
