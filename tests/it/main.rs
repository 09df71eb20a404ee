//! The integration tests, one binary (as ripgrep's `tests/`): the reactor over loopback, the
//! real `indexd`, real peers, and hostile inputs and faults. One binary links the crate and
//! the helpers once, and its tests run side by side.
//!
//! Run one group with its module path: `cargo test --release --test it -- peer::`.

mod cluster;
mod common;
mod console;
mod downloader;
mod hostile;
mod indexd;
mod limits;
mod ops;
mod peer;
mod push;
mod queue;
mod reactor;
mod swarm;
mod trust;
mod unicode;
mod watch;
mod web;
