//! The index server: the pure index data structure ([`store`]) and the reactor handler that
//! serves peers from it ([`server`]).
pub mod limits;
pub mod server;
pub mod store;
