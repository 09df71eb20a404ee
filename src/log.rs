//! Minimal leveled logging to stderr, shared by the binaries.
//!
//! The level comes from a `--log` flag or the `RUST_LOG` environment variable (`error`,
//! `warn`, `info`, `debug`); default `info`. Lines are `LEVEL target: message`, one per event,
//! so they can be grepped.

use std::sync::atomic::{AtomicU8, Ordering};

/// Severity of a log line; lower is more severe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
#[repr(u8)]
pub enum Level {
    /// Something failed and needs a person.
    Error = 0,
    /// Something odd that the process survived.
    Warn = 1,
    /// Lifecycle events: start, stop, peers joining and leaving.
    Info = 2,
    /// Per-request detail.
    Debug = 3,
}

static LEVEL: AtomicU8 = AtomicU8::new(Level::Info as u8);

impl Level {
    /// Parses `error`, `warn`, `info` or `debug` (any case).
    pub fn parse(s: &str) -> Option<Level> {
        match s.trim().to_ascii_lowercase().as_str() {
            "error" => Some(Level::Error),
            "warn" | "warning" => Some(Level::Warn),
            "info" => Some(Level::Info),
            "debug" | "trace" => Some(Level::Debug),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Level::Error => "ERROR",
            Level::Warn => "WARN",
            Level::Info => "INFO",
            Level::Debug => "DEBUG",
        }
    }
}

/// Sets the level from `flag` if given, else from `RUST_LOG`, else `info`.
pub fn init(flag: Option<&str>) {
    let level = flag
        .and_then(Level::parse)
        .or_else(|| {
            std::env::var("RUST_LOG")
                .ok()
                .and_then(|v| Level::parse(&v))
        })
        .unwrap_or(Level::Info);
    LEVEL.store(level as u8, Ordering::Relaxed);
}

/// Whether lines of `level` are printed.
pub fn enabled(level: Level) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

/// Prints one line (use the macros).
pub fn write(level: Level, target: &str, args: std::fmt::Arguments<'_>) {
    eprintln!("{} {target}: {args}", level.name());
}

/// Logs at a level: `log!(Level::Info, "indexd", "listening on {}", addr)`.
#[macro_export]
macro_rules! log {
    ($level:expr, $target:expr, $($arg:tt)+) => {
        if $crate::log::enabled($level) {
            $crate::log::write($level, $target, format_args!($($arg)+));
        }
    };
}
