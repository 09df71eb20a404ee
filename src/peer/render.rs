//! How each [`Line`] for the person is written: as text for people, or as one JSON object
//! per line for programs (`peer --json`). Pure functions of the line and a [`Style`]; the
//! writer thread (`output`) calls them, so rendering costs the reactor nothing.
//!
//! # Invariants
//! - Every kind of line has a text form and a JSON form: [`text()`] and [`json()`] each `match`
//!   on [`Line`] with no wildcard arm, so a new kind of line does not compile until both say
//!   how it is written.
//! - The text written to a pipe or file (`Style::human` false) is the machine-stable format
//!   README documents, byte for byte; human units, column headers and shortened hashes appear
//!   only on a terminal.
//! - JSON field names are stable (README lists them; the web page's API uses the same): every
//!   object has a `type`; sizes are bytes (integers), hashes 64 lowercase hex digits, addresses
//!   `IP:PORT` strings, names and paths as they are (not escaped for a terminal: JSON escapes
//!   what needs it).

use super::names::display_name;
use super::output::Line;
use crate::wire::{FileHash, FileKind, HeldFile, SearchHit};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;

/// How text is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Style {
    /// stdout is a terminal: sizes in human units, search results under a header.
    pub human: bool,
    /// A progress bar is drawn on stderr (then each holder tried is not named as well).
    pub bar: bool,
}

/// Where a text line goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stream {
    /// Results.
    Stdout,
    /// Notes, progress and errors.
    Stderr,
}

/// A page of search results.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SearchPage {
    /// The words searched for.
    pub query: String,
    /// The hits of this page, best first.
    pub hits: Vec<SearchHit>,
    /// How many files match in all (a lower bound unless `total_exact`).
    pub total: u64,
    /// Whether `total` is exact.
    pub total_exact: bool,
    /// Whether `more` shows a next page.
    pub more: bool,
    /// The search stopped at its work budget: there may be matches it did not look at.
    pub partial: bool,
}

/// A page of a lookup's answer: files and their holders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LookupPage {
    /// What was looked up, as typed (a name, a hash or a hash prefix).
    pub target: String,
    /// The files of this page, each with its holders numbered from 1 as `get X N` uses them.
    pub files: Vec<HeldFile>,
    /// Files shown by earlier pages of the same lookup.
    pub shown_before: u64,
    /// Files of that name (or hash) in all.
    pub total: u64,
    /// Whether `more` shows a next page.
    pub more: bool,
}

/// One shared file, for `files`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileRow {
    /// Its hash.
    pub hash: FileHash,
    /// Its size in bytes.
    pub size: u64,
    /// Its name.
    pub name: String,
}

/// What the peer shares after a scan.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareSummary {
    /// Files shared.
    pub files: usize,
    /// Bytes in them.
    pub bytes: u64,
    /// Files the scan registered.
    pub added: usize,
    /// Files the scan withdrew.
    pub withdrawn: usize,
}

/// The index session, for `status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexStatus {
    /// The index as given (`HOST:PORT`).
    pub address: String,
    /// Where the session stands.
    pub state: IndexState,
    /// Our file server's address as the index sees it (while connected).
    pub observed: Option<SocketAddr>,
    /// Why it is not connected (the last failure), or why the index refused us.
    pub reason: Option<String>,
}

/// Where the index session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IndexState {
    /// No session has been up yet (looking the name up, connecting, or retrying).
    NotConnectedYet,
    /// Looking up, connecting or saying hello again after a session ended.
    Connecting,
    /// Connected and registered.
    Connected,
    /// A session was up and ended: retrying with backoff.
    Disconnected,
    /// The index refused this peer (another protocol version): not retried.
    Refused,
    /// This peer said goodbye.
    Closed,
}

impl IndexState {
    /// The name in JSON.
    pub fn name(self) -> &'static str {
        match self {
            IndexState::NotConnectedYet => "not_connected_yet",
            IndexState::Connecting => "connecting",
            IndexState::Connected => "connected",
            IndexState::Disconnected => "disconnected",
            IndexState::Refused => "refused",
            IndexState::Closed => "closed",
        }
    }
}

/// A download in progress, for `status` and `downloads`.
#[derive(Debug, Clone, PartialEq)]
pub struct DownloadStatus {
    /// The file's name.
    pub name: String,
    /// Its hash.
    pub hash: FileHash,
    /// Bytes verified and on disk.
    pub done: u64,
    /// Bytes in the file.
    pub total: u64,
    /// Bytes per second received in this run so far.
    pub rate: f64,
    /// Holders it is fetching from now.
    pub sources: usize,
    /// Started with `get -b` (else a `get` waits for it).
    pub background: bool,
}

impl DownloadStatus {
    fn json(&self) -> Value {
        json!({
            "name": self.name,
            "hash": self.hash.to_hex(),
            "done": self.done,
            "total": self.total,
            "rate": self.rate,
            "sources": self.sources,
            "background": self.background,
        })
    }
}

/// What `status` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusReport {
    /// The index session.
    pub index: IndexStatus,
    /// The shared directory.
    pub share_dir: PathBuf,
    /// Files shared.
    pub files: usize,
    /// Bytes in them.
    pub bytes: u64,
    /// The file server's port (0: none, `--listen none`).
    pub listen_port: u16,
    /// Whether the index reached our file server (`None`: not known yet).
    pub reachable: Option<bool>,
    /// Uploads sending.
    pub uploads_active: u64,
    /// Uploads sent at once at most.
    pub upload_slots: usize,
    /// Requests waiting in the upload queue.
    pub uploads_queued: usize,
    /// Uploads finished.
    pub uploads_done: u64,
    /// Bytes uploaded.
    pub upload_bytes: u64,
    /// Downloads in progress.
    pub downloads: Vec<DownloadStatus>,
}

/// A download that landed.
#[derive(Debug, Clone, PartialEq)]
pub struct Saved {
    /// Where.
    pub path: PathBuf,
    /// The file's hash.
    pub hash: FileHash,
    /// Its size in bytes.
    pub size: u64,
    /// Bytes received in this run (less than `size` after a resume).
    pub received: u64,
    /// How long this run took, in seconds.
    pub secs: f64,
    /// How many holders sent verified bytes.
    pub holders: usize,
}

/// The `downloads` listing: one line per running download, then the count.
fn downloads_text(list: &[DownloadStatus], style: Style) -> String {
    let mut s = String::new();
    for d in list {
        let pct = if d.total == 0 {
            100.0
        } else {
            d.done as f64 * 100.0 / d.total as f64
        };
        let _ = writeln!(
            s,
            "{} {} {pct:.1}% {:.1} MiB/s {} source{}{}",
            display_name(&d.name),
            bytes(d.total, style),
            d.rate / (1 << 20) as f64,
            d.sources,
            if d.sources == 1 { "" } else { "s" },
            if d.background {
                ""
            } else {
                " (get waits for it)"
            }
        );
    }
    let n = list.len();
    let _ = write!(s, "{n} download{} running", if n == 1 { "" } else { "s" });
    s
}

/// A size: bytes in the pipe format, human units on a terminal.
fn size(n: u64, style: Style) -> String {
    if style.human {
        human_bytes(n)
    } else {
        n.to_string()
    }
}

/// `N bytes` in the pipe format, human units on a terminal.
fn bytes(n: u64, style: Style) -> String {
    if style.human {
        human_bytes(n)
    } else {
        format!("{n} bytes")
    }
}

/// A hash on a terminal: its first 16 hex digits (a prefix of 8 or more names it in commands).
fn short_hash(h: &FileHash) -> String {
    h.to_hex()[..16].to_string()
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `1.5 GiB`-style sizes.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// The `kind` of a name in JSON: the type class of its extension (`audio`, `video`, ...), as
/// the search filter `type:` classes it, or `None` (null).
pub fn kind_of(name: &str) -> Option<&'static str> {
    let (_, ext) = name.rsplit_once('.')?;
    let ext = ext.to_ascii_lowercase();
    FileKind::ALL
        .into_iter()
        .find(|k| k.extensions().contains(&ext.as_str()))
        .map(FileKind::name)
}

/// The text of a line and where it goes; `None` for what is not written as text (progress,
/// drawn as a bar by the writer, and a holder tried while the bar shows it).
pub fn text(line: &Line, style: Style) -> Option<(Stream, String)> {
    use Stream::{Stderr, Stdout};
    let out = match line {
        Line::Help => (Stdout, super::console::HELP.to_string()),
        Line::Search(page) => (Stdout, search_text(page, style)),
        Line::Lookup(page) => (Stdout, lookup_text(page, style)),
        Line::Files {
            files,
            bytes: total,
        } => {
            let mut text = String::new();
            for f in files {
                let hash = if style.human {
                    short_hash(&f.hash)
                } else {
                    f.hash.to_hex()
                };
                let _ = writeln!(
                    text,
                    "{hash} {} {}",
                    size(f.size, style),
                    display_name(&f.name)
                );
            }
            let _ = write!(
                text,
                "{} file{}, {}",
                files.len(),
                plural(files.len()),
                bytes(*total, style)
            );
            (Stdout, text)
        }
        Line::Sharing { summary, result } => {
            let s = summary;
            let text = format!(
                "sharing {} file{} ({}): {} new, {} withdrawn",
                s.files,
                plural(s.files),
                bytes(s.bytes, style),
                s.added,
                s.withdrawn
            );
            (if *result { Stdout } else { Stderr }, text)
        }
        Line::Unregistered { hash, names } => {
            let names: Vec<String> = names.iter().map(|n| display_name(n)).collect();
            (Stdout, format!("unregistered {hash} {}", names.join(", ")))
        }
        Line::Status(report) => (Stdout, status_text(report, style)),
        Line::Saved(s) => {
            let rate = s.received as f64 / s.secs / (1 << 20) as f64;
            let text = format!(
                "saved {} ({} in {:.3} s, {rate:.1} MiB/s)",
                s.path.display(),
                bytes(s.size, style),
                s.secs
            );
            (Stdout, text)
        }
        Line::AlreadyHave { path, size: n, .. } => (
            Stdout,
            format!("already have {} ({})", path.display(), bytes(*n, style)),
        ),
        Line::Serving { addr: Some(addr) } => (Stderr, format!("peer: serving files on {addr}")),
        Line::Serving { addr: None } => (
            Stderr,
            "peer: no file server (--listen none): other peers get our files through pushes"
                .to_string(),
        ),
        Line::Metrics { addr } => (Stderr, format!("peer: metrics on http://{addr}/metrics")),
        Line::Hashing {
            files_done,
            files,
            bytes_done,
            bytes: total,
        } => (
            Stderr,
            format!(
                "hashing: {files_done}/{files} files, {}/{}",
                human_bytes(*bytes_done),
                human_bytes(*total)
            ),
        ),
        Line::IndexUp { index } => (Stderr, format!("index: connected to {index} again")),
        Line::IndexDown {
            index,
            reason,
            connected_before,
        } => (
            Stderr,
            if *connected_before {
                format!("index: {index} unreachable ({reason}); reconnecting in the background")
            } else {
                format!(
                    "index: not connected yet: {index} unreachable ({reason}); retrying in the \
                     background"
                )
            },
        ),
        Line::Trying { .. } if style.bar => return None,
        Line::Trying {
            name,
            size: n,
            holder,
        } => (
            Stderr,
            format!(
                "get: downloading {} ({}) from {holder}",
                display_name(name),
                bytes(*n, style)
            ),
        ),
        Line::Resuming {
            name,
            have,
            size: n,
        } => (
            Stderr,
            format!(
                "get: resuming {} at {} of {}",
                display_name(name),
                size(*have, style),
                bytes(*n, style)
            ),
        ),
        Line::Queued {
            name,
            holder,
            position,
        } => (
            Stderr,
            format!(
                "get: {} queued at {holder}: position {position} in its upload queue",
                display_name(name)
            ),
        ),
        Line::Dropped {
            name,
            holder,
            why,
            liar,
        } => (
            Stderr,
            format!(
                "get: {}: dropped {}{holder}: {why}",
                display_name(name),
                if *liar {
                    "the lying holder "
                } else {
                    "holder "
                }
            ),
        ),
        Line::Started { name, size: n, .. } => (
            Stdout,
            format!(
                "downloading {} ({}) in the background; `downloads` shows it",
                display_name(name),
                bytes(*n, style)
            ),
        ),
        Line::Downloads(list) => (Stdout, downloads_text(list, style)),
        Line::Progress { .. } | Line::ProgressEnd => return None,
        Line::Note(text) => (Stderr, text.clone()),
        Line::Warning(text) => (Stderr, format!("warning: {text}")),
        Line::Error(text) | Line::Failed { message: text, .. } => {
            (Stderr, format!("error: {text}"))
        }
    };
    Some(out)
}

fn search_text(page: &SearchPage, style: Style) -> String {
    let mut text = String::new();
    if style.human && !page.hits.is_empty() {
        let _ = writeln!(text, "{:<16} {:>10} {:>7}  NAME", "HASH", "SIZE", "HOLDERS");
    }
    for h in &page.hits {
        if style.human {
            let _ = writeln!(
                text,
                "{} {:>10} {:>7}  {}",
                short_hash(&h.hash),
                human_bytes(h.size),
                h.holders,
                display_name(&h.name)
            );
        } else {
            let _ = writeln!(
                text,
                "{} {} {} {}",
                h.hash,
                h.size,
                h.holders,
                display_name(&h.name)
            );
        }
    }
    let n = page.hits.len();
    let _ = write!(text, "{n} result{}", plural(n));
    if page.more {
        let _ = write!(
            text,
            " ({} {} matches; type more for the next page)",
            if page.total_exact { "of" } else { "at least" },
            page.total
        );
    }
    if page.partial {
        text.push_str("\n(search stopped early: narrow it)");
    }
    text
}

/// The holders of each file, numbered as `get X N` uses them (also in the error of a `get`
/// whose name several files bear).
pub fn holders_text(files: &[HeldFile], style: Style) -> String {
    let mut text = String::new();
    for f in files {
        let hash = if style.human {
            short_hash(&f.hash)
        } else {
            f.hash.to_hex()
        };
        let _ = writeln!(
            text,
            "{hash} {} {}",
            size(f.size, style),
            display_name(&f.name)
        );
        for (i, h) in f.holders.iter().enumerate() {
            let _ = writeln!(text, "  {} {h}", i + 1);
        }
        let unlisted = (f.holder_count as usize).saturating_sub(f.holders.len());
        if unlisted > 0 {
            let _ = writeln!(text, "  and {unlisted} more holders");
        }
    }
    text.pop();
    text
}

fn lookup_text(page: &LookupPage, style: Style) -> String {
    if page.files.is_empty() {
        // The files left since the last page (the index changed meanwhile).
        return format!("no more files ({} in all now)", page.total);
    }
    let mut text = holders_text(&page.files, style);
    let last = page.shown_before + page.files.len() as u64;
    if page.shown_before > 0 || page.more || page.total > last {
        // A name of many files: say which part this is and how to see more.
        let _ = write!(
            text,
            "\nfiles {}-{last} of {}, most holders first",
            (page.shown_before + 1).min(last),
            page.total
        );
        if page.more {
            text.push_str("; `more` shows the next");
        }
    }
    text
}

/// The `index:` line of `status`.
pub fn index_status_text(s: &IndexStatus) -> String {
    let index = &s.address;
    let reason = s.reason.as_deref().unwrap_or("unknown");
    match (s.state, s.observed) {
        (IndexState::Connected, Some(observed)) => {
            format!("index: connected to {index} (seen as {observed})")
        }
        (IndexState::Connected, None) => format!("index: connected to {index}"),
        (IndexState::NotConnectedYet, _) if s.reason.is_some() => {
            format!("index: not connected yet: {index} unreachable ({reason}), retrying")
        }
        (IndexState::NotConnectedYet, _) => {
            format!("index: not connected yet: connecting to {index}")
        }
        (IndexState::Connecting, _) => format!("index: connecting to {index}"),
        (IndexState::Disconnected, _) => format!("index: disconnected from {index}, retrying"),
        (IndexState::Refused, _) => format!(
            "index: {index} refused this peer ({reason}); not retrying until the peer is restarted"
        ),
        (IndexState::Closed, _) => format!("index: closed the session with {index}"),
    }
}

fn status_text(r: &StatusReport, style: Style) -> String {
    let mut s = index_status_text(&r.index);
    s.push('\n');
    let _ = writeln!(
        s,
        "sharing: {} file{}, {} from {}",
        r.files,
        plural(r.files),
        bytes(r.bytes, style),
        r.share_dir.display()
    );
    if r.listen_port == 0 {
        s.push_str("no file server (--listen none): other peers get our files through pushes\n");
    } else {
        let reach = match r.reachable {
            Some(true) => "reachable from the index",
            Some(false) => {
                "not reachable from the index (firewalled): other peers get our files through \
                 pushes"
            }
            None => "reachability not known yet",
        };
        let _ = writeln!(s, "serving on port {} ({reach})", r.listen_port);
    }
    let _ = writeln!(
        s,
        "uploads: {} in progress ({} slots), {} waiting in the queue, {} range requests answered, {} sent",
        r.uploads_active,
        r.upload_slots,
        r.uploads_queued,
        r.uploads_done,
        bytes(r.upload_bytes, style)
    );
    if r.downloads.is_empty() {
        s.push_str("downloads: none in progress");
    }
    for (i, d) in r.downloads.iter().enumerate() {
        if i > 0 {
            s.push('\n');
        }
        let _ = write!(
            s,
            "download: {} {}/{}",
            display_name(&d.name),
            size(d.done, style),
            bytes(d.total, style)
        );
    }
    s
}

fn hit_json(h: &SearchHit) -> Value {
    json!({
        "hash": h.hash.to_hex(),
        "size": h.size,
        "holders": h.holders,
        "name": h.name,
        "kind": kind_of(&h.name),
    })
}

fn held_json(f: &HeldFile) -> Value {
    let holders: Vec<String> = f.holders.iter().map(ToString::to_string).collect();
    json!({
        "hash": f.hash.to_hex(),
        "size": f.size,
        "name": f.name,
        "holders": holders,
        "holder_count": f.holder_count,
        "kind": kind_of(&f.name),
    })
}

fn path_json(p: &std::path::Path) -> Value {
    Value::String(p.to_string_lossy().into_owned())
}

/// The JSON object of a line; `None` for the end of a download's progress (the `saved` or
/// `error` line that follows says how it ended).
pub fn json(line: &Line) -> Option<Value> {
    let v = match line {
        Line::Help => json!({"type": "help", "text": super::console::HELP}),
        Line::Search(p) => json!({
            "type": "search",
            "query": p.query,
            "hits": p.hits.iter().map(hit_json).collect::<Vec<_>>(),
            "total": p.total,
            "total_exact": p.total_exact,
            "more": p.more,
            "partial": p.partial,
        }),
        Line::Lookup(p) => json!({
            "type": "lookup",
            "target": p.target,
            "files": p.files.iter().map(held_json).collect::<Vec<_>>(),
            "first": p.shown_before + 1,
            "total": p.total,
            "more": p.more,
        }),
        Line::Files { files, bytes } => json!({
            "type": "files",
            "files": files
                .iter()
                .map(|f| {
                    json!({
                        "hash": f.hash.to_hex(),
                        "size": f.size,
                        "name": f.name,
                        "kind": kind_of(&f.name),
                    })
                })
                .collect::<Vec<_>>(),
            "count": files.len(),
            "bytes": bytes,
        }),
        Line::Sharing { summary: s, .. } => json!({
            "type": "sharing",
            "files": s.files,
            "bytes": s.bytes,
            "added": s.added,
            "withdrawn": s.withdrawn,
        }),
        Line::Unregistered { hash, names } => json!({
            "type": "unregistered",
            "hash": hash.to_hex(),
            "names": names,
        }),
        Line::Status(r) => {
            let downloads: Vec<Value> = r.downloads.iter().map(DownloadStatus::json).collect();
            json!({
                "type": "status",
                "index": {
                    "address": r.index.address,
                    "state": r.index.state.name(),
                    "observed": r.index.observed.map(|a| a.to_string()),
                    "reason": r.index.reason,
                },
                "share": {"dir": path_json(&r.share_dir), "files": r.files, "bytes": r.bytes},
                "listen_port": r.listen_port,
                "reachable": r.reachable,
                "uploads": {
                    "active": r.uploads_active,
                    "slots": r.upload_slots,
                    "queued": r.uploads_queued,
                    "done": r.uploads_done,
                    "bytes": r.upload_bytes,
                },
                "downloads": downloads,
            })
        }
        Line::Saved(s) => json!({
            "type": "saved",
            "path": path_json(&s.path),
            "hash": s.hash.to_hex(),
            "size": s.size,
            "received": s.received,
            "seconds": s.secs,
            "holders": s.holders,
        }),
        Line::AlreadyHave { path, hash, size } => json!({
            "type": "already_have",
            "path": path_json(path),
            "hash": hash.to_hex(),
            "size": size,
        }),
        Line::Serving { addr } => {
            json!({"type": "serving", "address": addr.map(|a| a.to_string())})
        }
        Line::Metrics { addr } => json!({"type": "metrics", "address": addr.to_string()}),
        Line::Hashing {
            files_done,
            files,
            bytes_done,
            bytes,
        } => json!({
            "type": "hashing",
            "files_done": files_done,
            "files": files,
            "bytes_done": bytes_done,
            "bytes": bytes,
        }),
        Line::IndexUp { index } => json!({"type": "index_up", "index": index}),
        Line::IndexDown {
            index,
            reason,
            connected_before,
        } => json!({
            "type": "index_down",
            "index": index,
            "reason": reason,
            "connected_before": connected_before,
        }),
        Line::Trying { name, size, holder } => json!({
            "type": "trying",
            "name": name,
            "size": size,
            "holder": holder.to_string(),
        }),
        Line::Resuming { name, have, size } => json!({
            "type": "resuming",
            "name": name,
            "done": have,
            "size": size,
        }),
        Line::Queued {
            name,
            holder,
            position,
        } => json!({
            "type": "queued",
            "name": name,
            "holder": holder.to_string(),
            "position": position,
        }),
        Line::Dropped {
            name,
            holder,
            why,
            liar,
        } => json!({
            "type": "dropped",
            "name": name,
            "holder": holder.to_string(),
            "reason": why,
            "liar": liar,
        }),
        Line::Started { name, hash, size } => json!({
            "type": "started",
            "name": name,
            "hash": hash.to_hex(),
            "size": size,
        }),
        Line::Downloads(list) => json!({
            "type": "downloads",
            "downloads": list.iter().map(DownloadStatus::json).collect::<Vec<_>>(),
        }),
        Line::Progress { name, done, total } => json!({
            "type": "progress",
            "name": name,
            "done": done,
            "total": total,
        }),
        Line::ProgressEnd => return None,
        Line::Note(text) => json!({"type": "note", "message": text}),
        Line::Warning(text) => json!({"type": "warning", "message": text}),
        Line::Error(text) => json!({"type": "error", "message": text}),
        Line::Failed { hash, message } => {
            json!({"type": "error", "message": message, "hash": hash.to_hex()})
        }
    };
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    const PIPE: Style = Style {
        human: false,
        bar: false,
    };
    const TERMINAL: Style = Style {
        human: true,
        bar: false,
    };

    fn hit(name: &str, size: u64) -> SearchHit {
        SearchHit {
            name: name.into(),
            size,
            hash: FileHash::of(name.as_bytes()),
            holders: 2,
        }
    }

    fn page() -> SearchPage {
        SearchPage {
            query: "zeb".into(),
            hits: vec![hit("Zebra.flac", 3 << 20), hit("zebu\u{202e}.txt", 9)],
            total: 40,
            total_exact: true,
            more: true,
            partial: false,
        }
    }

    #[test]
    fn search_in_a_pipe_is_the_documented_format() {
        let (stream, text) = text(&Line::Search(page()), PIPE).unwrap();
        assert_eq!(stream, Stream::Stdout);
        let a = FileHash::of(b"Zebra.flac");
        let b = FileHash::of("zebu\u{202e}.txt".as_bytes());
        assert_eq!(
            text,
            format!(
                "{a} 3145728 2 Zebra.flac\n{b} 9 2 zebu\\u{{202e}}.txt\n\
                 2 results (of 40 matches; type more for the next page)"
            )
        );
    }

    #[test]
    fn search_on_a_terminal_has_a_header_and_human_sizes() {
        let (_, text) = text(&Line::Search(page()), TERMINAL).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "HASH                   SIZE HOLDERS  NAME");
        let a = FileHash::of(b"Zebra.flac").to_hex();
        assert_eq!(
            lines[1],
            format!("{}    3.0 MiB       2  Zebra.flac", &a[..16])
        );
        assert!(
            lines[2].contains("       9 B       2  zebu\\u{202e}.txt"),
            "{text}"
        );
        assert_eq!(
            lines[3],
            "2 results (of 40 matches; type more for the next page)"
        );
        // No results: no header.
        let empty = SearchPage {
            hits: vec![],
            more: false,
            ..page()
        };
        assert_eq!(
            text_of(&Line::Search(empty), TERMINAL),
            "0 results".to_string()
        );
    }

    fn text_of(line: &Line, style: Style) -> String {
        text(line, style).unwrap().1
    }

    #[test]
    fn downloads_list_each_download_with_its_progress_rate_and_sources() {
        let d = |name: &str, done, background| DownloadStatus {
            name: name.into(),
            hash: FileHash::of(name.as_bytes()),
            done,
            total: 4 << 20,
            rate: (2 << 20) as f64,
            sources: 3,
            background,
        };
        let line = Line::Downloads(vec![d("a.iso", 1 << 20, false), d("b.iso", 0, true)]);
        assert_eq!(
            text_of(&line, PIPE),
            "a.iso 4194304 bytes 25.0% 2.0 MiB/s 3 sources (get waits for it)\n\
             b.iso 4194304 bytes 0.0% 2.0 MiB/s 3 sources\n\
             2 downloads running"
        );
        assert_eq!(
            text_of(&Line::Downloads(vec![]), PIPE),
            "0 downloads running"
        );
        let v = json(&line).unwrap();
        assert_eq!(v["type"], "downloads");
        assert_eq!(v["downloads"][0]["done"], 1 << 20);
        assert_eq!(v["downloads"][1]["background"], true);
        assert_eq!(v["downloads"][1]["hash"], FileHash::of(b"b.iso").to_hex());
        let dropped = Line::Dropped {
            name: "a.iso".into(),
            holder: "10.0.0.1:7".parse().unwrap(),
            why: "bytes of group 3 do not verify".into(),
            liar: true,
        };
        assert_eq!(
            text_of(&dropped, PIPE),
            "get: a.iso: dropped the lying holder 10.0.0.1:7: bytes of group 3 do not verify"
        );
        let v = json(&dropped).unwrap();
        assert_eq!(
            (v["type"].as_str(), v["liar"].as_bool()),
            (Some("dropped"), Some(true))
        );
    }

    #[test]
    fn sizes_are_bytes_in_a_pipe_and_human_on_a_terminal() {
        let saved = Line::Saved(Saved {
            path: "/d/x.bin".into(),
            hash: FileHash::of(b"x"),
            size: 5 << 30,
            received: 1 << 20,
            secs: 0.5,
            holders: 2,
        });
        assert_eq!(json(&saved).unwrap()["holders"], 2);
        assert_eq!(
            text_of(&saved, PIPE),
            "saved /d/x.bin (5368709120 bytes in 0.500 s, 2.0 MiB/s)"
        );
        assert_eq!(
            text_of(&saved, TERMINAL),
            "saved /d/x.bin (5.0 GiB in 0.500 s, 2.0 MiB/s)"
        );
        let files = Line::Files {
            files: vec![FileRow {
                hash: FileHash::of(b"y"),
                size: 1536,
                name: "y".into(),
            }],
            bytes: 1536,
        };
        let h = FileHash::of(b"y").to_hex();
        assert_eq!(
            text_of(&files, PIPE),
            format!("{h} 1536 y\n1 file, 1536 bytes")
        );
        assert_eq!(
            text_of(&files, TERMINAL),
            format!("{} 1.5 KiB y\n1 file, 1.5 KiB", &h[..16])
        );
        let sharing = Line::Sharing {
            summary: ShareSummary {
                files: 2,
                bytes: 18,
                added: 1,
                withdrawn: 0,
            },
            result: true,
        };
        assert_eq!(
            text(&sharing, PIPE),
            Some((
                Stream::Stdout,
                "sharing 2 files (18 bytes): 1 new, 0 withdrawn".into()
            ))
        );
        assert_eq!(
            text_of(&sharing, TERMINAL),
            "sharing 2 files (18 B): 1 new, 0 withdrawn"
        );
        let one = Line::Sharing {
            summary: ShareSummary {
                files: 1,
                bytes: 9,
                added: 1,
                withdrawn: 0,
            },
            result: true,
        };
        assert_eq!(
            text_of(&one, PIPE),
            "sharing 1 file (9 bytes): 1 new, 0 withdrawn"
        );
    }

    #[test]
    fn status_says_not_connected_yet_before_the_first_session() {
        let mut report = StatusReport {
            index: IndexStatus {
                address: "idx:9000".into(),
                state: IndexState::NotConnectedYet,
                observed: None,
                reason: Some("connection refused".into()),
            },
            share_dir: "/s".into(),
            files: 0,
            bytes: 0,
            listen_port: 7,
            reachable: None,
            uploads_active: 0,
            upload_slots: 64,
            uploads_queued: 0,
            uploads_done: 0,
            upload_bytes: 0,
            downloads: vec![],
        };
        let text = text_of(&Line::Status(Box::new(report.clone())), PIPE);
        assert_eq!(
            text,
            "index: not connected yet: idx:9000 unreachable (connection refused), retrying\n\
             sharing: 0 files, 0 bytes from /s\n\
             serving on port 7 (reachability not known yet)\n\
             uploads: 0 in progress (64 slots), 0 waiting in the queue, 0 range requests answered, 0 bytes sent\n\
             downloads: none in progress"
        );
        report.index.state = IndexState::Disconnected;
        let text = text_of(&Line::Status(Box::new(report.clone())), PIPE);
        assert!(
            text.starts_with("index: disconnected from idx:9000, retrying\n"),
            "{text}"
        );
        let v = json(&Line::Status(Box::new(report))).unwrap();
        assert_eq!(v["index"]["state"], "disconnected");
        assert_eq!(v["share"]["dir"], "/s");
        assert_eq!(v["downloads"], json!([]));
    }

    #[test]
    fn a_lookup_shows_the_hash_as_search_does_short_on_a_terminal_whole_in_a_pipe() {
        let hash = FileHash::of(b"z");
        let page = LookupPage {
            target: "z".into(),
            files: vec![HeldFile {
                hash,
                size: 2048,
                name: "z".into(),
                holders: vec!["10.0.0.1:9".parse().unwrap()],
                holder_count: 3,
            }],
            shown_before: 0,
            total: 1,
            more: false,
        };
        let hex = hash.to_hex();
        let (_, terminal) = text(&Line::Lookup(page.clone()), TERMINAL).unwrap();
        assert_eq!(
            terminal,
            format!(
                "{} 2.0 KiB z\n  1 10.0.0.1:9\n  and 2 more holders",
                &hex[..16]
            )
        );
        let (_, pipe) = text(&Line::Lookup(page), PIPE).unwrap();
        assert_eq!(
            pipe,
            format!("{hex} 2048 z\n  1 10.0.0.1:9\n  and 2 more holders")
        );
    }

    #[test]
    fn json_has_a_type_bytes_hex_hashes_and_address_strings() {
        let v = json(&Line::Search(page())).unwrap();
        assert_eq!(v["type"], "search");
        assert_eq!(v["hits"][0]["size"], 3 << 20);
        assert_eq!(v["hits"][0]["hash"], FileHash::of(b"Zebra.flac").to_hex());
        // Names as they are: JSON escapes what needs it, nothing is rewritten.
        assert_eq!(v["hits"][1]["name"], "zebu\u{202e}.txt");
        let held = HeldFile {
            hash: FileHash::of(b"z"),
            size: 1,
            name: "z".into(),
            holders: vec!["[::1]:80".parse().unwrap(), "10.0.0.1:9".parse().unwrap()],
            holder_count: 3,
        };
        let v = json(&Line::Lookup(LookupPage {
            target: "z".into(),
            files: vec![held],
            shown_before: 0,
            total: 1,
            more: false,
        }))
        .unwrap();
        assert_eq!(v["files"][0]["holders"], json!(["[::1]:80", "10.0.0.1:9"]));
        assert_eq!(v["files"][0]["holder_count"], 3);
        let v = json(&Line::Error("no peer shares x".into())).unwrap();
        assert_eq!(v, json!({"type": "error", "message": "no peer shares x"}));
        // One line each: no raw newline in the encoding, even for multi-line text.
        let help = serde_json::to_string(&json(&Line::Help).unwrap()).unwrap();
        assert!(!help.contains('\n'));
        assert_eq!(json(&Line::ProgressEnd), None);
    }

    #[test]
    fn a_failed_get_is_an_error_that_names_its_hash_and_names_have_kinds() {
        let h = FileHash::of(b"f");
        let failed = Line::Failed {
            hash: h,
            message: "no peer shares f".into(),
        };
        // Written as any error, with the hash in JSON.
        assert_eq!(
            text(&failed, PIPE),
            text(&Line::Error("no peer shares f".into()), PIPE)
        );
        assert_eq!(
            json(&failed).unwrap(),
            json!({"type": "error", "message": "no peer shares f", "hash": h.to_hex()})
        );
        assert_eq!(kind_of("a.MP3"), Some("audio"));
        assert_eq!(kind_of("movie.mkv"), Some("video"));
        assert_eq!(kind_of("noext"), None);
        assert_eq!(kind_of("x.unknownext"), None);
        let v = json(&Line::Search(page())).unwrap();
        assert_eq!(v["hits"][0]["kind"], "audio");
        assert_eq!(v["hits"][1]["kind"], "document");
    }

    #[test]
    fn a_holder_tried_is_named_only_without_a_bar() {
        let line = Line::Trying {
            name: "f".into(),
            size: 9,
            holder: "127.0.0.1:1".parse().unwrap(),
        };
        assert_eq!(
            text(&line, PIPE),
            Some((
                Stream::Stderr,
                "get: downloading f (9 bytes) from 127.0.0.1:1".into()
            ))
        );
        let bar = Style {
            human: true,
            bar: true,
        };
        assert_eq!(text(&line, bar), None);
        assert_eq!(json(&line).unwrap()["holder"], "127.0.0.1:1");
    }
}
