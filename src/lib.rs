//! p2pshare: a Napster-style peer-to-peer file-sharing system: a central index server
//! (`indexd`) that knows which live peer shares which file, and peers (`peer`) that share a
//! directory, search the index and download from each other. See README.md and
//! docs/LIFECYCLE.md.
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod codec;
pub mod index;
pub mod logging;
pub mod metrics;
pub mod peer;
pub mod reactor;
pub mod sys;
pub mod wire;
