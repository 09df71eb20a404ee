//! The reactor layer: the frame codec and the mio event loop.
pub mod codec;
