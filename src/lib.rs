//! p2pshare: a Napster-style peer-to-peer file-sharing system.
pub mod reactor;
pub mod wire;
