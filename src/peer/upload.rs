//! The upload machine: another peer's downloader asks for a file by hash; the answer is a
//! header frame and a file range (sent with `sendfile` by the reactor), or an error frame.
//!
//! Each upload connection's state ([`Upload`]) lives in its reactor slot. The decision
//! ([`answer`]) is pure apart from opening the file: it looks the hash up in the share's
//! hash → path table (never a path named by the remote) and checks that the file on disk is
//! still the one that was hashed (size and mtime).
//!
//! When every upload slot is busy, a valid request waits in the core's [`UploadQueue`] (in
//! order, a few per address) and the downloader is told its position; a slot that frees is
//! given to the head of the line.
//!
//! # Invariants
//! - Only registered hashes are served, and only while the file is unchanged; a changed or
//!   unreadable file is reported ([`Answer::Refuse::changed`]) so the peer withdraws it and
//!   hashes it again.
//! - A served range is `offset..size` today; a request for a range with its proof (verified
//!   streaming) would add a length and the outboard bytes to [`Answer::Serve`], nothing else.

use super::share::{self, Share, SharedFile};
use crate::reactor::ConnId;
use crate::wire::{self, ErrorCode, FileHash, TransferRequest, TransferResponse, PROTOCOL_VERSION};
use std::collections::VecDeque;
use std::fs::File;
use std::net::IpAddr;
use std::time::Instant;

/// An upload connection's state, kept in its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Upload {
    /// Waiting for a Get.
    AwaitingGet {
        /// The downloader's address.
        from: IpAddr,
    },
    /// In the upload queue, waiting for a slot.
    Queued {
        /// The downloader's address.
        from: IpAddr,
    },
    /// A file range is queued: (hash, bytes) until the output drains.
    Sending {
        /// What is sent.
        hash: FileHash,
        /// How many bytes of it.
        bytes: u64,
        /// The downloader's address.
        from: IpAddr,
        /// When the current rate window began, and the bytes still unsent then.
        window: (Instant, u64),
    },
}

/// The key per-address limits group by: an IPv4 address, or an IPv6 /64.
pub fn address_key(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u32::from(v4) as u128,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => u32::from(v4) as u128,
            None => (u128::from(v6) & !((1u128 << 64) - 1)) | 1,
        },
    }
}

/// One request waiting for a slot.
#[derive(Debug, Clone)]
struct Waiting {
    conn: ConnId,
    from: IpAddr,
    key: u128,
    /// The Get frame's payload, answered again when a slot frees (the file may have changed).
    request: Vec<u8>,
}

/// The upload queue: requests waiting, in arrival order, for one of `slots` transfers.
#[derive(Debug, Clone)]
pub struct UploadQueue {
    /// Transfers at once.
    pub slots: usize,
    /// Requests waiting at once from one address (IPv4, or IPv6 /64).
    pub per_address: usize,
    waiting: VecDeque<Waiting>,
}

/// What [`UploadQueue::join`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Joined {
    /// In line at this 1-based position.
    At(u32),
    /// This address has `per_address` requests waiting already.
    AddressFull,
}

impl UploadQueue {
    /// An empty queue for `slots` transfers, `per_address` waiting per address.
    pub fn new(slots: usize, per_address: usize) -> UploadQueue {
        UploadQueue {
            slots,
            per_address,
            waiting: VecDeque::new(),
        }
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether no request waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Puts `conn`'s request from `from` at the end of the line.
    pub fn join(&mut self, conn: ConnId, from: IpAddr, request: &[u8]) -> Joined {
        let key = address_key(from);
        if self.waiting.iter().filter(|w| w.key == key).count() >= self.per_address {
            return Joined::AddressFull;
        }
        self.waiting.push_back(Waiting {
            conn,
            from,
            key,
            request: request.to_vec(),
        });
        Joined::At(self.waiting.len() as u32)
    }

    /// `conn` left the line (it closed); whether it was in it.
    pub fn leave(&mut self, conn: ConnId) -> bool {
        let before = self.waiting.len();
        self.waiting.retain(|w| w.conn != conn);
        self.waiting.len() != before
    }

    /// The head of the line, to serve now: its connection, address and request.
    pub fn pop(&mut self) -> Option<(ConnId, IpAddr, Vec<u8>)> {
        self.waiting
            .pop_front()
            .map(|w| (w.conn, w.from, w.request))
    }

    /// Every waiting connection with its 1-based position.
    pub fn positions(&self) -> impl Iterator<Item = (ConnId, u32)> + '_ {
        self.waiting
            .iter()
            .enumerate()
            .map(|(i, w)| (w.conn, i as u32 + 1))
    }
}

/// The frame telling a downloader its place in line.
pub fn queued_frame(position: u32) -> Vec<u8> {
    let mut frame = Vec::new();
    wire::encode_frame(&TransferResponse::Queued { position }, &mut frame);
    frame
}

/// The frame refusing a request whose address already has its share of the queue.
pub fn address_full_frame(per_address: usize) -> Vec<u8> {
    let mut frame = Vec::new();
    wire::encode_frame(
        &TransferResponse::Error {
            code: ErrorCode::Busy,
            message: format!(
                "holder busy, and {per_address} requests from your address already wait in its queue"
            ),
        },
        &mut frame,
    );
    frame
}

/// How a Get is answered.
#[derive(Debug)]
pub enum Answer {
    /// Send `header`, then `len` bytes of `file` from `offset`.
    Serve {
        /// The encoded header frame.
        header: Vec<u8>,
        /// The open file.
        file: File,
        /// First byte sent.
        offset: u64,
        /// Bytes sent.
        len: u64,
        /// The file's hash and display name (for logs and stats).
        hash: FileHash,
        /// The shared name.
        name: String,
    },
    /// Send `frame` (an error), then close.
    Refuse {
        /// The encoded error frame.
        frame: Vec<u8>,
        /// Why, for the close reason.
        message: String,
        /// A shared file that no longer matches its hash.
        changed: Option<SharedFile>,
    },
}

fn refuse(code: ErrorCode, message: String, changed: Option<SharedFile>) -> Answer {
    let mut frame = Vec::new();
    wire::encode_frame(
        &TransferResponse::Error {
            code,
            message: message.clone(),
        },
        &mut frame,
    );
    Answer::Refuse {
        frame,
        message,
        changed,
    }
}

fn version_refusal(v: u16) -> Answer {
    refuse(
        ErrorCode::VersionMismatch,
        format!("protocol version {v} is not supported; this peer speaks {PROTOCOL_VERSION}"),
        None,
    )
}

/// Answers one request frame from a downloader.
pub fn answer(payload: &[u8], share: &Share) -> Answer {
    let req = match wire::decode::<TransferRequest>(payload) {
        Ok(r) => r,
        Err(e) => {
            return match wire::peek_version(payload, false) {
                Some(v) if v != PROTOCOL_VERSION => version_refusal(v),
                _ => refuse(ErrorCode::Malformed, e.to_string(), None),
            }
        }
    };
    let TransferRequest::Get {
        version,
        hash,
        offset,
    } = req;
    if version != PROTOCOL_VERSION {
        return version_refusal(version);
    }
    let Some(file) = share.by_hash(&hash) else {
        return refuse(ErrorCode::NotFound, format!("not sharing {hash}"), None);
    };
    let (handle, meta) = match share::open_regular(&file.path) {
        Ok(x) => x,
        Err(e) => {
            return refuse(
                ErrorCode::Io,
                format!("cannot read the file: {e}"),
                Some(file.clone()),
            )
        }
    };
    if !file.is_unchanged(&meta) {
        return refuse(
            ErrorCode::NotFound,
            "the file changed since it was shared; it is being re-hashed".into(),
            Some(file.clone()),
        );
    }
    if offset > file.size {
        return refuse(
            ErrorCode::Invalid,
            format!("offset {offset} is past the end ({} bytes)", file.size),
            None,
        );
    }
    let mut header = Vec::new();
    wire::encode_frame(
        &TransferResponse::Sending {
            name: file.name.clone(),
            size: file.size,
            offset,
        },
        &mut header,
    );
    Answer::Serve {
        header,
        file: handle,
        offset,
        len: file.size - offset,
        hash,
        name: file.name.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_queue_keeps_order_and_caps_each_address() {
        let mut q = UploadQueue::new(1, 2);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        assert_eq!(q.join(ConnId(1), a, b"r1"), Joined::At(1));
        assert_eq!(q.join(ConnId(2), b, b"r2"), Joined::At(2));
        assert_eq!(q.join(ConnId(3), a, b"r3"), Joined::At(3));
        assert_eq!(q.join(ConnId(4), a, b"r4"), Joined::AddressFull);
        // Leaving moves everyone behind up.
        assert!(q.leave(ConnId(2)));
        assert!(!q.leave(ConnId(2)));
        let places: Vec<_> = q.positions().collect();
        assert_eq!(places, vec![(ConnId(1), 1), (ConnId(3), 2)]);
        assert_eq!(q.pop(), Some((ConnId(1), a, b"r1".to_vec())));
        assert_eq!(q.join(ConnId(5), a, b"r5"), Joined::At(2));
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn addresses_are_grouped_by_ipv4_address_and_ipv6_64() {
        let key = |s: &str| address_key(s.parse().unwrap());
        assert_eq!(key("2001:db8::1"), key("2001:db8::ffff:1"));
        assert_ne!(key("2001:db8::1"), key("2001:db8:0:1::1"));
        assert_eq!(key("::ffff:10.0.0.1"), key("10.0.0.1"));
        assert_ne!(key("10.0.0.1"), key("10.0.0.2"));
    }
}
