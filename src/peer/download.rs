//! One download: a partial file under a temporary name, verified against the requested hash,
//! then renamed into place. The socket side lives in the peer's reactor handler; this type
//! owns the file side (resume, append, verify, land) and the list of holders to try.
//!
//! # Invariants
//! - Bytes go to `DOWNLOADS/.<hash>.p2pshare-part`, never to the final name. The final name
//!   appears only by `rename` after the BLAKE3 of the whole file matched and the data was
//!   fsynced, so nothing partial or unverified ever sits under a final name.
//! - A partial file is resumable from any holder of the same hash: the hash is of the bytes,
//!   not of who sent them. If the finished file does not verify, the partial is deleted (we
//!   cannot tell which holder lied) and the next holder starts from zero.
//! - The final name is sanitised ([`names::sanitize`]) and never overwrites a different file.
//! - BLAKE3 runs on a verifying thread that follows the partial file as it grows, reading it
//!   back from the page cache, so hashing overlaps the transfer instead of costing the reactor
//!   thread; the reactor learns the result through a callback (the peer turns it into an
//!   event). Each (re)opening of the partial file has its own generation, so a result from a
//!   discarded attempt is recognised and ignored.

use super::names::{self, Landing};
use super::share::PART_SUFFIX;
use crate::sys;
use crate::wire::FileHash;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Instant;

/// A number no other attempt of this process has: tells a result of the current attempt from
/// one of a discarded attempt.
fn fresh_generation() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Receives the BLAKE3 of a complete partial file: `(generation, result)`. Called on the
/// verifying thread.
pub type HashDone = Arc<dyn Fn(u64, io::Result<FileHash>) + Send + Sync>;

/// How far the verifying thread may read, and whether it should finish or stop.
#[derive(Default)]
struct Follow {
    /// Bytes of the partial file written so far.
    written: u64,
    /// No more bytes will come: hash up to `written`, then report.
    finished: bool,
    /// The attempt was abandoned: stop without reporting.
    cancelled: bool,
}

/// A thread hashing a partial file as it grows. Dropping it stops the thread.
struct HashFollower {
    shared: Arc<(Mutex<Follow>, Condvar)>,
}

impl HashFollower {
    fn start(path: &Path, generation: u64, done: HashDone) -> io::Result<HashFollower> {
        let file = File::open(path)?;
        let shared = Arc::new((Mutex::new(Follow::default()), Condvar::new()));
        let theirs = shared.clone();
        std::thread::Builder::new()
            .name("verify".into())
            .spawn(move || {
                if let Some(result) = follow(&file, &theirs) {
                    done(generation, result);
                }
            })?;
        Ok(HashFollower { shared })
    }

    fn update(&self, change: impl FnOnce(&mut Follow)) {
        let (lock, wake) = &*self.shared;
        let mut follow = lock.lock().unwrap_or_else(|e| e.into_inner());
        change(&mut follow);
        wake.notify_one();
    }
}

impl Drop for HashFollower {
    fn drop(&mut self) {
        self.update(|f| f.cancelled = true);
    }
}

/// The verifying thread: hashes `file` up to what has been written, waiting for more, until
/// told the file is complete (`Some(hash)`) or abandoned (`None`).
fn follow(file: &File, shared: &(Mutex<Follow>, Condvar)) -> Option<io::Result<FileHash>> {
    let (lock, wake) = shared;
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut hashed = 0u64;
    loop {
        let (target, finished) = {
            let mut f = lock.lock().unwrap_or_else(|e| e.into_inner());
            while !f.cancelled && !f.finished && hashed >= f.written {
                f = wake.wait(f).unwrap_or_else(|e| e.into_inner());
            }
            if f.cancelled {
                return None;
            }
            (f.written, f.finished)
        };
        if finished && hashed >= target {
            return Some(Ok(FileHash(*hasher.finalize().as_bytes())));
        }
        while hashed < target {
            let want = (target - hashed).min(buf.len() as u64) as usize;
            match file.read_at(&mut buf[..want], hashed) {
                Ok(0) => {
                    return Some(Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "the partial file shrank while it was verified",
                    )))
                }
                Ok(n) => {
                    hasher.update(&buf[..n]);
                    hashed += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Err(e)),
            }
        }
    }
}

/// Writeback of received data is started every this many bytes, so it overlaps the transfer.
const WRITEBACK_BYTES: u64 = 8 << 20;

/// Why a download (or an attempt at one holder) failed.
#[derive(Debug)]
pub enum TransferError {
    /// Writing the partial file failed (disk full, permissions): not the holder's fault.
    Local(io::Error),
    /// The holder misbehaved or went away; try the next one.
    Holder(String),
    /// The whole file arrived but its hash is wrong.
    Corrupt,
}

impl std::fmt::Display for TransferError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TransferError::Local(e) => write!(f, "cannot write the download: {e}"),
            TransferError::Holder(m) => f.write_str(m),
            TransferError::Corrupt => f.write_str("the bytes received do not match the hash"),
        }
    }
}

/// The file side of one download.
pub struct Download {
    /// What is wanted.
    pub hash: FileHash,
    /// Its size, from the index.
    pub size: u64,
    /// The name to save it under (untrusted; sanitised when landing).
    pub name: String,
    /// Holders to try, in order.
    pub holders: Vec<SocketAddr>,
    /// Index into `holders` of the one being tried.
    pub current: usize,
    /// One line per failed holder, for the final error.
    pub failures: Vec<String>,
    /// Where the partial bytes go.
    pub part_path: PathBuf,
    part: Option<File>,
    /// Hashes the partial file as it grows.
    follower: Option<HashFollower>,
    /// Tells results of this attempt from those of a discarded one.
    pub generation: u64,
    done: HashDone,
    /// Bytes in the partial file.
    pub have: u64,
    /// Bytes received in this run (for the rate).
    pub received_now: u64,
    /// When this run started.
    pub started: Instant,
    /// Offset the current holder is sending from.
    pub expecting_from: u64,
    /// Bytes already handed to the kernel for writeback.
    written_back: u64,
}

impl Download {
    /// Prepares a download into `dir`, resuming from an existing partial file. `done` is
    /// called (on another thread) with [`Download::generation`] and the file's hash once
    /// [`Download::finish`] was called and every byte is hashed.
    pub fn new(
        dir: &Path,
        hash: FileHash,
        size: u64,
        name: String,
        holders: Vec<SocketAddr>,
        done: HashDone,
    ) -> Result<Download, TransferError> {
        let part_path = dir.join(format!(".{hash}{PART_SUFFIX}"));
        let mut d = Download {
            hash,
            size,
            name,
            holders,
            current: 0,
            failures: Vec::new(),
            part_path,
            part: None,
            follower: None,
            generation: fresh_generation(),
            done,
            have: 0,
            received_now: 0,
            started: Instant::now(),
            expecting_from: 0,
            written_back: 0,
        };
        d.open_part().map_err(TransferError::Local)?;
        Ok(d)
    }

    /// Opens (or creates) the partial file and starts hashing what it already holds.
    fn open_part(&mut self) -> io::Result<()> {
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.part_path)?;
        let mut len = file.metadata()?.len();
        if len > self.size {
            // Not a prefix of this file: start over.
            file.set_len(0)?;
            len = 0;
        }
        self.have = len;
        self.written_back = len;
        let follower = HashFollower::start(&self.part_path, self.generation, self.done.clone())?;
        follower.update(|f| f.written = len);
        self.follower = Some(follower);
        self.part = Some(file);
        Ok(())
    }

    /// The holder to try now, if any is left.
    pub fn holder(&self) -> Option<SocketAddr> {
        self.holders.get(self.current).copied()
    }

    /// Records that the current holder failed and moves to the next.
    pub fn next_holder(&mut self, why: &str) {
        if let Some(h) = self.holder() {
            self.failures.push(format!("{h}: {why}"));
        }
        self.current += 1;
    }

    /// Whether every byte is here.
    pub fn is_complete(&self) -> bool {
        self.have == self.size
    }

    /// Checks a holder's header against what we asked for.
    pub fn accept_header(&mut self, size: u64, offset: u64) -> Result<u64, TransferError> {
        if size != self.size {
            return Err(TransferError::Holder(format!(
                "holder says the file has {size} bytes, the index says {}",
                self.size
            )));
        }
        if offset != self.have {
            return Err(TransferError::Holder(format!(
                "holder sends from offset {offset}, we asked for {}",
                self.have
            )));
        }
        self.expecting_from = offset;
        Ok(size - offset)
    }

    /// Appends received bytes to the partial file.
    pub fn write(&mut self, data: &[u8]) -> Result<(), TransferError> {
        let part = self
            .part
            .as_mut()
            .ok_or_else(|| TransferError::Local(io::Error::other("partial file not open")))?;
        part.write_all(data).map_err(TransferError::Local)?;
        self.have += data.len() as u64;
        let have = self.have;
        if let Some(f) = &self.follower {
            f.update(|f| f.written = have);
        }
        self.received_now += data.len() as u64;
        if self.have - self.written_back >= WRITEBACK_BYTES {
            sys::io::start_writeback(part, self.written_back, self.have - self.written_back);
            self.written_back = self.have;
        }
        Ok(())
    }

    /// Every byte is here: the verifying thread finishes and reports the hash.
    pub fn finish(&mut self) {
        if let Some(f) = &self.follower {
            f.update(|f| f.finished = true);
        }
    }

    /// Checks the hash the verifying thread reported. On a mismatch the partial is deleted
    /// and reopened empty under a new generation, so the next holder starts from zero.
    pub fn check(&mut self, hashed: io::Result<FileHash>) -> Result<(), TransferError> {
        match hashed {
            Ok(got) if got == self.hash => Ok(()),
            Ok(_) => {
                self.part = None;
                self.follower = None;
                let _ = fs::remove_file(&self.part_path);
                self.generation = fresh_generation();
                self.open_part().map_err(TransferError::Local)?;
                Err(TransferError::Corrupt)
            }
            Err(e) => Err(TransferError::Local(e)),
        }
    }

    /// Moves the verified partial file to its final name in `dir`. Returns the final path and
    /// whether an identical file was already there (then nothing new was written).
    pub fn land(&mut self, dir: &Path) -> Result<(PathBuf, bool), TransferError> {
        let part = self
            .part
            .take()
            .ok_or_else(|| TransferError::Local(io::Error::other("partial file not open")))?;
        part.sync_all().map_err(TransferError::Local)?;
        drop(part);
        let (size, hash) = (self.size, self.hash);
        let landing = names::landing(dir, &self.name, |p| same_file(p, size, &hash));
        match landing {
            Landing::Identical(path) => {
                let _ = fs::remove_file(&self.part_path);
                Ok((path, true))
            }
            Landing::Free(path) => {
                // rename(2) replaces silently; a file created at `path` since we looked would
                // be lost, so link first (fails if it exists), then drop the temporary name.
                match fs::hard_link(&self.part_path, &path) {
                    Ok(()) => {
                        let _ = fs::remove_file(&self.part_path);
                    }
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        return self.land_retry(dir);
                    }
                    Err(_) => fs::rename(&self.part_path, &path).map_err(TransferError::Local)?,
                }
                sync_dir(dir);
                Ok((path, false))
            }
        }
    }

    fn land_retry(&mut self, dir: &Path) -> Result<(PathBuf, bool), TransferError> {
        self.part = Some(
            OpenOptions::new()
                .read(true)
                .append(true)
                .open(&self.part_path)
                .map_err(TransferError::Local)?,
        );
        self.land(dir)
    }
}

/// Whether the file at `path` has exactly this size and hash.
fn same_file(path: &Path, size: u64, hash: &FileHash) -> bool {
    match fs::metadata(path) {
        Ok(m) if m.len() == size => super::share::hash_file(path, |_| {}).is_ok_and(|h| h == *hash),
        _ => false,
    }
}

/// Makes a rename durable; failure only weakens durability, so it is ignored.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("p2pshare-dl-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    /// A download whose verifying thread reports into a channel.
    fn download(
        dir: &Path,
        content: &[u8],
        name: &str,
    ) -> (Download, mpsc::Receiver<(u64, io::Result<FileHash>)>) {
        let (tx, rx) = mpsc::channel();
        let tx = Mutex::new(tx);
        let done: HashDone = Arc::new(move |g, r| {
            let _ = tx.lock().unwrap().send((g, r));
        });
        let d = Download::new(
            dir,
            FileHash::of(content),
            content.len() as u64,
            name.into(),
            vec!["127.0.0.1:1".parse().unwrap()],
            done,
        )
        .unwrap();
        (d, rx)
    }

    /// Finishes and checks, as the peer does when the hash arrives.
    fn finish_and_check(
        d: &mut Download,
        rx: &mpsc::Receiver<(u64, io::Result<FileHash>)>,
    ) -> Result<(), TransferError> {
        d.finish();
        let (generation, result) = rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert_eq!(generation, d.generation);
        d.check(result)
    }

    #[test]
    fn resume_verify_and_land() {
        let dir = tmpdir("resume");
        let content = b"hello, resumable world".to_vec();
        let (mut d, _rx) = download(&dir, &content, "../x.txt");
        d.write(&content[..5]).unwrap();
        drop(d);
        // A new run resumes from the 5 bytes on disk.
        let (mut d, rx) = download(&dir, &content, "../x.txt");
        assert_eq!(d.have, 5);
        assert!(d.accept_header(content.len() as u64, 0).is_err());
        assert_eq!(d.accept_header(content.len() as u64, 5).unwrap(), 17);
        d.write(&content[5..]).unwrap();
        assert!(d.is_complete());
        finish_and_check(&mut d, &rx).unwrap();
        let (path, existed) = d.land(&dir).unwrap();
        assert_eq!(path, dir.join("_x.txt"));
        assert!(!existed);
        assert_eq!(fs::read(&path).unwrap(), content);
        assert!(!d.part_path.exists());
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn corrupt_bytes_never_land() {
        let dir = tmpdir("corrupt");
        let (mut d, rx) = download(&dir, b"good", "f");
        d.write(b"evil").unwrap();
        let before = d.generation;
        assert!(matches!(
            finish_and_check(&mut d, &rx),
            Err(TransferError::Corrupt)
        ));
        assert_eq!(d.have, 0);
        assert_ne!(d.generation, before, "a new attempt");
        assert!(!dir.join("f").exists());
        assert_eq!(fs::metadata(&d.part_path).unwrap().len(), 0);
        d.write(b"good").unwrap();
        finish_and_check(&mut d, &rx).unwrap();
        let (path, _) = d.land(&dir).unwrap();
        assert_eq!(fs::read(path).unwrap(), b"good");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn identical_file_is_not_duplicated() {
        let dir = tmpdir("ident");
        fs::write(dir.join("f"), b"same").unwrap();
        let (mut d, rx) = download(&dir, b"same", "f");
        d.write(b"same").unwrap();
        finish_and_check(&mut d, &rx).unwrap();
        assert_eq!(d.land(&dir).unwrap(), (dir.join("f"), true));
        let (mut d, rx) = download(&dir, b"diff", "f");
        d.write(b"diff").unwrap();
        finish_and_check(&mut d, &rx).unwrap();
        assert_eq!(d.land(&dir).unwrap(), (dir.join("f (1)"), false));
        assert_eq!(fs::read(dir.join("f")).unwrap(), b"same");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_large_file_hashed_while_it_grows() {
        let dir = tmpdir("grow");
        let content: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let (mut d, rx) = download(&dir, &content, "big");
        for chunk in content.chunks(65_536) {
            d.write(chunk).unwrap();
        }
        finish_and_check(&mut d, &rx).unwrap();
        // An abandoned download reports nothing.
        let (d2, rx2) = download(&tmpdir("grow2"), &content, "big");
        drop(d2);
        assert!(rx2.recv_timeout(Duration::from_millis(200)).is_err());
        fs::remove_dir_all(&dir).unwrap();
    }
}
