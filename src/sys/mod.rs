//! The one module with `unsafe`: thin wrappers over the few system calls std does not offer.
//! Each `unsafe` block says why it is sound; each call has a safe fallback or a harmless
//! failure mode. `unsafe_code` is denied everywhere else in the crate.
//!
//! - [`cache`]: a prefetch hint (a posting cursor loads the next block's deltas ahead);
//! - [`io`]: what moves bytes: `sendfile` for the reactor's file ranges, `sync_file_range` to
//!   start a download's writeback early;
//! - [`process`]: process-level setup the binaries and the bench do once: the open-files limit,
//!   SIGXFSZ, SIGINT/SIGTERM through `sigwait`, CPU pinning, and handing freed memory back
//!   after a large scan (`malloc_trim`).
#![allow(unsafe_code)]

pub mod cache;
pub mod io;
pub mod process;
