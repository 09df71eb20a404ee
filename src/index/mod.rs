//! The index server: the pure index data structure ([`store`]) and the reactor handler that
//! serves peers from it ([`server`]), and its `--metrics` families ([`metrics`]).
pub mod metrics;
pub mod server;
pub mod store;
