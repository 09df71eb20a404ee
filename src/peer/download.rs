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

use super::names::{self, Landing};
use super::share::PART_SUFFIX;
use crate::reactor::sys;
use crate::wire::FileHash;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Instant;

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
    hasher: blake3::Hasher,
    /// Bytes in the partial file (and in the hasher).
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
    /// Prepares a download into `dir`, resuming from an existing partial file.
    pub fn new(
        dir: &Path,
        hash: FileHash,
        size: u64,
        name: String,
        holders: Vec<SocketAddr>,
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
            hasher: blake3::Hasher::new(),
            have: 0,
            received_now: 0,
            started: Instant::now(),
            expecting_from: 0,
            written_back: 0,
        };
        d.open_part().map_err(TransferError::Local)?;
        Ok(d)
    }

    /// Opens (or creates) the partial file and hashes what it already holds.
    fn open_part(&mut self) -> io::Result<()> {
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&self.part_path)?;
        let len = file.metadata()?.len();
        self.hasher = blake3::Hasher::new();
        self.have = 0;
        self.written_back = 0;
        if len > self.size {
            // Not a prefix of this file: start over.
            file.set_len(0)?;
        } else if len > 0 {
            let mut buf = vec![0u8; 256 * 1024];
            let mut left = len;
            while left > 0 {
                let want = left.min(buf.len() as u64) as usize;
                let n = file.read(&mut buf[..want])?;
                if n == 0 {
                    break;
                }
                self.hasher.update(&buf[..n]);
                left -= n as u64;
                self.have += n as u64;
            }
        }
        self.written_back = self.have;
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
        self.hasher.update(data);
        self.have += data.len() as u64;
        self.received_now += data.len() as u64;
        if self.have - self.written_back >= WRITEBACK_BYTES {
            sys::start_writeback(part, self.written_back, self.have - self.written_back);
            self.written_back = self.have;
        }
        Ok(())
    }

    /// Verifies the complete partial file. On a mismatch the partial is deleted and reopened
    /// empty, so the next holder starts from zero.
    pub fn verify(&mut self) -> Result<(), TransferError> {
        let got = FileHash(*self.hasher.finalize().as_bytes());
        if got == self.hash {
            return Ok(());
        }
        self.part = None;
        let _ = fs::remove_file(&self.part_path);
        self.open_part().map_err(TransferError::Local)?;
        Err(TransferError::Corrupt)
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

    fn tmpdir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("p2pshare-dl-{tag}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn resume_verify_and_land() {
        let dir = tmpdir("resume");
        let content = b"hello, resumable world".to_vec();
        let hash = FileHash::of(&content);
        let holders = vec!["127.0.0.1:1".parse().unwrap()];
        let mut d = Download::new(
            &dir,
            hash,
            content.len() as u64,
            "../x.txt".into(),
            holders.clone(),
        )
        .unwrap();
        d.write(&content[..5]).unwrap();
        drop(d);
        // A new run resumes from the 5 bytes on disk.
        let mut d =
            Download::new(&dir, hash, content.len() as u64, "../x.txt".into(), holders).unwrap();
        assert_eq!(d.have, 5);
        assert!(d.accept_header(content.len() as u64, 0).is_err());
        assert_eq!(d.accept_header(content.len() as u64, 5).unwrap(), 17);
        d.write(&content[5..]).unwrap();
        assert!(d.is_complete());
        d.verify().unwrap();
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
        let hash = FileHash::of(b"good");
        let mut d = Download::new(&dir, hash, 4, "f".into(), vec![]).unwrap();
        d.write(b"evil").unwrap();
        assert!(matches!(d.verify(), Err(TransferError::Corrupt)));
        assert_eq!(d.have, 0);
        assert!(!dir.join("f").exists());
        assert_eq!(fs::metadata(&d.part_path).unwrap().len(), 0);
        d.write(b"good").unwrap();
        d.verify().unwrap();
        let (path, _) = d.land(&dir).unwrap();
        assert_eq!(fs::read(path).unwrap(), b"good");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn identical_file_is_not_duplicated() {
        let dir = tmpdir("ident");
        fs::write(dir.join("f"), b"same").unwrap();
        let mut d = Download::new(&dir, FileHash::of(b"same"), 4, "f".into(), vec![]).unwrap();
        d.write(b"same").unwrap();
        d.verify().unwrap();
        assert_eq!(d.land(&dir).unwrap(), (dir.join("f"), true));
        let mut d = Download::new(&dir, FileHash::of(b"diff"), 4, "f".into(), vec![]).unwrap();
        d.write(b"diff").unwrap();
        d.verify().unwrap();
        assert_eq!(d.land(&dir).unwrap(), (dir.join("f (1)"), false));
        assert_eq!(fs::read(dir.join("f")).unwrap(), b"same");
        fs::remove_dir_all(&dir).unwrap();
    }
}
