//! The index server: the pure index data structure ([`store`]) and the reactor handler that
//! serves peers from it ([`server`]), its rate limits and bans ([`limits`]), and its
//! `--metrics` families ([`metrics`]), and cluster mode ([`cluster`]: several nodes sharing
//! one index through NATS JetStream).
pub mod cluster;
pub mod limits;
pub mod metrics;
pub mod server;
pub mod store;
