//! Logging for the binaries: the `log` facade, written to stderr by `env_logger` (a timestamp,
//! the level, the module, the message, one line per event). The library only emits through the
//! facade; a binary picks the filter once at start.

/// Installs the stderr logger. The filter is `flag` if given (the `--log` option), else
/// `RUST_LOG`, else `default`; each takes `env_logger`'s syntax: a level (`error`, `warn`,
/// `info`, `debug`, `trace`), or per-module directives such as `warn,p2pshare::index=debug`.
pub fn init(flag: Option<&str>, default: &str) {
    let mut builder = env_logger::Builder::new();
    builder.parse_filters(default);
    if let Some(spec) = flag {
        builder.parse_filters(spec);
    } else if let Ok(spec) = std::env::var("RUST_LOG") {
        builder.parse_filters(&spec);
    }
    builder.format_timestamp_millis();
    // A second init (tests, embedding) keeps the first logger.
    let _ = builder.try_init();
}

/// One log line per interval for an event that may come in floods (a refusal a client can
/// provoke at will): the first is written, the next ones within [`Throttled::every`] are
/// counted, and the next line written says how many were left out. Sans-IO: `now` is passed.
#[derive(Debug)]
pub struct Throttled {
    every: std::time::Duration,
    next: Option<std::time::Instant>,
    left_out: u64,
}

impl Throttled {
    /// At most one line every `every`.
    pub fn new(every: std::time::Duration) -> Throttled {
        Throttled {
            every,
            next: None,
            left_out: 0,
        }
    }

    /// The interval.
    pub fn every(&self) -> std::time::Duration {
        self.every
    }

    /// An event at `now`: `Some(n)` if its line is to be written, `n` being the events left
    /// out since the last line; `None` if it is only counted.
    pub fn admit(&mut self, now: std::time::Instant) -> Option<u64> {
        if self.next.is_some_and(|t| now < t) {
            self.left_out += 1;
            return None;
        }
        self.next = Some(now + self.every);
        Some(std::mem::take(&mut self.left_out))
    }
}

/// The tail of a throttled line: what was left out before it, if anything.
pub fn left_out(n: u64, every: std::time::Duration) -> String {
    match n {
        0 => String::new(),
        n => format!(
            " ({n} more like it left out of the log, at most one line every {} s)",
            every.as_secs()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_flood_is_one_line_per_interval_with_the_count_left_out() {
        let t0 = Instant::now();
        let mut t = Throttled::new(Duration::from_secs(10));
        assert_eq!(t.admit(t0), Some(0));
        for i in 1..=1000 {
            assert_eq!(t.admit(t0 + Duration::from_millis(i)), None);
        }
        assert_eq!(t.admit(t0 + Duration::from_secs(10)), Some(1000));
        assert_eq!(t.admit(t0 + Duration::from_secs(11)), None);
        assert!(left_out(3, t.every()).contains("3 more"));
        assert_eq!(left_out(0, t.every()), "");
    }
}
