//! Verifying received bytes off the reactor thread (issue 14): the downloader hands whole
//! 16 KiB groups of a range, with the hashes its checked proof promises, to the verifying
//! thread as a [`VerifyJob`]; the thread hashes them ([`outboard::check_groups`], a pure
//! function) and writes the verified ones into the partial file ([`PartWriter`]), then hands
//! the buffer back with the outcome ([`VerifyDone`]) and wakes the reactor.
//!
//! What waits for the disk runs on a third thread, the syncing thread ([`Syncer`], jobs
//! [`SyncJob`]): starting the kernel's writeback of what was written (every
//! `WRITEBACK_BYTES`, so it overlaps the transfer and the final fsync has little left) and
//! saving the resume record (an fdatasync of the partial file first). Either can block for
//! hundreds of milliseconds on a busy disk, and one blocks the other: on the reactor thread
//! they would stop every transfer of the peer, on the verifying thread every download's
//! verification. In sequence on their own thread they never run at once.
//!
//! # Invariants
//! - Nothing unverified is written: a job's bytes reach the file only up to the end of the
//!   last group that matched its hash; the first group that fails ends the job, and the
//!   downloader drops that holder as a liar when the answer comes back.
//! - The reactor never waits for the thread, except to close a partial file (at most one
//!   write of one job): a download whose verifying jobs are more than its bound behind stops
//!   reading its holders' sockets (`download::Download` holds them) until answers come back,
//!   so the bytes in flight per download stay bounded.
//! - A [`PartWriter`] that was closed (the download landed, failed or was abandoned) writes
//!   nothing more: a late job's bytes (verified, but no longer wanted) never touch a file
//!   that was renamed or is being resumed by another download.
//! - A record names only pieces whose bytes were written before it was made (their jobs
//!   answered), and is saved only after an fdatasync that follows those writes. Saves of one
//!   download are serialised, at most one waits for the syncing thread at a time
//!   ([`PartWriter::start_saving`]), and none is saved once the download's records are closed
//!   ([`PartWriter::close_records`], which waits for a save under way): a late save never
//!   brings back the record of a file that landed, nor overwrites a final record with an
//!   older one.
//! - Wakes are coalesced: the thread wakes the reactor only when the reactor has taken every
//!   earlier answer ([`Verifier::drain`]), so a fast transfer costs one wake per turn, not one
//!   per job.

use super::download::DownloadId;
use super::outboard::{self, ExpectedGroup, RangeError, GROUP_BYTES};
use super::swarm::ResumeRecord;
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex};

/// Writeback of received data is started every this many bytes, so it overlaps the transfer
/// and the final fsync has little left to do.
const WRITEBACK_BYTES: u64 = 8 << 20;

/// The partial file as the verifying thread writes it and the syncing thread syncs and
/// records it: shared with the download, closed once (see the module invariants).
#[derive(Debug)]
pub struct PartWriter {
    state: Mutex<WriterState>,
    /// Held while a record is saved, so saves and closing are serialised.
    record: Mutex<RecordState>,
    /// A save was handed to the syncing thread and is not done.
    saving: AtomicBool,
    /// A writeback start was asked of the syncing thread and is not done.
    writeback: AtomicBool,
}

#[derive(Debug)]
struct RecordState {
    /// The partial file, to start writeback of and to fdatasync before a record names its
    /// bytes.
    file: File,
    size: u64,
    /// Where the record goes.
    path: PathBuf,
    /// No record is saved any more (nor writeback started).
    closed: bool,
}

#[derive(Debug)]
struct WriterState {
    file: Option<File>,
    /// Bytes written since a writeback start was last asked for.
    unflushed: u64,
}

impl PartWriter {
    /// A writer of `file`, a partial file of `size` bytes whose resume record is saved at
    /// `record_path`.
    pub fn new(file: File, size: u64, record_path: PathBuf) -> io::Result<PartWriter> {
        let sync = file.try_clone()?;
        Ok(PartWriter {
            state: Mutex::new(WriterState {
                file: Some(file),
                unflushed: 0,
            }),
            record: Mutex::new(RecordState {
                file: sync,
                size,
                path: record_path,
                closed: false,
            }),
            saving: AtomicBool::new(false),
            writeback: AtomicBool::new(false),
        })
    }

    /// Writes verified bytes at `offset`. Returns how many were written: all of them, none
    /// if the writer was closed, or those before an error (a full disk), with the error.
    pub fn write_at(&self, offset: u64, mut bytes: &[u8]) -> (usize, Option<io::Error>) {
        let mut guard = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let st = &mut *guard;
        let Some(file) = &st.file else {
            return (0, None);
        };
        let mut written = 0;
        let error = loop {
            if bytes.is_empty() {
                break None;
            }
            match file.write_at(bytes, offset + written as u64) {
                Ok(0) => break Some(io::Error::from(io::ErrorKind::WriteZero)),
                Ok(n) => {
                    written += n;
                    bytes = &bytes[n..];
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => break Some(e),
            }
        };
        st.unflushed += written as u64;
        (written, error)
    }

    /// Whether the kernel's writeback should be started now ([`SyncWork::Writeback`]):
    /// `WRITEBACK_BYTES` were written since it was last asked for, and no start is pending.
    pub fn claim_writeback(&self) -> bool {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if st.unflushed < WRITEBACK_BYTES || self.writeback.swap(true, Ordering::AcqRel) {
            return false;
        }
        st.unflushed = 0;
        true
    }

    /// Starts the kernel's writeback of the whole file (pieces land anywhere; only dirty
    /// pages are written), unless the writer's records are closed.
    fn start_writeback(&self) {
        let st = self.record.lock().unwrap_or_else(|e| e.into_inner());
        if !st.closed {
            crate::sys::io::start_writeback(&st.file, 0, st.size);
        }
    }

    /// Writes nothing more (waits for a write under way to end).
    pub fn close(&self) {
        self.state.lock().unwrap_or_else(|e| e.into_inner()).file = None;
    }

    /// Claims the one save of this download that may wait for the syncing thread; `false`
    /// while an earlier one is not done (the caller tries again later).
    pub fn start_saving(&self) -> bool {
        !self.saving.swap(true, Ordering::AcqRel)
    }

    /// Makes the bytes written so far durable, then saves `record` (which names only pieces
    /// written before this call). `Ok(false)`: the records are closed, nothing was saved.
    pub fn save_record(&self, record: &ResumeRecord) -> io::Result<bool> {
        let st = self.record.lock().unwrap_or_else(|e| e.into_inner());
        if st.closed {
            return Ok(false);
        }
        st.file.sync_data()?;
        record.save(&st.path)?;
        Ok(true)
    }

    /// Saves no record after this (waits for a save under way); `last`, if given, is saved
    /// first, as the final one.
    pub fn close_records(&self, last: Option<&ResumeRecord>) -> io::Result<()> {
        let mut st = self.record.lock().unwrap_or_else(|e| e.into_inner());
        if st.closed {
            return Ok(());
        }
        st.closed = true;
        match last {
            Some(record) => {
                st.file.sync_data()?;
                record.save(&st.path)
            }
            None => Ok(()),
        }
    }
}

/// Work for the syncing thread on one download's partial file.
#[derive(Debug)]
pub struct SyncJob {
    /// The download's partial file.
    pub writer: Arc<PartWriter>,
    /// What to do.
    pub work: SyncWork,
}

/// What a [`SyncJob`] does.
#[derive(Debug)]
pub enum SyncWork {
    /// Start the kernel's writeback (claimed with [`PartWriter::claim_writeback`]).
    Writeback,
    /// Save this resume record, the verified pieces as the download knew them when it asked
    /// (claimed with [`PartWriter::start_saving`]).
    Record(ResumeRecord),
}

/// Does one job: the step the syncing thread runs (and the reactor, when the thread cannot
/// be started). A record that cannot be saved only costs a resume some pieces; it is logged.
pub fn sync(job: SyncJob) {
    match job.work {
        SyncWork::Writeback => {
            job.writer.start_writeback();
            job.writer.writeback.store(false, Ordering::Release);
        }
        SyncWork::Record(record) => {
            if let Err(e) = job.writer.save_record(&record) {
                log::warn!(target: "peer", "cannot save the resume record of {}: {e}", record.hash);
            }
            job.writer.saving.store(false, Ordering::Release);
        }
    }
}

/// The syncing thread, seen from the reactor: jobs go in, nothing comes back.
pub struct Syncer {
    jobs: Sender<SyncJob>,
}

impl Syncer {
    /// Starts the thread.
    pub fn spawn() -> io::Result<Syncer> {
        let (jobs, job_rx) = mpsc::channel::<SyncJob>();
        std::thread::Builder::new()
            .name("syncer".into())
            .spawn(move || job_rx.into_iter().for_each(sync))?;
        Ok(Syncer { jobs })
    }

    /// Hands a job to the thread; gives it back if the thread is gone.
    pub fn submit(&self, job: SyncJob) -> Result<(), SyncJob> {
        self.jobs.send(job).map_err(|e| e.0)
    }
}

/// Received groups of one range to verify and write.
#[derive(Debug)]
pub struct VerifyJob {
    /// Whose.
    pub download: DownloadId,
    /// The download's number for the range the groups belong to.
    pub check: u64,
    /// The groups, consecutive, with their hashes from the range's checked proof.
    pub groups: Vec<ExpectedGroup>,
    /// Their bytes, exactly (the buffer is handed back in [`VerifyDone::buf`]).
    pub data: Vec<u8>,
    /// Where verified bytes go.
    pub writer: Arc<PartWriter>,
}

/// What became of a [`VerifyJob`].
#[derive(Debug)]
pub struct VerifyDone {
    /// Whose.
    pub download: DownloadId,
    /// The range, as in the job.
    pub check: u64,
    /// The job's buffer, emptied, for reuse.
    pub buf: Vec<u8>,
    /// The job's bytes (to count them out of flight).
    pub len: usize,
    /// Verified bytes written (those before a failed write too: they stay on disk).
    pub written: usize,
    /// The kernel's writeback should be started ([`PartWriter::claim_writeback`]).
    pub writeback: bool,
    /// The outcome: every group verified and written, a group that failed (the holder lied),
    /// or a write that failed (a local error).
    pub result: Result<(), VerifyFailure>,
}

/// Why a job did not verify and write all its groups.
#[derive(Debug)]
pub enum VerifyFailure {
    /// The holder's bytes are wrong.
    Range(RangeError),
    /// Writing verified bytes failed.
    Write(io::Error),
}

/// Verifies and writes one job: the step the verifying thread runs (and the reactor, when the
/// thread cannot be started).
pub fn run(job: VerifyJob) -> VerifyDone {
    let checked = outboard::check_groups(&job.groups, &job.data);
    let offset = job.groups.first().map_or(0, |g| g.group() * GROUP_BYTES);
    let mut written = 0;
    let mut result = match checked.error {
        Some(e) => Err(VerifyFailure::Range(e)),
        None => Ok(()),
    };
    if checked.ok_bytes > 0 {
        let (n, error) = job.writer.write_at(offset, &job.data[..checked.ok_bytes]);
        written = n;
        if let Some(e) = error {
            result = Err(VerifyFailure::Write(e));
        }
    }
    let writeback = written > 0 && job.writer.claim_writeback();
    let mut buf = job.data;
    let len = buf.len();
    buf.clear();
    VerifyDone {
        download: job.download,
        check: job.check,
        buf,
        len,
        written,
        writeback,
        result,
    }
}

/// The verifying thread, seen from the reactor.
pub struct Verifier {
    jobs: Sender<VerifyJob>,
    done: Receiver<VerifyDone>,
    /// Set by the thread when it wakes the reactor, cleared by [`Verifier::drain`].
    woken: Arc<AtomicBool>,
}

impl Verifier {
    /// Starts the thread; `wake` wakes the reactor.
    pub fn spawn(wake: Arc<dyn Fn() + Send + Sync>) -> io::Result<Verifier> {
        let (jobs, job_rx) = mpsc::channel::<VerifyJob>();
        let (done_tx, done) = mpsc::channel();
        let woken = Arc::new(AtomicBool::new(false));
        let flag = woken.clone();
        std::thread::Builder::new()
            .name("verifier".into())
            .spawn(move || {
                for job in job_rx {
                    if done_tx.send(run(job)).is_err() {
                        return;
                    }
                    if !flag.swap(true, Ordering::AcqRel) {
                        wake();
                    }
                }
            })?;
        Ok(Verifier { jobs, done, woken })
    }

    /// Hands a job to the thread; gives it back if the thread is gone.
    pub fn submit(&self, job: VerifyJob) -> Result<(), VerifyJob> {
        self.jobs.send(job).map_err(|e| e.0)
    }

    /// Every answer ready now. The flag is cleared first, so an answer sent after it is
    /// either taken here or wakes the reactor again.
    pub fn drain(&self) -> Vec<VerifyDone> {
        self.woken.store(false, Ordering::Release);
        self.done.try_iter().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Vec<u8> {
        (0..n as u32).map(|i| (i * 31 % 253) as u8).collect()
    }

    fn tmpfile(tag: &str) -> (std::path::PathBuf, File) {
        let p = std::env::temp_dir().join(format!("p2pshare-verify-{tag}-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        (p, f)
    }

    /// The groups and proof-checked hashes of `groups` of `content`.
    fn expected(content: &[u8], groups: std::ops::Range<u64>) -> Vec<ExpectedGroup> {
        let (root, ob) = outboard::compute_in_memory(content);
        let answer = outboard::answer_range(&ob, groups.clone()).unwrap();
        outboard::check_proof(root, content.len() as u64, groups, &answer.proof).unwrap()
    }

    #[test]
    fn only_the_groups_before_a_bad_one_are_written() {
        let content = bytes(5 * GROUP_BYTES as usize + 100);
        let g = GROUP_BYTES as usize;
        let exp = expected(&content, 1..6);
        let (path, file) = tmpfile("prefix");
        let writer = Arc::new(
            PartWriter::new(file, content.len() as u64, path.with_extension("rec")).unwrap(),
        );
        // Group 3 (the third of the job) has one byte flipped.
        let mut data = content[g..].to_vec();
        data[2 * g + 7] ^= 1;
        let done = run(VerifyJob {
            download: 1,
            check: 9,
            groups: exp.clone(),
            data,
            writer: writer.clone(),
        });
        assert!(matches!(
            done.result,
            Err(VerifyFailure::Range(RangeError::BadGroup { group: 3 }))
        ));
        assert_eq!((done.download, done.check, done.written), (1, 9, 2 * g));
        assert!(done.buf.is_empty() && done.buf.capacity() > 0);
        let on_disk = std::fs::read(&path).unwrap();
        // Written at their offsets, and nothing from the bad group on.
        assert_eq!(on_disk.len(), 3 * g);
        assert_eq!(&on_disk[g..], &content[g..3 * g]);
        // The true bytes verify and are written whole.
        let done = run(VerifyJob {
            download: 1,
            check: 10,
            groups: exp,
            data: content[g..].to_vec(),
            writer: writer.clone(),
        });
        assert!(done.result.is_ok());
        assert_eq!(done.written, content.len() - g);
        assert_eq!(&std::fs::read(&path).unwrap()[g..], &content[g..]);
        // Closed: nothing more is written, and that is not an error.
        writer.close();
        let done = run(VerifyJob {
            download: 1,
            check: 11,
            groups: expected(&content, 0..1),
            data: content[..g].to_vec(),
            writer,
        });
        assert!(done.result.is_ok());
        assert_eq!(done.written, 0);
        assert_eq!(
            &std::fs::read(&path).unwrap()[..g],
            &[0u8; GROUP_BYTES as usize][..]
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn every_flipped_byte_of_a_job_is_caught() {
        let content = bytes(3 * GROUP_BYTES as usize - 5);
        let exp = expected(&content, 0..3);
        for i in (0..content.len()).step_by(997) {
            let mut d = content.clone();
            d[i] ^= 0x80;
            let c = outboard::check_groups(&exp, &d);
            let group = (i / GROUP_BYTES as usize) as u64;
            assert_eq!(c.error, Some(RangeError::BadGroup { group }));
            assert_eq!(c.ok_bytes, group as usize * GROUP_BYTES as usize);
        }
        let ok = outboard::check_groups(&exp, &content);
        assert_eq!((ok.ok_bytes, ok.error), (content.len(), None));
        // Too little or too much data never passes as verified.
        let short = outboard::check_groups(&exp, &content[..content.len() - 1]);
        assert_eq!(short.error, Some(RangeError::BadGroup { group: 2 }));
        let mut long = content.clone();
        long.push(0);
        let long = outboard::check_groups(&exp, &long);
        assert_eq!(long.error, Some(RangeError::TooMuchData));
        // The empty file's one empty group.
        let empty = expected(&[], 0..1);
        assert_eq!(empty.len(), 1);
        assert!(empty[0].is_empty());
        assert_eq!(outboard::check_groups(&empty, &[]).error, None);
    }

    #[test]
    fn records_are_saved_one_at_a_time_and_never_after_they_are_closed() {
        use crate::peer::swarm::{Loaded, PieceSet};
        use crate::wire::FileHash;
        let content = bytes(3 * GROUP_BYTES as usize);
        let (path, file) = tmpfile("record");
        let rec_path = path.with_extension("rec");
        let writer =
            Arc::new(PartWriter::new(file, content.len() as u64, rec_path.clone()).unwrap());
        let hash = FileHash::of(&content);
        let record = |pieces: &[usize]| {
            let mut verified = PieceSet::new(3);
            for &p in pieces {
                verified.insert(p);
            }
            ResumeRecord {
                hash,
                size: content.len() as u64,
                piece_bytes: GROUP_BYTES,
                verified,
            }
        };
        let load = || ResumeRecord::load(&rec_path, &hash, content.len() as u64, GROUP_BYTES);
        // One save at a time waits for the syncing thread.
        assert!(writer.start_saving());
        assert!(!writer.start_saving());
        sync(SyncJob {
            writer: writer.clone(),
            work: SyncWork::Record(record(&[0])),
        });
        assert_eq!(load().unwrap(), Loaded::Intact(record(&[0]).verified));
        assert!(writer.start_saving(), "the save is done: the next may go");
        // The last record is saved when closing; a save handed over earlier and run later
        // changes nothing.
        let late = SyncJob {
            writer: writer.clone(),
            work: SyncWork::Record(record(&[0])),
        };
        writer.close_records(Some(&record(&[0, 1]))).unwrap();
        sync(late);
        assert_eq!(load().unwrap(), Loaded::Intact(record(&[0, 1]).verified));
        assert!(!writer.save_record(&record(&[0, 1, 2])).unwrap());
        assert_eq!(load().unwrap(), Loaded::Intact(record(&[0, 1]).verified));
        // Closed for a landed file (no last record): none comes back once removed.
        let (path2, file2) = tmpfile("record-landed");
        let rec2 = path2.with_extension("rec");
        let w2 = PartWriter::new(file2, content.len() as u64, rec2.clone()).unwrap();
        w2.save_record(&record(&[0])).unwrap();
        w2.close_records(None).unwrap();
        std::fs::remove_file(&rec2).unwrap();
        assert!(!w2.save_record(&record(&[0])).unwrap());
        assert!(!rec2.exists());
        for p in [path, rec_path, path2] {
            std::fs::remove_file(p).unwrap();
        }
    }

    #[test]
    fn the_thread_answers_every_job_and_wakes_once_per_drain() {
        let wakes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let w = wakes.clone();
        let v = Verifier::spawn(Arc::new(move || {
            w.fetch_add(1, Ordering::SeqCst);
        }))
        .unwrap();
        let content = bytes(4 * GROUP_BYTES as usize);
        let (path, file) = tmpfile("thread");
        let writer = Arc::new(
            PartWriter::new(file, content.len() as u64, path.with_extension("rec")).unwrap(),
        );
        for i in 0..4u64 {
            let g = GROUP_BYTES as usize;
            let job = VerifyJob {
                download: 7,
                check: i,
                groups: expected(&content, i..i + 1),
                data: content[i as usize * g..(i as usize + 1) * g].to_vec(),
                writer: writer.clone(),
            };
            assert!(v.submit(job).is_ok());
        }
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while got.len() < 4 && std::time::Instant::now() < deadline {
            got.extend(v.drain());
            std::thread::yield_now();
        }
        assert_eq!(got.len(), 4);
        assert!(got.iter().all(|d| d.result.is_ok()));
        assert!(wakes.load(Ordering::SeqCst) >= 1);
        assert_eq!(std::fs::read(&path).unwrap(), content);
        std::fs::remove_file(&path).unwrap();
    }
}
