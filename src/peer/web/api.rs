//! The JSON the web API answers and its event stream carries: one serde type per answer or
//! event, built from the core's state and the index's answers (never from a remote's claim
//! beyond what the console shows: names go through [`display_name`]).

use crate::peer::names::display_name;
use crate::wire::{FileKind, HeldFile, SearchHit};
use serde::Serialize;

/// The `kind` of a name: the type class of its extension (`audio`, `video`, ...), if any.
pub fn kind_of(name: &str) -> Option<&'static str> {
    let (_, ext) = name.rsplit_once('.')?;
    let ext = ext.to_ascii_lowercase();
    FileKind::ALL
        .into_iter()
        .find(|k| k.extensions().contains(&ext.as_str()))
        .map(FileKind::name)
}

/// An error: what went wrong, in words for a person.
#[derive(Debug, Serialize)]
pub struct ErrorAnswer {
    /// The text.
    pub error: String,
}

/// One search result.
#[derive(Debug, Serialize)]
pub struct Hit {
    /// The name (hidden characters shown escaped).
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// The content hash, 64 hex digits.
    pub hash: String,
    /// Live peers holding it.
    pub holders: u32,
    /// The type class of its extension, if any.
    pub kind: Option<&'static str>,
}

impl From<&SearchHit> for Hit {
    fn from(h: &SearchHit) -> Hit {
        Hit {
            name: display_name(&h.name),
            size: h.size,
            hash: h.hash.to_string(),
            holders: h.holders,
            kind: kind_of(&h.name),
        }
    }
}

/// `POST /api/search`.
#[derive(Debug, Serialize)]
pub struct SearchAnswer {
    /// The hits, best first.
    pub results: Vec<Hit>,
    /// Matches in all: exact if `total_exact`, else a lower bound.
    pub total: u64,
    /// See `total`.
    pub total_exact: bool,
    /// The index stopped early (the hits are the best it examined): narrow the search.
    pub partial: bool,
}

/// One file of a lookup.
#[derive(Debug, Serialize)]
pub struct HeldAnswer {
    /// The name.
    pub name: String,
    /// Bytes (as its holders claim).
    pub size: u64,
    /// The content hash.
    pub hash: String,
    /// Holders listed (file-server addresses).
    pub holders: Vec<String>,
    /// Holders in all.
    pub holder_count: u32,
}

impl From<&HeldFile> for HeldAnswer {
    fn from(f: &HeldFile) -> HeldAnswer {
        HeldAnswer {
            name: display_name(&f.name),
            size: f.size,
            hash: f.hash.to_string(),
            holders: f.holders.iter().map(ToString::to_string).collect(),
            holder_count: f.holder_count,
        }
    }
}

/// `POST /api/lookup`.
#[derive(Debug, Serialize)]
pub struct LookupAnswer {
    /// The files found (by name: the first page; by hash: one per size claimed).
    pub files: Vec<HeldAnswer>,
    /// Files in all.
    pub total: u64,
}

/// `POST /api/get`, `/api/register`, `/api/unregister`: the command queued; its outcome
/// comes on the event stream.
#[derive(Debug, Serialize)]
pub struct QueuedAnswer {
    /// The console command it runs as.
    pub queued: String,
}

/// One shared file.
#[derive(Debug, Serialize)]
pub struct SharedAnswer {
    /// The name.
    pub name: String,
    /// Bytes.
    pub size: u64,
    /// The content hash.
    pub hash: String,
    /// The type class of its extension, if any.
    pub kind: Option<&'static str>,
}

/// `GET /api/files`.
#[derive(Debug, Serialize)]
pub struct FilesAnswer {
    /// The first [`super::MAX_FILES_LISTED`] files.
    pub files: Vec<SharedAnswer>,
    /// Files shared in all.
    pub total: u64,
    /// Their bytes.
    pub total_bytes: u64,
}

/// A download, as `GET /api/status` and the `download` event show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DownloadAnswer {
    /// The content hash.
    pub hash: String,
    /// The name it is saved under.
    pub name: String,
    /// Bytes on disk.
    pub done: u64,
    /// Bytes in the file.
    pub total: u64,
    /// Bytes per second lately (0 until measured).
    pub rate: u64,
    /// Seconds left at that rate, once there is one.
    pub eta_secs: Option<u64>,
    /// `running`, `saved` or `failed`.
    pub state: &'static str,
    /// How it ended, in the console's words (with `saved` and `failed`).
    pub message: Option<String>,
}

/// `GET /api/status` and the `status` event.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatusAnswer {
    /// The index connection in words (the console's `status` line).
    pub index: String,
    /// The session's state: `ready`, `down`, `connecting`, ...
    pub session: &'static str,
    /// The file server's port.
    pub listen_port: u16,
    /// Files shared.
    pub shared_files: u64,
    /// Their bytes.
    pub shared_bytes: u64,
    /// Uploads sending now.
    pub uploads_active: u64,
    /// Upload slots.
    pub upload_slots: usize,
    /// Requests waiting for a slot.
    pub uploads_queued: usize,
    /// Uploads finished.
    pub uploads_done: u64,
    /// Bytes sent by finished uploads.
    pub upload_bytes: u64,
    /// Downloads saved since the start.
    pub downloads_saved: u64,
    /// Downloads failed since the start.
    pub downloads_failed: u64,
    /// The download in progress.
    pub download: Option<DownloadAnswer>,
}

/// The `line` event: what the peer told the person (the console's stdout and stderr).
#[derive(Debug, Serialize)]
pub struct LineEvent<'a> {
    /// `result`, `note` or `error`.
    pub kind: &'static str,
    /// The text.
    pub text: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_come_from_extensions() {
        assert_eq!(kind_of("a.MP3"), Some("audio"));
        assert_eq!(kind_of("movie.mkv"), Some("video"));
        assert_eq!(kind_of("noext"), None);
        assert_eq!(kind_of("x.unknownext"), None);
    }
}
