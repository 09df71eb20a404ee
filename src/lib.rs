//! p2pshare: a Napster-style peer-to-peer file-sharing system.
pub mod bench;
pub mod reactor;
pub mod wire;
