//! The upload machine: another peer's downloader asks for a file by hash; the answer is a
//! header frame and a file range (sent with `sendfile` by the reactor), or an error frame.
//!
//! Each upload connection's state ([`Upload`]) lives in its reactor slot. The decision
//! ([`answer`]) is pure apart from opening the file: it looks the hash up in the share's
//! hash → path table (never a path named by the remote) and checks that the file on disk is
//! still the one that was hashed (size and mtime).
//!
//! # Invariants
//! - Only registered hashes are served, and only while the file is unchanged; a changed or
//!   unreadable file is reported ([`Answer::Refuse::changed`]) so the peer withdraws it and
//!   hashes it again.
//! - A served range is `offset..size` today; a request for a range with its proof (verified
//!   streaming) would add a length and the outboard bytes to [`Answer::Serve`], nothing else.

use super::share::{self, Share, SharedFile};
use crate::wire::{self, ErrorCode, FileHash, TransferRequest, TransferResponse, PROTOCOL_VERSION};
use std::fs::File;

/// An upload connection's state, kept in its slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Upload {
    /// Waiting for a Get.
    #[default]
    AwaitingGet,
    /// A file range is queued: (hash, bytes) until the output drains.
    Sending {
        /// What is sent.
        hash: FileHash,
        /// How many bytes of it.
        bytes: u64,
    },
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
