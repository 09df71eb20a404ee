//! The index server: the pure index data structure ([`store`]) and the reactor handler that
//! serves peers from it ([`server`]), its rate limits and bans ([`limits`]), and its
//! `--metrics` families ([`metrics`]).
pub mod limits;
pub mod metrics;
pub mod server;
pub mod store;
