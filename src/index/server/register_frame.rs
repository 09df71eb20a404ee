//! A big `Register` frame, decoded a slice at a time.
//!
//! Decoding a 1 MiB register (20,000 entries, a `String` each) in one piece held indexd's loop
//! for 2–3 ms. A register frame over [`LAZY_REGISTER_BYTES`] is instead split at once into
//! its head (request id, body variant, entry count: a few bytes) and its entries' bytes,
//! which are copied (one `memcpy`) and decoded [`super::SLICE_UNITS`] at a time by the job
//! that applies them (see `slices.rs`), each slice just before it is registered.
//!
//! An entry that does not decode (or bytes left over after the last) is found only when its
//! slice comes: the entries before it are registered by then, and the session gets the same
//! `Malformed` error and close a frame that does not decode at all gets. Its close withdraws
//! everything it registered (soft state), so the only difference is that other sessions may
//! have seen some of its files for a few turns, as they may see any peer's files between its
//! register and its close.

use crate::wire::{self, FileEntry, Request, RequestBody};

/// Register frames of more payload bytes than this are decoded in slices; smaller ones (the
/// common case: a peer's register of a few new files) in one piece as before, which costs
/// them nothing extra.
pub const LAZY_REGISTER_BYTES: usize = 16 * 1024;

/// The entries of a register frame, not decoded yet.
#[derive(Debug)]
pub(super) struct LazyEntries {
    /// The entries' bytes, end to end (postcard), from the first not decoded yet.
    bytes: Vec<u8>,
    /// Where the next entry starts in `bytes`.
    at: usize,
    /// Entries announced and not decoded yet.
    left: u64,
}

/// Why a register frame's entries stopped decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct EntryError(pub(super) String);

/// If `payload` is a `Register` request over [`LAZY_REGISTER_BYTES`]: the request with no
/// files (its id, for the answer and the checks made before any entry), and its entries, to
/// decode with [`LazyEntries::next_slice`]. `None`: decode the payload as usual (any other
/// request, a small register, or a head that does not decode, which the usual decoding then
/// reports).
///
/// The entries' bytes are copied into `spare` (taken; give it back with
/// [`LazyEntries::into_buffer`]), so that a stream of big registers reuses one buffer rather
/// than faulting in fresh pages for each.
pub(super) fn split(payload: &[u8], spare: &mut Vec<u8>) -> Option<(Request, LazyEntries)> {
    if payload.len() <= LAZY_REGISTER_BYTES {
        return None;
    }
    let (id, rest) = postcard::take_from_bytes::<u32>(payload).ok()?;
    let (variant, rest) = postcard::take_from_bytes::<u32>(rest).ok()?;
    if variant != wire::REGISTER_VARIANT {
        return None;
    }
    let (count, rest) = postcard::take_from_bytes::<u64>(rest).ok()?;
    let request = Request {
        id,
        body: RequestBody::Register { files: Vec::new() },
    };
    let mut bytes = std::mem::take(spare);
    bytes.clear();
    bytes.extend_from_slice(rest);
    let entries = LazyEntries {
        bytes,
        at: 0,
        left: count,
    };
    Some((request, entries))
}

impl LazyEntries {
    /// Entries not decoded yet (as the frame announced them; more or fewer make the frame
    /// malformed at its end).
    pub(super) fn left(&self) -> u64 {
        self.left
    }

    /// Whether every entry has been decoded.
    pub(super) fn is_done(&self) -> bool {
        self.left == 0
    }

    /// No entries (what a finished job's entries are swapped for).
    pub(super) fn empty() -> Self {
        LazyEntries {
            bytes: Vec::new(),
            at: 0,
            left: 0,
        }
    }

    /// The buffer of the entries' bytes, for the next [`split`].
    pub(super) fn into_buffer(self) -> Vec<u8> {
        self.bytes
    }

    /// Replaces `out` with the next `n` entries (fewer at the end). An entry that does not
    /// decode, or bytes after the last entry, is an error (the frame is malformed).
    pub(super) fn next_slice(
        &mut self,
        n: usize,
        out: &mut Vec<FileEntry>,
    ) -> Result<(), EntryError> {
        out.clear();
        let take = self.left.min(n as u64);
        for _ in 0..take {
            let rest = &self.bytes[self.at..];
            match postcard::take_from_bytes::<FileEntry>(rest) {
                Ok((entry, after)) => {
                    self.at += rest.len() - after.len();
                    out.push(entry);
                }
                Err(e) => {
                    self.left = 0;
                    self.at = self.bytes.len();
                    return Err(EntryError(e.to_string()));
                }
            }
            self.left -= 1;
        }
        if self.left == 0 {
            let trailing = self.bytes.len() - self.at;
            if trailing > 0 {
                return Err(EntryError(format!("{trailing} trailing bytes")));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::FileHash;

    fn files(n: usize) -> Vec<FileEntry> {
        (0..n)
            .map(|i| FileEntry {
                hash: FileHash::of(format!("lazy {i}").as_bytes()),
                size: i as u64 * 1_000_003,
                name: format!("a name long enough to matter, number {i}.flac"),
            })
            .collect()
    }

    fn payload(id: u32, files: Vec<FileEntry>) -> Vec<u8> {
        wire::to_payload(&Request {
            id,
            body: RequestBody::Register { files },
        })
    }

    #[test]
    fn a_big_register_decodes_in_slices_to_the_same_entries() {
        let all = files(2_000);
        let p = payload(77, all.clone());
        assert!(p.len() > LAZY_REGISTER_BYTES);
        let (head, mut lazy) = split(&p, &mut Vec::new()).expect("a big register");
        assert_eq!(head.id, 77);
        assert_eq!(head.body, RequestBody::Register { files: Vec::new() });
        assert_eq!(lazy.left(), 2_000);
        let mut got = Vec::new();
        let mut slice = Vec::new();
        while !lazy.is_done() {
            lazy.next_slice(64, &mut slice).unwrap();
            assert!(!slice.is_empty() && slice.len() <= 64);
            got.append(&mut slice);
        }
        assert_eq!(got, all);
    }

    #[test]
    fn small_registers_and_other_requests_are_decoded_as_usual() {
        assert!(split(&payload(1, files(10)), &mut Vec::new()).is_none());
        let search = wire::to_payload(&Request {
            id: 3,
            body: RequestBody::Search {
                query: "x".repeat(LAZY_REGISTER_BYTES + 10),
                limit: 10,
                filter: Default::default(),
                after: None,
            },
        });
        assert!(split(&search, &mut Vec::new()).is_none());
    }

    #[test]
    fn a_bad_entry_or_trailing_bytes_are_errors_when_their_slice_comes() {
        let mut p = payload(5, files(1_000));
        p.extend_from_slice(b"junk");
        let (_, mut lazy) = split(&p, &mut Vec::new()).unwrap();
        let mut slice = Vec::new();
        let mut seen = 0;
        let err = loop {
            match lazy.next_slice(64, &mut slice) {
                Ok(()) => seen += slice.len(),
                Err(e) => break e,
            }
        };
        assert_eq!(seen, 1_000 - 1_000 % 64);
        assert_eq!(
            slice.len(),
            1_000 % 64,
            "the last slice decoded before the check"
        );
        assert!(err.0.contains("4 trailing bytes"), "{err:?}");
        assert!(lazy.is_done());

        // A truncated frame: its last entry does not decode.
        let p = payload(5, files(1_000));
        let (_, mut lazy) = split(&p[..p.len() - 3], &mut Vec::new()).unwrap();
        let mut decoded = 0;
        let err = loop {
            match lazy.next_slice(64, &mut slice) {
                Ok(()) => decoded += slice.len(),
                Err(e) => break e,
            }
        };
        assert!(decoded < 1_000 && lazy.is_done(), "{err:?}");

        // A count larger than the entries that follow.
        let mut p = payload(5, files(1_000));
        let mut fake = payload(5, files(0));
        fake.truncate(fake.len() - 1);
        fake.extend_from_slice(&[0xe8, 0x0f]); // varint 2,024
        fake.extend_from_slice(&p.split_off(4));
        let (_, mut lazy) = split(&fake, &mut Vec::new()).unwrap();
        assert_eq!(lazy.left(), 2_024);
        let mut ok = true;
        while !lazy.is_done() {
            ok &= lazy.next_slice(64, &mut slice).is_ok();
        }
        assert!(!ok);
    }
}
