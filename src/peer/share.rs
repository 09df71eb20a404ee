//! What a peer shares: the scan of its directory, streaming BLAKE3 hashing with a cache, and
//! the table of shared files keyed by hash.
//!
//! # Invariants
//! - Only regular files are shared; symbolic links are never followed, on any path (scan,
//!   re-hash, serve), so nothing outside the shared directory is reachable through one: the
//!   walk does not descend into links, a file is opened with `O_NOFOLLOW` ([`open_regular`]),
//!   a path re-hashed inside the share may have no link in any component ([`regular_files`]),
//!   and a file is served only while it is the very file that was hashed (same device and
//!   inode, size and mtime), so a link or another file swapped in later is refused. The
//!   peer's own bookkeeping files (the hash cache, partial downloads) are skipped.
//! - A file that changes while it is hashed is hashed again ([`hash_file`]), so the size and
//!   hash announced always belong together.
//! - Hashing streams each file through a fixed buffer: memory does not grow with file size.
//! - The cache maps (path, size, mtime, device and inode) to a hash; a file whose size or
//!   mtime changed is hashed again, so a restart costs a directory walk, not a re-read of
//!   every byte. A file found under a new path with the (device, inode), size and mtime of a
//!   cached one was moved or renamed: its hash is taken from the cache, not read again.
//! - The file server serves a hash only through this table (hash → path), and only while the
//!   file's size and mtime still match what was hashed.
//! - The share's table and the cache each store a file's path once ([`PathTable`]: interned
//!   directories and an arena of names); their indexes by hash and by inode hold file ids.
//!   A [`SharedFile`] handed out is built from the table, not borrowed from it.

use super::paths::{self, FileId, PathTable};
use crate::wire::{FileEntry, FileHash};
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// The hash cache's file name inside the shared directory.
pub const CACHE_FILE: &str = ".p2pshare-cache";
/// Suffix of partial downloads (`.<hash>.p2pshare-part`).
pub const PART_SUFFIX: &str = ".p2pshare-part";
const HASH_BUF_BYTES: usize = 256 * 1024;
/// Times a file that changes while it is hashed is hashed again before it is given up.
const HASH_TRIES: usize = 3;

/// One shared file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFile {
    /// Where it is on disk.
    pub path: PathBuf,
    /// The name it is shared under (the last path component, lossily UTF-8).
    pub name: String,
    /// Size when hashed.
    pub size: u64,
    /// The (device, inode) that was hashed: a file swapped in under the same path (or reached
    /// through a directory swapped for a link) is another file.
    pub file_id: (u64, u64),
    /// Modification time when hashed, nanoseconds since the epoch.
    pub mtime_ns: i128,
    /// BLAKE3 of its contents.
    pub hash: FileHash,
}

impl SharedFile {
    /// The index entry announcing this file.
    pub fn entry(&self) -> FileEntry {
        FileEntry {
            hash: self.hash,
            size: self.size,
            name: self.name.clone(),
        }
    }

    /// Whether `meta` is still the file that was hashed, unchanged: the same device and inode,
    /// size and mtime.
    pub fn is_unchanged(&self, meta: &fs::Metadata) -> bool {
        file_id(meta) == self.file_id && meta.len() == self.size && mtime_ns(meta) == self.mtime_ns
    }
}

/// A file's (device, inode).
pub fn file_id(meta: &fs::Metadata) -> (u64, u64) {
    use std::os::unix::fs::MetadataExt;
    (meta.dev(), meta.ino())
}

/// Opens `path` for reading if it is a regular file, never following a symbolic link in its
/// last component (`O_NOFOLLOW`) and never blocking on a FIFO put in its place (`O_NONBLOCK`,
/// which changes nothing for a regular file). Returns the file and its metadata.
pub fn open_regular(path: &Path) -> io::Result<(File, fs::Metadata)> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => io::Error::new(
                io::ErrorKind::InvalidInput,
                "a symbolic link (links are never followed)",
            ),
            _ => e,
        })?;
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file",
        ));
    }
    Ok((file, meta))
}

/// Whether no component of `path` below `root` is a symbolic link (`path` inside `root`; a
/// path outside it is checked only by [`open_regular`] on its last component).
pub fn is_link_free(root: &Path, path: &Path) -> bool {
    let Ok(rest) = path.strip_prefix(root) else {
        return true;
    };
    let mut at = root.to_path_buf();
    rest.components().all(|c| {
        at.push(c);
        fs::symlink_metadata(&at).is_ok_and(|m| !m.file_type().is_symlink())
    })
}

/// The paths a person or the peer asked to (re-)share, with their metadata: regular files
/// only, no symbolic link in any component inside `root`. The others are reported through
/// `warn`.
pub fn regular_files(
    root: &Path,
    paths: &[PathBuf],
    warn: &mut dyn FnMut(String),
) -> Vec<(PathBuf, fs::Metadata)> {
    paths
        .iter()
        .filter_map(|p| {
            if !is_link_free(root, p) {
                warn(format!(
                    "not sharing {}: a symbolic link on its path (links are never followed)",
                    p.display()
                ));
                return None;
            }
            match fs::symlink_metadata(p) {
                Ok(m) if m.is_file() => Some((p.clone(), m)),
                Ok(m) if m.file_type().is_symlink() => {
                    warn(format!(
                        "not sharing {}: a symbolic link (links are never followed)",
                        p.display()
                    ));
                    None
                }
                Ok(_) => {
                    warn(format!("{} is not a regular file", p.display()));
                    None
                }
                Err(e) => {
                    warn(format!("cannot share {}: {e}", p.display()));
                    None
                }
            }
        })
        .collect()
}

/// A file's modification time in nanoseconds since the epoch (0 if unknown).
pub fn mtime_ns(meta: &fs::Metadata) -> i128 {
    match meta.modified() {
        Ok(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => d.as_nanos() as i128,
            Err(e) => -(e.duration().as_nanos() as i128),
        },
        Err(_) => 0,
    }
}

/// Hashes a regular file (never through a link: [`open_regular`]) by streaming it through a
/// fixed buffer. Returns the hash with the metadata of the file as hashed: if the file changed
/// while it was read (its size or mtime moved, or the bytes read differ from its size), it is
/// hashed again, up to [`HASH_TRIES`] times, so the size announced is the size hashed.
pub fn hash_file(
    path: &Path,
    mut progress: impl FnMut(u64),
) -> io::Result<(FileHash, fs::Metadata)> {
    let mut buf = vec![0u8; HASH_BUF_BYTES];
    for _ in 0..HASH_TRIES {
        let (mut file, before) = open_regular(path)?;
        let mut hasher = blake3::Hasher::new();
        let mut read = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            hasher.update(&buf[..n]);
            read += n as u64;
            progress(n as u64);
        }
        let after = file.metadata()?;
        let steady = after.len() == before.len()
            && read == after.len()
            && mtime_ns(&after) == mtime_ns(&before);
        if steady {
            return Ok((FileHash(*hasher.finalize().as_bytes()), after));
        }
    }
    Err(io::Error::other(format!(
        "it kept changing while it was hashed ({HASH_TRIES} tries); it will be hashed when it settles"
    )))
}

/// Whether a directory entry is the peer's own bookkeeping rather than a shared file.
pub fn is_own_file(name: &std::ffi::OsStr) -> bool {
    let n = name.to_string_lossy();
    n == CACHE_FILE || n.ends_with(PART_SUFFIX) || n.starts_with(&format!("{CACHE_FILE}."))
}

/// Progress of a scan, for a person to watch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScanProgress {
    /// Files found.
    pub files: u64,
    /// Bytes in them.
    pub bytes: u64,
    /// Files whose hash is known (cached or computed).
    pub files_done: u64,
    /// Bytes hashed or taken from the cache.
    pub bytes_done: u64,
}

/// Lists the regular files under `root` (recursively, links not followed) with their metadata.
/// Unreadable directories are reported through `warn` and skipped.
pub fn walk(root: &Path, warn: &mut dyn FnMut(String)) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) => {
                warn(format!("cannot read {}: {e}", dir.display()));
                continue;
            }
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else { continue };
            let ft = meta.file_type();
            if ft.is_dir() {
                dirs.push(entry.path());
            } else if ft.is_file() && !is_own_file(&entry.file_name()) {
                out.push((entry.path(), meta));
            }
            // Symlinks, sockets, devices: never shared.
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// The regular files now at or under `paths` (paths the watcher saw change), with their
/// metadata: a regular file is itself, a directory is walked ([`walk`]); a link (or a path
/// with a link in it), anything else and a path that is gone give nothing. Sorted, each once.
pub fn files_at(root: &Path, paths: &[PathBuf]) -> Vec<(PathBuf, fs::Metadata)> {
    let mut out = Vec::new();
    for p in paths {
        if !p.starts_with(root) || !is_link_free(root, p) {
            continue;
        }
        match fs::symlink_metadata(p) {
            Ok(m) if m.is_file() && !p.file_name().is_some_and(is_own_file) => {
                out.push((p.clone(), m))
            }
            Ok(m) if m.is_dir() => out.extend(walk(p, &mut |w| log::debug!(target: "peer", "{w}"))),
            _ => {}
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.dedup_by(|a, b| a.0 == b.0);
    out
}

/// Hashes `files` (using `cache` for unchanged ones), reporting progress as it goes. With
/// `outboards`, a file of more than one 16 KiB group read here gets its outboard stored in
/// the same pass (a cached file's is computed when first served, if missing).
pub fn hash_all(
    files: Vec<(PathBuf, fs::Metadata)>,
    cache: &HashCache,
    outboards: Option<&super::outboard::OutboardStore>,
    progress: &mut dyn FnMut(ScanProgress),
    warn: &mut dyn FnMut(String),
) -> Vec<SharedFile> {
    let mut p = ScanProgress {
        files: files.len() as u64,
        bytes: files.iter().map(|(_, m)| m.len()).sum(),
        ..ScanProgress::default()
    };
    progress(p);
    let mut out = Vec::with_capacity(files.len());
    for (path, meta) in files {
        let known = cache.get(&path, &meta).or_else(|| {
            let (hash, was) = cache.get_moved(&meta)?;
            log::debug!(target: "peer", "{} is {} moved: hash known, not read again",
                path.display(), was.display());
            Some(hash)
        });
        let (hash, meta) = match known {
            Some(h) => {
                p.bytes_done += meta.len();
                (h, meta)
            }
            None => {
                let mut last_report = p.bytes_done;
                let mut count = |n| {
                    p.bytes_done += n;
                    if p.bytes_done - last_report >= 64 << 20 {
                        last_report = p.bytes_done;
                        progress(p);
                    }
                };
                let result = match outboards {
                    Some(store) if meta.len() > super::outboard::GROUP_BYTES => {
                        store.compute_file(&path, &mut count)
                    }
                    _ => hash_file(&path, count),
                };
                match result {
                    Ok(hashed) => {
                        log::debug!(target: "peer", "hashed {} ({} bytes read)",
                            path.display(), hashed.1.len());
                        hashed
                    }
                    Err(e) => {
                        warn(format!("cannot hash {}: {e}", path.display()));
                        continue;
                    }
                }
            }
        };
        p.files_done += 1;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(SharedFile {
            path,
            name,
            size: meta.len(),
            file_id: file_id(&meta),
            mtime_ns: mtime_ns(&meta),
            hash,
        });
        progress(p);
    }
    out
}

/// A modification time in nanoseconds, stored as bytes: an `i128` field would align its
/// whole record to 16 bytes, and the share and the cache hold one record per file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct PackedNs([u8; 16]);

impl PackedNs {
    fn new(ns: i128) -> PackedNs {
        PackedNs(ns.to_le_bytes())
    }

    fn get(self) -> i128 {
        i128::from_le_bytes(self.0)
    }
}

/// (path, size, mtime) → hash, persisted as a small text file.
///
/// Format, one file per line: `HASH SIZE MTIME_NS DEV INO PATH_HEX` (the path as hex bytes, so
/// any name, newlines included, survives). Unparseable lines are ignored: a damaged cache only
/// costs re-hashing.
///
/// Each path is stored once ([`PathTable`]); the index by inode holds the file's id.
#[derive(Debug, Default, Clone)]
pub struct HashCache {
    entries: PathTable<CacheEntry>,
    /// The file of each cached (device, inode), to know a moved file.
    by_id: HashMap<(u64, u64), FileId>,
}

/// What a cached hash was computed for: the file's size, mtime and (device, inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct CacheEntry {
    size: u64,
    mtime_ns: PackedNs,
    file_id: (u64, u64),
    hash: FileHash,
}

impl CacheEntry {
    fn of(f: &SharedFile) -> CacheEntry {
        CacheEntry {
            size: f.size,
            mtime_ns: PackedNs::new(f.mtime_ns),
            file_id: f.file_id,
            hash: f.hash,
        }
    }
}

impl HashCache {
    /// Loads the cache at `path`; missing or damaged files give an empty or partial cache.
    pub fn load(path: &Path) -> HashCache {
        let mut cache = HashCache::default();
        let Ok(text) = fs::read_to_string(path) else {
            return cache;
        };
        for line in text.lines() {
            let fields: Vec<&str> = line.split(' ').collect();
            let [h, s, m, dev, ino, p] = fields[..] else {
                continue;
            };
            let parsed = (
                h.parse(),
                s.parse(),
                m.parse(),
                dev.parse(),
                ino.parse(),
                path_from_hex(p),
            );
            let (Ok(hash), Ok(size), Ok(mtime_ns), Ok(dev), Ok(ino), Some(path)) = parsed else {
                continue;
            };
            let entry = CacheEntry {
                size,
                mtime_ns: PackedNs::new(mtime_ns),
                file_id: (dev, ino),
                hash,
            };
            cache.insert(&path, entry);
        }
        cache
    }

    fn insert(&mut self, path: &Path, entry: CacheEntry) -> bool {
        if self.entries.get(path).map(|(_, e)| e) == Some(&entry) {
            return false;
        }
        let file_id = entry.file_id;
        let (id, _) = self.entries.insert(path, entry);
        self.by_id.insert(file_id, id);
        true
    }

    /// Adds (or updates) these files; whether anything changed.
    pub fn insert_all<'a>(&mut self, files: impl IntoIterator<Item = &'a SharedFile>) -> bool {
        let mut changed = false;
        for f in files {
            changed |= self.insert(&f.path, CacheEntry::of(f));
        }
        changed
    }

    /// The cached hash of a file with the (device, inode), size and mtime of `meta` under
    /// another path: a moved or renamed file. Returns the hash and the path it was hashed at.
    pub fn get_moved(&self, meta: &fs::Metadata) -> Option<(FileHash, PathBuf)> {
        let id = *self.by_id.get(&file_id(meta))?;
        let e = self.entries.value(id)?;
        (e.file_id == file_id(meta) && e.size == meta.len() && e.mtime_ns.get() == mtime_ns(meta))
            .then(|| self.entries.path(id).map(|p| (e.hash, p)))
            .flatten()
    }

    /// The cached hash of `path` if it is still the same file (size, mtime, device and inode).
    pub fn get(&self, path: &Path, meta: &fs::Metadata) -> Option<FileHash> {
        match self.entries.get(path) {
            Some((_, e))
                if e.size == meta.len()
                    && e.mtime_ns.get() == mtime_ns(meta)
                    && e.file_id == file_id(meta) =>
            {
                Some(e.hash)
            }
            _ => None,
        }
    }

    /// A cache holding exactly these files.
    pub fn from_files<'a>(files: impl IntoIterator<Item = &'a SharedFile>) -> HashCache {
        let mut cache = HashCache::default();
        cache.insert_all(files);
        cache
    }

    /// Writes the cache atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        // Streamed: a cache of a large share is never built as one string in memory.
        let mut out = io::BufWriter::new(File::create(&tmp)?);
        for (id, e) in self.entries.iter() {
            let Some(p) = self.entries.path(id) else {
                continue;
            };
            let (dev, ino) = e.file_id;
            writeln!(
                out,
                "{} {} {} {dev} {ino} {}",
                e.hash,
                e.size,
                e.mtime_ns.get(),
                path_to_hex(&p)
            )?;
        }
        let f = out.into_inner().map_err(|e| e.into_error())?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    }
}

fn path_to_hex(p: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    hex::encode(p.as_os_str().as_bytes())
}

fn path_from_hex(s: &str) -> Option<PathBuf> {
    use std::os::unix::ffi::OsStringExt;
    let bytes = hex::decode(s).ok()?;
    Some(PathBuf::from(std::ffi::OsString::from_vec(bytes)))
}

/// The shared files, by path and by hash. Each path is stored once, in pieces
/// ([`PathTable`]: interned directories and file names); the index by hash holds file ids.
#[derive(Debug, Default)]
pub struct Share {
    table: PathTable<Stored>,
    /// The files holding each hash (usually one).
    by_hash: HashMap<FileHash, Vec<FileId>>,
    /// The name a file is shared under, where it is not its path's file name (it almost
    /// always is: kept aside, so the common record has no name of its own).
    renamed: HashMap<FileId, Box<str>>,
}

/// A shared file as the table keeps it: its path is the table's key.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stored {
    size: u64,
    file_id: (u64, u64),
    mtime_ns: PackedNs,
    hash: FileHash,
}

/// What changed when the share was replaced or extended: what to tell the index.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ShareDiff {
    /// Entries to register.
    pub added: Vec<FileEntry>,
    /// Hashes this peer no longer has at all.
    pub removed: Vec<FileHash>,
}

impl Share {
    /// Number of shared files (paths).
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// Whether nothing is shared.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// The name file `id` is shared under.
    fn name(&self, id: FileId) -> String {
        match self.renamed.get(&id) {
            Some(n) => n.to_string(),
            None => self.table.name_lossy(id),
        }
    }

    /// File `id`, whole.
    fn file(&self, id: FileId) -> Option<SharedFile> {
        let s = self.table.value(id)?;
        Some(SharedFile {
            path: self.table.path(id)?,
            name: self.name(id),
            size: s.size,
            file_id: s.file_id,
            mtime_ns: s.mtime_ns.get(),
            hash: s.hash,
        })
    }

    /// Every shared file, ordered by path (built: for listing, not for the hot path).
    pub fn files(&self) -> impl Iterator<Item = SharedFile> {
        let mut files: Vec<SharedFile> = self
            .table
            .iter()
            .filter_map(|(id, _)| self.file(id))
            .collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files.into_iter()
    }

    /// Total bytes shared.
    pub fn total_bytes(&self) -> u64 {
        self.table.iter().map(|(_, s)| s.size).sum()
    }

    /// A shared file with this hash (the first path holding it).
    pub fn by_hash(&self, hash: &FileHash) -> Option<SharedFile> {
        let id = *self.by_hash.get(hash)?.first()?;
        self.file(id)
    }

    /// Every index entry for the current files (one per distinct hash and name).
    pub fn entries(&self) -> Vec<FileEntry> {
        let mut seen = std::collections::HashSet::new();
        self.table
            .iter()
            .map(|(id, s)| FileEntry {
                hash: s.hash,
                size: s.size,
                name: self.name(id),
            })
            .filter(|e| seen.insert((e.hash, e.name.clone())))
            .collect()
    }

    /// Files matching a person's target: a hash, a unique hash prefix, or a name.
    pub fn find(&self, pred: impl Fn(&SharedFile) -> bool) -> Vec<SharedFile> {
        self.table
            .iter()
            .filter_map(|(id, _)| self.file(id))
            .filter(|f| pred(f))
            .collect()
    }

    /// Adds or replaces files (by path). Returns what the index must learn.
    pub fn upsert(&mut self, files: Vec<SharedFile>) -> ShareDiff {
        let mut diff = ShareDiff::default();
        for f in files {
            let renamed = f.name != paths::file_name(&f.path).to_string_lossy();
            let stored = Stored {
                size: f.size,
                file_id: f.file_id,
                mtime_ns: PackedNs::new(f.mtime_ns),
                hash: f.hash,
            };
            if let Some((id, old)) = self.table.get(&f.path) {
                if old.hash == f.hash && self.name(id) == f.name {
                    self.table.insert(&f.path, stored);
                    continue;
                }
                diff.removed.extend(self.remove_path(&f.path));
            }
            diff.added.push(f.entry());
            diff.removed.retain(|h| *h != f.hash);
            let (id, _) = self.table.insert(&f.path, stored);
            if renamed {
                self.renamed.insert(id, f.name.into());
            }
            self.by_hash.entry(f.hash).or_default().push(id);
        }
        diff
    }

    /// Replaces the files under `root` with `files` (a rescan): files under `root` that are
    /// gone are removed. Files outside `root` (added by path) stay.
    pub fn replace_under(&mut self, root: &Path, files: Vec<SharedFile>) -> ShareDiff {
        let keep: std::collections::HashSet<&PathBuf> = files.iter().map(|f| &f.path).collect();
        let gone: Vec<PathBuf> = self
            .table
            .ids_under(root)
            .into_iter()
            .filter_map(|id| self.table.path(id))
            .filter(|p| !keep.contains(p))
            .collect();
        let mut removed = Vec::new();
        for p in gone {
            removed.extend(self.remove_path(&p));
        }
        let mut diff = self.upsert(files);
        removed.retain(|h| !diff.added.iter().any(|e| e.hash == *h));
        diff.removed.extend(removed);
        diff.removed.sort();
        diff.removed.dedup();
        diff
    }

    /// The files at or under each of `roots` (paths the watcher saw change) are now exactly
    /// those of `files` there: what was shared there and is not in `files` (deleted, moved
    /// away, turned into a link) stops being shared, and `files` are added or updated.
    ///
    /// The index withdraws by hash, with all its names, so every hash that lost a path is
    /// withdrawn and, if the peer still holds it (a renamed or moved file, a duplicate), its
    /// entries are registered again after that: the index never keeps a name that is gone.
    pub fn replace_paths(&mut self, roots: &[PathBuf], files: Vec<SharedFile>) -> ShareDiff {
        use std::collections::HashSet;
        let keep: HashMap<&PathBuf, &SharedFile> = files.iter().map(|f| (&f.path, f)).collect();
        let mut gone = Vec::new();
        for root in roots {
            for id in self.table.ids_under(root) {
                let (Some(p), Some(old)) = (self.table.path(id), self.table.value(id)) else {
                    continue;
                };
                let same = keep
                    .get(&p)
                    .is_some_and(|f| f.hash == old.hash && f.name == self.name(id));
                if !same {
                    gone.push(p);
                }
            }
        }
        gone.sort();
        gone.dedup();
        let mut lost: HashSet<FileHash> = HashSet::new();
        for p in &gone {
            if let Some((_, f)) = self.table.get(p) {
                lost.insert(f.hash);
            }
            self.remove_path(p);
        }
        let mut diff = self.upsert(files);
        let mut seen: HashSet<(FileHash, String)> = diff
            .added
            .iter()
            .map(|e| (e.hash, e.name.clone()))
            .collect();
        let mut removed: Vec<FileHash> = lost.into_iter().collect();
        removed.sort();
        for h in &removed {
            for &id in self.by_hash.get(h).into_iter().flatten() {
                let Some(e) = self.file(id).map(|f| f.entry()) else {
                    continue;
                };
                if seen.insert((e.hash, e.name.clone())) {
                    diff.added.push(e);
                }
            }
        }
        diff.removed = removed;
        diff
    }

    /// Stops sharing one path; returns its hash if no other path still holds it.
    pub fn remove_path(&mut self, path: &Path) -> Option<FileHash> {
        let (id, f) = self.table.remove(path)?;
        self.renamed.remove(&id);
        let ids = self.by_hash.get_mut(&f.hash)?;
        ids.retain(|&i| i != id);
        if ids.is_empty() {
            self.by_hash.remove(&f.hash);
            Some(f.hash)
        } else {
            None
        }
    }

    /// Stops sharing every path holding `hash`.
    pub fn remove_hash(&mut self, hash: &FileHash) -> Vec<SharedFile> {
        let ids = self.by_hash.remove(hash).unwrap_or_default();
        let files: Vec<SharedFile> = ids.iter().filter_map(|&id| self.file(id)).collect();
        for id in ids {
            self.table.remove_id(id);
            self.renamed.remove(&id);
        }
        files
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("p2pshare-share-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn scan(dir: &Path, cache: &HashCache) -> Vec<SharedFile> {
        let files = walk(dir, &mut |w| panic!("{w}"));
        hash_all(files, cache, None, &mut |_| {}, &mut |w| panic!("{w}"))
    }

    #[test]
    fn walk_skips_links_and_own_files() {
        let d = tmpdir("walk");
        fs::create_dir_all(d.join("sub/deeper")).unwrap();
        fs::write(d.join("a.txt"), b"a").unwrap();
        fs::write(d.join("sub/deeper/b\r\r\nc"), b"b").unwrap();
        fs::write(d.join(CACHE_FILE), b"").unwrap();
        fs::write(d.join(format!(".x{PART_SUFFIX}")), b"").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", d.join("dirlink")).unwrap();
        let files = scan(&d, &HashCache::default());
        let names: Vec<&str> = files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, vec!["a.txt", "b\r\r\nc"]);
        assert_eq!(files[0].hash, FileHash::of(b"a"));
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn cache_round_trip_and_invalidation() {
        let d = tmpdir("cache");
        fs::write(d.join("one"), b"1").unwrap();
        fs::write(d.join("new\nline"), b"2").unwrap();
        let files = scan(&d, &HashCache::default());
        let cache_path = d.join(CACHE_FILE);
        HashCache::from_files(&files).save(&cache_path).unwrap();
        let cache = HashCache::load(&cache_path);
        for f in &files {
            let meta = fs::symlink_metadata(&f.path).unwrap();
            assert_eq!(cache.get(&f.path, &meta), Some(f.hash));
        }
        // A cached entry with a wrong hash is trusted only while it is the same file: prove
        // the scan uses the cache by planting a lie, then invalidate it by touching the file,
        // and by putting another file of the same size and mtime in its place.
        let mut lying = HashCache::default();
        let f = &files[0];
        let entry = CacheEntry {
            hash: FileHash([1; 32]),
            ..*cache.entries.get(&f.path).unwrap().1
        };
        lying.entries.insert(&f.path, entry);
        let again = scan(&d, &lying);
        assert_eq!(again[0].hash, FileHash([1; 32]));
        let mut other_file = entry;
        other_file.file_id.1 += 1;
        lying.entries.insert(&f.path, other_file);
        let true_hash = FileHash::of(&fs::read(&f.path).unwrap());
        assert_eq!(scan(&d, &lying)[0].hash, true_hash);
        lying.entries.insert(&f.path, entry);
        fs::write(&f.path, b"changed").unwrap();
        let again = scan(&d, &lying);
        assert_eq!(again[0].hash, FileHash::of(b"changed"));
        // Damaged cache lines, and lines of the older format without (device, inode), are
        // ignored: they only cost hashing again.
        let line = format!("{} 1 2 {}\n", FileHash([1; 32]), hex::encode("x"));
        fs::write(&cache_path, format!("garbage\nzz 1 2 3 4 5\n{line}")).unwrap();
        assert_eq!(HashCache::load(&cache_path).entries.len(), 0);
        fs::remove_dir_all(&d).unwrap();
    }

    /// A shared file record for tests (its name is the path's last component).
    pub(in crate::peer) fn file(path: &str, content: &[u8]) -> SharedFile {
        SharedFile {
            path: PathBuf::from(path),
            name: path.rsplit('/').next().unwrap().into(),
            size: content.len() as u64,
            file_id: (0, 0),
            mtime_ns: 1,
            hash: FileHash::of(content),
        }
    }

    #[test]
    fn a_link_swapped_in_for_a_hashed_file_is_neither_opened_nor_hashed() {
        let d = tmpdir("swap");
        let outside = tmpdir("swap-outside");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("song.flac"), b"the song").unwrap();
        fs::write(d.join("sub/track.flac"), b"a track").unwrap();
        // Same sizes as the shared files, so only the file's identity can tell them apart.
        fs::write(outside.join("secret"), b"a secret").unwrap();
        fs::write(outside.join("track.flac"), b"private").unwrap();
        let shared = scan(&d, &HashCache::default());
        assert_eq!(shared.len(), 2);

        // The file itself becomes a link; a directory on the path becomes a link.
        fs::remove_file(d.join("song.flac")).unwrap();
        std::os::unix::fs::symlink(outside.join("secret"), d.join("song.flac")).unwrap();
        fs::remove_dir_all(d.join("sub")).unwrap();
        std::os::unix::fs::symlink(&outside, d.join("sub")).unwrap();

        let err = open_regular(&d.join("song.flac")).unwrap_err();
        assert!(err.to_string().contains("symbolic link"), "{err}");
        assert!(hash_file(&d.join("song.flac"), |_| {}).is_err());
        // Through the linked directory the open succeeds, but it is another file.
        let (_, meta) = open_regular(&d.join("sub/track.flac")).unwrap();
        let track = shared.iter().find(|f| f.name == "track.flac").unwrap();
        assert!(!track.is_unchanged(&meta));
        // A re-hash of either path (a changed file, `register PATH`) refuses them.
        let mut warnings = Vec::new();
        let paths = [d.join("song.flac"), d.join("sub/track.flac")];
        assert!(regular_files(&d, &paths, &mut |w| warnings.push(w)).is_empty());
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(
            warnings.iter().all(|w| w.contains("symbolic link")),
            "{warnings:?}"
        );
        fs::remove_dir_all(&d).unwrap();
        fs::remove_dir_all(&outside).unwrap();
    }

    #[test]
    fn a_fifo_in_place_of_a_file_is_refused_without_blocking() {
        let d = tmpdir("fifo");
        let fifo = d.join("pipe");
        // A FIFO: opening it for reading would wait for a writer without O_NONBLOCK.
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        assert!(made.is_ok_and(|s| s.success()), "mkfifo");
        let err = open_regular(&fifo).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_file_growing_while_it_is_hashed_is_hashed_again() {
        let d = tmpdir("grow");
        let path = d.join("growing.log");
        let first = vec![7u8; HASH_BUF_BYTES * 2];
        fs::write(&path, &first).unwrap();
        let mut appended = false;
        let (hash, meta) = hash_file(&path, |_| {
            if !appended {
                appended = true;
                let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
                f.write_all(b"more").unwrap();
            }
        })
        .unwrap();
        let mut all = first;
        all.extend_from_slice(b"more");
        assert_eq!((hash, meta.len()), (FileHash::of(&all), all.len() as u64));
        // One that never settles is given up, not announced with a stale size: every full
        // buffer read sees the file grow (a short read, the last of a pass, does not, so each
        // pass ends).
        let err = hash_file(&path, |n| {
            if n == HASH_BUF_BYTES as u64 {
                let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
                f.write_all(b"x").unwrap();
            }
        })
        .unwrap_err();
        assert!(err.to_string().contains("kept changing"), "{err}");
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_moved_file_is_known_by_its_inode_and_not_read_again() {
        let d = tmpdir("moved");
        fs::create_dir_all(d.join("sub")).unwrap();
        fs::write(d.join("a.bin"), b"moved bytes").unwrap();
        let cache = HashCache::from_files(&scan(&d, &HashCache::default()));
        fs::rename(d.join("a.bin"), d.join("sub/b.bin")).unwrap();
        let meta = fs::symlink_metadata(d.join("sub/b.bin")).unwrap();
        assert_eq!(cache.get(&d.join("sub/b.bin"), &meta), None);
        let (hash, was) = cache.get_moved(&meta).unwrap();
        assert_eq!((hash, was), (FileHash::of(b"moved bytes"), d.join("a.bin")));
        // Proof that the scan takes it from the cache: a planted hash comes back.
        let mut lying = HashCache::default();
        let mut f = scan(&d, &HashCache::default()).remove(0);
        f.path = d.join("a.bin");
        f.hash = FileHash([9; 32]);
        lying.insert_all([&f]);
        assert_eq!(scan(&d, &lying)[0].hash, FileHash([9; 32]));
        // Written to after the move: another size or mtime, so it is read.
        fs::write(d.join("sub/b.bin"), b"other bytes").unwrap();
        let meta = fs::symlink_metadata(d.join("sub/b.bin")).unwrap();
        assert_eq!(cache.get_moved(&meta), None);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn files_at_touched_paths_walk_directories_and_skip_links_and_gone_paths() {
        let d = tmpdir("files-at");
        fs::create_dir_all(d.join("dir/deep")).unwrap();
        fs::write(d.join("dir/deep/x"), b"x").unwrap();
        fs::write(d.join("f"), b"f").unwrap();
        fs::write(d.join(CACHE_FILE), b"").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", d.join("link")).unwrap();
        std::os::unix::fs::symlink("/etc", d.join("dirlink")).unwrap();
        let touched = [
            d.join("dir"),
            d.join("dir/deep/x"),
            d.join("f"),
            d.join("gone"),
            d.join("link"),
            d.join("dirlink"),
            d.join("dirlink/passwd"),
            d.join(CACHE_FILE),
            PathBuf::from("/etc/passwd"),
        ];
        let found: Vec<PathBuf> = files_at(&d, &touched).into_iter().map(|(p, _)| p).collect();
        assert_eq!(found, vec![d.join("dir/deep/x"), d.join("f")]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn watched_paths_replace_what_was_shared_there() {
        let mut s = Share::default();
        s.upsert(vec![
            file("/s/old.txt", b"R"),
            file("/s/dir/a", b"A"),
            file("/s/dir/b", b"B"),
            file("/s/dir.txt", b"T"),
            file("/s/keep", b"K"),
        ]);
        // A rename: the hash is withdrawn (with its old name) and registered under the new.
        let d = s.replace_paths(
            &[PathBuf::from("/s/old.txt"), PathBuf::from("/s/new.txt")],
            vec![file("/s/new.txt", b"R")],
        );
        assert_eq!(d.removed, vec![FileHash::of(b"R")]);
        assert_eq!(d.added, vec![file("/s/new.txt", b"R").entry()]);
        // A directory removed: everything under it goes, not `dir.txt` beside it.
        let d = s.replace_paths(&[PathBuf::from("/s/dir")], vec![]);
        let mut want = vec![FileHash::of(b"A"), FileHash::of(b"B")];
        want.sort();
        assert_eq!((d.removed, d.added), (want, vec![]));
        assert_eq!(s.len(), 3);
        // A touched file that did not change: nothing to tell.
        let d = s.replace_paths(&[PathBuf::from("/s/keep")], vec![file("/s/keep", b"K")]);
        assert_eq!(d, ShareDiff::default());
        // A duplicate deleted: the hash stays, re-registered under the names left.
        s.upsert(vec![file("/s/copy", b"K")]);
        let d = s.replace_paths(&[PathBuf::from("/s/keep")], vec![]);
        assert_eq!(d.removed, vec![FileHash::of(b"K")]);
        assert_eq!(d.added, vec![file("/s/copy", b"K").entry()]);
        // Changed content at the same path: the old hash out, the new in.
        let d = s.replace_paths(&[PathBuf::from("/s/copy")], vec![file("/s/copy", b"K2")]);
        assert_eq!(d.removed, vec![FileHash::of(b"K")]);
        assert_eq!(d.added, vec![file("/s/copy", b"K2").entry()]);
        assert!(s.by_hash(&FileHash::of(b"K")).is_none());
    }

    #[test]
    fn diffs_tell_the_index_what_changed() {
        let mut s = Share::default();
        let d = s.upsert(vec![
            file("/s/a", b"A"),
            file("/s/b", b"B"),
            file("/s/c", b"A"),
        ]);
        assert_eq!(d.added.len(), 3);
        assert_eq!(s.entries().len(), 3);
        // Rescan: b is gone, a changed content, c unchanged.
        let d = s.replace_under(
            Path::new("/s"),
            vec![file("/s/a", b"A2"), file("/s/c", b"A")],
        );
        assert_eq!(d.added, vec![file("/s/a", b"A2").entry()]);
        // "A" is still held by c; B is gone.
        assert_eq!(d.removed, vec![FileHash::of(b"B")]);
        assert_eq!(
            s.by_hash(&FileHash::of(b"A")).unwrap().path,
            PathBuf::from("/s/c")
        );
        assert_eq!(s.remove_hash(&FileHash::of(b"A")).len(), 1);
        assert_eq!(s.len(), 1);
    }
}
