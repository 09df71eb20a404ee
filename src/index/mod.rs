//! The index server: the pure index data structure ([`store`]) and the reactor handler that
//! serves peers from it ([`server`]), its rate limits and bans ([`limits`]), its
//! `--metrics` families ([`metrics`]), cluster mode ([`cluster`]: several nodes sharing one
//! index through NATS JetStream), and the work trace, a debug aid that says what holds the
//! loop ([`worktrace`]).
pub mod cluster;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod store;
pub mod worktrace;
