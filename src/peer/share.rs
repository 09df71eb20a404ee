//! What a peer shares: the scan of its directory, streaming BLAKE3 hashing with a cache, and
//! the table of shared files keyed by hash.
//!
//! # Invariants
//! - Only regular files are shared; symbolic links are never followed (so nothing outside the
//!   shared directory is reachable through one), and the peer's own bookkeeping files (the
//!   hash cache, partial downloads) are skipped.
//! - Hashing streams each file through a fixed buffer: memory does not grow with file size.
//! - The cache maps (path, size, mtime) to a hash; a file whose size or mtime changed is
//!   hashed again, so a restart costs a directory walk, not a re-read of every byte.
//! - The file server serves a hash only through this table (hash → path), and only while the
//!   file's size and mtime still match what was hashed.

use crate::wire::{FileEntry, FileHash};
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// The hash cache's file name inside the shared directory.
pub const CACHE_FILE: &str = ".p2pshare-cache";
/// Suffix of partial downloads (`.<hash>.p2pshare-part`).
pub const PART_SUFFIX: &str = ".p2pshare-part";
const HASH_BUF_BYTES: usize = 256 * 1024;

/// One shared file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedFile {
    /// Where it is on disk.
    pub path: PathBuf,
    /// The name it is shared under (the last path component, lossily UTF-8).
    pub name: String,
    /// Size when hashed.
    pub size: u64,
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

    /// Whether the file on disk still has the size and mtime it had when hashed.
    pub fn is_unchanged(&self, meta: &fs::Metadata) -> bool {
        meta.len() == self.size && mtime_ns(meta) == self.mtime_ns
    }
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

/// Hashes a file by streaming it through a fixed buffer.
pub fn hash_file(path: &Path, mut progress: impl FnMut(u64)) -> io::Result<FileHash> {
    let mut file = File::open(path)?;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; HASH_BUF_BYTES];
    loop {
        let n = match file.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        progress(n as u64);
    }
    Ok(FileHash(*hasher.finalize().as_bytes()))
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

/// Hashes `files` (using `cache` for unchanged ones), reporting progress as it goes.
pub fn hash_all(
    files: Vec<(PathBuf, fs::Metadata)>,
    cache: &HashCache,
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
        let size = meta.len();
        let mtime = mtime_ns(&meta);
        let hash = match cache.get(&path, size, mtime) {
            Some(h) => {
                p.bytes_done += size;
                h
            }
            None => {
                let mut last_report = p.bytes_done;
                let result = hash_file(&path, |n| {
                    p.bytes_done += n;
                    if p.bytes_done - last_report >= 64 << 20 {
                        last_report = p.bytes_done;
                        progress(p);
                    }
                });
                match result {
                    Ok(h) => h,
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
            size,
            mtime_ns: mtime,
            hash,
        });
        progress(p);
    }
    out
}

/// (path, size, mtime) → hash, persisted as a small text file.
///
/// Format, one file per line: `HASH SIZE MTIME_NS PATH_HEX` (the path as hex bytes, so any
/// name, newlines included, survives). Unparseable lines are ignored: a damaged cache only
/// costs re-hashing.
#[derive(Debug, Default, Clone)]
pub struct HashCache {
    entries: HashMap<PathBuf, (u64, i128, FileHash)>,
}

impl HashCache {
    /// Loads the cache at `path`; missing or damaged files give an empty or partial cache.
    pub fn load(path: &Path) -> HashCache {
        let mut cache = HashCache::default();
        let Ok(text) = fs::read_to_string(path) else {
            return cache;
        };
        for line in text.lines() {
            let mut parts = line.split(' ');
            let (Some(h), Some(s), Some(m), Some(p), None) = (
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
                parts.next(),
            ) else {
                continue;
            };
            let (Ok(hash), Ok(size), Ok(mtime), Some(path)) =
                (h.parse(), s.parse(), m.parse(), path_from_hex(p))
            else {
                continue;
            };
            cache.entries.insert(path, (size, mtime, hash));
        }
        cache
    }

    /// The cached hash of `path` if its size and mtime match.
    pub fn get(&self, path: &Path, size: u64, mtime_ns: i128) -> Option<FileHash> {
        match self.entries.get(path) {
            Some(&(s, m, h)) if s == size && m == mtime_ns => Some(h),
            _ => None,
        }
    }

    /// A cache holding exactly these files.
    pub fn from_files<'a>(files: impl IntoIterator<Item = &'a SharedFile>) -> HashCache {
        HashCache {
            entries: files
                .into_iter()
                .map(|f| (f.path.clone(), (f.size, f.mtime_ns, f.hash)))
                .collect(),
        }
    }

    /// Writes the cache atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let mut text = String::new();
        for (p, (size, mtime, hash)) in &self.entries {
            text.push_str(&format!("{hash} {size} {mtime} {}\n", path_to_hex(p)));
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
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

/// The shared files, by path and by hash.
#[derive(Debug, Default)]
pub struct Share {
    by_path: BTreeMap<PathBuf, SharedFile>,
    /// Paths holding each hash (usually one).
    by_hash: HashMap<FileHash, Vec<PathBuf>>,
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
        self.by_path.len()
    }

    /// Whether nothing is shared.
    pub fn is_empty(&self) -> bool {
        self.by_path.is_empty()
    }

    /// Every shared file, ordered by path.
    pub fn files(&self) -> impl Iterator<Item = &SharedFile> {
        self.by_path.values()
    }

    /// Total bytes shared.
    pub fn total_bytes(&self) -> u64 {
        self.by_path.values().map(|f| f.size).sum()
    }

    /// A shared file with this hash (the first path holding it).
    pub fn by_hash(&self, hash: &FileHash) -> Option<&SharedFile> {
        self.by_hash
            .get(hash)
            .and_then(|paths| paths.first())
            .and_then(|p| self.by_path.get(p))
    }

    /// Every index entry for the current files (one per distinct hash and name).
    pub fn entries(&self) -> Vec<FileEntry> {
        let mut seen = std::collections::HashSet::new();
        self.by_path
            .values()
            .filter(|f| seen.insert((f.hash, f.name.clone())))
            .map(SharedFile::entry)
            .collect()
    }

    /// Files matching a person's target: a hash, a unique hash prefix, or a name.
    pub fn find(&self, pred: impl Fn(&SharedFile) -> bool) -> Vec<&SharedFile> {
        self.by_path.values().filter(|f| pred(f)).collect()
    }

    /// Adds or replaces files (by path). Returns what the index must learn.
    pub fn upsert(&mut self, files: Vec<SharedFile>) -> ShareDiff {
        let mut diff = ShareDiff::default();
        for f in files {
            if let Some(old) = self.by_path.get(&f.path) {
                if old.hash == f.hash && old.name == f.name {
                    self.by_path.insert(f.path.clone(), f);
                    continue;
                }
                let path = f.path.clone();
                diff.removed.extend(self.remove_path(&path));
            }
            diff.added.push(f.entry());
            diff.removed.retain(|h| *h != f.hash);
            self.by_hash.entry(f.hash).or_default().push(f.path.clone());
            self.by_path.insert(f.path.clone(), f);
        }
        diff
    }

    /// Replaces the files under `root` with `files` (a rescan): files under `root` that are
    /// gone are removed. Files outside `root` (added by path) stay.
    pub fn replace_under(&mut self, root: &Path, files: Vec<SharedFile>) -> ShareDiff {
        let keep: std::collections::HashSet<&PathBuf> = files.iter().map(|f| &f.path).collect();
        let gone: Vec<PathBuf> = self
            .by_path
            .keys()
            .filter(|p| p.starts_with(root) && !keep.contains(p))
            .cloned()
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

    /// Stops sharing one path; returns its hash if no other path still holds it.
    pub fn remove_path(&mut self, path: &Path) -> Option<FileHash> {
        let f = self.by_path.remove(path)?;
        let paths = self.by_hash.get_mut(&f.hash)?;
        paths.retain(|p| p != path);
        if paths.is_empty() {
            self.by_hash.remove(&f.hash);
            Some(f.hash)
        } else {
            None
        }
    }

    /// Stops sharing every path holding `hash`.
    pub fn remove_hash(&mut self, hash: &FileHash) -> Vec<SharedFile> {
        let paths = self.by_hash.remove(hash).unwrap_or_default();
        paths
            .iter()
            .filter_map(|p| self.by_path.remove(p))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("p2pshare-share-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    fn scan(dir: &Path, cache: &HashCache) -> Vec<SharedFile> {
        let files = walk(dir, &mut |w| panic!("{w}"));
        hash_all(files, cache, &mut |_| {}, &mut |w| panic!("{w}"))
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
            assert_eq!(cache.get(&f.path, f.size, f.mtime_ns), Some(f.hash));
            assert_eq!(cache.get(&f.path, f.size + 1, f.mtime_ns), None);
        }
        // A cached entry with a wrong hash is trusted only while size and mtime match: prove
        // the scan uses the cache by planting a lie, then invalidate it by touching the file.
        let mut lying = HashCache::default();
        let f = &files[0];
        lying
            .entries
            .insert(f.path.clone(), (f.size, f.mtime_ns, FileHash([1; 32])));
        let again = scan(&d, &lying);
        assert_eq!(again[0].hash, FileHash([1; 32]));
        fs::write(&f.path, b"changed").unwrap();
        let again = scan(&d, &lying);
        assert_eq!(again[0].hash, FileHash::of(b"changed"));
        // Damaged cache lines are ignored.
        fs::write(&cache_path, "garbage\nzz 1 2 3\n").unwrap();
        assert_eq!(HashCache::load(&cache_path).entries.len(), 0);
        fs::remove_dir_all(&d).unwrap();
    }

    fn file(path: &str, content: &[u8]) -> SharedFile {
        SharedFile {
            path: PathBuf::from(path),
            name: path.rsplit('/').next().unwrap().into(),
            size: content.len() as u64,
            mtime_ns: 1,
            hash: FileHash::of(content),
        }
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
