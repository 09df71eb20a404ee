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
